//! The OAuth 2.0 service-account flow: the RS256 assertion JWT, the token-exchange request,
//! the reading of its response (and of its errors, per google-auth's retry rules), and the
//! [`TokenCache`] shared by every delivery of an instance.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use herald_plugin_api::http::retry_after_ms;
use herald_plugin_api::{HttpRequest, HttpResponse, Outcome, Secret, UnixMillis};
use herald_plugin_kit::text::{REASON_CHARS, clip};
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The scope FCM's HTTP v1 API needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The grant type of the JWT-bearer flow (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime of the assertion (google-auth uses one hour).
const ASSERTION_LIFETIME_S: u64 = 3600;
/// A cached token is replaced this long before it expires (google-auth's
/// `REFRESH_THRESHOLD`: 3 min 45 s).
pub const REFRESH_EARLY_MS: u64 = 225_000;
/// Used when the token response has no `expires_in`.
const DEFAULT_EXPIRES_IN_S: u64 = 3600;

#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// Signs the assertion: header `{alg: RS256, typ: JWT, kid}`, claims `iss`, `scope`,
/// `aud`, `iat`, `exp` (`iat` + 1 h).
pub fn assertion(config: &Config, now: UnixMillis) -> Result<String, jsonwebtoken::errors::Error> {
    use_rust_crypto();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(config.private_key_id.clone());
    let iat = now / 1000;
    let claims = Claims {
        iss: &config.client_email,
        scope: SCOPE,
        aud: &config.token_audience,
        iat,
        exp: iat + ASSERTION_LIFETIME_S,
    };
    jsonwebtoken::encode(&header, &claims, &config.key)
}

/// Selects jsonwebtoken's pure-Rust backend explicitly. Feature unification in a workspace
/// build could also enable `aws_lc_rs`, and with both features on jsonwebtoken cannot pick
/// one and panics at the first signature. Installing twice is a harmless no-op.
fn use_rust_crypto() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

/// The token-exchange request: a form POST of the grant type and the signed assertion.
pub fn exchange_request(config: &Config, now: UnixMillis) -> Result<HttpRequest, String> {
    let jwt =
        assertion(config, now).map_err(|e| format!("cannot sign the OAuth assertion: {e}"))?;
    Ok(HttpRequest::new("POST", config.token_url.clone())
        .header("accept", "application/json")
        .form(
            form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", GRANT_TYPE)
                .append_pair("assertion", &jwt)
                .finish(),
        ))
}

/// An access token as the exchange returned it.
#[derive(Debug)]
pub struct Fetched {
    pub access_token: Secret,
    pub expires_in_s: u64,
}

#[derive(Deserialize)]
struct TokenBody {
    #[serde(default)]
    access_token: Option<Secret>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// Error codes google-auth retries (`_client.py`), besides the retryable statuses.
const RETRYABLE_ERRORS: [&str; 3] = [
    "internal_failure",
    "server_error",
    "temporarily_unavailable",
];

/// Reads the token endpoint's answer: the token, or the outcome of the delivery when the
/// exchange failed (retryable per google-auth, otherwise a provider failure: a bad key,
/// a deleted service account, a wrong clock).
pub fn read_exchange(response: &HttpResponse, now: UnixMillis) -> Result<Fetched, Outcome> {
    if (200..300).contains(&response.status) {
        let body: TokenBody = serde_json::from_str(&response.body).map_err(|_| {
            Outcome::provider_failure(format!(
                "OAuth token endpoint answered HTTP {} with a body that is not a token response",
                response.status
            ))
        })?;
        return match body.access_token {
            Some(token) if !token.expose().is_empty() => Ok(Fetched {
                access_token: token,
                expires_in_s: body.expires_in.unwrap_or(DEFAULT_EXPIRES_IN_S),
            }),
            _ => Err(Outcome::provider_failure(
                "OAuth token endpoint answered without an access_token",
            )),
        };
    }
    let parsed: Option<TokenError> = serde_json::from_str(&response.body).ok();
    let (error, description) = parsed
        .map(|e| {
            (
                e.error.unwrap_or_default(),
                e.error_description.unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    let status = response.status;
    let detail = match (error.is_empty(), description.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!(" {error}"),
        (false, false) => format!(" {error}: {}", clip(&description, REASON_CHARS)),
    };
    let retryable = herald_plugin_api::http::is_retryable_status(status)
        || RETRYABLE_ERRORS.contains(&error.as_str())
        || RETRYABLE_ERRORS.contains(&description.as_str());
    if retryable {
        Err(Outcome::Retry {
            after_ms: response
                .header("retry-after")
                .and_then(|v| retry_after_ms(v, now)),
            reason: format!("OAuth token endpoint: HTTP {status}{detail}"),
            breaker: status != 429,
        })
    } else {
        Err(Outcome::provider_failure(format!(
            "OAuth token exchange refused: HTTP {status}{detail} (check the service account \
             key, that the account still exists, and the host clock)"
        )))
    }
}

/// The instance's cached access token. `generation` numbers the tokens, so a 401 for
/// an old token does not throw away a newer one fetched meanwhile.
///
/// Fetching is single-flight: when no fresh token is cached, the first delivery claims the
/// fetch and the others wait (bounded) for its result instead of each starting their own
/// exchange — a cold start with hundreds of deliveries in flight makes one token request.
/// Plugin calls run on the host's blocking pool, so this wait blocks no async work.
#[derive(Debug, Default)]
pub struct TokenCache {
    slot: Mutex<Slot>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct Slot {
    token: Option<Cached>,
    generations: u64,
    /// When the delivery that claimed the current fetch started it.
    fetching_since: Option<UnixMillis>,
}

/// How long other deliveries wait for an in-flight token fetch before fetching themselves.
const FETCH_WAIT: Duration = Duration::from_secs(30);
/// A claim older than this (by the deliveries' clock) is considered abandoned.
const FETCH_STALE_MS: u64 = 60_000;

#[derive(Debug)]
struct Cached {
    access_token: Secret,
    refresh_at: UnixMillis,
    generation: u64,
}

/// A token handed to one delivery.
#[derive(Debug, Clone)]
pub struct Token {
    pub access_token: Secret,
    pub generation: u64,
}

impl TokenCache {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // The slot is always consistent, so a poisoned lock is still usable.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached token, if it is not yet due for a refresh at `now`.
    #[cfg(test)]
    pub fn get(&self, now: UnixMillis) -> Option<Token> {
        Self::fresh(&self.lock(), now)
    }

    fn fresh(slot: &Slot, now: UnixMillis) -> Option<Token> {
        let cached = slot.token.as_ref()?;
        (now < cached.refresh_at).then(|| Token {
            access_token: cached.access_token.clone(),
            generation: cached.generation,
        })
    }

    /// A fresh token, or `None` when the caller should fetch one. If another delivery is
    /// already fetching, waits for it (bounded) rather than starting a second exchange.
    pub fn get_or_claim(&self, now: UnixMillis) -> Option<Token> {
        self.get_or_claim_within(now, FETCH_WAIT)
    }

    fn get_or_claim_within(&self, now: UnixMillis, wait: Duration) -> Option<Token> {
        let deadline = Instant::now() + wait;
        let mut slot = self.lock();
        loop {
            if let Some(token) = Self::fresh(&slot, now) {
                return Some(token);
            }
            match slot.fetching_since {
                Some(since) if now.saturating_sub(since) < FETCH_STALE_MS => {}
                _ => {
                    slot.fetching_since = Some(now);
                    return None;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The fetch is taking too long: go ahead with our own.
                return None;
            }
            slot = match self.ready.wait_timeout(slot, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The claimed fetch failed: let a waiting delivery try.
    pub fn release(&self) {
        self.lock().fetching_since = None;
        self.ready.notify_all();
    }

    /// Caches a freshly fetched token, to be refreshed 3 min 45 s before it expires.
    pub fn put(&self, fetched: Fetched, now: UnixMillis) -> Token {
        let mut slot = self.lock();
        slot.generations += 1;
        let generation = slot.generations;
        let refresh_at = now
            .saturating_add(fetched.expires_in_s.saturating_mul(1000))
            .saturating_sub(REFRESH_EARLY_MS);
        slot.token = Some(Cached {
            access_token: fetched.access_token.clone(),
            refresh_at,
            generation,
        });
        slot.fetching_since = None;
        self.ready.notify_all();
        Token {
            access_token: fetched.access_token,
            generation,
        }
    }

    /// Drops the cached token if it is still the one of `generation` (FCM refused it).
    pub fn invalidate(&self, generation: u64) {
        let mut slot = self.lock();
        if slot
            .token
            .as_ref()
            .is_some_and(|t| t.generation == generation)
        {
            slot.token = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{RSA_PUBLIC_KEY, fixture, test_config};
    use expect_test::expect;
    use jsonwebtoken::{DecodingKey, Validation};

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![],
            body: body.into(),
        }
    }

    #[derive(Debug, Deserialize)]
    struct DecodedClaims {
        iss: String,
        scope: String,
        aud: String,
        iat: u64,
        exp: u64,
    }

    #[test]
    fn assertion_header_claims_and_signature() {
        let config = test_config();
        let now = 1_700_000_000_123;
        let jwt = assertion(&config, now).unwrap();

        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(
            header.kid.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );

        let public = std::fs::read(fixture(RSA_PUBLIC_KEY)).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.set_audience(&["https://oauth2.googleapis.com/token"]);
        validation.set_issuer(&["herald-test@herald-test.iam.gserviceaccount.com"]);
        let data = jsonwebtoken::decode::<DecodedClaims>(
            &jwt,
            &DecodingKey::from_rsa_pem(&public).unwrap(),
            &validation,
        )
        .unwrap();
        let c = data.claims;
        assert_eq!(c.iss, "herald-test@herald-test.iam.gserviceaccount.com");
        assert_eq!(c.scope, SCOPE);
        assert_eq!(c.aud, "https://oauth2.googleapis.com/token");
        assert_eq!((c.iat, c.exp), (1_700_000_000, 1_700_003_600));

        // A tampered token does not verify.
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let other = assertion(&config, now + 1000).unwrap();
        parts[1] = other.split('.').nth(1).unwrap();
        let forged = parts.join(".");
        assert!(
            jsonwebtoken::decode::<DecodedClaims>(
                &forged,
                &DecodingKey::from_rsa_pem(&public).unwrap(),
                &validation
            )
            .is_err()
        );
    }

    #[test]
    fn exchange_request_shape() {
        let config = test_config();
        let req = exchange_request(&config, 1_700_000_000_000).unwrap();
        let jwt = assertion(&config, 1_700_000_000_000).unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.url, "https://oauth2.googleapis.com/token");
        assert!(!req.http2);
        expect![[r#"
            [
                (
                    "accept",
                    "application/json",
                ),
                (
                    "content-type",
                    "application/x-www-form-urlencoded",
                ),
            ]
        "#]]
        .assert_debug_eq(&req.headers);
        assert_eq!(
            req.body,
            format!(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}"
            )
        );
    }

    #[test]
    fn reads_a_token_response() {
        let ok = response(
            200,
            r#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#,
        );
        let fetched = read_exchange(&ok, 0).unwrap();
        assert_eq!(fetched.access_token.expose(), "ya29.abc");
        assert_eq!(fetched.expires_in_s, 3599);
        let no_expiry = read_exchange(&response(200, r#"{"access_token":"t"}"#), 0).unwrap();
        assert_eq!(no_expiry.expires_in_s, 3600);
        for bad in ["", "{}", r#"{"access_token":""}"#, "<html>"] {
            assert!(
                matches!(
                    read_exchange(&response(200, bad), 0),
                    Err(Outcome::ProviderFailure { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn token_endpoint_errors() {
        let retry = |after_ms: Option<u64>, reason: &str, breaker: bool| Outcome::Retry {
            after_ms,
            reason: reason.into(),
            breaker,
        };
        let cases: Vec<(HttpResponse, Outcome)> = vec![
            (
                response(500, ""),
                retry(None, "OAuth token endpoint: HTTP 500", true),
            ),
            (
                response(503, r#"{"error":"temporarily_unavailable"}"#),
                retry(
                    None,
                    "OAuth token endpoint: HTTP 503 temporarily_unavailable",
                    true,
                ),
            ),
            (
                response(504, ""),
                retry(None, "OAuth token endpoint: HTTP 504", true),
            ),
            (
                response(408, ""),
                retry(None, "OAuth token endpoint: HTTP 408", true),
            ),
            (
                HttpResponse {
                    status: 429,
                    headers: vec![("retry-after".into(), "30".into())],
                    body: String::new(),
                },
                retry(Some(30_000), "OAuth token endpoint: HTTP 429", false),
            ),
            (
                response(
                    400,
                    r#"{"error":"internal_failure","error_description":"try again"}"#,
                ),
                retry(
                    None,
                    "OAuth token endpoint: HTTP 400 internal_failure: try again",
                    true,
                ),
            ),
            (
                response(400, r#"{"error":"x","error_description":"server_error"}"#),
                retry(None, "OAuth token endpoint: HTTP 400 x: server_error", true),
            ),
            (
                response(
                    400,
                    r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
                ),
                Outcome::provider_failure(
                    "OAuth token exchange refused: HTTP 400 invalid_grant: Invalid JWT \
                     Signature. (check the service account key, that the account still \
                     exists, and the host clock)",
                ),
            ),
            (
                response(401, r#"{"error":"invalid_client"}"#),
                Outcome::provider_failure(
                    "OAuth token exchange refused: HTTP 401 invalid_client (check the service \
                     account key, that the account still exists, and the host clock)",
                ),
            ),
            (
                response(403, "<html>forbidden</html>"),
                Outcome::provider_failure(
                    "OAuth token exchange refused: HTTP 403 (check the service account key, \
                     that the account still exists, and the host clock)",
                ),
            ),
        ];
        for (resp, expected) in cases {
            assert_eq!(read_exchange(&resp, 0).unwrap_err(), expected, "{resp:?}");
        }
    }

    #[test]
    fn cache_refreshes_early_and_invalidates_by_generation() {
        let cache = TokenCache::default();
        assert!(cache.get(0).is_none());
        let fetched = |t: &str| Fetched {
            access_token: Secret::new(t),
            expires_in_s: 3600,
        };
        let t1 = cache.put(fetched("one"), 1_000_000);
        assert_eq!(t1.generation, 1);
        let refresh_at = 1_000_000 + 3_600_000 - 225_000;
        assert_eq!(
            cache.get(refresh_at - 1).unwrap().access_token.expose(),
            "one"
        );
        assert!(cache.get(refresh_at).is_none());

        let t2 = cache.put(fetched("two"), 2_000_000);
        // A 401 for the old token keeps the new one.
        cache.invalidate(t1.generation);
        assert_eq!(cache.get(2_000_001).unwrap().access_token.expose(), "two");
        // The cached token never shows in Debug output (checked while one is cached).
        assert!(!format!("{cache:?}").contains("two"));
        cache.invalidate(t2.generation);
        assert!(cache.get(2_000_001).is_none());
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // plain threads, not async: sleeping is the point
    fn fetching_is_single_flight() {
        use std::sync::Arc;
        let cache = Arc::new(TokenCache::default());
        assert!(
            cache.get_or_claim(0).is_none(),
            "the first delivery claims the fetch"
        );
        let waiter = {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || {
                cache
                    .get_or_claim(10)
                    .map(|t| t.access_token.expose().to_string())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        cache.put(
            Fetched {
                access_token: Secret::new("shared"),
                expires_in_s: 3600,
            },
            0,
        );
        assert_eq!(
            waiter.join().unwrap().as_deref(),
            Some("shared"),
            "the waiter reuses it"
        );

        // A failed fetch releases the claim: a waiter claims its own.
        let cache = Arc::new(TokenCache::default());
        assert!(cache.get_or_claim(0).is_none());
        let waiter = {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || cache.get_or_claim(10).is_none())
        };
        std::thread::sleep(Duration::from_millis(50));
        cache.release();
        assert!(waiter.join().unwrap(), "claims after the release");

        // An abandoned claim goes stale; a bounded wait gives up.
        let cache = TokenCache::default();
        assert!(cache.get_or_claim(0).is_none());
        assert!(
            cache.get_or_claim(FETCH_STALE_MS + 1).is_none(),
            "stale claim taken over"
        );
        assert!(
            cache
                .get_or_claim_within(FETCH_STALE_MS + 2, Duration::from_millis(20))
                .is_none()
        );
    }
}
