//! Small config checks several plugins make alike: the shape of a provider's API key
//! (checked without ever echoing it), the default sender `from`, and the optional
//! `request_timeout` duration. Messages name the key and the fix; the plugin prefixes them
//! with its instance name.

use herald_plugin_api::duration::parse_duration_ms;
use herald_plugin_api::validate_email_address;

/// Checks an API key's shape without ever echoing it: not empty, no whitespace or control
/// characters, starting with `prefix`, the mark of `provider`'s keys (`"Resend"`, `"re_"`).
pub fn check_api_key(key: &str, provider: &str, prefix: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("`api_key` is empty (is the environment variable it references set?)".into());
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("`api_key` contains whitespace or control characters".into());
    }
    if !key.starts_with(prefix) {
        return Err(format!(
            "`api_key` does not look like a {provider} API key ({provider} keys start with \
             `{prefix}`)"
        ));
    }
    Ok(())
}

/// Checks the configured default sender `from`: an address, or a display name and an
/// address, as a message's own `from` must be.
pub fn check_sender(from: &str) -> Result<(), String> {
    validate_email_address("from", from).map_err(|e| {
        format!(
            "`from` is not a valid sender ({e}); expected \"addr@domain\" or \
             \"Name <addr@domain>\""
        )
    })
}

/// The `request_timeout` key (a key of its own because the host owns `timeout`): `None`
/// when absent (the host's default applies), else a positive duration in milliseconds.
pub fn request_timeout_ms(raw: Option<&str>) -> Result<Option<u64>, String> {
    let Some(s) = raw else {
        return Ok(None);
    };
    match parse_duration_ms(s) {
        Ok(ms) if ms > 0 => Ok(Some(ms)),
        _ => Err(format!(
            "request_timeout must be a duration such as \"10s\", \"500ms\" or \"2m\", got {s:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_shape() {
        assert_eq!(check_api_key("re_123", "Resend", "re_"), Ok(()));
        let cases = [
            (
                "",
                "`api_key` is empty (is the environment variable it references set?)",
            ),
            (
                "re_a b",
                "`api_key` contains whitespace or control characters",
            ),
            (
                "SG.a\nb",
                "`api_key` contains whitespace or control characters",
            ),
            (
                "SG.abc",
                "`api_key` does not look like a Resend API key (Resend keys start with `re_`)",
            ),
        ];
        for (key, want) in cases {
            assert_eq!(
                check_api_key(key, "Resend", "re_"),
                Err(want.into()),
                "{key:?}"
            );
        }
        let e = check_api_key("re_very-secret", "SendGrid", "SG.").unwrap_err();
        assert!(!e.contains("very-secret"), "{e}");
    }

    #[test]
    fn sender() {
        assert_eq!(check_sender("Wedding <rsvp@example.com>"), Ok(()));
        assert_eq!(check_sender("rsvp@example.com"), Ok(()));
        assert_eq!(
            check_sender("nobody"),
            Err(
                "`from` is not a valid sender (from: \"nobody\" is not an email address \
                 (expected local@domain)); expected \"addr@domain\" or \"Name <addr@domain>\""
                    .into()
            )
        );
        assert!(check_sender("a@example.com\r\nBcc: x@example.com").is_err());
    }

    #[test]
    fn request_timeout() {
        assert_eq!(request_timeout_ms(None), Ok(None));
        assert_eq!(request_timeout_ms(Some("1500ms")), Ok(Some(1500)));
        assert_eq!(request_timeout_ms(Some(" 2m ")), Ok(Some(120_000)));
        for bad in ["10", "0s", "soon", ""] {
            assert_eq!(
                request_timeout_ms(Some(bad)),
                Err(format!(
                    "request_timeout must be a duration such as \"10s\", \"500ms\" or \"2m\", \
                     got {bad:?}"
                )),
                "{bad:?}"
            );
        }
    }
}
