//! The `streams` scenario: the end-to-end run again, with `S` WebSocket subscribers on
//! `GET /v1/events`, each with a token scoped to its own tag; message `i` carries the tag of
//! subscriber `i mod S`. Measures delivery throughput against the same run without
//! subscribers (the `e2e` scenario), and event latency at the subscriber: the event's `at`
//! (stamped by the daemon when it committed it) → the frame received (both the machine's
//! wall clock; millisecond resolution).
//!
//! Delivery rates of one run vary by several percent from run to run on a shared machine,
//! so the scenario runs `rounds` pairs — a run without subscribers, then one with them —
//! and reports the median of the pairs' ratios (each pair ran back to back, under the same
//! conditions); rates are the medians of their runs, latencies those of every run.
//!
//! Correctness, recorded as problems: every message delivered exactly once (as in e2e), and
//! every subscriber receiving exactly the `queued`, `sending`, `sent` events of its own
//! messages — nothing of another's tag.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use herald_protocol::SendMessage;
use serde::Serialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::daemon::DaemonSettings;
use crate::load;
use crate::mock::{self, Settings};
use crate::scenarios::{Ctx, Delivery, EndToEnd, Percentiles, daemons_cpu_secs};

/// Subscribers of one run (set before the messages are made).
static SUBSCRIBERS: AtomicU64 = AtomicU64::new(1);

/// Message `i`, tagged for subscriber `i mod S`.
fn tagged(i: u64) -> SendMessage {
    let s = SUBSCRIBERS.load(Ordering::Relaxed).max(1);
    let mut m = load::message(i);
    m.tags.push(format!("sub:{}", i % s));
    m
}

#[derive(Debug, Clone, Serialize)]
pub struct Streams {
    pub subscribers: usize,
    pub n: u64,
    /// Pairs of runs (without, then with subscribers).
    pub rounds: usize,
    /// First send → the mock's 200 for the last message, as in e2e (the median run).
    pub secs: f64,
    /// Median delivery rate of the runs with subscribers.
    pub per_sec: f64,
    /// Median rate of the runs without subscribers (the e2e scenario).
    pub baseline_per_sec: f64,
    /// Median of the pairs' ratios (with ÷ without subscribers).
    pub ratio: f64,
    /// Each pair's ratio, in the order run.
    pub ratios: Vec<f64>,
    /// The daemon's CPU per delivered message (µs), medians of the runs without and with
    /// subscribers, and what the difference comes to per event frame sent.
    pub daemon_cpu_us_without: f64,
    pub daemon_cpu_us_with: f64,
    pub daemon_cpu_us_per_frame: f64,
    /// Event `at` → frame received by the subscriber.
    pub event_latency: Percentiles,
    pub events_received: u64,
    pub events_expected: u64,
    /// Events a subscriber received that were not of its tag (must be 0).
    pub foreign_events: u64,
    pub delivery: Delivery,
}

/// A subscriber's WebSocket settings. tungstenite's default read buffer (128 KiB) is zeroed
/// before every read: with one small frame per read, that memset was most of a subscriber's
/// CPU — the bench's own cost, charged to delivery on the same cores, which a browser does not
/// have. Event frames are a few hundred bytes.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// The fields of an event frame the subscriber checks.
#[derive(serde::Deserialize)]
struct Seen<'a> {
    at: u64,
    #[serde(borrow)]
    tags: Vec<&'a str>,
}

struct Received {
    latencies_us: Vec<u64>,
    count: u64,
    foreign: u64,
}

/// One run with subscribers.
struct Run {
    secs: f64,
    per_sec: f64,
    /// Daemon CPU per delivered message, µs, until every subscriber had its events.
    daemon_cpu_us: f64,
    latencies_us: Vec<u64>,
    events_received: u64,
    events_expected: u64,
    foreign: u64,
    delivery: Delivery,
}

/// The median of a non-empty list (the lower middle of an even one).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

impl Ctx {
    /// `rounds` pairs of runs, each a run without subscribers (the e2e scenario's) right
    /// before one with them.
    pub async fn streams(&mut self, subscribers: usize, rounds: usize) -> Result<Streams> {
        let mut pairs: Vec<(EndToEnd, Run)> = Vec::with_capacity(rounds);
        for _ in 0..rounds.max(1) {
            let without = self.e2e("streams-baseline", Settings::default()).await?;
            let with = self.streams_once(subscribers).await?;
            pairs.push((without, with));
        }
        let ratios: Vec<f64> = pairs
            .iter()
            .map(|(without, with)| with.per_sec / without.per_sec)
            .collect();
        // The run whose rate is the median one speaks for the rest.
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by(|&a, &b| pairs[a].1.per_sec.total_cmp(&pairs[b].1.per_sec));
        let middle = order[(order.len() - 1) / 2];
        let per_sec = pairs[middle].1.per_sec;
        let baseline_per_sec = median(pairs.iter().map(|(b, _)| b.per_sec).collect());
        let ratio = median(ratios.clone());
        let daemon_cpu_us_without = median(
            pairs
                .iter()
                .map(|(b, _)| b.daemon_cpu_us_per_message)
                .collect(),
        );
        let daemon_cpu_us_with = median(pairs.iter().map(|(_, w)| w.daemon_cpu_us).collect());
        let events_received = pairs.iter().map(|(_, w)| w.events_received).sum();
        let events_expected = pairs.iter().map(|(_, w)| w.events_expected).sum();
        let foreign_events = pairs.iter().map(|(_, w)| w.foreign).sum();
        let latencies: Vec<u64> = pairs
            .iter_mut()
            .flat_map(|(_, w)| std::mem::take(&mut w.latencies_us))
            .collect();
        let (_, middle) = pairs.swap_remove(middle);
        Ok(Streams {
            subscribers,
            n: self.params.n,
            rounds: ratios.len(),
            secs: middle.secs,
            per_sec,
            baseline_per_sec,
            ratio,
            ratios,
            daemon_cpu_us_without,
            daemon_cpu_us_with,
            // queued, sending, sent: three frames per message.
            daemon_cpu_us_per_frame: (daemon_cpu_us_with - daemon_cpu_us_without) / 3.0,
            event_latency: Percentiles::of(latencies),
            events_received,
            events_expected,
            foreign_events,
            delivery: middle.delivery,
        })
    }

    /// One run with `subscribers` WebSocket subscribers.
    async fn streams_once(&mut self, subscribers: usize) -> Result<Run> {
        let p = self.params.clone();
        SUBSCRIBERS.store(subscribers as u64, Ordering::Relaxed);
        self.mock_mode(Settings::default()).await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let settings = DaemonSettings {
            http_port: Some(port),
            ..p.daemon.clone()
        };
        let mut d = self.daemon_with(&settings).await?;
        let clients = load::connect(&d.socket, p.connections, p.request_timeout).await?;
        eprintln!(
            "herald-bench: streams: {subscribers} WebSocket subscribers, each scoped to its own tag"
        );
        let (stop_tx, stop) = watch::channel(false);
        let counted = Arc::new(AtomicU64::new(0));
        let mut subs = Vec::with_capacity(subscribers);
        for i in 0..subscribers {
            let (token, _) = load::timed(
                p.request_timeout,
                clients[i % clients.len()].mint_token(
                    vec![format!("sub:{i}")],
                    vec![],
                    false,
                    Some(3_600_000),
                ),
            )
            .await
            .context("minting a stream token")?;
            let url = format!("ws://127.0.0.1:{port}/v1/events?token={token}");
            let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
                url.as_str(),
                Some(ws_config()),
                false,
            )
            .await
            .with_context(|| format!("subscriber {i} could not connect"))?;
            let mut stop = stop.clone();
            let counted = Arc::clone(&counted);
            let tag = format!("sub:{i}");
            subs.push(tokio::spawn(async move {
                let mut r = Received {
                    latencies_us: Vec::new(),
                    count: 0,
                    foreign: 0,
                };
                loop {
                    let frame = tokio::select! {
                        f = ws.next() => f,
                        _ = stop.wait_for(|s| *s) => break,
                    };
                    let Some(Ok(Message::Text(text))) = frame else {
                        if matches!(frame, Some(Ok(_))) {
                            continue;
                        }
                        break;
                    };
                    let received_us = mock::unix_ns() / 1000;
                    // Only what is measured: a browser's work, not a benchmark of JSON.
                    let Ok(e) = serde_json::from_str::<Seen<'_>>(&text) else {
                        r.foreign += 1;
                        continue;
                    };
                    r.count += 1;
                    counted.fetch_add(1, Ordering::Relaxed);
                    if !e.tags.contains(&tag.as_str()) {
                        r.foreign += 1;
                    }
                    r.latencies_us.push(received_us.saturating_sub(e.at * 1000));
                }
                r
            }));
        }
        let cpu_before = daemons_cpu_secs(std::slice::from_ref(&d));
        let started_unix = mock::unix_ns();
        let run =
            load::closed_loop_of(&clients, p.n, p.pipeline, p.request_timeout, tagged).await?;
        self.failures("streams", &run.failures);
        let (delivery, reached) = self
            .verify(
                "streams",
                std::slice::from_mut(&mut d),
                &clients[0],
                &run.ids,
            )
            .await?;
        let secs = reached
            .map(|s| s.last_ok_unix_ns.saturating_sub(started_unix) as f64 / 1e9)
            .unwrap_or(f64::NAN);
        // queued, sending, sent for every message; let the streams catch up (a minute at
        // most), then stop them.
        let expected = run.ids.len() as u64 * 3;
        let waited = Instant::now();
        while counted.load(Ordering::Relaxed) < expected
            && waited.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cpu = daemons_cpu_secs(std::slice::from_ref(&d)) - cpu_before;
        let mut received = Vec::new();
        let _ = stop_tx.send(true);
        for h in subs {
            if let Ok(r) = h.await {
                received.push(r);
            }
        }
        let events_received: u64 = received.iter().map(|r| r.count).sum();
        let foreign: u64 = received.iter().map(|r| r.foreign).sum();
        let latencies: Vec<u64> = received.into_iter().flat_map(|r| r.latencies_us).collect();
        if events_received != expected {
            self.problem(
                "streams",
                format!("the subscribers received {events_received} events, expected {expected}"),
            );
        }
        if foreign > 0 {
            self.problem(
                "streams",
                format!("{foreign} events reached a subscriber outside its token's tag"),
            );
        }
        drop(clients);
        self.stop("streams", d).await;
        Ok(Run {
            secs,
            per_sec: delivery.delivered as f64 / secs,
            daemon_cpu_us: cpu * 1e6 / delivery.delivered.max(1) as f64,
            latencies_us: latencies,
            events_received,
            events_expected: expected,
            foreign,
            delivery,
        })
    }
}
