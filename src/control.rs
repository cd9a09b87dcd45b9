//! Operator control of destinations across processes (SPEC §10), over two RabbitMQ streams.
//!
//! - `<prefix>.destinations`: `pause` and `resume` records. Every process follows it from its
//!   first record, so a pause reaches every running process at once (well within 5 s) and holds
//!   after a restart, with or without run history. A process starting up writes a `marker` and
//!   reads up to it before its worker consumes: it knows every pause before its first call.
//! - `<prefix>.destinations.status`: each process's view of its destinations, every 5 s, kept an
//!   hour; `switchyard destinations list` merges the last 15 s of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::{AmqpContext, BrokerError, Publisher};
use crate::config::Config;
use crate::destinations::{Destinations, Pause, State, Status};

/// How often a process publishes its destinations' status.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);
/// `destinations list` merges the status records of this last stretch.
pub const STATUS_FRESH: Duration = Duration::from_secs(15);
/// How long the follower waits before it tries the stream again.
const FOLLOW_RETRY: Duration = Duration::from_secs(5);
/// A reader that does not write a marker takes a stream this long quiet for its end...
const QUIET: Duration = Duration::from_millis(400);
/// ... and an empty stream for one that gave nothing this long.
const FIRST_WAIT: Duration = Duration::from_secs(2);
/// How long a reader waits for its own marker.
const MARKER_WAIT: Duration = Duration::from_secs(10);

/// One record of either stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    /// Hold a destination's actions.
    Pause {
        /// The destination id.
        destination: String,
        /// Reason, who and when.
        #[serde(flatten)]
        pause: Pause,
    },
    /// Release them (also ends a quarantine).
    Resume {
        /// The destination id.
        destination: String,
        /// Who resumed it.
        by: String,
        /// When (RFC 3339).
        at: String,
    },
    /// A reader's own record: everything before it has been read.
    Marker {
        /// The reader's random id.
        id: String,
    },
    /// One process's destinations.
    Status {
        /// `host/pid`.
        process: String,
        /// Its destinations.
        destinations: Vec<Status>,
    },
}

/// The streams' names.
#[derive(Debug, Clone)]
pub struct Streams {
    /// Pauses and resumes.
    pub control: String,
    /// Status records.
    pub status: String,
}

impl Streams {
    /// The names under this deployment's prefix.
    pub fn of(config: &Config) -> Streams {
        let topology = crate::broker::Topology::new(config);
        Streams {
            control: topology.destinations,
            status: topology.destinations_status,
        }
    }

    /// Declares both streams (idempotent).
    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        for (queue, age) in [(&self.control, None), (&self.status, Some("1h"))] {
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("stream".into()),
            );
            arguments.insert(
                "x-stream-max-segment-size-bytes".into(),
                AMQPValue::LongLongInt(1 << 20),
            );
            arguments.insert(
                "x-max-length-bytes".into(),
                AMQPValue::LongLongInt(64 << 20),
            );
            if let Some(age) = age {
                arguments.insert("x-max-age".into(), AMQPValue::LongString(age.into()));
            }
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    arguments,
                )
                .await
                .context(format!("declaring the stream {queue}"))?;
        }
        Ok(())
    }
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy)]
enum From {
    /// The first record kept.
    First,
    /// Records from this offset on.
    Offset(i64),
    /// Records written since this many seconds ago.
    Since(Duration),
}

impl From {
    fn argument(self) -> AMQPValue {
        match self {
            From::First => AMQPValue::LongString("first".into()),
            From::Offset(offset) => AMQPValue::LongLongInt(offset),
            From::Since(ago) => {
                let now = chrono::Utc::now().timestamp();
                let secs = now.saturating_sub(ago.as_secs() as i64).max(0);
                AMQPValue::Timestamp(secs as u64)
            }
        }
    }
}

/// Appends a record to a stream through `publisher` (persistent, confirmed).
pub async fn append(
    publisher: &Publisher,
    stream: &str,
    record: &Record,
) -> Result<(), BrokerError> {
    let body =
        serde_json::to_vec(record).map_err(|e| BrokerError::Refused(format!("{stream}: {e}")))?;
    let properties = BasicProperties::default().with_content_type("application/json".into());
    publisher.publish("", stream, &body, properties).await
}

/// A random id for a marker.
fn marker_id() -> String {
    use rand::Rng as _;
    format!("{:032x}", rand::rng().random::<u128>())
}

/// A consumer of a stream from `from`.
async fn consume(
    connection: &Connection,
    stream: &str,
    from: From,
) -> Result<(Channel, lapin::Consumer), BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a stream channel")?;
    channel
        .basic_qos(500, BasicQosOptions::default())
        .await
        .context("setting the stream prefetch")?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), from.argument());
    let consumer = channel
        .basic_consume(
            stream.into(),
            format!("switchyard-{}", marker_id()).into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .context(format!("following {stream}"))?;
    Ok((channel, consumer))
}

/// The offset a stream delivery carries.
fn offset_of(delivery: &lapin::message::Delivery) -> Option<i64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from("x-stream-offset"))? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// Reads a stream from `from` up to a marker this reader writes, in order.
async fn read_to_end(
    connection: &Connection,
    stream: &str,
    from: From,
) -> Result<Vec<Record>, BrokerError> {
    let writer = Publisher::open(connection).await?;
    let (channel, mut consumer) = consume(connection, stream, from).await?;
    let id = marker_id();
    append(&writer, stream, &Record::Marker { id: id.clone() }).await?;
    let mut records = Vec::new();
    let read = async {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.context(format!("reading {stream}"))?;
            let _ = delivery.ack(BasicAckOptions::default()).await;
            match serde_json::from_slice::<Record>(&delivery.data) {
                Ok(Record::Marker { id: seen }) if seen == id => return Ok(()),
                Ok(Record::Marker { .. }) => {}
                Ok(record) => records.push(record),
                Err(e) => warn!(stream, error = %e, "unreadable record skipped"),
            }
        }
        Err(BrokerError::ConsumerEnded(stream.to_owned()))
    };
    match tokio::time::timeout(MARKER_WAIT, read).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(BrokerError::Timeout {
                context: format!("reading {stream} to its end"),
                after: MARKER_WAIT,
            });
        }
    }
    crate::broker::close_channel(&channel, 200, "read").await;
    crate::broker::close_channel(writer.channel(), 200, "read").await;
    Ok(records)
}

/// Reads a stream from `from` until it has been quiet for [`QUIET`] (or gave nothing within
/// [`FIRST_WAIT`]), without writing to it: the control stream must hold pauses and resumes, not
/// a marker per page view (it is never aged out).
async fn read_until_quiet(
    connection: &Connection,
    stream: &str,
    from: From,
) -> Result<Vec<Record>, BrokerError> {
    let (channel, mut consumer) = consume(connection, stream, from).await?;
    let mut records = Vec::new();
    let started = std::time::Instant::now();
    let mut wait = FIRST_WAIT;
    loop {
        if started.elapsed() > MARKER_WAIT {
            crate::broker::close_channel(&channel, 200, "read").await;
            return Err(BrokerError::Timeout {
                context: format!("reading {stream} to its end"),
                after: MARKER_WAIT,
            });
        }
        let delivery = match tokio::time::timeout(wait, consumer.next()).await {
            Err(_) => break,
            Ok(None) => return Err(BrokerError::ConsumerEnded(stream.to_owned())),
            Ok(Some(delivery)) => delivery.context(format!("reading {stream}"))?,
        };
        wait = QUIET;
        let _ = delivery.ack(BasicAckOptions::default()).await;
        match serde_json::from_slice::<Record>(&delivery.data) {
            Ok(Record::Marker { .. }) => {}
            Ok(record) => records.push(record),
            Err(e) => warn!(stream, error = %e, "unreadable record skipped"),
        }
    }
    crate::broker::close_channel(&channel, 200, "read").await;
    Ok(records)
}

/// The pauses in force, from the control stream's records in order.
pub fn pauses(records: &[Record]) -> HashMap<String, Pause> {
    let mut pauses = HashMap::new();
    for record in records {
        match record {
            Record::Pause { destination, pause } => {
                pauses.insert(destination.clone(), pause.clone());
            }
            Record::Resume { destination, .. } => {
                pauses.remove(destination);
            }
            _ => {}
        }
    }
    pauses
}

/// Writes a pause or resume (`switchyard destinations pause|resume`).
pub async fn write(
    connection: &Connection,
    streams: &Streams,
    record: &Record,
) -> Result<(), BrokerError> {
    let publisher = Publisher::open(connection).await?;
    streams.declare(publisher.channel()).await?;
    append(&publisher, &streams.control, record).await?;
    crate::broker::close_channel(publisher.channel(), 200, "written").await;
    Ok(())
}

/// What `destinations list` shows: every process's fresh status merged with the pauses.
pub async fn list(connection: &Connection, streams: &Streams) -> Result<Vec<Status>, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    streams.declare(&channel).await?;
    crate::broker::close_channel(&channel, 200, "declared").await;
    let control = read_until_quiet(connection, &streams.control, From::First).await?;
    let status = read_to_end(connection, &streams.status, From::Since(STATUS_FRESH)).await?;
    let mut latest: HashMap<String, Vec<Status>> = HashMap::new();
    for record in status {
        if let Record::Status {
            process,
            destinations,
        } = record
        {
            latest.insert(process, destinations);
        }
    }
    Ok(merge(latest.into_values().flatten(), &pauses(&control)))
}

/// Merges several processes' views of their destinations: the worst state, summed rates and
/// counts; a pause in force wins.
pub fn merge(
    statuses: impl IntoIterator<Item = Status>,
    pauses: &HashMap<String, Pause>,
) -> Vec<Status> {
    let mut merged: HashMap<String, Status> = HashMap::new();
    let mut errors: HashMap<String, f64> = HashMap::new();
    for status in statuses {
        *errors.entry(status.id.clone()).or_default() +=
            status.error_ratio.unwrap_or(0.0) * status.calls_per_s;
        match merged.get_mut(&status.id) {
            None => {
                merged.insert(status.id.clone(), status);
            }
            Some(into) => {
                into.kind = into.kind.or(status.kind);
                into.state = into.state.max(status.state);
                into.calls_per_s += status.calls_per_s;
                into.in_flight += status.in_flight;
                into.held += status.held;
                into.holds += status.holds;
                into.error_ratio = into.error_ratio.or(status.error_ratio);
                if into.last_error.is_none() {
                    into.last_error = status.last_error;
                }
            }
        }
    }
    for status in merged.values_mut() {
        if status.calls_per_s > 0.0 {
            status.error_ratio = Some(errors[&status.id] / status.calls_per_s);
        }
        status.held = status.held.max(0);
        status.pause = pauses.get(&status.id).cloned();
        if status.pause.is_some() {
            status.state = State::Paused;
        } else if status.state == State::Paused {
            // A process's view from before the resume.
            status.state = State::Healthy;
        }
    }
    for (id, pause) in pauses {
        merged
            .entry(id.clone())
            .or_insert_with(|| Status::paused(id, pause));
    }
    let mut out: Vec<Status> = merged.into_values().collect();
    out.sort_by(|a, b| b.state.cmp(&a.state).then_with(|| a.id.cmp(&b.id)));
    out
}

/// Follows the control stream for a process, across its broker sessions.
#[derive(Debug)]
pub struct Follower {
    /// Where pauses are applied.
    destinations: Arc<Destinations>,
    /// The streams.
    streams: Streams,
    /// The next offset to read (after a reconnect); -1 before the first record.
    next: AtomicI64,
    /// `host/pid`, naming this process's status records.
    process: String,
}

impl Follower {
    /// A follower applying to `destinations`.
    pub fn new(config: &Config, destinations: Arc<Destinations>) -> Arc<Follower> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        Arc::new(Follower {
            destinations,
            streams: Streams::of(config),
            next: AtomicI64::new(-1),
            process: format!("{host}/{}", std::process::id()),
        })
    }

    /// Follows the control stream until `stop`; `caught_up` turns true once every record written
    /// before this session started is applied (the worker waits for it). A failure here never
    /// ends the broker session (delivery goes on, with the pauses known so far): it is logged
    /// and tried again.
    pub async fn run(
        self: Arc<Self>,
        connection: Arc<Connection>,
        caught_up: watch::Sender<bool>,
        stop: CancellationToken,
    ) -> Result<(), BrokerError> {
        loop {
            match self.clone().follow(&connection, &caught_up, &stop).await {
                Ok(()) => return Ok(()),
                Err(e) => warn!(
                    error = %e,
                    retry_in_ms = FOLLOW_RETRY.as_millis() as u64,
                    "cannot follow the destinations stream; pauses written meanwhile apply once it works again"
                ),
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(FOLLOW_RETRY) => {}
            }
        }
    }

    async fn follow(
        self: Arc<Self>,
        connection: &Connection,
        caught_up: &watch::Sender<bool>,
        stop: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let from = match self.next.load(Ordering::Relaxed) {
            -1 => From::First,
            next => From::Offset(next),
        };
        let setup = async {
            let writer = Publisher::open(connection).await?;
            self.streams.declare(writer.channel()).await?;
            let (channel, consumer) = consume(connection, &self.streams.control, from).await?;
            Ok::<_, BrokerError>((writer, channel, consumer))
        };
        let (writer, channel, mut consumer) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            ready = setup => ready?,
        };
        // The marker is written beside the loop, which sees it come by: under a broker alarm the
        // write waits, and a stop must not.
        let id = marker_id();
        let mut marker = {
            let (writer, stream) = (writer.clone(), self.streams.control.clone());
            let record = Record::Marker { id: id.clone() };
            tokio::spawn(async move {
                if let Err(e) = append(&writer, &stream, &record).await {
                    warn!(error = %e, "could not write the destinations stream's start marker");
                }
            })
        };
        let mut status = tokio::spawn(self.clone().publish_status(writer.clone(), stop.clone()));
        let result = loop {
            let delivery = tokio::select! {
                _ = stop.cancelled() => break Ok(()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => break Err(BrokerError::Amqp { context: "following the destinations stream".into(), source: e }),
                    None => break Err(BrokerError::ConsumerEnded(self.streams.control.clone())),
                },
            };
            if let Some(offset) = offset_of(&delivery) {
                self.next.store(offset + 1, Ordering::Relaxed);
            }
            if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                break Err(BrokerError::Amqp {
                    context: "acking a destinations record".into(),
                    source: e,
                });
            }
            match serde_json::from_slice::<Record>(&delivery.data) {
                Ok(Record::Pause { destination, pause }) => {
                    self.destinations.pause(&destination, pause);
                }
                Ok(Record::Resume {
                    destination, by, ..
                }) => {
                    self.destinations.resume(&destination, &by);
                }
                Ok(Record::Marker { id: seen }) if seen == id => {
                    debug!("destination pauses read to the end");
                    caught_up.send_replace(true);
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "unreadable destinations record skipped"),
            }
        };
        // On a stop, a record being written is let finish first: lapin sends a channel's close
        // ahead of publishes still queued, and the broker answers a publish on a channel it has
        // closed by closing the whole connection. Bounded: under a broker alarm it never does.
        let finished = async {
            let _ = (&mut marker).await;
            let _ = (&mut status).await;
        };
        if result.is_err()
            || tokio::time::timeout(crate::broker::CLOSE_TIMEOUT, finished)
                .await
                .is_err()
        {
            marker.abort();
            status.abort();
        }
        for channel in [&channel, writer.channel()] {
            crate::broker::close_channel(channel, 200, "stopping").await;
        }
        result
    }

    /// Publishes this process's destinations every [`STATUS_EVERY`] (best effort: a failure is
    /// logged, and the next one tries again).
    async fn publish_status(self: Arc<Self>, publisher: Publisher, stop: CancellationToken) {
        let mut every = tokio::time::interval(STATUS_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let destinations = self.destinations.statuses();
            if destinations.is_empty() {
                continue;
            }
            let record = Record::Status {
                process: self.process.clone(),
                destinations,
            };
            if let Err(e) = append(&publisher, &self.streams.status, &record).await {
                debug!(error = %e, "could not publish the destinations' status");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, state: State, calls: f64, ratio: Option<f64>, held: i64) -> Status {
        Status {
            id: id.into(),
            kind: Some(crate::destinations::Kind::Host),
            state,
            calls_per_s: calls,
            error_ratio: ratio,
            in_flight: 1,
            held,
            holds: 0,
            last_error: None,
            pause: None,
        }
    }

    #[test]
    fn merging_takes_the_worst_state_sums_counts_and_lets_the_stream_decide_pauses() {
        let pause = Pause {
            reason: "maintenance".into(),
            by: "alice".into(),
            at: "2026-12-06T00:00:00Z".into(),
        };
        let records = vec![
            Record::Pause {
                destination: "crm".into(),
                pause: pause.clone(),
            },
            Record::Pause {
                destination: "old".into(),
                pause: pause.clone(),
            },
            Record::Resume {
                destination: "old".into(),
                by: "bob".into(),
                at: "2026-12-06T01:00:00Z".into(),
            },
        ];
        let pauses = pauses(&records);
        assert_eq!(pauses.keys().collect::<Vec<_>>(), vec!["crm"]);
        let merged = merge(
            [
                status("a:1", State::Healthy, 10.0, Some(0.0), 0),
                status("a:1", State::Open, 30.0, Some(0.5), 4),
                status("old", State::Paused, 0.0, None, 2),
            ],
            &pauses,
        );
        let by_id: HashMap<&str, &Status> = merged.iter().map(|s| (s.id.as_str(), s)).collect();
        let a = by_id["a:1"];
        assert_eq!(a.state, State::Open);
        assert_eq!(a.calls_per_s, 40.0);
        assert_eq!(a.in_flight, 2);
        assert_eq!(a.held, 4);
        assert_eq!(a.error_ratio, Some(15.0 / 40.0));
        assert_eq!(by_id["old"].state, State::Healthy, "resumed since");
        assert_eq!(by_id["crm"].state, State::Paused);
        assert_eq!(by_id["crm"].pause.as_ref(), Some(&pause));
        assert_eq!(merged[0].id, "crm", "the worst first");
    }
}
