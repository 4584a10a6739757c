//! Durations as written in Herald's config: `"500ms"`, `"10s"`, `"30m"`, `"72h"`, `"7d"`.
//! One parser for the daemon and every plugin, so the same text means the same thing
//! everywhere.

/// Parses a whole number followed by a unit (`ms`, `s`, `m`, `h`, `d`) into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration like \"500ms\", \"2s\", \"30m\", \"72h\", \"7d\"")
    })?;
    let mult = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{s:?} has no valid unit; write e.g. \"500ms\", \"2s\", \"30m\", \"72h\", \"7d\""
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn units() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2s"), Ok(2000));
        assert_eq!(parse_duration_ms(" 30m "), Ok(1_800_000));
        assert_eq!(parse_duration_ms("72h"), Ok(72 * 3_600_000));
        assert_eq!(parse_duration_ms("7d"), Ok(7 * 86_400_000));
        for bad in ["", "s", "10", "2 fortnights", "1.5s", "-1s"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
