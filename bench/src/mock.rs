//! The mock provider: a lean hyper HTTP/1.1 server on 127.0.0.1 that stands in for the
//! receiving end of the `webhook` plugin, and the handle the scenarios use to steer it.
//!
//! Every `POST` is answered `200 {"id":"mock-<n>"}` (a provider message id), unless the
//! mock is told otherwise:
//! - `latency_ms`: sleep this long before answering (a slow provider);
//! - `error_rate`: answer this fraction of requests `503` (a flaky provider — the
//!   `webhook` plugin maps 503 to `Retry`);
//! - `paused`: hold every request unanswered until the mock is resumed. A held request
//!   keeps one of the daemon's delivery slots busy, so with `daemon.concurrency` slots
//!   held the dispatcher stops claiming and everything else stays `queued`: that is how
//!   the footprint and recovery scenarios build a queue of undelivered messages without
//!   any retry churn. [`Mock::abandon_held`] answers the held requests `503` without
//!   counting them (used after the daemon was killed, when nobody reads the answer).
//!
//! Delivery accounting is per Herald message id (the `id` field the `webhook` plugin puts
//! first in its JSON body): how many `200` answers each id got. An id with more than one
//! is a duplicate delivery; an accepted id with none is a lost one. The counts live in 64
//! mutex-protected shards so the mock itself is never the bottleneck.
//!
//! The same server also answers control requests under `/_bench/` (JSON), so a mock
//! started on its own (`herald-bench mock`) can be driven from another process
//! ([`Mock::remote`]): `GET /_bench/snapshot`, `GET /_bench/ids`, `POST /_bench/settings`,
//! `POST /_bench/abandon`, `POST /_bench/reset`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SHARDS: usize = 64;
/// Duplicate ids kept as examples for the report.
const DUPLICATE_SAMPLES: usize = 10;

/// How the mock answers. Applied to requests that arrive after the change (and, for
/// `paused`, to requests being held).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Delay before every answer.
    pub latency_ms: u64,
    /// Fraction (0.0–1.0) of requests answered `503`.
    pub error_rate: f64,
    /// Hold requests unanswered until resumed.
    pub paused: bool,
}

/// Counters at one moment. Times are Unix nanoseconds (0 = never), comparable with the
/// bench's own clock because both run on this machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Provider requests received (control requests excluded).
    pub requests: u64,
    /// `200` answers.
    pub ok: u64,
    /// Injected `503` answers.
    pub errors: u64,
    /// Held requests answered `503` by [`Mock::abandon_held`].
    pub abandoned: u64,
    /// Requests held right now.
    pub held: u64,
    /// Distinct message ids answered `200` at least once.
    pub unique_ok: u64,
    /// `200` answers beyond the first for an id.
    pub duplicate_ok: u64,
    /// Requests without a readable message id (answered `400`).
    pub bad_requests: u64,
    pub first_ok_unix_ns: u64,
    pub last_ok_unix_ns: u64,
    /// Some ids that were answered `200` more than once.
    pub duplicate_samples: Vec<String>,
}

/// Nanoseconds since the Unix epoch.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `(paused, epoch)`: [`Mock::abandon_held`] bumps the epoch, which releases every request
/// held under the previous one with a `503`.
type Pause = (bool, u64);

struct Inner {
    shards: Vec<Mutex<HashMap<String, u32>>>,
    requests: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    abandoned: AtomicU64,
    held: AtomicU64,
    unique_ok: AtomicU64,
    duplicate_ok: AtomicU64,
    bad_requests: AtomicU64,
    first_ok: AtomicU64,
    last_ok: AtomicU64,
    latency_ms: AtomicU64,
    /// Error rate in parts per million.
    error_ppm: AtomicU64,
    pause: watch::Sender<Pause>,
    samples: Mutex<Vec<String>>,
    /// Counter feeding the error-injection hash.
    draws: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// splitmix64: a cheap, well-mixed hash of a counter, for error injection.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Decrements the held count when a held request finishes or is dropped (the daemon went
/// away mid-request).
struct HeldGuard<'a>(&'a AtomicU64);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The fields of the `webhook` plugin's body the mock reads.
#[derive(Deserialize)]
struct Body {
    id: String,
}

type Reply = hyper::Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let body: Bytes = body.into();
    let json = !body.is_empty();
    let mut r = hyper::Response::new(Full::new(body));
    *r.status_mut() = status;
    if json {
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    r
}

fn json_reply<T: Serialize>(v: &T) -> Reply {
    match serde_json::to_string(v) {
        Ok(s) => reply(StatusCode::OK, s),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

impl Inner {
    fn new() -> Inner {
        Inner {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            requests: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            held: AtomicU64::new(0),
            unique_ok: AtomicU64::new(0),
            duplicate_ok: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
            first_ok: AtomicU64::new(0),
            last_ok: AtomicU64::new(0),
            latency_ms: AtomicU64::new(0),
            error_ppm: AtomicU64::new(0),
            pause: watch::Sender::new((false, 0)),
            samples: Mutex::new(Vec::new()),
            draws: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: &str) -> &Mutex<HashMap<String, u32>> {
        // FNV-1a over the id's tail: ULIDs end in random characters.
        let h = id
            .bytes()
            .rev()
            .take(8)
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        &self.shards[(h % SHARDS as u64) as usize]
    }

    fn apply(&self, s: Settings) {
        self.latency_ms.store(s.latency_ms, Ordering::Relaxed);
        let ppm = (s.error_rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        self.error_ppm.store(ppm, Ordering::Relaxed);
        self.pause.send_modify(|p| p.0 = s.paused);
    }

    fn abandon_held(&self) {
        self.pause.send_modify(|p| p.1 += 1);
    }

    fn reset(&self) {
        for s in &self.shards {
            lock(s).clear();
        }
        for c in [
            &self.requests,
            &self.ok,
            &self.errors,
            &self.abandoned,
            &self.unique_ok,
            &self.duplicate_ok,
            &self.bad_requests,
            &self.first_ok,
            &self.last_ok,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        lock(&self.samples).clear();
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
            unique_ok: self.unique_ok.load(Ordering::Relaxed),
            duplicate_ok: self.duplicate_ok.load(Ordering::Relaxed),
            bad_requests: self.bad_requests.load(Ordering::Relaxed),
            first_ok_unix_ns: self.first_ok.load(Ordering::Relaxed),
            last_ok_unix_ns: self.last_ok.load(Ordering::Relaxed),
            duplicate_samples: lock(&self.samples).clone(),
        }
    }

    fn ids(&self) -> HashMap<String, u32> {
        let mut all = HashMap::new();
        for s in &self.shards {
            all.extend(lock(s).iter().map(|(k, v)| (k.clone(), *v)));
        }
        all
    }

    /// Records one `200` for `id`.
    fn delivered(&self, id: String) {
        let first = {
            let mut shard = lock(self.shard(&id));
            let n = shard.entry(id.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            self.unique_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicate_ok.fetch_add(1, Ordering::Relaxed);
            let mut samples = lock(&self.samples);
            if samples.len() < DUPLICATE_SAMPLES && !samples.contains(&id) {
                samples.push(id);
            }
        }
        let now = unix_ns();
        let _ = self
            .first_ok
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_ok.fetch_max(now, Ordering::Relaxed);
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    async fn answer(self: Arc<Self>, req: hyper::Request<Incoming>) -> Reply {
        if req.uri().path().starts_with("/_bench/") {
            return self.control(req).await;
        }
        if req.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::new());
        }
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(StatusCode::BAD_REQUEST, Bytes::new()),
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let Some(id) = serde_json::from_slice::<Body>(&body)
            .ok()
            .map(|b| b.id)
            .filter(|id| !id.is_empty())
        else {
            self.bad_requests.fetch_add(1, Ordering::Relaxed);
            return reply(
                StatusCode::BAD_REQUEST,
                r#"{"error":"no message id in the body"}"#,
            );
        };

        let mut pause = self.pause.subscribe();
        let (paused, epoch) = *pause.borrow_and_update();
        if paused {
            self.held.fetch_add(1, Ordering::Relaxed);
            let _guard = HeldGuard(&self.held);
            let released = pause
                .wait_for(|(p, e)| !*p || *e != epoch)
                .await
                .map(|p| p.1 == epoch)
                .unwrap_or(false);
            if !released {
                self.abandoned.fetch_add(1, Ordering::Relaxed);
                return reply(StatusCode::SERVICE_UNAVAILABLE, Bytes::new());
            }
        }

        let latency = self.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let ppm = self.error_ppm.load(Ordering::Relaxed);
        if ppm > 0 && splitmix(self.draws.fetch_add(1, Ordering::Relaxed)) % 1_000_000 < ppm {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"injected failure"}"#,
            );
        }
        self.delivered(id);
        let n = self.ok.load(Ordering::Relaxed);
        reply(StatusCode::OK, format!(r#"{{"id":"mock-{n}"}}"#))
    }

    async fn control(&self, req: hyper::Request<Incoming>) -> Reply {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(StatusCode::BAD_REQUEST, Bytes::new()),
        };
        match (method, path.as_str()) {
            (Method::GET, "/_bench/snapshot") => json_reply(&self.snapshot()),
            (Method::GET, "/_bench/ids") => json_reply(&self.ids()),
            (Method::POST, "/_bench/settings") => match serde_json::from_slice(&body) {
                Ok(s) => {
                    self.apply(s);
                    reply(StatusCode::NO_CONTENT, Bytes::new())
                }
                Err(e) => reply(StatusCode::BAD_REQUEST, e.to_string()),
            },
            (Method::POST, "/_bench/abandon") => {
                self.abandon_held();
                reply(StatusCode::NO_CONTENT, Bytes::new())
            }
            (Method::POST, "/_bench/reset") => {
                self.reset();
                reply(StatusCode::NO_CONTENT, Bytes::new())
            }
            _ => reply(StatusCode::NOT_FOUND, Bytes::new()),
        }
    }
}

/// A mock provider: running in this process, or another `herald-bench mock` reached over
/// its control endpoints.
#[derive(Clone)]
pub struct Mock {
    url: String,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Local(Arc<Inner>),
    /// `host:port` of the control endpoints.
    Remote(String),
}

impl std::fmt::Debug for Mock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.backend {
            Backend::Local(_) => "in-process",
            Backend::Remote(_) => "remote",
        };
        f.debug_struct("Mock")
            .field("url", &self.url)
            .field("kind", &kind)
            .finish()
    }
}

impl Mock {
    /// Starts the server in this process on `listen` (port 0 picks a free port).
    pub async fn start(listen: SocketAddr) -> Result<Mock> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} for the mock provider"))?;
        let addr = listener
            .local_addr()
            .context("the mock provider's address")?;
        let inner = Arc::new(Inner::new());
        let server = Arc::clone(&inner);
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(_) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let inner = Arc::clone(&server);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let inner = Arc::clone(&inner);
                        async move { Ok::<_, Infallible>(inner.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Mock {
            url: format!("http://{addr}"),
            backend: Backend::Local(inner),
        })
    }

    /// A mock already running in another process (`herald-bench mock --listen ...`),
    /// given its base URL `http://127.0.0.1:PORT`.
    pub fn remote(url: &str) -> Result<Mock> {
        let url = url.trim_end_matches('/');
        let Some(addr) = url.strip_prefix("http://") else {
            bail!("--mock-url must look like http://127.0.0.1:9900, got {url:?}");
        };
        if addr.is_empty() || addr.contains('/') {
            bail!(
                "--mock-url must be a base URL like http://127.0.0.1:9900 (no path), got {url:?}"
            );
        }
        Ok(Mock {
            url: url.to_string(),
            backend: Backend::Remote(addr.to_string()),
        })
    }

    /// The base URL (`http://127.0.0.1:PORT`); the daemon posts to `<url>/notify`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn set(&self, settings: Settings) -> Result<()> {
        match &self.backend {
            Backend::Local(inner) => {
                inner.apply(settings);
                Ok(())
            }
            Backend::Remote(addr) => {
                let body = serde_json::to_vec(&settings)?;
                http(addr, "POST", "/_bench/settings", &body)
                    .await
                    .map(drop)
            }
        }
    }

    /// Answers every held request `503` (not counted as a delivery).
    pub async fn abandon_held(&self) -> Result<()> {
        match &self.backend {
            Backend::Local(inner) => {
                inner.abandon_held();
                Ok(())
            }
            Backend::Remote(addr) => http(addr, "POST", "/_bench/abandon", b"").await.map(drop),
        }
    }

    /// Forgets every count and id.
    pub async fn reset(&self) -> Result<()> {
        match &self.backend {
            Backend::Local(inner) => {
                inner.reset();
                Ok(())
            }
            Backend::Remote(addr) => http(addr, "POST", "/_bench/reset", b"").await.map(drop),
        }
    }

    pub async fn snapshot(&self) -> Result<Snapshot> {
        match &self.backend {
            Backend::Local(inner) => Ok(inner.snapshot()),
            Backend::Remote(addr) => {
                let body = http(addr, "GET", "/_bench/snapshot", b"").await?;
                serde_json::from_slice(&body).context("decoding the mock's snapshot")
            }
        }
    }

    /// Every id answered `200`, with how many times.
    pub async fn ids(&self) -> Result<HashMap<String, u32>> {
        match &self.backend {
            Backend::Local(inner) => Ok(inner.ids()),
            Backend::Remote(addr) => {
                let body = http(addr, "GET", "/_bench/ids", b"").await?;
                serde_json::from_slice(&body).context("decoding the mock's id list")
            }
        }
    }
}

/// One control request to a remote mock: HTTP/1.1 with `connection: close`, so the
/// answer is everything until EOF.
async fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await.with_context(|| {
        format!("cannot reach the mock provider at {addr} (is `herald-bench mock` running?)")
    })?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("the mock at {addr} sent a malformed answer to {path}"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with('2') {
        bail!(
            "the mock at {addr} answered {status} to {method} {path}: {}",
            String::from_utf8_lossy(&raw[split + 4..])
        );
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!(
            "the mock at {addr} answered {path} with a chunked body, which this client does not read"
        );
    }
    Ok(raw[split + 4..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_duplicates_per_id() {
        let m = Inner::new();
        m.delivered("a".into());
        m.delivered("b".into());
        m.delivered("a".into());
        let s = m.snapshot();
        assert_eq!(s.ok, 3);
        assert_eq!(s.unique_ok, 2);
        assert_eq!(s.duplicate_ok, 1);
        assert_eq!(s.duplicate_samples, vec!["a".to_string()]);
        assert_eq!(m.ids().get("a"), Some(&2));
        m.reset();
        assert_eq!(m.snapshot(), Snapshot::default());
    }

    #[test]
    fn error_injection_hits_roughly_the_rate() {
        let ppm = 50_000u64;
        let hits = (0..100_000u64)
            .filter(|i| splitmix(*i) % 1_000_000 < ppm)
            .count();
        assert!((4_000..6_000).contains(&hits), "{hits}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_over_http_holds_when_paused_and_is_steerable_remotely() {
        let local = Mock::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let remote = Mock::remote(local.url()).unwrap();
        let addr = local.url().trim_start_matches("http://").to_string();
        let post = |id: &str| {
            let addr = addr.clone();
            let body = format!(r#"{{"id":"{id}","channel":"email","attempt":1}}"#);
            async move { http(&addr, "POST", "/notify", body.as_bytes()).await }
        };
        let answer = post("m1").await.unwrap();
        assert!(String::from_utf8_lossy(&answer).contains("mock-1"));
        post("m1").await.unwrap();
        assert!(post("").await.is_err(), "no id: 400");
        assert_eq!(local.snapshot().await.unwrap().bad_requests, 1);

        // Paused: held until abandoned, then 503 and not counted.
        remote
            .set(Settings {
                paused: true,
                ..Settings::default()
            })
            .await
            .unwrap();
        let held = tokio::spawn(post("m2"));
        while remote.snapshot().await.unwrap().held == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        remote.abandon_held().await.unwrap();
        assert!(held.await.unwrap().is_err(), "abandoned requests get 503");

        // Resumed: a held request is answered 200.
        let held = tokio::spawn(post("m3"));
        while remote.snapshot().await.unwrap().held == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        remote.set(Settings::default()).await.unwrap();
        held.await.unwrap().unwrap();

        let s = remote.snapshot().await.unwrap();
        assert_eq!(s.abandoned, 1);
        assert_eq!(s.held, 0);
        assert_eq!(s.duplicate_samples, vec!["m1".to_string()]);
        let ids = remote.ids().await.unwrap();
        assert_eq!(ids.get("m1"), Some(&2));
        assert_eq!(ids.get("m2"), None);
        assert_eq!(ids.get("m3"), Some(&1));
        remote.reset().await.unwrap();
        assert_eq!(local.snapshot().await.unwrap().ok, 0);
    }

    #[test]
    fn remote_url_must_be_a_base_url() {
        assert!(Mock::remote("http://127.0.0.1:9900/").is_ok());
        assert!(Mock::remote("https://127.0.0.1:9900").is_err());
        assert!(Mock::remote("http://127.0.0.1:9900/notify").is_err());
    }
}
