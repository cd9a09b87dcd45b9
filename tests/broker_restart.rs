//! A broker restart during a run (issue 3 item 5): `rabbitmqctl stop_app` while events flow,
//! `/readyz` and `switchyard_broker_connected` report the outage, `start_app`, and the service
//! recovers on its own and delivers every event.
//!
//! It stops the broker every other test shares, so it is ignored by default and `make test` runs
//! it alone, after the rest (`--run-ignored only`).

mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::Value;
use support::{AMQP_URL, FakeServer, Harness, Recorded, Reply, event, http_get, wait_until_within};
use switchyard::broker::message::action_id;

const EVENTS: usize = 2_000;
/// Events per second the test publishes.
const RATE: usize = 200;
/// Publishes per confirm round.
const BATCH: usize = 10;

/// `rabbitmqctl`, wherever the package put it (`/usr/sbin` is not on every PATH).
fn rabbitmqctl() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("rabbitmqctl"))
        .find(|p| p.is_file())
        .expect("rabbitmqctl (the broker-restart test drives the local RabbitMQ node)")
}

fn ctl(args: &[&str]) {
    let out = Command::new(rabbitmqctl())
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The broker application is stopped while this lives; dropping it (also on a panic) starts it
/// again, so a failing test never leaves the shared broker down.
struct Outage {
    stopped: bool,
}

impl Outage {
    fn begin() -> Outage {
        ctl(&["stop_app"]);
        Outage { stopped: true }
    }

    fn end(&mut self) {
        if self.stopped {
            self.stopped = false;
            ctl(&["start_app"]);
            ctl(&["await_startup"]);
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if self.stopped {
            self.stopped = false;
            let _ = Command::new(rabbitmqctl()).arg("start_app").status();
            let _ = Command::new(rabbitmqctl()).arg("await_startup").status();
        }
    }
}

/// What the publisher did.
#[derive(Debug, Default)]
struct Published {
    /// basic.publish calls, re-publishes included.
    publishes: usize,
    /// Publishes whose confirm never came (or was a nack): sent again on a new connection.
    unconfirmed: usize,
    /// Ids not sent because the channel had just failed: sent on the new connection.
    deferred: usize,
    /// Connections opened.
    connections: usize,
}

async fn open_channel() -> Option<(Connection, Channel)> {
    let connect = Connection::connect(AMQP_URL, ConnectionProperties::default());
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

/// Publishes every event (`RATE` a second, `BATCH` per confirm round) to `exchange`, reconnecting
/// whenever the broker goes away and re-publishing every id whose confirm did not come back.
async fn publish_through_outages(
    exchange: String,
    ids: Vec<String>,
    confirmed: Arc<AtomicUsize>,
) -> Published {
    let mut todo: VecDeque<String> = ids.into();
    let mut session: Option<(Connection, Channel)> = None;
    let mut stats = Published::default();
    let interval = Duration::from_secs_f64(BATCH as f64 / RATE as f64);
    let mut next = Instant::now();
    while !todo.is_empty() {
        let Some((_, channel)) = &session else {
            session = open_channel().await;
            match session {
                Some(_) => stats.connections += 1,
                None => tokio::time::sleep(Duration::from_millis(250)).await,
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
                exchange.as_str().into(),
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

fn event_of(r: &Recorded) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v.get("event")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "restarts the shared broker; run serially with --run-ignored only"]
async fn broker_restart_mid_run_recovers_unaided_and_delivers_everything() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let workflows = format!(
        r#"
workflows:
  - id: restart
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - {{ id: post, http: {{ url: "{}/restart", body: '{{"event": "{{{{ event.id }}}}"}}' }} }}
"#,
        fake.url()
    );
    let h = Harness::start("restart", &workflows, "", &[]).await;
    let ready = format!("http://{}/readyz", h.metrics_addr);
    let connected = "switchyard_broker_connected";

    let ids: Vec<String> = (0..EVENTS).map(|i| format!("evt_rs_{i:05}")).collect();
    let confirmed = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn(publish_through_outages(
        h.name("events"),
        ids.clone(),
        confirmed.clone(),
    ));

    // Midway through the publishing, stop the broker.
    wait_until_within(
        "half the events confirmed",
        Duration::from_secs(60),
        async || confirmed.load(Ordering::SeqCst) >= EVENTS / 2,
    )
    .await;
    let delivered_before = fake.count();
    let mut outage = Outage::begin();
    let stopped_at = Instant::now();
    wait_until_within(
        "/readyz 503 and switchyard_broker_connected 0 while the broker is down",
        Duration::from_secs(30),
        async || {
            matches!(http_get(&ready).await, Some((503, _))) && h.metric(connected).await == 0.0
        },
    )
    .await;
    // The outage itself: deliberate.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(stopped_at.elapsed())).await;
    assert!(
        matches!(http_get(&ready).await, Some((503, _))),
        "/readyz still fails at the end of the outage"
    );
    assert_eq!(h.metric(connected).await, 0.0);
    outage.end();
    let restarted = Instant::now();

    wait_until_within(
        "/readyz 200 again without help",
        Duration::from_secs(90),
        async || matches!(http_get(&ready).await, Some((200, _))),
    )
    .await;
    let recovered_after = restarted.elapsed();
    assert_eq!(h.metric(connected).await, 1.0);

    let published = tokio::time::timeout(Duration::from_secs(120), publisher)
        .await
        .expect("the publisher finished within 120 s")
        .expect("the publisher did not panic");
    assert_eq!(confirmed.load(Ordering::SeqCst), EVENTS);

    // Every event id at the fake.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let distinct = fake.inspect(|r| r.iter().map(event_of).collect::<BTreeSet<_>>().len());
        if distinct >= EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 120 s only {distinct} of {EVENTS} event ids arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let requests = fake.requests();
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &requests {
        keys.entry(event_of(r))
            .or_default()
            .insert(r.header("idempotency-key").unwrap_or("").to_owned());
    }
    let arrived: BTreeSet<String> = keys.keys().cloned().collect();
    let wanted: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(arrived, wanted, "every event id, and only those");
    for (id, seen) in &keys {
        assert_eq!(
            seen,
            &BTreeSet::from([action_id(id, "restart", "post")]),
            "{id}: one Idempotency-Key"
        );
    }
    let duplicates = requests.len() - arrived.len();
    eprintln!(
        "broker restart figures: sent {EVENTS} ({} publishes: {} unconfirmed and sent again, {} deferred; {} connections), \
         delivered {} distinct ({} calls), duplicates {duplicates}; {delivered_before} delivered \
         before the stop, /readyz 200 again {recovered_after:?} after start_app",
        published.publishes,
        published.unconfirmed,
        published.deferred,
        published.connections,
        arrived.len(),
        requests.len(),
    );
    assert!(
        published.connections >= 2,
        "the publisher itself went through the outage: {published:?}"
    );
    assert!(
        delivered_before < EVENTS,
        "the outage came mid-run ({delivered_before} delivered before it)"
    );
    // The harness's own broker connection died with the broker: read through a new one.
    let broker = support::Broker::connect().await;
    assert_eq!(broker.queue_len(&h.name("dead-letter")).await, 0);
    assert_eq!(broker.queue_len(&h.name("action.http")).await, 0);
    let _ = broker.connection.close(200, "done".into()).await;
    h.finish().await;
}
