//! One bounded pass over the dead-letter queue (see the `dlq` module documentation).

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, ExchangeKind};

use super::{DlqError, Record};
use crate::broker::{self, AmqpContext, BrokerError};
use crate::delivery::dead_letter::DeadLetter;

/// One bounded read of the dead-letter queue (see the module documentation).
pub(super) struct Pass {
    /// The channel every record of the pass is read (and acked) on.
    channel: Channel,
    /// The queue.
    queue: String,
    /// The records as the broker pushes them (none when the queue was empty at the start).
    consumer: Option<Consumer>,
    /// Ready records when the pass began: it never reads more, so records handed back or
    /// dead-lettered meanwhile cannot keep it going.
    budget: u32,
    /// Records read so far.
    pub(super) read: u32,
    /// Records already returned by this pass, in case the broker delivers one again.
    seen: HashSet<(String, String)>,
    /// Records removed (acked) by this pass.
    removed: u32,
}

impl Pass {
    /// Opens a channel and learns how many records the queue holds.
    pub(super) async fn open(connection: &Connection, queue: &str) -> Result<Pass, DlqError> {
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        let declared = ready_count(&channel, queue).await;
        let budget = match declared {
            Ok(count) => count,
            Err(e) if is_not_found(&e) => {
                return Err(DlqError::Usage(format!(
                    "queue {queue} does not exist: check amqp.prefix (SWITCHYARD__AMQP__PREFIX), or run `switchyard topology`"
                )));
            }
            Err(source) => {
                return Err(DlqError::Broker(BrokerError::Amqp {
                    context: format!("inspecting {queue}"),
                    source,
                }));
            }
        };
        // The broker pushes the records (one round trip per record with basic.get made a pass over
        // a hundred records take a tenth of a second or more); the prefetch is the budget, so it
        // pushes no more than the pass may read. Above what a prefetch can say, no limit: the
        // extra records are handed back untouched by `finish` like every other.
        let consumer = if budget == 0 {
            None
        } else {
            let prefetch = u16::try_from(budget).unwrap_or(0);
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .context(format!("setting the prefetch on {queue}"))?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    "switchyard-dlq-pass".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .context(format!("reading {queue}"))?;
            Some(consumer)
        };
        Ok(Pass {
            channel,
            queue: queue.to_owned(),
            consumer,
            budget,
            read: 0,
            seen: HashSet::new(),
            removed: 0,
        })
    }

    /// The next record, or `None` once the budget is spent or no record came for [`IDLE`] (the
    /// queue is empty: another reader holds the rest).
    pub(super) async fn next(&mut self) -> Result<Option<Record>, DlqError> {
        while self.read < self.budget {
            let Some(consumer) = self.consumer.as_mut() else {
                return Ok(None);
            };
            let delivery = match tokio::time::timeout(IDLE, consumer.next()).await {
                Err(_) | Ok(None) => return Ok(None),
                Ok(Some(delivery)) => delivery.context(format!("reading {}", self.queue))?,
            };
            self.read += 1;
            let record = Record {
                tag: delivery.delivery_tag,
                letter: DeadLetter::new(delivery.properties, delivery.data),
            };
            // Unacked deliveries are never redelivered on their own channel, so this only
            // guards against a broker that does; such a copy stays held and is handed back.
            if let Some(key) = record.fingerprint()
                && !self.seen.insert(key)
            {
                continue;
            }
            return Ok(Some(record));
        }
        Ok(None)
    }

    /// Removes a record from the queue for good.
    pub(super) async fn remove(&mut self, record: &Record) -> Result<(), DlqError> {
        self.channel
            .basic_ack(record.tag, BasicAckOptions::default())
            .await
            .context(format!("removing a record from {}", self.queue))?;
        self.removed += 1;
        Ok(())
    }

    /// Hands every record not removed back to the queue, unchanged, and closes the channel.
    pub(super) async fn finish(self) -> Result<(), DlqError> {
        if let Some(consumer) = &self.consumer {
            // No more pushes; what was pushed and not read is unacked too, and goes back with
            // the rest.
            self.channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await
                .context(format!("ending the read of {}", self.queue))?;
            // Tag 0 with `multiple` means every delivery still unacked on this channel.
            self.channel
                .basic_nack(
                    0,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await
                .context(format!("handing records back to {}", self.queue))?;
        }
        if self.read > 0 {
            // The broker applies the requeue after this returns: wait (briefly) until the records
            // are ready again, so that the next command sees them, not a queue that looks empty.
            let until = tokio::time::Instant::now() + REQUEUE_WAIT;
            while tokio::time::Instant::now() < until
                && ready_count(&self.channel, &self.queue)
                    .await
                    .is_ok_and(|ready| ready < self.left())
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Closing would requeue them as well; a failure here loses nothing.
        broker::close_channel(&self.channel, 200, "done").await;
        Ok(())
    }

    /// Records left in the queue after this pass (as far as this pass knows).
    pub(super) fn left(&self) -> u32 {
        self.budget.saturating_sub(self.removed)
    }
}

/// How long a pass waits for the next record before taking the queue for empty.
const IDLE: Duration = Duration::from_secs(1);

/// How long a pass waits, at its end, for the records it handed back to be ready again.
const REQUEUE_WAIT: Duration = Duration::from_secs(2);

/// Ready messages in `queue` (a passive declare).
async fn ready_count(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .map(|q| q.message_count())
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

/// Fails with a user error if an exchange does not exist (checked on a throwaway channel, since
/// the broker closes the channel of a failed passive declare).
pub(crate) async fn require_exchange(
    connection: &Connection,
    exchange: &str,
) -> Result<(), DlqError> {
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    let options = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let result = channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            options,
            FieldTable::default(),
        )
        .await;
    match result {
        Ok(()) => {
            broker::close_channel(&channel, 200, "done").await;
            Ok(())
        }
        Err(e) if is_not_found(&e) => Err(DlqError::Usage(format!(
            "exchange {exchange} does not exist: run `switchyard topology` (or start the service) first"
        ))),
        Err(source) => Err(DlqError::Broker(BrokerError::Amqp {
            context: format!("inspecting {exchange}"),
            source,
        })),
    }
}
