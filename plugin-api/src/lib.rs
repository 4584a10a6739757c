//! `herald-plugin-api`: the stable contract between `heraldd` and its provider plugins.
//!
//! - [`types`]: the domain — channels, messages, states, events. Shared with the socket
//!   protocol, so these types stay postcard-friendly.
//! - [`validate`]: what a message must satisfy before it is accepted, with errors naming
//!   the field by its path (`content.email.attachments[0].content_type`); the one rule for
//!   header-like and one-line fields.
//! - [`keywords`]: the SMS providers' opt-out / opt-in / help keyword lists and matching.
//! - [`recipient`]: canonical recipient keys ([`RecipientKey`]): one per person per channel,
//!   so suppression and reply matching compare people, not spellings.
//! - [`provider`]: the sans-IO [`Provider`] trait and the step machine a plugin runs:
//!   a plugin describes requests, the host performs them. A plugin never does network I/O.
//! - [`abi`]: the C ABI (`herald_plugin_v1`, JSON buffers, plugin-owned buffers) and the
//!   [`export_plugin!`] macro that writes the glue, with every entry point under
//!   `catch_unwind`.
//! - [`log`], [`http`], [`secret`], [`version`], [`duration`]: small helpers for plugin authors and the
//!   loader.
//!
//! This crate depends only on serde, serde_json and httpdate, and never on tokio or a
//! logger: a copy of either inside a dylib would be a separate global. (The `typescript`
//! feature adds `ts-rs` derives for the generated TypeScript types; only that generator, a
//! test, enables it.)
#![deny(unsafe_code)]

pub mod abi;
pub mod duration;
pub mod http;
pub mod keywords;
pub mod log;
pub mod provider;
pub mod recipient;
pub mod secret;
pub mod types;
pub mod validate;
pub mod version;

pub use log::Logger;
pub use provider::*;
pub use recipient::{EmailCase, RecipientKey, RecipientRules};
pub use secret::Secret;
pub use types::*;
pub use validate::*;

/// The version of this crate, which a plugin's manifest states and the loader checks.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The README's plugin example is compiled as a doctest, so the documentation cannot drift
/// from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
