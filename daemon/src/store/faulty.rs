//! A test store: the real sled store with faults injected at the `Store` boundary — a
//! flush that fails (as on ENOSPC) or blocks (as sled's `make_stable` did on a full disk),
//! and event-log reads that fail as a shared engine's do when its connection is lost.
//!
//! Owns: the injected faults. Must not: be compiled outside tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use herald_plugin_api::{Content, Event, SmsContent};

use super::{
    BreakerRecord, Counts, MsgId, NewMessage, Op, Record, SledStore, Store, StoreError, new_id,
};

/// A new SMS to accept, for tests that need messages and events but not their content.
pub fn sms() -> NewMessage {
    NewMessage {
        id: new_id(),
        to: "+14155550100".into(),
        content: Content::Sms(SmsContent {
            body: "RSVP?".into(),
            ..Default::default()
        }),
        tags: vec![],
        idempotency_key: None,
        send_at: None,
        ttl_ms: 60_000,
        idempotency_window_ms: 1_000,
        override_suppression: false,
        lane: Default::default(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    Pass,
    Fail,
    Block,
}

pub struct Faulty {
    inner: SledStore,
    flush: Mutex<Flush>,
    released: Condvar,
    pub commits: AtomicU64,
    /// Event-log reads still to fail as `Unavailable`.
    failing_reads: AtomicU32,
    /// Event-log reads still to fail as `Corrupt` (after the `Unavailable` ones).
    corrupt_reads: AtomicU32,
}

impl Faulty {
    pub fn open(dir: &std::path::Path, flush: Flush) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner: SledStore::open(dir, 1 << 20).unwrap(),
            flush: Mutex::new(flush),
            released: Condvar::new(),
            commits: AtomicU64::new(0),
            failing_reads: AtomicU32::new(0),
            corrupt_reads: AtomicU32::new(0),
        })
    }

    /// The next `n` reads of the event log fail as a lost connection's do.
    pub fn fail_log_reads(&self, n: u32) {
        self.failing_reads.store(n, Ordering::SeqCst);
    }

    /// The next `n` reads of the event log find it corrupt (an engine error no retry fixes).
    pub fn corrupt_log_reads(&self, n: u32) {
        self.corrupt_reads.store(n, Ordering::SeqCst);
    }

    /// Event-log reads not yet failed.
    pub fn log_reads_to_fail(&self) -> u32 {
        self.failing_reads.load(Ordering::SeqCst)
    }

    pub fn set(&self, mode: Flush) {
        *self.flush.lock().unwrap() = mode;
        self.released.notify_all();
    }
}

impl Store for Faulty {
    fn commit(&self, now: u64, ops: &[Op]) -> Result<super::Committed, StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(now, ops)
    }
    fn flush(&self) -> Result<(), StoreError> {
        let mut mode = self.flush.lock().unwrap();
        loop {
            match *mode {
                Flush::Pass => return self.inner.flush(),
                Flush::Fail => {
                    return Err(StoreError::Io(
                        "No space left on device (os error 28)".into(),
                    ));
                }
                Flush::Block => mode = self.released.wait(mode).unwrap(),
            }
        }
    }
    fn get(&self, id: &MsgId) -> Result<Option<Record>, StoreError> {
        self.inner.get(id)
    }
    fn idempotency_key(&self, key: &str, now: u64) -> Result<Option<MsgId>, StoreError> {
        self.inner.idempotency_key(key, now)
    }
    fn epoch(&self) -> String {
        self.inner.epoch()
    }
    fn events_from(&self, from: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let failing = self
            .failing_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(StoreError::Unavailable("the connection was lost".into()));
        }
        let corrupt = self
            .corrupt_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if corrupt.is_ok() {
            return Err(StoreError::Corrupt("an event of the log".into()));
        }
        self.inner.events_from(from, limit)
    }
    fn first_seq(&self) -> Result<u64, StoreError> {
        self.inner.first_seq()
    }
    fn last_seq(&self) -> u64 {
        self.inner.last_seq()
    }
    fn next_due(&self) -> Result<Option<u64>, StoreError> {
        self.inner.next_due()
    }
    fn lanes(&self) -> Result<[super::LaneDepth; 3], StoreError> {
        self.inner.lanes()
    }
    fn counts(&self) -> Counts {
        self.inner.counts()
    }
    fn dead(&self, limit: usize) -> Result<Vec<(MsgId, Record)>, StoreError> {
        self.inner.dead(limit)
    }
    fn recipient_key(
        &self,
        channel: herald_plugin_api::Channel,
        recipient: &str,
    ) -> Option<herald_plugin_api::RecipientKey> {
        self.inner.recipient_key(channel, recipient)
    }
    fn suppression(
        &self,
        channel: herald_plugin_api::Channel,
        key: &herald_plugin_api::RecipientKey,
    ) -> Result<Option<super::Suppression>, StoreError> {
        self.inner.suppression(channel, key)
    }
    fn suppressions(
        &self,
        after: Option<(herald_plugin_api::Channel, &str)>,
        limit: usize,
    ) -> Result<Vec<super::SuppressionEntry>, StoreError> {
        self.inner.suppressions(after, limit)
    }
    fn breakers(&self) -> Result<std::collections::BTreeMap<String, BreakerRecord>, StoreError> {
        self.inner.breakers()
    }
}
