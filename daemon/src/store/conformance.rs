//! The store conformance suite: the lifecycle — accept, claim, complete, idempotency,
//! schedule, cancel, dead letters, recovery, held and forward-only webhooks, reply
//! tagging, suppression, breakers, retention, the event log, and the store check's
//! repairs — tested once, against every engine.
//!
//! Each case is generic over an [`Engine`] (how to open a store, restart it, and damage
//! it on purpose); [`conformance!`] instantiates every case for every engine, so a new
//! engine (PostgreSQL) joins by adding one line there. Every case ends by asking the store
//! check whether the indexes and counts are still consistent, so each path of the state
//! machine is also checked against the invariant.
//!
//! Owns: the behaviour every engine must show. Must not: look inside an engine (its own
//! module tests its layout).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use herald_plugin_api::{
    Channel, Content, EmailCase, EmailContent, Event, EventKind, InboundMessage, RecipientRules,
    SmsContent, State, StatusUpdate, UnixMillis, UpdateKind,
};

use super::check::Problem;
use super::{
    BreakerEvent, BreakerRecord, CheckReport, Claimed, Completion, Damage, Lane, LaneDepth, Legacy,
    MemoryStore, MsgId, NewMessage, Op, OpResult, PgStore, SledStore, Store, SuppressionEntry,
    SuppressionSource, id_string, new_id,
};

/// How the suite makes, restarts and damages the stores of one engine.
pub(super) trait Engine {
    type Store: Store;
    /// Whether several daemons share the store: `Op::Recover` then returns only expired
    /// leases (another daemon may hold the live ones), not every lease.
    const SHARED: bool = false;
    /// A new, empty store.
    fn open(&mut self) -> Self::Store;
    /// The same data after a restart: closed and opened again (persistent engines), or
    /// handed to a new store (memory).
    fn reopen(&mut self, store: Self::Store) -> Self::Store;
    /// Damages the store's indexes on purpose, outside any transaction.
    fn damage(&mut self, store: &Self::Store, damage: Damage);
    /// A store keying recipients with `rules` (`[recipients]`), new or restarted.
    fn open_with(&mut self, rules: RecipientRules) -> Self::Store;
    fn reopen_with(&mut self, store: Self::Store, rules: RecipientRules) -> Self::Store;
    /// Writes an entry as an older heraldd did (recipient schema 1), outside any
    /// transaction; the store must key it again at its next start.
    fn plant_legacy(&mut self, store: &Self::Store, entry: Legacy);
}

pub(super) struct Memory;

impl Engine for Memory {
    type Store = MemoryStore;
    fn open(&mut self) -> MemoryStore {
        MemoryStore::new()
    }
    fn reopen(&mut self, store: MemoryStore) -> MemoryStore {
        store.restart()
    }
    fn damage(&mut self, store: &MemoryStore, damage: Damage) {
        store.damage(&damage).unwrap();
    }
    fn open_with(&mut self, rules: RecipientRules) -> MemoryStore {
        MemoryStore::with_rules(rules)
    }
    fn reopen_with(&mut self, store: MemoryStore, rules: RecipientRules) -> MemoryStore {
        store.restart_with(rules)
    }
    fn plant_legacy(&mut self, store: &MemoryStore, entry: Legacy) {
        store.plant_legacy(&entry);
    }
}

pub(super) struct Sled {
    dir: tempfile::TempDir,
}

impl Sled {
    fn new() -> Sled {
        Sled {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Engine for Sled {
    type Store = SledStore;
    fn open(&mut self) -> SledStore {
        SledStore::open_when_unlocked(self.dir.path(), 1 << 20).unwrap()
    }
    fn reopen(&mut self, store: SledStore) -> SledStore {
        store.flush().unwrap();
        drop(store);
        self.open()
    }
    fn damage(&mut self, store: &SledStore, damage: Damage) {
        store.damage(&damage).unwrap();
    }
    fn open_with(&mut self, rules: RecipientRules) -> SledStore {
        SledStore::open_with_when_unlocked(self.dir.path(), 1 << 20, rules).unwrap()
    }
    fn reopen_with(&mut self, store: SledStore, rules: RecipientRules) -> SledStore {
        store.flush().unwrap();
        drop(store);
        self.open_with(rules)
    }
    fn plant_legacy(&mut self, store: &SledStore, entry: Legacy) {
        store.plant_legacy(&entry).unwrap();
    }
}

/// A PostgreSQL database of its own per test (see `tests/src/pg.rs` for the server).
pub(super) struct Pg {
    db: super::postgres::test_pg::TestDb,
}

impl Pg {
    fn new() -> Pg {
        Pg {
            db: super::postgres::test_pg::TestDb::new(),
        }
    }
}

impl Engine for Pg {
    type Store = PgStore;
    const SHARED: bool = true;
    fn open(&mut self) -> PgStore {
        self.open_with(RecipientRules::default())
    }
    fn reopen(&mut self, store: PgStore) -> PgStore {
        drop(store);
        self.open()
    }
    fn damage(&mut self, store: &PgStore, damage: Damage) {
        store.damage(&damage).unwrap();
    }
    fn open_with(&mut self, rules: RecipientRules) -> PgStore {
        PgStore::open(&self.db.url, 4, rules).unwrap()
    }
    fn reopen_with(&mut self, store: PgStore, rules: RecipientRules) -> PgStore {
        drop(store);
        self.open_with(rules)
    }
    fn plant_legacy(&mut self, store: &PgStore, entry: Legacy) {
        store.plant_legacy(&entry).unwrap();
    }
}

/// One `#[test]` per case and engine: `store::conformance::memory::cancel`, ….
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $case() { super::$case(super::Memory) })*
        }
        mod sled {
            $(#[test] fn $case() { super::$case(super::Sled::new()) })*
        }
        mod postgres {
            $(#[test] fn $case() { super::$case(super::Pg::new()) })*
        }
    };
}

conformance!(
    accept_claim_complete_with_events_and_counts,
    idempotency_duplicate_conflict_and_expiry,
    idempotency_treats_send_at_not_in_the_future_as_now,
    scheduled_sends_wait_for_their_time,
    cancel_only_waiting_messages,
    deferred_retries_and_attempts_given_back,
    expired_at_claim,
    stale_completions_change_nothing,
    requeue_from_the_dead_letters,
    recover_after_a_restart,
    recover_leaves_live_leases_to_other_daemons,
    renewed_leases_outlive_their_first_expiry,
    held_webhook_outrunning_the_send,
    held_webhook_for_a_provider_id_not_yet_known,
    status_updates_forward_only_and_deduplicated,
    inbound_replies_tagged_like_the_latest_message,
    suppression_opt_out_and_opt_in,
    operator_suppression_add_list_check_remove,
    override_suppression_sends_to_a_suppressed_recipient,
    recipients_compare_by_canonical_key,
    strict_email_case_keeps_local_parts_apart,
    legacy_recipients_are_keyed_again_at_start,
    changed_rules_key_entries_again_at_start,
    inbound_carries_the_rsvp_it_is_given_but_never_for_a_stop,
    breakers_by_generation_survive_a_restart,
    breaker_events_report_only_the_newest_transition,
    a_delivery_delay_is_an_event_that_leaves_the_state,
    resend_defers_a_sent_message_until_attempts_run_out,
    resend_is_bounded_by_the_ttl_and_never_moves_back,
    retention_prunes_what_finished,
    event_seqs_gap_free_and_never_reused,
    events_read_from_any_seq,
    check_finds_a_healthy_store_consistent,
    check_requeues_sending_without_a_lease,
    check_reschedules_waiting_without_a_schedule_entry,
    check_recounts_wrong_counts,
    check_drops_stale_entries,
    check_restores_dead_letters_and_finished_entries,
    check_in_a_batch_with_other_ops,
    claims_critical_first_then_normal_and_bulk_three_to_one,
    a_lane_is_kept_across_a_deferral_and_a_restart,
    records_written_before_lanes_read_as_normal,
);

// ---- helpers ------------------------------------------------------------------------

const TO: &str = "+14155550100";

fn msg(key: Option<&str>, body: &str) -> NewMessage {
    NewMessage {
        id: new_id(),
        to: TO.into(),
        content: Content::Sms(SmsContent {
            body: body.into(),
            ..Default::default()
        }),
        tags: vec!["rsvp".into()],
        idempotency_key: key.map(Into::into),
        send_at: None,
        ttl_ms: 60_000,
        idempotency_window_ms: 1_000,
        override_suppression: false,
        lane: Default::default(),
    }
}

fn email(to: &str) -> NewMessage {
    NewMessage {
        id: new_id(),
        to: to.into(),
        content: Content::Email(EmailContent {
            subject: "Save the date".into(),
            text: Some("June 14".into()),
            ..Default::default()
        }),
        tags: vec![],
        idempotency_key: None,
        send_at: None,
        ttl_ms: 60_000,
        idempotency_window_ms: 1_000,
        override_suppression: false,
        lane: Default::default(),
    }
}

fn accept(s: &impl Store, now: UnixMillis, m: &NewMessage) {
    let r = s.commit(now, &[Op::Accept(m.clone())]).unwrap();
    assert!(
        matches!(
            r.results[0],
            OpResult::Accepted {
                duplicate: false,
                ..
            }
        ),
        "{:?}",
        r.results
    );
}

fn claim(s: &impl Store, now: UnixMillis, limit: usize) -> Vec<Claimed> {
    claim_turn(s, now, limit, 0)
}

fn claim_turn(s: &impl Store, now: UnixMillis, limit: usize, turn: u64) -> Vec<Claimed> {
    let r = s
        .commit(
            now,
            &[Op::Claim {
                limit,
                lease_ms: 1_000,
                turn,
            }],
        )
        .unwrap();
    match r.results.into_iter().next() {
        Some(OpResult::Claimed(c)) => c,
        other => panic!("claim: {other:?}"),
    }
}

fn claim_one(s: &impl Store, now: UnixMillis, id: &MsgId) -> Claimed {
    let mut c = claim(s, now, 10);
    assert_eq!(c.len(), 1, "one message due");
    let c = c.remove(0);
    assert_eq!(&c.id, id);
    c
}

/// The completion of claim `c` with `state`, by provider `tw` (message id `pid`).
fn done(c: &Claimed, state: State, pid: Option<&str>) -> Completion {
    Completion {
        id: c.id,
        attempt: c.record.attempt,
        fence: c.fence,
        state,
        provider: Some("tw".into()),
        provider_message_id: pid.map(Into::into),
        detail: None,
        due_at: None,
        suppress: false,
        attempt_used: true,
        index_provider_id: true,
        breakers: Vec::new(),
        breaker_events: Vec::new(),
        max_attempts: 3,
    }
}

fn complete(s: &impl Store, now: UnixMillis, c: Completion) -> Vec<Event> {
    let r = s.commit(now, &[Op::Complete(c)]).unwrap();
    assert_eq!(r.results, vec![OpResult::Done]);
    r.events
}

fn update(pid: Option<&str>, id: Option<&MsgId>, kind: UpdateKind, event: &str) -> Op {
    Op::Status {
        max_attempts: 3,
        provider: "tw".into(),
        update: StatusUpdate {
            provider_message_id: pid.map(Into::into),
            message_id: id.map(id_string),
            kind,
            event_id: Some(event.into()),
            at: None,
            detail: None,
            suppress: false,
        },
    }
}

fn reply(from: &str, pid: &str, opt_out: Option<bool>) -> Op {
    Op::Inbound {
        provider: "tw".into(),
        inbound: InboundMessage {
            channel: Channel::Sms,
            from: from.into(),
            to: "+15005550006".into(),
            body: "YES".into(),
            provider_message_id: Some(pid.into()),
            opt_out,
        },
        rsvp: None,
    }
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

fn state(s: &impl Store, id: &MsgId) -> State {
    s.get(id).unwrap().expect("message stored").state
}

fn check(s: &impl Store, now: UnixMillis, repair: bool) -> (CheckReport, Vec<Event>) {
    let r = s.commit(now, &[Op::Check { repair }]).unwrap();
    match r.results.into_iter().next() {
        Some(OpResult::Checked(report)) => (*report, r.events),
        other => panic!("check: {other:?}"),
    }
}

/// The store check finds nothing: every index entry and count agrees with the messages.
fn assert_consistent(s: &impl Store) {
    let (report, events) = check(s, UnixMillis::MAX / 2, false);
    assert!(report.consistent(), "inconsistent store: {report:?}");
    assert!(events.is_empty());
    assert_eq!(report.counts_actual, s.counts());
}

fn found(report: &CheckReport, p: Problem) -> (u64, u64) {
    report
        .problems
        .iter()
        .find(|r| r.problem == p)
        .map_or((0, 0), |r| (r.found, r.repaired))
}

// ---- the lifecycle ------------------------------------------------------------------

fn accept_claim_complete_with_events_and_counts<E: Engine>(mut e: E) {
    let s = e.open();
    let m = msg(None, "hi");
    let c = s.commit(10, &[Op::Accept(m.clone())]).unwrap();
    assert_eq!(
        c.results,
        vec![OpResult::Accepted {
            id: m.id,
            duplicate: false
        }]
    );
    assert!(c.scheduled);
    assert_eq!(s.counts().get(State::Queued), 1);
    let claimed = claim_one(&s, 10, &m.id);
    assert_eq!(claimed.record.attempt, 1);
    assert_eq!(claimed.record.state, State::Sending);
    assert_eq!(s.counts().get(State::Sending), 1);
    complete(&s, 11, done(&claimed, State::Delivered, Some("p1")));
    s.flush().unwrap();
    let events = s.events_from(0, 100).unwrap();
    assert_eq!(
        kinds(&events),
        [
            EventKind::Queued,
            EventKind::Sending,
            EventKind::Sent,
            EventKind::Delivered
        ]
    );
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(
        events
            .iter()
            .all(|e| e.message_id.as_deref() == Some(id_string(&m.id).as_str()))
    );
    assert_eq!(events[3].provider_message_id.as_deref(), Some("p1"));
    assert_eq!(s.counts().get(State::Delivered), 1);
    assert_eq!(s.counts().active(), 0);

    // Everything survives a restart, including seq and counts.
    let s = e.reopen(s);
    assert_eq!(s.last_seq(), 4);
    assert_eq!(s.counts().get(State::Delivered), 1);
    let r = s.get(&m.id).unwrap().unwrap();
    assert_eq!(r.provider_message_id.as_deref(), Some("p1"));
    assert_eq!(r.provider.as_deref(), Some("tw"));
    assert_eq!(r.lease_until, None);
    assert_consistent(&s);
}

fn idempotency_duplicate_conflict_and_expiry<E: Engine>(mut e: E) {
    let s = e.open();
    let a = msg(Some("k"), "hi");
    let b = msg(Some("k"), "hi");
    let c = msg(Some("k"), "different");
    let r = s
        .commit(0, &[Op::Accept(a.clone()), Op::Accept(b), Op::Accept(c)])
        .unwrap();
    assert_eq!(
        r.results,
        vec![
            OpResult::Accepted {
                id: a.id,
                duplicate: false
            },
            OpResult::Accepted {
                id: a.id,
                duplicate: true
            },
            OpResult::IdempotencyConflict { existing: a.id },
        ]
    );
    assert_eq!(kinds(&r.events), [EventKind::Queued], "one message");
    assert_eq!(s.counts().get(State::Queued), 1);
    // In a later batch, still within the window.
    let r = s.commit(999, &[Op::Accept(msg(Some("k"), "hi"))]).unwrap();
    assert_eq!(
        r.results,
        vec![OpResult::Accepted {
            id: a.id,
            duplicate: true
        }]
    );
    // The read outside a commit (a retry past a full queue) sees the same window.
    assert_eq!(s.idempotency_key("k", 999).unwrap(), Some(a.id));
    assert_eq!(s.idempotency_key("other", 0).unwrap(), None);
    assert_eq!(s.idempotency_key("k", 1_000).unwrap(), None);
    // After the window the key is free again.
    let d = msg(Some("k"), "later");
    let r = s.commit(5_000, &[Op::Accept(d.clone())]).unwrap();
    assert_eq!(
        r.results,
        vec![OpResult::Accepted {
            id: d.id,
            duplicate: false
        }]
    );
    let s = e.reopen(s);
    let r = s
        .commit(5_500, &[Op::Accept(msg(Some("k"), "other"))])
        .unwrap();
    assert_eq!(
        r.results,
        vec![OpResult::IdempotencyConflict { existing: d.id }],
        "the key survives a restart"
    );
    assert_consistent(&s);
}

fn idempotency_treats_send_at_not_in_the_future_as_now<E: Engine>(mut e: E) {
    let s = e.open();
    let at = |key: &str, send_at: Option<u64>| {
        let mut m = msg(Some(key), "hi");
        m.send_at = send_at;
        Op::Accept(m)
    };
    let first = |r: &super::Committed| match r.results[0] {
        OpResult::Accepted { id, .. } => id,
        ref other => panic!("{other:?}"),
    };
    let dup = |id| OpResult::Accepted {
        id,
        duplicate: true,
    };
    // Absent first: a retry stamped with a past time, or with "now", is the same send.
    let r = s.commit(100, &[at("a", None)]).unwrap();
    let a = first(&r);
    let r = s
        .commit(150, &[at("a", Some(90)), at("a", Some(150)), at("a", None)])
        .unwrap();
    assert_eq!(r.results, vec![dup(a), dup(a), dup(a)]);
    // ... but a retry asking for a later time is another message.
    let r = s.commit(160, &[at("a", Some(10_000))]).unwrap();
    assert_eq!(
        r.results,
        vec![OpResult::IdempotencyConflict { existing: a }]
    );

    // A past send_at first: stored as absent, due at once; absent on retry matches.
    let r = s.commit(200, &[at("b", Some(50))]).unwrap();
    let b = first(&r);
    let rec = s.get(&b).unwrap().unwrap();
    assert_eq!((rec.send_at, rec.due_at), (None, 200));
    let r = s.commit(210, &[at("b", None)]).unwrap();
    assert_eq!(r.results, vec![dup(b)]);

    // A scheduled send matches only the same send_at, also once that time has passed.
    let r = s.commit(300, &[at("c", Some(700))]).unwrap();
    let c = first(&r);
    assert_eq!(s.get(&c).unwrap().unwrap().send_at, Some(700));
    let r = s
        .commit(
            800,
            &[at("c", Some(700)), at("c", None), at("c", Some(800))],
        )
        .unwrap();
    assert_eq!(
        r.results,
        vec![
            dup(c),
            OpResult::IdempotencyConflict { existing: c },
            OpResult::IdempotencyConflict { existing: c },
        ]
    );
    assert_consistent(&s);
}

fn scheduled_sends_wait_for_their_time<E: Engine>(mut e: E) {
    let s = e.open();
    let mut later = msg(None, "later");
    later.send_at = Some(1_000);
    let mut past = msg(None, "past");
    past.send_at = Some(5);
    let now = msg(None, "now");
    s.commit(
        10,
        &[
            Op::Accept(later.clone()),
            Op::Accept(now.clone()),
            Op::Accept(past.clone()),
        ],
    )
    .unwrap();
    assert_eq!(s.next_due().unwrap(), Some(10));
    assert_eq!(
        s.get(&past.id).unwrap().unwrap().due_at,
        10,
        "never earlier than now"
    );
    let c = claim(&s, 10, 10);
    assert_eq!(c.len(), 2, "the scheduled one is not due");
    assert!(c.iter().all(|c| c.id != later.id));
    assert_eq!(s.next_due().unwrap(), Some(1_000));
    assert!(claim(&s, 999, 10).is_empty());
    let s = e.reopen(s);
    claim_one(&s, 1_000, &later.id);
    assert_eq!(s.next_due().unwrap(), None);
    assert_consistent(&s);
}

fn cancel_only_waiting_messages<E: Engine>(mut e: E) {
    let s = e.open();
    let a = msg(None, "a");
    let b = msg(None, "b");
    s.commit(0, &[Op::Accept(a.clone()), Op::Accept(b.clone())])
        .unwrap();
    let r = s.commit(1, &[Op::Cancel(a.id), Op::Cancel(a.id)]).unwrap();
    assert_eq!(r.results, vec![OpResult::Done, OpResult::Done]);
    assert_eq!(kinds(&r.events), [EventKind::Cancelled], "cancelled once");
    assert_eq!(state(&s, &a.id), State::Cancelled);
    claim_one(&s, 2, &b.id);
    let r = s
        .commit(3, &[Op::Cancel(b.id), Op::Cancel(new_id())])
        .unwrap();
    assert_eq!(
        r.results,
        vec![OpResult::WrongState(State::Sending), OpResult::NotFound]
    );
    assert_eq!(s.counts().get(State::Cancelled), 1);
    assert_eq!(s.counts().get(State::Sending), 1);
    assert!(claim(&s, 100, 10).is_empty(), "cancelled is never claimed");
    assert_consistent(&s);
}

fn deferred_retries_and_attempts_given_back<E: Engine>(mut e: E) {
    let s = e.open();
    let m = msg(None, "retry me");
    accept(&s, 0, &m);
    let c = claim_one(&s, 0, &m.id);
    let events = complete(
        &s,
        1,
        Completion {
            due_at: Some(500),
            detail: Some("tw: 503".into()),
            ..done(&c, State::Deferred, None)
        },
    );
    assert_eq!(kinds(&events), [EventKind::Deferred]);
    assert_eq!(events[0].detail.as_deref(), Some("tw: 503"));
    let r = s.get(&m.id).unwrap().unwrap();
    assert_eq!((r.state, r.due_at, r.attempt), (State::Deferred, 500, 1));
    assert_eq!(r.last_error.as_deref(), Some("tw: 503"));
    assert_eq!(s.next_due().unwrap(), Some(500));
    assert!(claim(&s, 499, 10).is_empty());
    let c = claim_one(&s, 500, &m.id);
    assert_eq!(c.record.attempt, 2);
    // No provider was called (every breaker open): the attempt is given back.
    complete(
        &s,
        501,
        Completion {
            due_at: Some(600),
            attempt_used: false,
            provider: None,
            ..done(&c, State::Deferred, None)
        },
    );
    assert_eq!(s.get(&m.id).unwrap().unwrap().attempt, 1);
    let c = claim_one(&s, 600, &m.id);
    assert_eq!(c.record.attempt, 2);
    assert_eq!(s.counts().get(State::Sending), 1);
    assert_eq!(s.counts().get(State::Deferred), 0);
    let s = e.reopen(s);
    assert_consistent(&s);
}

fn expired_at_claim<E: Engine>(mut e: E) {
    let s = e.open();
    let mut m = msg(None, "too late");
    m.ttl_ms = 100;
    accept(&s, 0, &m);
    let r = s
        .commit(
            100,
            &[Op::Claim {
                limit: 10,
                lease_ms: 1_000,
                turn: 0,
            }],
        )
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Claimed(vec![])]);
    assert_eq!(kinds(&r.events), [EventKind::Expired]);
    assert!(r.events[0].detail.as_deref().unwrap().contains("retry.ttl"));
    assert_eq!(state(&s, &m.id), State::Expired);
    assert_eq!(s.counts().get(State::Expired), 1);
    assert_eq!(s.counts().active(), 0);
    assert_consistent(&s);
}

fn stale_completions_change_nothing<E: Engine>(mut e: E) {
    let s = e.open();
    let m = msg(None, "fenced");
    accept(&s, 0, &m);
    let first = claim_one(&s, 0, &m.id);
    let other_attempt = Completion {
        attempt: first.record.attempt + 1,
        ..done(&first, State::Sent, None)
    };
    let other_fence = Completion {
        fence: first.fence + 1,
        ..done(&first, State::Sent, None)
    };
    let r = s
        .commit(1, &[Op::Complete(other_attempt), Op::Complete(other_fence)])
        .unwrap();
    assert_eq!(
        r.results,
        vec![
            OpResult::WrongState(State::Sending),
            OpResult::WrongState(State::Sending)
        ]
    );
    assert!(r.events.is_empty());
    // The attempt given back, claimed again: same attempt number, a new fence.
    complete(
        &s,
        2,
        Completion {
            due_at: Some(10),
            attempt_used: false,
            ..done(&first, State::Deferred, None)
        },
    );
    let second = claim_one(&s, 10, &m.id);
    assert_eq!(second.record.attempt, first.record.attempt);
    assert_ne!(second.fence, first.fence);
    let r = s
        .commit(11, &[Op::Complete(done(&first, State::Sent, Some("late")))])
        .unwrap();
    assert_eq!(r.results, vec![OpResult::WrongState(State::Sending)]);
    complete(&s, 12, done(&second, State::Sent, Some("p2")));
    let r = s
        .commit(
            13,
            &[Op::Complete(done(&second, State::Sent, Some("again")))],
        )
        .unwrap();
    assert_eq!(r.results, vec![OpResult::WrongState(State::Sent)]);
    assert_eq!(
        s.get(&m.id)
            .unwrap()
            .unwrap()
            .provider_message_id
            .as_deref(),
        Some("p2")
    );
    let s = e.reopen(s);
    assert_consistent(&s);
}

fn requeue_from_the_dead_letters<E: Engine>(mut e: E) {
    let s = e.open();
    let m = msg(None, "doomed");
    accept(&s, 0, &m);
    let c = claim_one(&s, 0, &m.id);
    complete(
        &s,
        1_000,
        Completion {
            detail: Some("tw: 503".into()),
            ..done(&c, State::Dead, None)
        },
    );
    assert_eq!(state(&s, &m.id), State::Dead);
    let dead = s.dead(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, m.id);
    assert_eq!(s.counts().get(State::Dead), 1);
    let s = e.reopen(s);
    assert_consistent(&s);

    let r = s
        .commit(
            5_000,
            &[Op::Requeue(m.id), Op::Requeue(m.id), Op::Requeue(new_id())],
        )
        .unwrap();
    assert_eq!(
        r.results,
        vec![
            OpResult::Done,
            OpResult::WrongState(State::Queued),
            OpResult::NotFound
        ]
    );
    assert!(r.scheduled);
    assert_eq!(kinds(&r.events), [EventKind::Queued]);
    assert_eq!(
        r.events[0].detail.as_deref(),
        Some("requeued from the dead letters")
    );
    let rec = s.get(&m.id).unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.due_at),
        (State::Queued, 0, 5_000)
    );
    assert_eq!(rec.expires_at, 5_000 + 60_000, "a fresh time-to-live");
    assert!(s.dead(10).unwrap().is_empty());
    assert_eq!(s.counts().get(State::Dead), 0);
    assert_eq!(s.counts().get(State::Queued), 1);
    assert_eq!(claim_one(&s, 5_000, &m.id).record.attempt, 1);
    assert_consistent(&s);
}

fn recover_after_a_restart<E: Engine>(mut e: E) {
    let s = e.open();
    let a = msg(None, "in flight");
    let b = msg(None, "waiting");
    accept(&s, 0, &a);
    claim_one(&s, 0, &a.id);
    accept(&s, 1, &b);
    let s = e.reopen(s);
    // Past the lease (1 s): every engine returns it.
    let r = s.commit(1_050, &[Op::Recover]).unwrap();
    assert_eq!(r.results, vec![OpResult::Recovered(1)]);
    assert!(r.scheduled);
    assert_eq!(kinds(&r.events), [EventKind::Queued]);
    assert!(
        r.events[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("the daemon stopped")
    );
    let rec = s.get(&a.id).unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.due_at, rec.lease_until),
        (State::Queued, 1_050, None)
    );
    assert_eq!(s.counts().get(State::Sending), 0);
    assert_eq!(s.counts().get(State::Queued), 2);
    let c = claim(&s, 1_050, 10);
    assert_eq!(c.len(), 2);
    let again = c.iter().find(|c| c.id == a.id).unwrap();
    assert_eq!(again.record.attempt, 2, "the interrupted attempt counts");
    let r = s.commit(2_060, &[Op::Recover]).unwrap();
    assert_eq!(r.results, vec![OpResult::Recovered(2)]);
    assert_consistent(&s);
}

/// A store one daemon serves returns every lease at start (none can be live); a shared
/// store returns only expired ones, and a live lease's completion still applies.
fn recover_leaves_live_leases_to_other_daemons<E: Engine>(mut e: E) {
    let s = e.open();
    let a = msg(None, "in flight elsewhere");
    accept(&s, 0, &a);
    let c = claim_one(&s, 0, &a.id);
    let r = s.commit(50, &[Op::Recover]).unwrap();
    if E::SHARED {
        assert_eq!(r.results, vec![OpResult::Recovered(0)]);
        assert!(r.events.is_empty());
        assert_eq!(state(&s, &a.id), State::Sending);
        complete(&s, 60, done(&c, State::Sent, Some("p1")));
        assert_eq!(state(&s, &a.id), State::Sent);
    } else {
        assert_eq!(r.results, vec![OpResult::Recovered(1)]);
        assert_eq!(state(&s, &a.id), State::Queued);
        let r = s
            .commit(60, &[Op::Complete(done(&c, State::Sent, Some("p1")))])
            .unwrap();
        assert_eq!(r.results, vec![OpResult::WrongState(State::Queued)]);
        let again = claim_one(&s, 70, &a.id);
        complete(&s, 80, done(&again, State::Sent, Some("p1")));
    }
    // At the lease's expiry it is returned everywhere.
    let b = msg(None, "abandoned");
    accept(&s, 100, &b);
    claim_one(&s, 100, &b.id);
    let r = s.commit(1_100, &[Op::Recover]).unwrap();
    assert_eq!(r.results, vec![OpResult::Recovered(1)]);
    assert_eq!(state(&s, &b.id), State::Queued);
    assert_consistent(&s);
}

/// A daemon renews the leases of deliveries still in flight: on a shared store a renewed
/// lease is not returned at its first expiry, and its completion still applies. A lease is
/// renewed only under the claim's token; a completed or re-claimed one is reported lost
/// (and, on a shared store, not extended: recovery takes it back at its expiry).
fn renewed_leases_outlive_their_first_expiry<E: Engine>(mut e: E) {
    let s = e.open();
    let slow = msg(None, "slow provider");
    let quick = msg(None, "quick");
    accept(&s, 0, &slow);
    accept(&s, 0, &quick);
    let claimed = claim(&s, 0, 10);
    assert_eq!(claimed.len(), 2);
    let c = claimed.iter().find(|c| c.id == slow.id).unwrap().clone();
    let q = claimed.iter().find(|c| c.id == quick.id).unwrap().clone();
    complete(&s, 100, done(&q, State::Sent, Some("q1")));
    let renew = |now, until, leases: Vec<(MsgId, u64)>| {
        let r = s.commit(now, &[Op::Renew { leases, until }]).unwrap();
        assert!(r.events.is_empty(), "a renewal is not an event");
        match r.results.into_iter().next() {
            Some(OpResult::Renewed { lost }) => lost,
            other => panic!("renew: {other:?}"),
        }
    };
    // Held: kept. Completed: lost. A token that was never this claim's: lost.
    assert_eq!(
        renew(500, 2_500, vec![(c.id, c.fence), (q.id, q.fence)]),
        vec![q.id]
    );
    assert_eq!(renew(600, 2_600, vec![(c.id, c.fence + 7)]), vec![c.id]);
    if E::SHARED {
        // Past the claim's own lease (1 s), within the renewal: still this daemon's.
        let r = s.commit(1_500, &[Op::Recover]).unwrap();
        assert_eq!(r.results, vec![OpResult::Recovered(0)]);
        assert_eq!(state(&s, &slow.id), State::Sending);
        complete(&s, 2_000, done(&c, State::Sent, Some("s1")));
        assert_eq!(state(&s, &slow.id), State::Sent);
        assert_eq!(renew(2_100, 4_100, vec![(c.id, c.fence)]), vec![c.id]);
        // A lease left to expire is returned, and renewing it late is too late: the claim
        // that took it back is another claim.
        let late = msg(None, "abandoned");
        accept(&s, 3_000, &late);
        let l = claim_one(&s, 3_000, &late.id);
        let r = s.commit(4_000, &[Op::Recover]).unwrap();
        assert_eq!(r.results, vec![OpResult::Recovered(1)]);
        let again = claim_one(&s, 4_000, &late.id);
        assert_ne!(again.fence, l.fence);
        assert_eq!(renew(4_100, 6_000, vec![(l.id, l.fence)]), vec![l.id]);
        assert_eq!(
            renew(4_200, 6_000, vec![(again.id, again.fence)]),
            Vec::<MsgId>::new()
        );
        complete(&s, 4_300, done(&again, State::Sent, Some("l1")));
    } else {
        complete(&s, 2_000, done(&c, State::Sent, Some("s1")));
        assert_eq!(renew(2_100, 4_100, vec![(c.id, c.fence)]), vec![c.id]);
    }
    assert_consistent(&s);
}

fn held_webhook_outrunning_the_send<E: Engine>(mut e: E) {
    let s = e.open();
    let m = msg(None, "RSVP?");
    accept(&s, 0, &m);
    let c = claim_one(&s, 0, &m.id);
    // The provider echoes Herald's id and reports delivery before the send completed.
    let r = s
        .commit(
            1,
            &[update(None, Some(&m.id), UpdateKind::Delivered, "ev1")],
        )
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Held]);
    assert!(r.events.is_empty());
    assert_eq!(state(&s, &m.id), State::Sending);
    let s = e.reopen(s);
    // The completion applies it right after `sent`.
    let events = complete(&s, 2, done(&c, State::Sent, Some("SM1")));
    assert_eq!(kinds(&events), [EventKind::Sent, EventKind::Delivered]);
    assert_eq!(state(&s, &m.id), State::Delivered);
    assert_eq!(s.counts().get(State::Delivered), 1);
    assert_eq!(s.counts().get(State::Sent), 0);
    // Nothing is held any more: another completion-like path applies nothing twice.
    let r = s
        .commit(
            3,
            &[update(Some("SM1"), None, UpdateKind::Delivered, "ev1")],
        )
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Ignored]);
    assert_consistent(&s);
}

fn held_webhook_for_a_provider_id_not_yet_known<E: Engine>(mut e: E) {
    let s = e.open();
    let m = msg(None, "RSVP?");
    accept(&s, 0, &m);
    let c = claim_one(&s, 0, &m.id);
    let r = s
        .commit(
            1,
            &[
                update(Some("SM7"), None, UpdateKind::Delivered, "ev1"),
                update(Some("SM7"), None, UpdateKind::Opened, "ev2"),
            ],
        )
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Held, OpResult::Held]);
    // Another provider's id of the same name is not this message's.
    let r = s
        .commit(
            1,
            &[Op::Status {
                max_attempts: 3,
                provider: "other".into(),
                update: StatusUpdate {
                    provider_message_id: Some("SM7".into()),
                    message_id: None,
                    kind: UpdateKind::Bounced,
                    event_id: None,
                    at: None,
                    detail: None,
                    suppress: false,
                },
            }],
        )
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Held]);
    let s = e.reopen(s);
    let events = complete(&s, 2, done(&c, State::Sent, Some("SM7")));
    assert_eq!(
        kinds(&events),
        [EventKind::Sent, EventKind::Delivered, EventKind::Opened],
        "applied in arrival order, the other provider's update not at all"
    );
    assert_eq!(state(&s, &m.id), State::Delivered);
    assert_consistent(&s);
}

fn status_updates_forward_only_and_deduplicated<E: Engine>(mut e: E) {
    let s = e.open();
    let m = email("guest@example.org");
    accept(&s, 0, &m);
    let c = claim_one(&s, 0, &m.id);
    complete(&s, 1, done(&c, State::Sent, Some("re_1")));
    let r = s
        .commit(
            2,
            &[
                update(Some("re_1"), None, UpdateKind::Delivered, "ev1"),
                // Redelivered by the provider.
                update(Some("re_1"), None, UpdateKind::Delivered, "ev1"),
                // A late `sent` must not overwrite `delivered`.
                update(Some("re_1"), None, UpdateKind::Sent, "ev2"),
                // Provider-side deferrals change nothing.
                update(Some("re_1"), None, UpdateKind::Deferred, "ev3"),
                update(Some("re_1"), None, UpdateKind::Opened, "ev4"),
                update(Some("re_1"), None, UpdateKind::Clicked, "ev5"),
            ],
        )
        .unwrap();
    assert_eq!(
        r.results,
        vec![
            OpResult::Done,
            OpResult::Ignored,
            OpResult::Ignored,
            OpResult::Ignored,
            OpResult::Done,
            OpResult::Done
        ]
    );
    assert_eq!(
        kinds(&r.events),
        [EventKind::Delivered, EventKind::Opened, EventKind::Clicked]
    );
    assert!(
        r.events.iter().all(|e| e.provider.as_deref() == Some("tw")
            && e.provider_message_id.as_deref() == Some("re_1"))
    );
    assert_eq!(state(&s, &m.id), State::Delivered);
    let s = e.reopen(s);
    // A complaint after delivery is still recorded, and may suppress the recipient.
    let r = s
        .commit(
            3,
            &[
                Op::Status {
                    max_attempts: 3,
                    provider: "tw".into(),
                    update: StatusUpdate {
                        provider_message_id: Some("re_1".into()),
                        message_id: None,
                        kind: UpdateKind::Complained,
                        event_id: Some("ev6".into()),
                        at: None,
                        detail: Some("marked as spam".into()),
                        suppress: true,
                    },
                },
                update(Some("re_1"), None, UpdateKind::Delivered, "ev1"),
            ],
        )
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Done, OpResult::Ignored]);
    let rec = s.get(&m.id).unwrap().unwrap();
    assert_eq!(rec.state, State::Complained);
    assert_eq!(rec.last_error.as_deref(), Some("marked as spam"));
    assert_eq!(s.counts().get(State::Complained), 1);
    assert_eq!(s.counts().get(State::Delivered), 0);
    // The recipient is suppressed, whatever the case of the address.
    let again = email("Guest@Example.ORG");
    accept(&s, 4, &again);
    assert_eq!(state(&s, &again.id), State::Suppressed);
    // Nobody knows this id: held, and a duplicate event is still a no-op.
    let r = s
        .commit(
            5,
            &[
                update(Some("re_unknown"), None, UpdateKind::Delivered, "ev7"),
                update(Some("re_unknown"), None, UpdateKind::Delivered, "ev7"),
                Op::Status {
                    max_attempts: 3,
                    provider: "tw".into(),
                    update: StatusUpdate {
                        provider_message_id: None,
                        message_id: None,
                        kind: UpdateKind::Delivered,
                        event_id: None,
                        at: None,
                        detail: None,
                        suppress: false,
                    },
                },
            ],
        )
        .unwrap();
    assert_eq!(
        r.results,
        vec![OpResult::Held, OpResult::Ignored, OpResult::Ignored]
    );
    assert_consistent(&s);
}

fn inbound_replies_tagged_like_the_latest_message<E: Engine>(mut e: E) {
    let s = e.open();
    let first = msg(None, "RSVP?");
    accept(&s, 0, &first);
    let c = claim_one(&s, 0, &first.id);
    complete(&s, 1, done(&c, State::Sent, Some("SM1")));
    let mut second = msg(None, "Reminder");
    second.tags = vec!["reminder".into()];
    accept(&s, 2, &second);
    let c = claim_one(&s, 2, &second.id);
    complete(&s, 3, done(&c, State::Delivered, Some("SM2")));
    let s = e.reopen(s);
    let r = s
        .commit(4, &[reply(TO, "SM9", None), reply(TO, "SM9", None)])
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Done, OpResult::Ignored]);
    assert_eq!(kinds(&r.events), [EventKind::Inbound]);
    let ev = &r.events[0];
    assert_eq!(
        ev.message_id.as_deref(),
        Some(id_string(&second.id).as_str())
    );
    assert_eq!(ev.tags, ["reminder"]);
    assert_eq!(
        (ev.from.as_deref(), ev.body.as_deref(), ev.channel),
        (Some(TO), Some("YES"), Some(Channel::Sms))
    );
    // From someone Herald never wrote to: untagged.
    let r = s.commit(5, &[reply("+14155550999", "SM10", None)]).unwrap();
    assert_eq!(r.events[0].message_id, None);
    assert!(r.events[0].tags.is_empty());
    assert_consistent(&s);
}

fn suppression_opt_out_and_opt_in<E: Engine>(mut e: E) {
    let s = e.open();
    let r = s.commit(0, &[reply(TO, "SM1", Some(true))]).unwrap();
    assert!(
        r.events[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("opt-out")
    );
    let m = msg(None, "are you there?");
    let r = s.commit(1, &[Op::Accept(m.clone())]).unwrap();
    assert!(!r.scheduled);
    assert_eq!(kinds(&r.events), [EventKind::Queued, EventKind::Suppressed]);
    let rec = s.get(&m.id).unwrap().unwrap();
    assert_eq!(rec.state, State::Suppressed);
    assert!(
        rec.last_error
            .as_deref()
            .unwrap()
            .contains("suppression list")
    );
    assert_eq!(s.counts().get(State::Suppressed), 1);
    assert_eq!(s.counts().get(State::Queued), 0);
    assert!(claim(&s, 2, 10).is_empty());
    // Another channel is another list.
    let mail = email("someone@example.org");
    accept(&s, 2, &mail);
    assert_eq!(state(&s, &mail.id), State::Queued);
    let s = e.reopen(s);
    let r = s.commit(3, &[reply(TO, "SM2", Some(false))]).unwrap();
    assert!(r.events[0].detail.as_deref().unwrap().starts_with("opt-in"));
    let again = msg(None, "welcome back");
    accept(&s, 4, &again);
    assert_eq!(state(&s, &again.id), State::Queued);
    // A rejection may suppress too; an opt-out and an accept in one batch see each other.
    let c = claim(&s, 5, 10);
    let rejected = c.iter().find(|c| c.id == again.id).unwrap();
    let later = msg(None, "still?");
    let r = s
        .commit(
            6,
            &[
                Op::Complete(Completion {
                    suppress: true,
                    detail: Some("tw: unreachable".into()),
                    ..done(rejected, State::Failed, None)
                }),
                Op::Accept(later.clone()),
            ],
        )
        .unwrap();
    assert_eq!(r.results[0], OpResult::Done);
    assert_eq!(state(&s, &later.id), State::Suppressed);
    assert_consistent(&s);
}

fn operator_suppress(channel: Channel, recipient: &str, reason: &str) -> Op {
    Op::Suppress {
        channel,
        recipient: recipient.into(),
        reason: reason.into(),
    }
}

fn suppression_result(r: &OpResult) -> (Option<SuppressionEntry>, bool) {
    match r {
        OpResult::Suppression { entry, changed } => (entry.clone(), *changed),
        other => panic!("not a suppression result: {other:?}"),
    }
}

fn operator_suppression_add_list_check_remove<E: Engine>(mut e: E) {
    let s = e.open();
    // An operator's entry: source operator, the recipient as written, keyed canonically.
    let r = s
        .commit(
            5,
            &[operator_suppress(
                Channel::Email,
                "Ann Lee <ANN@Example.com>",
                "asked by phone",
            )],
        )
        .unwrap();
    assert!(r.events.is_empty(), "the list is not message state");
    let (entry, changed) = suppression_result(&r.results[0]);
    let entry = entry.unwrap();
    assert!(changed);
    assert_eq!(entry.channel, Channel::Email);
    assert_eq!(entry.key, "ann@example.com");
    assert_eq!(entry.entry.recipient, "Ann Lee <ANN@Example.com>");
    assert_eq!(entry.entry.reason, "asked by phone");
    assert_eq!(entry.entry.source, SuppressionSource::Operator);
    assert_eq!(entry.entry.at, 5);
    // Another spelling is the same entry: adding it changes nothing, the first stays.
    let r = s
        .commit(
            6,
            &[operator_suppress(
                Channel::Email,
                "ann@example.com",
                "again",
            )],
        )
        .unwrap();
    let (again, changed) = suppression_result(&r.results[0]);
    assert!(!changed);
    assert_eq!(again.unwrap(), entry);
    // Check through the canonical key, from any spelling.
    let key = s.recipient_key(Channel::Email, "ann@example.com").unwrap();
    assert_eq!(key.as_str(), "ann@example.com");
    assert_eq!(
        s.suppression(Channel::Email, &key).unwrap(),
        Some(entry.entry.clone())
    );
    let other = s.recipient_key(Channel::Sms, TO).unwrap();
    assert_eq!(s.suppression(Channel::Sms, &other).unwrap(), None);
    assert_eq!(s.recipient_key(Channel::Sms, "not a number"), None);
    // A send to it is suppressed.
    let blocked = email("ann@EXAMPLE.com");
    s.commit(7, &[Op::Accept(blocked.clone())]).unwrap();
    assert_eq!(state(&s, &blocked.id), State::Suppressed);
    // More entries, on two channels, listed in (channel, key) order, page by page.
    let mut ops = vec![];
    for i in 0..5 {
        ops.push(operator_suppress(
            Channel::Email,
            &format!("user{i}@example.org"),
            "bulk",
        ));
    }
    ops.push(operator_suppress(Channel::Sms, TO, "by hand"));
    s.commit(8, &ops).unwrap();
    let s = e.reopen(s);
    let all = s.suppressions(None, 100).unwrap();
    assert_eq!(all.len(), 7);
    let mut sorted: Vec<_> = all
        .iter()
        .map(|x| (x.channel as u8, x.key.clone()))
        .collect();
    sorted.sort();
    assert_eq!(
        sorted,
        all.iter()
            .map(|x| (x.channel as u8, x.key.clone()))
            .collect::<Vec<_>>()
    );
    assert!(all.contains(&entry), "persists across a restart");
    let mut paged = vec![];
    let mut after: Option<(Channel, String)> = None;
    loop {
        let page = s
            .suppressions(after.as_ref().map(|(c, k)| (*c, k.as_str())), 3)
            .unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some((last.channel, last.key.clone()));
        paged.extend(page);
    }
    assert_eq!(paged, all);
    // Remove through another spelling; removing again changes nothing.
    let r = s
        .commit(
            9,
            &[Op::Unsuppress {
                channel: Channel::Email,
                recipient: "ANN@example.com".into(),
            }],
        )
        .unwrap();
    assert!(r.events.is_empty());
    let (removed, changed) = suppression_result(&r.results[0]);
    assert!(changed);
    assert_eq!(removed.unwrap(), entry);
    let r = s
        .commit(
            10,
            &[Op::Unsuppress {
                channel: Channel::Email,
                recipient: "ann@example.com".into(),
            }],
        )
        .unwrap();
    assert_eq!(suppression_result(&r.results[0]), (None, false));
    let s = e.reopen(s);
    assert_eq!(s.suppression(Channel::Email, &key).unwrap(), None);
    assert_eq!(s.suppressions(None, 100).unwrap().len(), 6);
    let welcome = email("Ann Lee <ann@example.com>");
    accept(&s, 11, &welcome);
    assert_eq!(state(&s, &welcome.id), State::Queued);
    assert_consistent(&s);
}

fn override_suppression_sends_to_a_suppressed_recipient<E: Engine>(mut e: E) {
    let s = e.open();
    s.commit(1, &[operator_suppress(Channel::Sms, TO, "test")])
        .unwrap();
    let m = NewMessage {
        override_suppression: true,
        ..msg(None, "your code is 123456")
    };
    let r = s.commit(2, &[Op::Accept(m.clone())]).unwrap();
    assert!(r.scheduled);
    assert_eq!(kinds(&r.events), [EventKind::Queued]);
    assert!(
        r.events[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("override_suppression")
    );
    assert_eq!(state(&s, &m.id), State::Queued);
    assert_eq!(claim(&s, 3, 10).len(), 1);
    // Without a suppression the override is not worth a word.
    let mail = NewMessage {
        override_suppression: true,
        ..email("someone@example.org")
    };
    let r = s.commit(4, &[Op::Accept(mail)]).unwrap();
    assert_eq!(r.events[0].detail, None);
    assert_consistent(&s);
}

fn breaker_events_report_only_the_newest_transition<E: Engine>(mut e: E) {
    let s = e.open();
    let rec = |generation, opened_at| BreakerRecord {
        plugin: "twilio".into(),
        generation,
        opened_at,
        trips: u32::from(opened_at.is_some()),
    };
    let ev = |kind, generation| BreakerEvent {
        provider: "tw".into(),
        kind,
        generation,
        reason: format!("{kind:?} {generation}"),
    };
    // For messages that are not there: breakers and their events are stored all the same.
    let outcome = |breakers: Vec<(String, BreakerRecord)>, breaker_events: Vec<BreakerEvent>| {
        Op::Complete(Completion {
            id: new_id(),
            attempt: 1,
            fence: 0,
            state: State::Sent,
            provider: Some("tw".into()),
            provider_message_id: None,
            detail: None,
            due_at: None,
            suppress: false,
            attempt_used: true,
            index_provider_id: false,
            breakers,
            breaker_events,
            max_attempts: 3,
        })
    };
    let c = s
        .commit(
            5,
            &[
                outcome(
                    vec![("tw".into(), rec(2, Some(5)))],
                    vec![
                        ev(EventKind::ProviderHalfOpen, 0),
                        ev(EventKind::ProviderOpened, 2),
                    ],
                ),
                // Stale: a concurrent delivery's older closing.
                outcome(
                    vec![("tw".into(), rec(1, None))],
                    vec![ev(EventKind::ProviderClosed, 1)],
                ),
            ],
        )
        .unwrap();
    let got: Vec<(EventKind, Option<String>, Option<String>)> = c
        .events
        .iter()
        .map(|e| (e.kind, e.provider.clone(), e.detail.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                EventKind::ProviderHalfOpen,
                Some("tw".into()),
                Some("ProviderHalfOpen 0".into())
            ),
            (
                EventKind::ProviderOpened,
                Some("tw".into()),
                Some("ProviderOpened 2".into())
            ),
        ]
    );
    assert_consistent(&s);
}

const RESEND: UpdateKind = UpdateKind::Resend { after_ms: 1_000 };

fn resend_defers_a_sent_message_until_attempts_run_out<E: Engine>(mut e: E) {
    let s = e.open();
    let m = msg(None, "RSVP?");
    accept(&s, 0, &m);
    let c = claim_one(&s, 0, &m.id);
    complete(&s, 1, done(&c, State::Sent, Some("SM1")));
    // The carrier could not reach the handset: send again after the delay.
    let r = s
        .commit(10, &[update(Some("SM1"), None, RESEND, "SM1:undelivered")])
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Done]);
    assert_eq!(kinds(&r.events), [EventKind::Deferred]);
    let detail = r.events[0].detail.as_deref().unwrap();
    assert!(detail.contains("sending again after 1000 ms"), "{detail}");
    assert_eq!(r.events[0].provider.as_deref(), Some("tw"));
    assert_eq!(state(&s, &m.id), State::Deferred);
    assert_eq!(s.counts().get(State::Deferred), 1);
    assert_eq!(s.counts().get(State::Sent), 0);
    // A redelivered webhook stays de-duplicated, and a second request is not granted twice.
    let r = s
        .commit(
            11,
            &[
                update(Some("SM1"), None, RESEND, "SM1:undelivered"),
                update(None, Some(&m.id), RESEND, "other"),
            ],
        )
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Ignored, OpResult::Ignored]);
    assert!(r.events.is_empty());
    let s = e.reopen(s);
    // Not before the delay; then a new attempt, which the old provider id no longer finds.
    assert!(claim(&s, 1_009, 10).is_empty());
    let c = claim_one(&s, 1_010, &m.id);
    assert_eq!(c.record.attempt, 2);
    let r = s
        .commit(
            1_011,
            &[update(Some("SM1"), None, UpdateKind::Delivered, "late")],
        )
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Held]);
    complete(&s, 1_012, done(&c, State::Sent, Some("SM2")));
    assert_eq!(state(&s, &m.id), State::Sent);
    // A resend request about the first attempt, found by Herald's id, is stale.
    let r = s
        .commit(1_013, &[update(Some("SM1"), Some(&m.id), RESEND, "stale")])
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Ignored]);
    assert_eq!(state(&s, &m.id), State::Sent);
    // Attempt 2 of 3: once more.
    let r = s
        .commit(
            1_020,
            &[update(Some("SM2"), None, RESEND, "SM2:undelivered")],
        )
        .unwrap();
    assert_eq!(kinds(&r.events), [EventKind::Deferred]);
    let c = claim_one(&s, 2_020, &m.id);
    assert_eq!(c.record.attempt, 3);
    complete(&s, 2_021, done(&c, State::Sent, Some("SM3")));
    // Attempt 3 of 3: no attempt left, the message fails.
    let r = s
        .commit(
            2_030,
            &[update(Some("SM3"), None, RESEND, "SM3:undelivered")],
        )
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Done]);
    assert_eq!(kinds(&r.events), [EventKind::Failed]);
    let detail = r.events[0].detail.as_deref().unwrap();
    assert!(detail.contains("no attempt left"), "{detail}");
    assert_eq!(state(&s, &m.id), State::Failed);
    assert_eq!(
        s.get(&m.id).unwrap().unwrap().last_error.as_deref(),
        Some(detail)
    );
    assert!(claim(&s, 10_000, 10).is_empty());
    assert_eq!(s.counts().get(State::Failed), 1);
    assert_eq!(s.counts().get(State::Deferred), 0);
    assert_consistent(&s);
}

fn resend_is_bounded_by_the_ttl_and_never_moves_back<E: Engine>(mut e: E) {
    let mut s = e.open();
    // The delay would end after the time-to-live (60 s from acceptance): failed.
    let late = msg(None, "RSVP?");
    sent(&s, 0, &late);
    let r = s
        .commit(
            10,
            &[update(
                Some("pid-0"),
                None,
                UpdateKind::Resend { after_ms: 60_000 },
                "e1",
            )],
        )
        .unwrap();
    assert_eq!(kinds(&r.events), [EventKind::Failed]);
    let detail = r.events[0].detail.as_deref().unwrap();
    assert!(detail.contains("time-to-live"), "{detail}");
    assert_eq!(state(&s, &late.id), State::Failed);
    // Delivered (or failed) already: a resend request changes nothing.
    let delivered = msg(None, "RSVP?");
    sent(&s, 100, &delivered);
    let r = s
        .commit(
            110,
            &[
                update(Some("pid-100"), None, UpdateKind::Delivered, "e2"),
                update(Some("pid-100"), None, RESEND, "e3"),
                update(Some("pid-0"), None, RESEND, "e4"),
            ],
        )
        .unwrap();
    assert_eq!(
        r.results,
        vec![OpResult::Done, OpResult::Ignored, OpResult::Ignored]
    );
    assert_eq!(kinds(&r.events), [EventKind::Delivered]);
    assert_eq!(state(&s, &delivered.id), State::Delivered);
    // Held while the message is being sent, applied with the completion under the
    // completion's max_attempts.
    for (max_attempts, then) in [(3, EventKind::Deferred), (1, EventKind::Failed)] {
        let m = msg(None, "RSVP?");
        accept(&s, 200, &m);
        let c = claim_one(&s, 200, &m.id);
        let r = s
            .commit(
                201,
                &[update(
                    None,
                    Some(&m.id),
                    RESEND,
                    &format!("h{max_attempts}"),
                )],
            )
            .unwrap();
        assert_eq!(r.results, vec![OpResult::Held]);
        s = e.reopen(s);
        let events = complete(
            &s,
            202,
            Completion {
                max_attempts,
                ..done(&c, State::Sent, Some(&format!("SMh{max_attempts}")))
            },
        );
        assert_eq!(kinds(&events), [EventKind::Sent, then]);
        assert_consistent(&s);
    }
}

fn a_delivery_delay_is_an_event_that_leaves_the_state<E: Engine>(mut e: E) {
    let s = e.open();
    let m = msg(None, "hi");
    accept(&s, 1, &m);
    let c = claim_one(&s, 2, &m.id);
    complete(&s, 3, done(&c, State::Sent, Some("SM1")));
    let r = s
        .commit(4, &[update(Some("SM1"), None, UpdateKind::Deferred, "d1")])
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Done]);
    assert_eq!(kinds(&r.events), vec![EventKind::Delayed]);
    assert_eq!(state(&s, &m.id), State::Sent);
    // After delivery a late delay report says nothing new.
    s.commit(5, &[update(Some("SM1"), None, UpdateKind::Delivered, "d2")])
        .unwrap();
    let r = s
        .commit(6, &[update(Some("SM1"), None, UpdateKind::Deferred, "d3")])
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Ignored]);
    assert!(r.events.is_empty());
    assert_consistent(&s);
}

fn breakers_by_generation_survive_a_restart<E: Engine>(mut e: E) {
    let rec = |plugin: &str, generation, opened_at| BreakerRecord {
        plugin: plugin.into(),
        generation,
        opened_at,
        trips: u32::from(opened_at.is_some()),
    };
    // For a message that is not there: the breakers are stored all the same.
    let outcome = |breakers: Vec<(String, BreakerRecord)>| {
        Op::Complete(Completion {
            id: new_id(),
            attempt: 1,
            fence: 0,
            state: State::Sent,
            provider: Some("tw".into()),
            provider_message_id: None,
            detail: None,
            due_at: None,
            suppress: false,
            attempt_used: true,
            index_provider_id: false,
            breakers,
            breaker_events: Vec::new(),
            max_attempts: 3,
        })
    };
    let s = e.open();
    assert!(s.breakers().unwrap().is_empty());
    let r = s
        .commit(
            5,
            &[
                outcome(vec![("tw".into(), rec("twilio", 2, Some(100)))]),
                // A concurrent delivery that saw an older transition lands later.
                outcome(vec![("tw".into(), rec("twilio", 1, None))]),
                outcome(vec![("mail".into(), rec("resend", 1, Some(50)))]),
            ],
        )
        .unwrap();
    assert_eq!(r.results[0], OpResult::NotFound);
    let s = e.reopen(s);
    let stored = s.breakers().unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored["tw"], rec("twilio", 2, Some(100)));
    assert_eq!(stored["mail"], rec("resend", 1, Some(50)));
    // The same name on another plugin replaces it whatever its generation.
    s.commit(6, &[outcome(vec![("tw".into(), rec("webhook", 1, None))])])
        .unwrap();
    assert_eq!(s.breakers().unwrap()["tw"], rec("webhook", 1, None));
    assert_consistent(&s);
}

fn retention_prunes_what_finished<E: Engine>(mut e: E) {
    let s = e.open();
    let done_msg = msg(Some("k1"), "RSVP?");
    let flying = msg(None, "in flight");
    let cancelled = msg(None, "never mind");
    s.commit(
        0,
        &[
            Op::Accept(done_msg.clone()),
            Op::Accept(flying.clone()),
            Op::Accept(cancelled.clone()),
        ],
    )
    .unwrap();
    s.commit(1, &[Op::Cancel(cancelled.id)]).unwrap();
    let c = claim(&s, 2, 10);
    complete(
        &s,
        3,
        done(
            c.iter().find(|c| c.id == done_msg.id).unwrap(),
            State::Sent,
            Some("SM1"),
        ),
    );
    // Webhook bookkeeping that retention must drop too: a delivered update (dedupe key),
    // a reply (dedupe key; tags it), an update held for an id nobody knows.
    s.commit(
        4,
        &[
            update(Some("SM1"), None, UpdateKind::Delivered, "ev1"),
            reply(TO, "SM9", None),
            update(Some("SM-unknown"), None, UpdateKind::Delivered, "ev2"),
        ],
    )
    .unwrap();
    assert_eq!(s.counts().get(State::Delivered), 1);
    assert_eq!(s.counts().get(State::Cancelled), 1);
    let last = s.last_seq();
    assert_eq!(s.first_seq().unwrap(), 1);

    let r = s
        .commit(
            10_000,
            &[Op::Prune {
                before: 5_000,
                limit: 100,
            }],
        )
        .unwrap();
    assert_eq!(
        r.results,
        vec![OpResult::Pruned {
            messages: 2,
            events: last
        }],
        "every event is older than the cut-off"
    );
    assert!(r.events.is_empty());
    assert!(s.get(&done_msg.id).unwrap().is_none());
    assert!(s.get(&cancelled.id).unwrap().is_none());
    assert_eq!(state(&s, &flying.id), State::Sending, "in flight is kept");
    assert_eq!(s.counts().get(State::Delivered), 0);
    assert_eq!(s.counts().get(State::Cancelled), 0);
    assert_eq!(s.counts().get(State::Sending), 1);
    assert_eq!(s.first_seq().unwrap(), 0, "log empty");
    assert_eq!(s.last_seq(), last, "seq never goes back");
    assert!(s.events_from(0, 10).unwrap().is_empty());
    let s = e.reopen(s);
    assert_eq!(s.last_seq(), last);

    // The dedupe keys are gone: the same reply counts again, now untagged (its message
    // and the reply index entry went with retention).
    let r = s.commit(10_001, &[reply(TO, "SM9", None)]).unwrap();
    assert_eq!(r.results, vec![OpResult::Done]);
    assert_eq!(r.events[0].seq, last + 1);
    assert_eq!(r.events[0].message_id, None);
    // The idempotency key is free.
    let fresh = msg(Some("k1"), "another");
    let r = s.commit(10_002, &[Op::Accept(fresh.clone())]).unwrap();
    assert_eq!(
        r.results,
        vec![OpResult::Accepted {
            id: fresh.id,
            duplicate: false
        }]
    );
    // The held update is gone: a message that now gets that provider id stays `sent`.
    let c = claim(&s, 10_003, 10);
    let fresh_claim = c.iter().find(|c| c.id == fresh.id).unwrap();
    let events = complete(
        &s,
        10_004,
        done(fresh_claim, State::Sent, Some("SM-unknown")),
    );
    assert_eq!(kinds(&events), [EventKind::Sent]);
    assert_consistent(&s);
}

fn event_seqs_gap_free_and_never_reused<E: Engine>(mut e: E) {
    let s = e.open();
    for round in 0..3u64 {
        let ops: Vec<Op> = (0..40)
            .map(|i| Op::Accept(msg(None, &format!("m{i}"))))
            .collect();
        let r = s.commit(round, &ops).unwrap();
        let seqs: Vec<u64> = r.events.iter().map(|e| e.seq).collect();
        let first = round * 40 + 1;
        assert_eq!(seqs, (first..first + 40).collect::<Vec<_>>());
    }
    let s = e.reopen(s);
    assert_eq!(s.last_seq(), 120);
    let r = s
        .commit(
            1,
            &[Op::Note {
                kind: EventKind::ConfigReloaded,
                detail: "reloaded".into(),
            }],
        )
        .unwrap();
    assert_eq!(r.events[0].seq, 121);
    assert_eq!(r.events[0].message_id, None);
    // A batch that fails leaves no gap and no trace.
    let bad = Op::Complete(Completion {
        state: State::Queued,
        ..done(&claim(&s, 2, 1)[0], State::Queued, None)
    });
    assert!(s.commit(3, &[Op::Accept(msg(None, "x")), bad]).is_err());
    assert_eq!(s.last_seq(), 122, "only the claim's event");
    let r = s.commit(4, &[Op::Accept(msg(None, "y"))]).unwrap();
    assert_eq!(r.events[0].seq, 123);
    assert_eq!(s.counts().get(State::Queued), 120);
    let all = s.events_from(0, 1_000).unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=123).collect::<Vec<_>>()
    );
    assert_consistent(&s);
}

fn events_read_from_any_seq<E: Engine>(mut e: E) {
    let s = e.open();
    let ops: Vec<Op> = (0..150)
        .map(|i| Op::Accept(msg(None, &format!("m{i}"))))
        .collect();
    s.commit(1, &ops).unwrap();
    let ops: Vec<Op> = (0..50)
        .map(|i| Op::Accept(msg(None, &format!("n{i}"))))
        .collect();
    s.commit(2, &ops).unwrap();
    let seqs = |s: &E::Store, from, limit| -> Vec<u64> {
        s.events_from(from, limit)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs(&s, 0, 1000), (1..=200).collect::<Vec<_>>());
    assert_eq!(seqs(&s, 70, 10), (70..80).collect::<Vec<_>>(), "mid-batch");
    assert_eq!(
        seqs(&s, 140, 20),
        (140..160).collect::<Vec<_>>(),
        "across batches"
    );
    assert_eq!(seqs(&s, 200, 10), vec![200]);
    assert!(seqs(&s, 201, 10).is_empty());
    let s = e.reopen(s);
    assert_eq!(s.last_seq(), 200);
    assert_eq!(s.first_seq().unwrap(), 1);
    assert_eq!(seqs(&s, 199, 10), vec![199, 200]);
}

// ---- the store check ----------------------------------------------------------------

/// A store with a message in every state the lifecycle reaches; the ids in the order
/// sent, delivered, deferred (due 500), dead, bounced, sending, sending, cancelled.
fn populated(s: &impl Store) -> Vec<MsgId> {
    let ms: Vec<NewMessage> = (0..7).map(|i| msg(None, &format!("m{i}"))).collect();
    let mut later = msg(None, "later");
    later.send_at = Some(1_000_000);
    let ops: Vec<Op> = ms
        .iter()
        .chain(std::iter::once(&later))
        .map(|m| Op::Accept(m.clone()))
        .collect();
    s.commit(0, &ops).unwrap();
    let c = claim(s, 0, 7);
    assert_eq!(c.len(), 7);
    let with = |i: usize, state, due_at| {
        Op::Complete(Completion {
            due_at,
            ..done(&c[i], state, Some(&format!("SM{i}")))
        })
    };
    s.commit(
        1,
        &[
            with(0, State::Sent, None),
            with(1, State::Delivered, None),
            with(2, State::Deferred, Some(500)),
            with(3, State::Dead, None),
            with(4, State::Bounced, None),
            Op::Cancel(later.id),
        ],
    )
    .unwrap();
    // c[5] and c[6] stay `sending`.
    let mut ids: Vec<MsgId> = c.iter().map(|c| c.id).collect();
    ids.push(later.id);
    ids
}

fn check_finds_a_healthy_store_consistent<E: Engine>(mut e: E) {
    let s = e.open();
    let (report, _) = check(&s, 0, true);
    assert!(report.consistent());
    assert_eq!(report.messages, 0);
    populated(&s);
    let s = e.reopen(s);
    let (report, events) = check(&s, 2, true);
    assert!(report.consistent(), "{report:?}");
    assert!(events.is_empty());
    assert_eq!(report.messages, 8);
    assert_eq!(report.counts_stored, report.counts_actual);
    assert_eq!(report.counts_actual, s.counts());
    assert_eq!(s.counts().get(State::Sending), 2);
    assert_eq!(s.counts().get(State::Deferred), 1);
    assert_eq!(s.counts().get(State::Cancelled), 1);
}

fn check_requeues_sending_without_a_lease<E: Engine>(mut e: E) {
    let s = e.open();
    let ids = populated(&s);
    let lost = ids[5];
    e.damage(&s, Damage::DropLease(lost));
    let s = e.reopen(s);
    // A dry run reports and changes nothing.
    let (report, events) = check(&s, 10, false);
    assert_eq!(found(&report, Problem::SendingWithoutLease), (1, 0));
    assert_eq!(report.problems[0].examples, vec![lost]);
    assert!(events.is_empty());
    assert_eq!(state(&s, &lost), State::Sending);
    // Recovery alone never finds it: it looks at the leases (at their expiry, so a
    // shared engine, which returns only expired leases, returns the other one too).
    let r = s.commit(1_000, &[Op::Recover]).unwrap();
    assert_eq!(
        r.results,
        vec![OpResult::Recovered(1)],
        "only the other one"
    );
    assert_eq!(state(&s, &lost), State::Sending);

    let (report, events) = check(&s, 1_001, true);
    assert_eq!(found(&report, Problem::SendingWithoutLease), (1, 1));
    assert_eq!(report.unrepaired(), 0);
    assert_eq!(kinds(&events), [EventKind::Queued]);
    assert_eq!(
        events[0].message_id.as_deref(),
        Some(id_string(&lost).as_str())
    );
    assert!(events[0].detail.as_deref().unwrap().contains("store check"));
    let rec = s.get(&lost).unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.lease_until, rec.due_at),
        (State::Queued, None, 1_001)
    );
    assert_eq!(s.counts().get(State::Sending), 0);
    let c = claim(&s, 1_001, 10);
    assert!(c.iter().any(|c| c.id == lost), "dispatchable again");
    assert_consistent(&s);
}

fn check_reschedules_waiting_without_a_schedule_entry<E: Engine>(mut e: E) {
    let s = e.open();
    let ids = populated(&s);
    let queued = msg(None, "orphan");
    accept(&s, 2, &queued);
    let deferred = ids[2];
    e.damage(&s, Damage::DropSchedule(queued.id));
    e.damage(&s, Damage::DropSchedule(deferred));
    let s = e.reopen(s);
    assert!(claim(&s, 1_000, 100).is_empty(), "invisible to dispatch");
    assert_eq!(s.next_due().unwrap(), None);
    let (report, _) = check(&s, 1_001, true);
    assert_eq!(found(&report, Problem::NotScheduled), (2, 2));
    assert_eq!(s.next_due().unwrap(), Some(2));
    let c = claim(&s, 1_001, 100);
    let mut claimed: Vec<MsgId> = c.iter().map(|c| c.id).collect();
    claimed.sort();
    let mut want = vec![queued.id, deferred];
    want.sort();
    assert_eq!(claimed, want);
    assert_consistent(&s);
}

fn check_recounts_wrong_counts<E: Engine>(mut e: E) {
    let s = e.open();
    populated(&s);
    let right = s.counts();
    let mut wrong = right;
    wrong.0[0] += 7;
    wrong.0[1] = 0;
    wrong.0[9] = 1_000;
    e.damage(&s, Damage::SetCounts(wrong));
    let s = e.reopen(s);
    assert_eq!(s.counts(), wrong);
    let (report, _) = check(&s, 3, false);
    assert_eq!(found(&report, Problem::CountsWrong), (3, 0));
    assert_eq!(report.counts_stored, wrong);
    assert_eq!(report.counts_actual, right);
    assert_eq!(s.counts(), wrong, "a dry run changes nothing");
    let (report, _) = check(&s, 3, true);
    assert_eq!(found(&report, Problem::CountsWrong), (3, 3));
    assert_eq!(s.counts(), right);
    let s = e.reopen(s);
    assert_eq!(s.counts(), right, "stored");
    assert_consistent(&s);
}

fn check_drops_stale_entries<E: Engine>(mut e: E) {
    let s = e.open();
    let ids = populated(&s);
    let (cancelled, delivered, queued_elsewhere) = (ids[7], ids[1], new_id());
    let waiting = msg(None, "waiting");
    accept(&s, 2, &waiting);
    e.damage(&s, Damage::AddSchedule(5, cancelled));
    e.damage(&s, Damage::AddSchedule(6, queued_elsewhere));
    e.damage(&s, Damage::AddSchedule(7, waiting.id));
    e.damage(&s, Damage::AddLease(waiting.id, 99));
    e.damage(&s, Damage::AddLease(queued_elsewhere, 99));
    e.damage(&s, Damage::AddDeadLetter(delivered));
    e.damage(&s, Damage::AddDeadLetter(queued_elsewhere));
    let s = e.reopen(s);
    assert_eq!(s.next_due().unwrap(), Some(2), "the one at 2 still leads");
    assert_eq!(
        s.dead(10).unwrap().len(),
        2,
        "a delivered message listed as dead"
    );
    let (report, _) = check(&s, 3, true);
    assert_eq!(found(&report, Problem::StaleSchedule), (3, 3));
    assert_eq!(found(&report, Problem::StaleLease), (2, 2));
    assert_eq!(found(&report, Problem::StaleDeadLetter), (2, 2));
    assert_eq!(report.found(), 7);
    let dead = s.dead(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, ids[3]);
    assert_eq!(state(&s, &waiting.id), State::Queued);
    let c = claim(&s, 1_000, 100);
    assert_eq!(c.len(), 2, "waiting, and the deferred one");
    assert_consistent(&s);
}

fn check_restores_dead_letters_and_finished_entries<E: Engine>(mut e: E) {
    let s = e.open();
    let ids = populated(&s);
    let (dead, delivered) = (ids[3], ids[1]);
    e.damage(&s, Damage::DropDeadLetter(dead));
    e.damage(&s, Damage::DropFinished(delivered));
    let s = e.reopen(s);
    assert!(s.dead(10).unwrap().is_empty());
    let (report, _) = check(&s, 3, true);
    assert_eq!(found(&report, Problem::NotInDeadLetters), (1, 1));
    assert_eq!(found(&report, Problem::NotFinished), (1, 1));
    assert_eq!(s.dead(10).unwrap()[0].0, dead);
    // Retention finds the delivered message again.
    let r = s
        .commit(
            10_000,
            &[Op::Prune {
                before: 5_000,
                limit: 100,
            }],
        )
        .unwrap();
    assert!(
        matches!(r.results[0], OpResult::Pruned { messages: 4, .. }),
        "{r:?}"
    );
    assert!(s.get(&delivered).unwrap().is_none());
    assert_consistent(&s);
}

fn check_in_a_batch_with_other_ops<E: Engine>(mut e: E) {
    let s = e.open();
    populated(&s);
    let right = s.counts();
    let mut wrong = right;
    wrong.0[0] = 50;
    e.damage(&s, Damage::SetCounts(wrong));
    let s = e.reopen(s);
    let (a, b) = (msg(None, "before"), msg(None, "after"));
    let r = s
        .commit(
            4,
            &[
                Op::Accept(a.clone()),
                Op::Check { repair: true },
                Op::Accept(b.clone()),
                Op::Check { repair: true },
            ],
        )
        .unwrap();
    let OpResult::Checked(first) = &r.results[1] else {
        panic!("{:?}", r.results)
    };
    assert_eq!(found(first, Problem::CountsWrong), (1, 1));
    assert_eq!(
        first.counts_actual.get(State::Queued),
        1,
        "the accept before it"
    );
    let OpResult::Checked(second) = &r.results[3] else {
        panic!("{:?}", r.results)
    };
    assert!(second.consistent(), "{second:?}");
    assert_eq!(s.counts().get(State::Queued), 2);
    assert_eq!(
        r.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![s.last_seq() - 1, s.last_seq()]
    );
    assert_consistent(&s);
}

/// A sent message (claimed and completed `sent` by `tw`).
fn sent(s: &impl Store, now: UnixMillis, m: &NewMessage) {
    accept(s, now, m);
    let c = claim_one(s, now, &m.id);
    complete(
        s,
        now + 1,
        done(&c, State::Sent, Some(&format!("pid-{now}"))),
    );
}

fn email_reply(from: &str, pid: &str) -> Op {
    Op::Inbound {
        provider: "tw".into(),
        inbound: InboundMessage {
            channel: Channel::Email,
            from: from.into(),
            to: "rsvp@host.example".into(),
            body: "We'll be there".into(),
            provider_message_id: Some(pid.into()),
            opt_out: None,
        },
        rsvp: None,
    }
}

fn bounce(c: &Claimed) -> Completion {
    Completion {
        suppress: true,
        detail: Some("550 mailbox unavailable".into()),
        ..done(c, State::Bounced, None)
    }
}

fn recipients_compare_by_canonical_key<E: Engine>(mut e: E) {
    let s = e.open();
    // A bounce of a display-name address suppresses every spelling of it.
    let first = email("Ann Lee <Ann@Example.com>");
    accept(&s, 0, &first);
    let c = claim_one(&s, 0, &first.id);
    complete(&s, 1, bounce(&c));
    let s = e.reopen(s);
    for (i, spelling) in [
        "ann@example.com",
        "ANN@EXAMPLE.COM",
        "\"Ann\" <ann@example.com>",
    ]
    .into_iter()
    .enumerate()
    {
        let again = email(spelling);
        accept(&s, 2 + i as u64, &again);
        assert_eq!(state(&s, &again.id), State::Suppressed, "{spelling}");
    }
    // A reply from the bare address finds the invitation sent to the display name.
    let mut invite = email("Bo Park <bo@example.com>");
    invite.tags = vec!["wedding".into(), "guest-7".into()];
    sent(&s, 10, &invite);
    let s = e.reopen(s);
    let r = s
        .commit(20, &[email_reply("BO@example.com", "in-1")])
        .unwrap();
    let ev = &r.events[0];
    assert_eq!(ev.kind, EventKind::Inbound);
    assert_eq!(
        ev.message_id.as_deref(),
        Some(id_string(&invite.id).as_str())
    );
    assert_eq!(ev.tags, ["wedding", "guest-7"]);
    // SMS: the number as written by the host, the sender in E.164.
    let mut text = msg(None, "RSVP?");
    text.to = "+1 (415) 555-0123".into();
    text.tags = vec!["sms-invite".into()];
    sent(&s, 30, &text);
    let r = s
        .commit(40, &[reply("+14155550123", "SM-r1", Some(true))])
        .unwrap();
    assert_eq!(r.events[0].tags, ["sms-invite"]);
    let later = NewMessage {
        to: "+1 415 555 0123".into(),
        ..msg(None, "still there?")
    };
    accept(&s, 41, &later);
    assert_eq!(state(&s, &later.id), State::Suppressed);
    // A sender that is no recipient of the channel matches nothing and changes nothing.
    let r = s
        .commit(42, &[reply("not-a-number", "SM-r2", Some(true))])
        .unwrap();
    assert_eq!(r.results, vec![OpResult::Done]);
    assert_eq!(r.events[0].message_id, None);
    assert!(
        r.events[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("nothing to change")
    );
    assert_consistent(&s);
}

fn strict_email_case_keeps_local_parts_apart<E: Engine>(mut e: E) {
    let strict = RecipientRules {
        email_case: EmailCase::Strict,
    };
    let s = e.open_with(strict);
    let first = email("Ann Lee <Ann@Example.com>");
    accept(&s, 0, &first);
    let c = claim_one(&s, 0, &first.id);
    complete(&s, 1, bounce(&c));
    let s = e.reopen_with(s, strict);
    let same = email("Ann@EXAMPLE.com");
    accept(&s, 2, &same);
    assert_eq!(state(&s, &same.id), State::Suppressed);
    let other = email("ann@example.com");
    accept(&s, 3, &other);
    assert_eq!(state(&s, &other.id), State::Queued);
    assert_consistent(&s);
}

fn legacy_recipients_are_keyed_again_at_start<E: Engine>(mut e: E) {
    let s = e.open();
    let mut invite = email("Ann Lee <ann@example.com>");
    invite.tags = vec!["wedding".into()];
    sent(&s, 0, &invite);
    let gone = new_id();
    for entry in [
        // As an older heraldd keyed them: the raw recipient, lower-cased.
        Legacy::Latest {
            channel: Channel::Email,
            to: invite.to.clone(),
            id: invite.id,
        },
        Legacy::Latest {
            channel: Channel::Email,
            to: "gone@example.com".into(),
            id: gone,
        },
        Legacy::Suppressed {
            channel: Channel::Email,
            to: "Cy Doe <Cy@Example.com>".into(),
            reason: "hard bounce".into(),
        },
        Legacy::Suppressed {
            channel: Channel::Sms,
            to: "+1 415 555 0177".into(),
            reason: "opted out".into(),
        },
    ] {
        e.plant_legacy(&s, entry);
    }
    let s = e.reopen(s);
    let r = s
        .commit(10, &[email_reply("ann@example.com", "in-1")])
        .unwrap();
    assert_eq!(
        r.events[0].message_id.as_deref(),
        Some(id_string(&invite.id).as_str())
    );
    assert_eq!(r.events[0].tags, ["wedding"]);
    let cy = email("cy@example.com");
    accept(&s, 11, &cy);
    assert_eq!(state(&s, &cy.id), State::Suppressed);
    let text = NewMessage {
        to: "+14155550177".into(),
        ..msg(None, "hi")
    };
    accept(&s, 12, &text);
    assert_eq!(state(&s, &text.id), State::Suppressed);
    // An opt-in lifts the re-keyed entry.
    s.commit(13, &[reply("+14155550177", "SM-in", Some(false))])
        .unwrap();
    let again = NewMessage {
        to: "+1 415 555 0177".into(),
        ..msg(None, "welcome back")
    };
    accept(&s, 14, &again);
    assert_eq!(state(&s, &again.id), State::Queued);
    // Another start finds nothing more to do and changes nothing.
    let s = e.reopen(s);
    let cy2 = email("CY@example.com");
    accept(&s, 15, &cy2);
    assert_eq!(state(&s, &cy2.id), State::Suppressed);
    assert_consistent(&s);
}

fn changed_rules_key_entries_again_at_start<E: Engine>(mut e: E) {
    let s = e.open();
    let first = email("Ann Lee <Ann@Example.com>");
    accept(&s, 0, &first);
    let c = claim_one(&s, 0, &first.id);
    complete(&s, 1, bounce(&c));
    let mut invite = email("Bo@example.com");
    invite.tags = vec!["t".into()];
    sent(&s, 2, &invite);
    // To strict: the entries follow the spelling they were given.
    let strict = RecipientRules {
        email_case: EmailCase::Strict,
    };
    let s = e.reopen_with(s, strict);
    let lower = email("ann@example.com");
    accept(&s, 5, &lower);
    assert_eq!(state(&s, &lower.id), State::Queued);
    let exact = email("Ann@example.COM");
    accept(&s, 6, &exact);
    assert_eq!(state(&s, &exact.id), State::Suppressed);
    let r = s
        .commit(7, &[email_reply("Bo@example.com", "in-1")])
        .unwrap();
    assert_eq!(r.events[0].tags, ["t"]);
    let r = s
        .commit(8, &[email_reply("bo@example.com", "in-2")])
        .unwrap();
    assert!(r.events[0].tags.is_empty());
    // And back.
    let s = e.reopen_with(s, RecipientRules::default());
    let lower = email("ann@example.com");
    accept(&s, 9, &lower);
    assert_eq!(state(&s, &lower.id), State::Suppressed);
    let r = s
        .commit(10, &[email_reply("bo@example.com", "in-3")])
        .unwrap();
    assert_eq!(r.events[0].tags, ["t"]);
    assert_consistent(&s);
}

fn inbound_carries_the_rsvp_it_is_given_but_never_for_a_stop<E: Engine>(mut e: E) {
    use herald_plugin_api::{Rsvp, RsvpAnswer};
    let s = e.open();
    let yes = Rsvp {
        answer: RsvpAnswer::Yes,
        headcount: Some(2),
    };
    let with = |op: Op, rsvp: Rsvp| match op {
        Op::Inbound {
            provider, inbound, ..
        } => Op::Inbound {
            provider,
            inbound,
            rsvp: Some(rsvp),
        },
        other => other,
    };
    let r = s
        .commit(
            0,
            &[
                with(reply(TO, "SM1", None), yes),
                with(reply(TO, "SM2", Some(true)), yes),
            ],
        )
        .unwrap();
    assert_eq!(r.events[0].rsvp, Some(yes));
    assert_eq!(r.events[1].rsvp, None);
    let s = e.reopen(s);
    let stored = s.events_from(1, 10).unwrap();
    assert_eq!(stored[0].rsvp, Some(yes));
    assert_eq!(stored[1].rsvp, None);
}

// ---- priority lanes ---------------------------------------------------------------

fn in_lane(lane: Lane, body: &str) -> NewMessage {
    NewMessage {
        lane,
        ..msg(None, body)
    }
}

fn lanes_of(claimed: &[Claimed]) -> Vec<Lane> {
    claimed.iter().map(|c| c.record.lane).collect()
}

fn claims_critical_first_then_normal_and_bulk_three_to_one<E: Engine>(mut e: E) {
    let s = e.open();
    let mut bulk = Vec::new();
    let mut normal = Vec::new();
    for i in 0..8 {
        bulk.push(in_lane(Lane::Bulk, &format!("b{i}")));
        normal.push(in_lane(Lane::Normal, &format!("n{i}")));
    }
    // Each bulk message before its normal one, so by due time alone bulk would lead.
    for (i, (b, n)) in bulk.iter().zip(&normal).enumerate() {
        accept(&s, i as u64, b);
        accept(&s, i as u64, n);
    }
    let critical = [in_lane(Lane::Critical, "c0"), in_lane(Lane::Critical, "c1")];
    accept(&s, 10, &critical[0]);
    accept(&s, 11, &critical[1]);
    assert_eq!(
        s.lanes().unwrap(),
        [
            LaneDepth {
                depth: 2,
                earliest_due: Some(10)
            },
            LaneDepth {
                depth: 8,
                earliest_due: Some(0)
            },
            LaneDepth {
                depth: 8,
                earliest_due: Some(0)
            },
        ]
    );
    // Every due critical message first, though it became due last.
    let c = claim_turn(&s, 20, 4, 0);
    assert_eq!(
        lanes_of(&c),
        [Lane::Critical, Lane::Critical, Lane::Normal, Lane::Normal]
    );
    assert_eq!(c[0].id, critical[0].id);
    // Then normal:bulk 3:1 by claim position: positions 4..8 hold one bulk place (7).
    let c = claim_turn(&s, 20, 4, 4);
    assert_eq!(
        lanes_of(&c),
        [Lane::Normal, Lane::Normal, Lane::Normal, Lane::Bulk]
    );
    assert_eq!(c[3].id, bulk[0].id, "oldest bulk first");
    // One at a time, the fourth position is bulk's.
    let one = |turn| lanes_of(&claim_turn(&s, 20, 1, turn));
    assert_eq!(one(8), [Lane::Normal]);
    assert_eq!(one(11), [Lane::Bulk]);
    // Normal runs out (2 left): bulk takes the rest of the claim.
    let c = claim_turn(&s, 20, 10, 12);
    assert_eq!(
        lanes_of(&c).iter().filter(|l| **l == Lane::Normal).count(),
        2
    );
    assert_eq!(lanes_of(&c).iter().filter(|l| **l == Lane::Bulk).count(), 6);
    assert!(claim(&s, 20, 10).is_empty());
    assert_eq!(s.lanes().unwrap(), [LaneDepth::default(); 3]);
    // Bulk runs out: normal takes bulk's place.
    let more: Vec<_> = (0..5)
        .map(|i| in_lane(Lane::Normal, &format!("m{i}")))
        .collect();
    for m in &more {
        accept(&s, 21, m);
    }
    assert_eq!(lanes_of(&claim_turn(&s, 21, 4, 3)), [Lane::Normal; 4]);
    assert_consistent(&s);
}

fn a_lane_is_kept_across_a_deferral_and_a_restart<E: Engine>(mut e: E) {
    let s = e.open();
    let bulk = in_lane(Lane::Bulk, "b");
    let critical = in_lane(Lane::Critical, "c");
    accept(&s, 0, &bulk);
    accept(&s, 0, &critical);
    let claimed = claim(&s, 0, 10);
    assert_eq!(lanes_of(&claimed), [Lane::Critical, Lane::Bulk]);
    for c in &claimed {
        complete(
            &s,
            1,
            Completion {
                due_at: Some(100),
                ..done(c, State::Deferred, None)
            },
        );
    }
    let s = e.reopen(s);
    assert_eq!(s.get(&critical.id).unwrap().unwrap().lane, Lane::Critical);
    assert_eq!(s.lanes().unwrap()[Lane::Bulk.index()].depth, 1);
    let normal = in_lane(Lane::Normal, "n");
    accept(&s, 50, &normal);
    // At 100 all three are due: the deferred critical one goes first, bulk last.
    let c = claim(&s, 100, 1);
    assert_eq!(c[0].id, critical.id);
    assert_eq!(c[0].record.lane, Lane::Critical);
    let c = claim(&s, 100, 10);
    assert_eq!(lanes_of(&c), [Lane::Normal, Lane::Bulk]);
    assert_eq!(c[1].id, bulk.id);
    assert_consistent(&s);
}

fn records_written_before_lanes_read_as_normal<E: Engine>(mut e: E) {
    let s = e.open();
    let old = msg(None, "from an older heraldd");
    let waiting = msg(None, "still queued");
    accept(&s, 0, &old);
    accept(&s, 1, &waiting);
    let c = claim_one_of(&s, 0, &old.id);
    complete(&s, 1, done(&c, State::Sent, Some("p-old")));
    for id in [old.id, waiting.id] {
        let record = Box::new(s.get(&id).unwrap().unwrap());
        e.plant_legacy(&s, Legacy::Message { id, record });
    }
    let s = e.reopen(s);
    let r = s.get(&old.id).unwrap().unwrap();
    assert_eq!((r.lane, r.state), (Lane::Normal, State::Sent));
    assert_eq!(r.provider_message_id.as_deref(), Some("p-old"));
    assert_eq!(s.lanes().unwrap()[Lane::Normal.index()].depth, 1);
    // The waiting one is claimed from the normal lane, before a bulk message.
    accept(&s, 2, &in_lane(Lane::Bulk, "b"));
    let c = claim(&s, 3, 1);
    assert_eq!(c[0].id, waiting.id);
    assert_eq!(c[0].record.lane, Lane::Normal);
    assert_consistent(&s);
}

/// Claims everything due and returns the claim of `id` (completing nothing else).
fn claim_one_of(s: &impl Store, now: UnixMillis, id: &MsgId) -> Claimed {
    let lease = s.commit(
        now,
        &[Op::Claim {
            limit: 1,
            lease_ms: 1_000,
            turn: 0,
        }],
    );
    match lease.unwrap().results.into_iter().next() {
        Some(OpResult::Claimed(mut c)) if c.len() == 1 && &c[0].id == id => c.remove(0),
        other => panic!("claim of {}: {other:?}", id_string(id)),
    }
}
