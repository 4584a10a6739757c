//! Configuration: the TOML file (or the embedded default) parsed into a [`RawConfig`]
//! (serde, unknown keys refused), then validated into a [`Config`]. Nothing past
//! [`Config::parse`] sees unvalidated input.
//!
//! Owns: key names and defaults, duration/size parsing, `${ENV}` resolution for provider
//! keys. Does not load plugins (that is `providers`, which also checks plugin-specific keys
//! and secrets against each manifest).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use herald_plugin_api::{Channel, RecipientRules, Secret};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::rsvp::{RsvpConfig, RsvpTable};
use crate::space::MinFree;

/// The embedded default config: `etc/herald.toml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../etc/herald.toml");

/// Keys of a `[[providers]]` table that the host owns; every other key goes to the plugin.
pub const HOST_PROVIDER_KEYS: [&str; 10] = [
    "name",
    "plugin",
    "rate_limit",
    "breaker",
    "timeout",
    "failover_after",
    "max_in_flight",
    "burst",
    "batch",
    "batch_max",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    socket_mode: Option<toml::Value>,
    plugin_dir: Option<PathBuf>,
    max_frame: Option<toml::Value>,
    max_message: Option<toml::Value>,
    max_queue: Option<u64>,
    concurrency: Option<usize>,
    cache_capacity: Option<toml::Value>,
    retention: Option<String>,
    idempotency_window: Option<String>,
    shutdown_grace: Option<String>,
    max_connections: Option<u64>,
    max_unread_bytes: Option<toml::Value>,
    min_free: Option<toml::Value>,
    storage_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    listen: String,
    public_url: Option<String>,
    max_body: Option<toml::Value>,
    max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRealtime {
    token_secret: String,
    max_token_ttl: Option<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    max_streams: Option<usize>,
    client_buffer: Option<usize>,
    stall_timeout: Option<String>,
    keepalive: Option<String>,
    flush_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    #[serde(default)]
    allow_remote: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    base: Option<String>,
    cap: Option<String>,
    max_attempts: Option<u32>,
    ttl: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: Option<String>,
    url: Option<String>,
    pool_size: Option<usize>,
    lease: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplates {
    dir: PathBuf,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    rsvp: Option<RsvpConfig>,
}

/// The file as written: shape checked, values not yet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    webhooks: Option<RawWebhooks>,
    realtime: Option<RawRealtime>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    providers: Vec<toml::Table>,
    #[serde(default)]
    routes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    recipients: RecipientRules,
    #[serde(default)]
    inbound: RawInbound,
    #[serde(default)]
    store: RawStore,
    templates: Option<RawTemplates>,
}

/// `[inbound.rsvp]` as written, and the keyword table built from it (at load and reload:
/// a table that does not build is a config error).
#[derive(Debug, Clone)]
pub struct RsvpSetting {
    pub config: RsvpConfig,
    pub table: Arc<RsvpTable>,
}

/// `[templates]`: the folder (resolved against the config file's folder) and every
/// template in it, compiled at load and reload (a template that does not compile is a
/// config error, so a reload with a broken one keeps the running set).
#[derive(Debug, Clone, PartialEq)]
pub struct TemplatesSetting {
    pub dir: PathBuf,
    pub set: Arc<herald_templates::stored::StoredTemplates>,
}

impl PartialEq for RsvpSetting {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub plugin_dir: PathBuf,
    pub max_frame: u32,
    /// Bound on one message's encoded size (content, recipient, tags).
    pub max_message: usize,
    /// Messages waiting or in flight above which sends are refused with `busy`.
    pub max_queue: u64,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// sled page cache in bytes.
    pub cache_capacity: u64,
    /// How long finished messages and events are kept.
    pub retention_ms: u64,
    pub idempotency_window_ms: u64,
    pub shutdown_grace_ms: u64,
    /// Socket connections open at once; one more is answered `busy` and closed.
    pub max_connections: u64,
    /// Per connection, bytes of answers and events not yet read by the client; beyond it
    /// the daemon stops reading that connection's requests until the client reads.
    pub max_unread_bytes: usize,
    /// Free space kept on the data directory's filesystem; below it sends get
    /// `storage_full` (see `space`).
    pub min_free: MinFree,
    /// A commit or flush that takes longer marks the store failed (see `commit`).
    pub storage_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhooksConfig {
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub max_body: usize,
    /// HTTP connections the public listener serves at once (webhooks and browser streams);
    /// past it the listener stops accepting until one closes.
    pub max_connections: usize,
}

/// `[store]`: where messages, the queue and the event log live.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// The embedded default: sled under `daemon.data_dir` (one daemon).
    Sled,
    /// A PostgreSQL database several daemons share (`store::postgres`).
    Postgres {
        /// The connection URL, usually from `${HERALD_PG_URL}`. Holds a password: never
        /// logged (`Debug` prints `***`; `store::postgres::redact` gives a loggable form).
        url: Secret,
        /// Connections in the pool.
        pool_size: usize,
        /// How long a claimed message stays leased to the daemon sending it without a
        /// renewal (the daemon renews every third of it while the delivery lasts); past it
        /// any daemon may take it back.
        lease_ms: u64,
    },
}

impl StoreConfig {
    /// How long the dispatcher leases what it claims.
    pub fn lease_ms(&self) -> u64 {
        match self {
            // One daemon: leases matter only across a restart, which returns them all.
            StoreConfig::Sled => 5 * 60_000,
            StoreConfig::Postgres { lease_ms, .. } => *lease_ms,
        }
    }
}

/// The default `webhooks.max_connections`.
pub const DEFAULT_WEBHOOK_CONNECTIONS: usize = 4096;

/// `[realtime]`: browser event streams (`GET /v1/events` on the webhook listener) and the
/// tokens that scope them.
#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeConfig {
    /// Signs and verifies stream tokens (HS256). Only from `${ENV}`; `Debug` prints `***`.
    pub token_secret: Secret,
    /// The longest lifetime a token may have (minting refuses more; verifying refuses a
    /// token whose `exp` is further away).
    pub max_token_ttl_ms: u64,
    /// Browser origins allowed to open a stream (`scheme://host[:port]`). A request with
    /// any other `Origin` gets 403; requests without one (servers, CLIs) are not browsers.
    pub allowed_origins: Vec<String>,
    /// Open streams at once (WebSocket and SSE together); more get 503.
    pub max_streams: usize,
    /// Events queued for one client beyond what its socket holds.
    pub client_buffer: usize,
    /// A client whose buffer stays full this long is closed with where to resume.
    pub stall_timeout_ms: u64,
    /// WebSocket ping / SSE comment interval.
    pub keepalive_ms: u64,
    /// A busy stream's frames are written together at most this often (one write, one
    /// wake-up of the client, for the events of that interval); a stream quiet for this long
    /// writes its next event at once. 0 writes every event at once.
    pub flush_interval_ms: u64,
}

/// The defaults of `[realtime]`'s stream settings, also used by the admin listener's stream
/// when there is no `[realtime]` section.
pub const DEFAULT_CLIENT_BUFFER: usize = 256;
pub const DEFAULT_STALL_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_KEEPALIVE_MS: u64 = 25_000;
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 250;

/// `[admin]`: the operator listener (`/metrics`, `/healthz`, `/readyz`, the status page).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// The default `[admin] listen`.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8026";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub base_ms: u64,
    pub cap_ms: u64,
    pub max_attempts: u32,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// How long an open breaker refuses calls before its first trial calls.
    pub cooldown_ms: u64,
    /// The cap of the cooldown, which doubles with every trip that follows a failed trial
    /// (at least `cooldown_ms`).
    pub max_cooldown_ms: u64,
    /// Opens when at least this share of the last `window` calls failed (and at least
    /// `min_calls` were made); `None`: only consecutive failures trip it.
    pub ratio: Option<f64>,
    /// The rolling window of calls the ratio is taken over.
    pub window: u32,
    /// The fewest calls in the window before the ratio can trip.
    pub min_calls: u32,
    /// Trial calls admitted once the cooldown is over; all must succeed to close.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            cooldown_ms: 30_000,
            max_cooldown_ms: 300_000,
            ratio: None,
            window: 20,
            min_calls: 10,
            probes: 1,
        }
    }
}

/// One `[[providers]]` entry.
#[derive(Clone, PartialEq)]
pub struct ProviderSpec {
    pub name: String,
    pub plugin: String,
    /// Plugin keys with `${ENV}` references resolved. Holds secrets: never log it.
    pub settings: serde_json::Map<String, Json>,
    /// Keys whose value came (wholly or partly) from an `${ENV}` reference.
    pub env_keys: BTreeSet<String>,
    pub rate_limit: Option<RateLimit>,
    pub breaker: BreakerConfig,
    pub timeout_ms: u64,
    /// After this many transient failures of one message here (counted by its attempts),
    /// the message's next attempt starts at the route's next provider; `None`: never.
    pub failover_after: Option<u32>,
    /// The most requests to this provider at once (`None`: only the daemon's concurrency).
    pub max_in_flight: Option<u32>,
    /// `batch = false` sends every message alone even when the plugin can batch them
    /// (default `true`: batch whenever the plugin can).
    pub batch: bool,
    /// `batch_max`: the most messages per batch request, capped by the plugin's own limit.
    pub batch_max: Option<u32>,
}

impl std::fmt::Debug for ProviderSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSpec")
            .field("name", &self.name)
            .field("plugin", &self.plugin)
            .field("keys", &self.settings.keys().collect::<Vec<_>>())
            .field("rate_limit", &self.rate_limit)
            .field("breaker", &self.breaker)
            .field("timeout_ms", &self.timeout_ms)
            .field("failover_after", &self.failover_after)
            .field("max_in_flight", &self.max_in_flight)
            .field("batch", &self.batch)
            .field("batch_max", &self.batch_max)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source_name: String,
    pub daemon: DaemonConfig,
    pub webhooks: Option<WebhooksConfig>,
    pub realtime: Option<RealtimeConfig>,
    pub admin: Option<AdminConfig>,
    pub retry: RetryPolicy,
    pub providers: Vec<ProviderSpec>,
    pub routes: BTreeMap<Channel, Vec<String>>,
    /// How recipients are compared (`[recipients]`); the store keys with it from start.
    pub recipients: RecipientRules,
    /// The storage engine (`[store]`); fixed at start.
    pub store: StoreConfig,
    /// How replies are read as RSVPs (`[inbound.rsvp]`; absent: every built-in table).
    pub rsvp: RsvpSetting,
    /// Stored templates a send may name (`[templates]`; absent: the feature is off).
    pub templates: Option<TemplatesSetting>,
}

pub use herald_plugin_api::duration::parse_duration_ms;

/// Parses a byte size: an integer, or a string like `"64KiB"`, `"1MiB"`, `"2GiB"`.
fn parse_size(v: &toml::Value) -> Result<u64, String> {
    match v {
        toml::Value::Integer(n) if *n >= 0 => Ok(*n as u64),
        toml::Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: u64 = num
                .parse()
                .map_err(|_| format!("{s:?} is not a size like 65536, \"64KiB\" or \"1MiB\""))?;
            let mult = match unit.trim() {
                "" | "B" => 1,
                "KiB" | "KB" | "K" => 1 << 10,
                "MiB" | "MB" | "M" => 1 << 20,
                "GiB" | "GB" | "G" => 1 << 30,
                other => return Err(format!("{s:?}: unknown unit {other:?} (use KiB, MiB, GiB)")),
            };
            n.checked_mul(mult)
                .ok_or_else(|| format!("{s:?} is too large"))
        }
        other => Err(format!(
            "a {} is not a size like 65536 or \"1MiB\"",
            other.type_str()
        )),
    }
}

/// Parses `daemon.min_free`: a size (`"256MiB"`, `268435456`) or a percentage of the
/// filesystem (`"5%"`). 0 turns the reserve off.
fn parse_min_free(v: &toml::Value) -> Result<MinFree, String> {
    match v {
        toml::Value::String(s) if s.trim_end().ends_with('%') => MinFree::parse_percent(s),
        v => parse_size(v)
            .map(MinFree::Bytes)
            .map_err(|e| format!("{e}, or a percentage of the filesystem like \"5%\"")),
    }
}

/// Parses `"10/s"`, `"600/m"`, `"5000/h"`.
fn parse_rate(s: &str) -> Result<RateLimit, String> {
    let (n, per) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a rate like \"10/s\" or \"600/m\""))?;
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate like \"10/s\" or \"600/m\""))?;
    let secs = match per.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{s:?}: the unit after / must be s, m or h")),
    };
    if !(n > 0.0 && n.is_finite()) {
        return Err(format!("{s:?}: the rate must be positive"));
    }
    let per_sec = n / secs;
    Ok(RateLimit {
        per_sec,
        burst: per_sec.max(1.0),
    })
}

/// Parses a provider's `breaker = { ... }` table.
fn parse_breaker(mut b: toml::Table) -> Result<BreakerConfig, String> {
    let mut cfg = BreakerConfig::default();
    let positive = |b: &mut toml::Table, key: &str| -> Result<Option<u32>, String> {
        b.remove(key)
            .map(|v| {
                v.as_integer()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("breaker.{key} must be a positive integer"))
            })
            .transpose()
    };
    let duration = |b: &mut toml::Table, key: &str| -> Result<Option<u64>, String> {
        b.remove(key)
            .map(|v| {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("breaker.{key} must be a duration like \"30s\""))?;
                parse_duration_ms(s).map_err(|e| format!("breaker.{key} {e}"))
            })
            .transpose()
    };
    if let Some(n) = positive(&mut b, "failures")? {
        cfg.failures = n;
    }
    if let Some(ms) = duration(&mut b, "cooldown")? {
        cfg.cooldown_ms = ms;
    }
    let max_cooldown = duration(&mut b, "max_cooldown")?;
    cfg.max_cooldown_ms = max_cooldown.unwrap_or(cfg.max_cooldown_ms.max(cfg.cooldown_ms));
    if cfg.max_cooldown_ms < cfg.cooldown_ms {
        return Err(format!(
            "breaker.max_cooldown ({} ms) is shorter than breaker.cooldown ({} ms)",
            cfg.max_cooldown_ms, cfg.cooldown_ms
        ));
    }
    if let Some(v) = b.remove("ratio") {
        let r = v
            .as_float()
            .or_else(|| v.as_integer().map(|n| n as f64))
            .filter(|r| *r > 0.0 && *r <= 1.0)
            .ok_or("breaker.ratio must be a number in (0, 1], like 0.5")?;
        cfg.ratio = Some(r);
    }
    if let Some(n) = positive(&mut b, "window")? {
        cfg.window = n;
    }
    if let Some(n) = positive(&mut b, "min_calls")? {
        cfg.min_calls = n;
    } else {
        cfg.min_calls = cfg.min_calls.min(cfg.window);
    }
    if cfg.min_calls > cfg.window {
        return Err(format!(
            "breaker.min_calls ({}) exceeds breaker.window ({}): the ratio could never trip",
            cfg.min_calls, cfg.window
        ));
    }
    if cfg.window > 10_000 {
        return Err("breaker.window is at most 10000 calls".into());
    }
    if let Some(n) = positive(&mut b, "probes")? {
        cfg.probes = n;
    }
    if let Some(k) = b.keys().next() {
        return Err(format!(
            "unknown breaker key {k:?} (failures, cooldown, max_cooldown, ratio, window, min_calls, probes)"
        ));
    }
    Ok(cfg)
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces every `${NAME}` in `s` with the environment variable. `$${` escapes a literal
/// `${`. Returns whether a reference was present.
fn resolve_env(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    what: &str,
) -> Result<(String, bool), String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut referenced = false;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{what}: unterminated ${{...}} reference"))?;
        let name = &after[..end];
        if !valid_env_name(name) {
            return Err(format!(
                "{what}: ${{{name}}} is not a valid environment variable name"
            ));
        }
        let value = env(name).ok_or_else(|| {
            format!(
                "{what} references ${{{name}}}, which is not set in the environment; export {name}"
            )
        })?;
        out.push_str(&value);
        referenced = true;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, referenced))
}

fn resolve_value(
    v: toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
    what: &str,
    referenced: &mut bool,
) -> Result<Json, String> {
    Ok(match v {
        toml::Value::String(s) => {
            let (s, r) = resolve_env(&s, env, what)?;
            *referenced |= r;
            Json::String(s)
        }
        toml::Value::Integer(i) => Json::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Json::Number)
            .ok_or_else(|| format!("{what}: {f} is not a finite number"))?,
        toml::Value::Boolean(b) => Json::Bool(b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(a) => Json::Array(
            a.into_iter()
                .map(|v| resolve_value(v, env, what, referenced))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => {
            let mut m = serde_json::Map::new();
            for (k, v) in t {
                m.insert(k, resolve_value(v, env, what, referenced)?);
            }
            Json::Object(m)
        }
    })
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse_at(&text, &path.display().to_string(), path.parent(), &|k| {
            std::env::var(k).ok()
        })
    }

    /// The embedded default (`etc/herald.toml`).
    pub fn embedded() -> Result<Config, ConfigError> {
        Config::parse(EMBEDDED_DEFAULT, "embedded default config", &|k| {
            std::env::var(k).ok()
        })
    }

    /// Parses and validates config text. `env` looks up `${NAME}` references.
    pub fn parse(
        text: &str,
        source_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::parse_at(text, source_name, None, env)
    }

    /// [`Config::parse`] of a file in `dir`: `[templates] dir` is relative to it (else to
    /// the working directory).
    pub fn parse_at(
        text: &str,
        source_name: &str,
        dir: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
        let mut config = raw
            .validate(env, dir)
            .map_err(|message| ConfigError::Invalid {
                source_name: source_name.to_string(),
                message,
            })?;
        config.source_name = source_name.to_string();
        Ok(config)
    }
}

impl RawConfig {
    fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
        config_dir: Option<&Path>,
    ) -> Result<Config, String> {
        let d = self.daemon;
        let data_dir = d.data_dir.unwrap_or_else(|| PathBuf::from("var/herald"));
        let socket = d.socket.unwrap_or_else(|| data_dir.join("herald.sock"));
        let socket_mode = match d.socket_mode {
            None => 0o660,
            Some(toml::Value::String(s)) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
                .map_err(|_| {
                    format!("daemon.socket_mode {s:?} is not an octal mode like \"0660\"")
                })?,
            Some(toml::Value::Integer(n)) => u32::try_from(n)
                .map_err(|_| format!("daemon.socket_mode {n} is not a file mode"))?,
            Some(other) => {
                return Err(format!(
                    "daemon.socket_mode must be an octal mode like \"0660\", not a {}",
                    other.type_str()
                ));
            }
        };
        if socket_mode > 0o777 {
            return Err(format!(
                "daemon.socket_mode {socket_mode:o} is not a file mode (at most 0777)"
            ));
        }
        let plugin_dir = match d.plugin_dir {
            Some(p) => p,
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from(".")),
        };
        let size = |v: Option<toml::Value>, key: &str, default: u64| -> Result<u64, String> {
            v.map(|v| parse_size(&v).map_err(|e| format!("daemon.{key}: {e}")))
                .unwrap_or(Ok(default))
        };
        let max_frame = size(
            d.max_frame,
            "max_frame",
            u64::from(herald_protocol::DEFAULT_MAX_FRAME),
        )?;
        if !(1024..=64 << 20).contains(&max_frame) {
            return Err(format!(
                "daemon.max_frame {max_frame} must be between 1KiB and 64MiB"
            ));
        }
        let max_message = size(d.max_message, "max_message", 256 << 10)?;
        if max_message + 1024 > max_frame {
            return Err(format!(
                "daemon.max_message ({max_message}) must be at least 1KiB below daemon.max_frame ({max_frame})"
            ));
        }
        let duration = |v: Option<String>, key: &str, default: u64| -> Result<u64, String> {
            v.map(|s| parse_duration_ms(&s).map_err(|e| format!("{key}: {e}")))
                .unwrap_or(Ok(default))
        };
        let retention_ms = duration(d.retention, "daemon.retention", 7 * 86_400_000)?;
        let idempotency_window_ms = duration(
            d.idempotency_window,
            "daemon.idempotency_window",
            86_400_000,
        )?;
        if retention_ms < idempotency_window_ms {
            return Err(format!(
                "daemon.retention must be at least daemon.idempotency_window ({} h), or a repeated key could create a second message",
                idempotency_window_ms / 3_600_000
            ));
        }
        let concurrency = d.concurrency.unwrap_or(256);
        if concurrency == 0 || concurrency > 65_536 {
            return Err("daemon.concurrency must be between 1 and 65536".into());
        }
        let max_queue = d.max_queue.unwrap_or(1_000_000);
        if max_queue == 0 {
            return Err("daemon.max_queue must be at least 1".into());
        }
        let max_connections = d.max_connections.unwrap_or(1024);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(format!(
                "daemon.max_connections {max_connections} must be between 1 and 1000000"
            ));
        }
        let max_unread_bytes = size(d.max_unread_bytes, "max_unread_bytes", 64 << 20)?;
        if max_unread_bytes < max_frame || max_unread_bytes > 4 << 30 {
            return Err(format!(
                "daemon.max_unread_bytes ({max_unread_bytes}) must be at least daemon.max_frame \
                 ({max_frame}), so one answer of a full frame fits, and at most 4GiB"
            ));
        }
        let daemon = DaemonConfig {
            data_dir,
            socket,
            socket_mode,
            plugin_dir,
            max_frame: max_frame as u32,
            max_message: max_message as usize,
            max_queue,
            concurrency,
            cache_capacity: size(d.cache_capacity, "cache_capacity", 32 << 20)?,
            retention_ms,
            idempotency_window_ms,
            shutdown_grace_ms: duration(d.shutdown_grace, "daemon.shutdown_grace", 10_000)?,
            max_connections,
            max_unread_bytes: max_unread_bytes as usize,
            min_free: d
                .min_free
                .map(|v| parse_min_free(&v).map_err(|e| format!("daemon.min_free: {e}")))
                .unwrap_or(Ok(MinFree::DEFAULT))?,
            storage_timeout_ms: duration(d.storage_timeout, "daemon.storage_timeout", 30_000)?,
        };
        if daemon.storage_timeout_ms < 1_000 {
            return Err(format!(
                "daemon.storage_timeout must be at least 1s (a healthy flush takes milliseconds; too short a bound fails a merely busy disk), not {} ms",
                daemon.storage_timeout_ms
            ));
        }

        let webhooks = match self.webhooks {
            None => None,
            Some(w) => {
                let listen: SocketAddr = w.listen.parse().map_err(|_| {
                    format!(
                        "webhooks.listen {:?} is not an address like \"127.0.0.1:8025\"",
                        w.listen
                    )
                })?;
                if let Some(url) = &w.public_url
                    && !(url.starts_with("https://") || url.starts_with("http://"))
                {
                    return Err(format!(
                        "webhooks.public_url {url:?} must be an http(s) URL like \"https://hooks.example.com\""
                    ));
                }
                Some(WebhooksConfig {
                    listen,
                    public_url: w.public_url.map(|u| u.trim_end_matches('/').to_string()),
                    max_body: w
                        .max_body
                        .map(|v| parse_size(&v).map_err(|e| format!("webhooks.max_body: {e}")))
                        .unwrap_or(Ok(1 << 20))? as usize,
                    max_connections: w.max_connections.unwrap_or(DEFAULT_WEBHOOK_CONNECTIONS),
                })
            }
        };

        let realtime = match self.realtime {
            None => None,
            Some(r) => Some(validate_realtime(r, env, &duration)?),
        };
        let store = validate_store(self.store, env, &duration)?;
        let admin = match self.admin {
            None => None,
            Some(a) => Some(validate_admin(a)?),
        };
        if let Some(w) = &webhooks {
            if !(16..=1_000_000).contains(&w.max_connections) {
                return Err(format!(
                    "webhooks.max_connections {} must be between 16 and 1000000",
                    w.max_connections
                ));
            }
            // Browser streams hold their connection: leave room for provider webhooks.
            if let Some(r) = &realtime
                && r.max_streams + 16 > w.max_connections
            {
                return Err(format!(
                    "webhooks.max_connections ({}) must exceed realtime.max_streams ({}) by at least 16, or streams could leave no connection for provider webhooks",
                    w.max_connections, r.max_streams
                ));
            }
        }

        let r = self.retry;
        let retry = RetryPolicy {
            base_ms: duration(r.base, "retry.base", 2_000)?,
            cap_ms: duration(r.cap, "retry.cap", 30 * 60_000)?,
            max_attempts: r.max_attempts.unwrap_or(12),
            ttl_ms: duration(r.ttl, "retry.ttl", 72 * 3_600_000)?,
        };
        if retry.base_ms == 0 || retry.cap_ms < retry.base_ms {
            return Err("retry.base must be positive and retry.cap at least retry.base".into());
        }
        if retry.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".into());
        }
        if retry.ttl_ms == 0 {
            return Err("retry.ttl must be positive".into());
        }

        let mut providers = Vec::new();
        let mut names = BTreeSet::new();
        for (i, mut table) in self.providers.into_iter().enumerate() {
            let at = format!("providers[{i}]");
            let name = match table.remove("name") {
                Some(toml::Value::String(s)) => s,
                Some(_) => return Err(format!("{at}.name must be a string")),
                None => {
                    return Err(format!(
                        "{at} needs a name (used by routes and webhook paths)"
                    ));
                }
            };
            let ok_name = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !ok_name {
                return Err(format!(
                    "provider name {name:?} must be 1-64 characters of a-z, 0-9, _ and -"
                ));
            }
            if !names.insert(name.clone()) {
                return Err(format!("provider name {name:?} is used twice"));
            }
            let at = format!("provider {name:?}");
            let plugin = match table.remove("plugin") {
                Some(toml::Value::String(s)) => s,
                Some(_) => return Err(format!("{at}: plugin must be a string")),
                None => {
                    return Err(format!(
                        "{at} needs plugin = \"...\" (loads libherald_<plugin>.so)"
                    ));
                }
            };
            if plugin.is_empty()
                || !plugin
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(format!("{at}: plugin {plugin:?} must be a-z, 0-9 and _"));
            }
            let rate_limit = match table.remove("rate_limit") {
                None => None,
                Some(toml::Value::String(s)) => {
                    Some(parse_rate(&s).map_err(|e| format!("{at}: rate_limit {e}"))?)
                }
                Some(_) => return Err(format!("{at}: rate_limit must be a string like \"10/s\"")),
            };
            let breaker = match table.remove("breaker") {
                None => BreakerConfig::default(),
                Some(toml::Value::Table(b)) => {
                    parse_breaker(b).map_err(|e| format!("{at}: {e}"))?
                }
                Some(_) => {
                    return Err(format!(
                        "{at}: breaker must be a table like {{ failures = 5, cooldown = \"30s\" }}"
                    ));
                }
            };
            let timeout_ms = match table.remove("timeout") {
                None => 30_000,
                Some(toml::Value::String(s)) => {
                    parse_duration_ms(&s).map_err(|e| format!("{at}: timeout {e}"))?
                }
                Some(_) => return Err(format!("{at}: timeout must be a duration like \"30s\"")),
            };
            let failover_after = match table.remove("failover_after") {
                None => None,
                Some(v) => Some(
                    v.as_integer()
                        .and_then(|n| u32::try_from(n).ok())
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            format!("{at}: failover_after must be a positive integer")
                        })?,
                ),
            };
            let positive = |v: toml::Value, key: &str| {
                v.as_integer()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{at}: {key} must be a positive integer"))
            };
            let max_in_flight = table
                .remove("max_in_flight")
                .map(|v| positive(v, "max_in_flight"))
                .transpose()?;
            let batch = match table.remove("batch") {
                None => true,
                Some(toml::Value::Boolean(b)) => b,
                Some(_) => return Err(format!("{at}: batch must be true or false")),
            };
            let batch_max = table
                .remove("batch_max")
                .map(|v| {
                    positive(v, "batch_max").and_then(|n| {
                        if n < 2 {
                            Err(format!(
                                "{at}: batch_max must be at least 2 (write batch = false to send every message alone)"
                            ))
                        } else {
                            Ok(n)
                        }
                    })
                })
                .transpose()?;
            let rate_limit = match (rate_limit, table.remove("burst")) {
                (limit, None) => limit,
                (Some(limit), Some(v)) => Some(RateLimit {
                    burst: f64::from(positive(v, "burst")?),
                    ..limit
                }),
                (None, Some(_)) => {
                    return Err(format!(
                        "{at}: burst sizes the token bucket of rate_limit; set rate_limit too"
                    ));
                }
            };
            let mut settings = serde_json::Map::new();
            let mut env_keys = BTreeSet::new();
            for (k, v) in table {
                let mut referenced = false;
                let value = resolve_value(v, env, &format!("{at} key {k}"), &mut referenced)?;
                if referenced {
                    env_keys.insert(k.clone());
                }
                settings.insert(k, value);
            }
            providers.push(ProviderSpec {
                name,
                plugin,
                settings,
                env_keys,
                rate_limit,
                breaker,
                timeout_ms,
                failover_after,
                max_in_flight,
                batch,
                batch_max,
            });
        }

        let mut routes = BTreeMap::new();
        for (channel, list) in self.routes {
            let ch = Channel::parse(&channel).ok_or_else(|| {
                format!("routes.{channel}: unknown channel (use email, sms or push)")
            })?;
            if list.is_empty() {
                return Err(format!(
                    "routes.{channel} is empty; list at least one provider or remove the route"
                ));
            }
            let mut seen = BTreeSet::new();
            for p in &list {
                if !names.contains(p) {
                    return Err(format!(
                        "routes.{channel} names provider {p:?}, but no [[providers]] entry has that name"
                    ));
                }
                if !seen.insert(p) {
                    return Err(format!("routes.{channel} lists {p:?} twice"));
                }
            }
            routes.insert(ch, list);
        }
        if routes.is_empty() {
            return Err(
                "[routes] is empty: route at least one channel, e.g. email = [\"dev\"]".into(),
            );
        }

        let rsvp_config = self.inbound.rsvp.unwrap_or_default();
        let rsvp = RsvpSetting {
            table: Arc::new(RsvpTable::build(&rsvp_config)?),
            config: rsvp_config,
        };

        let templates = match self.templates {
            None => None,
            Some(t) => {
                let dir = match config_dir.filter(|d| !d.as_os_str().is_empty()) {
                    Some(base) if t.dir.is_relative() => base.join(&t.dir),
                    _ => t.dir,
                };
                let set = herald_templates::stored::StoredTemplates::load(&dir)
                    .map_err(|e| format!("templates: {e}"))?;
                Some(TemplatesSetting {
                    dir,
                    set: Arc::new(set),
                })
            }
        };

        Ok(Config {
            source_name: String::new(),
            daemon,
            webhooks,
            realtime,
            admin,
            retry,
            providers,
            routes,
            recipients: self.recipients,
            store,
            rsvp,
            templates,
        })
    }
}

fn validate_store(
    s: RawStore,
    env: &dyn Fn(&str) -> Option<String>,
    duration: &DurationKey,
) -> Result<StoreConfig, String> {
    match s.kind.as_deref().unwrap_or("sled") {
        "sled" => {
            if s.url.is_some() || s.pool_size.is_some() || s.lease.is_some() {
                return Err(
                    "store.url, store.pool_size and store.lease apply to kind = \"postgres\" only"
                        .into(),
                );
            }
            Ok(StoreConfig::Sled)
        }
        "postgres" => {
            let raw = s.url.ok_or(
                "store.kind = \"postgres\" needs store.url, e.g. url = \"${HERALD_PG_URL}\"",
            )?;
            let (url, _) = resolve_env(&raw, env, "store.url")?;
            if url.trim().is_empty() {
                return Err("store.url is empty".into());
            }
            let pool_size = s.pool_size.unwrap_or(8);
            if !(2..=256).contains(&pool_size) {
                return Err("store.pool_size must be between 2 and 256".into());
            }
            let lease_ms = duration(s.lease, "store.lease", 60_000)?;
            if lease_ms < 1_000 {
                return Err(
                    "store.lease must be at least 1s (a renewal must reach the database within a third of it)".into(),
                );
            }
            Ok(StoreConfig::Postgres {
                url: Secret::new(url),
                pool_size,
                lease_ms,
            })
        }
        other => Err(format!(
            "store.kind {other:?} is not one of \"sled\", \"postgres\""
        )),
    }
}

/// Parses an optional duration key (value, key name, default).
type DurationKey = dyn Fn(Option<String>, &str, u64) -> Result<u64, String>;

/// The shortest stream-token secret (HS256 keys shorter than the hash are weak).
const MIN_SECRET_BYTES: usize = 32;

fn validate_realtime(
    r: RawRealtime,
    env: &dyn Fn(&str) -> Option<String>,
    duration: &DurationKey,
) -> Result<RealtimeConfig, String> {
    let raw = r.token_secret.trim();
    let is_reference =
        raw.starts_with("${") && raw.ends_with('}') && raw.matches("${").count() == 1;
    if !is_reference {
        return Err(
            "realtime.token_secret is a secret; write token_secret = \"${HERALD_TOKEN_SECRET}\" \
             and export HERALD_TOKEN_SECRET, so it never sits in the config file"
                .into(),
        );
    }
    let (secret, _) = resolve_env(raw, env, "realtime.token_secret")?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "realtime.token_secret must be at least {MIN_SECRET_BYTES} bytes (it is {}); \
             e.g. export HERALD_TOKEN_SECRET=$(head -c 32 /dev/urandom | base64)",
            secret.len()
        ));
    }
    let max_token_ttl_ms = duration(r.max_token_ttl, "realtime.max_token_ttl", 86_400_000)?;
    if max_token_ttl_ms < 1000 {
        return Err("realtime.max_token_ttl must be at least 1s".into());
    }
    let mut allowed_origins = Vec::new();
    for o in r.allowed_origins {
        let ok = (o.starts_with("https://") || o.starts_with("http://"))
            && o.split_once("://").is_some_and(|(_, rest)| {
                !rest.is_empty()
                    && !rest.contains(['/', '?', '#', ' '])
                    && rest.bytes().all(|b| b.is_ascii_graphic())
            });
        if !ok {
            return Err(format!(
                "realtime.allowed_origins: {o:?} is not an origin like \"https://planner.example.com\" \
                 (scheme, host and optional port; no path, no trailing slash)"
            ));
        }
        allowed_origins.push(o.to_ascii_lowercase());
    }
    let max_streams = r.max_streams.unwrap_or(1024);
    if !(1..=100_000).contains(&max_streams) {
        return Err("realtime.max_streams must be between 1 and 100000".into());
    }
    let client_buffer = r.client_buffer.unwrap_or(DEFAULT_CLIENT_BUFFER);
    if !(1..=65_536).contains(&client_buffer) {
        return Err("realtime.client_buffer must be between 1 and 65536 events".into());
    }
    let stall_timeout_ms = duration(
        r.stall_timeout,
        "realtime.stall_timeout",
        DEFAULT_STALL_TIMEOUT_MS,
    )?;
    let keepalive_ms = duration(r.keepalive, "realtime.keepalive", DEFAULT_KEEPALIVE_MS)?;
    if stall_timeout_ms < 100 || keepalive_ms < 100 {
        return Err("realtime.stall_timeout and realtime.keepalive must be at least 100ms".into());
    }
    let flush_interval_ms = duration(
        r.flush_interval,
        "realtime.flush_interval",
        DEFAULT_FLUSH_INTERVAL_MS,
    )?;
    if flush_interval_ms > 1_000 {
        return Err(
            "realtime.flush_interval must be at most 1s (it delays a busy stream's events)".into(),
        );
    }
    Ok(RealtimeConfig {
        token_secret: Secret::new(secret),
        max_token_ttl_ms,
        allowed_origins,
        max_streams,
        client_buffer,
        stall_timeout_ms,
        keepalive_ms,
        flush_interval_ms,
    })
}

fn validate_admin(a: RawAdmin) -> Result<AdminConfig, String> {
    let text = a.listen.unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string());
    let listen: SocketAddr = text
        .parse()
        .map_err(|_| format!("admin.listen {text:?} is not an address like \"127.0.0.1:8026\""))?;
    if !listen.ip().is_loopback() && !a.allow_remote {
        return Err(format!(
            "admin.listen {listen} is not a loopback address: the admin listener has no \
             authentication (metrics, every event, message bodies of replies). Keep it on \
             127.0.0.1 and reach it through an SSH tunnel or an authenticating proxy, or set \
             admin.allow_remote = true if the network is trusted"
        ));
    }
    Ok(AdminConfig { listen })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "test.toml", &no_env).map_err(|e| e.to_string())
    }

    #[test]
    fn embedded_default_is_valid_and_matches_the_cli_default_socket() {
        let c = Config::parse(EMBEDDED_DEFAULT, "embedded", &no_env).unwrap();
        assert_eq!(
            c.daemon.socket,
            PathBuf::from(herald_protocol::DEFAULT_SOCKET)
        );
        for ch in Channel::ALL {
            assert!(c.routes.contains_key(&ch), "{ch} routed");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_size(&toml::Value::String("1MiB".into())), Ok(1 << 20));
        assert_eq!(parse_size(&toml::Value::Integer(10)), Ok(10));
    }

    const MIN: &str = r#"
        [[providers]]
        name = "dev"
        plugin = "outbox"
        dir = "./var/outbox"
        [routes]
        email = ["dev"]
    "#;

    #[test]
    fn templates_load_relative_to_the_config_file_and_a_broken_one_rejects_the_config() {
        let base =
            std::env::temp_dir().join(format!("herald-config-templates-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("tpl")).unwrap();
        std::fs::write(
            base.join("tpl/welcome.toml"),
            "[email]\nsubject = \"Hi {{ name }}\"\ntext = \"x\"\n",
        )
        .unwrap();
        let text = format!("{MIN}\n[templates]\ndir = \"tpl\"\n");
        let c = Config::parse_at(&text, "herald.toml", Some(&base), &no_env).unwrap();
        let t = c.templates.as_ref().unwrap();
        assert_eq!(t.dir, base.join("tpl"));
        assert_eq!(t.set.names().collect::<Vec<_>>(), ["welcome"]);
        assert!(parse(MIN).unwrap().templates.is_none(), "absent: off");
        // Same files, equal configs; a changed file, a different one.
        let again = Config::parse_at(&text, "herald.toml", Some(&base), &no_env).unwrap();
        assert_eq!(c, again);

        std::fs::write(
            base.join("tpl/welcome.toml"),
            "[email]\nsubject = \"Hi {{ name }\"\ntext = \"x\"\n",
        )
        .unwrap();
        let err = Config::parse_at(&text, "herald.toml", Some(&base), &no_env)
            .unwrap_err()
            .to_string();
        let at = format!("{}:2:", base.join("tpl/welcome.toml").display());
        assert!(err.starts_with("herald.toml: templates: "), "{err}");
        assert!(err.contains(&at), "{err}");
        let err = Config::parse_at(
            &format!("{MIN}\n[templates]\ndir = \"absent\"\n"),
            "herald.toml",
            Some(&base),
            &no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot read the templates folder"), "{err}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.daemon.socket_mode, 0o660);
        assert_eq!(c.retry.max_attempts, 12);
        assert_eq!(c.providers[0].settings["dir"], "./var/outbox");
        assert_eq!(c.providers[0].timeout_ms, 30_000);
        assert_eq!(c.daemon.max_connections, 1024);
        assert_eq!(c.daemon.max_unread_bytes, 64 << 20);
    }

    #[test]
    fn connection_limits() {
        let c = parse(&format!(
            "[daemon]\nmax_connections = 8\nmax_unread_bytes = \"4MiB\"\n{MIN}"
        ))
        .unwrap();
        assert_eq!(c.daemon.max_connections, 8);
        assert_eq!(c.daemon.max_unread_bytes, 4 << 20);
        for (daemon, needle) in [
            ("max_connections = 0", "daemon.max_connections"),
            ("max_unread_bytes = \"64KiB\"", "at least daemon.max_frame"),
            ("max_unread_bytes = \"8GiB\"", "at most 4GiB"),
            ("max_unread_bytes = \"lots\"", "daemon.max_unread_bytes"),
        ] {
            let err = parse(&format!("[daemon]\n{daemon}\n{MIN}")).unwrap_err();
            assert!(err.contains(needle), "{daemon} → {err}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        const PROVIDER: &str = "[[providers]]\nname = \"dev\"\nplugin = \"outbox\"\n";
        for (routes, needle) in [
            ("[routes]\nfax = [\"dev\"]\n", "unknown channel"),
            ("[routes]\nemail = [\"nope\"]\n", "\"nope\""),
            ("[routes]\nemail = [\"dev\", \"dev\"]\n", "twice"),
            ("", "[routes] is empty"),
        ] {
            let err = parse(&format!("{PROVIDER}\n{routes}")).unwrap_err();
            assert!(err.contains(needle), "{routes:?} → {err}");
        }
        let cases = [
            ("[daemon]\nsocket_mod = 1\n", "socket_mod"),
            ("[retry]\nbase = \"2 parsecs\"\n", "retry.base"),
            ("[daemon]\nsocket_mode = \"rw\"\n", "socket_mode"),
            ("[webhooks]\nlisten = \"localhost\"\n", "webhooks.listen"),
        ];
        for (extra, needle) in cases {
            let err = parse(&format!("{extra}\n{MIN}")).unwrap_err();
            assert!(err.contains(needle), "{extra:?} → {err}");
        }
        let err = parse("[[providers]]\nplugin = \"outbox\"\n[routes]\nemail=[]").unwrap_err();
        assert!(err.contains("needs a name"), "{err}");
        let dup = format!("{MIN}\n[[providers]]\nname = \"dev\"\nplugin = \"outbox\"\n");
        assert!(parse(&dup).unwrap_err().contains("used twice"));
    }

    #[test]
    fn recipients_and_rsvp_sections() {
        use herald_plugin_api::{EmailCase, RsvpAnswer};
        let c = parse(MIN).unwrap();
        assert_eq!(c.recipients.email_case, EmailCase::Insensitive);
        let yes = c.rsvp.table.parse("Yes, 2 of us!").unwrap();
        assert_eq!((yes.answer, yes.headcount), (RsvpAnswer::Yes, Some(2)));
        let c = parse(&format!(
            "[recipients]\nemail_case = \"strict\"\n\n[inbound.rsvp]\nbuiltin = [\"emoji\"]\n\
             [inbound.rsvp.languages.pl]\nyes = [\"tak\"]\nno = [\"nie\"]\n{MIN}"
        ))
        .unwrap();
        assert_eq!(c.recipients.email_case, EmailCase::Strict);
        assert_eq!(
            c.rsvp.table.parse("Tak!").map(|r| r.answer),
            Some(RsvpAnswer::Yes)
        );
        assert_eq!(c.rsvp.table.parse("yes"), None, "English was not chosen");
        for (extra, needle) in [
            ("[recipients]\nemail_case = \"loose\"\n", "loose"),
            ("[recipients]\nemail_cas = \"strict\"\n", "email_cas"),
            ("[inbound]\nrsvp_table = 1\n", "rsvp_table"),
            (
                "[inbound.rsvp]\nbuiltin = [\"klingon\"]\n",
                "inbound.rsvp.builtin: there is no built-in table \"klingon\"",
            ),
            (
                "[inbound.rsvp.languages.xx]\nyes = [\"da\"]\nno = [\"stop\"]\n",
                "opt-out keyword",
            ),
            (
                "[inbound.rsvp]\nmax_headcount = 0\n",
                "inbound.rsvp.max_headcount",
            ),
        ] {
            let err = parse(&format!("{extra}\n{MIN}")).unwrap_err();
            assert!(err.contains(needle), "{extra:?} → {err}");
        }
    }

    #[test]
    fn store_section() {
        const URL: &str = "postgresql://herald:s3cret@db.example/herald";
        let env = |k: &str| (k == "HERALD_PG_URL").then(|| URL.to_string());
        let with = |extra: &str| {
            Config::parse(&format!("{extra}\n{MIN}"), "t", &env).map_err(|e| e.to_string())
        };
        let c = with("").unwrap();
        assert_eq!(c.store, StoreConfig::Sled, "sled by default");
        assert_eq!(c.store.lease_ms(), 300_000);
        let c = with("[store]\nkind = \"postgres\"\nurl = \"${HERALD_PG_URL}\"").unwrap();
        let StoreConfig::Postgres {
            url,
            pool_size,
            lease_ms,
        } = &c.store
        else {
            panic!("{:?}", c.store);
        };
        assert_eq!((url.expose(), *pool_size, *lease_ms), (URL, 8, 60_000));
        assert!(
            !format!("{:?}", c.store).contains("s3cret"),
            "Debug hides the URL"
        );
        let c = with(
            "[store]\nkind = \"postgres\"\nurl = \"${HERALD_PG_URL}\"\npool_size = 3\nlease = \"30s\"",
        )
        .unwrap();
        assert_eq!(c.store.lease_ms(), 30_000);
        for (extra, needle) in [
            ("[store]\nkind = \"postgres\"", "needs store.url"),
            ("[store]\nkind = \"mysql\"", "not one of"),
            ("[store]\nurl = \"x\"", "kind = \"postgres\" only"),
            (
                "[store]\nkind = \"postgres\"\nurl = \"${UNSET}\"",
                "export UNSET",
            ),
            (
                "[store]\nkind = \"postgres\"\nurl = \"x\"\npool_size = 1",
                "pool_size",
            ),
            (
                "[store]\nkind = \"postgres\"\nurl = \"x\"\nlease = \"10ms\"",
                "store.lease",
            ),
        ] {
            let err = with(extra).unwrap_err();
            assert!(err.contains(needle), "{extra}: {err}");
        }
    }

    #[test]
    fn min_free_and_storage_timeout() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.daemon.min_free, MinFree::Bytes(256 << 20));
        assert_eq!(c.daemon.storage_timeout_ms, 30_000);
        for (value, expected) in [
            ("\"64MiB\"", MinFree::Bytes(64 << 20)),
            ("1048576", MinFree::Bytes(1 << 20)),
            ("\"5%\"", MinFree::BasisPoints(500)),
            ("\"0.5%\"", MinFree::BasisPoints(50)),
            ("0", MinFree::Bytes(0)),
        ] {
            let c = parse(&format!("[daemon]\nmin_free = {value}\n{MIN}")).unwrap();
            assert_eq!(c.daemon.min_free, expected, "{value}");
        }
        for (value, needle) in [
            ("\"lots\"", "\"lots\" is not a size"),
            ("\"10 parsecs\"", "unknown unit"),
            ("\"100%\"", "percentage below 100"),
            ("\"-5%\"", "percentage below 100"),
            ("-1", "percentage of the filesystem"),
            ("true", "a boolean is not a size"),
        ] {
            let err = parse(&format!("[daemon]\nmin_free = {value}\n{MIN}")).unwrap_err();
            assert!(
                err.contains("daemon.min_free") && err.contains(needle),
                "{value} → {err}"
            );
        }
        let c = parse(&format!("[daemon]\nstorage_timeout = \"2m\"\n{MIN}")).unwrap();
        assert_eq!(c.daemon.storage_timeout_ms, 120_000);
        let err = parse(&format!("[daemon]\nstorage_timeout = \"10ms\"\n{MIN}")).unwrap_err();
        assert!(
            err.contains("daemon.storage_timeout must be at least 1s"),
            "{err}"
        );
        let err = parse(&format!("[daemon]\nstorage_timeout = \"soon\"\n{MIN}")).unwrap_err();
        assert!(err.contains("daemon.storage_timeout"), "{err}");
    }

    #[test]
    fn realtime_and_admin_sections() {
        const SECRET: &str = "0123456789abcdef0123456789abcdef";
        let env = |k: &str| match k {
            "HERALD_TOKEN_SECRET" => Some(SECRET.to_string()),
            "SHORT" => Some("tooshort".to_string()),
            _ => None,
        };
        let with = |extra: &str| {
            Config::parse(&format!("{extra}\n{MIN}"), "t", &env).map_err(|e| e.to_string())
        };
        let c = with(
            "[realtime]\ntoken_secret = \"${HERALD_TOKEN_SECRET}\"\nallowed_origins = [\"https://Planner.example.com\"]\n[admin]\n",
        )
        .unwrap();
        let rt = c.realtime.unwrap();
        assert_eq!(rt.token_secret.expose(), SECRET);
        assert_eq!(rt.max_token_ttl_ms, 86_400_000);
        assert_eq!(rt.allowed_origins, ["https://planner.example.com"]);
        assert_eq!(rt.flush_interval_ms, DEFAULT_FLUSH_INTERVAL_MS);
        let flush = |v: &str| {
            with(&format!(
                "[realtime]\ntoken_secret = \"${{HERALD_TOKEN_SECRET}}\"\nflush_interval = \"{v}\""
            ))
            .map(|c| c.realtime.unwrap().flush_interval_ms)
        };
        assert_eq!(flush("0ms"), Ok(0), "0 writes every event at once");
        assert_eq!(flush("100ms"), Ok(100));
        let err = flush("2s").unwrap_err();
        assert!(
            err.contains("realtime.flush_interval must be at most 1s"),
            "{err}"
        );
        assert!(
            !format!("{rt:?}").contains(SECRET),
            "Debug hides the secret"
        );
        assert_eq!(c.admin.unwrap().listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert!(
            with("").unwrap().admin.is_none(),
            "the admin listener is opt-in"
        );

        for (extra, needle) in [
            (
                "[realtime]\ntoken_secret = \"literal-secret-literal-secret-1234\"",
                "${HERALD_TOKEN_SECRET}",
            ),
            (
                "[realtime]\ntoken_secret = \"${SHORT}\"",
                "at least 32 bytes",
            ),
            ("[realtime]\ntoken_secret = \"${UNSET}\"", "export UNSET"),
            (
                "[realtime]\ntoken_secret = \"${HERALD_TOKEN_SECRET}\"\nallowed_origins = [\"https://a.example.com/\"]",
                "no trailing slash",
            ),
            (
                "[admin]\nlisten = \"0.0.0.0:8026\"",
                "not a loopback address",
            ),
            ("[admin]\nlisten = \"localhost\"", "admin.listen"),
        ] {
            let err = with(extra).unwrap_err();
            assert!(err.contains(needle), "{extra:?} → {err}");
            assert!(!err.contains("tooshort") && !err.contains(SECRET), "{err}");
        }
        let hooks = "[webhooks]\nlisten = \"127.0.0.1:8025\"\n";
        let c = with(hooks).unwrap();
        assert_eq!(
            c.webhooks.unwrap().max_connections,
            DEFAULT_WEBHOOK_CONNECTIONS
        );
        let err = with(&format!("{hooks}max_connections = 2")).unwrap_err();
        assert!(err.contains("webhooks.max_connections 2"), "{err}");
        let err = with(&format!(
            "{hooks}max_connections = 100\n[realtime]\ntoken_secret = \"${{HERALD_TOKEN_SECRET}}\"\nmax_streams = 90"
        ))
        .unwrap_err();
        assert!(err.contains("must exceed realtime.max_streams"), "{err}");
        let remote = with("[admin]\nlisten = \"0.0.0.0:8026\"\nallow_remote = true").unwrap();
        assert_eq!(remote.admin.unwrap().listen.to_string(), "0.0.0.0:8026");
    }

    #[test]
    fn env_references_are_resolved_and_tracked() {
        let text = r#"
            [[providers]]
            name = "resend"
            plugin = "resend"
            api_key = "${RESEND_KEY}"
            from = "Events <hi@example.com>"
            literal = "$${NOT_A_REF}"
            rate_limit = "2/s"
            breaker = { failures = 3, cooldown = "1m" }
            [routes]
            email = ["resend"]
        "#;
        let env = |k: &str| (k == "RESEND_KEY").then(|| "re_123".to_string());
        let c = Config::parse(text, "t", &env).unwrap();
        let p = &c.providers[0];
        assert_eq!(p.settings["api_key"], "re_123");
        assert_eq!(p.settings["literal"], "${NOT_A_REF}");
        assert!(p.env_keys.contains("api_key") && !p.env_keys.contains("from"));
        assert_eq!(p.rate_limit.unwrap().per_sec, 2.0);
        assert_eq!(p.breaker.failures, 3);
        assert_eq!(p.breaker.max_cooldown_ms, 300_000, "the default cap");
        assert_eq!(p.failover_after, None);
        let c = Config::parse(
            &text.replace("rate_limit", "failover_after = 3\n            rate_limit"),
            "t",
            &env,
        )
        .unwrap();
        assert_eq!(c.providers[0].failover_after, Some(3));
        let c = Config::parse(
            &text.replace(
                "rate_limit",
                "max_in_flight = 4\n            burst = 20\n            rate_limit",
            ),
            "t",
            &env,
        )
        .unwrap();
        let p = &c.providers[0];
        assert_eq!(p.max_in_flight, Some(4));
        let rate = p.rate_limit.unwrap();
        assert_eq!((rate.per_sec, rate.burst), (2.0, 20.0));
        let err = Config::parse(
            &text.replace("rate_limit = \"2/s\"", "burst = 20"),
            "t",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("set rate_limit too"), "{err}");
        let err = Config::parse(
            &text.replace("rate_limit", "failover_after = 0\n            rate_limit"),
            "t",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("failover_after must be a positive integer"),
            "{err}"
        );
        assert!(!format!("{p:?}").contains("re_123"), "Debug hides values");
        assert!(
            p.batch && p.batch_max.is_none(),
            "batching is on by default"
        );
        let c = Config::parse(
            &text.replace(
                "rate_limit",
                "batch = false\n            batch_max = 50\n            rate_limit",
            ),
            "t",
            &env,
        )
        .unwrap();
        let p = &c.providers[0];
        assert_eq!((p.batch, p.batch_max), (false, Some(50)));
        assert!(!p.settings.contains_key("batch"), "a host key");
        for (bad, says) in [
            ("batch = \"yes\"", "batch must be true or false"),
            ("batch_max = 1", "batch_max must be at least 2"),
            ("batch_max = 0", "batch_max must be a positive integer"),
        ] {
            let err = Config::parse(
                &text.replace("rate_limit", &format!("{bad}\n            rate_limit")),
                "t",
                &env,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }

        let err = Config::parse(text, "t", &no_env).unwrap_err().to_string();
        assert!(
            err.contains("RESEND_KEY") && err.contains("export"),
            "{err}"
        );
    }

    #[test]
    fn breaker_keys_are_parsed_and_checked() {
        let with = |b: &str| {
            let text = format!(
                "[[providers]]\nname = \"dev\"\nplugin = \"outbox\"\nbreaker = {b}\n[routes]\nemail = [\"dev\"]\n"
            );
            Config::parse(&text, "t", &no_env).map(|c| c.providers[0].breaker)
        };
        let b = with(
            r#"{ failures = 3, ratio = 0.5, window = 8, min_calls = 4, cooldown = "2s", max_cooldown = "1m", probes = 2 }"#,
        )
        .unwrap();
        assert_eq!(
            b,
            BreakerConfig {
                failures: 3,
                cooldown_ms: 2_000,
                max_cooldown_ms: 60_000,
                ratio: Some(0.5),
                window: 8,
                min_calls: 4,
                probes: 2,
            }
        );
        assert_eq!(b.cooldown_after(1), 2_000);
        assert_eq!(b.cooldown_after(3), 8_000);
        assert_eq!(b.cooldown_after(30), 60_000);
        let b = with(r#"{ cooldown = "10m", window = 4 }"#).unwrap();
        assert_eq!(
            (b.max_cooldown_ms, b.min_calls),
            (600_000, 4),
            "the cap is at least the cooldown; min_calls at most the window"
        );
        for (bad, says) in [
            ("{ ratio = 1.5 }", "ratio"),
            ("{ ratio = 0 }", "ratio"),
            ("{ window = 4, min_calls = 5 }", "min_calls"),
            (
                r#"{ cooldown = "1m", max_cooldown = "30s" }"#,
                "max_cooldown",
            ),
            ("{ probes = 0 }", "probes"),
            ("{ trips = 2 }", "unknown breaker key"),
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
