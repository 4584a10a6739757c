//! The WebSocket side of `/v1/events`: the upgrade answer, and a [`Transport`] that sends
//! each event as one text frame, pings as keep-alive, and ends with a close frame whose
//! reason is JSON (`{"reason","resume_from","epoch"}`).
//!
//! Owns: WebSocket framing (tungstenite over hyper's upgraded connection). Messages from
//! the client are read (so pongs and closes are handled) but carry nothing; they are
//! bounded to a few KiB.

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::realtime::session::{Close, Item, Transport};

/// Largest message a client may send (it has nothing to say; this only bounds memory).
const MAX_CLIENT_MESSAGE: usize = 4096;

/// What the connection reads at a time. tungstenite's default (128 KiB) is allocated per
/// connection and zeroed before every read: a thousand streams would hold 128 MiB for
/// clients that only ever send pongs.
const READ_BUFFER: usize = 1024;

/// Frames handed are written once this much is buffered, or at a flush. Bounds what a
/// connection holds beyond its socket to this plus one frame (tungstenite's default is
/// 128 KiB).
const WRITE_BUFFER: usize = 16 * 1024;

type Stream = WebSocketStream<TokioIo<Upgraded>>;

pub struct Ws {
    sink: SplitSink<Stream, Message>,
    reader: tokio::task::JoinHandle<()>,
}

impl Ws {
    /// Wraps an upgraded connection; a task reads (and drops) what the client sends.
    pub async fn new(upgraded: Upgraded) -> Ws {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_CLIENT_MESSAGE))
            .max_frame_size(Some(MAX_CLIENT_MESSAGE))
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER);
        let stream =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (sink, mut incoming) = stream.split();
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = incoming.next().await {
                if m.is_close() {
                    break;
                }
            }
        });
        Ws { sink, reader }
    }
}

impl Drop for Ws {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Transport for Ws {
    async fn event(&mut self, item: Item) -> Result<(), ()> {
        // `feed` returns once the frame is in the connection's buffer, ahead of the close.
        self.sink
            .feed(Message::Text(item.json.into()))
            .await
            .map_err(|_| ())
    }

    async fn flush(&mut self) -> Result<(), ()> {
        self.sink.flush().await.map_err(|_| ())
    }

    async fn keepalive(&mut self) -> Result<(), ()> {
        self.sink
            .send(Message::Ping(Default::default()))
            .await
            .map_err(|_| ())
    }

    async fn close(&mut self, close: &Close) {
        let frame = CloseFrame {
            code: CloseCode::from(close.code),
            reason: close.json().into(),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
    }

    fn abort(&mut self) {
        self.reader.abort();
    }
}
