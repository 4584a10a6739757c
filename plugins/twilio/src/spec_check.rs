//! Test-only: holds the forms this plugin builds to the vendored Twilio OpenAPI spec
//! (`specs/twilio/twilio_api_v2010.json`, operation `CreateMessage`).
//!
//! A hand check rather than the `jsonschema` crate, for two reasons: the body is a form, so
//! every value arrives as a string and a JSON Schema validator would need the form coerced
//! to typed JSON first (integers, booleans, arrays from repeated keys), which is most of the
//! work; and the spec's `x-twilio.conditional` sender/content groups are not JSON Schema at
//! all. The check covers: every key is a property of the schema, `required` keys are present,
//! only array properties repeat, values match `pattern`, `minLength`/`maxLength`, `enum`
//! (through `$ref`), `type` (integer, number, boolean) and `format: uri`, and each
//! conditional group has a member.

use serde_json::Value;

use crate::request::{build, form_fields, messages_url};

const SPEC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../specs/twilio/twilio_api_v2010.json"
);
const PATH: &str = "/2010-04-01/Accounts/{AccountSid}/Messages.json";

struct Operation {
    spec: Value,
    post: Value,
}

impl Operation {
    fn load() -> Operation {
        let text = std::fs::read_to_string(SPEC).expect("the vendored Twilio spec");
        let spec: Value = serde_json::from_str(&text).expect("valid JSON");
        let post = spec["paths"][PATH]["post"].clone();
        assert_eq!(post["operationId"], "CreateMessage");
        Operation { spec, post }
    }

    fn form_schema(&self) -> &Value {
        let schema =
            &self.post["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"];
        assert!(
            schema["properties"].is_object(),
            "no form schema in the spec"
        );
        schema
    }

    /// Follows a local `$ref` (`#/components/schemas/...`).
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => {
                let pointer = r.strip_prefix('#').expect("a local $ref");
                self.spec.pointer(pointer).expect("a resolvable $ref")
            }
            None => schema,
        }
    }

    /// Every way `form` breaks the CreateMessage form schema.
    fn violations(&self, form: &[(String, String)]) -> Vec<String> {
        let schema = self.form_schema();
        let props = schema["properties"].as_object().expect("properties");
        let mut out = Vec::new();
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !form.iter().any(|(k, _)| k == name) {
                out.push(format!("required key {name} is missing"));
            }
        }
        for (i, (key, value)) in form.iter().enumerate() {
            let Some(prop) = props.get(key) else {
                out.push(format!("{key} is not a property of CreateMessageRequest"));
                continue;
            };
            let prop = self.resolve(prop);
            let repeated = form[..i].iter().any(|(k, _)| k == key);
            let item = if prop["type"] == "array" {
                self.resolve(&prop["items"])
            } else {
                if repeated {
                    out.push(format!("{key} is repeated but is not an array"));
                }
                prop
            };
            if let Some(problem) = check_value(item, value) {
                out.push(format!("{key}={value:?}: {problem}"));
            }
        }
        // x-twilio.conditional: each group (snake_case names) needs at least one member.
        for group in self.post["x-twilio"]["conditional"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let names: Vec<String> = group
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(pascal_case)
                .collect();
            if !form.iter().any(|(k, _)| names.contains(k)) {
                out.push(format!("none of {names:?} is present"));
            }
        }
        out
    }

    fn account_sid_pattern(&self) -> String {
        let params = self.post["parameters"].as_array().expect("parameters");
        let sid = params
            .iter()
            .find(|p| p["name"] == "AccountSid" && p["in"] == "path")
            .expect("AccountSid path parameter");
        sid["schema"]["pattern"]
            .as_str()
            .expect("pattern")
            .to_string()
    }
}

fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn check_value(schema: &Value, value: &str) -> Option<String> {
    if let Some(pattern) = schema["pattern"].as_str() {
        let re = regex_lite::Regex::new(pattern).expect("a valid pattern");
        if !re.is_match(value) {
            return Some(format!("does not match {pattern}"));
        }
    }
    let len = value.chars().count() as u64;
    if schema["minLength"].as_u64().is_some_and(|min| len < min)
        || schema["maxLength"].as_u64().is_some_and(|max| len > max)
    {
        return Some("length out of bounds".into());
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.iter().any(|o| o == value)
    {
        return Some(format!("not one of {options:?}"));
    }
    let typed = match schema["type"].as_str() {
        Some("integer") => value.parse::<i64>().is_ok(),
        Some("number") => value.parse::<f64>().is_ok(),
        Some("boolean") => value == "true" || value == "false",
        _ => true,
    };
    if !typed {
        return Some(format!("not a {}", schema["type"]));
    }
    if schema["format"] == "uri" && !(value.starts_with("https://") || value.starts_with("http://"))
    {
        return Some("not an absolute http(s) URI".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{ACCOUNT, API_KEY, SERVICE, TOKEN, WEBHOOK_URL};
    use crate::request::tests::{config, sms};
    use herald_plugin_api::Content;
    use serde_json::json;

    fn form_of(
        settings: Value,
        webhook_url: Option<&str>,
        media: &[&str],
        body: &str,
    ) -> Vec<(String, String)> {
        let c = config(settings, webhook_url);
        let m = sms("01HZX", "+15550001111", body, media);
        // The request body, decoded: exactly what goes on the wire.
        let r = build(&c, &m).unwrap();
        let decoded: Vec<(String, String)> = form_urlencoded::parse(r.body.as_bytes())
            .into_owned()
            .collect();
        let Content::Sms(s) = &m.content else {
            unreachable!()
        };
        let fields: Vec<(String, String)> = form_fields(&c, &m, s)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(decoded, fields);
        decoded
    }

    #[test]
    fn built_forms_conform_to_create_message() {
        let op = Operation::load();
        let cases = [
            // From only.
            form_of(
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100"}),
                None,
                &[],
                "Hello",
            ),
            // Messaging Service, status callback, validity period.
            form_of(
                json!({"account_sid": ACCOUNT, "api_key_sid": API_KEY, "api_key_secret": "s",
                       "webhook_auth_token": TOKEN, "messaging_service_sid": SERVICE,
                       "validity_period": 3600}),
                Some(WEBHOOK_URL),
                &[],
                "Hello",
            ),
            // Media, with and without a body.
            form_of(
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100"}),
                Some(WEBHOOK_URL),
                &[
                    "https://cdn.example.com/a.jpg",
                    "https://cdn.example.com/b.png",
                ],
                "Photos",
            ),
            form_of(
                json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "Herald"}),
                None,
                &["https://cdn.example.com/a.jpg"],
                "",
            ),
        ];
        for form in &cases {
            assert_eq!(op.violations(form), Vec::<String>::new(), "{form:?}");
            assert!(form.iter().any(|(k, _)| k == "To"));
        }
        assert!(cases[1].iter().any(|(k, _)| k == "StatusCallback"));
        assert_eq!(cases[2].iter().filter(|(k, _)| k == "MediaUrl").count(), 2);
    }

    #[test]
    fn url_matches_the_spec_path() {
        let op = Operation::load();
        let c = config(
            json!({"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100"}),
            None,
        );
        let url = messages_url(&c);
        let path = PATH.replace("{AccountSid}", ACCOUNT);
        assert_eq!(url, format!("https://api.twilio.com{path}"));
        let re = regex_lite::Regex::new(&op.account_sid_pattern()).unwrap();
        assert!(re.is_match(&c.account_sid));
    }

    #[test]
    fn the_check_catches_mistakes() {
        let op = Operation::load();
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ok = [
            ("To", "+15550001111"),
            ("From", "+14155550100"),
            ("Body", "Hi"),
        ];
        assert!(op.violations(&pairs(&ok)).is_empty());
        let misspelt = [
            ("To", "+15550001111"),
            ("From", "+14155550100"),
            ("Body", "Hi"),
            ("Statuscallback", WEBHOOK_URL),
        ];
        assert_eq!(
            op.violations(&pairs(&misspelt)),
            ["Statuscallback is not a property of CreateMessageRequest"]
        );
        let bad_service = [
            ("To", "+15550001111"),
            ("MessagingServiceSid", "MG123"),
            ("Body", "Hi"),
        ];
        assert!(op.violations(&pairs(&bad_service))[0].contains("^MG[0-9a-fA-F]{32}$"));
        let no_to = [("From", "+14155550100"), ("Body", "Hi")];
        assert_eq!(
            op.violations(&pairs(&no_to)),
            ["required key To is missing"]
        );
        let no_sender = [("To", "+15550001111"), ("Body", "Hi")];
        assert!(op.violations(&pairs(&no_sender))[0].contains("none of [\"From\""));
        let no_content = [("To", "+15550001111"), ("From", "+14155550100")];
        assert!(op.violations(&pairs(&no_content))[0].contains("\"Body\""));
        let bad_types = [
            ("To", "+15550001111"),
            ("From", "+14155550100"),
            ("Body", "Hi"),
            ("Body", "again"),
            ("ValidityPeriod", "10m"),
            ("StatusCallback", "hooks.example.com"),
        ];
        assert_eq!(op.violations(&pairs(&bad_types)).len(), 3);
    }
}
