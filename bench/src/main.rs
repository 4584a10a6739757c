//! `herald-bench`: measures `heraldd` end to end on this machine — durable accept
//! throughput, end-to-end throughput, latency under light load, footprint with a large
//! queue, restart with a very large queue, and the same with a slow and a flaky provider —
//! and prints the results as a markdown table (stdout), JSON (`--json`) and the whole
//! `BENCHMARKS.md` (`--markdown`).
//!
//! ```text
//! cargo run --release -p herald-bench -- --json bench.json --markdown BENCHMARKS.md
//! cargo run -p herald-bench -- --smoke            # CI: correctness only, N = 2,000
//! cargo run --release -p herald-bench -- --store postgres --daemons 2 --n 20000
//! herald-bench mock --listen 127.0.0.1:9900       # a mock provider on its own
//! ```
//!
//! `--smoke` exits non-zero when a message is lost or duplicated at the mock, a send is
//! refused, or a daemon crashes or fails to stop; so does a full run. Timings are never
//! judged. See `BENCHMARKS.md` for what each scenario measures.

mod blast;
mod daemon;
mod load;
mod mock;
mod pg;
mod report;
mod scenarios;
mod streams;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::daemon::DaemonSettings;
use crate::mock::{Mock, Settings};
use crate::report::{Machine, ProfileHint, Report};
use crate::scenarios::{Ctx, Params, Variant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Every scenario below.
    All,
    /// Durable accept throughput (provider paused); also measures the footprint.
    Accept,
    /// End-to-end throughput: first send → last provider 200, checked exactly once.
    E2e,
    /// Open loop at --rate: accept and accept → sent latency.
    Latency,
    /// Peak RSS and disk per message with N queued (same run as accept).
    Footprint,
    /// Restart after SIGKILL with --recovery-n queued: time to accept and to dispatch.
    Recovery,
    /// e2e and latency with the provider answering after 20 ms.
    #[value(name = "latency20ms")]
    Latency20ms,
    /// e2e and latency with 5% of provider answers 503.
    Errors5,
    /// The Node client (@herald/client) against the Rust client: accept rate of each on one
    /// connection with the same requests in flight, provider paused. Needs Node.js 20+ and
    /// the package built (`cd client/node && npm ci && npm run build`); not part of `all`.
    Node,
    /// e2e again with --subscribers WebSocket subscribers (one tag each): throughput
    /// against e2e, event latency at the subscribers.
    Streams,
    /// 10,000 emails through the Resend plugin against a mock Resend allowing 10
    /// requests/s: time with provider batches (the time without is computed: N / 10 s).
    /// Not part of `all`.
    Blast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    /// The default: one daemon, sled in its data dir.
    Sled,
    /// `[store] kind = "postgres"`: --daemons daemons on one database of their own per
    /// scenario run (created on the --pg-url server, dropped after). Runs accept and e2e.
    Postgres,
}

#[derive(Debug, Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Benchmark heraldd over its real Unix socket against a fast mock provider.",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Messages for the accept, end-to-end and footprint scenarios.
    #[arg(long, default_value_t = 100_000)]
    n: u64,
    /// Correctness check for CI: N = 2,000, a 2 s light phase, 5,000 for the restart
    /// (overrides --n, --latency-secs and --recovery-n).
    /// Exits non-zero on a lost or duplicated message, a refused send or a crash.
    #[arg(long)]
    smoke: bool,
    /// Which scenarios to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    scenario: Vec<Scenario>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a complete BENCHMARKS.md (method, machine, tables, command) to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// A label for the report, e.g. "baseline before the performance pass".
    #[arg(long, default_value = "herald-bench run")]
    label: String,
    /// The heraldd to run (default: build it with cargo in this binary's profile).
    #[arg(long)]
    heraldd: Option<PathBuf>,
    /// Where libherald_webhook.so is (default: next to heraldd).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Use a mock already running (`herald-bench mock`) instead of starting one here.
    #[arg(long)]
    mock_url: Option<String>,
    /// Client connections to the socket.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests in flight per connection in the closed-loop scenarios.
    #[arg(long, default_value_t = 64)]
    pipeline: usize,
    /// The daemon's delivery concurrency (daemon.concurrency).
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// Messages queued before the restart in the recovery scenario.
    #[arg(long, default_value_t = 1_000_000)]
    recovery_n: u64,
    /// Messages per send_batch when filling the recovery queue (the daemon allows 1000).
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Open-loop rate of the latency scenarios, sends per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Open-loop duration of the latency scenarios, seconds.
    #[arg(long, default_value_t = 20.0)]
    latency_secs: f64,
    /// WebSocket subscribers of the streams scenario (--smoke: 50).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Pairs of runs (without, then with subscribers) of the streams scenario; the ratio
    /// reported is their median (--smoke: 1). On a shared 2-core machine one pair's ratio
    /// varies by ±8 points: five pairs keep the median within a few.
    #[arg(long, default_value_t = 5)]
    streams_rounds: usize,
    /// Run heraldd under this command, e.g. "valgrind --tool=callgrind".
    #[arg(long)]
    wrap: Option<String>,
    /// Keep each daemon's temporary directory (config, data, log) for inspection.
    #[arg(long)]
    keep: bool,
    /// Parent directory for the daemons' temporary directories (default: $TMPDIR or /tmp).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The store engine of the daemons under test. `postgres` runs the accept and e2e
    /// scenarios only.
    #[arg(long, value_enum, default_value = "sled")]
    store: StoreKind,
    /// The PostgreSQL server for --store postgres (its database part is ignored: the bench
    /// creates and drops a database per scenario run; needs CREATEDB).
    #[arg(
        long,
        env = "HERALD_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/",
        hide_env_values = true
    )]
    pg_url: String,
    /// Daemons sharing the database with --store postgres (the load's connections are
    /// dealt over them; every daemon delivers to the one mock). 1 with sled.
    #[arg(long, default_value_t = 1)]
    daemons: usize,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run only the mock provider, until killed or --exit-after.
    Mock {
        #[arg(long, default_value = "127.0.0.1:9900")]
        listen: SocketAddr,
        /// Delay before every answer, milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Fraction of requests answered 503.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 3600)]
        exit_after: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Interrupted: dropping `run` drops every running daemon, which kills its process
    // group and removes its temporary directory.
    let result = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo run` with this binary's own profile, for the commands in the report.
fn cargo_run() -> String {
    let profile = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()
                .and_then(|d| d.file_name())
                .and_then(|n| n.to_str())
                .map(String::from)
        })
        .unwrap_or_else(|| "release".into());
    match profile.as_str() {
        "debug" => "cargo run -p herald-bench --".into(),
        "release" => "cargo run --release -p herald-bench --".into(),
        other => format!("cargo run --profile {other} -p herald-bench --"),
    }
}

/// The command line as typed, for the report.
fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| {
            if a.contains(' ') || a.is_empty() {
                format!("\"{a}\"")
            } else {
                a
            }
        })
        .collect();
    format!("{} {}", cargo_run(), args.join(" "))
}

#[allow(clippy::print_stdout)] // The table on stdout is this tool's output.
fn print_table(table: &str) {
    println!("{table}");
}

async fn run(args: Args) -> Result<bool> {
    if let Some(Cmd::Mock {
        listen,
        latency_ms,
        error_rate,
        exit_after,
    }) = args.command
    {
        let mock = Mock::start(listen).await?;
        mock.set(Settings {
            latency_ms,
            error_rate,
            paused: false,
        })
        .await?;
        eprintln!(
            "herald-bench: mock provider on {} (POST anything → 200; control under /_bench/); stopping after {exit_after} s",
            mock.url()
        );
        tokio::time::sleep(Duration::from_secs(exit_after)).await;
        return Ok(true);
    }

    let mut a = args;
    if a.smoke {
        a.n = 2_000;
        a.latency_secs = 2.0;
        a.recovery_n = 5_000;
        a.subscribers = a.subscribers.min(50);
        a.streams_rounds = 1;
    }
    if a.n == 0 || a.recovery_n == 0 || a.rate == 0 || a.latency_secs <= 0.0 {
        bail!("--n, --recovery-n, --rate and --latency-secs must be positive");
    }
    if a.connections == 0 || a.pipeline == 0 || a.concurrency == 0 {
        bail!("--connections, --pipeline and --concurrency must be at least 1");
    }
    if !(1..=1000).contains(&a.batch) {
        bail!("--batch must be between 1 and 1000 (the daemon's limit)");
    }
    let on_postgres = a.store == StoreKind::Postgres;
    if on_postgres {
        if !(1..=8).contains(&a.daemons) {
            bail!("--daemons must be between 1 and 8");
        }
        if a.connections < a.daemons {
            bail!("--connections must be at least --daemons (each daemon gets its share)");
        }
        let other: Vec<&Scenario> = a
            .scenario
            .iter()
            .filter(|s| !matches!(s, Scenario::All | Scenario::Accept | Scenario::E2e))
            .collect();
        if !other.is_empty() {
            bail!(
                "--store postgres runs the accept and e2e scenarios only, not {other:?}; run the others with --store sled"
            );
        }
    } else if a.daemons != 1 {
        bail!("--daemons applies to --store postgres only (sled: one daemon per data dir)");
    }
    let want = |s: Scenario| {
        (a.scenario.contains(&Scenario::All) || a.scenario.contains(&s))
            && (!on_postgres || matches!(s, Scenario::Accept | Scenario::E2e))
    };

    let command = command_line();
    let run_started = std::time::Instant::now();
    let bins = daemon::locate(a.heraldd.clone(), a.plugin_dir.clone())?;
    let mock = match &a.mock_url {
        Some(url) => {
            let m = Mock::remote(url)?;
            m.snapshot()
                .await
                .with_context(|| format!("cannot reach the mock at {url}"))?;
            m
        }
        None => Mock::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?,
    };
    let work_parent = a.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let machine = Machine::probe(&work_parent);
    if !machine.other_busy_processes.is_empty() {
        eprintln!(
            "herald-bench: note: other busy processes are running and will skew the numbers: {}",
            machine.other_busy_processes.join(", ")
        );
    }
    let params = Params {
        n: a.n,
        connections: a.connections,
        pipeline: a.pipeline,
        rate: a.rate,
        latency_secs: a.latency_secs,
        recovery_n: a.recovery_n,
        batch: a.batch,
        slow_ms: 20,
        error_rate: 0.05,
        daemon: DaemonSettings {
            concurrency: a.concurrency,
            max_queue: (a.n.max(a.recovery_n) + 10_000) * 2,
            wrap: a.wrap.clone(),
            keep: a.keep,
            work_dir: a.work_dir.clone(),
            http_port: None,
            provider: None,
            pg_url: None,
        },
        // A daemon under valgrind is ~50x slower.
        request_timeout: Duration::from_secs(if a.wrap.is_some() { 120 } else { 30 }),
        store: if on_postgres { "postgres" } else { "sled" }.into(),
        daemons: a.daemons,
        pg_server: on_postgres.then(|| a.pg_url.clone()),
    };
    let meter = report::CpuMeter::start();
    let mut ctx = Ctx {
        params: params.clone(),
        bins: bins.clone(),
        mock: mock.clone(),
        problems: Vec::new(),
        warnings: Default::default(),
    };

    macro_rules! attempt {
        ($name:expr, $e:expr) => {
            match $e {
                Ok(v) => Some(v),
                Err(e) => {
                    let msg = format!("{:#}", e);
                    eprintln!("herald-bench: PROBLEM in {}: {}", $name, msg);
                    ctx.problems
                        .push(format!("{}: scenario failed: {}", $name, msg));
                    None
                }
            }
        };
    }

    let accept = if want(Scenario::Accept) || want(Scenario::Footprint) {
        attempt!("accept", ctx.accept().await)
    } else {
        None
    };
    let footprint_queue_only = if want(Scenario::Footprint) {
        attempt!("footprint", ctx.footprint_queue_only().await)
    } else {
        None
    };
    let e2e = if want(Scenario::E2e) {
        attempt!("e2e", ctx.e2e("e2e", Settings::default()).await)
    } else {
        None
    };
    let latency = if want(Scenario::Latency) {
        attempt!("latency", ctx.latency("latency", Settings::default()).await)
    } else {
        None
    };
    let recovery = if want(Scenario::Recovery) {
        attempt!("recovery", ctx.recovery().await)
    } else {
        None
    };
    let mut latency20ms = Variant::default();
    if want(Scenario::Latency20ms) {
        let slow = Settings {
            latency_ms: params.slow_ms,
            ..Settings::default()
        };
        latency20ms.e2e = attempt!("latency20ms", ctx.e2e("latency20ms", slow).await);
        latency20ms.latency = attempt!("latency20ms", ctx.latency("latency20ms", slow).await);
    }
    let mut errors5 = Variant::default();
    if want(Scenario::Errors5) {
        let flaky = Settings {
            error_rate: params.error_rate,
            ..Settings::default()
        };
        errors5.e2e = attempt!("errors5", ctx.e2e("errors5", flaky).await);
        errors5.latency = attempt!("errors5", ctx.latency("errors5", flaky).await);
    }

    // Only when asked for by name: it needs Node.js and the built package.
    let node = if a.scenario.contains(&Scenario::Node) {
        let package = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/node");
        if package.join("dist/index.js").exists() {
            attempt!(
                "node",
                ctx.node_accept(&package.join("bench/accept.mjs")).await
            )
        } else {
            let msg = format!(
                "node: scenario failed: {} is not built; run `npm ci && npm run build` there first",
                package.display()
            );
            eprintln!("herald-bench: PROBLEM in {msg}");
            ctx.problems.push(msg);
            None
        }
    } else {
        None
    };
    let streams = if want(Scenario::Streams) {
        attempt!(
            "streams",
            ctx.streams(a.subscribers.max(1), a.streams_rounds).await
        )
    } else {
        None
    };

    // Only when asked for by name: a fixed-size run that measures batching.
    let blast = if a.scenario.contains(&Scenario::Blast) {
        attempt!("blast", ctx.blast().await)
    } else {
        None
    };

    let mut machine = machine;
    machine.loadavg_end = report::loadavg();
    (machine.cpu_others, machine.other_busy_during_run) = meter.finish();
    let bench_cmd = "cargo run --release -p herald-bench --";
    let elapsed_secs = run_started.elapsed().as_secs_f64();
    let report = Report {
        label: a.label.clone(),
        command,
        elapsed_secs,
        smoke: a.smoke,
        machine,
        params,
        binaries: bins,
        mock_url: mock.url().to_string(),
        accept,
        footprint_queue_only,
        e2e,
        latency,
        recovery,
        latency20ms,
        errors5,
        node,
        streams,
        blast,
        problems: ctx.problems.clone(),
        daemon_warnings: ctx
            .warnings
            .iter()
            .map(|(line, n)| format!("{n}× {line}"))
            .collect(),
        profile_hint: ProfileHint::probe(bench_cmd),
    };
    print_table(&report.table());
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &a.json {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("herald-bench: wrote {}", path.display());
    }
    if let Some(path) = &a.markdown {
        std::fs::write(path, report.markdown(&json))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("herald-bench: wrote {}", path.display());
    }
    if report.problems.is_empty() {
        eprintln!("herald-bench: no correctness problems");
        Ok(true)
    } else {
        eprintln!(
            "herald-bench: {} correctness problem(s):",
            report.problems.len()
        );
        for p in &report.problems {
            eprintln!("  - {}", p.lines().next().unwrap_or(""));
        }
        Ok(false)
    }
}
