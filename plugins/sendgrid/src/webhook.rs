//! SendGrid's Signed Event Webhook: ECDSA verification, then each event of the batch mapped
//! to a [`StatusUpdate`].
//!
//! **Verification**, over the raw body before any parsing: the signed bytes are the
//! `X-Twilio-Email-Event-Webhook-Timestamp` header string immediately followed by the body;
//! `X-Twilio-Email-Event-Webhook-Signature` is base64 of a DER ECDSA P-256/SHA-256 signature;
//! the key is `webhook_public_key`. SendGrid documents no replay window, so the timestamp
//! must lie within `webhook_tolerance_secs` (default ±600 s) of `now`, both directions.
//! Signatures are required: an instance without `webhook_public_key` refuses every webhook.
//!
//! **Mapping** (providers.md §2 and §8): `deferred` → deferred, `delivered` → delivered,
//! `bounce` → bounced + suppress, except `type: "blocked"` → failed without suppression (a
//! soft block, often reputation), `dropped` → failed (suppress when the reason is about the
//! address: `Bounced Address`, `Unsubscribed Address`, `Spam Reporting Address`, `Invalid`),
//! `spamreport` → complained + suppress, `open` / `click` → opened / clicked. `processed`
//! says nothing Herald does not know, and `unsubscribe`, `group_unsubscribe`,
//! `group_resubscribe`, `account_status_change` and unknown events have no Herald update:
//! they are acknowledged and ignored.
//!
//! **Correlation**: `message_id` = the `herald_id` custom arg (a top-level key of every
//! event), `provider_message_id` = `sg_message_id` up to its first `.` (= the `X-Message-Id`
//! the send returned), `event_id` = `sg_event_id`, `at` = `timestamp`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald_plugin_api::{
    Logger, StatusUpdate, UnixMillis, UpdateKind, WebhookError, WebhookOutput, WebhookRequest,
    WebhookResponse,
};
use herald_plugin_kit::text::join_detail;
use herald_plugin_kit::webhook::check_timestamp;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::request::HERALD_ID_ARG;

pub(crate) const SIGNATURE_HEADER: &str = "X-Twilio-Email-Event-Webhook-Signature";
pub(crate) const TIMESTAMP_HEADER: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// `dropped` reasons that say the address itself is bad or opted out: suppress it.
const ADDRESS_DROP_REASONS: [&str; 4] = [
    "bounced address",
    "unsubscribed address",
    "spam reporting address",
    "invalid",
];

/// Verifies and parses one Event Webhook delivery (a batch of events).
pub(crate) fn handle(
    config: &Config,
    request: &WebhookRequest,
    now: UnixMillis,
    log: &Logger,
) -> Result<WebhookOutput, WebhookError> {
    let Some(key) = &config.webhook_key else {
        return Err(WebhookError::Unauthorized(format!(
            "provider {:?} (sendgrid): signed event webhooks are required; enable signing on \
             the SendGrid Event Webhook and set `webhook_public_key` (its verification key, \
             MFkw...) in the [[providers]] entry",
            config.name
        )));
    };
    verify(key, config.webhook_tolerance_secs, request, now)?;
    Ok(WebhookOutput {
        updates: parse_events(&request.body, log)?,
        inbound: vec![],
        response: WebhookResponse::ok(),
    })
}

/// Checks the ECDSA signature and the timestamp window of `request`.
pub(crate) fn verify(
    key: &VerifyingKey,
    tolerance_secs: u64,
    request: &WebhookRequest,
    now: UnixMillis,
) -> Result<(), WebhookError> {
    let header = |name: &str| {
        request
            .header(name)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| WebhookError::Unauthorized(format!("missing {name} header")))
    };
    let signature = header(SIGNATURE_HEADER)?;
    let timestamp = header(TIMESTAMP_HEADER)?;

    check_timestamp(TIMESTAMP_HEADER, timestamp, now, tolerance_secs)?;

    let der = STANDARD
        .decode(signature.trim())
        .map_err(|_| WebhookError::Unauthorized(format!("{SIGNATURE_HEADER} is not base64")))?;
    let signature = Signature::from_der(&der).map_err(|_| {
        WebhookError::Unauthorized(format!("{SIGNATURE_HEADER} is not a DER ECDSA signature"))
    })?;
    // The exact header string, then the exact body bytes: never re-serialised.
    let mut signed = Vec::with_capacity(timestamp.len() + request.body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(request.body.as_bytes());
    key.verify(&signed, &signature).map_err(|_| {
        WebhookError::Unauthorized(
            "the event webhook signature does not verify (wrong webhook_public_key, or a \
             modified body)"
                .into(),
        )
    })
}

fn parse_events(body: &str, log: &Logger) -> Result<Vec<StatusUpdate>, WebhookError> {
    let events: Vec<Value> = serde_json::from_str(body).map_err(|e| {
        WebhookError::BadRequest(format!(
            "not a SendGrid event batch (expected a JSON array of events): {e}"
        ))
    })?;
    let mut updates = Vec::new();
    for event in &events {
        let Some(event) = event.as_object() else {
            log.debug("sendgrid: skipped a webhook entry that is not an object");
            continue;
        };
        if let Some(update) = map_event(event, log) {
            updates.push(update);
        }
    }
    Ok(updates)
}

fn map_event(event: &Map<String, Value>, log: &Logger) -> Option<StatusUpdate> {
    let text = |key: &str| {
        event
            .get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let name = text("event").unwrap_or_default();
    let (kind, detail, suppress) = match name.as_str() {
        "deferred" => (UpdateKind::Deferred, text("response"), false),
        "delivered" => (UpdateKind::Delivered, text("response"), false),
        "bounce" => {
            let blocked = text("type").as_deref() == Some("blocked");
            let detail = join_detail([text("type"), text("status"), text("reason")]);
            if blocked {
                (UpdateKind::Failed, detail, false)
            } else {
                (UpdateKind::Bounced, detail, true)
            }
        }
        "dropped" => {
            let reason = text("reason");
            let suppress = reason.as_deref().is_some_and(|r| {
                ADDRESS_DROP_REASONS
                    .iter()
                    .any(|a| r.eq_ignore_ascii_case(a))
            });
            (
                UpdateKind::Failed,
                join_detail([Some("dropped".into()), reason]),
                suppress,
            )
        }
        "spamreport" => (UpdateKind::Complained, None, true),
        "open" => {
            let machine = event.get("sg_machine_open").and_then(Value::as_bool) == Some(true);
            (
                UpdateKind::Opened,
                machine.then(|| "machine open".to_owned()),
                false,
            )
        }
        "click" => (UpdateKind::Clicked, text("url"), false),
        other => {
            log.debug(format!("sendgrid: ignored webhook event {other:?}"));
            return None;
        }
    };

    let message_id = text(HERALD_ID_ARG);
    let provider_message_id = text("sg_message_id")
        .and_then(|id| id.split('.').next().map(str::to_owned))
        .filter(|id| !id.is_empty());
    if message_id.is_none() && provider_message_id.is_none() {
        log.warn(format!(
            "sendgrid: {name} event without sg_message_id or {HERALD_ID_ARG}; cannot correlate it"
        ));
        return None;
    }
    Some(StatusUpdate {
        provider_message_id,
        message_id,
        kind,
        event_id: text("sg_event_id"),
        at: event
            .get("timestamp")
            .and_then(Value::as_u64)
            .and_then(|secs| secs.checked_mul(1000)),
        detail,
        suppress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{API_KEY, VECTOR_PUBLIC_KEY, sendgrid};
    use herald_plugin_api::Provider;
    use herald_plugin_kit::testing::{unauthorized, webhook_request};
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;
    use serde_json::json;

    // The Signed Event Webhook vector (providers.md §2): the body ends with CR LF.
    const VECTOR_SIG: &str = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM=";
    const VECTOR_TS: &str = "1600112502";
    const VECTOR_BODY: &str = "[{\"email\":\"hello@world.com\",\"event\":\"dropped\",\"reason\":\"Bounced Address\",\"sg_event_id\":\"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA\",\"sg_message_id\":\"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0\",\"smtp-id\":\"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>\",\"timestamp\":1600112492}]\r\n";
    const VECTOR_NOW: u64 = 1_600_112_502_000;

    fn request(headers: &[(&str, &str)], body: &str) -> WebhookRequest {
        webhook_request(
            "https://hooks.example.com/webhooks/sendgrid-main",
            headers,
            body,
        )
    }

    fn vector_request(sig: &str, ts: &str, body: &str) -> WebhookRequest {
        request(&[(SIGNATURE_HEADER, sig), (TIMESTAMP_HEADER, ts)], body)
    }

    fn vector_provider() -> crate::SendGrid {
        sendgrid(json!({"api_key": API_KEY, "webhook_public_key": VECTOR_PUBLIC_KEY}))
    }

    #[test]
    fn ecdsa_vector_verifies_and_maps() {
        let out = vector_provider()
            .webhook(
                &vector_request(VECTOR_SIG, VECTOR_TS, VECTOR_BODY),
                VECTOR_NOW,
            )
            .unwrap();
        assert_eq!(out.response.status, 200);
        assert_eq!(
            out.updates,
            vec![StatusUpdate {
                provider_message_id: Some("LRzXl_NHStOGhQ4kofSm_A".into()),
                message_id: None,
                kind: UpdateKind::Failed,
                event_id: Some("ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA".into()),
                at: Some(1_600_112_492_000),
                detail: Some("dropped: Bounced Address".into()),
                suppress: true,
            }]
        );
    }

    #[test]
    fn lower_case_header_names() {
        let r = request(
            &[
                (&SIGNATURE_HEADER.to_ascii_lowercase(), VECTOR_SIG),
                (&TIMESTAMP_HEADER.to_ascii_lowercase(), VECTOR_TS),
            ],
            VECTOR_BODY,
        );
        assert!(vector_provider().webhook(&r, VECTOR_NOW).is_ok());
    }

    #[test]
    fn forged_signature_modified_body_and_timestamp_are_refused() {
        let p = vector_provider();
        // One character of the signature changed (still valid DER).
        let forged = VECTOR_SIG.replacen("MEUCIGHQ", "MEUCIGHR", 1);
        let m =
            unauthorized(p.webhook(&vector_request(&forged, VECTOR_TS, VECTOR_BODY), VECTOR_NOW));
        assert!(m.contains("does not verify"), "{m}");
        // The body without its CR LF, or re-serialised: the signature is over raw bytes.
        let trimmed = VECTOR_BODY.trim_end();
        unauthorized(p.webhook(&vector_request(VECTOR_SIG, VECTOR_TS, trimmed), VECTOR_NOW));
        let changed = VECTOR_BODY.replace("dropped", "delivered");
        unauthorized(p.webhook(&vector_request(VECTOR_SIG, VECTOR_TS, &changed), VECTOR_NOW));
        // The timestamp is signed: a different one (inside the window) fails.
        unauthorized(p.webhook(
            &vector_request(VECTOR_SIG, "1600112503", VECTOR_BODY),
            VECTOR_NOW,
        ));
        // Not base64, not DER.
        unauthorized(p.webhook(&vector_request("!!!", VECTOR_TS, VECTOR_BODY), VECTOR_NOW));
        unauthorized(p.webhook(
            &vector_request("aGVsbG8=", VECTOR_TS, VECTOR_BODY),
            VECTOR_NOW,
        ));
    }

    #[test]
    fn timestamp_tolerance_both_directions() {
        let p = vector_provider();
        let r = vector_request(VECTOR_SIG, VECTOR_TS, VECTOR_BODY);
        let ten_min = 600_000;
        assert!(p.webhook(&r, VECTOR_NOW + ten_min).is_ok());
        assert!(p.webhook(&r, VECTOR_NOW - ten_min).is_ok());
        let m = unauthorized(p.webhook(&r, VECTOR_NOW + ten_min + 1000));
        assert!(m.contains("old"), "{m}");
        let m = unauthorized(p.webhook(&r, VECTOR_NOW - ten_min - 1000));
        assert!(m.contains("future"), "{m}");
        unauthorized(p.webhook(&vector_request(VECTOR_SIG, "soon", VECTOR_BODY), VECTOR_NOW));
        // The window is configurable.
        let tight = sendgrid(
            json!({"api_key": API_KEY, "webhook_public_key": VECTOR_PUBLIC_KEY,
                                    "webhook_tolerance_secs": 60}),
        );
        unauthorized(tight.webhook(&r, VECTOR_NOW + 61_000));
        assert!(tight.webhook(&r, VECTOR_NOW + 60_000).is_ok());
    }

    #[test]
    fn missing_headers_are_refused() {
        let p = vector_provider();
        let m = unauthorized(p.webhook(
            &request(&[(TIMESTAMP_HEADER, VECTOR_TS)], VECTOR_BODY),
            VECTOR_NOW,
        ));
        assert!(m.contains(SIGNATURE_HEADER), "{m}");
        let m = unauthorized(p.webhook(
            &request(&[(SIGNATURE_HEADER, VECTOR_SIG)], VECTOR_BODY),
            VECTOR_NOW,
        ));
        assert!(m.contains(TIMESTAMP_HEADER), "{m}");
    }

    #[test]
    fn unconfigured_key_refuses_and_names_the_key() {
        let p = sendgrid(json!({"api_key": API_KEY}));
        let m = unauthorized(p.webhook(
            &vector_request(VECTOR_SIG, VECTOR_TS, VECTOR_BODY),
            VECTOR_NOW,
        ));
        assert!(m.contains("`webhook_public_key`"), "{m}");
    }

    /// A test key pair, so tests can sign their own batches as SendGrid would.
    fn test_key() -> (SigningKey, String) {
        let sk = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let der = p256::PublicKey::from(sk.verifying_key())
            .to_public_key_der()
            .unwrap();
        (sk, STANDARD.encode(der.as_bytes()))
    }

    fn deliver(events: &Value) -> Result<WebhookOutput, WebhookError> {
        let (sk, public) = test_key();
        let p = sendgrid(json!({"api_key": API_KEY, "webhook_public_key": public}));
        let body = format!("{events}\r\n");
        let ts = "1700000000";
        let sig: Signature = sk.sign(format!("{ts}{body}").as_bytes());
        let sig = STANDARD.encode(sig.to_der().as_bytes());
        p.webhook(&vector_request(&sig, ts, &body), 1_700_000_000_000)
    }

    /// The minimal sample of providers.md §2, verbatim.
    #[test]
    fn documented_sample_delivered() {
        let out = deliver(&json!([{"email":"b@y.io","timestamp":1700000000,"event":"delivered","sg_event_id":"ev1","sg_message_id":"abc123.recvd-1","notif_id":"n_1"}])).unwrap();
        assert_eq!(
            out.updates,
            vec![StatusUpdate {
                provider_message_id: Some("abc123".into()),
                message_id: None,
                kind: UpdateKind::Delivered,
                event_id: Some("ev1".into()),
                at: Some(1_700_000_000_000),
                detail: None,
                suppress: false,
            }]
        );
    }

    fn event(name: &str, extra: Value) -> Value {
        let mut e = json!({
            "email": "guest@example.org",
            "timestamp": 1_700_000_000,
            "event": name,
            "sg_event_id": format!("ev-{name}"),
            "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-1.0",
            "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
            "herald_id": "01HZY8N3W4Q6K2M5P7R9T1V3X5",
            "category": ["rsvp"],
        });
        if let (Value::Object(e), Value::Object(x)) = (&mut e, extra) {
            e.extend(x);
        }
        e
    }

    #[test]
    fn event_mapping_in_one_batch() {
        let rows: Vec<(Value, UpdateKind, Option<&str>, bool)> = vec![
            (
                event(
                    "deferred",
                    json!({"response": "400 try again later", "attempt": "5"}),
                ),
                UpdateKind::Deferred,
                Some("400 try again later"),
                false,
            ),
            (
                event("delivered", json!({"response": "250 OK"})),
                UpdateKind::Delivered,
                Some("250 OK"),
                false,
            ),
            (
                event(
                    "bounce",
                    json!({"type": "bounce", "status": "5.1.1",
                                       "reason": "550 5.1.1 user unknown"}),
                ),
                UpdateKind::Bounced,
                Some("bounce: 5.1.1: 550 5.1.1 user unknown"),
                true,
            ),
            (
                event(
                    "bounce",
                    json!({"type": "blocked", "status": "4.0.0",
                                       "reason": "blocked by reputation",
                                       "bounce_classification": "Reputation"}),
                ),
                UpdateKind::Failed,
                Some("blocked: 4.0.0: blocked by reputation"),
                false,
            ),
            (
                event("dropped", json!({"reason": "Unsubscribed Address"})),
                UpdateKind::Failed,
                Some("dropped: Unsubscribed Address"),
                true,
            ),
            (
                event(
                    "dropped",
                    json!({"reason": "Spam Content (if spam checker app enabled)"}),
                ),
                UpdateKind::Failed,
                Some("dropped: Spam Content (if spam checker app enabled)"),
                false,
            ),
            (
                event("spamreport", json!({})),
                UpdateKind::Complained,
                None,
                true,
            ),
            (
                event("open", json!({"sg_machine_open": false})),
                UpdateKind::Opened,
                None,
                false,
            ),
            (
                event("open", json!({"sg_machine_open": true})),
                UpdateKind::Opened,
                Some("machine open"),
                false,
            ),
            (
                event("click", json!({"url": "https://example.com/rsvp"})),
                UpdateKind::Clicked,
                Some("https://example.com/rsvp"),
                false,
            ),
        ];
        let batch = Value::Array(rows.iter().map(|r| r.0.clone()).collect());
        let out = deliver(&batch).unwrap();
        assert_eq!(out.updates.len(), rows.len());
        for ((sent, kind, detail, suppress), u) in rows.iter().zip(&out.updates) {
            let name = &sent["event"];
            assert_eq!(u.kind, *kind, "{name}");
            assert_eq!(u.detail.as_deref(), *detail, "{name}");
            assert_eq!(u.suppress, *suppress, "{name}");
            assert_eq!(
                u.message_id.as_deref(),
                Some("01HZY8N3W4Q6K2M5P7R9T1V3X5"),
                "{name}"
            );
            assert_eq!(
                u.provider_message_id.as_deref(),
                Some("LRzXl_NHStOGhQ4kofSm_A"),
                "{name}"
            );
            assert_eq!(
                u.event_id,
                sent["sg_event_id"].as_str().map(str::to_owned),
                "{name}"
            );
            assert_eq!(u.at, Some(1_700_000_000_000), "{name}");
        }
    }

    #[test]
    fn informational_and_uncorrelatable_events_are_ignored() {
        let batch = json!([
            event("processed", json!({})),
            event("unsubscribe", json!({})),
            event("group_unsubscribe", json!({"asm_group_id": 1})),
            event("group_resubscribe", json!({"asm_group_id": 1})),
            {"event": "account_status_change", "type": "compliance_suspend", "timestamp": 1},
            {"event": "delivered", "timestamp": 1, "sg_event_id": "orphan"},
            "not an object",
            event("delivered", json!({})),
        ]);
        let out = deliver(&batch).unwrap();
        assert_eq!(out.updates.len(), 1, "{out:?}");
        assert_eq!(out.updates[0].kind, UpdateKind::Delivered);
    }

    #[test]
    fn signed_garbage_is_a_bad_request() {
        for body in [json!({"event": "delivered"}), json!("x")] {
            match deliver(&body) {
                Err(WebhookError::BadRequest(_)) => {}
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
