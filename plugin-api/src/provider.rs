//! The sans-IO provider contract: what a plugin declares ([`Manifest`]), how it is
//! configured ([`ProviderConfig`]), and the step machine through which it delivers a
//! message ([`Provider::begin`] / [`Provider::resume`] returning [`Step`]s) and reads the
//! provider's webhooks ([`Provider::webhook`]).
//!
//! A plugin never performs I/O: it describes requests ([`Request`]) and the host performs
//! them, handing back a [`TransportResponse`]. These types cross the ABI as JSON only, so
//! they may use internally tagged enums.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::log::Logger;
use crate::secret::Secret;
use crate::types::{Attachment, Channel, Message, UnixMillis};

/// One configuration key a plugin reads, for `--check` output and clear errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigKey {
    pub name: String,
    #[serde(default)]
    pub required: bool,
    /// Secrets must be given as `${ENV_VAR}` references and are never logged.
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub description: String,
}

impl ConfigKey {
    pub fn required(name: &str, description: &str) -> ConfigKey {
        ConfigKey {
            name: name.into(),
            required: true,
            secret: false,
            description: description.into(),
        }
    }
    pub fn optional(name: &str, description: &str) -> ConfigKey {
        ConfigKey {
            required: false,
            ..ConfigKey::required(name, description)
        }
    }
    pub fn secret(mut self) -> ConfigKey {
        self.secret = true;
        self
    }
}

/// What a plugin is, stated once at load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The plugin name (`resend` for `libherald_resend.so`).
    pub name: String,
    /// The version of the plugin crate itself.
    pub version: String,
    /// The `herald-plugin-api` version the plugin was built against; checked by the loader
    /// with a caret rule.
    pub api_version: String,
    #[serde(default)]
    pub description: String,
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub config: Vec<ConfigKey>,
    /// Whether the plugin parses delivery-status or inbound webhooks.
    #[serde(default)]
    pub webhooks: bool,
    /// Whether re-sending the same message id is deduplicated by the provider.
    #[serde(default)]
    pub idempotent: bool,
    /// Hosts the plugin talks to by default (before any `base_url` override).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Whether `begin`/`resume` may block (file I/O, waiting on a lock held across calls).
    /// Plugins that only compute (microseconds) say `false`, and the host calls them on its
    /// async workers instead of handing each call to a blocking thread. Absent means `true`.
    #[serde(default = "yes")]
    pub blocking: bool,
    /// Whether the plugin can send several messages in one request
    /// ([`Provider::begin_batch`]), and how many at most. Absent (plugins built against
    /// plugin-api 1.1 and older): every message goes alone. Added in plugin-api 1.2.
    #[serde(default)]
    pub batch: Option<BatchLimits>,
}

/// What a plugin's batch request takes (see [`Manifest::batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLimits {
    /// The most messages in one batch request (Resend: 100). At least 2.
    pub max: u32,
}

/// The configuration of one provider instance, as the host hands it to [`Provider::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderConfig {
    /// The instance name from `[[providers]] name`; used in routes and webhook paths.
    pub name: String,
    /// Every key of the `[[providers]]` table that the host does not own itself, with
    /// `${ENV}` references already resolved.
    #[serde(default)]
    pub settings: serde_json::Map<String, Value>,
    /// The public URL at which this instance's webhooks arrive
    /// (`<webhooks.public_url>/webhooks/<name>`), when the operator configured one.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

impl ProviderConfig {
    /// Deserialises the settings into the plugin's typed config. Use
    /// `#[serde(deny_unknown_fields)]` on `T` so a misspelt key is reported.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        serde_json::from_value(Value::Object(self.settings.clone()))
            .map_err(|e| ConfigError::new(format!("provider {:?}: {e}", self.name)))
    }
}

/// A configuration error reported by [`Provider::new`]: say which key is wrong and how to
/// fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigError {
    pub message: String,
}

impl ConfigError {
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError {
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The message being delivered, with the attempt number (1 for the first) and the host's
/// clock. Plugins never read the clock themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub message: Message,
    pub attempt: u32,
    pub now: UnixMillis,
}

/// An HTTP request for the host to perform. `Debug` redacts credential headers.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
    /// Per-request timeout; the host applies its default when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Require HTTP/2 (APNs). Over `http://` the host uses prior knowledge.
    #[serde(default)]
    pub http2: bool,
}

/// Header names whose values are credentials and never printed.
pub fn is_credential_header(name: &str) -> bool {
    const NAMES: [&str; 5] = [
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                let v = if is_credential_header(n) {
                    "***"
                } else {
                    v.as_str()
                };
                (n.as_str(), v)
            })
            .collect();
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body_len", &self.body.len())
            .field("timeout_ms", &self.timeout_ms)
            .field("http2", &self.http2)
            .finish()
    }
}

impl HttpRequest {
    pub fn new(method: &str, url: impl Into<String>) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: String::new(),
            timeout_ms: None,
            http2: false,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> HttpRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn json(mut self, body: &Value) -> HttpRequest {
        self.headers
            .push(("content-type".into(), "application/json".into()));
        self.body = body.to_string();
        self
    }

    pub fn form(mut self, body: String) -> HttpRequest {
        self.headers.push((
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
        self.body = body;
        self
    }
}

/// How the host's SMTP transport secures the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// STARTTLS required (port 587).
    Starttls,
    /// Implicit TLS (port 465).
    Implicit,
    /// No TLS: local test sinks only.
    None,
}

/// An email for the host's SMTP transport to build (MIME) and submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpRequest {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Envelope and header sender.
    pub from: String,
    pub to: Vec<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    pub subject: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    /// `Message-ID` header value including angle brackets.
    pub message_id: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// One request for the host to perform. JSON: `{"type": "http", ...fields}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Http(HttpRequest),
    Smtp(SmtpRequest),
}

/// An HTTP response as the host received it. Header names are lower case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
}

impl HttpResponse {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The final SMTP reply for a submission (`250` after DATA on success).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpReply {
    pub code: u16,
    /// Enhanced status code (`5.1.1`), when the server sent one.
    #[serde(default)]
    pub enhanced: Option<String>,
    #[serde(default)]
    pub message: String,
}

/// Why the host could not complete a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportErrorKind {
    Timeout,
    Connect,
    Tls,
    Io,
    /// The request never left: its host is not in the plugin's allowed hosts, or it was
    /// malformed (bad URL, bad header). Not worth retrying.
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportError {
    pub kind: TransportErrorKind,
    pub message: String,
}

/// What came back for a [`Request`]. JSON: `{"type": "error", "kind": "timeout", ...}` —
/// the tag is `type` because `TransportError` has a `kind` field of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TransportResponse {
    Http(HttpResponse),
    Smtp(SmtpReply),
    Error(TransportError),
}

/// The result of one delivery exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The provider took the message. `delivered` is set by providers that know delivery
    /// happened at once (the development outbox).
    Accepted {
        #[serde(default)]
        provider_message_id: Option<String>,
        #[serde(default)]
        delivered: bool,
    },
    /// Try the same provider again later (timeout, 5xx, 429). `after_ms` is the provider's
    /// wait hint. `breaker: false` for signals that say nothing about provider health (429).
    /// `breaker: false` *with* `after_ms` is a provider-wide wait (a rate limit's or a
    /// quota's `Retry-After`): the daemon pauses the whole provider instance until then, for
    /// every message, and the message waits or moves on without using up an attempt.
    Retry {
        #[serde(default)]
        after_ms: Option<u64>,
        reason: String,
        #[serde(default = "yes")]
        breaker: bool,
    },
    /// This provider cannot deliver now (auth, misconfiguration, outage): try the next
    /// provider of the route.
    ProviderFailure { reason: String },
    /// The message itself is undeliverable (bad address, unregistered token, opted out).
    /// No fallback. `bounced` marks a hard bounce; `suppress` adds the recipient to the
    /// suppression list.
    Rejected {
        reason: String,
        #[serde(default)]
        bounced: bool,
        #[serde(default)]
        suppress: bool,
    },
}

fn yes() -> bool {
    true
}

impl Outcome {
    pub fn retry(reason: impl Into<String>) -> Outcome {
        Outcome::Retry {
            after_ms: None,
            reason: reason.into(),
            breaker: true,
        }
    }
    pub fn rejected(reason: impl Into<String>) -> Outcome {
        Outcome::Rejected {
            reason: reason.into(),
            bounced: false,
            suppress: false,
        }
    }
    pub fn provider_failure(reason: impl Into<String>) -> Outcome {
        Outcome::ProviderFailure {
            reason: reason.into(),
        }
    }
}

/// One step of a delivery exchange.
// Steps cross the ABI as JSON and live for one call; boxing the request buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Perform `request`, then call [`Provider::resume`] with `state` and the response.
    Call {
        request: Request,
        #[serde(default)]
        state: Value,
    },
    Done {
        outcome: Outcome,
    },
    /// The end of a batch exchange ([`Provider::begin_batch`]): one outcome per delivery,
    /// in the order of the deliveries. (A batch exchange may also end with [`Step::Done`]:
    /// then that one outcome is every delivery's, as for a request refused as a whole.)
    /// Added in plugin-api 1.2; a single exchange never returns it.
    DoneBatch {
        outcomes: Vec<Outcome>,
    },
}

impl Step {
    pub fn call(request: Request, state: Value) -> Step {
        Step::Call { request, state }
    }
    pub fn http(request: HttpRequest, state: Value) -> Step {
        Step::Call {
            request: Request::Http(request),
            state,
        }
    }
    pub fn done(outcome: Outcome) -> Step {
        Step::Done { outcome }
    }
    pub fn done_batch(outcomes: Vec<Outcome>) -> Step {
        Step::DoneBatch { outcomes }
    }
}

/// A webhook request as the host's HTTP listener received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRequest {
    pub method: String,
    /// The public URL the provider called (what it signed): `webhook_url` + any query.
    pub url: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
}

impl WebhookRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a provider status webhook says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateKind {
    Sent,
    Deferred,
    Delivered,
    Bounced,
    Complained,
    Failed,
    Opened,
    Clicked,
    /// The carrier failed the message for a reason it documents as temporary (Twilio
    /// 30003/30008): send it again after `after_ms`, if the message's `retry.max_attempts`
    /// and time-to-live allow another attempt; otherwise it fails as with `Failed`. Added in
    /// plugin-api 1.1 (appended, so updates stored by older hosts still decode).
    Resend {
        after_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// The provider's id for the message (what `Accepted` returned).
    #[serde(default)]
    pub provider_message_id: Option<String>,
    /// Herald's id, when the provider echoes correlation data back.
    #[serde(default)]
    pub message_id: Option<String>,
    pub kind: UpdateKind,
    /// The provider's event id, for de-duplication of redelivered webhooks.
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub at: Option<UnixMillis>,
    #[serde(default)]
    pub detail: Option<String>,
    /// Add the recipient to the suppression list (hard bounce, complaint, opt-out).
    #[serde(default)]
    pub suppress: bool,
}

/// A reply received from a recipient (an SMS "YES").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessage {
    pub channel: Channel,
    pub from: String,
    pub to: String,
    pub body: String,
    #[serde(default)]
    pub provider_message_id: Option<String>,
    /// `Some(true)` for an opt-out keyword (STOP), `Some(false)` for an opt-in (START).
    #[serde(default)]
    pub opt_out: Option<bool>,
}

/// The HTTP answer the host sends back to the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookResponse {
    pub status: u16,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub body: String,
}

impl WebhookResponse {
    pub fn ok() -> WebhookResponse {
        WebhookResponse {
            status: 200,
            content_type: None,
            body: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookOutput {
    #[serde(default)]
    pub updates: Vec<StatusUpdate>,
    #[serde(default)]
    pub inbound: Vec<InboundMessage>,
    pub response: WebhookResponse,
}

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum WebhookError {
    /// Missing or wrong signature, or a timestamp outside the tolerance: answer 401.
    Unauthorized(String),
    /// Signed correctly but unparseable: answer 400.
    BadRequest(String),
    /// This plugin takes no webhooks: answer 404.
    Unsupported,
}

/// What the host gives a plugin instance besides its config.
#[derive(Debug, Clone)]
pub struct Host {
    pub log: Logger,
}

/// The safe plugin trait. Implement it and export it with [`crate::export_plugin!`].
///
/// Methods take `&self` and may be called from several host threads at once; keep caches
/// (OAuth tokens, JWTs) behind a `Mutex`. A panic in any method is caught at the ABI
/// boundary and becomes a retryable error; the instance is then re-created from its config.
pub trait Provider: Send + Sync + Sized + 'static {
    fn manifest() -> Manifest;

    /// Validates the config and builds an instance. Called at load and at every reload.
    fn new(config: ProviderConfig, host: Host) -> Result<Self, ConfigError>;

    /// Hosts this instance may call, checked by the host on every request: the manifest's
    /// hosts, or the host of a configured `base_url`. Entries are host names or IP
    /// addresses without port or brackets (`api.resend.com`, `127.0.0.1`, `::1`); HTTP
    /// requests are checked against their URL's host, SMTP requests against their `host`.
    fn allowed_hosts(&self) -> Vec<String> {
        Self::manifest().allowed_hosts
    }

    /// Starts delivering `delivery.message`.
    fn begin(&self, delivery: &Delivery) -> Step;

    /// Continues after the host performed the request of a [`Step::Call`].
    fn resume(&self, delivery: &Delivery, state: Value, response: TransportResponse) -> Step;

    /// Which messages may share a batch request: the host groups messages with equal keys
    /// (up to [`BatchLimits::max`]) and sends each group through [`Provider::begin_batch`];
    /// `None` sends the message alone through [`Provider::begin`] (Resend: a message with
    /// attachments). Only called when the manifest states [`Manifest::batch`]. The default
    /// batches nothing.
    fn batch_key(&self, message: &Message) -> Option<String> {
        let _ = message;
        None
    }

    /// Starts delivering several messages in one exchange: every delivery had the same
    /// [`Provider::batch_key`]. The exchange ends with [`Step::DoneBatch`] (one outcome per
    /// delivery, in order) or [`Step::Done`] (one outcome for all). The default refuses, so
    /// a host never needs to ask a plugin without [`Manifest::batch`].
    fn begin_batch(&self, deliveries: &[Delivery]) -> Step {
        let _ = deliveries;
        Step::done(Outcome::provider_failure(
            "this plugin does not send batches",
        ))
    }

    /// Continues a batch exchange after the host performed the request of a [`Step::Call`].
    fn resume_batch(
        &self,
        deliveries: &[Delivery],
        state: Value,
        response: TransportResponse,
    ) -> Step {
        let _ = (deliveries, state, response);
        Step::done(Outcome::provider_failure(
            "this plugin does not send batches",
        ))
    }

    /// Verifies and parses a provider webhook.
    fn webhook(
        &self,
        request: &WebhookRequest,
        now: UnixMillis,
    ) -> Result<WebhookOutput, WebhookError> {
        let _ = (request, now);
        Err(WebhookError::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    //! Every type that crosses the ABI must survive a JSON round trip: an internally tagged
    //! enum whose payload has a field named like the tag would not (serde writes the key
    //! twice and the reader refuses it).
    use super::*;

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
        let json = serde_json::to_string(&v).unwrap();
        let back: T = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(back, v);
    }

    #[test]
    fn transport_types_round_trip() {
        for kind in [
            TransportErrorKind::Timeout,
            TransportErrorKind::Connect,
            TransportErrorKind::Tls,
            TransportErrorKind::Io,
            TransportErrorKind::Refused,
        ] {
            round_trip(TransportResponse::Error(TransportError {
                kind,
                message: "x".into(),
            }));
        }
        round_trip(TransportResponse::Http(HttpResponse {
            status: 200,
            headers: vec![("a".into(), "b".into())],
            body: "{}".into(),
        }));
        round_trip(TransportResponse::Smtp(SmtpReply {
            code: 550,
            enhanced: Some("5.1.1".into()),
            message: "no".into(),
        }));
        round_trip(Step::http(
            HttpRequest::new("POST", "https://x/y").header("a", "b"),
            Value::Null,
        ));
        round_trip(Step::call(
            Request::Smtp(SmtpRequest {
                host: "h".into(),
                port: 587,
                tls: SmtpTls::Starttls,
                username: Some("u".into()),
                password: Some(Secret::new("p")),
                timeout_ms: None,
                from: "a@b.io".into(),
                to: vec!["c@d.io".into()],
                reply_to: None,
                subject: "s".into(),
                text: Some("t".into()),
                html: None,
                message_id: "<1@b.io>".into(),
                headers: vec![],
                attachments: vec![],
            }),
            serde_json::json!({"stage": 1}),
        ));
        for outcome in [
            Outcome::Accepted {
                provider_message_id: Some("p".into()),
                delivered: true,
            },
            Outcome::retry("r"),
            Outcome::provider_failure("f"),
            Outcome::Rejected {
                reason: "x".into(),
                bounced: true,
                suppress: true,
            },
        ] {
            round_trip(Step::done(outcome.clone()));
            round_trip(Step::done_batch(vec![outcome.clone(), outcome]));
        }
        round_trip(Manifest {
            name: "n".into(),
            version: "1".into(),
            api_version: "1.2.0".into(),
            description: String::new(),
            channels: vec![Channel::Email],
            config: vec![],
            webhooks: false,
            idempotent: true,
            allowed_hosts: vec![],
            blocking: false,
            batch: Some(BatchLimits { max: 100 }),
        });
        for e in [
            WebhookError::Unauthorized("u".into()),
            WebhookError::BadRequest("b".into()),
            WebhookError::Unsupported,
        ] {
            round_trip(e);
        }
    }

    #[test]
    fn transport_error_json_shape() {
        let json = serde_json::to_string(&TransportResponse::Error(TransportError {
            kind: TransportErrorKind::Timeout,
            message: "slow".into(),
        }))
        .unwrap();
        assert_eq!(
            json,
            r#"{"type":"error","kind":"timeout","message":"slow"}"#
        );
    }

    /// A 1.1 plugin's manifest (no `batch`) still decodes on this host: no batches.
    #[test]
    fn manifest_without_batch_decodes() {
        let m: Manifest = serde_json::from_str(
            r#"{"name":"old","version":"1","api_version":"1.1.0","channels":["email"]}"#,
        )
        .unwrap();
        assert_eq!(m.batch, None);
    }

    #[test]
    fn resend_update_round_trips() {
        let u = StatusUpdate {
            provider_message_id: Some("SM1".into()),
            message_id: None,
            kind: UpdateKind::Resend { after_ms: 600_000 },
            event_id: None,
            at: None,
            detail: Some("30003".into()),
            suppress: false,
        };
        let json = serde_json::to_string(&u.kind).unwrap();
        assert_eq!(json, r#"{"resend":{"after_ms":600000}}"#);
        round_trip(u);
        // The unit variants keep their spelling.
        assert_eq!(
            serde_json::to_string(&UpdateKind::Failed).unwrap(),
            r#""failed""#
        );
    }
}
