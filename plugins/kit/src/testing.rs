//! Test fixtures for the plugins' unit tests (feature `testing`; plugins enable it in
//! `[dev-dependencies]` only): provider configs and hosts (quiet or recording the log),
//! canned transport answers, the request or outcome a `Step` holds, outcome classes for
//! answer tables, a manifest's secret and required keys, webhook requests, sample email
//! messages, and [`render_json_request`], the stable text form of a JSON request that
//! expect-test snapshots compare.
//!
//! Helpers panic on what a test did not expect: that is how a test fails.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use herald_plugin_api::{
    Attachment, ConfigKey, Content, Delivery, EmailContent, Host, HttpRequest, HttpResponse,
    Logger, Manifest, Message, Outcome, ProviderConfig, Request, SmtpReply, Step, TransportError,
    TransportErrorKind, TransportResponse, UnixMillis, WebhookError, WebhookRequest,
};
use serde_json::Value;

/// 2025-01-01T00:00:00Z: `now` of [`delivery`] and the base of the sample messages.
pub const NOW: UnixMillis = 1_735_689_600_000;
/// The Herald id of the sample messages.
pub const MESSAGE_ID: &str = "01HZY8N3W4Q6K2M5P7R9T1V3X5";

/// The `[[providers]]` entry `name` with `settings` (a JSON object), as the host hands it
/// to `Provider::new`.
pub fn provider_config(name: &str, settings: Value, webhook_url: Option<&str>) -> ProviderConfig {
    let Value::Object(settings) = settings else {
        panic!("settings must be an object")
    };
    ProviderConfig {
        name: name.into(),
        settings,
        webhook_url: webhook_url.map(Into::into),
    }
}

/// A host whose log goes nowhere.
pub fn quiet_host() -> Host {
    Host {
        log: Logger::discard(),
    }
}

/// The lines a [`recording_host`] logged, each `"<Level> <line>"` (`Warn key_id ...`).
pub type LogLines = Arc<Mutex<Vec<String>>>;

/// A host whose log lines are kept, for tests of what a plugin tells the operator.
pub fn recording_host() -> (Host, LogLines) {
    let lines = LogLines::default();
    let sink = Arc::clone(&lines);
    let host = Host {
        log: Logger::from_fn(move |level, line| {
            if let Ok(mut lines) = sink.lock() {
                lines.push(format!("{level:?} {line}"));
            }
        }),
    };
    (host, lines)
}

/// An HTTP answer.
pub fn http_response(status: u16, headers: &[(&str, &str)], body: &str) -> TransportResponse {
    TransportResponse::Http(HttpResponse {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        body: body.into(),
    })
}

/// An SMTP server's final reply.
pub fn smtp_reply(code: u16, enhanced: Option<&str>, message: &str) -> TransportResponse {
    TransportResponse::Smtp(SmtpReply {
        code,
        enhanced: enhanced.map(Into::into),
        message: message.into(),
    })
}

/// The transport error kinds that are worth a retry (all but `Refused`).
pub const RETRYABLE_KINDS: [TransportErrorKind; 4] = [
    TransportErrorKind::Timeout,
    TransportErrorKind::Connect,
    TransportErrorKind::Tls,
    TransportErrorKind::Io,
];

/// A transport error in place of an answer.
pub fn transport_error(kind: TransportErrorKind, message: &str) -> TransportResponse {
    TransportResponse::Error(TransportError {
        kind,
        message: message.into(),
    })
}

/// The HTTP request a step asks the host to make.
pub fn http_call(step: Step) -> HttpRequest {
    match step {
        Step::Call {
            request: Request::Http(r),
            ..
        } => r,
        other => panic!("expected an HTTP call, got {other:?}"),
    }
}

/// The outcome a final step holds.
pub fn done(step: Step) -> Outcome {
    match step {
        Step::Done { outcome } => outcome,
        other => panic!("expected a final outcome, got {other:?}"),
    }
}

/// A webhook request as the host hands it to `Provider::webhook`.
pub fn webhook_request(url: &str, headers: &[(&str, &str)], body: &str) -> WebhookRequest {
    WebhookRequest {
        method: "POST".into(),
        url: url.into(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        body: body.into(),
    }
}

/// The message of an `Unauthorized` webhook refusal.
pub fn unauthorized(result: Result<impl Debug, WebhookError>) -> String {
    match result {
        Err(WebhookError::Unauthorized(m)) => m,
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

/// An outcome's class and flags, without its reason: a row of an answer table.
pub fn summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Accepted {
            provider_message_id,
            delivered,
        } => format!("accepted id={provider_message_id:?} delivered={delivered}"),
        Outcome::Retry {
            breaker, after_ms, ..
        } => format!("retry breaker={breaker} after={after_ms:?}"),
        Outcome::ProviderFailure { .. } => "provider_failure".into(),
        Outcome::Rejected {
            bounced, suppress, ..
        } => format!("rejected bounced={bounced} suppress={suppress}"),
    }
}

/// The class of an outcome for a table of API error answers: retry (with its hint and
/// breaker flag), provider failure, or rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Retry {
        after_ms: Option<u64>,
        breaker: bool,
    },
    ProviderFailure,
    Rejected,
}

/// `outcome`'s [`ErrorClass`]. Panics on an acceptance, and on a rejection that bounces or
/// suppresses: an API error is no bounce.
pub fn error_class(outcome: &Outcome) -> ErrorClass {
    match outcome {
        Outcome::Retry {
            after_ms, breaker, ..
        } => ErrorClass::Retry {
            after_ms: *after_ms,
            breaker: *breaker,
        },
        Outcome::ProviderFailure { .. } => ErrorClass::ProviderFailure,
        Outcome::Rejected {
            bounced, suppress, ..
        } => {
            assert!(
                !bounced && !suppress,
                "an API error is no bounce: {outcome:?}"
            );
            ErrorClass::Rejected
        }
        Outcome::Accepted { .. } => panic!("unexpected {outcome:?}"),
    }
}

/// The names of the manifest's secret config keys, in order.
pub fn secret_keys(manifest: &Manifest) -> Vec<&str> {
    keys_where(manifest, |k| k.secret)
}

/// The names of the manifest's required config keys, in order.
pub fn required_keys(manifest: &Manifest) -> Vec<&str> {
    keys_where(manifest, |k| k.required)
}

fn keys_where(manifest: &Manifest, pick: impl Fn(&ConfigKey) -> bool) -> Vec<&str> {
    manifest
        .config
        .iter()
        .filter(|k| pick(k))
        .map(|k| k.name.as_str())
        .collect()
}

/// `message`'s first attempt at [`NOW`].
pub fn delivery(message: Message) -> Delivery {
    Delivery {
        message,
        attempt: 1,
        now: NOW,
    }
}

/// A text-only email to `guest@example.org`, without sender or tags.
pub fn email_message() -> Message {
    Message {
        id: MESSAGE_ID.into(),
        to: "guest@example.org".into(),
        content: Content::Email(EmailContent {
            subject: "You're invited".into(),
            text: Some("Join us on June 1st.".into()),
            ..Default::default()
        }),
        tags: vec![],
        created_at: NOW - 1000,
    }
}

/// [`email_message`] with `edit` applied to its email content.
fn edited(edit: impl FnOnce(&mut EmailContent)) -> Message {
    let mut m = email_message();
    if let Content::Email(e) = &mut m.content {
        edit(e);
    }
    m
}

/// [`email_message`] with an HTML part too.
pub fn html_message() -> Message {
    edited(|e| e.html = Some("<p>Join us on <b>June 1st</b>.</p>".into()))
}

/// [`email_message`] with a PDF attachment (no content type).
pub fn attachment_message() -> Message {
    edited(|e| {
        e.attachments = vec![Attachment {
            filename: "menu.pdf".into(),
            content_type: None,
            content: "JVBERi0xLjQK".into(),
        }];
    })
}

/// [`email_message`] with a reply-to address.
pub fn reply_to_message() -> Message {
    edited(|e| e.reply_to = Some("Planner <planner@example.com>".into()))
}

/// [`email_message`] with two tags.
pub fn tagged_message() -> Message {
    let mut m = email_message();
    m.tags = vec!["rsvp".into(), "event:wedding-2025".into()];
    m
}

/// An email with every field Herald has (sender with specials, both bodies, reply-to, two
/// headers, an attachment with a content type, three tags).
pub fn full_message() -> Message {
    let mut headers = BTreeMap::new();
    headers.insert("X-Campaign".into(), "spring".into());
    headers.insert(
        "List-Unsubscribe".into(),
        "<mailto:unsub@example.com>".into(),
    );
    Message {
        id: MESSAGE_ID.into(),
        to: "guest@example.org".into(),
        content: Content::Email(EmailContent {
            from: Some("Ann & Bo <ann@example.com>".into()),
            subject: "You're invited".into(),
            text: Some("Join us on June 1st.".into()),
            html: Some("<p>Join us on <b>June 1st</b>.</p>".into()),
            reply_to: Some("rsvp@example.com".into()),
            headers,
            attachments: vec![Attachment {
                filename: "invite.ics".into(),
                content_type: Some("text/calendar".into()),
                content: "QkVHSU46VkNBTEVOREFS".into(),
            }],
        }),
        tags: vec![
            "rsvp".into(),
            "event:wedding-2025".into(),
            "guest list=family A".into(),
        ],
        created_at: NOW - 1000,
    }
}

/// A request as text: method and URL, one line per header, the timeout, then the JSON
/// body pretty-printed *in wire order* (not re-sorted), so a snapshot shows exactly what is
/// sent.
pub fn render_json_request(r: &HttpRequest) -> String {
    let mut out = format!("{} {}\n", r.method, r.url);
    for (name, value) in &r.headers {
        out.push_str(&format!("{name}: {value}\n"));
    }
    out.push_str(&format!("timeout_ms: {:?}\n", r.timeout_ms));
    out.push_str(&pretty_in_order(&r.body));
    out
}

/// Pretty-prints compact JSON without parsing it into a (possibly re-ordered) map.
fn pretty_in_order(json: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                if matches!(chars.peek(), Some('}' | ']')) {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_in_order_keeps_wire_order_and_strings() {
        let json = r#"{"b":1,"a":[],"s":"x,{\"y\":[1]}","n":{"k":[1,{}]}}"#;
        assert_eq!(
            pretty_in_order(json),
            "{\n  \"b\": 1,\n  \"a\": [],\n  \"s\": \"x,{\\\"y\\\":[1]}\",\n  \"n\": {\n    \
             \"k\": [\n      1,\n      {}\n    ]\n  }\n}"
        );
    }

    #[test]
    fn recording_host_keeps_level_and_line() {
        let (host, lines) = recording_host();
        host.log.warn("careful");
        host.log.info(String::from("done"));
        assert_eq!(*lines.lock().unwrap(), ["Warn careful", "Info done"]);
    }

    #[test]
    fn render_shows_what_is_sent() {
        let mut r = HttpRequest::new("POST", "https://api.example.com/x")
            .header("content-type", "application/json");
        r.body = r#"{"a":1}"#.into();
        assert_eq!(
            render_json_request(&r),
            "POST https://api.example.com/x\ncontent-type: application/json\ntimeout_ms: \
             None\n{\n  \"a\": 1\n}"
        );
    }
}
