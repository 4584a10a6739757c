//! Just enough URL handling for the webhook side of this plugin: splitting an absolute
//! `http(s)` URL into scheme, authority (userinfo, host, port) and the rest, putting it
//! back together with or without a port (the Twilio signature check tries both), and
//! reading a query parameter.
//!
//! Deliberately not the `url` crate (which `base_url` goes through, in
//! `herald_plugin_kit::http_url`): it does not normalise, resolve or percent-decode anything
//! but query values, because the signature is computed over the URL exactly as Twilio
//! requested it.

/// An absolute URL, split without being normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts<'a> {
    /// `http` or `https`, as written.
    pub scheme: &'a str,
    /// `user:pass@`, including the `@`, or empty.
    pub userinfo: &'a str,
    /// The host as written (an IPv6 literal keeps its brackets).
    pub host: &'a str,
    /// The port digits, when the URL names one.
    pub port: Option<&'a str>,
    /// Path, query and fragment, exactly as written (may be empty).
    pub rest: &'a str,
}

impl<'a> UrlParts<'a> {
    /// Splits `url`; `None` unless it is `scheme://authority...` with a non-empty host.
    pub fn parse(url: &'a str) -> Option<UrlParts<'a>> {
        let (scheme, after) = url.split_once("://")?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return None;
        }
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        // A port follows the last ':' that is not inside an IPv6 literal.
        let colon = match hostport.rfind(']') {
            Some(close) => hostport[close..].find(':').map(|i| close + i),
            None => hostport.rfind(':'),
        };
        let (host, port) = match colon {
            Some(i) => (&hostport[..i], Some(&hostport[i + 1..])),
            None => (hostport, None),
        };
        if host.is_empty() {
            return None;
        }
        // An empty port (`host:`) counts as no port, as in Python's urlparse.
        let port = port.filter(|p| !p.is_empty());
        Some(UrlParts {
            scheme,
            userinfo,
            host,
            port,
            rest,
        })
    }

    /// The URL with `port` in place of the written one (`None`: no port).
    pub fn with_port(&self, port: Option<&str>) -> String {
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "{}://{}{}{}{}",
            self.scheme, self.userinfo, self.host, port, self.rest
        )
    }

    /// The port a URL of this scheme uses when it names none.
    pub fn default_port(&self) -> &'static str {
        if self.scheme.eq_ignore_ascii_case("https") {
            "443"
        } else {
            "80"
        }
    }

    /// The query string (without `?` and fragment), if any.
    pub fn query(&self) -> Option<&'a str> {
        let (_, q) = self.rest.split_once('?')?;
        Some(q.split_once('#').map_or(q, |(q, _)| q))
    }
}

/// The decoded name/value pairs of a URL's query, in order, repeats kept.
pub fn query_pairs(url: &str) -> Vec<(String, String)> {
    UrlParts::parse(url)
        .and_then(|u| u.query())
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

/// The first value of query parameter `name`, decoded.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    query_pairs(url)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_authority_and_rest() {
        let u = UrlParts::parse("https://mycompany.com/myapp.php?foo=1&bar=2").unwrap();
        assert_eq!(
            (u.scheme, u.userinfo, u.host, u.port, u.rest),
            ("https", "", "mycompany.com", None, "/myapp.php?foo=1&bar=2")
        );
        let u = UrlParts::parse("http://u:p@[::1]:8025?x=1#f").unwrap();
        assert_eq!(
            (u.userinfo, u.host, u.port, u.rest),
            ("u:p@", "[::1]", Some("8025"), "?x=1#f")
        );
        assert_eq!(u.query(), Some("x=1"));
        assert_eq!(u.with_port(None), "http://u:p@[::1]?x=1#f");
        assert_eq!(u.with_port(Some("80")), "http://u:p@[::1]:80?x=1#f");
        let u = UrlParts::parse("https://[::1]/x").unwrap();
        assert_eq!((u.host, u.port), ("[::1]", None));
        assert!(UrlParts::parse("mycompany.com/x").is_none());
        assert!(UrlParts::parse("https:///x").is_none());
    }

    #[test]
    fn query_values_are_decoded_and_repeats_kept() {
        let url = "https://h/p?a=1&b=x%2By&a=2+3";
        assert_eq!(
            query_pairs(url),
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x+y".to_string()),
                ("a".to_string(), "2 3".to_string()),
            ]
        );
        assert_eq!(query_param(url, "a").as_deref(), Some("1"));
        assert_eq!(query_param(url, "c"), None);
    }
}
