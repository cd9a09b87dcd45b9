//! A circuit breaker per destination host, so that a dead endpoint takes no worker time from
//! healthy ones: after consecutive failures it opens, and while open, actions for that host go
//! straight to their next retry tier without a call. After a cool-down one probe is let through;
//! its success closes the breaker, its failure re-opens it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::telemetry::{ConnectorLabel, Metrics};

/// Consecutive failures that open a breaker.
pub const FAILURE_THRESHOLD: u32 = 5;
/// How long a breaker stays open before a probe.
pub const COOL_DOWN: Duration = Duration::from_secs(30);

/// The breakers of every (connector, host).
#[derive(Debug)]
pub struct Breakers {
    /// State per (connector, host).
    states: Mutex<HashMap<(&'static str, String), State>>,
    /// For `switchyard_breakers_open`.
    metrics: Arc<Metrics>,
    /// Failures that open a breaker.
    threshold: u32,
    /// Open time before a probe.
    cool_down: Duration,
}

/// One destination's breaker.
#[derive(Debug, Default)]
struct State {
    /// Failures since the last success.
    failures: u32,
    /// When it opened; `None` while closed.
    opened_at: Option<Instant>,
    /// A probe is in flight.
    probing: bool,
}

/// What the breaker allows.
#[derive(Debug, PartialEq, Eq)]
pub enum Permit {
    /// Call.
    Call,
    /// Do not call; the breaker has been open this long.
    Open(u32),
}

impl Breakers {
    /// Breakers with the default threshold and cool-down.
    pub fn new(metrics: Arc<Metrics>) -> Breakers {
        Breakers::with_limits(metrics, FAILURE_THRESHOLD, COOL_DOWN)
    }

    /// Breakers with explicit limits (tests).
    pub fn with_limits(metrics: Arc<Metrics>, threshold: u32, cool_down: Duration) -> Breakers {
        Breakers {
            states: Mutex::new(HashMap::new()),
            metrics,
            threshold,
            cool_down,
        }
    }

    /// Whether a call to `host` may go ahead now.
    pub fn permit(&self, connector: &'static str, host: &str) -> Permit {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(state) = states.get_mut(&(connector, host.to_owned())) else {
            return Permit::Call;
        };
        match state.opened_at {
            None => Permit::Call,
            Some(opened) if opened.elapsed() >= self.cool_down && !state.probing => {
                state.probing = true;
                Permit::Call
            }
            Some(_) => Permit::Open(state.failures),
        }
    }

    /// Records the result of a call that was permitted. `failed` means a retryable failure (the
    /// destination is unwell), not a permanent refusal.
    pub fn record(&self, connector: &'static str, host: &str, failed: bool) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (connector, host.to_owned());
        if !failed {
            if let Some(state) = states.remove(&key)
                && state.opened_at.is_some()
            {
                self.gauge(connector).dec();
            }
            return;
        }
        let state = states.entry(key).or_default();
        state.failures = state.failures.saturating_add(1);
        state.probing = false;
        match state.opened_at {
            Some(_) => state.opened_at = Some(Instant::now()),
            None if state.failures >= self.threshold => {
                state.opened_at = Some(Instant::now());
                self.gauge(connector).inc();
            }
            None => {}
        }
    }

    fn gauge(&self, connector: &'static str) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .breakers_open
            .get_or_create(&ConnectorLabel { connector })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_after_cool_down_and_closes_on_success() {
        let metrics = Metrics::new(&["http"]);
        let breakers = Breakers::with_limits(metrics.clone(), 3, Duration::ZERO);
        let open = || {
            metrics
                .breakers_open
                .get_or_create(&ConnectorLabel { connector: "http" })
                .get()
        };
        for _ in 0..2 {
            breakers.record("http", "dead.example", true);
        }
        assert_eq!(breakers.permit("http", "dead.example"), Permit::Call);
        breakers.record("http", "dead.example", true);
        assert_eq!(open(), 1);
        // Cool-down zero: the first caller probes, the next is refused while the probe runs.
        assert_eq!(breakers.permit("http", "dead.example"), Permit::Call);
        assert_eq!(breakers.permit("http", "dead.example"), Permit::Open(3));
        // Other hosts are unaffected.
        assert_eq!(breakers.permit("http", "healthy.example"), Permit::Call);
        breakers.record("http", "dead.example", false);
        assert_eq!(open(), 0);
        assert_eq!(breakers.permit("http", "dead.example"), Permit::Call);
    }

    #[test]
    fn stays_open_while_cooling_down() {
        let metrics = Metrics::new(&["webhook"]);
        let breakers = Breakers::with_limits(metrics, 1, Duration::from_secs(3600));
        breakers.record("webhook", "dead.example", true);
        assert_eq!(breakers.permit("webhook", "dead.example"), Permit::Open(1));
    }
}
