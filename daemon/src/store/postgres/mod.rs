//! The PostgreSQL engine: several daemons, one queue, in one PostgreSQL database.
//!
//! # Layout
//! Tables (see `schema`): a write-once `messages` table (the body of each message, written
//! at accept) beside a narrow `message_status` row per message that each transition
//! rewrites (`message_rows`), a narrow `queue` of
//! waiting messages only (a row leaves it when the message is claimed or cancelled),
//! `leases` (expiry and the claim's fencing token, from the `lease_tokens` sequence),
//! `idempotency` keys in their own
//! uniquely keyed table, provider ids, dead letters, finished-by-time, suppression, the
//! latest message per recipient, held webhook updates, seen webhook ids, shared `breakers`
//! and `breaker_probes` (who makes each trial call of a half-open breaker, held until a
//! deadline so a dead winner's trial goes to another daemon), and the append-only `events`
//! log, partitioned by seq range and pruned a partition at a time (`event_log`);
//! `herald_meta` holds the seq counter, the per-state counts, the epoch, how recipients are
//! keyed and the log's current partition. Values are postcard, like sled's.
//!
//! # Transactions and seq
//! Every [`Store::commit`] is one SQL transaction that first locks the `herald_meta` row
//! (`FOR UPDATE`): batches of all daemons are serialised, so the seq numbers a batch takes
//! are gap-free and seq order is commit order — a subscriber reading `events_from(n)` can
//! never skip an event that commits late. The batch then runs the shared state machine
//! ([`lifecycle::apply_batch`]) over a [`Txn`] whose methods are SQL statements (prepared
//! once per connection) — its reads taken a step kind at a time ahead of it (`prefetch`),
//! its new messages and queue entries inserted a statement per kind (`multi_row`), its other
//! writes pipelined; claims read the queue `FOR UPDATE SKIP LOCKED`. Every claim takes
//! a new fencing token (`nextval('lease_tokens')`, independent of clocks) into its lease
//! row and hands it out as [`super::Claimed::fence`]; a completion applies only when the
//! stored token still matches: a late completion from a daemon that lost its lease changes
//! nothing. A batch of only claims and recoveries first looks, outside any transaction,
//! whether anything is due or expired; when nothing is, it answers without a transaction,
//! so idle daemons never queue for the counter row.
//!
//! # Bounds and lost connections
//! Every session runs with `idle_in_transaction_session_timeout` and `lock_timeout` below
//! `daemon.storage_timeout` ([`session_options`]): a daemon stalled inside a transaction
//! loses it (and the counter row) instead of blocking the others. A lost connection, an
//! ended session or a bound that ran out is [`StoreError::Unavailable`] ([`lost`]): the
//! batch fails unacknowledged, the connection leaves the pool, and the next batch takes a
//! fresh one — the committer does not mark the store failed. Neither does any other
//! server error ([`db`]): a refusal that clears by itself (out of disk, a read-only
//! standby, …) is `Unavailable` too, one on the statement's merits `Internal`; the batch
//! was rolled back whole either way.
//! `COMMIT` runs with `synchronous_commit = on`, so `flush` has nothing left to do.
//! Each commit with events sends `NOTIFY herald_events` (delivered at commit).
//!
//! # Recovery
//! `Op::Recover` returns only *expired* leases to the queue (`Txn::leased` lists leases
//! whose expiry is at or before `now`): another daemon may hold the live ones. The daemon
//! runs it at start and periodically.
//!
//! # Sync over async
//! [`Store`] is a sync trait, called from the committer's plain thread and from tokio
//! worker threads (the IPC handlers read counts and records). The engine owns a small
//! multi-thread tokio runtime of its own (the driver's connections run on it); every call
//! blocks on it with `Runtime::block_on` — from a thread that is not inside a runtime, or,
//! when the caller is inside one (blocking there would panic), from a scoped thread spawned
//! for the call. Nothing of the caller's runtime is used.
//!
//! Owns: everything that knows SQL. **Only `store::postgres` knows SQL.** Must not: decide
//! the state machine (that is `lifecycle`), or log the connection URL (it holds a secret:
//! [`redact`] gives the loggable form).

mod event_log;
mod message_rows;
mod multi_row;
mod prefetch;
mod schema;

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use herald_plugin_api::{Channel, Event, RecipientKey, RecipientRules, StatusUpdate, UnixMillis};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::check::{self, Audit};
use super::lifecycle::{self, HeldFor, HeldKey, HeldUpdates, SeenKey, Txn};
use super::recipients::{self, KeyedWith};
use super::{
    BreakerRecord, Committed, Counts, Lane, LaneDepth, MsgId, Op, OpResult, Record, Store,
    StoreError, Suppression, SuppressionEntry,
};

/// The version byte in front of every postcard value.
const FORMAT: u8 = 1;

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // postcard into a Vec cannot fail for our types.
    postcard::to_extend(v, vec![FORMAT]).unwrap_or_else(|_| vec![FORMAT])
}

/// A message record, or one written before priority lanes (read as lane `normal`).
fn dec_record(bytes: &[u8]) -> Result<Record, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => {
            super::decode_record(rest).map_err(|e| StoreError::Corrupt(format!("message: {e}")))
        }
        _ => Err(StoreError::Corrupt("message: unknown format".into())),
    }
}

/// A lane in the `queue.lane` column (rows from before schema 3 default to `normal`).
fn lane_sql(lane: Lane) -> i16 {
    lane.index() as i16
}

fn dec<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
        }
        _ => Err(StoreError::Corrupt(format!("{what}: unknown format"))),
    }
}

/// A statement's error. Every batch is one transaction, rolled back whole when a statement
/// fails, so no error leaves the database half-written and none is a reason to stop
/// writing for good (as sled's I/O errors are):
/// - [`StoreError::Unavailable`] (retryable: the clients are told to retry, the daemon
///   carries on) when the connection or the session was lost or a bound cut it short
///   ([`lost`]), or the server cannot do the work *now* ([`refused_for_now`]);
/// - [`StoreError::Internal`] otherwise: a statement the server refuses on its merits (a
///   constraint, a type, a missing table) — a bug or a tampered schema; that batch fails
///   with `internal`, later ones are tried.
pub(crate) fn db(e: tokio_postgres::Error) -> StoreError {
    let what = describe(&e);
    if lost(&e) || refused_for_now(&e) {
        StoreError::Unavailable(format!("postgres: {what}"))
    } else {
        StoreError::Internal(format!("postgres: {what}"))
    }
}

/// The server's own words when it answered with an error (`Display` of the driver's
/// error says only "db error"), else the driver's.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}: {}", d.severity(), d.code().code(), d.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// Whether the server refused for a reason that clears without Herald doing anything
/// different: out of disk, memory or another resource (class 53), a system or I/O error
/// on the server (58), an operator's intervention (57: a shutdown, a cancel), a read-only
/// transaction (25006: the server is a standby — mid-failover, or the URL names a
/// replica), a lock held elsewhere (55P03, 55006), or a missing privilege (42501: an
/// operator's grant fixes it).
fn refused_for_now(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|code| {
        let c = code.code();
        c.starts_with("53")
            || c.starts_with("58")
            || c.starts_with("57")
            || matches!(c, "25006" | "55P03" | "55006" | "42501")
    })
}

/// Whether `e` says the connection or its session ended, or a bound of this engine cut the
/// transaction short — the batch was rolled back (or, for a `COMMIT`, its outcome is
/// unknown), and a later batch on a fresh connection may well succeed: the connection is
/// closed, the socket failed, the server shut the session down (`pg_terminate_backend`, a
/// restart: class 08 and 57P), the idle-in-transaction timeout ended it (25P03), a lock or
/// statement bound ran out (55P03, 57014), the server is out of connections (53300), or
/// the transaction lost a serialisation or deadlock check (40001, 40P01).
fn lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        return c.starts_with("08")
            || c.starts_with("57P")
            || matches!(c, "25P03" | "55P03" | "57014" | "53300" | "40001" | "40P01");
    }
    // A socket error, or the connection ended under a statement.
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || e.to_string().contains("connection closed")
}

/// No connection to be had (the server is down or full, a connect timed out): nothing was
/// done, and a later batch may succeed.
fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("postgres connection pool: {e}"))
}

fn id_of(bytes: &[u8]) -> Result<MsgId, StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("a message id of {} bytes", bytes.len())))
}

fn ms(v: i64) -> UnixMillis {
    v.max(0) as UnixMillis
}

fn big(v: UnixMillis) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn counts_of(v: Vec<i64>) -> Counts {
    let mut c = Counts::default();
    for (slot, n) in c.0.iter_mut().zip(v) {
        *slot = ms(n);
    }
    c
}

fn counts_sql(c: &Counts) -> Vec<i64> {
    c.0.iter().map(|n| big(*n)).collect()
}

/// How old the counts may be for the `max_queue` admission check
/// ([`Store::active_for_admission`]).
const ADMISSION_STALENESS: Duration = Duration::from_millis(250);

/// A connection string with its password (and anything after `password=`/`:…@`) hidden,
/// for logs.
pub fn redact(url: &str) -> String {
    match tokio_postgres::Config::from_str(url) {
        Ok(c) => {
            let host = c
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.to_string_lossy().to_string(),
                })
                .unwrap_or_default();
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "postgresql://{}{}@{host}:{port}/{}",
                c.get_user().unwrap_or(""),
                if c.get_password().is_some() {
                    ":***"
                } else {
                    ""
                },
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "<an unparsable PostgreSQL URL>".to_string(),
    }
}

/// The engine's own runtime, which every call blocks on (see the module doc).
pub(crate) struct Bridge {
    rt: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    fn new() -> Result<Bridge, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("herald-pg")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Internal(format!("cannot start the PostgreSQL runtime: {e}"))
            })?;
        Ok(Bridge { rt: Some(rt) })
    }

    /// Runs `f` to completion on the engine's runtime. Call only from a thread outside
    /// any runtime ([`PgStore::off_runtime`] sees to it).
    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => unreachable!("the runtime lives as long as the store"),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime from inside another one panics; this never blocks.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bridge")
    }
}

/// The PostgreSQL engine. See the module doc.
pub struct PgStore {
    bridge: Bridge,
    pool: Pool,
    /// For the LISTEN connection (outside the pool: it stays open).
    config: tokio_postgres::Config,
    rules: RecipientRules,
    epoch: String,
    /// The last seq and counts read or written, for when a read fails.
    last_seq: AtomicU64,
    counts: Mutex<Counts>,
    /// When `counts` was last read from (or written to) the database.
    counts_at: Mutex<Option<Instant>>,
    /// How large new event log partitions are made.
    spans: event_log::Spans,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl PgStore {
    /// [`PgStore::open_bounded`] under the default `daemon.storage_timeout` (30 s).
    pub fn open(url: &str, pool_size: usize, rules: RecipientRules) -> Result<PgStore, StoreError> {
        PgStore::open_bounded(url, pool_size, rules, Duration::from_secs(30))
    }

    /// Connects to `url` with up to `pool_size` connections, migrates the schema (or
    /// refuses a newer one) and keys recipient entries again if `rules` changed.
    ///
    /// Every session is bounded below `storage_timeout` (see [`session_options`]): a daemon
    /// stalled inside a transaction (SIGSTOP, a swapped-out host) loses it — and the counter
    /// row it locked — after half of it, instead of holding up every other daemon.
    pub fn open_bounded(
        url: &str,
        pool_size: usize,
        rules: RecipientRules,
        storage_timeout: Duration,
    ) -> Result<PgStore, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Internal(format!("the PostgreSQL URL is not valid: {e}")))?;
        config.options(session_options(storage_timeout));
        if config.get_application_name().is_none() {
            config.application_name("heraldd");
        }
        config.connect_timeout(Duration::from_secs(10));
        let bridge = Bridge::new()?;
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(15)))
            .wait_timeout(Some(Duration::from_secs(60)))
            .build()
            .map_err(|e| StoreError::Internal(format!("cannot build the connection pool: {e}")))?;
        let store = PgStore {
            bridge,
            pool,
            config,
            rules,
            epoch: String::new(),
            last_seq: AtomicU64::new(0),
            counts: Mutex::new(Counts::default()),
            counts_at: Mutex::new(None),
            spans: event_log::Spans::default(),
        };
        off_runtime(move || store.start())
    }

    /// Migrates, reads the epoch, keys recipients again when needed.
    fn start(mut self) -> Result<PgStore, StoreError> {
        let client = self.client()?;
        let fresh_epoch = format!("{:016x}", rand::random::<u64>());
        schema::migrate(
            &self.bridge,
            &client,
            &fresh_epoch,
            &enc(&KeyedWith::current(self.rules)),
        )?;
        self.rekey_if_needed(&client)?;
        let row = self
            .bridge
            .block_on(client.query_one("SELECT epoch, seq, counts FROM herald_meta", &[]))
            .map_err(db)?;
        self.epoch = row.get(0);
        self.last_seq.store(ms(row.get(1)), Ordering::Relaxed);
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = counts_of(row.get(2));
        drop(client);
        Ok(self)
    }

    fn counts_read_now(&self) {
        *self.counts_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn client(&self) -> Result<Object, StoreError> {
        self.bridge.block_on(self.pool.get()).map_err(pool_err)
    }
}

/// The settings of every session: acknowledged means committed durably, whatever the
/// server's default (`synchronous_commit`); a transaction left idle (its daemon stalled)
/// for half of `storage_timeout` is ended by the server, which releases its locks
/// (`idle_in_transaction_session_timeout`); a lock waited for longer than three quarters of
/// it fails the waiting batch (`lock_timeout`). Both are below `storage_timeout`, so the
/// other daemons see a failed batch (answered `storage_unavailable`, retryable) rather
/// than a store marked stalled. No `statement_timeout`: a store check reads every message
/// in one statement.
fn session_options(storage_timeout: Duration) -> String {
    let ms = storage_timeout.as_millis().max(1_000);
    format!(
        "-c synchronous_commit=on -c idle_in_transaction_session_timeout={} -c lock_timeout={}",
        ms / 2,
        ms * 3 / 4
    )
}

/// Takes a connection out of the pool for good when `e` says it was lost (or its session
/// ended or was cut short): the next batch connects afresh rather than meet it again.
fn discard_if_lost(client: Object, e: &StoreError) {
    if matches!(e, StoreError::Unavailable(_)) {
        drop(Object::take(client));
    }
}

/// Runs `f` where blocking on the engine's runtime is allowed: here, or on a scoped thread
/// when the caller is itself inside a tokio runtime (a blocking call there would panic).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|p| std::panic::resume_unwind(p))
    } else {
        f()
    }
}

impl PgStore {
    /// Keys every suppression and latest row again when the stored rules (or the schema
    /// of recipient keys) differ from this daemon's, in one transaction.
    fn rekey_if_needed(&self, client: &Object) -> Result<(), StoreError> {
        let want = KeyedWith::current(self.rules);
        let rules = self.rules;
        let b = &self.bridge;
        let r = b.block_on(async {
            client.batch_execute("BEGIN").await.map_err(db)?;
            let row = client
                .query_one(
                    "SELECT keyed_with FROM herald_meta WHERE id = 1 FOR UPDATE",
                    &[],
                )
                .await
                .map_err(db)?;
            let stored: Option<Vec<u8>> = row.get(0);
            let stored = stored.and_then(|v| dec::<KeyedWith>(&v, "keyed_with").ok());
            if stored == Some(want) {
                return Ok(());
            }
            let mut suppression: BTreeMap<(i16, String), Suppression> = BTreeMap::new();
            for row in client
                .query(
                    "SELECT channel, key, entry FROM suppression ORDER BY channel, key",
                    &[],
                )
                .await
                .map_err(db)?
            {
                let byte: i16 = row.get(0);
                let old: String = row.get(1);
                let entry: Suppression = dec(row.get::<_, &[u8]>(2), "suppression")?;
                let key = match recipients::channel_of(byte as u8) {
                    Some(channel) => recipients::rekey(channel, &old, &entry.recipient, &rules),
                    None => old,
                };
                let merged = match suppression.remove(&(byte, key.clone())) {
                    Some(other) => recipients::merge_suppression(other, entry),
                    None => entry,
                };
                suppression.insert((byte, key), merged);
            }
            let mut latest: BTreeMap<(i16, String), MsgId> = BTreeMap::new();
            for row in client
                .query(
                    &format!(
                        "SELECT l.channel, l.key, l.id, {} FROM latest l \
                         JOIN message_status s ON s.id = l.id JOIN messages m ON m.id = l.id \
                         ORDER BY l.channel, l.key",
                        message_rows::RECORD_COLUMNS
                    ),
                    &[],
                )
                .await
                .map_err(db)?
            {
                let byte: i16 = row.get(0);
                let old: String = row.get(1);
                let id = id_of(row.get(2))?;
                let record = message_rows::record_of(&row, 3)?;
                let key = match recipients::channel_of(byte as u8) {
                    Some(channel) => recipients::rekey(channel, &old, &record.to, &rules),
                    None => old,
                };
                let merged = match latest.get(&(byte, key.clone())) {
                    Some(other) => recipients::merge_latest(*other, id),
                    None => id,
                };
                latest.insert((byte, key), merged);
            }
            client
                .batch_execute("DELETE FROM suppression; DELETE FROM latest")
                .await
                .map_err(db)?;
            for ((channel, key), entry) in &suppression {
                client
                    .execute(
                        "INSERT INTO suppression (channel, key, entry) VALUES ($1, $2, $3)",
                        &[channel, key, &enc(entry)],
                    )
                    .await
                    .map_err(db)?;
            }
            for ((channel, key), id) in &latest {
                client
                    .execute(
                        "INSERT INTO latest (channel, key, id) VALUES ($1, $2, $3)",
                        &[channel, key, &id.as_slice()],
                    )
                    .await
                    .map_err(db)?;
            }
            client
                .execute(
                    "UPDATE herald_meta SET keyed_with = $1 WHERE id = 1",
                    &[&enc(&want)],
                )
                .await
                .map_err(db)?;
            Ok(())
        });
        match r {
            Ok(()) => b.block_on(client.batch_execute("COMMIT")).map_err(db),
            Err(e) => {
                let _ = b.block_on(client.batch_execute("ROLLBACK"));
                Err(e)
            }
        }
    }

    /// Runs `sql` with `params` outside any batch (tests: damage, legacy entries).
    #[cfg(any(test, feature = "test-support"))]
    fn execute_now(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        off_runtime(|| {
            let client = self.client()?;
            self.bridge
                .block_on(client.execute(sql, params))
                .map_err(db)
        })
    }

    /// Writes an entry the way recipient schema 1 did (the raw recipient lower-cased in
    /// ASCII, the reason only) and marks the database schema 1.
    #[cfg(any(test, feature = "test-support"))]
    pub fn plant_legacy(&self, entry: &super::Legacy) -> Result<(), StoreError> {
        match entry {
            // Records written before lanes reach schema 5 only through its migration, which
            // splits each into its body and status rows: plant one the way it does.
            super::Legacy::Message { id, record } => {
                let mut v = vec![FORMAT];
                v.extend(super::encode_record_v1(record));
                let record = dec_record(&v)?;
                self.execute_now(
                    "UPDATE messages SET body = $2 WHERE id = $1",
                    &[&id.as_slice(), &message_rows::body(&record)],
                )?;
                return Ok(());
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
                self.execute_now(
                    "INSERT INTO suppression (channel, key, entry) VALUES ($1, $2, $3) \
                     ON CONFLICT (channel, key) DO UPDATE SET entry = EXCLUDED.entry",
                    &[&(*channel as u8 as i16), &key, &enc(&value)],
                )?;
            }
            super::Legacy::Latest { channel, to, id } => {
                self.execute_now(
                    "INSERT INTO latest (channel, key, id) VALUES ($1, $2, $3) \
                     ON CONFLICT (channel, key) DO UPDATE SET id = EXCLUDED.id",
                    &[
                        &(*channel as u8 as i16),
                        &to.to_ascii_lowercase(),
                        &id.as_slice(),
                    ],
                )?;
            }
        }
        self.execute_now("UPDATE herald_meta SET keyed_with = NULL WHERE id = 1", &[])?;
        Ok(())
    }

    /// Damages the indexes on purpose (see [`super::Damage`]).
    #[cfg(any(test, feature = "test-support"))]
    pub fn damage(&self, damage: &super::Damage) -> Result<(), StoreError> {
        use super::Damage;
        match damage {
            Damage::DropLease(id) => {
                self.execute_now("DELETE FROM leases WHERE id = $1", &[&id.as_slice()])
            }
            Damage::DropSchedule(id) => {
                self.execute_now("DELETE FROM queue WHERE id = $1", &[&id.as_slice()])
            }
            Damage::DropDeadLetter(id) => {
                self.execute_now("DELETE FROM dead WHERE id = $1", &[&id.as_slice()])
            }
            Damage::DropFinished(id) => {
                self.execute_now("DELETE FROM finished WHERE id = $1", &[&id.as_slice()])
            }
            Damage::AddSchedule(due, id) => self.execute_now(
                "INSERT INTO queue (due_at, id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&big(*due), &id.as_slice()],
            ),
            Damage::AddLease(id, until) => self.execute_now(
                "INSERT INTO leases (id, until) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET until = EXCLUDED.until",
                &[&id.as_slice(), &big(*until)],
            ),
            Damage::AddDeadLetter(id) => self.execute_now(
                "INSERT INTO dead (id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&id.as_slice()],
            ),
            Damage::SetCounts(counts) => self.execute_now(
                "UPDATE herald_meta SET counts = $1 WHERE id = 1",
                &[&counts_sql(counts)],
            ),
        }
        .map(|_| ())
    }

    /// One batch, in one transaction, on a thread where blocking is allowed.
    ///
    /// A lost connection (see [`lost`]) fails the batch with [`StoreError::Unavailable`]
    /// and the connection leaves the pool; the next batch takes a fresh one. A `COMMIT`
    /// whose answer was lost fails the batch too — it may have committed, and it is not
    /// acknowledged (an accept retried with its idempotency key finds it; a claim's leases
    /// expire and are recovered; a completion's message is leased again after its lease).
    /// Nothing cached is trusted afterwards: each batch reads seq and counts under the
    /// counter row's lock.
    fn commit_here(&self, now: UnixMillis, ops: &[Op]) -> Result<Committed, StoreError> {
        let mut client = self.client()?;
        let b = &self.bridge;
        // A pooled connection may have died (a server restart, a killed backend) before
        // the pool noticed: when the batch's first statement finds it so, nothing was done
        // yet, and the batch starts once more on a fresh connection.
        let started = match self.start_batch(&client, now, ops) {
            Err(StoreError::Unavailable(e)) => {
                tracing::info!(error = %e, "a pooled PostgreSQL connection was lost; starting the batch on a fresh one");
                drop(Object::take(client));
                client = self.client()?;
                self.start_batch(&client, now, ops)
            }
            other => other,
        };
        let started = match started {
            Err(e) => {
                discard_if_lost(client, &e);
                return Err(e);
            }
            Ok(s) => s,
        };
        if let Some(idle) = started {
            return Ok(idle);
        }
        let result = (|| {
            // The counter row, locked until COMMIT: batches of every daemon in turn.
            let row = b
                .block_on(client.query_one(META_FOR_UPDATE.as_str(), &[]))
                .map_err(db)?;
            let seq = ms(row.get(0));
            let mut txn = PgTxn {
                b,
                c: &client,
                now,
                rules: self.rules,
                pending: std::cell::RefCell::new(Vec::new()),
                gathering: std::cell::Cell::new([None; 2]),
                bodies: HashSet::new(),
                seq,
                part: event_log::Current::of(&row, 2),
                spans: self.spans,
                drops_pending: false,
                cache: prefetch::Cache::default(),
            };
            txn.prefetch_accepts(ops)?;
            txn.prefetch_completions(ops)?;
            let batch = lifecycle::apply_batch(&mut txn, now, ops, seq, counts_of(row.get(1)))?;
            txn.flush_pending()?;
            Ok((batch, txn.drops_pending))
        })();
        let result = result.and_then(|(batch, drops_pending)| {
            // An error here leaves the outcome unknown: the batch is answered as failed.
            b.block_on(client.batch_execute("COMMIT")).map_err(db)?;
            Ok((batch, drops_pending))
        });
        match result {
            Ok((batch, drops_pending)) => {
                if drops_pending && let Err(e) = event_log::drop_marked(b, &client) {
                    discard_if_lost(client, &e);
                }
                self.last_seq.store(batch.cursor.seq, Ordering::Relaxed);
                *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = batch.cursor.counts;
                self.counts_read_now();
                Ok(Committed {
                    results: batch.results,
                    events: batch.cursor.events,
                    scheduled: batch.cursor.scheduled,
                })
            }
            Err(e) => {
                let _ = b.block_on(client.batch_execute("ROLLBACK"));
                discard_if_lost(client, &e);
                Err(e)
            }
        }
    }

    /// Answers an idle batch without a transaction (see [`PgStore::nothing_to_do`]), or
    /// opens the batch's transaction and returns `None`.
    fn start_batch(
        &self,
        client: &Object,
        now: UnixMillis,
        ops: &[Op],
    ) -> Result<Option<Committed>, StoreError> {
        if let Some(idle) = self.nothing_to_do(client, now, ops)? {
            return Ok(Some(idle));
        }
        self.bridge
            .block_on(client.batch_execute("BEGIN"))
            .map_err(db)?;
        Ok(None)
    }

    /// The answer of a batch of claims and recoveries only when there is nothing to claim
    /// or recover at `now` — read outside any transaction, so an idle daemon's polls never
    /// take the counter row (and never wait behind, or hold up, other daemons' commits).
    /// `None`: the batch has work (or other ops) and runs in a transaction. A row that
    /// becomes due right after this read is claimed by the next poll.
    fn nothing_to_do(
        &self,
        client: &Object,
        now: UnixMillis,
        ops: &[Op],
    ) -> Result<Option<Committed>, StoreError> {
        if ops.is_empty()
            || !ops
                .iter()
                .all(|op| matches!(op, Op::Claim { .. } | Op::Recover))
        {
            return Ok(None);
        }
        let recover = ops.iter().any(|op| matches!(op, Op::Recover));
        let busy: bool = self
            .bridge
            .block_on(async {
                let st = client
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM queue WHERE due_at <= $1) \
                         OR ($2 AND EXISTS (SELECT 1 FROM leases WHERE until <= $1))",
                    )
                    .await?;
                client.query_one(&st, &[&big(now), &recover]).await
            })
            .map_err(db)?
            .get(0);
        if busy {
            return Ok(None);
        }
        let results = ops
            .iter()
            .map(|op| match op {
                Op::Recover => OpResult::Recovered(0),
                _ => OpResult::Claimed(Vec::new()),
            })
            .collect();
        Ok(Some(Committed {
            results,
            events: Vec::new(),
            scheduled: false,
        }))
    }

    /// A read outside any batch.
    fn read<T: Send>(
        &self,
        f: impl FnOnce(&Bridge, &Object) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        off_runtime(|| {
            let client = self.client()?;
            let r = f(&self.bridge, &client);
            if let Err(e) = &r {
                discard_if_lost(client, e);
            }
            r
        })
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        self.read(|b, c| {
            b.block_on(async {
                let st = c.prepare_cached(sql).await?;
                c.query(&st, params).await
            })
            .map_err(db)
        })
    }
}

/// The key of a held-updates row: `m` + message id, or `p` + provider length (4 bytes,
/// big-endian) + provider + provider message id.
fn held_key(key: HeldFor<'_>) -> Vec<u8> {
    match key {
        HeldFor::Message(id) => {
            let mut k = vec![b'm'];
            k.extend_from_slice(id);
            k
        }
        HeldFor::ProviderId { provider, pid } => {
            let mut k = vec![b'p'];
            k.extend_from_slice(&(provider.len() as u32).to_be_bytes());
            k.extend_from_slice(provider.as_bytes());
            k.extend_from_slice(pid.as_bytes());
            k
        }
    }
}

fn held_key_of(bytes: &[u8]) -> Result<HeldKey, StoreError> {
    let bad = || StoreError::Corrupt("a held-updates key".into());
    match bytes.split_first() {
        Some((b'm', id)) => Ok(HeldKey::Message(id_of(id)?)),
        Some((b'p', rest)) if rest.len() >= 4 => {
            let (len, rest) = rest.split_at(4);
            let len = u32::from_be_bytes(len.try_into().map_err(|_| bad())?) as usize;
            if rest.len() < len {
                return Err(bad());
            }
            let (provider, pid) = rest.split_at(len);
            Ok(HeldKey::ProviderId {
                provider: String::from_utf8(provider.to_vec()).map_err(|_| bad())?,
                pid: String::from_utf8(pid.to_vec()).map_err(|_| bad())?,
            })
        }
        _ => Err(bad()),
    }
}

/// The record of one message, by id (`$1`): the engine's most frequent read.
static RECORD_BY_ID: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| select_record("WHERE s.id = $1"));

/// A query of whole records ([`message_rows::RECORD_COLUMNS`], then the id) with `rest`
/// (a `WHERE` and/or `ORDER BY` on `s`, the status row).
fn select_record(rest: &str) -> String {
    format!(
        "SELECT {}, s.id FROM message_status s JOIN messages m ON m.id = s.id {rest}",
        message_rows::RECORD_COLUMNS
    )
}

fn channel_sql(channel: Channel) -> i16 {
    channel as u8 as i16
}

/// The counter row, locked by every batch: seq, counts, the current event log partition.
static META_FOR_UPDATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT seq, counts, {} FROM herald_meta WHERE id = 1 FOR UPDATE",
        event_log::CURRENT_COLUMNS
    )
});

/// This engine's [`Txn`]: SQL statements in the batch's transaction.
struct PgTxn<'a> {
    b: &'a Bridge,
    c: &'a Object,
    /// The batch's time: `leased` lists only leases expired by then.
    now: UnixMillis,
    rules: RecipientRules,
    /// Writes whose answer nobody reads, not yet sent: they go out together with the next
    /// statement (see [`PgTxn::with_pending`]).
    pending: std::cell::RefCell<Vec<Write>>,
    /// Where in `pending` the gathering write of each [`multi_row::Tables`] is, while it
    /// may still take rows.
    gathering: std::cell::Cell<[Option<usize>; 2]>,
    /// Messages whose write-once body row this batch knows to exist (read or written by
    /// it): their [`Txn::put_message`] writes only the status row.
    bodies: HashSet<MsgId>,
    /// The seq when the batch started (its own events are appended at its end).
    seq: u64,
    /// The event log partition being written (see `event_log`).
    part: event_log::Current,
    spans: event_log::Spans,
    /// Event log partitions are marked for dropping once the batch commits.
    drops_pending: bool,
    /// What the batch read ahead (see `prefetch`).
    cache: prefetch::Cache,
}

/// A parameter a deferred write owns.
type Param = Box<dyn ToSql + Sync + Send>;

/// A write sent later, in order, ahead of the next statement of the transaction.
struct Deferred {
    sql: &'static str,
    params: Vec<Param>,
}

/// A pending write: one statement, or rows gathered into one (see `multi_row`).
enum Write {
    One(Deferred),
    /// Boxed: a gathering write holds a column each, and there are few of them.
    Rows(Box<multi_row::Rows>),
}

impl Write {
    fn sql(&self) -> &'static str {
        match self {
            Write::One(d) => d.sql,
            Write::Rows(r) => r.sql(),
        }
    }
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            Write::One(d) => d
                .params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect(),
            Write::Rows(r) => r.params(),
        }
    }
}

fn slot(tables: multi_row::Tables) -> usize {
    match tables {
        multi_row::Tables::Messages => 0,
        multi_row::Tables::Queue => 1,
    }
}

impl PgTxn<'_> {
    /// Queues a write whose answer (rows affected) nobody reads. Writes keep their order:
    /// they are sent, in one pipeline, ahead of the next read or write that needs an
    /// answer — so a read sees every earlier write, and a batch of accepts costs one round
    /// trip per message (its reads) instead of one per statement. A deferred write that
    /// fails fails that next statement, and so the batch.
    fn defer(&self, sql: &'static str, params: Vec<Param>) {
        self.pending
            .borrow_mut()
            .push(Write::One(Deferred { sql, params }));
    }

    /// Stops the gathering write on `tables` from taking rows: a statement on those tables
    /// is queued after it, and must stay after every row it holds.
    fn close_gathering(&self, tables: multi_row::Tables) {
        let mut open = self.gathering.get();
        open[slot(tables)] = None;
        self.gathering.set(open);
    }

    /// Adds a row to the gathering write on `tables`, or starts one at the end of the
    /// pending writes with `start` (which `add` then fills).
    fn gather(
        &self,
        tables: multi_row::Tables,
        start: impl FnOnce() -> multi_row::Rows,
        add: impl FnOnce(&mut multi_row::Rows),
    ) {
        let mut pending = self.pending.borrow_mut();
        let mut open = self.gathering.get();
        let at = match open[slot(tables)] {
            Some(at) => at,
            None => {
                pending.push(Write::Rows(Box::new(start())));
                open[slot(tables)] = Some(pending.len() - 1);
                self.gathering.set(open);
                pending.len() - 1
            }
        };
        if let Some(Write::Rows(rows)) = pending.get_mut(at)
            && rows.tables() == tables
        {
            add(rows);
        }
    }

    /// Runs `f` (one statement) after sending every pending write, all on the wire before
    /// waiting for any answer (tokio-postgres sends a query when it is first polled, and
    /// the server answers in order).
    fn with_pending<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        self.gathering.set([None; 2]);
        let c = self.c;
        self.b
            .block_on(async move {
                if pending.is_empty() {
                    return f.await;
                }
                // Prepared first (cached after a connection's first use), so the writes
                // below go out in their order on their first poll.
                let mut statements = Vec::with_capacity(pending.len());
                for w in &pending {
                    statements.push(c.prepare_cached(w.sql()).await?);
                }
                let writes = futures_util::future::try_join_all(
                    pending
                        .iter()
                        .zip(&statements)
                        .map(|(w, st)| async move { c.execute(st, &w.params()).await }),
                );
                let (_, answer) = futures_util::future::try_join(writes, f).await?;
                Ok(answer)
            })
            .map_err(db)
    }

    /// Sends what is pending (before COMMIT).
    fn flush_pending(&self) -> Result<(), StoreError> {
        self.with_pending(async { Ok(()) })
    }

    fn exec(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.with_pending(async {
            let st = self.c.prepare_cached(sql).await?;
            self.c.execute(&st, params).await
        })
    }

    fn rows(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        self.with_pending(async {
            let st = self.c.prepare_cached(sql).await?;
            self.c.query(&st, params).await
        })
    }

    fn row(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, StoreError> {
        self.with_pending(async {
            let st = self.c.prepare_cached(sql).await?;
            self.c.query_opt(&st, params).await
        })
    }

    /// Two reads in one round trip (after what is pending).
    fn rows_pair(
        &self,
        (a, a_params): (&str, &[&(dyn ToSql + Sync)]),
        (b, b_params): (&str, &[&(dyn ToSql + Sync)]),
    ) -> Result<(Vec<Row>, Vec<Row>), StoreError> {
        let c = self.c;
        self.with_pending(async {
            let first = async {
                let st = c.prepare_cached(a).await?;
                c.query(&st, a_params).await
            };
            let second = async {
                let st = c.prepare_cached(b).await?;
                c.query(&st, b_params).await
            };
            futures_util::future::try_join(first, second).await
        })
    }

    /// Statements without parameters, not prepared (schema changes).
    fn ddl(&self, sql: &str) -> Result<(), StoreError> {
        self.with_pending(self.c.batch_execute(sql))
    }

    fn id_pairs(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<(UnixMillis, MsgId)>, StoreError> {
        self.rows(sql, params)?
            .iter()
            .map(|r| Ok((ms(r.get(0)), id_of(r.get(1))?)))
            .collect()
    }
}

impl Txn for PgTxn<'_> {
    type Error = StoreError;

    fn recipient_rules(&self) -> RecipientRules {
        self.rules
    }

    fn message(&mut self, id: &MsgId) -> Result<Option<Record>, StoreError> {
        if let Some(read) = self.cache.record(id) {
            return Ok(read.clone());
        }
        let Some(row) = self.row(&RECORD_BY_ID, &[&id.as_slice()])? else {
            return Ok(None);
        };
        self.bodies.insert(*id);
        message_rows::record_of(&row, 0).map(Some)
    }
    /// The body is written once, when the batch does not know it to exist (an accept), in
    /// one statement with the status row; every transition after it updates only the
    /// status row.
    fn put_message(&mut self, id: &MsgId, record: &Record) -> Result<(), StoreError> {
        self.cache.forget_record(id);
        let s = message_rows::status(record);
        if self.bodies.insert(*id) {
            let body = message_rows::body(record);
            self.gather(
                multi_row::Tables::Messages,
                || multi_row::Rows::Messages(Default::default()),
                |rows| {
                    if let multi_row::Rows::Messages(m) = rows {
                        m.push(id.to_vec(), body, s);
                    }
                },
            );
        } else {
            self.close_gathering(multi_row::Tables::Messages);
            self.defer(
                "UPDATE message_status SET state = $2, attempt = $3, updated_at = $4, \
                   due_at = $5, expires_at = $6, lease_until = $7, provider = $8, \
                   provider_message_id = $9, last_error = $10 WHERE id = $1",
                vec![
                    Box::new(id.to_vec()),
                    Box::new(s.state),
                    Box::new(s.attempt),
                    Box::new(s.updated_at),
                    Box::new(s.due_at),
                    Box::new(s.expires_at),
                    Box::new(s.lease_until),
                    Box::new(s.provider),
                    Box::new(s.provider_message_id),
                    Box::new(s.last_error),
                ],
            );
        }
        Ok(())
    }
    fn remove_message(&mut self, id: &MsgId) -> Result<(), StoreError> {
        self.cache.forget_record(id);
        self.close_gathering(multi_row::Tables::Messages);
        self.defer(
            "DELETE FROM message_status WHERE id = $1",
            vec![Box::new(id.to_vec())],
        );
        self.exec("DELETE FROM messages WHERE id = $1", &[&id.as_slice()])?;
        self.bodies.remove(id);
        Ok(())
    }

    fn schedule(&mut self, lane: Lane, due: UnixMillis, id: &MsgId) -> Result<(), StoreError> {
        self.gather(
            multi_row::Tables::Queue,
            || multi_row::Rows::Schedule(Default::default()),
            |rows| {
                if let multi_row::Rows::Schedule(q) = rows {
                    q.push(big(due), id.to_vec(), lane_sql(lane));
                }
            },
        );
        Ok(())
    }
    fn unschedule(&mut self, lane: Lane, due: UnixMillis, id: &MsgId) -> Result<(), StoreError> {
        self.close_gathering(multi_row::Tables::Queue);
        self.defer(
            "DELETE FROM queue WHERE due_at = $1 AND id = $2 AND lane = $3",
            vec![
                Box::new(big(due)),
                Box::new(id.to_vec()),
                Box::new(lane_sql(lane)),
            ],
        );
        Ok(())
    }
    fn due(
        &mut self,
        lane: Lane,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(UnixMillis, MsgId)>, StoreError> {
        self.due_with_records(lane, now, limit)
    }

    /// The fencing token is a fresh value of the `lease_tokens` sequence: different on
    /// every claim, whatever the clocks of the daemons say.
    fn lease(&mut self, id: &MsgId, until: UnixMillis) -> Result<u64, StoreError> {
        if let Some(token) = self.cache.fresh_token() {
            self.defer(
                "INSERT INTO leases (id, until, token) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET until = EXCLUDED.until, token = EXCLUDED.token",
                vec![Box::new(id.to_vec()), Box::new(big(until)), Box::new(token)],
            );
            self.cache.forget_token(id);
            return Ok(ms(token));
        }
        self.cache.forget_token(id);
        let row = self.row(
            "INSERT INTO leases (id, until, token) VALUES ($1, $2, nextval('lease_tokens')) \
             ON CONFLICT (id) DO UPDATE SET until = EXCLUDED.until, token = EXCLUDED.token \
             RETURNING token",
            &[&id.as_slice(), &big(until)],
        )?;
        let token: i64 = row
            .ok_or_else(|| StoreError::Internal("a lease insert returned no token".into()))?
            .get(0);
        Ok(ms(token))
    }
    /// The stored lease's token, not its expiry: two claims at the same clock value (an
    /// expired lease taken again with an identical `until`) still differ.
    fn holds_lease(&mut self, id: &MsgId, _r: &Record, fence: u64) -> Result<bool, StoreError> {
        let Ok(token) = i64::try_from(fence) else {
            return Ok(false);
        };
        if let Some(read) = self.cache.token(id) {
            return Ok(read == Some(token));
        }
        Ok(self
            .row(
                "SELECT 1 FROM leases WHERE id = $1 AND token = $2",
                &[&id.as_slice(), &token],
            )?
            .is_some())
    }
    fn unlease(&mut self, id: &MsgId) -> Result<(), StoreError> {
        self.cache.forget_token(id);
        self.defer(
            "DELETE FROM leases WHERE id = $1",
            vec![Box::new(id.to_vec())],
        );
        Ok(())
    }
    fn is_leased(&mut self, id: &MsgId) -> Result<bool, StoreError> {
        Ok(self
            .row("SELECT 1 FROM leases WHERE id = $1", &[&id.as_slice()])?
            .is_some())
    }
    /// Only leases expired by the batch's `now`: another daemon may hold the live ones.
    fn leased(&mut self) -> Result<Vec<MsgId>, StoreError> {
        self.rows(
            "SELECT id FROM leases WHERE until <= $1 ORDER BY id",
            &[&big(self.now)],
        )?
        .iter()
        .map(|r| id_of(r.get(0)))
        .collect()
    }

    fn idempotency(&mut self, key: &str) -> Result<Option<(MsgId, UnixMillis)>, StoreError> {
        if let Some(read) = self.cache.idempotency(key) {
            return Ok(read);
        }
        self.row(
            "SELECT id, expires_at FROM idempotency WHERE key = $1",
            &[&key],
        )?
        .map(|r| Ok((id_of(r.get(0))?, ms(r.get(1)))))
        .transpose()
    }
    fn put_idempotency(
        &mut self,
        key: &str,
        id: &MsgId,
        expires: UnixMillis,
    ) -> Result<(), StoreError> {
        self.cache.forget_idempotency(key);
        self.defer(
            "INSERT INTO idempotency (key, id, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET id = EXCLUDED.id, expires_at = EXCLUDED.expires_at",
            vec![
                Box::new(key.to_string()),
                Box::new(id.to_vec()),
                Box::new(big(expires)),
            ],
        );
        Ok(())
    }
    fn remove_idempotency(&mut self, key: &str) -> Result<(), StoreError> {
        self.cache.forget_idempotency(key);
        self.exec("DELETE FROM idempotency WHERE key = $1", &[&key])?;
        Ok(())
    }

    fn by_provider_id(&mut self, provider: &str, pid: &str) -> Result<Option<MsgId>, StoreError> {
        self.row(
            "SELECT id FROM provider_ids WHERE provider = $1 AND pid = $2",
            &[&provider, &pid],
        )?
        .map(|r| id_of(r.get(0)))
        .transpose()
    }
    fn put_provider_id(&mut self, provider: &str, pid: &str, id: &MsgId) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO provider_ids (provider, pid, id) VALUES ($1, $2, $3) \
             ON CONFLICT (provider, pid) DO UPDATE SET id = EXCLUDED.id",
            vec![
                Box::new(provider.to_string()),
                Box::new(pid.to_string()),
                Box::new(id.to_vec()),
            ],
        );
        Ok(())
    }
    fn remove_provider_id(&mut self, provider: &str, pid: &str) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM provider_ids WHERE provider = $1 AND pid = $2",
            &[&provider, &pid],
        )?;
        Ok(())
    }

    fn put_dead(&mut self, id: &MsgId) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO dead (id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&id.as_slice()],
        )?;
        Ok(())
    }
    fn remove_dead(&mut self, id: &MsgId) -> Result<(), StoreError> {
        self.exec("DELETE FROM dead WHERE id = $1", &[&id.as_slice()])?;
        Ok(())
    }

    fn put_finished(&mut self, at: UnixMillis, id: &MsgId) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO finished (at, id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            vec![Box::new(big(at)), Box::new(id.to_vec())],
        );
        Ok(())
    }
    fn remove_finished(&mut self, at: UnixMillis, id: &MsgId) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM finished WHERE at = $1 AND id = $2",
            &[&big(at), &id.as_slice()],
        )?;
        Ok(())
    }
    fn finished_before(
        &mut self,
        before: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(UnixMillis, MsgId)>, StoreError> {
        self.id_pairs(
            "SELECT at, id FROM finished WHERE at < $1 ORDER BY at, id LIMIT $2",
            &[&big(before), &(limit as i64)],
        )
    }

    fn suppression(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
    ) -> Result<Option<Suppression>, StoreError> {
        if let Some(read) = self.cache.suppression(channel_sql(channel), key.as_str()) {
            return Ok(read.clone());
        }
        self.row(
            "SELECT entry FROM suppression WHERE channel = $1 AND key = $2",
            &[&channel_sql(channel), &key.as_str()],
        )?
        .map(|r| dec(r.get::<_, &[u8]>(0), "suppression"))
        .transpose()
    }
    fn suppress(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
        entry: &Suppression,
    ) -> Result<(), StoreError> {
        self.cache
            .forget_suppression(channel_sql(channel), key.as_str());
        self.exec(
            "INSERT INTO suppression (channel, key, entry) VALUES ($1, $2, $3) \
             ON CONFLICT (channel, key) DO UPDATE SET entry = EXCLUDED.entry",
            &[&channel_sql(channel), &key.as_str(), &enc(entry)],
        )?;
        Ok(())
    }
    fn unsuppress(&mut self, channel: Channel, key: &RecipientKey) -> Result<(), StoreError> {
        self.cache
            .forget_suppression(channel_sql(channel), key.as_str());
        self.exec(
            "DELETE FROM suppression WHERE channel = $1 AND key = $2",
            &[&channel_sql(channel), &key.as_str()],
        )?;
        Ok(())
    }

    fn latest(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
    ) -> Result<Option<MsgId>, StoreError> {
        self.row(
            "SELECT id FROM latest WHERE channel = $1 AND key = $2",
            &[&channel_sql(channel), &key.as_str()],
        )?
        .map(|r| id_of(r.get(0)))
        .transpose()
    }
    fn put_latest(
        &mut self,
        channel: Channel,
        key: &RecipientKey,
        id: &MsgId,
    ) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO latest (channel, key, id) VALUES ($1, $2, $3) \
             ON CONFLICT (channel, key) DO UPDATE SET id = EXCLUDED.id",
            vec![
                Box::new(channel_sql(channel)),
                Box::new(key.as_str().to_string()),
                Box::new(id.to_vec()),
            ],
        );
        Ok(())
    }
    fn remove_latest(&mut self, channel: Channel, key: &RecipientKey) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM latest WHERE channel = $1 AND key = $2",
            &[&channel_sql(channel), &key.as_str()],
        )?;
        Ok(())
    }

    fn held(&mut self, key: HeldFor<'_>) -> Result<HeldUpdates, StoreError> {
        let k = held_key(key);
        if let Some(read) = self.cache.held(&k) {
            return Ok(read.clone());
        }
        Ok(self
            .row("SELECT updates FROM held WHERE key = $1", &[&k])?
            .map(|r| dec(r.get::<_, &[u8]>(0), "held updates"))
            .transpose()?
            .unwrap_or_default())
    }
    fn set_held(
        &mut self,
        key: HeldFor<'_>,
        updates: &[(UnixMillis, StatusUpdate)],
    ) -> Result<(), StoreError> {
        let k = held_key(key);
        self.cache.forget_held(&k);
        match updates.iter().map(|(at, _)| *at).min() {
            None => self.exec("DELETE FROM held WHERE key = $1", &[&k])?,
            Some(oldest) => self.exec(
                "INSERT INTO held (key, oldest, updates) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET oldest = EXCLUDED.oldest, updates = EXCLUDED.updates",
                &[&k, &big(oldest), &enc(&updates.to_vec())],
            )?,
        };
        Ok(())
    }
    fn held_before(
        &mut self,
        before: UnixMillis,
        limit: usize,
    ) -> Result<Vec<HeldKey>, StoreError> {
        self.rows(
            "SELECT key FROM held WHERE oldest < $1 ORDER BY key LIMIT $2",
            &[&big(before), &(limit as i64)],
        )?
        .iter()
        .map(|r| held_key_of(r.get(0)))
        .collect()
    }

    fn seen(&mut self, provider: &str, key: &str, now: UnixMillis) -> Result<bool, StoreError> {
        let inserted = self.exec(
            "INSERT INTO seen (provider, key, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&provider, &key, &big(now)],
        )?;
        Ok(inserted == 0)
    }
    fn seen_before(
        &mut self,
        before: UnixMillis,
        limit: usize,
    ) -> Result<Vec<SeenKey>, StoreError> {
        Ok(self
            .rows(
                "SELECT at, provider, key FROM seen WHERE at < $1 \
                 ORDER BY at, provider, key LIMIT $2",
                &[&big(before), &(limit as i64)],
            )?
            .iter()
            .map(|r| SeenKey {
                at: ms(r.get(0)),
                provider: r.get(1),
                key: r.get(2),
            })
            .collect())
    }
    fn unsee(&mut self, key: &SeenKey) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM seen WHERE provider = $1 AND key = $2 AND at = $3",
            &[&key.provider, &key.key, &big(key.at)],
        )?;
        Ok(())
    }

    fn breaker(&mut self, provider: &str) -> Result<Option<BreakerRecord>, StoreError> {
        self.row(
            "SELECT record FROM breakers WHERE provider = $1",
            &[&provider],
        )?
        .map(|r| dec(r.get::<_, &[u8]>(0), "breaker"))
        .transpose()
    }
    fn put_breaker(&mut self, provider: &str, record: &BreakerRecord) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO breakers (provider, record) VALUES ($1, $2) \
             ON CONFLICT (provider) DO UPDATE SET record = EXCLUDED.record",
            &[&provider, &enc(record)],
        )?;
        Ok(())
    }
    fn claim_probe(
        &mut self,
        provider: &str,
        generation: u64,
        trial: u32,
        now: UnixMillis,
        until: UnixMillis,
    ) -> Result<bool, StoreError> {
        let generation = big(generation);
        self.exec(
            "DELETE FROM breaker_probes WHERE provider = $1 AND generation < $2",
            &[&provider, &generation],
        )?;
        // Inserted, or taken over from a claim that lapsed: one row; held by another, or a
        // newer opening already probed (this daemon has not adopted it yet): none.
        let won = self.exec(
            "INSERT INTO breaker_probes (provider, generation, trial, until) \
             SELECT $1::text, $2::bigint, $3::integer, $4::bigint \
             WHERE NOT EXISTS (SELECT 1 FROM breaker_probes \
                               WHERE provider = $1 AND generation > $2) \
             ON CONFLICT (provider, generation, trial) DO UPDATE SET until = EXCLUDED.until \
             WHERE breaker_probes.until <= $5",
            &[
                &provider,
                &generation,
                &(trial as i32),
                &big(until),
                &big(now),
            ],
        )?;
        Ok(won == 1)
    }

    /// One statement for the whole set: a lease is extended only while it carries the
    /// claim's token (a lease taken back and claimed again has a new one).
    fn renew_leases(
        &mut self,
        leases: &[(MsgId, u64)],
        until: UnixMillis,
    ) -> Result<Vec<MsgId>, StoreError> {
        let ids: Vec<&[u8]> = leases.iter().map(|(id, _)| id.as_slice()).collect();
        // A token past i64 was never handed out: it matches nothing.
        let tokens: Vec<i64> = leases
            .iter()
            .map(|(_, fence)| i64::try_from(*fence).unwrap_or(-1))
            .collect();
        let kept = self
            .rows(
                "UPDATE leases SET until = GREATEST(leases.until, $1) \
                 FROM unnest($2::bytea[], $3::bigint[]) AS held(id, token) \
                 WHERE leases.id = held.id AND leases.token = held.token \
                 RETURNING leases.id",
                &[&big(until), &ids, &tokens],
            )?
            .iter()
            .map(|r| id_of(r.get(0)))
            .collect::<Result<std::collections::HashSet<MsgId>, _>>()?;
        Ok(leases
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !kept.contains(id))
            .collect())
    }

    fn prune_events(&mut self, before: UnixMillis, limit: usize) -> Result<u64, StoreError> {
        self.prune_log(self.seq, before, limit)
    }

    fn audit(&mut self, counts: &Counts) -> Result<Audit, StoreError> {
        let messages = self.rows(&select_record("ORDER BY s.id"), &[])?;
        let schedule = self.id_pairs("SELECT due_at, id FROM queue", &[])?;
        let leases = self.rows("SELECT id FROM leases", &[])?;
        let dead = self.rows("SELECT id FROM dead", &[])?;
        let finished = self.id_pairs("SELECT at, id FROM finished", &[])?;
        check::audit(
            messages
                .iter()
                .map(|r| Ok((id_of(r.get(10))?, message_rows::record_of(r, 0)?))),
            schedule.into_iter().map(Ok),
            leases.iter().map(|r| id_of(r.get(0))),
            dead.iter().map(|r| id_of(r.get(0))),
            finished.into_iter().map(Ok),
            *counts,
        )
    }

    fn finish(&mut self, events: &[Event], seq: u64, counts: &Counts) -> Result<(), StoreError> {
        if !events.is_empty() {
            self.append_events(events)?;
            // A wake-up for subscribers on every daemon, delivered at COMMIT.
            self.exec("SELECT pg_notify('herald_events', $1)", &[&seq.to_string()])?;
        }
        let part = self.part;
        self.exec(
            "UPDATE herald_meta SET seq = $1, counts = $2, part_lo = $3, part_hi = $4, \
               part_opened = $5, part_newest = $6 WHERE id = 1",
            &[
                &big(seq),
                &counts_sql(counts),
                &big(part.lo),
                &big(part.hi),
                &big(part.opened),
                &big(part.newest),
            ],
        )?;
        Ok(())
    }
}

impl Store for PgStore {
    fn commit(&self, now: UnixMillis, ops: &[Op]) -> Result<Committed, StoreError> {
        off_runtime(|| self.commit_here(now, ops))
    }

    /// A commit is durable when it returns (`synchronous_commit = on`).
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn get(&self, id: &MsgId) -> Result<Option<Record>, StoreError> {
        self.query(&RECORD_BY_ID, &[&id.as_slice()])?
            .first()
            .map(|r| message_rows::record_of(r, 0))
            .transpose()
    }

    fn idempotency_key(&self, key: &str, now: UnixMillis) -> Result<Option<MsgId>, StoreError> {
        self.query(
            "SELECT id FROM idempotency WHERE key = $1 AND expires_at > $2",
            &[&key, &big(now)],
        )?
        .first()
        .map(|r| id_of(r.get(0)))
        .transpose()
    }

    fn events_from(&self, from: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.query(
            "SELECT event FROM events WHERE seq >= $1 ORDER BY seq LIMIT $2",
            &[&big(from), &(limit as i64)],
        )?
        .iter()
        .map(|r| dec(r.get::<_, &[u8]>(0), "event"))
        .collect()
    }

    fn first_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .query("SELECT min(seq) FROM events", &[])?
            .first()
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map_or(0, ms))
    }

    fn last_seq(&self) -> u64 {
        match self.query("SELECT seq FROM herald_meta WHERE id = 1", &[]) {
            Ok(rows) => {
                let seq = rows.first().map_or(0, |r| ms(r.get(0)));
                self.last_seq.fetch_max(seq, Ordering::Relaxed);
                seq
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the last seq; using the last known");
                self.last_seq.load(Ordering::Relaxed)
            }
        }
    }

    fn next_due(&self) -> Result<Option<UnixMillis>, StoreError> {
        Ok(self
            .query("SELECT min(due_at) FROM queue", &[])?
            .first()
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(ms))
    }

    fn lanes(&self) -> Result<[LaneDepth; 3], StoreError> {
        let mut out = [LaneDepth::default(); 3];
        for row in self.query(
            "SELECT lane, count(*), min(due_at) FROM queue GROUP BY lane",
            &[],
        )? {
            let lane: i16 = row.get(0);
            if let Some(d) = out.get_mut(lane as usize) {
                d.depth = row.get::<_, i64>(1) as u64;
                d.earliest_due = row.get::<_, Option<i64>>(2).map(ms);
            }
        }
        Ok(out)
    }

    fn counts(&self) -> Counts {
        match self.query("SELECT counts FROM herald_meta WHERE id = 1", &[]) {
            Ok(rows) => {
                let c = rows
                    .first()
                    .map(|r| counts_of(r.get(0)))
                    .unwrap_or_default();
                *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = c;
                self.counts_read_now();
                c
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the counts; using the last known");
                *self.counts.lock().unwrap_or_else(|p| p.into_inner())
            }
        }
    }

    /// From the counts this daemon last committed or read when that was within
    /// [`ADMISSION_STALENESS`]: one query per send (and a thread, from a tokio worker) was
    /// most of an accept's cost on this engine.
    fn active_for_admission(&self) -> u64 {
        let fresh = self
            .counts_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < ADMISSION_STALENESS);
        if fresh {
            self.counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .active()
        } else {
            self.counts().active()
        }
    }

    fn dead(&self, limit: usize) -> Result<Vec<(MsgId, Record)>, StoreError> {
        self.query(
            &select_record(
                "WHERE s.id IN (SELECT id FROM dead ORDER BY id LIMIT $1) ORDER BY s.id",
            ),
            &[&(limit as i64)],
        )?
        .iter()
        .map(|r| Ok((id_of(r.get(10))?, message_rows::record_of(r, 0)?)))
        .collect()
    }

    fn recipient_key(&self, channel: Channel, recipient: &str) -> Option<RecipientKey> {
        recipients::key(channel, recipient, &self.rules)
    }

    fn suppression(
        &self,
        channel: Channel,
        key: &RecipientKey,
    ) -> Result<Option<Suppression>, StoreError> {
        self.query(
            "SELECT entry FROM suppression WHERE channel = $1 AND key = $2",
            &[&channel_sql(channel), &key.as_str()],
        )?
        .first()
        .map(|r| dec(r.get::<_, &[u8]>(0), "suppression"))
        .transpose()
    }

    /// In (channel, key) order with keys compared as bytes (`COLLATE "C"`), as the
    /// key-value engines order them, whatever the database's collation.
    fn suppressions(
        &self,
        after: Option<(Channel, &str)>,
        limit: usize,
    ) -> Result<Vec<SuppressionEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match after {
            None => self.query(
                "SELECT channel, key, entry FROM suppression \
                 ORDER BY channel, key COLLATE \"C\" LIMIT $1",
                &[&limit],
            )?,
            Some((channel, key)) => self.query(
                "SELECT channel, key, entry FROM suppression \
                 WHERE channel > $1 OR (channel = $1 AND key COLLATE \"C\" > $2 COLLATE \"C\") \
                 ORDER BY channel, key COLLATE \"C\" LIMIT $3",
                &[&channel_sql(channel), &key, &limit],
            )?,
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let byte: i16 = r.get(0);
            let Some(channel) = u8::try_from(byte).ok().and_then(recipients::channel_of) else {
                continue;
            };
            out.push(SuppressionEntry {
                channel,
                key: r.get(1),
                entry: dec(r.get::<_, &[u8]>(2), "suppression")?,
            });
        }
        Ok(out)
    }

    fn breakers(&self) -> Result<BTreeMap<String, BreakerRecord>, StoreError> {
        self.query("SELECT provider, record FROM breakers", &[])?
            .iter()
            .map(|r| Ok((r.get(0), dec(r.get::<_, &[u8]>(1), "breaker")?)))
            .collect()
    }

    fn epoch(&self) -> String {
        self.epoch.clone()
    }

    /// `LISTEN herald_events` on a connection of its own, reconnecting after a loss; each
    /// notification (every commit with events, by any daemon) becomes a wake-up.
    fn notify_appends(&self, wake: std::sync::mpsc::Sender<()>) -> bool {
        let config = self.config.clone();
        let Some(rt) = &self.bridge.rt else {
            return false;
        };
        rt.spawn(async move {
            loop {
                if let Ok((client, mut conn)) = config.connect(tokio_postgres::NoTls).await {
                    let listen = async {
                        client.batch_execute("LISTEN herald_events").await?;
                        // Whatever was appended while not listening.
                        Ok::<_, tokio_postgres::Error>(())
                    };
                    let driver = async {
                        while let Some(message) =
                            std::future::poll_fn(|cx| conn.poll_message(cx)).await
                        {
                            match message {
                                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                                    if wake.send(()).is_err() {
                                        return true;
                                    }
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                        false
                    };
                    let (listened, done) = tokio::join!(
                        async {
                            let r = listen.await;
                            let _ = wake.send(());
                            r
                        },
                        driver
                    );
                    if done {
                        return;
                    }
                    if let Err(e) = listened {
                        tracing::warn!(error = %e, "LISTEN herald_events failed; polling only");
                    }
                    drop(client);
                }
                if wake.send(()).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        true
    }
}

#[cfg(test)]
#[path = "../../../../tests/src/pg.rs"]
pub(crate) mod test_pg;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::test_pg::TestDb;
    use super::*;
    use crate::store::{NewMessage, OpResult, new_id};
    use herald_plugin_api::{Content, SmsContent};

    fn open(db: &TestDb) -> PgStore {
        PgStore::open(&db.url, 4, RecipientRules::default()).unwrap()
    }

    fn sms(body: &str) -> NewMessage {
        NewMessage {
            id: new_id(),
            to: "+14155550100".into(),
            content: Content::Sms(SmsContent {
                body: body.into(),
                ..Default::default()
            }),
            tags: vec![],
            idempotency_key: None,
            override_suppression: false,
            lane: Default::default(),
            send_at: None,
            ttl_ms: 60_000,
            idempotency_window_ms: 1_000,
        }
    }

    /// The IPC handlers read from tokio workers: no call may panic there, on either
    /// flavour of runtime.
    #[test]
    fn calls_from_inside_a_runtime_do_not_panic() {
        let db = TestDb::new();
        for multi in [false, true] {
            let rt = if multi {
                tokio::runtime::Builder::new_multi_thread().build().unwrap()
            } else {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
            };
            let store = rt.block_on(async { open(&db) });
            let m = sms("hi");
            rt.block_on(async {
                store.commit(1, &[Op::Accept(m.clone())]).unwrap();
                assert_eq!(store.counts().get(herald_plugin_api::State::Queued), 1);
                assert!(store.get(&m.id).unwrap().is_some());
                assert!(store.last_seq() >= 1);
                store
                    .commit(2, &[Op::Cancel(m.id)])
                    .expect("cancel from a runtime");
            });
            // Dropped inside a runtime too.
            rt.block_on(async move { drop(store) });
        }
    }

    /// The admission count comes from this daemon's own commits while they are recent, and
    /// from the database (other daemons' sends included) once they are not.
    #[test]
    fn the_admission_count_follows_own_commits_then_the_database() {
        let db = TestDb::new();
        let a = open(&db);
        let b = open(&db);
        a.commit(1, &[Op::Accept(sms("a1")), Op::Accept(sms("a2"))])
            .unwrap();
        assert_eq!(a.active_for_admission(), 2);
        b.commit(2, &[Op::Accept(sms("b1"))]).unwrap();
        assert_eq!(
            b.active_for_admission(),
            3,
            "b's commit read the shared counts"
        );
        #[allow(clippy::disallowed_methods)] // a plain test thread, no runtime
        std::thread::sleep(ADMISSION_STALENESS + Duration::from_millis(50));
        assert_eq!(a.active_for_admission(), 3, "a stale reading is read again");
        assert_eq!(a.counts().active(), 3);
    }

    /// Two daemons committing at once: seqs are gap-free, unique, and in commit order —
    /// every batch's events are contiguous, so no reader can see seq n+1 before seq n.
    #[test]
    fn one_daemon_wins_each_trial_of_a_half_open_breaker() {
        let db = TestDb::new();
        let a = open(&db);
        let b = open(&db);
        let claim = |store: &PgStore, generation: u64, trial: u32, now: UnixMillis| {
            let op = Op::ClaimProbe {
                provider: "resend".into(),
                generation,
                trial,
                until: now + 1_000,
            };
            match store.commit(now, &[op]).unwrap().results.remove(0) {
                OpResult::Probe { won } => won,
                other => panic!("{other:?}"),
            }
        };
        assert!(
            claim(&a, 1, 0, 100),
            "the first to ask makes the trial call"
        );
        assert!(!claim(&b, 1, 0, 100), "not the second");
        assert!(!claim(&b, 1, 0, 1_099), "while the winner holds it");
        assert!(
            claim(&b, 1, 1, 200),
            "another trial of the same opening is its own"
        );
        assert!(
            claim(&b, 1, 0, 1_100),
            "a winner that died mid-call holds the trial no longer than its claim"
        );
        assert!(!claim(&a, 1, 0, 1_200));
        // The next opening's trials start afresh, and its first claim clears the old rows.
        assert!(claim(&a, 2, 0, 1_300));
        assert!(
            !claim(&b, 1, 2, 1_300),
            "a daemon that has not adopted the newer opening yet probes nothing"
        );
        let rows: i64 = a.query("SELECT count(*) FROM breaker_probes", &[]).unwrap()[0].get(0);
        assert_eq!(rows, 1);
        // Claims are not message state: no event, nothing counted.
        assert_eq!(a.last_seq(), 0);
    }

    #[test]
    fn two_stores_on_one_database_take_gap_free_seqs() {
        let db = TestDb::new();
        let a = open(&db);
        let b = open(&db);
        assert_eq!(a.epoch(), b.epoch(), "one log, one epoch");
        let run = |store: &PgStore| {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let ops = [Op::Accept(sms(&format!("{i}a"))), Op::Accept(sms("b"))];
                let c = store.commit(i, &ops).unwrap();
                seqs.push(c.events.iter().map(|e| e.seq).collect::<Vec<_>>());
            }
            seqs
        };
        let batches = std::thread::scope(|s| {
            let (a, run) = (&a, &run);
            let ta = s.spawn(move || run(a));
            let b = &b;
            let tb = s.spawn(move || run(b));
            let mut all = ta.join().unwrap();
            all.extend(tb.join().unwrap());
            all
        });
        let mut seqs: Vec<u64> = batches.iter().flatten().copied().collect();
        for batch in &batches {
            assert!(batch.windows(2).all(|w| w[1] == w[0] + 1), "{batch:?}");
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
        let log: Vec<u64> = a
            .events_from(0, 1000)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(log, seqs);
        assert_eq!(b.last_seq(), 100);
        assert_eq!(a.counts().get(herald_plugin_api::State::Queued), 100);
    }

    /// Two daemons claiming at once never lease one message twice.
    #[test]
    fn concurrent_claims_never_share_a_message() {
        let db = TestDb::new();
        let a = open(&db);
        let b = open(&db);
        let ops: Vec<Op> = (0..60).map(|i| Op::Accept(sms(&i.to_string()))).collect();
        a.commit(0, &ops).unwrap();
        let run = |store: &PgStore| {
            let mut ids = Vec::new();
            loop {
                let r = store
                    .commit(
                        1,
                        &[Op::Claim {
                            limit: 7,
                            lease_ms: 30_000,
                            turn: 0,
                        }],
                    )
                    .unwrap();
                match r.results.into_iter().next() {
                    Some(OpResult::Claimed(c)) if !c.is_empty() => {
                        ids.extend(c.into_iter().map(|c| c.id))
                    }
                    _ => return ids,
                }
            }
        };
        let claimed = std::thread::scope(|s| {
            let (a, run) = (&a, &run);
            let ta = s.spawn(move || run(a));
            let b = &b;
            let tb = s.spawn(move || run(b));
            let mut all = ta.join().unwrap();
            all.extend(tb.join().unwrap());
            all
        });
        let mut unique = claimed.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!((claimed.len(), unique.len()), (60, 60));
    }

    /// The tables of schema 1 on `db`, epoch `old`, with `seq` and `counts` in the meta row;
    /// a connection to plant rows with (on the caller's runtime).
    async fn version_1_database(db: &TestDb, seq: u64, counts: &Counts) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.batch_execute(schema::version_1_sql()).await.unwrap();
        c.batch_execute(
            "CREATE TABLE herald_schema (version integer NOT NULL); \
             INSERT INTO herald_schema (version) VALUES (1)",
        )
        .await
        .unwrap();
        let keyed = enc(&KeyedWith::current(RecipientRules::default()));
        c.execute(
            "INSERT INTO herald_meta (id, seq, counts, epoch, keyed_with) \
             VALUES (1, $1, $2, 'old', $3)",
            &[&big(seq), &counts_sql(counts), &keyed],
        )
        .await
        .unwrap();
        c
    }

    /// A database as the build before priority lanes left it (schema 1: `queue` without
    /// `lane`, records without it) is migrated at open, and its waiting message is claimed
    /// from the normal lane: after a critical one, before a bulk one.
    #[test]
    fn a_database_written_before_lanes_migrates_and_delivers_as_normal() {
        let db = TestDb::new();
        let old = sms("from before lanes");
        let record = Record {
            to: old.to.clone(),
            content: old.content.clone(),
            tags: vec![],
            idempotency_key: None,
            send_at: None,
            state: herald_plugin_api::State::Queued,
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
        let mut counts = Counts::default();
        counts.moved(None, herald_plugin_api::State::Queued);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = version_1_database(&db, 1, &counts).await;
            let mut v = vec![FORMAT];
            v.extend(crate::store::encode_record_v1(&record));
            c.execute(
                "INSERT INTO messages (id, state, record) VALUES ($1, $2, $3)",
                &[
                    &old.id.as_slice(),
                    &(Counts::index(record.state) as i16),
                    &v,
                ],
            )
            .await
            .unwrap();
            c.execute(
                "INSERT INTO queue (due_at, id) VALUES (5, $1)",
                &[&old.id.as_slice()],
            )
            .await
            .unwrap();
        });
        drop(rt);
        let s = open(&db);
        assert_eq!(s.epoch(), "old");
        assert_eq!(s.get(&old.id).unwrap().unwrap(), record);
        assert_eq!(s.lanes().unwrap()[Lane::Normal.index()].depth, 1);
        let bulk = NewMessage {
            lane: Lane::Bulk,
            ..sms("bulk")
        };
        let critical = NewMessage {
            lane: Lane::Critical,
            ..sms("critical")
        };
        s.commit(6, &[Op::Accept(bulk), Op::Accept(critical.clone())])
            .unwrap();
        let claimed = |limit| match s
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
        assert_eq!(claimed(1), [critical.id]);
        assert_eq!(claimed(1), [old.id]);
        let report = match s
            .commit(11, &[Op::Check { repair: false }])
            .unwrap()
            .results
            .remove(0)
        {
            OpResult::Checked(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(report.consistent(), "{report:?}");
    }

    /// The claim of the one message due at `now` (lease 1 s).
    fn claim_one(s: &impl Store, now: UnixMillis) -> crate::store::Claimed {
        claimed(
            s.commit(
                now,
                &[Op::Claim {
                    limit: 1,
                    lease_ms: 1_000,
                    turn: 0,
                }],
            )
            .unwrap(),
        )
        .remove(0)
    }

    fn claimed(c: Committed) -> Vec<crate::store::Claimed> {
        match c.results.into_iter().next() {
            Some(OpResult::Claimed(c)) => c,
            other => panic!("claim: {other:?}"),
        }
    }

    fn sent(c: &crate::store::Claimed, attempt: u32, fence: u64) -> Op {
        Op::Complete(crate::store::Completion {
            id: c.id,
            attempt,
            fence,
            state: herald_plugin_api::State::Sent,
            provider: Some("tw".into()),
            provider_message_id: None,
            detail: None,
            due_at: None,
            suppress: false,
            attempt_used: true,
            index_provider_id: false,
            breakers: Vec::new(),
            breaker_events: Vec::new(),
            max_attempts: 3,
        })
    }

    /// Two claims of one message at the same clock value — an expired lease taken again
    /// with an identical expiry — get different fences, and a completion carrying the
    /// first one changes nothing, even with the current attempt number.
    #[test]
    fn a_claim_at_the_same_clock_gets_a_new_fence() {
        let db = TestDb::new();
        let s = open(&db);
        let m = sms("fenced");
        s.commit(0, &[Op::Accept(m.clone())]).unwrap();
        let claim = |now, lease_ms| {
            claimed(
                s.commit(
                    now,
                    &[Op::Claim {
                        limit: 1,
                        lease_ms,
                        turn: 0,
                    }],
                )
                .unwrap(),
            )
        };
        let first = claim(0, 1_000).remove(0);
        assert_eq!(first.record.lease_until, Some(1_000));
        // The lease expired: returned to the queue, claimed again expiring at 1 000 too.
        let r = s.commit(1_000, &[Op::Recover]).unwrap();
        assert_eq!(r.results, vec![OpResult::Recovered(1)]);
        let second = claim(1_000, 0).remove(0);
        assert_eq!(second.record.lease_until, first.record.lease_until);
        assert_ne!(second.fence, first.fence, "a new token on every claim");
        let attempt = second.record.attempt;
        let r = s
            .commit(1_001, &[sent(&first, attempt, first.fence)])
            .unwrap();
        assert_eq!(
            r.results,
            vec![OpResult::WrongState(herald_plugin_api::State::Sending)]
        );
        assert!(r.events.is_empty(), "{:?}", r.events);
        assert_eq!(
            s.get(&m.id).unwrap().unwrap().state,
            herald_plugin_api::State::Sending
        );
        let r = s
            .commit(1_002, &[sent(&second, attempt, second.fence)])
            .unwrap();
        assert_eq!(r.results, vec![OpResult::Done]);
        assert_eq!(
            s.get(&m.id).unwrap().unwrap().state,
            herald_plugin_api::State::Sent
        );
    }

    /// What a schema-1 daemon wrote (the batches run on the in-memory engine, its rows copied
    /// into the schema-1 tables: a leased message, a waiting one, their events) is migrated
    /// in place through every version: leases get fencing tokens, records are split into
    /// body and status rows, the log becomes the first partition, and delivery goes on.
    #[test]
    fn a_version_1_database_is_migrated_in_place() {
        let db = TestDb::new();
        let mem = crate::store::memory::MemoryStore::new();
        let leased = sms("leased under version 1");
        let waiting = sms("waiting under version 1");
        mem.commit(0, &[Op::Accept(leased.clone())]).unwrap();
        let old = claim_one(&mem, 0);
        mem.commit(1, &[Op::Accept(waiting.clone())]).unwrap();
        let old_events = mem.events_from(0, 100).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = version_1_database(&db, mem.last_seq(), &mem.counts()).await;
            for id in [leased.id, waiting.id] {
                let r = mem.get(&id).unwrap().unwrap();
                let mut v = vec![FORMAT];
                v.extend(crate::store::encode_record_v1(&r));
                c.execute(
                    "INSERT INTO messages (id, state, record) VALUES ($1, $2, $3)",
                    &[&id.as_slice(), &(Counts::index(r.state) as i16), &v],
                )
                .await
                .unwrap();
            }
            c.execute(
                "INSERT INTO queue (due_at, id) VALUES ($1, $2)",
                &[&1i64, &waiting.id.as_slice()],
            )
            .await
            .unwrap();
            c.execute(
                "INSERT INTO leases (id, until) VALUES ($1, 1000)",
                &[&leased.id.as_slice()],
            )
            .await
            .unwrap();
            for e in &old_events {
                c.execute(
                    "INSERT INTO events (seq, at, event) VALUES ($1, $2, $3)",
                    &[&big(e.seq), &big(e.at), &enc(e)],
                )
                .await
                .unwrap();
            }
        });
        drop(rt);

        let s = open(&db);
        let version: i32 = s.query("SELECT version FROM herald_schema", &[]).unwrap()[0].get(0);
        assert_eq!(version, schema::VERSION);
        assert_eq!(s.epoch(), "old");
        let tokens: i64 = s
            .query("SELECT count(*) FROM leases WHERE token IS NOT NULL", &[])
            .unwrap()[0]
            .get(0);
        assert_eq!(tokens, 1, "the live lease got a token");
        for id in [leased.id, waiting.id] {
            assert_eq!(
                s.get(&id).unwrap(),
                mem.get(&id).unwrap(),
                "split and joined"
            );
        }
        assert_eq!(s.events_from(0, 100).unwrap(), old_events);
        assert_eq!(s.first_seq().unwrap(), 1);
        assert_eq!(s.last_seq(), mem.last_seq());
        let new = claim_one(&s, 2);
        assert_eq!(new.id, waiting.id);
        s.commit(3, &[sent(&new, new.record.attempt, new.fence)])
            .unwrap();
        assert_eq!(
            s.get(&waiting.id).unwrap().unwrap().state,
            herald_plugin_api::State::Sent
        );
        // The lease claimed under version 1 is recovered at its expiry and delivered.
        assert_eq!(
            s.commit(1_000, &[Op::Recover]).unwrap().results,
            vec![OpResult::Recovered(1)]
        );
        let again = claim_one(&s, 1_001);
        assert_eq!(again.id, old.id);
        s.commit(1_002, &[sent(&again, again.record.attempt, again.fence)])
            .unwrap();
        // The old log and what followed it read as one; the new events went to a new
        // partition after the old one.
        let all = s.events_from(0, 100).unwrap();
        assert_eq!(&all[..old_events.len()], &old_events[..]);
        assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1), "{all:?}");
        assert_eq!(all.last().unwrap().seq, s.last_seq());
        assert_eq!(
            partitions(&s),
            [
                "events_from_0",
                &format!("events_from_{}", old_events.len() + 1)
            ]
        );
        let report = s.commit(1_003, &[Op::Check { repair: false }]).unwrap();
        match &report.results[0] {
            OpResult::Checked(r) => assert!(r.consistent(), "{r:?}"),
            other => panic!("{other:?}"),
        }
    }

    /// The event log's partitions, oldest first.
    fn partitions(s: &PgStore) -> Vec<String> {
        s.query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'events'::regclass \
             ORDER BY substring(c.relname from 'events_from_(\\d+)')::bigint",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    /// A transition rewrites the message's status row only: the body row written at accept
    /// is the same row version after the message was claimed, sent and delivered.
    #[test]
    fn message_bodies_are_written_once() {
        let db = TestDb::new();
        let s = open(&db);
        let m = sms("written once");
        s.commit(0, &[Op::Accept(m.clone())]).unwrap();
        let versions = |s: &PgStore| -> (String, String) {
            let r = &s
                .query(
                    "SELECT m.xmin::text, s.xmin::text FROM messages m \
                     JOIN message_status s ON s.id = m.id WHERE m.id = $1",
                    &[&m.id.as_slice()],
                )
                .unwrap()[0];
            (r.get(0), r.get(1))
        };
        let (body, status) = versions(&s);
        let c = claim_one(&s, 1);
        s.commit(2, &[sent(&c, c.record.attempt, c.fence)]).unwrap();
        let (body_after, status_after) = versions(&s);
        assert_eq!(body_after, body, "the body row was rewritten");
        assert_ne!(status_after, status);
        let r = s.get(&m.id).unwrap().unwrap();
        assert_eq!(r.state, herald_plugin_api::State::Sent);
        assert_eq!(r.content, m.content);
        assert_eq!(r.attempt, 1);
    }

    /// What a batch read ahead for its completions does not outlive the batch's own
    /// writes: a completion batched after the recovery of its lease finds the message
    /// re-queued, not the `sending` record read before the recovery ran.
    #[test]
    fn a_completion_batched_after_the_recovery_of_its_lease_is_stale() {
        let db = TestDb::new();
        let s = open(&db);
        let m = sms("recovered before its completion");
        s.commit(0, &[Op::Accept(m.clone())]).unwrap();
        let c = claim_one(&s, 0);
        let r = s
            .commit(1_000, &[Op::Recover, sent(&c, c.record.attempt, c.fence)])
            .unwrap();
        assert_eq!(r.results[0], OpResult::Recovered(1));
        assert_eq!(
            r.results[1],
            OpResult::WrongState(herald_plugin_api::State::Queued)
        );
        assert_eq!(
            s.get(&m.id).unwrap().unwrap().state,
            herald_plugin_api::State::Queued
        );
    }

    /// A batch that mixes gathered inserts with updates and deletes of the same tables
    /// (a message accepted, cancelled, and more accepted after it) leaves each message as
    /// the state machine left it: the cancelled one out of the queue, the others queued
    /// and claimable, the indexes consistent.
    #[test]
    fn gathered_inserts_keep_their_order_with_updates_and_deletes() {
        let db = TestDb::new();
        let s = open(&db);
        let (a, b, c) = (sms("a"), sms("b"), sms("c"));
        let r = s
            .commit(
                0,
                &[
                    Op::Accept(a.clone()),
                    Op::Accept(b.clone()),
                    Op::Cancel(a.id),
                    Op::Accept(c.clone()),
                ],
            )
            .unwrap();
        assert_eq!(r.results[2], OpResult::Done, "{r:?}");
        assert_eq!(
            s.get(&a.id).unwrap().unwrap().state,
            herald_plugin_api::State::Cancelled
        );
        let mut got: Vec<MsgId> = claimed(
            s.commit(
                1,
                &[Op::Claim {
                    limit: 10,
                    lease_ms: 1_000,
                    turn: 0,
                }],
            )
            .unwrap(),
        )
        .iter()
        .map(|c| c.id)
        .collect();
        got.sort();
        let mut want = vec![b.id, c.id];
        want.sort();
        assert_eq!(got, want);
        let report = s.commit(2, &[Op::Check { repair: false }]).unwrap();
        match &report.results[0] {
            OpResult::Checked(r) => assert!(r.consistent(), "{r:?}"),
            other => panic!("{other:?}"),
        }
    }

    /// Opens a store on `db` whose event log partitions hold `span` events each.
    fn open_with_span(db: &TestDb, span: u64) -> PgStore {
        let mut s = open(db);
        s.spans = event_log::Spans {
            min: span,
            max: span,
        };
        s
    }

    /// One note event per commit, at `at`.
    fn note(s: &PgStore, at: UnixMillis) {
        s.commit(
            at,
            &[Op::Note {
                kind: herald_plugin_api::EventKind::ConfigReloaded,
                detail: format!("at {at}"),
            }],
        )
        .unwrap();
    }

    fn prune(s: &PgStore, now: UnixMillis, before: UnixMillis) -> u64 {
        match s
            .commit(
                now,
                &[Op::Prune {
                    before,
                    limit: 1_000,
                }],
            )
            .unwrap()
            .results[..]
        {
            [OpResult::Pruned { events, .. }] => events,
            ref other => panic!("{other:?}"),
        }
    }

    fn seqs(s: &PgStore) -> Vec<u64> {
        s.events_from(0, 1_000)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    }

    /// The log rolls over into a new partition when one is full; retention drops the
    /// partitions whose every event is older than the cut-off (their tables go), oldest
    /// first, and what remains reads as one gap-free range — on another daemon too.
    #[test]
    fn the_event_log_is_partitioned_and_retention_drops_whole_partitions() {
        let db = TestDb::new();
        let s = open_with_span(&db, 5);
        for at in 1..=12 {
            note(&s, at * 100);
        }
        // Seqs 1..=12 in [1, 6), [6, 11), [11, 16).
        assert_eq!(
            partitions(&s),
            ["events_from_1", "events_from_6", "events_from_11"]
        );
        assert_eq!(seqs(&s), (1..=12).collect::<Vec<_>>());
        let other = open(&db);
        assert_eq!(seqs(&other), (1..=12).collect::<Vec<_>>());

        // Events 1..=7 are older than the cut-off: the first partition goes whole; the
        // second holds younger ones and stays whole (dropped by partition, not by row).
        assert_eq!(prune(&s, 10_000, 750), 5);
        assert_eq!(partitions(&s), ["events_from_6", "events_from_11"]);
        assert_eq!(s.first_seq().unwrap(), 6);
        assert_eq!(seqs(&other), (6..=12).collect::<Vec<_>>());
        // The current partition is never dropped, but when the log holds nothing else its
        // old events go by row: retention is exact for a log written slowly.
        assert_eq!(prune(&s, 10_001, 1_150), 5 + 1);
        assert_eq!(partitions(&s), ["events_from_11"]);
        assert_eq!(seqs(&s), [12]);
        for at in 10_002..10_006 {
            note(&s, at);
        }
        assert_eq!(seqs(&other), [12, 13, 14, 15, 16]);
        assert_eq!(
            partitions(&s),
            ["events_from_11", "events_from_16"],
            "seq 16 is past the current partition"
        );
    }

    /// A partition that lived far longer than planned (the rate fell after it was sized)
    /// loses its events older than the slack past the cut-off row by row; the younger ones,
    /// and the partition, stay.
    #[test]
    fn events_older_than_the_slack_go_even_inside_a_partition() {
        let db = TestDb::new();
        let s = open_with_span(&db, 5);
        let day = 86_400_000;
        note(&s, 1);
        note(&s, 2);
        note(&s, 4 * day);
        note(&s, 4 * day + 1);
        note(&s, 4 * day + 2);
        note(&s, 5 * day);
        // [1, 6) spans four days; cut-off at day 3: seqs 1 and 2 are more than the slack
        // (two days) older, seqs 3..=5 are younger than it and keep their partition.
        assert_eq!(prune(&s, 5 * day, 3 * day), 2);
        assert_eq!(seqs(&s), [3, 4, 5, 6]);
        assert_eq!(partitions(&s), ["events_from_1", "events_from_6"]);
    }

    /// A partition whose drop cannot take the lock on the log now (a long reader) stays
    /// marked and is dropped by a later pruning; the batch that pruned is not failed, and
    /// the log keeps no hole in the meantime.
    #[test]
    fn a_partition_drop_that_waits_for_a_reader_is_done_later() {
        let db = TestDb::new();
        let s = open_with_span(&db, 2);
        for at in 1..=6 {
            note(&s, at);
        }
        assert_eq!(
            partitions(&s),
            ["events_from_1", "events_from_3", "events_from_5"]
        );
        let (rt, reader) = session(&db, Duration::from_secs(30));
        rt.block_on(reader.batch_execute("BEGIN; LOCK TABLE events IN ACCESS SHARE MODE"))
            .unwrap();
        assert_eq!(
            prune(&s, 100, 5),
            4,
            "both closed partitions are past retention"
        );
        assert_eq!(
            partitions(&s).len(),
            3,
            "the reader holds the log: nothing dropped yet"
        );
        rt.block_on(reader.batch_execute("COMMIT")).unwrap();
        assert_eq!(s.first_seq().unwrap(), 1);
        assert_eq!(prune(&s, 101, 5), 0, "counted once, when marked");
        assert_eq!(partitions(&s), ["events_from_5"]);
        assert_eq!(seqs(&s), [5, 6]);
    }
    /// A raw session of the test database with this engine's session settings under
    /// `storage_timeout`, on a runtime of its own.
    fn session(
        db: &TestDb,
        storage_timeout: Duration,
    ) -> (tokio::runtime::Runtime, tokio_postgres::Client) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut config = tokio_postgres::Config::from_str(&db.url).unwrap();
        config.options(session_options(storage_timeout));
        let client = rt.block_on(async {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        });
        (rt, client)
    }

    /// An idle daemon's claims and recoveries do not take the counter row: they answer
    /// while another session holds it (a daemon stalled in a commit).
    #[test]
    fn idle_claims_do_not_wait_for_the_counter_row() {
        let db = TestDb::new();
        // A lock waited for fails after 1.5 s here: a claim that queued for the row fails.
        let s = PgStore::open_bounded(
            &db.url,
            2,
            RecipientRules::default(),
            Duration::from_secs(2),
        )
        .unwrap();
        let (rt, holder) = session(&db, Duration::from_secs(600));
        rt.block_on(
            holder.batch_execute("BEGIN; SELECT seq FROM herald_meta WHERE id = 1 FOR UPDATE"),
        )
        .unwrap();
        let r = s
            .commit(
                5,
                &[
                    Op::Claim {
                        limit: 10,
                        lease_ms: 1_000,
                        turn: 0,
                    },
                    Op::Recover,
                ],
            )
            .expect("an idle claim answers while the counter row is locked");
        assert_eq!(
            r.results,
            vec![OpResult::Claimed(vec![]), OpResult::Recovered(0)]
        );
        assert!(r.events.is_empty());
        // With work to do, the batch does wait for the row.
        rt.block_on(holder.batch_execute("COMMIT")).unwrap();
        let m = sms("due");
        s.commit(6, &[Op::Accept(m.clone())]).unwrap();
        let c = claimed(
            s.commit(
                7,
                &[Op::Claim {
                    limit: 10,
                    lease_ms: 1_000,
                    turn: 0,
                }],
            )
            .unwrap(),
        );
        assert_eq!(c.len(), 1);
    }

    /// A session left idle inside a transaction (its daemon stalled) is ended by the
    /// server within the bound, which frees the counter row for the others; the stalled
    /// session's next statement fails as `Unavailable` (retryable, not a dead store).
    #[test]
    fn a_session_stalled_in_a_transaction_is_ended_and_frees_the_counter_row() {
        let db = TestDb::new();
        let s = PgStore::open_bounded(
            &db.url,
            2,
            RecipientRules::default(),
            Duration::from_secs(4),
        )
        .unwrap();
        let (rt, stalled) = session(&db, Duration::from_secs(2));
        rt.block_on(
            stalled.batch_execute("BEGIN; SELECT seq FROM herald_meta WHERE id = 1 FOR UPDATE"),
        )
        .unwrap();
        // Waits at most the 1 s idle bound of the stalled session (its lock bound is 3 s).
        let r = s.commit(1, &[Op::Accept(sms("past a stalled daemon"))]);
        assert!(r.is_ok(), "{r:?}");
        let e = rt
            .block_on(stalled.batch_execute("SELECT 1"))
            .expect_err("the stalled session was ended");
        assert!(
            matches!(db_err(e), StoreError::Unavailable(_)),
            "a lost session is retryable"
        );
    }

    fn db_err(e: tokio_postgres::Error) -> StoreError {
        db(e)
    }

    /// The server's own errors, raised by it: a condition that clears by itself is
    /// retryable (`Unavailable`); a statement refused on its merits is `Internal`; neither
    /// is an `Io` error (which would stop the daemon writing until a restart).
    #[test]
    fn server_errors_are_retryable_when_they_clear_by_themselves() {
        let db = TestDb::new();
        let (rt, c) = session(&db, Duration::from_secs(600));
        let raise = |code: &str| {
            let sql =
                format!("DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{code}'; END $$");
            db_err(rt.block_on(c.batch_execute(&sql)).expect_err("raised"))
        };
        for code in [
            "53100", "53200", "58030", "57000", "25006", "42501", "40001", "55P03",
        ] {
            let e = raise(code);
            assert!(matches!(e, StoreError::Unavailable(_)), "{code}: {e:?}");
            assert!(
                e.to_string().contains(&format!("ERROR {code}: raised")),
                "{e}"
            );
        }
        for code in ["23505", "22P02", "42P01", "XX000"] {
            let e = raise(code);
            assert!(matches!(e, StoreError::Internal(_)), "{code}: {e:?}");
        }
    }

    /// A batch the server refuses for want of disk (here a trigger raises `disk_full` on
    /// every new message) fails as a whole and retryably, leaves nothing of itself behind,
    /// and the next batch, once the server has room again, goes through.
    #[test]
    fn a_server_out_of_disk_fails_the_batch_retryably_and_the_next_one_succeeds() {
        let db = TestDb::new();
        let s = open(&db);
        let (rt, admin) = session(&db, Duration::from_secs(600));
        rt.block_on(admin.batch_execute(
            "CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' \
             USING ERRCODE = 'disk_full'; END $$; \
             CREATE TRIGGER full_disk BEFORE INSERT ON messages \
             FOR EACH ROW EXECUTE FUNCTION full_disk();",
        ))
        .unwrap();
        let refused = sms("refused");
        let e = s
            .commit(1, &[Op::Accept(refused.clone())])
            .expect_err("the server is out of disk");
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        rt.block_on(admin.batch_execute("DROP TRIGGER full_disk ON messages"))
            .unwrap();
        let accepted = sms("accepted");
        let r = s.commit(2, &[Op::Accept(accepted.clone())]).unwrap();
        assert!(matches!(
            r.results[0],
            OpResult::Accepted {
                duplicate: false,
                ..
            }
        ));
        assert!(
            s.get(&refused.id).unwrap().is_none(),
            "nothing of the failed batch"
        );
        assert!(s.get(&accepted.id).unwrap().is_some());
        assert_eq!(s.counts().get(herald_plugin_api::State::Queued), 1);
        assert_eq!(
            s.events_from(1, 10).unwrap().len(),
            1,
            "one queued event, seq 1"
        );
    }

    /// Backends killed under the store (`pg_terminate_backend`, a server restart): the
    /// batch that meets a dead connection fails as `Unavailable` at worst, later ones
    /// succeed on fresh connections, and nothing committed is lost.
    #[test]
    fn killed_connections_are_replaced() {
        let db = TestDb::new();
        let s = open(&db);
        let (rt, admin) = session(&db, Duration::from_secs(600));
        let mut accepted = Vec::new();
        for round in 0..5 {
            for i in 0..3 {
                let m = sms(&format!("{round}-{i}"));
                match s.commit(round * 10 + i, &[Op::Accept(m.clone())]) {
                    Ok(_) => accepted.push(m.id),
                    Err(StoreError::Unavailable(_)) => {}
                    Err(e) => panic!("round {round}: {e}"),
                }
                // Reads recover too.
                let _ = s.counts();
            }
            let killed: i64 = rt
                .block_on(admin.query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&db.name],
                ))
                .unwrap()
                .get(0);
            assert!(killed >= 1, "round {round}: no backend to kill");
        }
        // Once the dead connections are gone, every batch succeeds.
        let m = sms("after");
        let mut tries = 0;
        loop {
            tries += 1;
            match s.commit(100, &[Op::Accept(m.clone())]) {
                Ok(_) => break,
                Err(StoreError::Unavailable(e)) if tries < 5 => eprintln!("retrying: {e}"),
                Err(e) => panic!("{e}"),
            }
        }
        accepted.push(m.id);
        for id in &accepted {
            assert!(s.get(id).unwrap().is_some());
        }
        assert!(accepted.len() >= 6, "{} accepted", accepted.len());
    }

    /// A daemon that starts while another migrates (holding the migration lock longer than
    /// its own `lock_timeout`) waits for the migration, and then opens.
    #[test]
    fn a_daemon_starting_during_another_migration_waits_for_it() {
        let db = TestDb::new();
        drop(open(&db));
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (migrating, conn) = rt
            .block_on(tokio_postgres::connect(&db.url, tokio_postgres::NoTls))
            .unwrap();
        rt.spawn(conn);
        rt.block_on(migrating.batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({})",
            schema::MIGRATION_LOCK
        )))
        .unwrap();
        let release = std::thread::spawn(move || {
            rt.block_on(async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                migrating.batch_execute("COMMIT").await
            })
            .unwrap();
        });
        let started = Instant::now();
        // lock_timeout: 750 ms.
        let s = PgStore::open_bounded(
            &db.url,
            2,
            RecipientRules::default(),
            Duration::from_secs(1),
        );
        assert!(s.is_ok(), "{:?}", s.err());
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "it did not wait"
        );
        release.join().unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let db = TestDb::new();
        let s = open(&db);
        s.execute_now("UPDATE herald_schema SET version = version + 1", &[])
            .unwrap();
        drop(s);
        let err = PgStore::open(&db.url, 2, RecipientRules::default()).unwrap_err();
        assert!(
            err.to_string().contains("newer than this heraldd knows"),
            "{err}"
        );
    }

    #[test]
    fn the_url_is_logged_without_its_password() {
        let r = redact("postgresql://herald:s3cret@db.example:6432/herald");
        assert_eq!(r, "postgresql://herald:***@db.example:6432/herald");
        assert!(!redact("host=db user=herald password=s3cret dbname=q").contains("s3cret"));
        assert!(!redact("postgres://x:s3cret@[bad").contains("s3cret"));
    }
}
