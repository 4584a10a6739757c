//! Circuit breaker per provider: after `failures` consecutive failures the provider is cut
//! off for `cooldown`; then one trial call decides whether it closes again.
//!
//! Owns only the breaker state machine, with `now` passed in. Does not decide what counts
//! as a failure (dispatch maps outcomes to `success` / `failure` / `neutral`).

use std::sync::Mutex;

use herald_plugin_api::UnixMillis;

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    consecutive: u32,
    opened_at: Option<UnixMillis>,
    trial_in_flight: bool,
}

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg,
            inner: Mutex::new(Inner {
                consecutive: 0,
                opened_at: None,
                trial_in_flight: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self, now: UnixMillis) -> BreakerState {
        let i = self.lock();
        match i.opened_at {
            None => BreakerState::Closed,
            Some(at) if now >= at + self.cfg.cooldown_ms => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// Whether a call may go to the provider now. In half-open state only one trial call
    /// is admitted at a time.
    pub fn admit(&self, now: UnixMillis) -> bool {
        let mut i = self.lock();
        match i.opened_at {
            None => true,
            Some(at) if now >= at + self.cfg.cooldown_ms && !i.trial_in_flight => {
                i.trial_in_flight = true;
                true
            }
            Some(_) => false,
        }
    }

    /// When an open breaker will admit a trial call.
    pub fn retry_at(&self) -> Option<UnixMillis> {
        self.lock().opened_at.map(|at| at + self.cfg.cooldown_ms)
    }

    pub fn success(&self) {
        let mut i = self.lock();
        i.consecutive = 0;
        i.opened_at = None;
        i.trial_in_flight = false;
    }

    pub fn failure(&self, now: UnixMillis) {
        let mut i = self.lock();
        if i.trial_in_flight || i.opened_at.is_some() {
            // The trial failed (or a call admitted before opening came back): stay open.
            i.opened_at = Some(now);
            i.trial_in_flight = false;
            return;
        }
        i.consecutive += 1;
        if i.consecutive >= self.cfg.failures {
            i.opened_at = Some(now);
        }
    }

    /// A call that says nothing about health (429): a trial ends without a verdict.
    pub fn neutral(&self) {
        self.lock().trial_in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_recovers_through_one_trial() {
        let b = Breaker::new(BreakerConfig {
            failures: 3,
            cooldown_ms: 1000,
        });
        for _ in 0..2 {
            assert!(b.admit(0));
            b.failure(0);
        }
        assert_eq!(b.state(0), BreakerState::Closed);
        b.failure(10);
        assert_eq!(b.state(10), BreakerState::Open);
        assert!(!b.admit(500));
        assert_eq!(b.retry_at(), Some(1010));
        assert!(b.admit(1010), "trial admitted after cooldown");
        assert!(!b.admit(1011), "only one trial at a time");
        b.failure(1020);
        assert!(!b.admit(1500), "failed trial re-opens");
        assert!(b.admit(2020));
        b.success();
        assert_eq!(b.state(2021), BreakerState::Closed);
        assert!(b.admit(2021));
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new(BreakerConfig {
            failures: 2,
            cooldown_ms: 1000,
        });
        b.failure(0);
        b.success();
        b.failure(0);
        assert_eq!(b.state(0), BreakerState::Closed);
    }
}
