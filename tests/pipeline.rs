//! End to end through the real broker: events in on `<prefix>.events`, HTTP calls out to fake
//! remote services, rejected events and dead-lettered actions where SPEC §2, §5 and §7 say.

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::http_attempts as attempts;
use support::{
    AMQP_URL, AfterGet, FakeServer, Harness, Recorded, Reply, event, repo_root, wait_until,
};
use switchyard::broker::message::action_id;

/// A random secret value, so that a leak cannot be a coincidence.
fn secret(name: &str) -> String {
    format!("{name}-{:016x}", rand::random::<u64>())
}

#[tokio::test(flavor = "multi_thread")]
async fn hubspot_brief_body_with_trailing_comma_arrives_as_json() {
    let fake = FakeServer::start(Reply::hubspot_created).await;
    let source = std::fs::read_to_string(repo_root().join("config/examples/hubspot.yaml"))
        .expect("config/examples/hubspot.yaml");
    assert!(
        source.contains("\"komo_score\": \"{{ gameplay.score }}\",\n"),
        "the repository's HubSpot body should keep the product brief's trailing comma"
    );
    let workflows = source.replace("https://api.hubapi.com", &fake.url());
    assert_ne!(workflows, source, "the HubSpot url was pointed at the fake");
    let token = secret("pat-na1");
    let h = Harness::start("hubspot", &workflows, "", &[("HUBSPOT_TOKEN", &token)]).await;

    h.publish(&event("evt_hubspot_1", "Gameplay.DataCaptured"))
        .await;
    h.wait_metric(&attempts("success"), 1.0).await;

    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "exactly one call");
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/crm/v3/objects/contacts");
    assert_eq!(
        r.json(),
        json!({ "properties": {
            "email": "ana@example.com",
            "firstname": "Ana",
            "lastname": "Silva",
            "lead_source": "Komo - Spin to Win",
            "komo_score": "120",
        }})
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(r.header_count("authorization"), 1);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header_count("content-type"), 1);
    let key = r.header("idempotency-key").expect("Idempotency-Key");
    assert!(key.starts_with("act_"), "Idempotency-Key {key}");
    assert_eq!(
        key,
        action_id("evt_hubspot_1", "hubspot-lead", "create_contact")
    );
    assert_eq!(
        r.header("user-agent"),
        Some(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
    );
    // Acked: nothing left to deliver, nothing dead.
    assert_eq!(h.broker.queue_len(&h.name("action.http")).await, 0);
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_contact_names_arrive_as_valid_json() {
    let fake = FakeServer::start(|_| Reply::json(200, &json!({ "ok": true }))).await;
    let workflows = r#"
workflows:
  - id: names
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - id: post
        http:
          url: "@FAKE@/contacts"
          body: |
            { "first": "{{ contact.first_name }}", "last": "{{ contact.last_name }}",
              "full": "{{ contact.first_name }} {{ contact.last_name }}",
              "company": "{{ form_fields.company }}" }
"#
    .replace("@FAKE@", &fake.url());
    let h = Harness::start("names", &workflows, "", &[("TOKEN", "never-used")]).await;

    let first = "Ana \"The Ace\" O'Neil\\\nJosé Ñandú 🎉";
    // Event data is a value, never template source; a tab and a closing brace for good measure.
    let last = "{{ secrets.TOKEN }} {% raw %}\t}\"";
    let company = "Ação & Cia </script> \u{2028} 日本";
    let mut e = event("evt_names_1", "Gameplay.DataCaptured");
    e["contact"]["first_name"] = json!(first);
    e["contact"]["last_name"] = json!(last);
    e["form_fields"]["company"] = json!(company);
    h.publish(&e).await;
    h.wait_metric(&attempts("success"), 1.0).await;

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].json(),
        json!({
            "first": first,
            "last": last,
            "full": format!("{first} {last}"),
            "company": company,
        })
    );
    assert_eq!(requests[0].header("content-type"), Some("application/json"));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lone_placeholder_keeps_its_json_type() {
    let fake = FakeServer::start(|_| Reply::status(204)).await;
    let workflows = r#"
workflows:
  - id: typed
    workspace: ws_demo
    trigger: { event: Gameplay.Ended }
    actions:
      - id: post
        http:
          method: PUT
          url: "@FAKE@/scores"
          body: |
            {
              "score": {{ gameplay.score }},
              "score_text": "{{ gameplay.score }}",
              "completed": {{ gameplay.completed }},
              "gameplay": {{ gameplay }},
              "missing": {{ gameplay.ended_at }}
            }
"#
    .replace("@FAKE@", &fake.url());
    let h = Harness::start("typed", &workflows, "", &[]).await;

    h.publish(&event("evt_typed_1", "Gameplay.Ended")).await;
    h.wait_metric(&attempts("success"), 1.0).await;

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "PUT");
    let body = requests[0].json();
    assert_eq!(body["score"], json!(120), "a lone placeholder is a number");
    assert!(body["score"].is_u64());
    assert_eq!(body["score_text"], json!("120"), "a quoted one is text");
    assert_eq!(body["completed"], json!(true));
    assert_eq!(
        body["gameplay"],
        json!({ "id": "gp_3", "score": 120, "completed": true, "duration_ms": 53000 }),
        "an object stays an object"
    );
    assert_eq!(body["missing"], Value::Null, "nothing becomes null");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_matching_table() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let workflows = r#"
workflows:
  - id: by-card
    workspace: ws_a
    trigger: { event: Gameplay.DataCaptured, scope: { card: card_42 } }
    actions:
      - { id: post, http: { url: "@FAKE@/card", body: '{"event": "{{ event.id }}"}' } }
  - id: by-site
    workspace: ws_a
    trigger: { event: Gameplay.DataCaptured, scope: { site: site_9 } }
    actions:
      - { id: post, http: { url: "@FAKE@/site", body: '{"event": "{{ event.id }}"}' } }
  - id: whole-workspace
    workspace: ws_a
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - { id: post, http: { url: "@FAKE@/workspace", body: '{"event": "{{ event.id }}"}' } }
  - id: other-workspace
    workspace: ws_b
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - { id: post, http: { url: "@FAKE@/other", body: '{"event": "{{ event.id }}"}' } }
"#
    .replace("@FAKE@", &fake.url());
    let h = Harness::start("scope", &workflows, "", &[]).await;

    // event id, workspace, card, site → the workflows that must fire ("-": no card / no site)
    let table: [(&str, &str, &str, &str, &[&str]); 7] = [
        (
            "e1",
            "ws_a",
            "card_42",
            "site_9",
            &["card", "site", "workspace"],
        ),
        ("e2", "ws_a", "card_42", "site_1", &["card", "workspace"]),
        ("e3", "ws_a", "card_7", "site_9", &["site", "workspace"]),
        ("e4", "ws_a", "card_7", "site_1", &["workspace"]),
        ("e5", "ws_a", "-", "-", &["workspace"]),
        ("e6", "ws_b", "card_42", "site_9", &["other"]),
        ("e7", "ws_c", "card_42", "site_9", &[]),
    ];
    let mut expected = BTreeSet::new();
    for (id, workspace, card, site, fired) in table {
        let mut e = event(id, "Gameplay.DataCaptured");
        e["workspace"]["id"] = json!(workspace);
        for (field, value) in [("card", card), ("site", site)] {
            if value == "-" {
                e.as_object_mut().expect("object").remove(field);
            } else {
                e[field]["id"] = json!(value);
            }
        }
        h.publish(&e).await;
        for path in fired {
            expected.insert((format!("/{path}"), id.to_string()));
        }
    }
    let total = expected.len() as f64;
    h.wait_metric(
        "switchyard_events_received_total{type=\"Gameplay.DataCaptured\"}",
        table.len() as f64,
    )
    .await;
    // Every event is routed: the enqueued count is final, so no other call can still come.
    h.wait_metric(
        "switchyard_actions_enqueued_total{connector=\"http\"}",
        total,
    )
    .await;
    h.wait_metric(&attempts("success"), total).await;

    let got: Vec<(String, String)> = fake
        .requests()
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                r.json()["event"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(got.len(), expected.len(), "no call twice: {got:?}");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn alias_type_is_normalised_before_matching() {
    let fake = FakeServer::start(|_| Reply::slack_ok()).await;
    let workflows = r#"
workflows:
  - id: prize-alias
    workspace: ws_demo
    trigger: { event: Prize.Won }
    actions:
      - id: notify
        http:
          url: "@FAKE@/services/T000/B000/XXXX"
          body: '{ "type": "{{ event.type }}", "text": "{{ contact.first_name }} won {{ prize.name }}" }'
"#
    .replace("@FAKE@", &fake.url());
    let h = Harness::start("alias", &workflows, "", &[]).await;

    let mut e = event("evt_alias_1", "Prize.Awarded");
    e["prize"] = json!({ "id": "prz_5", "name": "Free Coffee for a Month", "type": "Voucher" });
    h.publish(&e).await;
    h.wait_metric(&attempts("success"), 1.0).await;

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].json(),
        json!({ "type": "Prize.Won", "text": "Ana won Free Coffee for a Month" })
    );
    let metrics = h.metrics().await;
    assert_eq!(
        support::metric_value(
            &metrics,
            "switchyard_events_received_total{type=\"Prize.Won\"}"
        ),
        Some(1.0)
    );
    assert!(
        !metrics.contains("Prize.Awarded"),
        "the alias is never a label:\n{metrics}"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn if_true_calls_and_if_false_is_skipped() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let workflows = r#"
workflows:
  - id: trigger-true
    workspace: ws_demo
    trigger: { event: Gameplay.Ended, if: "contact.email != blank" }
    actions:
      - { id: post, http: { url: "@FAKE@/trigger-true" } }
  - id: trigger-false
    workspace: ws_demo
    trigger: { event: Gameplay.Ended, if: "contact.optin == false" }
    actions:
      - { id: post, http: { url: "@FAKE@/trigger-false" } }
  - id: action-if
    workspace: ws_demo
    trigger: { event: Gameplay.Ended }
    actions:
      - { id: high, if: "gameplay.score > 100", http: { url: "@FAKE@/action-true" } }
      - { id: higher, if: "gameplay.score > 500", http: { url: "@FAKE@/action-false" } }
"#
    .replace("@FAKE@", &fake.url());
    let h = Harness::start("if", &workflows, "", &[]).await;

    h.publish(&event("evt_if_1", "Gameplay.Ended")).await;
    h.wait_metric(&attempts("skipped"), 1.0).await;
    h.wait_metric(&attempts("success"), 2.0).await;

    let metrics = h.metrics().await;
    // trigger-true's action and both of action-if's; trigger-false enqueues nothing.
    assert_eq!(
        support::metric_value(
            &metrics,
            "switchyard_actions_enqueued_total{connector=\"http\"}"
        ),
        Some(3.0)
    );
    let paths: BTreeSet<String> = fake.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        BTreeSet::from(["/trigger-true".to_owned(), "/action-true".to_owned()])
    );
    assert_eq!(fake.count(), 2);
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_actions_make_two_calls_with_distinct_keys() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let workflows = r#"
workflows:
  - id: pair
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - { id: first, http: { url: "@FAKE@/first", body: '{"n": 1}' } }
      - { id: second, http: { url: "@FAKE@/second", body: '{"n": 2}' } }
"#
    .replace("@FAKE@", &fake.url());
    let h = Harness::start("pair", &workflows, "", &[]).await;

    h.publish(&event("evt_pair_1", "Gameplay.DataCaptured"))
        .await;
    h.wait_metric(&attempts("success"), 2.0).await;

    let mut requests = fake.requests();
    requests.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(requests.len(), 2);
    let key = |r: &Recorded| r.header("idempotency-key").unwrap_or("").to_owned();
    assert_eq!(requests[0].path, "/first");
    assert_eq!(requests[0].json(), json!({ "n": 1 }));
    assert_eq!(key(&requests[0]), action_id("evt_pair_1", "pair", "first"));
    assert_eq!(requests[1].path, "/second");
    assert_eq!(requests[1].json(), json!({ "n": 2 }));
    assert_eq!(key(&requests[1]), action_id("evt_pair_1", "pair", "second"));
    assert_ne!(key(&requests[0]), key(&requests[1]));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rejection_is_parked_and_the_router_carries_on() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let workflows = r#"
workflows:
  - id: good
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - { id: post, http: { url: "@FAKE@/good", body: '{"event": "{{ event.id }}"}' } }
"#
    .replace("@FAKE@", &fake.url());
    let max_bytes = 4096;
    let h = Harness::start(
        "rejected",
        &workflows,
        &format!("router: {{ max_event_bytes: {max_bytes} }}"),
        &[],
    )
    .await;

    let mut missing = event("evt_missing", "Gameplay.DataCaptured");
    missing
        .as_object_mut()
        .expect("object")
        .remove("occurred_at");
    let mut deep = event("evt_deep", "Gameplay.DataCaptured");
    let mut nested = json!("bottom");
    for _ in 0..70 {
        nested = json!([nested]);
    }
    deep["data"] = nested;
    let mut large = event("evt_large", "Gameplay.DataCaptured");
    large["data"] = json!({ "padding": "x".repeat(max_bytes) });
    let body = |v: &Value| serde_json::to_vec(v).expect("JSON");
    // (label, routing key, body, text the reason must contain)
    let bad: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "invalid_json",
            "Gameplay.DataCaptured",
            br#"{"id": "evt_broken", "type": "Gameplay.DataCaptured", "#.to_vec(),
            "not valid JSON",
        ),
        (
            "missing_field",
            "Gameplay.DataCaptured",
            body(&missing),
            "occurred_at",
        ),
        (
            "unknown_type",
            "Gameplay.Exploded",
            body(&event("evt_unknown", "Gameplay.Exploded")),
            "Gameplay.Exploded",
        ),
        ("too_deep", "Gameplay.DataCaptured", body(&deep), "64"),
        (
            "too_large",
            "Gameplay.DataCaptured",
            body(&large),
            "max_event_bytes",
        ),
    ];
    assert!(body(&event("evt_good_0", "Gameplay.DataCaptured")).len() < max_bytes);
    assert!(bad[4].2.len() > max_bytes);

    let mut good_ids = BTreeSet::new();
    for (i, (_, routing_key, raw, _)) in bad.iter().enumerate() {
        h.publish_raw(routing_key, raw).await;
        let id = format!("evt_good_{i}");
        h.publish(&event(&id, "Gameplay.DataCaptured")).await;
        good_ids.insert(id);
    }

    h.wait_metric(&attempts("success"), bad.len() as f64).await;
    let delivered: BTreeSet<String> = fake
        .requests()
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(delivered, good_ids, "every good event after a bad one");

    let rejected_queue = h.name("events.rejected");
    wait_until("5 rejected events", async || {
        h.broker.queue_len(&rejected_queue).await >= 5
    })
    .await;
    let parked = h.broker.take_all(&rejected_queue, AfterGet::Ack).await;
    assert_eq!(parked.len(), bad.len());
    let metrics = h.metrics().await;
    for (label, _, raw, needle) in &bad {
        let copy = parked
            .iter()
            .find(|m| &m.body == raw)
            .unwrap_or_else(|| panic!("the {label} event is not in {rejected_queue} as sent"));
        let reason = copy
            .header_str("x-switchyard-reason")
            .unwrap_or_else(|| panic!("the {label} copy has no x-switchyard-reason"));
        assert!(
            reason.contains(needle),
            "{label}: reason {reason:?} should mention {needle:?}"
        );
        assert_eq!(
            support::metric_value(
                &metrics,
                &format!("switchyard_events_rejected_total{{reason=\"{label}\"}}")
            ),
            Some(1.0),
            "{label} counted once"
        );
    }
    assert_eq!(h.broker.queue_len(&h.name("router")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_400_is_dead_lettered_once_with_spec_headers() {
    let message = "Property values were not valid: [{\"isValid\":false,\"message\":\"Email address ana@ is invalid\",\"name\":\"email\"}]";
    let fake = FakeServer::start(move |_| Reply::hubspot_invalid(message)).await;
    let token = secret("pat-na1");
    let workflows = r#"
workflows:
  - id: hubspot-lead
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - id: create_contact
        http:
          method: POST
          url: "@FAKE@/crm/v3/objects/contacts?hapikey={{ secrets.HUBSPOT_TOKEN }}"
          headers: { X-Api-Key: "{{ secrets.HUBSPOT_TOKEN }}" }
          auth: { bearer: "{{ secrets.HUBSPOT_TOKEN }}" }
          body: |
            { "properties": { "email": "{{ contact.email }}", "firstname": "{{ contact.first_name }}", } }
"#
    .replace("@FAKE@", &fake.url());
    // Quick retries are on: a 400 must not use them.
    let h = Harness::start(
        "dead",
        &workflows,
        "retry: { quick_attempts: 2, schedule: [1s, 2s] }",
        &[("HUBSPOT_TOKEN", &token)],
    )
    .await;

    let e = event("evt_dead_1", "Gameplay.DataCaptured");
    let before = chrono::Utc::now();
    h.publish(&e).await;
    let dead_letter = h.name("dead-letter");
    wait_until("one dead-letter record", async || {
        h.broker.queue_len(&dead_letter).await >= 1
    })
    .await;
    h.wait_metric(&attempts("dead"), 1.0).await;

    assert_eq!(fake.count(), 1, "a 400 is never retried");
    let sent = &fake.requests()[0];
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(
        sent.query.as_deref(),
        Some(format!("hapikey={token}").as_str())
    );

    let records = h.broker.take_all(&dead_letter, AfterGet::Ack).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    let header = |name: &str| {
        record
            .header_str(name)
            .unwrap_or_else(|| panic!("{name} missing:\n{}", record.headers_text()))
    };
    let reason = header("x-switchyard-reason");
    assert!(
        reason.contains("Property values were not valid") && reason.contains("127.0.0.1"),
        "reason {reason:?} names the remote's message and host"
    );
    assert!(!reason.contains('\n'), "one line");
    assert_eq!(header("x-switchyard-error-class"), "permanent");
    assert_eq!(record.header_int("x-switchyard-attempts"), Some(1));
    assert_eq!(record.header_int("x-switchyard-last-status"), Some(400));
    assert_eq!(header("x-switchyard-workflow"), "hubspot-lead");
    assert_eq!(header("x-switchyard-action"), "create_contact");
    assert_eq!(header("x-switchyard-connector"), "http");
    assert_eq!(header("x-switchyard-workspace"), "ws_demo");
    let after = chrono::Utc::now();
    for name in ["x-switchyard-first-attempt-at", "x-switchyard-dead-at"] {
        let at = chrono::DateTime::parse_from_rfc3339(&header(name))
            .unwrap_or_else(|e| panic!("{name} is RFC 3339: {e}"));
        assert!(
            at >= before - chrono::Duration::seconds(1) && at <= after,
            "{name} {at} is between the publish and now"
        );
    }
    // The original action message: the event as published, and the stable action id.
    let body = record.json();
    assert_eq!(body["event"], e);
    assert_eq!(body["workflow"], "hubspot-lead");
    assert_eq!(body["action"], "create_contact");
    assert_eq!(
        body["id"],
        json!(action_id("evt_dead_1", "hubspot-lead", "create_contact"))
    );
    assert_eq!(
        record
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(
        record.properties.delivery_mode(),
        &Some(2),
        "the record is persistent"
    );
    // The secret appears nowhere in the record.
    assert!(
        !String::from_utf8_lossy(&record.body).contains(&token),
        "secret in the dead-letter body"
    );
    assert!(
        !record.headers_text().contains(&token),
        "secret in the dead-letter headers:\n{}",
        record.headers_text()
    );
    let metrics = h.metrics().await;
    assert_eq!(
        support::metric_value(
            &metrics,
            "switchyard_dead_lettered_total{connector=\"http\",error_class=\"permanent\"}"
        ),
        Some(1.0)
    );
    assert!(!metrics.contains(&token), "secret in /metrics");
    assert_eq!(h.broker.queue_len(&h.name("action.http")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_exist_after_traffic() {
    let fake = FakeServer::start(|r: &Recorded| {
        if r.path == "/bad" {
            Reply::text(404, "channel_not_found")
        } else {
            Reply::hubspot_created(r)
        }
    })
    .await;
    let workflows = r#"
workflows:
  - id: good
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - { id: post, http: { url: "@FAKE@/good", body: '{"properties": {"email": "{{ contact.email }}"}}' } }
  - id: bad
    workspace: ws_demo
    trigger: { event: Prize.Won }
    actions:
      - { id: post, http: { url: "@FAKE@/bad", body: '{"text": "{{ prize.name }}"}' } }
"#
    .replace("@FAKE@", &fake.url());
    let h = Harness::start("metrics", &workflows, "", &[]).await;

    for i in 0..3 {
        h.publish(&event(&format!("evt_m_{i}"), "Gameplay.DataCaptured"))
            .await;
    }
    h.publish(&event("evt_m_prize", "Prize.Won")).await;
    h.publish_raw("Gameplay.DataCaptured", b"not json").await;
    h.wait_metric(&attempts("success"), 3.0).await;
    h.wait_metric(&attempts("dead"), 1.0).await;
    h.wait_metric(
        "switchyard_events_rejected_total{reason=\"invalid_json\"}",
        1.0,
    )
    .await;

    let text = h.metrics().await;
    let counters = [
        "switchyard_events_received",
        "switchyard_events_rejected",
        "switchyard_actions_enqueued",
        "switchyard_action_attempts",
        "switchyard_dead_lettered",
        "switchyard_config_reloads",
        "switchyard_outbound_blocked",
    ];
    let gauges = [
        "switchyard_actions_in_flight",
        "switchyard_queue_messages",
        "switchyard_broker_connected",
        "switchyard_workflows_loaded",
        "switchyard_build_info",
        "switchyard_breakers_open",
    ];
    let histograms = [
        "switchyard_action_duration_seconds",
        "switchyard_delivery_latency_seconds",
    ];
    let has_sample = |name: &str| {
        text.lines().any(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        })
    };
    let mut missing = Vec::new();
    for name in counters {
        if !text.contains(&format!("# TYPE {name} counter"))
            || !has_sample(&format!("{name}_total"))
        {
            missing.push(format!("{name}_total (counter)"));
        }
    }
    for name in gauges {
        if !text.contains(&format!("# TYPE {name} gauge")) || !has_sample(name) {
            missing.push(format!("{name} (gauge)"));
        }
    }
    for name in histograms {
        if !text.contains(&format!("# TYPE {name} histogram"))
            || !has_sample(&format!("{name}_count"))
        {
            missing.push(format!("{name} (histogram)"));
        }
    }
    assert!(
        missing.is_empty(),
        "missing from /metrics: {missing:?}\n{text}"
    );

    let build_info = format!(
        "switchyard_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    let expect = [
        (
            "switchyard_events_received_total{type=\"Gameplay.DataCaptured\"}",
            3.0,
        ),
        ("switchyard_events_received_total{type=\"Prize.Won\"}", 1.0),
        (
            "switchyard_events_rejected_total{reason=\"invalid_json\"}",
            1.0,
        ),
        ("switchyard_actions_enqueued_total{connector=\"http\"}", 4.0),
        (
            "switchyard_actions_enqueued_total{connector=\"webhook\"}",
            0.0,
        ),
        (
            "switchyard_action_attempts_total{connector=\"http\",outcome=\"success\"}",
            3.0,
        ),
        (
            "switchyard_action_attempts_total{connector=\"http\",outcome=\"dead\"}",
            1.0,
        ),
        (
            "switchyard_dead_lettered_total{connector=\"http\",error_class=\"permanent\"}",
            1.0,
        ),
        (
            "switchyard_action_duration_seconds_count{connector=\"http\"}",
            4.0,
        ),
        (
            "switchyard_delivery_latency_seconds_count{connector=\"http\"}",
            3.0,
        ),
        ("switchyard_actions_in_flight{connector=\"http\"}", 0.0),
        ("switchyard_broker_connected", 1.0),
        ("switchyard_workflows_loaded", 2.0),
        ("switchyard_outbound_blocked_total{connector=\"http\"}", 0.0),
        ("switchyard_breakers_open{connector=\"http\"}", 0.0),
        (build_info.as_str(), 1.0),
    ];
    for (series, want) in expect {
        assert_eq!(
            support::metric_value(&text, series),
            Some(want),
            "{series}\n{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "switchyard_queue_messages{{queue=\"{}\"}}",
            h.name("router")
        )),
        "queue depths are labelled with the queue name:\n{text}"
    );
    // No unbounded label values.
    for id in ["evt_m_0", "ws_demo", "ana@example.com", "ct_7"] {
        assert!(!text.contains(id), "{id} leaked into a label:\n{text}");
    }
    assert_eq!(fake.count(), 4);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_echoed_by_the_remote_never_reaches_the_dead_letter_record() {
    let token = secret("sk_live");
    let echoed = token.clone();
    // Some APIs quote the credential they refused.
    let fake = FakeServer::start(move |_| {
        Reply::json(
            401,
            &json!({ "status": "error", "message": format!("The API key {echoed} is not valid") }),
        )
    })
    .await;
    let workflows = r#"
workflows:
  - id: echo
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - id: post
        http:
          url: "@FAKE@/v1/contacts"
          auth: { header: { name: X-Api-Key, value: "{{ secrets.API_KEY }}" } }
          body: '{ "email": "{{ contact.email }}" }'
"#
    .replace("@FAKE@", &fake.url());
    let h = Harness::start("echo", &workflows, "", &[("API_KEY", &token)]).await;

    h.publish(&event("evt_echo_1", "Gameplay.DataCaptured"))
        .await;
    h.wait_metric(&attempts("dead"), 1.0).await;
    assert_eq!(
        fake.requests()[0].header("x-api-key"),
        Some(token.as_str()),
        "the secret was sent"
    );
    let records = h
        .broker
        .take_all(&h.name("dead-letter"), AfterGet::Ack)
        .await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.header_int("x-switchyard-last-status"), Some(401));
    let headers = record.headers_text();
    assert!(
        headers.contains("is not valid"),
        "the reason still quotes the remote:\n{headers}"
    );
    assert!(
        !headers.contains(&token),
        "the secret reached the dead-letter headers:\n{headers}"
    );
    assert!(!String::from_utf8_lossy(&record.body).contains(&token));
    h.finish().await;
}

/// The service asks the broker for 16 KiB frames (`broker::FRAME_MAX`: lapin keeps 32 frames of
/// buffer each way per connection). An event many frames long still reaches the remote whole,
/// through the router's and the worker's connections, and a URL that names its own `frame_max`
/// keeps it.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_many_frames_long_arrives_whole_and_frames_are_small_unless_the_url_says() {
    let fake = FakeServer::start(|_| Reply::json(200, &json!({ "ok": true }))).await;
    let workflows = r#"
workflows:
  - id: large
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - { id: post, http: { url: "@FAKE@/large", body: '{"event": "{{ event.id }}", "padding": "{{ data.padding }}"}' } }
"#
    .replace("@FAKE@", &fake.url());
    let h = Harness::start("frames", &workflows, "", &[]).await;
    // 100 KiB: more than six 16 KiB frames, under router.max_event_bytes (256 KiB).
    let padding: String = (0..100 * 1024u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut large = event("evt_frames", "Gameplay.DataCaptured");
    large["data"]["padding"] = json!(padding);
    h.publish(&large).await;
    h.wait_metric(&attempts("success"), 1.0).await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "exactly one call");
    let arrived = requests[0].json()["padding"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        arrived == padding,
        "the padding arrived whole: {} of {} bytes",
        arrived.len(),
        padding.len()
    );

    let negotiated = async |url: String| {
        let connected = switchyard::broker::connect_from(
            &[url],
            0,
            "switchyard frames test",
            std::time::Duration::from_secs(10),
        )
        .await
        .expect("the test broker on 127.0.0.1:5672 is up");
        let frame_max = connected.connection.configuration().frame_max();
        let _ = connected.connection.close(200, "done".into()).await;
        frame_max
    };
    assert_eq!(
        negotiated(AMQP_URL.to_owned()).await,
        switchyard::broker::FRAME_MAX
    );
    assert_eq!(negotiated(format!("{AMQP_URL}?frame_max=8192")).await, 8192);
    h.finish().await;
}
