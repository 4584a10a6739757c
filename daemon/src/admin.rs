//! The operator listener (`[admin] listen`, loopback unless `allow_remote`): `/metrics`
//! (Prometheus text), `/healthz` (the process answers), `/readyz` (it can do its job),
//! `/` (the status page, embedded in the binary), and the page's data: `/status.json`
//! and `/events` (every event, as SSE — no token: this listener is operator-only).
//!
//! Owns: these routes and the readiness checks. Must not: change anything (every route is
//! a read), or be reachable from the public listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_plugin_api::State;
use herald_protocol::StorageState;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::breaker::BreakerState;
use crate::clock;
use crate::commit::Committer;
use crate::http_server;
use crate::live::LiveCell;
use crate::metrics::Metrics;
use crate::realtime::{self, Body, ConnKill, Context};
use crate::store::Store;

/// The status page: one self-contained HTML file (no build step, no CDN).
const STATUS_PAGE: &str = include_str!("../assets/status.html");

pub struct Admin {
    pub store: Arc<dyn Store>,
    pub committer: Committer,
    pub live: Arc<LiveCell>,
    pub metrics: Arc<Metrics>,
    pub ctx: Context,
    pub started_at: u64,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One readiness check: its name and, when it fails, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub problem: Option<String>,
}

/// Connections the operator listener serves at once (a status page, a scraper, a few
/// terminals); more wait.
const MAX_CONNECTIONS: usize = 64;

impl Admin {
    pub async fn serve(self, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let limits = http_server::Limits {
            name: "admin",
            max_connections: MAX_CONNECTIONS,
            header_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(2),
            upgrades: false,
            send_buffer: None,
        };
        http_server::serve(listener, limits, shutdown, move |req| {
            let this = Arc::clone(&this);
            async move { this.route(req) }
        })
        .await;
    }

    fn route(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "use GET",
            );
        }
        match req.uri().path() {
            "/" => respond(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
            "/metrics" => {
                // OpenMetrics for scrapers that ask for it (Prometheus does), the classic
                // text format otherwise.
                let text = self
                    .metrics
                    .render(self.store.as_ref(), &self.live, clock::now_ms());
                let openmetrics = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("application/openmetrics-text"));
                if openmetrics {
                    respond(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        text,
                    )
                } else {
                    respond(
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        crate::metrics::to_prometheus_text(&text),
                    )
                }
            }
            "/healthz" => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
            "/readyz" => {
                let checks = self.readiness();
                let ready = checks.iter().all(|c| c.problem.is_none());
                let body = json!({
                    "ready": ready,
                    "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.problem.is_none(), "problem": c.problem})).collect::<Vec<_>>(),
                });
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                respond(status, "application/json", body.to_string())
            }
            "/status.json" => respond(
                StatusCode::OK,
                "application/json",
                self.status().to_string(),
            ),
            "/events" => {
                let last = req
                    .headers()
                    .get("last-event-id")
                    .and_then(|v| v.to_str().ok());
                let kill = req
                    .extensions()
                    .get::<ConnKill>()
                    .map(|k| Arc::clone(&k.0))
                    .unwrap_or_default();
                realtime::admin_stream(self.ctx.clone(), &self.live.current(), last, kill)
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: /, /metrics, /healthz, /readyz, /status.json, /events",
            ),
        }
    }

    /// What `/readyz` checks. Another condition (storage running low, say) is one more
    /// entry here.
    pub fn readiness(&self) -> Vec<Check> {
        let now = clock::now_ms();
        let live = self.live.current();
        let store = match self.store.first_seq() {
            Ok(_) => None,
            Err(e) => Some(format!("the store cannot be read: {e}")),
        };
        let writer = (!self.committer.is_alive())
            .then(|| "the commit thread stopped; nothing can be accepted".to_string());
        // Below the free-space reserve, or after a storage failure, sends are refused.
        let storage = self.committer.storage();
        let storage = (storage.state != StorageState::Ok).then(|| {
            storage
                .detail
                .unwrap_or_else(|| format!("the store is {:?}", storage.state))
        });
        let usable = live
            .routing
            .routes
            .values()
            .flatten()
            .any(|p| p.breaker.state(now) != BreakerState::Open);
        let route = (!usable).then(|| {
            "every routed provider's circuit breaker is open; messages wait until one recovers"
                .to_string()
        });
        vec![
            Check {
                name: "store",
                problem: store,
            },
            Check {
                name: "writer",
                problem: writer,
            },
            Check {
                name: "storage",
                problem: storage,
            },
            Check {
                name: "route",
                problem: route,
            },
        ]
    }

    /// The status page's snapshot: counts per state, providers, the log's position.
    fn status(&self) -> serde_json::Value {
        let now = clock::now_ms();
        let live = self.live.current();
        let counts = self.store.counts();
        let states: serde_json::Map<String, serde_json::Value> = State::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), json!(counts.get(*s))))
            .collect();
        let providers: Vec<serde_json::Value> = live
            .routing
            .providers
            .values()
            .map(|p| {
                let routes: Vec<&str> = live
                    .routing
                    .routes
                    .iter()
                    .filter(|(_, list)| list.iter().any(|q| q.name == p.name))
                    .map(|(c, _)| c.as_str())
                    .collect();
                json!({
                    "name": p.name,
                    "plugin": p.plugin,
                    "channels": routes,
                    "breaker": p.breaker.state(now).as_str(),
                    "retry_at": p.breaker.retry_at(),
                    "accepted": p.counters.accepted.load(Ordering::Relaxed),
                    "retries": p.counters.retries.load(Ordering::Relaxed),
                    "failures": p.counters.failures.load(Ordering::Relaxed),
                    "rejected": p.counters.rejected.load(Ordering::Relaxed),
                })
            })
            .collect();
        json!({
            "now": now,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_ms": now.saturating_sub(self.started_at),
            "epoch": self.store.epoch(),
            "last_seq": self.committer.durable_seq(),
            "active": counts.active(),
            "max_queue": live.config.daemon.max_queue,
            "states": states,
            "providers": providers,
            "streams": self.metrics.streams.load(Ordering::Relaxed),
            "ready": self.readiness().iter().all(|c| c.problem.is_none()),
        })
    }
}

/// Binds the admin listener (start-up fails with a clear message if it cannot).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (admin.listen)"))
}
