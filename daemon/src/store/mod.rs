//! Durable storage behind a queue-shaped [`Store`] trait: messages, the schedule, leases,
//! idempotency keys, the provider-id index, dead letters, the suppression list, breaker
//! state and the event log — in domain terms; one engine knows its own layout.
//!
//! Every mutation is an [`Op`]; [`Store::commit`] applies a whole batch of ops atomically
//! and appends their events with consecutive `seq` numbers. The batch is the engine
//! boundary: the group committer (`commit`) hands over whatever waits, and an engine
//! serves the batch as it can best (sled: one transaction; a server engine: a few
//! multi-row statements). Durability comes from [`Store::flush`], which the committer
//! calls before anything is acknowledged or published. Reads are in domain terms too
//! (`get`, `events_from`, `first_seq`, `last_seq`, `next_due`, `lanes`, `counts`, `dead`,
//! `breakers`, `suppression`, `suppressions`).
//!
//! # Engines
//!
//! - [`memory::MemoryStore`]: everything in maps; the reference implementation and the
//!   engine of fast unit tests.
//! - [`sled_store::SledStore`]: the embedded default. **Only `sled_store` knows sled
//!   exists.**
//! - [`postgres::PgStore`]: several daemons, one queue, in one PostgreSQL database (see
//!   the design note below and its module doc). **Only `store::postgres` knows SQL.**
//!
//! Both are key-value engines: they implement the domain-level transaction
//! [`lifecycle::Txn`] and let [`lifecycle::apply_batch`] run the state machine, so they
//! behave alike by construction; [`check`] holds a store against Herald's invariant
//! (every acknowledged message is delivered or reaches a terminal state) and repairs it.
//! The conformance suite (`conformance`, tests only) runs the same cases against every
//! engine.
//!
//! # Design note: a PostgreSQL engine (several daemons, one queue)
//!
//! A SQL engine implements [`Store`] itself rather than [`lifecycle::Txn`], because a
//! primitive per round trip would make every batch slow:
//!
//! - **Directly, in a few statements per batch:** `Accept` (one multi-row insert into a
//!   write-once `messages` table and a narrow `queue` table; idempotency keys in their own
//!   uniquely keyed table, `ON CONFLICT` deciding duplicate vs conflict), `Claim` (`UPDATE
//!   queue … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT n) RETURNING …`, setting a
//!   lease expiry and a new **fencing token** per claim), `Complete` (one batched update
//!   applied only where the token still matches: a late completion from a daemon that lost
//!   its lease changes nothing), `Recover` (every daemon, periodically: return *expired*
//!   leases to the queue — a key-value engine serves one daemon and returns every lease at
//!   start), the reads, and `Check` (queries: the queue row *is* the schedule entry and the
//!   lease, so most damage cannot exist; the counts are recounted).
//! - **Through `lifecycle`**, with a `Txn` whose methods are statements: the rare ops
//!   (`Status`, `Inbound`, `Cancel`, `Requeue`, `Prune`, `Note`), so the state machine
//!   for held webhooks, forward-only updates, suppression and reply tagging stays one.
//!   [`Claimed::fence`] / [`Completion::fence`] carry the token ([`lifecycle::Txn::lease`]
//!   returns it, [`lifecycle::Txn::holds_lease`] checks it): key-value engines use the
//!   lease expiry, which every claim of their one daemon rewrites; PostgreSQL a value of a
//!   sequence, independent of clocks.
//! - **Events:** `seq` must be global and gap-free across daemons, and a subscriber's cursor
//!   must never skip a transaction that commits late: allocate a batch's seqs from one
//!   counter row locked in the committing transaction, so seq order is commit order (or
//!   read only below the oldest running transaction). Subscribers must get events from the
//!   store (`events_from`, woken by LISTEN/NOTIFY, polling as the fallback), not only from
//!   the local committer's broadcast, which sees this daemon's commits alone; `last_seq`
//!   reads the store.
//! - `flush` is a no-op there (a commit with `synchronous_commit` on is durable).

pub mod check;
#[cfg(test)]
mod conformance;
#[cfg(test)]
pub(crate) mod faulty;
pub mod lifecycle;
pub mod memory;
pub mod postgres;
pub mod recipients;
pub mod sled_store;

use herald_plugin_api::{
    Channel, Content, Event, EventKind, InboundMessage, RecipientKey, Rsvp, State, StatusUpdate,
    UnixMillis,
};
use serde::{Deserialize, Serialize};

pub use check::CheckReport;
pub use herald_protocol::Lane;
pub use memory::MemoryStore;
pub use postgres::PgStore;
pub use sled_store::SledStore;

/// A message id: a ULID's 16 bytes (time-ordered, so storage keys cluster by age).
pub type MsgId = [u8; 16];

pub fn new_id() -> MsgId {
    ulid::Ulid::new().to_bytes()
}

pub fn id_string(id: &MsgId) -> String {
    ulid::Ulid::from_bytes(*id).to_string()
}

pub fn parse_id(s: &str) -> Option<MsgId> {
    ulid::Ulid::from_string(s).ok().map(|u| u.to_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O: {0}")]
    Io(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("storage is in use by another process: {0}")]
    Locked(String),
    #[error("internal storage error: {0}")]
    Internal(String),
    /// The store could not be reached or lost the batch midway (a shared engine's
    /// connection dropped, a server restart, a session bound ran out): the batch was not
    /// applied — or, when its commit's answer was lost, may have been — and was not
    /// acknowledged; a later batch may succeed. Not a reason to stop writing.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// A stored message and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub to: String,
    pub content: Content,
    pub tags: Vec<String>,
    pub idempotency_key: Option<String>,
    /// The requested delivery time, when it was in the future at acceptance (a `send_at`
    /// in the past is stored as `None`: the message was due at once either way).
    pub send_at: Option<UnixMillis>,
    pub state: State,
    /// Attempts started (incremented when a delivery is leased).
    pub attempt: u32,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// When the message is next due (the schedule key's time) while queued or deferred.
    pub due_at: UnixMillis,
    /// Past this, an undelivered message becomes `expired`.
    pub expires_at: UnixMillis,
    /// While `sending`: the lease expiry.
    pub lease_until: Option<UnixMillis>,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub last_error: Option<String>,
    /// The priority lane, kept across retries and deferrals. Records written before lanes
    /// existed end without it and read as `normal` ([`decode_record`]).
    pub lane: Lane,
}

/// A [`Record`] as stores written before priority lanes hold it (no trailing `lane`).
#[derive(Deserialize)]
struct RecordV1 {
    to: String,
    content: Content,
    tags: Vec<String>,
    idempotency_key: Option<String>,
    send_at: Option<UnixMillis>,
    state: State,
    attempt: u32,
    created_at: UnixMillis,
    updated_at: UnixMillis,
    due_at: UnixMillis,
    expires_at: UnixMillis,
    lease_until: Option<UnixMillis>,
    provider: Option<String>,
    provider_message_id: Option<String>,
    last_error: Option<String>,
}

/// Decodes a postcard [`Record`] (the bytes after an engine's version byte), or one
/// written before lanes ([`RecordV1`], which postcard cannot read as the longer struct:
/// it ends where `lane` would start), as lane `normal`. Tried in that order, a current
/// record never reads as an old one: the old layout is a strict prefix.
pub fn decode_record(bytes: &[u8]) -> Result<Record, postcard::Error> {
    postcard::from_bytes::<Record>(bytes).or_else(|e| {
        let v1: RecordV1 = postcard::from_bytes(bytes).map_err(|_| e)?;
        Ok(Record {
            to: v1.to,
            content: v1.content,
            tags: v1.tags,
            idempotency_key: v1.idempotency_key,
            send_at: v1.send_at,
            state: v1.state,
            attempt: v1.attempt,
            created_at: v1.created_at,
            updated_at: v1.updated_at,
            due_at: v1.due_at,
            expires_at: v1.expires_at,
            lease_until: v1.lease_until,
            provider: v1.provider,
            provider_message_id: v1.provider_message_id,
            last_error: v1.last_error,
            lane: Lane::Normal,
        })
    })
}

/// Encodes `r` the way stores did before priority lanes (for tests that plant old data).
#[cfg(any(test, feature = "test-support"))]
pub fn encode_record_v1(r: &Record) -> Vec<u8> {
    #[derive(Serialize)]
    struct V1<'a> {
        to: &'a String,
        content: &'a Content,
        tags: &'a Vec<String>,
        idempotency_key: &'a Option<String>,
        send_at: &'a Option<UnixMillis>,
        state: &'a State,
        attempt: &'a u32,
        created_at: &'a UnixMillis,
        updated_at: &'a UnixMillis,
        due_at: &'a UnixMillis,
        expires_at: &'a UnixMillis,
        lease_until: &'a Option<UnixMillis>,
        provider: &'a Option<String>,
        provider_message_id: &'a Option<String>,
        last_error: &'a Option<String>,
    }
    postcard::to_allocvec(&V1 {
        to: &r.to,
        content: &r.content,
        tags: &r.tags,
        idempotency_key: &r.idempotency_key,
        send_at: &r.send_at,
        state: &r.state,
        attempt: &r.attempt,
        created_at: &r.created_at,
        updated_at: &r.updated_at,
        due_at: &r.due_at,
        expires_at: &r.expires_at,
        lease_until: &r.lease_until,
        provider: &r.provider,
        provider_message_id: &r.provider_message_id,
        last_error: &r.last_error,
    })
    .unwrap_or_default()
}

/// The waiting messages (queued or deferred) of one priority lane, from the schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneDepth {
    pub depth: u64,
    /// The earliest due time among them.
    pub earliest_due: Option<UnixMillis>,
}

/// How many of `rest` claim positions, numbered from `turn`, go to the bulk lane: every
/// fourth (normal:bulk 3:1). The dispatcher advances `turn` by what it claimed, so even
/// claims of one message at a time share 3:1.
pub fn bulk_share(turn: u64, rest: usize) -> usize {
    // Positions k in [turn, turn + rest) with k % 4 == 3; those below n number n / 4.
    let below = |n: u64| n / 4;
    (below(turn.saturating_add(rest as u64)) - below(turn)) as usize
}

impl Record {
    pub fn channel(&self) -> Channel {
        self.content.channel()
    }

    /// Whether a new send with the same idempotency key, arriving at `now`, is the same
    /// message. `send_at` compares by meaning: absent, and a time not after the moment a
    /// send was accepted, both mean "now" (so a retry that stamps `send_at` with the current
    /// time is a duplicate); a scheduled send matches only a retry with the same `send_at`.
    pub fn same_message(&self, m: &NewMessage, now: UnixMillis) -> bool {
        let stored_now = self.send_at.is_none_or(|t| t <= self.created_at);
        let new_now = m.send_at.is_none_or(|t| t <= now);
        self.to == m.to
            && self.content == m.content
            && self.tags == m.tags
            && (self.send_at == m.send_at || (stored_now && new_now))
    }
}

/// What put a recipient on the suppression list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SuppressionSource {
    /// A provider reported a hard bounce.
    Bounce,
    /// The recipient marked a message as spam.
    Complaint,
    /// A provider refused the recipient when sending (e.g. an unreachable number).
    Rejected,
    /// The recipient sent an opt-out keyword (STOP).
    OptOut,
    /// A provider asked for it otherwise.
    Provider,
    /// An operator added it.
    Operator,
}

impl SuppressionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionSource::Bounce => "bounce",
            SuppressionSource::Complaint => "complaint",
            SuppressionSource::Rejected => "rejected",
            SuppressionSource::OptOut => "opt_out",
            SuppressionSource::Provider => "provider",
            SuppressionSource::Operator => "operator",
        }
    }
}

/// One entry of the suppression list, stored under the recipient's canonical key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    /// The recipient as it was written when it was suppressed (a message's `to`, an inbound
    /// sender): kept so the entry can be keyed again if the key rules change.
    pub recipient: String,
    pub reason: String,
    pub source: SuppressionSource,
    /// When it was suppressed (0 for entries stored before this was recorded).
    pub at: UnixMillis,
}

/// A validated message ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub id: MsgId,
    pub to: String,
    pub content: Content,
    pub tags: Vec<String>,
    pub idempotency_key: Option<String>,
    pub send_at: Option<UnixMillis>,
    /// Delivery time-to-live from the due time (`retry.ttl`).
    pub ttl_ms: u64,
    /// How long the idempotency key is honoured.
    pub idempotency_window_ms: u64,
    /// Send even if the recipient is on the suppression list (`SendMessage::
    /// override_suppression`); the `queued` event says so when it mattered.
    pub override_suppression: bool,
    /// The priority lane (`SendMessage::lane`).
    pub lane: Lane,
}

/// The end of one delivery attempt, as decided by the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub id: MsgId,
    /// The attempt this completes; a stale completion (another attempt) is ignored.
    pub attempt: u32,
    /// The claim's fencing token ([`Claimed::fence`]): a completion of an older claim of
    /// the same message changes nothing.
    pub fence: u64,
    /// One of sent, delivered, deferred, failed, bounced, dead, expired.
    pub state: State,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub detail: Option<String>,
    /// For `deferred`: when to try again.
    pub due_at: Option<UnixMillis>,
    /// Add the recipient to the suppression list.
    pub suppress: bool,
    /// False when no provider was actually called (every breaker open): the attempt is
    /// given back so an outage cannot exhaust `max_attempts`.
    pub attempt_used: bool,
    /// Index the provider's id so its webhooks find the message (providers with webhooks).
    pub index_provider_id: bool,
    /// Breakers this delivery opened or closed, by provider name. Stored with the outcome
    /// (even a stale one), so what was true when the outcome was recorded survives a crash.
    pub breakers: Vec<(String, BreakerRecord)>,
    /// The breaker events of this delivery, in order: a trial call admitted
    /// (`provider_half_open`), a breaker that opened or closed (`provider_opened`,
    /// `provider_closed`: emitted only if its record in `breakers` is the newest stored).
    pub breaker_events: Vec<BreakerEvent>,
    /// `retry.max_attempts`, for a held resend request applied with this completion (see
    /// [`Op::Status`]).
    pub max_attempts: u32,
}

/// A breaker transition to report as an event, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerEvent {
    pub provider: String,
    /// `ProviderHalfOpen`, `ProviderOpened`, `ProviderClosed` or `ProviderPaused`.
    pub kind: EventKind,
    /// For opened/closed: the generation of the matching record in `Completion::breakers`.
    pub generation: u64,
    pub reason: String,
}

/// The stored state of a provider's circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerRecord {
    /// The provider's plugin: a same-named provider on another plugin starts closed.
    pub plugin: String,
    /// Orders the writes of concurrent deliveries: a record replaces the stored one only
    /// when its generation is higher.
    pub generation: u64,
    /// When the breaker (last) opened; `None` while closed.
    pub opened_at: Option<UnixMillis>,
    /// Openings since it last closed: the grown cooldown (0 in records written before it
    /// was kept; read as 1 while open).
    #[serde(default)]
    pub trips: u32,
}

/// A mutation, applied by [`Store::commit`] in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Accept(NewMessage),
    /// Lease up to `limit` due messages for `lease_ms`: every due `critical` one first,
    /// then `normal` and `bulk` 3:1 ([`bulk_share`] of the positions from `turn`), either
    /// taking the other's share when it has too few.
    Claim {
        limit: usize,
        lease_ms: u64,
        turn: u64,
    },
    Complete(Completion),
    Cancel(MsgId),
    /// Dead letter → queued, attempts reset.
    Requeue(MsgId),
    /// Start-up: every leased message goes back to the queue.
    Recover,
    /// An event not tied to a message (config_reloaded, config_rejected).
    Note {
        kind: EventKind,
        detail: String,
    },
    /// Retention: drop up to `limit` messages that finished before `before`, and events
    /// older than `before`.
    Prune {
        before: UnixMillis,
        limit: usize,
    },
    /// A provider's delivery-status webhook about one message. Applied only forward; a
    /// duplicate (same provider event id) is a no-op; an update for a message still being
    /// sent, or for a provider id not yet known, is held and applied when it can be.
    Status {
        provider: String,
        update: StatusUpdate,
        /// `retry.max_attempts`: an [`UpdateKind::Resend`] defers the message only while
        /// its attempt is below this.
        ///
        /// [`UpdateKind::Resend`]: herald_plugin_api::UpdateKind::Resend
        max_attempts: u32,
    },
    /// A reply from a recipient, tagged like the latest message sent to that sender; `rsvp`
    /// is the reply read as an RSVP (by `rsvp`, outside the store), dropped for an opt-out.
    Inbound {
        provider: String,
        inbound: InboundMessage,
        rsvp: Option<Rsvp>,
    },
    /// Checks every message against the index entries its state requires and the counts
    /// against a recount; with `repair`, fixes what it found (see [`check`]).
    Check {
        repair: bool,
    },
    /// An operator puts `recipient` on the suppression list (source `operator`). An entry
    /// already there stays as it is (the first entry says since when and why):
    /// [`OpResult::Suppression`] says which. No event: the list is not message state.
    Suppress {
        channel: Channel,
        recipient: String,
        reason: String,
    },
    /// An operator takes `recipient` (any spelling of it) off the suppression list.
    /// [`OpResult::Suppression`] carries the entry removed, if there was one. No event.
    Unsuppress {
        channel: Channel,
        recipient: String,
    },
    /// Trial call `trial` of `provider`'s half-open breaker at `generation`, for this
    /// daemon if no other holds it: on a store several daemons share, one daemon makes each
    /// trial call ([`OpResult::Probe`] says whether this one won). A claim lapses at
    /// `until`, so a daemon that died mid-probe does not keep the breaker open for ever.
    /// No event, no message state.
    ClaimProbe {
        provider: String,
        generation: u64,
        trial: u32,
        until: UnixMillis,
    },
    /// Extends the leases this daemon still holds — each named by its message and the
    /// claim's fencing token ([`Claimed::fence`]) — to at least `until`, so a delivery that
    /// outlasts `store.lease` (a slow provider, a failover, a wait for rate-limit tokens) is
    /// not taken back and sent again by another daemon. A lease whose token no longer
    /// matches (completed, or taken back after it expired) is left alone and reported in
    /// [`OpResult::Renewed`]. No event, no message state.
    Renew {
        leases: Vec<(MsgId, u64)>,
        until: UnixMillis,
    },
}

/// One entry of the suppression list with where it is stored: its channel and the
/// recipient's canonical key (the list's order, and a page's cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionEntry {
    pub channel: Channel,
    pub key: String,
    pub entry: Suppression,
}

/// A leased message handed to the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: MsgId,
    /// Changes on every claim of the message; the completion hands it back.
    pub fence: u64,
    pub record: Record,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Accepted {
        id: MsgId,
        duplicate: bool,
    },
    IdempotencyConflict {
        existing: MsgId,
    },
    Claimed(Vec<Claimed>),
    Done,
    NotFound,
    /// The message is in a state that does not allow the op.
    WrongState(State),
    Recovered(u64),
    Pruned {
        messages: u64,
        events: u64,
    },
    /// A webhook update kept until its message can take it.
    Held,
    /// A duplicate or backward webhook update: nothing changed.
    Ignored,
    Checked(Box<CheckReport>),
    /// `Suppress` / `Unsuppress`: the entry stored (or removed) under the recipient's key,
    /// and whether the op changed the list. `None` for an `Unsuppress` of a recipient that
    /// was not on it, or one that is not a recipient of the channel.
    Suppression {
        entry: Option<SuppressionEntry>,
        changed: bool,
    },
    /// `ClaimProbe`: whether this daemon makes the trial call.
    Probe {
        won: bool,
    },
    /// `Renew`: the messages whose lease this daemon no longer holds.
    Renewed {
        lost: Vec<MsgId>,
    },
}

/// Counts of messages per state (index = position in [`State::ALL`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts(pub [u64; 12]);

impl Counts {
    pub fn index(s: State) -> usize {
        State::ALL.iter().position(|x| *x == s).unwrap_or(0)
    }

    pub fn get(&self, s: State) -> u64 {
        self.0[Counts::index(s)]
    }

    pub fn moved(&mut self, from: Option<State>, to: State) {
        if let Some(from) = from {
            let i = Counts::index(from);
            self.0[i] = self.0[i].saturating_sub(1);
        }
        self.0[Counts::index(to)] += 1;
    }

    /// Messages waiting or in flight.
    pub fn active(&self) -> u64 {
        self.get(State::Queued) + self.get(State::Deferred) + self.get(State::Sending)
    }
}

/// What a commit produced.
#[derive(Debug, Default)]
pub struct Committed {
    /// One result per op, in order.
    pub results: Vec<OpResult>,
    /// The events appended, in `seq` order.
    pub events: Vec<Event>,
    /// Whether the schedule gained entries (the dispatcher should look again).
    pub scheduled: bool,
}

/// Queue-shaped storage. Implementations must apply a `commit` batch atomically and make
/// it durable on `flush`; reads may run concurrently with a commit. One writer (the
/// committer) calls `commit`.
pub trait Store: Send + Sync + 'static {
    /// Applies `ops` in order, in one transaction. Not durable until [`Store::flush`].
    fn commit(&self, now: UnixMillis, ops: &[Op]) -> Result<Committed, StoreError>;

    /// Makes every committed batch durable.
    fn flush(&self) -> Result<(), StoreError>;

    fn get(&self, id: &MsgId) -> Result<Option<Record>, StoreError>;

    /// The message an idempotency key names, if the key is still within its window at
    /// `now`. A read outside any commit: the accept transaction still decides duplicate or
    /// conflict; this lets a retry past a full queue reach it.
    fn idempotency_key(&self, key: &str, now: UnixMillis) -> Result<Option<MsgId>, StoreError>;

    /// Events with `seq >= from`, at most `limit`.
    fn events_from(&self, from: u64, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// The oldest retained event's seq (0 when the log is empty).
    fn first_seq(&self) -> Result<u64, StoreError>;

    /// The newest committed event's seq.
    fn last_seq(&self) -> u64;

    /// The earliest due time in the schedule.
    fn next_due(&self) -> Result<Option<UnixMillis>, StoreError>;

    /// The schedule per priority lane, in the order of [`Lane::ALL`].
    fn lanes(&self) -> Result<[LaneDepth; 3], StoreError>;

    fn counts(&self) -> Counts;

    /// Messages not yet terminal, for the `daemon.max_queue` admission check of every send.
    /// An engine whose reads are round trips to a shared server may answer from its last
    /// reading if it is recent (the bound is approximate across daemons anyway).
    fn active_for_admission(&self) -> u64 {
        self.counts().active()
    }

    /// Dead-lettered messages, oldest first.
    fn dead(&self, limit: usize) -> Result<Vec<(MsgId, Record)>, StoreError>;

    /// The stored breaker state of every provider that ever opened or closed one.
    fn breakers(&self) -> Result<std::collections::BTreeMap<String, BreakerRecord>, StoreError>;

    /// The canonical key of `recipient` on `channel` under the rules this store's
    /// recipient-keyed entries are keyed with; `None` when it is not a recipient of the
    /// channel.
    fn recipient_key(&self, channel: Channel, recipient: &str) -> Option<RecipientKey>;

    /// The suppression entry stored under `key`, if any.
    fn suppression(
        &self,
        channel: Channel,
        key: &RecipientKey,
    ) -> Result<Option<Suppression>, StoreError>;

    /// The suppression list in (channel, key) order: the entries after `after` (a previous
    /// page's last `(channel, key)`), at most `limit`.
    fn suppressions(
        &self,
        after: Option<(Channel, &str)>,
        limit: usize,
    ) -> Result<Vec<SuppressionEntry>, StoreError>;

    /// For engines several daemons write to: sends on `wake` whenever any daemon appended
    /// events (a wake-up only; it may be late or lost, so the reader polls too) and returns
    /// true — the committer then publishes the log as the store holds it, every daemon's
    /// events in seq order, not only its own batches. False (the default): this process
    /// is the only writer.
    fn notify_appends(&self, wake: std::sync::mpsc::Sender<()>) -> bool {
        let _ = wake;
        false
    }

    /// The store's epoch: a random id created with the store and kept in it, so it changes
    /// only when the data directory is replaced (and `seq` numbers start over). Streams
    /// show it so a resuming client can tell a `seq` of another log from one of this log.
    fn epoch(&self) -> String;
}

/// An entry a test writes the way an older heraldd (recipient schema 1, see
/// [`recipients`]) did, to prove an engine re-keys it at start.
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Legacy {
    Suppressed {
        channel: Channel,
        to: String,
        reason: String,
    },
    Latest {
        channel: Channel,
        to: String,
        id: MsgId,
    },
    /// A stored message's record re-written as a heraldd before priority lanes wrote it
    /// (no `lane`; its schedule entry, if any, stays where it is: where the `normal` lane
    /// is kept, which is where an older heraldd kept every entry).
    Message { id: MsgId, record: Box<Record> },
}

/// Damage a test does to a stopped (or idle) store's indexes on purpose, the way an
/// interrupted multi-tree write leaves them, to prove the check repairs it.
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Drops a message's lease (a `sending` record left without one).
    DropLease(MsgId),
    /// Drops every schedule entry of a message.
    DropSchedule(MsgId),
    /// Drops a message's dead-letter entry.
    DropDeadLetter(MsgId),
    /// Drops every finished entry of a message.
    DropFinished(MsgId),
    /// Adds a schedule entry (stale unless it matches the message).
    AddSchedule(UnixMillis, MsgId),
    /// Adds a lease (stale unless the message is being sent).
    AddLease(MsgId, UnixMillis),
    /// Adds a dead-letter entry.
    AddDeadLetter(MsgId),
    /// Overwrites the stored per-state counts.
    SetCounts(Counts),
}
