//! `/runs` (search by every filter of SPEC §9, newest first, a page at a time by keyset) and
//! `/runs/<action id>` (every attempt, oldest first, with the request it made and the answer).
//! The queries are `history::query`'s, shared with `switchyard runs`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::User;
use super::input::{self, field, text};
use super::layout::{self, or_dash, query_string, segment, when};
use super::{Console, PageError};
use crate::connectors::ConnectorKind;
use crate::history::query::{self, Cursor, RunFilter, RunSummary};

/// Runs per page.
pub const PAGE: usize = 50;

/// The outcomes a filter may name.
const OUTCOMES: [&str; 4] = ["success", "retry", "dead", "skipped"];

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/runs", get(list))
        .route("/runs/{action_id}", get(show))
}

/// The filter a query asks for; a value that cannot be one is a message for the page.
pub fn parse_filter(pairs: &[(String, String)]) -> Result<RunFilter, String> {
    let filter = RunFilter {
        event: text(pairs, "event"),
        contact: text(pairs, "contact"),
        workspace: text(pairs, "workspace"),
        workflow: text(pairs, "workflow"),
        connector: input::connector(pairs)?,
        destination: text(pairs, "destination"),
        outcome: text(pairs, "outcome"),
        since: input::time(pairs, "since")?,
        until: input::time(pairs, "until")?,
    };
    if let Some(outcome) = &filter.outcome
        && !OUTCOMES.contains(&outcome.as_str())
    {
        return Err(format!(
            "outcome: {outcome:?} is not one of {}",
            OUTCOMES.join(", ")
        ));
    }
    if let (Some(since), Some(until)) = (filter.since, filter.until)
        && since > until
    {
        return Err(format!(
            "since {} is after until {}",
            when_text(since),
            when_text(until)
        ));
    }
    Ok(filter)
}

fn when_text(time: DateTime<Utc>) -> String {
    layout::when(time) + " UTC"
}

/// The page's cursor (`at` and `after`), if it continues a list.
fn parse_cursor(pairs: &[(String, String)]) -> Result<Option<Cursor>, String> {
    match (field(pairs, "at"), field(pairs, "after")) {
        (Some(at), Some(after)) if !at.is_empty() && !after.is_empty() => {
            let started_at = DateTime::parse_from_rfc3339(at)
                .map_err(|_| format!("at: {at:?} is not an RFC 3339 time"))?
                .with_timezone(&Utc);
            Ok(Some(Cursor {
                started_at,
                action_id: after.to_owned(),
            }))
        }
        _ => Ok(None),
    }
}

/// The filter as query pairs (for the next page's link).
fn filter_pairs(raw: &[(String, String)]) -> Vec<(&'static str, String)> {
    let keep = |name: &'static str| (name, field(raw, name).unwrap_or_default().to_owned());
    vec![
        keep("event"),
        keep("contact"),
        keep("workspace"),
        keep("workflow"),
        keep("connector"),
        keep("destination"),
        keep("outcome"),
        keep("since"),
        keep("until"),
    ]
}

fn search_form(raw: &[(String, String)]) -> Markup {
    let value = |name: &str| field(raw, name).unwrap_or_default().to_owned();
    let text_input = |name: &str, label: &str, hint: &str| {
        html! {
            label { (label) input type="text" name=(name) value=(value(name)) placeholder=(hint); }
        }
    };
    html! {
        form.filters method="get" action="/runs" {
            (text_input("contact", "Contact", "email or contact id"))
            (text_input("event", "Event id", "evt_…"))
            (text_input("workspace", "Workspace", "ws_…"))
            (text_input("workflow", "Workflow or webhook", ""))
            label { "Connector"
                select name="connector" {
                    option value="" { "any" }
                    @for name in ConnectorKind::names() {
                        option value=(name) selected[value("connector") == name] { (name) }
                    }
                }
            }
            (text_input("destination", "Destination", "connection, webhook or host"))
            label { "Outcome"
                select name="outcome" {
                    option value="" { "any" }
                    @for name in OUTCOMES {
                        option value=(name) selected[value("outcome") == name] { (name) }
                    }
                }
            }
            (text_input("since", "Since", "2h, 3d or RFC 3339"))
            (text_input("until", "Until", "RFC 3339 or 10m"))
            button type="submit" { "Search" }
            a href="/runs" { "Clear" }
        }
    }
}

async fn list(
    State(console): State<Arc<Console>>,
    user: User,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Markup, PageError> {
    let page = |problem: Option<&str>, body: Markup| {
        layout::page(
            "Runs",
            "/runs",
            &user,
            html! {
                (search_form(&raw))
                @if let Some(problem) = problem { p.error role="alert" { (problem) } }
                (body)
            },
        )
    };
    let parsed = parse_filter(&raw).and_then(|filter| Ok((filter, parse_cursor(&raw)?)));
    let (filter, cursor) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => {
            let shown = page(Some(&message), html! {});
            return Err(PageError::bad_input(message).on_page(shown));
        }
    };
    let client = match console.history().await {
        Ok(client) => client,
        Err(e) => {
            let shown = page(Some(&e.message), html! {});
            return Err(e.on_page(shown));
        }
    };
    let runs = query::list(&client, &filter, PAGE, cursor.as_ref()).await?;
    let next = (runs.len() == PAGE)
        .then(|| runs.last().map(RunSummary::cursor))
        .flatten()
        .map(|cursor| {
            let mut pairs = filter_pairs(&raw);
            pairs.push(("at", layout::rfc3339(cursor.started_at)));
            pairs.push(("after", cursor.action_id));
            format!("/runs?{}", query_string(&pairs))
        });
    Ok(page(
        None,
        html! {
            @if runs.is_empty() {
                p.muted { "No run matches." }
            } @else {
                (runs_table(&runs))
            }
            div.actions {
                @if cursor.is_some() { a href=(format!("/runs?{}", query_string(&filter_pairs(&raw)))) { "First page" } }
                @if let Some(next) = next { a href=(next) { "Next page →" } }
            }
        },
    ))
}

fn runs_table(runs: &[RunSummary]) -> Markup {
    html! {
        table {
            thead { tr {
                th { "Latest attempt (UTC)" } th { "Action" } th { "Event type" } th { "Workflow / action" }
                th { "Connector" } th { "Destination" } th { "Contact" } th.num { "Attempts" }
                th { "Outcome" } th.num { "Status" } th { "Reason" }
            } }
            tbody {
                @for run in runs {
                    tr {
                        td { (when(run.last_attempt_at)) }
                        td { a href=(format!("/runs/{}", segment(&run.action_id))) { (run.action_id) } }
                        td { (run.event_type) }
                        td { (or_dash(run.workflow.as_deref().or(run.webhook.as_deref()))) " / " (run.action) }
                        td { (run.connector) }
                        td { (or_dash(run.destination.as_deref())) }
                        td { (or_dash(run.contact_email.as_deref().or(run.contact_id.as_deref()))) }
                        td.num { (run.attempts) }
                        td class=(format!("outcome-{}", run.outcome)) { (run.outcome) }
                        td.num { (run.http_status.map(|s| s.to_string()).unwrap_or_default()) }
                        td.reason { (or_dash(run.reason.as_deref())) }
                    }
                }
            }
        }
    }
}

async fn show(
    State(console): State<Arc<Console>>,
    user: User,
    Path(action_id): Path<String>,
) -> Result<Markup, PageError> {
    let client = console.history().await?;
    let attempts = query::attempts_of_action(&client, &action_id).await?;
    let (Some(first), Some(last)) = (attempts.first(), attempts.last()) else {
        return Err(PageError::not_found(format!(
            "Run history holds no attempt of an action with id {action_id:?}. Action ids look like act_ followed by 32 hex digits; search on /runs by contact or event."
        )));
    };
    let payload = query::event_payload(&client, &first.event_id).await?;
    let payload = payload.map(|text| {
        let pretty = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|json| serde_json::to_string_pretty(&json).ok())
            .unwrap_or(text);
        console.redact(&pretty)
    });
    let title = format!("Run {action_id}");
    Ok(layout::page(
        &title,
        "/runs",
        &user,
        html! {
            h2 { "Request" }
            dl.facts {
                dt { "Event" } dd { a href=(format!("/runs?event={}", segment(&first.event_id))) { (first.event_id) } " (" (first.event_type) ")" }
                dt { "Workspace" } dd { (first.workspace) }
                @if let Some(workflow) = &last.workflow { dt { "Workflow" } dd { (workflow) } }
                @if let Some(webhook) = &last.webhook { dt { "Webhook" } dd { (webhook) } }
                dt { "Action" } dd { (last.action) " [" (last.connector) "]" }
                dt { "Destination" } dd { (or_dash(last.destination.as_deref())) }
                dt { "Contact" } dd { (or_dash(last.contact_email.as_deref())) " " (or_dash(last.contact_id.as_deref())) }
                dt { "Idempotency key" } dd { (action_id) " (Idempotency-Key / webhook-id, the same on every attempt)" }
                @if let Some(trace) = &last.trace_id { dt { "Trace id" } dd { (trace) } }
                dt { "Latest outcome" } dd class=(format!("outcome-{}", last.outcome.as_str())) { (last.outcome.as_str()) }
            }
            h2 { "Attempts (oldest first)" }
            table {
                thead { tr {
                    th.num { "#" } th { "Trigger" } th { "Started (UTC)" } th.num { "Duration" }
                    th { "Outcome" } th { "Error class" } th.num { "HTTP status" } th { "Reason" }
                } }
                tbody {
                    @for attempt in &attempts {
                        tr {
                            td.num { (attempt.attempt) }
                            td { (attempt.trigger.as_str()) }
                            td { (when(attempt.started_at)) }
                            td.num { (attempt.duration_ms) " ms" }
                            td class=(format!("outcome-{}", attempt.outcome.as_str())) { (attempt.outcome.as_str()) }
                            td { (or_dash(attempt.error_class.as_deref())) }
                            td.num { (attempt.http_status.map(|s| s.to_string()).unwrap_or_default()) }
                            td.reason { (console.redact(or_dash(attempt.reason.as_deref()))) }
                        }
                    }
                }
            }
            @for attempt in attempts.iter().filter(|a| a.response_excerpt.is_some()) {
                h2 { "Response to attempt " (attempt.attempt) }
                pre { (console.redact(attempt.response_excerpt.as_deref().unwrap_or_default())) }
            }
            h2 { "Event" }
            @match payload {
                Some(payload) => pre { (payload) },
                None => p.muted { "The event's JSON is not kept (history.store_payloads is false, or it has expired)." },
            }
        },
    ))
}
