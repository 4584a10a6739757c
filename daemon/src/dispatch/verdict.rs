//! The delivery decision, as a pure function: what one run through a channel's route means
//! for the message.
//!
//! Input: what happened at each provider tried, in route order (skipped because its
//! breaker was open, or called, with the plugin's outcome), the retry policy, the attempt,
//! `now`, the message's expiry, and the RNG for the backoff jitter. Output: a [`Verdict`],
//! which becomes the [`Completion`] the committer stores.
//!
//! The rules: `Accepted` → sent (or delivered); `Rejected` → failed or bounced, no
//! fallback (another provider will not fix a bad address); `Retry` → the same provider
//! later, with backoff (dead after `max_attempts`; a retry due after the TTL is deferred to
//! the TTL and expired by the claim then, never before its time);
//! `ProviderFailure` → the next provider of the route, and when every provider failed the
//! message is retried the same way. A provider-wide wait (`Retry` without breaker and with
//! `after_ms`: a 429's `Retry-After`, a quota) pauses that provider and is like a provider
//! not called: the route goes on. When no provider was called at all (every breaker open or
//! provider paused, or no route) the attempt is given back — an outage or a rate limit must
//! not use up `max_attempts` — and the message waits for the first breaker to half-open or
//! pause to end.
//!
//! Owns: that policy. Must not: do I/O, read the clock, or touch breakers and counters
//! (`dispatch::deliver` does, as it calls providers).

use herald_plugin_api::{Channel, Outcome, State, UnixMillis};
use rand::Rng;

use crate::config::RetryPolicy;
use crate::retry;
use crate::store::{Completion, MsgId};

/// How long a message waits when no provider was called and none says when it will admit
/// a call again (no route).
const UNCALLED_WAIT_MS: u64 = 1000;

/// The shortest wait before another try when no provider was called.
const UNCALLED_MIN_WAIT_MS: u64 = 100;

/// One provider of the route, as the run met it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub provider: String,
    /// The provider takes status webhooks: its message id is indexed.
    pub webhooks: bool,
    pub result: TryResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TryResult {
    /// Not called: its breaker is open (until `retry_at`, when it admits a trial call).
    BreakerOpen {
        retry_at: Option<UnixMillis>,
    },
    /// Not called: it asked for no calls until `until` (see [`pause_ms`]).
    Paused {
        until: UnixMillis,
    },
    Called(Outcome),
}

/// Whether the route goes on to its next provider after `outcome`.
pub fn next_provider(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::ProviderFailure { .. }) || pause_ms(outcome).is_some()
}

/// How long the provider asked for no calls at all, when `outcome` is a provider-wide wait:
/// a `Retry` that says nothing about health (`breaker: false`) but names a time — a 429's
/// `Retry-After`, a quota's reset. A 429 without a time (Twilio's concurrency limit, an
/// APNs per-device limit) is retried per message instead.
pub fn pause_ms(outcome: &Outcome) -> Option<u64> {
    match outcome {
        Outcome::Retry {
            breaker: false,
            after_ms: Some(ms),
            ..
        } if *ms > 0 => Some(*ms),
        _ => None,
    }
}

/// Where in its route (an index) attempt `attempt` of a message starts, given each
/// provider's `failover_after`: a message stays on a provider for that many attempts (each
/// of which failed transiently, or the message would be done), then moves on to the next,
/// wrapping around after the last. A provider without `failover_after` keeps it. Counted
/// from the message's attempts, which are stored, so it holds across restarts; an attempt
/// no provider took (every breaker open, a pause) does not count.
pub fn failover_start(failover_after: &[Option<u32>], attempt: u32) -> usize {
    let mut left = attempt.saturating_sub(1);
    let mut i = 0;
    while let Some(Some(n)) = failover_after.get(i) {
        let n = (*n).max(1);
        if left < n {
            break;
        }
        left -= n;
        i = (i + 1) % failover_after.len();
    }
    i
}

/// What happens to the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A provider took it (`delivered`: and knows it was delivered at once).
    Sent {
        provider: String,
        provider_message_id: Option<String>,
        delivered: bool,
        index_provider_id: bool,
    },
    /// Undeliverable: failed, or a hard bounce; `suppress` adds the recipient to the
    /// suppression list.
    Rejected {
        provider: String,
        detail: String,
        bounced: bool,
        suppress: bool,
    },
    /// Try again at `due`. `attempt_used` is false when no provider was called.
    Deferred {
        due: UnixMillis,
        attempt_used: bool,
        provider: Option<String>,
        detail: String,
    },
    /// Attempts exhausted.
    Dead {
        provider: Option<String>,
        detail: String,
    },
    /// The next try would come after the message's time-to-live.
    Expired {
        attempt_used: bool,
        provider: Option<String>,
        detail: String,
    },
}

impl Verdict {
    /// The completion of claim (`attempt`, `fence`) of message `id` that stores it, under
    /// `retry.max_attempts` = `max_attempts`.
    pub fn completion(self, id: MsgId, attempt: u32, fence: u64, max_attempts: u32) -> Completion {
        let base = Completion {
            id,
            attempt,
            fence,
            max_attempts,
            state: State::Deferred,
            provider: None,
            provider_message_id: None,
            detail: None,
            due_at: None,
            suppress: false,
            attempt_used: true,
            index_provider_id: false,
            breakers: Vec::new(),
            breaker_events: Vec::new(),
        };
        match self {
            Verdict::Sent {
                provider,
                provider_message_id,
                delivered,
                index_provider_id,
            } => Completion {
                state: if delivered {
                    State::Delivered
                } else {
                    State::Sent
                },
                provider: Some(provider),
                provider_message_id,
                index_provider_id,
                ..base
            },
            Verdict::Rejected {
                provider,
                detail,
                bounced,
                suppress,
            } => Completion {
                state: if bounced {
                    State::Bounced
                } else {
                    State::Failed
                },
                provider: Some(provider),
                detail: Some(detail),
                suppress,
                ..base
            },
            Verdict::Deferred {
                due,
                attempt_used,
                provider,
                detail,
            } => Completion {
                state: State::Deferred,
                due_at: Some(due),
                attempt_used,
                provider,
                detail: Some(detail),
                ..base
            },
            Verdict::Dead { provider, detail } => Completion {
                state: State::Dead,
                provider,
                detail: Some(detail),
                ..base
            },
            Verdict::Expired {
                attempt_used,
                provider,
                detail,
            } => Completion {
                state: State::Expired,
                attempt_used,
                provider,
                detail: Some(detail),
                ..base
            },
        }
    }
}

/// Decides what a route run means for a message of `channel` on its attempt `attempt`
/// (counted from 1, this run included), expiring at `expires_at`.
pub fn decide(
    channel: Channel,
    run: &[Tried],
    policy: &RetryPolicy,
    attempt: u32,
    now: UnixMillis,
    expires_at: UnixMillis,
    rng: &mut impl Rng,
) -> Verdict {
    let mut notes: Vec<String> = Vec::new();
    let mut called = false;
    // Until when the providers not called refuse calls; the provider that paused.
    let mut reopen: Option<UnixMillis> = None;
    let mut paused_by: Option<String> = None;
    let mut wait_for = |at: UnixMillis| reopen = Some(reopen.map_or(at, |r| r.min(at)));
    for t in run {
        let outcome = match &t.result {
            TryResult::BreakerOpen { retry_at } => {
                notes.push(format!("{}: circuit open", t.provider));
                if let Some(at) = retry_at {
                    wait_for(*at);
                }
                continue;
            }
            TryResult::Paused { until } => {
                notes.push(format!("{}: paused by its rate limit", t.provider));
                wait_for(*until);
                continue;
            }
            TryResult::Called(outcome) => outcome,
        };
        if let (Some(ms), Outcome::Retry { reason, .. }) = (pause_ms(outcome), outcome) {
            notes.push(format!("{}: {reason}", t.provider));
            wait_for(now.saturating_add(ms));
            paused_by.get_or_insert_with(|| t.provider.clone());
            continue;
        }
        called = true;
        match outcome {
            Outcome::Accepted {
                provider_message_id,
                delivered,
            } => {
                return Verdict::Sent {
                    provider: t.provider.clone(),
                    provider_message_id: provider_message_id.clone(),
                    delivered: *delivered,
                    index_provider_id: t.webhooks,
                };
            }
            Outcome::Rejected {
                reason,
                bounced,
                suppress,
            } => {
                return Verdict::Rejected {
                    provider: t.provider.clone(),
                    detail: format!("{}: {reason}", t.provider),
                    bounced: *bounced,
                    suppress: *suppress,
                };
            }
            Outcome::Retry {
                after_ms, reason, ..
            } => {
                notes.push(format!("{}: {reason}", t.provider));
                return retry_later(
                    policy,
                    attempt,
                    now,
                    expires_at,
                    *after_ms,
                    Some(t.provider.clone()),
                    notes.join("; "),
                    rng,
                );
            }
            Outcome::ProviderFailure { reason } => {
                notes.push(format!("{}: {reason}", t.provider));
            }
        }
    }
    if called {
        // Every provider called failed: the message is retried like a transient failure.
        return retry_later(
            policy,
            attempt,
            now,
            expires_at,
            None,
            None,
            notes.join("; "),
            rng,
        );
    }
    let (wait, detail) = if run.is_empty() {
        (None, format!("no route for channel {channel}"))
    } else {
        // Every breaker is open or provider paused: wait for the first to take a call.
        (reopen.map(|t| t.saturating_sub(now)), notes.join("; "))
    };
    let due = now
        .saturating_add(wait.unwrap_or(UNCALLED_WAIT_MS).max(UNCALLED_MIN_WAIT_MS))
        .min(expires_at);
    if now >= expires_at {
        Verdict::Expired {
            attempt_used: false,
            provider: paused_by,
            detail,
        }
    } else {
        Verdict::Deferred {
            due,
            attempt_used: false,
            provider: paused_by,
            detail,
        }
    }
}

/// A failed attempt: backoff, or dead, or expired.
#[allow(clippy::too_many_arguments)]
fn retry_later(
    policy: &RetryPolicy,
    attempt: u32,
    now: UnixMillis,
    expires_at: UnixMillis,
    hint_ms: Option<u64>,
    provider: Option<String>,
    detail: String,
    rng: &mut impl Rng,
) -> Verdict {
    match retry::after_failure(policy, attempt, now, expires_at, hint_ms, rng) {
        (State::Dead, _) => Verdict::Dead { provider, detail },
        (State::Deferred, Some(due)) => Verdict::Deferred {
            due,
            attempt_used: true,
            provider,
            detail,
        },
        _ => Verdict::Expired {
            attempt_used: true,
            provider,
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const POLICY: RetryPolicy = RetryPolicy {
        base_ms: 1_000,
        cap_ms: 8_000,
        max_attempts: 3,
        ttl_ms: 3_600_000,
    };
    const NOW: UnixMillis = 1_000_000;
    const LATER: UnixMillis = NOW + 3_600_000;

    fn called(provider: &str, outcome: Outcome) -> Tried {
        Tried {
            provider: provider.into(),
            webhooks: true,
            result: TryResult::Called(outcome),
        }
    }

    fn open(provider: &str, retry_at: Option<UnixMillis>) -> Tried {
        Tried {
            provider: provider.into(),
            webhooks: true,
            result: TryResult::BreakerOpen { retry_at },
        }
    }

    fn accepted(pid: &str, delivered: bool) -> Outcome {
        Outcome::Accepted {
            provider_message_id: Some(pid.into()),
            delivered,
        }
    }

    fn retry(after_ms: Option<u64>) -> Outcome {
        Outcome::Retry {
            after_ms,
            reason: "503".into(),
            breaker: true,
        }
    }

    fn down(reason: &str) -> Outcome {
        Outcome::ProviderFailure {
            reason: reason.into(),
        }
    }

    fn rejected(bounced: bool, suppress: bool) -> Outcome {
        Outcome::Rejected {
            reason: "invalid recipient".into(),
            bounced,
            suppress,
        }
    }

    fn decide_at(run: &[Tried], attempt: u32, expires_at: UnixMillis) -> Verdict {
        decide(
            Channel::Email,
            run,
            &POLICY,
            attempt,
            NOW,
            expires_at,
            &mut StdRng::seed_from_u64(7),
        )
    }

    /// Deferred by a used attempt, within `[now + floor, now + bound]`.
    fn assert_deferred(v: &Verdict, floor: u64, bound: u64, provider: Option<&str>, detail: &str) {
        let Verdict::Deferred {
            due,
            attempt_used,
            provider: p,
            detail: d,
        } = v
        else {
            panic!("expected deferred, got {v:?}");
        };
        assert!(
            (NOW + floor..=NOW + bound).contains(due),
            "due {due} outside [{}, {}]",
            NOW + floor,
            NOW + bound
        );
        assert!(attempt_used);
        assert_eq!(p.as_deref(), provider);
        assert_eq!(d, detail);
    }

    #[test]
    fn accepted_is_sent_or_delivered_by_that_provider() {
        let v = decide_at(&[called("resend", accepted("re_1", false))], 1, LATER);
        assert_eq!(
            v,
            Verdict::Sent {
                provider: "resend".into(),
                provider_message_id: Some("re_1".into()),
                delivered: false,
                index_provider_id: true,
            }
        );
        let mut no_hooks = called("dev", accepted("f.eml", true));
        no_hooks.webhooks = false;
        let v = decide_at(&[no_hooks], 1, LATER);
        assert_eq!(
            v,
            Verdict::Sent {
                provider: "dev".into(),
                provider_message_id: Some("f.eml".into()),
                delivered: true,
                index_provider_id: false,
            }
        );
        let c = v.completion([1; 16], 1, 99, 3);
        assert_eq!(
            (c.state, c.fence, c.attempt_used),
            (State::Delivered, 99, true)
        );
    }

    #[test]
    fn rejected_fails_or_bounces_without_fallback() {
        let v = decide_at(
            &[
                called("resend", rejected(true, true)),
                // Never reached by a real run; a rejection ends the route regardless.
                called("sendgrid", accepted("sg", false)),
            ],
            1,
            LATER,
        );
        assert_eq!(
            v,
            Verdict::Rejected {
                provider: "resend".into(),
                detail: "resend: invalid recipient".into(),
                bounced: true,
                suppress: true,
            }
        );
        assert_eq!(v.completion([1; 16], 1, 0, 3).state, State::Bounced);
        let v = decide_at(&[called("resend", rejected(false, false))], 1, LATER);
        let c = v.completion([1; 16], 1, 0, 3);
        assert_eq!((c.state, c.suppress), (State::Failed, false));
    }

    #[test]
    fn retry_defers_with_backoff_honouring_the_hint() {
        let v = decide_at(&[called("resend", retry(None))], 1, LATER);
        assert_deferred(&v, 0, 1_000, Some("resend"), "resend: 503");
        let v = decide_at(&[called("resend", retry(Some(30_000)))], 2, LATER);
        assert_deferred(&v, 30_000, 30_000, Some("resend"), "resend: 503");
    }

    #[test]
    fn retry_on_the_last_attempt_is_dead() {
        let v = decide_at(&[called("resend", retry(None))], 3, LATER);
        assert_eq!(
            v,
            Verdict::Dead {
                provider: Some("resend".into()),
                detail: "resend: 503".into(),
            }
        );
    }

    #[test]
    fn a_retry_past_the_ttl_is_deferred_to_the_ttl_and_expires_only_then() {
        let v = decide_at(&[called("resend", retry(Some(60_000)))], 1, NOW + 10_000);
        assert_eq!(
            v,
            Verdict::Deferred {
                due: NOW + 10_000,
                attempt_used: true,
                provider: Some("resend".into()),
                detail: "resend: 503".into(),
            },
            "deferred first, to when the TTL has passed (the claim then expires it)"
        );
        let v = decide_at(&[called("resend", retry(None))], 1, NOW);
        assert_eq!(
            v,
            Verdict::Expired {
                attempt_used: true,
                provider: Some("resend".into()),
                detail: "resend: 503".into(),
            },
            "the TTL has passed"
        );
    }

    #[test]
    fn provider_failure_falls_back_to_the_next_provider() {
        let v = decide_at(
            &[
                called("resend", down("401 unauthorized")),
                called("sendgrid", accepted("sg_1", false)),
            ],
            1,
            LATER,
        );
        assert!(matches!(v, Verdict::Sent { ref provider, .. } if provider == "sendgrid"));
    }

    #[test]
    fn every_provider_failing_is_retried_then_dead() {
        let run = [
            called("resend", down("401 unauthorized")),
            called("sendgrid", down("connection refused")),
        ];
        let v = decide_at(&run, 1, LATER);
        assert_deferred(
            &v,
            0,
            1_000,
            None,
            "resend: 401 unauthorized; sendgrid: connection refused",
        );
        let v = decide_at(&run, 3, LATER);
        assert!(matches!(v, Verdict::Dead { provider: None, .. }), "{v:?}");
    }

    #[test]
    fn open_breakers_are_skipped_and_noted() {
        let v = decide_at(
            &[
                open("resend", Some(NOW + 5_000)),
                called("sendgrid", accepted("sg_1", false)),
            ],
            1,
            LATER,
        );
        assert!(matches!(v, Verdict::Sent { ref provider, .. } if provider == "sendgrid"));
        let v = decide_at(
            &[
                open("resend", Some(NOW + 5_000)),
                called("sendgrid", retry(None)),
            ],
            1,
            LATER,
        );
        assert_deferred(
            &v,
            0,
            1_000,
            Some("sendgrid"),
            "resend: circuit open; sendgrid: 503",
        );
        let v = decide_at(
            &[
                open("resend", Some(NOW + 5_000)),
                called("sendgrid", down("down")),
            ],
            1,
            LATER,
        );
        assert_deferred(&v, 0, 1_000, None, "resend: circuit open; sendgrid: down");
    }

    #[test]
    fn every_breaker_open_waits_for_the_first_to_half_open_and_gives_the_attempt_back() {
        let run = [
            open("resend", Some(NOW + 9_000)),
            open("sendgrid", Some(NOW + 4_000)),
        ];
        let v = decide_at(&run, 3, LATER);
        assert_eq!(
            v,
            Verdict::Deferred {
                due: NOW + 4_000,
                attempt_used: false,
                provider: None,
                detail: "resend: circuit open; sendgrid: circuit open".into(),
            },
            "not dead on the last attempt: no provider was called"
        );
        let c = v.completion([1; 16], 3, 0, 3);
        assert_eq!((c.state, c.attempt_used), (State::Deferred, false));
        // A breaker about to half-open still leaves a short pause; none known: a second.
        let v = decide_at(&[open("resend", Some(NOW + 10))], 1, LATER);
        assert!(matches!(v, Verdict::Deferred { due, .. } if due == NOW + 100));
        let v = decide_at(&[open("resend", None)], 1, LATER);
        assert!(matches!(v, Verdict::Deferred { due, .. } if due == NOW + 1_000));
        // Half-opening only after the message's time-to-live: deferred to the TTL.
        let v = decide_at(&run, 1, NOW + 2_000);
        assert!(
            matches!(
                v,
                Verdict::Deferred {
                    due,
                    attempt_used: false,
                    ..
                } if due == NOW + 2_000
            ),
            "{v:?}"
        );
        let v = decide_at(&run, 1, NOW);
        assert!(
            matches!(
                v,
                Verdict::Expired {
                    attempt_used: false,
                    ..
                }
            ),
            "{v:?}"
        );
    }

    fn rate_limited(after_ms: Option<u64>) -> Outcome {
        Outcome::Retry {
            after_ms,
            reason: "429 rate_limit_exceeded".into(),
            breaker: false,
        }
    }

    #[test]
    fn a_provider_wide_wait_moves_on_or_waits_without_using_the_attempt() {
        assert_eq!(pause_ms(&rate_limited(Some(2_000))), Some(2_000));
        assert_eq!(
            pause_ms(&rate_limited(None)),
            None,
            "no time named: per message"
        );
        assert_eq!(pause_ms(&retry(Some(2_000))), None, "a 503 is not a pause");
        assert!(next_provider(&rate_limited(Some(2_000))));
        assert!(!next_provider(&rate_limited(None)));

        // The next provider takes it.
        let v = decide_at(
            &[
                called("resend", rate_limited(Some(2_000))),
                called("sendgrid", accepted("sg_1", false)),
            ],
            1,
            LATER,
        );
        assert!(matches!(v, Verdict::Sent { ref provider, .. } if provider == "sendgrid"));
        // Alone, or with the others open or paused: wait for the first to take calls again,
        // even on the last attempt.
        let v = decide_at(&[called("resend", rate_limited(Some(2_000)))], 3, LATER);
        assert_eq!(
            v,
            Verdict::Deferred {
                due: NOW + 2_000,
                attempt_used: false,
                provider: Some("resend".into()),
                detail: "resend: 429 rate_limit_exceeded".into(),
            }
        );
        let run = [
            Tried {
                provider: "resend".into(),
                webhooks: true,
                result: TryResult::Paused { until: NOW + 9_000 },
            },
            open("sendgrid", Some(NOW + 4_000)),
        ];
        let v = decide_at(&run, 3, LATER);
        assert_eq!(
            v,
            Verdict::Deferred {
                due: NOW + 4_000,
                attempt_used: false,
                provider: None,
                detail: "resend: paused by its rate limit; sendgrid: circuit open".into(),
            }
        );
        // A 429 without a time is retried per message, with the attempt used.
        let v = decide_at(&[called("resend", rate_limited(None))], 1, LATER);
        assert_deferred(
            &v,
            0,
            1_000,
            Some("resend"),
            "resend: 429 rate_limit_exceeded",
        );
    }

    #[test]
    fn failover_after_moves_the_message_on_after_n_attempts_and_wraps_around() {
        let starts = |f: &[Option<u32>]| (1..=9).map(|a| failover_start(f, a)).collect::<Vec<_>>();
        assert_eq!(starts(&[None, None]), [0; 9], "never by default");
        assert_eq!(starts(&[Some(2), None]), [0, 0, 1, 1, 1, 1, 1, 1, 1]);
        assert_eq!(starts(&[Some(2), Some(1)]), [0, 0, 1, 0, 0, 1, 0, 0, 1]);
        assert_eq!(
            starts(&[Some(1), Some(1), Some(1)]),
            [0, 1, 2, 0, 1, 2, 0, 1, 2]
        );
        assert_eq!(starts(&[Some(3)]), [0; 9], "a route of one");
        assert_eq!(failover_start(&[], 5), 0);
    }

    #[test]
    fn no_route_waits_a_second_without_using_the_attempt() {
        let v = decide_at(&[], 1, LATER);
        assert_eq!(
            v,
            Verdict::Deferred {
                due: NOW + 1_000,
                attempt_used: false,
                provider: None,
                detail: "no route for channel email".into(),
            }
        );
        let v = decide_at(&[], 1, NOW + 500);
        assert!(matches!(
            v,
            Verdict::Deferred {
                due,
                attempt_used: false,
                ..
            } if due == NOW + 500
        ));
    }

    #[test]
    fn only_a_provider_failure_goes_on_to_the_next_provider() {
        assert!(next_provider(&down("x")));
        assert!(!next_provider(&retry(None)));
        assert!(!next_provider(&accepted("x", false)));
        assert!(!next_provider(&rejected(false, false)));
    }
}
