//! Token-bucket rate limit per provider (`rate_limit = "10/s"`, `burst = N` tokens at most,
//! by default one second's worth). A delivery waits for a token rather than failing: the
//! limit shapes traffic, it does not drop it.

use std::sync::Mutex;
use std::time::Duration;

use herald_plugin_api::UnixMillis;

use crate::clock;
use crate::config::RateLimit;

#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    /// (tokens, last refill)
    state: Mutex<(f64, UnixMillis)>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit, now: UnixMillis) -> RateLimiter {
        RateLimiter {
            limit,
            state: Mutex::new((limit.burst, now)),
        }
    }

    /// Takes a token if one is available; otherwise says how long until one is.
    pub fn try_take(&self, now: UnixMillis) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_sub(s.1) as f64 / 1000.0;
        s.0 = (s.0 + elapsed * self.limit.per_sec).min(self.limit.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - s.0) / self.limit.per_sec;
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }

    pub async fn acquire(&self) {
        while let Err(wait) = self.try_take(clock::now_ms()) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_the_rate() {
        let r = RateLimiter::new(
            RateLimit {
                per_sec: 2.0,
                burst: 2.0,
            },
            0,
        );
        assert!(r.try_take(0).is_ok());
        assert!(r.try_take(0).is_ok());
        let wait = r.try_take(0).unwrap_err();
        assert_eq!(wait.as_millis(), 500);
        assert!(r.try_take(499).is_err());
        assert!(r.try_take(500).is_ok());
    }

    #[test]
    fn a_larger_burst_lets_that_many_go_at_once_then_the_rate_holds() {
        let r = RateLimiter::new(
            RateLimit {
                per_sec: 1.0,
                burst: 5.0,
            },
            0,
        );
        for _ in 0..5 {
            assert!(r.try_take(0).is_ok());
        }
        assert!(r.try_take(0).is_err());
        assert!(r.try_take(1_000).is_ok());
        assert!(r.try_take(1_000).is_err());
        // Idle for long, the bucket holds no more than the burst.
        for _ in 0..5 {
            assert!(r.try_take(60_000).is_ok());
        }
        assert!(r.try_take(60_000).is_err());
    }
}
