//! Spec conformance of request bodies (feature `spec`, for tests only): the JSON
//! request-body schema of one operation of a vendored OpenAPI document, compiled with
//! `jsonschema`, with `$ref`s resolved against the document itself.
//!
//! Official schemas usually allow unknown properties, so a misspelt *optional* field (say
//! `reply-to`) would pass them. A [`RequestSchema`] therefore also holds a strict copy in
//! which every object schema that lists `properties` (and says nothing of additional ones)
//! gets `additionalProperties: false`: a plugin may only send fields the spec documents.
//! [`RequestSchema::assert_valid`] checks both; the separate error lists let a test show
//! that a drifted body fails (the check has teeth).

use serde_json::Value;

/// A named change that makes a good body drift from the spec.
pub type Mutation = (&'static str, fn(&mut Value));

/// The request-body schema of one operation, official and strict.
#[derive(Debug)]
pub struct RequestSchema {
    official: jsonschema::Validator,
    strict: jsonschema::Validator,
}

impl RequestSchema {
    /// Loads the OpenAPI document at `path` (JSON when the name ends in `.json`, else YAML)
    /// and compiles the JSON request-body schema of `operation_id`. Panics when the file,
    /// the operation or its schema is missing, or the schema does not compile.
    pub fn load(path: &str, operation_id: &str) -> RequestSchema {
        let doc = load_document(path);
        RequestSchema {
            official: validator(doc.clone(), operation_id, false),
            strict: validator(doc, operation_id, true),
        }
    }

    /// How `body` breaks the official schema (empty: it conforms).
    pub fn errors(&self, body: &Value) -> Vec<String> {
        errors(&self.official, body)
    }

    /// How `body` breaks the strict copy (empty: it conforms).
    pub fn strict_errors(&self, body: &Value) -> Vec<String> {
        errors(&self.strict, body)
    }

    /// Panics, naming the sample, unless `body` conforms to both schemas.
    pub fn assert_valid(&self, name: &str, body: &Value) {
        assert_eq!(self.errors(body), Vec::<String>::new(), "{name}: {body}");
        assert_eq!(
            self.strict_errors(body),
            Vec::<String>::new(),
            "{name} (strict): {body}"
        );
    }

    /// The check has teeth: panics unless every mutation of `good` breaks the official
    /// schema and the strict copy.
    pub fn assert_caught(&self, good: &Value, mutations: &[Mutation]) {
        self.assert_mutations(good, mutations, true);
    }

    /// Panics unless every mutation of `good` (a renamed or misspelt field) passes the
    /// official schema but breaks the strict copy: what the strict copy is for.
    pub fn assert_caught_only_by_strict(&self, good: &Value, mutations: &[Mutation]) {
        self.assert_mutations(good, mutations, false);
    }

    fn assert_mutations(&self, good: &Value, mutations: &[Mutation], official_catches: bool) {
        for (name, mutate) in mutations {
            let mut bad = good.clone();
            mutate(&mut bad);
            let caught = !self.errors(&bad).is_empty();
            assert_eq!(
                caught,
                official_catches,
                "official schema {}: {name}",
                if caught { "rejected" } else { "accepted" }
            );
            assert!(
                !self.strict_errors(&bad).is_empty(),
                "strict schema accepted: {name}"
            );
        }
    }
}

fn load_document(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    if path.ends_with(".json") {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    } else {
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
}

fn errors(v: &jsonschema::Validator, body: &Value) -> Vec<String> {
    v.iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The JSON pointer (as a `#/...` reference) of `operation_id`'s JSON request-body schema,
/// following a `$ref`'d request body.
pub fn request_schema_ref(doc: &Value, operation_id: &str) -> String {
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
pub fn tighten(v: &mut Value) {
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
fn validator(mut doc: Value, operation_id: &str, strict: bool) -> jsonschema::Validator {
    let reference = request_schema_ref(&doc, operation_id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small OpenAPI document: the body schema behind a `$ref`'d request body, an
    /// optional field, a component reference.
    fn doc() -> Value {
        json!({
            "openapi": "3.1.0",
            "paths": {
                "/v1/send/{id}": {
                    "post": {
                        "operationId": "Send",
                        "requestBody": {"$ref": "#/components/requestBodies/SendBody"}
                    },
                    "get": {"operationId": "Get"}
                }
            },
            "components": {
                "requestBodies": {
                    "SendBody": {"content": {"application/json": {"schema":
                        {"$ref": "#/components/schemas/Send"}}}}
                },
                "schemas": {
                    "Send": {
                        "type": "object",
                        "required": ["to"],
                        "properties": {
                            "to": {"$ref": "#/components/schemas/Address"},
                            "note": {"type": "string"}
                        }
                    },
                    "Address": {"type": "string", "format": "email"},
                    "Open": {"type": "object", "properties": {}, "additionalProperties": true}
                }
            }
        })
    }

    fn schema() -> RequestSchema {
        RequestSchema {
            official: validator(doc(), "Send", false),
            strict: validator(doc(), "Send", true),
        }
    }

    #[test]
    fn finds_the_body_schema_of_an_operation() {
        assert_eq!(
            request_schema_ref(&doc(), "Send"),
            "#/components/requestBodies/SendBody/content/application~1json/schema"
        );
        let mut inline = doc();
        inline["paths"]["/v1/send/{id}"]["post"]["requestBody"] =
            json!({"content": {"application/json": {"schema": {"type": "object"}}}});
        assert_eq!(
            request_schema_ref(&inline, "Send"),
            "#/paths/~1v1~1send~1{id}/post/requestBody/content/application~1json/schema"
        );
    }

    #[test]
    #[should_panic(expected = "operation Nope not in the spec")]
    fn a_missing_operation_panics() {
        request_schema_ref(&doc(), "Nope");
    }

    #[test]
    fn strict_copy_refuses_undocumented_fields_only() {
        let s = schema();
        s.assert_valid("good", &json!({"to": "a@example.com", "note": "hi"}));
        // Caught by both: a missing required field, a bad format.
        for bad in [json!({"note": "hi"}), json!({"to": "not an address"})] {
            assert!(!s.errors(&bad).is_empty(), "{bad}");
            assert!(!s.strict_errors(&bad).is_empty(), "{bad}");
        }
        // Only the strict copy catches a misspelt optional field.
        let misspelt = json!({"to": "a@example.com", "note_": "hi"});
        assert!(s.errors(&misspelt).is_empty());
        assert!(!s.strict_errors(&misspelt).is_empty());
    }

    #[test]
    fn mutation_checks() {
        let s = schema();
        let good = json!({"to": "a@example.com", "note": "hi"});
        s.assert_caught(&good, &[("to not a string", |b| b["to"] = json!(null))]);
        s.assert_caught_only_by_strict(&good, &[("note misspelt", |b| b["note_"] = json!("x"))]);
    }

    #[test]
    #[should_panic(expected = "official schema accepted: harmless")]
    fn a_mutation_nothing_catches_fails_the_check() {
        let good = json!({"to": "a@example.com"});
        schema().assert_caught(&good, &[("harmless", |b| b["note"] = json!("x"))]);
    }

    #[test]
    #[should_panic(expected = "official schema rejected: not a rename")]
    fn a_mutation_the_official_schema_catches_is_no_rename() {
        let good = json!({"to": "a@example.com"});
        schema().assert_caught_only_by_strict(&good, &[("not a rename", |b| b["to"] = json!(1))]);
    }

    #[test]
    fn tighten_leaves_explicit_choices_alone() {
        let mut d = doc();
        tighten(&mut d);
        let schemas = &d["components"]["schemas"];
        assert_eq!(schemas["Send"]["additionalProperties"], json!(false));
        assert_eq!(schemas["Open"]["additionalProperties"], json!(true));
        assert_eq!(schemas["Address"].get("additionalProperties"), None);
    }

    #[test]
    fn loads_json_and_yaml_documents() {
        let dir = std::env::temp_dir().join(format!("herald-kit-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json_path = dir.join("spec.json");
        std::fs::write(&json_path, doc().to_string()).unwrap();
        let yaml_path = dir.join("spec.yaml");
        // JSON is YAML: the YAML path goes through the YAML parser.
        std::fs::write(&yaml_path, serde_json::to_string_pretty(&doc()).unwrap()).unwrap();
        for path in [&json_path, &yaml_path] {
            let s = RequestSchema::load(path.to_str().unwrap(), "Send");
            assert!(s.errors(&json!({"to": "a@example.com"})).is_empty());
            assert!(!s.errors(&json!({})).is_empty());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
