//! Per-connection and per-daemon bounds, tried as a misbehaving client would: a client that
//! pipelines thousands of large requests and never reads the answers, too many
//! connections, too many subscriptions. Each gets backpressure or a clear error, and
//! everyone else keeps being served.

use std::time::{Duration, Instant};

use herald_client::ClientError;
use herald_plugin_api::{Content, EmailContent};
use herald_protocol::ErrorCode;
use herald_tests::mock::MockProvider;
use herald_tests::{Daemon, email};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const T: Duration = Duration::from_secs(60);

/// The daemon's resident set size in bytes, from `/proc/<pid>/status`.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

async fn read_frame(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    tokio::time::timeout(T, s.read_exact(&mut len))
        .await
        .expect("the daemon answered in time")
        .ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(body)
}

async fn json_conn(daemon: &Daemon) -> UnixStream {
    let mut s = UnixStream::connect(&daemon.socket).await.unwrap();
    s.write_all(&frame(br#"{"herald": 1, "codec": "json"}"#))
        .await
        .unwrap();
    let welcome: Value = serde_json::from_slice(&read_frame(&mut s).await.unwrap()).unwrap();
    assert_eq!(welcome["herald"], 1, "{welcome}");
    s
}

/// The bound on the daemon's RSS growth while a client holds 4,096 unread `get`s of a
/// 200 KiB message (about 800 MiB of answers), with `daemon.max_unread_bytes` at its
/// default of 64 MiB: the 64 MiB of queued answers, plus the requests being answered at
/// once (each reserves a whole frame, 1 MiB, before it runs, so at most 64 are in progress,
/// each holding the record, its view and the encoded answer: about 3 × 200 KiB, ~40 MiB),
/// plus 64 MiB for the allocator's retained pages and the other client's traffic. Without
/// the backlog the daemon answers all 4,096 and holds them: over 800 MiB.
const RSS_GROWTH_BOUND: u64 = 192 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_the_daemon_and_others_are_served() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;

    // One large message: every `get` of it answers about 200 KiB.
    let big = herald_protocol::SendMessage {
        content: Content::Email(EmailContent {
            subject: "The seating plan".into(),
            text: Some("x".repeat(200 * 1024)),
            ..Default::default()
        }),
        ..email("planner@example.org", "The seating plan")
    };
    let id = client.send(big).await.unwrap().id;
    // Warm up (caches, allocator arenas, the writer's buffers) with reads that are read.
    for _ in 0..64 {
        client.get(&id).await.unwrap();
    }
    let pid = daemon.pid();
    let before = rss(pid);

    // The bad client: 4,096 pipelined gets, never a read.
    let bad = json_conn(&daemon).await;
    let requests: Vec<u8> = (0..4096u64)
        .flat_map(|n| {
            frame(
                json!({"id": n + 1, "request": {"get": {"id": id}}})
                    .to_string()
                    .as_bytes(),
            )
        })
        .collect();
    let (mut bad_rd, mut bad_wr) = bad.into_split();
    // The writes stall once the daemon stops reading and the socket buffer is full.
    let writer = tokio::spawn(async move {
        bad_wr.write_all(&requests).await.unwrap();
        bad_wr
    });
    // Meanwhile another client sends and gets, and the daemon's RSS is sampled.
    let others = async {
        for i in 0..40 {
            let ack = tokio::time::timeout(
                T,
                client.send(email(&format!("g{i}@example.org"), "still served")),
            )
            .await
            .expect("another client's send is answered while one client does not read")
            .unwrap();
            let m = tokio::time::timeout(T, client.get(&ack.id))
                .await
                .expect("and its get")
                .unwrap();
            assert_eq!(m.id, ack.id);
        }
    };
    tokio::pin!(others);
    let mut others_done = false;
    let mut peak = before;
    let mut plateau = before;
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tokio::select! {
            () = &mut others, if !others_done => { others_done = true; }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let now = rss(pid);
        peak = peak.max(now);
        if now > plateau + (1 << 20) {
            plateau = now;
            stable_since = Instant::now();
        }
        assert!(
            now.saturating_sub(before) < RSS_GROWTH_BOUND,
            "RSS grew by {} MiB (bound {} MiB) with a client that does not read",
            now.saturating_sub(before) >> 20,
            RSS_GROWTH_BOUND >> 20
        );
        // Done once the other client is through and the RSS has not grown for 3 s.
        if others_done && stable_since.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other client was not served in time"
        );
    }
    eprintln!(
        "RSS before {} MiB, peak {} MiB (growth {} MiB, bound {} MiB)",
        before >> 20,
        peak >> 20,
        (peak - before) >> 20,
        RSS_GROWTH_BOUND >> 20
    );

    // Backpressure, not an error: once the client reads, every answer arrives (and the
    // rest of its requests go out as the daemon reads again).
    let mut answered = vec![false; 4096];
    let mut len = [0u8; 4];
    let mut body = Vec::new();
    for _ in 0..4096 {
        tokio::time::timeout(T, bad_rd.read_exact(&mut len))
            .await
            .expect("answers keep coming")
            .unwrap();
        body.resize(u32::from_be_bytes(len) as usize, 0);
        bad_rd.read_exact(&mut body).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["message"]["id"], id.as_str(), "{}", v["id"]);
        let n = v["id"].as_u64().unwrap() as usize - 1;
        assert!(!answered[n], "answered twice: {n}");
        answered[n] = true;
    }
    assert!(answered.iter().all(|a| *a));
    drop(writer.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_over_max_connections_gets_busy_and_the_others_keep_working() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder()
        .daemon("max_connections = 3")
        .webhook_provider(&mock)
        .start()
        .await;
    // The readiness probe's connection may still be closing: open three as soon as allowed.
    let mut clients = Vec::new();
    let deadline = Instant::now() + T;
    while clients.len() < 3 {
        match herald_client::Client::connect(&daemon.socket).await {
            Ok(c) => clients.push(c),
            Err(ClientError::Server(e)) if e.code == ErrorCode::Busy => {
                assert!(Instant::now() < deadline, "never got three connections");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(clients[0].stats().await.unwrap().connections, 3);

    // The fourth: a busy error frame as the answer to its hello, then the connection closes.
    match herald_client::Client::connect(&daemon.socket).await {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::Busy, "{e}");
            assert!(e.message.contains("daemon.max_connections"), "{e}");
        }
        other => panic!("expected busy, got {other:?}"),
    }
    let mut raw = UnixStream::connect(&daemon.socket).await.unwrap();
    raw.write_all(&frame(br#"{"herald": 1, "codec": "json"}"#))
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&read_frame(&mut raw).await.unwrap()).unwrap();
    assert_eq!(v["response"]["error"]["code"], "busy", "{v}");
    assert!(
        read_frame(&mut raw).await.is_none(),
        "closed after the error"
    );

    // The three keep working.
    for (i, c) in clients.iter().enumerate() {
        c.send(email(&format!("c{i}@example.org"), "fine"))
            .await
            .unwrap();
    }
    mock.wait_for(3, T).await;

    // A closed connection frees its place.
    clients.pop();
    let deadline = Instant::now() + T;
    loop {
        match herald_client::Client::connect(&daemon.socket).await {
            Ok(c) => {
                c.stats().await.unwrap();
                break;
            }
            Err(ClientError::Server(e)) if e.code == ErrorCode::Busy => {
                assert!(Instant::now() < deadline, "the freed place was not reused");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn subscriptions_per_connection_are_bounded() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let mut s = json_conn(&daemon).await;
    for id in 1..=65u64 {
        s.write_all(&frame(
            json!({"id": id, "request": {"subscribe": {"filter": {}}}})
                .to_string()
                .as_bytes(),
        ))
        .await
        .unwrap();
    }
    // The answers come in any order: 64 `subscribed`, one error.
    let mut subscribed = 0;
    let mut refused = Vec::new();
    for _ in 0..65 {
        let v: Value = serde_json::from_slice(&read_frame(&mut s).await.unwrap()).unwrap();
        if v["response"]["subscribed"].is_object() {
            subscribed += 1;
        } else {
            refused.push(v);
        }
    }
    assert_eq!(subscribed, 64);
    let [refused] = <[Value; 1]>::try_from(refused).unwrap();
    assert_eq!(refused["id"], 65);
    assert_eq!(refused["response"]["error"]["code"], "busy", "{refused}");
    // Re-subscribing under an id in use replaces that subscription, and the connection
    // still answers.
    s.write_all(&frame(
        br#"{"id": 3, "request": {"subscribe": {"filter": {}}}}"#,
    ))
    .await
    .unwrap();
    let v: Value = serde_json::from_slice(&read_frame(&mut s).await.unwrap()).unwrap();
    assert!(v["response"]["subscribed"].is_object(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_forever_for_a_client_that_does_not_read() {
    let mock = MockProvider::start().await;
    let mut daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let big = herald_protocol::SendMessage {
        content: Content::Email(EmailContent {
            subject: "Menu".into(),
            text: Some("y".repeat(100 * 1024)),
            ..Default::default()
        }),
        ..email("chef@example.org", "Menu")
    };
    let id = client.send(big).await.unwrap().id;
    let mut bad = json_conn(&daemon).await;
    let requests: Vec<u8> = (0..1000u64)
        .flat_map(|n| {
            frame(
                json!({"id": n + 1, "request": {"get": {"id": id}}})
                    .to_string()
                    .as_bytes(),
            )
        })
        .collect();
    // Queue up unread answers (the writes may stall; that is the point).
    let _ = tokio::time::timeout(Duration::from_secs(3), bad.write_all(&requests)).await;
    // SIGTERM: the daemon gives the client `shutdown_grace` (2 s here) and exits cleanly.
    let started = Instant::now();
    assert!(
        daemon.terminate(),
        "heraldd exits cleanly:\n{}",
        daemon.log()
    );
    assert!(
        daemon
            .log()
            .contains("did not read its answers before shutdown"),
        "{}",
        daemon.log()
    );
    eprintln!("stopped in {:?}", started.elapsed());
    drop(bad);
}
