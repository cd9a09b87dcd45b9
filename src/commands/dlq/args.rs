//! What the `dlq` commands select: the record filter and the parsers of its arguments.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use super::{DlqError, Record};
use crate::broker::message::H_CLASS;

/// Which records a command applies to. Every given filter must hold; records that match none
/// stay in the queue untouched.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only this connector.
    #[arg(long, value_parser = crate::connectors::ConnectorKind::parser())]
    pub connector: Option<String>,
    /// Only this workflow (or webhook) id.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only this action id (within its workflow).
    #[arg(long)]
    pub action: Option<String>,
    /// Only this workspace.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Only this error class (permanent, exhausted, template, config, blocked).
    #[arg(long)]
    pub class: Option<String>,
    /// Only records whose reason contains this text (case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only records dead-lettered at or after this time: RFC 3339 (2024-05-01T12:00:00Z) or a
    /// duration meaning that long ago (2h, 30m, 3d).
    #[arg(long, value_parser = parse_when)]
    pub since: Option<DateTime<Utc>>,
    /// Only records dead-lettered at or before this time (same forms as --since).
    #[arg(long, value_parser = parse_when)]
    pub until: Option<DateTime<Utc>>,
    /// Only the record with this message id (an action id). Not a command-line flag: the
    /// console's per-record replay and purge select by it.
    #[arg(skip)]
    pub id: Option<String>,
}

impl Filter {
    /// Whether a record passes every given filter. A time filter excludes records whose
    /// dead-letter time is unknown.
    pub fn matches(&self, record: &Record) -> bool {
        let exact = |wanted: &Option<String>, got: Option<String>| match wanted {
            Some(wanted) => got.as_deref() == Some(wanted.as_str()),
            None => true,
        };
        if self.id.as_deref().is_some_and(|id| record.id() != Some(id)) {
            return false;
        }
        if !exact(&self.connector, record.connector())
            || !exact(&self.workflow, record.workflow())
            || !exact(&self.action, record.action())
            || !exact(&self.workspace, record.workspace())
            || !exact(&self.class, record.header(H_CLASS).map(str::to_owned))
        {
            return false;
        }
        if let Some(wanted) = &self.reason
            && !record
                .reason()
                .to_lowercase()
                .contains(&wanted.to_lowercase())
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(dead_at) = record.dead_at() else {
                return false;
            };
            if self.since.is_some_and(|since| dead_at < since)
                || self.until.is_some_and(|until| dead_at > until)
            {
                return false;
            }
        }
        true
    }

    /// Whether no filter was given.
    pub(crate) fn is_empty(&self) -> bool {
        self.connector.is_none()
            && self.workflow.is_none()
            && self.action.is_none()
            && self.workspace.is_none()
            && self.class.is_none()
            && self.reason.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.id.is_none()
    }

    /// Checks what clap cannot: the time window is not empty. Done before connecting, so that a
    /// bad argument is a user error whatever state the broker is in.
    pub(crate) fn check(&self) -> Result<(), DlqError> {
        match (self.since, self.until) {
            (Some(since), Some(until)) if since > until => Err(DlqError::Usage(format!(
                "--since {} is after --until {}",
                since.to_rfc3339_opts(SecondsFormat::Secs, true),
                until.to_rfc3339_opts(SecondsFormat::Secs, true)
            ))),
            _ => Ok(()),
        }
    }
}

/// `--since` / `--until`: RFC 3339, or a duration meaning "that long ago".
pub(crate) fn parse_when(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => chrono::Duration::from_std(ago)
            .ok()
            .and_then(|ago| Utc::now().checked_sub_signed(ago))
            .ok_or_else(|| format!("{text} ago is out of range")),
        Err(_) => Err(format!(
            "expected an RFC 3339 time (2024-05-01T12:00:00Z) or a duration meaning that long ago (2h, 30m, 3d), got {text:?}"
        )),
    }
}

/// `--max-hold`: a positive duration.
pub(super) fn parse_hold(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(hold) if !hold.is_zero() => Ok(hold),
        _ => Err(format!(
            "expected a positive duration (10m, 90s), got {text:?}"
        )),
    }
}

/// `--rate`: a positive number of records per second.
pub(crate) fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "expected a positive number of records per second, got {text:?}"
        )),
    }
}
