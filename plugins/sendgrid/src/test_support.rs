//! Test fixtures: sample messages, provider construction, an HTTP response builder, and
//! `render`, the stable text form of a request that the expect-test snapshots compare.

use std::collections::BTreeMap;

use herald_plugin_api::{
    Attachment, Content, Delivery, EmailContent, Host, HttpRequest, HttpResponse, Logger, Message,
    Provider, ProviderConfig, TransportResponse,
};
use serde_json::Value;

use crate::SendGrid;

pub(crate) const API_KEY: &str = "SG.test_key.0123456789";
/// The Signed Event Webhook test-vector key from providers.md §2.
pub(crate) const VECTOR_PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==";
pub(crate) const MESSAGE_ID: &str = "01HZY8N3W4Q6K2M5P7R9T1V3X5";
/// 2025-01-01T00:00:00Z.
pub(crate) const NOW: u64 = 1_735_689_600_000;

pub(crate) fn provider_config(settings: Value) -> ProviderConfig {
    let Value::Object(settings) = settings else {
        panic!("settings must be an object")
    };
    ProviderConfig {
        name: "sendgrid-main".into(),
        settings,
        webhook_url: Some("https://hooks.example.com/webhooks/sendgrid-main".into()),
    }
}

pub(crate) fn sendgrid(settings: Value) -> SendGrid {
    SendGrid::new(
        provider_config(settings),
        Host {
            log: Logger::discard(),
        },
    )
    .unwrap()
}

pub(crate) fn delivery(message: Message) -> Delivery {
    Delivery {
        message,
        attempt: 1,
        now: NOW,
    }
}

pub(crate) fn email_message() -> Message {
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

pub(crate) fn html_message() -> Message {
    let mut m = email_message();
    if let Content::Email(e) = &mut m.content {
        e.html = Some("<p>Join us on <b>June 1st</b>.</p>".into());
    }
    m
}

pub(crate) fn attachment_message() -> Message {
    let mut m = email_message();
    if let Content::Email(e) = &mut m.content {
        e.attachments = vec![Attachment {
            filename: "menu.pdf".into(),
            content_type: None,
            content: "JVBERi0xLjQK".into(),
        }];
    }
    m
}

pub(crate) fn reply_to_message() -> Message {
    let mut m = email_message();
    if let Content::Email(e) = &mut m.content {
        e.reply_to = Some("Planner <planner@example.com>".into());
    }
    m
}

pub(crate) fn tagged_message() -> Message {
    let mut m = email_message();
    m.tags = vec!["rsvp".into(), "event:wedding-2025".into()];
    m
}

/// Every field Herald has.
pub(crate) fn full_message() -> Message {
    let mut headers = BTreeMap::new();
    headers.insert("X-Campaign".into(), "spring".into());
    headers.insert(
        "List-Unsubscribe".into(),
        "<mailto:unsub@example.com>".into(),
    );
    Message {
        id: MESSAGE_ID.into(),
        to: "Guest One <guest@example.org>".into(),
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
        tags: vec!["rsvp".into(), "event:wedding-2025".into(), "rsvp".into()],
        created_at: NOW - 1000,
    }
}

pub(crate) fn http(status: u16, headers: &[(&str, &str)], body: &str) -> TransportResponse {
    TransportResponse::Http(HttpResponse {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        body: body.into(),
    })
}

/// A request as text: method and URL, one line per header, the timeout, then the body
/// pretty-printed *in wire order* (not re-sorted), so a snapshot shows exactly what is sent.
pub(crate) fn render(r: &HttpRequest) -> String {
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
