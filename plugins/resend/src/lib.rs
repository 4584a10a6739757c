//! `herald-resend`: the Resend email provider plugin (`libherald_resend.so`).
//!
//! This file owns the [`Provider`] implementation and its manifest, and nothing else: the
//! protocol lives in small modules.
//!
//! - `config`: the `[[providers]]` keys, validated once at load (and at every reload).
//! - `request`: the `POST /emails` request built for a message (JSON body, bearer key,
//!   `Idempotency-Key` = Herald message id, `herald_id` tag for webhook correlation).
//! - batches: `POST /emails/batch` (up to 100 emails; messages with attachments go alone),
//!   built in `request` and read in `outcome`.
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
    API_VERSION, BatchLimits, Channel, ConfigError, ConfigKey, Delivery, Host, Logger, Manifest,
    Message, Provider, ProviderConfig, Step, TransportResponse, UnixMillis, WebhookError,
    WebhookOutput, WebhookRequest,
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
            batch: Some(BatchLimits {
                max: request::BATCH_MAX,
            }),
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

    fn batch_key(&self, message: &Message) -> Option<String> {
        request::batchable(&self.config, message).then(String::new)
    }

    fn begin_batch(&self, deliveries: &[Delivery]) -> Step {
        let messages: Vec<&Message> = deliveries.iter().map(|d| &d.message).collect();
        match request::build_batch(&self.config, &messages) {
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

    mod batch {
        use super::*;
        use crate::test_support::{attachment_message, delivery, email_message, http_response};
        use herald_plugin_api::{Message, Outcome};
        use herald_plugin_kit::testing::http_call;

        fn provider() -> Resend {
            resend(json!({"api_key": API_KEY, "from": "rsvp@example.com"}))
        }

        fn numbered(n: usize) -> Vec<Delivery> {
            (0..n)
                .map(|i| {
                    let mut m: Message = email_message();
                    m.id = format!("01HZY8N3W4Q6K2M5P7R9T1V3X{i}");
                    m.to = format!("guest{i}@example.org");
                    delivery(m)
                })
                .collect()
        }

        #[test]
        fn manifest_states_the_limit() {
            assert_eq!(Resend::manifest().batch, Some(BatchLimits { max: 100 }));
        }

        #[test]
        fn attachments_go_alone() {
            let p = provider();
            assert_eq!(p.batch_key(&email_message()), Some(String::new()));
            assert_eq!(p.batch_key(&attachment_message()), None);
            // No sender at all: alone, where the single path says what is wrong.
            let bare = resend(json!({"api_key": API_KEY}));
            assert_eq!(bare.batch_key(&email_message()), None);
        }

        #[test]
        fn idempotency_key_follows_the_message_ids() {
            let p = provider();
            let key = |ds: &[Delivery]| {
                let r = http_call(p.begin_batch(ds));
                r.headers
                    .iter()
                    .find(|(n, _)| n == "idempotency-key")
                    .map(|(_, v)| v.clone())
                    .unwrap()
            };
            let three = numbered(3);
            let k = key(&three);
            assert!(k.starts_with("herald-batch/") && k.len() <= 256, "{k}");
            assert_eq!(k, key(&numbered(3)), "the same batch, the same key");
            assert_ne!(k, key(&three[..2]), "another batch, another key");
            // Same batch, same bytes (Resend refuses a reused key with another body).
            assert_eq!(
                http_call(p.begin_batch(&three)),
                http_call(p.begin_batch(&three))
            );
        }

        #[test]
        fn ids_in_order_and_whole_request_errors() {
            let p = provider();
            let ds = numbered(3);
            let step = p.resume_batch(
                &ds,
                Value::Null,
                http_response(200, &[], r#"{"data":[{"id":"a"},{"id":"b"},{"id":"c"}]}"#),
            );
            let ids: Vec<Option<String>> = match step {
                Step::DoneBatch { outcomes } => outcomes
                    .into_iter()
                    .map(|o| match o {
                        Outcome::Accepted {
                            provider_message_id,
                            ..
                        } => provider_message_id,
                        other => panic!("{other:?}"),
                    })
                    .collect(),
                other => panic!("{other:?}"),
            };
            assert_eq!(ids, [Some("a".into()), Some("b".into()), Some("c".into())]);
            // Fewer ids than emails: all accepted (they were sent), the missing id absent.
            let step = p.resume_batch(
                &ds,
                Value::Null,
                http_response(200, &[], r#"{"data":[{"id":"a"}]}"#),
            );
            let Step::DoneBatch { outcomes } = step else {
                panic!("{step:?}")
            };
            assert_eq!(
                outcomes[2],
                Outcome::Accepted {
                    provider_message_id: None,
                    delivered: false
                }
            );
            // A 500 or a 422 is the whole request's, mapped as for one email.
            let step = p.resume_batch(
                &ds,
                Value::Null,
                http_response(500, &[], r#"{"name":"application_error"}"#),
            );
            assert!(
                matches!(
                    step,
                    Step::Done {
                        outcome: Outcome::Retry { breaker: true, .. }
                    }
                ),
                "{step:?}"
            );
            let step = p.resume_batch(
                &ds,
                Value::Null,
                http_response(422, &[], r#"{"name":"invalid_parameter","message":"bad"}"#),
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
            let step = p.resume_batch(
                &ds,
                Value::Null,
                http_response(
                    429,
                    &[("retry-after", "1")],
                    r#"{"name":"rate_limit_exceeded"}"#,
                ),
            );
            assert!(
                matches!(
                    step,
                    Step::Done {
                        outcome: Outcome::Retry {
                            breaker: false,
                            after_ms: Some(1000),
                            ..
                        }
                    }
                ),
                "{step:?}"
            );
        }
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
