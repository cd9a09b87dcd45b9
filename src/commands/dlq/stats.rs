//! `dlq stats`.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use lapin::Connection;

use super::pass::Pass;
use super::{DlqError, Filter, cell, short_time, table};
use crate::broker::Topology;
use crate::broker::message::H_CLASS;

/// Distinct reasons `dlq stats` lists before summarising the rest.
const STATS_REASONS: usize = 20;

/// `dlq stats`.
pub(super) async fn stats(
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
