//! Twilio's messaging webhooks, after the signature check: delivery-status callbacks
//! (`MessageSid`, `MessageStatus`, `ErrorCode`) become [`StatusUpdate`]s, incoming messages
//! (`SmsStatus=received`, or a `Body` without `MessageStatus`) become [`InboundMessage`]s
//! with opt-out / opt-in detection, and each gets the answer Twilio expects.
//!
//! **Opt-out and opt-in** mirror what Twilio itself did with the message, so Herald's
//! suppression list agrees with Twilio's block list: with Advanced Opt-Out, Twilio says so
//! in `OptOutType` (`STOP`, `START`, `HELP`; localized and custom keywords included), which
//! is authoritative; without it, Twilio's default lists apply (`keywords::TWILIO`). A
//! message that is a default opt-out word always opts out, whatever `OptOutType` says.
//!
//! **`YES` is an opt-in**, because it is one to Twilio: a guest who once sent STOP and now
//! answers "YES" to an invitation is re-subscribed by Twilio (and told so by Twilio's
//! auto-reply), so Herald lifts its suppression too rather than refuse messages Twilio
//! would now deliver. For a number that never opted out, Twilio changes nothing and
//! neither does the opt-in (there is nothing to lift). The message is still a reply: its
//! body reaches the host, and reads as an RSVP "yes" like any other. Only STOP-type
//! keywords are never answers.
//!
//! Which key verifies the signature, and the signature scheme itself, live in `config.rs`
//! and `signature.rs`.

use herald_plugin_api::keywords::{self, Keyword};
use herald_plugin_api::{
    Channel, InboundMessage, StatusUpdate, UnixMillis, UpdateKind, WebhookError, WebhookOutput,
    WebhookRequest, WebhookResponse,
};
use serde_json::Value;

use crate::config::{Config, Credentials};
use crate::request::MESSAGE_ID_PARAM;
use crate::signature::{self, HEADER, SignedBody};
use crate::url::{query_pairs, query_param};

/// Empty TwiML: "received, no reply".
pub const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;

/// What a webhook produced, with a note for the log when it was deliberately ignored.
#[derive(Debug)]
pub struct Handled {
    pub output: WebhookOutput,
    pub ignored: Option<String>,
}

/// Verifies and parses one webhook for the instance `name`.
pub fn handle(
    config: &Config,
    name: &str,
    request: &WebhookRequest,
    now: UnixMillis,
) -> Result<Handled, WebhookError> {
    let Some(token) = &config.webhook_token else {
        let why = match config.credentials {
            Credentials::ApiKey { .. } => "it sends with an API key",
            Credentials::AuthToken(_) => "it has no Auth Token",
        };
        return Err(WebhookError::Unauthorized(format!(
            "provider {name:?} cannot verify Twilio webhooks because {why}: set \
             webhook_auth_token = \"${{TWILIO_AUTH_TOKEN}}\" (the account's Auth Token)"
        )));
    };
    let signed = signature::verify(
        token.expose(),
        &request.url,
        &request.body,
        request.header(HEADER),
    )
    .map_err(|e| WebhookError::Unauthorized(e.to_string()))?;

    let params = match signed {
        SignedBody::Json => json_params(&request.body)?,
        SignedBody::Form(_) if request.method.eq_ignore_ascii_case("GET") => {
            query_pairs(&request.url)
        }
        SignedBody::Form(params) => params,
    };
    let p = Params(&params);

    let message_status = p.get("MessageStatus");
    let status = message_status.or(p.get("SmsStatus"));
    match status.map(str::to_ascii_lowercase).as_deref() {
        Some("received") => inbound(&p),
        None if p.has("Body") => inbound(&p),
        Some("receiving") => Ok(ignored("an incoming message still arriving".into())),
        Some(status) => status_callback(config, &p, status, &request.url, now),
        None => Err(WebhookError::BadRequest(
            "neither MessageStatus nor Body: not a Twilio messaging webhook".into(),
        )),
    }
}

/// Form-like access to the parameters: the first non-empty value of a name.
struct Params<'a>(&'a [(String, String)]);

impl Params<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    fn required(&self, name: &str, what: &str) -> Result<&str, WebhookError> {
        self.get(name)
            .ok_or_else(|| WebhookError::BadRequest(format!("{what} without {name}")))
    }
}

/// Top-level scalars of a JSON object body, as strings.
fn json_params(body: &str) -> Result<Vec<(String, String)>, WebhookError> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(body) else {
        return Err(WebhookError::BadRequest(
            "a bodySHA256 webhook whose body is not a JSON object".into(),
        ));
    };
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s)),
            Value::Number(n) => Some((k, n.to_string())),
            Value::Bool(b) => Some((k, b.to_string())),
            _ => None,
        })
        .collect())
}

fn ignored(why: String) -> Handled {
    Handled {
        output: WebhookOutput {
            updates: vec![],
            inbound: vec![],
            response: WebhookResponse::ok(),
        },
        ignored: Some(why),
    }
}

/// An asynchronous error code of providers.md §3: meaning, and whether it is worth
/// suppressing the recipient (a dead or unreachable number, or an opt-out).
fn error_code_info(code: &str) -> Option<(&'static str, &'static str, bool)> {
    Some(match code {
        "30001" => ("queue overflow", "retryable", false),
        "30002" => ("account suspended", "permanent (config)", false),
        "30003" => ("unreachable handset", "retryable", false),
        "30004" => ("message blocked", "permanent", false),
        "30005" => ("unknown or inactive destination handset", "permanent", true),
        "30006" => ("landline or unreachable carrier", "permanent", true),
        "30007" => ("filtered by the carrier", "permanent", false),
        "30008" => ("unknown error", "retryable", false),
        "30034" => (
            "US A2P 10DLC number not registered",
            "permanent (config)",
            false,
        ),
        "21610" => ("recipient opted out", "permanent", true),
        _ => return None,
    })
}

/// Asynchronous error codes Twilio documents as worth a new send after a while (providers.md
/// §3): the handset was off or out of coverage (30003), or the carrier gave no reason
/// (30008). Only for `undelivered`: the carrier, not Twilio, gave up.
const RESEND_CODES: [&str; 2] = ["30003", "30008"];

/// The failure detail and whether to suppress the recipient.
fn failure(status: &str, code: Option<&str>, message: Option<&str>) -> (String, bool) {
    let (mut detail, suppress) = match code {
        Some(code) => match error_code_info(code) {
            Some((meaning, class, suppress)) => (
                format!("{status}: ErrorCode {code} ({meaning}; {class})"),
                suppress,
            ),
            None => (format!("{status}: ErrorCode {code}"), false),
        },
        None => (status.to_string(), false),
    };
    if let Some(m) = message {
        detail = format!("{detail}: {m}");
    }
    (detail, suppress)
}

fn status_callback(
    config: &Config,
    p: &Params<'_>,
    status: &str,
    url: &str,
    now: UnixMillis,
) -> Result<Handled, WebhookError> {
    let sid = match p.get("MessageSid").or(p.get("SmsSid")) {
        Some(sid) => sid,
        None => p.required("MessageSid", "a status callback")?,
    };
    let (kind, detail, suppress) = match status {
        "accepted" | "scheduled" | "queued" | "sending" => {
            // Herald already counts the message as sent from the API's answer.
            return Ok(ignored(format!("status {status} of {sid}")));
        }
        "sent" => (UpdateKind::Sent, None, false),
        "delivered" => (UpdateKind::Delivered, None, false),
        "partially_delivered" => (
            UpdateKind::Delivered,
            Some("partially delivered".to_string()),
            false,
        ),
        "read" => (UpdateKind::Opened, None, false),
        "undelivered" | "failed" | "canceled" => {
            let code = p.get("ErrorCode");
            let (detail, suppress) = failure(status, code, p.get("ErrorMessage"));
            // The host sends again only if the message's attempts and time-to-live allow
            // it; otherwise a resend fails the message like `Failed`.
            let kind = match config.resend_after_ms {
                Some(after_ms)
                    if status == "undelivered"
                        && code.is_some_and(|c| RESEND_CODES.contains(&c)) =>
                {
                    UpdateKind::Resend { after_ms }
                }
                _ => UpdateKind::Failed,
            };
            (kind, Some(detail), suppress)
        }
        other => return Ok(ignored(format!("unknown status {other:?} of {sid}"))),
    };
    Ok(Handled {
        output: WebhookOutput {
            updates: vec![StatusUpdate {
                provider_message_id: Some(sid.to_string()),
                message_id: query_param(url, MESSAGE_ID_PARAM).filter(|id| !id.is_empty()),
                kind,
                // One callback per (message, status): the dedupe key Twilio documents.
                event_id: Some(format!("{sid}:{status}")),
                at: Some(now),
                detail,
                suppress,
            }],
            inbound: vec![],
            response: WebhookResponse::ok(),
        },
        ignored: None,
    })
}

/// `Some(true)` for an opt-out, `Some(false)` for an opt-in, `None` for anything else
/// (see the module comment).
fn opt_out(body: &str, opt_out_type: Option<&str>) -> Option<bool> {
    if keywords::TWILIO.is_opt_out(body) {
        return Some(true);
    }
    let by_type = opt_out_type.map(|t| t.trim().to_ascii_uppercase());
    match by_type.as_deref() {
        Some("STOP") => return Some(true),
        Some("START") => return Some(false),
        Some("HELP") => return None,
        _ => {}
    }
    match keywords::TWILIO.classify(body) {
        Some(Keyword::OptOut) => Some(true),
        Some(Keyword::OptIn) => Some(false),
        Some(Keyword::Help) | None => None,
    }
}

fn inbound(p: &Params<'_>) -> Result<Handled, WebhookError> {
    let from = p.required("From", "an incoming message")?;
    let to = p.required("To", "an incoming message")?;
    let body = p.get("Body").unwrap_or_default();
    Ok(Handled {
        output: WebhookOutput {
            updates: vec![],
            inbound: vec![InboundMessage {
                channel: Channel::Sms,
                from: from.to_string(),
                to: to.to_string(),
                body: body.to_string(),
                provider_message_id: p
                    .get("MessageSid")
                    .or(p.get("SmsMessageSid"))
                    .or(p.get("SmsSid"))
                    .map(str::to_string),
                opt_out: opt_out(body, p.get("OptOutType")),
            }],
            response: WebhookResponse {
                status: 200,
                content_type: Some("text/xml".into()),
                body: EMPTY_TWIML.into(),
            },
        },
        ignored: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{ACCOUNT, API_KEY, TOKEN, WEBHOOK_URL};
    use crate::request::tests::config;
    use crate::signature::{body_hash, compute};
    use serde_json::json;

    const NOW: UnixMillis = 1_700_000_000_000;
    const SID: &str = "SM0123456789abcdef0123456789abcdef";

    fn auth_token_config() -> Config {
        config(
            json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+15550002222"}),
            Some(WEBHOOK_URL),
        )
    }

    /// A POST as Twilio would send it: `body` signed with `token` over `url`.
    fn signed(token: &str, url: &str, body: &str) -> WebhookRequest {
        let params: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        WebhookRequest {
            method: "POST".into(),
            url: url.into(),
            headers: vec![
                (
                    "content-type".into(),
                    "application/x-www-form-urlencoded".into(),
                ),
                ("x-twilio-signature".into(), compute(token, url, &params)),
                ("i-twilio-idempotency-token".into(), "b0c3a5e2-token".into()),
            ],
            body: body.into(),
        }
    }

    fn run(body: &str) -> Handled {
        let url = format!("{WEBHOOK_URL}?message_id=01HZX");
        handle(&auth_token_config(), "sms", &signed(TOKEN, &url, body), NOW).unwrap()
    }

    fn update(body: &str) -> StatusUpdate {
        let h = run(body);
        assert_eq!(h.output.response, WebhookResponse::ok());
        assert!(h.output.inbound.is_empty());
        let [u] = <[StatusUpdate; 1]>::try_from(h.output.updates).unwrap();
        u
    }

    fn callback(status: &str, error_code: Option<&str>) -> String {
        let code = error_code
            .map(|c| format!("&ErrorCode={c}"))
            .unwrap_or_default();
        format!(
            "MessageSid={SID}&MessageStatus={status}{code}&To=%2B15550001111\
             &From=%2B15550002222&AccountSid={ACCOUNT}&ApiVersion=2010-04-01"
        )
    }

    #[test]
    fn sample_status_callback_undelivered_30006() {
        // providers.md §3 sample, with full SIDs.
        let u = update(&callback("undelivered", Some("30006")));
        assert_eq!(
            u,
            StatusUpdate {
                provider_message_id: Some(SID.into()),
                message_id: Some("01HZX".into()),
                kind: UpdateKind::Failed,
                event_id: Some(format!("{SID}:undelivered")),
                at: Some(NOW),
                detail: Some(
                    "undelivered: ErrorCode 30006 (landline or unreachable carrier; permanent)"
                        .into()
                ),
                suppress: true,
            }
        );
    }

    #[test]
    fn status_table() {
        let resend = UpdateKind::Resend {
            after_ms: crate::config::DEFAULT_RESEND_AFTER_MS,
        };
        let rows: [(&str, Option<&str>, UpdateKind, bool); 12] = [
            ("sent", None, UpdateKind::Sent, false),
            ("delivered", None, UpdateKind::Delivered, false),
            ("partially_delivered", None, UpdateKind::Delivered, false),
            ("read", None, UpdateKind::Opened, false),
            ("failed", Some("30005"), UpdateKind::Failed, true),
            ("failed", Some("21610"), UpdateKind::Failed, true),
            ("undelivered", Some("30003"), resend, false),
            ("undelivered", Some("30007"), UpdateKind::Failed, false),
            ("failed", None, UpdateKind::Failed, false),
            ("canceled", None, UpdateKind::Failed, false),
            ("undelivered", Some("30008"), resend, false),
            // Twilio itself failed it: not a carrier's temporary failure.
            ("failed", Some("30008"), UpdateKind::Failed, false),
        ];
        for (status, code, kind, suppress) in rows {
            let u = update(&callback(status, code));
            assert_eq!((u.kind, u.suppress), (kind, suppress), "{status} {code:?}");
            assert_eq!(u.event_id, Some(format!("{SID}:{status}")));
        }
        let u = update(&callback("undelivered", Some("30003")));
        assert_eq!(
            u.detail.as_deref(),
            Some("undelivered: ErrorCode 30003 (unreachable handset; retryable)")
        );
        let u = update(&format!(
            "{}&ErrorMessage=Carrier+said+no",
            callback("failed", Some("39999"))
        ));
        assert_eq!(
            u.detail.as_deref(),
            Some("failed: ErrorCode 39999: Carrier said no")
        );
    }

    #[test]
    fn in_flight_and_unknown_statuses_are_acknowledged_and_ignored() {
        for status in [
            "queued",
            "accepted",
            "sending",
            "scheduled",
            "brand_new_status",
        ] {
            let h = run(&callback(status, None));
            assert_eq!(h.output.response, WebhookResponse::ok(), "{status}");
            assert!(h.output.updates.is_empty() && h.output.inbound.is_empty());
            assert!(h.ignored.is_some());
        }
    }

    #[test]
    fn legacy_sms_status_only() {
        let u = update(&format!("SmsSid={SID}&SmsStatus=delivered"));
        assert_eq!(u.kind, UpdateKind::Delivered);
        assert_eq!(u.provider_message_id.as_deref(), Some(SID));
    }

    #[test]
    fn sample_inbound_stop() {
        // providers.md §3 sample, with full SIDs.
        let h = run(&format!(
            "MessageSid=SM2123456789abcdef0123456789abcdef&From=%2B15550001111\
             &To=%2B15550002222&Body=STOP&NumMedia=0&AccountSid={ACCOUNT}"
        ));
        assert!(h.output.updates.is_empty());
        assert_eq!(
            h.output.inbound,
            vec![InboundMessage {
                channel: Channel::Sms,
                from: "+15550001111".into(),
                to: "+15550002222".into(),
                body: "STOP".into(),
                provider_message_id: Some("SM2123456789abcdef0123456789abcdef".into()),
                opt_out: Some(true),
            }]
        );
        assert_eq!(
            h.output.response,
            WebhookResponse {
                status: 200,
                content_type: Some("text/xml".into()),
                body: r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#.into(),
            }
        );
    }

    #[test]
    fn opt_out_keywords() {
        let cases: [(&str, Option<&str>, Option<bool>); 24] = [
            ("STOP", None, Some(true)),
            ("  stop \n", None, Some(true)),
            ("Stop.", None, Some(true)),
            ("stopall", None, Some(true)),
            ("Unsubscribe", None, Some(true)),
            ("cancel", None, Some(true)),
            ("END", None, Some(true)),
            ("quit!", None, Some(true)),
            // Twilio's list is longer than the six Herald once knew.
            ("revoke", None, Some(true)),
            ("OPTOUT", None, Some(true)),
            // Advanced Opt-Out: a custom or localized keyword, reported by type.
            ("ARRET", Some("STOP"), Some(true)),
            ("No thanks, please stop", Some("STOP"), Some(true)),
            ("start", None, Some(false)),
            ("UNSTOP", None, Some(false)),
            // YES opts in at Twilio, so it does here (and is still a reply).
            ("YES", None, Some(false)),
            ("yes", Some("START"), Some(false)),
            ("SUBSCRIBE", Some("START"), Some(false)),
            // Not exactly a keyword: no subscription change.
            ("Yes!", None, None),
            ("Yes, 2 of us", None, None),
            ("STOP by at 5?", None, None),
            ("HELP", Some("HELP"), None),
            ("info", None, None),
            // A default STOP word always stops, whatever the type says.
            ("STOP", Some("HELP"), Some(true)),
            ("", None, None),
        ];
        for (body, kind, expected) in cases {
            assert_eq!(opt_out(body, kind), expected, "{body:?} {kind:?}");
        }
    }

    #[test]
    fn inbound_yes_is_a_reply_and_an_opt_in() {
        let h =
            run("MessageSid=SM3&SmsStatus=received&From=%2B15550001111&To=%2B15550002222&Body=YES");
        assert_eq!(h.output.inbound[0].body, "YES");
        assert_eq!(h.output.inbound[0].opt_out, Some(false));
    }

    #[test]
    fn inbound_by_get_reads_the_query() {
        let url = format!(
            "{WEBHOOK_URL}?MessageSid=SM4&From=%2B15550001111&To=%2B15550002222&Body=Yes+please"
        );
        let mut req = signed(TOKEN, &url, "");
        req.method = "GET".into();
        let h = handle(&auth_token_config(), "sms", &req, NOW).unwrap();
        assert_eq!(h.output.inbound[0].body, "Yes please");
        assert_eq!(
            h.output.inbound[0].provider_message_id.as_deref(),
            Some("SM4")
        );
    }

    #[test]
    fn json_body_variant() {
        let body = json!({"MessageSid": SID, "MessageStatus": "delivered"}).to_string();
        let url = format!("{WEBHOOK_URL}?bodySHA256={}", body_hash(&body));
        let req = WebhookRequest {
            method: "POST".into(),
            url: url.clone(),
            headers: vec![("X-Twilio-Signature".into(), compute(TOKEN, &url, &[]))],
            body,
        };
        let h = handle(&auth_token_config(), "sms", &req, NOW).unwrap();
        assert_eq!(h.output.updates[0].kind, UpdateKind::Delivered);
        assert_eq!(h.output.updates[0].message_id, None);
    }

    #[test]
    fn signature_is_required() {
        let c = auth_token_config();
        let body = callback("delivered", None);
        let mut req = signed(TOKEN, WEBHOOK_URL, &body);
        req.headers.retain(|(n, _)| n != "x-twilio-signature");
        let err = handle(&c, "sms", &req, NOW).unwrap_err();
        assert!(
            matches!(&err, WebhookError::Unauthorized(m) if m.contains("missing")),
            "{err:?}"
        );

        let forged = signed("not-the-token", WEBHOOK_URL, &body);
        assert!(matches!(
            handle(&c, "sms", &forged, NOW),
            Err(WebhookError::Unauthorized(_))
        ));

        let mut modified = signed(TOKEN, WEBHOOK_URL, &body);
        modified.body = body.replace("delivered", "failed");
        assert!(matches!(
            handle(&c, "sms", &modified, NOW),
            Err(WebhookError::Unauthorized(_))
        ));

        // Signed for another instance's URL.
        let mut moved = signed(TOKEN, WEBHOOK_URL, &body);
        moved.url = WEBHOOK_URL.replace("/sms", "/sms2");
        assert!(matches!(
            handle(&c, "sms", &moved, NOW),
            Err(WebhookError::Unauthorized(_))
        ));
    }

    #[test]
    fn api_key_needs_webhook_auth_token() {
        let settings = json!({
            "account_sid": ACCOUNT, "api_key_sid": API_KEY, "api_key_secret": "api-secret",
            "from": "+15550002222",
        });
        let c = config(settings.clone(), Some(WEBHOOK_URL));
        let req = signed(TOKEN, WEBHOOK_URL, &callback("delivered", None));
        let err = handle(&c, "sms", &req, NOW).unwrap_err();
        assert!(
            matches!(&err, WebhookError::Unauthorized(m) if m.contains("webhook_auth_token") && m.contains("\"sms\"")),
            "{err:?}"
        );

        let mut settings = settings;
        settings["webhook_auth_token"] = json!(TOKEN);
        let c = config(settings, Some(WEBHOOK_URL));
        assert_eq!(
            handle(&c, "sms", &req, NOW).unwrap().output.updates[0].kind,
            UpdateKind::Delivered
        );
    }

    #[test]
    fn signed_but_unparseable() {
        let c = auth_token_config();
        let err =
            |body: &str| handle(&c, "sms", &signed(TOKEN, WEBHOOK_URL, body), NOW).unwrap_err();
        assert!(matches!(err("Foo=1"), WebhookError::BadRequest(m) if m.contains("neither")));
        assert!(
            matches!(err("MessageStatus=delivered"), WebhookError::BadRequest(m) if m.contains("MessageSid"))
        );
        assert!(
            matches!(err("Body=hi&To=%2B15550002222"), WebhookError::BadRequest(m) if m.contains("From"))
        );
    }

    #[test]
    fn resend_after_sets_the_delay_and_zero_turns_resending_off() {
        let with = |resend_after: &str| {
            config(
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+15550002222",
                       "resend_after": resend_after}),
                Some(WEBHOOK_URL),
            )
        };
        let url = format!("{WEBHOOK_URL}?message_id=01HZX");
        let body = callback("undelivered", Some("30003"));
        let kind = |c: &Config| {
            let h = handle(c, "sms", &signed(TOKEN, &url, &body), NOW).unwrap();
            h.output.updates[0].kind
        };
        assert_eq!(kind(&with("1s")), UpdateKind::Resend { after_ms: 1_000 });
        assert_eq!(kind(&with("0s")), UpdateKind::Failed);
        let err = Config::validate(
            serde_json::from_value(json!({"account_sid": ACCOUNT, "auth_token": TOKEN,
                                          "from": "+15550002222", "resend_after": "soon"}))
            .unwrap(),
            None,
        )
        .unwrap_err();
        assert!(err.contains("resend_after"), "{err}");
    }
}
