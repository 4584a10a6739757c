//! Hot reload: a valid config swaps in atomically; an invalid one is refused with a
//! `config_rejected` event and the running config keeps delivering.

use std::time::Duration;

use herald_client::ClientError;
use herald_plugin_api::EventKind;
use herald_protocol::Filter;
use herald_tests::mock::MockProvider;
use herald_tests::{Daemon, email, events_until};

const T: Duration = Duration::from_secs(30);

fn route_to(mock: &MockProvider) -> String {
    format!(
        "[[providers]]\nname = \"hook\"\nplugin = \"webhook\"\nurl = \"{}/notify\"\n\n[routes]\nemail = [\"hook\"]\n",
        mock.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_a_good_config_and_refuses_a_bad_one() {
    let first = MockProvider::start().await;
    let second = MockProvider::start().await;
    let daemon = Daemon::builder().config(&route_to(&first)).start().await;
    let client = daemon.client().await;
    let ack = client.send(email("a@example.org", "before")).await.unwrap();
    events_until(&client, &ack.id, &["sent"], T).await;

    // A bad file: the plugin refuses its url. The running config stays.
    std::fs::write(
        &daemon.config_path,
        std::fs::read_to_string(&daemon.config_path)
            .unwrap()
            .replace(&format!("{}/notify", first.url()), "ftp://nowhere"),
    )
    .unwrap();
    match client.reload().await {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, herald_protocol::ErrorCode::ConfigRejected);
            assert!(e.message.contains("ftp"), "{e}");
        }
        r => panic!("expected a refusal, got {r:?}"),
    }
    let ack = client
        .send(email("b@example.org", "still first"))
        .await
        .unwrap();
    events_until(&client, &ack.id, &["sent"], T).await;
    assert_eq!(first.count(), 2);

    // A good file pointing at the second provider.
    std::fs::write(
        &daemon.config_path,
        std::fs::read_to_string(&daemon.config_path)
            .unwrap()
            .replace("ftp://nowhere", &format!("{}/notify", second.url())),
    )
    .unwrap();
    let detail = client.reload().await.unwrap();
    assert!(detail.contains("email = [hook]"), "{detail}");
    let ack = client
        .send(email("c@example.org", "now second"))
        .await
        .unwrap();
    events_until(&client, &ack.id, &["sent"], T).await;
    assert_eq!(second.count(), 1);
    assert_eq!(first.count(), 2);

    // Both reloads left an event.
    // The file watcher may reload each written file too, before or after the explicit
    // reload: read the whole log so far, and expect each outcome once or twice, in order.
    let mut sub = client.subscribe(Filter::default(), Some(0)).await.unwrap();
    let mut all = Vec::new();
    while all
        .last()
        .is_none_or(|e: &herald_plugin_api::Event| e.seq < sub.last_seq)
    {
        all.push(
            tokio::time::timeout(T, sub.next_event())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    let logged: Vec<_> = all
        .into_iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::ConfigRejected | EventKind::ConfigReloaded
            )
        })
        .collect();
    let mut outcomes: Vec<EventKind> = logged.iter().map(|e| e.kind).collect();
    outcomes.dedup();
    assert_eq!(
        outcomes,
        [EventKind::ConfigRejected, EventKind::ConfigReloaded],
        "{logged:?}"
    );
    assert!(logged[0].detail.as_deref().unwrap().contains("ftp"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_reload() {
    let first = MockProvider::start().await;
    let second = MockProvider::start().await;
    let daemon = Daemon::builder().config(&route_to(&first)).start().await;
    let client = daemon.client().await;
    let mut sub = client
        .subscribe(
            Filter {
                kinds: vec![EventKind::ConfigRejected, EventKind::ConfigReloaded],
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();

    // Editing the file is enough: the daemon watches it.
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    std::fs::write(
        &daemon.config_path,
        text.replace(&first.url(), &second.url()),
    )
    .unwrap();
    let e = tokio::time::timeout(T, sub.next_event())
        .await
        .expect("reload on file change")
        .unwrap()
        .unwrap();
    assert_eq!(e.kind, EventKind::ConfigReloaded, "{e:?}");
    let ack = client
        .send(email("d@example.org", "after edit"))
        .await
        .unwrap();
    events_until(&client, &ack.id, &["sent"], T).await;
    assert_eq!(second.count(), 1);

    // SIGHUP reloads too (the file is unchanged; the reload still happens and is reported).
    let status = std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let e = tokio::time::timeout(T, sub.next_event())
        .await
        .expect("reload on SIGHUP")
        .unwrap()
        .unwrap();
    assert_eq!(e.kind, EventKind::ConfigReloaded);
}
