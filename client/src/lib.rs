//! `herald-client`: the async Rust client for `heraldd`'s Unix socket. The wire types come
//! from `herald-protocol`, re-exported here as [`protocol`].
//!
//! One [`Client`] is one connection. Requests are pipelined: every call sends a frame with a
//! fresh id and awaits the response with that id, so many tasks may share a client
//! (`Client` is `Clone`). A background reader routes responses by id; a background writer
//! coalesces frames from concurrent callers into few writes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), herald_client::ClientError> {
//! use herald_client::{Client, protocol::SendMessage};
//! use herald_plugin_api::{Content, SmsContent};
//! let client = Client::connect("var/herald/herald.sock").await?;
//! let ack = client
//!     .send(SendMessage {
//!         to: "+14155550100".into(),
//!         content: Content::Sms(SmsContent { body: "RSVP?".into(), ..Default::default() }),
//!         tags: vec!["rsvp".into()],
//!         idempotency_key: None,
//!         send_at: None,
//!         override_suppression: false,
//!         lane: Default::default(),
//!         template: None,
//!         vars: Default::default(),
//!     })
//!     .await?;
//! println!("queued {}", ack.id);
//! // Rendered by the daemon from its stored template `welcome` (`[templates] dir`):
//! use herald_client::protocol::{Channel, Vars};
//! let vars = Vars::default().with("name", "Ann").with("plan", "pro");
//! let mut m = SendMessage::templated("ann@example.com", Channel::Email, "welcome", vars);
//! m.idempotency_key = Some("welcome-ann".into());
//! client.send(m).await?;
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]

pub use herald_protocol as protocol;
pub use herald_protocol::DEFAULT_SOCKET;

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use herald_plugin_api::{Channel, Event};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use protocol::{
    Accepted, BatchItem, ClientFrame, Codec, ErrorBody, Filter, Hello, MessageView,
    PROTOCOL_VERSION, ProtocolError, Request, Response, SendMessage, ServerFrame, Stats,
    StoreCheck, SuppressionCursor, SuppressionEntry, SuppressionStatus, Welcome,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {path}: {source} (is heraldd running? set --socket or HERALD_SOCKET)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The daemon answered with an error.
    #[error("{0}")]
    Server(ErrorBody),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("unexpected response from the daemon: {0}")]
    Unexpected(String),
}

enum Pending {
    Once(oneshot::Sender<Response>),
    Stream(mpsc::Sender<Response>),
}

struct Inner {
    codec: Codec,
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    /// Set by the reader when the connection ended: later requests fail at once instead of
    /// waiting for an answer that cannot come.
    closed: AtomicBool,
}

impl Inner {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a pending answer, unless the connection is already gone.
    fn register(&self, id: u64, pending: Pending) -> Result<(), ClientError> {
        let mut map = self.pending();
        // Checked under the lock the reader clears the map with, so a request is either
        // refused here or its entry is dropped by that clear.
        if self.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        map.insert(id, pending);
        Ok(())
    }

    fn send_frame(&self, id: u64, request: Request) -> Result<(), ClientError> {
        let mut buf = Vec::new();
        protocol::encode_frame_into(self.codec, &ClientFrame { id, request }, &mut buf)?;
        self.out.send(buf).map_err(|_| ClientError::Closed)
    }
}

/// A connection to `heraldd`. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    welcome: Arc<Welcome>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("codec", &self.inner.codec)
            .field("server", &self.welcome.server)
            .finish()
    }
}

impl Client {
    /// Connects with the compact postcard codec.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        Client::connect_with(path, Codec::Postcard).await
    }

    pub async fn connect_with(path: impl AsRef<Path>, codec: Codec) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        protocol::write_frame(
            &mut wr,
            Codec::Json,
            &Hello {
                herald: PROTOCOL_VERSION,
                codec,
            },
        )
        .await?;
        let mut buf = Vec::new();
        protocol::read_frame(&mut rd, protocol::DEFAULT_MAX_FRAME, &mut buf).await?;
        // A refused hello is answered with a JSON error frame, whatever codec was asked
        // for. (Tried first: JSON bytes can pass for a postcard welcome. A postcard welcome
        // never parses as JSON, and a JSON welcome has no `response`.)
        if let Ok(ServerFrame {
            response: Response::Error(err),
            ..
        }) = protocol::decode::<ServerFrame>(Codec::Json, &buf)
        {
            return Err(ClientError::Server(err));
        }
        let welcome: Welcome = protocol::decode(codec, &buf)?;
        if welcome.herald != PROTOCOL_VERSION {
            return Err(ClientError::Unexpected(format!(
                "the daemon ({}) speaks protocol {}, this client {PROTOCOL_VERSION}",
                welcome.server, welcome.herald
            )));
        }

        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let inner = Arc::new(Inner {
            codec,
            out: tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        });

        // Writer: coalesce whatever is queued into one write.
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(frame) = rx.recv().await {
                batch.clear();
                batch.extend_from_slice(&frame);
                while batch.len() < 256 * 1024 {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&batch).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });

        // Reader: route responses by id.
        let reader_inner = Arc::downgrade(&inner);
        let max = welcome.max_frame.max(protocol::DEFAULT_MAX_FRAME) * 4;
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                if protocol::read_frame(&mut rd, max, &mut buf).await.is_err() {
                    break;
                }
                let Ok(frame) = protocol::decode::<ServerFrame>(codec, &buf) else {
                    break;
                };
                let Some(inner) = reader_inner.upgrade() else {
                    break;
                };
                let route = {
                    let mut pending = inner.pending();
                    match pending.get(&frame.id) {
                        Some(Pending::Stream(tx)) => {
                            let tx = tx.clone();
                            if matches!(frame.response, Response::Unsubscribed | Response::Error(_))
                            {
                                pending.remove(&frame.id);
                            }
                            Some(Err(tx))
                        }
                        Some(Pending::Once(_)) => match pending.remove(&frame.id) {
                            Some(Pending::Once(tx)) => Some(Ok(tx)),
                            _ => None,
                        },
                        None => None,
                    }
                };
                match route {
                    Some(Ok(once)) => {
                        let _ = once.send(frame.response);
                    }
                    Some(Err(stream)) => {
                        // Backpressure: a slow subscriber slows this connection's reads.
                        let _ = stream.send(frame.response).await;
                    }
                    None => {}
                }
            }
            if let Some(inner) = reader_inner.upgrade() {
                let mut pending = inner.pending();
                inner.closed.store(true, Ordering::Release);
                pending.clear();
            }
        });

        Ok(Client {
            inner,
            welcome: Arc::new(welcome),
        })
    }

    /// What the daemon said in its handshake.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.register(id, Pending::Once(tx))?;
        if let Err(e) = self.inner.send_frame(id, request) {
            self.inner.pending().remove(&id);
            return Err(e);
        }
        match rx.await {
            Ok(Response::Error(e)) => Err(ClientError::Server(e)),
            Ok(r) => Ok(r),
            Err(_) => Err(ClientError::Closed),
        }
    }

    pub async fn send(&self, message: SendMessage) -> Result<Accepted, ClientError> {
        match self.call(Request::Send(message)).await? {
            Response::Accepted(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    /// Sends many messages in one request; the answer has one item per message, in order.
    pub async fn send_batch(
        &self,
        messages: Vec<SendMessage>,
    ) -> Result<Vec<BatchItem>, ClientError> {
        match self.call(Request::SendBatch(messages)).await? {
            Response::BatchAccepted(items) => Ok(items),
            other => Err(unexpected(other)),
        }
    }

    pub async fn get(&self, id: &str) -> Result<MessageView, ClientError> {
        match self.call(Request::Get { id: id.into() }).await? {
            Response::Message(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    pub async fn cancel(&self, id: &str) -> Result<(), ClientError> {
        match self.call(Request::Cancel { id: id.into() }).await? {
            Response::Cancelled { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn stats(&self) -> Result<Stats, ClientError> {
        match self.call(Request::Stats).await? {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    pub async fn reload(&self) -> Result<String, ClientError> {
        match self.call(Request::Reload).await? {
            Response::Reloaded { detail } => Ok(detail),
            other => Err(unexpected(other)),
        }
    }

    pub async fn dead_list(&self, limit: Option<u32>) -> Result<Vec<MessageView>, ClientError> {
        match self.call(Request::DeadList { limit }).await? {
            Response::DeadList(list) => Ok(list),
            other => Err(unexpected(other)),
        }
    }

    pub async fn dead_requeue(&self, ids: Vec<String>) -> Result<u32, ClientError> {
        match self.call(Request::DeadRequeue { ids }).await? {
            Response::Requeued { count } => Ok(count),
            other => Err(unexpected(other)),
        }
    }

    /// Checks the store against its indexes and counts and repairs what is wrong (only
    /// reports, with `dry_run`).
    pub async fn check_store(&self, dry_run: bool) -> Result<StoreCheck, ClientError> {
        match self.call(Request::CheckStore { dry_run }).await? {
            Response::StoreChecked(report) => Ok(report),
            other => Err(unexpected(other)),
        }
    }

    /// Mints a token for the HTTP event streams (`GET /v1/events`): its bearer sees only
    /// events carrying one of `tags`, or of the messages `ids`, or everything with `admin`.
    /// Returns the token and when it expires (Unix ms). `ttl_ms` defaults to one hour.
    pub async fn mint_token(
        &self,
        tags: Vec<String>,
        ids: Vec<String>,
        admin: bool,
        ttl_ms: Option<u64>,
    ) -> Result<(String, u64), ClientError> {
        match self
            .call(Request::MintToken {
                tags,
                ids,
                admin,
                ttl_ms,
            })
            .await?
        {
            Response::Token { token, expires_at } => Ok((token, expires_at)),
            other => Err(unexpected(other)),
        }
    }

    /// A page of the suppression list after `after` (the previous page's cursor), at most
    /// `limit` entries (default 100, at most 1000); the cursor of the next page, if any.
    pub async fn suppression_list(
        &self,
        after: Option<SuppressionCursor>,
        limit: Option<u32>,
    ) -> Result<(Vec<SuppressionEntry>, Option<SuppressionCursor>), ClientError> {
        match self.call(Request::SuppressionList { after, limit }).await? {
            Response::SuppressionList { entries, next } => Ok((entries, next)),
            other => Err(unexpected(other)),
        }
    }

    /// Puts `recipient` on `channel`'s suppression list; the entry, and whether this call
    /// added it (false: it was there already, and its entry stays).
    pub async fn suppression_add(
        &self,
        channel: Channel,
        recipient: &str,
        reason: &str,
    ) -> Result<(SuppressionEntry, bool), ClientError> {
        match self
            .call(Request::SuppressionAdd {
                channel,
                recipient: recipient.to_string(),
                reason: reason.to_string(),
            })
            .await?
        {
            Response::SuppressionAdded { entry, added } => Ok((entry, added)),
            other => Err(unexpected(other)),
        }
    }

    /// Takes `recipient` (any spelling) off `channel`'s suppression list; the entry
    /// removed, `None` when it was not on it.
    pub async fn suppression_remove(
        &self,
        channel: Channel,
        recipient: &str,
    ) -> Result<Option<SuppressionEntry>, ClientError> {
        match self
            .call(Request::SuppressionRemove {
                channel,
                recipient: recipient.to_string(),
            })
            .await?
        {
            Response::SuppressionRemoved { entry } => Ok(entry),
            other => Err(unexpected(other)),
        }
    }

    /// Whether each recipient (at most 1000) is on `channel`'s suppression list.
    pub async fn suppression_check(
        &self,
        channel: Channel,
        recipients: Vec<String>,
    ) -> Result<Vec<SuppressionStatus>, ClientError> {
        match self
            .call(Request::SuppressionCheck {
                channel,
                recipients,
            })
            .await?
        {
            Response::SuppressionChecked(list) => Ok(list),
            other => Err(unexpected(other)),
        }
    }

    /// Subscribes to events matching `filter`. With `from_seq`, retained events with
    /// `seq >= from_seq` are replayed first; the stream then continues live, without gaps.
    ///
    /// Up to 1,024 events wait for [`Subscription::next_event`]; past that the connection
    /// stops reading (the daemon waits too: its event log is the buffer), so the answers
    /// to this client's other requests wait as well. Read the subscription as it goes, or
    /// subscribe on a [`Client`] of its own.
    pub async fn subscribe(
        &self,
        filter: Filter,
        from_seq: Option<u64>,
    ) -> Result<Subscription, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(1024);
        self.inner.register(id, Pending::Stream(tx))?;
        if let Err(e) = self
            .inner
            .send_frame(id, Request::Subscribe { filter, from_seq })
        {
            self.inner.pending().remove(&id);
            return Err(e);
        }
        match rx.recv().await {
            Some(Response::Subscribed {
                first_seq,
                last_seq,
                epoch,
            }) => Ok(Subscription {
                id,
                first_seq,
                last_seq,
                epoch,
                rx,
                inner: Arc::clone(&self.inner),
            }),
            Some(Response::Error(e)) => Err(ClientError::Server(e)),
            Some(other) => Err(unexpected(other)),
            None => Err(ClientError::Closed),
        }
    }
}

fn unexpected(r: Response) -> ClientError {
    ClientError::Unexpected(format!("{r:?}"))
}

/// A live event stream. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    /// The oldest retained event when the subscription started.
    pub first_seq: u64,
    /// The newest event when the subscription started.
    pub last_seq: u64,
    /// The event log's epoch: a `seq` remembered under another epoch belongs to a
    /// replaced data directory and must not be resumed from.
    pub epoch: String,
    rx: mpsc::Receiver<Response>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("first_seq", &self.first_seq)
            .field("last_seq", &self.last_seq)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Subscription {
    /// The next event; `None` when the connection closed.
    pub async fn next_event(&mut self) -> Option<Result<Event, ClientError>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event, ClientError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Response::Event(e))) => Poll::Ready(Some(Ok(e))),
            Poll::Ready(Some(Response::Error(e))) => Poll::Ready(Some(Err(ClientError::Server(e)))),
            Poll::Ready(Some(Response::Unsubscribed)) | Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(other)) => Poll::Ready(Some(Err(unexpected(other)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures_core::Stream for Subscription {
    type Item = Result<Event, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.inner.pending().remove(&self.id);
        let next = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.inner.send_frame(
            next,
            Request::Unsubscribe {
                subscription: self.id,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ErrorCode;
    use tokio::io::AsyncReadExt;

    /// Accepts one connection and reads its hello frame.
    async fn accept_hello(listener: tokio::net::UnixListener) -> tokio::net::UnixStream {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut hello).await.unwrap();
        s
    }

    /// A daemon stand-in that answers the hello, then hangs up.
    async fn hang_up_after_hello(listener: tokio::net::UnixListener) {
        let mut s = accept_hello(listener).await;
        let welcome = Welcome {
            herald: PROTOCOL_VERSION,
            server: "test".into(),
            max_frame: protocol::DEFAULT_MAX_FRAME,
        };
        protocol::write_frame(&mut s, Codec::Postcard, &welcome)
            .await
            .unwrap();
    }

    /// A daemon stand-in that refuses the hello the way heraldd does: a JSON error frame.
    async fn refuse_hello(listener: tokio::net::UnixListener) {
        let mut s = accept_hello(listener).await;
        let refusal = ServerFrame {
            id: 0,
            response: Response::Error(ErrorBody::new(
                ErrorCode::UnsupportedProtocol,
                "this heraldd speaks protocol 2, the client asked for 1",
            )),
        };
        protocol::write_frame(&mut s, Codec::Json, &refusal)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_refused_hello_is_the_daemons_error_with_either_codec() {
        for codec in [Codec::Postcard, Codec::Json] {
            let path = std::env::temp_dir().join(format!(
                "herald-client-refused-{}-{codec:?}.sock",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            let server = tokio::spawn(refuse_hello(listener));
            let r = Client::connect_with(&path, codec).await;
            server.await.unwrap();
            match r {
                Err(ClientError::Server(e)) => {
                    assert_eq!(e.code, ErrorCode::UnsupportedProtocol, "{codec:?}");
                }
                other => panic!("{codec:?}: {other:?}"),
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    #[tokio::test]
    async fn requests_after_the_connection_closed_fail_instead_of_hanging() {
        let path = std::env::temp_dir().join(format!("herald-client-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(hang_up_after_hello(listener));
        let client = Client::connect(&path).await.unwrap();
        server.await.unwrap();
        // However the calls race the reader noticing the hang-up, none may hang.
        for _ in 0..3 {
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), client.stats()).await;
            assert!(matches!(r, Ok(Err(ClientError::Closed))), "{r:?}");
        }
        let _ = std::fs::remove_file(&path);
    }
}
