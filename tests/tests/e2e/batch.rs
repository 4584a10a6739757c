//! Provider batch requests through the real daemon and the real Resend plugin: due emails
//! go to `POST /emails/batch` (up to 100 a request), each message keeps its own outcome and
//! provider id, a failed batch is retried for every message, attachments go alone, and a
//! batch cut short by SIGKILL is sent again after the restart under the same idempotency key.
//!
//! The messages of a test are submitted in one `send_batch` with one `send_at` a few seconds
//! ahead, so they become due together and the dispatcher claims them at once: that is what
//! makes the grouping predictable.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use herald_plugin_api::{Attachment, Content};
use herald_protocol::{BatchItem, SendMessage};
use herald_tests::mock::{MockProvider, Recorded, Reply};
use herald_tests::{Daemon, email, events_until, free_port, now_ms};
use serde_json::{Value, json};

use crate::guests::{resend_daemon, resend_webhook};

const T: Duration = Duration::from_secs(120);
/// How far ahead the messages of a test are due: time to submit them all first.
const AHEAD_MS: u64 = 4_000;

/// The mock answers a batch with ids derived from each email's `herald_id` tag (so a test
/// can tell which id belongs to which message) and a single send likewise.
fn answer_like_resend(mock: &MockProvider) {
    mock.rule(|r| {
        let body = r.json();
        match r.path.as_str() {
            "/emails/batch" => {
                let data: Vec<Value> = body
                    .as_array()?
                    .iter()
                    .map(|e| json!({"id": provider_id(e)}))
                    .collect();
                Some(Reply::new(200, json!({"data": data}).to_string()))
            }
            "/emails" => Some(Reply::new(
                200,
                json!({"id": provider_id(&body)}).to_string(),
            )),
            _ => None,
        }
    });
}

/// `re-<herald id>`, from the email's `herald_id` tag.
fn provider_id(email: &Value) -> String {
    let id = email["tags"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "herald_id"))
        .and_then(|t| t["value"].as_str())
        .unwrap_or("?");
    format!("re-{id}")
}

/// The herald ids of a request's emails, in order.
fn herald_ids(r: &Recorded) -> Vec<String> {
    let body = r.json();
    let emails = match body.as_array() {
        Some(list) => list.clone(),
        None => vec![body],
    };
    emails
        .iter()
        .map(|e| provider_id(e).trim_start_matches("re-").to_string())
        .collect()
}

fn batches(mock: &MockProvider) -> Vec<Recorded> {
    mock.requests()
        .into_iter()
        .filter(|r| r.path == "/emails/batch")
        .collect()
}

/// Submits `n` emails due together, `AHEAD_MS` from now; returns their ids and whether the
/// submission finished before they became due (else the daemon may have claimed them in
/// several parts, and only the invariants can be checked, not the exact grouping).
async fn submit_due_together(daemon: &Daemon, n: usize) -> (Vec<String>, bool) {
    let messages = (0..n)
        .map(|i| email(&format!("guest{i}@example.org"), "Save the date"))
        .collect();
    submit_all_due_together(daemon, messages).await
}

/// [`submit_due_together`] for given messages.
async fn submit_all_due_together(
    daemon: &Daemon,
    mut messages: Vec<SendMessage>,
) -> (Vec<String>, bool) {
    let client = daemon.client().await;
    let send_at = now_ms() + AHEAD_MS;
    for m in &mut messages {
        m.send_at = Some(send_at);
    }
    let items = client.send_batch(messages).await.unwrap();
    let in_time = now_ms() < send_at;
    let ids = items
        .into_iter()
        .map(|i| match i {
            BatchItem::Accepted(a) => a.id,
            BatchItem::Error(e) => panic!("not accepted: {e:?}"),
        })
        .collect();
    (ids, in_time)
}

/// Waits until every message is `sent`.
async fn all_sent(daemon: &Daemon, ids: &[String]) {
    let client = daemon.client().await;
    for id in ids {
        events_until(&client, id, &["sent"], T).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_emails_go_in_three_batch_requests_with_their_own_ids() {
    let mock = MockProvider::start().await;
    answer_like_resend(&mock);
    let port = free_port();
    let daemon = resend_daemon(&mock, port).await;
    let (ids, in_time) = submit_due_together(&daemon, 250).await;
    all_sent(&daemon, &ids).await;

    let requests = mock.requests();
    let batch_requests = batches(&mock);
    assert!(
        requests.iter().all(|r| r.path == "/emails/batch"),
        "nothing went alone: {:?}",
        requests.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    let sizes: Vec<usize> = batch_requests.iter().map(|r| herald_ids(r).len()).collect();
    assert!(sizes.iter().all(|n| (2..=100).contains(n)), "{sizes:?}");
    if in_time {
        let mut sorted = sizes.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [50, 100, 100], "claimed at once: 100/100/50");
    }
    // Each message once, in exactly one request.
    let sent: Vec<String> = batch_requests.iter().flat_map(herald_ids).collect();
    assert_eq!(sent.len(), 250);
    assert_eq!(
        sent.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>()
    );
    // Every batch request has its own idempotency key, derived from its ids.
    let keys: HashSet<&str> = batch_requests
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(keys.len(), batch_requests.len());

    // The provider id of each message is recorded as for a single send: a webhook naming
    // only the provider's email id (no herald_id tag) finds its message.
    let client = daemon.client().await;
    let one = &ids[137];
    let body = json!({
        "type": "email.delivered",
        "created_at": "2026-11-24T20:00:00.000Z",
        "data": {
            "email_id": format!("re-{one}"),
            "from": "Events <events@example.com>",
            "to": ["guest137@example.org"],
            "subject": "Save the date"
        }
    });
    resend_webhook(port, "msg_batch_delivered", &body.to_string()).await;
    events_until(&client, one, &["delivered"], T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answered_500_is_retried_for_every_message() {
    let mock = MockProvider::start().await;
    mock.push(Reply::new(
        500,
        r#"{"statusCode":500,"name":"application_error","message":"boom"}"#,
    ));
    answer_like_resend(&mock);
    let daemon = resend_daemon(&mock, free_port()).await;
    let (ids, _) = submit_due_together(&daemon, 30).await;
    all_sent(&daemon, &ids).await;

    // The retries may go in other groups, or alone: every request counts.
    let requests = mock.requests();
    assert!(requests.len() >= 2, "{}", requests.len());
    assert_eq!(requests[0].path, "/emails/batch");
    let failed = herald_ids(&requests[0]);
    assert!(failed.len() >= 2);
    // Every message of the failed request was sent again, and each message was accepted
    // exactly once after that.
    let later: Vec<String> = requests[1..].iter().flat_map(herald_ids).collect();
    for id in &failed {
        assert_eq!(
            later.iter().filter(|l| *l == id).count(),
            1,
            "{id} retried once"
        );
    }
    assert_eq!(
        later.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>()
    );
    let client = daemon.client().await;
    for id in &failed {
        let m = client.get(id).await.unwrap();
        assert_eq!(m.attempt, 2, "{id}: one failed attempt, one good");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_with_an_attachment_goes_alone() {
    let mock = MockProvider::start().await;
    answer_like_resend(&mock);
    let daemon = resend_daemon(&mock, free_port()).await;
    let messages = (0..3)
        .map(|i| {
            let mut m = email(&format!("guest{i}@example.org"), "Menu");
            if i == 1 {
                let Content::Email(e) = &mut m.content else {
                    unreachable!()
                };
                e.attachments.push(Attachment {
                    filename: "menu.pdf".into(),
                    content_type: Some("application/pdf".into()),
                    content: "JVBERi0xLjQK".into(),
                });
            }
            m
        })
        .collect();
    let (ids, in_time) = submit_all_due_together(&daemon, messages).await;
    all_sent(&daemon, &ids).await;

    let singles: Vec<Recorded> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path == "/emails")
        .collect();
    let alone: Vec<&Recorded> = singles
        .iter()
        .filter(|r| herald_ids(r) == [ids[1].clone()])
        .collect();
    assert_eq!(alone.len(), 1, "the attachment went alone, once");
    assert_eq!(alone[0].json()["attachments"][0]["filename"], "menu.pdf");
    assert_eq!(
        alone[0].header("idempotency-key"),
        Some(ids[1].as_str()),
        "a single send keeps the message id as its key"
    );
    for r in batches(&mock) {
        assert!(
            r.json()
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e.get("attachments").is_none()),
            "no attachment in a batch"
        );
        assert!(!herald_ids(&r).contains(&ids[1]));
    }
    if in_time {
        // Claimed together: the other two shared one batch request.
        assert_eq!(singles.len(), 1, "only the attachment went alone");
        let batched: Vec<String> = batches(&mock).iter().flat_map(herald_ids).collect();
        assert_eq!(batched.len(), 2);
        assert_eq!(
            batched.iter().collect::<HashSet<_>>(),
            [&ids[0], &ids[2]].into_iter().collect::<HashSet<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_short_by_sigkill_is_sent_again_under_the_same_key() {
    let mock = MockProvider::start().await;
    answer_like_resend(&mock);
    mock.hold();
    let mut daemon = resend_daemon(&mock, free_port()).await;
    let (ids, in_time) = submit_due_together(&daemon, 40).await;
    // The first batch request is out (and unanswered): kill the daemon mid-batch.
    let first = mock.wait_for(1, T).await[0].clone();
    assert_eq!(first.path, "/emails/batch");
    daemon.kill();
    mock.release();

    daemon.restart().await;
    all_sent(&daemon, &ids).await;
    // Every acknowledged message reached the provider after the restart...
    let requests = batches(&mock);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &requests {
        for id in herald_ids(r) {
            *seen.entry(id).or_default() += 1;
        }
    }
    for id in &ids {
        assert!(seen.contains_key(id), "{id} never reached the provider");
    }
    // ...and the batch the kill cut short (all 40, claimed at once) went again with the same
    // key and body, which a real Resend answers from its idempotency store instead of
    // sending twice.
    if !in_time {
        return;
    }
    assert_eq!(herald_ids(&first).len(), 40);
    let again: Vec<&Recorded> = requests[1..]
        .iter()
        .filter(|r| herald_ids(r) == herald_ids(&first))
        .collect();
    assert!(
        !again.is_empty(),
        "the cut-short batch was sent again as the same batch: {:?}",
        requests.iter().map(herald_ids).collect::<Vec<_>>()
    );
    assert_eq!(
        again[0].header("idempotency-key"),
        first.header("idempotency-key")
    );
    assert_eq!(again[0].body, first.body);
}
