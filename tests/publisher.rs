//! The shared confirm-mode [`Publisher`] against the real broker: when many tasks on several
//! threads publish through it at once (the router's event tasks, the worker's retries and
//! dead-letters), each publish gets its own confirm. The router acks an event on the strength of
//! these confirms, so a confirm answered for another message could lose one.
//!
//! The broker refuses (nacks) whatever exceeds a bounded queue, so a mix-up shows as a message
//! confirmed but not stored. Without `Publisher::send`'s ordering lock this failed about one run in
//! three ("confirmed but not stored [\"m10167\"], stored but refused [\"m09826\"]").

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use switchyard::broker::Publisher;

use support::{AfterGet, Broker, unique_prefix};

/// Messages published, and how many the queue takes before it refuses (nacks) the rest.
const MESSAGES: usize = 20000;
const ROOM: usize = 10000;
const TASKS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_each_get_their_own_confirm() {
    let broker = Broker::connect().await;
    let queue = format!("{}.bounded", unique_prefix("publisher"));
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(ROOM as i64));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    broker
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("declare the bounded queue");

    let connection = Connection::connect(support::AMQP_URL, ConnectionProperties::default())
        .await
        .expect("connect");
    let publisher = Publisher::open(&connection).await.expect("publisher");
    let queue = Arc::new(queue);
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (publisher, queue) = (publisher.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for n in (task..MESSAGES).step_by(TASKS) {
                let body = format!("m{n:05}");
                let pending = publisher
                    .send("", &queue, body.as_bytes(), BasicProperties::default())
                    .await
                    .expect("publish");
                outcomes.push((body, pending));
                // Let the other tasks in between, as in the service.
                tokio::task::yield_now().await;
            }
            let mut confirmed = Vec::new();
            for (body, pending) in outcomes {
                let ok = Publisher::confirmed(pending, "bounded").await.is_ok();
                confirmed.push((body, ok));
            }
            confirmed
        }));
    }
    let mut acked = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for task in tasks {
        for (body, ok) in task.await.expect("publishing task") {
            if ok {
                acked.insert(body);
            } else {
                refused.insert(body);
            }
        }
    }

    let stored: BTreeSet<String> = broker
        .take_all(&queue, AfterGet::Ack)
        .await
        .into_iter()
        .map(|got| String::from_utf8_lossy(&got.body).into_owned())
        .collect();
    let _ = broker
        .channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;

    assert_eq!(stored.len(), ROOM, "the queue took exactly its room");
    assert_eq!(
        refused.len(),
        MESSAGES - ROOM,
        "the broker refused the rest"
    );
    let confirmed_not_stored: Vec<_> = acked.difference(&stored).take(5).collect();
    let stored_not_confirmed: Vec<_> = stored.difference(&acked).take(5).collect();
    assert!(
        confirmed_not_stored.is_empty() && stored_not_confirmed.is_empty(),
        "confirms answered for the wrong messages: confirmed but not stored {confirmed_not_stored:?}, \
         stored but refused {stored_not_confirmed:?}"
    );
}
