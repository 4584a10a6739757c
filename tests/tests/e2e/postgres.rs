//! heraldd on the PostgreSQL store (`[store] kind = "postgres"`), against a real server
//! (see `herald_tests::pg`), each test on a database of its own: send and deliver through a
//! mock provider; SIGKILL under load, restart, and every acknowledged message is delivered
//! with a gap-free event log.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_plugin_api::State;
use herald_protocol::Filter;
use herald_tests::mock::MockProvider;
use herald_tests::pg::TestDb;
use herald_tests::{Builder, Daemon, email};

/// A daemon on `db` (the URL through `${HERALD_PG_URL}`, as an operator writes it), with
/// a lease of `lease`: short where a killed daemon's claims must come back within seconds,
/// long where a delivery slowed by a busy machine must not be taken back (and repeated).
fn on_postgres(db: &TestDb, mock: &MockProvider, lease: &str) -> Builder {
    Daemon::builder()
        .webhook_provider(mock)
        .env("HERALD_PG_URL", &db.url)
        .config(&format!(
            "[store]\nkind = \"postgres\"\nurl = \"${{HERALD_PG_URL}}\"\npool_size = 4\nlease = \"{lease}\"\n"
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_and_delivers_with_the_store_in_postgres() {
    let db = TestDb::new();
    let mock = MockProvider::start().await;
    let daemon = on_postgres(&db, &mock, "60s").start().await;
    let client = daemon.client().await;
    let mut sub = client.subscribe(Filter::default(), None).await.unwrap();
    let id = client
        .send(email("ann@example.org", "on postgres"))
        .await
        .unwrap()
        .id;
    let got = mock.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].json()["id"].as_str(), Some(id.as_str()));
    let mut kinds = Vec::new();
    while !kinds.contains(&"sent") {
        let e = tokio::time::timeout(Duration::from_secs(30), sub.next_event())
            .await
            .expect("events")
            .expect("stream open")
            .expect("event");
        kinds.push(herald_tests::kinds(std::slice::from_ref(&e))[0]);
    }
    assert_eq!(kinds[..3], ["queued", "sending", "sent"]);
    // The URL is a secret: the log shows it redacted only.
    assert!(!daemon.log().contains(&db.url), "{}", daemon.log());

    // The message lives in the database, not in the data dir: a second daemon with a data
    // dir of its own on the same database finds it.
    let other = on_postgres(&db, &mock, "60s").start().await;
    let seen = other.client().await.get(&id).await.unwrap();
    assert!(
        matches!(seen.state, State::Sent | State::Delivered),
        "{:?}",
        seen.state
    );

    // `heraldd --check-store` checks the database (not a sled dir) once its daemon stopped,
    // while the other daemon keeps running on it.
    let mut daemon = daemon;
    daemon.kill();
    let out = std::process::Command::new(herald_tests::heraldd_path())
        .arg("--config")
        .arg(&daemon.config_path)
        .arg("--check-store")
        .env("HERALD_PG_URL", &db.url)
        .env("HERALD_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("store consistent: 1 messages checked"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_on_postgres_loses_no_acknowledged_message() {
    let db = TestDb::new();
    let mock = MockProvider::start().await;
    let mut daemon = on_postgres(&db, &mock, "2s").start().await;

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut senders = Vec::new();
    for conn in 0..4 {
        let client = daemon.client().await;
        let acked = Arc::clone(&acked);
        senders.push(tokio::spawn(async move {
            let mut inflight = tokio::task::JoinSet::new();
            for i in 0..100_000u32 {
                if inflight.len() >= 16 {
                    match inflight.join_next().await {
                        Some(Ok(Ok(id))) => {
                            acked.lock().unwrap().insert(id);
                        }
                        _ => return,
                    }
                }
                let c = client.clone();
                inflight.spawn(async move {
                    c.send(email(&format!("guest{conn}-{i}@example.org"), "pg crash"))
                        .await
                        .map(|a| a.id)
                });
            }
        }));
    }
    // Some acknowledged and some delivered (so leases are live), then pull the plug.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 400 || mock.count() < 50 {
        assert!(tokio::time::Instant::now() < deadline, "senders too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.kill();
    for s in senders {
        let _ = s.await;
    }
    let acked: HashSet<String> = acked.lock().unwrap().clone();
    eprintln!(
        "killed with {} acknowledged, {} delivered",
        acked.len(),
        mock.count()
    );

    daemon.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
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
            "{} acknowledged messages never reached the provider, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = daemon.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while client.stats().await.unwrap().active > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The whole log, gap-free.
    let mut sub = client.subscribe(Filter::default(), Some(0)).await.unwrap();
    let (first, last) = (sub.first_seq, sub.last_seq);
    assert_eq!(first, 1);
    for expected in first..=last {
        let e = tokio::time::timeout(Duration::from_secs(30), sub.next_event())
            .await
            .expect("replay stalled")
            .expect("stream open")
            .expect("event");
        assert_eq!(e.seq, expected, "gap in the event log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_on_one_database_deliver_each_message_exactly_once() {
    let db = TestDb::new();
    let mock = MockProvider::start().await;
    let a = on_postgres(&db, &mock, "60s").start().await;
    let b = on_postgres(&db, &mock, "60s").start().await;

    // 8 concurrent sends with one idempotency key, through both daemons: one message.
    let mut same = tokio::task::JoinSet::new();
    for i in 0..8 {
        let client = if i % 2 == 0 {
            a.client().await
        } else {
            b.client().await
        };
        same.spawn(async move {
            let mut m = email("once@example.org", "one key");
            m.idempotency_key = Some("the-one-key".into());
            client.send(m).await.unwrap()
        });
    }
    let mut ids = HashSet::new();
    let mut fresh = 0;
    while let Some(r) = same.join_next().await {
        let r = r.unwrap();
        fresh += usize::from(!r.duplicate);
        ids.insert(r.id);
    }
    assert_eq!(
        (ids.len(), fresh),
        (1, 1),
        "one message, accepted once: {ids:?}"
    );

    // 2,000 messages, half through each daemon.
    let mut senders = tokio::task::JoinSet::new();
    for (n, daemon) in [&a, &b].into_iter().enumerate() {
        for conn in 0..2 {
            let client = daemon.client().await;
            senders.spawn(async move {
                let mut sent = Vec::new();
                for i in 0..500 {
                    let to = format!("d{n}-c{conn}-{i}@example.org");
                    sent.push(client.send(email(&to, "shared queue")).await.unwrap().id);
                }
                sent
            });
        }
    }
    let mut all: HashSet<String> = ids.clone();
    while let Some(r) = senders.join_next().await {
        all.extend(r.unwrap());
    }
    assert_eq!(all.len(), 2_001);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while mock.count() < all.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} delivered",
            mock.count(),
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Settle, then count: each message exactly once at the provider.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut delivered: Vec<String> = mock
        .requests()
        .iter()
        .filter_map(|r| r.json()["id"].as_str().map(String::from))
        .collect();
    assert_eq!(delivered.len(), all.len(), "no message delivered twice");
    delivered.sort();
    delivered.dedup();
    let delivered: HashSet<String> = delivered.into_iter().collect();
    assert_eq!(delivered, all);
    // Both daemons read the same counts from the database.
    let (sa, sb) = (
        a.client().await.stats().await.unwrap(),
        b.client().await.stats().await.unwrap(),
    );
    assert_eq!(sa.active, 0);
    assert_eq!(sa.states, sb.states);
}

/// A session of the test's own on `db` (to look at or tamper with the database).
async fn admin(db: &TestDb) -> tokio_postgres::Client {
    let (admin, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(conn);
    admin
}

/// A database server out of disk for the statements `when` names (`BEFORE INSERT ON
/// messages`): a trigger raises `disk_full` as PostgreSQL does when it cannot extend a file.
struct FullDisk;

impl FullDisk {
    async fn on(admin: &tokio_postgres::Client, when: &str) -> FullDisk {
        admin
            .batch_execute(&format!(
                "CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' \
                 USING ERRCODE = 'disk_full'; END $$; \
                 CREATE TRIGGER full_disk {when} FOR EACH ROW EXECUTE FUNCTION full_disk();"
            ))
            .await
            .expect("install the full-disk trigger");
        FullDisk
    }

    /// The server has room again.
    async fn free(self, admin: &tokio_postgres::Client) {
        admin
            .batch_execute("DROP FUNCTION full_disk() CASCADE")
            .await
            .expect("drop the full-disk trigger");
    }
}

/// Waits until every message of `ids` is `sent`, as `client` reads it.
async fn wait_sent(client: &herald_client::Client, ids: &HashSet<String>) {
    for id in ids {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while client.get(id).await.unwrap().state != State::Sent {
            assert!(tokio::time::Instant::now() < deadline, "{id} not sent");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads `n` events from `sub`.
async fn next_events(
    sub: &mut herald_client::Subscription,
    n: usize,
) -> Vec<herald_plugin_api::Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(30), sub.next_event())
            .await
            .expect("no event within 30 s")
            .expect("stream open")
            .expect("event");
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_daemon_sees_the_other_daemons_events() {
    let db = TestDb::new();
    let mock = MockProvider::start().await;
    let a = on_postgres(&db, &mock, "60s").start().await;
    let b = on_postgres(&db, &mock, "60s").start().await;
    let on_a = a.client().await;
    let on_b = b.client().await;

    let mut sub = on_a.subscribe(Filter::default(), None).await.unwrap();
    let id = on_b
        .send(email("bo@example.org", "sent through B"))
        .await
        .unwrap()
        .id;
    // queued, sending, sent: whoever delivered it, A's live stream shows all three.
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &herald_plugin_api::Event| {
        e.kind == herald_plugin_api::EventKind::Sent && e.message_id.as_deref() == Some(&id)
    }) {
        seen.extend(next_events(&mut sub, 1).await);
    }
    assert!(
        seen.iter()
            .any(|e| e.kind == herald_plugin_api::EventKind::Queued
                && e.message_id.as_deref() == Some(&id)),
        "{seen:?}"
    );
    for w in seen.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "no gap in the live stream");
    }
    let last = seen.last().unwrap().seq;
    drop(sub);

    // Resume on A after a reconnect: B's later events, from where it left off, no gap.
    let more = on_b
        .send(email("cy@example.org", "while away"))
        .await
        .unwrap()
        .id;
    mock.wait_for(2, Duration::from_secs(30)).await;
    let mut sub = on_a
        .subscribe(Filter::default(), Some(last + 1))
        .await
        .unwrap();
    let mut resumed: Vec<herald_plugin_api::Event> = Vec::new();
    while !resumed.iter().any(|e| {
        e.kind == herald_plugin_api::EventKind::Sent && e.message_id.as_deref() == Some(&more)
    }) {
        resumed.extend(next_events(&mut sub, 1).await);
    }
    assert_eq!(resumed[0].seq, last + 1);
    for w in resumed.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    assert!(
        resumed
            .iter()
            .any(|e| e.kind == herald_plugin_api::EventKind::Queued
                && e.message_id.as_deref() == Some(more.as_str())),
        "{resumed:?}"
    );
}

/// SIGSTOPs `daemon` at a moment it holds no transaction open. A daemon stopped inside
/// one holds the store's counter row until the server ends its session (half of
/// `storage_timeout`, see `a_daemon_stalled_inside_a_transaction_does_not_block_the_other`);
/// the tests using this are about breakers and leases, not that bound.
async fn stop_outside_a_transaction(db: &TestDb, daemon: &Daemon) {
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(conn);
    for _ in 0..100 {
        signal(daemon, "STOP");
        // Long enough for a statement the server was running for it to finish.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND state LIKE 'idle in transaction%'",
                &[&db.name],
            )
            .await
            .expect("read pg_stat_activity")
            .get(0);
        if open == 0 {
            return;
        }
        signal(daemon, "CONT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the daemon was inside a transaction at every one of 100 tries");
}

fn signal(daemon: &Daemon, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(daemon.pid().to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig}");
}

/// Daemon A leases messages and stalls (SIGSTOP) past the lease: B returns them to the
/// queue and delivers them; when A wakes and its provider calls finally answer, its late
/// completions (an old fencing token) change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_daemons_leases_go_to_the_other_and_its_late_completions_change_nothing() {
    let db = TestDb::new();
    let slow = MockProvider::start().await;
    let fast = MockProvider::start().await;
    slow.hold();
    let a = on_postgres(&db, &slow, "2s").start().await;
    let on_a = a.client().await;
    let mut ids = HashSet::new();
    for i in 0..20 {
        let to = format!("stalled{i}@example.org");
        ids.insert(on_a.send(email(&to, "leased by A")).await.unwrap().id);
    }
    // A has claimed every one: its calls hang at the held provider.
    slow.wait_for(20, Duration::from_secs(30)).await;
    stop_outside_a_transaction(&db, &a).await;

    let b = Daemon::builder()
        .env("HERALD_PG_URL", &db.url)
        .config(&format!(
            "[[providers]]\nname = \"hookb\"\nplugin = \"webhook\"\nurl = \"{}/notify\"\n\n[routes]\nemail = [\"hookb\"]\nsms = [\"hookb\"]\npush = [\"hookb\"]\n\n[store]\nkind = \"postgres\"\nurl = \"${{HERALD_PG_URL}}\"\nlease = \"2s\"\n",
            fast.url()
        ))
        .start()
        .await;
    // B returns the expired leases and delivers everything.
    let got = fast.wait_for(20, Duration::from_secs(60)).await;
    let at_b: HashSet<String> = got
        .iter()
        .filter_map(|r| r.json()["id"].as_str().map(String::from))
        .collect();
    assert_eq!(at_b, ids);
    let on_b = b.client().await;
    wait_sent(&on_b, &ids).await;

    // A wakes; its calls answer; its completions are stale.
    signal(&a, "CONT");
    slow.release();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        let m = on_b.get(id).await.unwrap();
        assert_eq!(
            (m.state, m.provider.as_deref()),
            (State::Sent, Some("hookb")),
            "{id}: B's outcome stands"
        );
    }
    // One `sent` per message in the shared log.
    let mut sub = on_b.subscribe(Filter::default(), Some(0)).await.unwrap();
    let last = sub.last_seq;
    let log = next_events(&mut sub, last as usize).await;
    for id in &ids {
        let sent = log
            .iter()
            .filter(|e| {
                e.kind == herald_plugin_api::EventKind::Sent
                    && e.message_id.as_deref() == Some(id.as_str())
            })
            .count();
        assert_eq!(sent, 1, "{id}");
    }
    drop(a);
}

/// A delivery that takes longer than `store.lease` stays with the daemon making it: its
/// lease is renewed while the call is in flight, so the other daemon does not take the
/// message back and send it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_slower_than_the_lease_is_not_sent_twice() {
    let db = TestDb::new();
    let mock = MockProvider::start().await;
    mock.hold();
    let a = on_postgres(&db, &mock, "1s").start().await;
    let b = on_postgres(&db, &mock, "1s").start().await;
    let on_a = a.client().await;
    let mut ids = HashSet::new();
    for i in 0..4 {
        let to = format!("slow{i}@example.org");
        ids.insert(on_a.send(email(&to, "a slow provider")).await.unwrap().id);
    }
    mock.wait_for(4, Duration::from_secs(30)).await;
    // Four lease periods with every call in flight: each daemon returns expired leases
    // every 500 ms, so a lease that was not renewed would have been taken back by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        mock.count(),
        4,
        "a message was claimed again while in flight"
    );
    mock.release();
    let on_b = b.client().await;
    wait_sent(&on_b, &ids).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut seen: Vec<String> = mock
        .requests()
        .iter()
        .filter_map(|r| r.json()["id"].as_str().map(String::from))
        .collect();
    assert_eq!(seen.len(), 4, "each message sent once: {seen:?}");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), ids);
}

/// The database server runs out of disk under a daemon (a trigger raises `disk_full` on
/// every new message, as PostgreSQL does when it cannot extend a file): sends are refused
/// with the retryable `storage_unavailable`, never `internal`, nothing half-written is
/// left, and once the server has room the same daemon — not restarted — accepts and
/// delivers again (the error did not mark its store failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_out_of_disk_refuses_sends_until_it_has_room_again() {
    let db = TestDb::new();
    let mock = MockProvider::start().await;
    let daemon = on_postgres(&db, &mock, "60s").start().await;
    let client = daemon.client().await;
    let first = client
        .send(email("before@example.org", "before"))
        .await
        .unwrap();
    mock.wait_for(1, Duration::from_secs(30)).await;
    let admin = admin(&db).await;
    let full = FullDisk::on(&admin, "BEFORE INSERT ON messages").await;
    for i in 0..3 {
        let e = client
            .send(email(&format!("refused{i}@example.org"), "no room"))
            .await
            .expect_err("the database is out of disk");
        match &e {
            herald_client::ClientError::Server(body) => assert_eq!(
                body.code,
                herald_protocol::ErrorCode::StorageUnavailable,
                "{e}"
            ),
            other => panic!("{other}"),
        }
    }
    full.free(&admin).await;
    let after = client
        .send(email("after@example.org", "after"))
        .await
        .unwrap();
    let got = mock.wait_for(2, Duration::from_secs(30)).await;
    let ids: HashSet<String> = got
        .iter()
        .filter_map(|r| r.json()["id"].as_str().map(String::from))
        .collect();
    assert_eq!(ids, HashSet::from([first.id, after.id]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats = client.stats().await.unwrap();
        if stats.active == 0 {
            break stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        stats.states.iter().map(|(_, n)| n).sum::<u64>(),
        2,
        "{:?}",
        stats.states
    );
}

/// The database refuses for a while just as deliveries finish (a trigger makes every
/// completion fail with `disk_full`, as a server out of disk would): the outcomes are
/// retried until the server takes them, the leases are kept alive meanwhile, and no message
/// is sent a second time — a completion given up after a few quick tries would have left
/// each one leased until its lease expired and was re-queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_wait_for_a_database_that_refuses_for_a_while() {
    let db = TestDb::new();
    let mock = MockProvider::start().await;
    mock.hold();
    let daemon = on_postgres(&db, &mock, "2s").start().await;
    let client = daemon.client().await;
    let mut ids = HashSet::new();
    for i in 0..3 {
        let to = format!("outcome{i}@example.org");
        ids.insert(
            client
                .send(email(&to, "an outcome to keep"))
                .await
                .unwrap()
                .id,
        );
    }
    mock.wait_for(3, Duration::from_secs(30)).await;
    let admin = admin(&db).await;
    let full = FullDisk::on(&admin, "BEFORE DELETE ON leases").await;
    // The calls answer; every completion is refused for two lease periods.
    mock.release();
    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in &ids {
        assert_eq!(client.get(id).await.unwrap().state, State::Sending, "{id}");
    }
    full.free(&admin).await;
    wait_sent(&client, &ids).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mock.count(), 3, "a message was sent twice");
    assert!(
        daemon
            .log()
            .contains("trying again until the store takes it"),
        "{}",
        daemon.log()
    );
}

/// A breaker one daemon opens is open on the other (which never called the provider).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opened_by_one_daemon_is_open_for_the_other() {
    let db = TestDb::new();
    let mock = MockProvider::start().await;
    mock.set_default(herald_tests::mock::Reply::new(503, "{}"));
    let builder = || {
        Daemon::builder()
            .env("HERALD_PG_URL", &db.url)
            // A failed message waits an hour: nothing is due again during the test.
            .retry("base = \"1h\"")
            .retry("cap = \"1h\"")
            .config(&format!(
                "[[providers]]\nname = \"hook\"\nplugin = \"webhook\"\nurl = \"{}/notify\"\nbreaker = {{ failures = 2, cooldown = \"1h\" }}\n\n[routes]\nemail = [\"hook\"]\n\n[store]\nkind = \"postgres\"\nurl = \"${{HERALD_PG_URL}}\"\nlease = \"30s\"\n",
                mock.url()
            ))
    };
    let a = builder().start().await;
    let b = builder().start().await;
    let breaker = |stats: herald_protocol::Stats| {
        stats
            .providers
            .iter()
            .find(|p| p.name == "hook")
            .map(|p| p.breaker.clone())
            .unwrap()
    };
    let on_b = b.client().await;
    assert_eq!(breaker(on_b.stats().await.unwrap()), "closed");
    // B sleeps while A fails twice and opens its breaker.
    stop_outside_a_transaction(&db, &b).await;
    let on_a = a.client().await;
    for i in 0..2 {
        let to = format!("down{i}@example.org");
        on_a.send(email(&to, "provider down")).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while breaker(on_a.stats().await.unwrap()) != "open" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A's breaker never opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = mock.count();
    signal(&b, "CONT");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while breaker(on_b.stats().await.unwrap()) != "open" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never adopted A's open breaker:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        mock.count(),
        calls,
        "B opened nothing itself: it never called"
    );
}

/// One daemon makes each trial call of a half-open breaker, however many daemons have
/// messages due for it: with the provider still down, the trial calls reach the mock a
/// cooldown apart — never two in one half-open window (each daemon would make its own
/// without the shared claim: `breaker_probes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_makes_each_trial_call_of_a_shared_breaker() {
    let db = TestDb::new();
    let mock = MockProvider::start().await;
    mock.set_default(herald_tests::mock::Reply::new(503, "{}"));
    let builder = || {
        Daemon::builder()
            .env("HERALD_PG_URL", &db.url)
            // One delivery at a time per daemon: when the cooldown ends, each daemon has
            // a message of its own in hand to try.
            .daemon("concurrency = 1")
            .retry("base = \"100ms\"")
            .retry("cap = \"200ms\"")
            .retry("max_attempts = 1000")
            .config(&format!(
                "[[providers]]\nname = \"hook\"\nplugin = \"webhook\"\nurl = \"{}/notify\"\nbreaker = {{ failures = 1, cooldown = \"1s\", max_cooldown = \"1s\" }}\n\n[routes]\nemail = [\"hook\"]\n\n[store]\nkind = \"postgres\"\nurl = \"${{HERALD_PG_URL}}\"\nlease = \"30s\"\n",
                mock.url()
            ))
    };
    let a = builder().start().await;
    let b = builder().start().await;
    let (on_a, on_b) = (a.client().await, b.client().await);
    for i in 0..10 {
        on_a.send(email(&format!("a{i}@example.org"), "down"))
            .await
            .unwrap();
        on_b.send(email(&format!("b{i}@example.org"), "down"))
            .await
            .unwrap();
    }
    // The first calls open the breakers; what was in flight then comes back meanwhile.
    mock.wait_for(1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let trials: Vec<std::time::Instant> = mock
        .requests()
        .iter()
        .map(|r| r.at)
        .filter(|at| *at > settled)
        .collect();
    assert!(
        trials.len() >= 3,
        "a trial call every cooldown while the provider is down, got {} in 7 s:\nA:\n{}\nB:\n{}",
        trials.len(),
        a.log(),
        b.log()
    );
    let mut sorted = trials.clone();
    sorted.sort();
    for pair in sorted.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(750),
            "two trial calls {gap:?} apart in one half-open window ({} trials)",
            sorted.len()
        );
    }
}

/// Senders through `client` until `stop` is set, 8 in flight, each acknowledged id
/// recorded in `acked`; an error (the store unavailable for a moment) is counted in
/// `refused` and the sender goes on.
fn keep_sending(
    client: herald_client::Client,
    tag: &'static str,
    acked: Arc<Mutex<HashSet<String>>>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut inflight = tokio::task::JoinSet::new();
        let mut i = 0u32;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            while inflight.len() < 8 {
                let c = client.clone();
                i += 1;
                inflight.spawn(async move {
                    c.send(email(&format!("{tag}-{i}@example.org"), "under fire"))
                        .await
                        .map(|a| a.id)
                });
            }
            match inflight.join_next().await {
                Some(Ok(Ok(id))) => {
                    acked.lock().unwrap().insert(id);
                }
                Some(Ok(Err(_))) => {
                    refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                _ => return,
            }
        }
        while let Some(r) = inflight.join_next().await {
            if let Ok(Ok(id)) = r {
                acked.lock().unwrap().insert(id);
            }
        }
    })
}

/// Waits until every id in `acked` reached `mock`; returns how often each was delivered.
async fn wait_delivered(
    mock: &MockProvider,
    acked: &HashSet<String>,
    what: &str,
) -> std::collections::HashMap<String, usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let mut times = std::collections::HashMap::new();
        for r in mock.requests() {
            if let Some(id) = r.json()["id"].as_str() {
                *times.entry(id.to_string()).or_insert(0usize) += 1;
            }
        }
        let missing: Vec<&String> = acked.iter().filter(|id| !times.contains_key(*id)).collect();
        if missing.is_empty() {
            return times;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} acknowledged messages never reached the provider, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many sessions of `application_name` are idle inside a transaction.
async fn idle_in_transaction(admin: &tokio_postgres::Client, db: &TestDb, app: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = $2 \
               AND state LIKE 'idle in transaction%'",
            &[&db.name, &app],
        )
        .await
        .expect("read pg_stat_activity")
        .get(0)
}

/// A daemon SIGSTOPped *inside* a transaction (holding the counter row) holds the other
/// up for at most the session bound (half of `storage_timeout`): the server ends the
/// stalled session, and the other daemon keeps accepting and delivering. Woken, the
/// stalled daemon's batch fails unacknowledged and it carries on with fresh connections;
/// every acknowledged message is delivered exactly once (the lease is long: none expires).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_stalled_inside_a_transaction_does_not_block_the_other() {
    let db = TestDb::new();
    let mock = MockProvider::start().await;
    let admin = admin(&db).await;
    let bounded = |app: &str| {
        Daemon::builder()
            .webhook_provider(&mock)
            .daemon("storage_timeout = \"4s\"")
            .env("HERALD_PG_URL", &format!("{} application_name={app}", db.url))
            .config("[store]\nkind = \"postgres\"\nurl = \"${HERALD_PG_URL}\"\npool_size = 4\nlease = \"60s\"\n")
    };
    let a = bounded("herald_a").start().await;
    let b = bounded("herald_b").start().await;

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = keep_sending(
        a.client().await,
        "on-a",
        Arc::clone(&acked),
        Arc::clone(&refused),
        Arc::clone(&stop),
    );
    // A is busy committing; stop it at a moment it is inside a transaction.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 50 {
        assert!(tokio::time::Instant::now() < deadline, "A too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut inside = false;
    for _ in 0..200 {
        signal(&a, "STOP");
        // Long enough for a statement the server was running for it to finish.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if idle_in_transaction(&admin, &db, "herald_a").await > 0 {
            inside = true;
            break;
        }
        signal(&a, "CONT");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(inside, "A was never stopped inside a transaction");

    // B accepts and delivers while A sleeps.
    let on_b = b.client().await;
    let mut through_b = HashSet::new();
    for i in 0..20 {
        let to = format!("past-a-{i}@example.org");
        let id = on_b
            .send(email(&to, "while A sleeps"))
            .await
            .unwrap_or_else(|e| panic!("B refused a send while A was stopped: {e}"))
            .id;
        through_b.insert(id);
    }
    wait_delivered(&mock, &through_b, "through B while A was stopped").await;
    // The server ends A's stalled session within its bound (2 s). B may have finished
    // before that: A can be stopped just after its BEGIN, before it takes the counter row.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while idle_in_transaction(&admin, &db, "herald_a").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never ended A's stalled session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A wakes: its stalled batch fails (nothing in it acknowledged); it sends again.
    signal(&a, "CONT");
    let on_a = a.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let after = loop {
        match on_a.send(email("after@example.org", "A is back")).await {
            Ok(r) => break r.id,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "A never recovered: {e}\n{}",
                    a.log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.await.unwrap();
    let mut all: HashSet<String> = acked.lock().unwrap().clone();
    all.extend(through_b);
    all.insert(after);
    wait_delivered(&mock, &all, "after the stall").await;
    // Settle, then count: an acknowledged message is sent twice only if its lease
    // expired and it was re-queued (none should: the lease outlasts the stall).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let times = wait_delivered(&mock, &all, "after settling").await;
    let mut log = on_b.subscribe(Filter::default(), Some(0)).await.unwrap();
    let last = log.last_seq;
    let requeued: HashSet<String> = next_events(&mut log, last as usize)
        .await
        .into_iter()
        .filter(|e| {
            e.kind == herald_plugin_api::EventKind::Queued
                && e.detail.as_deref().is_some_and(|d| d.contains("re-queued"))
        })
        .filter_map(|e| e.message_id)
        .collect();
    let twice: Vec<&String> = all
        .iter()
        .filter(|id| times[*id] > 1 && !requeued.contains(*id))
        .collect();
    assert!(
        twice.is_empty(),
        "delivered twice without a lease expiring: {twice:?}"
    );
    eprintln!(
        "{} acknowledged, {} refused during the stall",
        all.len(),
        refused.load(std::sync::atomic::Ordering::SeqCst)
    );
}

/// Every backend of the daemon killed (`pg_terminate_backend`) again and again under load:
/// the batches that meet a dead connection are refused (never acknowledged), sends resume
/// on fresh connections, every acknowledged message is delivered, and a subscriber sees
/// every event once, in seq order, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_database_connections_under_load_lose_nothing() {
    let db = TestDb::new();
    let mock = MockProvider::start().await;
    let admin = admin(&db).await;
    let daemon = on_postgres(&db, &mock, "10s").start().await;
    let client = daemon.client().await;
    // A subscriber watching it all, read as it goes (on a connection of its own: a stream
    // nobody reads holds up its connection's other answers).
    let mut sub = daemon
        .client()
        .await
        .subscribe(Filter::default(), Some(0))
        .await
        .unwrap();
    let watched: Arc<Mutex<Vec<herald_plugin_api::Event>>> = Arc::default();
    let watcher = {
        let watched = Arc::clone(&watched);
        tokio::spawn(async move {
            while let Some(Ok(e)) = sub.next_event().await {
                watched.lock().unwrap().push(e);
            }
        })
    };

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for tag in ["kill-a", "kill-b"] {
        load.push(keep_sending(
            daemon.client().await,
            tag,
            Arc::clone(&acked),
            Arc::clone(&refused),
            Arc::clone(&stop),
        ));
    }
    let acked_now = || acked.lock().unwrap().len();
    for round in 0..5 {
        // Some sends acknowledged since the last kill: they resumed.
        let before = acked_now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while acked_now() < before + 50 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: sends did not resume after killing the connections\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let killed: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db.name],
            )
            .await
            .expect("terminate the daemon's backends")
            .get(0);
        assert!(killed > 0, "round {round}: no backend to kill");
    }
    let before = acked_now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked_now() < before + 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sends did not resume after the last kill\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let acked: HashSet<String> = acked.lock().unwrap().clone();
    wait_delivered(&mock, &acked, "after the kills").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while client.stats().await.unwrap().active > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !daemon.log().contains("restart heraldd"),
        "the store was marked failed:\n{}",
        daemon.log()
    );
    // The subscriber that watched it all: every event once, in seq order, up to the end.
    let last = client.stats().await.unwrap().last_seq;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while watched.lock().unwrap().last().map_or(0, |e| e.seq) < last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscriber stalled at {:?} of {last}",
            watched.lock().unwrap().last().map(|e| e.seq)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.abort();
    let watched = watched.lock().unwrap().clone();
    let seqs: Vec<u64> = watched.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every event once, in seq order"
    );
    let queued: HashSet<String> = watched
        .into_iter()
        .filter(|e| e.kind == herald_plugin_api::EventKind::Queued)
        .filter_map(|e| e.message_id)
        .collect();
    let unseen: Vec<&String> = acked.difference(&queued).collect();
    assert!(
        unseen.is_empty(),
        "acknowledged but never queued: {unseen:?}"
    );
    eprintln!(
        "{} acknowledged, {} refused across 5 kills",
        acked.len(),
        refused.load(std::sync::atomic::Ordering::SeqCst)
    );
}
