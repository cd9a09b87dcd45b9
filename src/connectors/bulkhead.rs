//! A cap on the calls in flight to one host (`worker.max_per_host`), so that a host that hangs
//! holds at most that many of the worker's slots.
//!
//! A destination's circuit breaker ([`crate::destinations`]) stops calls to a dead host, but only once it has seen
//! failures, and a hanging host fails only when the timeout (15 s by default) runs out. Until
//! then every call to it holds a worker slot; with a share of the traffic going there, all
//! `worker.concurrency` slots fill and healthy hosts wait. The bulkhead bounds that share.
//!
//! A call that finds its host full waits for room *without* its worker slot: the job gives the
//! slot back ([`WorkerSlot`], set by the worker for the task that runs a job) and takes one
//! again once its host has room, so other hosts' actions use the slot meanwhile. If the service
//! is stopping while a call waits, the call is abandoned before it starts and the worker hands
//! the action back to its queue. Waits for a connected app's own limits
//! ([`super::registry::Limiter`]) give the slot back the same way ([`without_slot`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

tokio::task_local! {
    /// The worker slot of the job running on this task (set by the worker around each job).
    pub static WORKER_SLOT: Arc<WorkerSlot>;
}

/// Hosts tracked before idle ones are forgotten.
const PRUNE_ABOVE: usize = 1024;

/// The per-host caps.
#[derive(Debug)]
pub struct Bulkheads {
    /// Calls in flight to one host at most.
    max: usize,
    /// One semaphore per host that has been called.
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Room for one call at a host; dropping it frees the room.
#[derive(Debug)]
pub struct Room {
    /// `None` only if the semaphore was closed (never): the call then goes uncapped.
    _permit: Option<OwnedSemaphorePermit>,
}

/// The service is stopping: the call was not made.
#[derive(Debug)]
pub struct Abandoned;

impl Bulkheads {
    /// Caps of `max` calls per host (at least 1).
    pub fn new(max: usize) -> Bulkheads {
        Bulkheads {
            max: max.max(1),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for room at `host`, giving back the task's worker slot while it waits.
    pub async fn enter(&self, host: &str) -> Result<Room, Abandoned> {
        let semaphore = self.semaphore(host);
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Ok(Room {
                _permit: Some(permit),
            });
        }
        let permit = without_slot(semaphore.acquire_owned()).await?;
        Ok(Room {
            _permit: permit.ok(),
        })
    }

    fn semaphore(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(semaphore) = hosts.get(host) {
            return semaphore.clone();
        }
        if hosts.len() >= PRUNE_ABOVE {
            // A semaphore nobody holds a permit of (only the map refers to it) is idle.
            hosts.retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
        }
        let semaphore = Arc::new(Semaphore::new(self.max));
        hosts.insert(host.to_owned(), semaphore.clone());
        semaphore
    }
}

/// Awaits `wait` (room at a host, a connection's concurrency or rate limit) with this task's
/// worker slot given back meanwhile, if the task has one. [`Abandoned`] if the service started
/// stopping first: the caller must not call.
pub async fn without_slot<T>(wait: impl Future<Output = T>) -> Result<T, Abandoned> {
    match WORKER_SLOT.try_with(Arc::clone) {
        Ok(slot) => slot.give_back_while(wait).await.ok_or(Abandoned),
        Err(_) => Ok(wait.await),
    }
}

impl From<Abandoned> for crate::outcome::Outcome {
    /// Retryable, though the worker hands the action back to its queue untried instead.
    fn from(_: Abandoned) -> Self {
        crate::outcome::Outcome::retry("not called: switchyard is stopping")
    }
}

/// The worker slot a job holds (one of `worker.concurrency`), which it can give back while it
/// waits for a busy host.
#[derive(Debug)]
pub struct WorkerSlot {
    /// The worker's slots.
    slots: Arc<Semaphore>,
    /// This job's slot, while it holds one.
    held: Mutex<Option<OwnedSemaphorePermit>>,
    /// The service is stopping.
    stop: CancellationToken,
    /// A call was abandoned because of `stop`.
    abandoned: AtomicBool,
}

impl WorkerSlot {
    /// A job's slot, holding `permit` of `slots`.
    pub fn new(
        slots: Arc<Semaphore>,
        permit: OwnedSemaphorePermit,
        stop: CancellationToken,
    ) -> Arc<WorkerSlot> {
        Arc::new(WorkerSlot {
            slots,
            held: Mutex::new(Some(permit)),
            stop,
            abandoned: AtomicBool::new(false),
        })
    }

    /// Whether a call of this job was abandoned because the service is stopping.
    pub fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Gives the slot back while `wait` runs, then takes one again. `None` when the service
    /// started stopping meanwhile (the job then holds no slot and must not call).
    async fn give_back_while<T>(&self, wait: impl Future<Output = T>) -> Option<T> {
        drop(self.lock().take());
        let out = tokio::select! {
            out = wait => out,
            () = self.stop.cancelled() => {
                self.abandoned.store(true, Ordering::Relaxed);
                return None;
            }
        };
        // The worker never closes its semaphore; if it did, the job would go on without a slot.
        if let Ok(permit) = self.slots.clone().acquire_owned().await {
            *self.lock() = Some(permit);
        }
        Some(out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<OwnedSemaphorePermit>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_host_waits_without_its_worker_slot_and_another_host_goes_ahead() {
        let bulkheads = Arc::new(Bulkheads::new(1));
        let slots = Arc::new(Semaphore::new(1));
        let stop = CancellationToken::new();

        // Job A takes the only worker slot and the only room at dead.example, and hangs there.
        let a_slot = WorkerSlot::new(
            slots.clone(),
            slots.clone().try_acquire_owned().expect("free"),
            stop.clone(),
        );
        let a_room = WORKER_SLOT
            .scope(a_slot.clone(), bulkheads.enter("dead.example"))
            .await
            .expect("room");
        drop(a_slot); // A's call ends its job later; its slot is released here for the test.

        // Job B, also for dead.example, takes the slot, finds no room, and gives the slot back.
        let b_slot = WorkerSlot::new(
            slots.clone(),
            slots.clone().acquire_owned().await.expect("slot"),
            stop.clone(),
        );
        let b = tokio::spawn(WORKER_SLOT.scope(b_slot.clone(), {
            let bulkheads = bulkheads.clone();
            async move { bulkheads.enter("dead.example").await.is_ok() }
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(slots.available_permits(), 1, "B gave its slot back");

        // Job C, for a healthy host, gets the slot and room at once.
        let c_permit = slots
            .clone()
            .try_acquire_owned()
            .expect("the slot B gave back");
        let c_slot = WorkerSlot::new(slots.clone(), c_permit, stop.clone());
        WORKER_SLOT
            .scope(c_slot.clone(), bulkheads.enter("healthy.example"))
            .await
            .expect("room");
        drop(c_slot);

        // A's call ends: B gets room, then a slot again.
        drop(a_room);
        assert!(b.await.expect("B"), "B went ahead once A was done");
        assert_eq!(slots.available_permits(), 0, "B holds a slot again");
        assert!(!b_slot.abandoned());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waiting_for_room_is_abandoned_when_the_service_stops() {
        let bulkheads = Arc::new(Bulkheads::new(1));
        let slots = Arc::new(Semaphore::new(2));
        let stop = CancellationToken::new();
        let _busy = bulkheads.enter("dead.example").await.expect("room");
        let slot = WorkerSlot::new(
            slots.clone(),
            slots.clone().try_acquire_owned().expect("free"),
            stop.clone(),
        );
        let waiting = tokio::spawn(WORKER_SLOT.scope(slot.clone(), {
            let bulkheads = bulkheads.clone();
            async move { bulkheads.enter("dead.example").await.is_err() }
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
        stop.cancel();
        assert!(waiting.await.expect("joined"), "abandoned");
        assert!(slot.abandoned());
        assert_eq!(slots.available_permits(), 2, "holds no slot");
    }
}
