//! `herald`: the command-line client of `heraldd`.
//!
//! Every command takes `--socket` (default: `HERALD_SOCKET`, then the embedded default
//! config's socket) and `--json` (machine output: one JSON object per line). Human output
//! is short; errors go to stderr with a non-zero exit status.
#![allow(clippy::print_stdout)]

#[path = "herald/bulk.rs"]
mod bulk;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use herald_client::{Client, ClientError, DEFAULT_SOCKET};
use herald_plugin_api::{
    Attachment, Channel, Content, EmailContent, Event, EventKind, PushContent, PushPriority,
    SmsContent,
};
use herald_protocol::{Filter, Lane, MessageView, SendMessage, Stats, SuppressionEntry};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version,
    about = "Send messages through heraldd and watch them."
)]
struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "HERALD_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Machine-readable output: one JSON object per line.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Queue a message; prints its id once it is on disk.
    Send(Box<SendArgs>),
    /// Show a message and its delivery state.
    Get { id: String },
    /// Cancel a message that has not been sent yet.
    Cancel { id: String },
    /// Stream events as they happen (and, with --from, replay retained ones first).
    Watch(WatchArgs),
    /// Queue depth, per-state counts and provider health.
    Stats,
    /// Re-read the config file; a bad file leaves the running config in place.
    Reload,
    /// Mint a token for the browser event streams (GET /v1/events): its bearer sees only
    /// events tagged with one of --tag, or of the messages --id, or everything with --admin.
    Token(TokenArgs),
    /// Dead-lettered messages (attempts exhausted).
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// The suppression list: recipients nothing is sent to (bounces, complaints, opt-outs,
    /// operators), unless a send overrides it (`send --override-suppression`).
    Suppression {
        #[command(subcommand)]
        command: SuppressionCommand,
    },
    /// One message per row of a guest list, from a template; a campaign's progress.
    Bulk {
        #[command(subcommand)]
        command: bulk::BulkCommand,
    },
    /// Operator commands.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Check every stored message against the index entries its state requires and the
    /// per-state counts against a recount, and repair what is wrong. Exits 1 when problems
    /// are left unrepaired.
    CheckStore {
        /// Only report; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SuppressionCommand {
    /// List every entry (channel, recipient, source, since when, reason).
    List {
        /// At most this many entries.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// Put a recipient on the list (source operator). One already on it keeps its entry.
    Add {
        #[arg(value_enum)]
        channel: ChannelArg,
        /// Email address, E.164 number or device token, as a send's --to.
        recipient: String,
        /// Why (kept with the entry).
        #[arg(long)]
        reason: String,
    },
    /// Take a recipient (any spelling of it) off the list.
    Remove {
        #[arg(value_enum)]
        channel: ChannelArg,
        recipient: String,
    },
    /// Say, for each recipient, whether it is on the list.
    Check {
        #[arg(value_enum)]
        channel: ChannelArg,
        #[arg(required = true)]
        recipients: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DeadCommand {
    /// List dead-lettered messages.
    List {
        /// At most this many (the daemon lists up to 10,000, and as many as fit a frame).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Queue dead-lettered messages again.
    Requeue {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ChannelArg {
    Email,
    Sms,
    Push,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PriorityArg {
    High,
    Normal,
}

#[derive(Args, Debug)]
struct SendArgs {
    #[arg(long, value_enum)]
    channel: ChannelArg,
    /// Email address, E.164 number (+14155550100) or device token.
    #[arg(long)]
    to: String,
    /// Email subject.
    #[arg(long)]
    subject: Option<String>,
    /// Email plain-text body.
    #[arg(long)]
    text: Option<String>,
    /// Email HTML body.
    #[arg(long)]
    html: Option<String>,
    /// Sender override (email address or SMS sender).
    #[arg(long)]
    from: Option<String>,
    /// Email Reply-To.
    #[arg(long)]
    reply_to: Option<String>,
    /// Attach a file to an email (repeatable).
    #[arg(long = "attach")]
    attachments: Vec<PathBuf>,
    /// SMS or push body.
    #[arg(long)]
    body: Option<String>,
    /// MMS media URL (repeatable).
    #[arg(long = "media-url")]
    media_urls: Vec<String>,
    /// Push title.
    #[arg(long)]
    title: Option<String>,
    /// Push data as key=value (repeatable).
    #[arg(long = "data", value_parser = parse_key_value)]
    data: Vec<(String, String)>,
    /// Push badge count.
    #[arg(long)]
    badge: Option<u32>,
    /// Push sound.
    #[arg(long)]
    sound: Option<String>,
    /// Push collapse id.
    #[arg(long)]
    collapse_id: Option<String>,
    /// Push priority.
    #[arg(long, value_enum)]
    priority: Option<PriorityArg>,
    /// A tag for filtering events (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Sends with the same key within the idempotency window are one message.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Deliver no earlier than this time (RFC 3339, e.g. 2026-12-24T18:00:00+01:00).
    #[arg(long, value_parser = parse_rfc3339)]
    send_at: Option<u64>,
    /// Send even if the recipient is on the suppression list (transactional messages the
    /// host must deliver anyway).
    #[arg(long)]
    override_suppression: bool,
    /// Priority lane: critical (dispatched first), normal, or bulk (shares 1:3 with
    /// normal). Not the push --priority.
    #[arg(long, default_value = "normal")]
    lane: Lane,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// See events of messages with this tag (repeatable: any of them).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// See events of this message (repeatable).
    #[arg(long = "id")]
    ids: Vec<String>,
    /// See every event (operators only).
    #[arg(long)]
    admin: bool,
    /// How long the token is valid, e.g. 15m, 1h, 24h (at most realtime.max_token_ttl).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    herald_plugin_api::duration::parse_duration_ms(s)
}

#[derive(Args, Debug)]
struct WatchArgs {
    /// Replay retained events from this sequence number (0 = everything retained).
    #[arg(long = "from")]
    from_seq: Option<u64>,
    /// Only events of messages with this tag (repeatable: any of them).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Only events of this message.
    #[arg(long)]
    id: Option<String>,
    /// Only events of this kind (repeatable), e.g. delivered, failed, inbound.
    #[arg(long = "kind", value_parser = parse_kind)]
    kinds: Vec<EventKind>,
    /// Only events of this channel.
    #[arg(long, value_enum)]
    channel: Option<ChannelArg>,
    /// Exit after this many events.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let ts: jiff::Timestamp = s
        .parse()
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-12-24T18:00:00Z ({e})"))?;
    u64::try_from(ts.as_millisecond()).map_err(|_| format!("{s:?} is before 1970"))
}

fn parse_kind(s: &str) -> Result<EventKind, String> {
    EventKind::parse(s).ok_or_else(|| {
        let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown event kind {s:?}; one of: {}", all.join(", "))
    })
}

fn channel(c: ChannelArg) -> Channel {
    match c {
        ChannelArg::Email => Channel::Email,
        ChannelArg::Sms => Channel::Sms,
        ChannelArg::Push => Channel::Push,
    }
}

/// Turns the flags into a message, refusing flags that belong to another channel.
fn build_message(a: SendArgs) -> Result<SendMessage> {
    let misplaced = |ok: bool, flag: &str, ch: &str| -> Result<()> {
        if ok {
            Ok(())
        } else {
            bail!("{flag} does not apply to --channel {ch}")
        }
    };
    let no_push_options =
        a.badge.is_none() && a.sound.is_none() && a.collapse_id.is_none() && a.priority.is_none();
    const PUSH_OPTIONS: &str = "--badge/--sound/--collapse-id/--priority";
    let content = match a.channel {
        ChannelArg::Email => {
            misplaced(no_push_options, PUSH_OPTIONS, "email")?;
            misplaced(a.body.is_none(), "--body", "email (use --text)")?;
            misplaced(
                a.title.is_none() && a.data.is_empty(),
                "--title/--data",
                "email",
            )?;
            misplaced(a.media_urls.is_empty(), "--media-url", "email")?;
            let subject = a
                .subject
                .ok_or_else(|| anyhow!("--channel email needs --subject"))?;
            if a.text.is_none() && a.html.is_none() {
                bail!("--channel email needs --text or --html");
            }
            let mut attachments = Vec::new();
            for path in &a.attachments {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read attachment {}", path.display()))?;
                let filename = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| anyhow!("attachment {} has no file name", path.display()))?;
                attachments.push(Attachment {
                    filename: filename.to_string(),
                    content_type: None,
                    content: base64_encode(&bytes),
                });
            }
            Content::Email(EmailContent {
                from: a.from,
                subject,
                text: a.text,
                html: a.html,
                reply_to: a.reply_to,
                headers: BTreeMap::new(),
                attachments,
            })
        }
        ChannelArg::Sms => {
            misplaced(
                a.subject.is_none() && a.text.is_none() && a.html.is_none(),
                "--subject/--text/--html",
                "sms (use --body)",
            )?;
            misplaced(
                a.title.is_none() && a.data.is_empty(),
                "--title/--data",
                "sms",
            )?;
            misplaced(
                a.attachments.is_empty(),
                "--attach",
                "sms (use --media-url)",
            )?;
            misplaced(no_push_options, PUSH_OPTIONS, "sms")?;
            misplaced(a.reply_to.is_none(), "--reply-to", "sms")?;
            let body = a.body.unwrap_or_default();
            if body.is_empty() && a.media_urls.is_empty() {
                bail!("--channel sms needs --body (or --media-url)");
            }
            Content::Sms(SmsContent {
                from: a.from,
                body,
                media_urls: a.media_urls,
            })
        }
        ChannelArg::Push => {
            misplaced(
                a.subject.is_none() && a.text.is_none() && a.html.is_none(),
                "--subject/--text/--html",
                "push (use --title/--body)",
            )?;
            misplaced(a.from.is_none(), "--from", "push")?;
            misplaced(a.reply_to.is_none(), "--reply-to", "push")?;
            misplaced(
                a.attachments.is_empty() && a.media_urls.is_empty(),
                "--attach/--media-url",
                "push",
            )?;
            if a.title.is_none() && a.body.is_none() && a.data.is_empty() {
                bail!("--channel push needs --title, --body or --data");
            }
            Content::Push(PushContent {
                title: a.title,
                body: a.body,
                data: a.data.into_iter().collect(),
                badge: a.badge,
                sound: a.sound,
                collapse_id: a.collapse_id,
                priority: a.priority.map(|p| match p {
                    PriorityArg::High => PushPriority::High,
                    PriorityArg::Normal => PushPriority::Normal,
                }),
                ttl_secs: None,
            })
        }
    };
    Ok(SendMessage {
        to: a.to,
        content,
        tags: a.tags,
        idempotency_key: a.idempotency_key,
        send_at: a.send_at,
        override_suppression: a.override_suppression,
        lane: a.lane,
    })
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn print_event(e: &Event, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(e);
    }
    let mut line = format!("#{} {} {:<10}", e.seq, time(e.at), e.kind.as_str());
    if let Some(id) = &e.message_id {
        line.push(' ');
        line.push_str(id);
    }
    if let Some(c) = e.channel {
        line.push_str(&format!(" {c}"));
    }
    if let Some(p) = &e.provider {
        line.push_str(&format!(" via {p}"));
    }
    if let Some(a) = e.attempt {
        line.push_str(&format!(" attempt {a}"));
    }
    if e.kind == EventKind::Inbound {
        line.push_str(&format!(
            " from {} to {}: {:?}",
            e.from.as_deref().unwrap_or("?"),
            e.to.as_deref().unwrap_or("?"),
            e.body.as_deref().unwrap_or("")
        ));
    }
    if let Some(d) = &e.detail {
        line.push_str(&format!(" ({d})"));
    }
    if !e.tags.is_empty() {
        line.push_str(&format!(" [{}]", e.tags.join(",")));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn print_message(m: &MessageView) {
    println!("{} {} {} to {}", m.id, m.channel, m.state, m.to);
    println!("  created   {}", time(m.created_at));
    println!("  updated   {}", time(m.updated_at));
    println!("  attempts  {}", m.attempt);
    println!("  lane      {}", m.lane);
    if let Some(d) = m.due_at {
        println!("  due       {}", time(d));
    }
    if let Some(p) = &m.provider {
        println!(
            "  provider  {p}{}",
            m.provider_message_id
                .as_deref()
                .map(|id| format!(" ({id})"))
                .unwrap_or_default()
        );
    }
    if let Some(e) = &m.last_error {
        println!("  error     {e}");
    }
    if !m.tags.is_empty() {
        println!("  tags      {}", m.tags.join(", "));
    }
}

fn print_stats(s: &Stats) {
    println!(
        "active {} of max {}  (last event #{}, {} connections, up {}s)",
        s.active,
        s.max_queue,
        s.last_seq,
        s.connections,
        s.uptime_ms / 1000
    );
    let st = &s.storage;
    println!(
        "  storage {}: {} MiB free, min_free {} MiB{}",
        st.state.as_str(),
        st.free_bytes >> 20,
        st.min_free_bytes >> 20,
        st.detail
            .as_deref()
            .map(|d| format!(" — {d}"))
            .unwrap_or_default()
    );
    for (state, n) in &s.states {
        if *n > 0 {
            println!("  {:<11} {n}", state.as_str());
        }
    }
    for l in &s.lanes {
        println!(
            "  lane {:<8} depth {}, oldest due {} ms ago",
            l.lane.as_str(),
            l.depth,
            l.oldest_age_ms
        );
    }
    for p in &s.providers {
        println!(
            "  provider {} ({}): breaker {}, accepted {}, retries {}, failures {}, rejected {}",
            p.name, p.plugin, p.breaker, p.accepted, p.retries, p.failures, p.rejected
        );
    }
}

async fn run(cli: Cli) -> Result<()> {
    let as_json = cli.json;
    // Validate arguments before connecting, so a typo is reported even without a daemon.
    match cli.command {
        Command::Send(args) => {
            // Validate the flags before connecting, so a typo is reported even without a daemon.
            let message = build_message(*args)?;
            let client = Client::connect(&cli.socket).await?;
            let ack = client.send(message).await?;
            if as_json {
                print_json(&json!({"id": ack.id, "duplicate": ack.duplicate}))?;
            } else if ack.duplicate {
                println!(
                    "{} (duplicate: the idempotency key was already used)",
                    ack.id
                );
            } else {
                println!("{}", ack.id);
            }
            Ok(())
        }
        Command::Bulk { command } => bulk::run(command, &cli.socket, as_json).await,
        other => {
            let client = Client::connect(&cli.socket).await?;
            query(client, other, as_json).await
        }
    }
}

/// Every command but `send`.
async fn query(client: Client, command: Command, as_json: bool) -> Result<()> {
    match command {
        Command::Send(_) | Command::Bulk { .. } => bail!("handled by run()"),
        Command::Get { id } => {
            let m = client.get(&id).await?;
            if as_json {
                print_json(&m)?;
            } else {
                print_message(&m);
            }
        }
        Command::Cancel { id } => {
            client.cancel(&id).await?;
            if as_json {
                print_json(&json!({"id": id, "cancelled": true}))?;
            } else {
                println!("cancelled {id}");
            }
        }
        Command::Watch(w) => {
            let filter = Filter {
                message_id: w.id,
                tags: w.tags,
                kinds: w.kinds,
                channel: w.channel.map(channel),
            };
            let mut sub = client.subscribe(filter, w.from_seq).await?;
            let mut seen = 0u64;
            while let Some(event) = sub.next_event().await {
                print_event(&event?, as_json)?;
                seen += 1;
                if w.count.is_some_and(|c| seen >= c) {
                    return Ok(());
                }
            }
            bail!("the daemon closed the connection");
        }
        Command::Stats => {
            let s = client.stats().await?;
            if as_json {
                print_json(&s)?;
            } else {
                print_stats(&s);
            }
        }
        Command::Reload => {
            let detail = client.reload().await?;
            if as_json {
                print_json(&json!({"reloaded": true, "detail": detail}))?;
            } else {
                println!("reloaded: {detail}");
            }
        }
        Command::Token(t) => {
            if t.tags.is_empty() && t.ids.is_empty() && !t.admin {
                bail!("a token needs a scope: --tag, --id or --admin");
            }
            let (token, expires_at) = client
                .mint_token(t.tags, t.ids, t.admin, Some(t.ttl))
                .await?;
            if as_json {
                print_json(&json!({"token": token, "expires_at": expires_at}))?;
            } else {
                println!("{token}");
            }
        }
        Command::Dead { command } => match command {
            DeadCommand::List { limit } => {
                let list = client.dead_list(Some(limit)).await?;
                for m in &list {
                    if as_json {
                        print_json(m)?;
                    } else {
                        println!(
                            "{} {} to {} after {} attempts: {}",
                            m.id,
                            m.channel,
                            m.to,
                            m.attempt,
                            m.last_error.as_deref().unwrap_or("")
                        );
                    }
                }
            }
            DeadCommand::Requeue { ids } => {
                let n = client.dead_requeue(ids).await?;
                if as_json {
                    print_json(&json!({"requeued": n}))?;
                } else {
                    println!("requeued {n}");
                }
            }
        },
        Command::Suppression { command } => suppression(&client, command, as_json).await?,
        Command::Admin {
            command: AdminCommand::CheckStore { dry_run },
        } => {
            let report = client.check_store(dry_run).await?;
            if as_json {
                print_json(&report)?;
            } else {
                print!("{report}");
            }
            if report.unrepaired() > 0 {
                bail!("{} store problems are not repaired", report.unrepaired());
            }
        }
    }
    Ok(())
}

fn print_entry(e: &SuppressionEntry) {
    let spelled = if e.recipient == e.key {
        String::new()
    } else {
        format!(" ({})", e.recipient)
    };
    let source = serde_json::to_value(e.source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    println!(
        "{} {}{spelled} {source} since {}: {}",
        e.channel,
        e.key,
        time(e.at),
        e.reason
    );
}

async fn suppression(client: &Client, command: SuppressionCommand, as_json: bool) -> Result<()> {
    match command {
        SuppressionCommand::List { limit } => {
            let mut left = limit.unwrap_or(u64::MAX);
            let mut after = None;
            while left > 0 {
                let page = u32::try_from(left.min(1000)).unwrap_or(1000);
                let (entries, next) = client.suppression_list(after, Some(page)).await?;
                for e in &entries {
                    if as_json {
                        print_json(e)?;
                    } else {
                        print_entry(e);
                    }
                }
                left = left.saturating_sub(entries.len() as u64);
                match next {
                    Some(n) if !entries.is_empty() => after = Some(n),
                    _ => break,
                }
            }
        }
        SuppressionCommand::Add {
            channel: ch,
            recipient,
            reason,
        } => {
            let (entry, added) = client
                .suppression_add(channel(ch), &recipient, &reason)
                .await?;
            if as_json {
                print_json(&json!({"added": added, "entry": entry}))?;
            } else {
                if added {
                    println!("added:");
                } else {
                    println!("already on the list (its entry stays):");
                }
                print_entry(&entry);
            }
        }
        SuppressionCommand::Remove {
            channel: ch,
            recipient,
        } => {
            let entry = client.suppression_remove(channel(ch), &recipient).await?;
            if as_json {
                print_json(&json!({"removed": entry.is_some(), "entry": entry}))?;
            } else {
                match &entry {
                    Some(e) => {
                        println!("removed:");
                        print_entry(e);
                    }
                    None => println!("{recipient} was not on the {} list", channel(ch)),
                }
            }
        }
        SuppressionCommand::Check {
            channel: ch,
            recipients,
        } => {
            for status in client.suppression_check(channel(ch), recipients).await? {
                if as_json {
                    print_json(&status)?;
                } else {
                    match &status.entry {
                        Some(e) => {
                            print!("{} suppressed: ", status.recipient);
                            print_entry(e);
                        }
                        None => println!("{} not suppressed", status.recipient),
                    }
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let as_json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if as_json {
                let (code, field) = match e.downcast_ref::<ClientError>() {
                    Some(ClientError::Server(body)) => (body.code.as_str(), body.field.clone()),
                    Some(ClientError::Connect { .. }) => ("connect", None),
                    _ => ("error", None),
                };
                eprintln!(
                    "{}",
                    json!({"error": code, "field": field, "message": format!("{e:#}")})
                );
            } else {
                eprintln!("herald: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(args: &[&str]) -> Result<SendMessage> {
        let cli = Cli::try_parse_from([&["herald", "send"], args].concat()).unwrap();
        let Command::Send(a) = cli.command else {
            panic!()
        };
        build_message(*a)
    }

    #[test]
    fn flags_of_another_channel_are_refused() {
        let email = [
            "--channel",
            "email",
            "--to",
            "a@example.org",
            "--subject",
            "s",
            "--text",
            "t",
        ];
        let sms = ["--channel", "sms", "--to", "+14155550100", "--body", "b"];
        let push = ["--channel", "push", "--to", "tok", "--title", "t"];
        for (base, extra, flag) in [
            (&sms[..], &["--subject", "x"][..], "--subject"),
            (&email[..], &["--badge", "3"][..], "--badge"),
            (&email[..], &["--priority", "high"][..], "--priority"),
            (&sms[..], &["--sound", "ding"][..], "--sound"),
            (&sms[..], &["--reply-to", "r@example.org"][..], "--reply-to"),
            (
                &push[..],
                &["--reply-to", "r@example.org"][..],
                "--reply-to",
            ),
            (
                &push[..],
                &["--media-url", "https://example.org/a.png"][..],
                "--media-url",
            ),
        ] {
            assert!(build(base).is_ok(), "{base:?}");
            let err = build(&[base, extra].concat()).unwrap_err().to_string();
            assert!(
                err.contains(flag) && err.contains("does not apply"),
                "{extra:?}: {err}"
            );
        }
    }

    #[test]
    fn the_lane_is_normal_unless_asked_and_checked() {
        let sms = ["--channel", "sms", "--to", "+14155550100", "--body", "b"];
        assert_eq!(build(&sms).unwrap().lane, Lane::Normal);
        let urgent = build(&[&sms[..], &["--lane", "critical"]].concat()).unwrap();
        assert_eq!(urgent.lane, Lane::Critical);
        let err = Cli::try_parse_from(
            [&["herald", "send"][..], &sms[..], &["--lane", "urgent"][..]].concat(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("critical, normal or bulk"), "{err}");
    }

    #[test]
    fn override_suppression_is_off_unless_asked() {
        let sms = ["--channel", "sms", "--to", "+14155550100", "--body", "b"];
        assert!(!build(&sms).unwrap().override_suppression);
        let forced = build(&[&sms[..], &["--override-suppression"]].concat()).unwrap();
        assert!(forced.override_suppression);
    }

    #[test]
    fn suppression_commands_need_their_arguments() {
        let parse =
            |args: &[&str]| Cli::try_parse_from([&["herald", "suppression"], args].concat());
        assert!(parse(&["add", "email", "a@example.org", "--reason", "r"]).is_ok());
        let no_reason = parse(&["add", "email", "a@example.org"])
            .unwrap_err()
            .to_string();
        assert!(no_reason.contains("--reason"), "{no_reason}");
        assert!(parse(&["add", "fax", "a@example.org", "--reason", "r"]).is_err());
        assert!(
            parse(&["check", "email"]).is_err(),
            "at least one recipient"
        );
        assert!(parse(&["list", "--limit", "0"]).is_err());
        assert!(parse(&["remove", "sms", "+14155550100"]).is_ok());
    }

    #[test]
    fn send_at_parses_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T01:00:01+01:00"), Ok(1000));
        assert!(parse_rfc3339("tomorrow").is_err());
    }
}
