//! Builds the one request of a delivery: `POST {base}/2010-04-01/Accounts/{AccountSid}/
//! Messages.json`, form-encoded, with HTTP Basic auth (the Account SID and Auth Token, or an
//! API key and its secret).
//!
//! The form keys are the spec's PascalCase names (`To`, `From`, `MessagingServiceSid`,
//! `Body`, repeated `MediaUrl`, `StatusCallback`, `ValidityPeriod`); the spec test in
//! `spec_check.rs` holds them to the vendored OpenAPI file.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use herald_plugin_api::{Content, HttpRequest, Message, Outcome, SmsContent};
use herald_plugin_kit::outcome::wrong_channel;

use crate::config::{Config, Credentials};

/// The query parameter added to `StatusCallback` so callbacks carry Herald's message id.
pub const MESSAGE_ID_PARAM: &str = "message_id";

/// The `Messages.json` URL for this account.
pub fn messages_url(config: &Config) -> String {
    format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        config.base_url.url, config.account_sid
    )
}

/// The `Authorization` header value.
pub fn basic_auth(config: &Config) -> String {
    let (user, password) = match &config.credentials {
        Credentials::AuthToken(token) => (config.account_sid.as_str(), token.expose()),
        Credentials::ApiKey { sid, secret } => (sid.as_str(), secret.expose()),
    };
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// The form fields for `sms` to `message.to`, in the order they are sent.
pub fn form_fields(
    config: &Config,
    message: &Message,
    sms: &SmsContent,
) -> Vec<(&'static str, String)> {
    let mut fields = vec![("To", message.to.clone())];
    // A message's own sender overrides `from`; with a Messaging Service it is sent besides
    // the service's SID and must be one of the service's senders.
    if let Some(from) = sms.from.as_ref().or(config.from.as_ref()) {
        fields.push(("From", from.clone()));
    }
    if let Some(sid) = &config.messaging_service_sid {
        fields.push(("MessagingServiceSid", sid.clone()));
    }
    if !sms.body.is_empty() {
        fields.push(("Body", sms.body.clone()));
    }
    for url in &sms.media_urls {
        fields.push(("MediaUrl", url.clone()));
    }
    if let Some(callback) = &config.status_callback {
        fields.push(("StatusCallback", status_callback_url(callback, &message.id)));
    }
    if let Some(seconds) = config.validity_period {
        fields.push(("ValidityPeriod", seconds.to_string()));
    }
    fields
}

/// The instance's webhook URL with Herald's message id as a query parameter, so a status
/// callback names the message even before its `sid` is recorded.
fn status_callback_url(webhook_url: &str, message_id: &str) -> String {
    let sep = if webhook_url.contains('?') { '&' } else { '?' };
    let id: String = form_urlencoded::byte_serialize(message_id.as_bytes()).collect();
    format!("{webhook_url}{sep}{MESSAGE_ID_PARAM}={id}")
}

/// The create-message request for `message`, or the outcome when this provider cannot
/// carry it at all (a route sent it a message of another channel).
pub fn build(config: &Config, message: &Message) -> Result<HttpRequest, Outcome> {
    let Content::Sms(sms) = &message.content else {
        return Err(wrong_channel("twilio", "sms", message));
    };
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (name, value) in form_fields(config, message, sms) {
        form.append_pair(name, &value);
    }
    Ok(HttpRequest::new("POST", messages_url(config))
        .header("authorization", basic_auth(config))
        .header("accept", "application/json")
        .form(form.finish()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::tests::{ACCOUNT, API_KEY, SERVICE, TOKEN, WEBHOOK_URL, provider};
    use expect_test::expect;
    use herald_plugin_api::EmailContent;
    use serde_json::{Value, json};

    pub fn config(settings: Value, webhook_url: Option<&str>) -> Config {
        Config::load(&provider(settings, webhook_url))
            .unwrap()
            .config
    }

    pub fn sms(id: &str, to: &str, body: &str, media: &[&str]) -> Message {
        Message {
            id: id.into(),
            to: to.into(),
            content: Content::Sms(SmsContent {
                from: None,
                body: body.into(),
                media_urls: media.iter().map(|m| m.to_string()).collect(),
            }),
            tags: vec!["rsvp".into()],
            created_at: 1_700_000_000_000,
        }
    }

    /// The request as one readable block: request line, headers, raw body, decoded body.
    pub fn render(r: &HttpRequest) -> String {
        let mut out = format!("{} {}\n", r.method, r.url);
        for (name, value) in &r.headers {
            out += &format!("{name}: {value}\n");
        }
        out += &format!("\n{}\n--- decoded\n", r.body);
        for (name, value) in form_urlencoded::parse(r.body.as_bytes()) {
            out += &format!("{name} = {value}\n");
        }
        out
    }

    #[test]
    fn auth_token_and_from() {
        let c = config(
            json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100"}),
            None,
        );
        let r = build(
            &c,
            &sms(
                "01HZX",
                "+15550001111",
                "Will you come? Reply YES or NO & more",
                &[],
            ),
        )
        .unwrap();
        assert_eq!(
            basic_auth(&c),
            format!("Basic {}", STANDARD.encode(format!("{ACCOUNT}:{TOKEN}")))
        );
        expect![[r#"
            POST https://api.twilio.com/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json
            authorization: Basic QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjp0b2stNWVjcmV0LWF1dGgtdG9rZW4=
            accept: application/json
            content-type: application/x-www-form-urlencoded

            To=%2B15550001111&From=%2B14155550100&Body=Will+you+come%3F+Reply+YES+or+NO+%26+more
            --- decoded
            To = +15550001111
            From = +14155550100
            Body = Will you come? Reply YES or NO & more
        "#]]
        .assert_eq(&render(&r));
    }

    #[test]
    fn api_key_messaging_service_media_callback_and_base_url() {
        let c = config(
            json!({
                "account_sid": ACCOUNT, "api_key_sid": API_KEY, "api_key_secret": "api-secret",
                "webhook_auth_token": TOKEN, "messaging_service_sid": SERVICE,
                "base_url": "http://127.0.0.1:8099/twilio/", "validity_period": 600,
            }),
            Some(WEBHOOK_URL),
        );
        assert_eq!(
            basic_auth(&c),
            format!("Basic {}", STANDARD.encode(format!("{API_KEY}:api-secret")))
        );
        let m = sms(
            "01HZY",
            "+15550001111",
            "Our photos ✨",
            &[
                "https://cdn.example.com/a.jpg",
                "https://cdn.example.com/b.png?s=1&t=2",
            ],
        );
        expect![[r#"
            POST http://127.0.0.1:8099/twilio/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json
            authorization: Basic U0swMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjphcGktc2VjcmV0
            accept: application/json
            content-type: application/x-www-form-urlencoded

            To=%2B15550001111&MessagingServiceSid=MG0123456789abcdef0123456789abcdef&Body=Our+photos+%E2%9C%A8&MediaUrl=https%3A%2F%2Fcdn.example.com%2Fa.jpg&MediaUrl=https%3A%2F%2Fcdn.example.com%2Fb.png%3Fs%3D1%26t%3D2&StatusCallback=https%3A%2F%2Fhooks.example.com%2Fwebhooks%2Fsms%3Fmessage_id%3D01HZY&ValidityPeriod=600
            --- decoded
            To = +15550001111
            MessagingServiceSid = MG0123456789abcdef0123456789abcdef
            Body = Our photos ✨
            MediaUrl = https://cdn.example.com/a.jpg
            MediaUrl = https://cdn.example.com/b.png?s=1&t=2
            StatusCallback = https://hooks.example.com/webhooks/sms?message_id=01HZY
            ValidityPeriod = 600
        "#]]
        .assert_eq(&render(&build(&c, &m).unwrap()));
    }

    #[test]
    fn message_from_goes_with_the_messaging_service_and_media_only_has_no_body() {
        // A message's own sender is sent besides the service (it must be in its pool).
        let c = config(
            json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "messaging_service_sid": SERVICE}),
            None,
        );
        let mut m = sms(
            "01HZZ",
            "+15550001111",
            "",
            &["https://cdn.example.com/a.jpg"],
        );
        if let Content::Sms(s) = &mut m.content {
            s.from = Some("Herald".into());
        }
        let Content::Sms(s) = &m.content else {
            unreachable!()
        };
        assert_eq!(
            form_fields(&c, &m, s),
            vec![
                ("To", "+15550001111".to_string()),
                ("From", "Herald".to_string()),
                ("MessagingServiceSid", SERVICE.to_string()),
                ("MediaUrl", "https://cdn.example.com/a.jpg".to_string()),
            ]
        );
    }

    #[test]
    fn callback_url_keeps_an_existing_query() {
        assert_eq!(
            status_callback_url("https://h.example.com/webhooks/sms?k=1", "01H"),
            "https://h.example.com/webhooks/sms?k=1&message_id=01H"
        );
    }

    #[test]
    fn other_channels_go_to_the_next_provider() {
        let c = config(
            json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100"}),
            None,
        );
        let mut m = sms("01J", "a@example.com", "", &[]);
        m.content = Content::Email(EmailContent::default());
        assert_eq!(
            build(&c, &m).unwrap_err(),
            Outcome::provider_failure("twilio delivers sms only, not email (check [routes])")
        );
    }
}
