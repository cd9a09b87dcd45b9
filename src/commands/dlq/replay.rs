//! `dlq replay`. [`replay_records`] reports each record as it goes and returns the totals, so
//! that the command prints them and the console (SPEC §11) shows them.

use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lapin::Connection;

use super::pass::{Pass, require_exchange};
use super::{DlqError, Filter, UNREACHABLE, cell};
use crate::broker::{BrokerError, Publisher, Topology};
use crate::delivery::dead_letter::replay_properties;

/// How `dlq replay` runs.
pub struct ReplayOptions {
    /// At most this many records.
    pub limit: Option<usize>,
    /// Records per second.
    pub rate: Option<f64>,
    /// Change nothing.
    pub dry_run: bool,
    /// The longest a pass holds records unacked while waiting for --rate.
    pub max_hold: Duration,
}

/// What happened to one record (or to a pass), as it happens.
#[derive(Debug, Clone)]
pub enum Replayed {
    /// A dry run: it would go to `queue`.
    Would {
        /// The record's id (`-` when it has none).
        id: String,
        /// `workflow/action`.
        source: String,
        /// Its action queue.
        queue: String,
    },
    /// It went back to `queue` and left the dead-letter queue.
    Moved {
        /// The record's id.
        id: String,
        /// `workflow/action`.
        source: String,
        /// Its action queue.
        queue: String,
    },
    /// Its connector is unknown: it stays.
    Skipped {
        /// The record's id.
        id: String,
        /// `workflow/action`.
        source: String,
        /// The connector header, as it reads.
        connector: String,
    },
    /// The broker did not route it: it stays.
    Refused {
        /// The record's id.
        id: String,
        /// `workflow/action`.
        source: String,
        /// The action queue it was meant for.
        queue: String,
    },
    /// A pass reached `max_hold` and handed its records back; a new one starts.
    NewPass {
        /// Records moved so far.
        moved: usize,
        /// The hold that was reached.
        max_hold: Duration,
        /// The dead-letter queue.
        queue: String,
    },
}

impl fmt::Display for Replayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replayed::Would { id, source, queue } => {
                write!(f, "would replay {id} {source} -> {queue}")
            }
            Replayed::Moved { id, source, queue } => {
                write!(f, "replayed {id} {source} -> {queue}")
            }
            Replayed::Skipped {
                id,
                source,
                connector,
            } => write!(
                f,
                "skip {id} {source}: no known connector ({connector}); it stays"
            ),
            Replayed::Refused { id, source, queue } => write!(
                f,
                "refused {id} {source}: the broker did not route it to {queue}; it stays"
            ),
            Replayed::NewPass {
                moved,
                max_hold,
                queue,
            } => write!(
                f,
                "{moved} replayed so far; the pass reached --max-hold {}, so the records it held went back to {queue} unchanged and a new pass starts",
                humantime::format_duration(*max_hold)
            ),
        }
    }
}

/// The totals of a replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayTotals {
    /// Records moved (or, in a dry run, that would move).
    pub moved: usize,
    /// Matching records left alone because of the limit.
    pub beyond: usize,
    /// Records that could not be replayed and stay.
    pub not_moved: usize,
    /// Whether the broker refused to route any.
    pub refused: bool,
}

/// Replays the records matching `filter`, telling `report` about each as it goes.
pub async fn replay_records(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    options: &ReplayOptions,
    report: &mut impl FnMut(Replayed),
) -> Result<ReplayTotals, DlqError> {
    let publisher = if options.dry_run {
        None
    } else {
        require_exchange(connection, &topology.actions).await?;
        Some(Publisher::open(connection).await?)
    };
    let started = Instant::now();
    let mut totals = ReplayTotals::default();
    // Records this replay leaves where they are (no known connector, or refused by the broker),
    // so that a later pass does not report or retry them again.
    let mut left_alone: HashSet<(String, String)> = HashSet::new();
    // A rate-limited replay can outlast the broker's consumer_timeout (30 min by default), which
    // counts from the oldest unacked delivery, including the records a pass holds. So a pass
    // ends once it has held records for --max-hold; the next one starts after the wait.
    loop {
        let mut pass = Pass::open(connection, &topology.dead_letter).await?;
        let hold_until = Instant::now() + options.max_hold;
        let mut resume_at = None;
        // Matches past --limit, counted in the last pass.
        totals.beyond = 0;
        while let Some(record) = pass.next().await? {
            if !filter.matches(&record) {
                continue;
            }
            if options.limit.is_some_and(|limit| totals.moved >= limit) {
                totals.beyond += 1;
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
                report(Replayed::Skipped {
                    id,
                    source,
                    connector: cell(record.connector()),
                });
                totals.not_moved += 1;
                left_alone.extend(key);
                continue;
            };
            let Some(publisher) = &publisher else {
                totals.moved += 1;
                report(Replayed::Would { id, source, queue });
                continue;
            };
            if let Some(rate) = options.rate {
                let due = started + Duration::from_secs_f64(totals.moved as f64 / rate);
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
                    totals.moved += 1;
                    report(Replayed::Moved { id, source, queue });
                }
                Err(BrokerError::Refused(_) | BrokerError::Unroutable(_)) => {
                    report(Replayed::Refused { id, source, queue });
                    totals.not_moved += 1;
                    totals.refused = true;
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
                report(Replayed::NewPass {
                    moved: totals.moved,
                    max_hold: options.max_hold,
                    queue: topology.dead_letter.clone(),
                });
                tokio::time::sleep_until(due.into()).await;
            }
            None => break,
        }
    }
    Ok(totals)
}

/// `dlq replay`.
pub(super) async fn replay(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    options: ReplayOptions,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    let mut print = |replayed: Replayed| match replayed {
        Replayed::NewPass { .. } => eprintln!("{replayed}"),
        line => {
            let _ = writeln!(out, "{line}");
        }
    };
    let totals = replay_records(connection, topology, filter, &options, &mut print).await?;
    let dlq = &topology.dead_letter;
    if options.dry_run {
        let _ = writeln!(
            out,
            "dry run: would replay {} record(s) to {}; nothing changed",
            totals.moved, topology.actions
        );
    } else {
        let _ = writeln!(
            out,
            "replayed {} record(s) to {} with a fresh attempt budget",
            totals.moved, topology.actions
        );
    }
    if totals.beyond > 0 {
        let _ = writeln!(
            out,
            "{} more matching record(s) stay in {dlq} (--limit)",
            totals.beyond
        );
    }
    if totals.not_moved > 0 {
        let _ = writeln!(
            out,
            "{} record(s) could not be replayed and stay in {dlq}",
            totals.not_moved
        );
    }
    if totals.refused {
        return Ok(ExitCode::from(UNREACHABLE));
    }
    Ok(ExitCode::SUCCESS)
}
