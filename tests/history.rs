//! Run history (SPEC §9) against the real PostgreSQL and the real broker: what is recorded, the
//! schema set-up under a lock, partitions and retention, and the `runs` commands.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{Days, Utc};
use serde_json::{Value, json};
use support::pg::Schema;
use support::{FakeServer, Harness, Recorded, Reply, event, run_switchyard, wait_for};
use switchyard::broker::message::action_id;
use switchyard::history::schema;

/// A workflow with one HTTP action to `fake`, authenticated with the `TOKEN` secret.
fn lead_sync(fake: &FakeServer) -> String {
    r#"
workflows:
  - id: lead-sync
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - id: post
        http:
          url: "@FAKE@/lead"
          auth: { bearer: "{{ secrets.TOKEN }}" }
          body: '{"event": "{{ event.id }}"}'
"#
    .replace("@FAKE@", &fake.url())
}

/// Attempts of one action, oldest first, as JSON rows.
async fn attempts(client: &tokio_postgres::Client, action: &str) -> Vec<Value> {
    let rows = client
        .query(
            "SELECT row_to_json(a)::text FROM history_attempts a WHERE action_id = $1 ORDER BY started_at, attempt",
            &[&action],
        )
        .await
        .expect("query attempts");
    rows.iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).expect("row JSON"))
        .collect()
}

/// Waits until history holds `n` attempts of an action that satisfy `done`.
async fn wait_attempts(
    client: &tokio_postgres::Client,
    action: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    wait_for(what, async || {
        let rows = attempts(client, action).await;
        done(&rows).then_some(rows)
    })
    .await
}

/// Writes the harness's configuration (with `schema`'s history) to a file the CLI can read.
fn cli_config(h: &Harness, schema: &Schema) -> PathBuf {
    let path = h.dir.path().join("cli.yaml");
    let yaml = support::test_config_yaml(&h.prefix, h.dir.path(), &schema.config());
    std::fs::write(&path, yaml).expect("write cli config");
    path
}

/// `switchyard runs <args> --config <config>`.
async fn runs(config: &std::path::Path, args: &[&str]) -> support::Ran {
    let mut all = vec!["runs"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", config.to_str().expect("utf-8 path")]);
    run_switchyard(&all, &[]).await
}

/// The single number a query returns.
async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_run_once_when_many_start_together() {
    let schema = Schema::create("migrate").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = schema.url();
        tasks.push(tokio::spawn(async move {
            let mut client = support::pg::connect(&url).await;
            let ran = schema::migrate(&mut client).await.expect("migrate");
            schema::ensure_partitions(&mut client, schema::days_ahead(Utc::now()))
                .await
                .expect("partitions");
            ran
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task");
    }
    assert_eq!(
        total,
        schema::MIGRATION_COUNT,
        "one connection applied each migration, the others saw it done"
    );
    let client = schema.client().await;
    let applied = count(&client, "SELECT count(*) FROM history_migrations").await;
    assert_eq!(applied, schema::MIGRATION_COUNT as i64);
    let partitions = count(
        &client,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'history_attempts'::regclass",
    )
    .await;
    assert_eq!(
        partitions,
        schema::DAYS_AHEAD as i64 + 1,
        "today and the days ahead"
    );
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_days_are_dropped_whole() {
    let schema = Schema::create("retention").await;
    let mut client = schema.client().await;
    schema::migrate(&mut client).await.expect("migrate");
    let today = Utc::now().date_naive();
    let ago = |n: u64| today.checked_sub_days(Days::new(n)).expect("date");
    schema::ensure_partitions(&mut client, [ago(31), ago(30), ago(29), today])
        .await
        .expect("partitions");
    // A row on the oldest day: it goes with its partition, not by DELETE.
    client
        .batch_execute(&format!(
            "INSERT INTO history_attempts (action_id, event_id, event_type, workspace, action, connector, attempt, trigger, started_at, duration_ms, outcome)
             VALUES ('act_old', 'evt_old', 'Prize.Won', 'ws', 'a', 'http', 1, 'delivery', '{} 12:00:00+00', 5, 'success')",
            ago(31)
        ))
        .await
        .expect("insert");
    let dropped = schema::drop_expired(&mut client, schema::first_kept_day(Utc::now(), 30))
        .await
        .expect("retention");
    let mut dropped = dropped;
    dropped.sort();
    assert_eq!(
        dropped,
        vec![
            schema::partition_name("history_attempts", ago(31)),
            schema::partition_name("history_events", ago(31)),
        ],
        "only the day older than 30 days"
    );
    let left = count(
        &client,
        "SELECT count(*) FROM history_attempts WHERE action_id = 'act_old'",
    )
    .await;
    assert_eq!(left, 0);
    let kept = count(
        &client,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'history_attempts'::regclass",
    )
    .await;
    assert_eq!(kept, 3, "30 days ago, 29 days ago and today stay");
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attempts_events_and_rejections_are_recorded_and_runs_reads_them() {
    let token = format!("tok-{:016x}", rand::random::<u64>());
    let calls = Arc::new(AtomicUsize::new(0));
    let echo = token.clone();
    let seen = calls.clone();
    let fake = FakeServer::start(move |_: &Recorded| {
        // The first call of evt_h_1 fails; every later call succeeds, echoing the token.
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::text(503, "busy")
        } else {
            Reply::json(200, &json!({ "echo": echo, "pad": "x".repeat(400) }))
        }
    })
    .await;
    let schema = Schema::create("record").await;
    let h = Harness::start(
        "history",
        &lead_sync(&fake),
        &format!(
            "history: {{ url: \"{}\", response_excerpt: 100 }}",
            schema.url()
        ),
        &[("TOKEN", &token)],
    )
    .await;
    let client = schema.client().await;

    h.publish(&event("evt_h_1", "Gameplay.DataCaptured")).await;
    let action = action_id("evt_h_1", "lead-sync", "post");
    let rows = wait_attempts(&client, &action, "a retry then a success", |rows| {
        rows.len() == 2
    })
    .await;
    let (first, second) = (&rows[0], &rows[1]);
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["trigger"], "delivery");
    assert_eq!(first["outcome"], "retry");
    assert_eq!(first["http_status"], 503);
    assert!(
        first["reason"].as_str().unwrap_or("").contains("503"),
        "{first}"
    );
    assert_eq!(second["attempt"], 2);
    assert_eq!(second["trigger"], "retry");
    assert_eq!(second["outcome"], "success");
    assert_eq!(second["http_status"], 200);
    assert_eq!(second["event_type"], "Gameplay.DataCaptured");
    assert_eq!(second["workspace"], "ws_demo");
    assert_eq!(second["workflow"], "lead-sync");
    assert_eq!(second["action"], "post");
    assert_eq!(second["connector"], "http");
    assert_eq!(second["contact_email"], "ana@example.com");
    assert_eq!(second["contact_id"], "ct_7");
    // The router starts a trace for an event without one (SPEC §12); the action message carries it.
    let trace_id = second["trace_id"].as_str().expect("a trace id");
    assert!(
        trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{trace_id}"
    );
    let excerpt = second["response_excerpt"].as_str().expect("an excerpt");
    assert!(excerpt.contains("[redacted]"), "{excerpt}");
    assert!(
        !excerpt.contains(&token),
        "the secret is redacted: {excerpt}"
    );
    assert!(
        excerpt.len() <= 100 + '…'.len_utf8(),
        "cut to 100 bytes: {excerpt}"
    );

    // Text PostgreSQL cannot store: a NUL inside a contact's email, and a rejected message of
    // invalid UTF-8 with a NUL in it. Both are kept, escaped; neither stops history.
    let mut nul = event("evt_h_nul", "Gameplay.DataCaptured");
    nul["contact"]["email"] = json!("nul\u{0}@example.com");
    h.publish(&nul).await;
    h.publish_raw("Gameplay.DataCaptured", b"{\"id\": \"evt_h_bad\0\xff\xfe")
        .await;
    let nul_action = action_id("evt_h_nul", "lead-sync", "post");
    let rows = wait_attempts(&client, &nul_action, "the NUL event's success", |rows| {
        rows.iter().any(|r| r["outcome"] == "success")
    })
    .await;
    assert_eq!(rows[0]["contact_email"], "nul\\u0000@example.com");
    let rejected = wait_for("the rejected message in history", async || {
        client
            .query_opt(
                "SELECT rejected, payload FROM history_events WHERE rejected IS NOT NULL",
                &[],
            )
            .await
            .expect("query")
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
    })
    .await;
    assert!(!rejected.0.is_empty());
    assert!(rejected.1.contains("\\u0000"), "{rejected:?}");
    assert!(rejected.1.contains('\u{fffd}'), "{rejected:?}");
    let payload: String = client
        .query_one(
            "SELECT payload FROM history_events WHERE event_id = 'evt_h_1'",
            &[],
        )
        .await
        .expect("the event row")
        .get(0);
    let payload: Value = serde_json::from_str(&payload).expect("payload JSON");
    assert_eq!(payload["contact"]["email"], "ana@example.com");

    // runs list: one line per action, newest first, the fields of SPEC §9.
    let config = cli_config(&h, &schema);
    let listed = runs(&config, &["list", "--json", "--contact", "ANA@example.com"]).await;
    assert_eq!(listed.code, Some(0), "{listed:?}");
    let lines = json_lines(&listed.stdout);
    assert_eq!(lines.len(), 1, "{listed:?}");
    let line = lines[0].as_object().expect("an object");
    let mut keys: Vec<&str> = line.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = vec![
        "action_id",
        "event_id",
        "event_type",
        "workspace",
        "workflow",
        "webhook",
        "action",
        "connector",
        "destination",
        "contact_email",
        "contact_id",
        "attempts",
        "outcome",
        "error_class",
        "http_status",
        "reason",
        "first_attempt_at",
        "last_attempt_at",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(line["action_id"], action.as_str());
    assert_eq!(line["attempts"], 2);
    assert_eq!(line["outcome"], "success");
    let by_workflow = runs(&config, &["list", "--json", "--workflow", "lead-sync"]).await;
    let lines = json_lines(&by_workflow.stdout);
    assert_eq!(lines.len(), 2, "{by_workflow:?}");
    assert_eq!(lines[0]["event_id"], "evt_h_nul", "newest first");
    let none = runs(&config, &["list", "--json", "--outcome", "dead"]).await;
    assert_eq!((none.code, none.stdout.as_str()), (Some(0), ""), "{none:?}");
    let limited = runs(&config, &["list", "--limit", "1", "--json"]).await;
    assert_eq!(json_lines(&limited.stdout).len(), 1, "{limited:?}");

    // runs show: every attempt, oldest first, with reasons and excerpts.
    let shown = runs(&config, &["show", &action]).await;
    assert_eq!(shown.code, Some(0), "{shown:?}");
    let retry_at = shown.stdout.find("#1").expect("attempt 1");
    let success_at = shown.stdout.find("#2").expect("attempt 2");
    assert!(retry_at < success_at, "{}", shown.stdout);
    assert!(shown.stdout.contains("HTTP 503"), "{}", shown.stdout);
    assert!(shown.stdout.contains("[redacted]"), "{}", shown.stdout);
    assert!(!shown.stdout.contains(&token), "{}", shown.stdout);
    let by_event = runs(&config, &["show", "--event", "evt_h_1", "--json"]).await;
    let lines = json_lines(&by_event.stdout);
    assert_eq!(lines[0]["kind"], "event", "{by_event:?}");
    assert_eq!(lines[0]["event_type"], "Gameplay.DataCaptured");
    assert_eq!(lines.iter().filter(|l| l["kind"] == "attempt").count(), 2);
    let missing = runs(&config, &["show", "act_nope"]).await;
    assert_eq!(missing.code, Some(1), "{missing:?}");

    // runs replay: a succeeded action needs --yes; --dry-run changes nothing.
    let before = fake.count();
    let refused = runs(&config, &["replay", &action]).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("--yes"), "{refused:?}");
    let dry = runs(&config, &["replay", "--workflow", "lead-sync", "--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{dry:?}");
    assert!(dry.stdout.contains("would replay 2 action(s)"), "{dry:?}");
    let many = runs(&config, &["replay", "--workflow", "lead-sync"]).await;
    assert_eq!(many.code, Some(1), "two actions need --yes: {many:?}");
    assert_eq!(fake.count(), before, "nothing was published");

    let replayed = runs(&config, &["replay", &action, "--yes"]).await;
    assert_eq!(replayed.code, Some(0), "{replayed:?}");
    let rows = wait_attempts(&client, &action, "the replayed attempt", |rows| {
        rows.iter().any(|r| r["trigger"] == "replay")
    })
    .await;
    let last = rows.last().expect("rows");
    assert_eq!(last["trigger"], "replay");
    assert_eq!(last["outcome"], "success");
    assert_eq!(last["attempt"], 1, "a replay starts a fresh budget");
    let requests = fake.requests();
    let key = requests
        .last()
        .and_then(|r| r.header("idempotency-key"))
        .expect("Idempotency-Key");
    assert_eq!(
        key, action,
        "the same action id, so the remote can de-duplicate"
    );

    h.wait_metric("switchyard_history_dropped_total", 0.0).await;
    assert!(h.metric("switchyard_history_rows_written_total").await >= 6.0);
    h.finish().await;
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attempts_name_their_destination_and_a_replayed_dependent_action_gets_its_steps() {
    // `find` answers with a lead; `update` needs it and posts the lead's id back.
    let fake = FakeServer::start(|r: &Recorded| match r.path.as_str() {
        "/find" => Reply::json(
            200,
            &json!({ "lead": format!("L-{}", r.json()["event"].as_str().unwrap_or("")) }),
        ),
        _ => Reply::json(200, &json!({ "ok": true })),
    })
    .await;
    let workflow = r#"
workflows:
  - id: lead-update
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - id: find
        http: { url: "@FAKE@/find", body: '{"event": "{{ event.id }}"}' }
      - id: update
        needs: find
        http: { url: "@FAKE@/update", body: '{"lead": "{{ steps.find.lead }}"}' }
"#
    .replace("@FAKE@", &fake.url());
    let schema = Schema::create("steps").await;
    let h = Harness::start(
        "history-steps",
        &workflow,
        &format!("history: {{ url: \"{}\" }}", schema.url()),
        &[],
    )
    .await;
    let client = schema.client().await;
    h.publish(&event("evt_s_1", "Gameplay.DataCaptured")).await;
    let update = action_id("evt_s_1", "lead-update", "update");
    let rows = wait_attempts(&client, &update, "the dependent action's success", |rows| {
        rows.iter().any(|r| r["outcome"] == "success")
    })
    .await;
    // An http action's destination is its URL's host:port (SPEC §10), recorded per attempt.
    let host_port = fake.url().trim_start_matches("http://").to_owned();
    assert_eq!(rows[0]["destination"], host_port.as_str(), "{}", rows[0]);
    let steps: Value =
        serde_json::from_str(rows[0]["steps"].as_str().expect("the steps it was given"))
            .expect("steps JSON");
    assert_eq!(steps["find"]["lead"], "L-evt_s_1");
    let find = attempts(&client, &action_id("evt_s_1", "lead-update", "find")).await;
    assert_eq!(
        find[0]["steps"],
        Value::Null,
        "an action with no prerequisite has none"
    );

    let config = cli_config(&h, &schema);
    let by_destination = runs(&config, &["list", "--json", "--destination", &host_port]).await;
    assert_eq!(
        json_lines(&by_destination.stdout).len(),
        2,
        "{by_destination:?}"
    );

    // Replayed alone, the dependent action renders with the earlier step's output again.
    let replayed = runs(&config, &["replay", &update, "--yes"]).await;
    assert_eq!(replayed.code, Some(0), "{replayed:?}");
    wait_attempts(&client, &update, "the replayed attempt", |rows| {
        rows.iter()
            .any(|r| r["trigger"] == "replay" && r["outcome"] == "success")
    })
    .await;
    let updates: Vec<Value> = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/update")
        .map(Recorded::json)
        .collect();
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert_eq!(updates[1]["lead"], "L-evt_s_1", "{updates:?}");
    h.finish().await;
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_says_how_to_turn_history_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("off.yaml");
    std::fs::write(&path, support::test_config_yaml("t-off", dir.path(), "")).expect("write");
    for args in [&["list"][..], &["show", "act_x"], &["replay", "act_x"]] {
        let mut all = vec!["runs"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", path.to_str().expect("utf-8")]);
        let ran = run_switchyard(&all, &[]).await;
        assert_eq!(ran.code, Some(1), "{ran:?}");
        assert!(ran.stderr.contains("history.url"), "{ran:?}");
    }
}

/// `runs` against a database (here: a schema) no service has written history into says so, and
/// where to look, instead of PostgreSQL's bare "relation does not exist".
#[tokio::test(flavor = "multi_thread")]
async fn runs_says_when_the_database_has_no_history() {
    let schema = Schema::create("empty").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty.yaml");
    let yaml = support::test_config_yaml("t-empty", dir.path(), &schema.config());
    std::fs::write(&path, yaml).expect("write");
    for args in [&["list"][..], &["show", "act_x"]] {
        let ran = runs(&path, args).await;
        assert_eq!(ran.code, Some(2), "{ran:?}");
        assert!(
            ran.stderr.contains("no run history in this database")
                && ran.stderr.contains("history_attempts"),
            "{ran:?}"
        );
    }
    schema.drop_now().await;
}

/// Whether the connection `history::connect` opens to `url` is encrypted (PostgreSQL's own view),
/// or why it could not be opened.
async fn encrypted(url: &str) -> Result<bool, String> {
    let client = switchyard::history::connect(url)
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// `history.url` speaks TLS as psql does (managed PostgreSQL refuses plain connections): when the
/// server offers it, always with `require`, with the certificate checked against `sslrootcert`
/// for `verify-ca` (its issuer) and `verify-full` (its issuer and the host). A private server
/// whose certificate a test CA issued for 127.0.0.1.
#[tokio::test(flavor = "multi_thread")]
async fn history_connects_over_tls_as_libpq_does() {
    let cluster = support::pg::PrivateCluster::start_with_tls();
    let url = cluster.url();
    let ca = cluster.ca().display().to_string();
    let other = cluster.other_ca().display().to_string();
    assert_eq!(
        encrypted(&format!("{url}?sslmode=disable")).await,
        Ok(false)
    );
    assert_eq!(encrypted(&url).await, Ok(true), "prefer, the default");
    assert_eq!(encrypted(&format!("{url}?sslmode=require")).await, Ok(true));
    for mode in ["verify-ca", "verify-full"] {
        assert_eq!(
            encrypted(&format!("{url}?sslmode={mode}&sslrootcert={ca}")).await,
            Ok(true),
            "{mode}"
        );
        let refused = encrypted(&format!("{url}?sslmode={mode}&sslrootcert={other}"))
            .await
            .expect_err("a server whose certificate another CA issued");
        assert!(refused.contains("UnknownIssuer"), "{mode}: {refused}");
        assert!(!refused.contains("history-test"), "the password: {refused}");
    }
    // By name: the certificate is for 127.0.0.1, not for `localhost` (reached at 127.0.0.1).
    let by_name = url.replacen("@127.0.0.1:", "@localhost:", 1);
    let by_name =
        |mode: &str| format!("{by_name}?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}");
    let refused = encrypted(&by_name("verify-full"))
        .await
        .expect_err("a certificate for another name");
    assert!(refused.contains("NotValidForName"), "{refused}");
    assert_eq!(encrypted(&by_name("verify-ca")).await, Ok(true));
    // A mode that cannot be used is a configuration error (exit 1), not an unreachable server.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tls.yaml");
    let history = format!("history: {{ url: \"{url}?sslmode=verify-ca\" }}");
    let yaml = support::test_config_yaml("t-tls", dir.path(), &history);
    std::fs::write(&path, yaml).expect("write");
    let ran = runs(&path, &["list"]).await;
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("sslrootcert"), "{ran:?}");
    assert!(
        !ran.stderr.contains("history-test"),
        "the password: {ran:?}"
    );
}

/// PostgreSQL dies mid-stream (a private server: the shared one is never touched). Delivery goes
/// on at full speed and nothing is lost from the broker's side; history buffers what it can,
/// drops and counts the rest, and resumes by itself when the server is back. Every row is either
/// in the database or counted as dropped.
#[tokio::test(flavor = "multi_thread")]
async fn delivery_goes_on_while_postgresql_is_down_and_history_resumes() {
    let cluster = support::pg::PrivateCluster::start();
    let fake = FakeServer::start(|_: &Recorded| Reply::json(200, &json!({ "ok": true }))).await;
    let h = Harness::start(
        "history-outage",
        &lead_sync(&fake),
        &format!("history: {{ url: \"{}\", buffer_rows: 40 }}", cluster.url()),
        &[("TOKEN", "token-value")],
    )
    .await;
    let client = support::pg::connect(&cluster.url()).await;
    let publish = async |from: usize, to: usize| {
        for n in from..to {
            h.publish(&event(&format!("evt_out_{n}"), "Gameplay.DataCaptured"))
                .await;
        }
    };
    let successes = support::http_attempts("success");

    publish(0, 20).await;
    h.wait_metric(&successes, 20.0).await;
    wait_for("the first 20 attempts in history", async || {
        (count(&client, "SELECT count(*) FROM history_attempts").await == 20).then_some(())
    })
    .await;

    cluster.kill();
    // Events until the buffer (history.buffer_rows, plus the batch the writer holds) overflows.
    let mut published = 20;
    while h.metric("switchyard_history_dropped_total").await == 0.0 {
        assert!(
            published < 1_500,
            "nothing was dropped after {published} events"
        );
        publish(published, published + 50).await;
        published += 50;
    }
    // Delivery does not wait for history.
    h.wait_metric(&successes, published as f64).await;
    assert_eq!(fake.count(), published);
    for queue in ["router", "action.http", "dead-letter"] {
        assert_eq!(
            h.broker.queue_len(&h.name(queue)).await,
            0,
            "{queue} is empty"
        );
    }

    let written_before = h.metric("switchyard_history_rows_written_total").await;
    cluster.resume();
    // The writer reconnects by itself and writes what it held.
    wait_for("the writer to reconnect and flush", async || {
        (h.metric("switchyard_history_rows_written_total").await > written_before).then_some(())
    })
    .await;
    publish(5_000, 5_010).await;
    let client = support::pg::connect(&cluster.url()).await;
    wait_for(
        "history to resume with the events after the outage",
        async || {
            let after = count(
                &client,
                "SELECT count(*) FROM history_attempts WHERE event_id LIKE 'evt\\_out\\_50__'",
            )
            .await;
            (after == 10).then_some(())
        },
    )
    .await;
    // Each event made an event row and an attempt row: each is written or counted as dropped.
    let produced = 2.0 * (published + 10) as f64;
    let accounted = wait_for("every row written or counted", async || {
        let stored = count(
            &client,
            "SELECT (SELECT count(*) FROM history_attempts) + (SELECT count(*) FROM history_events)",
        )
        .await as f64;
        let dropped = h.metric("switchyard_history_dropped_total").await;
        (stored + dropped >= produced).then_some((stored, dropped))
    })
    .await;
    assert!(
        accounted.0 >= 40.0 + 40.0 + 20.0,
        "the rows before the outage, the buffered ones and those after it were written: {accounted:?}"
    );
    assert_eq!(
        h.metric("switchyard_history_rows_written_total").await,
        accounted.0,
        "the written counter matches the database"
    );
    h.finish().await;
}

/// The writer's binary COPY, column by column: what comes back from PostgreSQL is what was
/// given (NUL made storable, NULLs as NULL, timestamps to the microsecond, both days' partitions).
#[tokio::test(flavor = "multi_thread")]
async fn the_writer_stores_every_column_as_given() {
    use chrono::DateTime;
    use switchyard::history::writer::{Statements, write};
    use switchyard::history::{Attempt, EventRecord, RunOutcome, Trigger};

    let schema = Schema::create("copy").await;
    let mut client = schema.client().await;
    schema::migrate(&mut client).await.expect("migrate");
    let today = Utc::now().date_naive();
    let yesterday = today.checked_sub_days(Days::new(1)).expect("date");
    schema::ensure_partitions(&mut client, [yesterday, today])
        .await
        .expect("partitions");
    let at = |micros: i64| DateTime::from_timestamp_micros(micros).expect("time");
    let now = Utc::now().timestamp_micros();
    let full = Attempt {
        action_id: "act_copy_full".into(),
        event_id: "evt_copy".into(),
        event_type: "Prize.Won".into(),
        workspace: "ws_é".into(),
        workflow: Some("lead-sync".into()),
        webhook: None,
        action: "post".into(),
        connector: "http".into(),
        destination: Some("127.0.0.1:9".into()),
        contact_email: Some("nul\0@example.com".into()),
        contact_id: Some("ct_1".into()),
        attempt: 3,
        trigger: Trigger::Retry,
        started_at: at(now - 86_400_000_000),
        duration_ms: 1234,
        outcome: RunOutcome::Dead,
        error_class: Some("http_5xx".into()),
        http_status: Some(503),
        reason: Some("HTTP 503 \u{1F4A5}".into()),
        response_excerpt: Some(String::new()),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        steps: Some(r#"{"a":1}"#.into()),
    };
    let bare = Attempt {
        action_id: "act_copy_bare".into(),
        workflow: None,
        webhook: Some("wh_1".into()),
        destination: None,
        contact_email: None,
        contact_id: None,
        attempt: 1,
        trigger: Trigger::Delivery,
        started_at: at(now),
        duration_ms: 0,
        outcome: RunOutcome::Success,
        error_class: None,
        http_status: None,
        reason: None,
        response_excerpt: None,
        trace_id: None,
        steps: None,
        ..full.clone()
    };
    let event = EventRecord {
        event_id: Some("evt_copy".into()),
        event_type: None,
        workspace: Some("ws_é".into()),
        received_at: at(now - 1),
        rejected: Some("bad\0json".into()),
        payload: None,
        trace_id: None,
    };
    let statements = Statements::prepare(&client).await.expect("prepare");
    write(&mut client, &statements, &[&full, &bare], &[&event])
        .await
        .expect("write");

    let columns = "action_id, event_id, event_type, workspace, workflow, webhook, action, connector, destination, contact_email, contact_id, attempt, trigger, started_at, duration_ms, outcome, error_class, http_status, reason, response_excerpt, trace_id, steps";
    for given in [&full, &bare] {
        let row = client
            .query_one(
                &format!("SELECT {columns} FROM history_attempts WHERE action_id = $1"),
                &[&given.action_id],
            )
            .await
            .expect("the attempt is there");
        let text = |i: usize| row.get::<_, Option<String>>(i);
        let storable = |s: &Option<String>| s.as_ref().map(|s| s.replace('\0', "\\u0000"));
        assert_eq!(text(0).as_deref(), Some(given.action_id.as_str()));
        assert_eq!(text(1).as_deref(), Some(given.event_id.as_str()));
        assert_eq!(text(2).as_deref(), Some(given.event_type.as_str()));
        assert_eq!(text(3).as_deref(), Some(given.workspace.as_str()));
        assert_eq!(text(4), given.workflow);
        assert_eq!(text(5), given.webhook);
        assert_eq!(text(6).as_deref(), Some(given.action.as_str()));
        assert_eq!(text(7).as_deref(), Some(given.connector.as_str()));
        assert_eq!(text(8), given.destination);
        assert_eq!(text(9), storable(&given.contact_email));
        assert_eq!(text(10), given.contact_id);
        assert_eq!(row.get::<_, i32>(11), given.attempt);
        assert_eq!(text(12).as_deref(), Some(given.trigger.as_str()));
        assert_eq!(row.get::<_, DateTime<Utc>>(13), given.started_at);
        assert_eq!(row.get::<_, i32>(14), given.duration_ms);
        assert_eq!(text(15).as_deref(), Some(given.outcome.as_str()));
        assert_eq!(text(16), given.error_class);
        assert_eq!(row.get::<_, Option<i16>>(17), given.http_status);
        assert_eq!(text(18), given.reason);
        assert_eq!(text(19), given.response_excerpt);
        assert_eq!(text(20), given.trace_id);
        assert_eq!(text(21), given.steps);
    }
    let row = client
        .query_one(
            "SELECT event_id, event_type, workspace, received_at, rejected, payload, trace_id FROM history_events",
            &[],
        )
        .await
        .expect("one event row");
    assert_eq!(row.get::<_, Option<String>>(0), event.event_id);
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, Option<String>>(2), event.workspace);
    assert_eq!(row.get::<_, DateTime<Utc>>(3), event.received_at);
    assert_eq!(
        row.get::<_, Option<String>>(4).as_deref(),
        Some("bad\\u0000json")
    );
    assert_eq!(row.get::<_, Option<String>>(5), None);
    // The older attempt went to yesterday's partition, the other to today's.
    let days = count(
        &client,
        "SELECT count(DISTINCT tableoid) FROM history_attempts",
    )
    .await;
    assert_eq!(days, 2);
    schema.drop_now().await;
}
