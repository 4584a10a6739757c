//! `outbox`: Herald's development provider. Instead of sending a message it writes it to a
//! folder and reports it delivered, so `herald send` works without any provider account.
//!
//! For every message it writes, into the configured `dir`:
//!
//! - `<message id>.json`: the whole [`Delivery`] (the message with its content and tags,
//!   the attempt number and the host's `now`), pretty-printed JSON;
//! - for email, first `<message id>.eml`: an RFC 5322 rendering that a mail client opens.
//!
//! Each file is written atomically: to a temporary name in the same folder
//! (`<final name>.<pid>-<n>.tmp`, unique per write so two concurrent deliveries of one id
//! never interleave), flushed with `fsync`, then renamed over the final name; the folder is
//! fsynced after the renames. A reader therefore sees either no file or a whole one, and
//! readers keyed on `*.json` see the `.eml` already in place. Delivering the same id again
//! overwrites both files (the manifest says `idempotent: true`).
//!
//! Config: `dir` (required) — the folder, created with its parents at load if missing; a
//! relative path is resolved against heraldd's working directory at load. Load fails with
//! a config error if the folder cannot be created or written.
//!
//! Outcomes: `Accepted{provider_message_id: "<id>.json", delivered: true}`; a write error
//! → `Retry` carrying the OS error; a message id that is not a plain file name →
//! `Rejected` (nothing is written outside `dir`).
//!
//! This is the one plugin that does file I/O inside `begin`. It never opens a socket, never
//! reads the clock, and never logs message content.
#![deny(unsafe_code)]

mod eml;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use herald_plugin_api::{
    Channel, ConfigError, ConfigKey, Content, Delivery, Host, Logger, Manifest, Outcome, Provider,
    ProviderConfig, Step, TransportResponse,
};
use serde::Deserialize;
use serde_json::Value;

herald_plugin_api::export_plugin!(Outbox);

/// The `[[providers]]` keys this plugin reads, as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    dir: String,
}

/// One configured outbox: the absolute folder it writes to.
#[derive(Debug)]
pub struct Outbox {
    name: String,
    dir: PathBuf,
    log: Logger,
}

/// Makes temporary file names unique within this process.
static WRITE_SEQ: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        WRITE_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

impl Provider for Outbox {
    fn manifest() -> Manifest {
        Manifest {
            name: "outbox".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: herald_plugin_api::API_VERSION.into(),
            description: "Development provider: writes each message to <dir>/<id>.json (and \
                          <id>.eml for email) and reports it delivered. Sends nothing."
                .into(),
            channels: Channel::ALL.to_vec(),
            config: vec![ConfigKey::required(
                "dir",
                "folder the messages are written to; created (with parents) if missing",
            )],
            webhooks: false,
            idempotent: true,
            // Writes and fsyncs files.
            blocking: true,
            batch: None,
            allowed_hosts: Vec::new(),
        }
    }

    fn new(config: ProviderConfig, host: Host) -> Result<Outbox, ConfigError> {
        let raw: RawConfig = config.parse()?;
        let name = config.name;
        let fail = |what: String| {
            ConfigError::new(format!(
                "provider {name:?}: dir {:?} {what}; set dir to a folder heraldd may create \
                 and write to",
                raw.dir
            ))
        };
        if raw.dir.trim().is_empty() {
            return Err(fail("is empty".into()));
        }
        let dir =
            std::path::absolute(&raw.dir).map_err(|e| fail(format!("cannot be resolved: {e}")))?;
        fs::create_dir_all(&dir).map_err(|e| fail(format!("cannot be created: {e}")))?;
        if !dir.is_dir() {
            return Err(fail("is not a folder".into()));
        }
        check_writable(&dir).map_err(|e| fail(format!("is not writable: {e}")))?;
        host.log.info(format!(
            "outbox {name:?} writes messages to {}",
            dir.display()
        ));
        Ok(Outbox {
            name,
            dir,
            log: host.log,
        })
    }

    fn begin(&self, delivery: &Delivery) -> Step {
        let id = &delivery.message.id;
        if !is_plain_file_stem(id) {
            return Step::done(Outcome::rejected(format!(
                "message id {id:?} cannot be used as a file name (expected letters, digits, \
                 '-', '_' or '.', not starting with '.')"
            )));
        }
        match self.write(delivery) {
            Ok(file_name) => {
                self.log
                    .debug(format!("outbox {:?} wrote {file_name}", self.name));
                Step::done(Outcome::Accepted {
                    provider_message_id: Some(file_name),
                    delivered: true,
                })
            }
            Err(reason) => Step::done(Outcome::retry(reason)),
        }
    }

    fn resume(&self, _delivery: &Delivery, _state: Value, _response: TransportResponse) -> Step {
        Step::done(Outcome::provider_failure(
            "the outbox makes no requests, yet resume was called (host bug)",
        ))
    }
}

impl Outbox {
    /// Writes `<id>.eml` (email only), then `<id>.json`; returns the JSON file's name.
    fn write(&self, delivery: &Delivery) -> Result<String, String> {
        let message = &delivery.message;
        // Re-create the folder if an operator cleared it while the daemon was running.
        fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        if let Content::Email(email) = &message.content {
            let eml = eml::render(message, email);
            write_atomic(&self.dir, &format!("{}.eml", message.id), eml.as_bytes())?;
        }
        let mut json = serde_json::to_vec_pretty(delivery)
            .map_err(|e| format!("encoding message {} as JSON: {e}", message.id))?;
        json.push(b'\n');
        let file_name = format!("{}.json", message.id);
        write_atomic(&self.dir, &file_name, &json)?;
        // Make the renames durable.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", self.dir.display()))?;
        Ok(file_name)
    }
}

/// Writes `bytes` to `dir/name` through a temporary file, fsync and rename. On failure the
/// temporary file is removed and the error names the path.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    let target = dir.join(name);
    let tmp = dir.join(format!("{name}.{}.tmp", unique_suffix()));
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &target));
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("writing {}: {e}", target.display())
    })
}

/// Creates and removes a probe file, so an unwritable folder is reported at load.
fn check_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".herald-outbox-probe.{}", unique_suffix()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    fs::remove_file(&probe)
}

/// Message ids are ULIDs; anything else must still be a harmless single file name.
fn is_plain_file_stem(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use herald_plugin_api::{EmailContent, Message, PushContent, SmsContent};
    use herald_plugin_kit::testing::{
        done, provider_config, quiet_host, required_keys, secret_keys, smtp_reply,
    };
    use std::collections::BTreeMap;

    fn provider(dir: &Path) -> Result<Outbox, ConfigError> {
        let settings = serde_json::json!({"dir": dir.display().to_string()});
        Outbox::new(provider_config("dev", settings, None), quiet_host())
    }

    fn delivery(id: &str, content: Content, attempt: u32) -> Delivery {
        Delivery {
            message: Message {
                id: id.into(),
                to: match content {
                    Content::Email(_) => "Ann Lee <ann@example.com>".into(),
                    Content::Sms(_) => "+14155550100".into(),
                    Content::Push(_) => "device-token-0123456789".into(),
                },
                content,
                tags: vec!["rsvp".into(), "wedding-42".into()],
                created_at: 1_700_000_000_000,
            },
            attempt,
            now: 1_700_000_000_500,
        }
    }

    fn email(subject: &str) -> Content {
        Content::Email(EmailContent {
            subject: subject.into(),
            text: Some("Will you come?\nReply YES.".into()),
            ..Default::default()
        })
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn read_delivery(path: &Path) -> Delivery {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn manifest_states_the_contract() {
        let m = Outbox::manifest();
        assert_eq!(m.name, "outbox");
        assert_eq!(m.channels, Channel::ALL.to_vec());
        assert!(m.idempotent);
        assert!(!m.webhooks);
        assert!(m.allowed_hosts.is_empty());
        assert_eq!(m.config.len(), 1);
        assert_eq!(required_keys(&m), ["dir"]);
        assert!(secret_keys(&m).is_empty());
    }

    #[test]
    fn email_is_written_as_json_and_eml_and_reported_delivered() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = provider(tmp.path()).unwrap();
        assert!(outbox.allowed_hosts().is_empty());
        let d = delivery("01HZX3K2J8Q9V7W6E5R4T3Y2U1", email("You're invited"), 1);

        let step = outbox.begin(&d);
        assert_eq!(
            step,
            Step::done(Outcome::Accepted {
                provider_message_id: Some("01HZX3K2J8Q9V7W6E5R4T3Y2U1.json".into()),
                delivered: true,
            })
        );
        assert_eq!(
            files(tmp.path()),
            [
                "01HZX3K2J8Q9V7W6E5R4T3Y2U1.eml",
                "01HZX3K2J8Q9V7W6E5R4T3Y2U1.json"
            ]
        );
        let json_path = tmp.path().join("01HZX3K2J8Q9V7W6E5R4T3Y2U1.json");
        assert_eq!(read_delivery(&json_path), d);
        let text = fs::read_to_string(&json_path).unwrap();
        assert!(
            text.contains("\n  \"message\": {\n"),
            "pretty-printed:\n{text}"
        );
        assert!(text.contains("\"attempt\": 1"), "{text}");
        assert!(text.ends_with("}\n"));

        let eml = fs::read_to_string(tmp.path().join("01HZX3K2J8Q9V7W6E5R4T3Y2U1.eml")).unwrap();
        assert!(
            eml.contains("\r\nTo: Ann Lee <ann@example.com>\r\n"),
            "{eml}"
        );
        assert!(eml.contains("\r\nSubject: You're invited\r\n"), "{eml}");
        assert!(
            eml.contains("\r\nX-Herald-Id: 01HZX3K2J8Q9V7W6E5R4T3Y2U1\r\n"),
            "{eml}"
        );
        assert!(
            eml.contains("\r\n\r\nWill you come?\r\nReply YES.\r\n"),
            "{eml}"
        );
    }

    #[test]
    fn sms_and_push_are_written_as_json_only() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = provider(tmp.path()).unwrap();
        let sms = delivery(
            "01SMS",
            Content::Sms(SmsContent {
                from: None,
                body: "YES".into(),
                media_urls: vec![],
            }),
            1,
        );
        let push = delivery(
            "01PUSH",
            Content::Push(PushContent {
                title: Some("Hi".into()),
                data: BTreeMap::from([("k".to_string(), "v".to_string())]),
                ..Default::default()
            }),
            3,
        );
        for d in [&sms, &push] {
            assert!(matches!(
                outbox.begin(d),
                Step::Done {
                    outcome: Outcome::Accepted {
                        delivered: true,
                        ..
                    }
                }
            ));
        }
        assert_eq!(files(tmp.path()), ["01PUSH.json", "01SMS.json"]);
        assert_eq!(read_delivery(&tmp.path().join("01SMS.json")), sms);
        assert_eq!(read_delivery(&tmp.path().join("01PUSH.json")), push);
    }

    #[test]
    fn redelivery_overwrites_the_same_files() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = provider(tmp.path()).unwrap();
        outbox.begin(&delivery("01SAME", email("first"), 1));
        let second = delivery("01SAME", email("second"), 2);
        outbox.begin(&second);
        assert_eq!(files(tmp.path()), ["01SAME.eml", "01SAME.json"]);
        assert_eq!(read_delivery(&tmp.path().join("01SAME.json")), second);
        let eml = fs::read_to_string(tmp.path().join("01SAME.eml")).unwrap();
        assert!(eml.contains("Subject: second\r\n") && !eml.contains("first"));
    }

    #[test]
    fn concurrent_writes_of_one_id_leave_one_whole_file() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = provider(tmp.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let outbox = &outbox;
                s.spawn(move || {
                    for i in 0..10 {
                        let d = delivery("01RACE", email(&format!("t{t} i{i}")), i + 1);
                        assert!(matches!(
                            outbox.begin(&d),
                            Step::Done {
                                outcome: Outcome::Accepted { .. }
                            }
                        ));
                    }
                });
            }
        });
        assert_eq!(files(tmp.path()), ["01RACE.eml", "01RACE.json"]);
        let d = read_delivery(&tmp.path().join("01RACE.json"));
        assert_eq!(d.message.id, "01RACE");
    }

    #[test]
    fn new_creates_missing_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("var/herald/outbox");
        provider(&dir).unwrap();
        assert!(dir.is_dir());
        // No probe file is left behind.
        assert!(files(&dir).is_empty());
    }

    #[test]
    fn dir_that_cannot_be_created_is_a_config_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        fs::write(&file, "x").unwrap();

        let err = provider(&file.join("outbox")).unwrap_err().message;
        assert!(err.contains("provider \"dev\": dir"), "{err}");
        assert!(err.contains("cannot be created"), "{err}");
        assert!(err.contains("a-file/outbox"), "{err}");

        let err = provider(&file).unwrap_err().message;
        assert!(err.contains("dir") && err.contains("a-file"), "{err}");
    }

    #[test]
    fn read_only_dir_is_a_config_error() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ro");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
        if fs::write(dir.join("root-can-write"), "x").is_ok() {
            // Running as root: permissions do not apply; the other config tests cover load
            // failures.
            return;
        }
        let err = provider(&dir).unwrap_err().message;
        assert!(err.contains("is not writable"), "{err}");
    }

    #[test]
    fn config_keys_are_checked() {
        let new = |settings: Value| {
            Outbox::new(provider_config("dev", settings, None), quiet_host())
                .unwrap_err()
                .message
        };
        let err = new(serde_json::json!({}));
        assert!(err.contains("missing field `dir`"), "{err}");
        let err = new(serde_json::json!({"dir": "/tmp/x", "dri": "y"}));
        assert!(err.contains("unknown field `dri`"), "{err}");
        let err = new(serde_json::json!({"dir": " "}));
        assert!(err.contains("dir \" \" is empty"), "{err}");
    }

    #[test]
    fn write_error_is_a_retry_and_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        let outbox = provider(&dir).unwrap();
        // Replace the folder by a file: every write now fails, even as root.
        fs::remove_dir(&dir).unwrap();
        fs::write(&dir, "not a folder").unwrap();

        let step = outbox.begin(&delivery("01FAIL", email("x"), 1));
        let Step::Done {
            outcome: Outcome::Retry {
                reason, breaker, ..
            },
        } = step
        else {
            panic!("expected Retry, got {step:?}");
        };
        assert!(breaker);
        assert!(reason.contains("outbox"), "{reason}");
        assert!(reason.contains("os error"), "{reason}");
        assert_eq!(files(tmp.path()), ["outbox"]);
    }

    #[test]
    fn failed_rename_is_a_retry_and_removes_the_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = provider(tmp.path()).unwrap();
        // A folder in the way of the final name makes the rename fail after the write.
        fs::create_dir(tmp.path().join("01BLOCK.json")).unwrap();
        let step = outbox.begin(&delivery("01BLOCK", email("x"), 1));
        let Step::Done {
            outcome: Outcome::Retry { reason, .. },
        } = step
        else {
            panic!("expected Retry, got {step:?}");
        };
        assert!(reason.contains("01BLOCK.json"), "{reason}");
        assert_eq!(files(tmp.path()), ["01BLOCK.eml", "01BLOCK.json"]);
        assert!(tmp.path().join("01BLOCK.json").is_dir());
    }

    #[test]
    fn cleared_dir_is_recreated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        let outbox = provider(&dir).unwrap();
        fs::remove_dir(&dir).unwrap();
        outbox.begin(&delivery("01BACK", email("x"), 1));
        assert_eq!(files(&dir), ["01BACK.eml", "01BACK.json"]);
    }

    #[test]
    fn unsafe_ids_are_rejected_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("outbox");
        let outbox = provider(&dir).unwrap();
        for id in ["../escape", "a/b", "", ".hidden", "a\0b"] {
            let step = outbox.begin(&delivery(id, email("x"), 1));
            assert!(
                matches!(
                    step,
                    Step::Done {
                        outcome: Outcome::Rejected { .. }
                    }
                ),
                "{id:?}: {step:?}"
            );
        }
        assert_eq!(files(tmp.path()), ["outbox"]);
        assert!(files(&dir).is_empty());
    }

    #[test]
    fn resume_is_a_host_bug() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = provider(tmp.path()).unwrap();
        let step = outbox.resume(
            &delivery("01X", email("x"), 1),
            Value::Null,
            smtp_reply(250, None, ""),
        );
        assert_eq!(
            done(step),
            Outcome::provider_failure(
                "the outbox makes no requests, yet resume was called (host bug)"
            )
        );
    }
}
