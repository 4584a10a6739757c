//! The `herald` CLI against the real daemon: send/get/watch/stats/cancel with `--json`,
//! human output, and clear errors for bad arguments.

use std::process::Output;

use herald_tests::Daemon;
use herald_tests::mock::MockProvider;
use serde_json::Value;

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

// Multi-threaded: the blocking CLI calls must not stall the mock provider's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_get_watch_stats_with_json_output() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let out = daemon
        .cli()
        .args([
            "send",
            "--json",
            "--channel",
            "sms",
            "--to",
            "+14155550100",
            "--body",
            "RSVP?",
            "--tag",
            "rsvp",
        ])
        .output()
        .unwrap();
    let sent = &json_lines(&out)[0];
    let id = sent["id"].as_str().unwrap().to_string();
    assert_eq!(sent["duplicate"], false);

    let out = daemon
        .cli()
        .args([
            "watch", "--json", "--from", "0", "--id", &id, "--kind", "sent", "--count", "1",
        ])
        .output()
        .unwrap();
    let ev = &json_lines(&out)[0];
    assert_eq!(ev["kind"], "sent");
    assert_eq!(ev["message_id"], id.as_str());

    let out = daemon.cli().args(["get", "--json", &id]).output().unwrap();
    let m = &json_lines(&out)[0];
    assert_eq!(m["state"], "sent");
    assert_eq!(m["content"]["sms"]["body"], "RSVP?");

    let out = daemon.cli().args(["stats", "--json"]).output().unwrap();
    let s = &json_lines(&out)[0];
    assert_eq!(s["providers"][0]["name"], "hook");
    assert_eq!(s["providers"][0]["accepted"], 1);

    // Human output: just the id for send, a summary for get.
    let out = daemon
        .cli()
        .args([
            "send",
            "--channel",
            "email",
            "--to",
            "ann@example.org",
            "--subject",
            "Hi",
            "--text",
            "Hello",
            "--idempotency-key",
            "k1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let id2 = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id2.len(), 26, "{id2}");
    let again = daemon
        .cli()
        .args([
            "send",
            "--channel",
            "email",
            "--to",
            "ann@example.org",
            "--subject",
            "Hi",
            "--text",
            "Hello",
            "--idempotency-key",
            "k1",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("duplicate"));
    let out = daemon.cli().args(["get", &id2]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("email"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_and_server_errors_exit_non_zero_with_a_clear_message() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "send",
                "--channel",
                "email",
                "--to",
                "a@example.org",
                "--text",
                "x",
            ],
            "--subject",
        ),
        (
            &[
                "send",
                "--channel",
                "sms",
                "--to",
                "+14155550100",
                "--subject",
                "x",
                "--body",
                "y",
            ],
            "--subject",
        ),
        (&["send", "--channel", "fax", "--to", "x"], "fax"),
        (
            &[
                "send",
                "--channel",
                "sms",
                "--to",
                "+14155550100",
                "--body",
                "x",
                "--send-at",
                "tomorrow",
            ],
            "RFC 3339",
        ),
        (
            &["send", "--channel", "sms", "--to", "555", "--body", "x"],
            "E.164",
        ),
        (&["get", "nope"], "not a Herald message id"),
        (&["watch", "--kind", "exploded"], "unknown event kind"),
    ];
    for (args, needle) in cases {
        let out = daemon.cli().args(*args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?} → {err}");
    }
    let out = daemon
        .cli()
        .args(["get", "--json", "01ARZ3NDEKTSV4RRFFQ69G5FAV"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"], "not_found");
    // A field error names the field in JSON too.
    let out = daemon
        .cli()
        .args([
            "send",
            "--json",
            "--channel",
            "sms",
            "--to",
            "+1415",
            "--body",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"], "invalid_field", "{err}");
    assert_eq!(err["field"], "to", "{err}");

    let out = std::process::Command::new(herald_tests::herald_path())
        .args(["--socket", "/nonexistent/herald.sock", "stats"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is heraldd running?"));
}
