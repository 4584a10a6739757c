//! The `POST /emails` request for one message (and `POST /emails/batch` for several, an
//! array of the same bodies with an `Idempotency-Key` derived from the message ids): the JSON body (schema `SendEmailRequest` of
//! the vendored resend.yaml), the bearer key, and `Idempotency-Key` = the Herald message id,
//! so a re-send after a crash (or after a timeout whose request did arrive) is answered
//! with the original response instead of sending the email twice.
//!
//! The body is built from typed structs so its field order is fixed: the same message always
//! produces the same bytes, which Resend's idempotency check requires (same key + different
//! body = `409 invalid_idempotent_request`).

use std::collections::BTreeMap;

use herald_plugin_api::{Content, EmailContent, HttpRequest, Message, Outcome};
use herald_plugin_kit::outcome::wrong_channel;
use herald_plugin_kit::text::non_empty;
use serde::Serialize;

use crate::config::Config;

/// The tag carrying the Herald message id; webhooks echo it in `data.tags`.
pub(crate) const HERALD_ID_TAG: &str = "herald_id";

/// The most emails in one `POST /emails/batch` (Resend's documented limit).
pub(crate) const BATCH_MAX: u32 = 100;

/// Resend's limit on tag names and values.
const TAG_MAX_CHARS: usize = 256;

/// Sent on every request: Resend's edge refuses requests without a `User-Agent` (403, error
/// 1010), and the version helps their support read our logs.
pub(crate) const USER_AGENT: &str = concat!("herald-resend/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Serialize)]
struct SendEmail<'a> {
    from: &'a str,
    to: [&'a str; 1],
    subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    html: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attachments: Vec<Attachment<'a>>,
    tags: Vec<Tag>,
}

#[derive(Debug, Serialize)]
struct Attachment<'a> {
    filename: &'a str,
    /// Standard base64, as Herald stores it.
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Tag {
    name: String,
    value: String,
}

/// Builds the request for `message`, or the outcome that ends the delivery at once (a
/// message this instance cannot send at all).
pub(crate) fn build(config: &Config, message: &Message) -> Result<HttpRequest, Outcome> {
    let body = body(config, message)?;
    let body = serde_json::to_string(&body).map_err(|e| {
        Outcome::provider_failure(format!("resend: could not encode the request body: {e}"))
    })?;
    let mut request = post(config, "emails", &message.id);
    request.body = body;
    Ok(request)
}

/// The JSON body of one email (`SendEmailRequest`), shared by `/emails` and `/emails/batch`.
fn body<'a>(config: &'a Config, message: &'a Message) -> Result<SendEmail<'a>, Outcome> {
    let Content::Email(email) = &message.content else {
        return Err(wrong_channel("resend", "email", message));
    };
    let Some(from) = email.from.as_deref().or(config.from.as_deref()) else {
        return Err(Outcome::provider_failure(format!(
            "provider {:?} (resend): the message has no `from` and no default sender is configured; \
             set `from` in its [[providers]] entry",
            config.name
        )));
    };
    Ok(SendEmail {
        from,
        to: [message.to.as_str()],
        subject: &email.subject,
        html: non_empty(&email.html),
        text: non_empty(&email.text),
        reply_to: email.reply_to.as_deref(),
        headers: &email.headers,
        attachments: attachments(email),
        tags: tags(&message.id, &message.tags),
    })
}

/// A `POST <base_url>/<path>` with the bearer key, JSON, the idempotency key and our agent.
fn post(config: &Config, path: &str, idempotency_key: &str) -> HttpRequest {
    HttpRequest::new("POST", format!("{}/{path}", config.base_url))
        .header(
            "authorization",
            format!("Bearer {}", config.api_key.expose()),
        )
        .header("content-type", "application/json")
        .header("idempotency-key", idempotency_key)
        .header("user-agent", USER_AGENT)
}

/// Whether `message` may go in a `POST /emails/batch`: an email this instance can send
/// (else it goes alone and fails with the single path's outcome) without attachments,
/// which the batch endpoint does not support (providers.md section 10: silently dropped).
pub(crate) fn batchable(config: &Config, message: &Message) -> bool {
    match &message.content {
        Content::Email(email) => {
            email.attachments.is_empty() && (email.from.is_some() || config.from.is_some())
        }
        _ => false,
    }
}

/// The `Idempotency-Key` of a batch: derived from its message ids in order, so the same
/// batch sent again (a timeout, a crash before the outcome was stored) is answered with the
/// original response instead of sending its emails twice. Within Resend's 256 characters.
pub(crate) fn batch_key(messages: &[&Message]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for m in messages {
        hash.update(m.id.as_bytes());
        hash.update(b"\n");
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("herald-batch/{hex}")
}

/// Builds the `POST /emails/batch` request for `messages` (every one [`batchable`]): a JSON
/// array of the bodies `/emails` would get, in order.
pub(crate) fn build_batch(config: &Config, messages: &[&Message]) -> Result<HttpRequest, Outcome> {
    let bodies = messages
        .iter()
        .map(|m| {
            let b = body(config, m)?;
            if !b.attachments.is_empty() {
                return Err(Outcome::provider_failure(
                    "resend: a message with attachments cannot go in a batch (host bug)",
                ));
            }
            Ok(b)
        })
        .collect::<Result<Vec<_>, Outcome>>()?;
    let body = serde_json::to_string(&bodies).map_err(|e| {
        Outcome::provider_failure(format!("resend: could not encode the batch body: {e}"))
    })?;
    let mut request = post(config, "emails/batch", &batch_key(messages));
    request.body = body;
    Ok(request)
}

fn attachments(email: &EmailContent) -> Vec<Attachment<'_>> {
    email
        .attachments
        .iter()
        .map(|a| Attachment {
            filename: &a.filename,
            content: &a.content,
            content_type: a.content_type.as_deref(),
        })
        .collect()
}

/// The `herald_id` tag first, then the message's own tags. Resend tags are `{name, value}`
/// pairs of ASCII letters, digits, `_` and `-`: a Herald tag `name:value` (or `name=value`)
/// becomes that pair, a bare tag `name` becomes `name = "true"`; other characters turn into
/// `_`. Duplicate names (after that) keep the first; `herald_id` is reserved.
fn tags(message_id: &str, message_tags: &[String]) -> Vec<Tag> {
    let mut out = vec![Tag {
        name: HERALD_ID_TAG.into(),
        value: tag_token(message_id),
    }];
    for tag in message_tags {
        let (name, value) = match tag.split_once([':', '=']) {
            Some((name, value)) => (tag_token(name), tag_token(value)),
            None => (tag_token(tag), "true".to_owned()),
        };
        if name.is_empty() || value.is_empty() || out.iter().any(|t| t.name == name) {
            continue;
        }
        out.push(Tag { name, value });
    }
    out
}

fn tag_token(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(TAG_MAX_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{
        API_KEY, attachment_message, delivery, email_message, full_message, render_json_request,
        resend,
    };
    use expect_test::expect;
    use herald_plugin_api::{Provider, SmsContent, Step};
    use herald_plugin_kit::testing::{done, http_call};
    use serde_json::json;

    fn request_for(provider: &crate::Resend, message: Message) -> HttpRequest {
        http_call(provider.begin(&delivery(message)))
    }

    #[test]
    fn text_only() {
        let p = resend(json!({"api_key": API_KEY, "from": "RSVP <rsvp@example.com>"}));
        let r = request_for(&p, email_message());
        expect![[r#"
            POST https://api.resend.com/emails
            authorization: Bearer re_test_123456789
            content-type: application/json
            idempotency-key: 01HZY8N3W4Q6K2M5P7R9T1V3X5
            user-agent: herald-resend/0.1.0
            timeout_ms: None
            {
              "from": "RSVP <rsvp@example.com>",
              "to": [
                "guest@example.org"
              ],
              "subject": "You're invited",
              "text": "Join us on June 1st.",
              "tags": [
                {
                  "name": "herald_id",
                  "value": "01HZY8N3W4Q6K2M5P7R9T1V3X5"
                }
              ]
            }"#]]
        .assert_eq(&render_json_request(&r));
    }

    #[test]
    fn every_field_and_base_url_override() {
        let p = resend(json!({
            "api_key": API_KEY,
            "from": "RSVP <rsvp@example.com>",
            "base_url": "http://127.0.0.1:9999/proxy/",
        }));
        let r = request_for(&p, full_message());
        expect![[r#"
            POST http://127.0.0.1:9999/proxy/emails
            authorization: Bearer re_test_123456789
            content-type: application/json
            idempotency-key: 01HZY8N3W4Q6K2M5P7R9T1V3X5
            user-agent: herald-resend/0.1.0
            timeout_ms: None
            {
              "from": "Ann & Bo <ann@example.com>",
              "to": [
                "guest@example.org"
              ],
              "subject": "You're invited",
              "html": "<p>Join us on <b>June 1st</b>.</p>",
              "text": "Join us on June 1st.",
              "reply_to": "rsvp@example.com",
              "headers": {
                "List-Unsubscribe": "<mailto:unsub@example.com>",
                "X-Campaign": "spring"
              },
              "attachments": [
                {
                  "filename": "invite.ics",
                  "content": "QkVHSU46VkNBTEVOREFS",
                  "content_type": "text/calendar"
                }
              ],
              "tags": [
                {
                  "name": "herald_id",
                  "value": "01HZY8N3W4Q6K2M5P7R9T1V3X5"
                },
                {
                  "name": "rsvp",
                  "value": "true"
                },
                {
                  "name": "event",
                  "value": "wedding-2025"
                },
                {
                  "name": "guest_list",
                  "value": "family_A"
                }
              ]
            }"#]]
        .assert_eq(&render_json_request(&r));
        assert_eq!(p.allowed_hosts(), vec!["127.0.0.1".to_owned()]);
    }

    #[test]
    fn attachment_without_type() {
        let p = resend(json!({"api_key": API_KEY, "from": "rsvp@example.com"}));
        let r = request_for(&p, attachment_message());
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            body["attachments"],
            json!([{"filename": "menu.pdf", "content": "JVBERi0xLjQK"}])
        );
    }

    #[test]
    fn same_message_same_bytes() {
        let p = resend(json!({"api_key": API_KEY, "from": "rsvp@example.com"}));
        assert_eq!(
            request_for(&p, full_message()),
            request_for(&p, full_message())
        );
    }

    #[test]
    fn tag_mapping() {
        let got = tags(
            "01H",
            &[
                "a".into(),
                "a:ignored-duplicate".into(),
                "herald_id:spoof".into(),
                "k=v w".into(),
                "ünï cødé".into(),
                ":".into(),
                "x".repeat(300),
            ],
        );
        let pairs: Vec<(String, String)> = got.into_iter().map(|t| (t.name, t.value)).collect();
        assert_eq!(pairs[0], ("herald_id".into(), "01H".into()));
        assert_eq!(pairs[1], ("a".into(), "true".into()));
        assert_eq!(pairs[2], ("k".into(), "v_w".into()));
        assert_eq!(pairs[3], ("_n__c_d_".into(), "true".into()));
        assert_eq!(pairs[4].0.len(), 256);
        assert_eq!(pairs.len(), 5);
    }

    #[test]
    fn no_sender_is_a_provider_failure() {
        let p = resend(json!({"api_key": API_KEY}));
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
    fn message_from_overrides_config_from() {
        let p = resend(json!({"api_key": API_KEY}));
        let r = request_for(&p, full_message());
        assert!(
            r.body
                .starts_with(r#"{"from":"Ann & Bo <ann@example.com>""#)
        );
    }

    #[test]
    fn not_email_is_a_provider_failure() {
        let p = resend(json!({"api_key": API_KEY, "from": "rsvp@example.com"}));
        let mut m = email_message();
        m.content = Content::Sms(SmsContent {
            from: None,
            body: "YES".into(),
            media_urls: vec![],
        });
        assert_eq!(
            done(p.begin(&delivery(m))),
            Outcome::provider_failure("resend delivers email only, not sms (check [routes])")
        );
    }
}
