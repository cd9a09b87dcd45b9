//! The dead-letter commands of SPEC §4: `dlq stats`, `list`, `show`, `replay`, `export`, `purge`.
//!
//! Every command reads `<prefix>.dead-letter` in one bounded pass ([`Pass`]): `basic.get` without
//! auto-ack, one record at a time, until the queue answers empty or as many records have been read
//! as it held when the pass began. Every delivery stays unacked until the pass ends, so the broker
//! cannot hand the same record back twice in one pass; records the command removes (replayed once
//! their copy is confirmed, exported once their line is on disk, purged) are acked, and everything
//! else is handed back with one `nack(requeue)` at the end, unchanged. Passes read to the end even
//! with `--limit`: the broker appends what is handed back, so a pass that stopped early would move
//! the records it read behind the ones it did not. If the process dies
//! half-way, the broker requeues whatever was not acked: a record is never lost, at worst it is
//! both replayed (or exported) and still in the queue.
//!
//! Each command returns the process exit code: 0 ok, 1 user error, 2 broker unreachable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde_json::Value;

use crate::broker::message::{
    H_ACTION, H_ATTEMPTS, H_CLASS, H_CONNECTOR, H_DEAD_AT, H_EVENT, H_FIRST_ATTEMPT, H_LAST_STATUS,
    H_REASON, H_RETRIES, H_WORKFLOW, H_WORKSPACE,
};
use crate::broker::{
    self, AmqpContext, BrokerError, Publisher, RETRY_TIER_HEADER, Topology, header_int, header_str,
};
use crate::cli::{UNREACHABLE, USER_ERROR};
use crate::config::Config;

/// Records acked together after one `fsync` of the export file.
const EXPORT_BATCH: usize = 256;

/// Distinct reasons `dlq stats` lists before summarising the rest.
const STATS_REASONS: usize = 20;

/// The broker's own redelivery counter. Quorum queues add it to a record each time a pass hands
/// it back; it says how often the queue was read, not how the action failed, so the commands
/// leave it out of what they show, export and replay.
const H_DELIVERY_COUNT: &str = "x-delivery-count";

/// Headers a replay removes so that the action starts again with a fresh attempt budget. The
/// `x-death` family is the broker's record of earlier dead-letterings (the poison backstop).
const REPLAY_DROPS: [&str; 14] = [
    H_ATTEMPTS,
    H_RETRIES,
    H_REASON,
    H_CLASS,
    H_LAST_STATUS,
    H_DEAD_AT,
    H_FIRST_ATTEMPT,
    RETRY_TIER_HEADER,
    H_DELIVERY_COUNT,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-reason",
];

/// The `switchyard dlq …` commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Counts of dead-lettered actions by connector, workflow, error class and reason.
    Stats {
        /// Which records to count.
        #[command(flatten)]
        filter: Filter,
    },
    /// One line per dead-lettered action: id, dead-at, connector, workflow/action, class, last
    /// status, reason.
    List {
        /// Which records to list.
        #[command(flatten)]
        filter: Filter,
        /// List at most this many (the oldest).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Everything about one record: properties, every header, and the body. ID is an action id
    /// (the message id); an event id shows every record of that event.
    Show {
        /// The action id (`act_…`) or an event id.
        id: String,
    },
    /// Moves matching records back to their action queue with a fresh attempt budget (the action
    /// id is kept, so destinations can de-duplicate).
    Replay {
        /// Which records to replay.
        #[command(flatten)]
        filter: Filter,
        /// Replay at most this many (the first matches in queue order).
        #[arg(long)]
        limit: Option<usize>,
        /// At most this many records per second (default: as fast as confirms allow).
        #[arg(long, value_parser = positive_rate)]
        rate: Option<f64>,
        /// Only print what would move; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --rate, how long one pass may hold records unacked before handing them back and
        /// starting over; keep it well below the broker's consumer_timeout (30m by default).
        #[arg(long, default_value = "10m", value_parser = parse_hold)]
        max_hold: Duration,
    },
    /// Drains matching records to a JSON-lines file; each is removed from the queue only once its
    /// line is written and synced to disk.
    Export {
        /// Which records to export.
        #[command(flatten)]
        filter: Filter,
        /// Export at most this many (the first matches in queue order).
        #[arg(long)]
        limit: Option<usize>,
        /// The file to write; it must not exist yet (an export is never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Deletes matching records. Without --yes, only says how many would be deleted (exit 1).
    Purge {
        /// Which records to delete.
        #[command(flatten)]
        filter: Filter,
        /// Delete at most this many (the first matches in queue order).
        #[arg(long)]
        limit: Option<usize>,
        /// Really delete them.
        #[arg(long)]
        yes: bool,
    },
}

/// Which records a command applies to. Every given filter must hold; records that match none
/// stay in the queue untouched.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only this connector (http, webhook, salesforce, mailchimp, braze).
    #[arg(long)]
    pub connector: Option<String>,
    /// Only this workflow (or webhook) id.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only this action id (within its workflow).
    #[arg(long)]
    pub action: Option<String>,
    /// Only this workspace.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Only this error class (permanent, exhausted, template, config, blocked).
    #[arg(long)]
    pub class: Option<String>,
    /// Only records whose reason contains this text (case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only records dead-lettered at or after this time: RFC 3339 (2024-05-01T12:00:00Z) or a
    /// duration meaning that long ago (2h, 30m, 3d).
    #[arg(long, value_parser = parse_when)]
    pub since: Option<DateTime<Utc>>,
    /// Only records dead-lettered at or before this time (same forms as --since).
    #[arg(long, value_parser = parse_when)]
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    /// Whether a record passes every given filter. A time filter excludes records whose
    /// dead-letter time is unknown.
    pub fn matches(&self, record: &Record) -> bool {
        let exact = |wanted: &Option<String>, got: Option<String>| match wanted {
            Some(wanted) => got.as_deref() == Some(wanted.as_str()),
            None => true,
        };
        if !exact(&self.connector, record.connector())
            || !exact(&self.workflow, record.workflow())
            || !exact(&self.action, record.action())
            || !exact(&self.workspace, record.workspace())
            || !exact(&self.class, record.header(H_CLASS).map(str::to_owned))
        {
            return false;
        }
        if let Some(wanted) = &self.reason
            && !record
                .reason()
                .to_lowercase()
                .contains(&wanted.to_lowercase())
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(dead_at) = record.dead_at() else {
                return false;
            };
            if self.since.is_some_and(|since| dead_at < since)
                || self.until.is_some_and(|until| dead_at > until)
            {
                return false;
            }
        }
        true
    }

    /// Whether no filter was given.
    fn is_empty(&self) -> bool {
        self.connector.is_none()
            && self.workflow.is_none()
            && self.action.is_none()
            && self.workspace.is_none()
            && self.class.is_none()
            && self.reason.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    /// Checks what clap cannot: the time window is not empty. Done before connecting, so that a
    /// bad argument is a user error whatever state the broker is in.
    fn check(&self) -> Result<(), DlqError> {
        match (self.since, self.until) {
            (Some(since), Some(until)) if since > until => Err(DlqError::Usage(format!(
                "--since {} is after --until {}",
                since.to_rfc3339_opts(SecondsFormat::Secs, true),
                until.to_rfc3339_opts(SecondsFormat::Secs, true)
            ))),
            _ => Ok(()),
        }
    }
}

/// `--since` / `--until`: RFC 3339, or a duration meaning "that long ago".
fn parse_when(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => chrono::Duration::from_std(ago)
            .ok()
            .and_then(|ago| Utc::now().checked_sub_signed(ago))
            .ok_or_else(|| format!("{text} ago is out of range")),
        Err(_) => Err(format!(
            "expected an RFC 3339 time (2024-05-01T12:00:00Z) or a duration meaning that long ago (2h, 30m, 3d), got {text:?}"
        )),
    }
}

/// `--max-hold`: a positive duration.
fn parse_hold(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(hold) if !hold.is_zero() => Ok(hold),
        _ => Err(format!(
            "expected a positive duration (10m, 90s), got {text:?}"
        )),
    }
}

/// `--rate`: a positive number of records per second.
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "expected a positive number of records per second, got {text:?}"
        )),
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum DlqError {
    /// Bad arguments, or a queue or exchange the configuration names does not exist (exit 1).
    #[error("{0}")]
    Usage(String),
    /// The export file could not be written (exit 1).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The broker could not be reached or failed during the pass (exit 2).
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl DlqError {
    fn exit_code(&self) -> ExitCode {
        match self {
            DlqError::Usage(_) | DlqError::Io { .. } => ExitCode::from(USER_ERROR),
            DlqError::Broker(_) => ExitCode::from(UNREACHABLE),
        }
    }
}

/// Runs one `dlq` command; returns the process exit code.
pub async fn run(config: &Config, command: Command, out: &mut impl Write) -> ExitCode {
    let topology = Topology::new(config);
    let filter = match &command {
        Command::Stats { filter }
        | Command::List { filter, .. }
        | Command::Replay { filter, .. }
        | Command::Export { filter, .. }
        | Command::Purge { filter, .. } => Some(filter),
        Command::Show { .. } => None,
    };
    if let Some(Err(e)) = filter.map(Filter::check) {
        eprintln!("error: {e}");
        return e.exit_code();
    }
    let result = async {
        let connection = broker::connect(
            &config.amqp.url,
            "switchyard dlq",
            config.amqp.connect_timeout,
        )
        .await?;
        let result = dispatch(&connection, &topology, command, out).await;
        broker::close_connection(&connection, 200, "done").await;
        result
    }
    .await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if let DlqError::Broker(_) = e {
                eprintln!(
                    "nothing was lost: records not yet removed stay in {}",
                    topology.dead_letter
                );
            }
            e.exit_code()
        }
    }
}

async fn dispatch(
    connection: &Connection,
    topology: &Topology,
    command: Command,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    match command {
        Command::Stats { filter } => stats(connection, topology, &filter, out).await,
        Command::List { filter, limit } => list(connection, topology, &filter, limit, out).await,
        Command::Show { id } => show(connection, topology, &id, out).await,
        Command::Replay {
            filter,
            limit,
            rate,
            dry_run,
            max_hold,
        } => {
            let options = ReplayOptions {
                limit,
                rate,
                dry_run,
                max_hold,
            };
            replay(connection, topology, &filter, options, out).await
        }
        Command::Export {
            filter,
            limit,
            out: path,
        } => export(connection, topology, &filter, limit, &path, out).await,
        Command::Purge { filter, limit, yes } => {
            purge(connection, topology, &filter, limit, yes, out).await
        }
    }
}

/// One dead-lettered action as read from the queue.
#[derive(Debug)]
pub struct Record {
    /// The delivery tag on the pass's channel, to ack it.
    tag: u64,
    /// The message properties, headers included.
    properties: BasicProperties,
    /// The original action message, byte for byte.
    body: Vec<u8>,
    /// The body parsed, when a header is missing and the body is consulted instead.
    parsed: std::sync::OnceLock<Option<Value>>,
}

impl Record {
    /// The action id (the message id).
    pub fn id(&self) -> Option<&str> {
        self.properties.message_id().as_ref().map(|s| s.as_str())
    }

    fn headers(&self) -> Option<&FieldTable> {
        self.properties.headers().as_ref()
    }

    /// A string header.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_str(self.headers(), name)
    }

    /// A header, else a string field of the action message body.
    fn field(&self, header: &str, keys: &[&str]) -> Option<String> {
        if let Some(value) = self.header(header).filter(|v| !v.is_empty()) {
            return Some(value.to_owned());
        }
        let body = self
            .parsed
            .get_or_init(|| serde_json::from_slice(&self.body).ok());
        keys.iter()
            .find_map(|key| body.as_ref()?.get(key)?.as_str())
            .map(str::to_owned)
    }

    /// The connector, which names the action queue a replay goes to.
    pub fn connector(&self) -> Option<String> {
        self.field(H_CONNECTOR, &["connector"])
    }

    /// The workflow (or webhook) id.
    pub fn workflow(&self) -> Option<String> {
        self.field(H_WORKFLOW, &["workflow", "webhook"])
    }

    /// The action id within its workflow.
    pub fn action(&self) -> Option<String> {
        self.field(H_ACTION, &["action"])
    }

    /// The event's workspace.
    pub fn workspace(&self) -> Option<String> {
        self.field(H_WORKSPACE, &["workspace"])
    }

    /// Why it was dead-lettered. A record the broker dead-lettered itself (the quorum-queue
    /// delivery limit) carries no reason of ours, so the broker's own account is given.
    pub fn reason(&self) -> String {
        if let Some(reason) = self.header(H_REASON) {
            return reason.to_owned();
        }
        match self.header("x-first-death-reason") {
            Some(why) => format!(
                "dead-lettered by the broker ({why}) from {}",
                self.header("x-first-death-queue").unwrap_or("a queue")
            ),
            None => String::new(),
        }
    }

    /// The last HTTP status, if any.
    fn status(&self) -> Option<String> {
        match header_int(self.headers(), H_LAST_STATUS) {
            Some(status) => Some(status.to_string()),
            None => self
                .header(H_LAST_STATUS)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        }
    }

    /// When it was dead-lettered: our header, else the broker's `x-death` time.
    pub fn dead_at(&self) -> Option<DateTime<Utc>> {
        if let Some(text) = self.header(H_DEAD_AT) {
            return DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.with_timezone(&Utc));
        }
        let AMQPValue::FieldArray(deaths) = self.headers()?.inner().get("x-death")? else {
            return None;
        };
        let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
            return None;
        };
        match first.inner().get("time")? {
            AMQPValue::Timestamp(secs) => DateTime::from_timestamp(i64::try_from(*secs).ok()?, 0),
            _ => None,
        }
    }

    /// Every header of the record except the broker's redelivery counter, as JSON.
    fn headers_json(&self) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        if let Some(headers) = self.headers() {
            for (name, value) in headers {
                if name.as_str() != H_DELIVERY_COUNT {
                    map.insert(name.to_string(), amqp_to_json(value));
                }
            }
        }
        map
    }

    /// The body as JSON, or as a string when it is not JSON.
    fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }

    /// What identifies a record within a pass, when it has an id and a dead-letter time.
    fn fingerprint(&self) -> Option<(String, String)> {
        Some((self.id()?.to_owned(), self.header(H_DEAD_AT)?.to_owned()))
    }
}

/// A header value as JSON: strings as strings, numbers as numbers, tables as objects.
fn amqp_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(v) => Value::Bool(*v),
        AMQPValue::ShortShortInt(v) => Value::from(*v),
        AMQPValue::ShortShortUInt(v) => Value::from(*v),
        AMQPValue::ShortInt(v) => Value::from(*v),
        AMQPValue::ShortUInt(v) => Value::from(*v),
        AMQPValue::LongInt(v) => Value::from(*v),
        AMQPValue::LongUInt(v) => Value::from(*v),
        AMQPValue::LongLongInt(v) => Value::from(*v),
        AMQPValue::Float(v) => Value::from(f64::from(*v)),
        AMQPValue::Double(v) => Value::from(*v),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_to_json).collect())
        }
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| (k.to_string(), amqp_to_json(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(bytes) => {
            use base64::Engine as _;
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes.as_slice()))
        }
        AMQPValue::Void => Value::Null,
    }
}

/// One bounded read of the dead-letter queue (see the module documentation).
struct Pass {
    /// The channel every record of the pass is read (and acked) on.
    channel: Channel,
    /// The queue.
    queue: String,
    /// Ready records when the pass began: it never reads more, so records handed back or
    /// dead-lettered meanwhile cannot keep it going.
    budget: u32,
    /// Records read so far.
    read: u32,
    /// Records already returned by this pass, in case the broker delivers one again.
    seen: HashSet<(String, String)>,
    /// Records removed (acked) by this pass.
    removed: u32,
}

impl Pass {
    /// Opens a channel and learns how many records the queue holds.
    async fn open(connection: &Connection, queue: &str) -> Result<Pass, DlqError> {
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        let declared = ready_count(&channel, queue).await;
        let budget = match declared {
            Ok(count) => count,
            Err(e) if is_not_found(&e) => {
                return Err(DlqError::Usage(format!(
                    "queue {queue} does not exist: check amqp.prefix (SWITCHYARD__AMQP__PREFIX), or run `switchyard topology`"
                )));
            }
            Err(source) => {
                return Err(DlqError::Broker(BrokerError::Amqp {
                    context: format!("inspecting {queue}"),
                    source,
                }));
            }
        };
        Ok(Pass {
            channel,
            queue: queue.to_owned(),
            budget,
            read: 0,
            seen: HashSet::new(),
            removed: 0,
        })
    }

    /// The next record, or `None` once the queue is empty or the budget is spent.
    async fn next(&mut self) -> Result<Option<Record>, DlqError> {
        while self.read < self.budget {
            let got = self
                .channel
                .basic_get(
                    self.queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .context(format!("reading {}", self.queue))?;
            let Some(got) = got else {
                return Ok(None);
            };
            self.read += 1;
            let delivery = got.delivery;
            let record = Record {
                tag: delivery.delivery_tag,
                properties: delivery.properties,
                body: delivery.data,
                parsed: std::sync::OnceLock::new(),
            };
            // Unacked deliveries are never redelivered on their own channel, so this only
            // guards against a broker that does; such a copy stays held and is handed back.
            if let Some(key) = record.fingerprint()
                && !self.seen.insert(key)
            {
                continue;
            }
            return Ok(Some(record));
        }
        Ok(None)
    }

    /// Removes a record from the queue for good.
    async fn remove(&mut self, record: &Record) -> Result<(), DlqError> {
        self.channel
            .basic_ack(record.tag, BasicAckOptions::default())
            .await
            .context(format!("removing a record from {}", self.queue))?;
        self.removed += 1;
        Ok(())
    }

    /// Hands every record not removed back to the queue, unchanged, and closes the channel.
    async fn finish(self) -> Result<(), DlqError> {
        if self.read > 0 {
            // Tag 0 with `multiple` means every delivery still unacked on this channel.
            self.channel
                .basic_nack(
                    0,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await
                .context(format!("handing records back to {}", self.queue))?;
            // The broker applies the requeue after this returns: wait (briefly) until the records
            // are ready again, so that the next command sees them, not a queue that looks empty.
            let until = tokio::time::Instant::now() + REQUEUE_WAIT;
            while tokio::time::Instant::now() < until
                && ready_count(&self.channel, &self.queue)
                    .await
                    .is_ok_and(|ready| ready < self.left())
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Closing would requeue them as well; a failure here loses nothing.
        broker::close_channel(&self.channel, 200, "done").await;
        Ok(())
    }

    /// Records left in the queue after this pass (as far as this pass knows).
    fn left(&self) -> u32 {
        self.budget.saturating_sub(self.removed)
    }
}

/// How long a pass waits, at its end, for the records it handed back to be ready again.
const REQUEUE_WAIT: Duration = Duration::from_secs(2);

/// Ready messages in `queue` (a passive declare).
async fn ready_count(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .map(|q| q.message_count())
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

/// Formats a time as the tables show it: UTC, to the second.
fn short_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Writes an aligned table: `right` marks the columns aligned right (numbers). The last column is
/// not padded.
fn table(out: &mut impl Write, headings: &[&str], right: &[bool], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headings.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                text.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if i < last {
                    text.push_str(&" ".repeat(pad));
                }
            }
        }
        text.truncate(text.trim_end().len());
        text
    };
    let _ = writeln!(out, "{}", line(headings.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// A value for a table cell: `-` when absent, on one line.
fn cell(value: Option<String>) -> String {
    match value {
        Some(v) if !v.is_empty() => v.replace(['\n', '\r', '\t'], " "),
        _ => "-".into(),
    }
}

/// `dlq stats`.
async fn stats(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    let mut pass = Pass::open(connection, &topology.dead_letter).await?;
    let mut total = 0usize;
    let mut by_connector: HashMap<String, usize> = HashMap::new();
    let mut by_workflow: HashMap<String, usize> = HashMap::new();
    let mut by_class: HashMap<String, usize> = HashMap::new();
    let mut by_reason: HashMap<(String, String), usize> = HashMap::new();
    let mut oldest: Option<DateTime<Utc>> = None;
    let mut newest: Option<DateTime<Utc>> = None;
    while let Some(record) = pass.next().await? {
        if !filter.matches(&record) {
            continue;
        }
        total += 1;
        *by_connector.entry(cell(record.connector())).or_default() += 1;
        *by_workflow.entry(cell(record.workflow())).or_default() += 1;
        let class = cell(record.header(H_CLASS).map(str::to_owned));
        *by_class.entry(class.clone()).or_default() += 1;
        *by_reason
            .entry((class, cell(Some(record.reason()))))
            .or_default() += 1;
        if let Some(at) = record.dead_at() {
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
            newest = Some(newest.map_or(at, |n| n.max(at)));
        }
    }
    let read = pass.read;
    pass.finish().await?;

    let queue = &topology.dead_letter;
    if total == 0 {
        if read == 0 {
            let _ = writeln!(out, "{queue} is empty");
        } else {
            let _ = writeln!(out, "{queue}: no record matches (of {read})");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let scope = if filter.is_empty() {
        format!("{queue}: {total} record(s)")
    } else {
        format!("{queue}: {total} matching record(s) (of {read})")
    };
    match (oldest, newest) {
        (Some(oldest), Some(newest)) => {
            let _ = writeln!(
                out,
                "{scope}, dead-lettered between {} and {}",
                short_time(oldest),
                short_time(newest)
            );
        }
        _ => {
            let _ = writeln!(out, "{scope}");
        }
    }
    let ranked = |counts: HashMap<String, usize>| {
        let mut rows: Vec<(String, usize)> = counts.into_iter().collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows.into_iter()
            .map(|(key, n)| vec![n.to_string(), key])
            .collect::<Vec<_>>()
    };
    for (heading, counts) in [
        ("CONNECTOR", by_connector),
        ("WORKFLOW", by_workflow),
        ("CLASS", by_class),
    ] {
        let _ = writeln!(out);
        table(out, &["RECORDS", heading], &[true, false], &ranked(counts));
    }
    let mut reasons: Vec<((String, String), usize)> = by_reason.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let more = reasons.len().saturating_sub(STATS_REASONS);
    let rows: Vec<Vec<String>> = reasons
        .into_iter()
        .take(STATS_REASONS)
        .map(|((class, reason), n)| vec![n.to_string(), class, reason])
        .collect();
    let _ = writeln!(out);
    table(
        out,
        &["RECORDS", "CLASS", "REASON"],
        &[true, false, false],
        &rows,
    );
    if more > 0 {
        let _ = writeln!(
            out,
            "… and {more} more distinct reason(s); narrow with filters or use `switchyard dlq list`"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `dlq list`.
async fn list(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    limit: Option<usize>,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    let mut pass = Pass::open(connection, &topology.dead_letter).await?;
    // The whole queue is read even with --limit: a pass that stops early would move the records
    // it read behind the rest (the broker appends what is handed back), and reading everything
    // lets --limit show the oldest records rather than whichever came first.
    let mut rows: Vec<(Option<DateTime<Utc>>, Vec<String>)> = Vec::new();
    while let Some(record) = pass.next().await? {
        if !filter.matches(&record) {
            continue;
        }
        let source = match (record.workflow(), record.action()) {
            (None, None) => None,
            (workflow, action) => Some(format!(
                "{}/{}",
                workflow.as_deref().unwrap_or("-"),
                action.as_deref().unwrap_or("-")
            )),
        };
        let dead_at = record.dead_at();
        rows.push((
            dead_at,
            vec![
                cell(record.id().map(str::to_owned)),
                cell(dead_at.map(short_time)),
                cell(record.connector()),
                cell(source),
                cell(record.header(H_CLASS).map(str::to_owned)),
                cell(record.status()),
                cell(Some(record.reason())),
            ],
        ));
    }
    let read = pass.read;
    pass.finish().await?;
    // Oldest first; records without a dead-letter time last; queue order breaks ties.
    rows.sort_by_key(|(at, _)| (at.is_none(), *at));
    let matched = rows.len();
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .take(limit.unwrap_or(usize::MAX))
        .map(|(_, row)| row)
        .collect();
    table(
        out,
        &[
            "ID",
            "DEAD-AT",
            "CONNECTOR",
            "WORKFLOW/ACTION",
            "CLASS",
            "STATUS",
            "REASON",
        ],
        &[false, false, false, false, false, true, false],
        &rows,
    );
    eprintln!(
        "{} record(s) listed, oldest first; {matched} of the {read} in {} match",
        rows.len(),
        topology.dead_letter
    );
    Ok(ExitCode::SUCCESS)
}

/// `dlq show`.
async fn show(
    connection: &Connection,
    topology: &Topology,
    id: &str,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    let mut pass = Pass::open(connection, &topology.dead_letter).await?;
    let mut found = 0usize;
    while let Some(record) = pass.next().await? {
        if record.id() != Some(id) && record.header(H_EVENT) != Some(id) {
            continue;
        }
        if found > 0 {
            let _ = writeln!(out, "\n{}", "-".repeat(72));
        }
        found += 1;
        print_record(out, &record, &topology.dead_letter);
    }
    pass.finish().await?;
    if found == 0 {
        eprintln!(
            "error: no record in {} has the action id or event id {id}",
            topology.dead_letter
        );
        return Ok(ExitCode::from(USER_ERROR));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_record(out: &mut impl Write, record: &Record, queue: &str) {
    let p = &record.properties;
    let _ = writeln!(
        out,
        "record {} in {queue}",
        record.id().unwrap_or("(no message id)")
    );
    let mut rows = Vec::new();
    if let Some(v) = p.content_type() {
        rows.push(vec!["content-type".into(), v.to_string()]);
    }
    if let Some(v) = p.content_encoding() {
        rows.push(vec!["content-encoding".into(), v.to_string()]);
    }
    if let Some(v) = p.timestamp() {
        let shown = i64::try_from(*v)
            .ok()
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .map_or_else(|| v.to_string(), short_time);
        rows.push(vec!["published-at".into(), shown]);
    }
    if let Some(v) = p.correlation_id() {
        rows.push(vec!["correlation-id".into(), v.to_string()]);
    }
    rows.push(vec!["body-bytes".into(), record.body.len().to_string()]);
    let _ = writeln!(out, "\nproperties");
    table(out, &["  NAME", "VALUE"], &[false, false], &indent(rows));

    let headers: Vec<Vec<String>> = record
        .headers_json()
        .into_iter()
        .map(|(name, value)| {
            let shown = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            vec![name, shown]
        })
        .collect();
    let _ = writeln!(out, "\nheaders");
    table(out, &["  NAME", "VALUE"], &[false, false], &indent(headers));

    let _ = writeln!(out, "\nbody");
    match serde_json::from_slice::<Value>(&record.body) {
        Ok(json) => {
            let pretty = serde_json::to_string_pretty(&json).unwrap_or_default();
            let _ = writeln!(out, "{pretty}");
        }
        Err(_) => {
            let _ = writeln!(out, "{}", String::from_utf8_lossy(&record.body));
        }
    }
}

fn indent(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    for row in &mut rows {
        if let Some(first) = row.first_mut() {
            first.insert_str(0, "  ");
        }
    }
    rows
}

/// How `dlq replay` runs.
struct ReplayOptions {
    /// At most this many records.
    limit: Option<usize>,
    /// Records per second.
    rate: Option<f64>,
    /// Change nothing.
    dry_run: bool,
    /// The longest a pass holds records unacked while waiting for --rate.
    max_hold: Duration,
}

/// `dlq replay`.
async fn replay(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    options: ReplayOptions,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    let publisher = if options.dry_run {
        None
    } else {
        require_exchange(connection, &topology.actions).await?;
        Some(Publisher::open(connection).await?)
    };
    let started = Instant::now();
    let mut moved = 0usize;
    // Matches past --limit, counted in the last pass.
    let mut beyond;
    // Records this replay leaves where they are (no known connector, or refused by the broker),
    // so that a later pass does not report or retry them again.
    let mut left_alone: HashSet<(String, String)> = HashSet::new();
    let mut not_moved = 0usize;
    let mut refused = false;
    // A rate-limited replay can outlast the broker's consumer_timeout (30 min by default), which
    // counts from the oldest unacked delivery, including the records a pass holds. So a pass
    // ends once it has held records for --max-hold; the next one starts after the wait.
    loop {
        let mut pass = Pass::open(connection, &topology.dead_letter).await?;
        let hold_until = Instant::now() + options.max_hold;
        let mut resume_at = None;
        beyond = 0;
        while let Some(record) = pass.next().await? {
            if !filter.matches(&record) {
                continue;
            }
            if options.limit.is_some_and(|limit| moved >= limit) {
                beyond += 1;
                continue;
            }
            let key = record.fingerprint();
            if key.as_ref().is_some_and(|key| left_alone.contains(key)) {
                continue;
            }
            let id = cell(record.id().map(str::to_owned));
            let source = format!("{}/{}", cell(record.workflow()), cell(record.action()));
            let Some((connector, queue)) = record
                .connector()
                .and_then(|c| topology.action_queue(&c).map(|q| (c.clone(), q.to_owned())))
            else {
                let _ = writeln!(
                    out,
                    "skip {id} {source}: no known connector ({}); it stays",
                    cell(record.connector())
                );
                not_moved += 1;
                left_alone.extend(key);
                continue;
            };
            let Some(publisher) = &publisher else {
                moved += 1;
                let _ = writeln!(out, "would replay {id} {source} -> {queue}");
                continue;
            };
            if let Some(rate) = options.rate {
                let due = started + Duration::from_secs_f64(moved as f64 / rate);
                if due > hold_until {
                    resume_at = Some(due);
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            let properties = replay_properties(&record.properties);
            match publisher
                .publish(&topology.actions, &connector, &record.body, properties)
                .await
            {
                Ok(()) => {
                    pass.remove(&record).await?;
                    moved += 1;
                    let _ = writeln!(out, "replayed {id} {source} -> {queue}");
                }
                Err(BrokerError::Refused(_)) => {
                    let _ = writeln!(
                        out,
                        "refused {id} {source}: the broker did not route it to {queue}; it stays"
                    );
                    not_moved += 1;
                    refused = true;
                    left_alone.extend(key);
                }
                Err(e) => {
                    let _ = pass.finish().await;
                    return Err(e.into());
                }
            }
        }
        pass.finish().await?;
        match resume_at {
            // Nothing is held while waiting for the next record's turn.
            Some(due) => {
                eprintln!(
                    "{moved} replayed so far; the pass reached --max-hold {}, so the records it held went back to {} unchanged and a new pass starts",
                    humantime::format_duration(options.max_hold),
                    topology.dead_letter
                );
                tokio::time::sleep_until(due.into()).await;
            }
            None => break,
        }
    }
    let dlq = &topology.dead_letter;
    if options.dry_run {
        let _ = writeln!(
            out,
            "dry run: would replay {moved} record(s) to {}; nothing changed",
            topology.actions
        );
    } else {
        let _ = writeln!(
            out,
            "replayed {moved} record(s) to {} with a fresh attempt budget",
            topology.actions
        );
    }
    if beyond > 0 {
        let _ = writeln!(
            out,
            "{beyond} more matching record(s) stay in {dlq} (--limit)"
        );
    }
    if not_moved > 0 {
        let _ = writeln!(
            out,
            "{not_moved} record(s) could not be replayed and stay in {dlq}"
        );
    }
    if refused {
        return Ok(ExitCode::from(UNREACHABLE));
    }
    Ok(ExitCode::SUCCESS)
}

/// The properties of a replayed action: the original ones, with the attempt bookkeeping and the
/// dead-letter headers removed (fresh budget), and no expiration.
fn replay_properties(original: &BasicProperties) -> BasicProperties {
    let headers: BTreeMap<ShortString, AMQPValue> = original
        .headers()
        .as_ref()
        .map(|h| {
            h.into_iter()
                .filter(|(name, _)| !REPLAY_DROPS.contains(&name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut properties = BasicProperties::default().with_headers(FieldTable::from(headers));
    if let Some(v) = original.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        properties = properties.with_content_encoding(v.clone());
    }
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        properties = properties.with_timestamp(*v);
    }
    properties
}

/// Fails with a user error if an exchange does not exist (checked on a throwaway channel, since
/// the broker closes the channel of a failed passive declare).
async fn require_exchange(connection: &Connection, exchange: &str) -> Result<(), DlqError> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    let options = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let result = channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            options,
            FieldTable::default(),
        )
        .await;
    match result {
        Ok(()) => {
            broker::close_channel(&channel, 200, "done").await;
            Ok(())
        }
        Err(e) if is_not_found(&e) => Err(DlqError::Usage(format!(
            "exchange {exchange} does not exist: run `switchyard topology` (or start the service) first"
        ))),
        Err(source) => Err(DlqError::Broker(BrokerError::Amqp {
            context: format!("inspecting {exchange}"),
            source,
        })),
    }
}

/// `dlq export`.
async fn export(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    limit: Option<usize>,
    path: &Path,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    let io = |source| DlqError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut pass = Pass::open(connection, &topology.dead_letter).await?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => DlqError::Usage(format!(
                "{} already exists; an export never overwrites a file, choose another --out",
                path.display()
            )),
            _ => io(source),
        });
    let file = match file {
        Ok(file) => file,
        Err(e) => {
            pass.finish().await?;
            return Err(e);
        }
    };
    let mut writer = BufWriter::new(file);
    let mut written: Vec<Record> = Vec::new();
    let mut exported = 0usize;
    let result = async {
        // Read to the end even past --limit, so the records handed back keep their order.
        while let Some(record) = pass.next().await? {
            if !filter.matches(&record) || limit.is_some_and(|limit| exported >= limit) {
                continue;
            }
            let line = serde_json::json!({
                "id": record.id(),
                "headers": Value::Object(record.headers_json()),
                "body": record.body_json(),
            });
            serde_json::to_writer(&mut writer, &line).map_err(|e| io(e.into()))?;
            writer.write_all(b"\n").map_err(io)?;
            exported += 1;
            written.push(record);
            if written.len() >= EXPORT_BATCH {
                settle_export(&mut writer, &mut pass, &mut written)
                    .await
                    .map_err(|e| e.at(path))?;
            }
        }
        settle_export(&mut writer, &mut pass, &mut written)
            .await
            .map_err(|e| e.at(path))
    }
    .await;
    // Whatever happened, records not yet acked go back to the queue.
    let finished = pass.finish().await;
    result?;
    finished?;
    let _ = writeln!(
        out,
        "exported {exported} record(s) to {} and removed them from {}",
        path.display(),
        topology.dead_letter
    );
    Ok(ExitCode::SUCCESS)
}

/// Why a batch of exported records could not be settled.
enum SettleError {
    /// Writing or syncing the file failed: the batch stays in the queue.
    Io(std::io::Error),
    /// Acking failed.
    Dlq(DlqError),
}

impl SettleError {
    fn at(self, path: &Path) -> DlqError {
        match self {
            SettleError::Io(source) => DlqError::Io {
                path: path.to_path_buf(),
                source,
            },
            SettleError::Dlq(e) => e,
        }
    }
}

/// Makes the written lines durable, then removes their records from the queue.
async fn settle_export(
    writer: &mut BufWriter<File>,
    pass: &mut Pass,
    written: &mut Vec<Record>,
) -> Result<(), SettleError> {
    if written.is_empty() {
        return Ok(());
    }
    writer.flush().map_err(SettleError::Io)?;
    writer.get_ref().sync_data().map_err(SettleError::Io)?;
    for record in written.drain(..) {
        pass.remove(&record).await.map_err(SettleError::Dlq)?;
    }
    Ok(())
}

/// `dlq purge`.
async fn purge(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    limit: Option<usize>,
    yes: bool,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    let mut pass = Pass::open(connection, &topology.dead_letter).await?;
    let mut matched = 0usize;
    let result = async {
        // Read to the end even past --limit, so the records handed back keep their order.
        while let Some(record) = pass.next().await? {
            if !filter.matches(&record) || limit.is_some_and(|limit| matched >= limit) {
                continue;
            }
            matched += 1;
            if yes {
                pass.remove(&record).await?;
            }
        }
        Ok::<(), DlqError>(())
    }
    .await;
    let left = pass.left();
    let finished = pass.finish().await;
    result?;
    finished?;
    let dlq = &topology.dead_letter;
    if !yes {
        eprintln!(
            "refusing to delete without --yes: {matched} record(s) in {dlq} match and would be deleted; nothing was deleted"
        );
        eprintln!("(keep a copy first with `switchyard dlq export … --out FILE`)");
        return Ok(ExitCode::from(USER_ERROR));
    }
    let _ = writeln!(out, "deleted {matched} record(s) from {dlq}; {left} left");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{set_int, set_str};

    fn record(headers: &[(&str, &str)], body: &str) -> Record {
        let mut table = FieldTable::default();
        for (name, value) in headers {
            set_str(&mut table, name, *value);
        }
        Record {
            tag: 1,
            properties: BasicProperties::default()
                .with_message_id("act_1".into())
                .with_headers(table),
            body: body.as_bytes().to_vec(),
            parsed: std::sync::OnceLock::new(),
        }
    }

    #[test]
    fn filters_combine_and_reason_is_case_insensitive() {
        let r = record(
            &[
                (H_CONNECTOR, "http"),
                (H_WORKFLOW, "lead-sync"),
                (H_ACTION, "hubspot"),
                (H_WORKSPACE, "ws_1"),
                (H_CLASS, "permanent"),
                (
                    H_REASON,
                    "HTTP 400 from api.hubapi.com: Property values were not valid",
                ),
                (H_DEAD_AT, "2024-05-01T12:00:00.5+00:00"),
            ],
            "{}",
        );
        let when = |s| parse_when(s).ok();
        let cases = [
            (Filter::default(), true),
            (
                Filter {
                    connector: Some("http".into()),
                    workflow: Some("lead-sync".into()),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    connector: Some("webhook".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    reason: Some("property VALUES".into()),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    reason: Some("timeout".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    since: when("2024-05-01T12:00:00Z"),
                    until: when("2024-05-01T13:00:00Z"),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    since: when("2024-05-01T12:00:01Z"),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    class: Some("exhausted".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    action: Some("hubspot".into()),
                    workspace: Some("ws_1".into()),
                    ..Filter::default()
                },
                true,
            ),
        ];
        for (i, (filter, expected)) in cases.iter().enumerate() {
            assert_eq!(filter.matches(&r), *expected, "case {i}: {filter:?}");
        }
    }

    #[test]
    fn missing_headers_fall_back_to_the_body() {
        let r = record(
            &[],
            r#"{"id":"act_1","webhook":"crm","action":"deliver","connector":"webhook","workspace":"w","event":{}}"#,
        );
        assert_eq!(r.connector().as_deref(), Some("webhook"));
        assert_eq!(r.workflow().as_deref(), Some("crm"));
        assert_eq!(r.action().as_deref(), Some("deliver"));
        // No dead-letter time: a time filter excludes it.
        let filter = Filter {
            until: parse_when("1s").ok(),
            ..Filter::default()
        };
        assert!(!filter.matches(&r));
    }

    #[test]
    fn relative_and_absolute_times_parse() {
        let two_hours = parse_when("2h").ok();
        let expected = Utc::now() - chrono::Duration::hours(2);
        assert!(two_hours.is_some_and(|t| (t - expected).num_seconds().abs() < 5));
        assert!(parse_when("2024-05-01T12:00:00+02:00").is_ok());
        assert!(parse_when("yesterday").is_err());
        assert!(positive_rate("0").is_err());
        assert!(positive_rate("2.5").is_ok());
    }

    #[test]
    fn replay_gives_a_fresh_budget_and_keeps_the_rest() {
        let mut headers = FieldTable::default();
        for name in REPLAY_DROPS {
            set_str(&mut headers, name, "x");
        }
        set_int(&mut headers, H_ATTEMPTS, 7);
        set_str(&mut headers, H_CONNECTOR, "http");
        set_str(&mut headers, H_EVENT, "evt_1");
        let original = BasicProperties::default()
            .with_message_id("act_1".into())
            .with_content_type("application/json".into())
            .with_expiration("5000".into())
            .with_headers(headers);
        let replayed = replay_properties(&original);
        let kept: Vec<&str> = replayed
            .headers()
            .as_ref()
            .map(|h| h.inner().keys().map(|k| k.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(kept, vec![H_CONNECTOR, H_EVENT]);
        assert_eq!(
            replayed.message_id().as_ref().map(|s| s.as_str()),
            Some("act_1")
        );
        assert!(replayed.expiration().is_none());
    }

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        table(
            &mut out,
            &["RECORDS", "CONNECTOR"],
            &[true, false],
            &[
                vec!["12".into(), "http".into()],
                vec!["3".into(), "webhook".into()],
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "RECORDS  CONNECTOR\n     12  http\n      3  webhook\n"
        );
    }
}
