//! A scriptable mock provider: a real hyper HTTP/1.1 + HTTP/2 (prior knowledge) server on
//! 127.0.0.1 that records every request and answers from a script.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub version: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// When the request (its body read) arrived.
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Rule = Box<dyn Fn(&Recorded) -> Option<Reply> + Send + Sync>;

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    script: VecDeque<Reply>,
    rules: Vec<Rule>,
    default: Option<Reply>,
    counter: u64,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: usize,
    max_in_flight: usize,
}

/// Handle to a running mock server. Dropping it leaves the server running until the test
/// runtime ends.
#[derive(Clone)]
pub struct MockProvider {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    /// While true, requests are recorded but not answered (a provider that hangs).
    held: Arc<tokio::sync::watch::Sender<bool>>,
}

impl std::fmt::Debug for MockProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockProvider")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MockProvider {
    /// Starts a server answering `200 {"id": "mock-<n>"}` unless scripted otherwise.
    pub async fn start() -> MockProvider {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let mock = MockProvider {
            addr,
            state: Arc::new(Mutex::new(State::default())),
            changed: Arc::new(Notify::new()),
            held: Arc::new(tokio::sync::watch::channel(false).0),
        };
        let m = mock.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let m = m.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let m = m.clone();
                        async move { Ok::<_, Infallible>(m.answer(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        mock
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers the next request with `reply` (script entries are used in order, before
    /// rules and the default).
    pub fn push(&self, reply: Reply) {
        self.lock().script.push_back(reply);
    }

    /// A rule consulted (in order) when the script is empty.
    pub fn rule(&self, f: impl Fn(&Recorded) -> Option<Reply> + Send + Sync + 'static) {
        self.lock().rules.push(Box::new(f));
    }

    /// The answer when nothing else applies.
    pub fn set_default(&self, reply: Reply) {
        self.lock().default = Some(reply);
    }

    /// From now on, requests are recorded but their answers wait until [`release`].
    ///
    /// [`release`]: MockProvider::release
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Answers every held request, and the later ones at once.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.lock().requests.len()
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    /// Waits until at least `n` requests arrived; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if self.count() >= n {
                return self.requests();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "mock provider got {} requests, expected {n} within {timeout:?}",
                    self.count()
                );
            }
        }
    }

    async fn answer(&self, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let version = format!("{:?}", req.version());
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = match req.into_body().collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
        let rec = Recorded {
            method,
            path,
            version,
            headers,
            body,
            at: std::time::Instant::now(),
        };
        let reply = {
            let mut s = self.lock();
            s.counter += 1;
            let n = s.counter;
            let reply = s
                .script
                .pop_front()
                .or_else(|| s.rules.iter().find_map(|r| r(&rec)))
                .or_else(|| s.default.clone())
                .unwrap_or_else(|| Reply::new(200, format!(r#"{{"id":"mock-{n}"}}"#)));
            s.requests.push(rec);
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            reply
        };
        self.changed.notify_waiters();
        let _ = self.held.subscribe().wait_for(|held| !held).await;
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        self.lock().in_flight -= 1;
        let mut resp = hyper::Response::builder().status(reply.status);
        for (n, v) in &reply.headers {
            resp = resp.header(n, v);
        }
        resp.body(Full::new(Bytes::from(reply.body)))
            .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
    }
}
