//! `heraldd`: parse flags, set up logging, load the config, run (or `--check`, or
//! `--check-store`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herald_daemon::config::Config;
use herald_daemon::daemon;
use herald_daemon::plugin::Loader;
use herald_daemon::store_check;

/// sled allocates on every insert; jemalloc is much cheaper than glibc malloc for that
/// pattern and returns memory when idle (measured against glibc and mimalloc in
/// BENCHMARKS.md). Plugins keep their own allocator: every buffer crosses the ABI as a
/// copy and is freed by the side that made it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(name = "heraldd", version, about = "The Herald delivery daemon.")]
struct Args {
    /// Config file (TOML). Without it, the embedded default (etc/herald.toml) is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the config and every provider's plugin and settings, then exit.
    #[arg(long, conflicts_with = "check_store")]
    check: bool,
    /// Check the store of a stopped daemon against its indexes and counts, repair what is
    /// wrong, print the report, then exit: 0 when consistent or repaired, 1 otherwise.
    /// Refuses while a daemon uses the data_dir.
    #[arg(long)]
    check_store: bool,
    /// Log format on stderr.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args.log_format);
    let config = match &args.config {
        Some(path) => Config::load(path),
        None => Config::embedded(),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("invalid config: {e}");
            eprintln!("heraldd: invalid config: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_store {
        return match store_check::check_stopped(&config) {
            Ok(report) => {
                #[allow(clippy::print_stdout)]
                {
                    print!("{report}");
                }
                if report.unrepaired() == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("heraldd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.check {
        let mut loader = Loader::new(&config.daemon.plugin_dir);
        return match daemon::build_routing(&config, &mut loader, &Default::default()) {
            Ok(routing) => {
                eprintln!("heraldd: {} is valid", config.source_name);
                if let Some(t) = &config.templates {
                    eprintln!(
                        "  templates: {} in {} ({})",
                        t.set.len(),
                        t.dir.display(),
                        t.set.names().collect::<Vec<_>>().join(", ")
                    );
                }
                for p in routing.providers.values() {
                    eprintln!(
                        "  provider {} (plugin {} {}): {}",
                        p.name,
                        p.plugin,
                        p.manifest.version,
                        p.manifest
                            .channels
                            .iter()
                            .map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                for (channel, route) in &routing.routes {
                    eprintln!(
                        "  route {channel}: {}",
                        route
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(" → ")
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("heraldd: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("heraldd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heraldd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(config, args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("heraldd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
