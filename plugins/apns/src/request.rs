//! The APNs request: `POST {base}/3/device/{token}` over HTTP/2 with the `apns-*` headers
//! and the JSON payload built from a [`PushContent`], after the per-message checks APNs
//! would refuse (a non-hex device token, reserved keys, an oversized payload).
//!
//! The payload is serialised from typed structs and a `BTreeMap`, so its bytes do not
//! depend on serde_json's `preserve_order` feature being on somewhere in the build.

use std::collections::BTreeMap;

use herald_plugin_api::{HttpRequest, Message, PushContent, Secret, UnixMillis};
use herald_plugin_kit::apns;
use herald_plugin_kit::text::non_empty;
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::apns_id::uuid_of_ulid;
use crate::config::Config;

/// The payload key carrying Herald's message id to the app.
pub const HERALD_ID_KEY: &str = "herald_id";
/// APNs' payload limit for everything but VoIP.
pub const MAX_PAYLOAD_BYTES: usize = 4096;

#[derive(Debug, serde::Serialize)]
struct Aps<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<Alert<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sound: Option<&'a str>,
    #[serde(rename = "content-available", skip_serializing_if = "Option::is_none")]
    content_available: Option<u8>,
}

#[derive(Debug, serde::Serialize)]
struct Alert<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
}

/// `{"aps": {...}, "herald_id": ..., <data keys>}`, in that order.
#[derive(Debug)]
struct Payload<'a> {
    aps: Aps<'a>,
    herald_id: &'a str,
    data: &'a BTreeMap<String, String>,
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2 + self.data.len()))?;
        map.serialize_entry("aps", &self.aps)?;
        map.serialize_entry(HERALD_ID_KEY, self.herald_id)?;
        for (key, value) in self.data {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// A request ready but for its `authorization` header.
#[derive(Debug)]
pub struct Prepared {
    pub request: HttpRequest,
    /// The `apns-id` sent, if the message id converted to a UUID.
    pub apns_id: Option<String>,
}

/// APNs device tokens are hex strings (32 bytes today; Apple warns the length may grow).
fn check_device_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("the device token is empty".into());
    }
    if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the device token is not hexadecimal ({} characters; APNs tokens are hex, \
             usually 64 digits; an FCM registration token must go to an fcm provider)",
            token.len()
        ));
    }
    if !token.len().is_multiple_of(2) {
        return Err(format!(
            "the device token has an odd number of hex digits ({})",
            token.len()
        ));
    }
    Ok(())
}

/// Builds the request for `message`, or says why APNs would refuse it.
pub fn prepare(
    config: &Config,
    message: &Message,
    push: &PushContent,
    now: UnixMillis,
) -> Result<Prepared, String> {
    check_device_token(&message.to)?;
    for key in push.data.keys() {
        if key == "aps" || key == HERALD_ID_KEY {
            return Err(format!(
                "data key {key:?} is reserved ({}); rename it",
                if key == "aps" {
                    "APNs' own dictionary"
                } else {
                    "set by Herald to the message id"
                }
            ));
        }
    }

    let (title, body) = (non_empty(&push.title), non_empty(&push.body));
    let sound = non_empty(&push.sound);
    let visible = apns::is_visible(push);
    let aps = Aps {
        alert: (title.is_some() || body.is_some()).then_some(Alert { title, body }),
        badge: push.badge,
        sound,
        content_available: (!visible).then_some(1),
    };
    let payload = serde_json::to_string(&Payload {
        aps,
        herald_id: &message.id,
        data: &push.data,
    })
    .map_err(|e| format!("cannot encode the APNs payload: {e}"))?;
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(format!(
            "the APNs payload is {} bytes; APNs accepts at most {MAX_PAYLOAD_BYTES}",
            payload.len()
        ));
    }

    let mut request = HttpRequest::new(
        "POST",
        format!("{}/3/device/{}", config.base_url, message.to),
    )
    .header("apns-topic", config.topic.clone())
    .header("apns-push-type", apns::push_type(push))
    // APNs' own default for an alert push is 10.
    .header("apns-priority", apns::priority(push).unwrap_or("10"));
    if let Some(expiration) = apns::expiration(push, now) {
        request = request.header("apns-expiration", expiration.to_string());
    }
    if let Some(collapse) = non_empty(&push.collapse_id) {
        request = request.header("apns-collapse-id", collapse);
    }
    let apns_id = uuid_of_ulid(&message.id);
    if let Some(id) = &apns_id {
        request = request.header("apns-id", id.clone());
    }
    request = request.header("content-type", "application/json");
    request.body = payload;
    request.http2 = true;
    Ok(Prepared { request, apns_id })
}

/// Adds `authorization: bearer <provider token>` in front of the other headers.
pub fn authorize(mut request: HttpRequest, jwt: &Secret) -> HttpRequest {
    request.headers.insert(
        0,
        ("authorization".into(), format!("bearer {}", jwt.expose())),
    );
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{push_message, test_config};
    use expect_test::{Expect, expect};
    use herald_plugin_api::PushPriority;

    const NOW: UnixMillis = 1_700_000_000_500;

    fn render(push: PushContent) -> String {
        let message = push_message(push.clone());
        let prepared = prepare(&test_config(), &message, &push, NOW).unwrap();
        let r = authorize(prepared.request, &Secret::new("<jwt>"));
        let mut out = format!("{} {} http2={}\n", r.method, r.url, r.http2);
        for (name, value) in &r.headers {
            out.push_str(&format!("{name}: {value}\n"));
        }
        out.push_str(&r.body);
        out
    }

    fn check(push: PushContent, expected: Expect) {
        expected.assert_eq(&render(push));
    }

    #[test]
    fn full_alert_request() {
        check(
            PushContent {
                title: Some("RSVP".into()),
                body: Some("Will you come?".into()),
                data: [("rsvp_id".to_string(), "r_42".to_string())].into(),
                badge: Some(2),
                sound: Some("default".into()),
                collapse_id: Some("rsvp-r_42".into()),
                priority: Some(PushPriority::High),
                ttl_secs: Some(3600),
            },
            expect![[r#"
                POST https://api.push.apple.com/3/device/8f3e2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f http2=true
                authorization: bearer <jwt>
                apns-topic: com.example.wedding
                apns-push-type: alert
                apns-priority: 10
                apns-expiration: 1700003600
                apns-collapse-id: rsvp-r_42
                apns-id: 018ffc39-1748-80b8-9b92-87d9ba16016d
                content-type: application/json
                {"aps":{"alert":{"title":"RSVP","body":"Will you come?"},"badge":2,"sound":"default"},"herald_id":"01HZY3J5T8G2W9Q4M7V6X1C0BD","rsvp_id":"r_42"}"#]],
        );
    }

    #[test]
    fn minimal_alert_defaults_to_priority_10() {
        check(
            PushContent {
                body: Some("Hi".into()),
                ..Default::default()
            },
            expect![[r#"
                POST https://api.push.apple.com/3/device/8f3e2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f http2=true
                authorization: bearer <jwt>
                apns-topic: com.example.wedding
                apns-push-type: alert
                apns-priority: 10
                apns-id: 018ffc39-1748-80b8-9b92-87d9ba16016d
                content-type: application/json
                {"aps":{"alert":{"body":"Hi"}},"herald_id":"01HZY3J5T8G2W9Q4M7V6X1C0BD"}"#]],
        );
    }

    #[test]
    fn normal_priority_and_badge_only() {
        check(
            PushContent {
                badge: Some(0),
                priority: Some(PushPriority::Normal),
                ttl_secs: Some(0),
                ..Default::default()
            },
            expect![[r#"
                POST https://api.push.apple.com/3/device/8f3e2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f http2=true
                authorization: bearer <jwt>
                apns-topic: com.example.wedding
                apns-push-type: alert
                apns-priority: 5
                apns-expiration: 0
                apns-id: 018ffc39-1748-80b8-9b92-87d9ba16016d
                content-type: application/json
                {"aps":{"badge":0},"herald_id":"01HZY3J5T8G2W9Q4M7V6X1C0BD"}"#]],
        );
    }

    #[test]
    fn data_only_is_a_background_push_at_priority_5() {
        check(
            PushContent {
                data: [
                    ("sync".to_string(), "1".to_string()),
                    ("a".to_string(), "x\"y".to_string()),
                ]
                .into(),
                priority: Some(PushPriority::High),
                ..Default::default()
            },
            expect![[r#"
                POST https://api.push.apple.com/3/device/8f3e2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f http2=true
                authorization: bearer <jwt>
                apns-topic: com.example.wedding
                apns-push-type: background
                apns-priority: 5
                apns-id: 018ffc39-1748-80b8-9b92-87d9ba16016d
                content-type: application/json
                {"aps":{"content-available":1},"herald_id":"01HZY3J5T8G2W9Q4M7V6X1C0BD","a":"x\"y","sync":"1"}"#]],
        );
    }

    #[test]
    fn no_apns_id_when_the_message_id_is_not_a_ulid() {
        let push = PushContent {
            body: Some("Hi".into()),
            ..Default::default()
        };
        let mut message = push_message(push.clone());
        message.id = "legacy-42".into();
        let prepared = prepare(&test_config(), &message, &push, NOW).unwrap();
        assert_eq!(prepared.apns_id, None);
        assert!(prepared.request.headers.iter().all(|(n, _)| n != "apns-id"));
        assert!(prepared.request.body.contains(r#""herald_id":"legacy-42""#));
    }

    #[test]
    fn messages_apns_would_refuse() {
        let push = |data: &[(&str, &str)]| PushContent {
            title: Some("t".into()),
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let refuse = |to: &str, p: PushContent| {
            let mut message = push_message(p.clone());
            message.to = to.into();
            prepare(&test_config(), &message, &p, NOW).unwrap_err()
        };
        let hex = "8f3e2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";
        assert_eq!(
            refuse("fcm-token-abc:APA91b", push(&[])),
            "the device token is not hexadecimal (20 characters; APNs tokens are hex, usually \
             64 digits; an FCM registration token must go to an fcm provider)"
        );
        assert_eq!(
            refuse("abc", push(&[])),
            "the device token has an odd number of hex digits (3)"
        );
        assert_eq!(refuse("", push(&[])), "the device token is empty");
        assert_eq!(
            refuse(hex, push(&[("aps", "x")])),
            "data key \"aps\" is reserved (APNs' own dictionary); rename it"
        );
        assert_eq!(
            refuse(hex, push(&[("herald_id", "x")])),
            "data key \"herald_id\" is reserved (set by Herald to the message id); rename it"
        );
        // The limit is on the encoded payload: 4014 bytes of data fill it exactly.
        let fits = "x".repeat(4014);
        let mut message = push_message(push(&[("blob", &fits)]));
        message.to = hex.into();
        assert!(prepare(&test_config(), &message, &push(&[("blob", &fits)]), NOW).is_ok());
        let too_big = "x".repeat(4015);
        assert_eq!(
            refuse(hex, push(&[("blob", &too_big)])),
            "the APNs payload is 4097 bytes; APNs accepts at most 4096"
        );
        // Upper-case hex is hex.
        let mut message = push_message(push(&[]));
        message.to = hex.to_ascii_uppercase();
        assert!(prepare(&test_config(), &message, &push(&[]), NOW).is_ok());
    }
}
