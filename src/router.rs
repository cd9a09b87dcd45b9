//! The router: one event in, one confirmed message per matching action out, then the ack.

use std::sync::Arc;
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
use crate::broker::message::ActionMessageRef;
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
        let (app, publisher, acks, failed_tx) = (
            app.clone(),
            publisher.clone(),
            acks.clone(),
            failed_tx.clone(),
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
                    match route(&app, &publisher, linger, &delivery, &trace).await {
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
/// broker spend twice as much CPU per message at half speed as at full speed. So an event's
/// messages wait for the next multiple of `router.publish_linger` counted from a common origin:
/// the tasks waiting for one boundary wake in the same timer tick and lapin writes their frames in
/// one go. The wait is at most one period (1 ms by default), before the first publish only.
#[derive(Debug, Clone, Copy)]
struct Linger {
    /// Where the periods are counted from.
    origin: Instant,
    /// `router.publish_linger`; zero publishes at once.
    period: Duration,
}

impl Linger {
    fn new(period: Duration) -> Linger {
        Linger {
            origin: Instant::now(),
            period,
        }
    }

    /// Waits until the next boundary.
    async fn wait(self) {
        let now = Instant::now();
        if let Some(wait) = until_next_boundary(now - self.origin, self.period) {
            tokio::time::sleep_until(now + wait).await;
        }
    }
}

/// How long from `elapsed` (since the origin) to the next multiple of `period`; `None` for a zero
/// period. A time on a boundary waits for the next one, so the wait is in (0, period].
fn until_next_boundary(elapsed: Duration, period: Duration) -> Option<Duration> {
    let period_ns = period.as_nanos();
    if period_ns == 0 {
        return None;
    }
    let elapsed_ns = elapsed.as_nanos();
    let next = (elapsed_ns / period_ns + 1) * period_ns;
    Some(Duration::from_nanos(
        u64::try_from(next - elapsed_ns).unwrap_or(u64::MAX),
    ))
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
    linger: Linger,
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
                    String::from_utf8_lossy(&delivery.data).into_owned()
                } else {
                    event.body.to_string()
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
    for planned in &plan.actions {
        let message = planned.message(&event.workspace, &event.body, None);
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
    linger: &mut Option<Linger>,
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
    fn the_linger_waits_for_the_next_boundary() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let cases = [
            // (elapsed, period, wait)
            (ms(0), ms(2), Some(ms(2))),
            (us(300), ms(2), Some(us(1700))),
            (us(1999), ms(2), Some(us(1))),
            (ms(2), ms(2), Some(ms(2))),
            (ms(4001), ms(2), Some(ms(1))),
            (ms(5), Duration::ZERO, None),
        ];
        for (elapsed, period, wait) in cases {
            assert_eq!(
                until_next_boundary(elapsed, period),
                wait,
                "{elapsed:?} with a period of {period:?}"
            );
        }
    }

    /// Events arriving within one period are published at the same boundary.
    #[test]
    fn events_in_one_period_share_a_boundary() {
        let period = Duration::from_millis(2);
        let boundary =
            |elapsed: Duration| elapsed + until_next_boundary(elapsed, period).unwrap_or_default();
        let first = boundary(Duration::from_micros(4_100));
        assert_eq!(first, Duration::from_millis(6));
        assert_eq!(boundary(Duration::from_micros(5_900)), first);
        assert_ne!(boundary(Duration::from_micros(6_000)), first);
    }
}
