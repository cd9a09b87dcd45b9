//! The command line (SPEC §4) run as users run it: the real binary, its exit codes and output,
//! and a SIGTERM with work in flight.

mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{
    Broker, DEADLINE, FakeServer, Process, Reply, TopologyGuard, VENDOR_EXAMPLES_ON, event,
    http_get, posting_workflow, run_switchyard, switchyard_command, test_config_yaml,
    unique_prefix, wait_until, write_workflows_and_secrets,
};
use switchyard::Config;

const EXAMPLE_EVENT_FILE: &str = "examples/events/data-captured.json";

/// With the vendor examples (config/examples/) switched on, as a user would once their secrets
/// are set.
#[tokio::test(flavor = "multi_thread")]
async fn validate_accepts_the_repository_config() {
    let ran = run_switchyard(
        &["validate", "--config", "config/switchyard.yaml"],
        &[("SWITCHYARD__WORKFLOWS__PATHS", VENDOR_EXAMPLES_ON)],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(
        ran.stdout
            .contains("ok: 7 workflow(s), 0 webhook(s), 3 connection(s)"),
        "names what it loaded: {ran:?}"
    );
    assert!(!ran.stdout.contains("error"), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_reports_every_broken_workflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_workflows_and_secrets(dir.path(), "", &[]);
    let http = |id: &str, body: &str| {
        format!(
            "      - id: {id}\n        http: {{ url: \"https://api.example.com/{id}\", body: '{body}' }}\n"
        )
    };
    let workflow = |id: &str, event: &str, actions: &str| {
        format!(
            "workflows:\n  - id: {id}\n    workspace: ws_demo\n    trigger: {{ event: {event} }}\n    actions:\n{actions}"
        )
    };
    let files = [
        (
            "unknown-type.yaml",
            workflow("wf-unknown-type", "Gameplay.Exploded", &http("post", "{}")),
        ),
        (
            "cycle.yaml",
            workflow(
                "wf-cycle",
                "Gameplay.DataCaptured",
                &format!(
                    "{}        needs: b\n{}        needs: a\n",
                    http("a", "{}"),
                    http("b", "{}")
                ),
            ),
        ),
        (
            "unknown-needs.yaml",
            workflow(
                "wf-unknown-needs",
                "Gameplay.DataCaptured",
                &format!("{}        needs: ghost\n", http("x", "{}")),
            ),
        ),
        (
            "steps.yaml",
            workflow(
                "wf-steps",
                "Gameplay.DataCaptured",
                &format!(
                    "{}{}",
                    http("a", "{}"),
                    http("b", r#"{"lead": "{{ steps.a.id }}"}"#)
                ),
            ),
        ),
        (
            "typo.yaml",
            workflow(
                "wf-typo",
                "Gameplay.DataCaptured",
                &http("post", r#"{"email": "{{ contact.emial }}"}"#),
            ),
        ),
        (
            "secret-body.yaml",
            workflow(
                "wf-secret",
                "Gameplay.DataCaptured",
                &http("post", r#"{"token": "{{ secrets.API_TOKEN }}"}"#),
            ),
        ),
    ];
    let workflows_dir = dir.path().join("workflows");
    std::fs::remove_file(workflows_dir.join("workflows.yaml")).expect("remove the empty file");
    for (name, text) in &files {
        std::fs::write(workflows_dir.join(name), text).expect("write a workflow file");
    }
    let config = dir.path().join("switchyard.yaml");
    std::fs::write(
        &config,
        test_config_yaml("t-validate", dir.path(), "log: { format: json }"),
    )
    .expect("write config");

    let ran = run_switchyard(
        &["validate", "--config", config.to_str().expect("utf-8")],
        &[],
    )
    .await;
    assert_eq!(ran.code, Some(1), "{ran:?}");
    // (file, workflow, action, what the message must mention)
    let expected: &[(&str, &str, Option<&[&str]>, &str)] = &[
        (
            "unknown-type.yaml",
            "wf-unknown-type",
            None,
            "Gameplay.Exploded",
        ),
        ("cycle.yaml", "wf-cycle", Some(&["a", "b"]), "cycle"),
        (
            "unknown-needs.yaml",
            "wf-unknown-needs",
            Some(&["x"]),
            "ghost",
        ),
        ("steps.yaml", "wf-steps", Some(&["b"]), "steps.a"),
        ("typo.yaml", "wf-typo", Some(&["post"]), "contact.emial"),
        (
            "secret-body.yaml",
            "wf-secret",
            Some(&["post"]),
            "secrets.API_TOKEN",
        ),
    ];
    for (file, workflow, actions, needle) in expected {
        let path = workflows_dir.join(file);
        let line = ran
            .stdout
            .lines()
            .find(|l| l.contains(path.to_str().expect("utf-8")) && l.contains(needle))
            .unwrap_or_else(|| panic!("no problem about {needle} in {file}:\n{}", ran.stdout));
        assert!(line.starts_with("error"), "{line}");
        assert!(line.contains(&format!("workflow {workflow}")), "{line}");
        if let Some(actions) = actions {
            assert!(
                actions
                    .iter()
                    .any(|a| line.contains(&format!("action {a}:"))),
                "{line} names one of the actions {actions:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_with_a_missing_config_file_exits_1() {
    let ran = run_switchyard(&["validate", "--config", "/nonexistent.yaml"], &[]).await;
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("/nonexistent.yaml"), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_command_shows_the_request_with_secrets_redacted() {
    let secret = format!("pat-na1-{:016x}", rand::random::<u64>());
    let ran = run_switchyard(
        &[
            "test",
            "--event",
            EXAMPLE_EVENT_FILE,
            "--config",
            "config/switchyard.yaml",
        ],
        &[
            ("SWITCHYARD_SECRET_HUBSPOT_TOKEN", &secret),
            ("SWITCHYARD__WORKFLOWS__PATHS", VENDOR_EXAMPLES_ON),
        ],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let out = &ran.stdout;
    assert!(!out.contains(&secret), "the secret is printed:\n{out}");
    assert!(
        !ran.stderr.contains(&secret),
        "the secret is logged:\n{}",
        ran.stderr
    );
    for needle in [
        "workflow hubspot-lead",
        "POST https://api.hubapi.com/crm/v3/objects/contacts",
        "authorization: Bearer [redacted]",
        "content-type: application/json",
        "idempotency-key: act_",
        "ana@example.com",
        "Komo - Spin to Win",
        "workflow demo-sink",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    assert!(!out.contains("slack-prize"), "Prize.Won only:\n{out}");
    // The HubSpot body is the rendered JSON, its trailing comma gone.
    let body = hubspot_body(out);
    assert_eq!(
        body,
        serde_json::json!({ "properties": {
            "email": "ana@example.com",
            "firstname": "Ana",
            "lastname": "Silva",
            "lead_source": "Komo - Spin to Win",
            "komo_score": "120",
        }})
    );
}

/// As shipped, the example configuration loads the demo alone: a first `make publish` must give
/// one delivery to the demo sink and no dead letters (the vendor examples need secrets), and the
/// demo's loopback URL draws no "blocked" warning, since `http.allow_networks` covers it.
#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_configuration_loads_the_demo_alone_without_warnings() {
    let ran = run_switchyard(&["validate", "--config", "config/switchyard.yaml"], &[]).await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(
        ran.stdout.trim(),
        "ok: 1 workflow(s), 0 webhook(s), 0 connection(s)",
        "{ran:?}"
    );
    assert!(!ran.stdout.contains("blocked"), "{ran:?}");
}

/// The first JSON document printed after `workflow hubspot-lead`.
fn hubspot_body(out: &str) -> serde_json::Value {
    let section = &out[out.find("workflow hubspot-lead").expect("hubspot section")..];
    let start = section.find("\n    {").expect("a body") + 1;
    let mut stream =
        serde_json::Deserializer::from_str(&section[start..]).into_iter::<serde_json::Value>();
    stream
        .next()
        .expect("a JSON body")
        .unwrap_or_else(|e| panic!("the printed body is not JSON ({e}):\n{section}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_to_an_unreachable_broker_exits_2() {
    let ran = run_switchyard(
        &[
            "publish",
            "--event",
            EXAMPLE_EVENT_FILE,
            "--config",
            "config/switchyard.yaml",
        ],
        &[(
            "SWITCHYARD__AMQP__URL",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        )],
    )
    .await;
    // Names the broker.
    ran.assert_broker_unreachable("127.0.0.1:1");
}

/// A TCP listener that accepts connections, holds them open and never says a word: a wrong port,
/// a wedged broker. Counts the connections it accepted.
struct SilentListener {
    url: String,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentListener {
    async fn start() -> SilentListener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a silent listener");
        let port = listener.local_addr().expect("its address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        SilentListener {
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_against_a_broker_that_never_answers_exits_2_after_connect_timeout() {
    let silent = SilentListener::start().await;
    let ran = run_switchyard(
        &["topology", "--config", "config/switchyard.yaml"],
        &[
            ("SWITCHYARD__AMQP__URL", &silent.url),
            ("SWITCHYARD__AMQP__CONNECT_TIMEOUT", "1s"),
        ],
    )
    .await;
    // Says what it waited for.
    ran.assert_broker_unreachable("no answer within 1s");
    assert_eq!(silent.accepted(), 1, "it did reach the listener");
}

/// The service keeps trying a broker that accepts and never answers, says why, is not ready, and
/// a SIGTERM while it waits on a connection stops it at once (not after amqp.connect_timeout).
#[tokio::test(flavor = "multi_thread")]
async fn the_service_retries_a_broker_that_never_answers_and_stops_while_connecting() {
    let silent = SilentListener::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_workflows_and_secrets(dir.path(), "workflows: []\n", &[]);
    let config_path = dir.path().join("switchyard.yaml");
    let write = |timeout: &str| {
        let yaml = test_config_yaml(
            &unique_prefix("silent"),
            dir.path(),
            &format!(
                "amqp: {{ url: '{}', connect_timeout: {timeout} }}\nlog: {{ level: info }}",
                silent.url
            ),
        );
        std::fs::write(&config_path, yaml).expect("write config");
    };

    // A short timeout: it gives up on each attempt, says why, and tries again.
    write("1s");
    let mut service = Process::spawn(&config_path, dir.path(), "short");
    let readyz = format!("http://127.0.0.1:{}/readyz", service.port);
    wait_until(
        "a second connection attempt after a timed-out one",
        async || {
            service.assert_running();
            silent.accepted() >= 2 && service.logs().contains("no answer within 1s")
        },
    )
    .await;
    let (status, _) = http_get(&readyz).await.expect("/readyz answers");
    assert_eq!(status, 503, "not ready without a broker");
    service.signal("TERM");
    assert!(service.wait_exit(DEADLINE).await.success());

    // A long one: the SIGTERM lands while it waits on the connection.
    write("10m");
    let before = silent.accepted();
    let mut service = Process::spawn(&config_path, dir.path(), "long");
    wait_until("a connection attempt", async || {
        service.assert_running();
        silent.accepted() > before
    })
    .await;
    service.signal("TERM");
    let status = service.wait_exit(DEADLINE).await;
    assert!(status.success(), "{status}:\n{}", service.logs());
}

/// Kills the child if the test ends early.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_work_and_loses_nothing() {
    const EVENTS: usize = 20;
    let hold = Duration::from_secs(1);
    let fake = FakeServer::start(move |_| Reply::status(200).after(hold)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let workflows = r#"
workflows:
  - id: slow
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - { id: post, http: { url: "@FAKE@/slow", body: '{"event": "{{ event.id }}"}' } }
"#
    .replace("@FAKE@", &fake.url());
    write_workflows_and_secrets(dir.path(), &workflows, &[]);
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("address").port()
    };
    let prefix = unique_prefix("sigterm");
    let grace = Duration::from_secs(5);
    let yaml = test_config_yaml(
        &prefix,
        dir.path(),
        &format!(
            "metrics: {{ listen: '127.0.0.1:{port}' }}\n\
             worker: {{ concurrency: 4 }}\n\
             shutdown_grace: 5s\n\
             log: {{ format: json, level: info }}\n"
        ),
    );
    let config = Config::from_yaml(&yaml).expect("valid config");
    let guard = TopologyGuard::new(&config);
    let config_path = dir.path().join("switchyard.yaml");
    std::fs::write(&config_path, &yaml).expect("write config");
    let stdout_path = dir.path().join("stdout.log");
    let stderr_path = dir.path().join("stderr.log");
    let child = switchyard_command(
        &["run", "--config", config_path.to_str().expect("utf-8")],
        &[],
    )
    .stdout(Stdio::from(
        File::create(&stdout_path).expect("stdout file"),
    ))
    .stderr(Stdio::from(
        File::create(&stderr_path).expect("stderr file"),
    ))
    .spawn()
    .expect("start switchyard run");
    let mut child = ChildGuard(child);

    let ready = format!("http://127.0.0.1:{port}/readyz");
    wait_until("switchyard run to be ready", async || {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "switchyard run exited early ({status}):\n{}",
                read(&stderr_path)
            );
        }
        matches!(http_get(&ready).await, Some((200, _)))
    })
    .await;

    let broker = Broker::connect().await;
    let events = format!("{prefix}.events");
    for i in 0..EVENTS {
        let e = event(&format!("evt_term_{i:02}"), "Gameplay.DataCaptured");
        let body = serde_json::to_vec(&e).expect("JSON");
        broker
            .publish(&events, "Gameplay.DataCaptured", &body)
            .await;
    }
    wait_until("the first request to reach the fake", async || {
        fake.count() >= 1
    })
    .await;

    let pid = child.0.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid}");
    let signalled = Instant::now();
    let margin = Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("poll the child") {
            break status;
        }
        assert!(
            signalled.elapsed() < grace + margin,
            "still running {:?} after SIGTERM:\n{}",
            grace + margin,
            read(&stderr_path)
        );
        tokio::time::sleep(support::POLL).await;
    };
    let took = signalled.elapsed();
    let logs = read(&stderr_path);
    assert_eq!(status.code(), Some(0), "exit status {status}:\n{logs}");

    let received = fake.count();
    let answered = fake.completed();
    assert!(received >= 1);
    assert_eq!(
        answered, received,
        "every request that reached the fake got its answer before the exit"
    );
    let delivered: BTreeSet<String> = fake
        .requests()
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap_or("").to_owned())
        .collect();
    // The broker hands the unacked prefetch back to the queue after the connection closes, a
    // moment after the process exits; wait for it to show rather than read the depth once.
    let delivered_count = delivered.len();
    let settle_by = Instant::now() + support::DEADLINE;
    let remaining = loop {
        let remaining = broker.queue_len(&format!("{prefix}.action.http")).await
            + broker.queue_len(&format!("{prefix}.router")).await;
        if delivered_count + remaining as usize >= EVENTS || Instant::now() > settle_by {
            break remaining;
        }
        tokio::time::sleep(support::POLL).await;
    };
    assert!(
        delivered_count + remaining as usize >= EVENTS,
        "lost events: {delivered_count} delivered + {remaining} still queued < {EVENTS} (exit after {took:?})\n{logs}"
    );
    assert!(
        remaining >= 1,
        "after SIGTERM the service stops consuming: all {EVENTS} were processed ({took:?})"
    );
    assert_eq!(
        broker.queue_len(&format!("{prefix}.dead-letter")).await,
        0,
        "{logs}"
    );
    assert!(logs.contains("draining in-flight work"), "{logs}");
    assert!(
        !logs.contains("\"level\":\"ERROR\""),
        "a clean shutdown logs no error:\n{logs}"
    );
    guard.delete().await;
}

/// Issue 11: `switchyard run … 2>&1 | head -c 200`, `head` exits, events keep coming. A log call
/// used to panic the task that made it (the fmt layer reported its failed write with `eprintln!`,
/// which panics on a closed stderr): actions were called but never acked, and SIGTERM no longer
/// stopped the process. Now everything published is delivered and acked, and SIGTERM exits
/// cleanly within the grace period.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_log_pipe_never_stops_delivery_or_shutdown() {
    const EVENTS: usize = 20;
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let workflows = posting_workflow("logged", &format!("{}/logged", fake.url()));
    write_workflows_and_secrets(dir.path(), &workflows, &[]);
    let prefix = unique_prefix("logpipe");
    let grace = Duration::from_secs(5);
    // Debug: every event and action logs, so every one meets the closed pipe.
    let yaml = test_config_yaml(
        &prefix,
        dir.path(),
        "log: { format: json, level: debug }\nshutdown_grace: 5s\n",
    );
    let config = Config::from_yaml(&yaml).expect("valid config");
    let guard = TopologyGuard::new(&config);
    let config_path = dir.path().join("switchyard.yaml");
    std::fs::write(&config_path, &yaml).expect("write config");
    let (command, port) = Process::run_command(&config_path);
    let (mut service, head) = Process::start_into_closing_pipe(command, port, 200);
    service.wait_ready(DEADLINE).await;
    wait_until("the reader to close the log pipe", async || {
        head.is_finished()
    })
    .await;
    let read = head.join().expect("the reader thread");
    assert_eq!(read.len(), 200, "the service logged before the pipe closed");

    let broker = Broker::connect().await;
    let events = format!("{prefix}.events");
    for i in 0..EVENTS {
        let e = event(&format!("evt_pipe_{i:02}"), "Gameplay.DataCaptured");
        let body = serde_json::to_vec(&e).expect("JSON");
        broker
            .publish(&events, "Gameplay.DataCaptured", &body)
            .await;
    }
    wait_until("every event to reach the fake", async || {
        fake.events().len() == EVENTS
    })
    .await;
    service.assert_running();

    service.signal("TERM");
    let status = service.wait_exit(grace + Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    // Anything delivered but not acked would be back in its queue once the connection closed.
    for queue in ["router", "action.http", "dead-letter", "events.rejected"] {
        let queue = format!("{prefix}.{queue}");
        assert_eq!(broker.queue_len(&queue).await, 0, "{queue}");
    }
    assert_eq!(
        fake.count(),
        EVENTS,
        "each action called once: acked, never redelivered"
    );
    guard.delete().await;
}
