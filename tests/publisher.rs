//! The shared confirm-mode [`Publisher`] against the real broker: when many tasks on several
//! threads publish through it at once (the router's event tasks, the worker's retries and
//! dead-letters), each publish gets its own confirm. The router acks an event on the strength of
//! these confirms, so a confirm answered for another message could lose one.
//!
//! The broker refuses (nacks) whatever exceeds a bounded queue, so a mix-up shows as a message
//! confirmed but not stored. Without `Publisher::send`'s ordering lock this failed about one run in
//! three ("confirmed but not stored [\"m10167\"], stored but refused [\"m09826\"]").
//!
//! And the router, when the broker refuses its action messages: it hands the event back after a
//! wait that grows with each refusal in a row, instead of at once (the worker does the same with
//! an action whose retry or dead letter is refused; `broker::acks::Refusals` serves both).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use switchyard::Config;
use switchyard::broker::Publisher;

use support::{
    AfterGet, Broker, Process, TopologyGuard, event, posting_workflow, rabbitmqctl,
    rabbitmqctl_path, test_config_yaml, unique_prefix, wait_until_within,
    write_workflows_and_secrets,
};

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

/// Removes a policy of the local broker when dropped, so a failing test leaves none behind.
struct PolicyGuard(String);

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(rabbitmqctl_path())
            .args(["clear_policy", &self.0])
            .output();
    }
}

/// The router's log line for a refused event.
const ROUTER_REFUSED: &str = "an action message was not confirmed";

/// The waits logged (lines starting with `message`) before a refused delivery went back, and when
/// they were logged.
fn refusals(logs: &str, message: &str) -> Vec<(chrono::DateTime<chrono::Utc>, u64)> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .filter_map(|line| {
            let at = line["timestamp"].as_str()?.parse().ok()?;
            Some((at, line["wait_ms"].as_u64()?))
        })
        .collect()
}

/// The first four waits were 100, 200, 400 and 800 ms, and each delivery came back no sooner.
fn assert_waited(seen: &[(chrono::DateTime<chrono::Utc>, u64)]) {
    let waits: Vec<u64> = seen.iter().map(|(_, wait)| *wait).take(4).collect();
    assert_eq!(waits, [100, 200, 400, 800], "{seen:?}");
    for pair in seen.windows(2).take(3) {
        let apart = (pair[1].0 - pair[0].0).num_milliseconds();
        assert!(
            apart >= i64::try_from(pair[0].1).unwrap_or(i64::MAX) - 5,
            "the delivery came back {apart} ms after a refusal that was to wait {} ms: {seen:?}",
            pair[0].1
        );
    }
}

/// Sets a policy that makes the local broker refuse every message for `queue` (at most 0
/// messages, refuse the rest); removed when dropped.
fn refusing(queue: &str, name: &str) -> PolicyGuard {
    let policy = PolicyGuard(name.to_owned());
    rabbitmqctl(&[
        "set_policy",
        "--apply-to",
        "queues",
        &policy.0,
        &format!("^{}$", queue.replace('.', "\\.")),
        r#"{"max-length": 0, "overflow": "reject-publish"}"#,
    ]);
    policy
}

/// A queue that refuses the router's action messages (here a policy: at most 0 messages, refuse
/// the rest; in a cluster, a quorum queue whose leader died) must not make the router hand the
/// event back and take it again at full speed: each refusal in a row waits longer; after 15 s
/// of nothing but refusals the router starts a new session (once); and the event goes through
/// once the queue takes messages again.
#[tokio::test(flavor = "multi_thread")]
async fn the_router_waits_longer_after_each_refusal_reconnects_after_15_s_and_routes_once_the_queue_takes_messages()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    write_workflows_and_secrets(
        dir.path(),
        &posting_workflow("refused", "http://127.0.0.1:9/refused"),
        &[],
    );
    let prefix = unique_prefix("refused");
    let extra =
        r#"{"amqp": {"queue_type": "classic"}, "log": {"format": "json", "level": "info"}}"#;
    let yaml = test_config_yaml(&prefix, dir.path(), extra);
    // The service's own configuration: its retry tiers are not the defaults.
    let guard = TopologyGuard::new(&Config::from_yaml(&yaml).expect("config"));
    let queue = format!("{prefix}.action.http");
    // Set before the service declares the queue, so that the queue has it from the start.
    let policy = refusing(&queue, &prefix);
    let config = dir.path().join("switchyard.yaml");
    std::fs::write(&config, yaml).expect("write the config");
    // The router alone: nothing consumes the action queue, so what the router publishes stays there.
    let (command, port) = Process::run_command(&config);
    let mut command = command;
    command.args(["--role", "router"]);
    let mut service = Process::start(command, port, dir.path(), "router");
    service.wait_ready(Duration::from_secs(60)).await;

    let broker = Broker::connect().await;
    broker
        .publish(
            &format!("{prefix}.events"),
            "Gameplay.DataCaptured",
            event("evt_refused_1", "Gameplay.DataCaptured")
                .to_string()
                .as_bytes(),
        )
        .await;
    wait_until_within("four refusals", Duration::from_secs(30), async || {
        service.assert_running();
        refusals(&service.logs(), ROUTER_REFUSED).len() >= 4
    })
    .await;
    assert_waited(&refusals(&service.logs(), ROUTER_REFUSED));
    assert_eq!(
        broker.queue_len(&queue).await,
        0,
        "nothing taken while refused"
    );

    // Refused with no success for Refusal::RECONNECT_AFTER (15 s): a new session, once.
    let message = |line: &serde_json::Value| line["message"].as_str().map(str::to_owned);
    let lines = |logs: &str| -> Vec<serde_json::Value> {
        logs.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    wait_until_within("a new session", Duration::from_secs(40), async || {
        service.assert_running();
        lines(&service.logs())
            .iter()
            .filter(|l| message(l).is_some_and(|m| m.starts_with("connected to the broker")))
            .count()
            >= 2
    })
    .await;
    let logs = lines(&service.logs());
    let at = |line: &serde_json::Value| {
        line["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
    };
    let first_refusal = refusals(&service.logs(), ROUTER_REFUSED)[0].0;
    let decided: Vec<&serde_json::Value> = logs
        .iter()
        .filter(|l| message(l).is_some_and(|m| m.contains("starting a new session")))
        .collect();
    assert_eq!(decided.len(), 1, "once per session: {decided:?}");
    let after = at(decided[0]).expect("a timestamp") - first_refusal;
    assert!(
        after.num_milliseconds() >= 15_000,
        "a new session only after 15 s of refusals, not {after}"
    );
    assert_eq!(
        decided[0]["refused_for_s"].as_u64().map(|s| s >= 15),
        Some(true)
    );

    rabbitmqctl(&["clear_policy", &policy.0]);
    let router = format!("{prefix}.router");
    wait_until_within(
        "the action message in its queue and the event acked",
        Duration::from_secs(30),
        async || {
            service.assert_running();
            broker.queue_len(&queue).await == 1 && broker.queue_len(&router).await == 0
        },
    )
    .await;
    service.stop_cleanly().await;
    drop(guard);
}
