//! `herald-twilio`: the Herald provider plugin for Twilio Programmable Messaging (SMS/MMS),
//! loaded by `heraldd` as `libherald_twilio.so`.
//!
//! Sans-IO, like every plugin: it describes the create-message request and reads the
//! answer; the host performs the HTTP. Module map:
//!
//! - [`config`]: the `[[providers]]` keys, validated once at load (SIDs, credentials,
//!   sender, `base_url`, status callbacks, webhook verification key).
//! - [`request`]: the form-encoded `Messages.json` request with Basic auth.
//! - [`outcome`]: Twilio's synchronous errors and transport failures → `Outcome`.
//! - [`signature`]: `X-Twilio-Signature` verification (HMAC-SHA1, as twilio-python).
//! - [`webhook`]: status callbacks → `StatusUpdate`, incoming SMS → `InboundMessage`.
//! - [`url`]: the small, non-normalising URL splitting the signature check needs.
//!
//! Twilio has no idempotency key for sends, so a retry after a timeout may send twice.
#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod outcome;
pub mod request;
pub mod signature;
pub mod url;
pub mod webhook;

#[cfg(test)]
mod spec_check;

use herald_plugin_api::{
    Channel, ConfigError, Delivery, Host, Logger, Manifest, Provider, ProviderConfig, Step,
    TransportResponse, UnixMillis, WebhookError, WebhookOutput, WebhookRequest,
};
use serde_json::Value;

use crate::config::Config;

/// One configured Twilio provider instance.
#[derive(Debug)]
pub struct Twilio {
    name: String,
    config: Config,
    log: Logger,
}

impl Provider for Twilio {
    fn manifest() -> Manifest {
        Manifest {
            name: "twilio".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: herald_plugin_api::API_VERSION.into(),
            description: "Twilio Programmable Messaging: SMS/MMS through Messages.json, \
                          signed status callbacks and inbound replies with STOP/START"
                .into(),
            channels: vec![Channel::Sms],
            config: config::keys(),
            webhooks: true,
            idempotent: false,
            blocking: false,
            batch: None,
            allowed_hosts: vec![config::DEFAULT_HOST.into()],
        }
    }

    fn new(provider: ProviderConfig, host: Host) -> Result<Self, ConfigError> {
        let loaded = Config::load(&provider)?;
        for warning in &loaded.warnings {
            host.log
                .warn(format!("twilio provider {:?}: {warning}", provider.name));
        }
        Ok(Twilio {
            name: provider.name,
            config: loaded.config,
            log: host.log,
        })
    }

    fn allowed_hosts(&self) -> Vec<String> {
        vec![self.config.base_url.host.clone()]
    }

    fn begin(&self, delivery: &Delivery) -> Step {
        match request::build(&self.config, &delivery.message) {
            Ok(r) => Step::http(r, Value::Null),
            Err(outcome) => Step::done(outcome),
        }
    }

    fn resume(&self, delivery: &Delivery, _state: Value, response: TransportResponse) -> Step {
        Step::done(outcome::classify(&response, delivery.now))
    }

    fn webhook(
        &self,
        request: &WebhookRequest,
        now: UnixMillis,
    ) -> Result<WebhookOutput, WebhookError> {
        let handled = webhook::handle(&self.config, &self.name, request, now)?;
        if let Some(why) = handled.ignored {
            self.log.debug(format!(
                "twilio provider {:?}: ignored webhook: {why}",
                self.name
            ));
        }
        Ok(handled.output)
    }
}

herald_plugin_api::export_plugin!(Twilio);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{ACCOUNT, TOKEN, WEBHOOK_URL, provider};
    use crate::request::tests::sms;
    use herald_plugin_api::{HttpResponse, Outcome, Request};
    use herald_plugin_kit::testing::{LogLines, recording_host};
    use serde_json::json;

    fn instance(settings: Value, webhook_url: Option<&str>) -> (Twilio, LogLines) {
        let (host, lines) = recording_host();
        let t = Twilio::new(provider(settings, webhook_url), host).unwrap();
        (t, lines)
    }

    #[test]
    fn manifest_states_channel_secrets_and_host() {
        let m = Twilio::manifest();
        assert_eq!(m.name, "twilio");
        assert_eq!(m.channels, vec![Channel::Sms]);
        assert!(m.webhooks && !m.idempotent);
        assert_eq!(m.allowed_hosts, vec!["api.twilio.com"]);
        assert!(m.config.iter().any(|k| k.name == "auth_token" && k.secret));
        assert!(
            m.config
                .iter()
                .any(|k| k.name == "account_sid" && k.required)
        );
    }

    #[test]
    fn allowed_hosts_follow_base_url() {
        let base = json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100"});
        assert_eq!(
            instance(base.clone(), None).0.allowed_hosts(),
            ["api.twilio.com"]
        );
        let mut local = base.clone();
        local["base_url"] = json!("http://127.0.0.1:8099");
        assert_eq!(instance(local, None).0.allowed_hosts(), ["127.0.0.1"]);
        let mut v6 = base;
        v6["base_url"] = json!("http://[::1]:8099/twilio");
        assert_eq!(instance(v6, None).0.allowed_hosts(), ["::1"]);
    }

    #[test]
    fn begin_then_resume() {
        let (t, _) = instance(
            json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100"}),
            Some(WEBHOOK_URL),
        );
        let delivery = Delivery {
            message: sms("01HZX", "+15550001111", "Hi", &[]),
            attempt: 1,
            now: 1_700_000_000_000,
        };
        let Step::Call {
            request: Request::Http(r),
            state,
        } = t.begin(&delivery)
        else {
            panic!("expected an HTTP call")
        };
        assert_eq!(r.method, "POST");
        assert!(r.body.contains("StatusCallback="));
        let created = HttpResponse {
            status: 201,
            headers: vec![],
            body: json!({"sid": "SM0123456789abcdef0123456789abcdef"}).to_string(),
        };
        assert_eq!(
            t.resume(&delivery, state, TransportResponse::Http(created)),
            Step::done(Outcome::Accepted {
                provider_message_id: Some("SM0123456789abcdef0123456789abcdef".into()),
                delivered: false,
            })
        );
    }

    #[test]
    fn load_warnings_are_logged_without_secrets() {
        let (t, lines) = instance(
            json!({"account_sid": ACCOUNT, "api_key_sid": "SK0123456789abcdef0123456789abcdef",
                   "api_key_secret": "api-5ecret", "from": "+14155550100"}),
            Some(WEBHOOK_URL),
        );
        let lines = lines.lock().unwrap().clone();
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("Warn twilio provider \"sms\": "),
            "{lines:?}"
        );
        assert!(lines[0].contains("webhook_auth_token"));
        assert!(!lines[0].contains("api-5ecret"));
        assert!(!format!("{t:?}").contains("api-5ecret"));
    }
}
