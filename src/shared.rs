//! The state the stages share: the router and the workers receive it from
//! the service that runs them ([`crate::app`]) and never import that module, so the pipeline's
//! rooms depend downwards only. It is built by `Shared::new` in `app.rs`, next to the errors a
//! start can fail with.

use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

use crate::broker::Topology;
use crate::config::Config;
use crate::connectors::Connectors;
use crate::control::Follower;
use crate::faults::Faults;
use crate::history::History;
use crate::server::Health;
use crate::telemetry::Metrics;
use crate::template::Engine;
use crate::workflow::{self, Problem};

/// State shared by every task of the process: what the stages need (configuration, names,
/// workflows, metrics, clients, readiness, fault reporting, history), built by [`crate::app`].
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// Exchange and queue names.
    pub topology: Topology,
    /// The loaded workflows, swapped whole on reload.
    pub catalog: workflow::Shared,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Outbound clients.
    pub connectors: Connectors,
    /// Template engine, kept for reloads.
    pub engine: Engine,
    /// Readiness, which `/readyz` reports.
    pub health: Arc<Health>,
    /// Where every task of the service reports a panic (which stops the service).
    pub faults: Arc<Faults>,
    /// Run history (SPEC §9); off when `history.url` is empty.
    pub history: History,
    /// Follows the operators' pauses and resumes, and publishes the destinations' status (SPEC §10).
    pub control: Arc<Follower>,
    /// The latest load of the workflow files (at start or on SIGHUP), which the console shows.
    pub last_load: ArcSwap<LoadReport>,
}

/// How the latest load of the workflow files went.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Whether the files were taken (a refused reload keeps the previous set running).
    pub taken: bool,
    /// What was found wrong: errors when refused, warnings and lints either way.
    pub problems: Vec<Problem>,
}

impl LoadReport {
    /// A load at this moment.
    pub fn now(taken: bool, problems: Vec<Problem>) -> LoadReport {
        LoadReport {
            at: Utc::now(),
            taken,
            problems,
        }
    }
}
