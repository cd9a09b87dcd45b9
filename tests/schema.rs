//! schema/event.schema.json, the producers' JSON Schema of the event (SPEC §2), agrees with the
//! router: every example event passes both; every event the router refuses (the rejection cases of
//! src/event.rs and tests/pipeline.rs, one per rule) breaks the schema; every envelope rule the
//! schema states is one the router enforces; and `switchyard test --event` names the broken rule.

mod support;

use serde_json::{Value, json};
use support::{event, run_switchyard};
use switchyard::event::{Event, lookup_type};
use switchyard::schema::violations;

const LIMIT: usize = 262_144;

fn examples() -> Vec<(String, Value)> {
    let dir = support::repo_root().join("examples/events");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/events")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read");
            (
                p.display().to_string(),
                serde_json::from_str(&text).expect("JSON"),
            )
        })
        .collect()
}

fn router_accepts(event: &Value) -> Result<(), String> {
    let bytes = serde_json::to_vec(event).expect("JSON");
    Event::parse(&bytes, LIMIT)
        .map(|_| ())
        .map_err(|r| format!("{} ({r})", r.label()))
}

fn schema_rules(event: &Value) -> Vec<String> {
    violations(event)
        .expect("the schema compiles")
        .into_iter()
        .map(|v| format!("{} at {:?}", v.rule, v.at))
        .collect()
}

/// `event` with `change` applied to its JSON object.
fn with(change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut e = event("evt_schema", "Gameplay.DataCaptured");
    change(e.as_object_mut().expect("object"));
    e
}

/// The example event with `key` set to `value`.
fn set(key: &str, value: Value) -> Value {
    with(|e| drop(e.insert(key.into(), value)))
}

/// The example event without `key`.
fn without(key: &str) -> Value {
    with(|e| drop(e.remove(key)))
}

#[test]
fn every_example_event_passes_the_schema_and_the_router() {
    let examples = examples();
    assert!(
        examples.len() >= 2,
        "examples/events has {}",
        examples.len()
    );
    for (file, e) in examples {
        assert_eq!(schema_rules(&e), Vec::<String>::new(), "{file}");
        router_accepts(&e).unwrap_or_else(|r| panic!("{file}: the router refuses it: {r}"));
    }
    // Every catalog type and alias, in the shape of the example.
    let schema: Value =
        serde_json::from_str(switchyard::schema::EVENT_SCHEMA).expect("the schema is JSON");
    let types = schema["properties"]["type"]["enum"]
        .as_array()
        .expect("type enum");
    assert_eq!(types.len(), 16, "13 types and 3 aliases");
    for t in types {
        let name = t.as_str().expect("a type name");
        assert!(
            lookup_type(name).is_some(),
            "{name} is not in the router's catalog"
        );
        let e = event("evt_t", name);
        assert_eq!(schema_rules(&e), Vec::<String>::new(), "{name}");
        router_accepts(&e).unwrap_or_else(|r| panic!("{name}: {r}"));
        let main = lookup_type(name).expect("known").name;
        assert!(
            schema["$defs"][main].is_object(),
            "$defs has no schema for the catalog type {main}"
        );
    }
}

#[test]
fn every_event_the_router_refuses_breaks_the_schema() {
    // (what the router says, the event). Not JSON, too large and too deep are refused too, but a
    // JSON Schema cannot state them (the schema's description says so).
    let cases: Vec<(&str, Value)> = vec![
        ("missing_field", without("id")),
        ("missing_field", without("type")),
        ("missing_field", without("occurred_at")),
        ("missing_field", without("workspace")),
        ("missing_field", set("workspace", json!({}))),
        ("missing_field", set("workspace", Value::Null)),
        ("missing_field", set("id", json!("   "))),
        ("missing_field", set("id", Value::Null)),
        ("missing_field", set("workspace", json!({ "id": "" }))),
        ("unknown_type", set("type", json!("Gameplay.Exploded"))),
        ("unknown_type", set("type", json!("Nope.Nothing"))),
        ("invalid_field", set("occurred_at", json!("yesterday"))),
        (
            "invalid_field",
            set("occurred_at", json!("2026-13-40T25:00:00Z")),
        ),
        (
            "invalid_field",
            set("occurred_at", json!("2026-11-26T18:00:00")),
        ),
        ("invalid_field", set("id", json!(42))),
        ("invalid_field", set("type", json!(["Prize.Won"]))),
        ("invalid_field", set("workspace", json!("ws_demo"))),
        ("invalid_field", set("workspace", json!({ "id": 7 }))),
        ("invalid_field", set("site", json!("site_9"))),
        ("invalid_field", set("card", json!(42))),
        ("invalid_field", set("contact", json!(["ana@example.com"]))),
        ("invalid_json", json!(["an", "array"])),
        ("invalid_json", json!("a string")),
    ];
    for (label, e) in &cases {
        let refused = router_accepts(e).expect_err(&format!("the router accepts {e}"));
        assert!(refused.starts_with(label), "{refused}, not {label}: {e}");
        assert!(
            !schema_rules(e).is_empty(),
            "the schema accepts what the router refuses ({refused}): {e}"
        );
    }
}

#[test]
fn what_the_schema_allows_in_the_envelope_the_router_accepts() {
    // The other direction, where it applies: the envelope's optional parts and their null forms,
    // aliases, offsets and fractions of seconds, unknown fields.
    let cases: Vec<Value> = vec![
        with(|e| {
            for key in ["site", "card", "contact", "form_fields", "gameplay", "data"] {
                e.remove(key);
            }
        }),
        with(|e| {
            for key in ["site", "card", "contact"] {
                e.insert(key.into(), Value::Null);
            }
        }),
        set("type", json!("Card.Completed")),
        set("occurred_at", json!("2026-11-26T18:00:00.123+02:00")),
        set("occurred_at", json!("2026-11-26t18:00:00z")),
        set("anything_else", json!({ "nested": [1, 2] })),
        set("workspace", json!({ "id": "ws_x", "extra": true })),
    ];
    for e in &cases {
        assert_eq!(schema_rules(e), Vec::<String>::new(), "{e}");
        router_accepts(e)
            .unwrap_or_else(|r| panic!("the schema allows it, the router refuses it ({r}): {e}"));
    }
    // Beyond the envelope the schema types the per-type objects for producers' own checks; the
    // router keeps them as they are (documented in the schema and docs/publishing-events.md).
    let score_as_text = set("gameplay", json!({ "score": "high" }));
    assert!(!schema_rules(&score_as_text).is_empty());
    assert_eq!(router_accepts(&score_as_text), Ok(()));
}

#[tokio::test(flavor = "multi_thread")]
async fn switchyard_test_names_the_schema_rule_an_event_breaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    let mut e = event("evt_bad", "Gameplay.DataCaptured");
    e["occurred_at"] = json!("last tuesday");
    e["gameplay"] = json!({ "score": "high" });
    std::fs::write(&bad, serde_json::to_vec(&e).expect("JSON")).expect("write");
    let ran = run_switchyard(&["test", "--event", bad.to_str().expect("utf-8")], &[]).await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(
        ran.stdout.contains("rule(s) of schema/event.schema.json"),
        "{ran:#?}"
    );
    assert!(ran.stdout.contains("at /occurred_at:"), "{ran:#?}");
    assert!(
        ran.stdout.contains("rule: format") || ran.stdout.contains("rule: pattern"),
        "{ran:#?}"
    );
    assert!(ran.stdout.contains("at /gameplay/score:"), "{ran:#?}");
    assert!(ran.stdout.contains("rule: type"), "{ran:#?}");
    assert!(
        ran.stdout
            .contains("the router would reject this event (invalid_field)"),
        "{ran:#?}"
    );

    // Only the per-type typing broken: the router would accept it, and the dry run goes on.
    e["occurred_at"] = json!("2026-11-26T18:00:00Z");
    std::fs::write(&bad, serde_json::to_vec(&e).expect("JSON")).expect("write");
    let ran = run_switchyard(&["test", "--event", bad.to_str().expect("utf-8")], &[]).await;
    assert!(ran.stdout.contains("at /gameplay/score:"), "{ran:#?}");
    assert!(
        ran.stdout.contains("the router would accept it"),
        "{ran:#?}"
    );
    assert!(
        ran.stdout.contains("event evt_bad (Gameplay.DataCaptured)"),
        "{ran:#?}"
    );

    // A valid event: no schema section at all.
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        serde_json::to_vec(&event("evt_ok", "Prize.Won")).expect("JSON"),
    )
    .expect("write");
    let ran = run_switchyard(&["test", "--event", good.to_str().expect("utf-8")], &[]).await;
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    assert!(!ran.stdout.contains("schema/event.schema.json"), "{ran:#?}");
}
