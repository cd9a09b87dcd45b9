//! The retry policy: which broker-held delay tier a retry waits in, and for how long.

use std::time::Duration;

use rand::Rng;

use crate::config::{RetryConfig, format_delay};

/// What decides retries: the delay schedule and its jitter (`retry:` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy<'a> {
    /// One delay per broker-held retry; its length is the retry budget.
    pub schedule: &'a [Duration],
    /// The jitter fraction: each delay is drawn within ±jitter of its tier.
    pub jitter: f64,
    /// In-process retries on an action's first delivery, before the broker-held schedule.
    pub quick_attempts: u32,
}

impl<'a> RetryPolicy<'a> {
    /// The policy of a configuration.
    pub fn of(config: &'a RetryConfig) -> RetryPolicy<'a> {
        RetryPolicy {
            schedule: &config.schedule,
            jitter: config.jitter,
            quick_attempts: config.quick_attempts,
        }
    }

    /// A random jitter draw in `[-jitter, jitter]`, for [`compute_delay`] and
    /// [`super::decide()`] (the only impure part of a decision).
    pub fn draw(&self) -> f64 {
        if self.jitter > 0.0 {
            rand::rng().random_range(-self.jitter..=self.jitter)
        } else {
            0.0
        }
    }
}

/// Where and how long a retry waits.
#[derive(Debug, Clone, PartialEq)]
pub struct Delay {
    /// The tier name (`5s`), matched by the retry exchange.
    pub tier: String,
    /// The message's own TTL (jittered, stretched by the remote's wish), within the tier's TTL.
    pub expiration: Duration,
}

/// The delay before broker retry number `retry` (0-based): `factor` is the jitter draw in
/// `[-jitter, jitter]`. `Retry-After` picks a longer tier, never a shorter one, and is capped at
/// the largest.
pub fn compute_delay(
    schedule: &[Duration],
    jitter: f64,
    retry: usize,
    retry_after: Option<Duration>,
    factor: f64,
) -> Delay {
    let Some(&nominal) = schedule.get(retry).or(schedule.last()) else {
        return Delay {
            tier: "0s".into(),
            expiration: Duration::ZERO,
        };
    };
    let ttl = |d: Duration| d.mul_f64(1.0 + jitter);
    let mut expiration = nominal.mul_f64(1.0 + factor);
    let mut tier = nominal;
    if let Some(wanted) = retry_after.filter(|w| *w > expiration) {
        // Stretch: the smallest tier that can hold the wait, capped at the largest tier.
        let largest = schedule.iter().copied().max().unwrap_or(nominal);
        tier = schedule
            .iter()
            .copied()
            .filter(|d| ttl(*d) >= wanted)
            .min()
            .unwrap_or(largest);
        expiration = wanted.min(ttl(tier));
    }
    Delay {
        tier: format_delay(tier),
        expiration,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn delays_follow_the_schedule_with_jitter_inside_the_tier() {
        let schedule = [s(5), s(30), s(120)];
        let cases: &[(usize, Option<Duration>, f64, &str, Duration)] = &[
            (0, None, 0.0, "5s", s(5)),
            (0, None, 0.2, "5s", s(6)),
            (0, None, -0.2, "5s", s(4)),
            (1, None, 0.0, "30s", s(30)),
            // Retry-After stretches into the tier that can hold it…
            (0, Some(s(20)), 0.0, "30s", s(20)),
            // …never shortens…
            (1, Some(s(3)), 0.0, "30s", s(30)),
            // …and is capped at the largest tier.
            (0, Some(s(10_000)), 0.0, "2m", s(144)),
            // Within the tier's own jitter allowance it stays in the tier.
            (0, Some(s(6)), 0.0, "5s", s(6)),
        ];
        for (retry, after, factor, tier, expiration) in cases {
            let d = compute_delay(&schedule, 0.2, *retry, *after, *factor);
            assert_eq!(d.tier, *tier, "{retry} {after:?} {factor}");
            assert_eq!(d.expiration, *expiration, "{retry} {after:?} {factor}");
        }
    }
}
