//! `/dead-letters`: the dead-letter queue with the filters of SPEC §4, one record in full, and
//! the repairs: replay (a dry-run preview first, then a confirmed POST), export (a download of
//! JSON lines; the records stay), purge (the count typed to confirm). Every read and change is a
//! pass of `commands::dlq`, the code `switchyard dlq` runs, one pass at a time.

use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, html};
use tracing::info;

use super::User;
use super::input::{self, field, text};
use super::layout::{self, csrf, or_dash, query_string, segment, when};
use super::{Console, PageError};
use crate::commands::dlq::{
    Filter, ReplayOptions, ReplayTotals, Replayed, collect, export_copy, find, purge_records,
    replay_records,
};
use crate::connectors::ConnectorKind;

/// Records listed when no limit is asked for.
const DEFAULT_LIMIT: usize = 100;
/// The most records one list shows.
const MAX_LIMIT: usize = 1000;

/// The filter fields, in form order: (name, label, hint).
const FIELDS: [(&str, &str, &str); 9] = [
    ("connector", "Connector", ""),
    ("workflow", "Workflow or webhook", ""),
    ("action", "Action", "id within the workflow"),
    ("workspace", "Workspace", "ws_…"),
    ("class", "Error class", "permanent, exhausted, …"),
    ("reason", "Reason contains", ""),
    ("since", "Since", "2h, 3d or RFC 3339"),
    ("until", "Until", "RFC 3339 or 10m"),
    ("id", "Record id", "act_…"),
];

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/dead-letters", get(list))
        .route("/dead-letters/replay", get(replay_preview).post(replay))
        .route("/dead-letters/export", axum::routing::post(export))
        .route("/dead-letters/purge", get(purge_confirm).post(purge))
        .route("/dead-letters/{id}", get(show))
}

/// The filter the fields ask for; a value that cannot be one is a message for the page.
pub fn parse_filter(pairs: &[(String, String)]) -> Result<Filter, String> {
    let filter = Filter {
        connector: input::connector(pairs)?,
        workflow: text(pairs, "workflow"),
        action: text(pairs, "action"),
        workspace: text(pairs, "workspace"),
        class: text(pairs, "class"),
        reason: text(pairs, "reason"),
        since: input::time(pairs, "since")?,
        until: input::time(pairs, "until")?,
        id: text(pairs, "id"),
    };
    filter.check().map_err(|e| e.to_string())?;
    Ok(filter)
}

/// `limit`: how many records at most (a positive number up to [`MAX_LIMIT`]).
fn parse_limit(pairs: &[(String, String)]) -> Result<usize, String> {
    match field(pairs, "limit")
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(format!(
                "limit: expected a number from 1 to {MAX_LIMIT}, got {text:?}"
            )),
        },
    }
}

/// The filter fields as they were given (for links and hidden fields).
fn given(pairs: &[(String, String)]) -> Vec<(&'static str, String)> {
    FIELDS
        .iter()
        .map(|(name, _, _)| {
            (
                *name,
                field(pairs, name).unwrap_or_default().trim().to_owned(),
            )
        })
        .filter(|(_, value)| !value.is_empty())
        .collect()
}

/// The given filter as hidden fields of a form.
fn hidden(pairs: &[(String, String)]) -> Markup {
    html! {
        @for (name, value) in given(pairs) {
            input type="hidden" name=(name) value=(value);
        }
    }
}

/// A one-line description of the filter, for the confirmation pages and the log.
fn describe(pairs: &[(String, String)]) -> String {
    let given = given(pairs);
    if given.is_empty() {
        return "every record".to_owned();
    }
    given
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn filter_form(pairs: &[(String, String)]) -> Markup {
    let value = |name: &str| field(pairs, name).unwrap_or_default().to_owned();
    html! {
        form.filters method="get" action="/dead-letters" {
            @for (name, label, hint) in FIELDS {
                @if name == "connector" {
                    label { (label)
                        select name="connector" {
                            option value="" { "any" }
                            @for connector in ConnectorKind::names() {
                                option value=(connector) selected[value("connector") == connector] { (connector) }
                            }
                        }
                    }
                } @else {
                    label { (label) input type="text" name=(name) value=(value(name)) placeholder=(hint); }
                }
            }
            label { "Limit" input type="number" name="limit" min="1" max=(MAX_LIMIT) value=(value("limit")) placeholder=(DEFAULT_LIMIT); }
            button type="submit" { "Filter" }
            a href="/dead-letters" { "Clear" }
        }
    }
}

/// The page of a bad filter: the form, with the message.
fn bad_filter(user: &User, pairs: &[(String, String)], message: String) -> PageError {
    let shown = layout::page(
        "Dead letters",
        "/dead-letters",
        user,
        html! {
            (filter_form(pairs))
            p.error role="alert" { (message) }
        },
    );
    PageError::bad_input(message).on_page(shown)
}

async fn list(
    State(console): State<Arc<Console>>,
    user: User,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Markup, PageError> {
    let checked = parse_filter(&pairs).and_then(|f| Ok((f, parse_limit(&pairs)?)));
    let (filter, limit) = checked.map_err(|message| bad_filter(&user, &pairs, message))?;
    let connection = console.broker().await?;
    let listing = {
        let _one_pass = console.dlq.lock().await;
        collect(&connection, &console.app.topology, &filter, Some(limit)).await?
    };
    let query = query_string(&given(&pairs));
    Ok(layout::page(
        "Dead letters",
        "/dead-letters",
        &user,
        html! {
            (filter_form(&pairs))
            p {
                (listing.matched) " of the " (listing.read) " record(s) in " (console.app.topology.dead_letter)
                " match; " (listing.rows.len()) " shown, oldest first."
            }
            @if listing.matched > 0 {
                div.actions {
                    a href=(format!("/dead-letters/replay?{query}")) { "Replay these… (dry run first)" }
                    @if user.is_operator() {
                        form.inline method="post" action="/dead-letters/export" {
                            (csrf(&user)) (hidden(&pairs))
                            button type="submit" { "Export as JSON lines" }
                        }
                    }
                    a href=(format!("/dead-letters/purge?{query}")) { "Purge these…" }
                }
            }
            @if !listing.rows.is_empty() {
                table {
                    thead { tr {
                        th { "Id" } th { "Dead at (UTC)" } th { "Connector" } th { "Workflow / action" }
                        th { "Class" } th.num { "Status" } th { "Reason" }
                    } }
                    tbody {
                        @for row in &listing.rows {
                            tr {
                                td {
                                    @match &row.id {
                                        Some(id) => a href=(format!("/dead-letters/{}", segment(id))) { (id) },
                                        None => "-",
                                    }
                                }
                                td { (row.dead_at.map(when).unwrap_or_else(|| "-".into())) }
                                td { (or_dash(row.connector.as_deref())) }
                                td { (or_dash(row.source().as_deref())) }
                                td { (or_dash(row.class.as_deref())) }
                                td.num { (or_dash(row.status.as_deref())) }
                                td.reason { (console.redact(&row.reason)) }
                            }
                        }
                    }
                }
            }
        },
    ))
}

async fn show(
    State(console): State<Arc<Console>>,
    user: User,
    Path(id): Path<String>,
) -> Result<Markup, PageError> {
    let connection = console.broker().await?;
    let found = {
        let _one_pass = console.dlq.lock().await;
        find(&connection, &console.app.topology, &id).await?
    };
    if found.is_empty() {
        return Err(PageError::not_found(format!(
            "No record in {} has the action id or event id {id:?}. It may have been replayed or purged already.",
            console.app.topology.dead_letter
        )));
    }
    let query = query_string(&[("id", id.clone())]);
    Ok(layout::page(
        &format!("Dead letter {id}"),
        "/dead-letters",
        &user,
        html! {
            div.actions {
                a href=(format!("/dead-letters/replay?{query}")) { "Replay… (dry run first)" }
                a href=(format!("/dead-letters/purge?{query}")) { "Purge…" }
                a href=(format!("/runs/{}", segment(&id))) { "Its run history" }
            }
            @for shown in &found {
                h2 { "Record " (or_dash(shown.id.as_deref())) }
                table {
                    thead { tr { th { "Header or property" } th { "Value" } } }
                    tbody {
                        @for (name, value) in shown.properties.iter().chain(&shown.headers) {
                            tr { td { (name) } td.reason { (console.redact(value)) } }
                        }
                    }
                }
                h2 { "Body" }
                pre { (console.redact(&shown.body)) }
            }
        },
    ))
}

/// One replay pass (a dry run, or at most `limit` records for real): each record's line, the
/// totals, or the error with the lines written before it.
async fn run_replay(
    console: &Console,
    filter: &Filter,
    limit: Option<usize>,
    dry_run: bool,
) -> (Vec<Replayed>, Result<ReplayTotals, PageError>) {
    let connection = match console.broker().await {
        Ok(connection) => connection,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let options = ReplayOptions {
        limit,
        rate: None,
        dry_run,
        // Without a rate a pass never waits, so it never reaches this.
        max_hold: Duration::from_secs(600),
    };
    let mut lines = Vec::new();
    let _one_pass = console.dlq.lock().await;
    let result = replay_records(
        &connection,
        &console.app.topology,
        filter,
        &options,
        &mut |line| lines.push(line),
    )
    .await
    .map_err(PageError::from);
    (lines, result)
}

async fn replay_preview(
    State(console): State<Arc<Console>>,
    user: User,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Markup, PageError> {
    let filter = parse_filter(&pairs).map_err(|message| bad_filter(&user, &pairs, message))?;
    let (lines, totals) = run_replay(&console, &filter, None, true).await;
    let totals = totals?;
    Ok(layout::page(
        "Replay dead letters: dry run",
        "/dead-letters",
        &user,
        html! {
            p { "Filter: " (describe(&pairs)) }
            p { strong { (totals.moved) } " record(s) would go back to their action queue with a fresh attempt budget (same action id, so destinations can de-duplicate). Nothing has changed yet." }
            @if totals.not_moved > 0 { p.warn { (totals.not_moved) " record(s) cannot be replayed and would stay." } }
            pre { @for line in &lines { (line) "\n" } }
            @if totals.moved == 0 {
                p.muted { "Nothing to replay." }
            } @else if user.is_operator() {
                form method="post" action="/dead-letters/replay" {
                    (csrf(&user)) (hidden(&pairs))
                    // Never more than the preview showed, even if more arrived since.
                    input type="hidden" name="expected" value=(totals.moved);
                    button type="submit" { "Replay " (totals.moved) " record(s)" }
                }
            } @else {
                p.muted { "Viewers cannot replay; ask an operator." }
            }
            p { a href=(format!("/dead-letters?{}", query_string(&given(&pairs)))) { "Back to the list" } }
        },
    ))
}

/// The positive count a confirmation form carries.
fn expected(form: &[(String, String)]) -> Result<usize, PageError> {
    field(form, "expected")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            PageError::bad_input("This confirmation lacks the count it was shown; nothing was changed. Open the preview again.")
        })
}

/// A confirmed change's form, checked: its CSRF token and the operator role, its filter, and
/// the count the preview showed (the most it may change).
fn confirmed(user: &User, form: &[(String, String)]) -> Result<(Filter, usize), PageError> {
    user.check_post(form, true)?;
    let filter = parse_filter(form).map_err(PageError::bad_input)?;
    Ok((filter, expected(form)?))
}

async fn replay(
    State(console): State<Arc<Console>>,
    user: User,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Markup, PageError> {
    let (filter, limit) = confirmed(&user, &form)?;
    let (lines, result) = run_replay(&console, &filter, Some(limit), false).await;
    let totals = match result {
        Ok(totals) => totals,
        Err(e) => {
            let moved = lines
                .iter()
                .filter(|line| matches!(line, Replayed::Moved { .. }))
                .count();
            info!(user = %user.name, role = user.role.as_str(), filter = %describe(&form), moved, error = %e.message, "console: dead-letter replay failed part-way");
            return Err(e);
        }
    };
    info!(user = %user.name, role = user.role.as_str(), filter = %describe(&form), moved = totals.moved, not_moved = totals.not_moved, "console: dead letters replayed");
    Ok(layout::page(
        "Dead letters replayed",
        "/dead-letters",
        &user,
        html! {
            p.ok { "Replayed " (totals.moved) " record(s) to " (console.app.topology.actions) " with a fresh attempt budget." }
            @if totals.beyond > 0 { p.warn { (totals.beyond) " more matching record(s) arrived after the preview and stay in the queue." } }
            @if totals.not_moved > 0 { p.warn { (totals.not_moved) " record(s) could not be replayed and stay in the queue." } }
            pre { @for line in &lines { (line) "\n" } }
            p { a href="/dead-letters" { "Back to the dead letters" } }
        },
    ))
}

async fn export(
    State(console): State<Arc<Console>>,
    user: User,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    user.check_post(&form, true)?;
    let filter = parse_filter(&form).map_err(PageError::bad_input)?;
    let connection = console.broker().await?;
    let (lines, count) = {
        let _one_pass = console.dlq.lock().await;
        export_copy(&connection, &console.app.topology, &filter, None).await?
    };
    info!(user = %user.name, role = user.role.as_str(), filter = %describe(&form), exported = count, "console: dead letters exported (a copy; they stay in the queue)");
    let name = format!(
        "dead-letters-{}.jsonl",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        lines,
    )
        .into_response())
}

async fn purge_confirm(
    State(console): State<Arc<Console>>,
    user: User,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Markup, PageError> {
    let filter = parse_filter(&pairs).map_err(|message| bad_filter(&user, &pairs, message))?;
    let connection = console.broker().await?;
    let counted = {
        let _one_pass = console.dlq.lock().await;
        purge_records(&connection, &console.app.topology, &filter, None, false).await?
    };
    Ok(layout::page(
        "Purge dead letters",
        "/dead-letters",
        &user,
        html! {
            p { "Filter: " (describe(&pairs)) }
            @if counted.matched == 0 {
                p.muted { "No record matches; nothing to purge." }
            } @else if user.is_operator() {
                p.warn { strong { (counted.matched) } " record(s) match and would be deleted for good. Export them first if you may need them." }
                form method="post" action="/dead-letters/purge" {
                    (csrf(&user)) (hidden(&pairs))
                    input type="hidden" name="expected" value=(counted.matched);
                    label { "Type " strong { (counted.matched) } " to confirm "
                        input type="text" name="confirm" autocomplete="off" required; }
                    " "
                    button.danger type="submit" { "Delete " (counted.matched) " record(s)" }
                }
            } @else {
                p { (counted.matched) " record(s) match. Viewers cannot purge; ask an operator." }
            }
            p { a href=(format!("/dead-letters?{}", query_string(&given(&pairs)))) { "Back to the list" } }
        },
    ))
}

async fn purge(
    State(console): State<Arc<Console>>,
    user: User,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Markup, PageError> {
    let (filter, limit) = confirmed(&user, &form)?;
    let typed = field(&form, "confirm").unwrap_or_default().trim();
    if typed != limit.to_string() {
        return Err(PageError::bad_input(format!(
            "To delete, type the number of records ({limit}); you typed {typed:?}. Nothing was deleted."
        )));
    }
    let connection = console.broker().await?;
    let purged = {
        let _one_pass = console.dlq.lock().await;
        purge_records(
            &connection,
            &console.app.topology,
            &filter,
            Some(limit),
            true,
        )
        .await?
    };
    info!(user = %user.name, role = user.role.as_str(), filter = %describe(&form), deleted = purged.matched, left = purged.left, "console: dead letters purged");
    Ok(layout::page(
        "Dead letters purged",
        "/dead-letters",
        &user,
        html! {
            p.ok { "Deleted " (purged.matched) " record(s) from " (console.app.topology.dead_letter) "; " (purged.left) " left." }
            p { a href="/dead-letters" { "Back to the dead letters" } }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_are_read_and_bad_ones_named() {
        let f = parse_filter(&pairs(&[
            ("connector", "http"),
            ("reason", " timeout "),
            ("since", "2h"),
        ]))
        .expect("a good filter");
        assert_eq!(f.connector.as_deref(), Some("http"));
        assert_eq!(f.reason.as_deref(), Some("timeout"));
        assert!(f.since.is_some());
        for (bad, needle) in [
            (("since", "yesterdayish"), "since"),
            (("connector", "smtp"), "unknown connector"),
        ] {
            let e = parse_filter(&pairs(&[bad])).expect_err("refused");
            assert!(e.contains(needle), "{e}");
        }
        assert!(parse_limit(&pairs(&[("limit", "0")])).is_err());
        assert_eq!(parse_limit(&pairs(&[])), Ok(DEFAULT_LIMIT));
    }
}
