//! The message state machine for key-value engines: what each [`Op`] reads and writes,
//! which states it moves between, and which events it emits — written once, against the
//! domain-level transaction [`Txn`], so that every key-value engine (memory, sled) behaves
//! the same and the conformance suite (`store::conformance`) tests it once.
//!
//! An engine opens its transaction, calls [`apply_batch`], and the transaction's
//! [`Txn::finish`] persists the batch's events, `seq` and per-state counts with it. `Txn`
//! speaks the domain — messages, "due messages at `now`", leases, idempotency entries,
//! held webhook updates, suppression, … — never trees or keys. How an engine serves a
//! range read inside its transaction is its own business: sled's transactions cannot
//! scan, so `sled_store` reads the ranges a batch will ask for before it opens the
//! transaction (the single writer guarantees nothing changes in between).
//!
//! Owns: state transitions, idempotency, held webhooks, suppression, forward-only status,
//! reply tagging, event `seq` and per-state counts through a batch. Must not: know an
//! engine's layout or keys, or read the clock (`now` is passed in).

use herald_plugin_api::{
    Channel, Event, EventKind, InboundMessage, RecipientKey, RecipientRules, Rsvp, State,
    StatusUpdate, UnixMillis, UpdateKind,
};

use super::check::{self, Audit};
use super::{
    BreakerRecord, Claimed, Completion, Counts, Lane, MsgId, NewMessage, Op, OpResult, Record,
    StoreError, Suppression, SuppressionEntry, SuppressionSource, bulk_share, id_string,
    recipients,
};

/// Whose held webhook updates: a message's (the update arrived while it was being sent),
/// or a provider message id's (the update outran the completion that records the id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldFor<'a> {
    Message(&'a MsgId),
    ProviderId { provider: &'a str, pid: &'a str },
}

/// An owned [`HeldFor`], as a retention scan returns it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum HeldKey {
    Message(MsgId),
    ProviderId { provider: String, pid: String },
}

impl HeldKey {
    pub fn as_held_for(&self) -> HeldFor<'_> {
        match self {
            HeldKey::Message(id) => HeldFor::Message(id),
            HeldKey::ProviderId { provider, pid } => HeldFor::ProviderId { provider, pid },
        }
    }
}

/// A recorded webhook de-duplication key: `key` is the provider's event id (`e:…`) or
/// inbound message id (`i:…`), recorded at `at`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeenKey {
    pub at: UnixMillis,
    pub provider: String,
    pub key: String,
}

/// Updates held for one key, with their arrival times.
pub type HeldUpdates = Vec<(UnixMillis, StatusUpdate)>;

/// One transaction of a key-value engine, in domain terms. Every method reads or writes
/// inside the transaction: a write is seen by later reads of the same transaction, and
/// nothing is visible to others until the engine commits.
///
/// Recipients (suppression list, latest message per recipient) are compared by their
/// canonical [`RecipientKey`] under [`Txn::recipient_rules`]: the state machine computes
/// the keys, the engine stores them as given.
pub trait Txn {
    type Error: From<StoreError>;

    /// The rules the engine's recipient-keyed entries are keyed with (`[recipients]`).
    fn recipient_rules(&self) -> RecipientRules;

    // Messages.
    fn message(&mut self, id: &MsgId) -> Result<Option<Record>, Self::Error>;
    fn put_message(&mut self, id: &MsgId, record: &Record) -> Result<(), Self::Error>;
    fn remove_message(&mut self, id: &MsgId) -> Result<(), Self::Error>;

    // The schedule: which waiting message is due when, per priority lane.
    fn schedule(&mut self, lane: Lane, due: UnixMillis, id: &MsgId) -> Result<(), Self::Error>;
    fn unschedule(&mut self, lane: Lane, due: UnixMillis, id: &MsgId) -> Result<(), Self::Error>;
    /// Schedule entries of `lane` due at `now` or earlier, oldest first, at most `limit`,
    /// leaving out those returned earlier in this transaction (the caller unschedules
    /// every entry it gets before it asks again). An entry may be stale (its message was
    /// cancelled or rescheduled): the caller checks the record.
    fn due(
        &mut self,
        lane: Lane,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(UnixMillis, MsgId)>, Self::Error>;

    // Leases of messages being sent.
    /// Leases `id` until `until` and returns the claim's fencing token ([`Claimed::fence`]),
    /// which must differ from every earlier claim's of the message. Key-value engines (one
    /// daemon) return `until`, which every claim writes anew; a shared engine returns a
    /// counter that is independent of clocks.
    fn lease(&mut self, id: &MsgId, until: UnixMillis) -> Result<u64, Self::Error>;
    /// Whether `fence` is the token of the lease `id` (whose record is `r`) holds now: a
    /// completion applies only then. The default compares the record's lease expiry, the
    /// token of engines whose [`Txn::lease`] returns `until`.
    fn holds_lease(&mut self, id: &MsgId, r: &Record, fence: u64) -> Result<bool, Self::Error> {
        let _ = id;
        Ok(r.lease_until == Some(fence))
    }
    fn unlease(&mut self, id: &MsgId) -> Result<(), Self::Error>;
    fn is_leased(&mut self, id: &MsgId) -> Result<bool, Self::Error>;
    /// Every leased message (start-up recovery).
    fn leased(&mut self) -> Result<Vec<MsgId>, Self::Error>;

    // Idempotency keys: the message a key names, and until when.
    fn idempotency(&mut self, key: &str) -> Result<Option<(MsgId, UnixMillis)>, Self::Error>;
    fn put_idempotency(
        &mut self,
        key: &str,
        id: &MsgId,
        expires: UnixMillis,
    ) -> Result<(), Self::Error>;
    fn remove_idempotency(&mut self, key: &str) -> Result<(), Self::Error>;

    // The provider-id index (webhooks find their message by the provider's id).
    fn by_provider_id(&mut self, provider: &str, pid: &str) -> Result<Option<MsgId>, Self::Error>;
    fn put_provider_id(&mut self, provider: &str, pid: &str, id: &MsgId)
    -> Result<(), Self::Error>;
    fn remove_provider_id(&mut self, provider: &str, pid: &str) -> Result<(), Self::Error>;

    // Dead letters.
    fn put_dead(&mut self, id: &MsgId) -> Result<(), Self::Error>;
    fn remove_dead(&mut self, id: &MsgId) -> Result<(), Self::Error>;

    // Finished messages by the time they finished (retention).
    fn put_finished(&mut self, at: UnixMillis, id: &MsgId) -> Result<(), Self::Error>;
    fn remove_finished(&mut self, at: UnixMillis, id: &MsgId) -> Result<(), Self::Error>;
    /// Messages that finished before `before`, oldest first, at most `limit`.
    fn finished_before(
        &mut self,
        before: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(UnixMillis, MsgId)>, Self::Error>;

    // The suppression list.
    fn suppression(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
    ) -> Result<Option<Suppression>, Self::Error>;
    fn suppress(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
        entry: &Suppression,
    ) -> Result<(), Self::Error>;
    fn unsuppress(&mut self, channel: Channel, key: &RecipientKey) -> Result<(), Self::Error>;

    // The latest message sent to each recipient (replies are tagged like it).
    fn latest(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
    ) -> Result<Option<MsgId>, Self::Error>;
    fn put_latest(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
        id: &MsgId,
    ) -> Result<(), Self::Error>;
    fn remove_latest(&mut self, channel: Channel, key: &RecipientKey) -> Result<(), Self::Error>;

    // Webhook updates held until their message can take them.
    fn held(&mut self, key: HeldFor<'_>) -> Result<HeldUpdates, Self::Error>;
    /// Replaces what is held for `key`; an empty list removes it.
    fn set_held(
        &mut self,
        key: HeldFor<'_>,
        updates: &[(UnixMillis, StatusUpdate)],
    ) -> Result<(), Self::Error>;
    /// Keys holding anything that arrived before `before`, at most `limit`.
    fn held_before(
        &mut self,
        before: UnixMillis,
        limit: usize,
    ) -> Result<Vec<HeldKey>, Self::Error>;

    // Webhook de-duplication.
    /// Records `key` for `provider` at `now`; true when it was already recorded.
    fn seen(&mut self, provider: &str, key: &str, now: UnixMillis) -> Result<bool, Self::Error>;
    /// Keys recorded before `before`, oldest first, at most `limit`.
    fn seen_before(
        &mut self,
        before: UnixMillis,
        limit: usize,
    ) -> Result<Vec<SeenKey>, Self::Error>;
    fn unsee(&mut self, key: &SeenKey) -> Result<(), Self::Error>;

    // Circuit breakers.
    fn breaker(&mut self, provider: &str) -> Result<Option<BreakerRecord>, Self::Error>;
    fn put_breaker(&mut self, provider: &str, record: &BreakerRecord) -> Result<(), Self::Error>;
    /// Takes trial call `trial` of `provider`'s breaker at `generation` for this daemon
    /// unless another daemon holds it until after `now`; whether it did. An engine only one
    /// daemon uses has nobody to share a trial with: every claim wins (the breaker itself
    /// hands each trial out once).
    fn claim_probe(
        &mut self,
        _provider: &str,
        _generation: u64,
        _trial: u32,
        _now: UnixMillis,
        _until: UnixMillis,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
    /// Extends each lease of `leases` (message, fencing token) that is still held to at
    /// least `until`; returns the messages whose lease is not held any more. The default is
    /// for engines one daemon uses, whose leases matter only across a restart (which
    /// returns them all): nothing is extended — the token is the lease's expiry there, and
    /// nobody else takes a lease back — and a lease counts as held while its message is
    /// `sending` under that token.
    fn renew_leases(
        &mut self,
        leases: &[(MsgId, u64)],
        until: UnixMillis,
    ) -> Result<Vec<MsgId>, Self::Error> {
        let _ = until;
        let mut lost = Vec::new();
        for (id, fence) in leases {
            let held = match self.message(id)? {
                Some(r) => r.state == State::Sending && self.holds_lease(id, &r, *fence)?,
                None => false,
            };
            if !held {
                lost.push(*id);
            }
        }
        Ok(lost)
    }

    // The event log.
    /// Drops events older than `before` (an engine storing events in blocks keeps a
    /// block until all of it is older), at most `limit` blocks; returns how many events.
    fn prune_events(&mut self, before: UnixMillis, limit: usize) -> Result<u64, Self::Error>;

    /// What the store check found: every message against the index entries its state
    /// requires, and a recount. `counts` are the per-state counts as this transaction
    /// stands; the engine may audit the store as it was at the start of the batch instead,
    /// as long as [`Audit::stored`] and [`Audit::recount`] describe the same moment.
    fn audit(&mut self, counts: &Counts) -> Result<Audit, Self::Error>;

    /// Ends the batch: appends `events` to the log and stores `seq` and `counts`.
    fn finish(&mut self, events: &[Event], seq: u64, counts: &Counts) -> Result<(), Self::Error>;
}

/// What a batch produced: one result per op, the events appended, and whether the
/// schedule gained entries.
#[derive(Debug)]
pub struct Batch {
    pub results: Vec<OpResult>,
    pub cursor: Cursor,
}

/// Applies `ops` in order inside `txn`, starting from the stored `seq` and `counts`, and
/// finishes the transaction. The engine commits it (or, on an error, rolls it back).
pub fn apply_batch<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    ops: &[Op],
    seq: u64,
    counts: Counts,
) -> Result<Batch, T::Error> {
    let mut cur = Cursor::new(seq, counts);
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(apply(txn, now, op, &mut cur)?);
    }
    txn.finish(&cur.events, cur.seq, &cur.counts)?;
    Ok(Batch {
        results,
        cursor: cur,
    })
}

/// Running totals through a batch.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub seq: u64,
    pub counts: Counts,
    pub events: Vec<Event>,
    pub scheduled: bool,
}

impl Cursor {
    pub fn new(seq: u64, counts: Counts) -> Cursor {
        Cursor {
            seq,
            counts,
            events: Vec::new(),
            scheduled: false,
        }
    }

    /// Assigns the next `seq`; the engine writes the events with the batch.
    pub(super) fn emit(&mut self, mut event: Event) {
        self.seq += 1;
        event.seq = self.seq;
        self.events.push(event);
    }
}

pub(super) fn message_event(now: UnixMillis, id: &MsgId, r: &Record, kind: EventKind) -> Event {
    Event {
        seq: 0,
        at: now,
        message_id: Some(id_string(id)),
        kind,
        channel: Some(r.channel()),
        provider: r.provider.clone(),
        provider_message_id: r.provider_message_id.clone(),
        attempt: (r.attempt > 0).then_some(r.attempt),
        detail: None,
        tags: r.tags.clone(),
        from: None,
        to: None,
        body: None,
        rsvp: None,
    }
}

pub(super) fn with_detail(mut e: Event, detail: Option<String>) -> Event {
    e.detail = detail;
    e
}

/// Moves `r` to `to`, keeping counts, and records when it finished.
pub(super) fn transition<T: Txn>(
    txn: &mut T,
    cur: &mut Cursor,
    now: UnixMillis,
    id: &MsgId,
    r: &mut Record,
    to: State,
) -> Result<(), T::Error> {
    cur.counts.moved(Some(r.state), to);
    let was_terminal = r.state.is_terminal();
    r.state = to;
    r.updated_at = now;
    if to.is_terminal() && !was_terminal {
        txn.put_finished(now, id)?;
    }
    Ok(())
}

/// Puts a message that was being sent back in the queue, due now, with a `queued` event
/// saying why (start-up recovery, the store check).
pub(super) fn requeue_sending<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    id: &MsgId,
    r: &mut Record,
    cur: &mut Cursor,
    why: &str,
) -> Result<(), T::Error> {
    transition(txn, cur, now, id, r, State::Queued)?;
    r.lease_until = None;
    r.due_at = now;
    txn.schedule(r.lane, now, id)?;
    cur.scheduled = true;
    cur.emit(with_detail(
        message_event(now, id, r, EventKind::Queued),
        Some(why.to_string()),
    ));
    txn.put_message(id, r)
}

/// Applies one op.
pub fn apply<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    op: &Op,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    match op {
        Op::Accept(m) => accept(txn, now, m, cur),
        Op::Claim {
            limit,
            lease_ms,
            turn,
        } => claim(txn, now, *limit, *lease_ms, *turn, cur),
        Op::Complete(c) => complete(txn, now, c, cur),
        Op::Cancel(id) => cancel(txn, now, id, cur),
        Op::Requeue(id) => requeue(txn, now, id, cur),
        Op::Recover => recover(txn, now, cur),
        Op::Prune { before, limit } => prune(txn, *before, *limit, cur),
        Op::Status {
            provider,
            update,
            max_attempts,
        } => status(txn, now, provider, update, *max_attempts, cur),
        Op::Inbound {
            provider,
            inbound,
            rsvp,
        } => inbound_reply(txn, now, provider, inbound, rsvp.as_ref(), cur),
        Op::Note { kind, detail } => {
            cur.emit(Event {
                seq: 0,
                at: now,
                message_id: None,
                kind: *kind,
                channel: None,
                provider: None,
                provider_message_id: None,
                attempt: None,
                detail: Some(detail.clone()),
                tags: vec![],
                from: None,
                to: None,
                body: None,
                rsvp: None,
            });
            Ok(OpResult::Done)
        }
        Op::Check { repair } => {
            check::check(txn, now, *repair, cur).map(|r| OpResult::Checked(Box::new(r)))
        }
        Op::Suppress {
            channel,
            recipient,
            reason,
        } => operator_suppress(txn, now, *channel, recipient, reason),
        Op::Unsuppress { channel, recipient } => operator_unsuppress(txn, *channel, recipient),
        Op::ClaimProbe {
            provider,
            generation,
            trial,
            until,
        } => txn
            .claim_probe(provider, *generation, *trial, now, *until)
            .map(|won| OpResult::Probe { won }),
        Op::Renew { leases, until } => txn
            .renew_leases(leases, *until)
            .map(|lost| OpResult::Renewed { lost }),
    }
}

fn accept<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    m: &NewMessage,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    if let Some(key) = &m.idempotency_key {
        if let Some((existing, expires)) = txn.idempotency(key)?
            && expires > now
        {
            return Ok(match txn.message(&existing)? {
                Some(r) if !r.same_message(m, now) => OpResult::IdempotencyConflict { existing },
                _ => OpResult::Accepted {
                    id: existing,
                    duplicate: true,
                },
            });
        }
        txn.put_idempotency(key, &m.id, now + m.idempotency_window_ms)?;
    }
    let due = m.send_at.map_or(now, |s| s.max(now));
    let mut r = Record {
        to: m.to.clone(),
        content: m.content.clone(),
        tags: m.tags.clone(),
        idempotency_key: m.idempotency_key.clone(),
        send_at: m.send_at.filter(|&t| t > now),
        state: State::Queued,
        attempt: 0,
        created_at: now,
        updated_at: now,
        due_at: due,
        expires_at: due.saturating_add(m.ttl_ms),
        lease_until: None,
        provider: None,
        provider_message_id: None,
        last_error: None,
        lane: m.lane,
    };
    cur.counts.moved(None, State::Queued);
    let suppressed = match recipient_key(txn, r.channel(), &r.to) {
        Some(key) => txn.suppression(r.channel(), &key)?.is_some(),
        None => false,
    };
    // An override is recorded on the `queued` event only when it mattered.
    let overridden = suppressed && m.override_suppression;
    cur.emit(with_detail(
        message_event(now, &m.id, &r, EventKind::Queued),
        overridden.then(|| OVERRIDDEN.to_string()),
    ));
    if suppressed && !overridden {
        transition(txn, cur, now, &m.id, &mut r, State::Suppressed)?;
        r.last_error = Some("the recipient is on the suppression list".into());
        cur.emit(with_detail(
            message_event(now, &m.id, &r, EventKind::Suppressed),
            r.last_error.clone(),
        ));
    } else {
        txn.schedule(m.lane, due, &m.id)?;
        cur.scheduled = true;
    }
    txn.put_message(&m.id, &r)?;
    Ok(OpResult::Accepted {
        id: m.id,
        duplicate: false,
    })
}

/// The `queued` event's detail of a message sent with `override_suppression` to a
/// recipient on the suppression list.
pub const OVERRIDDEN: &str =
    "override_suppression: the recipient is on the suppression list; sent anyway";

/// Claims by priority lane: every due `critical` message first (up to `limit`), then the
/// rest of `limit` split `normal`:`bulk` 3:1 by [`bulk_share`]; a lane with fewer due
/// messages than its share leaves the remainder to the other. Counts are of schedule
/// entries, so a stale entry (dropped) can make a claim smaller than `limit`.
fn claim<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    limit: usize,
    lease_ms: u64,
    turn: u64,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    let mut out = Vec::new();
    let critical = claim_lane(txn, now, Lane::Critical, limit, lease_ms, cur, &mut out)?;
    let rest = limit - critical;
    let bulk = bulk_share(turn, rest);
    let normal = rest - bulk;
    let got_normal = claim_lane(txn, now, Lane::Normal, normal, lease_ms, cur, &mut out)?;
    let want_bulk = bulk + (normal - got_normal);
    let got_bulk = claim_lane(txn, now, Lane::Bulk, want_bulk, lease_ms, cur, &mut out)?;
    if got_normal == normal && got_bulk < bulk {
        claim_lane(
            txn,
            now,
            Lane::Normal,
            bulk - got_bulk,
            lease_ms,
            cur,
            &mut out,
        )?;
    }
    Ok(OpResult::Claimed(out))
}

/// Claims up to `limit` due messages of `lane` into `out`; returns how many schedule
/// entries it took (claimed, expired or stale).
fn claim_lane<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    lane: Lane,
    limit: usize,
    lease_ms: u64,
    cur: &mut Cursor,
    out: &mut Vec<Claimed>,
) -> Result<usize, T::Error> {
    if limit == 0 {
        return Ok(0);
    }
    let due = txn.due(lane, now, limit)?;
    let taken = due.len();
    for (due, id) in due {
        txn.unschedule(lane, due, &id)?;
        let Some(mut r) = txn.message(&id)? else {
            continue;
        };
        // A stale index entry (cancelled, or rescheduled at another time) is just dropped.
        if !matches!(r.state, State::Queued | State::Deferred) || r.due_at != due {
            continue;
        }
        if now >= r.expires_at {
            transition(txn, cur, now, &id, &mut r, State::Expired)?;
            r.last_error = Some("not delivered before retry.ttl ran out".into());
            cur.emit(with_detail(
                message_event(now, &id, &r, EventKind::Expired),
                r.last_error.clone(),
            ));
            txn.put_message(&id, &r)?;
            continue;
        }
        transition(txn, cur, now, &id, &mut r, State::Sending)?;
        r.attempt += 1;
        let until = now + lease_ms;
        r.lease_until = Some(until);
        let fence = txn.lease(&id, until)?;
        txn.put_message(&id, &r)?;
        let mut e = message_event(now, &id, &r, EventKind::Sending);
        e.provider = None;
        e.provider_message_id = None;
        cur.emit(e);
        // Every claim of a message gets a new fencing token (see `Txn::lease`).
        out.push(Claimed {
            id,
            fence,
            record: r,
        });
    }
    Ok(taken)
}

fn complete<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    c: &Completion,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    let mut stored_now = Vec::new();
    for (provider, record) in &c.breakers {
        let newer = txn.breaker(provider)?.is_none_or(|stored| {
            stored.plugin != record.plugin || stored.generation < record.generation
        });
        if newer {
            txn.put_breaker(provider, record)?;
            stored_now.push((provider, record.generation));
        }
    }
    breaker_events(now, c, &stored_now, cur);
    let Some(mut r) = txn.message(&c.id)? else {
        return Ok(OpResult::NotFound);
    };
    // A completion of another claim (an older attempt, a lease lost to recovery) is stale.
    if r.state != State::Sending
        || r.attempt != c.attempt
        || !txn.holds_lease(&c.id, &r, c.fence)?
    {
        return Ok(OpResult::WrongState(r.state));
    }
    txn.unlease(&c.id)?;
    r.lease_until = None;
    if !c.attempt_used {
        r.attempt -= 1;
    }
    if c.provider.is_some() {
        r.provider = c.provider.clone();
    }
    if let (Some(p), Some(pid)) = (&c.provider, &c.provider_message_id) {
        r.provider_message_id = Some(pid.clone());
        // Only webhooks look messages up by provider id.
        if c.index_provider_id {
            txn.put_provider_id(p, pid, &c.id)?;
        }
    }
    match c.state {
        State::Sent | State::Delivered => {
            r.last_error = None;
            transition(txn, cur, now, &c.id, &mut r, State::Sent)?;
            cur.emit(with_detail(
                message_event(now, &c.id, &r, EventKind::Sent),
                c.detail.clone(),
            ));
            if c.state == State::Delivered {
                transition(txn, cur, now, &c.id, &mut r, State::Delivered)?;
                cur.emit(message_event(now, &c.id, &r, EventKind::Delivered));
            }
            // Replies come by SMS and email; push has none.
            if r.channel() != Channel::Push
                && let Some(key) = recipient_key(txn, r.channel(), &r.to)
            {
                txn.put_latest(r.channel(), &key, &c.id)?;
            }
        }
        State::Deferred => {
            let due = c.due_at.unwrap_or(now);
            r.last_error = c.detail.clone();
            r.due_at = due;
            transition(txn, cur, now, &c.id, &mut r, State::Deferred)?;
            txn.schedule(r.lane, due, &c.id)?;
            cur.scheduled = true;
            let mut e = with_detail(
                message_event(now, &c.id, &r, EventKind::Deferred),
                c.detail.clone(),
            );
            e.provider = c.provider.clone();
            cur.emit(e);
        }
        s @ (State::Failed | State::Bounced | State::Dead | State::Expired) => {
            r.last_error = c.detail.clone();
            transition(txn, cur, now, &c.id, &mut r, s)?;
            if s == State::Dead {
                txn.put_dead(&c.id)?;
            }
            if c.suppress {
                let source = match s {
                    State::Bounced => SuppressionSource::Bounce,
                    State::Failed => SuppressionSource::Rejected,
                    _ => SuppressionSource::Provider,
                };
                let reason = c.detail.as_deref().unwrap_or("refused by the provider");
                suppress(txn, now, r.channel(), &r.to, reason, source)?;
            }
            cur.emit(with_detail(
                message_event(now, &c.id, &r, EventKind::from(s)),
                c.detail.clone(),
            ));
        }
        other => {
            return Err(StoreError::Corrupt(format!(
                "a delivery cannot complete in state {other}"
            ))
            .into());
        }
    }
    // Webhooks that arrived while the message was being sent, or before its provider id
    // was known, apply now.
    let mut held = take_held(txn, HeldFor::Message(&c.id))?;
    if let (Some(provider), Some(pid)) = (&c.provider, &c.provider_message_id) {
        held.extend(take_held(txn, HeldFor::ProviderId { provider, pid })?);
    }
    held.sort_by_key(|(at, _)| *at);
    let provider = c.provider.as_deref().unwrap_or_default();
    for (_, update) in held {
        apply_update(
            txn,
            now,
            &c.id,
            &mut r,
            provider,
            &update,
            c.max_attempts,
            cur,
        )?;
    }
    txn.put_message(&c.id, &r)?;
    Ok(OpResult::Done)
}

fn take_held<T: Txn>(txn: &mut T, key: HeldFor<'_>) -> Result<HeldUpdates, T::Error> {
    let held = txn.held(key)?;
    if !held.is_empty() {
        txn.set_held(key, &[])?;
    }
    Ok(held)
}

/// Emits a completion's breaker events: a half-open trial or a pause always, an opening or closing
/// only when its record was the newest (a stale transition from a concurrent delivery
/// would report a state the breaker is no longer in).
fn breaker_events(
    now: UnixMillis,
    c: &Completion,
    stored_now: &[(&String, u64)],
    cur: &mut Cursor,
) {
    for b in &c.breaker_events {
        let current = matches!(
            b.kind,
            EventKind::ProviderHalfOpen | EventKind::ProviderPaused
        ) || stored_now
            .iter()
            .any(|(p, g)| **p == b.provider && *g == b.generation);
        if current {
            cur.emit(Event {
                seq: 0,
                at: now,
                message_id: None,
                kind: b.kind,
                channel: None,
                provider: Some(b.provider.clone()),
                provider_message_id: None,
                attempt: None,
                detail: Some(b.reason.clone()),
                tags: vec![],
                from: None,
                to: None,
                body: None,
                rsvp: None,
            });
        }
    }
}

fn update_state(kind: UpdateKind) -> Option<State> {
    match kind {
        UpdateKind::Sent => Some(State::Sent),
        UpdateKind::Delivered => Some(State::Delivered),
        UpdateKind::Bounced => Some(State::Bounced),
        UpdateKind::Complained => Some(State::Complained),
        // A resend that cannot be granted fails the message.
        UpdateKind::Failed | UpdateKind::Resend { .. } => Some(State::Failed),
        UpdateKind::Deferred | UpdateKind::Opened | UpdateKind::Clicked => None,
    }
}

/// Applies a provider status update to a record that is not being sent. Forward only,
/// with one exception: a resend request ([`UpdateKind::Resend`]) about a `sent` message
/// puts it back in the schedule as `deferred`, when `max_attempts` and its time-to-live
/// allow another attempt (otherwise it fails the message).
#[allow(clippy::too_many_arguments)]
fn apply_update<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    id: &MsgId,
    r: &mut Record,
    provider: &str,
    u: &StatusUpdate,
    max_attempts: u32,
    cur: &mut Cursor,
) -> Result<bool, T::Error> {
    let mut event = message_event(now, id, r, EventKind::Opened);
    event.provider = Some(provider.to_string());
    event.provider_message_id = u
        .provider_message_id
        .clone()
        .or_else(|| r.provider_message_id.clone());
    event.detail = u.detail.clone();
    // A resend request is about the attempt that got the provider id it names; one about
    // an earlier attempt (found by Herald's id) is stale.
    let resendable = r.state == State::Sent
        && (u.provider_message_id.is_none()
            || r.provider_message_id.is_none()
            || u.provider_message_id == r.provider_message_id);
    let changed = match (u.kind, update_state(u.kind)) {
        (UpdateKind::Opened, _) => {
            cur.emit(event);
            true
        }
        (UpdateKind::Clicked, _) => {
            event.kind = EventKind::Clicked;
            cur.emit(event);
            true
        }
        // A provider's "delivery delayed": reported, the state stays (a late report about
        // a message that already finished says nothing new).
        (UpdateKind::Deferred, _) if !r.state.is_terminal() => {
            event.kind = EventKind::Delayed;
            cur.emit(event);
            true
        }
        // Only a message the provider accepted can be sent again: a later report (it was
        // delivered after all, or failed) wins, and a resend already granted is not
        // granted twice.
        (UpdateKind::Resend { after_ms }, _)
            if resendable
                && r.attempt < max_attempts
                && now.saturating_add(after_ms) < r.expires_at =>
        {
            let due = now.saturating_add(after_ms);
            let why = u
                .detail
                .clone()
                .unwrap_or_else(|| format!("{provider} reported a temporary failure"));
            let detail = format!(
                "{why}; sending again after {after_ms} ms (attempt {} of {max_attempts})",
                r.attempt + 1
            );
            // Webhooks about the attempt that failed must not reach the next one.
            if let (Some(p), Some(pid)) = (&r.provider, &r.provider_message_id) {
                txn.remove_provider_id(p, pid)?;
            }
            transition(txn, cur, now, id, r, State::Deferred)?;
            r.due_at = due;
            r.last_error = Some(detail.clone());
            txn.schedule(r.lane, due, id)?;
            cur.scheduled = true;
            event.kind = EventKind::Deferred;
            event.detail = Some(detail);
            cur.emit(event);
            true
        }
        (UpdateKind::Resend { .. }, _) if resendable => {
            let why = if r.attempt >= max_attempts {
                format!("no attempt left (retry.max_attempts = {max_attempts})")
            } else {
                "the time-to-live (retry.ttl) runs out first".to_string()
            };
            let detail = format!(
                "{}; not sent again: {why}",
                u.detail.as_deref().unwrap_or("a temporary failure")
            );
            transition(txn, cur, now, id, r, State::Failed)?;
            r.last_error = Some(detail.clone());
            event.kind = EventKind::Failed;
            event.detail = Some(detail);
            cur.emit(event);
            true
        }
        // A resend request about a message in any other state changes nothing.
        (UpdateKind::Resend { .. }, _) => false,
        (_, Some(state)) if state.rank() > r.state.rank() => {
            transition(txn, cur, now, id, r, state)?;
            if matches!(state, State::Bounced | State::Failed | State::Complained) {
                r.last_error = u
                    .detail
                    .clone()
                    .or_else(|| Some(format!("{provider} reported {state}")));
            }
            event.kind = EventKind::from(state);
            cur.emit(event);
            true
        }
        // Anything that would move the state backwards.
        _ => false,
    };
    if u.suppress {
        let source = match u.kind {
            UpdateKind::Bounced => SuppressionSource::Bounce,
            UpdateKind::Complained => SuppressionSource::Complaint,
            UpdateKind::Failed => SuppressionSource::Rejected,
            _ => SuppressionSource::Provider,
        };
        let reason = u.detail.as_deref().unwrap_or("reported by the provider");
        suppress(txn, now, r.channel(), &r.to, reason, source)?;
    }
    Ok(changed)
}

fn hold<T: Txn>(
    txn: &mut T,
    key: HeldFor<'_>,
    now: UnixMillis,
    u: &StatusUpdate,
) -> Result<OpResult, T::Error> {
    let mut held = txn.held(key)?;
    held.push((now, u.clone()));
    txn.set_held(key, &held)?;
    Ok(OpResult::Held)
}

fn status<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    provider: &str,
    u: &StatusUpdate,
    max_attempts: u32,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    if let Some(eid) = &u.event_id
        && txn.seen(provider, &format!("e:{eid}"), now)?
    {
        return Ok(OpResult::Ignored);
    }
    let by_herald_id = u.message_id.as_deref().and_then(super::parse_id);
    let by_provider_id = match &u.provider_message_id {
        Some(pid) => txn.by_provider_id(provider, pid)?,
        None => None,
    };
    let found = match by_herald_id.or(by_provider_id) {
        Some(id) => txn.message(&id)?.map(|r| (id, r)),
        None => None,
    };
    let Some((id, mut r)) = found else {
        // Not known yet (the webhook outran our own bookkeeping): hold it.
        return match (&u.provider_message_id, by_herald_id) {
            (Some(pid), _) => hold(txn, HeldFor::ProviderId { provider, pid }, now, u),
            (None, Some(id)) => hold(txn, HeldFor::Message(&id), now, u),
            (None, None) => Ok(OpResult::Ignored),
        };
    };
    if r.state == State::Sending {
        return hold(txn, HeldFor::Message(&id), now, u);
    }
    let changed = apply_update(txn, now, &id, &mut r, provider, u, max_attempts, cur)?;
    txn.put_message(&id, &r)?;
    Ok(if changed {
        OpResult::Done
    } else {
        OpResult::Ignored
    })
}

/// The canonical key of `raw` under the store's rules; `None` for a spelling that is not
/// a recipient of `channel` (an inbound sender in an unexpected form: no message can have
/// been sent to it, so it matches nothing).
fn recipient_key<T: Txn>(txn: &T, channel: Channel, raw: &str) -> Option<RecipientKey> {
    recipients::key(channel, raw, &txn.recipient_rules())
}

/// Puts `raw` on the suppression list, unless it is already there (the first entry says
/// since when and why).
fn suppress<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    channel: Channel,
    raw: &str,
    reason: &str,
    source: SuppressionSource,
) -> Result<bool, T::Error> {
    let Some(key) = recipient_key(txn, channel, raw) else {
        return Ok(false);
    };
    if txn.suppression(channel, &key)?.is_none() {
        let entry = Suppression {
            recipient: raw.to_string(),
            reason: reason.to_string(),
            source,
            at: now,
        };
        txn.suppress(channel, &key, &entry)?;
    }
    Ok(true)
}

/// `Op::Suppress`: an operator's entry, unless the recipient is already on the list.
fn operator_suppress<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    channel: Channel,
    raw: &str,
    reason: &str,
) -> Result<OpResult, T::Error> {
    let Some(key) = recipient_key(txn, channel, raw) else {
        return Ok(OpResult::Suppression {
            entry: None,
            changed: false,
        });
    };
    let (entry, changed) = match txn.suppression(channel, &key)? {
        Some(existing) => (existing, false),
        None => {
            let entry = Suppression {
                recipient: raw.to_string(),
                reason: reason.to_string(),
                source: SuppressionSource::Operator,
                at: now,
            };
            txn.suppress(channel, &key, &entry)?;
            (entry, true)
        }
    };
    Ok(OpResult::Suppression {
        entry: Some(SuppressionEntry {
            channel,
            key: key.into_string(),
            entry,
        }),
        changed,
    })
}

/// `Op::Unsuppress`: removes the entry of any spelling of the recipient.
fn operator_unsuppress<T: Txn>(
    txn: &mut T,
    channel: Channel,
    raw: &str,
) -> Result<OpResult, T::Error> {
    let Some(key) = recipient_key(txn, channel, raw) else {
        return Ok(OpResult::Suppression {
            entry: None,
            changed: false,
        });
    };
    let Some(entry) = txn.suppression(channel, &key)? else {
        return Ok(OpResult::Suppression {
            entry: None,
            changed: false,
        });
    };
    txn.unsuppress(channel, &key)?;
    Ok(OpResult::Suppression {
        entry: Some(SuppressionEntry {
            channel,
            key: key.into_string(),
            entry,
        }),
        changed: true,
    })
}

fn inbound_reply<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    provider: &str,
    m: &InboundMessage,
    rsvp: Option<&Rsvp>,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    if let Some(pid) = &m.provider_message_id
        && txn.seen(provider, &format!("i:{pid}"), now)?
    {
        return Ok(OpResult::Ignored);
    }
    let key = recipient_key(txn, m.channel, &m.from);
    let latest = match &key {
        Some(key) => txn.latest(m.channel, key)?,
        None => None,
    };
    let latest = match latest {
        Some(id) => txn.message(&id)?.map(|r| (id, r)),
        None => None,
    };
    let detail = match (m.opt_out, &key) {
        (Some(true), Some(_)) => {
            let reason = "the recipient opted out";
            suppress(
                txn,
                now,
                m.channel,
                &m.from,
                reason,
                SuppressionSource::OptOut,
            )?;
            Some("opt-out: the sender is now on the suppression list".to_string())
        }
        (Some(false), Some(key)) => {
            txn.unsuppress(m.channel, key)?;
            Some("opt-in: the sender is off the suppression list".to_string())
        }
        (Some(_), None) => Some(format!(
            "opt-out or opt-in from {:?}, which is not a {} recipient: nothing to change",
            m.from, m.channel
        )),
        (None, _) => None,
    };
    // A STOP is never an answer, whatever the caller read.
    let rsvp = rsvp.filter(|_| m.opt_out != Some(true)).cloned();
    cur.emit(Event {
        seq: 0,
        at: now,
        message_id: latest.as_ref().map(|(id, _)| id_string(id)),
        kind: EventKind::Inbound,
        channel: Some(m.channel),
        provider: Some(provider.to_string()),
        provider_message_id: m.provider_message_id.clone(),
        attempt: None,
        detail,
        tags: latest.map(|(_, r)| r.tags).unwrap_or_default(),
        from: Some(m.from.clone()),
        to: Some(m.to.clone()),
        body: Some(m.body.clone()),
        rsvp,
    });
    Ok(OpResult::Done)
}

fn cancel<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    id: &MsgId,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    let Some(mut r) = txn.message(id)? else {
        return Ok(OpResult::NotFound);
    };
    match r.state {
        State::Queued | State::Deferred => {
            txn.unschedule(r.lane, r.due_at, id)?;
            transition(txn, cur, now, id, &mut r, State::Cancelled)?;
            cur.emit(message_event(now, id, &r, EventKind::Cancelled));
            txn.put_message(id, &r)?;
            Ok(OpResult::Done)
        }
        State::Cancelled => Ok(OpResult::Done),
        other => Ok(OpResult::WrongState(other)),
    }
}

fn requeue<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    id: &MsgId,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    let Some(mut r) = txn.message(id)? else {
        return Ok(OpResult::NotFound);
    };
    if r.state != State::Dead {
        return Ok(OpResult::WrongState(r.state));
    }
    txn.remove_dead(id)?;
    transition(txn, cur, now, id, &mut r, State::Queued)?;
    r.attempt = 0;
    r.due_at = now;
    // A fresh time-to-live: the operator decided this message is still wanted.
    r.expires_at = now.saturating_add(r.expires_at.saturating_sub(r.created_at));
    txn.schedule(r.lane, now, id)?;
    cur.scheduled = true;
    cur.emit(with_detail(
        message_event(now, id, &r, EventKind::Queued),
        Some("requeued from the dead letters".into()),
    ));
    txn.put_message(id, &r)?;
    Ok(OpResult::Done)
}

fn recover<T: Txn>(txn: &mut T, now: UnixMillis, cur: &mut Cursor) -> Result<OpResult, T::Error> {
    let mut n = 0;
    for id in txn.leased()? {
        txn.unlease(&id)?;
        let Some(mut r) = txn.message(&id)? else {
            continue;
        };
        if r.state != State::Sending {
            continue;
        }
        requeue_sending(
            txn,
            now,
            &id,
            &mut r,
            cur,
            "re-queued: the daemon stopped while this message was being sent",
        )?;
        n += 1;
    }
    Ok(OpResult::Recovered(n))
}

fn prune<T: Txn>(
    txn: &mut T,
    before: UnixMillis,
    limit: usize,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    let mut messages = 0;
    for (at, id) in txn.finished_before(before, limit)? {
        txn.remove_finished(at, &id)?;
        let Some(r) = txn.message(&id)? else {
            continue;
        };
        // A message requeued from the dead letters left its old entry behind.
        if !r.state.is_terminal() {
            continue;
        }
        if let Some(key) = &r.idempotency_key
            && txn.idempotency(key)?.is_some_and(|(owner, _)| owner == id)
        {
            txn.remove_idempotency(key)?;
        }
        if let (Some(p), Some(pid)) = (&r.provider, &r.provider_message_id) {
            txn.remove_provider_id(p, pid)?;
        }
        if r.state == State::Dead {
            txn.remove_dead(&id)?;
        }
        if let Some(key) = recipient_key(txn, r.channel(), &r.to)
            && txn.latest(r.channel(), &key)? == Some(id)
        {
            txn.remove_latest(r.channel(), &key)?;
        }
        txn.remove_message(&id)?;
        let i = Counts::index(r.state);
        cur.counts.0[i] = cur.counts.0[i].saturating_sub(1);
        messages += 1;
    }
    let events = txn.prune_events(before, limit)?;
    for key in txn.seen_before(before, limit)? {
        txn.unsee(&key)?;
    }
    for key in txn.held_before(before, limit)? {
        let key = key.as_held_for();
        let mut held = txn.held(key)?;
        held.retain(|(at, _)| *at >= before);
        txn.set_held(key, &held)?;
    }
    Ok(OpResult::Pruned { messages, events })
}
