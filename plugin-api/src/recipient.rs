//! Canonical recipient keys: one string per person per channel, so whatever compares
//! recipients — the suppression list, "the latest message sent to this sender" for tagging
//! a reply, a plugin matching an inbound sender — compares people, not spellings.
//!
//! | channel | key | examples |
//! | --- | --- | --- |
//! | email | the bare address: display name and angle brackets dropped, surrounding space trimmed, the domain lower-cased, and (by default, [`EmailCase::Insensitive`]) the local part too | `Ann Lee <Ann.Lee@Example.COM>` → `ann.lee@example.com` |
//! | sms | E.164: `+` and digits, with spaces, dashes, dots, parentheses and a `tel:` prefix removed, and a leading international `00` read as `+` | `+1 (415) 555-0100`, `0044 7700 900123` → `+14155550100`, `+447700900123` |
//! | push | the device token exactly as given | |
//!
//! Decisions, and why:
//! - **Email local parts are compared case-insensitively by default.** RFC 5321 lets a
//!   server treat `Ann` and `ann` as two mailboxes, but no mainstream provider does, and
//!   hosts type addresses as guests gave them. [`EmailCase::Strict`] keeps the local part as
//!   written for the rare host that needs it. Nothing else is folded: `ann+rsvp@` and
//!   `a.nn@` stay distinct (sub-addressing and dots are provider-specific).
//! - **Non-ASCII**: an internationalised domain or local part is lower-cased with Unicode
//!   rules and otherwise kept as written. There is no IDNA conversion and no Unicode
//!   normalisation, so `bücher.example` and its A-label `xn--bcher-kva.example` are two keys,
//!   as are a precomposed and a decomposed `ü`. Hosts that mix spellings should send one.
//! - **`00` → `+`**: `00` is the international call prefix of most of the world (ITU-T
//!   E.164's recommended one), and numbers collected from European guests are often written
//!   `0044…`. No E.164 number starts with a zero, so the reading is never ambiguous. Other
//!   prefixes (`011` in North America, `0011` in Australia) are refused rather than guessed:
//!   `0113…` is also a Leeds number.
//! - **A national number** (`(415) 555-0100`, `07700 900123`) is refused: its country cannot
//!   be known. So are letters (`1-800-FLOWERS`) and extensions.
//! - **Push tokens** have no prefix syntax in Herald: the token goes to the provider exactly
//!   as the host wrote it (the push route, not the token, chooses the provider), and a
//!   `fcm:` or `apns:` in front is refused at accept. Nothing is stripped, lower-cased or
//!   trimmed.
//!
//! Owns: the canonical form. Must not: decide what is suppressed or matched (the store's
//! business), or read configuration (the daemon passes [`RecipientRules`] in).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::Channel;
use crate::validate::{
    InvalidField, email_address_part, validate_e164, validate_email_address, validate_recipient,
};

/// How the local part of an email address (before `@`) is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailCase {
    /// `Ann@example.com` and `ann@example.com` are one recipient (as providers treat them).
    #[default]
    Insensitive,
    /// The local part is kept as written; only the domain is lower-cased.
    Strict,
}

/// The host's choices for canonical keys (config `[recipients]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientRules {
    #[serde(default)]
    pub email_case: EmailCase,
}

/// A recipient's canonical key for its channel. Two spellings of one recipient have equal
/// keys; see the module comment for what counts as one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecipientKey(String);

impl RecipientKey {
    /// The key of `raw` (a message's `to`, or an inbound sender) on `channel`. An error
    /// names the field `to`.
    pub fn new(
        channel: Channel,
        raw: &str,
        rules: &RecipientRules,
    ) -> Result<RecipientKey, InvalidField> {
        RecipientKey::for_field("to", channel, raw, rules)
    }

    /// As [`RecipientKey::new`], naming `field` in the error (e.g. `from` for an inbound
    /// sender).
    pub fn for_field(
        field: &str,
        channel: Channel,
        raw: &str,
        rules: &RecipientRules,
    ) -> Result<RecipientKey, InvalidField> {
        match channel {
            Channel::Email => canonical_email(field, raw, rules.email_case),
            Channel::Sms => canonical_phone(field, raw),
            Channel::Push => {
                validate_recipient(Channel::Push, raw).map_err(|e| InvalidField {
                    field: field.to_string(),
                    reason: e.reason,
                })?;
                Ok(RecipientKey(raw.to_string()))
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for RecipientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RecipientKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn canonical_email(field: &str, raw: &str, case: EmailCase) -> Result<RecipientKey, InvalidField> {
    validate_email_address(field, raw)?;
    let addr = email_address_part(raw).trim();
    // Validation guarantees one '@' split with a non-empty local part and domain.
    let (local, domain) = addr.rsplit_once('@').unwrap_or((addr, ""));
    let local = match case {
        EmailCase::Insensitive => local.to_lowercase(),
        EmailCase::Strict => local.to_string(),
    };
    Ok(RecipientKey(format!("{local}@{}", domain.to_lowercase())))
}

fn canonical_phone(field: &str, raw: &str) -> Result<RecipientKey, InvalidField> {
    let refuse = |why: &str| InvalidField {
        field: field.to_string(),
        reason: format!("{:?} {why}", clip(raw)),
    };
    let s = raw.trim();
    let s = s.strip_prefix("tel:").unwrap_or(s);
    let mut out = String::with_capacity(16);
    for (i, c) in s.chars().enumerate() {
        match c {
            '0'..='9' => out.push(c),
            '+' if i == 0 => out.push('+'),
            c if c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')') => {}
            c if c.is_alphabetic() => {
                return Err(refuse(
                    "has letters; write the number in digits with + and the country code",
                ));
            }
            _ => {
                return Err(refuse(&format!(
                    "has {c:?}, which is not part of a phone number (extensions are not \
                     supported)"
                )));
            }
        }
    }
    let e164 = if let Some(rest) = out.strip_prefix("00") {
        format!("+{rest}")
    } else if out.starts_with('+') {
        out
    } else {
        return Err(refuse(
            "is not international; write it with + and the country code (e.g. +14155550100)",
        ));
    };
    validate_e164(field, &e164).map_err(|_| {
        refuse("is not a valid E.164 number once written as digits (expected e.g. +14155550100)")
    })?;
    Ok(RecipientKey(e164))
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSENSITIVE: RecipientRules = RecipientRules {
        email_case: EmailCase::Insensitive,
    };
    const STRICT: RecipientRules = RecipientRules {
        email_case: EmailCase::Strict,
    };

    fn key(channel: Channel, raw: &str, rules: &RecipientRules) -> Result<String, String> {
        RecipientKey::new(channel, raw, rules)
            .map(RecipientKey::into_string)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn email_keys() {
        let rows: &[(&str, &str, &str)] = &[
            // raw, insensitive (default), strict
            ("ann@example.com", "ann@example.com", "ann@example.com"),
            (
                "Ann Lee <ann@example.com>",
                "ann@example.com",
                "ann@example.com",
            ),
            (
                "Ann Lee <Ann@Example.COM>",
                "ann@example.com",
                "Ann@example.com",
            ),
            ("<ann@example.com>", "ann@example.com", "ann@example.com"),
            ("  ann@example.com  ", "ann@example.com", "ann@example.com"),
            (
                "\"Lee, Ann\" <ANN.LEE+RSVP@Mail.Example.ORG>",
                "ann.lee+rsvp@mail.example.org",
                "ANN.LEE+RSVP@mail.example.org",
            ),
            (
                "Ann <ann@EXAMPLE.com>",
                "ann@example.com",
                "ann@example.com",
            ),
            // Non-ASCII: Unicode lower-casing, no IDNA, no normalisation.
            (
                "José <JOSÉ@Bücher.Example>",
                "josé@bücher.example",
                "JOSÉ@bücher.example",
            ),
            (
                "ann@XN--BCHER-KVA.example",
                "ann@xn--bcher-kva.example",
                "ann@xn--bcher-kva.example",
            ),
        ];
        for (raw, insensitive, strict) in rows {
            assert_eq!(
                key(Channel::Email, raw, &INSENSITIVE).as_deref(),
                Ok(*insensitive),
                "{raw}"
            );
            assert_eq!(
                key(Channel::Email, raw, &STRICT).as_deref(),
                Ok(*strict),
                "{raw}"
            );
        }
        // Every spelling of Ann is one key; the default rules are case-insensitive.
        let default = RecipientRules::default();
        let ann = RecipientKey::new(Channel::Email, "ann@example.com", &default).unwrap();
        for spelling in [
            "Ann Lee <ann@example.com>",
            "ANN@EXAMPLE.COM",
            "\"Ann\" <Ann@example.com>",
        ] {
            assert_eq!(
                RecipientKey::new(Channel::Email, spelling, &default).unwrap(),
                ann
            );
        }
        // Sub-addresses stay distinct.
        assert_ne!(
            RecipientKey::new(Channel::Email, "ann+rsvp@example.com", &default).unwrap(),
            ann
        );
        for bad in [
            "Ann Lee",
            "ann@",
            "ann@localhost",
            "Ann\r\nBcc: x@y.io <ann@example.com>",
        ] {
            let err = RecipientKey::new(Channel::Email, bad, &default).unwrap_err();
            assert_eq!(err.field, "to", "{bad}");
        }
    }

    #[test]
    fn phone_keys() {
        let rows: &[(&str, Result<&str, &str>)] = &[
            ("+14155550100", Ok("+14155550100")),
            ("+1 415 555 0100", Ok("+14155550100")),
            ("+1 (415) 555-0100", Ok("+14155550100")),
            ("+1.415.555.0100", Ok("+14155550100")),
            ("  +44 7700 900123 ", Ok("+447700900123")),
            ("0044 7700 900123", Ok("+447700900123")),
            ("0049-30-1234567", Ok("+49301234567")),
            ("tel:+33-1-23-45-67-89", Ok("+33123456789")),
            ("+1\u{a0}415\u{a0}555\u{a0}0100", Ok("+14155550100")),
            ("(415) 555-0100", Err("not international")),
            ("07700 900123", Err("not international")),
            ("011 44 7700 900123", Err("not international")),
            ("1-800-FLOWERS", Err("letters")),
            ("+1 415 555 0100 ext. 12", Err("letters")),
            ("+1 415 555 0100;ext=12", Err("not part of a phone number")),
            ("+1 415+555", Err("not part of a phone number")),
            ("+0 415 555 0100", Err("not a valid E.164")),
            ("000 415 555 0100", Err("not a valid E.164")),
            ("+1 415", Err("not a valid E.164")),
            ("+1 415 555 0100 1234 5", Err("not a valid E.164")),
            ("", Err("not international")),
        ];
        for (raw, want) in rows {
            let got = key(Channel::Sms, raw, &INSENSITIVE);
            match want {
                Ok(k) => assert_eq!(got.as_deref(), Ok(*k), "{raw:?}"),
                Err(needle) => {
                    let err = got.expect_err(raw);
                    assert!(err.contains(needle), "{raw:?}: {err}");
                    assert!(err.starts_with("to: "), "{err}");
                }
            }
        }
        let err =
            RecipientKey::for_field("from", Channel::Sms, "555-0100", &INSENSITIVE).unwrap_err();
        assert_eq!(err.field, "from");
    }

    #[test]
    fn push_keys_are_the_token_as_given() {
        let fcm = "dK3xZ9:APA91bH-token_Value";
        let apns = "9F0A1B2C3D4E5F60718293A4B5C6D7E8F9F0A1B2C3D4E5F60718293A4B5C6D7E";
        for token in [fcm, apns] {
            assert_eq!(
                key(Channel::Push, token, &INSENSITIVE).as_deref(),
                Ok(token),
                "no prefix stripped, no case folded"
            );
        }
        assert_ne!(
            key(Channel::Push, &apns.to_lowercase(), &INSENSITIVE),
            key(Channel::Push, apns, &INSENSITIVE)
        );
        // A provider prefix is refused at accept (validate), so never becomes a key.
        for prefixed in ["fcm:dK3xZ9token", "apns:9F0A1B2C3D4E"] {
            assert!(
                key(Channel::Push, prefixed, &INSENSITIVE).is_err(),
                "{prefixed}"
            );
        }
        assert!(key(Channel::Push, "short", &INSENSITIVE).is_err());
        assert!(key(Channel::Push, " dK3xZ9:APA91bH ", &INSENSITIVE).is_err());
    }

    #[test]
    fn rules_come_from_toml_shaped_json() {
        let strict: RecipientRules = serde_json::from_str(r#"{"email_case": "strict"}"#).unwrap();
        assert_eq!(strict, STRICT);
        let default: RecipientRules = serde_json::from_str("{}").unwrap();
        assert_eq!(default, INSENSITIVE);
        assert!(serde_json::from_str::<RecipientRules>(r#"{"email_case": "loose"}"#).is_err());
        assert!(serde_json::from_str::<RecipientRules>(r#"{"email_cas": "strict"}"#).is_err());
    }
}
