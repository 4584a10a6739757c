//! The PostgreSQL test harness: a server to run against and a fresh database per test.
//!
//! The server is, in this order: the one named by `HERALD_TEST_PG_URL`; else a local one on
//! 127.0.0.1:5432 if it answers (user `postgres`, trust auth: the project's machines run
//! one); else a private one started with the system's `initdb` / `pg_ctl` in a temporary
//! directory (as the `postgres` or `nobody` user via `runuser` when running as root), which
//! a watchdog stops when the test process exits. `HERALD_TEST_PG_PRIVATE=1` skips the
//! first two (to test the last). Each [`TestDb`] is a database of its own, created on
//! `new` and dropped (`WITH (FORCE)`) on drop.
//!
//! Shared by the daemon's unit tests (included by path from `daemon/src/store/postgres`)
//! and the end-to-end tests (`herald_tests::pg`); it uses only `tokio-postgres`, `tokio`
//! and std, which both crates have. Owns: the server choice and the test databases. Must
//! not: know Herald's schema (the engine migrates its database itself).
#![allow(
    dead_code,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A server's connection parameters, without a database name.
#[derive(Debug, Clone)]
pub struct Server {
    config: tokio_postgres::Config,
    /// Kept so the private server's directory lives as long as the process.
    _dir: Option<PathBuf>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT: AtomicU64 = AtomicU64::new(0);

/// The server every test of this process uses (chosen once).
pub fn server() -> &'static Server {
    SERVER.get_or_init(choose)
}

fn choose() -> Server {
    let private = std::env::var("HERALD_TEST_PG_PRIVATE").is_ok_and(|v| v == "1");
    if !private {
        if let Ok(url) = std::env::var("HERALD_TEST_PG_URL")
            && !url.is_empty()
        {
            let config = tokio_postgres::Config::from_str(&url)
                .unwrap_or_else(|e| panic!("HERALD_TEST_PG_URL is not a PostgreSQL URL: {e}"));
            return Server { config, _dir: None };
        }
        let local: SocketAddr = "127.0.0.1:5432".parse().expect("address");
        if TcpStream::connect_timeout(&local, Duration::from_secs(2)).is_ok() {
            let mut config = tokio_postgres::Config::new();
            config.host("127.0.0.1").port(5432).user("postgres");
            return Server { config, _dir: None };
        }
    }
    start_private()
}

/// Finds a PostgreSQL binary: on PATH, else in Debian's versioned directories.
fn pg_bin(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    for v in versions.iter().rev() {
        let p = v.join("bin").join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "no PostgreSQL server for the tests: set HERALD_TEST_PG_URL, run one on 127.0.0.1:5432, \
         or install the `postgresql` package (no `{name}` found)"
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a PostgreSQL tool, as an unprivileged user when we are root (the server refuses
/// to run as root).
fn run_as(user: Option<&str>, tool: &PathBuf, args: &[&str]) -> Command {
    match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.arg("-u").arg(user).arg("--").arg(tool).args(args);
            c
        }
        None => {
            let mut c = Command::new(tool);
            c.args(args);
            c
        }
    }
}

fn start_private() -> Server {
    let initdb = pg_bin("initdb");
    let pg_ctl = pg_bin("pg_ctl");
    let user = is_root().then(|| {
        let has_postgres = Command::new("id")
            .arg("postgres")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if has_postgres { "postgres" } else { "nobody" }
    });
    let dir = std::env::temp_dir().join(format!(
        "herald-test-pg-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create the private server's directory");
    if let Some(user) = user {
        let ok = Command::new("chown")
            .arg(user)
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot chown {} to {user}", dir.display());
    }
    let data = dir.join("data");
    let data_s = data.to_string_lossy().to_string();
    let out = run_as(
        user,
        &initdb,
        &[
            "-D",
            &data_s,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
    )
    .output()
    .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let opts = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
        dir.to_string_lossy()
    );
    let log = dir.join("server.log").to_string_lossy().to_string();
    let out = run_as(
        user,
        &pg_ctl,
        &["-D", &data_s, "-o", &opts, "-l", &log, "-w", "start"],
    )
    .output()
    .expect("run pg_ctl start");
    assert!(
        out.status.success(),
        "pg_ctl start failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Stop it when this process exits (statics are never dropped).
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {user}{pg_ctl} -D {data_s} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        user = user
            .map(|u| format!("runuser -u {u} -- "))
            .unwrap_or_default(),
        pg_ctl = pg_ctl.to_string_lossy(),
        dir = dir.to_string_lossy(),
    );
    let _ = Command::new("sh")
        .arg("-c")
        .arg(stop)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(port).user("postgres");
    Server {
        config,
        _dir: Some(dir),
    }
}

/// Runs one admin statement on the server's `postgres` database, on a thread of its own
/// (so it works inside or outside a tokio runtime).
fn admin(sql: String) -> Result<(), String> {
    let mut config = server().config.clone();
    config.dbname("postgres");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let (client, conn) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let conn = tokio::spawn(conn);
            let r = client.batch_execute(&sql).await.map_err(|e| e.to_string());
            drop(client);
            let _ = conn.await;
            r
        })
    })
    .join()
    .map_err(|_| "admin thread panicked".to_string())?
}

/// A database of its own for one test; dropped with it.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    /// A connection string naming the database (key=value form).
    pub url: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        let name = format!(
            "herald_test_{}_{}_{:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        admin(format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
        TestDb {
            url: url_for(&name),
            name,
        }
    }
}

impl Default for TestDb {
    fn default() -> Self {
        TestDb::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = admin(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )) {
            eprintln!("cannot drop the test database {}: {e}", self.name);
        }
    }
}

/// A key=value connection string for database `name` on the server.
pub fn url_for(name: &str) -> String {
    let c = &server().config;
    let mut parts = Vec::new();
    if let Some(host) = c.get_hosts().first() {
        match host {
            tokio_postgres::config::Host::Tcp(h) => parts.push(format!("host={h}")),
            tokio_postgres::config::Host::Unix(p) => {
                parts.push(format!("host={}", p.to_string_lossy()))
            }
        }
    }
    if let Some(port) = c.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = c.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(pw) = c.get_password() {
        parts.push(format!("password='{}'", String::from_utf8_lossy(pw)));
    }
    parts.push(format!("dbname={name}"));
    parts.join(" ")
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a listener the daemon (or a
/// server the test starts) will bind later.
///
/// Taken *below* the kernel's ephemeral range: a port the kernel handed out for
/// `bind(0)` and that was released may be handed out again at once as the source port of
/// any outgoing connection (a client of a mock, a PostgreSQL connection), and the daemon's
/// later `bind` then fails with "Address already in use". Ports below the range are never
/// chosen by the kernel; a per-process start and a counter keep parallel test processes
/// apart, and each candidate is bound once to check nobody holds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low().clamp(2_048, 65_535);
    let base = 1_024u32;
    let span = low - base;
    let start = (std::process::id() * 97) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port below the ephemeral range ({low})");
}

/// The first port of `net.ipv4.ip_local_port_range` (Linux's default is 32768).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
