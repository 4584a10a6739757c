//! Maps what came back from the create-message call to an [`Outcome`]: the synchronous
//! error table of providers.md §3/§8 (branching on Twilio's `code` first, the HTTP status
//! second), `Retry-After` in both its forms, and transport errors.
//!
//! Reasons carry Twilio's own message and code, never a credential.

use herald_plugin_api::http::retry_after_ms;
use herald_plugin_api::{HttpResponse, Outcome, TransportResponse, UnixMillis};
use herald_plugin_kit::outcome::Exchange;
use herald_plugin_kit::text::{REASON_CHARS, clip};
use serde::Deserialize;
use serde_json::Value;

/// Twilio error codes of the synchronous table, by class.
mod code {
    /// Too many concurrent requests: "never processed, always safe to retry".
    pub const TOO_MANY_REQUESTS: u32 = 20429;
    /// The recipient replied STOP: reject and suppress.
    pub const UNSUBSCRIBED: u32 = 21610;
    /// Wrong recipient: reject, no fallback.
    pub const RECIPIENT: [u32; 4] = [21211, 21612, 21614, 21635];
    /// Account or sender configuration: try the next provider of the route.
    pub const CONFIG: [u32; 4] = [20003, 21606, 21608, 21408];
}

/// The fields of a Twilio error body, classic (`code`, `message`, `more_info`, `status`) or
/// RFC 9457 problem+json (`type`, `title`, `status`, `code`, `detail`).
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    more_info: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

impl ErrorBody {
    fn code(&self) -> Option<u32> {
        match self.code.as_ref()? {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn text(&self) -> Option<String> {
        let main = match (&self.message, &self.title, &self.detail) {
            (Some(m), _, _) => m.clone(),
            (None, Some(t), Some(d)) => format!("{t}: {d}"),
            (None, Some(t), None) => t.clone(),
            (None, None, Some(d)) => d.clone(),
            (None, None, None) => return None,
        };
        let link = [&self.more_info, &self.kind]
            .into_iter()
            .flatten()
            .find(|l| l.starts_with("https://") || l.starts_with("http://"));
        Some(match link {
            Some(link) => format!("{main} ({link})"),
            None => main,
        })
    }
}

/// The create-message call, as failure reasons name it.
const CREATE: Exchange<'static> = Exchange::new("twilio: create message")
    .retry_note("a timeout after sending may duplicate the SMS: Twilio has no idempotency key");

/// The outcome of the create call.
pub fn classify(response: &TransportResponse, now: UnixMillis) -> Outcome {
    match CREATE.http(response) {
        Ok(r) => classify_http(r, now),
        Err(outcome) => outcome,
    }
}

#[derive(Deserialize)]
struct Created {
    #[serde(default)]
    sid: Option<String>,
}

fn classify_http(r: &HttpResponse, now: UnixMillis) -> Outcome {
    if (200..300).contains(&r.status) {
        // A 2xx means Twilio took the message; never retry it, even without a readable sid.
        let sid = serde_json::from_str::<Created>(&r.body)
            .ok()
            .and_then(|c| c.sid)
            .filter(|s| !s.is_empty());
        return Outcome::Accepted {
            provider_message_id: sid,
            delivered: false,
        };
    }

    let error: ErrorBody = serde_json::from_str(&r.body).unwrap_or_default();
    let code = error.code();
    let text = error.text().unwrap_or_else(|| snippet(&r.body));
    let reason = match code {
        Some(c) => format!("twilio HTTP {} error {c}: {text}", r.status),
        None => format!("twilio HTTP {}: {text}", r.status),
    };
    let after_ms = r.header("retry-after").and_then(|v| retry_after_ms(v, now));

    if r.status == 429 || code == Some(code::TOO_MANY_REQUESTS) {
        // Concurrency limit: says nothing about Twilio's health.
        return Outcome::Retry {
            after_ms,
            reason,
            breaker: false,
        };
    }
    if r.status >= 500 || r.status == 408 {
        return Outcome::Retry {
            after_ms,
            reason,
            breaker: true,
        };
    }
    match code {
        Some(code::UNSUBSCRIBED) => {
            return Outcome::Rejected {
                reason: format!("{reason} (the recipient opted out)"),
                bounced: false,
                suppress: true,
            };
        }
        Some(c) if code::RECIPIENT.contains(&c) => return Outcome::rejected(reason),
        Some(c) if code::CONFIG.contains(&c) => return Outcome::provider_failure(reason),
        _ => {}
    }
    match r.status {
        // 401: credentials; 403/404: the account, its permissions or the base_url path are
        // wrong. None of these is the message's fault, so the next provider may succeed.
        401 | 403 | 404 => Outcome::provider_failure(reason),
        400..=499 => Outcome::rejected(reason),
        _ => Outcome::provider_failure(format!("{reason} (unexpected status)")),
    }
}

/// A short, single-line excerpt of a non-JSON body (runs of white space folded).
fn snippet(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return "(empty body)".into();
    }
    clip(&line, REASON_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_plugin_api::TransportErrorKind;
    use herald_plugin_kit::testing::{RETRYABLE_KINDS, http_response, smtp_reply, transport_error};
    use serde_json::json;

    const NOW: UnixMillis = 1_445_412_470_000; // 10 s before Wed, 21 Oct 2015 07:28:00 GMT

    fn twilio_error(status: u16, code: u32, message: &str) -> TransportResponse {
        let body = json!({
            "code": code, "message": message, "status": status,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        });
        http_response(status, &[], &body.to_string())
    }

    fn class(o: &Outcome) -> &'static str {
        match o {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Retry { breaker: true, .. } => "retry",
            Outcome::Retry { breaker: false, .. } => "retry-no-breaker",
            Outcome::ProviderFailure { .. } => "provider-failure",
            Outcome::Rejected { suppress: true, .. } => "rejected-suppress",
            Outcome::Rejected { .. } => "rejected",
        }
    }

    fn reason(o: &Outcome) -> &str {
        match o {
            Outcome::Retry { reason, .. }
            | Outcome::ProviderFailure { reason }
            | Outcome::Rejected { reason, .. } => reason,
            Outcome::Accepted { .. } => "",
        }
    }

    #[test]
    fn created_gives_the_sid() {
        let body = json!({"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued",
                          "error_code": null});
        assert_eq!(
            classify(&http_response(201, &[], &body.to_string()), NOW),
            Outcome::Accepted {
                provider_message_id: Some("SM0123456789abcdef0123456789abcdef".into()),
                delivered: false,
            }
        );
        let mms = json!({"sid": "MM0123456789abcdef0123456789abcdef", "status": "accepted"});
        assert!(matches!(
            classify(&http_response(201, &[], &mms.to_string()), NOW),
            Outcome::Accepted { provider_message_id: Some(id), .. } if id.starts_with("MM")
        ));
        // Taken but unreadable: accepted all the same (a retry would send the SMS twice).
        assert_eq!(
            classify(&http_response(201, &[], "<html>"), NOW),
            Outcome::Accepted {
                provider_message_id: None,
                delivered: false
            }
        );
    }

    #[test]
    fn every_row_of_the_sync_error_table() {
        let rows: [(u16, u32, &str); 12] = [
            (429, 20429, "retry-no-breaker"),
            (401, 20003, "provider-failure"),
            (400, 21211, "rejected"),
            (400, 21408, "provider-failure"),
            (400, 21606, "provider-failure"),
            (400, 21608, "provider-failure"),
            (400, 21610, "rejected-suppress"),
            (400, 21612, "rejected"),
            (400, 21614, "rejected"),
            (400, 21635, "rejected"),
            (500, 20500, "retry"),
            (503, 20503, "retry"),
        ];
        for (status, code, expected) in rows {
            let o = classify(&twilio_error(status, code, "Something Twilio said"), NOW);
            assert_eq!(class(&o), expected, "{status} {code}: {o:?}");
            let r = reason(&o);
            assert!(r.contains(&format!("error {code}")), "{r}");
            assert!(r.contains("Something Twilio said"), "{r}");
            assert!(r.contains(&format!("docs/errors/{code}")), "{r}");
        }
    }

    #[test]
    fn status_only_rows() {
        let forbidden = json!({"code": 20403, "message": "Permission denied", "status": 403});
        let not_found = json!({"code": 20404, "message": "Not found", "status": 404});
        let rows: [(u16, String, &str); 9] = [
            (429, String::new(), "retry-no-breaker"),
            (500, String::new(), "retry"),
            (502, "<html>Bad Gateway</html>".into(), "retry"),
            (504, String::new(), "retry"),
            (408, String::new(), "retry"),
            (401, String::new(), "provider-failure"),
            (403, forbidden.to_string(), "provider-failure"),
            (404, not_found.to_string(), "provider-failure"),
            (302, String::new(), "provider-failure"),
        ];
        for (status, body, expected) in rows {
            let o = classify(&http_response(status, &[], &body), NOW);
            assert_eq!(class(&o), expected, "{status}: {o:?}");
        }
        let o = classify(&http_response(502, &[], "<html>Bad\n  Gateway</html>"), NOW);
        assert_eq!(reason(&o), "twilio HTTP 502: <html>Bad Gateway</html>");
        let o = classify(&http_response(503, &[], ""), NOW);
        assert_eq!(reason(&o), "twilio HTTP 503: (empty body)");
    }

    #[test]
    fn other_4xx_is_rejected_with_twilio_message() {
        let o = classify(
            &twilio_error(
                400,
                21617,
                "The concatenated message body exceeds the 1600 character limit",
            ),
            NOW,
        );
        assert_eq!(class(&o), "rejected");
        assert_eq!(
            reason(&o),
            "twilio HTTP 400 error 21617: The concatenated message body exceeds the 1600 \
             character limit (https://www.twilio.com/docs/errors/21617)"
        );
    }

    #[test]
    fn problem_json_bodies() {
        let body = json!({
            "type": "https://www.twilio.com/docs/errors/21211", "title": "Invalid 'To' Phone Number",
            "status": 400, "code": 21211, "detail": "The 'To' number +1555 is not valid",
        });
        let o = classify(
            &http_response(
                400,
                &[("content-type", "application/problem+json")],
                &body.to_string(),
            ),
            NOW,
        );
        assert_eq!(class(&o), "rejected");
        assert_eq!(
            reason(&o),
            "twilio HTTP 400 error 21211: Invalid 'To' Phone Number: The 'To' number +1555 is \
             not valid (https://www.twilio.com/docs/errors/21211)"
        );
        // A code given as a string still counts.
        let body = json!({"status": 400, "code": "21610", "title": "Unsubscribed recipient"});
        let o = classify(&http_response(400, &[], &body.to_string()), NOW);
        assert_eq!(class(&o), "rejected-suppress");
        let body = json!({"type": "about:blank", "title": "Bad Request", "status": 400});
        let o = classify(&http_response(400, &[], &body.to_string()), NOW);
        assert_eq!(reason(&o), "twilio HTTP 400: Bad Request");
    }

    #[test]
    fn retry_after_in_both_forms() {
        let after = |o: Outcome| match o {
            Outcome::Retry { after_ms, .. } => after_ms,
            other => panic!("not a retry: {other:?}"),
        };
        assert_eq!(
            after(classify(
                &http_response(429, &[("retry-after", "7")], ""),
                NOW
            )),
            Some(7_000)
        );
        assert_eq!(
            after(classify(
                &http_response(503, &[("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")], ""),
                NOW
            )),
            Some(10_000)
        );
        assert_eq!(
            after(classify(
                &twilio_error(429, 20429, "Too Many Requests"),
                NOW
            )),
            None
        );
        assert_eq!(
            after(classify(
                &http_response(500, &[("retry-after", "soon")], ""),
                NOW
            )),
            None
        );
    }

    #[test]
    fn transport_errors() {
        for kind in RETRYABLE_KINDS {
            let o = classify(&transport_error(kind, "boom"), NOW);
            assert_eq!(class(&o), "retry", "{kind:?}");
            assert_eq!(
                o,
                Outcome::retry(format!(
                    "twilio: create message failed ({kind:?}): boom (a timeout after sending \
                     may duplicate the SMS: Twilio has no idempotency key)"
                ))
            );
        }
        assert_eq!(
            classify(&transport_error(TransportErrorKind::Refused, "boom"), NOW),
            Outcome::provider_failure("twilio: create message refused by the host: boom")
        );
        let smtp = smtp_reply(250, None, "");
        assert_eq!(
            classify(&smtp, NOW),
            Outcome::provider_failure(
                "twilio: create message: got an SMTP reply to an HTTP request (host bug)"
            )
        );
    }
}
