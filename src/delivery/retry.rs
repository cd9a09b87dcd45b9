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
    let mut expiration = nominal.mul_f64(1.0 + factor);
    let mut tier = nominal;
    // Stretch: the tier that holds the remote's wait.
    if let Some(wanted) = retry_after.filter(|w| *w > expiration)
        && let Some((stretched, until)) = holding(schedule, jitter, wanted)
    {
        tier = stretched;
        expiration = until;
    }
    Delay {
        tier: format_delay(tier),
        expiration,
    }
}

/// A tier queue's TTL: its delay stretched by the jitter allowance, so that no message in it
/// waits longer than the queue lets it ([`crate::broker::Topology::tier_ttl`] declares it so).
pub fn tier_ttl(tier: Duration, jitter: f64) -> Duration {
    tier.mul_f64(1.0 + jitter)
}

/// The smallest tier that holds a wait of `wanted` whole, or the largest when none does, with
/// the message's expiration there; `None` without tiers.
fn holding(schedule: &[Duration], jitter: f64, wanted: Duration) -> Option<(Duration, Duration)> {
    let tier = schedule
        .iter()
        .copied()
        .filter(|d| tier_ttl(*d, jitter) >= wanted)
        .min()
        .or_else(|| schedule.iter().copied().max())?;
    Some((tier, wanted.min(tier_ttl(tier, jitter))))
}

/// Where a held action waits for `wait` (SPEC §10). A tier's queue releases its messages in
/// order, so one whose own expiration is shorter than the head's waits for the head: a 40 s hold
/// in the `2m` tier came back after up to 144 s, behind the retries there. A hold goes to the
/// largest tier not longer than the wait that holds at least half of it, and comes back at the
/// wait or at the tier's end, whichever is first; back early, the worker holds it again for what
/// is left of its destination's hold (or calls at once if that has ended), so a hold makes at
/// most a few trips. A wait no such tier suits takes the tier that holds it whole, as a retry's
/// `Retry-After` does ([`holding`]).
pub fn hold_delay(schedule: &[Duration], jitter: f64, wait: Duration) -> Delay {
    let (tier, expiration) = schedule
        .iter()
        .copied()
        .filter(|d| *d <= wait && tier_ttl(*d, jitter) * 2 >= wait)
        .max()
        .map(|tier| (tier, wait.min(tier_ttl(tier, jitter))))
        .or_else(|| holding(schedule, jitter, wait))
        .unwrap_or_default();
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

    #[test]
    fn a_hold_waits_in_the_largest_tier_not_longer_than_the_wait() {
        let schedule = [s(5), s(30), s(120), s(600)];
        let cases: &[(Duration, &str, Duration)] = &[
            // Shorter than every tier: the smallest, for the wait itself.
            (s(3), "5s", s(3)),
            (s(5), "5s", s(5)),
            // A tier that holds half of it: to the tier's end, then held again.
            (s(10), "5s", s(6)),
            (s(40), "30s", s(36)),
            // Within a tier's jitter allowance: that tier, for the wait.
            (s(35), "30s", s(35)),
            // No tier holds half of it: the one that holds it whole.
            (s(20), "30s", s(20)),
            (s(100), "2m", s(100)),
            // Longer than every tier: the largest, to its end, then held again.
            (s(3600), "10m", s(720)),
        ];
        for (wait, tier, expiration) in cases {
            let d = hold_delay(&schedule, 0.2, *wait);
            assert_eq!(d.tier, *tier, "{wait:?}");
            assert_eq!(d.expiration, *expiration, "{wait:?}");
        }
        assert_eq!(hold_delay(&[], 0.2, s(10)).expiration, Duration::ZERO);
    }
}
