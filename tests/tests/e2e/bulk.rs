//! `herald bulk send` and `herald bulk status` against the real daemon: a 500-row guest
//! list with mixed email/SMS rows, 3 bad rows and 2 suppressed recipients (put on the list
//! in another spelling than the CSV's). The dry run lists exactly those 5 rows by line and
//! sends nothing; a real run SIGKILLed halfway and run again delivers each other row
//! exactly once, with the bodies rendered from the template; `--override-suppression` then
//! sends the 2 suppressed ones too.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Output, Stdio};
use std::time::Duration;

use herald_plugin_api::State;
use herald_tests::Daemon;
use herald_tests::mock::{MockProvider, Reply};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

const TEMPLATE: &str = r#"
campaign = "w42-invite"
channel = "email_else_sms"
key = "guest_id"
tags = ["rsvp", "wedding:{{ wedding }}"]

[email]
subject = "Invitation for {{ name }}"
text = "Dear {{ name }}, you are at table {{ table }}."

[sms]
body = "{{ name }}: table {{ table }}. Reply YES or NO"
"#;

/// Row `i` (1-based) is on line `i + 1`. Even rows give an email address, odd ones a
/// number; rows 100, 250 and 400 are bad (no name, an invalid address, an invalid number).
fn guests() -> String {
    let mut csv = String::from("guest_id,name,email,phone,table,wedding\n");
    for i in 1..=500u32 {
        let name = if i == 100 {
            String::new()
        } else {
            format!("Guest {i}")
        };
        let (email, phone) = match i {
            250 => ("nope@".to_string(), String::new()),
            400 => (String::new(), "+12".to_string()),
            i if i % 2 == 0 => (format!("guest{i}@example.org"), String::new()),
            i => (String::new(), format!("+1415555{i:04}")),
        };
        csv.push_str(&format!("g{i:03},{name},{email},{phone},{},42\n", i % 20));
    }
    csv
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn lines_with(lines: &[Value], status: &str) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l["status"] == status)
        .map(|l| l["line"].as_u64().unwrap())
        .collect()
}

fn invalid_lines(lines: &[Value]) -> Vec<u64> {
    lines_with(lines, "invalid")
}

/// Rows 300 (email) and 301 (SMS), on lines 301 and 302, are on the suppression list.
const SUPPRESSED_ROWS: [u32; 2] = [300, 301];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lists_bad_and_suppressed_rows_and_a_killed_run_resumes_without_sending_twice() {
    let mock = MockProvider::start().await;
    // The provider refuses (retryably) until told otherwise, and the queue holds 100: the
    // first run stalls at exactly 100 accepted messages, where it is killed.
    mock.set_default(Reply::new(503, "{}"));
    let daemon = Daemon::builder()
        .webhook_provider(&mock)
        .daemon("max_queue = 100")
        .retry("max_attempts = 10000")
        .start()
        .await;
    let dir = daemon.dir.path();
    std::fs::write(dir.join("guests.csv"), guests()).unwrap();
    std::fs::write(dir.join("invite.toml"), TEMPLATE).unwrap();
    let bulk = |extra: &[&str]| {
        let mut cmd = daemon.cli();
        cmd.args(["--json", "bulk", "send"])
            .arg(dir.join("guests.csv"))
            .arg("--template")
            .arg(dir.join("invite.toml"))
            .args(extra);
        cmd
    };

    // The dry run checks the suppression list: without a daemon it fails, saying why.
    let out = std::process::Command::new(herald_tests::herald_path())
        .arg("--socket")
        .arg(dir.join("nobody-listens.sock"))
        .args(["bulk", "send"])
        .arg(dir.join("guests.csv"))
        .arg("--template")
        .arg(dir.join("invite.toml"))
        .arg("--dry-run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--dry-run checks the suppression list"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");

    // Two guests are on the suppression list. The address is written otherwise than in the
    // CSV (the check matches canonical keys); a number has one accepted spelling (E.164:
    // `suppression_add` validates it as a send's `to`, and so does the bulk check).
    for (channel, spelling) in [
        ("email", "Guest 300 <GUEST300@Example.ORG>"),
        ("sms", "+14155550301"),
    ] {
        let out = daemon
            .cli()
            .args(["suppression", "add", channel, spelling])
            .args(["--reason", "asked by phone"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    // The dry run: exactly the 3 bad rows and the 2 suppressed ones, by line; nothing
    // sent; exit status 1.
    let out = bulk(&["--dry-run", "--preview", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(invalid_lines(&lines), vec![101, 251, 401], "{lines:?}");
    assert_eq!(
        lines_with(&lines, "suppressed"),
        vec![301, 302],
        "{lines:?}"
    );
    let suppressed: Vec<_> = lines
        .iter()
        .filter(|l| l["status"] == "suppressed")
        .map(|l| {
            (
                l["recipient"].as_str().unwrap(),
                l["channel"].as_str().unwrap(),
                l["source"].as_str().unwrap(),
                l["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        suppressed,
        [
            (
                "guest300@example.org",
                "email",
                "operator",
                "asked by phone"
            ),
            ("+14155550301", "sms", "operator", "asked by phone"),
        ]
    );
    let previews: Vec<_> = lines
        .iter()
        .filter(|l| l.get("preview").is_some())
        .collect();
    assert_eq!(previews.len(), 2);
    assert_eq!(
        previews[0]["preview"]["content"]["sms"]["body"],
        "Guest 1: table 1. Reply YES or NO"
    );
    let summary = lines.last().unwrap();
    assert_eq!(
        (&summary["messages"], &summary["email"], &summary["sms"]),
        (&Value::from(495), &Value::from(246), &Value::from(249)),
        "{summary}"
    );
    assert_eq!(summary["suppressed"], 2, "{summary}");
    // The same in words, as an operator reads it.
    let mut words = daemon.cli();
    words
        .args(["bulk", "send"])
        .arg(dir.join("guests.csv"))
        .arg("--template")
        .arg(dir.join("invite.toml"))
        .arg("--dry-run");
    let out = words.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let listed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("suppressed ("))
        .collect();
    assert_eq!(
        listed,
        [
            "line 301: guest300@example.org: suppressed (operator: asked by phone)",
            "line 302: +14155550301: suppressed (operator: asked by phone)",
        ],
        "{text}"
    );
    let client = daemon.client().await;
    assert_eq!(
        client.stats().await.unwrap().active,
        0,
        "a dry run sends nothing"
    );

    // The real run, killed (SIGKILL) while it waits for room in the queue.
    let mut first = bulk(&["--batch", "10", "--in-flight", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while client.stats().await.unwrap().active < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first run never filled the queue"
        );
        assert!(first.try_wait().unwrap().is_none(), "the first run ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(client.stats().await.unwrap().active, 100);

    // The provider recovers; the same command again sends the rest, each row once.
    mock.set_default(Reply::new(200, "{}"));
    let mut again = bulk(&["--batch", "50"]);
    let out = tokio::task::spawn_blocking(move || again.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "3 rows were invalid: {out:?}");
    let lines = json_lines(&out);
    assert_eq!(invalid_lines(&lines), vec![101, 251, 401]);
    assert_eq!(lines_with(&lines, "suppressed"), vec![301, 302]);
    let count = |s: &str| lines.iter().filter(|l| l["status"] == s).count();
    assert_eq!(
        (count("duplicate"), count("accepted"), count("rejected")),
        (100, 395, 0),
        "{:?}",
        lines.last()
    );

    // Every good row reaches the provider as exactly one message, rendered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = client.stats().await.unwrap();
        if s.active == 0 {
            let sent = s.states.iter().find(|(st, _)| *st == State::Sent);
            assert_eq!(sent.map(|(_, n)| *n), Some(495), "{s:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ids_by_to: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut bodies: BTreeMap<String, Value> = BTreeMap::new();
    for r in mock.requests() {
        let j = r.json();
        let to = j["to"].as_str().unwrap().to_string();
        ids_by_to
            .entry(to.clone())
            .or_default()
            .insert(j["id"].as_str().unwrap().to_string());
        bodies.insert(to, j);
    }
    assert_eq!(ids_by_to.len(), 495, "one recipient per good row");
    for (to, ids) in &ids_by_to {
        assert_eq!(ids.len(), 1, "{to} got {ids:?}: a row was sent twice");
    }
    for &i in &SUPPRESSED_ROWS {
        let to = if i % 2 == 0 {
            format!("guest{i}@example.org")
        } else {
            format!("+1415555{i:04}")
        };
        assert!(!bodies.contains_key(&to), "{to} is suppressed");
    }
    for i in (1..=500u32).filter(|i| ![100, 250, 400].contains(i) && !SUPPRESSED_ROWS.contains(i)) {
        let (to, expected) = if i % 2 == 0 {
            (
                format!("guest{i}@example.org"),
                (
                    "subject",
                    format!("Invitation for Guest {i}"),
                    "text",
                    format!("Dear Guest {i}, you are at table {}.", i % 20),
                ),
            )
        } else {
            (
                format!("+1415555{i:04}"),
                (
                    "body",
                    format!("Guest {i}: table {}. Reply YES or NO", i % 20),
                    "channel",
                    "sms".to_string(),
                ),
            )
        };
        let b = &bodies[&to];
        assert_eq!(b[expected.0], expected.1.as_str(), "{b}");
        assert_eq!(b[expected.2], expected.3.as_str(), "{b}");
        let tags: Vec<&str> = b["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(tags, ["rsvp", "wedding:42", "campaign:w42-invite"]);
    }

    // The campaign's status, from the retained events.
    let out = daemon
        .cli()
        .args(["--json", "bulk", "status", "w42-invite"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status = &json_lines(&out)[0];
    assert_eq!(status["messages"], 495, "{status}");
    assert_eq!(status["states"]["sent"], 495, "{status}");
    assert_eq!(status["partial"], false, "{status}");

    // --watch prints the counts again as the campaign's events arrive.
    let mut watch = daemon.cli();
    watch.args(["--json", "bulk", "status", "w42-invite", "--watch"]);
    let mut watch = tokio::process::Command::from(watch)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next_status = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), out.next_line())
            .await
            .expect("a status line in time")
            .unwrap()
            .expect("the watcher still running");
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next_status().await["messages"], 495);
    let mut late = herald_tests::sms("+14155559999", "Also invited");
    late.tags = vec!["campaign:w42-invite".into()];
    client.send(late).await.unwrap();
    loop {
        let s = next_status().await;
        if s["states"]["sent"] == 496 {
            assert_eq!(s["messages"], 496, "{s}");
            break;
        }
    }
    watch.kill().await.unwrap();

    // --override-suppression sends the 2 suppressed rows as well (still listed); the rest
    // is answered duplicate.
    let mut forced = bulk(&["--override-suppression"]);
    let out = tokio::task::spawn_blocking(move || forced.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "3 rows were invalid: {out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines_with(&lines, "overridden"), vec![301, 302]);
    assert_eq!(lines_with(&lines, "suppressed"), Vec::<u64>::new());
    let count = |s: &str| lines.iter().filter(|l| l["status"] == s).count();
    assert_eq!(
        (count("duplicate"), count("accepted"), count("rejected")),
        (495, 2, 0),
        "{:?}",
        lines.last()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let tos: BTreeSet<String> = mock
            .requests()
            .iter()
            .map(|r| r.json()["to"].as_str().unwrap().to_string())
            .collect();
        if tos.contains("guest300@example.org") && tos.contains("+14155550301") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the overridden rows were not sent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
