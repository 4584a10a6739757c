//! Prometheus metrics for the admin listener's `/metrics`.
//!
//! Three sources, each where it is exact and cheap:
//! - **The durable event log** (a follower like any subscriber, never slowing the
//!   committer): messages accepted, sent, delivered, failed, retried, delayed per provider
//!   and channel; accept → sent (the message id is a ULID stamped at accept) and
//!   sent → delivered latency. Counted from the daemon's start; an event is counted once,
//!   after it is durable, so the counters equal what subscribers see.
//! - **Measured on the hot path without locks** ([`LatencyHistogram`]: atomic buckets):
//!   accept latency in `ipc`, provider call latency in `dispatch` (held in each
//!   provider's `Counters`, so it survives a reload).
//! - **Read at scrape time**: queue depth per state (`Store::counts`), breaker state per
//!   provider (`Routing`), open streams.
//!
//! Owns: metric names, labels and buckets. Must not: block a writer or a delivery.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use herald_plugin_api::{Event, EventKind, State, UnixMillis};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::breaker::BreakerState;
use crate::commit::Committer;
use crate::events::{self, Sink, Start};
use crate::live::LiveCell;
use crate::reads::Reads;
use crate::store::{Store, parse_id};

/// Latency buckets, seconds: 0.5 ms … 60 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// accept → sent and sent → delivered: 1 ms … 1 day (provider receipts take minutes).
const DELIVERY_BUCKETS: [f64; 14] = [
    0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21_600.0, 86_400.0,
];
/// Sent times remembered for sent → delivered; the oldest are forgotten beyond this.
const MAX_IN_FLIGHT_SENT: usize = 100_000;

/// A histogram with atomic buckets: `observe` takes no lock, so it may sit on the accept
/// and delivery paths.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        // The count is the sum of the buckets read, so a scrape racing an observation
        // stays self-consistent.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A histogram read from a shared `Arc` (one per provider, registered at scrape time).
#[derive(Debug, Clone)]
struct Shared(Arc<LatencyHistogram>);

impl EncodeMetric for Shared {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

type Labels = Vec<(&'static str, String)>;

/// The counters the event follower keeps.
#[derive(Debug)]
struct FromEvents {
    accepted: Family<Labels, Counter>,
    sent: Family<Labels, Counter>,
    delivered: Family<Labels, Counter>,
    failed: Family<Labels, Counter>,
    retried: Family<Labels, Counter>,
    delayed: Family<Labels, Counter>,
    inbound: Family<Labels, Counter>,
    breaker_transitions: Family<Labels, Counter>,
    events: Counter,
    accept_to_sent: Family<Labels, Histogram, fn() -> Histogram>,
    sent_to_delivered: Family<Labels, Histogram, fn() -> Histogram>,
    /// message id → when its `sent` event happened, until delivered (bounded).
    sent_at: Mutex<(HashMap<String, UnixMillis>, VecDeque<String>)>,
    /// The last seq counted.
    seq: AtomicU64,
}

fn delivery_histogram() -> Histogram {
    Histogram::new(DELIVERY_BUCKETS)
}

impl FromEvents {
    fn new() -> FromEvents {
        FromEvents {
            accepted: Family::default(),
            sent: Family::default(),
            delivered: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            delayed: Family::default(),
            inbound: Family::default(),
            breaker_transitions: Family::default(),
            events: Counter::default(),
            accept_to_sent: Family::new_with_constructor(delivery_histogram),
            sent_to_delivered: Family::new_with_constructor(delivery_histogram),
            sent_at: Mutex::default(),
            seq: AtomicU64::new(0),
        }
    }

    fn sent_times(
        &self,
    ) -> std::sync::MutexGuard<'_, (HashMap<String, UnixMillis>, VecDeque<String>)> {
        self.sent_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, e: &Event) {
        self.events.inc();
        self.seq.store(e.seq, Ordering::Relaxed);
        let channel = e
            .channel
            .map(|c| c.as_str().to_string())
            .unwrap_or_default();
        let provider = e.provider.clone().unwrap_or_default();
        let both: Labels = vec![("provider", provider.clone()), ("channel", channel.clone())];
        match e.kind {
            // An accept is the only `queued` event without a detail (requeue and recovery
            // say why they queue again); a send to a suppressed recipient ends at once.
            EventKind::Queued if e.detail.is_none() => {
                self.accepted
                    .get_or_create(&vec![("channel", channel)])
                    .inc();
            }
            EventKind::Suppressed => {
                self.accepted
                    .get_or_create(&vec![("channel", channel)])
                    .inc();
            }
            EventKind::Sent => {
                self.sent.get_or_create(&both).inc();
                let accepted_at = e
                    .message_id
                    .as_deref()
                    .and_then(parse_id)
                    .map(|id| ulid::Ulid::from_bytes(id).timestamp_ms());
                if let Some(at) = accepted_at {
                    self.accept_to_sent
                        .get_or_create(&both)
                        .observe(e.at.saturating_sub(at) as f64 / 1000.0);
                }
                if let Some(id) = &e.message_id {
                    let mut guard = self.sent_times();
                    let (map, order) = &mut *guard;
                    if map.insert(id.clone(), e.at).is_none() {
                        order.push_back(id.clone());
                    }
                    while order.len() > MAX_IN_FLIGHT_SENT {
                        if let Some(old) = order.pop_front() {
                            map.remove(&old);
                        }
                    }
                }
            }
            EventKind::Delivered => {
                self.delivered.get_or_create(&both).inc();
                let sent = e
                    .message_id
                    .as_ref()
                    .and_then(|id| self.sent_times().0.remove(id));
                if let Some(at) = sent {
                    self.sent_to_delivered
                        .get_or_create(&both)
                        .observe(e.at.saturating_sub(at) as f64 / 1000.0);
                }
            }
            EventKind::Failed
            | EventKind::Bounced
            | EventKind::Complained
            | EventKind::Dead
            | EventKind::Expired => {
                let mut labels = both;
                labels.push(("state", e.kind.as_str().to_string()));
                self.failed.get_or_create(&labels).inc();
                if let Some(id) = &e.message_id {
                    self.sent_times().0.remove(id);
                }
            }
            EventKind::Deferred => {
                self.retried.get_or_create(&both).inc();
            }
            EventKind::Delayed => {
                self.delayed.get_or_create(&both).inc();
            }
            EventKind::Inbound => {
                self.inbound.get_or_create(&both).inc();
            }
            EventKind::ProviderOpened | EventKind::ProviderHalfOpen | EventKind::ProviderClosed => {
                self.breaker_transitions
                    .get_or_create(&vec![
                        ("provider", provider),
                        (
                            "to",
                            e.kind.as_str().trim_start_matches("provider_").to_string(),
                        ),
                    ])
                    .inc();
            }
            _ => {}
        }
    }
}

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    /// `send` / `send_batch` request decoded → answered (so: durable), per message.
    pub accept_latency: Arc<LatencyHistogram>,
    /// Open `/v1/events` streams.
    pub streams: AtomicU64,
    /// Streams closed because the client stopped reading.
    pub streams_stalled: AtomicU64,
    from_events: FromEvents,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            accept_latency: Arc::default(),
            streams: AtomicU64::new(0),
            streams_stalled: AtomicU64::new(0),
            from_events: FromEvents::new(),
        }
    }
}

/// The metrics follower's sink: counts every event, never refuses one.
struct Count<'a>(&'a FromEvents);

impl Sink for Count<'_> {
    async fn deliver(&mut self, event: &Event) -> bool {
        self.0.count(event);
        true
    }
}

impl Metrics {
    /// Counts every event that becomes durable from now on, until the committer stops.
    pub async fn follow(self: Arc<Self>, reads: Reads, committer: Committer) {
        let start = Start::now(reads.store().as_ref(), &committer);
        let mut next = start.cursor(None);
        let mut sink = Count(&self.from_events);
        let mut start = Some(start);
        loop {
            let from = start
                .take()
                .unwrap_or_else(|| Start::now(reads.store().as_ref(), &committer));
            match events::follow(from, &mut next, &reads, &committer, |_| true, &mut sink).await {
                // A log read failed: count on from where it stopped, later.
                events::End::LogError => {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await
                }
                events::End::Sink | events::End::Closed => return,
            }
        }
    }

    /// The last event seq the counters include.
    pub fn counted_seq(&self) -> u64 {
        self.from_events.seq.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition, as of now.
    pub fn render(&self, store: &dyn Store, live: &LiveCell, now: UnixMillis) -> String {
        let mut r = Registry::with_prefix("herald");
        let f = &self.from_events;
        r.register(
            "messages_accepted",
            "Messages accepted (durably queued) since the daemon started",
            f.accepted.clone(),
        );
        r.register(
            "messages_sent",
            "Messages a provider accepted",
            f.sent.clone(),
        );
        r.register(
            "messages_delivered",
            "Messages a provider reports delivered",
            f.delivered.clone(),
        );
        r.register(
            "messages_failed",
            "Messages that ended undelivered, by final state",
            f.failed.clone(),
        );
        r.register(
            "messages_retried",
            "Delivery attempts deferred for a retry",
            f.retried.clone(),
        );
        r.register(
            "messages_delayed",
            "Provider reports of a delayed delivery",
            f.delayed.clone(),
        );
        r.register("inbound", "Replies received", f.inbound.clone());
        r.register(
            "breaker_transitions",
            "Circuit breaker transitions",
            f.breaker_transitions.clone(),
        );
        r.register("events", "Events counted", f.events.clone());
        r.register_with_unit(
            "accept_to_sent",
            "From accept to the provider's acceptance",
            Unit::Seconds,
            f.accept_to_sent.clone(),
        );
        r.register_with_unit(
            "sent_to_delivered",
            "From the provider's acceptance to its delivery report",
            Unit::Seconds,
            f.sent_to_delivered.clone(),
        );

        let counts = store.counts();
        let queue: Family<Labels, Gauge> = Family::default();
        for s in State::ALL {
            queue
                .get_or_create(&vec![("state", s.as_str().to_string())])
                .set(counts.get(s) as i64);
        }
        r.register("messages", "Messages stored, by state", queue);

        let current = live.current();
        let breaker: Family<Labels, Gauge> = Family::default();
        for p in current.routing.providers.values() {
            let state = p.breaker.state(now);
            for s in [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen,
            ] {
                breaker
                    .get_or_create(&vec![
                        ("provider", p.name.clone()),
                        ("state", s.as_str().to_string()),
                    ])
                    .set(i64::from(state == s));
            }
        }
        r.register(
            "breaker_state",
            "Circuit breaker state per provider (1 = in this state)",
            breaker,
        );
        r.register_with_unit(
            "provider_call",
            "One provider exchange (every request of it), start to outcome",
            Unit::Seconds,
            ProviderCalls(
                current
                    .routing
                    .providers
                    .values()
                    .map(|p| (p.name.clone(), Arc::clone(&p.counters.call_latency)))
                    .collect(),
            ),
        );
        r.register_with_unit(
            "accept",
            "A send request decoded to its durable acknowledgement, per message",
            Unit::Seconds,
            Shared(Arc::clone(&self.accept_latency)),
        );
        let open: Gauge = Gauge::default();
        open.set(self.streams.load(Ordering::Relaxed) as i64);
        r.register("streams_open", "Open /v1/events streams", open);
        let stalled: Counter = Counter::default();
        stalled.inc_by(self.streams_stalled.load(Ordering::Relaxed));
        r.register(
            "streams_stalled",
            "Streams closed because the client stopped reading",
            stalled,
        );
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for scrapers that do
/// not ask for OpenMetrics (`promtool check metrics`, `curl`): counter families are named
/// with their `_total` samples, and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Per-provider call latency histograms as one family.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let om = "# HELP a_sent Sent.\n# TYPE a_sent counter\na_sent_total{p=\"x\"} 3\n\
                  # HELP a_lat Latency.\n# TYPE a_lat histogram\n# UNIT a_lat seconds\na_lat_count 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_sent_total Sent.\n# TYPE a_sent_total counter\na_sent_total{p=\"x\"} 3\n\
             # HELP a_lat Latency.\n# TYPE a_lat histogram\na_lat_count 1\n"
        );
    }

    #[test]
    fn the_atomic_histogram_counts_into_buckets() {
        let h = LatencyHistogram::default();
        h.observe(std::time::Duration::from_micros(300));
        h.observe(std::time::Duration::from_secs(100));
        let mut r = Registry::default();
        r.register_with_unit("x", "X", Unit::Seconds, Shared(Arc::new(h)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(out.contains("x_seconds_count 2"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.0005\"} 1"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 2"), "{out}");
    }
}

#[derive(Debug)]
struct ProviderCalls(Vec<(String, Arc<LatencyHistogram>)>);

impl EncodeMetric for ProviderCalls {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (name, h) in &self.0 {
            let labels = [("provider", name.as_str())];
            h.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
