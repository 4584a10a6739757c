//! Reads a batch will make, taken a whole step kind at a time instead of one round trip
//! per message while the counter row is held: the idempotency keys and suppression entries
//! its accepts look up; the records, lease tokens and held updates of its completions (a
//! few statements, pipelined, before the state machine runs); the records of the messages
//! a claim takes (joined into the queue read) and fresh fencing tokens for them.
//!
//! Why it is safe: every write to these tables happens in a batch that holds the counter
//! row, and this batch holds it — what was read after taking it stays true until this
//! batch writes. This batch's own writes drop the cached entry (`forget_*`), so the next
//! read goes to the database, which has seen the write by then.
//!
//! Owns: the cache and the statements that fill it. Must not: decide anything the state
//! machine decides, or answer for a row it did not read.

use std::collections::HashMap;
use std::sync::LazyLock;

use herald_plugin_api::UnixMillis;
use tokio_postgres::Row;

use super::lifecycle::{HeldFor, HeldUpdates};
use super::{MsgId, Op, Record, StoreError, Suppression};
use super::{PgTxn, big, channel_sql, dec, held_key, id_of, lane_sql, message_rows, ms};
use crate::store::Lane;
use crate::store::recipients;

/// Completions' records with their lease tokens, by id (`$1`: an array).
static RECORDS_WITH_TOKENS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT s.id, l.token, {} FROM message_status s JOIN messages m ON m.id = s.id \
         LEFT JOIN leases l ON l.id = s.id WHERE s.id = ANY($1)",
        message_rows::RECORD_COLUMNS
    )
});

/// Up to `$2` due entries of lane `$3` at `$1`, locked, with their records.
static DUE_WITH_RECORDS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT q.due_at, q.id, {} FROM (\
           SELECT due_at, id FROM queue WHERE lane = $3 AND due_at <= $1 \
           ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) q \
         LEFT JOIN message_status s ON s.id = q.id LEFT JOIN messages m ON m.id = q.id \
         ORDER BY q.due_at, q.id",
        message_rows::RECORD_COLUMNS
    )
});

/// What a batch read ahead. `None` entries are rows known to be absent.
#[derive(Default)]
pub(super) struct Cache {
    records: HashMap<MsgId, Option<Record>>,
    tokens: HashMap<MsgId, Option<i64>>,
    held: HashMap<Vec<u8>, HeldUpdates>,
    idempotency: HashMap<String, Option<(MsgId, UnixMillis)>>,
    suppression: HashMap<(i16, String), Option<Suppression>>,
    /// Values of `lease_tokens` taken for this batch's claims, not yet used.
    fresh_tokens: Vec<i64>,
}

impl Cache {
    pub(super) fn record(&self, id: &MsgId) -> Option<&Option<Record>> {
        self.records.get(id)
    }
    pub(super) fn forget_record(&mut self, id: &MsgId) {
        self.records.remove(id);
    }
    pub(super) fn token(&self, id: &MsgId) -> Option<Option<i64>> {
        self.tokens.get(id).copied()
    }
    pub(super) fn forget_token(&mut self, id: &MsgId) {
        self.tokens.remove(id);
    }
    pub(super) fn held(&self, key: &[u8]) -> Option<&HeldUpdates> {
        self.held.get(key)
    }
    pub(super) fn forget_held(&mut self, key: &[u8]) {
        self.held.remove(key);
    }
    pub(super) fn idempotency(&self, key: &str) -> Option<Option<(MsgId, UnixMillis)>> {
        self.idempotency.get(key).copied()
    }
    pub(super) fn forget_idempotency(&mut self, key: &str) {
        self.idempotency.remove(key);
    }
    pub(super) fn suppression(&self, channel: i16, key: &str) -> Option<&Option<Suppression>> {
        self.suppression.get(&(channel, key.to_string()))
    }
    pub(super) fn forget_suppression(&mut self, channel: i16, key: &str) {
        self.suppression.remove(&(channel, key.to_string()));
    }
    /// A fencing token taken for this batch's claims, if one is left.
    pub(super) fn fresh_token(&mut self) -> Option<i64> {
        self.fresh_tokens.pop()
    }
}

/// A whole record (or none) from a row whose columns from `at` on are
/// [`message_rows::RECORD_COLUMNS`], as a left join leaves them.
fn record_or_none(row: &Row, at: usize) -> Result<Option<Record>, StoreError> {
    if row.get::<_, Option<&[u8]>>(at).is_none() {
        return Ok(None);
    }
    message_rows::record_of(row, at).map(Some)
}

impl PgTxn<'_> {
    /// Reads ahead what the accepts among `ops` will ask for: the idempotency keys they
    /// carry and the suppression entries of their recipients — two statements in one round
    /// trip, whatever the number of accepts.
    pub(super) fn prefetch_accepts(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let mut keys: Vec<String> = Vec::new();
        let (mut channels, mut recipients): (Vec<i16>, Vec<String>) = (Vec::new(), Vec::new());
        for op in ops {
            if let Op::Accept(m) = op {
                keys.extend(m.idempotency_key.clone());
                let channel = m.content.channel();
                if let Some(key) = recipients::key(channel, &m.to, &self.rules) {
                    channels.push(channel_sql(channel));
                    recipients.push(key.as_str().to_string());
                }
            }
        }
        if keys.is_empty() && recipients.is_empty() {
            return Ok(());
        }
        let (found_keys, found_suppressed) = self.rows_pair(
            (
                "SELECT key, id, expires_at FROM idempotency WHERE key = ANY($1)",
                &[&keys],
            ),
            (
                "SELECT s.channel, s.key, s.entry FROM suppression s \
                 JOIN unnest($1::int2[], $2::text[]) AS r(channel, key) \
                   ON s.channel = r.channel AND s.key = r.key",
                &[&channels, &recipients],
            ),
        )?;
        for key in keys {
            self.cache.idempotency.insert(key, None);
        }
        for row in &found_keys {
            let entry = (id_of(row.get(1))?, ms(row.get(2)));
            self.cache.idempotency.insert(row.get(0), Some(entry));
        }
        for (channel, key) in channels.into_iter().zip(recipients) {
            self.cache.suppression.insert((channel, key), None);
        }
        for row in &found_suppressed {
            let entry: Suppression = dec(row.get::<_, &[u8]>(2), "suppression")?;
            self.cache
                .suppression
                .insert((row.get(0), row.get(1)), Some(entry));
        }
        Ok(())
    }

    /// Reads ahead what the completions among `ops` will ask for: their records and lease
    /// tokens, and the updates held for their message ids and provider ids — two
    /// statements in one round trip, whatever the number of completions.
    pub(super) fn prefetch_completions(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let mut ids: Vec<Vec<u8>> = Vec::new();
        let mut held_keys: Vec<Vec<u8>> = Vec::new();
        for op in ops {
            if let Op::Complete(c) = op {
                ids.push(c.id.to_vec());
                held_keys.push(held_key(HeldFor::Message(&c.id)));
                if let (Some(provider), Some(pid)) = (&c.provider, &c.provider_message_id) {
                    held_keys.push(held_key(HeldFor::ProviderId { provider, pid }));
                }
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let (records, held) = self.rows_pair(
            (&RECORDS_WITH_TOKENS, &[&ids]),
            (
                "SELECT key, updates FROM held WHERE key = ANY($1)",
                &[&held_keys],
            ),
        )?;
        for id in &ids {
            let id = id_of(id)?;
            self.cache.records.insert(id, None);
            self.cache.tokens.insert(id, None);
        }
        for row in &records {
            let id = id_of(row.get(0))?;
            self.cache.tokens.insert(id, row.get::<_, Option<i64>>(1));
            self.cache
                .records
                .insert(id, Some(message_rows::record_of(row, 2)?));
            self.bodies.insert(id);
        }
        for key in held_keys {
            self.cache.held.insert(key, HeldUpdates::default());
        }
        for row in &held {
            let updates: HeldUpdates = dec(row.get::<_, &[u8]>(1), "held updates")?;
            self.cache.held.insert(row.get(0), updates);
        }
        Ok(())
    }

    /// Up to `limit` due entries of `lane`, locked, with their records (read ahead for the
    /// claim that follows), and as many fresh fencing tokens — one round trip.
    pub(super) fn due_with_records(
        &mut self,
        lane: Lane,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<(UnixMillis, MsgId)>, StoreError> {
        let n = limit as i64;
        let (rows, tokens) = self.rows_pair(
            (&DUE_WITH_RECORDS, &[&big(now), &n, &lane_sql(lane)]),
            (
                "SELECT nextval('lease_tokens') FROM generate_series(1, $1::int8)",
                &[&n],
            ),
        )?;
        // Popped from the end: the first claim takes the smallest.
        self.cache.fresh_tokens = tokens.iter().rev().map(|r| r.get(0)).collect();
        let mut due = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = id_of(row.get(1))?;
            let record = record_or_none(row, 2)?;
            if record.is_some() {
                self.bodies.insert(id);
            }
            self.cache.records.insert(id, record);
            due.push((ms(row.get(0)), id));
        }
        Ok(due)
    }
}
