//! `switchyard destinations list|pause|resume` (SPEC §10): what each destination is doing, and
//! the operator's hand on it. Pauses and resumes are records on the control stream that every
//! running process follows ([`crate::control`]).

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;

use super::table::table;
use super::{UNREACHABLE, USER_ERROR};
use crate::broker::{self, BrokerError};
use crate::config::Config;
use crate::control::{self, Record, Streams};
use crate::destinations::{Pause, Status};

/// `switchyard destinations …`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every destination the running processes report (last 15 s) and every pause: id, kind,
    /// state, calls/s, error ratio, in flight, held, last error.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Holds DEST's actions on the broker until it is resumed; every running process applies it
    /// within seconds, and it survives restarts. DEST is a connection id, a webhook id or, for
    /// http actions, `host` or `host:port`.
    Pause {
        /// The destination.
        destination: String,
        /// Why (shown by `list`, logged by every process).
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
    },
    /// Releases DEST's held actions (also ends a quarantine).
    Resume {
        /// The destination.
        destination: String,
    },
}

/// Runs a `destinations` command; the exit code of SPEC §4.
pub async fn run(config: &Config, command: Command, out: &mut impl Write) -> ExitCode {
    let destination = match &command {
        Command::Pause { destination, .. } | Command::Resume { destination } => Some(destination),
        Command::List { .. } => None,
    };
    if let Some(destination) = destination
        && let Err(e) = check_id(destination)
    {
        eprintln!("error: {e}");
        return ExitCode::from(USER_ERROR);
    }
    let streams = Streams::of(config);
    let result = async {
        let connection = broker::connect_any(&config.amqp, "switchyard destinations")
            .await?
            .connection;
        let result = dispatch(&connection, &streams, command, out).await;
        broker::close_connection(&connection, 200, "done").await;
        result
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(UNREACHABLE)
        }
    }
}

/// A destination id as an operator may type it: not empty, one line, no spaces.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("the destination is empty; give a connection id, a webhook id or host[:port] (see `switchyard destinations list`)".into());
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) || id.contains("://") {
        return Err(format!(
            "{id:?} is not a destination: give a connection id, a webhook id or host[:port], without scheme or spaces"
        ));
    }
    Ok(())
}

/// Who is acting: `$SWITCHYARD_OPERATOR`, else `$USER`, else `cli`.
fn operator() -> String {
    std::env::var("SWITCHYARD_OPERATOR")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "cli".into())
}

async fn dispatch(
    connection: &lapin::Connection,
    streams: &Streams,
    command: Command,
    out: &mut impl Write,
) -> Result<(), BrokerError> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match command {
        Command::List { json } => {
            let statuses = control::list(connection, streams).await?;
            print_list(out, &statuses, json);
        }
        Command::Pause {
            destination,
            reason,
        } => {
            let pause = Pause {
                reason,
                by: operator(),
                at: now,
            };
            let record = Record::Pause {
                destination: destination.clone(),
                pause,
            };
            control::write(connection, streams, &record).await?;
            let _ = writeln!(
                out,
                "paused {destination}: every running process holds its actions on the broker within 5 s, until `switchyard destinations resume {destination}`"
            );
        }
        Command::Resume { destination } => {
            let record = Record::Resume {
                destination: destination.clone(),
                by: operator(),
                at: now,
            };
            control::write(connection, streams, &record).await?;
            let _ = writeln!(
                out,
                "resumed {destination}: its held actions flow again as their hold ends (within 30 s)"
            );
        }
    }
    Ok(())
}

/// The list as a table, or one JSON object per line.
pub fn print_list(out: &mut impl Write, statuses: &[Status], json: bool) {
    if json {
        for status in statuses {
            let line = serde_json::json!({
                "id": status.id,
                "kind": status.kind.map(|k| k.as_str()),
                "state": status.state.as_str(),
                "calls_per_s": status.calls_per_s,
                "error_ratio": status.error_ratio,
                "in_flight": status.in_flight,
                "held": status.held,
                "last_error": status.last_error,
                "paused_by": status.pause.as_ref().map(|p| &p.by),
                "pause_reason": status.pause.as_ref().map(|p| &p.reason),
            });
            let _ = writeln!(out, "{line}");
        }
        return;
    }
    if statuses.is_empty() {
        let _ = writeln!(
            out,
            "no destination: no running process reported one in the last 15 s, and none is paused"
        );
        return;
    }
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            let last = match &s.pause {
                Some(pause) => format!("paused by {} at {}: {}", pause.by, pause.at, pause.reason),
                None => s.last_error.clone().unwrap_or_default(),
            };
            vec![
                s.id.clone(),
                s.kind.map_or("-", |k| k.as_str()).to_owned(),
                s.state.as_str().to_owned(),
                format!("{:.1}", s.calls_per_s),
                s.error_ratio
                    .map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
                s.in_flight.to_string(),
                s.held.to_string(),
                last,
            ]
        })
        .collect();
    table(
        out,
        &[
            "DESTINATION",
            "KIND",
            "STATE",
            "CALLS/S",
            "ERRORS",
            "IN FLIGHT",
            "HELD",
            "LAST ERROR / PAUSE",
        ],
        &[false, false, false, true, true, true, true, false],
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_id_is_checked_before_anything_is_written() {
        assert!(check_id("crm-hooks").is_ok());
        assert!(check_id("127.0.0.1:8081").is_ok());
        for bad in ["", "  ", "two words", "https://api.example.com"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
