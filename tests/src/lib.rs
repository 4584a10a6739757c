//! The end-to-end test harness: a [`Daemon`] fixture that builds the real binaries and
//! plugins, starts the real `heraldd` in a temporary directory with its own socket, and a
//! scriptable [`mock::MockProvider`] on 127.0.0.1.
//!
//! ```no_run
//! # async fn demo() {
//! use herald_tests::{Daemon, mock::MockProvider};
//! let mock = MockProvider::start().await;
//! let daemon = Daemon::builder().webhook_provider(&mock).start().await;
//! let client = daemon.client().await;
//! # }
//! ```
//!
//! `cargo test` does not produce cdylib files, so the fixture runs `$CARGO build` for the
//! daemon, the CLI and every plugin once per test process, with the test's own profile.
#![allow(clippy::print_stderr, clippy::unwrap_used, clippy::expect_used)]

pub mod http;
pub mod mock;
pub mod node;
pub mod pg;
pub mod raw;
pub mod smtp;
pub mod tools;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use herald_client::Client;
use herald_plugin_api::{Content, EmailContent, Event, SmsContent};
use herald_protocol::{Filter, SendMessage};
use tempfile::TempDir;

use crate::mock::MockProvider;

/// Every package the end-to-end tests need built.
const PACKAGES: &[&str] = &[
    "herald-daemon",
    "herald-client",
    "herald-outbox",
    "herald-webhook",
    "herald-resend",
    "herald-sendgrid",
    "herald-twilio",
    "herald-fcm",
    "herald-apns",
    "herald-smtp",
    "herald-testpanicky",
    "herald-testbadabi",
];

/// The directory holding the binaries and plugins of the current profile
/// (`target/debug`), derived from this test executable's path (`target/debug/deps/..`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Builds the daemon, the CLI and every plugin (once per process) and returns
/// [`bin_dir`].
pub fn ensure_built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = bin_dir();
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build").arg("--quiet");
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        for p in PACKAGES {
            cmd.args(["-p", p]);
        }
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "building the binaries and plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

pub fn heraldd_path() -> PathBuf {
    ensure_built().join("heraldd")
}

pub fn herald_path() -> PathBuf {
    ensure_built().join("herald")
}

/// Builds a daemon configuration around the fixture's own paths.
#[derive(Debug, Default, Clone)]
pub struct Builder {
    data_dir: Option<PathBuf>,
    daemon: Vec<String>,
    retry: Vec<String>,
    body: Vec<String>,
    env: Vec<(String, String)>,
    http_port: Option<u16>,
    admin_port: Option<u16>,
}

/// The stream-token secret [`Builder::realtime`] exports (as `HERALD_TOKEN_SECRET`).
pub const TOKEN_SECRET: &str = "e2e-token-secret-e2e-token-secret-0123";

impl Builder {
    /// Puts the data directory somewhere else than the fixture's temporary directory (e.g.
    /// on a small filesystem the test mounted).
    pub fn data_dir(mut self, dir: &Path) -> Builder {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// An extra line in `[daemon]`, e.g. `max_queue = 10`.
    pub fn daemon(mut self, line: &str) -> Builder {
        self.daemon.push(line.to_string());
        self
    }

    /// An extra line in `[retry]` (overrides the fast test defaults).
    pub fn retry(mut self, line: &str) -> Builder {
        self.retry.push(line.to_string());
        self
    }

    /// Raw TOML after the fixture's sections: `[[providers]]`, `[routes]`, `[webhooks]`.
    pub fn config(mut self, toml: &str) -> Builder {
        self.body.push(toml.to_string());
        self
    }

    /// A `webhook` provider named `hook` posting to the mock, routed for every channel.
    pub fn webhook_provider(self, mock: &MockProvider) -> Builder {
        self.config(&format!(
            "[[providers]]\nname = \"hook\"\nplugin = \"webhook\"\nurl = \"{}/notify\"\n\n[routes]\nemail = [\"hook\"]\nsms = [\"hook\"]\npush = [\"hook\"]\n",
            mock.url()
        ))
    }

    /// The public listener (`[webhooks] listen`) on a free port, with `[realtime]` (the
    /// secret [`TOKEN_SECRET`] from the environment) plus `extra` lines in that section.
    pub fn realtime(mut self, extra: &str) -> Builder {
        let port = free_port();
        self.http_port = Some(port);
        self.env
            .push(("HERALD_TOKEN_SECRET".into(), TOKEN_SECRET.into()));
        self.config(&format!(
            "[webhooks]\nlisten = \"127.0.0.1:{port}\"\n\n[realtime]\ntoken_secret = \"${{HERALD_TOKEN_SECRET}}\"\n{extra}\n"
        ))
    }

    /// The admin listener on a free port.
    pub fn admin(mut self) -> Builder {
        let port = free_port();
        self.admin_port = Some(port);
        self.config(&format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"))
    }

    pub fn env(mut self, key: &str, value: &str) -> Builder {
        self.env.push((key.into(), value.into()));
        self
    }

    fn render(&self, dir: &Path) -> String {
        let mut retry = vec![
            "base = \"50ms\"",
            "cap = \"200ms\"",
            "max_attempts = 3",
            "ttl = \"1h\"",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        for line in &self.retry {
            let key = line.split('=').next().unwrap_or("").trim();
            retry.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
            retry.push(line.clone());
        }
        let mut daemon = vec!["shutdown_grace = \"2s\"".to_string()];
        for line in &self.daemon {
            let key = line.split('=').next().unwrap_or("").trim();
            daemon.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
            daemon.push(line.clone());
        }
        format!(
            "[daemon]\ndata_dir = \"{data}\"\nsocket = \"{d}/herald.sock\"\nplugin_dir = \"{p}\"\n{extra}\n\n[retry]\n{retry}\n\n{body}\n",
            data = self.data_dir_in(dir).display(),
            d = dir.display(),
            p = ensure_built().display(),
            extra = daemon.join("\n"),
            retry = retry.join("\n"),
            body = self.body.join("\n"),
        )
    }

    fn data_dir_in(&self, dir: &Path) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| dir.join("data"))
    }

    /// Writes the config, starts `heraldd` and waits until it answers on its socket.
    pub async fn start(self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("herald-e2e-")
            .tempdir()
            .expect("tempdir");
        let config = self.render(dir.path());
        let config_path = dir.path().join("herald.toml");
        std::fs::write(&config_path, &config).expect("write config");
        let mut d = Daemon {
            socket: dir.path().join("herald.sock"),
            data_dir: self.data_dir_in(dir.path()),
            log_path: dir.path().join("heraldd.log"),
            config_path,
            env: self.env,
            http_port: self.http_port,
            admin_port: self.admin_port,
            dir,
            child: None,
        };
        d.spawn();
        d.wait_ready().await;
        d
    }
}

/// A running `heraldd` in its own temporary directory. Killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    env: Vec<(String, String)>,
    /// `[webhooks] listen` port, when [`Builder::realtime`] set it.
    pub http_port: Option<u16>,
    /// `[admin] listen` port, when [`Builder::admin`] set it.
    pub admin_port: Option<u16>,
    child: Option<Child>,
}

impl Daemon {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts the process without waiting for it to be ready.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log");
        let mut cmd = Command::new(heraldd_path());
        cmd.arg("--config")
            .arg(&self.config_path)
            .env("HERALD_LOG", "info,herald_daemon=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn heraldd"));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until the daemon accepts a client; panics with its log if it exits or takes
    /// longer than a minute.
    pub async fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("heraldd exited during start-up ({status}):\n{}", self.log());
            }
            if Client::connect(&self.socket).await.is_ok() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "heraldd did not become ready within a minute:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket)
            .await
            .expect("connect to heraldd")
    }

    /// The daemon's peak resident memory (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc/<pid>/status")
            * 1024
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        self.stop().status.is_some_and(|s| s.success())
    }

    /// SIGTERM, then waits up to 30 s for the exit (SIGKILL after that): the exit status
    /// (`None` if it had to be killed) and how long the exit took.
    pub fn stop(&mut self) -> Stopped {
        let started = std::time::Instant::now();
        let Some(mut child) = self.child.take() else {
            return Stopped {
                status: None,
                took: Duration::ZERO,
            };
        };
        // kill(1) rather than libc::kill keeps this crate free of unsafe code.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let status = wait_child(&mut child, Duration::from_secs(30));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Stopped {
            status,
            took: started.elapsed(),
        }
    }

    /// Waits for a process started with [`Daemon::spawn`] to exit by itself (a start-up that
    /// must fail): its status, or `None` (and it is killed) if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let status = wait_child(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }

    /// Starts the daemon again on the same data dir and socket.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    /// Rewrites the config file (for reload tests).
    pub fn write_config(&self, builder: &Builder) {
        std::fs::write(&self.config_path, builder.render(self.dir.path())).expect("write config");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The `herald` CLI pointed at this daemon.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(herald_path());
        cmd.arg("--socket").arg(&self.socket);
        cmd
    }
}

/// How a [`Daemon::stop`] went.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// `None` when it did not exit within 30 s and was killed.
    pub status: Option<std::process::ExitStatus>,
    pub took: Duration,
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => return None,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small email to `to`.
pub fn email(to: &str, subject: &str) -> SendMessage {
    SendMessage {
        to: to.into(),
        content: Content::Email(EmailContent {
            subject: subject.into(),
            text: Some(format!("{subject} — body")),
            ..Default::default()
        }),
        tags: vec![],
        idempotency_key: None,
        send_at: None,
        override_suppression: false,
        lane: Default::default(),
        template: None,
        vars: Default::default(),
    }
}

pub fn sms(to: &str, body: &str) -> SendMessage {
    SendMessage {
        to: to.into(),
        content: Content::Sms(SmsContent {
            body: body.into(),
            ..Default::default()
        }),
        tags: vec![],
        idempotency_key: None,
        send_at: None,
        override_suppression: false,
        lane: Default::default(),
        template: None,
        vars: Default::default(),
    }
}

/// Collects events of one message until one of `until` kinds arrives (or panics after
/// `timeout`), replaying from the start of the log.
pub async fn events_until(
    client: &Client,
    message_id: &str,
    until: &[&str],
    timeout: Duration,
) -> Vec<Event> {
    let filter = Filter {
        message_id: Some(message_id.to_string()),
        ..Default::default()
    };
    let mut sub = client.subscribe(filter, Some(0)).await.expect("subscribe");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, sub.next_event()).await {
            Ok(Some(Ok(e))) => {
                let done = until.contains(&e.kind.as_str());
                seen.push(e);
                if done {
                    return seen;
                }
            }
            Ok(other) => panic!("subscription ended: {other:?}; events so far: {seen:#?}"),
            Err(_) => panic!(
                "no {until:?} event for {message_id} within {timeout:?}; events: {:?}",
                seen.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>()
            ),
        }
    }
}

/// The kinds of `events`, as strings.
pub fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

/// Asserts that nothing is queued, deferred or being sent. After a message reached its final
/// state this proves no retry or late delivery can follow, without waiting to see one.
pub async fn assert_idle(client: &Client) {
    let stats = client.stats().await.expect("stats");
    assert_eq!(
        stats.active, 0,
        "messages still queued, deferred or in flight: {:?}",
        stats.states
    );
}

/// Wall-clock Unix milliseconds (as the daemon stamps events).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A TCP port on 127.0.0.1 that was free a moment ago (see [`pg::free_port`]; it lives
/// there because the daemon's unit tests include that file on its own).
pub use pg::free_port;
