//! The pure decisions of delivery, apart from the stages that act on them:
//!
//! - [`plan`](mod@plan): which action messages an event produces (the router publishes them), and which
//!   dependents a succeeded action enqueues (the worker publishes those).
//! - [`decide`](mod@decide): what a call's outcome means for its delivery: success, a retry in which tier,
//!   or a dead letter with which class; [`retry`] is the policy and the delay arithmetic.
//! - [`dead_letter`]: the dead-letter record format: written by the worker, read and reset for
//!   replay by the `dlq` commands.
//!
//! Nothing here touches the broker or the clock's future: every decision is table-tested.

pub mod dead_letter;
pub mod decide;
pub mod plan;
pub mod retry;

pub use decide::{Decision, decide, quick_retries, retry_now};
pub use plan::{Plan, Planned, WEBHOOK_ACTION, dependents, plan};
pub use retry::{Delay, RetryPolicy, compute_delay};
