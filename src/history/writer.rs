//! The history writer: takes rows from the channel, writes them in batches, and survives
//! PostgreSQL going away.
//!
//! A batch is flushed when it holds [`BATCH_ROWS`] rows or its first row is [`FLUSH_AFTER`]
//! old. Each table's rows go in one binary `COPY … FROM STDIN` (a prepared statement) inside the
//! batch's transaction, encoded by [`CopyRows`] straight into one buffer: a length and the bytes
//! per field, no value boxed, no array per column. Index upkeep is half of what the rows cost
//! PostgreSQL (a profile of its backend), which no wire format changes; COPY saves the parsing of
//! 22 arrays, the function scan's tuplestore and row-by-row heap inserts. Measured in the pipeline
//! (`switchyard-bench --history-url …`, dist build, eight runs alternating with the `INSERT …
//! SELECT FROM unnest($1::text[], …)` this replaced): PostgreSQL's CPU per action 0.021–0.028 ms
//! against 0.025–0.036 flat out (median −25 %), 0.026–0.037 against 0.038–0.044 at 2,000
//! events/s, and the service's own CPU unchanged (0.098–0.126 against 0.098–0.145 ms). An earlier
//! COPY through tokio-postgres's `BinaryCopyInWriter` saved PostgreSQL as much but cost the
//! service 0.01 ms per action: it boxes each of the 22 values of a row as `dyn ToSql`.
//!
//! While PostgreSQL is away the batch in hand is kept and retried with backoff, and the writer
//! stops taking rows: the channel (`history.buffer_rows`, plus the at most [`BATCH_ROWS`] in hand) is
//! the buffer, and once it is full
//! [`super::History`] drops and counts. Once PostgreSQL answers again the writer reconnects,
//! re-checks the schema and partitions, and carries on by itself.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, NaiveDate, Utc};
use futures::SinkExt as _;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::record::storable;
use super::schema;
use super::{Attempt, EventRecord, HistoryError, Row};
use crate::telemetry::Metrics;

/// Rows per batch at most.
pub const BATCH_ROWS: usize = 4000;
/// How long the first row of a batch waits for others. The writer sleeps meanwhile instead of
/// waking for each row: a row costs the router or worker that records it one `try_send` and no
/// task wake-up, whatever the rate.
pub const FLUSH_AFTER: Duration = Duration::from_millis(200);
/// How often partitions ahead are created and expired days dropped.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

/// What the writer needs from the configuration.
pub struct Settings {
    /// The resolved `history.url`.
    pub url: String,
    /// `history.retention` in days.
    pub retention_days: u32,
}

/// Runs until `closing`, then flushes what it holds (the caller bounds how long).
pub async fn run(
    settings: Settings,
    mut rows: mpsc::Receiver<Row>,
    metrics: Arc<Metrics>,
    closing: CancellationToken,
) {
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times();
    let mut delays = backoff.build();
    let mut batch: Vec<Row> = Vec::with_capacity(BATCH_ROWS);
    let mut was_down = false;
    loop {
        let mut session = match Session::open(&settings).await {
            Ok(session) => {
                delays = backoff.build();
                if was_down {
                    info!(
                        waiting = batch.len() + rows.len(),
                        "history: PostgreSQL is back; writing resumes"
                    );
                }
                session
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                if !was_down || delay >= Duration::from_secs(10) {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, buffered = rows.len(), "history: PostgreSQL unavailable; rows wait in the buffer");
                }
                was_down = true;
                if closing.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = closing.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        match session
            .pump(&mut rows, &mut batch, &metrics, &closing)
            .await
        {
            Ok(()) => return,
            Err(e) => {
                was_down = true;
                warn!(error = %e, held = batch.len(), "history: write failed; reconnecting");
            }
        }
    }
}

/// One connection's worth of writing.
struct Session {
    /// The connection.
    client: Client,
    /// `history.retention` in days.
    retention_days: u32,
    /// Days whose partitions are known to exist.
    ensured: BTreeSet<NaiveDate>,
    /// When partitions were last maintained.
    maintained: Instant,
    /// [`COPY_ATTEMPTS`] and [`COPY_EVENTS`], prepared once per connection.
    statements: Statements,
}

/// The writer's statements on one connection.
pub struct Statements {
    /// [`COPY_ATTEMPTS`].
    attempts: tokio_postgres::Statement,
    /// [`COPY_EVENTS`].
    events: tokio_postgres::Statement,
}

impl Statements {
    /// Prepares them (after the migrations: they name the tables).
    pub async fn prepare(client: &Client) -> Result<Statements, HistoryError> {
        let prepare = |what| move |source| HistoryError::Query { what, source };
        Ok(Statements {
            attempts: client
                .prepare(COPY_ATTEMPTS)
                .await
                .map_err(prepare("preparing the attempts copy"))?,
            events: client
                .prepare(COPY_EVENTS)
                .await
                .map_err(prepare("preparing the events copy"))?,
        })
    }
}

impl Session {
    async fn open(settings: &Settings) -> Result<Session, HistoryError> {
        let mut client = super::connect(&settings.url).await?;
        let ran = schema::migrate(&mut client).await?;
        if ran > 0 {
            info!(migrations = ran, "history: schema migrated");
        }
        let statements = Statements::prepare(&client).await?;
        let mut session = Session {
            statements,
            client,
            retention_days: settings.retention_days,
            ensured: BTreeSet::new(),
            maintained: Instant::now(),
        };
        session.maintain().await?;
        Ok(session)
    }

    /// Creates the partitions ahead and drops the expired ones.
    async fn maintain(&mut self) -> Result<(), HistoryError> {
        let now = Utc::now();
        let days = schema::days_ahead(now);
        schema::ensure_partitions(&mut self.client, days.iter().copied()).await?;
        self.ensured.extend(days);
        let first_kept = schema::first_kept_day(now, self.retention_days);
        let dropped = schema::drop_expired(&mut self.client, first_kept).await?;
        if !dropped.is_empty() {
            info!(partitions = ?dropped, "history: expired days dropped");
        }
        self.ensured.retain(|d| *d >= first_kept);
        self.maintained = Instant::now();
        Ok(())
    }

    /// Writes batches until `closing` (Ok) or a failure (Err; the unwritten batch stays in
    /// `batch`).
    async fn pump(
        &mut self,
        rows: &mut mpsc::Receiver<Row>,
        batch: &mut Vec<Row>,
        metrics: &Metrics,
        closing: &CancellationToken,
    ) -> Result<(), HistoryError> {
        loop {
            if !batch.is_empty() {
                self.flush(batch, metrics).await?;
            }
            if self.maintained.elapsed() >= MAINTENANCE_EVERY {
                self.maintain().await?;
            }
            if closing.is_cancelled() {
                // The senders live as long as the service: take what is there now.
                while batch.len() < BATCH_ROWS * 8 {
                    match rows.try_recv() {
                        Ok(row) => batch.push(row),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    return Ok(());
                }
                continue;
            }
            // One wake-up for the first row…
            let received = tokio::select! {
                _ = closing.cancelled() => continue,
                _ = tokio::time::sleep(MAINTENANCE_EVERY) => continue,
                received = rows.recv_many(batch, BATCH_ROWS) => received,
            };
            if received == 0 {
                return Ok(()); // Every sender is gone.
            }
            // …then, unless a backlog fills the batch already, a sleep while the others arrive
            // (the channel holds them), and one take of all of them.
            if batch.len() < BATCH_ROWS {
                tokio::select! {
                    _ = tokio::time::sleep(FLUSH_AFTER) => {}
                    _ = closing.cancelled() => {}
                }
                while batch.len() < BATCH_ROWS {
                    match rows.try_recv() {
                        Ok(row) => batch.push(row),
                        Err(_) => break,
                    }
                }
            }
        }
    }

    /// Writes `batch` (both tables, one transaction); empties it once written. A batch that
    /// PostgreSQL refuses for its content (not for being away) is dropped and counted, so that
    /// one bad row cannot stop history.
    async fn flush(&mut self, batch: &mut Vec<Row>, metrics: &Metrics) -> Result<(), HistoryError> {
        let started = Instant::now();
        let first_kept = schema::first_kept_day(Utc::now(), self.retention_days);
        let mut attempts = Vec::new();
        let mut events = Vec::new();
        let mut days = BTreeSet::new();
        for row in batch.iter() {
            let day = match row {
                Row::Attempt(a) => a.started_at.date_naive(),
                Row::Event(e) => e.received_at.date_naive(),
            };
            // Already expired: its partition is gone (or about to be).
            if day < first_kept {
                continue;
            }
            if !self.ensured.contains(&day) {
                days.insert(day);
            }
            match row {
                Row::Attempt(a) => attempts.push(a.as_ref()),
                Row::Event(e) => events.push(e.as_ref()),
            }
        }
        if !days.is_empty() {
            schema::ensure_partitions(&mut self.client, days.iter().copied()).await?;
            self.ensured.extend(days);
        }
        let written = attempts.len() + events.len();
        let result = write(&mut self.client, &self.statements, &attempts, &events).await;
        match result {
            Ok(()) => {
                metrics.history_rows_written.inc_by(written as u64);
                metrics
                    .history_batch_seconds
                    .observe(started.elapsed().as_secs_f64());
                batch.clear();
                Ok(())
            }
            Err(e) if self.client.is_closed() => Err(e),
            Err(e) => {
                warn!(error = %e, rows = batch.len(), "history: PostgreSQL refused a batch; its rows are dropped");
                metrics.history_dropped.inc_by(batch.len() as u64);
                batch.clear();
                Ok(())
            }
        }
    }
}

const COPY_ATTEMPTS: &str = "COPY history_attempts (action_id, event_id, event_type, workspace, workflow, webhook, action, connector, destination, contact_email, contact_id, attempt, trigger, started_at, duration_ms, outcome, error_class, http_status, reason, response_excerpt, trace_id, steps) FROM STDIN (FORMAT binary)";

const COPY_EVENTS: &str = "COPY history_events (event_id, event_type, workspace, received_at, rejected, payload, trace_id) FROM STDIN (FORMAT binary)";

/// Rows in PostgreSQL's binary `COPY` format, written field by field into one buffer: a
/// length and the bytes for text (NUL made storable), big-endian integers, and timestamps as
/// microseconds since 2000-01-01 UTC, exactly as the server's own `recv` functions read them.
struct CopyRows {
    buf: BytesMut,
}

/// The binary COPY signature, then flags and the header extension's length (both 0).
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// 2000-01-01T00:00:00Z, PostgreSQL's epoch, in microseconds since the Unix epoch.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl CopyRows {
    /// A buffer for `rows` rows of about `bytes_per_row` bytes each, plus `extra` bytes.
    fn new(rows: usize, bytes_per_row: usize, extra: usize) -> CopyRows {
        let mut buf = BytesMut::with_capacity(COPY_HEADER.len() + rows * bytes_per_row + extra + 2);
        buf.put_slice(COPY_HEADER);
        CopyRows { buf }
    }

    /// Starts a row of `fields` fields.
    fn row(&mut self, fields: i16) {
        self.buf.put_i16(fields);
    }

    fn text(&mut self, text: &str) {
        let text = storable(text);
        self.buf.put_i32(text.len() as i32);
        self.buf.put_slice(text.as_bytes());
    }

    fn opt_text(&mut self, text: Option<&str>) {
        match text {
            Some(text) => self.text(text),
            None => self.null(),
        }
    }

    fn null(&mut self) {
        self.buf.put_i32(-1);
    }

    fn int4(&mut self, value: i32) {
        self.buf.put_i32(4);
        self.buf.put_i32(value);
    }

    fn int2(&mut self, value: Option<i16>) {
        match value {
            Some(value) => {
                self.buf.put_i32(2);
                self.buf.put_i16(value);
            }
            None => self.null(),
        }
    }

    fn timestamptz(&mut self, at: DateTime<Utc>) {
        self.buf.put_i32(8);
        self.buf.put_i64(at.timestamp_micros() - PG_EPOCH_MICROS);
    }

    /// The rows with the trailer, ready to send.
    fn finish(mut self) -> Bytes {
        self.buf.put_i16(-1);
        self.buf.freeze()
    }
}

/// The attempts as one binary COPY.
fn attempt_rows(attempts: &[&Attempt]) -> Bytes {
    let mut rows = CopyRows::new(attempts.len(), 512, 0);
    for a in attempts {
        rows.row(22);
        rows.text(&a.action_id);
        rows.text(&a.event_id);
        rows.text(&a.event_type);
        rows.text(&a.workspace);
        rows.opt_text(a.workflow.as_deref());
        rows.opt_text(a.webhook.as_deref());
        rows.text(&a.action);
        rows.text(&a.connector);
        rows.opt_text(a.destination.as_deref());
        rows.opt_text(a.contact_email.as_deref());
        rows.opt_text(a.contact_id.as_deref());
        rows.int4(a.attempt);
        rows.text(a.trigger.as_str());
        rows.timestamptz(a.started_at);
        rows.int4(a.duration_ms);
        rows.text(a.outcome.as_str());
        rows.opt_text(a.error_class.as_deref());
        rows.int2(a.http_status);
        rows.opt_text(a.reason.as_deref());
        rows.opt_text(a.response_excerpt.as_deref());
        rows.opt_text(a.trace_id.as_deref());
        rows.opt_text(a.steps.as_deref());
    }
    rows.finish()
}

/// The events as one binary COPY.
fn event_rows(events: &[&EventRecord]) -> Bytes {
    let payloads: usize = events
        .iter()
        .filter_map(|e| e.payload.as_ref().map(String::len))
        .sum();
    let mut rows = CopyRows::new(events.len(), 256, payloads);
    for e in events {
        rows.row(7);
        rows.opt_text(e.event_id.as_deref());
        rows.opt_text(e.event_type.as_deref());
        rows.opt_text(e.workspace.as_deref());
        rows.timestamptz(e.received_at);
        rows.opt_text(e.rejected.as_deref());
        rows.opt_text(e.payload.as_deref());
        rows.opt_text(e.trace_id.as_deref());
    }
    rows.finish()
}

/// Writes attempts and events in one transaction, with `statements` prepared on `client`.
pub async fn write(
    client: &mut Client,
    statements: &Statements,
    attempts: &[&Attempt],
    events: &[&EventRecord],
) -> Result<(), HistoryError> {
    let query = |what| move |source| HistoryError::Query { what, source };
    let tx = client
        .transaction()
        .await
        .map_err(query("starting a history batch"))?;
    if !attempts.is_empty() {
        copy(&tx, &statements.attempts, attempt_rows(attempts))
            .await
            .map_err(query("copying attempts"))?;
    }
    if !events.is_empty() {
        copy(&tx, &statements.events, event_rows(events))
            .await
            .map_err(query("copying events"))?;
    }
    tx.commit()
        .await
        .map_err(query("committing a history batch"))
}

/// Sends `rows` through the prepared `COPY … FROM STDIN` statement.
async fn copy(
    tx: &tokio_postgres::Transaction<'_>,
    statement: &tokio_postgres::Statement,
    rows: Bytes,
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx.copy_in::<_, Bytes>(statement).await?;
    let mut sink = std::pin::pin!(sink);
    sink.send(rows).await?;
    sink.finish().await
}
