//! `herald-templates`: the message template of a bulk send (`herald bulk send`), rendered
//! over the rows of a guest list into messages ready for `send_batch`.
//!
//! A template is a TOML file ([`Template::parse`]): the channel rule (`email`, `sms`,
//! `email_else_sms`, `both`), the key column(s) that name a row, the campaign id, the
//! subject / text / html / SMS body, tags and the idempotency key — each a **minijinja**
//! template over the row's columns, in strict-undefined mode (a variable a row lacks is an
//! error naming it, never an empty string). Every message is tagged `campaign:<id>` and
//! carries an idempotency key (default `<campaign>:<row key>:<channel>`), so sending the
//! same list again sends nothing twice. Messages go in the priority lane `lane` (default
//! `bulk`: a campaign must not hold up the host's other traffic).
//!
//! Rows come from CSV or NDJSON ([`rows`]), each with the line it starts on; every error
//! ([`RowError`]) carries that line. Rendered messages pass the daemon's own content and
//! recipient checks (`herald_plugin_api::validate`) and its tag and idempotency-key limits,
//! so a row the daemon would refuse is reported before anything is sent.
//!
//! This crate does no I/O beyond reading the files it is handed, and knows nothing of the
//! socket, the daemon or the CLI's output.

pub mod rows;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use herald_plugin_api::{
    Channel, Content, EmailContent, SmsContent, check_one_line, validate_content,
    validate_recipient,
};
use herald_protocol::{Lane, SendMessage};
use minijinja::{Environment, UndefinedBehavior};
use serde::Deserialize;
use serde_json::Value;

pub use rows::{Row, read_csv, read_ndjson, read_rows};

/// The daemon's limits on tags and idempotency keys (`daemon::accept`): checked here too, so
/// a row is refused before anything is sent rather than by the daemon halfway through.
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG_LEN: usize = 64;
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// A template file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Toml(String),
    /// A minijinja syntax error in one of the file's templates.
    #[error("{field}: {reason}")]
    Syntax { field: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// A row that cannot become a message: its line in the input and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// The line the row starts on (1-based; the CSV header is line 1).
    pub line: u64,
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for RowError {}

/// Which channel(s) a row is sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelRule {
    /// Email; a row without an address is an error.
    Email,
    /// SMS; a row without a number is an error.
    Sms,
    /// Email when the row has an address, else SMS.
    EmailElseSms,
    /// Email when the row has an address and SMS when it has a number (at least one).
    Both,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    campaign: Option<String>,
    channel: ChannelRule,
    key: KeyColumns,
    #[serde(default = "default_email_column")]
    email_column: String,
    #[serde(default = "default_phone_column")]
    phone_column: String,
    #[serde(default)]
    tags: Vec<String>,
    idempotency_key: Option<String>,
    email: Option<RawEmail>,
    sms: Option<RawSms>,
    /// The priority lane of every message (default `bulk`).
    #[serde(default = "default_lane")]
    lane: Lane,
}

fn default_lane() -> Lane {
    Lane::Bulk
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum KeyColumns {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    subject: String,
    text: Option<String>,
    html: Option<String>,
    from: Option<String>,
    reply_to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSms {
    body: String,
    from: Option<String>,
}

fn default_email_column() -> String {
    "email".into()
}

fn default_phone_column() -> String {
    "phone".into()
}

/// The default idempotency key: `<campaign>:<row key>:<channel>`.
pub const DEFAULT_IDEMPOTENCY_KEY: &str = "{{ campaign }}:{{ key }}:{{ channel }}";

// Template names in the environment: what an error names.
const SUBJECT: &str = "email.subject";
const TEXT: &str = "email.text";
// The `.html` suffix turns on minijinja's HTML auto-escaping for this one.
const HTML: &str = "email.html";
const EMAIL_FROM: &str = "email.from";
const REPLY_TO: &str = "email.reply_to";
const SMS_BODY: &str = "sms.body";
const SMS_FROM: &str = "sms.from";
const IDEMPOTENCY_KEY: &str = "idempotency_key";

/// A parsed, compiled template file.
#[derive(Debug)]
pub struct Template {
    campaign: Option<String>,
    pub channel: ChannelRule,
    key_columns: Vec<String>,
    email_column: String,
    phone_column: String,
    tag_names: Vec<String>,
    /// The priority lane of every rendered message.
    pub lane: Lane,
    env: Environment<'static>,
    /// The variables each template reads (for naming the one a row lacks).
    reads: HashMap<String, BTreeSet<String>>,
}

/// One message of a row, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub line: u64,
    /// The row's key (its key columns joined by `:`).
    pub key: String,
    pub message: SendMessage,
}

impl Rendered {
    pub fn channel(&self) -> Channel {
        self.message.content.channel()
    }
}

impl Template {
    /// Parses and compiles a template file; `campaign` (from the command line) overrides the
    /// file's `campaign`. Every template is compiled here, so a syntax error is reported
    /// before any row is read.
    pub fn parse(source: &str, campaign: Option<&str>) -> Result<Template, TemplateError> {
        let raw: RawTemplate =
            toml::from_str(source).map_err(|e| TemplateError::Toml(e.to_string()))?;
        let campaign = campaign.map(str::to_string).or(raw.campaign);
        if let Some(c) = &campaign {
            check_campaign(c)?;
        }
        let key_columns = match raw.key {
            KeyColumns::One(k) => vec![k],
            KeyColumns::Many(ks) => ks,
        };
        if key_columns.is_empty() || key_columns.iter().any(|k| k.is_empty()) {
            return Err(TemplateError::Invalid(
                "key names the column(s) that identify a row, e.g. key = \"guest_id\"".into(),
            ));
        }
        let wants_email = matches!(
            raw.channel,
            ChannelRule::Email | ChannelRule::EmailElseSms | ChannelRule::Both
        );
        let wants_sms = matches!(
            raw.channel,
            ChannelRule::Sms | ChannelRule::EmailElseSms | ChannelRule::Both
        );
        if wants_email != raw.email.is_some() {
            return Err(TemplateError::Invalid(if wants_email {
                "this channel rule sends email: add an [email] section with subject and text or html".into()
            } else {
                "[email] is given but the channel rule never sends email".into()
            }));
        }
        if wants_sms != raw.sms.is_some() {
            return Err(TemplateError::Invalid(if wants_sms {
                "this channel rule sends SMS: add an [sms] section with body".into()
            } else {
                "[sms] is given but the channel rule never sends SMS".into()
            }));
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let mut reads = HashMap::new();
        let mut add = |name: String, src: String| -> Result<(), TemplateError> {
            env.add_template_owned(name.clone(), src)
                .map_err(|e| syntax(&name, &e))?;
            let t = env.get_template(&name).map_err(|e| syntax(&name, &e))?;
            reads.insert(name, t.undeclared_variables(false).into_iter().collect());
            Ok(())
        };
        if let Some(e) = raw.email {
            if e.text.is_none() && e.html.is_none() {
                return Err(TemplateError::Invalid(
                    "[email] needs text or html (or both)".into(),
                ));
            }
            add(SUBJECT.into(), e.subject)?;
            for (name, src) in [
                (TEXT, e.text),
                (HTML, e.html),
                (EMAIL_FROM, e.from),
                (REPLY_TO, e.reply_to),
            ] {
                if let Some(src) = src {
                    add(name.into(), src)?;
                }
            }
        }
        if let Some(s) = raw.sms {
            add(SMS_BODY.into(), s.body)?;
            if let Some(from) = s.from {
                add(SMS_FROM.into(), from)?;
            }
        }
        let mut tag_names = Vec::new();
        for (i, t) in raw.tags.into_iter().enumerate() {
            let name = format!("tags[{i}]");
            add(name.clone(), t)?;
            tag_names.push(name);
        }
        // One tag is added to every message: `campaign:<id>`.
        if tag_names.len() + 1 > MAX_TAGS {
            return Err(TemplateError::Invalid(format!(
                "at most {} tags (the daemon takes {MAX_TAGS}, one is campaign:<id>)",
                MAX_TAGS - 1
            )));
        }
        add(
            IDEMPOTENCY_KEY.into(),
            raw.idempotency_key
                .unwrap_or_else(|| DEFAULT_IDEMPOTENCY_KEY.into()),
        )?;
        Ok(Template {
            campaign,
            channel: raw.channel,
            key_columns,
            email_column: raw.email_column,
            phone_column: raw.phone_column,
            tag_names,
            lane: raw.lane,
            env,
            reads,
        })
    }

    /// The campaign id, if the file or the command line gave one.
    pub fn campaign(&self) -> Option<&str> {
        self.campaign.as_deref()
    }

    /// The key columns, in order.
    pub fn key_columns(&self) -> &[String] {
        &self.key_columns
    }

    /// Renders one row into its message(s), each validated as the daemon would.
    pub fn render(&self, row: &Row) -> Result<Vec<Rendered>, RowError> {
        let err = |reason: String| RowError {
            line: row.line,
            reason,
        };
        let Some(campaign) = self.campaign.as_deref() else {
            return Err(err(
                "no campaign id: set campaign in the template or pass --campaign".into(),
            ));
        };
        let mut key_parts = Vec::new();
        for k in &self.key_columns {
            match row.get(k) {
                Some(v) => key_parts.push(v),
                None => return Err(err(format!("key column `{k}` is empty or missing"))),
            }
        }
        let key = key_parts.join(":");
        let email = row.get(&self.email_column);
        let phone = row.get(&self.phone_column);
        let channels: Vec<(Channel, String)> = match self.channel {
            ChannelRule::Email => vec![(
                Channel::Email,
                email.ok_or_else(|| err(self.no_recipient(&self.email_column)))?,
            )],
            ChannelRule::Sms => vec![(
                Channel::Sms,
                phone.ok_or_else(|| err(self.no_recipient(&self.phone_column)))?,
            )],
            ChannelRule::EmailElseSms => match (email, phone) {
                (Some(e), _) => vec![(Channel::Email, e)],
                (None, Some(p)) => vec![(Channel::Sms, p)],
                (None, None) => return Err(err(self.no_email_or_phone())),
            },
            ChannelRule::Both => {
                let v: Vec<_> = email
                    .map(|e| (Channel::Email, e))
                    .into_iter()
                    .chain(phone.map(|p| (Channel::Sms, p)))
                    .collect();
                if v.is_empty() {
                    return Err(err(self.no_email_or_phone()));
                }
                v
            }
        };
        let mut ctx: BTreeMap<String, Value> = row.columns.clone();
        ctx.insert("campaign".into(), Value::String(campaign.into()));
        let mut tags = Vec::with_capacity(self.tag_names.len() + 1);
        for name in &self.tag_names {
            tags.push(self.one(name, &ctx, row)?);
        }
        tags.push(format!("campaign:{campaign}"));
        for (i, t) in tags.iter().enumerate() {
            let bad = check_one_line(&format!("tags[{i}]"), t)
                .err()
                .map(|e| format!("{}: {}", e.field, e.reason))
                .or_else(|| {
                    (t.is_empty() || t.len() > MAX_TAG_LEN)
                        .then(|| format!("tag {t:?} must be 1-{MAX_TAG_LEN} bytes once rendered"))
                });
            if let Some(reason) = bad {
                return Err(err(reason));
            }
        }
        let mut out = Vec::with_capacity(channels.len());
        for (channel, to) in channels {
            validate_recipient(channel, &to).map_err(|e| {
                let column = match channel {
                    Channel::Sms => &self.phone_column,
                    _ => &self.email_column,
                };
                err(format!(
                    "invalid {channel} recipient in column `{column}`: {}",
                    e.reason
                ))
            })?;
            let content = match channel {
                Channel::Sms => Content::Sms(SmsContent {
                    from: self.opt(SMS_FROM, &ctx, row)?,
                    body: self.one(SMS_BODY, &ctx, row)?,
                    media_urls: Vec::new(),
                }),
                _ => Content::Email(EmailContent {
                    from: self.opt(EMAIL_FROM, &ctx, row)?,
                    subject: self.one(SUBJECT, &ctx, row)?,
                    text: self.opt(TEXT, &ctx, row)?,
                    html: self.opt(HTML, &ctx, row)?,
                    reply_to: self.opt(REPLY_TO, &ctx, row)?,
                    headers: BTreeMap::new(),
                    attachments: Vec::new(),
                }),
            };
            validate_content(&content).map_err(|e| err(format!("{}: {}", e.field, e.reason)))?;
            let mut kctx = ctx.clone();
            kctx.insert("key".into(), Value::String(key.clone()));
            kctx.insert("channel".into(), Value::String(channel.to_string()));
            let idem = self.one(IDEMPOTENCY_KEY, &kctx, row)?;
            if idem.is_empty() || idem.len() > MAX_IDEMPOTENCY_KEY {
                return Err(err(format!(
                    "the idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} bytes once rendered"
                )));
            }
            check_one_line(IDEMPOTENCY_KEY, &idem)
                .map_err(|e| err(format!("{}: {}", e.field, e.reason)))?;
            out.push(Rendered {
                line: row.line,
                key: key.clone(),
                message: SendMessage {
                    to,
                    content,
                    tags: tags.clone(),
                    idempotency_key: Some(idem),
                    send_at: None,
                    override_suppression: false,
                    lane: self.lane,
                },
            });
        }
        Ok(out)
    }

    fn no_recipient(&self, column: &str) -> String {
        format!("column `{column}` is empty or missing")
    }

    fn no_email_or_phone(&self) -> String {
        format!(
            "neither `{}` nor `{}` is given",
            self.email_column, self.phone_column
        )
    }

    fn opt(
        &self,
        name: &str,
        ctx: &BTreeMap<String, Value>,
        row: &Row,
    ) -> Result<Option<String>, RowError> {
        if self.reads.contains_key(name) {
            self.one(name, ctx, row).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Renders the template `name`; an undefined variable is named in the error.
    fn one(
        &self,
        name: &str,
        ctx: &BTreeMap<String, Value>,
        row: &Row,
    ) -> Result<String, RowError> {
        let rendered = self.env.get_template(name).and_then(|t| t.render(ctx));
        rendered.map_err(|e| {
            let reason = if e.kind() == minijinja::ErrorKind::UndefinedError {
                let missing: Vec<String> = self
                    .reads
                    .get(name)
                    .into_iter()
                    .flatten()
                    .filter(|v| !ctx.contains_key(v.as_str()))
                    .map(|v| format!("`{v}`"))
                    .collect();
                if missing.is_empty() {
                    format!("{name}: {}", e.detail().unwrap_or("undefined value"))
                } else {
                    format!(
                        "{name}: missing variable {} (no such column, or empty in this row)",
                        missing.join(", ")
                    )
                }
            } else {
                format!("{name}: {e}")
            };
            RowError {
                line: row.line,
                reason,
            }
        })
    }
}

/// Every row rendered: the messages of the good rows, in order, and the errors of the bad
/// ones. A row whose key repeats an earlier row's is an error (it would be answered
/// `duplicate` and never sent).
pub fn render_all(template: &Template, rows: &[Row]) -> (Vec<Rendered>, Vec<RowError>) {
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for row in rows {
        match template.render(row) {
            Ok(messages) => {
                let Some(key) = messages.first().map(|m| m.key.clone()) else {
                    continue;
                };
                if let Some(first) = seen.get(&key) {
                    bad.push(RowError {
                        line: row.line,
                        reason: format!("duplicate key `{key}` (first on line {first})"),
                    });
                } else {
                    seen.insert(key, row.line);
                    ok.extend(messages);
                }
            }
            Err(e) => bad.push(e),
        }
    }
    (ok, bad)
}

fn syntax(name: &str, e: &minijinja::Error) -> TemplateError {
    let at = e
        .line()
        .map(|l| format!(" (line {l} of the template)"))
        .unwrap_or_default();
    TemplateError::Syntax {
        field: name.into(),
        reason: format!("{}{at}", e.detail().unwrap_or(&e.to_string())),
    }
}

fn check_campaign(c: &str) -> Result<(), TemplateError> {
    let tag = format!("campaign:{c}");
    if c.is_empty() || tag.len() > MAX_TAG_LEN || check_one_line("campaign", c).is_err() {
        return Err(TemplateError::Invalid(format!(
            "campaign {c:?} must be 1-{} bytes on one line (it becomes the tag campaign:<id>)",
            MAX_TAG_LEN - "campaign:".len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
