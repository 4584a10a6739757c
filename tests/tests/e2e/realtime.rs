//! Browser event streams (`GET /v1/events`, WebSocket and SSE) against the real daemon:
//! token scoping whatever the filter asks, resuming without gaps or duplicates, refusals
//! before any upgrade, a client that stops reading, and minting tokens.

use std::time::Duration;

use futures_util::StreamExt;
use herald_client::Client;
use herald_protocol::{BatchItem, Filter, SendMessage};
use herald_tests::http::{self, Sse};
use herald_tests::mock::MockProvider;
use herald_tests::{Daemon, TOKEN_SECRET, email};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(60);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn tagged(to: &str, tag: &str) -> SendMessage {
    let mut m = email(to, "You're invited");
    m.tags = vec![tag.into(), "rsvp".into()];
    m
}

async fn mint(client: &Client, tags: &[&str], admin: bool, ttl_ms: u64) -> String {
    client
        .mint_token(
            tags.iter().map(|t| t.to_string()).collect(),
            vec![],
            admin,
            Some(ttl_ms),
        )
        .await
        .expect("mint a token")
        .0
}

fn ws_request(
    port: u16,
    query: &str,
    origin: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut req = format!("ws://127.0.0.1:{port}/v1/events?{query}")
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    req
}

/// Opens a WebSocket stream, or returns the HTTP status it was refused with.
async fn ws(port: u16, query: &str, origin: Option<&str>) -> Result<Ws, u16> {
    match tokio_tungstenite::connect_async(ws_request(port, query, origin)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

/// The next event frame as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an event within a minute")
            .expect("the stream is open")
            .expect("a frame");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).expect("event JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().expect("seq")
}

fn tags(e: &Value) -> Vec<String> {
    e["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `messages` in one batch and waits until every one is sent (the webhook provider
/// reports `sent`), using a socket subscription from `from` on.
async fn send_and_wait(client: &Client, messages: Vec<SendMessage>) -> Vec<String> {
    let sub_from = client.stats().await.unwrap().last_seq + 1;
    let n = messages.len();
    let ids: Vec<String> = client
        .send_batch(messages)
        .await
        .unwrap()
        .into_iter()
        .map(|i| match i {
            BatchItem::Accepted(a) => a.id,
            BatchItem::Error(e) => panic!("refused: {e}"),
        })
        .collect();
    let filter = Filter {
        kinds: vec![herald_plugin_api::EventKind::Sent],
        ..Filter::default()
    };
    let mut sub = client.subscribe(filter, Some(sub_from)).await.unwrap();
    let mut sent = std::collections::HashSet::new();
    while sent.len() < n {
        let e = tokio::time::timeout(WAIT, sub.next_event())
            .await
            .expect("messages sent within a minute")
            .unwrap()
            .unwrap();
        if let Some(id) = e.message_id
            && ids.contains(&id)
        {
            sent.insert(id);
        }
    }
    ids
}

async fn realtime_daemon(extra: &str) -> (MockProvider, Daemon) {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder()
        .webhook_provider(&mock)
        .realtime(extra)
        .admin()
        .start()
        .await;
    (mock, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_scoped_to_one_wedding_sees_only_it_and_resumes_without_gaps() {
    let (_mock, daemon) = realtime_daemon("").await;
    let port = daemon.http_port.unwrap();
    let client = daemon.client().await;
    let token = mint(&client, &["wedding:42"], false, 3_600_000).await;
    let epoch = client
        .subscribe(Filter::default(), None)
        .await
        .unwrap()
        .epoch
        .clone();
    // It asks for another wedding's events too: the token narrows whatever it asks.
    let mut a = ws(
        port,
        &format!("token={token}&tag=wedding:42&tag=wedding:7"),
        None,
    )
    .await
    .expect("stream opened");

    let ours = send_and_wait(
        &client,
        vec![
            tagged("ann@example.com", "wedding:42"),
            tagged("bo@example.com", "wedding:42"),
        ],
    )
    .await;
    send_and_wait(&client, vec![tagged("eve@example.com", "wedding:7")]).await;
    // A last message of ours: everything before it in the log has reached the stream
    // by the time its events do.
    let marker = send_and_wait(&client, vec![tagged("cy@example.com", "wedding:42")]).await;
    let mut seen = Vec::new();
    loop {
        let e = next_json(&mut a).await;
        let done = e["message_id"] == marker[0].as_str() && e["kind"] == "sent";
        seen.push(e);
        if done {
            break;
        }
    }
    for e in &seen {
        assert!(tags(e).contains(&"wedding:42".to_string()), "{e}");
        assert_eq!(e["epoch"], epoch.as_str(), "{e}");
    }
    let mut ids: Vec<&str> = seen
        .iter()
        .filter_map(|e| e["message_id"].as_str())
        .collect();
    ids.dedup();
    let mut expected: Vec<&str> = ours.iter().chain(&marker).map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    expected.sort_unstable();
    assert_eq!(ids, expected, "exactly the events of wedding:42's messages");
    assert_eq!(
        seen.len(),
        9,
        "queued, sending, sent for each of three messages"
    );
    assert!(
        seen.windows(2).all(|w| seq(&w[0]) < seq(&w[1])),
        "in seq order"
    );
    let last = seq(seen.last().unwrap());
    drop(a);

    // Disconnected: 200 more of ours (and some of another wedding's) are delivered.
    let mut batch: Vec<SendMessage> = (0..200)
        .map(|i| tagged(&format!("guest{i}@example.com"), "wedding:42"))
        .collect();
    batch.extend((0..20).map(|i| tagged(&format!("other{i}@example.com"), "wedding:7")));
    let missed = send_and_wait(&client, batch).await;
    let mut b = ws(
        port,
        &format!("token={token}&from_seq={}&epoch={epoch}", last + 1),
        None,
    )
    .await
    .unwrap();
    let mut replay = Vec::new();
    while replay.len() < 600 {
        replay.push(next_json(&mut b).await);
    }
    assert!(seq(&replay[0]) > last);
    assert!(
        replay.windows(2).all(|w| seq(&w[0]) < seq(&w[1])),
        "in order, no duplicate"
    );
    for e in &replay {
        assert!(tags(e).contains(&"wedding:42".to_string()), "{e}");
        assert!(
            missed[..200]
                .iter()
                .any(|id| e["message_id"] == id.as_str()),
            "{e}"
        );
    }
    for id in &missed[..200] {
        let kinds: Vec<&str> = replay
            .iter()
            .filter(|e| e["message_id"] == id.as_str())
            .filter_map(|e| e["kind"].as_str())
            .collect();
        assert_eq!(kinds, ["queued", "sending", "sent"], "{id}");
    }
    // Then live.
    let live = send_and_wait(&client, vec![tagged("late@example.com", "wedding:42")]).await;
    let e = next_json(&mut b).await;
    assert_eq!(e["message_id"], live[0].as_str());
    assert_eq!(e["kind"], "queued");
    assert!(seq(&e) > seq(replay.last().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_through_last_event_id_and_notices_a_foreign_epoch() {
    let (_mock, daemon) = realtime_daemon("").await;
    let port = daemon.http_port.unwrap();
    let client = daemon.client().await;
    let token = mint(&client, &["wedding:42"], false, 3_600_000).await;
    let auth = format!("Bearer {token}");
    let mut s = Sse::open(
        port,
        "/v1/events?tag=wedding:42",
        &[("authorization", &auth)],
    )
    .await
    .expect("stream opened");
    assert_eq!(
        s.headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.as_str()),
        Some("text/event-stream")
    );
    let first = send_and_wait(&client, vec![tagged("ann@example.com", "wedding:42")]).await;
    let mut last_id = String::new();
    for kind in ["queued", "sending", "sent"] {
        let e = s.next(WAIT).await.expect("an event");
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["message_id"].as_str()),
            (Some(kind), Some(first[0].as_str()))
        );
        let id = e.id.clone().expect("an id");
        let (epoch, n) = id.split_once(':').expect("epoch:seq");
        assert_eq!(epoch, v["epoch"].as_str().unwrap());
        assert_eq!(n.parse::<u64>().unwrap(), seq(&v));
        last_id = id;
    }
    drop(s);

    let missed = send_and_wait(
        &client,
        (0..200)
            .map(|i| tagged(&format!("guest{i}@example.com"), "wedding:42"))
            .chain((0..10).map(|i| tagged(&format!("x{i}@example.com"), "wedding:7")))
            .collect(),
    )
    .await;
    let mut s = Sse::open(
        port,
        "/v1/events?tag=wedding:42",
        &[("authorization", &auth), ("last-event-id", &last_id)],
    )
    .await
    .unwrap();
    let mut prev: u64 = last_id.split_once(':').unwrap().1.parse().unwrap();
    for _ in 0..600 {
        let e = s.next(WAIT).await.expect("an event");
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert!(seq(&v) > prev, "in order, no duplicate");
        prev = seq(&v);
        assert!(
            missed[..200]
                .iter()
                .any(|id| v["message_id"] == id.as_str()),
            "{v}"
        );
    }
    let live = send_and_wait(&client, vec![tagged("late@example.com", "wedding:42")]).await;
    let v: Value = serde_json::from_str(&s.next(WAIT).await.unwrap().data).unwrap();
    assert_eq!(
        (v["message_id"].as_str(), v["kind"].as_str()),
        (Some(live[0].as_str()), Some("queued"))
    );
    assert!(seq(&v) > prev);
    drop(s);

    // A Last-Event-ID from another log (a replaced data dir) does not skip: the whole
    // retained log comes again, each event naming this epoch.
    let mut s = Sse::open(
        port,
        "/v1/events",
        &[
            ("authorization", &auth),
            ("last-event-id", "0123456789abcdef:100000"),
        ],
    )
    .await
    .unwrap();
    let v: Value = serde_json::from_str(&s.next(WAIT).await.unwrap().data).unwrap();
    assert_eq!(
        v["message_id"],
        first[0].as_str(),
        "from the start of the log"
    );
    assert_eq!(v["kind"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_expired_tampered_foreign_and_wrong_origin_are_refused_before_any_stream() {
    let (_mock, daemon) = realtime_daemon(
        "allowed_origins = [\"https://planner.example.com\"]\nmax_token_ttl = \"2h\"",
    )
    .await;
    let port = daemon.http_port.unwrap();
    let client = daemon.client().await;
    let good = mint(&client, &["wedding:42"], false, 3_600_000).await;
    let short = mint(&client, &["wedding:42"], false, 1000).await;
    // Tampered: another scope with the original signature.
    let parts: Vec<&str> = good.split('.').collect();
    let admin_claims = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            r#"{{"exp":{},"admin":true}}"#,
            herald_tests::now_ms() / 1000 + 600
        ))
    };
    let tampered = format!("{}.{admin_claims}.{}", parts[0], parts[2]);
    let foreign = {
        // Signed with another secret (as jsonwebtoken would, by hand: header.claims.hmac).
        use base64::Engine;
        use hmac::Mac;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signing = format!("{}.{}", parts[0], parts[1]);
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(b"not-the-secret-not-the-secret-0000")
                .unwrap();
        mac.update(signing.as_bytes());
        format!("{signing}.{}", b64.encode(mac.finalize().into_bytes()))
    };
    // Wait (on the clock, not a guess) until the short token is expired.
    let expired_at = {
        let claims = short.split('.').nth(1).unwrap();
        use base64::Engine;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap();
        serde_json::from_slice::<Value>(&json).unwrap()["exp"]
            .as_u64()
            .unwrap()
            * 1000
    };
    while herald_tests::now_ms() <= expired_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (name, query) in [
        ("absent", String::new()),
        ("expired", format!("token={short}")),
        ("tampered", format!("token={tampered}")),
        ("foreign", format!("token={foreign}")),
        ("garbage", "token=abc".to_string()),
    ] {
        assert_eq!(
            ws(port, &query, None).await.err(),
            Some(401),
            "websocket, {name} token"
        );
        let r = Sse::open(port, &format!("/v1/events?{query}"), &[])
            .await
            .err();
        assert_eq!(
            r.as_ref().map(|a| a.status),
            Some(401),
            "sse, {name} token: {r:?}"
        );
        assert!(r.unwrap().header("www-authenticate").is_some());
    }
    assert_eq!(
        ws(
            port,
            &format!("token={good}"),
            Some("https://evil.example.com")
        )
        .await
        .err(),
        Some(403)
    );
    let r = Sse::open(
        port,
        &format!("/v1/events?token={good}"),
        &[("origin", "https://evil.example.com")],
    )
    .await
    .err();
    assert_eq!(r.map(|a| a.status), Some(403));
    // The allowed origin gets its stream, and CORS says so.
    let s = Sse::open(
        port,
        &format!("/v1/events?token={good}"),
        &[("origin", "https://planner.example.com")],
    )
    .await
    .expect("allowed origin");
    assert_eq!(
        s.headers
            .iter()
            .find(|(k, _)| k == "access-control-allow-origin")
            .map(|(_, v)| v.as_str()),
        Some("https://planner.example.com")
    );
    assert!(
        ws(
            port,
            &format!("token={good}"),
            Some("https://planner.example.com")
        )
        .await
        .is_ok()
    );
    // A misspelt filter is an error, not "everything".
    let r = Sse::open(port, &format!("/v1/events?token={good}&tags=x"), &[])
        .await
        .err();
    assert_eq!(r.map(|a| a.status), Some(400));

    // Minting refuses what it cannot sign.
    for (tags, ttl, field) in [
        (vec![], 60_000, "tags"),
        (vec!["a".to_string()], 3 * 3_600_000, "ttl_ms"),
    ] {
        match client.mint_token(tags, vec![], false, Some(ttl)).await {
            Err(herald_client::ClientError::Server(e)) => {
                assert_eq!(e.field.as_deref(), Some(field), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Neither the secret nor a token ever reaches the log.
    let log = daemon.log();
    for secret in [TOKEN_SECRET, good.as_str(), short.as_str(), parts[2]] {
        assert!(!log.contains(secret), "the log holds a secret or a token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_with_resume_from_and_5000_messages_go_through() {
    let (mock, daemon) = realtime_daemon("client_buffer = 16\nstall_timeout = \"3s\"").await;
    let port = daemon.http_port.unwrap();
    let admin = daemon.admin_port.unwrap();
    let client = daemon.client().await;
    let token = mint(&client, &[], true, 3_600_000).await;
    // A socket that takes almost nothing into its receive buffer, and is never read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(
        ws_request(port, &format!("token={token}"), None),
        MaybeTlsStream::Plain(tcp),
    )
    .await
    .expect("slow stream opened");

    let sender = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for b in 0..5 {
                let batch = (0..1000)
                    .map(|i| email(&format!("g{b}x{i}@example.com"), "Save the date"))
                    .collect();
                ids.extend(send_and_wait(&client, batch).await);
            }
            ids
        })
    };
    // The daemon gives up on the slow stream (and says so in /metrics) ...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let m = http::get(admin, "/metrics").await.body;
        if m.lines()
            .any(|l| l.starts_with("herald_streams_stalled_total ") && !l.ends_with(" 0"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow stream was never closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and the slow client, reading at last, gets what was on its way, then the close
    // with where to resume.
    let mut got = Vec::new();
    let close = loop {
        let m = tokio::time::timeout(WAIT, slow.next())
            .await
            .expect("frames")
            .expect("open")
            .expect("frame");
        match m {
            Message::Text(t) => got.push(serde_json::from_str::<Value>(&t).unwrap()),
            Message::Close(Some(f)) => break f,
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::from(4008));
    let reason: Value = serde_json::from_str(&close.reason).expect("JSON close reason");
    assert_eq!(reason["reason"], "slow");
    let resume_from = reason["resume_from"].as_u64().unwrap();
    assert!(!got.is_empty());
    assert!(
        got.windows(2).all(|w| seq(&w[1]) == seq(&w[0]) + 1),
        "admin scope: every seq"
    );
    assert_eq!(
        resume_from,
        seq(got.last().unwrap()) + 1,
        "resume right after the last event received"
    );

    let ids = tokio::time::timeout(Duration::from_secs(300), sender)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids.len(), 5000);
    assert!(mock.count() >= 5000);
    herald_tests::assert_idle(&client).await;
    // It held far less than the run's events: the bound, not the run, sized its buffer.
    let total = client.stats().await.unwrap().last_seq;
    assert!(
        (got.len() as u64) < total / 2,
        "{} of {total} events were buffered",
        got.len()
    );
    let peak = daemon.peak_rss();
    assert!(peak < 512 << 20, "peak RSS {peak} bytes");
    // Resuming where it was told misses nothing.
    let mut again = ws(port, &format!("token={token}&from_seq={resume_from}"), None)
        .await
        .unwrap();
    assert_eq!(seq(&next_json(&mut again).await), resume_from);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_token_prints_a_token_the_stream_accepts() {
    let (_mock, daemon) = realtime_daemon("").await;
    let out = daemon
        .cli()
        .args(["--json", "token", "--tag", "wedding:42", "--ttl", "1h"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = v["token"].as_str().unwrap();
    let expires_at = v["expires_at"].as_u64().unwrap();
    let now = herald_tests::now_ms();
    assert!(
        expires_at > now + 3_500_000 && expires_at <= now + 3_600_000,
        "{expires_at}"
    );
    assert!(
        ws(daemon.http_port.unwrap(), &format!("token={token}"), None)
            .await
            .is_ok()
    );
    let out = daemon
        .cli()
        .args(["token", "--ttl", "1h"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tag, --id or --admin"));

    // Without [realtime], minting is refused with the fix.
    let plain = Daemon::builder()
        .webhook_provider(&MockProvider::start().await)
        .start()
        .await;
    let out = plain.cli().args(["token", "--tag", "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[realtime]"));
}
