//! The message state machine, independent of the storage engine: what each [`Op`] reads
//! and writes, which states it moves between, and which events it emits.
//!
//! A backend implements the primitive [`Txn`] operations inside its transaction and calls
//! [`apply`] for each op of a batch. Sequence numbers and per-state counts are threaded
//! through a [`Cursor`] so the backend can persist them in the same transaction.

use std::collections::VecDeque;

use herald_plugin_api::{
    Channel, Event, EventKind, InboundMessage, State, StatusUpdate, UnixMillis, UpdateKind,
};

use super::{
    BreakerRecord, Claimed, Completion, Counts, MsgId, NewMessage, Op, OpResult, Record,
    StoreError, id_string,
};

/// Primitive operations a backend offers inside one transaction.
pub trait Txn {
    type Error: From<StoreError>;

    fn get_record(&self, id: &MsgId) -> Result<Option<Record>, Self::Error>;
    fn put_record(&self, id: &MsgId, record: &Record) -> Result<(), Self::Error>;
    fn schedule(&self, due: UnixMillis, id: &MsgId) -> Result<(), Self::Error>;
    fn unschedule(&self, due: UnixMillis, id: &MsgId) -> Result<(), Self::Error>;
    fn lease(&self, id: &MsgId, until: UnixMillis) -> Result<(), Self::Error>;
    fn unlease(&self, id: &MsgId) -> Result<(), Self::Error>;
    /// The message id and expiry stored for an idempotency key.
    fn idem_get(&self, key: &str) -> Result<Option<(MsgId, UnixMillis)>, Self::Error>;
    fn idem_put(&self, key: &str, id: &MsgId, expires: UnixMillis) -> Result<(), Self::Error>;
    fn provider_id_put(&self, provider: &str, pid: &str, id: &MsgId) -> Result<(), Self::Error>;
    fn dead_put(&self, id: &MsgId) -> Result<(), Self::Error>;
    fn dead_remove(&self, id: &MsgId) -> Result<(), Self::Error>;
    /// Index of finished messages by finish time, for retention.
    fn finished(&self, at: UnixMillis, id: &MsgId) -> Result<(), Self::Error>;
    fn is_suppressed(&self, channel: Channel, to: &str) -> Result<bool, Self::Error>;
    fn suppress(&self, channel: Channel, to: &str, reason: &str) -> Result<(), Self::Error>;
    /// Retention removals.
    fn remove_record(&self, id: &MsgId) -> Result<(), Self::Error>;
    fn idem_remove(&self, key: &str) -> Result<(), Self::Error>;
    fn provider_id_remove(&self, provider: &str, pid: &str) -> Result<(), Self::Error>;
    fn unfinished(&self, at: UnixMillis, id: &MsgId) -> Result<(), Self::Error>;
    /// Removes the block of events whose first `seq` is `first`.
    fn remove_event_block(&self, first: u64) -> Result<(), Self::Error>;
    /// Webhooks: provider id → message id.
    fn provider_id_get(&self, provider: &str, pid: &str) -> Result<Option<MsgId>, Self::Error>;
    /// Updates held for a key (`held_key_*`), with their arrival times.
    fn held_get(&self, key: &[u8]) -> Result<Vec<(UnixMillis, StatusUpdate)>, Self::Error>;
    fn held_put(
        &self,
        key: &[u8],
        updates: &[(UnixMillis, StatusUpdate)],
    ) -> Result<(), Self::Error>;
    fn held_remove(&self, key: &[u8]) -> Result<(), Self::Error>;
    /// The latest message sent to a recipient (for tagging replies).
    fn latest_get(&self, channel: Channel, to: &str) -> Result<Option<MsgId>, Self::Error>;
    fn latest_put(&self, channel: Channel, to: &str, id: &MsgId) -> Result<(), Self::Error>;
    fn latest_remove(&self, channel: Channel, to: &str) -> Result<(), Self::Error>;
    fn unsuppress(&self, channel: Channel, to: &str) -> Result<(), Self::Error>;
    /// Records a provider event key; returns true if it was already recorded.
    fn seen(&self, provider: &str, key: &str, now: UnixMillis) -> Result<bool, Self::Error>;
    fn unsee(&self, at: UnixMillis, provider_key: &[u8]) -> Result<(), Self::Error>;
    fn breaker_get(&self, provider: &str) -> Result<Option<BreakerRecord>, Self::Error>;
    fn breaker_put(&self, provider: &str, record: &BreakerRecord) -> Result<(), Self::Error>;
}

/// Held-update key for a message id.
pub fn held_key_message(id: &MsgId) -> Vec<u8> {
    let mut k = vec![b'm'];
    k.extend_from_slice(id);
    k
}

/// Held-update key for a provider's message id.
pub fn held_key_provider(provider: &str, pid: &str) -> Vec<u8> {
    let mut k = vec![b'p'];
    k.extend_from_slice(provider.as_bytes());
    k.push(0);
    k.extend_from_slice(pid.as_bytes());
    k
}

/// Reads a backend does before its transaction (range scans), consumed by the ops.
#[derive(Debug, Default)]
pub struct PreRead {
    /// Due schedule entries, oldest first.
    pub due: VecDeque<(UnixMillis, MsgId)>,
    /// Leased message ids (for `Recover`).
    pub leased: Vec<MsgId>,
    /// Finished messages older than the retention cut-off (for `Prune`).
    pub finished: Vec<(UnixMillis, MsgId)>,
    /// Event blocks (by first seq) wholly older than the retention cut-off (for `Prune`).
    pub old_events: Vec<u64>,
    /// How many events those blocks hold.
    pub old_event_count: u64,
    /// Whether any update is held (or may be held by this batch); when not, completions
    /// skip the lookups.
    pub held_possible: bool,
    /// Whether the suppression list may hold anyone this batch; when not, accepts skip
    /// the lookup.
    pub suppression_possible: bool,
    /// Webhook de-duplication keys older than the cut-off: (at, provider\0key).
    pub old_seen: Vec<(UnixMillis, Vec<u8>)>,
    /// Held-update keys with anything older than the cut-off.
    pub old_held: Vec<Vec<u8>>,
    /// The retention cut-off of a `Prune` in this batch.
    pub prune_before: UnixMillis,
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

    /// Assigns the next `seq`. The backend writes `events` to its log with the batch.
    fn emit<T: Txn>(&mut self, _txn: &T, mut event: Event) -> Result<(), T::Error> {
        self.seq += 1;
        event.seq = self.seq;
        self.events.push(event);
        Ok(())
    }
}

fn message_event(now: UnixMillis, id: &MsgId, r: &Record, kind: EventKind) -> Event {
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
    }
}

fn with_detail(mut e: Event, detail: Option<String>) -> Event {
    e.detail = detail;
    e
}

/// Moves `r` to `to`, keeping counts, and records when it finished.
fn transition<T: Txn>(
    txn: &T,
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
        txn.finished(now, id)?;
    }
    Ok(())
}

/// Applies one op.
pub fn apply<T: Txn>(
    txn: &T,
    now: UnixMillis,
    op: &Op,
    cur: &mut Cursor,
    pre: &mut PreRead,
) -> Result<OpResult, T::Error> {
    match op {
        Op::Accept(m) => accept(txn, now, m, cur, pre.suppression_possible),
        Op::Claim { limit, lease_ms } => claim(txn, now, *limit, *lease_ms, cur, pre),
        Op::Complete(c) => complete(txn, now, c, cur, pre.held_possible),
        Op::Cancel(id) => cancel(txn, now, id, cur),
        Op::Requeue(id) => requeue(txn, now, id, cur),
        Op::Recover => recover(txn, now, cur, pre),
        Op::Prune { .. } => prune(txn, cur, pre),
        Op::Status { provider, update } => status(txn, now, provider, update, cur),
        Op::Inbound { provider, inbound } => inbound_reply(txn, now, provider, inbound, cur),
        Op::Note { kind, detail } => {
            cur.emit(
                txn,
                Event {
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
                },
            )?;
            Ok(OpResult::Done)
        }
    }
}

fn accept<T: Txn>(
    txn: &T,
    now: UnixMillis,
    m: &NewMessage,
    cur: &mut Cursor,
    suppression_possible: bool,
) -> Result<OpResult, T::Error> {
    if let Some(key) = &m.idempotency_key {
        if let Some((existing, expires)) = txn.idem_get(key)?
            && expires > now
        {
            return Ok(match txn.get_record(&existing)? {
                Some(r) if !r.same_message(m) => OpResult::IdempotencyConflict { existing },
                _ => OpResult::Accepted {
                    id: existing,
                    duplicate: true,
                },
            });
        }
        txn.idem_put(key, &m.id, now + m.idempotency_window_ms)?;
    }
    let due = m.send_at.map_or(now, |s| s.max(now));
    let mut r = Record {
        to: m.to.clone(),
        content: m.content.clone(),
        tags: m.tags.clone(),
        idempotency_key: m.idempotency_key.clone(),
        send_at: m.send_at,
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
    };
    cur.counts.moved(None, State::Queued);
    cur.emit(txn, message_event(now, &m.id, &r, EventKind::Queued))?;
    if suppression_possible && txn.is_suppressed(r.channel(), &r.to)? {
        transition(txn, cur, now, &m.id, &mut r, State::Suppressed)?;
        r.last_error = Some("the recipient is on the suppression list".into());
        cur.emit(
            txn,
            with_detail(
                message_event(now, &m.id, &r, EventKind::Suppressed),
                r.last_error.clone(),
            ),
        )?;
    } else {
        txn.schedule(due, &m.id)?;
        cur.scheduled = true;
    }
    txn.put_record(&m.id, &r)?;
    Ok(OpResult::Accepted {
        id: m.id,
        duplicate: false,
    })
}

fn claim<T: Txn>(
    txn: &T,
    now: UnixMillis,
    limit: usize,
    lease_ms: u64,
    cur: &mut Cursor,
    pre: &mut PreRead,
) -> Result<OpResult, T::Error> {
    let mut out = Vec::new();
    while out.len() < limit {
        let Some((due, id)) = pre.due.pop_front() else {
            break;
        };
        txn.unschedule(due, &id)?;
        let Some(mut r) = txn.get_record(&id)? else {
            continue;
        };
        // A stale index entry (cancelled, or rescheduled at another time) is just dropped.
        if !matches!(r.state, State::Queued | State::Deferred) || r.due_at != due {
            continue;
        }
        if now >= r.expires_at {
            transition(txn, cur, now, &id, &mut r, State::Expired)?;
            r.last_error = Some("not delivered before retry.ttl ran out".into());
            cur.emit(
                txn,
                with_detail(
                    message_event(now, &id, &r, EventKind::Expired),
                    r.last_error.clone(),
                ),
            )?;
            txn.put_record(&id, &r)?;
            continue;
        }
        transition(txn, cur, now, &id, &mut r, State::Sending)?;
        r.attempt += 1;
        let until = now + lease_ms;
        r.lease_until = Some(until);
        txn.lease(&id, until)?;
        txn.put_record(&id, &r)?;
        let mut e = message_event(now, &id, &r, EventKind::Sending);
        e.provider = None;
        e.provider_message_id = None;
        cur.emit(txn, e)?;
        out.push(Claimed { id, record: r });
    }
    Ok(OpResult::Claimed(out))
}

fn complete<T: Txn>(
    txn: &T,
    now: UnixMillis,
    c: &Completion,
    cur: &mut Cursor,
    held_possible: bool,
) -> Result<OpResult, T::Error> {
    let mut stored_now = Vec::new();
    for (provider, record) in &c.breakers {
        let newer = txn.breaker_get(provider)?.is_none_or(|stored| {
            stored.plugin != record.plugin || stored.generation < record.generation
        });
        if newer {
            txn.breaker_put(provider, record)?;
            stored_now.push((provider, record.generation));
        }
    }
    breaker_events(txn, now, c, &stored_now, cur)?;
    let Some(mut r) = txn.get_record(&c.id)? else {
        return Ok(OpResult::NotFound);
    };
    if r.state != State::Sending || r.attempt != c.attempt {
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
            txn.provider_id_put(p, pid, &c.id)?;
        }
    }
    match c.state {
        State::Sent | State::Delivered => {
            r.last_error = None;
            transition(txn, cur, now, &c.id, &mut r, State::Sent)?;
            cur.emit(
                txn,
                with_detail(
                    message_event(now, &c.id, &r, EventKind::Sent),
                    c.detail.clone(),
                ),
            )?;
            if c.state == State::Delivered {
                transition(txn, cur, now, &c.id, &mut r, State::Delivered)?;
                cur.emit(txn, message_event(now, &c.id, &r, EventKind::Delivered))?;
            }
            // Replies come by SMS and email; push has none.
            if r.channel() != Channel::Push {
                txn.latest_put(r.channel(), &r.to, &c.id)?;
            }
        }
        State::Deferred => {
            let due = c.due_at.unwrap_or(now);
            r.last_error = c.detail.clone();
            r.due_at = due;
            transition(txn, cur, now, &c.id, &mut r, State::Deferred)?;
            txn.schedule(due, &c.id)?;
            cur.scheduled = true;
            let mut e = with_detail(
                message_event(now, &c.id, &r, EventKind::Deferred),
                c.detail.clone(),
            );
            e.provider = c.provider.clone();
            cur.emit(txn, e)?;
        }
        s @ (State::Failed | State::Bounced | State::Dead | State::Expired) => {
            r.last_error = c.detail.clone();
            transition(txn, cur, now, &c.id, &mut r, s)?;
            if s == State::Dead {
                txn.dead_put(&c.id)?;
            }
            if c.suppress {
                txn.suppress(r.channel(), &r.to, c.detail.as_deref().unwrap_or(""))?;
            }
            cur.emit(
                txn,
                with_detail(
                    message_event(now, &c.id, &r, EventKind::from(s)),
                    c.detail.clone(),
                ),
            )?;
        }
        other => {
            return Err(StoreError::Corrupt(format!(
                "a delivery cannot complete in state {other}"
            ))
            .into());
        }
    }
    // Webhooks that arrived while the message was being sent apply now.
    let mut held = Vec::new();
    if held_possible {
        let mut keys = vec![held_key_message(&c.id)];
        if let (Some(p), Some(pid)) = (&c.provider, &c.provider_message_id) {
            keys.push(held_key_provider(p, pid));
        }
        for key in keys {
            let found = txn.held_get(&key)?;
            if !found.is_empty() {
                txn.held_remove(&key)?;
                held.extend(found);
            }
        }
    }
    held.sort_by_key(|(at, _)| *at);
    let provider = c.provider.clone().unwrap_or_default();
    for (_, update) in held {
        apply_update(txn, now, &c.id, &mut r, &provider, &update, cur)?;
    }
    txn.put_record(&c.id, &r)?;
    Ok(OpResult::Done)
}

/// Emits a completion's breaker events: a half-open trial always, an opening or closing
/// only when its record was the newest (a stale transition from a concurrent delivery
/// would report a state the breaker is no longer in).
fn breaker_events<T: Txn>(
    txn: &T,
    now: UnixMillis,
    c: &Completion,
    stored_now: &[(&String, u64)],
    cur: &mut Cursor,
) -> Result<(), T::Error> {
    for b in &c.breaker_events {
        let current = b.kind == EventKind::ProviderHalfOpen
            || stored_now
                .iter()
                .any(|(p, g)| **p == b.provider && *g == b.generation);
        if current {
            cur.emit(
                txn,
                Event {
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
                },
            )?;
        }
    }
    Ok(())
}

fn update_state(kind: UpdateKind) -> Option<State> {
    match kind {
        UpdateKind::Sent => Some(State::Sent),
        UpdateKind::Delivered => Some(State::Delivered),
        UpdateKind::Bounced => Some(State::Bounced),
        UpdateKind::Complained => Some(State::Complained),
        UpdateKind::Failed => Some(State::Failed),
        UpdateKind::Deferred | UpdateKind::Opened | UpdateKind::Clicked => None,
    }
}

/// Applies a provider status update to a record that is not being sent. Forward only.
fn apply_update<T: Txn>(
    txn: &T,
    now: UnixMillis,
    id: &MsgId,
    r: &mut Record,
    provider: &str,
    u: &StatusUpdate,
    cur: &mut Cursor,
) -> Result<bool, T::Error> {
    let mut event = message_event(now, id, r, EventKind::Opened);
    event.provider = Some(provider.to_string());
    event.provider_message_id = u
        .provider_message_id
        .clone()
        .or_else(|| r.provider_message_id.clone());
    event.detail = u.detail.clone();
    let changed = match (u.kind, update_state(u.kind)) {
        (UpdateKind::Opened, _) => {
            cur.emit(txn, event)?;
            true
        }
        (UpdateKind::Clicked, _) => {
            event.kind = EventKind::Clicked;
            cur.emit(txn, event)?;
            true
        }
        // A provider's "delivery delayed": reported, the state stays (a late report about
        // a message that already finished says nothing new).
        (UpdateKind::Deferred, _) if !r.state.is_terminal() => {
            event.kind = EventKind::Delayed;
            cur.emit(txn, event)?;
            true
        }
        (_, Some(state)) if state.rank() > r.state.rank() => {
            transition(txn, cur, now, id, r, state)?;
            if matches!(state, State::Bounced | State::Failed | State::Complained) {
                r.last_error = u
                    .detail
                    .clone()
                    .or_else(|| Some(format!("{provider} reported {state}")));
            }
            event.kind = EventKind::from(state);
            cur.emit(txn, event)?;
            true
        }
        // Anything that would move the state backwards.
        _ => false,
    };
    if u.suppress {
        txn.suppress(
            r.channel(),
            &r.to,
            u.detail.as_deref().unwrap_or("reported by the provider"),
        )?;
    }
    Ok(changed)
}

fn hold<T: Txn>(
    txn: &T,
    key: &[u8],
    now: UnixMillis,
    u: &StatusUpdate,
) -> Result<OpResult, T::Error> {
    let mut held = txn.held_get(key)?;
    held.push((now, u.clone()));
    txn.held_put(key, &held)?;
    Ok(OpResult::Held)
}

fn status<T: Txn>(
    txn: &T,
    now: UnixMillis,
    provider: &str,
    u: &StatusUpdate,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    if let Some(eid) = &u.event_id
        && txn.seen(provider, &format!("e:{eid}"), now)?
    {
        return Ok(OpResult::Ignored);
    }
    let by_herald_id = u.message_id.as_deref().and_then(super::parse_id);
    let by_provider_id = match &u.provider_message_id {
        Some(pid) => txn.provider_id_get(provider, pid)?,
        None => None,
    };
    let found = match by_herald_id.or(by_provider_id) {
        Some(id) => txn.get_record(&id)?.map(|r| (id, r)),
        None => None,
    };
    let Some((id, mut r)) = found else {
        // Not known yet (the webhook outran our own bookkeeping): hold it.
        return match (&u.provider_message_id, by_herald_id) {
            (Some(pid), _) => hold(txn, &held_key_provider(provider, pid), now, u),
            (None, Some(id)) => hold(txn, &held_key_message(&id), now, u),
            (None, None) => Ok(OpResult::Ignored),
        };
    };
    if r.state == State::Sending {
        return hold(txn, &held_key_message(&id), now, u);
    }
    let changed = apply_update(txn, now, &id, &mut r, provider, u, cur)?;
    txn.put_record(&id, &r)?;
    Ok(if changed {
        OpResult::Done
    } else {
        OpResult::Ignored
    })
}

fn inbound_reply<T: Txn>(
    txn: &T,
    now: UnixMillis,
    provider: &str,
    m: &InboundMessage,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    if let Some(pid) = &m.provider_message_id
        && txn.seen(provider, &format!("i:{pid}"), now)?
    {
        return Ok(OpResult::Ignored);
    }
    let latest = match txn.latest_get(m.channel, &m.from)? {
        Some(id) => txn.get_record(&id)?.map(|r| (id, r)),
        None => None,
    };
    let detail = match m.opt_out {
        Some(true) => {
            txn.suppress(m.channel, &m.from, "the recipient opted out")?;
            Some("opt-out: the sender is now on the suppression list".to_string())
        }
        Some(false) => {
            txn.unsuppress(m.channel, &m.from)?;
            Some("opt-in: the sender is off the suppression list".to_string())
        }
        None => None,
    };
    cur.emit(
        txn,
        Event {
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
        },
    )?;
    Ok(OpResult::Done)
}

fn cancel<T: Txn>(
    txn: &T,
    now: UnixMillis,
    id: &MsgId,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    let Some(mut r) = txn.get_record(id)? else {
        return Ok(OpResult::NotFound);
    };
    match r.state {
        State::Queued | State::Deferred => {
            txn.unschedule(r.due_at, id)?;
            transition(txn, cur, now, id, &mut r, State::Cancelled)?;
            cur.emit(txn, message_event(now, id, &r, EventKind::Cancelled))?;
            txn.put_record(id, &r)?;
            Ok(OpResult::Done)
        }
        State::Cancelled => Ok(OpResult::Done),
        other => Ok(OpResult::WrongState(other)),
    }
}

fn requeue<T: Txn>(
    txn: &T,
    now: UnixMillis,
    id: &MsgId,
    cur: &mut Cursor,
) -> Result<OpResult, T::Error> {
    let Some(mut r) = txn.get_record(id)? else {
        return Ok(OpResult::NotFound);
    };
    if r.state != State::Dead {
        return Ok(OpResult::WrongState(r.state));
    }
    txn.dead_remove(id)?;
    transition(txn, cur, now, id, &mut r, State::Queued)?;
    r.attempt = 0;
    r.due_at = now;
    // A fresh time-to-live: the operator decided this message is still wanted.
    r.expires_at = now.saturating_add(r.expires_at.saturating_sub(r.created_at));
    txn.schedule(now, id)?;
    cur.scheduled = true;
    cur.emit(
        txn,
        with_detail(
            message_event(now, id, &r, EventKind::Queued),
            Some("requeued from the dead letters".into()),
        ),
    )?;
    txn.put_record(id, &r)?;
    Ok(OpResult::Done)
}

fn recover<T: Txn>(
    txn: &T,
    now: UnixMillis,
    cur: &mut Cursor,
    pre: &mut PreRead,
) -> Result<OpResult, T::Error> {
    let mut n = 0;
    for id in std::mem::take(&mut pre.leased) {
        txn.unlease(&id)?;
        let Some(mut r) = txn.get_record(&id)? else {
            continue;
        };
        if r.state != State::Sending {
            continue;
        }
        transition(txn, cur, now, &id, &mut r, State::Queued)?;
        r.lease_until = None;
        r.due_at = now;
        txn.schedule(now, &id)?;
        cur.scheduled = true;
        cur.emit(
            txn,
            with_detail(
                message_event(now, &id, &r, EventKind::Queued),
                Some("re-queued: the daemon stopped while this message was being sent".into()),
            ),
        )?;
        txn.put_record(&id, &r)?;
        n += 1;
    }
    Ok(OpResult::Recovered(n))
}

fn prune<T: Txn>(txn: &T, cur: &mut Cursor, pre: &mut PreRead) -> Result<OpResult, T::Error> {
    let mut messages = 0;
    for (at, id) in std::mem::take(&mut pre.finished) {
        txn.unfinished(at, &id)?;
        let Some(r) = txn.get_record(&id)? else {
            continue;
        };
        if !r.state.is_terminal() {
            continue;
        }
        if let Some(key) = &r.idempotency_key
            && txn.idem_get(key)?.is_some_and(|(owner, _)| owner == id)
        {
            txn.idem_remove(key)?;
        }
        if let (Some(p), Some(pid)) = (&r.provider, &r.provider_message_id) {
            txn.provider_id_remove(p, pid)?;
        }
        if r.state == State::Dead {
            txn.dead_remove(&id)?;
        }
        if txn.latest_get(r.channel(), &r.to)? == Some(id) {
            txn.latest_remove(r.channel(), &r.to)?;
        }
        txn.remove_record(&id)?;
        let i = Counts::index(r.state);
        cur.counts.0[i] = cur.counts.0[i].saturating_sub(1);
        messages += 1;
    }
    let old = std::mem::take(&mut pre.old_events);
    for first in &old {
        txn.remove_event_block(*first)?;
    }
    for (at, key) in std::mem::take(&mut pre.old_seen) {
        txn.unsee(at, &key)?;
    }
    for key in std::mem::take(&mut pre.old_held) {
        let mut held = txn.held_get(&key)?;
        held.retain(|(at, _)| *at >= pre.prune_before);
        if held.is_empty() {
            txn.held_remove(&key)?;
        } else {
            txn.held_put(&key, &held)?;
        }
    }
    Ok(OpResult::Pruned {
        messages,
        events: pre.old_event_count,
    })
}
