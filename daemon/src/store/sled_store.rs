//! The embedded sled backend. The only module that knows sled exists.
//!
//! Trees (keys are big-endian so byte order is time/seq order):
//! `records` id → record · `schedule` due ++ id → () · `leases` id → until ·
//! `idem` key → id ++ expires · `pids` provider 0 pid → id · `dead` id → () ·
//! `finished` at ++ id → () · `suppression` channel ++ recipient → reason ·
//! `events` first seq → a block of up to 64 consecutive events · `held` key → webhook updates waiting for their message ·
//! `latest` channel ++ recipient → id (for tagging replies) · `seen` provider 0 key → at
//! and `seen_at` at ++ provider 0 key (webhook de-duplication) · `breakers` provider →
//! breaker state · `meta` "seq"/"counts".
//!
//! Values are postcard with a leading format-version byte. A whole batch is one sled
//! transaction over all trees (one transaction per message measured ~3,300 msg/s here; a
//! batch amortises it). sled only fsyncs on its own every 500 ms, so durability is the
//! explicit [`Store::flush`] the group committer calls; background flushing is off.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_plugin_api::{Channel, Event, StatusUpdate, UnixMillis};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::{Transactional, Tree};

use super::lifecycle::{self, Cursor, PreRead, Txn};
use super::{BreakerRecord, Committed, Counts, MsgId, Op, Record, Store, StoreError};

const FORMAT_VERSION: u8 = 1;

/// Events per block in the `events` tree. A batch writes its events as a few blocks rather
/// than one key each: sled's cost is per insert, and a batch emits thousands of events.
const EVENTS_PER_BLOCK: usize = 64;

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // postcard into a Vec cannot fail for our types (no maps with non-string keys etc.).
    out = postcard::to_extend(v, out).unwrap_or_else(|_| vec![FORMAT_VERSION]);
    out
}

fn dec<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
        }
        Some((v, _)) => Err(StoreError::Corrupt(format!(
            "{what}: unknown format version {v} (written by a newer heraldd?)"
        ))),
        None => Err(StoreError::Corrupt(format!("{what}: empty value"))),
    }
}

fn be8(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn key24(t: u64, id: &MsgId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&be8(t));
    k[8..].copy_from_slice(id);
    k
}

fn split24(k: &[u8]) -> Option<(u64, MsgId)> {
    if k.len() != 24 {
        return None;
    }
    let t = u64::from_be_bytes(k[..8].try_into().ok()?);
    let id: MsgId = k[8..].try_into().ok()?;
    Some((t, id))
}

/// The seq in an `events` key.
fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(
        key.try_into()
            .map_err(|_| StoreError::Corrupt("event key".into()))?,
    ))
}

fn pid_key(provider: &str, pid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(provider.len() + 1 + pid.len());
    k.extend_from_slice(provider.as_bytes());
    k.push(0);
    k.extend_from_slice(pid.as_bytes());
    k
}

fn suppression_key(channel: Channel, to: &str) -> Vec<u8> {
    let mut k = vec![channel as u8];
    k.extend_from_slice(to.to_ascii_lowercase().as_bytes());
    k
}

/// Removes a snapshot that a kill during `sled::open` left half-written: sled would refuse
/// the next open with `Corruption` (sled #1527, #1533).
fn remove_partial_snapshots(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

pub struct SledStore {
    db: sled::Db,
    records: Tree,
    schedule: Tree,
    leases: Tree,
    idem: Tree,
    pids: Tree,
    dead: Tree,
    finished: Tree,
    suppression: Tree,
    events: Tree,
    held: Tree,
    latest: Tree,
    seen: Tree,
    seen_at: Tree,
    meta: Tree,
    breakers: Tree,
    /// Committed seq and counts (the writer is the only one to change them).
    committed: Mutex<(u64, Counts)>,
    last_seq: AtomicU64,
    /// `meta` "epoch": created with the store, never changed.
    epoch: String,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("last_seq", &self.last_seq.load(Ordering::Relaxed))
            .finish()
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. `cache_capacity` bounds sled's page cache.
    pub fn open(dir: &Path, cache_capacity: u64) -> Result<SledStore, StoreError> {
        let removed = remove_partial_snapshots(dir).map_err(|e| StoreError::Io(e.to_string()))?;
        if removed > 0 {
            tracing::warn!(removed, dir = %dir.display(), "removed a partial sled snapshot left by a kill during start-up");
        }
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    StoreError::Locked(format!(
                        "{} is locked: another heraldd is using this data_dir ({io})",
                        dir.display()
                    ))
                }
                other => io(other),
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(io);
        let mut store = SledStore {
            records: tree("records")?,
            schedule: tree("schedule")?,
            leases: tree("leases")?,
            idem: tree("idem")?,
            pids: tree("pids")?,
            dead: tree("dead")?,
            finished: tree("finished")?,
            suppression: tree("suppression")?,
            events: tree("events")?,
            held: tree("held")?,
            latest: tree("latest")?,
            seen: tree("seen")?,
            seen_at: tree("seen_at")?,
            meta: tree("meta")?,
            breakers: tree("breakers")?,
            db,
            committed: Mutex::new((0, Counts::default())),
            last_seq: AtomicU64::new(0),
            epoch: String::new(),
        };
        store.epoch = store.open_epoch()?;
        let mut seq = match store.meta.get("seq").map_err(io)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("meta seq".into()))?,
            ),
            None => 0,
        };
        if let Some((_, v)) = store.events.last().map_err(io)? {
            let block: Vec<Event> = dec(&v, "event block")?;
            if let Some(last) = block.last() {
                seq = seq.max(last.seq);
            }
        }
        let counts = match store.meta.get("counts").map_err(io)? {
            Some(v) => dec(&v, "meta counts")?,
            None => Counts::default(),
        };
        *store.lock() = (seq, counts);
        store.last_seq.store(seq, Ordering::Release);
        Ok(store)
    }

    /// The epoch stored in `meta`, created (and flushed) on the first open of a data dir.
    /// It is a plain string written once, outside the postcard-versioned values.
    fn open_epoch(&self) -> Result<String, StoreError> {
        if let Some(v) = self.meta.get("epoch").map_err(io)? {
            return String::from_utf8(v.to_vec())
                .map_err(|_| StoreError::Corrupt("meta epoch is not UTF-8".into()));
        }
        let epoch = format!("{:016x}", rand::random::<u64>());
        self.meta.insert("epoch", epoch.as_bytes()).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(epoch)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Counts)> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Range scans the transaction cannot do itself.
    fn pre_read(&self, now: UnixMillis, ops: &[Op]) -> Result<PreRead, StoreError> {
        // Lookups that are almost always misses are skipped when the tree is empty and
        // nothing in this batch can fill it.
        let mut pre = PreRead {
            held_possible: !self.held.is_empty()
                || ops.iter().any(|o| matches!(o, Op::Status { .. })),
            suppression_possible: !self.suppression.is_empty()
                || ops
                    .iter()
                    .any(|o| matches!(o, Op::Complete(_) | Op::Status { .. } | Op::Inbound { .. })),
            ..PreRead::default()
        };
        let claim: usize = ops
            .iter()
            .map(|o| match o {
                Op::Claim { limit, .. } => *limit,
                _ => 0,
            })
            .sum();
        if claim > 0 {
            let mut due = VecDeque::with_capacity(claim);
            for kv in self.schedule.range(..be8(now.saturating_add(1)).to_vec()) {
                let (k, _) = kv.map_err(io)?;
                if let Some(entry) = split24(&k) {
                    due.push_back(entry);
                }
                if due.len() >= claim {
                    break;
                }
            }
            pre.due = due;
        }
        if ops.iter().any(|o| matches!(o, Op::Recover)) {
            for kv in self.leases.iter() {
                let (k, _) = kv.map_err(io)?;
                if let Ok(id) = <MsgId>::try_from(k.as_ref()) {
                    pre.leased.push(id);
                }
            }
        }
        for op in ops {
            if let Op::Prune { before, limit } = op {
                for kv in self.finished.range(..be8(*before).to_vec()).take(*limit) {
                    let (k, _) = kv.map_err(io)?;
                    if let Some(entry) = split24(&k) {
                        pre.finished.push(entry);
                    }
                }
                for kv in self.events.iter().take(*limit) {
                    let (k, v) = kv.map_err(io)?;
                    let block: Vec<Event> = dec(&v, "event block")?;
                    // Whole blocks only: the newest event of the block decides.
                    if block.last().is_none_or(|e| e.at >= *before) {
                        break;
                    }
                    pre.old_events.push(seq_of(&k)?);
                    pre.old_event_count += block.len() as u64;
                }
                for kv in self.seen_at.range(..be8(*before).to_vec()).take(*limit) {
                    let (k, _) = kv.map_err(io)?;
                    if k.len() > 8 {
                        let at = u64::from_be_bytes(k[..8].try_into().unwrap_or([0; 8]));
                        pre.old_seen.push((at, k[8..].to_vec()));
                    }
                }
                // Held updates are few (only webhooks that outran their message).
                for kv in self.held.iter().take(*limit) {
                    let (k, v) = kv.map_err(io)?;
                    let held: Vec<(UnixMillis, StatusUpdate)> = dec(&v, "held updates")?;
                    if held.iter().any(|(at, _)| at < before) {
                        pre.old_held.push(k.to_vec());
                    }
                }
                pre.prune_before = *before;
            }
        }
        Ok(pre)
    }
}

/// The transaction view: one `TransactionalTree` per tree, in declaration order.
struct SledTxn<'a> {
    t: &'a [TransactionalTree],
}

type TxError = ConflictableTransactionError<StoreError>;

/// Lets the state machine abort a transaction with a store error.
impl From<StoreError> for ConflictableTransactionError<StoreError> {
    fn from(e: StoreError) -> Self {
        ConflictableTransactionError::Abort(e)
    }
}

impl SledTxn<'_> {
    fn records(&self) -> &TransactionalTree {
        &self.t[0]
    }
    fn schedule(&self) -> &TransactionalTree {
        &self.t[1]
    }
    fn leases(&self) -> &TransactionalTree {
        &self.t[2]
    }
    fn idem(&self) -> &TransactionalTree {
        &self.t[3]
    }
    fn pids(&self) -> &TransactionalTree {
        &self.t[4]
    }
    fn dead(&self) -> &TransactionalTree {
        &self.t[5]
    }
    fn finished_tree(&self) -> &TransactionalTree {
        &self.t[6]
    }
    fn suppression(&self) -> &TransactionalTree {
        &self.t[7]
    }
    fn events(&self) -> &TransactionalTree {
        &self.t[8]
    }
    fn held(&self) -> &TransactionalTree {
        &self.t[9]
    }
    fn latest(&self) -> &TransactionalTree {
        &self.t[10]
    }
    fn seen_tree(&self) -> &TransactionalTree {
        &self.t[11]
    }
    fn seen_at(&self) -> &TransactionalTree {
        &self.t[12]
    }
    fn meta(&self) -> &TransactionalTree {
        &self.t[13]
    }
    fn breakers(&self) -> &TransactionalTree {
        &self.t[14]
    }
}

fn unab(e: UnabortableTransactionError) -> TxError {
    e.into()
}

impl Txn for SledTxn<'_> {
    type Error = TxError;

    fn get_record(&self, id: &MsgId) -> Result<Option<Record>, TxError> {
        match self.records().get(id).map_err(unab)? {
            Some(v) => Ok(Some(dec(&v, "record").map_err(TxError::Abort)?)),
            None => Ok(None),
        }
    }
    fn put_record(&self, id: &MsgId, record: &Record) -> Result<(), TxError> {
        self.records().insert(&id[..], enc(record)).map_err(unab)?;
        Ok(())
    }
    fn schedule(&self, due: UnixMillis, id: &MsgId) -> Result<(), TxError> {
        self.schedule()
            .insert(&key24(due, id)[..], &[][..])
            .map_err(unab)?;
        Ok(())
    }
    fn unschedule(&self, due: UnixMillis, id: &MsgId) -> Result<(), TxError> {
        self.schedule().remove(&key24(due, id)[..]).map_err(unab)?;
        Ok(())
    }
    fn lease(&self, id: &MsgId, until: UnixMillis) -> Result<(), TxError> {
        self.leases()
            .insert(&id[..], &be8(until)[..])
            .map_err(unab)?;
        Ok(())
    }
    fn unlease(&self, id: &MsgId) -> Result<(), TxError> {
        self.leases().remove(&id[..]).map_err(unab)?;
        Ok(())
    }
    fn idem_get(&self, key: &str) -> Result<Option<(MsgId, UnixMillis)>, TxError> {
        let Some(v) = self.idem().get(key.as_bytes()).map_err(unab)? else {
            return Ok(None);
        };
        if v.len() != 24 {
            return Err(TxError::Abort(StoreError::Corrupt(
                "idempotency entry".into(),
            )));
        }
        let id: MsgId = v[..16]
            .try_into()
            .map_err(|_| TxError::Abort(StoreError::Corrupt("idempotency entry".into())))?;
        let exp = u64::from_be_bytes(
            v[16..]
                .try_into()
                .map_err(|_| TxError::Abort(StoreError::Corrupt("idempotency entry".into())))?,
        );
        Ok(Some((id, exp)))
    }
    fn idem_put(&self, key: &str, id: &MsgId, expires: UnixMillis) -> Result<(), TxError> {
        let mut v = [0u8; 24];
        v[..16].copy_from_slice(id);
        v[16..].copy_from_slice(&be8(expires));
        self.idem().insert(key.as_bytes(), &v[..]).map_err(unab)?;
        Ok(())
    }
    fn provider_id_put(&self, provider: &str, pid: &str, id: &MsgId) -> Result<(), TxError> {
        self.pids()
            .insert(pid_key(provider, pid), &id[..])
            .map_err(unab)?;
        Ok(())
    }
    fn dead_put(&self, id: &MsgId) -> Result<(), TxError> {
        self.dead().insert(&id[..], &[][..]).map_err(unab)?;
        Ok(())
    }
    fn dead_remove(&self, id: &MsgId) -> Result<(), TxError> {
        self.dead().remove(&id[..]).map_err(unab)?;
        Ok(())
    }
    fn finished(&self, at: UnixMillis, id: &MsgId) -> Result<(), TxError> {
        self.finished_tree()
            .insert(&key24(at, id)[..], &[][..])
            .map_err(unab)?;
        Ok(())
    }
    fn is_suppressed(&self, channel: Channel, to: &str) -> Result<bool, TxError> {
        Ok(self
            .suppression()
            .get(suppression_key(channel, to))
            .map_err(unab)?
            .is_some())
    }
    fn suppress(&self, channel: Channel, to: &str, reason: &str) -> Result<(), TxError> {
        self.suppression()
            .insert(suppression_key(channel, to), reason.as_bytes())
            .map_err(unab)?;
        Ok(())
    }
    fn remove_record(&self, id: &MsgId) -> Result<(), TxError> {
        self.records().remove(&id[..]).map_err(unab)?;
        Ok(())
    }
    fn idem_remove(&self, key: &str) -> Result<(), TxError> {
        self.idem().remove(key.as_bytes()).map_err(unab)?;
        Ok(())
    }
    fn provider_id_remove(&self, provider: &str, pid: &str) -> Result<(), TxError> {
        self.pids().remove(pid_key(provider, pid)).map_err(unab)?;
        Ok(())
    }
    fn unfinished(&self, at: UnixMillis, id: &MsgId) -> Result<(), TxError> {
        self.finished_tree()
            .remove(&key24(at, id)[..])
            .map_err(unab)?;
        Ok(())
    }
    fn remove_event_block(&self, first: u64) -> Result<(), TxError> {
        self.events().remove(&be8(first)[..]).map_err(unab)?;
        Ok(())
    }
    fn provider_id_get(&self, provider: &str, pid: &str) -> Result<Option<MsgId>, TxError> {
        Ok(self
            .pids()
            .get(pid_key(provider, pid))
            .map_err(unab)?
            .and_then(|v| <MsgId>::try_from(v.as_ref()).ok()))
    }
    fn held_get(&self, key: &[u8]) -> Result<Vec<(UnixMillis, StatusUpdate)>, TxError> {
        match self.held().get(key).map_err(unab)? {
            Some(v) => dec(&v, "held updates").map_err(TxError::Abort),
            None => Ok(Vec::new()),
        }
    }
    fn held_put(&self, key: &[u8], updates: &[(UnixMillis, StatusUpdate)]) -> Result<(), TxError> {
        self.held().insert(key, enc(&updates)).map_err(unab)?;
        Ok(())
    }
    fn held_remove(&self, key: &[u8]) -> Result<(), TxError> {
        self.held().remove(key).map_err(unab)?;
        Ok(())
    }
    fn latest_get(&self, channel: Channel, to: &str) -> Result<Option<MsgId>, TxError> {
        Ok(self
            .latest()
            .get(suppression_key(channel, to))
            .map_err(unab)?
            .and_then(|v| <MsgId>::try_from(v.as_ref()).ok()))
    }
    fn latest_put(&self, channel: Channel, to: &str, id: &MsgId) -> Result<(), TxError> {
        self.latest()
            .insert(suppression_key(channel, to), &id[..])
            .map_err(unab)?;
        Ok(())
    }
    fn latest_remove(&self, channel: Channel, to: &str) -> Result<(), TxError> {
        self.latest()
            .remove(suppression_key(channel, to))
            .map_err(unab)?;
        Ok(())
    }
    fn unsuppress(&self, channel: Channel, to: &str) -> Result<(), TxError> {
        self.suppression()
            .remove(suppression_key(channel, to))
            .map_err(unab)?;
        Ok(())
    }
    fn seen(&self, provider: &str, key: &str, now: UnixMillis) -> Result<bool, TxError> {
        let k = pid_key(provider, key);
        if self.seen_tree().get(&k).map_err(unab)?.is_some() {
            return Ok(true);
        }
        self.seen_tree()
            .insert(&k[..], &be8(now)[..])
            .map_err(unab)?;
        let mut tk = be8(now).to_vec();
        tk.extend_from_slice(&k);
        self.seen_at().insert(tk, &[][..]).map_err(unab)?;
        Ok(false)
    }
    fn unsee(&self, at: UnixMillis, provider_key: &[u8]) -> Result<(), TxError> {
        self.seen_tree().remove(provider_key).map_err(unab)?;
        let mut tk = be8(at).to_vec();
        tk.extend_from_slice(provider_key);
        self.seen_at().remove(tk).map_err(unab)?;
        Ok(())
    }

    fn breaker_get(&self, provider: &str) -> Result<Option<BreakerRecord>, TxError> {
        match self.breakers().get(provider.as_bytes()).map_err(unab)? {
            Some(v) => Ok(Some(dec(&v, "breaker")?)),
            None => Ok(None),
        }
    }

    fn breaker_put(&self, provider: &str, record: &BreakerRecord) -> Result<(), TxError> {
        self.breakers()
            .insert(provider.as_bytes(), enc(record))
            .map_err(unab)?;
        Ok(())
    }
}

impl Store for SledStore {
    fn commit(&self, now: UnixMillis, ops: &[Op]) -> Result<Committed, StoreError> {
        let pre = self.pre_read(now, ops)?;
        let (seq, counts) = *self.lock();
        let trees: [&Tree; 15] = [
            &self.records,
            &self.schedule,
            &self.leases,
            &self.idem,
            &self.pids,
            &self.dead,
            &self.finished,
            &self.suppression,
            &self.events,
            &self.held,
            &self.latest,
            &self.seen,
            &self.seen_at,
            &self.meta,
            &self.breakers,
        ];
        let result = trees[..].transaction(|t| {
            // The closure may run again on a conflict: start from the pre-read each time.
            let mut pre = PreRead {
                due: pre.due.clone(),
                leased: pre.leased.clone(),
                finished: pre.finished.clone(),
                old_events: pre.old_events.clone(),
                old_event_count: pre.old_event_count,
                old_seen: pre.old_seen.clone(),
                old_held: pre.old_held.clone(),
                prune_before: pre.prune_before,
                held_possible: pre.held_possible,
                suppression_possible: pre.suppression_possible,
            };
            let txn = SledTxn { t };
            let mut cur = Cursor::new(seq, counts);
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                results.push(lifecycle::apply(&txn, now, op, &mut cur, &mut pre)?);
            }
            for block in cur.events.chunks(EVENTS_PER_BLOCK) {
                txn.events()
                    .insert(&be8(block[0].seq)[..], enc(&block))
                    .map_err(unab)?;
            }
            let meta = txn.meta();
            if cur.seq != seq {
                meta.insert("seq", &be8(cur.seq)[..]).map_err(unab)?;
            }
            if cur.counts != counts {
                meta.insert("counts", enc(&cur.counts)).map_err(unab)?;
            }
            Ok((results, cur))
        });
        let (results, cur) = result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => io(e),
        })?;
        *self.lock() = (cur.seq, cur.counts);
        self.last_seq.store(cur.seq, Ordering::Release);
        Ok(Committed {
            results,
            events: cur.events,
            scheduled: cur.scheduled,
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(io)
    }

    fn get(&self, id: &MsgId) -> Result<Option<Record>, StoreError> {
        match self.records.get(id).map_err(io)? {
            Some(v) => Ok(Some(dec(&v, "record")?)),
            None => Ok(None),
        }
    }

    fn events_from(&self, from: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        // Start at the block holding `from` (the last block whose first seq ≤ from).
        let start = match self.events.range(..=be8(from).to_vec()).next_back() {
            Some(kv) => kv.map_err(io)?.0.to_vec(),
            None => be8(from).to_vec(),
        };
        let mut out = Vec::new();
        for kv in self.events.range(start..) {
            let (_, v) = kv.map_err(io)?;
            let block: Vec<Event> = dec(&v, "event block")?;
            out.extend(block.into_iter().filter(|e| e.seq >= from));
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }

    fn first_seq(&self) -> Result<u64, StoreError> {
        match self.events.first().map_err(io)? {
            Some((k, _)) => seq_of(&k),
            None => Ok(0),
        }
    }

    fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    fn next_due(&self) -> Result<Option<UnixMillis>, StoreError> {
        Ok(self
            .schedule
            .first()
            .map_err(io)?
            .and_then(|(k, _)| split24(&k))
            .map(|(t, _)| t))
    }

    fn counts(&self) -> Counts {
        self.lock().1
    }

    fn dead(&self, limit: usize) -> Result<Vec<(MsgId, Record)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.dead.iter().take(limit) {
            let (k, _) = kv.map_err(io)?;
            let id: MsgId = k
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt("dead key".into()))?;
            if let Some(r) = self.get(&id)? {
                out.push((id, r));
            }
        }
        Ok(out)
    }

    fn epoch(&self) -> String {
        self.epoch.clone()
    }

    fn breakers(&self) -> Result<std::collections::BTreeMap<String, BreakerRecord>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        for kv in self.breakers.iter() {
            let (k, v) = kv.map_err(io)?;
            let name = String::from_utf8(k.to_vec())
                .map_err(|_| StoreError::Corrupt("breaker key is not UTF-8".into()))?;
            out.insert(name, dec(&v, "breaker")?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Completion, NewMessage, OpResult, id_string, new_id};
    use herald_plugin_api::{Content, EventKind, SmsContent, State};

    fn msg(key: Option<&str>, body: &str) -> NewMessage {
        NewMessage {
            id: new_id(),
            to: "+14155550100".into(),
            content: Content::Sms(SmsContent {
                body: body.into(),
                ..Default::default()
            }),
            tags: vec!["rsvp".into()],
            idempotency_key: key.map(Into::into),
            send_at: None,
            ttl_ms: 60_000,
            idempotency_window_ms: 1_000,
        }
    }

    fn open(dir: &Path) -> SledStore {
        SledStore::open(dir, 1 << 20).unwrap()
    }

    #[test]
    fn accept_claim_complete_with_events_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let m = msg(None, "hi");
        let c = s.commit(10, &[Op::Accept(m.clone())]).unwrap();
        assert_eq!(
            c.results,
            vec![OpResult::Accepted {
                id: m.id,
                duplicate: false
            }]
        );
        assert!(c.scheduled);
        let c = s
            .commit(
                10,
                &[Op::Claim {
                    limit: 10,
                    lease_ms: 1000,
                }],
            )
            .unwrap();
        let OpResult::Claimed(claimed) = &c.results[0] else {
            panic!()
        };
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].record.attempt, 1);
        assert_eq!(s.counts().get(State::Sending), 1);
        s.commit(
            11,
            &[Op::Complete(Completion {
                id: m.id,
                attempt: 1,
                state: State::Delivered,
                provider: Some("dev".into()),
                provider_message_id: Some("p1".into()),
                detail: None,
                due_at: None,
                suppress: false,
                attempt_used: true,
                index_provider_id: true,
                breakers: Vec::new(),
                breaker_events: Vec::new(),
            })],
        )
        .unwrap();
        s.flush().unwrap();
        let kinds: Vec<EventKind> = s
            .events_from(0, 100)
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                EventKind::Queued,
                EventKind::Sending,
                EventKind::Sent,
                EventKind::Delivered
            ]
        );
        let seqs: Vec<u64> = s
            .events_from(0, 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(s.counts().get(State::Delivered), 1);
        assert_eq!(s.counts().active(), 0);
        drop(s);

        // Everything survives a reopen, including seq and counts.
        let s = open(dir.path());
        assert_eq!(s.last_seq(), 4);
        assert_eq!(s.counts().get(State::Delivered), 1);
        assert_eq!(
            s.get(&m.id)
                .unwrap()
                .unwrap()
                .provider_message_id
                .as_deref(),
            Some("p1")
        );
    }

    #[test]
    fn idempotency_duplicate_conflict_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let a = msg(Some("k"), "hi");
        let b = msg(Some("k"), "hi");
        let c = msg(Some("k"), "different");
        let r = s
            .commit(0, &[Op::Accept(a.clone()), Op::Accept(b), Op::Accept(c)])
            .unwrap();
        assert_eq!(
            r.results,
            vec![
                OpResult::Accepted {
                    id: a.id,
                    duplicate: false
                },
                OpResult::Accepted {
                    id: a.id,
                    duplicate: true
                },
                OpResult::IdempotencyConflict { existing: a.id },
            ]
        );
        // After the window the key is free again.
        let d = msg(Some("k"), "later");
        let r = s.commit(5_000, &[Op::Accept(d.clone())]).unwrap();
        assert_eq!(
            r.results,
            vec![OpResult::Accepted {
                id: d.id,
                duplicate: false
            }]
        );
    }

    #[test]
    fn scheduled_cancel_recover_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let mut later = msg(None, "later");
        later.send_at = Some(1_000);
        let now = msg(None, "now");
        s.commit(0, &[Op::Accept(later.clone()), Op::Accept(now.clone())])
            .unwrap();
        assert_eq!(s.next_due().unwrap(), Some(0));
        let r = s
            .commit(
                0,
                &[Op::Claim {
                    limit: 10,
                    lease_ms: 100,
                }],
            )
            .unwrap();
        let OpResult::Claimed(c) = &r.results[0] else {
            panic!()
        };
        assert_eq!(c.len(), 1, "the scheduled one is not due");
        assert_eq!(s.next_due().unwrap(), Some(1_000));

        // Restart with `now` leased: Recover puts it back.
        drop(s);
        let s = open(dir.path());
        let r = s.commit(50, &[Op::Recover]).unwrap();
        assert_eq!(r.results, vec![OpResult::Recovered(1)]);
        assert_eq!(s.get(&now.id).unwrap().unwrap().state, State::Queued);

        let r = s
            .commit(60, &[Op::Cancel(later.id), Op::Cancel(later.id)])
            .unwrap();
        assert_eq!(r.results, vec![OpResult::Done, OpResult::Done]);
        let r = s
            .commit(
                2_000,
                &[Op::Claim {
                    limit: 10,
                    lease_ms: 100,
                }],
            )
            .unwrap();
        let OpResult::Claimed(c) = &r.results[0] else {
            panic!()
        };
        assert_eq!(
            c.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![now.id],
            "cancelled is never claimed"
        );
        let r = s.commit(2_000, &[Op::Cancel(now.id)]).unwrap();
        assert_eq!(r.results, vec![OpResult::WrongState(State::Sending)]);

        let before = s.counts().get(State::Cancelled);
        assert_eq!(before, 1);
        let r = s
            .commit(
                10_000,
                &[Op::Prune {
                    before: 5_000,
                    limit: 100,
                }],
            )
            .unwrap();
        let OpResult::Pruned { messages, events } = r.results[0] else {
            panic!()
        };
        assert_eq!(messages, 1);
        let last = s.last_seq();
        assert_eq!(events, last, "every event is older than the cut-off");
        assert!(s.get(&later.id).unwrap().is_none());
        assert!(
            s.get(&now.id).unwrap().is_some(),
            "a message in flight is kept"
        );
        assert_eq!(s.counts().get(State::Cancelled), 0);
        assert_eq!(s.first_seq().unwrap(), 0, "log empty");
        assert_eq!(s.last_seq(), last, "seq never goes back");
    }

    #[test]
    fn breaker_states_are_stored_newest_generation_first_and_survive_a_reopen() {
        use crate::store::BreakerRecord;
        let dir = tempfile::tempdir().unwrap();
        let rec = |plugin: &str, generation, opened_at| BreakerRecord {
            plugin: plugin.into(),
            generation,
            opened_at,
        };
        let outcome = |breakers: Vec<(String, BreakerRecord)>| {
            // For a message that is not there: the breakers are stored all the same.
            Op::Complete(Completion {
                breakers,
                ..match sent(new_id(), "x") {
                    Op::Complete(c) => c,
                    _ => unreachable!(),
                }
            })
        };
        {
            let s = open(dir.path());
            assert!(s.breakers().unwrap().is_empty());
            let r = s
                .commit(
                    5,
                    &[
                        outcome(vec![("tw".into(), rec("twilio", 2, Some(100)))]),
                        // A concurrent delivery that saw an older transition lands later.
                        outcome(vec![("tw".into(), rec("twilio", 1, None))]),
                        outcome(vec![("mail".into(), rec("resend", 1, Some(50)))]),
                    ],
                )
                .unwrap();
            assert_eq!(r.results[0], OpResult::NotFound);
            s.flush().unwrap();
        }
        let s = open(dir.path());
        let stored = s.breakers().unwrap();
        assert_eq!(stored["tw"], rec("twilio", 2, Some(100)));
        assert_eq!(stored["mail"], rec("resend", 1, Some(50)));
        // The same name on another plugin replaces it whatever its generation.
        s.commit(6, &[outcome(vec![("tw".into(), rec("webhook", 1, None))])])
            .unwrap();
        assert_eq!(s.breakers().unwrap()["tw"], rec("webhook", 1, None));
    }

    #[test]
    fn the_epoch_is_kept_with_the_data_and_differs_between_data_dirs() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let first = open(a.path()).epoch();
        assert_eq!(first.len(), 16, "{first}");
        assert_eq!(open(a.path()).epoch(), first, "reopening keeps it");
        assert_ne!(
            open(b.path()).epoch(),
            first,
            "another data dir, another epoch"
        );
    }

    #[test]
    fn breaker_events_report_only_the_newest_transition() {
        use crate::store::{BreakerEvent, BreakerRecord};
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let rec = |generation, opened_at| BreakerRecord {
            plugin: "twilio".into(),
            generation,
            opened_at,
        };
        let ev = |kind, generation| BreakerEvent {
            provider: "tw".into(),
            kind,
            generation,
            reason: format!("{kind:?} {generation}"),
        };
        let outcome = |breakers: Vec<(String, BreakerRecord)>, events: Vec<BreakerEvent>| {
            Op::Complete(Completion {
                breakers,
                breaker_events: events,
                ..match sent(new_id(), "x") {
                    Op::Complete(c) => c,
                    _ => unreachable!(),
                }
            })
        };
        let c = s
            .commit(
                5,
                &[
                    outcome(
                        vec![("tw".into(), rec(2, Some(5)))],
                        vec![
                            ev(EventKind::ProviderHalfOpen, 0),
                            ev(EventKind::ProviderOpened, 2),
                        ],
                    ),
                    // Stale: a concurrent delivery's older closing.
                    outcome(
                        vec![("tw".into(), rec(1, None))],
                        vec![ev(EventKind::ProviderClosed, 1)],
                    ),
                ],
            )
            .unwrap();
        let got: Vec<(EventKind, Option<String>, Option<String>)> = c
            .events
            .iter()
            .map(|e| (e.kind, e.provider.clone(), e.detail.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    EventKind::ProviderHalfOpen,
                    Some("tw".into()),
                    Some("ProviderHalfOpen 0".into())
                ),
                (
                    EventKind::ProviderOpened,
                    Some("tw".into()),
                    Some("ProviderOpened 2".into())
                ),
            ]
        );
    }

    #[test]
    fn a_delivery_delay_is_an_event_that_leaves_the_state() {
        use herald_plugin_api::UpdateKind;
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let m = msg(None, "hi");
        s.commit(1, &[Op::Accept(m.clone())]).unwrap();
        s.commit(
            2,
            &[Op::Claim {
                limit: 1,
                lease_ms: 1000,
            }],
        )
        .unwrap();
        s.commit(3, &[sent(m.id, "SM1")]).unwrap();
        let c = s
            .commit(4, &[update("SM1", UpdateKind::Deferred, "d1")])
            .unwrap();
        assert_eq!(c.results, vec![OpResult::Done]);
        assert_eq!(kinds(&c.events), vec![EventKind::Delayed]);
        assert_eq!(s.get(&m.id).unwrap().unwrap().state, State::Sent);
        // After delivery a late delay report says nothing new.
        s.commit(5, &[update("SM1", UpdateKind::Delivered, "d2")])
            .unwrap();
        let c = s
            .commit(6, &[update("SM1", UpdateKind::Deferred, "d3")])
            .unwrap();
        assert_eq!(c.results, vec![OpResult::Ignored]);
        assert!(c.events.is_empty());
    }

    fn kinds(events: &[herald_plugin_api::Event]) -> Vec<EventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    fn sent(id: MsgId, pid: &str) -> Op {
        Op::Complete(Completion {
            id,
            attempt: 1,
            state: State::Sent,
            provider: Some("tw".into()),
            provider_message_id: Some(pid.into()),
            detail: None,
            due_at: None,
            suppress: false,
            attempt_used: true,
            index_provider_id: true,
            breakers: Vec::new(),
            breaker_events: Vec::new(),
        })
    }

    fn update(pid: &str, kind: herald_plugin_api::UpdateKind, event: &str) -> Op {
        Op::Status {
            provider: "tw".into(),
            update: herald_plugin_api::StatusUpdate {
                provider_message_id: Some(pid.into()),
                message_id: None,
                kind,
                event_id: Some(event.into()),
                at: None,
                detail: None,
                suppress: false,
            },
        }
    }

    #[test]
    fn webhook_updates_forward_only_deduplicated_held_and_pruned() {
        use herald_plugin_api::UpdateKind::{Delivered, Sent};
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let m = msg(None, "RSVP?");
        s.commit(0, &[Op::Accept(m.clone())]).unwrap();
        s.commit(
            0,
            &[Op::Claim {
                limit: 1,
                lease_ms: 10,
            }],
        )
        .unwrap();
        // The webhook outruns the send: held.
        let r = s.commit(1, &[update("SM1", Delivered, "ev1")]).unwrap();
        assert_eq!(r.results, vec![OpResult::Held]);
        assert_eq!(s.get(&m.id).unwrap().unwrap().state, State::Sending);
        // Completion applies it right after `sent`.
        let r = s.commit(2, &[sent(m.id, "SM1")]).unwrap();
        let kinds: Vec<EventKind> = r.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Sent, EventKind::Delivered]);
        // A redelivered webhook and a late `sent` change nothing.
        let r = s
            .commit(
                3,
                &[update("SM1", Delivered, "ev1"), update("SM1", Sent, "ev2")],
            )
            .unwrap();
        assert_eq!(r.results, vec![OpResult::Ignored, OpResult::Ignored]);
        assert!(r.events.is_empty());
        assert_eq!(s.get(&m.id).unwrap().unwrap().state, State::Delivered);
        assert_eq!(s.counts().get(State::Delivered), 1);

        // A reply is tagged like the latest message to its sender.
        let reply = herald_plugin_api::InboundMessage {
            channel: herald_plugin_api::Channel::Sms,
            from: "+14155550100".into(),
            to: "+15005550006".into(),
            body: "YES".into(),
            provider_message_id: Some("SM9".into()),
            opt_out: None,
        };
        let inbound = Op::Inbound {
            provider: "tw".into(),
            inbound: reply,
        };
        let r = s.commit(4, &[inbound.clone(), inbound]).unwrap();
        assert_eq!(r.results, vec![OpResult::Done, OpResult::Ignored]);
        assert_eq!(
            r.events[0].message_id.as_deref(),
            Some(id_string(&m.id).as_str())
        );
        assert_eq!(r.events[0].tags, ["rsvp"]);

        // An update for an id nobody knows is held; retention drops it and the dedupe keys.
        s.commit(5, &[update("SM-unknown", Delivered, "ev3")])
            .unwrap();
        assert_eq!(s.held.len(), 1);
        assert!(s.seen.len() >= 4);
        s.commit(
            100,
            &[Op::Prune {
                before: 50,
                limit: 100,
            }],
        )
        .unwrap();
        assert_eq!(s.held.len(), 0, "old held update pruned");
        assert_eq!(s.seen.len(), 0, "old dedupe keys pruned");
        assert_eq!(s.seen_at.len(), 0);
        assert!(s.get(&m.id).unwrap().is_none(), "finished message pruned");
        assert_eq!(s.latest.len(), 0, "its reply index entry too");
    }

    #[test]
    fn event_blocks_read_from_any_seq() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let ops: Vec<Op> = (0..150)
            .map(|i| Op::Accept(msg(None, &format!("m{i}"))))
            .collect();
        s.commit(1, &ops).unwrap();
        let ops: Vec<Op> = (0..50)
            .map(|i| Op::Accept(msg(None, &format!("n{i}"))))
            .collect();
        s.commit(2, &ops).unwrap();
        assert_eq!(s.events.len(), 3 + 1, "150 events in 3 blocks, 50 in 1");
        let seqs = |from, limit| -> Vec<u64> {
            s.events_from(from, limit)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(seqs(0, 1000), (1..=200).collect::<Vec<_>>());
        assert_eq!(
            seqs(70, 10),
            (70..80).collect::<Vec<_>>(),
            "mid-block start"
        );
        assert_eq!(
            seqs(140, 20),
            (140..160).collect::<Vec<_>>(),
            "across batches"
        );
        assert_eq!(seqs(200, 10), vec![200]);
        assert!(seqs(201, 10).is_empty());
        drop(s);
        let s = open(dir.path());
        assert_eq!(s.last_seq(), 200, "recovered from the last block");
        assert_eq!(s.first_seq().unwrap(), 1);
    }

    #[test]
    fn leftover_partial_snapshot_is_removed_before_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            s.commit(0, &[Op::Accept(msg(None, "x"))]).unwrap();
            s.flush().unwrap();
        }
        std::fs::write(
            dir.path().join("snap.00000000000001F0.generating"),
            b"garbage",
        )
        .unwrap();
        let s = open(dir.path());
        assert_eq!(s.last_seq(), 1);
        assert!(!dir.path().join("snap.00000000000001F0.generating").exists());
    }
}
