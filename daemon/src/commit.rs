//! Group commit: the single writer of the store.
//!
//! Every mutation (accept, claim, complete, cancel, ...) is a job on one channel. A
//! dedicated writer thread takes whatever jobs are waiting — one or thousands — and applies
//! them as one store transaction; so the batch size follows the load (no timer). A second
//! thread flushes: while it makes batch N durable, the writer already applies batch N+1.
//!
//! Answers that promise durability — an accept, a cancel, a requeue, a webhook update, a
//! recorded reload — are sent only after the flush that covers them, and events are
//! published only once durable, so a subscriber never sees an event a crash could take
//! back. The dispatcher's own bookkeeping (claim, complete, prune) is answered as soon as
//! it is committed: if the process dies before the flush, the message is simply still
//! queued (or leased, and re-queued) on restart — at-least-once delivery, as documented.
//!
//! Owns: ordering of writes, the durable-seq watermark, event fan-out. Must not: validate
//! input (ipc/accept) or decide outcomes (dispatch).

use std::sync::Arc;
use std::thread::JoinHandle;

use herald_plugin_api::Event;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};

use crate::clock;
use crate::store::{Op, OpResult, Store};

/// Largest number of jobs in one transaction.
const MAX_BATCH: usize = 8192;

/// Committed batches waiting for the flusher; past this the writer waits (backpressure).
const FLUSH_QUEUE: usize = 8;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("storage failure: {0}")]
    Store(String),
    #[error("the daemon is shutting down")]
    Closed,
}

type Reply = oneshot::Sender<Result<OpResult, CommitError>>;

struct Job {
    op: Op,
    reply: Reply,
}

/// Whether the caller may only be answered once the op is on disk.
fn needs_durable_ack(op: &Op) -> bool {
    !matches!(op, Op::Claim { .. } | Op::Complete(_) | Op::Prune { .. })
}

/// A committed batch on its way to the disk.
struct Committed {
    events: Vec<Event>,
    replies: Vec<(Reply, OpResult)>,
}

/// Handle to the writer. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
    durable: watch::Receiver<u64>,
    events: broadcast::Sender<Arc<[Event]>>,
    /// Notified when a commit added schedule entries (the dispatcher looks again).
    pub wake: Arc<Notify>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("durable_seq", &*self.durable.borrow())
            .finish()
    }
}

impl Committer {
    /// Starts the writer and flusher threads. They stop when every `Committer` clone is
    /// dropped, after a final flush; the handle joins both.
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<(Committer, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(65_536);
        let (durable_tx, durable) = watch::channel(store.last_seq());
        let (events, _) = broadcast::channel(1024);
        let wake = Arc::new(Notify::new());
        let committer = Committer {
            tx,
            durable,
            events: events.clone(),
            wake: Arc::clone(&wake),
        };
        let (to_flush, flush_rx) = std::sync::mpsc::sync_channel(FLUSH_QUEUE);
        let flush_store = Arc::clone(&store);
        let flusher = std::thread::Builder::new()
            .name("herald-flush".into())
            .spawn(move || flusher(flush_store, flush_rx, durable_tx, events))?;
        let handle = std::thread::Builder::new()
            .name("herald-commit".into())
            .spawn(move || {
                writer(store, rx, to_flush, wake);
                let _ = flusher.join();
            })?;
        Ok((committer, handle))
    }

    /// Applies `op` and returns its result (after it is durable, for ops that promise it).
    pub async fn submit(&self, op: Op) -> Result<OpResult, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { op, reply })
            .await
            .map_err(|_| CommitError::Closed)?;
        rx.await.map_err(|_| CommitError::Closed)?
    }

    /// Applies several ops (they usually land in the same transaction).
    pub async fn submit_all(&self, ops: Vec<Op>) -> Vec<Result<OpResult, CommitError>> {
        let mut waiting = Vec::with_capacity(ops.len());
        for op in ops {
            let (reply, rx) = oneshot::channel();
            if self.tx.send(Job { op, reply }).await.is_err() {
                waiting.push(None);
            } else {
                waiting.push(Some(rx));
            }
        }
        let mut out = Vec::with_capacity(waiting.len());
        for rx in waiting {
            out.push(match rx {
                Some(rx) => rx.await.unwrap_or(Err(CommitError::Closed)),
                None => Err(CommitError::Closed),
            });
        }
        out
    }

    /// Whether the writer thread still takes jobs (`/readyz`).
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The highest event seq that is on disk. Readers never go past it.
    pub fn durable_seq(&self) -> u64 {
        *self.durable.borrow()
    }

    /// New events, in batches, after they are durable. Subscribe *before* reading
    /// [`Committer::durable_seq`] to miss nothing.
    pub fn events(&self) -> broadcast::Receiver<Arc<[Event]>> {
        self.events.subscribe()
    }
}

fn writer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    to_flush: std::sync::mpsc::SyncSender<Committed>,
    wake: Arc<Notify>,
) {
    let mut ops = Vec::new();
    let mut replies = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        ops.push(first.op);
        replies.push(first.reply);
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    ops.push(job.op);
                    replies.push(job.reply);
                }
                Err(_) => break,
            }
        }
        let durable: Vec<bool> = ops.iter().map(needs_durable_ack).collect();
        let result = store.commit(clock::now_ms(), &ops);
        ops.clear();
        match result {
            Ok(committed) => {
                // Claimable right away; an accept is only acknowledged after the flush.
                if committed.scheduled {
                    wake.notify_one();
                }
                let mut deferred = Vec::new();
                for ((reply, result), durable) in
                    replies.drain(..).zip(committed.results).zip(durable)
                {
                    if durable {
                        deferred.push((reply, result));
                    } else {
                        let _ = reply.send(Ok(result));
                    }
                }
                let batch = Committed {
                    events: committed.events,
                    replies: deferred,
                };
                if to_flush.send(batch).is_err() {
                    tracing::error!("the flush thread is gone; stopping the writer");
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; the batch was not applied");
                let err = CommitError::Store(e.to_string());
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}

fn flusher(
    store: Arc<dyn Store>,
    rx: std::sync::mpsc::Receiver<Committed>,
    durable: watch::Sender<u64>,
    events: broadcast::Sender<Arc<[Event]>>,
) {
    let mut pending = Vec::new();
    while let Ok(first) = rx.recv() {
        pending.push(first);
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        // One flush covers every batch committed before it started.
        match store.flush() {
            Ok(()) => {
                for batch in pending.drain(..) {
                    if let Some(last) = batch.events.last() {
                        durable.send_replace(last.seq);
                        let _ = events.send(batch.events.into());
                    }
                    for (reply, result) in batch.replies {
                        let _ = reply.send(Ok(result));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "flush failed; the batch was not acknowledged");
                let err = CommitError::Store(e.to_string());
                for batch in pending.drain(..) {
                    for (reply, _) in batch.replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        }
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
}
