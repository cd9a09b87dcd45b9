//! The worker: one action message in, one call out, and an outcome made durable before the ack
//! (success, a confirmed retry message, or a confirmed dead-letter record).

mod recorder;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures::StreamExt;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use tracing::{debug, info, warn};

use self::recorder::Recorder;
use crate::broker::acks::Acks;
use crate::broker::message::{
    self, ActionMessage, Attempts, EventJson, H_HELD, H_HELD_FOR, H_LAST_STATUS, H_REASON,
    action_id,
};
use crate::broker::{
    AmqpContext, BrokerError, Publisher, RETRY_TIER_HEADER, header_int, header_str, set_int,
    set_str,
};
use crate::connectors::bulkhead::{WORKER_SLOT, WorkerSlot};
use crate::connectors::{Call, Target};
use crate::delivery::dead_letter::{self, Origin};
use crate::delivery::{Decision, Delay, RetryPolicy, decide, dependents, quick_retries, retry_now};
use crate::destinations::{Destination, Hold};
use crate::history::RunOutcome;
use crate::outcome::{ErrorClass, Failure, Outcome};
use crate::shared::Shared;
use crate::telemetry::{ConnectorLabel, DeadLabel};
use crate::template::{Context, EventRef, PartialEvent, SecretsView};
use crate::trace::{self, TraceContext};
use crate::workflow::{Action, Catalog, Workflow};

/// Consumes the configured action queues until `stop`.
pub async fn run(
    app: Arc<Shared>,
    connection: Arc<Connection>,
    publisher: Publisher,
    stop: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), BrokerError> {
    let permits = Arc::new(Semaphore::new(app.config.worker.concurrency));
    let mut streams = Vec::new();
    // Each consumer's channel and tag, to cancel it on a clean stop (`broker::cancel_consumer`).
    let mut consumers = Vec::new();
    for name in &app.config.worker.connectors {
        let Some(&(connector, ref queue)) =
            app.topology.action_queues.iter().find(|(c, _)| c == name)
        else {
            continue;
        };
        let channel = connection
            .create_channel()
            .await
            .context("opening a worker channel")?;
        channel
            .basic_qos(app.config.worker.prefetch, BasicQosOptions::default())
            .await
            .context("setting the worker prefetch")?;
        let tag = format!("switchyard-worker-{connector}");
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context(format!("consuming {queue}"))?;
        consumers.push((channel.clone(), tag));
        let acks = Acks::spawn(
            &tracker,
            &app.faults,
            channel,
            connector,
            app.config.worker.prefetch,
        );
        streams.push(consumer.map(move |d| (connector, acks.clone(), d)).boxed());
    }
    let mut deliveries = futures::stream::select_all(streams);
    let ended = loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break Ok(()),
            },
        };
        let next = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            next = deliveries.next() => next,
        };
        let (connector, acks, delivery) = match next {
            Some((connector, acks, Ok(delivery))) => (connector, acks, delivery),
            Some((connector, _, Err(e))) => {
                break Err(BrokerError::Amqp {
                    context: format!("{connector} consumer"),
                    source: e,
                });
            }
            None => break Err(BrokerError::ConsumerEnded("action queues".into())),
        };
        let slot = WorkerSlot::new(permits.clone(), permit, stop.clone());
        // The action's trace (SPEC §12); a message from before trace context starts one.
        let trace = message::trace(delivery.properties.headers().as_ref())
            .unwrap_or_else(TraceContext::root);
        let span = tracing::info_span!("action", trace_id = %trace.trace_id());
        let job = Job {
            app: app.clone(),
            publisher: publisher.clone(),
            connector,
            acks,
            slot: slot.clone(),
            trace: trace.clone(),
        };
        // The slot goes with the job's task: the HTTP client gives it back while the job waits
        // for a busy host (connectors::bulkhead). So does the trace: every call the job makes
        // sends it, with a span of its own. The job's future (the HTTP call's state included) is
        // boxed where it is made: each wrapper and the spawn would otherwise copy all of it.
        tracker.spawn(
            app.faults.guard(
                "worker job",
                WORKER_SLOT
                    .scope(
                        slot,
                        trace::CURRENT.scope(trace, Box::pin(job.process(delivery))),
                    )
                    .instrument(span),
            ),
        );
    };
    // A clean stop: every consumer cancelled before its channel closes (after a failure the
    // session closes the connection as it is).
    if ended.is_ok() {
        let cancels = consumers
            .iter()
            .map(|(channel, tag)| crate::broker::cancel_consumer(channel, tag));
        futures::future::join_all(cancels).await;
    }
    ended
}

/// One delivery being processed.
struct Job {
    /// Shared state.
    app: Arc<Shared>,
    /// For dependents, retries and dead-letters.
    publisher: Publisher,
    /// The queue it came from.
    connector: &'static str,
    /// Settles the delivery on its channel.
    acks: Acks,
    /// The worker slot the job holds (released when the job ends).
    slot: Arc<WorkerSlot>,
    /// The action's trace: carried to its dependents and named in its dead letter.
    trace: TraceContext,
}

/// How a delivery ends.
enum Settle {
    /// The outcome is durable: ack.
    Ack,
    /// Hand it back to the queue (the outcome could not be made durable).
    Requeue(BrokerError),
    /// Hand it back to the queue untried: the service is stopping.
    Untried,
}

impl Job {
    async fn process(self, delivery: Delivery) {
        match self.handle(&delivery).await {
            Settle::Ack => self.acks.ack(delivery),
            Settle::Requeue(e) => {
                let wait = self.acks.refused().wait;
                warn!(connector = self.connector, error = %e, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "could not record the outcome; the action goes back to its queue after a wait");
                tokio::time::sleep(wait).await;
                self.acks.requeue(delivery);
            }
            Settle::Untried => {
                debug!(
                    connector = self.connector,
                    "stopping before the call; the action goes back to its queue"
                );
                self.acks.requeue(delivery);
            }
        }
    }

    async fn handle(&self, delivery: &Delivery) -> Settle {
        let headers = delivery.properties.headers().as_ref();
        let attempts = Attempts::from_headers(headers);
        // Back from a hold (SPEC §10): no longer waiting on the broker.
        if let Some(held) = header_str(headers, H_HELD_FOR).and_then(Destination::from_header) {
            self.app.connectors.http.destinations().held(&held, -1);
        }
        let catalog = self.app.catalog.load();
        let raw: ActionMessage<&RawValue> = match serde_json::from_slice(&delivery.data) {
            Ok(raw) => raw,
            Err(e) => return self.unreadable(delivery, &e, attempts).await,
        };
        let resolved = resolve(&catalog, &raw);
        // A workflow action's event is parsed in part: the fields its templates name (and what
        // the worker reads itself); anything else is parsed only if something reads it.
        let named = match &resolved {
            Ok(Resolved {
                step: Some((_, _, action)),
                ..
            }) => Some(&*action.event_fields),
            _ => None,
        };
        let text = raw.event.get();
        let parsed = match named.and_then(|named| PartialEvent::parse_fields(text, named)) {
            Some(fields) => Ok(fields),
            None => serde_json::from_str(text),
        };
        let message = match parsed {
            Ok(event) => raw.with_event(event),
            Err(e) => return self.unreadable(delivery, &e, attempts).await,
        };
        let partial = named.map(|named| PartialEvent::new(&message.event, named, text));
        let record = Recorder::new(
            &self.app.history,
            &message,
            self.connector,
            headers,
            attempts.calls,
            &catalog.secrets,
        );
        let ctx = Context {
            event: match &partial {
                Some(partial) => EventRef::Partial(partial),
                None => EventRef::Whole(&message.event),
            },
            steps: &message.steps,
            secrets: SecretsView::Real(&catalog.secrets),
        };
        let call = Call {
            action_id: &message.id,
            ctx,
        };
        let resolved = match resolved {
            Ok(resolved) => resolved,
            Err(failure) => {
                return self
                    .dead_letter(delivery, Some(&message), &failure, attempts, &record)
                    .await;
            }
        };
        if let Some(step) = resolved.step
            && let Some(settle) = self
                .check_condition(delivery, &message, step, &call, attempts, &record)
                .await
        {
            return settle;
        }

        let (outcome, calls) = self
            .call_with_quick_retries(resolved.target, &call, attempts, &record)
            .await;
        if self.slot.abandoned() {
            return Settle::Untried;
        }
        let attempts = Attempts {
            calls: attempts.calls + calls,
            retries: attempts.retries,
        };
        let policy = RetryPolicy::of(&self.app.config.retry);
        match decide(outcome, attempts, &policy, policy.draw()) {
            Decision::Success { status, output } => {
                self.succeeded(&message, text, resolved.step, status, output, &record)
                    .await
            }
            Decision::Retry {
                failure,
                delay,
                attempts,
            } => {
                self.retry_later(delivery, &message, &failure, attempts, &delay, &record)
                    .await
            }
            Decision::DeadLetter(failure) => {
                self.dead_letter(delivery, Some(&message), &failure, attempts, &record)
                    .await
            }
            Decision::Hold { hold, delay } => {
                self.hold(delivery, &message, &hold, attempts, &delay).await
            }
        }
    }

    /// Dead-letters a message that does not read as an action message.
    async fn unreadable(
        &self,
        delivery: &Delivery,
        error: &serde_json::Error,
        attempts: Attempts,
    ) -> Settle {
        let failure = config_failure(format!("action message is unreadable: {error}"));
        let record = Recorder::off(&self.app.history);
        self.dead_letter(delivery, None, &failure, attempts, &record)
            .await
    }

    /// Puts the action back on the broker for its destination's hold: the tier covering the
    /// wait, counters unchanged (SPEC §10: waiting is not failing), then ack. It takes no worker
    /// slot and no prefetch while it waits.
    async fn hold(
        &self,
        delivery: &Delivery,
        message: &ActionMessage,
        hold: &Hold,
        attempts: Attempts,
        delay: &Delay,
    ) -> Settle {
        let original = delivery.properties.headers().as_ref();
        let mut headers = message::with_attempts(original, attempts);
        set_str(&mut headers, RETRY_TIER_HEADER, delay.tier.as_str());
        set_str(&mut headers, H_HELD_FOR, hold.destination.header_value());
        let times = header_int(original, H_HELD).unwrap_or(0) + 1;
        set_int(&mut headers, H_HELD, times);
        match self.to_tier(delivery, headers, delay).await {
            Ok(()) => {
                self.app
                    .connectors
                    .http
                    .destinations()
                    .held(&hold.destination, 1);
                debug!(
                    event_id = event_id(message), workflow = source(message), action = %message.action,
                    destination = %hold.destination, reason = %hold.reason, times,
                    delay_ms = delay.expiration.as_millis() as u64, "held on the broker"
                );
                Settle::Ack
            }
            Err(e) => Settle::Requeue(e),
        }
    }

    /// Evaluates the action's `if`. A false one skips the action and its dependents (recorded,
    /// counted, acked); one that fails to evaluate is dead-lettered. `None`: go on with the call.
    async fn check_condition(
        &self,
        delivery: &Delivery,
        message: &ActionMessage,
        (workflow, index, action): Step<'_>,
        call: &Call<'_>,
        attempts: Attempts,
        record: &Recorder<'_>,
    ) -> Option<Settle> {
        let condition = action.condition.as_ref()?;
        match condition.eval(&call.ctx) {
            Ok(true) => None,
            Ok(false) => {
                let event_id = event_id(message);
                for skipped in workflow.with_dependents(index) {
                    self.app
                        .metrics
                        .attempt(skipped.spec.connector(), "skipped");
                    record.skipped(
                        action_id(event_id, &workflow.id, &skipped.id),
                        &skipped.id,
                        skipped.spec.connector(),
                        &message.action,
                    );
                }
                debug!(event_id, workflow = source(message), action = %message.action, "condition is false; skipped");
                Some(Settle::Ack)
            }
            Err(e) => {
                let failure = Failure {
                    class: ErrorClass::Template,
                    reason: format!("if: {e}"),
                    status: None,
                    retry_after: None,
                };
                Some(
                    self.dead_letter(delivery, Some(message), &failure, attempts, record)
                        .await,
                )
            }
        }
    }

    /// The call succeeded: records it, then enqueues the dependents (confirmed) before the ack.
    async fn succeeded(
        &self,
        message: &ActionMessage,
        event_text: &str,
        step: Option<Step<'_>>,
        status: u16,
        output: Value,
        record: &Recorder<'_>,
    ) -> Settle {
        let event_id = event_id(message);
        self.app.metrics.attempt(self.connector, "success");
        record.record(RunOutcome::Success, Some(status), None, Some(&output));
        self.observe_latency(&message.event);
        debug!(event_id, workflow = source(message), action = %message.action, status, "action succeeded");
        let Some((workflow, _, action)) = step else {
            return Settle::Ack;
        };
        let next = dependents(event_id, workflow, action);
        if next.is_empty() {
            return Settle::Ack;
        }
        let mut steps = match &message.steps {
            Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        steps.insert(action.id.clone(), output);
        let steps = Value::Object(steps);
        let mut pending = Vec::new();
        for planned in &next {
            let out = planned.message(
                &message.workspace,
                // As it came: `message.event` may hold only some of its fields.
                EventJson::Verbatim(event_text.as_bytes()),
                Some(&steps),
            );
            let (body, properties) = out.encode(event_id, &self.trace.child());
            match self
                .publisher
                .send(
                    &self.app.topology.actions,
                    planned.connector,
                    &body,
                    properties,
                )
                .await
            {
                Ok(p) => pending.push((planned.connector, p)),
                Err(e) => return Settle::Requeue(e),
            }
        }
        for (connector, p) in pending {
            if let Err(e) = Publisher::confirmed(p, connector).await {
                return Settle::Requeue(e);
            }
            self.app
                .metrics
                .actions_enqueued
                .get_or_create(&ConnectorLabel { connector })
                .inc();
        }
        Settle::Ack
    }

    /// Records the failed attempt and publishes the message to its retry tier (confirmed).
    async fn retry_later(
        &self,
        delivery: &Delivery,
        message: &ActionMessage,
        failure: &Failure,
        attempts: Attempts,
        delay: &Delay,
        record: &Recorder<'_>,
    ) -> Settle {
        self.app.metrics.attempt(self.connector, "retry");
        record.record(RunOutcome::Retry, failure.status, Some(failure), None);
        info!(
            event_id = event_id(message), workflow = source(message), action = %message.action,
            reason = %failure.reason, attempt = attempts.calls,
            delay_ms = delay.expiration.as_millis() as u64, "call failed; retrying later"
        );
        match self
            .schedule_retry(delivery, failure, attempts, delay)
            .await
        {
            Ok(()) => Settle::Ack,
            Err(e) => Settle::Requeue(e),
        }
    }

    /// Calls once, then retries in process `quick_attempts` times on the first delivery, unless
    /// the remote said when to come back. Returns the last outcome and the number of calls.
    async fn call_with_quick_retries(
        &self,
        target: Target<'_>,
        call: &Call<'_>,
        attempts: Attempts,
        record: &Recorder<'_>,
    ) -> (Outcome, u32) {
        let quick = quick_retries(attempts, &RetryPolicy::of(&self.app.config.retry));
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .with_max_times(quick as usize)
            .build();
        let in_flight = self
            .app
            .metrics
            .actions_in_flight
            .get_or_create(&ConnectorLabel {
                connector: self.connector,
            })
            .clone();
        let mut calls = 0;
        loop {
            in_flight.inc();
            let started = Instant::now();
            let started_at = chrono::Utc::now();
            // Where the call went, for run history only: with history off the client has no
            // task-local to write it into and copies nothing.
            let (mut outcome, destination) = if record.enabled() {
                crate::destinations::CALLED
                    .scope(std::cell::RefCell::new(None), async {
                        let outcome = target.execute(call, &self.app.connectors).await;
                        (outcome, crate::destinations::CALLED.with(|c| c.take()))
                    })
                    .await
            } else {
                (target.execute(call, &self.app.connectors).await, None)
            };
            // A remote may echo a credential back; nothing below may log or record it.
            if let (Outcome::Retry(failure) | Outcome::Fail(failure), SecretsView::Real(secrets)) =
                (&mut outcome, call.ctx.secrets)
            {
                failure.reason = crate::outcome::redact(&failure.reason, secrets.values());
            }
            in_flight.dec();
            // Not called: the destination holds it (no attempt used), or the service stops.
            if self.slot.abandoned() || matches!(outcome, Outcome::Held(_)) {
                return (outcome, calls);
            }
            calls += 1;
            let took = started.elapsed();
            record.called(started_at, took, destination);
            self.app
                .metrics
                .action_duration
                .get_or_create(&ConnectorLabel {
                    connector: self.connector,
                })
                .observe(took.as_secs_f64());
            let delay = if retry_now(&outcome) {
                delays.next()
            } else {
                None
            };
            match (&outcome, delay) {
                (Outcome::Retry(failure), Some(delay)) => {
                    self.app.metrics.attempt(self.connector, "retry");
                    record.record(RunOutcome::Retry, failure.status, Some(failure), None);
                    debug!(action_id = call.action_id, reason = %failure.reason, "quick retry");
                    tokio::time::sleep(delay).await;
                }
                _ => return (outcome, calls),
            }
        }
    }

    fn observe_latency(&self, event: &Value) {
        let occurred = event
            .get("occurred_at")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if let Some(occurred) = occurred {
            let latency = (chrono::Utc::now() - occurred.with_timezone(&chrono::Utc))
                .num_milliseconds()
                .max(0) as f64
                / 1000.0;
            self.app
                .metrics
                .delivery_latency
                .get_or_create(&ConnectorLabel {
                    connector: self.connector,
                })
                .observe(latency);
        }
    }

    /// Publishes the message to its retry tier (confirmed).
    async fn schedule_retry(
        &self,
        delivery: &Delivery,
        failure: &Failure,
        attempts: Attempts,
        delay: &Delay,
    ) -> Result<(), BrokerError> {
        let original = delivery.properties.headers().as_ref();
        let mut headers = message::with_attempts(original, attempts);
        message::stamp_first_attempt(&mut headers, original);
        set_str(&mut headers, RETRY_TIER_HEADER, delay.tier.as_str());
        set_str(&mut headers, H_REASON, failure.reason.as_str());
        if let Some(status) = failure.status {
            set_int(&mut headers, H_LAST_STATUS, i64::from(status));
        }
        self.to_tier(delivery, headers, delay).await
    }

    /// Publishes the delivery with `headers` to its delay tier, expiring after the delay
    /// (confirmed).
    async fn to_tier(
        &self,
        delivery: &Delivery,
        headers: FieldTable,
        delay: &Delay,
    ) -> Result<(), BrokerError> {
        let properties = message::copy_properties(&delivery.properties, headers)
            .with_expiration(delay.expiration.as_millis().to_string().into());
        self.publisher
            .publish(
                &self.app.topology.retry,
                self.connector,
                &delivery.data,
                properties,
            )
            .await
    }

    /// Records the action in the dead-letter queue (confirmed), with every SPEC §5 header.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        message: Option<&ActionMessage>,
        failure: &Failure,
        attempts: Attempts,
        record: &Recorder<'_>,
    ) -> Settle {
        record.record(RunOutcome::Dead, failure.status, Some(failure), None);
        let origin = message.map(|m| Origin {
            workflow: source(m),
            action: &m.action,
            workspace: &m.workspace,
        });
        let headers = dead_letter::headers(
            delivery.properties.headers().as_ref(),
            attempts,
            origin,
            self.connector,
            failure,
            &self.trace.trace_id().to_string(),
        );
        let properties = message::copy_properties(&delivery.properties, headers);
        let result = self
            .publisher
            .publish(
                "",
                &self.app.topology.dead_letter,
                &delivery.data,
                properties,
            )
            .await;
        match result {
            Ok(()) => {
                self.app.metrics.attempt(self.connector, "dead");
                if failure.class == ErrorClass::Blocked {
                    self.app
                        .metrics
                        .outbound_blocked
                        .get_or_create(&ConnectorLabel {
                            connector: self.connector,
                        })
                        .inc();
                }
                self.app
                    .metrics
                    .dead_lettered
                    .get_or_create(&DeadLabel {
                        connector: self.connector,
                        error_class: failure.class.as_str(),
                    })
                    .inc();
                let event_id = message
                    .and_then(|m| m.event.get("id"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                let workflow = message
                    .and_then(|m| m.workflow.as_deref().or(m.webhook.as_deref()))
                    .unwrap_or("");
                let action = message.map(|m| m.action.as_str()).unwrap_or("");
                warn!(
                    event_id,
                    workflow,
                    action,
                    connector = self.connector,
                    error_class = failure.class.as_str(),
                    reason = %failure.reason,
                    "action dead-lettered"
                );
                Settle::Ack
            }
            Err(e) => Settle::Requeue(e),
        }
    }
}

/// A workflow action being run: its workflow, its index there, and the action.
type Step<'c> = (&'c Workflow, usize, &'c Action);

/// What an action message names, found in the loaded catalog.
struct Resolved<'c> {
    /// What to call.
    target: Target<'c>,
    /// The workflow action, when it is one (not a webhook delivery).
    step: Option<Step<'c>>,
}

/// Finds what a message names; a workflow, action or webhook no longer loaded is a
/// configuration failure (dead-lettered).
fn resolve<'c, E>(
    catalog: &'c Catalog,
    message: &ActionMessage<E>,
) -> Result<Resolved<'c>, Failure> {
    if let Some(id) = &message.workflow {
        let workflow = catalog
            .workflow(id)
            .ok_or_else(|| config_failure(format!("workflow {id} is no longer loaded")))?;
        let (index, action) = workflow.action(&message.action).ok_or_else(|| {
            config_failure(format!("workflow {id} has no action {}", message.action))
        })?;
        return Ok(Resolved {
            target: Target::Action(&action.spec),
            step: Some((workflow, index, action)),
        });
    }
    match &message.webhook {
        Some(id) => catalog
            .webhook(id)
            .map(|webhook| Resolved {
                target: Target::Webhook(webhook),
                step: None,
            })
            .ok_or_else(|| config_failure(format!("webhook {id} is no longer loaded"))),
        None => Err(config_failure(
            "action message names no workflow or webhook".into(),
        )),
    }
}

/// The event id a message carries (for logs and action ids).
fn event_id(message: &ActionMessage) -> &str {
    message
        .event
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The workflow or webhook a message belongs to.
fn source(message: &ActionMessage) -> &str {
    message
        .workflow
        .as_deref()
        .or(message.webhook.as_deref())
        .unwrap_or("")
}

fn config_failure(reason: String) -> Failure {
    Failure {
        class: ErrorClass::Config,
        reason,
        status: None,
        retry_after: None,
    }
}
