//! `dlq list` and `dlq show`.

use std::io::Write;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use lapin::Connection;
use serde_json::Value;

use super::pass::Pass;
use super::{DlqError, Filter, Record, USER_ERROR, cell, short_time, table};
use crate::broker::Topology;
use crate::broker::message::{H_CLASS, H_EVENT};

/// `dlq list`.
pub(super) async fn list(
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
pub(super) async fn show(
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
