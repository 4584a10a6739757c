//! The store check against the real daemon: a stopped store whose indexes were damaged on
//! purpose (what an interrupted multi-tree write leaves: a record `sending` without a lease,
//! a queued record without its schedule entry, counts that disagree with the records) is
//! repaired at start-up and every acknowledged message is delivered; `heraldd
//! --check-store` repairs it offline and refuses a store in use; `herald admin check-store`
//! asks a running daemon.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use herald_daemon::store::{
    Counts, Damage, NewMessage, Op, OpResult, SledStore, Store, id_string, new_id,
};
use herald_plugin_api::{Content, EmailContent, State};
use herald_tests::mock::MockProvider;
use herald_tests::{Daemon, email, events_until, heraldd_path, now_ms};
use serde_json::Value;

fn new_message(to: &str) -> NewMessage {
    NewMessage {
        id: new_id(),
        to: to.into(),
        content: Content::Email(EmailContent {
            subject: "Save the date".into(),
            text: Some("June 14".into()),
            ..Default::default()
        }),
        tags: vec!["damaged".into()],
        idempotency_key: None,
        send_at: None,
        ttl_ms: 3_600_000,
        idempotency_window_ms: 86_400_000,
        override_suppression: false,
        lane: Default::default(),
    }
}

/// What the damage left behind.
struct Damaged {
    /// `sending`, attempt 1, its lease gone.
    lost_send: String,
    /// `queued`, its schedule entry gone.
    unscheduled: String,
}

/// Opens the stopped daemon's store the way the daemon does, adds two acknowledged-looking
/// messages, claims one, and damages the indexes outside any transaction.
fn damage_stopped_store(data_dir: &Path) -> Damaged {
    let dir = data_dir.join("db");
    let store = SledStore::open_when_unlocked(&dir, 16 << 20).expect("open the stopped store");
    let (a, b) = (
        new_message("lost@example.org"),
        new_message("unscheduled@example.org"),
    );
    let now = now_ms();
    store
        .commit(now, &[Op::Accept(a.clone()), Op::Accept(b.clone())])
        .unwrap();
    let claimed = match store
        .commit(
            now,
            &[Op::Claim {
                limit: 1,
                lease_ms: 300_000,
                turn: 0,
            }],
        )
        .unwrap()
        .results
        .remove(0)
    {
        OpResult::Claimed(mut c) => c.remove(0),
        other => panic!("claim: {other:?}"),
    };
    let (sending, queued) = if claimed.id == a.id {
        (a.id, b.id)
    } else {
        (b.id, a.id)
    };
    store.flush().unwrap();
    let mut counts = store.counts();
    assert_eq!(counts.get(State::Sending), 1);
    store.damage(&Damage::DropLease(sending)).unwrap();
    store.damage(&Damage::DropSchedule(queued)).unwrap();
    // Counts as a half-written batch leaves them: the claim never made it.
    counts.0[Counts::index(State::Sending)] = 0;
    counts.0[Counts::index(State::Queued)] += 3;
    store.damage(&Damage::SetCounts(counts)).unwrap();
    assert_eq!(store.get(&sending).unwrap().unwrap().state, State::Sending);
    drop(store);
    SledStore::wait_unlocked(&dir).expect("the store lock is released");
    Damaged {
        lost_send: id_string(&sending),
        unscheduled: id_string(&queued),
    }
}

/// A daemon that delivered one message and was stopped gracefully.
async fn stopped_daemon(mock: &MockProvider) -> (Daemon, String) {
    let mut daemon = Daemon::builder().webhook_provider(mock).start().await;
    let client = daemon.client().await;
    let first = client
        .send(email("first@example.org", "before"))
        .await
        .unwrap();
    mock.wait_for(1, Duration::from_secs(30)).await;
    events_until(&client, &first.id, &["sent"], Duration::from_secs(30)).await;
    drop(client);
    assert!(daemon.terminate(), "graceful stop:\n{}", daemon.log());
    (daemon, first.id)
}

fn delivered_ids(mock: &MockProvider) -> BTreeSet<String> {
    mock.requests()
        .iter()
        .filter_map(|r| r.json()["id"].as_str().map(String::from))
        .collect()
}

fn check_store_offline(daemon: &Daemon) -> Output {
    Command::new(heraldd_path())
        .arg("--config")
        .arg(&daemon.config_path)
        .arg("--check-store")
        .env("HERALD_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_repairs_a_damaged_store_and_delivers_every_message() {
    let mock = MockProvider::start().await;
    let (mut daemon, first) = stopped_daemon(&mock).await;
    let damaged = damage_stopped_store(&daemon.data_dir);

    daemon.spawn();
    daemon.wait_ready().await;
    let client = daemon.client().await;
    let log = daemon.log();
    assert!(
        log.contains("store check repaired the store")
            && log.contains("sending_without_lease: 1 found, 1 repaired")
            && log.contains("not_scheduled: 1 found, 1 repaired")
            && log.contains("counts_wrong"),
        "the start-up check logs its report:\n{log}"
    );

    // Both are delivered: the re-queued send and the rescheduled one.
    mock.wait_for(3, Duration::from_secs(60)).await;
    let ids = delivered_ids(&mock);
    for id in [&first, &damaged.lost_send, &damaged.unscheduled] {
        assert!(ids.contains(id), "{id} never reached the provider: {ids:?}");
    }
    let events = events_until(
        &client,
        &damaged.lost_send,
        &["sent"],
        Duration::from_secs(30),
    )
    .await;
    let requeued = events
        .iter()
        .find(|e| {
            e.detail
                .as_deref()
                .is_some_and(|d| d.contains("store check"))
        })
        .unwrap_or_else(|| panic!("no re-queue event: {events:#?}"));
    assert_eq!(requeued.kind.as_str(), "queued");
    events_until(
        &client,
        &damaged.unscheduled,
        &["sent"],
        Duration::from_secs(30),
    )
    .await;

    // The counts match the records again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats = client.stats().await.unwrap();
        if stats.active == 0 {
            break stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never idle: {:?}",
            stats.states
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let count = |s: State| {
        stats
            .states
            .iter()
            .find(|(st, _)| *st == s)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(count(State::Sent), 3, "{:?}", stats.states);
    assert_eq!(
        stats.states.iter().map(|(_, n)| n).sum::<u64>(),
        3,
        "{:?}",
        stats.states
    );
    let report = client.check_store(true).await.unwrap();
    assert!(report.consistent(), "{report}");
    assert_eq!(report.messages, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_store_offline_and_through_the_socket() {
    let mock = MockProvider::start().await;
    let (mut daemon, _) = stopped_daemon(&mock).await;
    damage_stopped_store(&daemon.data_dir);

    let out = check_store_offline(&daemon);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "3 messages checked",
        "sending_without_lease: 1 found, 1 repaired",
        "not_scheduled: 1 found, 1 repaired",
        "counts_wrong: 2 found, 2 repaired",
        "sending: stored 0, actual 1",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let out = check_store_offline(&daemon);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.starts_with("store consistent: 3 messages checked"),
        "{stdout}"
    );

    // A running daemon's store is refused, and answers through its socket instead.
    daemon.spawn();
    daemon.wait_ready().await;
    let out = check_store_offline(&daemon);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serving"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    mock.wait_for(3, Duration::from_secs(60)).await;
    let out = daemon
        .cli()
        .args(["admin", "check-store", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["messages"], 3);
    assert_eq!(report["problems"], Value::Array(vec![]));
    assert_eq!(report["repair"], true);
    let out = daemon
        .cli()
        .args(["admin", "check-store", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("store consistent"));

    // With the daemon stopped but its store missing, nothing is created.
    assert!(daemon.terminate());
    std::fs::remove_dir_all(daemon.data_dir.join("db")).unwrap();
    let out = check_store_offline(&daemon);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no store"));
    assert!(!daemon.data_dir.join("db").exists());
}
