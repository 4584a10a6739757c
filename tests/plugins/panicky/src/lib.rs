//! A test plugin that panics on purpose: `begin` panics for any message whose text
//! contains "PANIC" and delivers everything else. The end-to-end tests use it to show that
//! a plugin panic becomes a retry/failure outcome, never a daemon crash.
#![deny(unsafe_code)]

use herald_plugin_api::{
    Channel, ConfigError, Content, Delivery, Host, Manifest, Outcome, Provider, ProviderConfig,
    Step, TransportResponse,
};
use serde_json::Value;

#[derive(Debug)]
pub struct Panicky;

fn text(content: &Content) -> String {
    match content {
        Content::Email(e) => format!("{} {}", e.subject, e.text.clone().unwrap_or_default()),
        Content::Sms(s) => s.body.clone(),
        Content::Push(p) => p.body.clone().unwrap_or_default(),
    }
}

impl Provider for Panicky {
    fn manifest() -> Manifest {
        Manifest {
            name: "testpanicky".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: String::new(),
            description: "panics on messages containing PANIC (tests only)".into(),
            channels: vec![Channel::Email, Channel::Sms, Channel::Push],
            config: vec![],
            webhooks: false,
            idempotent: true,
            blocking: false,
            batch: None,
            allowed_hosts: vec![],
        }
    }

    fn new(_config: ProviderConfig, _host: Host) -> Result<Self, ConfigError> {
        Ok(Panicky)
    }

    fn begin(&self, d: &Delivery) -> Step {
        if text(&d.message.content).contains("PANIC") {
            panic!("deliberate test panic for {}", d.message.id);
        }
        Step::done(Outcome::Accepted {
            provider_message_id: Some(format!("panicky-{}", d.message.id)),
            delivered: true,
        })
    }

    fn resume(&self, _: &Delivery, _: Value, _: TransportResponse) -> Step {
        Step::done(Outcome::provider_failure("unexpected resume"))
    }
}

herald_plugin_api::export_plugin!(Panicky);
