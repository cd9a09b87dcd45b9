//! The reads of run history: `switchyard runs` prints them, and the console (SPEC §11) shows
//! them. Every query is served by an index of the migration (schema.rs); lists page by keyset
//! (`started_at`, `action_id`), never by OFFSET, so the millionth row costs what the first does.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::{Attempt, EventRecord, HistoryError, RunOutcome, Trigger};

/// Which actions a list (or a replay) covers; every given filter must hold. The same struct is
/// the `runs` command's filter flags (SPEC §9).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunFilter {
    /// Only actions of this event id.
    #[arg(long)]
    pub event: Option<String>,
    /// Only this contact: an email address (any case) or a contact id.
    #[arg(long)]
    pub contact: Option<String>,
    /// Only this workspace.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Only this workflow or webhook id.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only this connector.
    #[arg(long, value_parser = crate::connectors::ConnectorKind::parser())]
    pub connector: Option<String>,
    /// Only this destination (a connection, webhook or host; SPEC §10).
    #[arg(long)]
    pub destination: Option<String>,
    /// Only actions whose latest attempt had this outcome.
    #[arg(long, value_parser = ["success", "retry", "dead", "skipped"])]
    pub outcome: Option<String>,
    /// Latest attempt at or after: RFC 3339 or a duration meaning that long ago (2h, 3d).
    #[arg(long, value_parser = crate::commands::dlq::parse_when)]
    pub since: Option<DateTime<Utc>>,
    /// Latest attempt at or before (same forms as --since).
    #[arg(long, value_parser = crate::commands::dlq::parse_when)]
    pub until: Option<DateTime<Utc>>,
}

impl RunFilter {
    /// Whether no filter is given.
    pub fn is_empty(&self) -> bool {
        [
            &self.event,
            &self.contact,
            &self.workspace,
            &self.workflow,
            &self.connector,
            &self.destination,
            &self.outcome,
        ]
        .iter()
        .all(|f| f.is_none())
            && self.since.is_none()
            && self.until.is_none()
    }
}

/// Where the next page starts: the last row of the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Its latest attempt's start.
    pub started_at: DateTime<Utc>,
    /// Its action id.
    pub action_id: String,
}

/// One action as `runs list` shows it: its latest attempt, and how many there were.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The stable action id.
    pub action_id: String,
    /// Its event.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The event's workspace.
    pub workspace: String,
    /// The workflow id (workflow actions).
    pub workflow: Option<String>,
    /// The webhook id (webhook deliveries).
    pub webhook: Option<String>,
    /// The action id within its workflow.
    pub action: String,
    /// The connector queue.
    pub connector: String,
    /// Where its calls go (SPEC §10), when known.
    pub destination: Option<String>,
    /// The contact's email, when the event has one.
    pub contact_email: Option<String>,
    /// The contact's id, when the event has one.
    pub contact_id: Option<String>,
    /// How many attempts history holds for it.
    pub attempts: i64,
    /// Its latest attempt's outcome.
    pub outcome: String,
    /// The dead-letter class, when it was dead-lettered.
    pub error_class: Option<String>,
    /// The latest HTTP status.
    pub http_status: Option<i16>,
    /// The latest failure's reason.
    pub reason: Option<String>,
    /// When its first recorded attempt started.
    pub first_attempt_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub last_attempt_at: DateTime<Utc>,
}

impl RunSummary {
    /// The cursor that continues after this row.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            started_at: self.last_attempt_at,
            action_id: self.action_id.clone(),
        }
    }
}

const ATTEMPT_COLUMNS: &str = "action_id, event_id, event_type, workspace, workflow, webhook, action, connector, destination, contact_email, contact_id, attempt, trigger, started_at, duration_ms, outcome, error_class, http_status, reason, response_excerpt, trace_id, steps";

fn failed(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> HistoryError {
    move |source| {
        if source.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
            HistoryError::NoTables(source)
        } else {
            HistoryError::Query { what, source }
        }
    }
}

/// Query parameters, numbered as they are pushed.
#[derive(Default)]
struct Params {
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Params {
    fn push(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.values.push(Box::new(value));
        format!("${}", self.values.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The WHERE conditions on attempts `a` for a filter.
fn conditions(filter: &RunFilter, params: &mut Params) -> Vec<String> {
    let mut out = Vec::new();
    let mut exact = |column: &str, value: &Option<String>, params: &mut Params| {
        if let Some(value) = value {
            out.push(format!("a.{column} = {}", params.push(value.clone())));
        }
    };
    exact("event_id", &filter.event, params);
    exact("workspace", &filter.workspace, params);
    exact("connector", &filter.connector, params);
    exact("destination", &filter.destination, params);
    exact("outcome", &filter.outcome, params);
    if let Some(contact) = &filter.contact {
        if contact.contains('@') {
            out.push(format!(
                "a.contact_email = {}",
                params.push(contact.trim().to_lowercase())
            ));
        } else {
            out.push(format!("a.contact_id = {}", params.push(contact.clone())));
        }
    }
    if let Some(workflow) = &filter.workflow {
        let p = params.push(workflow.clone());
        out.push(format!("(a.workflow = {p} OR a.webhook = {p})"));
    }
    if let Some(since) = filter.since {
        out.push(format!("a.started_at >= {}", params.push(since)));
    }
    if let Some(until) = filter.until {
        out.push(format!("a.started_at <= {}", params.push(until)));
    }
    out
}

/// Actions matching `filter`, newest latest-attempt first, at most `limit`, after `after`.
pub async fn list(
    client: &Client,
    filter: &RunFilter,
    limit: usize,
    after: Option<&Cursor>,
) -> Result<Vec<RunSummary>, HistoryError> {
    let mut params = Params::default();
    let mut conds = conditions(filter, &mut params);
    // Only each action's latest attempt (ties broken by the attempt number).
    conds.push(
        "NOT EXISTS (SELECT 1 FROM history_attempts b WHERE b.action_id = a.action_id \
         AND (b.started_at, b.attempt) > (a.started_at, a.attempt))"
            .into(),
    );
    if let Some(cursor) = after {
        let t = params.push(cursor.started_at);
        let id = params.push(cursor.action_id.clone());
        conds.push(format!("(a.started_at, a.action_id) < ({t}, {id})"));
    }
    let limit = params.push(i64::try_from(limit).unwrap_or(i64::MAX));
    let sql = format!(
        "SELECT l.action_id, l.event_id, l.event_type, l.workspace, l.workflow, l.webhook, l.action,
                l.connector, l.destination, l.contact_email, l.contact_id, s.attempts, l.outcome,
                l.error_class, l.http_status, l.reason, s.first_attempt_at, l.started_at
           FROM (SELECT a.* FROM history_attempts a WHERE {}
                 ORDER BY a.started_at DESC, a.action_id DESC LIMIT {limit}) l
           CROSS JOIN LATERAL (SELECT count(*) AS attempts, min(c.started_at) AS first_attempt_at
                                 FROM history_attempts c WHERE c.action_id = l.action_id) s
          ORDER BY l.started_at DESC, l.action_id DESC",
        conds.join(" AND ")
    );
    let rows = client
        .query(&sql, &params.refs())
        .await
        .map_err(failed("listing runs"))?;
    Ok(rows
        .iter()
        .map(|r| RunSummary {
            action_id: r.get(0),
            event_id: r.get(1),
            event_type: r.get(2),
            workspace: r.get(3),
            workflow: r.get(4),
            webhook: r.get(5),
            action: r.get(6),
            connector: r.get(7),
            destination: r.get(8),
            contact_email: r.get(9),
            contact_id: r.get(10),
            attempts: r.get(11),
            outcome: r.get(12),
            error_class: r.get(13),
            http_status: r.get(14),
            reason: r.get(15),
            first_attempt_at: r.get(16),
            last_attempt_at: r.get(17),
        })
        .collect())
}

fn attempt_row(r: &tokio_postgres::Row) -> Result<Attempt, HistoryError> {
    let trigger: String = r.get(12);
    let outcome: String = r.get(15);
    Ok(Attempt {
        action_id: r.get(0),
        event_id: r.get(1),
        event_type: r.get(2),
        workspace: r.get(3),
        workflow: r.get(4),
        webhook: r.get(5),
        action: r.get(6),
        connector: r.get(7),
        destination: r.get(8),
        contact_email: r.get(9),
        contact_id: r.get(10),
        attempt: r.get(11),
        trigger: Trigger::parse(&trigger).ok_or(HistoryError::Unknown {
            what: "trigger",
            value: trigger,
        })?,
        started_at: r.get(13),
        duration_ms: r.get(14),
        outcome: RunOutcome::parse(&outcome).ok_or(HistoryError::Unknown {
            what: "outcome",
            value: outcome,
        })?,
        error_class: r.get(16),
        http_status: r.get(17),
        reason: r.get(18),
        response_excerpt: r.get(19),
        trace_id: r.get(20),
        steps: r.get(21),
    })
}

/// Every attempt of one action, oldest first.
pub async fn attempts_of_action(
    client: &Client,
    action_id: &str,
) -> Result<Vec<Attempt>, HistoryError> {
    attempts_where(client, "action_id", action_id).await
}

/// Every attempt of every action of one event, oldest first.
pub async fn attempts_of_event(
    client: &Client,
    event_id: &str,
) -> Result<Vec<Attempt>, HistoryError> {
    attempts_where(client, "event_id", event_id).await
}

/// Attempts whose `column` (an indexed id column, never user input) equals `value`.
async fn attempts_where(
    client: &Client,
    column: &'static str,
    value: &str,
) -> Result<Vec<Attempt>, HistoryError> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM history_attempts WHERE {column} = $1 ORDER BY started_at, attempt"
    );
    let rows = client
        .query(&sql, &[&value])
        .await
        .map_err(failed("reading attempts"))?;
    rows.iter().map(attempt_row).collect()
}

/// Every time the event was received (or rejected), oldest first.
pub async fn events(client: &Client, event_id: &str) -> Result<Vec<EventRecord>, HistoryError> {
    let rows = client
        .query(
            "SELECT event_id, event_type, workspace, received_at, rejected, payload, trace_id
               FROM history_events WHERE event_id = $1 ORDER BY received_at",
            &[&event_id],
        )
        .await
        .map_err(failed("reading an event"))?;
    Ok(rows
        .iter()
        .map(|r| EventRecord {
            event_id: r.get(0),
            event_type: r.get(1),
            workspace: r.get(2),
            received_at: r.get(3),
            rejected: r.get(4),
            payload: r.get(5),
            trace_id: r.get(6),
        })
        .collect())
}

/// The latest stored JSON of an event, if its payload was kept.
pub async fn event_payload(
    client: &Client,
    event_id: &str,
) -> Result<Option<String>, HistoryError> {
    latest_text(
        client,
        "SELECT payload FROM history_events
          WHERE event_id = $1 AND rejected IS NULL AND payload IS NOT NULL
          ORDER BY received_at DESC LIMIT 1",
        event_id,
        "reading an event's payload",
    )
    .await
}

/// The outputs of earlier steps that an action was last given, if history kept them.
pub async fn action_steps(
    client: &Client,
    action_id: &str,
) -> Result<Option<String>, HistoryError> {
    latest_text(
        client,
        "SELECT steps FROM history_attempts
          WHERE action_id = $1 AND steps IS NOT NULL
          ORDER BY started_at DESC LIMIT 1",
        action_id,
        "reading an action's steps",
    )
    .await
}

/// The one text column of the one row `sql` finds for `key`, if any.
async fn latest_text(
    client: &Client,
    sql: &str,
    key: &str,
    what: &'static str,
) -> Result<Option<String>, HistoryError> {
    let row = client.query_opt(sql, &[&key]).await.map_err(failed(what))?;
    Ok(row.map(|r| r.get(0)))
}

/// One action summarised as `runs list` would show it, if it has any attempt.
pub async fn summary_of_action(
    client: &Client,
    action_id: &str,
) -> Result<Option<RunSummary>, HistoryError> {
    let attempts = attempts_of_action(client, action_id).await?;
    let (Some(first), Some(last)) = (attempts.first(), attempts.last()) else {
        return Ok(None);
    };
    Ok(Some(RunSummary {
        action_id: last.action_id.clone(),
        event_id: last.event_id.clone(),
        event_type: last.event_type.clone(),
        workspace: last.workspace.clone(),
        workflow: last.workflow.clone(),
        webhook: last.webhook.clone(),
        action: last.action.clone(),
        connector: last.connector.clone(),
        destination: last.destination.clone(),
        contact_email: last.contact_email.clone(),
        contact_id: last.contact_id.clone(),
        attempts: attempts.len() as i64,
        outcome: last.outcome.as_str().to_owned(),
        error_class: last.error_class.clone(),
        http_status: last.http_status,
        reason: last.reason.clone(),
        first_attempt_at: first.started_at,
        last_attempt_at: last.started_at,
    }))
}
