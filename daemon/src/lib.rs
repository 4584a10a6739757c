//! `heraldd`: the Herald delivery daemon. ARCHITECTURE.md at the repository root is the
//! map; each module's doc says what it owns and what it must not touch.
#![deny(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod backlog;
pub mod breaker;
pub mod clock;
pub mod commit;
pub mod config;
pub mod daemon;
pub mod dispatch;
pub mod events;
pub mod fanout;
pub mod http_server;
pub mod ipc;
pub mod live;
pub mod metrics;
pub mod plugin;
pub mod providers;
pub mod ratelimit;
pub mod reads;
pub mod realtime;
pub mod reload;
pub mod retry;
pub mod rsvp;
pub mod space;
pub mod store;
pub mod store_check;
pub mod suppression;
pub mod transport;
pub mod webhooks;
