//! Signed webhooks (Standard Webhooks): a POST of the event with `webhook-id`,
//! `webhook-timestamp` and one `v1,<base64 HMAC-SHA256>` signature per active secret.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use sha2::Sha256;
use url::Url;

use super::http::{header_value, template_failure};
use super::{Call, Request};
use crate::destinations::Destination;
use crate::outcome::{ErrorClass, Outcome};
use crate::workflow::webhook::Webhook;

/// `webhook-id`.
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// `webhook-timestamp`.
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// `webhook-signature`.
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// The `v1,…` signature of `{id}.{timestamp}.{body}` with a `whsec_…` secret.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| "webhook secret is not a whsec_ followed by base64".to_owned())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Komo's flat snake_case shape (`format: legacy`).
pub fn legacy_body(event: &Value) -> Value {
    let mut out = Map::new();
    let get = |path: &[&str]| {
        let mut at = event;
        for key in path {
            at = at.get(key)?;
        }
        (!at.is_null()).then(|| at.clone())
    };
    out.insert("event".into(), get(&["type"]).unwrap_or(Value::Null));
    out.insert(
        "timestamp".into(),
        get(&["occurred_at"]).unwrap_or(Value::Null),
    );
    out.insert("event_id".into(), get(&["id"]).unwrap_or(Value::Null));
    for object in [
        "workspace",
        "site",
        "card",
        "contact",
        "gameplay",
        "prize",
        "coupon",
        "draw",
    ] {
        if let Some(Value::Object(fields)) = event.get(object) {
            for (key, value) in fields {
                if !value.is_object() {
                    out.insert(format!("{object}_{key}"), value.clone());
                }
            }
        }
    }
    if let Some(Value::Object(fields)) = event.get("form_fields") {
        for (key, value) in fields {
            out.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    Value::Object(out)
}

/// Renders the signed request for a webhook delivery.
pub fn render(webhook: &Webhook, call: &Call<'_>, timestamp: i64) -> Result<Request, Outcome> {
    let url_text = webhook
        .url
        .render(&call.ctx)
        .map_err(|e| template_failure("url", &e))?;
    let url = Url::parse(url_text.trim()).map_err(|e| {
        Outcome::fail(
            ErrorClass::Config,
            format!("webhook {} url is not a URL: {e}", webhook.id),
        )
    })?;
    let body_value = if webhook.legacy {
        legacy_body(call.ctx.event.whole())
    } else {
        call.ctx.event.whole().clone()
    };
    // Serialising a JSON value cannot fail.
    let body = serde_json::to_vec(&body_value).unwrap_or_default();
    let mut signatures = Vec::with_capacity(webhook.secrets.len());
    for secret in &webhook.secrets {
        let secret = secret
            .render(&call.ctx)
            .map_err(|e| template_failure("secret", &e))?;
        if secret == "[redacted]" {
            signatures.push("v1,[redacted]".to_owned());
            continue;
        }
        let signature = sign(secret.trim(), call.action_id, timestamp, &body).map_err(|e| {
            Outcome::fail(ErrorClass::Config, format!("webhook {}: {e}", webhook.id))
        })?;
        signatures.push(signature);
    }
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(WEBHOOK_ID, header_value("webhook-id", call.action_id)?);
    headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
    if !signatures.is_empty() {
        let mut value = header_value("webhook-signature", &signatures.join(" "))?;
        value.set_sensitive(true);
        headers.insert(WEBHOOK_SIGNATURE, value);
    }
    Ok(Request {
        method: Method::POST,
        url,
        headers,
        body: Some(body),
        timeout: None,
        connector: "webhook",
        destination: Some(Destination::webhook(&webhook.id)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_test_vector() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(secret, id, 1614265330, body).expect("signs");
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn legacy_shape_is_flat() {
        let event = serde_json::json!({
            "id": "evt_1", "type": "Form.Submitted", "occurred_at": "2026-11-26T18:00:00Z",
            "site": {"id": "site_9"}, "card": {"name": "Spin"},
            "form_fields": {"company": "Acme"}
        });
        let body = legacy_body(&event);
        assert_eq!(body["event"], "Form.Submitted");
        assert_eq!(body["timestamp"], "2026-11-26T18:00:00Z");
        assert_eq!(body["site_id"], "site_9");
        assert_eq!(body["card_name"], "Spin");
        assert_eq!(body["company"], "Acme");
    }
}
