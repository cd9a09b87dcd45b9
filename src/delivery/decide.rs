//! The worker's decision: what a call's outcome means for the delivery, as a pure function of
//! the outcome, the attempt counters and the retry policy (SPEC §5).

use serde_json::Value;

use super::retry::{Delay, RetryPolicy, compute_delay, hold_delay};
use crate::broker::message::Attempts;
use crate::destinations::Hold;
use crate::outcome::{ErrorClass, Failure, Outcome};

/// Held actions come back after their wait and up to this share of their hold's window more (0.5:
/// those held during a 30 s cool-down return over the 15 s after it ends, whenever in the
/// cool-down they were held), so that those held for one rate-limit window or one breaker
/// cool-down, whose waits all end at its end, do not all come back at that instant.
pub const HOLD_SPREAD: f64 = 0.5;

/// What to do with a delivery once its call (with its quick retries) is over.
#[derive(Debug, Clone)]
pub enum Decision {
    /// The call succeeded: record it, enqueue the dependents, ack.
    Success {
        /// The HTTP status.
        status: u16,
        /// The output, `steps.<id>` for the dependents.
        output: Value,
    },
    /// Publish the message to a retry tier, then ack.
    Retry {
        /// Why (for the headers, history and logs).
        failure: Failure,
        /// Which tier, and the message's own expiration.
        delay: Delay,
        /// The counters the retry message carries (one more broker retry).
        attempts: Attempts,
    },
    /// Publish a dead-letter record with this failure's class and reason, then ack.
    DeadLetter(Failure),
    /// The destination holds its calls: publish the message to a tier that suits the wait,
    /// with the counters unchanged (waiting is not failing, SPEC §10), then ack.
    Hold {
        /// Why, and for how long.
        hold: Hold,
        /// Which tier, and the message's own expiration.
        delay: Delay,
    },
}

/// Decides what an outcome means. `attempts` counts every call so far, this delivery's
/// included; `draw` is the jitter draw in `[-jitter, jitter]` ([`RetryPolicy::draw`]).
/// A retryable outcome past the last tier of the schedule is dead-lettered as exhausted.
pub fn decide(
    outcome: Outcome,
    attempts: Attempts,
    policy: &RetryPolicy<'_>,
    draw: f64,
) -> Decision {
    match outcome {
        Outcome::Success { status, output } => Decision::Success { status, output },
        Outcome::Fail(failure) => Decision::DeadLetter(failure),
        // Never counted against the budget, never exhausted: a tier that suits the wait
        // ([`hold_delay`]), stretched by a share of the hold's window drawn from the jitter
        // (never shortened): the actions held for one rate-limit window all wait for the same
        // instant, and must not all come back at it.
        Outcome::Held(hold) => {
            let spread = if policy.jitter > 0.0 {
                draw.abs() / policy.jitter * HOLD_SPREAD
            } else {
                0.0
            };
            let wait = hold.wait + hold.spread_over.mul_f64(spread);
            let delay = hold_delay(policy.schedule, policy.jitter, wait);
            Decision::Hold { hold, delay }
        }
        Outcome::Retry(failure) if attempts.retries as usize >= policy.schedule.len() => {
            Decision::DeadLetter(Failure {
                class: ErrorClass::Exhausted,
                reason: format!(
                    "gave up after {} attempts: {}",
                    attempts.calls, failure.reason
                ),
                ..failure
            })
        }
        Outcome::Retry(failure) => {
            let delay = compute_delay(
                policy.schedule,
                policy.jitter,
                attempts.retries as usize,
                failure.retry_after,
                draw,
            );
            Decision::Retry {
                failure,
                delay,
                attempts: Attempts {
                    calls: attempts.calls,
                    retries: attempts.retries + 1,
                },
            }
        }
    }
}

/// How many in-process (quick) retries a delivery may make: the policy's `quick_attempts` on the
/// first delivery of an action, none once it has been called or held by the broker before.
pub fn quick_retries(attempts: Attempts, policy: &RetryPolicy<'_>) -> u32 {
    if attempts.retries == 0 && attempts.calls == 0 {
        policy.quick_attempts
    } else {
        0
    }
}

/// Whether an outcome may be retried at once, in process (while quick retries are left): it is
/// retryable and the remote did not say when to come back (then the broker holds it instead).
pub fn retry_now(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Retry(failure) if failure.retry_after.is_none())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn failure(class: ErrorClass, retry_after: Option<Duration>) -> Failure {
        Failure {
            class,
            reason: "HTTP 503 from api.example.com".into(),
            status: Some(503),
            retry_after,
        }
    }

    /// What a decision is, in one line for the table.
    fn summary(decision: &Decision) -> String {
        match decision {
            Decision::Success { status, .. } => format!("success {status}"),
            Decision::Retry {
                delay, attempts, ..
            } => format!(
                "retry {} {:?} calls={} retries={}",
                delay.tier, delay.expiration, attempts.calls, attempts.retries
            ),
            Decision::DeadLetter(f) => format!("dead {} {}", f.class.as_str(), f.reason),
            Decision::Hold { delay, .. } => format!("hold {} {:?}", delay.tier, delay.expiration),
        }
    }

    #[test]
    fn outcomes_attempts_and_policy_decide_the_delivery() {
        let schedule = [s(5), s(30), s(120)];
        let policy = RetryPolicy {
            schedule: &schedule,
            jitter: 0.2,
            quick_attempts: 2,
        };
        let success = || Outcome::Success {
            status: 201,
            output: json!({"id": 1}),
        };
        let retry = |after| Outcome::Retry(failure(ErrorClass::Exhausted, after));
        let fail = |class| Outcome::Fail(failure(class, None));
        let at = |calls, retries| Attempts { calls, retries };
        let held_in = |secs, window| {
            Outcome::Held(crate::destinations::Hold {
                destination: crate::destinations::Destination::webhook("crm"),
                why: crate::destinations::HoldWhy::Paused,
                wait: s(secs),
                spread_over: s(window),
                reason: "paused".into(),
            })
        };
        let held = |secs| held_in(secs, secs);
        let cases: Vec<(Outcome, Attempts, f64, &str)> = vec![
            // A held action waits in a tier that suits the wait, whatever its counters: even
            // past the last tier it is never exhausted (waiting is not failing).
            (held(30), at(0, 0), 0.0, "hold 30s 30s"),
            (held(1), at(6, 3), 0.0, "hold 5s 1s"),
            (held(90), at(6, 3), 0.0, "hold 2m 90s"),
            (held(45), at(0, 0), 0.0, "hold 30s 36s"),
            // Spread after the wait, never before it, whichever way the draw goes.
            (held_in(20, 20), at(0, 0), 0.2, "hold 30s 30s"),
            (held_in(20, 20), at(0, 0), -0.1, "hold 30s 25s"),
            // Spread over the hold's whole window: one held near the end of a 30 s cool-down
            // comes back anywhere in the 15 s after it, not at its end with all the others.
            (held_in(1, 30), at(0, 0), 0.2, "hold 30s 16s"),
            (held_in(1, 30), at(0, 0), 0.15, "hold 30s 12.25s"),
            (success(), at(1, 0), 0.0, "success 201"),
            (success(), at(9, 3), 0.0, "success 201"),
            // The first broker retry waits in the first tier, jittered within it.
            (retry(None), at(3, 0), 0.0, "retry 5s 5s calls=3 retries=1"),
            (retry(None), at(3, 0), 0.2, "retry 5s 6s calls=3 retries=1"),
            (
                retry(None),
                at(4, 1),
                0.0,
                "retry 30s 30s calls=4 retries=2",
            ),
            (
                retry(None),
                at(5, 2),
                0.0,
                "retry 2m 120s calls=5 retries=3",
            ),
            // Retry-After picks a longer tier, never a shorter one.
            (
                retry(Some(s(20))),
                at(3, 0),
                0.0,
                "retry 30s 20s calls=3 retries=1",
            ),
            (
                retry(Some(s(1))),
                at(4, 1),
                0.0,
                "retry 30s 30s calls=4 retries=2",
            ),
            // Past the last tier the action is exhausted.
            (
                retry(None),
                at(6, 3),
                0.0,
                "dead exhausted gave up after 6 attempts: HTTP 503 from api.example.com",
            ),
            // A permanent failure is dead-lettered at once, with its own class.
            (
                fail(ErrorClass::Permanent),
                at(1, 0),
                0.0,
                "dead permanent HTTP 503 from api.example.com",
            ),
            (
                fail(ErrorClass::Template),
                at(2, 1),
                0.0,
                "dead template HTTP 503 from api.example.com",
            ),
        ];
        for (outcome, attempts, draw, want) in cases {
            let got = decide(outcome, attempts, &policy, draw);
            assert_eq!(summary(&got), want, "{attempts:?} draw {draw}");
        }
    }

    #[test]
    fn an_empty_schedule_dead_letters_the_first_retry() {
        let policy = RetryPolicy {
            schedule: &[],
            jitter: 0.0,
            quick_attempts: 0,
        };
        let outcome = Outcome::Retry(failure(ErrorClass::Exhausted, None));
        let got = decide(
            outcome,
            Attempts {
                calls: 1,
                retries: 0,
            },
            &policy,
            0.0,
        );
        assert!(matches!(got, Decision::DeadLetter(f) if f.class == ErrorClass::Exhausted));
    }

    #[test]
    fn quick_retries_only_on_a_first_delivery_and_only_without_a_wait() {
        let policy = RetryPolicy {
            schedule: &[],
            jitter: 0.0,
            quick_attempts: 2,
        };
        let at = |calls, retries| Attempts { calls, retries };
        for (attempts, want) in [(at(0, 0), 2), (at(3, 0), 0), (at(0, 1), 0), (at(4, 2), 0)] {
            assert_eq!(quick_retries(attempts, &policy), want, "{attempts:?}");
        }
        let cases = [
            (Outcome::Retry(failure(ErrorClass::Exhausted, None)), true),
            (
                Outcome::Retry(failure(ErrorClass::Exhausted, Some(Duration::from_secs(9)))),
                false,
            ),
            (Outcome::Fail(failure(ErrorClass::Permanent, None)), false),
            (
                Outcome::Success {
                    status: 200,
                    output: Value::Null,
                },
                false,
            ),
        ];
        for (outcome, want) in cases {
            assert_eq!(retry_now(&outcome), want, "{outcome:?}");
        }
    }
}
