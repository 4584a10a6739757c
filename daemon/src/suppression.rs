//! The operator's suppression-list requests on the socket: `suppression_list` (paged, in
//! (channel, key) order), `suppression_add`, `suppression_remove` and `suppression_check`.
//! Checks each request (recipients as `send` checks a `to`, the reason, the bounds), sends
//! the writes through the committer (answered only once durable, like every mutation) and
//! serves the reads from the store, as wire entries.
//!
//! Owns: these requests' checks and answers. Must not: decide what is suppressed or how
//! recipients compare (the store's `lifecycle` and `recipients` do), or write except through
//! the committer.

use herald_plugin_api::{Channel, InvalidField, check_one_line, validate_recipient};
use herald_protocol::{
    ErrorBody, ErrorCode, Response, SuppressionCursor, SuppressionEntry as WireEntry,
    SuppressionSource as WireSource, SuppressionStatus,
};

use crate::commit::{CommitError, Committer};
use crate::store::{Op, OpResult, Store, Suppression, SuppressionEntry, SuppressionSource};

/// Most entries in one page of `suppression_list`, and recipients in one
/// `suppression_check`.
pub const MAX_PAGE: usize = 1000;
/// A page's size when the request names none.
pub const DEFAULT_PAGE: usize = 100;
/// The longest reason an operator may give, in bytes.
pub const MAX_REASON: usize = 500;

fn field_error(field: &str, e: InvalidField) -> ErrorBody {
    ErrorBody::field(field, e.reason)
}

fn internal(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::Internal, e.to_string())
}

/// The recipient checked as a `send` checks its `to`, and its canonical key.
fn key_of(
    store: &dyn Store,
    field: &str,
    channel: Channel,
    recipient: &str,
) -> Result<herald_plugin_api::RecipientKey, ErrorBody> {
    validate_recipient(channel, recipient).map_err(|e| field_error(field, e))?;
    store.recipient_key(channel, recipient).ok_or_else(|| {
        ErrorBody::field(
            field,
            format!("{recipient:?} is not a {channel} recipient Herald can key"),
        )
    })
}

pub fn source(s: SuppressionSource) -> WireSource {
    match s {
        SuppressionSource::Bounce => WireSource::Bounce,
        SuppressionSource::Complaint => WireSource::Complaint,
        SuppressionSource::Rejected => WireSource::Rejected,
        SuppressionSource::OptOut => WireSource::OptOut,
        SuppressionSource::Provider => WireSource::Provider,
        SuppressionSource::Operator => WireSource::Operator,
    }
}

fn wire(channel: Channel, key: String, e: Suppression) -> WireEntry {
    WireEntry {
        channel,
        recipient: e.recipient,
        key,
        reason: e.reason,
        source: source(e.source),
        at: e.at,
    }
}

fn wire_entry(e: SuppressionEntry) -> WireEntry {
    wire(e.channel, e.key, e.entry)
}

/// `suppression_list`: a page after `after`, bounded by `limit` and by the frame.
pub fn list(
    store: &dyn Store,
    after: Option<SuppressionCursor>,
    limit: Option<u32>,
    max_frame: u32,
) -> Result<Response, ErrorBody> {
    let limit = match limit {
        None => DEFAULT_PAGE,
        Some(n) if (1..=MAX_PAGE as u32).contains(&n) => n as usize,
        Some(n) => {
            return Err(ErrorBody::field(
                "limit",
                format!("must be 1-{MAX_PAGE}, not {n}"),
            ));
        }
    };
    let page = store
        .suppressions(after.as_ref().map(|c| (c.channel, c.key.as_str())), limit)
        .map_err(internal)?;
    let full = page.len() == limit;
    // Bounded by the frame too: a cut page goes on from its last entry.
    let budget = (max_frame as usize).saturating_sub(1024);
    let mut used = 0;
    let mut entries = Vec::with_capacity(page.len());
    let mut cut = false;
    for e in page {
        let w = wire_entry(e);
        let size = serde_json::to_vec(&w).map_or(usize::MAX, |b| b.len() + 1);
        if used + size > budget && !entries.is_empty() {
            cut = true;
            break;
        }
        used += size;
        entries.push(w);
    }
    let next = (full || cut)
        .then(|| entries.last())
        .flatten()
        .map(|e: &WireEntry| SuppressionCursor {
            channel: e.channel,
            key: e.key.clone(),
        });
    Ok(Response::SuppressionList { entries, next })
}

fn commit_result(r: Result<OpResult, CommitError>) -> Result<(Option<WireEntry>, bool), ErrorBody> {
    match r {
        Ok(OpResult::Suppression { entry, changed }) => Ok((entry.map(wire_entry), changed)),
        Ok(other) => Err(internal(format!("unexpected store result {other:?}"))),
        Err(e) => Err(crate::ipc::commit_error(e)),
    }
}

/// `suppression_add`: an operator's entry, durable before the answer.
pub async fn add(
    store: &dyn Store,
    committer: &Committer,
    channel: Channel,
    recipient: String,
    reason: String,
) -> Result<Response, ErrorBody> {
    key_of(store, "recipient", channel, &recipient)?;
    check_one_line("reason", &reason).map_err(|e| field_error("reason", e))?;
    if reason.trim().is_empty() || reason.len() > MAX_REASON {
        return Err(ErrorBody::field(
            "reason",
            format!("must be 1-{MAX_REASON} bytes, not blank"),
        ));
    }
    let (entry, added) = commit_result(
        committer
            .submit(Op::Suppress {
                channel,
                recipient,
                reason,
            })
            .await,
    )?;
    let entry = entry.ok_or_else(|| internal("the store keyed no entry"))?;
    if added {
        // The address stays out of the log: the entry's channel and source say enough.
        tracing::info!(%channel, "an operator added a recipient to the suppression list");
    }
    Ok(Response::SuppressionAdded { entry, added })
}

/// `suppression_remove`: takes every spelling of the recipient off the list.
pub async fn remove(
    store: &dyn Store,
    committer: &Committer,
    channel: Channel,
    recipient: String,
) -> Result<Response, ErrorBody> {
    key_of(store, "recipient", channel, &recipient)?;
    let (entry, removed) = commit_result(
        committer
            .submit(Op::Unsuppress { channel, recipient })
            .await,
    )?;
    if removed {
        tracing::info!(%channel, "an operator removed a recipient from the suppression list");
    }
    Ok(Response::SuppressionRemoved { entry })
}

/// `suppression_check`: one status per recipient, in order; refused with `too_large` when
/// the answer would not fit a frame (long spellings and reasons: check fewer at once).
pub fn check(
    store: &dyn Store,
    channel: Channel,
    recipients: Vec<String>,
    max_frame: u32,
) -> Result<Response, ErrorBody> {
    if recipients.len() > MAX_PAGE {
        return Err(ErrorBody::field(
            "recipients",
            format!(
                "at most {MAX_PAGE} recipients in one check, not {}",
                recipients.len()
            ),
        ));
    }
    let keys = recipients
        .iter()
        .enumerate()
        .map(|(i, r)| key_of(store, &format!("recipients[{i}]"), channel, r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(keys.len());
    for (recipient, key) in recipients.into_iter().zip(keys) {
        let entry = store
            .suppression(channel, &key)
            .map_err(internal)?
            .map(|e| wire(channel, key.as_str().to_string(), e));
        out.push(SuppressionStatus {
            recipient,
            key: key.into_string(),
            entry,
        });
    }
    // JSON is the larger encoding; size by it.
    let size = serde_json::to_vec(&out).map_or(usize::MAX, |b| b.len());
    let budget = (max_frame as usize).saturating_sub(1024);
    if size > budget {
        return Err(ErrorBody::new(
            ErrorCode::TooLarge,
            format!(
                "the answer for {} recipients would be {size} bytes, more than a frame \
                 (daemon.max_frame); check fewer at once",
                out.len()
            ),
        ));
    }
    Ok(Response::SuppressionChecked(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::MemoryStore;

    fn store_with(n: usize) -> MemoryStore {
        let s = MemoryStore::new();
        let ops: Vec<Op> = (0..n)
            .map(|i| Op::Suppress {
                channel: Channel::Email,
                recipient: format!("User {i:03} <USER{i:03}@example.org>"),
                reason: "r".repeat(400),
            })
            .collect();
        s.commit(1, &ops).unwrap();
        s
    }

    fn page(r: Response) -> (Vec<WireEntry>, Option<SuppressionCursor>) {
        match r {
            Response::SuppressionList { entries, next } => (entries, next),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_page_is_bounded_by_its_limit_and_by_a_frame_and_goes_on_from_its_cursor() {
        let s = store_with(30);
        for bad in [0, 1001] {
            let e = list(&s, None, Some(bad), 1 << 20).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("limit"));
        }
        let (first, next) = page(list(&s, None, Some(10), 1 << 20).unwrap());
        assert_eq!(first.len(), 10);
        assert_eq!(first[0].key, "user000@example.org");
        assert_eq!(first[0].recipient, "User 000 <USER000@example.org>");
        assert_eq!(first[0].source, WireSource::Operator);
        let next = next.unwrap();
        assert_eq!(next.key, "user009@example.org");
        let (rest, end) = page(list(&s, Some(next), None, 1 << 20).unwrap());
        assert_eq!(rest.len(), 20);
        assert_eq!(rest[0].key, "user010@example.org");
        assert_eq!(end, None, "the list ended before the limit");
        // A small frame cuts the page, and its cursor goes on from the last entry sent.
        let (cut, next) = page(list(&s, None, Some(30), 8 * 1024).unwrap());
        assert!(cut.len() < 30 && !cut.is_empty(), "{}", cut.len());
        assert_eq!(next.unwrap().key, cut.last().unwrap().key);
    }

    #[test]
    fn check_names_the_bad_recipient_and_refuses_an_answer_beyond_a_frame() {
        let s = store_with(3);
        let e = check(
            &s,
            Channel::Email,
            vec!["a@example.org".into(), "nope".into()],
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("recipients[1]"));
        let too_many = vec!["a@example.org".to_string(); MAX_PAGE + 1];
        let e = check(&s, Channel::Email, too_many, 1 << 20).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("recipients"));
        let Response::SuppressionChecked(out) = check(
            &s,
            Channel::Email,
            vec!["user001@EXAMPLE.org".into(), "b@example.org".into()],
            1 << 20,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(out[0].key, "user001@example.org");
        assert_eq!(out[0].entry.as_ref().unwrap().reason, "r".repeat(400));
        assert_eq!(out[1].entry, None);
        let e = check(
            &s,
            Channel::Email,
            vec!["user001@example.org".into(); 10],
            4 * 1024,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
    }
}
