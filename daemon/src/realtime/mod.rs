//! Browser event streams: `GET /v1/events` on the webhook listener, as a WebSocket or as
//! Server-Sent Events, scoped by a token (`token`) that the host application mints
//! (`mint_token`). `docs/http.md` documents every parameter, status and close code.
//!
//! A request is checked completely before anything is streamed or upgraded: the method,
//! `[realtime]` configured, the `Origin` against `realtime.allowed_origins` (403), the
//! query (400), the token (401), the kind of stream (406), a free stream slot (503). Then
//! a [`session`] follows the durable log for it.
//!
//! Owns: the request checks, CORS, where a stream starts (`from_seq`, `epoch`,
//! `Last-Event-ID`). Must not: log a token or the query string that may carry one.

mod filter;
mod session;
mod sse;
pub mod token;
mod ws;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_protocol::{ErrorBody, Response as Answer};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Notify;

use crate::clock;
use crate::config::{self, RealtimeConfig};
use crate::live::{Live, LiveCell};

pub use filter::StreamFilter;
pub use session::Context;
use session::Params;
use token::TokenError;

/// Every response body of the public listener.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Set on each request by the listener: notifying it drops that HTTP connection.
#[derive(Debug, Clone)]
pub struct ConnKill(pub Arc<Notify>);

/// Answers `mint_token` (the socket request).
pub fn mint_token(
    live: &Live,
    tags: Vec<String>,
    ids: Vec<String>,
    admin: bool,
    ttl_ms: Option<u64>,
) -> Result<Answer, ErrorBody> {
    let Some(cfg) = &live.config.realtime else {
        return Err(ErrorBody::field(
            "realtime",
            "stream tokens need [realtime] token_secret = \"${HERALD_TOKEN_SECRET}\" in the config",
        ));
    };
    match token::mint(cfg, tags, ids, admin, ttl_ms, clock::now_ms()) {
        Ok((token, expires_at)) => Ok(Answer::Token { token, expires_at }),
        Err(TokenError::Field(field, message)) => Err(ErrorBody::field(field, message)),
        Err(e) => Err(ErrorBody::new(
            herald_protocol::ErrorCode::Internal,
            e.to_string(),
        )),
    }
}

pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The streams of one daemon.
pub struct Streams {
    pub ctx: Context,
    pub live: Arc<LiveCell>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

/// Counts an open stream while it lives.
struct Slot(Arc<crate::metrics::Metrics>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| {
        v.split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    })
}

/// CORS headers for an allowed `Origin`.
fn cors(r: &mut Response<Body>, origin: Option<&str>) {
    if let Some(o) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        r.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn unauthorized(why: &str) -> Response<Body> {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        format!("{why}; mint a token with mint_token or `herald token`"),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"herald\""),
    );
    r
}

impl Streams {
    /// `GET /v1/events` (and its CORS preflight).
    pub async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let live = self.live.current();
        let Some(cfg) = live.config.realtime.clone() else {
            return text(
                StatusCode::NOT_FOUND,
                "event streams are not configured: add a [realtime] section with token_secret",
            );
        };
        let origin = header_str(&req, header::ORIGIN).map(str::to_string);
        if let Some(o) = &origin
            && !cfg.allowed_origins.contains(&o.to_ascii_lowercase())
        {
            return text(
                StatusCode::FORBIDDEN,
                format!("origin {o:?} is not in realtime.allowed_origins"),
            );
        }
        if req.method() == Method::OPTIONS {
            let mut r = text(StatusCode::NO_CONTENT, "");
            cors(&mut r, origin.as_deref());
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, last-event-id"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            return r;
        }
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        }
        let with_cors = |mut r: Response<Body>| {
            cors(&mut r, origin.as_deref());
            r
        };
        let query = match filter::Query::parse(req.uri().query().unwrap_or("")) {
            Ok(q) => q,
            Err(e) => return with_cors(text(StatusCode::BAD_REQUEST, e)),
        };
        let bearer = header_str(&req, header::AUTHORIZATION)
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let Some(token) = bearer.or(query.token.as_deref()) else {
            return with_cors(unauthorized(
                "a stream token is required (Authorization: Bearer <token> or ?token=)",
            ));
        };
        let scope = match token::verify(&cfg, token, clock::now_ms()) {
            Ok(s) => s,
            Err(e) => return with_cors(unauthorized(&e.to_string())),
        };
        let websocket = has_token(header_str(&req, header::UPGRADE), "websocket");
        let sse = !websocket
            && header_str(&req, header::ACCEPT).is_some_and(|a| a.contains("text/event-stream"));
        if !websocket && !sse {
            return with_cors(text(
                StatusCode::NOT_ACCEPTABLE,
                "open a WebSocket (Upgrade: websocket) or ask for Server-Sent Events (Accept: text/event-stream)",
            ));
        }
        // Where to start: Last-Event-ID (SSE reconnects) over from_seq; an epoch that is
        // not this log's means the client's seq belongs to a replaced data dir, so it gets
        // the whole retained log (each event names its epoch) rather than a silent gap.
        let epoch = self.ctx.store.epoch();
        let last_event_id =
            header_str(&req, header::HeaderName::from_static("last-event-id")).map(str::to_string);
        let (from_epoch, from_seq) = match &last_event_id {
            Some(v) => match filter::parse_last_event_id(v) {
                Some((e, seq)) => (e.map(str::to_string), Some(seq + 1)),
                None => {
                    return with_cors(text(
                        StatusCode::BAD_REQUEST,
                        "Last-Event-ID must be <epoch>:<seq> as this stream sent it",
                    ));
                }
            },
            None => (query.epoch.clone(), query.from_seq),
        };
        let from_seq = match from_epoch {
            Some(e) if e != epoch => Some(0),
            _ => from_seq,
        };
        let max = cfg.max_streams as u64;
        let metrics = Arc::clone(&self.ctx.metrics);
        if metrics.streams.fetch_add(1, Ordering::Relaxed) >= max {
            metrics.streams.fetch_sub(1, Ordering::Relaxed);
            let mut r = with_cors(text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("too many open streams (realtime.max_streams = {max}); retry later"),
            ));
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
        let slot = Slot(metrics);
        let params = params(&cfg, scope, query.filter, from_seq);
        let ctx = self.ctx.clone();
        if websocket {
            let key = header_str(&req, header::SEC_WEBSOCKET_KEY).map(str::to_string);
            let version_ok = header_str(&req, header::SEC_WEBSOCKET_VERSION) == Some("13");
            let (Some(key), true) = (key, version_ok) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
                );
            };
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let _slot = slot;
                match upgrade.await {
                    Ok(upgraded) => session::run(ctx, params, ws::Ws::new(upgraded).await).await,
                    Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
                }
            });
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
            let h = r.headers_mut();
            h.remove(header::CONTENT_TYPE);
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            if let Ok(v) = HeaderValue::from_str(&accept) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
            return r;
        }
        let kill = req
            .extensions()
            .get::<ConnKill>()
            .map(|k| Arc::clone(&k.0))
            .unwrap_or_default();
        let (transport, body) = sse::Sse::new(epoch, kill);
        tokio::spawn(async move {
            let _slot = slot;
            session::run(ctx, params, transport).await;
        });
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Proxies (nginx) must not buffer the stream.
        h.insert(
            header::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
        with_cors(r)
    }
}

fn params(
    cfg: &RealtimeConfig,
    scope: token::Scope,
    filter: StreamFilter,
    from_seq: Option<u64>,
) -> Params {
    Params {
        scope,
        filter,
        from_seq,
        client_buffer: cfg.client_buffer,
        stall: Duration::from_millis(cfg.stall_timeout_ms),
        keepalive: Duration::from_millis(cfg.keepalive_ms),
        flush_interval: Duration::from_millis(cfg.flush_interval_ms),
    }
}

/// The admin listener's own stream for the status page: everything (admin scope), as SSE,
/// with no token (the admin listener is loopback, operator-only).
pub fn admin_stream(
    ctx: Context,
    live: &Live,
    last_event_id: Option<&str>,
    kill: Arc<Notify>,
) -> Response<Body> {
    let epoch = ctx.store.epoch();
    let from_seq = last_event_id
        .and_then(filter::parse_last_event_id)
        .map(|(e, seq)| match e {
            Some(e) if e != epoch => 0,
            _ => seq + 1,
        });
    let (buffer, stall, keepalive, flush) = match &live.config.realtime {
        Some(c) => (
            c.client_buffer,
            c.stall_timeout_ms,
            c.keepalive_ms,
            c.flush_interval_ms,
        ),
        None => (
            config::DEFAULT_CLIENT_BUFFER,
            config::DEFAULT_STALL_TIMEOUT_MS,
            config::DEFAULT_KEEPALIVE_MS,
            config::DEFAULT_FLUSH_INTERVAL_MS,
        ),
    };
    let params = Params {
        scope: token::Scope {
            tags: vec![],
            ids: vec![],
            admin: true,
            expires_at: u64::MAX,
        },
        filter: StreamFilter::default(),
        from_seq,
        client_buffer: buffer,
        stall: Duration::from_millis(stall),
        keepalive: Duration::from_millis(keepalive),
        flush_interval: Duration::from_millis(flush),
    };
    let (transport, body) = sse::Sse::new(epoch, kill);
    let metrics = Arc::clone(&ctx.metrics);
    metrics.streams.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let _slot = Slot(metrics);
        session::run(ctx, params, transport).await;
    });
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
