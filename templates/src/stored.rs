//! Stored templates: the daemon's `[templates] dir`, a folder of template files a `send`
//! names instead of carrying its own subject and body (so a host does not render emails
//! itself).
//!
//! A stored template is the bulk format's message part: `tags`, `[email]` (subject, text,
//! html, from, reply_to) and/or `[sms]` (body, from), each a minijinja template in
//! strict-undefined mode, rendered over the send's `vars`. The bulk-only keys (`channel`,
//! `key`, `campaign`, `idempotency_key`, the recipient columns) are refused: the send gives
//! the recipient, the channel and the key. Its name is the file stem (`welcome.toml` is
//! `welcome`).
//!
//! [`StoredTemplates::load`] reads and compiles every `*.toml` file of the folder (at most
//! [`MAX_FILES`], each at most [`MAX_FILE_SIZE`]); any error names the file, line and
//! column ([`LoadError`]). [`StoredTemplate::apply`] fills a message's content and returns
//! its tags; an error names the field (`vars.<name>`, `template`, `content.email.subject`).
//!
//! Owns: the folder format, compiling, rendering. Must not: know the daemon's config, the
//! socket or the store (the daemon validates the rendered message like any other).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use herald_plugin_api::{Channel, Content};
use minijinja::{Environment, UndefinedBehavior};
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use crate::{EMAIL_FROM, HTML, REPLY_TO, SMS_BODY, SMS_FROM, SUBJECT, TEXT};

/// The most template files a folder may hold.
pub const MAX_FILES: usize = 1000;
/// The largest template file, in bytes.
pub const MAX_FILE_SIZE: u64 = 256 << 10;

/// A template folder that cannot be used: the file, and where in it when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub file: PathBuf,
    /// 1-based line and column (in characters) in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": {}", self.reason)
    }
}

/// Why a send's template could not be applied: the field to name and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ApplyError {
    pub field: String,
    pub reason: String,
}

fn apply_error(field: impl Into<String>, reason: impl Into<String>) -> ApplyError {
    ApplyError {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStored {
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    email: Option<RawEmail>,
    sms: Option<RawSms>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    subject: Spanned<String>,
    text: Option<Spanned<String>>,
    html: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    reply_to: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSms {
    body: Spanned<String>,
    from: Option<Spanned<String>>,
}

/// One compiled template file.
#[derive(Debug)]
pub struct StoredTemplate {
    name: String,
    env: Environment<'static>,
    /// Per compiled template: the variable paths it reads (`user.name`), to name a missing one.
    reads: BTreeMap<String, BTreeSet<String>>,
    tag_names: Vec<String>,
    email: bool,
    sms: bool,
}

/// Every template of the folder, by name, and the file texts they came from (two sets are
/// equal when their files are).
#[derive(Debug, Default)]
pub struct StoredTemplates {
    templates: BTreeMap<String, StoredTemplate>,
    sources: BTreeMap<String, String>,
}

impl PartialEq for StoredTemplates {
    fn eq(&self, other: &Self) -> bool {
        self.sources == other.sources
    }
}

impl StoredTemplates {
    /// Reads and compiles every `*.toml` file of `dir` (hidden files and subfolders are
    /// skipped). The first error wins.
    pub fn load(dir: &Path) -> Result<StoredTemplates, LoadError> {
        let at_dir = |reason: String| LoadError {
            file: dir.to_path_buf(),
            line: None,
            column: None,
            reason,
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| at_dir(format!("cannot read the templates folder: {e}")))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| at_dir(format!("cannot read the templates folder: {e}")))?;
            let path = entry.path();
            let is_toml = path.extension().is_some_and(|e| e == "toml");
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if !is_toml || hidden || entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            files.push(path);
            if files.len() > MAX_FILES {
                return Err(at_dir(format!(
                    "more than {MAX_FILES} template files; split them or remove unused ones"
                )));
            }
        }
        files.sort();
        let mut set = StoredTemplates::default();
        for path in files {
            let err = |reason: String| LoadError {
                file: path.clone(),
                line: None,
                column: None,
                reason,
            };
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| valid_name(s))
                .ok_or_else(|| {
                    err("a template's name (the file stem) must be 1-64 letters, digits, `-`, `_` or `.`".into())
                })?
                .to_string();
            let mut text = String::new();
            std::fs::File::open(&path)
                .and_then(|f| f.take(MAX_FILE_SIZE + 1).read_to_string(&mut text))
                .map_err(|e| err(format!("cannot read: {e}")))?;
            if text.len() as u64 > MAX_FILE_SIZE {
                return Err(err(format!(
                    "larger than {MAX_FILE_SIZE} bytes, the most a template file may be"
                )));
            }
            let template = StoredTemplate::parse(&name, &text).map_err(|mut e| {
                e.file = path.clone();
                e
            })?;
            set.templates.insert(name.clone(), template);
            set.sources.insert(name, text);
        }
        Ok(set)
    }

    pub fn get(&self, name: &str) -> Option<&StoredTemplate> {
        self.templates.get(name)
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.templates.keys().map(String::as_str)
    }
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// 1-based (line, column in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

impl StoredTemplate {
    /// Parses and compiles one file's text; errors carry line and column (the file is
    /// filled in by [`StoredTemplates::load`]).
    pub fn parse(name: &str, text: &str) -> Result<StoredTemplate, LoadError> {
        let at = |offset: Option<usize>, reason: String| {
            let (line, column) = offset.map(|o| line_col(text, o)).unzip();
            LoadError {
                file: PathBuf::from(format!("{name}.toml")),
                line,
                column,
                reason,
            }
        };
        let raw: RawStored = toml::from_str(text).map_err(|e| {
            let reason = e.message().trim_end().to_string();
            let reason = if reason.contains("unknown field") {
                format!(
                    "{reason} (a stored template has tags, [email] and [sms]; the send gives the recipient, channel and idempotency key)"
                )
            } else {
                reason
            };
            at(e.span().map(|s| s.start), reason)
        })?;
        if raw.email.is_none() && raw.sms.is_none() {
            return Err(at(
                None,
                "a stored template needs an [email] section (subject, text and/or html) or an [sms] section (body), or both".into(),
            ));
        }
        let mut t = StoredTemplate {
            name: name.to_string(),
            env: Environment::new(),
            reads: BTreeMap::new(),
            tag_names: Vec::new(),
            email: raw.email.is_some(),
            sms: raw.sms.is_some(),
        };
        t.env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Errors name the variable themselves; no captured locals in them.
        t.env.set_debug(false);
        let add = |t: &mut StoredTemplate, field: &str, src: Spanned<String>| {
            let span = src.span();
            let src = src.into_inner();
            let compiled = t
                .env
                .add_template_owned(field.to_string(), src.clone())
                .and_then(|()| {
                    t.env
                        .get_template(field)
                        .map(|tpl| tpl.undeclared_variables(true))
                });
            match compiled {
                Ok(reads) => {
                    t.reads
                        .insert(field.to_string(), reads.into_iter().collect());
                    Ok(())
                }
                Err(e) => {
                    let (line, column) = locate(text, span.start, &src, &e);
                    Err(LoadError {
                        file: PathBuf::from(format!("{name}.toml")),
                        line: Some(line),
                        column,
                        reason: format!(
                            "{field}: {}",
                            e.detail().map_or_else(|| e.to_string(), str::to_string)
                        ),
                    })
                }
            }
        };
        if let Some(e) = raw.email {
            if e.text.is_none() && e.html.is_none() {
                return Err(at(
                    Some(e.subject.span().start),
                    "[email] needs text or html (or both)".into(),
                ));
            }
            add(&mut t, SUBJECT, e.subject)?;
            for (field, src) in [
                (TEXT, e.text),
                (HTML, e.html),
                (EMAIL_FROM, e.from),
                (REPLY_TO, e.reply_to),
            ] {
                if let Some(src) = src {
                    add(&mut t, field, src)?;
                }
            }
        }
        if let Some(s) = raw.sms {
            add(&mut t, SMS_BODY, s.body)?;
            if let Some(from) = s.from {
                add(&mut t, SMS_FROM, from)?;
            }
        }
        if raw.tags.len() > crate::MAX_TAGS {
            return Err(at(None, format!("at most {} tags", crate::MAX_TAGS)));
        }
        for (i, tag) in raw.tags.into_iter().enumerate() {
            let field = format!("tags[{i}]");
            add(&mut t, &field, tag)?;
            t.tag_names.push(field);
        }
        Ok(t)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders this template into `content` (whose variant is the channel) with `vars`,
    /// and returns the rendered tags. A content field the template also renders must be
    /// left empty by the caller (an error names it): what a message says comes from one
    /// place. Fields the template does not render (`from`, `reply_to`, headers,
    /// attachments, media) are the caller's.
    pub fn apply(
        &self,
        content: &mut Content,
        vars: &BTreeMap<String, Value>,
    ) -> Result<Vec<String>, ApplyError> {
        let has = |field: &str| self.reads.contains_key(field);
        match content {
            Content::Email(e) => {
                if !self.email {
                    return Err(self.no_section(Channel::Email, "[email]"));
                }
                let taken = |set: bool, field: &str| -> Result<(), ApplyError> {
                    if set && has(field) {
                        return Err(apply_error(
                            format!("content.{field}"),
                            format!(
                                "template `{}` renders {field}; leave it empty in the send",
                                self.name
                            ),
                        ));
                    }
                    Ok(())
                };
                taken(!e.subject.is_empty(), SUBJECT)?;
                taken(e.text.is_some(), TEXT)?;
                taken(e.html.is_some(), HTML)?;
                taken(e.from.is_some(), EMAIL_FROM)?;
                taken(e.reply_to.is_some(), REPLY_TO)?;
                e.subject = self.render(SUBJECT, vars)?;
                for (field, slot) in [
                    (TEXT, &mut e.text),
                    (HTML, &mut e.html),
                    (EMAIL_FROM, &mut e.from),
                    (REPLY_TO, &mut e.reply_to),
                ] {
                    if has(field) {
                        *slot = Some(self.render(field, vars)?);
                    }
                }
            }
            Content::Sms(s) => {
                if !self.sms {
                    return Err(self.no_section(Channel::Sms, "[sms]"));
                }
                if !s.body.is_empty() {
                    return Err(apply_error(
                        format!("content.{SMS_BODY}"),
                        format!(
                            "template `{}` renders the body; leave it empty in the send",
                            self.name
                        ),
                    ));
                }
                if s.from.is_some() && has(SMS_FROM) {
                    return Err(apply_error(
                        format!("content.{SMS_FROM}"),
                        format!(
                            "template `{}` renders sms.from; leave it empty in the send",
                            self.name
                        ),
                    ));
                }
                s.body = self.render(SMS_BODY, vars)?;
                if has(SMS_FROM) {
                    s.from = Some(self.render(SMS_FROM, vars)?);
                }
            }
            other => {
                return Err(apply_error(
                    "template",
                    format!(
                        "stored templates render email and SMS, not {}",
                        other.channel()
                    ),
                ));
            }
        }
        self.tag_names
            .iter()
            .map(|field| self.render(field, vars))
            .collect()
    }

    fn no_section(&self, channel: Channel, section: &str) -> ApplyError {
        apply_error(
            "template",
            format!(
                "template `{}` has no {section} section, so it cannot send {channel}",
                self.name
            ),
        )
    }

    /// Renders one field; a variable the vars lack is named as `vars.<path>`.
    fn render(&self, field: &str, vars: &BTreeMap<String, Value>) -> Result<String, ApplyError> {
        let template = self.env.get_template(field).map_err(|e| {
            apply_error(
                "template",
                format!("template `{}` ({field}): {e}", self.name),
            )
        })?;
        template.render(vars).map_err(|e| {
            if e.kind() == minijinja::ErrorKind::UndefinedError {
                // The failing expression, to prefer the variable it reads: another missing
                // one may be optional (`{% if x is defined %}`).
                let expr = e
                    .range()
                    .and_then(|r| template.source().get(r))
                    .unwrap_or("");
                let missing: Vec<&String> = self
                    .reads
                    .get(field)
                    .into_iter()
                    .flatten()
                    .filter(|path| !has_path(vars, path))
                    .collect();
                let missing = missing
                    .iter()
                    .find(|p| expr.contains(p.as_str()))
                    .or_else(|| {
                        missing.iter().find(|p| {
                            expr.contains(p.split('.').next().unwrap_or_default())
                        })
                    })
                    .or(missing.first())
                    .copied();
                if let Some(path) = missing {
                    return apply_error(
                        format!("vars.{path}"),
                        format!(
                            "template `{}` ({field}) reads `{path}`, which the send's vars do not give",
                            self.name
                        ),
                    );
                }
            }
            apply_error(
                "vars",
                format!(
                    "template `{}` ({field}) cannot be rendered with these vars: {}",
                    self.name,
                    e.detail().map_or_else(|| e.to_string(), str::to_string)
                ),
            )
        })
    }
}

/// Whether `path` (`user.name`) leads to a value in `vars`. A step into something that is
/// not an object counts as present (minijinja decides).
fn has_path(vars: &BTreeMap<String, Value>, path: &str) -> bool {
    let mut steps = path.split('.');
    let Some(first) = steps.next() else {
        return true;
    };
    let Some(mut at) = vars.get(first) else {
        return false;
    };
    for step in steps {
        match at {
            Value::Object(m) => match m.get(step) {
                Some(v) => at = v,
                None => return false,
            },
            _ => return true,
        }
    }
    true
}

/// Where in the file a compile error of a string value lies: the value starts at byte
/// `value_start` (its opening quote); the error's own position is in the parsed `src`.
/// Escapes in basic strings can shift the column; the line is exact.
fn locate(
    file: &str,
    value_start: usize,
    src: &str,
    e: &minijinja::Error,
) -> (usize, Option<usize>) {
    let (vline, vcol) = line_col(file, value_start);
    let rest = &file[value_start.min(file.len())..];
    let delim = if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
        3
    } else {
        1
    };
    // A newline right after an opening `"""` is not part of the string.
    let after = &rest[delim.min(rest.len())..];
    let trimmed_newline = delim == 3 && (after.starts_with('\n') || after.starts_with("\r\n"));
    let (tline, tcol) = match e.range() {
        Some(r) => {
            let (l, c) = line_col(src, r.start);
            (l, Some(c))
        }
        None => (e.line().unwrap_or(1), None),
    };
    let line = if trimmed_newline {
        vline + tline
    } else {
        vline + tline - 1
    };
    let column = tcol.map(|c| {
        if tline == 1 && !trimmed_newline {
            vcol + delim + c - 1
        } else {
            c
        }
    });
    (line, column)
}

#[cfg(test)]
#[path = "stored_tests.rs"]
mod tests;
