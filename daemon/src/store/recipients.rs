//! The recipient schema of the key-value engines: the suppression list and the "latest
//! message sent to this recipient" index are keyed by the canonical recipient key
//! (`herald_plugin_api::recipient`) under the rules the store was keyed with, and this
//! module says how an engine re-keys entries written under another schema or other rules.
//!
//! Schema 1 (before canonical keys) keyed both by the raw `to` lower-cased in ASCII
//! (`ann lee <ann@example.com>`), and stored a suppression's reason only. Schema 2 keys by
//! [`RecipientKey`] and stores a [`Suppression`]. An engine stores the [`KeyedWith`] marker
//! of its entries; at start, when the marker differs from the running one (an old data dir,
//! or `[recipients] email_case` changed), it re-keys every entry with [`rekey`] and
//! [`merge_suppression`] / [`merge_latest`], and writes the marker last.
//!
//! Re-keying is **idempotent** — the key of a canonical key is itself, and the merges are
//! deterministic — so an engine may re-key in many small atomic steps: a start killed half
//! way through re-keys again from the beginning and ends in the same place.
//!
//! Entries of schema 1 kept only the lower-cased spelling, so under `email_case = "strict"`
//! they match the lower-cased local part only (suppressions added since keep the spelling
//! they were given, and follow a change of the rules).
//!
//! Owns: the marker and the re-keying rules. Must not: touch an engine's layout.

use herald_plugin_api::{Channel, RecipientKey, RecipientRules};
use serde::{Deserialize, Serialize};

use super::{MsgId, Suppression};

/// The current schema of recipient-keyed entries.
pub const SCHEMA: u32 = 2;

/// How a store's recipient-keyed entries were keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedWith {
    pub schema: u32,
    pub rules: RecipientRules,
}

impl KeyedWith {
    pub fn current(rules: RecipientRules) -> KeyedWith {
        KeyedWith {
            schema: SCHEMA,
            rules,
        }
    }
}

/// The channel stored as a key's first byte (`channel as u8`).
pub fn channel_of(byte: u8) -> Option<Channel> {
    Channel::ALL.into_iter().find(|c| *c as u8 == byte)
}

/// The key of a recipient under `rules`, or `None` when it is not a recipient of the
/// channel (nothing sent to such a spelling can be matched).
pub fn key(channel: Channel, raw: &str, rules: &RecipientRules) -> Option<RecipientKey> {
    RecipientKey::new(channel, raw, rules).ok()
}

/// The key an entry moves to: that of `spelling` (the recipient as written, when the entry
/// knows it, else its old key), or the old key itself when it cannot be keyed (kept rather
/// than dropped: an operator may still remove it).
pub fn rekey(channel: Channel, old_key: &str, spelling: &str, rules: &RecipientRules) -> String {
    key(channel, spelling, rules)
        .or_else(|| key(channel, old_key, rules))
        .map_or_else(|| old_key.to_string(), RecipientKey::into_string)
}

/// Two suppressions of one recipient: the earlier stays (the list says since when).
pub fn merge_suppression(a: Suppression, b: Suppression) -> Suppression {
    if (b.at, &b.recipient, &b.reason) < (a.at, &a.recipient, &a.reason) {
        b
    } else {
        a
    }
}

/// Two "latest message" entries of one recipient: the newer message (ids are ULIDs,
/// ordered by creation).
pub fn merge_latest(a: MsgId, b: MsgId) -> MsgId {
    a.max(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::SuppressionSource;
    use herald_plugin_api::EmailCase;

    fn entry(recipient: &str, at: u64) -> Suppression {
        Suppression {
            recipient: recipient.into(),
            reason: "bounced".into(),
            source: SuppressionSource::Bounce,
            at,
        }
    }

    #[test]
    fn rekeying_is_idempotent() {
        let rules = RecipientRules::default();
        let strict = RecipientRules {
            email_case: EmailCase::Strict,
        };
        for (old, spelling, want, want_strict) in [
            (
                "ann lee <ann@example.com>",
                "Ann Lee <Ann@Example.com>",
                "ann@example.com",
                "Ann@example.com",
            ),
            (
                "ann lee <ann@example.com>",
                "ann lee <ann@example.com>",
                "ann@example.com",
                "ann@example.com",
            ),
            (
                "not an address",
                "not an address",
                "not an address",
                "not an address",
            ),
        ] {
            let k = rekey(Channel::Email, old, spelling, &rules);
            assert_eq!(k, want);
            assert_eq!(rekey(Channel::Email, &k, spelling, &rules), k);
            assert_eq!(rekey(Channel::Email, &k, &k, &rules), k);
            assert_eq!(rekey(Channel::Email, old, spelling, &strict), want_strict);
        }
        assert_eq!(
            rekey(
                Channel::Sms,
                "+1 (415) 555-0100",
                "+1 (415) 555-0100",
                &rules
            ),
            "+14155550100"
        );
    }

    #[test]
    fn merges_are_symmetric() {
        let (a, b) = (entry("a@example.com", 5), entry("A@example.com", 3));
        assert_eq!(merge_suppression(a.clone(), b.clone()), b);
        assert_eq!(merge_suppression(b.clone(), a), b);
        assert_eq!(merge_latest([1; 16], [2; 16]), [2; 16]);
        assert_eq!(merge_latest([2; 16], [1; 16]), [2; 16]);
        for c in Channel::ALL {
            assert_eq!(channel_of(c as u8), Some(c));
        }
    }
}
