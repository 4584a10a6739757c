//! Multi-row writes: a batch's new messages (body and status rows) and its new schedule
//! entries are gathered into one statement each (`INSERT … SELECT FROM unnest(…)`), so a
//! group commit of accepts costs a few statements, not a few per message.
//!
//! Order is what makes it safe. A gathering write sits in the batch's pending writes at the
//! place of its first row and takes later rows only while no other statement on its tables
//! has been queued since (`PgTxn::close_gathering`): statements on other tables do not
//! interact with it (no foreign keys, no triggers of ours), and every statement on its own
//! tables keeps its order relative to every row.
//!
//! Owns: the gathered rows and their statements. Must not: decide what is written (that is
//! the engine's `Txn`, and above it `lifecycle`).

use tokio_postgres::types::ToSql;

use super::message_rows::Status;

/// Which tables a gathering write inserts into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tables {
    /// `messages` and `message_status`.
    Messages,
    /// `queue`.
    Queue,
}

/// New messages: a body row (written once) and a status row each.
#[derive(Default)]
pub(super) struct NewMessages {
    ids: Vec<Vec<u8>>,
    bodies: Vec<Vec<u8>>,
    state: Vec<i16>,
    attempt: Vec<i64>,
    updated_at: Vec<i64>,
    due_at: Vec<i64>,
    expires_at: Vec<i64>,
    lease_until: Vec<Option<i64>>,
    provider: Vec<Option<String>>,
    provider_message_id: Vec<Option<String>>,
    last_error: Vec<Option<String>>,
}

/// New schedule entries.
#[derive(Default)]
pub(super) struct NewSchedule {
    due_at: Vec<i64>,
    ids: Vec<Vec<u8>>,
    lanes: Vec<i16>,
}

/// A gathering write.
pub(super) enum Rows {
    Messages(NewMessages),
    Schedule(NewSchedule),
}

impl NewMessages {
    pub(super) fn push(&mut self, id: Vec<u8>, body: Vec<u8>, s: Status) {
        self.ids.push(id);
        self.bodies.push(body);
        self.state.push(s.state);
        self.attempt.push(s.attempt);
        self.updated_at.push(s.updated_at);
        self.due_at.push(s.due_at);
        self.expires_at.push(s.expires_at);
        self.lease_until.push(s.lease_until);
        self.provider.push(s.provider);
        self.provider_message_id.push(s.provider_message_id);
        self.last_error.push(s.last_error);
    }
}

impl NewSchedule {
    pub(super) fn push(&mut self, due_at: i64, id: Vec<u8>, lane: i16) {
        self.due_at.push(due_at);
        self.ids.push(id);
        self.lanes.push(lane);
    }
}

impl Rows {
    pub(super) fn tables(&self) -> Tables {
        match self {
            Rows::Messages(_) => Tables::Messages,
            Rows::Schedule(_) => Tables::Queue,
        }
    }

    /// The statement. A body row that exists already is kept (it is written once); a
    /// status row that exists already takes the new values — as the single-row forms do.
    pub(super) fn sql(&self) -> &'static str {
        match self {
            Rows::Messages(_) => {
                "WITH body AS (\
                   INSERT INTO messages (id, body) \
                   SELECT * FROM unnest($1::bytea[], $11::bytea[]) ON CONFLICT (id) DO NOTHING) \
                 INSERT INTO message_status (id, state, attempt, updated_at, due_at, expires_at, \
                   lease_until, provider, provider_message_id, last_error) \
                 SELECT * FROM unnest($1::bytea[], $2::int2[], $3::int8[], $4::int8[], \
                   $5::int8[], $6::int8[], $7::int8[], $8::text[], $9::text[], $10::text[]) \
                 ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, \
                   attempt = EXCLUDED.attempt, updated_at = EXCLUDED.updated_at, \
                   due_at = EXCLUDED.due_at, expires_at = EXCLUDED.expires_at, \
                   lease_until = EXCLUDED.lease_until, provider = EXCLUDED.provider, \
                   provider_message_id = EXCLUDED.provider_message_id, \
                   last_error = EXCLUDED.last_error"
            }
            Rows::Schedule(_) => {
                "INSERT INTO queue (due_at, id, lane) \
                 SELECT * FROM unnest($1::int8[], $2::bytea[], $3::int2[]) ON CONFLICT DO NOTHING"
            }
        }
    }

    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            Rows::Messages(m) => vec![
                &m.ids,
                &m.state,
                &m.attempt,
                &m.updated_at,
                &m.due_at,
                &m.expires_at,
                &m.lease_until,
                &m.provider,
                &m.provider_message_id,
                &m.last_error,
                &m.bodies,
            ],
            Rows::Schedule(s) => vec![&s.due_at, &s.ids, &s.lanes],
        }
    }
}
