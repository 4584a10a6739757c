//! The admin listener against the real daemon: `/metrics` checked by the real `promtool`
//! and equal to what the test sent, `/healthz`, `/readyz`, and the status page in a real
//! headless Chromium, driven over the DevTools protocol, showing deliveries and a breaker
//! that opens. Its screenshot is saved as `target/status-page.png`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_plugin_api::EventKind;
use herald_protocol::Filter;
use herald_tests::mock::{MockProvider, Reply};
use herald_tests::{Daemon, email, http, sms, tools};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);

/// The value of the sample `name` (exact, labels included) in a text exposition.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The sum over every sample of the family `name` (any labels).
fn total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_exactly_what_was_sent() {
    let mock = MockProvider::start().await;
    let daemon = Daemon::builder()
        .webhook_provider(&mock)
        .admin()
        .start()
        .await;
    let admin = daemon.admin_port.unwrap();
    let client = daemon.client().await;
    assert_eq!(http::get(admin, "/healthz").await.status, 200);

    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            client
                .send(email(&format!("g{i}@example.com"), "Hi"))
                .await
                .unwrap()
                .id,
        );
    }
    for i in 0..5 {
        ids.push(
            client
                .send(sms(&format!("+1415555010{i}"), "Hi"))
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        herald_tests::events_until(&client, id, &["sent"], WAIT).await;
    }
    // The counters follow the durable log: wait until they have caught up, then compare.
    let deadline = tokio::time::Instant::now() + WAIT;
    let metrics = loop {
        let m = http::get(admin, "/metrics").await;
        assert_eq!(m.status, 200);
        assert!(m.header("content-type").unwrap().contains("version=0.0.4"));
        if total(&m.body, "herald_messages_sent_total") >= 12.0 {
            break m.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never caught up:\n{}",
            m.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expect = [
        ("herald_messages_accepted_total{channel=\"email\"}", 7.0),
        ("herald_messages_accepted_total{channel=\"sms\"}", 5.0),
        (
            "herald_messages_sent_total{provider=\"hook\",channel=\"email\"}",
            7.0,
        ),
        (
            "herald_messages_sent_total{provider=\"hook\",channel=\"sms\"}",
            5.0,
        ),
        ("herald_messages{state=\"sent\"}", 12.0),
        ("herald_messages{state=\"queued\"}", 0.0),
        (
            "herald_breaker_state{provider=\"hook\",state=\"closed\"}",
            1.0,
        ),
        (
            "herald_breaker_state{provider=\"hook\",state=\"open\"}",
            0.0,
        ),
        ("herald_accept_seconds_count", 12.0),
        (
            "herald_provider_call_seconds_count{provider=\"hook\"}",
            12.0,
        ),
        (
            "herald_accept_to_sent_seconds_count{provider=\"hook\",channel=\"email\"}",
            7.0,
        ),
    ];
    for (name, want) in expect {
        assert_eq!(sample(&metrics, name), Some(want), "{name} in\n{metrics}");
    }
    assert_eq!(
        total(&metrics, "herald_messages_sent_total"),
        12.0,
        "{metrics}"
    );
    assert_eq!(total(&metrics, "herald_messages_failed_total"), 0.0);
    assert_eq!(mock.count(), 12);

    let promtool = tools::ensure("promtool", "prometheus");
    let mut check = tokio::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = check.stdin.take().unwrap();
        stdin.write_all(metrics.as_bytes()).await.unwrap();
    }
    let out = check.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A scraper that asks for OpenMetrics gets it.
    let om = http::request(
        admin,
        "GET",
        "/metrics",
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    )
    .await;
    assert!(
        om.header("content-type")
            .unwrap()
            .contains("openmetrics-text")
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);

    let ready = http::get(admin, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let v: Value = serde_json::from_str(&ready.body).unwrap();
    assert_eq!(v["ready"], true);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["store", "writer", "storage", "route"]);
    assert_eq!(http::get(admin, "/nope").await.status, 404);
    assert_eq!(
        http::request(admin, "POST", "/metrics", &[]).await.status,
        405
    );
}

/// A DevTools protocol session with one page.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::Text(msg.into())).await.unwrap();
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("DevTools answered")
                .expect("DevTools connection open")
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }
}

/// Headless Chromium on `url` (a fresh profile in `dir`), and its page's DevTools session.
async fn chromium(url: &str, dir: &std::path::Path) -> (tokio::process::Child, Page) {
    let binary = tools::ensure("chromium", "chromium");
    let profile = dir.join("chromium-profile");
    let child = tokio::process::Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1360,940",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    // Chromium writes the port it chose into the profile.
    let port_file = profile.join("DevToolsActivePort");
    let deadline = tokio::time::Instant::now() + WAIT;
    let port: u16 = loop {
        if let Some(p) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse().ok())
        {
            break p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromium did not open DevTools"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ws_url = loop {
        let list: Value =
            serde_json::from_str(&http::get(port, "/json/list").await.body).unwrap_or(Value::Null);
        let page = list.as_array().and_then(|l| {
            l.iter().find(|t| {
                t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
            })
        });
        if let Some(u) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
            break u.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no page target: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .expect("DevTools websocket");
    (child, Page { ws, next: 0 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_chromium_shows_deliveries_and_a_breaker_opening() {
    let down = MockProvider::start().await;
    down.set_default(Reply::new(503, r#"{"error":"down for maintenance"}"#));
    let outbox = tempfile::tempdir().unwrap();
    let daemon = Daemon::builder()
        .config(&format!(
            "[[providers]]\nname = \"dev\"\nplugin = \"outbox\"\ndir = \"{}\"\n\n\
             [[providers]]\nname = \"flaky\"\nplugin = \"webhook\"\nurl = \"{}/notify\"\n\
             breaker = {{ failures = 2, cooldown = \"10m\" }}\n\n\
             [routes]\nemail = [\"dev\"]\nsms = [\"flaky\"]\n",
            outbox.path().display(),
            down.url()
        ))
        .admin()
        .start()
        .await;
    let admin = daemon.admin_port.unwrap();
    let client = daemon.client().await;
    let url = format!("http://127.0.0.1:{admin}/");
    let (_browser, mut page) = chromium(&url, daemon.dir.path()).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while page
        .eval("document.querySelectorAll('[data-state]').length")
        .await
        != json!(12)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page did not render"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for (i, guest) in ["ann", "bo", "cy", "di", "ed"].iter().enumerate() {
        let mut m = email(&format!("{guest}@example.com"), "Save the date");
        m.tags = vec!["wedding:42".into(), format!("table:{i}")];
        client.send(m).await.unwrap();
    }
    for i in 0..3 {
        client
            .send(sms(&format!("+1415555020{i}"), "RSVP?"))
            .await
            .unwrap();
    }
    // The page shows them delivered, and the SMS provider's breaker open.
    let probe = r#"JSON.stringify({
        delivered: document.querySelector('[data-state="delivered"] .count').textContent,
        breaker: (document.querySelector('[data-provider="flaky"]') || {}).dataset?.breaker,
        opened: document.querySelectorAll('#events [data-kind="provider_opened"]').length,
        delivered_events: document.querySelectorAll('#events [data-kind="delivered"]').length,
    })"#;
    let deadline = tokio::time::Instant::now() + WAIT;
    let shown = loop {
        let v: Value =
            serde_json::from_str(page.eval(probe).await.as_str().unwrap_or("{}")).unwrap();
        if v["delivered"] == "5"
            && v["breaker"] == "open"
            && v["opened"].as_u64() >= Some(1)
            && v["delivered_events"] == 5
        {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed it: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("status page: {shown}");
    // Let the 2 s poll settle the counts, then keep a picture for people.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let shot = page
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    };
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png");
    std::fs::write(&target, &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    // And as it looks in a dark desktop theme.
    page.call(
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
    )
    .await;
    let dark = page
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let dark = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(dark["data"].as_str().unwrap())
            .unwrap()
    };
    std::fs::write(target.with_file_name("status-page-dark.png"), dark).unwrap();

    // The breaker event is a durable event like any other, with the reason.
    let filter = Filter {
        kinds: vec![EventKind::ProviderOpened],
        ..Filter::default()
    };
    let mut sub = client.subscribe(filter, Some(0)).await.unwrap();
    let e = tokio::time::timeout(WAIT, sub.next_event())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.provider.as_deref(), Some("flaky"));
    assert!(
        e.detail.as_deref().is_some_and(|d| d.contains("503")),
        "{e:?}"
    );
    // One route still works: ready.
    assert_eq!(http::get(admin, "/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_that_opens_and_recovers_is_three_events_in_order() {
    let mock = MockProvider::start().await;
    mock.push(Reply::new(503, r#"{"error":"overloaded"}"#));
    let daemon = Daemon::builder()
        .config(&format!(
            "[[providers]]\nname = \"flaky\"\nplugin = \"webhook\"\nurl = \"{}/notify\"\n\
             breaker = {{ failures = 1, cooldown = \"300ms\" }}\n\n[routes]\nsms = [\"flaky\"]\n",
            mock.url()
        ))
        .start()
        .await;
    let client = daemon.client().await;
    let id = client.send(sms("+14155550123", "RSVP?")).await.unwrap().id;
    herald_tests::events_until(&client, &id, &["sent"], WAIT).await;
    let filter = Filter {
        kinds: vec![
            EventKind::ProviderOpened,
            EventKind::ProviderHalfOpen,
            EventKind::ProviderClosed,
        ],
        ..Filter::default()
    };
    let mut sub = client.subscribe(filter, Some(0)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = tokio::time::timeout(WAIT, sub.next_event())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(e.provider.as_deref(), Some("flaky"));
        assert!(e.detail.is_some());
        got.push(e.kind);
    }
    assert_eq!(
        got,
        [
            EventKind::ProviderOpened,
            EventKind::ProviderHalfOpen,
            EventKind::ProviderClosed
        ]
    );
    assert_eq!(mock.count(), 2, "one failure, one trial");
}
