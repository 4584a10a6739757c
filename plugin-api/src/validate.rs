//! Validation of what a client asks Herald to send, before anything is stored: recipients,
//! per-channel content, and the one rule for every field that ends up in a header or on
//! one line ([`check_one_line`]).
//!
//! Errors name the field by its path in the send request, as a client wrote it: `to`,
//! `content.email.subject`, `content.email.headers["X-Campaign"]`,
//! `content.email.attachments[0].content_type`, `content.sms.media_urls[2]`, `tags[3]`.
//!
//! Owns: the structural rules every provider relies on (no header injection, well-formed
//! addresses and numbers). Must not: know configuration (sizes, routes and queue limits
//! are the daemon's).

use std::fmt;

use crate::types::{Channel, Content};

/// A field of a message that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// The field's path in the send request, e.g. `content.email.attachments[0].filename`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidField {}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether `c` may not appear in a one-line field: every C0 control (TAB, CR and LF
/// included), DEL, every C1 control (NEL included), and the Unicode line and paragraph
/// separators U+2028 / U+2029, which some mail and push clients render as line breaks.
pub fn breaks_a_line(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

fn describe(c: char) -> String {
    match c {
        '\r' => "a carriage return (CR)".into(),
        '\n' => "a line feed (LF)".into(),
        '\t' => "a tab".into(),
        '\0' => "a NUL character".into(),
        '\u{7f}' => "a DEL character".into(),
        '\u{85}' => "a next-line character (NEL, U+0085)".into(),
        '\u{2028}' => "a line separator (U+2028)".into(),
        '\u{2029}' => "a paragraph separator (U+2029)".into(),
        c => format!("the control character U+{:04X}", c as u32),
    }
}

/// The one rule for header-like and one-line fields (subjects, display names, content
/// types, file names, header names and values, tags, idempotency keys, push titles...):
/// no character for which [`breaks_a_line`] holds. A line break there would let a value
/// start a header of its own (header injection); other controls are never meant.
pub fn check_one_line(field: &str, value: &str) -> Result<(), InvalidField> {
    match value.char_indices().find(|(_, c)| breaks_a_line(*c)) {
        None => Ok(()),
        Some((at, c)) => Err(invalid(
            field,
            format!(
                "must be a single line without control characters, but has {} at byte {at}",
                describe(c)
            ),
        )),
    }
}

/// The rule for body text (email text and html, SMS and push bodies): line breaks and tabs
/// are fine, a NUL is not (SMTP forbids it and C-based provider stacks cut the text there).
pub fn check_body_text(field: &str, value: &str) -> Result<(), InvalidField> {
    match value.find('\0') {
        None => Ok(()),
        Some(at) => Err(invalid(
            field,
            format!("must not contain a NUL character (found at byte {at})"),
        )),
    }
}

/// Checks that `to` is a well-formed recipient for `channel`.
pub fn validate_recipient(channel: Channel, to: &str) -> Result<(), InvalidField> {
    match channel {
        Channel::Email => validate_email_address("to", to),
        Channel::Sms => validate_e164("to", to),
        Channel::Push => validate_device_token(to),
    }
}

/// Extracts the bare address from `addr@domain` or `Display Name <addr@domain>`.
pub fn email_address_part(s: &str) -> &str {
    let s = s.trim();
    match (s.rfind('<'), s.ends_with('>')) {
        (Some(open), true) => &s[open + 1..s.len() - 1],
        _ => s,
    }
}

/// Validates `addr@domain` or `Display Name <addr@domain>`. A display name with RFC 5322
/// specials (`,;:()<>[]@\"`) must be quoted: `"Shop, Inc." <shop@example.com>`; neither
/// part may hold a control character ([`check_one_line`]).
pub fn validate_email_address(field: &str, s: &str) -> Result<(), InvalidField> {
    check_one_line(field, s)?;
    let addr = email_address_part(s);
    let trimmed = s.trim();
    if let (Some(open), true) = (trimmed.rfind('<'), trimmed.ends_with('>')) {
        let name = trimmed[..open].trim();
        let quoted = name.len() >= 2 && name.starts_with('"') && name.ends_with('"');
        let ok = if quoted {
            let inner = &name[1..name.len() - 1];
            !inner.replace("\\\\", "").replace("\\\"", "").contains('"')
        } else {
            !name.contains([',', ';', ':', '(', ')', '<', '>', '[', ']', '@', '\\', '"'])
        };
        if !ok {
            return Err(invalid(
                field,
                format!(
                    "the display name {name:?} has a special character; quote it, e.g. \"{}\" <{addr}>",
                    name.trim_matches('"').replace('"', "")
                ),
            ));
        }
    }
    if addr.len() > 254 {
        return Err(invalid(field, "address is longer than 254 characters"));
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err(invalid(
            field,
            format!("{addr:?} is not an email address (expected local@domain)"),
        ));
    };
    if local.is_empty() || local.len() > 64 {
        return Err(invalid(
            field,
            format!("{addr:?}: the part before @ must be 1-64 characters"),
        ));
    }
    if local
        .chars()
        .any(|c| c.is_whitespace() || "@<>()[],;:\\\"".contains(c))
    {
        return Err(invalid(
            field,
            format!("{addr:?}: the part before @ has a character not allowed in an address"),
        ));
    }
    // A dot-atom (RFC 5322 3.4.1; quoted local parts are refused above): no empty part.
    if local.split('.').any(str::is_empty) {
        return Err(invalid(
            field,
            format!(
                "{addr:?}: the part before @ may not start or end with a dot or have two in a row"
            ),
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    if !domain_ok {
        return Err(invalid(
            field,
            format!("{addr:?}: {domain:?} is not a valid domain (expected e.g. example.com)"),
        ));
    }
    Ok(())
}

/// Validates an E.164 phone number: `+`, a non-zero digit, 7 to 14 more digits.
pub fn validate_e164(field: &str, s: &str) -> Result<(), InvalidField> {
    let digits = s.strip_prefix('+').unwrap_or("");
    let ok = digits.len() >= 8
        && digits.len() <= 15
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{:?} is not an E.164 phone number (expected e.g. +14155550100)",
                clip(s)
            ),
        ))
    }
}

/// At most 64 characters of a refused value, for an error message (the value may be as
/// large as a frame).
fn clip(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// A push recipient is one device token exactly as the app's push SDK returned it: an FCM
/// registration token (for the `fcm` plugin) or an APNs device token, hex (for `apns`).
/// Herald reads no provider prefix from it — the channel's route decides the provider — so
/// a `fcm:` or `apns:` prefix (which neither service's tokens can start with) is refused
/// rather than sent on to fail there.
fn validate_device_token(s: &str) -> Result<(), InvalidField> {
    if let Some((prefix, _)) = s.split_once(':')
        && ["fcm", "apns"]
            .iter()
            .any(|p| p.eq_ignore_ascii_case(prefix))
    {
        return Err(invalid(
            "to",
            format!(
                "remove the \"{prefix}:\" prefix: a device token is sent as the app's push SDK \
                 returned it, and the push route (not the token) chooses the provider"
            ),
        ));
    }
    if s.len() < 8 || s.len() > 4096 {
        return Err(invalid("to", "a device token must be 8-4096 characters"));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "to",
            "a device token must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// Email headers a message may not set in `headers`: the message's own fields, the MIME
/// structure and the envelope are written by the plugins, and Herald's own `X-Herald-*`
/// headers identify the message. (Refused at accept, so every provider treats a message
/// alike instead of one dropping the header and another refusing the request.)
pub const RESERVED_EMAIL_HEADERS: [&str; 15] = [
    "from",
    "sender",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "return-path",
    "x-herald-id",
    "x-herald-tags",
];

/// Whether `name` is one of [`RESERVED_EMAIL_HEADERS`] (case-insensitive).
pub fn is_reserved_email_header(name: &str) -> bool {
    RESERVED_EMAIL_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
}

/// The longest header name a message may set (real ones are a few dozen characters; the
/// name appears in error fields, which must stay short).
pub const MAX_HEADER_NAME: usize = 128;

/// An RFC 2045 token: printable ASCII without spaces and `()<>@,;:\"/[]?=`.
fn is_mime_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// `type/subtype`, optionally followed by `; parameters` (e.g. `text/calendar; method=REQUEST`).
fn is_mime_type(s: &str) -> bool {
    let essence = s.split(';').next().unwrap_or("").trim();
    essence
        .split_once('/')
        .is_some_and(|(t, sub)| is_mime_token(t) && is_mime_token(sub))
}

/// Structural checks of content that do not depend on configuration (sizes are the
/// daemon's business).
pub fn validate_content(content: &Content) -> Result<(), InvalidField> {
    match content {
        Content::Email(e) => {
            let at = |f: &str| format!("content.email.{f}");
            check_one_line(&at("subject"), &e.subject)?;
            if e.subject.trim().is_empty() {
                return Err(invalid(at("subject"), "an email needs a non-empty subject"));
            }
            let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
            if empty(&e.text) && empty(&e.html) {
                return Err(invalid(at("text"), "an email needs a text or an html body"));
            }
            if let Some(text) = &e.text {
                check_body_text(&at("text"), text)?;
            }
            if let Some(html) = &e.html {
                check_body_text(&at("html"), html)?;
            }
            if let Some(from) = &e.from {
                validate_email_address(&at("from"), from)?;
            }
            if let Some(reply_to) = &e.reply_to {
                validate_email_address(&at("reply_to"), reply_to)?;
            }
            for (name, value) in &e.headers {
                let name_ok = (1..=MAX_HEADER_NAME).contains(&name.len())
                    && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
                if !name_ok {
                    return Err(invalid(
                        at("headers"),
                        format!(
                            "header name {:?} must be 1-{MAX_HEADER_NAME} printable ASCII \
                             characters without spaces or ':'",
                            clip(name)
                        ),
                    ));
                }
                let field = format!("content.email.headers[{name:?}]");
                if is_reserved_email_header(name) {
                    return Err(invalid(
                        field,
                        format!(
                            "header {name:?} is written by Herald; set the message's from, \
                             reply_to or subject instead, or leave it out"
                        ),
                    ));
                }
                check_one_line(&field, value)?;
            }
            for (i, a) in e.attachments.iter().enumerate() {
                let at = |f: &str| format!("content.email.attachments[{i}].{f}");
                check_one_line(&at("filename"), &a.filename)?;
                if a.filename.is_empty() || a.filename.contains(['/', '\\']) {
                    return Err(invalid(
                        at("filename"),
                        format!(
                            "attachment filename {:?} is not a plain file name",
                            clip(&a.filename)
                        ),
                    ));
                }
                if let Some(ct) = &a.content_type {
                    check_one_line(&at("content_type"), ct)?;
                    if !is_mime_type(ct) {
                        return Err(invalid(
                            at("content_type"),
                            format!(
                                "{:?} is not a media type like \"application/pdf\" or \
                                 \"text/calendar; method=REQUEST\"",
                                clip(ct)
                            ),
                        ));
                    }
                }
                if !is_base64(&a.content) {
                    return Err(invalid(
                        at("content"),
                        format!(
                            "attachment {:?}: content must be standard base64",
                            clip(&a.filename)
                        ),
                    ));
                }
            }
        }
        Content::Sms(s) => {
            let at = |f: &str| format!("content.sms.{f}");
            if s.body.is_empty() && s.media_urls.is_empty() {
                return Err(invalid(at("body"), "an SMS needs a body or media"));
            }
            check_body_text(&at("body"), &s.body)?;
            if s.body.chars().count() > 1600 {
                return Err(invalid(
                    at("body"),
                    "an SMS body is at most 1600 characters",
                ));
            }
            if let Some(from) = &s.from {
                check_one_line(&at("from"), from)?;
                if !is_sms_sender(from) {
                    return Err(invalid(
                        at("from"),
                        format!(
                            "{:?} is neither an E.164 number, a short code nor an alphanumeric \
                             sender id",
                            clip(from)
                        ),
                    ));
                }
            }
            if s.media_urls.len() > 10 {
                return Err(invalid(at("media_urls"), "at most 10 media URLs"));
            }
            for (i, url) in s.media_urls.iter().enumerate() {
                let field = format!("content.sms.media_urls[{i}]");
                check_one_line(&field, url)?;
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(invalid(
                        field,
                        format!("{:?} is not an http(s) URL", clip(url)),
                    ));
                }
            }
        }
        Content::Push(p) => {
            let at = |f: &str| format!("content.push.{f}");
            let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
            if empty(&p.title) && empty(&p.body) && p.data.is_empty() {
                return Err(invalid(at("title"), "a push needs a title, a body or data"));
            }
            for (name, value) in [
                ("title", &p.title),
                ("sound", &p.sound),
                ("collapse_id", &p.collapse_id),
            ] {
                if let Some(v) = value {
                    check_one_line(&at(name), v)?;
                }
            }
            if let Some(body) = &p.body {
                check_body_text(&at("body"), body)?;
            }
            if p.collapse_id.as_ref().is_some_and(|id| id.len() > 64) {
                return Err(invalid(at("collapse_id"), "at most 64 bytes"));
            }
        }
    }
    Ok(())
}

/// An SMS sender: an E.164 number, a short code (3-8 digits) or an alphanumeric sender id
/// (1-11 letters, digits or spaces, at least one letter).
pub fn is_sms_sender(s: &str) -> bool {
    let short_code = (3..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let alphanumeric = (1..=11).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && s.bytes().any(|b| b.is_ascii_alphabetic());
    validate_e164("from", s).is_ok() || short_code || alphanumeric
}

fn is_base64(s: &str) -> bool {
    let trimmed = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - trimmed.len() <= 2
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Attachment, EmailContent, PushContent, SmsContent};

    #[test]
    fn device_tokens_carry_no_provider_prefix() {
        let fcm = "dK3x9QvTqE2mYz:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx";
        let apns = "a3f1c9e27b5d40886f2e1d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978";
        assert!(validate_recipient(Channel::Push, fcm).is_ok());
        assert!(validate_recipient(Channel::Push, apns).is_ok());
        for prefixed in [
            format!("fcm:{fcm}"),
            format!("apns:{apns}"),
            format!("APNS:{apns}"),
        ] {
            let err = validate_recipient(Channel::Push, &prefixed).unwrap_err();
            assert_eq!(err.field, "to");
            assert!(err.reason.contains("prefix"), "{}", err.reason);
        }
    }

    #[test]
    fn email_addresses() {
        assert!(validate_email_address("to", "a@example.com").is_ok());
        assert!(validate_email_address("to", "Ann Lee <ann.lee+rsvp@mail.example.org>").is_ok());
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@x.io",
            "a@-x.io",
            "a@@example.org",
            "a@b@example.org",
            ".a@example.org",
            "a.@example.org",
            "a..b@example.org",
        ] {
            let err = validate_email_address("to", bad).unwrap_err();
            assert_eq!(err.field, "to", "{bad}");
        }
        assert!(validate_email_address("to", "a@x.io\r\nBcc: evil@x.io").is_err());
        let err = validate_email_address("from", "Shop, Inc. <shop@example.com>").unwrap_err();
        assert!(err.reason.contains("quote"), "{err}");
        assert!(validate_email_address("from", "\"Shop, Inc.\" <shop@example.com>").is_ok());
        assert!(validate_email_address("from", "Ann B. Lee <ann@example.com>").is_ok());
        assert!(validate_email_address("from", "Ann (events) <ann@example.com>").is_err());
    }

    #[test]
    fn phone_numbers() {
        assert!(validate_e164("to", "+14155550100").is_ok());
        for bad in [
            "14155550100",
            "+0123456789",
            "+1415",
            "+1415555010012345",
            "+1 415 555",
        ] {
            assert!(validate_e164("to", bad).is_err(), "{bad}");
        }
        // A huge refused value is not echoed whole.
        let err = validate_e164("to", &"9".repeat(100_000)).unwrap_err();
        assert!(err.reason.len() < 200, "{}", err.reason.len());
    }

    #[test]
    fn one_line_rule() {
        assert!(check_one_line("f", "Ünïcödé — fine, even emoji 🎉").is_ok());
        for (bad, what) in [
            ("a\rb", "carriage return"),
            ("a\nb", "line feed"),
            ("a\tb", "tab"),
            ("a\0b", "NUL"),
            ("a\u{7f}b", "DEL"),
            ("a\u{85}b", "NEL"),
            ("a\u{9b}b", "U+009B"),
            ("a\u{1b}[31mb", "U+001B"),
            ("a\u{2028}b", "U+2028"),
            ("a\u{2029}b", "U+2029"),
        ] {
            let err = check_one_line("content.email.subject", bad).unwrap_err();
            assert_eq!(err.field, "content.email.subject");
            assert!(err.reason.contains(what), "{bad:?}: {}", err.reason);
            assert!(err.reason.contains("at byte 1"), "{bad:?}: {}", err.reason);
        }
        assert!(check_body_text("b", "line one\r\nline two\ttabbed\u{2028}").is_ok());
        assert!(check_body_text("b", "cut\0here").is_err());
    }

    fn email() -> EmailContent {
        EmailContent {
            subject: "Hi".into(),
            text: Some("x".into()),
            ..Default::default()
        }
    }

    fn field_of(content: Content) -> String {
        validate_content(&content).unwrap_err().field
    }

    #[test]
    fn every_header_like_field_refuses_control_characters() {
        let attachment = |filename: &str, content_type: Option<&str>| Attachment {
            filename: filename.into(),
            content_type: content_type.map(Into::into),
            content: "aGk=".into(),
        };
        type Mutate = fn(&mut EmailContent, &str);
        let email_cases: [(Mutate, &str); 9] = [
            (|e, v| e.subject = format!("Hi{v}"), "content.email.subject"),
            (
                |e, v| e.from = Some(format!("Ann{v}Lee <ann@example.com>")),
                "content.email.from",
            ),
            (
                |e, v| e.reply_to = Some(format!("rsvp@example.com{v}")),
                "content.email.reply_to",
            ),
            (
                |e, v| {
                    e.headers.insert("X-Campaign".into(), format!("june{v}"));
                },
                "content.email.headers[\"X-Campaign\"]",
            ),
            (
                |e, v| {
                    e.headers.insert(format!("X-Bad{v}"), "x".into());
                },
                "content.email.headers",
            ),
            (
                |e, v| {
                    e.attachments.push(Attachment {
                        filename: format!("a{v}.txt"),
                        content_type: None,
                        content: "aGk=".into(),
                    })
                },
                "content.email.attachments[0].filename",
            ),
            (
                |e, v| {
                    e.attachments.push(Attachment {
                        filename: "map.txt".into(),
                        content_type: Some(format!("text/plain{v}")),
                        content: "aGk=".into(),
                    })
                },
                "content.email.attachments[0].content_type",
            ),
            (
                |e, v| {
                    e.attachments.push(Attachment {
                        filename: "ok.txt".into(),
                        content_type: Some("text/plain".into()),
                        content: "aGk=".into(),
                    });
                    e.attachments.push(Attachment {
                        filename: "invite.ics".into(),
                        content_type: Some(format!("text/calendar{v}Bcc: x@evil.example")),
                        content: "aGk=".into(),
                    });
                },
                "content.email.attachments[1].content_type",
            ),
            (
                |e, v| e.text = Some(format!("body{v}")),
                "content.email.text (NUL only)",
            ),
        ];
        for bad in [
            "\r\n", "\n", "\r", "\t", "\0", "\u{7f}", "\u{85}", "\u{2028}", "\u{2029}",
        ] {
            for (mutate, field) in email_cases {
                let mut e = email();
                mutate(&mut e, bad);
                let result = validate_content(&Content::Email(e));
                if let Some(body_field) = field.strip_suffix(" (NUL only)") {
                    // Bodies may hold line breaks and tabs; only NUL is refused.
                    if bad == "\0" {
                        assert_eq!(result.unwrap_err().field, body_field);
                    } else {
                        assert!(result.is_ok(), "{bad:?} in {body_field}");
                    }
                    continue;
                }
                let err = result.expect_err(field);
                assert_eq!(err.field, field, "{bad:?}: {err}");
            }
        }
        // The content type is also checked for shape.
        let mut e = email();
        e.attachments.push(attachment("a.pdf", Some("pdf")));
        assert_eq!(
            field_of(Content::Email(e)),
            "content.email.attachments[0].content_type"
        );
        for ok in [
            "application/pdf",
            "text/calendar; method=REQUEST; charset=utf-8",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ] {
            let mut e = email();
            e.attachments.push(attachment("a.bin", Some(ok)));
            assert!(validate_content(&Content::Email(e)).is_ok(), "{ok}");
        }

        let sms = |from: Option<&str>, body: &str, media: &[&str]| {
            Content::Sms(SmsContent {
                from: from.map(Into::into),
                body: body.into(),
                media_urls: media.iter().map(|s| s.to_string()).collect(),
            })
        };
        assert_eq!(
            field_of(sms(Some("Wed\r\nding"), "hi", &[])),
            "content.sms.from"
        );
        assert_eq!(
            field_of(sms(None, "hi", &["https://x.io/a.png", "https://x.io/\nb"])),
            "content.sms.media_urls[1]"
        );
        assert!(validate_content(&sms(None, "line\nbreaks\tare fine", &[])).is_ok());
        assert_eq!(field_of(sms(None, "nul\0", &[])), "content.sms.body");

        let push = |f: fn(&mut PushContent)| {
            let mut p = PushContent {
                title: Some("Hi".into()),
                ..Default::default()
            };
            f(&mut p);
            Content::Push(p)
        };
        assert_eq!(
            field_of(push(|p| p.title = Some("a\nb".into()))),
            "content.push.title"
        );
        assert_eq!(
            field_of(push(|p| p.sound = Some("ding\u{2028}".into()))),
            "content.push.sound"
        );
        assert_eq!(
            field_of(push(|p| p.collapse_id = Some("rsvp\r\n".into()))),
            "content.push.collapse_id"
        );
        assert!(validate_content(&push(|p| p.body = Some("two\nlines".into()))).is_ok());
        assert_eq!(
            field_of(push(|p| p.body = Some("\0".into()))),
            "content.push.body"
        );
    }

    #[test]
    fn content_rules() {
        let email_with = |text: Option<&str>| {
            Content::Email(EmailContent {
                subject: "Hi".into(),
                text: text.map(Into::into),
                ..Default::default()
            })
        };
        assert!(validate_content(&email_with(Some("body"))).is_ok());
        assert_eq!(field_of(email_with(None)), "content.email.text");
        assert_eq!(
            field_of(Content::Push(PushContent::default())),
            "content.push.title"
        );
        let mut e = email();
        e.attachments.push(Attachment {
            filename: "a.txt".into(),
            content_type: None,
            content: "not base64!".into(),
        });
        assert_eq!(
            field_of(Content::Email(e)),
            "content.email.attachments[0].content"
        );
        let with_header = |name: &str| {
            let mut e = email();
            e.headers.insert(name.into(), "v".into());
            validate_content(&Content::Email(e))
        };
        let sms_from = |from: &str| {
            validate_content(&Content::Sms(SmsContent {
                from: Some(from.into()),
                body: "hi".into(),
                ..Default::default()
            }))
        };
        for ok in ["+14155550100", "12345", "Wedding42"] {
            assert!(sms_from(ok).is_ok(), "{ok}");
        }
        assert_eq!(sms_from("12").unwrap_err().field, "content.sms.from");
        assert!(with_header("List-Unsubscribe").is_ok());
        assert_eq!(
            with_header(&"X".repeat(129)).unwrap_err().field,
            "content.email.headers"
        );
        for reserved in ["Subject", "from", "X-Herald-Id", "Content-Type"] {
            let err = with_header(reserved).unwrap_err();
            assert_eq!(err.field, format!("content.email.headers[{reserved:?}]"));
            assert!(err.reason.contains("written by Herald"), "{}", err.reason);
        }
    }
}
