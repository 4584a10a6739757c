//! Test helpers shared by the unit tests (fixtures, configs, messages), and the tests of
//! whole exchanges: provider-token reuse over time (one JWT for many sends, reused at
//! 19 min, replaced at 51, replaced after `ExpiredProviderToken`, never per request), the
//! full request, and how answers and transport errors end a delivery.

use std::collections::BTreeSet;
use std::sync::Arc;

use expect_test::expect;
use herald_plugin_api::{
    Channel, Content, Delivery, HttpRequest, HttpResponse, Message, Outcome, Provider,
    ProviderConfig, PushContent, SmsContent, Step, TransportErrorKind, TransportResponse,
    UnixMillis,
};
use herald_plugin_kit::testing::{
    LogLines, recording_host, required_keys, secret_keys, smtp_reply, transport_error,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Apns;
use crate::config::Config;

pub const P8_KEY: &str = "AuthKey_TESTKEY123.p8";
pub const P8_PUBLIC_KEY: &str = "AuthKey_TESTKEY123.pub.pem";
pub const P384_KEY: &str = "test-only-p384.p8";
pub const DEVICE_TOKEN: &str = "8f3e2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";

const T0: UnixMillis = 1_700_000_000_000;
const MINUTE: UnixMillis = 60_000;

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn base_settings() -> Value {
    json!({
        "key_file": fixture(P8_KEY),
        "key_id": "TESTKEY123",
        "team_id": "TEAM000001",
        "topic": "com.example.wedding",
        "environment": "production",
    })
}

pub fn provider_config(settings: Value) -> ProviderConfig {
    herald_plugin_kit::testing::provider_config("apns", settings, None)
}

pub fn test_config() -> Config {
    Config::load(&provider_config(base_settings())).unwrap()
}

pub fn push_message(push: PushContent) -> Message {
    Message {
        id: "01HZY3J5T8G2W9Q4M7V6X1C0BD".into(),
        to: DEVICE_TOKEN.into(),
        content: Content::Push(push),
        tags: vec![],
        created_at: T0,
    }
}

fn delivery(now: UnixMillis) -> Delivery {
    Delivery {
        message: push_message(PushContent {
            title: Some("RSVP".into()),
            body: Some("Will you come?".into()),
            ..Default::default()
        }),
        attempt: 1,
        now,
    }
}

fn provider_from(settings: Value) -> (Apns, LogLines) {
    let (host, lines) = recording_host();
    (Apns::new(provider_config(settings), host).unwrap(), lines)
}

fn provider() -> Apns {
    provider_from(base_settings()).0
}

fn http(status: u16, reason: Option<&str>) -> TransportResponse {
    TransportResponse::Http(HttpResponse {
        status,
        headers: vec![(
            "apns-id".into(),
            "018FFC39-1748-80B8-9B92-87D9BA16016D".into(),
        )],
        body: reason
            .map(|r| json!({ "reason": r }).to_string())
            .unwrap_or_default(),
    })
}

/// Runs one delivery to its outcome with `answer`; returns the outcome and the JWT sent.
fn deliver(apns: &Apns, now: UnixMillis, answer: TransportResponse) -> (Outcome, String) {
    let d = delivery(now);
    match apns.begin(&d) {
        Step::Call { request, state } => {
            let herald_plugin_api::Request::Http(request) = request else {
                panic!("APNs makes HTTP requests only")
            };
            let state_text = state.to_string();
            assert!(
                !state_text.contains("eyJ"),
                "the state carries no token: {state_text}"
            );
            let jwt = bearer(&request);
            match apns.resume(&d, state, answer) {
                Step::Done { outcome } => (outcome, jwt),
                other => panic!("APNs is one call, got {other:?}"),
            }
        }
        Step::Done { outcome } => panic!("no call made: {outcome:?}"),
        other => panic!("a single delivery ended in {other:?}"),
    }
}

fn bearer(request: &HttpRequest) -> String {
    let (name, value) = &request.headers[0];
    assert_eq!(name, "authorization");
    value.strip_prefix("bearer ").unwrap().to_string()
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    iat: u64,
}

/// Verifies the JWT against the fixture's public key and returns its `iat` (seconds).
fn verified_iat(jwt: &str) -> u64 {
    let public = std::fs::read(fixture(P8_PUBLIC_KEY)).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Claims>(
        jwt,
        &DecodingKey::from_ec_pem(&public).unwrap(),
        &validation,
    )
    .unwrap();
    assert_eq!(data.claims.iss, "TEAM000001");
    assert_eq!(data.header.kid.as_deref(), Some("TESTKEY123"));
    data.claims.iat
}

fn accepted() -> Outcome {
    Outcome::Accepted {
        provider_message_id: Some("018FFC39-1748-80B8-9B92-87D9BA16016D".into()),
        delivered: false,
    }
}

#[test]
fn one_jwt_for_many_sends() {
    let apns = provider();
    let mut jwts = BTreeSet::new();
    for i in 0..200 {
        let (outcome, jwt) = deliver(&apns, T0 + i * 5_000, http(200, None));
        assert_eq!(outcome, accepted());
        jwts.insert(jwt);
    }
    assert_eq!(jwts.len(), 1, "200 sends over 16 min share one token");
    assert_eq!(verified_iat(jwts.first().unwrap()), T0 / 1000);
}

#[test]
fn reused_at_19_min_and_replaced_at_51() {
    let apns = provider();
    let (_, first) = deliver(&apns, T0, http(200, None));
    let (_, at_19) = deliver(&apns, T0 + 19 * MINUTE, http(200, None));
    assert_eq!(at_19, first);
    let (_, at_49) = deliver(&apns, T0 + 49 * MINUTE, http(200, None));
    assert_eq!(at_49, first);
    let (_, at_51) = deliver(&apns, T0 + 51 * MINUTE, http(200, None));
    assert_ne!(at_51, first);
    assert_eq!(verified_iat(&at_51), (T0 + 51 * MINUTE) / 1000);
    let (_, at_70) = deliver(&apns, T0 + 70 * MINUTE, http(200, None));
    assert_eq!(at_70, at_51, "the new token is reused in turn");
}

#[test]
fn tokens_change_only_between_20_and_60_minutes() {
    let apns = provider();
    let mut issued = vec![];
    let mut last = String::new();
    // A send every 10 s for 3 hours.
    for i in 0..(3 * 60 * 6) {
        let now = T0 + i * 10_000;
        let (_, jwt) = deliver(&apns, now, http(200, None));
        if jwt != last {
            issued.push(verified_iat(&jwt) * 1000);
            last = jwt;
        }
    }
    assert_eq!(issued.len(), 4, "{issued:?}");
    for pair in issued.windows(2) {
        let age = pair[1] - pair[0];
        assert!((20 * MINUTE..60 * MINUTE).contains(&age), "{age}");
    }
}

#[test]
fn expired_provider_token_retries_with_a_new_token() {
    let (apns, log) = provider_from(base_settings());
    let (outcome, first) = deliver(&apns, T0, http(403, Some("ExpiredProviderToken")));
    assert_eq!(
        outcome,
        Outcome::Retry {
            after_ms: None,
            reason: "APNs ExpiredProviderToken (HTTP 403); retrying with a new provider token"
                .into(),
            breaker: false,
        }
    );
    let (outcome, second) = deliver(&apns, T0 + MINUTE, http(200, None));
    assert_eq!(outcome, accepted());
    assert_ne!(
        second, first,
        "a new token, though the old one is only a minute old"
    );
    assert_eq!(verified_iat(&second), (T0 + MINUTE) / 1000);
    let log = log.lock().unwrap();
    assert!(log.iter().any(|l| l.contains("expired")), "{log:?}");
    assert!(log.iter().all(|l| !l.contains("eyJ")), "{log:?}");
}

#[test]
fn a_late_expiry_answer_for_an_old_token_keeps_the_new_one() {
    let apns = provider();
    // Two deliveries go out with the first token; both come back expired.
    let d = delivery(T0);
    let (Step::Call { state: s1, .. }, Step::Call { state: s2, .. }) =
        (apns.begin(&d), apns.begin(&d))
    else {
        panic!("expected calls")
    };
    apns.resume(&d, s1, http(403, Some("ExpiredProviderToken")));
    let (_, renewed) = deliver(&apns, T0 + 1000, http(200, None));
    apns.resume(&d, s2, http(403, Some("ExpiredProviderToken")));
    let (_, after) = deliver(&apns, T0 + 2000, http(200, None));
    assert_eq!(after, renewed, "one renewal, not one per expired answer");
}

#[test]
fn other_answers_keep_the_token() {
    let apns = provider();
    let (outcome, first) = deliver(&apns, T0, http(403, Some("InvalidProviderToken")));
    assert!(matches!(outcome, Outcome::ProviderFailure { .. }));
    let (outcome, _) = deliver(&apns, T0, http(410, Some("Unregistered")));
    assert!(
        matches!(outcome, Outcome::Rejected { suppress: true, .. }),
        "{outcome:?}"
    );
    let (_, again) = deliver(&apns, T0 + MINUTE, http(200, None));
    assert_eq!(again, first);
}

#[test]
fn concurrent_deliveries_mint_one_token() {
    let apns = Arc::new(provider());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let apns = apns.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| deliver(&apns, T0 + i, http(200, None)).1)
                    .collect::<BTreeSet<String>>()
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    assert_eq!(all.len(), 1);
}

#[test]
fn full_request() {
    let apns = provider();
    let d = Delivery {
        message: push_message(PushContent {
            title: Some("RSVP".into()),
            body: Some("Will you come?".into()),
            data: [("rsvp_id".to_string(), "r_42".to_string())].into(),
            badge: Some(1),
            sound: Some("default".into()),
            collapse_id: Some("rsvp".into()),
            priority: Some(herald_plugin_api::PushPriority::High),
            ttl_secs: Some(86_400),
        }),
        attempt: 1,
        now: T0,
    };
    let Step::Call { request, state } = apns.begin(&d) else {
        panic!("expected a call")
    };
    let herald_plugin_api::Request::Http(request) = request else {
        panic!("expected HTTP")
    };
    assert_eq!(verified_iat(&bearer(&request)), T0 / 1000);
    let mut text = format!(
        "{} {}\nhttp2: {}\ntimeout: {:?}\n",
        request.method, request.url, request.http2, request.timeout_ms
    );
    for (name, value) in &request.headers {
        let value = if name == "authorization" {
            "bearer <jwt>"
        } else {
            value
        };
        text.push_str(&format!("{name}: {value}\n"));
    }
    text.push_str(&format!("\n{}\nstate: {state}", request.body));
    expect![[r#"
        POST https://api.push.apple.com/3/device/8f3e2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f
        http2: true
        timeout: None
        authorization: bearer <jwt>
        apns-topic: com.example.wedding
        apns-push-type: alert
        apns-priority: 10
        apns-expiration: 1700086400
        apns-collapse-id: rsvp
        apns-id: 018ffc39-1748-80b8-9b92-87d9ba16016d
        content-type: application/json

        {"aps":{"alert":{"title":"RSVP","body":"Will you come?"},"badge":1,"sound":"default"},"herald_id":"01HZY3J5T8G2W9Q4M7V6X1C0BD","rsvp_id":"r_42"}
        state: {"apns_id":"018ffc39-1748-80b8-9b92-87d9ba16016d","jwt_generation":1}"#]]
    .assert_eq(&text);
}

#[test]
fn hosts_follow_environment_and_base_url() {
    assert_eq!(provider().allowed_hosts(), ["api.push.apple.com"]);
    let mut sandbox = base_settings();
    sandbox["environment"] = json!("sandbox");
    let (apns, _) = provider_from(sandbox);
    assert_eq!(apns.allowed_hosts(), ["api.sandbox.push.apple.com"]);
    let Step::Call { request, .. } = apns.begin(&delivery(T0)) else {
        panic!("expected a call")
    };
    let herald_plugin_api::Request::Http(request) = request else {
        panic!("expected HTTP")
    };
    assert!(
        request
            .url
            .starts_with("https://api.sandbox.push.apple.com/3/device/")
    );

    let mut local = base_settings();
    local["base_url"] = json!("http://127.0.0.1:2197");
    let (apns, _) = provider_from(local);
    assert_eq!(apns.allowed_hosts(), ["127.0.0.1"]);
    let Step::Call { request, .. } = apns.begin(&delivery(T0)) else {
        panic!("expected a call")
    };
    let herald_plugin_api::Request::Http(request) = request else {
        panic!("expected HTTP")
    };
    assert_eq!(
        request.url,
        format!("http://127.0.0.1:2197/3/device/{DEVICE_TOKEN}")
    );
    assert!(request.http2, "HTTP/2 (prior knowledge over http://)");
}

#[test]
fn messages_apns_cannot_take_make_no_call_and_mint_nothing() {
    let apns = provider();
    let mut fcm_token = delivery(T0);
    fcm_token.message.to = "fcm-token-abc:APA91b".into();
    let Step::Done {
        outcome: Outcome::Rejected {
            reason, suppress, ..
        },
    } = apns.begin(&fcm_token)
    else {
        panic!("expected a rejection")
    };
    assert!(
        reason.starts_with("the device token is not hexadecimal"),
        "{reason}"
    );
    assert!(!suppress);

    let mut sms = delivery(T0);
    sms.message.content = Content::Sms(SmsContent {
        from: None,
        body: "hi".into(),
        media_urls: vec![],
    });
    assert_eq!(
        apns.begin(&sms),
        Step::done(Outcome::provider_failure(
            "apns delivers push notifications only, not sms (check [routes])"
        ))
    );
    // Nothing was minted: the first real send gets generation 1.
    let Step::Call { state, .. } = apns.begin(&delivery(T0)) else {
        panic!("expected a call")
    };
    assert_eq!(state["jwt_generation"], 1);
}

#[test]
fn transport_errors_and_odd_replies() {
    let apns = provider();
    let timeout = transport_error(TransportErrorKind::Timeout, "no answer in 10s");
    assert_eq!(
        deliver(&apns, T0, timeout).0,
        Outcome::retry("APNs send failed (Timeout): no answer in 10s")
    );
    let refused = transport_error(TransportErrorKind::Refused, "host not allowed");
    assert_eq!(
        deliver(&apns, T0, refused).0,
        Outcome::provider_failure("APNs send refused by the host: host not allowed")
    );
    let smtp = smtp_reply(250, None, "");
    assert_eq!(
        deliver(&apns, T0, smtp).0,
        Outcome::provider_failure("APNs send: got an SMTP reply to an HTTP request (host bug)")
    );
    let step = apns.resume(&delivery(T0), json!({"nope": true}), http(200, None));
    assert!(matches!(
        step,
        Step::Done {
            outcome: Outcome::ProviderFailure { .. }
        }
    ));
}

#[test]
fn manifest_declares_push_secrets_and_hosts() {
    let m = Apns::manifest();
    assert_eq!(m.name, "apns");
    assert_eq!(m.channels, [Channel::Push]);
    assert_eq!(m.api_version, herald_plugin_api::API_VERSION);
    assert!(!m.webhooks && !m.idempotent);
    assert_eq!(secret_keys(&m), ["key"]);
    assert_eq!(
        required_keys(&m),
        ["key_id", "team_id", "topic", "environment"]
    );
    assert_eq!(
        m.allowed_hosts,
        ["api.push.apple.com", "api.sandbox.push.apple.com"]
    );
    let debug = format!("{:?}", provider());
    assert!(
        !debug.contains("PRIVATE") && debug.contains("***"),
        "{debug}"
    );
}

#[test]
fn key_id_warning_reaches_the_host_log() {
    let mut settings = base_settings();
    settings["key_id"] = json!("OTHERKEY99");
    let (_, log) = provider_from(settings);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1);
    assert!(
        log[0].starts_with("Warn apns: key_id \"OTHERKEY99\" differs"),
        "{log:?}"
    );
}
