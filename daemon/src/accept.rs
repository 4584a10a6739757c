//! The accept path's validation: a `SendMessage` from a client becomes a [`NewMessage`]
//! or an error naming the field (by its path, e.g. `tags[2]`) and the fix. Runs before
//! anything touches storage. The content and recipient rules live in
//! `herald_plugin_api::validate`; this adds what depends on the request or the config
//! (route, tags, idempotency key, schedule, size).

use herald_plugin_api::{
    InvalidField, UnixMillis, check_one_line, validate_content, validate_recipient,
};
use herald_protocol::{ErrorBody, ErrorCode, SendMessage};

use crate::live::Live;
use crate::store::{NewMessage, new_id};

const MAX_TAGS: usize = 32;
const MAX_TAG_LEN: usize = 64;
const MAX_IDEMPOTENCY_KEY: usize = 256;

fn field_error(e: InvalidField) -> ErrorBody {
    ErrorBody::field(&e.field, e.reason)
}

pub fn validate(m: SendMessage, live: &Live, now: UnixMillis) -> Result<NewMessage, ErrorBody> {
    let channel = m.content.channel();
    if !live.routing.routes.contains_key(&channel) {
        return Err(ErrorBody::new(
            ErrorCode::NoRoute,
            format!("no route for channel {channel}; add {channel} = [\"<provider>\"] to [routes]"),
        ));
    }
    validate_recipient(channel, &m.to).map_err(field_error)?;
    validate_content(&m.content).map_err(field_error)?;
    if m.tags.len() > MAX_TAGS {
        return Err(ErrorBody::field("tags", format!("at most {MAX_TAGS} tags")));
    }
    for (i, t) in m.tags.iter().enumerate() {
        let field = format!("tags[{i}]");
        check_one_line(&field, t).map_err(field_error)?;
        if t.is_empty() || t.len() > MAX_TAG_LEN {
            return Err(ErrorBody::field(
                &field,
                format!("a tag must be 1-{MAX_TAG_LEN} bytes"),
            ));
        }
    }
    if let Some(k) = &m.idempotency_key {
        check_one_line("idempotency_key", k).map_err(field_error)?;
        if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
            return Err(ErrorBody::field(
                "idempotency_key",
                format!("must be 1-{MAX_IDEMPOTENCY_KEY} bytes"),
            ));
        }
    }
    let retry = &live.config.retry;
    if let Some(at) = m.send_at {
        // Far-future sends are allowed, but not beyond what the store keeps.
        let horizon = now.saturating_add(live.config.daemon.retention_ms);
        if at > horizon {
            return Err(ErrorBody::field(
                "send_at",
                format!(
                    "is more than daemon.retention ({} days) ahead",
                    live.config.daemon.retention_ms / 86_400_000
                ),
            ));
        }
    }
    let size = postcard::experimental::serialized_size(&m).unwrap_or(usize::MAX);
    let max = live.config.daemon.max_message;
    if size > max {
        return Err(ErrorBody::new(
            ErrorCode::TooLarge,
            format!("the message is {size} bytes encoded; daemon.max_message is {max}"),
        ));
    }
    Ok(NewMessage {
        id: new_id(),
        to: m.to,
        content: m.content,
        tags: m.tags,
        idempotency_key: m.idempotency_key,
        send_at: m.send_at,
        ttl_ms: retry.ttl_ms,
        idempotency_window_ms: live.config.daemon.idempotency_window_ms,
        override_suppression: m.override_suppression,
        lane: m.lane,
    })
}
