//! A raw socket client for protocol-level tests: length-prefixed frames over a plain
//! `UnixStream`, with nothing of `herald-client` in between, so a test can send exactly the
//! bytes it means (trailing bytes, huge ids, a half-close) and read exactly what comes back.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long any one read may wait for the daemon.
const READ: Duration = Duration::from_secs(30);

/// The 4-byte big-endian length, then `body`.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Connects and says hello with `codec` (`"json"` or `"postcard"`); returns the stream
/// and the welcome's body (undecoded).
pub async fn connect(socket: &Path, codec: &str) -> (UnixStream, Vec<u8>) {
    let mut s = UnixStream::connect(socket)
        .await
        .expect("connect to heraldd");
    let hello = format!(r#"{{"herald": 1, "codec": "{codec}"}}"#);
    s.write_all(&frame(hello.as_bytes())).await.expect("hello");
    let welcome = read_frame(&mut s).await.expect("a welcome");
    (s, welcome)
}

/// Reads one frame; `None` when the daemon closed the connection.
pub async fn read_frame(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    tokio::time::timeout(READ, s.read_exact(&mut len))
        .await
        .expect("the daemon answered in time")
        .ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    tokio::time::timeout(READ, s.read_exact(&mut body))
        .await
        .expect("the daemon finished the frame in time")
        .ok()?;
    Some(body)
}

/// Reads one JSON frame (panics if the connection closed instead).
pub async fn read_json(s: &mut UnixStream) -> Value {
    let body = read_frame(s)
        .await
        .expect("a frame, not a closed connection");
    serde_json::from_slice(&body).expect("a JSON frame")
}

/// Reads JSON frames until the daemon closes the connection.
pub async fn read_json_until_closed(s: &mut UnixStream) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(body) = read_frame(s).await {
        out.push(serde_json::from_slice(&body).expect("a JSON frame"));
    }
    out
}
