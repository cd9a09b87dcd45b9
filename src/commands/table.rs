//! Aligned tables for the commands that print records (`dlq`, `runs`).

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};

/// Formats a time as the tables show it: UTC, to the second.
pub(crate) fn short_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Writes an aligned table: `right` marks the columns aligned right (numbers). The last column is
/// not padded.
pub(crate) fn table(out: &mut impl Write, headings: &[&str], right: &[bool], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headings.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                text.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if i < last {
                    text.push_str(&" ".repeat(pad));
                }
            }
        }
        text.truncate(text.trim_end().len());
        text
    };
    let _ = writeln!(out, "{}", line(headings.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// A value for a table cell: `-` when absent, on one line.
pub(crate) fn cell(value: Option<String>) -> String {
    match value {
        Some(v) if !v.is_empty() => v.replace(['\n', '\r', '\t'], " "),
        _ => "-".into(),
    }
}
