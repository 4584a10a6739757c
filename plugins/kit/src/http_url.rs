//! The `http(s)` URLs a plugin's config names — an API `base_url`, a token endpoint, a
//! webhook plugin's target `url` — validated once at load with the `url` crate (the
//! WHATWG parser reqwest uses too, so the plugin sees the URL as the host will send it).
//!
//! One rule set for every plugin: `http` or `https` only, a host, no credentials, no
//! spaces or control characters, and for a base URL no query or fragment. The result is
//! the normalised URL (lower-case scheme and host, default port dropped) and the host for
//! `allowed_hosts`: lower case, without port, an IPv6 address without brackets (the
//! daemon's allowed-host check accepts either form). Errors name the config key, show the
//! value (never credentials) and say what a good value looks like.

use std::net::IpAddr;

use url::{Host, ParseError, Url};

/// A config key holding a URL, as its error messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlKey<'a> {
    /// The config key: `base_url`, `token_url`, `url`.
    pub key: &'a str,
    /// A good value, shown as the fix: usually the plugin's default URL.
    pub example: &'a str,
    /// Where credentials go instead of the URL, shown when the URL carries some: "the API
    /// key is sent as a header".
    pub credentials_hint: &'a str,
}

/// What the URL is for, which decides what of it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlKind {
    /// A prefix the plugin appends API paths to (`base_url`): a path prefix is kept
    /// (proxies, mock servers), a trailing `/` dropped; a query or fragment is refused.
    Base,
    /// The exact address requests go to (the webhook plugin's `url`): path, trailing `/`
    /// and query are kept as given.
    Endpoint,
}

/// A validated `http(s)` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// The normalised URL; for [`UrlKind::Base`] without a trailing `/`.
    pub url: String,
    /// The host as `allowed_hosts` reports it: lower case, no port, IPv6 without brackets.
    pub host: String,
    https: bool,
}

impl HttpUrl {
    /// Whether requests to this URL are encrypted.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// Whether the host is this machine (`localhost`, `*.localhost`, `127.0.0.0/8`, `::1`).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }
}

impl UrlKey<'_> {
    /// Validates `raw` (surrounding whitespace ignored) as a URL of `kind`.
    pub fn parse(&self, raw: &str, kind: UrlKind) -> Result<HttpUrl, String> {
        let trimmed = raw.trim();
        let key = self.key;
        let shown = without_userinfo(trimmed);
        let bad = |why: &str| format!("{key} = {shown:?} {why}; expected e.g. {}", self.example);
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains spaces or control characters"));
        }
        let url = Url::parse(trimmed).map_err(|e| match e {
            ParseError::RelativeUrlWithoutBase => bad("is not an absolute URL"),
            ParseError::EmptyHost => bad("has no host"),
            e => bad(&format!("is not a valid URL ({e})")),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("must start with https:// or http://"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            // Not echoed: the value holds a credential.
            return Err(format!(
                "{key} must not contain credentials (user:password@): {}",
                self.credentials_hint
            ));
        }
        let host = match url.host() {
            Some(Host::Domain(d)) if !d.is_empty() => d.to_ascii_lowercase(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(bad("has no host")),
        };
        let url = match kind {
            UrlKind::Base => {
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(bad("must not have a query or fragment"));
                }
                url.as_str().trim_end_matches('/').to_owned()
            }
            UrlKind::Endpoint => url.as_str().to_owned(),
        };
        Ok(HttpUrl {
            https: url.starts_with("https:"),
            url,
            host,
        })
    }
}

/// Whether `host` (a name, an IPv4 address, or an IPv6 address with or without brackets)
/// is this machine: `localhost`, `*.localhost`, `127.0.0.0/8`, `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let name = bare.to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

/// `raw` with any `user:password@` of its authority replaced by `***@`, to be shown in an
/// error.
fn without_userinfo(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: UrlKey<'static> = UrlKey {
        key: "base_url",
        example: "https://api.example.com",
        credentials_hint: "the API key is sent as a header",
    };

    fn base(raw: &str) -> Result<(String, String), String> {
        KEY.parse(raw, UrlKind::Base).map(|u| (u.url, u.host))
    }

    fn endpoint(raw: &str) -> Result<(String, String), String> {
        KEY.parse(raw, UrlKind::Endpoint).map(|u| (u.url, u.host))
    }

    /// Each `(raw, url, host)`: `raw` parsed as `kind` gives `url` and `host`.
    fn check(kind: UrlKind, cases: &[(&str, &str, &str)]) {
        for (raw, url, host) in cases {
            let got = KEY.parse(raw, kind).map(|u| (u.url, u.host));
            assert_eq!(got, Ok(((*url).to_owned(), (*host).to_owned())), "{raw}");
        }
    }

    #[test]
    fn base_keeps_the_path_prefix_without_trailing_slash() {
        check(
            UrlKind::Base,
            &[
                (
                    "https://api.example.com",
                    "https://api.example.com",
                    "api.example.com",
                ),
                (
                    " http://127.0.0.1:8080/resend/ ",
                    "http://127.0.0.1:8080/resend",
                    "127.0.0.1",
                ),
                (
                    "HTTP://Proxy.Internal:3128/twilio/",
                    "http://proxy.internal:3128/twilio",
                    "proxy.internal",
                ),
                // The default port is dropped: the request goes to the same place.
                (
                    "https://API.example.com:443/x/",
                    "https://api.example.com/x",
                    "api.example.com",
                ),
                (
                    "https://APNS.example.com:8443/",
                    "https://apns.example.com:8443",
                    "apns.example.com",
                ),
            ],
        );
    }

    #[test]
    fn ipv6_hosts_come_without_brackets() {
        check(
            UrlKind::Base,
            &[
                ("http://[::1]:2197/", "http://[::1]:2197", "::1"),
                (
                    "https://[2001:DB8::1]/v1",
                    "https://[2001:db8::1]/v1",
                    "2001:db8::1",
                ),
            ],
        );
        check(
            UrlKind::Endpoint,
            &[("http://[::1]:8080/", "http://[::1]:8080/", "::1")],
        );
    }

    #[test]
    fn endpoint_keeps_path_query_and_trailing_slash() {
        check(
            UrlKind::Endpoint,
            &[
                (
                    "HTTPS://Hooks.Example.COM/herald?src=x",
                    "https://hooks.example.com/herald?src=x",
                    "hooks.example.com",
                ),
                (
                    "https://h.example.com/",
                    "https://h.example.com/",
                    "h.example.com",
                ),
                (
                    "https://h.example.com",
                    "https://h.example.com/",
                    "h.example.com",
                ),
            ],
        );
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        // Every error but the credentials one shows the value and a good one.
        let shown = [
            ("ftp://x.io", "must start with https:// or http://"),
            ("api.example.com", "is not an absolute URL"),
            ("https://", "has no host"),
            ("http://:80/token", "has no host"),
            (
                "https://x.io:abc",
                "is not a valid URL (invalid port number)",
            ),
            ("http://[::1", "is not a valid URL (invalid IPv6 address)"),
            ("https://x.io/a b", "contains spaces or control characters"),
            ("https://x.io/\tb", "contains spaces or control characters"),
            ("https://x.io/?a=b", "must not have a query or fragment"),
            ("https://x.io/#top", "must not have a query or fragment"),
        ];
        for (raw, why) in shown {
            assert_eq!(
                base(raw),
                Err(format!(
                    "base_url = {raw:?} {why}; expected e.g. https://api.example.com"
                )),
                "{raw}"
            );
        }
        for raw in ["https://u:p@x.io", "https://u@x.io"] {
            assert_eq!(
                base(raw),
                Err(
                    "base_url must not contain credentials (user:password@): the API key is \
                     sent as a header"
                        .to_owned()
                ),
                "{raw}"
            );
        }
        // The endpoint kind takes a query, and refuses the rest alike.
        assert!(endpoint("https://x.io/?a=b").is_ok());
        assert_eq!(
            endpoint("ftp://x.io").unwrap_err(),
            base("ftp://x.io").unwrap_err()
        );
        assert_eq!(
            endpoint("https://u:p@x.io").unwrap_err(),
            base("https://u:p@x.io").unwrap_err()
        );
    }

    #[test]
    fn errors_never_show_credentials() {
        for raw in [
            "https://user:hunter2@x.io",
            "https://user:hunter2@:99999/x y",
        ] {
            let e = base(raw).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert_eq!(
            without_userinfo("https://user:hunter2@x.io/a@b"),
            "https://***@x.io/a@b"
        );
        assert_eq!(without_userinfo("x.io/a@b"), "x.io/a@b");
    }

    #[test]
    fn scheme_and_loopback() {
        let u = KEY.parse("http://localhost:8025", UrlKind::Base).unwrap();
        assert!(!u.is_https() && u.is_loopback());
        let u = KEY.parse("https://api.example.com", UrlKind::Base).unwrap();
        assert!(u.is_https() && !u.is_loopback());
        for host in [
            "localhost",
            "LOCALHOST",
            "mail.localhost",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "127.evil.com",
            "10.0.0.1",
            "::2",
            "localhost.com",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
