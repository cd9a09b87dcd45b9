//! What a response says of the destination's rate limit: `X-RateLimit-Remaining` /
//! `RateLimit-Remaining` (calls left in the window) and `X-RateLimit-Reset` / `RateLimit-Reset`
//! (when the window ends). Braze sends these on every answer, not only on a 429; switchyard
//! spreads its calls over what is left before the remote has to refuse them.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

/// Below this many calls left in the window, calls are spaced out over the rest of it.
pub const LOW_REMAINING: u64 = 10;

/// The rate-limit headers of one response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Calls left in the current window.
    pub remaining: Option<u64>,
    /// Until the window resets.
    pub reset: Option<Duration>,
}

impl Limits {
    /// Reads the headers (the first of each pair present).
    pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Limits {
        let header = |names: [&str; 2]| {
            names.iter().find_map(|name| {
                headers
                    .get(*name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
            })
        };
        let remaining = header(["x-ratelimit-remaining", "ratelimit-remaining"])
            .and_then(|v| v.parse::<u64>().ok());
        let reset =
            header(["x-ratelimit-reset", "ratelimit-reset"]).and_then(|v| reset_time(v, now));
        Limits { remaining, reset }
    }

    /// The window is used up: no call until it resets.
    pub fn exhausted(&self) -> Option<Duration> {
        match (self.remaining, self.reset) {
            (Some(0), Some(reset)) => Some(reset),
            _ => None,
        }
    }

    /// The gap between two calls while few are left: the rest of the window shared out over
    /// them. Zero when plenty are left (or the headers are absent).
    pub fn spacing(&self) -> Duration {
        match (self.remaining, self.reset) {
            (Some(remaining), Some(reset)) if remaining > 0 && remaining < LOW_REMAINING => {
                reset / (remaining as u32 + 1)
            }
            _ => Duration::ZERO,
        }
    }
}

/// A rate-limit reset header's value as a wait: epoch seconds, or seconds from now when small.
pub fn reset_time(value: &str, now: SystemTime) -> Option<Duration> {
    let reset = value.parse::<f64>().ok()?;
    if !reset.is_finite() || reset < 0.0 {
        return None;
    }
    // Values below a year's worth of seconds are a delta; larger ones an epoch time.
    if reset < 31_536_000.0 {
        return Some(Duration::from_secs_f64(reset));
    }
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(reset);
    Some(when.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn limits(pairs: &[(&'static str, &str)]) -> Limits {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).expect("a header value"));
        }
        Limits::from_headers(
            &headers,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )
    }

    #[test]
    fn plenty_left_costs_nothing_few_left_spaces_calls_none_left_waits_for_the_reset() {
        let plenty = limits(&[
            ("x-ratelimit-remaining", "2500"),
            ("x-ratelimit-reset", "1800000003"),
        ]);
        assert_eq!(plenty.spacing(), Duration::ZERO);
        assert_eq!(plenty.exhausted(), None);

        let few = limits(&[("ratelimit-remaining", "3"), ("ratelimit-reset", "8")]);
        assert_eq!(few.reset, Some(Duration::from_secs(8)));
        assert_eq!(few.spacing(), Duration::from_secs(2));

        let none = limits(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1800000030"),
        ]);
        assert_eq!(none.exhausted(), Some(Duration::from_secs(30)));

        assert_eq!(limits(&[]), Limits::default());
        assert_eq!(limits(&[("x-ratelimit-remaining", "soon")]).remaining, None);
    }
}
