//! Resend configuration, in two stages: [`RawConfig`] is exactly what serde reads from the
//! `[[providers]]` table (unknown keys refused), [`Config`] is the validated form the rest of
//! the plugin uses. Nothing past [`Config::from_provider`] sees unvalidated input, and no
//! error message or `Debug` output ever contains a secret.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald_plugin_api::{ConfigError, ProviderConfig, Secret};
use herald_plugin_kit::config::{check_api_key, check_sender};
use herald_plugin_kit::http_url::{UrlKey, UrlKind};
use serde::Deserialize;

/// Resend's API, used unless `base_url` overrides it.
pub(crate) const DEFAULT_BASE_URL: &str = "https://api.resend.com";
/// The host of [`DEFAULT_BASE_URL`], the manifest's only allowed host.
pub(crate) const DEFAULT_HOST: &str = "api.resend.com";
/// The `base_url` override, as its errors name it.
const BASE_URL: UrlKey<'static> = UrlKey {
    key: "base_url",
    example: DEFAULT_BASE_URL,
    credentials_hint: "the API key is sent as a header",
};

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
    webhook_secret: Option<Secret>,
}

/// A validated Resend configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The instance name (`[[providers]] name`), for messages.
    pub(crate) name: String,
    pub(crate) api_key: Secret,
    /// Default sender, used when a message has no `from`.
    pub(crate) from: Option<String>,
    /// API base URL without a trailing `/`.
    pub(crate) base_url: String,
    /// The host of an overriding `base_url`; `None` means the manifest's hosts.
    pub(crate) host: Option<String>,
    /// The decoded Svix signing key; webhooks are refused while it is `None`.
    pub(crate) webhook_key: Option<WebhookKey>,
}

/// The HMAC key decoded from a `whsec_...` secret. `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct WebhookKey(Vec<u8>);

impl WebhookKey {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookKey(***)")
    }
}

impl Config {
    /// Parses and validates the instance's settings; every error names the key to fix.
    pub(crate) fn from_provider(config: &ProviderConfig) -> Result<Config, ConfigError> {
        let raw: RawConfig = config.parse()?;
        let name = config.name.clone();
        let err = |msg: String| ConfigError::new(format!("provider {name:?} (resend): {msg}"));

        let api_key = raw.api_key.ok_or_else(|| {
            err(
                "missing `api_key`: set api_key = \"${RESEND_API_KEY}\" (a Resend API key, re_...)"
                    .into(),
            )
        })?;
        check_api_key(api_key.expose(), "Resend", "re_").map_err(err)?;

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

        let webhook_key = match &raw.webhook_secret {
            Some(secret) => Some(decode_webhook_secret(secret.expose()).map_err(err)?),
            None => None,
        };

        Ok(Config {
            name,
            api_key,
            from: raw.from,
            base_url,
            host,
            webhook_key,
        })
    }
}

/// Decodes a Svix signing secret: `whsec_` followed by standard base64 (the prefix is
/// optional, as in the Svix libraries).
fn decode_webhook_secret(secret: &str) -> Result<WebhookKey, String> {
    let b64 = secret
        .trim()
        .strip_prefix("whsec_")
        .unwrap_or(secret.trim());
    let bytes = STANDARD.decode(b64).map_err(|_| {
        "`webhook_secret` is not a Resend webhook signing secret (expected whsec_ followed by base64, \
         as shown in the Resend dashboard)"
            .to_owned()
    })?;
    if bytes.is_empty() {
        return Err("`webhook_secret` is empty".into());
    }
    Ok(WebhookKey(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{API_KEY, WEBHOOK_SECRET, provider_config};
    use serde_json::json;

    fn load(settings: serde_json::Value) -> Result<Config, String> {
        Config::from_provider(&provider_config(settings)).map_err(|e| e.message)
    }

    #[test]
    fn minimal_config_uses_resend_api() {
        let c = load(json!({"api_key": API_KEY})).unwrap();
        assert_eq!(c.base_url, "https://api.resend.com");
        assert_eq!(c.host, None);
        assert_eq!(c.from, None);
        assert!(c.webhook_key.is_none());
    }

    #[test]
    fn full_config() {
        let c = load(json!({
            "api_key": API_KEY,
            "from": "Wedding <rsvp@example.com>",
            "base_url": "http://127.0.0.1:8080/resend/",
            "webhook_secret": WEBHOOK_SECRET,
        }))
        .unwrap();
        assert_eq!(c.base_url, "http://127.0.0.1:8080/resend");
        assert_eq!(c.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(c.from.as_deref(), Some("Wedding <rsvp@example.com>"));
        assert!(c.webhook_key.is_some());
    }

    #[test]
    fn base_url_host_is_bare_and_lower_case() {
        let c = load(json!({"api_key": API_KEY, "base_url": "http://[::1]:8080"})).unwrap();
        assert_eq!(c.base_url, "http://[::1]:8080");
        assert_eq!(c.host.as_deref(), Some("::1"));
        let c =
            load(json!({"api_key": API_KEY, "base_url": "https://Proxy.Example.com/r/"})).unwrap();
        assert_eq!(c.base_url, "https://proxy.example.com/r");
        assert_eq!(c.host.as_deref(), Some("proxy.example.com"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (json!({}), "missing `api_key`"),
            (json!({"api_key": ""}), "`api_key` is empty"),
            (json!({"api_key": "SG.abc"}), "start with `re_`"),
            (json!({"api_key": "re_a b"}), "whitespace"),
            (
                json!({"api_key": API_KEY, "from": "nobody"}),
                "`from` is not a valid sender",
            ),
            (
                json!({"api_key": API_KEY, "base_url": "ftp://x.io"}),
                "base_url = \"ftp://x.io\" must start with https:// or http://; expected e.g. \
                 https://api.resend.com",
            ),
            (
                json!({"api_key": API_KEY, "base_url": "not a url"}),
                "base_url = \"not a url\" contains spaces or control characters",
            ),
            (
                json!({"api_key": API_KEY, "base_url": "https://u:p@x.io"}),
                "base_url must not contain credentials (user:password@): the API key is sent \
                 as a header",
            ),
            (
                json!({"api_key": API_KEY, "base_url": "https://x.io/?a=b"}),
                "base_url = \"https://x.io/?a=b\" must not have a query or fragment",
            ),
            (
                json!({"api_key": API_KEY, "webhook_secret": "re_not_a_secret"}),
                "`webhook_secret`",
            ),
            (
                json!({"api_key": API_KEY, "api-key": "x"}),
                "unknown field `api-key`",
            ),
            (json!({"api_key": API_KEY, "from": 5}), "invalid type"),
        ];
        for (settings, want) in cases {
            let got = load(settings.clone()).unwrap_err();
            assert!(got.contains(want), "{settings}: {got}");
            assert!(got.contains("\"resend-main\""), "names the instance: {got}");
        }
    }

    #[test]
    fn errors_never_echo_the_key() {
        let secret = "SG.very-secret-value";
        let got = load(json!({"api_key": secret})).unwrap_err();
        assert!(!got.contains(secret), "{got}");
        let got = load(json!({"api_key": API_KEY, "webhook_secret": "whsec_!!!"})).unwrap_err();
        assert!(!got.contains("!!!"), "{got}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = load(json!({"api_key": API_KEY, "webhook_secret": WEBHOOK_SECRET})).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(API_KEY), "{debug}");
        assert!(debug.contains("WebhookKey(***)"), "{debug}");
    }
}
