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
//! **Space.** [`refusal`] is the one place that says which writes go ahead when free space
//! is short (the levels come from `space`): below `daemon.min_free` no new messages; below
//! the critical level only the outcomes of deliveries already made.
//!
//! **Health.** A commit or flush that fails with an I/O error, or does not finish within
//! `daemon.storage_timeout`, marks the store *failed*: every client waiting on a durable
//! answer is answered `storage_unavailable` at once (never acknowledged, so nothing is
//! lost), new writes are refused, and the dispatcher stops claiming. `stats` goes on, and
//! reads are answered — by the engine, or `storage_unavailable` when a read waits behind the
//! stuck write (`crate::reads` bounds them). Whether it comes back without a restart
//! depends on what happened:
//!
//! - **An error is final until a restart.** sled keeps a failed log write as a permanent
//!   error of the open database — every later write returns it and a flush may wait for
//!   ever — so nothing written after it could be called durable. The writer stops calling
//!   the store; a restart re-reads the log up to its last complete write (and recovery
//!   re-queues what was leased).
//! - **A stall heals.** When the commit or flush that overran the bound finishes
//!   successfully, everything before it is durable and writing resumes by itself. The
//!   clients answered `storage_unavailable` meanwhile may find their message stored after
//!   all; a retry with the same idempotency key returns it instead of making a second.
//! - **A lost connection fails one batch.** A shared engine reports a connection that
//!   dropped, a server restart or a session bound that ran out as
//!   [`StoreError::Unavailable`]: that batch's clients are answered `storage_unavailable`
//!   (never acknowledged: the batch was rolled back, or its commit's outcome is unknown)
//!   and the next batch runs on a fresh connection. The store is not marked failed.
//!
//! The dispatcher's bookkeeping is not cut short by a stall: it waits for the store's
//! real answer, so a claim that lands late is still delivered rather than left leased.
//! Shutdown never waits on a stuck store: `daemon` exits after `daemon.shutdown_grace`
//! whatever these threads are doing, logging [`Committer::pending`] — none of it was
//! acknowledged.
//!
//! Owns: ordering of writes, the durable-seq watermark, event fan-out, the store's health,
//! which writes the free space admits. Must not: validate input (ipc/accept) or decide
//! outcomes (dispatch).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use herald_plugin_api::Event;
use herald_protocol::{StorageState, StorageStats};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};

use crate::clock;
use crate::space::{Level, Space, critical_of};
use crate::store::{Op, OpResult, Store, StoreError};

/// Largest number of jobs in one transaction.
const MAX_BATCH: usize = 8192;

/// Committed batches waiting for the flusher; past this the writer waits (backpressure).
const FLUSH_QUEUE: usize = 8;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The batch was not applied (e.g. a corrupt record); the store is still usable.
    #[error("storage failure: {0}")]
    Store(String),
    /// Refused by the free-space reserve; the message says how much is free.
    #[error("{0}")]
    StorageFull(String),
    /// The store failed or stalled; the message says why.
    #[error("{0}")]
    Unavailable(String),
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
    !matches!(
        op,
        Op::Claim { .. }
            | Op::Complete(_)
            | Op::Prune { .. }
            | Op::ClaimProbe { .. }
            | Op::Renew { .. }
    )
}

/// Why a write does not go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Free space is short (at the given level).
    Space(Level),
    /// The store has failed or stalled.
    Failed,
}

/// Which writes go ahead when the store has failed or free space is short — the one place
/// that says so.
///
/// A completion is always written: the provider already has the message, and losing the
/// outcome would send it again (and leave the message leased until a restart). Recovery
/// runs once, at start, after the start-up space check. New messages stop below the
/// reserve. Below the critical level everything else waits too — claims (the queue stays
/// put), cancels, webhook updates (providers retry), notes, the operator's suppression-list
/// changes and pruning — keeping the last of the space for outcomes.
fn refusal(op: &Op, level: Level, failed: bool) -> Option<Refused> {
    match op {
        Op::Complete(_) | Op::Recover => None,
        _ if failed => Some(Refused::Failed),
        // Keeping a lease writes nothing new, and losing it would have the message sent
        // again by another daemon.
        Op::Renew { .. } => None,
        Op::Accept(_) | Op::Requeue(_) => (level != Level::Ok).then_some(Refused::Space(level)),
        Op::Claim { .. }
        | Op::ClaimProbe { .. }
        | Op::Cancel(_)
        | Op::Status { .. }
        | Op::Inbound { .. }
        | Op::Note { .. }
        | Op::Suppress { .. }
        | Op::Unsuppress { .. }
        | Op::Prune { .. } => (level == Level::Critical).then_some(Refused::Space(level)),
        // A repair writes little (it re-queues or re-indexes what is already stored); a
        // check alone writes nothing.
        Op::Check { repair } => {
            (*repair && level == Level::Critical).then_some(Refused::Space(level))
        }
    }
}

/// The two threads that call into the store.
#[derive(Debug, Clone, Copy)]
enum Thread {
    Writer = 0,
    Flusher = 1,
}

impl Thread {
    fn doing(self) -> &'static str {
        match self {
            Thread::Writer => "a commit",
            Thread::Flusher => "a flush",
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    /// The first I/O error: final.
    error: Option<String>,
    /// Which thread is stuck past the bound.
    stalled: [bool; 2],
}

/// The store's health, shared by the committer handles, both threads and the watchdog.
struct Health {
    faults: Mutex<Faults>,
    /// Whether any thread is marked stalled (lets `leave` skip the lock).
    any_stalled: AtomicBool,
    /// Monotonic ms at which each thread entered the store; 0 while it is not in it.
    busy_since: [AtomicU64; 2],
    bound: Duration,
    /// The reason while failed, `None` while healthy; waiters watch it.
    failed: watch::Sender<Option<Arc<str>>>,
    /// Jobs sent and not yet taken by the writer.
    queued: AtomicU64,
    /// Committed batches, and the durable answers they hold, not yet flushed.
    unflushed_batches: AtomicU64,
    unflushed_answers: AtomicU64,
    /// The writer thread has ended.
    stopped: AtomicBool,
}

impl Health {
    fn new(bound: Duration) -> Health {
        Health {
            faults: Mutex::new(Faults::default()),
            any_stalled: AtomicBool::new(false),
            busy_since: [AtomicU64::new(0), AtomicU64::new(0)],
            bound,
            failed: watch::channel(None).0,
            queued: AtomicU64::new(0),
            unflushed_batches: AtomicU64::new(0),
            unflushed_answers: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reason(&self) -> Option<Arc<str>> {
        self.failed.borrow().clone()
    }

    /// The final error, if there was one.
    fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    fn publish(&self, f: &Faults) {
        let reason: Option<Arc<str>> = match (&f.error, f.stalled) {
            (Some(e), _) => Some(e.as_str().into()),
            (None, [true, _]) => Some(self.stall_reason(Thread::Writer).into()),
            (None, [_, true]) => Some(self.stall_reason(Thread::Flusher).into()),
            (None, _) => None,
        };
        self.failed.send_if_modified(|r| {
            let changed = r.as_deref() != reason.as_deref();
            *r = reason;
            changed
        });
    }

    fn stall_reason(&self, t: Thread) -> String {
        format!(
            "the store did not finish {} within daemon.storage_timeout ({} s); writes are refused until it does. Requests waiting on it were not acknowledged (they may or may not have been stored: retry with the same idempotency_key)",
            t.doing(),
            self.bound.as_secs_f32()
        )
    }

    fn fail(&self, t: Thread, e: &StoreError) {
        let mut f = self.lock();
        if f.error.is_none() {
            let reason = format!(
                "{} failed ({e}); the store refuses writes until heraldd is restarted. Requests waiting on it were not acknowledged; check the disk and the daemon's log",
                t.doing()
            );
            tracing::error!(error = %e, "{} failed: the store is marked failed; restart heraldd once the cause is fixed", t.doing());
            f.error = Some(reason);
            self.publish(&f);
        }
    }

    fn enter(&self, t: Thread) {
        self.busy_since[t as usize].store(clock::monotonic_ms(), Ordering::SeqCst);
    }

    fn leave(&self, t: Thread) {
        self.busy_since[t as usize].store(0, Ordering::SeqCst);
        if self.any_stalled.load(Ordering::SeqCst) {
            let mut f = self.lock();
            if f.stalled[t as usize] {
                f.stalled[t as usize] = false;
                self.any_stalled
                    .store(f.stalled.iter().any(|s| *s), Ordering::SeqCst);
                if f.error.is_none() {
                    tracing::warn!(
                        "{} that had stalled finished: the store is writable again",
                        t.doing()
                    );
                }
                self.publish(&f);
            }
        }
    }

    /// Marks a thread stalled if it has been in the store longer than the bound.
    fn check(&self, now: u64) {
        for t in [Thread::Writer, Thread::Flusher] {
            let since = self.busy_since[t as usize].load(Ordering::SeqCst);
            if since == 0 || now.saturating_sub(since) < self.bound.as_millis() as u64 {
                continue;
            }
            let mut f = self.lock();
            // Still the same call (it did not leave meanwhile)?
            if self.busy_since[t as usize].load(Ordering::SeqCst) == since && !f.stalled[t as usize]
            {
                f.stalled[t as usize] = true;
                self.any_stalled.store(true, Ordering::SeqCst);
                tracing::error!(
                    bound_s = self.bound.as_secs_f32(),
                    "{} has not finished within daemon.storage_timeout: the store is marked failed until it does",
                    t.doing()
                );
                self.publish(&f);
            }
        }
    }
}

/// What the store has not made durable yet (logged when shutdown cannot wait for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Jobs sent to the writer and not yet applied.
    pub queued: u64,
    /// Committed batches not yet flushed, and the durable answers waiting on them.
    pub unflushed_batches: u64,
    pub unflushed_answers: u64,
    /// How long the writer and the flusher have been inside the store (0: not in it).
    pub writer_busy_ms: u64,
    pub flusher_busy_ms: u64,
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
    health: Arc<Health>,
    space: Arc<Space>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("durable_seq", &*self.durable.borrow())
            .finish()
    }
}

/// Reads what is still pending after every [`Committer`] is gone.
#[derive(Clone)]
pub struct PendingProbe(Arc<Health>);

impl std::fmt::Debug for PendingProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PendingProbe").field(&self.get()).finish()
    }
}

impl PendingProbe {
    /// Why the store refuses writes, if it does.
    pub fn failure(&self) -> Option<String> {
        self.0.reason().map(|r| r.to_string())
    }

    pub fn get(&self) -> Pending {
        let h = &self.0;
        let now = clock::monotonic_ms();
        let busy = |t: Thread| match h.busy_since[t as usize].load(Ordering::SeqCst) {
            0 => 0,
            since => now.saturating_sub(since),
        };
        Pending {
            queued: h.queued.load(Ordering::SeqCst),
            unflushed_batches: h.unflushed_batches.load(Ordering::SeqCst),
            unflushed_answers: h.unflushed_answers.load(Ordering::SeqCst),
            writer_busy_ms: busy(Thread::Writer),
            flusher_busy_ms: busy(Thread::Flusher),
        }
    }
}

impl Committer {
    /// Starts the writer and flusher threads, and a watchdog task (so it must be called
    /// inside a tokio runtime) that marks the store failed when a commit or flush takes
    /// longer than `bound`. The threads stop when every `Committer` clone is dropped, after
    /// a final flush; the handle joins both.
    pub fn start(
        store: Arc<dyn Store>,
        space: Arc<Space>,
        bound: Duration,
    ) -> std::io::Result<(Committer, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(65_536);
        let (durable_tx, durable) = watch::channel(store.last_seq());
        let (events, _) = broadcast::channel(1024);
        let wake = Arc::new(Notify::new());
        let health = Arc::new(Health::new(bound));
        let committer = Committer {
            tx,
            durable,
            events: events.clone(),
            wake: Arc::clone(&wake),
            health: Arc::clone(&health),
            space,
        };
        let (to_flush, flush_rx) = std::sync::mpsc::sync_channel(FLUSH_QUEUE);
        let flush_store = Arc::clone(&store);
        let flush_health = Arc::clone(&health);
        // A store other daemons write to: its log, not this daemon's batches, is what is
        // published (see `log_follower`); the flusher only wakes the follower.
        let (log_wake, log_woken) = std::sync::mpsc::channel();
        let publish = if store.notify_appends(log_wake.clone()) {
            let follow_store = Arc::clone(&store);
            let follow_health = Arc::clone(&health);
            let follow_wake = Arc::clone(&wake);
            let follow_events = events.clone();
            std::thread::Builder::new()
                .name("herald-log".into())
                .spawn(move || {
                    log_follower(
                        follow_store,
                        log_woken,
                        durable_tx,
                        follow_events,
                        follow_wake,
                        follow_health,
                    )
                })?;
            Publish::Wake(log_wake)
        } else {
            Publish::Batches(durable_tx)
        };
        let flusher = std::thread::Builder::new()
            .name("herald-flush".into())
            .spawn(move || flusher(flush_store, flush_rx, publish, events, flush_health))?;
        let writer_health = Arc::clone(&health);
        let handle = std::thread::Builder::new()
            .name("herald-commit".into())
            .spawn(move || {
                writer(store, rx, to_flush, wake, &writer_health);
                let _ = flusher.join();
                writer_health.stopped.store(true, Ordering::SeqCst);
            })?;
        tokio::spawn(watchdog(health));
        Ok((committer, handle))
    }

    /// The refusal for `op` right now, as an error.
    fn admit(&self, op: &Op) -> Result<(), CommitError> {
        let failed = self.health.failed.borrow().is_some();
        match refusal(op, self.space.level(), failed) {
            None => Ok(()),
            Some(Refused::Failed) => Err(self.unavailable()),
            Some(Refused::Space(level)) => {
                let snap = self.space.snapshot();
                Err(CommitError::StorageFull(if level == Level::Critical {
                    snap.critical(self.space.dir())
                } else {
                    snap.refusal(self.space.dir())
                }))
            }
        }
    }

    fn unavailable(&self) -> CommitError {
        CommitError::Unavailable(
            self.health
                .reason()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "the store failed".into()),
        )
    }

    /// Queues `op` and returns the receiver of its answer.
    async fn enqueue(
        &self,
        op: Op,
    ) -> Result<oneshot::Receiver<Result<OpResult, CommitError>>, CommitError> {
        self.admit(&op)?;
        let durable = needs_durable_ack(&op);
        let (reply, rx) = oneshot::channel();
        self.health.queued.fetch_add(1, Ordering::Relaxed);
        let mut failed = self.health.failed.subscribe();
        let sent = if durable {
            // A stuck writer may leave the queue full: do not wait on it for ever.
            tokio::select! {
                r = self.tx.send(Job { op, reply }) => r.map_err(|_| CommitError::Closed),
                _ = failed.wait_for(Option::is_some) => Err(self.unavailable()),
            }
        } else {
            self.tx
                .send(Job { op, reply })
                .await
                .map_err(|_| CommitError::Closed)
        };
        if sent.is_err() {
            self.health.queued.fetch_sub(1, Ordering::Relaxed);
        }
        sent.map(|()| rx)
    }

    /// Waits for the answer of a job that promises durability: cut short, with
    /// `Unavailable`, when the store fails or stalls meanwhile.
    async fn answer(
        &self,
        rx: oneshot::Receiver<Result<OpResult, CommitError>>,
        durable: bool,
    ) -> Result<OpResult, CommitError> {
        if !durable {
            return rx.await.unwrap_or(Err(CommitError::Closed));
        }
        let mut failed = self.health.failed.subscribe();
        tokio::select! {
            biased;
            r = rx => r.unwrap_or(Err(CommitError::Closed)),
            _ = failed.wait_for(Option::is_some) => Err(self.unavailable()),
        }
    }

    /// Applies `op` and returns its result (after it is durable, for ops that promise it).
    pub async fn submit(&self, op: Op) -> Result<OpResult, CommitError> {
        let durable = needs_durable_ack(&op);
        let rx = self.enqueue(op).await?;
        self.answer(rx, durable).await
    }

    /// Applies several ops (they usually land in the same transaction).
    pub async fn submit_all(&self, ops: Vec<Op>) -> Vec<Result<OpResult, CommitError>> {
        let mut waiting = Vec::with_capacity(ops.len());
        for op in ops {
            let durable = needs_durable_ack(&op);
            waiting.push((self.enqueue(op).await, durable));
        }
        let mut out = Vec::with_capacity(waiting.len());
        for (rx, durable) in waiting {
            out.push(match rx {
                Ok(rx) => self.answer(rx, durable).await,
                Err(e) => Err(e),
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

    /// The free-space view the committer admits writes by.
    pub fn space(&self) -> &Arc<Space> {
        &self.space
    }

    /// Why the store refuses writes, while it has failed or stalled.
    pub fn failure(&self) -> Option<String> {
        self.health.reason().map(|r| r.to_string())
    }

    /// Whether the store failed in a way only a restart clears (not a stall, which heals).
    pub fn failed_for_good(&self) -> bool {
        self.health.error().is_some()
    }

    /// Why the dispatcher must not claim now, if it must not.
    pub fn claims_paused(&self) -> Option<String> {
        if let Some(r) = self.health.reason() {
            return Some(r.to_string());
        }
        let snap = self.space.snapshot();
        (snap.level == Level::Critical).then(|| snap.critical(self.space.dir()))
    }

    /// The state of the store as `stats` reports it. Ready (for `/readyz`) means
    /// `state == StorageState::Ok`: sends are accepted and deliveries run.
    pub fn storage(&self) -> StorageStats {
        let snap = self.space.snapshot();
        let dir = self.space.dir();
        let (state, detail) = match (self.health.reason(), snap.level) {
            (Some(r), _) => (StorageState::Failed, Some(r.to_string())),
            (None, Level::Ok) => (StorageState::Ok, None),
            (None, Level::Low) => (StorageState::Low, Some(snap.refusal(dir))),
            (None, Level::Critical) => (StorageState::Critical, Some(snap.critical(dir))),
        };
        StorageStats {
            state,
            free_bytes: snap.free,
            min_free_bytes: snap.reserve,
            critical_bytes: critical_of(snap.reserve),
            detail,
        }
    }

    /// Reads what is still pending, also after every committer is dropped.
    pub fn pending_probe(&self) -> PendingProbe {
        PendingProbe(Arc::clone(&self.health))
    }
}

/// Marks the store failed when a commit or flush overruns the bound; ends with the writer.
async fn watchdog(health: Arc<Health>) {
    let period = (health.bound / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    while !health.stopped.load(Ordering::SeqCst) {
        tokio::time::sleep(period).await;
        health.check(clock::monotonic_ms());
    }
}

fn writer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    to_flush: std::sync::mpsc::SyncSender<Committed>,
    wake: Arc<Notify>,
    health: &Health,
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
        health.queued.fetch_sub(ops.len() as u64, Ordering::Relaxed);
        // After an error the store is not touched again (it may hang); every job is
        // answered with the error.
        if let Some(reason) = health.error() {
            ops.clear();
            for reply in replies.drain(..) {
                let _ = reply.send(Err(CommitError::Unavailable(reason.clone())));
            }
            continue;
        }
        let durable: Vec<bool> = ops.iter().map(needs_durable_ack).collect();
        health.enter(Thread::Writer);
        let result = store.commit(clock::now_ms(), &ops);
        health.leave(Thread::Writer);
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
                health.unflushed_batches.fetch_add(1, Ordering::SeqCst);
                health
                    .unflushed_answers
                    .fetch_add(deferred.len() as u64, Ordering::SeqCst);
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
                let err = match &e {
                    // A shared store's connection was lost: this batch was not applied (or
                    // its outcome is unknown), so nothing in it is acknowledged; the next
                    // batch connects afresh.
                    StoreError::Unavailable(_) => {
                        tracing::warn!(error = %e, jobs = replies.len(), "the store was unavailable; the batch was not acknowledged");
                        CommitError::Unavailable(format!(
                            "{e}; the request was not acknowledged (it may or may not have been stored): retry it, with the same idempotency_key"
                        ))
                    }
                    StoreError::Io(_) => {
                        health.fail(Thread::Writer, &e);
                        CommitError::Unavailable(health.error().unwrap_or_else(|| e.to_string()))
                    }
                    _ => {
                        tracing::error!(error = %e, "commit failed; the batch was not applied");
                        CommitError::Store(e.to_string())
                    }
                };
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// How durable batches reach subscribers.
enum Publish {
    /// This daemon is the store's only writer: its batches, in order, are the log.
    Batches(watch::Sender<u64>),
    /// Other daemons write too: wake the log follower, which publishes the store's log.
    Wake(std::sync::mpsc::Sender<()>),
}

/// Between polls of a shared log when no wake-up comes.
const LOG_POLL: Duration = Duration::from_millis(250);

/// Publishes a shared store's log in seq order — every daemon's events — as it becomes
/// visible: woken by this daemon's flushes and the store's notifications, polling as the
/// fallback. The store's seq order is its commit order, so reading from the last
/// published seq never skips an event that commits late. Wakes the dispatcher when
/// another daemon queued something.
fn log_follower(
    store: Arc<dyn Store>,
    woken: std::sync::mpsc::Receiver<()>,
    durable: watch::Sender<u64>,
    events: broadcast::Sender<Arc<[Event]>>,
    dispatch: Arc<Notify>,
    health: Arc<Health>,
) {
    let mut next = *durable.borrow() + 1;
    while !health.stopped.load(Ordering::SeqCst) {
        match woken.recv_timeout(LOG_POLL) {
            Ok(()) => while woken.try_recv().is_ok() {},
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        loop {
            let page = match store.events_from(next, 512) {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the shared event log failed; retrying");
                    break;
                }
            };
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            let full = page.len() == 512;
            if page
                .iter()
                .any(|e| e.kind == herald_plugin_api::EventKind::Queued)
            {
                dispatch.notify_one();
            }
            next = last + 1;
            durable.send_replace(last);
            let _ = events.send(page.into());
            if !full {
                break;
            }
        }
    }
}

fn flusher(
    store: Arc<dyn Store>,
    rx: std::sync::mpsc::Receiver<Committed>,
    publish: Publish,
    events: broadcast::Sender<Arc<[Event]>>,
    health: Arc<Health>,
) {
    let mut pending = Vec::new();
    while let Ok(first) = rx.recv() {
        pending.push(first);
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let result = match health.error() {
            // The store is not touched after an error: it may never return.
            Some(reason) => Err(reason),
            None => {
                // One flush covers every batch committed before it started.
                health.enter(Thread::Flusher);
                let r = store.flush();
                health.leave(Thread::Flusher);
                r.map_err(|e| {
                    health.fail(Thread::Flusher, &e);
                    health.error().unwrap_or_else(|| e.to_string())
                })
            }
        };
        let answers: u64 = pending.iter().map(|b| b.replies.len() as u64).sum();
        health
            .unflushed_batches
            .fetch_sub(pending.len() as u64, Ordering::SeqCst);
        health
            .unflushed_answers
            .fetch_sub(answers, Ordering::SeqCst);
        match result {
            Ok(()) => {
                for batch in pending.drain(..) {
                    if let Some(last) = batch.events.last() {
                        match &publish {
                            Publish::Batches(durable) => {
                                durable.send_replace(last.seq);
                                let _ = events.send(batch.events.into());
                            }
                            Publish::Wake(wake) => {
                                let _ = wake.send(());
                            }
                        }
                    }
                    for (reply, result) in batch.replies {
                        let _ = reply.send(Ok(result));
                    }
                }
            }
            Err(reason) => {
                let err = CommitError::Unavailable(reason);
                for batch in pending.drain(..) {
                    for (reply, _) in batch.replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        }
    }
    if health.error().is_none() {
        health.enter(Thread::Flusher);
        if let Err(e) = store.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
        health.leave(Thread::Flusher);
    }
}

#[cfg(test)]
mod tests {
    //! The real sled store, with faults injected at the `Store` boundary: a flush that
    //! fails (as on ENOSPC) or blocks (as sled's `make_stable` did on a full disk).
    use std::time::Instant;

    use herald_plugin_api::State;

    use super::*;
    use crate::space::{Measured, MinFree};
    use crate::store::faulty::{Faulty, Flush, sms as msg};
    use crate::store::{Completion, MsgId, new_id};

    fn completion(id: MsgId) -> Op {
        Op::Complete(Completion {
            id,
            attempt: 1,
            fence: 0,
            state: State::Sent,
            provider: Some("hook".into()),
            provider_message_id: None,
            detail: None,
            due_at: None,
            suppress: false,
            attempt_used: true,
            index_provider_id: false,
            breakers: Vec::new(),
            breaker_events: Vec::new(),
            max_attempts: 3,
        })
    }

    fn start(store: Arc<Faulty>, space: Space, bound: Duration) -> Committer {
        Committer::start(store, Arc::new(space), bound).unwrap().0
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn which_writes_each_level_admits() {
        let id = new_id();
        let ops = [
            ("accept", Op::Accept(msg())),
            ("requeue", Op::Requeue(id)),
            (
                "claim",
                Op::Claim {
                    limit: 1,
                    lease_ms: 1,
                    turn: 0,
                },
            ),
            ("cancel", Op::Cancel(id)),
            (
                "note",
                Op::Note {
                    kind: herald_plugin_api::EventKind::ConfigReloaded,
                    detail: String::new(),
                },
            ),
            (
                "prune",
                Op::Prune {
                    before: 0,
                    limit: 1,
                },
            ),
            ("complete", completion(id)),
            ("recover", Op::Recover),
        ];
        let admitted = |level, failed| -> Vec<&str> {
            ops.iter()
                .filter(|(_, op)| refusal(op, level, failed).is_none())
                .map(|(name, _)| *name)
                .collect()
        };
        assert_eq!(admitted(Level::Ok, false).len(), ops.len());
        assert_eq!(
            admitted(Level::Low, false),
            ["claim", "cancel", "note", "prune", "complete", "recover"]
        );
        assert_eq!(admitted(Level::Critical, false), ["complete", "recover"]);
        assert_eq!(admitted(Level::Ok, true), ["complete", "recover"]);
    }

    #[tokio::test]
    async fn a_failed_flush_answers_the_waiting_clients_and_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let store = Faulty::open(dir.path(), Flush::Fail);
        let c = start(
            Arc::clone(&store),
            Space::unlimited(dir.path()),
            Duration::from_secs(30),
        );
        let err = c.submit(Op::Accept(msg())).await.unwrap_err();
        let CommitError::Unavailable(reason) = &err else {
            panic!("{err:?}")
        };
        assert!(
            reason.contains("No space left on device") && reason.contains("restarted"),
            "{reason}"
        );
        assert_eq!(c.storage().state, StorageState::Failed);
        assert!(c.claims_paused().is_some());
        // Final: the store is not touched again, even once it would work.
        store.set(Flush::Pass);
        let commits = store.commits.load(Ordering::SeqCst);
        assert!(matches!(
            c.submit(Op::Accept(msg())).await,
            Err(CommitError::Unavailable(_))
        ));
        // A completion is admitted, and answered by the writer without the store.
        assert!(matches!(
            c.submit(completion(new_id())).await,
            Err(CommitError::Unavailable(_))
        ));
        assert_eq!(store.commits.load(Ordering::SeqCst), commits);
        let p = c.pending_probe().get();
        assert_eq!(
            (p.queued, p.unflushed_batches, p.unflushed_answers),
            (0, 0, 0)
        );
    }

    #[tokio::test]
    async fn a_stalled_flush_is_reported_to_waiting_clients_and_heals() {
        let dir = tempfile::tempdir().unwrap();
        let store = Faulty::open(dir.path(), Flush::Block);
        let c = start(
            Arc::clone(&store),
            Space::unlimited(dir.path()),
            Duration::from_millis(300),
        );
        let m = msg();
        let waiting = tokio::spawn({
            let c = c.clone();
            let m = m.clone();
            async move { c.submit(Op::Accept(m)).await }
        });
        let err = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the waiting client is answered")
            .unwrap()
            .unwrap_err();
        let CommitError::Unavailable(reason) = &err else {
            panic!("{err:?}")
        };
        assert!(
            reason.contains("did not finish a flush within daemon.storage_timeout")
                && reason.contains("idempotency_key"),
            "{reason}"
        );
        let p = c.pending_probe().get();
        assert_eq!((p.unflushed_batches, p.unflushed_answers), (1, 1), "{p:?}");
        assert!(p.flusher_busy_ms >= 300, "{p:?}");
        // While stalled: new writes are refused at once; claims pause.
        assert!(matches!(
            c.submit(Op::Accept(msg())).await,
            Err(CommitError::Unavailable(_))
        ));
        assert!(c.claims_paused().is_some());
        // The flush finishes: writable again, and the refused client's message was
        // stored after all (hence the idempotency key advice).
        store.set(Flush::Pass);
        eventually("the store to heal", || c.failure().is_none()).await;
        assert_eq!(c.storage().state, StorageState::Ok);
        assert!(store.get(&m.id).unwrap().is_some());
        let r = c.submit(Op::Accept(msg())).await.unwrap();
        assert!(matches!(r, OpResult::Accepted { .. }), "{r:?}");
        assert_eq!(c.pending_probe().get().unflushed_answers, 0);
    }

    #[tokio::test]
    async fn short_space_refuses_by_level() {
        let dir = tempfile::tempdir().unwrap();
        let store = Faulty::open(dir.path(), Flush::Pass);
        const MIB: u64 = 1 << 20;
        let at = |free| {
            Space::new(
                dir.path(),
                Measured {
                    free,
                    total: 100 * MIB,
                },
                MinFree::Bytes(10 * MIB),
            )
        };
        // Low: no new messages, the rest goes on.
        let c = start(Arc::clone(&store), at(8 * MIB), Duration::from_secs(30));
        let err = c.submit(Op::Accept(msg())).await.unwrap_err();
        let CommitError::StorageFull(m) = &err else {
            panic!("{err:?}")
        };
        assert!(
            m.contains("8.0 MiB free") && m.contains("daemon.min_free is 10.0 MiB"),
            "{m}"
        );
        assert_eq!(
            c.submit(Op::Cancel(new_id())).await.unwrap(),
            OpResult::NotFound
        );
        assert_eq!(c.storage().state, StorageState::Low);
        assert!(c.claims_paused().is_none());
        // Critical: only outcomes.
        let c = start(Arc::clone(&store), at(4 * MIB), Duration::from_secs(30));
        let err = c.submit(Op::Cancel(new_id())).await.unwrap_err();
        assert!(
            matches!(&err, CommitError::StorageFull(m) if m.contains("deliveries are paused")),
            "{err:?}"
        );
        assert!(c.claims_paused().is_some());
        assert!(c.submit(completion(new_id())).await.is_ok());
        let s = c.storage();
        assert_eq!(
            (s.state, s.free_bytes, s.min_free_bytes, s.critical_bytes),
            (StorageState::Critical, 4 * MIB, 10 * MIB, 5 * MIB)
        );
    }
}
