//! Hot reload (SPEC §3 "Reload"), with the real binary: SIGHUP re-reads the workflow files, an
//! invalid set is refused while the old one keeps running, and work in flight during a reload is
//! neither dropped nor repeated.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{
    Broker, DEADLINE, FakeServer, Process, Recorded, Reply, TopologyGuard, event, http_attempts,
    http_get, metric_value, run_switchyard, spawn_ready, test_config_yaml, unique_prefix,
    wait_until, wait_until_within, write_workflows_and_secrets,
};

const EVENT_TYPE: &str = "Gameplay.DataCaptured";
const RELOADS_OK: &str = "switchyard_config_reloads_total{result=\"ok\"}";
const RELOADS_ERROR: &str = "switchyard_config_reloads_total{result=\"error\"}";
const LOADED: &str = "switchyard_workflows_loaded";

/// One workflow posting `{"event": <event id>}` to `<fake><path>`.
fn workflow(id: &str, url: &str) -> String {
    format!(
        "  - id: {id}\n    workspace: ws_demo\n    trigger: {{ event: {EVENT_TYPE} }}\n    actions:\n      - {{ id: post, http: {{ url: \"{url}\", body: '{{\"event\": \"{{{{ event.id }}}}\"}}' }} }}\n"
    )
}

/// A workflow file holding `workflows`.
fn file(workflows: &[String]) -> String {
    format!("workflows:\n{}", workflows.concat())
}

/// `switchyard run` on a temporary folder, its topology deleted at the end.
struct Running {
    dir: tempfile::TempDir,
    prefix: String,
    broker: Broker,
    // Dropped first: the process stops before its queues go away.
    process: Process,
    guard: Option<TopologyGuard>,
}

impl Running {
    /// Writes `workflows.yaml`, starts the binary with `extra` config and waits for `/readyz`.
    async fn start(name: &str, workflows: &str, extra: &str) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        write_workflows_and_secrets(dir.path(), workflows, &[]);
        let prefix = unique_prefix(name);
        let yaml = test_config_yaml(
            &prefix,
            dir.path(),
            &format!("log: {{ format: text, level: info }}\n{extra}"),
        );
        let (process, guard) = spawn_ready(dir.path(), &yaml).await;
        Running {
            dir,
            prefix,
            broker: Broker::connect().await,
            process,
            guard: Some(guard),
        }
    }

    fn workflows_dir(&self) -> PathBuf {
        self.dir.path().join("workflows")
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.workflows_dir().join(name), text).expect("write a workflow file");
    }

    async fn publish(&self, id: &str) {
        let body = serde_json::to_vec(&event(id, EVENT_TYPE)).expect("JSON");
        self.broker
            .publish(&format!("{}.events", self.prefix), EVENT_TYPE, &body)
            .await;
    }

    /// One series from `/metrics` (0 when absent).
    async fn metric(&self, series: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.process.port);
        let (status, text) = http_get(&url).await.expect("/metrics answers");
        assert_eq!(status, 200, "/metrics status");
        metric_value(&text, series).unwrap_or(0.0)
    }

    /// SIGHUP, then waits until the reload counters read `ok` / `error`.
    async fn reload(&mut self, ok: f64, error: f64) {
        self.process.signal("HUP");
        let what = format!("{RELOADS_OK} == {ok} and {RELOADS_ERROR} == {error}");
        wait_until(&what, async || {
            self.process.assert_running();
            self.metric(RELOADS_OK).await == ok && self.metric(RELOADS_ERROR).await == error
        })
        .await;
    }

    async fn queue_len(&self, suffix: &str) -> u32 {
        self.broker
            .queue_len(&format!("{}.{suffix}", self.prefix))
            .await
    }

    /// SIGTERM, a clean exit, and the topology deleted.
    async fn finish(mut self) {
        self.process.signal("TERM");
        let status = self.process.wait_exit(DEADLINE).await;
        assert_eq!(status.code(), Some(0), "{}", self.process.logs());
        if let Some(guard) = self.guard.take() {
            guard.delete().await;
        }
    }
}

/// The event ids the fake received on `path`.
fn received(fake: &FakeServer, path: &str) -> Vec<String> {
    fake.inspect(|requests| {
        requests
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.json()["event"].as_str().unwrap_or("").to_owned())
            .collect()
    })
}

fn got(fake: &FakeServer, path: &str, id: &str) -> bool {
    received(fake, path).iter().any(|e| e == id)
}

fn log_line<'a>(logs: &'a str, needles: &[&str]) -> Option<&'a str> {
    logs.lines()
        .find(|line| needles.iter().all(|n| line.contains(n)))
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_loads_the_new_workflow_set() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let url = |path: &str| format!("{}{path}", fake.url());
    let mut run = Running::start("reload-ok", &file(&[workflow("wf-main", &url("/a"))]), "").await;
    assert_eq!(run.metric(LOADED).await, 1.0);

    run.publish("evt_before").await;
    wait_until("/a to receive evt_before", async || {
        got(&fake, "/a", "evt_before")
    })
    .await;

    // Same workflow id, another URL; and a second workflow in a new file.
    run.write("workflows.yaml", &file(&[workflow("wf-main", &url("/b"))]));
    run.write("c.yaml", &file(&[workflow("wf-c", &url("/c"))]));
    run.reload(1.0, 0.0).await;
    assert_eq!(run.metric(LOADED).await, 2.0);
    // The counter moves before the log line is written: wait for the line.
    wait_until("a log line for the reload", async || {
        log_line(&run.process.logs(), &["workflows reloaded", "2"]).is_some()
    })
    .await;

    run.publish("evt_after").await;
    wait_until("/b and /c to receive evt_after", async || {
        got(&fake, "/b", "evt_after") && got(&fake, "/c", "evt_after")
    })
    .await;
    assert_eq!(received(&fake, "/a"), ["evt_before"], "/a after the reload");
    assert_eq!(received(&fake, "/b"), ["evt_after"]);
    assert_eq!(received(&fake, "/c"), ["evt_after"]);
    assert_eq!(run.queue_len("dead-letter").await, 0);
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_an_invalid_set_keeps_the_old_one() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let url = |path: &str| format!("{}{path}", fake.url());
    let mut run = Running::start("reload-bad", &file(&[workflow("wf-main", &url("/a"))]), "").await;

    // A workflow on an event type that does not exist, next to a valid change that must not be
    // applied either: the set is refused as a whole.
    run.write("workflows.yaml", &file(&[workflow("wf-main", &url("/b"))]));
    let unknown = run.workflows_dir().join("unknown-type.yaml");
    std::fs::write(
        &unknown,
        file(&[workflow("wf-exploded", &url("/x"))]).replace(EVENT_TYPE, "Gameplay.Exploded"),
    )
    .expect("write the broken file");
    run.reload(0.0, 1.0).await;
    assert_eq!(run.metric(LOADED).await, 1.0, "workflows_loaded unchanged");
    // The counter moves before the log line is written: wait for the line.
    let words = ["reload refused", path_text(&unknown), "Gameplay.Exploded"];
    wait_until("a log line naming the file and the problem", async || {
        log_line(&run.process.logs(), &words).is_some()
    })
    .await;
    let logs = run.process.logs();
    let line = log_line(&logs, &words)
        .unwrap_or_else(|| panic!("no log line names the file and the problem:\n{logs}"));
    assert!(line.contains("ERROR"), "{line}");

    run.publish("evt_1").await;
    wait_until("/a to receive evt_1 (the old set)", async || {
        got(&fake, "/a", "evt_1")
    })
    .await;

    // A YAML syntax error.
    std::fs::remove_file(&unknown).expect("remove the broken file");
    let syntax = run.workflows_dir().join("syntax.yaml");
    std::fs::write(
        &syntax,
        "workflows:\n  - id: wf-broken\n    trigger: { event: [\n",
    )
    .expect("write the broken file");
    run.reload(0.0, 2.0).await;
    assert_eq!(run.metric(LOADED).await, 1.0, "workflows_loaded unchanged");
    wait_until(
        "a log line naming the file with the syntax error",
        async || log_line(&run.process.logs(), &["reload refused", path_text(&syntax)]).is_some(),
    )
    .await;

    run.publish("evt_2").await;
    wait_until("/a to receive evt_2 (the old set)", async || {
        got(&fake, "/a", "evt_2")
    })
    .await;
    assert_eq!(received(&fake, "/a"), ["evt_1", "evt_2"]);
    assert!(received(&fake, "/b").is_empty(), "the refused set ran");
    assert!(received(&fake, "/x").is_empty(), "the refused set ran");

    // Fixed: the next SIGHUP loads it.
    std::fs::remove_file(&syntax).expect("remove the broken file");
    run.reload(1.0, 2.0).await;
    run.publish("evt_3").await;
    wait_until("/b to receive evt_3 (the new set)", async || {
        got(&fake, "/b", "evt_3")
    })
    .await;
    assert_eq!(received(&fake, "/a"), ["evt_1", "evt_2"]);
    assert_eq!(run.queue_len("dead-letter").await, 0);
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_neither_drops_nor_repeats_work_in_flight() {
    const EVENTS: usize = 20;
    let fake = FakeServer::start(|_| Reply::status(200).after(Duration::from_millis(500))).await;
    let url = format!("{}/slow", fake.url());
    let workflows = file(&[workflow("wf-slow", &url)]);
    // Two at a time: the 20 calls take about 5 s, so the reload lands in the middle.
    let mut run = Running::start("reload-inflight", &workflows, "worker: { concurrency: 2 }").await;

    for i in 0..EVENTS {
        run.publish(&format!("evt_{i:02}")).await;
    }
    wait_until("requests in flight at the fake", async || {
        fake.in_flight() >= 1
    })
    .await;
    // Same semantics, different bytes.
    run.write(
        "workflows.yaml",
        &format!("# edited while requests are in flight\n{workflows}"),
    );
    run.reload(1.0, 0.0).await;
    let at_reload = fake.count();
    assert!(
        at_reload < EVENTS,
        "the reload landed after all {EVENTS} requests had arrived; the test proves nothing"
    );

    wait_until_within(
        "every request answered",
        Duration::from_secs(60),
        async || fake.completed() >= EVENTS,
    )
    .await;
    // Nothing left anywhere that could still produce a request.
    let success = &http_attempts("success");
    wait_until("the worker to settle", async || {
        run.metric(success).await == EVENTS as f64
            && run
                .metric("switchyard_actions_in_flight{connector=\"http\"}")
                .await
                == 0.0
            && run.queue_len("router").await == 0
            && run.queue_len("action.http").await == 0
    })
    .await;

    let requests: Vec<Recorded> = fake.requests();
    let keys: BTreeSet<String> = requests
        .iter()
        .map(|r| r.header("idempotency-key").unwrap_or("").to_owned())
        .collect();
    let events: BTreeSet<String> = requests
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(requests.len(), EVENTS, "total requests");
    assert_eq!(keys.len(), EVENTS, "distinct Idempotency-Keys: {keys:?}");
    assert!(!keys.contains(""), "a request without Idempotency-Key");
    assert_eq!(events.len(), EVENTS, "distinct events: {events:?}");
    assert_eq!(run.metric(LOADED).await, 1.0);
    assert_eq!(run.queue_len("dead-letter").await, 0, "dead-lettered");
    for outcome in ["retry", "dead"] {
        let series = http_attempts(outcome);
        assert_eq!(run.metric(&series).await, 0.0, "{series}");
    }
    run.finish().await;
}

/// `switchyard reload`, as a runbook runs it in a pod without a shell or `kill`: it finds the
/// service by its --config, signals it, and says whether the new set was loaded or refused.
#[tokio::test(flavor = "multi_thread")]
async fn reload_command_signals_the_service_and_reports_the_result() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let url = |path: &str| format!("{}{path}", fake.url());
    let run = Running::start("reload-cmd", &file(&[workflow("wf-main", &url("/a"))]), "").await;
    let config = run.dir.path().join("switchyard.yaml");
    let listen = format!("127.0.0.1:{}", run.process.port);
    let reload = async || {
        run_switchyard(
            &["reload", "--config", path_text(&config)],
            &[("SWITCHYARD__METRICS__LISTEN", &listen)],
        )
        .await
    };

    run.write("c.yaml", &file(&[workflow("wf-c", &url("/c"))]));
    let ran = reload().await;
    assert_eq!(ran.code, Some(0), "{ran:#?}");
    let pid = run.process.child.id();
    assert!(
        ran.stdout
            .contains(&format!("sent SIGHUP to process {pid}\n")),
        "{ran:#?}"
    );
    assert!(
        ran.stdout.contains("reloaded: 2 workflow(s) loaded"),
        "{ran:#?}"
    );
    // It signalled this service alone: every other process of the machine has another --config.
    assert_eq!(ran.stdout.matches("sent SIGHUP").count(), 1, "{ran:#?}");
    assert_eq!(run.metric(RELOADS_OK).await, 1.0);
    run.publish("evt_after").await;
    wait_until("/c to receive evt_after", async || {
        got(&fake, "/c", "evt_after")
    })
    .await;

    // An invalid set: refused, exit 1, and the previous set keeps running.
    run.write(
        "bad.yaml",
        &file(&[workflow("wf-bad", &url("/x"))]).replace(EVENT_TYPE, "Gameplay.Exploded"),
    );
    let ran = reload().await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(
        ran.stderr.contains("refused the new workflow files"),
        "{ran:#?}"
    );
    assert_eq!(run.metric(RELOADS_ERROR).await, 1.0);
    assert_eq!(run.metric(LOADED).await, 2.0);

    // No service with that configuration: a user error, nothing signalled.
    let elsewhere = run.dir.path().join("other.yaml");
    std::fs::write(&elsewhere, std::fs::read(&config).expect("config")).expect("copy");
    let ran = run_switchyard(&["reload", "--config", path_text(&elsewhere)], &[]).await;
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(
        ran.stderr.contains("no `switchyard run --config"),
        "{ran:#?}"
    );
    assert!(!ran.stdout.contains("sent SIGHUP"), "{ran:#?}");
    run.finish().await;
}
