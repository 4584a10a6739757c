//! The leases this daemon holds while it sends, kept alive on a store several daemons
//! share. A delivery may outlast `store.lease` — a slow provider, a failover through the
//! route, a wait for rate-limit tokens or for a place under `max_in_flight` — and another
//! daemon returns an expired lease to the queue and sends the message again. So every third
//! of the lease one [`Op::Renew`] extends every lease still held; a daemon that dies stops
//! renewing, and its leases expire as before.
//!
//! A lease is held from the claim until its completion is committed ([`Held::release`]) or
//! its delivery task ends ([`Hold`]'s drop), whichever comes first — renewed also while a
//! completion waits for a store out of reach.
//!
//! Owns: the set of held leases and the renewal loop. Must not: decide outcomes, or touch
//! the store except through the committer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock;
use crate::commit::Committer;
use crate::store::{Claimed, MsgId, Op, OpResult, id_string};

/// A held lease: the claim's fencing token, and whether its completion is on its way (a
/// renewal that finds such a lease gone met the completion, not a loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    fence: u64,
    completing: bool,
}

/// The leases held now, by message.
#[derive(Debug, Default)]
pub struct Held {
    leases: Mutex<HashMap<MsgId, Lease>>,
}

/// The leases of one delivery task; released when it is dropped.
#[derive(Debug)]
pub struct Hold {
    held: Arc<Held>,
    leases: Vec<(MsgId, u64)>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        for (id, fence) in &self.leases {
            self.held.release(id, *fence);
        }
    }
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MsgId, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds the leases of `claimed` until the returned guard is dropped.
    pub fn hold<'a>(self: &Arc<Self>, claimed: impl IntoIterator<Item = &'a Claimed>) -> Hold {
        self.hold_leases(claimed.into_iter().map(|c| (c.id, c.fence)).collect())
    }

    fn hold_leases(self: &Arc<Self>, leases: Vec<(MsgId, u64)>) -> Hold {
        let mut map = self.lock();
        for (id, fence) in &leases {
            map.insert(
                *id,
                Lease {
                    fence: *fence,
                    completing: false,
                },
            );
        }
        Hold {
            held: Arc::clone(self),
            leases,
        }
    }

    /// The delivery's outcome is on its way to the store: the lease is still renewed
    /// until it is committed, but finding it gone is no longer a loss.
    pub fn completing(&self, id: &MsgId, fence: u64) {
        if let Some(lease) = self.lock().get_mut(id)
            && lease.fence == fence
        {
            lease.completing = true;
        }
    }

    /// The outcome is committed (or given up): the lease needs no renewal. Only the claim
    /// `fence` names is released (the message may have been claimed again).
    pub fn release(&self, id: &MsgId, fence: u64) {
        let mut map = self.lock();
        if map.get(id).is_some_and(|l| l.fence == fence) {
            map.remove(id);
        }
    }

    fn snapshot(&self) -> Vec<(MsgId, u64)> {
        self.lock().iter().map(|(id, l)| (*id, l.fence)).collect()
    }

    /// Still held under `fence`, and its completion not yet on its way.
    fn lost_while_sending(&self, id: &MsgId, fence: u64) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|l| l.fence == fence && !l.completing)
    }

    /// Renews every held lease each third of `lease_ms`, for ever (the dispatcher aborts
    /// it when it stops).
    pub async fn renew(self: Arc<Self>, committer: Committer, lease_ms: u64) {
        let every = Duration::from_millis((lease_ms / 3).max(100));
        loop {
            tokio::time::sleep(every).await;
            let leases = self.snapshot();
            if leases.is_empty() {
                continue;
            }
            let held = leases.len();
            let fences: HashMap<MsgId, u64> = leases.iter().copied().collect();
            let op = Op::Renew {
                leases,
                until: clock::now_ms() + lease_ms,
            };
            match committer.submit(op).await {
                Ok(OpResult::Renewed { lost }) => {
                    // A lease released, or completing, meanwhile was completed, not lost.
                    let lost: Vec<(MsgId, u64)> = lost
                        .into_iter()
                        .filter_map(|id| Some((id, *fences.get(&id)?)))
                        .filter(|(id, fence)| self.lost_while_sending(id, *fence))
                        .collect();
                    if let Some((first, _)) = lost.first() {
                        tracing::warn!(
                            lost = lost.len(),
                            held,
                            example = %id_string(first),
                            "leases expired before they were renewed and were taken back: \
                             another daemon may send these messages again (is the store \
                             answering slowly?)"
                        );
                        for (id, fence) in &lost {
                            self.release(id, *fence);
                        }
                    } else {
                        tracing::debug!(held, "renewed the leases of deliveries in flight");
                    }
                }
                Ok(other) => tracing::error!(?other, "unexpected lease renewal result"),
                Err(e) => tracing::warn!(error = %e, held, "renewing leases failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_releases_its_leases_and_only_its_own_claim() {
        let held = Arc::new(Held::default());
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let hold = held.hold_leases(vec![(a, 10), (b, 20)]);
        assert_eq!(held.snapshot().len(), 2);
        // A completing lease is still renewed, but finding it gone is no loss.
        held.completing(&a, 10);
        assert_eq!(held.snapshot().len(), 2);
        assert!(!held.lost_while_sending(&a, 10));
        assert!(held.lost_while_sending(&b, 20));
        assert!(!held.lost_while_sending(&b, 19), "another claim's token");
        held.release(&a, 10);
        assert_eq!(held.snapshot(), vec![(b, 20)]);
        // b claimed again (a later claim, another token) while the first task still runs:
        // the first task's end must not release the new claim.
        let second = held.hold_leases(vec![(b, 21)]);
        drop(hold);
        assert_eq!(held.snapshot(), vec![(b, 21)]);
        drop(second);
        assert!(held.snapshot().is_empty());
    }
}
