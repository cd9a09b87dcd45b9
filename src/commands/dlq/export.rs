//! `dlq export`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use lapin::Connection;
use serde_json::Value;

use super::pass::Pass;
use super::{DlqError, Filter, Record};
use crate::broker::Topology;

/// Records acked together after one `fsync` of the export file.
const EXPORT_BATCH: usize = 256;

/// One record as an export line: its id, every header, and the body (JSON when it is).
fn export_line(record: &Record) -> Value {
    serde_json::json!({
        "id": record.id(),
        "headers": Value::Object(record.headers_json()),
        "body": record.body_json(),
    })
}

/// The export lines of the records matching `filter` (at most `limit`), and how many; unlike
/// `dlq export` the records stay in the queue. The console's download: a browser may never save
/// what it was sent, so nothing is removed on its account.
pub async fn export_copy(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    limit: Option<usize>,
) -> Result<(Vec<u8>, usize), DlqError> {
    let mut pass = Pass::open(connection, &topology.dead_letter).await?;
    let mut lines = Vec::new();
    let mut copied = 0usize;
    let read = async {
        while let Some(record) = pass.next().await? {
            if !filter.matches(&record) || limit.is_some_and(|limit| copied >= limit) {
                continue;
            }
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut lines, &export_line(&record));
            lines.push(b'\n');
            copied += 1;
        }
        Ok::<_, DlqError>(())
    }
    .await;
    let finished = pass.finish().await;
    read?;
    finished?;
    Ok((lines, copied))
}

/// `dlq export`.
pub(super) async fn export(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    limit: Option<usize>,
    path: &Path,
    out: &mut impl Write,
) -> Result<ExitCode, DlqError> {
    let io = |source| DlqError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut pass = Pass::open(connection, &topology.dead_letter).await?;
    let sink = if path == Path::new(STDOUT) {
        Ok(Sink::Stream(&mut *out))
    } else {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map(|file| Sink::File(BufWriter::new(file)))
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => DlqError::Usage(format!(
                    "{} already exists; an export never overwrites a file, choose another --out",
                    path.display()
                )),
                _ => io(source),
            })
    };
    let mut sink = match sink {
        Ok(sink) => sink,
        Err(e) => {
            pass.finish().await?;
            return Err(e);
        }
    };
    let mut written: Vec<Record> = Vec::new();
    let mut exported = 0usize;
    let result = async {
        // Read to the end even past --limit, so the records handed back keep their order.
        while let Some(record) = pass.next().await? {
            if !filter.matches(&record) || limit.is_some_and(|limit| exported >= limit) {
                continue;
            }
            let line = export_line(&record);
            serde_json::to_writer(&mut sink, &line).map_err(|e| io(e.into()))?;
            sink.write_all(b"\n").map_err(io)?;
            exported += 1;
            written.push(record);
            if written.len() >= EXPORT_BATCH {
                settle_export(&mut sink, &mut pass, &mut written)
                    .await
                    .map_err(|e| e.at(path))?;
            }
        }
        settle_export(&mut sink, &mut pass, &mut written)
            .await
            .map_err(|e| e.at(path))
    }
    .await;
    // Whatever happened, records not yet acked go back to the queue.
    let finished = pass.finish().await;
    result?;
    finished?;
    let to_stdout = matches!(sink, Sink::Stream(_));
    drop(sink);
    let summary = |to: &dyn std::fmt::Display| {
        format!(
            "exported {exported} record(s) to {to} and removed them from {}",
            topology.dead_letter
        )
    };
    if to_stdout {
        // Standard output holds the records alone, so that it can be redirected to a file.
        eprintln!("{}", summary(&"standard output"));
    } else {
        let _ = writeln!(out, "{}", summary(&path.display()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--out -`: export to standard output.
const STDOUT: &str = "-";

/// Where `dlq export` writes its lines.
enum Sink<'a, W: Write> {
    /// A new file, synced to disk before its records are removed.
    File(BufWriter<File>),
    /// Standard output (`--out -`), flushed before its records are removed.
    Stream(&'a mut W),
}

impl<W: Write> Sink<'_, W> {
    /// Makes what was written as durable as this sink can: synced to disk, or handed to the reader.
    fn settle(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(writer) => {
                writer.flush()?;
                writer.get_ref().sync_data()
            }
            Sink::Stream(writer) => writer.flush(),
        }
    }
}

impl<W: Write> Write for Sink<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File(writer) => writer.write(buf),
            Sink::Stream(writer) => writer.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(writer) => writer.flush(),
            Sink::Stream(writer) => writer.flush(),
        }
    }
}

/// Why a batch of exported records could not be settled.
enum SettleError {
    /// Writing or syncing the file failed: the batch stays in the queue.
    Io(std::io::Error),
    /// Acking failed.
    Dlq(DlqError),
}

impl SettleError {
    fn at(self, path: &Path) -> DlqError {
        match self {
            SettleError::Io(source) => DlqError::Io {
                path: path.to_path_buf(),
                source,
            },
            SettleError::Dlq(e) => e,
        }
    }
}

/// Makes the written lines durable, then removes their records from the queue.
async fn settle_export<W: Write>(
    sink: &mut Sink<'_, W>,
    pass: &mut Pass,
    written: &mut Vec<Record>,
) -> Result<(), SettleError> {
    if written.is_empty() {
        return Ok(());
    }
    sink.settle().map_err(SettleError::Io)?;
    for record in written.drain(..) {
        pass.remove(&record).await.map_err(SettleError::Dlq)?;
    }
    Ok(())
}
