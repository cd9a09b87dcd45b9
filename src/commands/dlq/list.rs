//! `dlq list` and `dlq show`. [`collect`] and [`find`] return what they read, so that the console
//! (SPEC §11) shows the same records the commands print.

use std::io::Write;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use lapin::Connection;
use serde_json::Value;

use super::pass::Pass;
use super::{DlqError, Filter, Record, USER_ERROR, cell, short_time, table};
use crate::broker::Topology;
use crate::broker::message::{H_CLASS, H_EVENT};

/// One dead letter as a list shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The message id (the action id).
    pub id: Option<String>,
    /// When it was dead-lettered.
    pub dead_at: Option<DateTime<Utc>>,
    /// Its connector.
    pub connector: Option<String>,
    /// Its workflow or webhook id.
    pub workflow: Option<String>,
    /// Its action id within the workflow.
    pub action: Option<String>,
    /// The error class.
    pub class: Option<String>,
    /// The last HTTP status.
    pub status: Option<String>,
    /// Why it was dead-lettered.
    pub reason: String,
}

impl Listed {
    fn of(record: &Record) -> Listed {
        Listed {
            id: record.id().map(str::to_owned),
            dead_at: record.dead_at(),
            connector: record.connector(),
            workflow: record.workflow(),
            action: record.action(),
            class: record.header(H_CLASS).map(str::to_owned),
            status: record.status(),
            reason: record.reason(),
        }
    }

    /// `workflow/action`, when either is known.
    pub fn source(&self) -> Option<String> {
        match (&self.workflow, &self.action) {
            (None, None) => None,
            (workflow, action) => Some(format!(
                "{}/{}",
                workflow.as_deref().unwrap_or("-"),
                action.as_deref().unwrap_or("-")
            )),
        }
    }
}

/// What one listing pass read.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The matching records, oldest first, at most the limit.
    pub rows: Vec<Listed>,
    /// How many records matched (before the limit).
    pub matched: usize,
    /// How many records the pass read.
    pub read: u32,
}

/// The records matching `filter`, oldest first, at most `limit`; the queue is left as it was.
pub async fn collect(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    limit: Option<usize>,
) -> Result<Listing, DlqError> {
    let mut pass = Pass::open(connection, &topology.dead_letter).await?;
    // The whole queue is read even with --limit: a pass that stops early would move the records
    // it read behind the rest (the broker appends what is handed back), and reading everything
    // lets --limit show the oldest records rather than whichever came first.
    let mut rows = Vec::new();
    let read = async {
        while let Some(record) = pass.next().await? {
            if filter.matches(&record) {
                rows.push(Listed::of(&record));
            }
        }
        Ok::<_, DlqError>(pass.read)
    }
    .await;
    let finished = pass.finish().await;
    let read = read?;
    finished?;
    // Records without a dead-letter time last.
    rows.sort_by_key(|row| (row.dead_at.is_none(), row.dead_at));
    let matched = rows.len();
    rows.truncate(limit.unwrap_or(usize::MAX));
    Ok(Listing {
        rows,
        matched,
        read,
    })
}

/// `dlq list`.
pub(super) async fn list(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    limit: Option<usize>,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    let listing = collect(connection, topology, filter, limit).await?;
    let rows: Vec<Vec<String>> = listing
        .rows
        .iter()
        .map(|row| {
            vec![
                cell(row.id.clone()),
                cell(row.dead_at.map(short_time)),
                cell(row.connector.clone()),
                cell(row.source()),
                cell(row.class.clone()),
                cell(row.status.clone()),
                cell(Some(row.reason.clone())),
            ]
        })
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
        "{} record(s) listed, oldest first; {} of the {} in {} match",
        rows.len(),
        listing.matched,
        listing.read,
        topology.dead_letter
    );
    Ok(ExitCode::SUCCESS)
}

/// One record in full, as `dlq show` prints it.
#[derive(Debug, Clone)]
pub struct Shown {
    /// The message id.
    pub id: Option<String>,
    /// Message properties worth showing, as (name, value).
    pub properties: Vec<(String, String)>,
    /// Every header, as (name, value).
    pub headers: Vec<(String, String)>,
    /// The body: pretty JSON, or the text as it is.
    pub body: String,
}

impl Shown {
    fn of(record: &Record) -> Shown {
        let p = &record.properties;
        let mut properties = Vec::new();
        if let Some(v) = p.content_type() {
            properties.push(("content-type".into(), v.to_string()));
        }
        if let Some(v) = p.content_encoding() {
            properties.push(("content-encoding".into(), v.to_string()));
        }
        if let Some(v) = p.timestamp() {
            let shown = i64::try_from(*v)
                .ok()
                .and_then(|secs| DateTime::from_timestamp(secs, 0))
                .map_or_else(|| v.to_string(), short_time);
            properties.push(("published-at".into(), shown));
        }
        if let Some(v) = p.correlation_id() {
            properties.push(("correlation-id".into(), v.to_string()));
        }
        properties.push(("body-bytes".into(), record.body.len().to_string()));
        let headers = record
            .headers_json()
            .into_iter()
            .map(|(name, value)| {
                let shown = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (name, shown)
            })
            .collect();
        let body = match serde_json::from_slice::<Value>(&record.body) {
            // Serialising a `Value` cannot fail.
            Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
            Err(_) => String::from_utf8_lossy(&record.body).into_owned(),
        };
        Shown {
            id: record.id().map(str::to_owned),
            properties,
            headers,
            body,
        }
    }
}

/// Every record whose action id or event id is `id`, in queue order; the queue is left as it was.
pub async fn find(
    connection: &Connection,
    topology: &Topology,
    id: &str,
) -> Result<Vec<Shown>, DlqError> {
    let mut pass = Pass::open(connection, &topology.dead_letter).await?;
    let mut found = Vec::new();
    let read = async {
        while let Some(record) = pass.next().await? {
            if record.id() == Some(id) || record.header(H_EVENT) == Some(id) {
                found.push(Shown::of(&record));
            }
        }
        Ok::<_, DlqError>(())
    }
    .await;
    let finished = pass.finish().await;
    read?;
    finished?;
    Ok(found)
}

/// `dlq show`.
pub(super) async fn show(
    connection: &Connection,
    topology: &Topology,
    id: &str,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    let found = find(connection, topology, id).await?;
    if found.is_empty() {
        eprintln!(
            "error: no record in {} has the action id or event id {id}",
            topology.dead_letter
        );
        return Ok(ExitCode::from(USER_ERROR));
    }
    for (i, shown) in found.iter().enumerate() {
        if i > 0 {
            let _ = writeln!(out, "\n{}", "-".repeat(72));
        }
        print_record(out, shown, &topology.dead_letter);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_record(out: &mut impl Write, shown: &Shown, queue: &str) {
    let _ = writeln!(
        out,
        "record {} in {queue}",
        shown.id.as_deref().unwrap_or("(no message id)")
    );
    let pairs = |pairs: &[(String, String)]| -> Vec<Vec<String>> {
        pairs
            .iter()
            .map(|(name, value)| vec![format!("  {name}"), value.clone()])
            .collect()
    };
    let _ = writeln!(out, "\nproperties");
    table(
        out,
        &["  NAME", "VALUE"],
        &[false, false],
        &pairs(&shown.properties),
    );
    let _ = writeln!(out, "\nheaders");
    table(
        out,
        &["  NAME", "VALUE"],
        &[false, false],
        &pairs(&shown.headers),
    );
    let _ = writeln!(out, "\nbody");
    let _ = writeln!(out, "{}", shown.body);
}
