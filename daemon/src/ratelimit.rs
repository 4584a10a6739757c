//! Token-bucket rate limit per provider (`rate_limit = "10/s"`, `burst = N` tokens at most,
//! by default one second's worth). A delivery waits for a token rather than failing: the
//! limit shapes traffic, it does not drop it. While a `critical` delivery waits for a
//! token, deliveries of the other priority lanes leave the tokens to it; `normal` and
//! `bulk` take them as they come (their share is set by the claim, see `dispatch`).
//!
//! Owns: the buckets and who may take a token. Must not: know messages beyond their lane.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald_plugin_api::UnixMillis;
use herald_protocol::Lane;

use crate::clock;
use crate::config::RateLimit;

#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    /// (tokens, last refill)
    state: Mutex<(f64, UnixMillis)>,
    /// Critical deliveries waiting for a token.
    critical_waiting: AtomicUsize,
}

/// Counts a waiting critical delivery for as long as it waits (dropped with its future).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RateLimiter {
    pub fn new(limit: RateLimit, now: UnixMillis) -> RateLimiter {
        RateLimiter {
            limit,
            state: Mutex::new((limit.burst, now)),
            critical_waiting: AtomicUsize::new(0),
        }
    }

    /// Whether a delivery of `lane` may take a token now: not while a critical one waits
    /// (unless it is critical itself).
    fn may_take(&self, lane: Lane) -> bool {
        lane == Lane::Critical || self.critical_waiting.load(Ordering::Acquire) == 0
    }

    /// How long one token takes to refill: a waiting delivery looks again after that.
    fn token_interval(&self) -> Duration {
        Duration::from_secs_f64((1.0 / self.limit.per_sec).clamp(0.001, 1.0))
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

    /// Waits for a token for a delivery of `lane`.
    pub async fn acquire(&self, lane: Lane) {
        let _waiting = (lane == Lane::Critical).then(|| {
            self.critical_waiting.fetch_add(1, Ordering::AcqRel);
            Waiting(&self.critical_waiting)
        });
        loop {
            if !self.may_take(lane) {
                tokio::time::sleep(self.token_interval()).await;
                continue;
            }
            match self.try_take(clock::now_ms()) {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
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

    /// With the bucket empty, a critical delivery waiting gets the next token before a
    /// bulk delivery that started waiting earlier.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_critical_delivery_takes_the_next_token_first() {
        let r = std::sync::Arc::new(RateLimiter::new(
            RateLimit {
                per_sec: 20.0,
                burst: 1.0,
            },
            clock::now_ms(),
        ));
        while r.try_take(clock::now_ms()).is_ok() {}
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let critical = {
            let (r, tx) = (r.clone(), tx.clone());
            tokio::spawn(async move {
                r.acquire(Lane::Critical).await;
                tx.send(Lane::Critical).unwrap();
            })
        };
        while r.critical_waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let bulk = tokio::spawn(async move {
            r.acquire(Lane::Bulk).await;
            tx.send(Lane::Bulk).unwrap();
        });
        critical.await.unwrap();
        bulk.await.unwrap();
        assert_eq!(rx.recv().await, Some(Lane::Critical));
        assert_eq!(rx.recv().await, Some(Lane::Bulk));
    }
}
