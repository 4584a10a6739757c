//! The APNs provider token: an ES256 JWT (`{alg, kid}` / `{iss, iat}`) minted from the
//! `.p8` key, and the [`ProviderTokens`] cache that makes every delivery of an instance
//! share one token for 50 minutes. APNs refuses tokens older than an hour and answers
//! `TooManyProviderTokenUpdates` to tokens replaced more often than every 20 minutes, so
//! a token is never minted per request: only when none is cached, when the cached one is
//! 50 minutes old, or after APNs called it expired.

use std::sync::{Mutex, MutexGuard};

use herald_plugin_api::{Secret, UnixMillis};
use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;

use crate::config::Config;

/// A cached token is replaced once it is this old (as apns2 does): inside Apple's window
/// of 20 to 60 minutes.
pub const REFRESH_AFTER_MS: UnixMillis = 50 * 60_000;

#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

/// Signs a provider token issued at `now`: header `{"alg":"ES256","kid":key_id}`,
/// claims `{"iss":team_id,"iat":<unix seconds>}`. The signature is the raw r‖s JWS form.
pub fn mint(config: &Config, now: UnixMillis) -> Result<String, jsonwebtoken::errors::Error> {
    use_rust_crypto();
    let mut header = Header::new(Algorithm::ES256);
    header.typ = None;
    header.kid = Some(config.key_id.clone());
    let claims = Claims {
        iss: &config.team_id,
        iat: now / 1000,
    };
    jsonwebtoken::encode(&header, &claims, &config.key)
}

/// Selects jsonwebtoken's pure-Rust backend explicitly. Feature unification in a workspace
/// build could also enable `aws_lc_rs`, and with both features on jsonwebtoken cannot pick
/// one and panics at the first signature. Installing twice is a harmless no-op.
fn use_rust_crypto() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// The instance's provider token. `generation` numbers the tokens, so an
/// `ExpiredProviderToken` answer for an old token does not throw away a newer one.
#[derive(Debug, Default)]
pub struct ProviderTokens {
    slot: Mutex<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    current: Option<Cached>,
    generations: u64,
}

#[derive(Debug)]
struct Cached {
    jwt: Secret,
    issued_at: UnixMillis,
    generation: u64,
}

/// The token handed to one delivery.
#[derive(Debug, Clone)]
pub struct ProviderToken {
    pub jwt: Secret,
    pub generation: u64,
}

impl ProviderTokens {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // The slot is always consistent, so a poisoned lock is still usable.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached token, or a new one when none is cached or the cached one is 50 minutes
    /// old. Minting happens under the lock, so concurrent deliveries mint one token.
    pub fn get(&self, config: &Config, now: UnixMillis) -> Result<ProviderToken, String> {
        let mut slot = self.lock();
        if let Some(cached) = &slot.current
            && now.saturating_sub(cached.issued_at) < REFRESH_AFTER_MS
        {
            return Ok(ProviderToken {
                jwt: cached.jwt.clone(),
                generation: cached.generation,
            });
        }
        let jwt = Secret::new(
            mint(config, now).map_err(|e| format!("cannot sign the APNs provider token: {e}"))?,
        );
        slot.generations += 1;
        let generation = slot.generations;
        slot.current = Some(Cached {
            jwt: jwt.clone(),
            issued_at: now,
            generation,
        });
        Ok(ProviderToken { jwt, generation })
    }

    /// Drops the cached token if it is still the one of `generation` (APNs answered
    /// `ExpiredProviderToken`), so the next delivery mints a new one.
    pub fn invalidate(&self, generation: u64) {
        let mut slot = self.lock();
        if slot
            .current
            .as_ref()
            .is_some_and(|c| c.generation == generation)
        {
            slot.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{P8_PUBLIC_KEY, fixture, test_config};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{DecodingKey, Validation};
    use serde::Deserialize;

    fn decode_segment(segment: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(segment).unwrap()
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct DecodedClaims {
        iss: String,
        iat: u64,
    }

    #[test]
    fn jwt_header_claims_and_signature() {
        let config = test_config();
        let jwt = mint(&config, 1_700_000_000_999).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            String::from_utf8(decode_segment(parts[0])).unwrap(),
            r#"{"alg":"ES256","kid":"TESTKEY123"}"#
        );
        assert_eq!(
            String::from_utf8(decode_segment(parts[1])).unwrap(),
            r#"{"iss":"TEAM000001","iat":1700000000}"#
        );
        // JWS ES256: the raw 64-byte r‖s, not DER.
        assert_eq!(decode_segment(parts[2]).len(), 64);

        let public = std::fs::read(fixture(P8_PUBLIC_KEY)).unwrap();
        let key = DecodingKey::from_ec_pem(&public).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_issuer(&["TEAM000001"]);
        let data = jsonwebtoken::decode::<DecodedClaims>(&jwt, &key, &validation).unwrap();
        assert_eq!(
            data.claims,
            DecodedClaims {
                iss: "TEAM000001".into(),
                iat: 1_700_000_000
            }
        );
        assert_eq!(data.header.kid.as_deref(), Some("TESTKEY123"));

        let other = mint(&config, 1_700_000_060_000).unwrap();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert!(jsonwebtoken::decode::<DecodedClaims>(&forged, &key, &validation).is_err());
    }

    #[test]
    fn reused_for_50_minutes_then_replaced() {
        let config = test_config();
        let tokens = ProviderTokens::default();
        let t0 = 1_700_000_000_000;
        let first = tokens.get(&config, t0).unwrap();
        for minutes in [0, 1, 19, 20, 49] {
            let t = tokens.get(&config, t0 + minutes * 60_000).unwrap();
            assert_eq!(t.generation, first.generation, "{minutes} min");
            assert_eq!(t.jwt, first.jwt);
        }
        let second = tokens.get(&config, t0 + REFRESH_AFTER_MS).unwrap();
        assert_eq!(second.generation, 2);
        assert_ne!(second.jwt, first.jwt);
    }

    #[test]
    fn invalidation_only_drops_the_named_generation() {
        let config = test_config();
        let tokens = ProviderTokens::default();
        let first = tokens.get(&config, 0).unwrap();
        tokens.invalidate(first.generation);
        let second = tokens.get(&config, 1000).unwrap();
        assert_eq!(second.generation, 2);
        tokens.invalidate(first.generation);
        assert_eq!(tokens.get(&config, 2000).unwrap().generation, 2);
        assert!(!format!("{tokens:?}").contains("eyJ"));
    }
}
