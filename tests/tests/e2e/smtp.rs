//! The `smtp` plugin and the daemon's SMTP transport against a real SMTP server: an
//! aiosmtpd sink (`tests/fixtures/smtp/sink.py`, see `herald_tests::smtp`) on 127.0.0.1.
//! What arrives (headers, MIME parts, attachments, the envelope) and what the server's
//! replies become: 550 5.1.1 bounces without a retry, 451 is retried until dead, a 535 or
//! 530 login failure is a provider failure that the route's next provider takes over.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_plugin_api::{Attachment, Content, EmailContent, Event, State};
use herald_protocol::SendMessage;
use herald_tests::smtp::{Received, SmtpServer};
use herald_tests::{Daemon, assert_idle, email, events_until, free_port, kinds};

const T: Duration = Duration::from_secs(60);

/// `[[providers]]` `mail`: smtp, without TLS, to the sink, plus `extra` lines.
fn smtp_provider(sink: &SmtpServer, extra: &str) -> String {
    format!(
        "[[providers]]\nname = \"mail\"\nplugin = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\n\
         tls = \"none\"\nfrom = \"Events <events@example.com>\"\n{extra}\n",
        sink.port()
    )
}

/// `mail` (with `extra` lines) as the only email route.
fn smtp_config(sink: &SmtpServer, extra: &str) -> String {
    format!(
        "{}\n[routes]\nemail = [\"mail\"]\n",
        smtp_provider(sink, extra)
    )
}

async fn daemon_for(sink: &SmtpServer) -> Daemon {
    Daemon::builder()
        .config(&smtp_config(sink, ""))
        .start()
        .await
}

fn email_content(m: &mut SendMessage) -> &mut EmailContent {
    match &mut m.content {
        Content::Email(e) => e,
        other => panic!("not an email: {other:?}"),
    }
}

/// Line ends as the sender wrote them: SMTP carries text with CRLF, so a decoded text part
/// may come back with CRLF where the message had LF.
fn lf(s: &str) -> String {
    s.replace("\r\n", "\n")
}

/// Standard base64 with padding (attachments travel base64-encoded in the protocol).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One line per event: kind, provider, attempt, detail (for assertion messages).
fn story(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} provider={:?} attempt={:?} detail={:?}",
                e.kind.as_str(),
                e.provider,
                e.attempt,
                e.detail
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn only_message(sink: &SmtpServer) -> Received {
    let mut messages = sink.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    messages.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_html_arrive_as_multipart_alternative_with_the_right_headers() {
    let sink = SmtpServer::start().await;
    let daemon = daemon_for(&sink).await;
    let client = daemon.client().await;

    let text = "Dear Ann,\nwe're getting married — café at 5, ✓ RSVP by Friday.\n";
    let html = "<p>Dear Ann,</p>\n<p>we're getting married — café at 5, ✓ RSVP by Friday.</p>\n";
    let subject = "You're invited — RSVP";
    let mut m = email("ann@example.org", subject);
    m.tags = vec!["wedding-42".into()];
    {
        let e = email_content(&mut m);
        e.text = Some(text.into());
        e.html = Some(html.into());
        e.reply_to = Some("Planner <planner@example.com>".into());
        e.headers = BTreeMap::from([("X-Campaign".to_string(), "spring-invites".to_string())]);
    }
    // A reserved header (one that could add a recipient) is refused at accept, naming it.
    let mut spy = m.clone();
    email_content(&mut spy)
        .headers
        .insert("Bcc".into(), "spy@example.net".into());
    match client.send(spy).await {
        Err(herald_client::ClientError::Server(e)) => {
            assert_eq!(
                e.field.as_deref(),
                Some(r#"content.email.headers["Bcc"]"#),
                "{e}"
            );
            assert!(e.message.contains("Bcc"), "{e}");
        }
        r => panic!("a Bcc header should be refused, got {r:?}"),
    }
    let ack = client.send(m).await.unwrap();

    let events = events_until(&client, &ack.id, &["sent", "failed", "bounced", "dead"], T).await;
    assert_eq!(
        kinds(&events),
        ["queued", "sending", "sent"],
        "{}",
        story(&events)
    );
    let sent = events.last().unwrap();
    let message_id = format!("<{}@example.com>", ack.id);
    assert_eq!(sent.provider.as_deref(), Some("mail"));
    assert_eq!(
        sent.provider_message_id.as_deref(),
        Some(message_id.as_str())
    );
    assert_eq!(sent.tags, ["wedding-42"]);
    let view = client.get(&ack.id).await.unwrap();
    assert_eq!(view.state, State::Sent);
    assert_eq!(
        view.provider_message_id.as_deref(),
        Some(message_id.as_str())
    );

    let got = only_message(&sink);
    assert!(
        got.defects.is_empty(),
        "MIME defects: {:?}\n{}",
        got.defects,
        got.raw
    );
    // The envelope: sender from `from`, the one recipient (no Bcc).
    assert_eq!(got.mail_from, "events@example.com");
    assert_eq!(got.rcpt_tos, ["ann@example.org"]);
    assert_eq!(
        sink.rcpt_attempts()
            .iter()
            .map(|r| r.address.as_str())
            .collect::<Vec<_>>(),
        ["ann@example.org"]
    );

    // Headers as written on the wire.
    let raw = |name: &str| got.raw_header(name);
    assert_eq!(
        raw("From").as_deref(),
        Some("Events <events@example.com>"),
        "{}",
        got.raw
    );
    assert_eq!(raw("To").as_deref(), Some("ann@example.org"), "{}", got.raw);
    assert_eq!(
        raw("Message-ID").as_deref(),
        Some(message_id.as_str()),
        "{}",
        got.raw
    );
    assert_eq!(raw("X-Herald-Id").as_deref(), Some(ack.id.as_str()));
    assert_eq!(raw("X-Campaign").as_deref(), Some("spring-invites"));
    assert!(raw("Subject").is_some(), "{}", got.raw);
    assert!(raw("Date").is_some(), "{}", got.raw);
    assert_eq!(raw("MIME-Version").as_deref(), Some("1.0"));
    assert_eq!(raw("Bcc"), None, "{}", got.raw);
    // ... and decoded (the subject is RFC 2047-encoded: it is not ASCII).
    assert_eq!(got.header("Subject"), Some(subject));
    assert_eq!(
        got.header("Reply-To"),
        Some("Planner <planner@example.com>")
    );
    for once in ["From", "To", "Subject", "Message-ID", "X-Herald-Id", "Date"] {
        assert_eq!(
            got.headers_named(once).len(),
            1,
            "one {once}: {:?}",
            got.headers
        );
    }

    // The body: multipart/alternative of text/plain then text/html, decoded intact.
    assert_eq!(
        got.mime.content_type, "multipart/alternative",
        "{}",
        got.raw
    );
    assert_eq!(got.mime.child_types(), ["text/plain", "text/html"]);
    let plain = &got.mime.parts[0];
    let rich = &got.mime.parts[1];
    assert_eq!(plain.charset.as_deref(), Some("utf-8"));
    assert_eq!(rich.charset.as_deref(), Some("utf-8"));
    assert_eq!(lf(plain.text.as_deref().unwrap()), text, "{}", got.raw);
    assert_eq!(lf(rich.text.as_deref().unwrap()), html, "{}", got.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_arrives_in_multipart_mixed_with_its_filename_and_bytes() {
    let sink = SmtpServer::start().await;
    let daemon = daemon_for(&sink).await;
    let client = daemon.client().await;

    // Every byte value, CR and LF included: a binary attachment must not be altered.
    let pdf: Vec<u8> = b"%PDF-1.4\r\n"
        .iter()
        .copied()
        .chain((0..=255u8).cycle().take(3000))
        .collect();
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nSUMMARY:Wedding\r\nEND:VCALENDAR\r\n";
    let mut m = email("bo@example.org", "Your tickets");
    {
        let e = email_content(&mut m);
        e.text = Some("Tickets attached.".into());
        e.html = Some("<p>Tickets attached.</p>".into());
        e.attachments = vec![
            Attachment {
                filename: "tickets.pdf".into(),
                content_type: Some("application/pdf".into()),
                content: base64(&pdf),
            },
            Attachment {
                filename: "invite.ics".into(),
                content_type: Some("text/calendar".into()),
                content: base64(ics.as_bytes()),
            },
        ];
    }
    let ack = client.send(m).await.unwrap();
    let events = events_until(&client, &ack.id, &["sent", "failed", "bounced", "dead"], T).await;
    assert_eq!(
        kinds(&events),
        ["queued", "sending", "sent"],
        "{}",
        story(&events)
    );

    let got = only_message(&sink);
    assert!(
        got.defects.is_empty(),
        "MIME defects: {:?}\n{}",
        got.defects,
        got.raw
    );
    assert_eq!(got.rcpt_tos, ["bo@example.org"]);
    assert_eq!(got.mime.content_type, "multipart/mixed", "{}", got.raw);
    assert_eq!(
        got.mime.child_types(),
        ["multipart/alternative", "application/pdf", "text/calendar"]
    );
    let body = &got.mime.parts[0];
    assert_eq!(body.child_types(), ["text/plain", "text/html"]);
    assert_eq!(
        body.parts[0].text.as_deref().map(lf).as_deref(),
        Some("Tickets attached.")
    );
    assert_eq!(
        body.parts[1].text.as_deref().map(lf).as_deref(),
        Some("<p>Tickets attached.</p>")
    );

    let pdf_part = &got.mime.parts[1];
    assert_eq!(pdf_part.filename.as_deref(), Some("tickets.pdf"));
    assert_eq!(pdf_part.disposition.as_deref(), Some("attachment"));
    assert!(
        pdf_part.body == pdf,
        "the PDF's bytes changed on the way:\n{}",
        got.raw
    );
    let ics_part = &got.mime.parts[2];
    assert_eq!(ics_part.filename.as_deref(), Some("invite.ics"));
    assert_eq!(ics_part.disposition.as_deref(), Some("attachment"));
    assert_eq!(String::from_utf8_lossy(&ics_part.body), ics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messages_own_from_is_the_sender_and_message_id_domain_is_used() {
    let sink = SmtpServer::start().await;
    let daemon = Daemon::builder()
        .config(&smtp_config(
            &sink,
            "message_id_domain = \"mail.example.net\"",
        ))
        .start()
        .await;
    let client = daemon.client().await;
    let mut m = email("jo@example.org", "From the shop");
    email_content(&mut m).from = Some("Café Shop <shop@example.com>".into());
    let ack = client.send(m).await.unwrap();
    let events = events_until(&client, &ack.id, &["sent", "failed", "bounced", "dead"], T).await;
    assert_eq!(
        kinds(&events),
        ["queued", "sending", "sent"],
        "{}",
        story(&events)
    );
    let message_id = format!("<{}@mail.example.net>", ack.id);
    assert_eq!(
        events.last().unwrap().provider_message_id.as_deref(),
        Some(message_id.as_str())
    );

    let got = only_message(&sink);
    assert!(
        got.defects.is_empty(),
        "MIME defects: {:?}\n{}",
        got.defects,
        got.raw
    );
    assert_eq!(got.mail_from, "shop@example.com");
    assert_eq!(got.header("From"), Some("Café Shop <shop@example.com>"));
    assert_eq!(
        got.raw_header("Message-ID").as_deref(),
        Some(message_id.as_str())
    );
    // A text-only message is a single text/plain part. It arrives with one more line end
    // than was sent: lettre ends a single part's body with CRLF and then sends DATA's
    // terminator as CRLF.CRLF, so the body gains an empty last line.
    assert_eq!(got.mime.content_type, "text/plain", "{}", got.raw);
    assert_eq!(
        got.mime.text.as_deref().map(str::trim_end),
        Some("From the shop — body")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_550_user_unknown_bounces_without_a_retry() {
    let sink = SmtpServer::start().await;
    let daemon = daemon_for(&sink).await;
    let client = daemon.client().await;
    let to = "unknown-cy@example.org";
    let ack = client.send(email(to, "Hello?")).await.unwrap();

    let events = events_until(&client, &ack.id, &["sent", "failed", "bounced", "dead"], T).await;
    assert_eq!(
        kinds(&events),
        ["queued", "sending", "bounced"],
        "{}",
        story(&events)
    );
    let bounced = events.last().unwrap();
    let detail = bounced.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("550") && detail.contains("5.1.1") && detail.contains("User unknown"),
        "{detail}"
    );
    assert_eq!(bounced.provider.as_deref(), Some("mail"));
    assert_eq!(bounced.provider_message_id, None);

    assert_idle(&client).await;
    assert_eq!(client.get(&ack.id).await.unwrap().state, State::Bounced);
    assert!(sink.messages().is_empty(), "{:#?}", sink.messages());
    let rcpts = sink.rcpt_attempts();
    assert_eq!(rcpts.len(), 1, "one attempt, no retry: {rcpts:#?}");
    assert_eq!(rcpts[0].address, to);
    assert!(rcpts[0].reply.starts_with("550 5.1.1"), "{rcpts:?}");

    // The pooled connection is still usable, and the rejected recipient does not linger
    // in the next envelope.
    let next = client
        .send(email("cy@example.org", "Hello again"))
        .await
        .unwrap();
    let events = events_until(&client, &next.id, &["sent", "failed", "bounced", "dead"], T).await;
    assert_eq!(
        kinds(&events),
        ["queued", "sending", "sent"],
        "{}",
        story(&events)
    );
    assert_eq!(only_message(&sink).rcpt_tos, ["cy@example.org"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_451_is_deferred_and_retried_until_dead() {
    let sink = SmtpServer::start().await;
    let daemon = daemon_for(&sink).await;
    let client = daemon.client().await;
    let to = "tempfail-di@example.org";
    let ack = client.send(email(to, "Later")).await.unwrap();

    let events = events_until(&client, &ack.id, &["sent", "failed", "bounced", "dead"], T).await;
    assert_eq!(
        kinds(&events),
        [
            "queued", "sending", "deferred", "sending", "deferred", "sending", "dead"
        ],
        "max_attempts = 3:\n{}",
        story(&events)
    );
    for e in events.iter().filter(|e| e.kind.as_str() == "deferred") {
        let detail = e.detail.as_deref().unwrap_or_default();
        assert!(
            detail.contains("451") && detail.contains("4.3.0"),
            "{detail}"
        );
    }
    let attempts: Vec<_> = events
        .iter()
        .filter(|e| e.kind.as_str() == "sending")
        .map(|e| e.attempt)
        .collect();
    assert_eq!(attempts, [Some(1), Some(2), Some(3)]);

    assert_idle(&client).await;
    assert_eq!(client.get(&ack.id).await.unwrap().state, State::Dead);
    assert!(sink.messages().is_empty());
    let rcpts = sink.rcpt_attempts();
    assert_eq!(
        rcpts.len(),
        3,
        "each attempt reached the server: {rcpts:#?}"
    );
    assert!(
        rcpts
            .iter()
            .all(|r| r.address == to && r.reply.starts_with("451"))
    );
}

const PASSWORD: &str = "correct horse battery staple";

/// The login, with the password from the environment (a secret must be `${ENV}`).
const AUTH_LINES: &str = "username = \"herald\"\npassword = \"${SMTP_TEST_PASSWORD}\"";

fn auth_config(sink: &SmtpServer) -> String {
    smtp_config(sink, AUTH_LINES)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_the_right_password_sends() {
    let sink = SmtpServer::builder().auth("herald", PASSWORD).start().await;
    let daemon = Daemon::builder()
        .config(&auth_config(&sink))
        .env("SMTP_TEST_PASSWORD", PASSWORD)
        .start()
        .await;
    let client = daemon.client().await;
    let ack = client
        .send(email("ed@example.org", "Signed in"))
        .await
        .unwrap();
    let events = events_until(&client, &ack.id, &["sent", "failed", "bounced", "dead"], T).await;
    assert_eq!(
        kinds(&events),
        ["queued", "sending", "sent"],
        "{}",
        story(&events)
    );

    let got = only_message(&sink);
    assert_eq!(got.auth_login.as_deref(), Some("herald"));
    assert_eq!(got.rcpt_tos, ["ed@example.org"]);
    assert_eq!(
        got.raw_header("X-Herald-Id").as_deref(),
        Some(ack.id.as_str())
    );
    let auths = sink.auth_attempts();
    assert!(
        !auths.is_empty() && auths.iter().all(|a| a.success),
        "{auths:?}"
    );
    assert!(auths.iter().all(|a| a.login.as_deref() == Some("herald")));
    assert!(
        !daemon.log().contains(PASSWORD),
        "the password reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_provider_failure_retried_until_dead() {
    let sink = SmtpServer::builder().auth("herald", PASSWORD).start().await;
    let wrong = "tr0ub4dor&3";
    let daemon = Daemon::builder()
        .config(&auth_config(&sink))
        .env("SMTP_TEST_PASSWORD", wrong)
        .start()
        .await;
    let client = daemon.client().await;
    let ack = client
        .send(email("fi@example.org", "Locked out"))
        .await
        .unwrap();
    let events = events_until(&client, &ack.id, &["sent", "failed", "bounced", "dead"], T).await;
    assert_eq!(
        kinds(&events),
        [
            "queued", "sending", "deferred", "sending", "deferred", "sending", "dead"
        ],
        "a provider failure with no other provider is retried:\n{}",
        story(&events)
    );
    for e in events
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "deferred" | "dead"))
    {
        let detail = e.detail.as_deref().unwrap_or_default();
        assert!(
            detail.contains("535") && detail.contains("authentication failed"),
            "{detail}"
        );
        assert!(
            !detail.contains(wrong),
            "the password is in an event: {detail}"
        );
    }

    assert_idle(&client).await;
    assert!(sink.messages().is_empty());
    assert!(sink.rcpt_attempts().is_empty(), "no RCPT without a login");
    let auths = sink.auth_attempts();
    assert!(
        !auths.is_empty() && auths.iter().all(|a| !a.success),
        "{auths:?}"
    );
    assert!(auths.iter().all(|a| a.login.as_deref() == Some("herald")));
    assert!(
        !daemon.log().contains(wrong),
        "the password reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_over_to_the_next_provider() {
    let sink = SmtpServer::builder().auth("herald", PASSWORD).start().await;
    let outbox = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[providers]]\nname = \"backup\"\nplugin = \"outbox\"\ndir = \"{}\"\n\n\
         [routes]\nemail = [\"mail\", \"backup\"]\n",
        smtp_provider(&sink, AUTH_LINES),
        outbox.path().display()
    );
    let daemon = Daemon::builder()
        .config(&config)
        .env("SMTP_TEST_PASSWORD", "wrong")
        .start()
        .await;
    let client = daemon.client().await;
    let ack = client
        .send(email("gi@example.org", "Via the backup"))
        .await
        .unwrap();
    let events = events_until(
        &client,
        &ack.id,
        &["sent", "delivered", "failed", "dead"],
        T,
    )
    .await;
    // Within the same attempt: no deferral, `backup` takes it at once.
    assert_eq!(
        kinds(&events),
        ["queued", "sending", "sent"],
        "{}",
        story(&events)
    );
    assert_eq!(events[2].provider.as_deref(), Some("backup"));
    assert!(sink.messages().is_empty());
    assert!(sink.auth_attempts().iter().all(|a| !a.success));
    assert!(outbox.path().join(format!("{}.json", ack.id)).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_requires_auth_refuses_an_anonymous_sender_as_a_provider_failure() {
    let sink = SmtpServer::builder().auth("herald", PASSWORD).start().await;
    let daemon = daemon_for(&sink).await;
    let client = daemon.client().await;
    let ack = client
        .send(email("hi@example.org", "Anonymous"))
        .await
        .unwrap();
    let events = events_until(&client, &ack.id, &["sent", "failed", "bounced", "dead"], T).await;
    assert_eq!(
        kinds(&events),
        [
            "queued", "sending", "deferred", "sending", "deferred", "sending", "dead"
        ],
        "{}",
        story(&events)
    );
    let detail = events.last().unwrap().detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("530") && detail.contains("authentication failed"),
        "{detail}"
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_retried_not_failed_over() {
    // A port nobody listens on.
    let port = free_port();
    let outbox = tempfile::tempdir().unwrap();
    let config = format!(
        "[[providers]]\nname = \"mail\"\nplugin = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         tls = \"none\"\nfrom = \"Events <events@example.com>\"\n\n\
         [[providers]]\nname = \"backup\"\nplugin = \"outbox\"\ndir = \"{}\"\n\n\
         [routes]\nemail = [\"mail\", \"backup\"]\n",
        outbox.path().display()
    );
    let daemon = Daemon::builder().config(&config).start().await;
    let client = daemon.client().await;
    let ack = client
        .send(email("ki@example.org", "Anyone there?"))
        .await
        .unwrap();
    // A connection error is `Retry` (smtp plugin docs): the message waits for `mail`
    // rather than going to `backup`, which is for a misconfigured provider.
    let events = events_until(&client, &ack.id, &["deferred", "sent", "delivered"], T).await;
    assert_eq!(
        kinds(&events),
        ["queued", "sending", "deferred"],
        "{}",
        story(&events)
    );
    let detail = events.last().unwrap().detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("SMTP submission failed") && detail.contains("Connection refused"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_display_name_with_specials_must_be_quoted() {
    let sink = SmtpServer::start().await;
    let daemon = daemon_for(&sink).await;
    let client = daemon.client().await;
    // Not an RFC 5322 mailbox (the comma needs quotes): refused at accept, naming the fix,
    // rather than accepted and then failing at the transport.
    let mut m = email("lu@example.org", "Unquoted");
    email_content(&mut m).from = Some("Shop, Inc. <shop@example.com>".into());
    match client.send(m).await {
        Err(herald_client::ClientError::Server(e)) => {
            assert_eq!(e.field.as_deref(), Some("content.email.from"), "{e}");
            assert!(e.message.contains("quote"), "{e}");
        }
        r => panic!("expected invalid_field content.email.from, got {r:?}"),
    }
    // Quoted, it goes through and arrives with that sender.
    let mut m = email("lu@example.org", "Quoted");
    email_content(&mut m).from = Some("\"Shop, Inc.\" <shop@example.com>".into());
    let ack = client.send(m).await.unwrap();
    let events = events_until(&client, &ack.id, &["sent", "failed", "bounced", "dead"], T).await;
    assert_eq!(kinds(&events).last(), Some(&"sent"), "{}", story(&events));
    let msgs = sink.wait_for_messages(1, T).await;
    assert_eq!(msgs[0].mail_from, "shop@example.com");
}
