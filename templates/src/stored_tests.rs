#![allow(clippy::unwrap_used)]

use super::*;
use herald_plugin_api::{EmailContent, SmsContent};
use serde_json::json;

const WELCOME: &str = r#"tags = ["welcome", "plan:{{ plan }}"]

[email]
subject = "Welcome, {{ user.name }}"
text = """
Hi {{ user.name }},
your plan is {{ plan }}.
"""
html = "<p>Hi {{ user.name }}</p>"

[sms]
body = "Hi {{ user.name }}, welcome"
"#;

fn vars(v: serde_json::Value) -> BTreeMap<String, Value> {
    serde_json::from_value(v).unwrap()
}

fn email() -> Content {
    Content::Email(EmailContent::default())
}

#[test]
fn a_template_fills_the_content_of_the_sends_channel_and_adds_its_tags() {
    let t = StoredTemplate::parse("welcome", WELCOME).unwrap();
    let mut c = email();
    let v = vars(json!({"user": {"name": "Ann <b>"}, "plan": "pro"}));
    let tags = t.apply(&mut c, &v).unwrap();
    assert_eq!(tags, ["welcome", "plan:pro"]);
    let Content::Email(e) = c else { panic!() };
    assert_eq!(e.subject, "Welcome, Ann <b>");
    assert_eq!(e.text.as_deref(), Some("Hi Ann <b>,\nyour plan is pro."));
    assert_eq!(e.html.as_deref(), Some("<p>Hi Ann &lt;b&gt;</p>"));
    assert_eq!(e.from, None);
    let mut c = Content::Sms(SmsContent {
        from: Some("Herald".into()),
        ..Default::default()
    });
    t.apply(&mut c, &v).unwrap();
    let Content::Sms(s) = c else { panic!() };
    assert_eq!(s.body, "Hi Ann <b>, welcome");
    assert_eq!(
        s.from.as_deref(),
        Some("Herald"),
        "the caller's from is kept"
    );
}

#[test]
fn a_missing_variable_is_named_by_its_path() {
    let t = StoredTemplate::parse("welcome", WELCOME).unwrap();
    let err = t
        .apply(&mut email(), &vars(json!({"plan": "pro"})))
        .unwrap_err();
    assert_eq!(err.field, "vars.user.name", "{err}");
    let err = t
        .apply(&mut email(), &vars(json!({"plan": "pro", "user": {}})))
        .unwrap_err();
    assert_eq!(err.field, "vars.user.name", "{err}");
    let err = t
        .apply(&mut email(), &vars(json!({"user": {"name": "A"}})))
        .unwrap_err();
    assert_eq!(err.field, "vars.plan", "{err}");
}

#[test]
fn a_field_set_by_both_the_send_and_the_template_is_an_error() {
    let t = StoredTemplate::parse("welcome", WELCOME).unwrap();
    let v = vars(json!({"user": {"name": "A"}, "plan": "p"}));
    let mut c = Content::Email(EmailContent {
        subject: "mine".into(),
        ..Default::default()
    });
    assert_eq!(
        t.apply(&mut c, &v).unwrap_err().field,
        "content.email.subject"
    );
    let mut c = Content::Sms(SmsContent {
        body: "mine".into(),
        ..Default::default()
    });
    assert_eq!(t.apply(&mut c, &v).unwrap_err().field, "content.sms.body");
    let only_sms = StoredTemplate::parse("code", "[sms]\nbody = \"{{ code }}\"\n").unwrap();
    let err = only_sms.apply(&mut email(), &v).unwrap_err();
    assert_eq!(err.field, "template");
    assert!(err.reason.contains("no [email] section"), "{err}");
}

#[test]
fn syntax_errors_name_line_and_column_in_the_file() {
    // Single-line value: the column counts from the start of the line.
    let e = StoredTemplate::parse("a", "[sms]\nbody = \"Hi {{ name }\"\n").unwrap_err();
    assert_eq!(
        (e.line, e.file.display().to_string().as_str()),
        (Some(2), "a.toml"),
        "{e}"
    );
    let col = e.column.unwrap();
    assert!((11..=22).contains(&col), "{e}");
    assert!(e.to_string().starts_with("a.toml:2:"), "{e}");
    assert!(e.reason.starts_with("sms.body: "), "{e}");
    // Multi-line value: the line inside the string is added.
    let src = "[email]\nsubject = \"ok\"\ntext = \"\"\"\nline one\nline {% if x %} two\n\"\"\"\n";
    let e = StoredTemplate::parse("b", src).unwrap_err();
    assert!(e.reason.starts_with("email.text: "), "{e}");
    assert!(matches!(e.line, Some(5) | Some(6)), "{e}");
    // TOML errors carry the position too.
    let e = StoredTemplate::parse("c", "[sms]\nbody = \n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.column.is_some(), "{e}");
    // Bulk-only keys are refused with the reason.
    let e = StoredTemplate::parse("d", "key = \"id\"\n[sms]\nbody = \"x\"\n").unwrap_err();
    assert_eq!(e.line, Some(1), "{e}");
    assert!(e.reason.contains("unknown field `key`"), "{e}");
    let e = StoredTemplate::parse("e", "tags = []\n").unwrap_err();
    assert!(e.reason.contains("[email]"), "{e}");
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("herald-templates-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_folder_loads_every_toml_file_by_stem_and_names_the_bad_one() {
    let d = dir("load");
    std::fs::write(d.join("welcome.toml"), WELCOME).unwrap();
    std::fs::write(d.join("notes.txt"), "not a template").unwrap();
    std::fs::write(d.join(".hidden.toml"), "junk").unwrap();
    std::fs::create_dir(d.join("old.toml")).unwrap();
    let set = StoredTemplates::load(&d).unwrap();
    assert_eq!(set.names().collect::<Vec<_>>(), ["welcome"]);
    assert_eq!(set.get("welcome").unwrap().name(), "welcome");

    std::fs::write(d.join("reset.toml"), "[sms]\nbody = \"{% if %}\"\n").unwrap();
    let e = StoredTemplates::load(&d).unwrap_err();
    assert_eq!(e.file, d.join("reset.toml"));
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.column.is_some(), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2:", d.join("reset.toml").display())),
        "{e}"
    );

    std::fs::write(d.join("reset.toml"), "x".repeat(MAX_FILE_SIZE as usize + 1)).unwrap();
    let e = StoredTemplates::load(&d).unwrap_err();
    assert!(e.reason.contains("larger than"), "{e}");
    std::fs::remove_file(d.join("reset.toml")).unwrap();

    std::fs::write(d.join("bad name.toml"), WELCOME).unwrap();
    let e = StoredTemplates::load(&d).unwrap_err();
    assert!(e.reason.contains("file stem"), "{e}");
    std::fs::remove_file(d.join("bad name.toml")).unwrap();

    let e = StoredTemplates::load(&d.join("absent")).unwrap_err();
    assert!(e.reason.contains("cannot read the templates folder"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn too_many_files_is_a_clear_error() {
    let d = dir("many");
    for i in 0..=MAX_FILES {
        std::fs::write(d.join(format!("t{i}.toml")), "[sms]\nbody = \"x\"\n").unwrap();
    }
    let e = StoredTemplates::load(&d).unwrap_err();
    assert!(e.reason.contains(&format!("more than {MAX_FILES}")), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_missing_variable_named_is_the_one_that_failed_not_an_optional_one() {
    let t = StoredTemplate::parse(
        "opt",
        "[sms]\nbody = \"{% if a is defined %}{{ a }}{% endif %}{{ b }}\"\n",
    )
    .unwrap();
    let mut c = Content::Sms(SmsContent::default());
    let err = t.apply(&mut c, &vars(json!({}))).unwrap_err();
    assert_eq!(err.field, "vars.b", "{err}");
    let mut c = Content::Sms(SmsContent::default());
    t.apply(&mut c, &vars(json!({"b": 1}))).unwrap();
    let Content::Sms(s) = c else { panic!() };
    assert_eq!(s.body, "1");
}
