//! APNs configuration: the `[[providers]]` keys ([`RawConfig`]), the `.p8` auth key they
//! point at, and the validated [`Config`] an instance runs with. Every error names the key
//! (and the file) at fault; no error or `Debug` output ever shows key material.

use std::fmt;
use std::path::{Path, PathBuf};

use herald_plugin_api::{ConfigError, ConfigKey, ProviderConfig, Secret};
use herald_plugin_kit::http_url::{UrlKey, UrlKind};
use jsonwebtoken::EncodingKey;
use serde::Deserialize;

/// The `base_url` override, as its errors name it.
const BASE_URL: UrlKey<'static> = UrlKey {
    key: "base_url",
    example: "https://api.push.apple.com",
    credentials_hint: "the provider token is sent as a header",
};

/// The `[[providers]]` keys this plugin reads, as written by the operator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Path to the `.p8` auth key downloaded from the Apple developer account.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The `.p8` PEM itself (secret: `${ENV}` only).
    #[serde(default)]
    pub key: Option<Secret>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub team_id: Option<String>,
    /// The app's bundle id.
    #[serde(default)]
    pub topic: Option<String>,
    /// `production` or `sandbox`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Overrides the environment's host (tests, proxies).
    #[serde(default)]
    pub base_url: Option<String>,
}

/// The config keys, as the manifest states them.
pub fn keys() -> Vec<ConfigKey> {
    vec![
        ConfigKey::optional(
            "key_file",
            "path to the APNs auth key (AuthKey_XXXXXXXXXX.p8); this or key is required",
        ),
        ConfigKey::optional(
            "key",
            "the .p8 auth key PEM itself, as a ${ENV_VAR} reference; this or key_file is required",
        )
        .secret(),
        ConfigKey::required("key_id", "the 10-character Key ID of the auth key"),
        ConfigKey::required(
            "team_id",
            "the 10-character Team ID of the Apple developer account",
        ),
        ConfigKey::required("topic", "the app's bundle id (apns-topic)"),
        ConfigKey::required(
            "environment",
            "\"production\" (api.push.apple.com) or \"sandbox\" (api.sandbox.push.apple.com, \
             for development builds)",
        ),
        ConfigKey::optional(
            "base_url",
            "overrides the environment's APNs URL (tests, proxies)",
        ),
    ]
}

/// Which APNs the device tokens belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Production,
    Sandbox,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Sandbox => "sandbox",
        }
    }

    pub fn host(self) -> &'static str {
        match self {
            Environment::Production => "api.push.apple.com",
            Environment::Sandbox => "api.sandbox.push.apple.com",
        }
    }
}

/// A validated APNs instance configuration.
pub struct Config {
    /// The ES256 auth key. Never printed.
    pub key: EncodingKey,
    pub key_id: String,
    pub team_id: String,
    pub topic: String,
    pub environment: Environment,
    /// Without a trailing slash.
    pub base_url: String,
    /// The host of `base_url`, as `allowed_hosts` reports it.
    pub host: String,
    /// Something the operator should know that does not stop the load.
    pub warnings: Vec<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("key", &"***")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("environment", &self.environment)
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl Config {
    /// Parses and validates the settings, reads the key (the one I/O a plugin may do) and
    /// checks that it can sign an ES256 JWT.
    pub fn load(config: &ProviderConfig) -> Result<Config, ConfigError> {
        let name = &config.name;
        let err = |msg: String| ConfigError::new(format!("provider {name:?}: {msg}"));
        let raw: RawConfig = config.parse()?;
        let mut warnings = vec![];

        let (source, pem) = match (&raw.key_file, &raw.key) {
            (Some(_), Some(_)) => return Err(err("set key_file or key, not both".into())),
            (None, None) => {
                return Err(err("missing auth key: set key_file = \
                     \"/path/to/AuthKey_XXXXXXXXXX.p8\" or key = \"${APNS_KEY}\""
                    .into()));
            }
            (Some(path), None) => {
                let source = format!("key_file {:?}", path.display().to_string());
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err(format!("{source}: cannot read the file: {e}")))?;
                (source, Secret::new(text))
            }
            // A PEM squeezed into one environment line often arrives with literal `\n`.
            (None, Some(key)) if !key.expose().contains('\n') => (
                "key".to_string(),
                Secret::new(key.expose().replace("\\n", "\n")),
            ),
            (None, Some(key)) => ("key".to_string(), key.clone()),
        };
        let not_a_key = |why: &str| {
            err(format!(
                "{source} is not an APNs auth key ({why}); expected the PEM PKCS#8 EC P-256 \
                 private key of an AuthKey_XXXXXXXXXX.p8 file"
            ))
        };
        let key = EncodingKey::from_ec_pem(pem.expose().as_bytes())
            .map_err(|e| not_a_key(&e.to_string()))?;

        let key_id = apple_id(
            "key_id",
            raw.key_id.as_deref(),
            "the Key ID shown with the key",
        )
        .map_err(err)?;
        let team_id = apple_id(
            "team_id",
            raw.team_id.as_deref(),
            "the Team ID of the developer account (Membership details)",
        )
        .map_err(err)?;
        if let Some(file_id) = raw.key_file.as_deref().and_then(key_id_of_file_name)
            && file_id != key_id
        {
            warnings.push(format!(
                "key_id {key_id:?} differs from the key file name (AuthKey_{file_id}.p8); \
                 APNs will refuse the tokens if the key id is wrong"
            ));
        }

        let topic = match raw.topic.as_deref().map(str::trim) {
            Some(t)
                if !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || c.is_control()) =>
            {
                t.to_string()
            }
            Some(t) => {
                return Err(err(format!(
                    "topic {t:?} is not a bundle id (e.g. com.example.app)"
                )));
            }
            None => {
                return Err(err(
                    "topic is required: the app's bundle id (e.g. com.example.app)".into(),
                ));
            }
        };
        let environment = match raw.environment.as_deref() {
            Some("production") => Environment::Production,
            Some("sandbox") => Environment::Sandbox,
            Some(other) => {
                return Err(err(format!(
                    "environment = {other:?}: expected \"production\" or \"sandbox\" (sandbox is \
                     the \"development\" APNs for debug builds)"
                )));
            }
            None => {
                return Err(err(
                    "environment is required: \"production\" or \"sandbox\" \
                     (device tokens of debug builds are sandbox tokens)"
                        .into(),
                ));
            }
        };
        let default_url = format!("https://{}", environment.host());
        let base_url = BASE_URL
            .parse(
                raw.base_url.as_deref().unwrap_or(&default_url),
                UrlKind::Base,
            )
            .map_err(err)?;

        let config = Config {
            key,
            key_id,
            team_id,
            topic,
            environment,
            base_url: base_url.url,
            host: base_url.host,
            warnings,
        };
        // Sign once now: a key that parses but is not P-256 fails here, not at the first send.
        crate::jwt::mint(&config, 0).map_err(|e| not_a_key(&format!("cannot sign ES256: {e}")))?;
        Ok(config)
    }
}

/// Key and team ids are 10 upper-case letters or digits.
fn apple_id(key: &str, value: Option<&str>, what: &str) -> Result<String, String> {
    let Some(value) = value else {
        return Err(format!("{key} is required: {what} (10 characters)"));
    };
    let ok = value.len() == 10
        && value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{key} = {value:?} is not valid: expected {what}, 10 upper-case letters or digits"
        ))
    }
}

/// `XXXXXXXXXX` of `AuthKey_XXXXXXXXXX.p8`.
fn key_id_of_file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let id = name.strip_prefix("AuthKey_")?.strip_suffix(".p8")?;
    (id.len() == 10).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{P8_KEY, P384_KEY, base_settings, fixture, provider_config};
    use serde_json::{Value, json};

    fn load(settings: Value) -> Result<Config, String> {
        Config::load(&provider_config(settings)).map_err(|e| e.message)
    }

    fn with(mut settings: Value, key: &str, value: Value) -> Value {
        let obj = settings.as_object_mut().unwrap();
        if value.is_null() {
            obj.remove(key);
        } else {
            obj.insert(key.into(), value);
        }
        settings
    }

    #[test]
    fn loads_a_key_file() {
        let c = load(base_settings()).unwrap();
        assert_eq!(c.key_id, "TESTKEY123");
        assert_eq!(c.team_id, "TEAM000001");
        assert_eq!(c.topic, "com.example.wedding");
        assert_eq!(c.environment, Environment::Production);
        assert_eq!(c.base_url, "https://api.push.apple.com");
        assert_eq!(c.host, "api.push.apple.com");
        assert!(c.warnings.is_empty());

        let sandbox = load(with(base_settings(), "environment", json!("sandbox"))).unwrap();
        assert_eq!(sandbox.base_url, "https://api.sandbox.push.apple.com");
        let local = load(with(
            base_settings(),
            "base_url",
            json!("http://127.0.0.1:2197/"),
        ))
        .unwrap();
        assert_eq!(
            (local.base_url.as_str(), local.host.as_str()),
            ("http://127.0.0.1:2197", "127.0.0.1")
        );
    }

    #[test]
    fn key_from_the_environment_even_with_escaped_newlines() {
        let pem = std::fs::read_to_string(fixture(P8_KEY)).unwrap();
        let settings = with(base_settings(), "key_file", Value::Null);
        assert!(load(with(settings.clone(), "key", json!(pem))).is_ok());
        let one_line = pem.trim_end().replace('\n', "\\n");
        assert!(load(with(settings, "key", json!(one_line))).is_ok());
    }

    #[test]
    fn debug_never_shows_key_material() {
        let pem = std::fs::read_to_string(fixture(P8_KEY)).unwrap();
        let settings = with(
            with(base_settings(), "key_file", Value::Null),
            "key",
            json!(pem),
        );
        let raw: RawConfig = provider_config(settings.clone()).parse().unwrap();
        let c = load(settings).unwrap();
        let body_line = pem.lines().nth(1).unwrap();
        for shown in [format!("{raw:?}"), format!("{c:?}"), format!("{c:#?}")] {
            assert!(!shown.contains("PRIVATE KEY"), "{shown}");
            assert!(!shown.contains(body_line), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn config_errors_name_the_key_and_file() {
        let no_key = with(base_settings(), "key_file", Value::Null);
        let cases = [
            (
                no_key.clone(),
                "provider \"apns\": missing auth key: set key_file",
            ),
            (
                with(base_settings(), "key", json!("x")),
                "set key_file or key, not both",
            ),
            (
                with(
                    base_settings(),
                    "key_file",
                    json!("/nonexistent/AuthKey_TESTKEY123.p8"),
                ),
                "provider \"apns\": key_file \"/nonexistent/AuthKey_TESTKEY123.p8\": cannot read the file: No such file",
            ),
            (
                with(
                    no_key.clone(),
                    "key",
                    json!("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"),
                ),
                "provider \"apns\": key is not an APNs auth key (InvalidKeyFormat)",
            ),
            (
                with(no_key.clone(), "key", json!("just some text")),
                "key is not an APNs auth key",
            ),
            (
                with(base_settings(), "key_file", json!(fixture(P384_KEY))),
                "test-only-p384.p8\" is not an APNs auth key (cannot sign ES256",
            ),
            (
                with(base_settings(), "key_file", json!(fixture("README.md"))),
                "README.md\" is not an APNs auth key",
            ),
            (
                with(base_settings(), "key_id", Value::Null),
                "key_id is required: the Key ID shown with the key (10 characters)",
            ),
            (
                with(base_settings(), "key_id", json!("ABC123")),
                "key_id = \"ABC123\" is not valid: expected the Key ID shown with the key, 10 upper-case letters or digits",
            ),
            (
                with(base_settings(), "key_id", json!("testkey123")),
                "key_id = \"testkey123\" is not valid",
            ),
            (
                with(base_settings(), "team_id", json!("TEAM-00001")),
                "team_id = \"TEAM-00001\" is not valid",
            ),
            (
                with(base_settings(), "team_id", Value::Null),
                "team_id is required",
            ),
            (
                with(base_settings(), "topic", Value::Null),
                "topic is required: the app's bundle id",
            ),
            (
                with(base_settings(), "topic", json!("com.example app")),
                "topic \"com.example app\" is not a bundle id",
            ),
            (
                with(base_settings(), "environment", Value::Null),
                "environment is required: \"production\" or \"sandbox\"",
            ),
            (
                with(base_settings(), "environment", json!("development")),
                "environment = \"development\": expected \"production\" or \"sandbox\"",
            ),
            (
                with(base_settings(), "base_url", json!("api.push.apple.com")),
                "base_url = \"api.push.apple.com\" is not an absolute URL; expected e.g. \
                 https://api.push.apple.com",
            ),
            (
                with(
                    base_settings(),
                    "base_url",
                    json!("ftp://api.push.apple.com"),
                ),
                "base_url = \"ftp://api.push.apple.com\" must start with https:// or http://",
            ),
            (
                with(base_settings(), "certificate", json!("x")),
                "unknown field `certificate`",
            ),
        ];
        for (settings, expected) in cases {
            let message = load(settings.clone()).unwrap_err();
            assert!(message.contains(expected), "{settings}: {message}");
            assert!(!message.contains("bm90IGEga2V5"), "{message}");
        }
    }

    #[test]
    fn a_key_id_unlike_the_file_name_is_a_warning() {
        let c = load(with(base_settings(), "key_id", json!("OTHERKEY99"))).unwrap();
        assert_eq!(
            c.warnings,
            [
                "key_id \"OTHERKEY99\" differs from the key file name (AuthKey_TESTKEY123.p8); \
              APNs will refuse the tokens if the key id is wrong"
            ]
        );
    }

    #[test]
    fn urls_and_hosts() {
        let url = |base_url: &str| {
            load(with(base_settings(), "base_url", json!(base_url))).map(|c| (c.base_url, c.host))
        };
        assert_eq!(
            url("https://APNS.example.com:8443/").unwrap(),
            (
                "https://apns.example.com:8443".into(),
                "apns.example.com".into()
            )
        );
        assert_eq!(
            url("http://[::1]:2197").unwrap(),
            ("http://[::1]:2197".into(), "::1".into())
        );
        for bad in [
            "ftp://x",
            "https://",
            "https://u@x",
            "https://x:y",
            "https://x?y",
            "http://[::1",
        ] {
            let e = url(bad).unwrap_err();
            assert!(e.starts_with("provider \"apns\": base_url"), "{bad}: {e}");
        }
    }
}
