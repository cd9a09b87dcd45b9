//! The router: one event in, one confirmed message per matching action out, then the ack.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use tracing::{debug, error, warn};

use crate::broker::acks::Acks;
use crate::broker::message::{ActionMessageRef, EventJson};
use crate::broker::{AmqpContext, BrokerError, PendingConfirm, Publisher, set_str};
use crate::delivery;
use crate::event::{Event, Rejection};
use crate::history::{self, EventRecord};
use crate::shared::Shared;
use crate::telemetry::{ConnectorLabel, ReasonLabel, TypeLabel};
use crate::trace::TraceContext;

/// The action id webhook deliveries use (its home is the plan).
pub use crate::delivery::WEBHOOK_ACTION;

/// Consumes the router queue until `stop`; returns an error when the channel fails.
pub async fn run(
    app: Arc<Shared>,
    connection: Arc<Connection>,
    publisher: Publisher,
    stop: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .context("opening the router channel")?;
    channel
        .basic_qos(app.config.router.prefetch, BasicQosOptions::default())
        .await
        .context("setting the router prefetch")?;
    let mut consumer = channel
        .basic_consume(
            app.topology.router.as_str().into(),
            ROUTER_CONSUMER.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context(format!("consuming {}", app.topology.router))?;
    let acks = Acks::spawn(
        &tracker,
        &app.faults,
        channel.clone(),
        "router",
        app.config.router.prefetch,
    );
    // A task that could not publish reports here (the channel is gone), or whose messages have been
    // refused for Refusal::RECONNECT_AFTER: the session must restart.
    let (failed_tx, mut failed) = tokio::sync::mpsc::channel::<BrokerError>(1);
    let linger = Linger::new(app.config.router.publish_linger);
    let ended = loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            Some(e) = failed.recv() => break Err(e),
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => {
                break Err(BrokerError::Amqp {
                    context: "router consumer".into(),
                    source: e,
                });
            }
            None => break Err(BrokerError::ConsumerEnded(app.topology.router.clone())),
        };
        // Each event in its own task (at most router.prefetch): a publish waits for lapin to
        // write it, and this loop must not wait on that round trip once per event.
        let (app, publisher, acks, failed_tx, linger) = (
            app.clone(),
            publisher.clone(),
            acks.clone(),
            failed_tx.clone(),
            linger.clone(),
        );
        // The event's trace (or a new one), and the router's span in it: the parent of every
        // action message and, through them, of every outbound call.
        let trace = TraceContext::of_event(delivery.properties.headers().as_ref()).child();
        let span = tracing::info_span!("event", trace_id = %trace.trace_id());
        let faults = app.faults.clone();
        tracker.spawn(
            faults.guard(
                "router event",
                async move {
                    match route(&app, &publisher, &linger, &delivery, &trace).await {
                        Ok(routed) => settle(&app, &acks, &failed_tx, delivery, routed).await,
                        Err(e) => {
                            // Whatever it published is repeated when the event comes back.
                            acks.requeue(delivery);
                            let _ = failed_tx.try_send(e);
                        }
                    }
                }
                .instrument(span),
            ),
        );
    };
    // A clean stop (the session closes this channel, then the connection); after a failure the
    // session closes the connection as it is.
    if ended.is_ok() {
        crate::broker::cancel_consumer(&channel, ROUTER_CONSUMER).await;
    }
    ended
}

/// The router's consumer tag.
const ROUTER_CONSUMER: &str = "switchyard-router";

/// Lets the action messages of events that arrive close together reach the broker together.
///
/// At a steady trickle every publish is its own write, and every write its own round of work
/// in the broker (channel, queue, write-ahead log) and of thread wake-ups here, which made the
/// broker spend twice as much CPU per message at half speed as at full speed. So the periods of
/// `router.publish_linger` are counted from a common origin, and each period gets one write at
/// its start: the first event ready in a period that has had none publishes at once; an event
/// ready in a period that has had its write waits for the next boundary, with every other such
/// event, so they wake in the same timer tick and lapin writes their frames in one go. A lone
/// event (less than one per period) never waits; in a busy stream the wait is at most one period
/// (1 ms by default), before the first publish only.
#[derive(Debug, Clone)]
struct Linger {
    /// Where the periods are counted from.
    origin: Instant,
    /// `router.publish_linger` in nanoseconds; zero publishes at once.
    period_ns: u64,
    /// The last period (numbered from 1 since the origin) that has had, or has been promised,
    /// its write; 0 before the first.
    claimed: Arc<AtomicU64>,
}

impl Linger {
    fn new(period: Duration) -> Linger {
        Linger {
            origin: Instant::now(),
            period_ns: u64::try_from(period.as_nanos()).unwrap_or(u64::MAX),
            claimed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Waits until this event may publish.
    async fn wait(&self) {
        let now = Instant::now();
        if let Some(wait) = self.delay(now - self.origin) {
            tokio::time::sleep_until(now + wait).await;
        }
    }

    /// How long an event ready `elapsed` after the origin waits: `None` when its period has had
    /// no write yet (it is that write), else until the next boundary (the next period's write).
    fn delay(&self, elapsed: Duration) -> Option<Duration> {
        if self.period_ns == 0 {
            return None;
        }
        let elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let period = elapsed_ns / self.period_ns + 1;
        let before = self.claimed.fetch_max(period, Ordering::Relaxed);
        if before < period {
            return None;
        }
        // This period has its write: join the one promised to the next (the claim never runs
        // further ahead than that, as only a waiting event makes it).
        let next = period + 1;
        self.claimed.fetch_max(next, Ordering::Relaxed);
        Some(Duration::from_nanos(
            (next - 1).saturating_mul(self.period_ns) - elapsed_ns,
        ))
    }
}

/// What routing an event produced: confirms to wait for before the ack.
struct Routed {
    /// The event id, for logs (empty for rejected events).
    event_id: String,
    /// (connector, confirm) per action message; the rejected copy has connector "".
    pending: Vec<(&'static str, PendingConfirm)>,
}

/// Validates and matches one event, and publishes its action messages (confirms pending).
async fn route(
    app: &Shared,
    publisher: &Publisher,
    linger: &Linger,
    delivery: &Delivery,
    trace: &TraceContext,
) -> Result<Routed, BrokerError> {
    let event = match Event::parse(&delivery.data, app.config.router.max_event_bytes) {
        Ok(event) => event,
        Err(rejection) => return reject(app, publisher, delivery, &rejection).await,
    };
    if app.history.enabled() {
        app.history.event(EventRecord {
            event_id: Some(event.id.clone()),
            event_type: Some(event.kind.name.to_owned()),
            workspace: Some(event.workspace.clone()),
            received_at: chrono::Utc::now(),
            rejected: None,
            // The message's own text when nothing was rewritten (it parsed as JSON, so it is
            // UTF-8): a copy instead of serialising the event again.
            payload: app.history.store_payloads().then(|| {
                if event.verbatim {
                    history::record::text_lossy(&delivery.data)
                } else {
                    event.body().to_string()
                }
            }),
            trace_id: history::record::trace_id(delivery.properties.headers().as_ref()),
        });
    }
    app.metrics
        .events_received
        .get_or_create(&TypeLabel {
            r#type: event.kind.name,
        })
        .inc();
    let catalog = app.catalog.load();
    let plan = delivery::plan(&catalog, &event);
    for not_run in &plan.not_run {
        match &not_run.error {
            None => {
                debug!(event_id = %event.id, workflow = %not_run.workflow, "trigger condition is false");
            }
            Some(e) => {
                warn!(event_id = %event.id, workflow = %not_run.workflow, error = %e, "trigger condition failed to evaluate; workflow not run");
            }
        }
    }
    let mut pending = Vec::with_capacity(plan.actions.len());
    // Taken by the first publish: an event that matches nothing does not wait.
    let mut linger = Some(linger);
    // Nothing in the envelope was rewritten: its bytes go into the messages as they came.
    let json = if event.verbatim {
        EventJson::Verbatim(&delivery.data)
    } else {
        EventJson::Value(event.body())
    };
    for planned in &plan.actions {
        let message = planned.message(&event.workspace, json, None);
        let confirm = send(app, publisher, &mut linger, &message, &event.id, trace).await?;
        pending.push((planned.connector, confirm));
    }
    if pending.is_empty() {
        app.metrics.events_unmatched.inc();
        debug!(event_id = %event.id, r#type = event.kind.name, "event matched no workflow or webhook");
    }
    Ok(Routed {
        event_id: event.id,
        pending,
    })
}

async fn send(
    app: &Shared,
    publisher: &Publisher,
    linger: &mut Option<&Linger>,
    message: &ActionMessageRef<'_>,
    event_id: &str,
    trace: &TraceContext,
) -> Result<PendingConfirm, BrokerError> {
    let (body, properties) = message.encode(event_id, trace);
    if let Some(linger) = linger.take() {
        linger.wait().await;
    }
    publisher
        .send(&app.topology.actions, message.connector, &body, properties)
        .await
}

/// Copies a bad event to `events.rejected` with its reason.
async fn reject(
    app: &Shared,
    publisher: &Publisher,
    delivery: &Delivery,
    rejection: &Rejection,
) -> Result<Routed, BrokerError> {
    app.metrics
        .events_rejected
        .get_or_create(&ReasonLabel {
            reason: rejection.label(),
        })
        .inc();
    let reason = rejection.to_string();
    warn!(reason = %reason, label = rejection.label(), "event rejected");
    if app.history.enabled() {
        app.history.event(rejected_record(
            delivery,
            &reason,
            app.history.store_payloads(),
        ));
    }
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    set_str(&mut headers, "x-switchyard-reason", reason.as_str());
    set_str(
        &mut headers,
        "x-switchyard-rejected-at",
        chrono::Utc::now().to_rfc3339().as_str(),
    );
    let mut properties = BasicProperties::default().with_headers(headers);
    if let Some(content_type) = delivery.properties.content_type() {
        properties = properties.with_content_type(content_type.clone());
    }
    let pending = publisher
        .send("", &app.topology.rejected, &delivery.data, properties)
        .await?;
    Ok(Routed {
        event_id: String::new(),
        pending: vec![("", pending)],
    })
}

/// What history keeps of a rejected message: whatever of the envelope could be read.
fn rejected_record(delivery: &Delivery, reason: &str, store_payloads: bool) -> EventRecord {
    let json = serde_json::from_slice::<serde_json::Value>(&delivery.data).ok();
    let field = |key: &str| {
        json.as_ref()
            .and_then(|j| j.get(key))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    EventRecord {
        event_id: field("id"),
        event_type: field("type"),
        workspace: json
            .as_ref()
            .and_then(|j| j.pointer("/workspace/id"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        received_at: chrono::Utc::now(),
        rejected: Some(reason.to_owned()),
        payload: store_payloads.then(|| history::record::storable_bytes(&delivery.data)),
        trace_id: history::record::trace_id(delivery.properties.headers().as_ref()),
    }
}

/// Waits for every confirm, then acks the event; on a refusal, hands the event back after the
/// wait of [`Refusals`](crate::broker::acks::Refusals).
async fn settle(
    app: &Shared,
    acks: &Acks,
    failed: &tokio::sync::mpsc::Sender<BrokerError>,
    delivery: Delivery,
    routed: Routed,
) {
    let mut refused = None;
    for (connector, pending) in routed.pending {
        match Publisher::confirmed(pending, connector).await {
            Ok(()) if !connector.is_empty() => {
                app.metrics
                    .actions_enqueued
                    .get_or_create(&ConnectorLabel { connector })
                    .inc();
            }
            Ok(()) => {}
            Err(e) => refused = Some(e),
        }
    }
    match refused {
        None => acks.ack(delivery),
        Some(e) => {
            let refusal = acks.refused();
            let wait = refusal.wait;
            error!(event_id = %routed.event_id, error = %e, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "an action message was not confirmed; the event goes back to the queue after a wait");
            // Once per session: the first report ends it.
            if refusal.calls_for_a_new_session() && failed.try_send(e).is_ok() {
                warn!(
                    refused_for_s = refusal.lasted.as_secs(),
                    "the broker has refused the router's messages with no success for a while; starting a new session (a new connection, the next node first)"
                );
            }
            tokio::time::sleep(wait).await;
            acks.requeue(delivery);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_event_publishes_at_once_and_a_busy_period_waits_for_the_next_boundary() {
        let us = Duration::from_micros;
        let linger = Linger::new(Duration::from_millis(1));
        // The first event of period [4 ms, 5 ms) goes at once; the others of that period wait
        // for 5 ms together.
        assert_eq!(linger.delay(us(4_100)), None);
        assert_eq!(linger.delay(us(4_300)), Some(us(700)));
        assert_eq!(linger.delay(us(4_999)), Some(us(1)));
        // The period [5 ms, 6 ms) has its write at 5 ms (the events above): its events wait too.
        assert_eq!(linger.delay(us(5_000)), Some(us(1_000)));
        assert_eq!(linger.delay(us(5_600)), Some(us(400)));
        // The 6 ms write was period [6 ms, 7 ms)'s; [7 ms, 8 ms) has had none, so its first event
        // goes at once and the next waits for 8 ms.
        assert_eq!(linger.delay(us(7_200)), None);
        assert_eq!(linger.delay(us(7_900)), Some(us(100)));
        // An event a period later than the last write goes at once again.
        assert_eq!(linger.delay(us(9_000)), None);
    }

    #[test]
    fn a_zero_linger_never_waits() {
        let linger = Linger::new(Duration::ZERO);
        for ms in [0, 0, 1, 1, 1] {
            assert_eq!(linger.delay(Duration::from_millis(ms)), None);
        }
    }

    /// At a steady 3 events per period, each period has one write: a promised boundary.
    #[test]
    fn a_steady_stream_writes_once_per_period() {
        let linger = Linger::new(Duration::from_millis(1));
        let mut writes = std::collections::BTreeSet::new();
        for i in 0..300u64 {
            let elapsed = Duration::from_micros(100 + i * 333);
            let at = elapsed + linger.delay(elapsed).unwrap_or_default();
            writes.insert(at);
        }
        // 100 periods, one write each (the first event's, at once, then one per boundary).
        assert!(writes.len() <= 101, "{} writes", writes.len());
        assert!(writes.len() >= 99, "{} writes", writes.len());
    }
}
