//! `herald-fcm`: push notifications through Firebase Cloud Messaging's HTTP v1 API.
//!
//! This file owns the [`Provider`] implementation and its exchange: `begin` sends at once
//! when the instance holds a fresh OAuth token, and otherwise first asks the host to POST
//! the token exchange; `resume` caches the token, sends, and reads FCM's answer. A 401
//! without an `FcmError` drops the cached token and refreshes it once within the same
//! exchange. Configuration lives in [`config`], the OAuth flow and token cache in [`token`],
//! the request body in [`request`], and the meaning of answers in [`outcome`].
#![deny(unsafe_code)]
// Tests may unwrap; library code may not (the workspace warns on `unwrap_used`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod outcome;
mod request;
#[cfg(test)]
mod tests;
mod token;

use herald_plugin_api::{
    API_VERSION, Channel, ConfigError, Content, Delivery, Host, Logger, Manifest, Outcome,
    Provider, ProviderConfig, Step, TransportResponse,
};
use herald_plugin_kit::outcome::wrong_channel;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::outcome::Verdict;
use crate::token::{Token, TokenCache};

/// One FCM provider instance: its config and its cached access token.
#[derive(Debug)]
pub struct Fcm {
    config: Config,
    tokens: TokenCache,
    log: Logger,
}

/// Where an exchange stands, carried by the host between `Call`s. Holds no secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
enum Stage {
    /// The token exchange is under way. `refreshed`: this is the refresh after a 401.
    Token { refreshed: bool },
    /// `messages:send` is under way with the token of `generation`.
    Send { generation: u64, refreshed: bool },
}

impl Stage {
    fn to_value(self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Provider for Fcm {
    fn manifest() -> Manifest {
        Manifest {
            name: "fcm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: API_VERSION.into(),
            description: "Firebase Cloud Messaging HTTP v1 (Android, iOS and web push), \
                          authenticated with a service account"
                .into(),
            channels: vec![Channel::Push],
            config: config::keys(),
            webhooks: false,
            idempotent: false,
            // Waits (bounded) for another delivery's token fetch.
            blocking: true,
            batch: None,
            allowed_hosts: vec!["fcm.googleapis.com".into(), "oauth2.googleapis.com".into()],
        }
    }

    fn new(config: ProviderConfig, host: Host) -> Result<Self, ConfigError> {
        let config = Config::load(&config)?;
        Ok(Fcm {
            config,
            tokens: TokenCache::default(),
            log: host.log,
        })
    }

    fn allowed_hosts(&self) -> Vec<String> {
        self.config.hosts.clone()
    }

    fn begin(&self, delivery: &Delivery) -> Step {
        let body = match self.body(delivery) {
            Ok(body) => body,
            Err(outcome) => return Step::done(outcome),
        };
        match self.tokens.get_or_claim(delivery.now) {
            Some(token) => self.send(body, &token, false),
            None => self.fetch_token(delivery, false),
        }
    }

    fn resume(&self, delivery: &Delivery, state: Value, response: TransportResponse) -> Step {
        let fetching = state.get("stage").and_then(Value::as_str) == Some("token");
        let step = self.resume_stage(delivery, state, response);
        if fetching && matches!(step, Step::Done { .. }) {
            // The claimed token fetch failed: let a waiting delivery try its own.
            self.tokens.release();
        }
        step
    }
}

impl Fcm {
    fn resume_stage(&self, delivery: &Delivery, state: Value, response: TransportResponse) -> Step {
        let Ok(stage) = serde_json::from_value::<Stage>(state) else {
            return Step::done(Outcome::provider_failure(
                "fcm: the host handed back an exchange state this plugin did not write",
            ));
        };
        let exchange = match stage {
            Stage::Token { .. } => outcome::TOKEN_EXCHANGE,
            Stage::Send { .. } => outcome::SEND,
        };
        let response = match exchange.http(&response) {
            Ok(response) => response,
            Err(outcome) => return Step::done(outcome),
        };
        match stage {
            Stage::Token { refreshed } => {
                let fetched = match token::read_exchange(response, delivery.now) {
                    Ok(fetched) => fetched,
                    Err(outcome) => return Step::done(outcome),
                };
                self.log.debug(format!(
                    "fcm: fetched an OAuth access token for {} (expires in {} s)",
                    self.config.client_email, fetched.expires_in_s
                ));
                let token = self.tokens.put(fetched, delivery.now);
                match self.body(delivery) {
                    Ok(body) => self.send(body, &token, refreshed),
                    Err(outcome) => Step::done(outcome),
                }
            }
            Stage::Send {
                generation,
                refreshed,
            } => match outcome::classify(response, delivery.attempt, delivery.now) {
                Verdict::Done(outcome) => Step::done(outcome),
                Verdict::Unauthorized(reason) => {
                    self.tokens.invalidate(generation);
                    if refreshed {
                        Step::done(Outcome::provider_failure(format!(
                            "{reason}; FCM refused a freshly fetched access token too (does \
                             the service account belong to project {:?}?)",
                            self.config.project_id
                        )))
                    } else {
                        self.log.info(
                            "fcm: FCM refused the cached access token (HTTP 401); fetching a \
                             new one",
                        );
                        // Another delivery may already have fetched (or be fetching) one.
                        // The body first: a claim must only be taken by a fetch that runs.
                        match self.body(delivery) {
                            Err(outcome) => Step::done(outcome),
                            Ok(body) => match self.tokens.get_or_claim(delivery.now) {
                                Some(token) => self.send(body, &token, true),
                                None => self.fetch_token(delivery, true),
                            },
                        }
                    }
                }
            },
        }
    }

    /// The `messages:send` body, or why this message cannot go out through FCM.
    fn body(&self, delivery: &Delivery) -> Result<String, Outcome> {
        let message = &delivery.message;
        let Content::Push(push) = &message.content else {
            return Err(wrong_channel("fcm", "push notifications", message));
        };
        request::send_body(message, push, delivery.now).map_err(Outcome::rejected)
    }

    /// Runs the token fetch this delivery claimed; if it cannot even start, gives the
    /// claim back so waiting deliveries do not sit out the stale-claim timeout.
    fn fetch_token(&self, delivery: &Delivery, refreshed: bool) -> Step {
        match token::exchange_request(&self.config, delivery.now) {
            Ok(request) => Step::http(request, Stage::Token { refreshed }.to_value()),
            Err(reason) => {
                self.tokens.release();
                Step::done(Outcome::provider_failure(reason))
            }
        }
    }

    fn send(&self, body: String, token: &Token, refreshed: bool) -> Step {
        let request = request::send_request(&self.config.send_url, &token.access_token, body);
        let stage = Stage::Send {
            generation: token.generation,
            refreshed,
        };
        Step::http(request, stage.to_value())
    }
}

herald_plugin_api::export_plugin!(Fcm);
