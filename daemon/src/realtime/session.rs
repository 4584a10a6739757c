//! One stream, transport-independent: a follower (`events::follow`) that puts the events
//! the token and the filter allow on a bounded queue, and a pump that hands them to the
//! transport (WebSocket or SSE), sends keep-alives, and closes with where to resume.
//!
//! Bounds: the queue holds `realtime.client_buffer` events; the transport holds what its
//! socket holds. A client that takes nothing for `realtime.stall_timeout` is closed (close
//! code 4008 / a final `close` event) with `resume_from`, and its follower stops — it never
//! makes the daemon buffer more, and it never slows anyone else (the follower reads the
//! durable log, not the committer). The close itself gets [`CLOSE_GRACE`] stall periods
//! to reach the client.
//!
//! Owns: the queue, stall detection, the close reason and `resume_from`. Must not: parse
//! requests or check tokens (`realtime`), frame bytes (`ws`, `sse`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_plugin_api::Event;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock;
use crate::commit::Committer;
use crate::events::{self, End, Sink, Start};
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::realtime::filter::StreamFilter;
use crate::realtime::token::Scope;
use crate::store::Store;

/// How many stall periods the final close may take to reach a client.
pub const CLOSE_GRACE: u32 = 2;

/// An event ready for the wire: its JSON (the socket codec's event shape plus `epoch`).
#[derive(Debug)]
pub struct Item {
    pub seq: u64,
    pub json: String,
}

/// Why a stream ends, and where its client resumes (`from_seq`, or the SSE
/// `Last-Event-ID` the browser sends by itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// WebSocket close code.
    pub code: u16,
    /// `slow`, `token_expired`, `shutdown`, `error`.
    pub reason: &'static str,
    pub resume_from: u64,
    pub epoch: String,
}

impl Close {
    /// The close reason as JSON (it fits a WebSocket close frame's 123 bytes).
    pub fn json(&self) -> String {
        serde_json::json!({
            "reason": self.reason,
            "resume_from": self.resume_from,
            "epoch": self.epoch,
        })
        .to_string()
    }
}

/// What a transport does with the pump's output. A future that does not finish within the
/// stall timeout means the client is not reading.
pub trait Transport: Send {
    /// Hands an event to the connection; returns once it is queued behind everything sent
    /// before (it will reach the client before the close).
    fn event(&mut self, item: &Item) -> impl Future<Output = Result<(), ()>> + Send;
    /// Pushes what was handed towards the client.
    fn flush(&mut self) -> impl Future<Output = Result<(), ()>> + Send;
    fn keepalive(&mut self) -> impl Future<Output = Result<(), ()>> + Send;
    /// The final message (close frame / `close` event).
    fn close(&mut self, close: &Close) -> impl Future<Output = ()> + Send;
    /// Gives up on the connection (the close did not get through).
    fn abort(&mut self);
}

/// What a stream needs from the daemon.
#[derive(Clone)]
pub struct Context {
    pub store: Arc<dyn Store>,
    /// Replays of the log, bounded in time.
    pub reads: crate::reads::Reads,
    pub committer: Committer,
    pub metrics: Arc<Metrics>,
    /// Live events by tag, for streams whose token is scoped to tags only.
    pub fanout: Arc<Fanout>,
    pub shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// The stream's parameters, after the request was checked.
#[derive(Debug, Clone)]
pub struct Params {
    pub scope: Scope,
    pub filter: StreamFilter,
    pub from_seq: Option<u64>,
    pub client_buffer: usize,
    pub stall: Duration,
    pub keepalive: Duration,
}

/// The follower's sink: the bounded queue. Waits while it is full (the pump decides when
/// waiting has lasted too long, and then drops the receiver).
struct Queue {
    tx: mpsc::Sender<Item>,
    epoch: String,
}

impl Sink for Queue {
    async fn deliver(&mut self, event: &Event) -> bool {
        let mut json = match serde_json::to_string(event) {
            Ok(j) => j,
            Err(_) => return false,
        };
        // `{...}` → `{...,"epoch":"..."}`: the socket's event shape, plus the log it is from.
        json.pop();
        json.push_str(",\"epoch\":\"");
        json.push_str(&self.epoch);
        json.push_str("\"}");
        self.tx
            .send(Item {
                seq: event.seq,
                json,
            })
            .await
            .is_ok()
    }
}

/// Runs one stream to its end over `transport`.
pub async fn run<T: Transport>(ctx: Context, p: Params, mut transport: T) {
    let epoch = ctx.store.epoch();
    // A token scoped to tags sees only events carrying one of them: its follower is woken
    // only for those (the fanout's tag index), not for every event of every stream.
    let scope = &p.scope;
    let start = if !scope.admin && scope.ids.is_empty() && !scope.tags.is_empty() {
        Start::routed(&ctx.fanout, &scope.tags, ctx.store.as_ref(), &ctx.committer)
    } else {
        Start::now(ctx.store.as_ref(), &ctx.committer)
    };
    let first = start.cursor(p.from_seq);
    let (tx, mut rx) = mpsc::channel(p.client_buffer);
    let (ended_tx, mut ended) = oneshot::channel::<(u64, &'static str, u16)>();

    // The follower: log → queue, until the token expires, the daemon stops, or the pump
    // drops the queue.
    let follower = {
        let ctx = ctx.clone();
        let p = p.clone();
        let epoch = epoch.clone();
        tokio::spawn(async move {
            let mut next = first;
            let mut sink = Queue { tx, epoch };
            let expires_in =
                Duration::from_millis(p.scope.expires_at.saturating_sub(clock::now_ms()));
            let mut shutdown = ctx.shutdown.clone();
            let (reason, code) = tokio::select! {
                end = events::follow(
                    start,
                    &mut next,
                    &ctx.reads,
                    &ctx.committer,
                    |e| p.scope.allows(e) && p.filter.matches(e),
                    &mut sink,
                ) => match end {
                    End::Sink => ("slow", 4008),
                    End::LogError => ("error", 1011),
                    End::Closed => ("shutdown", 1001),
                },
                _ = tokio::time::sleep(expires_in) => ("token_expired", 4001),
                _ = shutdown.wait_for(|s| *s) => ("shutdown", 1001),
            };
            drop(sink);
            let _ = ended_tx.send((next, reason, code));
        })
    };

    let mut resume_from = first;
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + p.keepalive, p.keepalive);
    let close = loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(item) => {
                    // Handed = it reaches the client before the close.
                    match tokio::time::timeout(p.stall, transport.event(&item)).await {
                        Ok(Ok(())) => resume_from = item.seq + 1,
                        Ok(Err(())) => break None,
                        Err(_) => break Some(("slow", 4008)),
                    }
                    if rx.is_empty() {
                        match tokio::time::timeout(p.stall, transport.flush()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(())) => break None,
                            Err(_) => break Some(("slow", 4008)),
                        }
                    }
                }
                // The follower ended (token expiry, shutdown) and the queue is empty.
                None => break Some(("follower", 0)),
            },
            _ = ticker.tick() => match tokio::time::timeout(p.stall, transport.keepalive()).await {
                Ok(Ok(())) => {}
                Ok(Err(())) => break None,
                Err(_) => break Some(("slow", 4008)),
            },
        }
    };
    // Stop the follower (if it is still going) and learn where it stopped.
    drop(rx);
    let followed = (&mut ended).await.ok();
    let _ = follower.await;
    let Some((reason, code)) = close else {
        return; // the client went away
    };
    let (reason, code, resume_from) = match (reason, followed) {
        ("follower", Some((next, reason, code))) => (reason, code, next),
        ("follower", None) => ("error", 1011, resume_from),
        (reason, _) => (reason, code, resume_from),
    };
    if reason == "slow" {
        ctx.metrics.streams_stalled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            resume_from,
            "closing an event stream whose client stopped reading"
        );
    }
    let close = Close {
        code,
        reason,
        resume_from,
        epoch,
    };
    let grace = p.stall * CLOSE_GRACE;
    if tokio::time::timeout(grace, transport.close(&close))
        .await
        .is_err()
    {
        transport.abort();
    }
}
