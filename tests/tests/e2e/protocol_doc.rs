//! `docs/protocol.md` must stay true: every ```` ```json ```` example decodes with the real
//! protocol types, server examples are exactly what the daemon would send, every request,
//! response, error code and event kind has an example, and the page's Python client works
//! against a real daemon.
//!
//! The fence info string says what a block holds (`json hello`, `json welcome`, `json client`,
//! `json server`, `json invalid`); a block may hold several JSON values one after another.
//! `json invalid` blocks hold one frame per line that must *not* decode as a request.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_plugin_api::EventKind;
use herald_protocol::{
    BatchItem, ClientFrame, ErrorCode, Hello, Request, Response, ServerFrame, Welcome,
};
use herald_tests::Daemon;
use herald_tests::mock::MockProvider;
use serde_json::Value;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");

fn doc() -> String {
    std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("cannot read {DOC}: {e}"))
}

/// One fenced code block of the page.
#[derive(Debug)]
struct Block {
    /// The info string after the opening backticks, e.g. `json server`.
    info: String,
    /// 1-based line of the opening fence.
    line: usize,
    body: String,
}

fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in md.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match open.as_mut() {
            None if fence => {
                open = Some(Block {
                    info: line.trim().trim_start_matches('`').trim().to_string(),
                    line: i + 1,
                    body: String::new(),
                });
            }
            None => {}
            Some(_) if line.trim() == "```" => out.extend(open.take()),
            Some(b) => {
                b.body.push_str(line);
                b.body.push('\n');
            }
        }
    }
    assert!(open.is_none(), "{DOC}: a code block is never closed");
    out
}

/// `name_fn` maps a value to its wire name with an exhaustive match (a new variant does not
/// compile until it is named here), and `ALL` lists those names for the coverage check.
macro_rules! wire_names {
    ($name_fn:ident, $all:ident, $ty:ty { $($pat:pat => $name:literal),+ $(,)? }) => {
        const $all: &[&str] = &[$($name),+];
        fn $name_fn(v: &$ty) -> &'static str {
            match v {
                $($pat => $name),+
            }
        }
    };
}

wire_names!(request_name, REQUESTS, Request {
    Request::Send(_) => "send",
    Request::SendBatch(_) => "send_batch",
    Request::Get { .. } => "get",
    Request::Cancel { .. } => "cancel",
    Request::Subscribe { .. } => "subscribe",
    Request::Unsubscribe { .. } => "unsubscribe",
    Request::Stats => "stats",
    Request::Reload => "reload",
    Request::DeadList { .. } => "dead_list",
    Request::DeadRequeue { .. } => "dead_requeue",
    Request::CheckStore { .. } => "check_store",
    Request::MintToken { .. } => "mint_token",
    Request::SuppressionList { .. } => "suppression_list",
    Request::SuppressionAdd { .. } => "suppression_add",
    Request::SuppressionRemove { .. } => "suppression_remove",
    Request::SuppressionCheck { .. } => "suppression_check",
});

wire_names!(response_name, RESPONSES, Response {
    Response::Accepted(_) => "accepted",
    Response::BatchAccepted(_) => "batch_accepted",
    Response::Message(_) => "message",
    Response::Cancelled { .. } => "cancelled",
    Response::Subscribed { .. } => "subscribed",
    Response::Event(_) => "event",
    Response::Unsubscribed => "unsubscribed",
    Response::Stats(_) => "stats",
    Response::Reloaded { .. } => "reloaded",
    Response::DeadList(_) => "dead_list",
    Response::Requeued { .. } => "requeued",
    Response::Error(_) => "error",
    Response::StoreChecked(_) => "store_checked",
    Response::Token { .. } => "token",
    Response::SuppressionList { .. } => "suppression_list",
    Response::SuppressionAdded { .. } => "suppression_added",
    Response::SuppressionRemoved { .. } => "suppression_removed",
    Response::SuppressionChecked(_) => "suppression_checked",
});

wire_names!(error_code_name, ERROR_CODES, ErrorCode {
    ErrorCode::InvalidField => "invalid_field",
    ErrorCode::NoRoute => "no_route",
    ErrorCode::TooLarge => "too_large",
    ErrorCode::IdempotencyConflict => "idempotency_conflict",
    ErrorCode::Busy => "busy",
    ErrorCode::NotFound => "not_found",
    ErrorCode::NotCancellable => "not_cancellable",
    ErrorCode::MalformedFrame => "malformed_frame",
    ErrorCode::FrameTooLarge => "frame_too_large",
    ErrorCode::UnsupportedProtocol => "unsupported_protocol",
    ErrorCode::ShuttingDown => "shutting_down",
    ErrorCode::Internal => "internal",
    ErrorCode::ConfigRejected => "config_rejected",
    ErrorCode::StorageFull => "storage_full",
    ErrorCode::StorageUnavailable => "storage_unavailable",
});

/// The variant name serde wrote for an externally tagged enum value.
fn serde_variant(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) if m.len() == 1 => m.keys().next().cloned().unwrap_or_default(),
        other => panic!("not an enum value: {other}"),
    }
}

/// Where `actual` differs from `expected`, as a JSON path and both values.
fn first_difference(path: &str, expected: &Value, actual: &Value) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let keys: BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}.{k}");
                match (e.get(k), a.get(k)) {
                    (Some(e), Some(a)) => first_difference(&p, e, a),
                    (Some(e), None) => Some(format!(
                        "{p}: the example lacks this field (the daemon sends {e})"
                    )),
                    (None, Some(_)) => Some(format!("{p}: no such field in the protocol types")),
                    (None, None) => None,
                }
            })
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .find_map(|(i, (e, a))| first_difference(&format!("{path}[{i}]"), e, a)),
        _ if expected == actual => None,
        _ => Some(format!(
            "{path}: the example has {actual}, the types give {expected}"
        )),
    }
}

/// Checks that every key and value of the (possibly abbreviated) client example `doc`
/// survives a round trip through the types: a misspelt optional field would otherwise be
/// silently ignored by serde.
fn first_unknown(path: &str, doc: &Value, canonical: &Value) -> Option<String> {
    match (doc, canonical) {
        (Value::Object(d), Value::Object(c)) => d.iter().find_map(|(k, dv)| {
            let p = format!("{path}.{k}");
            match c.get(k) {
                Some(cv) => first_unknown(&p, dv, cv),
                None => Some(format!(
                    "{p}: not a field of the protocol types (the daemon would ignore it)"
                )),
            }
        }),
        (Value::Array(d), Value::Array(c)) if d.len() == c.len() => d
            .iter()
            .zip(c)
            .enumerate()
            .find_map(|(i, (d, c))| first_unknown(&format!("{path}[{i}]"), d, c)),
        _ if doc == canonical => None,
        _ => Some(format!(
            "{path}: the example has {doc}, decoded as {canonical}"
        )),
    }
}

/// Decodes `value` as `$ty` (panicking with the block's line if it does not) and returns it
/// with its canonical re-encoding. (A macro: this crate does not depend on serde directly.)
macro_rules! decode {
    ($ty:ty, $block:expr, $n:expr, $value:expr) => {{
        let decoded: $ty = serde_json::from_value($value.clone()).unwrap_or_else(|e| {
            panic!(
                "{DOC}:{}: example #{} of the ```{} block does not decode as {}: {e}\n{:#}",
                $block.line,
                $n,
                $block.info,
                stringify!($ty),
                $value
            )
        });
        let canonical = serde_json::to_value(&decoded).expect("re-encode");
        (decoded, canonical)
    }};
}

#[derive(Debug, Default)]
struct Seen {
    requests: BTreeSet<&'static str>,
    responses: BTreeSet<&'static str>,
    errors: BTreeSet<&'static str>,
    kinds: BTreeSet<&'static str>,
    hello: usize,
    welcome: usize,
    invalid: usize,
}

impl Seen {
    fn error(&mut self, code: ErrorCode) {
        self.errors.insert(error_code_name(&code));
    }

    fn server(&mut self, frame: &ServerFrame) {
        self.responses.insert(response_name(&frame.response));
        match &frame.response {
            Response::Error(e) => self.error(e.code),
            Response::BatchAccepted(items) => {
                for item in items {
                    if let BatchItem::Error(e) = item {
                        self.error(e.code);
                    }
                }
            }
            Response::Event(e) => {
                self.kinds.insert(e.kind.as_str());
            }
            _ => {}
        }
    }
}

fn check_block(block: &Block, seen: &mut Seen) {
    let mut words = block.info.split_whitespace();
    if words.next() != Some("json") {
        return;
    }
    let tag = words.next().unwrap_or_else(|| {
        panic!(
            "{DOC}:{}: a ```json block needs a tag: json hello|welcome|client|server|invalid",
            block.line
        )
    });
    if tag == "invalid" {
        for (n, frame) in block
            .body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
        {
            let v: Value = serde_json::from_str(frame).unwrap_or_else(|e| {
                panic!(
                    "{DOC}:{}: invalid example #{n} is not even JSON: {e}",
                    block.line
                )
            });
            assert!(
                serde_json::from_value::<ClientFrame>(v).is_err(),
                "{DOC}:{}: the `invalid` example #{n} decodes as a request: {frame}",
                block.line
            );
            seen.invalid += 1;
        }
        return;
    }
    let values: Vec<Value> = serde_json::Deserializer::from_str(&block.body)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{DOC}:{}: not JSON: {e}", block.line));
    assert!(!values.is_empty(), "{DOC}:{}: empty block", block.line);
    for (n, value) in values.iter().enumerate() {
        // Server-side values must be exactly what the daemon sends; client examples may
        // leave optional fields out but must not contain anything the types drop.
        let complete = |canonical: &Value| {
            if let Some(d) = first_difference("$", canonical, value) {
                panic!(
                    "{DOC}:{}: example #{n} of the ```{} block is not what the daemon sends: {d}",
                    block.line, block.info
                );
            }
        };
        let subset = |canonical: &Value| {
            if let Some(d) = first_unknown("$", value, canonical) {
                panic!(
                    "{DOC}:{}: example #{n} of the ```{} block: {d}",
                    block.line, block.info
                );
            }
        };
        match tag {
            "hello" => {
                let (_, canonical) = decode!(Hello, block, n, value);
                subset(&canonical);
                seen.hello += 1;
            }
            "welcome" => {
                let (_, canonical) = decode!(Welcome, block, n, value);
                complete(&canonical);
                seen.welcome += 1;
            }
            "client" => {
                let (frame, canonical) = decode!(ClientFrame, block, n, value);
                subset(&canonical);
                let name = request_name(&frame.request);
                assert_eq!(
                    name,
                    serde_variant(&canonical["request"]),
                    "wire_names! table"
                );
                assert!(frame.id > 0, "{DOC}:{}: request ids start at 1", block.line);
                seen.requests.insert(name);
            }
            "server" => {
                let (frame, canonical) = decode!(ServerFrame, block, n, value);
                complete(&canonical);
                let name = response_name(&frame.response);
                assert_eq!(
                    name,
                    serde_variant(&canonical["response"]),
                    "wire_names! table"
                );
                if let Response::Error(e) = &frame.response {
                    assert_eq!(
                        error_code_name(&e.code),
                        canonical["response"]["error"]["code"],
                        "wire_names! table"
                    );
                }
                seen.server(&frame);
            }
            other => panic!(
                "{DOC}:{}: unknown tag `json {other}`; use json hello|welcome|client|server|invalid",
                block.line
            ),
        }
    }
}

fn missing(what: &str, all: &[&str], seen: &BTreeSet<&'static str>) -> Vec<String> {
    all.iter()
        .filter(|n| !seen.contains(*n))
        .map(|n| format!("{what} `{n}`"))
        .collect()
}

#[test]
fn every_json_example_decodes_with_the_protocol_types() {
    let md = doc();
    let mut seen = Seen::default();
    for block in blocks(&md) {
        check_block(&block, &mut seen);
    }
    assert!(seen.hello > 0, "{DOC}: no ```json hello example");
    assert!(seen.welcome > 0, "{DOC}: no ```json welcome example");
    assert!(seen.invalid > 0, "{DOC}: no ```json invalid example");
    let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    let mut gaps = missing("request", REQUESTS, &seen.requests);
    gaps.extend(missing("response", RESPONSES, &seen.responses));
    gaps.extend(missing("error code", ERROR_CODES, &seen.errors));
    gaps.extend(missing("event kind", &kinds, &seen.kinds));
    assert!(
        gaps.is_empty(),
        "{DOC} has no JSON example for: {}",
        gaps.join(", ")
    );
}

#[test]
fn the_block_parser_and_the_checks_catch_drift() {
    let md = "text\n```json client\n{\"id\": 1, \"request\": \"stats\"}\n```\n| ` ```json x ` |\n```\nplain\n```\n";
    let b = blocks(md);
    assert_eq!(b.len(), 2);
    assert_eq!((b[0].info.as_str(), b[0].line), ("json client", 2));
    assert_eq!(b[1].info, "");

    // A renamed optional field decodes (serde ignores it) but is reported.
    let doc: Value = serde_json::json!({"id": 1, "request": {"send": {
        "to": "+14155550100", "content": {"sms": {"body": "x"}}, "deliver_at": 5}}});
    let frame: ClientFrame = serde_json::from_value(doc.clone()).unwrap();
    let canonical = serde_json::to_value(&frame).unwrap();
    let report = first_unknown("$", &doc, &canonical).unwrap();
    assert!(report.contains("$.request.send.deliver_at"), "{report}");

    // A server example that leaves a field out is reported.
    let doc: Value = serde_json::json!({"id": 1, "response": {"accepted": {"id": "x"}}});
    let canonical =
        serde_json::json!({"id": 1, "response": {"accepted": {"id": "x", "duplicate": false}}});
    let report = first_difference("$", &canonical, &doc).unwrap();
    assert!(report.contains("$.response.accepted.duplicate"), "{report}");
}

/// A 26-character ULID as printed by Herald.
fn is_ulid(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)))
}

/// Output lines with message ids and leading sequence numbers blanked out.
fn normalize(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            line.split_whitespace()
                .enumerate()
                .map(|(i, w)| {
                    if is_ulid(w) {
                        "<id>".to_string()
                    } else if i == 0 && w.bytes().all(|b| b.is_ascii_digit()) {
                        "<seq>".to_string()
                    } else {
                        w.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_works_against_a_real_daemon() {
    let md = doc();
    let all = blocks(&md);
    let one = |info: &str| -> &Block {
        let found: Vec<&Block> = all.iter().filter(|b| b.info == info).collect();
        assert_eq!(found.len(), 1, "{DOC}: expected one ```{info} block");
        found[0]
    };
    let script = one("python");
    let expected = one("text output");

    let mock = MockProvider::start().await;
    let daemon = Daemon::builder().webhook_provider(&mock).start().await;
    let path = daemon.dir.path().join("herald_demo.py");
    std::fs::write(&path, &script.body).unwrap();
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(&path)
        .env("HERALD_SOCKET", &daemon.socket)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the Python example finished within a minute")
        .expect("python3 is needed to check the Python example of docs/protocol.md");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python example of {DOC} failed ({}):\n{stdout}\n{}\ndaemon log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    assert_eq!(
        normalize(&stdout),
        normalize(&expected.body),
        "the Python example's output differs from the ```text output block of {DOC}"
    );

    // What it printed is true: the message exists, was handed to the provider, and is sent.
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("accepted "))
        .expect("an `accepted <id>` line")
        .trim();
    let m = daemon.client().await.get(id).await.unwrap();
    assert_eq!(m.to, "ann@example.com");
    assert_eq!(m.tags, ["rsvp"]);
    assert_eq!(m.state.as_str(), "sent");
    assert_eq!(mock.count(), 1);
}
