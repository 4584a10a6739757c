//! The HTTP provider plugins end to end: the real daemon loads each plugin's `.so`, a
//! [`MockProvider`] on 127.0.0.1 plays the provider (its paths, status codes, error bodies
//! and headers; HTTP/2 for APNs), and each test checks the request the mock received and
//! the events Herald emitted — for a success, a retryable error and a permanent error.
//! Also: FCM's OAuth token is fetched once for many sends and again after expiry or a 401,
//! APNs signs one provider token for many sends, Twilio's StatusCallback follows
//! `[webhooks] public_url`, and a provider failure on the first email provider falls back
//! to the second.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use herald_client::Client;
use herald_plugin_api::{Content, Event, PushContent, PushPriority, State};
use herald_protocol::SendMessage;
use herald_tests::mock::{MockProvider, Recorded, Reply};
use herald_tests::{Daemon, assert_idle, email, events_until, free_port, kinds, now_ms, sms};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// Every state a delivery can end in (or stop at): tests wait for any of them, then assert
/// the exact sequence, so a wrong outcome fails at once with the events seen.
const END: &[&str] = &[
    "sent",
    "delivered",
    "failed",
    "bounced",
    "dead",
    "expired",
    "suppressed",
];

const FCM_CREDENTIALS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../plugins/fcm/tests/fixtures/test-only-service-account.json"
);
const APNS_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../plugins/apns/tests/fixtures/AuthKey_TESTKEY123.p8"
);

const RESEND_KEY: &str = "re_e2e_0123456789abcdef";
const SENDGRID_KEY: &str = "SG.e2e-key-id.e2e-key-secret";
const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_TOKEN: &str = "e2e-auth-token-5ecret";

const FCM_PROJECT: &str = "herald-test";
const FCM_CLIENT_EMAIL: &str = "herald-test@herald-test.iam.gserviceaccount.com";
const FCM_KEY_ID: &str = "0123456789abcdef0123456789abcdef01234567";
const FCM_TOKEN: &str = "fcm-device-token:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx";

const APNS_KEY_ID: &str = "TESTKEY123";
const APNS_TEAM_ID: &str = "TEAM123456";
const APNS_TOPIC: &str = "com.example.rsvp";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Standard base64 with padding (RFC 4648 §4), for the expected Basic credentials.
fn b64(input: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// base64url without padding (RFC 4648 §5), as in JWTs. Panics on anything else.
fn b64url_decode(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap_or_else(|e| panic!("{s:?} is not base64url: {e}"))
}

/// A JWT's header, claims and raw signature.
fn decode_jwt(jwt: &str) -> (Value, Value, Vec<u8>) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS compact token has three parts: {jwt}");
    let json = |s: &str| -> Value {
        serde_json::from_slice(&b64url_decode(s)).unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    (json(parts[0]), json(parts[1]), b64url_decode(parts[2]))
}

/// `application/x-www-form-urlencoded` pairs, decoded, in order.
fn form(body: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

/// The one value of form field `name`.
fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut values = fields.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
    let first = values.next().map(String::as_str);
    assert!(values.next().is_none(), "form field {name} is repeated");
    first
}

/// Herald's message id (a ULID) as the canonical UUID APNs expects in `apns-id`,
/// computed independently of the plugin.
fn uuid_of_ulid(id: &str) -> String {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    assert_eq!(id.len(), 26, "{id} is not a ULID");
    let mut value: u128 = 0;
    for c in id.bytes() {
        let digit = CROCKFORD
            .iter()
            .position(|&d| d == c.to_ascii_uppercase())
            .unwrap_or_else(|| panic!("{id} is not a ULID"));
        value = (value << 5) | digit as u128;
    }
    let hex = format!("{value:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A reply with exactly the given headers (`Reply::new` adds a JSON content type).
fn bare(status: u16, body: &str) -> Reply {
    let mut r = Reply::new(status, body);
    r.headers.clear();
    r
}

fn push(to: &str, title: &str, body: &str) -> SendMessage {
    SendMessage {
        to: to.into(),
        content: Content::Push(PushContent {
            title: Some(title.into()),
            body: Some(body.into()),
            ..Default::default()
        }),
        tags: vec![],
        idempotency_key: None,
        send_at: None,
        override_suppression: false,
        lane: Default::default(),
    }
}

/// Sends `m` and returns its id and its events up to the end of the delivery.
async fn deliver(client: &Client, m: SendMessage) -> (String, Vec<Event>) {
    let ack = client.send(m).await.unwrap();
    assert!(!ack.duplicate);
    let events = events_until(client, &ack.id, END, T).await;
    (ack.id, events)
}

fn detail(e: &Event) -> &str {
    e.detail.as_deref().unwrap_or("")
}

/// The milliseconds between the first and the second `sending` event: the second attempt
/// is claimed no sooner than its due time, and the first was claimed before its request
/// went out, so this is at least the retry delay.
fn retry_gap(events: &[Event]) -> u64 {
    let sending: Vec<u64> = events
        .iter()
        .filter(|e| e.kind.as_str() == "sending")
        .map(|e| e.at)
        .collect();
    assert!(sending.len() >= 2, "{:?}", kinds(events));
    sending[1] - sending[0]
}

// ---------------------------------------------------------------------------------------
// Provider configurations
// ---------------------------------------------------------------------------------------

fn resend_provider(name: &str, mock: &MockProvider) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nplugin = \"resend\"\napi_key = \"${{RESEND_API_KEY}}\"\nfrom = \"Herald RSVP <rsvp@example.com>\"\nbase_url = \"{}\"\n\n",
        mock.url()
    )
}

fn sendgrid_provider(name: &str, mock: &MockProvider) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nplugin = \"sendgrid\"\napi_key = \"${{SENDGRID_API_KEY}}\"\nfrom = \"Herald RSVP <rsvp@example.com>\"\nbase_url = \"{}\"\n\n",
        mock.url()
    )
}

fn twilio_provider(name: &str, mock: &MockProvider) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nplugin = \"twilio\"\naccount_sid = \"{TWILIO_SID}\"\nauth_token = \"${{TWILIO_AUTH_TOKEN}}\"\nfrom = \"+14155550100\"\nbase_url = \"{}\"\n\n",
        mock.url()
    )
}

async fn resend_daemon(mock: &MockProvider) -> Daemon {
    Daemon::builder()
        .config(&resend_provider("resend", mock))
        .config("[routes]\nemail = [\"resend\"]\n")
        .env("RESEND_API_KEY", RESEND_KEY)
        .start()
        .await
}

async fn sendgrid_daemon(mock: &MockProvider) -> Daemon {
    Daemon::builder()
        .config(&sendgrid_provider("sendgrid", mock))
        .config("[routes]\nemail = [\"sendgrid\"]\n")
        .env("SENDGRID_API_KEY", SENDGRID_KEY)
        .start()
        .await
}

async fn twilio_daemon(mock: &MockProvider) -> Daemon {
    Daemon::builder()
        .config(&twilio_provider("twilio", mock))
        .config("[routes]\nsms = [\"twilio\"]\n")
        .env("TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
        .start()
        .await
}

/// FCM with the send API on `api` and the OAuth token endpoint on `oauth`.
async fn fcm_daemon(api: &MockProvider, oauth: &MockProvider) -> Daemon {
    Daemon::builder()
        .config(&format!(
            "[[providers]]\nname = \"fcm\"\nplugin = \"fcm\"\ncredentials_file = \"{FCM_CREDENTIALS}\"\nbase_url = \"{}\"\ntoken_url = \"{}/token\"\n\n[routes]\npush = [\"fcm\"]\n",
            api.url(),
            oauth.url()
        ))
        .start()
        .await
}

async fn apns_daemon(mock: &MockProvider) -> Daemon {
    Daemon::builder()
        .config(&format!(
            "[[providers]]\nname = \"apns\"\nplugin = \"apns\"\nkey_file = \"{APNS_KEY}\"\nkey_id = \"{APNS_KEY_ID}\"\nteam_id = \"{APNS_TEAM_ID}\"\ntopic = \"{APNS_TOPIC}\"\nenvironment = \"production\"\nbase_url = \"{}\"\n\n[routes]\npush = [\"apns\"]\n",
            mock.url()
        ))
        .start()
        .await
}

/// An OAuth token endpoint issuing `ya29.e2e-<n>` (n = 1, 2, ...) valid for `expires_in`
/// seconds (one value per token; the last one repeats).
fn oauth_endpoint(oauth: &MockProvider, expires_in: &'static [u64]) {
    let issued = Arc::new(AtomicUsize::new(0));
    oauth.rule(move |r| {
        if r.path != "/token" {
            return None;
        }
        let n = issued.fetch_add(1, Ordering::SeqCst);
        let expires = expires_in[n.min(expires_in.len() - 1)];
        Some(Reply::new(
            200,
            json!({
                "access_token": format!("ya29.e2e-{}", n + 1),
                "expires_in": expires,
                "token_type": "Bearer",
            })
            .to_string(),
        ))
    });
}

/// FCM's success answer: a `Message` whose `name` is unique per send.
fn fcm_success(api: &MockProvider) {
    let sent = Arc::new(AtomicUsize::new(0));
    api.rule(move |_| {
        let n = sent.fetch_add(1, Ordering::SeqCst) + 1;
        Some(Reply::new(200, json!({ "name": fcm_name(n) }).to_string()))
    });
}

fn fcm_name(n: usize) -> String {
    format!("projects/{FCM_PROJECT}/messages/0:17000000000000{n:02}%31bd1c9631bd1c96")
}

/// APNs' success answer: `200`, empty body, an `apns-id` echoing the request's.
fn apns_success(mock: &MockProvider) {
    mock.rule(|r| {
        let id = r
            .header("apns-id")
            .unwrap_or("00000000-0000-0000-0000-000000000000");
        Some(bare(200, "").header("apns-id", &id.to_ascii_uppercase()))
    });
}

fn device_token(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

/// The `authorization` header of a request.
fn auth(r: &Recorded) -> &str {
    r.header("authorization").unwrap_or("")
}

// ---------------------------------------------------------------------------------------
// Resend
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_success_posts_emails_and_reports_the_id() {
    let mock = MockProvider::start().await;
    mock.push(Reply::new(
        200,
        r#"{"id":"49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}"#,
    ));
    let daemon = resend_daemon(&mock).await;
    let client = daemon.client().await;
    let mut m = email("ann@example.org", "You're invited");
    m.tags = vec!["rsvp".into(), "event:wedding-42".into()];
    let (id, events) = deliver(&client, m).await;

    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    let sent = events.last().unwrap();
    assert_eq!(sent.provider.as_deref(), Some("resend"));
    assert_eq!(
        sent.provider_message_id.as_deref(),
        Some("49a3999c-0ce1-4ea6-ab68-afcd6dc2e794")
    );
    let view = client.get(&id).await.unwrap();
    assert_eq!(view.state, State::Sent);
    assert_eq!(
        view.provider_message_id.as_deref(),
        Some("49a3999c-0ce1-4ea6-ab68-afcd6dc2e794")
    );

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/emails");
    assert_eq!(
        r.header("authorization"),
        Some(&*format!("Bearer {RESEND_KEY}"))
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("idempotency-key"), Some(id.as_str()));
    assert!(
        r.header("user-agent")
            .is_some_and(|ua| ua.starts_with("herald-resend/")),
        "{:?}",
        r.header("user-agent")
    );
    let body = r.json();
    assert_eq!(body["from"], "Herald RSVP <rsvp@example.com>");
    assert_eq!(body["to"], json!(["ann@example.org"]));
    assert_eq!(body["subject"], "You're invited");
    assert_eq!(body["text"], "You're invited — body");
    assert!(body.get("html").is_none(), "{body}");
    assert_eq!(
        body["tags"],
        json!([
            {"name": "herald_id", "value": id},
            {"name": "rsvp", "value": "true"},
            {"name": "event", "value": "wedding-42"},
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_rate_limit_is_retried_after_retry_after_with_the_same_idempotency_key() {
    let mock = MockProvider::start().await;
    mock.push(
        Reply::new(
            429,
            r#"{"statusCode":429,"message":"Too many requests. You can only make 2 requests per second. See rate limit response headers for more information.","name":"rate_limit_exceeded"}"#,
        )
        .header("retry-after", "1")
        .header("ratelimit-limit", "2")
        .header("ratelimit-remaining", "0")
        .header("ratelimit-reset", "1"),
    );
    mock.push(Reply::new(
        200,
        r#"{"id":"0b0cf9a2-2f6e-4d6c-9d39-3cfa3a4f1d7e"}"#,
    ));
    let daemon = resend_daemon(&mock).await;
    let client = daemon.client().await;
    let (id, events) = deliver(&client, email("bo@example.org", "slow down")).await;

    assert_eq!(
        kinds(&events),
        ["queued", "sending", "deferred", "sending", "sent"]
    );
    assert!(
        detail(&events[2]).contains("rate_limit_exceeded"),
        "{:?}",
        events[2]
    );
    assert_eq!(
        events[3].attempt,
        Some(1),
        "a rate limit pauses the provider without using up an attempt"
    );
    assert_eq!(
        events[4].provider_message_id.as_deref(),
        Some("0b0cf9a2-2f6e-4d6c-9d39-3cfa3a4f1d7e")
    );
    let gap = retry_gap(&events);
    assert!(gap >= 900, "retried {gap} ms later despite retry-after: 1");

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.path, "/emails");
        assert_eq!(r.header("idempotency-key"), Some(id.as_str()));
    }
    assert_eq!(
        reqs[0].body, reqs[1].body,
        "the retry sends the same bytes (Resend's idempotency compares bodies)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_validation_error_fails_without_retry() {
    let mock = MockProvider::start().await;
    mock.set_default(Reply::new(
        422,
        r#"{"statusCode":422,"message":"Invalid `to` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format.","name":"validation_error"}"#,
    ));
    let daemon = resend_daemon(&mock).await;
    let client = daemon.client().await;
    let (id, events) = deliver(&client, email("cy@example.org", "nope")).await;

    assert_eq!(kinds(&events), ["queued", "sending", "failed"]);
    let failed = events.last().unwrap();
    assert_eq!(failed.provider.as_deref(), Some("resend"));
    assert!(
        detail(failed).contains("422 validation_error: Invalid `to` field"),
        "{failed:?}"
    );
    assert_eq!(client.get(&id).await.unwrap().state, State::Failed);
    assert_idle(&client).await;
    assert_eq!(mock.count(), 1, "a permanent error is not retried");
}

// ---------------------------------------------------------------------------------------
// SendGrid
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendgrid_success_takes_the_x_message_id() {
    let mock = MockProvider::start().await;
    mock.push(bare(202, "").header("x-message-id", "W8bJr9RhTBGr7ZbMDV2P7g"));
    let daemon = sendgrid_daemon(&mock).await;
    let client = daemon.client().await;
    let mut m = email("di@example.org", "Save the date");
    m.tags = vec!["rsvp".into(), "wedding-42".into()];
    let (id, events) = deliver(&client, m).await;

    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    let sent = events.last().unwrap();
    assert_eq!(sent.provider.as_deref(), Some("sendgrid"));
    assert_eq!(
        sent.provider_message_id.as_deref(),
        Some("W8bJr9RhTBGr7ZbMDV2P7g")
    );

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v3/mail/send");
    assert_eq!(
        r.header("authorization"),
        Some(&*format!("Bearer {SENDGRID_KEY}"))
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(
        body["personalizations"],
        json!([{
            "to": [{"email": "di@example.org"}],
            "custom_args": {"herald_id": id},
        }])
    );
    assert_eq!(
        body["from"],
        json!({"email": "rsvp@example.com", "name": "Herald RSVP"})
    );
    assert_eq!(body["subject"], "Save the date");
    assert_eq!(
        body["content"],
        json!([{"type": "text/plain", "value": "Save the date — body"}])
    );
    assert_eq!(body["categories"], json!(["rsvp", "wedding-42"]));
    assert!(body.get("mail_settings").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendgrid_server_error_is_retried() {
    let mock = MockProvider::start().await;
    mock.push(Reply::new(
        500,
        r#"{"errors":[{"field":null,"message":"An internal server error occurred."}]}"#,
    ));
    mock.push(bare(202, "").header("x-message-id", "retry-ok-Xq1"));
    let daemon = sendgrid_daemon(&mock).await;
    let client = daemon.client().await;
    let (_, events) = deliver(&client, email("ed@example.org", "again")).await;

    assert_eq!(
        kinds(&events),
        ["queued", "sending", "deferred", "sending", "sent"]
    );
    assert!(
        detail(&events[2]).contains("sendgrid 500: An internal server error occurred."),
        "{:?}",
        events[2]
    );
    assert_eq!(
        events[4].provider_message_id.as_deref(),
        Some("retry-ok-Xq1")
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.path == "/v3/mail/send"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendgrid_bad_request_fails_with_the_listed_errors() {
    let mock = MockProvider::start().await;
    mock.set_default(Reply::new(
        400,
        r#"{"errors":[{"message":"Does not contain a valid address.","field":"personalizations.0.to.0.email","help":"http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message.personalizations.to"}]}"#,
    ));
    let daemon = sendgrid_daemon(&mock).await;
    let client = daemon.client().await;
    let (id, events) = deliver(&client, email("fi@example.org", "nope")).await;

    assert_eq!(kinds(&events), ["queued", "sending", "failed"]);
    assert!(
        detail(events.last().unwrap()).contains(
            "sendgrid 400: personalizations.0.to.0.email: Does not contain a valid address."
        ),
        "{:?}",
        events.last()
    );
    assert_eq!(client.get(&id).await.unwrap().state, State::Failed);
    assert_idle(&client).await;
    assert_eq!(mock.count(), 1, "a permanent error is not retried");
}

// ---------------------------------------------------------------------------------------
// Email fallback
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_key_refused_falls_back_to_sendgrid() {
    let resend = MockProvider::start().await;
    let sendgrid = MockProvider::start().await;
    // Resend refuses the key: 401 for a missing/restricted key, 403 for an invalid one
    // (providers.md §1). Both are the provider's fault, not the message's.
    resend.push(Reply::new(
        401,
        r#"{"statusCode":401,"message":"Missing API key in the authorization header. Include the following header Authorization: Bearer YOUR_API_KEY in the request.","name":"missing_api_key"}"#,
    ));
    resend.push(Reply::new(
        403,
        r#"{"statusCode":403,"message":"API key is invalid","name":"invalid_api_key"}"#,
    ));
    sendgrid.push(bare(202, "").header("x-message-id", "fallback-1"));
    sendgrid.push(bare(202, "").header("x-message-id", "fallback-2"));
    let daemon = Daemon::builder()
        .config(&resend_provider("resend", &resend))
        .config(&sendgrid_provider("sendgrid", &sendgrid))
        .config("[routes]\nemail = [\"resend\", \"sendgrid\"]\n")
        .env("RESEND_API_KEY", RESEND_KEY)
        .env("SENDGRID_API_KEY", SENDGRID_KEY)
        .start()
        .await;
    let client = daemon.client().await;

    for (n, to) in [(1, "gi@example.org"), (2, "ho@example.org")] {
        let (id, events) = deliver(&client, email(to, "fallback")).await;
        assert_eq!(kinds(&events), ["queued", "sending", "sent"], "message {n}");
        let sent = events.last().unwrap();
        assert_eq!(sent.provider.as_deref(), Some("sendgrid"));
        assert_eq!(
            sent.provider_message_id.as_deref(),
            Some(&*format!("fallback-{n}"))
        );
        assert_eq!(client.get(&id).await.unwrap().state, State::Sent);

        let r = &resend.requests()[n - 1];
        assert_eq!(r.path, "/emails");
        assert_eq!(r.header("idempotency-key"), Some(id.as_str()));
        let s = &sendgrid.requests()[n - 1];
        assert_eq!(s.path, "/v3/mail/send");
        assert_eq!(s.json()["personalizations"][0]["to"][0]["email"], to);
        assert_eq!(
            s.json()["personalizations"][0]["custom_args"]["herald_id"],
            id
        );
    }
    assert_eq!(resend.count(), 2, "each message tried Resend once");
    assert_eq!(sendgrid.count(), 2);
    assert!(
        daemon.log().contains("invalid_api_key"),
        "the provider failure is logged"
    );
    assert!(
        !daemon.log().contains(RESEND_KEY),
        "the key is never logged"
    );
}

// ---------------------------------------------------------------------------------------
// Twilio
// ---------------------------------------------------------------------------------------

fn twilio_message(sid: &str, to: &str, body: &str) -> String {
    json!({
        "account_sid": TWILIO_SID,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": "Thu, 24 Aug 2023 05:01:45 +0000",
        "date_sent": null,
        "date_updated": "Thu, 24 Aug 2023 05:01:45 +0000",
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": "+14155550100",
        "messaging_service_sid": null,
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages/{sid}/Media.json")
        },
        "to": to,
        "uri": format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages/{sid}.json"),
    })
    .to_string()
}

fn twilio_error(status: u16, code: u32, message: &str) -> Reply {
    Reply::new(
        status,
        json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        })
        .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_success_posts_the_form_with_basic_auth() {
    let mock = MockProvider::start().await;
    let sid = "SM3b2f4c1d0e9a8b7c6d5e4f3a2b1c0d9e";
    mock.push(Reply::new(
        201,
        twilio_message(sid, "+15550001111", "Will you come? Reply YES & more"),
    ));
    let daemon = twilio_daemon(&mock).await;
    let client = daemon.client().await;
    let (id, events) = deliver(
        &client,
        sms("+15550001111", "Will you come? Reply YES & more"),
    )
    .await;

    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    let sent = events.last().unwrap();
    assert_eq!(sent.provider.as_deref(), Some("twilio"));
    assert_eq!(sent.provider_message_id.as_deref(), Some(sid));
    let view = client.get(&id).await.unwrap();
    assert_eq!(view.state, State::Sent);
    assert_eq!(view.provider_message_id.as_deref(), Some(sid));

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.path,
        format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json")
    );
    assert_eq!(
        r.header("authorization"),
        Some(&*format!(
            "Basic {}",
            b64(format!("{TWILIO_SID}:{TWILIO_TOKEN}").as_bytes())
        ))
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.header("accept"), Some("application/json"));
    let fields = form(&r.body);
    assert_eq!(field(&fields, "To"), Some("+15550001111"));
    assert_eq!(field(&fields, "From"), Some("+14155550100"));
    assert_eq!(
        field(&fields, "Body"),
        Some("Will you come? Reply YES & more")
    );
    assert_eq!(
        field(&fields, "StatusCallback"),
        None,
        "no [webhooks] public_url, no status callback"
    );
    assert_eq!(fields.len(), 3, "{fields:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_too_many_requests_is_retried() {
    let mock = MockProvider::start().await;
    mock.push(twilio_error(429, 20429, "Too Many Requests"));
    let sid = "SM00000000000000000000000000000429";
    mock.push(Reply::new(
        201,
        twilio_message(sid, "+15550002222", "RSVP?"),
    ));
    let daemon = twilio_daemon(&mock).await;
    let client = daemon.client().await;
    let (_, events) = deliver(&client, sms("+15550002222", "RSVP?")).await;

    assert_eq!(
        kinds(&events),
        ["queued", "sending", "deferred", "sending", "sent"]
    );
    assert!(
        detail(&events[2]).contains("error 20429"),
        "{:?}",
        events[2]
    );
    assert_eq!(events[4].provider_message_id.as_deref(), Some(sid));
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body, reqs[1].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_invalid_number_fails_and_opt_out_also_suppresses() {
    let mock = MockProvider::start().await;
    mock.rule(|r| {
        let fields = form(&r.body);
        match field(&fields, "To") {
            Some("+15005550001") => Some(twilio_error(
                400,
                21211,
                "The 'To' number +15005550001 is not a valid phone number.",
            )),
            Some("+15005550004") => Some(twilio_error(
                400,
                21610,
                "Attempt to send to unsubscribed recipient",
            )),
            _ => None,
        }
    });
    let daemon = twilio_daemon(&mock).await;
    let client = daemon.client().await;

    // 21211: the number is invalid — failed, no retry, not suppressed.
    let (id, events) = deliver(&client, sms("+15005550001", "hi")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "failed"]);
    assert!(
        detail(events.last().unwrap()).contains("error 21211: The 'To' number"),
        "{:?}",
        events.last()
    );
    assert_eq!(client.get(&id).await.unwrap().state, State::Failed);

    // 21610: the recipient replied STOP — failed, and the number is suppressed.
    let (_, events) = deliver(&client, sms("+15005550004", "hi")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "failed"]);
    assert!(
        detail(events.last().unwrap()).contains("error 21610"),
        "{:?}",
        events.last()
    );
    assert_idle(&client).await;
    assert_eq!(mock.count(), 2, "permanent errors are not retried");

    let (_, events) = deliver(&client, sms("+15005550004", "again")).await;
    assert_eq!(kinds(&events), ["queued", "suppressed"]);
    assert_eq!(mock.count(), 2, "a suppressed recipient is not sent to");
    // The invalid number was not suppressed: it reaches Twilio again.
    let (_, events) = deliver(&client, sms("+15005550001", "again")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "failed"]);
    assert_eq!(mock.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_status_callback_points_at_the_public_webhook_url() {
    let mock = MockProvider::start().await;
    let sid = "SM0000000000000000000000000000cb01";
    mock.push(Reply::new(201, twilio_message(sid, "+15550003333", "hi")));
    let port = free_port();
    let daemon = Daemon::builder()
        .config(&twilio_provider("sms", &mock))
        .config(&format!(
            "[routes]\nsms = [\"sms\"]\n\n[webhooks]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://hooks.example.com/herald/\"\n"
        ))
        .env("TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
        .start()
        .await;
    let client = daemon.client().await;
    let (id, events) = deliver(&client, sms("+15550003333", "hi")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let fields = form(&reqs[0].body);
    assert_eq!(
        field(&fields, "StatusCallback"),
        Some(&*format!(
            "https://hooks.example.com/herald/webhooks/sms?message_id={id}"
        ))
    );
}

// ---------------------------------------------------------------------------------------
// FCM
// ---------------------------------------------------------------------------------------

fn fcm_error(status: u16, grpc: &str, fcm_code: Option<&str>, message: &str) -> Reply {
    let details = match fcm_code {
        Some(code) => json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }]),
        None => json!([]),
    };
    Reply::new(
        status,
        json!({"error": {"code": status, "message": message, "status": grpc, "details": details}})
            .to_string(),
    )
}

/// Checks an FCM token-exchange request: a form POST of the JWT-bearer grant with an RS256
/// assertion signed for the service account.
fn assert_token_request(r: &Recorded, before_s: u64, after_s: u64) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/token");
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let fields = form(&r.body);
    assert_eq!(
        field(&fields, "grant_type"),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    let (header, claims, signature) = decode_jwt(field(&fields, "assertion").unwrap());
    assert_eq!(
        header,
        json!({"alg": "RS256", "typ": "JWT", "kid": FCM_KEY_ID})
    );
    assert_eq!(claims["iss"], FCM_CLIENT_EMAIL);
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/firebase.messaging"
    );
    // The audience is the credentials' token_uri, not the overriding token_url.
    assert_eq!(claims["aud"], "https://oauth2.googleapis.com/token");
    let iat = claims["iat"].as_u64().unwrap();
    assert!(
        (before_s..=after_s).contains(&iat),
        "iat {iat} not in [{before_s}, {after_s}]"
    );
    assert_eq!(claims["exp"].as_u64(), Some(iat + 3600));
    assert_eq!(signature.len(), 256, "RS256 with a 2048-bit key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_success_exchanges_a_token_then_sends() {
    let api = MockProvider::start().await;
    let oauth = MockProvider::start().await;
    oauth_endpoint(&oauth, &[3600]);
    fcm_success(&api);
    let daemon = fcm_daemon(&api, &oauth).await;
    let client = daemon.client().await;
    let start_s = now_ms() / 1000;
    let mut m = push(FCM_TOKEN, "RSVP", "Will you come?");
    if let Content::Push(p) = &mut m.content {
        p.data.insert("rsvp_id".into(), "r_42".into());
        p.priority = Some(PushPriority::High);
    }
    let (id, events) = deliver(&client, m).await;
    let end_s = now_ms() / 1000 + 1;

    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    let sent = events.last().unwrap();
    assert_eq!(sent.provider.as_deref(), Some("fcm"));
    assert_eq!(sent.provider_message_id.as_deref(), Some(&*fcm_name(1)));
    assert_eq!(
        client.get(&id).await.unwrap().provider_message_id,
        Some(fcm_name(1))
    );

    let tokens = oauth.requests();
    assert_eq!(tokens.len(), 1);
    assert_token_request(&tokens[0], start_s, end_s);

    let sends = api.requests();
    assert_eq!(sends.len(), 1);
    let r = &sends[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/v1/projects/{FCM_PROJECT}/messages:send"));
    assert_eq!(
        auth(r),
        "Bearer ya29.e2e-1",
        "the token the endpoint issued"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["message"]["token"], FCM_TOKEN);
    assert_eq!(
        body["message"]["notification"],
        json!({"title": "RSVP", "body": "Will you come?"})
    );
    assert_eq!(
        body["message"]["data"],
        json!({"herald_id": id, "rsvp_id": "r_42"})
    );
    assert_eq!(body["message"]["android"]["priority"], "HIGH");
    assert_eq!(body["message"]["apns"]["headers"]["apns-priority"], "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_unavailable_is_retried_with_the_cached_token() {
    let api = MockProvider::start().await;
    let oauth = MockProvider::start().await;
    oauth_endpoint(&oauth, &[3600]);
    api.push(
        fcm_error(
            503,
            "UNAVAILABLE",
            Some("UNAVAILABLE"),
            "The service is currently unavailable.",
        )
        .header("retry-after", "1"),
    );
    fcm_success(&api);
    let daemon = fcm_daemon(&api, &oauth).await;
    let client = daemon.client().await;
    let (_, events) = deliver(&client, push(FCM_TOKEN, "RSVP", "retry")).await;

    assert_eq!(
        kinds(&events),
        ["queued", "sending", "deferred", "sending", "sent"]
    );
    assert!(
        detail(&events[2]).contains("FCM UNAVAILABLE (HTTP 503)"),
        "{:?}",
        events[2]
    );
    let gap = retry_gap(&events);
    assert!(gap >= 900, "retried {gap} ms later despite Retry-After: 1");
    assert_eq!(
        events[4].provider_message_id.as_deref(),
        Some(&*fcm_name(1))
    );
    let sends = api.requests();
    assert_eq!(sends.len(), 2);
    assert!(sends.iter().all(|r| auth(r) == "Bearer ya29.e2e-1"));
    assert_eq!(oauth.count(), 1, "the retry reuses the cached token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_unregistered_fails_and_suppresses_the_token() {
    let api = MockProvider::start().await;
    let oauth = MockProvider::start().await;
    oauth_endpoint(&oauth, &[3600]);
    api.set_default(fcm_error(
        404,
        "NOT_FOUND",
        Some("UNREGISTERED"),
        "Requested entity was not found.",
    ));
    let daemon = fcm_daemon(&api, &oauth).await;
    let client = daemon.client().await;
    let (id, events) = deliver(&client, push(FCM_TOKEN, "RSVP", "gone")).await;

    assert_eq!(kinds(&events), ["queued", "sending", "failed"]);
    assert!(
        detail(events.last().unwrap()).contains("FCM UNREGISTERED (HTTP 404)"),
        "{:?}",
        events.last()
    );
    assert_eq!(client.get(&id).await.unwrap().state, State::Failed);
    assert_idle(&client).await;
    assert_eq!(api.count(), 1, "a permanent error is not retried");

    let (_, events) = deliver(&client, push(FCM_TOKEN, "RSVP", "still gone")).await;
    assert_eq!(kinds(&events), ["queued", "suppressed"]);
    assert_eq!(
        api.count(),
        1,
        "the unregistered token is not sent to again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_one_token_for_many_sends_and_a_new_one_after_a_401() {
    let api = MockProvider::start().await;
    let oauth = MockProvider::start().await;
    oauth_endpoint(&oauth, &[3600]);
    fcm_success(&api);
    let daemon = fcm_daemon(&api, &oauth).await;
    let client = daemon.client().await;

    // The first send fetches the token; four more, sent at once, reuse it.
    let (_, events) = deliver(&client, push(FCM_TOKEN, "RSVP", "n0")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    let batch = client
        .send_batch(
            (1..=4)
                .map(|i| push(FCM_TOKEN, "RSVP", &format!("n{i}")))
                .collect(),
        )
        .await
        .unwrap();
    for item in batch {
        let herald_protocol::BatchItem::Accepted(ack) = item else {
            panic!("{item:?}")
        };
        let events = events_until(&client, &ack.id, END, T).await;
        assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    }
    assert_eq!(oauth.count(), 1, "one token exchange for five sends");
    let sends = api.requests();
    assert_eq!(sends.len(), 5);
    assert!(
        sends.iter().all(|r| auth(r) == "Bearer ya29.e2e-1"),
        "{:?}",
        sends.iter().map(auth).collect::<Vec<_>>()
    );

    // FCM refuses the cached token (401 without an FcmError): the plugin fetches a new
    // one and sends again within the same attempt.
    api.push(fcm_error(
        401,
        "UNAUTHENTICATED",
        None,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
    ));
    let (_, events) = deliver(&client, push(FCM_TOKEN, "RSVP", "after 401")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    assert_eq!(events[1].attempt, Some(1));
    assert_eq!(oauth.count(), 2, "the 401 triggers exactly one refresh");
    let sends = api.requests();
    assert_eq!(sends.len(), 7);
    assert_eq!(auth(&sends[5]), "Bearer ya29.e2e-1", "refused");
    assert_eq!(auth(&sends[6]), "Bearer ya29.e2e-2", "refreshed");
    assert_eq!(sends[5].body, sends[6].body);
    assert_eq!(
        events.last().unwrap().provider_message_id.as_deref(),
        Some(&*fcm_name(6))
    );

    // The new token is cached in turn.
    let (_, events) = deliver(&client, push(FCM_TOKEN, "RSVP", "later")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    assert_eq!(oauth.count(), 2);
    assert_eq!(auth(&api.requests()[7]), "Bearer ya29.e2e-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_fetches_a_new_token_once_the_cached_one_expires() {
    let api = MockProvider::start().await;
    let oauth = MockProvider::start().await;
    // The plugin refreshes 225 s before expiry (google-auth's threshold): a first token
    // valid for 226 s is due for a refresh one second after it was fetched.
    oauth_endpoint(&oauth, &[226, 3600]);
    fcm_success(&api);
    let daemon = fcm_daemon(&api, &oauth).await;
    let client = daemon.client().await;

    let (_, events) = deliver(&client, push(FCM_TOKEN, "RSVP", "first")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    assert_eq!(oauth.count(), 1);
    // Let the first token come due (time passing is the point here, not synchronisation).
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    let (_, events) = deliver(&client, push(FCM_TOKEN, "RSVP", "second")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    let (_, events) = deliver(&client, push(FCM_TOKEN, "RSVP", "third")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    assert_eq!(
        oauth.count(),
        2,
        "one refresh after expiry, then the new token is reused"
    );
    let sends = api.requests();
    assert_eq!(
        sends.iter().map(auth).collect::<Vec<_>>(),
        [
            "Bearer ya29.e2e-1",
            "Bearer ya29.e2e-2",
            "Bearer ya29.e2e-2"
        ]
    );
}

/// A backlog at start-up (or right after the token comes due) is delivered concurrently
/// (`daemon.concurrency`, 256 by default): every delivery that finds no fresh token starts
/// its own token exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_a_burst_from_cold_shares_one_token_exchange() {
    let api = MockProvider::start().await;
    let oauth = MockProvider::start().await;
    oauth_endpoint(&oauth, &[3600]);
    fcm_success(&api);
    let daemon = fcm_daemon(&api, &oauth).await;
    let client = daemon.client().await;

    let batch = client
        .send_batch(
            (0..5)
                .map(|i| push(FCM_TOKEN, "RSVP", &format!("b{i}")))
                .collect(),
        )
        .await
        .unwrap();
    for item in batch {
        let herald_protocol::BatchItem::Accepted(ack) = item else {
            panic!("{item:?}")
        };
        let events = events_until(&client, &ack.id, END, T).await;
        assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    }
    assert_eq!(api.count(), 5);
    assert_eq!(
        oauth.count(),
        1,
        "five concurrent first sends should share one token exchange"
    );
}

// ---------------------------------------------------------------------------------------
// APNs
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_success_over_http2_with_the_apns_headers() {
    let mock = MockProvider::start().await;
    mock.push(bare(200, "").header("apns-id", "EABEAE54-14A8-11E5-B60B-1697F925EC7B"));
    let daemon = apns_daemon(&mock).await;
    let client = daemon.client().await;
    let token = device_token(0xa1);
    let start_s = now_ms() / 1000;
    let mut m = push(&token, "RSVP", "Will you come?");
    if let Content::Push(p) = &mut m.content {
        p.badge = Some(3);
        p.sound = Some("default".into());
        p.data.insert("rsvp_id".into(), "r_42".into());
    }
    let (id, events) = deliver(&client, m).await;
    let end_s = now_ms() / 1000 + 1;

    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    let sent = events.last().unwrap();
    assert_eq!(sent.provider.as_deref(), Some("apns"));
    assert_eq!(
        sent.provider_message_id.as_deref(),
        Some("EABEAE54-14A8-11E5-B60B-1697F925EC7B"),
        "the apns-id APNs answered"
    );

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.version, "HTTP/2.0");
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/3/device/{token}"));
    assert_eq!(r.header("apns-topic"), Some(APNS_TOPIC));
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    assert_eq!(r.header("apns-priority"), Some("10"));
    assert_eq!(r.header("apns-id"), Some(&*uuid_of_ulid(&id)));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("apns-expiration"), None);
    assert_eq!(
        r.json(),
        json!({
            "aps": {"alert": {"title": "RSVP", "body": "Will you come?"}, "badge": 3, "sound": "default"},
            "herald_id": id,
            "rsvp_id": "r_42",
        })
    );

    let jwt = auth(r)
        .strip_prefix("bearer ")
        .unwrap_or_else(|| panic!("authorization: {}", auth(r)));
    let (header, claims, signature) = decode_jwt(jwt);
    assert_eq!(header, json!({"alg": "ES256", "kid": APNS_KEY_ID}));
    assert_eq!(claims["iss"], APNS_TEAM_ID);
    let iat = claims["iat"].as_u64().unwrap();
    assert!(
        (start_s..=end_s).contains(&iat),
        "iat {iat} not in [{start_s}, {end_s}]"
    );
    assert_eq!(
        claims.as_object().unwrap().len(),
        2,
        "only iss and iat: {claims}"
    );
    assert_eq!(signature.len(), 64, "ES256 as raw r‖s, not DER");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_service_unavailable_is_retried() {
    let mock = MockProvider::start().await;
    mock.push(Reply::new(503, r#"{"reason":"ServiceUnavailable"}"#));
    apns_success(&mock);
    let daemon = apns_daemon(&mock).await;
    let client = daemon.client().await;
    let token = device_token(0xb2);
    let (id, events) = deliver(&client, push(&token, "RSVP", "retry")).await;

    assert_eq!(
        kinds(&events),
        ["queued", "sending", "deferred", "sending", "sent"]
    );
    assert!(
        detail(&events[2]).contains("APNs ServiceUnavailable (HTTP 503)"),
        "{:?}",
        events[2]
    );
    let apns_id = uuid_of_ulid(&id);
    assert_eq!(
        events[4].provider_message_id.as_deref(),
        Some(&*apns_id.to_ascii_uppercase())
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.version, "HTTP/2.0");
        assert_eq!(r.path, format!("/3/device/{token}"));
        assert_eq!(
            r.header("apns-id"),
            Some(apns_id.as_str()),
            "the same apns-id on every attempt"
        );
    }
    assert_eq!(auth(&reqs[0]), auth(&reqs[1]), "the retry reuses the JWT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_unregistered_and_bad_device_token_fail_without_retry() {
    let mock = MockProvider::start().await;
    let gone = device_token(0xc3);
    let bad = device_token(0xd4);
    let (g, b) = (format!("/3/device/{gone}"), format!("/3/device/{bad}"));
    mock.rule(move |r| {
        if r.path == g {
            Some(Reply::new(
                410,
                r#"{"reason":"Unregistered","timestamp":1700000000000}"#,
            ))
        } else if r.path == b {
            Some(Reply::new(400, r#"{"reason":"BadDeviceToken"}"#))
        } else {
            None
        }
    });
    let daemon = apns_daemon(&mock).await;
    let client = daemon.client().await;

    let (id, events) = deliver(&client, push(&gone, "RSVP", "gone")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "failed"]);
    assert!(
        detail(events.last().unwrap()).contains("APNs Unregistered (HTTP 410)"),
        "{:?}",
        events.last()
    );
    assert_eq!(client.get(&id).await.unwrap().state, State::Failed);

    let (_, events) = deliver(&client, push(&bad, "RSVP", "bad")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "failed"]);
    assert!(
        detail(events.last().unwrap()).contains("APNs BadDeviceToken (HTTP 400)"),
        "{:?}",
        events.last()
    );
    assert_idle(&client).await;
    assert_eq!(mock.count(), 2, "permanent errors are not retried");

    // Both tokens are dead: later pushes to them never reach APNs.
    for token in [&gone, &bad] {
        let (_, events) = deliver(&client, push(token, "RSVP", "again")).await;
        assert_eq!(kinds(&events), ["queued", "suppressed"]);
    }
    assert_eq!(mock.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_one_jwt_for_many_sends() {
    let mock = MockProvider::start().await;
    apns_success(&mock);
    let daemon = apns_daemon(&mock).await;
    let client = daemon.client().await;
    let start_s = now_ms() / 1000;

    // Five at once (the token is minted under a lock), then one more on its own.
    let batch = client
        .send_batch(
            (0..5u8)
                .map(|i| push(&device_token(0x10 + i), "RSVP", &format!("n{i}")))
                .collect(),
        )
        .await
        .unwrap();
    for item in batch {
        let herald_protocol::BatchItem::Accepted(ack) = item else {
            panic!("{item:?}")
        };
        let events = events_until(&client, &ack.id, END, T).await;
        assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    }
    let (_, events) = deliver(&client, push(&device_token(0x20), "RSVP", "n5")).await;
    assert_eq!(kinds(&events), ["queued", "sending", "sent"]);
    let end_s = now_ms() / 1000 + 1;

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 6);
    let first = auth(&reqs[0]);
    assert!(first.starts_with("bearer "), "{first}");
    assert!(
        reqs.iter().all(|r| auth(r) == first),
        "every request carries the same provider token: {:?}",
        reqs.iter().map(auth).collect::<Vec<_>>()
    );
    assert!(reqs.iter().all(|r| r.version == "HTTP/2.0"));
    let (header, claims, _) = decode_jwt(&first["bearer ".len()..]);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], APNS_KEY_ID);
    assert_eq!(claims["iss"], APNS_TEAM_ID);
    let iat = claims["iat"].as_u64().unwrap();
    assert!(
        (start_s..=end_s).contains(&iat),
        "iat {iat} not in [{start_s}, {end_s}]"
    );
}
