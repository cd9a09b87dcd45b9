//! Destinations (SPEC §10): where an action's calls go — a connection, a webhook subscription,
//! or for `http` actions the URL's `host[:port]` — and the state each is in.
//!
//! The HTTP client asks [`Destinations::admit`] before every call. A destination that is `open`
//! (its circuit breaker), `paused` (by an operator), `quarantined` (failing without a success for
//! `destinations.quarantine_after`) or rate-limited by the remote answers [`Admit::Hold`]: the
//! worker puts the action back on the broker (a retry tier, attempts unchanged) instead of
//! waiting in a slot, so the other destinations keep every worker slot. After the call,
//! [`Destinations::record`] learns from the outcome and the response's rate-limit headers.
//!
//! Pauses come from [`crate::control`] (a stream every process follows); the rest is this process's own
//! view. The metrics of SPEC §10 are refreshed by [`Destinations::refresh`] once a second.

pub mod limits;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{DestinationsConfig, format_delay};
use crate::telemetry::{ConnectorLabel, DestinationLabel, DestinationStateLabel, Metrics};
use limits::Limits;

/// How long a call waits in process for room at a full host (`worker.max_per_host`) before
/// its action is held on the broker instead ([`HoldWhy::Busy`]).
pub const BUSY_WAIT: Duration = Duration::from_secs(1);
/// How long an action held for a busy host waits on the broker.
pub const BUSY_HOLD: Duration = Duration::from_secs(5);
/// How long a paused or quarantined destination's actions wait on the broker between checks.
pub const HOLD_RECHECK: Duration = Duration::from_secs(30);
/// A wait on a rate limit up to this long is spent in process (without a worker slot); longer
/// ones put the action back on the broker.
pub const SHORT_WAIT: Duration = Duration::from_secs(2);
/// Calls/s and the error ratio are measured over windows this long.
const WINDOW: Duration = Duration::from_secs(10);
/// A healthy destination unused this long is forgotten (its series removed).
const IDLE_FORGET: Duration = Duration::from_secs(600);
/// The label value of the destinations beyond `destinations.max_tracked`.
pub const OTHER: &str = "other";

tokio::task_local! {
    /// Where the current action's latest call went: the HTTP client writes it as it calls, the
    /// worker reads it for run history (SPEC §9 records each attempt's destination).
    pub static CALLED: std::cell::RefCell<Option<Destination>>;
}

/// What kind of thing a destination is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A connected app's connection (its id).
    Connection,
    /// A webhook subscription (its id).
    Webhook,
    /// An `http` action's host (`host` or `host:port`).
    Host,
}

impl Kind {
    /// The name SPEC §10 uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connection => "connection",
            Kind::Webhook => "webhook",
            Kind::Host => "host",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        match text {
            "connection" => Some(Kind::Connection),
            "webhook" => Some(Kind::Webhook),
            "host" => Some(Kind::Host),
            _ => None,
        }
    }
}

/// Where a call goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The connection or webhook id, or `host[:port]`.
    pub id: String,
    /// What it is.
    pub kind: Kind,
}

impl Destination {
    /// A connection.
    pub fn connection(id: &str) -> Destination {
        Destination {
            id: id.to_owned(),
            kind: Kind::Connection,
        }
    }

    /// A webhook subscription.
    pub fn webhook(id: &str) -> Destination {
        Destination {
            id: id.to_owned(),
            kind: Kind::Webhook,
        }
    }

    /// The host of a URL, with its port when it is not the scheme's default: two services on
    /// one host are two destinations.
    pub fn host(url: &url::Url) -> Destination {
        let host = url.host_str().unwrap_or("?");
        Destination {
            id: match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            },
            kind: Kind::Host,
        }
    }

    /// The value of the `x-switchyard-held-for` header: `kind:id`.
    pub fn header_value(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }

    /// Reads [`Destination::header_value`].
    pub fn from_header(value: &str) -> Option<Destination> {
        let (kind, id) = value.split_once(':')?;
        Some(Destination {
            id: id.to_owned(),
            kind: Kind::parse(kind)?,
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// A destination's state, mildest first (a merge of several processes' views takes the worst).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Calls succeed.
    Healthy,
    /// Recent calls failed in a retryable way.
    Failing,
    /// The circuit breaker is open: calls are held.
    Open,
    /// Paused automatically after failing for `destinations.quarantine_after`.
    Quarantined,
    /// Paused by an operator.
    Paused,
}

impl State {
    /// Every state, for the metric's zeros.
    pub const ALL: [State; 5] = [
        State::Healthy,
        State::Failing,
        State::Open,
        State::Quarantined,
        State::Paused,
    ];

    /// The name SPEC §10 uses.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Failing => "failing",
            State::Open => "open",
            State::Quarantined => "quarantined",
            State::Paused => "paused",
        }
    }
}

/// An operator's pause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Why, as the operator wrote it.
    pub reason: String,
    /// Who paused it.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

/// The answer to "may this call go?".
#[derive(Debug)]
pub enum Admit {
    /// Call, after waiting `after` (a rate limit's spacing; zero mostly); the ticket counts the
    /// call in flight until it is recorded or dropped.
    Call {
        /// Wait this long first (without a worker slot).
        after: Duration,
        /// The call in flight.
        ticket: Ticket,
    },
    /// Do not call: put the action back on the broker for `wait`.
    Hold(Hold),
}

/// Why and how long an action is held.
#[derive(Clone, Debug, PartialEq)]
pub struct Hold {
    /// The destination.
    pub destination: Destination,
    /// Why it is held.
    pub why: HoldWhy,
    /// How long before it should come back.
    pub wait: Duration,
    /// The time scale its return is spread over (a share of it is added to the wait): the whole
    /// cool-down or rate-limit window. Every action held in one such window has a wait that ends
    /// at the window's end, and would otherwise all come back at that instant, together, in
    /// front of every other destination's actions.
    pub spread_over: Duration,
    /// One line for the log.
    pub reason: String,
}

/// What holds a destination's actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldWhy {
    /// Paused by an operator.
    Paused,
    /// Quarantined.
    Quarantined,
    /// Its circuit breaker is open.
    Open,
    /// The remote's rate limit.
    RateLimited,
    /// Every call the host may have in flight (`worker.max_per_host`) has been for a while: it
    /// is slow or hanging, and the action must not wait in the worker's prefetch.
    Busy,
}

/// A call in flight to a destination; dropping it ends the call's count.
#[derive(Debug)]
pub struct Ticket {
    /// The registry.
    owner: Arc<Destinations>,
    /// Where the call goes.
    destination: Destination,
    /// Recorded already (the drop only decrements the in-flight count then).
    recorded: bool,
}

/// What a call's outcome says about its destination.
#[derive(Debug, Default)]
pub struct Report {
    /// A retryable failure (timeout, refused, 5xx): counts towards the breaker.
    pub failed: bool,
    /// A permanent failure: counts in the error ratio only.
    pub refused: bool,
    /// The remote refused for rate (429, or a retryable answer saying when to come back): not
    /// the destination failing, so it neither opens nor closes the breaker.
    pub throttled: bool,
    /// The remote asked for a pause (`Retry-After`, `X-RateLimit-Reset` on a refusal).
    pub retry_after: Option<Duration>,
    /// The reason of a failure, for `destinations list`.
    pub error: Option<String>,
    /// The response's rate-limit headers.
    pub limits: Limits,
}

/// One destination as `destinations list` and the console show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// Its id.
    pub id: String,
    /// Its kind; `None` for a pause of a destination this process has not called.
    pub kind: Option<Kind>,
    /// Its state.
    pub state: State,
    /// Calls per second over the last window.
    pub calls_per_s: f64,
    /// Failed calls / calls over the last window (`None` without calls).
    pub error_ratio: Option<f64>,
    /// Calls in flight.
    pub in_flight: u64,
    /// Actions held on the broker for it now (by this process).
    pub held: i64,
    /// Times an action was held for it (by this process, since it started).
    #[serde(default)]
    pub holds: u64,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// The operator's pause, when paused.
    pub pause: Option<Pause>,
}

impl Status {
    /// A paused destination nothing is known of besides its pause.
    pub fn paused(id: &str, pause: &Pause) -> Status {
        Status {
            id: id.to_owned(),
            kind: None,
            state: State::Paused,
            calls_per_s: 0.0,
            error_ratio: None,
            in_flight: 0,
            held: 0,
            holds: 0,
            last_error: None,
            pause: Some(pause.clone()),
        }
    }
}

/// Every destination this process has called, and the pauses.
#[derive(Debug)]
pub struct Destinations {
    /// The state.
    inner: Mutex<Inner>,
    /// `destinations:` settings.
    config: DestinationsConfig,
    /// For the SPEC §10 gauges and `switchyard_breakers_open`.
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per destination.
    entries: HashMap<Destination, Entry>,
    /// Operators' pauses, by destination id (any kind).
    pauses: HashMap<String, Pause>,
    /// Destinations with a label value of their own (at most `max_tracked`).
    tracked: HashSet<String>,
    /// Label sets exported at the last refresh, to zero or remove the stale ones.
    exported: HashSet<DestinationStateLabel>,
}

#[derive(Debug)]
struct Entry {
    /// The connector of its calls (for `switchyard_breakers_open{connector}`).
    connector: &'static str,
    /// Retryable failures since the last success.
    failures: u32,
    /// When the breaker opened; `None` while closed.
    opened_at: Option<Instant>,
    /// A probe is in flight through an open breaker.
    probing: bool,
    /// The first failure since the last success.
    failing_since: Option<Instant>,
    /// Quarantined (until `resume`).
    quarantined: bool,
    /// The remote asked for no calls until then.
    limited_until: Option<Instant>,
    /// How long that window was when it was set (the spread of the actions held for it).
    limit_window: Duration,
    /// Between two calls while the remote's remaining budget is low.
    spacing: Duration,
    /// The next call may start then (with `spacing`).
    next_call: Option<Instant>,
    /// Calls in flight.
    in_flight: u64,
    /// Actions this process held that have not come back.
    held: i64,
    /// Times an action was held.
    holds: u64,
    /// The last failure.
    last_error: Option<String>,
    /// Last admitted or recorded.
    last_used: Instant,
    /// The current measurement window: start, calls, errors.
    window: (Instant, u64, u64),
    /// The last complete window: calls/s, error ratio.
    rates: (f64, Option<f64>),
}

impl Entry {
    fn new(connector: &'static str, now: Instant) -> Entry {
        Entry {
            connector,
            failures: 0,
            opened_at: None,
            probing: false,
            failing_since: None,
            quarantined: false,
            limited_until: None,
            limit_window: Duration::ZERO,
            spacing: Duration::ZERO,
            next_call: None,
            in_flight: 0,
            held: 0,
            holds: 0,
            last_error: None,
            last_used: now,
            window: (now, 0, 0),
            rates: (0.0, None),
        }
    }

    fn state(&self, paused: bool) -> State {
        if paused {
            State::Paused
        } else if self.quarantined {
            State::Quarantined
        } else if self.opened_at.is_some() {
            State::Open
        } else if self.failures > 0 {
            State::Failing
        } else {
            State::Healthy
        }
    }

    fn roll_window(&mut self, now: Instant) {
        let (started, calls, errors) = self.window;
        let took = now.saturating_duration_since(started);
        if took >= WINDOW {
            self.rates = (
                calls as f64 / took.as_secs_f64(),
                (calls > 0).then(|| errors as f64 / calls as f64),
            );
            self.window = (now, 0, 0);
        }
    }
}

impl Destinations {
    /// An empty registry.
    pub fn new(config: DestinationsConfig, metrics: Arc<Metrics>) -> Arc<Destinations> {
        Arc::new(Destinations {
            inner: Mutex::new(Inner::default()),
            config,
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a call by `connector` to `destination` may go now.
    pub fn admit(self: &Arc<Self>, destination: &Destination, connector: &'static str) -> Admit {
        let now = Instant::now();
        let mut inner = self.lock();
        let Inner {
            entries, pauses, ..
        } = &mut *inner;
        let entry = entries
            .entry(destination.clone())
            .or_insert_with(|| Entry::new(connector, now));
        entry.last_used = now;
        if entry.connector.is_empty() {
            entry.connector = connector;
        }
        if !entry.quarantined && self.quarantine_due(entry, now) {
            entry.quarantined = true;
            self.log_quarantine(destination);
        }
        if let Some(hold) = self.hold_of(destination, pauses.get(&destination.id), Some(entry), now)
        {
            return Admit::Hold(hold);
        }
        // Not held with an open breaker: its cool-down is over, and this call is the probe.
        if entry.opened_at.is_some() {
            entry.probing = true;
        }
        // A rate limit's last SHORT_WAIT is waited in process.
        let mut after = Duration::ZERO;
        if let Some(until) = entry.limited_until {
            after = until.saturating_duration_since(now);
            if after.is_zero() {
                entry.limited_until = None;
            }
        }
        if !entry.spacing.is_zero() {
            let next = entry.next_call.map_or(now, |next| next.max(now)) + after;
            let wait = next.saturating_duration_since(now);
            if wait > SHORT_WAIT {
                return Admit::Hold(Hold {
                    destination: destination.clone(),
                    why: HoldWhy::RateLimited,
                    wait,
                    spread_over: wait,
                    reason: format!(
                        "{destination} is close to its rate limit; held for {}, not called",
                        format_delay(wait)
                    ),
                });
            }
            entry.next_call = Some(next + entry.spacing);
            after = wait;
        }
        entry.in_flight += 1;
        entry.window.1 += 1;
        Admit::Call {
            after,
            ticket: Ticket {
                owner: self.clone(),
                destination: destination.clone(),
                recorded: false,
            },
        }
    }

    /// Whether `destination` holds its calls now, without admitting one: a cheap look before the
    /// waits for a connection's or a host's limits. [`Destinations::admit`] decides.
    pub fn check(&self, destination: &Destination) -> Option<Hold> {
        let inner = self.lock();
        let pause = inner.pauses.get(&destination.id);
        self.hold_of(
            destination,
            pause,
            inner.entries.get(destination),
            Instant::now(),
        )
    }

    /// The hold a destination's calls are under now, if any: its pause, its quarantine, its open
    /// breaker (cooling down, or while the probe runs) or a rate limit longer than [`SHORT_WAIT`].
    fn hold_of(
        &self,
        destination: &Destination,
        pause: Option<&Pause>,
        entry: Option<&Entry>,
        now: Instant,
    ) -> Option<Hold> {
        let hold = |why, wait, spread_over, reason| {
            Some(Hold {
                destination: destination.clone(),
                why,
                wait,
                spread_over,
                reason,
            })
        };
        if let Some(pause) = pause {
            let reason = format!(
                "destination {destination} is paused by {}: {}; held, not called",
                pause.by, pause.reason
            );
            return hold(HoldWhy::Paused, HOLD_RECHECK, HOLD_RECHECK, reason);
        }
        let entry = entry?;
        if entry.quarantined {
            let reason = format!(
                "destination {destination} is quarantined (no success for {}); held until `switchyard destinations resume {destination}`",
                format_delay(self.config.quarantine_after)
            );
            return hold(HoldWhy::Quarantined, HOLD_RECHECK, HOLD_RECHECK, reason);
        }
        if let Some(opened) = entry.opened_at {
            let open_for = now.saturating_duration_since(opened);
            if open_for < self.config.cool_down || entry.probing {
                // While a probe runs, come back after a whole cool-down: its verdict is known
                // by then, and a hanging probe must not make the others cycle every second.
                let wait = if entry.probing {
                    self.config.cool_down
                } else {
                    self.config.cool_down.saturating_sub(open_for)
                }
                .max(Duration::from_secs(1));
                let reason = format!(
                    "circuit breaker open for {destination} after {} consecutive failures; held, not called",
                    entry.failures
                );
                return hold(HoldWhy::Open, wait, self.config.cool_down.max(wait), reason);
            }
        }
        let wait = entry
            .limited_until
            .map(|until| until.saturating_duration_since(now))
            .filter(|wait| *wait > SHORT_WAIT)?;
        let reason = format!(
            "{destination} asked for no calls for {}; held, not called",
            format_delay(wait)
        );
        hold(
            HoldWhy::RateLimited,
            wait,
            entry.limit_window.max(wait),
            reason,
        )
    }

    /// The hold of an action whose call found `destination`'s host full (`worker.max_per_host`
    /// calls in flight) for [`BUSY_WAIT`].
    pub fn busy(destination: &Destination) -> Hold {
        Hold {
            destination: destination.clone(),
            why: HoldWhy::Busy,
            wait: BUSY_HOLD,
            spread_over: BUSY_HOLD,
            reason: format!(
                "{destination} has every call it may have in flight, and none ended within {}; held, not called",
                format_delay(BUSY_WAIT)
            ),
        }
    }

    fn quarantine_due(&self, entry: &Entry, now: Instant) -> bool {
        entry.failing_since.is_some_and(|since| {
            now.saturating_duration_since(since) >= self.config.quarantine_after
        })
    }

    fn log_quarantine(&self, destination: &Destination) {
        warn!(
            destination = %destination,
            kind = destination.kind.as_str(),
            quarantine_after = %format_delay(self.config.quarantine_after),
            "destination quarantined: it failed without a success for destinations.quarantine_after; its actions are held until `switchyard destinations resume`"
        );
    }

    /// Learns from a call's outcome.
    pub fn record(&self, mut ticket: Ticket, report: Report) {
        ticket.recorded = true;
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(&ticket.destination) else {
            return;
        };
        let destination = &ticket.destination;
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.last_used = now;
        if report.failed || report.refused {
            entry.window.2 += 1;
        }
        if let Some(error) = &report.error {
            entry.last_error = Some(error.clone());
        }
        let reset = report.retry_after.or_else(|| report.limits.exhausted());
        if let Some(wait) = reset.filter(|wait| !wait.is_zero()) {
            let until = now + wait;
            if entry.limited_until.is_none_or(|current| current < until) {
                info!(destination = %destination, wait = %format_delay(wait), "the destination asked for a pause; its calls wait until then");
                entry.limited_until = Some(until);
                entry.limit_window = wait;
            }
        }
        entry.spacing = report.limits.spacing();
        if entry.spacing.is_zero() {
            entry.next_call = None;
        }
        if report.failed {
            entry.failures = entry.failures.saturating_add(1);
            entry.failing_since.get_or_insert(now);
            let reopen = entry.probing;
            entry.probing = false;
            if reopen {
                entry.opened_at = Some(now);
            } else if entry.opened_at.is_none() && entry.failures >= self.config.failure_threshold {
                entry.opened_at = Some(now);
                self.breaker_gauge(entry.connector).inc();
                warn!(
                    destination = %destination,
                    failures = entry.failures,
                    cool_down = %format_delay(self.config.cool_down),
                    "circuit breaker opened: the destination's actions are held on the broker, one probe after the cool-down"
                );
            }
        } else if !report.throttled {
            entry.failures = 0;
            entry.failing_since = None;
            entry.probing = false;
            if entry.opened_at.take().is_some() {
                self.breaker_gauge(entry.connector).dec();
                info!(destination = %destination, "circuit breaker closed: the probe succeeded");
            }
        }
    }

    fn breaker_gauge(&self, connector: &'static str) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .breakers_open
            .get_or_create(&ConnectorLabel { connector })
            .clone()
    }

    /// An action for `destination` was put back on the broker (`delta` 1) or came back (-1).
    pub fn held(&self, destination: &Destination, delta: i64) {
        let mut inner = self.lock();
        let entry = inner
            .entries
            .entry(destination.clone())
            .or_insert_with(|| Entry::new("", Instant::now()));
        entry.held += delta;
        if delta > 0 {
            entry.holds += delta as u64;
        }
    }

    /// Applies an operator's pause (from [`crate::control`]).
    pub fn pause(&self, id: &str, pause: Pause) {
        let mut inner = self.lock();
        warn!(destination = id, by = %pause.by, reason = %pause.reason, "destination paused: its actions are held on the broker until resumed");
        inner.pauses.insert(id.to_owned(), pause);
    }

    /// Applies an operator's resume (from [`crate::control`]): ends a pause and a quarantine, and
    /// closes the breaker (it opens again if the destination still fails).
    pub fn resume(&self, id: &str, by: &str) {
        let mut inner = self.lock();
        let paused = inner.pauses.remove(id).is_some();
        let mut released = false;
        for (destination, entry) in inner.entries.iter_mut() {
            if destination.id != id {
                continue;
            }
            released |= entry.quarantined || entry.opened_at.is_some();
            entry.quarantined = false;
            entry.failures = 0;
            entry.failing_since = None;
            entry.probing = false;
            if entry.opened_at.take().is_some() {
                self.breaker_gauge(entry.connector).dec();
            }
        }
        if paused || released {
            info!(
                destination = id,
                by, "destination resumed: its held actions flow again"
            );
        }
    }

    /// Whether `id` is paused by an operator.
    pub fn is_paused(&self, id: &str) -> bool {
        self.lock().pauses.contains_key(id)
    }

    /// Every destination this process knows, and every pause.
    pub fn statuses(&self) -> Vec<Status> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Inner {
            entries, pauses, ..
        } = &mut *inner;
        let mut out: Vec<Status> = entries
            .iter_mut()
            .map(|(destination, entry)| {
                entry.roll_window(now);
                let pause = pauses.get(&destination.id).cloned();
                Status {
                    id: destination.id.clone(),
                    kind: Some(destination.kind),
                    state: entry.state(pause.is_some()),
                    calls_per_s: entry.rates.0,
                    error_ratio: entry.rates.1,
                    in_flight: entry.in_flight,
                    held: entry.held,
                    holds: entry.holds,
                    last_error: entry.last_error.clone(),
                    pause,
                }
            })
            .collect();
        for (id, pause) in pauses.iter() {
            if !out.iter().any(|status| &status.id == id) {
                out.push(Status::paused(id, pause));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Quarantines what is due, forgets idle healthy destinations, and sets the SPEC §10 gauges
    /// (at most `destinations.max_tracked` label values of their own; the rest are `other`).
    pub fn refresh(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        let Inner {
            entries,
            pauses,
            tracked,
            exported,
        } = &mut *inner;
        for (destination, entry) in entries.iter_mut() {
            entry.roll_window(now);
            if !entry.quarantined && self.quarantine_due(entry, now) {
                entry.quarantined = true;
                self.log_quarantine(destination);
            }
        }
        entries.retain(|destination, entry| {
            let idle = entry.in_flight == 0
                && entry.held <= 0
                && entry.state(pauses.contains_key(&destination.id)) == State::Healthy
                && now.saturating_duration_since(entry.last_used) >= IDLE_FORGET;
            if idle {
                tracked.remove(&destination.id);
            }
            !idle
        });
        let mut states: HashMap<DestinationStateLabel, i64> = HashMap::new();
        let mut held: HashMap<String, i64> = HashMap::new();
        let mut ratios: HashMap<String, f64> = HashMap::new();
        for (destination, entry) in entries.iter() {
            let own = tracked.contains(&destination.id)
                || (tracked.len() < self.config.max_tracked
                    && tracked.insert(destination.id.clone()));
            let name = if own {
                destination.id.clone()
            } else {
                OTHER.to_owned()
            };
            let state = entry.state(pauses.contains_key(&destination.id));
            for candidate in State::ALL {
                let label = DestinationStateLabel {
                    destination: name.clone(),
                    kind: destination.kind.as_str(),
                    state: candidate.as_str(),
                };
                *states.entry(label).or_default() += i64::from(candidate == state);
            }
            let ratio = ratios.entry(name.clone()).or_default();
            *ratio = ratio.max(entry.rates.1.unwrap_or(0.0));
            *held.entry(name).or_default() += entry.held;
        }
        for stale in exported.iter().filter(|label| !states.contains_key(*label)) {
            self.metrics.destination_state.remove(stale);
            if !held.contains_key(&stale.destination) {
                let label = DestinationLabel {
                    destination: stale.destination.clone(),
                };
                self.metrics.held_actions.remove(&label);
                self.metrics.destination_error_ratio.remove(&label);
            }
        }
        for (label, value) in &states {
            self.metrics
                .destination_state
                .get_or_create(label)
                .set(*value);
        }
        for (destination, ratio) in ratios {
            self.metrics
                .destination_error_ratio
                .get_or_create(&DestinationLabel { destination })
                .set(ratio);
        }
        for (destination, value) in held {
            self.metrics
                .held_actions
                .get_or_create(&DestinationLabel { destination })
                .set(value);
        }
        *exported = states.into_keys().collect();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        // Abandoned before its outcome (the service is stopping): only the count ends.
        let mut inner = self.owner.lock();
        if let Some(entry) = inner.entries.get_mut(&self.destination) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests;
