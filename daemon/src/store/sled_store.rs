//! The embedded sled engine. The only module that knows sled exists.
//!
//! Trees (keys are big-endian so byte order is time/seq order):
//! `records` id → record · `schedule` due ++ id → () (the `normal` priority lane; its name
//! and keys are those of stores written before lanes, which therefore need no migration),
//! `schedule_critical` and `schedule_bulk` (the same, for those lanes) · `leases` id → until ·
//! `idem` key → id ++ expires · `pids` provider 0 pid → id · `dead` id → () ·
//! `finished` at ++ id → () · `suppression` channel ++ recipient key → entry ·
//! `events` first seq → a block of up to 64 consecutive events · `held` `m` ++ id or
//! `p` ++ provider 0 pid → webhook updates waiting for their message ·
//! `latest` channel ++ recipient key → id (for tagging replies) · `seen` provider 0 key → at
//! and `seen_at` at ++ provider 0 key (webhook de-duplication) · `breakers` provider →
//! breaker state · `meta` "seq"/"counts"/"epoch"/"recipients".
//!
//! Values are postcard with a leading format-version byte (a suppression entry's is
//! [`SUPPRESSION_VERSION`]). Recipient keys are canonical keys (`store::recipients`);
//! `meta` "recipients" says how they were keyed, and a store keyed otherwise (an older data
//! dir wrote the raw recipient lower-cased, and the reason alone as the value) is keyed
//! again at open, in small transactions, the marker written last: re-keying is
//! idempotent, so a start killed half way re-keys again. A whole batch is one sled
//! transaction over all trees (one transaction per message measured ~3,300 msg/s here; a
//! batch amortises it), running the shared state machine through [`SledTxn`], this
//! engine's [`Txn`]. sled's transactions cannot scan a range, so the range reads a batch
//! will ask for (due messages for its claims, leases for a recovery, what retention
//! drops, the audit of a check) are read ahead, before the transaction: the committer is
//! the only writer, so nothing changes in between. A `Check` reads the whole store, so it
//! runs in a transaction of its own. sled only fsyncs on its own every 500 ms, so
//! durability is the explicit [`Store::flush`] the group committer calls; background
//! flushing is off.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_plugin_api::{Channel, Event, RecipientKey, RecipientRules, StatusUpdate, UnixMillis};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::{Transactional, Tree};

use super::check::{self, Audit};
use super::lifecycle::{self, HeldFor, HeldKey, HeldUpdates, SeenKey, Txn};
use super::recipients::{self, KeyedWith};
use super::{
    BreakerRecord, Committed, Counts, Lane, LaneDepth, MsgId, Op, Record, Store, StoreError,
    Suppression, SuppressionEntry, SuppressionSource,
};

const FORMAT_VERSION: u8 = 1;

/// The version byte of a [`Suppression`] value (schema 1 stored the bare reason).
const SUPPRESSION_VERSION: u8 = 2;

/// The version byte of an event block since events carry `rsvp` (blocks of version
/// [`FORMAT_VERSION`] hold [`EventV1`]s).
const EVENTS_VERSION: u8 = 2;

/// An event as blocks of [`FORMAT_VERSION`] stored it: before `rsvp`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct EventV1 {
    seq: u64,
    at: UnixMillis,
    message_id: Option<String>,
    kind: herald_plugin_api::EventKind,
    channel: Option<Channel>,
    provider: Option<String>,
    provider_message_id: Option<String>,
    attempt: Option<u32>,
    detail: Option<String>,
    tags: Vec<String>,
    from: Option<String>,
    to: Option<String>,
    body: Option<String>,
}

impl From<EventV1> for Event {
    fn from(e: EventV1) -> Event {
        Event {
            seq: e.seq,
            at: e.at,
            message_id: e.message_id,
            kind: e.kind,
            channel: e.channel,
            provider: e.provider,
            provider_message_id: e.provider_message_id,
            attempt: e.attempt,
            detail: e.detail,
            tags: e.tags,
            from: e.from,
            to: e.to,
            body: e.body,
            rsvp: None,
        }
    }
}

fn enc_events(block: &[Event]) -> Vec<u8> {
    let out = vec![EVENTS_VERSION];
    postcard::to_extend(block, out).unwrap_or_else(|_| vec![EVENTS_VERSION])
}

fn dec_events(bytes: &[u8]) -> Result<Vec<Event>, StoreError> {
    let corrupt = |e: postcard::Error| StoreError::Corrupt(format!("event block: {e}"));
    match bytes.split_first() {
        Some((&EVENTS_VERSION, rest)) => postcard::from_bytes(rest).map_err(corrupt),
        Some((&FORMAT_VERSION, rest)) => Ok(postcard::from_bytes::<Vec<EventV1>>(rest)
            .map_err(corrupt)?
            .into_iter()
            .map(Event::from)
            .collect()),
        _ => dec(bytes, "event block"),
    }
}

/// Entries re-keyed per transaction at open.
const REKEY_CHUNK: usize = 512;

fn enc_suppression(entry: &Suppression) -> Vec<u8> {
    let out = vec![SUPPRESSION_VERSION];
    postcard::to_extend(entry, out).unwrap_or_else(|_| vec![SUPPRESSION_VERSION])
}

/// A suppression value: a [`Suppression`], or schema 1's bare reason (`key` standing in
/// for the recipient, whose spelling it did not keep).
fn dec_suppression(bytes: &[u8], key: &str) -> Suppression {
    if let Some((&SUPPRESSION_VERSION, rest)) = bytes.split_first()
        && let Ok(entry) = postcard::from_bytes::<Suppression>(rest)
    {
        return entry;
    }
    Suppression {
        recipient: key.to_string(),
        reason: String::from_utf8_lossy(bytes).into_owned(),
        source: SuppressionSource::Provider,
        at: 0,
    }
}

/// Events per block in the `events` tree. A batch writes its events as a few blocks rather
/// than one key each: sled's cost is per insert, and a batch emits thousands of events.
const EVENTS_PER_BLOCK: usize = 64;

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // postcard into a Vec cannot fail for our types (no maps with non-string keys etc.).
    out = postcard::to_extend(v, out).unwrap_or_else(|_| vec![FORMAT_VERSION]);
    out
}

/// A breaker record, or one written before `trips` was kept (which postcard cannot read
/// as the longer struct).
fn dec_breaker(bytes: &[u8]) -> Result<BreakerRecord, StoreError> {
    #[derive(serde::Deserialize)]
    struct BreakerRecordV1 {
        plugin: String,
        generation: u64,
        opened_at: Option<UnixMillis>,
    }
    dec::<BreakerRecord>(bytes, "breaker").or_else(|e| {
        let v1: BreakerRecordV1 = dec(bytes, "breaker").map_err(|_| e)?;
        Ok(BreakerRecord {
            plugin: v1.plugin,
            generation: v1.generation,
            opened_at: v1.opened_at,
            trips: 0,
        })
    })
}

/// A record, or one written before priority lanes (read as lane `normal`).
fn dec_record(bytes: &[u8]) -> Result<Record, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => {
            super::decode_record(rest).map_err(|e| StoreError::Corrupt(format!("record: {e}")))
        }
        _ => dec(bytes, "record"),
    }
}

/// The schedule tree of each lane, in the order of [`Lane::ALL`].
const SCHEDULE_TREES: [&str; 3] = ["schedule_critical", "schedule", "schedule_bulk"];

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

fn id_of(k: &[u8], what: &str) -> Result<MsgId, StoreError> {
    k.try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what}: a key that is not a message id")))
}

/// The seq in an `events` key.
fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(
        key.try_into()
            .map_err(|_| StoreError::Corrupt("event key".into()))?,
    ))
}

/// `provider 0 rest`: the `pids` and `seen` key.
fn pid_key(provider: &str, pid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(provider.len() + 1 + pid.len());
    k.extend_from_slice(provider.as_bytes());
    k.push(0);
    k.extend_from_slice(pid.as_bytes());
    k
}

/// `channel ++ recipient key`: the `suppression` and `latest` key.
fn recipient_key(channel: Channel, key: &RecipientKey) -> Vec<u8> {
    raw_recipient_key(channel as u8, key.as_str())
}

fn raw_recipient_key(channel: u8, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(channel);
    k.extend_from_slice(key.as_bytes());
    k
}

/// A `suppression` / `latest` key split into its channel byte and recipient key.
fn split_recipient_key(k: &[u8]) -> Option<(u8, String)> {
    let (&channel, rest) = k.split_first()?;
    Some((channel, String::from_utf8_lossy(rest).into_owned()))
}

fn held_key(key: HeldFor<'_>) -> Vec<u8> {
    match key {
        HeldFor::Message(id) => {
            let mut k = Vec::with_capacity(17);
            k.push(b'm');
            k.extend_from_slice(id);
            k
        }
        HeldFor::ProviderId { provider, pid } => {
            let mut k = Vec::with_capacity(2 + provider.len() + pid.len());
            k.push(b'p');
            k.extend_from_slice(&pid_key(provider, pid));
            k
        }
    }
}

fn parse_held_key(k: &[u8]) -> Option<HeldKey> {
    match k.split_first()? {
        (b'm', id) => Some(HeldKey::Message(id.try_into().ok()?)),
        (b'p', rest) => {
            let (provider, pid) = split_nul(rest)?;
            Some(HeldKey::ProviderId { provider, pid })
        }
        _ => None,
    }
}

fn split_nul(k: &[u8]) -> Option<(String, String)> {
    let nul = k.iter().position(|b| *b == 0)?;
    let a = std::str::from_utf8(&k[..nul]).ok()?;
    let b = std::str::from_utf8(&k[nul + 1..]).ok()?;
    Some((a.to_string(), b.to_string()))
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
    /// Per lane, in the order of [`Lane::ALL`] ([`SCHEDULE_TREES`]).
    schedules: [Tree; 3],
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
    /// The first retained event's seq, kept by the writer: `first_seq` is asked for by every
    /// subscription and `/readyz`, and a sled read could wait behind a stuck write.
    first_seq: AtomicU64,
    /// `meta` "epoch": created with the store, never changed.
    epoch: String,
    /// How recipients are keyed (`[recipients]`); the stored entries are keyed so at open.
    rules: RecipientRules,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("last_seq", &self.last_seq.load(Ordering::Relaxed))
            .finish()
    }
}

/// What retention will drop, read ahead for one `Prune`.
#[derive(Debug, Clone)]
struct PruneAhead {
    before: UnixMillis,
    limit: usize,
    finished: Option<Vec<(UnixMillis, MsgId)>>,
    /// First seqs of the blocks wholly older than `before`, and how many events they hold.
    event_blocks: Option<(Vec<u64>, u64)>,
    seen: Option<Vec<SeenKey>>,
    held: Option<Vec<HeldKey>>,
}

/// The range reads a batch's ops will ask for, read before its transaction.
#[derive(Debug, Clone, Default)]
struct ReadAhead {
    /// Due schedule entries of each lane for every claim of the batch, oldest first.
    due: Option<[VecDeque<(UnixMillis, MsgId)>; 3]>,
    leased: Option<Vec<MsgId>>,
    prunes: Vec<PruneAhead>,
    audit: Option<Audit>,
    /// Whether the `held` / `suppression` trees hold anything: when not, the lookups of
    /// the hot path (every completion, every accept) are skipped.
    held_stored: bool,
    suppression_stored: bool,
}

impl SledStore {
    /// Whether `dir` holds a sled store.
    pub fn exists(dir: &Path) -> bool {
        dir.join("conf").is_file()
    }

    /// Opens (or creates) the store in `dir` with the default recipient rules.
    /// `cache_capacity` bounds sled's page cache.
    pub fn open(dir: &Path, cache_capacity: u64) -> Result<SledStore, StoreError> {
        SledStore::open_with(dir, cache_capacity, RecipientRules::default())
    }

    /// Opens (or creates) the store in `dir`, keying recipients with `rules`: entries keyed
    /// otherwise are keyed again first (see the module comment).
    pub fn open_with(
        dir: &Path,
        cache_capacity: u64,
        rules: RecipientRules,
    ) -> Result<SledStore, StoreError> {
        let store = SledStore::open_unkeyed(dir, cache_capacity, rules)?;
        store.rekey_recipients(REKEY_CHUNK, None)?;
        Ok(store)
    }

    fn open_unkeyed(
        dir: &Path,
        cache_capacity: u64,
        rules: RecipientRules,
    ) -> Result<SledStore, StoreError> {
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
            schedules: [
                tree(SCHEDULE_TREES[0])?,
                tree(SCHEDULE_TREES[1])?,
                tree(SCHEDULE_TREES[2])?,
            ],
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
            first_seq: AtomicU64::new(0),
            epoch: String::new(),
            rules,
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
            let block = dec_events(&v)?;
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
        store
            .first_seq
            .store(store.read_first_seq()?, Ordering::Release);
        Ok(store)
    }

    /// The first retained event's seq, read from the log (0: the log is empty).
    fn read_first_seq(&self) -> Result<u64, StoreError> {
        match self.events.first().map_err(io)? {
            Some((k, _)) => seq_of(&k),
            None => Ok(0),
        }
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

    /// Keys the `suppression` and `latest` entries again when `meta` "recipients" says they
    /// were keyed otherwise, `chunk` entries per transaction, and then writes the marker.
    /// `stop_after` (tests) stops after that many transactions, as a kill would: returns
    /// whether it finished.
    fn rekey_recipients(
        &self,
        chunk: usize,
        stop_after: Option<usize>,
    ) -> Result<bool, StoreError> {
        let want = enc(&KeyedWith::current(self.rules));
        if self.meta.get("recipients").map_err(io)?.as_deref() == Some(&want[..]) {
            return Ok(true);
        }
        let fresh = self.suppression.is_empty() && self.latest.is_empty();
        if !fresh {
            tracing::info!(
                suppressed = self.suppression.len(),
                latest = self.latest.len(),
                "keying recipients of the suppression list and the reply index again"
            );
        }
        let mut steps = 0;
        for latest in [false, true] {
            let tree = if latest {
                &self.latest
            } else {
                &self.suppression
            };
            let mut after: Option<sled::IVec> = None;
            loop {
                if stop_after.is_some_and(|n| steps >= n) {
                    return Ok(false);
                }
                let range = match &after {
                    Some(k) => tree.range::<&[u8], _>((
                        std::ops::Bound::Excluded(k.as_ref()),
                        std::ops::Bound::Unbounded,
                    )),
                    None => tree.iter(),
                };
                let mut entries = Vec::with_capacity(chunk);
                for kv in range.take(chunk) {
                    entries.push(kv.map_err(io)?);
                }
                let Some((last, _)) = entries.last() else {
                    break;
                };
                after = Some(last.clone());
                if latest {
                    self.rekey_latest(&entries)?;
                } else {
                    self.rekey_suppression(&entries)?;
                }
                steps += 1;
            }
        }
        self.meta.insert("recipients", want).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(true)
    }

    /// One transaction of re-keyed suppression entries.
    fn rekey_suppression(&self, entries: &[(sled::IVec, sled::IVec)]) -> Result<(), StoreError> {
        let rules = self.rules;
        let result = self.suppression.transaction(|t| {
            for (k, v) in entries {
                let Some((byte, old)) = split_recipient_key(k) else {
                    continue;
                };
                let entry = dec_suppression(v, &old);
                let key = match recipients::channel_of(byte) {
                    Some(channel) => recipients::rekey(channel, &old, &entry.recipient, &rules),
                    None => old.clone(),
                };
                let new_k = raw_recipient_key(byte, &key);
                let merged = if new_k[..] == k[..] {
                    entry
                } else {
                    t.remove(k)?;
                    match t.get(&new_k)? {
                        Some(other) => {
                            recipients::merge_suppression(dec_suppression(&other, &key), entry)
                        }
                        None => entry,
                    }
                };
                t.insert(new_k, enc_suppression(&merged))?;
            }
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        });
        result.map_err(|e: TransactionError<StoreError>| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => io(e),
        })
    }

    /// One transaction of re-keyed "latest message" entries: keyed by their message's `to`;
    /// an entry whose message is gone is dropped.
    fn rekey_latest(&self, entries: &[(sled::IVec, sled::IVec)]) -> Result<(), StoreError> {
        let rules = self.rules;
        let mut plan = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let Some((byte, old)) = split_recipient_key(k) else {
                continue;
            };
            let Ok(id) = <MsgId>::try_from(v.as_ref()) else {
                continue;
            };
            let new_k = match self.records.get(id).map_err(io)? {
                Some(r) => {
                    let record = dec_record(&r)?;
                    let key = match recipients::channel_of(byte) {
                        Some(channel) => recipients::rekey(channel, &old, &record.to, &rules),
                        None => old,
                    };
                    Some(raw_recipient_key(byte, &key))
                }
                None => None,
            };
            plan.push((k.clone(), new_k, id));
        }
        let result = self.latest.transaction(|t| {
            for (k, new_k, id) in &plan {
                let Some(new_k) = new_k else {
                    t.remove(k)?;
                    continue;
                };
                if new_k[..] == k[..] {
                    continue;
                }
                t.remove(k)?;
                let merged = match t.get(new_k)? {
                    Some(other) => match <MsgId>::try_from(other.as_ref()) {
                        Ok(other) => recipients::merge_latest(other, *id),
                        Err(_) => *id,
                    },
                    None => *id,
                };
                t.insert(&new_k[..], &merged[..])?;
            }
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        });
        result.map_err(|e: TransactionError<StoreError>| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => io(e),
        })
    }

    /// Writes an entry the way schema 1 did and removes the marker, as the data dir of an
    /// older heraldd (see [`super::Legacy`]). Not flushed: the caller flushes.
    #[cfg(any(test, feature = "test-support"))]
    pub fn plant_legacy(&self, entry: &super::Legacy) -> Result<(), StoreError> {
        match entry {
            super::Legacy::Message { id, record } => {
                let mut v = vec![FORMAT_VERSION];
                v.extend(super::encode_record_v1(record));
                self.records.insert(&id[..], v).map_err(io)?;
                return Ok(());
            }
            super::Legacy::Suppressed {
                channel,
                to,
                reason,
            } => {
                let k = raw_recipient_key(*channel as u8, &to.to_ascii_lowercase());
                self.suppression.insert(k, reason.as_bytes()).map_err(io)?;
            }
            super::Legacy::Latest { channel, to, id } => {
                let k = raw_recipient_key(*channel as u8, &to.to_ascii_lowercase());
                self.latest.insert(k, &id[..]).map_err(io)?;
            }
        }
        self.meta.remove("recipients").map_err(io)?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Counts)> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the ranges `ops` will ask for.
    fn read_ahead(&self, now: UnixMillis, ops: &[Op]) -> Result<ReadAhead, StoreError> {
        let mut ahead = ReadAhead {
            held_stored: !self.held.is_empty(),
            suppression_stored: !self.suppression.is_empty(),
            ..ReadAhead::default()
        };
        let claim: usize = ops
            .iter()
            .map(|o| match o {
                Op::Claim { limit, .. } => *limit,
                _ => 0,
            })
            .sum();
        if claim > 0 {
            let mut lanes: [VecDeque<(UnixMillis, MsgId)>; 3] = Default::default();
            for (tree, due) in self.schedules.iter().zip(&mut lanes) {
                for kv in tree.range(..be8(now.saturating_add(1))) {
                    let (k, _) = kv.map_err(io)?;
                    if let Some(entry) = split24(&k) {
                        due.push_back(entry);
                    }
                    if due.len() >= claim {
                        break;
                    }
                }
            }
            ahead.due = Some(lanes);
        }
        if ops.iter().any(|o| matches!(o, Op::Recover)) {
            let mut leased = Vec::new();
            for kv in self.leases.iter() {
                let (k, _) = kv.map_err(io)?;
                if let Ok(id) = <MsgId>::try_from(k.as_ref()) {
                    leased.push(id);
                }
            }
            ahead.leased = Some(leased);
        }
        for op in ops {
            match op {
                Op::Prune { before, limit } => {
                    ahead.prunes.push(self.prune_ahead(*before, *limit)?)
                }
                Op::Check { .. } => ahead.audit = Some(self.audit()?),
                _ => {}
            }
        }
        Ok(ahead)
    }

    fn prune_ahead(&self, before: UnixMillis, limit: usize) -> Result<PruneAhead, StoreError> {
        let mut finished = Vec::new();
        for kv in self.finished.range(..be8(before)).take(limit) {
            let (k, _) = kv.map_err(io)?;
            if let Some(entry) = split24(&k) {
                finished.push(entry);
            }
        }
        let mut blocks = Vec::new();
        let mut events = 0;
        for kv in self.events.iter().take(limit) {
            let (k, v) = kv.map_err(io)?;
            let block = dec_events(&v)?;
            // Whole blocks only: the newest event of the block decides.
            if block.last().is_none_or(|e| e.at >= before) {
                break;
            }
            blocks.push(seq_of(&k)?);
            events += block.len() as u64;
        }
        let mut seen = Vec::new();
        for kv in self.seen_at.range(..be8(before)).take(limit) {
            let (k, _) = kv.map_err(io)?;
            if k.len() <= 8 {
                continue;
            }
            let at = u64::from_be_bytes(k[..8].try_into().unwrap_or([0; 8]));
            match split_nul(&k[8..]) {
                Some((provider, key)) => seen.push(SeenKey { at, provider, key }),
                None => tracing::warn!("skipping a webhook de-duplication key that is not UTF-8"),
            }
        }
        // Held updates are few (only webhooks that outran their message).
        let mut held = Vec::new();
        for kv in self.held.iter().take(limit) {
            let (k, v) = kv.map_err(io)?;
            let updates: HeldUpdates = dec(&v, "held updates")?;
            if updates.iter().any(|(at, _)| *at < before) {
                match parse_held_key(&k) {
                    Some(key) => held.push(key),
                    None => tracing::warn!("skipping a held-update key of an unknown shape"),
                }
            }
        }
        Ok(PruneAhead {
            before,
            limit,
            finished: Some(finished),
            event_blocks: Some((blocks, events)),
            seen: Some(seen),
            held: Some(held),
        })
    }

    /// Reads the whole store against its indexes (see [`check`]).
    fn audit(&self) -> Result<Audit, StoreError> {
        let stored = self.lock().1;
        let keys = |tree: &Tree| tree.iter().keys().map(|k| k.map_err(io));
        check::audit(
            self.records.iter().map(|kv| {
                let (k, v) = kv.map_err(io)?;
                Ok((id_of(&k, "records")?, dec_record(&v)?))
            }),
            self.schedules
                .iter()
                .flat_map(keys)
                .map(|k| split24(&k?).ok_or_else(|| StoreError::Corrupt("a schedule key".into()))),
            keys(&self.leases).map(|k| id_of(&k?, "leases")),
            keys(&self.dead).map(|k| id_of(&k?, "dead")),
            keys(&self.finished)
                .map(|k| split24(&k?).ok_or_else(|| StoreError::Corrupt("a finished key".into()))),
            stored,
        )
    }

    /// One transaction: `ops` through the state machine.
    fn commit_one(&self, now: UnixMillis, ops: &[Op]) -> Result<Committed, StoreError> {
        let ahead = self.read_ahead(now, ops)?;
        let (seq, counts) = *self.lock();
        let trees: [&Tree; 17] = [
            &self.records,
            &self.schedules[0],
            &self.schedules[1],
            &self.schedules[2],
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
            // The closure may run again on a conflict: start from the read-ahead each time.
            let mut txn = SledTxn::new(t, ahead.clone(), seq, counts, self.rules)?;
            lifecycle::apply_batch(&mut txn, now, ops, seq, counts)
        });
        let batch = result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => io(e),
        })?;
        let cur = batch.cursor;
        *self.lock() = (cur.seq, cur.counts);
        self.last_seq.store(cur.seq, Ordering::Release);
        // The log's head moves only when it was empty or retention pruned it.
        if self.first_seq.load(Ordering::Acquire) == 0
            || ops.iter().any(|op| matches!(op, Op::Prune { .. }))
        {
            // The batch is committed whatever this read says; a failed read keeps the old
            // head (a replay from it finds the next retained event).
            if let Ok(first) = self.read_first_seq() {
                self.first_seq.store(first, Ordering::Release);
            }
        }
        Ok(Committed {
            results: batch.results,
            events: cur.events,
            scheduled: cur.scheduled,
        })
    }

    /// Opens the store, waiting up to ten seconds for a lock still held by a store of this
    /// process that was just dropped (sled's background writes release it a moment
    /// later). For tests that close and reopen a store.
    #[cfg(any(test, feature = "test-support"))]
    #[allow(clippy::disallowed_methods)] // test support, never on a tokio worker
    pub fn open_when_unlocked(dir: &Path, cache_capacity: u64) -> Result<SledStore, StoreError> {
        SledStore::open_with_when_unlocked(dir, cache_capacity, RecipientRules::default())
    }

    /// [`SledStore::open_when_unlocked`] with recipient rules.
    #[cfg(any(test, feature = "test-support"))]
    #[allow(clippy::disallowed_methods)] // test support, never on a tokio worker
    pub fn open_with_when_unlocked(
        dir: &Path,
        cache_capacity: u64,
        rules: RecipientRules,
    ) -> Result<SledStore, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open_with(dir, cache_capacity, rules) {
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    /// Waits up to ten seconds until no store holds the lock on `dir` (see
    /// [`SledStore::open_when_unlocked`]), so another process can open it.
    #[cfg(any(test, feature = "test-support"))]
    #[allow(clippy::disallowed_methods)] // test support, never on a tokio worker
    pub fn wait_unlocked(dir: &Path) -> Result<(), StoreError> {
        let file =
            std::fs::File::open(dir.join("db")).map_err(|e| StoreError::Io(e.to_string()))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match file.try_lock() {
                Ok(()) => return file.unlock().map_err(|e| StoreError::Io(e.to_string())),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(StoreError::Locked(format!("{}: {e}", dir.display()))),
            }
        }
    }

    /// Damages the indexes on purpose, outside any transaction (as an interrupted write
    /// would), and flushes.
    #[cfg(any(test, feature = "test-support"))]
    pub fn damage(&self, damage: &super::Damage) -> Result<(), StoreError> {
        use super::Damage;
        let drop_all = |tree: &Tree, id: &MsgId| -> Result<(), StoreError> {
            let mut doomed = Vec::new();
            for k in tree.iter().keys() {
                let k = k.map_err(io)?;
                if split24(&k).is_some_and(|(_, i)| i == *id) {
                    doomed.push(k);
                }
            }
            for k in doomed {
                tree.remove(k).map_err(io)?;
            }
            Ok(())
        };
        match damage {
            Damage::DropLease(id) => {
                self.leases.remove(id).map_err(io)?;
            }
            Damage::DropSchedule(id) => {
                for tree in &self.schedules {
                    drop_all(tree, id)?;
                }
            }
            Damage::DropDeadLetter(id) => {
                self.dead.remove(id).map_err(io)?;
            }
            Damage::DropFinished(id) => drop_all(&self.finished, id)?,
            Damage::AddSchedule(due, id) => {
                self.schedules[Lane::Normal.index()]
                    .insert(key24(*due, id), &[][..])
                    .map_err(io)?;
            }
            Damage::AddLease(id, until) => {
                self.leases.insert(id, &be8(*until)[..]).map_err(io)?;
            }
            Damage::AddDeadLetter(id) => {
                self.dead.insert(id, &[][..]).map_err(io)?;
            }
            Damage::SetCounts(counts) => {
                self.meta.insert("counts", enc(counts)).map_err(io)?;
                self.lock().1 = *counts;
            }
        }
        self.flush()
    }
}

/// This engine's [`Txn`]: the trees inside one sled transaction, and the read-ahead.
struct SledTxn<'a> {
    records: &'a TransactionalTree,
    schedules: [&'a TransactionalTree; 3],
    leases: &'a TransactionalTree,
    idem: &'a TransactionalTree,
    pids: &'a TransactionalTree,
    dead: &'a TransactionalTree,
    finished: &'a TransactionalTree,
    suppression: &'a TransactionalTree,
    events: &'a TransactionalTree,
    held: &'a TransactionalTree,
    latest: &'a TransactionalTree,
    seen: &'a TransactionalTree,
    seen_at: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    breakers: &'a TransactionalTree,
    ahead: ReadAhead,
    /// Whether anything may be held / suppressed: stored before, or written here.
    held_possible: bool,
    suppression_possible: bool,
    /// The stored seq and counts: `finish` writes only what changed.
    seq: u64,
    counts: Counts,
    rules: RecipientRules,
}

type TxError = ConflictableTransactionError<StoreError>;

/// Lets the state machine abort a transaction with a store error.
impl From<StoreError> for ConflictableTransactionError<StoreError> {
    fn from(e: StoreError) -> Self {
        ConflictableTransactionError::Abort(e)
    }
}

fn unab(e: UnabortableTransactionError) -> TxError {
    e.into()
}

/// The state machine asked for a range this batch did not read ahead: a bug, not data.
fn unprepared(what: &str) -> TxError {
    TxError::Abort(StoreError::Internal(format!(
        "{what} was not read ahead for this batch"
    )))
}

impl<'a> SledTxn<'a> {
    fn new(
        t: &'a [TransactionalTree],
        ahead: ReadAhead,
        seq: u64,
        counts: Counts,
        rules: RecipientRules,
    ) -> Result<SledTxn<'a>, TxError> {
        let [
            records,
            critical,
            normal,
            bulk,
            leases,
            idem,
            pids,
            dead,
            finished,
            suppression,
            events,
            held,
            latest,
            seen,
            seen_at,
            meta,
            breakers,
        ] = t
        else {
            return Err(TxError::Abort(StoreError::Internal(
                "the transaction does not span every tree".into(),
            )));
        };
        Ok(SledTxn {
            records,
            schedules: [critical, normal, bulk],
            leases,
            idem,
            pids,
            dead,
            finished,
            suppression,
            events,
            held,
            latest,
            seen,
            seen_at,
            meta,
            breakers,
            held_possible: ahead.held_stored,
            suppression_possible: ahead.suppression_stored,
            ahead,
            seq,
            counts,
            rules,
        })
    }

    fn prune_ahead(&mut self, before: UnixMillis, limit: usize) -> Option<&mut PruneAhead> {
        self.ahead
            .prunes
            .iter_mut()
            .find(|p| p.before == before && p.limit == limit)
    }
}

impl Txn for SledTxn<'_> {
    type Error = TxError;

    fn recipient_rules(&self) -> RecipientRules {
        self.rules
    }

    fn message(&mut self, id: &MsgId) -> Result<Option<Record>, TxError> {
        match self.records.get(id).map_err(unab)? {
            Some(v) => Ok(Some(dec_record(&v)?)),
            None => Ok(None),
        }
    }
    fn put_message(&mut self, id: &MsgId, record: &Record) -> Result<(), TxError> {
        self.records.insert(&id[..], enc(record)).map_err(unab)?;
        Ok(())
    }
    fn remove_message(&mut self, id: &MsgId) -> Result<(), TxError> {
        self.records.remove(&id[..]).map_err(unab)?;
        Ok(())
    }

    fn schedule(&mut self, lane: Lane, due: UnixMillis, id: &MsgId) -> Result<(), TxError> {
        self.schedules[lane.index()]
            .insert(&key24(due, id)[..], &[][..])
            .map_err(unab)?;
        Ok(())
    }
    fn unschedule(&mut self, lane: Lane, due: UnixMillis, id: &MsgId) -> Result<(), TxError> {
        self.schedules[lane.index()]
            .remove(&key24(due, id)[..])
            .map_err(unab)?;
        Ok(())
    }
    fn due(
        &mut self,
        lane: Lane,
        _now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(UnixMillis, MsgId)>, TxError> {
        let lanes = self.ahead.due.as_mut().ok_or_else(|| unprepared("due"))?;
        let due = &mut lanes[lane.index()];
        let n = limit.min(due.len());
        Ok(due.drain(..n).collect())
    }

    /// The lease expiry is the fencing token (one daemon: every claim writes a later one).
    fn lease(&mut self, id: &MsgId, until: UnixMillis) -> Result<u64, TxError> {
        self.leases.insert(&id[..], &be8(until)[..]).map_err(unab)?;
        Ok(until)
    }
    fn unlease(&mut self, id: &MsgId) -> Result<(), TxError> {
        self.leases.remove(&id[..]).map_err(unab)?;
        Ok(())
    }
    fn is_leased(&mut self, id: &MsgId) -> Result<bool, TxError> {
        Ok(self.leases.get(id).map_err(unab)?.is_some())
    }
    fn leased(&mut self) -> Result<Vec<MsgId>, TxError> {
        let leased = self
            .ahead
            .leased
            .as_mut()
            .ok_or_else(|| unprepared("leased"))?;
        Ok(std::mem::take(leased))
    }

    fn idempotency(&mut self, key: &str) -> Result<Option<(MsgId, UnixMillis)>, TxError> {
        let Some(v) = self.idem.get(key.as_bytes()).map_err(unab)? else {
            return Ok(None);
        };
        decode_idem(&v).map(Some).map_err(TxError::Abort)
    }
    fn put_idempotency(
        &mut self,
        key: &str,
        id: &MsgId,
        expires: UnixMillis,
    ) -> Result<(), TxError> {
        let mut v = [0u8; 24];
        v[..16].copy_from_slice(id);
        v[16..].copy_from_slice(&be8(expires));
        self.idem.insert(key.as_bytes(), &v[..]).map_err(unab)?;
        Ok(())
    }
    fn remove_idempotency(&mut self, key: &str) -> Result<(), TxError> {
        self.idem.remove(key.as_bytes()).map_err(unab)?;
        Ok(())
    }

    fn by_provider_id(&mut self, provider: &str, pid: &str) -> Result<Option<MsgId>, TxError> {
        Ok(self
            .pids
            .get(pid_key(provider, pid))
            .map_err(unab)?
            .and_then(|v| <MsgId>::try_from(v.as_ref()).ok()))
    }
    fn put_provider_id(&mut self, provider: &str, pid: &str, id: &MsgId) -> Result<(), TxError> {
        self.pids
            .insert(pid_key(provider, pid), &id[..])
            .map_err(unab)?;
        Ok(())
    }
    fn remove_provider_id(&mut self, provider: &str, pid: &str) -> Result<(), TxError> {
        self.pids.remove(pid_key(provider, pid)).map_err(unab)?;
        Ok(())
    }

    fn put_dead(&mut self, id: &MsgId) -> Result<(), TxError> {
        self.dead.insert(&id[..], &[][..]).map_err(unab)?;
        Ok(())
    }
    fn remove_dead(&mut self, id: &MsgId) -> Result<(), TxError> {
        self.dead.remove(&id[..]).map_err(unab)?;
        Ok(())
    }

    fn put_finished(&mut self, at: UnixMillis, id: &MsgId) -> Result<(), TxError> {
        self.finished
            .insert(&key24(at, id)[..], &[][..])
            .map_err(unab)?;
        Ok(())
    }
    fn remove_finished(&mut self, at: UnixMillis, id: &MsgId) -> Result<(), TxError> {
        self.finished.remove(&key24(at, id)[..]).map_err(unab)?;
        Ok(())
    }
    fn finished_before(
        &mut self,
        before: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(UnixMillis, MsgId)>, TxError> {
        self.prune_ahead(before, limit)
            .and_then(|p| p.finished.take())
            .ok_or_else(|| unprepared("finished_before"))
    }

    fn suppression(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
    ) -> Result<Option<Suppression>, TxError> {
        if !self.suppression_possible {
            return Ok(None);
        }
        Ok(self
            .suppression
            .get(recipient_key(channel, key))
            .map_err(unab)?
            .map(|v| dec_suppression(&v, key.as_str())))
    }
    fn suppress(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
        entry: &Suppression,
    ) -> Result<(), TxError> {
        self.suppression_possible = true;
        self.suppression
            .insert(recipient_key(channel, key), enc_suppression(entry))
            .map_err(unab)?;
        Ok(())
    }
    fn unsuppress(&mut self, channel: Channel, key: &RecipientKey) -> Result<(), TxError> {
        self.suppression
            .remove(recipient_key(channel, key))
            .map_err(unab)?;
        Ok(())
    }

    fn latest(&mut self, channel: Channel, key: &RecipientKey) -> Result<Option<MsgId>, TxError> {
        Ok(self
            .latest
            .get(recipient_key(channel, key))
            .map_err(unab)?
            .and_then(|v| <MsgId>::try_from(v.as_ref()).ok()))
    }
    fn put_latest(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
        id: &MsgId,
    ) -> Result<(), TxError> {
        self.latest
            .insert(recipient_key(channel, key), &id[..])
            .map_err(unab)?;
        Ok(())
    }
    fn remove_latest(&mut self, channel: Channel, key: &RecipientKey) -> Result<(), TxError> {
        self.latest
            .remove(recipient_key(channel, key))
            .map_err(unab)?;
        Ok(())
    }

    fn held(&mut self, key: HeldFor<'_>) -> Result<HeldUpdates, TxError> {
        if !self.held_possible {
            return Ok(Vec::new());
        }
        match self.held.get(held_key(key)).map_err(unab)? {
            Some(v) => Ok(dec(&v, "held updates")?),
            None => Ok(Vec::new()),
        }
    }
    fn set_held(
        &mut self,
        key: HeldFor<'_>,
        updates: &[(UnixMillis, StatusUpdate)],
    ) -> Result<(), TxError> {
        if updates.is_empty() {
            self.held.remove(held_key(key)).map_err(unab)?;
        } else {
            self.held_possible = true;
            self.held
                .insert(held_key(key), enc(updates))
                .map_err(unab)?;
        }
        Ok(())
    }
    fn held_before(&mut self, before: UnixMillis, limit: usize) -> Result<Vec<HeldKey>, TxError> {
        self.prune_ahead(before, limit)
            .and_then(|p| p.held.take())
            .ok_or_else(|| unprepared("held_before"))
    }

    fn seen(&mut self, provider: &str, key: &str, now: UnixMillis) -> Result<bool, TxError> {
        let k = pid_key(provider, key);
        if self.seen.get(&k).map_err(unab)?.is_some() {
            return Ok(true);
        }
        self.seen.insert(&k[..], &be8(now)[..]).map_err(unab)?;
        let mut tk = be8(now).to_vec();
        tk.extend_from_slice(&k);
        self.seen_at.insert(tk, &[][..]).map_err(unab)?;
        Ok(false)
    }
    fn seen_before(&mut self, before: UnixMillis, limit: usize) -> Result<Vec<SeenKey>, TxError> {
        self.prune_ahead(before, limit)
            .and_then(|p| p.seen.take())
            .ok_or_else(|| unprepared("seen_before"))
    }
    fn unsee(&mut self, key: &SeenKey) -> Result<(), TxError> {
        let k = pid_key(&key.provider, &key.key);
        self.seen.remove(&k[..]).map_err(unab)?;
        let mut tk = be8(key.at).to_vec();
        tk.extend_from_slice(&k);
        self.seen_at.remove(tk).map_err(unab)?;
        Ok(())
    }

    fn breaker(&mut self, provider: &str) -> Result<Option<BreakerRecord>, TxError> {
        match self.breakers.get(provider.as_bytes()).map_err(unab)? {
            Some(v) => Ok(Some(dec_breaker(&v)?)),
            None => Ok(None),
        }
    }
    fn put_breaker(&mut self, provider: &str, record: &BreakerRecord) -> Result<(), TxError> {
        self.breakers
            .insert(provider.as_bytes(), enc(record))
            .map_err(unab)?;
        Ok(())
    }

    fn prune_events(&mut self, before: UnixMillis, limit: usize) -> Result<u64, TxError> {
        let (blocks, events) = self
            .prune_ahead(before, limit)
            .and_then(|p| p.event_blocks.take())
            .ok_or_else(|| unprepared("prune_events"))?;
        for first in blocks {
            self.events.remove(&be8(first)[..]).map_err(unab)?;
        }
        Ok(events)
    }

    fn audit(&mut self, _counts: &Counts) -> Result<Audit, TxError> {
        // Read before the transaction, which a `Check` has to itself: it describes the
        // store as this transaction found it.
        self.ahead.audit.take().ok_or_else(|| unprepared("audit"))
    }

    fn finish(&mut self, events: &[Event], seq: u64, counts: &Counts) -> Result<(), TxError> {
        for block in events.chunks(EVENTS_PER_BLOCK) {
            self.events
                .insert(&be8(block[0].seq)[..], enc_events(block))
                .map_err(unab)?;
        }
        if seq != self.seq {
            self.meta.insert("seq", &be8(seq)[..]).map_err(unab)?;
        }
        if *counts != self.counts {
            self.meta.insert("counts", enc(counts)).map_err(unab)?;
        }
        Ok(())
    }
}

/// An `idem` value: the message id, then the key's expiry (big-endian Unix ms).
fn decode_idem(v: &[u8]) -> Result<(MsgId, UnixMillis), StoreError> {
    let corrupt = || StoreError::Corrupt("idempotency entry".into());
    if v.len() != 24 {
        return Err(corrupt());
    }
    let id: MsgId = v[..16].try_into().map_err(|_| corrupt())?;
    let expires = u64::from_be_bytes(v[16..].try_into().map_err(|_| corrupt())?);
    Ok((id, expires))
}

impl Store for SledStore {
    fn commit(&self, now: UnixMillis, ops: &[Op]) -> Result<Committed, StoreError> {
        if !ops.iter().any(|o| matches!(o, Op::Check { .. })) {
            return self.commit_one(now, ops);
        }
        // A check reads the whole store ahead of its transaction: give it one of its own,
        // so it audits exactly the state it repairs. The other ops commit around it.
        let mut out = Committed::default();
        let mut rest = ops;
        while !rest.is_empty() {
            let n = match rest.iter().position(|o| matches!(o, Op::Check { .. })) {
                Some(0) => 1,
                Some(i) => i,
                None => rest.len(),
            };
            let (part, tail) = rest.split_at(n);
            let c = self.commit_one(now, part)?;
            out.results.extend(c.results);
            out.events.extend(c.events);
            out.scheduled |= c.scheduled;
            rest = tail;
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(io)
    }

    fn get(&self, id: &MsgId) -> Result<Option<Record>, StoreError> {
        match self.records.get(id).map_err(io)? {
            Some(v) => Ok(Some(dec_record(&v)?)),
            None => Ok(None),
        }
    }

    fn idempotency_key(&self, key: &str, now: UnixMillis) -> Result<Option<MsgId>, StoreError> {
        match self.idem.get(key.as_bytes()).map_err(io)? {
            Some(v) => {
                let (id, expires) = decode_idem(&v)?;
                Ok((expires > now).then_some(id))
            }
            None => Ok(None),
        }
    }

    fn events_from(&self, from: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        // Start at the block holding `from` (the last block whose first seq ≤ from).
        let start = match self.events.range(..=be8(from)).next_back() {
            Some(kv) => kv.map_err(io)?.0.to_vec(),
            None => be8(from).to_vec(),
        };
        let mut out = Vec::new();
        for kv in self.events.range(start..) {
            let (_, v) = kv.map_err(io)?;
            let block = dec_events(&v)?;
            out.extend(block.into_iter().filter(|e| e.seq >= from));
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }

    fn first_seq(&self) -> Result<u64, StoreError> {
        Ok(self.first_seq.load(Ordering::Acquire))
    }

    fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    fn next_due(&self) -> Result<Option<UnixMillis>, StoreError> {
        let mut next = None;
        for tree in &self.schedules {
            let first = tree.first().map_err(io)?.and_then(|(k, _)| split24(&k));
            if let Some((t, _)) = first {
                next = Some(next.map_or(t, |n: UnixMillis| n.min(t)));
            }
        }
        Ok(next)
    }

    /// `len` walks a tree: linear in the queue, read only for `herald stats`.
    fn lanes(&self) -> Result<[LaneDepth; 3], StoreError> {
        let mut out = [LaneDepth::default(); 3];
        for (tree, d) in self.schedules.iter().zip(&mut out) {
            d.depth = tree.len() as u64;
            d.earliest_due = tree
                .first()
                .map_err(io)?
                .and_then(|(k, _)| split24(&k))
                .map(|(t, _)| t);
        }
        Ok(out)
    }

    fn counts(&self) -> Counts {
        self.lock().1
    }

    fn dead(&self, limit: usize) -> Result<Vec<(MsgId, Record)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.dead.iter().take(limit) {
            let (k, _) = kv.map_err(io)?;
            let id = id_of(&k, "dead")?;
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
            out.insert(name, dec_breaker(&v)?);
        }
        Ok(out)
    }

    fn recipient_key(&self, channel: Channel, recipient: &str) -> Option<RecipientKey> {
        recipients::key(channel, recipient, &self.rules)
    }

    fn suppression(
        &self,
        channel: Channel,
        key: &RecipientKey,
    ) -> Result<Option<Suppression>, StoreError> {
        Ok(self
            .suppression
            .get(recipient_key(channel, key))
            .map_err(io)?
            .map(|v| dec_suppression(&v, key.as_str())))
    }

    fn suppressions(
        &self,
        after: Option<(Channel, &str)>,
        limit: usize,
    ) -> Result<Vec<SuppressionEntry>, StoreError> {
        let start = match after {
            Some((channel, key)) => {
                std::ops::Bound::Excluded(raw_recipient_key(channel as u8, key))
            }
            None => std::ops::Bound::Unbounded,
        };
        let mut out = Vec::new();
        for kv in self.suppression.range((start, std::ops::Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv.map_err(io)?;
            let Some((byte, key)) = split_recipient_key(&k) else {
                continue;
            };
            let Some(channel) = recipients::channel_of(byte) else {
                continue;
            };
            let entry = dec_suppression(&v, &key);
            out.push(SuppressionEntry {
                channel,
                key,
                entry,
            });
        }
        Ok(out)
    }
}

/// sled-specific tests: the layout (event blocks, every tree emptied by retention) and the
/// start-up repair of sled's own files. The state machine is tested once, for every
/// engine, by `store::conformance`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Completion, Damage, NewMessage, OpResult, new_id};
    use herald_plugin_api::{Content, InboundMessage, SmsContent, State, UpdateKind};

    fn msg(body: &str) -> NewMessage {
        NewMessage {
            id: new_id(),
            to: "+14155550100".into(),
            content: Content::Sms(SmsContent {
                body: body.into(),
                ..Default::default()
            }),
            tags: vec![],
            idempotency_key: Some(format!("k-{body}")),
            send_at: None,
            ttl_ms: 60_000,
            idempotency_window_ms: 1_000,
            override_suppression: false,
            lane: Default::default(),
        }
    }

    fn open(dir: &Path) -> SledStore {
        SledStore::open_when_unlocked(dir, 1 << 20).unwrap()
    }

    /// A data dir as the build before priority lanes wrote it — its record (without
    /// `lane`) and its schedule key (`due ++ id` in the `schedule` tree), written with
    /// sled alone — opens, reads as `normal`, and is claimed after a critical message and
    /// before a bulk one.
    #[test]
    fn a_data_dir_written_before_lanes_is_claimed_as_normal() {
        let dir = tempfile::tempdir().unwrap();
        let id = new_id();
        let record = Record {
            to: "+14155550100".into(),
            content: Content::Sms(SmsContent {
                body: "from before lanes".into(),
                ..Default::default()
            }),
            tags: vec![],
            idempotency_key: None,
            send_at: None,
            state: State::Queued,
            attempt: 0,
            created_at: 5,
            updated_at: 5,
            due_at: 5,
            expires_at: 60_005,
            lease_until: None,
            provider: None,
            provider_message_id: None,
            last_error: None,
            lane: Lane::Normal,
        };
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let mut v = vec![FORMAT_VERSION];
            v.extend(crate::store::encode_record_v1(&record));
            db.open_tree("records").unwrap().insert(id, v).unwrap();
            db.open_tree("schedule")
                .unwrap()
                .insert(key24(5, &id), &[][..])
                .unwrap();
            db.flush().unwrap();
        }
        let s = open(dir.path());
        assert_eq!(s.get(&id).unwrap().unwrap(), record);
        assert_eq!(s.lanes().unwrap()[Lane::Normal.index()].depth, 1);
        let bulk = NewMessage {
            lane: Lane::Bulk,
            ..msg("bulk")
        };
        let critical = NewMessage {
            lane: Lane::Critical,
            ..msg("critical")
        };
        s.commit(6, &[Op::Accept(bulk), Op::Accept(critical.clone())])
            .unwrap();
        let claim = |limit| match s
            .commit(
                10,
                &[Op::Claim {
                    limit,
                    lease_ms: 1_000,
                    turn: 0,
                }],
            )
            .unwrap()
            .results
            .remove(0)
        {
            OpResult::Claimed(c) => c.into_iter().map(|c| c.id).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(claim(1), [critical.id]);
        assert_eq!(claim(1), [id]);
    }

    #[test]
    fn breaker_records_written_before_trips_are_read_and_new_ones_keep_them() {
        #[derive(Serialize)]
        struct V1<'a> {
            plugin: &'a str,
            generation: u64,
            opened_at: Option<UnixMillis>,
        }
        let old = enc(&V1 {
            plugin: "twilio",
            generation: 7,
            opened_at: Some(42),
        });
        let r = dec_breaker(&old).unwrap();
        assert_eq!(
            (r.plugin.as_str(), r.generation, r.opened_at, r.trips),
            ("twilio", 7, Some(42), 0)
        );
        let new = BreakerRecord { trips: 3, ..r };
        assert_eq!(dec_breaker(&enc(&new)).unwrap(), new);
    }

    #[test]
    fn rekeying_killed_half_way_ends_correct_at_the_next_start() {
        use crate::store::Legacy;
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let spellings = [
            "Dee Ray <Dee@Example.com>",
            "DEE@example.com",
            "dee@example.com",
            "Eve <eve@example.com>",
            "fay@EXAMPLE.org",
            "Gus <gus@example.net>",
            "hal@example.io",
            "not an address",
        ];
        for (i, to) in spellings.iter().enumerate() {
            s.plant_legacy(&Legacy::Suppressed {
                channel: Channel::Email,
                to: to.to_string(),
                reason: format!("bounce {i}"),
            })
            .unwrap();
        }
        s.plant_legacy(&Legacy::Suppressed {
            channel: Channel::Sms,
            to: "+1 (415) 555-0100".into(),
            reason: "opted out".into(),
        })
        .unwrap();
        s.flush().unwrap();
        drop(s);
        // A start killed after two small transactions: some entries re-keyed, some not,
        // no marker.
        let s = loop {
            match SledStore::open_unkeyed(dir.path(), 1 << 20, RecipientRules::default()) {
                Err(StoreError::Locked(_)) => std::thread::yield_now(),
                other => break other.unwrap(),
            }
        };
        assert!(!s.rekey_recipients(2, Some(2)).unwrap());
        assert!(s.meta.get("recipients").unwrap().is_none());
        s.flush().unwrap();
        drop(s);
        let s = open(dir.path());
        let keys: Vec<(u8, String)> = s
            .suppression
            .iter()
            .map(|kv| split_recipient_key(&kv.unwrap().0).unwrap())
            .collect();
        let want: Vec<(u8, String)> = [
            (Channel::Email, "dee@example.com"),
            (Channel::Email, "eve@example.com"),
            (Channel::Email, "fay@example.org"),
            (Channel::Email, "gus@example.net"),
            (Channel::Email, "hal@example.io"),
            (Channel::Email, "not an address"),
            (Channel::Sms, "+14155550100"),
        ]
        .iter()
        .map(|(c, k)| (*c as u8, k.to_string()))
        .collect();
        let mut sorted = want.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for kv in s.suppression.iter() {
            let (_, v) = kv.unwrap();
            assert_eq!(v[0], SUPPRESSION_VERSION, "every value in the new format");
        }
        assert!(s.meta.get("recipients").unwrap().is_some());
        let m = NewMessage {
            to: "+1 415 555 0100".into(),
            ..msg("x")
        };
        let r = s.commit(1, &[Op::Accept(m.clone())]).unwrap();
        assert!(!r.scheduled);
        assert_eq!(s.get(&m.id).unwrap().unwrap().state, State::Suppressed);
    }

    #[test]
    fn event_blocks_written_before_rsvp_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let old = EventV1 {
            seq: 1,
            at: 5,
            message_id: None,
            kind: herald_plugin_api::EventKind::Inbound,
            channel: Some(Channel::Sms),
            provider: Some("tw".into()),
            provider_message_id: None,
            attempt: None,
            detail: None,
            tags: vec!["t".into()],
            from: Some("+14155550100".into()),
            to: Some("+15005550006".into()),
            body: Some("YES".into()),
        };
        s.events.insert(be8(1), enc(&vec![old])).unwrap();
        s.meta.insert("seq", &be8(1)[..]).unwrap();
        s.flush().unwrap();
        drop(s);
        let s = open(dir.path());
        s.commit(
            6,
            &[Op::Note {
                kind: herald_plugin_api::EventKind::ConfigReloaded,
                detail: "x".into(),
            }],
        )
        .unwrap();
        let events = s.events_from(1, 10).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].body.as_deref(), Some("YES"));
        assert_eq!(events[0].rsvp, None);
        assert_eq!(events[1].seq, 2);
    }

    #[test]
    fn events_are_stored_in_blocks_of_64() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let ops: Vec<Op> = (0..150)
            .map(|i| Op::Accept(msg(&format!("m{i}"))))
            .collect();
        s.commit(1, &ops).unwrap();
        let ops: Vec<Op> = (0..50).map(|i| Op::Accept(msg(&format!("n{i}")))).collect();
        s.commit(2, &ops).unwrap();
        assert_eq!(s.events.len(), 3 + 1, "150 events in 3 blocks, 50 in 1");
        let firsts: Vec<u64> = s
            .events
            .iter()
            .keys()
            .map(|k| seq_of(&k.unwrap()).unwrap())
            .collect();
        assert_eq!(firsts, [1, 65, 129, 151]);
        drop(s);
        let s = open(dir.path());
        assert_eq!(s.last_seq(), 200, "recovered from the last block");
    }

    #[test]
    fn retention_empties_every_tree_it_owns() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let m = msg("a");
        s.commit(0, &[Op::Accept(m.clone())]).unwrap();
        let claimed = match s
            .commit(
                0,
                &[Op::Claim {
                    limit: 1,
                    lease_ms: 10,
                    turn: 0,
                }],
            )
            .unwrap()
            .results
            .remove(0)
        {
            OpResult::Claimed(mut c) => c.remove(0),
            other => panic!("{other:?}"),
        };
        s.commit(
            1,
            &[Op::Complete(Completion {
                id: m.id,
                attempt: 1,
                fence: claimed.fence,
                state: State::Sent,
                provider: Some("tw".into()),
                provider_message_id: Some("SM1".into()),
                detail: None,
                due_at: None,
                suppress: false,
                attempt_used: true,
                index_provider_id: true,
                breakers: Vec::new(),
                breaker_events: Vec::new(),
                max_attempts: 3,
            })],
        )
        .unwrap();
        let status = |pid: &str, event: &str| Op::Status {
            max_attempts: 3,
            provider: "tw".into(),
            update: StatusUpdate {
                provider_message_id: Some(pid.into()),
                message_id: None,
                kind: UpdateKind::Delivered,
                event_id: Some(event.into()),
                at: None,
                detail: None,
                suppress: false,
            },
        };
        s.commit(
            2,
            &[
                status("SM1", "ev1"),
                status("SM-unknown", "ev2"),
                Op::Inbound {
                    provider: "tw".into(),
                    inbound: InboundMessage {
                        channel: Channel::Sms,
                        from: "+14155550100".into(),
                        to: "+15005550006".into(),
                        body: "YES".into(),
                        provider_message_id: Some("SM9".into()),
                        opt_out: None,
                    },
                    rsvp: None,
                },
            ],
        )
        .unwrap();
        for tree in [
            &s.records,
            &s.idem,
            &s.pids,
            &s.finished,
            &s.latest,
            &s.held,
        ] {
            assert_eq!(tree.len(), 1);
        }
        assert_eq!(s.seen.len(), 3);
        assert_eq!(s.seen_at.len(), 3);
        s.commit(
            100,
            &[Op::Prune {
                before: 50,
                limit: 100,
            }],
        )
        .unwrap();
        for (name, tree) in [
            ("records", &s.records),
            ("idem", &s.idem),
            ("pids", &s.pids),
            ("finished", &s.finished),
            ("latest", &s.latest),
            ("held", &s.held),
            ("seen", &s.seen),
            ("seen_at", &s.seen_at),
            ("events", &s.events),
            ("schedule", &s.schedules[0]),
            ("schedule", &s.schedules[1]),
            ("schedule", &s.schedules[2]),
            ("leases", &s.leases),
        ] {
            assert_eq!(tree.len(), 0, "{name} left behind");
        }
    }

    #[test]
    fn damage_is_written_outside_a_transaction_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let m = msg("x");
        {
            let s = open(dir.path());
            s.commit(0, &[Op::Accept(m.clone())]).unwrap();
            s.damage(&Damage::DropSchedule(m.id)).unwrap();
            s.damage(&Damage::SetCounts(Counts::default())).unwrap();
        }
        let s = open(dir.path());
        assert!(s.schedules.iter().all(|t| t.is_empty()));
        assert_eq!(s.counts(), Counts::default());
        assert_eq!(s.get(&m.id).unwrap().unwrap().state, State::Queued);
    }

    #[test]
    fn leftover_partial_snapshot_is_removed_before_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            s.commit(0, &[Op::Accept(msg("x"))]).unwrap();
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

    #[test]
    fn exists_only_where_a_store_was_made() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!SledStore::exists(&dir.path().join("db")));
        drop(open(&dir.path().join("db")));
        assert!(SledStore::exists(&dir.path().join("db")));
    }

    #[test]
    fn a_held_store_is_locked_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.commit(0, &[Op::Accept(msg("x"))]).unwrap();
        assert!(matches!(
            SledStore::open(dir.path(), 1 << 20),
            Err(StoreError::Locked(_))
        ));
        drop(s);
        SledStore::wait_unlocked(dir.path()).unwrap();
        assert_eq!(SledStore::open(dir.path(), 1 << 20).unwrap().last_seq(), 1);
    }

    #[test]
    fn the_epoch_is_kept_with_the_data_and_differs_between_data_dirs() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let first = SledStore::open_when_unlocked(a.path(), 1 << 20)
            .unwrap()
            .epoch();
        assert_eq!(first.len(), 16, "{first}");
        let again = SledStore::open_when_unlocked(a.path(), 1 << 20)
            .unwrap()
            .epoch();
        assert_eq!(again, first, "reopening keeps it");
        let other = SledStore::open_when_unlocked(b.path(), 1 << 20)
            .unwrap()
            .epoch();
        assert_ne!(other, first, "another data dir, another epoch");
    }
}
