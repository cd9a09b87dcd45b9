//! The running service: shared state, the broker supervisor, graceful shutdown.
//!
//! [`Service::start`] boots everything (also inside tests, on port 0 with its own prefix). A
//! supervisor owns the broker connection: when it drops, every consumer stops, in-flight work is
//! abandoned unacked (the broker redelivers it), and a fresh connection is built with backoff.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::broker::{self, AmqpContext, BrokerError, Publisher, Topology};
use crate::config::Config;
use crate::connectors::{ConnectorKind, Connectors, HttpClient};
use crate::control::Follower;
use crate::destinations::Destinations;
use crate::faults::Faults;
use crate::history::{History, HistoryError};
use crate::net::Guard;
use crate::server::Health;
use crate::shared::{LoadReport, Shared};
use crate::telemetry::{Metrics, QueueLabel, ResultLabel};
use crate::template::Engine;
use crate::workflow::{Catalog, Problem, Severity};
use crate::{router, secrets, server, worker};

/// How long history may take to write what it holds when the service stops.
const HISTORY_FLUSH_GRACE: Duration = Duration::from_secs(5);

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
    Http(#[from] crate::connectors::client::ClientError),
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
    /// A task of the service panicked; the service stopped (`main` exits non-zero).
    #[error("a task panicked ({0}); the service stopped")]
    Panicked(String),
    /// `history.url` could not be resolved.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The console could not start.
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
}

impl Shared {
    /// Builds the state: secrets, workflows, metrics, clients. Fails on invalid workflows.
    pub fn new(config: Config, faults: Arc<Faults>) -> Result<Shared, Error> {
        let engine = Engine::new();
        let secrets = secrets::load(&config.secrets.dir).map_err(|source| Error::Secrets {
            path: config.secrets.dir.display().to_string(),
            source,
        })?;
        let history_url = if config.history.enabled() {
            Some(crate::history::resolve_url(&config.history.url, &secrets)?)
        } else {
            None
        };
        let guard = Guard::new(&config.http.allow_networks);
        let (catalog, problems) =
            Catalog::load(&config.workflows.paths, secrets, &engine, &guard, None);
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
        release_freed_memory();
        let metrics = Metrics::new(&ConnectorKind::names());
        metrics.workflows_loaded.set(catalog.workflows.len() as i64);
        let destinations = Destinations::new(config.destinations.clone(), metrics.clone());
        let control = Follower::new(&config, destinations.clone());
        let last_load = arc_swap::ArcSwap::from_pointee(LoadReport::now(true, problems));
        let connectors = Connectors::new(
            HttpClient::new(&config.http, config.worker.per_host_limit(), destinations)?,
            metrics.clone(),
        );
        let health = Arc::new(Health::default());
        health.workflows.store(true, Ordering::Relaxed);
        // Started last: nothing above can fail once the writer runs.
        let history = match history_url {
            Some(url) => History::start(&config.history, url, metrics.clone(), &faults),
            None => History::off(),
        };
        Ok(Shared {
            history,
            control,
            topology: Topology::new(&config),
            catalog: Arc::new(arc_swap::ArcSwap::from_pointee(catalog)),
            metrics,
            connectors,
            engine,
            health,
            faults,
            config,
            last_load,
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
                let problems = vec![Problem::error(
                    &self.config.secrets.dir,
                    None,
                    None,
                    format!("cannot read secrets: {e}"),
                )];
                self.last_load
                    .store(Arc::new(LoadReport::now(false, problems.clone())));
                return Err(problems);
            }
        };
        let (catalog, problems) = Catalog::load(
            &self.config.workflows.paths,
            secrets,
            &self.engine,
            &Guard::new(&self.config.http.allow_networks),
            Some(&self.catalog.load()),
        );
        for problem in problems.iter().filter(|p| p.severity != Severity::Error) {
            warn!(problem = %problem, "workflow lint");
        }
        match catalog {
            Some(catalog) => {
                let count = catalog.workflows.len();
                self.catalog.store(Arc::new(catalog));
                release_freed_memory();
                self.metrics.workflows_loaded.set(count as i64);
                self.metrics
                    .config_reloads
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                self.last_load
                    .store(Arc::new(LoadReport::now(true, problems)));
                Ok(count)
            }
            None => {
                self.metrics
                    .config_reloads
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                self.last_load
                    .store(Arc::new(LoadReport::now(false, problems.clone())));
                Err(problems
                    .into_iter()
                    .filter(|p| p.severity == Severity::Error)
                    .collect())
            }
        }
    }
}

/// How the binary's allocator hands freed memory back to the system (see [`set_memory_release`]).
static MEMORY_RELEASE: OnceLock<fn()> = OnceLock::new();

/// Tells the library how the process's allocator hands freed memory back: `switchyard` runs on
/// jemalloc and purges its arena. Without it (the tests, the bench) glibc's `malloc_trim` does.
/// Set once, before the service starts; later calls change nothing.
pub fn set_memory_release(release: fn()) {
    let _ = MEMORY_RELEASE.set(release);
}

/// Hands the memory a workflow load freed (the parsed files, the replaced catalog) back to the
/// system at once: a load of ten thousand workflows frees tens of MiB. glibc keeps freed memory
/// in the arena of the thread that freed it, where the pipeline's threads would never reuse it;
/// jemalloc would return it only as it decays, over seconds of later allocations.
fn release_freed_memory() {
    if let Some(release) = MEMORY_RELEASE.get() {
        release();
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it walks glibc's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A started service.
pub struct Service {
    /// Shared state (tests inspect it).
    pub app: Arc<Shared>,
    /// Where `/metrics` listens.
    metrics_addr: SocketAddr,
    /// Where the console listens, when `console.listen` is set.
    console_addr: Option<SocketAddr>,
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
        let faults = Faults::new(shutdown.clone());
        let app = Arc::new(Shared::new(config, faults.clone())?);
        let addr = app.config.metrics.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr, source })?;
        let metrics_addr = listener
            .local_addr()
            .map_err(|source| Error::Listen { addr, source })?;
        tokio::spawn(faults.guard(
            "metrics server",
            server::serve(
                listener,
                app.metrics.clone(),
                app.health.clone(),
                shutdown.clone(),
            ),
        ));
        tokio::spawn(faults.guard(
            "destination states",
            refresh_destinations(app.clone(), shutdown.clone()),
        ));
        let console_addr = match app.config.console.listen {
            Some(addr) => {
                Some(crate::console::start(app.clone(), addr, true, shutdown.clone()).await?)
            }
            None => None,
        };
        info!(role = ?role, metrics = %metrics_addr, prefix = %app.config.amqp.prefix, "switchyard started");
        let task = tokio::spawn(supervise(app.clone(), role, shutdown));
        Ok(Service {
            app,
            metrics_addr,
            console_addr,
            task,
        })
    }

    /// The address the console answers on, when `console.listen` is set.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
    }

    /// The address `/metrics`, `/healthz` and `/readyz` answer on.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Waits until the service has stopped (and history has
    /// flushed what it holds). A panic in any of its tasks is an error
    /// ([`Error::Panicked`]), never a clean stop.
    pub async fn wait(self) -> Result<(), Error> {
        let ended = match self.task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                self.app.faults.record("supervisor", panic.as_ref());
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "supervisor task cancelled");
                Ok(())
            }
        };
        self.app.history.close(HISTORY_FLUSH_GRACE).await;
        match self.app.faults.panicked() {
            Some(panic) => Err(Error::Panicked(panic)),
            None => ended,
        }
    }
}

/// Keeps a broker session alive until shutdown, reconnecting with backoff. With several nodes in
/// `amqp.url`, each attempt tries them in turn, starting after the node of the session that was
/// lost (a node that just failed is the least likely to answer); the backoff grows only when no
/// node answered.
async fn supervise(app: Arc<Shared>, role: Role, shutdown: CancellationToken) -> Result<(), Error> {
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(15))
        .with_jitter()
        .without_max_times();
    let mut delays = backoff.build();
    let nodes = app.config.amqp.url.len();
    // Where the next attempt starts.
    let mut first = 0;
    loop {
        let started = Instant::now();
        let mut on = None;
        let result = session(&app, role, &shutdown, first, &mut on).await;
        app.health.connected.store(false, Ordering::Relaxed);
        app.health.topology.store(false, Ordering::Relaxed);
        app.metrics.broker_connected.set(0);
        // A new connection starts unblocked; the broker says again if its alarm still holds.
        app.metrics.broker_blocked.set(0);
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
                let node = on.map(|i| broker::node_label(&app.config.amqp.url[i]));
                if let Some(lost) = on {
                    first = (lost + 1) % nodes;
                }
                warn!(
                    error = %e,
                    node = node.as_deref().unwrap_or("none"),
                    next_node = %broker::node_label(&app.config.amqp.url[first]),
                    retry_in_ms = delay.as_millis() as u64,
                    "broker session lost; reconnecting"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// One connection's life: declare, consume, and either drain gracefully or fail. The node it
/// connected to (an index into `amqp.url`) is left in `on`, for the supervisor's next attempt.
async fn session(
    app: &Arc<Shared>,
    role: Role,
    shutdown: &CancellationToken,
    first: usize,
    on: &mut Option<usize>,
) -> Result<(), BrokerError> {
    let setting_up = async {
        let broker::Connected { connection, node } = broker::connect_from(
            &app.config.amqp.url,
            first,
            &format!("switchyard {role:?}"),
            app.config.amqp.connect_timeout,
        )
        .await?;
        *on = Some(node);
        let connection = Arc::new(connection);
        app.topology.declare(&connection).await?;
        let setup = connection
            .create_channel()
            .await
            .context("opening a channel")?;
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
    let node = on.map(|i| broker::node_label(&app.config.amqp.url[i]));
    info!(
        node = node.as_deref().unwrap_or("none"),
        "connected to the broker; topology declared"
    );

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
        let (caught_up, mut ready) = watch::channel(false);
        loops.spawn(
            app.control
                .clone()
                .run(connection.clone(), caught_up, stop.clone()),
        );
        let worker = worker::run(
            app.clone(),
            connection.clone(),
            publisher.clone(),
            stop.clone(),
            tracker.clone(),
        );
        loops.spawn(async move {
            // Every pause in force before the first call (SPEC §10: pauses survive restarts).
            // Bounded: a broker that blocks publishing (an alarm) must not keep the worker off.
            if tokio::time::timeout(PAUSES_WAIT, ready.wait_for(|ready| *ready))
                .await
                .is_err()
            {
                warn!(
                    wait_ms = PAUSES_WAIT.as_millis() as u64,
                    "the destinations' pauses were not read in time; the worker starts anyway and applies them as they arrive"
                );
            }
            worker.await
        });
    }
    let depths = tokio::spawn(app.faults.guard(
        "queue depths",
        refresh_depths(app.clone(), setup.clone(), stop.clone()),
    ));
    let mut events = connection.events_listener();
    let lost = async {
        while let Some(event) = events.next().await {
            match event {
                lapin::Event::Error(e) => {
                    return BrokerError::Amqp {
                        context: "connection".into(),
                        source: e,
                    };
                }
                // The log line first: whoever sees the gauge change finds the reason logged.
                lapin::Event::ConnectionBlocked(reason) => {
                    warn!(
                        reason = %reason,
                        "the broker blocks publishing (a resource alarm): the router and retries wait until it lifts"
                    );
                    app.metrics.broker_blocked.set(1);
                }
                lapin::Event::ConnectionUnblocked => {
                    info!("the broker accepts publishes again");
                    app.metrics.broker_blocked.set(0);
                }
                _ => {}
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

/// How long a worker waits for the pauses in force before it consumes.
const PAUSES_WAIT: Duration = Duration::from_secs(10);

/// Quarantines what is due and refreshes the SPEC §10 gauges once a second, broker or not.
async fn refresh_destinations(app: Arc<Shared>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => app.connectors.http.destinations().refresh(),
        }
    }
}

/// Refreshes `switchyard_queue_messages` every 15 s with passive declares.
async fn refresh_depths(app: Arc<Shared>, channel: lapin::Channel, stop: CancellationToken) {
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
