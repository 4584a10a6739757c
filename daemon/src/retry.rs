//! Retry timing: exponential backoff with full jitter, honouring the provider's wait hint,
//! and the decision between `deferred`, `dead` and `expired`.

use herald_plugin_api::{State, UnixMillis};
use rand::Rng;

use crate::config::RetryPolicy;

/// The delay before attempt `attempt + 1`: uniform in `[0, min(cap, base·2^(attempt-1))]`
/// ("full jitter"), but never sooner than the provider asked (`Retry-After`).
pub fn backoff_ms(
    policy: &RetryPolicy,
    attempt: u32,
    hint_ms: Option<u64>,
    rng: &mut impl Rng,
) -> u64 {
    let exp = policy
        .base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(40))
        .min(policy.cap_ms);
    let jitter = rng.gen_range(0..=exp);
    jitter.max(hint_ms.unwrap_or(0))
}

/// What happens to a message whose attempt `attempt` failed transiently. A retry that
/// would come after the message's time-to-live is still `deferred` — to `expires_at`, where
/// the claim expires it: a message expires only once its TTL has truly passed.
pub fn after_failure(
    policy: &RetryPolicy,
    attempt: u32,
    now: UnixMillis,
    expires_at: UnixMillis,
    hint_ms: Option<u64>,
    rng: &mut impl Rng,
) -> (State, Option<UnixMillis>) {
    if attempt >= policy.max_attempts {
        return (State::Dead, None);
    }
    if now >= expires_at {
        return (State::Expired, None);
    }
    let due = now.saturating_add(backoff_ms(policy, attempt, hint_ms, rng));
    (State::Deferred, Some(due.min(expires_at)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const P: RetryPolicy = RetryPolicy {
        base_ms: 1000,
        cap_ms: 8000,
        max_attempts: 5,
        ttl_ms: 100_000,
    };

    #[test]
    fn full_jitter_within_exponential_bound_and_cap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 1..=10 {
            let bound = (1000u64 << (attempt - 1)).min(8000);
            let mut max_seen = 0;
            for _ in 0..200 {
                let d = backoff_ms(&P, attempt, None, &mut rng);
                assert!(d <= bound, "attempt {attempt}: {d} > {bound}");
                max_seen = max_seen.max(d);
            }
            assert!(max_seen > bound / 2, "jitter spans the range");
        }
    }

    #[test]
    fn hint_is_a_floor() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert!(backoff_ms(&P, 1, Some(30_000), &mut rng) >= 30_000);
        }
    }

    #[test]
    fn dead_and_expired() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(
            after_failure(&P, 5, 0, 100_000, None, &mut rng),
            (State::Dead, None)
        );
        assert_eq!(
            after_failure(&P, 1, 0, 100_000, Some(200_000), &mut rng),
            (State::Deferred, Some(100_000)),
            "deferred to the end of its TTL, where it expires"
        );
        assert_eq!(
            after_failure(&P, 1, 100_000, 100_000, None, &mut rng),
            (State::Expired, None)
        );
        let (s, due) = after_failure(&P, 1, 50, 100_000, None, &mut rng);
        assert_eq!(s, State::Deferred);
        assert!(due.unwrap() >= 50);
    }
}
