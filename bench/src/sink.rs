//! The fast local sink: counts each action's arrival once and records its latency from the
//! publish time the event carried (`data.sent_at_us`, echoed by the workflow body).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::Value;

use crate::event::now_us;

/// How often [`Sink::wait`] looks at the counters. The end of a phase is the recorded time of
/// its last arrival, so this only adds to the bench's run time, not to what it measures.
const POLL: Duration = Duration::from_millis(20);

/// What the handler records.
struct Arrivals {
    /// Calls per event (`--actions-per-event`): call `k` of event `seq` is slot `seq × fanout + k`.
    fanout: u64,
    /// Per call: latency in µs plus one, 0 until it arrives.
    latency: Vec<AtomicU64>,
    /// Per call: when it first arrived (µs since the epoch), 0 until it does.
    at: Vec<AtomicU64>,
    /// Arrivals of an event that had arrived already (at-least-once redeliveries).
    duplicates: AtomicU64,
    /// Requests whose body did not carry a known `seq` and `sent_at_us`.
    unreadable: AtomicU64,
    /// The latest arrival time (µs since the epoch).
    last_us: AtomicU64,
}

/// A running sink.
pub struct Sink {
    /// Shared with the handler.
    arrivals: Arc<Arrivals>,
    /// Where it listens.
    addr: SocketAddr,
    /// Events whose `seq` is a multiple of this never come here (another server takes them: the
    /// isolation bench's bad destination); 0: every event comes.
    skip_every: u64,
}

/// A phase's arrivals, once complete.
#[derive(Debug, Clone, Copy)]
pub struct Arrived {
    /// When the last of them arrived (µs since the epoch).
    pub last_arrival_us: u64,
}

/// How waiting for a phase ended.
#[derive(Debug)]
pub enum Wait {
    /// Every event of the range arrived.
    Done(Arrived),
    /// Nothing arrived for `stalled_for`.
    Stalled {
        /// How many did arrive.
        arrived: u64,
        /// How many were expected.
        expected: u64,
        /// How long nothing arrived.
        stalled_for: Duration,
    },
    /// The service process is gone.
    ServiceExited {
        /// How many did arrive.
        arrived: u64,
        /// How many were expected.
        expected: u64,
    },
}

impl Sink {
    /// Starts on 127.0.0.1 (a free port) for events numbered `0..capacity`, each making
    /// `fanout` calls (the body's `k`, 0 to `fanout - 1`).
    pub async fn start(capacity: u64, fanout: u64) -> anyhow::Result<Sink> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the sink")?;
        Sink::start_on(vec![listener], capacity, fanout, 0).await
    }

    /// [`Sink::start`] on every one of `listeners` (one counter behind several destinations),
    /// expecting no event whose `seq` is a multiple of `skip_every` (0: none skipped).
    pub async fn start_on(
        listeners: Vec<std::net::TcpListener>,
        capacity: u64,
        fanout: u64,
        skip_every: u64,
    ) -> anyhow::Result<Sink> {
        let fanout = fanout.max(1);
        let arrivals = Arc::new(Arrivals {
            fanout,
            latency: (0..capacity * fanout).map(|_| AtomicU64::new(0)).collect(),
            at: (0..capacity * fanout).map(|_| AtomicU64::new(0)).collect(),
            duplicates: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
        });
        let mut addr = None;
        let app = Router::new().fallback(receive).with_state(arrivals.clone());
        for listener in listeners {
            listener
                .set_nonblocking(true)
                .context("a non-blocking sink socket")?;
            addr.get_or_insert(listener.local_addr().context("the sink's address")?);
            let listener =
                tokio::net::TcpListener::from_std(listener).context("serving the sink")?;
            let app = app.clone();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    eprintln!("bench: the sink stopped: {e}");
                }
            });
        }
        let addr = addr.context("the sink needs a listener")?;
        Ok(Sink {
            arrivals,
            addr,
            skip_every,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The slots of the calls of events `range`.
    fn slots(&self, range: Range<u64>) -> &[AtomicU64] {
        let fanout = self.arrivals.fanout;
        &self.arrivals.latency[(range.start * fanout) as usize..(range.end * fanout) as usize]
    }

    /// Whether event `seq` comes to this sink.
    fn expects(&self, seq: u64) -> bool {
        self.skip_every == 0 || !seq.is_multiple_of(self.skip_every)
    }

    /// The calls of the events of `range` this sink expects, with their slots.
    fn expected_slots(&self, range: Range<u64>) -> impl Iterator<Item = &AtomicU64> {
        let fanout = self.arrivals.fanout as usize;
        let start = range.start;
        self.slots(range)
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.expects(start + (*i / fanout) as u64))
            .map(|(_, slot)| slot)
    }

    /// How many calls of the events of `range` have arrived.
    fn arrived(&self, range: Range<u64>) -> u64 {
        self.expected_slots(range)
            .filter(|l| l.load(Ordering::Relaxed) != 0)
            .count() as u64
    }

    /// Waits until every call of the events of `range` has arrived, nothing arrives for `stall`,
    /// or `alive()` says the service is gone.
    pub async fn wait(&self, range: Range<u64>, stall: Duration, alive: impl Fn() -> bool) -> Wait {
        let expected = self.expected_slots(range.clone()).count() as u64;
        let mut seen = 0;
        let mut progress = Instant::now();
        loop {
            let arrived = self.arrived(range.clone());
            if arrived == expected {
                return Wait::Done(Arrived {
                    last_arrival_us: self.arrivals.last_us.load(Ordering::Relaxed),
                });
            }
            if arrived > seen {
                seen = arrived;
                progress = Instant::now();
            } else if progress.elapsed() >= stall {
                return Wait::Stalled {
                    arrived,
                    expected,
                    stalled_for: progress.elapsed(),
                };
            }
            if !alive() {
                return Wait::ServiceExited { arrived, expected };
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The latencies (µs) of the calls of the events of `range` that arrived.
    pub fn latencies_us(&self, range: Range<u64>) -> Vec<u64> {
        self.expected_slots(range)
            .map(|l| l.load(Ordering::Relaxed))
            .filter(|&l| l != 0)
            .map(|l| l - 1)
            .collect()
    }

    /// How many of the calls of `range` this sink expects first arrived in each `bucket` from
    /// `from_us` (µs since the epoch) on: a stall shows as a run of small counts.
    pub fn arrivals_per(&self, range: Range<u64>, from_us: u64, bucket: Duration) -> Vec<u64> {
        let fanout = self.arrivals.fanout as usize;
        let width = (bucket.as_micros() as u64).max(1);
        let mut counts = Vec::new();
        let at = &self.arrivals.at[(range.start as usize * fanout)..(range.end as usize * fanout)];
        for (i, slot) in at.iter().enumerate() {
            let seq = range.start + (i / fanout) as u64;
            let t = slot.load(Ordering::Relaxed);
            if t == 0 || !self.expects(seq) {
                continue;
            }
            let k = (t.saturating_sub(from_us) / width) as usize;
            if counts.len() <= k {
                counts.resize(k + 1, 0);
            }
            counts[k] += 1;
        }
        counts
    }

    /// The latency (µs) of event `seq`'s first call, if it arrived.
    pub fn latency_us(&self, seq: u64) -> Option<u64> {
        let stored = self
            .arrivals
            .latency
            .get((seq * self.arrivals.fanout) as usize)?
            .load(Ordering::Relaxed);
        stored.checked_sub(1)
    }

    /// Events that arrived more than once, and requests the sink could not read.
    pub fn duplicates(&self) -> (u64, u64) {
        (
            self.arrivals.duplicates.load(Ordering::Relaxed),
            self.arrivals.unreadable.load(Ordering::Relaxed),
        )
    }
}

/// Records one arrival; always answers 200 so that nothing is retried.
async fn receive(State(arrivals): State<Arc<Arrivals>>, body: Bytes) -> impl IntoResponse {
    let now = now_us();
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let field = |name: &str| parsed.as_ref().and_then(|v| number(v.get(name)?));
    let call = field("k").unwrap_or(0);
    let index = field("seq")
        .filter(|_| call < arrivals.fanout)
        .map(|seq| (seq * arrivals.fanout + call) as usize);
    let slot = index.and_then(|i| arrivals.latency.get(i));
    match (slot, field("sent_at_us")) {
        (Some(slot), Some(sent)) => {
            let latency = now.saturating_sub(sent) + 1;
            // The first arrival's latency counts; a repeat is only counted.
            if slot
                .compare_exchange(0, latency, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                arrivals.duplicates.fetch_add(1, Ordering::Relaxed);
            } else if let Some(at) = index.and_then(|i| arrivals.at.get(i)) {
                at.store(now, Ordering::Relaxed);
            }
            arrivals.last_us.fetch_max(now, Ordering::Relaxed);
        }
        _ => {
            arrivals.unreadable.fetch_add(1, Ordering::Relaxed);
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"ok\":true}",
    )
}

/// A JSON number, or a string holding one (in case a template renders it as text).
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}
