//! A broker cluster, not a broker (issue 18): the service, given the three node URLs of a real
//! RabbitMQ cluster that this test starts on this machine, rides out a follower node stopped and
//! started, then the loss for good (`kill -9`) of the node it is connected to, while a paced
//! stream of events runs. Everything published is delivered, the service moves to a live node
//! within seconds, and duplicate calls stay within what was unsettled when the node died.
//!
//! It starts three extra RabbitMQ nodes (30 s or more), so it is ignored by default and
//! `make test` runs it alone, after the rest (`--run-ignored only`). The shared broker is not
//! touched.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::Cluster;
use support::paced::Paced;
use support::{
    FakeServer, Process, Reply, http_get, metric_value, posting_workflow, run_switchyard,
    test_config_yaml, unique_prefix, wait_until_within, write_workflows_and_secrets,
};
use switchyard::broker::message::action_id;
use tokio_util::sync::CancellationToken;

/// Events per second the stream publishes.
const RATE: usize = 200;
/// Unacknowledged messages the service may hold per consumer (router and the http queue): what
/// a lost connection can give back to be delivered again.
const PREFETCH: usize = 64;
/// Duplicate calls the loss of the node may cause at most: each consumer's unacknowledged
/// messages (a prefetch each), plus the acks it had sent that the dying node had not yet written
/// to the queue's log, which come back too. At 200 events/s that is a few hundred milliseconds of
/// acks on a loaded machine: taken as another prefetch per consumer. (0–24 on an idle machine, 156
/// with a build running beside it, whose follower took 104 s to come back.)
const DUPLICATES_BOUND: usize = 4 * PREFETCH;
/// How long moving to a live node may take at most.
const MOVE_WITHIN: Duration = Duration::from_secs(10);

/// Nodes named by the service's `connected to the broker` log lines (JSON), in order.
fn connected_nodes(logs: &str) -> Vec<String> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "connected to the broker; topology declared")
        .filter_map(|line| line["node"].as_str().map(str::to_owned))
        .collect()
}

/// `switchyard topology` against the cluster, reading leaders from node `management`'s API.
async fn topology(cluster: &Cluster, prefix: &str, management: usize) -> String {
    let urls = cluster.urls().join(",");
    let management_url = cluster.nodes[management].management_url();
    let ran = run_switchyard(
        &["topology", "--config", "config/switchyard.yaml"],
        &[
            ("SWITCHYARD__AMQP__URL", urls.as_str()),
            ("SWITCHYARD__AMQP__PREFIX", prefix),
            ("SWITCHYARD__AMQP__QUORUM_REPLICAS", "3"),
            ("SWITCHYARD__AMQP__MANAGEMENT_URL", &management_url),
        ],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    ran.stdout
}

/// The leader named on the router queue's line of `topology`, and its members.
fn router_placement(topology: &str, prefix: &str) -> (String, Vec<String>) {
    let line = topology
        .lines()
        .find(|line| line.starts_with(&format!("queue {prefix}.router ")))
        .unwrap_or_else(|| panic!("no router queue line:\n{topology}"));
    let placement = line
        .split_once("  leader: ")
        .unwrap_or_else(|| panic!("no leader on {line:?}"))
        .1;
    let (leader, members) = placement
        .split_once(", members: ")
        .unwrap_or_else(|| panic!("no members on {line:?}"));
    (
        leader.to_owned(),
        members.split(' ').map(str::to_owned).collect(),
    )
}

/// Distinct Idempotency-Keys the fake received, and all its requests.
fn keys(fake: &FakeServer) -> (BTreeSet<String>, usize) {
    fake.inspect(|requests| {
        let keys = requests
            .iter()
            .filter_map(|r| r.header("idempotency-key").map(str::to_owned))
            .collect();
        (keys, requests.len())
    })
}

/// The node of the cluster that is never stopped or killed: where a failure is diagnosed.
const LIVE_NODE: usize = 2;

/// Waits until `count` more distinct keys arrived (the service must keep running); on a timeout
/// the message has what the cluster says of `prefix`'s router and http queues.
async fn more_delivered(
    service: &mut Process,
    fake: &FakeServer,
    (cluster, prefix): (&Cluster, &str),
    what: &str,
    count: usize,
) {
    let target = keys(fake).0.len() + count;
    let deadline = Instant::now() + Duration::from_secs(60);
    while keys(fake).0.len() < target {
        service.assert_running();
        if Instant::now() >= deadline {
            // What the service said last is what tells a stuck consumer from a lost connection.
            let logs = service.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            // And what the broker says of the queues the stream goes through.
            let queues = [format!("{prefix}.router"), format!("{prefix}.action.http")];
            let broker = cluster.diagnose(LIVE_NODE, &queues).await;
            panic!(
                "timed out after 60s waiting for {what}: {} of {target} delivered; the service's last log lines:\n{}\n{broker}",
                keys(fake).0.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "starts a private three-node RabbitMQ cluster; run serially with --run-ignored only"]
async fn the_service_moves_to_a_live_node_when_its_node_dies_and_delivers_everything() {
    let booting = Instant::now();
    let mut cluster = Cluster::start(3).await;
    let cluster_up = booting.elapsed();
    let (a, b, c) = (0, 1, 2);
    eprintln!(
        "cluster of {} nodes up in {cluster_up:.1?}",
        cluster.nodes.len()
    );

    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let workflows = posting_workflow("cluster", &format!("{}/cluster", fake.url()));
    let dir = tempfile::tempdir().expect("tempdir");
    write_workflows_and_secrets(dir.path(), &workflows, &[]);
    let prefix = unique_prefix("cluster");
    let extra = serde_json::json!({
        "amqp": { "url": cluster.urls(), "quorum_replicas": 3, "connect_timeout": "5s" },
        "router": { "prefetch": PREFETCH },
        "worker": { "prefetch": PREFETCH, "connectors": ["http"] },
        "log": { "format": "json", "level": "info" },
    });
    let config = dir.path().join("switchyard.yaml");
    std::fs::write(
        &config,
        test_config_yaml(&prefix, dir.path(), &extra.to_string()),
    )
    .expect("write the config");
    let mut service = Process::spawn(&config, dir.path(), "service");
    service.wait_ready(Duration::from_secs(60)).await;
    assert_eq!(
        connected_nodes(&service.logs()),
        vec![cluster.nodes[a].label()],
        "the first node of the list first"
    );

    let before = topology(&cluster, &prefix, c).await;
    let (leader, members) = router_placement(&before, &prefix);
    let names: BTreeSet<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(
        members.iter().cloned().collect::<BTreeSet<_>>(),
        names,
        "quorum_replicas 3: a replica on every node"
    );
    assert!(names.contains(&leader), "{before}");

    // The stream: through node c (then b, then a), so only the service loses its node.
    let confirmed = Arc::new(AtomicUsize::new(0));
    let stop_publishing = CancellationToken::new();
    let paced = Paced {
        urls: vec![
            cluster.nodes[c].url(),
            cluster.nodes[b].url(),
            cluster.nodes[a].url(),
        ],
        exchange: format!("{prefix}.events"),
        rate: RATE,
    };
    let publisher = tokio::spawn(paced.run(
        (0..).map(|i| format!("evt_cl_{i:06}")),
        confirmed.clone(),
        stop_publishing.clone(),
    ));
    more_delivered(
        &mut service,
        &fake,
        (&cluster, &prefix),
        "the stream flowing",
        300,
    )
    .await;

    // A follower (b: neither the service's node nor the publisher's) stops and comes back.
    let follower_stopped = Instant::now();
    cluster.stop(b).await;
    let metrics = format!("http://127.0.0.1:{}/metrics", service.port);
    more_delivered(
        &mut service,
        &fake,
        (&cluster, &prefix),
        "deliveries while the follower is down",
        200,
    )
    .await;
    let text = http_get(&metrics).await.expect("/metrics").1;
    assert_eq!(
        metric_value(&text, "switchyard_broker_connected"),
        Some(1.0),
        "the service kept its node"
    );
    cluster.restart(b).await;
    cluster.await_queues_online(c, &prefix, 3).await;
    let follower_back = follower_stopped.elapsed();
    more_delivered(
        &mut service,
        &fake,
        (&cluster, &prefix),
        "deliveries after the follower is back",
        200,
    )
    .await;
    assert_eq!(
        connected_nodes(&service.logs()).len(),
        1,
        "the follower's absence did not cost the service its connection"
    );
    let (arrived_at_kill, requests_at_kill) = keys(&fake);

    // The service's node dies for good.
    let killed = Instant::now();
    cluster.kill9(a);
    let mut moved_after = Duration::ZERO;
    wait_until_within(
        "the service connected to another node",
        Duration::from_secs(60),
        async || {
            service.assert_running();
            moved_after = killed.elapsed();
            connected_nodes(&service.logs()).len() == 2
        },
    )
    .await;
    let nodes = connected_nodes(&service.logs());
    assert_eq!(
        nodes[1],
        cluster.nodes[b].label(),
        "the next node of the list"
    );
    let ready = format!("http://127.0.0.1:{}/readyz", service.port);
    wait_until_within(
        "/readyz 200 on the new node",
        Duration::from_secs(30),
        async || matches!(http_get(&ready).await, Some((200, _))),
    )
    .await;
    let ready_after = killed.elapsed();
    more_delivered(
        &mut service,
        &fake,
        (&cluster, &prefix),
        "deliveries through the new node",
        1,
    )
    .await;
    let resumed_after = killed.elapsed();
    more_delivered(
        &mut service,
        &fake,
        (&cluster, &prefix),
        "the stream flowing after the move",
        400,
    )
    .await;
    assert!(
        moved_after <= MOVE_WITHIN,
        "moved to a live node in {moved_after:?} (at most {MOVE_WITHIN:?})"
    );
    let text = http_get(&metrics).await.expect("/metrics").1;
    assert_eq!(
        metric_value(&text, "switchyard_broker_connected"),
        Some(1.0)
    );
    for node in &cluster.nodes {
        // (The fake's own host:port is a destination label, SPEC §10.)
        assert!(
            !text.contains(&node.label()),
            "no node label on any metric: {}",
            node.label()
        );
    }

    stop_publishing.cancel();
    let published = tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("the publisher finished")
        .expect("the publisher did not panic");
    let wanted: BTreeSet<String> = published
        .confirmed
        .iter()
        .map(|id| action_id(id, "cluster", "post"))
        .collect();
    assert_eq!(wanted.len(), confirmed.load(Ordering::SeqCst));
    wait_until_within(
        "every confirmed event delivered",
        Duration::from_secs(120),
        async || {
            service.assert_running();
            keys(&fake).0.is_superset(&wanted)
        },
    )
    .await;
    let (arrived, requests) = keys(&fake);
    assert_eq!(arrived, wanted, "every event published, and only those");
    let duplicates = requests - arrived.len();
    let duplicates_at_move =
        (requests - requests_at_kill) - (arrived.len() - arrived_at_kill.len());

    let after = topology(&cluster, &prefix, c).await;
    let (new_leader, members) = router_placement(&after, &prefix);
    assert_ne!(new_leader, cluster.nodes[a].name, "a live leader:\n{after}");
    assert!(names.contains(&new_leader), "{after}");
    assert_eq!(members.len(), 3, "the dead node is still a member");

    let logs = service.logs();
    assert!(!logs.contains("guest:guest@"), "no password in the logs");
    eprintln!(
        "cluster figures: {} events published at {RATE}/s ({} publishes, {} connections), \
         {} delivered (distinct Idempotency-Keys), {requests} calls, duplicates {duplicates} \
         ({duplicates_at_move} around the kill; bound {DUPLICATES_BOUND}); follower stopped and back in \
         {follower_back:.1?}; after kill -9 of the connected node: moved to {} in {moved_after:.2?}, \
         /readyz 200 in {ready_after:.2?}, first delivery in {resumed_after:.2?}; router queue \
         leader {leader} -> {new_leader}; cluster start {cluster_up:.1?}",
        wanted.len(),
        published.publishes,
        published.connections,
        arrived.len(),
        nodes[1],
    );
    assert!(
        duplicates <= DUPLICATES_BOUND,
        "{duplicates} duplicate calls: at most what was unsettled when the node died ({DUPLICATES_BOUND})"
    );

    service.stop_cleanly().await;
}
