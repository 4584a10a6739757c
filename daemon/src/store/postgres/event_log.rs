//! The partitioned event log (schema 6): `events` is partitioned by **seq range**, each
//! partition (`events_from_<lo>`) sized to hold about a day of events at the rate the
//! previous one filled, and retention drops whole partitions instead of deleting rows.
//!
//! Why seq ranges and not days: the log must stay a contiguous seq prefix for subscribers
//! (`events_from(n)` must never skip), and the `at` of events written by daemons with
//! different clocks is not monotonic in seq. A partition holds `[lo, hi)`; the one being
//! written (the *current* one) is kept in `herald_meta`'s `part_*` columns, read and written
//! with the counter row every batch already locks (no extra statement per commit); closed
//! ones are listed in `event_parts` with the newest `at` written into them.
//!
//! Retention: a closed partition whose newest event is older than the cut-off is marked
//! `dropping` in the batch and dropped right after its commit, in its own short transaction
//! (`DROP TABLE` locks the parent `events`; a lock that does not come within
//! [`DROP_LOCK_TIMEOUT`] leaves the drop to the next pruning), always oldest first and
//! stopping at the first that cannot go — the log never gets a hole. Rows are still deleted
//! one by one, as before partitioning, where partitions do not do the job: in the current
//! partition (a log written so slowly that one partition outlives retention), and in any
//! partition older than [`SLACK`] past the cut-off (the rate fell after it was sized). So an
//! event is kept at least `daemon.retention`, and at most that plus [`SLACK`].
//!
//! Owns: partition bookkeeping and event-log pruning. Must not: decide which events exist
//! (that is `lifecycle`) or hold other tables' SQL.

use std::time::Duration;

use deadpool_postgres::Object;
use herald_plugin_api::{Event, UnixMillis};

use super::{Bridge, PgTxn, big, db, ms};
use crate::store::StoreError;

const DAY_MS: u64 = 86_400_000;

/// How far past the retention cut-off a partition's oldest events may live before they are
/// deleted row by row.
pub(super) const SLACK: UnixMillis = 2 * DAY_MS;

/// How long the drop of a partition waits for the lock on `events` (readers hold it for
/// one statement each) before leaving the drop to the next pruning.
const DROP_LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// The smallest and largest partition (in seqs) a new partition is given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spans {
    pub min: u64,
    pub max: u64,
}

impl Default for Spans {
    fn default() -> Spans {
        Spans {
            min: 10_000,
            max: 100_000_000,
        }
    }
}

/// The partition being written: `herald_meta`'s `part_*` columns. `lo == hi` when there is
/// none (a new log); the next partition always starts at `hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Current {
    pub lo: u64,
    pub hi: u64,
    /// When it was created.
    pub opened: UnixMillis,
    /// The newest `at` written into it (an upper bound).
    pub newest: UnixMillis,
}

/// The `herald_meta` columns [`Current`] is read from, after `seq` and `counts`.
pub(super) const CURRENT_COLUMNS: &str = "part_lo, part_hi, part_opened, part_newest";

impl Current {
    /// From a row whose columns from `at` on are [`CURRENT_COLUMNS`].
    pub(super) fn of(row: &tokio_postgres::Row, at: usize) -> Current {
        Current {
            lo: ms(row.get(at)),
            hi: ms(row.get(at + 1)),
            opened: ms(row.get(at + 2)),
            newest: ms(row.get(at + 3)),
        }
    }

    /// The size of the next partition: what this one held, scaled to a day at the rate it
    /// filled, within `spans`.
    fn next_span(&self, now: UnixMillis, spans: Spans) -> u64 {
        let filled = self.hi - self.lo;
        let elapsed = now.saturating_sub(self.opened);
        if filled == 0 || elapsed == 0 {
            return spans.min;
        }
        let per_day = u128::from(filled) * u128::from(DAY_MS) / u128::from(elapsed);
        u64::try_from(per_day)
            .unwrap_or(u64::MAX)
            .clamp(spans.min, spans.max)
    }
}

fn partition(lo: u64) -> String {
    format!("events_from_{lo}")
}

impl PgTxn<'_> {
    /// Appends `events` (seqs up to `seq`), first creating the partition they need when
    /// they reach past the current one.
    pub(super) fn append_events(&mut self, events: &[Event]) -> Result<(), StoreError> {
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(());
        };
        if last >= self.part.hi {
            // The events of this batch that still go into the current partition.
            let hi = self.part.hi;
            let newest_below = events.iter().filter(|e| e.seq < hi).map(|e| e.at).max();
            self.roll_over(last, newest_below.unwrap_or(0))?;
        }
        let newest = events
            .iter()
            .filter(|e| e.seq >= self.part.lo)
            .map(|e| e.at)
            .max()
            .unwrap_or(0);
        self.part.newest = self.part.newest.max(newest);
        let seqs: Vec<i64> = events.iter().map(|e| big(e.seq)).collect();
        let ats: Vec<i64> = events.iter().map(|e| big(e.at)).collect();
        let blobs: Vec<Vec<u8>> = events.iter().map(super::enc).collect();
        self.exec(
            "INSERT INTO events (seq, at, event) \
             SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::bytea[])",
            &[&seqs, &ats, &blobs],
        )?;
        Ok(())
    }

    /// Closes the current partition (`newest`: the newest `at` of this batch's events that
    /// still go into it) and creates the next, `[hi, …)`, large enough for `last`.
    /// `CREATE` then `ATTACH` (not `CREATE … PARTITION OF`): attaching locks the parent only
    /// against other schema changes, so readers of the log are not held up.
    fn roll_over(&mut self, last: u64, newest: UnixMillis) -> Result<(), StoreError> {
        let cur = self.part;
        if cur.hi > cur.lo {
            self.exec(
                "INSERT INTO event_parts (lo, hi, opened, newest) VALUES ($1, $2, $3, $4)",
                &[
                    &big(cur.lo),
                    &big(cur.hi),
                    &big(cur.opened),
                    &big(cur.newest.max(newest)),
                ],
            )?;
        }
        let lo = cur.hi;
        let hi = lo + cur.next_span(self.now, self.spans).max(last + 1 - lo);
        let name = partition(lo);
        self.ddl(&format!(
            "CREATE TABLE {name} (LIKE events); \
             ALTER TABLE events ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})"
        ))?;
        tracing::debug!(lo, hi, "new event log partition");
        self.part = Current {
            lo,
            hi,
            opened: self.now,
            newest: 0,
        };
        Ok(())
    }

    /// Retention of the log (see the module's comment): marks closed partitions entirely
    /// older than `before` for dropping after the commit, then deletes single rows where
    /// partitions do not do the job, up to `limit`. Returns how many events go.
    pub(super) fn prune_log(
        &mut self,
        seq: u64,
        before: UnixMillis,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let first: Option<i64> = self
            .row("SELECT min(seq) FROM events", &[])?
            .and_then(|r| r.get(0));
        let Some(first) = first.map(ms) else {
            return Ok(0);
        };
        // Rows left in [lo, hi): the log is the contiguous range [first, seq].
        let rows_in = |lo: u64, hi: u64| hi.min(seq + 1).saturating_sub(lo.max(first));
        let parts = self.rows(
            "SELECT lo, hi, newest, dropping FROM event_parts ORDER BY lo",
            &[],
        )?;
        let mut pruned = 0;
        let mut all_closed_go = true;
        // The first seq not in a partition marked for dropping: rows below it go with their
        // partitions, so the single-row delete starts there.
        let mut marked_up_to = 0;
        for row in &parts {
            let (lo, hi, newest): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            let dropping: bool = row.get(3);
            if dropping {
                self.drops_pending = true;
                marked_up_to = ms(hi);
                continue;
            }
            if ms(newest) >= before {
                all_closed_go = false;
                break;
            }
            self.exec(
                "UPDATE event_parts SET dropping = true WHERE lo = $1",
                &[&lo],
            )?;
            self.drops_pending = true;
            marked_up_to = ms(hi);
            pruned += rows_in(ms(lo), ms(hi));
        }
        // Single rows: up to the cut-off in the current partition when the log has nothing
        // older; elsewhere only those older than the slack.
        let cut = if all_closed_go {
            before
        } else {
            before.saturating_sub(SLACK)
        };
        let deleted = self.exec(
            "DELETE FROM events WHERE seq IN (\
               SELECT seq FROM events WHERE at < $1 AND seq >= $3 \
                 AND seq < COALESCE((SELECT min(seq) FROM events WHERE at >= $1 AND seq >= $3), \
                                    9223372036854775807) \
               ORDER BY seq LIMIT $2)",
            &[&big(cut), &(limit as i64), &big(marked_up_to)],
        )?;
        Ok(pruned + deleted)
    }
}

/// Drops the partitions marked `dropping`, oldest first, each in its own short transaction;
/// stops at the first that cannot be dropped now (the next pruning tries again), so what
/// remains of the log is still one contiguous range.
pub(super) fn drop_marked(b: &Bridge, client: &Object) -> Result<usize, StoreError> {
    let marked: Vec<i64> = b
        .block_on(client.query("SELECT lo FROM event_parts WHERE dropping ORDER BY lo", &[]))
        .map_err(db)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut dropped = 0;
    for lo in marked {
        let sql = format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; DROP TABLE IF EXISTS {}; \
             DELETE FROM event_parts WHERE lo = {lo}; COMMIT",
            DROP_LOCK_TIMEOUT.as_millis(),
            partition(ms(lo)),
        );
        if let Err(e) = b.block_on(client.batch_execute(&sql)) {
            let _ = b.block_on(client.batch_execute("ROLLBACK"));
            tracing::debug!(error = %super::describe(&e), lo, "an event log partition is dropped later");
            return Err(db(e));
        }
        dropped += 1;
    }
    Ok(dropped)
}
