//! What a Braze answer means.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::outcome::{Outcome, classify_response};

/// Braze REST API responses: 201 (and 202 "queued", during maintenance) are success — a partial
/// success (`errors` next to `"message":"success"`) too, since the valid items were applied; the
/// connector logs and counts those errors. 429 waits until `X-RateLimit-Reset`; 5xx is retried;
/// other errors (`{"message","errors"}` with 400/401/403/404/413/415) are permanent.
pub fn classify_braze(status: StatusCode, headers: &HeaderMap, body: &[u8], host: &str) -> Outcome {
    classify_response(status, headers, body, host)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use reqwest::header::HeaderValue;

    use super::*;
    use crate::outcome::cases::{Case, run};

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
}
