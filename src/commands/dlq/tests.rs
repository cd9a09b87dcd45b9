use super::*;
use chrono::Utc;
use lapin::BasicProperties;
use lapin::types::FieldTable;

use crate::broker::message::{
    H_ACTION, H_CLASS, H_CONNECTOR, H_DEAD_AT, H_REASON, H_WORKFLOW, H_WORKSPACE,
};
use crate::broker::set_str;
use crate::delivery::dead_letter::DeadLetter;

fn record(headers: &[(&str, &str)], body: &str) -> Record {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        set_str(&mut table, name, *value);
    }
    let properties = BasicProperties::default()
        .with_message_id("act_1".into())
        .with_headers(table);
    Record {
        tag: 1,
        letter: DeadLetter::new(properties, body.as_bytes().to_vec()),
    }
}

#[test]
fn filters_combine_and_reason_is_case_insensitive() {
    let r = record(
        &[
            (H_CONNECTOR, "http"),
            (H_WORKFLOW, "lead-sync"),
            (H_ACTION, "hubspot"),
            (H_WORKSPACE, "ws_1"),
            (H_CLASS, "permanent"),
            (
                H_REASON,
                "HTTP 400 from api.hubapi.com: Property values were not valid",
            ),
            (H_DEAD_AT, "2024-05-01T12:00:00.5+00:00"),
        ],
        "{}",
    );
    let when = |s| parse_when(s).ok();
    let cases = [
        (Filter::default(), true),
        (
            Filter {
                connector: Some("http".into()),
                workflow: Some("lead-sync".into()),
                ..Filter::default()
            },
            true,
        ),
        (
            Filter {
                connector: Some("webhook".into()),
                ..Filter::default()
            },
            false,
        ),
        (
            Filter {
                reason: Some("property VALUES".into()),
                ..Filter::default()
            },
            true,
        ),
        (
            Filter {
                reason: Some("timeout".into()),
                ..Filter::default()
            },
            false,
        ),
        (
            Filter {
                since: when("2024-05-01T12:00:00Z"),
                until: when("2024-05-01T13:00:00Z"),
                ..Filter::default()
            },
            true,
        ),
        (
            Filter {
                since: when("2024-05-01T12:00:01Z"),
                ..Filter::default()
            },
            false,
        ),
        (
            Filter {
                class: Some("exhausted".into()),
                ..Filter::default()
            },
            false,
        ),
        (
            Filter {
                action: Some("hubspot".into()),
                workspace: Some("ws_1".into()),
                ..Filter::default()
            },
            true,
        ),
    ];
    for (i, (filter, expected)) in cases.iter().enumerate() {
        assert_eq!(filter.matches(&r), *expected, "case {i}: {filter:?}");
    }
}

#[test]
fn missing_headers_fall_back_to_the_body() {
    let r = record(
        &[],
        r#"{"id":"act_1","webhook":"crm","action":"deliver","connector":"webhook","workspace":"w","event":{}}"#,
    );
    assert_eq!(r.connector().as_deref(), Some("webhook"));
    assert_eq!(r.workflow().as_deref(), Some("crm"));
    assert_eq!(r.action().as_deref(), Some("deliver"));
    // No dead-letter time: a time filter excludes it.
    let filter = Filter {
        until: parse_when("1s").ok(),
        ..Filter::default()
    };
    assert!(!filter.matches(&r));
}

#[test]
fn relative_and_absolute_times_parse() {
    let two_hours = parse_when("2h").ok();
    let expected = Utc::now() - chrono::Duration::hours(2);
    assert!(two_hours.is_some_and(|t| (t - expected).num_seconds().abs() < 5));
    assert!(parse_when("2024-05-01T12:00:00+02:00").is_ok());
    assert!(parse_when("yesterday").is_err());
    assert!(positive_rate("0").is_err());
    assert!(positive_rate("2.5").is_ok());
}

#[test]
fn tables_align() {
    let mut out = Vec::new();
    table(
        &mut out,
        &["RECORDS", "CONNECTOR"],
        &[true, false],
        &[
            vec!["12".into(), "http".into()],
            vec!["3".into(), "webhook".into()],
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "RECORDS  CONNECTOR\n     12  http\n      3  webhook\n"
    );
}
