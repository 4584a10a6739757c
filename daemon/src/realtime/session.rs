//! One stream, transport-independent: a follower (`events::follow`) that puts the events
//! the token and the filter allow on a bounded queue, and a pump that hands them to the
//! transport (WebSocket or SSE), sends keep-alives, and closes with where to resume. The
//! follower marks the last event of each batch it passes on (a page of the log, a live
//! batch); at a batch's end the pump pushes what it handed towards the client — at once when
//! the stream was quiet for `realtime.flush_interval`, else once that interval since the last
//! push is up ([`Pacer`]): a busy stream costs one write per interval, not one per event,
//! and a batch is never split between two writes by the pump outrunning the follower. A
//! tag-scoped stream is paced by the fanout's router instead (it hands a busy route its
//! events once per interval), and its pump pushes each batch as it comes.
//!
//! Bounds: the queue holds `realtime.client_buffer` events, and the follower one more it
//! holds back until it knows whether a batch ends there; the transport holds what its
//! socket holds, plus at most 16 KiB and one event not yet written. A client that takes
//! nothing for `realtime.stall_timeout` is closed (close code 4008 / a final `close` event)
//! with `resume_from`, and its follower stops — it never makes the daemon buffer more, and
//! it never slows anyone else (the follower reads the durable log, not the committer). The
//! close itself gets [`CLOSE_GRACE`] stall periods to reach the client.
//!
//! Owns: the queue, the pacing of pushes, stall detection, the close reason and
//! `resume_from`. Must not: parse requests or check tokens (`realtime`), frame bytes (`ws`,
//! `sse`).

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
    /// The last of what the follower passed on together (a page of the log, a live batch):
    /// the pump decides whether to push only after it, never in the middle of a batch.
    pub last: bool,
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
    /// before (it will reach the client before the close). A transport may hold a bounded
    /// amount of what was handed until [`Transport::flush`].
    fn event(&mut self, item: Item) -> impl Future<Output = Result<(), ()>> + Send;
    /// Pushes what was handed towards the client.
    fn flush(&mut self) -> impl Future<Output = Result<(), ()>> + Send;
    /// Sends a keep-alive behind what was handed, and pushes both towards the client.
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
    /// A busy stream's events are written together at most this often.
    pub flush_interval: Duration,
}

/// The follower's sink: the bounded queue. Waits while it is full (the pump decides when
/// waiting has lasted too long, and then drops the receiver). It holds the newest event back
/// until the next one or the batch's end, so the pump knows which one ends a batch.
/// Cancel-safe: an event leaves `held` only once the queue has room for it.
struct Queue {
    tx: mpsc::Sender<Item>,
    epoch: String,
    held: Option<Item>,
}

impl Queue {
    /// Queues the held event, if any.
    async fn send_held(&mut self, last: bool) -> bool {
        if self.held.is_none() {
            return true;
        }
        let Ok(permit) = self.tx.reserve().await else {
            return false;
        };
        if let Some(mut item) = self.held.take() {
            item.last = last;
            permit.send(item);
        }
        true
    }
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
        if !self.send_held(false).await {
            return false;
        }
        self.held = Some(Item {
            seq: event.seq,
            json,
            last: false,
        });
        true
    }

    async fn batch_end(&mut self) -> bool {
        self.send_held(true).await
    }
}

/// When to push handed events towards the client: at once when the stream was quiet for a
/// flush interval, else when the interval since the last push is up — so a busy stream
/// writes (and wakes its client) once per interval, with everything handed meanwhile.
///
/// A push is only ever *due* because [`Pacer::handed`] scheduled it, and a push clears it:
/// the pump's timer is never left armed on a time that has passed.
#[derive(Debug)]
struct Pacer {
    interval: Duration,
    /// When handed events were last pushed (`None`: never).
    flushed: Option<tokio::time::Instant>,
    /// When the events handed since are to be pushed.
    due: Option<tokio::time::Instant>,
}

/// What to do after handing a batch's last event with nothing queued behind it.
#[derive(Debug, PartialEq, Eq)]
enum Pace {
    Now,
    At(tokio::time::Instant),
}

impl Pacer {
    fn new(interval: Duration) -> Pacer {
        Pacer {
            interval,
            flushed: None,
            due: None,
        }
    }

    /// A batch's last event was handed and nothing is queued behind it (until then the pump
    /// hands on without deciding).
    fn handed(&mut self, now: tokio::time::Instant) -> Pace {
        if let Some(due) = self.due {
            return Pace::At(due);
        }
        match self.flushed {
            Some(t) if now < t + self.interval => {
                let due = t + self.interval;
                self.due = Some(due);
                Pace::At(due)
            }
            _ => Pace::Now,
        }
    }

    /// Everything handed was pushed.
    fn flushed(&mut self, now: tokio::time::Instant) {
        self.flushed = Some(now);
        self.due = None;
    }

    /// When a push is due (`None`: none is scheduled).
    fn due(&self) -> Option<tokio::time::Instant> {
        self.due
    }
}

/// Waits at most `stall` for a transport operation (handing, pushing, a keep-alive).
/// `Some(end)` ends the stream: `None` when the client went away, a close reason when it
/// took nothing for `stall`.
async fn within(
    stall: Duration,
    op: impl Future<Output = Result<(), ()>>,
) -> Option<Option<(&'static str, u16)>> {
    match tokio::time::timeout(stall, op).await {
        Ok(Ok(())) => None,
        Ok(Err(())) => Some(None),
        Err(_) => Some(Some(("slow", 4008))),
    }
}

/// Runs one stream to its end over `transport`.
pub async fn run<T: Transport>(ctx: Context, p: Params, mut transport: T) {
    let epoch = ctx.store.epoch();
    // A token scoped to tags sees only events carrying one of them: its follower is woken
    // only for those (the fanout's tag index), not for every event of every stream. The
    // router already hands a busy route its events once per flush interval, so the pump
    // pushes each of those batches as it comes: pacing it again from the pump's own last
    // push would only add delay (that push lags the router's hand-off a little more each
    // time, up to a whole interval).
    let scope = &p.scope;
    let (start, pacing) = if !scope.admin && scope.ids.is_empty() && !scope.tags.is_empty() {
        let start = Start::routed(
            &ctx.fanout,
            &scope.tags,
            p.flush_interval,
            ctx.store.as_ref(),
            &ctx.committer,
        );
        (start, Duration::ZERO)
    } else {
        (
            Start::now(ctx.store.as_ref(), &ctx.committer),
            p.flush_interval,
        )
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
            let mut sink = Queue {
                tx,
                epoch,
                held: None,
            };
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
            // An event still held back was not passed on: the client resumes from it.
            if let Some(held) = sink.held.take() {
                next = next.min(held.seq);
            }
            drop(sink);
            let _ = ended_tx.send((next, reason, code));
        })
    };

    let mut resume_from = first;
    let close = pump(&mut rx, &mut transport, &p, pacing, &mut resume_from).await;
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

/// Hands the queued events to `transport` and pushes them at the end of each batch, at
/// most once per `interval` ([`Pacer`]), with a keep-alive every `p.keepalive`, until the
/// stream ends: `None` when the client went away, else the reason and close code
/// (`("follower", 0)`: the follower ended and its queue is drained). `resume_from` follows
/// the last event handed.
async fn pump<T: Transport>(
    rx: &mut mpsc::Receiver<Item>,
    transport: &mut T,
    p: &Params,
    interval: Duration,
    resume_from: &mut u64,
) -> Option<(&'static str, u16)> {
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + p.keepalive, p.keepalive);
    let mut pacer = Pacer::new(interval);
    let flush_due = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(flush_due);
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(item) => {
                    // Handed = it reaches the client before the close.
                    let (seq, last) = (item.seq, item.last);
                    if let Some(end) = within(p.stall, transport.event(item)).await {
                        return end;
                    }
                    *resume_from = seq + 1;
                    // The rest of its batch, or more, is coming: it goes out with this one.
                    if !last || !rx.is_empty() {
                        continue;
                    }
                    match pacer.handed(tokio::time::Instant::now()) {
                        Pace::Now => {
                            if let Some(end) = within(p.stall, transport.flush()).await {
                                return end;
                            }
                            pacer.flushed(tokio::time::Instant::now());
                        }
                        Pace::At(due) => {
                            if flush_due.deadline() != due {
                                flush_due.as_mut().reset(due);
                            }
                        }
                    }
                }
                // The follower ended (token expiry, shutdown) and the queue is empty.
                None => return Some(("follower", 0)),
            },
            () = &mut flush_due, if pacer.due().is_some() => {
                if let Some(end) = within(p.stall, transport.flush()).await {
                    return end;
                }
                pacer.flushed(tokio::time::Instant::now());
            }
            // The keep-alive goes out behind what was handed, and pushes it out with it.
            _ = ticker.tick() => {
                if let Some(end) = within(p.stall, transport.keepalive()).await {
                    return end;
                }
                pacer.flushed(tokio::time::Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_stream_writes_at_once_and_a_busy_one_once_per_interval() {
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pacer::new(ms(250));
        assert_eq!(p.due(), None);
        // The first event of a stream goes out at once.
        assert_eq!(p.handed(t0), Pace::Now);
        p.flushed(t0);
        // The next ones within the interval wait for its end, together.
        assert_eq!(p.handed(t0 + ms(10)), Pace::At(t0 + ms(250)));
        assert_eq!(p.handed(t0 + ms(200)), Pace::At(t0 + ms(250)));
        assert_eq!(p.due(), Some(t0 + ms(250)));
        p.flushed(t0 + ms(250));
        // Nothing is due until an event is handed again, however late that is.
        assert_eq!(p.due(), None);
        // Quiet for an interval: at once again.
        assert_eq!(p.handed(t0 + ms(600)), Pace::Now);
        assert_eq!(p.due(), None);
        // An interval of zero writes every event at once.
        let mut p = Pacer::new(Duration::ZERO);
        p.flushed(t0);
        assert_eq!(p.handed(t0), Pace::Now);
    }

    /// What a transport was handed and when it was pushed.
    #[derive(Debug, Default)]
    struct Wire {
        unpushed: Vec<u64>,
        pushes: Vec<(tokio::time::Instant, Vec<u64>)>,
    }

    struct Recorder(Arc<std::sync::Mutex<Wire>>);

    impl Recorder {
        fn push(&self) {
            let mut w = self.0.lock().unwrap();
            let events = std::mem::take(&mut w.unpushed);
            if !events.is_empty() {
                w.pushes.push((tokio::time::Instant::now(), events));
            }
        }
    }

    impl Transport for Recorder {
        async fn event(&mut self, item: Item) -> Result<(), ()> {
            self.0.lock().unwrap().unpushed.push(item.seq);
            Ok(())
        }
        async fn flush(&mut self) -> Result<(), ()> {
            self.push();
            Ok(())
        }
        async fn keepalive(&mut self) -> Result<(), ()> {
            self.push();
            Ok(())
        }
        async fn close(&mut self, _: &Close) {}
        fn abort(&mut self) {}
    }

    fn event(seq: u64) -> Event {
        Event {
            seq,
            at: 0,
            message_id: None,
            kind: herald_plugin_api::EventKind::Queued,
            channel: None,
            provider: None,
            provider_message_id: None,
            attempt: None,
            detail: None,
            tags: Vec::new(),
            from: None,
            to: None,
            body: None,
            rsvp: None,
        }
    }

    /// The queue marks a batch's last event, and an event it holds back is never lost to a
    /// cancelled wait for room: it stays held, so the follower knows the client's resume
    /// point is that event.
    #[tokio::test(start_paused = true)]
    async fn the_queue_marks_a_batch_end_and_keeps_what_it_could_not_queue() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut q = Queue {
            tx,
            epoch: "e".into(),
            held: None,
        };
        assert!(q.deliver(&event(1)).await);
        assert!(q.deliver(&event(2)).await);
        // The queue is full (event 1): waiting for room is given up.
        let waited = tokio::time::timeout(Duration::from_secs(1), q.batch_end()).await;
        assert!(waited.is_err());
        assert_eq!(q.held.as_ref().map(|i| i.seq), Some(2));
        let first = rx.recv().await.unwrap();
        assert_eq!((first.seq, first.last), (1, false));
        assert!(first.json.ends_with(r#","epoch":"e"}"#), "{}", first.json);
        assert!(q.batch_end().await);
        let second = rx.recv().await.unwrap();
        assert_eq!((second.seq, second.last), (2, true));
        assert!(q.held.is_none());
        // Nothing held: a batch end queues nothing.
        assert!(q.batch_end().await);
        assert!(rx.try_recv().is_err());
    }

    type Pumped = tokio::task::JoinHandle<(Option<(&'static str, u16)>, u64)>;

    /// A pump over a recording transport, pushing at most once per `interval`.
    fn pump_recorded(
        interval: Duration,
    ) -> (mpsc::Sender<Item>, Arc<std::sync::Mutex<Wire>>, Pumped) {
        let p = Params {
            scope: Scope {
                tags: vec!["t".into()],
                ids: Vec::new(),
                admin: false,
                expires_at: u64::MAX,
            },
            filter: StreamFilter::default(),
            from_seq: None,
            client_buffer: 16,
            stall: Duration::from_secs(30),
            keepalive: Duration::from_secs(25),
            flush_interval: interval,
        };
        let wire = Arc::new(std::sync::Mutex::new(Wire::default()));
        let (tx, mut rx) = mpsc::channel(16);
        let mut transport = Recorder(Arc::clone(&wire));
        let pumped = tokio::spawn(async move {
            let mut resume_from = 1;
            let end = pump(&mut rx, &mut transport, &p, interval, &mut resume_from).await;
            (end, resume_from)
        });
        (tx, wire, pumped)
    }

    fn item(seq: u64, last: bool) -> Item {
        Item {
            seq,
            json: String::new(),
            last,
        }
    }

    /// Events arriving two at a time every 100 ms — one batch of the follower's — are
    /// pushed at most once per flush interval, never early because a push happened before
    /// (a timer left on a past time fired at once).
    #[tokio::test(start_paused = true)]
    async fn a_busy_stream_is_pushed_at_most_once_per_interval() {
        let interval = Duration::from_millis(250);
        let (tx, wire, pumped) = pump_recorded(interval);
        let t0 = tokio::time::Instant::now();
        for round in 0..40u64 {
            tx.send(item(2 * round + 1, false)).await.unwrap();
            tx.send(item(2 * round + 2, true)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(interval * 2).await;
        drop(tx);
        assert_eq!(pumped.await.unwrap(), (Some(("follower", 0)), 81));

        let w = wire.lock().unwrap();
        let pushed: Vec<u64> = w.pushes.iter().flat_map(|(_, e)| e.clone()).collect();
        assert_eq!(
            pushed,
            (1..=80).collect::<Vec<_>>(),
            "every event, in order"
        );
        assert!(w.unpushed.is_empty());
        // The first at once, the rest once per interval.
        assert_eq!(w.pushes[0].0, t0);
        for pair in w.pushes.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= interval,
                "pushed {:?} apart: {:?}",
                pair[1].0 - pair[0].0,
                w.pushes
            );
        }
        assert!(
            w.pushes.len() <= 4_000 / 250 + 1,
            "{} pushes",
            w.pushes.len()
        );
    }

    /// A quiet stream's batch goes out at once and whole, even when the pump takes its first
    /// event before the follower queued the rest (the queue empty in the batch's middle).
    #[tokio::test(start_paused = true)]
    async fn a_batch_is_pushed_whole_when_the_queue_empties_in_its_middle() {
        let ms = Duration::from_millis;
        let (tx, wire, pumped) = pump_recorded(ms(250));
        let t0 = tokio::time::Instant::now();
        for (at, seq) in [(0, 1), (1000, 3)] {
            tokio::time::sleep_until(t0 + ms(at)).await;
            tx.send(item(seq, false)).await.unwrap();
            tokio::time::sleep(ms(1)).await;
            let pushes = wire.lock().unwrap().pushes.len();
            assert_eq!(
                pushes,
                seq as usize / 2,
                "nothing pushed in a batch's middle"
            );
            tx.send(item(seq + 1, true)).await.unwrap();
            tokio::time::sleep(ms(1)).await;
        }
        drop(tx);
        assert_eq!(pumped.await.unwrap(), (Some(("follower", 0)), 5));
        let w = wire.lock().unwrap();
        assert_eq!(
            w.pushes,
            vec![(t0 + ms(1), vec![1, 2]), (t0 + ms(1001), vec![3, 4])]
        );
    }
}
