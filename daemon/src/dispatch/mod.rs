//! The dispatcher: leases due messages in batches (as many as there are free delivery
//! slots), runs each through its channel's route, and commits the outcome.
//!
//! Priority lanes: the claim takes every due `critical` message first, then `normal` and
//! `bulk` 3:1 by claim position (`Op::Claim::turn`, which this loop advances by what it
//! claimed, so the share holds even when slots free one at a time); a critical delivery
//! also takes rate-limit tokens before the others waiting for the same provider
//! (`RateLimiter::acquire`).
//!
//! For one message: try the route's providers in order (from the one `failover_after` says
//! this attempt starts at), skipping those whose breaker is open or that are paused (a
//! 429's `Retry-After`: `Provider::pause`, for every message), waiting for rate-limit
//! tokens and for a place under the provider's `max_in_flight`; run the plugin's sans-IO
//! exchange (plugin calls inline when the manifest says `blocking: false`, else on the
//! blocking pool; requests through `transport`); then hand the run to [`verdict::decide`],
//! the pure function that says what it means (`Accepted` → sent/delivered, `Rejected` →
//! failed/bounced with no fallback, `ProviderFailure` → next provider, `Retry` → deferred
//! with backoff, or dead/expired), and commit its completion.
//!
//! Messages whose first provider sends batches (`Manifest::batch`) are grouped after the
//! claim ([`batch`]): one request, one rate-limit token, one breaker answer per group, and
//! each message's completion as above.
//!
//! On a store several daemons share, the leases of deliveries in flight are renewed until
//! their completions are committed ([`leases`]), so a slow delivery — or an outcome
//! waiting for the store to come back — is never taken back and sent again.
//!
//! Owns: concurrency bound, the I/O of a delivery, breaker bookkeeping. Must not: touch
//! storage except through the committer, do I/O other than through `transport`, or decide
//! outcomes outside `verdict`.

mod batch;
mod leases;
pub mod verdict;

use std::sync::Arc;
use std::time::Duration;

use herald_plugin_api::abi::{CallError, CallErrorKind, ResumeInput};
use herald_plugin_api::{Delivery, EventKind, Message, Outcome, Step};
use herald_protocol::Lane;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::breaker::{Admission, Transition};
use crate::clock;
use crate::commit::{CommitError, Committer};
use crate::live::{Live, LiveCell};
use crate::providers::{Counters, Provider};
use crate::reads::Reads;
use crate::store::{BreakerEvent, BreakerRecord, Claimed, Completion, Op, OpResult, id_string};
use crate::transport::Transports;
use verdict::{Tried, TryResult};

/// Most messages leased in one claim.
const CLAIM_BATCH: usize = 1024;

/// Bound on `Call` steps in one exchange (FCM needs three).
const MAX_STEPS: usize = 8;

pub struct Dispatcher {
    pub committer: Committer,
    /// For the next due time: a read bounded in time (a stalled store must not hold a
    /// runtime worker).
    pub reads: Reads,
    pub live: Arc<LiveCell>,
    pub transports: Arc<Transports>,
    pub concurrency: usize,
    pub shutdown_grace: Duration,
    /// How long a claim leases its messages (`StoreConfig::lease_ms`): on a store several
    /// daemons share, past it another daemon may take a message back.
    pub lease_ms: u64,
    /// Several daemons share the store: each trial call of a half-open breaker is claimed
    /// in it first ([`Dispatcher::wins_trial`]), so one daemon makes it, and the leases of
    /// deliveries in flight are renewed ([`leases`]).
    pub shared_store: bool,
    /// The leases of deliveries in flight, kept on a shared store only (`None` otherwise:
    /// leases of a store one daemon uses matter only across a restart, and the dispatch
    /// path then does no lease bookkeeping).
    pub held: Option<Arc<leases::Held>>,
}

/// How long a won trial call is this daemon's alone: longer than a provider call may take
/// (the transports' timeouts), so a daemon that died mid-probe holds it no longer than this.
const TRIAL_HOLD_MS: u64 = 120_000;

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl Dispatcher {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.concurrency));
        let mut tasks = JoinSet::new();
        let mut paused = false;
        // Claim positions so far: the normal:bulk share of the next claim starts here.
        let mut turn: u64 = 0;
        // On a shared store a lease must outlive the delivery however long it takes; on a
        // store one daemon uses, leases matter only across a restart.
        let renewal = this.held.as_ref().map(|held| {
            tokio::spawn(Arc::clone(held).renew(this.committer.clone(), this.lease_ms))
        });
        while !*shutdown.borrow() {
            while tasks.try_join_next().is_some() {}
            // Short of space, or the store failed: claim nothing (messages stay queued)
            // until that changes; deliveries in flight finish.
            if let Some(why) = this.committer.claims_paused() {
                if !paused {
                    tracing::warn!(reason = %why, "delivery paused: no new messages are claimed");
                    paused = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            } else if paused {
                tracing::info!("delivery resumed");
                paused = false;
            }
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    p = Arc::clone(&slots).acquire_owned() => drop(p),
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let want = free.min(CLAIM_BATCH);
            let claimed = match this
                .committer
                .submit(Op::Claim {
                    limit: want,
                    lease_ms: this.lease_ms,
                    turn,
                })
                .await
            {
                Ok(OpResult::Claimed(c)) => c,
                Ok(other) => {
                    tracing::error!(?other, "unexpected claim result");
                    Vec::new()
                }
                Err(e) => {
                    tracing::error!(error = %e, "claiming due messages failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            let full = claimed.len() == want;
            turn = turn.wrapping_add(claimed.len() as u64);
            // Messages that can share a provider's batch request go together (one slot
            // per message all the same); the others alone, as before.
            let (singles, batches) = batch::group(&this.live.current(), claimed).await;
            for c in singles {
                let Some(permit) = slot(&slots).await else {
                    return;
                };
                let hold = this.held.as_ref().map(|h| h.hold([&c]));
                let this = Arc::clone(&this);
                tasks.spawn(async move {
                    this.deliver(c, permit).await;
                    drop(hold);
                });
            }
            for b in batches {
                let mut permits = Vec::with_capacity(b.items.len());
                for _ in 0..b.items.len() {
                    let Some(permit) = slot(&slots).await else {
                        return;
                    };
                    permits.push(permit);
                }
                let hold = this.held.as_ref().map(|h| h.hold(&b.items));
                let this = Arc::clone(&this);
                tasks.spawn(async move {
                    this.deliver_batch(b, permits).await;
                    drop(hold);
                });
            }
            if full {
                continue;
            }
            // Nothing (more) due: sleep until the next due time, a new schedule entry, or
            // shutdown.
            let wait = match this.reads.run(|s| s.next_due()).await {
                Ok(Some(due)) => {
                    Duration::from_millis(due.saturating_sub(clock::now_ms()).clamp(1, 1000))
                }
                Ok(None) => Duration::from_secs(5),
                Err(e) => {
                    tracing::error!(error = %e, "reading the schedule failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = this.committer.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        while tasks.try_join_next().is_some() {}
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "waiting for deliveries in flight");
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(this.shutdown_grace, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = tasks.len(),
                "shutdown grace period over; unfinished deliveries stay leased and are re-queued at the next start"
            );
            tasks.abort_all();
        }
        // What is still leased now expires: another daemon (or the next start) re-queues it.
        if let Some(renewal) = renewal {
            renewal.abort();
        }
    }

    /// Runs one claimed message through its route — the I/O, and the breaker and counter
    /// bookkeeping as each provider answers — then lets [`verdict::decide`] say what the
    /// run means and commits that.
    async fn deliver(self: Arc<Self>, c: Claimed, _slot: OwnedSemaphorePermit) {
        self.deliver_one(c).await;
    }

    /// [`Dispatcher::deliver`] without the slot (a batch holds its messages' slots).
    async fn deliver_one(&self, c: Claimed) {
        let live = self.live.current();
        let delivery = Arc::new(delivery_of(&c, clock::now_ms()));
        let route = live
            .routing
            .routes
            .get(&c.record.channel())
            .cloned()
            .unwrap_or_default();
        let failover: Vec<Option<u32>> = route.iter().map(|p| p.failover_after).collect();
        let start = verdict::failover_start(&failover, c.record.attempt);
        let mut run: Vec<Tried> = Vec::with_capacity(route.len());
        let mut breakers = Moves::default();
        self.try_route(
            &route,
            start,
            0,
            c.record.lane,
            &delivery,
            &mut run,
            &mut breakers,
        )
        .await;
        self.finish(c, &live, &run, breakers).await;
    }

    /// Tries the route's providers in order from index `start` (skipping the first `skip`
    /// of that order: a batch already called them) until one settles the message.
    #[allow(clippy::too_many_arguments)]
    async fn try_route(
        &self,
        route: &[Arc<Provider>],
        start: usize,
        skip: usize,
        lane: Lane,
        delivery: &Arc<Delivery>,
        run: &mut Vec<Tried>,
        breakers: &mut Moves,
    ) {
        let take = route.len().saturating_sub(skip);
        for p in route.iter().cycle().skip(start + skip).take(take) {
            let now = clock::now_ms();
            if let Some(until) = p.paused_until(now) {
                run.push(Tried {
                    provider: p.name.clone(),
                    webhooks: p.manifest.webhooks,
                    result: TryResult::Paused { until },
                });
                continue;
            }
            let admission = p.breaker.admission(now);
            if admission == Admission::Refused {
                run.push(breaker_open(p));
                continue;
            }
            if let Some(rate) = &p.rate {
                rate.acquire(lane).await;
            }
            // `max_in_flight`: wait for a free place (the semaphore is never closed).
            let _place = match &p.in_flight {
                Some((_, places)) => Arc::clone(places).acquire_owned().await.ok(),
                None => None,
            };
            // A 429 met by another delivery while this one waited pauses it too.
            if let Some(until) = p.paused_until(clock::now_ms()) {
                if matches!(admission, Admission::Trial { .. }) {
                    p.breaker.neutral();
                }
                run.push(Tried {
                    provider: p.name.clone(),
                    webhooks: p.manifest.webhooks,
                    result: TryResult::Paused { until },
                });
                continue;
            }
            if !self.wins_trial(p, admission).await {
                run.push(breaker_open(p));
                continue;
            }
            if matches!(admission, Admission::Trial { .. }) {
                breakers.half_open(p);
            }
            let started = clock::instant();
            let outcome = exchange(&self.transports, p, delivery).await;
            p.counters.call_latency.observe(started.elapsed());
            breakers.answered(p, &outcome, clock::now_ms());
            count(p, &outcome, &delivery.message.id);
            let go_on = verdict::next_provider(&outcome);
            run.push(Tried {
                provider: p.name.clone(),
                webhooks: p.manifest.webhooks,
                result: TryResult::Called(outcome),
            });
            if !go_on {
                break;
            }
        }
    }

    /// Whether this daemon makes the call `admission` allows: always, but for a trial of a
    /// half-open breaker on a store several daemons share — one daemon makes each trial, the
    /// one whose claim the store took. A daemon that loses (or cannot ask) gives the trial
    /// back and holds its breaker shut for a cooldown; the winner's verdict reaches it as
    /// a stored transition it adopts.
    async fn wins_trial(&self, p: &Provider, admission: Admission) -> bool {
        let Admission::Trial { generation, index } = admission else {
            return true;
        };
        if !self.shared_store {
            return true;
        }
        let now = clock::now_ms();
        let claim = Op::ClaimProbe {
            provider: p.name.clone(),
            generation,
            trial: index,
            until: now + TRIAL_HOLD_MS,
        };
        let won = matches!(
            self.committer.submit(claim).await,
            Ok(OpResult::Probe { won: true })
        );
        if !won {
            tracing::debug!(provider = %p.name, generation, "another daemon makes this trial call");
            p.breaker.trial_lost(generation, now);
        }
        won
    }

    /// Lets [`verdict::decide`] say what `run` means for the message and commits it, with
    /// the breaker moves met on the way.
    async fn finish(&self, c: Claimed, live: &Live, run: &[Tried], breakers: Moves) {
        let Claimed { id, fence, record } = c;
        let verdict = verdict::decide(
            record.channel(),
            run,
            &live.config.retry,
            record.attempt,
            clock::now_ms(),
            record.expires_at,
            &mut rand::thread_rng(),
        );
        self.complete(Completion {
            breakers: breakers.records,
            breaker_events: breakers.events,
            ..verdict.completion(id, record.attempt, fence, live.config.retry.max_attempts)
        })
        .await;
    }

    /// Commits a completion. Until it is committed the message stays leased — and, on a
    /// shared store, renewed — so a store out of reach for now (a PostgreSQL restart or
    /// failover, a stalled disk) is waited for, with backoff, for as long as the daemon
    /// runs: giving up would leave the message to be sent again once its lease expired. An
    /// engine error, or a store failed for good, gets [`COMPLETION_TRIES`] tries. At shutdown the dispatcher stops the wait; the
    /// lease then expires and the message is re-queued, as after a crash.
    async fn complete(&self, completion: Completion) {
        let (id, fence) = (completion.id, completion.fence);
        if let Some(held) = &self.held {
            held.completing(&id, fence);
        }
        let mut tries = 0u32;
        loop {
            tries += 1;
            let error = match self
                .committer
                .submit(Op::Complete(completion.clone()))
                .await
            {
                Ok(OpResult::Done) => {
                    if tries > 1 {
                        tracing::info!(message_id = %id_string(&id), tries, "delivery outcome recorded after the store came back");
                    }
                    break;
                }
                Ok(other) => {
                    tracing::warn!(message_id = %id_string(&id), ?other, "completion not applied");
                    break;
                }
                Err(CommitError::Closed) => break,
                Err(e) => e,
            };
            // Out of reach for now — not failed for good (a sled store that failed stays
            // so until a restart).
            let transient =
                matches!(error, CommitError::Unavailable(_)) && !self.committer.failed_for_good();
            if !transient && tries >= COMPLETION_TRIES {
                tracing::error!(message_id = %id_string(&id), error = %error, tries, "could not record a delivery outcome; giving up (the message is sent again after its lease)");
                break;
            }
            if tries == 1 {
                tracing::error!(message_id = %id_string(&id), error = %error, "could not record a delivery outcome; trying again until the store takes it");
            } else {
                tracing::debug!(message_id = %id_string(&id), error = %error, tries, "recording a delivery outcome failed again");
            }
            let backoff = 200u64.saturating_mul(1 << (tries - 1).min(5)).min(5_000);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
        if let Some(held) = &self.held {
            held.release(&id, fence);
        }
    }
}

/// Tries of a completion the store refuses with an engine error or has failed for good.
const COMPLETION_TRIES: u32 = 3;

/// A try that did not call `p`: its breaker is open (or another daemon makes the trial).
fn breaker_open(p: &Provider) -> Tried {
    Tried {
        provider: p.name.clone(),
        webhooks: p.manifest.webhooks,
        result: TryResult::BreakerOpen {
            retry_at: p.breaker.retry_at(),
        },
    }
}

/// The breaker transitions of one delivery, stored and reported with its completion.
#[derive(Default)]
struct Moves {
    records: Vec<(String, BreakerRecord)>,
    events: Vec<BreakerEvent>,
}

impl Moves {
    /// Reports that `p`'s cooldown is over and this call is (one of) its trial calls.
    fn half_open(&mut self, p: &Provider) {
        self.events.push(BreakerEvent {
            provider: p.name.clone(),
            kind: EventKind::ProviderHalfOpen,
            generation: 0,
            reason: format!(
                "cooldown of {} ms over: {} decides whether {} is healthy",
                p.breaker.cooldown_ms(),
                match p.breaker.config().probes {
                    1 => "a trial call".to_string(),
                    n => format!("{n} trial calls"),
                },
                p.name
            ),
        });
    }

    /// The breaker bookkeeping of one request to `p` that ended with `outcome`: success,
    /// failure, neutral, and the pause of a provider-wide wait.
    fn answered(&mut self, p: &Provider, outcome: &Outcome, now: u64) {
        match outcome {
            Outcome::Accepted { .. } => self.moved(p, p.breaker.success(), "a call succeeded"),
            Outcome::Rejected { .. } => {
                self.moved(p, p.breaker.success(), "the provider answered");
            }
            Outcome::Retry {
                breaker, reason, ..
            } => {
                if *breaker {
                    self.moved(p, p.breaker.failure(now), reason);
                } else {
                    p.breaker.neutral();
                }
                if let Some(ms) = verdict::pause_ms(outcome) {
                    self.paused(p, now, ms, reason);
                }
            }
            Outcome::ProviderFailure { reason } => {
                self.moved(p, p.breaker.failure(now), reason);
            }
        }
    }

    /// Pauses `p` for `ms` after it announced a provider-wide wait, and reports it (once
    /// per extension: deliveries in flight that meet the same limit add nothing).
    fn paused(&mut self, p: &Provider, now: u64, ms: u64, reason: &str) {
        let until = now.saturating_add(ms);
        if !p.pause_until(until) {
            return;
        }
        tracing::warn!(provider = %p.name, pause_ms = ms, %reason, "provider paused: no calls to it until its limit resets");
        self.events.push(BreakerEvent {
            provider: p.name.clone(),
            kind: EventKind::ProviderPaused,
            generation: 0,
            reason: format!(
                "{reason}: no calls to {} for {ms} ms (until {until})",
                p.name
            ),
        });
    }

    /// Logs a breaker that opened or closed and keeps it (and its event, with `reason`)
    /// for the completion.
    fn moved(&mut self, p: &Provider, moved: Option<Transition>, reason: &str) {
        let Some(t) = moved else { return };
        let cooldown_ms = p.breaker.config().cooldown_after(t.trips);
        let probes = p.breaker.config().probes;
        let (kind, detail) = match t.opened_at {
            Some(_) => {
                tracing::warn!(
                    provider = %p.name,
                    cooldown_ms,
                    %reason,
                    "circuit breaker open: the route's next provider takes over until a trial call succeeds"
                );
                (
                    EventKind::ProviderOpened,
                    format!(
                        "{reason} (calls paused for {cooldown_ms} ms, then {})",
                        match probes {
                            1 => "one trial call".to_string(),
                            n => format!("{n} trial calls"),
                        }
                    ),
                )
            }
            None => {
                tracing::info!(provider = %p.name, "circuit breaker closed: the provider is healthy again");
                (
                    EventKind::ProviderClosed,
                    format!("{reason}: the provider is healthy again"),
                )
            }
        };
        self.records.push((
            p.name.clone(),
            BreakerRecord {
                plugin: p.plugin.clone(),
                generation: t.generation,
                opened_at: t.opened_at,
                trips: t.trips,
            },
        ));
        self.events.push(BreakerEvent {
            provider: p.name.clone(),
            kind,
            generation: t.generation,
            reason: detail,
        });
    }
}

/// A delivery slot (the claim asked for no more messages than there were free slots, so
/// this rarely waits); `None` once the semaphore is closed (never, in practice).
async fn slot(slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    match Arc::clone(slots).try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => Arc::clone(slots).acquire_owned().await.ok(),
    }
}

/// Bumps `p`'s counter for one message's outcome.
fn count(p: &Provider, outcome: &Outcome, message_id: &str) {
    match outcome {
        Outcome::Accepted { .. } => Counters::bump(&p.counters.accepted),
        Outcome::Rejected { .. } => Counters::bump(&p.counters.rejected),
        Outcome::Retry { .. } => Counters::bump(&p.counters.retries),
        Outcome::ProviderFailure { reason } => {
            Counters::bump(&p.counters.failures);
            tracing::warn!(provider = %p.name, %message_id, %reason, "provider failure; trying the next provider of the route");
        }
    }
}

/// What the plugin is handed for a claimed message.
fn delivery_of(c: &Claimed, now: u64) -> Delivery {
    Delivery {
        message: Message {
            id: id_string(&c.id),
            to: c.record.to.clone(),
            content: c.record.content.clone(),
            tags: c.record.tags.clone(),
            created_at: c.record.created_at,
        },
        attempt: c.record.attempt,
        now,
    }
}

/// A plugin call: inline for plugins whose manifest says their calls never block (pure
/// computation, microseconds — a thread handoff would cost more than the call), on the
/// blocking pool for the others.
async fn on_plugin<T: Send + 'static>(
    p: &Arc<Provider>,
    f: impl FnOnce(&Provider) -> Result<T, CallError> + Send + 'static,
) -> Result<T, CallError> {
    if !p.manifest.blocking {
        return f(p);
    }
    let p = Arc::clone(p);
    tokio::task::spawn_blocking(move || f(&p))
        .await
        .unwrap_or_else(|e| {
            Err(CallError {
                kind: CallErrorKind::Panic,
                message: format!("plugin call aborted: {e}"),
            })
        })
}

/// Runs one provider's sans-IO exchange to its outcome.
pub async fn exchange(
    transports: &Transports,
    p: &Arc<Provider>,
    delivery: &Arc<Delivery>,
) -> Outcome {
    let d = Arc::clone(delivery);
    let mut step = on_plugin(p, move |p| p.instance.begin(&d)).await;
    for _ in 0..MAX_STEPS {
        match step {
            Err(e) => return plugin_error(p, e),
            Ok(Step::Done { outcome }) => return outcome,
            Ok(Step::DoneBatch { .. }) => {
                return plugin_error(
                    p,
                    CallError {
                        kind: CallErrorKind::BadInput,
                        message: "the plugin ended a single delivery with batch outcomes".into(),
                    },
                );
            }
            Ok(Step::Call { request, state }) => {
                let response = transports
                    .perform(request, &p.allowed_hosts, p.timeout_ms)
                    .await;
                let input = ResumeInput {
                    delivery: (**delivery).clone(),
                    state,
                    response,
                };
                step = on_plugin(p, move |p| p.instance.resume(&input)).await;
            }
        }
    }
    Outcome::ProviderFailure {
        reason: format!(
            "plugin {} did not finish within {MAX_STEPS} requests",
            p.plugin
        ),
    }
}

fn plugin_error(p: &Provider, e: CallError) -> Outcome {
    tracing::error!(provider = %p.name, plugin = %p.plugin, kind = ?e.kind, message = %e.message, "plugin call failed");
    match e.kind {
        // A panic may be specific to this message or transient: retry later, and let the
        // breaker count it.
        CallErrorKind::Panic => Outcome::Retry {
            after_ms: None,
            reason: e.message,
            breaker: true,
        },
        _ => Outcome::ProviderFailure {
            reason: format!("plugin error ({:?}): {}", e.kind, e.message),
        },
    }
}
