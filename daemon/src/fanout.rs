//! Tag-routed live feed for many narrow subscribers (browser streams scoped to a tag).
//!
//! With the plain broadcast, every follower is woken for every durable batch and checks
//! every event: S streams × E events. Here one router task takes each batch once, looks
//! each event's tags up in an index of registered routes, and hands each route only its
//! events (and the batch's last seq). A route whose bounded channel is full is marked
//! *lagged* instead of being waited for: its follower goes back to the log, as it does
//! when the broadcast lags — the router never blocks, the committer never waits.
//!
//! Owns: the tag index and the routing. Must not: decide visibility (a route's follower
//! still applies its scope and filter), or buffer beyond each route's channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use herald_plugin_api::Event;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::commit::Committer;

/// Batches waiting for one route before it is marked lagged.
const ROUTE_CAPACITY: usize = 64;

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
            loop {
                match rx.recv().await {
                    Ok(batch) => router.route(&batch),
                    Err(RecvError::Lagged(_)) => router.all_lagged(),
                    Err(RecvError::Closed) => break,
                }
            }
            // Dropping the routes' senders ends every registration.
            router.lock().by_tag.clear();
        });
        fanout
    }

    /// Registers a route for events carrying any of `tags`. Register *before* reading the
    /// durable watermark, as with the broadcast.
    pub fn register(self: &Arc<Self>, tags: &[String]) -> Registration {
        let (tx, rx) = mpsc::channel(ROUTE_CAPACITY);
        let route = Arc::new(Route {
            tx,
            lagged: AtomicBool::new(false),
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

    fn route(&self, batch: &[Event]) {
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
            if r.tx.try_send(Routed { upto, events }).is_err() {
                r.lagged.store(true, Ordering::Release);
            }
        }
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
        let mut a = f.register(&["a".into(), "both".into()]);
        let mut b = f.register(&["b".into()]);
        f.route(&[event(1, &["a", "both"]), event(2, &["b"]), event(3, &["x"])]);
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
        f.route(&[event(4, &["a"])]);
        assert!(b.rx.try_recv().is_err());
        for seq in 5..(5 + ROUTE_CAPACITY as u64 + 1) {
            f.route(&[event(seq, &["b"])]);
        }
        let (_, lagged) = b.recv().await.unwrap();
        assert!(lagged, "a dropped batch is reported");
        drop(a);
        assert!(!f.lock().by_tag.contains_key("a"), "unregistered on drop");
    }
}
