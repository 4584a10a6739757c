//! The replay window of signed webhooks: a provider's signature covers a timestamp header,
//! which must lie within a tolerance of `now` in both directions, so that a captured
//! request cannot be replayed later (nor one stamped in the future be kept for later).

use herald_plugin_api::{UnixMillis, WebhookError};

/// Checks the timestamp header `name` (Unix seconds, surrounding whitespace ignored)
/// against `now` ± `tolerance_secs`; returns the seconds. Every refusal is `Unauthorized`
/// and names the header.
pub fn check_timestamp(
    name: &str,
    value: &str,
    now: UnixMillis,
    tolerance_secs: u64,
) -> Result<i64, WebhookError> {
    let ts: i64 = value.trim().parse().map_err(|_| {
        WebhookError::Unauthorized(format!("{name} {value:?} is not a Unix timestamp"))
    })?;
    let tolerance = i64::try_from(tolerance_secs).unwrap_or(i64::MAX);
    let now_secs = i64::try_from(now / 1000).unwrap_or(i64::MAX);
    if ts < now_secs.saturating_sub(tolerance) {
        return Err(WebhookError::Unauthorized(format!(
            "{name} {ts} is more than {tolerance} s old (replay?)"
        )));
    }
    if ts > now_secs.saturating_add(tolerance) {
        return Err(WebhookError::Unauthorized(format!(
            "{name} {ts} is more than {tolerance} s in the future"
        )));
    }
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = 1_700_000_000_000;

    fn check(value: &str, now: UnixMillis) -> Result<i64, String> {
        check_timestamp("x-timestamp", value, now, 300).map_err(|e| match e {
            WebhookError::Unauthorized(m) => m,
            other => panic!("expected Unauthorized, got {other:?}"),
        })
    }

    #[test]
    fn inside_the_window_both_ways() {
        assert_eq!(check("1700000000", NOW), Ok(1_700_000_000));
        assert_eq!(check(" 1700000000 ", NOW + 300_000), Ok(1_700_000_000));
        assert_eq!(check("1700000000", NOW - 300_000), Ok(1_700_000_000));
        // `now` is whole seconds: 999 ms more is still the same second.
        assert_eq!(check("1700000000", NOW + 300_999), Ok(1_700_000_000));
    }

    #[test]
    fn outside_the_window_or_not_a_number() {
        assert_eq!(
            check("1700000000", NOW + 301_000),
            Err("x-timestamp 1700000000 is more than 300 s old (replay?)".into())
        );
        assert_eq!(
            check("1700000000", NOW - 301_000),
            Err("x-timestamp 1700000000 is more than 300 s in the future".into())
        );
        assert_eq!(
            check("yesterday", NOW),
            Err("x-timestamp \"yesterday\" is not a Unix timestamp".into())
        );
        assert_eq!(
            check("-1", u64::MAX),
            Err("x-timestamp -1 is more than 300 s old (replay?)".into())
        );
    }
}
