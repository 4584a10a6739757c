//! The query of `GET /v1/events`: the token, the filters and where to start.
//!
//! Filters have the socket `subscribe` semantics, with lists where lists make sense:
//! `tag` (any of), `kind` (any of), `channel` (any of), `id` (any of) — each repeatable,
//! all combined with AND, and always inside the token's scope. Unknown parameters are
//! refused, so a misspelt filter is an error and not a silent "everything".
//!
//! Owns: parameter names and their bounds. Must not: check tokens or origins.

use herald_plugin_api::{Channel, Event, EventKind};

/// Most values of one list parameter.
const MAX_VALUES: usize = 64;

/// What a stream passes on (inside the token's scope).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFilter {
    pub tags: Vec<String>,
    pub kinds: Vec<EventKind>,
    pub channels: Vec<Channel>,
    pub ids: Vec<String>,
}

impl StreamFilter {
    pub fn matches(&self, e: &Event) -> bool {
        (self.tags.is_empty() || e.tags.iter().any(|t| self.tags.contains(t)))
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && (self.channels.is_empty() || e.channel.is_some_and(|c| self.channels.contains(&c)))
            && (self.ids.is_empty()
                || e.message_id
                    .as_ref()
                    .is_some_and(|id| self.ids.contains(id)))
    }
}

/// The parsed query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub token: Option<String>,
    pub filter: StreamFilter,
    pub from_seq: Option<u64>,
    pub epoch: Option<String>,
}

impl Query {
    /// Parses `tag=..&kind=..&channel=..&id=..&from_seq=..&epoch=..&token=..`. The error
    /// names the parameter.
    pub fn parse(query: &str) -> Result<Query, String> {
        let mut q = Query::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.into_owned();
            let full = |n: usize| {
                if n >= MAX_VALUES {
                    Err(format!("at most {MAX_VALUES} {k} parameters"))
                } else {
                    Ok(())
                }
            };
            match k.as_ref() {
                "token" => q.token = Some(v),
                "tag" => {
                    full(q.filter.tags.len())?;
                    q.filter.tags.push(v);
                }
                "kind" => {
                    full(q.filter.kinds.len())?;
                    let kind = EventKind::parse(&v).ok_or_else(|| {
                        format!("kind {v:?} is not an event kind (queued, sent, delivered, inbound, ...)")
                    })?;
                    q.filter.kinds.push(kind);
                }
                "channel" => {
                    full(q.filter.channels.len())?;
                    let c = Channel::parse(&v)
                        .ok_or_else(|| format!("channel {v:?} is not email, sms or push"))?;
                    q.filter.channels.push(c);
                }
                "id" => {
                    full(q.filter.ids.len())?;
                    q.filter.ids.push(v);
                }
                "from_seq" => {
                    q.from_seq = Some(v.parse().map_err(|_| {
                        format!("from_seq {v:?} is not a sequence number (0 = everything retained)")
                    })?);
                }
                "epoch" => q.epoch = Some(v),
                other => {
                    return Err(format!(
                        "unknown parameter {other:?} (token, tag, kind, channel, id, from_seq, epoch)"
                    ));
                }
            }
        }
        Ok(q)
    }
}

/// A `Last-Event-ID` as this daemon writes SSE ids: `<epoch>:<seq>`, or a bare `<seq>`.
pub fn parse_last_event_id(v: &str) -> Option<(Option<&str>, u64)> {
    match v.trim().split_once(':') {
        Some((epoch, seq)) => Some((Some(epoch), seq.parse().ok()?)),
        None => Some((None, v.trim().parse().ok()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_parse_and_unknown_ones_are_refused() {
        let q = Query::parse(
            "tag=wedding%3A42&tag=rsvp&kind=delivered&kind=inbound&channel=sms&from_seq=7&epoch=ab&token=t.t.t",
        )
        .unwrap();
        assert_eq!(q.filter.tags, ["wedding:42", "rsvp"]);
        assert_eq!(q.filter.kinds, [EventKind::Delivered, EventKind::Inbound]);
        assert_eq!(q.filter.channels, [Channel::Sms]);
        assert_eq!(
            (q.from_seq, q.epoch.as_deref(), q.token.as_deref()),
            (Some(7), Some("ab"), Some("t.t.t"))
        );
        for (bad, needle) in [
            ("tags=x", "unknown parameter \"tags\""),
            ("kind=arrived", "not an event kind"),
            ("channel=fax", "not email, sms or push"),
            ("from_seq=-1", "from_seq"),
        ] {
            let err = Query::parse(bad).unwrap_err();
            assert!(err.contains(needle), "{bad} → {err}");
        }
        let many = (0..65)
            .map(|i| format!("tag=t{i}"))
            .collect::<Vec<_>>()
            .join("&");
        assert!(Query::parse(&many).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn last_event_ids() {
        assert_eq!(parse_last_event_id("ab12:40"), Some((Some("ab12"), 40)));
        assert_eq!(parse_last_event_id("40"), Some((None, 40)));
        assert_eq!(parse_last_event_id("x:y"), None);
    }
}
