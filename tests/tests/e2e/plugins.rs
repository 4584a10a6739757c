//! Plugin loading through the real ABI: version mismatch refused with both versions named,
//! a panicking plugin contained, config errors reported before anything runs.

use std::process::Command;
use std::time::Duration;

use herald_plugin_api::abi::ABI_VERSION;
use herald_tests::mock::MockProvider;
use herald_tests::{Daemon, email, events_until, heraldd_path, kinds};

/// Runs `heraldd --check` on `config` (with the test plugin dir) and returns (ok, stderr).
fn check(config: &str) -> (bool, String) {
    check_with_daemon("", config)
}

/// `check` with extra lines in the `[daemon]` table.
fn check_with_daemon(daemon: &str, config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    let text = format!(
        "[daemon]\ndata_dir = \"{d}/data\"\nplugin_dir = \"{p}\"\n{daemon}\n\n{config}",
        d = dir.path().display(),
        p = herald_tests::ensure_built().display()
    );
    std::fs::write(&path, text).unwrap();
    let out = Command::new(heraldd_path())
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .env_remove("HERALD_TEST_SECRET")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_plugin_for_another_abi_version_is_refused_naming_both() {
    let (ok, err) =
        check("[[providers]]\nname = \"x\"\nplugin = \"testbadabi\"\n[routes]\nemail = [\"x\"]\n");
    assert!(!ok);
    assert!(
        err.contains("ABI version 2") && err.contains(&format!("ABI version {ABI_VERSION}")),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_problem() {
    let cases = [
        (
            "[[providers]]\nname = \"x\"\nplugin = \"nosuch\"\n[routes]\nemail = [\"x\"]\n",
            "libherald_nosuch.so does not exist",
        ),
        (
            "[[providers]]\nname = \"x\"\nplugin = \"webhook\"\n[routes]\nemail = [\"x\"]\n",
            "url",
        ),
        (
            "[[providers]]\nname = \"x\"\nplugin = \"webhook\"\nurl = \"ftp://x\"\n[routes]\nemail = [\"x\"]\n",
            "ftp",
        ),
        (
            "[[providers]]\nname = \"x\"\nplugin = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"literal\"\n[routes]\nemail = [\"x\"]\n",
            "${X_SECRET}",
        ),
        (
            "[[providers]]\nname = \"x\"\nplugin = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"${HERALD_TEST_SECRET}\"\n[routes]\nemail = [\"x\"]\n",
            "HERALD_TEST_SECRET",
        ),
        (
            "[[providers]]\nname = \"x\"\nplugin = \"twilio\"\naccount_sid = \"AC1\"\n[routes]\nsms = [\"x\"]\n",
            "account_sid",
        ),
        (
            "[[providers]]\nname = \"x\"\nplugin = \"outbox\"\ndir = \"/tmp/herald-x\"\n[routes]\nfax = [\"x\"]\n",
            "unknown channel",
        ),
        (
            "[[providers]]\nname = \"x\"\nplugin = \"outbox\"\ndir = \"/tmp/herald-x\"\ncolour = \"red\"\n[routes]\nemail = [\"x\"]\n",
            "colour",
        ),
        ("[routes]\nemail = [\"x\"]\n", "no [[providers]] entry"),
    ];
    for (config, needle) in cases {
        let (ok, err) = check(config);
        assert!(!ok, "{config} should be refused");
        assert!(err.contains(needle), "{config:?}\n→ {err}");
    }
    let (ok, err) = check_with_daemon(
        "socket_mode = \"rwx\"",
        "[[providers]]\nname = \"dev\"\nplugin = \"outbox\"\ndir = \"/tmp/herald-check\"\n[routes]\nemail = [\"dev\"]\n",
    );
    assert!(!ok, "a socket_mode that is not octal is refused");
    assert!(
        err.contains("daemon.socket_mode") && err.contains("octal"),
        "{err}"
    );
    let (ok, out) = check(
        "[[providers]]\nname = \"dev\"\nplugin = \"outbox\"\ndir = \"/tmp/herald-check\"\n[routes]\nemail = [\"dev\"]\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains("route email: dev"), "{out}");
}

#[test]
fn a_secret_never_appears_in_check_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(
        &path,
        format!(
            "[daemon]\ndata_dir = \"{d}/data\"\nplugin_dir = \"{p}\"\n[[providers]]\nname = \"r\"\nplugin = \"resend\"\napi_key = \"${{HERALD_TEST_KEY}}\"\nfrom = \"not an address\"\n[routes]\nemail = [\"r\"]\n",
            d = dir.path().display(),
            p = herald_tests::ensure_built().display()
        ),
    )
    .unwrap();
    let out = Command::new(heraldd_path())
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .env("HERALD_TEST_KEY", "re_supersecret_123")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("from"), "{err}");
    assert!(!err.contains("supersecret"), "{err}");
}

#[tokio::test]
async fn a_panicking_plugin_yields_retries_not_a_crash() {
    let daemon = Daemon::builder()
        .config(
            "[[providers]]\nname = \"p\"\nplugin = \"testpanicky\"\n[routes]\nemail = [\"p\"]\n",
        )
        .retry("max_attempts = 2")
        .start()
        .await;
    let client = daemon.client().await;
    let bad = client
        .send(email("a@example.org", "PANIC now"))
        .await
        .unwrap();
    // The first attempt's `deferred` event says why.
    let deferred_detail = |events: &[herald_plugin_api::Event], needle: &str| {
        let detail = events[2].detail.as_deref().unwrap_or_default();
        assert!(detail.contains(needle), "{needle:?} not in {:?}", events[2]);
    };
    let events = events_until(&client, &bad.id, &["dead"], Duration::from_secs(30)).await;
    assert_eq!(
        kinds(&events),
        ["queued", "sending", "deferred", "sending", "dead"]
    );
    deferred_detail(&events, "deliberate test panic");
    // The daemon and the (re-created) plugin instance carry on.
    let good = client
        .send(email("b@example.org", "all fine"))
        .await
        .unwrap();
    events_until(&client, &good.id, &["delivered"], Duration::from_secs(30)).await;
    assert!(
        daemon.log().contains("plugin panic"),
        "the panic is routed to the daemon log"
    );
    // The plugin's panic hook adds where it panicked.
    deferred_detail(&events, "panicky/src/lib.rs");

    // A reload replaces (and frees) the instance that was created first; a panic in the
    // new one is still contained and reported.
    client.reload().await.unwrap();
    let again = client
        .send(email("c@example.org", "PANIC again"))
        .await
        .unwrap();
    let events = events_until(&client, &again.id, &["dead"], Duration::from_secs(30)).await;
    deferred_detail(&events, "deliberate test panic");
    client
        .send(email("d@example.org", "still fine"))
        .await
        .unwrap();
}

#[tokio::test]
async fn provider_failure_falls_back_to_the_next_provider() {
    let primary = MockProvider::start().await;
    let fallback = MockProvider::start().await;
    primary.set_default(herald_tests::mock::Reply::new(
        401,
        r#"{"error":"bad key"}"#,
    ));
    let daemon = Daemon::builder()
        .config(&format!(
            "[[providers]]\nname = \"primary\"\nplugin = \"webhook\"\nurl = \"{}/a\"\n\n[[providers]]\nname = \"backup\"\nplugin = \"webhook\"\nurl = \"{}/b\"\n\n[routes]\nemail = [\"primary\", \"backup\"]\n",
            primary.url(),
            fallback.url()
        ))
        .start()
        .await;
    let client = daemon.client().await;
    let ack = client
        .send(email("c@example.org", "fallback"))
        .await
        .unwrap();
    let events = events_until(&client, &ack.id, &["sent"], Duration::from_secs(30)).await;
    assert_eq!(events.last().unwrap().provider.as_deref(), Some("backup"));
    assert_eq!(primary.count(), 1);
    assert_eq!(fallback.count(), 1);
}

/// Two failures open `primary`'s breaker; from then on `backup` takes the traffic without
/// `primary` being called, and that holds across a SIGKILL: the breaker is stored with the
/// outcome that opened it, so a restart does not hammer a provider that is down.
#[tokio::test]
async fn an_open_breaker_survives_a_kill_and_keeps_traffic_on_the_backup() {
    let primary = MockProvider::start().await;
    let backup = MockProvider::start().await;
    primary.set_default(herald_tests::mock::Reply::new(
        401,
        r#"{"error":"bad key"}"#,
    ));
    let config = |cooldown: &str| {
        Daemon::builder().config(&format!(
            "[[providers]]\nname = \"primary\"\nplugin = \"webhook\"\nurl = \"{}/a\"\n\
             breaker = {{ failures = 2, cooldown = \"{cooldown}\" }}\n\n\
             [[providers]]\nname = \"backup\"\nplugin = \"webhook\"\nurl = \"{}/b\"\n\n\
             [routes]\nemail = [\"primary\", \"backup\"]\n",
            primary.url(),
            backup.url()
        ))
    };
    let mut daemon = config("1h").start().await;
    async fn breaker_of(daemon: &Daemon, name: &str) -> String {
        let stats = daemon.client().await.stats().await.unwrap();
        stats
            .providers
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.breaker.clone())
            .unwrap_or_else(|| panic!("no provider {name} in {stats:?}"))
    }
    let client = daemon.client().await;
    for to in ["a@example.org", "b@example.org", "c@example.org"] {
        let ack = client.send(email(to, "breaker")).await.unwrap();
        let events = events_until(&client, &ack.id, &["sent"], Duration::from_secs(30)).await;
        assert_eq!(events.last().unwrap().provider.as_deref(), Some("backup"));
    }
    assert_eq!(
        primary.count(),
        2,
        "the third message skipped the open breaker"
    );
    assert_eq!(breaker_of(&daemon, "primary").await, "open");

    daemon.kill();
    daemon.spawn();
    daemon.wait_ready().await;
    assert_eq!(
        breaker_of(&daemon, "primary").await,
        "open",
        "restored after the kill:\n{}",
        daemon.log()
    );
    let client = daemon.client().await;
    let ack = client
        .send(email("d@example.org", "after restart"))
        .await
        .unwrap();
    let events = events_until(&client, &ack.id, &["sent"], Duration::from_secs(30)).await;
    assert_eq!(events.last().unwrap().provider.as_deref(), Some("backup"));
    assert_eq!(
        primary.count(),
        2,
        "primary is not called again after the restart"
    );
    assert_eq!(backup.count(), 4);

    // A reload with a shorter cooldown applies it to the breaker that is open: the next
    // message is primary's one trial call, which fails over to the backup again.
    daemon.write_config(&config("1ms"));
    client.reload().await.unwrap();
    let ack = client
        .send(email("e@example.org", "after reload"))
        .await
        .unwrap();
    let events = events_until(&client, &ack.id, &["sent"], Duration::from_secs(30)).await;
    assert_eq!(events.last().unwrap().provider.as_deref(), Some("backup"));
    assert_eq!(primary.count(), 3, "one trial call after the new cooldown");
}

/// The annotated production example must stay valid: every key it shows is one its plugin
/// accepts. Secrets come from the environment, as in production (fixture keys here).
#[test]
fn the_production_example_config_passes_check() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let text = std::fs::read_to_string(format!("{root}/etc/herald.production.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = text
        .replace(
            "\"/usr/lib/herald\"",
            &format!("\"{}\"", herald_tests::ensure_built().display()),
        )
        .replace(
            "\"/var/lib/herald\"",
            &format!("\"{}/data\"", dir.path().display()),
        )
        .replace(
            "\"/run/herald/herald.sock\"",
            &format!("\"{}/herald.sock\"", dir.path().display()),
        );
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, text).unwrap();
    let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap();
    let out = Command::new(heraldd_path())
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .env("RESEND_API_KEY", "re_test_0123456789")
        .env("RESEND_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("SENDGRID_API_KEY", "SG.test.0123456789")
        .env(
            "SENDGRID_WEBHOOK_PUBLIC_KEY",
            "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==",
        )
        .env("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef")
        .env("TWILIO_AUTH_TOKEN", "0123456789abcdef0123456789abcdef")
        .env("TWILIO_MESSAGING_SERVICE_SID", "MG0123456789abcdef0123456789abcdef")
        .env("FCM_SERVICE_ACCOUNT_JSON", read("plugins/fcm/tests/fixtures/test-only-service-account.json"))
        .env("APNS_AUTH_KEY_P8", read("plugins/apns/tests/fixtures/AuthKey_TESTKEY123.p8"))
        .env("SMTP_PASSWORD", "correct horse battery staple")
        .env("HERALD_TOKEN_SECRET", herald_tests::TOKEN_SECRET)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for line in [
        "route email: resend → sendgrid → smtp",
        "route sms: twilio",
        "route push: fcm",
    ] {
        assert!(err.contains(line), "{line:?} missing in:\n{err}");
    }
    assert!(
        !err.contains("0123456789abcdef0123456789abcdef")
            && !err.contains(herald_tests::TOKEN_SECRET),
        "no secret echoed"
    );
}
