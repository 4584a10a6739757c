//! The real `heraldd` under test: finding (or building) the binaries, writing a config
//! whose routes send every channel to the `webhook` plugin pointed at the mock, starting
//! the process in a temporary directory, stopping it (SIGTERM or SIGKILL), and reading
//! its footprint (peak RSS from `/proc/<pid>/status`, bytes of its data dir).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use herald_client::Client;
use serde::Serialize;

/// Where the daemon and the plugin come from.
#[derive(Debug, Clone, Serialize)]
pub struct Binaries {
    pub heraldd: PathBuf,
    pub plugin_dir: PathBuf,
    /// Cargo profile they were built with (`release`, `debug`, ...), or `external`.
    pub profile: String,
}

/// The directory of this executable (`target/<profile>`), where cargo also puts
/// `heraldd` and `libherald_webhook.so` of the same profile.
fn own_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the herald-bench executable")?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))
}

/// Uses `--heraldd` / `--plugin-dir` when given; otherwise builds `herald-daemon` and
/// `herald-webhook` with `$CARGO build` in the profile this benchmark was built with, and
/// uses the results next to this executable.
pub fn locate(heraldd: Option<PathBuf>, plugin_dir: Option<PathBuf>) -> Result<Binaries> {
    let bins = match heraldd {
        Some(heraldd) => {
            let plugin_dir = match plugin_dir {
                Some(d) => d,
                None => heraldd
                    .parent()
                    .map(Path::to_path_buf)
                    .ok_or_else(|| anyhow!("{} has no parent directory", heraldd.display()))?,
            };
            Binaries {
                heraldd,
                plugin_dir,
                profile: "external".into(),
            }
        }
        None => {
            let dir = own_dir()?;
            let profile = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("debug")
                .to_string();
            build(&profile)?;
            Binaries {
                heraldd: dir.join("heraldd"),
                plugin_dir: plugin_dir.unwrap_or(dir),
                profile,
            }
        }
    };
    if !bins.heraldd.is_file() {
        bail!(
            "{} does not exist; build it (cargo build --release -p herald-daemon) or pass --heraldd",
            bins.heraldd.display()
        );
    }
    let plugin = bins.plugin_dir.join("libherald_webhook.so");
    if !plugin.is_file() {
        bail!(
            "{} does not exist; build it (cargo build --release -p herald-webhook) or pass --plugin-dir",
            plugin.display()
        );
    }
    Ok(bins)
}

fn build(profile: &str) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("build");
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    cmd.args([
        "-p",
        "herald-daemon",
        "-p",
        "herald-webhook",
        "-p",
        "herald-resend",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    eprintln!(
        "herald-bench: building heraldd and the webhook and resend plugins ({profile} profile) ..."
    );
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cargo} build"))?;
    if !status.success() {
        bail!(
            "`{cargo} build -p herald-daemon -p herald-webhook -p herald-resend` ({profile}) failed: {status}"
        );
    }
    Ok(())
}

/// What the config says beyond the fixed parts.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonSettings {
    /// `daemon.concurrency`: deliveries in flight.
    pub concurrency: usize,
    /// `daemon.max_queue`.
    pub max_queue: u64,
    /// A command the daemon runs under (e.g. `valgrind --tool=callgrind`), split on
    /// whitespace.
    pub wrap: Option<String>,
    /// Keep the temporary directory (data, config, log) after the run.
    pub keep: bool,
    /// Parent of the temporary directories.
    pub work_dir: Option<PathBuf>,
    /// The public listener's port with `[realtime]` (streams scenario), or none.
    pub http_port: Option<u16>,
    /// `[[providers]]` and `[routes]` instead of the mock `webhook` provider (blast: the
    /// Resend plugin).
    pub provider: Option<String>,
    /// `[store] kind = "postgres"` on the database this connection string names (given
    /// to the daemon as `HERALD_PG_URL`; never written to the report: it may hold a
    /// password); `None`: the default sled store in the data dir.
    #[serde(skip)]
    pub pg_url: Option<String>,
}

/// The stream-token secret of the bench's daemons (`HERALD_TOKEN_SECRET`).
pub const TOKEN_SECRET: &str = "herald-bench-token-secret-0123456789";

/// The config every scenario uses. `[retry]` is short so that the error scenario measures
/// retries rather than waiting; the provider timeout is long so that requests the mock
/// holds (paused) never time out into retries.
pub fn render_config(dir: &Path, plugin_dir: &Path, mock_url: &str, s: &DaemonSettings) -> String {
    format!(
        r#"# Written by herald-bench.
[daemon]
data_dir = "{d}/data"
socket = "{d}/herald.sock"
plugin_dir = "{p}"
max_queue = {max_queue}
concurrency = {concurrency}
shutdown_grace = "2s"

[retry]
base = "100ms"
cap = "2s"
max_attempts = 12
ttl = "1h"

{providers}{store}{realtime}"#,
        d = dir.display(),
        p = plugin_dir.display(),
        max_queue = s.max_queue,
        concurrency = s.concurrency,
        providers = match &s.provider {
            Some(toml) => toml.clone(),
            None => format!(
                "[[providers]]\nname = \"mock\"\nplugin = \"webhook\"\nurl = \"{mock_url}/notify\"\ntimeout = \"1h\"\n\n[routes]\nemail = [\"mock\"]\nsms = [\"mock\"]\npush = [\"mock\"]\n"
            ),
        },
        store = if s.pg_url.is_some() {
            "\n[store]\nkind = \"postgres\"\nurl = \"${HERALD_PG_URL}\"\n"
        } else {
            ""
        },
        realtime = match s.http_port {
            Some(port) => format!(
                "\n[webhooks]\nlisten = \"127.0.0.1:{port}\"\n# streams take one connection each; keep room for webhooks\nmax_connections = 4200\n\n[realtime]\ntoken_secret = \"${{HERALD_TOKEN_SECRET}}\"\nmax_streams = 4096\n"
            ),
            None => String::new(),
        },
    )
}

/// Memory of the daemon process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// `VmHWM`: peak resident set size, bytes.
    pub peak_rss: u64,
    /// `VmRSS`: resident set size now, bytes.
    pub rss: u64,
}

/// Size of the data directory.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Disk {
    /// Sum of file lengths.
    pub apparent: u64,
    /// Sum of allocated blocks (sparse or preallocated files differ from `apparent`).
    pub allocated: u64,
    pub files: u64,
}

/// A `heraldd` process in its own temporary directory. Killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    config_path: PathBuf,
    heraldd: PathBuf,
    wrap: Option<String>,
    /// `HERALD_PG_URL` for a daemon on PostgreSQL.
    pg_url: Option<String>,
    child: Option<Child>,
    /// Holds the temporary directory (removed on drop unless kept).
    dir: Option<tempfile::TempDir>,
    kept: Option<PathBuf>,
}

impl Daemon {
    /// Writes the config and starts the daemon; returns once it answers on its socket.
    pub async fn start(bins: &Binaries, mock_url: &str, s: &DaemonSettings) -> Result<Daemon> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("herald-bench-");
        let dir = match &s.work_dir {
            Some(parent) => {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
                builder.tempdir_in(parent)
            }
            None => builder.tempdir(),
        }
        .context("cannot create a temporary directory for the daemon")?;
        let path = dir.path().to_path_buf();
        let config_path = path.join("herald.toml");
        std::fs::write(
            &config_path,
            render_config(&path, &bins.plugin_dir, mock_url, s),
        )
        .with_context(|| format!("cannot write {}", config_path.display()))?;
        let (dir, kept) = if s.keep {
            (None, Some(dir.keep()))
        } else {
            (Some(dir), None)
        };
        let mut d = Daemon {
            socket: path.join("herald.sock"),
            data_dir: path.join("data"),
            log_path: path.join("heraldd.log"),
            config_path,
            heraldd: bins.heraldd.clone(),
            wrap: s.wrap.clone(),
            pg_url: s.pg_url.clone(),
            child: None,
            dir,
            kept,
        };
        d.spawn()?;
        d.wait_ready(Duration::from_secs(120)).await?;
        Ok(d)
    }

    /// The temporary directory, when `--keep` kept it.
    pub fn kept_dir(&self) -> Option<&Path> {
        self.kept.as_deref()
    }

    /// Starts the process (again, on the same data dir) without waiting.
    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("cannot open {}", self.log_path.display()))?;
        let mut words: Vec<String> = self
            .wrap
            .as_deref()
            .map(|w| w.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        words.push(self.heraldd.display().to_string());
        let mut cmd = Command::new(&words[0]);
        // Its own process group, so that signals reach a wrapper's child too (`perf record
        // -- heraldd` forks). The bench kills the group when it is interrupted.
        cmd.process_group(0)
            .args(&words[1..])
            .arg("--config")
            .arg(&self.config_path)
            .env("NO_COLOR", "1")
            .env("HERALD_TOKEN_SECRET", TOKEN_SECRET)
            // The blast scenario's Resend provider (a mock: any key works).
            .env("HERALD_BENCH_RESEND_KEY", "re_bench_mock_key")
            .envs(self.pg_url.iter().map(|u| ("HERALD_PG_URL", u)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", words.join(" ")))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls the socket until a client handshake succeeds.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            let attempt =
                tokio::time::timeout(Duration::from_secs(5), Client::connect(&self.socket));
            if matches!(attempt.await, Ok(Ok(_))) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "heraldd did not answer on {} within {timeout:?}\n{}",
                    self.socket.display(),
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// An error (with the end of the daemon's log) if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.child = None;
            bail!(
                "heraldd exited unexpectedly ({status})\n{}",
                self.log_tail(30)
            );
        }
        if self.child.is_none() {
            bail!("heraldd is not running");
        }
        Ok(())
    }

    /// SIGKILL to the daemon's process group: no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, "KILL");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to the daemon's process group, then wait up to `timeout` for a graceful
    /// exit (SIGKILL after that).
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("heraldd is not running");
        };
        signal_group(&child, "TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                signal_group(&child, "KILL");
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "heraldd did not stop within {timeout:?} of SIGTERM; killed\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn memory(&self) -> Result<Memory> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("heraldd is not running"))?;
        read_memory(pid)
    }

    pub fn disk(&self) -> Result<Disk> {
        let mut d = Disk::default();
        walk(&self.data_dir, &mut d)?;
        Ok(d)
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!("--- end of {} ---\n{tail}", self.log_path.display())
    }

    /// Lines of the log at WARN level, without timestamps (for the report).
    pub fn log_warnings(&self) -> Vec<String> {
        warning_lines(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// Lines of the log at ERROR level, and panics (for the report).
    pub fn log_problems(&self) -> Vec<String> {
        problem_lines(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        drop(self.dir.take());
    }
}

/// `text` without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// WARN lines of a daemon log, without their timestamps.
fn warning_lines(log: &str) -> Vec<String> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains(" WARN "))
        .map(|l| {
            let l = l.split_once(' ').map_or(l, |(_, rest)| rest).trim();
            l.chars().take(240).collect()
        })
        .collect()
}

/// ERROR lines and panic messages of a daemon log.
fn problem_lines(log: &str) -> Vec<String> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains("panicked"))
        .map(String::from)
        .collect()
}

/// Sends `SIG<signal>` to the process group `child` leads. kill(1) rather than
/// libc::kill keeps this crate free of unsafe code.
fn signal_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{}", child.id()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// CPU time `pid` has used, all its threads, user and system (`/proc/<pid>/stat`, in
/// clock ticks of 10 ms: Linux's USER_HZ is 100 on every architecture it reports to user
/// space with).
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name (which may hold spaces, so split after its `)`):
    // state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .ok_or_else(|| anyhow!("{path}: no field {i}"))?
            .parse()
            .with_context(|| format!("{path}: field {i}"))
    };
    Ok((ticks(14)? + ticks(15)?) as f64 / 100.0)
}

/// `VmHWM` and `VmRSS` of `pid`.
pub fn read_memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow!("{path} has no {name}"))?;
        let kb: u64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("cannot parse {line:?} in {path}"))?;
        Ok(kb * 1024)
    };
    Ok(Memory {
        peak_rss: field("VmHWM:")?,
        rss: field("VmRSS:")?,
    })
}

fn walk(dir: &Path, d: &mut Disk) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(&entry.path(), d)?;
        } else {
            d.apparent += meta.len();
            d.allocated += meta.blocks() * 512;
            d.files += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_valid_and_routes_every_channel_to_the_mock() {
        use herald_daemon::config::Config;
        use herald_plugin_api::Channel;
        let s = DaemonSettings {
            concurrency: 1024,
            max_queue: 2_000_000,
            wrap: None,
            keep: false,
            work_dir: None,
            http_port: None,
            provider: None,
            pg_url: None,
        };
        let streams = render_config(
            Path::new("/tmp/x"),
            Path::new("/p"),
            "http://127.0.0.1:1",
            &DaemonSettings {
                http_port: Some(9),
                ..s.clone()
            },
        );
        let c = Config::parse(&streams, "bench", &|k| {
            (k == "HERALD_TOKEN_SECRET").then(|| TOKEN_SECRET.to_string())
        })
        .unwrap();
        assert_eq!(c.realtime.unwrap().max_streams, 4096);
        let text = render_config(
            Path::new("/tmp/x"),
            Path::new("/p"),
            "http://127.0.0.1:1",
            &s,
        );
        let c = Config::parse(&text, "bench", &|_| None).unwrap();
        for ch in Channel::ALL {
            assert_eq!(c.routes[&ch], vec!["mock".to_string()]);
        }
        assert_eq!(c.daemon.concurrency, 1024);
        assert_eq!(c.daemon.max_queue, 2_000_000);
        assert_eq!(c.providers[0].plugin, "webhook");
        let pg = render_config(
            Path::new("/tmp/x"),
            Path::new("/p"),
            "http://127.0.0.1:1",
            &DaemonSettings {
                pg_url: Some("host=127.0.0.1 dbname=b".into()),
                ..s.clone()
            },
        );
        let c = Config::parse(&pg, "bench", &|k| {
            (k == "HERALD_PG_URL").then(|| "host=127.0.0.1 dbname=b".to_string())
        })
        .unwrap();
        assert!(c.store.lease_ms() > 0);
        assert!(matches!(
            c.store,
            herald_daemon::config::StoreConfig::Postgres { .. }
        ));
        assert_eq!(
            c.providers[0].settings["url"],
            serde_json::json!("http://127.0.0.1:1/notify")
        );
    }

    #[test]
    fn finds_error_lines_in_a_coloured_log() {
        let log = "\u{1b}[2m2026-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m ready\n\
                   \u{1b}[2m2026-01-01T00:00:01Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m \u{1b}[2mheraldd\u{1b}[0m: boom\n\
                   thread 'x' panicked at src/a.rs:1:1\n";
        let lines = problem_lines(log);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], "2026-01-01T00:00:01Z ERROR heraldd: boom");
        let warn = "2026-01-01T00:00:02Z  WARN herald_daemon::daemon: slow\n";
        assert_eq!(
            warning_lines(warn),
            vec!["WARN herald_daemon::daemon: slow"]
        );
    }

    #[test]
    fn reads_own_memory() {
        let m = read_memory(std::process::id()).unwrap();
        assert!(m.peak_rss >= m.rss && m.rss > 0);
    }
}
