//! The opt-out, opt-in and help keywords of SMS providers, in one place: the plugins use
//! them to mark an inbound message as an opt-out or opt-in, and the daemon to make sure a
//! STOP is never read as anything else (an RSVP, say).
//!
//! A keyword counts only when it is the whole message, as the providers apply them ("STOP"
//! opts out, "Please stop by at 5" does not). Case never matters. The two directions are
//! matched with different care, because their mistakes cost differently:
//! - **opt-out** ignores surrounding spaces *and punctuation* ("Stop.", "STOP!!"): reading a
//!   stop too eagerly only means not messaging someone;
//! - **opt-in** ignores surrounding spaces only ("START", not "Start!"), as exactly as the
//!   provider does: lifting a suppression the provider did not lift would send messages the
//!   provider then refuses.
//!
//! Owns: the lists and the matching. Must not: decide what an opt-out does (the store
//! suppresses; the plugin reports it).

/// What a keyword message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keyword {
    /// Stop sending to me (the provider blocks the number until an opt-in).
    OptOut,
    /// Send to me again (the provider lifts its block).
    OptIn,
    /// Tell me who you are (the provider answers; nothing changes).
    Help,
}

/// One provider's keyword lists, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeywordSet {
    pub opt_out: &'static [&'static str],
    pub opt_in: &'static [&'static str],
    pub help: &'static [&'static str],
}

/// Twilio's defaults for long codes and toll-free numbers (docs: "Customize users' opt-in
/// and opt-out experience with Advanced Opt-Out" and "Twilio support for opt-out keywords").
/// Twilio blocks the number after an opt-out (sends then fail with error 21610), lifts the
/// block after an opt-in, answers HELP/INFO itself, and forwards every one of them to the
/// webhook. Note `YES`: to Twilio it is an opt-in, whatever else it may mean to the host.
pub const TWILIO: KeywordSet = KeywordSet {
    opt_out: &[
        "STOP",
        "STOPALL",
        "UNSUBSCRIBE",
        "CANCEL",
        "END",
        "QUIT",
        "REVOKE",
        "OPTOUT",
    ],
    opt_in: &["START", "YES", "UNSTOP"],
    help: &["HELP", "INFO"],
};

/// Every provider's lists Herald knows (for checks that must hold whoever delivered the
/// message).
pub const ALL: &[KeywordSet] = &[TWILIO];

fn upper(s: &str) -> String {
    s.to_uppercase()
}

impl KeywordSet {
    /// The keyword `body` is, if it is one: opt-out first (a message on both lists, which
    /// the defaults have none of, stops), then opt-in, then help.
    pub fn classify(&self, body: &str) -> Option<Keyword> {
        if self.is_opt_out(body) {
            return Some(Keyword::OptOut);
        }
        let exact = upper(body.trim());
        if self.opt_in.contains(&exact.as_str()) {
            Some(Keyword::OptIn)
        } else if self.help.contains(&exact.as_str()) {
            Some(Keyword::Help)
        } else {
            None
        }
    }

    /// Whether `body` is one of the opt-out keywords, ignoring case and surrounding spaces
    /// and punctuation.
    pub fn is_opt_out(&self, body: &str) -> bool {
        let word =
            upper(body.trim_matches(|c: char| c.is_whitespace() || c.is_ascii_punctuation()));
        self.opt_out.contains(&word.as_str())
    }
}

/// Whether `body` opts out by the lists of any provider Herald knows. Checked before any
/// other reading of an inbound message: a STOP is never an answer.
pub fn is_opt_out(body: &str) -> bool {
    ALL.iter().any(|set| set.is_opt_out(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_defaults() {
        let rows: &[(&str, Option<Keyword>)] = &[
            ("STOP", Some(Keyword::OptOut)),
            ("  stop \n", Some(Keyword::OptOut)),
            ("Stop.", Some(Keyword::OptOut)),
            ("STOP!!", Some(Keyword::OptOut)),
            ("stopall", Some(Keyword::OptOut)),
            ("Unsubscribe", Some(Keyword::OptOut)),
            ("cancel", Some(Keyword::OptOut)),
            ("END", Some(Keyword::OptOut)),
            ("quit!", Some(Keyword::OptOut)),
            ("revoke", Some(Keyword::OptOut)),
            ("OptOut", Some(Keyword::OptOut)),
            ("start", Some(Keyword::OptIn)),
            (" UNSTOP ", Some(Keyword::OptIn)),
            ("Yes", Some(Keyword::OptIn)),
            ("YES", Some(Keyword::OptIn)),
            ("help", Some(Keyword::Help)),
            ("Info", Some(Keyword::Help)),
            // Not the whole message, or not exactly: no keyword.
            ("Yes!", None),
            ("Yes please", None),
            ("STOP by at 5?", None),
            ("Please stop", None),
            ("stop all", None),
            ("opt out", None),
            ("Start time?", None),
            ("", None),
            ("🛑", None),
        ];
        for (body, want) in rows {
            assert_eq!(TWILIO.classify(body), *want, "{body:?}");
        }
        assert!(is_opt_out("Stop."));
        assert!(!is_opt_out("Yes"));
    }

    #[test]
    fn lists_are_upper_case_and_disjoint() {
        for set in ALL {
            let all: Vec<&str> = [set.opt_out, set.opt_in, set.help].concat();
            for w in &all {
                assert_eq!(*w, w.to_uppercase());
                assert_eq!(
                    all.iter().filter(|x| *x == w).count(),
                    1,
                    "{w} listed twice"
                );
            }
        }
    }
}
