//! What a Salesforce answer means: success, retry or a permanent failure, by `errorCode`
//! (connectors.md), for the REST API and for the token endpoint.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::outcome::{
    ErrorClass, Failure, Outcome, http_reason, one_line, response_output, retry_after,
    status_is_retryable,
};

/// How long a Salesforce daily API limit (`REQUEST_LIMIT_EXCEEDED` … `TotalRequests`) asks us to
/// wait: the limit is a rolling 24 hours, so this stretches the retry to the largest tier.
pub const SALESFORCE_DAILY_LIMIT_WAIT: Duration = Duration::from_secs(24 * 3600);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::cases::{Case, run};

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
}
