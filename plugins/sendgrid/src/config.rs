//! SendGrid configuration, in two stages: [`RawConfig`] is exactly what serde reads from the
//! `[[providers]]` table (unknown keys refused), [`Config`] is the validated form the rest of
//! the plugin uses, with the webhook verification key already decoded. Nothing past
//! [`Config::from_provider`] sees unvalidated input, and no error message or `Debug` output
//! ever contains the API key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald_plugin_api::{ConfigError, ProviderConfig, Secret};
use herald_plugin_kit::config::{check_api_key, check_sender};
use herald_plugin_kit::http_url::{UrlKey, UrlKind};
use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

/// SendGrid's global API, used unless `base_url` overrides it.
pub(crate) const DEFAULT_BASE_URL: &str = "https://api.sendgrid.com";
/// The manifest's hosts: the global API and the EU one (selected with `base_url`).
pub(crate) const DEFAULT_HOSTS: [&str; 2] = ["api.sendgrid.com", "api.eu.sendgrid.com"];
/// The `base_url` override, as its errors name it.
const BASE_URL: UrlKey<'static> = UrlKey {
    key: "base_url",
    example: DEFAULT_BASE_URL,
    credentials_hint: "the API key is sent as a header",
};
/// SendGrid documents no replay window for its signed webhooks; ours is ±10 minutes: wide
/// enough for clock skew and SendGrid's batching delay, narrow enough to make a captured
/// request useless soon.
pub(crate) const DEFAULT_WEBHOOK_TOLERANCE_SECS: u64 = 600;
const MAX_WEBHOOK_TOLERANCE_SECS: u64 = 86_400;

/// The `[[providers]]` keys this plugin reads, as given (host-owned keys such as `name`,
/// `plugin`, `rate_limit`, `breaker` and `timeout` are removed by the host).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Optional here only so that its absence gets a clearer message than serde's.
    #[serde(default)]
    api_key: Option<Secret>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    webhook_public_key: Option<String>,
    #[serde(default)]
    webhook_tolerance_secs: Option<u64>,
    #[serde(default)]
    sandbox: bool,
}

/// A validated SendGrid configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The instance name (`[[providers]] name`), for messages.
    pub(crate) name: String,
    pub(crate) api_key: Secret,
    /// Default sender, used when a message has no `from`.
    pub(crate) from: Option<String>,
    /// API base URL without a trailing `/`; requests go to `{base_url}/v3/mail/send`.
    pub(crate) base_url: String,
    /// The host of an overriding `base_url`; `None` means the manifest's hosts.
    pub(crate) host: Option<String>,
    /// The Signed Event Webhook key; webhooks are refused while it is `None`.
    pub(crate) webhook_key: Option<VerifyingKey>,
    pub(crate) webhook_tolerance_secs: u64,
    /// Send with `mail_settings.sandbox_mode.enable = true`.
    pub(crate) sandbox: bool,
}

impl Config {
    /// Parses and validates the instance's settings; every error names the key to fix.
    pub(crate) fn from_provider(config: &ProviderConfig) -> Result<Config, ConfigError> {
        let raw: RawConfig = config.parse()?;
        let name = config.name.clone();
        let err = |msg: String| ConfigError::new(format!("provider {name:?} (sendgrid): {msg}"));

        let api_key = raw.api_key.ok_or_else(|| {
            err("missing `api_key`: set api_key = \"${SENDGRID_API_KEY}\" (a SendGrid API key, SG....)"
                .into())
        })?;
        check_api_key(api_key.expose(), "SendGrid", "SG.").map_err(err)?;

        if let Some(from) = &raw.from {
            check_sender(from).map_err(err)?;
        }

        let (base_url, host) = match &raw.base_url {
            Some(url) => {
                let url = BASE_URL.parse(url, UrlKind::Base).map_err(err)?;
                (url.url, Some(url.host))
            }
            None => (DEFAULT_BASE_URL.to_owned(), None),
        };

        let webhook_key = match &raw.webhook_public_key {
            Some(key) => Some(decode_public_key(key).map_err(err)?),
            None => None,
        };

        let webhook_tolerance_secs = raw
            .webhook_tolerance_secs
            .unwrap_or(DEFAULT_WEBHOOK_TOLERANCE_SECS);
        if !(1..=MAX_WEBHOOK_TOLERANCE_SECS).contains(&webhook_tolerance_secs) {
            return Err(err(format!(
                "`webhook_tolerance_secs` must be 1-{MAX_WEBHOOK_TOLERANCE_SECS} seconds \
                 (default {DEFAULT_WEBHOOK_TOLERANCE_SECS})"
            )));
        }

        Ok(Config {
            name,
            api_key,
            from: raw.from,
            base_url,
            host,
            webhook_key,
            webhook_tolerance_secs,
            sandbox: raw.sandbox,
        })
    }
}

/// Decodes the verification key as SendGrid shows it: base64 of a DER SubjectPublicKeyInfo
/// for a P-256 key. PEM armour (`-----BEGIN PUBLIC KEY-----`) and line breaks are tolerated.
fn decode_public_key(key: &str) -> Result<VerifyingKey, String> {
    let b64: String = key
        .lines()
        .filter(|line| !line.trim_start().starts_with("-----"))
        .flat_map(|line| line.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = STANDARD.decode(&b64).map_err(|_| {
        "`webhook_public_key` is not base64 (expected the verification key of the Signed Event \
         Webhook, starting MFkw...)"
            .to_owned()
    })?;
    VerifyingKey::from_public_key_der(&der).map_err(|_| {
        "`webhook_public_key` is not a P-256 public key (expected the base64 DER \
         SubjectPublicKeyInfo SendGrid shows for the Signed Event Webhook, starting MFkw...)"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{API_KEY, VECTOR_PUBLIC_KEY, provider_config};
    use serde_json::json;

    fn load(settings: serde_json::Value) -> Result<Config, String> {
        Config::from_provider(&provider_config(settings)).map_err(|e| e.message)
    }

    #[test]
    fn minimal_config_uses_sendgrid_api() {
        let c = load(json!({"api_key": API_KEY})).unwrap();
        assert_eq!(c.base_url, "https://api.sendgrid.com");
        assert_eq!(c.host, None);
        assert_eq!(c.from, None);
        assert!(c.webhook_key.is_none());
        assert_eq!(c.webhook_tolerance_secs, 600);
        assert!(!c.sandbox);
    }

    #[test]
    fn full_config() {
        let c = load(json!({
            "api_key": API_KEY,
            "from": "Wedding <rsvp@example.com>",
            "base_url": "https://api.eu.sendgrid.com/",
            "webhook_public_key": VECTOR_PUBLIC_KEY,
            "webhook_tolerance_secs": 120,
            "sandbox": true,
        }))
        .unwrap();
        assert_eq!(c.base_url, "https://api.eu.sendgrid.com");
        assert_eq!(c.host.as_deref(), Some("api.eu.sendgrid.com"));
        assert!(c.webhook_key.is_some());
        assert_eq!(c.webhook_tolerance_secs, 120);
        assert!(c.sandbox);
    }

    #[test]
    fn pem_armoured_key_is_accepted() {
        let (a, b) = VECTOR_PUBLIC_KEY.split_at(40);
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{a}\n{b}\n-----END PUBLIC KEY-----\n");
        assert!(load(json!({"api_key": API_KEY, "webhook_public_key": pem})).is_ok());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (json!({}), "missing `api_key`"),
            (json!({"api_key": ""}), "`api_key` is empty"),
            (json!({"api_key": "re_abc"}), "start with `SG.`"),
            (json!({"api_key": "SG.a\nb"}), "whitespace"),
            (
                json!({"api_key": API_KEY, "from": "nobody"}),
                "`from` is not a valid sender",
            ),
            (
                json!({"api_key": API_KEY, "base_url": "ftp://x.io"}),
                "base_url = \"ftp://x.io\" must start with https:// or http://; expected e.g. \
                 https://api.sendgrid.com",
            ),
            (
                json!({"api_key": API_KEY, "base_url": "::"}),
                "base_url = \"::\" is not an absolute URL; expected e.g. https://api.sendgrid.com",
            ),
            (
                json!({"api_key": API_KEY, "base_url": "https://u:p@x.io"}),
                "base_url must not contain credentials (user:password@): the API key is sent \
                 as a header",
            ),
            (
                json!({"api_key": API_KEY, "webhook_public_key": "not base64!"}),
                "`webhook_public_key` is not base64",
            ),
            (
                json!({"api_key": API_KEY, "webhook_public_key": "aGVsbG8="}),
                "`webhook_public_key` is not a P-256 public key",
            ),
            (
                json!({"api_key": API_KEY, "webhook_tolerance_secs": 0}),
                "`webhook_tolerance_secs`",
            ),
            (
                json!({"api_key": API_KEY, "sandbox": "yes"}),
                "invalid type",
            ),
            (
                json!({"api_key": API_KEY, "sandbox_mode": true}),
                "unknown field `sandbox_mode`",
            ),
        ];
        for (settings, want) in cases {
            let got = load(settings.clone()).unwrap_err();
            assert!(got.contains(want), "{settings}: {got}");
            assert!(
                got.contains("\"sendgrid-main\""),
                "names the instance: {got}"
            );
        }
    }

    #[test]
    fn errors_never_echo_the_key() {
        let secret = "re_very-secret-value";
        let got = load(json!({"api_key": secret})).unwrap_err();
        assert!(!got.contains(secret), "{got}");
    }

    #[test]
    fn debug_never_shows_the_api_key() {
        let c = load(json!({"api_key": API_KEY, "webhook_public_key": VECTOR_PUBLIC_KEY})).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(API_KEY), "{debug}");
        assert!(!debug.contains("SG."), "{debug}");
        assert!(debug.contains("***"), "{debug}");
    }
}
