//! The bench's side of the broker: a pipelined confirmed publisher, the ceiling measurement, and
//! the clean-up of the run's queues and exchanges.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, PublisherConfirm};
use switchyard::broker::Topology;
use switchyard::broker::acks::Acks;
use switchyard::faults::Faults;

use crate::event::{EventFactory, now_us};

/// Opens a named connection.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .with_context(|| format!("connecting to {}", switchyard::broker::redact_url(url)))
}

/// How fast to publish.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as the confirm window allows.
    Flat,
    /// Evenly spaced, this many per second.
    PerSecond(f64),
}

/// What a publish run did.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// When the first message was stamped (µs since the epoch).
    pub first_sent_us: u64,
    /// From the first publish to the last confirm.
    pub elapsed: Duration,
}

/// Publishes events `seqs` persistently on a fresh confirm-mode channel, keeping at most
/// `window` confirms outstanding: the publisher never waits a round trip per message.
pub async fn publish(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
    seqs: Range<u64>,
    events: &EventFactory,
    window: usize,
    pace: Pace,
) -> anyhow::Result<Published> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a publish channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let started = Instant::now();
    let first_sent_us = now_us();
    let mut pending: VecDeque<PublisherConfirm> = VecDeque::with_capacity(window + 1);
    for (i, seq) in seqs.enumerate() {
        if let Pace::PerSecond(rate) = pace {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let body = events.body(seq, now_us());
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                &body,
                properties,
            )
            .await
            .with_context(|| format!("publishing to {exchange}"))?;
        pending.push_back(confirm);
        while pending.len() > window {
            if let Some(confirm) = pending.pop_front() {
                confirmed(confirm, exchange).await?;
            }
        }
    }
    for confirm in pending {
        confirmed(confirm, exchange).await?;
    }
    let elapsed = started.elapsed();
    let _ = channel.close(200, "done".into()).await;
    Ok(Published {
        first_sent_us,
        elapsed,
    })
}

async fn confirmed(confirm: PublisherConfirm, exchange: &str) -> anyhow::Result<()> {
    match confirm.await.context("waiting for a confirm")? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => {
            bail!("the broker could not route a message published to {exchange}")
        }
        Confirmation::Nack(_) => bail!("the broker refused (nacked) a message for {exchange}"),
    }
}

/// What the ceiling measurement found.
#[derive(Debug, Clone, Copy)]
pub struct CeilingRun {
    /// Messages carried.
    pub messages: u64,
    /// From the first publish to the last ack.
    pub elapsed: Duration,
}

/// Carries `messages` events through a fresh quorum queue: one connection publishes with
/// pipelined confirms while another consumes with `prefetch` and acks every `ack_batch`
/// deliveries at once (`multiple`). Deletes the queue afterwards.
pub async fn ceiling(
    url: &str,
    queue: &str,
    messages: u64,
    events: &EventFactory,
    window: usize,
    prefetch: u16,
    ack_batch: u64,
) -> anyhow::Result<CeilingRun> {
    let publisher = connect(url, "switchyard-bench ceiling publisher").await?;
    let consumer = connect(url, "switchyard-bench ceiling consumer").await?;
    let channel = consumer
        .create_channel()
        .await
        .context("opening a channel")?;
    declare_quorum(&channel, queue).await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .context("setting the prefetch")?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "switchyard-bench-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming {queue}"))?;
    let ack_batch = ack_batch.max(1);
    let consuming = tokio::spawn(async move {
        let mut received = 0u64;
        while received < messages {
            let delivery = match deliveries.next().await {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(anyhow::Error::new(e).context("consuming")),
                None => bail!("the ceiling consumer was cancelled"),
            };
            received += 1;
            if received.is_multiple_of(ack_batch) || received == messages {
                let multiple = BasicAckOptions { multiple: true };
                delivery.acker.ack(multiple).await.context("acking")?;
            }
        }
        Ok(Instant::now())
    });
    let started = Instant::now();
    let published = publish(
        &publisher,
        "",
        queue,
        0..messages,
        events,
        window,
        Pace::Flat,
    )
    .await;
    let last_ack = match published {
        Ok(_) => consuming.await.context("the ceiling consumer panicked")??,
        Err(e) => {
            consuming.abort();
            return Err(e);
        }
    };
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("deleting {queue}"))?;
    let _ = consumer.close(200, "done".into()).await;
    let _ = publisher.close(200, "done".into()).await;
    Ok(CeilingRun {
        messages,
        elapsed: last_ack - started,
    })
}

/// What a bare relay carried.
#[derive(Debug, Clone)]
pub struct RelayRun {
    /// Copies that reached the end of the second hop (`count × copies`).
    pub arrived: u64,
    /// From the first publish to the last copy's arrival.
    pub elapsed: Duration,
    /// Publish → arrival of each copy in µs, sorted (only when paced: at full speed the bench
    /// does not read the bodies, so that the relay's own CPU stays what the broker needs).
    pub latencies_us: Vec<u64>,
}

/// What the service does to the broker, with no work in between: events are published (`pace`)
/// to quorum queue `first`; a relay on one connection (as the service has) republishes each as
/// `copies` messages to quorum queue `second` on one confirm channel and acks the event once its
/// copies are confirmed (the router's pattern); a consumer of `second` acks the copies (the
/// worker's). Both hops ack through the service's own coalescer (`switchyard::broker::acks`).
/// Both consumers use `prefetch`. Deletes both queues.
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    url: &str,
    first: &str,
    second: &str,
    events: &EventFactory,
    count: u64,
    copies: u64,
    pace: Pace,
    window: usize,
    prefetch: u16,
    shaped: bool,
) -> anyhow::Result<RelayRun> {
    let publisher = connect(url, "switchyard-bench relay publisher").await?;
    let relay = connect(url, "switchyard-bench relay").await?;
    let setup = relay.create_channel().await.context("opening a channel")?;
    declare_quorum(&setup, first).await?;
    declare_quorum(&setup, second).await?;
    let consumer = |queue: &str, tag: &str| {
        let (queue, tag) = (queue.to_owned(), tag.to_owned());
        let relay = &relay;
        async move {
            let channel = relay.create_channel().await.context("opening a channel")?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .context("setting the prefetch")?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming {queue}"))?;
            anyhow::Ok((channel, consumer))
        }
    };
    let (first_channel, mut hop_one) = consumer(first, "switchyard-bench-relay").await?;
    let (second_channel, mut hop_two) = consumer(second, "switchyard-bench-relay-out").await?;
    let (tracker, faults) = (
        tokio_util::task::TaskTracker::new(),
        Faults::new(tokio_util::sync::CancellationToken::new()),
    );
    let first_acks = Acks::spawn(&tracker, &faults, first_channel, "relay", prefetch);
    let second_acks = Acks::spawn(&tracker, &faults, second_channel, "relay-out", prefetch);
    let confirms = relay.create_channel().await.context("opening a channel")?;
    confirms
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    // The relay publishes; its settler waits for each event's confirms, in order, and acks.
    let (settled, mut to_settle) =
        tokio::sync::mpsc::unbounded_channel::<(Vec<PublisherConfirm>, Delivery)>();
    let settling = tokio::spawn(async move {
        while let Some((pending, delivery)) = to_settle.recv().await {
            for confirm in pending {
                confirmed(confirm, "the relay").await?;
            }
            first_acks.ack(delivery);
        }
        anyhow::Ok(())
    });
    let to = second.to_owned();
    let relaying = tokio::spawn(async move {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        while let Some(delivery) = hop_one.next().await {
            let delivery = delivery.context("relay consumer")?;
            let mut pending = Vec::with_capacity(copies as usize);
            for copy in 0..copies {
                let properties = if shaped {
                    action_message_properties(delivery.delivery_tag, copy)
                } else {
                    BasicProperties::default().with_content_type("application/json".into())
                }
                .with_delivery_mode(2);
                let confirm = confirms
                    .basic_publish(
                        "".into(),
                        to.as_str().into(),
                        options,
                        &delivery.data,
                        properties,
                    )
                    .await
                    .context("relaying")?;
                pending.push(confirm);
            }
            if settled.send((pending, delivery)).is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });
    let expected = count * copies;
    let timed = matches!(pace, Pace::PerSecond(_));
    let consuming = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(if timed { expected as usize } else { 0 });
        let mut arrived = 0;
        while arrived < expected {
            let delivery = match hop_two.next().await {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(anyhow::Error::new(e).context("consuming")),
                None => bail!("the relay's consumer was cancelled"),
            };
            arrived += 1;
            if timed {
                let now = now_us();
                let sent = serde_json::from_slice::<serde_json::Value>(&delivery.data)
                    .ok()
                    .and_then(|v| v.get("data")?.get("sent_at_us")?.as_u64())
                    .unwrap_or(now);
                latencies.push(now.saturating_sub(sent));
            }
            second_acks.ack(delivery);
        }
        Ok((Instant::now(), latencies))
    });
    let started = Instant::now();
    let published = publish(&publisher, "", first, 0..count, events, window, pace).await;
    let result = match published {
        Ok(_) => consuming.await.context("the relay's consumer panicked")?,
        Err(e) => {
            consuming.abort();
            Err(e)
        }
    };
    relaying.abort();
    settling.abort();
    // The coalescers flush and close their channels once their last handles are gone.
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    for queue in [first, second] {
        let channel = relay.create_channel().await.context("opening a channel")?;
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting {queue}"))?;
    }
    let _ = relay.close(200, "done".into()).await;
    let _ = publisher.close(200, "done".into()).await;
    let (last, mut latencies_us) = result?;
    latencies_us.sort_unstable();
    Ok(RelayRun {
        arrived: expected,
        elapsed: last - started,
        latencies_us,
    })
}

/// The properties the router gives an action message (`ActionMessageRef::encode`): a message
/// id, a timestamp, the identity headers and a `traceparent`; the relay's copies carry them with
/// `--relay-as-service`, to tell what they cost the broker.
fn action_message_properties(tag: u64, copy: u64) -> BasicProperties {
    use switchyard::broker::message::{
        H_ACTION, H_CONNECTOR, H_EVENT, H_WORKFLOW, H_WORKSPACE, action_id, properties,
    };
    use switchyard::broker::set_str;
    let event = format!("evt_{tag}");
    let mut headers = FieldTable::default();
    set_str(&mut headers, H_WORKFLOW, "bench-relay");
    set_str(&mut headers, H_ACTION, format!("call{copy}").as_str());
    set_str(&mut headers, H_CONNECTOR, "http");
    set_str(&mut headers, H_WORKSPACE, "ws_bench");
    set_str(&mut headers, H_EVENT, event.as_str());
    switchyard::trace::TraceContext::of_event(None)
        .child()
        .write(&mut headers);
    properties(
        &action_id(&event, "bench-relay", &copy.to_string()),
        headers,
    )
}

/// A tap on the service's action messages: a transient queue bound next to the action queue
/// (same exchange and routing key) receives a copy of each action message the router publishes,
/// and records when, so that publish → arrival splits into the router's side and the worker's.
pub struct Tap {
    /// Its own connection, closed at the end (the queue is exclusive: it goes with it).
    connection: Connection,
    /// The consumer: (event seq, publish → copy received in µs) per action message.
    task: tokio::task::JoinHandle<Vec<(u64, u64)>>,
}

impl Tap {
    /// Binds an exclusive, auto-delete classic queue to `exchange` with `routing_key`.
    pub async fn start(url: &str, exchange: &str, routing_key: &str) -> anyhow::Result<Tap> {
        let connection = connect(url, "switchyard-bench tap").await?;
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .context("declaring the tap queue")?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding the tap to {exchange}"))?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let mut copies = channel
            .basic_consume(
                queue.name().clone(),
                "switchyard-bench-tap".into(),
                no_ack,
                FieldTable::default(),
            )
            .await
            .context("consuming the tap")?;
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(Ok(copy)) = copies.next().await {
                let now = now_us();
                let message = serde_json::from_slice::<serde_json::Value>(&copy.data).ok();
                let data = message.as_ref().and_then(|m| m.get("event")?.get("data"));
                let field = |name: &str| data.and_then(|d| d.get(name)?.as_u64());
                if let (Some(seq), Some(sent)) = (field("seq"), field("sent_at_us")) {
                    seen.push((seq, now.saturating_sub(sent)));
                }
            }
            seen
        });
        Ok(Tap { connection, task })
    }

    /// Closes the tap; returns (event seq, publish → action message copy in µs).
    pub async fn finish(self) -> Vec<(u64, u64)> {
        let _ = self.connection.close(200, "done".into()).await;
        self.task.await.unwrap_or_default()
    }
}

/// Declares a durable quorum queue.
async fn declare_quorum(channel: &lapin::Channel, queue: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, args)
        .await
        .with_context(|| format!("declaring {queue}"))?;
    Ok(())
}

/// Ready messages per queue (passive declares); a queue that cannot be read is left out.
pub async fn depths(url: &str, queues: &[String]) -> Vec<(String, u32)> {
    let Ok(connection) = connect(url, "switchyard-bench depths").await else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for queue in queues {
        // A failed passive declare closes the channel: one channel per queue.
        let Ok(channel) = connection.create_channel().await else {
            break;
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        if let Ok(q) = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            found.push((queue.clone(), q.message_count()));
            let _ = channel.close(200, "done".into()).await;
        }
    }
    let _ = connection.close(200, "done".into()).await;
    found
}

/// Deletes every queue and exchange of the topology, and `extra` queues.
pub async fn delete_topology(
    url: &str,
    topology: &Topology,
    extra: &[String],
) -> anyhow::Result<()> {
    let connection = connect(url, "switchyard-bench clean-up").await?;
    let mut failed = Vec::new();
    let mut queues = topology.all_queues();
    queues.extend([
        topology.destinations.clone(),
        topology.destinations_status.clone(),
    ]);
    queues.extend(extra.iter().cloned());
    for queue in &queues {
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        match channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            Ok(_) => {
                let _ = channel.close(200, "done".into()).await;
            }
            Err(e) => failed.push(format!("queue {queue}: {e}")),
        }
    }
    for exchange in [&topology.events, &topology.actions, &topology.retry] {
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        match channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
        {
            Ok(()) => {
                let _ = channel.close(200, "done".into()).await;
            }
            Err(e) => failed.push(format!("exchange {exchange}: {e}")),
        }
    }
    let _ = connection.close(200, "done".into()).await;
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}
