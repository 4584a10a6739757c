//! Circuit breaker per provider: after `failures` consecutive failures the provider is cut
//! off for `cooldown`; then one trial call decides whether it closes again.
//!
//! Owns only the breaker state machine, with `now` passed in. Does not decide what counts
//! as a failure (dispatch maps outcomes to `success` / `failure` / `neutral`) and does not
//! store anything: a call that opens or closes the breaker returns a [`Transition`], which
//! dispatch persists with the delivery's outcome, and [`Breaker::restored`] brings it back
//! after a restart, so a provider that was down is not hammered again by a fresh start.

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

/// The answer of [`Breaker::admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: calls go through.
    Closed,
    /// Half-open: this call is the one trial.
    Trial,
    /// Open (or a trial is already in flight).
    Refused,
}

#[derive(Debug)]
struct Inner {
    consecutive: u32,
    opened_at: Option<UnixMillis>,
    trial_in_flight: bool,
    /// Counts transitions, so writes from concurrent deliveries can be ordered.
    generation: u64,
}

/// The breaker opened (again) or closed: what is worth persisting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Increases with every transition of this breaker (and across restarts).
    pub generation: u64,
    /// When it opened; `None` once it closed.
    pub opened_at: Option<UnixMillis>,
}

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Inner {
    fn transition(&mut self) -> Transition {
        self.generation += 1;
        Transition {
            generation: self.generation,
            opened_at: self.opened_at,
        }
    }
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker::restored(
            cfg,
            Transition {
                generation: 0,
                opened_at: None,
            },
        )
    }

    /// A breaker in the state of its last transition (from storage, or from the breaker a
    /// reload replaces). An open breaker comes back open, with its cooldown running from
    /// when it opened.
    pub fn restored(cfg: BreakerConfig, last: Transition) -> Breaker {
        Breaker {
            cfg,
            inner: Mutex::new(Inner {
                consecutive: 0,
                opened_at: last.opened_at,
                trial_in_flight: false,
                generation: last.generation,
            }),
        }
    }

    /// Takes on a transition another daemon stored (a shared store), when it is newer than
    /// this breaker's own last one; returns whether it did.
    pub fn adopt(&self, last: Transition) -> bool {
        let mut i = self.lock();
        if last.generation <= i.generation {
            return false;
        }
        i.generation = last.generation;
        i.opened_at = last.opened_at;
        i.consecutive = 0;
        i.trial_in_flight = false;
        true
    }

    pub fn config(&self) -> BreakerConfig {
        self.cfg
    }

    /// The current state as of the last transition.
    pub fn snapshot(&self) -> Transition {
        let i = self.lock();
        Transition {
            generation: i.generation,
            opened_at: i.opened_at,
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
        self.admission(now) != Admission::Refused
    }

    /// As [`Breaker::admit`], saying whether the call admitted is a half-open trial.
    pub fn admission(&self, now: UnixMillis) -> Admission {
        let mut i = self.lock();
        match i.opened_at {
            None => Admission::Closed,
            Some(at) if now >= at + self.cfg.cooldown_ms && !i.trial_in_flight => {
                i.trial_in_flight = true;
                Admission::Trial
            }
            Some(_) => Admission::Refused,
        }
    }

    /// When an open breaker will admit a trial call.
    pub fn retry_at(&self) -> Option<UnixMillis> {
        self.lock().opened_at.map(|at| at + self.cfg.cooldown_ms)
    }

    /// A call that shows the provider healthy. Returns the transition if it closed the
    /// breaker.
    pub fn success(&self) -> Option<Transition> {
        let mut i = self.lock();
        i.consecutive = 0;
        i.trial_in_flight = false;
        i.opened_at.take()?;
        Some(i.transition())
    }

    /// A call that counts against the provider. Returns the transition if the breaker
    /// opened, or stayed open with a new cooldown.
    pub fn failure(&self, now: UnixMillis) -> Option<Transition> {
        let mut i = self.lock();
        if i.trial_in_flight || i.opened_at.is_some() {
            // The trial failed (or a call admitted before opening came back): stay open.
            i.opened_at = Some(now);
            i.trial_in_flight = false;
            return Some(i.transition());
        }
        i.consecutive += 1;
        if i.consecutive < self.cfg.failures {
            return None;
        }
        i.opened_at = Some(now);
        Some(i.transition())
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
    fn adopts_only_a_newer_transition() {
        let cfg = BreakerConfig {
            failures: 2,
            cooldown_ms: 1000,
        };
        let b = Breaker::new(cfg);
        assert!(b.adopt(Transition {
            generation: 3,
            opened_at: Some(10),
        }));
        assert_eq!(b.state(20), BreakerState::Open);
        assert!(!b.adopt(Transition {
            generation: 3,
            opened_at: None,
        }));
        assert_eq!(b.state(20), BreakerState::Open, "not newer: ignored");
        assert!(b.adopt(Transition {
            generation: 4,
            opened_at: None,
        }));
        assert_eq!(b.state(20), BreakerState::Closed);
    }

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
        assert_eq!(
            b.admission(1010),
            Admission::Trial,
            "trial admitted after cooldown"
        );
        assert!(!b.admit(1011), "only one trial at a time");
        b.failure(1020);
        assert!(!b.admit(1500), "failed trial re-opens");
        assert!(b.admit(2020));
        b.success();
        assert_eq!(b.state(2021), BreakerState::Closed);
        assert!(b.admit(2021));
    }

    #[test]
    fn only_opening_and_closing_are_transitions_and_restore_brings_them_back() {
        let cfg = BreakerConfig {
            failures: 2,
            cooldown_ms: 1000,
        };
        let b = Breaker::new(cfg);
        assert_eq!(b.success(), None, "closed stays closed");
        assert_eq!(b.failure(0), None, "below the threshold");
        let opened = b.failure(5).expect("opened");
        assert_eq!(
            opened,
            Transition {
                generation: 1,
                opened_at: Some(5)
            }
        );
        assert!(b.admit(1005));
        let again = b.failure(1006).expect("a failed trial re-opens");
        assert_eq!(again.opened_at, Some(1006));
        assert!(again.generation > opened.generation);

        let r = Breaker::restored(cfg, b.snapshot());
        assert_eq!(
            r.state(1500),
            BreakerState::Open,
            "cooldown from when it opened"
        );
        assert_eq!(r.retry_at(), Some(2006));
        assert!(r.admit(2006));
        let closed = r.success().expect("closed");
        assert_eq!(closed.opened_at, None);
        assert!(
            closed.generation > again.generation,
            "generations keep rising"
        );
        assert_eq!(r.state(2007), BreakerState::Closed);
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
