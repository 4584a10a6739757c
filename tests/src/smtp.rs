//! A real SMTP server for the end-to-end tests: [`SmtpServer`] runs
//! `tests/fixtures/smtp/sink.py`, a small recording sink built on
//! [aiosmtpd](https://aiosmtpd.aio-libs.org), as a child process on 127.0.0.1.
//!
//! ```no_run
//! # async fn demo() {
//! use herald_tests::smtp::SmtpServer;
//! let sink = SmtpServer::start().await;
//! let with_auth = SmtpServer::builder().auth("herald", "s3cret").start().await;
//! let port = sink.port();
//! let received = sink.messages();
//! # }
//! ```
//!
//! The sink answers `550 5.1.1` to RCPT TO addresses starting with `unknown`, `451 4.3.0`
//! to those starting with `tempfail`, and with [`SmtpServerBuilder::auth`] requires AUTH
//! (PLAIN or LOGIN, offered without TLS) before MAIL, answering `535 5.7.8` to a wrong
//! login. It records every RCPT, AUTH and message as numbered files in its spool
//! directory, and parses each message with Python's `email` package, so the tests see the
//! decoded MIME tree as well as the raw text.
//!
//! aiosmtpd is provisioned on first use: the system `python3` (or `$HERALD_TEST_PYTHON`)
//! is used as it is when it can import aiosmtpd (`.ci/run` installs it); otherwise
//! [`AIOSMTPD`] is installed once, with `pip install --target`, into
//! `target/herald-test-python/`, shared by every test process that uses this target dir.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The aiosmtpd release installed when the system python has none.
pub const AIOSMTPD: &str = "aiosmtpd==1.4.6";

/// What the sink needs from aiosmtpd (`UnthreadedController` came with 1.4).
const IMPORT_CHECK: &str = "from aiosmtpd.controller import UnthreadedController\n\
                            from aiosmtpd.smtp import AuthResult, LoginPassword";

/// The sink script, committed beside the tests.
pub fn sink_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smtp/sink.py")
}

/// A python interpreter that can import aiosmtpd, with the `PYTHONPATH` it needs.
#[derive(Debug, Clone)]
pub struct Python {
    pub exe: PathBuf,
    /// The private install directory, when the system python has no aiosmtpd.
    pub pythonpath: Option<PathBuf>,
}

impl Python {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        if let Some(dir) = &self.pythonpath {
            let mut paths = vec![dir.clone()];
            if let Some(old) = std::env::var_os("PYTHONPATH") {
                paths.extend(std::env::split_paths(&old));
            }
            cmd.env(
                "PYTHONPATH",
                std::env::join_paths(paths).expect("PYTHONPATH"),
            );
        }
        cmd
    }

    fn can_import_aiosmtpd(&self) -> bool {
        self.command()
            .args(["-c", IMPORT_CHECK])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// The python to run the sink with; provisions aiosmtpd once per process (see the module
/// documentation). Panics, with what to install, when that is impossible.
pub fn python() -> &'static Python {
    static PYTHON: OnceLock<Result<Python, String>> = OnceLock::new();
    match PYTHON.get_or_init(provision) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn provision() -> Result<Python, String> {
    let exe =
        PathBuf::from(std::env::var_os("HERALD_TEST_PYTHON").unwrap_or_else(|| "python3".into()));
    let system = Python {
        exe: exe.clone(),
        pythonpath: None,
    };
    if system.can_import_aiosmtpd() {
        return Ok(system);
    }
    let version = AIOSMTPD.replace("==", "-");
    let parent = crate::bin_dir()
        .parent()
        .map(|t| t.join("herald-test-python"))
        .ok_or("the target directory has no parent")?;
    let dir = parent.join(&version);
    let private = Python {
        exe: exe.clone(),
        pythonpath: Some(dir.clone()),
    };
    if dir.is_dir() && private.can_import_aiosmtpd() {
        return Ok(private);
    }
    let help = format!(
        "the SMTP end-to-end tests need python3 with aiosmtpd: install it with \
         `python3 -m pip install --user {AIOSMTPD}`, or make `python3 -m pip` work so the \
         tests can install it into {}",
        dir.display()
    );
    std::fs::create_dir_all(&parent).map_err(|e| format!("{help}\n{}: {e}", parent.display()))?;
    // Installed under a name of its own, then renamed into place: a concurrent test
    // process either wins the rename or finds a complete directory there.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = parent.join(format!(".{version}-{}-{nanos}", std::process::id()));
    eprintln!(
        "herald-tests: installing {AIOSMTPD} into {} (once per target dir)",
        dir.display()
    );
    let out = Command::new(&exe)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--target",
        ])
        .arg(&tmp)
        .arg(AIOSMTPD)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .env_remove("PIP_REQUIRE_VIRTUALENV")
        .env_remove("PIP_USER")
        .env_remove("PIP_TARGET")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{help}\nrunning {}: {e}", exe.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!(
            "{help}\npip install failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process got there first, or an unusable copy is in the way.
        let _ = std::fs::remove_dir_all(&tmp);
        if !private.can_import_aiosmtpd() {
            return Err(format!(
                "{help}\n{} exists but aiosmtpd cannot be imported from it; remove it",
                dir.display()
            ));
        }
    }
    if private.can_import_aiosmtpd() {
        Ok(private)
    } else {
        Err(format!(
            "{help}\naiosmtpd was installed into {} but cannot be imported",
            dir.display()
        ))
    }
}

/// Configures an [`SmtpServer`].
#[derive(Debug, Default, Clone)]
pub struct SmtpServerBuilder {
    auth: Option<(String, String)>,
}

impl SmtpServerBuilder {
    /// Require AUTH (PLAIN or LOGIN, without TLS) with this login before MAIL.
    pub fn auth(mut self, username: &str, password: &str) -> SmtpServerBuilder {
        self.auth = Some((username.into(), password.into()));
        self
    }

    /// Starts the sink and waits (up to a minute) until it listens.
    pub async fn start(self) -> SmtpServer {
        tokio::task::spawn_blocking(move || self.start_blocking())
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn start_blocking(self) -> SmtpServer {
        let python = python();
        let dir = tempfile::Builder::new()
            .prefix("herald-smtp-")
            .tempdir()
            .expect("tempdir");
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).expect("spool dir");
        let log_path = dir.path().join("sink.log");
        let log = std::fs::File::create(&log_path).expect("sink log");
        let mut cmd = python.command();
        cmd.arg(sink_script()).arg("--dir").arg(&spool);
        if let Some((user, pass)) = &self.auth {
            cmd.args(["--auth-user", user, "--auth-password", pass]);
        }
        // stdin stays open as long as the child handle: the sink exits at its end, so it
        // does not outlive a test process that is killed.
        let mut child = cmd
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", python.exe.display()));
        let stdout = child.stdout.take().expect("sink stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        let mut server = SmtpServer {
            child: Some(child),
            port: 0,
            log_path,
            spool,
            _dir: dir,
        };
        let line = rx.recv_timeout(Duration::from_secs(60));
        let port = match &line {
            Ok(Ok(l)) => l
                .trim()
                .strip_prefix("READY ")
                .and_then(|p| p.parse::<u16>().ok()),
            _ => None,
        };
        match port {
            Some(p) => server.port = p,
            None => {
                server.stop();
                panic!(
                    "the SMTP sink did not start (first line: {line:?}); its log:\n{}",
                    server.log()
                );
            }
        }
        server
    }
}

/// A running aiosmtpd sink on 127.0.0.1. Killed when dropped.
#[derive(Debug)]
pub struct SmtpServer {
    child: Option<Child>,
    port: u16,
    log_path: PathBuf,
    spool: PathBuf,
    _dir: TempDir,
}

/// A message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    /// Envelope sender (MAIL FROM).
    pub mail_from: String,
    /// Envelope recipients the sink accepted (RCPT TO).
    pub rcpt_tos: Vec<String>,
    /// The login of the session that submitted it, when the sink requires AUTH.
    pub auth_login: Option<String>,
    /// Header fields in order, as Python's `email` package decodes them (RFC 2047
    /// encoded words decoded, folding removed).
    pub headers: Vec<(String, String)>,
    /// Defects Python's parser found in the message; empty for a well-formed one.
    pub defects: Vec<String>,
    /// The decoded MIME tree.
    pub mime: Part,
    /// The message exactly as received after DATA (RFC 5322, CRLF line ends).
    pub raw: String,
}

impl Received {
    /// The first decoded value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every decoded value of header `name` (case-insensitive).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name` as written in the raw message: unfolded, trimmed,
    /// not decoded.
    pub fn raw_header(&self, name: &str) -> Option<String> {
        let head = self
            .raw
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .replace("\r\n ", " ")
            .replace("\r\n\t", " ");
        head.split("\r\n").find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One node of a parsed MIME tree. `Debug` shows a leaf's size, not its bytes.
#[derive(Clone, Default)]
pub struct Part {
    /// `type/subtype`, lower case.
    pub content_type: String,
    pub charset: Option<String>,
    pub filename: Option<String>,
    /// `inline` or `attachment`.
    pub disposition: Option<String>,
    pub transfer_encoding: Option<String>,
    /// Children of a multipart.
    pub parts: Vec<Part>,
    /// A leaf's decoded bytes (transfer encoding undone).
    pub body: Vec<u8>,
    /// A text leaf's decoded text (charset applied); line ends as on the wire (CRLF).
    pub text: Option<String>,
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Part");
        d.field("content_type", &self.content_type)
            .field("charset", &self.charset)
            .field("filename", &self.filename)
            .field("disposition", &self.disposition)
            .field("transfer_encoding", &self.transfer_encoding);
        if self.parts.is_empty() {
            d.field("body_len", &self.body.len())
                .field("text", &self.text);
        } else {
            d.field("parts", &self.parts);
        }
        d.finish()
    }
}

impl Part {
    /// The first part, depth first, with this content type (this part included).
    pub fn find(&self, content_type: &str) -> Option<&Part> {
        if self.content_type.eq_ignore_ascii_case(content_type) {
            return Some(self);
        }
        self.parts.iter().find_map(|p| p.find(content_type))
    }

    /// Every leaf, depth first.
    pub fn leaves(&self) -> Vec<&Part> {
        if self.parts.is_empty() {
            return vec![self];
        }
        self.parts.iter().flat_map(Part::leaves).collect()
    }

    /// The content types of the direct children.
    pub fn child_types(&self) -> Vec<&str> {
        self.parts.iter().map(|p| p.content_type.as_str()).collect()
    }

    fn from_json(v: &Value) -> Part {
        let s = |k: &str| v[k].as_str().map(str::to_string);
        Part {
            content_type: s("content_type").unwrap_or_default(),
            charset: s("charset"),
            filename: s("filename"),
            disposition: s("disposition"),
            transfer_encoding: s("transfer_encoding"),
            parts: v["parts"]
                .as_array()
                .map(|a| a.iter().map(Part::from_json).collect())
                .unwrap_or_default(),
            body: v["body_hex"].as_str().map(unhex).unwrap_or_default(),
            text: s("text"),
        }
    }
}

/// A RCPT TO the sink answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptAttempt {
    pub address: String,
    /// The full reply line, e.g. `250 OK`.
    pub reply: String,
}

/// An AUTH the sink answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthAttempt {
    /// `PLAIN` or `LOGIN`.
    pub mechanism: String,
    pub login: Option<String>,
    pub success: bool,
}

fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("hex is ascii");
            u8::from_str_radix(pair, 16).expect("hex digits")
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl SmtpServer {
    pub fn builder() -> SmtpServerBuilder {
        SmtpServerBuilder::default()
    }

    /// A sink without AUTH.
    pub async fn start() -> SmtpServer {
        SmtpServer::builder().start().await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The sink's stderr (aiosmtpd's warnings and any traceback).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Every complete record in the spool, in the order the sink wrote them, as
    /// (sequence file stem, parsed JSON).
    fn records(&self) -> Vec<(String, Value)> {
        let mut names: Vec<String> = std::fs::read_dir(&self.spool)
            .expect("read the sink's spool")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') && n.ends_with(".json"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let text = std::fs::read_to_string(self.spool.join(&n)).expect("read record");
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("sink record {n} is not JSON ({e}):\n{text}"));
                (n.trim_end_matches(".json").to_string(), v)
            })
            .collect()
    }

    /// The messages the sink accepted, oldest first.
    pub fn messages(&self) -> Vec<Received> {
        self.records()
            .into_iter()
            .filter(|(_, v)| v["kind"] == "message")
            .map(|(stem, v)| {
                let raw = std::fs::read(self.spool.join(format!("{stem}.eml")))
                    .expect("read the raw message");
                Received {
                    mail_from: v["mail_from"].as_str().unwrap_or_default().to_string(),
                    rcpt_tos: strings(&v["rcpt_tos"]),
                    auth_login: v["auth_login"].as_str().map(str::to_string),
                    headers: v["headers"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|h| {
                                    (
                                        h[0].as_str().unwrap_or_default().to_string(),
                                        h[1].as_str().unwrap_or_default().to_string(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    defects: strings(&v["defects"]),
                    mime: Part::from_json(&v["mime"]),
                    raw: String::from_utf8_lossy(&raw).into_owned(),
                }
            })
            .collect()
    }

    /// Every RCPT TO the sink answered, accepted or not, oldest first.
    pub fn rcpt_attempts(&self) -> Vec<RcptAttempt> {
        self.records()
            .into_iter()
            .filter(|(_, v)| v["kind"] == "rcpt")
            .map(|(_, v)| RcptAttempt {
                address: v["address"].as_str().unwrap_or_default().to_string(),
                reply: v["reply"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }

    /// Every AUTH the sink answered, oldest first.
    pub fn auth_attempts(&self) -> Vec<AuthAttempt> {
        self.records()
            .into_iter()
            .filter(|(_, v)| v["kind"] == "auth")
            .map(|(_, v)| AuthAttempt {
                mechanism: v["mechanism"].as_str().unwrap_or_default().to_string(),
                login: v["login"].as_str().map(str::to_string),
                success: v["success"].as_bool().unwrap_or(false),
            })
            .collect()
    }

    /// Waits until the sink has accepted at least `n` messages; panics with the sink's log
    /// after `timeout`.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "the SMTP sink received {} of {n} messages within {timeout:?}; its log:\n{}",
                messages.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}
