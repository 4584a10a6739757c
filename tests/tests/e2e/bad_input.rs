//! Bad input on one connection gets an error frame and a closed connection while other
//! connections keep working; a client written with nothing but a Unix socket and
//! serde_json can send and subscribe.

use std::time::Duration;

use herald_tests::mock::MockProvider;
use herald_tests::{Daemon, email};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

async fn write_frame(s: &mut UnixStream, body: &[u8]) {
    s.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(body).await.unwrap();
}

/// Reads one frame; `None` when the server closed the connection.
async fn read_frame(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut len))
        .await
        .expect("server answered in time")
        .ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(body)
}

async fn read_json(s: &mut UnixStream) -> Value {
    serde_json::from_slice(&read_frame(s).await.expect("a frame")).expect("JSON frame")
}

async fn json_conn(daemon: &Daemon) -> UnixStream {
    let mut s = UnixStream::connect(&daemon.socket).await.unwrap();
    write_frame(&mut s, br#"{"herald": 1, "codec": "json"}"#).await;
    let welcome = read_json(&mut s).await;
    assert_eq!(welcome["herald"], 1, "{welcome}");
    s
}

async fn assert_closed(s: &mut UnixStream) {
    assert!(read_frame(s).await.is_none(), "connection should be closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_one_connection_does_not_disturb_another() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;

    // A well-behaved client keeps sending the whole time.
    let client = daemon.client().await;
    let good = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..200 {
            ids.push(
                client
                    .send(email(&format!("ok{i}@example.org"), "fine"))
                    .await
                    .expect("good client unaffected")
                    .id,
            );
        }
        ids
    });

    // 1. Random bytes as the hello.
    let mut s = UnixStream::connect(&daemon.socket).await.unwrap();
    let noise: Vec<u8> = (0..64u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    s.write_all(&noise).await.unwrap();
    // Either an error frame then close, or a close (the prefix may claim a huge length).
    if let Some(frame) = read_frame(&mut s).await {
        let v: Value = serde_json::from_slice(&frame).unwrap();
        assert!(v["response"]["error"]["code"].is_string(), "{v}");
        assert_closed(&mut s).await;
    }

    // 2. A 100 MiB length prefix after a valid hello.
    let mut s = json_conn(&daemon).await;
    s.write_all(&(100u32 * 1024 * 1024).to_be_bytes())
        .await
        .unwrap();
    let v = read_json(&mut s).await;
    assert_eq!(v["response"]["error"]["code"], "frame_too_large", "{v}");
    assert!(
        v["response"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_frame")
    );
    assert_closed(&mut s).await;

    // 3. Invalid JSON.
    let mut s = json_conn(&daemon).await;
    write_frame(&mut s, b"{\"id\": 5, \"request\": {\"send\": ").await;
    let v = read_json(&mut s).await;
    assert_eq!(v["response"]["error"]["code"], "malformed_frame", "{v}");
    assert_closed(&mut s).await;

    // 4. An unknown request type: the error echoes the id.
    let mut s = json_conn(&daemon).await;
    write_frame(&mut s, br#"{"id": 9, "request": {"launch_rockets": {}}}"#).await;
    let v = read_json(&mut s).await;
    assert_eq!(v["id"], 9);
    assert_eq!(v["response"]["error"]["code"], "malformed_frame", "{v}");
    assert!(
        v["response"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("launch_rockets"),
        "{v}"
    );
    assert_closed(&mut s).await;

    // 5. A hello for a protocol version we do not speak.
    let mut s = UnixStream::connect(&daemon.socket).await.unwrap();
    write_frame(&mut s, br#"{"herald": 99, "codec": "json"}"#).await;
    let v = read_json(&mut s).await;
    assert_eq!(
        v["response"]["error"]["code"], "unsupported_protocol",
        "{v}"
    );
    assert_closed(&mut s).await;

    // 6. Postcard garbage after a postcard hello.
    let mut s = UnixStream::connect(&daemon.socket).await.unwrap();
    write_frame(&mut s, br#"{"herald": 1, "codec": "postcard"}"#).await;
    read_frame(&mut s).await.expect("welcome");
    write_frame(&mut s, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x42]).await;
    assert!(read_frame(&mut s).await.is_some(), "error frame");
    assert_closed(&mut s).await;

    let ids = good.await.unwrap();
    assert_eq!(ids.len(), 200);
    mock.wait_for(200, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_plain_json_client_can_send_and_subscribe() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let mut s = json_conn(&daemon).await;

    // Subscribe to everything tagged "rsvp", live.
    write_frame(
        &mut s,
        json!({"id": 1, "request": {"subscribe": {"filter": {"tags": ["rsvp"]}}}})
            .to_string()
            .as_bytes(),
    )
    .await;
    let v = read_json(&mut s).await;
    assert_eq!(v["id"], 1);
    assert!(v["response"]["subscribed"]["last_seq"].is_u64(), "{v}");

    // Pipelined: two sends without waiting.
    for (id, to) in [(2, "p@example.org"), (3, "q@example.org")] {
        let frame = json!({"id": id, "request": {"send": {
            "to": to,
            "content": {"email": {"subject": "RSVP", "text": "Will you come?"}},
            "tags": ["rsvp"]
        }}});
        write_frame(&mut s, frame.to_string().as_bytes()).await;
    }
    let mut accepted = Vec::new();
    let mut sent = Vec::new();
    while accepted.len() < 2 || sent.len() < 2 {
        let v = read_json(&mut s).await;
        match v["id"].as_u64() {
            Some(2 | 3) => {
                assert_eq!(v["response"]["accepted"]["duplicate"], false, "{v}");
                accepted.push(
                    v["response"]["accepted"]["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            Some(1) => {
                let e = &v["response"]["event"];
                assert_eq!(e["tags"], json!(["rsvp"]));
                if e["kind"] == "sent" {
                    sent.push(e["message_id"].as_str().unwrap().to_string());
                }
            }
            _ => panic!("unexpected frame {v}"),
        }
    }
    accepted.sort();
    sent.sort();
    assert_eq!(accepted, sent);

    // Get by id, and stats (a unit request).
    write_frame(
        &mut s,
        json!({"id": 4, "request": {"get": {"id": accepted[0]}}})
            .to_string()
            .as_bytes(),
    )
    .await;
    write_frame(&mut s, br#"{"id": 5, "request": "stats"}"#).await;
    let mut got = std::collections::HashMap::new();
    while got.len() < 2 {
        let v = read_json(&mut s).await;
        if let Some(id @ (4 | 5)) = v["id"].as_u64() {
            got.insert(id, v);
        }
    }
    assert_eq!(got[&4]["response"]["message"]["state"], "sent");
    assert!(got[&5]["response"]["stats"]["last_seq"].as_u64().unwrap() >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0660_and_a_second_daemon_refuses_it() {
    use std::os::unix::fs::PermissionsExt;
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    let data_mode = std::fs::metadata(&daemon.data_dir)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(data_mode, 0o700);

    let out = std::process::Command::new(herald_tests::heraldd_path())
        .arg("--config")
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    // The first daemon is unharmed.
    daemon
        .client()
        .await
        .send(email("z@example.org", "still here"))
        .await
        .unwrap();
}

/// Control characters in any field that ends up in a header or on one line are refused at
/// accept with `invalid_field` naming the field's path; nothing is stored, the connection
/// stays open, and bodies keep their line breaks.
#[tokio::test]
async fn control_characters_in_header_like_fields_are_refused_naming_the_field() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let mut s = json_conn(&daemon).await;

    let email = |extra: Value| {
        let mut content = json!({"subject": "RSVP", "text": "Will you come?"});
        for (k, v) in extra.as_object().unwrap() {
            content[k] = v.clone();
        }
        json!({"to": "ann@example.org", "content": {"email": content}})
    };
    let attachment = |filename: &str, content_type: &str| {
        json!({"attachments": [
            {"filename": "menu.txt", "content_type": "text/plain", "content": "aGk="},
            {"filename": filename, "content_type": content_type, "content": "aGk="}
        ]})
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            email(attachment(
                "invite.ics",
                "text/calendar\r\nBcc: spy@example.net",
            )),
            "content.email.attachments[1].content_type",
        ),
        (
            email(attachment("invite\n.ics", "text/calendar")),
            "content.email.attachments[1].filename",
        ),
        (
            email(json!({"subject": "RSVP\r\nBcc: spy@example.net"})),
            "content.email.subject",
        ),
        (
            email(json!({"subject": "RSVP\u{2028}now"})),
            "content.email.subject",
        ),
        (
            email(json!({"from": "Ann\u{85}Lee <ann@example.com>"})),
            "content.email.from",
        ),
        (
            email(json!({"reply_to": "\"Planner\tOffice\" <p@example.com>"})),
            "content.email.reply_to",
        ),
        (
            email(json!({"headers": {"X-Campaign": "june\u{7f}"}})),
            r#"content.email.headers["X-Campaign"]"#,
        ),
        (email(json!({"text": "nul\u{0}"})), "content.email.text"),
        (
            json!({"to": "Ann\rLee <ann@example.org>", "content": {"email": {"subject": "x", "text": "y"}}}),
            "to",
        ),
        (
            json!({"to": "+14155550100", "content": {"sms": {"body": "hi", "from": "Wed\nding"}}}),
            "content.sms.from",
        ),
        (
            json!({"to": "+14155550100", "content": {"sms": {"body": "", "media_urls": ["https://x.example/a\r\n.png"]}}}),
            "content.sms.media_urls[0]",
        ),
        (
            json!({"to": "device-token-123456", "content": {"push": {"title": "Hi\u{1b}[2J"}}}),
            "content.push.title",
        ),
        (
            json!({"to": "device-token-123456", "content": {"push": {"title": "Hi", "collapse_id": "rsvp\r\n"}}}),
            "content.push.collapse_id",
        ),
        (
            json!({"to": "device-token-123456", "content": {"push": {"title": "Hi", "sound": "ding\n"}}}),
            "content.push.sound",
        ),
        (
            {
                let mut m = email(json!({}));
                m["tags"] = json!(["rsvp", "wedding\n42"]);
                m
            },
            "tags[1]",
        ),
        (
            {
                let mut m = email(json!({}));
                m["idempotency_key"] = json!("invite-42\r\n");
                m
            },
            "idempotency_key",
        ),
    ];
    // Pipelined on one connection: each gets its own error, none closes it.
    for (i, (m, _)) in cases.iter().enumerate() {
        let frame = json!({"id": 100 + i, "request": {"send": m}});
        write_frame(&mut s, frame.to_string().as_bytes()).await;
    }
    let mut answers = std::collections::HashMap::new();
    while answers.len() < cases.len() {
        let v = read_json(&mut s).await;
        answers.insert(v["id"].as_u64().unwrap() - 100, v);
    }
    for (i, (_, field)) in cases.iter().enumerate() {
        let e = &answers[&(i as u64)]["response"]["error"];
        assert_eq!(e["code"], "invalid_field", "case {i}: {e}");
        assert_eq!(e["field"], *field, "case {i}: {e}");
    }
    let e = &answers[&0]["response"]["error"];
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("carriage return (CR)"),
        "{e}"
    );

    // Nothing was stored; the same connection still works, and bodies keep line breaks.
    write_frame(&mut s, br#"{"id": 1, "request": "stats"}"#).await;
    let v = read_json(&mut s).await;
    assert_eq!(v["response"]["stats"]["last_seq"], 0, "{v}");
    let ok = email(
        json!({"text": "Line one\r\nLine two\twith a tab", "attachments": [
            {"filename": "invite.ics", "content_type": "text/calendar; method=REQUEST", "content": "aGk="}
        ]}),
    );
    write_frame(
        &mut s,
        json!({"id": 2, "request": {"send": ok}})
            .to_string()
            .as_bytes(),
    )
    .await;
    let v = read_json(&mut s).await;
    assert_eq!(v["response"]["accepted"]["duplicate"], false, "{v}");
    mock.wait_for(1, Duration::from_secs(30)).await;
}
