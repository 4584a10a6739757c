//! RSVP parsing: a guest's free-text reply — "Yes! 2 of us", "No puedo ir 😢", "👍",
//! "Nous serons 4" — read as a structured [`Rsvp`] (yes / no / maybe, and a headcount when
//! the reply gives one), or as nothing. **Never a guess**: a reply that matches no word,
//! or matches words of two answers ("yes but no"), carries no RSVP.
//!
//! The words come from a keyword table (config `[inbound.rsvp]`, see [`RsvpConfig`]):
//! built-in tables for English, Spanish, French, German, Italian, Portuguese, Dutch and
//! emoji (`rsvp_builtin.toml`, in the config's own format), and any languages the host
//! adds. Matching is insensitive to case, accents
//! (`sí` = `si`, `ß` = `ss`) and punctuation; phrases match whole words in order, the
//! longest first, so "not coming" is a no although "coming" is a yes, and "no problem" is
//! listed as meaning nothing.
//!
//! A table has, per language:
//! - `yes`, `no`, `maybe`: words and phrases. A word written `~no` is *weak*: it counts
//!   only at the start or end of a sentence, because it is also an everyday word in another
//!   language (Portuguese "no sábado" = "on Saturday"; Spanish "si puedo" = "if I can").
//! - `count`: phrases with `#` for a number, meaning "this many of us are coming"
//!   ("# of us", "nous serons #"), or with `=N` for a fixed number ("just me=1").
//! - `plus`: phrases with `#` for guests beyond the sender ("plus #": "plus one" = 2).
//! - `numbers`: number words, one entry per number from one (`"two|both"` for synonyms).
//! - `ignore`: phrases that contain answer words but answer nothing ("no problem").
//!
//! Headcounts: "yes 3", "yes, +1" (= 2), "2 of us", "we'll be 4", and a number right after
//! an answer that ends its sentence ("Sí, 3!"; but not "yes, see you at 7" or "yes 7pm").
//! A count with no answer word implies yes. `no` counts 0. Two different counts give none.
//!
//! A reply that is a provider's opt-out keyword (STOP, ...) is never an RSVP, and no
//! opt-out keyword may be listed as an answer (a guest sending just that word is
//! unsubscribed). Replies longer than [`MAX_WORDS`] words are not read: an answer is short,
//! and a long text would be a guess.
//!
//! Wiring: `config` builds the table from `[inbound.rsvp]` with [`RsvpTable::build`] at
//! load and reload (absent: every built-in table); `webhooks` calls [`RsvpTable::parse`]
//! on each `InboundMessage` whose `opt_out` is not `Some(true)`, and the store puts the
//! result on the `inbound` event (`Event::rsvp`).
//!
//! Owns: the tables, their validation, and the reading of one reply. Must not: touch events
//! or storage (the inbound path attaches the result).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use herald_plugin_api::keywords;
use herald_plugin_api::{Rsvp, RsvpAnswer};
use icu_normalizer::DecomposingNormalizerBorrowed;
use icu_properties::CodePointMapData;
use icu_properties::props::GeneralCategory;
use serde::Deserialize;

/// Replies with more words than this carry no RSVP.
pub const MAX_WORDS: usize = 80;

/// `[inbound.rsvp]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RsvpConfig {
    /// Which built-in tables to use; absent: all of [`BUILTIN_LANGUAGES`].
    #[serde(default)]
    pub builtin: Option<Vec<String>>,
    /// The largest headcount believed (a bigger number is not a headcount); default 20.
    #[serde(default)]
    pub max_headcount: Option<u32>,
    /// The host's own languages (or extra words), by a name of its choosing:
    /// `[inbound.rsvp.languages.pl]`.
    #[serde(default)]
    pub languages: BTreeMap<String, LanguageConfig>,
}

/// One language's words (`[inbound.rsvp.languages.<name>]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageConfig {
    pub yes: Option<Vec<String>>,
    pub no: Option<Vec<String>>,
    pub maybe: Option<Vec<String>>,
    pub count: Option<Vec<String>>,
    pub plus: Option<Vec<String>>,
    pub numbers: Option<Vec<String>>,
    pub ignore: Option<Vec<String>>,
}

/// The built-in tables, in the format of `[inbound.rsvp.languages.<name>]`.
const BUILTIN_TOML: &str = include_str!("rsvp_builtin.toml");

/// The names of the built-in tables (the tables of [`BUILTIN_TOML`]).
pub const BUILTIN_LANGUAGES: [&str; 8] = ["en", "es", "fr", "de", "it", "pt", "nl", "emoji"];

fn builtin_tables() -> BTreeMap<String, LanguageConfig> {
    toml::from_str(BUILTIN_TOML).expect("rsvp_builtin.toml is valid (a unit test checks it)")
}

/// One token of folded text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A word (letters and digits, inner apostrophes kept), or one emoji.
    Word(String),
    /// Digits only.
    Num(u32),
    /// `+` right before digits: `+1`.
    Plus(u32),
    /// Sentence punctuation or a line break; `true` when it ends a question.
    Break(bool),
    /// `#` in a pattern: any number.
    Slot,
}

/// What a matched phrase means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    Answer(RsvpAnswer),
    /// "this many of us" (the number from the slot, or fixed).
    Count(Option<u32>),
    /// "plus this many".
    Plus,
    Ignore,
}

impl fmt::Display for Meaning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Meaning::Answer(a) => f.write_str(a.as_str()),
            Meaning::Count(_) => f.write_str("count"),
            Meaning::Plus => f.write_str("plus"),
            Meaning::Ignore => f.write_str("ignore"),
        }
    }
}

#[derive(Debug, Clone)]
struct Phrase {
    toks: Vec<Tok>,
    meaning: Meaning,
    /// Counts only at the start or end of a sentence.
    weak: bool,
}

/// A validated keyword table, ready to read replies.
#[derive(Debug, Clone)]
pub struct RsvpTable {
    /// Phrases by their first word, longest first.
    by_word: HashMap<String, Vec<Phrase>>,
    /// Phrases that start with a number slot, longest first.
    by_slot: Vec<Phrase>,
    numbers: HashMap<String, u32>,
    max_headcount: u32,
}

/// Lower case, accents and skin tones removed, `ß` → `ss`, typographic apostrophes → `'`.
fn fold(text: &str) -> String {
    let decomposed = DecomposingNormalizerBorrowed::new_nfd().normalize(text);
    let categories = CodePointMapData::<GeneralCategory>::new();
    let mut out = String::with_capacity(text.len());
    for c in decomposed.chars() {
        if categories.get(c) == GeneralCategory::NonspacingMark
            || ('\u{1F3FB}'..='\u{1F3FF}').contains(&c)
        {
            continue;
        }
        match c {
            'ß' => out.push_str("ss"),
            '’' | '‘' | 'ʼ' | '`' | '´' => out.push('\''),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

fn is_break(c: char) -> bool {
    matches!(
        c,
        ',' | '.' | '!' | '?' | ';' | ':' | '…' | '\n' | '\r' | '¡' | '¿' | '。' | '！' | '？'
    )
}

fn is_question(c: char) -> bool {
    matches!(c, '?' | '？')
}

/// Splits folded text into tokens. `slots`: read `#` as a number slot (patterns only).
fn tokenize(folded: &str, slots: bool) -> Vec<Tok> {
    let categories = CodePointMapData::<GeneralCategory>::new();
    let chars: Vec<char> = folded.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    // Consecutive breaks are one; it ends a question if any of them is a '?'.
    let push_break = |toks: &mut Vec<Tok>, question: bool| match toks.last_mut() {
        Some(Tok::Break(q)) => *q |= question,
        Some(_) => toks.push(Tok::Break(question)),
        None => {}
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric()
                    || (chars[i] == '\'' && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric())))
            {
                i += 1;
            }
            // A number glued to others by : / . , - is a time, date or range: not a count.
            let all_digits = chars[start..i].iter().all(char::is_ascii_digit);
            if all_digits {
                while i + 1 < chars.len()
                    && matches!(chars[i], ':' | '/' | '.' | ',' | '-')
                    && chars[i + 1].is_ascii_digit()
                {
                    i += 1;
                    while i < chars.len() && chars[i].is_alphanumeric() {
                        i += 1;
                    }
                }
            }
            let word: String = chars[start..i].iter().collect();
            match word.parse::<u32>() {
                Ok(n) if all_digits && word.len() <= 7 => toks.push(Tok::Num(n)),
                _ => toks.push(Tok::Word(word)),
            }
        } else if c == '+' && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
            let start = i + 1;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let digits: String = chars[start..i].iter().collect();
            match digits.parse::<u32>() {
                Ok(n) if digits.len() <= 3 => toks.push(Tok::Plus(n)),
                _ => toks.push(Tok::Word(format!("+{digits}"))),
            }
        } else if slots && c == '#' {
            toks.push(Tok::Slot);
            i += 1;
        } else if is_break(c) {
            push_break(&mut toks, is_question(c));
            i += 1;
        } else if categories.get(c) == GeneralCategory::OtherSymbol {
            toks.push(Tok::Word(c.to_string()));
            i += 1;
        } else {
            i += 1;
        }
    }
    toks
}

/// An item of a read reply: a matched phrase (with its number, if it had a slot), or a
/// token no phrase took.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Hit {
        meaning: Meaning,
        number: Option<u32>,
        weak: bool,
    },
    Free(Tok),
}

impl RsvpTable {
    /// Builds the table from `[inbound.rsvp]`; every mistake is an error naming it.
    pub fn build(config: &RsvpConfig) -> Result<RsvpTable, String> {
        let at = "inbound.rsvp";
        let mut b = TableBuilder::default();
        let builtin: Vec<String> = match &config.builtin {
            Some(list) => list.clone(),
            None => BUILTIN_LANGUAGES.iter().map(|s| s.to_string()).collect(),
        };
        let tables = builtin_tables();
        for name in &builtin {
            let Some(lang) = tables.get(name) else {
                return Err(format!(
                    "{at}.builtin: there is no built-in table {name:?} (there are: {})",
                    BUILTIN_LANGUAGES.join(", ")
                ));
            };
            b.add(&format!("built-in table {name:?}"), lang, true)?;
        }
        for (name, lang) in &config.languages {
            b.add(&format!("{at}.languages.{name}"), lang, false)?;
        }
        if b.phrases.is_empty() {
            return Err(format!(
                "{at}: no words at all; keep a built-in table (builtin = [\"en\", ...]) or add \
                 [{at}.languages.<name>] with yes and no words"
            ));
        }
        let max_headcount = config.max_headcount.unwrap_or(20);
        if !(1..=10_000).contains(&max_headcount) {
            return Err(format!(
                "{at}.max_headcount {max_headcount} must be between 1 and 10000"
            ));
        }
        Ok(b.finish(max_headcount))
    }

    /// The table of the built-in defaults (every built-in language).
    pub fn builtin() -> RsvpTable {
        RsvpTable::build(&RsvpConfig::default()).expect("the built-in tables are valid")
    }

    /// Reads `reply` (an SMS body, or an email's reply text). `None` when it is no RSVP.
    pub fn parse(&self, reply: &str) -> Option<Rsvp> {
        if keywords::is_opt_out(reply) {
            return None;
        }
        let toks = tokenize(&fold(reply), false);
        if toks.iter().filter(|t| !matches!(t, Tok::Break(_))).count() > MAX_WORDS {
            return None;
        }
        let items = self.items(&toks);
        self.decide(&items)
    }

    /// Matches phrases (longest first; a word before a slot on a tie) left to right.
    fn items(&self, toks: &[Tok]) -> Vec<Item> {
        let mut items = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            let mut candidates: Vec<&Phrase> = Vec::new();
            match &toks[i] {
                Tok::Word(w) => {
                    candidates.extend(self.by_word.get(w).into_iter().flatten());
                    // A number word can fill a leading slot ("two of us").
                    if self.numbers.contains_key(w) {
                        candidates.extend(&self.by_slot);
                    }
                }
                Tok::Num(_) => candidates.extend(&self.by_slot),
                _ => {}
            }
            candidates.sort_by_key(|p| {
                (
                    std::cmp::Reverse(p.toks.len()),
                    p.toks.iter().filter(|t| **t == Tok::Slot).count(),
                )
            });
            let hit = candidates
                .into_iter()
                .find_map(|p| self.match_at(p, &toks[i..]).map(|n| (p, n)));
            match hit {
                Some((p, number)) => {
                    items.push(Item::Hit {
                        meaning: p.meaning,
                        number,
                        weak: p.weak,
                    });
                    i += p.toks.len();
                }
                None => {
                    items.push(Item::Free(toks[i].clone()));
                    i += 1;
                }
            }
        }
        items
    }

    /// The slot's number if `p` matches at the start of `toks` (`Some(None)`: matched, no
    /// slot).
    fn match_at(&self, p: &Phrase, toks: &[Tok]) -> Option<Option<u32>> {
        if toks.len() < p.toks.len() {
            return None;
        }
        let mut number = None;
        for (want, got) in p.toks.iter().zip(toks) {
            match (want, got) {
                (Tok::Word(a), Tok::Word(b)) if a == b => {}
                (Tok::Slot, Tok::Num(n)) => number = Some(*n),
                (Tok::Slot, Tok::Word(w)) => number = Some(*self.numbers.get(w)?),
                _ => return None,
            }
        }
        Some(number)
    }

    fn number_of(&self, item: Option<&Item>) -> Option<u32> {
        match item? {
            Item::Free(Tok::Num(n)) => Some(*n),
            Item::Free(Tok::Word(w)) => self.numbers.get(w).copied(),
            _ => None,
        }
    }

    fn decide(&self, items: &[Item]) -> Option<Rsvp> {
        let is_break = |k: usize| matches!(items.get(k), Some(Item::Free(Tok::Break(_))));
        let ends_sentence = |k: usize| k >= items.len() || is_break(k);
        let starts_sentence = |k: usize| k == 0 || is_break(k - 1);
        // Whether item `k` is in a question ("Who's coming?"): its sentence ends with '?'.
        let in_question = |k: usize| {
            items[k..]
                .iter()
                .find_map(|item| match item {
                    Item::Free(Tok::Break(q)) => Some(*q),
                    _ => None,
                })
                .unwrap_or(false)
        };
        let mut answers: Vec<RsvpAnswer> = Vec::new();
        // Numbers the reply gives for "how many of us": (value, implies attending).
        let mut counts: Vec<u32> = Vec::new();
        for (k, item) in items.iter().enumerate() {
            let Item::Hit {
                meaning,
                number,
                weak,
            } = item
            else {
                if let Item::Free(Tok::Plus(n)) = item
                    && !in_question(k)
                {
                    counts.push(n.saturating_add(1));
                }
                continue;
            };
            if (*weak && !starts_sentence(k) && !ends_sentence(k + 1)) || in_question(k) {
                continue;
            }
            match meaning {
                Meaning::Answer(a) => {
                    if !answers.contains(a) {
                        answers.push(*a);
                    }
                    // "yes 3", "sí, 3!": a number right after the answer, ending a sentence.
                    let next = if is_break(k + 1) { k + 2 } else { k + 1 };
                    if let Some(n) = self.number_of(items.get(next))
                        && ends_sentence(next + 1)
                    {
                        counts.push(n);
                    }
                }
                Meaning::Count(fixed) => {
                    if let Some(n) = fixed.or(*number) {
                        counts.push(n);
                    }
                }
                Meaning::Plus => {
                    if let Some(n) = number {
                        counts.push(n.saturating_add(1));
                    }
                }
                Meaning::Ignore => {}
            }
        }
        let answer = match answers.as_slice() {
            [] if !counts.is_empty() => RsvpAnswer::Yes,
            [a] => *a,
            _ => return None,
        };
        counts.sort_unstable();
        counts.dedup();
        if answer == RsvpAnswer::No {
            // A "no" with a number of guests coming contradicts itself.
            return match counts.as_slice() {
                [] | [0] => Some(Rsvp {
                    answer,
                    headcount: Some(0),
                }),
                _ => None,
            };
        }
        let headcount = match counts.as_slice() {
            [n] if (1..=self.max_headcount).contains(n) => Some(*n),
            _ => None,
        };
        Some(Rsvp { answer, headcount })
    }
}

#[derive(Debug, Default)]
struct TableBuilder {
    /// Folded phrase text → (meaning, weak, where it was listed).
    phrases: BTreeMap<Vec<String>, (Phrase, String)>,
    numbers: BTreeMap<String, (u32, String)>,
}

fn describe(toks: &[Tok]) -> String {
    toks.iter()
        .map(|t| match t {
            Tok::Word(w) => w.clone(),
            Tok::Num(n) => n.to_string(),
            Tok::Plus(n) => format!("+{n}"),
            Tok::Slot => "#".into(),
            Tok::Break(_) => ",".into(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl TableBuilder {
    fn add(&mut self, at: &str, lang: &LanguageConfig, builtin: bool) -> Result<(), String> {
        if !builtin && (lang.yes.is_none() || lang.no.is_none()) {
            let missing = if lang.yes.is_none() { "yes" } else { "no" };
            return Err(format!(
                "{at}: `{missing}` is missing; a language needs yes and no words \
                 (e.g. {missing} = [\"...\"])"
            ));
        }
        let lists = [
            ("yes", &lang.yes),
            ("no", &lang.no),
            ("maybe", &lang.maybe),
            ("count", &lang.count),
            ("plus", &lang.plus),
            ("numbers", &lang.numbers),
            ("ignore", &lang.ignore),
        ];
        for (key, list) in lists {
            if let Some(list) = list
                && list.is_empty()
                && !builtin
            {
                return Err(format!(
                    "{at}.{key} is empty; list at least one entry or leave the key out"
                ));
            }
        }
        if let Some(numbers) = &lang.numbers {
            for (i, entry) in numbers.iter().enumerate() {
                let value = i as u32 + 1;
                for word in entry.split('|') {
                    let folded = fold(word.trim());
                    let toks = tokenize(&folded, false);
                    let [Tok::Word(w)] = toks.as_slice() else {
                        return Err(format!(
                            "{at}.numbers: {word:?} is not one word (entries are the words \
                             for 1, 2, 3... in order; \"two|both\" for synonyms)"
                        ));
                    };
                    if let Some((other, other_at)) = self.numbers.get(w)
                        && *other != value
                    {
                        return Err(format!(
                            "{at}.numbers: {word:?} is {value} here but {other} in {other_at}"
                        ));
                    }
                    self.numbers.insert(w.clone(), (value, at.to_string()));
                }
            }
        }
        for (key, list) in lists {
            let Some(list) = list else { continue };
            let meaning = match key {
                "yes" => Meaning::Answer(RsvpAnswer::Yes),
                "no" => Meaning::Answer(RsvpAnswer::No),
                "maybe" => Meaning::Answer(RsvpAnswer::Maybe),
                "count" => Meaning::Count(None),
                "plus" => Meaning::Plus,
                "ignore" => Meaning::Ignore,
                _ => continue,
            };
            for raw in list {
                self.phrase(at, key, raw, meaning)?;
            }
        }
        Ok(())
    }

    fn phrase(&mut self, at: &str, key: &str, raw: &str, meaning: Meaning) -> Result<(), String> {
        let mut text = raw.trim();
        let weak = text.starts_with('~');
        if weak {
            text = &text[1..];
        }
        let mut meaning = meaning;
        if key == "count"
            && let Some((phrase, n)) = text.rsplit_once('=')
        {
            let n: u32 = n.trim().parse().map_err(|_| {
                format!("{at}.count: {raw:?}: after '=' comes a number (\"just me=1\")")
            })?;
            meaning = Meaning::Count(Some(n));
            text = phrase;
        }
        let slotted = matches!(key, "count" | "plus");
        if !slotted && text.contains('#') {
            return Err(format!(
                "{at}.{key}: {raw:?} has a #, which only count and plus phrases take"
            ));
        }
        let toks = tokenize(&fold(text), slotted);
        if toks.is_empty() || toks.iter().any(|t| matches!(t, Tok::Break(_))) {
            return Err(format!(
                "{at}.{key}: {raw:?} is not words (punctuation and case do not count; \
                 write the words)"
            ));
        }
        if toks.iter().any(|t| matches!(t, Tok::Num(_) | Tok::Plus(_))) {
            return Err(format!(
                "{at}.{key}: {raw:?} has a number; write # for \"any number\" in count and \
                 plus phrases"
            ));
        }
        let slots = toks.iter().filter(|t| **t == Tok::Slot).count();
        let wants_slot = match meaning {
            Meaning::Count(None) | Meaning::Plus => 1,
            _ => 0,
        };
        if slots != wants_slot {
            return Err(if wants_slot == 1 {
                format!(
                    "{at}.{key}: {raw:?} needs exactly one # where the number goes \
                     (e.g. \"# of us\")"
                )
            } else {
                format!("{at}.{key}: {raw:?} has a #, which only count and plus phrases take")
            });
        }
        if weak && toks.len() != 1 {
            return Err(format!(
                "{at}.{key}: {raw:?}: only a single word can be weak (~)"
            ));
        }
        if matches!(meaning, Meaning::Answer(_)) && keywords::is_opt_out(text) {
            return Err(format!(
                "{at}.{key}: {raw:?} is an SMS opt-out keyword: a guest who sends just that \
                 word is unsubscribed, so it cannot also be an answer"
            ));
        }
        let words: Vec<String> = toks
            .iter()
            .map(|t| describe(std::slice::from_ref(t)))
            .collect();
        if let Some((other, other_at)) = self.phrases.get(&words) {
            if other.meaning != meaning {
                return Err(format!(
                    "{at}.{key}: {:?} is listed as {} here and as {} in {other_at}; a word may \
                     mean one answer only",
                    describe(&toks),
                    meaning,
                    other.meaning
                ));
            }
            // Listed twice with one meaning: weak if either listing says so.
            let weak = weak || other.weak;
            let at = other_at.clone();
            self.phrases.insert(
                words,
                (
                    Phrase {
                        toks,
                        meaning,
                        weak,
                    },
                    at,
                ),
            );
            return Ok(());
        }
        self.phrases.insert(
            words,
            (
                Phrase {
                    toks,
                    meaning,
                    weak,
                },
                at.to_string(),
            ),
        );
        Ok(())
    }

    fn finish(self, max_headcount: u32) -> RsvpTable {
        let mut by_word: HashMap<String, Vec<Phrase>> = HashMap::new();
        let mut by_slot = Vec::new();
        for (_, (p, _)) in self.phrases {
            match &p.toks[0] {
                Tok::Word(w) => by_word.entry(w.clone()).or_default().push(p),
                _ => by_slot.push(p),
            }
        }
        RsvpTable {
            by_word,
            by_slot,
            numbers: self.numbers.into_iter().map(|(w, (n, _))| (w, n)).collect(),
            max_headcount,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn table() -> RsvpTable {
        RsvpTable::builtin()
    }

    fn read(t: &RsvpTable, reply: &str) -> String {
        t.parse(reply)
            .map_or_else(|| "—".to_string(), |r| r.to_string())
    }

    /// Real-world replies to invitations, in several languages: what each reads as.
    /// "—" is no RSVP: the reply matched nothing, or was ambiguous, or was not an answer.
    #[test]
    fn real_world_replies() {
        let replies = [
            // English
            "Yes",
            "YES!!!",
            "yes 3",
            "Yes, +1",
            "yes plus one",
            "2 of us",
            "We'll be 4",
            "Yes! We'll be there 🎉",
            "Count us in, 3 people",
            "Sure thing, see you Saturday",
            "Yes, both of us",
            "Just me",
            "Of course!",
            "Yes! Can't wait",
            "Yes, we'd love to come! Thank you so much for the invitation.",
            "No",
            "no thanks",
            "nope",
            "Sorry, we can't make it",
            "Unfortunately we won't be able to attend 😢",
            "Thank you, but no.",
            "Definitely not",
            "Not sure yet",
            "Maybe, I'll let you know by Friday",
            "maybe 2",
            "I have no idea yet",
            // English: must not match, or must not guess
            "yes but no",
            "We would love to but can't make it",
            "Yes! No kids though",
            "No, 2 of us are coming",
            "Who is this?",
            "Who's coming?",
            "yesterday was great",
            "noon works",
            "STOP",
            "Stop.",
            "cancel",
            "ok",
            "Y",
            "Thanks for the invite!",
            "What time does it start?",
            "I'm in Paris that weekend, sorry",
            "Liked “Can you come on June 14? Reply YES or NO”",
            "No problem, we'll be there!",
            "Yes, see you at 7",
            "yes 7pm works",
            "Yes 2 or 3",
            "yes 150",
            "Yes, 2 adults and 1 child",
            "Is it ok if we're 3?",
            // Emoji
            "👍",
            "👍🏽 3",
            "✅✅",
            "❌",
            "🤔",
            "🤷‍♀️",
            "❤️",
            "+1",
            // Spanish
            "Sí",
            "Si, somos 4",
            "¡Claro que sí! Vamos 2",
            "No puedo, lo siento",
            "No sé todavía",
            "Tal vez",
            "Sí, yo más uno",
            "¿Quién eres?",
            "No hay problema, allí estaremos",
            // French
            "Oui",
            "Oui, nous serons 3",
            "Avec plaisir, on sera 2 !",
            "Non, désolé",
            "Je ne pourrai pas venir malheureusement",
            "Peut-être",
            "Je te dis ça demain",
            "Oui +1",
            // German
            "Ja",
            "Ja, wir kommen zu zweit",
            "Leider nicht",
            "Vielleicht",
            "Wir sind 5",
            "Das ist ja toll!",
            "Nein danke",
            "Weiß noch nicht",
            // Italian
            "Sì, ci saremo",
            "Sì! Non vedo l'ora",
            "No, purtroppo no",
            "Forse",
            "Siamo in 3",
            "Non posso, mi dispiace",
            // Portuguese
            "Sim",
            "Sim, somos 3",
            "Não posso ir",
            "Talvez",
            "Estaremos lá no sábado",
            "Ainda não sei",
            "Com certeza! Eu mais 2",
            // Dutch
            "Ja hoor",
            "We komen met 3",
            "Nee, helaas niet",
            "Misschien",
            "Ja graag, met z'n vieren",
            "Met z’n tweeën",
        ];
        let t = table();
        let out: String = replies
            .iter()
            .map(|r| format!("{r:?} → {}\n", read(&t, r)))
            .collect();
        assert!(replies.len() >= 60);
        expect![[r#"
            "Yes" → yes
            "YES!!!" → yes
            "yes 3" → yes (3)
            "Yes, +1" → yes (2)
            "yes plus one" → yes (2)
            "2 of us" → yes (2)
            "We'll be 4" → yes (4)
            "Yes! We'll be there 🎉" → yes
            "Count us in, 3 people" → yes (3)
            "Sure thing, see you Saturday" → yes
            "Yes, both of us" → yes (2)
            "Just me" → yes (1)
            "Of course!" → yes
            "Yes! Can't wait" → yes
            "Yes, we'd love to come! Thank you so much for the invitation." → yes
            "No" → no (0)
            "no thanks" → no (0)
            "nope" → no (0)
            "Sorry, we can't make it" → no (0)
            "Unfortunately we won't be able to attend 😢" → no (0)
            "Thank you, but no." → no (0)
            "Definitely not" → no (0)
            "Not sure yet" → maybe
            "Maybe, I'll let you know by Friday" → maybe
            "maybe 2" → maybe (2)
            "I have no idea yet" → maybe
            "yes but no" → —
            "We would love to but can't make it" → —
            "Yes! No kids though" → —
            "No, 2 of us are coming" → —
            "Who is this?" → —
            "Who's coming?" → —
            "yesterday was great" → —
            "noon works" → —
            "STOP" → —
            "Stop." → —
            "cancel" → —
            "ok" → —
            "Y" → —
            "Thanks for the invite!" → —
            "What time does it start?" → —
            "I'm in Paris that weekend, sorry" → —
            "Liked “Can you come on June 14? Reply YES or NO”" → —
            "No problem, we'll be there!" → yes
            "Yes, see you at 7" → yes
            "yes 7pm works" → yes
            "Yes 2 or 3" → yes
            "yes 150" → yes
            "Yes, 2 adults and 1 child" → yes
            "Is it ok if we're 3?" → —
            "👍" → yes
            "👍🏽 3" → yes (3)
            "✅✅" → yes
            "❌" → no (0)
            "🤔" → maybe
            "🤷\u{200d}♀\u{fe0f}" → maybe
            "❤\u{fe0f}" → —
            "+1" → yes (2)
            "Sí" → yes
            "Si, somos 4" → yes (4)
            "¡Claro que sí! Vamos 2" → yes (2)
            "No puedo, lo siento" → no (0)
            "No sé todavía" → maybe
            "Tal vez" → maybe
            "Sí, yo más uno" → yes (2)
            "¿Quién eres?" → —
            "No hay problema, allí estaremos" → yes
            "Oui" → yes
            "Oui, nous serons 3" → yes (3)
            "Avec plaisir, on sera 2 !" → yes (2)
            "Non, désolé" → no (0)
            "Je ne pourrai pas venir malheureusement" → no (0)
            "Peut-être" → maybe
            "Je te dis ça demain" → maybe
            "Oui +1" → yes (2)
            "Ja" → yes
            "Ja, wir kommen zu zweit" → yes (2)
            "Leider nicht" → no (0)
            "Vielleicht" → maybe
            "Wir sind 5" → yes (5)
            "Das ist ja toll!" → —
            "Nein danke" → no (0)
            "Weiß noch nicht" → maybe
            "Sì, ci saremo" → yes
            "Sì! Non vedo l'ora" → yes
            "No, purtroppo no" → no (0)
            "Forse" → maybe
            "Siamo in 3" → yes (3)
            "Non posso, mi dispiace" → no (0)
            "Sim" → yes
            "Sim, somos 3" → yes (3)
            "Não posso ir" → no (0)
            "Talvez" → maybe
            "Estaremos lá no sábado" → yes
            "Ainda não sei" → maybe
            "Com certeza! Eu mais 2" → yes (3)
            "Ja hoor" → yes
            "We komen met 3" → yes (3)
            "Nee, helaas niet" → no (0)
            "Misschien" → maybe
            "Ja graag, met z'n vieren" → yes (4)
            "Met z’n tweeën" → yes (2)
        "#]]
        .assert_eq(&out);
    }

    fn config(toml_text: &str) -> Result<RsvpTable, String> {
        let c: RsvpConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        RsvpTable::build(&c)
    }

    #[test]
    fn matching_ignores_case_accents_and_punctuation() {
        let t = table();
        for reply in ["sí", "SI", "Sí!!", "  ¡sí!  ", "si."] {
            assert_eq!(read(&t, reply), "yes", "{reply:?}");
        }
        for reply in ["NÃO", "nao", "Não!"] {
            assert_eq!(read(&t, reply), "no (0)", "{reply:?}");
        }
        assert_eq!(read(&t, "WEISS NICHT"), "maybe");
        assert_eq!(read(&t, "weiß nicht"), "maybe");
        assert_eq!(read(&t, "👍🏿"), "yes");
    }

    #[test]
    fn long_texts_are_not_read() {
        let t = table();
        let long = format!("Yes! {}", "blah ".repeat(MAX_WORDS));
        assert_eq!(read(&t, &long), "—");
    }

    #[test]
    fn a_host_adds_a_language() {
        let t = config(
            r#"
            builtin = ["emoji"]
            max_headcount = 50
            [languages.pl]
            yes = ["tak", "będę", "będziemy"]
            no = ["nie", "nie mogę", "nie będę"]
            maybe = ["może", "nie wiem"]
            count = ["będzie nas #"]
            plus = ["plus #"]
            numbers = ["jeden|jedna", "dwa|dwie|oboje", "trzy"]
            ignore = ["nie ma problemu"]
            "#,
        )
        .unwrap();
        for (reply, want) in [
            ("Tak!", "yes"),
            ("TAK, będzie nas 3", "yes (3)"),
            ("tak plus dwa", "yes (3)"),
            ("Nie mogę, przepraszam", "no (0)"),
            ("Nie wiem jeszcze", "maybe"),
            ("Nie ma problemu, będziemy", "yes"),
            ("👍", "yes"),
            // English is not selected.
            ("yes", "—"),
        ] {
            assert_eq!(read(&t, reply), want, "{reply:?}");
        }
    }

    #[test]
    fn config_mistakes_are_named() {
        let cases = [
            (
                "[languages.xx]\nyes = [\"nee\"]\nno = [\"nope\"]",
                "\"nee\" is listed as yes here and as no",
            ),
            ("builtin = [\"klingon\"]", "no built-in table \"klingon\""),
            (
                "[languages.xx]\nyes = []\nno = [\"x\"]",
                "languages.xx.yes is empty",
            ),
            ("[languages.xx]\nyes = [\"da\"]", "`no` is missing"),
            ("builtin = []", "no words at all"),
            (
                "builtin = []\n[languages.xx]\nyes = [\"da\"]\nno = [\"cancel\"]",
                "opt-out keyword",
            ),
            (
                "builtin = []\n[languages.xx]\nyes = [\"da\"]\nno = [\"njet\"]\ncount = [\"we are\"]",
                "needs exactly one #",
            ),
            (
                "builtin = []\n[languages.xx]\nyes = [\"da #\"]\nno = [\"njet\"]",
                "only count and plus phrases",
            ),
            (
                "builtin = []\n[languages.xx]\nyes = [\"da 2\"]\nno = [\"njet\"]",
                "has a number",
            ),
            (
                "builtin = []\n[languages.xx]\nyes = [\"!!!\"]\nno = [\"njet\"]",
                "is not words",
            ),
            (
                "builtin = []\n[languages.xx]\nyes = [\"~da da\"]\nno = [\"njet\"]",
                "only a single word can be weak",
            ),
            (
                "[languages.xx]\nyes = [\"da\"]\nno = [\"njet\"]\nnumbers = [\"two\"]",
                "\"two\" is 1 here but 2",
            ),
            ("max_headcount = 0", "max_headcount 0"),
            ("colour = \"blue\"", "unknown field"),
        ];
        for (text, needle) in cases {
            let err = config(text).unwrap_err();
            assert!(err.contains(needle), "{text:?} → {err}");
        }
    }

    #[test]
    fn every_built_in_table_builds_alone_and_together() {
        let names: Vec<String> = builtin_tables().into_keys().collect();
        let mut listed: Vec<String> = BUILTIN_LANGUAGES.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(names, listed);
        for name in BUILTIN_LANGUAGES {
            config(&format!("builtin = [{name:?}]")).unwrap();
        }
        table();
    }
}
