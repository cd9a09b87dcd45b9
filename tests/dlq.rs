//! The `switchyard dlq` commands (SPEC §4, issue 3 item 4), run as on-call runs them: the real
//! binary against the real broker, on hand-made dead-letter records in a queue prefix of its own.
//!
//! Every test publishes the same six records (varied connectors, workflows, workspaces, classes,
//! reasons and dead-letter times), runs commands with filters, and checks both what they print
//! and what is left on the broker: matching records moved or removed, every other record still in
//! the dead-letter queue with the same body and headers.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use serde_json::{Value, json};
use support::{Got, Ran};
use switchyard::Config;
use switchyard::broker::message::{
    H_ACTION, H_ATTEMPTS, H_CLASS, H_CONNECTOR, H_DEAD_AT, H_EVENT, H_FIRST_ATTEMPT, H_LAST_STATUS,
    H_REASON, H_RETRIES, H_WORKFLOW, H_WORKSPACE, action_id,
};
use switchyard::broker::{self, Publisher, RETRY_TIER_HEADER, Topology, set_int, set_str};

/// One retry tier keeps the topology each test declares small.
const SCHEDULE: &str = "5s";

/// The broker's redelivery counter, which quorum queues add to a record handed back by a pass.
/// It is not part of the record.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// A hand-made dead-letter record, as the worker writes one (`delivery::dead_letter::headers`).
#[derive(Debug, Clone)]
struct Spec {
    /// Short name used in assertions.
    name: &'static str,
    event: &'static str,
    connector: &'static str,
    workflow: &'static str,
    action: &'static str,
    workspace: &'static str,
    class: &'static str,
    /// `None` for failures without an HTTP status (written as an empty string, as the worker does).
    status: Option<i64>,
    reason: &'static str,
    /// How long ago it was dead-lettered.
    age: Duration,
}

fn hours(h: f64) -> Duration {
    Duration::from_secs_f64(h * 3600.0)
}

/// Queue order is publish order: r1 first.
fn specs() -> Vec<Spec> {
    vec![
        Spec {
            name: "r1",
            event: "evt_1",
            connector: "http",
            workflow: "lead-sync",
            action: "hubspot",
            workspace: "ws_a",
            class: "permanent",
            status: Some(400),
            reason: "HTTP 400 from api.hubapi.com: Property values were not valid: [lead_source]",
            age: hours(3.0),
        },
        Spec {
            name: "r2",
            event: "evt_2",
            connector: "http",
            workflow: "lead-sync",
            action: "hubspot",
            workspace: "ws_a",
            class: "exhausted",
            status: Some(503),
            reason: "gave up after 9 attempts: HTTP 503 from api.hubapi.com",
            age: hours(0.5),
        },
        Spec {
            name: "r3",
            event: "evt_3",
            connector: "webhook",
            workflow: "crm-hook",
            action: "deliver",
            workspace: "ws_b",
            class: "exhausted",
            status: Some(500),
            reason: "gave up after 9 attempts: HTTP 500 from hooks.example.com",
            age: hours(0.33),
        },
        Spec {
            name: "r4",
            event: "evt_4",
            connector: "http",
            workflow: "prize-won",
            action: "slack",
            workspace: "ws_b",
            class: "template",
            status: None,
            reason: "body: undefined variable event.data.prize",
            age: hours(5.0),
        },
        Spec {
            name: "r5",
            event: "evt_5",
            connector: "mailchimp",
            workflow: "newsletter",
            action: "subscribe",
            workspace: "ws_a",
            class: "permanent",
            status: Some(400),
            reason: "HTTP 400 from us1.api.mailchimp.com: Member Exists",
            age: hours(0.17),
        },
        Spec {
            name: "r6",
            event: "evt_1",
            connector: "http",
            workflow: "lead-sync",
            action: "enrich",
            workspace: "ws_c",
            class: "config",
            status: None,
            reason: "workflow lead-sync has no action enrich",
            age: hours(24.0),
        },
    ]
}

/// A record as published, to compare with what is read back.
#[derive(Debug, Clone)]
struct Published {
    spec: Spec,
    id: String,
    body: Vec<u8>,
    headers: FieldTable,
}

impl Spec {
    fn build(&self, now: DateTime<Utc>) -> Published {
        let id = action_id(self.event, self.workflow, self.action);
        let dead_at = now - chrono::Duration::from_std(self.age).unwrap_or_default();
        let first = dead_at - chrono::Duration::minutes(40);
        let body = json!({
            "id": id,
            "workflow": self.workflow,
            "action": self.action,
            "connector": self.connector,
            "workspace": self.workspace,
            "event": {
                "id": self.event,
                "type": "Gameplay.DataCaptured",
                "workspace": self.workspace,
                "occurred_at": first.to_rfc3339(),
                "data": { "email": "ada@example.com", "name": "Ada" }
            }
        });
        let mut headers = FieldTable::default();
        set_str(&mut headers, H_WORKFLOW, self.workflow);
        set_str(&mut headers, H_ACTION, self.action);
        set_str(&mut headers, H_CONNECTOR, self.connector);
        set_str(&mut headers, H_WORKSPACE, self.workspace);
        set_str(&mut headers, H_EVENT, self.event);
        set_int(&mut headers, H_ATTEMPTS, 9);
        set_int(&mut headers, H_RETRIES, 7);
        set_str(&mut headers, H_FIRST_ATTEMPT, first.to_rfc3339().as_str());
        set_str(&mut headers, RETRY_TIER_HEADER, SCHEDULE);
        set_str(&mut headers, H_REASON, self.reason);
        set_str(&mut headers, H_CLASS, self.class);
        match self.status {
            Some(status) => set_int(&mut headers, H_LAST_STATUS, status),
            None => set_str(&mut headers, H_LAST_STATUS, ""),
        }
        set_str(&mut headers, H_DEAD_AT, dead_at.to_rfc3339().as_str());
        Published {
            spec: self.clone(),
            id,
            body: serde_json::to_vec(&body).expect("a JSON value serialises"),
            headers,
        }
    }
}

/// A record's headers without the broker's redelivery counter.
fn record_headers(got: &Got) -> BTreeMap<String, AMQPValue> {
    got.headers()
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != DELIVERY_COUNT)
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn header_map(headers: &FieldTable) -> BTreeMap<String, AMQPValue> {
    headers
        .inner()
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// The broker side of a test: its own prefix and topology, deleted when dropped.
struct Setup {
    runtime: tokio::runtime::Runtime,
    connection: Connection,
    publisher: Publisher,
    topology: Topology,
    prefix: String,
    records: Vec<Published>,
}

impl Setup {
    /// Declares a fresh topology and publishes the six records to its dead-letter queue.
    fn new(name: &str) -> Setup {
        let prefix = support::unique_prefix(&format!("dlq-{name}"));
        let mut env = HashMap::new();
        env.insert("SWITCHYARD__AMQP__PREFIX".to_owned(), prefix.clone());
        env.insert(
            "SWITCHYARD__RETRY__SCHEDULE".to_owned(),
            SCHEDULE.to_owned(),
        );
        let config = Config::load_with_env(
            &repo().join("config/switchyard.yaml"),
            true,
            Some(env.into_iter().collect()),
        )
        .expect("config/switchyard.yaml loads");
        let topology = Topology::new(&config);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a test runtime");
        let (connection, publisher) = runtime.block_on(async {
            let connection = broker::connect_any(&config.amqp, "switchyard dlq test")
                .await
                .expect("the test broker on 127.0.0.1:5672 is up")
                .connection;
            topology
                .declare(&connection)
                .await
                .expect("topology declared");
            let publisher = Publisher::open(&connection).await.expect("a publisher");
            (connection, publisher)
        });
        let mut setup = Setup {
            runtime,
            connection,
            publisher,
            topology,
            prefix,
            records: Vec::new(),
        };
        for spec in specs() {
            setup.add(spec);
        }
        setup
    }

    /// Publishes one more record to the dead-letter queue.
    fn add(&mut self, spec: Spec) {
        let now = Utc::now();
        let record = spec.build(now);
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(record.id.as_str().into())
            .with_timestamp(now.timestamp().cast_unsigned())
            .with_headers(record.headers.clone());
        self.runtime
            .block_on(self.publisher.publish(
                "",
                &self.topology.dead_letter,
                &record.body,
                properties,
            ))
            .expect("record published");
        self.records.push(record);
    }

    fn record(&self, name: &str) -> &Published {
        self.records
            .iter()
            .find(|r| r.spec.name == name)
            .expect("a known record name")
    }

    fn names_of(&self, ids: &[String]) -> Vec<&'static str> {
        ids.iter()
            .map(|id| {
                self.records
                    .iter()
                    .find(|r| &r.id == id)
                    .map(|r| r.spec.name)
                    .unwrap_or("?")
            })
            .collect()
    }

    /// Runs the real binary with this test's prefix.
    fn dlq(&self, args: &[&str]) -> Ran {
        self.run_with(args, &[])
    }

    /// Through `support::run_switchyard`: from the repository root, without inherited
    /// `SWITCHYARD*` variables, and bounded, so a command that never exits fails the test.
    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let command: Vec<&str> = ["--config", "config/switchyard.yaml", "dlq"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let mut envs = vec![
            ("SWITCHYARD__AMQP__PREFIX", self.prefix.as_str()),
            ("SWITCHYARD__RETRY__SCHEDULE", SCHEDULE),
        ];
        envs.extend_from_slice(env);
        self.runtime
            .block_on(support::run_switchyard(&command, &envs))
    }

    /// Every message in a queue, handed back unchanged (the channel closes unacked).
    fn peek(&self, queue: &str) -> Vec<Got> {
        self.runtime.block_on(async {
            let channel = self.connection.create_channel().await.expect("a channel");
            let mut got = Vec::new();
            while let Some(message) = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .expect("basic.get")
            {
                let delivery = message.delivery;
                got.push(Got {
                    body: delivery.data,
                    properties: delivery.properties,
                });
            }
            channel
                .basic_nack(
                    0,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await
                .expect("handed back");
            let _ = channel.close(200, "done".into()).await;
            got
        })
    }

    /// Asserts the order of the dead-letter queue.
    fn assert_dlq_order(&self, names: &[&str]) {
        let ids: Vec<String> = self
            .peek(&self.topology.dead_letter)
            .into_iter()
            .filter_map(|g| g.message_id())
            .collect();
        assert_eq!(self.names_of(&ids), names, "dead-letter queue order");
    }

    /// Asserts that the dead-letter queue holds exactly these records, each as published.
    fn assert_dlq_holds(&self, names: &[&str]) {
        let got = self.peek(&self.topology.dead_letter);
        let mut ids: Vec<String> = got.iter().filter_map(Got::message_id).collect();
        ids.sort();
        let mut expected: Vec<String> = names.iter().map(|n| self.record(n).id.clone()).collect();
        expected.sort();
        assert_eq!(
            self.names_of(&ids),
            self.names_of(&expected),
            "records left in the dead-letter queue"
        );
        for g in &got {
            let id = g.message_id().unwrap_or_default();
            let original = self
                .records
                .iter()
                .find(|r| r.id == id)
                .expect("a record we published");
            assert_eq!(
                g.body, original.body,
                "{}: body unchanged",
                original.spec.name
            );
            assert_eq!(
                record_headers(g),
                header_map(&original.headers),
                "{}: headers unchanged",
                original.spec.name
            );
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.runtime.block_on(async {
            support::delete_topology(&self.topology).await;
            let _ = self.connection.close(200, "test done".into()).await;
        });
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the `dlq` tables say, read from a run's output.
trait Tables {
    /// The `list` rows: the first column (id) of every line after the heading.
    fn listed_ids(&self) -> Vec<String>;
    /// A two-column `stats` table (RECORDS, key) by its heading.
    fn counts(&self, heading: &str) -> BTreeMap<String, usize>;
}

impl Tables for Ran {
    fn listed_ids(&self) -> Vec<String> {
        let mut lines = self.stdout.lines();
        assert!(
            lines.next().is_some_and(|h| h.starts_with("ID ")),
            "list prints a heading: {self:#?}"
        );
        lines
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    fn counts(&self, heading: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        let mut lines = self.stdout.lines();
        let wanted = format!("RECORDS  {heading}");
        assert!(
            lines.any(|l| l == wanted),
            "stats has a {heading} table: {self:#?}"
        );
        for line in lines.take_while(|l| !l.is_empty()) {
            let (count, rest) = line.trim_start().split_once(' ').expect("count, then key");
            out.insert(rest.trim().to_owned(), count.parse().expect("a count"));
        }
        out
    }
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

#[test]
fn stats_counts_by_connector_workflow_class_and_reason() {
    let s = Setup::new("stats");
    let all = s.dlq(&["stats"]).ok();
    assert!(
        all.stdout
            .starts_with(&format!("{}: 6 record(s)", s.topology.dead_letter)),
        "{all:#?}"
    );
    assert_eq!(
        all.counts("CONNECTOR"),
        counts(&[("http", 4), ("webhook", 1), ("mailchimp", 1)])
    );
    assert_eq!(
        all.counts("WORKFLOW"),
        counts(&[
            ("lead-sync", 3),
            ("crm-hook", 1),
            ("prize-won", 1),
            ("newsletter", 1)
        ])
    );
    assert_eq!(
        all.counts("CLASS"),
        counts(&[
            ("permanent", 2),
            ("exhausted", 2),
            ("template", 1),
            ("config", 1)
        ])
    );
    // The reason table: count, class, reason.
    let reasons: Vec<&str> = all
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("RECORDS  CLASS      REASON"))
        .skip(1)
        .collect();
    assert_eq!(reasons.len(), 6, "{all:#?}");
    assert!(
        reasons
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "1",
                    "permanent",
                    "HTTP",
                    "400",
                    "from",
                    "us1.api.mailchimp.com:",
                    "Member",
                    "Exists"
                ]),
        "{all:#?}"
    );
    // Columns line up: every row of a table starts its key at the same offset.
    let offsets: Vec<usize> = reasons
        .iter()
        .map(|l| l.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(0))
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] == w[1]), "{all:#?}");

    let http = s.dlq(&["stats", "--connector", "http"]).ok();
    assert!(
        http.stdout.starts_with(&format!(
            "{}: 4 matching record(s) (of 6)",
            s.topology.dead_letter
        )),
        "{http:#?}"
    );
    assert_eq!(http.counts("CONNECTOR"), counts(&[("http", 4)]));
    assert_eq!(
        http.counts("WORKFLOW"),
        counts(&[("lead-sync", 3), ("prize-won", 1)])
    );

    let none = s.dlq(&["stats", "--workspace", "ws_nope"]).ok();
    assert!(
        none.stdout.contains("no record matches (of 6)"),
        "{none:#?}"
    );
    s.assert_dlq_holds(&["r1", "r2", "r3", "r4", "r5", "r6"]);
}

#[test]
fn list_filters_and_limits() {
    let s = Setup::new("list");
    // Oldest first: r6 (1 d), r4 (5 h), r1 (3 h), r2 (30 min), r3 (20 min), r5 (10 min).
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["r6", "r4", "r1", "r2", "r3", "r5"]),
        (&["--connector", "http"], &["r6", "r4", "r1", "r2"]),
        (&["--workflow", "lead-sync"], &["r6", "r1", "r2"]),
        (&["--action", "hubspot"], &["r1", "r2"]),
        (&["--workspace", "ws_b"], &["r4", "r3"]),
        (&["--class", "exhausted"], &["r2", "r3"]),
        (&["--reason", "HUBAPI"], &["r1", "r2"]),
        (&["--reason", "member exists"], &["r5"]),
        (&["--since", "1h"], &["r2", "r3", "r5"]),
        (&["--until", "2h"], &["r6", "r4", "r1"]),
        (&["--since", "4h", "--until", "1h"], &["r1"]),
        (&["--connector", "http", "--since", "2h"], &["r2"]),
        (&["--limit", "2"], &["r6", "r4"]),
        (
            &["--connector", "http", "--limit", "3"],
            &["r6", "r4", "r1"],
        ),
        (&["--connector", "braze"], &[]),
    ];
    for (args, expected) in cases.iter().chain(cases) {
        let mut full = vec!["list"];
        full.extend_from_slice(args);
        let ran = s.dlq(&full).ok();
        assert_eq!(
            s.names_of(&ran.listed_ids()),
            *expected,
            "dlq {}: {ran:#?}",
            full.join(" ")
        );
    }
    let since = (Utc::now() - chrono::Duration::minutes(45)).to_rfc3339();
    let ran = s.dlq(&["list", "--since", &since]).ok();
    assert_eq!(s.names_of(&ran.listed_ids()), ["r2", "r3", "r5"]);

    // One line per record, with every column.
    let ran = s.dlq(&["list", "--action", "hubspot"]).ok();
    let r1 = s.record("r1");
    let line = ran
        .stdout
        .lines()
        .find(|l| l.starts_with(&r1.id))
        .expect("r1 is listed");
    let dead_at = r1
        .headers
        .inner()
        .get(H_DEAD_AT)
        .map(|v| match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            _ => String::new(),
        })
        .unwrap_or_default();
    let dead_at = DateTime::parse_from_rfc3339(&dead_at)
        .expect("dead-at is RFC 3339")
        .with_timezone(&Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let columns: Vec<&str> = line.split_whitespace().take(6).collect();
    assert_eq!(
        columns,
        [
            r1.id.as_str(),
            dead_at.as_str(),
            "http",
            "lead-sync/hubspot",
            "permanent",
            "400"
        ],
        "{ran:#?}"
    );
    assert!(line.ends_with(r1.spec.reason), "{ran:#?}");
    let heading = ran.stdout.lines().next().unwrap_or_default();
    assert_eq!(
        heading.find("REASON"),
        line.find("HTTP 400"),
        "the reason column is aligned: {ran:#?}"
    );
    // A record without a status shows `-`.
    let ran = s.dlq(&["list", "--class", "template"]).ok();
    assert!(
        ran.stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().nth(5) == Some("-")),
        "{ran:#?}"
    );
    s.assert_dlq_holds(&["r1", "r2", "r3", "r4", "r5", "r6"]);
}

#[test]
fn show_prints_every_header_and_the_body() {
    let s = Setup::new("show");
    let r1 = s.record("r1");
    let ran = s.dlq(&["show", &r1.id]).ok();
    assert!(
        ran.stdout
            .starts_with(&format!("record {} in {}", r1.id, s.topology.dead_letter)),
        "{ran:#?}"
    );
    for (name, value) in r1.headers.inner() {
        let value = match value {
            AMQPValue::LongString(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
            AMQPValue::LongLongInt(v) => v.to_string(),
            other => panic!("unexpected header type {other:?}"),
        };
        let line = ran
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} ", name.as_str())))
            .unwrap_or_else(|| panic!("header {name} is shown: {ran:#?}"));
        assert!(line.trim_end().ends_with(&value), "{name}: {line}");
    }
    assert!(!ran.stdout.contains(DELIVERY_COUNT), "{ran:#?}");
    let body: Value = serde_json::from_slice(&r1.body).expect("JSON");
    let pretty = serde_json::to_string_pretty(&body).expect("JSON");
    assert!(
        ran.stdout.ends_with(&format!("body\n{pretty}\n")),
        "the body, pretty-printed: {ran:#?}"
    );
    assert!(ran.stdout.contains("content-type"), "{ran:#?}");

    // An event id shows every record of that event.
    let ran = s.dlq(&["show", "evt_1"]).ok();
    assert!(ran.stdout.contains(&format!("record {}", r1.id)));
    assert!(
        ran.stdout
            .contains(&format!("record {}", s.record("r6").id))
    );
    assert_eq!(ran.stdout.matches("\nrecord ").count(), 1, "{ran:#?}");

    let missing = s.dlq(&["show", "act_00000000000000000000000000000000"]);
    assert_eq!(missing.code, Some(1), "{missing:#?}");
    assert!(missing.stderr.contains("no record"), "{missing:#?}");
    s.assert_dlq_holds(&["r1", "r2", "r3", "r4", "r5", "r6"]);
}

#[test]
fn replay_moves_only_matching_records_with_a_fresh_budget() {
    let s = Setup::new("replay");
    let http_queue = s
        .topology
        .action_queue("http")
        .expect("an http queue")
        .to_owned();
    let webhook_queue = s
        .topology
        .action_queue("webhook")
        .expect("a webhook queue")
        .to_owned();

    // --dry-run says what would move and changes nothing.
    let dry = s.dlq(&["replay", "--connector", "http", "--dry-run"]).ok();
    assert_eq!(
        dry.stdout
            .lines()
            .filter(|l| l.starts_with("would replay "))
            .count(),
        4,
        "{dry:#?}"
    );
    assert!(dry.stdout.contains(&format!("-> {http_queue}")), "{dry:#?}");
    assert!(dry.stdout.contains("nothing changed"), "{dry:#?}");
    assert!(s.peek(&http_queue).is_empty());
    s.assert_dlq_holds(&["r1", "r2", "r3", "r4", "r5", "r6"]);

    // A subset: lead-sync's HubSpot failures.
    let ran = s
        .dlq(&[
            "replay",
            "--workflow",
            "lead-sync",
            "--reason",
            "hubapi",
            "--rate",
            "50",
        ])
        .ok();
    assert!(ran.stdout.contains("replayed 2 record(s)"), "{ran:#?}");
    let moved = s.peek(&http_queue);
    let mut ids: Vec<String> = moved.iter().filter_map(Got::message_id).collect();
    ids.sort();
    let mut expected = vec![s.record("r1").id.clone(), s.record("r2").id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    for got in &moved {
        let original = s
            .records
            .iter()
            .find(|r| Some(&r.id) == got.message_id().as_ref())
            .expect("a record we published");
        assert_eq!(got.body, original.body, "the body (and action id) is kept");
        let mut kept = header_map(&original.headers);
        for dropped in [
            H_ATTEMPTS,
            H_RETRIES,
            H_REASON,
            H_CLASS,
            H_LAST_STATUS,
            H_DEAD_AT,
            H_FIRST_ATTEMPT,
            RETRY_TIER_HEADER,
        ] {
            assert!(
                kept.remove(dropped).is_some(),
                "{dropped} was on the record"
            );
        }
        assert_eq!(
            record_headers(got),
            kept,
            "only the attempt and dead-letter headers are removed"
        );
    }
    s.assert_dlq_holds(&["r3", "r4", "r5", "r6"]);

    // --rate caps the pace: the second of two records at 4/s waits a quarter of a second.
    let ran = s
        .dlq(&["replay", "--workspace", "ws_b", "--rate", "4"])
        .ok();
    assert!(ran.stdout.contains("replayed 2 record(s)"), "{ran:#?}");
    assert!(
        ran.elapsed >= Duration::from_millis(250),
        "two records at 4/s: {ran:#?}"
    );
    let webhook: Vec<Option<String>> = s
        .peek(&webhook_queue)
        .into_iter()
        .map(|g| g.message_id())
        .collect();
    assert_eq!(webhook, [Some(s.record("r3").id.clone())]);
    assert_eq!(s.peek(&http_queue).len(), 3, "r4 joined r1 and r2");
    s.assert_dlq_holds(&["r5", "r6"]);

    // Nothing matches: nothing moves.
    let ran = s.dlq(&["replay", "--connector", "braze"]).ok();
    assert!(ran.stdout.contains("replayed 0 record(s)"), "{ran:#?}");
    s.assert_dlq_holds(&["r5", "r6"]);
}

#[test]
fn a_slow_replay_hands_records_back_between_passes() {
    let mut s = Setup::new("slow");
    // A record whose connector this version does not know stays where it is.
    s.add(Spec {
        name: "r7",
        event: "evt_7",
        connector: "carrier-pigeon",
        workflow: "lead-sync",
        action: "pigeon",
        workspace: "ws_a",
        class: "config",
        status: None,
        reason: "no such connector",
        age: hours(1.0),
    });
    let http_queue = s.topology.action_queue("http").expect("http").to_owned();
    // 4/s: the records are due at 0, 0.25, 0.5 and 0.75 s; a pass may hold records for 0.3 s,
    // so the third record's wait ends the first pass and a second pass replays the rest.
    let ran = s
        .dlq(&[
            "replay",
            "--workflow",
            "lead-sync",
            "--rate",
            "4",
            "--max-hold",
            "300ms",
        ])
        .ok();
    assert!(ran.stdout.contains("replayed 3 record(s)"), "{ran:#?}");
    assert!(
        ran.stdout.contains(&format!(
            "skip {} lead-sync/pigeon: no known connector (carrier-pigeon); it stays",
            s.record("r7").id
        )),
        "{ran:#?}"
    );
    assert_eq!(
        ran.stdout.matches("skip ").count(),
        1,
        "reported once, not once per pass: {ran:#?}"
    );
    assert!(
        ran.stdout.contains("1 record(s) could not be replayed"),
        "{ran:#?}"
    );
    assert!(ran.elapsed >= Duration::from_millis(500), "{ran:#?}");
    assert_eq!(
        ran.stderr.matches("a new pass starts").count(),
        1,
        "{ran:#?}"
    );
    let mut moved: Vec<String> = s
        .peek(&http_queue)
        .into_iter()
        .filter_map(|g| g.message_id())
        .collect();
    moved.sort();
    let mut expected: Vec<String> = ["r1", "r2", "r6"]
        .iter()
        .map(|n| s.record(n).id.clone())
        .collect();
    expected.sort();
    assert_eq!(moved, expected, "each replayed exactly once");
    s.assert_dlq_holds(&["r3", "r4", "r5", "r7"]);
}

#[test]
fn export_drains_matching_records_to_json_lines() {
    let s = Setup::new("export");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let file = dir.path().join("dead.jsonl");
    let file_arg = file.to_str().expect("a UTF-8 path");
    let ran = s
        .dlq(&["export", "--connector", "http", "--out", file_arg])
        .ok();
    assert!(ran.stdout.contains("exported 4 record(s)"), "{ran:#?}");
    let written = std::fs::read_to_string(&file).expect("the export file");
    let lines: Vec<&str> = written.lines().collect();
    assert!(written.ends_with('\n'));
    let expected = exported_lines(&s, &["r1", "r2", "r4", "r6"]);
    assert_eq!(lines, expected);
    s.assert_dlq_holds(&["r3", "r5"]);

    // An export never overwrites a file, and then removes nothing.
    let again = s.dlq(&["export", "--out", file_arg]);
    assert_eq!(again.code, Some(1), "{again:#?}");
    assert!(again.stderr.contains("already exists"), "{again:#?}");
    assert_eq!(
        std::fs::read_to_string(&file).ok().as_deref(),
        Some(written.as_str())
    );
    s.assert_dlq_holds(&["r3", "r5"]);

    // A filter that matches nothing writes an empty file and removes nothing.
    let empty = dir.path().join("none.jsonl");
    let ran = s
        .dlq(&[
            "export",
            "--since",
            "1m",
            "--out",
            empty.to_str().expect("UTF-8"),
        ])
        .ok();
    assert!(ran.stdout.contains("exported 0 record(s)"), "{ran:#?}");
    assert_eq!(std::fs::read_to_string(&empty).ok().as_deref(), Some(""));
    s.assert_dlq_holds(&["r3", "r5"]);
}

/// The JSON lines `dlq export` writes for the named records, in that order.
fn exported_lines(s: &Setup, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            let r = s.record(name);
            let headers: serde_json::Map<String, Value> = header_map(&r.headers)
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        AMQPValue::LongString(s) => {
                            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
                        }
                        AMQPValue::LongLongInt(n) => Value::from(n),
                        other => panic!("unexpected header type {other:?}"),
                    };
                    (k, v)
                })
                .collect();
            let body: Value = serde_json::from_slice(&r.body).expect("JSON");
            json!({ "id": r.id, "headers": headers, "body": body }).to_string()
        })
        .collect()
}

/// `--out -`, for a pod whose root filesystem is read-only: `kubectl exec … -- switchyard dlq
/// export --out - > file`. Standard output holds the records alone; the summary goes to stderr.
#[test]
fn export_to_stdout_streams_json_lines_and_removes_them() {
    let s = Setup::new("export-stdout");
    let ran = s.dlq(&["export", "--connector", "http", "--out", "-"]).ok();
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        lines,
        exported_lines(&s, &["r1", "r2", "r4", "r6"]),
        "{ran:#?}"
    );
    assert!(ran.stdout.ends_with('\n'), "{ran:#?}");
    assert!(
        ran.stderr
            .contains("exported 4 record(s) to standard output and removed them from"),
        "{ran:#?}"
    );
    s.assert_dlq_holds(&["r3", "r5"]);

    // `-` is never a file name: a second export to stdout finds what is left.
    let ran = s.dlq(&["export", "--limit", "1", "--out", "-"]).ok();
    assert_eq!(
        ran.stdout.lines().collect::<Vec<_>>(),
        exported_lines(&s, &["r3"])
    );
    assert!(!std::path::Path::new("-").exists(), "no file named -");
    s.assert_dlq_holds(&["r5"]);
}

#[test]
fn purge_needs_yes_and_removes_only_matches() {
    let s = Setup::new("purge");
    let refused = s.dlq(&["purge", "--connector", "http"]);
    assert_eq!(refused.code, Some(1), "{refused:#?}");
    assert!(
        refused.stderr.contains("4 record(s)") && refused.stderr.contains("--yes"),
        "says how many would go: {refused:#?}"
    );
    s.assert_dlq_holds(&["r1", "r2", "r3", "r4", "r5", "r6"]);

    let ran = s
        .dlq(&[
            "purge",
            "--connector",
            "http",
            "--reason",
            "hubapi",
            "--yes",
        ])
        .ok();
    assert!(ran.stdout.contains("deleted 2 record(s)"), "{ran:#?}");
    s.assert_dlq_holds(&["r3", "r4", "r5", "r6"]);

    // --limit takes the first matches in queue order (r4, then r6), and the rest keep their order.
    let ran = s
        .dlq(&["purge", "--until", "4h", "--limit", "1", "--yes"])
        .ok();
    assert!(ran.stdout.contains("deleted 1 record(s)"), "{ran:#?}");
    s.assert_dlq_order(&["r3", "r5", "r6"]);
    s.assert_dlq_holds(&["r3", "r5", "r6"]);

    let ran = s.dlq(&["purge", "--until", "4h", "--yes"]).ok();
    assert!(ran.stdout.contains("deleted 1 record(s)"), "{ran:#?}");
    s.assert_dlq_holds(&["r3", "r5"]);
    assert!(
        s.peek(s.topology.action_queue("http").expect("http"))
            .is_empty()
    );
}

#[test]
fn exit_codes_tell_user_errors_from_an_unreachable_broker() {
    let s = Setup::new("codes");
    for args in [
        &["list", "--since", "yesterday"][..],
        &["replay", "--rate", "0"],
        &["list", "--since", "1h", "--until", "2h"],
        &["purge", "--connector"],
        &["frobnicate"],
    ] {
        let ran = s.dlq(args);
        assert_eq!(ran.code, Some(1), "{ran:#?}");
        assert!(!ran.stderr.is_empty(), "explains: {ran:#?}");
    }
    let unreachable = s.run_with(
        &["stats"],
        &[(
            "SWITCHYARD__AMQP__URL",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        )],
    );
    assert_eq!(unreachable.code, Some(2), "{unreachable:#?}");
    assert!(
        !unreachable.stderr.contains("guest:guest"),
        "no password: {unreachable:#?}"
    );
    let missing = s.run_with(
        &["stats"],
        &[("SWITCHYARD__AMQP__PREFIX", "t-dlq-never-declared")],
    );
    assert_eq!(missing.code, Some(1), "{missing:#?}");
    assert!(missing.stderr.contains("does not exist"), "{missing:#?}");
    s.assert_dlq_holds(&["r1", "r2", "r3", "r4", "r5", "r6"]);
}
