//! `/workflows`: what is loaded and from which file, how the latest load (start or SIGHUP) went
//! and what it found wrong, and a box to paste an event and see the requests it would make:
//! `switchyard test`'s own preview (`commands::preview`), secrets redacted, nothing sent.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Form, Router};
use maud::{Markup, html};

use super::User;
use super::input::field;
use super::layout::{self, csrf, when};
use super::{Console, PageError};
use crate::commands;
use crate::workflow::{Scope, Severity};

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new().route("/workflows", get(page).post(try_event))
}

async fn page(State(console): State<Arc<Console>>, user: User) -> Markup {
    render(&console, &user, "", None)
}

/// The page, with the paste box holding `pasted` and, when given, its preview below it.
fn render(console: &Console, user: &User, pasted: &str, preview: Option<Markup>) -> Markup {
    let catalog = console.app.catalog.load();
    let load = console.app.last_load.load();
    let limit = console.app.config.router.max_event_bytes;
    layout::page(
        "Workflows",
        "/workflows",
        user,
        html! {
            h2 { "Latest load" }
            p {
                (when(load.at)) " UTC: "
                @if load.taken {
                    span.ok { "taken" } ", " (catalog.workflows.len()) " workflow(s) and " (catalog.webhooks.len()) " webhook(s) running."
                } @else {
                    span.error { "refused" } "; the previous set keeps running."
                }
            }
            @if !load.problems.is_empty() {
                table {
                    thead { tr { th { "Level" } th { "File" } th { "Workflow" } th { "Action" } th { "Problem" } } }
                    tbody {
                        @for problem in load.problems.iter() {
                            tr {
                                td class=(if problem.severity == Severity::Warning { "warn" } else { "error" }) {
                                    (match problem.severity { Severity::Error => "error", Severity::Lint => "lint", Severity::Warning => "warning" })
                                }
                                td { (problem.file.display()) }
                                td { (problem.workflow.as_deref().unwrap_or("-")) }
                                td { (problem.action.as_deref().unwrap_or("-")) }
                                td.reason { (console.redact(&problem.message)) }
                            }
                        }
                    }
                }
            }
            h2 { "Workflows" }
            @if catalog.workflows.is_empty() { p.muted { "None loaded." } } @else {
                table {
                    thead { tr { th { "Id" } th { "Workspace" } th { "Trigger" } th { "Scope" } th { "Actions" } th { "File" } } }
                    tbody {
                        @for workflow in &catalog.workflows {
                            tr {
                                td { (workflow.id) }
                                td { (workflow.workspace) }
                                td { (workflow.types.join(", ")) @if workflow.condition.is_some() { " (with if)" } }
                                td { (match &workflow.scope {
                                    Scope::Workspace => "workspace".to_owned(),
                                    Scope::Card(card) => format!("card {card}"),
                                    Scope::Site(site) => format!("site {site}"),
                                }) }
                                td {
                                    @for action in &workflow.actions {
                                        div {
                                            (action.id) " [" (action.spec.connector()) "]"
                                            @if let Some(needs) = action.needs { " after " (workflow.actions[needs].id) }
                                        }
                                    }
                                }
                                td { (workflow.file.display()) }
                            }
                        }
                    }
                }
            }
            h2 { "Webhooks" }
            @if catalog.webhooks.is_empty() { p.muted { "None loaded." } } @else {
                table {
                    thead { tr { th { "Id" } th { "Workspace" } th { "Event types" } th { "Format" } th { "File" } } }
                    tbody {
                        @for webhook in &catalog.webhooks {
                            tr {
                                td { (webhook.id) }
                                td { (webhook.workspace) }
                                td { (webhook.patterns.join(", ")) }
                                td { (if webhook.legacy { "legacy" } else { "standard" }) }
                                td { (webhook.file.display()) }
                            }
                        }
                    }
                }
            }
            h2 #try { "Try an event" }
            p.hint { "Paste an event as upstream would publish it (at most " (limit) " bytes, router.max_event_bytes): the page shows what would match and the exact requests, as "
                code { "switchyard test --event" } " does, from the workflow files as they are on disk now. Secrets are shown as [redacted]. Nothing is sent." }
            form method="post" action="/workflows#try" {
                (csrf(user))
                textarea name="event" required spellcheck="false" { (pasted) }
                div.actions { button type="submit" { "Show the requests" } }
            }
            @if let Some(preview) = preview { (preview) }
        },
    )
}

async fn try_event(
    State(console): State<Arc<Console>>,
    user: User,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Markup, PageError> {
    // A dry run changes nothing: viewers may, but the form still carries its CSRF token.
    user.check_post(&form, false)?;
    let pasted = field(&form, "event").unwrap_or_default();
    let limit = console.app.config.router.max_event_bytes;
    let refusal = if pasted.len() > limit {
        Some(format!(
            "The pasted event is {} bytes; the limit is {limit} bytes (router.max_event_bytes), as for the router. Nothing was previewed.",
            pasted.len()
        ))
    } else if pasted.trim().is_empty() {
        Some("Paste an event (JSON) first.".to_owned())
    } else {
        None
    };
    if let Some(message) = refusal {
        let shown = render(
            &console,
            &user,
            "",
            Some(html! { p.error role="alert" { (message) } }),
        );
        return Err(PageError::bad_input(message).on_page(shown));
    }
    let mut out = Vec::new();
    let previewed = commands::preview(&console.app.config, pasted.as_bytes(), &mut out);
    let text = console.redact(&String::from_utf8_lossy(&out));
    let preview = html! {
        h2 { "What it would do" }
        @if previewed.is_err() { p.error role="alert" { "This event cannot be previewed:" } }
        pre { (text) }
    };
    let shown = render(&console, &user, pasted, Some(preview));
    match previewed {
        Ok(()) => Ok(shown),
        Err(commands::Unpreviewable) => Err(PageError::bad_input(text).on_page(shown)),
    }
}
