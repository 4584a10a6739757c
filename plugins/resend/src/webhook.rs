//! Resend webhooks: Svix signature verification, then the event mapped to a
//! [`StatusUpdate`] (or an [`InboundMessage`] for `email.received`).
//!
//! **Verification** (Svix / Standard Webhooks), over the raw body before any parsing:
//! headers `svix-id`, `svix-timestamp`, `svix-signature` (or the unbranded `webhook-*`
//! names); key = the `whsec_` secret base64-decoded; MAC = HMAC-SHA256 of
//! `{id}.{timestamp}.{body}`, base64; the signature header is a space-separated list of
//! `v1,<mac>` entries (several during a secret rotation), any of which may match, compared
//! in constant time; the timestamp must be within ±5 minutes of `now`. Signatures are
//! required: an instance without `webhook_secret` refuses every webhook.
//!
//! **Mapping** (providers.md §1): `email.sent` → sent, `email.delivery_delayed` → deferred,
//! `email.delivered` → delivered, `email.bounced` with `bounce.type = Permanent` → bounced +
//! suppress (a `Transient` or `Undetermined` bounce is *not* a hard bounce: failed, no
//! suppression), `email.complained` → complained + suppress, `email.failed` → failed,
//! `email.suppressed` → failed + suppress (Resend already suppresses the address),
//! `email.opened` / `email.clicked` → opened / clicked, `email.received` → an inbound
//! email (bare from / first to addresses) with an **empty body**: the webhook carries no
//! text (`EmailReceivedEventData` has the subject, addresses and attachment metadata only;
//! the text is served by the received-email API, which a webhook step cannot fetch), and
//! the subject is not the reply — standing it in would let "Re: Yes" read as an answer.
//! `email.scheduled` says nothing
//! Herald does not know; `contact.*`, `domain.*`, `suppression.*` and unknown types are
//! not message events: all are acknowledged and ignored.
//!
//! **Correlation**: `provider_message_id` = `data.email_id` (the id `POST /emails` returned),
//! `message_id` = the `herald_id` tag the request set, `event_id` = the `svix-id` (stable
//! across Resend's redeliveries, so the host dedupes on it).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald_plugin_api::{
    Channel, InboundMessage, Logger, StatusUpdate, UnixMillis, UpdateKind, WebhookError,
    WebhookOutput, WebhookRequest, WebhookResponse, email_address_part,
};
use herald_plugin_kit::text::join_detail;
use herald_plugin_kit::webhook::check_timestamp;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::request::HERALD_ID_TAG;
use crate::rfc3339;

/// Svix's replay window, applied both ways (too old and too far in the future).
pub(crate) const TOLERANCE_SECS: u64 = 5 * 60;

/// Verifies and parses one Resend webhook delivery.
pub(crate) fn handle(
    config: &Config,
    request: &WebhookRequest,
    now: UnixMillis,
    log: &Logger,
) -> Result<WebhookOutput, WebhookError> {
    let Some(key) = &config.webhook_key else {
        return Err(WebhookError::Unauthorized(format!(
            "provider {:?} (resend): webhook signatures are required; set `webhook_secret` \
             (the whsec_... signing secret of the Resend webhook) in its [[providers]] entry",
            config.name
        )));
    };
    let event_id = verify(key.bytes(), request, now)?;
    let (updates, inbound) = parse_event(&request.body, event_id, log)?;
    Ok(WebhookOutput {
        updates,
        inbound,
        response: WebhookResponse::ok(),
    })
}

/// Checks the Svix signature of `request`; returns the message id (`svix-id`).
pub(crate) fn verify(
    key: &[u8],
    request: &WebhookRequest,
    now: UnixMillis,
) -> Result<String, WebhookError> {
    let header = |svix: &str, unbranded: &str| {
        request
            .header(svix)
            .or_else(|| request.header(unbranded))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                WebhookError::Unauthorized(format!("missing {svix} (or {unbranded}) header"))
            })
    };
    let id = header("svix-id", "webhook-id")?;
    let timestamp = header("svix-timestamp", "webhook-timestamp")?;
    let signatures = header("svix-signature", "webhook-signature")?;

    check_timestamp("svix-timestamp", timestamp, now, TOLERANCE_SECS)?;

    let expected = mac(key, id, timestamp, request.body.as_bytes())?;
    let matched = signatures
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
        .any(|sig| bool::from(expected.as_slice().ct_eq(sig.as_slice())));
    if matched {
        Ok(id.to_owned())
    } else {
        Err(WebhookError::Unauthorized(
            "no v1 signature in svix-signature matches (wrong webhook_secret, or a modified body)"
                .into(),
        ))
    }
}

/// HMAC-SHA256 of `{id}.{timestamp}.{body}`.
fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Result<Vec<u8>, WebhookError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|_| WebhookError::Unauthorized("unusable webhook key".into()))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(mac.finalize().into_bytes().to_vec())
}

/// The Svix signature header value (`v1,<base64>`) for a payload: what Resend sends.
#[cfg(test)]
pub(crate) fn sign(key: &[u8], id: &str, timestamp: &str, body: &str) -> String {
    format!(
        "v1,{}",
        STANDARD.encode(mac(key, id, timestamp, body.as_bytes()).unwrap())
    )
}

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    data: Value,
}

fn parse_event(
    body: &str,
    event_id: String,
    log: &Logger,
) -> Result<(Vec<StatusUpdate>, Vec<InboundMessage>), WebhookError> {
    let event: Event = serde_json::from_str(body).map_err(|e| {
        WebhookError::BadRequest(format!(
            "not a Resend webhook event (expected {{type, data}}): {e}"
        ))
    })?;
    let data = &event.data;
    let str_at = |path: &[&str]| -> Option<String> {
        let mut v = data;
        for key in path {
            v = v.get(key)?;
        }
        v.as_str().map(str::to_owned)
    };

    if event.kind == "email.received" {
        // Bare addresses, so the host can match the sender against its outbound recipients.
        let to = data
            .get("to")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(|a| email_address_part(a).to_owned())
            .unwrap_or_default();
        let from = str_at(&["from"])
            .map(|a| email_address_part(&a).to_owned())
            .unwrap_or_default();
        // The webhook carries no body (Resend serves it from the receiving API, which a
        // webhook call cannot fetch), and the subject is not the reply: the body is empty.
        return Ok((
            vec![],
            vec![InboundMessage {
                channel: Channel::Email,
                from,
                to,
                body: String::new(),
                provider_message_id: str_at(&["email_id"]),
                opt_out: None,
            }],
        ));
    }

    let (kind, detail, suppress) = match event.kind.as_str() {
        "email.sent" => (UpdateKind::Sent, None, false),
        "email.delivery_delayed" => (UpdateKind::Deferred, None, false),
        "email.delivered" => (UpdateKind::Delivered, None, false),
        "email.bounced" => {
            let bounce_type = str_at(&["bounce", "type"]).unwrap_or_default();
            let detail = join_detail([
                Some(bounce_type.clone()).filter(|s| !s.is_empty()),
                str_at(&["bounce", "subType"]),
                str_at(&["bounce", "message"]),
            ]);
            if bounce_type == "Permanent" {
                (UpdateKind::Bounced, detail, true)
            } else {
                // Transient (mailbox full, too large…) or Undetermined: not a hard bounce.
                (UpdateKind::Failed, detail, false)
            }
        }
        "email.complained" => (UpdateKind::Complained, None, true),
        "email.failed" => (UpdateKind::Failed, str_at(&["failed", "reason"]), false),
        "email.suppressed" => (
            UpdateKind::Failed,
            join_detail([
                Some("suppressed".to_owned()),
                str_at(&["suppressed", "reason"]),
                str_at(&["suppressed", "message"]),
            ]),
            true,
        ),
        "email.opened" => (UpdateKind::Opened, None, false),
        "email.clicked" => (UpdateKind::Clicked, str_at(&["click", "link"]), false),
        other => {
            log.debug(format!("resend: ignored webhook event {other:?}"));
            return Ok((vec![], vec![]));
        }
    };

    let provider_message_id = str_at(&["email_id"]);
    let message_id = herald_id(data);
    if provider_message_id.is_none() && message_id.is_none() {
        return Err(WebhookError::BadRequest(format!(
            "{} event without data.email_id or a {HERALD_ID_TAG} tag",
            event.kind
        )));
    }
    Ok((
        vec![StatusUpdate {
            provider_message_id,
            message_id,
            kind,
            event_id: Some(event_id),
            at: event.created_at.as_deref().and_then(rfc3339::parse_ms),
            detail,
            suppress,
        }],
        vec![],
    ))
}

/// The `herald_id` tag: `data.tags` is an object (`{"herald_id": "..."}`) in webhook
/// payloads; the `[{name, value}]` list form is accepted as well.
fn herald_id(data: &Value) -> Option<String> {
    let tags = data.get("tags")?;
    let value = match tags {
        Value::Object(map) => map.get(HERALD_ID_TAG)?,
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(HERALD_ID_TAG))?
            .get("value")?,
        _ => return None,
    };
    value.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{API_KEY, WEBHOOK_SECRET, resend};
    use herald_plugin_api::Provider;
    use herald_plugin_kit::testing::{unauthorized, webhook_request};
    use serde_json::json;

    // The Svix test vector (providers.md §1).
    const VECTOR_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const VECTOR_TS: &str = "1649367553";
    const VECTOR_BODY: &str = r#"{"email":"test@example.com","username":"test_user"}"#;
    const VECTOR_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
    const VECTOR_NOW: u64 = 1_649_367_553_000;

    fn key() -> Vec<u8> {
        STANDARD
            .decode(WEBHOOK_SECRET.trim_start_matches("whsec_"))
            .unwrap()
    }

    fn request(headers: &[(&str, &str)], body: &str) -> WebhookRequest {
        webhook_request(
            "https://hooks.example.com/webhooks/resend-main",
            headers,
            body,
        )
    }

    fn vector_request(sig: &str, body: &str) -> WebhookRequest {
        request(
            &[
                ("svix-id", VECTOR_ID),
                ("svix-timestamp", VECTOR_TS),
                ("svix-signature", sig),
            ],
            body,
        )
    }

    #[test]
    fn svix_vector() {
        assert_eq!(sign(&key(), VECTOR_ID, VECTOR_TS, VECTOR_BODY), VECTOR_SIG);
        let r = vector_request(VECTOR_SIG, VECTOR_BODY);
        assert_eq!(verify(&key(), &r, VECTOR_NOW).unwrap(), VECTOR_ID);
    }

    #[test]
    fn signature_list_and_versions() {
        // Rotation: several entries, any v1 may match.
        let list = format!("v1,Zm9yZ2Vk {VECTOR_SIG} v2,abc");
        assert!(verify(&key(), &vector_request(&list, VECTOR_BODY), VECTOR_NOW).is_ok());
        // The right MAC under another version does not count.
        let v2 = VECTOR_SIG.replacen("v1,", "v2,", 1);
        unauthorized(verify(
            &key(),
            &vector_request(&v2, VECTOR_BODY),
            VECTOR_NOW,
        ));
        // Garbage entries are skipped, not fatal.
        let junk = format!("nonsense v1,!!! {VECTOR_SIG}");
        assert!(verify(&key(), &vector_request(&junk, VECTOR_BODY), VECTOR_NOW).is_ok());
    }

    #[test]
    fn forged_signature_and_modified_body_are_refused() {
        let forged = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkx=";
        let m = unauthorized(verify(
            &key(),
            &vector_request(forged, VECTOR_BODY),
            VECTOR_NOW,
        ));
        assert!(m.contains("no v1 signature"), "{m}");
        let body = VECTOR_BODY.replace("test_user", "admin");
        unauthorized(verify(
            &key(),
            &vector_request(VECTOR_SIG, &body),
            VECTOR_NOW,
        ));
        // A different key.
        unauthorized(verify(
            b"other key",
            &vector_request(VECTOR_SIG, VECTOR_BODY),
            VECTOR_NOW,
        ));
        // The id is signed too.
        let r = request(
            &[
                ("svix-id", "msg_other"),
                ("svix-timestamp", VECTOR_TS),
                ("svix-signature", VECTOR_SIG),
            ],
            VECTOR_BODY,
        );
        unauthorized(verify(&key(), &r, VECTOR_NOW));
    }

    #[test]
    fn timestamp_tolerance_both_directions() {
        let r = vector_request(VECTOR_SIG, VECTOR_BODY);
        let five_min = 300_000;
        assert!(verify(&key(), &r, VECTOR_NOW + five_min).is_ok());
        assert!(verify(&key(), &r, VECTOR_NOW - five_min).is_ok());
        let m = unauthorized(verify(&key(), &r, VECTOR_NOW + five_min + 1000));
        assert!(m.contains("old"), "{m}");
        let m = unauthorized(verify(&key(), &r, VECTOR_NOW - five_min - 1000));
        assert!(m.contains("future"), "{m}");
        let bad_ts = request(
            &[
                ("svix-id", VECTOR_ID),
                ("svix-timestamp", "yesterday"),
                ("svix-signature", VECTOR_SIG),
            ],
            VECTOR_BODY,
        );
        unauthorized(verify(&key(), &bad_ts, VECTOR_NOW));
    }

    #[test]
    fn missing_headers_are_refused() {
        let all = [
            ("svix-id", VECTOR_ID),
            ("svix-timestamp", VECTOR_TS),
            ("svix-signature", VECTOR_SIG),
        ];
        for skip in 0..all.len() {
            let headers: Vec<_> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, h)| *h)
                .collect();
            let m = unauthorized(verify(&key(), &request(&headers, VECTOR_BODY), VECTOR_NOW));
            assert!(m.contains(all[skip].0), "{m}");
        }
    }

    #[test]
    fn unbranded_webhook_headers() {
        let r = request(
            &[
                ("Webhook-Id", VECTOR_ID),
                ("Webhook-Timestamp", VECTOR_TS),
                ("Webhook-Signature", VECTOR_SIG),
            ],
            VECTOR_BODY,
        );
        assert_eq!(verify(&key(), &r, VECTOR_NOW).unwrap(), VECTOR_ID);
    }

    #[test]
    fn unconfigured_secret_refuses_and_names_the_key() {
        let p = resend(json!({"api_key": API_KEY}));
        let m = unauthorized(p.webhook(&vector_request(VECTOR_SIG, VECTOR_BODY), VECTOR_NOW));
        assert!(m.contains("`webhook_secret`"), "{m}");
    }

    /// Signs `body` as Resend would and runs it through the provider.
    fn deliver(body: &Value) -> Result<WebhookOutput, WebhookError> {
        let p = resend(json!({"api_key": API_KEY, "webhook_secret": WEBHOOK_SECRET}));
        let body = body.to_string();
        let ts = "1700000000";
        let sig = sign(&key(), "msg_1", ts, &body);
        let r = request(
            &[
                ("svix-id", "msg_1"),
                ("svix-timestamp", ts),
                ("svix-signature", &sig),
            ],
            &body,
        );
        p.webhook(&r, 1_700_000_000_000)
    }

    fn one_update(body: Value) -> StatusUpdate {
        let out = deliver(&body).unwrap();
        assert_eq!(out.response.status, 200);
        assert!(out.inbound.is_empty());
        assert_eq!(out.updates.len(), 1, "{out:?}");
        out.updates.into_iter().next().unwrap()
    }

    fn event(kind: &str, extra: Value) -> Value {
        let mut data = json!({
            "email_id": "4ef9a417-02e9-4d39-ad75-9611e0fcc33c",
            "created_at": "2024-01-01T00:00:00Z",
            "from": "A <a@x.io>",
            "to": ["b@y.io"],
            "subject": "Hi",
            "tags": {"herald_id": "01HZY8N3W4Q6K2M5P7R9T1V3X5"},
        });
        if let (Value::Object(d), Value::Object(e)) = (&mut data, extra) {
            d.extend(e);
        }
        json!({"type": kind, "created_at": "2024-01-01T00:00:01.500Z", "data": data})
    }

    /// The minimal sample of providers.md §1, verbatim apart from the signature.
    #[test]
    fn documented_sample_delivered() {
        let body = json!({"type":"email.delivered","created_at":"2024-01-01T00:00:00Z","data":{"email_id":"4ef9...","from":"A <a@x.io>","to":["b@y.io"],"subject":"Hi","tags":{"notif_id":"n_1"}}});
        let u = one_update(body);
        assert_eq!(
            u,
            StatusUpdate {
                provider_message_id: Some("4ef9...".into()),
                message_id: None,
                kind: UpdateKind::Delivered,
                event_id: Some("msg_1".into()),
                at: Some(1_704_067_200_000),
                detail: None,
                suppress: false,
            }
        );
    }

    #[test]
    fn event_mapping() {
        let rows: Vec<(Value, UpdateKind, Option<&str>, bool)> = vec![
            (
                event("email.sent", json!({})),
                UpdateKind::Sent,
                None,
                false,
            ),
            (
                event("email.delivery_delayed", json!({})),
                UpdateKind::Deferred,
                None,
                false,
            ),
            (
                event("email.delivered", json!({})),
                UpdateKind::Delivered,
                None,
                false,
            ),
            (
                event(
                    "email.bounced",
                    json!({"bounce": {"type": "Permanent", "subType": "General",
                        "message": "The recipient's email provider sent a hard bounce.",
                        "diagnosticCode": ["smtp; 550 5.1.1 user unknown"]}}),
                ),
                UpdateKind::Bounced,
                Some("Permanent: General: The recipient's email provider sent a hard bounce."),
                true,
            ),
            (
                event(
                    "email.bounced",
                    json!({"bounce": {"type": "Transient", "subType": "MailboxFull",
                        "message": "Mailbox full", "diagnosticCode": []}}),
                ),
                UpdateKind::Failed,
                Some("Transient: MailboxFull: Mailbox full"),
                false,
            ),
            (
                event(
                    "email.bounced",
                    json!({"bounce": {"type": "Undetermined", "subType": "Undetermined",
                        "message": "?", "diagnosticCode": []}}),
                ),
                UpdateKind::Failed,
                Some("Undetermined: Undetermined: ?"),
                false,
            ),
            (
                event("email.complained", json!({})),
                UpdateKind::Complained,
                None,
                true,
            ),
            (
                event(
                    "email.failed",
                    json!({"failed": {"reason": "reached_daily_quota"}}),
                ),
                UpdateKind::Failed,
                Some("reached_daily_quota"),
                false,
            ),
            (
                event(
                    "email.suppressed",
                    json!({"suppressed": {"reason": "previous_bounce", "type": "Suppressed",
                        "message": "previously bounced", "diagnosticCode": []}}),
                ),
                UpdateKind::Failed,
                Some("suppressed: previous_bounce: previously bounced"),
                true,
            ),
            (
                event("email.opened", json!({})),
                UpdateKind::Opened,
                None,
                false,
            ),
            (
                event(
                    "email.clicked",
                    json!({"click": {"ipAddress": "1.2.3.4", "link": "https://example.com/rsvp",
                        "timestamp": "2024-01-01T00:00:01Z", "userAgent": "UA"}}),
                ),
                UpdateKind::Clicked,
                Some("https://example.com/rsvp"),
                false,
            ),
        ];
        for (body, kind, detail, suppress) in rows {
            let name = body["type"].clone();
            let u = one_update(body);
            assert_eq!(u.kind, kind, "{name}");
            assert_eq!(u.detail.as_deref(), detail, "{name}");
            assert_eq!(u.suppress, suppress, "{name}");
            assert_eq!(
                u.provider_message_id.as_deref(),
                Some("4ef9a417-02e9-4d39-ad75-9611e0fcc33c"),
                "{name}"
            );
            assert_eq!(
                u.message_id.as_deref(),
                Some("01HZY8N3W4Q6K2M5P7R9T1V3X5"),
                "{name}"
            );
            assert_eq!(u.event_id.as_deref(), Some("msg_1"), "{name}");
            assert_eq!(u.at, Some(1_704_067_201_500), "{name}");
        }
    }

    #[test]
    fn tags_as_a_list() {
        let body = event(
            "email.delivered",
            json!({"tags": [{"name": "rsvp", "value": "true"},
                            {"name": "herald_id", "value": "01HZ"}]}),
        );
        assert_eq!(one_update(body).message_id.as_deref(), Some("01HZ"));
    }

    #[test]
    fn non_message_events_are_ignored() {
        for kind in [
            "contact.created",
            "contact.updated",
            "domain.updated",
            "suppression.added",
            "email.scheduled",
            "email.something_new",
        ] {
            let body = json!({"type": kind, "created_at": "2024-01-01T00:00:00Z",
                              "data": {"id": "x", "email": "b@y.io"}});
            let out = deliver(&body).unwrap();
            assert!(
                out.updates.is_empty() && out.inbound.is_empty(),
                "{kind}: {out:?}"
            );
            assert_eq!(out.response.status, 200);
        }
    }

    #[test]
    fn received_is_inbound() {
        let body = json!({"type": "email.received", "created_at": "2024-01-01T00:00:00Z",
            "data": {"email_id": "in_1", "created_at": "2024-01-01T00:00:00Z",
                     "from": "Guest <b@y.io>", "to": ["RSVP <rsvp@example.com>"], "subject": "Re: YES",
                     "message_id": "<abc@y.io>", "bcc": [], "cc": [], "attachments": []}});
        let out = deliver(&body).unwrap();
        assert!(out.updates.is_empty());
        assert_eq!(
            out.inbound,
            vec![InboundMessage {
                channel: Channel::Email,
                from: "b@y.io".into(),
                to: "rsvp@example.com".into(),
                body: String::new(),
                provider_message_id: Some("in_1".into()),
                opt_out: None,
            }]
        );
    }

    #[test]
    fn signed_garbage_is_a_bad_request() {
        for body in [
            json!([1, 2]),
            json!({"data": {}}),
            json!({"type": "email.sent", "data": {}}),
        ] {
            match deliver(&body) {
                Err(WebhookError::BadRequest(_)) => {}
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
