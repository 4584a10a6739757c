//! `herald-sendgrid`: the SendGrid email provider plugin (`libherald_sendgrid.so`).
//!
//! This file owns the [`Provider`] implementation and its manifest, and nothing else: the
//! protocol lives in small modules.
//!
//! - `config`: the `[[providers]]` keys, validated once at load (and at every reload),
//!   including the webhook verification key.
//! - `request`: the v3 Mail Send request for a message (`personalizations`, `content`,
//!   the Herald id in `custom_args` for webhook correlation).
//! - batches: messages with the same content (all but the recipient) share one Mail Send,
//!   one personalization each (`request::batch_key`, `request::build_batch`,
//!   `outcome::classify_batch`).
//! - `outcome`: the response (or transport error) mapped to an `Outcome`; the provider id
//!   is the `X-Message-Id` response header.
//! - `webhook`: Signed Event Webhook verification (ECDSA P-256) and event → `UpdateKind`.
//!
//! URL validation, reason text, transport-error outcomes and the webhook replay window come
//! from `herald-plugin-kit`, shared with the other plugins.
//!
//! The plugin is sans-IO: it never opens a socket or reads the clock; the host performs the
//! requests it describes and passes `now` in. SendGrid has no idempotency key: a retry after
//! a timeout may send the email twice (the documented, accepted behaviour).
#![deny(unsafe_code)]

mod config;
mod outcome;
mod request;
mod webhook;

#[cfg(test)]
mod spec_tests;
#[cfg(test)]
mod test_support;

use herald_plugin_api::{
    API_VERSION, BatchLimits, Channel, ConfigError, ConfigKey, Delivery, Host, Logger, Manifest,
    Message, Provider, ProviderConfig, Step, TransportResponse, UnixMillis, WebhookError,
    WebhookOutput, WebhookRequest,
};
use serde_json::Value;

use crate::config::Config;

/// One configured SendGrid instance.
#[derive(Debug)]
pub struct SendGrid {
    config: Config,
    log: Logger,
}

impl Provider for SendGrid {
    fn manifest() -> Manifest {
        Manifest {
            name: "sendgrid".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: API_VERSION.into(),
            description: "SendGrid v3 Mail Send, signed Event Webhook".into(),
            channels: vec![Channel::Email],
            config: vec![
                ConfigKey::required(
                    "api_key",
                    "SendGrid API key (SG....), given as a ${ENV} reference",
                )
                .secret(),
                ConfigKey::optional(
                    "from",
                    "default sender (\"Name <addr@domain>\"), used when a message has no from",
                ),
                ConfigKey::optional(
                    "base_url",
                    "API base URL (default https://api.sendgrid.com; EU subusers: \
                     https://api.eu.sendgrid.com): tests, proxies",
                ),
                ConfigKey::optional(
                    "webhook_public_key",
                    "Signed Event Webhook verification key (base64 DER, MFkw...); \
                     webhooks are refused without it",
                ),
                ConfigKey::optional(
                    "webhook_tolerance_secs",
                    "accepted webhook timestamp skew, both directions (default 600)",
                ),
                ConfigKey::optional(
                    "sandbox",
                    "true: mail_settings.sandbox_mode (SendGrid validates, sends nothing)",
                ),
            ],
            webhooks: true,
            idempotent: false,
            blocking: false,
            batch: Some(BatchLimits {
                max: request::BATCH_MAX,
            }),
            allowed_hosts: config::DEFAULT_HOSTS.iter().map(|h| (*h).into()).collect(),
        }
    }

    fn new(config: ProviderConfig, host: Host) -> Result<Self, ConfigError> {
        Ok(SendGrid {
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
        match request::build(&self.config, &delivery.message, &self.log) {
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

    fn batch_key(&self, message: &Message) -> Option<String> {
        request::batch_key(&self.config, message)
    }

    fn begin_batch(&self, deliveries: &[Delivery]) -> Step {
        let messages: Vec<&Message> = deliveries.iter().map(|d| &d.message).collect();
        match request::build_batch(&self.config, &messages, &self.log) {
            Ok(request) => Step::http(request, Value::Null),
            Err(outcome) => Step::done(outcome),
        }
    }

    fn resume_batch(
        &self,
        deliveries: &[Delivery],
        _state: Value,
        response: TransportResponse,
    ) -> Step {
        let now = deliveries.first().map_or(0, |d| d.now);
        outcome::classify_batch(&self.config, &response, deliveries.len(), now, &self.log)
    }

    fn webhook(
        &self,
        request: &WebhookRequest,
        now: UnixMillis,
    ) -> Result<WebhookOutput, WebhookError> {
        webhook::handle(&self.config, request, now, &self.log)
    }
}

herald_plugin_api::export_plugin!(SendGrid);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{API_KEY, VECTOR_PUBLIC_KEY, sendgrid};
    use herald_plugin_kit::testing::{required_keys, secret_keys};
    use serde_json::json;

    #[test]
    fn manifest_marks_secrets_and_hosts() {
        let m = SendGrid::manifest();
        assert_eq!(m.name, "sendgrid");
        assert_eq!(m.api_version, API_VERSION);
        assert_eq!(m.channels, vec![Channel::Email]);
        assert!(m.webhooks);
        assert!(!m.idempotent, "SendGrid has no idempotency key");
        assert_eq!(secret_keys(&m), ["api_key"]);
        assert_eq!(required_keys(&m), ["api_key"]);
        assert_eq!(m.allowed_hosts, ["api.sendgrid.com", "api.eu.sendgrid.com"]);
    }

    #[test]
    fn allowed_hosts_follow_base_url() {
        let p = sendgrid(json!({"api_key": API_KEY}));
        assert_eq!(
            p.allowed_hosts(),
            ["api.sendgrid.com", "api.eu.sendgrid.com"]
        );
        let p = sendgrid(json!({"api_key": API_KEY, "base_url": "http://[::1]:9999/"}));
        assert_eq!(p.allowed_hosts(), ["::1"]);
        let p = sendgrid(json!({"api_key": API_KEY, "base_url": "https://Relay.Example.com"}));
        assert_eq!(p.allowed_hosts(), ["relay.example.com"]);
    }

    #[test]
    fn batch_outcomes() {
        use herald_plugin_api::Outcome;
        use herald_plugin_kit::testing::{delivery, email_message, http_response};
        assert_eq!(SendGrid::manifest().batch, Some(BatchLimits { max: 1000 }));
        let p = sendgrid(json!({"api_key": API_KEY, "from": "rsvp@example.com"}));
        let ds = vec![delivery(email_message()), delivery(email_message())];
        let accepted = Outcome::Accepted {
            provider_message_id: None,
            delivered: false,
        };
        // The one X-Message-Id names the whole request: no message's provider id.
        assert_eq!(
            p.resume_batch(
                &ds,
                Value::Null,
                http_response(202, &[("X-Message-Id", "LRzXl_NHStOGhQ4kofSm_A")], "")
            ),
            Step::done_batch(vec![accepted.clone(), accepted])
        );
        let step = p.resume_batch(
            &ds,
            Value::Null,
            http_response(400, &[], r#"{"errors":[{"message":"bad","field":"from"}]}"#),
        );
        assert!(
            matches!(
                step,
                Step::Done {
                    outcome: Outcome::Rejected { .. }
                }
            ),
            "{step:?}"
        );
        let step = p.resume_batch(&ds, Value::Null, http_response(503, &[], ""));
        assert!(
            matches!(
                step,
                Step::Done {
                    outcome: Outcome::Retry { breaker: true, .. }
                }
            ),
            "{step:?}"
        );
    }

    #[test]
    fn debug_never_shows_the_api_key() {
        let p = sendgrid(json!({"api_key": API_KEY, "webhook_public_key": VECTOR_PUBLIC_KEY}));
        let debug = format!("{p:?}");
        assert!(!debug.contains(API_KEY), "{debug}");
    }
}
