//! The history writer: takes rows from the channel, writes them in batches, and survives
//! PostgreSQL going away.
//!
//! A batch is flushed when it holds [`BATCH_ROWS`] rows or its first row is [`FLUSH_AFTER`]
//! old. Each table's rows go in one `INSERT … SELECT FROM unnest($1::text[], …)`: one prepared
//! statement, one round trip, one array per column, inside the batch's transaction. Measured
//! against binary `COPY` on this project's 2-core machine (200,000 attempts, 11 indexes, batches of
//! 100 and 1,000, two alternating rounds each): unnest 20.6k–22.8k rows/s, COPY 20.5k–25.6k rows/s,
//! within the noise of each other: index maintenance, not the wire format, is the cost. `unnest`
//! was kept: a plain statement fails and retries as a unit, with no COPY state to unwind.
//! Measured again inside the pipeline (`switchyard-bench --history-url …`, three ABAB pairs,
//! release build): `BinaryCopyInWriter` cut PostgreSQL's CPU per action from 0.013 to 0.011 ms,
//! but encoding 22 values per row through it cost the service about 0.01 ms more, and
//! throughput fell from 8,835–9,229 to 8,112–8,591 actions/s.
//!
//! While PostgreSQL is away the batch in hand is kept and retried with backoff, and the writer
//! stops taking rows: the channel (`history.buffer_rows`, plus the at most [`BATCH_ROWS`] in hand) is
//! the buffer, and once it is full
//! [`super::History`] drops and counts. Once PostgreSQL answers again the writer reconnects,
//! re-checks the schema and partitions, and carries on by itself.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use chrono::{NaiveDate, Utc};
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
    /// [`INSERT_ATTEMPTS`] and [`INSERT_EVENTS`], prepared once per connection.
    statements: Statements,
}

/// The writer's statements on one connection.
pub struct Statements {
    /// [`INSERT_ATTEMPTS`].
    attempts: tokio_postgres::Statement,
    /// [`INSERT_EVENTS`].
    events: tokio_postgres::Statement,
}

impl Statements {
    /// Prepares them (after the migrations: they name the tables).
    pub async fn prepare(client: &Client) -> Result<Statements, HistoryError> {
        let prepare = |what| move |source| HistoryError::Query { what, source };
        Ok(Statements {
            attempts: client
                .prepare(INSERT_ATTEMPTS)
                .await
                .map_err(prepare("preparing the attempts insert"))?,
            events: client
                .prepare(INSERT_EVENTS)
                .await
                .map_err(prepare("preparing the events insert"))?,
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

const INSERT_ATTEMPTS: &str = "INSERT INTO history_attempts (action_id, event_id, event_type, workspace, workflow, webhook, action, connector, destination, contact_email, contact_id, attempt, trigger, started_at, duration_ms, outcome, error_class, http_status, reason, response_excerpt, trace_id, steps)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int4[], $13::text[], $14::timestamptz[], $15::int4[], $16::text[], $17::text[], $18::int2[], $19::text[], $20::text[], $21::text[], $22::text[])";

const INSERT_EVENTS: &str = "INSERT INTO history_events (event_id, event_type, workspace, received_at, rejected, payload, trace_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[])";

/// A column of text, NUL made storable (copied only where there is one).
fn texts<'a, T: 'a>(rows: &[&'a T], field: impl Fn(&'a T) -> &'a str) -> Vec<Cow<'a, str>> {
    rows.iter().map(|row| storable(field(row))).collect()
}

/// A column of optional text.
fn opt_texts<'a, T: 'a>(
    rows: &[&'a T],
    field: impl Fn(&'a T) -> Option<&'a str>,
) -> Vec<Option<Cow<'a, str>>> {
    rows.iter().map(|row| field(row).map(storable)).collect()
}

/// The `&str` view of a column that the driver encodes.
fn strs<'a>(column: &'a [Cow<'a, str>]) -> Vec<&'a str> {
    column.iter().map(AsRef::as_ref).collect()
}

/// The `&str` view of an optional column.
fn opt_strs<'a>(column: &'a [Option<Cow<'a, str>>]) -> Vec<Option<&'a str>> {
    column.iter().map(Option::as_deref).collect()
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
        let action_id = texts(attempts, |a| &a.action_id);
        let event_id = texts(attempts, |a| &a.event_id);
        let event_type = texts(attempts, |a| &a.event_type);
        let workspace = texts(attempts, |a| &a.workspace);
        let workflow = opt_texts(attempts, |a| a.workflow.as_deref());
        let webhook = opt_texts(attempts, |a| a.webhook.as_deref());
        let action = texts(attempts, |a| &a.action);
        let connector = texts(attempts, |a| &a.connector);
        let destination = opt_texts(attempts, |a| a.destination.as_deref());
        let email = opt_texts(attempts, |a| a.contact_email.as_deref());
        let contact_id = opt_texts(attempts, |a| a.contact_id.as_deref());
        let attempt: Vec<i32> = attempts.iter().map(|a| a.attempt).collect();
        let trigger: Vec<&str> = attempts.iter().map(|a| a.trigger.as_str()).collect();
        let started: Vec<_> = attempts.iter().map(|a| a.started_at).collect();
        let duration: Vec<i32> = attempts.iter().map(|a| a.duration_ms).collect();
        let outcome: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
        let class = opt_texts(attempts, |a| a.error_class.as_deref());
        let status: Vec<Option<i16>> = attempts.iter().map(|a| a.http_status).collect();
        let reason = opt_texts(attempts, |a| a.reason.as_deref());
        let excerpt = opt_texts(attempts, |a| a.response_excerpt.as_deref());
        let trace = opt_texts(attempts, |a| a.trace_id.as_deref());
        let steps = opt_texts(attempts, |a| a.steps.as_deref());
        tx.execute(
            &statements.attempts,
            &[
                &strs(&action_id),
                &strs(&event_id),
                &strs(&event_type),
                &strs(&workspace),
                &opt_strs(&workflow),
                &opt_strs(&webhook),
                &strs(&action),
                &strs(&connector),
                &opt_strs(&destination),
                &opt_strs(&email),
                &opt_strs(&contact_id),
                &attempt,
                &trigger,
                &started,
                &duration,
                &outcome,
                &opt_strs(&class),
                &status,
                &opt_strs(&reason),
                &opt_strs(&excerpt),
                &opt_strs(&trace),
                &opt_strs(&steps),
            ],
        )
        .await
        .map_err(query("inserting attempts"))?;
    }
    if !events.is_empty() {
        let event_id = opt_texts(events, |e| e.event_id.as_deref());
        let event_type = opt_texts(events, |e| e.event_type.as_deref());
        let workspace = opt_texts(events, |e| e.workspace.as_deref());
        let received: Vec<_> = events.iter().map(|e| e.received_at).collect();
        let rejected = opt_texts(events, |e| e.rejected.as_deref());
        let payload = opt_texts(events, |e| e.payload.as_deref());
        let trace = opt_texts(events, |e| e.trace_id.as_deref());
        tx.execute(
            &statements.events,
            &[
                &opt_strs(&event_id),
                &opt_strs(&event_type),
                &opt_strs(&workspace),
                &received,
                &opt_strs(&rejected),
                &opt_strs(&payload),
                &opt_strs(&trace),
            ],
        )
        .await
        .map_err(query("inserting events"))?;
    }
    tx.commit()
        .await
        .map_err(query("committing a history batch"))
}
