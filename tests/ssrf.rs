//! Outbound safety (SPEC §6, issue 5) against the real broker: every SSRF form is dead-lettered
//! as `blocked` without reaching the service behind it, redirects are re-checked at each hop,
//! only http and https are spoken, response bodies are read up to `http.max_response_bytes`, and a
//! secret never shows in logs, /metrics, dead-letter records or `dlq`/`test` output.
//!
//! Header injection (CR/LF in a rendered header refuses the request and the fake is never
//! reached) is covered by `templates_that_fail_at_render_time_are_dead_lettered_without_a_call`
//! in tests/delivery.rs.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header::LOCATION};
use serde_json::json;
use support::{
    AfterGet, FakeServer, Harness, Process, Reply, TopologyGuard, event, run_switchyard,
    test_config_yaml, unique_prefix, wait_until, write_workflows_and_secrets,
};
use switchyard::Config;

/// A server on 127.0.0.2 answering every request with a redirect to `to`; counts requests.
struct Redirector {
    url: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Redirector {
    async fn start(to: String) -> Redirector {
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("127.0.0.2 is bindable (Linux routes all of 127.0.0.0/8 to loopback)");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let to = to.clone();
            async move { (StatusCode::FOUND, [(LOCATION, to)]) }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Redirector { url, hits, task }
    }
}

impl Drop for Redirector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_ssrf_form_is_blocked_and_never_reaches_the_fake() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let port = fake.url().rsplit(':').next().expect("port").to_owned();
    // The one allowed destination: a different loopback address, exactly.
    let redirector = Redirector::start(format!("{}/redirected", fake.url())).await;
    // A redirect to a name is checked when the name resolves.
    let to_name = Redirector::start(format!("http://localhost:{port}/redirected-by-name")).await;
    let forms: Vec<(&str, String)> = vec![
        ("loopback", format!("http://127.0.0.1:{port}/loopback")),
        ("localhost", format!("http://localhost:{port}/localhost")),
        ("ipv6_loopback", format!("http://[::1]:{port}/v6")),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
        ),
        ("private", "http://10.0.0.1/internal".to_owned()),
        ("mapped", format!("http://[::ffff:127.0.0.1]:{port}/mapped")),
        ("unspecified", format!("http://0.0.0.0:{port}/unspecified")),
        ("redirect", format!("{}/go", redirector.url)),
        ("redirect_name", format!("{}/go", to_name.url)),
    ];
    let mut workflows = String::from(
        "workflows:\n  - id: ssrf\n    workspace: ws_demo\n    trigger: { event: Gameplay.DataCaptured }\n    actions:\n",
    );
    for (id, url) in &forms {
        workflows.push_str(&format!(
            "      - {{ id: {id}, http: {{ url: \"{url}\", body: '{{\"e\": \"{{{{ event.id }}}}\"}}' }} }}\n"
        ));
    }
    // A scheme other than http/https, rendered from event data (a literal is refused by validate).
    workflows.push_str(
        "      - { id: file, http: { url: \"{{ data.scheme }}:///etc/passwd\", method: GET } }\n",
    );
    // Webhooks go through the same guard.
    workflows.push_str(&format!(
        "webhooks:\n  - {{ id: wh_loop, workspace: ws_demo, url: \"http://127.0.0.1:{port}/wh\", events: [\"*\"] }}\n  - {{ id: wh_file, workspace: ws_demo, url: \"{{{{ data.scheme }}}}:///etc/passwd\", events: [\"*\"] }}\n"
    ));
    let h = Harness::start(
        "ssrf",
        &workflows,
        "http: { allow_networks: [127.0.0.2/32] }\nretry: { quick_attempts: 2, schedule: [1s] }",
        &[],
    )
    .await;
    assert_eq!(h.config.http.allow_networks, ["127.0.0.2/32"]);

    let mut e = event("evt_ssrf_1", "Gameplay.DataCaptured");
    e["data"] = json!({ "scheme": "file" });
    h.publish(&e).await;
    let want = forms.len() + 1 + 2;
    let dead_letter = h.name("dead-letter");
    wait_until("every form dead-lettered", async || {
        h.broker.queue_len(&dead_letter).await as usize >= want
    })
    .await;

    let records = h.broker.take_all(&dead_letter, AfterGet::Ack).await;
    assert_eq!(records.len(), want);
    let by_action: BTreeMap<String, &support::Got> = records
        .iter()
        .map(|r| {
            let action = r.header_str("x-switchyard-action").unwrap_or_default();
            let workflow = r.header_str("x-switchyard-workflow").unwrap_or_default();
            let key = if workflow == "ssrf" { action } else { workflow };
            (key, r)
        })
        .collect();
    for key in forms
        .iter()
        .map(|(id, _)| *id)
        .chain(["file", "wh_loop", "wh_file"])
    {
        let record = by_action
            .get(key)
            .unwrap_or_else(|| panic!("no dead-letter record for {key}: {:?}", by_action.keys()));
        let text = record.headers_text();
        assert_eq!(
            record.header_str("x-switchyard-error-class").as_deref(),
            Some("blocked"),
            "{key}: {text}"
        );
        assert_eq!(
            record.header_int("x-switchyard-attempts"),
            Some(1),
            "{key}: blocked is permanent, never retried: {text}"
        );
    }
    let reason = |key: &str| {
        by_action[key]
            .header_str("x-switchyard-reason")
            .unwrap_or_default()
    };
    assert!(
        reason("localhost").contains("127.0.0.1"),
        "{}",
        reason("localhost")
    );
    assert!(reason("metadata").contains("169.254.169.254"));
    assert!(
        reason("redirect").contains("127.0.0.1"),
        "{}",
        reason("redirect")
    );
    assert!(reason("file").contains("file"), "{}", reason("file"));
    assert!(reason("wh_file").contains("file"), "{}", reason("wh_file"));

    // The allowed hop was taken; the blocked address behind it was never reached.
    assert!(redirector.hits.load(Ordering::SeqCst) >= 1);
    assert!(to_name.hits.load(Ordering::SeqCst) >= 1);
    assert!(
        reason("redirect_name").contains("localhost"),
        "{}",
        reason("redirect_name")
    );
    assert_eq!(
        fake.count(),
        0,
        "nothing reached the fake: {:?}",
        fake.requests()
    );

    let metrics = h.metrics().await;
    let blocked = |connector: &str| {
        support::metric_value(
            &metrics,
            &format!("switchyard_outbound_blocked_total{{connector=\"{connector}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(blocked("http"), (forms.len() + 1) as f64);
    assert_eq!(blocked("webhook"), 2.0);
    assert_eq!(
        support::metric_value(&metrics, &support::http_attempts("retry")).unwrap_or(0.0),
        0.0
    );
    assert_eq!(fake.count(), 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn response_bodies_are_read_only_up_to_max_response_bytes() {
    const HUGE: usize = 8 * 1024 * 1024;
    const CAP: usize = 4096;
    let huge = "x".repeat(HUGE);
    let fake = FakeServer::start(move |r| {
        if r.path == "/big" {
            Reply::text(200, &huge)
        } else {
            Reply::status(200)
        }
    })
    .await;
    let workflows = r#"
workflows:
  - id: big
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - { id: big, http: { url: "@FAKE@/big", method: GET } }
      - id: after
        needs: big
        http:
          url: "@FAKE@/after"
          body: '{"len": {{ steps.big.body | size }}, "status": {{ steps.big.status }}}'
"#
    .replace("@FAKE@", &fake.url());
    let h = Harness::start(
        "bigbody",
        &workflows,
        &format!("http: {{ max_response_bytes: {CAP} }}"),
        &[],
    )
    .await;
    for i in 0..3 {
        h.publish(&event(&format!("evt_big_{i}"), "Gameplay.DataCaptured"))
            .await;
    }
    h.wait_metric(&support::http_attempts("success"), 6.0).await;
    let after: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/after")
        .collect();
    assert_eq!(after.len(), 3);
    for r in &after {
        assert_eq!(
            r.json(),
            json!({ "len": CAP, "status": 200 }),
            "the step output holds the first {CAP} bytes only"
        );
    }
    // Still healthy.
    let ready = format!("http://{}/readyz", h.metrics_addr);
    assert!(matches!(support::http_get(&ready).await, Some((200, _))));
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_known_secret_appears_in_no_log_metric_or_dead_letter_output() {
    let secret = format!("sk_live_{:032x}", rand::random::<u128>());
    let echoed = secret.clone();
    // The remote refuses the key and quotes it back, in the body and in a header.
    let fake = FakeServer::start(move |_| {
        let mut reply = Reply::json(
            401,
            &json!({ "error": format!("The API key {echoed} is not valid"), "key": echoed }),
        );
        reply
            .headers
            .push(("x-echo".into(), format!("key={echoed}")));
        reply
    })
    .await;
    // A port where nothing listens: the transport error must not echo the URL (which holds the
    // secret in its query).
    let closed = support::free_port();
    let workflows = r#"
workflows:
  - id: leak
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - id: echo
        http:
          url: "@FAKE@/v1/contacts?api_key={{ secrets.API_KEY }}"
          headers: { Authorization: "Bearer {{ secrets.API_KEY }}" }
          body: '{"email": "{{ contact.email }}"}'
      - id: refused
        http:
          url: "http://127.0.0.1:@CLOSED@/hook?api_key={{ secrets.API_KEY }}"
          headers: { X-Api-Key: "{{ secrets.API_KEY }}" }
          body: '{"event": "{{ event.id }}"}'
webhooks:
  - id: hook
    workspace: ws_demo
    url: "@FAKE@/wh?token={{ secrets.API_KEY }}"
    events: ["*"]
"#
    .replace("@FAKE@", &fake.url())
    .replace("@CLOSED@", &closed.to_string());

    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = unique_prefix("secret");
    write_workflows_and_secrets(dir.path(), &workflows, &[("API_KEY", &secret)]);
    // The most talkative level switchyard has, for every module.
    let yaml = test_config_yaml(
        &prefix,
        dir.path(),
        "log: { level: debug, format: json }\nretry: { quick_attempts: 1, schedule: [1s] }",
    );
    let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let config_path = dir.path().join("switchyard.yaml");
    std::fs::write(&config_path, &yaml).expect("write config");
    let guard = TopologyGuard::new(&config);
    let mut service = Process::spawn(&config_path, dir.path(), "service");
    service.wait_ready(Duration::from_secs(30)).await;

    let h_broker = support::Broker::connect().await;
    let e = event("evt_secret_1", "Gameplay.DataCaptured");
    h_broker
        .publish(
            &format!("{prefix}.events"),
            "Gameplay.DataCaptured",
            &serde_json::to_vec(&e).expect("JSON"),
        )
        .await;
    let dead_letter = format!("{prefix}.dead-letter");
    wait_until("three actions dead-lettered", async || {
        service.assert_running();
        h_broker.queue_len(&dead_letter).await >= 3
    })
    .await;
    // The secret was really used.
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.header("authorization") == Some(&format!("Bearer {secret}")))
    );

    // `dlq list` and `dlq show`, as an operator would read them.
    let config_arg = config_path.to_str().expect("utf-8");
    let list = run_switchyard(&["dlq", "list", "--config", config_arg], &[]).await;
    let show = run_switchyard(
        &["dlq", "show", "evt_secret_1", "--config", config_arg],
        &[],
    )
    .await;
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    assert!(list.stdout.contains("echo"), "{}", list.stdout);
    // `test` prints the exact requests (secrets redacted).
    let event_path = dir.path().join("event.json");
    std::fs::write(&event_path, serde_json::to_vec(&e).expect("JSON")).expect("event file");
    let dry = run_switchyard(
        &[
            "test",
            "--event",
            event_path.to_str().expect("utf-8"),
            "--config",
            config_arg,
        ],
        &[],
    )
    .await;
    assert_eq!(dry.code, Some(0), "{}\n{}", dry.stdout, dry.stderr);
    assert!(dry.stdout.contains("/v1/contacts"), "{}", dry.stdout);

    let records = h_broker.take_all(&dead_letter, AfterGet::Ack).await;
    assert_eq!(records.len(), 3);
    let metrics = support::http_get(&format!("http://127.0.0.1:{}/metrics", service.port))
        .await
        .expect("/metrics")
        .1;
    service.signal("TERM");
    service.wait_exit(Duration::from_secs(20)).await;
    let logs = service.logs();
    assert!(
        logs.contains("dead-lettered") && logs.contains("401"),
        "the log tells of the failures (so the grep below means something):\n{logs}"
    );

    let mut outputs: Vec<(String, String)> = vec![
        ("the log".into(), logs),
        ("/metrics".into(), metrics),
        ("dlq list".into(), format!("{}{}", list.stdout, list.stderr)),
        ("dlq show".into(), format!("{}{}", show.stdout, show.stderr)),
        (
            "switchyard test".into(),
            format!("{}{}", dry.stdout, dry.stderr),
        ),
    ];
    for r in &records {
        outputs.push((
            format!(
                "dead-letter record {}",
                r.header_str("x-switchyard-action").unwrap_or_default()
            ),
            format!("{}\n{}", r.headers_text(), String::from_utf8_lossy(&r.body)),
        ));
    }
    for (what, text) in &outputs {
        assert!(
            !text.contains(&secret),
            "the secret appears in {what}:\n{}",
            text.lines()
                .filter(|l| l.contains(&secret))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The records still say what went wrong.
    let echo = records
        .iter()
        .find(|r| r.header_str("x-switchyard-action").as_deref() == Some("echo"))
        .expect("echo record");
    assert_eq!(echo.header_int("x-switchyard-last-status"), Some(401));
    let refused = records
        .iter()
        .find(|r| r.header_str("x-switchyard-action").as_deref() == Some("refused"))
        .expect("refused record");
    let reason = refused
        .header_str("x-switchyard-reason")
        .unwrap_or_default();
    assert!(reason.contains("127.0.0.1"), "{reason}");
    guard.delete().await;
}
