//! Subscriptions: replay retained events from the durable log, then stream live ones,
//! without gaps or duplicates.
//!
//! The live feed is the committer's broadcast of durable batches. A subscriber listens to
//! it *before* reading the durable watermark, reads the log up to the watermark, then
//! takes live batches, skipping what it already sent. If it falls behind (the broadcast
//! lags) it reads the log again; a slow subscriber never makes the daemon buffer without
//! bound — the log is the buffer.

use std::sync::Arc;

use herald_plugin_api::Event;
use herald_protocol::{Filter, Response, ServerFrame};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::commit::Committer;
use crate::store::Store;

const PAGE: usize = 512;

/// A subscription that has been answered but not yet started: it listens to the live feed
/// from before the watermark it reported, so starting it later misses nothing.
pub struct Opened {
    live: tokio::sync::broadcast::Receiver<Arc<[Event]>>,
    durable: u64,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("durable", &self.durable)
            .finish()
    }
}

/// Opens a subscription: returns its `subscribed` answer, which the connection queues
/// itself (so a subscribe read before the client's EOF is always answered, even though
/// the stream then ends with the connection), and the feed to [`run`].
pub fn open(store: &dyn Store, committer: &Committer) -> (Response, Opened) {
    let live = committer.events();
    let durable = committer.durable_seq();
    let first = store.first_seq().unwrap_or(0);
    (
        Response::Subscribed {
            first_seq: first,
            last_seq: durable,
        },
        Opened { live, durable },
    )
}

/// Streams events to `out` until the connection goes away. `id` is the subscribe request's
/// id, echoed on every event frame; its `subscribed` answer was sent by the caller.
pub async fn run(
    opened: Opened,
    id: u64,
    filter: Filter,
    from_seq: Option<u64>,
    store: Arc<dyn Store>,
    committer: Committer,
    out: mpsc::Sender<ServerFrame>,
) {
    let Opened { mut live, durable } = opened;
    let mut next = from_seq.map_or(durable + 1, |s| s.max(1));
    let send = |e: &Event| ServerFrame {
        id,
        response: Response::Event(e.clone()),
    };
    loop {
        // Catch up from the log, never past what is durable.
        let target = committer.durable_seq();
        while next <= target {
            let page = match store.events_from(next, PAGE) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "reading the event log failed; ending subscription");
                    return;
                }
            };
            if page.is_empty() {
                next = target + 1;
                break;
            }
            for e in page.iter().take_while(|e| e.seq <= target) {
                next = e.seq + 1;
                if filter.matches(e) && out.send(send(e)).await.is_err() {
                    return;
                }
            }
            if page.last().is_some_and(|e| e.seq >= target) {
                break;
            }
        }
        // Live.
        loop {
            match live.recv().await {
                Ok(batch) => {
                    if batch.first().is_some_and(|e| e.seq > next) {
                        break; // a gap: go back to the log
                    }
                    for e in batch.iter() {
                        if e.seq < next {
                            continue;
                        }
                        next = e.seq + 1;
                        if filter.matches(e) && out.send(send(e)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            }
        }
    }
}
