//! Providers misbehaving, end to end: the real daemon with `webhook` providers posting to
//! [`MockProvider`]s whose answers the tests switch at run time. Each test asserts on what
//! the mocks received (counts, and request times only as lower bounds) and on the events
//! and states of the messages — never on how fast the daemon is.
//!
//! Covered: the circuit breaker's failure-ratio trip over a rolling window, its cooldown
//! doubling on repeated trips up to `max_cooldown` (kept across a SIGKILL), and `probes`
//! (every trial call must succeed before it closes); a 429 with `Retry-After` pausing the
//! provider for every message (they wait, or go to the next provider, without using up
//! attempts), visible in `stats` and as a `provider_paused` event; `failover_after` moving
//! a message whose provider keeps failing transiently on to the next one, and an outage of
//! every provider ending with every message delivered, none dead or failed; and
//! `max_in_flight` holding the requests a provider sees at once; a retry due after the
//! message's TTL showing `deferred` and expiring only once the TTL has passed.

use std::time::Duration;

use herald_client::Client;
use herald_plugin_api::{Event, EventKind};
use herald_protocol::Filter;
use herald_tests::mock::{MockProvider, Reply};
use herald_tests::{Daemon, email, events_until};

const T: Duration = Duration::from_secs(30);

/// A `webhook` provider `name` posting to `mock`, with extra lines (e.g. `breaker = {..}`).
fn provider(name: &str, mock: &MockProvider, extra: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nplugin = \"webhook\"\nurl = \"{}/{name}\"\n{extra}\n\n",
        mock.url()
    )
}

/// Two providers routed for email: `primary` (with `extra`) then `backup`.
fn two(primary: &MockProvider, extra: &str, backup: &MockProvider) -> herald_tests::Builder {
    Daemon::builder().config(&format!(
        "{}{}[routes]\nemail = [\"primary\", \"backup\"]\n",
        provider("primary", primary, extra),
        provider("backup", backup, "")
    ))
}

/// Sends one email and waits until it is sent; returns the provider that took it.
async fn sent_via(client: &Client, to: &str) -> String {
    let ack = client.send(email(to, "resilience")).await.unwrap();
    let events = events_until(client, &ack.id, &["sent", "failed", "dead", "expired"], T).await;
    let last = events.last().unwrap();
    assert_eq!(last.kind.as_str(), "sent", "{events:#?}");
    last.provider.clone().unwrap()
}

/// The first `n` breaker events (opened, half-open, closed) of the log.
async fn breaker_events(client: &Client, n: usize) -> Vec<Event> {
    let filter = Filter {
        kinds: vec![
            EventKind::ProviderOpened,
            EventKind::ProviderHalfOpen,
            EventKind::ProviderClosed,
        ],
        ..Filter::default()
    };
    let mut sub = client.subscribe(filter, Some(0)).await.unwrap();
    let mut got = Vec::new();
    while got.len() < n {
        let e = tokio::time::timeout(T, sub.next_event())
            .await
            .unwrap_or_else(|_| panic!("only {} breaker events: {got:#?}", got.len()))
            .unwrap()
            .unwrap();
        got.push(e);
    }
    got
}

async fn breaker_of(client: &Client, name: &str) -> String {
    let stats = client.stats().await.unwrap();
    stats
        .providers
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.breaker.clone())
        .unwrap_or_else(|| panic!("no provider {name} in {stats:?}"))
}

fn refused() -> Reply {
    Reply::new(401, r#"{"error":"bad key"}"#)
}

/// Failures that alternate with successes never make two in a row, yet half of the last
/// four calls failed: the ratio trips the breaker, and the backup takes the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_ratio_over_the_window_opens_the_breaker() {
    let primary = MockProvider::start().await;
    let backup = MockProvider::start().await;
    for ok in [true, false, true, false] {
        primary.push(if ok { Reply::new(200, "{}") } else { refused() });
    }
    let daemon = two(
        &primary,
        "breaker = { failures = 100, ratio = 0.5, window = 4, min_calls = 4, cooldown = \"1h\" }",
        &backup,
    )
    .start()
    .await;
    let client = daemon.client().await;
    let mut via = Vec::new();
    for i in 0..4 {
        via.push(sent_via(&client, &format!("g{i}@example.org")).await);
        if i < 3 {
            assert_eq!(breaker_of(&client, "primary").await, "closed", "after {i}");
        }
    }
    assert_eq!(via, ["primary", "backup", "primary", "backup"]);
    assert_eq!(breaker_of(&client, "primary").await, "open");
    let opened = breaker_events(&client, 1).await;
    assert_eq!(opened[0].kind, EventKind::ProviderOpened);
    assert_eq!(opened[0].provider.as_deref(), Some("primary"));

    assert_eq!(sent_via(&client, "g5@example.org").await, "backup");
    assert_eq!(primary.count(), 4, "the open breaker kept the fifth away");
}

/// A provider that keeps failing its trial calls is given ever longer cooldowns — 300 ms,
/// 600 ms, 1200 ms, then held at `max_cooldown` — and the grown cooldown survives a
/// SIGKILL (it is stored with the breaker). Times are checked as lower bounds only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cooldown_doubles_with_every_failed_trial_up_to_max_cooldown() {
    let primary = MockProvider::start().await;
    let backup = MockProvider::start().await;
    primary.set_default(refused());
    let mut daemon = two(
        &primary,
        "breaker = { failures = 1, cooldown = \"300ms\", max_cooldown = \"1200ms\" }",
        &backup,
    )
    .start()
    .await;
    let client = daemon.client().await;
    let mut n = 0;
    // Keep traffic flowing (to the backup) until primary got its opening call and three
    // failed trials.
    while primary.count() < 4 {
        assert_eq!(
            sent_via(&client, &format!("g{n}@example.org")).await,
            "backup"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = primary.requests();
    for (i, min) in [300, 600, 1200].into_iter().enumerate() {
        let gap = calls[i + 1].at - calls[i].at;
        assert!(
            gap >= Duration::from_millis(min),
            "trial {} came {gap:?} after the call before it, sooner than the {min} ms cooldown",
            i + 1
        );
    }
    let events = breaker_events(&client, 7).await;
    let opened: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == EventKind::ProviderOpened)
        .map(|e| e.detail.as_deref().unwrap())
        .collect();
    assert_eq!(opened.len(), 4, "{events:#?}");
    for (detail, ms) in opened.iter().zip([300, 600, 1200, 1200]) {
        assert!(
            detail.contains(&format!("calls paused for {ms} ms")),
            "{detail}"
        );
    }

    // After a SIGKILL the breaker is still open with the grown cooldown: its next trial
    // says so.
    daemon.kill();
    daemon.spawn();
    daemon.wait_ready().await;
    let client = daemon.client().await;
    // Open, or already half-open if this machine took longer than the cooldown.
    assert_ne!(breaker_of(&client, "primary").await, "closed");
    while primary.count() < 5 {
        assert_eq!(
            sent_via(&client, &format!("g{n}@example.org")).await,
            "backup"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = breaker_events(&client, 9).await;
    let half_open = events
        .iter()
        .rfind(|e| e.kind == EventKind::ProviderHalfOpen)
        .unwrap();
    assert!(
        half_open
            .detail
            .as_deref()
            .unwrap()
            .contains("cooldown of 1200 ms over"),
        "{half_open:?}"
    );
    let calls = primary.requests();
    assert!(calls[4].at - calls[3].at >= Duration::from_millis(1200));
}

/// With `probes = 2`, one successful trial does not close the breaker; the second does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_must_succeed_before_the_breaker_closes() {
    let primary = MockProvider::start().await;
    let backup = MockProvider::start().await;
    primary.push(refused());
    let daemon = two(
        &primary,
        "breaker = { failures = 1, cooldown = \"200ms\", probes = 2 }",
        &backup,
    )
    .start()
    .await;
    let client = daemon.client().await;
    assert_eq!(sent_via(&client, "a@example.org").await, "backup");
    // Open, or already half-open if this machine took longer than the cooldown.
    assert_ne!(breaker_of(&client, "primary").await, "closed");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sent_via(&client, "b@example.org").await, "primary");
    assert_eq!(
        breaker_of(&client, "primary").await,
        "half_open",
        "one probe of two succeeded"
    );
    assert_eq!(sent_via(&client, "c@example.org").await, "primary");
    assert_eq!(breaker_of(&client, "primary").await, "closed");
    let kinds: Vec<EventKind> = breaker_events(&client, 4)
        .await
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::ProviderOpened,
            EventKind::ProviderHalfOpen,
            EventKind::ProviderHalfOpen,
            EventKind::ProviderClosed
        ]
    );
    assert_eq!(primary.count(), 3);
}

/// A 429 with `Retry-After: 2` pauses the provider for every message: the messages sent
/// meanwhile wait (deferred, no attempt used) and no request reaches the provider until
/// two seconds after the 429 — checked against the mock's own request times, as a lower
/// bound — then all are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_the_provider_for_every_message() {
    let mock = MockProvider::start().await;
    mock.push(Reply::new(429, r#"{"error":"slow down"}"#).header("retry-after", "2"));
    let daemon = Daemon::builder()
        .config(&format!(
            "{}[routes]\nemail = [\"only\"]\n",
            provider("only", &mock, "")
        ))
        .start()
        .await;
    let client = daemon.client().await;
    let first = client
        .send(email("a@example.org", "first"))
        .await
        .unwrap()
        .id;
    events_until(&client, &first, &["deferred"], T).await;
    let mut ids = vec![first];
    for i in 0..4 {
        let ack = client
            .send(email(&format!("g{i}@example.org"), "meanwhile"))
            .await
            .unwrap();
        ids.push(ack.id);
    }
    for id in &ids {
        let events = events_until(&client, id, &["sent", "failed", "dead", "expired"], T).await;
        let last = events.last().unwrap();
        assert_eq!(last.kind.as_str(), "sent", "{events:#?}");
        assert_eq!(
            last.attempt,
            Some(1),
            "waiting used no attempt: {events:#?}"
        );
    }
    let calls = mock.requests();
    assert_eq!(calls.len(), 6, "one 429, then each message once");
    for (i, c) in calls.iter().enumerate().skip(1) {
        let after = c.at - calls[0].at;
        assert!(
            after >= Duration::from_secs(2),
            "request {i} came {after:?} after the 429 with Retry-After: 2"
        );
    }
    let paused = breaker_events_of(&client, EventKind::ProviderPaused, 1).await;
    assert_eq!(paused[0].provider.as_deref(), Some("only"));
    assert!(
        paused[0].detail.as_deref().unwrap().contains("2000 ms"),
        "{paused:?}"
    );
}

/// With a second provider in the route, a paused provider's messages go there at once —
/// without another request to the paused one — and `stats` shows until when it is paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_provider_hands_its_messages_to_the_next_one_and_stats_show_it() {
    let primary = MockProvider::start().await;
    let backup = MockProvider::start().await;
    primary.push(Reply::new(429, r#"{"error":"daily quota"}"#).header("retry-after", "3600"));
    let daemon = two(&primary, "", &backup).start().await;
    let client = daemon.client().await;
    let before = herald_tests::now_ms();
    for i in 0..3 {
        assert_eq!(
            sent_via(&client, &format!("g{i}@example.org")).await,
            "backup"
        );
    }
    assert_eq!(primary.count(), 1, "no call to the paused provider");
    let stats = client.stats().await.unwrap();
    let p = stats
        .providers
        .iter()
        .find(|p| p.name == "primary")
        .unwrap();
    let until = p.paused_until.expect("paused");
    assert!(until >= before + 3_600_000, "{until} vs {before}");
    assert_eq!(
        p.breaker, "closed",
        "a rate limit says nothing about health"
    );
    let b = stats.providers.iter().find(|p| p.name == "backup").unwrap();
    assert_eq!(b.paused_until, None);
}

async fn breaker_events_of(client: &Client, kind: EventKind, n: usize) -> Vec<Event> {
    let filter = Filter {
        kinds: vec![kind],
        ..Filter::default()
    };
    let mut sub = client.subscribe(filter, Some(0)).await.unwrap();
    let mut got = Vec::new();
    while got.len() < n {
        let e = tokio::time::timeout(T, sub.next_event())
            .await
            .unwrap_or_else(|_| panic!("only {} {kind} events", got.len()))
            .unwrap()
            .unwrap();
        got.push(e);
    }
    got
}

fn unavailable() -> Reply {
    Reply::new(503, r#"{"error":"overloaded"}"#)
}

/// A primary answering 503 keeps a message for `failover_after = 2` attempts; the third
/// goes to the backup, which delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_n_transient_failures_moves_the_message_to_the_backup() {
    let primary = MockProvider::start().await;
    let backup = MockProvider::start().await;
    primary.set_default(unavailable());
    let daemon = two(
        &primary,
        "failover_after = 2\nbreaker = { failures = 100 }",
        &backup,
    )
    .retry("max_attempts = 5")
    .start()
    .await;
    let client = daemon.client().await;
    let ack = client
        .send(email("a@example.org", "failover"))
        .await
        .unwrap();
    let events = events_until(&client, &ack.id, &["sent", "failed", "dead", "expired"], T).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "queued", "sending", "deferred", "sending", "deferred", "sending", "sent"
        ],
        "{events:#?}"
    );
    let sent = events.last().unwrap();
    assert_eq!(
        (sent.provider.as_deref(), sent.attempt),
        (Some("backup"), Some(3))
    );
    assert_eq!(primary.count(), 2);
    assert_eq!(backup.count(), 1);
}

/// Both providers down (503): messages move between them and, once both breakers are
/// open, wait without using up attempts; nothing ends dead or failed, and every message is
/// delivered once the primary is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_provider_down_nothing_dies_and_all_are_delivered_once_one_returns() {
    let primary = MockProvider::start().await;
    let backup = MockProvider::start().await;
    primary.set_default(unavailable());
    backup.set_default(unavailable());
    let breaker = "failover_after = 1\nbreaker = { failures = 2, cooldown = \"200ms\", max_cooldown = \"400ms\" }";
    let daemon = Daemon::builder()
        .config(&format!(
            "{}{}[routes]\nemail = [\"primary\", \"backup\"]\n",
            provider("primary", &primary, breaker),
            provider("backup", &backup, breaker)
        ))
        .retry("max_attempts = 8")
        .start()
        .await;
    let client = daemon.client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            client
                .send(email(&format!("g{i}@example.org"), "outage"))
                .await
                .unwrap()
                .id,
        );
    }
    // Both breakers open: a provider-wide outage.
    breaker_events_of(&client, EventKind::ProviderOpened, 2).await;
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.active, 3, "all still waiting: {stats:?}");
    primary.set_default(Reply::new(200, "{}"));
    for id in &ids {
        let events = events_until(&client, id, &["sent", "failed", "dead", "expired"], T).await;
        let last = events.last().unwrap();
        assert_eq!(last.kind.as_str(), "sent", "{events:#?}");
        assert_eq!(last.provider.as_deref(), Some("primary"));
    }
    herald_tests::assert_idle(&client).await;
}

/// Twelve messages at once to a provider with `max_in_flight = 2` that answers slowly:
/// the mock never has more than two requests in hand, and all are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_caps_the_concurrent_requests_a_provider_sees() {
    let mock = MockProvider::start().await;
    let mut slow = Reply::new(200, "{}");
    slow.delay = Duration::from_millis(200);
    mock.set_default(slow);
    let daemon = Daemon::builder()
        .config(&format!(
            "{}[routes]\nemail = [\"only\"]\n",
            provider("only", &mock, "max_in_flight = 2")
        ))
        .start()
        .await;
    let client = daemon.client().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(
            client
                .send(email(&format!("g{i}@example.org"), "capped"))
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        let events = events_until(&client, id, &["sent", "failed", "dead", "expired"], T).await;
        assert_eq!(events.last().unwrap().kind.as_str(), "sent", "{events:#?}");
    }
    assert_eq!(mock.count(), 12);
    let max = mock.max_in_flight();
    assert!((1..=2).contains(&max), "{max} requests at once");
}

/// A 503 asking for a retry in a minute, for a message with a 2 s TTL: the message is
/// `deferred` first and `expired` only once its TTL has passed (a lower bound on the event
/// times), with no second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_past_the_ttl_is_deferred_and_expires_only_when_the_ttl_has_passed() {
    let mock = MockProvider::start().await;
    mock.set_default(unavailable().header("retry-after", "60"));
    let daemon = Daemon::builder()
        .config(&format!(
            "{}[routes]\nemail = [\"only\"]\n",
            provider("only", &mock, "")
        ))
        .retry("ttl = \"2s\"")
        .start()
        .await;
    let client = daemon.client().await;
    let ack = client
        .send(email("a@example.org", "short-lived"))
        .await
        .unwrap();
    let events = events_until(&client, &ack.id, &["sent", "failed", "dead", "expired"], T).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["queued", "sending", "deferred", "expired"],
        "{events:#?}"
    );
    let lived = events[3].at - events[0].at;
    assert!(
        lived >= 2_000,
        "expired {lived} ms after it was queued, TTL 2 s"
    );
    assert_eq!(mock.count(), 1);
}
