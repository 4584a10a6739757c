//! `webhook`: delivers each message by POSTing it as JSON to a URL the operator configures
//! — the way to hand Herald's email, SMS and push messages to a system of your own.
//!
//! This crate owns the request shape, the signature and the meaning of the receiver's
//! answer. It performs no I/O (the host sends the request), never reads the clock (the
//! signature time is `Delivery::now`) and never logs secrets, header values or content.
//!
//! # Configuration
//!
//! ```toml
//! [[providers]]
//! name = "hooks"
//! plugin = "webhook"
//! url = "https://hooks.example.com/herald"      # required, http or https
//! secret = "${HOOK_SECRET}"                      # optional, secret: signs each request
//! headers = { authorization = "${HOOK_AUTH}" }   # optional extra static headers
//! request_timeout = "10s"                        # optional: "500ms", "10s", "2m"
//! ```
//!
//! (`timeout` is a key the host owns for every provider, hence `request_timeout`; when
//! absent the host's default applies.) The request may only go to the host of `url`
//! (`allowed_hosts`). Header values are kept out of logs and `Debug`, so `headers` may
//! carry credentials given as `${ENV}` references. The plugin sets `content-type`,
//! `user-agent`, `idempotency-key` and `x-herald-signature` itself, and the transport owns
//! `host`, `content-length`, `connection` and `transfer-encoding`: none of these may
//! appear in `headers`.
//!
//! # The request
//!
//! `POST <url>` with these headers, in this order:
//!
//! ```text
//! content-type: application/json
//! user-agent: herald/<version>
//! idempotency-key: <message id>
//! x-herald-signature: t=<unix seconds>,v1=<hex HMAC-SHA256>   (only when `secret` is set)
//! <the configured headers, names lower-cased, sorted by name>
//! ```
//!
//! and a compact JSON body whose keys come in this order:
//!
//! ```text
//! {
//!   "id": "01HZX3K2J8Q9V7W6E5R4T3Y2U1",  Herald's message id (also `idempotency-key`)
//!   "channel": "email",                   "email" | "sms" | "push"
//!   "to": "ann@example.com",              address, E.164 number or device token
//!   ...the content fields of the channel, flattened to this level:
//!     email: "from", "subject", "text", "html", "reply_to",
//!            "headers" {name: value}, "attachments" [{"filename", "content_type", "content" (base64)}]
//!     sms:   "from", "body", "media_urls" [url]
//!     push:  "title", "body", "data" {key: value}, "badge", "sound", "collapse_id",
//!            "priority" ("high" | "normal"), "ttl_secs"
//!   "tags": ["rsvp"],
//!   "attempt": 1,                         1 for the first try, 2 for the first retry, ...
//!   "created_at": 1700000000000           when Herald accepted the message (Unix ms)
//! }
//! ```
//!
//! An optional field without a value is `null`, never left out. Fields may be added in
//! later versions: receivers must ignore keys they do not know.
//!
//! # The signature
//!
//! With `secret` set, every request carries
//! `x-herald-signature: t=<t>,v1=<sig>` where `t` is the Unix time in seconds at which the
//! attempt was made and
//! `sig = lowercase hex( HMAC-SHA256( key = the secret's UTF-8 bytes, data = "<t>.<raw body>" ) )`.
//!
//! To verify, a receiver:
//! 1. reads the raw body bytes, before any JSON parsing;
//! 2. splits the header on `,` into `key=value` items, takes `t` and every `v1` (ignore
//!    unknown keys: a future key rotation may send several `v1` items);
//! 3. computes the HMAC over `t`, `.` and the raw body, and compares it in constant time
//!    (Python `hmac.compare_digest`, Node `crypto.timingSafeEqual`) with a `v1`;
//! 4. refuses a `t` more than **5 minutes** away from its own clock, in either direction,
//!    so a captured request cannot be replayed later;
//! 5. de-duplicates on `idempotency-key`: delivery is at least once, and every retry is
//!    signed afresh (a new `t`) with the same key.
//!
//! ```python
//! import hashlib, hmac, time
//! def verify(secret: bytes, header: str, raw_body: bytes, tolerance=300) -> bool:
//!     items = [p.split("=", 1) for p in header.split(",") if "=" in p]
//!     t = next((v for k, v in items if k == "t"), None)
//!     if t is None or not t.isdigit() or abs(time.time() - int(t)) > tolerance:
//!         return False
//!     want = hmac.new(secret, t.encode() + b"." + raw_body, hashlib.sha256).hexdigest()
//!     return any(hmac.compare_digest(want, v) for k, v in items if k == "v1")
//! ```
//!
//! # What the answer means
//!
//! | answer | outcome |
//! | --- | --- |
//! | 2xx | `Accepted`; the provider message id is a string (or number) `id` field of a JSON response body, if any |
//! | 408, 5xx | `Retry`, honouring `Retry-After` (seconds or HTTP date) |
//! | 429 | `Retry` honouring `Retry-After`, not counted by the breaker |
//! | 401, 403 | `ProviderFailure`: the endpoint refuses our credentials, the next provider of the route takes over |
//! | 404, 405 | `ProviderFailure`: `url` points at nothing that takes POSTs; a config typo must not fail messages for good |
//! | other 4xx | `Rejected`: the receiver refuses this message |
//! | 3xx | `ProviderFailure`: point `url` at the final address |
//! | timeout, connect, TLS, I/O error | `Retry` |
//! | request refused by the host (host not allowed, malformed) | `ProviderFailure` |
//!
//! The manifest says `idempotent: false`: the receiver may de-duplicate on
//! `idempotency-key`, but Herald cannot know that it does.
#![deny(unsafe_code)]

use std::collections::BTreeMap;

use herald_plugin_api::http::retry_after_ms;
use herald_plugin_api::{
    Channel, ConfigError, ConfigKey, Content, Delivery, EmailContent, Host, HttpRequest,
    HttpResponse, Manifest, Outcome, Provider, ProviderConfig, PushContent, Secret, SmsContent,
    Step, TransportResponse, UnixMillis,
};
use herald_plugin_kit::config::request_timeout_ms;
use herald_plugin_kit::http_url::{UrlKey, UrlKind};
use herald_plugin_kit::outcome::Exchange;
use herald_plugin_kit::text::{REASON_CHARS, excerpt};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

herald_plugin_api::export_plugin!(Webhook);

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "x-herald-signature";

/// The `url` key, as its errors name it.
const URL: UrlKey<'static> = UrlKey {
    key: "url",
    example: "https://hooks.example.com/herald",
    credentials_hint: "send them in a header instead, e.g. headers = { authorization = \
                       \"${HOOK_AUTH}\" }",
};

/// The request to the configured URL, as failure reasons name it.
const REQUEST: Exchange<'static> = Exchange::new("webhook request");

/// Headers the plugin or the transport sets; `headers` may not name them.
const RESERVED_HEADERS: [&str; 8] = [
    "content-type",
    "user-agent",
    "idempotency-key",
    SIGNATURE_HEADER,
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
];

/// The `[[providers]]` keys this plugin reads, as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    url: String,
    #[serde(default)]
    secret: Option<Secret>,
    #[serde(default)]
    headers: BTreeMap<String, Secret>,
    #[serde(default)]
    request_timeout: Option<String>,
}

/// One configured webhook endpoint, validated.
#[derive(Debug)]
pub struct Webhook {
    /// The normalised URL the request goes to.
    url: String,
    /// The host of `url`, the only one the request may reach.
    host: String,
    secret: Option<Secret>,
    /// Extra headers: lower-cased names, values hidden from `Debug`.
    headers: Vec<(String, Secret)>,
    timeout_ms: Option<u64>,
}

/// The request body; field order is the documented key order.
#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    channel: Channel,
    to: &'a str,
    #[serde(flatten)]
    content: ContentFields<'a>,
    tags: &'a [String],
    attempt: u32,
    created_at: UnixMillis,
}

/// The content of the message, serialised without its channel tag so that its fields sit
/// beside `id` and `to`.
#[derive(Serialize)]
#[serde(untagged)]
enum ContentFields<'a> {
    Email(&'a EmailContent),
    Sms(&'a SmsContent),
    Push(&'a PushContent),
}

impl Provider for Webhook {
    fn manifest() -> Manifest {
        Manifest {
            name: "webhook".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: herald_plugin_api::API_VERSION.into(),
            description: "POSTs each message as JSON to a configured URL, optionally signed \
                          with HMAC-SHA256 (x-herald-signature)."
                .into(),
            channels: Channel::ALL.to_vec(),
            config: vec![
                ConfigKey::required("url", "http or https URL the messages are POSTed to"),
                ConfigKey::optional(
                    "secret",
                    "HMAC-SHA256 key: signs each request in the x-herald-signature header",
                )
                .secret(),
                ConfigKey::optional(
                    "headers",
                    "table of extra static request headers; values are never logged",
                ),
                ConfigKey::optional(
                    "request_timeout",
                    "per-request timeout such as \"10s\" or \"500ms\" (default: the host's)",
                ),
            ],
            webhooks: false,
            idempotent: false,
            blocking: false,
            batch: None,
            allowed_hosts: Vec::new(),
        }
    }

    fn new(config: ProviderConfig, host: Host) -> Result<Webhook, ConfigError> {
        let raw: RawConfig = config.parse()?;
        let name = &config.name;
        let err = |m: String| ConfigError::new(format!("provider {name:?}: {m}"));

        let url = URL.parse(&raw.url, UrlKind::Endpoint).map_err(err)?;

        let secret = match raw.secret {
            Some(s) if s.expose().is_empty() => {
                return Err(err(
                    "secret is empty; remove the key or set it to a random string of at least \
                     32 bytes"
                        .into(),
                ));
            }
            Some(s) => {
                if s.expose().len() < 16 {
                    host.log.warn(format!(
                        "provider {name:?}: secret is shorter than 16 bytes; use at least 32 \
                         random bytes"
                    ));
                }
                Some(s)
            }
            None => None,
        };

        let mut headers = Vec::with_capacity(raw.headers.len());
        for (header_name, value) in raw.headers {
            let lower = header_name.to_ascii_lowercase();
            if !is_token(&lower) {
                return Err(err(format!(
                    "headers: {header_name:?} is not a valid header name (letters, digits and \
                     !#$%&'*+-.^_`|~ only)"
                )));
            }
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(err(format!(
                    "headers: {header_name:?} is set by Herald itself; remove it from headers"
                )));
            }
            if value
                .expose()
                .bytes()
                .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
            {
                return Err(err(format!(
                    "headers: the value of {header_name:?} contains a line break or control \
                     character"
                )));
            }
            headers.push((lower, value));
        }
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = headers.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(err(format!(
                "headers: {:?} is given twice (header names are case-insensitive)",
                w[0].0
            )));
        }

        let timeout_ms = request_timeout_ms(raw.request_timeout.as_deref()).map_err(err)?;

        if !url.is_https() && !url.is_loopback() {
            host.log.warn(format!(
                "provider {name:?}: url uses plain http to {}; message content crosses the \
                 network unencrypted",
                url.host
            ));
        }

        Ok(Webhook {
            url: url.url,
            host: url.host,
            secret,
            headers,
            timeout_ms,
        })
    }

    fn allowed_hosts(&self) -> Vec<String> {
        vec![self.host.clone()]
    }

    fn begin(&self, delivery: &Delivery) -> Step {
        let message = &delivery.message;
        let body = Body {
            id: &message.id,
            channel: message.channel(),
            to: &message.to,
            content: match &message.content {
                Content::Email(c) => ContentFields::Email(c),
                Content::Sms(c) => ContentFields::Sms(c),
                Content::Push(c) => ContentFields::Push(c),
            },
            tags: &message.tags,
            attempt: delivery.attempt,
            created_at: message.created_at,
        };
        let body = match serde_json::to_string(&body) {
            Ok(b) => b,
            Err(e) => {
                return Step::done(Outcome::provider_failure(format!(
                    "encoding the webhook body: {e}"
                )));
            }
        };
        let mut request = HttpRequest::new("POST", self.url.as_str())
            .header("content-type", "application/json")
            .header("user-agent", concat!("herald/", env!("CARGO_PKG_VERSION")))
            .header("idempotency-key", message.id.as_str());
        if let Some(secret) = &self.secret {
            let t = delivery.now / 1000;
            match sign(secret, t, &body) {
                Some(sig) => request = request.header(SIGNATURE_HEADER, format!("t={t},v1={sig}")),
                None => {
                    return Step::done(Outcome::provider_failure(
                        "the secret cannot be used as an HMAC key",
                    ));
                }
            }
        }
        for (name, value) in &self.headers {
            request = request.header(name, value.expose());
        }
        request.body = body;
        request.timeout_ms = self.timeout_ms;
        Step::http(request, Value::Null)
    }

    fn resume(&self, delivery: &Delivery, _state: Value, response: TransportResponse) -> Step {
        Step::done(match REQUEST.http(&response) {
            Ok(r) => outcome_for(r, delivery.now),
            Err(outcome) => outcome,
        })
    }
}

/// Maps the receiver's HTTP answer to an outcome.
fn outcome_for(r: &HttpResponse, now: UnixMillis) -> Outcome {
    let status = r.status;
    let said = || {
        format!(
            "webhook endpoint answered {status}{}",
            excerpt(&r.body, REASON_CHARS)
        )
    };
    let after_ms = r.header("retry-after").and_then(|v| retry_after_ms(v, now));
    match status {
        200..=299 => Outcome::Accepted {
            provider_message_id: response_id(&r.body),
            delivered: false,
        },
        429 => Outcome::Retry {
            after_ms,
            reason: said(),
            breaker: false,
        },
        408 | 500..=599 => Outcome::Retry {
            after_ms,
            reason: said(),
            breaker: true,
        },
        401 | 403 => Outcome::provider_failure(format!(
            "{}; the endpoint refuses our credentials (check secret and headers)",
            said()
        )),
        404 | 405 => Outcome::provider_failure(format!(
            "{}; the endpoint does not take POSTs at this url (check url)",
            said()
        )),
        400..=499 => Outcome::rejected(said()),
        300..=399 => Outcome::provider_failure(format!(
            "{} (redirect to {}); set url to the final address",
            said(),
            r.header("location").unwrap_or("nowhere")
        )),
        _ => Outcome::retry(said()),
    }
}

/// The `id` field of a JSON response body, when there is one.
fn response_id(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    match value.get("id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Lower-case hex HMAC-SHA256 of `"<t>.<body>"`.
fn sign(secret: &Secret, t: u64, body: &str) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).ok()?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// RFC 9110 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests;
