//! The FCM HTTP v1 `messages:send` request: the JSON body built from a [`PushContent`]
//! (with the per-message checks FCM would refuse), and the authorised HTTP request.
//!
//! The body is serialised from typed structs and `BTreeMap`s, so its bytes do not depend
//! on serde_json's `preserve_order` feature being on somewhere in the build.

use std::collections::BTreeMap;

use herald_plugin_api::{HttpRequest, Message, PushContent, PushPriority, Secret, UnixMillis};
use herald_plugin_kit::apns;
use herald_plugin_kit::text::non_empty;
use serde::Serialize;

/// The data key carrying Herald's message id to the app.
pub const HERALD_ID_KEY: &str = "herald_id";

#[derive(Debug, Serialize)]
struct SendBody<'a> {
    message: FcmMessage<'a>,
}

#[derive(Debug, Serialize)]
struct FcmMessage<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification: Option<Notification<'a>>,
    data: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    android: Option<Android<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apns: Option<Apns<'a>>,
}

#[derive(Debug, Serialize)]
struct Notification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Android<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    collapse_key: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Apns<'a> {
    headers: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<ApnsPayload<'a>>,
}

#[derive(Debug, Serialize)]
struct ApnsPayload<'a> {
    aps: Aps<'a>,
}

#[derive(Debug, Serialize)]
struct Aps<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sound: Option<&'a str>,
    #[serde(rename = "content-available", skip_serializing_if = "Option::is_none")]
    content_available: Option<u8>,
}

/// Why FCM would refuse this data key (`from`, `message_type`, `google*`, `gcm*`, and
/// Herald's own key), if it would.
fn reserved_data_key(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    if key == HERALD_ID_KEY {
        Some("is set by Herald to the message id")
    } else if lower == "from" || lower == "message_type" {
        Some("is reserved by FCM")
    } else if lower.starts_with("google") || lower.starts_with("gcm") {
        Some("is reserved by FCM (keys starting with \"google\" or \"gcm\")")
    } else if key.is_empty() {
        Some("is empty")
    } else {
        None
    }
}

/// Builds the `messages:send` body, or says why FCM would refuse the message.
pub fn send_body(message: &Message, push: &PushContent, now: UnixMillis) -> Result<String, String> {
    if message.to.trim().is_empty() {
        return Err("the device registration token is empty".into());
    }
    let mut data: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, value) in &push.data {
        if let Some(why) = reserved_data_key(key) {
            return Err(format!("data key {key:?} {why}; rename it"));
        }
        data.insert(key, value);
    }
    data.insert(HERALD_ID_KEY, &message.id);

    let (title, body) = (non_empty(&push.title), non_empty(&push.body));
    let visible = title.is_some() || body.is_some();
    let notification = visible.then_some(Notification { title, body });

    let collapse = non_empty(&push.collapse_id);
    let android = Android {
        priority: push.priority.map(|p| match p {
            PushPriority::High => "HIGH",
            PushPriority::Normal => "NORMAL",
        }),
        ttl: push.ttl_secs.map(|t| format!("{t}s")),
        collapse_key: collapse,
    };
    let android = (android.priority.is_some() || android.ttl.is_some() || collapse.is_some())
        .then_some(android);

    // iOS through FCM: the same push type, priority, collapse and expiry as the apns
    // plugin sends, as APNs headers (a badge or a sound alone is an alert push there).
    let mut headers = BTreeMap::new();
    let apns_visible = apns::is_visible(push);
    if !apns_visible {
        headers.insert("apns-push-type", apns::push_type(push).to_string());
    }
    if let Some(priority) = apns::priority(push) {
        headers.insert("apns-priority", priority.to_string());
    }
    if let Some(id) = collapse {
        headers.insert("apns-collapse-id", id.to_string());
    }
    if let Some(expiration) = apns::expiration(push, now) {
        headers.insert("apns-expiration", expiration.to_string());
    }
    let aps = Aps {
        badge: push.badge,
        sound: non_empty(&push.sound),
        content_available: (!apns_visible).then_some(1),
    };
    let has_aps = aps.badge.is_some() || aps.sound.is_some() || aps.content_available.is_some();
    let apns = (!headers.is_empty() || has_aps).then(|| Apns {
        headers,
        payload: has_aps.then_some(ApnsPayload { aps }),
    });

    let body = SendBody {
        message: FcmMessage {
            token: &message.to,
            notification,
            data,
            android,
            apns,
        },
    };
    serde_json::to_string(&body).map_err(|e| format!("cannot encode the FCM message: {e}"))
}

/// The authorised `messages:send` request.
pub fn send_request(send_url: &str, access_token: &Secret, body: String) -> HttpRequest {
    let mut request = HttpRequest::new("POST", send_url)
        .header("authorization", format!("Bearer {}", access_token.expose()))
        .header("content-type", "application/json");
    request.body = body;
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::push_message;
    use expect_test::expect;
    use herald_plugin_api::{Content, PushContent};

    fn body_of(push: PushContent) -> Result<String, String> {
        let message = push_message(push);
        let Content::Push(p) = &message.content else {
            unreachable!()
        };
        send_body(&message, p, 1_700_000_000_000)
    }

    #[test]
    fn full_body() {
        let body = body_of(PushContent {
            title: Some("RSVP".into()),
            body: Some("Will you come?".into()),
            data: [("rsvp_id".to_string(), "r_42".to_string())].into(),
            badge: Some(3),
            sound: Some("default".into()),
            collapse_id: Some("rsvp-r_42".into()),
            priority: Some(PushPriority::High),
            ttl_secs: Some(3600),
        })
        .unwrap();
        expect![[r#"{"message":{"token":"fcm-token-abc:APA91b","notification":{"title":"RSVP","body":"Will you come?"},"data":{"herald_id":"01HZY3J5T8G2W9Q4M7V6X1C0BD","rsvp_id":"r_42"},"android":{"priority":"HIGH","ttl":"3600s","collapse_key":"rsvp-r_42"},"apns":{"headers":{"apns-collapse-id":"rsvp-r_42","apns-expiration":"1700003600","apns-priority":"10"},"payload":{"aps":{"badge":3,"sound":"default"}}}}}"#]]
        .assert_eq(&body);
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["message"]["data"]["rsvp_id"], "r_42");
    }

    #[test]
    fn minimal_alert_body() {
        let body = body_of(PushContent {
            body: Some("Hi".into()),
            ..Default::default()
        })
        .unwrap();
        expect![[r#"{"message":{"token":"fcm-token-abc:APA91b","notification":{"body":"Hi"},"data":{"herald_id":"01HZY3J5T8G2W9Q4M7V6X1C0BD"}}}"#]]
        .assert_eq(&body);
    }

    #[test]
    fn data_only_body_is_a_background_push_on_ios() {
        let body = body_of(PushContent {
            data: [("sync".to_string(), "1".to_string())].into(),
            priority: Some(PushPriority::Normal),
            ttl_secs: Some(0),
            ..Default::default()
        })
        .unwrap();
        expect![[r#"{"message":{"token":"fcm-token-abc:APA91b","data":{"herald_id":"01HZY3J5T8G2W9Q4M7V6X1C0BD","sync":"1"},"android":{"priority":"NORMAL","ttl":"0s"},"apns":{"headers":{"apns-expiration":"0","apns-priority":"5","apns-push-type":"background"},"payload":{"aps":{"content-available":1}}}}}"#]]
        .assert_eq(&body);
    }

    #[test]
    fn a_badge_alone_is_an_alert_push_on_ios_as_with_the_apns_plugin() {
        let body = body_of(PushContent {
            badge: Some(2),
            ..Default::default()
        })
        .unwrap();
        expect![[r#"{"message":{"token":"fcm-token-abc:APA91b","data":{"herald_id":"01HZY3J5T8G2W9Q4M7V6X1C0BD"},"apns":{"headers":{},"payload":{"aps":{"badge":2}}}}}"#]]
        .assert_eq(&body);
    }

    #[test]
    fn reserved_data_keys_are_rejected() {
        for key in [
            "from",
            "message_type",
            "google.c.a",
            "GCM.notification",
            "herald_id",
            "",
        ] {
            let err = body_of(PushContent {
                title: Some("t".into()),
                data: [(key.to_string(), "v".to_string())].into(),
                ..Default::default()
            })
            .unwrap_err();
            assert!(err.starts_with(&format!("data key {key:?} ")), "{err}");
        }
        assert!(
            body_of(PushContent {
                title: Some("t".into()),
                data: [("fromage".to_string(), "brie".to_string())].into(),
                ..Default::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn request_headers() {
        let req = send_request(
            "https://fcm.googleapis.com/v1/projects/p/messages:send",
            &Secret::new("ya29.tok"),
            "{}".into(),
        );
        assert_eq!(req.method, "POST");
        expect![[r#"
            [
                (
                    "authorization",
                    "Bearer ya29.tok",
                ),
                (
                    "content-type",
                    "application/json",
                ),
            ]
        "#]]
        .assert_debug_eq(&req.headers);
    }
}
