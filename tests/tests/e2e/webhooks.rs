//! Provider webhooks through the daemon's real listener, signed exactly as the providers
//! sign them: delivery status moves state forward once, forgeries are refused, an update
//! that outruns the send is held, and an SMS reply arrives tagged like its invitation.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use herald_plugin_api::{EventKind, State};
use herald_protocol::Filter;
use herald_tests::mock::{MockProvider, Reply};
use herald_tests::{Daemon, email, events_until, free_port, now_ms, sms};
use hmac::{Hmac, Mac};

const T: Duration = Duration::from_secs(30);
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "test-auth-token-0123456789";
const PUBLIC: &str = "https://hooks.example.com";

/// X-Twilio-Signature: base64 HMAC-SHA1(token, url + sorted name+value pairs).
fn twilio_signature(url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

async fn post(
    port: u16,
    path_and_query: &str,
    headers: &[(&str, String)],
    body: String,
) -> (u16, String) {
    let client = reqwest_like::Client::new();
    client.post(port, path_and_query, headers, body).await
}

/// A minimal HTTP/1.1 client over a TcpStream (the test crate has no HTTP client).
mod reqwest_like {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Client;

    impl Client {
        pub fn new() -> Client {
            Client
        }

        pub async fn post(
            &self,
            port: u16,
            target: &str,
            headers: &[(&str, String)],
            body: String,
        ) -> (u16, String) {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let mut req = format!(
                "POST {target} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n"
            );
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
            {
                req.push_str(&format!("content-length: {}\r\n", body.len()));
            }
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            req.push_str(&body);
            // A server may answer (413) and close before it has read the whole
            // body: the rest of the write then fails, and the peer may reset the
            // connection after its answer. What it answered is still readable.
            if let Err(e) = s.write_all(req.as_bytes()).await {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ),
                    "writing the request: {e}"
                );
            }
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("reading the response: {e}"),
                }
            }
            let resp = String::from_utf8_lossy(&raw).into_owned();
            let status = resp
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let body = resp
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            (status, body)
        }
    }
}

fn form(params: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

async fn twilio_daemon(mock: &MockProvider, port: u16) -> Daemon {
    Daemon::builder()
        .config(&format!(
            "[webhooks]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{PUBLIC}\"\n\n\
             [[providers]]\nname = \"twilio\"\nplugin = \"twilio\"\naccount_sid = \"{ACCOUNT}\"\n\
             auth_token = \"${{TWILIO_TEST_TOKEN}}\"\nfrom = \"+15005550006\"\nbase_url = \"{}\"\n\n\
             [routes]\nsms = [\"twilio\"]\n",
            mock.url()
        ))
        .env("TWILIO_TEST_TOKEN", TOKEN)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_status_callback_and_rsvp_reply() {
    let mock = MockProvider::start().await;
    mock.set_default(Reply::new(201, format!(r#"{{"sid":"SM00000000000000000000000000000001","status":"queued","account_sid":"{ACCOUNT}"}}"#)));
    let port = free_port();
    let daemon = twilio_daemon(&mock, port).await;
    let client = daemon.client().await;

    let mut invite = sms("+14155550100", "Ann & Bo's wedding: reply YES or NO");
    invite.tags = vec!["rsvp".into(), "wedding-42".into()];
    let ack = client.send(invite).await.unwrap();
    events_until(&client, &ack.id, &["sent"], T).await;
    // The StatusCallback the plugin sent is where Twilio will call back.
    let sent_form = mock.requests()[0].body.clone();
    let callback: String = form_urlencoded::parse(sent_form.as_bytes())
        .find(|(k, _)| k == "StatusCallback")
        .map(|(_, v)| v.into_owned())
        .expect("StatusCallback sent");
    assert!(
        callback.starts_with(&format!("{PUBLIC}/webhooks/twilio")),
        "{callback}"
    );
    let path_and_query = &callback[PUBLIC.len()..];

    // A delivered callback, signed as Twilio signs it.
    let params = [
        ("MessageSid", "SM00000000000000000000000000000001"),
        ("MessageStatus", "delivered"),
        ("AccountSid", ACCOUNT),
        ("From", "+15005550006"),
        ("To", "+14155550100"),
        ("ApiVersion", "2010-04-01"),
    ];
    let sig = twilio_signature(&callback, &params);
    let headers = [
        (
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("x-twilio-signature", sig.clone()),
    ];
    let (status, _) = post(port, path_and_query, &headers, form(&params)).await;
    assert_eq!(status, 200);
    let events = events_until(&client, &ack.id, &["delivered"], T).await;
    assert_eq!(events.last().unwrap().provider.as_deref(), Some("twilio"));

    // Twilio retries the same callback: no second event. A forged one is refused.
    let (status, _) = post(port, path_and_query, &headers, form(&params)).await;
    assert_eq!(status, 200);
    let forged = [
        (
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        ),
        (
            "x-twilio-signature",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string(),
        ),
    ];
    let mut bad = params;
    bad[1] = ("MessageStatus", "failed");
    let (status, _) = post(port, path_and_query, &forged, form(&bad)).await;
    assert_eq!(status, 401, "forged signature refused");
    // A late `sent` never overwrites `delivered`.
    let mut late = params;
    late[1] = ("MessageStatus", "sent");
    let sig = twilio_signature(&callback, &late);
    let (status, _) = post(
        port,
        path_and_query,
        &[("x-twilio-signature", sig)],
        form(&late),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(client.get(&ack.id).await.unwrap().state, State::Delivered);

    // The guest answers YES: an inbound event tagged like the invitation.
    let reply_url = format!("{PUBLIC}/webhooks/twilio");
    let reply = [
        ("MessageSid", "SM00000000000000000000000000000099"),
        ("AccountSid", ACCOUNT),
        ("From", "+14155550100"),
        ("To", "+15005550006"),
        ("Body", "YES"),
        ("NumMedia", "0"),
        ("SmsStatus", "received"),
    ];
    let sig = twilio_signature(&reply_url, &reply);
    let (status, body) = post(
        port,
        "/webhooks/twilio",
        &[("x-twilio-signature", sig.clone())],
        form(&reply),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("<Response"), "TwiML answer: {body}");
    // Twilio retries it: still one inbound event.
    post(
        port,
        "/webhooks/twilio",
        &[("x-twilio-signature", sig)],
        form(&reply),
    )
    .await;

    let mut sub = client
        .subscribe(
            Filter {
                kinds: vec![EventKind::Inbound, EventKind::Delivered],
                ..Default::default()
            },
            Some(0),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(
            tokio::time::timeout(T, sub.next_event())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    let inbound = seen.iter().find(|e| e.kind == EventKind::Inbound).unwrap();
    assert_eq!(inbound.body.as_deref(), Some("YES"));
    assert_eq!(inbound.from.as_deref(), Some("+14155550100"));
    assert_eq!(
        inbound.message_id.as_deref(),
        Some(ack.id.as_str()),
        "tagged with the invitation"
    );
    assert_eq!(inbound.tags, ["rsvp", "wedding-42"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next_event())
            .await
            .is_err(),
        "no duplicate inbound or delivered event"
    );

    // STOP puts the number on the suppression list: the next send is suppressed, not sent.
    let stop = [
        ("MessageSid", "SM000000000000000000000000000000AA"),
        ("AccountSid", ACCOUNT),
        ("From", "+14155550100"),
        ("To", "+15005550006"),
        ("Body", "STOP"),
    ];
    let sig = twilio_signature(&reply_url, &stop);
    assert_eq!(
        post(
            port,
            "/webhooks/twilio",
            &[("x-twilio-signature", sig)],
            form(&stop)
        )
        .await
        .0,
        200
    );
    let later = client
        .send(sms("+14155550100", "Table plan attached"))
        .await
        .unwrap();
    events_until(&client, &later.id, &["suppressed"], T).await;
    assert_eq!(mock.count(), 1, "nothing more went to Twilio");

    // YES is an opt-in word to Twilio: it re-subscribed the guest, so Herald lifts the
    // suppression too, and the reply still arrives as a reply.
    let yes = [
        ("MessageSid", "SM000000000000000000000000000000BB"),
        ("AccountSid", ACCOUNT),
        ("From", "+14155550100"),
        ("To", "+15005550006"),
        ("Body", "YES"),
    ];
    let sig = twilio_signature(&reply_url, &yes);
    assert_eq!(
        post(
            port,
            "/webhooks/twilio",
            &[("x-twilio-signature", sig)],
            form(&yes)
        )
        .await
        .0,
        200
    );
    let again = client
        .send(sms("+14155550100", "See you on Saturday"))
        .await
        .unwrap();
    events_until(&client, &again.id, &["sent"], T).await;
    assert_eq!(mock.count(), 2, "delivered to Twilio again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_bounds_and_unknown_paths() {
    let mock = MockProvider::start().await;
    let port = free_port();
    let daemon = twilio_daemon(&mock, port).await;
    let (status, body) = post(port, "/webhooks/nosuch", &[], String::new()).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = post(port, "/elsewhere", &[], String::new()).await;
    assert_eq!(status, 404);
    let (status, body) = post(port, "/webhooks/twilio", &[], "x".repeat(2 << 20)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("webhooks.max_body"), "{body}");
    // Without a declared length the bound holds while the body streams in.
    let chunk = "x".repeat(64 << 10);
    let chunked: String = (0..20)
        .map(|_| format!("{:x}\r\n{chunk}\r\n", chunk.len()))
        .chain(["0\r\n\r\n".to_string()])
        .collect();
    let te = [("transfer-encoding", "chunked".to_string())];
    let (status, body) = post(port, "/webhooks/twilio", &te, chunked).await;
    assert_eq!(status, 413, "{body}");
    let (status, _) = post(
        port,
        "/webhooks/twilio",
        &[],
        "MessageSid=SM1&MessageStatus=delivered".into(),
    )
    .await;
    assert_eq!(status, 401, "unsigned is refused");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_webhook_that_outruns_the_send_is_held_then_applied() {
    let mock = MockProvider::start().await;
    // Resend answers slowly; its webhook arrives before the 200 does.
    let mut slow = Reply::new(200, r#"{"id":"4ef9a417-02e9-4d39-ad75-9611e0fcc33c"}"#);
    slow.delay = Duration::from_millis(1_500);
    mock.push(slow);
    let port = free_port();
    let key = b"0123456789abcdef0123456789abcdef";
    let secret = format!("whsec_{}", B64.encode(key));
    let daemon = Daemon::builder()
        .config(&format!(
            "[webhooks]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{PUBLIC}\"\n\n\
             [[providers]]\nname = \"resend\"\nplugin = \"resend\"\napi_key = \"${{RESEND_TEST_KEY}}\"\n\
             from = \"Events <events@example.com>\"\nbase_url = \"{}\"\nwebhook_secret = \"${{RESEND_TEST_WHSEC}}\"\n\n\
             [routes]\nemail = [\"resend\"]\n",
            mock.url()
        ))
        .env("RESEND_TEST_KEY", "re_test_123")
        .env("RESEND_TEST_WHSEC", &secret)
        .start()
        .await;
    let client = daemon.client().await;
    let ack = client
        .send(email("ann@example.org", "You're invited"))
        .await
        .unwrap();
    mock.wait_for(1, T).await;

    let body = r#"{"type":"email.delivered","created_at":"2026-11-24T20:00:00.000Z","data":{"email_id":"4ef9a417-02e9-4d39-ad75-9611e0fcc33c","from":"Events <events@example.com>","to":["ann@example.org"],"subject":"You're invited"}}"#;
    let now = (now_ms() / 1000).to_string();
    let sign = |id: &str, ts: &str| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("{id}.{ts}.{body}").as_bytes());
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    };
    let headers = [
        ("svix-id", "msg_1".to_string()),
        ("svix-timestamp", now.clone()),
        ("svix-signature", sign("msg_1", &now)),
        ("content-type", "application/json".to_string()),
    ];
    let (status, text) = post(port, "/webhooks/resend", &headers, body.to_string()).await;
    assert_eq!(status, 200, "{text}");

    let events = events_until(&client, &ack.id, &["delivered"], T).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["queued", "sending", "sent", "delivered"],
        "held, then applied after sent"
    );

    // A stale timestamp is a replay: refused.
    let old = (now.parse::<u64>().unwrap() - 3_600).to_string();
    let headers = [
        ("svix-id", "msg_2".to_string()),
        ("svix-timestamp", old.clone()),
        ("svix-signature", sign("msg_2", &old)),
    ];
    let (status, _) = post(port, "/webhooks/resend", &headers, body.to_string()).await;
    assert_eq!(status, 401);
}

/// A Twilio `undelivered` with a temporary carrier error (30003: handset unreachable) is
/// sent again after `resend_after`, as a new attempt; when no attempt is left
/// (`retry.max_attempts`), the same report fails the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_undelivered_30003_is_sent_again_until_attempts_run_out() {
    const SID1: &str = "SM000000000000000000000000000030a1";
    const SID2: &str = "SM000000000000000000000000000030a2";
    let mock = MockProvider::start().await;
    for sid in [SID1, SID2] {
        mock.push(Reply::new(
            201,
            format!(r#"{{"sid":"{sid}","status":"queued","account_sid":"{ACCOUNT}"}}"#),
        ));
    }
    let port = free_port();
    let daemon = Daemon::builder()
        .config(&format!(
            "[webhooks]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{PUBLIC}\"\n\n\
             [[providers]]\nname = \"twilio\"\nplugin = \"twilio\"\naccount_sid = \"{ACCOUNT}\"\n\
             auth_token = \"${{TWILIO_TEST_TOKEN}}\"\nfrom = \"+15005550006\"\nbase_url = \"{}\"\n\
             resend_after = \"1s\"\n\n\
             [routes]\nsms = [\"twilio\"]\n",
            mock.url()
        ))
        .env("TWILIO_TEST_TOKEN", TOKEN)
        .retry("max_attempts = 2")
        .start()
        .await;
    let client = daemon.client().await;
    let ack = client
        .send(sms("+14155550100", "Ann & Bo's wedding: reply YES or NO"))
        .await
        .unwrap();
    events_until(&client, &ack.id, &["sent"], T).await;
    let sent_form = mock.requests()[0].body.clone();
    let callback: String = form_urlencoded::parse(sent_form.as_bytes())
        .find(|(k, _)| k == "StatusCallback")
        .map(|(_, v)| v.into_owned())
        .expect("StatusCallback sent");
    let path_and_query = callback[PUBLIC.len()..].to_string();
    let undelivered = |sid: &'static str| {
        let params = [
            ("MessageSid", sid),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30003"),
            ("AccountSid", ACCOUNT),
            ("From", "+15005550006"),
            ("To", "+14155550100"),
            ("ApiVersion", "2010-04-01"),
        ];
        let sig = twilio_signature(&callback, &params);
        (
            vec![
                (
                    "content-type",
                    "application/x-www-form-urlencoded".to_string(),
                ),
                ("x-twilio-signature", sig),
            ],
            form(&params),
        )
    };

    // Attempt 1 of 2: deferred, then sent again by the mock's second reply.
    let (headers, body) = undelivered(SID1);
    let (status, _) = post(port, &path_and_query, &headers, body.clone()).await;
    assert_eq!(status, 200);
    let events = events_until(&client, &ack.id, &["deferred"], T).await;
    let deferred = events.last().unwrap();
    assert_eq!(deferred.provider.as_deref(), Some("twilio"));
    assert_eq!(deferred.provider_message_id.as_deref(), Some(SID1));
    let detail = deferred.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("30003") && detail.contains("sending again after 1000 ms"),
        "{detail}"
    );
    // Twilio retries the same callback: still one resend.
    let (status, _) = post(port, &path_and_query, &headers, body).await;
    assert_eq!(status, 200);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let view = client.get(&ack.id).await.unwrap();
        if view.state == State::Sent && view.attempt == 2 {
            assert_eq!(view.provider_message_id.as_deref(), Some(SID2));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not sent again: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2, "one new send");
    assert_eq!(reqs[1].body, reqs[0].body, "the same message again");

    // Attempt 2 of 2: the same carrier error now fails the message.
    let (headers, body) = undelivered(SID2);
    let (status, _) = post(port, &path_and_query, &headers, body).await;
    assert_eq!(status, 200);
    let events = events_until(&client, &ack.id, &["failed"], T).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "queued", "sending", "sent", "deferred", "sending", "sent", "failed"
        ]
    );
    let detail = events.last().unwrap().detail.as_deref().unwrap_or_default();
    assert!(detail.contains("no attempt left"), "{detail}");
    let view = client.get(&ack.id).await.unwrap();
    assert_eq!(view.state, State::Failed);
    assert_eq!(mock.count(), 2, "no third send");
}
