//! FCM configuration: the `[[providers]]` keys ([`RawConfig`]), the service-account JSON
//! they point at, and the validated [`Config`] an instance runs with. Every error names
//! the key (and the file) at fault; no error or `Debug` output ever shows key material.

use std::fmt;
use std::path::PathBuf;

use herald_plugin_api::{ConfigError, ConfigKey, ProviderConfig, Secret};
use herald_plugin_kit::http_url::{UrlKey, UrlKind};
use jsonwebtoken::EncodingKey;
use serde::Deserialize;
use serde_json::Value;

/// FCM's API host.
pub const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";
/// Google's OAuth token endpoint, used when the credentials name none.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The URLs of the config and of the credentials, as their errors name them.
const BASE_URL: UrlKey<'static> = UrlKey {
    key: "base_url",
    example: DEFAULT_BASE_URL,
    credentials_hint: "the OAuth access token is sent as a header",
};
const TOKEN_URL: UrlKey<'static> = UrlKey {
    key: "token_url",
    example: DEFAULT_TOKEN_URI,
    credentials_hint: "the service account's signed assertion is the credential",
};
const TOKEN_URI: UrlKey<'static> = UrlKey {
    key: "token_uri",
    ..TOKEN_URL
};

/// The `[[providers]]` keys this plugin reads, as written by the operator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Path to the service-account JSON downloaded from the Firebase console.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// The service-account JSON itself (secret: `${ENV}` only).
    #[serde(default)]
    pub credentials_json: Option<Secret>,
    /// Overrides the `project_id` of the credentials.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Overrides `https://fcm.googleapis.com` (tests, proxies).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Where to POST the token exchange instead of the credentials' `token_uri` (tests,
    /// proxies). The JWT audience stays the credentials' `token_uri`.
    #[serde(default)]
    pub token_url: Option<String>,
}

/// The config keys, as the manifest states them.
pub fn keys() -> Vec<ConfigKey> {
    vec![
        ConfigKey::optional(
            "credentials_file",
            "path to the service-account JSON (Firebase console > Project settings > Service \
             accounts); this or credentials_json is required",
        ),
        ConfigKey::optional(
            "credentials_json",
            "the service-account JSON itself, as a ${ENV_VAR} reference; this or \
             credentials_file is required",
        )
        .secret(),
        ConfigKey::optional(
            "project_id",
            "Firebase project id; defaults to the project_id of the credentials",
        ),
        ConfigKey::optional(
            "base_url",
            "FCM API base URL; default https://fcm.googleapis.com",
        ),
        ConfigKey::optional(
            "token_url",
            "OAuth token endpoint to POST to; default the credentials' token_uri \
             (https://oauth2.googleapis.com/token)",
        ),
    ]
}

/// A validated FCM instance configuration.
pub struct Config {
    pub project_id: String,
    /// The service account (`iss` of the assertion).
    pub client_email: String,
    /// The key id (`kid` of the assertion). An identifier, not key material.
    pub private_key_id: String,
    /// The service account's RSA key. Never printed.
    pub key: EncodingKey,
    /// The `aud` of the assertion: the credentials' `token_uri`.
    pub token_audience: String,
    /// Where the token exchange is POSTed.
    pub token_url: String,
    /// `{base_url}/v1/projects/{project_id}/messages:send`.
    pub send_url: String,
    /// The hosts of `send_url` and `token_url`.
    pub hosts: Vec<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("key", &"***")
            .field("token_audience", &self.token_audience)
            .field("token_url", &self.token_url)
            .field("send_url", &self.send_url)
            .finish()
    }
}

/// The parts of a service-account file this plugin uses.
struct ServiceAccount {
    project_id: Option<String>,
    client_email: String,
    private_key_id: String,
    private_key: Secret,
    token_uri: Option<String>,
}

impl Config {
    /// Parses and validates the settings, reads the credentials (the one I/O a plugin may
    /// do) and checks that the key can sign.
    pub fn load(config: &ProviderConfig) -> Result<Config, ConfigError> {
        let name = &config.name;
        let err = |msg: String| ConfigError::new(format!("provider {name:?}: {msg}"));
        let raw: RawConfig = config.parse()?;

        let (source, json) = match (&raw.credentials_file, &raw.credentials_json) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "set credentials_file or credentials_json, not both".into()
                ));
            }
            (None, None) => {
                return Err(err("missing credentials: set credentials_file = \
                     \"/path/to/service-account.json\" or credentials_json = \
                     \"${FCM_CREDENTIALS_JSON}\""
                    .into()));
            }
            (Some(path), None) => {
                let source = format!("credentials_file {:?}", path.display().to_string());
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err(format!("{source}: cannot read the file: {e}")))?;
                (source, Secret::new(text))
            }
            (None, Some(json)) => ("credentials_json".to_string(), json.clone()),
        };
        let account =
            parse_service_account(json.expose()).map_err(|m| err(format!("{source}: {m}")))?;

        let key =
            EncodingKey::from_rsa_pem(account.private_key.expose().as_bytes()).map_err(|e| {
                err(format!(
                    "{source}: private_key is not a PEM RSA private key ({e}); download a new \
                 key from the Firebase console"
                ))
            })?;

        let project_id = match raw.project_id.or(account.project_id) {
            Some(id) => id,
            None => {
                return Err(err(format!(
                    "{source} has no project_id; set project_id = \"your-firebase-project\""
                )));
            }
        };
        validate_project_id(&project_id).map_err(err)?;

        let token_audience = account
            .token_uri
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string());
        // The audience is checked but kept as written: Google compares it to its own.
        TOKEN_URI
            .parse(&token_audience, UrlKind::Base)
            .map_err(|m| err(format!("{source}: {m}")))?;
        let token_url = TOKEN_URL
            .parse(
                raw.token_url.as_deref().unwrap_or(&token_audience),
                UrlKind::Base,
            )
            .map_err(err)?;
        let base_url = BASE_URL
            .parse(
                raw.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
                UrlKind::Base,
            )
            .map_err(err)?;

        let mut hosts = vec![base_url.host];
        if !hosts.contains(&token_url.host) {
            hosts.push(token_url.host);
        }
        let (base_url, token_url) = (base_url.url, token_url.url);
        let config = Config {
            send_url: format!("{base_url}/v1/projects/{project_id}/messages:send"),
            project_id,
            client_email: account.client_email,
            private_key_id: account.private_key_id,
            key,
            token_audience,
            token_url,
            hosts,
        };
        // Sign once now, so a key that parses but cannot sign is a load error, not a
        // failure at the first send.
        crate::token::assertion(&config, 0).map_err(|e| {
            err(format!(
                "{source}: private_key cannot sign RS256 ({e}); it must be an RSA key"
            ))
        })?;
        Ok(config)
    }
}

/// Reads the fields this plugin needs. Works on a `Value` and writes its own messages, so
/// no serde error can echo a piece of the (secret) file.
fn parse_service_account(json: &str) -> Result<ServiceAccount, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| {
        format!(
            "not a service-account JSON file (invalid JSON at line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let Value::Object(obj) = value else {
        return Err("not a service-account JSON file (expected a JSON object)".into());
    };
    let text = |field: &str| -> Result<Option<String>, String> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("field {field:?} must be a string")),
        }
    };
    let required = |field: &str| -> Result<String, String> {
        text(field)?.ok_or_else(|| {
            format!(
                "field {field:?} is missing; use the service-account key file from the \
                 Firebase console (Project settings > Service accounts)"
            )
        })
    };
    if let Some(kind) = text("type")?
        && kind != "service_account"
    {
        return Err(format!(
            "\"type\" is {kind:?}, expected \"service_account\" (user or external-account \
             credentials are not supported)"
        ));
    }
    Ok(ServiceAccount {
        project_id: text("project_id")?,
        client_email: required("client_email")?,
        private_key_id: required("private_key_id")?,
        private_key: Secret::new(required("private_key")?),
        token_uri: text("token_uri")?,
    })
}

fn validate_project_id(id: &str) -> Result<(), String> {
    // Project ids are lower-case letters, digits and hyphens; legacy domain-scoped ids
    // add `example.com:`; project numbers are digits.
    let ok = !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "project_id {id:?} is not a Firebase project id (letters, digits and hyphens)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{SERVICE_ACCOUNT, fixture, provider_config};
    use serde_json::json;

    fn load(settings: Value) -> Result<Config, String> {
        Config::load(&provider_config(settings)).map_err(|e| e.message)
    }

    #[test]
    fn loads_a_service_account_file() {
        let c = load(json!({"credentials_file": fixture(SERVICE_ACCOUNT)})).unwrap();
        assert_eq!(c.project_id, "herald-test");
        assert_eq!(
            c.client_email,
            "herald-test@herald-test.iam.gserviceaccount.com"
        );
        assert_eq!(c.token_url, "https://oauth2.googleapis.com/token");
        assert_eq!(c.token_audience, "https://oauth2.googleapis.com/token");
        assert_eq!(
            c.send_url,
            "https://fcm.googleapis.com/v1/projects/herald-test/messages:send"
        );
        assert_eq!(c.hosts, ["fcm.googleapis.com", "oauth2.googleapis.com"]);
    }

    #[test]
    fn credentials_json_and_overrides() {
        let json_text = std::fs::read_to_string(fixture(SERVICE_ACCOUNT)).unwrap();
        let c = load(json!({
            "credentials_json": json_text,
            "project_id": "other-project",
            "base_url": "http://127.0.0.1:8080/",
            "token_url": "http://127.0.0.1:8081/token",
        }))
        .unwrap();
        assert_eq!(
            c.send_url,
            "http://127.0.0.1:8080/v1/projects/other-project/messages:send"
        );
        assert_eq!(c.token_url, "http://127.0.0.1:8081/token");
        // The audience stays what Google expects, even through a proxy.
        assert_eq!(c.token_audience, "https://oauth2.googleapis.com/token");
        assert_eq!(c.hosts, ["127.0.0.1"]);
    }

    #[test]
    fn debug_never_shows_key_material() {
        let json_text = std::fs::read_to_string(fixture(SERVICE_ACCOUNT)).unwrap();
        let raw_settings = json!({"credentials_json": json_text});
        let raw: RawConfig = provider_config(raw_settings.clone()).parse().unwrap();
        let c = load(raw_settings).unwrap();
        for shown in [format!("{raw:?}"), format!("{c:?}"), format!("{c:#?}")] {
            assert!(!shown.contains("PRIVATE KEY"), "{shown}");
            assert!(!shown.contains("MII"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn config_errors_name_the_key_and_file() {
        let cases = [
            (
                json!({}),
                "provider \"fcm\": missing credentials: set credentials_file",
            ),
            (
                json!({"credentials_file": "/nonexistent/sa.json"}),
                "provider \"fcm\": credentials_file \"/nonexistent/sa.json\": cannot read the file: No such file",
            ),
            (
                json!({"credentials_file": fixture(SERVICE_ACCOUNT), "credentials_json": "{}"}),
                "set credentials_file or credentials_json, not both",
            ),
            (
                json!({"credentials_json": "{not json"}),
                "credentials_json: not a service-account JSON file (invalid JSON at line 1, column 2)",
            ),
            (
                json!({"credentials_json": "{\"type\": \"authorized_user\"}"}),
                "\"type\" is \"authorized_user\", expected \"service_account\"",
            ),
            (
                json!({"credentials_json": "{\"private_key\": \"x\", \"private_key_id\": \"k\"}"}),
                "credentials_json: field \"client_email\" is missing",
            ),
            (
                json!({"credentials_json": json!({
                    "client_email": "a@b.iam.gserviceaccount.com",
                    "private_key_id": "k",
                    "private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
                    "project_id": "p",
                }).to_string()}),
                "credentials_json: private_key is not a PEM RSA private key",
            ),
            (
                json!({"credentials_file": fixture(SERVICE_ACCOUNT), "project_id": "a/b"}),
                "project_id \"a/b\" is not a Firebase project id",
            ),
            (
                json!({"credentials_file": fixture(SERVICE_ACCOUNT), "base_url": "fcm.googleapis.com"}),
                "base_url = \"fcm.googleapis.com\" is not an absolute URL; expected e.g. \
                 https://fcm.googleapis.com",
            ),
            (
                json!({"credentials_file": fixture(SERVICE_ACCOUNT), "token_url": "http://:80/token"}),
                "token_url = \"http://:80/token\" has no host; expected e.g. \
                 https://oauth2.googleapis.com/token",
            ),
            (
                json!({"credentials_file": fixture(SERVICE_ACCOUNT), "api_key": "x"}),
                "unknown field `api_key`",
            ),
        ];
        for (settings, expected) in cases {
            let message = load(settings.clone()).unwrap_err();
            assert!(message.contains(expected), "{settings}: {message}");
            assert!(!message.contains("not a key"), "{message}");
        }
    }

    #[test]
    fn missing_project_id() {
        let mut sa: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(SERVICE_ACCOUNT)).unwrap())
                .unwrap();
        sa.as_object_mut().unwrap().remove("project_id");
        let message = load(json!({"credentials_json": sa.to_string()})).unwrap_err();
        assert!(
            message.contains("credentials_json has no project_id; set project_id"),
            "{message}"
        );
        let c = load(json!({"credentials_json": sa.to_string(), "project_id": "p-1"})).unwrap();
        assert_eq!(c.project_id, "p-1");
    }

    #[test]
    fn urls_and_hosts() {
        let urls = |base_url: &str| {
            load(json!({"credentials_file": fixture(SERVICE_ACCOUNT), "base_url": base_url}))
                .map(|c| (c.send_url, c.hosts))
        };
        assert_eq!(
            urls("https://FCM.example.com:8443/x/").unwrap(),
            (
                "https://fcm.example.com:8443/x/v1/projects/herald-test/messages:send".into(),
                vec!["fcm.example.com".into(), "oauth2.googleapis.com".into()]
            )
        );
        assert_eq!(
            urls("http://[::1]:9000").unwrap().1,
            ["::1", "oauth2.googleapis.com"]
        );
        for bad in [
            "ftp://x",
            "https://",
            "https://u:p@x.com",
            "https://x.com:abc",
            "https://x.com?q=1",
            "https://[::1",
        ] {
            let e = urls(bad).unwrap_err();
            assert!(e.starts_with("provider \"fcm\": base_url"), "{bad}: {e}");
        }
    }
}
