//! Trace context end to end (SPEC §12), with the real binary and broker: the producer's
//! `traceparent` (and `tracestate`) reaches every outbound call with the same trace id and a new
//! span id per call, dependents included; an event without one starts its own trace; the trace id
//! is in the log lines and in the dead-letter header `x-switchyard-trace-id`.

mod support;

use std::collections::BTreeSet;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use support::{
    AfterGet, Broker, DEADLINE, FakeServer, Reply, event, spawn_ready, test_config_yaml,
    unique_prefix, wait_until, write_workflows_and_secrets,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";
const TYPE: &str = "Gameplay.DataCaptured";

/// (trace id, span id, flags) of a `traceparent`.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    assert_eq!(p[0], "00", "{traceparent}");
    assert_eq!((p[1].len(), p[2].len()), (32, 16), "{traceparent}");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_producers_trace_reaches_every_call_with_a_new_span_per_call() {
    let fake = FakeServer::start(|r| {
        if r.path.starts_with("/gone") {
            Reply::status(404)
        } else {
            Reply::json(200, &serde_json::json!({ "ok": true }))
        }
    })
    .await;
    let url = fake.url();
    let workflows = format!(
        "workflows:\n  - id: traced\n    workspace: ws_demo\n    trigger: {{ event: {TYPE} }}\n    actions:\n      - {{ id: first, http: {{ url: \"{url}/first/{{{{ event.id }}}}\" }} }}\n      - {{ id: second, http: {{ url: \"{url}/second/{{{{ event.id }}}}\" }} }}\n      - {{ id: after, needs: first, http: {{ url: \"{url}/after/{{{{ event.id }}}}\" }} }}\n      - {{ id: gone, http: {{ url: \"{url}/gone/{{{{ event.id }}}}\" }} }}\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    write_workflows_and_secrets(dir.path(), &workflows, &[]);
    let prefix = unique_prefix("trace");
    let yaml = test_config_yaml(&prefix, dir.path(), "log: { format: json, level: info }");
    let (mut process, guard) = spawn_ready(dir.path(), &yaml).await;
    let broker = Broker::connect().await;

    // One event with the producer's trace, one without.
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("traceparent"),
        AMQPValue::LongString(format!("00-{TRACE}-{PRODUCER_SPAN}-01").as_str().into()),
    );
    headers.insert(
        ShortString::from("tracestate"),
        AMQPValue::LongString("vendor=abc".into()),
    );
    let traced = serde_json::to_vec(&event("evt_traced", TYPE)).expect("JSON");
    broker
        .publish_with_headers(&format!("{prefix}.events"), TYPE, &traced, headers)
        .await;
    let plain = serde_json::to_vec(&event("evt_plain", TYPE)).expect("JSON");
    broker
        .publish(&format!("{prefix}.events"), TYPE, &plain)
        .await;

    let dead_letter = format!("{prefix}.dead-letter");
    wait_until("8 calls and 2 dead letters", async || {
        fake.inspect(|r| r.len()) >= 8 && broker.queue_len(&dead_letter).await >= 2
    })
    .await;

    // Every call: (path, ending with the event id; traceparent; tracestate).
    let calls = fake.inspect(|requests| {
        requests
            .iter()
            .map(|r| {
                (
                    r.path.clone(),
                    r.header("traceparent").unwrap_or_default().to_owned(),
                    r.header("tracestate").map(str::to_owned),
                )
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(calls.len(), 8, "{calls:?}");
    let mut spans = BTreeSet::new();
    let mut plain_traces = BTreeSet::new();
    for (path, parent, state) in &calls {
        let (trace, span, flags) = parts(parent);
        assert!(
            spans.insert(span.clone()),
            "span {span} used twice: {calls:?}"
        );
        assert_ne!(span, PRODUCER_SPAN, "a call reused the producer's span");
        if path.ends_with("/evt_traced") {
            assert_eq!(trace, TRACE, "{path}: {calls:?}");
            assert_eq!(flags, "01");
            assert_eq!(state.as_deref(), Some("vendor=abc"), "{path}");
        } else {
            assert_ne!(trace, TRACE, "{path}");
            assert_eq!(state, &None, "{path}");
            plain_traces.insert(trace);
        }
    }
    // The dependent ran too, in the producer's trace; the untraced event got one trace of its own.
    assert!(
        calls
            .iter()
            .any(|(path, parent, _)| path == "/after/evt_traced" && parent.contains(TRACE)),
        "{calls:?}"
    );
    assert_eq!(
        plain_traces.len(),
        1,
        "one trace per event: {plain_traces:?}"
    );
    let plain_trace = plain_traces.into_iter().next().expect("a trace");

    // Dead letters name their trace.
    let records = broker.take_all(&dead_letter, AfterGet::Ack).await;
    let mut dead: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r.header_str("x-switchyard-event-id").unwrap_or_default(),
                r.header_str("x-switchyard-trace-id").unwrap_or_default(),
            )
        })
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        [
            ("evt_plain".to_owned(), plain_trace.clone()),
            ("evt_traced".to_owned(), TRACE.to_owned()),
        ]
    );

    // And so do the log lines: the dead-letter warning carries the trace id of its span.
    wait_until("the dead-letter log lines", async || {
        process.logs().matches("action dead-lettered").count() >= 2
    })
    .await;
    let logs = process.logs();
    for (event_id, trace) in [("evt_traced", TRACE), ("evt_plain", plain_trace.as_str())] {
        let line = logs
            .lines()
            .find(|l| l.contains("action dead-lettered") && l.contains(event_id))
            .unwrap_or_else(|| panic!("no dead-letter line for {event_id}:\n{logs}"));
        let json: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert_eq!(json["span"]["trace_id"], trace, "{line}");
    }

    process.signal("TERM");
    process.wait_exit(DEADLINE).await;
    guard.delete().await;
}
