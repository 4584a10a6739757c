//! Making provider text safe to put in an outcome reason: the API key is redacted should a
//! provider or proxy ever echo it, control characters are flattened and the length is
//! bounded (an HTML error page from a proxy must not become a 100 KB reason).

use herald_plugin_api::Secret;

/// The most characters of provider text kept in a reason.
const MAX_CHARS: usize = 300;

/// `text` with `secret` redacted, control characters replaced by spaces, and at most
/// [`MAX_CHARS`] characters (an ellipsis marks a cut).
pub(crate) fn sanitize(text: &str, secret: &Secret) -> String {
    let redacted = if secret.expose().is_empty() {
        text.to_owned()
    } else {
        text.replace(secret.expose(), "***")
    };
    let flat: String = redacted
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= MAX_CHARS {
        flat
    } else {
        let mut cut: String = flat.chars().take(MAX_CHARS).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_flattens_and_bounds() {
        let key = Secret::new("SG.secret");
        assert_eq!(sanitize(" bad key SG.secret\r\n", &key), "bad key ***");
        let long = "x".repeat(1000);
        let got = sanitize(&long, &key);
        assert_eq!(got.chars().count(), MAX_CHARS + 1);
        assert!(got.ends_with('…'));
    }
}
