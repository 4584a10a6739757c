//! The operator's suppression list through the real daemon, the real Resend plugin and the
//! `herald` CLI: a bounce (through the signed webhook) shows up in `herald suppression list`
//! with source bounce; entries added and removed by hand; `check` across spellings; a send
//! to a removed entry is delivered, one with `--override-suppression` is too; the list
//! survives a SIGKILL and a restart.

use std::process::Output;
use std::time::Duration;

use herald_plugin_api::State;
use herald_tests::mock::{MockProvider, Reply};
use herald_tests::{Daemon, email, events_until, free_port, kinds};
use serde_json::Value;

// The Resend daemon and its signed webhooks, as the guests tests set them up.
use crate::guests::{resend_daemon, resend_webhook};

const T: Duration = Duration::from_secs(60);

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

/// `herald --json <args>`, run off the async workers; one JSON value per output line.
async fn cli(daemon: &Daemon, args: &[&str]) -> Output {
    let mut cmd = daemon.cli();
    cmd.arg("--json").args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

async fn list(daemon: &Daemon) -> Vec<Value> {
    json_lines(&cli(daemon, &["suppression", "list"]).await)
}

fn keys(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["channel"].as_str().unwrap(),
                e["key"].as_str().unwrap()
            )
        })
        .collect()
}

/// A Resend email id made of the digit `n`.
fn uuid(n: u8) -> String {
    let d = |k: usize| n.to_string().repeat(k);
    format!("{}-{}-4{}-8{}-{}", d(8), d(4), d(3), d(3), d(12))
}

// Multi-threaded: the CLI runs on the blocking pool while the mock provider answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounce_add_remove_check_override_and_a_restart() {
    let mock = MockProvider::start().await;
    let port = free_port();
    let mut daemon = resend_daemon(&mock, port).await;
    let client = daemon.client().await;

    // A hard bounce through the real webhook path puts Ann on the list, source bounce.
    let first_id = uuid(1);
    mock.push(Reply::new(200, format!(r#"{{"id":"{first_id}"}}"#)));
    let first = client
        .send(email("Ann Lee <Ann@Example.com>", "Save the date"))
        .await
        .unwrap();
    events_until(&client, &first.id, &["sent"], T).await;
    let bounce = format!(
        r#"{{"type":"email.bounced","created_at":"2026-11-24T20:00:00.000Z","data":{{"email_id":"{first_id}","from":"Events <events@example.com>","to":["Ann Lee <Ann@Example.com>"],"subject":"Save the date","bounce":{{"type":"Permanent","subType":"General","message":"hard bounce"}}}}}}"#
    );
    resend_webhook(port, "msg_bounce", &bounce).await;
    events_until(&client, &first.id, &["bounced"], T).await;
    let entries = list(&daemon).await;
    assert_eq!(keys(&entries), ["email:ann@example.com"]);
    assert_eq!(entries[0]["source"], "bounce");
    assert_eq!(entries[0]["recipient"], "Ann Lee <Ann@Example.com>");
    assert!(entries[0]["at"].as_u64().unwrap() > 0);

    // An operator adds Bob; another spelling of Bob is the same entry, which stays.
    let added = &json_lines(
        &cli(
            &daemon,
            &[
                "suppression",
                "add",
                "email",
                "Bob <Bob@Example.org>",
                "--reason",
                "asked by phone",
            ],
        )
        .await,
    )[0];
    assert_eq!(added["added"], true);
    assert_eq!(added["entry"]["source"], "operator");
    assert_eq!(added["entry"]["key"], "bob@example.org");
    assert_eq!(added["entry"]["reason"], "asked by phone");
    let again = &json_lines(
        &cli(
            &daemon,
            &[
                "suppression",
                "add",
                "email",
                "bob@example.org",
                "--reason",
                "again",
            ],
        )
        .await,
    )[0];
    assert_eq!(again["added"], false);
    assert_eq!(again["entry"]["reason"], "asked by phone");

    // Bad arguments are refused clearly, before or by the daemon.
    let bad = cli(
        &daemon,
        &[
            "suppression",
            "add",
            "email",
            "not an address",
            "--reason",
            "x",
        ],
    )
    .await;
    assert!(!bad.status.success());
    let err: Value = serde_json::from_slice(&bad.stderr).unwrap();
    assert_eq!(err["error"], "invalid_field");
    assert_eq!(err["field"], "recipient");
    let bad = cli(&daemon, &["suppression", "add", "email", "c@example.org"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--reason"));
    let bad = cli(&daemon, &["suppression", "check", "fax", "c@example.org"]).await;
    assert!(!bad.status.success());
    let bad = cli(
        &daemon,
        &["suppression", "check", "email", "ok@example.org", "nope"],
    )
    .await;
    let err: Value = serde_json::from_slice(&bad.stderr).unwrap();
    assert_eq!(err["field"], "recipients[1]");

    // Check, across spellings, in order.
    let checked = json_lines(
        &cli(
            &daemon,
            &[
                "suppression",
                "check",
                "email",
                "ANN@example.com",
                "carol@example.org",
                "bob@EXAMPLE.org",
            ],
        )
        .await,
    );
    assert_eq!(checked.len(), 3);
    assert_eq!(checked[0]["entry"]["source"], "bounce");
    assert_eq!(checked[1]["entry"], Value::Null);
    assert_eq!(checked[1]["key"], "carol@example.org");
    assert_eq!(checked[2]["entry"]["source"], "operator");

    // A send to Bob is refused (suppressed, nothing sent); with the override it is sent,
    // and its queued event says so.
    let blocked = client
        .send(email("bob@example.org", "Hello"))
        .await
        .unwrap();
    let ev = events_until(&client, &blocked.id, &["suppressed"], T).await;
    assert_eq!(kinds(&ev), ["queued", "suppressed"]);
    assert_eq!(mock.count(), 1, "a suppressed recipient is not sent to");
    mock.push(Reply::new(200, format!(r#"{{"id":"{}"}}"#, uuid(2))));
    let out = cli(
        &daemon,
        &[
            "send",
            "--channel",
            "email",
            "--to",
            "bob@example.org",
            "--subject",
            "Your password reset",
            "--text",
            "the link",
            "--override-suppression",
        ],
    )
    .await;
    let overridden = json_lines(&out)[0]["id"].as_str().unwrap().to_string();
    let ev = events_until(&client, &overridden, &["sent", "suppressed"], T).await;
    assert_eq!(kinds(&ev), ["queued", "sending", "sent"]);
    assert!(
        ev[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("override_suppression"),
        "{:?}",
        ev[0].detail
    );
    assert_eq!(mock.count(), 2);
    assert!(
        daemon.log().contains(&overridden),
        "the override is logged by id"
    );

    // Removed (through another spelling), Bob is sent to again.
    let removed = &json_lines(
        &cli(
            &daemon,
            &["suppression", "remove", "email", "BOB@example.org"],
        )
        .await,
    )[0];
    assert_eq!(removed["removed"], true);
    assert_eq!(removed["entry"]["key"], "bob@example.org");
    let removed = &json_lines(
        &cli(
            &daemon,
            &["suppression", "remove", "email", "bob@example.org"],
        )
        .await,
    )[0];
    assert_eq!(removed["removed"], false);
    mock.push(Reply::new(200, format!(r#"{{"id":"{}"}}"#, uuid(3))));
    let welcome = client
        .send(email("bob@example.org", "Welcome back"))
        .await
        .unwrap();
    let ev = events_until(&client, &welcome.id, &["sent", "suppressed"], T).await;
    assert_eq!(kinds(&ev), ["queued", "sending", "sent"]);
    assert_eq!(mock.count(), 3);

    // An entry acknowledged just before a SIGKILL is there after the restart, and so is
    // everything else; the removal stays removed.
    json_lines(
        &cli(
            &daemon,
            &[
                "suppression",
                "add",
                "email",
                "carol@example.org",
                "--reason",
                "left",
            ],
        )
        .await,
    );
    drop(client);
    daemon.restart().await;
    let entries = list(&daemon).await;
    assert_eq!(
        keys(&entries),
        ["email:ann@example.com", "email:carol@example.org"]
    );
    let client = daemon.client().await;
    let later = client.send(email("carol@example.org", "Hi")).await.unwrap();
    events_until(&client, &later.id, &["suppressed"], T).await;
    assert_eq!(
        client.get(&later.id).await.unwrap().state,
        State::Suppressed
    );

    // Human output names the channel, key, spelling, source and reason.
    let out = daemon.cli().args(["suppression", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("email ann@example.com (Ann Lee <Ann@Example.com>) bounce since"),
        "{text}"
    );
    assert!(text.contains("carol@example.org operator since"), "{text}");
}

/// The list pages: `--limit` caps it, and the socket's cursor walks it in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_pages_in_key_order() {
    let mock = MockProvider::start().await;
    let daemon = resend_daemon(&mock, free_port()).await;
    let client = daemon.client().await;
    for i in (0..25).rev() {
        client
            .suppression_add(
                herald_plugin_api::Channel::Email,
                &format!("user{i:02}@example.org"),
                "bulk",
            )
            .await
            .unwrap();
    }
    client
        .suppression_add(herald_plugin_api::Channel::Sms, "+14155550100", "by hand")
        .await
        .unwrap();
    let mut all = vec![];
    let mut after = None;
    loop {
        let (page, next) = client.suppression_list(after, Some(10)).await.unwrap();
        assert!(page.len() <= 10);
        all.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(all.len(), 26);
    assert!(
        all[..25]
            .iter()
            .enumerate()
            .all(|(i, e)| e.key == format!("user{i:02}@example.org"))
    );
    assert_eq!(all[25].key, "+14155550100");
    let limited = list_limited(&daemon, 7).await;
    assert_eq!(limited.len(), 7);
    let err = client.suppression_list(None, Some(1001)).await.unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
}

async fn list_limited(daemon: &Daemon, n: u32) -> Vec<Value> {
    json_lines(&cli(daemon, &["suppression", "list", "--limit", &n.to_string()]).await)
}
