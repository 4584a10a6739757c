//! The report: what machine this ran on, the results as a markdown table (stdout), as JSON
//! (`--json`), and as the whole `BENCHMARKS.md` (`--markdown`), so that no measured number
//! in that file is typed in by hand (the hand-written analysis, `bench/ANALYSIS.md`, is
//! included verbatim and says where its numbers come from).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::scenarios::{
    Accept, EndToEnd, Footprint, Latency, Params, Percentiles, Recovery, Variant,
};

/// Where and when the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub date_utc: String,
    pub cores: usize,
    pub cpu_model: String,
    pub memory_total: String,
    pub kernel: String,
    /// `fdatasync` of a 4 KiB write in the data dirs' file system, 200 times: what one
    /// group commit costs at least.
    pub fsync: Percentiles,
    /// `df -hT` of the directory holding the daemons' data dirs.
    pub disk_df: String,
    /// `lsblk -d -o NAME,SIZE,ROTA,TYPE,MODEL`.
    pub disk_lsblk: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// Compilers, cargo and test processes running at the start, other than this run's
    /// own `cargo run` (they compete for the two cores).
    pub other_busy_processes: Vec<String>,
    /// Such processes seen at any of the samples taken every 2 s during the run.
    pub other_busy_during_run: Vec<String>,
    /// CPU time the whole machine spent outside this process and its daemons during the
    /// run, and the hypervisor's steal time.
    pub cpu_others: CpuShare,
    /// `git describe` of the tree the daemon was built from, and whether the daemon's
    /// sources (daemon, client, plugin-api, webhook plugin, Cargo.lock) had uncommitted
    /// changes.
    pub git: String,
}

fn command(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => format!(
            "({program} failed: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("({program} unavailable: {e})"),
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// This process and its ancestors (the `cargo run` that started it is not "other").
fn ancestors() -> Vec<u32> {
    let mut out = vec![std::process::id()];
    let mut pid = std::process::id();
    for _ in 0..32 {
        let stat = read(&format!("/proc/{pid}/stat"));
        // The command name may contain spaces: the fields after it start after ")".
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            break;
        };
        let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) else {
            break;
        };
        if ppid <= 1 {
            break;
        }
        out.push(ppid);
        pid = ppid;
    }
    out
}

/// CPU seconds used by other processes (and stolen by the hypervisor) while the
/// benchmark ran, out of the capacity of the run (cores × wall time).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuShare {
    pub capacity_secs: f64,
    /// Busy CPU time of the machine minus that of this process and its (reaped) daemons.
    pub others_secs: f64,
    pub steal_secs: f64,
}

/// Clock ticks per second of /proc/stat (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// `(busy, steal)` ticks of the whole machine.
fn machine_ticks() -> (u64, u64) {
    let stat = read("/proc/stat");
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    (at(0) + at(1) + at(2) + at(5) + at(6), at(7))
}

/// utime + stime + cutime + cstime of this process: itself and its waited-for children.
fn own_ticks() -> u64 {
    let stat = read("/proc/self/stat");
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    // `rest` starts at field 3 (state); utime is field 14.
    rest.split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

/// Measures [`CpuShare`] from its creation, and samples busy processes meanwhile.
#[derive(Debug)]
pub struct CpuMeter {
    started: std::time::Instant,
    machine: (u64, u64),
    own: u64,
    seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    sampler: tokio::task::JoinHandle<()>,
}

impl CpuMeter {
    pub fn start() -> CpuMeter {
        let seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>> =
            std::sync::Arc::default();
        let sampler = {
            let seen = std::sync::Arc::clone(&seen);
            tokio::spawn(async move {
                loop {
                    let now = busy_processes();
                    seen.lock().unwrap_or_else(|p| p.into_inner()).extend(now);
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            })
        };
        CpuMeter {
            started: std::time::Instant::now(),
            machine: machine_ticks(),
            own: own_ticks(),
            seen,
            sampler,
        }
    }

    /// The share so far, and the busy processes seen.
    pub fn finish(self) -> (CpuShare, Vec<String>) {
        self.sampler.abort();
        let (busy, steal) = machine_ticks();
        let own = own_ticks().saturating_sub(self.own);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let share = CpuShare {
            capacity_secs: self.started.elapsed().as_secs_f64() * cores as f64,
            others_secs: busy.saturating_sub(self.machine.0).saturating_sub(own) as f64 / TICKS,
            steal_secs: steal.saturating_sub(self.machine.1) as f64 / TICKS,
        };
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        (share, seen)
    }
}

fn busy_processes() -> Vec<String> {
    const BUSY: [&str; 7] = [
        "rustc",
        "cargo",
        "clippy-driver",
        "cc1",
        "cc1plus",
        "ld",
        "heraldd",
    ];
    let mine = ancestors();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if mine.contains(&pid) {
            continue;
        }
        let comm = read(&format!("/proc/{pid}/comm")).trim().to_string();
        if !(BUSY.contains(&comm.as_str()) || comm.ends_with("-test")) {
            continue;
        }
        // This run's own daemons (and their wrappers) are children of this process.
        let stat = read(&format!("/proc/{pid}/stat"));
        let ppid: Option<u32> = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if ppid == Some(std::process::id()) {
            continue;
        }
        out.push(format!("{comm} (pid {pid})"));
    }
    out.sort();
    out
}

/// Times `fdatasync` after a 4 KiB write, 200 times, in a scratch file under `dir`.
fn fsync_probe(dir: &Path) -> std::io::Result<Percentiles> {
    use std::io::Write as _;
    let file = tempfile::NamedTempFile::new_in(dir)?;
    let mut f = file.as_file();
    let block = [0x5au8; 4096];
    let mut us = Vec::with_capacity(200);
    for _ in 0..200 {
        f.write_all(&block)?;
        let start = std::time::Instant::now();
        f.sync_data()?;
        us.push(start.elapsed().as_micros() as u64);
    }
    Ok(Percentiles::of(us))
}

impl Machine {
    pub fn probe(data_parent: &Path) -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_total = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| {
                l.trim_start_matches("MemTotal:")
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| format!("{:.1} GiB", kb as f64 / (1024.0 * 1024.0)))
            .unwrap_or_default();
        let dir = data_parent.display().to_string();
        let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        Machine {
            date_utc: command("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_total,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            fsync: fsync_probe(data_parent).unwrap_or_default(),
            disk_df: command("df", &["-hT", &dir]),
            disk_lsblk: command("lsblk", &["-d", "-o", "NAME,SIZE,ROTA,TYPE,MODEL"]),
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
            other_busy_processes: busy_processes(),
            other_busy_during_run: Vec::new(),
            cpu_others: CpuShare::default(),
            git: {
                let head = command("git", &["-C", repo, "describe", "--always", "--abbrev=12"]);
                let changed = command(
                    "git",
                    &[
                        "-C",
                        repo,
                        "status",
                        "--porcelain",
                        "--",
                        "daemon",
                        "client",
                        "plugin-api",
                        "plugins/webhook",
                        "Cargo.lock",
                    ],
                );
                if changed.is_empty() {
                    format!("{head}, daemon sources unmodified")
                } else {
                    format!(
                        "{head} + uncommitted changes: {}",
                        changed
                            .lines()
                            .map(str::trim)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            },
        }
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: String,
    /// The command line that produced this report.
    pub command: String,
    /// Wall time of the whole run.
    pub elapsed_secs: f64,
    pub smoke: bool,
    pub machine: Machine,
    pub params: Params,
    pub binaries: crate::daemon::Binaries,
    pub mock_url: String,
    pub accept: Option<Accept>,
    /// The footprint again with `daemon.concurrency = 1` (the queue alone).
    pub footprint_queue_only: Option<Footprint>,
    pub e2e: Option<EndToEnd>,
    pub latency: Option<Latency>,
    pub recovery: Option<Recovery>,
    pub latency20ms: Variant,
    pub errors5: Variant,
    /// `--scenario node`: @herald/client's accept rate next to herald-client's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<crate::scenarios::NodeAccept>,
    /// e2e with WebSocket subscribers.
    pub streams: Option<crate::streams::Streams>,
    /// `--scenario blast`: provider batches against a rate-limited mock Resend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blast: Option<crate::blast::Blast>,
    /// Correctness problems (lost or duplicated messages, refused sends, crashes).
    pub problems: Vec<String>,
    /// Distinct WARN lines the daemons logged, with the number of daemon runs that
    /// logged each (not problems by themselves).
    pub daemon_warnings: Vec<String>,
    /// The profiling command suggested for this machine.
    pub profile_hint: ProfileHint,
}

/// How to profile the daemon under the accept scenario on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileHint {
    /// Whether `perf stat -e instructions true` counts instructions here.
    pub perf_counters: bool,
    pub tool: String,
    pub commands: Vec<String>,
    pub note: String,
}

impl ProfileHint {
    pub fn probe(bench_cmd: &str) -> ProfileHint {
        let out = Command::new("perf")
            .args(["stat", "-x,", "-e", "instructions", "true"])
            .output();
        let perf_counters = match &out {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stderr);
                o.status.success()
                    && text.contains("instructions")
                    && !text.contains("not supported")
                    && !text.contains("not counted")
            }
            Err(_) => false,
        };
        let perf_runs = out.is_ok();
        let perf_clock = format!(
            "{bench_cmd} --scenario accept --n 100000 --wrap \"perf record -e cpu-clock -F 999 -o /tmp/heraldd.perf.data --\""
        );
        let perf_report = "perf report -i /tmp/heraldd.perf.data --no-children --sort comm,dso,symbol --percent-limit 1 --stdio";
        if perf_counters {
            ProfileHint {
                perf_counters,
                tool: "perf".into(),
                commands: vec![
                    format!(
                        "{bench_cmd} --scenario accept --n 100000 --wrap \"perf record -F 999 --call-graph dwarf -o /tmp/heraldd.perf.data --\""
                    ),
                    perf_report.into(),
                ],
                note: "Hardware counters work here: perf samples the daemon (all its threads) for the whole accept scenario at full speed.".into(),
            }
        } else {
            let mut commands = vec![
                format!(
                    "{bench_cmd} --scenario accept --n 20000 --wrap \"valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file=/tmp/heraldd.callgrind.%p\""
                ),
                "callgrind_annotate $(ls -t /tmp/heraldd.callgrind.* | head -1) | head -60".into(),
            ];
            let mut note = "`perf stat -e instructions true` reports the counter as `<not supported>` on this machine (a VM without PMU access), so callgrind counts instructions instead. It runs the daemon ~50x slower, hence `--n 20000` (the timings of that run mean nothing; the profile is what counts). `--fair-sched=yes` matters: without it valgrind's thread scheduling lets sled's spin-waits (`sled::lazy::Lazy::deref`) take over half of all instructions. The bench stops the daemon with SIGTERM, so callgrind writes its file; `callgrind_annotate --inclusive=yes` gives the cost per call tree.".to_string();
            if perf_runs {
                commands.push(String::new());
                commands.push(
                    "# wall-clock samples at full speed (software clock, no counters needed):"
                        .into(),
                );
                commands.push(perf_clock);
                commands.push(perf_report.into());
                note.push_str(" perf's software `cpu-clock` event does sample here, at full speed, which shows where wall-clock CPU time goes per thread (`herald-commit` is the group-commit thread); add `--call-graph dwarf` for stacks (the release profile has no frame pointers).");
            }
            ProfileHint {
                perf_counters,
                tool: "valgrind --tool=callgrind".into(),
                commands,
                note,
            }
        }
    }
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v < 10.0 {
        format!("{v:.2} ms")
    } else if v < 10_000.0 {
        format!("{v:.0} ms")
    } else {
        format!("{:.1} s", v / 1000.0)
    }
}

/// `"14 min 32 s"`.
fn minutes(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}

fn rate(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return "n/a".into();
    }
    let n = v.round() as u64;
    format!("{}/s", thousands(n))
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn pct(p: &Percentiles) -> String {
    format!("{} / {} / {}", ms(p.p50_ms), ms(p.p99_ms), ms(p.max_ms))
}

/// One row of the results table.
#[derive(Debug, Clone)]
struct Row {
    scenario: String,
    metric: String,
    measured: String,
    target: String,
    verdict: &'static str,
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

fn delivery_cell(d: &crate::scenarios::Delivery) -> String {
    if d.exactly_once {
        format!(
            "{} of {}, each once",
            thousands(d.delivered),
            thousands(d.expected)
        )
    } else {
        format!(
            "**{} of {}: {} missing, {} duplicated**",
            thousands(d.delivered),
            thousands(d.expected),
            d.missing,
            d.duplicated
        )
    }
}

impl Report {
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let p = &self.params;
        // The targets are sled's, for one daemon: PostgreSQL rows are reported, not judged.
        let sled = p.pg_server.is_none();
        let (accept, footprint, e2e) = (
            p.engine_label("accept"),
            p.engine_label("footprint"),
            p.engine_label("e2e"),
        );
        let mut row =
            |scenario: &str, metric: String, measured: String, target: &str, v: Option<bool>| {
                rows.push(Row {
                    scenario: scenario.to_string(),
                    metric,
                    measured,
                    target: target.into(),
                    verdict: v.map_or("", verdict),
                })
            };
        if let Some(a) = &self.accept {
            row(
                &accept,
                format!("durable accept, {} sends", thousands(a.n)),
                rate(a.per_sec),
                if sled { "≥ 50,000/s" } else { "" },
                sled.then_some(a.per_sec >= 50_000.0),
            );
            row(
                &accept,
                format!(
                    "accept latency at saturation ({} in flight) p50 / p99 / max",
                    self.params.connections * self.params.pipeline
                ),
                pct(&a.latency),
                "",
                None,
            );
            let f = &a.footprint;
            row(
                &footprint,
                format!(
                    "daemon peak RSS, {} queued ({} of them held in flight at the paused provider){}",
                    thousands(f.queued),
                    f.concurrency,
                    if p.daemons > 1 { ", first daemon" } else { "" }
                ),
                mib(f.memory.peak_rss),
                if sled { "≤ 64 MiB" } else { "" },
                sled.then_some(f.memory.peak_rss <= 64 << 20),
            );
            row(
                &footprint,
                "daemon RSS idle → with the queue".into(),
                format!("{} → {}", mib(f.idle_rss), mib(f.memory.rss)),
                "",
                None,
            );
            row(
                &footprint,
                if sled {
                    "disk per queued message".into()
                } else {
                    "database size (pg_database_size) per queued message".into()
                },
                if sled {
                    format!(
                        "{} B ({} in {} files)",
                        thousands(f.disk_bytes_per_message.round() as u64),
                        mib(f.disk.apparent),
                        f.disk.files
                    )
                } else {
                    format!(
                        "{} B ({} in all)",
                        thousands(f.disk_bytes_per_message.round() as u64),
                        mib(f.disk.apparent)
                    )
                },
                "",
                None,
            );
        }
        if let Some(f) = &self.footprint_queue_only {
            row(
                "footprint",
                format!(
                    "queue alone (daemon.concurrency = {}): peak RSS / RSS, {} queued",
                    f.concurrency,
                    thousands(f.queued)
                ),
                format!("{} / {}", mib(f.memory.peak_rss), mib(f.memory.rss)),
                "",
                None,
            );
            row(
                "footprint",
                "queue alone: disk per queued message".into(),
                format!(
                    "{} B ({} in {} files)",
                    thousands(f.disk_bytes_per_message.round() as u64),
                    mib(f.disk.apparent),
                    f.disk.files
                ),
                "",
                None,
            );
        }
        if let Some(e) = &self.e2e {
            row(
                &e2e,
                format!(
                    "end-to-end, {} messages (first send → last 200)",
                    thousands(e.n)
                ),
                rate(e.per_sec),
                if sled { "≥ 40,000/s" } else { "" },
                sled.then_some(e.per_sec >= 40_000.0),
            );
            row(
                &e2e,
                "accept rate while delivering".into(),
                rate(e.accept_per_sec),
                "",
                None,
            );
            row(
                &e2e,
                "provider saw".into(),
                delivery_cell(&e.delivery),
                "",
                None,
            );
        }
        if let Some(l) = &self.latency {
            row(
                "latency",
                format!("accept p50 / p99 / max at {}/s", thousands(l.rate)),
                pct(&l.accept),
                "p99 ≤ 2 ms",
                Some(l.accept.p99_ms <= 2.0),
            );
            row(
                "latency",
                format!(
                    "accept → sent event p50 / p99 / max at {}/s",
                    thousands(l.rate)
                ),
                pct(&l.accept_to_sent),
                "p99 ≤ 5 ms",
                Some(l.accept_to_sent.p99_ms <= 5.0),
            );
            row(
                "latency",
                "open-loop generator: worst lateness against its schedule".into(),
                ms(l.generator_max_lag_ms),
                "",
                None,
            );
            row(
                "latency",
                "provider saw".into(),
                delivery_cell(&l.delivery),
                "",
                None,
            );
        }
        if let Some(n) = &self.node {
            let what = |client: &str| {
                format!(
                    "{client}: durable accept, {} sends, one connection, {} in flight",
                    thousands(n.n),
                    n.in_flight
                )
            };
            row(
                "node",
                what("herald-client (Rust, postcard)"),
                rate(n.rust_per_sec),
                "",
                None,
            );
            row(
                "node",
                what("@herald/client (Node, JSON)"),
                rate(n.node_per_sec),
                "",
                None,
            );
            row(
                "node",
                "@herald/client ÷ herald-client".into(),
                format!("{:.0}%", n.ratio * 100.0),
                "≥ 50%",
                Some(n.ratio >= 0.5),
            );
        }
        if let Some(r) = &self.recovery {
            row(
                "recovery",
                format!(
                    "restart ({}) with {} queued → first delivery",
                    r.stop,
                    thousands(r.queued)
                ),
                ms(r.to_first_delivery_ms),
                "≤ 5 s",
                Some(r.to_first_delivery_ms <= 5000.0),
            );
            row(
                "recovery",
                "restart → socket answers / → first send acknowledged".into(),
                format!("{} / {}", ms(r.to_socket_ms), ms(r.to_accept_ms)),
                "",
                None,
            );
            row(
                "recovery",
                format!("queue fill with send_batch({})", r.batch),
                format!("{} ({})", rate(r.fill_per_sec), ms(r.fill_secs * 1000.0)),
                "",
                None,
            );
            row(
                "recovery",
                format!("peak RSS / disk with {} queued", thousands(r.queued)),
                format!(
                    "{} / {}",
                    mib(r.memory_before.peak_rss),
                    mib(r.disk_before.apparent)
                ),
                "",
                None,
            );
            row(
                "recovery",
                "drain after restart".into(),
                format!("{} ({})", rate(r.drain_per_sec), ms(r.drain_secs * 1000.0)),
                "",
                None,
            );
            row(
                "recovery",
                "provider saw".into(),
                delivery_cell(&r.delivery),
                "",
                None,
            );
        }
        for (name, v, what) in [
            ("latency20ms", &self.latency20ms, "provider 20 ms"),
            ("errors5", &self.errors5, "provider 5% errors"),
        ] {
            if let Some(e) = &v.e2e {
                let mut note = String::new();
                if name == "latency20ms" && e.mock.latency_ms > 0 {
                    let ceiling =
                        self.params.daemon.concurrency as f64 * 1000.0 / e.mock.latency_ms as f64;
                    note = format!(
                        " ({:.0}% of the {} ceiling of concurrency {} / {} ms)",
                        e.per_sec / ceiling * 100.0,
                        rate(ceiling),
                        self.params.daemon.concurrency,
                        e.mock.latency_ms
                    );
                }
                if name == "errors5"
                    && let Some(base) = &self.e2e
                    && base.per_sec > 0.0
                {
                    note = format!(
                        " ({:.0}% of the error-free rate; {} retries)",
                        e.per_sec / base.per_sec * 100.0,
                        thousands(e.delivery.injected_errors)
                    );
                }
                row(
                    name,
                    format!("end-to-end, {} messages, {what}", thousands(e.n)),
                    format!("{}{note}", rate(e.per_sec)),
                    "",
                    None,
                );
                row(
                    name,
                    "provider saw".into(),
                    delivery_cell(&e.delivery),
                    "",
                    None,
                );
            }
            if let Some(l) = &v.latency {
                row(
                    name,
                    format!("accept p50 / p99 / max at {}/s, {what}", thousands(l.rate)),
                    pct(&l.accept),
                    "",
                    None,
                );
                row(
                    name,
                    format!(
                        "accept → sent p50 / p99 / max at {}/s, {what}",
                        thousands(l.rate)
                    ),
                    pct(&l.accept_to_sent),
                    "",
                    None,
                );
                row(
                    name,
                    "provider saw (latency run)".into(),
                    delivery_cell(&l.delivery),
                    "",
                    None,
                );
            }
        }
        if let Some(st) = &self.streams {
            row(
                "streams",
                format!(
                    "end-to-end, {} messages, {} WebSocket subscribers (one tag each)",
                    thousands(st.n),
                    thousands(st.subscribers as u64)
                ),
                format!(
                    "{} ({:.0}% of {} without subscribers; median of {} paired run{}: {})",
                    rate(st.per_sec),
                    st.ratio * 100.0,
                    rate(st.baseline_per_sec),
                    st.rounds,
                    if st.rounds == 1 { "" } else { "s" },
                    st.ratios
                        .iter()
                        .map(|r| format!("{:.0}%", r * 100.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "≥ 90% of e2e",
                Some(st.ratio >= 0.9),
            );
            row(
                "streams",
                "daemon CPU per message, without / with subscribers (difference per event frame, loopback receive included)".into(),
                format!(
                    "{:.0} µs / {:.0} µs ({:.1} µs)",
                    st.daemon_cpu_us_without, st.daemon_cpu_us_with, st.daemon_cpu_us_per_frame
                ),
                "",
                None,
            );
            row(
                "streams",
                "event at → received by its subscriber, p50 / p99 / max".into(),
                pct(&st.event_latency),
                "",
                None,
            );
            row(
                "streams",
                "events received / expected (foreign)".into(),
                format!(
                    "{} / {} ({})",
                    thousands(st.events_received),
                    thousands(st.events_expected),
                    st.foreign_events
                ),
                "",
                None,
            );
            row(
                "streams",
                "provider saw".into(),
                delivery_cell(&st.delivery),
                "",
                None,
            );
        }
        if let Some(b) = &self.blast {
            row(
                "blast",
                format!(
                    "{} emails, mock Resend at {}/s, batched: first send → last email accepted",
                    thousands(b.n),
                    b.limit_per_sec
                ),
                format!(
                    "{:.1} s ({} requests, up to {} emails each; {} answered 429)",
                    b.secs,
                    thousands(b.accepted_requests),
                    b.largest_batch,
                    thousands(b.rate_limited)
                ),
                "≤ 15 s",
                Some(b.secs <= 15.0),
            );
            row(
                "blast",
                "one critical email sent a fifth of the way in: send → at the mock".into(),
                match b.critical_ms {
                    Some(ms) => format!(
                        "{ms:.0} ms ({} blast emails waiting when it was acknowledged, {} when it arrived)",
                        thousands(b.bulk_waiting_at_critical),
                        thousands(b.bulk_waiting_at_critical_arrival)
                    ),
                    None => "never arrived".into(),
                },
                "",
                None,
            );
            row(
                "blast",
                "one email per request (computed: N ÷ limit, not run)".into(),
                format!("{:.0} s", b.unbatched_secs),
                "",
                None,
            );
            row(
                "blast",
                "emails accepted once / twice / never".into(),
                format!(
                    "{} / {} / {}",
                    thousands(b.delivered),
                    b.duplicated,
                    b.missing
                ),
                "",
                None,
            );
        }
        rows
    }

    /// The results as a markdown table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| scenario | metric | measured | target | |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for r in self.rows() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.scenario, r.metric, r.measured, r.target, r.verdict
            );
        }
        out
    }

    /// Only the rows with a target.
    fn targets(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| target | measured | |");
        let _ = writeln!(out, "| --- | --- | --- |");
        for r in self.rows().into_iter().filter(|r| !r.target.is_empty()) {
            let _ = writeln!(
                out,
                "| {}: {} {} | {} | {} |",
                r.scenario, r.metric, r.target, r.measured, r.verdict
            );
        }
        out
    }

    /// Figures derived from the measurements (never typed in).
    fn derived_md(&self) -> String {
        let mut out = String::new();
        if let (Some(a), Some(q)) = (&self.accept, &self.footprint_queue_only) {
            let f = &a.footprint;
            let held = f.concurrency.saturating_sub(q.concurrency).max(1) as f64;
            let per_delivery = (f.memory.rss as f64 - q.memory.rss as f64) / held;
            let _ = writeln!(
                out,
                "- Memory per delivery held in flight: ≈ {:.0} KiB ((RSS with {} held − RSS with {} held) ÷ {}).",
                per_delivery / 1024.0,
                f.concurrency,
                q.concurrency,
                held
            );
            if let Some(per) = q
                .memory
                .rss
                .saturating_sub(q.idle_rss)
                .checked_div(q.queued)
            {
                let _ = writeln!(
                    out,
                    "- Memory per queued message: ≈ {} B ((RSS of the queue alone − RSS at start) ÷ {} queued).",
                    thousands(per),
                    thousands(q.queued)
                );
            }
        }
        if let Some(r) = &self.recovery
            && r.queued > 0
        {
            let _ = writeln!(
                out,
                "- With {} queued: {} B of RSS and {} B of disk per message before the kill.",
                thousands(r.queued),
                thousands(r.memory_before.rss / r.queued),
                thousands(r.disk_before.apparent / r.queued)
            );
        }
        if let (Some(e), Some(l)) = (&self.e2e, &self.latency)
            && e.accept_per_sec > 0.0
        {
            let _ = writeln!(
                out,
                "- End-to-end runs at {:.0}% of the accept rate measured alongside it ({} vs {}); at {}/s the open-loop accept p50 is {}.",
                e.per_sec / e.accept_per_sec * 100.0,
                rate(e.per_sec),
                rate(e.accept_per_sec),
                thousands(l.rate),
                ms(l.accept.p50_ms)
            );
        }
        if out.is_empty() {
            out.push_str("(none for the scenarios of this run)\n");
        }
        out
    }

    fn problems_md(&self) -> String {
        if self.problems.is_empty() {
            return "None: every acknowledged message reached the provider exactly once in every scenario, no send was refused, and every daemon started, ran and stopped cleanly.\n".into();
        }
        let mut out = String::new();
        for p in &self.problems {
            let _ = writeln!(out, "- {}", p.replace('\n', " ").replace('|', "\\|"));
        }
        out
    }

    /// The whole `BENCHMARKS.md`.
    pub fn markdown(&self, json: &str) -> String {
        const ANALYSIS: &str = include_str!("../ANALYSIS.md");
        let p = &self.params;
        let m = &self.machine;
        let busy = if m.other_busy_processes.is_empty() {
            "none".to_string()
        } else {
            m.other_busy_processes.join(", ")
        };
        let busy_during = if m.other_busy_during_run.is_empty() {
            "none".to_string()
        } else {
            m.other_busy_during_run.join(", ")
        };
        let c = &m.cpu_others;
        let others_cpu = format!(
            "{:.0} CPU-s of {:.0} available ({:.1}%), of which hypervisor steal {:.0} CPU-s",
            c.others_secs,
            c.capacity_secs,
            if c.capacity_secs > 0.0 {
                c.others_secs / c.capacity_secs * 100.0
            } else {
                0.0
            },
            c.steal_secs
        );
        let hint = &self.profile_hint;
        let mut out = String::new();
        let _ = write!(
            out,
            r#"# Herald benchmarks

*{label}.* Generated by `herald-bench --markdown BENCHMARKS.md` from one run on
{date}: every number below was measured by that run, none is typed in by hand — except in
*Where the time goes*, written by hand from the profiles and single runs it names. Re-run
the command under [Reproduce](#reproduce) to regenerate this file.
{smoke}
## Targets vs measured

Targets are for this report only; nothing asserts them (CI runs `--smoke`, which checks
correctness and never timings).

{targets}
## Results

{table}
## Derived

{derived}
## Where the time goes

{analysis}
## Correctness problems seen

{problems}
Daemon warnings (WARN lines of the daemons' logs, timestamps dropped; "n×" = in how many
daemon runs):

{warnings}
## Reproduce

```sh
{command}
```

`herald-bench` builds `heraldd` and the `webhook` plugin itself (`$CARGO build -p herald-daemon
-p herald-webhook`, in the profile the bench was built with: {profile} here) unless
`--heraldd`/`--plugin-dir` are given. This run took {elapsed} on this machine. For a quick
correctness check use `cargo run -p herald-bench -- --smoke` (N = 2,000, a 2 s light phase,
5,000 messages for the restart; debug profile; exits non-zero if a message is lost or
duplicated, a send is refused or the daemon crashes). Other flags: `herald-bench --help`.

## Machine

| | |
| --- | --- |
| date | {date} |
| CPU | {cores} cores, {cpu} |
| memory | {mem} |
| kernel | {kernel} |
| disk | see below; `fdatasync` of 4 KiB p50 / p99 / max: {fsync} |
| load average (1, 5, 15 min) at start → end | {load0} → {load1} |
| other compilers/tests running at start | {busy} |
| other compilers/tests seen during the run (sampled every 2 s) | {busy_during} |
| CPU used outside the benchmark during the run | {others_cpu} |
| daemon source | `{git}` ({profile} build) |

```text
$ df -hT <data dirs>
{df}
$ lsblk -d -o NAME,SIZE,ROTA,TYPE,MODEL
{lsblk}
```

The load generator, the mock provider and `heraldd` share these {cores} cores, so every
number includes the cost of the client and the provider; on a 2-core machine that is a
large share. Every number comes from a single run: on a shared VM, runs differ noticeably
(tail latencies most), so compare runs made the same way on a quiet machine (the two rows
above say how quiet this one was), not single figures.

## Method

One `herald-bench` process runs the load generator (the Rust `herald-client`, postcard
codec) and the mock provider (hyper HTTP/1.1 on 127.0.0.1, `POST` → `200
{{"id":"mock-<n>"}}`, optional delay, optional `503` rate, or *paused*: requests held
unanswered). Each scenario starts a **fresh `heraldd`** (new temporary data dir, sled,
group commit with one flush per batch) whose routes send every channel to the `webhook`
plugin pointed at the mock, drives its **real Unix socket**, then stops it with SIGTERM
(a failed graceful stop is reported as a problem). The message is a ~300-byte email
(postcard-encoded: recipient, sender, subject, a 200-character text, two tags).

Daemon config: `daemon.concurrency = {conc}`, `daemon.max_queue = {maxq}`, default
`cache_capacity` (32 MiB); `[retry] base = "100ms"`, `cap = "2s"`, `max_attempts = 12`;
provider `timeout = "1h"` (so held requests never time out into retries); breaker default
(5 consecutive failures, 30 s).

Load: closed loop = {conns} connections × {pipe} requests in flight each ({inflight} in
flight), a new `send` as soon as one is acknowledged. Open loop = {rate} sends/s for
{lsecs} s, each send its own task, round-robin over the {conns} connections, so a slow
answer never delays the next send.

Exactly once: the mock counts `200` answers per Herald message id (the `id` the webhook
plugin posts). After each delivering scenario the bench waits until the mock has
answered every acknowledged id, then until the daemon reports nothing active, waits
300 ms more, and requires: every acknowledged id answered `200` exactly once, no other
id, and the daemon's own count of `sent` messages equal to the number acknowledged.

| scenario | what is measured | start | stop |
| --- | --- | --- | --- |
| accept | acknowledged `send`s per second, N = {n}, closed loop; provider **paused**, so after the first {conc} claims the dispatcher is idle and the accept path is measured alone | first `send` handed to the client | last acknowledgement received |
| footprint | the accept run's daemon: {n} messages waiting ({conc} of them held at the provider as `sending`, the rest `queued`). Peak RSS = `VmHWM` of the heraldd process from `/proc/<pid>/status` (the peak over start-up and the whole fill); disk = sum of file sizes under the data dir ÷ messages waiting. Then the same fill into a fresh daemon with `daemon.concurrency = 1` ("queue alone"): one delivery held instead of {conc}, which separates the cost of the queue from that of the deliveries in flight | start of the daemon | 1 s after the last acknowledgement |
| e2e | delivered messages per second, N = {n}, closed loop, provider answering at once; the rate is N ÷ the interval | first `send` handed to the client | the mock's `200` for the N-th distinct id |
| latency | open loop {rate}/s for {lsecs} s. *accept*: per send. *accept → sent*: a subscriber on its own connection (`subscribe(kinds = [sent])`, started before the load) timestamps each `sent` event on arrival; matched by message id | accept: `send` handed to the client; accept → sent: acknowledgement received | accept: acknowledgement received; accept → sent: `sent` event received (0 if it came first) |
| recovery | {rn} messages queued with `send_batch({batch})` (provider paused), then **SIGKILL** (a crash: sled recovers from its log and the {conc} leased messages are re-queued). The provider is un-paused (held requests answered `503` and not counted), then heraldd is started again on the same data dir | new heraldd process spawned | *socket*: first client handshake; *accept*: one new `send` acknowledged; *first delivery*: the mock's first `200` |
| recovery drain | the whole queue is then delivered and checked exactly once | first delivery after the restart | last delivery |
| latency20ms | e2e and latency again, the mock delaying every answer by {slow} ms: throughput is bounded by concurrency ÷ latency ({conc} ÷ {slow} ms) | as e2e / latency | as e2e / latency |
| errors5 | e2e and latency again, the mock answering {err}% of requests `503` (→ `Retry` with backoff, full jitter from 100 ms); retried messages must still arrive exactly once | as e2e / latency | as e2e / latency |
| node | only with `--scenario node`: acknowledged `send`s per second as in accept, but on **one** connection with `--connections` × `--pipeline` sends in flight (the accept scenario's total), first with herald-client (postcard), then with `@herald/client` (`client/node/bench/accept.mjs`, JSON), each on a fresh daemon; the ratio is the Node client's share of the Rust client's rate | first `send` handed to the client | last acknowledgement received |
| blast | only with `--scenario blast`: 10,000 emails (`send_batch` of 1,000) through the real **Resend** plugin against a mock Resend that accepts 10 requests per second and answers `429 rate_limit_exceeded` (`retry-after`) beyond; the provider is configured `rate_limit = "10/s"`, `burst = 1`, and batches (`POST /emails/batch`, up to 100 emails) by default. Each email must reach the mock exactly once (by its `herald_id` tag). Once a fifth of them have, one email in lane `critical` is sent: its time from `send` to the mock, and how many blast emails were still waiting, are reported. The time one email per request would take is computed (N ÷ 10/s = 1,000 s), not run | first `send_batch` handed to the client | the mock's `200` for the request holding the last new email |
| streams | e2e again with WebSocket subscribers on `GET /v1/events` (`--subscribers`, 1,000), each with a token scoped to its own tag (message i is tagged for subscriber i mod S); `--streams-rounds` pairs (5) of an e2e run without, then one with subscribers, back to back: the median of the pairs' ratios; the daemon's CPU per delivered message (`/proc/<pid>/stat`) in each; event latency at the subscriber; each subscriber must receive exactly the `queued`, `sending`, `sent` events of its own messages | as e2e; per event: its `at` (daemon wall clock, ms) | as e2e; the frame received (wall clock) |

With `--store postgres` (a separate run; the rows name the engine and the daemon count)
only accept and e2e run, each on **a PostgreSQL database of its own** created on the
`--pg-url` server for that scenario run and dropped after it; `--daemons` daemons
(`[store] kind = "postgres"`, default `pool_size` and `lease`) share it, the connections are
dealt over them round-robin, and all of them deliver to the one mock, which counts exactly
once across them. Footprint is then the first daemon's RSS and `pg_database_size`.

Why *paused* = held requests: it builds a queue of undelivered messages with no retry
churn (a `503`/connection-refused provider would move every message through
`sending → deferred` again and again, writing events, and open the breaker). Holding
keeps {conc} messages `sending` and everything else `queued`, which is what an operator's
queue looks like while a provider is slow or down and the backlog grows.

## Profiling the daemon

Tool: **{tool}**. {pnote}

```sh
{pcmds}
```

`--wrap` runs heraldd under the given command (split on spaces); everything else about the
scenario is unchanged.

## Raw results

<details><summary>JSON written by this run</summary>

```json
{json}
```

</details>
"#,
            label = self.label,
            smoke = if self.smoke {
                "\n**Smoke run** (N = 2,000, short phases): a correctness check, not a benchmark.\n"
            } else {
                ""
            },
            date = m.date_utc,
            targets = self.targets(),
            table = self.table(),
            problems = self.problems_md(),
            derived = self.derived_md(),
            analysis = ANALYSIS,
            warnings = if self.daemon_warnings.is_empty() {
                "none\n".to_string()
            } else {
                self.daemon_warnings
                    .iter()
                    .map(|w| format!("- `{}`\n", w.replace('`', "'")))
                    .collect::<String>()
            },
            command = self.command,
            elapsed = minutes(self.elapsed_secs),
            cores = m.cores,
            cpu = m.cpu_model,
            mem = m.memory_total,
            kernel = m.kernel,
            df = m.disk_df,
            lsblk = m.disk_lsblk,
            fsync = pct(&m.fsync),
            busy_during = busy_during,
            others_cpu = others_cpu,
            load0 = m.loadavg_start,
            load1 = m.loadavg_end,
            git = m.git,
            profile = self.binaries.profile,
            conc = p.daemon.concurrency,
            maxq = thousands(p.daemon.max_queue),
            conns = p.connections,
            pipe = p.pipeline,
            inflight = p.connections * p.pipeline,
            rate = thousands(p.rate),
            lsecs = p.latency_secs,
            n = thousands(p.n),
            rn = thousands(p.recovery_n),
            batch = p.batch,
            slow = p.slow_ms,
            err = p.error_rate * 100.0,
            tool = hint.tool,
            pnote = hint.note,
            pcmds = hint.commands.join("\n"),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(rate(50_000.4), "50,000/s");
        assert_eq!(ms(1.234), "1.23 ms");
        assert_eq!(ms(123.4), "123 ms");
        assert_eq!(ms(12_345.0), "12.3 s");
        assert_eq!(mib(64 << 20), "64.0 MiB");
        assert_eq!(minutes(59.4), "59 s");
        assert_eq!(minutes(872.0), "14 min 32 s");
    }
}
