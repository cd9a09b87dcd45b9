//! Per-connection state shared by every worker task of the process: the concurrency semaphore,
//! the rate limiter and (for Salesforce) the access token.
//!
//! The catalog is compiled anew on every SIGHUP, but this registry lives in [`super::Connectors`],
//! built once per process. State is keyed by connection id and a digest of its settings: a reload
//! that leaves a connection alone keeps its token and its limits (in-flight calls still hold
//! their permits), and a connection whose settings changed starts with fresh state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Request;
use super::bulkhead::{Abandoned, without_slot};
use super::client::HttpClient;
use super::connection::{ConnectionKey, Limits};
use super::salesforce::auth::TokenCache;
use crate::destinations::Destination;
use crate::outcome::{self, Outcome};

/// Every connection's state, created on first use.
#[derive(Debug, Default)]
pub struct Registry {
    /// State by connection id and settings digest.
    states: Mutex<HashMap<ConnectionKey, Arc<ConnectionState>>>,
}

/// One connection's shared state.
#[derive(Debug)]
pub struct ConnectionState {
    /// Concurrency and rate limits.
    pub limiter: Limiter,
    /// The access token (Salesforce only; unused by the other apps).
    pub tokens: TokenCache,
}

impl Registry {
    /// The state of a connection, created with `limits` on first use.
    pub fn state(&self, key: &ConnectionKey, limits: Limits) -> Arc<ConnectionState> {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(state) = states.get(key) {
            return state.clone();
        }
        let state = Arc::new(ConnectionState {
            limiter: Limiter::new(limits).for_connection(&key.id),
            tokens: TokenCache::default(),
        });
        states.insert(key.clone(), state.clone());
        state
    }
}

/// A connection's concurrency semaphore and rate limiter.
pub struct Limiter {
    /// Permits for calls in flight; `None` is unbounded.
    semaphore: Option<Arc<Semaphore>>,
    /// GCRA limiter; `None` is unbounded.
    rate: Option<DefaultDirectRateLimiter>,
    /// The limits it was built with (for logs and tests).
    limits: Limits,
    /// The connection its calls go to (SPEC §10), when it is one's.
    destination: Option<Destination>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Held while a call is in flight; dropping it lets the next call go.
#[derive(Debug)]
pub struct Slot {
    /// The concurrency permit, if the connection has a concurrency limit.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Limiter {
    /// Builds the semaphore and the rate limiter of `limits`.
    pub fn new(limits: Limits) -> Limiter {
        let semaphore = limits
            .concurrency
            .map(|n| Arc::new(Semaphore::new(n as usize)));
        let rate = limits.rate.and_then(|rate| {
            // A burst of `count`, replenished one call every `per / count`.
            Quota::with_period(rate.per / rate.count.get())
                .map(|quota| RateLimiter::direct(quota.allow_burst(rate.count)))
        });
        Limiter {
            semaphore,
            rate,
            limits,
            destination: None,
        }
    }

    /// The limiter of connection `id`: its calls go to that destination.
    pub fn for_connection(self, id: &str) -> Limiter {
        Limiter {
            destination: Some(Destination::connection(id)),
            ..self
        }
    }

    /// Waits for a concurrency permit, then for the rate limiter; the call may go while the
    /// returned slot is held. A wait gives the task's worker slot back meanwhile
    /// ([`without_slot`]), so a throttled connection does not idle the worker.
    pub async fn acquire(&self) -> Result<Slot, Abandoned> {
        let permit = match &self.semaphore {
            // `acquire_owned` fails only on a closed semaphore; these are never closed.
            Some(semaphore) => match semaphore.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => without_slot(semaphore.clone().acquire_owned()).await?.ok(),
            },
            None => None,
        };
        if let Some(rate) = &self.rate
            && rate.check().is_err()
        {
            without_slot(rate.until_ready()).await?;
        }
        Ok(Slot { _permit: permit })
    }

    /// Sends `request` through `http` within these limits ([`Limiter::acquire`]), classified by
    /// the connector's `classify`.
    pub async fn send(
        &self,
        http: &HttpClient,
        mut request: Request,
        classify: outcome::Classifier,
    ) -> Outcome {
        if request.destination.is_none() {
            request.destination = self.destination.clone();
        }
        // A held destination's action does not queue for the connection's limits.
        if let Some(held) = http.held(&request) {
            return held;
        }
        let _slot = match self.acquire().await {
            Ok(slot) => slot,
            Err(abandoned) => return abandoned.into(),
        };
        http.send_with(request, classify).await
    }

    /// The limits it enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::connectors::connection::Rate;

    fn key(id: &str, fingerprint: &str) -> ConnectionKey {
        ConnectionKey {
            id: id.into(),
            fingerprint: fingerprint.into(),
        }
    }

    #[test]
    fn state_is_shared_per_id_and_settings() {
        let registry = Registry::default();
        let limits = Limits {
            concurrency: Some(2),
            rate: None,
        };
        let a = registry.state(&key("sf", "1"), limits);
        let again = registry.state(&key("sf", "1"), limits);
        assert!(Arc::ptr_eq(&a, &again));
        let changed = registry.state(&key("sf", "2"), limits);
        assert!(!Arc::ptr_eq(&a, &changed));
        let other = registry.state(&key("mc", "1"), limits);
        assert!(!Arc::ptr_eq(&a, &other));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_limit_holds() {
        let limiter = Arc::new(Limiter::new(Limits {
            concurrency: Some(3),
            rate: None,
        }));
        let now = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (limiter, now, max) = (limiter.clone(), now.clone(), max.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = limiter.acquire().await.expect("no worker slot to abandon");
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                now.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn rate_limit_spaces_calls_after_the_burst() {
        let limiter = Limiter::new(Limits {
            concurrency: None,
            rate: Some(Rate::parse("5/500ms").unwrap()),
        });
        let started = Instant::now();
        for _ in 0..10 {
            drop(limiter.acquire().await.expect("no worker slot to abandon"));
        }
        // 5 at once, then one every 100 ms.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }
}
