//! What a call's result means: success, retry later, or give up. Decided here and nowhere else
//! (SPEC §5).

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

/// How long the remote asked us to wait: `Retry-After` (seconds or an HTTP date) or
/// `X-RateLimit-Reset` (epoch seconds, or seconds from now when small).
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
    let reset = header("x-ratelimit-reset")?.parse::<f64>().ok()?;
    if !reset.is_finite() || reset < 0.0 {
        return None;
    }
    // Values below a year's worth of seconds are a delta; larger ones an epoch time.
    if reset < 31_536_000.0 {
        return Some(Duration::from_secs_f64(reset));
    }
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(reset);
    Some(when.duration_since(now).unwrap_or_default())
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

/// How long a Salesforce daily API limit (`REQUEST_LIMIT_EXCEEDED` … `TotalRequests`) asks us to
/// wait: the limit is a rolling 24 hours, so this stretches the retry to the largest tier.
pub const SALESFORCE_DAILY_LIMIT_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A classifier: a complete response (status, headers, body, host for the reason) → outcome.
pub type Classifier = fn(StatusCode, &HeaderMap, &[u8], &str) -> Outcome;

/// Salesforce REST API responses. Errors are a JSON array `[{"message","errorCode","fields"?}]`
/// and are classified by `errorCode` (connectors.md): `UNABLE_TO_LOCK_ROW` and the concurrent
/// `REQUEST_LIMIT_EXCEEDED` are retried whatever the status; the daily limit (`TotalRequests`)
/// waits for the largest retry tier; a 300 (several records match an external id) and the
/// validation codes are permanent. A 401 comes back as a permanent failure with `status: 401`:
/// the connector cures it by fetching a new token and replaying once.
pub fn classify_salesforce(
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
    let code = status.as_u16();
    let waited = retry_after(headers, SystemTime::now());
    if code == 300 {
        let candidates = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        return Outcome::Fail(Failure {
            class: ErrorClass::Permanent,
            reason: format!(
                "HTTP 300 from {host}: {candidates} records match the external id; make the external id field unique"
            ),
            status: Some(code),
            retry_after: None,
        });
    }
    let errors = salesforce_errors(body);
    let reason = match errors.first() {
        Some(first) => {
            let mut text = format!("HTTP {code} from {host}: {}", first.describe());
            if errors.len() > 1 {
                text.push_str(&format!(" (and {} more error(s))", errors.len() - 1));
            }
            one_line(&text)
        }
        None => http_reason(status, host, body),
    };
    let has = |wanted: &str| errors.iter().any(|e| e.code == wanted);
    let retry = |retry_after| {
        Outcome::Retry(Failure {
            class: ErrorClass::Exhausted,
            reason: reason.clone(),
            status: Some(code),
            retry_after,
        })
    };
    if has("REQUEST_LIMIT_EXCEEDED") {
        let daily = errors
            .iter()
            .any(|e| e.code == "REQUEST_LIMIT_EXCEEDED" && e.message.contains("TotalRequests"));
        return if daily {
            retry(Some(waited.map_or(SALESFORCE_DAILY_LIMIT_WAIT, |w| {
                w.max(SALESFORCE_DAILY_LIMIT_WAIT)
            })))
        } else {
            retry(waited)
        };
    }
    if has("UNABLE_TO_LOCK_ROW") || has("SERVER_UNAVAILABLE") || status_is_retryable(status) {
        return retry(waited);
    }
    Outcome::Fail(Failure {
        class: ErrorClass::Permanent,
        reason,
        status: Some(code),
        retry_after: None,
    })
}

/// The Salesforce OAuth token endpoint: errors are `{"error","error_description"}`. Refused
/// credentials are permanent; 5xx and the other retryable statuses are retried.
pub fn classify_salesforce_token(
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
    let json = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let text = |key: &str| {
        json.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let reason = match (text("error"), text("error_description")) {
        (Some(error), Some(description)) => one_line(&format!(
            "HTTP {} from {host}: the token request was refused: {error}: {description}",
            status.as_u16()
        )),
        (Some(error), None) => one_line(&format!(
            "HTTP {} from {host}: the token request was refused: {error}",
            status.as_u16()
        )),
        _ => format!("{} (token request)", http_reason(status, host, body)),
    };
    let failure = Failure {
        class: ErrorClass::Permanent,
        reason,
        status: Some(status.as_u16()),
        retry_after: retry_after(headers, SystemTime::now()),
    };
    if status_is_retryable(status) {
        Outcome::Retry(Failure {
            class: ErrorClass::Exhausted,
            ..failure
        })
    } else {
        Outcome::Fail(Failure {
            retry_after: None,
            ..failure
        })
    }
}

/// One entry of a Salesforce error array.
#[derive(Debug, Default)]
struct SalesforceError {
    /// `errorCode`.
    code: String,
    /// `message`.
    message: String,
    /// `fields`, when present.
    fields: Vec<String>,
    /// From `duplicateResult` (or the misspelled `duplicateResut` seen in the wild): the rule and
    /// the matching records, so the reason says which record already exists.
    duplicates: Option<String>,
}

impl SalesforceError {
    fn describe(&self) -> String {
        let mut text = match (self.code.is_empty(), self.message.is_empty()) {
            (false, false) => format!("{}: {}", self.code, self.message),
            (false, true) => self.code.clone(),
            (true, _) => self.message.clone(),
        };
        if !self.fields.is_empty() && !self.message.contains(&self.fields.join(", ")) {
            text.push_str(&format!(" (fields: {})", self.fields.join(", ")));
        }
        if let Some(duplicates) = &self.duplicates {
            text.push_str(&format!(" ({duplicates})"));
        }
        text
    }
}

/// Reads a Salesforce error body: an array of errors, or (tolerated) a single error object.
fn salesforce_errors(body: &[u8]) -> Vec<SalesforceError> {
    let items = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items,
        Ok(object @ Value::Object(_)) => vec![object],
        _ => return Vec::new(),
    };
    items
        .iter()
        .filter_map(|item| {
            let map = item.as_object()?;
            let text = |key: &str| {
                map.get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let fields = map
                .get("fields")
                .and_then(Value::as_array)
                .map(|f| {
                    f.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let duplicates = map
                .get("duplicateResult")
                .or_else(|| map.get("duplicateResut"))
                .and_then(describe_duplicates);
            Some(SalesforceError {
                code: text("errorCode"),
                message: text("message"),
                fields,
                duplicates,
            })
        })
        .collect()
}

/// `duplicate rule Standard_Lead_Duplicate_Rule; matches: Lead 00Q…, Lead 00Q…`.
fn describe_duplicates(result: &Value) -> Option<String> {
    let rule = result.get("duplicateRule").and_then(Value::as_str);
    let mut matches = Vec::new();
    for found in result
        .get("matchResults")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for record in found
            .get("matchRecords")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let record = record.get("record").unwrap_or(&Value::Null);
            let id = record.get("Id").and_then(Value::as_str);
            let kind = record
                .pointer("/attributes/type")
                .and_then(Value::as_str)
                .or_else(|| found.get("entityType").and_then(Value::as_str));
            match (kind, id) {
                (Some(kind), Some(id)) => matches.push(format!("{kind} {id}")),
                (None, Some(id)) => matches.push(id.to_owned()),
                _ => {}
            }
        }
    }
    match (rule, matches.is_empty()) {
        (None, true) => None,
        (Some(rule), true) => Some(format!("duplicate rule {rule}")),
        (None, false) => Some(format!("matches: {}", matches.join(", "))),
        (Some(rule), false) => Some(format!(
            "duplicate rule {rule}; matches: {}",
            matches.join(", ")
        )),
    }
}

/// Mailchimp Marketing API responses. Errors are `application/problem+json`
/// (`{"type"?,"title","status","detail","instance"}`; `type` is often missing). 429 and 5xx are
/// retried, except 503 `ComplianceRelated`; a 403 without a problem document is the throttling
/// Mailchimp answers at high volume, and is retried too. Business errors ("Member In Compliance
/// State", "Forgotten Email Not Subscribed", …) are permanent, with title and detail in the reason.
pub fn classify_mailchimp(
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
    let problem = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(|v| v.get("title").is_some() || v.get("detail").is_some());
    let title = problem
        .as_ref()
        .and_then(|p| p.get("title"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut reason = http_reason(status, host, body);
    if title == "Member In Compliance State" {
        reason = one_line(&format!(
            "{reason} (the contact unsubscribed or was cleaned; resubscribing needs status: pending, which sends a confirmation email)"
        ));
    }
    let code = status.as_u16();
    let retryable = match code {
        503 => title != "ComplianceRelated",
        403 => problem.is_none(),
        _ => status_is_retryable(status),
    };
    let failure = Failure {
        class: ErrorClass::Permanent,
        reason,
        status: Some(code),
        retry_after: retry_after(headers, SystemTime::now()),
    };
    if retryable {
        Outcome::Retry(Failure {
            class: ErrorClass::Exhausted,
            ..failure
        })
    } else {
        Outcome::Fail(Failure {
            retry_after: None,
            ..failure
        })
    }
}

/// Braze REST API responses: 201 (and 202 "queued", during maintenance) are success — a partial
/// success (`errors` next to `"message":"success"`) too, since the valid items were applied; the
/// connector logs and counts those errors. 429 waits until `X-RateLimit-Reset`; 5xx is retried;
/// other errors (`{"message","errors"}` with 400/401/403/404/413/415) are permanent.
pub fn classify_braze(status: StatusCode, headers: &HeaderMap, body: &[u8], host: &str) -> Outcome {
    classify_response(status, headers, body, host)
}

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

    /// (status, body, headers) → "success" | "retry" | "fail", and a text the reason must hold.
    type Case = (
        u16,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );

    fn run(classifier: Classifier, cases: &[Case]) {
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
            };
            assert_eq!(kind, *want, "{status} {body}: {got:?}");
            assert!(
                text.contains(reason),
                "{status} {body}: {text:?} lacks {reason:?}"
            );
        }
    }

    #[test]
    fn salesforce_errors_are_classified_by_error_code() {
        let cases: &[Case] = &[
            (
                201,
                r#"{"id":"00Q1","success":true,"errors":[]}"#,
                &[],
                "success",
                "",
            ),
            (204, "", &[], "success", ""),
            (
                400,
                r#"[{"message":"unable to obtain exclusive access to this record","errorCode":"UNABLE_TO_LOCK_ROW","fields":[]}]"#,
                &[],
                "retry",
                "UNABLE_TO_LOCK_ROW",
            ),
            (
                500,
                r#"[{"message":"unable to obtain exclusive access","errorCode":"UNABLE_TO_LOCK_ROW"}]"#,
                &[],
                "retry",
                "UNABLE_TO_LOCK_ROW",
            ),
            (
                403,
                r#"[{"message":"ConcurrentPerOrgLongTxn Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
                &[],
                "retry",
                "REQUEST_LIMIT_EXCEEDED",
            ),
            (
                403,
                r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
                &[],
                "retry",
                "TotalRequests",
            ),
            (
                400,
                r#"[{"message":"Required fields are missing: [LastName]","errorCode":"REQUIRED_FIELD_MISSING","fields":["LastName"]}]"#,
                &[],
                "fail",
                "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]",
            ),
            (
                400,
                r#"[{"message":"No such column 'Foo' on sobject of type Lead","errorCode":"INVALID_FIELD"}]"#,
                &[],
                "fail",
                "INVALID_FIELD",
            ),
            (
                400,
                r#"[{"message":"unexpected token: 'FROM'","errorCode":"MALFORMED_QUERY"}]"#,
                &[],
                "fail",
                "MALFORMED_QUERY",
            ),
            (
                400,
                r#"[{"message":"bad email","errorCode":"INVALID_EMAIL_ADDRESS","fields":["Email"]}]"#,
                &[],
                "fail",
                "INVALID_EMAIL_ADDRESS: bad email (fields: Email)",
            ),
            (
                400,
                r#"[{"message":"Use one of these records?","errorCode":"DUPLICATES_DETECTED","fields":[],"duplicateResut":{"allowSave":false,"duplicateRule":"Standard_Lead_Duplicate_Rule","duplicateRuleEntityType":"Lead","errorMessage":"Use one of these records?","matchResults":[{"entityType":"Lead","matchEngine":"FuzzyMatchEngine","matchRecords":[{"additionalInformation":[],"fieldDiffs":[],"matchConfidence":100.0,"record":{"attributes":{"type":"Lead","url":"/services/data/v61.0/sobjects/Lead/00Q5e00000AbCdE"},"Id":"00Q5e00000AbCdE"}}],"rule":"Standard_Lead_Match_Rule_v1_0","size":1,"success":true}]}}]"#,
                &[],
                "fail",
                "DUPLICATES_DETECTED: Use one of these records? (duplicate rule Standard_Lead_Duplicate_Rule; matches: Lead 00Q5e00000AbCdE)",
            ),
            (
                400,
                r#"[{"message":"Use one of these records?","errorCode":"DUPLICATES_DETECTED","duplicateResult":{"duplicateRule":"Contact_Rule","matchResults":[{"entityType":"Contact","matchRecords":[{"record":{"Id":"0031"}}]}]}}]"#,
                &[],
                "fail",
                "matches: Contact 0031",
            ),
            (
                400,
                r#"[{"message":"Komo score must be positive","errorCode":"FIELD_CUSTOM_VALIDATION_EXCEPTION","fields":[]}]"#,
                &[],
                "fail",
                "FIELD_CUSTOM_VALIDATION_EXCEPTION: Komo score must be positive",
            ),
            (
                404,
                r#"[{"errorCode":"NOT_FOUND","message":"The requested resource does not exist"}]"#,
                &[],
                "fail",
                "NOT_FOUND",
            ),
            (
                404,
                r#"[{"errorCode":"ENTITY_IS_DELETED","message":"entity is deleted"}]"#,
                &[],
                "fail",
                "ENTITY_IS_DELETED",
            ),
            (
                401,
                r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#,
                &[],
                "fail",
                "INVALID_SESSION_ID",
            ),
            (
                300,
                r#"["/services/data/v61.0/sobjects/Contact/0031","/services/data/v61.0/sobjects/Contact/0032"]"#,
                &[],
                "fail",
                "2 records match the external id",
            ),
            (503, "<html>Service Unavailable</html>", &[], "retry", "503"),
            (502, "", &[], "retry", "502"),
            (
                400,
                r#"[{"message":"a","errorCode":"INVALID_TYPE"},{"message":"b","errorCode":"INVALID_FIELD"}]"#,
                &[],
                "fail",
                "INVALID_TYPE: a (and 1 more error(s))",
            ),
        ];
        run(classify_salesforce, cases);
    }

    #[test]
    fn salesforce_daily_limit_waits_for_the_largest_tier() {
        let body = br#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#;
        let Outcome::Retry(daily) =
            classify_salesforce(StatusCode::FORBIDDEN, &HeaderMap::new(), body, "x")
        else {
            panic!("daily limit retries");
        };
        assert_eq!(daily.retry_after, Some(SALESFORCE_DAILY_LIMIT_WAIT));
        let body = br#"[{"message":"ConcurrentPerOrgLongTxn Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#;
        let Outcome::Retry(concurrent) =
            classify_salesforce(StatusCode::FORBIDDEN, &HeaderMap::new(), body, "x")
        else {
            panic!("concurrency limit retries");
        };
        assert_eq!(concurrent.retry_after, None, "quick retries with backoff");
    }

    #[test]
    fn salesforce_token_errors() {
        let cases: &[Case] = &[
            (
                200,
                r#"{"access_token":"t","instance_url":"https://x"}"#,
                &[],
                "success",
                "",
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#,
                &[],
                "fail",
                "the token request was refused: invalid_grant: expired access/refresh token",
            ),
            (
                400,
                r#"{"error":"invalid_client_id","error_description":"client identifier invalid"}"#,
                &[],
                "fail",
                "invalid_client_id",
            ),
            (503, "", &[], "retry", "token request"),
        ];
        run(classify_salesforce_token, cases);
    }

    #[test]
    fn mailchimp_problems_with_or_without_type() {
        let cases: &[Case] = &[
            (
                200,
                r#"{"id":"62eeb292278cc15f5817cb78f7790b08","status":"subscribed"}"#,
                &[],
                "success",
                "",
            ),
            (204, "", &[], "success", ""),
            (
                400,
                r#"{"title":"Member In Compliance State","status":400,"detail":"urist@example.com is already a list member in compliance state due to unsubscribe, bounce, or compliance review.","instance":"9f7e8a6b"}"#,
                &[],
                "fail",
                "Member In Compliance State: urist@example.com is already a list member in compliance state",
            ),
            (
                400,
                r#"{"type":"https://mailchimp.com/developer/marketing/docs/errors/","title":"Forgotten Email Not Subscribed","status":400,"detail":"urist@example.com was permanently deleted and cannot be re-imported.","instance":"a1"}"#,
                &[],
                "fail",
                "Forgotten Email Not Subscribed: urist@example.com was permanently deleted",
            ),
            (
                400,
                r#"{"title":"Member Exists","status":400,"detail":"urist@example.com is already a list member."}"#,
                &[],
                "fail",
                "Member Exists",
            ),
            (
                400,
                r#"{"title":"Invalid Resource","status":400,"detail":"The resource submitted could not be validated."}"#,
                &[],
                "fail",
                "Invalid Resource",
            ),
            (
                404,
                r#"{"title":"Resource Not Found","status":404,"detail":"The requested resource could not be found."}"#,
                &[],
                "fail",
                "Resource Not Found",
            ),
            (
                401,
                r#"{"title":"API Key Invalid","status":401,"detail":"Your API key may be invalid, or you've attempted to access the wrong datacenter."}"#,
                &[],
                "fail",
                "API Key Invalid",
            ),
            (
                403,
                r#"{"title":"Forbidden","status":403,"detail":"The API key provided is linked to a different datacenter"}"#,
                &[],
                "fail",
                "Forbidden",
            ),
            (403, "", &[], "retry", "403"),
            (
                429,
                r#"{"title":"Too Many Requests","status":429,"detail":"You have exceeded the limit of 10 simultaneous connections."}"#,
                &[],
                "retry",
                "Too Many Requests",
            ),
            (429, "", &[], "retry", "429"),
            (
                500,
                r#"{"title":"Internal Server Error","status":500,"detail":"An unexpected internal error has occurred."}"#,
                &[],
                "retry",
                "Internal Server Error",
            ),
            (
                503,
                r#"{"title":"ComplianceRelated","status":503,"detail":"This account has been flagged for a compliance reason."}"#,
                &[],
                "fail",
                "ComplianceRelated",
            ),
            (
                503,
                r#"{"title":"Service Unavailable","status":503,"detail":"try later"}"#,
                &[],
                "retry",
                "Service Unavailable",
            ),
        ];
        run(classify_mailchimp, cases);
    }

    #[test]
    fn braze_responses() {
        let cases: &[Case] = &[
            (
                201,
                r#"{"message":"success","attributes_processed":1,"events_processed":1}"#,
                &[],
                "success",
                "",
            ),
            (
                201,
                r#"{"message":"success","errors":[{"type":"'name' is required","input_array":"events","index":0}]}"#,
                &[],
                "success",
                "",
            ),
            (202, r#"{"message":"queued"}"#, &[], "success", ""),
            (
                400,
                r#"{"message":"Max Input Length Exceeded","errors":[]}"#,
                &[],
                "fail",
                "Max Input Length Exceeded",
            ),
            (
                401,
                r#"{"message":"Invalid API Key"}"#,
                &[],
                "fail",
                "Invalid API Key",
            ),
            (413, "", &[], "fail", "413"),
            (
                429,
                r#"{"message":"Rate limit exceeded"}"#,
                &[("x-ratelimit-reset", "1800000000")],
                "retry",
                "Rate limit exceeded",
            ),
            (500, "", &[], "retry", "500"),
        ];
        run(classify_braze, cases);
        let mut headers = HeaderMap::new();
        let reset = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 40;
        headers.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&reset.to_string()).expect("header"),
        );
        let Outcome::Retry(failure) =
            classify_braze(StatusCode::TOO_MANY_REQUESTS, &headers, b"", "x")
        else {
            panic!("429 retries");
        };
        let wait = failure.retry_after.expect("waits until the reset");
        assert!(
            wait > Duration::from_secs(35) && wait <= Duration::from_secs(40),
            "{wait:?}"
        );
    }

    #[test]
    fn long_reasons_are_truncated() {
        let reason = one_line(&"x".repeat(1000));
        assert!(reason.chars().count() <= MAX_REASON_CHARS + 1);
        assert!(reason.ends_with('…'));
    }
}
