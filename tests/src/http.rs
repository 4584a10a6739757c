//! A small HTTP/1.1 client for the daemon's listeners (hyper's client connection over a
//! plain TCP stream): one-shot requests, and a Server-Sent Events reader.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An answer, read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a new connection; an empty `body` sends none (as `Empty` would).
async fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> hyper::Response<Incoming> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the daemon's listener");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender
        .send_request(req.body(Full::new(body)).expect("request"))
        .await
        .expect("send request")
}

fn header_list(r: &hyper::Response<Incoming>) -> Vec<(String, String)> {
    r.headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}

/// A request whose answer is read to the end (with a minute's deadline).
pub async fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    answer(port, method, path, headers, Bytes::new()).await
}

pub async fn get(port: u16, path: &str) -> Answer {
    request(port, "GET", path, &[]).await
}

/// A POST of `body` (a provider's webhook), its answer read to the end (a minute's
/// deadline).
pub async fn post(port: u16, path: &str, headers: &[(&str, &str)], body: String) -> Answer {
    answer(port, "POST", path, headers, Bytes::from(body)).await
}

async fn answer(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    tokio::time::timeout(Duration::from_secs(60), async {
        let r = send(port, method, path, headers, body).await;
        let status = r.status().as_u16();
        let headers = header_list(&r);
        let body = r.into_body().collect().await.expect("read body").to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    })
    .await
    .expect("an answer within a minute")
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// `message` unless the stream named it.
    pub event: String,
    pub data: String,
}

/// A Server-Sent Events response, read event by event.
#[derive(Debug)]
pub struct Sse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: Incoming,
    buf: String,
}

impl Sse {
    /// `GET path` with `Accept: text/event-stream` and `headers`. A refusal is read whole
    /// into `Err`.
    pub async fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Sse, Answer> {
        let mut all = vec![("accept", "text/event-stream")];
        all.extend_from_slice(headers);
        let r = send(port, "GET", path, &all, Bytes::new()).await;
        let status = r.status().as_u16();
        let headers = header_list(&r);
        if status != 200 {
            let body = r
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(Answer {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(Sse {
            status,
            headers,
            body: r.into_body(),
            buf: String::new(),
        })
    }

    /// The next event (comments skipped); `None` when the stream ended. Panics after
    /// `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let mut e = SseEvent {
                        event: "message".into(),
                        ..Default::default()
                    };
                    let mut any = false;
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            e.id = Some(v.to_string());
                            any = true;
                        } else if let Some(v) = line.strip_prefix("event: ") {
                            e.event = v.to_string();
                            any = true;
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            e.data.push_str(v);
                            any = true;
                        }
                    }
                    if any && (e.id.is_some() || !e.data.is_empty()) {
                        return Some(e);
                    }
                    continue;
                }
                match self.body.frame().await {
                    Some(Ok(f)) => {
                        if let Ok(data) = f.into_data() {
                            self.buf.push_str(&String::from_utf8_lossy(&data));
                        }
                    }
                    _ => return None,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no server-sent event within {timeout:?}"))
    }
}
