//! The `apns-id` header: Herald's message id (a ULID, 26 Crockford base32 characters =
//! 128 bits) written as the canonical UUID APNs expects, so the id APNs reports is the
//! same on every attempt and maps back to the message.

/// Crockford's base32 value of one character (case-insensitive; `I`/`L` read as 1 and
/// `O` as 0, as the alphabet's decoding rules allow).
fn crockford(c: u8) -> Option<u8> {
    let v = match c.to_ascii_uppercase() {
        c @ b'0'..=b'9' => c - b'0',
        b'O' => 0,
        b'I' | b'L' => 1,
        c @ b'A'..=b'H' => c - b'A' + 10,
        b'J' => 18,
        b'K' => 19,
        b'M' => 20,
        b'N' => 21,
        c @ b'P'..=b'T' => c - b'P' + 22,
        c @ b'V'..=b'Z' => c - b'V' + 27,
        _ => return None,
    };
    Some(v)
}

/// The ULID `id` as a lower-case canonical UUID (`8-4-4-4-12` hex), or `None` when `id`
/// is not a ULID.
pub fn uuid_of_ulid(id: &str) -> Option<String> {
    let bytes = id.as_bytes();
    // 26 characters carry 130 bits: the first may only use the low three.
    if bytes.len() != 26 || crockford(bytes[0])? > 7 {
        return None;
    }
    let mut value: u128 = 0;
    for &c in bytes {
        value = (value << 5) | u128::from(crockford(c)?);
    }
    let hex = format!("{value:032x}");
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_become_uuids() {
        // Vectors computed independently (Python, big-integer base32 decoding).
        assert_eq!(
            uuid_of_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAV").as_deref(),
            Some("01563e3a-b5d3-d676-4c61-efb99302bd5b")
        );
        assert_eq!(
            uuid_of_ulid("01HZY3J5T8G2W9Q4M7V6X1C0BD").as_deref(),
            Some("018ffc39-1748-80b8-9b92-87d9ba16016d")
        );
        assert_eq!(
            uuid_of_ulid("01hzy3j5t8g2w9q4m7v6x1c0bd"),
            uuid_of_ulid("01HZY3J5T8G2W9Q4M7V6X1C0BD")
        );
        assert_eq!(
            uuid_of_ulid("7ZZZZZZZZZZZZZZZZZZZZZZZZZ").as_deref(),
            Some("ffffffff-ffff-ffff-ffff-ffffffffffff")
        );
        assert_eq!(
            uuid_of_ulid("00000000000000000000000000").as_deref(),
            Some("00000000-0000-0000-0000-000000000000")
        );
    }

    #[test]
    fn other_ids_give_none() {
        for bad in [
            "",
            "msg-1",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ", // 130 bits
            "01HZY3J5T8G2W9Q4M7V6X1C0B",  // 25 characters
            "01HZY3J5T8G2W9Q4M7V6X1C0BU", // U is not in the alphabet
            "01HZY3J5T8G2W9Q4M7V6X1C0B!",
            "01HZY3J5T8G2W9Q4M7V6X1C0BDX", // 27 characters
        ] {
            assert_eq!(uuid_of_ulid(bad), None, "{bad}");
        }
    }
}
