//! What an APNs answer means for the message: the status/`reason` table of providers.md
//! (sections 5 and 8) mapped to Herald outcomes, the `ExpiredProviderToken` case that
//! needs a new provider token, `Retry-After` in both forms, and transport errors.

use herald_plugin_api::http::retry_after_ms;
use herald_plugin_api::{HttpResponse, Outcome, UnixMillis};
use herald_plugin_kit::outcome::Exchange;
use herald_plugin_kit::text::{REASON_CHARS, clip};
use serde::Deserialize;

use crate::config::Environment;

/// How an APNs answer ends the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Done(Outcome),
    /// 403 `ExpiredProviderToken`: drop the cached JWT, retry with a new one.
    ExpiredProviderToken(String),
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    reason: Option<String>,
    /// Unix ms at which APNs last knew the token was invalid (410 only).
    #[serde(default)]
    timestamp: Option<u64>,
}

fn rejected(reason: String, suppress: bool) -> Verdict {
    Verdict::Done(Outcome::Rejected {
        reason,
        bounced: false,
        suppress,
    })
}

fn retry(after_ms: Option<u64>, reason: String, breaker: bool) -> Verdict {
    Verdict::Done(Outcome::Retry {
        after_ms,
        reason,
        breaker,
    })
}

fn failure(reason: String) -> Verdict {
    Verdict::Done(Outcome::ProviderFailure { reason })
}

/// Maps APNs' answer. `sent_apns_id` is the `apns-id` the request carried, the provider id
/// should the answer lack the header.
pub fn classify(
    response: &HttpResponse,
    environment: Environment,
    sent_apns_id: Option<&str>,
    now: UnixMillis,
) -> Verdict {
    let status = response.status;
    if status == 200 {
        let id = response
            .header("apns-id")
            .map(str::to_string)
            .or_else(|| sent_apns_id.map(str::to_string));
        return Verdict::Done(Outcome::Accepted {
            provider_message_id: id,
            delivered: false,
        });
    }
    let body: ErrorBody = serde_json::from_str(&response.body).unwrap_or_default();
    let reason_code = body
        .reason
        .as_deref()
        .map(|r| clip(r, REASON_CHARS))
        .unwrap_or_default();
    let label = if reason_code.is_empty() {
        format!("APNs HTTP {status}")
    } else {
        format!("APNs {reason_code} (HTTP {status})")
    };
    let after = response
        .header("retry-after")
        .and_then(|v| retry_after_ms(v, now));

    match (status, reason_code.as_str()) {
        (400, "BadDeviceToken") => rejected(
            format!(
                "{label}: the device token is not valid for the {} environment (a token of a \
                 {} build belongs to an apns provider with environment = \"{}\")",
                environment.as_str(),
                match environment {
                    Environment::Production => "debug",
                    Environment::Sandbox => "release",
                },
                match environment {
                    Environment::Production => "sandbox",
                    Environment::Sandbox => "production",
                },
            ),
            true,
        ),
        (400, "DeviceTokenNotForTopic") => rejected(
            format!("{label}: the device token belongs to another app than the topic"),
            false,
        ),
        (400, "IdleTimeout") => retry(after, label, true),
        (400 | 404 | 405 | 413, _) => rejected(label, false),
        (403, "ExpiredProviderToken") => Verdict::ExpiredProviderToken(label),
        (403, "InvalidProviderToken" | "MissingProviderToken") => failure(format!(
            "{label}: check key_id, team_id and that the key is not revoked"
        )),
        (403, _) => failure(label),
        (410, _) => {
            let since = body
                .timestamp
                .map(|ts| format!(" (invalid since {ts} ms)"))
                .unwrap_or_default();
            rejected(
                format!("{label}: the device token is no longer active for the topic{since}"),
                true,
            )
        }
        // 429 says nothing about APNs' health: TooManyRequests (to this device) or
        // TooManyProviderTokenUpdates.
        (429, _) => retry(after, label, false),
        (408 | 500..=599, _) => retry(after, label, true),
        _ => failure(format!("{label}: unexpected answer")),
    }
}

/// The push request, as failure reasons name it. A transport error (including an HTTP/2
/// GOAWAY or stream reset before any answer, which the host reports as an I/O error) is a
/// retry; a request the host refused, a provider failure.
pub const SEND: Exchange<'static> = Exchange::new("APNs send");

#[cfg(test)]
mod tests {
    use super::*;
    use herald_plugin_api::TransportErrorKind;
    use herald_plugin_kit::testing::{RETRYABLE_KINDS, transport_error};

    const NOW: UnixMillis = 1_445_412_470_000; // 10 s before Wed, 21 Oct 2015 07:28:00 GMT

    fn answer(status: u16, reason: Option<&str>) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![(
                "apns-id".into(),
                "ABCDEF01-0000-0000-0000-000000000001".into(),
            )],
            body: reason
                .map(|r| format!(r#"{{"reason":"{r}"}}"#))
                .unwrap_or_default(),
        }
    }

    fn classify_prod(r: &HttpResponse) -> Verdict {
        classify(r, Environment::Production, Some("sent-id"), NOW)
    }

    fn rej(reason: &str, suppress: bool) -> Verdict {
        rejected(reason.into(), suppress)
    }

    fn ret(after_ms: Option<u64>, reason: &str, breaker: bool) -> Verdict {
        retry(after_ms, reason.into(), breaker)
    }

    fn fail(reason: &str) -> Verdict {
        failure(reason.into())
    }

    #[test]
    fn success_takes_the_apns_id_header() {
        assert_eq!(
            classify_prod(&answer(200, None)),
            Verdict::Done(Outcome::Accepted {
                provider_message_id: Some("ABCDEF01-0000-0000-0000-000000000001".into()),
                delivered: false
            })
        );
        let bare = HttpResponse {
            status: 200,
            headers: vec![],
            body: String::new(),
        };
        assert_eq!(
            classify_prod(&bare),
            Verdict::Done(Outcome::Accepted {
                provider_message_id: Some("sent-id".into()),
                delivered: false
            })
        );
    }

    #[test]
    fn error_table() {
        let bad_request_reasons = [
            "BadCollapseId",
            "BadExpirationDate",
            "BadMessageId",
            "BadPriority",
            "BadTopic",
            "DuplicateHeaders",
            "InvalidPushType",
            "MissingDeviceToken",
            "MissingTopic",
            "PayloadEmpty",
            "TopicDisallowed",
        ];
        let mut cases: Vec<(u16, Option<&str>, Verdict)> = vec![
            (
                400,
                Some("BadDeviceToken"),
                rej(
                    "APNs BadDeviceToken (HTTP 400): the device token is not valid for the \
                     production environment (a token of a debug build belongs to an apns \
                     provider with environment = \"sandbox\")",
                    true,
                ),
            ),
            (
                400,
                Some("DeviceTokenNotForTopic"),
                rej(
                    "APNs DeviceTokenNotForTopic (HTTP 400): the device token belongs to another \
                     app than the topic",
                    false,
                ),
            ),
            (
                400,
                Some("IdleTimeout"),
                ret(None, "APNs IdleTimeout (HTTP 400)", true),
            ),
            (
                403,
                Some("ExpiredProviderToken"),
                Verdict::ExpiredProviderToken("APNs ExpiredProviderToken (HTTP 403)".into()),
            ),
            (
                403,
                Some("InvalidProviderToken"),
                fail(
                    "APNs InvalidProviderToken (HTTP 403): check key_id, team_id and that the key \
                     is not revoked",
                ),
            ),
            (
                403,
                Some("MissingProviderToken"),
                fail(
                    "APNs MissingProviderToken (HTTP 403): check key_id, team_id and that the key \
                     is not revoked",
                ),
            ),
            (
                403,
                Some("BadCertificate"),
                fail("APNs BadCertificate (HTTP 403)"),
            ),
            (
                403,
                Some("BadCertificateEnvironment"),
                fail("APNs BadCertificateEnvironment (HTTP 403)"),
            ),
            (403, Some("Forbidden"), fail("APNs Forbidden (HTTP 403)")),
            (404, Some("BadPath"), rej("APNs BadPath (HTTP 404)", false)),
            (
                405,
                Some("MethodNotAllowed"),
                rej("APNs MethodNotAllowed (HTTP 405)", false),
            ),
            (
                410,
                Some("Unregistered"),
                rej(
                    "APNs Unregistered (HTTP 410): the device token is no longer active for the \
                     topic",
                    true,
                ),
            ),
            (
                410,
                Some("ExpiredToken"),
                rej(
                    "APNs ExpiredToken (HTTP 410): the device token is no longer active for the \
                     topic",
                    true,
                ),
            ),
            (
                413,
                Some("PayloadTooLarge"),
                rej("APNs PayloadTooLarge (HTTP 413)", false),
            ),
            (
                429,
                Some("TooManyProviderTokenUpdates"),
                ret(None, "APNs TooManyProviderTokenUpdates (HTTP 429)", false),
            ),
            (
                429,
                Some("TooManyRequests"),
                ret(None, "APNs TooManyRequests (HTTP 429)", false),
            ),
            (
                500,
                Some("InternalServerError"),
                ret(None, "APNs InternalServerError (HTTP 500)", true),
            ),
            (
                503,
                Some("ServiceUnavailable"),
                ret(None, "APNs ServiceUnavailable (HTTP 503)", true),
            ),
            (
                503,
                Some("Shutdown"),
                ret(None, "APNs Shutdown (HTTP 503)", true),
            ),
            (502, None, ret(None, "APNs HTTP 502", true)),
            (401, None, fail("APNs HTTP 401: unexpected answer")),
        ];
        for reason in bad_request_reasons {
            cases.push((
                400,
                Some(reason),
                rej(&format!("APNs {reason} (HTTP 400)"), false),
            ));
        }
        for (status, reason, expected) in cases {
            assert_eq!(
                classify_prod(&answer(status, reason)),
                expected,
                "{status} {reason:?}"
            );
        }
    }

    #[test]
    fn sandbox_bad_device_token_hint_and_410_timestamp() {
        let v = classify(
            &answer(400, Some("BadDeviceToken")),
            Environment::Sandbox,
            None,
            NOW,
        );
        assert_eq!(
            v,
            rej(
                "APNs BadDeviceToken (HTTP 400): the device token is not valid for the sandbox \
                 environment (a token of a release build belongs to an apns provider with \
                 environment = \"production\")",
                true
            )
        );
        let gone = HttpResponse {
            status: 410,
            headers: vec![],
            body: r#"{"reason":"Unregistered","timestamp":1700000000000}"#.into(),
        };
        assert_eq!(
            classify_prod(&gone),
            rej(
                "APNs Unregistered (HTTP 410): the device token is no longer active for the \
                 topic (invalid since 1700000000000 ms)",
                true
            )
        );
    }

    #[test]
    fn retry_after_in_both_forms() {
        let with = |status: u16, reason: &str, value: &str| {
            let mut r = answer(status, Some(reason));
            r.headers.push(("Retry-After".into(), value.into()));
            r
        };
        assert_eq!(
            classify_prod(&with(429, "TooManyRequests", "30")),
            ret(Some(30_000), "APNs TooManyRequests (HTTP 429)", false)
        );
        assert_eq!(
            classify_prod(&with(
                503,
                "ServiceUnavailable",
                "Wed, 21 Oct 2015 07:28:00 GMT"
            )),
            ret(Some(10_000), "APNs ServiceUnavailable (HTTP 503)", true)
        );
        assert_eq!(
            classify_prod(&with(
                500,
                "InternalServerError",
                "Wed, 21 Oct 2015 07:00:00 GMT"
            )),
            ret(Some(0), "APNs InternalServerError (HTTP 500)", true)
        );
        assert_eq!(
            classify_prod(&with(503, "Shutdown", "soon")),
            ret(None, "APNs Shutdown (HTTP 503)", true)
        );
    }

    #[test]
    fn transport_errors() {
        for kind in RETRYABLE_KINDS {
            assert_eq!(
                SEND.http(&transport_error(kind, "GOAWAY")),
                Err(Outcome::retry(format!(
                    "APNs send failed ({kind:?}): GOAWAY"
                )))
            );
        }
        assert_eq!(
            SEND.http(&transport_error(
                TransportErrorKind::Refused,
                "host not allowed"
            )),
            Err(Outcome::provider_failure(
                "APNs send refused by the host: host not allowed"
            ))
        );
    }
}
