//! The v3 Mail Send request for one message: `POST {base_url}/v3/mail/send` with the bearer
//! key and a JSON body following `PostMailSend` of the vendored tsg_mail_v3.json.
//!
//! - One personalization: the recipient, and `custom_args.herald_id` = the Herald message id.
//!   Custom args come back as top-level keys of every event webhook, which is how events are
//!   correlated even before the `X-Message-Id` is known. (They go in the personalization:
//!   the spec types the top-level `custom_args` as a string.)
//! - `content`: `text/plain` first, then `text/html`, as SendGrid requires.
//! - Herald tags become `categories` (unique, at most 10 of up to 255 characters).
//! - `sandbox = true` adds `mail_settings.sandbox_mode.enable`.
//!
//! - Several messages with the same content (everything but the recipient and the Herald
//!   id) go in one Mail Send of up to 1,000 personalizations, one per message
//!   ([`build_batch`], grouped by [`batch_key`]).
//!
//! Typed structs keep the field order fixed, so the bytes are reproducible (and snapshotted).

use std::collections::BTreeMap;

use herald_plugin_api::{Content, EmailContent, HttpRequest, Logger, Message, Outcome};
use herald_plugin_kit::outcome::wrong_channel;
use serde::Serialize;

use crate::config::Config;

/// The custom arg carrying the Herald message id; every event echoes it.
pub(crate) const HERALD_ID_ARG: &str = "herald_id";

/// SendGrid's limits on categories.
const MAX_CATEGORIES: usize = 10;
const CATEGORY_MAX_CHARS: usize = 255;

pub(crate) const USER_AGENT: &str = concat!("herald-sendgrid/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Serialize)]
struct MailSend<'a> {
    personalizations: Vec<Personalization<'a>>,
    from: Address<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<Address<'a>>,
    subject: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    content: Vec<Body<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attachments: Vec<Attachment<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    categories: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mail_settings: Option<MailSettings>,
}

#[derive(Debug, Serialize)]
struct Personalization<'a> {
    to: [Address<'a>; 1],
    custom_args: BTreeMap<&'static str, &'a str>,
}

#[derive(Debug, Serialize)]
struct Address<'a> {
    email: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    value: &'a str,
}

#[derive(Debug, Serialize)]
struct Attachment<'a> {
    /// Standard base64, as Herald stores it.
    content: &'a str,
    filename: &'a str,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    disposition: &'static str,
}

#[derive(Debug, Serialize)]
struct MailSettings {
    sandbox_mode: Enable,
}

#[derive(Debug, Serialize)]
struct Enable {
    enable: bool,
}

/// Builds the request for `message`, or the outcome that ends the delivery at once (a
/// message this instance cannot send at all).
pub(crate) fn build(
    config: &Config,
    message: &Message,
    log: &Logger,
) -> Result<HttpRequest, Outcome> {
    let mut body = shared(config, message, log)?;
    body.personalizations.push(personalization(message));
    request(config, &body)
}

/// The most personalizations in one Mail Send (`maxItems` of `personalizations`).
pub(crate) const BATCH_MAX: u32 = 1000;

/// Which messages may share one Mail Send: SendGrid shares everything but the
/// personalizations (recipient, custom args) between them, so only messages whose request
/// would be the same apart from those — sender, reply-to, subject, content, attachments,
/// categories, headers — share a key: the SHA-256 of that shared part. `None` (alone) for a
/// message this instance cannot send at all, so the single path reports why.
pub(crate) fn batch_key(config: &Config, message: &Message) -> Option<String> {
    use sha2::{Digest, Sha256};
    let body = shared(config, message, &Logger::discard()).ok()?;
    let bytes = serde_json::to_vec(&body).ok()?;
    let digest = Sha256::digest(&bytes);
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// One Mail Send for several messages with the same [`batch_key`]: the first message's
/// shared part and one personalization per message, in order.
pub(crate) fn build_batch(
    config: &Config,
    messages: &[&Message],
    log: &Logger,
) -> Result<HttpRequest, Outcome> {
    let Some(first) = messages.first() else {
        return Err(Outcome::provider_failure(
            "sendgrid: an empty batch (host bug)",
        ));
    };
    let key = batch_key(config, first);
    if key.is_none() || messages.iter().any(|m| batch_key(config, m) != key) {
        return Err(Outcome::provider_failure(
            "sendgrid: messages with different content cannot share a Mail Send (host bug)",
        ));
    }
    let mut body = shared(config, first, log)?;
    body.personalizations = messages.iter().map(|m| personalization(m)).collect();
    request(config, &body)
}

/// The recipient of `message` and its Herald id (echoed by every event of that recipient).
fn personalization(message: &Message) -> Personalization<'_> {
    Personalization {
        to: [mailbox(&message.to)],
        custom_args: BTreeMap::from([(HERALD_ID_ARG, message.id.as_str())]),
    }
}

/// The body of `message` without personalizations.
fn shared<'a>(
    config: &'a Config,
    message: &'a Message,
    log: &Logger,
) -> Result<MailSend<'a>, Outcome> {
    let Content::Email(email) = &message.content else {
        return Err(wrong_channel("sendgrid", "email", message));
    };
    let Some(from) = email.from.as_deref().or(config.from.as_deref()) else {
        return Err(Outcome::provider_failure(format!(
            "provider {:?} (sendgrid): the message has no `from` and no default sender is \
             configured; set `from` in its [[providers]] entry",
            config.name
        )));
    };
    Ok(MailSend {
        personalizations: Vec::new(),
        from: mailbox(from),
        reply_to: email.reply_to.as_deref().map(mailbox),
        subject: &email.subject,
        content: content(email),
        attachments: attachments(email),
        categories: categories(&message.tags, log),
        headers: &email.headers,
        mail_settings: config.sandbox.then_some(MailSettings {
            sandbox_mode: Enable { enable: true },
        }),
    })
}

fn request(config: &Config, body: &MailSend<'_>) -> Result<HttpRequest, Outcome> {
    let body = serde_json::to_string(body).map_err(|e| {
        Outcome::provider_failure(format!("sendgrid: could not encode the request body: {e}"))
    })?;
    let mut request = HttpRequest::new("POST", format!("{}/v3/mail/send", config.base_url))
        .header(
            "authorization",
            format!("Bearer {}", config.api_key.expose()),
        )
        .header("content-type", "application/json")
        .header("user-agent", USER_AGENT);
    request.body = body;
    Ok(request)
}

/// `addr@domain` or `Name <addr@domain>` (the name may be quoted) as `{email, name}`.
fn mailbox(s: &str) -> Address<'_> {
    let s = s.trim();
    let email = herald_plugin_api::email_address_part(s);
    let name = match (s.rfind('<'), s.ends_with('>')) {
        (Some(open), true) => Some(s[..open].trim().trim_matches('"').trim()),
        _ => None,
    };
    Address {
        email,
        name: name.filter(|n| !n.is_empty()),
    }
}

fn content(email: &EmailContent) -> Vec<Body<'_>> {
    let text = email.text.as_deref().filter(|s| !s.is_empty());
    let html = email.html.as_deref().filter(|s| !s.is_empty());
    text.map(|value| Body {
        kind: "text/plain",
        value,
    })
    .into_iter()
    .chain(html.map(|value| Body {
        kind: "text/html",
        value,
    }))
    .collect()
}

fn attachments(email: &EmailContent) -> Vec<Attachment<'_>> {
    email
        .attachments
        .iter()
        .map(|a| Attachment {
            content: &a.content,
            filename: &a.filename,
            content_type: a.content_type.as_deref(),
            disposition: "attachment",
        })
        .collect()
}

/// Herald tags as SendGrid categories: trimmed, non-empty, unique, cut to 255 characters,
/// the first 10 kept (the rest logged, not fatal: categories are reporting only).
fn categories(tags: &[String], log: &Logger) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        let category: String = tag.trim().chars().take(CATEGORY_MAX_CHARS).collect();
        if category.is_empty() || out.contains(&category) {
            continue;
        }
        if out.len() == MAX_CATEGORIES {
            log.warn(format!(
                "sendgrid: a message has more than {MAX_CATEGORIES} tags; only the first \
                 {MAX_CATEGORIES} are sent as categories"
            ));
            break;
        }
        out.push(category);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{
        API_KEY, attachment_message, delivery, email_message, full_message, render_json_request,
        sendgrid,
    };
    use expect_test::expect;
    use herald_plugin_api::{Provider, SmsContent, Step};
    use herald_plugin_kit::testing::{done, http_call};
    use serde_json::json;

    fn request_for(provider: &crate::SendGrid, message: Message) -> HttpRequest {
        http_call(provider.begin(&delivery(message)))
    }

    #[test]
    fn text_only() {
        let p = sendgrid(json!({"api_key": API_KEY, "from": "RSVP <rsvp@example.com>"}));
        let r = request_for(&p, email_message());
        expect![[r#"
            POST https://api.sendgrid.com/v3/mail/send
            authorization: Bearer SG.test_key.0123456789
            content-type: application/json
            user-agent: herald-sendgrid/0.1.0
            timeout_ms: None
            {
              "personalizations": [
                {
                  "to": [
                    {
                      "email": "guest@example.org"
                    }
                  ],
                  "custom_args": {
                    "herald_id": "01HZY8N3W4Q6K2M5P7R9T1V3X5"
                  }
                }
              ],
              "from": {
                "email": "rsvp@example.com",
                "name": "RSVP"
              },
              "subject": "You're invited",
              "content": [
                {
                  "type": "text/plain",
                  "value": "Join us on June 1st."
                }
              ]
            }"#]]
        .assert_eq(&render_json_request(&r));
    }

    #[test]
    fn every_field_sandbox_and_base_url_override() {
        let p = sendgrid(json!({
            "api_key": API_KEY,
            "from": "rsvp@example.com",
            "base_url": "http://127.0.0.1:9999",
            "sandbox": true,
        }));
        let r = request_for(&p, full_message());
        expect![[r#"
            POST http://127.0.0.1:9999/v3/mail/send
            authorization: Bearer SG.test_key.0123456789
            content-type: application/json
            user-agent: herald-sendgrid/0.1.0
            timeout_ms: None
            {
              "personalizations": [
                {
                  "to": [
                    {
                      "email": "guest@example.org",
                      "name": "Guest One"
                    }
                  ],
                  "custom_args": {
                    "herald_id": "01HZY8N3W4Q6K2M5P7R9T1V3X5"
                  }
                }
              ],
              "from": {
                "email": "ann@example.com",
                "name": "Ann & Bo"
              },
              "reply_to": {
                "email": "rsvp@example.com"
              },
              "subject": "You're invited",
              "content": [
                {
                  "type": "text/plain",
                  "value": "Join us on June 1st."
                },
                {
                  "type": "text/html",
                  "value": "<p>Join us on <b>June 1st</b>.</p>"
                }
              ],
              "attachments": [
                {
                  "content": "QkVHSU46VkNBTEVOREFS",
                  "filename": "invite.ics",
                  "type": "text/calendar",
                  "disposition": "attachment"
                }
              ],
              "categories": [
                "rsvp",
                "event:wedding-2025"
              ],
              "headers": {
                "List-Unsubscribe": "<mailto:unsub@example.com>",
                "X-Campaign": "spring"
              },
              "mail_settings": {
                "sandbox_mode": {
                  "enable": true
                }
              }
            }"#]]
        .assert_eq(&render_json_request(&r));
        assert_eq!(p.allowed_hosts(), vec!["127.0.0.1".to_owned()]);
    }

    #[test]
    fn default_allowed_hosts_include_eu() {
        let p = sendgrid(json!({"api_key": API_KEY}));
        assert_eq!(
            p.allowed_hosts(),
            vec!["api.sendgrid.com", "api.eu.sendgrid.com"]
        );
    }

    #[test]
    fn attachment_without_type() {
        let p = sendgrid(json!({"api_key": API_KEY, "from": "rsvp@example.com"}));
        let r = request_for(&p, attachment_message());
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            body["attachments"],
            json!([{"content": "JVBERi0xLjQK", "filename": "menu.pdf", "disposition": "attachment"}])
        );
    }

    #[test]
    fn mailboxes() {
        let m = mailbox("\"Lee, Ann\" <ann@x.io>");
        assert_eq!((m.email, m.name), ("ann@x.io", Some("Lee, Ann")));
        let m = mailbox("ann@x.io");
        assert_eq!((m.email, m.name), ("ann@x.io", None));
        let m = mailbox(" <ann@x.io>");
        assert_eq!((m.email, m.name), ("ann@x.io", None));
    }

    #[test]
    fn categories_are_unique_and_capped() {
        let tags: Vec<String> = ["a", "a", " ", "b"]
            .iter()
            .map(|s| (*s).to_owned())
            .chain((0..20).map(|i| format!("t{i}")))
            .chain(["x".repeat(300)])
            .collect();
        let got = categories(&tags, &Logger::discard());
        assert_eq!(got.len(), 10);
        assert_eq!(&got[..3], ["a", "b", "t0"]);
        let long = categories(&["y".repeat(300)], &Logger::discard());
        assert_eq!(long[0].len(), 255);
    }

    #[test]
    fn no_sender_is_a_provider_failure() {
        let p = sendgrid(json!({"api_key": API_KEY}));
        let step = p.begin(&delivery(email_message()));
        let Step::Done {
            outcome: Outcome::ProviderFailure { reason },
        } = step
        else {
            panic!("{step:?}")
        };
        assert!(reason.contains("set `from`"), "{reason}");
    }

    #[test]
    fn not_email_is_a_provider_failure() {
        let p = sendgrid(json!({"api_key": API_KEY, "from": "rsvp@example.com"}));
        let mut m = email_message();
        m.content = Content::Sms(SmsContent {
            from: None,
            body: "YES".into(),
            media_urls: vec![],
        });
        assert_eq!(
            done(p.begin(&delivery(m))),
            Outcome::provider_failure("sendgrid delivers email only, not sms (check [routes])")
        );
    }
}
