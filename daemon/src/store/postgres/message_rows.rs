//! How a message [`Record`] lies in PostgreSQL since schema 5: a write-once `messages` row
//! (the body: recipient, content, tags, idempotency key, requested time, creation time,
//! lane — postcard, written at accept and never again) and a narrow `message_status` row
//! (state, attempts, times, provider, provider id, last error — plain columns, rewritten on
//! every transition). A transition rewrites ~100 bytes instead of the whole message (an
//! email's HTML included), and the status is queryable by an operator.
//!
//! Owns: the split and the join of the two rows. Must not: run statements (the engine
//! does), or decide anything about states.

use herald_plugin_api::{Content, State, UnixMillis};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;

use super::{FORMAT, big, enc, ms};
use crate::store::{Counts, Lane, Record, StoreError};

/// The columns [`record_of`] reads, in its order: the body, then the status. Queries join
/// `message_status s` with `messages m` on `id`.
pub(super) const RECORD_COLUMNS: &str = "m.body, s.state, s.attempt, s.updated_at, s.due_at, \
     s.expires_at, s.lease_until, s.provider, s.provider_message_id, s.last_error";

/// The part of a record that never changes after accept (the `messages.body` value).
#[derive(Serialize)]
struct BodyRef<'a> {
    to: &'a String,
    content: &'a Content,
    tags: &'a Vec<String>,
    idempotency_key: &'a Option<String>,
    send_at: &'a Option<UnixMillis>,
    created_at: &'a UnixMillis,
    lane: &'a Lane,
}

#[derive(Deserialize)]
struct Body {
    to: String,
    content: Content,
    tags: Vec<String>,
    idempotency_key: Option<String>,
    send_at: Option<UnixMillis>,
    created_at: UnixMillis,
    lane: Lane,
}

/// The `messages.body` value of `r`.
pub(super) fn body(r: &Record) -> Vec<u8> {
    enc(&BodyRef {
        to: &r.to,
        content: &r.content,
        tags: &r.tags,
        idempotency_key: &r.idempotency_key,
        send_at: &r.send_at,
        created_at: &r.created_at,
        lane: &r.lane,
    })
}

/// The `message_status` columns of `r`, as statement parameters in the order of
/// [`STATUS_COLUMNS`] after `id`.
pub(super) struct Status {
    pub state: i16,
    pub attempt: i64,
    pub updated_at: i64,
    pub due_at: i64,
    pub expires_at: i64,
    pub lease_until: Option<i64>,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub last_error: Option<String>,
}

/// `message_status`'s columns after `id`, in the order of [`Status`].
pub(super) const STATUS_COLUMNS: &str = "state, attempt, updated_at, due_at, expires_at, \
     lease_until, provider, provider_message_id, last_error";

pub(super) fn status(r: &Record) -> Status {
    Status {
        state: Counts::index(r.state) as i16,
        attempt: i64::from(r.attempt),
        updated_at: big(r.updated_at),
        due_at: big(r.due_at),
        expires_at: big(r.expires_at),
        lease_until: r.lease_until.map(big),
        provider: r.provider.clone(),
        provider_message_id: r.provider_message_id.clone(),
        last_error: r.last_error.clone(),
    }
}

/// The record in `row`, whose columns from `at` on are [`RECORD_COLUMNS`].
pub(super) fn record_of(row: &Row, at: usize) -> Result<Record, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("message: {what}"));
    let body: Body = match row.get::<_, &[u8]>(at).split_first() {
        Some((&FORMAT, rest)) => {
            postcard::from_bytes(rest).map_err(|e| corrupt(&format!("body: {e}")))?
        }
        _ => return Err(corrupt("body: unknown format")),
    };
    let state: i16 = row.get(at + 1);
    let state = usize::try_from(state)
        .ok()
        .and_then(|i| State::ALL.get(i).copied())
        .ok_or_else(|| corrupt(&format!("unknown state {state}")))?;
    let attempt: i64 = row.get(at + 2);
    Ok(Record {
        to: body.to,
        content: body.content,
        tags: body.tags,
        idempotency_key: body.idempotency_key,
        send_at: body.send_at,
        state,
        attempt: u32::try_from(attempt).map_err(|_| corrupt("attempt out of range"))?,
        created_at: body.created_at,
        updated_at: ms(row.get(at + 3)),
        due_at: ms(row.get(at + 4)),
        expires_at: ms(row.get(at + 5)),
        lease_until: row.get::<_, Option<i64>>(at + 6).map(ms),
        provider: row.get(at + 7),
        provider_message_id: row.get(at + 8),
        last_error: row.get(at + 9),
        lane: body.lane,
    })
}
