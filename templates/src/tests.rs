#![allow(clippy::unwrap_used)]

use expect_test::{Expect, expect};

use super::*;

const INVITE: &str = r#"
campaign = "w42-invite"
channel = "email_else_sms"
key = "guest_id"
tags = ["rsvp", "wedding:{{ wedding }}"]

[email]
subject = "You're invited, {{ name }}"
text = "Dear {{ name }}, table {{ table }}. RSVP: https://w.example.org/r/{{ guest_id }}"
html = "<p>Dear {{ name }}</p>"

[sms]
body = "{{ name }}: you're invited! Table {{ table }}. Reply YES or NO"
"#;

const CSV: &str = "guest_id,name,email,phone,table,wedding
g1,Ann <b>,ann@example.org,,4,42
g2,Bo,,+14155550100,7,42
g3,Cy,,,1,42
g4,,dee@example.org,,2,42
g5,Ed,not-an-address,,3,42
g6,Flo,,+1415,3,42
g2,Bo again,,+14155550101,7,42
";

fn show(template: &Template, csv: &str, expect: Expect) {
    let rows = read_csv(csv.as_bytes()).unwrap();
    let (ok, bad) = render_all(template, &rows);
    let mut out = String::new();
    for r in &ok {
        out.push_str(&format!(
            "line {} key {} {}\n  {}\n",
            r.line,
            r.key,
            r.channel(),
            serde_json::to_string(&r.message).unwrap()
        ));
    }
    for e in &bad {
        out.push_str(&format!("{e}\n"));
    }
    expect.assert_eq(&out);
}

#[test]
fn rows_render_by_the_channel_rule_and_bad_rows_name_line_and_reason() {
    let t = Template::parse(INVITE, None).unwrap();
    show(
        &t,
        CSV,
        expect![[r#"
            line 2 key g1 email
              {"to":"ann@example.org","content":{"email":{"from":null,"subject":"You're invited, Ann <b>","text":"Dear Ann <b>, table 4. RSVP: https://w.example.org/r/g1","html":"<p>Dear Ann &lt;b&gt;</p>","reply_to":null,"headers":{},"attachments":[]}},"tags":["rsvp","wedding:42","campaign:w42-invite"],"idempotency_key":"w42-invite:g1:email","send_at":null,"override_suppression":false,"lane":"bulk"}
            line 3 key g2 sms
              {"to":"+14155550100","content":{"sms":{"from":null,"body":"Bo: you're invited! Table 7. Reply YES or NO","media_urls":[]}},"tags":["rsvp","wedding:42","campaign:w42-invite"],"idempotency_key":"w42-invite:g2:sms","send_at":null,"override_suppression":false,"lane":"bulk"}
            line 4: neither `email` nor `phone` is given
            line 5: email.subject: missing variable `name` (no such column, or empty in this row)
            line 6: invalid email recipient in column `email`: "not-an-address" is not an email address (expected local@domain)
            line 7: invalid sms recipient in column `phone`: "+1415" is not an E.164 phone number (expected e.g. +14155550100)
            line 8: duplicate key `g2` (first on line 3)
        "#]],
    );
}

#[test]
fn both_sends_each_channel_the_row_has_and_the_campaign_flag_wins() {
    let src = INVITE.replace("email_else_sms", "both");
    let t = Template::parse(&src, Some("w42-reminder")).unwrap();
    show(
        &t,
        "guest_id,name,email,phone,table,wedding\ng1,Ann,ann@example.org,+14155550100,4,42\n",
        expect![[r#"
            line 2 key g1 email
              {"to":"ann@example.org","content":{"email":{"from":null,"subject":"You're invited, Ann","text":"Dear Ann, table 4. RSVP: https://w.example.org/r/g1","html":"<p>Dear Ann</p>","reply_to":null,"headers":{},"attachments":[]}},"tags":["rsvp","wedding:42","campaign:w42-reminder"],"idempotency_key":"w42-reminder:g1:email","send_at":null,"override_suppression":false,"lane":"bulk"}
            line 2 key g1 sms
              {"to":"+14155550100","content":{"sms":{"from":null,"body":"Ann: you're invited! Table 4. Reply YES or NO","media_urls":[]}},"tags":["rsvp","wedding:42","campaign:w42-reminder"],"idempotency_key":"w42-reminder:g1:sms","send_at":null,"override_suppression":false,"lane":"bulk"}
        "#]],
    );
}

#[test]
fn a_custom_idempotency_key_and_composite_keys() {
    let src = r#"
campaign = "c"
channel = "sms"
key = ["family", "first"]
phone_column = "mobile"
idempotency_key = "{{ campaign }}/{{ key }}/{{ channel }}/v2"
[sms]
body = "Hi {{ first }}"
from = "Wedding"
"#;
    let t = Template::parse(src, None).unwrap();
    show(
        &t,
        "family,first,mobile\nDoe,Jo,+14155550100\nDoe,,+14155550101\nRoe,Al,\n",
        expect![[r#"
            line 2 key Doe:Jo sms
              {"to":"+14155550100","content":{"sms":{"from":"Wedding","body":"Hi Jo","media_urls":[]}},"tags":["campaign:c"],"idempotency_key":"c/Doe:Jo/sms/v2","send_at":null,"override_suppression":false,"lane":"bulk"}
            line 3: key column `first` is empty or missing
            line 4: column `mobile` is empty or missing
        "#]],
    );
}

#[test]
fn template_file_errors_name_what_is_wrong() {
    let cases = [
        (INVITE.replace("{{ name }}:", "{{ name :"), "sms.body"),
        (
            INVITE.replace("key = \"guest_id\"", ""),
            "missing field `key`",
        ),
        (
            INVITE.replace("[sms]\nbody", "[sms]\nbodyy"),
            "unknown field `bodyy`",
        ),
        (
            INVITE.replace("email_else_sms", "email"),
            "[sms] is given but the channel rule never sends SMS",
        ),
        (
            INVITE.replace("email_else_sms", "fax"),
            "unknown variant `fax`",
        ),
        (
            INVITE
                .replace("html = \"<p>Dear {{ name }}</p>\"", "")
                .replace("text = ", "html2 = "),
            "unknown field `html2`",
        ),
    ];
    for (src, needle) in cases {
        let e = Template::parse(&src, None).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    }
    let e = Template::parse(INVITE, Some("")).unwrap_err().to_string();
    assert!(e.contains("campaign"), "{e}");
}

#[test]
fn a_template_without_campaign_needs_one_from_the_command_line() {
    let src = INVITE.replace("campaign = \"w42-invite\"", "");
    let t = Template::parse(&src, None).unwrap();
    let rows = read_csv(CSV.as_bytes()).unwrap();
    let e = t.render(&rows[0]).unwrap_err();
    assert!(e.reason.contains("--campaign"), "{e}");
    assert!(
        Template::parse(&src, Some("x"))
            .unwrap()
            .render(&rows[0])
            .is_ok()
    );
}

#[test]
fn ndjson_rows_carry_their_lines_and_csv_errors_name_theirs() {
    let rows = read_ndjson(
        b"{\"guest_id\": 1, \"name\": \"Ann\", \"email\": \"ann@example.org\", \"phone\": null}\n\n{\"guest_id\": 2}\n",
    )
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].line, rows[1].line), (1, 3));
    assert_eq!(rows[0].get("guest_id").as_deref(), Some("1"));
    assert_eq!(rows[0].get("phone"), None);
    let e = read_ndjson(b"{}\n[1]\n").unwrap_err();
    assert_eq!(e.line, 2);
    let e = read_csv(b"a,b\n1,2\n1,2,3\n").unwrap_err();
    assert_eq!(e.to_string(), "line 3: 3 fields where the header has 2");
}

#[test]
fn the_example_in_etc_renders() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/examples/");
    let src = std::fs::read_to_string(format!("{dir}invite.toml")).unwrap();
    let t = Template::parse(&src, None).unwrap();
    let rows = read_rows(std::path::Path::new(&format!("{dir}guests.csv"))).unwrap();
    let (ok, bad) = render_all(&t, &rows);
    assert_eq!(bad, vec![], "every example row renders");
    assert!(ok.iter().any(|r| r.channel() == Channel::Email));
    assert!(ok.iter().any(|r| r.channel() == Channel::Sms));
}

#[test]
fn optional_columns_are_tested_with_is_defined_and_filters_work() {
    let src = r#"
campaign = "c"
channel = "sms"
key = "id"
[sms]
body = "{{ name|upper }}{% if plus_one is defined %} and {{ plus_one }}{% endif %}: table {{ table|default('TBD') }}"
"#;
    let t = Template::parse(src, None).unwrap();
    show(
        &t,
        "id,name,plus_one,phone\n1,Ann,Bo,+14155550100\n2,Cy,,+14155550101\n",
        expect![[r#"
            line 2 key 1 sms
              {"to":"+14155550100","content":{"sms":{"from":null,"body":"ANN and Bo: table TBD","media_urls":[]}},"tags":["campaign:c"],"idempotency_key":"c:1:sms","send_at":null,"override_suppression":false,"lane":"bulk"}
            line 3 key 2 sms
              {"to":"+14155550101","content":{"sms":{"from":null,"body":"CY: table TBD","media_urls":[]}},"tags":["campaign:c"],"idempotency_key":"c:2:sms","send_at":null,"override_suppression":false,"lane":"bulk"}
        "#]],
    );
}

#[test]
fn messages_go_in_the_bulk_lane_unless_the_template_says_otherwise() {
    let t = Template::parse(INVITE, None).unwrap();
    assert_eq!(t.lane, Lane::Bulk);
    let rows = read_csv(CSV.as_bytes()).unwrap();
    let (ok, _) = render_all(&t, &rows);
    assert!(ok.iter().all(|r| r.message.lane == Lane::Bulk));
    let urgent = format!("lane = \"critical\"\n{INVITE}");
    let t = Template::parse(&urgent, None).unwrap();
    let (ok, _) = render_all(&t, &rows);
    assert!(!ok.is_empty());
    assert!(ok.iter().all(|r| r.message.lane == Lane::Critical));
    let err = Template::parse(&format!("lane = \"urgent\"\n{INVITE}"), None).unwrap_err();
    assert!(err.to_string().contains("urgent"), "{err}");
}
