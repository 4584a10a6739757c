//! `herald-resend`: the Resend email provider plugin (`libherald_resend.so`).
//!
//! This file owns the [`Provider`] implementation and its manifest, and nothing else: the
//! protocol lives in small modules.
//!
//! - `config`: the `[[providers]]` keys, validated once at load (and at every reload).
//! - `request`: the `POST /emails` request built for a message (JSON body, bearer key,
//!   `Idempotency-Key` = Herald message id, `herald_id` tag for webhook correlation).
//! - `outcome`: the response (or transport error) mapped to an `Outcome`, following the
//!   error table of Resend's API (`name` first, then the status).
//! - `webhook`: Svix signature verification and event → `UpdateKind` mapping.
//! - `rfc3339`: event timestamps.
//!
//! URL validation, reason text, transport-error outcomes and the webhook replay window come
//! from `herald-plugin-kit`, shared with the other plugins.
//!
//! The plugin is sans-IO: it never opens a socket or reads the clock; the host performs the
//! requests it describes and passes `now` in.
#![deny(unsafe_code)]

mod config;
mod outcome;
mod request;
mod rfc3339;
mod webhook;

#[cfg(test)]
mod spec_tests;
#[cfg(test)]
mod test_support;

use herald_plugin_api::{
    API_VERSION, Channel, ConfigError, ConfigKey, Delivery, Host, Logger, Manifest, Provider,
    ProviderConfig, Step, TransportResponse, UnixMillis, WebhookError, WebhookOutput,
    WebhookRequest,
};
use serde_json::Value;

use crate::config::Config;

/// One configured Resend instance.
#[derive(Debug)]
pub struct Resend {
    config: Config,
    log: Logger,
}

impl Provider for Resend {
    fn manifest() -> Manifest {
        Manifest {
            name: "resend".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: API_VERSION.into(),
            description: "Resend email API (POST /emails), Svix-signed delivery webhooks".into(),
            channels: vec![Channel::Email],
            config: vec![
                ConfigKey::required(
                    "api_key",
                    "Resend API key (re_...), given as a ${ENV} reference",
                )
                .secret(),
                ConfigKey::optional(
                    "from",
                    "default sender (\"Name <addr@domain>\"), used when a message has no from",
                ),
                ConfigKey::optional(
                    "base_url",
                    "API base URL (default https://api.resend.com): tests, proxies",
                ),
                ConfigKey::optional(
                    "webhook_secret",
                    "webhook signing secret (whsec_...); webhooks are refused without it",
                )
                .secret(),
            ],
            webhooks: true,
            idempotent: true,
            blocking: false,
            allowed_hosts: vec![config::DEFAULT_HOST.into()],
        }
    }

    fn new(config: ProviderConfig, host: Host) -> Result<Self, ConfigError> {
        Ok(Resend {
            config: Config::from_provider(&config)?,
            log: host.log,
        })
    }

    fn allowed_hosts(&self) -> Vec<String> {
        match &self.config.host {
            Some(host) => vec![host.clone()],
            None => Self::manifest().allowed_hosts,
        }
    }

    fn begin(&self, delivery: &Delivery) -> Step {
        match request::build(&self.config, &delivery.message) {
            Ok(request) => Step::http(request, Value::Null),
            Err(outcome) => Step::done(outcome),
        }
    }

    fn resume(&self, delivery: &Delivery, _state: Value, response: TransportResponse) -> Step {
        Step::done(outcome::classify(
            &self.config,
            &response,
            delivery.now,
            &self.log,
        ))
    }

    fn webhook(
        &self,
        request: &WebhookRequest,
        now: UnixMillis,
    ) -> Result<WebhookOutput, WebhookError> {
        webhook::handle(&self.config, request, now, &self.log)
    }
}

herald_plugin_api::export_plugin!(Resend);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{API_KEY, WEBHOOK_SECRET, resend};
    use herald_plugin_kit::testing::{required_keys, secret_keys};
    use serde_json::json;

    #[test]
    fn manifest_marks_secrets_and_hosts() {
        let m = Resend::manifest();
        assert_eq!(m.name, "resend");
        assert_eq!(m.api_version, API_VERSION);
        assert_eq!(m.channels, vec![Channel::Email]);
        assert!(m.webhooks && m.idempotent);
        assert_eq!(secret_keys(&m), ["api_key", "webhook_secret"]);
        assert_eq!(required_keys(&m), ["api_key"]);
        assert_eq!(m.allowed_hosts, ["api.resend.com"]);
        assert_eq!(
            resend(json!({"api_key": API_KEY})).allowed_hosts(),
            ["api.resend.com"]
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let p = resend(json!({"api_key": API_KEY, "webhook_secret": WEBHOOK_SECRET}));
        let debug = format!("{p:?}");
        assert!(!debug.contains(API_KEY), "{debug}");
        // The key is held decoded: its Debug must be the redacted one, not its bytes.
        assert!(debug.contains("WebhookKey(***)"), "{debug}");
    }
}
