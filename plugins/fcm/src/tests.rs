//! Test helpers shared by the unit tests (fixtures, configs, messages, a scripted FCM and
//! token endpoint), and the tests of whole exchanges: token caching over time, the 401
//! refresh, the full requests, and how failures of either call end a delivery.

use std::sync::{Arc, Mutex};

use expect_test::{Expect, expect};
use herald_plugin_api::{
    Content, Delivery, EmailContent, HttpRequest, HttpResponse, Message, Outcome, Provider,
    ProviderConfig, PushContent, PushPriority, Step, TransportErrorKind, TransportResponse,
    UnixMillis,
};
use herald_plugin_kit::testing::{
    LogLines, quiet_host, recording_host, secret_keys, smtp_reply, transport_error,
};
use serde_json::{Value, json};

use crate::Fcm;
use crate::config::Config;

pub const SERVICE_ACCOUNT: &str = "test-only-service-account.json";
pub const RSA_PUBLIC_KEY: &str = "test-only-rsa.pub.pem";

const T0: UnixMillis = 1_700_000_000_000;
const MINUTE: UnixMillis = 60_000;

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn provider_config(settings: Value) -> ProviderConfig {
    herald_plugin_kit::testing::provider_config("fcm", settings, None)
}

pub fn test_config() -> Config {
    Config::load(&provider_config(
        json!({"credentials_file": fixture(SERVICE_ACCOUNT)}),
    ))
    .unwrap()
}

pub fn push_message(push: PushContent) -> Message {
    Message {
        id: "01HZY3J5T8G2W9Q4M7V6X1C0BD".into(),
        to: "fcm-token-abc:APA91b".into(),
        content: Content::Push(push),
        tags: vec!["rsvp".into()],
        created_at: T0,
    }
}

fn alert() -> PushContent {
    PushContent {
        title: Some("RSVP".into()),
        body: Some("Will you come?".into()),
        ..Default::default()
    }
}

fn delivery(now: UnixMillis) -> Delivery {
    Delivery {
        message: push_message(alert()),
        attempt: 1,
        now,
    }
}

fn provider_with_log() -> (Fcm, LogLines) {
    let (host, lines) = recording_host();
    let fcm = Fcm::new(
        provider_config(json!({"credentials_file": fixture(SERVICE_ACCOUNT)})),
        host,
    )
    .unwrap();
    (fcm, lines)
}

fn provider() -> Fcm {
    provider_with_log().0
}

fn http(status: u16, body: &str) -> TransportResponse {
    TransportResponse::Http(HttpResponse {
        status,
        headers: vec![],
        body: body.into(),
    })
}

fn accepted() -> TransportResponse {
    http(200, r#"{"name":"projects/herald-test/messages/0:1"}"#)
}

/// A scripted Google: the token endpoint hands out `ya29.token-1`, `ya29.token-2`, ...
/// (valid for `expires_in`), and FCM answers sends with `send`.
struct Google {
    expires_in: u64,
    exchanges: usize,
    sends: Vec<String>,
    send: Box<dyn FnMut(&str) -> TransportResponse>,
}

impl Google {
    fn new(send: impl FnMut(&str) -> TransportResponse + 'static) -> Google {
        Google {
            expires_in: 3599,
            exchanges: 0,
            sends: vec![],
            send: Box::new(send),
        }
    }

    fn accepting() -> Google {
        Google::new(|_| accepted())
    }

    fn answer(&mut self, request: &HttpRequest) -> TransportResponse {
        if request.url == "https://oauth2.googleapis.com/token" {
            self.exchanges += 1;
            return http(
                200,
                &json!({
                    "access_token": format!("ya29.token-{}", self.exchanges),
                    "expires_in": self.expires_in,
                    "token_type": "Bearer",
                })
                .to_string(),
            );
        }
        assert_eq!(
            request.url,
            "https://fcm.googleapis.com/v1/projects/herald-test/messages:send"
        );
        let auth = request
            .headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.clone())
            .unwrap();
        let token = auth.strip_prefix("Bearer ").unwrap().to_string();
        self.sends.push(token.clone());
        (self.send)(&token)
    }
}

/// Runs one delivery to its outcome, answering every `Call` with `answer`.
fn drive(
    fcm: &Fcm,
    delivery: &Delivery,
    mut answer: impl FnMut(&HttpRequest) -> TransportResponse,
) -> (Outcome, Vec<HttpRequest>) {
    let mut requests = vec![];
    let mut step = fcm.begin(delivery);
    for _ in 0..10 {
        match step {
            Step::Done { outcome } => return (outcome, requests),
            Step::Call { request, state } => {
                let herald_plugin_api::Request::Http(request) = request else {
                    panic!("FCM only makes HTTP requests")
                };
                // The state crosses the ABI as JSON and must carry no secret.
                let state_text = state.to_string();
                assert!(!state_text.contains("ya29"), "{state_text}");
                let response = answer(&request);
                requests.push(request);
                step = fcm.resume(delivery, state, response);
            }
            other => panic!("a single delivery ended in {other:?}"),
        }
    }
    panic!("the exchange did not end in 10 steps")
}

fn send(fcm: &Fcm, google: &mut Google, now: UnixMillis) -> Outcome {
    drive(fcm, &delivery(now), |r| google.answer(r)).0
}

fn accepted_outcome() -> Outcome {
    Outcome::Accepted {
        provider_message_id: Some("projects/herald-test/messages/0:1".into()),
        delivered: false,
    }
}

#[test]
fn one_token_exchange_for_many_sends() {
    let fcm = provider();
    let mut google = Google::accepting();
    for i in 0..20 {
        assert_eq!(
            send(&fcm, &mut google, T0 + i * MINUTE / 2),
            accepted_outcome()
        );
    }
    assert_eq!(google.exchanges, 1);
    assert_eq!(google.sends.len(), 20);
    assert!(google.sends.iter().all(|t| t == "ya29.token-1"));
}

#[test]
fn a_new_exchange_once_the_token_is_due_for_refresh() {
    let fcm = provider();
    let mut google = Google::accepting();
    google.expires_in = 3600;
    send(&fcm, &mut google, T0);
    // Refreshed 3 min 45 s before expiry: still cached one millisecond before that.
    let refresh_at = T0 + 3_600_000 - 225_000;
    send(&fcm, &mut google, refresh_at - 1);
    assert_eq!(google.exchanges, 1);
    send(&fcm, &mut google, refresh_at);
    assert_eq!(google.exchanges, 2);
    send(&fcm, &mut google, refresh_at + 30 * MINUTE);
    assert_eq!(google.exchanges, 2);
    assert_eq!(
        google.sends,
        [
            "ya29.token-1",
            "ya29.token-1",
            "ya29.token-2",
            "ya29.token-2"
        ]
    );
}

#[test]
fn a_401_refreshes_the_token_once_and_resends() {
    let fcm = provider();
    let mut google = Google::new(|token| {
        if token == "ya29.token-1" {
            http(
                401,
                r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#,
            )
        } else {
            accepted()
        }
    });
    // token-1 is refused; the exchange fetches token-2 and sends again.
    assert_eq!(send(&fcm, &mut google, T0), accepted_outcome());
    assert_eq!(
        google.exchanges, 2,
        "a 401 refreshes within the same exchange"
    );
    assert_eq!(google.sends, ["ya29.token-1", "ya29.token-2"]);

    // The refreshed token is cached for later sends.
    assert_eq!(send(&fcm, &mut google, T0 + MINUTE), accepted_outcome());
    assert_eq!(google.exchanges, 2);
    assert_eq!(
        google.sends,
        ["ya29.token-1", "ya29.token-2", "ya29.token-2"]
    );
}

#[test]
fn a_cached_token_revoked_later_is_refreshed_once() {
    let fcm = provider();
    let revoked = Arc::new(Mutex::new(false));
    let flag = revoked.clone();
    let mut google = Google::new(move |token| {
        if *flag.lock().unwrap() && token == "ya29.token-1" {
            http(401, "")
        } else {
            accepted()
        }
    });
    assert_eq!(send(&fcm, &mut google, T0), accepted_outcome());
    *revoked.lock().unwrap() = true;
    assert_eq!(send(&fcm, &mut google, T0 + MINUTE), accepted_outcome());
    assert_eq!(google.exchanges, 2);
    assert_eq!(
        google.sends,
        ["ya29.token-1", "ya29.token-1", "ya29.token-2"]
    );
}

#[test]
fn a_second_401_is_a_provider_failure() {
    let (fcm, log) = provider_with_log();
    let mut google = Google::new(|_| http(401, ""));
    let outcome = send(&fcm, &mut google, T0);
    assert_eq!(
        outcome,
        Outcome::provider_failure(
            "FCM error (HTTP 401); FCM refused a freshly fetched access token too (does the \
             service account belong to project \"herald-test\"?)"
        )
    );
    assert_eq!(google.exchanges, 2);
    assert_eq!(google.sends.len(), 2);
    // Nothing refused stays cached: the next delivery starts with an exchange.
    send(&fcm, &mut google, T0 + MINUTE);
    assert_eq!(google.exchanges, 4);
    let log = log.lock().unwrap();
    assert!(
        log.iter()
            .all(|l| !l.contains("ya29") && !l.contains("PRIVATE")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.contains("HTTP 401")), "{log:?}");
}

#[test]
fn fcm_errors_other_than_401_do_not_touch_the_token() {
    let fcm = provider();
    let mut google = Google::new(|_| {
        http(
            404,
            r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#,
        )
    });
    let outcome = send(&fcm, &mut google, T0);
    assert!(
        matches!(outcome, Outcome::Rejected { suppress: true, .. }),
        "{outcome:?}"
    );
    send(&fcm, &mut google, T0 + MINUTE);
    assert_eq!(google.exchanges, 1);
}

/// Renders a request for a snapshot; the assertion JWT is checked elsewhere.
fn render(request: &HttpRequest) -> String {
    let mut out = format!("{} {}\n", request.method, request.url);
    for (name, value) in &request.headers {
        out.push_str(&format!("{name}: {value}\n"));
    }
    let body = match request.body.split_once("&assertion=") {
        Some((head, jwt)) => {
            assert_eq!(jwt.split('.').count(), 3);
            format!("{head}&assertion=<jwt>")
        }
        None => request.body.clone(),
    };
    out.push_str(&format!("http2: {}\n\n{body}\n", request.http2));
    out
}

fn check_requests(requests: &[HttpRequest], expected: Expect) {
    let text: Vec<String> = requests.iter().map(render).collect();
    expected.assert_eq(&text.join("---\n"));
}

#[test]
fn full_requests_of_a_first_delivery() {
    let fcm = provider();
    let mut google = Google::accepting();
    let delivery = Delivery {
        message: push_message(PushContent {
            title: Some("RSVP".into()),
            body: Some("Will you come?".into()),
            data: [("rsvp_id".to_string(), "r_42".to_string())].into(),
            badge: Some(1),
            sound: Some("default".into()),
            collapse_id: Some("rsvp".into()),
            priority: Some(PushPriority::High),
            ttl_secs: Some(86_400),
        }),
        attempt: 1,
        now: T0,
    };
    let (outcome, requests) = drive(&fcm, &delivery, |r| google.answer(r));
    assert_eq!(outcome, accepted_outcome());
    check_requests(
        &requests,
        expect![[r#"
            POST https://oauth2.googleapis.com/token
            accept: application/json
            content-type: application/x-www-form-urlencoded
            http2: false

            grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=<jwt>
            ---
            POST https://fcm.googleapis.com/v1/projects/herald-test/messages:send
            authorization: Bearer ya29.token-1
            content-type: application/json
            http2: false

            {"message":{"token":"fcm-token-abc:APA91b","notification":{"title":"RSVP","body":"Will you come?"},"data":{"herald_id":"01HZY3J5T8G2W9Q4M7V6X1C0BD","rsvp_id":"r_42"},"android":{"priority":"HIGH","ttl":"86400s","collapse_key":"rsvp"},"apns":{"headers":{"apns-collapse-id":"rsvp","apns-expiration":"1700086400","apns-priority":"10"},"payload":{"aps":{"badge":1,"sound":"default"}}}}}
        "#]],
    );
}

#[test]
fn overrides_route_both_calls() {
    let fcm = Fcm::new(
        provider_config(json!({
            "credentials_file": fixture(SERVICE_ACCOUNT),
            "base_url": "http://127.0.0.1:9100",
            "token_url": "http://localhost:9101/token",
            "project_id": "proj-2",
        })),
        quiet_host(),
    )
    .unwrap();
    assert_eq!(fcm.allowed_hosts(), ["127.0.0.1", "localhost"]);
    let (_, requests) = drive(&fcm, &delivery(T0), |r| {
        if r.url.ends_with("/token") {
            http(200, r#"{"access_token":"ya29.x","expires_in":3600}"#)
        } else {
            accepted()
        }
    });
    let urls: Vec<&str> = requests.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "http://localhost:9101/token",
            "http://127.0.0.1:9100/v1/projects/proj-2/messages:send"
        ]
    );
}

#[test]
fn token_exchange_failures_end_the_delivery() {
    let cases = vec![
        (
            http(
                400,
                r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
            ),
            "provider_failure",
        ),
        (http(503, ""), "retry"),
        (
            transport_error(TransportErrorKind::Timeout, "timed out"),
            "retry",
        ),
        (
            transport_error(TransportErrorKind::Refused, "host not allowed"),
            "provider_failure",
        ),
    ];
    for (answer, expected) in cases {
        let fcm = provider();
        let mut sends = 0;
        let (outcome, _) = drive(&fcm, &delivery(T0), |r| {
            if r.url.ends_with("/token") {
                answer.clone()
            } else {
                sends += 1;
                accepted()
            }
        });
        let kind = serde_json::to_value(&outcome).unwrap()["outcome"].clone();
        assert_eq!(kind, expected, "{answer:?} -> {outcome:?}");
        assert_eq!(sends, 0);
    }
}

#[test]
fn send_transport_errors() {
    let fcm = provider();
    let mut google =
        Google::new(|_| transport_error(TransportErrorKind::Connect, "connection refused"));
    assert_eq!(
        send(&fcm, &mut google, T0),
        Outcome::retry("FCM send failed (Connect): connection refused")
    );
    let mut google = Google::new(|_| smtp_reply(250, None, ""));
    assert_eq!(
        send(&fcm, &mut google, T0),
        Outcome::provider_failure("FCM send: got an SMTP reply to an HTTP request (host bug)")
    );
}

#[test]
fn messages_fcm_cannot_take_make_no_call() {
    let fcm = provider();
    let mut bad_key = delivery(T0);
    bad_key.message = push_message(PushContent {
        title: Some("t".into()),
        data: [("google.sent_time".to_string(), "1".to_string())].into(),
        ..Default::default()
    });
    assert_eq!(
        fcm.begin(&bad_key),
        Step::done(Outcome::rejected(
            "data key \"google.sent_time\" is reserved by FCM (keys starting with \"google\" \
             or \"gcm\"); rename it"
        ))
    );
    let mut email = delivery(T0);
    email.message.content = Content::Email(EmailContent {
        subject: "s".into(),
        text: Some("t".into()),
        ..Default::default()
    });
    assert_eq!(
        fcm.begin(&email),
        Step::done(Outcome::provider_failure(
            "fcm delivers push notifications only, not email (check [routes])"
        ))
    );
}

#[test]
fn unknown_state_is_a_provider_failure() {
    let fcm = provider();
    let step = fcm.resume(&delivery(T0), json!({"stage": "nope"}), accepted());
    assert!(matches!(
        step,
        Step::Done {
            outcome: Outcome::ProviderFailure { .. }
        }
    ));
}

#[test]
fn manifest_declares_push_secrets_and_hosts() {
    let m = Fcm::manifest();
    assert_eq!(m.name, "fcm");
    assert_eq!(m.channels, [herald_plugin_api::Channel::Push]);
    assert_eq!(m.api_version, herald_plugin_api::API_VERSION);
    assert!(!m.webhooks && !m.idempotent);
    assert_eq!(secret_keys(&m), ["credentials_json"]);
    assert_eq!(
        m.allowed_hosts,
        ["fcm.googleapis.com", "oauth2.googleapis.com"]
    );
    assert_eq!(provider().allowed_hosts(), m.allowed_hosts);
    let debug = format!("{:?}", provider());
    assert!(
        !debug.contains("PRIVATE") && debug.contains("***"),
        "{debug}"
    );
}

#[test]
fn concurrent_deliveries_share_the_cache() {
    let fcm = Arc::new(provider());
    // Warm the cache, then send from several threads at once: no new exchange.
    let mut google = Google::accepting();
    send(&fcm, &mut google, T0);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let fcm = fcm.clone();
            std::thread::spawn(move || {
                let mut google = Google::accepting();
                for j in 0..10 {
                    send(&fcm, &mut google, T0 + (i * 10 + j) * 1000);
                }
                google.exchanges
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 0);
    }
}
