//! `examples/rsvp` against a real daemon started with the example's own `herald.toml`
//! (its port swapped for a free one): the invitations are delivered, a reply signed by the
//! example's `reply.mjs` arrives tagged like its invitation, and a second run sends nothing
//! twice.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald_client::Client;
use herald_tests::node::{client_package, npm_ci, repo_root, run};
use herald_tests::{ensure_built, free_port, heraldd_path};
use tokio::io::{AsyncBufReadExt, BufReader};

const TOKEN: &str = "example-auth-token";
const T: Duration = Duration::from_secs(60);

/// heraldd with the example's config, run in `dir` (the config's paths are relative).
struct ExampleDaemon(Child);

impl Drop for ExampleDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_example_daemon(dir: &Path, port: u16) -> ExampleDaemon {
    let example = std::fs::read_to_string(repo_root().join("examples/rsvp/herald.toml"))
        .expect("examples/rsvp/herald.toml");
    assert!(
        example.contains("127.0.0.1:8025"),
        "the example listens on 8025"
    );
    // plugin_dir is left to its default, heraldd's own directory: this profile's plugins.
    let config = example.replace("127.0.0.1:8025", &format!("127.0.0.1:{port}"));
    let config_path = dir.join("herald.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(dir.join("heraldd.log")).unwrap();
    let child = Command::new(heraldd_path())
        .arg("--config")
        .arg(&config_path)
        .current_dir(dir)
        .env("TWILIO_AUTH_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn heraldd");
    let daemon = ExampleDaemon(child);
    let socket = dir.join("var/herald/herald.sock");
    let deadline = tokio::time::Instant::now() + T;
    while Client::connect(&socket).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "heraldd did not start with the example config:\n{}",
            std::fs::read_to_string(dir.join("heraldd.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rsvp_example_prints_deliveries_and_a_tagged_reply() {
    ensure_built(); // heraldd and libherald_{outbox,twilio}.so, side by side
    client_package();
    let example = repo_root().join("examples/rsvp");
    npm_ci(&example);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _daemon = start_example_daemon(dir.path(), port).await;

    // Run from the daemon's directory: the example finds var/herald/herald.sock itself.
    let mut rsvp = tokio::process::Command::new("node")
        .arg(example.join("rsvp.mjs"))
        .args(["--replies", "1"])
        .current_dir(dir.path())
        .env_remove("HERALD_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node examples/rsvp/rsvp.mjs");
    let mut lines = BufReader::new(rsvp.stdout.take().unwrap()).lines();
    let mut out = Vec::new();
    let settled = tokio::time::timeout(T, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("All 4 invitations have a final delivery state");
            out.push(line);
            if done {
                return;
            }
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "the invitations did not settle:\n{}",
        out.join("\n")
    );
    let delivered = out
        .iter()
        .filter(|l| l.ends_with("delivered via dev"))
        .count();
    assert_eq!(delivered, 4, "{}", out.join("\n"));
    let bo = out
        .iter()
        .find(|l| l.ends_with("invited by sms: +14155550101"))
        .and_then(|l| l.split_whitespace().next())
        .expect("Bo's invitation line")
        .to_string();

    // Bo texts back, as Twilio would deliver it.
    let reply = run(
        Command::new("node")
            .arg(example.join("reply.mjs"))
            .args(["+14155550101", "YES, two of us"])
            .env("TWILIO_AUTH_TOKEN", TOKEN)
            .env("HERALD_WEBHOOKS", format!("http://127.0.0.1:{port}")),
        "node examples/rsvp/reply.mjs",
    );
    assert!(String::from_utf8_lossy(&reply.stdout).starts_with("200"));

    let rest = tokio::time::timeout(T, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            out.push(line);
        }
        rsvp.wait().await.unwrap()
    })
    .await;
    let status = rest.unwrap_or_else(|_| {
        panic!(
            "the example did not exit after the reply:\n{}",
            out.join("\n")
        )
    });
    assert!(status.success(), "{}", out.join("\n"));
    let expected = format!(
        "REPLY from Bo Chen (+14155550101) to invitation {bo} [rsvp, wedding-42, guest-bo]: \"YES, two of us\""
    );
    assert!(
        out.contains(&expected),
        "no {expected:?} in:\n{}",
        out.join("\n")
    );

    // A second run sends nothing twice.
    let again = run(
        Command::new("node")
            .arg(example.join("rsvp.mjs"))
            .args(["--replies", "0"])
            .current_dir(dir.path()),
        "a second run of rsvp.mjs",
    );
    let again = String::from_utf8_lossy(&again.stdout);
    assert_eq!(
        again.matches("already invited earlier: delivered").count(),
        4,
        "{again}"
    );
    assert!(again.contains(&bo), "{again}");
}
