//! What a call's result means: success, retry later, or give up (SPEC §5). The shared types,
//! the generic status table and the helpers every classifier uses live here; what a vendor's
//! answer means lives with its connector (`connectors/<name>/classify.rs`), as a [`Classifier`].

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// Longest reason kept in a dead-letter header.
const MAX_REASON_CHARS: usize = 300;

/// Why an action was dead-lettered: `x-switchyard-error-class`, and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The remote refused it for good (4xx other than the retryable ones).
    Permanent,
    /// Retryable, but every attempt of the schedule was used.
    Exhausted,
    /// A template could not render.
    Template,
    /// A missing connection, workflow, action or secret; an unreadable action message.
    Config,
    /// The destination is a blocked address.
    Blocked,
}

impl ErrorClass {
    /// The header value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Permanent => "permanent",
            ErrorClass::Exhausted => "exhausted",
            ErrorClass::Template => "template",
            ErrorClass::Config => "config",
            ErrorClass::Blocked => "blocked",
        }
    }
}

/// A failed call, as an operator will read it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The class it would be dead-lettered with (retryable failures say `Exhausted`).
    pub class: ErrorClass,
    /// One line a person can act on, without secrets.
    pub reason: String,
    /// The HTTP status, when a response came back.
    pub status: Option<u16>,
    /// How long the remote asked us to wait (`Retry-After`, `X-RateLimit-Reset`).
    pub retry_after: Option<Duration>,
}

/// The result of one call.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Done; `output` becomes `steps.<action id>` for dependent actions.
    Success {
        /// The HTTP status.
        status: u16,
        /// The response JSON (or `{"status": N, "body": "…"}` for non-JSON bodies).
        output: Value,
    },
    /// Worth trying again later.
    Retry(Failure),
    /// Will never succeed as it is.
    Fail(Failure),
    /// Not called: the destination holds its calls (breaker open, paused, quarantined or
    /// rate-limited). The action goes back on the broker without using an attempt (SPEC §10).
    Held(crate::destinations::Hold),
}

impl Outcome {
    /// A permanent failure of the given class.
    pub fn fail(class: ErrorClass, reason: impl Into<String>) -> Outcome {
        Outcome::Fail(Failure {
            class,
            reason: one_line(&reason.into()),
            status: None,
            retry_after: None,
        })
    }

    /// A retryable failure without a response (connection refused, timeout).
    pub fn retry(reason: impl Into<String>) -> Outcome {
        Outcome::Retry(Failure {
            class: ErrorClass::Exhausted,
            reason: one_line(&reason.into()),
            status: None,
            retry_after: None,
        })
    }
}

/// Whether a status is worth retrying (SPEC §5).
pub fn status_is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 425 | 429 | 500 | 502 | 503 | 504)
}

/// Classifies a complete HTTP response. `host` names the remote in the reason.
pub fn classify_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    host: &str,
) -> Outcome {
    if status.is_success() {
        return Outcome::Success {
            status: status.as_u16(),
            output: response_output(status, body),
        };
    }
    let failure = Failure {
        class: ErrorClass::Permanent,
        reason: http_reason(status, host, body),
        status: Some(status.as_u16()),
        retry_after: retry_after(headers, SystemTime::now()),
    };
    if status_is_retryable(status) {
        Outcome::Retry(Failure {
            class: ErrorClass::Exhausted,
            ..failure
        })
    } else {
        Outcome::Fail(failure)
    }
}

/// The JSON a successful call hands to dependent actions.
pub fn response_output(status: StatusCode, body: &[u8]) -> Value {
    if body.is_empty() {
        return serde_json::json!({ "status": status.as_u16() });
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => value,
        Err(_) => serde_json::json!({
            "status": status.as_u16(),
            "body": String::from_utf8_lossy(body),
        }),
    }
}

/// `HTTP 400 from api.hubapi.com: Property values were not valid`.
pub fn http_reason(status: StatusCode, host: &str, body: &[u8]) -> String {
    let code = status.as_u16();
    match error_message(body) {
        Some(message) => one_line(&format!("HTTP {code} from {host}: {message}")),
        None => match status.canonical_reason() {
            Some(text) => format!("HTTP {code} {text} from {host}"),
            None => format!("HTTP {code} from {host}"),
        },
    }
}

/// The human part of an error body: common JSON error keys, or the text itself.
pub fn error_message(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    if let Ok(json) = serde_json::from_slice::<Value>(body) {
        return json_message(&json);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn json_message(json: &Value) -> Option<String> {
    match json {
        Value::Array(items) => items.first().and_then(json_message),
        Value::Object(map) => {
            let text = |key: &str| {
                map.get(key)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            let main = ["message", "detail", "error_description", "title", "error"]
                .into_iter()
                .find_map(text)?;
            // Mailchimp: title + detail; Salesforce: errorCode + message.
            let prefix = text("errorCode").or_else(|| text("title").filter(|t| *t != main));
            Some(match prefix {
                Some(prefix) => format!("{prefix}: {main}"),
                None => main.to_owned(),
            })
        }
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// How long the remote asked us to wait: `Retry-After` (seconds or an HTTP date), or
/// `X-RateLimit-Reset` / `RateLimit-Reset` ([`crate::destinations::limits::reset_time`]).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = header("retry-after") {
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(when) = httpdate_parse(value) {
            return Some(when.duration_since(now).unwrap_or_default());
        }
    }
    header("x-ratelimit-reset")
        .or_else(|| header("ratelimit-reset"))
        .and_then(|value| crate::destinations::limits::reset_time(value, now))
}

fn httpdate_parse(value: &str) -> Result<SystemTime, ()> {
    let parsed = chrono::DateTime::parse_from_rfc2822(value).map_err(|_| ())?;
    let secs = u64::try_from(parsed.timestamp()).map_err(|_| ())?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Replaces every secret value (and its base64 form, as in a Basic credential) in a text with
/// `[redacted]`. Values shorter than 4 characters are left alone: they cannot be told from text.
/// A reason cut short by [`one_line`] may end in the first characters of a secret; that tail is
/// redacted too.
pub fn redact<'a>(text: &str, secrets: impl Iterator<Item = &'a String>) -> String {
    use base64::Engine as _;
    let mut out = text.to_owned();
    for secret in secrets.filter(|s| s.len() >= 4) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
        for value in [secret.as_str(), encoded.as_str()] {
            if out.contains(value) {
                out = out.replace(value, "[redacted]");
            }
            redact_cut_tail(&mut out, value);
        }
    }
    out
}

/// If `text` was truncated (it ends in `…`) right inside `secret`, replaces the secret's first
/// characters before the `…` with `[redacted]`.
fn redact_cut_tail(text: &mut String, secret: &str) {
    let Some(body) = text.strip_suffix('…') else {
        return;
    };
    // Longest prefix first; a prefix of fewer than 4 bytes cannot be told from text.
    let cut = (4..secret.len())
        .rev()
        .filter(|&i| secret.is_char_boundary(i))
        .find(|&i| body.ends_with(&secret[..i]));
    if let Some(len) = cut {
        let keep = body.len() - len;
        text.truncate(keep);
        text.push_str("[redacted]…");
    }
}

/// Folds a message onto one line and truncates it.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REASON_CHARS + 1));
    let mut last_space = false;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if out.chars().count() >= MAX_REASON_CHARS {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out.trim().to_owned()
}

/// A classifier: a complete response (status, headers, body, host for the reason) → outcome.
pub type Classifier = fn(StatusCode, &HeaderMap, &[u8], &str) -> Outcome;

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn classify(status: u16, body: &str, headers: &[(&'static str, &str)]) -> Outcome {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        let status = StatusCode::from_u16(status).expect("status");
        classify_response(status, &map, body.as_bytes(), "api.example.com")
    }

    #[test]
    fn statuses_are_classified_as_the_spec_says() {
        let table: &[(u16, &str)] = &[
            (200, "success"),
            (201, "success"),
            (204, "success"),
            (400, "fail"),
            (401, "fail"),
            (403, "fail"),
            (404, "fail"),
            (408, "retry"),
            (409, "fail"),
            (410, "fail"),
            (422, "fail"),
            (425, "retry"),
            (429, "retry"),
            (500, "retry"),
            (501, "fail"),
            (502, "retry"),
            (503, "retry"),
            (504, "retry"),
        ];
        for (status, want) in table {
            let got = match classify(*status, "", &[]) {
                Outcome::Success { .. } => "success",
                Outcome::Retry(_) => "retry",
                Outcome::Fail(_) => "fail",
                Outcome::Held(_) => "held",
            };
            assert_eq!(got, *want, "status {status}");
        }
    }

    #[test]
    fn reasons_quote_the_remote() {
        let table: &[(u16, &str, &str)] = &[
            (
                400,
                r#"{"status":"error","message":"Property values were not valid: [lead_source]","category":"VALIDATION_ERROR"}"#,
                "HTTP 400 from api.example.com: Property values were not valid: [lead_source]",
            ),
            (
                400,
                r#"[{"message":"Required fields are missing: [LastName]","errorCode":"REQUIRED_FIELD_MISSING","fields":["LastName"]}]"#,
                "HTTP 400 from api.example.com: REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]",
            ),
            (
                400,
                r#"{"title":"Member In Compliance State","status":400,"detail":"ana@example.com is in a compliance state"}"#,
                "HTTP 400 from api.example.com: Member In Compliance State: ana@example.com is in a compliance state",
            ),
            (
                404,
                "channel_not_found",
                "HTTP 404 from api.example.com: channel_not_found",
            ),
            (410, "", "HTTP 410 Gone from api.example.com"),
            (
                400,
                "line one\nline two",
                "HTTP 400 from api.example.com: line one line two",
            ),
        ];
        for (status, body, want) in table {
            let Outcome::Fail(failure) = classify(*status, body, &[]) else {
                panic!("{status} should fail");
            };
            assert_eq!(failure.reason, *want);
            assert_eq!(failure.status, Some(*status));
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let cases: &[(&'static str, &str, Option<u64>)] = &[
            ("retry-after", "3", Some(3)),
            ("retry-after", "Fri, 15 Jan 2027 08:00:30 GMT", None),
            ("x-ratelimit-reset", "1800000010", Some(10)),
            ("x-ratelimit-reset", "7", Some(7)),
            ("retry-after", "soon", None),
        ];
        for (name, value, want) in cases {
            let mut map = HeaderMap::new();
            map.insert(*name, HeaderValue::from_str(value).expect("header"));
            let got = retry_after(&map, now).map(|d| d.as_secs());
            match want {
                Some(secs) => assert_eq!(got, Some(*secs), "{name}: {value}"),
                None if *value == "soon" => assert_eq!(got, None),
                None => assert!(got.is_some(), "{name}: {value} should parse"),
            }
        }
    }

    #[test]
    fn secrets_are_redacted_from_reasons() {
        let secrets = ["sk_live_123456".to_string(), "abc".to_string()];
        let reason = "HTTP 401 from x: key sk_live_123456 (c2tfbGl2ZV8xMjM0NTY=) is not valid; abc";
        assert_eq!(
            redact(reason, secrets.iter()),
            "HTTP 401 from x: key [redacted] ([redacted]) is not valid; abc"
        );
    }

    #[test]
    fn a_secret_cut_by_the_truncation_is_redacted_too() {
        let secret = "sk_live_0123456789abcdef".to_string();
        let body = format!(
            "{} token {secret} rejected",
            "x".repeat(MAX_REASON_CHARS - 16)
        );
        let reason = one_line(&body);
        assert!(
            reason.ends_with('…') && reason.contains("sk_live_0"),
            "{reason}"
        );
        let redacted = redact(&reason, std::iter::once(&secret));
        assert!(redacted.ends_with(" token [redacted]…"), "{redacted}");
        assert!(!redacted.contains("sk_live"), "{redacted}");
        // A text that merely ends like the start of a short word is left alone.
        assert_eq!(redact("see sk…", std::iter::once(&secret)), "see sk…");
    }

    #[test]
    fn long_reasons_are_truncated() {
        let reason = one_line(&"x".repeat(1000));
        assert!(reason.chars().count() <= MAX_REASON_CHARS + 1);
        assert!(reason.ends_with('…'));
    }
}

/// Table tests of a classifier, shared by the connectors' classifier tests.
#[cfg(test)]
pub(crate) mod cases {
    use reqwest::StatusCode;
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::{Classifier, Outcome};

    /// (status, body, headers) → "success" | "retry" | "fail", and a text the reason must hold.
    pub(crate) type Case = (
        u16,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );

    pub(crate) fn run(classifier: Classifier, cases: &[Case]) {
        for (status, body, headers, want, reason) in cases {
            let mut map = HeaderMap::new();
            for (k, v) in *headers {
                map.insert(*k, HeaderValue::from_str(v).expect("header"));
            }
            let status_code = StatusCode::from_u16(*status).expect("status");
            let got = classifier(status_code, &map, body.as_bytes(), "api.example.com");
            let (kind, text) = match &got {
                Outcome::Success { .. } => ("success", String::new()),
                Outcome::Retry(f) => ("retry", f.reason.clone()),
                Outcome::Fail(f) => ("fail", f.reason.clone()),
                Outcome::Held(h) => ("held", h.reason.clone()),
            };
            assert_eq!(kind, *want, "{status} {body}: {got:?}");
            assert!(
                text.contains(reason),
                "{status} {body}: {text:?} lacks {reason:?}"
            );
        }
    }
}
