//! Priority lanes against the real daemon: a critical message overtakes a queued bulk blast
//! (checked at the mock provider), normal traffic keeps its share while bulk floods, and
//! `herald stats` shows each lane's depth.

use std::time::Duration;

use herald_protocol::{BatchItem, Lane, SendMessage};
use herald_tests::mock::{MockProvider, Recorded};
use herald_tests::{Daemon, sms};

const TIMEOUT: Duration = Duration::from_secs(60);

fn in_lane(lane: Lane, body: &str) -> SendMessage {
    SendMessage {
        lane,
        ..sms("+14155550100", body)
    }
}

/// Queues `messages` in batches of 1000 and checks every one was accepted.
async fn queue(client: &herald_client::Client, messages: Vec<SendMessage>) {
    let mut rest = messages;
    while !rest.is_empty() {
        let batch: Vec<_> = rest.drain(..rest.len().min(1000)).collect();
        let n = batch.len();
        let items = client.send_batch(batch).await.expect("send_batch");
        assert_eq!(items.len(), n);
        for item in items {
            assert!(matches!(item, BatchItem::Accepted(_)), "{item:?}");
        }
    }
}

/// The webhook provider `hook` at `mock` for SMS, with a timeout long enough that a request
/// the mock holds is never given up on while a test looks at the queue.
fn hook(mock: &MockProvider) -> String {
    format!(
        "[[providers]]\nname = \"hook\"\nplugin = \"webhook\"\nurl = \"{}/notify\"\ntimeout = \"10m\"\n\n[routes]\nsms = [\"hook\"]\n",
        mock.url()
    )
}

/// The SMS body a request to the webhook provider carried (its content fields are flattened
/// into the top level).
fn body(r: &Recorded) -> String {
    r.json()["body"].as_str().unwrap_or_default().to_string()
}

/// With 5,000 bulk messages queued and the provider stalled on the one in flight, a
/// critical message is the next request the provider sees: before every bulk message
/// still queued when it was accepted. One delivery at a time makes "the next" exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_message_overtakes_a_queued_bulk_blast() {
    let mock = MockProvider::start().await;
    mock.hold();
    let daemon = Daemon::builder()
        .daemon("concurrency = 1")
        .config(&hook(&mock))
        .start()
        .await;
    let client = daemon.client().await;
    queue(
        &client,
        (0..5000)
            .map(|i| in_lane(Lane::Bulk, &format!("bulk-{i}")))
            .collect(),
    )
    .await;
    // The one bulk message in flight is stalled at the provider; the rest wait.
    mock.wait_for(1, TIMEOUT).await;
    let out = daemon
        .cli()
        .args([
            "send",
            "--json",
            "--channel",
            "sms",
            "--to",
            "+14155550100",
            "--body",
            "critical",
            "--lane",
            "critical",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = mock.requests();
    assert_eq!(before.len(), 1, "one delivery at a time");

    // `herald stats` shows the lanes: the critical message and the bulk backlog.
    let stats = client.stats().await.unwrap();
    let depth = |lane: Lane| {
        stats
            .lanes
            .iter()
            .find(|l| l.lane == lane)
            .map(|l| l.depth)
            .unwrap()
    };
    assert_eq!(depth(Lane::Critical), 1);
    assert_eq!(depth(Lane::Normal), 0);
    assert_eq!(depth(Lane::Bulk), 4999);
    let out = daemon.cli().arg("stats").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lane critical depth 1,"), "{text}");
    assert!(text.contains("lane bulk     depth 4999,"), "{text}");

    mock.release();
    let requests = mock.wait_for(3, TIMEOUT).await;
    assert_eq!(body(&requests[1]), "critical", "{:?}", body(&requests[2]));
    assert!(body(&requests[2]).starts_with("bulk-"));
}

/// Bulk and normal queued together (bulk first, 5:1 more of it): while both wait, normal
/// gets most deliveries (the claim shares 3:1) and bulk still gets some. Floors, not the
/// exact ratio: several deliveries run at once, so arrival order at the mock is loose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_traffic_keeps_its_share_during_a_bulk_blast() {
    let mock = MockProvider::start().await;
    mock.hold();
    let daemon = Daemon::builder()
        .daemon("concurrency = 4")
        .config(&hook(&mock))
        .start()
        .await;
    let client = daemon.client().await;
    queue(
        &client,
        (0..2000)
            .map(|i| in_lane(Lane::Bulk, &format!("bulk-{i}")))
            .collect(),
    )
    .await;
    queue(
        &client,
        (0..400)
            .map(|i| in_lane(Lane::Normal, &format!("normal-{i}")))
            .collect(),
    )
    .await;
    mock.release();
    // Every normal message delivered; bulk keeps going behind them.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let seen = loop {
        let seen = mock.requests();
        let normal = seen
            .iter()
            .filter(|r| body(r).starts_with("normal-"))
            .count();
        if normal == 400 {
            break seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{normal} of 400 normal messages delivered in {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let last_normal = seen
        .iter()
        .rposition(|r| body(r).starts_with("normal-"))
        .unwrap();
    // While normal messages were queued, with 5 bulk for every normal one waiting.
    let window = &seen[..=last_normal];
    let normal = window
        .iter()
        .filter(|r| body(r).starts_with("normal-"))
        .count();
    let bulk = window.len() - normal;
    assert!(
        normal * 100 >= window.len() * 20,
        "normal got {normal} of {} deliveries while both lanes were queued",
        window.len()
    );
    assert!(
        bulk * 100 >= window.len() * 5,
        "bulk got {bulk} of {} deliveries while normal was queued: starved",
        window.len()
    );
    drop(daemon);
}
