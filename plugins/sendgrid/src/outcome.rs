//! What SendGrid's answer means for the message: the response to `POST /v3/mail/send` (or
//! the transport error in its place) mapped to an [`Outcome`] (providers.md §2 and §8).
//!
//! | signal | outcome |
//! | --- | --- |
//! | 2xx (`202`; `200` in sandbox mode) | `Accepted`, provider id = the `X-Message-Id` header |
//! | 429 | `Retry`, no breaker, until `X-RateLimit-Reset` (epoch seconds), else `Retry-After` |
//! | 401, 403 (bad key, permission, unverified sender) | `ProviderFailure` |
//! | 404, 405 (wrong `base_url`, not the message's fault) | `ProviderFailure` |
//! | 400, 413, other 4xx | `Rejected` |
//! | 408, 5xx | `Retry` (breaker), after `Retry-After` when given |
//! | timeout, connect, TLS, I/O error | `Retry` (breaker); SendGrid has no idempotency, so this may duplicate the email (documented) |
//! | request refused by the host | `ProviderFailure` |
//!
//! SendGrid's error body is `{"errors": [{"message", "field", "help"}]}`; reasons list each
//! `field: message` (sanitized; never the key).

use herald_plugin_api::http::{retry_after_ms, until_epoch_secs_ms};
use herald_plugin_api::{HttpResponse, Logger, Outcome, Step, TransportResponse, UnixMillis};
use herald_plugin_kit::outcome::{Exchange, by_status};
use herald_plugin_kit::text::sanitize;
use serde::Deserialize;

use crate::config::Config;

/// The most characters of SendGrid's text kept in a reason.
const REASON_CHARS: usize = 300;

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Debug, Deserialize)]
struct ErrorItem {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    field: Option<String>,
}

/// Maps what came back for the Mail Send request to the delivery outcome.
pub(crate) fn classify(
    config: &Config,
    response: &TransportResponse,
    now: UnixMillis,
    log: &Logger,
) -> Outcome {
    let exchange = Exchange::new("sendgrid: POST /v3/mail/send")
        .retry_note(
            "SendGrid has no idempotency key: if the request arrived, the retry may send a \
             duplicate",
        )
        .redacting(&config.api_key);
    match exchange.http(response) {
        Ok(r) => classify_http(config, r, now, log),
        Err(outcome) => outcome,
    }
}

/// Maps what came back for a Mail Send of `n` personalizations (a batch): a 2xx accepts
/// every message, anything else is every message's outcome as for one message (SendGrid
/// validates the request as a whole).
///
/// The one `X-Message-Id` of the request is shared by all its personalizations (events
/// carry it as the prefix of `sg_message_id`), so it is not recorded as any message's
/// provider id, where it would name several messages: events find a batched message by its
/// `herald_id` custom arg, which every event of its personalization carries.
pub(crate) fn classify_batch(
    config: &Config,
    response: &TransportResponse,
    n: usize,
    now: UnixMillis,
    log: &Logger,
) -> Step {
    let exchange = Exchange::new("sendgrid: POST /v3/mail/send (batch)")
        .retry_note(
            "SendGrid has no idempotency key: if the request arrived, the retry may send \
             duplicates",
        )
        .redacting(&config.api_key);
    match exchange.http(response) {
        Ok(r) if (200..300).contains(&r.status) => Step::done_batch(vec![
            Outcome::Accepted {
                provider_message_id: None,
                delivered: false,
            };
            n
        ]),
        Ok(r) => Step::done(classify_http(config, r, now, log)),
        Err(outcome) => Step::done(outcome),
    }
}

fn classify_http(config: &Config, r: &HttpResponse, now: UnixMillis, log: &Logger) -> Outcome {
    let status = r.status;
    if (200..300).contains(&status) {
        let id = r
            .header("x-message-id")
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        if id.is_none() && !config.sandbox {
            log.warn(format!(
                "sendgrid: {status} response without X-Message-Id; webhooks for this message \
                 can only be correlated by its herald_id custom arg"
            ));
        }
        return Outcome::Accepted {
            provider_message_id: id,
            delivered: false,
        };
    }

    let reason = reason(config, status, &r.body);
    let retry_after = r.header("retry-after").and_then(|v| retry_after_ms(v, now));
    match status {
        429 => Outcome::Retry {
            after_ms: r
                .header("x-ratelimit-reset")
                .and_then(|v| until_epoch_secs_ms(v, now))
                .or(retry_after),
            reason,
            breaker: false,
        },
        _ => by_status(status, reason, retry_after),
    }
}

/// `sendgrid <status>: <field>: <message>; ...`, or a snippet of a body that is not
/// SendGrid's JSON.
fn reason(config: &Config, status: u16, raw: &str) -> String {
    let body: ErrorBody = serde_json::from_str(raw).unwrap_or_default();
    let listed: Vec<String> = body
        .errors
        .iter()
        .filter_map(|e| {
            let message = e.message.as_deref().filter(|m| !m.is_empty())?;
            Some(match e.field.as_deref().filter(|f| !f.is_empty()) {
                Some(field) => format!("{field}: {message}"),
                None => message.to_owned(),
            })
        })
        .collect();
    let detail = if listed.is_empty() {
        sanitize(raw, &config.api_key, REASON_CHARS)
    } else {
        sanitize(&listed.join("; "), &config.api_key, REASON_CHARS)
    };
    if detail.is_empty() {
        format!("sendgrid {status}")
    } else {
        format!("sendgrid {status}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{API_KEY, NOW, delivery, email_message, http_response, sendgrid};
    use herald_plugin_api::{Provider, TransportErrorKind};
    use herald_plugin_kit::testing::{
        ErrorClass as Class, RETRYABLE_KINDS, done, error_class as class, transport_error,
    };
    use serde_json::json;

    fn outcome(response: TransportResponse) -> Outcome {
        let p = sendgrid(json!({"api_key": API_KEY, "from": "rsvp@example.com"}));
        done(p.resume(
            &delivery(email_message()),
            serde_json::Value::Null,
            response,
        ))
    }

    fn error(status: u16, headers: &[(&str, &str)]) -> Outcome {
        let body =
            json!({"errors": [{"message": format!("msg {status}"), "field": null, "help": null}]});
        outcome(http_response(status, headers, &body.to_string()))
    }

    #[test]
    fn accepted_with_x_message_id() {
        let o = outcome(http_response(
            202,
            &[("X-Message-Id", "LRzXl_NHStOGhQ4kofSm_A")],
            "",
        ));
        assert_eq!(
            o,
            Outcome::Accepted {
                provider_message_id: Some("LRzXl_NHStOGhQ4kofSm_A".into()),
                delivered: false
            }
        );
        let o = outcome(http_response(200, &[], ""));
        assert_eq!(
            o,
            Outcome::Accepted {
                provider_message_id: None,
                delivered: false
            }
        );
    }

    /// Every row of the SendGrid error table in providers.md §2 and §8.
    #[test]
    fn error_table() {
        let retry = |after_ms, breaker| Class::Retry { after_ms, breaker };
        let rows: &[(u16, Class)] = &[
            (400, Class::Rejected),
            (401, Class::ProviderFailure),
            (403, Class::ProviderFailure),
            (404, Class::ProviderFailure),
            (405, Class::ProviderFailure),
            (413, Class::Rejected),
            (429, retry(None, false)),
            (500, retry(None, true)),
            (502, retry(None, true)),
            (503, retry(None, true)),
            (504, retry(None, true)),
            (408, retry(None, true)),
            (422, Class::Rejected),
            (301, Class::ProviderFailure),
        ];
        for (status, want) in rows {
            let o = error(*status, &[]);
            assert_eq!(&class(&o), want, "{status}: {o:?}");
        }
    }

    #[test]
    fn reasons() {
        let body = json!({"errors": [
            {"message": "The from address does not match a verified Sender Identity.",
             "field": "from", "help": "http://..."},
            {"message": "Invalid type.", "field": "personalizations.0.to"}]});
        let o = outcome(http_response(403, &[], &body.to_string()));
        assert_eq!(
            o,
            Outcome::provider_failure(
                "sendgrid 403: from: The from address does not match a verified Sender \
                 Identity.; personalizations.0.to: Invalid type."
            )
        );
        let o = outcome(http_response(
            401,
            &[],
            &json!({"errors": [{"message": format!("bad key {API_KEY}")}]}).to_string(),
        ));
        assert_eq!(o, Outcome::provider_failure("sendgrid 401: bad key ***"));
        let o = outcome(http_response(502, &[], "<html>Bad Gateway</html>"));
        assert!(
            matches!(&o, Outcome::Retry { reason, .. } if reason == "sendgrid 502: <html>Bad Gateway</html>"),
            "{o:?}"
        );
    }

    #[test]
    fn rate_limit_reset_and_retry_after() {
        // X-RateLimit-Reset is an epoch: NOW is 1735689600 s.
        let o = error(
            429,
            &[("X-RateLimit-Reset", "1735689645"), ("Retry-After", "5")],
        );
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: Some(45_000),
                breaker: false
            }
        );
        // A reset already past: retry at once.
        let o = error(429, &[("X-RateLimit-Reset", "1735689000")]);
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: Some(0),
                breaker: false
            }
        );
        // Retry-After, both forms.
        let o = error(429, &[("Retry-After", "7")]);
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: Some(7_000),
                breaker: false
            }
        );
        let o = error(503, &[("Retry-After", "Wed, 01 Jan 2025 00:01:00 GMT")]);
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: Some(60_000),
                breaker: true
            }
        );
        assert_eq!(NOW, 1_735_689_600_000);
    }

    #[test]
    fn transport_errors() {
        for kind in RETRYABLE_KINDS {
            assert_eq!(
                outcome(transport_error(kind, &format!("boom, key {API_KEY}"))),
                Outcome::retry(format!(
                    "sendgrid: POST /v3/mail/send failed ({kind:?}): boom, key *** (SendGrid has \
                     no idempotency key: if the request arrived, the retry may send a duplicate)"
                )),
            );
        }
        assert_eq!(
            outcome(transport_error(
                TransportErrorKind::Refused,
                "host not allowed"
            )),
            Outcome::provider_failure(
                "sendgrid: POST /v3/mail/send refused by the host: host not allowed"
            )
        );
    }
}
