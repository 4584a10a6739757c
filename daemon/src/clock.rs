//! The wall clock, read in one place. Logic takes `now` as an argument so backoff,
//! breakers and expiry are testable without sleeping.

use herald_plugin_api::UnixMillis;

pub fn now_ms() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A monotonic instant, for measuring how long something took (metrics).
pub fn instant() -> std::time::Instant {
    std::time::Instant::now()
}
