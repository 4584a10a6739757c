//! Nothing acknowledged is ever lost: SIGKILL the real daemon under load and during its
//! own start-up, restart it, and check every acknowledged message reaches the provider and
//! the event log has no gaps.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_client::Client;
use herald_protocol::Filter;
use herald_tests::mock::MockProvider;
use herald_tests::{Daemon, email};

/// Replays the whole retained log and checks `seq` has no gaps.
async fn assert_log_without_gaps(client: &Client) -> Vec<herald_plugin_api::Event> {
    let mut sub = client.subscribe(Filter::default(), Some(0)).await.unwrap();
    let (first, last) = (sub.first_seq, sub.last_seq);
    assert_eq!(first, 1, "nothing pruned yet");
    let mut events = Vec::new();
    while events.len() < (last - first + 1) as usize {
        let e = tokio::time::timeout(Duration::from_secs(30), sub.next_event())
            .await
            .expect("replay stalled")
            .expect("stream open")
            .expect("event");
        events.push(e);
    }
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.seq,
            first + i as u64,
            "gap in the event log before {}",
            e.seq
        );
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    let mock = MockProvider::start().await;
    let mut daemon = Daemon::builder().webhook_provider(&mock).start().await;

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut senders = Vec::new();
    for conn in 0..8 {
        let client = daemon.client().await;
        let acked = Arc::clone(&acked);
        senders.push(tokio::spawn(async move {
            // Pipelined: 32 requests in flight per connection.
            let mut inflight = tokio::task::JoinSet::new();
            for i in 0..100_000u32 {
                if inflight.len() >= 32 {
                    match inflight.join_next().await {
                        Some(Ok(Ok(id))) => {
                            acked.lock().unwrap().insert(id);
                        }
                        _ => return,
                    }
                }
                let c = client.clone();
                inflight.spawn(async move {
                    c.send(email(&format!("guest{conn}-{i}@example.org"), "crash test"))
                        .await
                        .map(|a| a.id)
                });
            }
        }));
    }
    // Let a few thousand acknowledgements happen, then pull the plug.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 3_000 {
        assert!(tokio::time::Instant::now() < deadline, "senders too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.kill();
    for s in senders {
        let _ = s.await;
    }
    let acked: HashSet<String> = acked.lock().unwrap().clone();
    let delivered_before = mock.count();
    eprintln!(
        "killed with {} acknowledged, {} delivered",
        acked.len(),
        delivered_before
    );

    daemon.restart().await;
    // Every acknowledged message reaches the provider.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let seen: HashSet<String> = mock
            .requests()
            .iter()
            .filter_map(|r| r.json()["id"].as_str().map(String::from))
            .collect();
        let missing: Vec<&String> = acked.difference(&seen).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} acknowledged messages never reached the provider, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = daemon.client().await;
    // Let the daemon settle, then check the log and the duplicates.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while client.stats().await.unwrap().active > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = assert_log_without_gaps(&client).await;

    // Duplicates are allowed only for messages whose earlier delivery was never recorded:
    // in flight at the kill (re-queued on restart), or claimed and sent while the claim
    // itself was not yet on disk (claims are answered on commit, not flush: the message was
    // still plainly queued after the restart). Either way the log holds exactly one `sent`
    // per message — a delivery whose outcome was recorded is never repeated.
    let requeued: HashSet<&str> = events
        .iter()
        .filter(|e| {
            e.detail
                .as_deref()
                .is_some_and(|d| d.contains("daemon stopped while"))
        })
        .filter_map(|e| e.message_id.as_deref())
        .collect();
    let mut sent: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        if e.kind == herald_plugin_api::EventKind::Sent
            && let Some(id) = e.message_id.as_deref()
        {
            *sent.entry(id).or_default() += 1;
        }
    }
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    for r in mock.requests() {
        if let Some(id) = r.json()["id"].as_str() {
            *deliveries.entry(id.to_string()).or_default() += 1;
        }
    }
    for id in deliveries.keys() {
        assert_eq!(
            sent.get(id.as_str()).copied().unwrap_or(0),
            1,
            "{id}: one recorded `sent` per delivered message (delivered {} times)",
            deliveries[id]
        );
    }
    let repeated = deliveries.values().filter(|n| **n > 1).count();
    eprintln!(
        "after restart: {} distinct delivered, {} re-queued, {} delivered again, {} events",
        deliveries.len(),
        requeued.len(),
        repeated,
        events.len()
    );
}

#[tokio::test]
async fn killed_during_startup_it_starts_again_with_its_data() {
    let mock = MockProvider::start().await;
    // Send everything to a provider that is paused (503s), so the data stays queued.
    mock.set_default(herald_tests::mock::Reply::new(503, "{}"));
    let mut daemon = Daemon::builder()
        .webhook_provider(&mock)
        .retry("max_attempts = 1000")
        .retry("base = \"10s\"")
        .retry("cap = \"10s\"")
        .start()
        .await;
    let client = daemon.client().await;
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(
            client
                .send(email(&format!("s{i}@example.org"), "startup"))
                .await
                .unwrap()
                .id,
        );
    }
    drop(client);
    // Kill it at varied points of its own start-up (sled open, recovery, plugin load).
    for i in 0..12u64 {
        daemon.kill();
        daemon.spawn();
        tokio::time::sleep(Duration::from_millis(i * 15)).await;
    }
    daemon.restart().await;
    let client = daemon.client().await;
    for id in &ids {
        client
            .get(id)
            .await
            .unwrap_or_else(|e| panic!("{id} lost after start-up kills: {e}"));
    }
    assert_log_without_gaps(&client).await;
    // And it still takes new work.
    client
        .send(email("after@example.org", "still alive"))
        .await
        .unwrap();
}

// Multi-threaded: `terminate` blocks this thread while it waits for the exit, and the mock
// provider must go on answering the deliveries in flight meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_keeps_everything() {
    let mock = MockProvider::start().await;
    let mut daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let client = daemon.client().await;
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(
            client
                .send(email(&format!("t{i}@example.org"), "graceful"))
                .await
                .unwrap()
                .id,
        );
    }
    drop(client);
    assert!(
        daemon.terminate(),
        "graceful exit status:\n{}",
        daemon.log()
    );
    assert!(
        !daemon.log().contains("still busy"),
        "the commit thread should finish by itself:\n{}",
        daemon.log()
    );
    assert!(!daemon.socket.exists(), "socket removed on shutdown");
    daemon.spawn();
    daemon.wait_ready().await;
    let client = daemon.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let state = client.get(id).await.unwrap().state;
            if state == herald_plugin_api::State::Sent {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} stuck in {state}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // In-flight deliveries were finished, not left leased for the restart to re-queue, and
    // nothing went out twice.
    let events = assert_log_without_gaps(&client).await;
    let requeued: Vec<_> = events
        .iter()
        .filter(|e| {
            e.detail
                .as_deref()
                .is_some_and(|d| d.contains("daemon stopped while"))
        })
        .collect();
    assert!(requeued.is_empty(), "re-queued after SIGTERM: {requeued:?}");
    let mut seen = HashSet::new();
    for r in mock.requests() {
        let id = r.json()["id"].as_str().unwrap_or_default().to_string();
        assert!(seen.insert(id.clone()), "{id} delivered twice");
    }
    assert_eq!(seen.len(), ids.len());
}
