//! `herald-protocol`: the Herald socket protocol — frame layout, the hello handshake,
//! requests, responses, errors, events and the codecs. The one definition the daemon (server
//! side), the Rust client, the CLI and the generated TypeScript types share;
//! `docs/protocol.md` is the prose version of this crate and must follow it.
//!
//! Owns: the wire contract. Must not: know about sockets beyond reading and writing frames,
//! storage, or the daemon's policies.
//!
//! A frame is a 4-byte big-endian length, then that many body bytes. The first client frame
//! is always JSON [`Hello`]; the server answers with a [`Welcome`] in the chosen codec and
//! every later frame uses that codec. Requests carry a client-chosen `id` that the
//! responses echo, so a client may pipeline; events of a subscription carry the id of the
//! `subscribe` request.
//!
//! Postcard is positional: no `flatten`, `untagged`, internally tagged enums or
//! `skip_serializing_if` here, and variants are only ever appended (golden-byte tests guard
//! the encoding). A frame body is exactly one value: bytes after it are an error in both
//! codecs.
//!
//! **Integers.** JSON carries integers as numbers, and JavaScript reads numbers as doubles,
//! exact only up to 2^53 − 1 ([`MAX_SAFE_INTEGER`]). So every integer in this protocol is at
//! most that: `u32` fields by their width, `u64` fields by what they count — request ids
//! (refused above it, see [`ClientFrame`]), event `seq`s, Unix-millisecond times and
//! counters, none of which can reach 2^53 in practice (a seq at a million events a second
//! would take 285 years). The generated TypeScript types therefore say `number` for every
//! integer. A new field whose values can exceed 2^53 − 1 must travel as a string.

#![forbid(unsafe_code)]

use std::fmt;

/// The domain types the frames carry. They are defined in `herald-plugin-api` (plugins see
/// the same messages and events) and are part of this protocol all the same.
pub use herald_plugin_api::{
    Attachment, Channel, Content, EmailContent, Event, EventKind, PushContent, PushPriority, Rsvp,
    RsvpAnswer, SmsContent, State, UnixMillis,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version in `Hello.herald`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The socket path of the embedded default config (`etc/herald.toml`), relative to the
/// directory the daemon was started in. Clients fall back to it after an explicit path and
/// `HERALD_SOCKET`.
pub const DEFAULT_SOCKET: &str = "var/herald/herald.sock";

/// The default bound on a frame body (`daemon.max_frame`).
pub const DEFAULT_MAX_FRAME: u32 = 1024 * 1024;

/// The largest integer the protocol carries: 2^53 − 1, JavaScript's
/// `Number.MAX_SAFE_INTEGER`, so a JSON client in any language reads every integer exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Deserializes an id or seq a client chose, refusing values above [`MAX_SAFE_INTEGER`]
/// (the frame is then malformed): such a value cannot have come from a JSON client intact.
fn safe_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v > MAX_SAFE_INTEGER {
        return Err(serde::de::Error::custom(format!(
            "{v} is above 2^53 - 1 ({MAX_SAFE_INTEGER}), the largest integer the protocol carries"
        )));
    }
    Ok(v)
}

fn safe_opt_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Safe(#[serde(deserialize_with = "safe_u64")] u64);
    Ok(Option::<Safe>::deserialize(d)?.map(|Safe(v)| v))
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    Json,
    Postcard,
}

/// The first frame a client sends, always JSON: `{"herald": 1, "codec": "json"}`.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub herald: u32,
    pub codec: Codec,
}

/// The server's answer to [`Hello`], in the chosen codec.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub herald: u32,
    /// The daemon's version.
    pub server: String,
    pub max_frame: u32,
}

/// A message to send, as a host application describes it.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[cfg_attr(feature = "typescript", ts(optional_fields = nullable))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    /// Email address, E.164 phone number or device token, per the content's channel.
    pub to: String,
    pub content: Content,
    #[cfg_attr(feature = "typescript", ts(as = "Option<_>", optional))]
    #[serde(default)]
    pub tags: Vec<String>,
    /// Sends with the same key within the idempotency window are one message.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Deliver no earlier than this time.
    #[serde(default)]
    pub send_at: Option<UnixMillis>,
    /// Send even if the recipient is on the suppression list: for transactional messages
    /// the host must deliver anyway (a password reset, a receipt). The `queued` event of
    /// such a message says the suppression was overridden.
    #[cfg_attr(feature = "typescript", ts(as = "Option<_>", optional))]
    #[serde(default)]
    pub override_suppression: bool,
    /// The priority lane (`critical`, `normal` — the default — or `bulk`): which due
    /// messages the daemon takes first. Not the push `priority` of [`PushContent`].
    #[cfg_attr(feature = "typescript", ts(as = "Option<_>", optional))]
    #[serde(default)]
    pub lane: Lane,
}

/// A message's priority lane. Among due messages, `critical` ones are dispatched first;
/// `normal` and `bulk` share what is left 3:1 (each takes all when the other has none), so
/// a bulk blast never starves normal traffic nor the reverse. Variant order is wire format
/// (and storage): append only.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    Critical,
    #[default]
    Normal,
    Bulk,
}

impl Lane {
    /// Every lane, in dispatch preference order.
    pub const ALL: [Lane; 3] = [Lane::Critical, Lane::Normal, Lane::Bulk];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Critical => "critical",
            Lane::Normal => "normal",
            Lane::Bulk => "bulk",
        }
    }

    /// The position in [`Lane::ALL`].
    pub fn index(self) -> usize {
        match self {
            Lane::Critical => 0,
            Lane::Normal => 1,
            Lane::Bulk => 2,
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Lane {
    type Err = String;
    fn from_str(s: &str) -> Result<Lane, String> {
        Lane::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("unknown lane {s:?}: expected critical, normal or bulk"))
    }
}

/// The waiting messages (queued or deferred, due or not) of one priority lane.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneStats {
    pub lane: Lane,
    pub depth: u64,
    /// How long the longest-waiting due message of the lane has been due (ms); 0 when none
    /// is due.
    pub oldest_age_ms: u64,
}

/// Which events a subscription receives. Empty lists match everything.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[cfg_attr(feature = "typescript", ts(optional_fields = nullable))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub message_id: Option<String>,
    /// Matches events whose message carries any of these tags.
    #[cfg_attr(feature = "typescript", ts(as = "Option<_>", optional))]
    #[serde(default)]
    pub tags: Vec<String>,
    #[cfg_attr(feature = "typescript", ts(as = "Option<_>", optional))]
    #[serde(default)]
    pub kinds: Vec<EventKind>,
    #[serde(default)]
    pub channel: Option<Channel>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        self.message_id
            .as_ref()
            .is_none_or(|id| e.message_id.as_ref() == Some(id))
            && (self.tags.is_empty() || e.tags.iter().any(|t| self.tags.contains(t)))
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self.channel.is_none_or(|c| e.channel == Some(c))
    }
}

/// A client request. Variant order is wire format: append only.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Send(SendMessage),
    SendBatch(Vec<SendMessage>),
    Get {
        id: String,
    },
    Cancel {
        id: String,
    },
    /// Replays retained events with `seq >= from_seq` (all retained events for 0), then
    /// streams live ones. Without `from_seq`, only live events.
    #[cfg_attr(feature = "typescript", ts(optional_fields = nullable))]
    Subscribe {
        #[serde(default)]
        #[cfg_attr(feature = "typescript", ts(as = "Option<_>", optional))]
        filter: Filter,
        #[serde(default, deserialize_with = "safe_opt_u64")]
        from_seq: Option<u64>,
    },
    /// Ends the subscription started by the request with this id.
    Unsubscribe {
        #[serde(deserialize_with = "safe_u64")]
        subscription: u64,
    },
    Stats,
    Reload,
    #[cfg_attr(feature = "typescript", ts(optional_fields = nullable))]
    DeadList {
        #[serde(default)]
        limit: Option<u32>,
    },
    DeadRequeue {
        ids: Vec<String>,
    },
    /// Checks every stored message against the index entries its state requires and the
    /// per-state counts against a recount, and repairs what is wrong (only reports, with
    /// `dry_run`). Serialised with every other write.
    CheckStore {
        #[serde(default)]
        dry_run: bool,
    },
    /// Mints a stream token for `GET /v1/events` (an HS256 JWT signed with
    /// `realtime.token_secret`). Its bearer sees only events carrying one of `tags`, or of
    /// the messages `ids`, or everything with `admin`. `ttl_ms` defaults to one hour and may
    /// not exceed `realtime.max_token_ttl`.
    MintToken {
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        ids: Vec<String>,
        #[serde(default)]
        admin: bool,
        #[serde(default)]
        ttl_ms: Option<u64>,
    },
    /// A page of the suppression list in (channel, key) order: the entries after `after`
    /// (the previous page's `next`), at most `limit` (default 100, at most 1000).
    #[cfg_attr(feature = "typescript", ts(optional_fields = nullable))]
    SuppressionList {
        #[serde(default)]
        after: Option<SuppressionCursor>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Puts `recipient` on `channel`'s suppression list (source `operator`). A recipient
    /// already on it keeps its entry.
    SuppressionAdd {
        channel: Channel,
        recipient: String,
        reason: String,
    },
    /// Takes `recipient` (any spelling of it) off `channel`'s suppression list.
    SuppressionRemove {
        channel: Channel,
        recipient: String,
    },
    /// Whether each of `recipients` (at most 1000) is on `channel`'s suppression list.
    SuppressionCheck {
        channel: Channel,
        recipients: Vec<String>,
    },
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Chosen by the client, echoed on the answer: 1 to 2^53 − 1 ([`MAX_SAFE_INTEGER`]);
    /// a larger id makes the frame malformed.
    #[serde(deserialize_with = "safe_u64")]
    pub id: u64,
    pub request: Request,
}

/// Machine-readable error codes. Append only.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A field of the request is invalid; `field` names it.
    InvalidField,
    /// No route is configured for the message's channel.
    NoRoute,
    /// The message (or batch) exceeds a size limit.
    TooLarge,
    /// The idempotency key was used for a different message.
    IdempotencyConflict,
    /// The queue is at its configured depth, a connection holds the most subscriptions it
    /// may, or (in answer to the hello) `daemon.max_connections` are open; retry later.
    Busy,
    NotFound,
    /// The message is no longer queued (being sent, or finished).
    NotCancellable,
    /// The frame could not be decoded; the connection is closed.
    MalformedFrame,
    /// The frame's length exceeds `max_frame`; the connection is closed.
    FrameTooLarge,
    /// The hello asked for a protocol version this daemon does not speak.
    UnsupportedProtocol,
    /// The daemon is shutting down.
    ShuttingDown,
    /// A storage or internal failure; the request was not applied.
    Internal,
    /// `reload` found the config file invalid; the running config stays.
    ConfigRejected,
    /// Free space on the data directory's filesystem is below `daemon.min_free`: new
    /// messages are refused (the message says how much is free and what the reserve is);
    /// retry later. Deliveries of accepted messages go on.
    StorageFull,
    /// The store failed or did not finish a write within `daemon.storage_timeout`: the
    /// request was not acknowledged (it may or may not have been applied); retry, with the
    /// same idempotency key, once the operator has fixed the storage.
    StorageUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::Busy => "busy",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotCancellable => "not_cancellable",
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::ConfigRejected => "config_rejected",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::StorageUnavailable => "storage_unavailable",
        }
    }
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The offending field, for `invalid_field`.
    #[serde(default)]
    pub field: Option<String>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code: ErrorCode::InvalidField,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} ({field}): {}", self.code.as_str(), self.message),
            None => write!(f, "{}: {}", self.code.as_str(), self.message),
        }
    }
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub id: String,
    /// True when the idempotency key matched an earlier send: no new message was made.
    pub duplicate: bool,
}

/// One entry of a `send_batch` answer, in request order.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchItem {
    Accepted(Accepted),
    Error(ErrorBody),
}

/// A message and its delivery state, as `get` returns it.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub id: String,
    pub channel: Channel,
    pub to: String,
    pub state: State,
    /// Delivery attempts started so far.
    pub attempt: u32,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// When the next attempt is due, while queued or deferred.
    #[serde(default)]
    pub due_at: Option<UnixMillis>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub provider_message_id: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub content: Content,
    /// The message's priority lane.
    #[serde(default)]
    pub lane: Lane,
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStats {
    pub name: String,
    pub plugin: String,
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
    pub accepted: u64,
    pub retries: u64,
    pub failures: u64,
    pub rejected: u64,
    /// Until when (Unix ms) the provider is paused after it announced a provider-wide wait
    /// (429 with `Retry-After`, a quota); `None` when it takes calls.
    #[serde(default)]
    pub paused_until: Option<u64>,
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Messages per state, in the order of [`State::ALL`] — `(state, count)`.
    pub states: Vec<(State, u64)>,
    /// Messages waiting or in flight (queued + deferred + sending).
    pub active: u64,
    pub max_queue: u64,
    pub last_seq: u64,
    pub connections: u64,
    pub uptime_ms: u64,
    pub providers: Vec<ProviderStats>,
    /// Free space and the health of the store.
    pub storage: StorageStats,
    /// Per priority lane, in the order of [`Lane::ALL`].
    #[serde(default)]
    pub lanes: Vec<LaneStats>,
}

/// Whether the daemon can write, and why not. Variant order is wire format: append only.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageState {
    /// Accepting and delivering.
    Ok,
    /// Free space is below `daemon.min_free`: sends get `storage_full`; deliveries,
    /// cancels and webhooks go on.
    Low,
    /// Free space is below half of `daemon.min_free`: deliveries are paused too (messages
    /// stay queued) and only the outcomes of deliveries already in flight are written.
    Critical,
    /// A write failed or stalled: nothing new is accepted or claimed (`storage_unavailable`).
    Failed,
}

impl StorageState {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageState::Ok => "ok",
            StorageState::Low => "low",
            StorageState::Critical => "critical",
            StorageState::Failed => "failed",
        }
    }
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageStats {
    pub state: StorageState,
    /// Bytes available on the data directory's filesystem, at the last measurement.
    pub free_bytes: u64,
    /// `daemon.min_free` in bytes (0: no reserve). Below it, sends get `storage_full`.
    pub min_free_bytes: u64,
    /// Below this (half the reserve), deliveries pause too.
    pub critical_bytes: u64,
    /// Why the state is not `ok`, for people.
    #[serde(default)]
    pub detail: Option<String>,
}

/// A kind of inconsistency `check_store` looks for. Append only.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreProblemKind {
    /// A `sending` message without a lease: never re-queued. Repair: re-queued.
    SendingWithoutLease,
    /// A `queued` or `deferred` message missing from the schedule: never dispatched.
    /// Repair: rescheduled at its due time.
    NotScheduled,
    /// A `dead` message missing from the dead letters. Repair: listed again.
    NotInDeadLetters,
    /// A finished message missing from the retention index. Repair: indexed.
    NotFinished,
    /// A schedule entry for a message that is gone or not waiting then. Repair: dropped.
    StaleSchedule,
    /// A lease for a message that is gone or not being sent. Repair: dropped.
    StaleLease,
    /// A dead-letter entry for a message that is gone or not dead. Repair: dropped.
    StaleDeadLetter,
    /// The stored per-state counts disagree with the messages. Repair: recounted.
    CountsWrong,
}

impl StoreProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreProblemKind::SendingWithoutLease => "sending_without_lease",
            StoreProblemKind::NotScheduled => "not_scheduled",
            StoreProblemKind::NotInDeadLetters => "not_in_dead_letters",
            StoreProblemKind::NotFinished => "not_finished",
            StoreProblemKind::StaleSchedule => "stale_schedule",
            StoreProblemKind::StaleLease => "stale_lease",
            StoreProblemKind::StaleDeadLetter => "stale_dead_letter",
            StoreProblemKind::CountsWrong => "counts_wrong",
        }
    }
}

/// One kind of inconsistency found by `check_store`.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreProblem {
    pub kind: StoreProblemKind,
    /// How many were found (for `counts_wrong`: how many states disagreed).
    pub found: u64,
    /// How many were repaired (fewer than found for a dry run, or past the per-pass bound:
    /// run the check again).
    pub repaired: u64,
    /// What it means and what the repair does, in words.
    pub detail: String,
    /// Some of the messages concerned (at most 10).
    #[serde(default)]
    pub examples: Vec<String>,
}

/// What `check_store` found and repaired.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCheck {
    /// Messages examined.
    pub messages: u64,
    /// Empty when the store is consistent.
    pub problems: Vec<StoreProblem>,
    /// False for a dry run.
    pub repair: bool,
    /// Per-state counts as stored before the check, and as the messages say, in the order
    /// of [`State::ALL`].
    pub counts_stored: Vec<(State, u64)>,
    pub counts_actual: Vec<(State, u64)>,
    /// How long the check took, milliseconds.
    pub took_ms: u64,
}

impl StoreCheck {
    pub fn consistent(&self) -> bool {
        self.problems.is_empty()
    }

    /// Problems found and not repaired.
    pub fn unrepaired(&self) -> u64 {
        self.problems
            .iter()
            .map(|p| p.found.saturating_sub(p.repaired))
            .sum()
    }
}

impl fmt::Display for StoreCheck {
    /// The human report `herald admin check-store` and `heraldd --check-store` print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.consistent() {
            return writeln!(
                f,
                "store consistent: {} messages checked in {} ms",
                self.messages, self.took_ms
            );
        }
        let found: u64 = self.problems.iter().map(|p| p.found).sum();
        let repaired: u64 = self.problems.iter().map(|p| p.repaired).sum();
        writeln!(
            f,
            "store check: {} messages checked in {} ms; {found} problems found, {repaired} repaired{}",
            self.messages,
            self.took_ms,
            if self.repair { "" } else { " (dry run)" }
        )?;
        for p in &self.problems {
            writeln!(
                f,
                "  {}: {} found, {} repaired: {}",
                p.kind.as_str(),
                p.found,
                p.repaired,
                p.detail
            )?;
            if !p.examples.is_empty() {
                writeln!(f, "    e.g. {}", p.examples.join(" "))?;
            }
            if p.kind == StoreProblemKind::CountsWrong {
                for ((state, stored), (_, actual)) in
                    self.counts_stored.iter().zip(&self.counts_actual)
                {
                    if stored != actual {
                        writeln!(f, "    {state}: stored {stored}, actual {actual}")?;
                    }
                }
            }
        }
        if self.unrepaired() > 0 {
            writeln!(
                f,
                "{} problems are not repaired{}",
                self.unrepaired(),
                if self.repair {
                    ": run the check again"
                } else {
                    ": run it without --dry-run to repair them"
                }
            )?;
        }
        Ok(())
    }
}

/// A server frame body. Variant order is wire format: append only.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Accepted(Accepted),
    BatchAccepted(Vec<BatchItem>),
    Message(MessageView),
    Cancelled {
        id: String,
    },
    /// Sent once when a subscription starts. `first_seq` is the oldest retained event,
    /// `last_seq` the newest at that moment. `epoch` identifies the event log: it changes
    /// only when the data directory is replaced, and then `seq` numbers start over, so a
    /// client that remembered a `seq` under another epoch must not resume from it.
    Subscribed {
        first_seq: u64,
        last_seq: u64,
        #[serde(default)]
        epoch: String,
    },
    Event(Event),
    Unsubscribed,
    Stats(Stats),
    Reloaded {
        detail: String,
    },
    DeadList(Vec<MessageView>),
    Requeued {
        count: u32,
    },
    Error(ErrorBody),
    /// The answer to `check_store`.
    StoreChecked(StoreCheck),
    /// A stream token (`mint_token`) and when it expires (Unix ms).
    Token {
        token: String,
        expires_at: UnixMillis,
    },
    /// A page of the suppression list; `next` is the cursor of the following page, absent
    /// when this page ends the list.
    SuppressionList {
        entries: Vec<SuppressionEntry>,
        next: Option<SuppressionCursor>,
    },
    /// The answer to `suppression_add`: the recipient's entry, and whether this request
    /// added it (false: it was on the list already, and its entry stays).
    SuppressionAdded {
        entry: SuppressionEntry,
        added: bool,
    },
    /// The answer to `suppression_remove`: the entry removed, absent when the recipient
    /// was not on the list.
    SuppressionRemoved {
        entry: Option<SuppressionEntry>,
    },
    /// The answer to `suppression_check`: one status per recipient, in request order.
    SuppressionChecked(Vec<SuppressionStatus>),
}

/// What put a recipient on the suppression list. Append only.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionSource {
    /// A provider reported a hard bounce.
    Bounce,
    /// The recipient marked a message as spam.
    Complaint,
    /// A provider refused the recipient when sending.
    Rejected,
    /// The recipient sent an opt-out keyword (STOP).
    OptOut,
    /// A provider asked for it otherwise.
    Provider,
    /// An operator added it (`suppression_add`).
    Operator,
}

/// One entry of the suppression list.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressionEntry {
    pub channel: Channel,
    /// The recipient as it was written when it was suppressed.
    pub recipient: String,
    /// The recipient's canonical key: every spelling of one recipient has the same key,
    /// and the list holds one entry per key.
    pub key: String,
    pub reason: String,
    pub source: SuppressionSource,
    /// When it was suppressed (Unix ms; 0 for entries stored before this was recorded).
    pub at: UnixMillis,
}

/// Where a page of the suppression list starts: after this (channel, key).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressionCursor {
    pub channel: Channel,
    pub key: String,
}

/// One recipient of a `suppression_check`.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressionStatus {
    /// The recipient as the request wrote it.
    pub recipient: String,
    /// Its canonical key.
    pub key: String,
    /// Its entry, when it is on the list.
    pub entry: Option<SuppressionEntry>,
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFrame {
    /// The id of the request this answers (the `subscribe` request's id for events; 0
    /// for connection-level errors).
    pub id: u64,
    pub response: Response,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u32, max: u32 },
    #[error("could not decode frame: {0}")]
    Decode(String),
    #[error("could not encode frame: {0}")]
    Encode(String),
    #[error("socket I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `value` with `codec` (no length prefix).
pub fn encode<T: Serialize>(codec: Codec, value: &T) -> Result<Vec<u8>, ProtocolError> {
    match codec {
        Codec::Json => serde_json::to_vec(value).map_err(|e| ProtocolError::Encode(e.to_string())),
        Codec::Postcard => {
            postcard::to_stdvec(value).map_err(|e| ProtocolError::Encode(e.to_string()))
        }
    }
}

/// Decodes one frame body holding exactly one value: trailing bytes are an error in both
/// codecs (JSON allows only whitespace after the value).
pub fn decode<T: DeserializeOwned>(codec: Codec, body: &[u8]) -> Result<T, ProtocolError> {
    match codec {
        Codec::Json => {
            serde_json::from_slice(body).map_err(|e| ProtocolError::Decode(e.to_string()))
        }
        Codec::Postcard => {
            let (value, rest) = postcard::take_from_bytes(body)
                .map_err(|e| ProtocolError::Decode(e.to_string()))?;
            if !rest.is_empty() {
                return Err(ProtocolError::Decode(format!(
                    "{} trailing bytes after the value (a frame holds exactly one)",
                    rest.len()
                )));
            }
            Ok(value)
        }
    }
}

/// Appends one length-prefixed frame holding `value` to `out`.
pub fn encode_frame_into<T: Serialize>(
    codec: Codec,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match codec {
        Codec::Json => serde_json::to_writer(&mut *out, value)
            .map_err(|e| ProtocolError::Encode(e.to_string()))?,
        Codec::Postcard => {
            let taken = std::mem::take(out);
            *out = postcard::to_extend(value, taken)
                .map_err(|e| ProtocolError::Encode(e.to_string()))?;
        }
    }
    let len = u32::try_from(out.len() - start - 4)
        .map_err(|_| ProtocolError::Encode("frame larger than 4 GiB".into()))?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Reads one frame body. A length above `max` is reported without reading the body.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
    buf: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed);
        }
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(ProtocolError::FrameTooLarge { len, max });
    }
    buf.clear();
    buf.resize(len as usize, 0);
    reader.read_exact(buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Closed
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Writes one frame holding `value` and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    codec: Codec,
    value: &T,
) -> Result<(), ProtocolError> {
    let mut out = Vec::new();
    encode_frame_into(codec, value, &mut out)?;
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Golden bytes: an accidental reordering of a variant or field changes these.
    use super::*;
    use expect_test::expect;
    use herald_plugin_api::{EmailContent, SmsContent};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn sample_send() -> ClientFrame {
        ClientFrame {
            id: 7,
            request: Request::Send(SendMessage {
                to: "+14155550100".into(),
                content: Content::Sms(SmsContent {
                    from: None,
                    body: "RSVP?".into(),
                    media_urls: vec![],
                }),
                tags: vec!["rsvp".into()],
                idempotency_key: Some("k1".into()),
                send_at: None,
                override_suppression: false,
                lane: Lane::Normal,
            }),
        }
    }

    #[test]
    fn postcard_golden_bytes() {
        expect!["07000c2b3134313535353530313030010005525356503f0001047273767001026b31000001"]
            .assert_eq(&hex(&encode(Codec::Postcard, &sample_send()).unwrap()));
        let ev = ServerFrame {
            id: 3,
            response: Response::Event(Event {
                seq: 300,
                at: 1_700_000_000_000,
                message_id: Some("01J".into()),
                kind: EventKind::Delivered,
                channel: Some(Channel::Email),
                provider: Some("dev".into()),
                provider_message_id: None,
                attempt: Some(1),
                detail: None,
                tags: vec![],
                from: None,
                to: None,
                body: None,
                rsvp: None,
            }),
        };
        expect!["0305ac0280d095ffbc31010330314a0301000103646576000101000000000000"]
            .assert_eq(&hex(&encode(Codec::Postcard, &ev).unwrap()));
        // An inbound reply read as an RSVP: `rsvp` is the last field of an event.
        let reply = ServerFrame {
            id: 4,
            response: Response::Event(Event {
                seq: 301,
                at: 1_700_000_000_000,
                message_id: Some("01J".into()),
                kind: EventKind::Inbound,
                channel: Some(Channel::Sms),
                provider: Some("tw".into()),
                provider_message_id: None,
                attempt: None,
                detail: None,
                tags: vec!["rsvp".into()],
                from: Some("+14155550100".into()),
                to: None,
                body: Some("Yes, 2 of us!".into()),
                rsvp: Some(Rsvp {
                    answer: RsvpAnswer::Yes,
                    headcount: Some(2),
                }),
            }),
        };
        expect!["0405ad0280d095ffbc31010330314a0e010101027477000000010472737670010c2b313431353535353031303000010d5965732c2032206f662075732101000102"].assert_eq(&hex(&encode(Codec::Postcard, &reply).unwrap()));
        let json = encode(Codec::Json, &reply).unwrap();
        assert!(
            String::from_utf8_lossy(&json).contains(r#""rsvp":{"answer":"yes","headcount":2}"#),
            "{}",
            String::from_utf8_lossy(&json)
        );
    }

    fn sample_stats() -> ServerFrame {
        ServerFrame {
            id: 4,
            response: Response::Stats(Stats {
                states: vec![(State::Queued, 2), (State::Sent, 1)],
                active: 2,
                max_queue: 100,
                last_seq: 9,
                connections: 1,
                uptime_ms: 1000,
                providers: vec![ProviderStats {
                    name: "dev".into(),
                    plugin: "outbox".into(),
                    breaker: "closed".into(),
                    accepted: 1,
                    retries: 0,
                    failures: 0,
                    rejected: 0,
                    paused_until: None,
                }],
                storage: StorageStats {
                    state: StorageState::Low,
                    free_bytes: 1 << 20,
                    min_free_bytes: 2 << 20,
                    critical_bytes: 1 << 20,
                    detail: Some("low".into()),
                },
                lanes: vec![LaneStats {
                    lane: Lane::Bulk,
                    depth: 5000,
                    oldest_age_ms: 1200,
                }],
            }),
        }
    }

    #[test]
    fn stats_golden_bytes() {
        // `lanes` is the last field of `Stats`, and `storage_full` /
        // `storage_unavailable` the last error codes.
        expect!["0407020002020102640901e8070103646576066f7574626f7806636c6f7365640100000000018080408080800180804001036c6f7701028827b009"]
            .assert_eq(&hex(&encode(Codec::Postcard, &sample_stats()).unwrap()));
        expect![[r#"{"id":4,"response":{"stats":{"states":[["queued",2],["sent",1]],"active":2,"max_queue":100,"last_seq":9,"connections":1,"uptime_ms":1000,"providers":[{"name":"dev","plugin":"outbox","breaker":"closed","accepted":1,"retries":0,"failures":0,"rejected":0,"paused_until":null}],"storage":{"state":"low","free_bytes":1048576,"min_free_bytes":2097152,"critical_bytes":1048576,"detail":"low"},"lanes":[{"lane":"bulk","depth":5000,"oldest_age_ms":1200}]}}}"#]]
            .assert_eq(&String::from_utf8(encode(Codec::Json, &sample_stats()).unwrap()).unwrap());
        let full = ServerFrame {
            id: 5,
            response: Response::Error(ErrorBody::new(ErrorCode::StorageFull, "x")),
        };
        expect!["050b0d017800"].assert_eq(&hex(&encode(Codec::Postcard, &full).unwrap()));
        let failed = ErrorBody::new(ErrorCode::StorageUnavailable, "x");
        expect!["0e017800"].assert_eq(&hex(&encode(Codec::Postcard, &failed).unwrap()));
        // The storage event kinds follow config_rejected (16).
        let kinds = [EventKind::StorageLow, EventKind::StorageOk];
        expect!["021112"].assert_eq(&hex(&encode(Codec::Postcard, &kinds.to_vec()).unwrap()));
    }

    #[test]
    fn appended_variants_golden_bytes() {
        let mint = ClientFrame {
            id: 4,
            request: Request::MintToken {
                tags: vec!["wedding:42".into()],
                ids: vec![],
                admin: false,
                ttl_ms: Some(3_600_000),
            },
        };
        expect!["040b010a77656464696e673a343200000180dddb01"].assert_eq(&hex(&encode(
            Codec::Postcard,
            &mint,
        )
        .unwrap()));
        let token = ServerFrame {
            id: 4,
            response: Response::Token {
                token: "a.b.c".into(),
                expires_at: 1_700_000_000_000,
            },
        };
        expect!["040d05612e622e6380d095ffbc31"]
            .assert_eq(&hex(&encode(Codec::Postcard, &token).unwrap()));
        let subscribed = ServerFrame {
            id: 1,
            response: Response::Subscribed {
                first_seq: 1,
                last_seq: 9,
                epoch: "e1".into(),
            },
        };
        expect!["01040109026531"].assert_eq(&hex(&encode(Codec::Postcard, &subscribed).unwrap()));
        let f: ClientFrame = decode(
            Codec::Json,
            br#"{"id":1,"request":{"mint_token":{"tags":["wedding:42"],"ttl_ms":3600000}}}"#,
        )
        .unwrap();
        assert_eq!(f.request, mint.request);
        // An older daemon's subscribed frame (no epoch) still decodes.
        let old: ServerFrame = decode(
            Codec::Json,
            br#"{"id":1,"response":{"subscribed":{"first_seq":1,"last_seq":9}}}"#,
        )
        .unwrap();
        assert!(matches!(old.response, Response::Subscribed { epoch, .. } if epoch.is_empty()));
    }

    #[test]
    fn json_shapes() {
        expect![[r#"{"id":7,"request":{"send":{"to":"+14155550100","content":{"sms":{"from":null,"body":"RSVP?","media_urls":[]}},"tags":["rsvp"],"idempotency_key":"k1","send_at":null,"override_suppression":false,"lane":"normal"}}}"#]]
            .assert_eq(&String::from_utf8(encode(Codec::Json, &sample_send()).unwrap()).unwrap());
        // Optional fields may be omitted by hand-written JSON clients.
        let f: ClientFrame = decode(
            Codec::Json,
            br#"{"id":1,"request":{"send":{"to":"a@b.io","content":{"email":{"subject":"Hi","text":"x"}}}}}"#,
        )
        .unwrap();
        let Request::Send(s) = f.request else {
            panic!()
        };
        assert_eq!(
            s.content,
            Content::Email(EmailContent {
                subject: "Hi".into(),
                text: Some("x".into()),
                ..Default::default()
            })
        );
        let f: ClientFrame = decode(Codec::Json, br#"{"id":2,"request":"stats"}"#).unwrap();
        assert_eq!(f.request, Request::Stats);
        let f: ClientFrame = decode(
            Codec::Json,
            br#"{"id":3,"request":{"subscribe":{"from_seq":0}}}"#,
        )
        .unwrap();
        assert_eq!(
            f.request,
            Request::Subscribe {
                filter: Filter::default(),
                from_seq: Some(0)
            }
        );
    }

    #[test]
    fn check_store_shapes() {
        // Appended variants: the earlier encodings above are unchanged.
        let f = ClientFrame {
            id: 1,
            request: Request::CheckStore { dry_run: true },
        };
        expect!["010a01"].assert_eq(&hex(&encode(Codec::Postcard, &f).unwrap()));
        let f: ClientFrame =
            decode(Codec::Json, br#"{"id":1,"request":{"check_store":{}}}"#).unwrap();
        assert_eq!(f.request, Request::CheckStore { dry_run: false });
        let report = StoreCheck {
            messages: 2,
            problems: vec![StoreProblem {
                kind: StoreProblemKind::SendingWithoutLease,
                found: 1,
                repaired: 1,
                detail: "re-queued".into(),
                examples: vec!["01J".into()],
            }],
            repair: true,
            counts_stored: vec![(State::Sending, 0)],
            counts_actual: vec![(State::Sending, 1)],
            took_ms: 3,
        };
        let frame = ServerFrame {
            id: 1,
            response: Response::StoreChecked(report.clone()),
        };
        expect!["010c02010001010972652d717565756564010330314a0101010001010103"]
            .assert_eq(&hex(&encode(Codec::Postcard, &frame).unwrap()));
        expect![[r#"{"id":1,"response":{"store_checked":{"messages":2,"problems":[{"kind":"sending_without_lease","found":1,"repaired":1,"detail":"re-queued","examples":["01J"]}],"repair":true,"counts_stored":[["sending",0]],"counts_actual":[["sending",1]],"took_ms":3}}}"#]].assert_eq(&String::from_utf8(encode(Codec::Json, &frame).unwrap()).unwrap());
        expect![[r#"
            store check: 2 messages checked in 3 ms; 1 problems found, 1 repaired
              sending_without_lease: 1 found, 1 repaired: re-queued
                e.g. 01J
        "#]]
        .assert_eq(&report.to_string());
        assert_eq!(report.unrepaired(), 0);
    }

    #[test]
    fn suppression_shapes() {
        // Appended variants: the earlier encodings above are unchanged.
        let entry = SuppressionEntry {
            channel: Channel::Email,
            recipient: "Ann <ANN@x.io>".into(),
            key: "ann@x.io".into(),
            reason: "asked".into(),
            source: SuppressionSource::Operator,
            at: 1_700_000_000_000,
        };
        let requests = [
            Request::SuppressionList {
                after: Some(SuppressionCursor {
                    channel: Channel::Email,
                    key: "ann@x.io".into(),
                }),
                limit: Some(2),
            },
            Request::SuppressionAdd {
                channel: Channel::Sms,
                recipient: "+14155550100".into(),
                reason: "r".into(),
            },
            Request::SuppressionRemove {
                channel: Channel::Sms,
                recipient: "+14155550100".into(),
            },
            Request::SuppressionCheck {
                channel: Channel::Email,
                recipients: vec!["a@x.io".into()],
            },
        ];
        let hexes: Vec<String> = requests
            .iter()
            .map(|r| hex(&encode(Codec::Postcard, r).unwrap()))
            .collect();
        expect![[r#"
            [
                "0c010008616e6e40782e696f0102",
                "0d010c2b31343135353535303130300172",
                "0e010c2b3134313535353530313030",
                "0f0001066140782e696f",
            ]
        "#]]
        .assert_debug_eq(&hexes);
        let responses = [
            Response::SuppressionList {
                entries: vec![entry.clone()],
                next: None,
            },
            Response::SuppressionAdded {
                entry: entry.clone(),
                added: true,
            },
            Response::SuppressionRemoved { entry: None },
            Response::SuppressionChecked(vec![SuppressionStatus {
                recipient: "ANN@x.io".into(),
                key: "ann@x.io".into(),
                entry: Some(entry),
            }]),
        ];
        let json: Vec<String> = responses
            .iter()
            .map(|r| String::from_utf8(encode(Codec::Json, r).unwrap()).unwrap())
            .collect();
        expect![[r#"
            [
                "{\"suppression_list\":{\"entries\":[{\"channel\":\"email\",\"recipient\":\"Ann <ANN@x.io>\",\"key\":\"ann@x.io\",\"reason\":\"asked\",\"source\":\"operator\",\"at\":1700000000000}],\"next\":null}}",
                "{\"suppression_added\":{\"entry\":{\"channel\":\"email\",\"recipient\":\"Ann <ANN@x.io>\",\"key\":\"ann@x.io\",\"reason\":\"asked\",\"source\":\"operator\",\"at\":1700000000000},\"added\":true}}",
                "{\"suppression_removed\":{\"entry\":null}}",
                "{\"suppression_checked\":[{\"recipient\":\"ANN@x.io\",\"key\":\"ann@x.io\",\"entry\":{\"channel\":\"email\",\"recipient\":\"Ann <ANN@x.io>\",\"key\":\"ann@x.io\",\"reason\":\"asked\",\"source\":\"operator\",\"at\":1700000000000}}]}",
            ]
        "#]].assert_debug_eq(&json);
        let hexes: Vec<String> = responses
            .iter()
            .map(|r| hex(&encode(Codec::Postcard, r).unwrap()))
            .collect();
        expect![[r#"
            [
                "0e01000e416e6e203c414e4e40782e696f3e08616e6e40782e696f0561736b65640580d095ffbc3100",
                "0f000e416e6e203c414e4e40782e696f3e08616e6e40782e696f0561736b65640580d095ffbc3101",
                "1000",
                "110108414e4e40782e696f08616e6e40782e696f01000e416e6e203c414e4e40782e696f3e08616e6e40782e696f0561736b65640580d095ffbc31",
            ]
        "#]].assert_debug_eq(&hexes);
        // Hand-written JSON may leave out the optional fields.
        let f: ClientFrame = decode(
            Codec::Json,
            br#"{"id":1,"request":{"suppression_list":{}}}"#,
        )
        .unwrap();
        assert_eq!(
            f.request,
            Request::SuppressionList {
                after: None,
                limit: None
            }
        );
        let f: ClientFrame = decode(
            Codec::Json,
            br#"{"id":1,"request":{"send":{"to":"a@b.io","content":{"email":{"subject":"Hi","text":"x"}},"override_suppression":true}}}"#,
        )
        .unwrap();
        assert!(matches!(f.request, Request::Send(m) if m.override_suppression));
    }

    #[test]
    fn a_frame_holds_exactly_one_value() {
        for codec in [Codec::Postcard, Codec::Json] {
            let mut body = encode(codec, &sample_send()).unwrap();
            assert_eq!(decode::<ClientFrame>(codec, &body).unwrap(), sample_send());
            body.push(b'7');
            let err = decode::<ClientFrame>(codec, &body).unwrap_err().to_string();
            assert!(err.contains("trailing"), "{codec:?}: {err}");
        }
        // Two frames' worth of bytes in one body is refused, not half-read.
        let one = encode(Codec::Postcard, &sample_send()).unwrap();
        let two = [one.clone(), one].concat();
        assert!(decode::<ClientFrame>(Codec::Postcard, &two).is_err());
    }

    #[test]
    fn client_ids_and_seqs_stay_below_2_pow_53() {
        let json = |s: &str| decode::<ClientFrame>(Codec::Json, s.as_bytes());
        assert_eq!(
            json(r#"{"id":9007199254740991,"request":"stats"}"#)
                .unwrap()
                .id,
            MAX_SAFE_INTEGER
        );
        for bad in [
            r#"{"id":9007199254740992,"request":"stats"}"#,
            r#"{"id":18446744073709551615,"request":"stats"}"#,
            r#"{"id":1,"request":{"unsubscribe":{"subscription":9007199254740992}}}"#,
            r#"{"id":1,"request":{"subscribe":{"from_seq":9007199254740992}}}"#,
        ] {
            let err = json(bad).unwrap_err().to_string();
            assert!(err.contains("2^53"), "{bad}: {err}");
        }
        let f = json(r#"{"id":1,"request":{"subscribe":{"from_seq":null}}}"#).unwrap();
        assert_eq!(
            f.request,
            Request::Subscribe {
                filter: Filter::default(),
                from_seq: None
            }
        );
        // The same bound in postcard.
        let big = ClientFrame {
            id: MAX_SAFE_INTEGER + 1,
            request: Request::Stats,
        };
        let body = encode(Codec::Postcard, &big).unwrap();
        assert!(decode::<ClientFrame>(Codec::Postcard, &body).is_err());
        let ok = ClientFrame {
            id: MAX_SAFE_INTEGER,
            request: Request::Subscribe {
                filter: Filter::default(),
                from_seq: Some(MAX_SAFE_INTEGER),
            },
        };
        let body = encode(Codec::Postcard, &ok).unwrap();
        assert_eq!(decode::<ClientFrame>(Codec::Postcard, &body).unwrap(), ok);
    }

    #[tokio::test]
    async fn frames_round_trip_and_bound() {
        let mut out = Vec::new();
        encode_frame_into(Codec::Postcard, &sample_send(), &mut out).unwrap();
        encode_frame_into(Codec::Json, &sample_send(), &mut out).unwrap();
        let mut r = &out[..];
        let mut buf = Vec::new();
        read_frame(&mut r, 1024, &mut buf).await.unwrap();
        assert_eq!(
            decode::<ClientFrame>(Codec::Postcard, &buf).unwrap(),
            sample_send()
        );
        read_frame(&mut r, 1024, &mut buf).await.unwrap();
        assert_eq!(
            decode::<ClientFrame>(Codec::Json, &buf).unwrap(),
            sample_send()
        );
        assert!(matches!(
            read_frame(&mut r, 1024, &mut buf).await,
            Err(ProtocolError::Closed)
        ));
        let huge = (100u32 * 1024 * 1024).to_be_bytes();
        let mut r = &huge[..];
        assert!(matches!(
            read_frame(&mut r, 1024, &mut buf).await,
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }
}
