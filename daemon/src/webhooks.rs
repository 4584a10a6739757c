//! The public HTTP listener: providers' delivery-status callbacks and inbound replies
//! (`POST <public_url>/webhooks/<provider name>`), and the browser event streams
//! (`GET /v1/events`, handed to `realtime`).
//!
//! The body is bounded (`webhooks.max_body`) and handed, raw, to the provider's plugin,
//! which verifies the signature (there is no unsigned path) and parses it. The resulting
//! status updates and inbound messages are committed — durable — before the provider gets
//! its 2xx, so a crash in between makes the provider retry rather than lose the update.
//! Duplicates (provider retries) are no-ops in the store.
//!
//! Owns: HTTP parsing, body bounds, URL reconstruction for signatures. Must not: verify or
//! interpret payloads (the plugin does) or change state except through the committer.

use std::sync::Arc;
use std::time::Duration;

use herald_plugin_api::WebhookRequest;
use herald_plugin_api::abi::{CallError, CallErrorKind};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock;
use crate::commit::Committer;
use crate::config::DEFAULT_WEBHOOK_CONNECTIONS as DEFAULT_MAX_CONNECTIONS;
use crate::http_server;
use crate::live::LiveCell;
use crate::realtime::{Body, Streams};
use crate::store::{Op, OpResult};

pub struct WebhookServer {
    pub committer: Committer,
    pub live: Arc<LiveCell>,
    pub streams: Arc<Streams>,
}

impl std::fmt::Debug for WebhookServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookServer").finish_non_exhaustive()
    }
}

/// Bounds the kernel's send buffer of a connection: a stream whose browser stops reading
/// holds at most this much of the daemon's (kernel) memory besides its event queue.
const SEND_BUFFER: usize = 64 * 1024;

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl WebhookServer {
    pub async fn serve(self, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        let max_connections = self
            .live
            .current()
            .config
            .webhooks
            .as_ref()
            .map_or(DEFAULT_MAX_CONNECTIONS, |w| w.max_connections);
        let this = Arc::new(self);
        let limits = http_server::Limits {
            name: "webhook",
            max_connections,
            header_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(5),
            upgrades: true,
            send_buffer: Some(SEND_BUFFER),
        };
        http_server::serve(listener, limits, shutdown, move |req| {
            let this = Arc::clone(&this);
            async move { this.route(req).await }
        })
        .await;
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() == "/v1/events" {
            return self.streams.handle(req).await;
        }
        self.handle(req).await.map(BodyExt::boxed_unsync)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let live = self.live.current();
        let Some(cfg) = live.config.webhooks.clone() else {
            return text(StatusCode::NOT_FOUND, "webhooks are not configured");
        };
        let path = req.uri().path().to_string();
        let Some(name) = path
            .strip_prefix("/webhooks/")
            .filter(|n| !n.is_empty() && !n.contains('/'))
        else {
            return text(
                StatusCode::NOT_FOUND,
                "providers post to /webhooks/<provider name>",
            );
        };
        let Some(provider) = live.routing.providers.get(name).cloned() else {
            return text(StatusCode::NOT_FOUND, format!("no provider named {name:?}"));
        };
        if !provider.manifest.webhooks {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "provider {name:?} (plugin {}) takes no webhooks",
                    provider.plugin
                ),
            );
        }
        if !matches!(req.method().as_str(), "POST" | "GET") {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        }
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > cfg.max_body) {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body exceeds webhooks.max_body ({} bytes)", cfg.max_body),
            );
        }
        let method = req.method().to_string();
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let url = match &cfg.public_url {
            Some(base) => format!("{base}/webhooks/{name}{query}"),
            None => {
                let host = req
                    .headers()
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost")
                    .to_string();
                format!("http://{host}{path}{query}")
            }
        };
        let headers = crate::transport::header_pairs(req.headers());
        let body = match Limited::new(req.into_body(), cfg.max_body).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body exceeds webhooks.max_body ({} bytes)", cfg.max_body),
                );
            }
        };
        let Ok(body) = String::from_utf8(body.to_vec()) else {
            return text(StatusCode::BAD_REQUEST, "the webhook body is not UTF-8");
        };
        let request = WebhookRequest {
            method,
            url,
            headers,
            body,
        };
        let p = Arc::clone(&provider);
        let verdict =
            tokio::task::spawn_blocking(move || p.instance.webhook(request, clock::now_ms()))
                .await
                .unwrap_or_else(|e| {
                    Err(CallError {
                        kind: CallErrorKind::Panic,
                        message: e.to_string(),
                    })
                });
        let output = match verdict {
            Ok(o) => o,
            Err(e) => {
                let status = match e.kind {
                    CallErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
                    CallErrorKind::BadRequest => StatusCode::BAD_REQUEST,
                    CallErrorKind::Unsupported => StatusCode::NOT_FOUND,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                tracing::warn!(provider = %name, status = status.as_u16(), reason = %e.message, "webhook refused");
                return text(status, e.message);
            }
        };
        let rsvp = &live.config.rsvp.table;
        let ops: Vec<Op> = output
            .updates
            .into_iter()
            .map(|update| Op::Status {
                provider: name.to_string(),
                update,
                max_attempts: live.config.retry.max_attempts,
            })
            .chain(output.inbound.into_iter().map(|inbound| Op::Inbound {
                provider: name.to_string(),
                // A STOP is an opt-out and nothing else; the table never reads one anyway.
                rsvp: if inbound.opt_out == Some(true) {
                    None
                } else {
                    rsvp.parse(&inbound.body)
                },
                inbound,
            }))
            .collect();
        let n = ops.len();
        let mut applied = 0;
        for r in self.committer.submit_all(ops).await {
            match r {
                Ok(OpResult::Done | OpResult::Held) => applied += 1,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(provider = %name, error = %e, "could not store a webhook; the provider will retry");
                    return text(StatusCode::SERVICE_UNAVAILABLE, "not stored; retry later");
                }
            }
        }
        tracing::debug!(provider = %name, updates = n, applied, "webhook stored");
        let mut resp = Response::new(Full::new(Bytes::from(output.response.body)));
        *resp.status_mut() = StatusCode::from_u16(output.response.status).unwrap_or(StatusCode::OK);
        if let Some(ct) = output.response.content_type
            && let Ok(v) = hyper::header::HeaderValue::from_str(&ct)
        {
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        resp
    }
}
