//! The Unix socket server: framing, the hello handshake, request dispatch and pipelined
//! responses.
//!
//! Per connection, a reader decodes frames and starts one task per request (bounded), and
//! a writer task coalesces response frames into few writes. A malformed or oversize frame
//! gets an error frame, then the connection is closed once the requests already accepted
//! on it have been answered; other connections never notice.
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
    self as protocol, Accepted, BatchItem, ClientFrame, Codec, ErrorBody, ErrorCode, Hello,
    MessageView, PROTOCOL_VERSION, ProtocolError, ProviderStats, Request, Response, SendMessage,
    ServerFrame, Stats, Welcome,
};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::accept;
use crate::clock;
use crate::commit::{CommitError, Committer};
use crate::events;
use crate::live::{Live, LiveCell};
use crate::store::{MsgId, Op, OpResult, Record, Store, id_string, parse_id};

/// Requests one connection may have in flight; the reader waits beyond that.
const MAX_IN_FLIGHT: usize = 4096;
/// Most messages in one `send_batch`.
const MAX_BATCH: usize = 1000;

/// A request to reload the config, answered with the outcome.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// What every connection shares.
pub struct Shared {
    pub committer: Committer,
    pub store: Arc<dyn Store>,
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
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(connection(stream, Arc::clone(&shared), shutdown.clone()));
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
    while conns.join_next().await.is_some() {}
}

struct ConnGuard<'a>(&'a AtomicU64);

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
            .unwrap_or(0)
    } else {
        0
    }
}

async fn connection(stream: UnixStream, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let _guard = ConnGuard(&shared.connections);
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

    let (out, mut out_rx) = mpsc::channel::<ServerFrame>(1024);
    let writer = tokio::spawn(async move {
        let mut bytes = Vec::with_capacity(64 * 1024);
        while let Some(frame) = out_rx.recv().await {
            bytes.clear();
            let mut next = Some(frame);
            while let Some(f) = next.take() {
                if let Err(e) = protocol::encode_frame_into(codec, &f, &mut bytes) {
                    tracing::error!(error = %e, "cannot encode a response frame");
                }
                if bytes.len() < 256 * 1024 {
                    next = out_rx.try_recv().ok();
                }
            }
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });

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
                let _ = out
                    .send(error_frame(
                        0,
                        ErrorCode::FrameTooLarge,
                        format!("frame of {len} bytes exceeds daemon.max_frame ({max} bytes); closing the connection"),
                    ))
                    .await;
                break;
            }
            Err(_) => break,
        }
        let frame: ClientFrame = match protocol::decode(codec, &buf) {
            Ok(f) => f,
            Err(e) => {
                let id = salvage_id(codec, &buf);
                let _ = out
                    .send(error_frame(
                        id,
                        ErrorCode::MalformedFrame,
                        format!("cannot decode the request ({e}); see docs/protocol.md; closing the connection"),
                    ))
                    .await;
                break;
            }
        };
        while tasks.try_join_next().is_some() {}
        subscriptions.retain(|_, h| !h.is_finished());
        let ClientFrame { id, request } = frame;
        match request {
            Request::Subscribe { filter, from_seq } => {
                let handle = tasks.spawn(events::run(
                    id,
                    filter,
                    from_seq,
                    Arc::clone(&shared.store),
                    shared.committer.clone(),
                    out.clone(),
                ));
                if let Some(old) = subscriptions.insert(id, handle) {
                    old.abort();
                }
            }
            Request::Unsubscribe { subscription } => {
                if let Some(h) = subscriptions.remove(&subscription) {
                    h.abort();
                }
                let _ = out
                    .send(ServerFrame {
                        id,
                        response: Response::Unsubscribed,
                    })
                    .await;
            }
            request => {
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                    break;
                };
                let shared = Arc::clone(&shared);
                let out = out.clone();
                tasks.spawn(async move {
                    let response = handle(&shared, request).await;
                    let _ = out.send(ServerFrame { id, response }).await;
                    drop(permit);
                });
            }
        }
    }
    // Close: stop streaming, answer what was accepted, then let the writer drain.
    for (_, h) in subscriptions.drain() {
        h.abort();
    }
    while tasks.join_next().await.is_some() {}
    drop(out);
    let _ = writer.await;
}

fn commit_error(e: CommitError) -> ErrorBody {
    match e {
        CommitError::Closed => ErrorBody::new(
            ErrorCode::ShuttingDown,
            "the daemon is shutting down; retry",
        ),
        CommitError::Store(m) => ErrorBody::new(ErrorCode::Internal, format!("not stored: {m}")),
    }
}

fn busy(shared: &Shared, live: &Live, adding: u64) -> Option<ErrorBody> {
    let active = shared.store.counts().active();
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

async fn send_one(shared: &Shared, m: SendMessage) -> Result<Accepted, ErrorBody> {
    let live = shared.live.current();
    if let Some(e) = busy(shared, &live, 1) {
        return Err(e);
    }
    let new = accept::validate(m, &live, clock::now_ms())?;
    accepted(shared.committer.submit(Op::Accept(new)).await)
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
    if let Some(e) = busy(shared, &live, ms.len() as u64) {
        return Err(e);
    }
    let now = clock::now_ms();
    let validated: Vec<_> = ms
        .into_iter()
        .map(|m| accept::validate(m, &live, now))
        .collect();
    let ops: Vec<Op> = validated
        .iter()
        .filter_map(|v| v.as_ref().ok().cloned().map(Op::Accept))
        .collect();
    let mut results = shared.committer.submit_all(ops).await.into_iter();
    Ok(validated
        .into_iter()
        .map(|v| match v {
            Ok(_) => match accepted(results.next().unwrap_or(Err(CommitError::Closed))) {
                Ok(a) => BatchItem::Accepted(a),
                Err(e) => BatchItem::Error(e),
            },
            Err(e) => BatchItem::Error(e),
        })
        .collect())
}

fn stats(shared: &Shared) -> Stats {
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
            })
            .collect(),
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
                    match shared.store.get(&key) {
                        Ok(Some(r)) => Ok(Response::Message(view(&key, r))),
                        Ok(None) => Err(ErrorBody::new(
                            ErrorCode::NotFound,
                            format!("no message {id}"),
                        )),
                        Err(e) => Err(ErrorBody::new(ErrorCode::Internal, e.to_string())),
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
            Request::Stats => Ok(Response::Stats(stats(shared))),
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
                match shared.store.dead(limit) {
                    Ok(list) => Ok(Response::DeadList(bounded_views(list, shared.max_frame))),
                    Err(e) => Err(ErrorBody::new(ErrorCode::Internal, e.to_string())),
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
            Request::MintToken {
                tags,
                ids,
                admin,
                ttl_ms,
            } => crate::realtime::mint_token(&shared.live.current(), tags, ids, admin, ttl_ms),
            Request::Subscribe { .. } | Request::Unsubscribe { .. } => Err(ErrorBody::new(
                ErrorCode::Internal,
                "subscriptions are handled by the connection",
            )),
        };
    result.unwrap_or_else(Response::Error)
}
