//! Delivery guarantees (SPEC §1 and §5, issue 3): quick and broker-held retries, exhaustion,
//! `Retry-After`, poison messages, `kill -9` mid-flight and SIGTERM under load, all against the
//! real broker with fake remotes scripted per request.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::http_attempts as attempts;
use support::{
    AfterGet, Broker, FakeServer, Harness, Process, Recorded, Reply, TopologyGuard, event,
    test_config_yaml, unique_prefix, wait_until, wait_until_within, write_workflows_and_secrets,
};
use switchyard::Config;
use switchyard::broker::Topology;
use switchyard::broker::message::action_id;

/// A script answering the n-th request (0-based) with `replies[n]`, and the last one after that.
fn scripted(replies: Vec<Reply>) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    let seen = AtomicUsize::new(0);
    move |_| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        replies[n.min(replies.len() - 1)].clone()
    }
}

/// A series' value in a `/metrics` text; a labelled counter never incremented is absent: 0.
fn count(metrics: &str, series: &str) -> f64 {
    support::metric_value(metrics, series).unwrap_or(0.0)
}

/// The `Idempotency-Key` of a request (empty when missing).
fn key(r: &Recorded) -> String {
    r.header("idempotency-key").unwrap_or("").to_owned()
}

/// The `event` field of a request's JSON body (empty when missing).
fn event_of(r: &Recorded) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v.get("event")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A one-action workflow posting `{"event": "<event id>"}` to `<fake>/<path>`.
fn one_action(workflow: &str, fake: &FakeServer, path: &str) -> String {
    format!(
        r#"
workflows:
  - id: {workflow}
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - {{ id: post, http: {{ url: "{}/{path}", body: '{{"event": "{{{{ event.id }}}}"}}' }} }}
"#,
        fake.url()
    )
}

/// Every retry tier queue of a harness is empty (nothing is still waiting to come back).
async fn assert_no_retry_pending(h: &Harness) {
    for (_, queue) in &Topology::new(&h.config).retry_queues {
        assert_eq!(h.broker.queue_len(queue).await, 0, "{queue} is empty");
    }
}

// ---------------------------------------------------------------------------------------------
// Retries

#[tokio::test(flavor = "multi_thread")]
async fn quick_retries_turn_503_503_200_into_one_success() {
    let fake = FakeServer::start(scripted(vec![
        Reply::status(503),
        Reply::status(503),
        Reply::json(200, &json!({ "ok": true })),
    ]))
    .await;
    let workflows = one_action("flaky", &fake, "flaky");
    let h = Harness::start(
        "quick",
        &workflows,
        "retry: { quick_attempts: 2, schedule: [1s, 1s], jitter: 0.2 }",
        &[],
    )
    .await;

    h.publish(&event("evt_quick_1", "Gameplay.DataCaptured"))
        .await;
    h.wait_metric(&attempts("success"), 1.0).await;

    let requests = fake.requests();
    assert_eq!(requests.len(), 3, "503, 503, 200: three calls");
    let want = action_id("evt_quick_1", "flaky", "post");
    for r in &requests {
        assert_eq!(key(r), want, "the same Idempotency-Key on every call");
        assert_eq!(event_of(r), "evt_quick_1");
    }
    // Both retries happened in process: quick, and no broker tier was used.
    let gap = requests[2].at - requests[0].at;
    assert!(
        gap < Duration::from_millis(1500),
        "quick retries back off from 100 ms; two broker-held 1 s delays would take 1.6 s or more: {gap:?}"
    );
    let metrics = h.metrics().await;
    assert_eq!(
        support::metric_value(&metrics, &attempts("retry")),
        Some(2.0)
    );
    assert_eq!(count(&metrics, &attempts("dead")), 0.0);
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    assert_eq!(h.broker.queue_len(&h.name("action.http")).await, 0);
    assert_no_retry_pending(&h).await;
    assert_eq!(fake.count(), 3, "nothing called after the success");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_tiers_turn_503_503_200_into_one_success_and_count_attempts() {
    // Two actions of one event, both through the broker tiers (no quick retries):
    // `ok` answers 503, 503, 200; `bad` answers 503, 503, 400, so that its dead-letter record
    // shows the attempt count carried through two TTL hops.
    let ok_calls = AtomicUsize::new(0);
    let bad_calls = AtomicUsize::new(0);
    let fake = FakeServer::start(move |r: &Recorded| {
        let counter = if r.path == "/ok" {
            &ok_calls
        } else {
            &bad_calls
        };
        match counter.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => Reply::text(503, "busy"),
            _ if r.path == "/ok" => Reply::json(200, &json!({ "ok": true })),
            _ => Reply::json(400, &json!({ "message": "email is invalid" })),
        }
    })
    .await;
    let workflows = r#"
workflows:
  - id: tiers
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - { id: ok, http: { url: "@FAKE@/ok", body: '{"event": "{{ event.id }}"}' } }
      - { id: bad, http: { url: "@FAKE@/bad", body: '{"event": "{{ event.id }}"}' } }
"#
    .replace("@FAKE@", &fake.url());
    let h = Harness::start(
        "tiers",
        &workflows,
        "retry: { quick_attempts: 0, schedule: [1s, 1s], jitter: 0.2 }",
        &[],
    )
    .await;

    h.publish(&event("evt_tiers_1", "Gameplay.DataCaptured"))
        .await;
    h.wait_metric(&attempts("success"), 1.0).await;
    h.wait_metric(&attempts("dead"), 1.0).await;

    let requests = fake.requests();
    let ok: Vec<&Recorded> = requests.iter().filter(|r| r.path == "/ok").collect();
    let bad: Vec<&Recorded> = requests.iter().filter(|r| r.path == "/bad").collect();
    assert_eq!(ok.len(), 3, "503, 503, 200: three calls");
    assert_eq!(bad.len(), 3, "503, 503, 400: three calls");
    for (calls, action) in [(&ok, "ok"), (&bad, "bad")] {
        let want = action_id("evt_tiers_1", "tiers", action);
        for r in calls.iter() {
            assert_eq!(
                key(r),
                want,
                "{action}: the same Idempotency-Key on every call"
            );
        }
        // Each retry waited in a 1 s tier: at least 1 s × (1 − jitter) between calls.
        for pair in calls.windows(2) {
            let gap = pair[1].at - pair[0].at;
            assert!(
                gap >= Duration::from_millis(800),
                "{action}: a broker-held retry came back after only {gap:?}"
            );
            assert!(
                gap < Duration::from_secs(8),
                "{action}: a 1 s tier held the retry for {gap:?}"
            );
        }
    }
    let metrics = h.metrics().await;
    // Two broker retries per action, no quick ones.
    assert_eq!(
        support::metric_value(&metrics, &attempts("retry")),
        Some(4.0)
    );

    // The only dead-letter record is `bad`'s; `ok` succeeded and left nothing behind.
    let records = h
        .broker
        .take_all(&h.name("dead-letter"), AfterGet::Ack)
        .await;
    assert_eq!(records.len(), 1, "only the 400 is dead-lettered");
    let record = &records[0];
    assert_eq!(
        record.header_str("x-switchyard-action").as_deref(),
        Some("bad")
    );
    assert_eq!(
        record.header_str("x-switchyard-error-class").as_deref(),
        Some("permanent")
    );
    assert_eq!(
        record.header_int("x-switchyard-attempts"),
        Some(3),
        "the attempt count survives both TTL hops:\n{}",
        record.headers_text()
    );
    assert_eq!(record.header_int("x-switchyard-retries"), Some(2));
    assert_eq!(record.header_int("x-switchyard-last-status"), Some(400));
    let first = record
        .header_str("x-switchyard-first-attempt-at")
        .expect("first attempt time");
    let dead = record
        .header_str("x-switchyard-dead-at")
        .expect("dead time");
    let first = chrono::DateTime::parse_from_rfc3339(&first).expect("RFC 3339");
    let dead = chrono::DateTime::parse_from_rfc3339(&dead).expect("RFC 3339");
    assert!(
        dead - first >= chrono::Duration::milliseconds(1600),
        "the first attempt time is kept across retries: {first} .. {dead}"
    );
    assert_eq!(record.json()["action"], "bad");
    assert_eq!(h.broker.queue_len(&h.name("action.http")).await, 0);
    assert_no_retry_pending(&h).await;
    assert_eq!(fake.count(), 6, "nothing called after the outcomes");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn always_500_is_exhausted_after_quick_and_broker_attempts() {
    let fake = FakeServer::start(|_| Reply::status(500)).await;
    let workflows = one_action("down", &fake, "down");
    let h = Harness::start(
        "exhausted",
        &workflows,
        "retry: { quick_attempts: 1, schedule: [1s, 1s], jitter: 0.2 }",
        &[],
    )
    .await;

    h.publish(&event("evt_down_1", "Gameplay.DataCaptured"))
        .await;
    let dead_letter = h.name("dead-letter");
    wait_until_within(
        "the dead-letter record",
        Duration::from_secs(60),
        async || h.broker.queue_len(&dead_letter).await >= 1,
    )
    .await;
    h.wait_metric(&attempts("dead"), 1.0).await;

    // 1 call + 1 quick retry, then one call after each of the two broker-held delays.
    let requests = fake.requests();
    assert_eq!(requests.len(), 4, "1 + 1 + 2 calls");
    let want = action_id("evt_down_1", "down", "post");
    assert!(requests.iter().all(|r| key(r) == want));
    assert!(
        requests[2].at - requests[1].at >= Duration::from_millis(800)
            && requests[3].at - requests[2].at >= Duration::from_millis(800),
        "the last two calls came from the broker tiers"
    );

    let records = h.broker.take_all(&dead_letter, AfterGet::Ack).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    let text = record.headers_text();
    assert_eq!(
        record.header_str("x-switchyard-error-class").as_deref(),
        Some("exhausted"),
        "{text}"
    );
    assert_eq!(
        record.header_int("x-switchyard-attempts"),
        Some(4),
        "{text}"
    );
    assert_eq!(record.header_int("x-switchyard-retries"), Some(2), "{text}");
    assert_eq!(
        record.header_int("x-switchyard-last-status"),
        Some(500),
        "{text}"
    );
    let reason = record.header_str("x-switchyard-reason").expect("a reason");
    assert!(
        reason.contains("gave up after 4 attempts") && reason.contains("127.0.0.1"),
        "the reason names the count and the host: {reason:?}"
    );
    assert!(reason.contains("500"), "and the status: {reason:?}");
    assert_eq!(
        record.header_str("x-switchyard-workflow").as_deref(),
        Some("down")
    );
    assert_eq!(record.json()["id"], json!(want), "the original message");
    let metrics = h.metrics().await;
    assert_eq!(
        support::metric_value(
            &metrics,
            "switchyard_dead_lettered_total{connector=\"http\",error_class=\"exhausted\"}"
        ),
        Some(1.0)
    );
    assert_eq!(count(&metrics, &attempts("success")), 0.0);
    assert_eq!(h.broker.queue_len(&h.name("action.http")).await, 0);
    assert_no_retry_pending(&h).await;
    assert_eq!(fake.count(), 4, "no call after the dead-letter");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_skips_quick_retries_and_delays_the_next_call() {
    let fake = FakeServer::start(scripted(vec![
        Reply {
            headers: vec![("retry-after".into(), "3".into())],
            ..Reply::text(429, "slow down")
        },
        Reply::json(200, &json!({ "ok": true })),
    ]))
    .await;
    let workflows = one_action("limited", &fake, "limited");
    let h = Harness::start(
        "retryafter",
        &workflows,
        "retry: { quick_attempts: 2, schedule: [1s, 5s], jitter: 0.2 }",
        &[],
    )
    .await;

    h.publish(&event("evt_limited_1", "Gameplay.DataCaptured"))
        .await;
    wait_until_within(
        "the call after Retry-After",
        Duration::from_secs(60),
        async || fake.count() >= 2,
    )
    .await;
    h.wait_metric(&attempts("success"), 1.0).await;

    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "429 then 200: two calls, no quick retry");
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_secs(3),
        "Retry-After: 3 was honoured: the next call came after {gap:?}"
    );
    assert!(
        gap < Duration::from_secs(8),
        "the wait is stretched to 3 s, not to the largest tier's 6 s bound and beyond: {gap:?}"
    );
    assert_eq!(key(&requests[0]), key(&requests[1]));
    // One broker-held retry, none in process.
    assert_eq!(h.metric(&attempts("retry")).await, 1.0);
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    assert_no_retry_pending(&h).await;
    assert_eq!(fake.count(), 2);
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Poison

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_action_message_is_dead_lettered_and_the_worker_carries_on() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let workflows = one_action("good", &fake, "good");
    // Quick retries on: a config failure must not use them.
    let h = Harness::start(
        "poison",
        &workflows,
        "retry: { quick_attempts: 2, schedule: [1s] }",
        &[],
    )
    .await;

    let poison = b"this is not { an action message";
    h.broker.publish("", &h.name("action.http"), poison).await;
    let dead_letter = h.name("dead-letter");
    wait_until("the poison message dead-lettered", async || {
        h.broker.queue_len(&dead_letter).await >= 1
    })
    .await;
    h.wait_metric(&attempts("dead"), 1.0).await;

    // The worker is still consuming: a good event afterwards is delivered.
    h.publish(&event("evt_after_poison", "Gameplay.DataCaptured"))
        .await;
    h.wait_metric(&attempts("success"), 1.0).await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(event_of(&requests[0]), "evt_after_poison");

    let records = h.broker.take_all(&dead_letter, AfterGet::Ack).await;
    assert_eq!(records.len(), 1, "dead-lettered once, not redelivered");
    let record = &records[0];
    assert_eq!(record.body, poison, "the original message, as sent");
    let text = record.headers_text();
    assert_eq!(
        record.header_str("x-switchyard-error-class").as_deref(),
        Some("config"),
        "{text}"
    );
    let reason = record.header_str("x-switchyard-reason").expect("a reason");
    assert!(
        reason.contains("action message is unreadable"),
        "reason {reason:?}"
    );
    assert_eq!(
        record.header_str("x-switchyard-connector").as_deref(),
        Some("http")
    );
    assert!(
        record.header_str("x-switchyard-dead-at").is_some(),
        "{text}"
    );
    let metrics = h.metrics().await;
    assert_eq!(
        support::metric_value(
            &metrics,
            "switchyard_dead_lettered_total{connector=\"http\",error_class=\"config\"}"
        ),
        Some(1.0)
    );
    assert_eq!(count(&metrics, &attempts("retry")), 0.0);
    assert_eq!(h.broker.queue_len(&h.name("action.http")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_that_fail_at_render_time_are_dead_lettered_without_a_call() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    // `header`: event data with a line break in a header value (header injection);
    // `render`: a template that compiles but cannot render (a string indexed by name).
    let workflows = r#"
workflows:
  - id: broken
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - id: header
        http:
          url: "@FAKE@/header"
          headers: { X-Name: "{{ contact.first_name }}" }
          body: '{"event": "{{ event.id }}"}'
      - id: render
        http:
          url: "@FAKE@/render"
          body: '{"domain": "{{ contact.email.domain }}"}'
"#
    .replace("@FAKE@", &fake.url());
    let h = Harness::start(
        "template",
        &workflows,
        "retry: { quick_attempts: 2, schedule: [1s] }",
        &[],
    )
    .await;

    let mut e = event("evt_inject_1", "Gameplay.DataCaptured");
    e["contact"]["first_name"] = json!("Ana\r\nX-Evil: 1");
    h.publish(&e).await;
    let dead_letter = h.name("dead-letter");
    wait_until("both actions dead-lettered", async || {
        h.broker.queue_len(&dead_letter).await >= 2
    })
    .await;
    h.wait_metric(&attempts("dead"), 2.0).await;

    assert_eq!(
        fake.count(),
        0,
        "a template failure never reaches the remote"
    );
    let records = h.broker.take_all(&dead_letter, AfterGet::Ack).await;
    assert_eq!(records.len(), 2);
    let by_action: BTreeMap<String, &support::Got> = records
        .iter()
        .map(|r| (r.header_str("x-switchyard-action").unwrap_or_default(), r))
        .collect();
    for (action, needle) in [("header", "X-Name"), ("render", "body")] {
        let record = by_action
            .get(action)
            .unwrap_or_else(|| panic!("no dead-letter record for {action}: {by_action:?}"));
        let text = record.headers_text();
        assert_eq!(
            record.header_str("x-switchyard-error-class").as_deref(),
            Some("template"),
            "{action}: {text}"
        );
        // The failed render counts as the one attempt; no call was made.
        assert_eq!(
            record.header_int("x-switchyard-attempts"),
            Some(1),
            "{text}"
        );
        let reason = record.header_str("x-switchyard-reason").expect("a reason");
        assert!(
            reason.to_lowercase().contains(&needle.to_lowercase()),
            "{action}: reason {reason:?} names {needle}"
        );
        assert!(!reason.contains('\n') && !reason.contains('\r'), "one line");
        assert!(
            !reason.contains("X-Evil"),
            "no event data echoed as a header"
        );
    }
    let metrics = h.metrics().await;
    assert_eq!(
        support::metric_value(
            &metrics,
            "switchyard_dead_lettered_total{connector=\"http\",error_class=\"template\"}"
        ),
        Some(2.0)
    );
    assert_eq!(count(&metrics, &attempts("retry")), 0.0);
    assert_eq!(h.broker.queue_len(&h.name("action.http")).await, 0);
    assert_eq!(fake.count(), 0);
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// The real binary: kill -9 and SIGTERM

/// Writes a workflow file and a config for `switchyard run`; returns the parsed config and its
/// path.
fn binary_setup(
    dir: &std::path::Path,
    prefix: &str,
    workflows: &str,
    extra: &str,
) -> (Config, std::path::PathBuf) {
    write_workflows_and_secrets(dir, workflows, &[]);
    let yaml = test_config_yaml(prefix, dir, extra);
    let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let path = dir.join("switchyard.yaml");
    std::fs::write(&path, &yaml).expect("write config");
    (config, path)
}

/// `(routing key, body)` of events `<stem>_<n>` for n in 0..count.
fn numbered_events(stem: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let e = event(&format!("{stem}_{i:05}"), "Gameplay.DataCaptured");
            (
                "Gameplay.DataCaptured".to_owned(),
                serde_json::to_vec(&e).expect("JSON"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_flight_then_restart_delivers_every_event() {
    const EVENTS: usize = 5_000;
    const KILL_AT: usize = 1_000;
    let fake = FakeServer::start(|_| Reply::status(200).after(Duration::from_millis(5))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = unique_prefix("kill9");
    let (config, config_path) = binary_setup(
        dir.path(),
        &prefix,
        &one_action("crash", &fake, "crash"),
        "log: { format: json, level: warn }",
    );
    let guard = TopologyGuard::new(&config);

    let mut first = Process::spawn(&config_path, dir.path(), "first");
    first.wait_ready(Duration::from_secs(60)).await;

    let exchange = format!("{prefix}.events");
    let messages = numbered_events("evt_k9", EVENTS);
    let publisher = tokio::spawn(async move {
        let broker = Broker::connect().await;
        broker.publish_pipelined(&exchange, &messages, 250).await;
        let _ = broker.connection.close(200, "published".into()).await;
    });

    wait_until_within(
        "~1,000 requests before the kill",
        Duration::from_secs(120),
        async || {
            first.assert_running();
            fake.count() >= KILL_AT
        },
    )
    .await;
    let status = first.kill9();
    let at_kill = fake.count();
    assert!(
        !status.success(),
        "the first process was killed, not finished: {status}"
    );
    assert!(
        at_kill < EVENTS,
        "the kill came mid-flight ({at_kill} requests of {EVENTS})"
    );

    let mut second = Process::spawn(&config_path, dir.path(), "second");
    tokio::time::timeout(Duration::from_secs(120), publisher)
        .await
        .expect("every event published within 120 s")
        .expect("every event confirmed by the broker");

    // Every event id at the fake at least once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        second.assert_running();
        let distinct =
            fake.inspect(|requests| requests.iter().map(event_of).collect::<BTreeSet<_>>().len());
        if distinct >= EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 120 s only {distinct} of {EVENTS} event ids arrived (killed at {at_kill}):\n{}",
            second.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the second process settle (its queues drained), then stop it cleanly.
    let broker = Broker::connect().await;
    let http_queue = format!("{prefix}.action.http");
    let router_queue = format!("{prefix}.router");
    wait_until_within("the queues to drain", Duration::from_secs(60), async || {
        broker.queue_len(&http_queue).await == 0 && broker.queue_len(&router_queue).await == 0
    })
    .await;
    second.signal("TERM");
    let exit = second.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(exit.code(), Some(0), "{}", second.logs());

    let requests = fake.requests();
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &requests {
        keys.entry(event_of(r)).or_default().insert(key(r));
    }
    let wanted: BTreeSet<String> = (0..EVENTS).map(|i| format!("evt_k9_{i:05}")).collect();
    let arrived: BTreeSet<String> = keys.keys().cloned().collect();
    assert_eq!(
        arrived, wanted,
        "every event id, and only those, reached the fake"
    );
    let duplicates = requests.len() - arrived.len();
    eprintln!(
        "kill -9 figures: sent {EVENTS}, delivered {} distinct ({} calls), duplicates {duplicates}; killed after {at_kill} requests",
        arrived.len(),
        requests.len()
    );
    for (id, seen) in &keys {
        let want = action_id(id, "crash", "post");
        assert_eq!(
            seen,
            &BTreeSet::from([want]),
            "{id}: every arrival carries the same Idempotency-Key"
        );
    }
    // A duplicate can only come from a delivery that was unacked when the process died: at most
    // one router prefetch window plus one worker prefetch window.
    let bound = usize::from(config.router.prefetch) + usize::from(config.worker.prefetch);
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates; at most {bound} deliveries were unacked at the kill"
    );
    assert_eq!(broker.queue_len(&format!("{prefix}.dead-letter")).await, 0);
    assert_eq!(
        broker.queue_len(&format!("{prefix}.events.rejected")).await,
        0
    );
    guard.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_answers_every_request_and_loses_nothing() {
    const EVENTS: usize = 500;
    let hold = Duration::from_millis(300);
    let fake = FakeServer::start(move |_| Reply::status(200).after(hold)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = unique_prefix("sigload");
    let grace = Duration::from_secs(10);
    let (config, config_path) = binary_setup(
        dir.path(),
        &prefix,
        &one_action("load", &fake, "load"),
        // One host takes all the traffic here: let it use every slot.
        "worker: { concurrency: 64, max_per_host: 64 }\nshutdown_grace: 10s\nlog: { format: json, level: info }",
    );
    assert_eq!(config.shutdown_grace, grace);
    let guard = TopologyGuard::new(&config);

    let mut service = Process::spawn(&config_path, dir.path(), "service");
    service.wait_ready(Duration::from_secs(60)).await;
    let broker = Broker::connect().await;
    broker
        .publish_pipelined(
            &format!("{prefix}.events"),
            &numbered_events("evt_load", EVENTS),
            100,
        )
        .await;
    let peak = Arc::new(AtomicUsize::new(0));
    wait_until_within(
        "50 requests in flight",
        Duration::from_secs(60),
        async || {
            service.assert_running();
            let now = fake.in_flight();
            peak.fetch_max(now, Ordering::SeqCst);
            now >= 50
        },
    )
    .await;

    service.signal("TERM");
    let signalled = Instant::now();
    let margin = Duration::from_secs(10);
    let status = service.wait_exit(grace + margin).await;
    let took = signalled.elapsed();
    // Read both at the exit: an abandoned request would still be waiting in the fake.
    let answered = fake.completed();
    let received = fake.count();
    let logs = service.logs();
    assert_eq!(status.code(), Some(0), "exit status {status}:\n{logs}");
    assert!(
        took <= grace + margin,
        "exited {took:?} after SIGTERM (grace {grace:?})"
    );
    assert_eq!(
        answered, received,
        "every request that reached the fake was answered before the exit\n{logs}"
    );

    let delivered: BTreeSet<String> = fake.inspect(|r| r.iter().map(event_of).collect());
    let http_queue = format!("{prefix}.action.http");
    let router_queue = format!("{prefix}.router");
    // The unacked deliveries return to their queues when the connection closes.
    wait_until_within(
        "delivered + queued to cover every event",
        Duration::from_secs(30),
        async || {
            let queued =
                broker.queue_len(&http_queue).await + broker.queue_len(&router_queue).await;
            delivered.len() + queued as usize >= EVENTS
        },
    )
    .await;
    let mut covered = delivered.clone();
    for got in broker.take_all(&router_queue, AfterGet::Ack).await {
        covered.insert(got.json()["id"].as_str().unwrap_or("").to_owned());
    }
    let queued_actions = broker.take_all(&http_queue, AfterGet::Ack).await;
    for got in &queued_actions {
        covered.insert(got.json()["event"]["id"].as_str().unwrap_or("").to_owned());
    }
    let wanted: BTreeSet<String> = (0..EVENTS).map(|i| format!("evt_load_{i:05}")).collect();
    let missing: Vec<&String> = wanted.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "lost after SIGTERM (neither delivered nor queued): {missing:?}\n{logs}"
    );
    eprintln!(
        "SIGTERM under load: {} delivered, {} still queued, peak {} in flight, exit after {took:?}",
        delivered.len(),
        covered.len() - delivered.len(),
        peak.load(Ordering::SeqCst)
    );
    assert!(
        delivered.len() < EVENTS,
        "the SIGTERM came while work remained (all {EVENTS} were delivered)"
    );
    assert!(logs.contains("draining in-flight work"), "{logs}");
    assert_eq!(broker.queue_len(&format!("{prefix}.dead-letter")).await, 0);
    guard.delete().await;
}
