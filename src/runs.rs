//! `switchyard runs list | show | replay` (SPEC §9): run history read back from PostgreSQL.
//! The queries live in [`crate::history::query`] (the console uses them too); this file parses
//! arguments and prints. Exit codes (SPEC §4): 0 ok, 1 user error (history off, bad arguments,
//! nothing to show), 2 PostgreSQL or the broker could not be reached.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::broker::message::{ActionMessageRef, EventJson, H_TRIGGER};
use crate::broker::{self, BrokerError, Publisher, Topology, set_str};
use crate::commands::dlq::{cell, positive_rate, require_exchange, short_time, table};
use crate::commands::{UNREACHABLE, USER_ERROR};
use crate::config::Config;
use crate::history::query::{self, RunFilter, RunSummary};
use crate::history::{Attempt, EventRecord, HistoryError, Trigger};

/// How long connecting to PostgreSQL may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows read per page while collecting replay targets.
const PAGE: usize = 500;

/// The `switchyard runs …` commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// One line per action, newest first: its latest attempt.
    List {
        /// Which actions.
        #[command(flatten)]
        filter: RunFilter,
        /// At most this many lines.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Every attempt of one action (or of every action of one event), oldest first, with reasons
    /// and response excerpts.
    Show {
        /// The action id (`act_…`).
        #[arg(required_unless_present = "event", conflicts_with = "event")]
        action_id: Option<String>,
        /// Show the event (when it was received, its JSON) and every attempt of its actions.
        #[arg(long)]
        event: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Publishes actions again to their action queues with the same action id (so the same
    /// Idempotency-Key / webhook-id); the new attempts are recorded with trigger `replay`. More than
    /// one action, or one that succeeded, needs --yes.
    Replay {
        /// The action id (`act_…`); or give filters instead.
        action_id: Option<String>,
        /// Which actions (their latest attempt must match).
        #[command(flatten)]
        filter: RunFilter,
        /// At most this many actions (newest first).
        #[arg(long)]
        limit: Option<usize>,
        /// At most this many actions per second.
        #[arg(long, value_parser = positive_rate)]
        rate: Option<f64>,
        /// Only print what would be published; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Confirm a replay of more than one action, or of one that succeeded.
        #[arg(long)]
        yes: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum RunsError {
    /// Bad arguments, nothing found, or a refusal (exit 1).
    #[error("{0}")]
    Usage(String),
    /// History is off or its URL is wrong (exit 1).
    #[error(transparent)]
    Config(HistoryError),
    /// PostgreSQL could not be reached or failed (exit 2).
    #[error(transparent)]
    Database(HistoryError),
    /// PostgreSQL did not answer in time (exit 2).
    #[error("{0}")]
    Unreachable(String),
    /// The broker could not be reached or refused (exit 2).
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<HistoryError> for RunsError {
    fn from(e: HistoryError) -> RunsError {
        match e {
            HistoryError::Off | HistoryError::Url(_) => RunsError::Config(e),
            other => RunsError::Database(other),
        }
    }
}

impl RunsError {
    fn exit_code(&self) -> ExitCode {
        match self {
            RunsError::Usage(_) | RunsError::Config(_) => ExitCode::from(USER_ERROR),
            RunsError::Database(_) | RunsError::Unreachable(_) | RunsError::Broker(_) => {
                ExitCode::from(UNREACHABLE)
            }
        }
    }
}

/// Runs one `runs` command; returns the process exit code.
pub async fn run(config: &Config, command: Command, out: &mut impl Write) -> ExitCode {
    match dispatch(config, command, out).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Connects with the configured (secret-resolved) URL.
async fn connect(config: &Config) -> Result<tokio_postgres::Client, RunsError> {
    if !config.history.enabled() {
        return Err(HistoryError::Off.into());
    }
    let secrets = crate::secrets::load(&config.secrets.dir).map_err(|e| {
        RunsError::Usage(format!(
            "reading secrets from {}: {e}",
            config.secrets.dir.display()
        ))
    })?;
    let url = crate::history::resolve_url(&config.history.url, &secrets)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, crate::history::connect(&url)).await {
        Ok(client) => Ok(client?),
        Err(_) => Err(RunsError::Unreachable(format!(
            "PostgreSQL (history.url) did not answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

async fn dispatch(
    config: &Config,
    command: Command,
    out: &mut impl Write,
) -> Result<ExitCode, RunsError> {
    if let Command::List { filter, .. } | Command::Replay { filter, .. } = &command
        && let (Some(since), Some(until)) = (filter.since, filter.until)
        && since > until
    {
        return Err(RunsError::Usage(format!(
            "--since {} is after --until {}",
            short_time(since),
            short_time(until)
        )));
    }
    let client = connect(config).await?;
    match command {
        Command::List {
            filter,
            limit,
            json,
        } => {
            let runs = query::list(&client, &filter, limit, None).await?;
            print_runs(out, &runs, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Show {
            action_id,
            event,
            json,
        } => show(&client, action_id, event, json, out).await,
        Command::Replay {
            action_id,
            filter,
            limit,
            rate,
            dry_run,
            yes,
            json,
        } => {
            let targets = match (&action_id, filter.is_empty()) {
                (Some(_), false) => {
                    return Err(RunsError::Usage(
                        "give an ACTION_ID or filters, not both".into(),
                    ));
                }
                (None, true) => {
                    return Err(RunsError::Usage(
                        "say which actions to replay: an ACTION_ID, or at least one filter (--event, --contact, --workflow, --outcome dead --since 2h, …)".into(),
                    ));
                }
                (Some(id), true) => match query::summary_of_action(&client, id).await? {
                    Some(run) => vec![run],
                    None => {
                        return Err(RunsError::Usage(format!(
                            "no attempt of {id} in run history"
                        )));
                    }
                },
                (None, false) => collect(&client, &filter, limit).await?,
            };
            let options = ReplayOptions {
                rate,
                dry_run,
                yes,
                json,
            };
            replay(config, &client, targets, options, out).await
        }
    }
}

/// Every action matching `filter` (newest first), up to `limit`, page by page.
async fn collect(
    client: &tokio_postgres::Client,
    filter: &RunFilter,
    limit: Option<usize>,
) -> Result<Vec<RunSummary>, RunsError> {
    let mut all: Vec<RunSummary> = Vec::new();
    loop {
        let want = limit.map_or(PAGE, |l| l.saturating_sub(all.len()).min(PAGE));
        if want == 0 {
            break;
        }
        let after = all.last().map(RunSummary::cursor);
        let page = query::list(client, filter, want, after.as_ref()).await?;
        let done = page.len() < want;
        all.extend(page);
        if done {
            break;
        }
    }
    Ok(all)
}

fn json_line(out: &mut impl Write, value: &impl Serialize) {
    // Serialising plain data to a String cannot fail.
    let line = serde_json::to_string(value).unwrap_or_default();
    let _ = writeln!(out, "{line}");
}

fn source(workflow: &Option<String>, webhook: &Option<String>, action: &str) -> String {
    match (workflow, webhook) {
        (Some(workflow), _) => format!("{workflow}/{action}"),
        (None, Some(webhook)) => format!("webhook {webhook}"),
        (None, None) => action.to_owned(),
    }
}

fn print_runs(out: &mut impl Write, runs: &[RunSummary], json: bool) {
    if json {
        for run in runs {
            json_line(out, run);
        }
        return;
    }
    if runs.is_empty() {
        let _ = writeln!(out, "no runs match");
        return;
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                short_time(r.last_attempt_at),
                r.action_id.clone(),
                r.event_id.clone(),
                source(&r.workflow, &r.webhook, &r.action),
                r.connector.clone(),
                r.attempts.to_string(),
                r.outcome.clone(),
                cell(r.http_status.map(|s| s.to_string())),
                cell(r.reason.clone()),
            ]
        })
        .collect();
    table(
        out,
        &[
            "LAST ATTEMPT",
            "ACTION ID",
            "EVENT",
            "WORKFLOW/ACTION",
            "CONNECTOR",
            "ATTEMPTS",
            "OUTCOME",
            "STATUS",
            "REASON",
        ],
        &[false, false, false, false, false, true, false, true, false],
        &rows,
    );
}

/// A line of `runs show --json`.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum ShowLine<'a> {
    /// The event as received (`"kind": "event"`).
    Event(&'a EventRecord),
    /// One attempt (`"kind": "attempt"`).
    Attempt(&'a Attempt),
}

async fn show(
    client: &tokio_postgres::Client,
    action_id: Option<String>,
    event: Option<String>,
    json: bool,
    out: &mut impl Write,
) -> Result<ExitCode, RunsError> {
    let (events, attempts, what) = match (action_id, event) {
        (Some(id), _) => (
            Vec::new(),
            query::attempts_of_action(client, &id).await?,
            format!("action {id}"),
        ),
        (None, Some(id)) => (
            query::events(client, &id).await?,
            query::attempts_of_event(client, &id).await?,
            format!("event {id}"),
        ),
        (None, None) => return Err(RunsError::Usage("give an ACTION_ID or --event ID".into())),
    };
    if events.is_empty() && attempts.is_empty() {
        return Err(RunsError::Usage(format!(
            "no record of {what} in run history"
        )));
    }
    if json {
        for event in &events {
            json_line(out, &ShowLine::Event(event));
        }
        for attempt in &attempts {
            json_line(out, &ShowLine::Attempt(attempt));
        }
        return Ok(ExitCode::SUCCESS);
    }
    for event in &events {
        let _ = writeln!(
            out,
            "event {}  {}  workspace {}  received {}",
            cell(event.event_id.clone()),
            cell(event.event_type.clone()),
            cell(event.workspace.clone()),
            short_time(event.received_at)
        );
        if let Some(reason) = &event.rejected {
            let _ = writeln!(out, "  rejected: {reason}");
        }
        if let Some(payload) = &event.payload {
            let _ = writeln!(out, "  {payload}");
        }
    }
    if attempts.is_empty() {
        let _ = writeln!(out, "no attempts recorded");
    }
    let mut current = "";
    for a in &attempts {
        if a.action_id != current {
            current = &a.action_id;
            let _ = writeln!(
                out,
                "\n{}  {}  {}  event {}  workspace {}{}",
                a.action_id,
                source(&a.workflow, &a.webhook, &a.action),
                a.connector,
                a.event_id,
                a.workspace,
                a.contact_email
                    .as_deref()
                    .map(|e| format!("  contact {e}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            out,
            "  #{} {}  {}  {}ms  {}{}{}",
            a.attempt,
            short_time(a.started_at),
            a.trigger.as_str(),
            a.duration_ms,
            a.outcome.as_str(),
            a.http_status
                .map(|s| format!("  HTTP {s}"))
                .unwrap_or_default(),
            a.error_class
                .as_deref()
                .map(|c| format!("  ({c})"))
                .unwrap_or_default()
        );
        if let Some(reason) = &a.reason {
            let _ = writeln!(out, "      reason: {reason}");
        }
        if let Some(excerpt) = &a.response_excerpt {
            let _ = writeln!(out, "      response: {excerpt}");
        }
        if let Some(trace) = &a.trace_id {
            let _ = writeln!(out, "      trace: {trace}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How `runs replay` runs.
struct ReplayOptions {
    /// Actions per second at most.
    rate: Option<f64>,
    /// Publish nothing.
    dry_run: bool,
    /// Confirmed by the user.
    yes: bool,
    /// One JSON object per line.
    json: bool,
}

/// A line of `runs replay --json`.
#[derive(Serialize)]
struct ReplayLine<'a> {
    /// The action.
    action_id: &'a str,
    /// Its event.
    event_id: &'a str,
    /// Its action queue's connector.
    connector: &'a str,
    /// `would replay`, `replayed` or `skipped`.
    result: &'a str,
    /// Why it was skipped, or the queue it would go to.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

async fn replay(
    config: &Config,
    client: &tokio_postgres::Client,
    targets: Vec<RunSummary>,
    options: ReplayOptions,
    out: &mut impl Write,
) -> Result<ExitCode, RunsError> {
    if targets.is_empty() {
        let _ = writeln!(out, "no runs match; nothing to replay");
        return Ok(ExitCode::SUCCESS);
    }
    let succeeded = targets.iter().filter(|t| t.outcome == "success").count();
    if !options.dry_run && !options.yes && (targets.len() > 1 || succeeded > 0) {
        return Err(RunsError::Usage(format!(
            "{} action(s) match, {succeeded} of them succeeded already; replaying calls the remote again (same action id): add --yes to go ahead, or --dry-run to see them",
            targets.len()
        )));
    }
    let topology = Topology::new(config);
    let connection = if options.dry_run {
        None
    } else {
        Some(
            broker::connect_any(&config.amqp, "switchyard runs replay")
                .await?
                .connection,
        )
    };
    let publisher = match &connection {
        Some(connection) => {
            if let Err(e) = require_exchange(connection, &topology.actions).await {
                return Err(match e {
                    crate::commands::dlq::DlqError::Broker(e) => RunsError::Broker(e),
                    other => RunsError::Usage(other.to_string()),
                });
            }
            Some(Publisher::open(connection).await?)
        }
        None => None,
    };
    let result = publish_all(
        client,
        &topology,
        publisher.as_ref(),
        &targets,
        &options,
        out,
    )
    .await;
    if let Some(connection) = &connection {
        broker::close_connection(connection, 200, "done").await;
    }
    let (replayed, skipped) = result?;
    if !options.json {
        if options.dry_run {
            let _ = writeln!(
                out,
                "dry run: would replay {replayed} action(s) to {}; nothing published",
                topology.actions
            );
        } else {
            let _ = writeln!(
                out,
                "replayed {replayed} action(s) to {} (same action ids, trigger replay)",
                topology.actions
            );
        }
        if skipped > 0 {
            let _ = writeln!(out, "{skipped} action(s) could not be replayed (see above)");
        }
    }
    Ok(if skipped > 0 {
        ExitCode::from(USER_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}

/// Publishes each target (or says it would); returns (replayed, skipped).
async fn publish_all(
    client: &tokio_postgres::Client,
    topology: &Topology,
    publisher: Option<&Publisher>,
    targets: &[RunSummary],
    options: &ReplayOptions,
    out: &mut impl Write,
) -> Result<(usize, usize), RunsError> {
    let started = Instant::now();
    let (mut replayed, mut skipped) = (0usize, 0usize);
    for target in targets {
        let say = |out: &mut dyn Write, result: &str, reason: Option<&str>| {
            if options.json {
                let line = serde_json::to_string(&ReplayLine {
                    action_id: &target.action_id,
                    event_id: &target.event_id,
                    connector: &target.connector,
                    result,
                    reason,
                })
                .unwrap_or_default();
                let _ = writeln!(out, "{line}");
            } else {
                let _ = writeln!(
                    out,
                    "{result} {} {} -> {}{}",
                    target.action_id,
                    source(&target.workflow, &target.webhook, &target.action),
                    target.connector,
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                );
            }
        };
        let Some(queue) = topology.action_queue(&target.connector) else {
            say(out, "skipped", Some("unknown connector"));
            skipped += 1;
            continue;
        };
        let Some(payload) = query::event_payload(client, &target.event_id).await? else {
            say(
                out,
                "skipped",
                Some("the event's JSON is not in history (history.store_payloads off, or expired)"),
            );
            skipped += 1;
            continue;
        };
        let event: Value = match serde_json::from_str(&payload) {
            Ok(event) => event,
            Err(e) => {
                let reason = format!("the stored event is not JSON: {e}");
                say(out, "skipped", Some(&reason));
                skipped += 1;
                continue;
            }
        };
        // A dependent action gets the outputs of its earlier steps again, as history kept them.
        let steps: Option<Value> = match query::action_steps(client, &target.action_id).await? {
            Some(text) => match serde_json::from_str(&text) {
                Ok(steps) => Some(steps),
                Err(e) => {
                    let reason =
                        format!("the stored outputs of its earlier steps are not JSON: {e}");
                    say(out, "skipped", Some(&reason));
                    skipped += 1;
                    continue;
                }
            },
            None => None,
        };
        let Some(publisher) = publisher else {
            say(out, "would replay", Some(queue));
            replayed += 1;
            continue;
        };
        if let Some(rate) = options.rate {
            let due = started + Duration::from_secs_f64(replayed as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let message = ActionMessageRef {
            id: &target.action_id,
            workflow: target.workflow.as_deref(),
            webhook: target.webhook.as_deref(),
            action: &target.action,
            connector: &target.connector,
            workspace: &target.workspace,
            event: EventJson::Value(&event),
            steps: steps.as_ref(),
        };
        let (body, mut properties) =
            message.encode(&target.event_id, &crate::trace::TraceContext::root());
        let mut headers = properties.headers().clone().unwrap_or_default();
        set_str(&mut headers, H_TRIGGER, Trigger::Replay.as_str());
        properties = properties.with_headers(headers);
        publisher
            .publish(&topology.actions, &target.connector, &body, properties)
            .await?;
        say(out, "replayed", None);
        replayed += 1;
    }
    Ok((replayed, skipped))
}
