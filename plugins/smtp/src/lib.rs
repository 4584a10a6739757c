//! `smtp`: delivers email through a mail server the operator runs or rents (SMTP
//! submission, RFC 6409), using the host's SMTP transport.
//!
//! This crate owns the submission envelope ([`SmtpRequest`]) built from a message and
//! the meaning of the server's final reply. It performs no I/O — the host connects,
//! secures the connection, authenticates, builds the MIME message and submits it — never
//! reads the clock, and never logs or `Debug`-prints the password.
//!
//! # Configuration
//!
//! ```toml
//! [[providers]]
//! name = "mail"
//! plugin = "smtp"
//! host = "smtp.example.com"            # required; a host name or IP address, no port
//! port = 587                           # default 587, or 465 with tls = "implicit"
//! tls = "starttls"                     # "starttls" | "implicit" | "none"
//! username = "herald@example.com"      # optional; with password
//! password = "${SMTP_PASSWORD}"        # secret; required with username
//! from = "Weddings <hello@example.com>"  # required: the default sender
//! message_id_domain = "example.com"    # default: the domain of `from`
//! request_timeout = "30s"              # optional: "500ms", "30s", "2m"
//! ```
//!
//! `tls` defaults to `implicit` on port 465 and to `starttls` (required, never
//! opportunistic) on any other port. `none` is for local test sinks: it is logged as a
//! warning at load, and refused together with credentials unless `host` is a loopback
//! address. (`timeout` is a key the host owns for every provider, hence
//! `request_timeout`; when absent the host's default applies. There is no `base_url`:
//! `host` and `port` are the override.) The envelope may only go to `host`
//! (`allowed_hosts`).
//!
//! # The envelope
//!
//! - sender: the message's `from`, else the configured `from`; one recipient: `to`;
//! - `Message-ID: <{message id}@{message_id_domain}>`, our correlation id, plus an
//!   `X-Herald-Id: {message id}` header;
//! - the message's own headers, except those the transport writes or that would
//!   misrepresent the envelope (From, Sender, To, Cc, Bcc, Reply-To, Subject, Date,
//!   Message-ID, MIME-Version, Content-Type, Content-Transfer-Encoding, Return-Path,
//!   X-Herald-Id), which are dropped.
//!
//! # What the final reply means (providers.md §6 and §8)
//!
//! | reply | outcome |
//! | --- | --- |
//! | 2xx | `Accepted{provider_message_id: the Message-ID}` (with angle brackets): the server took it; later delivery is unknown |
//! | 4xx | `Retry`; not counted by the breaker for 450 and 4.2.x (one mailbox is busy or full) |
//! | 530, 534, 535, 538, or 5.7.8 / 5.7.9 / 5.7.11 (authentication) | `ProviderFailure`: fix username/password; the next provider takes over |
//! | 5xx with 5.1.1 (bad mailbox) | `Rejected{bounced: true, suppress: true}` |
//! | other 5xx with 5.7.x (policy: relaying denied, spam, sender rate limit) | `ProviderFailure`: an alert for the operator |
//! | other 5xx (550, 551, 552, 553, 554) | `Rejected` |
//! | timeout, connect, TLS, I/O error | `Retry` (a duplicate is possible if DATA completed and the reply was lost: SMTP has no idempotency) |
//! | refused by the host (host not allowed, malformed) | `ProviderFailure` |
//!
//! The enhanced status code is taken from the reply's `enhanced` field, else from the
//! first `x.y.z` token of its text whose class matches the reply code.
#![deny(unsafe_code)]

use herald_plugin_api::{
    Channel, ConfigError, ConfigKey, Content, Delivery, Host, Manifest, Outcome, Provider,
    ProviderConfig, Request, Secret, SmtpReply, SmtpRequest, SmtpTls, Step, TransportResponse,
    email_address_part, is_reserved_email_header,
};
use herald_plugin_kit::config::{check_sender, request_timeout_ms};
use herald_plugin_kit::http_url::is_loopback_host;
use herald_plugin_kit::outcome::{Exchange, wrong_channel};
use herald_plugin_kit::text::{REASON_CHARS, excerpt};
use serde::Deserialize;
use serde_json::Value;

herald_plugin_api::export_plugin!(Smtp);

/// The submission, as failure reasons name it.
const SUBMISSION: Exchange<'static> = Exchange::new("SMTP submission");

/// The `[[providers]]` keys this plugin reads, as written by the operator. `port` is read
/// wide so an out-of-range value gets an error naming the key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: String,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    tls: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    from: String,
    #[serde(default)]
    message_id_domain: Option<String>,
    #[serde(default)]
    request_timeout: Option<String>,
}

/// A login for the mail server. `Debug` prints the password as `***`.
#[derive(Debug, Clone)]
struct Credentials {
    username: String,
    password: Secret,
}

/// One configured SMTP relay, validated.
#[derive(Debug)]
pub struct Smtp {
    host: String,
    port: u16,
    tls: SmtpTls,
    credentials: Option<Credentials>,
    from: String,
    message_id_domain: String,
    timeout_ms: Option<u64>,
}

impl Provider for Smtp {
    fn manifest() -> Manifest {
        Manifest {
            name: "smtp".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: herald_plugin_api::API_VERSION.into(),
            description: "Submits email to an SMTP server (STARTTLS on 587, implicit TLS on 465)."
                .into(),
            channels: vec![Channel::Email],
            config: vec![
                ConfigKey::required("host", "SMTP server host name or IP address (no port)"),
                ConfigKey::optional(
                    "port",
                    "SMTP port: default 587, or 465 with tls = \"implicit\"",
                ),
                ConfigKey::optional(
                    "tls",
                    "\"starttls\" (default; required upgrade), \"implicit\" (default on 465), or \
                     \"none\" (local test sinks only)",
                ),
                ConfigKey::optional("username", "login name; requires password"),
                ConfigKey::optional("password", "login password; requires username").secret(),
                ConfigKey::required(
                    "from",
                    "default sender, e.g. \"Weddings <hello@example.com>\"",
                ),
                ConfigKey::optional(
                    "message_id_domain",
                    "domain of the Message-ID header (default: the domain of from)",
                ),
                ConfigKey::optional(
                    "request_timeout",
                    "per-submission timeout such as \"30s\" (default: the host's)",
                ),
            ],
            webhooks: false,
            idempotent: false,
            blocking: false,
            batch: None,
            allowed_hosts: Vec::new(),
        }
    }

    fn new(config: ProviderConfig, host: Host) -> Result<Smtp, ConfigError> {
        let raw: RawConfig = config.parse()?;
        let name = &config.name;
        let err = |m: String| ConfigError::new(format!("provider {name:?}: {m}"));

        let server = parse_host(&raw.host).map_err(err)?;

        let tls = match raw.tls.as_deref() {
            None => None,
            Some("starttls") => Some(SmtpTls::Starttls),
            Some("implicit") => Some(SmtpTls::Implicit),
            Some("none") => Some(SmtpTls::None),
            Some(other) => {
                return Err(err(format!(
                    "tls must be \"starttls\", \"implicit\" or \"none\", got {other:?}"
                )));
            }
        };
        let port = match raw.port {
            None if tls == Some(SmtpTls::Implicit) => 465,
            None => 587,
            Some(p) => u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                err(format!(
                    "port must be 1-65535 (usually 587 or 465), got {p}"
                ))
            })?,
        };
        let tls = tls.unwrap_or(if port == 465 {
            SmtpTls::Implicit
        } else {
            SmtpTls::Starttls
        });

        let credentials = match (raw.username, raw.password) {
            (None, None) => None,
            (Some(username), Some(password)) => {
                if username.trim().is_empty() {
                    return Err(err(
                        "username is empty; remove it or set the login name".into()
                    ));
                }
                if password.expose().is_empty() {
                    return Err(err(
                        "password is empty; set it as password = \"${SMTP_PASSWORD}\"".into(),
                    ));
                }
                Some(Credentials { username, password })
            }
            (Some(_), None) => {
                return Err(err(
                    "username is set but password is not; add password = \"${SMTP_PASSWORD}\""
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    "password is set but username is not; add username = \"<login>\"".into(),
                ));
            }
        };

        check_sender(&raw.from).map_err(err)?;
        let from = raw.from.trim().to_string();
        let message_id_domain = match raw.message_id_domain {
            Some(d) => {
                let d = d.trim().to_ascii_lowercase();
                if !is_domain(&d) {
                    return Err(err(format!(
                        "message_id_domain must be a domain such as example.com, got {d:?}"
                    )));
                }
                d
            }
            None => email_address_part(&from)
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .filter(|d| is_domain(d))
                .ok_or_else(|| {
                    err(format!(
                        "cannot take a Message-ID domain from from = {from:?}; set \
                         message_id_domain = \"example.com\""
                    ))
                })?,
        };

        let timeout_ms = request_timeout_ms(raw.request_timeout.as_deref()).map_err(err)?;

        if tls == SmtpTls::None {
            if credentials.is_some() && !is_loopback_host(&server) {
                return Err(err(format!(
                    "tls = \"none\" would send the password in clear text to {server}; use \
                     tls = \"starttls\" or \"implicit\""
                )));
            }
            host.log.warn(format!(
                "provider {name:?}: tls = \"none\": mail to {server}:{port} is sent \
                 unencrypted; use this only with a local test sink"
            ));
        }
        match (port, tls) {
            (465, SmtpTls::Starttls) => host.log.warn(format!(
                "provider {name:?}: port 465 normally expects tls = \"implicit\", not starttls"
            )),
            (587, SmtpTls::Implicit) => host.log.warn(format!(
                "provider {name:?}: port 587 normally expects tls = \"starttls\", not implicit"
            )),
            _ => {}
        }

        Ok(Smtp {
            host: server,
            port,
            tls,
            credentials,
            from,
            message_id_domain,
            timeout_ms,
        })
    }

    fn allowed_hosts(&self) -> Vec<String> {
        vec![self.host.clone()]
    }

    fn begin(&self, delivery: &Delivery) -> Step {
        let message = &delivery.message;
        let Content::Email(email) = &message.content else {
            return Step::done(wrong_channel("smtp", "email", message));
        };
        let mut headers: Vec<(String, String)> = email
            .headers
            .iter()
            // Accept refuses reserved names; a message stored by an older daemon may have them.
            .filter(|(n, _)| !is_reserved_email_header(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        headers.push(("X-Herald-Id".into(), message.id.clone()));
        let request = SmtpRequest {
            host: self.host.clone(),
            port: self.port,
            tls: self.tls,
            username: self.credentials.as_ref().map(|c| c.username.clone()),
            password: self.credentials.as_ref().map(|c| c.password.clone()),
            timeout_ms: self.timeout_ms,
            from: email.from.clone().unwrap_or_else(|| self.from.clone()),
            to: vec![message.to.clone()],
            reply_to: email.reply_to.clone(),
            subject: email.subject.clone(),
            text: email.text.clone(),
            html: email.html.clone(),
            message_id: self.message_id(&message.id),
            headers,
            attachments: email.attachments.clone(),
        };
        Step::call(Request::Smtp(request), Value::Null)
    }

    fn resume(&self, delivery: &Delivery, _state: Value, response: TransportResponse) -> Step {
        Step::done(match SUBMISSION.smtp(&response) {
            Ok(reply) => outcome_for(reply, &self.message_id(&delivery.message.id)),
            Err(outcome) => outcome,
        })
    }
}

impl Smtp {
    /// `<{id}@{domain}>`; characters not allowed in a Message-ID become `-`.
    fn message_id(&self, id: &str) -> String {
        let left: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("<{left}@{}>", self.message_id_domain)
    }
}

/// Maps the server's final reply to an outcome.
fn outcome_for(reply: &SmtpReply, message_id: &str) -> Outcome {
    let code = reply.code;
    let enhanced = reply
        .enhanced
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .or_else(|| enhanced_in_text(code, &reply.message));
    let enhanced = enhanced.as_deref().unwrap_or("");
    let said = format!(
        "SMTP server answered {code}{}{}",
        if enhanced.is_empty() { "" } else { " " },
        enhanced
    ) + &excerpt(&reply.message, REASON_CHARS);
    match code {
        200..=299 => Outcome::Accepted {
            provider_message_id: Some(message_id.to_string()),
            delivered: false,
        },
        400..=499 => Outcome::Retry {
            after_ms: None,
            reason: said,
            breaker: !(code == 450 || enhanced.starts_with("4.2.")),
        },
        500..=599 => {
            let auth = matches!(code, 530 | 534 | 535 | 538)
                || matches!(enhanced, "5.7.8" | "5.7.9" | "5.7.11");
            if auth {
                Outcome::provider_failure(format!(
                    "{said}; authentication failed: check username and password"
                ))
            } else if enhanced == "5.1.1" {
                Outcome::Rejected {
                    reason: said,
                    bounced: true,
                    suppress: true,
                }
            } else if enhanced.starts_with("5.7.") {
                Outcome::provider_failure(format!(
                    "{said}; the server refused by policy: check the relay's sender and \
                     relaying settings"
                ))
            } else {
                Outcome::rejected(said)
            }
        }
        _ => Outcome::provider_failure(format!("{said}; not a final SMTP reply")),
    }
}

/// The first `class.subject.detail` token in `text` whose class is the reply code's first
/// digit (RFC 3463), e.g. `5.1.1` in `550 5.1.1 <a@x.io>: Recipient address rejected`.
fn enhanced_in_text(code: u16, text: &str) -> Option<String> {
    let class = char::from_digit(u32::from(code / 100), 10)?;
    text.split(|c: char| c.is_whitespace() || "()[]<>,;:\"'".contains(c))
        .map(|t| t.trim_end_matches('.'))
        .find(|t| {
            let mut parts = t.split('.');
            let ok = |p: Option<&str>, max: usize| {
                p.is_some_and(|p| {
                    !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
                })
            };
            t.starts_with(class)
                && ok(parts.next(), 1)
                && ok(parts.next(), 3)
                && ok(parts.next(), 3)
                && parts.next().is_none()
        })
        .map(str::to_string)
}

/// A bare host name or IP address (an IPv6 address may come in brackets; they are
/// removed).
fn parse_host(raw: &str) -> Result<String, String> {
    let host = raw.trim();
    if host.is_empty() {
        return Err(
            "host is empty; set it to the SMTP server, e.g. host = \"smtp.example.com\"".into(),
        );
    }
    if host.contains("://") {
        return Err(format!(
            "host must be a host name such as smtp.example.com, not a URL, got {host:?}; give \
             the port as port = 465 and the security as tls = \"implicit\""
        ));
    }
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if unbracketed.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(unbracketed.to_string());
    }
    if host.contains(':') {
        return Err(format!(
            "host must not include a port, got {host:?}; set port = <number> instead"
        ));
    }
    let valid = host.split('.').all(|l| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !valid {
        return Err(format!(
            "host must be a host name such as smtp.example.com or an IP address, got {host:?}"
        ));
    }
    Ok(host.to_ascii_lowercase())
}

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests;
