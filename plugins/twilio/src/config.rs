//! The plugin's configuration, in two stages: [`RawConfig`] is exactly the `[[providers]]`
//! table (serde, unknown keys refused), and [`Config`] is the validated form every other
//! module uses. Nothing past [`Config::load`] sees unvalidated input.
//!
//! Also owns the list of config keys for the manifest (which are secrets) and the load-time
//! warnings the instance logs once. Error messages name the key and the fix, and never
//! echo a value that might be a secret.

use herald_plugin_api::duration::parse_duration_ms;
use herald_plugin_api::{ConfigError, ConfigKey, ProviderConfig, Secret, is_sms_sender};
use serde::Deserialize;

use herald_plugin_kit::http_url::{HttpUrl, UrlKey, UrlKind};

use crate::url::UrlParts;

/// Where the Messages API lives unless `base_url` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";
/// The host of [`DEFAULT_BASE_URL`].
pub const DEFAULT_HOST: &str = "api.twilio.com";
/// The `base_url` override, as its errors name it.
const BASE_URL: UrlKey<'static> = UrlKey {
    key: "base_url",
    example: DEFAULT_BASE_URL,
    credentials_hint: "use auth_token or api_key_secret",
};
/// Twilio's bounds for `ValidityPeriod`, in seconds.
const VALIDITY_RANGE: std::ops::RangeInclusive<u64> = 1..=36_000;
/// How long after an `undelivered` 30003/30008 the message is sent again, unless
/// `resend_after` says otherwise.
pub const DEFAULT_RESEND_AFTER_MS: u64 = 10 * 60_000;

/// The config keys, as the manifest states them.
pub fn keys() -> Vec<ConfigKey> {
    vec![
        ConfigKey::required(
            "account_sid",
            "Account SID (AC + 32 hex digits); always in the request path",
        ),
        ConfigKey::optional(
            "auth_token",
            "Auth Token: Basic-auth password with account_sid, and the webhook signing key \
             (give either auth_token or api_key_sid + api_key_secret)",
        )
        .secret(),
        ConfigKey::optional(
            "api_key_sid",
            "API key SID (SK + 32 hex digits), used instead of auth_token",
        ),
        ConfigKey::optional("api_key_secret", "the API key's secret").secret(),
        ConfigKey::optional(
            "from",
            "sender: E.164 number, short code or alphanumeric sender id \
             (give from or messaging_service_sid)",
        ),
        ConfigKey::optional(
            "messaging_service_sid",
            "Messaging Service SID (MG + 32 hex digits), the sender instead of from",
        ),
        ConfigKey::optional(
            "base_url",
            "API base URL (default https://api.twilio.com); for tests and egress proxies",
        ),
        ConfigKey::optional(
            "status_callback",
            "send webhooks.public_url as StatusCallback (default: on when webhooks can be \
             verified)",
        ),
        ConfigKey::optional(
            "webhook_auth_token",
            "Auth Token that verifies X-Twilio-Signature; required for webhooks when using an \
             API key (defaults to auth_token)",
        )
        .secret(),
        ConfigKey::optional(
            "validity_period",
            "seconds (1-36000) Twilio may queue the message before giving up",
        ),
        ConfigKey::optional(
            "resend_after",
            "delay before sending again a message the carrier left undelivered with a \
             temporary error (30003, 30008), e.g. \"10m\" (the default); bounded by \
             retry.max_attempts and retry.ttl; \"0s\" turns resending off",
        ),
    ]
}

/// The `[[providers]]` table as written, minus host-owned keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub account_sid: Option<String>,
    #[serde(default)]
    pub auth_token: Option<Secret>,
    #[serde(default)]
    pub api_key_sid: Option<String>,
    #[serde(default)]
    pub api_key_secret: Option<Secret>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub status_callback: Option<bool>,
    #[serde(default)]
    pub webhook_auth_token: Option<Secret>,
    #[serde(default)]
    pub validity_period: Option<u64>,
    #[serde(default)]
    pub resend_after: Option<String>,
}

/// The Basic-auth credentials for the Messages API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `AccountSid:AuthToken`.
    AuthToken(Secret),
    /// `SK...:secret`.
    ApiKey { sid: String, secret: Secret },
}

/// The validated configuration of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub account_sid: String,
    pub credentials: Credentials,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    /// The API base: scheme, authority and any path prefix (kept: proxies, mock servers),
    /// without a trailing `/`; and its host, as `allowed_hosts` reports it.
    pub base_url: HttpUrl,
    /// The `StatusCallback` URL to send (the instance's webhook URL), when enabled.
    pub status_callback: Option<String>,
    /// The Auth Token that verifies webhook signatures, when one is configured.
    pub webhook_token: Option<Secret>,
    pub validity_period: Option<u64>,
    /// The delay before a resend after a temporary carrier failure; `None` when
    /// `resend_after = "0s"` (such failures are final).
    pub resend_after_ms: Option<u64>,
}

/// A config plus the warnings worth logging once at load.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Parses and validates the settings of `provider`.
    pub fn load(provider: &ProviderConfig) -> Result<Loaded, ConfigError> {
        let raw: RawConfig = provider.parse()?;
        Config::validate(raw, provider.webhook_url.as_deref())
            .map_err(|e| ConfigError::new(format!("provider {:?}: {e}", provider.name)))
    }

    /// Turns a raw config into a validated one; `webhook_url` is the instance's public
    /// webhook URL, when the host has one.
    pub fn validate(raw: RawConfig, webhook_url: Option<&str>) -> Result<Loaded, String> {
        let mut warnings = Vec::new();

        let account_sid = raw.account_sid.ok_or(
            "account_sid is required: set account_sid = \"AC...\" (the Account SID shown in \
             the Twilio console)",
        )?;
        check_sid("account_sid", "AC", &account_sid)?;

        let credentials = match (raw.auth_token, raw.api_key_sid, raw.api_key_secret) {
            (Some(token), None, None) => {
                check_secret("auth_token", &token)?;
                Credentials::AuthToken(token)
            }
            (None, Some(sid), Some(secret)) => {
                check_sid("api_key_sid", "SK", &sid)?;
                check_secret("api_key_secret", &secret)?;
                Credentials::ApiKey { sid, secret }
            }
            (None, None, None) => {
                return Err(
                    "no credentials: set auth_token = \"${TWILIO_AUTH_TOKEN}\", or \
                            api_key_sid and api_key_secret = \"${TWILIO_API_KEY_SECRET}\""
                        .into(),
                );
            }
            (Some(_), _, _) => {
                return Err(
                    "auth_token and api_key_sid/api_key_secret are alternatives: \
                            keep one kind of credentials (to verify webhooks while sending \
                            with an API key, use webhook_auth_token)"
                        .into(),
                );
            }
            (None, Some(_), None) => {
                return Err("api_key_sid needs api_key_secret: set api_key_secret = \
                            \"${TWILIO_API_KEY_SECRET}\""
                    .into());
            }
            (None, None, Some(_)) => {
                return Err(
                    "api_key_secret needs api_key_sid: set api_key_sid = \"SK...\" \
                            (the SID of the API key)"
                        .into(),
                );
            }
        };

        if let Some(from) = &raw.from {
            check_sender(from)?;
        }
        if let Some(sid) = &raw.messaging_service_sid {
            check_sid("messaging_service_sid", "MG", sid)?;
        }
        match (&raw.from, &raw.messaging_service_sid) {
            (None, None) => {
                return Err(
                    "no sender: set from = \"+14155550100\" (a Twilio number, short \
                            code or alphanumeric sender id) or messaging_service_sid = \
                            \"MG...\""
                        .into(),
                );
            }
            (Some(_), Some(_)) => {
                return Err(
                    "from and messaging_service_sid are alternatives (Twilio takes \
                            exactly one sender): keep messaging_service_sid to let the \
                            service pick the number, or from to send from one number"
                        .into(),
                );
            }
            _ => {}
        }

        let base_url = BASE_URL.parse(
            raw.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
            UrlKind::Base,
        )?;
        if !base_url.is_https() && !base_url.is_loopback() {
            warnings.push(format!(
                "base_url uses plain http to {}: the Basic-auth credentials cross the network \
                 unencrypted",
                base_url.host
            ));
        }

        if let Some(token) = &raw.webhook_auth_token {
            check_secret("webhook_auth_token", token)?;
        }
        let webhook_token = raw.webhook_auth_token.or(match &credentials {
            Credentials::AuthToken(token) => Some(token.clone()),
            Credentials::ApiKey { .. } => None,
        });

        let status_callback = match (raw.status_callback, webhook_url) {
            (Some(false), _) | (None, None) => None,
            (Some(true), None) => {
                return Err(
                    "status_callback = true, but [webhooks] public_url is not set: \
                            set public_url so Twilio can reach Herald, or remove \
                            status_callback"
                        .into(),
                );
            }
            (Some(true), Some(_)) if webhook_token.is_none() => {
                return Err("status_callback = true needs a way to verify Twilio's \
                            signatures: with an API key, set webhook_auth_token = \
                            \"${TWILIO_AUTH_TOKEN}\""
                    .into());
            }
            (None, Some(_)) if webhook_token.is_none() => {
                warnings.push(
                    "delivery-status callbacks are off: webhooks cannot be verified with an \
                     API key alone; set webhook_auth_token = \"${TWILIO_AUTH_TOKEN}\" to \
                     enable them (or status_callback = false to silence this)"
                        .into(),
                );
                None
            }
            (_, Some(url)) => {
                check_callback_url(url)?;
                Some(url.to_string())
            }
        };

        if let Some(v) = raw.validity_period
            && !VALIDITY_RANGE.contains(&v)
        {
            return Err(format!(
                "validity_period must be between 1 and 36000 seconds (got {v})"
            ));
        }

        let resend_after_ms = match raw.resend_after.as_deref() {
            None => Some(DEFAULT_RESEND_AFTER_MS),
            Some(s) => {
                let ms = parse_duration_ms(s).map_err(|e| format!("resend_after: {e}"))?;
                (ms > 0).then_some(ms)
            }
        };

        Ok(Loaded {
            config: Config {
                account_sid,
                credentials,
                from: raw.from,
                messaging_service_sid: raw.messaging_service_sid,
                base_url,
                status_callback,
                webhook_token,
                validity_period: raw.validity_period,
                resend_after_ms,
            },
            warnings,
        })
    }
}

/// Describes a value without echoing it (it may be a secret pasted in the wrong key).
fn describe(value: &str) -> String {
    let head: String = value.chars().take(2).collect();
    format!(
        "got {} characters starting with {head:?}",
        value.chars().count()
    )
}

/// `prefix` followed by 32 hex digits, as every Twilio SID.
pub fn is_sid(prefix: &str, value: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_sid(key: &str, prefix: &str, value: &str) -> Result<(), String> {
    if is_sid(prefix, value) {
        Ok(())
    } else {
        Err(format!(
            "{key} must be {prefix} followed by 32 hex digits ({})",
            describe(value)
        ))
    }
}

fn check_secret(key: &str, value: &Secret) -> Result<(), String> {
    let v = value.expose();
    if v.is_empty() {
        Err(format!(
            "{key} is empty: check the environment variable it refers to"
        ))
    } else if v.trim() != v {
        Err(format!(
            "{key} has leading or trailing whitespace (a newline from a file?): strip it \
             from the environment variable"
        ))
    } else {
        Ok(())
    }
}

fn check_sender(from: &str) -> Result<(), String> {
    if is_sms_sender(from) {
        Ok(())
    } else {
        Err(format!(
            "from must be an E.164 number (+14155550100), a short code or an alphanumeric \
             sender id of at most 11 characters (got {from:?})"
        ))
    }
}

/// Twilio refuses a `StatusCallback` whose host name has an underscore.
fn check_callback_url(url: &str) -> Result<(), String> {
    let parts = UrlParts::parse(url).ok_or_else(|| {
        format!("the webhook URL {url:?} is not absolute: check [webhooks] public_url")
    })?;
    if parts.host.contains('_') {
        return Err(format!(
            "Twilio refuses status callbacks to a host name with an underscore ({:?}): \
             change [webhooks] public_url, or set status_callback = false",
            parts.host
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};

    pub const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
    pub const API_KEY: &str = "SK0123456789abcdef0123456789abcdef";
    pub const SERVICE: &str = "MG0123456789abcdef0123456789abcdef";
    pub const TOKEN: &str = "tok-5ecret-auth-token";
    pub const WEBHOOK_URL: &str = "https://hooks.example.com/webhooks/sms";

    pub fn provider(settings: Value, webhook_url: Option<&str>) -> ProviderConfig {
        herald_plugin_kit::testing::provider_config("sms", settings, webhook_url)
    }

    fn load(settings: Value, webhook_url: Option<&str>) -> Result<Loaded, String> {
        Config::load(&provider(settings, webhook_url)).map_err(|e| e.message)
    }

    fn err(settings: Value) -> String {
        load(settings, None).unwrap_err()
    }

    #[test]
    fn auth_token_config() {
        let loaded = load(
            json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100"}),
            Some(WEBHOOK_URL),
        )
        .unwrap();
        let c = loaded.config;
        assert_eq!(c.credentials, Credentials::AuthToken(Secret::new(TOKEN)));
        assert_eq!(c.base_url.url, "https://api.twilio.com");
        assert_eq!(c.base_url.host, "api.twilio.com");
        assert_eq!(c.status_callback.as_deref(), Some(WEBHOOK_URL));
        assert_eq!(c.webhook_token, Some(Secret::new(TOKEN)));
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn api_key_config_without_webhook_token_disables_callbacks_with_a_warning() {
        let settings = json!({
            "account_sid": ACCOUNT, "api_key_sid": API_KEY, "api_key_secret": "s3cret",
            "messaging_service_sid": SERVICE,
        });
        let loaded = load(settings.clone(), Some(WEBHOOK_URL)).unwrap();
        assert_eq!(loaded.config.status_callback, None);
        assert_eq!(loaded.config.webhook_token, None);
        assert!(loaded.warnings[0].contains("webhook_auth_token"));

        let mut explicit = settings.clone();
        explicit["status_callback"] = json!(true);
        let e = load(explicit, Some(WEBHOOK_URL)).unwrap_err();
        assert!(e.contains("webhook_auth_token"), "{e}");

        let mut with_token = settings;
        with_token["webhook_auth_token"] = json!(TOKEN);
        let c = load(with_token, Some(WEBHOOK_URL)).unwrap().config;
        assert_eq!(c.status_callback.as_deref(), Some(WEBHOOK_URL));
        assert_eq!(c.webhook_token, Some(Secret::new(TOKEN)));
    }

    #[test]
    fn status_callback_switches() {
        let base = json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100"});
        let mut off = base.clone();
        off["status_callback"] = json!(false);
        assert_eq!(
            load(off, Some(WEBHOOK_URL)).unwrap().config.status_callback,
            None
        );
        let mut on = base.clone();
        on["status_callback"] = json!(true);
        assert!(load(on, None).unwrap_err().contains("public_url"));
        assert_eq!(
            load(base.clone(), None).unwrap().config.status_callback,
            None
        );
        let e = load(base, Some("https://my_hooks.example.com/webhooks/sms")).unwrap_err();
        assert!(
            e.contains("underscore") && e.contains("status_callback = false"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let cases = [
            (
                json!({"auth_token": TOKEN, "from": "+14155550100"}),
                "account_sid is required",
            ),
            (
                json!({"account_sid": "AC123", "auth_token": TOKEN, "from": "+14155550100"}),
                "account_sid must be AC followed by 32 hex digits (got 5 characters",
            ),
            (
                json!({"account_sid": ACCOUNT.replace('a', "g"), "auth_token": TOKEN, "from": "x"}),
                "account_sid must be AC followed by 32 hex digits",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "messaging_service_sid": "MGxyz"}),
                "messaging_service_sid must be MG followed by 32 hex digits",
            ),
            (
                json!({"account_sid": ACCOUNT, "api_key_sid": ACCOUNT, "api_key_secret": "s", "from": "+14155550100"}),
                "api_key_sid must be SK followed by 32 hex digits",
            ),
            (
                json!({"account_sid": ACCOUNT, "from": "+14155550100"}),
                "no credentials: set auth_token",
            ),
            (
                json!({"account_sid": ACCOUNT, "api_key_sid": API_KEY, "from": "+14155550100"}),
                "api_key_sid needs api_key_secret",
            ),
            (
                json!({"account_sid": ACCOUNT, "api_key_secret": "s", "from": "+14155550100"}),
                "api_key_secret needs api_key_sid",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "api_key_sid": API_KEY, "api_key_secret": "s", "from": "+14155550100"}),
                "alternatives",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN}),
                "no sender: set from",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "messaging_service_sid": SERVICE}),
                "from and messaging_service_sid are alternatives",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "14155550100 ext"}),
                "from must be an E.164 number",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": "", "from": "+14155550100"}),
                "auth_token is empty",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": "tok\n", "from": "+14155550100"}),
                "auth_token has leading or trailing whitespace",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "validity_period": 0}),
                "validity_period must be between 1 and 36000",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "validity_period": 36001}),
                "validity_period must be between 1 and 36000",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "base_url": "api.twilio.com"}),
                "base_url = \"api.twilio.com\" is not an absolute URL; expected e.g. \
                 https://api.twilio.com",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "base_url": "ftp://x.example"}),
                "base_url = \"ftp://x.example\" must start with https:// or http://",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "base_url": "https://u:p@x.example"}),
                "base_url must not contain credentials (user:password@): use auth_token or \
                 api_key_secret",
            ),
            (
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "authtoken": "x"}),
                "unknown field `authtoken`",
            ),
        ];
        for (settings, expected) in cases {
            let e = err(settings.clone());
            assert!(e.contains(expected), "{settings}: {e}");
            assert!(e.starts_with("provider \"sms\": "), "{e}");
        }
    }

    #[test]
    fn errors_never_echo_a_secret_put_in_the_wrong_key() {
        let e = err(json!({"account_sid": TOKEN, "auth_token": TOKEN, "from": "+14155550100"}));
        assert!(!e.contains(TOKEN), "{e}");
        assert!(e.contains("starting with \"to\""), "{e}");
    }

    #[test]
    fn senders_and_base_url_overrides() {
        for ok in ["+14155550100", "12345", "Herald", "Wedding 24"] {
            assert!(is_sms_sender(ok), "{ok}");
        }
        for bad in ["", "+1415", "123456789", "Herald & Co", "TwelveLetters"] {
            assert!(!is_sms_sender(bad), "{bad}");
        }
        let base = |url: &str| {
            load(
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "base_url": url}),
                None,
            )
            .map(|l| (l.config.base_url, l.warnings.len()))
        };
        let (b, warnings) = base("http://127.0.0.1:8099/").unwrap();
        assert_eq!(b.url, "http://127.0.0.1:8099");
        assert_eq!(b.host, "127.0.0.1");
        assert_eq!(warnings, 0);
        let (b, warnings) = base("HTTP://Proxy.Internal:3128/twilio/").unwrap();
        assert_eq!(b.url, "http://proxy.internal:3128/twilio");
        assert_eq!(b.host, "proxy.internal");
        assert_eq!(warnings, 1, "plain http off loopback is worth a warning");
        let (b, warnings) = base("http://[::1]:8099").unwrap();
        assert_eq!(
            (b.url.as_str(), b.host.as_str()),
            ("http://[::1]:8099", "::1")
        );
        assert_eq!(warnings, 0);
        // Not loopback, whatever its name starts with.
        assert_eq!(base("http://127.example.com").unwrap().1, 1);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let loaded = load(
            json!({
                "account_sid": ACCOUNT, "api_key_sid": API_KEY, "api_key_secret": "api-5ecret",
                "webhook_auth_token": TOKEN, "from": "+14155550100",
            }),
            Some(WEBHOOK_URL),
        )
        .unwrap();
        let debug = format!("{loaded:?}");
        assert!(
            !debug.contains("api-5ecret") && !debug.contains(TOKEN),
            "{debug}"
        );
        assert!(debug.contains("***"));
        let raw: RawConfig = serde_json::from_value(json!({"auth_token": TOKEN})).unwrap();
        assert!(!format!("{raw:?}").contains(TOKEN));
    }

    #[test]
    fn manifest_keys_mark_the_secrets() {
        let secrets: Vec<String> = keys()
            .into_iter()
            .filter(|k| k.secret)
            .map(|k| k.name)
            .collect();
        assert_eq!(
            secrets,
            ["auth_token", "api_key_secret", "webhook_auth_token"]
        );
        // Every key of RawConfig is declared, and nothing else.
        let mut declared: Vec<String> = keys().into_iter().map(|k| k.name).collect();
        declared.sort();
        let mut all = json!({});
        for k in &declared {
            all[k] = Value::Null;
        }
        assert!(serde_json::from_value::<RawConfig>(all).is_ok());
    }
}
