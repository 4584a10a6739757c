//! Provider and transport text made fit for an outcome reason or a log line: on one line
//! (control characters flattened to spaces), bounded (an HTML error page from a proxy must
//! not become a 100 KB reason; an ellipsis marks a cut), and with the API key redacted
//! should a provider or proxy ever echo it. Also the joining of optional detail parts, and
//! what counts as an empty optional field.

use herald_plugin_api::Secret;

/// The most characters of provider text a reason keeps unless a plugin says otherwise.
pub const REASON_CHARS: usize = 200;

/// The text of an optional field, unless it is missing or empty.
pub fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// `text` trimmed, control characters replaced by spaces, and at most `max_chars`
/// characters (`…` appended when cut).
pub fn clip(text: &str, max_chars: usize) -> String {
    let text = text.trim();
    let mut out: String = text
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

/// `text` with every occurrence of `secret` replaced by `***` (an empty secret redacts
/// nothing).
pub fn redact(text: &str, secret: &Secret) -> String {
    if secret.expose().is_empty() {
        text.to_owned()
    } else {
        text.replace(secret.expose(), "***")
    }
}

/// [`redact`], then [`clip`]: provider text that may echo the API key.
pub fn sanitize(text: &str, secret: &Secret, max_chars: usize) -> String {
    clip(&redact(text, secret), max_chars)
}

/// `": <clipped text>"`, or nothing for blank text: the tail of a reason such as
/// `webhook endpoint answered 500: <body>`.
pub fn excerpt(text: &str, max_chars: usize) -> String {
    let clipped = clip(text, max_chars);
    if clipped.is_empty() {
        clipped
    } else {
        format!(": {clipped}")
    }
}

/// The non-empty parts, joined with `": "`; `None` when there are none. For a status
/// update's detail such as `Permanent: General: mailbox unknown`.
pub fn join_detail(parts: impl IntoIterator<Item = Option<String>>) -> Option<String> {
    let parts: Vec<String> = parts
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_flattens_and_bounds() {
        assert_eq!(clip(" short\r\n", 200), "short");
        assert_eq!(clip("a\nb\tc", 200), "a b c");
        let long = "x".repeat(1000);
        let got = clip(&long, 300);
        assert_eq!(got.chars().count(), 301);
        assert!(got.ends_with("x…"));
        assert_eq!(
            clip(&"é".repeat(200), 200),
            "é".repeat(200),
            "no cut at the limit"
        );
        assert_eq!(clip(&"é".repeat(201), 200), format!("{}…", "é".repeat(200)));
    }

    #[test]
    fn sanitize_redacts_flattens_and_bounds() {
        let key = Secret::new("re_secret");
        assert_eq!(sanitize(" bad key re_secret\r\n", &key, 300), "bad key ***");
        assert_eq!(redact("no key here", &Secret::new("")), "no key here");
        // The key is redacted before the cut, so no prefix of it survives at the edge.
        let text = format!("{}re_secret", "x".repeat(295));
        assert_eq!(
            sanitize(&text, &key, 300),
            format!("{}***", "x".repeat(295))
        );
    }

    #[test]
    fn excerpt_is_empty_or_prefixed() {
        assert_eq!(excerpt("  \n", 200), "");
        assert_eq!(excerpt(" busy\r\n", 200), ": busy");
        assert_eq!(
            excerpt(&"y".repeat(201), 200),
            format!(": {}…", "y".repeat(200))
        );
    }

    #[test]
    fn join_detail_skips_missing_and_empty_parts() {
        assert_eq!(
            join_detail([
                Some("Permanent".into()),
                None,
                Some(String::new()),
                Some("x".into())
            ]),
            Some("Permanent: x".into())
        );
        assert_eq!(join_detail([None, Some(String::new())]), None);
    }
}
