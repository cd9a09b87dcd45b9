//! A broker restart during a run (issue 3 item 5): `rabbitmqctl stop_app` while events flow,
//! `/readyz` and `switchyard_broker_connected` report the outage, `start_app`, and the service
//! recovers on its own and delivers every event.
//!
//! It stops the broker every other test shares, so it is ignored by default and `make test` runs
//! it alone, after the rest (`--run-ignored only`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::paced::Paced;
use support::{
    AMQP_URL, FakeServer, Harness, Recorded, Reply, http_get, posting_workflow, rabbitmqctl,
    rabbitmqctl_path, wait_until_within,
};
use switchyard::broker::message::action_id;
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 2_000;
/// Events per second the test publishes.
const RATE: usize = 200;

/// The broker application is stopped while this lives; dropping it (also on a panic) starts it
/// again, so a failing test never leaves the shared broker down.
struct Outage {
    stopped: bool,
}

impl Outage {
    fn begin() -> Outage {
        rabbitmqctl(&["stop_app"]);
        Outage { stopped: true }
    }

    fn end(&mut self) {
        if self.stopped {
            self.stopped = false;
            rabbitmqctl(&["start_app"]);
            rabbitmqctl(&["await_startup"]);
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if self.stopped {
            self.stopped = false;
            let _ = Command::new(rabbitmqctl_path()).arg("start_app").status();
            let _ = Command::new(rabbitmqctl_path())
                .arg("await_startup")
                .status();
        }
    }
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
    let workflows = posting_workflow("restart", &format!("{}/restart", fake.url()));
    let h = Harness::start("restart", &workflows, "", &[]).await;
    let ready = format!("http://{}/readyz", h.metrics_addr);
    let connected = "switchyard_broker_connected";

    let ids: Vec<String> = (0..EVENTS).map(|i| format!("evt_rs_{i:05}")).collect();
    let confirmed = Arc::new(AtomicUsize::new(0));
    let paced = Paced {
        urls: vec![AMQP_URL.to_owned()],
        exchange: h.name("events"),
        rate: RATE,
    };
    let publisher = tokio::spawn(paced.run(
        ids.clone().into_iter(),
        confirmed.clone(),
        CancellationToken::new(),
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
