//! Test fixtures of this plugin: its keys, its provider construction, and its variant of
//! the full sample message. The other sample messages, response builders and
//! `render_json_request` (the stable text form of a request that the expect-test snapshots
//! compare) come from `herald_plugin_kit::testing`.

use herald_plugin_api::{Message, Provider, ProviderConfig};
use herald_plugin_kit::testing::{provider_config as kit_provider_config, quiet_host};
use serde_json::Value;

use crate::SendGrid;

pub(crate) use herald_plugin_kit::testing::{
    NOW, attachment_message, delivery, email_message, html_message, http_response,
    render_json_request, reply_to_message, tagged_message,
};

pub(crate) const API_KEY: &str = "SG.test_key.0123456789";
/// The Signed Event Webhook test-vector key from providers.md §2.
pub(crate) const VECTOR_PUBLIC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==";

pub(crate) fn provider_config(settings: Value) -> ProviderConfig {
    kit_provider_config(
        "sendgrid-main",
        settings,
        Some("https://hooks.example.com/webhooks/sendgrid-main"),
    )
}

pub(crate) fn sendgrid(settings: Value) -> SendGrid {
    SendGrid::new(provider_config(settings), quiet_host()).unwrap()
}

/// Every field Herald has: the kit's full message, with a display name on the recipient
/// (SendGrid splits it into `{email, name}`) and a repeated tag (categories are unique).
pub(crate) fn full_message() -> Message {
    let mut m = herald_plugin_kit::testing::full_message();
    m.to = "Guest One <guest@example.org>".into();
    m.tags = vec!["rsvp".into(), "event:wedding-2025".into(), "rsvp".into()];
    m
}
