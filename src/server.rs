//! `/metrics`, `/healthz` and `/readyz` (SPEC §7).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::telemetry::Metrics;

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

/// What the endpoints read.
#[derive(Clone)]
struct Endpoints {
    /// `/metrics`.
    metrics: Arc<Metrics>,
    /// `/readyz`.
    health: Arc<Health>,
}

/// Serves `metrics` and `health` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let router = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Endpoints { metrics, health });
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        warn!(error = %e, "metrics endpoint stopped");
    }
}

async fn metrics(State(app): State<Endpoints>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
}

async fn readyz(State(app): State<Endpoints>) -> impl IntoResponse {
    let h = &app.health;
    let ordering = std::sync::atomic::Ordering::Relaxed;
    let body = format!(
        "broker_connected {}\ntopology_declared {}\nworkflows_loaded {}\n",
        h.connected.load(ordering),
        h.topology.load(ordering),
        h.workflows.load(ordering)
    );
    let status = if h.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
