//! Stream tokens: HS256 JWTs signed with `realtime.token_secret`, minted for a host
//! application (`mint_token`, `herald token`) and presented by browsers on `/v1/events`.
//!
//! Claims: `exp` (required, seconds), `iat`, and the scope — `tags` (see events carrying
//! any of them), `ids` (see events of these messages), `admin` (see everything). A token
//! without any of the three scopes is refused: it would see nothing, and so is surely a
//! mistake. `exp` is checked here against the `now` passed in (not the library's clock),
//! and may be no further away than `realtime.max_token_ttl`, so shortening the lifetime
//! in the config also cuts tokens already handed out.
//!
//! Owns: the claims, signing and verification. Must not: log a token or the secret
//! (errors name what is wrong, never the value), or decide what an event's scope is
//! beyond [`Scope::allows`].

use herald_plugin_api::{Event, UnixMillis};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::RealtimeConfig;
use crate::store::parse_id;

/// Bounds on a token's scope, so a token (and every check against it) stays small.
const MAX_SCOPE_ITEMS: usize = 64;
const MAX_TAG_LEN: usize = 64;
/// The lifetime when `mint_token` gives none.
pub const DEFAULT_TTL_MS: u64 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    iat: u64,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    admin: bool,
}

/// What a verified token lets its bearer see, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub tags: Vec<String>,
    pub ids: Vec<String>,
    pub admin: bool,
    /// Unix ms.
    pub expires_at: UnixMillis,
}

impl Scope {
    /// Whether the bearer may see `e`, whatever filter it asked for.
    pub fn allows(&self, e: &Event) -> bool {
        self.admin
            || e.tags.iter().any(|t| self.tags.contains(t))
            || e.message_id
                .as_ref()
                .is_some_and(|id| self.ids.contains(id))
    }
}

/// Why a scope or token was refused. The text is safe to show: it never holds the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A scope field (`tags`, `ids`, `ttl_ms`) is wrong; `.0` names it.
    #[error("{1}")]
    Field(&'static str, String),
    #[error("the token is malformed or its signature does not match ({0})")]
    Invalid(String),
    #[error("the token expired")]
    Expired,
    #[error("the token lives longer than realtime.max_token_ttl allows")]
    TooLong,
}

fn check_scope(tags: &[String], ids: &[String], admin: bool) -> Result<(), TokenError> {
    if !admin && tags.is_empty() && ids.is_empty() {
        return Err(TokenError::Field(
            "tags",
            "a token needs a scope: tags, ids, or admin".into(),
        ));
    }
    if tags.len() > MAX_SCOPE_ITEMS || ids.len() > MAX_SCOPE_ITEMS {
        return Err(TokenError::Field(
            if tags.len() > MAX_SCOPE_ITEMS {
                "tags"
            } else {
                "ids"
            },
            format!("a token holds at most {MAX_SCOPE_ITEMS} tags and {MAX_SCOPE_ITEMS} ids"),
        ));
    }
    for t in tags {
        if t.is_empty() || t.len() > MAX_TAG_LEN || t.chars().any(char::is_control) {
            return Err(TokenError::Field(
                "tags",
                format!("tag {t:?} must be 1-{MAX_TAG_LEN} bytes without control characters"),
            ));
        }
    }
    for id in ids {
        if parse_id(id).is_none() {
            return Err(TokenError::Field(
                "ids",
                format!("{id:?} is not a Herald message id (26 characters, as returned by send)"),
            ));
        }
    }
    Ok(())
}

/// Signs a token for this scope, valid `ttl_ms` from `now`. Returns it and its expiry
/// (Unix ms, on a whole second).
pub fn mint(
    cfg: &RealtimeConfig,
    tags: Vec<String>,
    ids: Vec<String>,
    admin: bool,
    ttl_ms: Option<u64>,
    now: UnixMillis,
) -> Result<(String, UnixMillis), TokenError> {
    check_scope(&tags, &ids, admin)?;
    let ttl = ttl_ms.unwrap_or(DEFAULT_TTL_MS.min(cfg.max_token_ttl_ms));
    if ttl < 1000 {
        return Err(TokenError::Field(
            "ttl_ms",
            "a token lives at least 1000 ms".into(),
        ));
    }
    if ttl > cfg.max_token_ttl_ms {
        return Err(TokenError::Field(
            "ttl_ms",
            format!(
                "{ttl} ms is longer than realtime.max_token_ttl ({} ms)",
                cfg.max_token_ttl_ms
            ),
        ));
    }
    let exp = (now + ttl) / 1000;
    let claims = Claims {
        exp,
        iat: now / 1000,
        tags,
        ids,
        admin,
    };
    let key = EncodingKey::from_secret(cfg.token_secret.expose().as_bytes());
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    Ok((token, exp * 1000))
}

/// Verifies `token` (signature, algorithm, `exp` against `now` and the maximum lifetime,
/// a valid scope) and returns its scope.
pub fn verify(cfg: &RealtimeConfig, token: &str, now: UnixMillis) -> Result<Scope, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    // Expiry is checked below against the `now` passed in.
    validation.validate_exp = false;
    validation.leeway = 0;
    let key = DecodingKey::from_secret(cfg.token_secret.expose().as_bytes());
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        TokenError::Invalid(
            match e.kind() {
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::InvalidAlgorithm => "not HS256",
                ErrorKind::MissingRequiredClaim(_) => "no exp claim",
                ErrorKind::Base64(_) | ErrorKind::InvalidToken => "not a JWT",
                ErrorKind::Json(_) | ErrorKind::Utf8(_) => "unreadable claims",
                _ => "rejected",
            }
            .into(),
        )
    })?;
    let c = data.claims;
    let expires_at = c.exp.saturating_mul(1000);
    if expires_at <= now {
        return Err(TokenError::Expired);
    }
    if expires_at > now.saturating_add(cfg.max_token_ttl_ms) {
        return Err(TokenError::TooLong);
    }
    check_scope(&c.tags, &c.ids, c.admin).map_err(|e| TokenError::Invalid(e.to_string()))?;
    Ok(Scope {
        tags: c.tags,
        ids: c.ids,
        admin: c.admin,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_plugin_api::{EventKind, Secret};

    fn cfg(secret: &str) -> RealtimeConfig {
        RealtimeConfig {
            token_secret: Secret::new(secret),
            max_token_ttl_ms: 86_400_000,
            allowed_origins: vec![],
            max_streams: 10,
            client_buffer: 10,
            stall_timeout_ms: 1000,
            keepalive_ms: 1000,
            flush_interval_ms: 0,
        }
    }

    const S: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000_000;

    fn event(tags: &[&str], id: Option<&str>) -> Event {
        Event {
            seq: 1,
            at: NOW,
            message_id: id.map(Into::into),
            kind: EventKind::Queued,
            channel: None,
            provider: None,
            provider_message_id: None,
            attempt: None,
            detail: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            from: None,
            to: None,
            body: None,
            rsvp: None,
        }
    }

    #[test]
    fn a_minted_token_verifies_to_its_scope_and_narrows() {
        let c = cfg(S);
        let (t, exp) = mint(
            &c,
            vec!["wedding:42".into()],
            vec![],
            false,
            Some(3_600_000),
            NOW,
        )
        .unwrap();
        assert_eq!(exp, NOW + 3_600_000);
        let scope = verify(&c, &t, NOW + 1).unwrap();
        assert_eq!(scope.tags, ["wedding:42"]);
        assert!(scope.allows(&event(&["wedding:42", "rsvp"], None)));
        assert!(!scope.allows(&event(&["wedding:7"], None)));
        assert!(
            !scope.allows(&event(&[], None)),
            "untagged events are not in a tag scope"
        );
        let admin = verify(
            &c,
            &mint(&c, vec![], vec![], true, None, NOW).unwrap().0,
            NOW,
        )
        .unwrap();
        assert!(admin.allows(&event(&[], None)));
        let id = "01JD3S0Q6G4Z8W2B5N7K9M1P3R";
        let by_id = verify(
            &c,
            &mint(&c, vec![], vec![id.into()], false, None, NOW)
                .unwrap()
                .0,
            NOW,
        )
        .unwrap();
        assert!(by_id.allows(&event(&[], Some(id))));
        assert!(!by_id.allows(&event(&[], Some("01JD3S0Q6G4Z8W2B5N7K9M1P3S"))));
    }

    #[test]
    fn expired_tampered_foreign_and_overlong_tokens_are_refused() {
        let c = cfg(S);
        let (t, exp) = mint(&c, vec!["a".into()], vec![], false, Some(5000), NOW).unwrap();
        assert_eq!(verify(&c, &t, exp), Err(TokenError::Expired));
        // Flip the scope in the payload, keep the signature.
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = base64_url(&format!(
            r#"{{"exp":{},"tags":[],"admin":true}}"#,
            exp / 1000
        ));
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert!(matches!(
            verify(&c, &forged, NOW),
            Err(TokenError::Invalid(_))
        ));
        let other = cfg("another-secret-another-secret-1234");
        assert!(matches!(
            verify(&other, &t, NOW),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            verify(&c, "not.a.jwt", NOW),
            Err(TokenError::Invalid(_))
        ));
        // A token signed for a longer life than the config now allows.
        let long = mint(&c, vec!["a".into()], vec![], false, Some(86_400_000), NOW)
            .unwrap()
            .0;
        let mut short = cfg(S);
        short.max_token_ttl_ms = 60_000;
        assert_eq!(verify(&short, &long, NOW), Err(TokenError::TooLong));
        // Refusals never echo the token.
        for e in [
            verify(&other, &t, NOW).unwrap_err(),
            verify(&c, &forged, NOW).unwrap_err(),
        ] {
            assert!(!e.to_string().contains(&t[..20]), "{e}");
        }
    }

    #[test]
    fn minting_checks_the_scope_and_lifetime() {
        let c = cfg(S);
        let field = |r: Result<(String, u64), TokenError>| match r {
            Err(TokenError::Field(f, _)) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(mint(&c, vec![], vec![], false, None, NOW)), "tags");
        assert_eq!(
            field(mint(&c, vec!["".into()], vec![], false, None, NOW)),
            "tags"
        );
        assert_eq!(
            field(mint(&c, vec!["a\nb".into()], vec![], false, None, NOW)),
            "tags"
        );
        assert_eq!(
            field(mint(&c, vec![], vec!["nope".into()], false, None, NOW)),
            "ids"
        );
        assert_eq!(
            field(mint(
                &c,
                vec!["a".into()],
                vec![],
                false,
                Some(86_400_001),
                NOW
            )),
            "ttl_ms"
        );
        assert_eq!(
            field(mint(&c, vec!["a".into()], vec![], false, Some(10), NOW)),
            "ttl_ms"
        );
    }

    fn base64_url(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }
}
