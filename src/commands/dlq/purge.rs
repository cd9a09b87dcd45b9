//! `dlq purge`.

use std::io::Write;
use std::process::ExitCode;

use lapin::Connection;

use super::pass::Pass;
use super::{DlqError, Filter, USER_ERROR};
use crate::broker::Topology;

/// What a purge found and did.
#[derive(Debug, Clone, Copy)]
pub struct Purged {
    /// Matching records (deleted, unless it was only counted).
    pub matched: usize,
    /// Records left in the queue after the pass.
    pub left: u32,
}

/// Deletes the records matching `filter` (at most `limit`); with `delete` false only counts them.
pub async fn purge_records(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    limit: Option<usize>,
    delete: bool,
) -> Result<Purged, DlqError> {
    let mut pass = Pass::open(connection, &topology.dead_letter).await?;
    let mut matched = 0usize;
    let result = async {
        while let Some(record) = pass.next().await? {
            if !filter.matches(&record) || limit.is_some_and(|limit| matched >= limit) {
                continue;
            }
            matched += 1;
            if delete {
                pass.remove(&record).await?;
            }
        }
        Ok::<(), DlqError>(())
    }
    .await;
    let left = pass.left();
    let finished = pass.finish().await;
    result?;
    finished?;
    Ok(Purged { matched, left })
}

/// `dlq purge`.
pub(super) async fn purge(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    limit: Option<usize>,
    yes: bool,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    let Purged { matched, left } = purge_records(connection, topology, filter, limit, yes).await?;
    let dlq = &topology.dead_letter;
    if !yes {
        eprintln!(
            "refusing to delete without --yes: {matched} record(s) in {dlq} match and would be deleted; nothing was deleted"
        );
        eprintln!("(keep a copy first with `switchyard dlq export … --out FILE`)");
        return Ok(ExitCode::from(USER_ERROR));
    }
    let _ = writeln!(out, "deleted {matched} record(s) from {dlq}; {left} left");
    Ok(ExitCode::SUCCESS)
}
