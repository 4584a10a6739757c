//! The host's I/O on behalf of plugins: one pooled HTTP client (reqwest, rustls, HTTP/2)
//! and an SMTP transport (lettre, same TLS stack). Plugins describe requests; only this
//! module performs them.
//!
//! Every request is checked against the instance's allowed hosts before it leaves, and
//! redirects are never followed (a redirect could carry credentials to another host).
//! Owns: connection pools, timeouts, response size bounds. Must not: interpret responses
//! (that is the plugin's job) or retry (that is dispatch's).

mod http;
mod smtp;

use herald_plugin_api::{Request, TransportError, TransportErrorKind, TransportResponse};

/// Largest response body kept for the plugin; the rest is dropped.
pub const MAX_RESPONSE_BODY: usize = 1 << 20;

#[derive(Debug)]
pub struct Transports {
    http: http::HttpTransport,
    smtp: smtp::SmtpTransport,
}

fn refused(message: String) -> TransportResponse {
    TransportResponse::Error(TransportError {
        kind: TransportErrorKind::Refused,
        message,
    })
}

/// Header names (lower case) and values as plugins see them; a non-UTF-8 value is
/// decoded lossily.
pub fn header_pairs(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Whether `host` is one of `allowed` (case-insensitive; IPv6 with or without brackets).
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let bare = |h: &str| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    };
    let host = bare(host);
    allowed.iter().any(|a| bare(a) == host)
}

impl Transports {
    pub fn new() -> Result<Transports, String> {
        Ok(Transports {
            http: http::HttpTransport::new()?,
            smtp: smtp::SmtpTransport::default(),
        })
    }

    /// Performs `request` for a plugin instance that may reach `allowed` hosts.
    pub async fn perform(
        &self,
        request: Request,
        allowed: &[String],
        default_timeout_ms: u64,
    ) -> TransportResponse {
        match request {
            Request::Http(r) => self.http.perform(r, allowed, default_timeout_ms).await,
            Request::Smtp(r) => {
                if !host_allowed(&r.host, allowed) {
                    return refused(format!(
                        "SMTP host {:?} is not among this provider's allowed hosts {allowed:?}",
                        r.host
                    ));
                }
                self.smtp.perform(r, default_timeout_ms).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn host_matching() {
        let allowed = vec!["api.resend.com".to_string(), "::1".to_string()];
        assert!(host_allowed("API.resend.com", &allowed));
        assert!(host_allowed("[::1]", &allowed));
        assert!(!host_allowed("api.resend.com.evil.io", &allowed));
        assert!(!host_allowed("127.0.0.1", &allowed));
    }
}
