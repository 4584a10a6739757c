//! `herald-plugin-kit`: the support code Herald's provider plugins share, so that each rule
//! lives in one place and is tested once.
//!
//! A plain library linked into each plugin's cdylib; it is not a plugin and, like the
//! plugins, never depends on an async runtime. Like `herald-plugin-api`, it performs no I/O
//! (except the `testing`/`spec` helpers, which read vendored files in tests).
//!
//! - [`http_url`]: the `http(s)` URLs a config names (`base_url`, a webhook `url`): validated
//!   once, normalised, and the host for `allowed_hosts` taken from them.
//! - [`text`]: provider or transport text made fit for an outcome reason (one line, bounded,
//!   a secret redacted).
//! - [`outcome`]: the outcomes every plugin gives alike: a transport error, a reply of the
//!   wrong kind, a message of a channel the plugin does not carry.
//! - [`config`]: small config checks several plugins make (an API key's shape, a
//!   `request_timeout`).
//! - [`webhook`]: the replay window of a signed webhook's timestamp.
//! - `reply` (feature `reply`): the guest's own text of an inbound email (HTML rendered to text, the quoted
//!   original, attribution and signature removed).
//! - [`apns`]: how APNs must treat a push (alert or background, priority, expiration), for
//!   the apns plugin and for FCM's iOS delivery alike.
//! - `testing` (feature `testing`): fixtures for the plugins' unit tests.
//! - `spec` (feature `spec`, implies `testing`): request bodies checked against an OpenAPI
//!   document's request schema.
#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod apns;
pub mod config;
pub mod http_url;
pub mod outcome;
#[cfg(feature = "reply")]
pub mod reply;
pub mod text;
pub mod webhook;

#[cfg(feature = "spec")]
pub mod spec;
#[cfg(feature = "testing")]
pub mod testing;
