//! Checking and repairing a store: Herald's own invariant, whatever the engine promises.
//!
//! Every acknowledged message must be delivered or reach a terminal state. Dispatch only
//! looks at the schedule and recovery only at the leases, so a record whose index entries
//! were lost (sled's multi-tree transaction was seen to be non-atomic under ENOSPC) would
//! be invisible for good. The check holds every message against the index entries its
//! state requires:
//!
//! | state | requires |
//! | --- | --- |
//! | `queued`, `deferred` | one schedule entry, at its `due_at` |
//! | `sending` | a lease |
//! | `dead` | a dead-letter entry, and a finished entry |
//! | other terminal states | a finished entry (retention finds it by that) |
//! | `sent` | nothing (it waits for webhooks) |
//!
//! and recounts the per-state counts. A repair re-queues a `sending` message without a
//! lease (with a `queued` event saying why), reschedules a waiting message without its
//! entry, adds missing dead-letter and finished entries, drops stale schedule entries,
//! leases and dead-letter entries, and stores the recount. Finished entries without a
//! record, and the lookup indexes (idempotency keys, provider ids, latest recipient,
//! held updates, de-duplication keys), are not checked: stale ones are expected there,
//! every reader tolerates them and retention removes them.
//!
//! The audit (a read of the whole store) is the engine's, through [`audit`]; the repair
//! runs in the engine's transaction through [`crate::store::lifecycle::Txn`], and
//! re-checks each finding against the transaction before it changes anything.
//!
//! Owns: what each state requires, and how each kind of damage is repaired. Must not: know
//! an engine's layout.

use std::collections::BTreeMap;

use herald_plugin_api::{State, UnixMillis};
use herald_protocol::{StoreCheck, StoreProblem, StoreProblemKind};

use super::lifecycle::{Cursor, Txn, requeue_sending};
use super::{Counts, Lane, MsgId, Record, StoreError, id_string};

/// At most this many findings are repaired by one check (one transaction); a report with
/// [`CheckReport::unrepaired`] > 0 asks for another pass.
pub const MAX_REPAIRS: usize = 50_000;

/// Example message ids kept per kind of problem in a report.
const EXAMPLES: usize = 10;

/// A kind of inconsistency. Order is the report's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Problem {
    /// A `sending` message without a lease: recovery would never re-queue it.
    SendingWithoutLease,
    /// A `queued` or `deferred` message without its schedule entry: never dispatched.
    NotScheduled,
    /// A `dead` message missing from the dead letters: not listed, cannot be requeued.
    NotInDeadLetters,
    /// A finished message without a finished entry: retention would keep it forever.
    NotFinished,
    /// A schedule entry for a message that is gone or not waiting at that time.
    StaleSchedule,
    /// A lease for a message that is gone or not being sent.
    StaleLease,
    /// A dead-letter entry for a message that is gone or not dead.
    StaleDeadLetter,
    /// The stored per-state counts disagree with the messages.
    CountsWrong,
}

impl Problem {
    pub const ALL: [Problem; 8] = [
        Problem::SendingWithoutLease,
        Problem::NotScheduled,
        Problem::NotInDeadLetters,
        Problem::NotFinished,
        Problem::StaleSchedule,
        Problem::StaleLease,
        Problem::StaleDeadLetter,
        Problem::CountsWrong,
    ];

    pub fn wire(self) -> StoreProblemKind {
        match self {
            Problem::SendingWithoutLease => StoreProblemKind::SendingWithoutLease,
            Problem::NotScheduled => StoreProblemKind::NotScheduled,
            Problem::NotInDeadLetters => StoreProblemKind::NotInDeadLetters,
            Problem::NotFinished => StoreProblemKind::NotFinished,
            Problem::StaleSchedule => StoreProblemKind::StaleSchedule,
            Problem::StaleLease => StoreProblemKind::StaleLease,
            Problem::StaleDeadLetter => StoreProblemKind::StaleDeadLetter,
            Problem::CountsWrong => StoreProblemKind::CountsWrong,
        }
    }

    /// What the problem is, and what a repair does about it.
    pub fn describe(self) -> &'static str {
        match self {
            Problem::SendingWithoutLease => {
                "being sent but without a lease, so never re-queued; repair: re-queued with a queued event"
            }
            Problem::NotScheduled => {
                "queued or deferred but missing from the schedule, so never dispatched; repair: rescheduled at its due time"
            }
            Problem::NotInDeadLetters => {
                "dead but missing from the dead letters; repair: listed again"
            }
            Problem::NotFinished => {
                "finished but missing from the retention index; repair: indexed at its last update"
            }
            Problem::StaleSchedule => {
                "a schedule entry for a message that is gone or not waiting then; repair: dropped"
            }
            Problem::StaleLease => {
                "a lease for a message that is gone or not being sent; repair: dropped"
            }
            Problem::StaleDeadLetter => {
                "a dead-letter entry for a message that is gone or not dead; repair: dropped"
            }
            Problem::CountsWrong => {
                "the stored per-state counts (stats, max_queue) disagree with the messages; repair: recounted"
            }
        }
    }
}

/// One inconsistency the audit found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    SendingWithoutLease(MsgId),
    NotScheduled { id: MsgId, due: UnixMillis },
    NotInDeadLetters(MsgId),
    NotFinished { id: MsgId, at: UnixMillis },
    StaleSchedule { id: MsgId, due: UnixMillis },
    StaleLease(MsgId),
    StaleDeadLetter(MsgId),
}

impl Finding {
    pub fn problem(&self) -> Problem {
        match self {
            Finding::SendingWithoutLease(_) => Problem::SendingWithoutLease,
            Finding::NotScheduled { .. } => Problem::NotScheduled,
            Finding::NotInDeadLetters(_) => Problem::NotInDeadLetters,
            Finding::NotFinished { .. } => Problem::NotFinished,
            Finding::StaleSchedule { .. } => Problem::StaleSchedule,
            Finding::StaleLease(_) => Problem::StaleLease,
            Finding::StaleDeadLetter(_) => Problem::StaleDeadLetter,
        }
    }

    pub fn id(&self) -> &MsgId {
        match self {
            Finding::SendingWithoutLease(id)
            | Finding::NotInDeadLetters(id)
            | Finding::StaleLease(id)
            | Finding::StaleDeadLetter(id)
            | Finding::NotScheduled { id, .. }
            | Finding::NotFinished { id, .. }
            | Finding::StaleSchedule { id, .. } => id,
        }
    }
}

/// The result of reading a whole store against its indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// Messages examined.
    pub messages: u64,
    /// The per-state counts the store held at the audit.
    pub stored: Counts,
    /// The per-state counts of the messages at the audit.
    pub recount: Counts,
    pub findings: Vec<Finding>,
}

/// Audits a store from its contents: `messages` in id order, the other indexes in any
/// order. Index entries are gathered and sorted by id, then merged with the messages in
/// one pass (memory: 24 bytes per schedule entry; no lookup per message).
pub fn audit(
    messages: impl Iterator<Item = Result<(MsgId, Record), StoreError>>,
    schedule: impl Iterator<Item = Result<(UnixMillis, MsgId), StoreError>>,
    leases: impl Iterator<Item = Result<MsgId, StoreError>>,
    dead: impl Iterator<Item = Result<MsgId, StoreError>>,
    finished: impl Iterator<Item = Result<(UnixMillis, MsgId), StoreError>>,
    stored: Counts,
) -> Result<Audit, StoreError> {
    let mut schedule = schedule
        .map(|e| e.map(|(due, id)| (id, due)))
        .collect::<Result<Vec<_>, _>>()?;
    schedule.sort_unstable();
    let mut leases = leases.collect::<Result<Vec<_>, _>>()?;
    leases.sort_unstable();
    let mut dead = dead.collect::<Result<Vec<_>, _>>()?;
    dead.sort_unstable();
    let mut finished = finished
        .map(|e| e.map(|(_, id)| id))
        .collect::<Result<Vec<_>, _>>()?;
    finished.sort_unstable();
    finished.dedup();

    let mut out = Audit {
        stored,
        ..Audit::default()
    };
    let (mut s, mut l, mut d, mut f) = (0, 0, 0, 0);
    let mut last: Option<MsgId> = None;
    for entry in messages {
        let (id, r) = entry?;
        if last.is_some_and(|prev| prev >= id) {
            return Err(StoreError::Corrupt(
                "the store listed its messages out of order".into(),
            ));
        }
        last = Some(id);
        out.messages += 1;
        let i = Counts::index(r.state);
        out.recount.0[i] += 1;
        // Entries of ids without a message (they sort before this one) are stale.
        while s < schedule.len() && schedule[s].0 < id {
            out.findings.push(Finding::StaleSchedule {
                id: schedule[s].0,
                due: schedule[s].1,
            });
            s += 1;
        }
        while l < leases.len() && leases[l] < id {
            out.findings.push(Finding::StaleLease(leases[l]));
            l += 1;
        }
        while d < dead.len() && dead[d] < id {
            out.findings.push(Finding::StaleDeadLetter(dead[d]));
            d += 1;
        }
        while f < finished.len() && finished[f] < id {
            f += 1;
        }

        let waiting = matches!(r.state, State::Queued | State::Deferred);
        let mut scheduled = false;
        while s < schedule.len() && schedule[s].0 == id {
            let due = schedule[s].1;
            if waiting && due == r.due_at && !scheduled {
                scheduled = true;
            } else {
                out.findings.push(Finding::StaleSchedule { id, due });
            }
            s += 1;
        }
        if waiting && !scheduled {
            out.findings
                .push(Finding::NotScheduled { id, due: r.due_at });
        }

        let leased = l < leases.len() && leases[l] == id;
        if leased {
            l += 1;
        }
        match (r.state == State::Sending, leased) {
            (true, false) => out.findings.push(Finding::SendingWithoutLease(id)),
            (false, true) => out.findings.push(Finding::StaleLease(id)),
            _ => {}
        }

        let listed_dead = d < dead.len() && dead[d] == id;
        if listed_dead {
            d += 1;
        }
        match (r.state == State::Dead, listed_dead) {
            (true, false) => out.findings.push(Finding::NotInDeadLetters(id)),
            (false, true) => out.findings.push(Finding::StaleDeadLetter(id)),
            _ => {}
        }

        let indexed_finished = f < finished.len() && finished[f] == id;
        if indexed_finished {
            f += 1;
        }
        if r.state.is_terminal() && !indexed_finished {
            out.findings.push(Finding::NotFinished {
                id,
                at: r.updated_at,
            });
        }
    }
    for &(id, due) in &schedule[s..] {
        out.findings.push(Finding::StaleSchedule { id, due });
    }
    for &id in &leases[l..] {
        out.findings.push(Finding::StaleLease(id));
    }
    for &id in &dead[d..] {
        out.findings.push(Finding::StaleDeadLetter(id));
    }
    Ok(out)
}

/// One kind of problem in a [`CheckReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProblemReport {
    pub problem: Problem,
    /// How many were found (for counts: how many states disagreed).
    pub found: u64,
    /// How many were repaired.
    pub repaired: u64,
    /// Some of the messages concerned.
    pub examples: Vec<MsgId>,
}

/// What a store check found and what it repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Messages examined.
    pub messages: u64,
    /// Each kind of problem found, in [`Problem`] order; empty when consistent.
    pub problems: Vec<ProblemReport>,
    /// The per-state counts as stored before the check, and as the messages say.
    pub counts_stored: Counts,
    pub counts_actual: Counts,
    /// Whether repairs were asked for.
    pub repair: bool,
}

impl CheckReport {
    pub fn consistent(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn found(&self) -> u64 {
        self.problems.iter().map(|p| p.found).sum()
    }

    pub fn repaired(&self) -> u64 {
        self.problems.iter().map(|p| p.repaired).sum()
    }

    /// Problems left as they were: all of them for a check without repair; with repair,
    /// those past [`MAX_REPAIRS`] (another pass repairs them).
    pub fn unrepaired(&self) -> u64 {
        self.found() - self.repaired()
    }

    /// The report as `check_store` answers it.
    pub fn wire(&self, took_ms: u64) -> StoreCheck {
        let counts = |c: &Counts| State::ALL.iter().map(|s| (*s, c.get(*s))).collect();
        StoreCheck {
            messages: self.messages,
            problems: self
                .problems
                .iter()
                .map(|p| StoreProblem {
                    kind: p.problem.wire(),
                    found: p.found,
                    repaired: p.repaired,
                    detail: p.problem.describe().to_string(),
                    examples: p.examples.iter().map(id_string).collect(),
                })
                .collect(),
            repair: self.repair,
            counts_stored: counts(&self.counts_stored),
            counts_actual: counts(&self.counts_actual),
            took_ms,
        }
    }
}

/// The `Check` op: audits the store through `txn` and, with `repair`, repairs up to
/// [`MAX_REPAIRS`] findings and stores the recount.
pub(super) fn check<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    repair: bool,
    cur: &mut Cursor,
) -> Result<CheckReport, T::Error> {
    let audit = txn.audit(&cur.counts)?;
    // The audit may describe the store as it was before earlier ops of this batch: carry
    // its difference over to the counts as they stand now.
    let counts_stored = cur.counts;
    let mut counts_actual = Counts::default();
    for i in 0..counts_actual.0.len() {
        let v = i128::from(cur.counts.0[i]) + i128::from(audit.recount.0[i])
            - i128::from(audit.stored.0[i]);
        counts_actual.0[i] = u64::try_from(v.max(0)).unwrap_or(u64::MAX);
    }
    if repair {
        // Before the repairs, which move counts of their own (a re-queued message).
        cur.counts = counts_actual;
    }
    let mut problems: BTreeMap<Problem, ProblemReport> = BTreeMap::new();
    for (n, finding) in audit.findings.iter().enumerate() {
        let p = problems
            .entry(finding.problem())
            .or_insert_with(|| ProblemReport {
                problem: finding.problem(),
                found: 0,
                repaired: 0,
                examples: Vec::new(),
            });
        p.found += 1;
        if p.examples.len() < EXAMPLES && !p.examples.contains(finding.id()) {
            p.examples.push(*finding.id());
        }
        if repair && n < MAX_REPAIRS && repair_one(txn, now, finding, cur)? {
            p.repaired += 1;
        }
    }
    let wrong = counts_stored
        .0
        .iter()
        .zip(counts_actual.0.iter())
        .filter(|(a, b)| a != b)
        .count() as u64;
    if wrong > 0 {
        problems.insert(
            Problem::CountsWrong,
            ProblemReport {
                problem: Problem::CountsWrong,
                found: wrong,
                repaired: if repair { wrong } else { 0 },
                examples: Vec::new(),
            },
        );
    }
    Ok(CheckReport {
        messages: audit.messages,
        problems: problems.into_values().collect(),
        counts_stored,
        counts_actual,
        repair,
    })
}

/// Repairs one finding if the transaction still shows it; returns whether it did.
fn repair_one<T: Txn>(
    txn: &mut T,
    now: UnixMillis,
    finding: &Finding,
    cur: &mut Cursor,
) -> Result<bool, T::Error> {
    let waiting_at = |r: &Record, due: UnixMillis| {
        matches!(r.state, State::Queued | State::Deferred) && r.due_at == due
    };
    Ok(match finding {
        Finding::SendingWithoutLease(id) => {
            let Some(mut r) = txn.message(id)? else {
                return Ok(false);
            };
            if r.state != State::Sending || txn.is_leased(id)? {
                return Ok(false);
            }
            requeue_sending(
                txn,
                now,
                id,
                &mut r,
                cur,
                "re-queued by the store check: it was being sent but had no lease (a write interrupted by a crash or a full disk)",
            )?;
            true
        }
        Finding::NotScheduled { id, due } => match txn.message(id)? {
            Some(r) if waiting_at(&r, *due) => {
                txn.schedule(r.lane, *due, id)?;
                cur.scheduled = true;
                true
            }
            _ => false,
        },
        Finding::NotInDeadLetters(id) => match txn.message(id)? {
            Some(r) if r.state == State::Dead => {
                txn.put_dead(id)?;
                true
            }
            _ => false,
        },
        Finding::NotFinished { id, at } => match txn.message(id)? {
            Some(r) if r.state.is_terminal() => {
                txn.put_finished(*at, id)?;
                true
            }
            _ => false,
        },
        Finding::StaleSchedule { id, due } => match txn.message(id)? {
            Some(r) if waiting_at(&r, *due) => false,
            _ => {
                // The audit does not say in which lane the entry is: drop it from each.
                for lane in Lane::ALL {
                    txn.unschedule(lane, *due, id)?;
                }
                true
            }
        },
        Finding::StaleLease(id) => match txn.message(id)? {
            Some(r) if r.state == State::Sending => false,
            _ => {
                txn.unlease(id)?;
                true
            }
        },
        Finding::StaleDeadLetter(id) => match txn.message(id)? {
            Some(r) if r.state == State::Dead => false,
            _ => {
                txn.remove_dead(id)?;
                true
            }
        },
    })
}
