//! `/`: how delivery is going. Attempts and rates come from this process's metrics (so they mean
//! something under `switchyard run`); queue depths and the dead-letter count are read from the
//! broker at each view (passive declares), so they are right in `switchyard console` too.
//!
//! The page is a list of sections, the last one the destinations that are not healthy (SPEC §10,
//! from [`super::destinations`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use maud::{Markup, html};
use tokio_util::sync::CancellationToken;

use super::User;
use super::{Console, layout};
use crate::broker;
use crate::connectors::ConnectorKind;
use crate::telemetry::{AttemptLabel, ConnectorLabel, Metrics};

/// How often the delivery counters are sampled for the rates.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The window the delivery counts cover.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// How long reading every queue depth may take.
const DEPTHS_TIMEOUT: Duration = Duration::from_secs(3);

/// Attempt counters of this process, summed over the connectors.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    success: u64,
    retry: u64,
    dead: u64,
    skipped: u64,
}

impl Totals {
    fn read(metrics: &Metrics) -> Totals {
        let count = |outcome: &'static str| {
            ConnectorKind::names()
                .iter()
                .map(|&connector| {
                    metrics
                        .action_attempts
                        .get_or_create(&AttemptLabel { connector, outcome })
                        .get()
                })
                .sum()
        };
        Totals {
            success: count("success"),
            retry: count("retry"),
            dead: count("dead"),
            skipped: count("skipped"),
        }
    }
}

/// Samples of the counters over the last minute or so.
#[derive(Default)]
pub struct Rates {
    samples: Mutex<VecDeque<(Instant, Totals)>>,
}

impl Rates {
    fn record(&self, totals: Totals) {
        let now = Instant::now();
        if let Ok(mut samples) = self.samples.lock() {
            samples.push_back((now, totals));
            while samples
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW + SAMPLE_EVERY)
            {
                samples.pop_front();
            }
        }
    }

    /// Counts over about the last minute: (successes, failed attempts) since the newest sample
    /// at least [`RATE_WINDOW`] old (or the oldest, in the first minute); `None` before any.
    fn last_minute(&self, now: Totals) -> Option<(u64, u64)> {
        let samples = self.samples.lock().ok()?;
        let (_, then) = samples
            .iter()
            .rev()
            .find(|(at, _)| at.elapsed() >= RATE_WINDOW)
            .or_else(|| samples.front())?;
        Some((
            now.success.saturating_sub(then.success),
            (now.retry + now.dead).saturating_sub(then.retry + then.dead),
        ))
    }
}

/// Samples the counters every [`SAMPLE_EVERY`] until `stop`.
pub(super) async fn sample(console: Arc<Console>, stop: CancellationToken) {
    loop {
        console.rates.record(Totals::read(&console.app.metrics));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new().route("/", get(overview))
}

/// Ready messages per queue, in topology order, or why they could not be read.
async fn depths(console: &Console) -> Result<Vec<(String, u32)>, String> {
    let connection = console.broker().await.map_err(|e| e.message)?;
    let read = async {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("opening a channel: {e}"))?;
        let mut out = Vec::new();
        for queue in console.app.topology.all_queues() {
            let options = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match channel
                .queue_declare(queue.as_str().into(), options, FieldTable::default())
                .await
            {
                Ok(q) => out.push((queue, q.message_count())),
                // The broker closes a channel whose passive declare fails.
                Err(e) => {
                    return Err(format!(
                        "{queue}: {e} (has the topology been declared? `switchyard topology`)"
                    ));
                }
            }
        }
        broker::close_channel(&channel, 200, "done").await;
        Ok(out)
    };
    tokio::time::timeout(DEPTHS_TIMEOUT, read)
        .await
        .map_err(|_| "the broker did not answer in time".to_owned())?
}

async fn overview(State(console): State<Arc<Console>>, user: User) -> Markup {
    let sections = [
        delivery(&console),
        queues(&console).await,
        unhealthy(&console, &user).await,
    ];
    layout::page(
        "Overview",
        "/",
        &user,
        html! {
            @for section in &sections { (section) }
        },
    )
}

fn delivery(console: &Console) -> Markup {
    let metrics = &console.app.metrics;
    let totals = Totals::read(metrics);
    let in_flight: i64 = ConnectorKind::names()
        .iter()
        .map(|&connector| {
            metrics
                .actions_in_flight
                .get_or_create(&ConnectorLabel { connector })
                .get()
        })
        .sum();
    let rates = console.rates.last_minute(totals);
    let connected = metrics.broker_connected.get() == 1;
    html! {
        h2 { "Delivery" }
        @if !console.pipeline {
            p.hint {
                "This process serves the console only (switchyard console): delivery figures belong to the "
                "processes that run the pipeline; see their /metrics or your dashboards. Queue depths below are live."
            }
        } @else {
            div.cards {
                div.card {
                    div.muted { "Delivered, last minute" }
                    div.figure { (rates.map_or("…".to_owned(), |(ok, _)| ok.to_string())) }
                }
                div.card {
                    div.muted { "Failed attempts, last minute" }
                    div.figure.error[rates.is_some_and(|(_, bad)| bad > 0)] {
                        (rates.map_or("…".to_owned(), |(_, bad)| bad.to_string()))
                    }
                }
                div.card { div.muted { "In flight" } div.figure { (in_flight) } }
                div.card {
                    div.muted { "Broker" }
                    @if connected { div.figure.ok { "connected" } } @else { div.figure.error { "disconnected" } }
                }
            }
            p.hint { "Since this process started: " (totals.success) " delivered, " (totals.retry)
                " retried, " (totals.dead) " dead-lettered, " (totals.skipped) " skipped." }
        }
    }
}

async fn queues(console: &Console) -> Markup {
    let topology = &console.app.topology;
    match depths(console).await {
        Ok(depths) => {
            let dead = depths
                .iter()
                .find(|(q, _)| *q == topology.dead_letter)
                .map_or(0, |(_, n)| *n);
            let rejected = depths
                .iter()
                .find(|(q, _)| *q == topology.rejected)
                .map_or(0, |(_, n)| *n);
            html! {
                h2 { "Failures waiting for a person" }
                div.cards {
                    div.card {
                        div.muted { "Dead letters" }
                        div.figure.error[dead > 0] { a href="/dead-letters" { (dead) } }
                    }
                    div.card {
                        div.muted { "Rejected events" }
                        div.figure.error[rejected > 0] { (rejected) }
                        div.hint { (topology.rejected) }
                    }
                }
                h2 { "Queue depths (ready messages)" }
                table {
                    thead { tr { th { "Queue" } th.num { "Ready" } } }
                    tbody {
                        @for (queue, count) in &depths {
                            tr { td { (queue) } td.num { (count) } }
                        }
                    }
                }
            }
        }
        Err(problem) => html! {
            h2 { "Queues" }
            p.error { "Queue depths could not be read: " (problem) }
        },
    }
}

/// The destinations that are not healthy, worst first.
async fn unhealthy(console: &Console, user: &User) -> Markup {
    match super::destinations::statuses(console).await {
        Ok(statuses) => {
            let unwell: Vec<_> = statuses
                .into_iter()
                .filter(|s| s.state != crate::destinations::State::Healthy)
                .collect();
            html! {
                h2 { "Destinations not healthy" }
                @if unwell.is_empty() {
                    p.ok { "Every destination the processes report is healthy." }
                } @else {
                    (super::destinations::table(user, &unwell, console, false))
                    p { a href="/destinations" { "Pause or resume them" } }
                }
            }
        }
        Err(problem) => html! {
            h2 { "Destinations" }
            p.error { "The destinations could not be read: " (problem.message) }
        },
    }
}
