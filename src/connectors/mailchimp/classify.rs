//! What a Mailchimp answer means (problem+json, the throttling 403, compliance states).

use std::time::SystemTime;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::outcome::{
    ErrorClass, Failure, Outcome, http_reason, one_line, response_output, retry_after,
    status_is_retryable,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::cases::{Case, run};

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
}
