//! The history schema: versioned migrations and the daily partitions, both changed only under a
//! PostgreSQL advisory lock, so that any number of processes may start (and tidy up) together.
//!
//! `history_attempts` and `history_events` are partitioned by day (UTC) on their time column.
//! Partitions for today and the next [`DAYS_AHEAD`] days are created ahead of time; a day older
//! than `history.retention` is dropped whole: no DELETE, no bloat, no vacuum debt.

use chrono::{DateTime, Days, NaiveDate, Utc};
use tokio_postgres::Client;

/// Days after today whose partitions exist before their first row.
pub const DAYS_AHEAD: u64 = 3;

/// The partitioned tables and their time column.
pub const TABLES: [(&str, &str); 2] = [
    ("history_attempts", "started_at"),
    ("history_events", "received_at"),
];

/// The migrations, in order; each runs once, inside one transaction with its bookkeeping row.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "attempts and events, partitioned by day",
        r#"
CREATE TABLE history_attempts (
    action_id        text        NOT NULL,
    event_id         text        NOT NULL,
    event_type       text        NOT NULL,
    workspace        text        NOT NULL,
    workflow         text,
    webhook          text,
    action           text        NOT NULL,
    connector        text        NOT NULL,
    destination      text,
    contact_email    text,
    contact_id       text,
    attempt          integer     NOT NULL,
    trigger          text        NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      integer     NOT NULL,
    outcome          text        NOT NULL,
    error_class      text,
    http_status      smallint,
    reason           text,
    response_excerpt text,
    trace_id         text
) PARTITION BY RANGE (started_at);
-- One index per `runs` filter, each ending in the time so that the newest come first.
CREATE INDEX history_attempts_action   ON history_attempts (action_id, started_at);
CREATE INDEX history_attempts_event    ON history_attempts (event_id, started_at);
CREATE INDEX history_attempts_email    ON history_attempts (contact_email, started_at) WHERE contact_email IS NOT NULL;
CREATE INDEX history_attempts_contact  ON history_attempts (contact_id, started_at) WHERE contact_id IS NOT NULL;
CREATE INDEX history_attempts_ws       ON history_attempts (workspace, started_at);
CREATE INDEX history_attempts_workflow ON history_attempts (workflow, started_at) WHERE workflow IS NOT NULL;
CREATE INDEX history_attempts_webhook  ON history_attempts (webhook, started_at) WHERE webhook IS NOT NULL;
CREATE INDEX history_attempts_conn     ON history_attempts (connector, started_at);
CREATE INDEX history_attempts_dest     ON history_attempts (destination, started_at) WHERE destination IS NOT NULL;
CREATE INDEX history_attempts_outcome  ON history_attempts (outcome, started_at);
CREATE INDEX history_attempts_time     ON history_attempts (started_at);

CREATE TABLE history_events (
    event_id    text,
    event_type  text,
    workspace   text,
    received_at timestamptz NOT NULL,
    rejected    text,
    payload     text,
    trace_id    text
) PARTITION BY RANGE (received_at);
CREATE INDEX history_events_event ON history_events (event_id, received_at);
CREATE INDEX history_events_time  ON history_events (received_at);
"#,
    ),
    (
        2,
        "cheaper indexes; the steps a dependent action was given",
        // Index upkeep is most of what history costs PostgreSQL, which shares the machine with the
        // pipeline. Ids and contacts are looked up by equality and match a handful of rows each,
        // which are then sorted: a hash index answers that as well as a B-tree at about half the
        // upkeep (random keys land on random B-tree pages). 100,000 actions' rows took 1.7–1.8 s
        // to insert with this migration against 2.6–2.7 s before it (README, Run history).
        r#"
DROP INDEX history_attempts_action, history_attempts_event, history_attempts_email,
           history_attempts_contact, history_events_event, history_attempts_outcome,
           history_events_time;
CREATE INDEX history_attempts_action  ON history_attempts USING hash (action_id);
CREATE INDEX history_attempts_event   ON history_attempts USING hash (event_id);
CREATE INDEX history_attempts_email   ON history_attempts USING hash (contact_email) WHERE contact_email IS NOT NULL;
CREATE INDEX history_attempts_contact ON history_attempts USING hash (contact_id) WHERE contact_id IS NOT NULL;
CREATE INDEX history_events_event     ON history_events USING hash (event_id);
-- Most attempts succeed: `--outcome success` finds them newest first on the time index alone.
CREATE INDEX history_attempts_outcome ON history_attempts (outcome, started_at) WHERE outcome <> 'success';
-- Nothing reads events by time but people at a psql prompt: a BRIN costs next to nothing.
CREATE INDEX history_events_time      ON history_events USING brin (received_at);
-- The outputs of earlier steps that a dependent action's message carried (JSON, with
-- `store_payloads`), so that `runs replay` gives them to it again.
ALTER TABLE history_attempts ADD COLUMN steps text;
"#,
    ),
];

/// How many migrations a current schema has applied.
pub const MIGRATION_COUNT: usize = MIGRATIONS.len();

/// Why the schema could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", crate::telemetry::error_chain(source))]
pub struct SchemaError {
    /// What was being done.
    what: String,
    /// What PostgreSQL said.
    #[source]
    source: tokio_postgres::Error,
}

fn at(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SchemaError {
    let what = what.into();
    move |source| SchemaError { what, source }
}

/// Takes the schema's advisory lock for the rest of the transaction. The key is per schema, so
/// that deployments (and tests) in other schemas of one database do not wait for each other.
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('switchyard.history:' || coalesce(current_schema(), '')))";

/// Applies the migrations not applied yet; returns how many ran.
pub async fn migrate(client: &mut Client) -> Result<usize, SchemaError> {
    let tx = client
        .transaction()
        .await
        .map_err(at("starting the migration"))?;
    tx.batch_execute(LOCK)
        .await
        .map_err(at("taking the migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS history_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(at("creating history_migrations"))?;
    let applied: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM history_migrations",
            &[],
        )
        .await
        .map_err(at("reading history_migrations"))?
        .get(0);
    let mut ran = 0;
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > applied) {
        tx.batch_execute(sql)
            .await
            .map_err(at(format!("history migration {version} ({name})")))?;
        tx.execute(
            "INSERT INTO history_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(at(format!("recording history migration {version}")))?;
        ran += 1;
    }
    tx.commit().await.map_err(at("committing the migrations"))?;
    Ok(ran)
}

/// The partition of `table` holding `day`.
pub fn partition_name(table: &str, day: NaiveDate) -> String {
    format!("{table}_p{}", day.format("%Y%m%d"))
}

/// Creates the partitions of `days` that do not exist yet (both tables).
pub async fn ensure_partitions(
    client: &mut Client,
    days: impl IntoIterator<Item = NaiveDate>,
) -> Result<(), SchemaError> {
    let mut sql = String::new();
    for day in days {
        let Some(next) = day.checked_add_days(Days::new(1)) else {
            continue;
        };
        for (table, _) in TABLES {
            sql.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00');\n",
                partition_name(table, day)
            ));
        }
    }
    if sql.is_empty() {
        return Ok(());
    }
    let tx = client
        .transaction()
        .await
        .map_err(at("starting partition set-up"))?;
    tx.batch_execute(LOCK)
        .await
        .map_err(at("taking the partition lock"))?;
    tx.batch_execute(&sql)
        .await
        .map_err(at("creating partitions"))?;
    tx.commit().await.map_err(at("committing partitions"))
}

/// The days whose partitions exist ahead of `now`: today and [`DAYS_AHEAD`] more.
pub fn days_ahead(now: DateTime<Utc>) -> Vec<NaiveDate> {
    let today = now.date_naive();
    (0..=DAYS_AHEAD)
        .filter_map(|n| today.checked_add_days(Days::new(n)))
        .collect()
}

/// The first day still kept at `now`: days before it have expired.
pub fn first_kept_day(now: DateTime<Utc>, retention_days: u32) -> NaiveDate {
    let today = now.date_naive();
    today
        .checked_sub_days(Days::new(u64::from(retention_days)))
        .unwrap_or(NaiveDate::MIN)
}

/// Drops every partition of a day before `first_kept` (both tables); returns their names.
pub async fn drop_expired(
    client: &mut Client,
    first_kept: NaiveDate,
) -> Result<Vec<String>, SchemaError> {
    let tx = client
        .transaction()
        .await
        .map_err(at("starting retention"))?;
    tx.batch_execute(LOCK)
        .await
        .map_err(at("taking the retention lock"))?;
    let mut dropped = Vec::new();
    for (table, _) in TABLES {
        let rows = tx
            .query(
                "SELECT c.relname FROM pg_inherits i
                   JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = to_regclass($1)",
                &[&table],
            )
            .await
            .map_err(at(format!("listing the partitions of {table}")))?;
        for row in rows {
            let name: String = row.get(0);
            let day = name
                .strip_prefix(&format!("{table}_p"))
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok());
            if day.is_some_and(|day| day < first_kept) {
                tx.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                    .await
                    .map_err(at(format!("dropping {name}")))?;
                dropped.push(name);
            }
        }
    }
    tx.commit().await.map_err(at("committing retention"))?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_names() {
        let now = DateTime::parse_from_rfc3339("2026-12-31T23:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let days = days_ahead(now);
        assert_eq!(days.len(), 4);
        assert_eq!(
            partition_name("history_attempts", days[1]),
            "history_attempts_p20270101"
        );
        assert_eq!(
            first_kept_day(now, 30),
            NaiveDate::from_ymd_opt(2026, 12, 1).expect("date")
        );
    }
}
