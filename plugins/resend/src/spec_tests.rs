//! Spec conformance: the JSON bodies this plugin builds are validated against the request
//! schema of operation `emails/send` (`SendEmailRequest`) in the vendored
//! `specs/resend/resend.yaml`, with `$ref`s resolved against the document itself.
//!
//! The official schema allows unknown properties, so a misspelt *optional* field (say
//! `reply-to`) would pass it. The check therefore also runs against a strict copy in which
//! every object schema that lists `properties` gets `additionalProperties: false`
//! (`herald_plugin_kit::spec` builds both): the plugin may only send fields the spec
//! documents.

use herald_plugin_api::{Message, Provider};
use herald_plugin_kit::spec::{Mutation, RequestSchema};
use herald_plugin_kit::testing::http_call;
use serde_json::{Value, json};

use crate::test_support::{
    API_KEY, attachment_message, delivery, email_message, full_message, html_message,
    reply_to_message, resend, tagged_message,
};

const SPEC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../specs/resend/resend.yaml"
);
const OPERATION: &str = "emails/send";

fn body_for(message: Message) -> Value {
    let p = resend(json!({"api_key": API_KEY, "from": "RSVP <rsvp@example.com>"}));
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
    ]
}

#[test]
fn bodies_match_send_email_request() {
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
    let mutations: Vec<Mutation> = vec![
        ("subject renamed", |b| {
            let s = b["subject"].take();
            b.as_object_mut().unwrap().remove("subject");
            b["title"] = s;
        }),
        ("to as an object", |b| {
            b["to"] = json!({"email": "guest@example.org"})
        }),
        ("to as an empty list", |b| b["to"] = json!([])),
        ("tag as a string", |b| b["tags"] = json!(["herald_id"])),
        ("attachments as an object", |b| {
            b["attachments"] = json!({"a": 1})
        }),
        ("from missing", |b| {
            b.as_object_mut().unwrap().remove("from");
        }),
    ];
    schema.assert_caught(&good, &mutations);
    // Only the strict copy catches a misspelt optional field.
    schema.assert_caught_only_by_strict(
        &good,
        &[("reply_to misspelt", |b| {
            let reply_to = b["reply_to"].take();
            b.as_object_mut().unwrap().remove("reply_to");
            b["reply-to"] = reply_to;
        })],
    );
}

/// The batch body: an array of the same `SendEmailRequest`s, against operation
/// `emails/send-batch`.
const BATCH_OPERATION: &str = "emails/send-batch";

fn batch_body(messages: Vec<Message>) -> Value {
    let p = resend(json!({"api_key": API_KEY, "from": "RSVP <rsvp@example.com>"}));
    let deliveries: Vec<_> = messages.into_iter().map(delivery).collect();
    let r = http_call(p.begin_batch(&deliveries));
    assert!(r.url.ends_with("/emails/batch"), "{}", r.url);
    serde_json::from_str(&r.body).expect("body is JSON")
}

#[test]
fn batch_bodies_match_send_batch_request() {
    let schema = RequestSchema::load(SPEC, BATCH_OPERATION);
    let body = batch_body(vec![
        email_message(),
        html_message(),
        reply_to_message(),
        tagged_message(),
    ]);
    assert_eq!(body.as_array().map(Vec::len), Some(4));
    schema.assert_valid("batch of four", &body);
    let mut every = full_message();
    if let herald_plugin_api::Content::Email(e) = &mut every.content {
        e.attachments.clear();
    }
    schema.assert_valid("batch with every batchable field", &batch_body(vec![every]));
}

#[test]
fn drifted_batch_bodies_fail() {
    let schema = RequestSchema::load(SPEC, BATCH_OPERATION);
    let good = batch_body(vec![email_message(), tagged_message()]);
    let mutations: Vec<Mutation> = vec![
        ("an object instead of an array", |b| {
            b.take();
            *b = json!({"emails": []});
        }),
        ("an email without subject", |b| {
            b[1].as_object_mut().unwrap().remove("subject");
        }),
        ("to as an object", |b| {
            b[0]["to"] = json!({"email": "guest@example.org"})
        }),
    ];
    schema.assert_caught(&good, &mutations);
}
