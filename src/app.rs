//! The running service: shared state, the broker supervisor, graceful shutdown.
//!
//! [`Service::start`] boots everything (also inside tests, on port 0 with its own prefix). A
//! supervisor owns the broker connection: when it drops, every consumer stops, in-flight work is
//! abandoned unacked (the broker redelivers it), and a fresh connection is built with backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::broker::{self, AmqpContext, BrokerError, Publisher, Topology};
use crate::config::Config;
use crate::connectors::{Connectors, HttpClient};
use crate::telemetry::{Metrics, QueueLabel, ResultLabel};
use crate::template::Engine;
use crate::workflow::{self, Catalog, Problem, Severity};
use crate::{router, secrets, server, worker};

/// How often queue depths are refreshed.
const DEPTH_INTERVAL: Duration = Duration::from_secs(15);

/// What a process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Router and worker in one process.
    All,
    /// Consumes events, publishes actions.
    Router,
    /// Consumes actions, calls remotes.
    Worker,
}

impl Role {
    fn routes(self) -> bool {
        matches!(self, Role::All | Role::Router)
    }
    fn works(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The workflow files have errors.
    #[error("the workflow files have {} error(s); run `switchyard validate` for the full list. First: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
    Workflows(Vec<Problem>),
    /// Secrets could not be read.
    #[error("reading secrets from {path}: {source}")]
    Secrets {
        /// The directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The metrics endpoint could not listen.
    #[error("metrics.listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A broker operation failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Readiness: all three must hold for `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    /// A broker connection is open.
    pub connected: AtomicBool,
    /// The topology was declared on it.
    pub topology: AtomicBool,
    /// A valid workflow set is loaded.
    pub workflows: AtomicBool,
}

impl Health {
    /// Whether the service can do its work.
    pub fn ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self.topology.load(Ordering::Relaxed)
            && self.workflows.load(Ordering::Relaxed)
    }
}

/// State shared by every task of the process.
pub struct App {
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
    /// Readiness.
    pub health: Health,
}

impl App {
    /// Builds the state: secrets, workflows, metrics, clients. Fails on invalid workflows.
    pub fn new(config: Config) -> Result<App, Error> {
        let engine = Engine::new();
        let secrets = secrets::load(&config.secrets.dir).map_err(|source| Error::Secrets {
            path: config.secrets.dir.display().to_string(),
            source,
        })?;
        let (catalog, problems) = Catalog::load(&config.workflows.paths, secrets, &engine);
        for problem in problems.iter().filter(|p| p.severity != Severity::Error) {
            warn!(problem = %problem, "workflow lint");
        }
        let Some(catalog) = catalog else {
            return Err(Error::Workflows(
                problems
                    .into_iter()
                    .filter(|p| p.severity == Severity::Error)
                    .collect(),
            ));
        };
        let metrics = Metrics::new(&crate::config::CONNECTORS);
        metrics.workflows_loaded.set(catalog.workflows.len() as i64);
        let connectors = Connectors::new(
            HttpClient::new(
                &config.http,
                config.worker.per_host_limit(),
                metrics.clone(),
            )?,
            metrics.clone(),
        );
        let health = Health::default();
        health.workflows.store(true, Ordering::Relaxed);
        Ok(App {
            topology: Topology::new(&config),
            catalog: Arc::new(arc_swap::ArcSwap::from_pointee(catalog)),
            metrics,
            connectors,
            engine,
            health,
            config,
        })
    }

    /// Re-reads the workflow files and secrets; keeps the old set if the new one is invalid.
    pub fn reload(&self) -> Result<usize, Vec<Problem>> {
        let secrets = match secrets::load(&self.config.secrets.dir) {
            Ok(secrets) => secrets,
            Err(e) => {
                self.metrics
                    .config_reloads
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                return Err(vec![Problem::error(
                    &self.config.secrets.dir,
                    None,
                    None,
                    format!("cannot read secrets: {e}"),
                )]);
            }
        };
        let (catalog, problems) =
            Catalog::load(&self.config.workflows.paths, secrets, &self.engine);
        for problem in problems.iter().filter(|p| p.severity != Severity::Error) {
            warn!(problem = %problem, "workflow lint");
        }
        match catalog {
            Some(catalog) => {
                let count = catalog.workflows.len();
                self.catalog.store(Arc::new(catalog));
                self.metrics.workflows_loaded.set(count as i64);
                self.metrics
                    .config_reloads
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                Ok(count)
            }
            None => {
                self.metrics
                    .config_reloads
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                Err(problems
                    .into_iter()
                    .filter(|p| p.severity == Severity::Error)
                    .collect())
            }
        }
    }
}

/// A started service.
pub struct Service {
    /// Shared state (tests inspect it).
    pub app: Arc<App>,
    /// Where `/metrics` listens.
    metrics_addr: SocketAddr,
    /// The supervisor.
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Service {
    /// Starts the metrics endpoint and the broker supervisor; returns once both are running.
    pub async fn start(
        config: Config,
        role: Role,
        shutdown: CancellationToken,
    ) -> Result<Service, Error> {
        let app = Arc::new(App::new(config)?);
        let addr = app.config.metrics.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr, source })?;
        let metrics_addr = listener
            .local_addr()
            .map_err(|source| Error::Listen { addr, source })?;
        tokio::spawn(server::serve(listener, app.clone(), shutdown.clone()));
        info!(role = ?role, metrics = %metrics_addr, prefix = %app.config.amqp.prefix, "switchyard started");
        let task = tokio::spawn(supervise(app.clone(), role, shutdown));
        Ok(Service {
            app,
            metrics_addr,
            task,
        })
    }

    /// The address `/metrics`, `/healthz` and `/readyz` answer on.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Waits until the service has stopped.
    pub async fn wait(self) -> Result<(), Error> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => {
                error!(error = %e, "supervisor task failed");
                Ok(())
            }
        }
    }
}

/// Keeps a broker session alive until shutdown, reconnecting with backoff.
async fn supervise(app: Arc<App>, role: Role, shutdown: CancellationToken) -> Result<(), Error> {
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(15))
        .with_jitter()
        .without_max_times();
    let mut delays = backoff.build();
    loop {
        let started = Instant::now();
        let result = session(&app, role, &shutdown).await;
        app.health.connected.store(false, Ordering::Relaxed);
        app.health.topology.store(false, Ordering::Relaxed);
        app.metrics.broker_connected.set(0);
        match result {
            Ok(()) => return Ok(()),
            Err(e) if shutdown.is_cancelled() => {
                warn!(error = %e, "broker session ended during shutdown");
                return Ok(());
            }
            Err(e) => {
                if started.elapsed() > Duration::from_secs(30) {
                    delays = backoff.build();
                }
                let delay = delays.next().unwrap_or(Duration::from_secs(15));
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker session lost; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// One connection's life: declare, consume, and either drain gracefully or fail.
async fn session(
    app: &Arc<App>,
    role: Role,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let setting_up = async {
        let connection = Arc::new(
            broker::connect(
                &app.config.amqp.url,
                &format!("switchyard {role:?}"),
                app.config.amqp.connect_timeout,
            )
            .await?,
        );
        let setup = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        app.topology.declare(&setup).await?;
        app.health.topology.store(true, Ordering::Relaxed);
        let publisher = Publisher::open(&connection).await?;
        Ok::<_, BrokerError>((connection, setup, publisher))
    };
    // A stop request while the broker does not answer yet ends the session at once: nothing is
    // in flight before the consumers start.
    let (connection, setup, publisher) = tokio::select! {
        ready = setting_up => ready?,
        () = shutdown.cancelled() => return Ok(()),
    };
    app.health.connected.store(true, Ordering::Relaxed);
    app.metrics.broker_connected.set(1);
    info!("connected to the broker; topology declared");

    let stop = shutdown.child_token();
    let tracker = TaskTracker::new();
    let mut loops: JoinSet<Result<(), BrokerError>> = JoinSet::new();
    if role.routes() {
        loops.spawn(router::run(
            app.clone(),
            connection.clone(),
            publisher.clone(),
            stop.clone(),
            tracker.clone(),
        ));
    }
    if role.works() {
        loops.spawn(worker::run(
            app.clone(),
            connection.clone(),
            publisher.clone(),
            stop.clone(),
            tracker.clone(),
        ));
    }
    let depths = tokio::spawn(refresh_depths(app.clone(), setup.clone(), stop.clone()));
    let mut events = connection.events_listener();
    let lost = async {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                return BrokerError::Amqp {
                    context: "connection".into(),
                    source: e,
                };
            }
        }
        BrokerError::ConsumerEnded("connection events".into())
    };

    // Biased to the stop request: the consumer loops return as soon as their stop token, a
    // child of `shutdown`, fires, so an ended loop is ready whenever a stop is; polled first, the
    // stop wins and the session drains instead of taking the ended loop for a lost broker
    // (tests/delivery.rs caught the random pick skipping the drain).
    let outcome = tokio::select! {
        biased;
        _ = shutdown.cancelled() => Ok(()),
        Some(ended) = loops.join_next() => Err(match ended {
            Ok(Err(e)) => e,
            Ok(Ok(())) => BrokerError::ConsumerEnded("a consumer loop".into()),
            Err(e) => BrokerError::ConsumerEnded(format!("a consumer loop panicked: {e}")),
        }),
        e = lost => Err(e),
    };
    stop.cancel();
    depths.abort();
    while loops.join_next().await.is_some() {}
    tracker.close();
    match outcome {
        Ok(()) => {
            let grace = app.config.shutdown_grace;
            info!(
                in_flight = tracker.len(),
                grace_ms = grace.as_millis() as u64,
                "draining in-flight work"
            );
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                warn!(
                    in_flight = tracker.len(),
                    "shutdown_grace elapsed; unfinished actions go back to their queue"
                );
            }
            // Our channels first (the consumers' close once their acks are out): a channel whose
            // last handle drops while the connection closes makes lapin log an ERROR.
            // Each close is bounded (broker::CLOSE_TIMEOUT): the process must exit right after
            // shutdown_grace.
            for channel in [&setup, publisher.channel()] {
                broker::close_channel(channel, 200, "shutdown").await;
            }
            broker::close_connection(&connection, 200, "shutdown").await;
            info!("stopped");
            Ok(())
        }
        Err(e) => {
            // The channel is gone: in-flight work cannot ack and will be redelivered.
            broker::close_connection(&connection, 320, "reconnecting").await;
            Err(e)
        }
    }
}

/// Refreshes `switchyard_queue_messages` every 15 s with passive declares.
async fn refresh_depths(app: Arc<App>, channel: lapin::Channel, stop: CancellationToken) {
    let queues = app.topology.all_queues();
    loop {
        for queue in &queues {
            let options = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            if let Ok(q) = channel
                .queue_declare(queue.as_str().into(), options, FieldTable::default())
                .await
            {
                app.metrics
                    .queue_messages
                    .get_or_create(&QueueLabel {
                        queue: queue.clone(),
                    })
                    .set(i64::from(q.message_count()));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DEPTH_INTERVAL) => {}
        }
    }
}
