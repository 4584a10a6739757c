//! The `blast` scenario: a guest list of N emails (10,000) through the real Resend plugin
//! against a mock Resend that allows `limit` requests per second (10) and answers `429
//! rate_limit_exceeded` beyond, as Resend does. With provider batches (`POST /emails/batch`,
//! up to 100 emails a request) the list needs N / 100 requests; without, N requests, which
//! at `limit`/s is N / limit seconds: that time is computed, not waited for.
//!
//! Owns its mock (the `webhook`-plugin mock of the other scenarios counts `{"id"}` bodies;
//! this one reads Resend bodies and their `herald_id` tags) and its daemon config. Not part
//! of `all`: it is a fixed-size run that measures batching, not the machine.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use herald_plugin_api::{Content, EmailContent};
use herald_protocol::{BatchItem, Lane, SendMessage};
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::daemon::Daemon;
use crate::load;
use crate::mock::unix_ns;
use crate::scenarios::Ctx;

/// Messages of the scenario.
pub const N: u64 = 10_000;
/// Requests per second the mock Resend allows.
pub const LIMIT_PER_SEC: u32 = 10;
/// The recipient of the one critical email sent while the blast is under way.
const CRITICAL_TO: &str = "critical@example.org";
/// How long the scenario waits for the last delivery before calling it a problem.
const DEADLINE: Duration = Duration::from_secs(300);

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct Blast {
    pub n: u64,
    /// The mock's limit, requests per second.
    pub limit_per_sec: u32,
    /// First send handed to the client → the mock's `200` for the last new email.
    pub secs: f64,
    /// Requests the mock answered `200` (batches and single sends).
    pub accepted_requests: u64,
    /// Requests the mock answered `429`.
    pub rate_limited: u64,
    /// The most emails in one accepted request.
    pub largest_batch: u64,
    /// Emails the mock accepted once / more than once / never (of the acknowledged).
    pub delivered: u64,
    pub duplicated: u64,
    pub missing: u64,
    /// N ÷ limit: the time the same list takes one email per request, at best.
    pub unbatched_secs: f64,
    /// One `critical` email sent once a fifth of the blast has reached the mock: its send
    /// handed to the client → the mock's `200` for the request holding it.
    pub critical_ms: Option<f64>,
    /// Blast emails not yet at the mock when the critical one was acknowledged, and when it
    /// arrived (the second is the first minus those that overtook it).
    pub bulk_waiting_at_critical: u64,
    pub bulk_waiting_at_critical_arrival: u64,
}

struct Inner {
    limit: u32,
    /// (Unix second, requests accepted in it).
    window: Mutex<(u64, u32)>,
    accepted_requests: AtomicU64,
    rate_limited: AtomicU64,
    largest_batch: AtomicU64,
    last_new_ns: AtomicU64,
    unique: AtomicU64,
    /// Herald id → `200` answers that carried it.
    seen: Mutex<HashMap<String, u32>>,
    /// When the critical email was first answered `200`, and the new blast emails seen
    /// by then (0: not yet).
    critical: Mutex<(u64, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Reply = hyper::Response<Full<Bytes>>;

fn reply(status: StatusCode, headers: &[(&'static str, String)], body: String) -> Reply {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    for (name, value) in headers {
        if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
            r.headers_mut().insert(*name, v);
        }
    }
    r
}

/// The `herald_id` tag of one email body.
fn herald_id(email: &Value) -> Option<String> {
    email["tags"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == "herald_id")?["value"]
        .as_str()
        .map(String::from)
}

impl Inner {
    /// Takes a place in this second's window, or says how long until the next one.
    fn admit(&self) -> Result<(), u64> {
        let now_ms = unix_ns() / 1_000_000;
        let second = now_ms / 1000;
        let mut w = lock(&self.window);
        if w.0 != second {
            *w = (second, 0);
        }
        if w.1 < self.limit {
            w.1 += 1;
            Ok(())
        } else {
            Err(1000 - now_ms % 1000)
        }
    }

    async fn answer(&self, req: hyper::Request<Incoming>) -> Reply {
        let path = req.uri().path().to_string();
        let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
            return reply(StatusCode::BAD_REQUEST, &[], String::new());
        };
        if let Err(wait_ms) = self.admit() {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            let secs = wait_ms.div_ceil(1000).max(1);
            return reply(
                StatusCode::TOO_MANY_REQUESTS,
                &[
                    ("retry-after", secs.to_string()),
                    ("ratelimit-reset", secs.to_string()),
                    ("content-type", "application/json".into()),
                ],
                json!({"statusCode": 429, "name": "rate_limit_exceeded",
                       "message": "Too many requests"})
                .to_string(),
            );
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let emails: Vec<Value> = match (path.as_str(), body) {
            ("/emails/batch", Value::Array(list)) => list,
            ("/emails", one @ Value::Object(_)) => vec![one],
            _ => {
                return reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &[("content-type", "application/json".into())],
                    json!({"statusCode": 422, "name": "validation_error",
                           "message": "not a Resend send"})
                    .to_string(),
                );
            }
        };
        let ids: Vec<String> = emails
            .iter()
            .map(|e| herald_id(e).unwrap_or_default())
            .collect();
        let mut fresh = 0;
        {
            let mut seen = lock(&self.seen);
            for id in &ids {
                let n = seen.entry(id.clone()).or_default();
                *n += 1;
                if *n == 1 {
                    fresh += 1;
                }
            }
        }
        let critical = emails.iter().any(|e| e.to_string().contains(CRITICAL_TO));
        if fresh > 0 {
            self.unique.fetch_add(fresh, Ordering::Relaxed);
            self.last_new_ns.fetch_max(unix_ns(), Ordering::Relaxed);
        }
        if critical {
            let mut c = lock(&self.critical);
            if c.0 == 0 {
                // The critical email itself is not a blast email.
                let blast = self.unique.load(Ordering::Relaxed).saturating_sub(1);
                *c = (unix_ns(), blast);
            }
        }
        self.accepted_requests.fetch_add(1, Ordering::Relaxed);
        self.largest_batch
            .fetch_max(ids.len() as u64, Ordering::Relaxed);
        let ct = [("content-type", "application/json".to_string())];
        if path == "/emails" {
            return reply(
                StatusCode::OK,
                &ct,
                json!({"id": format!("re-{}", ids[0])}).to_string(),
            );
        }
        let data: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": format!("re-{id}")}))
            .collect();
        reply(StatusCode::OK, &ct, json!({"data": data}).to_string())
    }
}

/// Starts the mock Resend on 127.0.0.1; returns its base URL.
async fn start_mock(limit: u32) -> Result<(String, Arc<Inner>)> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot listen for the mock Resend")?;
    let addr = listener.local_addr().context("the mock Resend's address")?;
    let inner = Arc::new(Inner {
        limit,
        window: Mutex::new((0, 0)),
        accepted_requests: AtomicU64::new(0),
        rate_limited: AtomicU64::new(0),
        largest_batch: AtomicU64::new(0),
        last_new_ns: AtomicU64::new(0),
        unique: AtomicU64::new(0),
        seen: Mutex::new(HashMap::new()),
        critical: Mutex::new((0, 0)),
    });
    let server = Arc::clone(&inner);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let inner = Arc::clone(&server);
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let inner = Arc::clone(&inner);
                    async move { Ok::<_, Infallible>(inner.answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((format!("http://{addr}"), inner))
}

/// The provider part of the daemon's config: the real Resend plugin at the mock, paced by
/// the daemon's own rate limit at the mock's (a 429 still pauses it, if one slips through).
pub fn provider_toml(mock_url: &str, limit: u32) -> String {
    format!(
        "[[providers]]\nname = \"resend\"\nplugin = \"resend\"\napi_key = \"${{HERALD_BENCH_RESEND_KEY}}\"\n\
         from = \"Bench <bench@example.com>\"\nbase_url = \"{mock_url}\"\nrate_limit = \"{limit}/s\"\n\
         burst = 1\ntimeout = \"1h\"\n\n[routes]\nemail = [\"resend\"]\n"
    )
}

/// The one urgent message of the run ("the ceremony moved to 4 pm").
fn critical_email() -> SendMessage {
    SendMessage {
        lane: Lane::Critical,
        to: CRITICAL_TO.into(),
        content: Content::Email(EmailContent {
            subject: "The ceremony moved to 4 pm".into(),
            text: Some("Please note: the ceremony now starts at 4 pm.".into()),
            ..Default::default()
        }),
        ..guest(N)
    }
}

fn guest(i: u64) -> SendMessage {
    SendMessage {
        to: format!("guest{i}@example.org"),
        content: Content::Email(EmailContent {
            subject: "Save the date".into(),
            text: Some(format!("Dear guest {i}, save the date.")),
            ..Default::default()
        }),
        tags: vec![],
        idempotency_key: None,
        send_at: None,
        override_suppression: false,
        // A guest-list blast is what the bulk lane is for.
        lane: Lane::Bulk,
        template: None,
        vars: Default::default(),
    }
}

impl Ctx {
    pub async fn blast(&mut self) -> Result<Blast> {
        let plugin = self.bins.plugin_dir.join("libherald_resend.so");
        if !plugin.is_file() {
            bail!(
                "{} does not exist; build it (cargo build --release -p herald-resend) or pass --plugin-dir",
                plugin.display()
            );
        }
        let (url, mock) = start_mock(LIMIT_PER_SEC).await?;
        let mut settings = self.params.daemon.clone();
        settings.provider = Some(provider_toml(&url, LIMIT_PER_SEC));
        let mut d: Daemon = self.daemon_with(&settings).await?;
        let client = load::connect_one(&d.socket, self.params.request_timeout).await?;
        eprintln!(
            "herald-bench: blast: {N} emails through the Resend plugin, mock Resend at {LIMIT_PER_SEC} requests/s"
        );
        let started = Instant::now();
        let started_ns = unix_ns();
        let mut acked: Vec<String> = Vec::with_capacity(N as usize);
        for from in (0..N).step_by(1000) {
            let batch = (from..(from + 1000).min(N)).map(guest).collect();
            let items = load::timed(self.params.request_timeout, client.send_batch(batch))
                .await
                .context("send_batch")?;
            for item in items {
                match item {
                    BatchItem::Accepted(a) => acked.push(a.id),
                    BatchItem::Error(e) => bail!("a send was refused: {}", e.message),
                }
            }
        }
        // A fifth of the way in, one critical email (lane `critical`): how long does it
        // take while thousands of bulk emails still wait for the 10/s limit?
        while mock.unique.load(Ordering::Relaxed) < N / 5 && started.elapsed() < DEADLINE {
            d.check_alive()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let critical_sent_ns = unix_ns();
        let critical = load::timed(self.params.request_timeout, client.send(critical_email()))
            .await
            .context("the critical send")?;
        let bulk_waiting_at_critical = N.saturating_sub(mock.unique.load(Ordering::Relaxed));
        acked.push(critical.id);
        while mock.unique.load(Ordering::Relaxed) < N + 1 {
            if started.elapsed() > DEADLINE {
                self.problem(
                    "blast",
                    format!(
                        "only {} of {N} emails reached the mock within {DEADLINE:?}\n{}",
                        mock.unique.load(Ordering::Relaxed),
                        d.log_tail(20)
                    ),
                );
                break;
            }
            d.check_alive()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let last = mock.last_new_ns.load(Ordering::Relaxed);
        let (critical_at, blast_before) = *lock(&mock.critical);
        let critical_ms =
            (critical_at > 0).then(|| critical_at.saturating_sub(critical_sent_ns) as f64 / 1e6);
        let bulk_waiting_at_critical_arrival = N.saturating_sub(blast_before);
        let secs = last.saturating_sub(started_ns) as f64 / 1e9;
        // Let late duplicates, if any, arrive before counting.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (delivered, duplicated, missing) = {
            let seen = lock(&mock.seen);
            let duplicated = seen.values().filter(|n| **n > 1).count() as u64;
            let missing = acked.iter().filter(|id| !seen.contains_key(*id)).count() as u64;
            (seen.len() as u64, duplicated, missing)
        };
        if duplicated > 0 || missing > 0 {
            self.problem(
                "blast",
                format!("{missing} emails never reached the mock, {duplicated} reached it twice"),
            );
        }
        drop(client);
        self.stop("blast", d).await;
        Ok(Blast {
            n: N,
            limit_per_sec: LIMIT_PER_SEC,
            secs,
            accepted_requests: mock.accepted_requests.load(Ordering::Relaxed),
            rate_limited: mock.rate_limited.load(Ordering::Relaxed),
            largest_batch: mock.largest_batch.load(Ordering::Relaxed),
            delivered,
            duplicated,
            missing,
            unbatched_secs: N as f64 / f64::from(LIMIT_PER_SEC),
            critical_ms,
            bulk_waiting_at_critical,
            bulk_waiting_at_critical_arrival,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config the scenario writes is one the daemon accepts (the plugin is not loaded:
    /// the parser checks the host's keys and the `${ENV}` reference).
    #[test]
    fn provider_config_parses() {
        let text = format!(
            "[daemon]\ndata_dir = \"/tmp/x\"\n\n{}",
            provider_toml("http://127.0.0.1:9", 10)
        );
        let env = |k: &str| (k == "HERALD_BENCH_RESEND_KEY").then(|| "re_bench".to_string());
        let c = herald_daemon::config::Config::parse(&text, "blast", &env).unwrap();
        assert_eq!(c.providers[0].plugin, "resend");
        assert!(c.providers[0].batch, "batching on by default");
    }

    #[tokio::test]
    async fn the_mock_limits_requests_per_second() {
        let (_, inner) = start_mock(3).await.unwrap();
        let admitted = (0..10).filter(|_| inner.admit().is_ok()).count();
        // Within one second at most 3; across a second boundary at most 6.
        assert!((3..=6).contains(&admitted), "{admitted}");
        let email = json!({"tags": [{"name": "herald_id", "value": "01H"}]});
        assert_eq!(herald_id(&email).as_deref(), Some("01H"));
    }
}
