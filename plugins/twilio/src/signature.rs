//! Verifies `X-Twilio-Signature` exactly as twilio-python's `RequestValidator` does
//! (`twilio/request_validator.py`):
//!
//! - form bodies: base64 HMAC-SHA1, keyed with the Auth Token, over the full URL followed by
//!   every POST parameter name (sorted) and value; a repeated name contributes each of its
//!   distinct values, sorted;
//! - JSON bodies: the URL carries `bodySHA256=<hex SHA-256 of the raw body>`; the hash must
//!   match and the HMAC covers the URL alone;
//! - the URL is tried with and without its port (`:443`/`:80` added when absent, any port
//!   removed when present), since Twilio's own signing is inconsistent about it;
//! - comparisons are constant-time.
//!
//! There is no timestamp, so no replay window: webhooks are deduplicated downstream.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::url::{UrlParts, query_param};

/// The header Twilio signs with.
pub const HEADER: &str = "X-Twilio-Signature";
/// The query parameter that marks a JSON-body webhook.
pub const BODY_HASH_PARAM: &str = "bodySHA256";

/// The body of a webhook whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedBody {
    /// Form parameters (decoded, in order, repeats kept).
    Form(Vec<(String, String)>),
    /// A raw JSON body, covered by `bodySHA256`.
    Json,
}

/// Why a signature was refused. Never says what the expected value was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    MissingHeader,
    BodyHashMismatch,
    Mismatch,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignatureError::MissingHeader => "missing X-Twilio-Signature header",
            SignatureError::BodyHashMismatch => "the body does not match the bodySHA256 in the URL",
            SignatureError::Mismatch => {
                "X-Twilio-Signature does not match: check that the Auth Token is the one of \
                 the account the webhook belongs to, and that [webhooks] public_url is the \
                 URL configured at Twilio"
            }
        })
    }
}

/// Twilio's signature of `url` plus `params`: base64 HMAC-SHA1 keyed with `token`.
pub fn compute(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut grouped: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, value) in params {
        grouped.entry(name).or_default().insert(value);
    }
    let mut signed = String::from(url);
    for (name, values) in grouped {
        for value in values {
            signed.push_str(name);
            signed.push_str(value);
        }
    }
    // HMAC accepts keys of any length; the error branch cannot happen.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(token.as_bytes()) else {
        return String::new();
    };
    mac.update(signed.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Lower-case hex SHA-256 of `body`, as `bodySHA256` carries it.
pub fn body_hash(body: &str) -> String {
    Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The URL with its port and without it, as twilio-python's `add_port` / `remove_port`.
fn url_variants(url: &str) -> [String; 2] {
    match UrlParts::parse(url) {
        Some(u) => {
            let with_port = u.with_port(Some(u.port.unwrap_or_else(|| u.default_port())));
            [with_port, u.with_port(None)]
        }
        None => [url.to_string(), url.to_string()],
    }
}

fn ct_eq(a: &str, b: &str) -> Choice {
    a.as_bytes().ct_eq(b.as_bytes())
}

/// Verifies a webhook: `url` is what Twilio requested, `body` the raw body, `header` the
/// `X-Twilio-Signature` value.
pub fn verify(
    token: &str,
    url: &str,
    body: &str,
    header: Option<&str>,
) -> Result<SignedBody, SignatureError> {
    let signature = header
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(SignatureError::MissingHeader)?;

    let (params, body_ok, signed) = match query_param(url, BODY_HASH_PARAM) {
        Some(expected) => (
            Vec::new(),
            ct_eq(&body_hash(body), &expected),
            SignedBody::Json,
        ),
        None => {
            let params: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
            (params.clone(), Choice::from(1), SignedBody::Form(params))
        }
    };

    let mut sig_ok = Choice::from(0);
    for variant in url_variants(url) {
        sig_ok |= ct_eq(&compute(token, &variant, &params), signature);
    }
    if !bool::from(sig_ok) {
        return Err(SignatureError::Mismatch);
    }
    if !bool::from(body_ok) {
        return Err(SignatureError::BodyHashMismatch);
    }
    Ok(signed)
}

#[cfg(test)]
mod tests {
    //! The vectors are twilio-python's (`tests/unit/test_request_validator.py`), as
    //! reproduced in providers.md §3, plus one re-run with twilio-python's algorithm for
    //! repeated parameters.
    use super::*;

    const TOKEN: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const EXPECTED: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    const JSON_BODY: &str = r#"{"property": "value", "boolean": true}"#;
    const JSON_HASH: &str = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
    const JSON_SIGNATURE: &str = "a9nBmqA0ju/hNViExpshrM61xv4=";

    fn params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
    }

    fn form(params: &[(String, String)]) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish()
    }

    #[test]
    fn form_vector() {
        assert_eq!(compute(TOKEN, URL, &params()), EXPECTED);
        // Order of the received parameters does not matter.
        let mut reversed = params();
        reversed.reverse();
        assert_eq!(compute(TOKEN, URL, &reversed), EXPECTED);
        let body = form(&reversed);
        assert_eq!(
            verify(TOKEN, URL, &body, Some(EXPECTED)),
            Ok(SignedBody::Form(reversed))
        );
    }

    #[test]
    fn port_variants() {
        let body = form(&params());
        // Signed with :443 by Twilio, requested without a port.
        assert!(verify(TOKEN, URL, &body, Some("kvajT1Ptam85bY51eRf/AJRuM3w=")).is_ok());
        // Signed with :80, plain http.
        let http = URL.replace("https", "http");
        assert!(verify(TOKEN, &http, &body, Some("0ZXoZLH/DfblKGATFgpif+LLRf4=")).is_ok());
        // Requested with a port, signed without it (https and http).
        let with_port = URL.replace(".com", ".com:1234");
        assert!(verify(TOKEN, &with_port, &body, Some(EXPECTED)).is_ok());
        // Signed with the port as requested (http, port 1234).
        let http_port = with_port.replace("https", "http");
        assert!(
            verify(
                TOKEN,
                &http_port,
                &body,
                Some("Zmvh+3yNM1Phv2jhDCwEM3q5ebU=")
            )
            .is_ok()
        );
    }

    #[test]
    fn json_body_vector() {
        assert_eq!(body_hash(JSON_BODY), JSON_HASH);
        let url = format!("{URL}&bodySHA256={JSON_HASH}");
        assert_eq!(compute(TOKEN, &url, &[]), JSON_SIGNATURE);
        assert_eq!(
            verify(TOKEN, &url, JSON_BODY, Some(JSON_SIGNATURE)),
            Ok(SignedBody::Json)
        );
        // The signature covers the URL (and so the hash), the hash covers the body.
        let tampered = JSON_BODY.replace("true", "false");
        assert_eq!(
            verify(TOKEN, &url, &tampered, Some(JSON_SIGNATURE)),
            Err(SignatureError::BodyHashMismatch)
        );
        let other_hash = format!("{URL}&bodySHA256={}", body_hash(&tampered));
        assert_eq!(
            verify(TOKEN, &other_hash, &tampered, Some(JSON_SIGNATURE)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn repeated_names_use_sorted_distinct_values() {
        // twilio-python: for each sorted name, for value in sorted(set(values)).
        let pairs: Vec<(String, String)> =
            [("b", "2"), ("a", "z"), ("b", "1"), ("a", "y"), ("b", "2")]
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
        let expected = compute(TOKEN, &format!("{URL}ayazb1b2"), &[]);
        assert_eq!(compute(TOKEN, URL, &pairs), expected);
        // Re-run with Python's hmac/hashlib over the same string.
        assert_eq!(expected, "22ZJxO8AE8VLZlKFUP2nCzrZnoE=");
        assert!(verify(TOKEN, URL, &form(&pairs), Some(&expected)).is_ok());
    }

    #[test]
    fn rejections() {
        let body = form(&params());
        assert_eq!(
            verify(TOKEN, URL, &body, None),
            Err(SignatureError::MissingHeader)
        );
        assert_eq!(
            verify(TOKEN, URL, &body, Some("  ")),
            Err(SignatureError::MissingHeader)
        );
        // Forged: right shape, wrong value.
        assert_eq!(
            verify(TOKEN, URL, &body, Some("RSOYDt4T1cUTdK1PDd93/VVr8B9=")),
            Err(SignatureError::Mismatch)
        );
        // Wrong key.
        assert_eq!(
            verify("54321", URL, &body, Some(EXPECTED)),
            Err(SignatureError::Mismatch)
        );
        // A modified, an added and a removed parameter.
        let modified = body.replace("Digits=1234", "Digits=9999");
        assert_eq!(
            verify(TOKEN, URL, &modified, Some(EXPECTED)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(TOKEN, URL, &format!("{body}&Extra=1"), Some(EXPECTED)),
            Err(SignatureError::Mismatch)
        );
        let removed = body.replace("&Digits=1234", "");
        assert_eq!(
            verify(TOKEN, URL, &removed, Some(EXPECTED)),
            Err(SignatureError::Mismatch)
        );
        // A different URL (query or path).
        let url = URL.replace("bar=2", "bar=3");
        assert_eq!(
            verify(TOKEN, &url, &body, Some(EXPECTED)),
            Err(SignatureError::Mismatch)
        );
        // The error says nothing about the expected signature.
        assert!(!SignatureError::Mismatch.to_string().contains(EXPECTED));
    }
}
