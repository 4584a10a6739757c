//! Following the event log: replay retained events from a `seq`, then stream live ones,
//! without gaps or duplicates — one implementation for every consumer (socket
//! subscriptions here, the HTTP streams in `realtime`, the metrics in `metrics`), each with
//! its own [`Sink`].
//!
//! The live feed is the committer's broadcast of durable batches. A follower listens to it
//! *before* reading the durable watermark ([`Start::now`]), reads the log up to the
//! watermark, then takes live batches, skipping what it already passed. If it falls behind
//! (the broadcast lags) it reads the log again; a slow consumer never makes the daemon
//! buffer without bound — the log is the buffer — and never slows the committer.
//!
//! Owns: the replay/live seam and the cursor. Must not: decide who may see what (the
//! caller's `matches`), or how a consumer is bounded (its sink).

use std::future::Future;
use std::sync::Arc;

use herald_plugin_api::Event;
use herald_protocol::{ErrorBody, ErrorCode, Filter, Response, ServerFrame};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

use crate::commit::Committer;
use crate::fanout::{Fanout, Registration};
use crate::reads::Reads;
use crate::store::Store;

const PAGE: usize = 512;
/// How long a follower whose log read stalled waits before reading again.
const STALLED_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a follower delivers the events that match.
pub trait Sink: Send {
    /// Delivers one event. `false` ends the follow (the consumer is gone, or the sink gave
    /// up on it; the sink remembers why).
    fn deliver(&mut self, event: &Event) -> impl Future<Output = bool> + Send;

    /// The events delivered since the last call were one batch (a page of the log, or one
    /// live batch): a sink that holds events back to pass a batch on together passes the rest
    /// on now. `false` ends the follow, as from [`Sink::deliver`].
    fn batch_end(&mut self) -> impl Future<Output = bool> + Send {
        std::future::ready(true)
    }
}

/// Why [`follow`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The sink refused an event; the cursor points at it.
    Sink,
    /// The event log could not be read (logged).
    LogError,
    /// The committer stopped (the daemon is shutting down).
    Closed,
}

/// Where live events come from: every durable batch, or only the events a tag route
/// receives from the [`Fanout`].
#[derive(Debug)]
enum Live {
    All(broadcast::Receiver<Arc<[Event]>>),
    Routed(Registration),
}

/// A follower's starting point, taken before anything is read so that nothing committed
/// in between is missed.
#[derive(Debug)]
pub struct Start {
    live: Live,
    /// The oldest retained event (0 when the log is empty).
    pub first_seq: u64,
    /// The newest durable event.
    pub last_seq: u64,
}

impl Start {
    /// Subscribes to live batches, then reads the watermark.
    pub fn now(store: &dyn Store, committer: &Committer) -> Start {
        let live = Live::All(committer.events());
        Start::with(live, store, committer)
    }

    /// For a follower that passes on only events carrying one of `tags`: live events come
    /// through the fanout's tag index, so it is woken only for its own, at most once per
    /// `hold` while they keep coming.
    pub fn routed(
        fanout: &Arc<Fanout>,
        tags: &[String],
        hold: std::time::Duration,
        store: &dyn Store,
        committer: &Committer,
    ) -> Start {
        let live = Live::Routed(fanout.register(tags, hold));
        Start::with(live, store, committer)
    }

    fn with(live: Live, store: &dyn Store, committer: &Committer) -> Start {
        let last_seq = committer.durable_seq();
        Start {
            live,
            first_seq: store.first_seq().unwrap_or(0),
            last_seq,
        }
    }

    /// The first seq to examine for a client that asked for `from_seq`: replay from it
    /// (0 or 1 = everything retained), or only what comes next without it.
    pub fn cursor(&self, from_seq: Option<u64>) -> u64 {
        from_seq.map_or(self.last_seq + 1, |s| s.max(1))
    }
}

/// Replays from `*next`, then follows live, delivering what `matches` to `sink`. `*next`
/// is always the first seq not yet passed on (delivered to the sink or skipped), so a
/// caller that drops this future — or gets it back after [`End::Sink`] — knows exactly
/// where the consumer must resume (a sink that holds events back until
/// [`Sink::batch_end`] knows which of them it did not pass on).
pub async fn follow<S: Sink>(
    start: Start,
    next: &mut u64,
    reads: &Reads,
    committer: &Committer,
    matches: impl Fn(&Event) -> bool + Send,
    sink: &mut S,
) -> End {
    let mut live = start.live;
    loop {
        // Catch up from the log, never past what is durable.
        let target = committer.durable_seq();
        while *next <= target {
            let from = *next;
            let page = match reads.run(move |s| s.events_from(from, PAGE)).await {
                Ok(p) => p,
                // The store is stalled or out of reach for now (a shared engine's lost
                // connection), not broken: the cursor stays, the read is tried again, and
                // the follower goes on where it was once the store answers.
                Err(e) if e.for_now() => {
                    if !committer.is_alive() {
                        return End::Closed;
                    }
                    tracing::debug!(from, error = %e, "the event log could not be read for now; trying again");
                    tokio::time::sleep(STALLED_RETRY).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the event log failed; ending a subscription");
                    return End::LogError;
                }
            };
            if page.is_empty() {
                *next = target + 1;
                break;
            }
            for e in page.iter().take_while(|e| e.seq <= target) {
                if matches(e) && !sink.deliver(e).await {
                    *next = e.seq;
                    return End::Sink;
                }
                *next = e.seq + 1;
            }
            if !sink.batch_end().await {
                return End::Sink;
            }
            if page.last().is_some_and(|e| e.seq >= target) {
                break;
            }
        }
        // Live.
        match &mut live {
            Live::All(rx) => loop {
                match rx.recv().await {
                    Ok(batch) => {
                        if batch.first().is_some_and(|e| e.seq > *next) {
                            break; // a gap: go back to the log
                        }
                        for e in batch.iter() {
                            if e.seq < *next {
                                continue;
                            }
                            if matches(e) && !sink.deliver(e).await {
                                *next = e.seq;
                                return End::Sink;
                            }
                            *next = e.seq + 1;
                        }
                        if !sink.batch_end().await {
                            return End::Sink;
                        }
                    }
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return End::Closed,
                }
            },
            Live::Routed(reg) => {
                // Batches were dropped while this follower read the log: read it again.
                if reg.take_lagged() {
                    continue;
                }
                loop {
                    let Some((routed, lagged)) = reg.recv().await else {
                        return End::Closed;
                    };
                    for e in &routed.events {
                        if e.seq < *next {
                            continue;
                        }
                        if matches(e) && !sink.deliver(e).await {
                            *next = e.seq;
                            return End::Sink;
                        }
                        *next = e.seq + 1;
                    }
                    if !sink.batch_end().await {
                        return End::Sink;
                    }
                    // Everything up to the batch's end was examined for this route.
                    *next = (*next).max(routed.upto + 1);
                    if lagged {
                        break; // a later batch was dropped: go back to the log
                    }
                }
            }
        }
    }
}

/// A socket subscription's sink: event frames on the connection's (bounded) frame queue.
/// A slow reader slows only its own subscription: the follower waits, and reads the log.
struct Frames {
    id: u64,
    out: mpsc::Sender<ServerFrame>,
}

impl Sink for Frames {
    async fn deliver(&mut self, event: &Event) -> bool {
        let frame = ServerFrame {
            id: self.id,
            response: Response::Event(event.clone()),
        };
        self.out.send(frame).await.is_ok()
    }
}

/// Opens a socket subscription: returns its `subscribed` answer, which the connection
/// queues itself in read order (so a subscribe read before the client's EOF is always
/// answered, even though the stream then ends with the connection), and the starting
/// point to hand to [`run`] — taken now, so that starting later misses nothing.
pub fn open(store: &dyn Store, committer: &Committer) -> (Response, Start) {
    let start = Start::now(store, committer);
    let subscribed = Response::Subscribed {
        first_seq: start.first_seq,
        last_seq: start.last_seq,
        epoch: store.epoch(),
    };
    (subscribed, start)
}

/// A socket subscription: events to `out` until the connection goes away. `id` is the
/// subscribe request's id, echoed on every event frame; its `subscribed` answer was sent
/// by the caller ([`open`]).
pub async fn run(
    start: Start,
    id: u64,
    filter: Filter,
    from_seq: Option<u64>,
    reads: Reads,
    committer: Committer,
    out: mpsc::Sender<ServerFrame>,
) {
    let mut next = start.cursor(from_seq);
    let mut sink = Frames { id, out };
    let end = follow(
        start,
        &mut next,
        &reads,
        &committer,
        |e| filter.matches(e),
        &mut sink,
    )
    .await;
    // The client would otherwise wait for events that never come: the subscription's
    // last frame says it ended and where to take it up again.
    if end == End::LogError {
        let error = ErrorBody::new(
            ErrorCode::Internal,
            format!(
                "the daemon could not read its event log, so this subscription ended; \
                 subscribe again with from_seq = {next} (the daemon's log has the error)"
            ),
        );
        let _ = sink
            .out
            .send(ServerFrame {
                id,
                response: Response::Error(error),
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::space::Space;
    use crate::store::Op;
    use crate::store::faulty::{Faulty, Flush, sms};

    /// A committer over a store whose log reads can be made to fail, with `n` events.
    async fn logged(dir: &std::path::Path, n: usize) -> (Arc<Faulty>, Committer, Reads) {
        let store = Faulty::open(dir, Flush::Pass);
        let (committer, _) = Committer::start(
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::new(Space::unlimited(dir)),
            Duration::from_secs(30),
        )
        .unwrap();
        for _ in 0..n {
            committer.submit(Op::Accept(sms())).await.unwrap();
        }
        let reads = Reads::new(
            Arc::clone(&store) as Arc<dyn Store>,
            Duration::from_secs(30),
        );
        (store, committer, reads)
    }

    /// Collects events until it has `want`.
    struct Collect {
        seqs: Vec<u64>,
        want: usize,
    }

    impl Sink for Collect {
        async fn deliver(&mut self, event: &Event) -> bool {
            self.seqs.push(event.seq);
            self.seqs.len() < self.want
        }
    }

    /// Collects each batch's events, and once the log's replay ended, commits two more.
    struct Batches {
        got: Vec<Vec<u64>>,
        current: Vec<u64>,
        want: usize,
        then: Option<Committer>,
    }

    impl Sink for Batches {
        async fn deliver(&mut self, event: &Event) -> bool {
            self.current.push(event.seq);
            true
        }

        async fn batch_end(&mut self) -> bool {
            if !self.current.is_empty() {
                self.got.push(std::mem::take(&mut self.current));
            }
            if let Some(committer) = self.then.take() {
                tokio::spawn(async move {
                    for _ in 0..2 {
                        committer.submit(Op::Accept(sms())).await.unwrap();
                    }
                });
            }
            self.got.len() < self.want
        }
    }

    /// A sink learns where each batch ends: after a page of the log, and after each live
    /// batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sink_is_told_where_each_page_and_live_batch_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (store, committer, reads) = logged(dir.path(), 3).await;
        let start = Start::now(store.as_ref(), &committer);
        let mut next = start.cursor(Some(1));
        let mut sink = Batches {
            got: Vec::new(),
            current: Vec::new(),
            want: 3,
            then: Some(committer.clone()),
        };
        let end = tokio::time::timeout(
            Duration::from_secs(30),
            follow(start, &mut next, &reads, &committer, |_| true, &mut sink),
        )
        .await
        .expect("the follower went on");
        assert_eq!(end, End::Sink);
        assert_eq!(sink.got, vec![vec![1, 2, 3], vec![4], vec![5]]);
        assert_eq!(next, 6);
    }

    /// A replay that meets a store out of reach for now (a shared engine's lost connection)
    /// reads again and goes on where it was: no event missed, none twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_that_meets_an_unavailable_store_reads_again() {
        let dir = tempfile::tempdir().unwrap();
        let (store, committer, reads) = logged(dir.path(), 3).await;
        store.fail_log_reads(2);
        let start = Start::now(store.as_ref(), &committer);
        let mut next = start.cursor(Some(1));
        let mut sink = Collect {
            seqs: Vec::new(),
            want: 3,
        };
        let end = tokio::time::timeout(
            Duration::from_secs(30),
            follow(start, &mut next, &reads, &committer, |_| true, &mut sink),
        )
        .await
        .expect("the follower went on");
        assert_eq!((end, sink.seqs), (End::Sink, vec![1, 2, 3]));
        assert_eq!(store.log_reads_to_fail(), 0, "both failures were met");
    }

    /// A socket subscription whose log cannot be read ends with an error frame that says
    /// where to resume, instead of leaving its client waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_whose_log_cannot_be_read_ends_with_an_error_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (store, committer, reads) = logged(dir.path(), 2).await;
        store.corrupt_log_reads(1);
        let (_, start) = open(store.as_ref(), &committer);
        let (tx, mut rx) = mpsc::channel(16);
        tokio::time::timeout(
            Duration::from_secs(30),
            run(start, 7, Filter::default(), Some(1), reads, committer, tx),
        )
        .await
        .expect("the subscription ended");
        let frame = rx.recv().await.expect("a last frame");
        assert_eq!(frame.id, 7);
        let Response::Error(e) = frame.response else {
            panic!("{:?}", frame.response)
        };
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.contains("from_seq = 1"), "{}", e.message);
        assert!(rx.recv().await.is_none(), "nothing after it");
    }
}
