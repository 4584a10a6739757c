//! The Unix socket server: framing, the hello handshake, request dispatch and pipelined
//! responses.
//!
//! Per connection, a reader decodes frames and starts one task per request (bounded), and
//! a writer task coalesces response frames into few writes. A malformed or oversize frame
//! gets an error frame; then, as on the client's EOF (a half-close included), the
//! connection is closed once every request read on it has been answered (a subscribe with
//! its `subscribed` frame); other connections never notice.
//!
//! Bounds: at most `daemon.max_connections` connections (one more gets a `busy` error frame
//! in answer to its hello, and is closed); per connection, at most [`MAX_IN_FLIGHT`]
//! requests, [`MAX_SUBSCRIPTIONS`] subscriptions, and `daemon.max_unread_bytes` of answers
//! not yet read by the client (the `backlog`: beyond it the reader stops reading).
//!
//! Owns: socket file lifecycle (stale vs live), framing, per-connection bounds. Must not:
//! validate messages (accept) or touch storage except through the committer and reads.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_plugin_api::State;
use herald_protocol::{
    self as protocol, Accepted, BatchItem, ClientFrame, Codec, ErrorBody, ErrorCode, Hello, Lane,
    LaneStats, MessageView, PROTOCOL_VERSION, ProtocolError, ProviderStats, Request, Response,
    SendMessage, ServerFrame, Stats, StorageState, Welcome,
};
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::accept;
use crate::backlog::{self, Backlog, Outgoing};
use crate::clock;
use crate::commit::{CommitError, Committer};
use crate::events;
use crate::live::{Live, LiveCell};
use crate::reads::{ReadError, Reads};
use crate::store::{MsgId, NewMessage, Op, OpResult, Record, Store, id_string, parse_id};
use crate::store_check;
use crate::suppression;

/// Requests one connection may have in flight; the reader waits beyond that.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Subscriptions one connection may hold at once (each holds a page of the event log).
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// Connections being refused (over `daemon.max_connections`) at once; beyond that a new
/// connection is closed without an answer.
const MAX_REFUSING: usize = 64;
/// How long a refused connection has to send its hello before it is answered anyway.
const REFUSE_HELLO_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Most messages in one `send_batch`.
const MAX_BATCH: usize = 1000;

/// A request to reload the config, answered with the outcome.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// What every connection shares.
pub struct Shared {
    pub committer: Committer,
    pub store: Arc<dyn Store>,
    /// Reads made for a request (`get`, `dead`, lane depths, replays): bounded in time.
    pub reads: Reads,
    pub live: Arc<LiveCell>,
    pub max_frame: u32,
    pub started_at: u64,
    pub connections: AtomicU64,
    pub reload: mpsc::Sender<ReloadRequest>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

/// Fails if a live daemon answers on `path` (start-up checks this before it opens the store,
/// so the error names the socket rather than a locked data dir).
pub fn refuse_if_served(path: &Path) -> Result<(), String> {
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "another heraldd is already serving {}; stop it, or give this one another daemon.socket",
            path.display()
        ));
    }
    Ok(())
}

/// Creates the socket file. A socket a live daemon answers on is left alone (and start-up
/// fails); a stale one from a crash is replaced.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, String> {
    refuse_if_served(path)?;
    if path.exists() {
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
        tracing::info!(socket = %path.display(), "replaced a stale socket file");
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode {mode:o} on {}: {e}", path.display()))?;
    Ok(listener)
}

/// Accepts connections until `shutdown`, then waits for open connections to finish their
/// in-flight requests.
pub async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let mut refusing = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let max = shared.live.current().config.daemon.max_connections;
                    let open = shared.connections.load(Ordering::Relaxed);
                    if open >= max {
                        while refusing.try_join_next().is_some() {}
                        if refusing.is_empty() {
                            tracing::warn!(max, "daemon.max_connections reached; refusing new connections");
                        }
                        if refusing.len() < MAX_REFUSING {
                            refusing.spawn(refuse(stream, max, shared.max_frame));
                        }
                    } else {
                        let guard = ConnGuard::new(Arc::clone(&shared));
                        conns.spawn(connection(stream, guard, shutdown.clone()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    refusing.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Counts a connection in `Shared::connections` from accept until its task ends.
struct ConnGuard(Arc<Shared>);

impl ConnGuard {
    fn new(shared: Arc<Shared>) -> ConnGuard {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        ConnGuard(shared)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers a connection over `daemon.max_connections` with a `busy` error frame (after
/// its hello, so the client reads it as the answer to the hello) and closes it. `busy`
/// because the remedy is the same as for a full queue: retry later (or reuse connections).
async fn refuse(stream: UnixStream, max: u64, max_frame: u32) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(4096, rd);
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        REFUSE_HELLO_WAIT,
        protocol::read_frame(&mut rd, max_frame.min(64 * 1024), &mut buf),
    )
    .await;
    let f = error_frame(
        0,
        ErrorCode::Busy,
        format!(
            "too many connections: {max} are open (daemon.max_connections); close idle \
             connections or share one (requests pipeline), then retry"
        ),
    );
    let _ = protocol::write_frame(&mut wr, Codec::Json, &f).await;
}

fn error_frame(id: u64, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    ServerFrame {
        id,
        response: Response::Error(ErrorBody::new(code, message)),
    }
}

/// Best effort: the `id` of an undecodable JSON frame, so the error can echo it.
fn salvage_id(codec: Codec, body: &[u8]) -> u64 {
    if codec == Codec::Json {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
            .filter(|id| *id <= protocol::MAX_SAFE_INTEGER)
            .unwrap_or(0)
    } else {
        0
    }
}

async fn connection(stream: UnixStream, guard: ConnGuard, mut shutdown: watch::Receiver<bool>) {
    let shared = Arc::clone(&guard.0);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut buf = Vec::new();

    // Handshake: always JSON.
    let hello = match protocol::read_frame(&mut rd, shared.max_frame, &mut buf).await {
        Ok(()) => serde_json::from_slice::<Hello>(&buf).map_err(|e| {
            error_frame(
                0,
                ErrorCode::MalformedFrame,
                format!(r#"the first frame must be JSON {{"herald": 1, "codec": "json" | "postcard"}}: {e}"#),
            )
        }),
        Err(ProtocolError::FrameTooLarge { len, max }) => Err(error_frame(
            0,
            ErrorCode::FrameTooLarge,
            format!("frame of {len} bytes exceeds daemon.max_frame ({max} bytes)"),
        )),
        Err(_) => return,
    };
    let hello = match hello {
        Ok(h) if h.herald == PROTOCOL_VERSION => h,
        Ok(h) => {
            let f = error_frame(
                0,
                ErrorCode::UnsupportedProtocol,
                format!(
                    "this heraldd speaks protocol {PROTOCOL_VERSION}, the client asked for {}",
                    h.herald
                ),
            );
            let _ = protocol::write_frame(&mut wr, Codec::Json, &f).await;
            return;
        }
        Err(f) => {
            let _ = protocol::write_frame(&mut wr, Codec::Json, &f).await;
            return;
        }
    };
    let codec = hello.codec;
    let welcome = Welcome {
        herald: PROTOCOL_VERSION,
        server: env!("CARGO_PKG_VERSION").to_string(),
        max_frame: shared.max_frame,
    };
    if protocol::write_frame(&mut wr, codec, &welcome)
        .await
        .is_err()
    {
        return;
    }

    let (max_unread, grace_ms) = {
        let live = shared.live.current();
        let d = &live.config.daemon;
        (d.max_unread_bytes, d.shutdown_grace_ms)
    };
    let backlog = Backlog::new(max_unread);
    let (out, out_rx) = mpsc::channel::<Outgoing>(1024);
    let mut writer = tokio::spawn(backlog::write_answers(wr, out_rx));

    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut subscriptions: HashMap<u64, AbortHandle> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let read = tokio::select! {
            r = protocol::read_frame(&mut rd, shared.max_frame, &mut buf) => r,
            _ = shutdown.changed() => break,
        };
        match read {
            Ok(()) => {}
            Err(ProtocolError::FrameTooLarge { len, max }) => {
                let f = error_frame(
                    0,
                    ErrorCode::FrameTooLarge,
                    format!(
                        "frame of {len} bytes exceeds daemon.max_frame ({max} bytes); closing the connection"
                    ),
                );
                backlog::send_reserving(&out, &backlog, codec, &f).await;
                break;
            }
            Err(_) => break,
        }
        let frame: ClientFrame = match protocol::decode(codec, &buf) {
            Ok(f) => f,
            Err(e) => {
                let id = salvage_id(codec, &buf);
                let f = error_frame(
                    id,
                    ErrorCode::MalformedFrame,
                    format!(
                        "cannot decode the request ({e}); see docs/protocol.md; closing the connection"
                    ),
                );
                backlog::send_reserving(&out, &backlog, codec, &f).await;
                break;
            }
        };
        while tasks.try_join_next().is_some() {}
        subscriptions.retain(|_, h| !h.is_finished());
        let ClientFrame { id, request } = frame;
        // Room for the answer first: while the client leaves answers unread, stop reading.
        let held = tokio::select! {
            r = backlog.reserve(backlog::answer_bound(&request, shared.max_frame)) => r,
            _ = shutdown.changed() => break,
        };
        match request {
            Request::Subscribe { filter, from_seq } => {
                if subscriptions.len() >= MAX_SUBSCRIPTIONS && !subscriptions.contains_key(&id) {
                    let f = error_frame(
                        id,
                        ErrorCode::Busy,
                        format!(
                            "this connection already has {MAX_SUBSCRIPTIONS} subscriptions, the \
                             most one connection may hold; unsubscribe one first"
                        ),
                    );
                    backlog::send_answer(&out, &backlog, codec, f, held).await;
                    continue;
                }
                // Answered here, in read order, so that a client's EOF right after a
                // subscribe cannot lose the `subscribed` frame (the stream ends below).
                let (subscribed, opened) = events::open(shared.store.as_ref(), &shared.committer);
                let f = ServerFrame {
                    id,
                    response: subscribed,
                };
                backlog::send_answer(&out, &backlog, codec, f, held).await;
                let handle = tasks.spawn(subscription(
                    opened,
                    (id, filter, from_seq),
                    Arc::clone(&shared),
                    out.clone(),
                    backlog.clone(),
                    codec,
                ));
                if let Some(old) = subscriptions.insert(id, handle) {
                    old.abort();
                }
            }
            Request::Unsubscribe { subscription } => {
                if let Some(h) = subscriptions.remove(&subscription) {
                    h.abort();
                }
                let f = ServerFrame {
                    id,
                    response: Response::Unsubscribed,
                };
                backlog::send_answer(&out, &backlog, codec, f, held).await;
            }
            request => {
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                    break;
                };
                let shared = Arc::clone(&shared);
                let out = out.clone();
                let backlog = backlog.clone();
                tasks.spawn(async move {
                    let response = handle(&shared, request).await;
                    backlog::send_answer(&out, &backlog, codec, ServerFrame { id, response }, held)
                        .await;
                    drop(permit);
                });
            }
        }
    }
    // Close (EOF, a connection-level error or shutdown): every request read so far is
    // answered (a subscribe's `subscribed` frame is already queued), subscriptions stop
    // streaming, then the writer drains what is queued and shuts the socket down.
    // At shutdown, a client that does not read gets `daemon.shutdown_grace` for that.
    // Close: stop streaming, answer what was accepted, then let the writer drain. At
    // shutdown, a client that does not read gets `daemon.shutdown_grace` for that.
    for (_, h) in subscriptions.drain() {
        h.abort();
    }
    let drain = async {
        while tasks.join_next().await.is_some() {}
        drop(out);
        let _ = (&mut writer).await;
    };
    if *shutdown.borrow() {
        if tokio::time::timeout(std::time::Duration::from_millis(grace_ms), drain)
            .await
            .is_err()
        {
            tracing::warn!("a client did not read its answers before shutdown; closing it");
            writer.abort();
        }
    } else {
        drain.await;
    }
    drop(guard);
}

/// One subscription: the event stream of `events::run`, each frame queued only once the
/// connection's backlog has room for it, so an unread subscription waits on the log.
async fn subscription(
    opened: events::Start,
    (id, filter, from_seq): (u64, protocol::Filter, Option<u64>),
    shared: Arc<Shared>,
    out: mpsc::Sender<Outgoing>,
    backlog: Backlog,
    codec: Codec,
) {
    let (tx, mut rx) = mpsc::channel::<ServerFrame>(1);
    let feed = events::run(
        opened,
        id,
        filter,
        from_seq,
        shared.reads.clone(),
        shared.committer.clone(),
        tx,
    );
    let forward = async move {
        while let Some(frame) = rx.recv().await {
            if !backlog::send_reserving(&out, &backlog, codec, &frame).await {
                return;
            }
        }
    };
    tokio::join!(feed, forward);
}

pub(crate) fn commit_error(e: CommitError) -> ErrorBody {
    match e {
        CommitError::Closed => ErrorBody::new(
            ErrorCode::ShuttingDown,
            "the daemon is shutting down; retry",
        ),
        CommitError::Store(m) => ErrorBody::new(ErrorCode::Internal, format!("not stored: {m}")),
        CommitError::StorageFull(m) => ErrorBody::new(ErrorCode::StorageFull, m),
        CommitError::Unavailable(m) => ErrorBody::new(ErrorCode::StorageUnavailable, m),
    }
}

/// A read's failure as the client sees it: a stalled store is `storage_unavailable` (retry
/// later), an engine error `internal`.
fn read_error(e: ReadError) -> ErrorBody {
    let code = if e.for_now() {
        ErrorCode::StorageUnavailable
    } else {
        ErrorCode::Internal
    };
    ErrorBody::new(code, e.to_string())
}

/// The free-space reserve's answer for new messages of `size` encoded bytes in total.
fn room_for(shared: &Shared, size: u64) -> Result<(), ErrorBody> {
    if let Some(reason) = shared.committer.failure() {
        return Err(ErrorBody::new(ErrorCode::StorageUnavailable, reason));
    }
    shared
        .committer
        .space()
        .try_accept(size)
        .map_err(|m| ErrorBody::new(ErrorCode::StorageFull, m))
}

/// A validated message's encoded size, as the reserve charges it.
fn stored_size(m: &NewMessage) -> u64 {
    postcard::experimental::serialized_size(&(&m.to, &m.content, &m.tags, &m.idempotency_key))
        .unwrap_or(usize::MAX) as u64
}

fn busy(shared: &Shared, live: &Live, adding: u64) -> Option<ErrorBody> {
    let active = shared.store.active_for_admission();
    let max = live.config.daemon.max_queue;
    (active + adding > max).then(|| {
        ErrorBody::new(
            ErrorCode::Busy,
            format!("the queue is full ({active} messages waiting, daemon.max_queue = {max}); retry later"),
        )
    })
}

fn view(id: &MsgId, r: Record) -> MessageView {
    MessageView {
        id: id_string(id),
        channel: r.channel(),
        to: r.to,
        state: r.state,
        attempt: r.attempt,
        created_at: r.created_at,
        updated_at: r.updated_at,
        due_at: matches!(r.state, State::Queued | State::Deferred).then_some(r.due_at),
        provider: r.provider,
        provider_message_id: r.provider_message_id,
        last_error: r.last_error,
        tags: r.tags,
        idempotency_key: r.idempotency_key,
        content: r.content,
        lane: r.lane,
    }
}

/// As many views as fit in one frame of `max_frame` bytes (the answer is bounded like the
/// requests are; a client pages with a smaller `limit` or requeues and lists again).
fn bounded_views(list: Vec<(MsgId, Record)>, max_frame: u32) -> Vec<MessageView> {
    let budget = (max_frame as usize).saturating_sub(1024);
    let mut used = 0;
    let mut out = Vec::new();
    for (id, r) in list {
        let v = view(&id, r);
        // JSON is the larger encoding; size by it.
        let size = serde_json::to_vec(&v).map_or(usize::MAX, |b| b.len() + 1);
        if used + size > budget {
            break;
        }
        used += size;
        out.push(v);
    }
    out
}

fn parse_message_id(id: &str) -> Result<MsgId, ErrorBody> {
    parse_id(id).ok_or_else(|| {
        ErrorBody::field(
            "id",
            format!("{id:?} is not a Herald message id (26 characters, as returned by send)"),
        )
    })
}

fn accepted(result: Result<OpResult, CommitError>) -> Result<Accepted, ErrorBody> {
    match result {
        Ok(OpResult::Accepted { id, duplicate }) => Ok(Accepted {
            id: id_string(&id),
            duplicate,
        }),
        Ok(OpResult::IdempotencyConflict { existing }) => Err(ErrorBody {
            code: ErrorCode::IdempotencyConflict,
            message: format!(
                "this idempotency key was already used for message {} with different content; use a new key for a new message",
                id_string(&existing)
            ),
            field: Some("idempotency_key".into()),
        }),
        Ok(other) => Err(ErrorBody::new(
            ErrorCode::Internal,
            format!("unexpected store result {other:?}"),
        )),
        Err(e) => Err(commit_error(e)),
    }
}

/// Refuses new messages when the queue is full (`busy`) or space is short — except retries
/// of an idempotency key the store still holds: the accept transaction answers those
/// `duplicate` (or `idempotency_conflict`) and they add nothing, so retrying stays safe.
/// The keys are looked up (a store read) only when a refusal is in sight: the accept path
/// reads nothing in the common case.
async fn admit(
    shared: &Shared,
    live: &Live,
    messages: &[&NewMessage],
    now: u64,
) -> Result<(), ErrorBody> {
    let check = |ms: &[&NewMessage]| -> Result<(), ErrorBody> {
        if ms.is_empty() {
            return Ok(());
        }
        if let Some(e) = busy(shared, live, ms.len() as u64) {
            return Err(e);
        }
        room_for(shared, ms.iter().map(|m| stored_size(m)).sum())
    };
    let Err(refusal) = check(messages) else {
        return Ok(());
    };
    // A failed store refuses retries too (its reads may wait behind the stuck write).
    if shared.committer.failure().is_some() || messages.iter().all(|m| m.idempotency_key.is_none())
    {
        return Err(refusal);
    }
    let keys: Vec<Option<String>> = messages.iter().map(|m| m.idempotency_key.clone()).collect();
    let known = shared.reads.run(move |s| {
        keys.iter()
            .map(|k| match k {
                Some(k) => Ok(s.idempotency_key(k, now)?.is_some()),
                None => Ok(false),
            })
            .collect::<Result<Vec<bool>, _>>()
    });
    let Ok(known) = known.await else {
        return Err(refusal);
    };
    let adding: Vec<&NewMessage> = messages
        .iter()
        .zip(known)
        .filter(|(_, known)| !known)
        .map(|(m, _)| *m)
        .collect();
    check(&adding)
}

/// Validation first (an invalid message gets its own error, never `busy`), then the queue
/// bound for what would really be added.
async fn send_one(shared: &Shared, m: SendMessage) -> Result<Accepted, ErrorBody> {
    let live = shared.live.current();
    let now = clock::now_ms();
    let new = accept::validate(m, &live, now)?;
    admit(shared, &live, &[&new], now).await?;
    let overriding = overrides(shared, &new).await;
    let result = accepted(shared.committer.submit(Op::Accept(new)).await);
    if let (true, Ok(a)) = (overriding, &result) {
        log_override(a);
    }
    result
}

/// Whether `m` overrides the suppression of its recipient (a read before the accept, for
/// the log only: the accept transaction decides, and its `queued` event records it).
async fn overrides(shared: &Shared, m: &NewMessage) -> bool {
    let channel = m.content.channel();
    let Some(key) = m
        .override_suppression
        .then(|| shared.store.recipient_key(channel, &m.to))
        .flatten()
    else {
        return false;
    };
    matches!(
        shared
            .reads
            .run(move |s| s.suppression(channel, &key))
            .await,
        Ok(Some(_))
    )
}

/// An overridden suppression is logged by message id, never by address.
fn log_override(a: &Accepted) {
    if !a.duplicate {
        tracing::info!(
            id = %a.id,
            "override_suppression: accepted for a recipient on the suppression list"
        );
    }
}

async fn send_batch(shared: &Shared, ms: Vec<SendMessage>) -> Result<Vec<BatchItem>, ErrorBody> {
    if ms.len() > MAX_BATCH {
        return Err(ErrorBody::new(
            ErrorCode::TooLarge,
            format!(
                "a batch holds at most {MAX_BATCH} messages, this one has {}",
                ms.len()
            ),
        ));
    }
    let live = shared.live.current();
    let now = clock::now_ms();
    let validated: Vec<_> = ms
        .into_iter()
        .map(|m| accept::validate(m, &live, now))
        .collect();
    // Only the valid messages count against the queue (and retries not: see `admit`).
    let valid: Vec<&NewMessage> = validated.iter().flatten().collect();
    admit(shared, &live, &valid, now).await?;
    let ops: Vec<Op> = validated
        .iter()
        .filter_map(|v| v.as_ref().ok().cloned().map(Op::Accept))
        .collect();
    let mut overriding = Vec::with_capacity(valid.len());
    for m in valid {
        overriding.push(overrides(shared, m).await);
    }
    let mut overriding = overriding.into_iter();
    let mut results = shared.committer.submit_all(ops).await.into_iter();
    Ok(validated
        .into_iter()
        .map(|v| match v {
            Ok(_) => match (
                accepted(results.next().unwrap_or(Err(CommitError::Closed))),
                overriding.next().unwrap_or(false),
            ) {
                (Ok(a), overrode) => {
                    if overrode {
                        log_override(&a);
                    }
                    BatchItem::Accepted(a)
                }
                (Err(e), _) => BatchItem::Error(e),
            },
            Err(e) => BatchItem::Error(e),
        })
        .collect())
}

/// How long `stats` waits for the lane depths before answering without them.
const LANES_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

async fn stats(shared: &Shared) -> Stats {
    let storage = shared.committer.storage();
    // The lane depths are read from the store: not from one that is failing (the read may
    // wait behind a stuck write), and not for longer than LANES_WAIT — stats answers anyway.
    let lanes = if storage.state != StorageState::Failed {
        shared.reads.run_within(LANES_WAIT, |s| s.lanes()).await
    } else {
        Err(ReadError::Stalled(std::time::Duration::ZERO))
    };
    let live = shared.live.current();
    let counts = shared.store.counts();
    let now = clock::now_ms();
    Stats {
        states: State::ALL.iter().map(|s| (*s, counts.get(*s))).collect(),
        active: counts.active(),
        max_queue: live.config.daemon.max_queue,
        last_seq: shared.committer.durable_seq(),
        connections: shared.connections.load(Ordering::Relaxed),
        uptime_ms: now.saturating_sub(shared.started_at),
        providers: live
            .routing
            .providers
            .values()
            .map(|p| ProviderStats {
                name: p.name.clone(),
                plugin: p.plugin.clone(),
                breaker: p.breaker.state(now).as_str().to_string(),
                accepted: p.counters.accepted.load(Ordering::Relaxed),
                retries: p.counters.retries.load(Ordering::Relaxed),
                failures: p.counters.failures.load(Ordering::Relaxed),
                rejected: p.counters.rejected.load(Ordering::Relaxed),
                paused_until: p.paused_until(now),
            })
            .collect(),
        storage,
        lanes: match lanes {
            Ok(lanes) => Lane::ALL
                .iter()
                .zip(lanes)
                .map(|(lane, d)| LaneStats {
                    lane: *lane,
                    depth: d.depth,
                    oldest_age_ms: d.earliest_due.map_or(0, |t| now.saturating_sub(t)),
                })
                .collect(),
            Err(ReadError::Stalled(_)) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the priority lanes for stats failed");
                Vec::new()
            }
        },
    }
}

async fn handle(shared: &Shared, request: Request) -> Response {
    let result =
        match request {
            Request::Send(m) => {
                let started = clock::instant();
                let r = send_one(shared, m).await.map(Response::Accepted);
                shared.metrics.accept_latency.observe(started.elapsed());
                r
            }
            Request::SendBatch(ms) => {
                let started = clock::instant();
                let n = ms.len();
                let r = send_batch(shared, ms).await.map(Response::BatchAccepted);
                let took = started.elapsed();
                for _ in 0..n {
                    shared.metrics.accept_latency.observe(took);
                }
                r
            }
            Request::Get { id } => {
                async {
                    let key = parse_message_id(&id)?;
                    match shared.reads.run(move |s| s.get(&key)).await {
                        Ok(Some(r)) => Ok(Response::Message(view(&key, r))),
                        Ok(None) => Err(ErrorBody::new(
                            ErrorCode::NotFound,
                            format!("no message {id}"),
                        )),
                        Err(e) => Err(read_error(e)),
                    }
                }
                .await
            }
            Request::Cancel { id } => async {
                let key = parse_message_id(&id)?;
                match shared.committer.submit(Op::Cancel(key)).await {
                    Ok(OpResult::Done) => Ok(Response::Cancelled { id }),
                    Ok(OpResult::NotFound) => Err(ErrorBody::new(
                        ErrorCode::NotFound,
                        format!("no message {id}"),
                    )),
                    Ok(OpResult::WrongState(s)) => Err(ErrorBody::new(
                        ErrorCode::NotCancellable,
                        format!(
                            "message {id} is {s}; only queued or deferred messages can be cancelled"
                        ),
                    )),
                    Ok(other) => Err(ErrorBody::new(
                        ErrorCode::Internal,
                        format!("unexpected {other:?}"),
                    )),
                    Err(e) => Err(commit_error(e)),
                }
            }
            .await,
            Request::Stats => Ok(Response::Stats(stats(shared).await)),
            Request::Reload => {
                async {
                    let (tx, rx) = oneshot::channel();
                    shared.reload.send(tx).await.map_err(|_| {
                        ErrorBody::new(ErrorCode::ShuttingDown, "the daemon is shutting down")
                    })?;
                    match rx.await {
                        Ok(Ok(detail)) => Ok(Response::Reloaded { detail }),
                        Ok(Err(reason)) => Err(ErrorBody::new(
                            ErrorCode::ConfigRejected,
                            format!("the running config stays: {reason}"),
                        )),
                        Err(_) => Err(ErrorBody::new(
                            ErrorCode::ShuttingDown,
                            "the daemon is shutting down",
                        )),
                    }
                }
                .await
            }
            Request::DeadList { limit } => {
                let limit = limit.unwrap_or(100).min(10_000) as usize;
                match shared.reads.run(move |s| s.dead(limit)).await {
                    Ok(list) => Ok(Response::DeadList(bounded_views(list, shared.max_frame))),
                    Err(e) => Err(read_error(e)),
                }
            }
            Request::DeadRequeue { ids } => {
                async {
                    let keys = ids
                        .iter()
                        .map(|id| parse_message_id(id))
                        .collect::<Result<Vec<_>, _>>()?;
                    let results = shared
                        .committer
                        .submit_all(keys.into_iter().map(Op::Requeue).collect())
                        .await;
                    let mut count = 0;
                    for r in results {
                        match r {
                            Ok(OpResult::Done) => count += 1,
                            Ok(_) => {}
                            Err(e) => return Err(commit_error(e)),
                        }
                    }
                    Ok(Response::Requeued { count })
                }
                .await
            }
            Request::CheckStore { dry_run } => store_check::online(&shared.committer, !dry_run)
                .await
                .map(Response::StoreChecked)
                .map_err(commit_error),
            Request::MintToken {
                tags,
                ids,
                admin,
                ttl_ms,
            } => crate::realtime::mint_token(&shared.live.current(), tags, ids, admin, ttl_ms),
            Request::SuppressionList { after, limit } => {
                let max_frame = shared.max_frame;
                shared
                    .reads
                    .run(move |s| Ok(suppression::list(s, after, limit, max_frame)))
                    .await
                    .unwrap_or_else(|e| Err(read_error(e)))
            }
            Request::SuppressionAdd {
                channel,
                recipient,
                reason,
            } => {
                suppression::add(
                    &*shared.store,
                    &shared.committer,
                    channel,
                    recipient,
                    reason,
                )
                .await
            }
            Request::SuppressionRemove { channel, recipient } => {
                suppression::remove(&*shared.store, &shared.committer, channel, recipient).await
            }
            Request::SuppressionCheck {
                channel,
                recipients,
            } => {
                let max_frame = shared.max_frame;
                shared
                    .reads
                    .run(move |s| Ok(suppression::check(s, channel, recipients, max_frame)))
                    .await
                    .unwrap_or_else(|e| Err(read_error(e)))
            }
            Request::Subscribe { .. } | Request::Unsubscribe { .. } => Err(ErrorBody::new(
                ErrorCode::Internal,
                "subscriptions are handled by the connection",
            )),
        };
    result.unwrap_or_else(Response::Error)
}
