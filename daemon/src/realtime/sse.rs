//! The Server-Sent Events side of `/v1/events`: a streaming response body where each
//! event is `id: <epoch>:<seq>` + `data: <event JSON>`, comment lines keep it alive, and a
//! final `event: close` says why it ended and where to resume. A browser's `EventSource`
//! reconnects by itself and sends the last `id` as `Last-Event-ID`.
//!
//! Owns: SSE framing and the response body. Events handed between two flushes are joined
//! into one chunk (at most [`CHUNK`] bytes before it is sent anyway); the body is fed
//! through a one-chunk channel, so a chunk is "handed" only once hyper took the previous
//! one: a client that stops reading stops the pump within one chunk.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use tokio::sync::{Notify, mpsc};

use crate::realtime::Body;
use crate::realtime::session::{Close, Item, Transport};

/// How long a browser waits before reconnecting after the stream ends (ms).
const RETRY_MS: u32 = 2000;

/// Events joined into one chunk before it is sent without waiting for a flush.
const CHUNK: usize = 16 * 1024;

pub struct Sse {
    tx: mpsc::Sender<Bytes>,
    /// Events handed since the last chunk was sent.
    pending: String,
    epoch: String,
    /// Drops the whole HTTP connection (the close did not get through).
    kill: Arc<Notify>,
}

impl Sse {
    /// The transport and the response body it feeds.
    pub fn new(epoch: String, kill: Arc<Notify>) -> (Sse, Body) {
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let opening = Bytes::from(format!(
            "retry: {RETRY_MS}\n: herald event stream, epoch {epoch}\n\n"
        ));
        let stream =
            futures_util::stream::unfold((Some(opening), rx), |(first, mut rx)| async move {
                if let Some(b) = first {
                    return Some((Ok::<_, Infallible>(Frame::data(b)), (None, rx)));
                }
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), (None, rx)))
            });
        (
            Sse {
                tx,
                pending: String::new(),
                epoch,
                kill,
            },
            StreamBody::new(stream).boxed_unsync(),
        )
    }

    /// Sends what is pending as one chunk.
    async fn send(&mut self) -> Result<(), ()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.pending));
        self.tx.send(chunk).await.map_err(|_| ())
    }
}

impl Transport for Sse {
    async fn event(&mut self, item: Item) -> Result<(), ()> {
        use std::fmt::Write;
        let _ = write!(
            self.pending,
            "id: {}:{}\ndata: {}\n\n",
            self.epoch, item.seq, item.json
        );
        if self.pending.len() >= CHUNK {
            self.send().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ()> {
        self.send().await
    }

    async fn keepalive(&mut self) -> Result<(), ()> {
        self.pending.push_str(": keep-alive\n\n");
        self.send().await
    }

    async fn close(&mut self, close: &Close) {
        use std::fmt::Write;
        let _ = write!(self.pending, "event: close\ndata: {}\n\n", close.json());
        let _ = self.send().await;
        // Wait until hyper took the close event: the channel has room again.
        let _ = self.tx.reserve().await;
    }

    fn abort(&mut self) {
        self.kill.notify_one();
    }
}
