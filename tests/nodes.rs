//! `amqp.url` as a list of broker nodes (issue 18), against the shared broker and ports where
//! nothing listens: the service and every command try the nodes in turn, a bad entry is named
//! without its password, and `topology` says so when it cannot tell where the leaders are.
//! The real three-node cluster is tests/cluster.rs.

mod support;

use support::{
    AMQP_URL, FakeServer, Harness, Reply, TopologyGuard, event, posting_workflow, run_switchyard,
    unique_prefix, wait_until,
};
use switchyard::Config;

const EXAMPLE_EVENT_FILE: &str = "examples/events/data-captured.json";
/// Nothing listens on ports 1 and 2 of the loopback: connecting is refused at once.
const DEAD_1: &str = "amqp://guest:guest@127.0.0.1:1/%2f";
const DEAD_2: &str = "amqp://guest:guest@127.0.0.1:2/%2f";

#[tokio::test(flavor = "multi_thread")]
async fn commands_try_the_nodes_in_turn_and_topology_says_why_leaders_are_unknown() {
    let prefix = unique_prefix("nodes-cli");
    let guard = TopologyGuard::new(
        &Config::from_yaml(&format!("amqp: {{ prefix: {prefix} }}")).expect("config"),
    );
    let urls = format!("{DEAD_1}, {AMQP_URL}");
    let env = [
        ("SWITCHYARD__AMQP__URL", urls.as_str()),
        ("SWITCHYARD__AMQP__PREFIX", prefix.as_str()),
        ("SWITCHYARD__AMQP__MANAGEMENT_URL", "http://127.0.0.1:1"),
    ];
    let config = ["--config", "config/switchyard.yaml"];

    let ran = run_switchyard(&[&["topology"][..], &config].concat(), &env).await;
    assert_eq!(ran.code, Some(0), "the second node answered: {ran:?}");
    let router = format!("queue {prefix}.router <- {prefix}.events #  leader: unknown");
    assert!(ran.stdout.contains(&router), "{ran:?}");
    assert!(
        ran.stdout
            .contains("leader unknown (management API not reachable at http://127.0.0.1:1/: "),
        "says why, and still succeeds: {ran:?}"
    );

    let publish = [&["publish", "--event", EXAMPLE_EVENT_FILE][..], &config].concat();
    let ran = run_switchyard(&publish, &env).await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stdout.contains("published 1 event(s)"), "{ran:?}");
    let broker = support::Broker::connect().await;
    wait_until("the event in the router queue", async || {
        broker.queue_len(&format!("{prefix}.router")).await == 1
    })
    .await;
    let _ = broker.connection.close(200, "done".into()).await;
    guard.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_that_reaches_no_node_names_each_and_exits_2() {
    let urls = format!("{DEAD_1},{DEAD_2}");
    let ran = run_switchyard(
        &[
            "publish",
            "--event",
            EXAMPLE_EVENT_FILE,
            "--config",
            "config/switchyard.yaml",
        ],
        &[("SWITCHYARD__AMQP__URL", &urls)],
    )
    .await;
    ran.assert_broker_unreachable("no broker node could be reached: ");
    for node in ["127.0.0.1:1", "127.0.0.1:2"] {
        assert!(ran.stderr.contains(node), "names {node}: {ran:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_node_url_is_a_user_error_named_without_its_password() {
    let urls = format!("{AMQP_URL},amqp://ops:hunter2@rabbit-2:notaport/%2f");
    let ran = run_switchyard(
        &["validate", "--config", "config/switchyard.yaml"],
        &[("SWITCHYARD__AMQP__URL", &urls)],
    )
    .await;
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(
        ran.stderr
            .contains("amqp.url entry 2 (amqp://ops:***@rabbit-2:notaport/%2f)"),
        "{ran:?}"
    );
    assert!(!ran.stderr.contains("hunter2"), "{ran:?}");
}

/// The service skips a node that refuses, delivers through the next, and a later declare with
/// another replica count than the queues were created with does not stop anything.
#[tokio::test(flavor = "multi_thread")]
async fn the_service_connects_through_the_next_node_and_keeps_existing_replica_counts() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let workflows = posting_workflow("nodes", &format!("{}/nodes", fake.url()));
    let extra = format!("amqp: {{ url: ['{DEAD_1}', '{AMQP_URL}'], quorum_replicas: 1 }}");
    let h = Harness::start("nodes", &workflows, &extra, &[]).await;
    h.publish(&event("evt_nodes_1", "Gameplay.DataCaptured"))
        .await;
    wait_until("the event delivered", async || fake.count() == 1).await;

    // `topology` with config/switchyard.yaml declares that file's retry tiers too, not the test's.
    let declared = TopologyGuard::new(
        &Config::from_yaml(&format!("amqp: {{ prefix: {} }}", h.prefix)).expect("config"),
    );
    let ran = run_switchyard(
        &["topology", "--config", "config/switchyard.yaml"],
        &[
            ("SWITCHYARD__AMQP__PREFIX", &h.prefix),
            ("SWITCHYARD__AMQP__QUORUM_REPLICAS", "2"),
            ("SWITCHYARD__AMQP__MANAGEMENT_URL", "http://127.0.0.1:1"),
        ],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    h.publish(&event("evt_nodes_2", "Gameplay.DataCaptured"))
        .await;
    wait_until("the service still delivers", async || fake.count() == 2).await;
    h.finish().await;
    declared.delete().await;
}
