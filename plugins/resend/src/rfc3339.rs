//! A small RFC 3339 timestamp reader for webhook event times (`2024-01-01T00:00:00.123Z`,
//! `...+02:00`, also the `+00` and space-separated forms Postgres prints). Returns Unix
//! milliseconds; anything it does not understand is `None` (the event time is optional).

use herald_plugin_api::UnixMillis;

/// Parses an RFC 3339 date-time into Unix milliseconds.
pub(crate) fn parse_ms(s: &str) -> Option<UnixMillis> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19
        || !b[..19].is_ascii()
        || b[4] != b'-'
        || b[7] != b'-'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = num(&s[0..4])?;
    let month = num(&s[5..7])?;
    let day = num(&s[8..10])?;
    let hour = num(&s[11..13])?;
    let minute = num(&s[14..16])?;
    let second = num(&s[17..19])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }

    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms_digits = &frac[..digits.min(3)];
        millis = num(ms_digits)? * 10_i64.pow(3 - ms_digits.len() as u32);
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let tz = &rest[1..];
            if !tz.is_ascii() {
                return None;
            }
            let (h, m) = match tz.len() {
                2 => (num(tz)?, 0),
                4 => (num(&tz[0..2])?, num(&tz[2..4])?),
                5 if tz.as_bytes()[2] == b':' => (num(&tz[0..2])?, num(&tz[3..5])?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };

    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let ms = secs.checked_mul(1000)?.checked_add(millis)?;
    u64::try_from(ms).ok()
}

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_ms;

    #[test]
    fn forms() {
        assert_eq!(parse_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_ms("2024-01-01T00:00:00Z"), Some(1_704_067_200_000));
        assert_eq!(
            parse_ms("2023-10-06T23:47:56.678Z"),
            Some(1_696_636_076_678)
        );
        assert_eq!(
            parse_ms("2023-10-07T01:47:56.678123+02:00"),
            Some(1_696_636_076_678)
        );
        assert_eq!(
            parse_ms("2023-10-06 23:47:56.6+00"),
            Some(1_696_636_076_600)
        );
        assert_eq!(
            parse_ms("2024-02-29T12:00:00-0130"),
            Some(1_709_213_400_000)
        );
        for bad in [
            "",
            "2024-01-01",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T25:00:00Z",
            "yesterday at noon!!",
            "2024-01-01T00:00:0é",
            "2024-01-01T00:00:00+0é",
        ] {
            assert_eq!(parse_ms(bad), None, "{bad}");
        }
    }
}
