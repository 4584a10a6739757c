//! The protocol's edge rules, as `docs/protocol.md` settles them, against the real daemon:
//! a half-closed connection still gets every answer; a postcard frame is exactly one value;
//! request ids stay below 2^53; a full queue refuses only what it would really add (not
//! invalid items, not idempotent retries); `send_at` not in the future is "now" for
//! idempotency.

use herald_client::ClientError;
use herald_protocol::{BatchItem, ClientFrame, Codec, ErrorCode, Request, Response, ServerFrame};
use herald_tests::mock::MockProvider;
use herald_tests::raw::{self, frame};
use herald_tests::{Daemon, email, now_ms, sms};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Server(e)) => e.code,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_connection_gets_an_answer_to_every_request_it_sent() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let requests = [
        json!({"id": 1, "request": {"subscribe": {"from_seq": 0}}}),
        json!({"id": 2, "request": "stats"}),
        json!({"id": 3, "request": {"send": {"to": "ann@example.com",
            "content": {"email": {"subject": "Hi", "text": "x"}}}}}),
        json!({"id": 4, "request": {"subscribe": {}}}),
        json!({"id": 5, "request": {"get": {"id": "nope"}}}),
    ];
    let expected = [
        (1, "subscribed"),
        (2, "stats"),
        (3, "accepted"),
        (4, "subscribed"),
        (5, "error"),
    ];
    // The answers race the daemon noticing the EOF; many rounds make a lost one show.
    for round in 0..25 {
        let (mut s, _) = raw::connect(&daemon.socket, "json").await;
        let mut bytes = Vec::new();
        for r in &requests {
            bytes.extend(frame(r.to_string().as_bytes()));
        }
        s.write_all(&bytes).await.unwrap();
        s.shutdown().await.unwrap(); // half-close: no more requests, still reading
        let frames = raw::read_json_until_closed(&mut s).await;
        let mut answers: Vec<(u64, String)> = frames
            .iter()
            .filter(|f| f["response"].get("event").is_none())
            .map(|f| {
                let name = match &f["response"] {
                    Value::String(s) => s.clone(),
                    Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
                    other => panic!("{other}"),
                };
                (f["id"].as_u64().unwrap(), name)
            })
            .collect();
        answers.sort();
        let want: Vec<(u64, String)> = expected
            .iter()
            .map(|(id, n)| (*id, n.to_string()))
            .collect();
        assert_eq!(answers, want, "round {round}: frames {frames:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postcard_frame_with_trailing_bytes_is_malformed() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let (mut s, _) = raw::connect(&daemon.socket, "postcard").await;
    let stats = |id| {
        herald_protocol::encode(
            Codec::Postcard,
            &ClientFrame {
                id,
                request: Request::Stats,
            },
        )
        .unwrap()
    };
    s.write_all(&frame(&stats(1))).await.unwrap();
    let answer: ServerFrame =
        herald_protocol::decode(Codec::Postcard, &raw::read_frame(&mut s).await.unwrap()).unwrap();
    assert_eq!(answer.id, 1);
    assert!(matches!(answer.response, Response::Stats(_)), "{answer:?}");

    let mut padded = stats(2);
    padded.push(0);
    s.write_all(&frame(&padded)).await.unwrap();
    let answer: ServerFrame =
        herald_protocol::decode(Codec::Postcard, &raw::read_frame(&mut s).await.unwrap()).unwrap();
    match answer.response {
        Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::MalformedFrame);
            assert!(e.message.contains("trailing"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(raw::read_frame(&mut s).await.is_none(), "closed after");
    // The daemon carries on.
    daemon.client().await.stats().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_above_2_pow_53_are_malformed() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let (mut s, _) = raw::connect(&daemon.socket, "json").await;
    s.write_all(&frame(br#"{"id": 9007199254740991, "request": "stats"}"#))
        .await
        .unwrap();
    let answer = raw::read_json(&mut s).await;
    assert_eq!(answer["id"], json!(9_007_199_254_740_991u64), "{answer}");
    assert!(answer["response"]["stats"].is_object(), "{answer}");

    s.write_all(&frame(br#"{"id": 9007199254740993, "request": "stats"}"#))
        .await
        .unwrap();
    let answer = raw::read_json(&mut s).await;
    // The error cannot echo an id a JSON client could not read back: it carries 0.
    assert_eq!(answer["id"], 0, "{answer}");
    assert_eq!(
        answer["response"]["error"]["code"], "malformed_frame",
        "{answer}"
    );
    assert!(
        answer["response"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2^53"),
        "{answer}"
    );
    assert!(raw::read_frame(&mut s).await.is_none(), "closed after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_only_what_it_would_add() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder()
        .webhook_provider(&mock)
        .daemon("max_queue = 2")
        .start()
        .await;
    let client = daemon.client().await;
    // Two scheduled messages fill the queue and stay in it.
    let later = now_ms() + 3_600_000;
    let mut invite = sms("+14155550100", "Will you come?");
    invite.idempotency_key = Some("invite-ann".into());
    invite.send_at = Some(later);
    let first = client.send(invite.clone()).await.unwrap();
    let mut other = email("bo@example.org", "Save the date");
    other.send_at = Some(later);
    client.send(other).await.unwrap();

    // A retry of an accepted message is still safe: `duplicate`, not `busy`.
    let again = client.send(invite.clone()).await.unwrap();
    assert_eq!(
        (again.id.as_str(), again.duplicate),
        (first.id.as_str(), true)
    );
    // The key reused for another message is still a conflict.
    let mut changed = invite.clone();
    changed.content = sms("+14155550100", "changed").content;
    assert_eq!(
        code(client.send(changed).await),
        ErrorCode::IdempotencyConflict
    );
    // An invalid message gets its own error; a new valid one gets `busy`.
    assert_eq!(
        code(client.send(sms("not-a-number", "x")).await),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(client.send(sms("+14155550101", "new")).await),
        ErrorCode::Busy
    );

    // A batch counts only the messages it would add: a retry and an invalid item add none.
    let items = client
        .send_batch(vec![invite.clone(), sms("+1415", "bad")])
        .await
        .unwrap();
    match &items[..] {
        [BatchItem::Accepted(a), BatchItem::Error(e)] => {
            assert_eq!((a.id.as_str(), a.duplicate), (first.id.as_str(), true));
            assert_eq!(e.code, ErrorCode::InvalidField);
        }
        other => panic!("{other:?}"),
    }
    // One new message in the batch is one too many: the whole batch is `busy`.
    assert_eq!(
        code(
            client
                .send_batch(vec![
                    invite,
                    sms("+14155550102", "new"),
                    sms("+1415", "bad")
                ])
                .await
        ),
        ErrorCode::Busy
    );
    assert_eq!(client.stats().await.unwrap().active, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_at_not_in_the_future_is_now_for_idempotency() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let mut m = sms("+14155550100", "Reply YES to come");
    m.idempotency_key = Some("invite-bo".into());
    let first = client.send(m.clone()).await.unwrap();
    assert!(!first.duplicate);
    // A retry that stamps the current (or a past) time asks for the same thing.
    for send_at in [now_ms(), now_ms() - 60_000] {
        m.send_at = Some(send_at);
        let again = client.send(m.clone()).await.unwrap();
        assert_eq!(
            (again.id.as_str(), again.duplicate),
            (first.id.as_str(), true)
        );
    }
    // A later time is another message.
    m.send_at = Some(now_ms() + 3_600_000);
    assert_eq!(code(client.send(m).await), ErrorCode::IdempotencyConflict);
}
