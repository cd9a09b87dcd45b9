//! The dead-letter commands of SPEC §4: `dlq stats`, `list`, `show`, `replay`, `export`, `purge`.
//!
//! Every command reads `<prefix>.dead-letter` in one bounded pass (`pass::Pass`): a consumer without
//! auto-ack whose prefetch is the number of records the queue held when the pass began, read until
//! that many have come or none comes for a second (the queue is empty). Every delivery stays unacked until the pass ends, so the broker
//! cannot hand the same record back twice in one pass; records the command removes (replayed once
//! their copy is confirmed, exported once their line is on disk, purged) are acked, and everything
//! else is handed back with one `nack(requeue)` at the end, unchanged. Passes read to the end even
//! with `--limit`: the broker appends what is handed back, so a pass that stopped early would move
//! the records it read behind the ones it did not. If the process dies
//! half-way, the broker requeues whatever was not acked: a record is never lost, at worst it is
//! both replayed (or exported) and still in the queue.
//!
//! Each command returns the process exit code: 0 ok, 1 user error, 2 broker unreachable.

mod args;
mod export;
mod list;
mod pass;
mod purge;
mod record;
mod replay;
mod stats;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lapin::Connection;

use super::{UNREACHABLE, USER_ERROR};
use crate::broker::{self, BrokerError, Topology};
use crate::config::Config;

pub use self::args::Filter;
// The console (SPEC §11) reads and repairs the queue through the same passes.
pub(crate) use self::args::{parse_when, positive_rate};
pub use self::export::export_copy;
pub use self::list::{Listed, Listing, Shown, collect, find};
pub(crate) use self::pass::require_exchange;
pub use self::purge::{Purged, purge_records};
pub use self::record::Record;
pub use self::replay::{ReplayOptions, ReplayTotals, Replayed, replay_records};
// `runs` prints its tables with the same helpers.
use self::args::parse_hold;
pub(crate) use super::table::{cell, short_time, table};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Counts of dead-lettered actions by connector, workflow, error class and reason.
    Stats {
        /// Which records to count.
        #[command(flatten)]
        filter: Filter,
    },
    /// One line per dead-lettered action: id, dead-at, connector, workflow/action, class, last
    /// status, reason.
    List {
        /// Which records to list.
        #[command(flatten)]
        filter: Filter,
        /// List at most this many (the oldest).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Everything about one record: properties, every header, and the body. ID is an action id
    /// (the message id); an event id shows every record of that event.
    Show {
        /// The action id (`act_…`) or an event id.
        id: String,
    },
    /// Moves matching records back to their action queue with a fresh attempt budget (the action
    /// id is kept, so destinations can de-duplicate).
    Replay {
        /// Which records to replay.
        #[command(flatten)]
        filter: Filter,
        /// Replay at most this many (the first matches in queue order).
        #[arg(long)]
        limit: Option<usize>,
        /// At most this many records per second (default: as fast as confirms allow).
        #[arg(long, value_parser = positive_rate)]
        rate: Option<f64>,
        /// Only print what would move; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --rate, how long one pass may hold records unacked before handing them back and
        /// starting over; keep it well below the broker's consumer_timeout (30m by default).
        #[arg(long, default_value = "10m", value_parser = parse_hold)]
        max_hold: Duration,
    },
    /// Drains matching records to a JSON-lines file, or to standard output with `--out -`; each is
    /// removed from the queue only once its line is written and synced to disk (flushed to
    /// standard output).
    Export {
        /// Which records to export.
        #[command(flatten)]
        filter: Filter,
        /// Export at most this many (the first matches in queue order).
        #[arg(long)]
        limit: Option<usize>,
        /// The file to write; it must not exist yet (an export is never overwritten). `-` writes
        /// the lines to standard output and the summary to standard error (`kubectl exec … > file`
        /// in a pod whose root filesystem is read-only).
        #[arg(long)]
        out: PathBuf,
    },
    /// Deletes matching records. Without --yes, only says how many would be deleted (exit 1).
    Purge {
        /// Which records to delete.
        #[command(flatten)]
        filter: Filter,
        /// Delete at most this many (the first matches in queue order).
        #[arg(long)]
        limit: Option<usize>,
        /// Really delete them.
        #[arg(long)]
        yes: bool,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Bad arguments, or a queue or exchange the configuration names does not exist (exit 1).
    #[error("{0}")]
    Usage(String),
    /// The export file could not be written (exit 1).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The broker could not be reached or failed during the pass (exit 2).
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl DlqError {
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            DlqError::Usage(_) | DlqError::Io { .. } => ExitCode::from(USER_ERROR),
            DlqError::Broker(_) => ExitCode::from(UNREACHABLE),
        }
    }
}

/// Runs one `dlq` command; returns the process exit code.
pub async fn run(config: &Config, command: Command, out: &mut impl Write) -> ExitCode {
    let topology = Topology::new(config);
    let filter = match &command {
        Command::Stats { filter }
        | Command::List { filter, .. }
        | Command::Replay { filter, .. }
        | Command::Export { filter, .. }
        | Command::Purge { filter, .. } => Some(filter),
        Command::Show { .. } => None,
    };
    if let Some(Err(e)) = filter.map(Filter::check) {
        eprintln!("error: {e}");
        return e.exit_code();
    }
    let result = async {
        let connection = broker::connect_any(&config.amqp, "switchyard dlq")
            .await?
            .connection;
        let result = dispatch(&connection, &topology, command, out).await;
        broker::close_connection(&connection, 200, "done").await;
        result
    }
    .await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if let DlqError::Broker(_) = e {
                eprintln!(
                    "nothing was lost: records not yet removed stay in {}",
                    topology.dead_letter
                );
            }
            e.exit_code()
        }
    }
}

async fn dispatch(
    connection: &Connection,
    topology: &Topology,
    command: Command,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    match command {
        Command::Stats { filter } => stats::stats(connection, topology, &filter, out).await,
        Command::List { filter, limit } => {
            list::list(connection, topology, &filter, limit, out).await
        }
        Command::Show { id } => list::show(connection, topology, &id, out).await,
        Command::Replay {
            filter,
            limit,
            rate,
            dry_run,
            max_hold,
        } => {
            let options = ReplayOptions {
                limit,
                rate,
                dry_run,
                max_hold,
            };
            replay::replay(connection, topology, &filter, options, out).await
        }
        Command::Export {
            filter,
            limit,
            out: path,
        } => export::export(connection, topology, &filter, limit, &path, out).await,
        Command::Purge { filter, limit, yes } => {
            purge::purge(connection, topology, &filter, limit, yes, out).await
        }
    }
}
