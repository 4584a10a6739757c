//! Domain types shared by the daemon, the client and every plugin: channels, messages and
//! their per-channel content, delivery states, and the one event shape.
//!
//! These types cross two boundaries: the plugin ABI (as JSON) and the socket protocol (as
//! JSON or postcard). Postcard is positional and not self-describing, so nothing here may
//! use `#[serde(flatten)]`, `#[serde(untagged)]`, internally tagged enums or
//! `skip_serializing_if`; `#[serde(default)]` is fine (it only helps JSON readers). Variant
//! order is part of the wire format: append, never reorder.
//!
//! What a valid message looks like is [`crate::validate`]'s business.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. All times in Herald's contracts use this unit.
pub type UnixMillis = u64;

/// A delivery channel. Routes map a channel to an ordered list of provider instances.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
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
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[cfg_attr(feature = "typescript", ts(optional_fields = nullable))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub filename: String,
    #[serde(default)]
    pub content_type: Option<String>,
    pub content: String,
}

/// Email content. `from` overrides the provider's configured sender.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[cfg_attr(feature = "typescript", ts(optional_fields = nullable))]
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
    #[cfg_attr(feature = "typescript", ts(as = "Option<_>", optional))]
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[cfg_attr(feature = "typescript", ts(as = "Option<_>", optional))]
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// SMS (or MMS, with media) content. `from` overrides the provider's configured sender.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[cfg_attr(feature = "typescript", ts(optional_fields = nullable))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsContent {
    #[serde(default)]
    pub from: Option<String>,
    pub body: String,
    #[cfg_attr(feature = "typescript", ts(as = "Option<_>", optional))]
    #[serde(default)]
    pub media_urls: Vec<String>,
}

/// Push priority, mapped by each push provider to its own scale.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushPriority {
    High,
    Normal,
}

/// Push notification content. A push with neither title nor body is a data-only
/// (background) push.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[cfg_attr(feature = "typescript", ts(optional_fields = nullable))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushContent {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    /// String-only key/value data delivered to the app.
    #[cfg_attr(feature = "typescript", ts(as = "Option<_>", optional))]
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
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
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

/// The delivery state of a message. Variant order is wire format: append only.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
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
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
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
    /// Free space fell below `daemon.min_free`: new sends are refused until it is back.
    StorageLow,
    /// Free space is back above the reserve: sends are accepted again.
    StorageOk,
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
    /// A provider announced a provider-wide wait (429 with `Retry-After`, a daily quota):
    /// no call goes to it until then, for any message. `provider` names it, `detail` says
    /// why and for how long.
    ProviderPaused,
}

impl EventKind {
    pub const ALL: [EventKind; 24] = [
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
        EventKind::StorageLow,
        EventKind::StorageOk,
        EventKind::ProviderOpened,
        EventKind::ProviderHalfOpen,
        EventKind::ProviderClosed,
        EventKind::Delayed,
        EventKind::ProviderPaused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Clicked => "clicked",
            EventKind::Inbound => "inbound",
            EventKind::ConfigReloaded => "config_reloaded",
            EventKind::ConfigRejected => "config_rejected",
            EventKind::StorageLow => "storage_low",
            EventKind::StorageOk => "storage_ok",
            EventKind::ProviderOpened => "provider_opened",
            EventKind::ProviderHalfOpen => "provider_half_open",
            EventKind::ProviderClosed => "provider_closed",
            EventKind::Delayed => "delayed",
            EventKind::ProviderPaused => "provider_paused",
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
            | EventKind::StorageLow
            | EventKind::StorageOk
            | EventKind::ProviderOpened
            | EventKind::ProviderHalfOpen
            | EventKind::ProviderClosed
            | EventKind::Delayed
            | EventKind::ProviderPaused => return None,
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

/// A guest's answer to an invitation, read from a reply.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RsvpAnswer {
    Yes,
    No,
    Maybe,
}

impl RsvpAnswer {
    pub fn as_str(self) -> &'static str {
        match self {
            RsvpAnswer::Yes => "yes",
            RsvpAnswer::No => "no",
            RsvpAnswer::Maybe => "maybe",
        }
    }
}

/// A structured RSVP read from a reply: the answer, and how many people it counts when the
/// reply says so (`no` counts 0; a bare `yes` says nothing about the number).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[cfg_attr(feature = "typescript", ts(optional_fields = nullable))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rsvp {
    pub answer: RsvpAnswer,
    #[serde(default)]
    pub headcount: Option<u32>,
}

impl fmt::Display for Rsvp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.headcount {
            Some(n) => write!(f, "{} ({n})", self.answer.as_str()),
            None => f.write_str(self.answer.as_str()),
        }
    }
}

/// One entry of the durable event log. `seq` is strictly increasing and never reused.
/// `from`, `to`, `body` and `rsvp` are set on `inbound` events only.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
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
    /// On `inbound` events: the reply read as an RSVP (yes / no / maybe and a headcount),
    /// when it reads as one; never a guess.
    #[serde(default)]
    pub rsvp: Option<Rsvp>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
