//! The accept loop of the daemon's two HTTP listeners (the public one: provider webhooks and
//! browser streams; the admin one): a bounded number of connections, HTTP/1.1 with a
//! header-read timeout, a [`ConnKill`] on every request so a handler can drop its
//! connection (a stalled stream), and a bounded drain at shutdown.
//!
//! Owns: connections — how many, how long their headers may take, how they end. Must not:
//! route or answer requests (each listener's handler does).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::Response;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::realtime::{Body, ConnKill};

/// How a listener serves its connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For logs: "webhook", "admin".
    pub name: &'static str,
    /// Connections open at once; past it the listener stops accepting (the kernel's backlog
    /// holds the next ones) until one closes.
    pub max_connections: usize,
    /// A client must send its request headers within this.
    pub header_timeout: Duration,
    /// At shutdown, how long open connections may take to finish.
    pub drain: Duration,
    /// Whether connections may be upgraded (WebSocket).
    pub upgrades: bool,
    /// The socket's send buffer, when set: bounds what the kernel holds for a slow reader.
    pub send_buffer: Option<usize>,
}

/// Serves `listener` until `shutdown`, answering every request with `handler`.
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    let mut warned = false;
    loop {
        let slot = tokio::select! {
            s = Arc::clone(&slots).acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        if slots.available_permits() == 0 && !warned {
            tracing::warn!(
                listener = limits.name,
                max_connections = limits.max_connections,
                "HTTP connection limit reached; new connections wait until one closes"
            );
            warned = true;
        } else if slots.available_permits() > limits.max_connections / 2 {
            warned = false;
        }
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(listener = limits.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        if let Some(bytes) = limits.send_buffer {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(bytes);
        }
        let handler = Arc::clone(&handler);
        conns.spawn(connection(stream, peer, limits, handler, slot));
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.drain, drain).await.is_err() {
        conns.abort_all();
    }
}

async fn connection<H, F>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    limits: Limits,
    handler: Arc<H>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let kill = ConnKill(Arc::default());
    let killed = Arc::clone(&kill.0);
    let svc = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(kill.clone());
        let answer = handler(req);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let io = TokioIo::new(stream);
    let ended = if limits.upgrades {
        tokio::select! {
            r = builder.serve_connection(io, svc).with_upgrades() => r.err(),
            _ = killed.notified() => None,
        }
    } else {
        tokio::select! {
            r = builder.serve_connection(io, svc) => r.err(),
            _ = killed.notified() => None,
        }
    };
    if let Some(e) = ended {
        tracing::debug!(listener = limits.name, %peer, error = %e, "http connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn limits(max_connections: usize) -> Limits {
        Limits {
            name: "test",
            max_connections,
            header_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(1),
            upgrades: false,
            send_buffer: None,
        }
    }

    async fn get(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn holds_at_most_max_connections_and_takes_the_next_when_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let server = tokio::spawn(serve(listener, limits(2), shutdown, |_req| async {
            Response::new(Full::new(Bytes::from("ok")).boxed_unsync())
        }));
        // Two idle connections take both places (they never send their headers).
        let idle1 = TcpStream::connect(addr).await.unwrap();
        let idle2 = TcpStream::connect(addr).await.unwrap();
        // The third is accepted by the kernel but not served while both are open.
        let third = tokio::spawn(get(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!third.is_finished(), "served past the limit");
        drop(idle1);
        let answer = tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .expect("served once a place was free")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        drop(idle2);
        let _ = stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("stops at shutdown")
            .unwrap();
    }
}
