//! What an FCM answer means for the message: the `FcmError.errorCode` table of
//! providers.md (sections 4 and 8) mapped to Herald outcomes, the one case that needs a
//! token refresh (401 without an `FcmError`), `Retry-After` in both forms, and transport
//! errors.

use herald_plugin_api::http::retry_after_ms;
use herald_plugin_api::{HttpResponse, Outcome, UnixMillis};
use herald_plugin_kit::outcome::Exchange;
use herald_plugin_kit::text::{REASON_CHARS, clip};
use serde::Deserialize;
use serde_json::Value;

/// The wait when FCM reports an exhausted quota without a `Retry-After`: the quota refills
/// "the following minute".
pub const QUOTA_WAIT_MS: u64 = 60_000;

/// The two requests, as failure reasons name them. A transport error is a retry; a request
/// the host refused, a provider failure.
pub const SEND: Exchange<'static> = Exchange::new("FCM send");
pub const TOKEN_EXCHANGE: Exchange<'static> = Exchange::new("OAuth token exchange");

/// How an answer to `messages:send` ends the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Done(Outcome),
    /// HTTP 401 without an `FcmError`: the access token was refused; refresh it (once).
    Unauthorized(String),
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<ErrorStatus>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorStatus {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    details: Vec<Value>,
}

impl ErrorStatus {
    fn detail(&self, type_suffix: &str) -> Option<&Value> {
        self.details.iter().find(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with(type_suffix))
        })
    }

    /// `details[@type = ...FcmError].errorCode`.
    fn fcm_code(&self) -> Option<&str> {
        self.detail("google.firebase.fcm.v1.FcmError")?
            .get("errorCode")?
            .as_str()
    }

    /// Whether the error blames the registration token (a `BadRequest` field violation on
    /// `message.token`, or a message saying so).
    fn blames_token(&self) -> bool {
        let violation = self
            .detail("google.rpc.BadRequest")
            .and_then(|d| d.get("fieldViolations"))
            .and_then(Value::as_array)
            .is_some_and(|vs| {
                vs.iter()
                    .any(|v| v.get("field").and_then(Value::as_str) == Some("message.token"))
            });
        let message = self
            .message
            .as_deref()
            .unwrap_or_default()
            .to_ascii_lowercase();
        violation || message.contains("registration token")
    }
}

fn retry(after_ms: Option<u64>, reason: String, breaker: bool) -> Verdict {
    Verdict::Done(Outcome::Retry {
        after_ms,
        reason,
        breaker,
    })
}

fn rejected(reason: String, suppress: bool) -> Verdict {
    Verdict::Done(Outcome::Rejected {
        reason,
        bounced: false,
        suppress,
    })
}

fn failure(reason: String) -> Verdict {
    Verdict::Done(Outcome::ProviderFailure { reason })
}

/// Maps FCM's answer to `messages:send`. `attempt` is the delivery attempt
/// (`UNSPECIFIED_ERROR` is retried once only).
pub fn classify(response: &HttpResponse, attempt: u32, now: UnixMillis) -> Verdict {
    let status = response.status;
    if (200..300).contains(&status) {
        // The provider id is `name`: `projects/{project}/messages/{message_id}`.
        let name = serde_json::from_str::<Value>(&response.body)
            .ok()
            .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string));
        return Verdict::Done(Outcome::Accepted {
            provider_message_id: name,
            delivered: false,
        });
    }
    let error = serde_json::from_str::<ErrorBody>(&response.body)
        .ok()
        .and_then(|b| b.error)
        .unwrap_or_default();
    let after = response
        .header("retry-after")
        .and_then(|v| retry_after_ms(v, now));
    let fcm_code = error.fcm_code();
    let code = fcm_code.or(error.status.as_deref()).unwrap_or("error");
    let message = error
        .message
        .as_deref()
        .map(|m| clip(m, REASON_CHARS))
        .unwrap_or_default();
    let reason = if message.is_empty() {
        format!("FCM {code} (HTTP {status})")
    } else {
        format!("FCM {code} (HTTP {status}): {message}")
    };

    match fcm_code {
        Some("UNREGISTERED") => {
            return rejected(
                format!("{reason}; the device token is no longer registered"),
                true,
            );
        }
        Some("INVALID_ARGUMENT") => {
            return if error.blames_token() {
                rejected(format!("{reason}; the device token is invalid"), true)
            } else {
                rejected(reason, false)
            };
        }
        Some("SENDER_ID_MISMATCH") => {
            // Usually a token of another app; but a wrong project would make every token
            // mismatch, so the token is not suppressed.
            return rejected(
                format!(
                    "{reason}; the token belongs to another Firebase project (check project_id \
                     if every send fails this way)"
                ),
                false,
            );
        }
        Some("THIRD_PARTY_AUTH_ERROR" | "APNS_AUTH_ERROR") => {
            return failure(format!(
                "{reason}; the APNs or web-push credentials in the Firebase project are \
                 invalid"
            ));
        }
        Some("QUOTA_EXCEEDED") => return retry(after.or(Some(QUOTA_WAIT_MS)), reason, false),
        Some("UNAVAILABLE" | "INTERNAL") => return retry(after, reason, true),
        Some("UNSPECIFIED_ERROR") => {
            return if attempt <= 1 {
                retry(after, reason, true)
            } else {
                rejected(format!("{reason}; failed again after a retry"), false)
            };
        }
        // Unknown codes: judge by the HTTP status.
        _ => {}
    }
    match status {
        401 => Verdict::Unauthorized(reason),
        400 => rejected(reason.clone(), error.blames_token()),
        403 | 404 => failure(format!(
            "{reason}; check project_id and that the service account may send with FCM"
        )),
        429 => retry(after.or(Some(QUOTA_WAIT_MS)), reason, false),
        408 | 500..=599 => retry(after, reason, true),
        _ => failure(format!("{reason}; unexpected answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_plugin_api::TransportErrorKind;
    use herald_plugin_kit::testing::{RETRYABLE_KINDS, transport_error};
    use serde_json::json;

    const NOW: UnixMillis = 1_445_412_470_000; // 10 s before Wed, 21 Oct 2015 07:28:00 GMT

    fn fcm_error(status: u16, code: Option<&str>, message: &str) -> HttpResponse {
        let mut details = vec![];
        if let Some(code) = code {
            details.push(json!({
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": code,
            }));
        }
        HttpResponse {
            status,
            headers: vec![],
            body: json!({"error": {"code": status, "message": message, "status": "X", "details": details}})
                .to_string(),
        }
    }

    fn with_retry_after(mut r: HttpResponse, v: &str) -> HttpResponse {
        r.headers.push(("retry-after".into(), v.into()));
        r
    }

    fn done(v: Verdict) -> Outcome {
        match v {
            Verdict::Done(o) => o,
            other => panic!("expected an outcome, got {other:?}"),
        }
    }

    #[test]
    fn success_gives_the_message_name() {
        let ok = HttpResponse {
            status: 200,
            headers: vec![],
            body: r#"{"name":"projects/herald-test/messages/0:1500415314455276%31bd1c9631bd1c96"}"#
                .into(),
        };
        assert_eq!(
            done(classify(&ok, 1, NOW)),
            Outcome::Accepted {
                provider_message_id: Some(
                    "projects/herald-test/messages/0:1500415314455276%31bd1c9631bd1c96".into()
                ),
                delivered: false
            }
        );
    }

    #[test]
    fn error_table() {
        let r = |reason: &str, suppress: bool| Outcome::Rejected {
            reason: reason.into(),
            bounced: false,
            suppress,
        };
        let t = |after_ms: Option<u64>, reason: &str, breaker: bool| Outcome::Retry {
            after_ms,
            reason: reason.into(),
            breaker,
        };
        let cases = vec![
            (
                fcm_error(404, Some("UNREGISTERED"), "Requested entity was not found."),
                1,
                r(
                    "FCM UNREGISTERED (HTTP 404): Requested entity was not found.; the device token is no longer registered",
                    true,
                ),
            ),
            (
                fcm_error(
                    400,
                    Some("INVALID_ARGUMENT"),
                    "The registration token is not a valid FCM registration token",
                ),
                1,
                r(
                    "FCM INVALID_ARGUMENT (HTTP 400): The registration token is not a valid FCM registration token; the device token is invalid",
                    true,
                ),
            ),
            (
                fcm_error(
                    400,
                    Some("INVALID_ARGUMENT"),
                    "Invalid value at 'message.android.ttl'",
                ),
                1,
                r(
                    "FCM INVALID_ARGUMENT (HTTP 400): Invalid value at 'message.android.ttl'",
                    false,
                ),
            ),
            (
                fcm_error(403, Some("SENDER_ID_MISMATCH"), "SenderId mismatch"),
                1,
                r(
                    "FCM SENDER_ID_MISMATCH (HTTP 403): SenderId mismatch; the token belongs to another Firebase project (check project_id if every send fails this way)",
                    false,
                ),
            ),
            (
                fcm_error(
                    401,
                    Some("THIRD_PARTY_AUTH_ERROR"),
                    "Auth error from APNS or Web Push Service",
                ),
                1,
                Outcome::provider_failure(
                    "FCM THIRD_PARTY_AUTH_ERROR (HTTP 401): Auth error from APNS or Web Push Service; the APNs or web-push credentials in the Firebase project are invalid",
                ),
            ),
            (
                fcm_error(401, Some("APNS_AUTH_ERROR"), ""),
                1,
                Outcome::provider_failure(
                    "FCM APNS_AUTH_ERROR (HTTP 401); the APNs or web-push credentials in the Firebase project are invalid",
                ),
            ),
            (
                fcm_error(429, Some("QUOTA_EXCEEDED"), "Quota exceeded"),
                1,
                t(
                    Some(60_000),
                    "FCM QUOTA_EXCEEDED (HTTP 429): Quota exceeded",
                    false,
                ),
            ),
            (
                with_retry_after(
                    fcm_error(429, Some("QUOTA_EXCEEDED"), "Quota exceeded"),
                    "7",
                ),
                1,
                t(
                    Some(7_000),
                    "FCM QUOTA_EXCEEDED (HTTP 429): Quota exceeded",
                    false,
                ),
            ),
            (
                with_retry_after(
                    fcm_error(503, Some("UNAVAILABLE"), "busy"),
                    "Wed, 21 Oct 2015 07:28:00 GMT",
                ),
                1,
                t(Some(10_000), "FCM UNAVAILABLE (HTTP 503): busy", true),
            ),
            (
                fcm_error(500, Some("INTERNAL"), "oops"),
                1,
                t(None, "FCM INTERNAL (HTTP 500): oops", true),
            ),
            (
                fcm_error(500, Some("UNSPECIFIED_ERROR"), "?"),
                1,
                t(None, "FCM UNSPECIFIED_ERROR (HTTP 500): ?", true),
            ),
            (
                fcm_error(500, Some("UNSPECIFIED_ERROR"), "?"),
                2,
                r(
                    "FCM UNSPECIFIED_ERROR (HTTP 500): ?; failed again after a retry",
                    false,
                ),
            ),
            (
                fcm_error(
                    403,
                    None,
                    "Permission 'cloudmessaging.messages.create' denied",
                ),
                1,
                Outcome::provider_failure(
                    "FCM X (HTTP 403): Permission 'cloudmessaging.messages.create' denied; check project_id and that the service account may send with FCM",
                ),
            ),
            (
                fcm_error(404, None, "Requested entity was not found."),
                1,
                Outcome::provider_failure(
                    "FCM X (HTTP 404): Requested entity was not found.; check project_id and that the service account may send with FCM",
                ),
            ),
            (
                fcm_error(400, None, "Invalid JSON payload received."),
                1,
                r("FCM X (HTTP 400): Invalid JSON payload received.", false),
            ),
            (
                with_retry_after(fcm_error(429, None, "slow down"), "120"),
                1,
                t(Some(120_000), "FCM X (HTTP 429): slow down", false),
            ),
            (
                HttpResponse {
                    status: 502,
                    headers: vec![],
                    body: "<html>Bad Gateway</html>".into(),
                },
                1,
                t(None, "FCM error (HTTP 502)", true),
            ),
            (
                HttpResponse {
                    status: 504,
                    headers: vec![("Retry-After".into(), "Wed, 21 Oct 2015 07:27:00 GMT".into())],
                    body: String::new(),
                },
                1,
                t(Some(0), "FCM error (HTTP 504)", true),
            ),
            (
                HttpResponse {
                    status: 302,
                    headers: vec![],
                    body: String::new(),
                },
                1,
                Outcome::provider_failure("FCM error (HTTP 302); unexpected answer"),
            ),
        ];
        for (response, attempt, expected) in cases {
            assert_eq!(
                done(classify(&response, attempt, NOW)),
                expected,
                "{response:?}"
            );
        }
    }

    #[test]
    fn bad_request_field_violation_on_the_token_suppresses() {
        let body = json!({"error": {"code": 400, "message": "Request contains an invalid argument.",
        "status": "INVALID_ARGUMENT", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"},
            {"@type": "type.googleapis.com/google.rpc.BadRequest",
             "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]}
        ]}});
        let response = HttpResponse {
            status: 400,
            headers: vec![],
            body: body.to_string(),
        };
        assert!(matches!(
            done(classify(&response, 1, NOW)),
            Outcome::Rejected { suppress: true, .. }
        ));
    }

    #[test]
    fn plain_401_asks_for_a_token_refresh() {
        let response = fcm_error(401, None, "Request had invalid authentication credentials.");
        assert_eq!(
            classify(&response, 1, NOW),
            Verdict::Unauthorized(
                "FCM X (HTTP 401): Request had invalid authentication credentials.".into()
            )
        );
    }

    #[test]
    fn long_messages_are_clipped() {
        let response = fcm_error(500, Some("INTERNAL"), &format!(" {}\n", "é".repeat(300)));
        assert_eq!(
            classify(&response, 1, NOW),
            retry(
                None,
                format!("FCM INTERNAL (HTTP 500): {}…", "é".repeat(200)),
                true
            )
        );
    }

    #[test]
    fn transport_errors() {
        for (exchange, what) in [(SEND, "FCM send"), (TOKEN_EXCHANGE, "OAuth token exchange")] {
            for kind in RETRYABLE_KINDS {
                assert_eq!(
                    exchange.http(&transport_error(kind, "x")),
                    Err(Outcome::retry(format!("{what} failed ({kind:?}): x")))
                );
            }
            assert_eq!(
                exchange.http(&transport_error(
                    TransportErrorKind::Refused,
                    "host not allowed"
                )),
                Err(Outcome::provider_failure(format!(
                    "{what} refused by the host: host not allowed"
                )))
            );
        }
    }
}
