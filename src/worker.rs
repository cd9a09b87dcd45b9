//! The worker: one action message in, one call out, and an outcome made durable before the ack
//! (success, a confirmed retry message, or a confirmed dead-letter record).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use rand::Rng;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::broker::acks::Acks;
use crate::broker::message::{
    self, ActionMessage, ActionMessageRef, Attempts, H_ACTION, H_CLASS, H_CONNECTOR, H_DEAD_AT,
    H_FIRST_ATTEMPT, H_LAST_STATUS, H_REASON, H_WORKFLOW, H_WORKSPACE, action_id,
};
use crate::broker::{AmqpContext, BrokerError, Publisher, RETRY_TIER_HEADER, set_int, set_str};
use crate::config::format_delay;
use crate::connectors::bulkhead::{WORKER_SLOT, WorkerSlot};
use crate::connectors::{Call, Target};
use crate::outcome::{ErrorClass, Failure, Outcome};
use crate::telemetry::{ConnectorLabel, DeadLabel};
use crate::template::{Context, SecretsView};

/// Consumes the configured action queues until `stop`.
pub async fn run(
    app: Arc<App>,
    connection: Arc<Connection>,
    publisher: Publisher,
    stop: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), BrokerError> {
    let permits = Arc::new(Semaphore::new(app.config.worker.concurrency));
    let mut streams = Vec::new();
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
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("switchyard-worker-{connector}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context(format!("consuming {queue}"))?;
        let acks = Acks::spawn(&tracker, channel, connector, app.config.worker.prefetch);
        streams.push(consumer.map(move |d| (connector, acks.clone(), d)).boxed());
    }
    let mut deliveries = futures::stream::select_all(streams);
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Ok(()),
            },
        };
        let next = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = deliveries.next() => next,
        };
        let (connector, acks, delivery) = match next {
            Some((connector, acks, Ok(delivery))) => (connector, acks, delivery),
            Some((connector, _, Err(e))) => {
                return Err(BrokerError::Amqp {
                    context: format!("{connector} consumer"),
                    source: e,
                });
            }
            None => return Err(BrokerError::ConsumerEnded("action queues".into())),
        };
        let slot = WorkerSlot::new(permits.clone(), permit, stop.clone());
        let job = Job {
            app: app.clone(),
            publisher: publisher.clone(),
            connector,
            acks,
            slot: slot.clone(),
        };
        // The slot goes with the job's task: the HTTP client gives it back while the job waits
        // for a busy host (connectors::bulkhead).
        tracker.spawn(WORKER_SLOT.scope(slot, job.process(delivery)));
    }
}

/// One delivery being processed.
struct Job {
    /// Shared state.
    app: Arc<App>,
    /// For dependents, retries and dead-letters.
    publisher: Publisher,
    /// The queue it came from.
    connector: &'static str,
    /// Settles the delivery on its channel.
    acks: Acks,
    /// The worker slot the job holds (released when the job ends).
    slot: Arc<WorkerSlot>,
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
                warn!(connector = self.connector, error = %e, "could not record the outcome; the action goes back to its queue");
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
        let message: ActionMessage = match serde_json::from_slice(&delivery.data) {
            Ok(message) => message,
            Err(e) => {
                let failure = config_failure(format!("action message is unreadable: {e}"));
                return self.dead_letter(delivery, None, &failure, attempts).await;
            }
        };
        let catalog = self.app.catalog.load();
        let ctx = Context {
            event: &message.event,
            steps: &message.steps,
            secrets: SecretsView::Real(&catalog.secrets),
        };
        let call = Call {
            action_id: &message.id,
            ctx,
        };
        let source = message
            .workflow
            .as_deref()
            .or(message.webhook.as_deref())
            .unwrap_or("");
        let event_id = message
            .event
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("");

        let (spec, workflow) = if let Some(id) = &message.workflow {
            let Some(workflow) = catalog.workflow(id) else {
                let failure = config_failure(format!("workflow {id} is no longer loaded"));
                return self
                    .dead_letter(delivery, Some(&message), &failure, attempts)
                    .await;
            };
            let Some((index, action)) = workflow.action(&message.action) else {
                let failure =
                    config_failure(format!("workflow {id} has no action {}", message.action));
                return self
                    .dead_letter(delivery, Some(&message), &failure, attempts)
                    .await;
            };
            if let Some(condition) = &action.condition {
                match condition.eval(&call.ctx) {
                    Ok(true) => {}
                    Ok(false) => {
                        for skipped in workflow.with_dependents(index) {
                            self.app
                                .metrics
                                .attempt(skipped.spec.connector(), "skipped");
                        }
                        debug!(event_id, workflow = source, action = %message.action, "condition is false; skipped");
                        return Settle::Ack;
                    }
                    Err(e) => {
                        let failure = Failure {
                            class: ErrorClass::Template,
                            reason: format!("if: {e}"),
                            status: None,
                            retry_after: None,
                        };
                        return self
                            .dead_letter(delivery, Some(&message), &failure, attempts)
                            .await;
                    }
                }
            }
            (Some(&action.spec), Some((workflow, action)))
        } else {
            (None, None)
        };

        let target = match (spec, &message.webhook) {
            (Some(spec), _) => Target::Action(spec),
            (None, Some(id)) => match catalog.webhook(id) {
                Some(webhook) => Target::Webhook(webhook),
                None => {
                    let failure = config_failure(format!("webhook {id} is no longer loaded"));
                    return self
                        .dead_letter(delivery, Some(&message), &failure, attempts)
                        .await;
                }
            },
            (None, None) => {
                let failure = config_failure("action message names no workflow or webhook".into());
                return self
                    .dead_letter(delivery, Some(&message), &failure, attempts)
                    .await;
            }
        };

        let outcome = self.call_with_quick_retries(target, &call, attempts).await;
        if self.slot.abandoned() {
            return Settle::Untried;
        }
        let calls = attempts.calls + outcome.1;
        let mut attempts = Attempts {
            calls,
            retries: attempts.retries,
        };
        match outcome.0 {
            Outcome::Success { status, output } => {
                self.app.metrics.attempt(self.connector, "success");
                self.observe_latency(&message.event);
                debug!(event_id, workflow = source, action = %message.action, status, "action succeeded");
                let Some((workflow, action)) = workflow else {
                    return Settle::Ack;
                };
                if action.dependents.is_empty() {
                    return Settle::Ack;
                }
                let mut steps = match &message.steps {
                    Value::Object(map) => map.clone(),
                    _ => serde_json::Map::new(),
                };
                steps.insert(action.id.clone(), output);
                let steps = Value::Object(steps);
                let mut pending = Vec::new();
                for &dependent in &action.dependents {
                    let next = &workflow.actions[dependent];
                    let id = action_id(event_id, &workflow.id, &next.id);
                    let connector = next.spec.connector();
                    let out = ActionMessageRef {
                        id: &id,
                        workflow: Some(&workflow.id),
                        webhook: None,
                        action: &next.id,
                        connector,
                        workspace: &message.workspace,
                        event: &message.event,
                        steps: Some(&steps),
                    };
                    let (body, properties) = out.encode(event_id);
                    match self
                        .publisher
                        .send(&self.app.topology.actions, connector, &body, properties)
                        .await
                    {
                        Ok(p) => pending.push((connector, p)),
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
            Outcome::Retry(failure) => {
                let schedule = &self.app.config.retry.schedule;
                if attempts.retries as usize >= schedule.len() {
                    let failure = Failure {
                        class: ErrorClass::Exhausted,
                        reason: format!(
                            "gave up after {} attempts: {}",
                            attempts.calls, failure.reason
                        ),
                        ..failure
                    };
                    return self
                        .dead_letter(delivery, Some(&message), &failure, attempts)
                        .await;
                }
                self.app.metrics.attempt(self.connector, "retry");
                let delay = next_delay(
                    self.app.as_ref(),
                    attempts.retries as usize,
                    failure.retry_after,
                );
                attempts.retries += 1;
                info!(
                    event_id, workflow = source, action = %message.action, reason = %failure.reason,
                    attempt = attempts.calls, delay_ms = delay.expiration.as_millis() as u64,
                    "call failed; retrying later"
                );
                match self
                    .schedule_retry(delivery, &failure, attempts, &delay)
                    .await
                {
                    Ok(()) => Settle::Ack,
                    Err(e) => Settle::Requeue(e),
                }
            }
            Outcome::Fail(failure) => {
                self.dead_letter(delivery, Some(&message), &failure, attempts)
                    .await
            }
        }
    }

    /// Calls once, then retries in process `quick_attempts` times on the first delivery, unless
    /// the remote said when to come back. Returns the last outcome and the number of calls.
    async fn call_with_quick_retries(
        &self,
        target: Target<'_>,
        call: &Call<'_>,
        attempts: Attempts,
    ) -> (Outcome, u32) {
        let quick = if attempts.retries == 0 && attempts.calls == 0 {
            self.app.config.retry.quick_attempts
        } else {
            0
        };
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
            let mut outcome = target.execute(call, &self.app.connectors).await;
            // A remote may echo a credential back; nothing below may log or record it.
            if let (Outcome::Retry(failure) | Outcome::Fail(failure), SecretsView::Real(secrets)) =
                (&mut outcome, call.ctx.secrets)
            {
                failure.reason = crate::outcome::redact(&failure.reason, secrets.values());
            }
            in_flight.dec();
            if self.slot.abandoned() {
                return (outcome, calls);
            }
            calls += 1;
            self.app
                .metrics
                .action_duration
                .get_or_create(&ConnectorLabel {
                    connector: self.connector,
                })
                .observe(started.elapsed().as_secs_f64());
            match &outcome {
                Outcome::Retry(failure) if failure.retry_after.is_none() => match delays.next() {
                    Some(delay) => {
                        self.app.metrics.attempt(self.connector, "retry");
                        debug!(action_id = call.action_id, reason = %failure.reason, "quick retry");
                        tokio::time::sleep(delay).await;
                    }
                    None => return (outcome, calls),
                },
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
        let mut headers = message::with_attempts(delivery.properties.headers().as_ref(), attempts);
        stamp_first_attempt(&mut headers, delivery);
        set_str(&mut headers, RETRY_TIER_HEADER, delay.tier.as_str());
        set_str(&mut headers, H_REASON, failure.reason.as_str());
        if let Some(status) = failure.status {
            set_int(&mut headers, H_LAST_STATUS, i64::from(status));
        }
        let properties = copy_properties(&delivery.properties, headers)
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
    ) -> Settle {
        let mut headers = message::with_attempts(delivery.properties.headers().as_ref(), attempts);
        stamp_first_attempt(&mut headers, delivery);
        if let Some(m) = message {
            set_str(
                &mut headers,
                H_WORKFLOW,
                m.workflow.as_deref().or(m.webhook.as_deref()).unwrap_or(""),
            );
            set_str(&mut headers, H_ACTION, m.action.as_str());
            set_str(&mut headers, H_WORKSPACE, m.workspace.as_str());
        }
        set_str(&mut headers, H_CONNECTOR, self.connector);
        set_str(&mut headers, H_REASON, failure.reason.as_str());
        set_str(&mut headers, H_CLASS, failure.class.as_str());
        match failure.status {
            Some(status) => set_int(&mut headers, H_LAST_STATUS, i64::from(status)),
            None => set_str(&mut headers, H_LAST_STATUS, ""),
        }
        set_str(
            &mut headers,
            H_DEAD_AT,
            chrono::Utc::now().to_rfc3339().as_str(),
        );
        let properties = copy_properties(&delivery.properties, headers);
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

fn config_failure(reason: String) -> Failure {
    Failure {
        class: ErrorClass::Config,
        reason,
        status: None,
        retry_after: None,
    }
}

fn stamp_first_attempt(headers: &mut FieldTable, delivery: &Delivery) {
    if message::first_attempt_at(delivery.properties.headers().as_ref()).is_none() {
        set_str(
            headers,
            H_FIRST_ATTEMPT,
            chrono::Utc::now().to_rfc3339().as_str(),
        );
    }
}

fn copy_properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut properties = BasicProperties::default().with_headers(headers);
    if let Some(v) = original.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        properties = properties.with_timestamp(*v);
    }
    properties
}

/// Where and how long a retry waits.
#[derive(Debug, Clone, PartialEq)]
pub struct Delay {
    /// The tier name (`5s`), matched by the retry exchange.
    pub tier: String,
    /// The message's own TTL (jittered, stretched by the remote's wish), within the tier's TTL.
    pub expiration: Duration,
}

/// The delay before broker retry number `retry` (0-based).
fn next_delay(app: &App, retry: usize, retry_after: Option<Duration>) -> Delay {
    let jitter = app.config.retry.jitter;
    let factor = if jitter > 0.0 {
        rand::rng().random_range(-jitter..=jitter)
    } else {
        0.0
    };
    compute_delay(
        &app.config.retry.schedule,
        jitter,
        retry,
        retry_after,
        factor,
    )
}

/// Pure form of [`next_delay`]: `factor` is the jitter draw in `[-jitter, jitter]`.
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
