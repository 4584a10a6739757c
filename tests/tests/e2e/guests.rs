//! Guests answering, through the real daemon and the real provider plugins: one identity
//! per recipient (a bounce of a display-name address suppresses every spelling of it, a
//! reply from the bare address finds the invitation), and replies read as RSVPs.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use herald_plugin_api::{EventKind, Rsvp, RsvpAnswer, State};
use herald_protocol::{Event, Filter};
use herald_tests::http;
use herald_tests::mock::{MockProvider, Reply};
use herald_tests::{Daemon, email, events_until, free_port, now_ms, sms};
use hmac::{Hmac, Mac};

const T: Duration = Duration::from_secs(60);
const PUBLIC: &str = "https://hooks.example.com";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "test-auth-token-0123456789";
const WHSEC_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

pub(crate) async fn resend_daemon(mock: &MockProvider, port: u16) -> Daemon {
    let secret = format!("whsec_{}", B64.encode(WHSEC_KEY));
    Daemon::builder()
        .config(&format!(
            "[webhooks]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{PUBLIC}\"\n\n\
             [[providers]]\nname = \"resend\"\nplugin = \"resend\"\napi_key = \"${{RESEND_TEST_KEY}}\"\n\
             from = \"Events <events@example.com>\"\nbase_url = \"{}\"\nwebhook_secret = \"${{RESEND_TEST_WHSEC}}\"\n\n\
             [routes]\nemail = [\"resend\"]\n",
            mock.url()
        ))
        .env("RESEND_TEST_KEY", "re_test_123")
        .env("RESEND_TEST_WHSEC", &secret)
        .start()
        .await
}

/// Posts a Resend (Svix-signed) webhook event; returns the HTTP status.
pub(crate) async fn resend_webhook(port: u16, svix_id: &str, body: &str) -> u16 {
    let ts = (now_ms() / 1000).to_string();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(WHSEC_KEY).unwrap();
    mac.update(format!("{svix_id}.{ts}.{body}").as_bytes());
    let sig = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    let a = http::post(
        port,
        "/webhooks/resend",
        &[
            ("svix-id", svix_id),
            ("svix-timestamp", &ts),
            ("svix-signature", &sig),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.status
}

/// The first event of `kind` in the log from seq 0, waiting for it.
async fn first_event(client: &herald_client::Client, kind: EventKind, skip: usize) -> Event {
    let mut sub = client
        .subscribe(
            Filter {
                kinds: vec![kind],
                ..Default::default()
            },
            Some(0),
        )
        .await
        .unwrap();
    let mut n = 0;
    loop {
        let e = tokio::time::timeout(T, sub.next_event())
            .await
            .expect("the event within the timeout")
            .unwrap()
            .unwrap();
        if n == skip {
            return e;
        }
        n += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_to_a_display_name_suppresses_every_spelling_and_replies_find_the_invitation() {
    let mock = MockProvider::start().await;
    let port = free_port();
    let daemon = resend_daemon(&mock, port).await;
    let client = daemon.client().await;

    // A hard bounce of "Ann Lee <Ann@Example.com>".
    mock.push(Reply::new(
        200,
        r#"{"id":"11111111-1111-4111-8111-111111111111"}"#,
    ));
    let first = client
        .send(email("Ann Lee <Ann@Example.com>", "Save the date"))
        .await
        .unwrap();
    events_until(&client, &first.id, &["sent"], T).await;
    let bounce = r#"{"type":"email.bounced","created_at":"2026-11-24T20:00:00.000Z","data":{"email_id":"11111111-1111-4111-8111-111111111111","from":"Events <events@example.com>","to":["Ann Lee <Ann@Example.com>"],"subject":"Save the date","bounce":{"type":"Permanent","subType":"General","message":"hard bounce"}}}"#;
    resend_webhook(port, "msg_bounce", bounce).await;
    events_until(&client, &first.id, &["bounced"], T).await;

    // Every spelling of Ann is refused now, and nothing more reaches Resend.
    for spelling in [
        "ann@example.com",
        "ANN@EXAMPLE.COM",
        "\"Lee, Ann\" <ann@example.com>",
    ] {
        let ack = client.send(email(spelling, "Reminder")).await.unwrap();
        events_until(&client, &ack.id, &["suppressed"], T).await;
        assert_eq!(
            client.get(&ack.id).await.unwrap().state,
            State::Suppressed,
            "{spelling}"
        );
    }
    assert_eq!(mock.count(), 1, "only the first send reached Resend");

    // An invitation to "Bo Park <Bo@example.com>", and Bo's reply from the bare address.
    mock.push(Reply::new(
        200,
        r#"{"id":"22222222-2222-4222-8222-222222222222"}"#,
    ));
    let mut invite = email("Bo Park <Bo@example.com>", "You're invited");
    invite.tags = vec!["wedding-42".into(), "guest-7".into()];
    let invite = client.send(invite).await.unwrap();
    events_until(&client, &invite.id, &["sent"], T).await;
    let reply = r#"{"type":"email.received","created_at":"2026-11-24T21:00:00.000Z","data":{"email_id":"33333333-3333-4333-8333-333333333333","from":"bo@example.com","to":["events@example.com"],"subject":"Re: You're invited"}}"#;
    resend_webhook(port, "msg_reply", reply).await;
    let inbound = first_event(&client, EventKind::Inbound, 0).await;
    assert_eq!(inbound.from.as_deref(), Some("bo@example.com"));
    assert_eq!(
        inbound.message_id.as_deref(),
        Some(invite.id.as_str()),
        "the reply carries the invitation's id"
    );
    assert_eq!(inbound.tags, ["wedding-42", "guest-7"]);
    // Resend's webhook carries no text: an empty body (not the subject), so no RSVP.
    assert_eq!(inbound.body.as_deref(), Some(""));
    assert_eq!(inbound.rsvp, None);
}

fn twilio_signature(url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

async fn twilio_reply(port: u16, sid: &str, from: &str, body: &str) {
    let params = [
        ("MessageSid", sid),
        ("AccountSid", ACCOUNT),
        ("From", from),
        ("To", "+15005550006"),
        ("Body", body),
        ("NumMedia", "0"),
        ("SmsStatus", "received"),
    ];
    let sig = twilio_signature(&format!("{PUBLIC}/webhooks/twilio"), &params);
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let a = http::post(
        port,
        "/webhooks/twilio",
        &[
            ("x-twilio-signature", &sig),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        form,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_reply_reads_as_an_rsvp_with_the_invitations_id_and_tags() {
    let mock = MockProvider::start().await;
    mock.set_default(Reply::new(201, format!(r#"{{"sid":"SM00000000000000000000000000000001","status":"queued","account_sid":"{ACCOUNT}"}}"#)));
    let port = free_port();
    let daemon = Daemon::builder()
        .config(&format!(
            "[webhooks]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{PUBLIC}\"\n\n\
             [[providers]]\nname = \"twilio\"\nplugin = \"twilio\"\naccount_sid = \"{ACCOUNT}\"\n\
             auth_token = \"${{TWILIO_TEST_TOKEN}}\"\nfrom = \"+15005550006\"\nbase_url = \"{}\"\n\n\
             [routes]\nsms = [\"twilio\"]\n\n\
             [inbound.rsvp]\nbuiltin = [\"en\", \"es\", \"emoji\"]\n",
            mock.url()
        ))
        .env("TWILIO_TEST_TOKEN", TOKEN)
        .start()
        .await;
    let client = daemon.client().await;
    let mut invite = sms("+14155550100", "Join us on June 14? Reply YES or NO");
    invite.tags = vec!["rsvp".into(), "wedding-42".into()];
    let invite = client.send(invite).await.unwrap();
    events_until(&client, &invite.id, &["sent"], T).await;

    twilio_reply(
        port,
        "SM000000000000000000000000000000A1",
        "+14155550100",
        "Yes, 2 of us!",
    )
    .await;
    let e = first_event(&client, EventKind::Inbound, 0).await;
    assert_eq!(e.body.as_deref(), Some("Yes, 2 of us!"));
    assert_eq!(
        e.rsvp,
        Some(Rsvp {
            answer: RsvpAnswer::Yes,
            headcount: Some(2),
        })
    );
    assert_eq!(e.message_id.as_deref(), Some(invite.id.as_str()));
    assert_eq!(e.tags, ["rsvp", "wedding-42"]);

    // Spanish, from the table the host chose.
    twilio_reply(
        port,
        "SM000000000000000000000000000000A2",
        "+14155550100",
        "No puedo ir, lo siento",
    )
    .await;
    let e = first_event(&client, EventKind::Inbound, 1).await;
    assert_eq!(e.rsvp.map(|r| r.answer), Some(RsvpAnswer::No));
    // A reply that answers nothing carries the body only, never a guess.
    twilio_reply(
        port,
        "SM000000000000000000000000000000A3",
        "+14155550100",
        "What time does it start?",
    )
    .await;
    let e = first_event(&client, EventKind::Inbound, 2).await;
    assert_eq!(e.rsvp, None);
    assert_eq!(e.body.as_deref(), Some("What time does it start?"));
    // A reload with a table that does not build is refused, naming the key; the running
    // table stays.
    let good = std::fs::read_to_string(&daemon.config_path).unwrap();
    std::fs::write(
        &daemon.config_path,
        good.replace(
            r#"builtin = ["en", "es", "emoji"]"#,
            r#"builtin = ["klingon"]"#,
        ),
    )
    .unwrap();
    match client.reload().await {
        Err(herald_client::ClientError::Server(e)) => {
            assert_eq!(e.code, herald_protocol::ErrorCode::ConfigRejected);
            assert!(e.message.contains("inbound.rsvp.builtin"), "{e}");
        }
        r => panic!("expected a refusal, got {r:?}"),
    }
    twilio_reply(
        port,
        "SM000000000000000000000000000000A5",
        "+14155550100",
        "yes 3",
    )
    .await;
    let e = first_event(&client, EventKind::Inbound, 3).await;
    assert_eq!(
        e.rsvp,
        Some(Rsvp {
            answer: RsvpAnswer::Yes,
            headcount: Some(3),
        })
    );
    // A good one applies to the next reply: emoji only, so English reads as nothing.
    std::fs::write(
        &daemon.config_path,
        good.replace(
            r#"builtin = ["en", "es", "emoji"]"#,
            r#"builtin = ["emoji"]"#,
        ),
    )
    .unwrap();
    client.reload().await.unwrap();
    twilio_reply(
        port,
        "SM000000000000000000000000000000A6",
        "+14155550100",
        "yes",
    )
    .await;
    let e = first_event(&client, EventKind::Inbound, 4).await;
    assert_eq!(e.rsvp, None);
    // A STOP is an opt-out, never an answer, and it suppresses the number.
    twilio_reply(
        port,
        "SM000000000000000000000000000000A4",
        "+14155550100",
        "STOP",
    )
    .await;
    let e = first_event(&client, EventKind::Inbound, 5).await;
    assert_eq!(e.rsvp, None);
    assert!(
        e.detail.as_deref().unwrap_or("").starts_with("opt-out"),
        "{e:?}"
    );
    let later = client
        .send(sms("+14155550100", "Table plan attached"))
        .await
        .unwrap();
    events_until(&client, &later.id, &["suppressed"], T).await;
    assert_eq!(mock.count(), 1, "nothing more went to Twilio");
}

/// An older heraldd's data dir (suppressions keyed by the raw recipient, lower-cased) is
/// keyed again at start; starts SIGKILLed at different moments of that never leave it
/// wrong, and the start that finishes makes every spelling of a suppressed guest refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_data_dir_is_keyed_again_even_when_a_start_is_killed() {
    use herald_daemon::store::{Legacy, SledStore, Store};
    use herald_plugin_api::Channel;
    let mock = MockProvider::start().await;
    let mut daemon = Daemon::builder().webhook_provider(&mock).start().await;
    assert!(daemon.terminate(), "graceful stop:\n{}", daemon.log());
    let dir = daemon.data_dir.join("db");
    {
        let store = SledStore::open_when_unlocked(&dir, 16 << 20).unwrap();
        // Enough entries for several re-keying transactions.
        for i in 0..3_000 {
            store
                .plant_legacy(&Legacy::Suppressed {
                    channel: Channel::Email,
                    to: format!("Guest {i} <Guest{i}@Example.com>"),
                    reason: "hard bounce".into(),
                })
                .unwrap();
        }
        store
            .plant_legacy(&Legacy::Suppressed {
                channel: Channel::Sms,
                to: "+1 (415) 555-0100".into(),
                reason: "opted out".into(),
            })
            .unwrap();
        store.flush().unwrap();
    }
    SledStore::wait_unlocked(&dir).expect("the store lock is released");
    for delay_ms in [30, 80, 150, 300] {
        daemon.spawn();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        daemon.kill();
        SledStore::wait_unlocked(&dir).expect("the store lock is released");
    }
    daemon.spawn();
    daemon.wait_ready().await;
    let client = daemon.client().await;
    for (i, to) in [
        "guest0@example.com",
        "GUEST1234@EXAMPLE.COM",
        "\"Guest 2999\" <guest2999@example.com>",
    ]
    .into_iter()
    .enumerate()
    {
        let ack = client.send(email(to, "Reminder")).await.unwrap();
        events_until(&client, &ack.id, &["suppressed"], T).await;
        assert_eq!(
            client.get(&ack.id).await.unwrap().state,
            State::Suppressed,
            "{i}: {to}"
        );
    }
    let ack = client.send(sms("+14155550100", "hi")).await.unwrap();
    events_until(&client, &ack.id, &["suppressed"], T).await;
    // Someone never suppressed still goes out.
    let ack = client
        .send(email("guest3000@example.com", "Welcome"))
        .await
        .unwrap();
    events_until(&client, &ack.id, &["sent"], T).await;
    assert_eq!(mock.count(), 1);
}
