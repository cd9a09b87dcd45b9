//! Logging set-up and the metrics of SPEC §7, defined once with fixed names and bounded labels.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::logwriter::{LogGuard, StderrQueue};

/// Installs the global tracing subscriber, writing through [`StderrQueue`]: a log call never
/// panics, blocks, or fails, whatever happens to stderr. Keep the guard until the process ends (it
/// flushes queued lines). `None` when a subscriber was already installed or the log thread could
/// not start (then nothing is logged, and nothing else changes).
pub fn init_logging(config: &LogConfig) -> Option<LogGuard> {
    let (queue, guard) = StderrQueue::start().ok()?;
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // The queue never returns an error, and the fmt layer must never report one itself: its
    // report is an `eprintln!`, which panics when stderr is closed.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(queue)
        .log_internal_errors(false);
    let installed = match config.format {
        // The current span (`event` or `action`) carries the trace id (SPEC §12); only it, not
        // the list of every enclosing span.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        // Colours only on a terminal: a log file or journald would keep the escape codes.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    installed.ok().map(|()| guard)
}

/// `type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The main event type name (bounded: the catalog).
    pub r#type: &'static str,
}

/// `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A rejection label (bounded).
    pub reason: &'static str,
}

/// `connector`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectorLabel {
    /// One of the five connectors.
    pub connector: &'static str,
}

/// `connector`, `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabel {
    /// One of the five connectors.
    pub connector: &'static str,
    /// `success`, `retry`, `dead` or `skipped`.
    pub outcome: &'static str,
}

/// `connector`, `error_class`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLabel {
    /// One of the five connectors.
    pub connector: &'static str,
    /// The dead-letter class.
    pub error_class: &'static str,
}

/// `queue`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// A queue name (bounded: the topology).
    pub queue: String,
}

/// `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// `version`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// The crate version.
    pub version: &'static str,
}

/// `destination`, `kind`, `state` (SPEC §10).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationStateLabel {
    /// A destination id, or `other` beyond `destinations.max_tracked`.
    pub destination: String,
    /// `connection`, `webhook` or `host`.
    pub kind: &'static str,
    /// `healthy`, `failing`, `open`, `paused` or `quarantined`.
    pub state: &'static str,
}

/// `destination` (SPEC §10).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    /// A destination id, or `other` beyond `destinations.max_tracked`.
    pub destination: String,
}

type HistogramFamily = Family<ConnectorLabel, Histogram, fn() -> Histogram>;

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// `switchyard_events_received_total{type}`.
    pub events_received: Family<TypeLabel, Counter>,
    /// `switchyard_events_rejected_total{reason}`.
    pub events_rejected: Family<ReasonLabel, Counter>,
    /// `switchyard_actions_enqueued_total{connector}`.
    pub actions_enqueued: Family<ConnectorLabel, Counter>,
    /// `switchyard_action_attempts_total{connector,outcome}`.
    pub action_attempts: Family<AttemptLabel, Counter>,
    /// `switchyard_action_duration_seconds{connector}`: one call.
    pub action_duration: HistogramFamily,
    /// `switchyard_delivery_latency_seconds{connector}`: `occurred_at` → success.
    pub delivery_latency: HistogramFamily,
    /// `switchyard_dead_lettered_total{connector,error_class}`.
    pub dead_lettered: Family<DeadLabel, Counter>,
    /// `switchyard_actions_in_flight{connector}`.
    pub actions_in_flight: Family<ConnectorLabel, Gauge>,
    /// `switchyard_queue_messages{queue}`.
    pub queue_messages: Family<QueueLabel, Gauge>,
    /// `switchyard_broker_connected`.
    pub broker_connected: Gauge,
    /// `switchyard_broker_blocked`: 1 while the broker refuses publishes (a memory or disk alarm).
    pub broker_blocked: Gauge,
    /// `switchyard_workflows_loaded`.
    pub workflows_loaded: Gauge,
    /// `switchyard_config_reloads_total{result}`.
    pub config_reloads: Family<ResultLabel, Counter>,
    /// `switchyard_breakers_open{connector}`.
    pub breakers_open: Family<ConnectorLabel, Gauge>,
    /// `switchyard_outbound_blocked_total{connector}`.
    pub outbound_blocked: Family<ConnectorLabel, Counter>,
    /// Events that matched no workflow or webhook (a log-level figure, exported for dashboards).
    pub events_unmatched: Counter,
    /// `switchyard_partial_failures_total{connector}`: items a remote rejected inside a call that
    /// succeeded as a whole (Braze's partial success). Not retried: the valid items were applied.
    pub partial_failures: Family<ConnectorLabel, Counter>,
    /// `switchyard_history_rows_written_total` (SPEC §9).
    pub history_rows_written: Counter,
    /// `switchyard_history_dropped_total`: rows lost while PostgreSQL was away (SPEC §9).
    pub history_dropped: Counter,
    /// `switchyard_history_batch_seconds`: one history batch written.
    pub history_batch_seconds: Histogram,
    /// `switchyard_destination_state{destination,kind,state}` (SPEC §10).
    pub destination_state: Family<DestinationStateLabel, Gauge>,
    /// `switchyard_held_actions{destination}` (SPEC §10): this process's count.
    pub held_actions: Family<DestinationLabel, Gauge>,
    /// `switchyard_destination_error_ratio{destination}`: failed calls / calls over the last
    /// 10 s window (the dashboard's destinations row; `other` shows the worst of the rest).
    pub destination_error_ratio: Family<DestinationLabel, Gauge<f64, AtomicU64>>,
}

fn call_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0,
        21600.0,
    ])
}

impl Metrics {
    /// Registers every metric, with the connector series pre-created so dashboards see zeros.
    pub fn new(connectors: &[&'static str]) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let m = Metrics {
            events_received: Family::default(),
            events_rejected: Family::default(),
            actions_enqueued: Family::default(),
            action_attempts: Family::default(),
            action_duration: Family::new_with_constructor(call_buckets),
            delivery_latency: Family::new_with_constructor(latency_buckets),
            dead_lettered: Family::default(),
            actions_in_flight: Family::default(),
            queue_messages: Family::default(),
            broker_connected: Gauge::default(),
            broker_blocked: Gauge::default(),
            workflows_loaded: Gauge::default(),
            config_reloads: Family::default(),
            breakers_open: Family::default(),
            outbound_blocked: Family::default(),
            events_unmatched: Counter::default(),
            partial_failures: Family::default(),
            history_rows_written: Counter::default(),
            history_dropped: Counter::default(),
            history_batch_seconds: call_buckets(),
            destination_state: Family::default(),
            held_actions: Family::default(),
            destination_error_ratio: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "switchyard_events_received",
            "Events consumed by the router",
            m.events_received.clone(),
        );
        registry.register(
            "switchyard_events_rejected",
            "Events moved to events.rejected",
            m.events_rejected.clone(),
        );
        registry.register(
            "switchyard_events_unmatched",
            "Valid events that matched no workflow or webhook",
            m.events_unmatched.clone(),
        );
        registry.register(
            "switchyard_actions_enqueued",
            "Action messages published with a confirm",
            m.actions_enqueued.clone(),
        );
        registry.register(
            "switchyard_action_attempts",
            "Action attempts by outcome",
            m.action_attempts.clone(),
        );
        registry.register(
            "switchyard_action_duration_seconds",
            "Duration of one call",
            m.action_duration.clone(),
        );
        registry.register(
            "switchyard_delivery_latency_seconds",
            "From event occurred_at to action success",
            m.delivery_latency.clone(),
        );
        registry.register(
            "switchyard_dead_lettered",
            "Actions dead-lettered",
            m.dead_lettered.clone(),
        );
        registry.register(
            "switchyard_actions_in_flight",
            "Actions being processed",
            m.actions_in_flight.clone(),
        );
        registry.register(
            "switchyard_queue_messages",
            "Ready messages per queue (refreshed every 15 s)",
            m.queue_messages.clone(),
        );
        registry.register(
            "switchyard_broker_connected",
            "1 while connected to the broker",
            m.broker_connected.clone(),
        );
        registry.register(
            "switchyard_broker_blocked",
            "1 while the broker refuses publishes (a memory or disk alarm)",
            m.broker_blocked.clone(),
        );
        registry.register(
            "switchyard_workflows_loaded",
            "Workflows in the loaded set",
            m.workflows_loaded.clone(),
        );
        registry.register(
            "switchyard_config_reloads",
            "Workflow reloads by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "switchyard_breakers_open",
            "Destinations whose circuit breaker is open",
            m.breakers_open.clone(),
        );
        registry.register(
            "switchyard_outbound_blocked",
            "Requests refused by the private-network guard",
            m.outbound_blocked.clone(),
        );
        registry.register(
            "switchyard_partial_failures",
            "Items rejected inside a call that succeeded as a whole (Braze partial success)",
            m.partial_failures.clone(),
        );
        registry.register(
            "switchyard_history_rows_written",
            "Run history rows written to PostgreSQL",
            m.history_rows_written.clone(),
        );
        registry.register(
            "switchyard_history_dropped",
            "Run history rows dropped because the buffer was full (PostgreSQL away or too slow)",
            m.history_dropped.clone(),
        );
        registry.register(
            "switchyard_history_batch_seconds",
            "Time to write one run history batch",
            m.history_batch_seconds.clone(),
        );
        registry.register(
            "switchyard_destination_state",
            "1 for a destination's current state, 0 for the others (destination=\"other\" counts the untracked)",
            m.destination_state.clone(),
        );
        registry.register(
            "switchyard_held_actions",
            "Actions this process put on hold for a destination (open, paused, quarantined or rate-limited), not yet back",
            m.held_actions.clone(),
        );
        registry.register(
            "switchyard_destination_error_ratio",
            "Failed calls / calls of a destination over the last 10 s (destination=\"other\": the worst of the untracked)",
            m.destination_error_ratio.clone(),
        );
        let build_info: Family<VersionLabel, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("switchyard_build_info", "Build information", build_info);
        for result in ["ok", "error"] {
            drop(m.config_reloads.get_or_create(&ResultLabel { result }));
        }
        for &connector in connectors {
            let label = ConnectorLabel { connector };
            drop(m.actions_in_flight.get_or_create(&label));
            drop(m.breakers_open.get_or_create(&label));
            drop(m.actions_enqueued.get_or_create(&label));
            drop(m.outbound_blocked.get_or_create(&label));
            drop(m.action_duration.get_or_create(&label));
            drop(m.delivery_latency.get_or_create(&label));
            drop(m.partial_failures.get_or_create(&label));
        }
        Arc::new(Metrics { registry, ..m })
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one attempt outcome.
    pub fn attempt(&self, connector: &'static str, outcome: &'static str) {
        self.action_attempts
            .get_or_create(&AttemptLabel { connector, outcome })
            .inc();
    }
}

/// An error and its sources, one after the other, for a log line or a command's message: some
/// crates' own text does not say why (reqwest: "error sending request"; tokio-postgres: "db
/// error", "error performing TLS handshake") and keep the cause in their sources.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        let m = Metrics::new(&["http"]);
        m.events_received
            .get_or_create(&TypeLabel {
                r#type: "Prize.Won",
            })
            .inc();
        let text = m.encode();
        for name in [
            "switchyard_events_received_total{type=\"Prize.Won\"} 1",
            "switchyard_actions_in_flight{connector=\"http\"} 0",
            "switchyard_build_info{version=",
            "switchyard_broker_connected 0",
            "switchyard_broker_blocked 0",
            "# TYPE switchyard_action_duration_seconds histogram",
            "switchyard_outbound_blocked_total{connector=\"http\"} 0",
            "switchyard_history_rows_written_total 0",
            "switchyard_history_dropped_total 0",
            "# TYPE switchyard_history_batch_seconds histogram",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
