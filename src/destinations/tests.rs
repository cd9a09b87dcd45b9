//! The destination states, table by table: breaker, rate limits, pauses, quarantine, gauges.

use super::*;
use crate::telemetry::Metrics;

fn config(
    threshold: u32,
    cool_down: Duration,
    quarantine_after: Duration,
    max_tracked: usize,
) -> DestinationsConfig {
    DestinationsConfig {
        quarantine_after,
        max_tracked,
        failure_threshold: threshold,
        cool_down,
    }
}

fn registry(config: DestinationsConfig) -> (Arc<Destinations>, Arc<Metrics>) {
    let metrics = Metrics::new(&["http"]);
    (Destinations::new(config, metrics.clone()), metrics)
}

fn host(id: &str) -> Destination {
    Destination {
        id: id.into(),
        kind: Kind::Host,
    }
}

fn failed() -> Report {
    Report {
        failed: true,
        error: Some("HTTP 503".into()),
        ..Report::default()
    }
}

/// Admits one call and records `report`; `None` when the destination held it.
fn call(destinations: &Arc<Destinations>, to: &Destination, report: Report) -> Option<Hold> {
    match destinations.admit(to, "http") {
        Admit::Call { ticket, .. } => {
            destinations.record(ticket, report);
            None
        }
        Admit::Hold(hold) => Some(hold),
    }
}

fn state_of(destinations: &Destinations, id: &str) -> State {
    destinations
        .statuses()
        .into_iter()
        .find(|status| status.id == id)
        .map_or(State::Healthy, |status| status.state)
}

#[test]
fn a_destination_is_a_host_and_port_or_a_named_connection_or_webhook() {
    let url = |text| url::Url::parse(text).expect("a URL");
    assert_eq!(
        Destination::host(&url("https://api.example.com/x")).id,
        "api.example.com"
    );
    assert_eq!(
        Destination::host(&url("http://127.0.0.1:8081/a")).id,
        "127.0.0.1:8081"
    );
    assert_ne!(
        Destination::host(&url("http://127.0.0.1:8081/a")),
        Destination::host(&url("http://127.0.0.1:8082/a")),
        "two services on one host are two destinations"
    );
    let webhook = Destination::webhook("crm-hooks");
    assert_eq!(
        Destination::from_header(&webhook.header_value()),
        Some(webhook)
    );
    let connection = Destination::connection("sf:prod");
    assert_eq!(
        Destination::from_header(&connection.header_value()),
        Some(connection)
    );
    assert_eq!(Destination::from_header("nonsense"), None);
}

#[test]
fn the_breaker_opens_after_the_threshold_holds_calls_probes_once_and_closes_on_success() {
    let (destinations, metrics) = registry(config(
        3,
        Duration::from_millis(50),
        Duration::from_secs(3600),
        10,
    ));
    let dead = host("dead.example");
    let other = host("healthy.example");
    for _ in 0..2 {
        assert_eq!(call(&destinations, &dead, failed()), None);
    }
    assert_eq!(state_of(&destinations, "dead.example"), State::Failing);
    assert_eq!(call(&destinations, &dead, failed()), None);
    assert_eq!(state_of(&destinations, "dead.example"), State::Open);
    let open = metrics
        .breakers_open
        .get_or_create(&ConnectorLabel { connector: "http" })
        .get();
    assert_eq!(open, 1);
    let hold = call(&destinations, &dead, Report::default()).expect("held while open");
    assert_eq!(hold.why, HoldWhy::Open);
    assert!(hold.wait >= Duration::from_secs(1), "{:?}", hold.wait);
    assert_eq!(
        hold.spread_over, hold.wait,
        "spread over the whole cool-down (here shorter than the 1 s floor of a wait)"
    );
    assert!(destinations.check(&dead).is_some());
    // Others are unaffected.
    assert_eq!(call(&destinations, &other, Report::default()), None);
    std::thread::sleep(Duration::from_millis(60));
    // After the cool-down one probe goes; a second caller is held while it runs.
    let Admit::Call { ticket: probe, .. } = destinations.admit(&dead, "http") else {
        panic!("the probe is let through");
    };
    assert!(matches!(destinations.admit(&dead, "http"), Admit::Hold(_)));
    destinations.record(probe, Report::default());
    assert_eq!(state_of(&destinations, "dead.example"), State::Healthy);
    assert_eq!(
        metrics
            .breakers_open
            .get_or_create(&ConnectorLabel { connector: "http" })
            .get(),
        0
    );
}

#[test]
fn a_throttled_answer_holds_the_whole_destination_until_the_reset_and_never_opens_the_breaker() {
    let (destinations, _) = registry(config(
        1,
        Duration::from_secs(30),
        Duration::from_secs(3600),
        10,
    ));
    let api = host("api.braze.example");
    let throttled = Report {
        throttled: true,
        retry_after: Some(Duration::from_secs(30)),
        error: Some("HTTP 429".into()),
        ..Report::default()
    };
    assert_eq!(call(&destinations, &api, throttled), None);
    let hold = call(&destinations, &api, Report::default()).expect("held for the reset");
    assert_eq!(hold.why, HoldWhy::RateLimited);
    assert!(
        hold.wait > Duration::from_secs(25) && hold.wait <= Duration::from_secs(30),
        "{:?}",
        hold.wait
    );
    assert_eq!(
        hold.spread_over,
        Duration::from_secs(30),
        "spread over the whole window, however much of it is left"
    );
    assert_ne!(state_of(&destinations, "api.braze.example"), State::Open);

    // A falling remaining budget spaces the calls out before the remote refuses.
    let spaced = host("spaced.example");
    let low = Report {
        limits: Limits {
            remaining: Some(4),
            reset: Some(Duration::from_millis(500)),
        },
        ..Report::default()
    };
    assert_eq!(call(&destinations, &spaced, low), None);
    let Admit::Call {
        after: first,
        ticket,
    } = destinations.admit(&spaced, "http")
    else {
        panic!("a short spacing is waited in process");
    };
    drop(ticket);
    let Admit::Call { after: second, .. } = destinations.admit(&spaced, "http") else {
        panic!("a short spacing is waited in process");
    };
    assert!(
        second > first,
        "each call waits its turn: {first:?} then {second:?}"
    );
    // None left: no call until the reset.
    let none = Report {
        limits: Limits {
            remaining: Some(0),
            reset: Some(Duration::from_secs(60)),
        },
        ..Report::default()
    };
    let empty = host("empty.example");
    assert_eq!(call(&destinations, &empty, none), None);
    assert_eq!(
        call(&destinations, &empty, Report::default()).map(|h| h.why),
        Some(HoldWhy::RateLimited)
    );
}

#[test]
fn a_pause_holds_every_kind_of_that_id_and_resume_releases_it() {
    let (destinations, _) = registry(config(
        5,
        Duration::from_secs(30),
        Duration::from_secs(3600),
        10,
    ));
    let crm = Destination::webhook("crm");
    assert_eq!(call(&destinations, &crm, Report::default()), None);
    destinations.pause(
        "crm",
        Pause {
            reason: "vendor maintenance".into(),
            by: "alice".into(),
            at: "2026-12-06T03:00:00Z".into(),
        },
    );
    let hold = call(&destinations, &crm, Report::default()).expect("held while paused");
    assert_eq!(hold.why, HoldWhy::Paused);
    assert!(
        hold.reason.contains("alice") && hold.reason.contains("vendor maintenance"),
        "{}",
        hold.reason
    );
    assert_eq!(state_of(&destinations, "crm"), State::Paused);
    destinations.resume("crm", "bob");
    assert_eq!(call(&destinations, &crm, Report::default()), None);
    assert_eq!(state_of(&destinations, "crm"), State::Healthy);
}

#[test]
fn failing_without_a_success_for_quarantine_after_quarantines_until_resumed() {
    let (destinations, metrics) = registry(config(
        100,
        Duration::from_secs(30),
        Duration::from_millis(30),
        10,
    ));
    let dead = host("dead.example:8443");
    assert_eq!(call(&destinations, &dead, failed()), None);
    std::thread::sleep(Duration::from_millis(40));
    destinations.refresh();
    assert_eq!(
        state_of(&destinations, "dead.example:8443"),
        State::Quarantined
    );
    let state = |state: State| {
        metrics
            .destination_state
            .get_or_create(&DestinationStateLabel {
                destination: "dead.example:8443".into(),
                kind: "host",
                state: state.as_str(),
            })
            .get()
    };
    assert_eq!((state(State::Quarantined), state(State::Healthy)), (1, 0));
    assert_eq!(
        call(&destinations, &dead, Report::default()).map(|h| h.why),
        Some(HoldWhy::Quarantined)
    );
    destinations.resume("dead.example:8443", "alice");
    assert_eq!(call(&destinations, &dead, Report::default()), None);
    destinations.refresh();
    assert_eq!((state(State::Quarantined), state(State::Healthy)), (0, 1));
}

#[test]
fn beyond_max_tracked_destinations_count_as_other() {
    let (destinations, metrics) = registry(config(
        5,
        Duration::from_secs(30),
        Duration::from_secs(3600),
        2,
    ));
    for id in ["a", "b", "c", "d"] {
        assert_eq!(call(&destinations, &host(id), Report::default()), None);
    }
    // Which two get a label of their own is first come (the map's order); each holds one.
    for id in ["a", "b", "c", "d"] {
        destinations.held(&host(id), 1);
    }
    destinations.refresh();
    let exported = metrics.encode();
    let own = ["a", "b", "c", "d"]
        .iter()
        .filter(|id| exported.contains(&format!("destination=\"{id}\"")))
        .count();
    assert_eq!(own, 2, "{exported}");
    let healthy_other = metrics
        .destination_state
        .get_or_create(&DestinationStateLabel {
            destination: OTHER.into(),
            kind: "host",
            state: "healthy",
        })
        .get();
    assert_eq!(healthy_other, 2);
    let held_other = metrics
        .held_actions
        .get_or_create(&DestinationLabel {
            destination: OTHER.into(),
        })
        .get();
    assert_eq!(held_other, 2, "{exported}");
}
