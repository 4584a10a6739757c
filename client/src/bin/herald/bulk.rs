//! `herald bulk`: one message per row of a guest list, rendered from a template
//! (`herald-templates`), and the campaign's progress.
//!
//! `bulk send` renders and checks every row before sending anything — the daemon's content
//! rules, then the suppression list (`suppression_check`, per channel, on the connection the
//! sends use) — and the real run sends the good rows with pipelined `send_batch` calls on
//! that connection and reports the bad and the suppressed ones.
//! Every message carries an idempotency key derived from the campaign and the row, so a
//! re-run after an interruption sends only what the daemon has not yet accepted — nothing is
//! remembered locally. `bulk status` folds the retained events tagged `campaign:<id>`.
//!
//! Owns the bulk commands' flow and output only: rendering rules live in `herald-templates`,
//! the wire in `herald-client`.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, Subcommand};
use herald_client::{Client, ClientError};
use herald_plugin_api::{Channel, Content, EventKind, RsvpAnswer, State};
use herald_protocol::{BatchItem, ErrorCode, Filter, SuppressionEntry};
use herald_templates::{Rendered, RowError, Template, read_rows, render_all};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::print_json;

#[derive(Subcommand, Debug)]
pub enum BulkCommand {
    /// Send one message per row of GUESTS (CSV with a header line, or .ndjson/.jsonl),
    /// rendered from a template. Every row is checked first: bad rows and rows whose
    /// recipient is on the suppression list are listed with their line numbers and not sent.
    /// Needs heraldd running, --dry-run included (it checks the suppression list). Exits 1
    /// when any row was bad, suppressed or refused.
    Send(SendArgs),
    /// Per-state counts of a campaign's messages and the RSVP answers received (from the
    /// events the daemon retains).
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The guest list: CSV (header line first), or NDJSON when it ends in .ndjson/.jsonl.
    rows: PathBuf,
    /// The template file (TOML; see etc/examples/invite.toml).
    #[arg(long)]
    template: PathBuf,
    /// The campaign id (overrides the template's `campaign`).
    #[arg(long)]
    campaign: Option<String>,
    /// Check and list (bad rows, suppressed recipients); send nothing. Still needs heraldd
    /// running: the suppression list is the daemon's.
    #[arg(long)]
    dry_run: bool,
    /// Send to suppressed recipients too (sets override_suppression on their messages; they
    /// are still listed). Only for transactional sends a guest must get anyway (a changed
    /// venue, a cancellation) — never for invitations or marketing.
    #[arg(long)]
    override_suppression: bool,
    /// Priority lane of the messages (critical, normal, bulk); overrides the template's
    /// `lane`, which defaults to bulk.
    #[arg(long)]
    lane: Option<herald_protocol::Lane>,
    /// Print the first N rendered messages.
    #[arg(long, value_name = "N")]
    preview: Option<usize>,
    /// Messages per send_batch request.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch: u16,
    /// send_batch requests in flight at once on the connection.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    in_flight: u16,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    campaign: String,
    /// Keep following and reprint the counts as events arrive.
    #[arg(long)]
    watch: bool,
}

pub async fn run(command: BulkCommand, socket: &Path, as_json: bool) -> Result<()> {
    match command {
        BulkCommand::Send(a) => send(a, socket, as_json).await,
        BulkCommand::Status(a) => status(a, socket, as_json).await,
    }
}

fn describe(r: &Rendered) -> String {
    match &r.message.content {
        Content::Email(e) => format!(
            "line {} {} email to {}\n  subject: {}\n{}{}",
            r.line,
            r.key,
            r.message.to,
            e.subject,
            e.text
                .as_deref()
                .map(|t| format!("  text: {}\n", t.trim().replace('\n', "\n        ")))
                .unwrap_or_default(),
            e.html
                .as_deref()
                .map(|t| format!("  html: {}\n", t.trim().replace('\n', "\n        ")))
                .unwrap_or_default(),
        ),
        Content::Sms(s) => format!(
            "line {} {} sms to {}\n  body: {}\n",
            r.line, r.key, r.message.to, s.body
        ),
        Content::Push(_) => format!("line {} {} push to {}\n", r.line, r.key, r.message.to),
    }
}

fn print_invalid(bad: &[RowError], as_json: bool) -> Result<()> {
    for e in bad {
        if as_json {
            print_json(&json!({"line": e.line, "status": "invalid", "error": e.reason}))?;
        } else {
            println!("invalid  line {}: {}", e.line, e.reason);
        }
    }
    Ok(())
}

/// Recipients per `suppression_check` request (the daemon's limit).
const CHECK_CHUNK: usize = 1000;

/// A rendered message whose recipient is on the suppression list.
struct Suppressed {
    line: u64,
    key: String,
    channel: Channel,
    to: String,
    entry: SuppressionEntry,
}

/// The entry of every message of `ready` whose recipient is on the suppression list, by
/// index: one `suppression_check` per channel and chunk of at most [`CHECK_CHUNK`]
/// recipients. The daemon matches canonical keys, so any spelling of a listed recipient is
/// found.
async fn check_suppressed(
    client: &Client,
    ready: &[Rendered],
) -> Result<Vec<Option<SuppressionEntry>>> {
    let mut found = vec![None; ready.len()];
    for channel in Channel::ALL {
        let indexes: Vec<usize> = (0..ready.len())
            .filter(|&i| ready[i].channel() == channel)
            .collect();
        for chunk in indexes.chunks(CHECK_CHUNK) {
            let recipients = chunk.iter().map(|&i| ready[i].message.to.clone()).collect();
            let statuses = client
                .suppression_check(channel, recipients)
                .await
                .with_context(|| format!("checking {channel} recipients' suppression"))?;
            if statuses.len() != chunk.len() {
                bail!(
                    "the daemon answered {} statuses for {} recipients",
                    statuses.len(),
                    chunk.len()
                );
            }
            for (&i, status) in chunk.iter().zip(statuses) {
                found[i] = status.entry;
            }
        }
    }
    Ok(found)
}

fn source_name(e: &SuppressionEntry) -> String {
    serde_json::to_value(e.source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Lists the suppressed messages: not sent, or (with `--override-suppression`) sent anyway.
fn print_suppressed(list: &[Suppressed], overridden: bool, as_json: bool) -> Result<()> {
    for s in list {
        let source = source_name(&s.entry);
        if as_json {
            print_json(&json!({
                "line": s.line, "key": s.key, "channel": s.channel.to_string(),
                "status": if overridden { "overridden" } else { "suppressed" },
                "recipient": s.to, "source": source, "reason": s.entry.reason,
            }))?;
        } else {
            println!(
                "line {}: {}: suppressed ({source}: {}){}",
                s.line,
                s.to,
                s.entry.reason,
                if overridden {
                    "; sent anyway (--override-suppression)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// One message's answer.
enum Outcome {
    Accepted(String),
    Duplicate(String),
    Rejected(String),
}

/// Whole-batch refusals worth waiting out: the queue is full or the disk is low.
fn transient(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Busy | ErrorCode::StorageFull | ErrorCode::StorageUnavailable
    )
}

/// Sends one batch; a transient whole-batch refusal is retried (the idempotency keys make a
/// retry of an applied request harmless), any other whole-batch error rejects every message.
async fn send_one_batch(client: Client, batch: Vec<Rendered>) -> Result<Vec<Outcome>> {
    let messages: Vec<_> = batch.iter().map(|r| r.message.clone()).collect();
    let mut wait = Duration::from_millis(200);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match client.send_batch(messages.clone()).await {
            Ok(items) => {
                if items.len() != batch.len() {
                    bail!(
                        "the daemon answered {} items for a batch of {}",
                        items.len(),
                        batch.len()
                    );
                }
                return Ok(items
                    .into_iter()
                    .map(|i| match i {
                        BatchItem::Accepted(a) if a.duplicate => Outcome::Duplicate(a.id),
                        BatchItem::Accepted(a) => Outcome::Accepted(a.id),
                        BatchItem::Error(e) => Outcome::Rejected(format!(
                            "{}{}: {}",
                            e.code.as_str(),
                            e.field.map(|f| format!(" ({f})")).unwrap_or_default(),
                            e.message
                        )),
                    })
                    .collect());
            }
            Err(ClientError::Server(e)) if transient(e.code) && attempt <= 60 => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(ClientError::Server(e)) => {
                let reason = format!("{}: {}", e.code.as_str(), e.message);
                return Ok(batch
                    .iter()
                    .map(|_| Outcome::Rejected(reason.clone()))
                    .collect());
            }
            Err(e) => {
                return Err(anyhow!(e).context(
                    "the connection to heraldd failed; run the same command again: \
                     messages already accepted are answered duplicate, never sent twice",
                ));
            }
        }
    }
}

async fn send(a: SendArgs, socket: &Path, as_json: bool) -> Result<()> {
    let source = std::fs::read_to_string(&a.template)
        .with_context(|| format!("cannot read {}", a.template.display()))?;
    let mut template = Template::parse(&source, a.campaign.as_deref())
        .with_context(|| format!("template {}", a.template.display()))?;
    if let Some(lane) = a.lane {
        template.lane = lane;
    }
    let campaign = template
        .campaign()
        .ok_or_else(|| anyhow!("no campaign id: set campaign in the template or pass --campaign"))?
        .to_string();
    let rows = read_rows(&a.rows).map_err(|e| anyhow!("{}: {e}", a.rows.display()))?;
    let (rendered, bad) = render_all(&template, &rows);

    // One connection for the suppression check and the sends; a dry run needs it too.
    let client = Client::connect(socket).await.map_err(|e| {
        let e = anyhow!(e);
        if a.dry_run {
            e.context(
                "--dry-run checks the suppression list, which needs heraldd running \
                 (start it, or pass --socket)",
            )
        } else {
            e
        }
    })?;
    let entries = check_suppressed(&client, &rendered).await?;
    let mut ready = Vec::with_capacity(rendered.len());
    let mut suppressed = Vec::new();
    for (mut r, entry) in rendered.into_iter().zip(entries) {
        let Some(entry) = entry else {
            ready.push(r);
            continue;
        };
        suppressed.push(Suppressed {
            line: r.line,
            key: r.key.clone(),
            channel: r.channel(),
            to: r.message.to.clone(),
            entry,
        });
        if a.override_suppression {
            r.message.override_suppression = true;
            ready.push(r);
        }
    }
    // Only suppressed messages that are not sent count against the exit status.
    let skipped = if a.override_suppression {
        0
    } else {
        suppressed.len()
    };

    if let Some(n) = a.preview {
        for r in ready.iter().take(n) {
            if as_json {
                print_json(&json!({"line": r.line, "key": r.key, "preview": r.message}))?;
            } else {
                print!("{}", describe(r));
            }
        }
    }
    print_invalid(&bad, as_json)?;
    print_suppressed(&suppressed, a.override_suppression, as_json)?;
    let emails = ready
        .iter()
        .filter(|r| r.channel() == Channel::Email)
        .count();
    let sms = ready.len() - emails;
    if a.dry_run {
        if as_json {
            print_json(&json!({
                "summary": "dry_run", "campaign": campaign, "rows": rows.len(),
                "messages": ready.len(), "email": emails, "sms": sms, "invalid": bad.len(),
                "suppressed": suppressed.len(), "override_suppression": a.override_suppression,
            }))?;
        } else {
            println!(
                "campaign {campaign}: {} rows, {} messages ready ({emails} email, {sms} sms), {} rows invalid, {} messages to suppressed recipients{}; nothing sent (--dry-run)",
                rows.len(),
                ready.len(),
                bad.len(),
                suppressed.len(),
                if a.override_suppression {
                    " (sent anyway: --override-suppression)"
                } else {
                    " (not sent)"
                }
            );
        }
        if !bad.is_empty() || skipped > 0 {
            bail!(
                "{} rows are invalid and {skipped} messages go to suppressed recipients",
                bad.len()
            );
        }
        return Ok(());
    }

    let total = ready.len() as u64;
    let bar = if !as_json && std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let (mut accepted, mut duplicate, mut rejected) = (0u64, 0u64, 0u64);
    let mut batches = ready.chunks(usize::from(a.batch)).map(<[Rendered]>::to_vec);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut rejected_lines: Vec<(u64, String)> = Vec::new();
    loop {
        while in_flight.len() < usize::from(a.in_flight) {
            let Some(batch) = batches.next() else { break };
            let c = client.clone();
            in_flight.spawn(async move {
                let out = send_one_batch(c, batch.clone()).await;
                (batch, out)
            });
        }
        let Some(done) = in_flight.join_next().await else {
            break;
        };
        let (batch, outcomes) = done.context("a send task failed")?;
        let outcomes = outcomes?;
        for (r, o) in batch.iter().zip(outcomes) {
            let channel = r.channel().to_string();
            let (status, id, error) = match o {
                Outcome::Accepted(id) => {
                    accepted += 1;
                    ("accepted", Some(id), None)
                }
                Outcome::Duplicate(id) => {
                    duplicate += 1;
                    ("duplicate", Some(id), None)
                }
                Outcome::Rejected(e) => {
                    rejected += 1;
                    rejected_lines.push((r.line, e.clone()));
                    ("rejected", None, Some(e))
                }
            };
            if as_json {
                print_json(&json!({
                    "line": r.line, "key": r.key, "channel": channel, "status": status,
                    "id": id, "error": error,
                }))?;
            }
        }
        let secs = started.elapsed().as_secs_f64().max(0.001);
        bar.set_message(format!(
            "{:.0}/s, accepted {accepted}, duplicate {duplicate}, rejected {rejected}",
            (bar.position() + batch.len() as u64) as f64 / secs
        ));
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if as_json {
        print_json(&json!({
            "summary": "sent", "campaign": campaign, "rows": rows.len(), "messages": total,
            "accepted": accepted, "duplicate": duplicate, "rejected": rejected,
            "invalid": bad.len(), "suppressed": suppressed.len(),
            "override_suppression": a.override_suppression, "seconds": secs,
        }))?;
    } else {
        rejected_lines.sort();
        for (line, e) in &rejected_lines {
            println!("rejected line {line}: {e}");
        }
        println!(
            "campaign {campaign}: {total} messages: {accepted} accepted, {duplicate} duplicate (accepted before), {rejected} rejected; {} rows invalid (not sent); {} messages to suppressed recipients ({}); {:.0} messages/s",
            bad.len(),
            suppressed.len(),
            if a.override_suppression {
                "sent anyway: --override-suppression"
            } else {
                "not sent"
            },
            if secs > 0.0 { total as f64 / secs } else { 0.0 }
        );
    }
    if !bad.is_empty() || rejected > 0 || skipped > 0 {
        bail!(
            "{} rows invalid, {skipped} messages to suppressed recipients and {rejected} messages rejected were not sent",
            bad.len()
        );
    }
    Ok(())
}

/// What the retained events say about a campaign.
#[derive(Debug, Default)]
struct Campaign {
    /// Each message's latest state.
    states: HashMap<String, State>,
    /// Each guest's latest RSVP (by the replying address or number).
    rsvps: HashMap<String, (RsvpAnswer, Option<u32>)>,
    replies: u64,
}

impl Campaign {
    fn fold(&mut self, e: &herald_plugin_api::Event) {
        if e.kind == EventKind::Inbound {
            self.replies += 1;
            if let (Some(r), Some(from)) = (&e.rsvp, &e.from) {
                self.rsvps.insert(from.clone(), (r.answer, r.headcount));
            }
            return;
        }
        if let (Some(state), Some(id)) = (e.kind.state(), &e.message_id) {
            self.states.insert(id.clone(), state);
        }
    }

    fn counts(&self) -> BTreeMap<&'static str, u64> {
        let mut by_state = BTreeMap::new();
        for s in self.states.values() {
            *by_state.entry(s.as_str()).or_insert(0) += 1;
        }
        by_state
    }

    fn answers(&self) -> (BTreeMap<&'static str, u64>, u64) {
        let mut by_answer = BTreeMap::new();
        let mut coming = 0u64;
        for (a, n) in self.rsvps.values() {
            *by_answer.entry(a.as_str()).or_insert(0) += 1;
            if *a == RsvpAnswer::Yes {
                coming += u64::from(n.unwrap_or(1));
            }
        }
        (by_answer, coming)
    }

    fn print(&self, campaign: &str, as_json: bool, partial: bool) -> Result<()> {
        let states = self.counts();
        let (answers, coming) = self.answers();
        if as_json {
            return print_json(&json!({
                "campaign": campaign, "messages": self.states.len(), "states": states,
                "replies": self.replies, "rsvp": answers, "coming": coming,
                "partial": partial,
            }));
        }
        let list = |m: &BTreeMap<&str, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "campaign {campaign}: {} messages ({}); {} replies, RSVP {} — {coming} coming{}",
            self.states.len(),
            if states.is_empty() {
                "none".to_string()
            } else {
                list(&states)
            },
            self.replies,
            if answers.is_empty() {
                "none".to_string()
            } else {
                list(&answers)
            },
            if partial {
                " (older events were pruned: counts cover the retained ones only)"
            } else {
                ""
            }
        );
        Ok(())
    }
}

async fn status(a: StatusArgs, socket: &Path, as_json: bool) -> Result<()> {
    let client = Client::connect(socket).await?;
    let tag = format!("campaign:{}", a.campaign);
    // Unfiltered, so the replay is known to be over at the event that was newest when the
    // subscription started (a filtered one could not tell "done" from "no match yet");
    // the campaign's events are picked here.
    let mut sub = client.subscribe(Filter::default(), Some(0)).await?;
    // Events before `first_seq` were pruned (daemon retention): a campaign older than the
    // retained log is counted from what is left.
    let partial = sub.first_seq > 1;
    let end = sub.last_seq;
    let mut campaign = Campaign::default();
    let mut caught_up = end < sub.first_seq;
    if caught_up {
        campaign.print(&a.campaign, as_json, partial)?;
        if !a.watch {
            return Ok(());
        }
    }
    while let Some(event) = sub.next_event().await {
        let event = event?;
        let ours = event.tags.contains(&tag);
        if ours {
            campaign.fold(&event);
        }
        if !caught_up && event.seq >= end {
            caught_up = true;
            campaign.print(&a.campaign, as_json, partial)?;
            if !a.watch {
                return Ok(());
            }
        } else if caught_up && ours {
            campaign.print(&a.campaign, as_json, partial)?;
        }
    }
    bail!("the daemon closed the connection")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, v: serde_json::Value) -> herald_plugin_api::Event {
        let mut v = v;
        v["seq"] = seq.into();
        v["at"] = 0.into();
        serde_json::from_value(v).expect("an event")
    }

    #[test]
    fn status_keeps_each_message_latest_state_and_each_guest_latest_answer() {
        let mut c = Campaign::default();
        for (seq, e) in [
            json!({"kind": "queued", "message_id": "a"}),
            json!({"kind": "queued", "message_id": "b"}),
            json!({"kind": "sending", "message_id": "a"}),
            json!({"kind": "deferred", "message_id": "a"}),
            json!({"kind": "sent", "message_id": "b"}),
            json!({"kind": "delivered", "message_id": "b"}),
            json!({"kind": "opened", "message_id": "b"}),
            json!({"kind": "inbound", "from": "+14155550100", "rsvp": {"answer": "no"}}),
            json!({"kind": "inbound", "from": "+14155550100", "rsvp": {"answer": "yes", "headcount": 2}}),
            json!({"kind": "inbound", "from": "c@example.org", "rsvp": {"answer": "maybe"}}),
            json!({"kind": "inbound", "from": "d@example.org", "body": "which hotel?"}),
        ]
        .into_iter()
        .enumerate()
        {
            c.fold(&event(seq as u64 + 1, e));
        }
        assert_eq!(
            c.counts().into_iter().collect::<Vec<_>>(),
            [("deferred", 1), ("delivered", 1)]
        );
        let (answers, coming) = c.answers();
        assert_eq!(
            answers.into_iter().collect::<Vec<_>>(),
            [("maybe", 1), ("yes", 1)]
        );
        assert_eq!((coming, c.replies), (2, 4));
    }
}
