//! Group commit: the single writer of the store.
//!
//! Every mutation (accept, claim, complete, cancel, ...) is a job on one channel. A
//! dedicated thread takes whatever jobs are waiting — one or thousands — applies them as
//! one store transaction, flushes once, and only then answers each job and publishes the
//! new events. So the batch size follows the load (no timer), an acknowledgement always
//! means "on disk", and subscribers never see an event that a crash could take back.
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

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("storage failure: {0}")]
    Store(String),
    #[error("the daemon is shutting down")]
    Closed,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<OpResult, CommitError>>,
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
    /// Starts the writer thread. It stops when every `Committer` clone is dropped, after a
    /// final flush.
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
        let handle = std::thread::Builder::new()
            .name("herald-commit".into())
            .spawn(move || writer(store, rx, durable_tx, events, wake))?;
        Ok((committer, handle))
    }

    /// Applies `op` durably and returns its result.
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
    durable: watch::Sender<u64>,
    events: broadcast::Sender<Arc<[Event]>>,
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
        let now = clock::now_ms();
        let result = store
            .commit(now, &ops)
            .and_then(|committed| store.flush().map(|()| committed));
        ops.clear();
        match result {
            Ok(committed) => {
                if let Some(last) = committed.events.last() {
                    durable.send_replace(last.seq);
                    let _ = events.send(committed.events.into());
                }
                if committed.scheduled {
                    wake.notify_one();
                }
                for (reply, result) in replies.drain(..).zip(committed.results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; the batch was not acknowledged");
                let err = CommitError::Store(e.to_string());
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
}
