//! A panic in any task of the service stops the service, and the process exits non-zero.
//!
//! tokio catches a panic in a spawned task and hands it to the task's `JoinHandle`, which the
//! service's per-event and per-action tasks drop: left alone, a panic would vanish, leave its
//! delivery unacknowledged until the connection closes, and the process would carry on (or, for
//! the supervisor, exit 0) as if nothing had happened. Every task the service spawns runs under
//! [`Faults::guard`] instead: the first panic is kept and logged, and it cancels the service's
//! shutdown token, so the service drains what it can (within `shutdown_grace`) and
//! [`crate::Service::wait`] returns [`crate::app::Error::Panicked`]; `main` exits with
//! [`PANICKED`] and the orchestrator restarts the process. The panicking task's own delivery is
//! never settled, so the broker redelivers it.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tracing::error;

/// The exit status after a task panicked (EX_SOFTWARE of sysexits.h: an internal error).
pub const PANICKED: u8 = 70;

/// Where the service's tasks report a panic.
#[derive(Debug)]
pub struct Faults {
    /// The service's shutdown token: a panic stops the service.
    stop: CancellationToken,
    /// The first panic: which task, and its message.
    first: Mutex<Option<String>>,
}

impl Faults {
    /// Faults that stop the service through `stop`.
    pub fn new(stop: CancellationToken) -> Arc<Faults> {
        Arc::new(Faults {
            stop,
            first: Mutex::new(None),
        })
    }

    /// Runs `future`; if it panics, records the panic (and so stops the service) instead of
    /// letting it vanish with the task.
    pub fn guard<F>(
        self: &Arc<Self>,
        task: &'static str,
        future: F,
    ) -> impl Future<Output = ()> + use<F>
    where
        F: Future<Output = ()>,
    {
        let faults = self.clone();
        // Unwind safety: after a panic nothing of the task is used again; the service stops.
        AssertUnwindSafe(future).catch_unwind().map(move |ended| {
            if let Err(panic) = ended {
                faults.record(task, panic.as_ref());
            }
        })
    }

    /// Records a panic of `task` and stops the service.
    pub fn record(&self, task: &str, panic: &(dyn Any + Send)) {
        let message = panic_message(panic);
        error!(task, panic = %message, "a task panicked; stopping the service");
        // A poisoned lock still holds the first panic; keep it.
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(format!("{task}: {message}"));
        }
        drop(first);
        self.stop.cancel();
    }

    /// The first panic, if any: `task: message`.
    pub fn panicked(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_stops_the_service_and_is_kept() {
        let stop = CancellationToken::new();
        let faults = Faults::new(stop.clone());
        let task = tokio::spawn(faults.guard("test task", async { panic!("boom") }));
        // The guard caught it: the task itself ends normally.
        task.await.unwrap();
        assert!(stop.is_cancelled());
        assert_eq!(faults.panicked().as_deref(), Some("test task: boom"));
    }

    #[tokio::test]
    async fn the_first_panic_is_kept() {
        let faults = Faults::new(CancellationToken::new());
        faults.guard("first", async { panic!("one") }).await;
        faults
            .guard("second", async { panic!("{}", String::from("two")) })
            .await;
        assert_eq!(faults.panicked().as_deref(), Some("first: one"));
    }

    #[tokio::test]
    async fn a_task_that_ends_normally_changes_nothing() {
        let stop = CancellationToken::new();
        let faults = Faults::new(stop.clone());
        faults.guard("fine", async {}).await;
        assert!(!stop.is_cancelled());
        assert_eq!(faults.panicked(), None);
    }
}
