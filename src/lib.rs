//! switchyard carries engagement events from RabbitMQ to the systems where marketing and sales
//! teams work. The modules follow the pipeline (SPEC §1):
//!
//! - [`event`]: the envelope upstream publishes; validation and alias normalisation.
//! - [`config`], [`secrets`], [`workflow`], [`template`]: what operators write, compiled once.
//! - [`broker`]: topology, the confirmed publisher, action messages and their headers.
//! - [`router`]: event → one confirmed message per matching action → ack.
//! - [`worker`]: action → connector call → ack, delayed retry, or dead-letter.
//! - [`connectors`]: one place per external system; [`outcome`] classifies every result.
//! - [`app`]: the service, its broker supervisor and graceful shutdown; [`server`] and
//!   [`telemetry`]: health, metrics, logs.
//! - [`cli`]: the commands of SPEC §4 besides `run` and `dlq`; [`dlq`]: the dead-letter commands.

pub mod app;
pub mod broker;
pub mod cli;
pub mod config;
pub mod connectors;
pub mod dlq;
pub mod event;
pub mod net;
pub mod outcome;
pub mod router;
pub mod secrets;
pub mod server;
pub mod telemetry;
pub mod template;
pub mod worker;
pub mod workflow;

pub use app::{Role, Service};
pub use config::Config;

/// The configuration file used when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "config/switchyard.yaml";
