//! Generates `client/node/src/generated/protocol.ts`, the TypeScript types of
//! `@herald/client`, from the Rust types of `herald-protocol` (and the `herald-plugin-api`
//! domain types they carry), and fails when the committed file is stale.
//!
//! ```text
//! UPDATE_EXPECT=1 cargo test -p herald-client --test typescript    # regenerate
//! ```
//!
//! The derives are `ts-rs`, behind the `typescript` feature of both crates, which only this
//! test enables (as a dev-dependency feature: the CLI, the daemon and the plugins are built
//! without it). ts-rs follows the serde attributes, so the declarations have the JSON
//! codec's shape: snake_case keys, externally tagged enums (`{"send": ...}`, `"stats"`),
//! `null` for an absent optional value. Fields a request may leave out (those with
//! `#[serde(default)]`) are marked `?` on the types a client writes. Every integer is a
//! `number`: the protocol keeps them all below 2^53 (see `herald_protocol`'s docs).
//!
//! A variant or type appended to the protocol shows up here by itself, as a diff.
#![allow(clippy::unwrap_used)]

use std::any::TypeId;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

use herald_protocol::{
    ClientFrame, DEFAULT_MAX_FRAME, DEFAULT_SOCKET, Hello, MAX_SAFE_INTEGER, PROTOCOL_VERSION,
    ServerFrame, Welcome,
};
use ts_rs::{Config, TS, TypeVisitor};

/// Every declared type reachable from the roots, by TypeScript name (sorted: the derives
/// list dependencies in no fixed order).
struct Collect<'a> {
    cfg: &'a Config,
    seen: HashSet<TypeId>,
    decls: BTreeMap<String, String>,
}

impl TypeVisitor for Collect<'_> {
    fn visit<T: TS + 'static + ?Sized>(&mut self) {
        // Primitives and std containers have no declaration of their own; their type
        // parameters are visited by whoever uses them.
        if T::output_path().is_none() || !self.seen.insert(TypeId::of::<T>()) {
            return;
        }
        let mut decl = T::docs().unwrap_or_default();
        decl.push_str("export ");
        decl.push_str(&T::decl(self.cfg));
        self.decls.insert(T::ident(self.cfg), decl);
        T::visit_dependencies(self);
    }
}

fn generate() -> String {
    // `number` for u64: every integer of the protocol is at most 2^53 - 1.
    let cfg = Config::new().with_large_int("number");
    let mut c = Collect {
        cfg: &cfg,
        seen: HashSet::new(),
        decls: BTreeMap::new(),
    };
    c.visit::<Hello>();
    c.visit::<Welcome>();
    c.visit::<ClientFrame>();
    c.visit::<ServerFrame>();

    let mut out = String::from(
        "// Generated from the Rust types of herald-protocol and herald-plugin-api by\n\
         // client/tests/typescript.rs. Do not edit; regenerate with\n\
         //   UPDATE_EXPECT=1 cargo test -p herald-client --test typescript\n\
         // The shapes are the JSON codec's (docs/protocol.md). Every integer is below 2^53.\n\n",
    );
    let consts = [
        (
            "The protocol version in `Hello.herald`.",
            "PROTOCOL_VERSION",
            PROTOCOL_VERSION.to_string(),
        ),
        (
            "The socket of the embedded default config, relative to the daemon's directory; \
             clients fall back to it after an explicit path and `HERALD_SOCKET`.",
            "DEFAULT_SOCKET",
            format!("{DEFAULT_SOCKET:?}"),
        ),
        (
            "The default `daemon.max_frame`: the largest frame body the daemon accepts.",
            "DEFAULT_MAX_FRAME",
            DEFAULT_MAX_FRAME.to_string(),
        ),
        (
            "2^53 - 1: no integer in the protocol is larger.",
            "MAX_SAFE_INTEGER",
            MAX_SAFE_INTEGER.to_string(),
        ),
    ];
    for (doc, name, value) in consts {
        writeln!(out, "/** {doc} */\nexport const {name} = {value};").unwrap();
    }
    for decl in c.decls.values() {
        out.push('\n');
        out.push_str(decl);
        out.push('\n');
    }
    out
}

#[test]
fn the_generated_typescript_types_are_current() {
    expect_test::expect_file!["../node/src/generated/protocol.ts"].assert_eq(&generate());
}

#[test]
fn every_integer_is_a_number_and_every_type_is_declared() {
    let ts = generate();
    assert!(!ts.contains("bigint"), "{ts}");
    for name in [
        "Request",
        "Response",
        "ErrorCode",
        "EventKind",
        "Event",
        "SendMessage",
        "Content",
        "MessageView",
        "Stats",
    ] {
        assert!(
            ts.contains(&format!("export type {name} = ")),
            "{name} missing:\n{ts}"
        );
    }
    // A field a request may leave out is optional; one the daemon always sends is not.
    assert!(
        ts.contains("idempotency_key?: string | null"),
        "SendMessage.idempotency_key"
    );
    assert!(ts.contains("tags?: Array<string>"), "SendMessage.tags");
    assert!(
        ts.contains("message_id: string | null"),
        "Event.message_id is always sent"
    );
}
