//! switchyard carries engagement events from RabbitMQ to the systems where marketing and sales
//! teams work. The modules follow the pipeline (SPEC §1; docs/ARCHITECTURE.md maps it):
//!
//! - [`event`]: the envelope upstream publishes; validation and alias normalisation.
//! - [`config`], [`secrets`], [`workflow`], [`template`]: what operators write, compiled once
//!   ([`intern`]: one compiled value per distinct text).
//! - [`broker`]: topology, the confirmed publisher, action messages and their headers.
//! - [`delivery`]: the pure decisions: the plan (event → action messages), the decision
//!   (outcome → success, retry tier or dead letter), the dead-letter record format.
//! - [`router`]: drives the plan: event → one confirmed message per matching action → ack.
//! - [`worker`]: drives the decision: action → connector call → ack, delayed retry, or
//!   dead-letter.
//! - [`connectors`]: one folder per external system, its classifier included; [`connectors::kind`]
//!   is the one list of connectors; [`outcome`] holds the shared types and the generic table.
//! - [`app`]: the service, its broker supervisor and graceful shutdown; it hands the stages
//!   [`shared::Shared`]. [`server`] and [`telemetry`]: health, metrics, logs ([`logwriter`]: a
//!   log call never panics or blocks).
//! - [`history`]: run history in PostgreSQL (SPEC §9), a room beside the pipeline: the router
//!   and the worker hand it records without waiting; [`runs`] is its command.
//! - [`console`]: the operator console (SPEC §11), another room beside the pipeline: runs, dead
//!   letters and workflows in a browser, over the same code as `runs`, `dlq` and `test`.
//! - [`commands`]: the commands of SPEC §4 besides `run`: `validate`, `test`, `publish`,
//!   `topology`, and `dlq/` (the dead-letter commands).

pub mod app;
pub mod broker;
pub mod commands;
pub mod config;
pub mod connectors;
pub mod console;
pub mod control;
pub mod delivery;
pub mod destinations;
pub mod event;
pub mod faults;
pub mod history;
pub mod intern;
pub mod logwriter;
pub mod net;
pub mod outcome;
pub mod reload;
pub mod router;
pub mod runs;
pub mod schema;
pub mod secrets;
pub mod server;
pub mod shared;
pub mod telemetry;
pub mod template;
pub mod trace;
pub mod worker;
pub mod workflow;

pub use app::{Role, Service};
pub use config::Config;

/// The configuration file used when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "config/switchyard.yaml";
