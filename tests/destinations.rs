//! Destinations (SPEC §10, issue 14) against the real broker, with fakes that refuse, fail and
//! throttle: an operator's pause holds a destination's actions on the broker (surviving a
//! restart, costing the others nothing, never using up attempts) until `resume`; an open
//! breaker, a `Retry-After` and a quarantine hold the whole destination the same way.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    FakeServer, Harness, Ran, Reply, event, run_switchyard, unique_prefix, wait_until,
    wait_until_within,
};
use switchyard::destinations::{State, Status};

/// `host:port` of a fake: its destination id.
fn destination(fake: &FakeServer) -> String {
    fake.url().trim_start_matches("http://").to_owned()
}

/// A workflow with one action per fake, each posting the event id.
fn fanout(fakes: &[(&str, &FakeServer)]) -> String {
    let mut yaml = String::from(
        "workflows:\n  - id: fanout\n    workspace: ws_demo\n    trigger: { event: Gameplay.DataCaptured }\n    actions:\n",
    );
    for (id, fake) in fakes {
        yaml.push_str(&format!(
            "      - {{ id: {id}, http: {{ url: \"{}/{id}\", body: '{{\"event\": \"{{{{ event.id }}}}\"}}' }} }}\n",
            fake.url()
        ));
    }
    yaml
}

/// `switchyard destinations …` against the test's prefix.
async fn cli(prefix: &str, args: &[&str]) -> Ran {
    let mut all = vec!["destinations"];
    all.extend_from_slice(args);
    run_switchyard(&all, &[("SWITCHYARD__AMQP__PREFIX", prefix)]).await
}

/// The service's own view of one destination.
fn status(h: &Harness, id: &str) -> Option<Status> {
    h.app()
        .connectors
        .http
        .destinations()
        .statuses()
        .into_iter()
        .find(|s| s.id == id)
}

/// The distinct events a fake received.
fn events(fake: &FakeServer) -> BTreeSet<String> {
    fake.inspect(|rs| {
        rs.iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .filter_map(|v| v["event"].as_str().map(str::to_owned))
            .collect()
    })
}

async fn publish_events(h: &Harness, stem: &str, count: usize) {
    for i in 0..count {
        h.publish(&event(&format!("evt_{stem}_{i}"), "Gameplay.DataCaptured"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_survives_a_restart_holds_on_the_broker_costs_the_others_nothing_and_resume_releases_it()
 {
    let paused = FakeServer::start(|_| Reply::status(200)).await;
    let healthy = FakeServer::start(|_| Reply::status(200)).await;
    let dest = destination(&paused);
    let prefix = unique_prefix("dest-pause");

    // Paused before the service starts: it must know before its first call.
    let said = cli(&prefix, &["pause", &dest, "--reason", "vendor maintenance"])
        .await
        .ok();
    assert!(said.stdout.contains(&format!("paused {dest}")), "{said:?}");

    // Two worker slots only: were held actions waiting in slots, the healthy one would starve.
    let h = Harness::start_with_prefix(
        prefix.clone(),
        &fanout(&[("held", &paused), ("free", &healthy)]),
        "worker: { concurrency: 2, prefetch: 4 }",
        &[],
    )
    .await;
    const EVENTS: usize = 10;
    publish_events(&h, "pause", EVENTS).await;
    wait_until("the healthy destination got every event", async || {
        healthy.count() >= EVENTS
    })
    .await;
    // Every held action came back and was held again at least twice: with a one-tier retry
    // schedule, a hold counted as an attempt would have dead-lettered it as exhausted.
    wait_until("every paused action held twice or more", async || {
        status(&h, &dest).is_some_and(|s| s.holds >= 2 * EVENTS as u64)
    })
    .await;
    assert_eq!(paused.count(), 0, "a paused destination is never called");
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    assert_eq!(
        status(&h, &dest).map(|s| s.state),
        Some(State::Paused),
        "the service's view"
    );

    // `list` shows it paused, with who, why and its held actions (from the status stream).
    let mut listed = Value::Null;
    wait_until("destinations list shows the held actions", async || {
        let ran = cli(&prefix, &["list", "--json"]).await.ok();
        listed = ran
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["id"] == dest.as_str())
            .unwrap_or(Value::Null);
        listed["held"].as_i64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(listed["state"], "paused", "{listed}");
    assert_eq!(listed["kind"], "host", "{listed}");
    assert_eq!(listed["pause_reason"], "vendor maintenance", "{listed}");
    let table = cli(&prefix, &["list"]).await.ok();
    assert!(
        table.stdout.contains("STATE") && table.stdout.contains(&dest),
        "{table:?}"
    );

    // Resume reaches the running process within 5 s; the held actions then flow, each once.
    let asked = Instant::now();
    cli(&prefix, &["resume", &dest]).await.ok();
    let destinations = h.app().connectors.http.destinations().clone();
    wait_until_within("the resume to arrive", Duration::from_secs(5), async || {
        !destinations.is_paused(&dest)
    })
    .await;
    eprintln!(
        "destinations figures: resume applied {:?} after the command started",
        asked.elapsed()
    );
    wait_until("every held action delivered", async || {
        paused.count() >= EVENTS
    })
    .await;
    assert_eq!(events(&paused).len(), EVENTS, "each action once");
    assert_eq!(paused.count(), EVENTS, "no duplicate call");
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_breaker_holds_actions_without_using_attempts_until_a_probe_succeeds() {
    let recovered = Arc::new(AtomicBool::new(false));
    let up = recovered.clone();
    let flaky = FakeServer::start(move |_| {
        if up.load(Ordering::SeqCst) {
            Reply::status(200)
        } else {
            Reply::text(503, "down for maintenance")
        }
    })
    .await;
    let dest = destination(&flaky);
    let h = Harness::start(
        "dest-breaker",
        &fanout(&[("flaky", &flaky)]),
        "destinations: { failure_threshold: 2, cool_down: 2s }\nworker: { concurrency: 4 }",
        &[],
    )
    .await;
    const EVENTS: usize = 4;
    publish_events(&h, "breaker", EVENTS).await;
    wait_until("the breaker to open", async || {
        status(&h, &dest).is_some_and(|s| s.state == State::Open)
    })
    .await;
    let failed = flaky.count();
    h.wait_metric("switchyard_breakers_open{connector=\"http\"}", 1.0)
        .await;
    recovered.store(true, Ordering::SeqCst);
    wait_until("every action delivered after the probe", async || {
        events(&flaky).len() == EVENTS && flaky.count() >= failed + EVENTS
    })
    .await;
    let seen = status(&h, &dest).expect("the destination is known");
    assert!(seen.holds > 0, "actions were held while open: {seen:?}");
    assert_eq!(seen.state, State::Healthy, "{seen:?}");
    assert_eq!(
        h.broker.queue_len(&h.name("dead-letter")).await,
        0,
        "one retry tier and a failed call each, yet nothing exhausted: holds are not attempts"
    );
    h.wait_metric("switchyard_breakers_open{connector=\"http\"}", 0.0)
        .await;
    h.finish().await;
}

/// A remote that answers its first call 429 with `Retry-After: retry_after`, then 200.
async fn throttled_once(retry_after: &'static str) -> FakeServer {
    let throttled = Arc::new(AtomicBool::new(true));
    FakeServer::start(move |_| {
        if throttled.swap(false, Ordering::SeqCst) {
            Reply {
                headers: vec![("retry-after".into(), retry_after.into())],
                ..Reply::text(429, "rate limited")
            }
        } else {
            Reply::status(200)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_holds_the_whole_destination_until_then() {
    let api = throttled_once("3").await;
    let h = Harness::start("dest-429", &fanout(&[("api", &api)]), "", &[]).await;
    publish_events(&h, "first", 1).await;
    wait_until("the 429", async || api.count() == 1).await;
    // Other actions for the destination, published after the 429, wait for the window too.
    publish_events(&h, "later", 3).await;
    wait_until("every action delivered", async || api.count() == 5).await;
    let requests = api.requests();
    let refused_at = requests[0].at;
    for r in &requests[1..] {
        let after = r.at.duration_since(refused_at);
        assert!(
            after >= Duration::from_millis(2900),
            "a call went {after:?} after Retry-After: 3"
        );
    }
    assert_eq!(events(&api).len(), 4);
    let seen = status(&h, &destination(&api)).expect("known");
    assert!(seen.holds > 0, "the later actions were held: {seen:?}");
    assert_ne!(seen.state, State::Open, "a throttle is not a failure");
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    h.finish().await;
}

/// A hold longer than the tier it waits in (a tier's queue releases in order, so a hold never
/// waits in one whose retries wait far longer than it does): back at the tier's end while the
/// destination is still held, it is held again for the rest, uncalled and uncounted, and called
/// once the window is over. Retry-After: 10 and a 6s tier: back after 6 s,
/// held again for the 4 s left, called after 10 s. No jitter, so no spread: every wait is the
/// window's rest, and every action is held exactly twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_hold_longer_than_its_tier_is_held_again_until_the_window_ends() {
    let api = throttled_once("10").await;
    const LATER: u64 = 10;
    let h = Harness::start(
        "dest-rehold",
        &fanout(&[("api", &api)]),
        "retry: { schedule: [6s, 60s], jitter: 0 }",
        &[],
    )
    .await;
    publish_events(&h, "first", 1).await;
    wait_until("the 429", async || api.count() == 1).await;
    publish_events(&h, "later", LATER as usize).await;
    wait_until("every action delivered", async || {
        api.count() == 2 + LATER as usize
    })
    .await;
    let requests = api.requests();
    let refused_at = requests[0].at;
    for r in &requests[1..] {
        let after = r.at.duration_since(refused_at);
        assert!(
            after >= Duration::from_millis(9900),
            "a call went {after:?} after Retry-After: 10"
        );
    }
    let seen = status(&h, &destination(&api)).expect("known");
    // Held in the 6s tier for its end, back while the window had 4 s left, held again.
    assert!(
        seen.holds >= 2 * LATER,
        "the actions back before the window's end were held again: {seen:?}"
    );
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_without_a_success_quarantines_until_resumed() {
    let healthy = Arc::new(AtomicBool::new(false));
    let up = healthy.clone();
    let dead = FakeServer::start(move |_| {
        if up.load(Ordering::SeqCst) {
            Reply::status(200)
        } else {
            Reply::text(502, "bad gateway")
        }
    })
    .await;
    let dest = destination(&dead);
    let h = Harness::start(
        "dest-quarantine",
        &fanout(&[("dead", &dead)]),
        "destinations: { quarantine_after: 2s, failure_threshold: 1000 }\nretry: { schedule: [1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s] }",
        &[],
    )
    .await;
    publish_events(&h, "quarantine", 1).await;
    wait_until("the quarantine", async || {
        status(&h, &dest).is_some_and(|s| s.state == State::Quarantined)
    })
    .await;
    let series = format!(
        "switchyard_destination_state{{destination=\"{dest}\",kind=\"host\",state=\"quarantined\"}}"
    );
    h.wait_metric(&series, 1.0).await;
    let calls = dead.count();
    wait_until("the quarantined action held", async || {
        status(&h, &dest).is_some_and(|s| s.holds >= 2)
    })
    .await;
    assert_eq!(dead.count(), calls, "no call while quarantined");

    healthy.store(true, Ordering::SeqCst);
    cli(&h.prefix, &["resume", &dest]).await.ok();
    wait_until("the action delivered after resume", async || {
        dead.count() > calls
    })
    .await;
    h.wait_metric(&series, 0.0).await;
    assert_eq!(h.broker.queue_len(&h.name("dead-letter")).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_and_resume_refuse_a_malformed_destination_and_say_why() {
    let ran = cli("dest-badarg", &["pause", "https://api.example.com/x"]).await;
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("not a destination"), "{ran:?}");
    let ran = cli("dest-badarg", &["resume", ""]).await;
    assert_eq!(ran.code, Some(1), "{ran:?}");
}
