//! A message's life through the real daemon: events in order, retries, permanent failures,
//! dead letters, idempotency, scheduled sends, cancellation.

use std::time::Duration;

use herald_client::ClientError;
use herald_plugin_api::State;
use herald_protocol::ErrorCode;
use herald_tests::mock::{MockProvider, Reply};
use herald_tests::{Daemon, assert_idle, email, events_until, kinds, now_ms, sms};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn send_goes_queued_sending_sent_and_reaches_the_provider() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let mut m = email("ann@example.org", "You're invited");
    m.tags = vec!["rsvp".into(), "wedding-42".into()];
    let ack = client.send(m).await.unwrap();
    assert!(!ack.duplicate);

    let events = events_until(&client, &ack.id, &["sent"], T).await;
    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    let sent = events.last().unwrap();
    assert_eq!(sent.provider.as_deref(), Some("hook"));
    assert_eq!(sent.provider_message_id.as_deref(), Some("mock-1"));
    assert_eq!(sent.tags, ["rsvp", "wedding-42"]);

    let req = &mock.requests()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/notify");
    assert_eq!(req.header("idempotency-key"), Some(ack.id.as_str()));
    let body = req.json();
    assert_eq!(body["id"], ack.id);
    assert_eq!(body["channel"], "email");
    assert_eq!(body["to"], "ann@example.org");
    assert_eq!(body["subject"], "You're invited");
    assert_eq!(body["attempt"], 1);

    let view = client.get(&ack.id).await.unwrap();
    assert_eq!(view.state, State::Sent);
    assert_eq!(view.provider_message_id.as_deref(), Some("mock-1"));
}

#[tokio::test]
async fn outbox_reports_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::builder()
        .config(&format!(
            "[[providers]]\nname = \"dev\"\nplugin = \"outbox\"\ndir = \"{}\"\n[routes]\nsms = [\"dev\"]\n",
            dir.path().display()
        ))
        .start()
        .await;
    let client = daemon.client().await;
    let ack = client
        .send(sms("+14155550100", "RSVP by Friday?"))
        .await
        .unwrap();
    let events = events_until(&client, &ack.id, &["delivered"], T).await;
    assert_eq!(kinds(&events), ["queued", "sending", "sent", "delivered"]);
    let file = dir.path().join(format!("{}.json", ack.id));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(
        written["message"]["content"]["sms"]["body"],
        "RSVP by Friday?"
    );
}

#[tokio::test]
async fn a_503_is_retried_then_delivered_with_deferred_in_between() {
    let mock = MockProvider::start().await;
    mock.push(Reply::new(503, r#"{"error":"down"}"#));
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let ack = client
        .send(email("bo@example.org", "retry me"))
        .await
        .unwrap();
    let events = events_until(&client, &ack.id, &["sent", "dead", "failed"], T).await;
    assert_eq!(
        kinds(&events),
        ["queued", "sending", "deferred", "sending", "sent"]
    );
    assert!(
        events[2].detail.as_deref().unwrap().contains("503"),
        "{:?}",
        events[2].detail
    );
    assert_eq!(events[3].attempt, Some(2));
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].json()["attempt"], 2);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let mock = MockProvider::start().await;
    mock.push(Reply::new(429, "{}").header("retry-after", "2"));
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let ack = client
        .send(email("cy@example.org", "slow down"))
        .await
        .unwrap();
    let events = events_until(&client, &ack.id, &["sent"], T).await;
    let deferred = events
        .iter()
        .find(|e| e.kind.as_str() == "deferred")
        .unwrap();
    let sent = events.last().unwrap();
    assert!(
        sent.at - deferred.at >= 1_900,
        "retried after {} ms",
        sent.at - deferred.at
    );
}

#[tokio::test]
async fn a_400_fails_without_retry() {
    let mock = MockProvider::start().await;
    mock.set_default(Reply::new(400, r#"{"error":"bad recipient"}"#));
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let ack = client.send(email("di@example.org", "nope")).await.unwrap();
    let events = events_until(&client, &ack.id, &["failed"], T).await;
    assert_eq!(kinds(&events), ["queued", "sending", "failed"]);
    assert_idle(&client).await;
    assert_eq!(mock.count(), 1, "a permanent failure is not retried");
    assert_eq!(client.get(&ack.id).await.unwrap().state, State::Failed);
}

#[tokio::test]
async fn exhausted_attempts_go_dead_and_can_be_requeued() {
    let mock = MockProvider::start().await;
    mock.set_default(Reply::new(503, "{}"));
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let ack = client
        .send(email("ed@example.org", "doomed"))
        .await
        .unwrap();
    let events = events_until(&client, &ack.id, &["dead"], T).await;
    assert_eq!(
        kinds(&events),
        [
            "queued", "sending", "deferred", "sending", "deferred", "sending", "dead"
        ]
    );
    assert_eq!(mock.count(), 3, "max_attempts = 3");
    let dead = client.dead_list(None).await.unwrap();
    assert_eq!(
        dead.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        [ack.id.as_str()]
    );

    // The provider recovers; the operator re-queues.
    mock.set_default(Reply::new(200, r#"{"id":"late"}"#));
    assert_eq!(client.dead_requeue(vec![ack.id.clone()]).await.unwrap(), 1);
    let events = events_until(&client, &ack.id, &["sent"], T).await;
    assert_eq!(
        events.last().unwrap().provider_message_id.as_deref(),
        Some("late")
    );
    assert!(client.dead_list(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn idempotency_key_makes_one_message() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let mut m = email("fi@example.org", "once");
    m.idempotency_key = Some("invite-42".into());
    let first = client.send(m.clone()).await.unwrap();
    let second = client.send(m.clone()).await.unwrap();
    assert_eq!(first.id, second.id);
    assert!(!first.duplicate && second.duplicate);

    let mut other = m.clone();
    other.to = "gi@example.org".into();
    match client.send(other).await {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::IdempotencyConflict);
            assert!(e.message.contains(&first.id), "{}", e.message);
        }
        r => panic!("expected idempotency_conflict, got {r:?}"),
    }
    events_until(&client, &first.id, &["sent"], T).await;
    assert_idle(&client).await;
    assert_eq!(mock.count(), 1);
}

#[tokio::test]
async fn send_at_is_not_delivered_early() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let send_at = now_ms() + 2_000;
    let mut m = email("hi@example.org", "later");
    m.send_at = Some(send_at);
    let ack = client.send(m).await.unwrap();
    assert_eq!(client.get(&ack.id).await.unwrap().due_at, Some(send_at));
    let events = events_until(&client, &ack.id, &["sent"], T).await;
    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    // The delivery was leased (and its request made) no earlier than send_at.
    assert!(
        events[1].at >= send_at,
        "sending at {} < {send_at}",
        events[1].at
    );
    assert_eq!(mock.count(), 1);
}

#[tokio::test]
async fn cancel_of_a_queued_message_means_never_delivered() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let mut m = email("jo@example.org", "cancel me");
    m.send_at = Some(now_ms() + 3_600_000);
    let ack = client.send(m).await.unwrap();
    client.cancel(&ack.id).await.unwrap();
    let events = events_until(&client, &ack.id, &["cancelled"], T).await;
    assert_eq!(kinds(&events), ["queued", "cancelled"]);
    // Nothing is left scheduled that could still deliver it.
    assert_idle(&client).await;
    assert_eq!(mock.count(), 0);
    assert_eq!(client.get(&ack.id).await.unwrap().state, State::Cancelled);

    // A sent message can no longer be cancelled.
    let sent = client
        .send(email("ko@example.org", "too late"))
        .await
        .unwrap();
    events_until(&client, &sent.id, &["sent"], T).await;
    match client.cancel(&sent.id).await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::NotCancellable),
        r => panic!("expected not_cancellable, got {r:?}"),
    }
}

#[tokio::test]
async fn validation_errors_name_the_field_and_nothing_is_stored() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let cases = [
        (sms("555-0100", "hi"), "to"),
        (email("not-an-address", "x"), "to"),
        (email("a@example.org", ""), "content.email.subject"),
    ];
    for (m, field) in cases {
        match client.send(m).await {
            Err(ClientError::Server(e)) => {
                assert_eq!(e.code, ErrorCode::InvalidField);
                assert_eq!(e.field.as_deref(), Some(field), "{e}");
            }
            r => panic!("expected invalid_field {field}, got {r:?}"),
        }
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.last_seq, 0, "nothing stored, no event");
}

#[tokio::test]
async fn channel_without_route_and_full_queue_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::builder()
        .daemon("max_queue = 2")
        .config(&format!(
            "[[providers]]\nname = \"dev\"\nplugin = \"outbox\"\ndir = \"{}\"\n[routes]\nemail = [\"dev\"]\n",
            dir.path().display()
        ))
        .start()
        .await;
    let client = daemon.client().await;
    match client.send(sms("+14155550100", "hi")).await {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::NoRoute);
            assert!(e.message.contains("[routes]"), "{}", e.message);
        }
        r => panic!("expected no_route, got {r:?}"),
    }
    // Scheduled far ahead, these stay queued and fill the queue.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    for i in 0..2 {
        let mut m = email("a@example.org", &format!("n{i}"));
        m.send_at = Some(later);
        client.send(m).await.unwrap();
    }
    let mut m = email("a@example.org", "one too many");
    m.send_at = Some(later);
    match client.send(m).await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::Busy, "{e}"),
        r => panic!("expected busy, got {r:?}"),
    }
    assert_eq!(client.stats().await.unwrap().active, 2);
}

#[tokio::test]
async fn send_batch_answers_each_message_in_order() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let items = client
        .send_batch(vec![
            email("a@example.org", "one"),
            sms("bad", "two"),
            email("b@example.org", "three"),
        ])
        .await
        .unwrap();
    use herald_protocol::BatchItem;
    assert!(matches!(&items[0], BatchItem::Accepted(_)));
    assert!(matches!(&items[1], BatchItem::Error(e) if e.field.as_deref() == Some("to")));
    assert!(matches!(&items[2], BatchItem::Accepted(_)));
    mock.wait_for(2, T).await;
}
