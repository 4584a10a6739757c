//! Unit tests of the smtp plugin: envelope snapshots, TLS and port defaults, every reply
//! class, transport errors, config errors and secrecy of the password. No I/O.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use expect_test::{Expect, expect};
use herald_plugin_api::{Attachment, EmailContent, Message, SmsContent, TransportErrorKind};
use herald_plugin_kit::testing::{
    RETRYABLE_KINDS, done, http_response, provider_config, recording_host, required_keys,
    secret_keys, smtp_reply, summary, transport_error,
};
use serde_json::json;

use super::*;

fn new_logged(settings: Value) -> (Result<Smtp, ConfigError>, Vec<String>) {
    let (host, lines) = recording_host();
    let smtp = Smtp::new(provider_config("mail", settings, None), host);
    let lines = lines.lock().unwrap().clone();
    (smtp, lines)
}

fn new(settings: Value) -> Result<Smtp, ConfigError> {
    new_logged(settings).0
}

fn base() -> Value {
    json!({
        "host": "smtp.example.com",
        "username": "herald@example.com",
        "password": "p4ss-w0rd-never-shown",
        "from": "Weddings <Hello@Example.COM>",
    })
}

fn with(mut settings: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    settings
}

fn delivery() -> Delivery {
    Delivery {
        message: Message {
            id: "01HZX3K2J8Q9V7W6E5R4T3Y2U1".into(),
            to: "Ann Lee <ann@example.org>".into(),
            content: Content::Email(EmailContent {
                from: None,
                subject: "You're invited".into(),
                text: Some("Reply YES".into()),
                html: Some("<p>Reply <b>YES</b></p>".into()),
                reply_to: Some("rsvp@example.com".into()),
                headers: BTreeMap::from([
                    (
                        "List-Unsubscribe".to_string(),
                        "<https://x.io/u>".to_string(),
                    ),
                    ("Message-ID".to_string(), "<spoof@x.io>".to_string()),
                    ("bcc".to_string(), "spy@x.io".to_string()),
                ]),
                attachments: vec![Attachment {
                    filename: "map.txt".into(),
                    content_type: Some("text/plain".into()),
                    content: "aGk=".into(),
                }],
            }),
            tags: vec!["rsvp".into()],
            created_at: 1_699_999_990_000,
        },
        attempt: 1,
        now: 1_700_000_000_000,
    }
}

fn request(step: Step) -> SmtpRequest {
    match step {
        Step::Call {
            request: Request::Smtp(r),
            state,
        } => {
            assert_eq!(state, Value::Null);
            r
        }
        other => panic!("expected an SMTP call, got {other:?}"),
    }
}

fn check(settings: Value, expect: Expect) {
    let r = request(new(settings).unwrap().begin(&delivery()));
    expect.assert_eq(&serde_json::to_string_pretty(&r).unwrap());
}

#[test]
fn envelope_on_587_with_starttls() {
    check(
        with(base(), json!({"request_timeout": "30s"})),
        expect![[r#"
            {
              "host": "smtp.example.com",
              "port": 587,
              "tls": "starttls",
              "username": "herald@example.com",
              "password": "p4ss-w0rd-never-shown",
              "timeout_ms": 30000,
              "from": "Weddings <Hello@Example.COM>",
              "to": [
                "Ann Lee <ann@example.org>"
              ],
              "reply_to": "rsvp@example.com",
              "subject": "You're invited",
              "text": "Reply YES",
              "html": "<p>Reply <b>YES</b></p>",
              "message_id": "<01HZX3K2J8Q9V7W6E5R4T3Y2U1@example.com>",
              "headers": [
                [
                  "List-Unsubscribe",
                  "<https://x.io/u>"
                ],
                [
                  "X-Herald-Id",
                  "01HZX3K2J8Q9V7W6E5R4T3Y2U1"
                ]
              ],
              "attachments": [
                {
                  "filename": "map.txt",
                  "content_type": "text/plain",
                  "content": "aGk="
                }
              ]
            }"#]],
    );
}

#[test]
fn envelope_on_465_without_login_and_with_own_domain() {
    let mut d = delivery();
    let Content::Email(email) = &mut d.message.content else {
        unreachable!()
    };
    email.from = Some("Planner <planner@events.example.net>".into());
    email.headers.clear();
    email.attachments.clear();
    email.html = None;
    email.reply_to = None;
    let smtp = new(json!({
        "host": "mail.example.com",
        "port": 465,
        "from": "noreply@example.com",
        "message_id_domain": "Herald.Example.com",
    }))
    .unwrap();
    expect![[r#"
        {
          "host": "mail.example.com",
          "port": 465,
          "tls": "implicit",
          "username": null,
          "password": null,
          "timeout_ms": null,
          "from": "Planner <planner@events.example.net>",
          "to": [
            "Ann Lee <ann@example.org>"
          ],
          "reply_to": null,
          "subject": "You're invited",
          "text": "Reply YES",
          "html": null,
          "message_id": "<01HZX3K2J8Q9V7W6E5R4T3Y2U1@herald.example.com>",
          "headers": [
            [
              "X-Herald-Id",
              "01HZX3K2J8Q9V7W6E5R4T3Y2U1"
            ]
          ],
          "attachments": []
        }"#]]
    .assert_eq(&serde_json::to_string_pretty(&request(smtp.begin(&d))).unwrap());
}

#[test]
fn tls_and_port_defaults() {
    let pick = |extra: Value| {
        let s = new(with(base(), extra)).unwrap();
        (s.port, s.tls)
    };
    assert_eq!(pick(json!({})), (587, SmtpTls::Starttls));
    assert_eq!(pick(json!({"port": 587})), (587, SmtpTls::Starttls));
    assert_eq!(pick(json!({"port": 465})), (465, SmtpTls::Implicit));
    assert_eq!(pick(json!({"port": 25})), (25, SmtpTls::Starttls));
    assert_eq!(pick(json!({"port": 2525})), (2525, SmtpTls::Starttls));
    assert_eq!(pick(json!({"tls": "implicit"})), (465, SmtpTls::Implicit));
    assert_eq!(pick(json!({"tls": "starttls"})), (587, SmtpTls::Starttls));
    assert_eq!(
        pick(json!({"port": 2465, "tls": "implicit"})),
        (2465, SmtpTls::Implicit)
    );
}

#[test]
fn tls_none_is_allowed_for_a_local_sink_with_a_warning() {
    let (smtp, log) = new_logged(json!({
        "host": "127.0.0.1", "port": 2525, "tls": "none", "from": "t@example.com",
    }));
    let smtp = smtp.unwrap();
    assert_eq!((smtp.port, smtp.tls), (2525, SmtpTls::None));
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(
        log[0].starts_with("Warn provider \"mail\": tls = \"none\""),
        "{log:?}"
    );

    // Credentials in clear text: fine on loopback, refused elsewhere.
    let local = with(base(), json!({"host": "localhost", "tls": "none"}));
    assert!(new(local).is_ok());
    let remote = with(base(), json!({"tls": "none"}));
    let err = new(remote).unwrap_err().message;
    assert!(err.contains("clear text to smtp.example.com"), "{err}");
    assert!(!err.contains("p4ss"), "{err}");

    // A TLS mode that does not match the port is warned about, not refused.
    let (smtp, log) = new_logged(with(base(), json!({"port": 465, "tls": "starttls"})));
    assert!(smtp.is_ok());
    assert!(log.iter().any(|l| l.contains("port 465")), "{log:?}");
    let (_, log) = new_logged(base());
    assert!(log.is_empty(), "{log:?}");
}

#[test]
fn allowed_hosts_is_the_configured_host() {
    assert_eq!(new(base()).unwrap().allowed_hosts(), ["smtp.example.com"]);
    let v6 = with(base(), json!({"host": "[::1]"}));
    assert_eq!(new(v6).unwrap().allowed_hosts(), ["::1"]);
    assert!(Smtp::manifest().allowed_hosts.is_empty());
}

fn outcome_of(response: TransportResponse) -> Outcome {
    let smtp = new(base()).unwrap();
    done(smtp.resume(&delivery(), Value::Null, response))
}

fn reply(code: u16, enhanced: Option<&str>, message: &str) -> Outcome {
    outcome_of(smtp_reply(code, enhanced, message))
}

#[test]
fn every_reply_class() {
    let cases: &[(u16, Option<&str>, &str)] = &[
        (250, None, "2.0.0 Ok: queued as 4F1B2"),
        (250, Some("2.0.0"), "OK"),
        (421, Some("4.3.2"), "Service not available, closing channel"),
        (450, Some("4.2.1"), "Mailbox busy"),
        (451, Some("4.3.0"), "Local error in processing"),
        (451, None, "4.7.1 Try again later (greylisted)"),
        (452, Some("4.3.1"), "Insufficient system storage"),
        (454, Some("4.7.0"), "Temporary authentication failure"),
        (530, Some("5.7.0"), "Authentication required"),
        (535, Some("5.7.8"), "Authentication credentials invalid"),
        (535, None, "Error: authentication failed"),
        (
            550,
            Some("5.1.1"),
            "<ann@example.org>: Recipient address rejected: User unknown",
        ),
        (
            550,
            None,
            "Requested action not taken: mailbox unavailable (5.1.1)",
        ),
        (550, None, "5.1.10 Recipient domain has null MX"),
        (550, None, "Mailbox unavailable"),
        (551, Some("5.1.6"), "User not local"),
        (552, Some("5.3.4"), "Message size exceeds fixed limit"),
        (553, Some("5.1.3"), "Bad recipient address syntax"),
        (554, None, "Transaction failed"),
        (554, Some("5.7.1"), "Relay access denied"),
        (550, None, "5.7.1 Message rejected as spam"),
        (550, Some("5.7.8"), "Sender authentication failed"),
        (354, None, "End data with <CR><LF>.<CR><LF>"),
    ];
    let mut table = String::new();
    for (code, enhanced, text) in cases {
        table.push_str(&format!(
            "{code} {:<6} {}\n",
            enhanced.unwrap_or("-"),
            summary(&reply(*code, *enhanced, text))
        ));
    }
    expect![[r#"
        250 -      accepted id=Some("<01HZX3K2J8Q9V7W6E5R4T3Y2U1@example.com>") delivered=false
        250 2.0.0  accepted id=Some("<01HZX3K2J8Q9V7W6E5R4T3Y2U1@example.com>") delivered=false
        421 4.3.2  retry breaker=true after=None
        450 4.2.1  retry breaker=false after=None
        451 4.3.0  retry breaker=true after=None
        451 -      retry breaker=true after=None
        452 4.3.1  retry breaker=true after=None
        454 4.7.0  retry breaker=true after=None
        530 5.7.0  provider_failure
        535 5.7.8  provider_failure
        535 -      provider_failure
        550 5.1.1  rejected bounced=true suppress=true
        550 -      rejected bounced=true suppress=true
        550 -      rejected bounced=false suppress=false
        550 -      rejected bounced=false suppress=false
        551 5.1.6  rejected bounced=false suppress=false
        552 5.3.4  rejected bounced=false suppress=false
        553 5.1.3  rejected bounced=false suppress=false
        554 -      rejected bounced=false suppress=false
        554 5.7.1  provider_failure
        550 -      provider_failure
        550 5.7.8  provider_failure
        354 -      provider_failure
    "#]]
    .assert_eq(&table);
}

#[test]
fn reasons_quote_the_reply() {
    let Outcome::Rejected { reason, .. } = reply(
        550,
        None,
        "5.1.1 <ann@example.org>:\r\n Recipient address rejected",
    ) else {
        panic!()
    };
    assert_eq!(
        reason,
        "SMTP server answered 550 5.1.1: 5.1.1 <ann@example.org>:   Recipient address rejected"
    );
    let Outcome::ProviderFailure { reason } = reply(535, Some("5.7.8"), "bad credentials") else {
        panic!()
    };
    assert!(reason.contains("check username and password"), "{reason}");
    assert!(!reason.contains("p4ss"), "{reason}");
    let Outcome::Retry { reason, .. } = reply(421, None, "") else {
        panic!()
    };
    assert_eq!(reason, "SMTP server answered 421");
}

#[test]
fn enhanced_codes_in_text() {
    assert_eq!(
        enhanced_in_text(550, "5.1.1 user unknown").as_deref(),
        Some("5.1.1")
    );
    assert_eq!(
        enhanced_in_text(550, "user unknown (5.1.1).").as_deref(),
        Some("5.1.1")
    );
    assert_eq!(enhanced_in_text(550, "see RFC 5.1.1234").as_deref(), None);
    assert_eq!(enhanced_in_text(550, "4.2.2 mailbox full").as_deref(), None);
    assert_eq!(
        enhanced_in_text(450, "4.2.2 mailbox full").as_deref(),
        Some("4.2.2")
    );
    assert_eq!(enhanced_in_text(550, "version 5.1 only").as_deref(), None);
}

#[test]
fn transport_errors() {
    for kind in RETRYABLE_KINDS {
        assert_eq!(
            outcome_of(transport_error(kind, "boom")),
            Outcome::retry(format!("SMTP submission failed ({kind:?}): boom"))
        );
    }
    assert_eq!(
        outcome_of(transport_error(
            TransportErrorKind::Refused,
            "host not allowed"
        )),
        Outcome::provider_failure("SMTP submission refused by the host: host not allowed")
    );
    assert_eq!(
        outcome_of(http_response(200, &[], "")),
        Outcome::provider_failure(
            "SMTP submission: got an HTTP response to an SMTP request (host bug)"
        )
    );
}

#[test]
fn other_channels_fail_over() {
    let mut d = delivery();
    d.message.content = Content::Sms(SmsContent {
        from: None,
        body: "YES".into(),
        media_urls: vec![],
    });
    assert_eq!(
        done(new(base()).unwrap().begin(&d)),
        Outcome::provider_failure("smtp delivers email only, not sms (check [routes])")
    );
}

#[test]
fn message_id_is_safe() {
    let smtp = new(base()).unwrap();
    assert_eq!(smtp.message_id("01ABC"), "<01ABC@example.com>");
    assert_eq!(smtp.message_id("a b>c@d"), "<a-b-c-d@example.com>");
}

#[test]
fn debug_never_shows_the_password() {
    let smtp = new(base()).unwrap();
    let debug = format!("{smtp:?} {:#?}", smtp);
    assert!(!debug.contains("p4ss"), "{debug}");
    assert!(
        debug.contains("herald@example.com") && debug.contains("***"),
        "{debug}"
    );
}

#[test]
fn manifest_states_the_contract() {
    let m = Smtp::manifest();
    assert_eq!(m.name, "smtp");
    assert_eq!(m.channels, [Channel::Email]);
    assert!(!m.idempotent && !m.webhooks);
    assert_eq!(secret_keys(&m), ["password"]);
    assert_eq!(required_keys(&m), ["host", "from"]);
}

#[test]
fn config_errors_name_the_key_and_the_fix() {
    let cases = [
        (json!({"from": "a@example.com"}), "missing field `host`"),
        (json!({"host": "smtp.example.com"}), "missing field `from`"),
        (
            with(base(), json!({"timeout": "30s"})),
            "unknown field `timeout`",
        ),
        (
            with(base(), json!({"host": ""})),
            "provider \"mail\": host is empty",
        ),
        (
            with(base(), json!({"host": "smtps://smtp.example.com"})),
            "host must be a host name such as smtp.example.com, not a URL",
        ),
        (
            with(base(), json!({"host": "smtp.example.com:465"})),
            "host must not include a port, got \"smtp.example.com:465\"; set port = <number>",
        ),
        (
            with(base(), json!({"host": "smtp example.com"})),
            "host must be a host name such as smtp.example.com or an IP address",
        ),
        (
            with(base(), json!({"port": 0})),
            "port must be 1-65535 (usually 587 or 465), got 0",
        ),
        (
            with(base(), json!({"port": 70000})),
            "port must be 1-65535 (usually 587 or 465), got 70000",
        ),
        (
            with(base(), json!({"tls": "ssl"})),
            "tls must be \"starttls\", \"implicit\" or \"none\", got \"ssl\"",
        ),
        (
            with(base(), json!({"from": "not-an-address"})),
            "provider \"mail\": `from` is not a valid sender (from: \"not-an-address\" is not \
             an email address (expected local@domain)); expected \"addr@domain\" or \
             \"Name <addr@domain>\"",
        ),
        (
            with(base(), json!({"message_id_domain": "bad domain"})),
            "message_id_domain must be a domain such as example.com, got \"bad domain\"",
        ),
        (
            with(base(), json!({"request_timeout": "30"})),
            "provider \"mail\": request_timeout must be a duration such as \"10s\", \"500ms\" \
             or \"2m\", got \"30\"",
        ),
        (
            json!({"host": "h.example.com", "from": "a@example.com", "username": "u"}),
            "username is set but password is not; add password = \"${SMTP_PASSWORD}\"",
        ),
        (
            json!({"host": "h.example.com", "from": "a@example.com", "password": "p4ss-x"}),
            "password is set but username is not",
        ),
        (with(base(), json!({"password": ""})), "password is empty"),
        (with(base(), json!({"username": " "})), "username is empty"),
    ];
    for (settings, want) in cases {
        match new(settings.clone()) {
            Ok(_) => panic!("{settings} was accepted; expected {want:?}"),
            Err(e) => {
                assert!(
                    e.message.contains(want),
                    "{settings}: {:?} does not contain {want:?}",
                    e.message
                );
                assert!(!e.message.contains("p4ss"), "{}", e.message);
            }
        }
    }
}
