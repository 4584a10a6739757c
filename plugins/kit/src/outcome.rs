//! The outcomes every plugin gives alike, whatever its provider:
//!
//! - a transport error in place of an answer ([`Exchange::transport_error`]): a timeout,
//!   connect, TLS or I/O error is a `Retry` (counted by the breaker), a request the host
//!   refused (host not allowed, malformed) a `ProviderFailure`; the reason names what was
//!   being done, the kind, the (clipped, redacted) message, and for a retry what the plugin
//!   knows about duplicates;
//! - an answer of the wrong kind (an SMTP reply to an HTTP request, or the reverse), which
//!   only a host bug produces ([`Exchange::http`], [`Exchange::smtp`]);
//! - a message of a channel the plugin does not carry ([`wrong_channel`]): the routes are
//!   misconfigured, so the next provider of the route should take it;
//! - an HTTP error status the provider's own error codes said nothing more about
//!   ([`by_status`]).

use herald_plugin_api::{
    HttpResponse, Message, Outcome, Secret, SmtpReply, TransportError, TransportErrorKind,
    TransportResponse,
};

use crate::text::{REASON_CHARS, clip, redact};

/// One request of a plugin, as its failure reasons describe it.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    what: &'a str,
    retry_note: Option<&'a str>,
    secret: Option<&'a Secret>,
}

impl<'a> Exchange<'a> {
    /// `what` names the request in reasons, e.g. `"SMTP submission"`, `"FCM send"`,
    /// `"resend: POST /emails"`.
    pub const fn new(what: &'a str) -> Exchange<'a> {
        Exchange {
            what,
            retry_note: None,
            secret: None,
        }
    }

    /// What a retry after a transport error means, appended to its reason in parentheses:
    /// `"safe to retry: the Idempotency-Key dedupes"`, or a warning that it may duplicate.
    pub const fn retry_note(self, note: &'a str) -> Exchange<'a> {
        Exchange {
            retry_note: Some(note),
            ..self
        }
    }

    /// A secret to redact should the transport's message echo it.
    pub const fn redacting(self, secret: &'a Secret) -> Exchange<'a> {
        Exchange {
            secret: Some(secret),
            ..self
        }
    }

    /// The outcome of a request the host could not complete.
    ///
    /// `Retry` (breaker) for a timeout, connect, TLS or I/O error:
    /// `<what> failed (<Kind>): <message> (<retry note>)`; `ProviderFailure` for a request the
    /// host refused: `<what> refused by the host: <message>`.
    pub fn transport_error(&self, error: &TransportError) -> Outcome {
        let message = match self.secret {
            Some(secret) => clip(&redact(&error.message, secret), REASON_CHARS),
            None => clip(&error.message, REASON_CHARS),
        };
        let what = self.what;
        match error.kind {
            TransportErrorKind::Refused => {
                Outcome::provider_failure(format!("{what} refused by the host: {message}"))
            }
            TransportErrorKind::Timeout
            | TransportErrorKind::Connect
            | TransportErrorKind::Tls
            | TransportErrorKind::Io => {
                let note = self
                    .retry_note
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                Outcome::retry(format!("{what} failed ({:?}): {message}{note}", error.kind))
            }
        }
    }

    /// The HTTP answer to this request, or the outcome when there is none: a transport
    /// error, or an SMTP reply (a host bug).
    pub fn http<'r>(&self, response: &'r TransportResponse) -> Result<&'r HttpResponse, Outcome> {
        match response {
            TransportResponse::Http(r) => Ok(r),
            other => Err(self.no_answer(other, "an HTTP request")),
        }
    }

    /// The SMTP server's final reply to this submission, or the outcome when there is
    /// none: a transport error, or an HTTP response (a host bug).
    pub fn smtp<'r>(&self, response: &'r TransportResponse) -> Result<&'r SmtpReply, Outcome> {
        match response {
            TransportResponse::Smtp(r) => Ok(r),
            other => Err(self.no_answer(other, "an SMTP request")),
        }
    }

    /// The outcome of `response`, which is not the answer `asked` for.
    fn no_answer(&self, response: &TransportResponse, asked: &str) -> Outcome {
        let got = match response {
            TransportResponse::Error(e) => return self.transport_error(e),
            TransportResponse::Http(_) => "an HTTP response",
            TransportResponse::Smtp(_) => "an SMTP reply",
        };
        Outcome::provider_failure(format!("{}: got {got} to {asked} (host bug)", self.what))
    }
}

/// The outcome an HTTP error status means when nothing more specific is known:
///
/// | status | outcome |
/// | --- | --- |
/// | 429 | `Retry` after `after_ms`, not counted by the breaker |
/// | 408, 5xx | `Retry` after `after_ms`, counted by the breaker |
/// | 401, 403, 404, 405 | `ProviderFailure`: credentials, account or `base_url`, not the message |
/// | other 4xx | `Rejected`: the message itself |
/// | anything else | `ProviderFailure` |
pub fn by_status(status: u16, reason: String, after_ms: Option<u64>) -> Outcome {
    match status {
        429 => Outcome::Retry {
            after_ms,
            reason,
            breaker: false,
        },
        401 | 403 | 404 | 405 => Outcome::provider_failure(reason),
        408 | 500..=599 => Outcome::Retry {
            after_ms,
            reason,
            breaker: true,
        },
        400..=499 => Outcome::rejected(reason),
        _ => Outcome::provider_failure(reason),
    }
}

/// The outcome for a message of a channel `plugin` does not carry (`carries`: "email",
/// "sms", "push notifications"): a `ProviderFailure`, so the route's next provider takes it.
pub fn wrong_channel(plugin: &str, carries: &str, message: &Message) -> Outcome {
    Outcome::provider_failure(format!(
        "{plugin} delivers {carries} only, not {} (check [routes])",
        message.channel()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_plugin_api::{Content, SmsContent};

    #[test]
    fn status_classes() {
        let of = |status| by_status(status, "r".into(), Some(5));
        let retry = |breaker| Outcome::Retry {
            after_ms: Some(5),
            reason: "r".into(),
            breaker,
        };
        assert_eq!(of(429), retry(false));
        for s in [408, 500, 503, 599] {
            assert_eq!(of(s), retry(true), "{s}");
        }
        for s in [401, 403, 404, 405, 302, 600] {
            assert_eq!(of(s), Outcome::provider_failure("r"), "{s}");
        }
        for s in [400, 409, 413, 422] {
            assert_eq!(of(s), Outcome::rejected("r"), "{s}");
        }
    }

    const RETRYABLE: [TransportErrorKind; 4] = [
        TransportErrorKind::Timeout,
        TransportErrorKind::Connect,
        TransportErrorKind::Tls,
        TransportErrorKind::Io,
    ];

    fn error(kind: TransportErrorKind, message: &str) -> TransportError {
        TransportError {
            kind,
            message: message.into(),
        }
    }

    #[test]
    fn retryable_kinds_retry_with_the_breaker() {
        let plain = Exchange::new("SMTP submission");
        for kind in RETRYABLE {
            assert_eq!(
                plain.transport_error(&error(kind, "boom")),
                Outcome::Retry {
                    after_ms: None,
                    reason: format!("SMTP submission failed ({kind:?}): boom"),
                    breaker: true,
                }
            );
        }
        let noted = plain.retry_note("SMTP has no idempotency: a retry may duplicate");
        assert_eq!(
            noted.transport_error(&error(TransportErrorKind::Connect, "Connection refused")),
            Outcome::retry(
                "SMTP submission failed (Connect): Connection refused (SMTP has no \
                 idempotency: a retry may duplicate)"
            )
        );
    }

    #[test]
    fn refused_is_a_provider_failure() {
        let e = Exchange::new("APNs send").retry_note("not shown for a refusal");
        assert_eq!(
            e.transport_error(&error(TransportErrorKind::Refused, "host not allowed")),
            Outcome::provider_failure("APNs send refused by the host: host not allowed")
        );
    }

    #[test]
    fn messages_are_clipped_and_redacted() {
        let key = Secret::new("re_secret");
        let e = Exchange::new("resend: POST /emails").redacting(&key);
        let message = format!("bad\r\nkey re_secret {}", "x".repeat(300));
        let Outcome::Retry { reason, .. } =
            e.transport_error(&error(TransportErrorKind::Io, &message))
        else {
            panic!("a retry")
        };
        assert!(
            reason.starts_with("resend: POST /emails failed (Io): bad  key *** xxx"),
            "{reason}"
        );
        assert!(reason.ends_with("x…"), "{reason}");
        assert!(!reason.contains("re_secret"), "{reason}");
    }

    #[test]
    fn answers_of_the_wrong_kind_are_host_bugs() {
        let http = TransportResponse::Http(HttpResponse {
            status: 200,
            headers: vec![],
            body: String::new(),
        });
        let smtp = TransportResponse::Smtp(SmtpReply {
            code: 250,
            enhanced: None,
            message: String::new(),
        });
        let failed = TransportResponse::Error(error(TransportErrorKind::Timeout, "slow"));
        let e = Exchange::new("SMTP submission");
        assert!(matches!(e.http(&http), Ok(r) if r.status == 200));
        assert!(matches!(e.smtp(&smtp), Ok(r) if r.code == 250));
        let failures = [
            e.http(&smtp).unwrap_err(),
            e.smtp(&http).unwrap_err(),
            e.http(&failed).unwrap_err(),
            e.smtp(&failed).unwrap_err(),
        ];
        assert_eq!(
            failures,
            [
                Outcome::provider_failure(
                    "SMTP submission: got an SMTP reply to an HTTP request (host bug)"
                ),
                Outcome::provider_failure(
                    "SMTP submission: got an HTTP response to an SMTP request (host bug)"
                ),
                Outcome::retry("SMTP submission failed (Timeout): slow"),
                Outcome::retry("SMTP submission failed (Timeout): slow"),
            ]
        );
    }

    #[test]
    fn wrong_channel_names_plugin_channel_and_fix() {
        let message = Message {
            id: "01HZY8N3W4Q6K2M5P7R9T1V3X5".into(),
            to: "+14155550100".into(),
            content: Content::Sms(SmsContent {
                from: None,
                body: "YES".into(),
                media_urls: vec![],
            }),
            tags: vec![],
            created_at: 0,
        };
        assert_eq!(
            wrong_channel("smtp", "email", &message),
            Outcome::provider_failure("smtp delivers email only, not sms (check [routes])")
        );
    }
}
