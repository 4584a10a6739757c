//! The scenarios. Each starts a fresh `heraldd` (new temporary data dir) against the one
//! mock provider, drives it, measures, checks delivery at the mock, and stops it. With
//! `--store postgres`, accept and e2e start a [`Fleet`] instead: `--daemons` daemons on one
//! fresh PostgreSQL database, the connections split across them, the same one mock.
//! Start and stop points of every number are stated on its field; `BENCHMARKS.md`
//! repeats them.
//!
//! A correctness problem (a send refused, a message lost or delivered twice, a daemon
//! that crashed, stalled or failed to stop) is recorded in [`Ctx::problems`]; timings are
//! never judged here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use herald_client::Client;
use herald_plugin_api::{EventKind, State};
use herald_protocol::Filter;
use serde::Serialize;

use crate::daemon::{Binaries, Daemon, DaemonSettings, Disk, Memory};
use crate::load::{self, Failures};
use crate::mock::{self, Mock, Settings, Snapshot};
use crate::pg::BenchDb;

/// How long delivery may make no progress before the run is declared stalled.
const STALL: Duration = Duration::from_secs(60);

/// Parameters shared by the scenarios.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Messages in the throughput and footprint scenarios.
    pub n: u64,
    /// Client connections.
    pub connections: usize,
    /// Requests in flight per connection (closed loop).
    pub pipeline: usize,
    /// Open-loop rate of the latency scenarios (sends/s).
    pub rate: u64,
    /// Open-loop duration of the latency scenarios.
    pub latency_secs: f64,
    /// Messages queued before the restart in the recovery scenario.
    pub recovery_n: u64,
    /// Messages per `send_batch` when filling the recovery queue.
    pub batch: u64,
    /// Provider latency of the `latency20ms` scenario.
    pub slow_ms: u64,
    /// Provider error rate of the `errors5` scenario.
    pub error_rate: f64,
    pub daemon: DaemonSettings,
    /// Longest wait for any one answer from the daemon.
    pub request_timeout: Duration,
    /// The store engine of the accept and e2e scenarios: `sled` or `postgres`.
    pub store: String,
    /// Daemons sharing the database in those scenarios (1 on sled).
    pub daemons: usize,
    /// The PostgreSQL server (`--pg-url`), with `store = "postgres"`; not in the report
    /// (it may hold a password).
    #[serde(skip)]
    pub pg_server: Option<String>,
}

impl Params {
    /// `accept`, or `accept · postgres, 2 daemons`: the scenario as the report names it.
    pub fn engine_label(&self, scenario: &str) -> String {
        if self.pg_server.is_none() {
            return scenario.to_string();
        }
        let s = if self.daemons == 1 { "" } else { "s" };
        format!("{scenario} · postgres, {} daemon{s}", self.daemons)
    }
}

/// The daemons of one accept or e2e run: one on a sled data dir of its own, or
/// `--daemons` on one PostgreSQL database created for the run. Fields drop in order: the
/// daemons are killed before their database is dropped.
#[derive(Debug)]
pub struct Fleet {
    pub daemons: Vec<Daemon>,
    pub db: Option<BenchDb>,
}

impl Fleet {
    /// `n` connections, dealt round-robin over the daemons (daemon i % k).
    async fn connect(&self, n: usize, limit: Duration) -> Result<Vec<Client>> {
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let d = &self.daemons[i % self.daemons.len()];
            clients.push(load::connect_one(&d.socket, limit).await?);
        }
        Ok(clients)
    }

    fn check_alive(&mut self) -> Result<()> {
        self.daemons.iter_mut().try_for_each(Daemon::check_alive)
    }

    /// Bytes the queue takes: the data dir (sled), or `pg_database_size` (PostgreSQL).
    fn disk(&self) -> Result<Disk> {
        match &self.db {
            Some(db) => {
                let bytes = db.size()?;
                Ok(Disk {
                    apparent: bytes,
                    allocated: bytes,
                    files: 0,
                })
            }
            None => self.daemons[0].disk(),
        }
    }
}

/// Shared state of a run.
#[derive(Debug)]
pub struct Ctx {
    pub params: Params,
    pub bins: Binaries,
    pub mock: Mock,
    pub problems: Vec<String>,
    /// Distinct WARN lines of the daemons' logs (timestamps dropped), with how many
    /// scenario runs logged each.
    pub warnings: BTreeMap<String, u64>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of microsecond samples.
    pub fn of(mut us: Vec<u64>) -> Percentiles {
        if us.is_empty() {
            return Percentiles::default();
        }
        us.sort_unstable();
        let rank = |p: f64| {
            let i = ((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1;
            us[i] as f64 / 1000.0
        };
        Percentiles {
            count: us.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: us[us.len() - 1] as f64 / 1000.0,
        }
    }
}

/// Did the provider see every accepted message exactly once?
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivery {
    /// Messages acknowledged by the daemon.
    pub expected: u64,
    /// Of those, answered `200` by the mock at least once.
    pub delivered: u64,
    /// Acknowledged but never answered `200`.
    pub missing: u64,
    /// Answered `200` more than once.
    pub duplicated: u64,
    /// Answered `200` but never acknowledged to the bench.
    pub unexpected: u64,
    /// Every request the mock received (retries included).
    pub provider_requests: u64,
    /// `503`s the mock injected.
    pub injected_errors: u64,
    /// The daemon's own count of messages in state `sent` at the end.
    pub daemon_sent: u64,
    /// The daemon's count of queued + deferred + sending at the end.
    pub daemon_active: u64,
    /// True when every acknowledged message was delivered exactly once and the daemon
    /// agrees.
    pub exactly_once: bool,
}

/// Scenario 1 (and 4a): durable accept throughput, with the provider paused.
#[derive(Debug, Clone, Serialize)]
pub struct Accept {
    pub n: u64,
    pub acknowledged: u64,
    /// First `send` handed to the client → last acknowledgement received.
    pub secs: f64,
    pub per_sec: f64,
    /// Per request under this saturating load: `send` called → acknowledgement.
    pub latency: Percentiles,
    pub footprint: Footprint,
}

/// Scenario 4a: footprint with the accepted messages still queued.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    /// `daemon.concurrency`: deliveries held at the paused provider.
    pub concurrency: usize,
    /// Messages waiting (queued + sending) when measured.
    pub queued: u64,
    /// `VmRSS` right after start-up, before any send.
    pub idle_rss: u64,
    /// `VmHWM` and `VmRSS` one second after the last acknowledgement.
    pub memory: Memory,
    pub disk: Disk,
    /// `disk.apparent / queued`.
    pub disk_bytes_per_message: f64,
}

/// Scenarios 2 and 5: end-to-end throughput.
#[derive(Debug, Clone, Serialize)]
pub struct EndToEnd {
    pub mock: Settings,
    pub n: u64,
    /// Accept rate while deliveries ran alongside (first send → last acknowledgement).
    pub accept_per_sec: f64,
    /// First `send` handed to the client → the mock's `200` to the last undelivered
    /// message (the N-th distinct id).
    pub secs: f64,
    pub per_sec: f64,
    /// CPU the daemons used per delivered message (µs), from the first send until every
    /// message was delivered.
    pub daemon_cpu_us_per_message: f64,
    pub delivery: Delivery,
}

/// Scenarios 3 and 5: latency at a light, steady load.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub mock: Settings,
    pub rate: u64,
    pub secs: f64,
    pub sends: u64,
    /// `send` handed to the client → acknowledgement received.
    pub accept: Percentiles,
    /// Acknowledgement received → the message's `sent` event received by a subscriber
    /// (on its own connection; 0 when the event came first).
    pub accept_to_sent: Percentiles,
    /// `send` handed to the client → `sent` event received.
    pub send_to_sent: Percentiles,
    /// Worst lateness of the generator against its schedule (its own health, not the
    /// daemon's).
    pub generator_max_lag_ms: f64,
    pub delivery: Delivery,
}

/// Scenario `node`: the accept rate of the Node client (`@herald/client`, JSON codec) next
/// to the Rust client's (postcard), each on one connection with the same number of sends in
/// flight, each against a fresh daemon with the provider paused (as [`Accept`]).
#[derive(Debug, Clone, Serialize)]
pub struct NodeAccept {
    pub n: u64,
    /// Sends outstanding on the one connection (closed loop).
    pub in_flight: usize,
    /// First send handed to the client → last acknowledgement, herald-client.
    pub rust_per_sec: f64,
    /// The same, @herald/client (`client/node/bench/accept.mjs`, its own clock).
    pub node_per_sec: f64,
    /// `node_per_sec / rust_per_sec`.
    pub ratio: f64,
}

/// Scenario 4b: restart with a large queue.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub queued: u64,
    /// Filling the queue with `send_batch` (provider paused): first batch sent → last
    /// acknowledged.
    pub fill_secs: f64,
    pub fill_per_sec: f64,
    pub batch: u64,
    /// Before the kill.
    pub memory_before: Memory,
    pub disk_before: Disk,
    /// How the daemon was stopped.
    pub stop: String,
    /// New process spawned → first successful client handshake on the socket.
    pub to_socket_ms: f64,
    /// New process spawned → acknowledgement of one new `send` (made right after the
    /// handshake).
    pub to_accept_ms: f64,
    /// New process spawned → the mock's first `200` (provider un-paused before the
    /// restart).
    pub to_first_delivery_ms: f64,
    /// First delivery after the restart → every queued message delivered.
    pub drain_secs: f64,
    pub drain_per_sec: f64,
    /// `VmHWM` of the restarted daemon after the drain.
    pub memory_after: Memory,
    pub delivery: Delivery,
}

/// Scenario 5: one provider behaviour, end-to-end and latency.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Variant {
    pub e2e: Option<EndToEnd>,
    pub latency: Option<Latency>,
}

impl Ctx {
    pub(crate) fn problem(&mut self, scenario: &str, what: impl Into<String>) {
        let what = what.into();
        eprintln!("herald-bench: PROBLEM in {scenario}: {what}");
        self.problems.push(format!("{scenario}: {what}"));
    }

    pub(crate) fn failures(&mut self, scenario: &str, f: &Failures) {
        if f.count > 0 {
            self.problem(
                scenario,
                format!(
                    "{} sends were refused or failed, e.g. {:?}",
                    f.count, f.samples
                ),
            );
        }
    }

    async fn daemon(&mut self) -> Result<Daemon> {
        let settings = self.params.daemon.clone();
        self.daemon_with(&settings).await
    }

    pub(crate) async fn daemon_with(&mut self, settings: &DaemonSettings) -> Result<Daemon> {
        let d = Daemon::start(&self.bins, self.mock.url(), settings).await?;
        if let Some(dir) = d.kept_dir() {
            eprintln!("herald-bench: keeping {}", dir.display());
        }
        Ok(d)
    }

    /// One daemon (sled), or `--daemons` on a fresh PostgreSQL database (`--store postgres`).
    pub(crate) async fn fleet(&mut self, settings: &DaemonSettings) -> Result<Fleet> {
        let Some(server) = self.params.pg_server.clone() else {
            return Ok(Fleet {
                daemons: vec![self.daemon_with(settings).await?],
                db: None,
            });
        };
        let db = BenchDb::create(&server)?;
        let settings = DaemonSettings {
            pg_url: Some(db.url.clone()),
            ..settings.clone()
        };
        let mut daemons = Vec::with_capacity(self.params.daemons);
        for _ in 0..self.params.daemons {
            daemons.push(self.daemon_with(&settings).await?);
        }
        Ok(Fleet {
            daemons,
            db: Some(db),
        })
    }

    /// Stops every daemon of `fleet` (as [`Ctx::stop`]), then drops its database.
    pub(crate) async fn stop_fleet(&mut self, scenario: &str, fleet: Fleet) {
        let Fleet { daemons, db } = fleet;
        for d in daemons {
            self.stop(scenario, d).await;
        }
        drop(db);
    }

    /// Stops the daemon with SIGTERM and records a failed graceful stop.
    pub(crate) async fn stop(&mut self, scenario: &str, mut d: Daemon) {
        let timeout = if self.params.daemon.wrap.is_some() {
            Duration::from_secs(300)
        } else {
            Duration::from_secs(30)
        };
        match d.terminate(timeout).await {
            Ok(status) if status.success() => {}
            // A wrapper such as `perf record` dies of the SIGTERM the group got.
            Ok(status)
                if self.params.daemon.wrap.is_some()
                    && std::os::unix::process::ExitStatusExt::signal(&status) == Some(15) => {}
            Ok(status) => self.problem(
                scenario,
                format!(
                    "heraldd exited with {status} after SIGTERM\n{}",
                    d.log_tail(20)
                ),
            ),
            Err(e) => self.problem(scenario, format!("{e:#}")),
        }
        for line in d.log_problems().into_iter().take(5) {
            self.problem(scenario, format!("daemon log: {line}"));
        }
        let distinct: HashSet<String> = d.log_warnings().into_iter().collect();
        for line in distinct {
            *self.warnings.entry(line).or_insert(0) += 1;
        }
        // Anything still held belonged to this daemon.
        let _ = self.mock.abandon_held().await;
    }

    /// Fresh mock counts and the given behaviour.
    pub(crate) async fn mock_mode(&self, s: Settings) -> Result<()> {
        self.mock.abandon_held().await?;
        self.mock.reset().await?;
        self.mock.set(s).await
    }

    /// Scenarios 1 and 4a: `n` single sends as fast as possible with the provider paused,
    /// then the footprint of the queue they form.
    pub async fn accept(&mut self) -> Result<Accept> {
        let settings = self.params.daemon.clone();
        let (run, footprint) = self.fill_paused("accept", &settings).await?;
        Ok(Accept {
            n: self.params.n,
            acknowledged: run.ids.len() as u64,
            secs: run.finished.duration_since(run.started).as_secs_f64(),
            per_sec: run.rate(),
            latency: Percentiles::of(run.latencies_us),
            footprint,
        })
    }

    /// Scenario 4a, the queue alone: as [`Ctx::accept`] but with `daemon.concurrency = 1`,
    /// so one delivery is held at the paused provider instead of `concurrency`: the
    /// footprint of the queue without that of the deliveries in flight.
    pub async fn footprint_queue_only(&mut self) -> Result<Footprint> {
        let settings = DaemonSettings {
            concurrency: 1,
            ..self.params.daemon.clone()
        };
        Ok(self.fill_paused("footprint", &settings).await?.1)
    }

    /// A fresh daemon with the provider paused, `n` single sends in a closed loop, then
    /// its memory and disk one second after the last acknowledgement.
    async fn fill_paused(
        &mut self,
        scenario: &str,
        settings: &DaemonSettings,
    ) -> Result<(load::Run, Footprint)> {
        let p = self.params.clone();
        let scenario = &p.engine_label(scenario);
        self.mock_mode(Settings {
            paused: true,
            ..Settings::default()
        })
        .await?;
        let mut f = self.fleet(settings).await?;
        let idle_rss = f.daemons[0].memory()?.rss;
        let clients = f.connect(p.connections, p.request_timeout).await?;
        eprintln!(
            "herald-bench: {scenario}: {} sends, {} connections x {} in flight, provider paused, daemon.concurrency {}",
            p.n, p.connections, p.pipeline, settings.concurrency
        );
        let run = load::closed_loop(&clients, p.n, p.pipeline, p.request_timeout).await?;
        self.failures(scenario, &run.failures);
        f.check_alive()?;
        let stats = load::timed(p.request_timeout, clients[0].stats()).await?;
        if stats.active != run.ids.len() as u64 {
            self.problem(
                scenario,
                format!(
                    "{} sends acknowledged but the daemon counts {} active messages",
                    run.ids.len(),
                    stats.active
                ),
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let memory = f.daemons[0].memory()?;
        let disk = f.disk()?;
        let queued = stats.active;
        let footprint = Footprint {
            concurrency: settings.concurrency,
            queued,
            idle_rss,
            memory,
            disk,
            disk_bytes_per_message: if queued > 0 {
                disk.apparent as f64 / queued as f64
            } else {
                0.0
            },
        };
        drop(clients);
        self.stop_fleet(scenario, f).await;
        Ok((run, footprint))
    }

    /// Scenario `node`: see [`NodeAccept`]. `script` is `client/node/bench/accept.mjs`.
    pub async fn node_accept(&mut self, script: &std::path::Path) -> Result<NodeAccept> {
        let p = self.params.clone();
        let in_flight = p.connections * p.pipeline;
        let settings = p.daemon.clone();
        let paused = Settings {
            paused: true,
            ..Settings::default()
        };

        self.mock_mode(paused).await?;
        let mut d = self.daemon_with(&settings).await?;
        let clients = load::connect(&d.socket, 1, p.request_timeout).await?;
        eprintln!(
            "herald-bench: node: {} sends with herald-client, one connection x {in_flight} in flight, provider paused",
            p.n
        );
        let run = load::closed_loop(&clients, p.n, in_flight, p.request_timeout).await?;
        self.failures("node", &run.failures);
        d.check_alive()?;
        drop(clients);
        self.stop("node", d).await;
        let rust_per_sec = run.rate();

        self.mock_mode(paused).await?;
        let mut d = self.daemon_with(&settings).await?;
        eprintln!(
            "herald-bench: node: {} sends with @herald/client, one connection x {in_flight} in flight, provider paused",
            p.n
        );
        let out = tokio::time::timeout(
            Duration::from_secs(900),
            tokio::process::Command::new("node")
                .arg(script)
                .arg("--socket")
                .arg(&d.socket)
                .args([
                    "--n",
                    &p.n.to_string(),
                    "--in-flight",
                    &in_flight.to_string(),
                ])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("the Node bench did not finish within 15 minutes")?
        .context("cannot run node (the node scenario needs Node.js 20+)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let result: serde_json::Value = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .with_context(|| {
                format!(
                    "the Node bench printed no result ({}):\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        let acknowledged = result["acknowledged"].as_u64().unwrap_or(0);
        if !out.status.success() || acknowledged != p.n {
            self.problem(
                "node",
                format!(
                    "@herald/client acknowledged {acknowledged} of {} sends: {}",
                    p.n, result["first_error"]
                ),
            );
        }
        d.check_alive()?;
        let stats = load::timed(
            p.request_timeout,
            load::connect_one(&d.socket, p.request_timeout)
                .await?
                .stats(),
        )
        .await?;
        if stats.active != acknowledged {
            self.problem(
                "node",
                format!(
                    "@herald/client saw {acknowledged} sends acknowledged but the daemon counts {} active messages",
                    stats.active
                ),
            );
        }
        self.stop("node", d).await;
        let node_per_sec = result["per_sec"].as_f64().unwrap_or(0.0);
        Ok(NodeAccept {
            n: p.n,
            in_flight,
            rust_per_sec,
            node_per_sec,
            ratio: if rust_per_sec > 0.0 {
                node_per_sec / rust_per_sec
            } else {
                0.0
            },
        })
    }

    /// Scenarios 2 and 5: `n` sends as fast as possible with the provider answering per
    /// `mock`; timed until the provider has answered `200` for all of them.
    pub async fn e2e(&mut self, name: &str, mock: Settings) -> Result<EndToEnd> {
        let p = self.params.clone();
        let name = &p.engine_label(name);
        self.mock_mode(mock).await?;
        let mut f = self.fleet(&p.daemon).await?;
        let clients = f.connect(p.connections, p.request_timeout).await?;
        eprintln!(
            "herald-bench: {name}: {} sends, provider latency {} ms, error rate {}",
            p.n, mock.latency_ms, mock.error_rate
        );
        let cpu_before = daemons_cpu_secs(&f.daemons);
        let started_unix = mock::unix_ns();
        let run = load::closed_loop(&clients, p.n, p.pipeline, p.request_timeout).await?;
        self.failures(name, &run.failures);
        let (delivery, reached) = self
            .verify(name, &mut f.daemons, &clients[0], &run.ids)
            .await?;
        let cpu = daemons_cpu_secs(&f.daemons) - cpu_before;
        let secs = reached
            .map(|s| s.last_ok_unix_ns.saturating_sub(started_unix) as f64 / 1e9)
            .unwrap_or(f64::NAN);
        drop(clients);
        self.stop_fleet(name, f).await;
        Ok(EndToEnd {
            mock,
            n: p.n,
            accept_per_sec: run.rate(),
            secs,
            per_sec: delivery.delivered as f64 / secs,
            daemon_cpu_us_per_message: cpu * 1e6 / delivery.delivered.max(1) as f64,
            delivery,
        })
    }

    /// Scenarios 3 and 5: an open loop at `rate` for `latency_secs`, with a subscriber to
    /// `sent` events on its own connection.
    pub async fn latency(&mut self, name: &str, mock: Settings) -> Result<Latency> {
        let p = self.params.clone();
        self.mock_mode(mock).await?;
        let mut d = self.daemon().await?;
        let clients = load::connect(&d.socket, p.connections, p.request_timeout).await?;
        let watcher = load::connect_one(&d.socket, p.request_timeout).await?;
        let filter = Filter {
            kinds: vec![EventKind::Sent],
            ..Filter::default()
        };
        let mut sub = load::timed(p.request_timeout, watcher.subscribe(filter, None))
            .await
            .context("subscribing to sent events")?;
        let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let collector = {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                while let Some(e) = sub.next_event().await {
                    let Ok(e) = e else { break };
                    let at = Instant::now();
                    if let Some(id) = e.message_id {
                        seen.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(id)
                            .or_insert(at);
                    }
                }
            })
        };
        eprintln!(
            "herald-bench: {name}: open loop {} sends/s for {} s, provider latency {} ms, error rate {}",
            p.rate, p.latency_secs, mock.latency_ms, mock.error_rate
        );
        let run = load::open_loop(
            &clients,
            p.rate,
            Duration::from_secs_f64(p.latency_secs),
            p.request_timeout,
        )
        .await?;
        self.failures(name, &run.failures);
        let ids: Vec<String> = run.sends.iter().map(|s| s.id.clone()).collect();
        let (delivery, _) = self
            .verify(name, std::slice::from_mut(&mut d), &clients[0], &ids)
            .await?;
        // The sent events trail the deliveries slightly.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = seen.lock().unwrap_or_else(|p| p.into_inner()).len();
            if n >= ids.len() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        collector.abort();
        let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
        let mut accept = Vec::with_capacity(run.sends.len());
        let mut to_sent = Vec::with_capacity(run.sends.len());
        let mut send_to_sent = Vec::with_capacity(run.sends.len());
        let mut no_event = 0u64;
        for s in &run.sends {
            accept.push(s.acked.duration_since(s.sent).as_micros() as u64);
            match seen.get(&s.id) {
                Some(at) => {
                    to_sent.push(at.saturating_duration_since(s.acked).as_micros() as u64);
                    send_to_sent.push(at.saturating_duration_since(s.sent).as_micros() as u64);
                }
                None => no_event += 1,
            }
        }
        if no_event > 0 {
            self.problem(
                name,
                format!("{no_event} accepted messages never produced a `sent` event"),
            );
        }
        drop(clients);
        drop(watcher);
        self.stop(name, d).await;
        Ok(Latency {
            mock,
            rate: p.rate,
            secs: p.latency_secs,
            sends: run.sends.len() as u64,
            accept: Percentiles::of(accept),
            accept_to_sent: Percentiles::of(to_sent),
            send_to_sent: Percentiles::of(send_to_sent),
            generator_max_lag_ms: run.max_lag_us as f64 / 1000.0,
            delivery,
        })
    }

    /// Scenario 4b: fill `recovery_n` with the provider paused, SIGKILL, un-pause the
    /// provider, restart, and time the way back to accepting and dispatching; then let
    /// the queue drain and check every message was delivered exactly once.
    pub async fn recovery(&mut self) -> Result<Recovery> {
        let p = self.params.clone();
        self.mock_mode(Settings {
            paused: true,
            ..Settings::default()
        })
        .await?;
        let mut d = self.daemon().await?;
        let clients =
            load::connect(&d.socket, p.connections.clamp(1, 8), p.request_timeout).await?;
        eprintln!(
            "herald-bench: recovery: queueing {} messages with send_batch({}), provider paused",
            p.recovery_n, p.batch
        );
        let fill = load::fill_batches(&clients, p.recovery_n, p.batch, 2, p.request_timeout, |n| {
            eprintln!("herald-bench: recovery: {n} queued");
        })
        .await?;
        self.failures("recovery", &fill.failures);
        d.check_alive()?;
        let stats = load::timed(p.request_timeout, clients[0].stats()).await?;
        if stats.active != fill.ids.len() as u64 {
            self.problem(
                "recovery",
                format!(
                    "{} messages acknowledged but the daemon counts {} active",
                    fill.ids.len(),
                    stats.active
                ),
            );
        }
        let memory_before = d.memory()?;
        let disk_before = d.disk()?;
        drop(clients);

        eprintln!("herald-bench: recovery: SIGKILL, provider resumed, restarting");
        d.kill();
        self.mock.abandon_held().await?;
        let wait = Instant::now();
        while self.mock.snapshot().await?.held > 0 && wait.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.mock.reset().await?;
        self.mock.set(Settings::default()).await?;

        let spawned_unix = mock::unix_ns();
        let spawned = Instant::now();
        d.spawn()?;
        let to_socket = d.wait_ready(Duration::from_secs(600)).await?;
        let client = load::connect_one(&d.socket, p.request_timeout).await?;
        let probe = load::timed(p.request_timeout, client.send(load::message(p.recovery_n)))
            .await
            .context("the first send after the restart")?;
        let to_accept = spawned.elapsed();
        let mut first_ok = 0;
        while first_ok == 0 {
            d.check_alive()?;
            first_ok = self.mock.snapshot().await?.first_ok_unix_ns;
            if spawned.elapsed() > Duration::from_secs(600) {
                bail!("no delivery within 600 s of the restart");
            }
            if first_ok == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let to_first_delivery_ms = first_ok.saturating_sub(spawned_unix) as f64 / 1e6;
        eprintln!(
            "herald-bench: recovery: socket after {:.0} ms, first delivery after {to_first_delivery_ms:.0} ms; draining",
            to_socket.as_secs_f64() * 1000.0
        );
        let mut ids = fill.ids.clone();
        ids.push(probe.id);
        let (delivery, reached) = self
            .verify("recovery", std::slice::from_mut(&mut d), &client, &ids)
            .await?;
        let drain_secs = reached
            .map(|s| s.last_ok_unix_ns.saturating_sub(first_ok) as f64 / 1e9)
            .unwrap_or(f64::NAN);
        let memory_after = d.memory()?;
        drop(client);
        self.stop("recovery", d).await;
        Ok(Recovery {
            queued: fill.ids.len() as u64,
            fill_secs: fill.finished.duration_since(fill.started).as_secs_f64(),
            fill_per_sec: fill.rate(),
            batch: p.batch,
            memory_before,
            disk_before,
            stop: "SIGKILL".into(),
            to_socket_ms: to_socket.as_secs_f64() * 1000.0,
            to_accept_ms: to_accept.as_secs_f64() * 1000.0,
            to_first_delivery_ms,
            drain_secs,
            drain_per_sec: delivery.delivered as f64 / drain_secs,
            memory_after,
            delivery,
        })
    }

    /// Waits until the mock has answered `200` for as many distinct ids as `ids` holds
    /// (or delivery stalls), then until the daemon has nothing active, and compares the
    /// mock's ids with `ids`. Returns the check and the mock's snapshot at the moment the
    /// count was reached (`None` when it never was). Every daemon of `daemons` must stay
    /// up; `client` (on any of them) reads the counts, which they share.
    pub(crate) async fn verify(
        &mut self,
        scenario: &str,
        daemons: &mut [Daemon],
        client: &Client,
        ids: &[String],
    ) -> Result<(Delivery, Option<Snapshot>)> {
        let want = ids.len() as u64;
        let mut reached = None;
        let mut last_progress = Instant::now();
        let mut last_seen = (u64::MAX, u64::MAX);
        let mut last_report = Instant::now();
        loop {
            daemons.iter_mut().try_for_each(Daemon::check_alive)?;
            let s = self.mock.snapshot().await?;
            if s.unique_ok >= want {
                reached = Some(s);
                break;
            }
            if (s.unique_ok, s.requests) != last_seen {
                last_seen = (s.unique_ok, s.requests);
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL {
                self.problem(
                    scenario,
                    format!(
                        "delivery stalled: {} of {want} delivered, no provider request for {} s",
                        s.unique_ok,
                        STALL.as_secs()
                    ),
                );
                break;
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "herald-bench: {scenario}: {} of {want} delivered",
                    s.unique_ok
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Let the daemon record the outcomes, then give a late duplicate time to show.
        let settle = Instant::now();
        let limit = self.params.request_timeout;
        let mut stats = load::timed(limit, client.stats()).await?;
        while stats.active > 0 && settle.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stats = load::timed(limit, client.stats()).await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stats = load::timed(limit, client.stats()).await?;
        let snapshot = self.mock.snapshot().await?;
        let seen = self.mock.ids().await?;
        let expected: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut delivery = Delivery {
            expected: want,
            provider_requests: snapshot.requests,
            injected_errors: snapshot.errors,
            daemon_sent: stats
                .states
                .iter()
                .find(|(s, _)| *s == State::Sent)
                .map_or(0, |(_, n)| *n),
            daemon_active: stats.active,
            ..Delivery::default()
        };
        for id in ids {
            match seen.get(id) {
                Some(&n) => {
                    delivery.delivered += 1;
                    if n > 1 {
                        delivery.duplicated += 1;
                    }
                }
                None => delivery.missing += 1,
            }
        }
        delivery.unexpected = seen
            .keys()
            .filter(|k| !expected.contains(k.as_str()))
            .count() as u64;
        delivery.exactly_once = delivery.delivered == want
            && delivery.missing == 0
            && delivery.duplicated == 0
            && delivery.unexpected == 0
            && delivery.daemon_sent == want
            && delivery.daemon_active == 0;
        if !delivery.exactly_once {
            self.problem(
                scenario,
                format!(
                    "not exactly once: {} acknowledged, {} delivered, {} missing, {} duplicated (e.g. {:?}), {} unexpected; the daemon counts {} sent and {} still active",
                    want,
                    delivery.delivered,
                    delivery.missing,
                    delivery.duplicated,
                    snapshot.duplicate_samples,
                    delivery.unexpected,
                    delivery.daemon_sent,
                    delivery.daemon_active
                ),
            );
        }
        if snapshot.bad_requests > 0 {
            self.problem(
                scenario,
                format!(
                    "{} provider requests had no message id",
                    snapshot.bad_requests
                ),
            );
        }
        Ok((delivery, reached))
    }
}

/// CPU the daemons have used so far, seconds (NaN when it cannot be read).
pub(crate) fn daemons_cpu_secs(daemons: &[crate::daemon::Daemon]) -> f64 {
    daemons
        .iter()
        .map(|d| {
            d.pid()
                .and_then(|pid| crate::daemon::cpu_secs(pid).ok())
                .unwrap_or(f64::NAN)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).map(|ms| ms * 1000).collect());
        assert_eq!(p.count, 100);
        assert_eq!(p.p50_ms, 50.0);
        assert_eq!(p.p99_ms, 99.0);
        assert_eq!(p.max_ms, 100.0);
        let one = Percentiles::of(vec![1500]);
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (1.5, 1.5, 1.5));
        assert_eq!(Percentiles::of(vec![]).count, 0);
    }
}
