//! Batch requests: after a claim, messages whose route starts (this attempt) at a provider
//! that sends batches are grouped — same channel, same start in the route, same batch key
//! from the plugin — into chunks of at most the provider's batch size; each chunk goes to
//! the plugin's batch exchange as one request.
//!
//! A batch request is one request in every provider-wide account: one rate-limit token, one
//! `max_in_flight` place, one breaker answer (the worst of its outcomes), one pause. Each
//! message then goes on as it would alone: its own outcome, its own verdict and completion
//! (attempts, retries, fallback to the route's next provider after a provider failure).
//! When the provider cannot be called (paused, breaker open, gone after a reload) every
//! message of the batch runs its route alone instead.
//!
//! Owns: grouping and the batch exchange. Must not: decide outcomes (that is `verdict`) or
//! touch storage except through the completions `super` commits.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::join_all;
use herald_plugin_api::abi::{BatchResumeInput, CallError, CallErrorKind};
use herald_plugin_api::{Channel, Delivery, Message, Outcome, Step};
use herald_protocol::Lane;
use tokio::sync::OwnedSemaphorePermit;

use super::verdict::{self, Tried, TryResult};
use super::{Dispatcher, MAX_STEPS, Moves, count, delivery_of, on_plugin, plugin_error};
use crate::breaker::Admission;
use crate::clock;
use crate::live::Live;
use crate::providers::Provider;
use crate::store::Claimed;
use crate::transport::Transports;

/// Messages that go to one provider in one request.
#[derive(Debug)]
pub(super) struct Batch {
    channel: Channel,
    /// Where in the channel's route the messages start (the batching provider).
    start: usize,
    pub(super) items: Vec<Claimed>,
}

/// Splits a claim into messages that go alone and batches (each of at least two messages).
pub(super) async fn group(live: &Live, claimed: Vec<Claimed>) -> (Vec<Claimed>, Vec<Batch>) {
    let mut singles = Vec::new();
    // (channel, start) → the messages whose route starts at that batching provider.
    let mut candidates: BTreeMap<(Channel, usize), Vec<Claimed>> = BTreeMap::new();
    for c in claimed {
        let channel = c.record.channel();
        let Some(route) = live.routing.routes.get(&channel) else {
            singles.push(c);
            continue;
        };
        let failover: Vec<Option<u32>> = route.iter().map(|p| p.failover_after).collect();
        let start = verdict::failover_start(&failover, c.record.attempt);
        match route.get(start) {
            Some(p) if p.batch_max.is_some() => {
                candidates.entry((channel, start)).or_default().push(c);
            }
            _ => singles.push(c),
        }
    }
    let mut batches = Vec::new();
    for ((channel, start), items) in candidates {
        let Some(p) = live.routing.routes.get(&channel).and_then(|r| r.get(start)) else {
            singles.extend(items);
            continue;
        };
        let max = p.batch_max.unwrap_or(1).max(1);
        if items.len() < 2 {
            singles.extend(items);
            continue;
        }
        let now = clock::now_ms();
        let messages: Vec<Message> = items.iter().map(|c| delivery_of(c, now).message).collect();
        let keys = on_plugin(p, move |p| p.instance.batch_keys(&messages)).await;
        let keys = match keys {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(provider = %p.name, kind = ?e.kind, message = %e.message, "the plugin could not say which messages share a batch; sending them alone");
                singles.extend(items);
                continue;
            }
        };
        // Equal keys share requests, in claim order.
        let mut by_key: BTreeMap<String, Vec<Claimed>> = BTreeMap::new();
        for (c, key) in items.into_iter().zip(keys) {
            match key {
                Some(k) => by_key.entry(k).or_default().push(c),
                None => singles.push(c),
            }
        }
        for (_, mut group) in by_key {
            while !group.is_empty() {
                let rest = group.split_off(group.len().min(max));
                let chunk = std::mem::replace(&mut group, rest);
                if chunk.len() < 2 {
                    singles.extend(chunk);
                } else {
                    batches.push(Batch {
                        channel,
                        start,
                        items: chunk,
                    });
                }
            }
        }
    }
    (singles, batches)
}

/// Which of a batch's outcomes speaks for the request in the provider-wide accounts: a
/// provider failure, else a health-counting retry, else a provider-wide wait, else the
/// first (success).
fn request_outcome(outcomes: &[Outcome]) -> Option<&Outcome> {
    let rank = |o: &Outcome| match o {
        Outcome::ProviderFailure { .. } => 3,
        Outcome::Retry { breaker: true, .. } => 2,
        Outcome::Retry { .. } if verdict::pause_ms(o).is_some() => 1,
        _ => 0,
    };
    // `max_by_key` keeps the last of equals; the first reads better in the breaker's reason.
    outcomes.iter().rev().max_by_key(|o| rank(o))
}

impl Dispatcher {
    /// Sends `b` as one request to its provider, then settles each message as it would
    /// alone. Holds one delivery slot per message until all are committed.
    pub(super) async fn deliver_batch(
        self: Arc<Self>,
        b: Batch,
        _slots: Vec<OwnedSemaphorePermit>,
    ) {
        let live = self.live.current();
        let route = live
            .routing
            .routes
            .get(&b.channel)
            .cloned()
            .unwrap_or_default();
        let Some(p) = route.get(b.start).filter(|p| p.batch_max.is_some()) else {
            // A reload changed the route between the claim and now.
            return self.alone(b.items).await;
        };
        let now = clock::now_ms();
        if p.paused_until(now).is_some() {
            return self.alone(b.items).await;
        }
        let admission = p.breaker.admission(now);
        if admission == Admission::Refused {
            return self.alone(b.items).await;
        }
        let mut breakers = Moves::default();
        let (deliveries, outcomes) = {
            if let Some(rate) = &p.rate {
                // The batch's most urgent lane: a critical message does not wait behind
                // the others for a token.
                let lane = b
                    .items
                    .iter()
                    .map(|c| c.record.lane)
                    .min_by_key(|l| match l {
                        Lane::Critical => 0,
                        Lane::Normal => 1,
                        Lane::Bulk => 2,
                    })
                    .unwrap_or_default();
                rate.acquire(lane).await;
            }
            let place = match &p.in_flight {
                Some((_, places)) => Arc::clone(places).acquire_owned().await.ok(),
                None => None,
            };
            if p.paused_until(clock::now_ms()).is_some() {
                if matches!(admission, Admission::Trial { .. }) {
                    p.breaker.neutral();
                }
                drop(place);
                return self.alone(b.items).await;
            }
            // Another daemon makes this trial call: the messages go alone, and meet the
            // breaker this daemon now holds shut.
            if !self.wins_trial(p, admission).await {
                drop(place);
                return self.alone(b.items).await;
            }
            if matches!(admission, Admission::Trial { .. }) {
                breakers.half_open(p);
            }
            let now = clock::now_ms();
            let deliveries: Vec<Delivery> = b.items.iter().map(|c| delivery_of(c, now)).collect();
            let started = clock::instant();
            let outcomes = exchange_batch(&self.transports, p, deliveries.clone()).await;
            p.counters.call_latency.observe(started.elapsed());
            drop(place);
            (deliveries, outcomes)
        };
        if let Some(o) = request_outcome(&outcomes) {
            breakers.answered(p, o, clock::now_ms());
        }
        tracing::debug!(provider = %p.name, messages = deliveries.len(), "batch request answered");
        // The breaker moves are stored once, with the first message's completion.
        let mut moves = Some(breakers);
        let start = b.start;
        let settle =
            b.items
                .into_iter()
                .zip(deliveries)
                .zip(outcomes)
                .map(|((c, delivery), outcome)| {
                    let moves = moves.take().unwrap_or_default();
                    let route = &route;
                    let lane = c.record.lane;
                    let live = &live;
                    let this = &self;
                    async move {
                        let mut moves = moves;
                        count(p, &outcome, &delivery.message.id);
                        let go_on = verdict::next_provider(&outcome);
                        let mut run = vec![Tried {
                            provider: p.name.clone(),
                            webhooks: p.manifest.webhooks,
                            result: TryResult::Called(outcome),
                        }];
                        if go_on {
                            let delivery = Arc::new(delivery);
                            this.try_route(route, start, 1, lane, &delivery, &mut run, &mut moves)
                                .await;
                        }
                        this.finish(c, live, &run, moves).await;
                    }
                });
        join_all(settle).await;
    }

    /// Runs each message of a batch that cannot go as one through its route alone.
    async fn alone(&self, items: Vec<Claimed>) {
        join_all(items.into_iter().map(|c| self.deliver_one(c))).await;
    }
}

/// Runs a provider's batch exchange to one outcome per delivery, in order.
async fn exchange_batch(
    transports: &Transports,
    p: &Arc<Provider>,
    deliveries: Vec<Delivery>,
) -> Vec<Outcome> {
    let n = deliveries.len();
    let deliveries = Arc::new(deliveries);
    let all = |o: Outcome| vec![o; n];
    let d = Arc::clone(&deliveries);
    let mut step = on_plugin(p, move |p| p.instance.begin_batch(&d)).await;
    for _ in 0..MAX_STEPS {
        match step {
            Err(e) => return all(plugin_error(p, e)),
            Ok(Step::Done { outcome }) => return all(outcome),
            Ok(Step::DoneBatch { outcomes }) if outcomes.len() == n => return outcomes,
            Ok(Step::DoneBatch { outcomes }) => {
                // The request may have gone out: retry every message (the provider's
                // idempotency key, where it has one, dedupes the ones it took).
                return all(plugin_error(
                    p,
                    CallError {
                        kind: CallErrorKind::Panic,
                        message: format!(
                            "the plugin returned {} outcomes for a batch of {n}",
                            outcomes.len()
                        ),
                    },
                ));
            }
            Ok(Step::Call { request, state }) => {
                let response = transports
                    .perform(request, &p.allowed_hosts, p.timeout_ms)
                    .await;
                let input = BatchResumeInput {
                    deliveries: (*deliveries).clone(),
                    state,
                    response,
                };
                step = on_plugin(p, move |p| p.instance.resume_batch(&input)).await;
            }
        }
    }
    all(Outcome::ProviderFailure {
        reason: format!(
            "plugin {} did not finish a batch within {MAX_STEPS} requests",
            p.plugin
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::request_outcome;
    use herald_plugin_api::Outcome;

    #[test]
    fn the_worst_outcome_speaks_for_the_request() {
        let ok = Outcome::Accepted {
            provider_message_id: None,
            delivered: false,
        };
        let pause = Outcome::Retry {
            after_ms: Some(1000),
            reason: "429".into(),
            breaker: false,
        };
        let down = Outcome::retry("500");
        let gone = Outcome::provider_failure("401");
        assert_eq!(request_outcome(&[]), None);
        assert_eq!(
            request_outcome(&[ok.clone(), Outcome::rejected("bad")]),
            Some(&ok)
        );
        assert_eq!(
            request_outcome(&[ok.clone(), pause.clone(), ok.clone()]),
            Some(&pause)
        );
        assert_eq!(
            request_outcome(&[pause.clone(), down.clone(), ok.clone()]),
            Some(&down)
        );
        assert_eq!(request_outcome(&[down, gone.clone(), pause]), Some(&gone));
    }
}
