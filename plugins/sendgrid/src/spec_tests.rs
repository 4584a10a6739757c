//! Spec conformance: the JSON bodies this plugin builds are validated against the request
//! schema of operation `SendMail` (request body `PostMailSend`) in the vendored
//! `specs/sendgrid/tsg_mail_v3.json`, with `$ref`s resolved against the document itself.
//!
//! The official schema allows unknown properties and requires no `subject`, so a misspelt
//! field (say `subjet`, or `reply-to`) would pass it. The check therefore also runs against
//! a strict copy in which every object schema that lists `properties` gets
//! `additionalProperties: false` (`herald_plugin_kit::spec` builds both): the plugin may
//! only send fields the spec documents.

use herald_plugin_api::{Message, Provider};
use herald_plugin_kit::spec::{Mutation, RequestSchema};
use herald_plugin_kit::testing::http_call;
use serde_json::{Value, json};

use crate::test_support::{
    API_KEY, attachment_message, delivery, email_message, full_message, html_message,
    reply_to_message, sendgrid, tagged_message,
};

const SPEC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../specs/sendgrid/tsg_mail_v3.json"
);
const OPERATION: &str = "SendMail";

fn body_for(message: Message) -> Value {
    body_with(message, false)
}

fn body_with(message: Message, sandbox: bool) -> Value {
    let p = sendgrid(
        json!({"api_key": API_KEY, "from": "RSVP <rsvp@example.com>",
                            "sandbox": sandbox}),
    );
    let r = http_call(p.begin(&delivery(message)));
    serde_json::from_str(&r.body).expect("body is JSON")
}

fn samples() -> Vec<(&'static str, Value)> {
    vec![
        ("text only", body_for(email_message())),
        ("html + text", body_for(html_message())),
        ("attachments", body_for(attachment_message())),
        ("reply_to", body_for(reply_to_message())),
        ("tags", body_for(tagged_message())),
        ("every field", body_for(full_message())),
        ("sandbox", body_with(full_message(), true)),
    ]
}

#[test]
fn bodies_match_post_mail_send() {
    let schema = RequestSchema::load(SPEC, OPERATION);
    for (name, body) in samples() {
        schema.assert_valid(name, &body);
    }
}

/// The check has teeth: bodies that drift from the spec fail it.
#[test]
fn drifted_bodies_fail() {
    let schema = RequestSchema::load(SPEC, OPERATION);
    let good = body_for(full_message());
    // Caught by the official schema already.
    let official_catches: Vec<Mutation> = vec![
        ("personalizations missing", |b| {
            b.as_object_mut().unwrap().remove("personalizations");
        }),
        ("to as a string", |b| {
            b["personalizations"][0]["to"] = json!("guest@example.org");
        }),
        ("to as an object", |b| {
            b["personalizations"][0]["to"] = json!({"email": "guest@example.org"});
        }),
        ("from as a string", |b| {
            b["from"] = json!("rsvp@example.com")
        }),
        ("from not an address", |b| {
            b["from"]["email"] = json!("not an address")
        }),
        ("empty content value", |b| {
            b["content"][0]["value"] = json!("")
        }),
        ("attachment without filename", |b| {
            b["attachments"][0]
                .as_object_mut()
                .unwrap()
                .remove("filename");
        }),
        ("bad disposition", |b| {
            b["attachments"][0]["disposition"] = json!("download")
        }),
        ("custom_args as a string", |b| {
            b["personalizations"][0]["custom_args"] = json!("01HZY8N3W4Q6K2M5P7R9T1V3X5");
        }),
        ("sandbox flag as a string", |b| {
            b["mail_settings"] = json!({"sandbox_mode": {"enable": "yes"}});
        }),
    ];
    schema.assert_caught(&good, &official_catches);
    // Only the strict copy catches a renamed or misspelt field.
    let renamed: Vec<Mutation> = vec![
        ("subject renamed", |b| {
            let s = b["subject"].take();
            b.as_object_mut().unwrap().remove("subject");
            b["subjet"] = s;
        }),
        ("reply_to renamed", |b| {
            let s = b["reply_to"].take();
            b.as_object_mut().unwrap().remove("reply_to");
            b["reply-to"] = s;
        }),
        ("content type renamed", |b| {
            let t = b["content"][0]["type"].clone();
            b["content"][0]["mime"] = t;
        }),
    ];
    schema.assert_caught_only_by_strict(&good, &renamed);
}

/// A batch: one Mail Send with one personalization per message, against the same schema.
fn batch_body(messages: Vec<Message>) -> Value {
    let p = sendgrid(json!({"api_key": API_KEY, "from": "RSVP <rsvp@example.com>"}));
    let deliveries: Vec<_> = messages.into_iter().map(delivery).collect();
    let r = http_call(p.begin_batch(&deliveries));
    serde_json::from_str(&r.body).expect("body is JSON")
}

fn guests(base: Message, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let mut m = base.clone();
            m.id = format!("01HZY8N3W4Q6K2M5P7R9T1V3X{i}");
            m.to = format!("Guest {i} <guest{i}@example.org>");
            m
        })
        .collect()
}

#[test]
fn batch_bodies_match_post_mail_send() {
    let schema = RequestSchema::load(SPEC, OPERATION);
    let body = batch_body(guests(full_message(), 3));
    let ps = body["personalizations"].as_array().unwrap();
    assert_eq!(ps.len(), 3);
    assert_eq!(ps[2]["to"][0]["email"], "guest2@example.org");
    assert_eq!(
        ps[2]["custom_args"]["herald_id"],
        "01HZY8N3W4Q6K2M5P7R9T1V3X2"
    );
    schema.assert_valid("batch of three, every field", &body);
    schema.assert_valid("batch of two", &batch_body(guests(email_message(), 2)));
    // The schema's limit is the plugin's.
    let mut over = batch_body(guests(email_message(), 2));
    let p = over["personalizations"][0].clone();
    over["personalizations"] = Value::Array(vec![p; 1001]);
    assert!(!schema.errors(&over).is_empty(), "1,001 personalizations");
}

/// Only messages that differ in nothing but recipient and id share a key.
#[test]
fn batch_keys_group_identical_content_only() {
    let p = sendgrid(json!({"api_key": API_KEY, "from": "RSVP <rsvp@example.com>"}));
    let g = guests(full_message(), 2);
    let key = p.batch_key(&g[0]);
    assert!(key.is_some());
    assert_eq!(key, p.batch_key(&g[1]));
    assert_ne!(key, p.batch_key(&email_message()));
    let mut other_subject = g[1].clone();
    if let herald_plugin_api::Content::Email(e) = &mut other_subject.content {
        e.subject.push('!');
    }
    assert_ne!(key, p.batch_key(&other_subject));
    // A message that cannot be sent at all goes alone, to fail with its reason.
    let bare = sendgrid(json!({"api_key": API_KEY}));
    assert_eq!(bare.batch_key(&email_message()), None);
    // Different messages in one batch are refused, not merged.
    let step = p.begin_batch(&[delivery(g[0].clone()), delivery(other_subject)]);
    assert!(
        matches!(
            step,
            herald_plugin_api::Step::Done {
                outcome: herald_plugin_api::Outcome::ProviderFailure { .. }
            }
        ),
        "{step:?}"
    );
}
