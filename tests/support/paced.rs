//! A paced publisher that rides through broker outages (tests/broker_restart.rs,
//! tests/cluster.rs): `Gameplay.DataCaptured` events at a steady rate, with confirms; when its
//! connection fails it connects again, to the next node of its list, and publishes again every
//! id whose confirm did not come back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use super::event;

/// Publishes per confirm round.
const BATCH: usize = 10;

/// What the publisher did.
#[derive(Debug, Default)]
pub struct Published {
    /// basic.publish calls, re-publishes included.
    pub publishes: usize,
    /// Publishes whose confirm never came (or was a nack): sent again on a new connection.
    pub unconfirmed: usize,
    /// Ids not sent because the channel had just failed: sent on the new connection.
    pub deferred: usize,
    /// Connections opened.
    pub connections: usize,
    /// Every id the broker confirmed, in order.
    pub confirmed: Vec<String>,
}

/// Where to publish and how fast.
pub struct Paced {
    /// Broker nodes, tried in turn.
    pub urls: Vec<String>,
    /// The events exchange.
    pub exchange: String,
    /// Events per second.
    pub rate: usize,
}

async fn open_channel(url: &str) -> Option<(Connection, Channel)> {
    let connect = Connection::connect(url, ConnectionProperties::default());
    let connection = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .ok()?
        .ok()?;
    let channel = connection.create_channel().await.ok()?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .ok()?;
    Some((connection, channel))
}

impl Paced {
    /// Publishes `ids` (`BATCH` per confirm round) until they run out or `stop` fires, then
    /// until every id taken is confirmed; `confirmed` counts as it goes.
    pub async fn run(
        self,
        ids: impl Iterator<Item = String>,
        confirmed: Arc<AtomicUsize>,
        stop: CancellationToken,
    ) -> Published {
        let mut ids = ids.fuse();
        let mut todo: VecDeque<String> = VecDeque::new();
        let mut session: Option<(Connection, Channel)> = None;
        let mut node = 0;
        let mut stats = Published::default();
        let interval = Duration::from_secs_f64(BATCH as f64 / self.rate as f64);
        let mut next = Instant::now();
        loop {
            if !stop.is_cancelled() {
                while todo.len() < BATCH {
                    match ids.next() {
                        Some(id) => todo.push_back(id),
                        None => break,
                    }
                }
            }
            if todo.is_empty() {
                break;
            }
            let Some((_, channel)) = &session else {
                session = open_channel(&self.urls[node % self.urls.len()]).await;
                match session {
                    Some(_) => stats.connections += 1,
                    None => {
                        node += 1;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                continue;
            };
            let batch: Vec<String> = todo.drain(..BATCH.min(todo.len())).collect();
            let mut unconfirmed = Vec::new();
            let mut pending = Vec::new();
            for id in batch {
                if !unconfirmed.is_empty() {
                    // The channel failed: keep the order, send the rest on the next connection.
                    stats.deferred += 1;
                    unconfirmed.push(id);
                    continue;
                }
                let body = serde_json::to_vec(&event(&id, "Gameplay.DataCaptured")).expect("JSON");
                let publish = channel.basic_publish(
                    self.exchange.as_str().into(),
                    "Gameplay.DataCaptured".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2),
                );
                stats.publishes += 1;
                match tokio::time::timeout(Duration::from_secs(5), publish).await {
                    Ok(Ok(confirm)) => pending.push((id, confirm)),
                    _ => {
                        stats.unconfirmed += 1;
                        unconfirmed.push(id);
                    }
                }
            }
            for (id, confirm) in pending {
                match tokio::time::timeout(Duration::from_secs(10), confirm).await {
                    Ok(Ok(Confirmation::Ack(None))) => {
                        confirmed.fetch_add(1, Ordering::SeqCst);
                        stats.confirmed.push(id);
                    }
                    _ => {
                        stats.unconfirmed += 1;
                        unconfirmed.push(id);
                    }
                }
            }
            if !unconfirmed.is_empty() {
                for id in unconfirmed.into_iter().rev() {
                    todo.push_front(id);
                }
                if let Some((connection, _)) = session.take() {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        connection.close(200, "reconnecting".into()),
                    )
                    .await;
                }
                node += 1;
                continue;
            }
            next += interval;
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            } else {
                next = now;
            }
        }
        if let Some((connection, _)) = session {
            let _ = connection.close(200, "published".into()).await;
        }
        stats
    }
}
