//! The PostgreSQL engine's schema: versioned migrations, applied at open under a
//! transaction-scoped advisory lock (two daemons starting at once migrate once), and a
//! refusal to run against a schema newer than this build knows.
//!
//! Owns: the tables and their migrations. Must not: hold queries of the state machine
//! (those live in `super`).

use deadpool_postgres::Object;

use super::{Bridge, db, dec_record, message_rows};
use crate::store::StoreError;

/// The schema version this build writes and reads.
pub const VERSION: i32 = 6;

/// The advisory lock key migrations run under ("herald" in ASCII).
pub(super) const MIGRATION_LOCK: i64 = 0x6865_7261_6c64;

/// Migration `n` (1-based) brings the schema from version `n - 1` to `n`.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    -- The single counter row: every commit locks it first, so batches are serialised and
    -- seq order is commit order (a reader never sees seq n+1 before n commits).
    CREATE TABLE herald_meta (
        id smallint PRIMARY KEY CHECK (id = 1),
        seq bigint NOT NULL,
        counts bigint[] NOT NULL,
        epoch text NOT NULL,
        -- How recipient-keyed rows are keyed (postcard `KeyedWith`); NULL: schema 1.
        keyed_with bytea
    );
    -- Every message: its record (postcard), its state for queries.
    CREATE TABLE messages (
        id bytea PRIMARY KEY,
        state smallint NOT NULL,
        record bytea NOT NULL
    );
    -- The hot queue: one row per waiting message (queued or deferred), removed when it
    -- is claimed or cancelled; only ready rows live here.
    CREATE TABLE queue (
        due_at bigint NOT NULL,
        id bytea NOT NULL,
        PRIMARY KEY (due_at, id)
    );
    -- Leases of messages being sent; `until` is also the claim's fencing token.
    CREATE TABLE leases (
        id bytea PRIMARY KEY,
        until bigint NOT NULL
    );
    CREATE INDEX leases_until ON leases (until);
    -- Idempotency keys outlive queue rows (until the message is pruned).
    CREATE TABLE idempotency (
        key text PRIMARY KEY,
        id bytea NOT NULL,
        expires_at bigint NOT NULL
    );
    CREATE TABLE provider_ids (
        provider text NOT NULL,
        pid text NOT NULL,
        id bytea NOT NULL,
        PRIMARY KEY (provider, pid)
    );
    CREATE TABLE dead (id bytea PRIMARY KEY);
    CREATE TABLE finished (
        at bigint NOT NULL,
        id bytea NOT NULL,
        PRIMARY KEY (at, id)
    );
    CREATE TABLE suppression (
        channel smallint NOT NULL,
        key text NOT NULL,
        entry bytea NOT NULL,
        PRIMARY KEY (channel, key)
    );
    CREATE TABLE latest (
        channel smallint NOT NULL,
        key text NOT NULL,
        id bytea NOT NULL,
        PRIMARY KEY (channel, key)
    );
    -- Webhook updates held until their message can take them.
    CREATE TABLE held (
        key bytea PRIMARY KEY,
        oldest bigint NOT NULL,
        updates bytea NOT NULL
    );
    CREATE INDEX held_oldest ON held (oldest);
    CREATE TABLE seen (
        provider text NOT NULL,
        key text NOT NULL,
        at bigint NOT NULL,
        PRIMARY KEY (provider, key)
    );
    CREATE INDEX seen_at ON seen (at, provider, key);
    -- Shared breaker state per provider (only transitions are written).
    CREATE TABLE breakers (
        provider text PRIMARY KEY,
        record bytea NOT NULL
    );
    -- The append-only event log.
    CREATE TABLE events (
        seq bigint PRIMARY KEY,
        at bigint NOT NULL,
        event bytea NOT NULL
    );
    "#,
    // 2: a fencing token per claim, independent of clocks. Every claim takes the next value
    // of `lease_tokens` into its lease row; a completion applies only where the token it
    // carries is still the stored one. Leases that exist when migrating get fresh tokens
    // (their claims' completions, which carry the old expiry-based fence, are then stale:
    // those messages are recovered when the lease expires, as after a crash).
    r#"
    CREATE SEQUENCE lease_tokens AS bigint MINVALUE 1;
    ALTER TABLE leases ADD COLUMN token bigint NOT NULL DEFAULT nextval('lease_tokens');
    "#,
    // 3: priority lanes. Every queue row before it was `normal` (1); claims read one lane
    // at a time in due order.
    r#"
    ALTER TABLE queue ADD COLUMN lane smallint NOT NULL DEFAULT 1;
    CREATE INDEX queue_lane_due ON queue (lane, due_at, id);
    "#,
    // 4: one daemon makes each trial call of a half-open breaker. A row is a claim on
    // trial `trial` of the breaker's `generation` (the generation every daemon adopted),
    // held until `until`; rows of older generations are deleted by the next claim.
    r#"
    CREATE TABLE breaker_probes (
        provider text NOT NULL,
        generation bigint NOT NULL,
        trial integer NOT NULL,
        until bigint NOT NULL,
        PRIMARY KEY (provider, generation, trial)
    );
    "#,
    // 5: write-once messages. The body (what was accepted) stays in `messages`, written
    // once; the status a transition changes moves to the narrow `message_status` (see
    // `message_rows`). The old rows are split by [`split_messages`] after this SQL.
    r#"
    ALTER TABLE messages RENAME TO messages_v4;
    ALTER INDEX messages_pkey RENAME TO messages_v4_pkey;
    CREATE TABLE messages (
        id bytea PRIMARY KEY,
        body bytea NOT NULL
    );
    CREATE TABLE message_status (
        id bytea PRIMARY KEY,
        state smallint NOT NULL,
        attempt bigint NOT NULL,
        updated_at bigint NOT NULL,
        due_at bigint NOT NULL,
        expires_at bigint NOT NULL,
        lease_until bigint,
        provider text,
        provider_message_id text,
        last_error text
    );
    "#,
    // 6: the event log partitioned by seq range (see `event_log`). The old table becomes
    // the first partition, `[0, seq]`, by [`partition_events`] after this SQL.
    r#"
    ALTER TABLE events RENAME TO events_v5;
    ALTER INDEX events_pkey RENAME TO events_v5_pkey;
    CREATE TABLE events (
        seq bigint NOT NULL,
        at bigint NOT NULL,
        event bytea NOT NULL,
        PRIMARY KEY (seq)
    ) PARTITION BY RANGE (seq);
    -- Closed partitions [lo, hi): when each was created, the newest `at` written into it,
    -- and whether retention is dropping it.
    CREATE TABLE event_parts (
        lo bigint PRIMARY KEY,
        hi bigint NOT NULL,
        opened bigint NOT NULL,
        newest bigint NOT NULL,
        dropping boolean NOT NULL DEFAULT false
    );
    -- The partition being written (lo = hi: none yet).
    ALTER TABLE herald_meta
        ADD COLUMN part_lo bigint NOT NULL DEFAULT 1,
        ADD COLUMN part_hi bigint NOT NULL DEFAULT 1,
        ADD COLUMN part_opened bigint NOT NULL DEFAULT 0,
        ADD COLUMN part_newest bigint NOT NULL DEFAULT 0;
    "#,
];

/// Migration 6's second half: the schema-5 log, when it holds events, becomes the current
/// partition `[0, seq + 1)` (attaching checks every row against the bound once); an empty
/// one goes, and the first event creates the first partition.
async fn partition_events(client: &Object) -> Result<(), StoreError> {
    let row = client
        .query_one(
            "SELECT (SELECT seq FROM herald_meta WHERE id = 1), min(at), max(at) FROM events_v5",
            &[],
        )
        .await
        .map_err(db)?;
    let seq: i64 = row.get(0);
    let next = seq + 1;
    let sql = match (row.get::<_, Option<i64>>(1), row.get::<_, Option<i64>>(2)) {
        (Some(oldest), Some(newest)) => format!(
            "ALTER TABLE events_v5 RENAME TO events_from_0; \
             ALTER TABLE events ATTACH PARTITION events_from_0 FOR VALUES FROM (0) TO ({next}); \
             UPDATE herald_meta SET part_lo = 0, part_hi = {next}, part_opened = {oldest}, \
               part_newest = {newest} WHERE id = 1"
        ),
        _ => format!(
            "DROP TABLE events_v5; \
             UPDATE herald_meta SET part_lo = {next}, part_hi = {next} WHERE id = 1"
        ),
    };
    client.batch_execute(&sql).await.map_err(db)
}

/// Rows [`split_messages`] moves per statement.
const SPLIT_CHUNK: i64 = 1_000;

/// Migration 5's second half: every `messages_v4` record (any format a schema-4 database
/// holds, records from before lanes included) becomes a body row and a status row, in id
/// order and chunks; then the old table goes.
async fn split_messages(client: &Object) -> Result<(), StoreError> {
    let mut after: Vec<u8> = Vec::new();
    loop {
        let rows = client
            .query(
                "SELECT id, record FROM messages_v4 WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &SPLIT_CHUNK],
            )
            .await
            .map_err(db)?;
        let Some(last) = rows.last() else { break };
        after = last.get::<_, Vec<u8>>(0);
        let mut ids = Vec::with_capacity(rows.len());
        let mut bodies = Vec::with_capacity(rows.len());
        let mut status = Vec::with_capacity(rows.len());
        for row in &rows {
            let record = dec_record(row.get::<_, &[u8]>(1))?;
            ids.push(row.get::<_, Vec<u8>>(0));
            bodies.push(message_rows::body(&record));
            status.push(message_rows::status(&record));
        }
        client
            .execute(
                "INSERT INTO messages (id, body) SELECT * FROM UNNEST($1::bytea[], $2::bytea[])",
                &[&ids, &bodies],
            )
            .await
            .map_err(db)?;
        let col = |f: fn(&message_rows::Status) -> i64| status.iter().map(f).collect::<Vec<_>>();
        let text = |f: fn(&message_rows::Status) -> Option<String>| {
            status.iter().map(f).collect::<Vec<_>>()
        };
        let states: Vec<i16> = status.iter().map(|s| s.state).collect();
        let leases: Vec<Option<i64>> = status.iter().map(|s| s.lease_until).collect();
        client
            .execute(
                &format!(
                    "INSERT INTO message_status (id, {}) SELECT * FROM UNNEST($1::bytea[], \
                     $2::int2[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], \
                     $8::text[], $9::text[], $10::text[])",
                    message_rows::STATUS_COLUMNS
                ),
                &[
                    &ids,
                    &states,
                    &col(|s| s.attempt),
                    &col(|s| s.updated_at),
                    &col(|s| s.due_at),
                    &col(|s| s.expires_at),
                    &leases,
                    &text(|s| s.provider.clone()),
                    &text(|s| s.provider_message_id.clone()),
                    &text(|s| s.last_error.clone()),
                ],
            )
            .await
            .map_err(db)?;
    }
    client
        .batch_execute("DROP TABLE messages_v4")
        .await
        .map_err(db)
}

/// The tables of schema version 1 only (the layout of a database written before priority
/// lanes), for tests that open such a database with this build.
#[cfg(test)]
pub(super) fn version_1_sql() -> &'static str {
    MIGRATIONS[0]
}

/// Brings the database to [`VERSION`] (creating the meta row with `epoch` and `keyed_with`
/// on a new database), or refuses a newer one.
pub(super) fn migrate(
    b: &Bridge,
    client: &Object,
    epoch: &str,
    keyed_with: &[u8],
) -> Result<(), StoreError> {
    b.block_on(async {
        // Another daemon's migration (a large schema-5 split takes a while) is waited
        // for, not timed out on: that session is bounded by its own idle timeout.
        client
            .batch_execute("BEGIN; SET LOCAL lock_timeout = 0")
            .await?;
        client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS herald_schema (version integer NOT NULL)")
            .await?;
        let row = client
            .query_opt("SELECT version FROM herald_schema", &[])
            .await?;
        Ok::<_, tokio_postgres::Error>(row.map(|r| r.get::<_, i32>(0)))
    })
    .map_err(|e| {
        let _ = b.block_on(client.batch_execute("ROLLBACK"));
        db(e)
    })
    .and_then(|found| {
        let found = found.unwrap_or(0);
        if found > VERSION {
            let _ = b.block_on(client.batch_execute("ROLLBACK"));
            return Err(StoreError::Internal(format!(
                "the database has Herald schema version {found}, newer than this heraldd knows \
                 ({VERSION}): upgrade heraldd, or point it at another database"
            )));
        }
        b.block_on(async {
            for (i, sql) in MIGRATIONS.iter().enumerate() {
                let v = i as i32 + 1;
                if v <= found {
                    continue;
                }
                client.batch_execute(sql).await.map_err(db)?;
                if v == 1 {
                    client
                        .execute(
                            "INSERT INTO herald_meta (id, seq, counts, epoch, keyed_with) \
                             VALUES (1, 0, $1, $2, $3)",
                            &[&vec![0i64; 12], &epoch, &keyed_with],
                        )
                        .await
                        .map_err(db)?;
                }
                match v {
                    5 => split_messages(client).await?,
                    6 => partition_events(client).await?,
                    _ => {}
                }
            }
            if found == 0 {
                client
                    .execute(
                        "INSERT INTO herald_schema (version) VALUES ($1)",
                        &[&VERSION],
                    )
                    .await
                    .map_err(db)?;
            } else if found < VERSION {
                client
                    .execute("UPDATE herald_schema SET version = $1", &[&VERSION])
                    .await
                    .map_err(db)?;
            }
            client.batch_execute("COMMIT").await.map_err(db)
        })
        .inspect_err(|_| {
            let _ = b.block_on(client.batch_execute("ROLLBACK"));
        })
    })
}
