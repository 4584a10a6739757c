//! The in-memory engine: every index in an ordered map, the state machine through
//! [`lifecycle`], nothing on disk. It is the reference implementation of the key-value
//! seam (no read-ahead, no encoding: each [`Txn`] method is a map operation) and the engine
//! of fast unit tests. A batch is atomic: every table keeps an undo log that a failed
//! batch replays backwards.
//!
//! [`MemoryStore::restart`] hands the same data to a new store, as a daemon restarting on
//! a server engine would find it: the conformance suite's "reopen".
//!
//! Owns: its maps. Must not: be chosen for a daemon (nothing survives the process).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use herald_plugin_api::{Channel, Event, RecipientKey, RecipientRules, StatusUpdate, UnixMillis};

use super::check::{self, Audit};
use super::lifecycle::{self, HeldFor, HeldKey, HeldUpdates, SeenKey, Txn};
use super::recipients::{self, KeyedWith};
use super::{
    BreakerRecord, Committed, Counts, Lane, LaneDepth, MsgId, Op, Record, Store, StoreError,
    Suppression, SuppressionEntry,
};

/// An ordered map with an undo log for the running batch.
#[derive(Debug)]
struct Table<K: Ord + Clone, V: Clone> {
    map: BTreeMap<K, V>,
    undo: Vec<(K, Option<V>)>,
}

impl<K: Ord + Clone, V: Clone> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            map: BTreeMap::new(),
            undo: Vec::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone> Table<K, V> {
    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    fn insert(&mut self, k: K, v: V) {
        let old = self.map.insert(k.clone(), v);
        self.undo.push((k, old));
    }

    fn remove(&mut self, k: &K) {
        if let Some(old) = self.map.remove(k) {
            self.undo.push((k.clone(), Some(old)));
        }
    }

    fn rollback(&mut self) {
        while let Some((k, old)) = self.undo.pop() {
            match old {
                Some(v) => self.map.insert(k, v),
                None => self.map.remove(&k),
            };
        }
    }

    fn keep(&mut self) {
        self.undo.clear();
    }
}

/// A recipient as the suppression list and the reply index key it.
fn recipient(channel: Channel, key: &RecipientKey) -> (u8, String) {
    (channel as u8, key.as_str().to_string())
}

#[derive(Debug, Default)]
struct Tables {
    records: Table<MsgId, Record>,
    /// The schedule, each entry with its priority lane.
    schedule: Table<(UnixMillis, MsgId), Lane>,
    leases: Table<MsgId, UnixMillis>,
    idempotency: Table<String, (MsgId, UnixMillis)>,
    provider_ids: Table<(String, String), MsgId>,
    dead: Table<MsgId, ()>,
    finished: Table<(UnixMillis, MsgId), ()>,
    suppression: Table<(u8, String), Suppression>,
    latest: Table<(u8, String), MsgId>,
    held: Table<HeldKey, HeldUpdates>,
    seen: Table<(String, String), UnixMillis>,
    seen_at: Table<(UnixMillis, String, String), ()>,
    breakers: Table<String, BreakerRecord>,
    events: Table<u64, Event>,
}

macro_rules! every_table {
    ($t:expr, $method:ident) => {{
        let t = $t;
        t.records.$method();
        t.schedule.$method();
        t.leases.$method();
        t.idempotency.$method();
        t.provider_ids.$method();
        t.dead.$method();
        t.finished.$method();
        t.suppression.$method();
        t.latest.$method();
        t.held.$method();
        t.seen.$method();
        t.seen_at.$method();
        t.breakers.$method();
        t.events.$method();
    }};
}

#[derive(Debug, Default)]
struct State {
    tables: Tables,
    seq: u64,
    counts: Counts,
    /// Created on first use; a restart (`restart`) shares it, a new store has its own.
    epoch: String,
    /// How the recipient-keyed entries are keyed; `None`: schema 1 (see `recipients`).
    keyed_with: Option<KeyedWith>,
}

/// The in-memory engine. Cheap to create; see the module doc.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store keying recipients with the default rules.
    pub fn new() -> MemoryStore {
        MemoryStore::with_rules(RecipientRules::default())
    }

    /// An empty store keying recipients with `rules` (`[recipients]`).
    pub fn with_rules(rules: RecipientRules) -> MemoryStore {
        let store = MemoryStore::default();
        store.lock().keyed_with = Some(KeyedWith::current(rules));
        store
    }

    /// A new store on the same data: what a restarted daemon would find.
    pub fn restart(&self) -> MemoryStore {
        let rules = self.rules();
        self.restart_with(rules)
    }

    /// A restart with `rules`: entries keyed otherwise (another schema, other rules) are
    /// keyed again first, as a persistent engine does at open.
    pub fn restart_with(&self, rules: RecipientRules) -> MemoryStore {
        let store = MemoryStore {
            state: Arc::clone(&self.state),
        };
        let mut state = store.lock();
        let want = KeyedWith::current(rules);
        if state.keyed_with != Some(want) {
            rekey(&mut state.tables, &rules);
            state.keyed_with = Some(want);
        }
        drop(state);
        store
    }

    fn rules(&self) -> RecipientRules {
        self.lock().keyed_with.map(|k| k.rules).unwrap_or_default()
    }

    /// Writes an entry the way schema 1 did (the raw recipient lower-cased in ASCII, the
    /// reason only) and marks the store schema 1, as a data dir of an older heraldd.
    #[cfg(any(test, feature = "test-support"))]
    pub fn plant_legacy(&self, entry: &super::Legacy) {
        let mut state = self.lock();
        let t = &mut state.tables;
        match entry {
            // Nothing is encoded here: the record as an older heraldd read it.
            super::Legacy::Message { id, record } => {
                t.records.insert(
                    *id,
                    Record {
                        lane: super::Lane::Normal,
                        ..(**record).clone()
                    },
                );
                every_table!(&mut state.tables, keep);
                return;
            }
            super::Legacy::Suppressed {
                channel,
                to,
                reason,
            } => {
                let key = to.to_ascii_lowercase();
                let value = Suppression {
                    recipient: key.clone(),
                    reason: reason.clone(),
                    source: super::SuppressionSource::Provider,
                    at: 0,
                };
                t.suppression.insert((*channel as u8, key), value);
            }
            super::Legacy::Latest { channel, to, id } => {
                t.latest
                    .insert((*channel as u8, to.to_ascii_lowercase()), *id);
            }
        }
        every_table!(&mut state.tables, keep);
        state.keyed_with = None;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Damages the indexes on purpose (see [`super::Damage`]).
    #[cfg(any(test, feature = "test-support"))]
    pub fn damage(&self, damage: &super::Damage) -> Result<(), StoreError> {
        use super::Damage;
        let mut state = self.lock();
        let t = &mut state.tables;
        match damage {
            Damage::DropLease(id) => t.leases.remove(id),
            Damage::DropSchedule(id) => {
                let doomed: Vec<_> = t
                    .schedule
                    .map
                    .keys()
                    .filter(|(_, i)| i == id)
                    .cloned()
                    .collect();
                doomed.iter().for_each(|k| t.schedule.remove(k));
            }
            Damage::DropDeadLetter(id) => t.dead.remove(id),
            Damage::DropFinished(id) => {
                let doomed: Vec<_> = t
                    .finished
                    .map
                    .keys()
                    .filter(|(_, i)| i == id)
                    .cloned()
                    .collect();
                doomed.iter().for_each(|k| t.finished.remove(k));
            }
            Damage::AddSchedule(due, id) => t.schedule.insert((*due, *id), Lane::Normal),
            Damage::AddLease(id, until) => t.leases.insert(*id, *until),
            Damage::AddDeadLetter(id) => t.dead.insert(*id, ()),
            Damage::SetCounts(counts) => state.counts = *counts,
        }
        every_table!(&mut state.tables, keep);
        Ok(())
    }
}

/// Keys every suppression and latest entry again under `rules` (see `recipients`).
fn rekey(t: &mut Tables, rules: &RecipientRules) {
    let suppression = std::mem::take(&mut t.suppression.map);
    for ((byte, old), entry) in suppression {
        let key = match recipients::channel_of(byte) {
            Some(channel) => recipients::rekey(channel, &old, &entry.recipient, rules),
            None => old,
        };
        let merged = match t.suppression.map.remove(&(byte, key.clone())) {
            Some(other) => recipients::merge_suppression(other, entry),
            None => entry,
        };
        t.suppression.map.insert((byte, key), merged);
    }
    let latest = std::mem::take(&mut t.latest.map);
    for ((byte, old), id) in latest {
        // The message's own `to` is the best spelling; an entry whose message is gone
        // points nowhere and is dropped.
        let Some(record) = t.records.map.get(&id) else {
            continue;
        };
        let key = match recipients::channel_of(byte) {
            Some(channel) => recipients::rekey(channel, &old, &record.to, rules),
            None => old,
        };
        let merged = match t.latest.map.get(&(byte, key.clone())) {
            Some(other) => recipients::merge_latest(*other, id),
            None => id,
        };
        t.latest.map.insert((byte, key), merged);
    }
}

/// This engine's [`Txn`]: the maps themselves (the store's lock is held).
struct MemTxn<'a> {
    t: &'a mut Tables,
    seq: &'a mut u64,
    counts: &'a mut Counts,
    rules: RecipientRules,
}

impl Txn for MemTxn<'_> {
    type Error = StoreError;

    fn recipient_rules(&self) -> RecipientRules {
        self.rules
    }

    fn message(&mut self, id: &MsgId) -> Result<Option<Record>, StoreError> {
        Ok(self.t.records.get(id).cloned())
    }
    fn put_message(&mut self, id: &MsgId, record: &Record) -> Result<(), StoreError> {
        self.t.records.insert(*id, record.clone());
        Ok(())
    }
    fn remove_message(&mut self, id: &MsgId) -> Result<(), StoreError> {
        self.t.records.remove(id);
        Ok(())
    }

    fn schedule(&mut self, lane: Lane, due: UnixMillis, id: &MsgId) -> Result<(), StoreError> {
        self.t.schedule.insert((due, *id), lane);
        Ok(())
    }
    fn unschedule(&mut self, lane: Lane, due: UnixMillis, id: &MsgId) -> Result<(), StoreError> {
        if self.t.schedule.get(&(due, *id)) == Some(&lane) {
            self.t.schedule.remove(&(due, *id));
        }
        Ok(())
    }
    /// A scan of every due entry, filtered by lane: this engine is for tests and small
    /// queues.
    fn due(
        &mut self,
        lane: Lane,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(UnixMillis, MsgId)>, StoreError> {
        Ok(self
            .t
            .schedule
            .map
            .range(..=(now, [u8::MAX; 16]))
            .filter(|(_, l)| **l == lane)
            .take(limit)
            .map(|(k, _)| *k)
            .collect())
    }

    fn lease(&mut self, id: &MsgId, until: UnixMillis) -> Result<(), StoreError> {
        self.t.leases.insert(*id, until);
        Ok(())
    }
    fn unlease(&mut self, id: &MsgId) -> Result<(), StoreError> {
        self.t.leases.remove(id);
        Ok(())
    }
    fn is_leased(&mut self, id: &MsgId) -> Result<bool, StoreError> {
        Ok(self.t.leases.contains(id))
    }
    fn leased(&mut self) -> Result<Vec<MsgId>, StoreError> {
        Ok(self.t.leases.map.keys().copied().collect())
    }

    fn idempotency(&mut self, key: &str) -> Result<Option<(MsgId, UnixMillis)>, StoreError> {
        Ok(self.t.idempotency.map.get(key).copied())
    }
    fn put_idempotency(
        &mut self,
        key: &str,
        id: &MsgId,
        expires: UnixMillis,
    ) -> Result<(), StoreError> {
        self.t.idempotency.insert(key.to_string(), (*id, expires));
        Ok(())
    }
    fn remove_idempotency(&mut self, key: &str) -> Result<(), StoreError> {
        self.t.idempotency.remove(&key.to_string());
        Ok(())
    }

    fn by_provider_id(&mut self, provider: &str, pid: &str) -> Result<Option<MsgId>, StoreError> {
        Ok(self
            .t
            .provider_ids
            .get(&(provider.to_string(), pid.to_string()))
            .copied())
    }
    fn put_provider_id(&mut self, provider: &str, pid: &str, id: &MsgId) -> Result<(), StoreError> {
        self.t
            .provider_ids
            .insert((provider.to_string(), pid.to_string()), *id);
        Ok(())
    }
    fn remove_provider_id(&mut self, provider: &str, pid: &str) -> Result<(), StoreError> {
        self.t
            .provider_ids
            .remove(&(provider.to_string(), pid.to_string()));
        Ok(())
    }

    fn put_dead(&mut self, id: &MsgId) -> Result<(), StoreError> {
        self.t.dead.insert(*id, ());
        Ok(())
    }
    fn remove_dead(&mut self, id: &MsgId) -> Result<(), StoreError> {
        self.t.dead.remove(id);
        Ok(())
    }

    fn put_finished(&mut self, at: UnixMillis, id: &MsgId) -> Result<(), StoreError> {
        self.t.finished.insert((at, *id), ());
        Ok(())
    }
    fn remove_finished(&mut self, at: UnixMillis, id: &MsgId) -> Result<(), StoreError> {
        self.t.finished.remove(&(at, *id));
        Ok(())
    }
    fn finished_before(
        &mut self,
        before: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(UnixMillis, MsgId)>, StoreError> {
        Ok(self
            .t
            .finished
            .map
            .range(..(before, [0; 16]))
            .take(limit)
            .map(|(k, _)| *k)
            .collect())
    }

    fn suppression(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
    ) -> Result<Option<Suppression>, StoreError> {
        Ok(self.t.suppression.get(&recipient(channel, key)).cloned())
    }
    fn suppress(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
        entry: &Suppression,
    ) -> Result<(), StoreError> {
        self.t
            .suppression
            .insert(recipient(channel, key), entry.clone());
        Ok(())
    }
    fn unsuppress(&mut self, channel: Channel, key: &RecipientKey) -> Result<(), StoreError> {
        self.t.suppression.remove(&recipient(channel, key));
        Ok(())
    }

    fn latest(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
    ) -> Result<Option<MsgId>, StoreError> {
        Ok(self.t.latest.get(&recipient(channel, key)).copied())
    }
    fn put_latest(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
        id: &MsgId,
    ) -> Result<(), StoreError> {
        self.t.latest.insert(recipient(channel, key), *id);
        Ok(())
    }
    fn remove_latest(&mut self, channel: Channel, key: &RecipientKey) -> Result<(), StoreError> {
        self.t.latest.remove(&recipient(channel, key));
        Ok(())
    }

    fn held(&mut self, key: HeldFor<'_>) -> Result<HeldUpdates, StoreError> {
        Ok(self.t.held.get(&owned(key)).cloned().unwrap_or_default())
    }
    fn set_held(
        &mut self,
        key: HeldFor<'_>,
        updates: &[(UnixMillis, StatusUpdate)],
    ) -> Result<(), StoreError> {
        if updates.is_empty() {
            self.t.held.remove(&owned(key));
        } else {
            self.t.held.insert(owned(key), updates.to_vec());
        }
        Ok(())
    }
    fn held_before(
        &mut self,
        before: UnixMillis,
        limit: usize,
    ) -> Result<Vec<HeldKey>, StoreError> {
        Ok(self
            .t
            .held
            .map
            .iter()
            .filter(|(_, updates)| updates.iter().any(|(at, _)| *at < before))
            .take(limit)
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn seen(&mut self, provider: &str, key: &str, now: UnixMillis) -> Result<bool, StoreError> {
        let k = (provider.to_string(), key.to_string());
        if self.t.seen.contains(&k) {
            return Ok(true);
        }
        self.t.seen.insert(k, now);
        self.t
            .seen_at
            .insert((now, provider.to_string(), key.to_string()), ());
        Ok(false)
    }
    fn seen_before(
        &mut self,
        before: UnixMillis,
        limit: usize,
    ) -> Result<Vec<SeenKey>, StoreError> {
        Ok(self
            .t
            .seen_at
            .map
            .range(..(before, String::new(), String::new()))
            .take(limit)
            .map(|((at, provider, key), _)| SeenKey {
                at: *at,
                provider: provider.clone(),
                key: key.clone(),
            })
            .collect())
    }
    fn unsee(&mut self, key: &SeenKey) -> Result<(), StoreError> {
        self.t.seen.remove(&(key.provider.clone(), key.key.clone()));
        self.t
            .seen_at
            .remove(&(key.at, key.provider.clone(), key.key.clone()));
        Ok(())
    }

    fn breaker(&mut self, provider: &str) -> Result<Option<BreakerRecord>, StoreError> {
        Ok(self.t.breakers.map.get(provider).cloned())
    }
    fn put_breaker(&mut self, provider: &str, record: &BreakerRecord) -> Result<(), StoreError> {
        self.t.breakers.insert(provider.to_string(), record.clone());
        Ok(())
    }

    fn prune_events(&mut self, before: UnixMillis, limit: usize) -> Result<u64, StoreError> {
        let old: Vec<u64> = self
            .t
            .events
            .map
            .iter()
            .take_while(|(_, e)| e.at < before)
            .take(limit)
            .map(|(seq, _)| *seq)
            .collect();
        old.iter().for_each(|seq| self.t.events.remove(seq));
        Ok(old.len() as u64)
    }

    fn audit(&mut self, counts: &Counts) -> Result<Audit, StoreError> {
        let t = &self.t;
        check::audit(
            t.records.map.iter().map(|(id, r)| Ok((*id, r.clone()))),
            t.schedule.map.keys().map(|k| Ok(*k)),
            t.leases.map.keys().map(|id| Ok(*id)),
            t.dead.map.keys().map(|id| Ok(*id)),
            t.finished.map.keys().map(|k| Ok(*k)),
            *counts,
        )
    }

    fn finish(&mut self, events: &[Event], seq: u64, counts: &Counts) -> Result<(), StoreError> {
        for e in events {
            self.t.events.insert(e.seq, e.clone());
        }
        *self.seq = seq;
        *self.counts = *counts;
        Ok(())
    }
}

fn owned(key: HeldFor<'_>) -> HeldKey {
    match key {
        HeldFor::Message(id) => HeldKey::Message(*id),
        HeldFor::ProviderId { provider, pid } => HeldKey::ProviderId {
            provider: provider.to_string(),
            pid: pid.to_string(),
        },
    }
}

impl Store for MemoryStore {
    fn commit(&self, now: UnixMillis, ops: &[Op]) -> Result<Committed, StoreError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let (seq, counts) = (state.seq, state.counts);
        let rules = state.keyed_with.map(|k| k.rules).unwrap_or_default();
        let mut txn = MemTxn {
            t: &mut state.tables,
            seq: &mut state.seq,
            counts: &mut state.counts,
            rules,
        };
        match lifecycle::apply_batch(&mut txn, now, ops, seq, counts) {
            Ok(batch) => {
                every_table!(&mut state.tables, keep);
                Ok(Committed {
                    results: batch.results,
                    events: batch.cursor.events,
                    scheduled: batch.cursor.scheduled,
                })
            }
            Err(e) => {
                every_table!(&mut state.tables, rollback);
                state.seq = seq;
                state.counts = counts;
                Err(e)
            }
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn get(&self, id: &MsgId) -> Result<Option<Record>, StoreError> {
        Ok(self.lock().tables.records.get(id).cloned())
    }

    fn idempotency_key(&self, key: &str, now: UnixMillis) -> Result<Option<MsgId>, StoreError> {
        Ok(self
            .lock()
            .tables
            .idempotency
            .get(&key.to_string())
            .and_then(|&(id, expires)| (expires > now).then_some(id)))
    }

    fn events_from(&self, from: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        Ok(self
            .lock()
            .tables
            .events
            .map
            .range((Bound::Included(from), Bound::Unbounded))
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    fn first_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .tables
            .events
            .map
            .keys()
            .next()
            .copied()
            .unwrap_or(0))
    }

    fn last_seq(&self) -> u64 {
        self.lock().seq
    }

    fn next_due(&self) -> Result<Option<UnixMillis>, StoreError> {
        Ok(self
            .lock()
            .tables
            .schedule
            .map
            .keys()
            .next()
            .map(|(t, _)| *t))
    }

    fn lanes(&self) -> Result<[LaneDepth; 3], StoreError> {
        let mut out = [LaneDepth::default(); 3];
        for ((due, _), lane) in &self.lock().tables.schedule.map {
            let d = &mut out[lane.index()];
            d.depth += 1;
            d.earliest_due.get_or_insert(*due);
        }
        Ok(out)
    }

    fn counts(&self) -> Counts {
        self.lock().counts
    }

    fn dead(&self, limit: usize) -> Result<Vec<(MsgId, Record)>, StoreError> {
        let state = self.lock();
        Ok(state
            .tables
            .dead
            .map
            .keys()
            .take(limit)
            .filter_map(|id| state.tables.records.get(id).map(|r| (*id, r.clone())))
            .collect())
    }

    fn epoch(&self) -> String {
        let mut state = self.lock();
        if state.epoch.is_empty() {
            state.epoch = format!("{:016x}", rand::random::<u64>());
        }
        state.epoch.clone()
    }

    fn breakers(&self) -> Result<BTreeMap<String, BreakerRecord>, StoreError> {
        Ok(self.lock().tables.breakers.map.clone())
    }

    fn recipient_key(&self, channel: Channel, recipient: &str) -> Option<RecipientKey> {
        recipients::key(channel, recipient, &self.rules())
    }

    fn suppression(
        &self,
        channel: Channel,
        key: &RecipientKey,
    ) -> Result<Option<Suppression>, StoreError> {
        Ok(self
            .lock()
            .tables
            .suppression
            .get(&recipient(channel, key))
            .cloned())
    }

    fn suppressions(
        &self,
        after: Option<(Channel, &str)>,
        limit: usize,
    ) -> Result<Vec<SuppressionEntry>, StoreError> {
        let state = self.lock();
        let start = match after {
            Some((channel, key)) => Bound::Excluded((channel as u8, key.to_string())),
            None => Bound::Unbounded,
        };
        Ok(state
            .tables
            .suppression
            .map
            .range((start, Bound::Unbounded))
            .filter_map(|((byte, key), entry)| {
                Some(SuppressionEntry {
                    channel: recipients::channel_of(*byte)?,
                    key: key.clone(),
                    entry: entry.clone(),
                })
            })
            .take(limit)
            .collect())
    }
}
