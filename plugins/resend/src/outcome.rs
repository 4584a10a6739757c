//! What Resend's answer means for the message: the response to `POST /emails` (or the
//! transport error in its place) mapped to an [`Outcome`].
//!
//! Resend's error body is `{"statusCode", "message", "name"}`; the `name` decides where it
//! is more precise than the status (the three kinds of 429, the kinds of 409), otherwise the
//! status class does:
//!
//! | signal | outcome |
//! | --- | --- |
//! | 2xx | `Accepted`, provider id = body `id` |
//! | 429 `rate_limit_exceeded` (or no name) | `Retry`, no breaker, after `retry-after` / `ratelimit-reset` |
//! | 429 `daily_quota_exceeded` | `Retry`, no breaker, after the later of both headers (at least 1 min, 1 h without them) |
//! | 429 `monthly_quota_exceeded` | `ProviderFailure` (plan limit: the next provider takes over) |
//! | 409 `concurrent_idempotent_requests`, `resource_locked` (or no name) | `Retry`, no breaker, short delay |
//! | 409 `invalid_idempotent_request` | `Rejected` (same key, different body) |
//! | 401, 403 (any name, incl. the testing-domain `validation_error`) | `ProviderFailure` |
//! | 404, 405 (wrong `base_url`, not the message's fault) | `ProviderFailure` |
//! | 400, 413, 422, other 4xx | `Rejected` |
//! | 408, 5xx | `Retry` (breaker), after `retry-after` when given |
//! | timeout, connect, TLS, I/O error | `Retry` (breaker): safe, the `Idempotency-Key` dedupes |
//! | request refused by the host | `ProviderFailure` |
//!
//! Reasons carry Resend's `name` and `message` (sanitized; never the key).

use herald_plugin_api::http::retry_after_ms;
use herald_plugin_api::{HttpResponse, Logger, Outcome, Step, TransportResponse, UnixMillis};
use herald_plugin_kit::outcome::{Exchange, by_status};
use herald_plugin_kit::text::sanitize;
use serde::Deserialize;

use crate::config::Config;

/// The most characters of Resend's text kept in a reason.
const REASON_CHARS: usize = 300;

/// Wait before retrying a 409 the provider says is transient, when it gives no hint.
const CONFLICT_RETRY_MS: u64 = 5_000;
/// The daily quota resets at most a day later; without a hint, look again in an hour.
const DAILY_QUOTA_DEFAULT_MS: u64 = 3_600_000;
/// A daily-quota hint shorter than this is the per-second rate window, not the quota.
const DAILY_QUOTA_MIN_MS: u64 = 60_000;

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SuccessBody {
    #[serde(default)]
    id: Option<String>,
}

/// Maps what came back for the `POST /emails` request to the delivery outcome.
pub(crate) fn classify(
    config: &Config,
    response: &TransportResponse,
    now: UnixMillis,
    log: &Logger,
) -> Outcome {
    let exchange = Exchange::new("resend: POST /emails")
        .retry_note("safe to retry: the Idempotency-Key dedupes")
        .redacting(&config.api_key);
    match exchange.http(response) {
        Ok(r) => classify_http(config, r, now, log),
        Err(outcome) => outcome,
    }
}

#[derive(Debug, Default, Deserialize)]
struct BatchBody {
    #[serde(default)]
    data: Vec<SuccessBody>,
}

/// Maps what came back for a `POST /emails/batch` of `n` emails: a 2xx is every email's
/// `Accepted`, with the ids of `data` in request order; anything else is the whole
/// request's outcome, exactly as for `POST /emails` (the batch is validated as a whole:
/// one refused email refuses the request).
pub(crate) fn classify_batch(
    config: &Config,
    response: &TransportResponse,
    n: usize,
    now: UnixMillis,
    log: &Logger,
) -> Step {
    let exchange = Exchange::new("resend: POST /emails/batch")
        .retry_note("safe to retry: the Idempotency-Key dedupes the batch")
        .redacting(&config.api_key);
    let r = match exchange.http(response) {
        Ok(r) => r,
        Err(outcome) => return Step::done(outcome),
    };
    if !(200..300).contains(&r.status) {
        return Step::done(classify_http(config, r, now, log));
    }
    let data = serde_json::from_str::<BatchBody>(&r.body)
        .map(|b| b.data)
        .unwrap_or_default();
    if data.len() != n {
        log.warn(format!(
            "resend: {} batch response lists {} email ids for {n} emails; webhooks for the \
             others can only be correlated by their herald_id tag",
            r.status,
            data.len()
        ));
    }
    let mut ids = data.into_iter().map(|d| d.id.filter(|id| !id.is_empty()));
    Step::done_batch(
        (0..n)
            .map(|_| Outcome::Accepted {
                provider_message_id: ids.next().flatten(),
                delivered: false,
            })
            .collect(),
    )
}

fn classify_http(config: &Config, r: &HttpResponse, now: UnixMillis, log: &Logger) -> Outcome {
    let status = r.status;
    if (200..300).contains(&status) {
        let id = serde_json::from_str::<SuccessBody>(&r.body)
            .ok()
            .and_then(|b| b.id)
            .filter(|id| !id.is_empty());
        if id.is_none() {
            log.warn(format!(
                "resend: {status} response without an email id; webhooks for this message \
                 can only be correlated by its herald_id tag"
            ));
        }
        return Outcome::Accepted {
            provider_message_id: id,
            delivered: false,
        };
    }

    let body: ErrorBody = serde_json::from_str(&r.body).unwrap_or_default();
    let name = body.name.as_deref().unwrap_or("");
    let reason = reason(config, status, name, body.message.as_deref(), &r.body);
    let retry_after = r.header("retry-after").and_then(|v| retry_after_ms(v, now));
    let reset = r.header("ratelimit-reset").and_then(delta_seconds_ms);

    match (status, name) {
        (_, "monthly_quota_exceeded") => Outcome::provider_failure(reason),
        (_, "daily_quota_exceeded") => {
            let hint = retry_after.max(reset);
            Outcome::Retry {
                after_ms: Some(
                    hint.map_or(DAILY_QUOTA_DEFAULT_MS, |ms| ms.max(DAILY_QUOTA_MIN_MS)),
                ),
                reason,
                breaker: false,
            }
        }
        (_, "rate_limit_exceeded") | (429, _) => Outcome::Retry {
            after_ms: retry_after.or(reset),
            reason,
            breaker: false,
        },
        (_, "invalid_idempotent_request") => Outcome::rejected(reason),
        (_, "concurrent_idempotent_requests" | "resource_locked") | (409, _) => Outcome::Retry {
            after_ms: Some(retry_after.unwrap_or(CONFLICT_RETRY_MS)),
            reason,
            breaker: false,
        },
        _ => by_status(status, reason, retry_after),
    }
}

/// `resend <status> <name>: <message>`, or a snippet of a body that is not Resend's JSON
/// (a proxy page, Cloudflare's `error code: 1010`).
fn reason(config: &Config, status: u16, name: &str, message: Option<&str>, raw: &str) -> String {
    let detail = match message {
        Some(m) if !m.is_empty() => m,
        _ => raw,
    };
    let name = if name.is_empty() {
        String::new()
    } else {
        format!(" {}", sanitize(name, &config.api_key, REASON_CHARS))
    };
    let detail = sanitize(detail, &config.api_key, REASON_CHARS);
    if detail.is_empty() {
        format!("resend {status}{name}")
    } else {
        format!("resend {status}{name}: {detail}")
    }
}

/// `ratelimit-reset`: seconds until the window resets (an integer, tolerated as a decimal).
fn delta_seconds_ms(value: &str) -> Option<u64> {
    let secs: f64 = value.trim().parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    // Saturating float→int conversion; a day-long hint is far below u64::MAX.
    Some((secs * 1000.0).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{API_KEY, delivery, email_message, http_response, resend};
    use herald_plugin_api::{Provider, TransportErrorKind};
    use herald_plugin_kit::testing::{
        ErrorClass as Class, RETRYABLE_KINDS, done, error_class as class, transport_error,
    };
    use serde_json::json;

    fn outcome(response: TransportResponse) -> Outcome {
        let p = resend(json!({"api_key": API_KEY, "from": "rsvp@example.com"}));
        done(p.resume(
            &delivery(email_message()),
            serde_json::Value::Null,
            response,
        ))
    }

    fn error(status: u16, name: &str, headers: &[(&str, &str)]) -> Outcome {
        let body =
            json!({"statusCode": status, "name": name, "message": format!("msg for {name}")});
        outcome(http_response(status, headers, &body.to_string()))
    }

    #[test]
    fn accepted_with_body_id() {
        let o = outcome(http_response(
            200,
            &[("content-type", "application/json")],
            r#"{"id":"49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}"#,
        ));
        assert_eq!(
            o,
            Outcome::Accepted {
                provider_message_id: Some("49a3999c-0ce1-4ea6-ab68-afcd6dc2e794".into()),
                delivered: false
            }
        );
        let o = outcome(http_response(200, &[], "not json"));
        assert_eq!(
            o,
            Outcome::Accepted {
                provider_message_id: None,
                delivered: false
            }
        );
    }

    /// Every row of the Resend error table in providers.md §1 and §8.
    #[test]
    fn error_table() {
        let retry = |after_ms, breaker| Class::Retry { after_ms, breaker };
        let rows: &[(u16, &str, Class)] = &[
            (400, "validation_error", Class::Rejected),
            (400, "invalid_idempotency_key", Class::Rejected),
            (401, "missing_api_key", Class::ProviderFailure),
            (401, "restricted_api_key", Class::ProviderFailure),
            (403, "invalid_api_key", Class::ProviderFailure),
            (403, "suspended_api_key", Class::ProviderFailure),
            (403, "invalid_permission", Class::ProviderFailure),
            (403, "validation_error", Class::ProviderFailure),
            (403, "email_above_quota", Class::ProviderFailure),
            (404, "not_found", Class::ProviderFailure),
            (405, "method_not_allowed", Class::ProviderFailure),
            (
                409,
                "concurrent_idempotent_requests",
                retry(Some(5_000), false),
            ),
            (409, "invalid_idempotent_request", Class::Rejected),
            (409, "resource_locked", retry(Some(5_000), false)),
            (413, "", Class::Rejected),
            (422, "invalid_attachment", Class::Rejected),
            (422, "invalid_parameter", Class::Rejected),
            (422, "missing_required_field", Class::Rejected),
            (422, "missing_required_parameter", Class::Rejected),
            (429, "rate_limit_exceeded", retry(None, false)),
            (429, "daily_quota_exceeded", retry(Some(3_600_000), false)),
            (429, "monthly_quota_exceeded", Class::ProviderFailure),
            (429, "", retry(None, false)),
            (500, "application_error", retry(None, true)),
            (500, "service_unavailable", retry(None, true)),
            (502, "", retry(None, true)),
            (503, "", retry(None, true)),
            (504, "", retry(None, true)),
            (408, "", retry(None, true)),
            (418, "", Class::Rejected),
            (302, "", Class::ProviderFailure),
        ];
        for (status, name, want) in rows {
            let o = error(*status, name, &[]);
            assert_eq!(&class(&o), want, "{status} {name}: {o:?}");
        }
    }

    #[test]
    fn reason_has_name_and_message_never_the_key() {
        let o = outcome(http_response(
            403,
            &[],
            &json!({"statusCode": 403, "name": "invalid_api_key",
                    "message": format!("API key {API_KEY} is invalid")})
            .to_string(),
        ));
        let Outcome::ProviderFailure { reason } = o else {
            panic!("{o:?}")
        };
        assert_eq!(reason, "resend 403 invalid_api_key: API key *** is invalid");

        // Cloudflare's edge answers without Resend's JSON.
        let o = outcome(http_response(403, &[], "error code: 1010"));
        assert_eq!(o, Outcome::provider_failure("resend 403: error code: 1010"));
    }

    #[test]
    fn rate_limit_hints() {
        // retry-after in seconds wins over ratelimit-reset.
        let o = error(
            429,
            "rate_limit_exceeded",
            &[("retry-after", "2"), ("ratelimit-reset", "1")],
        );
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: Some(2_000),
                breaker: false
            }
        );
        // retry-after as an HTTP-date: 2025-01-01T00:00:30Z is 30 s after NOW.
        let o = error(
            429,
            "rate_limit_exceeded",
            &[("Retry-After", "Wed, 01 Jan 2025 00:00:30 GMT")],
        );
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: Some(30_000),
                breaker: false
            }
        );
        // ratelimit-reset alone.
        let o = error(429, "rate_limit_exceeded", &[("ratelimit-reset", "3")]);
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: Some(3_000),
                breaker: false
            }
        );
        // 5xx honours retry-after too, and still counts against the breaker.
        let o = error(503, "", &[("retry-after", "120")]);
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: Some(120_000),
                breaker: true
            }
        );
        // A garbage hint is ignored.
        let o = error(429, "rate_limit_exceeded", &[("retry-after", "soon")]);
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: None,
                breaker: false
            }
        );
    }

    #[test]
    fn daily_quota_is_deferred_not_hammered() {
        // The later of the two hints.
        let o = error(
            429,
            "daily_quota_exceeded",
            &[("retry-after", "7200"), ("ratelimit-reset", "1")],
        );
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: Some(7_200_000),
                breaker: false
            }
        );
        let o = error(
            429,
            "daily_quota_exceeded",
            &[("Retry-After", "Wed, 01 Jan 2025 05:00:00 GMT")],
        );
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: Some(18_000_000),
                breaker: false
            }
        );
        // A 1-second window reset is not the quota's: at least a minute.
        let o = error(429, "daily_quota_exceeded", &[("ratelimit-reset", "1")]);
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: Some(60_000),
                breaker: false
            }
        );
        // No hint: an hour.
        let o = error(429, "daily_quota_exceeded", &[]);
        assert_eq!(
            class(&o),
            Class::Retry {
                after_ms: Some(3_600_000),
                breaker: false
            }
        );
    }

    #[test]
    fn transport_errors() {
        for kind in RETRYABLE_KINDS {
            assert_eq!(
                outcome(transport_error(kind, &format!("boom, key {API_KEY}"))),
                Outcome::retry(format!(
                    "resend: POST /emails failed ({kind:?}): boom, key *** (safe to retry: the \
                     Idempotency-Key dedupes)"
                )),
            );
        }
        assert_eq!(
            outcome(transport_error(
                TransportErrorKind::Refused,
                "host not allowed"
            )),
            Outcome::provider_failure("resend: POST /emails refused by the host: host not allowed")
        );
    }
}
