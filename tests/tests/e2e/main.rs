//! End-to-end tests: the real `heraldd` process, real plugin `.so` files, mock providers
//! over real sockets on 127.0.0.1. One test binary; one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod admin;
mod bad_input;
mod batch;
mod bulk;
mod cli;
mod crash;
mod diskfull;
mod examples;
mod guests;
mod lanes;
mod lifecycle;
mod limits;
mod node_client;
mod plugins;
mod postgres;
mod postgres_scale;
mod protocol_doc;
mod protocol_rules;
mod providers;
mod realtime;
mod reload;
mod resilience;
mod smtp;
mod store_check;
mod suppression;
mod templates;
mod webhooks;
