//! Tag-routed live feed for many narrow subscribers (browser streams scoped to a tag).
//!
//! With the plain broadcast, every follower is woken for every durable batch and checks
//! every event: S streams × E events. Here one router task takes each batch once, looks
//! each event's tags up in an index of registered routes, and hands each route only its
//! events (and the batch's last seq). A route whose bounded channel is full is marked
//! *lagged* instead of being waited for: its follower goes back to the log, as it does
//! when the broadcast lags — the router never blocks, the committer never waits.
//!
//! A route registered with a *hold* is handed its events at most once per hold: events for
//! a route that was handed some less than a hold ago are kept (at most [`HOLD_MAX`]) and
//! handed together when the hold is up, so a busy stream wakes, and writes to its client,
//! once per hold instead of once per event. A route that was quiet for a hold gets its next
//! events at once.
//!
//! Owns: the tag index, the routing and the held events. Must not: decide visibility (a
//! route's follower still applies its scope and filter), or buffer beyond each route's
//! channel and its held events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_plugin_api::Event;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::commit::Committer;

/// Batches waiting for one route before it is marked lagged.
const ROUTE_CAPACITY: usize = 64;

/// Events held for one route before they are handed without waiting for the hold.
const HOLD_MAX: usize = 256;

/// The events of one durable batch for one route.
#[derive(Debug)]
pub struct Routed {
    /// The last seq of the whole batch: everything up to it was examined for this route.
    pub upto: u64,
    pub events: Vec<Event>,
}

#[derive(Debug)]
struct Route {
    tx: mpsc::Sender<Routed>,
    lagged: AtomicBool,
    hold: Duration,
    /// Only the router touches it (the mutex is never contended).
    held: Mutex<Held>,
}

/// A route's events waiting for its hold to be up.
#[derive(Debug, Default)]
struct Held {
    events: Vec<Event>,
    upto: u64,
    /// When the route was last handed events.
    handed: Option<Instant>,
}

impl Route {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hand(&self, held: &mut Held, routed: Routed, now: Instant) {
        held.handed = Some(now);
        if self.tx.try_send(routed).is_err() {
            self.lagged.store(true, Ordering::Release);
        }
    }
}

/// The routes holding events, and when the first of them is due.
#[derive(Debug, Default)]
struct Waiting {
    routes: Vec<Arc<Route>>,
    next: Option<Instant>,
}

impl Waiting {
    fn add(&mut self, route: &Arc<Route>, due: Instant) {
        self.routes.push(Arc::clone(route));
        self.next = Some(self.next.map_or(due, |n| n.min(due)));
    }

    /// Hands the routes whose hold is up their held events; keeps the others waiting.
    fn release(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        self.routes.retain(|r| {
            let mut held = r.held();
            if held.events.is_empty() {
                return false; // handed when it reached HOLD_MAX
            }
            if let Some(due) = held.handed.map(|t| t + r.hold)
                && now < due
            {
                next = Some(next.map_or(due, |n| n.min(due)));
                return true;
            }
            let events = std::mem::take(&mut held.events);
            let upto = held.upto;
            r.hand(&mut held, Routed { upto, events }, now);
            false
        });
        self.next = next;
    }
}

#[derive(Debug, Default)]
struct Index {
    by_tag: HashMap<String, Vec<Arc<Route>>>,
}

/// The router. Cheap to share.
#[derive(Debug, Default)]
pub struct Fanout {
    index: Mutex<Index>,
}

/// A route's receiving end; unregisters when dropped.
#[derive(Debug)]
pub struct Registration {
    fanout: Arc<Fanout>,
    route: Arc<Route>,
    tags: Vec<String>,
    rx: mpsc::Receiver<Routed>,
}

impl Registration {
    /// The next batch for this route, and whether batches were dropped before it was
    /// taken (then the follower must read the log from its cursor). `None`: the router
    /// stopped (the daemon is shutting down).
    pub async fn recv(&mut self) -> Option<(Routed, bool)> {
        let routed = self.rx.recv().await?;
        Some((routed, self.route.lagged.swap(false, Ordering::AcqRel)))
    }

    /// Whether batches were dropped (clears the mark).
    pub fn take_lagged(&self) -> bool {
        self.route.lagged.swap(false, Ordering::AcqRel)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut index = self.fanout.lock();
        for t in &self.tags {
            if let Some(list) = index.by_tag.get_mut(t) {
                list.retain(|r| !Arc::ptr_eq(r, &self.route));
                if list.is_empty() {
                    index.by_tag.remove(t);
                }
            }
        }
    }
}

impl Fanout {
    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the router on the committer's durable batches.
    pub fn start(committer: &Committer) -> Arc<Fanout> {
        let fanout = Arc::new(Fanout::default());
        let mut rx = committer.events();
        let router = Arc::clone(&fanout);
        tokio::spawn(async move {
            let mut waiting = Waiting::default();
            // One timer, moved only when the first due time changes (not re-armed per batch).
            let timer = tokio::time::sleep_until(Instant::now());
            tokio::pin!(timer);
            let mut armed: Option<Instant> = None;
            loop {
                if waiting.next != armed {
                    armed = waiting.next;
                    if let Some(due) = armed {
                        timer.as_mut().reset(due);
                    }
                }
                tokio::select! {
                    batch = rx.recv() => match batch {
                        Ok(batch) => router.route(&batch, &mut waiting, Instant::now()),
                        Err(RecvError::Lagged(_)) => router.all_lagged(),
                        Err(RecvError::Closed) => break,
                    },
                    () = &mut timer, if armed.is_some() => {
                        waiting.release(Instant::now());
                    }
                }
            }
            // Dropping the routes' senders ends every registration.
            router.lock().by_tag.clear();
        });
        fanout
    }

    /// Registers a route for events carrying any of `tags`, handed at most once per
    /// `hold` (zero: as they come). Register *before* reading the durable watermark, as with
    /// the broadcast.
    pub fn register(self: &Arc<Self>, tags: &[String], hold: Duration) -> Registration {
        let (tx, rx) = mpsc::channel(ROUTE_CAPACITY);
        let route = Arc::new(Route {
            tx,
            lagged: AtomicBool::new(false),
            hold,
            held: Mutex::new(Held::default()),
        });
        let mut index = self.lock();
        let mut tags: Vec<String> = tags.to_vec();
        tags.sort();
        tags.dedup();
        for t in &tags {
            index
                .by_tag
                .entry(t.clone())
                .or_default()
                .push(Arc::clone(&route));
        }
        Registration {
            fanout: Arc::clone(self),
            route,
            tags,
            rx,
        }
    }

    /// Hands each route its events of `batch`, or holds them; routes newly holding events
    /// join `waiting`.
    fn route(&self, batch: &[Event], waiting: &mut Waiting, now: Instant) {
        let Some(upto) = batch.last().map(|e| e.seq) else {
            return;
        };
        let index = self.lock();
        if index.by_tag.is_empty() {
            return;
        }
        let mut out: Vec<(&Arc<Route>, Vec<Event>)> = Vec::new();
        let mut slot: HashMap<*const Route, usize> = HashMap::new();
        for e in batch {
            for t in &e.tags {
                let Some(routes) = index.by_tag.get(t) else {
                    continue;
                };
                for r in routes {
                    let i = *slot.entry(Arc::as_ptr(r)).or_insert_with(|| {
                        out.push((r, Vec::new()));
                        out.len() - 1
                    });
                    let events = &mut out[i].1;
                    // An event with two of the route's tags goes once.
                    if events.last().is_none_or(|last| last.seq != e.seq) {
                        events.push(e.clone());
                    }
                }
            }
        }
        for (r, events) in out {
            let mut held = r.held();
            let quiet = held.handed.is_none_or(|t| now >= t + r.hold);
            if held.events.is_empty() && quiet {
                r.hand(&mut held, Routed { upto, events }, now);
                continue;
            }
            if held.events.is_empty()
                && let Some(t) = held.handed
            {
                waiting.add(r, t + r.hold);
            }
            held.events.extend(events);
            held.upto = upto;
            if held.events.len() >= HOLD_MAX {
                let events = std::mem::take(&mut held.events);
                r.hand(&mut held, Routed { upto, events }, now);
            }
        }
    }

    #[cfg(test)]
    fn route_now(&self, batch: &[Event]) {
        self.route(batch, &mut Waiting::default(), Instant::now());
    }

    fn all_lagged(&self) {
        for routes in self.lock().by_tag.values() {
            for r in routes {
                r.lagged.store(true, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_plugin_api::EventKind;

    fn event(seq: u64, tags: &[&str]) -> Event {
        Event {
            seq,
            at: 0,
            message_id: None,
            kind: EventKind::Queued,
            channel: None,
            provider: None,
            provider_message_id: None,
            attempt: None,
            detail: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            from: None,
            to: None,
            body: None,
            rsvp: None,
        }
    }

    #[tokio::test]
    async fn each_route_gets_only_its_events_once_and_a_full_route_is_marked_lagged() {
        let f = Arc::new(Fanout::default());
        let mut a = f.register(&["a".into(), "both".into()], Duration::ZERO);
        let mut b = f.register(&["b".into()], Duration::ZERO);
        f.route_now(&[event(1, &["a", "both"]), event(2, &["b"]), event(3, &["x"])]);
        let (got, lagged) = a.recv().await.unwrap();
        assert_eq!(
            (
                got.upto,
                got.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
                lagged
            ),
            (3, vec![1], false)
        );
        let (got, _) = b.recv().await.unwrap();
        assert_eq!(
            got.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![2]
        );
        // Nothing for b in this batch: it is not woken.
        f.route_now(&[event(4, &["a"])]);
        assert!(b.rx.try_recv().is_err());
        for seq in 5..(5 + ROUTE_CAPACITY as u64 + 1) {
            f.route_now(&[event(seq, &["b"])]);
        }
        let (_, lagged) = b.recv().await.unwrap();
        assert!(lagged, "a dropped batch is reported");
        drop(a);
        assert!(!f.lock().by_tag.contains_key("a"), "unregistered on drop");
    }

    #[tokio::test]
    async fn a_busy_route_gets_the_events_of_its_hold_together_and_a_quiet_one_at_once() {
        let f = Arc::new(Fanout::default());
        let ms = Duration::from_millis;
        let hold = ms(250);
        let mut a = f.register(&["a".into()], hold);
        let seqs = |r: &Routed| r.events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let mut waiting = Waiting::default();
        let t0 = Instant::now();
        // Quiet: handed at once.
        f.route(&[event(1, &["a"])], &mut waiting, t0);
        assert_eq!(seqs(&a.rx.try_recv().unwrap()), vec![1]);
        assert!(waiting.routes.is_empty());
        // Within the hold: kept, and handed together when it is up.
        f.route(&[event(2, &["a"])], &mut waiting, t0 + ms(10));
        f.route(
            &[event(3, &["x"]), event(4, &["a"])],
            &mut waiting,
            t0 + ms(20),
        );
        assert!(a.rx.try_recv().is_err(), "held");
        assert_eq!(waiting.routes.len(), 1);
        assert_eq!(waiting.next, Some(t0 + hold));
        waiting.release(t0 + ms(100));
        assert!(a.rx.try_recv().is_err(), "not due yet");
        assert_eq!(waiting.next, Some(t0 + hold));
        waiting.release(t0 + hold);
        let got = a.rx.try_recv().unwrap();
        assert_eq!((seqs(&got), got.upto), (vec![2, 4], 4));
        assert!(waiting.routes.is_empty() && waiting.next.is_none());
        // A full hold is handed without waiting for the time.
        let t1 = t0 + hold + ms(1);
        for seq in 10..(10 + HOLD_MAX as u64) {
            f.route(&[event(seq, &["a"])], &mut waiting, t1);
        }
        assert_eq!(a.rx.try_recv().unwrap().events.len(), HOLD_MAX);
        waiting.release(t1);
        assert!(waiting.routes.is_empty(), "nothing left to hand");
        assert!(a.rx.try_recv().is_err());
    }
}
