//! The reply text of an inbound email: what the guest wrote, without the quoted original,
//! the client's attribution line or the signature — so "Yes, 2 of us!" reaches the host
//! (and the RSVP reader) rather than the whole invitation quoted back.
//!
//! Input is the email's text part, or its HTML part when the provider gives only that
//! (Resend's received-email API and SendGrid's Inbound Parse both carry `text` and `html`,
//! either possibly missing): the HTML is rendered to text first, with `<blockquote>` as
//! `> ` lines. Then, line by line:
//! - an attribution ("On Mon, Jun 2, 2025 at 10:14 AM Mia <rsvp@example.com> wrote:", in
//!   English, French, German, Spanish, Italian, Portuguese and Dutch, over one to three
//!   lines as clients wrap it) followed by `>` lines is dropped with them, and the guest's
//!   own lines after it are kept (bottom posting); one *not* followed by `>` lines starts
//!   the unquoted original, which is cut;
//! - `>` lines are dropped wherever they are (interleaved replies keep the guest's lines);
//! - an Outlook original — `-----Original Message-----` (or a localized or "Forwarded
//!   message" divider), or a `From:` / `Sent:` / `To:` / `Subject:` header block (localized
//!   too) — is cut with everything after it;
//! - a signature, from a `-- ` line or a "Sent from my iPhone"-style line, is cut.
//!
//! What remains is trimmed; it is empty when the email had nothing of its own.
//!
//! Behind the kit's `reply` feature, which a plugin that receives email enables. No plugin
//! receives an email's text yet: Resend's `email.received` webhook carries no body (the
//! text comes from its received-email API, which needs a fetch the webhook step cannot
//! make; the resend plugin reports an empty body rather than the subject), and the
//! sendgrid plugin takes no Inbound Parse posts yet.
//!
//! Owns: the text rules. Must not: know about RSVPs or the provider payload shapes (the
//! provider plugin passes `text` and `html` in).

/// The guest's own text of an inbound email, from its `text` part or else its `html` part.
pub fn reply_text(text: Option<&str>, html: Option<&str>) -> String {
    let text = text.filter(|t| !t.trim().is_empty());
    match (text, html.filter(|h| !h.trim().is_empty())) {
        (Some(text), _) => strip_quoted(text),
        (None, Some(html)) => strip_quoted(&html_to_text(html)),
        (None, None) => String::new(),
    }
}

/// HTML rendered as plain text, without wrapping; blockquotes become `> ` lines.
pub fn html_to_text(html: &str) -> String {
    html2text::config::plain_no_decorate()
        .string_from_read(html.as_bytes(), 100_000)
        .unwrap_or_default()
}

/// Attribution lines: (how the line starts, the verb it contains), lower case.
const ATTRIBUTIONS: [(&str, &str); 8] = [
    ("on ", " wrote"),
    ("le ", " a écrit"),
    ("am ", " schrieb "),
    ("el ", " escribió"),
    ("il ", " ha scritto"),
    ("em ", " escreveu"),
    ("op ", " schreef "),
    ("de ", " escribió"),
];

/// Outlook header names that open a quoted original (the first line of the block).
const FROM_HEADERS: [&str; 6] = ["from", "von", "de", "da", "van", "expéditeur"];
/// Header names that follow it within a few lines.
const OTHER_HEADERS: [&str; 26] = [
    "sent",
    "date",
    "to",
    "cc",
    "subject",
    "gesendet",
    "datum",
    "an",
    "betreff",
    "envoyé",
    "à",
    "objet",
    "enviado",
    "fecha",
    "para",
    "asunto",
    "inviato",
    "data",
    "a",
    "oggetto",
    "assunto",
    "verzonden",
    "aan",
    "onderwerp",
    "destinataire",
    "envoyé le",
];

/// How mobile clients sign (a line starting so ends the reply).
const DEVICE_SIGNATURES: [&str; 12] = [
    "sent from my ",
    "sent from outlook",
    "get outlook for ",
    "sent from yahoo mail",
    "envoyé de mon ",
    "envoyé depuis ",
    "von meinem ",
    "gesendet von ",
    "enviado desde mi ",
    "enviado do meu ",
    "inviato da ",
    "verzonden vanaf mijn ",
];

fn is_quote(line: &str) -> bool {
    line.trim_start().starts_with('>')
}

/// How sure a line (one to three lines joined) is an attribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attribution {
    /// "On <date>, <who> wrote:" and its translations.
    Sure,
    /// Only "<who> wrote:": an attribution if a quote follows, else the guest's words.
    IfQuoted,
}

fn attribution(text: &str) -> Option<Attribution> {
    let t = text.trim().to_lowercase();
    if !t.ends_with(':') {
        None
    } else if ATTRIBUTIONS
        .iter()
        .any(|(start, verb)| t.starts_with(start) && t.contains(verb))
    {
        Some(Attribution::Sure)
    } else if t.ends_with(" wrote:") {
        Some(Attribution::IfQuoted)
    } else {
        None
    }
}

/// A line like `From: Mia <rsvp@example.com>` (or `**From:**`), by its header name.
fn header_name(line: &str) -> Option<String> {
    let t = line.trim().trim_start_matches('*').to_lowercase();
    let (name, _) = t.split_once(':')?;
    let name = name.trim().trim_end_matches('*').trim();
    (!name.is_empty() && name.len() <= 20).then(|| name.to_string())
}

fn is_outlook_block(lines: &[&str], i: usize) -> bool {
    let Some(name) = header_name(lines[i]) else {
        return false;
    };
    if !FROM_HEADERS.contains(&name.as_str()) {
        return false;
    }
    lines[i + 1..]
        .iter()
        .filter(|l| !l.trim().is_empty())
        .take(4)
        .any(|l| header_name(l).is_some_and(|n| OTHER_HEADERS.contains(&n.as_str())))
}

/// `-----Original Message-----`, `---------- Forwarded message ---------` and the like.
fn is_divider(line: &str) -> bool {
    let t = line.trim();
    t.len() > 10
        && t.starts_with("-----")
        && t.ends_with("-----")
        && t.chars().any(char::is_alphabetic)
}

fn is_signature(line: &str) -> bool {
    let lower = line.trim().to_lowercase();
    line.trim_end() == "--"
        || line == "-- "
        || DEVICE_SIGNATURES.iter().any(|s| lower.starts_with(s))
}

/// Separator lines Outlook puts above a quoted original (`________`).
fn is_rule(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && t.chars().all(|c| matches!(c, '_' | '-' | '─' | '—'))
}

/// The guest's own lines of a plain-text email body (see the module comment).
pub fn strip_quoted(body: &str) -> String {
    let body = body.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = body.lines().collect();
    let mut kept: Vec<&str> = Vec::new();
    let mut i = 0;
    'lines: while i < lines.len() {
        let line = lines[i];
        if is_signature(line) || is_divider(line) || is_outlook_block(&lines, i) {
            // The quoted original or the signature starts here: nothing after is theirs.
            break;
        }
        if is_quote(line) {
            i += 1;
            continue;
        }
        // An attribution, possibly wrapped over up to three lines.
        for span in 1..=3 {
            let part = &lines[i..(i + span).min(lines.len())];
            if part.len() < span || part.iter().any(|l| is_quote(l) || l.trim().is_empty()) {
                break;
            }
            let kind = attribution(&part.join(" "));
            // Only "On <date> ... wrote:" is wrapped by clients; "<who> wrote:" is one line.
            let kind = kind.filter(|k| span == 1 || *k == Attribution::Sure);
            if let Some(kind) = kind {
                let next = lines[i + span..].iter().find(|l| !l.trim().is_empty());
                if next.is_some_and(|l| is_quote(l)) {
                    i += span;
                    continue 'lines;
                }
                if kind == Attribution::Sure {
                    break 'lines;
                }
                break;
            }
        }
        kept.push(line.trim_end());
        i += 1;
    }
    while kept
        .last()
        .is_some_and(|l| l.trim().is_empty() || is_rule(l))
    {
        kept.pop();
    }
    let start = kept
        .iter()
        .position(|l| !l.trim().is_empty())
        .unwrap_or(kept.len());
    // No more than one blank line in a row.
    let mut out = String::new();
    let mut blank = false;
    for line in &kept[start..] {
        if line.trim().is_empty() {
            blank = true;
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
            if blank {
                out.push('\n');
            }
        }
        blank = false;
        out.push_str(line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (what the client sent as text, as html, what the guest wrote)
    const CASES: &[(&str, Option<&str>, Option<&str>, &str)] = &[
        (
            "Gmail, plain text, attribution wrapped over two lines",
            Some(
                "Yes, we'll be there! 2 of us.\r\n\r\nAnn\r\n\r\nOn Mon, Jun 2, 2025 at 10:14\u{202f}AM Mia & Sam <\r\nrsvp@example.com> wrote:\r\n\r\n> Will you come to our wedding on June 14?\r\n> Reply YES or NO\r\n>\r\n",
            ),
            None,
            "Yes, we'll be there! 2 of us.\n\nAnn",
        ),
        (
            "Gmail, HTML only",
            None,
            Some(
                r#"<div dir="ltr">Yes, we&#39;ll be there! 2 of us.<div><br></div><div>Ann</div></div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Jun 2, 2025 at 10:14 AM Mia &amp; Sam &lt;<a href="mailto:rsvp@example.com">rsvp@example.com</a>&gt; wrote:<br></div><blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex"><div dir="ltr">Will you come?<br>Reply YES or NO</div></blockquote></div>"#,
            ),
            "Yes, we'll be there! 2 of us.\n\nAnn",
        ),
        (
            "Outlook desktop, plain text header block under a rule",
            Some(
                "No, sorry, we can't make it.\r\n\r\nBest,\r\nBo\r\n\r\n________________________________\r\nFrom: Mia & Sam <rsvp@example.com>\r\nSent: Monday, June 2, 2025 10:14 AM\r\nTo: Bo <bo@example.org>\r\nSubject: You're invited\r\n\r\nWill you come to our wedding?\r\n",
            ),
            None,
            "No, sorry, we can't make it.\n\nBest,\nBo",
        ),
        (
            "Outlook, HTML only, bold header names",
            None,
            Some(
                r#"<html><head><style>p{margin:0}</style></head><body><div>No, sorry, we can't make it.</div><div id="appendonsend"></div><hr style="display:inline-block;width:98%"><div id="divRplyFwdMsg" dir="ltr"><font face="Calibri"><b>From:</b> Mia &amp; Sam &lt;rsvp@example.com&gt;<br><b>Sent:</b> Monday, June 2, 2025 10:14 AM<br><b>To:</b> Bo &lt;bo@example.org&gt;<br><b>Subject:</b> You're invited</font><div>&nbsp;</div></div><div>Will you come?</div></body></html>"#,
            ),
            "No, sorry, we can't make it.",
        ),
        (
            "Outlook, Original Message divider",
            Some(
                "Maybe - I'll know by Friday.\n\n-----Original Message-----\nFrom: Mia & Sam [mailto:rsvp@example.com]\nSent: Monday, June 2, 2025 10:14 AM\nSubject: You're invited\n\nWill you come?\n",
            ),
            None,
            "Maybe - I'll know by Friday.",
        ),
        (
            "Outlook in German",
            Some(
                "Ja, wir kommen zu zweit!\n\nVon: Mia & Sam <rsvp@example.com>\nGesendet: Montag, 2. Juni 2025 10:14\nAn: Jan <jan@example.de>\nBetreff: Einladung\n\nKommt ihr?\n",
            ),
            None,
            "Ja, wir kommen zu zweit!",
        ),
        (
            "iPhone Mail, device signature then attribution",
            Some(
                "Yes! Can't wait 🎉\n\nSent from my iPhone\n\n> On Jun 2, 2025, at 10:14, Mia & Sam <rsvp@example.com> wrote:\n> \n> Will you come?\n",
            ),
            None,
            "Yes! Can't wait 🎉",
        ),
        (
            "Gmail in French",
            Some(
                "Oui, nous serons 3 !\n\nLe lun. 2 juin 2025 à 10:14, Mia & Sam <rsvp@example.com> a écrit :\n\n> Venez-vous ?\n",
            ),
            None,
            "Oui, nous serons 3 !",
        ),
        (
            "Thunderbird in German",
            Some(
                "Leider nicht, wir sind verreist.\n\nAm 02.06.2025 um 10:14 schrieb Mia & Sam:\n> Kommt ihr?\n",
            ),
            None,
            "Leider nicht, wir sind verreist.",
        ),
        (
            "Gmail in Spanish, attribution over three lines",
            Some(
                "¡Sí! Somos 4.\n\nEl lun, 2 jun 2025 a las 10:14, Mia & Sam\n(<rsvp@example.com>)\nescribió:\n\n> ¿Vienen?\n",
            ),
            None,
            "¡Sí! Somos 4.",
        ),
        (
            "Gmail in Italian",
            Some(
                "Sì, ci saremo\n\nIl giorno lun 2 giu 2025 alle ore 10:14 Mia & Sam <rsvp@example.com> ha scritto:\n\n> Venite?\n",
            ),
            None,
            "Sì, ci saremo",
        ),
        (
            "Gmail in Portuguese",
            Some(
                "Não posso ir, desculpa!\n\nEm seg., 2 de jun. de 2025 às 10:14, Mia & Sam <rsvp@example.com> escreveu:\n\n> Vocês vêm?\n",
            ),
            None,
            "Não posso ir, desculpa!",
        ),
        (
            "Gmail in Dutch",
            Some(
                "Ja graag, met z'n vieren.\n\nOp ma 2 jun 2025 om 10:14 schreef Mia & Sam <rsvp@example.com>:\n\n> Komen jullie?\n",
            ),
            None,
            "Ja graag, met z'n vieren.",
        ),
        (
            "A signature after '-- '",
            Some("Yes please, 2 of us\n\n-- \nAnn Lee\nLee & Partners | +1 415 555 0100\n"),
            None,
            "Yes please, 2 of us",
        ),
        (
            "Bottom posting: the quote first, the answer below",
            Some(
                "On Mon, Jun 2, 2025 at 10:14 AM Mia & Sam <rsvp@example.com> wrote:\n> Will you come?\n> Reply YES or NO\n\nYES - both of us!\n",
            ),
            None,
            "YES - both of us!",
        ),
        (
            "Interleaved answers keep the guest's lines",
            Some(
                "> Will you come?\nYes\n> How many of you?\nThree\n> Any allergies?\nNone, thanks\n",
            ),
            None,
            "Yes\nThree\nNone, thanks",
        ),
        (
            "Forwarded: nothing of their own",
            Some(
                "---------- Forwarded message ---------\nFrom: Mia & Sam <rsvp@example.com>\nDate: Mon, Jun 2, 2025 at 10:14 AM\nSubject: You're invited\n\nWill you come?\n",
            ),
            None,
            "",
        ),
        (
            "No quote at all",
            Some("  \n\nWe'd love to come!\n\n\n\nSee you there.  \n"),
            None,
            "We'd love to come!\n\nSee you there.",
        ),
        (
            "An empty text part falls back to the HTML",
            Some("   \r\n"),
            Some("<p>Maybe &#8211; depends on flights</p>"),
            "Maybe – depends on flights",
        ),
        (
            "'wrote:' in the guest's own words, with no quote after it, is theirs",
            Some("Yes!\nAs you wrote:\nbring dessert?\n"),
            None,
            "Yes!\nAs you wrote:\nbring dessert?",
        ),
        (
            "An Outlook-style attribution with the original unquoted below it",
            Some("No, sorry.\n\nOn 2 June 2025 10:14, Mia & Sam wrote:\nWill you come?\n"),
            None,
            "No, sorry.",
        ),
        ("Nothing at all", None, None, ""),
    ];

    #[test]
    fn reply_text_of_realistic_emails() {
        for (name, text, html, want) in CASES {
            assert_eq!(reply_text(*text, *html), *want, "{name}");
        }
    }
}
