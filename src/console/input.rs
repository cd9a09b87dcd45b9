//! What a form or a query string sent: its fields, and the values the filters of the runs and
//! dead-letter pages share. A value that cannot be read is a message for the page, never a 500.

use chrono::{DateTime, Utc};

use crate::commands::dlq::parse_when;
use crate::connectors::ConnectorKind;

/// The first value of a field, if given.
pub fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// A field's value, trimmed; `None` when absent or blank.
pub fn text(pairs: &[(String, String)], name: &str) -> Option<String> {
    field(pairs, name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// A time field (`since`, `until`): RFC 3339, or a duration meaning that long ago.
pub fn time(pairs: &[(String, String)], name: &str) -> Result<Option<DateTime<Utc>>, String> {
    text(pairs, name)
        .map(|v| parse_when(&v).map_err(|e| format!("{name}: {e}")))
        .transpose()
}

/// The `connector` field, which must name a connector.
pub fn connector(pairs: &[(String, String)]) -> Result<Option<String>, String> {
    match text(pairs, "connector") {
        Some(name) if ConnectorKind::from_name(&name).is_none() => Err(format!(
            "connector: unknown connector {name:?} (known: {})",
            ConnectorKind::list(|_| true)
        )),
        given => Ok(given),
    }
}
