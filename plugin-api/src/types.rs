//! Domain types shared by the daemon, the client and every plugin: channels, messages and
//! their per-channel content, delivery states, and the one event shape.
//!
//! These types cross two boundaries: the plugin ABI (as JSON) and the socket protocol (as
//! JSON or postcard). Postcard is positional and not self-describing, so nothing here may
//! use `#[serde(flatten)]`, `#[serde(untagged)]`, internally tagged enums or
//! `skip_serializing_if`; `#[serde(default)]` is fine (it only helps JSON readers). Variant
//! order is part of the wire format: append, never reorder.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. All times in Herald's contracts use this unit.
pub type UnixMillis = u64;

/// A delivery channel. Routes map a channel to an ordered list of provider instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Push,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::Push];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
        }
    }

    /// Parses a channel name as written in config and on the command line.
    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file attached to an email. `content` is standard base64 (padded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub filename: String,
    #[serde(default)]
    pub content_type: Option<String>,
    pub content: String,
}

/// Email content. `from` overrides the provider's configured sender.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailContent {
    #[serde(default)]
    pub from: Option<String>,
    pub subject: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// SMS (or MMS, with media) content. `from` overrides the provider's configured sender.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsContent {
    #[serde(default)]
    pub from: Option<String>,
    pub body: String,
    #[serde(default)]
    pub media_urls: Vec<String>,
}

/// Push priority, mapped by each push provider to its own scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushPriority {
    High,
    Normal,
}

/// Push notification content. A push with neither title nor body is a data-only
/// (background) push.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushContent {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    /// String-only key/value data delivered to the app.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    #[serde(default)]
    pub badge: Option<u32>,
    #[serde(default)]
    pub sound: Option<String>,
    /// Replaces an earlier notification with the same id on the device.
    #[serde(default)]
    pub collapse_id: Option<String>,
    #[serde(default)]
    pub priority: Option<PushPriority>,
    /// How long the push service may hold the notification for an offline device.
    #[serde(default)]
    pub ttl_secs: Option<u32>,
}

/// The content of a message; the variant decides the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    Email(EmailContent),
    Sms(SmsContent),
    Push(PushContent),
}

impl Content {
    pub fn channel(&self) -> Channel {
        match self {
            Content::Email(_) => Channel::Email,
            Content::Sms(_) => Channel::Sms,
            Content::Push(_) => Channel::Push,
        }
    }
}

/// A message as a plugin sees it: accepted, stored and identified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Herald's message id (a ULID string). Plugins send it as the provider's idempotency key
    /// where one exists, and as correlation data (custom args, tags) where webhooks echo it.
    pub id: String,
    /// The recipient: an email address, an E.164 phone number, or a device token.
    pub to: String,
    pub content: Content,
    #[serde(default)]
    pub tags: Vec<String>,
    pub created_at: UnixMillis,
}

impl Message {
    pub fn channel(&self) -> Channel {
        self.content.channel()
    }
}

/// A field of a message that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidField {}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// Checks that `to` is a well-formed recipient for `channel`.
pub fn validate_recipient(channel: Channel, to: &str) -> Result<(), InvalidField> {
    match channel {
        Channel::Email => validate_email_address("to", to),
        Channel::Sms => validate_e164("to", to),
        Channel::Push => validate_device_token(to),
    }
}

/// Extracts the bare address from `addr@domain` or `Display Name <addr@domain>`.
pub fn email_address_part(s: &str) -> &str {
    let s = s.trim();
    match (s.rfind('<'), s.ends_with('>')) {
        (Some(open), true) => &s[open + 1..s.len() - 1],
        _ => s,
    }
}

/// Validates `addr@domain` or `Display Name <addr@domain>`. A display name with RFC 5322
/// specials (`,;:()<>[]@\"`) must be quoted: `"Shop, Inc." <shop@example.com>`.
pub fn validate_email_address(field: &'static str, s: &str) -> Result<(), InvalidField> {
    let addr = email_address_part(s);
    if s.contains(['\r', '\n']) {
        return Err(invalid(field, "must not contain line breaks"));
    }
    let trimmed = s.trim();
    if let (Some(open), true) = (trimmed.rfind('<'), trimmed.ends_with('>')) {
        let name = trimmed[..open].trim();
        let quoted = name.len() >= 2 && name.starts_with('"') && name.ends_with('"');
        let ok = if quoted {
            let inner = &name[1..name.len() - 1];
            !inner.replace("\\\\", "").replace("\\\"", "").contains('"')
        } else {
            !name.contains([',', ';', ':', '(', ')', '<', '>', '[', ']', '@', '\\', '"'])
        };
        if !ok {
            return Err(invalid(
                field,
                format!(
                    "the display name {name:?} has a special character; quote it, e.g. \"{}\" <{addr}>",
                    name.trim_matches('"').replace('"', "")
                ),
            ));
        }
    }
    if addr.len() > 254 {
        return Err(invalid(field, "address is longer than 254 characters"));
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err(invalid(
            field,
            format!("{addr:?} is not an email address (expected local@domain)"),
        ));
    };
    if local.is_empty() || local.len() > 64 {
        return Err(invalid(
            field,
            format!("{addr:?}: the part before @ must be 1-64 characters"),
        ));
    }
    if local
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\\\"".contains(c))
    {
        return Err(invalid(
            field,
            format!("{addr:?}: the part before @ has a character not allowed in an address"),
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if !domain_ok {
        return Err(invalid(
            field,
            format!("{addr:?}: {domain:?} is not a valid domain (expected e.g. example.com)"),
        ));
    }
    Ok(())
}

/// Validates an E.164 phone number: `+`, a non-zero digit, 7 to 14 more digits.
pub fn validate_e164(field: &'static str, s: &str) -> Result<(), InvalidField> {
    let digits = s.strip_prefix('+').unwrap_or("");
    let ok = digits.len() >= 8
        && digits.len() <= 15
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{s:?} is not an E.164 phone number (expected e.g. +14155550100)"),
        ))
    }
}

fn validate_device_token(s: &str) -> Result<(), InvalidField> {
    if s.len() < 8 || s.len() > 4096 {
        return Err(invalid("to", "a device token must be 8-4096 characters"));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "to",
            "a device token must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// Email headers a message may not set in `headers`: the message's own fields, the MIME
/// structure and the envelope are written by the plugins, and Herald's own `X-Herald-*`
/// headers identify the message. (Refused at accept, so every provider treats a message
/// alike instead of one dropping the header and another refusing the request.)
pub const RESERVED_EMAIL_HEADERS: [&str; 15] = [
    "from",
    "sender",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "return-path",
    "x-herald-id",
    "x-herald-tags",
];

/// Whether `name` is one of [`RESERVED_EMAIL_HEADERS`] (case-insensitive).
pub fn is_reserved_email_header(name: &str) -> bool {
    RESERVED_EMAIL_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
}

/// Structural checks of content that do not depend on configuration (sizes are the
/// daemon's business).
pub fn validate_content(content: &Content) -> Result<(), InvalidField> {
    match content {
        Content::Email(e) => {
            if e.subject.trim().is_empty() {
                return Err(invalid("subject", "an email needs a non-empty subject"));
            }
            if e.subject.contains(['\r', '\n']) {
                return Err(invalid("subject", "must not contain line breaks"));
            }
            let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
            if empty(&e.text) && empty(&e.html) {
                return Err(invalid("text", "an email needs a text or an html body"));
            }
            if let Some(from) = &e.from {
                validate_email_address("from", from)?;
            }
            if let Some(reply_to) = &e.reply_to {
                validate_email_address("reply_to", reply_to)?;
            }
            for (name, value) in &e.headers {
                let name_ok =
                    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
                if !name_ok || value.contains(['\r', '\n']) {
                    return Err(invalid(
                        "headers",
                        format!("header {name:?} is not a valid single-line header"),
                    ));
                }
                if is_reserved_email_header(name) {
                    return Err(invalid(
                        "headers",
                        format!(
                            "header {name:?} is written by Herald; set the message's from, \
                             reply_to or subject instead, or leave it out"
                        ),
                    ));
                }
            }
            for a in &e.attachments {
                if a.filename.is_empty() || a.filename.contains(['/', '\\', '\r', '\n']) {
                    return Err(invalid(
                        "attachments",
                        format!(
                            "attachment filename {:?} is not a plain file name",
                            a.filename
                        ),
                    ));
                }
                if !is_base64(&a.content) {
                    return Err(invalid(
                        "attachments",
                        format!(
                            "attachment {:?}: content must be standard base64",
                            a.filename
                        ),
                    ));
                }
            }
        }
        Content::Sms(s) => {
            if s.body.is_empty() && s.media_urls.is_empty() {
                return Err(invalid("body", "an SMS needs a body or media"));
            }
            if s.body.chars().count() > 1600 {
                return Err(invalid("body", "an SMS body is at most 1600 characters"));
            }
            if let Some(from) = &s.from
                && !is_sms_sender(from)
            {
                return Err(invalid(
                    "from",
                    format!(
                        "{from:?} is neither an E.164 number, a short code nor an alphanumeric \
                         sender id"
                    ),
                ));
            }
            if s.media_urls.len() > 10 {
                return Err(invalid("media_urls", "at most 10 media URLs"));
            }
            for url in &s.media_urls {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(invalid(
                        "media_urls",
                        format!("{url:?} is not an http(s) URL"),
                    ));
                }
            }
        }
        Content::Push(p) => {
            let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
            if empty(&p.title) && empty(&p.body) && p.data.is_empty() {
                return Err(invalid("title", "a push needs a title, a body or data"));
            }
            if p.collapse_id.as_ref().is_some_and(|id| id.len() > 64) {
                return Err(invalid("collapse_id", "at most 64 bytes"));
            }
        }
    }
    Ok(())
}

/// An SMS sender: an E.164 number, a short code (3-8 digits) or an alphanumeric sender id
/// (1-11 letters, digits or spaces, at least one letter).
pub fn is_sms_sender(s: &str) -> bool {
    let short_code = (3..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let alphanumeric = (1..=11).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && s.bytes().any(|b| b.is_ascii_alphabetic());
    validate_e164("from", s).is_ok() || short_code || alphanumeric
}

fn is_base64(s: &str) -> bool {
    let trimmed = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - trimmed.len() <= 2
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The delivery state of a message. Variant order is wire format: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Sending,
    Sent,
    Delivered,
    Bounced,
    Complained,
    Failed,
    Deferred,
    Dead,
    Cancelled,
    Expired,
    Suppressed,
}

impl State {
    pub const ALL: [State; 12] = [
        State::Queued,
        State::Sending,
        State::Sent,
        State::Delivered,
        State::Bounced,
        State::Complained,
        State::Failed,
        State::Deferred,
        State::Dead,
        State::Cancelled,
        State::Expired,
        State::Suppressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Sending => "sending",
            State::Sent => "sent",
            State::Delivered => "delivered",
            State::Bounced => "bounced",
            State::Complained => "complained",
            State::Failed => "failed",
            State::Deferred => "deferred",
            State::Dead => "dead",
            State::Cancelled => "cancelled",
            State::Expired => "expired",
            State::Suppressed => "suppressed",
        }
    }

    /// No further delivery attempt will be made. (Provider webhooks may still move a
    /// `delivered` message to `complained`; see [`State::rank`].)
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Delivered
                | State::Bounced
                | State::Complained
                | State::Failed
                | State::Dead
                | State::Cancelled
                | State::Expired
                | State::Suppressed
        )
    }

    /// Progress order for provider status updates: a state only ever moves to a higher
    /// rank, so a late `sent` never overwrites `delivered`, while a complaint after delivery
    /// is still recorded.
    pub fn rank(self) -> u8 {
        match self {
            State::Queued | State::Deferred => 0,
            State::Sending => 1,
            State::Sent => 2,
            State::Delivered | State::Bounced | State::Failed => 3,
            State::Complained => 4,
            State::Dead | State::Cancelled | State::Expired | State::Suppressed => 5,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event reports. The first twelve mirror [`State`]; append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Queued,
    Sending,
    Sent,
    Delivered,
    Bounced,
    Complained,
    Failed,
    Deferred,
    Dead,
    Cancelled,
    Expired,
    Suppressed,
    Opened,
    Clicked,
    Inbound,
    ConfigReloaded,
    ConfigRejected,
    /// A provider's circuit breaker opened (or re-opened after a failed trial call):
    /// `provider` names it, `detail` gives the reason.
    ProviderOpened,
    /// An open breaker's cooldown is over and a trial call was admitted.
    ProviderHalfOpen,
    /// A provider's breaker closed again: it is healthy.
    ProviderClosed,
    /// The provider reports that delivery is delayed (Resend `email.delivery_delayed`,
    /// SendGrid `deferred`); the message's state does not change.
    Delayed,
}

impl EventKind {
    pub const ALL: [EventKind; 21] = [
        EventKind::Queued,
        EventKind::Sending,
        EventKind::Sent,
        EventKind::Delivered,
        EventKind::Bounced,
        EventKind::Complained,
        EventKind::Failed,
        EventKind::Deferred,
        EventKind::Dead,
        EventKind::Cancelled,
        EventKind::Expired,
        EventKind::Suppressed,
        EventKind::Opened,
        EventKind::Clicked,
        EventKind::Inbound,
        EventKind::ConfigReloaded,
        EventKind::ConfigRejected,
        EventKind::ProviderOpened,
        EventKind::ProviderHalfOpen,
        EventKind::ProviderClosed,
        EventKind::Delayed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Clicked => "clicked",
            EventKind::Inbound => "inbound",
            EventKind::ConfigReloaded => "config_reloaded",
            EventKind::ConfigRejected => "config_rejected",
            EventKind::ProviderOpened => "provider_opened",
            EventKind::ProviderHalfOpen => "provider_half_open",
            EventKind::ProviderClosed => "provider_closed",
            EventKind::Delayed => "delayed",
            other => other.state().map(State::as_str).unwrap_or("unknown"),
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The state this event moves a message into, if it is a state event.
    pub fn state(self) -> Option<State> {
        Some(match self {
            EventKind::Queued => State::Queued,
            EventKind::Sending => State::Sending,
            EventKind::Sent => State::Sent,
            EventKind::Delivered => State::Delivered,
            EventKind::Bounced => State::Bounced,
            EventKind::Complained => State::Complained,
            EventKind::Failed => State::Failed,
            EventKind::Deferred => State::Deferred,
            EventKind::Dead => State::Dead,
            EventKind::Cancelled => State::Cancelled,
            EventKind::Expired => State::Expired,
            EventKind::Suppressed => State::Suppressed,
            EventKind::Opened
            | EventKind::Clicked
            | EventKind::Inbound
            | EventKind::ConfigReloaded
            | EventKind::ConfigRejected
            | EventKind::ProviderOpened
            | EventKind::ProviderHalfOpen
            | EventKind::ProviderClosed
            | EventKind::Delayed => return None,
        })
    }
}

impl From<State> for EventKind {
    fn from(s: State) -> EventKind {
        match s {
            State::Queued => EventKind::Queued,
            State::Sending => EventKind::Sending,
            State::Sent => EventKind::Sent,
            State::Delivered => EventKind::Delivered,
            State::Bounced => EventKind::Bounced,
            State::Complained => EventKind::Complained,
            State::Failed => EventKind::Failed,
            State::Deferred => EventKind::Deferred,
            State::Dead => EventKind::Dead,
            State::Cancelled => EventKind::Cancelled,
            State::Expired => EventKind::Expired,
            State::Suppressed => EventKind::Suppressed,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the durable event log. `seq` is strictly increasing and never reused.
/// `from`, `to` and `body` are set on `inbound` events only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at: UnixMillis,
    #[serde(default)]
    pub message_id: Option<String>,
    pub kind: EventKind,
    #[serde(default)]
    pub channel: Option<Channel>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub provider_message_id: Option<String>,
    #[serde(default)]
    pub attempt: Option<u32>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_addresses() {
        assert!(validate_email_address("to", "a@example.com").is_ok());
        assert!(validate_email_address("to", "Ann Lee <ann.lee+rsvp@mail.example.org>").is_ok());
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@x.io",
            "a@-x.io",
        ] {
            let err = validate_email_address("to", bad).unwrap_err();
            assert_eq!(err.field, "to", "{bad}");
        }
        assert!(validate_email_address("to", "a@x.io\r\nBcc: evil@x.io").is_err());
        let err = validate_email_address("from", "Shop, Inc. <shop@example.com>").unwrap_err();
        assert!(err.reason.contains("quote"), "{err}");
        assert!(validate_email_address("from", "\"Shop, Inc.\" <shop@example.com>").is_ok());
        assert!(validate_email_address("from", "Ann B. Lee <ann@example.com>").is_ok());
        assert!(validate_email_address("from", "Ann (events) <ann@example.com>").is_err());
    }

    #[test]
    fn phone_numbers() {
        assert!(validate_e164("to", "+14155550100").is_ok());
        for bad in [
            "14155550100",
            "+0123456789",
            "+1415",
            "+1415555010012345",
            "+1 415 555",
        ] {
            assert!(validate_e164("to", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_rules() {
        let email = |text: Option<&str>| {
            Content::Email(EmailContent {
                subject: "Hi".into(),
                text: text.map(Into::into),
                ..Default::default()
            })
        };
        assert!(validate_content(&email(Some("body"))).is_ok());
        assert_eq!(validate_content(&email(None)).unwrap_err().field, "text");
        let push = Content::Push(PushContent::default());
        assert_eq!(validate_content(&push).unwrap_err().field, "title");
        let mut e = EmailContent {
            subject: "Hi".into(),
            text: Some("x".into()),
            ..Default::default()
        };
        e.attachments.push(Attachment {
            filename: "a.txt".into(),
            content_type: None,
            content: "not base64!".into(),
        });
        assert_eq!(
            validate_content(&Content::Email(e)).unwrap_err().field,
            "attachments"
        );
        let with_header = |name: &str| {
            let mut e = EmailContent {
                subject: "Hi".into(),
                text: Some("x".into()),
                ..Default::default()
            };
            e.headers.insert(name.into(), "v".into());
            validate_content(&Content::Email(e))
        };
        let sms_from = |from: &str| {
            validate_content(&Content::Sms(SmsContent {
                from: Some(from.into()),
                body: "hi".into(),
                ..Default::default()
            }))
        };
        for ok in ["+14155550100", "12345", "Wedding42"] {
            assert!(sms_from(ok).is_ok(), "{ok}");
        }
        assert_eq!(sms_from("12").unwrap_err().field, "from");
        assert!(with_header("List-Unsubscribe").is_ok());
        for reserved in ["Subject", "from", "X-Herald-Id", "Content-Type"] {
            let err = with_header(reserved).unwrap_err();
            assert_eq!(err.field, "headers");
            assert!(err.reason.contains("written by Herald"), "{}", err.reason);
        }
    }

    #[test]
    fn states_only_move_forward_by_rank() {
        assert!(State::Delivered.rank() > State::Sent.rank());
        assert!(State::Complained.rank() > State::Delivered.rank());
        for s in State::ALL {
            assert_eq!(EventKind::from(s).state(), Some(s));
            assert_eq!(EventKind::parse(s.as_str()), Some(EventKind::from(s)));
        }
    }

    #[test]
    fn event_kind_names_round_trip_and_match_serde() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
    }

    #[test]
    fn content_json_shape() {
        let c = Content::Sms(SmsContent {
            from: None,
            body: "YES".into(),
            media_urls: vec![],
        });
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"sms":{"from":null,"body":"YES","media_urls":[]}}"#
        );
        let back: Content = serde_json::from_str(r#"{"sms":{"body":"YES"}}"#).unwrap();
        assert_eq!(back, c);
    }
}
