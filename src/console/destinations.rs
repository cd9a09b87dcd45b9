//! `/destinations` (SPEC §10, §11): every destination the running processes report, with its
//! state, rates, held actions and last error; operators pause and resume them here as they would
//! with `switchyard destinations pause|resume` (the same records on the same stream, so every
//! running process applies them within seconds). The overview's "not healthy" section reads the
//! same list.

use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use maud::{Markup, html};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::User;
use super::input::field;
use super::layout::{self, csrf};
use super::{Console, PageError};
use crate::commands::destinations::check_id;
use crate::control::{self, Record, Streams};
use crate::destinations::{Pause, State as DestinationState, Status};

/// The longest pause reason kept.
const MAX_REASON: usize = 500;

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/destinations", get(list))
        .route("/destinations/pause", post(pause))
        .route("/destinations/resume", post(resume))
}

/// How often the console reads the destinations from the streams.
const REFRESH: Duration = Duration::from_secs(2);

/// The destinations read from the streams, or why they could not be.
type Read = Result<Vec<Status>, String>;

/// The destinations as last read.
#[derive(Default)]
pub struct Latest {
    /// What was read (or why it could not be); `None` before the first read.
    read: tokio::sync::RwLock<Option<Read>>,
}

/// Reads every destination from the streams (slow: a stream is read to its quiet end).
async fn read(console: &Console) -> Read {
    let connection = console.broker().await.map_err(|e| e.message)?;
    control::list(&connection, &Streams::of(&console.app.config))
        .await
        .map_err(|e| format!("the destinations streams: {e}"))
}

/// Keeps [`Console::destinations`] fresh until `stop`.
pub(super) async fn follow(console: Arc<Console>, stop: CancellationToken) {
    loop {
        let read = read(&console).await;
        *console.destinations.read.write().await = Some(read);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}

/// Every destination, merged over the processes, worst first: as last read (at most a few
/// seconds old), or read now if never read yet.
pub(super) async fn statuses(console: &Console) -> Result<Vec<Status>, PageError> {
    let latest = console.destinations.read.read().await.clone();
    let read = match latest {
        Some(read) => read,
        None => read(console).await,
    };
    read.map_err(PageError::unavailable)
}

/// The CSS class of a state.
fn class(state: DestinationState) -> &'static str {
    match state {
        DestinationState::Healthy => "ok",
        DestinationState::Failing => "warn",
        _ => "error",
    }
}

/// A table of destinations; with `actions`, an operator's pause or resume button on each row.
pub(super) fn table(user: &User, statuses: &[Status], console: &Console, actions: bool) -> Markup {
    html! {
        table {
            thead { tr {
                th { "Destination" } th { "Kind" } th { "State" } th.num { "Calls/s" }
                th.num { "Errors" } th.num { "In flight" } th.num { "Held" } th { "Last error / pause" }
                @if actions && user.is_operator() { th { "" } }
            } }
            tbody {
                @for s in statuses {
                    tr {
                        td { code { (s.id) } }
                        td { (s.kind.map_or("-", |k| k.as_str())) }
                        td { span class=(class(s.state)) { (s.state.as_str()) } }
                        td.num { (format!("{:.1}", s.calls_per_s)) }
                        td.num { (s.error_ratio.map_or("-".to_owned(), |r| format!("{:.0}%", r * 100.0))) }
                        td.num { (s.in_flight) }
                        td.num { (s.held) }
                        td {
                            @if let Some(pause) = &s.pause {
                                "paused by " (pause.by) " at " (pause.at) ": " (pause.reason)
                            } @else {
                                (console.redact(s.last_error.as_deref().unwrap_or("")))
                            }
                        }
                        @if actions && user.is_operator() {
                            td { (row_action(user, s)) }
                        }
                    }
                }
            }
        }
    }
}

fn row_action(user: &User, status: &Status) -> Markup {
    html! {
        @if matches!(status.state, DestinationState::Paused | DestinationState::Quarantined) {
            form.inline method="post" action="/destinations/resume" {
                (csrf(user))
                input type="hidden" name="destination" value=(status.id);
                button type="submit" { "Resume" }
            }
        } @else {
            form.inline method="post" action="/destinations/pause" {
                (csrf(user))
                input type="hidden" name="destination" value=(status.id);
                input type="text" name="reason" placeholder="reason" maxlength=(MAX_REASON) required;
                " "
                button.danger type="submit" { "Pause" }
            }
        }
    }
}

async fn list(State(console): State<Arc<Console>>, user: User) -> Result<Markup, PageError> {
    let statuses = statuses(&console).await?;
    Ok(layout::page(
        "Destinations",
        "/destinations",
        &user,
        html! {
            p.hint {
                "Where actions' calls go: connections, webhooks and http hosts (host:port), as the running "
                "processes reported them in the last 15 s, and every pause. An open, paused or quarantined "
                "destination's actions wait on the broker, using no attempt; resuming releases them."
            }
            @if statuses.is_empty() {
                p.muted { "No destination: no running process reported one in the last 15 s, and none is paused." }
            } @else {
                (table(&user, &statuses, &console, true))
            }
            @if user.is_operator() {
                h2 { "Pause a destination by its id" }
                form method="post" action="/destinations/pause" {
                    (csrf(&user))
                    label { "Destination " input type="text" name="destination" placeholder="crm-hooks, api.example.com:8443" required; }
                    " "
                    label { "Reason " input type="text" name="reason" maxlength=(MAX_REASON) required; }
                    " "
                    button.danger type="submit" { "Pause" }
                }
            }
        },
    ))
}

/// The destination of a pause or resume form, once the POST itself is checked (CSRF, operator).
fn destination_of(user: &User, form: &[(String, String)]) -> Result<String, PageError> {
    user.check_post(form, true)?;
    let destination = field(form, "destination").unwrap_or_default().trim();
    check_id(destination).map_err(PageError::bad_input)?;
    Ok(destination.to_owned())
}

async fn write(console: &Console, record: &Record) -> Result<(), PageError> {
    let connection = console.broker().await?;
    control::write(&connection, &Streams::of(&console.app.config), record)
        .await
        .map_err(|e| PageError::unavailable(format!("{e}; nothing was changed")))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn pause(
    State(console): State<Arc<Console>>,
    user: User,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Markup, PageError> {
    let destination = destination_of(&user, &form)?;
    let reason = field(&form, "reason").unwrap_or_default().trim();
    if reason.is_empty() || reason.len() > MAX_REASON {
        return Err(PageError::bad_input(format!(
            "Give a reason of 1 to {MAX_REASON} characters (the other operators and every process's log show it). Nothing was paused."
        )));
    }
    let record = Record::Pause {
        destination: destination.clone(),
        pause: Pause {
            reason: reason.to_owned(),
            by: user.name.clone(),
            at: now(),
        },
    };
    write(&console, &record).await?;
    info!(user = %user.name, role = user.role.as_str(), destination = %destination, reason, "console: destination paused");
    let message = format!(
        "Paused {destination}. Every running process holds its actions on the broker within seconds, until it is resumed."
    );
    Ok(done(&user, &message))
}

async fn resume(
    State(console): State<Arc<Console>>,
    user: User,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Markup, PageError> {
    let destination = destination_of(&user, &form)?;
    let record = Record::Resume {
        destination: destination.clone(),
        by: user.name.clone(),
        at: now(),
    };
    write(&console, &record).await?;
    info!(user = %user.name, role = user.role.as_str(), destination = %destination, "console: destination resumed");
    Ok(done(
        &user,
        &format!(
            "Resumed {destination}. Its held actions flow again as their holds end (within about 30 s)."
        ),
    ))
}

fn done(user: &User, message: &str) -> Markup {
    layout::page(
        "Destinations",
        "/destinations",
        user,
        html! {
            p.ok { (message) }
            p { a href="/destinations" { "Back to the destinations" } }
        },
    )
}
