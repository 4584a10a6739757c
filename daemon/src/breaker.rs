//! Circuit breaker per provider. It opens after `failures` consecutive failures, or when
//! the share of failures among the last `window` calls reaches `ratio` (once at least
//! `min_calls` were made); an open breaker refuses calls for its cooldown, then admits
//! `probes` trial calls, all of which must succeed to close it. A failed trial opens it
//! again with the cooldown doubled (a "trip" more), up to `max_cooldown`; closing resets it.
//!
//! Owns only the breaker state machine, with `now` passed in. Does not decide what counts
//! as a failure (dispatch maps outcomes to `success` / `failure` / `neutral`) and does not
//! store anything: a call that opens or closes the breaker returns a [`Transition`], which
//! dispatch persists with the delivery's outcome, and [`Breaker::restored`] brings it back
//! after a restart (with its trips, so a grown cooldown survives), so a provider that was
//! down is not hammered again by a fresh start.
//!
//! On a store several daemons share, a trial is claimed in the store before the call
//! (`dispatch`); a daemon whose claim lost gives the trial back ([`Breaker::trial_lost`]) and
//! stays shut for a cooldown, so one daemon makes each trial call.

use std::collections::VecDeque;
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
    /// Half-open: this call is trial `index` (from 0) of the opening at `generation`.
    Trial { generation: u64, index: u32 },
    /// Open (or every trial is already admitted).
    Refused,
}

#[derive(Debug)]
struct Inner {
    consecutive: u32,
    /// The outcomes of the latest calls while closed (`true`: a failure), at most `window`.
    recent: VecDeque<bool>,
    opened_at: Option<UnixMillis>,
    /// Openings since the breaker last closed (1 for the first); sets the cooldown.
    trips: u32,
    /// Trial calls admitted since the cooldown ended, and how many of them succeeded.
    trials: u32,
    trials_ok: u32,
    /// Another daemon sharing the store makes the trial calls: no trial here before this.
    held_until: Option<UnixMillis>,
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
    /// Openings since it last closed (0 once closed): the cooldown is
    /// `cooldown · 2^(trips-1)`, capped at `max_cooldown`.
    pub trips: u32,
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
            trips: self.trips,
        }
    }

    fn open(&mut self, now: UnixMillis) -> Transition {
        self.opened_at = Some(now);
        self.trips = self.trips.saturating_add(1);
        self.trials = 0;
        self.trials_ok = 0;
        self.held_until = None;
        self.consecutive = 0;
        self.recent.clear();
        self.transition()
    }
}

impl BreakerConfig {
    /// The cooldown after the `trips`-th opening in a row.
    pub fn cooldown_after(&self, trips: u32) -> u64 {
        let doubled = self
            .cooldown_ms
            .saturating_mul(1u64 << trips.saturating_sub(1).min(40));
        doubled.min(self.max_cooldown_ms.max(self.cooldown_ms))
    }
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker::restored(
            cfg,
            Transition {
                generation: 0,
                opened_at: None,
                trips: 0,
            },
        )
    }

    /// A breaker in the state of its last transition (from storage, or from the breaker a
    /// reload replaces). An open breaker comes back open, with its cooldown (grown by its
    /// trips) running from when it opened.
    pub fn restored(cfg: BreakerConfig, last: Transition) -> Breaker {
        Breaker {
            cfg,
            inner: Mutex::new(Inner {
                consecutive: 0,
                recent: VecDeque::new(),
                opened_at: last.opened_at,
                trips: if last.opened_at.is_some() {
                    last.trips.max(1)
                } else {
                    0
                },
                trials: 0,
                trials_ok: 0,
                held_until: None,
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
        i.trips = if last.opened_at.is_some() {
            last.trips.max(1)
        } else {
            0
        };
        i.consecutive = 0;
        i.recent.clear();
        i.trials = 0;
        i.trials_ok = 0;
        i.held_until = None;
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
            trips: i.trips,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cooldown of the current opening (that of a first opening while closed).
    pub fn cooldown_ms(&self) -> u64 {
        self.cfg.cooldown_after(self.lock().trips.max(1))
    }

    pub fn state(&self, now: UnixMillis) -> BreakerState {
        let i = self.lock();
        match i.opened_at {
            None => BreakerState::Closed,
            Some(at) if now >= at + self.cfg.cooldown_after(i.trips) => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// Whether a call may go to the provider now. In half-open state at most `probes`
    /// trial calls are admitted.
    pub fn admit(&self, now: UnixMillis) -> bool {
        self.admission(now) != Admission::Refused
    }

    /// As [`Breaker::admit`], saying whether the call admitted is a half-open trial.
    pub fn admission(&self, now: UnixMillis) -> Admission {
        let mut i = self.lock();
        match i.opened_at {
            None => Admission::Closed,
            Some(at)
                if now >= at + self.cfg.cooldown_after(i.trips)
                    && i.trials < self.cfg.probes
                    && i.held_until.is_none_or(|h| now >= h) =>
            {
                let index = i.trials;
                i.trials += 1;
                Admission::Trial {
                    generation: i.generation,
                    index,
                }
            }
            Some(_) => Admission::Refused,
        }
    }

    /// Trial `generation` went to another daemon sharing the store: the trial is given
    /// back, and this breaker stays shut for another cooldown — the winner's verdict comes
    /// as a transition to adopt; if none came by then, this daemon asks for a trial again
    /// (the winner may have died mid-call). A trial of an older opening changes nothing.
    pub fn trial_lost(&self, generation: u64, now: UnixMillis) {
        let mut i = self.lock();
        if i.generation != generation || i.opened_at.is_none() {
            return;
        }
        if i.trials > i.trials_ok {
            i.trials -= 1;
        }
        i.held_until = Some(now + self.cfg.cooldown_after(i.trips));
    }

    /// When an open breaker will admit a trial call.
    pub fn retry_at(&self) -> Option<UnixMillis> {
        let i = self.lock();
        i.opened_at
            .map(|at| (at + self.cfg.cooldown_after(i.trips)).max(i.held_until.unwrap_or(0)))
    }

    /// A call that shows the provider healthy. Returns the transition if it closed the
    /// breaker (the last of its `probes` trials succeeded).
    pub fn success(&self) -> Option<Transition> {
        let mut i = self.lock();
        if i.opened_at.is_none() {
            i.consecutive = 0;
            push_recent(&mut i.recent, false, self.cfg.window);
            return None;
        }
        if i.trials == 0 {
            // A call admitted before the breaker opened: says nothing about the trials.
            return None;
        }
        i.trials_ok += 1;
        if i.trials_ok < self.cfg.probes {
            return None;
        }
        i.opened_at = None;
        i.trips = 0;
        i.trials = 0;
        i.trials_ok = 0;
        i.held_until = None;
        i.consecutive = 0;
        i.recent.clear();
        Some(i.transition())
    }

    /// A call that counts against the provider. Returns the transition if the breaker
    /// opened, or opened again after a failed trial (with a longer cooldown).
    pub fn failure(&self, now: UnixMillis) -> Option<Transition> {
        let mut i = self.lock();
        if i.opened_at.is_some() {
            if i.trials == 0 {
                // A call admitted before the breaker opened came back: it is open already.
                return None;
            }
            return Some(i.open(now));
        }
        i.consecutive += 1;
        push_recent(&mut i.recent, true, self.cfg.window);
        let by_ratio = self.cfg.ratio.is_some_and(|ratio| {
            let calls = i.recent.len();
            let failed = i.recent.iter().filter(|f| **f).count();
            calls >= self.cfg.min_calls as usize && failed as f64 >= ratio * calls as f64
        });
        if i.consecutive < self.cfg.failures && !by_ratio {
            return None;
        }
        Some(i.open(now))
    }

    /// A call that says nothing about health (429): a trial ends without a verdict, and
    /// its place goes to the next call.
    pub fn neutral(&self) {
        let mut i = self.lock();
        if i.opened_at.is_some() && i.trials > i.trials_ok {
            i.trials -= 1;
        }
    }
}

fn push_recent(recent: &mut VecDeque<bool>, failed: bool, window: u32) {
    if recent.len() >= window as usize {
        recent.pop_front();
    }
    recent.push_back(failed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(failures: u32, cooldown_ms: u64) -> BreakerConfig {
        BreakerConfig {
            failures,
            cooldown_ms,
            max_cooldown_ms: cooldown_ms,
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn adopts_only_a_newer_transition() {
        let b = Breaker::new(cfg(2, 1000));
        assert!(b.adopt(Transition {
            generation: 3,
            opened_at: Some(10),
            trips: 2,
        }));
        assert_eq!(b.state(20), BreakerState::Open);
        assert!(!b.adopt(Transition {
            generation: 3,
            opened_at: None,
            trips: 0,
        }));
        assert_eq!(b.state(20), BreakerState::Open, "not newer: ignored");
        assert!(b.adopt(Transition {
            generation: 4,
            opened_at: None,
            trips: 0,
        }));
        assert_eq!(b.state(20), BreakerState::Closed);
    }

    #[test]
    fn opens_after_threshold_and_recovers_through_one_trial() {
        let b = Breaker::new(cfg(3, 1000));
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
            Admission::Trial {
                generation: 1,
                index: 0
            },
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
        let c = cfg(2, 1000);
        let b = Breaker::new(c);
        assert_eq!(b.success(), None, "closed stays closed");
        assert_eq!(b.failure(0), None, "below the threshold");
        let opened = b.failure(5).expect("opened");
        assert_eq!(
            opened,
            Transition {
                generation: 1,
                opened_at: Some(5),
                trips: 1,
            }
        );
        assert_eq!(
            b.failure(6),
            None,
            "a late failure while open changes nothing"
        );
        assert!(b.admit(1005));
        let again = b.failure(1006).expect("a failed trial re-opens");
        assert_eq!(again.opened_at, Some(1006));
        assert_eq!(again.trips, 2);
        assert!(again.generation > opened.generation);

        let r = Breaker::restored(c, b.snapshot());
        assert_eq!(
            r.state(1500),
            BreakerState::Open,
            "cooldown from when it opened"
        );
        assert_eq!(r.retry_at(), Some(2006));
        assert!(r.admit(2006));
        let closed = r.success().expect("closed");
        assert_eq!((closed.opened_at, closed.trips), (None, 0));
        assert!(
            closed.generation > again.generation,
            "generations keep rising"
        );
        assert_eq!(r.state(2007), BreakerState::Closed);
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new(cfg(2, 1000));
        b.failure(0);
        b.success();
        b.failure(0);
        assert_eq!(b.state(0), BreakerState::Closed);
    }

    #[test]
    fn the_failure_ratio_over_the_window_trips_it_once_there_are_enough_calls() {
        let b = Breaker::new(BreakerConfig {
            failures: 100,
            ratio: Some(0.5),
            window: 4,
            min_calls: 4,
            ..cfg(100, 1000)
        });
        // Alternating: never two failures in a row.
        assert_eq!(b.success(), None);
        assert_eq!(b.failure(1), None, "1 of 2 calls, below min_calls");
        assert_eq!(b.success(), None);
        let t = b
            .failure(3)
            .expect("2 of 4 calls failed: ratio 0.5 reached");
        assert_eq!((t.opened_at, t.trips), (Some(3), 1));

        // The window rolls: old failures leave it.
        let b = Breaker::new(BreakerConfig {
            failures: 100,
            ratio: Some(0.5),
            window: 4,
            min_calls: 4,
            ..cfg(100, 1000)
        });
        b.failure(0);
        for _ in 0..4 {
            b.success();
        }
        assert_eq!(b.failure(1), None, "1 of the last 4 failed");
        assert_eq!(b.state(1), BreakerState::Closed);
    }

    #[test]
    fn the_cooldown_doubles_with_every_failed_trial_up_to_the_cap_and_survives_a_restore() {
        let c = BreakerConfig {
            max_cooldown_ms: 3_000,
            ..cfg(1, 1000)
        };
        let b = Breaker::new(c);
        let t = b.failure(0).unwrap();
        assert_eq!(b.retry_at(), Some(1_000));
        assert_eq!(t.trips, 1);
        assert!(b.admit(1_000));
        b.failure(1_000);
        assert_eq!(b.retry_at(), Some(3_000), "2 s after the second trip");
        assert!(!b.admit(2_999));
        assert!(b.admit(3_000));
        b.failure(3_000);
        assert_eq!(b.retry_at(), Some(6_000), "4 s capped at 3 s");
        let r = Breaker::restored(c, b.snapshot());
        assert_eq!(r.retry_at(), Some(6_000), "the grown cooldown is restored");
        assert!(r.admit(6_000));
        r.success().expect("closed");
        // Closing resets the growth.
        r.failure(10_000).unwrap();
        assert_eq!(r.retry_at(), Some(11_000));
    }

    #[test]
    fn every_probe_must_succeed_to_close() {
        let b = Breaker::new(BreakerConfig {
            probes: 2,
            ..cfg(1, 100)
        });
        b.failure(0).unwrap();
        let trial = |index| Admission::Trial {
            generation: 1,
            index,
        };
        assert_eq!(b.admission(100), trial(0));
        assert_eq!(b.admission(100), trial(1));
        assert_eq!(b.admission(100), Admission::Refused, "two probes at most");
        assert_eq!(b.success(), None, "one of two");
        assert_eq!(b.state(101), BreakerState::HalfOpen);
        assert!(b.success().is_some(), "both succeeded: closed");
        assert_eq!(b.state(101), BreakerState::Closed);

        b.failure(200).unwrap();
        assert!(b.admit(400));
        assert!(b.admit(400));
        assert_eq!(b.success(), None);
        assert!(
            b.failure(401).is_some(),
            "the second probe failed: open again"
        );
        assert_eq!(b.state(402), BreakerState::Open);

        // A neutral answer (429) gives its probe's place back.
        let b = Breaker::new(BreakerConfig {
            probes: 1,
            ..cfg(1, 100)
        });
        b.failure(0).unwrap();
        assert!(b.admit(100));
        assert!(!b.admit(100));
        b.neutral();
        assert!(b.admit(100));
    }

    #[test]
    fn a_trial_lost_to_another_daemon_holds_the_breaker_for_a_cooldown() {
        let b = Breaker::new(cfg(1, 1000));
        b.failure(0).unwrap();
        let Admission::Trial { generation, index } = b.admission(1000) else {
            panic!("half-open at the cooldown's end");
        };
        assert_eq!((generation, index), (1, 0));
        b.trial_lost(generation, 1000);
        assert_eq!(
            b.admission(1500),
            Admission::Refused,
            "the winner is probing"
        );
        assert_eq!(b.retry_at(), Some(2000));
        // No verdict came (the winner may be gone): the same trial is asked for again.
        assert_eq!(
            b.admission(2000),
            Admission::Trial {
                generation: 1,
                index: 0
            }
        );
        // A trial of an older opening lost late changes nothing.
        b.trial_lost(0, 2000);
        assert_eq!(b.retry_at(), Some(2000));
        // The winner's verdict, adopted, ends the hold.
        b.trial_lost(1, 2000);
        assert!(b.adopt(Transition {
            generation: 2,
            opened_at: None,
            trips: 0,
        }));
        assert_eq!(b.admission(2001), Admission::Closed);
    }
}
