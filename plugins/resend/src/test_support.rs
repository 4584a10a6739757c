//! Test fixtures of this plugin: its keys and secrets, its provider construction. The
//! sample messages, response builders and `render_json_request` (the stable text form of a
//! request that the expect-test snapshots compare) come from `herald_plugin_kit::testing`.

use herald_plugin_api::{Provider, ProviderConfig};
use herald_plugin_kit::testing::{provider_config as kit_provider_config, quiet_host};
use serde_json::Value;

use crate::Resend;

pub(crate) use herald_plugin_kit::testing::{
    attachment_message, delivery, email_message, full_message, html_message, http_response,
    render_json_request, reply_to_message, tagged_message,
};

pub(crate) const API_KEY: &str = "re_test_123456789";
/// The Svix test-vector secret from providers.md.
pub(crate) const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

pub(crate) fn provider_config(settings: Value) -> ProviderConfig {
    kit_provider_config(
        "resend-main",
        settings,
        Some("https://hooks.example.com/webhooks/resend-main"),
    )
}

pub(crate) fn resend(settings: Value) -> Resend {
    Resend::new(provider_config(settings), quiet_host()).unwrap()
}
