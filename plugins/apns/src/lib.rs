//! `herald-apns`: push notifications through Apple's HTTP/2 provider API with token
//! (`.p8` key) authentication.
//!
//! This file owns the [`Provider`] implementation and its one-call exchange: `begin`
//! checks the message, takes the instance's cached provider token (minting one only when
//! none is cached or it is 50 minutes old) and asks the host for `POST /3/device/{token}`
//! over HTTP/2; `resume` reads APNs' answer. An `ExpiredProviderToken` answer drops the
//! cached token and retries the message, which then goes out with a new one.
//! Configuration lives in [`config`], the provider token in [`jwt`], the request in
//! [`request`] (with the `apns-id` conversion in [`apns_id`]), and the meaning of answers
//! in [`outcome`].
#![deny(unsafe_code)]
// Tests may unwrap; library code may not (the workspace warns on `unwrap_used`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod apns_id;
mod config;
mod jwt;
mod outcome;
mod request;
#[cfg(test)]
mod tests;

use herald_plugin_api::{
    API_VERSION, Channel, ConfigError, Content, Delivery, Host, Logger, Manifest, Outcome,
    Provider, ProviderConfig, Step, TransportResponse,
};
use herald_plugin_kit::outcome::wrong_channel;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::jwt::ProviderTokens;
use crate::outcome::Verdict;

/// One APNs provider instance: its config and its cached provider token.
#[derive(Debug)]
pub struct Apns {
    config: Config,
    tokens: ProviderTokens,
    log: Logger,
}

/// What the host carries from `begin` to `resume`. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Sent {
    /// The generation of the provider token the request carried.
    jwt_generation: u64,
    /// The `apns-id` the request carried, if any.
    #[serde(default)]
    apns_id: Option<String>,
}

impl Provider for Apns {
    fn manifest() -> Manifest {
        Manifest {
            name: "apns".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: API_VERSION.into(),
            description: "Apple Push Notification service, HTTP/2 provider API with a .p8 \
                          token-signing key"
                .into(),
            channels: vec![Channel::Push],
            config: config::keys(),
            webhooks: false,
            idempotent: false,
            blocking: false,
            batch: None,
            allowed_hosts: vec![
                "api.push.apple.com".into(),
                "api.sandbox.push.apple.com".into(),
            ],
        }
    }

    fn new(config: ProviderConfig, host: Host) -> Result<Self, ConfigError> {
        let config = Config::load(&config)?;
        for warning in &config.warnings {
            host.log.warn(format!("apns: {warning}"));
        }
        Ok(Apns {
            config,
            tokens: ProviderTokens::default(),
            log: host.log,
        })
    }

    fn allowed_hosts(&self) -> Vec<String> {
        vec![self.config.host.clone()]
    }

    fn begin(&self, delivery: &Delivery) -> Step {
        let message = &delivery.message;
        let Content::Push(push) = &message.content else {
            return Step::done(wrong_channel("apns", "push notifications", message));
        };
        let prepared = match request::prepare(&self.config, message, push, delivery.now) {
            Ok(prepared) => prepared,
            Err(reason) => return Step::done(Outcome::rejected(reason)),
        };
        let token = match self.tokens.get(&self.config, delivery.now) {
            Ok(token) => token,
            Err(reason) => return Step::done(Outcome::provider_failure(reason)),
        };
        let sent = Sent {
            jwt_generation: token.generation,
            apns_id: prepared.apns_id,
        };
        let state = serde_json::to_value(&sent).unwrap_or(Value::Null);
        Step::http(request::authorize(prepared.request, &token.jwt), state)
    }

    fn resume(&self, delivery: &Delivery, state: Value, response: TransportResponse) -> Step {
        let Ok(sent) = serde_json::from_value::<Sent>(state) else {
            return Step::done(Outcome::provider_failure(
                "apns: the host handed back an exchange state this plugin did not write",
            ));
        };
        let response = match outcome::SEND.http(&response) {
            Ok(response) => response,
            Err(outcome) => return Step::done(outcome),
        };
        let verdict = outcome::classify(
            response,
            self.config.environment,
            sent.apns_id.as_deref(),
            delivery.now,
        );
        match verdict {
            Verdict::Done(outcome) => Step::done(outcome),
            Verdict::ExpiredProviderToken(reason) => {
                self.tokens.invalidate(sent.jwt_generation);
                self.log.warn(
                    "apns: APNs called the provider token expired; the next delivery mints a \
                     new one (check the host clock if this repeats)",
                );
                Step::done(Outcome::Retry {
                    after_ms: None,
                    reason: format!("{reason}; retrying with a new provider token"),
                    breaker: false,
                })
            }
        }
    }
}

herald_plugin_api::export_plugin!(Apns);
