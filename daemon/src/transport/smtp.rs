//! SMTP for plugins: builds the MIME message (lettre) from a plugin's `SmtpRequest` and
//! submits it over a pooled connection per (server, port, TLS mode, login).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use herald_plugin_api::{
    SmtpReply, SmtpRequest, SmtpTls, TransportError, TransportErrorKind, TransportResponse,
};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::refused;

type Pool = AsyncSmtpTransport<Tokio1Executor>;

/// One connection pool per (server, port, TLS mode, login).
type PoolKey = (String, u16, u8, Option<String>);

#[derive(Default)]
pub struct SmtpTransport {
    pools: Mutex<HashMap<PoolKey, Pool>>,
}

impl std::fmt::Debug for SmtpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpTransport").finish_non_exhaustive()
    }
}

fn mailbox(field: &str, s: &str) -> Result<Mailbox, String> {
    s.parse::<Mailbox>()
        .map_err(|e| format!("{field} {s:?} is not a valid address: {e}"))
}

/// Builds the RFC 5322 message: text and html as `multipart/alternative`, attachments
/// around it in `multipart/mixed`.
pub fn build_message(r: &SmtpRequest) -> Result<Message, String> {
    let mut b = Message::builder()
        .from(mailbox("from", &r.from)?)
        .subject(r.subject.clone())
        .message_id(Some(r.message_id.clone()));
    for to in &r.to {
        b = b.to(mailbox("to", to)?);
    }
    if let Some(reply_to) = &r.reply_to {
        b = b.reply_to(mailbox("reply_to", reply_to)?);
    }
    for (name, value) in &r.headers {
        let name = HeaderName::new_from_ascii(name.clone())
            .map_err(|_| format!("header name {name:?} is not valid"))?;
        b = b.raw_header(HeaderValue::new(name, value.clone()));
    }
    let text = r.text.as_deref().filter(|t| !t.is_empty());
    let html = r.html.as_deref().filter(|h| !h.is_empty());
    let body = match (text, html) {
        (Some(t), Some(h)) => MultiPart::alternative()
            .singlepart(SinglePart::plain(t.to_string()))
            .singlepart(SinglePart::html(h.to_string())),
        (Some(t), None) => MultiPart::mixed().singlepart(SinglePart::plain(t.to_string())),
        (None, Some(h)) => MultiPart::mixed().singlepart(SinglePart::html(h.to_string())),
        (None, None) => MultiPart::mixed().singlepart(SinglePart::plain(String::new())),
    };
    let message = if r.attachments.is_empty() {
        if text.is_some() && html.is_some() {
            b.multipart(body)
        } else if let Some(h) = html {
            b.singlepart(SinglePart::html(h.to_string()))
        } else {
            b.singlepart(SinglePart::plain(text.unwrap_or("").to_string()))
        }
    } else {
        let mut mixed = MultiPart::mixed().multipart(body);
        for a in &r.attachments {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&a.content)
                .map_err(|e| format!("attachment {:?} is not base64: {e}", a.filename))?;
            let ct = a
                .content_type
                .as_deref()
                .unwrap_or("application/octet-stream");
            let ct = ContentType::parse(ct)
                .map_err(|e| format!("attachment {:?}: content type {ct:?}: {e}", a.filename))?;
            mixed = mixed.singlepart(Attachment::new(a.filename.clone()).body(bytes, ct));
        }
        b.multipart(mixed)
    };
    message.map_err(|e| format!("cannot build the email: {e}"))
}

/// Whether the connection itself could not be made (nothing was sent).
fn connect_failed(e: &lettre::transport::smtp::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable
            );
        }
        source = s.source();
    }
    false
}

/// `5.1.1` at the start of the reply text, if present.
fn enhanced_code(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?;
    let parts: Vec<&str> = first.split('.').collect();
    let ok = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then(|| first.to_string())
}

impl SmtpTransport {
    fn pool(&self, r: &SmtpRequest, timeout: Duration) -> Result<Pool, String> {
        let key: PoolKey = (
            r.host.to_ascii_lowercase(),
            r.port,
            r.tls as u8,
            r.username.clone(),
        );
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&key) {
            return Ok(pool.clone());
        }
        let builder = match r.tls {
            SmtpTls::Starttls => Pool::starttls_relay(&r.host).map_err(|e| e.to_string())?,
            SmtpTls::Implicit => Pool::relay(&r.host).map_err(|e| e.to_string())?,
            SmtpTls::None => Pool::builder_dangerous(&r.host),
        };
        let mut builder = builder.port(r.port).timeout(Some(timeout));
        if let (Some(user), Some(pass)) = (&r.username, &r.password) {
            builder =
                builder.credentials(Credentials::new(user.clone(), pass.expose().to_string()));
        }
        let pool = builder.build();
        pools.insert(key, pool.clone());
        Ok(pool)
    }

    pub async fn perform(&self, r: SmtpRequest, default_timeout_ms: u64) -> TransportResponse {
        let message = match build_message(&r) {
            Ok(m) => m,
            Err(e) => return refused(e),
        };
        let timeout = Duration::from_millis(r.timeout_ms.unwrap_or(default_timeout_ms));
        let pool = match self.pool(&r, timeout) {
            Ok(p) => p,
            Err(e) => return refused(format!("SMTP transport for {}: {e}", r.host)),
        };
        match pool.send(message).await {
            Ok(resp) => {
                let text = resp.message().collect::<Vec<_>>().join(" ");
                TransportResponse::Smtp(SmtpReply {
                    code: u16::from(resp.code()),
                    enhanced: enhanced_code(&text),
                    message: text,
                })
            }
            Err(e) => {
                if let Some(code) = e.status() {
                    let text = e.to_string();
                    // lettre's message reads "permanent error (550): 5.1.1 ..."
                    let detail = text.split_once("): ").map_or(text.as_str(), |(_, d)| d);
                    return TransportResponse::Smtp(SmtpReply {
                        code: u16::from(code),
                        enhanced: enhanced_code(detail),
                        message: detail.to_string(),
                    });
                }
                let kind = if e.is_timeout() {
                    TransportErrorKind::Timeout
                } else if e.is_tls() {
                    TransportErrorKind::Tls
                } else if e.is_client() {
                    TransportErrorKind::Refused
                } else if connect_failed(&e) {
                    TransportErrorKind::Connect
                } else {
                    TransportErrorKind::Io
                };
                // lettre's Display already includes the underlying cause.
                let message = e.to_string();
                TransportResponse::Error(TransportError { kind, message })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_plugin_api::Attachment as A;

    fn req() -> SmtpRequest {
        SmtpRequest {
            host: "127.0.0.1".into(),
            port: 2525,
            tls: SmtpTls::None,
            username: None,
            password: None,
            timeout_ms: None,
            from: "Events <events@example.com>".into(),
            to: vec!["ann@example.org".into()],
            reply_to: None,
            subject: "You're invited".into(),
            text: Some("Join us".into()),
            html: Some("<p>Join us</p>".into()),
            message_id: "<01J@example.com>".into(),
            headers: vec![("X-Herald-Id".into(), "01J".into())],
            attachments: vec![],
        }
    }

    #[test]
    fn alternative_parts_headers_and_attachments() {
        let raw = String::from_utf8(build_message(&req()).unwrap().formatted()).unwrap();
        assert!(raw.contains("Message-ID: <01J@example.com>"), "{raw}");
        assert!(raw.contains("X-Herald-Id: 01J"));
        assert!(raw.contains("multipart/alternative"));
        assert!(
            raw.contains("Content-Type: text/plain") && raw.contains("Content-Type: text/html")
        );
        let mut r = req();
        r.attachments.push(A {
            filename: "invite.ics".into(),
            content_type: Some("text/calendar".into()),
            content: "QkVHSU46VkNBTEVOREFS".into(),
        });
        let raw = String::from_utf8(build_message(&r).unwrap().formatted()).unwrap();
        assert!(
            raw.contains("multipart/mixed") && raw.contains("invite.ics"),
            "{raw}"
        );
        r.from = "not an address".into();
        assert!(build_message(&r).unwrap_err().contains("from"));
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(
            enhanced_code("5.1.1 <x@y>: user unknown").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(enhanced_code("user unknown"), None);
        assert_eq!(
            enhanced_code("2.0.0 Ok: queued as 12345").as_deref(),
            Some("2.0.0")
        );
    }
}
