//! Signed webhooks (SPEC §3 `webhooks`, §6; issue 5) against the real broker: type patterns over
//! the whole catalog, Standard Webhooks signatures checked by a verifier written here from the
//! specification (not switchyard's own `sign`), rotation, the legacy shape, `410 Gone`, and the
//! circuit breaker keeping a dead host from slowing a healthy one.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::{
    AfterGet, FakeServer, Harness, Recorded, Reply, attempts, event, wait_until, wait_until_within,
};

/// A fresh `whsec_…` secret (24 random bytes).
fn whsec() -> String {
    format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 24]>()))
}

/// The signature Standard Webhooks defines, computed here from the specification: base64 of
/// HMAC-SHA256, keyed with the base64-decoded part of the secret after `whsec_`, over
/// `{webhook-id}.{webhook-timestamp}.{raw body}`.
fn expected_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .expect("base64 key");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The `v1` signatures of a captured request (the header holds them space-separated).
fn v1_signatures(r: &Recorded) -> Vec<String> {
    assert_eq!(
        r.header_count("webhook-signature"),
        1,
        "one signature header"
    );
    r.header("webhook-signature")
        .expect("webhook-signature")
        .split(' ')
        .map(|s| {
            s.strip_prefix("v1,")
                .unwrap_or_else(|| panic!("{s:?} is a v1 signature"))
                .to_owned()
        })
        .collect()
}

/// Whether one of the request's `v1` signatures verifies with `secret`, as a receiver would check
/// it: id, timestamp within 5 minutes of now, raw body as received.
fn verifies(secret: &str, r: &Recorded) -> bool {
    let id = r.header("webhook-id").expect("webhook-id");
    let timestamp = r.header("webhook-timestamp").expect("webhook-timestamp");
    let seconds: i64 = timestamp
        .parse()
        .expect("webhook-timestamp is integer seconds");
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now - seconds).abs() <= 300,
        "webhook-timestamp {seconds} is within 5 minutes of now ({now})"
    );
    let want = expected_signature(secret, id, timestamp, &r.body);
    v1_signatures(r).contains(&want)
}

/// A `webhooks:` file; each entry is (id, path on the fake, patterns, extra YAML fields).
fn webhooks_yaml(fake: &FakeServer, hooks: &[(&str, &str, &str, &str)]) -> String {
    let mut out = String::from("webhooks:\n");
    for (id, path, patterns, extra) in hooks {
        out.push_str(&format!(
            "  - id: {id}\n    workspace: ws_demo\n    url: \"{}/{path}\"\n    events: {patterns}\n{extra}",
            fake.url()
        ));
    }
    out
}

/// `switchyard_action_attempts_total{connector="webhook",outcome=…}`.
fn webhook_attempts(outcome: &str) -> String {
    attempts("webhook", outcome)
}

// ---------------------------------------------------------------------------------------------
// Patterns

#[tokio::test(flavor = "multi_thread")]
async fn patterns_select_exactly_the_right_types_across_the_catalog() {
    let fake = FakeServer::start(|_| Reply::status(204)).await;
    let secret = whsec();
    let sign = "    secret: \"{{ secrets.WH }}\"\n";
    let workflows = webhooks_yaml(
        &fake,
        &[
            ("prizes", "prizes", r#"["Prize.*"]"#, sign),
            ("everything", "all", r#"["*"]"#, sign),
            ("forms", "forms", r#"["Form.Submitted"]"#, sign),
            // An alias as the pattern means its main type.
            ("awarded", "awarded", r#"["Prize.Awarded"]"#, sign),
        ],
    );
    let h = Harness::start("wh-patterns", &workflows, "", &[("WH", &secret)]).await;

    // One event of each catalog type, plus one published under an alias.
    let mut published: Vec<(String, &str)> = Vec::new();
    for (i, kind) in switchyard::event::CATALOG.iter().enumerate() {
        let id = format!("evt_pat_{i}");
        h.publish(&event(&id, kind.name)).await;
        published.push((id, kind.name));
    }
    h.publish(&event("evt_pat_alias", "Prize.Awarded")).await;
    published.push(("evt_pat_alias".to_owned(), "Prize.Won"));

    let expect = |path: &str| -> BTreeSet<String> {
        published
            .iter()
            .filter(|(_, kind)| match path {
                "/prizes" => kind.starts_with("Prize."),
                "/all" => true,
                "/forms" => *kind == "Form.Submitted",
                "/awarded" => *kind == "Prize.Won",
                _ => false,
            })
            .map(|(id, _)| id.clone())
            .collect()
    };
    let paths = ["/prizes", "/all", "/forms", "/awarded"];
    let total: usize = paths.iter().map(|p| expect(p).len()).sum();
    assert_eq!(
        total,
        4 + (switchyard::event::CATALOG.len() + 1) + 1 + 2,
        "the expected fan-out"
    );
    h.wait_metric(&webhook_attempts("success"), total as f64)
        .await;
    // Everything routed was delivered: nothing more is on its way.
    assert_eq!(h.broker.queue_len(&h.name("action.webhook")).await, 0);
    assert_eq!(
        h.metric("switchyard_actions_enqueued_total{connector=\"webhook\"}")
            .await,
        total as f64
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), total, "one POST per matching subscription");
    let mut got: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert!(verifies(&secret, r), "{} {} verifies", r.method, r.path);
        let body = r.json();
        let id = body["id"].as_str().expect("the event id").to_owned();
        // The body is the (normalised) event: its type is the main name.
        let (_, kind) = published.iter().find(|(p, _)| *p == id).expect("known");
        assert_eq!(body["type"], *kind, "{id} arrives with its main type");
        assert!(
            got.entry(r.path.clone()).or_default().insert(id.clone()),
            "{id} delivered twice to {}",
            r.path
        );
    }
    for path in paths {
        assert_eq!(
            got.get(path).cloned().unwrap_or_default(),
            expect(path),
            "events delivered to {path}"
        );
    }
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Signatures

#[tokio::test(flavor = "multi_thread")]
async fn signature_verifies_and_webhook_id_is_stable_across_a_retry() {
    let seen = AtomicUsize::new(0);
    let fake = FakeServer::start(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    })
    .await;
    let secret = whsec();
    let workflows = webhooks_yaml(
        &fake,
        &[(
            "signed",
            "hook",
            r#"["Gameplay.DataCaptured"]"#,
            "    secret: \"{{ secrets.WH }}\"\n",
        )],
    );
    let h = Harness::start("wh-sign", &workflows, "", &[("WH", &secret)]).await;
    h.publish(&event("evt_sign_1", "Gameplay.DataCaptured"))
        .await;
    h.wait_metric(&webhook_attempts("success"), 1.0).await;

    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "503, then 200 from the retry tier");
    let id = requests[0].header("webhook-id").expect("webhook-id");
    assert!(!id.is_empty());
    for r in &requests {
        assert_eq!(r.header("webhook-id"), Some(id), "the same webhook-id");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(v1_signatures(r).len(), 1, "one secret, one signature");
        assert!(verifies(&secret, r), "the signature verifies");
        assert!(!verifies(&whsec(), r), "and not with another secret");
        // The signed body is the event JSON.
        let body = r.json();
        assert_eq!(body["id"], "evt_sign_1");
        assert_eq!(body["type"], "Gameplay.DataCaptured");
        assert_eq!(body["form_fields"]["company"], "Acme");
    }
    // The id is the action id of SPEC §5: (event, webhook, action).
    assert_eq!(
        id,
        switchyard::broker::message::action_id(
            "evt_sign_1",
            "signed",
            switchyard::router::WEBHOOK_ACTION
        ),
        "webhook-id is the action id"
    );
    // A tampered body no longer verifies.
    let mut tampered = requests[1].clone();
    tampered.body =
        axum::body::Bytes::from(String::from_utf8_lossy(&tampered.body).replace("Acme", "Acne"));
    assert!(!verifies(&secret, &tampered));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_secrets_give_two_signatures_each_verifying_with_its_own_secret() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let (old, new) = (whsec(), whsec());
    let workflows = webhooks_yaml(
        &fake,
        &[(
            "rotating",
            "hook",
            r#"["Form.Submitted"]"#,
            "    secret: [\"{{ secrets.WH_OLD }}\", \"{{ secrets.WH_NEW }}\"]\n",
        )],
    );
    let h = Harness::start(
        "wh-rotate",
        &workflows,
        "",
        &[("WH_OLD", &old), ("WH_NEW", &new)],
    )
    .await;
    h.publish(&event("evt_rot_1", "Form.Submitted")).await;
    h.wait_metric(&webhook_attempts("success"), 1.0).await;

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    let signatures = v1_signatures(r);
    assert_eq!(
        signatures.len(),
        2,
        "one v1 signature per secret: {signatures:?}"
    );
    let id = r.header("webhook-id").expect("id");
    let ts = r.header("webhook-timestamp").expect("timestamp");
    assert_eq!(signatures[0], expected_signature(&old, id, ts, &r.body));
    assert_eq!(signatures[1], expected_signature(&new, id, ts, &r.body));
    assert!(verifies(&old, r) && verifies(&new, r));
    assert!(!verifies(&whsec(), r));
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Legacy format

#[tokio::test(flavor = "multi_thread")]
async fn legacy_format_is_flat_snake_case_and_signed() {
    let fake = FakeServer::start(|_| Reply::status(200)).await;
    let secret = whsec();
    let workflows = webhooks_yaml(
        &fake,
        &[(
            "komo",
            "legacy",
            r#"["Gameplay.*"]"#,
            "    secret: \"{{ secrets.WH }}\"\n    format: legacy\n",
        )],
    );
    let h = Harness::start("wh-legacy", &workflows, "", &[("WH", &secret)]).await;
    h.publish(&event("evt_leg_1", "Gameplay.DataCaptured"))
        .await;
    h.wait_metric(&webhook_attempts("success"), 1.0).await;

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert!(verifies(&secret, r), "the legacy body is signed too");
    let body = r.json();
    let flat = body.as_object().expect("an object");
    assert_eq!(body["event"], "Gameplay.DataCaptured");
    assert_eq!(body["timestamp"], "2026-11-26T18:00:00Z");
    assert_eq!(body["site_id"], "site_9");
    assert_eq!(body["card_name"], "Spin to Win");
    // The form fields at the top level.
    assert_eq!(body["company"], "Acme");
    assert_eq!(body["email"], "ana@example.com");
    for (key, value) in flat {
        assert!(
            !value.is_object() && !value.is_array(),
            "{key} is flat: {value}"
        );
        assert!(
            key.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{key} is snake_case"
        );
    }
    assert!(
        flat.get("form_fields").is_none() && flat.get("site").is_none(),
        "no nested envelope objects: {body}"
    );
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Failing destinations

#[tokio::test(flavor = "multi_thread")]
async fn gone_410_is_dead_lettered_as_permanent_on_the_first_call() {
    let fake = FakeServer::start(|_| Reply::status(410)).await;
    let workflows = webhooks_yaml(
        &fake,
        &[(
            "gone",
            "gone",
            r#"["*"]"#,
            "    secret: \"{{ secrets.WH }}\"\n",
        )],
    );
    let h = Harness::start(
        "wh-gone",
        &workflows,
        "retry: { quick_attempts: 2, schedule: [1s, 1s] }",
        &[("WH", &whsec())],
    )
    .await;
    h.publish(&event("evt_gone_1", "Coupon.Issued")).await;
    h.wait_metric(&webhook_attempts("dead"), 1.0).await;

    assert_eq!(fake.count(), 1, "410 is never retried");
    assert_eq!(h.metric(&webhook_attempts("retry")).await, 0.0);
    let records = h
        .broker
        .take_all(&h.name("dead-letter"), AfterGet::Ack)
        .await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(
        record.header_str("x-switchyard-error-class").as_deref(),
        Some("permanent")
    );
    assert_eq!(record.header_int("x-switchyard-last-status"), Some(410));
    assert_eq!(
        record.header_str("x-switchyard-connector").as_deref(),
        Some("webhook")
    );
    assert_eq!(record.header_int("x-switchyard-attempts"), Some(1));
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// The circuit breaker

/// What one load run measured at the healthy host.
struct Figures {
    /// Events per second, first publish to last arrival.
    throughput: f64,
    /// Publish → arrival at the healthy host.
    p50: Duration,
    p99: Duration,
    /// (events, p50, p99) of the events published after the breaker was seen open.
    steady: Option<(usize, Duration, Duration)>,
}

/// Notes the breaker gauge: its highest value, and when it was first seen open with how many
/// calls had reached `other` by then.
async fn watch_breaker(
    h: &Harness,
    other: &FakeServer,
    opened: &mut Option<(Instant, usize)>,
    max_open: &mut f64,
) {
    let open = h
        .metric("switchyard_breakers_open{connector=\"http\"}")
        .await;
    if open >= 1.0 && opened.is_none() {
        *opened = Some((Instant::now(), other.count()));
    }
    *max_open = max_open.max(open);
}

const EVENTS: usize = 300;
const CONCURRENCY: usize = 16;

/// 300 events, each making one call to `healthy` (127.0.0.1) and one to `other` (`localhost`, a
/// different host for the breaker). With `other_dead`, `other` never answers within the timeout.
async fn load_run(name: &str, other_dead: bool) -> Figures {
    let healthy = FakeServer::start(|_| Reply::status(200)).await;
    let other = if other_dead {
        // Holds every request far past the action timeout: a host that never answers.
        FakeServer::start(|_| Reply::status(200).after(Duration::from_secs(120))).await
    } else {
        FakeServer::start(|_| Reply::status(200)).await
    };
    let other_url = other.url().replace("127.0.0.1", "localhost");
    let workflows = format!(
        r#"
workflows:
  - id: fanout
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - {{ id: healthy, http: {{ url: "{}/ok", body: '{{"event": "{{{{ event.id }}}}"}}' }} }}
      - {{ id: other, http: {{ url: "{other_url}/other", body: '{{"event": "{{{{ event.id }}}}"}}' }} }}
"#,
        healthy.url()
    );
    let h = Harness::start(
        name,
        &workflows,
        &format!("worker: {{ concurrency: {CONCURRENCY} }}\nhttp: {{ timeout: 300ms }}"),
        &[],
    )
    .await;

    // While the load runs: does the breaker open, when, and how many calls had reached the dead
    // host by then? Watched while publishing too.
    let mut opened: Option<(Instant, usize)> = None;
    let mut max_open = 0.0f64;
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let publishing = AtomicBool::new(false);
    let start = Instant::now();
    let publish = async {
        for i in 0..EVENTS {
            let id = format!("evt_{name}_{i}");
            sent_at.insert(id.clone(), Instant::now());
            h.publish(&event(&id, "Gameplay.DataCaptured")).await;
        }
        publishing.store(true, Ordering::SeqCst);
    };
    let watch = async {
        while !publishing.load(Ordering::SeqCst) {
            watch_breaker(&h, &other, &mut opened, &mut max_open).await;
            tokio::time::sleep(support::POLL).await;
        }
    };
    tokio::join!(publish, watch);

    let dead_letter = h.name("dead-letter");
    wait_until_within(
        "every action settled",
        Duration::from_secs(90),
        async || {
            watch_breaker(&h, &other, &mut opened, &mut max_open).await;
            // A dead host's actions are held on the broker, not failed (SPEC §10).
            let others_done = if other_dead {
                true
            } else {
                other.count() == EVENTS
            };
            healthy.count() == EVENTS && others_done
        },
    )
    .await;

    // The healthy host got every event, once.
    let arrivals: Vec<(String, Instant)> = healthy.inspect(|rs| {
        rs.iter()
            .map(|r| (r.json()["event"].as_str().expect("id").to_owned(), r.at))
            .collect()
    });
    let ids: BTreeSet<&String> = arrivals.iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids.len(),
        EVENTS,
        "every event reached the healthy host once"
    );
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .map(|(id, at)| at.duration_since(sent_at[id]))
        .collect();
    latencies.sort_unstable();
    // Events published once the breaker was open: the steady state with a dead host.
    let mut steady: Vec<Duration> = arrivals
        .iter()
        .filter(|(id, _)| opened.is_some_and(|(at, _)| sent_at[id] >= at))
        .map(|(id, at)| at.duration_since(sent_at[id]))
        .collect();
    steady.sort_unstable();
    let last = arrivals.iter().map(|(_, at)| *at).max().expect("arrivals");
    let figures = Figures {
        throughput: EVENTS as f64 / last.duration_since(start).as_secs_f64(),
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
        steady: (!steady.is_empty()).then(|| {
            (
                steady.len(),
                steady[steady.len() / 2],
                steady[steady.len() * 99 / 100],
            )
        }),
    };

    if other_dead {
        assert!(max_open >= 1.0, "the dead host's breaker opened");
        // Before the breaker opened, the dead host held at most worker.max_per_host (half the
        // concurrency by default) of the slots; the rest served the healthy host. Calls that
        // reach it well within the first call's timeout are all still open together (room is
        // freed only when a call ends), so they number no more than the cap.
        let arrivals: Vec<Instant> = other.inspect(|rs| rs.iter().map(|r| r.at).collect());
        let first = *arrivals.iter().min().expect("calls reached the dead host");
        let together = arrivals
            .iter()
            .filter(|at| at.duration_since(first) < Duration::from_millis(150))
            .count();
        assert!(
            together <= CONCURRENCY / 2,
            "{together} calls hung at the dead host at once; the cap is {}",
            CONCURRENCY / 2
        );
        let (_, at_open) = opened.expect("seen open");
        let total = other.count();
        // Once open, calls stop: at most the calls already past the breaker when it opened.
        assert!(
            total <= at_open + CONCURRENCY,
            "calls to the dead host kept growing after the breaker opened: {at_open} → {total}"
        );
        assert!(
            total < EVENTS / 4,
            "the breaker spared most calls to the dead host: {total} of {EVENTS}"
        );
        // Waiting is not failing: the dead host's actions are held on the broker while its
        // breaker is open, none used up its attempts.
        let other_id = other_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let destinations = h.app().connectors.http.destinations().clone();
        wait_until("the dead host's actions held on the broker", async || {
            destinations
                .statuses()
                .iter()
                .any(|s| s.id == other_id && s.holds > 0)
        })
        .await;
        assert_eq!(
            h.broker.queue_len(&dead_letter).await,
            0,
            "no action was exhausted while its destination's breaker was open"
        );
        eprintln!(
            "breaker: {total} calls reached the dead host ({at_open} when the breaker was first seen open) for {EVENTS} actions"
        );
    } else {
        assert_eq!(h.broker.queue_len(&dead_letter).await, 0);
    }
    h.finish().await;
    figures
}

#[tokio::test(flavor = "multi_thread")]
async fn breaker_keeps_a_dead_host_from_slowing_a_healthy_one() {
    let baseline = load_run("brk-base", false).await;
    let with_dead = load_run("brk-dead", true).await;
    for (label, f) in [
        ("two healthy hosts        ", &baseline),
        ("healthy + dead host      ", &with_dead),
    ] {
        eprintln!(
            "breaker figures, {label}: healthy host {:.0} events/s, latency p50 {:?}, p99 {:?} ({EVENTS} events, concurrency {CONCURRENCY}, timeout 300ms)",
            f.throughput, f.p50, f.p99
        );
        if let Some((n, p50, p99)) = f.steady {
            eprintln!(
                "breaker figures, {label}: the {n} events published after the breaker opened: p50 {p50:?}, p99 {p99:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// validate

/// Regression: a webhook's literal URL was not checked at all by `validate` (an http action's is):
/// now a scheme other than http/https is an error and a blocked address a warning, which does
/// not drop the webhook.
#[tokio::test(flavor = "multi_thread")]
async fn validate_checks_literal_webhook_urls() {
    let run = async |webhook_url: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let workflows = format!(
            "webhooks:\n  - {{ id: hook, workspace: ws_demo, url: \"{webhook_url}\", events: [\"*\"] }}\n"
        );
        support::write_workflows_and_secrets(dir.path(), &workflows, &[]);
        let yaml =
            support::test_config_yaml(&support::unique_prefix("wh-validate"), dir.path(), "");
        let path = dir.path().join("switchyard.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let ran = support::run_switchyard(
            &["validate", "--config", path.to_str().expect("utf-8")],
            &[],
        )
        .await;
        (ran.code, format!("{}{}", ran.stdout, ran.stderr))
    };

    let (code, out) = run("ftp://files.example.com/drop").await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("scheme ftp is not allowed"), "{out}");

    let (code, out) = run("http://10.0.0.1/hook").await;
    assert_eq!(code, Some(0), "a warning only: {out}");
    assert!(
        out.contains("warning") && out.contains("10.0.0.1") && out.contains("private"),
        "{out}"
    );
    assert!(out.contains("1 webhook(s)"), "the webhook is kept: {out}");

    let (code, out) = run("https://hooks.example.com/komo").await;
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("warning"), "{out}");
}
