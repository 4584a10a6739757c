//! Small protocol helpers shared by HTTP provider plugins: wait hints and status classes.

use crate::types::UnixMillis;

/// Parses a `Retry-After` value in either of its forms — delay seconds (`120`) or an
/// HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`) — into milliseconds from `now`. A date in
/// the past gives zero.
pub fn retry_after_ms(value: &str, now: UnixMillis) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms: u64 = at
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis()
        .try_into()
        .ok()?;
    Some(at_ms.saturating_sub(now))
}

/// Milliseconds until a Unix-seconds reset time (SendGrid's `X-RateLimit-Reset`).
pub fn until_epoch_secs_ms(value: &str, now: UnixMillis) -> Option<u64> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(secs.saturating_mul(1000).saturating_sub(now))
}

/// 5xx, 408 and 429: worth retrying on the same provider.
pub fn is_retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_both_forms() {
        assert_eq!(retry_after_ms("120", 0), Some(120_000));
        // 2015-10-21T07:28:00Z = 1445412480 s.
        let now = 1_445_412_470_000;
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(10_000)
        );
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", now + 60_000),
            Some(0)
        );
        assert_eq!(retry_after_ms("soon", now), None);
        assert_eq!(until_epoch_secs_ms("1445412480", now), Some(10_000));
    }
}
