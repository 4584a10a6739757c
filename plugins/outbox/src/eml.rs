//! Renders an email message as an RFC 5322 / MIME file (`.eml`) that a mail client can
//! open: headers (non-ASCII as RFC 2047 encoded words), a text and/or html body
//! (`multipart/alternative` when both), attachments (`multipart/mixed`), CRLF line ends.
//!
//! It is a faithful preview, not a submission-grade MIME builder: it does no I/O, and it
//! assumes content the daemon has validated (no line breaks in headers; standard base64
//! attachments), though it still strips stray line breaks from header values.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald_plugin_api::{Attachment, EmailContent, Message, UnixMillis, is_reserved_email_header};

/// Sender shown when the message names none (the outbox has no configured sender).
const DEFAULT_FROM: &str = "Herald outbox <outbox@herald.invalid>";

/// One MIME entity: its headers and its already-encoded body (ending in CRLF).
struct Part {
    headers: Vec<(String, String)>,
    body: String,
}

impl Part {
    fn write(&self, out: &mut String) {
        for (name, value) in &self.headers {
            header(out, name, value);
        }
        out.push_str("\r\n");
        out.push_str(&self.body);
    }
}

/// The whole `.eml` file for `message`.
pub(crate) fn render(message: &Message, email: &EmailContent) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "From",
        &mailbox(email.from.as_deref().unwrap_or(DEFAULT_FROM)),
    );
    header(&mut out, "To", &mailbox(&message.to));
    if let Some(reply_to) = &email.reply_to {
        header(&mut out, "Reply-To", &mailbox(reply_to));
    }
    header(&mut out, "Subject", &unstructured(&email.subject));
    header(&mut out, "Date", &rfc5322_date(message.created_at));
    header(
        &mut out,
        "Message-ID",
        &format!("<{}@outbox.herald.invalid>", message.id),
    );
    header(&mut out, "X-Herald-Id", &message.id);
    if !message.tags.is_empty() {
        header(
            &mut out,
            "X-Herald-Tags",
            &unstructured(&message.tags.join(", ")),
        );
    }
    for (name, value) in &email.headers {
        // Accept refuses reserved names; a message stored by an older daemon may have them.
        if is_header_name(name) && !is_reserved_email_header(name) {
            header(&mut out, name, &unstructured(value));
        }
    }
    header(&mut out, "MIME-Version", "1.0");
    body(message, email).write(&mut out);
    out
}

fn body(message: &Message, email: &EmailContent) -> Part {
    let mut alternatives = Vec::new();
    if let Some(text) = &email.text {
        alternatives.push(text_part("text/plain", text));
    }
    if let Some(html) = &email.html {
        alternatives.push(text_part("text/html", html));
    }
    let main = match alternatives.len() {
        0 => text_part("text/plain", ""),
        1 => alternatives.remove(0),
        _ => multipart(
            "alternative",
            format!("herald-alt-{}", message.id),
            alternatives,
        ),
    };
    if email.attachments.is_empty() {
        return main;
    }
    let mut parts = vec![main];
    parts.extend(email.attachments.iter().map(attachment_part));
    multipart("mixed", format!("herald-mixed-{}", message.id), parts)
}

fn multipart(subtype: &str, boundary: String, parts: Vec<Part>) -> Part {
    let mut body = String::new();
    for part in parts {
        body.push_str(&format!("--{boundary}\r\n"));
        part.write(&mut body);
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    Part {
        headers: vec![(
            "Content-Type".into(),
            format!("multipart/{subtype}; boundary=\"{boundary}\""),
        )],
        body,
    }
}

/// 7bit when the text is ASCII with short lines, base64 otherwise.
fn text_part(content_type: &str, text: &str) -> Part {
    let seven_bit = text.is_ascii() && text.lines().all(|l| l.len() <= 998);
    let (encoding, body) = if seven_bit {
        let mut body = text.replace("\r\n", "\n").replace('\n', "\r\n");
        if !body.ends_with("\r\n") {
            body.push_str("\r\n");
        }
        ("7bit", body)
    } else {
        ("base64", wrap76(&STANDARD.encode(text)))
    };
    Part {
        headers: vec![
            (
                "Content-Type".into(),
                format!("{content_type}; charset=utf-8"),
            ),
            ("Content-Transfer-Encoding".into(), encoding.into()),
        ],
        body,
    }
}

fn attachment_part(a: &Attachment) -> Part {
    let content_type = a
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let content: String = a.content.chars().filter(|c| !c.is_whitespace()).collect();
    Part {
        headers: vec![
            (
                "Content-Type".into(),
                format!("{content_type}; {}", parameter("name", &a.filename)),
            ),
            (
                "Content-Disposition".into(),
                format!("attachment; {}", parameter("filename", &a.filename)),
            ),
            ("Content-Transfer-Encoding".into(), "base64".into()),
        ],
        body: wrap76(&content),
    }
}

/// `name="value"`, or the RFC 2231 form `name*=utf-8''%..` for anything else.
fn parameter(name: &str, value: &str) -> String {
    let plain = value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if plain {
        return format!("{name}=\"{value}\"");
    }
    let mut encoded = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{name}*=utf-8''{encoded}")
}

fn wrap76(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 38 + 2);
    for chunk in s.as_bytes().chunks(76) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push_str("\r\n");
    }
    out
}

/// Writes one header line; `value` is already encoded (see [`unstructured`], [`mailbox`]).
fn header(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    out.push_str(value);
    out.push_str("\r\n");
}

fn single_line(value: &str) -> String {
    value.replace(['\r', '\n'], " ")
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// An unstructured header value: as is when ASCII, else RFC 2047 encoded words.
fn unstructured(value: &str) -> String {
    let value = single_line(value);
    if value.is_ascii() {
        value
    } else {
        encoded_words(&value)
    }
}

/// `Display Name <addr>` with a non-ASCII display name encoded; anything else as is.
fn mailbox(value: &str) -> String {
    let value = single_line(value);
    let value = value.trim();
    match value.rfind('<') {
        Some(open) if !value.is_ascii() && value.ends_with('>') => {
            let display = value[..open].trim().trim_matches('"');
            format!("{} {}", encoded_words(display), &value[open..])
        }
        _ => value.to_string(),
    }
}

/// `=?utf-8?B?..?=` words of at most 39 bytes of text each (64 characters encoded, within
/// RFC 2047's 75 and leaving room for a header name within 78), split on character
/// boundaries and folded onto continuation lines.
fn encoded_words(value: &str) -> String {
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in value.chars() {
        if chunk.len() + c.len_utf8() > 39 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| format!("=?utf-8?B?{}?=", STANDARD.encode(w)))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// `Tue, 14 Nov 2023 22:13:20 +0000`.
fn rfc5322_date(at: UnixMillis) -> String {
    let http = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(at));
    match http.strip_suffix(" GMT") {
        Some(rest) => format!("{rest} +0000"),
        None => http,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use herald_plugin_api::Content;
    use std::collections::BTreeMap;

    fn message(email: EmailContent) -> (Message, EmailContent) {
        (
            Message {
                id: "01EML".into(),
                to: "Zoë Brontë <zoe@example.com>".into(),
                content: Content::Email(email.clone()),
                tags: vec!["rsvp".into()],
                created_at: 1_700_000_000_000,
            },
            email,
        )
    }

    #[test]
    fn text_only_message() {
        let (m, e) = message(EmailContent {
            from: Some("Weddings <hello@example.org>".into()),
            subject: "Hello".into(),
            text: Some("line one\nline two".into()),
            headers: BTreeMap::from([
                (
                    "List-Unsubscribe".to_string(),
                    "<https://x.io/u>".to_string(),
                ),
                ("Message-ID".to_string(), "<spoof@x.io>".to_string()),
            ]),
            ..Default::default()
        });
        let eml = render(&m, &e);
        assert_eq!(
            eml,
            "From: Weddings <hello@example.org>\r\n\
             To: =?utf-8?B?Wm/DqyBCcm9udMOr?= <zoe@example.com>\r\n\
             Subject: Hello\r\n\
             Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
             Message-ID: <01EML@outbox.herald.invalid>\r\n\
             X-Herald-Id: 01EML\r\n\
             X-Herald-Tags: rsvp\r\n\
             List-Unsubscribe: <https://x.io/u>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 7bit\r\n\
             \r\n\
             line one\r\n\
             line two\r\n"
        );
    }

    #[test]
    fn alternative_and_attachments_with_non_ascii() {
        let subject = "Réponse attendue avant le 1er juin — merci beaucoup à tous";
        let (m, e) = message(EmailContent {
            subject: subject.into(),
            text: Some("Merci à vous".into()),
            html: Some("<p>Hi</p>".into()),
            attachments: vec![Attachment {
                filename: "plan d'accès.pdf".into(),
                content_type: Some("application/pdf".into()),
                content: STANDARD.encode([7u8; 100]),
            }],
            ..Default::default()
        });
        let eml = render(&m, &e);
        // Only CRLF line ends, no line longer than 78 characters.
        assert!(!eml.replace("\r\n", "").contains(['\r', '\n']));
        assert!(eml.split("\r\n").all(|l| l.len() <= 78), "{eml}");
        // The subject decodes back.
        let start = eml.find("Subject: ").unwrap() + 9;
        let end = start + eml[start..].find("\r\nDate:").unwrap();
        let decoded: String = eml[start..end]
            .split("\r\n ")
            .map(|w| {
                let b64 = w
                    .strip_prefix("=?utf-8?B?")
                    .unwrap()
                    .strip_suffix("?=")
                    .unwrap();
                String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap()
            })
            .collect();
        assert_eq!(decoded, subject);
        assert!(
            eml.contains(
                "Content-Type: multipart/mixed; boundary=\"herald-mixed-01EML\"\r\n\r\n\
             --herald-mixed-01EML\r\n\
             Content-Type: multipart/alternative; boundary=\"herald-alt-01EML\"\r\n\r\n\
             --herald-alt-01EML\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n\
             TWVyY2kgw6Agdm91cw==\r\n\
             --herald-alt-01EML\r\n\
             Content-Type: text/html; charset=utf-8\r\n\
             Content-Transfer-Encoding: 7bit\r\n\r\n\
             <p>Hi</p>\r\n\
             --herald-alt-01EML--\r\n\
             --herald-mixed-01EML\r\n\
             Content-Type: application/pdf; name*=utf-8''plan%20d%27acc%C3%A8s.pdf\r\n\
             Content-Disposition: attachment; filename*=utf-8''plan%20d%27acc%C3%A8s.pdf\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n"
            ),
            "{eml}"
        );
        assert!(eml.ends_with("\r\n--herald-mixed-01EML--\r\n"), "{eml}");
    }
}
