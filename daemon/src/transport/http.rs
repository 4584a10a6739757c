//! HTTP for plugins: one reqwest client for everything (connection pooling, ALPN h2 over
//! TLS), plus one with HTTP/2 prior knowledge for `http2` requests over plain TCP (APNs
//! mocks in tests).

use std::time::Duration;

use herald_plugin_api::{
    HttpRequest, HttpResponse, TransportError, TransportErrorKind, TransportResponse,
};

use super::{MAX_RESPONSE_BODY, host_allowed, refused};

#[derive(Debug)]
pub struct HttpTransport {
    client: reqwest::Client,
    h2c: reqwest::Client,
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("heraldd/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
}

impl HttpTransport {
    pub fn new() -> Result<HttpTransport, String> {
        Ok(HttpTransport {
            client: builder()
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?,
            h2c: builder()
                .http2_prior_knowledge()
                .build()
                .map_err(|e| format!("cannot build the HTTP/2 client: {e}"))?,
        })
    }

    pub async fn perform(
        &self,
        r: HttpRequest,
        allowed: &[String],
        default_timeout_ms: u64,
    ) -> TransportResponse {
        let url = match reqwest::Url::parse(&r.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            Ok(u) => return refused(format!("URL scheme {:?} is not http(s)", u.scheme())),
            Err(e) => return refused(format!("invalid URL from plugin: {e}")),
        };
        let host = url.host_str().unwrap_or("");
        if !host_allowed(host, allowed) {
            return refused(format!(
                "host {host:?} is not among this provider's allowed hosts {allowed:?} (set base_url to use another host)"
            ));
        }
        let method = match reqwest::Method::from_bytes(r.method.as_bytes()) {
            Ok(m) => m,
            Err(_) => return refused(format!("invalid HTTP method {:?}", r.method)),
        };
        let client = if r.http2 && url.scheme() == "http" {
            &self.h2c
        } else {
            &self.client
        };
        let mut req = client.request(method, url).timeout(Duration::from_millis(
            r.timeout_ms.unwrap_or(default_timeout_ms),
        ));
        if r.http2 {
            req = req.version(reqwest::Version::HTTP_2);
        }
        for (name, value) in &r.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let resp = match req.body(r.body).send().await {
            Ok(resp) => resp,
            Err(e) => return error(e),
        };
        let status = resp.status().as_u16();
        let headers = super::header_pairs(resp.headers());
        let mut body = Vec::new();
        let mut resp = resp;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_RESPONSE_BODY.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if room <= chunk.len() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => return error(e),
            }
        }
        TransportResponse::Http(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

fn error(e: reqwest::Error) -> TransportResponse {
    let kind = if e.is_timeout() {
        TransportErrorKind::Timeout
    } else if e.is_connect() {
        TransportErrorKind::Connect
    } else if e.is_builder() {
        TransportErrorKind::Refused
    } else {
        TransportErrorKind::Io
    };
    // The full chain (e.g. "connection refused") without the URL's query string.
    let mut message = String::new();
    let e = e.without_url();
    message.push_str(&e.to_string());
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    TransportResponse::Error(TransportError { kind, message })
}
