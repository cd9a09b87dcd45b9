//! Run history (SPEC §9): every attempt of every action, every event received or rejected,
//! kept in PostgreSQL so that "what happened to this event, to this contact?" has an answer long
//! after the logs have rotated.
//!
//! - [`record`]: the attempt and event records, and the text rules that make anything storable.
//! - [`History`]: the handle the router and the worker record through. Recording is a
//!   `try_send` into a bounded channel: it never waits, and a full channel drops the row (counted
//!   in `switchyard_history_dropped_total`) instead of slowing delivery.
//! - [`writer`]: the task that batches rows into PostgreSQL, and waits out an outage with the
//!   channel as its buffer.
//! - [`schema`]: migrations and daily partitions, under an advisory lock.
//! - [`query`]: the reads behind `switchyard runs` (and the console): list with filters and
//!   keyset pagination, show by action or event, replay targets.

pub mod query;
pub mod record;
pub mod schema;
pub mod tls;
pub mod writer;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::HistoryConfig;
use crate::faults::Faults;
use crate::telemetry::{Metrics, error_chain};
pub use record::{Attempt, EventRecord, RunOutcome, Trigger};

/// One row on its way to PostgreSQL.
#[derive(Debug)]
pub enum Row {
    /// An attempt.
    Attempt(Box<Attempt>),
    /// A received or rejected event.
    Event(Box<EventRecord>),
}

/// How often at most a drop is logged (the counter has every one).
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// Why history could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// `history.url` is empty.
    #[error(
        "run history is off: set history.url (or SWITCHYARD__HISTORY__URL) to a postgres:// URL, e.g. postgres://switchyard:switchyard@127.0.0.1:5432/switchyard (`make postgres` creates that database)"
    )]
    Off,
    /// `history.url` cannot be used: it names a secret that does not exist, or its
    /// `sslmode`/`sslrootcert` ([`tls`]) are not ones it can use.
    #[error("history.url: {0}")]
    Url(String),
    /// PostgreSQL could not be reached, or refused the login.
    #[error("connecting to PostgreSQL: {}", error_chain(.0))]
    Connect(#[source] tokio_postgres::Error),
    /// A query failed.
    #[error("{what}: {}", error_chain(source))]
    Query {
        /// What was being done.
        what: &'static str,
        /// What PostgreSQL said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database has no history tables: nothing has written history there yet.
    #[error(
        "no run history in this database: a switchyard service creates its tables when it starts with this history.url (another database, or another search_path?); {}",
        error_chain(.0)
    )]
    NoTables(#[source] tokio_postgres::Error),
    /// The schema could not be set up.
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    /// A stored row holds a value this version does not know.
    #[error("history holds an unknown {what} {value:?} (written by a newer switchyard?)")]
    Unknown {
        /// Which column.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// Replaces every `{{ secrets.NAME }}` in `url` with the secret's value.
pub fn resolve_url(url: &str, secrets: &HashMap<String, String>) -> Result<String, HistoryError> {
    crate::secrets::resolve(url, secrets).map_err(HistoryError::Url)
}

/// Opens one connection, over TLS as `sslmode` says ([`tls`]); its I/O runs on a spawned task
/// until the client is dropped.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, HistoryError> {
    let target = tls::target(url)?;
    let (client, connection) = tokio_postgres::connect(&target.url, target.tls)
        .await
        .map_err(HistoryError::Connect)?;
    // tokio-postgres drives the socket on this task. A panic in it is logged rather than
    // stopping the service (history is beside delivery): the client then reports the connection
    // closed, and the writer reconnects.
    tokio::spawn(async move {
        match AssertUnwindSafe(connection).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "history connection closed"),
            Err(panic) => tracing::error!(
                panic = %crate::faults::panic_message(panic.as_ref()),
                "the history connection's task panicked; the writer reconnects"
            ),
        }
    });
    Ok(client)
}

/// The recording side of history: cheap to clone, never waits.
#[derive(Clone, Default)]
pub struct History {
    /// `None` when history is off.
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// Into the writer; its capacity is the buffer.
    rows: mpsc::Sender<Row>,
    /// `switchyard_history_dropped_total`.
    metrics: Arc<Metrics>,
    /// `history.store_payloads`.
    store_payloads: bool,
    /// `history.response_excerpt`.
    excerpt_bytes: usize,
    /// Drops since the last log line.
    unlogged_drops: AtomicU64,
    /// When a drop was last logged (ms since `epoch`).
    last_drop_log: AtomicU64,
    /// The origin of `last_drop_log`.
    epoch: std::time::Instant,
    /// Tells the writer to flush what it has and stop.
    closing: CancellationToken,
    /// The writer task, awaited by [`History::close`].
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl History {
    /// History off: every record is ignored.
    pub fn off() -> History {
        History { inner: None }
    }

    /// Starts the writer for `url` (already resolved). Returns at once: the writer connects,
    /// migrates and creates partitions in the background, and rows wait in the buffer meanwhile.
    pub fn start(
        config: &HistoryConfig,
        url: String,
        metrics: Arc<Metrics>,
        faults: &Arc<Faults>,
    ) -> History {
        let (tx, rx) = mpsc::channel(config.buffer_rows);
        let closing = CancellationToken::new();
        let task = tokio::spawn(faults.guard(
            "history writer",
            writer::run(
                writer::Settings {
                    url,
                    retention_days: config.retention_days(),
                },
                rx,
                metrics.clone(),
                closing.clone(),
            ),
        ));
        History {
            inner: Some(Arc::new(Inner {
                rows: tx,
                metrics,
                store_payloads: config.store_payloads,
                excerpt_bytes: config.response_excerpt,
                unlogged_drops: AtomicU64::new(0),
                last_drop_log: AtomicU64::new(0),
                epoch: std::time::Instant::now(),
                closing,
                writer: std::sync::Mutex::new(Some(task)),
            })),
        }
    }

    /// Whether rows are recorded.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether event payloads are kept.
    pub fn store_payloads(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.store_payloads)
    }

    /// Cuts a (redacted) response body to `history.response_excerpt`.
    pub fn excerpt(&self, text: &str) -> Option<String> {
        let inner = self.inner.as_ref()?;
        (!text.is_empty()).then(|| record::excerpt(text, inner.excerpt_bytes))
    }

    /// Records an attempt (never waits).
    pub fn attempt(&self, attempt: Attempt) {
        self.send(|| Row::Attempt(Box::new(attempt)));
    }

    /// Records an event (never waits).
    pub fn event(&self, event: EventRecord) {
        self.send(|| Row::Event(Box::new(event)));
    }

    fn send(&self, row: impl FnOnce() -> Row) {
        let Some(inner) = &self.inner else {
            return;
        };
        if inner.rows.try_send(row()).is_ok() {
            return;
        }
        inner.metrics.history_dropped.inc();
        let unlogged = inner.unlogged_drops.fetch_add(1, Ordering::Relaxed) + 1;
        let now = inner.epoch.elapsed().as_millis() as u64;
        let last = inner.last_drop_log.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= DROP_LOG_EVERY.as_millis() as u64;
        if due
            && inner
                .last_drop_log
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let dropped = inner
                .unlogged_drops
                .swap(0, Ordering::Relaxed)
                .max(unlogged);
            warn!(
                dropped,
                buffer_rows = inner.rows.max_capacity(),
                "history buffer full (PostgreSQL away or too slow): rows dropped; delivery goes on"
            );
        }
    }

    /// Lets the writer flush what is buffered (for at most `grace`), then stops it.
    pub async fn close(&self, grace: Duration) {
        let Some(inner) = &self.inner else {
            return;
        };
        inner.closing.cancel();
        let task = inner.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(task) = task
            && tokio::time::timeout(grace, task).await.is_err()
        {
            warn!("history writer did not finish flushing in time; the rest is lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_read_secrets() {
        let secrets = HashMap::from([("PG".to_owned(), "postgres://u:p@db/x\n".to_owned())]);
        assert_eq!(
            resolve_url("{{ secrets.PG }}", &secrets).expect("resolves"),
            "postgres://u:p@db/x"
        );
        assert_eq!(
            resolve_url("postgres://u:{{secrets.PG}}@h/d", &secrets).expect("resolves"),
            "postgres://u:postgres://u:p@db/x@h/d"
        );
        let missing = resolve_url("{{ secrets.NOPE }}", &secrets)
            .expect_err("missing")
            .to_string();
        assert!(missing.contains("NOPE"), "{missing}");
        assert!(resolve_url("{{ event.id }}", &secrets).is_err());
    }
}
