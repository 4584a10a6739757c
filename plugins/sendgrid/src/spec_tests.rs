//! Spec conformance: the JSON bodies this plugin builds are validated against the request
//! schema of operation `SendMail` (request body `PostMailSend`) in the vendored
//! `specs/sendgrid/tsg_mail_v3.json`, with `$ref`s resolved against the document itself.
//!
//! The official schema allows unknown properties and requires no `subject`, so a misspelt
//! field (say `subjet`, or `reply-to`) would pass it. The check therefore also runs against
//! a strict copy in which every object schema that lists `properties` gets
//! `additionalProperties: false`: the plugin may only send fields the spec documents.

use herald_plugin_api::{Message, Provider, Request, Step};
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

fn load_spec() -> Value {
    let text = std::fs::read_to_string(SPEC).unwrap_or_else(|e| panic!("{SPEC}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{SPEC}: {e}"))
}

/// The JSON pointer (as a `#/...` reference) of `operation_id`'s JSON request-body schema,
/// following a `$ref`'d request body.
fn request_schema_ref(doc: &Value, operation_id: &str) -> String {
    let escape = |s: &str| s.replace('~', "~0").replace('/', "~1");
    let paths = doc["paths"].as_object().expect("spec has paths");
    for (path, item) in paths {
        for (method, op) in item.as_object().into_iter().flatten() {
            if op.get("operationId").and_then(Value::as_str) != Some(operation_id) {
                continue;
            }
            let mut pointer = format!("/paths/{}/{method}/requestBody", escape(path));
            if let Some(r) = op["requestBody"].get("$ref").and_then(Value::as_str) {
                pointer = r.trim_start_matches('#').to_owned();
            }
            let schema = format!("{pointer}/content/application~1json/schema");
            assert!(
                doc.pointer(&schema).is_some(),
                "{operation_id}: no JSON body schema"
            );
            return format!("#{schema}");
        }
    }
    panic!("operation {operation_id} not in the spec")
}

/// Adds `additionalProperties: false` to every object schema with `properties` that does
/// not say otherwise.
fn tighten(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("properties").is_some_and(Value::is_object)
                && !map.contains_key("additionalProperties")
                && !map.contains_key("unevaluatedProperties")
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(tighten);
        }
        Value::Array(items) => items.iter_mut().for_each(tighten),
        _ => {}
    }
}

/// A validator for the operation's request body: the whole document is the root (so
/// `#/components/...` references resolve) with a `$ref` to the body schema.
fn validator(strict: bool) -> jsonschema::Validator {
    let mut doc = load_spec();
    let reference = request_schema_ref(&doc, OPERATION);
    if strict {
        tighten(&mut doc);
    }
    let Value::Object(root) = &mut doc else {
        panic!("spec is not an object")
    };
    root.insert("$ref".into(), Value::String(reference));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&doc)
        .unwrap_or_else(|e| panic!("spec schema does not compile: {e}"))
}

/// A named change that makes a good body drift from the spec.
type Mutation = (&'static str, fn(&mut Value));

fn errors(v: &jsonschema::Validator, body: &Value) -> Vec<String> {
    v.iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn body_for(message: Message) -> Value {
    body_with(message, false)
}

fn body_with(message: Message, sandbox: bool) -> Value {
    let p = sendgrid(
        json!({"api_key": API_KEY, "from": "RSVP <rsvp@example.com>",
                            "sandbox": sandbox}),
    );
    match p.begin(&delivery(message)) {
        Step::Call {
            request: Request::Http(r),
            ..
        } => serde_json::from_str(&r.body).expect("body is JSON"),
        other => panic!("expected an HTTP call, got {other:?}"),
    }
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
    let official = validator(false);
    let strict = validator(true);
    for (name, body) in samples() {
        assert_eq!(
            errors(&official, &body),
            Vec::<String>::new(),
            "{name}: {body}"
        );
        assert_eq!(
            errors(&strict, &body),
            Vec::<String>::new(),
            "{name} (strict): {body}"
        );
    }
}

/// The check has teeth: bodies that drift from the spec fail it.
#[test]
fn drifted_bodies_fail() {
    let official = validator(false);
    let strict = validator(true);
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
    for (name, mutate) in official_catches {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(
            !errors(&official, &bad).is_empty(),
            "official schema accepted: {name}"
        );
        assert!(
            !errors(&strict, &bad).is_empty(),
            "strict schema accepted: {name}"
        );
    }
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
    for (name, mutate) in renamed {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(
            errors(&official, &bad).is_empty(),
            "official schema rejected: {name}"
        );
        assert!(
            !errors(&strict, &bad).is_empty(),
            "strict schema accepted: {name}"
        );
    }
}
