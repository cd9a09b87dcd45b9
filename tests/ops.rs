//! The operations files (issue 6) against the real service and a real Prometheus:
//!
//! - every metric that the Grafana dashboard (`deploy/grafana/switchyard.json`) and the alert rules
//!   (`deploy/prometheus/alerts.yml`) use exists in the service's real `/metrics`, after some traffic;
//! - Debian's `prometheus` binary, started on loopback, scrapes a running switchyard, and its HTTP API
//!   returns the ingested series; it also evaluates every alert rule without an error;
//! - the Helm chart (`helm/switchyard/`) is checked without helm: each template parses as YAML once
//!   its template actions are stripped, every `.Values.…` it uses exists in `values.yaml`, and every
//!   Deployment has probes and a securityContext;
//! - the compose file, the Prometheus and Grafana files it mounts, the alert annotations and the
//!   runbook sections fit together.
//!
//! `promtool check rules` and `promtool test rules` run in `deploy/prometheus/check.sh` (also from
//! `make test`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use support::{FakeServer, Harness, Reply, event, free_port, http_get, repo_root, wait_until};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A repository file as text; fails the test with the path when it cannot be read.
fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document of a text (a file may hold several, separated by `---`).
fn yaml_documents(text: &str) -> Result<Vec<Yaml>, serde_yaml_ng::Error> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(Yaml::deserialize)
        .collect()
}

/// One YAML file, parsed; fails the test with the path and the parser's message.
fn yaml_file(relative: &str) -> Yaml {
    serde_yaml_ng::from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

/// `value[a][b]…` for mapping keys, `None` as soon as one is missing.
fn get<'a>(value: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

/// Every `switchyard_…` metric name in a text: `switchyard_` followed by lowercase letters and
/// underscores, not preceded by a letter, digit or underscore.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("switchyard_") {
        let start = from + found;
        let mut end = start + "switchyard_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let bounded =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if bounded && end > start + "switchyard_".len() {
            names.insert(text[start..end].trim_end_matches('_').to_owned());
        }
        from = end;
    }
    names
}

/// What a Prometheus text exposition holds: the names of its samples, and each family's type.
struct Exposition {
    /// `switchyard_events_received_total`, `switchyard_action_duration_seconds_bucket`…
    samples: BTreeSet<String>,
    /// `switchyard_action_duration_seconds` → `histogram`…
    types: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut samples = BTreeSet::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                samples.insert(name.to_owned());
            }
        }
        Exposition { samples, types }
    }

    /// A name used in a query exists: as a sample name, or as a histogram's family name (used in
    /// descriptions; queries use its `_bucket`, `_sum` and `_count` series, which are samples).
    fn has(&self, name: &str) -> bool {
        if self.samples.contains(name) {
            return true;
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        self.types.get(family).is_some_and(|t| t == "histogram")
    }
}

/// Workflows for the traffic tests: one action that succeeds, one that is dead-lettered (a 400).
const TRAFFIC_WORKFLOWS: &str = r#"
workflows:
  - id: ops-traffic
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - { id: ok, http: { url: "@FAKE@/ok", body: '{"event": "{{ event.id }}"}' } }
      - { id: refused, http: { url: "@FAKE@/refused", body: '{"event": "{{ event.id }}"}' } }
"#;

/// Starts the service with [`TRAFFIC_WORKFLOWS`], then sends it an event that yields one success
/// and one dead letter, an event that matches nothing, and one that is rejected; waits until the
/// metrics show all of it and the queue depths have been read once.
async fn service_with_traffic(name: &str) -> (Harness, FakeServer) {
    let fake = FakeServer::start(|request| {
        if request.path == "/ok" {
            Reply::json(200, &serde_json::json!({ "ok": true }))
        } else {
            Reply::json(400, &serde_json::json!({ "error": "refused by the test" }))
        }
    })
    .await;
    let workflows = TRAFFIC_WORKFLOWS.replace("@FAKE@", &fake.url());
    let h = Harness::start(name, &workflows, "", &[]).await;
    h.publish(&event("evt_ops_1", "Gameplay.DataCaptured"))
        .await;
    h.publish(&event("evt_ops_2", "Site.Published")).await;
    h.publish_raw("Gameplay.DataCaptured", b"not json").await;
    h.wait_metric(&support::http_attempts("success"), 1.0).await;
    h.wait_metric(&support::http_attempts("dead"), 1.0).await;
    h.wait_metric(
        "switchyard_events_rejected_total{reason=\"invalid_json\"}",
        1.0,
    )
    .await;
    wait_until("switchyard_queue_messages to be reported", async || {
        h.metrics().await.contains("switchyard_queue_messages{")
    })
    .await;
    // The destination gauges (SPEC §10) are refreshed once a second.
    wait_until("the destination gauges to be reported", async || {
        let text = h.metrics().await;
        text.contains("switchyard_destination_state{") && text.contains("switchyard_held_actions{")
    })
    .await;
    (h, fake)
}

// ---------------------------------------------------------------------------------------------
// (a) The dashboard and the rules use only metrics the service exports

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alert_metrics_exist_in_the_real_metrics_output() {
    let dashboard = read("deploy/grafana/switchyard.json");
    let alerts = read("deploy/prometheus/alerts.yml");
    let (h, _fake) = service_with_traffic("ops-names").await;
    let exposition = Exposition::parse(&h.metrics().await);

    for (file, text, at_least) in [
        ("deploy/grafana/switchyard.json", &dashboard, 15),
        ("deploy/prometheus/alerts.yml", &alerts, 7),
    ] {
        let used = metric_names(text);
        assert!(
            used.len() >= at_least,
            "{file}: only {} metric names found ({used:?}); is the name extraction broken?",
            used.len()
        );
        let missing: Vec<&String> = used.iter().filter(|n| !exposition.has(n)).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics that /metrics does not export: {missing:?}\nexported samples: {:?}",
            exposition.samples
        );
    }

    // The dashboard shows every metric of SPEC §7 (and the unmatched-events counter).
    let shown = metric_names(&dashboard);
    for family in [
        "switchyard_events_received_total",
        "switchyard_events_rejected_total",
        "switchyard_events_unmatched_total",
        "switchyard_actions_enqueued_total",
        "switchyard_action_attempts_total",
        "switchyard_action_duration_seconds_bucket",
        "switchyard_delivery_latency_seconds_bucket",
        "switchyard_dead_lettered_total",
        "switchyard_actions_in_flight",
        "switchyard_queue_messages",
        "switchyard_broker_connected",
        "switchyard_workflows_loaded",
        "switchyard_config_reloads_total",
        "switchyard_build_info",
        "switchyard_breakers_open",
        "switchyard_outbound_blocked_total",
        "switchyard_history_rows_written_total",
        "switchyard_history_dropped_total",
        "switchyard_history_batch_seconds_bucket",
        "switchyard_destination_state",
        "switchyard_held_actions",
        "switchyard_destination_error_ratio",
    ] {
        assert!(
            shown.contains(family),
            "the dashboard has no panel using {family}"
        );
    }
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// (b) A real Prometheus scrapes a running switchyard

/// The Debian package's binary: `$PROMETHEUS_BIN`, else `prometheus` on the PATH, else /usr/bin.
fn prometheus_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("PROMETHEUS_BIN") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
}

/// `GET /api/v1/<what>?query=…` (or without a query) → the JSON `data`, when the call succeeded.
async fn prometheus_api(base: &str, what: &str, query: Option<&str>) -> Option<Json> {
    let url = match query {
        Some(q) => url::Url::parse_with_params(&format!("{base}/api/v1/{what}"), [("query", q)]),
        None => url::Url::parse(&format!("{base}/api/v1/{what}")),
    }
    .expect("a valid Prometheus API URL");
    let (status, body) = http_get(url.as_str()).await?;
    let json: Json = serde_json::from_str(&body).ok()?;
    (status == 200 && json["status"] == "success").then(|| json["data"].clone())
}

/// Stops the Prometheus process on every path out of the test (also a failed assertion).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_switchyard_and_evaluates_the_rules() {
    let Some(binary) = prometheus_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the prometheus binary is missing: .ci/run installs it (apt-get install -y prometheus)"
        );
        eprintln!(
            "SKIPPED a_real_prometheus_scrapes_switchyard_and_evaluates_the_rules: no prometheus binary \
             (apt-get install -y prometheus, or set PROMETHEUS_BIN)"
        );
        return;
    };
    let (h, _fake) = service_with_traffic("ops-prometheus").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let rules = repo_root().join("deploy/prometheus/alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules:?}\n\
         scrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: [\"{}\"]\n",
        h.metrics_addr
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");
    let log_path = dir.path().join("prometheus.log");
    let log = std::fs::File::create(&log_path).expect("create prometheus.log");
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    eprintln!("starting {} on {listen}", binary.display());
    let mut child = Child(
        std::process::Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} did not start: {e}", binary.display())),
    );
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Generous: Prometheus opens its storage, then scrapes every second.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut wait =
        async |what: &str, probe: &mut dyn FnMut(&Json) -> bool, api: &str, query: Option<&str>| {
            loop {
                if let Ok(Some(status)) = child.0.try_wait() {
                    panic!(
                        "prometheus exited ({status}) while waiting for {what}:\n{}",
                        log_text()
                    );
                }
                if let Some(data) = prometheus_api(&base, api, query).await
                    && probe(&data)
                {
                    return data;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; prometheus log:\n{}",
                    log_text()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };

    let non_empty = &mut |data: &Json| data["result"].as_array().is_some_and(|r| !r.is_empty());
    let build = wait(
        "switchyard_build_info",
        non_empty,
        "query",
        Some("switchyard_build_info"),
    )
    .await;
    assert_eq!(
        build["result"][0]["metric"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{build}"
    );
    let received = wait(
        "switchyard_events_received_total",
        non_empty,
        "query",
        Some("switchyard_events_received_total"),
    )
    .await;
    let types: BTreeSet<&str> = received["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["metric"]["type"].as_str())
        .collect();
    assert!(types.contains("Gameplay.DataCaptured"), "{received}");
    // A histogram arrives as its bucket series, usable by the dashboard's histogram_quantile().
    wait(
        "switchyard_action_duration_seconds_bucket",
        non_empty,
        "query",
        Some("switchyard_action_duration_seconds_bucket{connector=\"http\",le=\"+Inf\"} > 0"),
    )
    .await;

    // Every alert rule has been evaluated against the real series, without an error.
    let expected = metric_rule_names();
    let rules = wait(
        "every rule to be evaluated",
        &mut |data: &Json| {
            let all = all_rules(data);
            all.len() == expected.len() && all.iter().all(|r| r["health"] != "unknown")
        },
        "rules",
        None,
    )
    .await;
    for rule in all_rules(&rules) {
        assert_eq!(
            rule["health"], "ok",
            "rule {} failed to evaluate: {}",
            rule["name"], rule["lastError"]
        );
    }
    let names: BTreeSet<String> = all_rules(&rules)
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, expected);

    drop(child);
    h.finish().await;
}

/// The rules of a `/api/v1/rules` answer, across groups.
fn all_rules(data: &Json) -> Vec<Json> {
    data["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The alert names of deploy/prometheus/alerts.yml.
fn metric_rule_names() -> BTreeSet<String> {
    alert_rules()
        .iter()
        .filter_map(|r| r.get("alert").and_then(Yaml::as_str).map(str::to_owned))
        .collect()
}

/// Every rule of deploy/prometheus/alerts.yml.
fn alert_rules() -> Vec<Yaml> {
    let alerts = yaml_file("deploy/prometheus/alerts.yml");
    alerts["groups"]
        .as_sequence()
        .expect("alerts.yml has groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Alert rules, their unit tests and their runbooks

#[test]
fn every_alert_is_annotated_unit_tested_and_has_a_runbook_section() {
    let runbook = read("docs/runbooks/alerts.md");
    let headings: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::trim)
        .collect();
    assert!(
        runbook.contains("(dead-letter.md)"),
        "docs/runbooks/alerts.md should link to the dead-letter runbook"
    );

    let tests = yaml_file("deploy/prometheus/alerts.test.yml");
    let mut firing: BTreeSet<String> = BTreeSet::new();
    let mut silent: BTreeSet<String> = BTreeSet::new();
    for test in tests["tests"]
        .as_sequence()
        .expect("alerts.test.yml has tests")
    {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap_or_default().to_owned();
            let fires = case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty());
            if fires { &mut firing } else { &mut silent }.insert(name);
        }
    }

    let rules = alert_rules();
    assert!(
        rules.len() >= 7,
        "alerts.yml has only {} rules",
        rules.len()
    );
    for name in [
        "SwitchyardDeadLetterQueueGrowing",
        "SwitchyardDeadLetterRateHigh",
        "SwitchyardConnectorErrorRatioHigh",
        "SwitchyardLatencyP99High",
        "SwitchyardBrokerDisconnected",
        "SwitchyardNoConsumer",
        "SwitchyardEventsRejected",
        "SwitchyardDeliveryLatencyHigh",
        "SwitchyardBacklogGrowing",
        "SwitchyardPartialFailures",
        "SwitchyardTargetDown",
        "SwitchyardAbsent",
    ] {
        assert!(
            rules.iter().any(|r| r["alert"].as_str() == Some(name)),
            "alerts.yml has no alert {name}"
        );
    }
    for rule in &rules {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                get(rule, &["annotations", key])
                    .and_then(Yaml::as_str)
                    .is_some_and(|s| !s.is_empty()),
                "{name} has no {key} annotation"
            );
        }
        assert!(
            get(rule, &["labels", "severity"]).is_some(),
            "{name} has no severity label"
        );
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let anchor = format!("docs/runbooks/alerts.md#{}", name.to_lowercase());
        assert!(
            url.ends_with(&anchor),
            "{name}: runbook_url {url} should end with {anchor}"
        );
        assert!(
            headings.contains(name),
            "docs/runbooks/alerts.md has no section `## {name}`"
        );
        assert!(
            firing.contains(name),
            "alerts.test.yml has no case where {name} fires"
        );
        assert!(
            silent.contains(name),
            "alerts.test.yml has no case where {name} stays silent"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (c) The Helm chart, without helm

const CHART: &str = "helm/switchyard";

/// The chart's template files whose names end with `ext`, sorted.
fn chart_templates(ext: &str) -> Vec<PathBuf> {
    let dir = repo_root().join(CHART).join("templates");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    files.sort();
    files
}

/// Removes the template actions (`{{ … }}`, comments and multi-line blocks included) from a
/// template, simply: a line holding nothing but actions goes, and an action inside a line of YAML
/// becomes the placeholder `x`. What remains of a well-formed template is YAML.
fn strip_template_actions(source: &str) -> String {
    const MARK: char = '\u{1}';
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let inside = rest[start + 2..].trim_start_matches('-').trim_start();
        // A comment may hold `}}`: its end is the first `*/` followed by `}}`.
        let end = if inside.starts_with("/*") {
            let from = rest.len() - inside.len();
            rest[from..]
                .find("*/")
                .and_then(|c| rest[from + c..].find("}}").map(|e| from + c + e))
        } else {
            rest[start..].find("}}").map(|e| start + e)
        };
        let Some(end) = end else {
            panic!("an unclosed template action: {}", &rest[start..])
        };
        out.push(MARK);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out.lines()
        .filter(|line| !line.trim().chars().all(|c| c == MARK))
        .map(|line| line.replace(MARK, "x"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every template, stripped and parsed: (file name, documents).
fn stripped_templates() -> Vec<(String, Vec<Yaml>)> {
    chart_templates(".yaml")
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let source = std::fs::read_to_string(&path).expect("read template");
            let stripped = strip_template_actions(&source);
            let docs = yaml_documents(&stripped).unwrap_or_else(|e| {
                panic!("{name} is not YAML once its template actions are stripped: {e}\n{stripped}")
            });
            (name, docs.into_iter().filter(|d| !d.is_null()).collect())
        })
        .collect()
}

#[test]
fn stripping_template_actions_keeps_the_yaml_around_them() {
    let source = "{{- /* a comment\n with }} inside */}}\n{{- if .Values.a }}\nkind: X\nmetadata:\n  name: {{ include \"n\" . }}-router\n  labels:\n    {{- include \"l\" . | nindent 4 }}\nargs: [\"run\", {{ .r | quote }}]\n{{- end }}\n";
    let stripped = strip_template_actions(source);
    assert_eq!(
        stripped,
        "kind: X\nmetadata:\n  name: x-router\n  labels:\nargs: [\"run\", x]"
    );
}

#[test]
fn chart_templates_parse_as_yaml_once_template_actions_are_stripped() {
    let templates = stripped_templates();
    let names: BTreeSet<&str> = templates.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
        "servicemonitor.yaml",
        "prometheusrule.yaml",
        "keda.yaml",
        "hpa.yaml",
        "grafana-dashboard.yaml",
    ] {
        assert!(names.contains(expected), "templates/{expected} is missing");
    }
    let mut kinds = BTreeSet::new();
    for (name, docs) in &templates {
        assert!(!docs.is_empty(), "{name} holds no resource");
        for doc in docs {
            for key in ["apiVersion", "kind", "metadata"] {
                assert!(
                    doc.get(key).is_some(),
                    "{name}: a resource without {key}: {doc:?}"
                );
            }
            kinds.insert(doc["kind"].as_str().unwrap_or_default().to_owned());
        }
    }
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "ScaledObject",
        "HorizontalPodAutoscaler",
        "ServiceAccount",
    ] {
        assert!(kinds.contains(kind), "no template creates a {kind}");
    }
    for file in [
        format!("{CHART}/Chart.yaml"),
        format!("{CHART}/values.yaml"),
    ] {
        yaml_file(&file);
    }
    assert!(
        repo_root()
            .join(CHART)
            .join("templates/NOTES.txt")
            .is_file()
    );
    assert!(
        repo_root()
            .join(CHART)
            .join("templates/_helpers.tpl")
            .is_file()
    );
    assert!(repo_root().join(CHART).join("README.md").is_file());
}

#[test]
fn chart_values_used_by_templates_exist_in_values_yaml() {
    let values = yaml_file(&format!("{CHART}/values.yaml"));
    let mut checked = 0;
    let mut missing = BTreeSet::new();
    for path in chart_templates(".yaml")
        .into_iter()
        .chain(chart_templates(".tpl"))
        .chain(chart_templates(".txt"))
    {
        let source = std::fs::read_to_string(&path).expect("read template");
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for (at, _) in source.match_indices(".Values.") {
            let keys: Vec<&str> = source[at + ".Values.".len()..]
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .next()
                .unwrap_or_default()
                .split('.')
                .filter(|k| !k.is_empty())
                .collect();
            checked += 1;
            let mut node = &values;
            for (depth, key) in keys.iter().enumerate() {
                match node.as_mapping().and_then(|m| m.get(*key)) {
                    Some(next) => node = next,
                    None => {
                        missing.insert(format!("{name}: .Values.{}", keys[..=depth].join(".")));
                        break;
                    }
                }
            }
        }
    }
    assert!(checked > 30, "only {checked} .Values references found");
    assert!(
        missing.is_empty(),
        "templates use values that values.yaml does not define: {missing:#?}"
    );
}

#[test]
fn chart_deployments_have_probes_security_context_and_a_long_enough_grace() {
    let mut deployments = 0;
    for (name, docs) in stripped_templates() {
        for doc in docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some("Deployment"))
        {
            deployments += 1;
            let pod = get(doc, &["spec", "template", "spec"])
                .unwrap_or_else(|| panic!("{name}: a Deployment without spec.template.spec"));
            for key in [
                "securityContext",
                "terminationGracePeriodSeconds",
                "containers",
            ] {
                assert!(pod.get(key).is_some(), "{name}: the pod spec has no {key}");
            }
            let containers = pod["containers"]
                .as_sequence()
                .expect("containers is a list");
            assert!(!containers.is_empty(), "{name}: no container");
            for container in containers {
                for key in [
                    "securityContext",
                    "resources",
                    "livenessProbe",
                    "readinessProbe",
                ] {
                    assert!(
                        container.get(key).is_some(),
                        "{name}: a container has no {key}"
                    );
                }
                assert_eq!(
                    get(container, &["livenessProbe", "httpGet", "path"]).and_then(Yaml::as_str),
                    Some("/healthz"),
                    "{name}: liveness must probe /healthz"
                );
                assert_eq!(
                    get(container, &["readinessProbe", "httpGet", "path"]).and_then(Yaml::as_str),
                    Some("/readyz"),
                    "{name}: readiness must probe /readyz"
                );
                assert!(
                    get(container, &["lifecycle", "preStop"]).is_some(),
                    "{name}: no preStop hook"
                );
                let env = container["env"].as_sequence().cloned().unwrap_or_default();
                let urls: Vec<&Yaml> = env
                    .iter()
                    .filter(|e| e["name"].as_str() == Some("SWITCHYARD__AMQP__URL"))
                    .collect();
                assert!(!urls.is_empty(), "{name}: no SWITCHYARD__AMQP__URL");
                // One URL from the Secret, or (amqp.urlKeys) a list of references to node
                // variables that each come from the Secret: never a URL written in the chart.
                for url in urls {
                    let from_secret = get(url, &["valueFrom", "secretKeyRef"]).is_some();
                    // (A template action: helm/check.sh checks what it renders to.)
                    let references = url["value"].as_str().is_some_and(|v| !v.contains("://"));
                    assert!(
                        from_secret || references,
                        "{name}: the AMQP URL must come from a Secret (secretKeyRef)"
                    );
                }
            }
        }
    }
    assert!(deployments > 0, "no Deployment template found");

    // The defaults: non-root, read-only root filesystem, and a grace longer than shutdown_grace.
    let values = yaml_file(&format!("{CHART}/values.yaml"));
    assert_eq!(
        values["podSecurityContext"]["runAsNonRoot"],
        Yaml::Bool(true)
    );
    assert_eq!(
        values["securityContext"]["readOnlyRootFilesystem"],
        Yaml::Bool(true)
    );
    assert_eq!(
        values["securityContext"]["allowPrivilegeEscalation"],
        Yaml::Bool(false)
    );
    let seconds = |key: &str| {
        values[key]
            .as_u64()
            .unwrap_or_else(|| panic!("values.{key} is a number"))
    };
    let grace = seconds("preStopSleepSeconds")
        + seconds("shutdownGraceSeconds")
        + seconds("terminationGraceExtraSeconds");
    assert!(grace > seconds("shutdownGraceSeconds") + seconds("preStopSleepSeconds"));
    let helpers = std::fs::read_to_string(repo_root().join(CHART).join("templates/_helpers.tpl"))
        .expect("_helpers.tpl");
    assert!(
        helpers.contains(
            "add (int .Values.preStopSleepSeconds) (int .Values.shutdownGraceSeconds) (int .Values.terminationGraceExtraSeconds)"
        ),
        "terminationGracePeriodSeconds should add the preStop sleep, shutdown_grace and the margin"
    );
    for component in ["router", "workerDefaults"] {
        assert!(
            get(&values, &[component, "resources", "requests"]).is_some(),
            "values.{component}.resources has no requests"
        );
    }
}

#[test]
fn chart_files_are_copies_of_the_deploy_files() {
    assert!(
        read("deploy/grafana/switchyard.json") == read("helm/switchyard/files/switchyard.json"),
        "cp deploy/grafana/switchyard.json helm/switchyard/files/switchyard.json"
    );
}

/// deploy/prometheus/alerts.yml is the chart's files/alerts.yml with its placeholders filled from
/// values.yaml, as the chart fills them (deploy/prometheus/check.sh checks the same with helm).
#[test]
fn deploy_alerts_are_the_chart_rules_with_the_default_values() {
    let values = yaml_file(&format!("{CHART}/values.yaml"));
    let chart = yaml_file(&format!("{CHART}/Chart.yaml"));
    let mut rules = read("helm/switchyard/files/alerts.yml");
    let alerts = values["prometheusRule"]["alerts"]
        .as_mapping()
        .expect("prometheusRule.alerts");
    for (alert, params) in alerts {
        for (key, value) in params.as_mapping().expect("an alert's values") {
            let value = match value {
                Yaml::String(s) => s.clone(),
                Yaml::Number(n) => n.to_string(),
                other => panic!("{alert:?}.{key:?}: {other:?}"),
            };
            let placeholder = format!(
                "@{{{}.{}}}",
                alert.as_str().expect("name"),
                key.as_str().expect("key")
            );
            assert!(
                rules.contains(&placeholder),
                "{placeholder} is used by no rule"
            );
            rules = rules.replace(&placeholder, &value);
        }
    }
    let runbooks = format!(
        "{}/blob/v{}/docs/runbooks/",
        chart["home"].as_str().expect("Chart.yaml home"),
        chart["appVersion"].as_str().expect("appVersion")
    );
    let rules = rules
        .replace("@{targetSelector}", "job=\"switchyard\"")
        .replace("@{runbookBaseUrl}", &runbooks);
    assert!(
        !rules.contains("@{"),
        "a placeholder without a default value"
    );
    let deployed = read("deploy/prometheus/alerts.yml");
    let body: String = deployed.split_inclusive('\n').skip(3).collect();
    assert!(
        body == rules,
        "deploy/prometheus/alerts.yml is stale: run deploy/prometheus/render.sh"
    );
}

// ---------------------------------------------------------------------------------------------
// docker compose, Prometheus and Grafana files (no Docker engine here: checked for shape only)

#[test]
fn compose_file_and_the_files_it_mounts_fit_together() {
    let mut compose = yaml_file("deploy/docker-compose.yml");
    compose.apply_merge().expect("YAML merge keys resolve");
    let services = compose["services"].as_mapping().expect("services");
    for name in [
        "rabbitmq",
        "switchyard-router",
        "switchyard-worker",
        "prometheus",
        "grafana",
        "sink",
    ] {
        assert!(
            services.contains_key(name),
            "docker-compose.yml has no service {name}"
        );
    }
    for (name, role) in [
        ("switchyard-router", "router"),
        ("switchyard-worker", "worker"),
    ] {
        let service = &compose["services"][name];
        assert_eq!(service["build"]["context"].as_str(), Some(".."), "{name}");
        assert_eq!(
            service["build"]["dockerfile"].as_str(),
            Some("deploy/Dockerfile"),
            "{name}"
        );
        let command: Vec<&str> = service["command"]
            .as_sequence()
            .expect("command is a list")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(
            command.windows(2).find(|w| w[0] == "--role").map(|w| w[1]),
            Some(role),
            "{name}"
        );
        let volumes: Vec<&str> = service["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert!(
            volumes.contains(&"../config:/etc/switchyard:ro"),
            "{name}: {volumes:?}"
        );
        assert!(
            get(service, &["environment", "SWITCHYARD__AMQP__URL"]).is_some(),
            "{name}: no SWITCHYARD__AMQP__URL"
        );
    }
    assert_eq!(
        compose["services"]["sink"]["network_mode"].as_str(),
        Some("service:switchyard-worker"),
        "the demo workflow posts to 127.0.0.1:8080, so the sink shares the worker's network"
    );

    // Every bind mount's host path exists (relative to deploy/).
    let deploy = repo_root().join("deploy");
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let host = volume
                .as_str()
                .unwrap_or_default()
                .split(':')
                .next()
                .unwrap_or_default();
            if host.starts_with('.') {
                assert!(
                    deploy.join(host).exists(),
                    "service {:?} mounts {host}, which does not exist",
                    name.as_str()
                );
            }
        }
    }

    let plugins = read("deploy/rabbitmq/enabled_plugins");
    assert!(plugins.contains("rabbitmq_management") && plugins.contains("rabbitmq_prometheus"));

    let prometheus = yaml_file("deploy/prometheus/prometheus.yml");
    let targets: BTreeSet<String> = prometheus["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|c| c["targets"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    for target in [
        "switchyard-router:9464",
        "switchyard-worker:9464",
        "rabbitmq:15692",
    ] {
        assert!(
            targets.contains(target),
            "prometheus.yml does not scrape {target}: {targets:?}"
        );
    }
    assert!(
        prometheus["rule_files"]
            .as_sequence()
            .is_some_and(|f| f.iter().any(|f| f.as_str() == Some("alerts.yml"))),
        "prometheus.yml should load alerts.yml"
    );

    let datasources = yaml_file("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(
        datasources["datasources"][0]["type"].as_str(),
        Some("prometheus")
    );
    let providers = yaml_file("deploy/grafana/provisioning/dashboards/switchyard.yml");
    assert_eq!(
        providers["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
}

#[test]
fn dashboard_uses_its_datasource_variable_everywhere() {
    let dashboard: Json = serde_json::from_str(&read("deploy/grafana/switchyard.json"))
        .expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "the dashboard needs a `datasource` variable of type datasource"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queries = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {}",
            panel["title"]
        );
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "panel {}",
                panel["title"]
            );
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("switchyard_"))
            );
            queries += 1;
        }
    }
    assert!(queries >= 25, "only {queries} queries");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Events in by type",
        "Actions by connector and outcome",
        "Retry and dead-letter rates",
        "Call duration p50 / p95 / p99 by connector",
        "End-to-end delivery latency p50 / p95 / p99 by connector",
        "Router queue",
        "Action queues",
        "Retry queues",
        "Dead-letter and rejected queues",
        "In flight by connector",
        "Broker connected by process",
        "Workflows loaded by process",
        "Workflow reloads",
        "Breakers open by connector",
        "Outbound requests blocked by connector",
    ] {
        assert!(
            titles.contains(&wanted),
            "the dashboard has no panel {wanted:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// deploy/rabbitmq/start.sh (`make rabbitmq`, which `make run`, `make test` and CI go through)

/// Runs `deploy/rabbitmq/start.sh` against `port` on the loopback: its exit code and output.
fn start_script(port: u16) -> (Option<i32>, String) {
    let ran = std::process::Command::new("bash")
        .arg(repo_root().join("deploy/rabbitmq/start.sh"))
        .env("RABBITMQ_HOST", "127.0.0.1")
        .env("RABBITMQ_PORT", port.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run deploy/rabbitmq/start.sh");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    (ran.status.code(), output)
}

#[test]
fn the_start_script_accepts_a_broker_that_speaks_amqp_and_names_one_that_only_accepts_tcp() {
    // The suite's broker answers the handshake.
    let (code, output) = start_script(5672);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("already answering"), "{output}");

    // A listener that accepts and never answers, as a node out of file handles does; it keeps what
    // it accepted open until the script is done.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("address").port();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let held = std::thread::spawn(move || {
        let mut connections = Vec::new();
        while finished.try_recv().is_err() {
            match listener.accept() {
                Ok((connection, _)) => connections.push(connection),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        connections.len()
    });
    let started = Instant::now();
    let (code, output) = start_script(port);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("accepts connections but did not answer the AMQP handshake")
            && output.contains("file_handle_cache:info"),
        "says what it saw and where to look:\n{output}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gives up after its 10 s wait: {:?}",
        started.elapsed()
    );
    let _ = done.send(());
    let accepted = held.join().expect("the listener thread");
    assert!(
        accepted >= 2,
        "the script connected and tried the handshake: {accepted}"
    );
}
