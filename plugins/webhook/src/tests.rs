//! Unit tests of the webhook plugin: request snapshots, the signature against an
//! independent HMAC, every answer class, and config errors. No I/O.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use expect_test::{Expect, expect};
use herald_plugin_api::{Attachment, Message, PushPriority, TransportErrorKind};
use serde_json::json;

use super::*;
use herald_plugin_kit::testing::{
    RETRYABLE_KINDS, done, http_response, provider_config, quiet_host, smtp_reply, summary,
    transport_error,
};

/// 2023-11-14T22:13:20.250Z
const NOW: UnixMillis = 1_700_000_000_250;

fn new(settings: Value) -> Result<Webhook, ConfigError> {
    Webhook::new(provider_config("hooks", settings, None), quiet_host())
}

fn config_error(settings: Value) -> String {
    new(settings).unwrap_err().message
}

fn email_delivery() -> Delivery {
    Delivery {
        message: Message {
            id: "01HZX3K2J8Q9V7W6E5R4T3Y2U1".into(),
            to: "ann@example.com".into(),
            content: Content::Email(EmailContent {
                from: Some("Weddings <hello@example.org>".into()),
                subject: "You're invited".into(),
                text: Some("Reply YES".into()),
                html: None,
                reply_to: None,
                headers: BTreeMap::from([("X-Campaign".to_string(), "june".to_string())]),
                attachments: vec![Attachment {
                    filename: "map.txt".into(),
                    content_type: Some("text/plain".into()),
                    content: "aGk=".into(),
                }],
            }),
            tags: vec!["rsvp".into(), "wedding-42".into()],
            created_at: 1_699_999_990_000,
        },
        attempt: 2,
        now: NOW,
    }
}

fn request(step: Step) -> HttpRequest {
    match step {
        Step::Call {
            request: herald_plugin_api::Request::Http(r),
            state,
        } => {
            assert_eq!(state, Value::Null);
            r
        }
        other => panic!("expected an HTTP call, got {other:?}"),
    }
}

/// Method, URL, headers, timeout and raw body, one per line; the crate version is masked so
/// a version bump does not churn the snapshots.
fn render(r: &HttpRequest) -> String {
    let mut out = format!("{} {}\n", r.method, r.url);
    for (n, v) in &r.headers {
        out.push_str(&format!("{n}: {v}\n"));
    }
    out.push_str(&format!(
        "timeout_ms: {:?} http2: {}\n\n{}\n",
        r.timeout_ms, r.http2, r.body
    ));
    out.replace(env!("CARGO_PKG_VERSION"), "<version>")
}

fn check(settings: Value, delivery: &Delivery, expect: Expect) {
    expect.assert_eq(&render(&request(new(settings).unwrap().begin(delivery))));
}

#[test]
fn request_without_secret() {
    check(
        json!({"url": "http://127.0.0.1:9000/notify"}),
        &email_delivery(),
        expect![[r#"
            POST http://127.0.0.1:9000/notify
            content-type: application/json
            user-agent: herald/<version>
            idempotency-key: 01HZX3K2J8Q9V7W6E5R4T3Y2U1
            timeout_ms: None http2: false

            {"id":"01HZX3K2J8Q9V7W6E5R4T3Y2U1","channel":"email","to":"ann@example.com","from":"Weddings <hello@example.org>","subject":"You're invited","text":"Reply YES","html":null,"reply_to":null,"headers":{"X-Campaign":"june"},"attachments":[{"filename":"map.txt","content_type":"text/plain","content":"aGk="}],"tags":["rsvp","wedding-42"],"attempt":2,"created_at":1699999990000}
        "#]],
    );
}

#[test]
fn request_with_secret_headers_and_timeout() {
    check(
        json!({
            "url": "HTTPS://Hooks.Example.COM/herald?src=x",
            "secret": "whsec-test-0123456789abcdef",
            "headers": {"Authorization": "Bearer t0k3n", "x-tenant": "acme"},
            "request_timeout": "1500ms",
        }),
        &email_delivery(),
        expect![[r#"
            POST https://hooks.example.com/herald?src=x
            content-type: application/json
            user-agent: herald/<version>
            idempotency-key: 01HZX3K2J8Q9V7W6E5R4T3Y2U1
            x-herald-signature: t=1700000000,v1=59ed28fe9a99afc521bedb65b99142777b470bfbec32e823887296cbd4175e3e
            authorization: Bearer t0k3n
            x-tenant: acme
            timeout_ms: Some(1500) http2: false

            {"id":"01HZX3K2J8Q9V7W6E5R4T3Y2U1","channel":"email","to":"ann@example.com","from":"Weddings <hello@example.org>","subject":"You're invited","text":"Reply YES","html":null,"reply_to":null,"headers":{"X-Campaign":"june"},"attachments":[{"filename":"map.txt","content_type":"text/plain","content":"aGk="}],"tags":["rsvp","wedding-42"],"attempt":2,"created_at":1699999990000}
        "#]],
    );
}

#[test]
fn sms_and_push_bodies() {
    let mut d = email_delivery();
    d.message.to = "+14155550100".into();
    d.message.content = Content::Sms(SmsContent {
        from: None,
        body: "Reply YES to confirm".into(),
        media_urls: vec!["https://x.io/a.png".into()],
    });
    let hook = new(json!({"url": "http://localhost/n"})).unwrap();
    expect![[r#"{"id":"01HZX3K2J8Q9V7W6E5R4T3Y2U1","channel":"sms","to":"+14155550100","from":null,"body":"Reply YES to confirm","media_urls":["https://x.io/a.png"],"tags":["rsvp","wedding-42"],"attempt":2,"created_at":1699999990000}"#]]
        .assert_eq(&request(hook.begin(&d)).body);

    d.message.to = "device-token-0123456789".into();
    d.message.tags.clear();
    d.message.content = Content::Push(PushContent {
        title: Some("Hi".into()),
        body: None,
        data: BTreeMap::from([("rsvp".to_string(), "42".to_string())]),
        badge: Some(3),
        sound: None,
        collapse_id: Some("rsvp-42".into()),
        priority: Some(PushPriority::High),
        ttl_secs: Some(3600),
    });
    expect![[r#"{"id":"01HZX3K2J8Q9V7W6E5R4T3Y2U1","channel":"push","to":"device-token-0123456789","title":"Hi","body":null,"data":{"rsvp":"42"},"badge":3,"sound":null,"collapse_id":"rsvp-42","priority":"high","ttl_secs":3600,"tags":[],"attempt":2,"created_at":1699999990000}"#]]
        .assert_eq(&request(hook.begin(&d)).body);
}

/// Recomputes the signature with the `hmac` crate directly, from the header and the raw
/// body only, as a receiver would.
#[test]
fn signature_verifies_independently() {
    let secret = "whsec-test-0123456789abcdef";
    let hook = new(json!({"url": "https://h.example.com/", "secret": secret})).unwrap();
    let r = request(hook.begin(&email_delivery()));
    let header = r
        .headers
        .iter()
        .find(|(n, _)| n == SIGNATURE_HEADER)
        .map(|(_, v)| v.clone())
        .unwrap();
    let (t, v1) = header.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    assert_eq!(t, "1700000000", "t is delivery.now in whole seconds");

    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", r.body).as_bytes());
    mac.verify_slice(&hex::decode(v1).unwrap()).unwrap();

    // A changed body or timestamp does not verify.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{} ", r.body).as_bytes());
    assert!(mac.verify_slice(&hex::decode(v1).unwrap()).is_err());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("1700000001.{}", r.body).as_bytes());
    assert!(mac.verify_slice(&hex::decode(v1).unwrap()).is_err());
}

/// A vector computed outside Rust: Python `hmac.new(b"k3y", b"1700000000.{}", "sha256")`.
/// (The signature in `request_with_secret_headers_and_timeout` was computed the same way
/// over that snapshot's body.)
#[test]
fn signature_matches_a_python_vector() {
    assert_eq!(
        sign(&Secret::new("k3y"), 1_700_000_000, "{}").unwrap(),
        "e2974d0d973957aed8182a7f1ef5690a188566c2c4620fc16bd97d7febcf5ef3"
    );
}

fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Outcome {
    let hook = new(json!({"url": "https://h.example.com/"})).unwrap();
    let response = http_response(status, headers, body);
    done(hook.resume(&email_delivery(), Value::Null, response))
}

#[test]
fn success_answers() {
    let accepted = |id: Option<&str>| Outcome::Accepted {
        provider_message_id: id.map(Into::into),
        delivered: false,
    };
    assert_eq!(
        answer(200, &[], r#"{"id":"evt_1","ok":true}"#),
        accepted(Some("evt_1"))
    );
    assert_eq!(answer(201, &[], r#"{"id":42}"#), accepted(Some("42")));
    assert_eq!(answer(202, &[], ""), accepted(None));
    assert_eq!(answer(204, &[], ""), accepted(None));
    assert_eq!(answer(200, &[], "OK"), accepted(None));
    assert_eq!(answer(200, &[], r#"{"id":null}"#), accepted(None));
    assert_eq!(answer(200, &[], r#"[1]"#), accepted(None));
}

#[test]
fn failure_answers() {
    let mut table = String::new();
    for status in [
        301, 302, 400, 401, 403, 404, 408, 409, 410, 413, 422, 429, 500, 502, 503, 504,
    ] {
        table.push_str(&format!(
            "{status} {}\n",
            summary(&answer(status, &[], "nope"))
        ));
    }
    expect![[r#"
        301 provider_failure
        302 provider_failure
        400 rejected bounced=false suppress=false
        401 provider_failure
        403 provider_failure
        404 provider_failure
        408 retry breaker=true after=None
        409 rejected bounced=false suppress=false
        410 rejected bounced=false suppress=false
        413 rejected bounced=false suppress=false
        422 rejected bounced=false suppress=false
        429 retry breaker=false after=None
        500 retry breaker=true after=None
        502 retry breaker=true after=None
        503 retry breaker=true after=None
        504 retry breaker=true after=None
    "#]]
    .assert_eq(&table);
}

#[test]
fn reasons_carry_status_and_body_excerpt() {
    let Outcome::Rejected { reason, .. } = answer(422, &[], "{\"error\":\n\"bad to\"}") else {
        panic!()
    };
    assert_eq!(
        reason,
        "webhook endpoint answered 422: {\"error\": \"bad to\"}"
    );
    let long = "x".repeat(500);
    let Outcome::Retry { reason, .. } = answer(500, &[], &long) else {
        panic!()
    };
    assert_eq!(
        reason.chars().count(),
        "webhook endpoint answered 500: ".len() + 201
    );
    let Outcome::ProviderFailure { reason } = answer(401, &[], "") else {
        panic!()
    };
    assert!(
        reason.starts_with("webhook endpoint answered 401;"),
        "{reason}"
    );
    let Outcome::ProviderFailure { reason } =
        answer(308, &[("location", "https://new.example.com/")], "")
    else {
        panic!()
    };
    assert!(reason.contains("https://new.example.com/"), "{reason}");
}

#[test]
fn retry_after_in_both_forms() {
    let after = |status, value: &str| match answer(status, &[("Retry-After", value)], "") {
        Outcome::Retry { after_ms, .. } => after_ms,
        other => panic!("{other:?}"),
    };
    assert_eq!(after(429, "120"), Some(120_000));
    assert_eq!(after(503, "7"), Some(7_000));
    assert_eq!(after(408, "0"), Some(0));
    // NOW is 22:13:20.250 on that day: the date is 9.75 s later.
    assert_eq!(after(503, "Tue, 14 Nov 2023 22:13:30 GMT"), Some(9_750));
    assert_eq!(after(429, "Tue, 14 Nov 2023 22:13:30 GMT"), Some(9_750));
    // A date in the past means now; garbage means no hint.
    assert_eq!(after(503, "Tue, 14 Nov 2023 22:00:00 GMT"), Some(0));
    assert_eq!(after(503, "soon"), None);
}

#[test]
fn transport_errors() {
    let hook = new(json!({"url": "https://h.example.com/"})).unwrap();
    let outcome = |response| done(hook.resume(&email_delivery(), Value::Null, response));
    for kind in RETRYABLE_KINDS {
        assert_eq!(
            outcome(transport_error(kind, "boom")),
            Outcome::retry(format!("webhook request failed ({kind:?}): boom")),
        );
    }
    assert_eq!(
        outcome(transport_error(TransportErrorKind::Refused, "boom")),
        Outcome::provider_failure("webhook request refused by the host: boom")
    );
    let smtp = smtp_reply(250, None, "");
    assert_eq!(
        outcome(smtp),
        Outcome::provider_failure(
            "webhook request: got an SMTP reply to an HTTP request (host bug)"
        )
    );
}

#[test]
fn allowed_hosts_is_the_url_host() {
    let hosts = |url: &str| new(json!({ "url": url })).unwrap().allowed_hosts();
    assert_eq!(hosts("http://127.0.0.1:9000/notify"), ["127.0.0.1"]);
    assert_eq!(hosts("https://Hooks.Example.com/x"), ["hooks.example.com"]);
    assert_eq!(hosts("http://[::1]:8080/"), ["::1"]);
    assert!(Webhook::manifest().allowed_hosts.is_empty());
}

#[test]
fn manifest_states_the_contract() {
    let m = Webhook::manifest();
    assert_eq!(m.name, "webhook");
    assert_eq!(m.channels, Channel::ALL.to_vec());
    assert!(!m.idempotent && !m.webhooks);
    let keys: Vec<(&str, bool, bool)> = m
        .config
        .iter()
        .map(|k| (k.name.as_str(), k.required, k.secret))
        .collect();
    assert_eq!(
        keys,
        [
            ("url", true, false),
            ("secret", false, true),
            ("headers", false, false),
            ("request_timeout", false, false)
        ]
    );
}

#[test]
fn debug_hides_secret_and_header_values() {
    let hook = new(json!({
        "url": "https://h.example.com/",
        "secret": "sup3r-s3cret-value",
        "headers": {"authorization": "Bearer t0k3n"},
    }))
    .unwrap();
    let debug = format!("{hook:?}");
    assert!(
        !debug.contains("sup3r") && !debug.contains("t0k3n"),
        "{debug}"
    );
    assert!(debug.contains("authorization"), "{debug}");
}

#[test]
fn config_errors_name_the_key_and_the_fix() {
    let cases = [
        (json!({}), "missing field `url`"),
        (
            json!({"url": "ftp://x"}),
            "provider \"hooks\": url = \"ftp://x\" must start with https:// or http://; \
             expected e.g. https://hooks.example.com/herald",
        ),
        (
            json!({"url": "not a url"}),
            "provider \"hooks\": url = \"not a url\" contains spaces or control characters; \
             expected e.g. https://hooks.example.com/herald",
        ),
        (
            json!({"url": "hooks.example.com/herald"}),
            "provider \"hooks\": url = \"hooks.example.com/herald\" is not an absolute URL; \
             expected e.g. https://hooks.example.com/herald",
        ),
        (
            json!({"url": "https://h.io/", "secrte": "x"}),
            "unknown field `secrte`",
        ),
        (
            json!({"url": "https://h.io/", "secret": ""}),
            "secret is empty",
        ),
        (
            json!({"url": "https://h.io/", "headers": {"bad name": "x"}}),
            "headers: \"bad name\" is not a valid header name",
        ),
        (
            json!({"url": "https://h.io/", "headers": {"Content-Type": "text/plain"}}),
            "headers: \"Content-Type\" is set by Herald itself; remove it from headers",
        ),
        (
            json!({"url": "https://h.io/", "headers": {"X-Sig": "x"}, "secret": "abc"}),
            "",
        ),
        (
            json!({"url": "https://h.io/", "headers": {"x-a": "1\r\nx-b: 2"}}),
            "headers: the value of \"x-a\" contains a line break",
        ),
        (
            json!({"url": "https://h.io/", "headers": {"X-A": "1", "x-a": "2"}}),
            "headers: \"x-a\" is given twice",
        ),
        (
            json!({"url": "https://h.io/", "request_timeout": "10"}),
            "request_timeout must be a duration such as \"10s\", \"500ms\" or \"2m\", got \"10\"",
        ),
        (
            json!({"url": "https://h.io/", "request_timeout": "0s"}),
            "request_timeout must be a duration",
        ),
        (
            json!({"url": "https://h.io/", "timeout": "10s"}),
            "unknown field `timeout`",
        ),
    ];
    for (settings, want) in cases {
        match new(settings.clone()) {
            Ok(_) if want.is_empty() => {}
            Ok(_) => panic!("{settings} was accepted; expected {want:?}"),
            Err(e) => assert!(
                !want.is_empty() && e.message.contains(want),
                "{settings}: {:?} does not contain {want:?}",
                e.message
            ),
        }
    }
}

#[test]
fn credentials_in_the_url_are_refused_without_echoing_them() {
    let err = config_error(json!({"url": "https://user:hunter2@h.example.com/"}));
    assert_eq!(
        err,
        "provider \"hooks\": url must not contain credentials (user:password@): send them in \
         a header instead, e.g. headers = { authorization = \"${HOOK_AUTH}\" }"
    );
    assert!(!err.contains("hunter2"), "{err}");
}
