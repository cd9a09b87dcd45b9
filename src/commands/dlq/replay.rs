//! `dlq replay`.

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lapin::Connection;

use super::pass::{Pass, require_exchange};
use super::{DlqError, Filter, UNREACHABLE, cell};
use crate::broker::{BrokerError, Publisher, Topology};
use crate::delivery::dead_letter::replay_properties;

/// How `dlq replay` runs.
pub(super) struct ReplayOptions {
    /// At most this many records.
    pub(super) limit: Option<usize>,
    /// Records per second.
    pub(super) rate: Option<f64>,
    /// Change nothing.
    pub(super) dry_run: bool,
    /// The longest a pass holds records unacked while waiting for --rate.
    pub(super) max_hold: Duration,
}

/// `dlq replay`.
pub(super) async fn replay(
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
