//! Stored templates (`[templates] dir`): a send names a template and passes vars; the
//! daemon renders it when it accepts the message, so the stored (and delivered) message is
//! the rendered one. A reload with a broken template is refused and sends keep the running
//! set; a reload with a changed template changes only later sends.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_client::{Client, ClientError};
use herald_plugin_api::{Content, EmailContent};
use herald_protocol::{ErrorBody, ErrorCode, SendMessage, Vars};
use herald_tests::mock::{MockProvider, Recorded, Reply};
use herald_tests::{Daemon, email, events_until, heraldd_path, sms};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

const WELCOME: &str = r#"tags = ["welcome", "plan:{{ plan }}"]

[email]
subject = "Welcome, {{ name }}"
text = "Hi {{ name }}, you are on {{ plan }}."
html = "<p>Hi {{ name }}</p>"

[sms]
body = "Hi {{ name }}, your code is {{ code }}"
"#;

fn vars(v: Value) -> Vars {
    Vars(serde_json::from_value::<BTreeMap<String, Value>>(v).unwrap())
}

/// An email naming `template` with `vars`; the content only names the channel.
fn templated(to: &str, template: &str, v: Value) -> SendMessage {
    SendMessage {
        content: Content::Email(EmailContent::default()),
        template: Some(template.into()),
        vars: vars(v),
        ..email(to, "")
    }
}

async fn refused(client: &Client, m: SendMessage) -> ErrorBody {
    match client.send(m).await {
        Err(ClientError::Server(e)) => e,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

fn to_of(r: &Recorded) -> String {
    r.json()["to"].as_str().unwrap_or_default().to_string()
}

async fn start(mock: &MockProvider, templates: &Path, retry: &[&str]) -> Daemon {
    let mut b = Daemon::builder()
        .webhook_provider(mock)
        .config(&format!("[templates]\ndir = \"{}\"\n", templates.display()));
    for r in retry {
        b = b.retry(r);
    }
    b.start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_naming_a_template_arrives_rendered_and_bad_ones_name_the_field() {
    let mock = MockProvider::start().await;
    let templates = tempfile::tempdir().unwrap();
    std::fs::write(templates.path().join("welcome.toml"), WELCOME).unwrap();
    let daemon = start(&mock, templates.path(), &[]).await;
    let client = daemon.client().await;

    let mut m = templated(
        "ann@example.org",
        "welcome",
        json!({"name": "Ann <b>", "plan": "pro", "extra": {"nested": [1, 2]}}),
    );
    m.tags = vec!["t-first".into()];
    m.idempotency_key = Some("welcome-ann".into());
    let ack = client.send(m.clone()).await.unwrap();
    assert!(!ack.duplicate);
    events_until(&client, &ack.id, &["sent"], T).await;
    let got = mock.wait_for(1, T).await[0].json();
    assert_eq!(got["subject"], "Welcome, Ann <b>");
    assert_eq!(got["text"], "Hi Ann <b>, you are on pro.");
    assert_eq!(got["html"], "<p>Hi Ann &lt;b&gt;</p>", "HTML is escaped");
    assert_eq!(got["tags"], json!(["t-first", "welcome", "plan:pro"]));

    // The same key with the same template and vars is the same message...
    let again = client.send(m.clone()).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.id, ack.id);
    // ...with other vars, a conflict (the rendered message differs).
    let mut other = m.clone();
    other.vars = vars(json!({"name": "Bo", "plan": "pro"}));
    let e = refused(&client, other).await;
    assert_eq!(e.code, ErrorCode::IdempotencyConflict, "{e}");

    // SMS from the same template, through the CLI with --var.
    let out = daemon
        .cli()
        .args([
            "send",
            "--channel",
            "sms",
            "--to",
            "+14155550100",
            "--template",
            "welcome",
            "--var",
            "name=Cy",
            "--var",
            "code=4242",
            "--var",
            "plan=basic",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    events_until(&client, &id, &["sent"], T).await;
    let got = mock
        .requests()
        .into_iter()
        .find(|r| to_of(r) == "+14155550100")
        .unwrap()
        .json();
    assert_eq!(got["body"], "Hi Cy, your code is 4242");

    // Every bad send names its field.
    let cases = [
        (
            templated("a@example.org", "welcome", json!({"name": "A"})),
            "vars.plan",
        ),
        (
            templated("a@example.org", "nope", json!({"name": "A"})),
            "template",
        ),
        (
            SendMessage {
                vars: vars(json!({"name": "A"})),
                ..email("a@example.org", "no template")
            },
            "vars",
        ),
        (
            SendMessage {
                template: Some("welcome".into()),
                vars: vars(json!({"name": "A", "plan": "p"})),
                ..email("a@example.org", "my own subject")
            },
            "content.email.subject",
        ),
    ];
    for (m, field) in cases {
        let e = refused(&client, m).await;
        assert_eq!(e.code, ErrorCode::InvalidField, "{e}");
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
    }
    let e = refused(&client, templated("a@example.org", "nope", json!({}))).await;
    assert!(e.message.contains("welcome"), "lists the known ones: {e}");
    let e = refused(
        &client,
        SendMessage {
            template: Some("welcome".into()),
            vars: vars(json!({"name": "Dee"})),
            ..sms("+14155550101", "")
        },
    )
    .await;
    assert_eq!(e.field.as_deref(), Some("vars.code"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_refuse_a_broken_template_and_a_changed_one_changes_only_new_sends() {
    let mock = MockProvider::start().await;
    // Deliveries to held@ are answered 429 (retried, and not counted by the breaker) until the test lets them through: that
    // message is accepted before the reloads and delivered after them.
    let open = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&open);
    mock.rule(move |r| {
        (to_of(r) == "held@example.org" && !gate.load(Ordering::SeqCst))
            .then(|| Reply::new(429, "{}"))
    });
    let templates = tempfile::tempdir().unwrap();
    let file = templates.path().join("welcome.toml");
    std::fs::write(&file, WELCOME).unwrap();
    let daemon = start(
        &mock,
        templates.path(),
        &["max_attempts = 1000", "cap = \"100ms\""],
    )
    .await;
    let client = daemon.client().await;
    let v = json!({"name": "Ann", "plan": "pro"});

    let held = client
        .send(templated("held@example.org", "welcome", v.clone()))
        .await
        .unwrap();
    // It was tried (and refused) at least once with the first version.
    let first = mock.wait_for(1, T).await;
    assert_eq!(first[0].json()["subject"], "Welcome, Ann");

    // A broken template: the reload is refused, naming file, line and column.
    std::fs::write(
        &file,
        WELCOME.replace("Welcome, {{ name }}", "Welcome, {{ name }"),
    )
    .unwrap();
    let reason = match client.reload().await {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::ConfigRejected);
            e.message
        }
        r => panic!("expected a refusal, got {r:?}"),
    };
    let at = format!("{}:4:", file.display());
    assert!(reason.contains(&at), "{reason}");
    assert!(reason.contains("email.subject"), "{reason}");
    // `heraldd --check` says the same.
    let out = std::process::Command::new(heraldd_path())
        .arg("--config")
        .arg(&daemon.config_path)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&at), "{stderr}");
    // Sends keep using the running template.
    let ok = client
        .send(templated("b@example.org", "welcome", v.clone()))
        .await
        .unwrap();
    events_until(&client, &ok.id, &["sent"], T).await;
    let got = mock
        .requests()
        .into_iter()
        .find(|r| to_of(r) == "b@example.org")
        .unwrap()
        .json();
    assert_eq!(got["subject"], "Welcome, Ann");

    // A changed template: only sends after the reload see it.
    std::fs::write(&file, WELCOME.replace("Welcome,", "Hello again,")).unwrap();
    client.reload().await.unwrap();
    let new = client
        .send(templated("c@example.org", "welcome", v.clone()))
        .await
        .unwrap();
    events_until(&client, &new.id, &["sent"], T).await;
    let got = mock
        .requests()
        .into_iter()
        .find(|r| to_of(r) == "c@example.org")
        .unwrap()
        .json();
    assert_eq!(got["subject"], "Hello again, Ann");
    open.store(true, Ordering::SeqCst);
    events_until(&client, &held.id, &["sent"], T).await;
    let last = mock
        .requests()
        .into_iter()
        .rfind(|r| to_of(r) == "held@example.org")
        .unwrap()
        .json();
    assert_eq!(
        last["subject"], "Welcome, Ann",
        "the message accepted before the reload keeps its rendering"
    );
}
