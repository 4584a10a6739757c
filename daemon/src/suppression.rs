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

/// `suppression_check`: one status per recipient, in order.
pub fn check(
    store: &dyn Store,
    channel: Channel,
    recipients: Vec<String>,
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
    Ok(Response::SuppressionChecked(out))
}
