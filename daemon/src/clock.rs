//! The wall clock, read in one place. Logic takes `now` as an argument so backoff,
//! breakers and expiry are testable without sleeping.

use herald_plugin_api::UnixMillis;

pub fn now_ms() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds on a monotonic clock since the first call (never 0): for measuring how
/// long something has been running, immune to wall-clock jumps.
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

/// A monotonic instant, for measuring how long something took (metrics).
pub fn instant() -> std::time::Instant {
    std::time::Instant::now()
}
