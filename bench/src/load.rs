//! Load generators on the daemon's real Unix socket, all with the Rust client (postcard
//! codec, pipelined):
//! - [`closed_loop`]: `connections` connections, each with `pipeline` requests always in
//!   flight (a new `send` as soon as one is acknowledged) — "as fast as possible";
//! - [`fill_batches`]: the same with `send_batch`, to build large queues quickly;
//! - [`open_loop`]: sends at a fixed rate regardless of answers (each send is its own task),
//!   so a slow answer never delays the next send.
//!
//! Every accepted id is returned, so the caller can check the mock saw each exactly once.
//! Every request has a time limit ([`timed`]): a request on a connection whose daemon
//! died can otherwise wait forever (the client has no deadline of its own), and the
//! benchmark must end by itself.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use herald_client::{Client, ClientError};
use herald_plugin_api::{Content, EmailContent};
use herald_protocol::{BatchItem, SendMessage};
use tokio::task::JoinSet;

/// Errors kept verbatim for the report.
const ERROR_SAMPLES: usize = 5;

/// A ~300-byte email: a wedding invitation, like a host application would send.
pub fn message(i: u64) -> SendMessage {
    SendMessage {
        to: format!("guest{i:07}@example.com"),
        content: Content::Email(EmailContent {
            from: Some("Ann & Bob <rsvp@wedding.example>".into()),
            subject: "You're invited: Ann & Bob, June 14".into(),
            text: Some(format!(
                "Dear guest {i}, we would love to celebrate with you on June 14 at the Old \
                 Mill, 4 pm. Dinner and dancing follow. Please reply YES or NO by May 1, and \
                 tell us about any dietary needs. Love, Ann & Bob"
            )),
            ..Default::default()
        }),
        tags: vec!["bench".into(), "invite".into()],
        idempotency_key: None,
        send_at: None,
        override_suppression: false,
        lane: Default::default(),
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum CallError {
    /// The daemon answered with an error, or the connection failed.
    Client(ClientError),
    /// No answer within the limit.
    Timeout(Duration),
}

impl CallError {
    /// The connection is gone: further requests on it cannot succeed.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            CallError::Timeout(_)
                | CallError::Client(ClientError::Closed | ClientError::Protocol(_))
        )
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Client(e) => e.fmt(f),
            CallError::Timeout(d) => write!(f, "no answer within {d:?}"),
        }
    }
}

impl std::error::Error for CallError {}

/// Runs one client request with a time limit.
pub async fn timed<T>(
    limit: Duration,
    request: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(limit, request).await {
        Ok(r) => r.map_err(CallError::Client),
        Err(_) => Err(CallError::Timeout(limit)),
    }
}

/// Connects one client (the handshake has a time limit too).
pub async fn connect_one(socket: &Path, limit: Duration) -> Result<Client> {
    timed(limit, Client::connect(socket))
        .await
        .with_context(|| format!("cannot connect to {}", socket.display()))
}

/// Connects `n` clients.
pub async fn connect(socket: &Path, n: usize, limit: Duration) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(connect_one(socket, limit).await?);
    }
    Ok(clients)
}

/// Sends that failed, counted, with a few examples.
#[derive(Debug, Default)]
pub struct Failures {
    pub count: u64,
    pub samples: Vec<String>,
}

impl Failures {
    fn add(&mut self, e: String) {
        self.count += 1;
        if self.samples.len() < ERROR_SAMPLES {
            self.samples.push(e);
        }
    }

    fn merge(&mut self, other: Failures) {
        self.count += other.count;
        for s in other.samples {
            if self.samples.len() < ERROR_SAMPLES {
                self.samples.push(s);
            }
        }
    }
}

/// The outcome of a closed-loop or batch run.
#[derive(Debug)]
pub struct Run {
    /// Ids of the acknowledged messages.
    pub ids: Vec<String>,
    /// Per request: acknowledged minus sent, in microseconds.
    pub latencies_us: Vec<u64>,
    /// When the first request was handed to the client.
    pub started: Instant,
    /// When the last acknowledgement arrived.
    pub finished: Instant,
    pub failures: Failures,
}

impl Run {
    /// Acknowledged messages per second.
    pub fn rate(&self) -> f64 {
        let secs = self.finished.duration_since(self.started).as_secs_f64();
        if secs > 0.0 {
            self.ids.len() as f64 / secs
        } else {
            0.0
        }
    }
}

/// `n` single `send`s with `pipeline` in flight on each of `clients`. A sender stops at
/// the first error that means its connection is gone.
pub async fn closed_loop(
    clients: &[Client],
    n: u64,
    pipeline: usize,
    limit: Duration,
) -> Result<Run> {
    closed_loop_of(clients, n, pipeline, limit, message).await
}

/// [`closed_loop`] with the `i`-th message made by `make`.
pub async fn closed_loop_of(
    clients: &[Client],
    n: u64,
    pipeline: usize,
    limit: Duration,
    make: fn(u64) -> SendMessage,
) -> Result<Run> {
    if clients.is_empty() || pipeline == 0 {
        bail!("--connections and --pipeline must be at least 1");
    }
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for client in clients {
        for _ in 0..pipeline {
            let client = client.clone();
            let next = Arc::clone(&next);
            tasks.spawn(async move {
                let mut ids = Vec::new();
                let mut lat = Vec::new();
                let mut failures = Failures::default();
                let mut last = Instant::now();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let sent = Instant::now();
                    match timed(limit, client.send(make(i))).await {
                        Ok(a) => {
                            last = Instant::now();
                            lat.push(last.duration_since(sent).as_micros() as u64);
                            ids.push(a.id);
                        }
                        Err(e) => {
                            let fatal = e.is_fatal();
                            failures.add(e.to_string());
                            if fatal {
                                break;
                            }
                        }
                    }
                }
                (ids, lat, failures, last)
            });
        }
    }
    collect(tasks, started, n).await
}

/// `n` messages in `send_batch` requests of `batch`, with `in_flight` batches outstanding on
/// each of `clients`. `progress` is called with the number acknowledged so far, about
/// every 100,000 messages.
pub async fn fill_batches(
    clients: &[Client],
    n: u64,
    batch: u64,
    in_flight: usize,
    limit: Duration,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<Run> {
    if clients.is_empty() || in_flight == 0 || batch == 0 {
        bail!("connections, in-flight batches and the batch size must be at least 1");
    }
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(progress);
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for client in clients {
        for _ in 0..in_flight {
            let client = client.clone();
            let next = Arc::clone(&next);
            let done = Arc::clone(&done);
            let progress = Arc::clone(&progress);
            tasks.spawn(async move {
                let mut ids = Vec::new();
                let mut lat = Vec::new();
                let mut failures = Failures::default();
                let mut last = Instant::now();
                loop {
                    let from = next.fetch_add(batch, Ordering::Relaxed);
                    if from >= n {
                        break;
                    }
                    let to = (from + batch).min(n);
                    let sent = Instant::now();
                    let request = client.send_batch((from..to).map(message).collect());
                    match timed(limit, request).await {
                        Ok(items) => {
                            last = Instant::now();
                            lat.push(last.duration_since(sent).as_micros() as u64);
                            for item in items {
                                match item {
                                    BatchItem::Accepted(a) => ids.push(a.id),
                                    BatchItem::Error(e) => failures.add(e.to_string()),
                                }
                            }
                            let total = done.fetch_add(to - from, Ordering::Relaxed) + (to - from);
                            if total / 100_000 != (total - (to - from)) / 100_000 {
                                progress(total);
                            }
                        }
                        Err(e) => {
                            for _ in from..to {
                                failures.add(e.to_string());
                            }
                            if e.is_fatal() {
                                break;
                            }
                        }
                    }
                }
                (ids, lat, failures, last)
            });
        }
    }
    collect(tasks, started, n).await
}

/// What one sender task hands back: acknowledged ids, latencies (µs), failures, and when
/// its last answer came.
type SenderResult = (Vec<String>, Vec<u64>, Failures, Instant);

/// Joins the sender tasks of a run started at `started` (of about `n` messages).
async fn collect(mut tasks: JoinSet<SenderResult>, started: Instant, n: u64) -> Result<Run> {
    let mut run = Run {
        ids: Vec::with_capacity(n as usize),
        latencies_us: Vec::new(),
        started,
        finished: started,
        failures: Failures::default(),
    };
    while let Some(r) = tasks.join_next().await {
        let (ids, lat, failures, last) = r.context("a sender task failed")?;
        run.ids.extend(ids);
        run.latencies_us.extend(lat);
        run.failures.merge(failures);
        run.finished = run.finished.max(last);
    }
    Ok(run)
}

/// One send of an open-loop run.
#[derive(Debug, Clone)]
pub struct Timed {
    pub id: String,
    /// When the send was handed to the client.
    pub sent: Instant,
    pub acked: Instant,
}

#[derive(Debug)]
pub struct OpenRun {
    pub sends: Vec<Timed>,
    /// Largest delay between a send's scheduled time and when it was handed to the client
    /// (the generator's own lateness, in microseconds).
    pub max_lag_us: u64,
    pub failures: Failures,
}

/// `rate` sends per second for `duration`, spread over `clients`, each on its own task.
pub async fn open_loop(
    clients: &[Client],
    rate: u64,
    duration: Duration,
    limit: Duration,
) -> Result<OpenRun> {
    if clients.is_empty() || rate == 0 {
        bail!("the open loop needs a connection and a positive rate");
    }
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tasks = JoinSet::new();
    let start = tokio::time::Instant::now() + Duration::from_millis(10);
    let mut max_lag_us = 0u64;
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let sent = Instant::now();
        max_lag_us = max_lag_us.max(
            tokio::time::Instant::now()
                .saturating_duration_since(due)
                .as_micros() as u64,
        );
        let client = clients[(i % clients.len() as u64) as usize].clone();
        tasks.spawn(async move {
            let r = timed(limit, client.send(message(i))).await;
            (r, sent, Instant::now())
        });
    }
    let mut run = OpenRun {
        sends: Vec::with_capacity(total as usize),
        max_lag_us,
        failures: Failures::default(),
    };
    while let Some(r) = tasks.join_next().await {
        let (r, sent, acked) = r.context("a sender task failed")?;
        match r {
            Ok(a) => run.sends.push(Timed {
                id: a.id,
                sent,
                acked,
            }),
            Err(e) => run.failures.add(e.to_string()),
        }
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_about_300_bytes() {
        let m = message(1234);
        // The encoded size on the wire (postcard), as daemon.max_message counts it.
        let size = herald_protocol::encode(herald_protocol::Codec::Postcard, &m)
            .unwrap()
            .len();
        assert!((250..=350).contains(&size), "{size} bytes");
    }
}
