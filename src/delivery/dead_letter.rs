//! The dead-letter record format (SPEC §5), in one place: what the worker writes
//! ([`headers`]), how the `dlq` commands read a record back ([`DeadLetter`]: headers first, the
//! action message body as a fallback), and what a replay resets ([`replay_properties`]: a fresh
//! attempt budget).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde_json::Value;

use crate::broker::message::{
    self, Attempts, H_ACTION, H_ATTEMPTS, H_CLASS, H_CONNECTOR, H_DEAD_AT, H_FIRST_ATTEMPT,
    H_LAST_STATUS, H_REASON, H_RETRIES, H_WORKFLOW, H_WORKSPACE,
};
use crate::broker::{RETRY_TIER_HEADER, header_int, header_str, set_int, set_str};
use crate::outcome::Failure;
use crate::trace::H_TRACE_ID;

/// The broker's own redelivery counter. Quorum queues add it to a record each time a pass hands
/// it back; it says how often the queue was read, not how the action failed, so the commands
/// leave it out of what they show, export and replay.
const H_DELIVERY_COUNT: &str = "x-delivery-count";

/// Headers a replay removes so that the action starts again with a fresh attempt budget. The
/// `x-death` family is the broker's record of earlier dead-letterings (the poison backstop).
pub const REPLAY_DROPS: [&str; 14] = [
    H_ATTEMPTS,
    H_RETRIES,
    H_REASON,
    H_CLASS,
    H_LAST_STATUS,
    H_DEAD_AT,
    H_FIRST_ATTEMPT,
    RETRY_TIER_HEADER,
    H_DELIVERY_COUNT,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-reason",
];

/// Where a dead-lettered action came from; unknown when its message could not be read.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The workflow (or webhook) id.
    pub workflow: &'a str,
    /// The action id within it.
    pub action: &'a str,
    /// The event's workspace.
    pub workspace: &'a str,
}

/// The headers of a dead-letter record: the original ones with the attempt counters, the first
/// attempt's time (if not yet stamped), where it came from, the connector, the failure's reason,
/// class and last status, the time, and the trace id.
pub fn headers(
    original: Option<&FieldTable>,
    attempts: Attempts,
    origin: Option<Origin<'_>>,
    connector: &str,
    failure: &Failure,
    trace_id: &str,
) -> FieldTable {
    let mut headers = message::with_attempts(original, attempts);
    message::stamp_first_attempt(&mut headers, original);
    if let Some(origin) = origin {
        set_str(&mut headers, H_WORKFLOW, origin.workflow);
        set_str(&mut headers, H_ACTION, origin.action);
        set_str(&mut headers, H_WORKSPACE, origin.workspace);
    }
    set_str(&mut headers, H_CONNECTOR, connector);
    set_str(&mut headers, H_REASON, failure.reason.as_str());
    set_str(&mut headers, H_CLASS, failure.class.as_str());
    match failure.status {
        Some(status) => set_int(&mut headers, H_LAST_STATUS, i64::from(status)),
        None => set_str(&mut headers, H_LAST_STATUS, ""),
    }
    set_str(
        &mut headers,
        H_DEAD_AT,
        chrono::Utc::now().to_rfc3339().as_str(),
    );
    set_str(&mut headers, H_TRACE_ID, trace_id);
    headers
}

/// One dead-lettered action as read back from the queue.
#[derive(Debug)]
pub struct DeadLetter {
    /// The message properties, headers included.
    pub properties: BasicProperties,
    /// The original action message, byte for byte.
    pub body: Vec<u8>,
    /// The body parsed, when a header is missing and the body is consulted instead.
    parsed: std::sync::OnceLock<Option<Value>>,
}

impl DeadLetter {
    /// A record from a message's properties and body.
    pub fn new(properties: BasicProperties, body: Vec<u8>) -> DeadLetter {
        DeadLetter {
            properties,
            body,
            parsed: std::sync::OnceLock::new(),
        }
    }

    /// The action id (the message id).
    pub fn id(&self) -> Option<&str> {
        self.properties.message_id().as_ref().map(|s| s.as_str())
    }

    fn headers(&self) -> Option<&FieldTable> {
        self.properties.headers().as_ref()
    }

    /// A string header.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_str(self.headers(), name)
    }

    /// A header, else a string field of the action message body.
    fn field(&self, header: &str, keys: &[&str]) -> Option<String> {
        if let Some(value) = self.header(header).filter(|v| !v.is_empty()) {
            return Some(value.to_owned());
        }
        let body = self
            .parsed
            .get_or_init(|| serde_json::from_slice(&self.body).ok());
        keys.iter()
            .find_map(|key| body.as_ref()?.get(key)?.as_str())
            .map(str::to_owned)
    }

    /// The connector, which names the action queue a replay goes to.
    pub fn connector(&self) -> Option<String> {
        self.field(H_CONNECTOR, &["connector"])
    }

    /// The workflow (or webhook) id.
    pub fn workflow(&self) -> Option<String> {
        self.field(H_WORKFLOW, &["workflow", "webhook"])
    }

    /// The action id within its workflow.
    pub fn action(&self) -> Option<String> {
        self.field(H_ACTION, &["action"])
    }

    /// The event's workspace.
    pub fn workspace(&self) -> Option<String> {
        self.field(H_WORKSPACE, &["workspace"])
    }

    /// Why it was dead-lettered. A record the broker dead-lettered itself (the quorum-queue
    /// delivery limit) carries no reason of ours, so the broker's own account is given.
    pub fn reason(&self) -> String {
        if let Some(reason) = self.header(H_REASON) {
            return reason.to_owned();
        }
        match self.header("x-first-death-reason") {
            Some(why) => format!(
                "dead-lettered by the broker ({why}) from {}",
                self.header("x-first-death-queue").unwrap_or("a queue")
            ),
            None => String::new(),
        }
    }

    /// The last HTTP status, if any.
    pub fn status(&self) -> Option<String> {
        match header_int(self.headers(), H_LAST_STATUS) {
            Some(status) => Some(status.to_string()),
            None => self
                .header(H_LAST_STATUS)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        }
    }

    /// When it was dead-lettered: our header, else the broker's `x-death` time.
    pub fn dead_at(&self) -> Option<DateTime<Utc>> {
        if let Some(text) = self.header(H_DEAD_AT) {
            return DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.with_timezone(&Utc));
        }
        let AMQPValue::FieldArray(deaths) = self.headers()?.inner().get("x-death")? else {
            return None;
        };
        let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
            return None;
        };
        match first.inner().get("time")? {
            AMQPValue::Timestamp(secs) => DateTime::from_timestamp(i64::try_from(*secs).ok()?, 0),
            _ => None,
        }
    }

    /// Every header of the record except the broker's redelivery counter, as JSON.
    pub fn headers_json(&self) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        if let Some(headers) = self.headers() {
            for (name, value) in headers {
                if name.as_str() != H_DELIVERY_COUNT {
                    map.insert(name.to_string(), amqp_to_json(value));
                }
            }
        }
        map
    }

    /// The body as JSON, or as a string when it is not JSON.
    pub fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }

    /// What identifies a record within a pass, when it has an id and a dead-letter time.
    pub fn fingerprint(&self) -> Option<(String, String)> {
        Some((self.id()?.to_owned(), self.header(H_DEAD_AT)?.to_owned()))
    }
}

/// A header value as JSON: strings as strings, numbers as numbers, tables as objects.
fn amqp_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(v) => Value::Bool(*v),
        AMQPValue::ShortShortInt(v) => Value::from(*v),
        AMQPValue::ShortShortUInt(v) => Value::from(*v),
        AMQPValue::ShortInt(v) => Value::from(*v),
        AMQPValue::ShortUInt(v) => Value::from(*v),
        AMQPValue::LongInt(v) => Value::from(*v),
        AMQPValue::LongUInt(v) => Value::from(*v),
        AMQPValue::LongLongInt(v) => Value::from(*v),
        AMQPValue::Float(v) => Value::from(f64::from(*v)),
        AMQPValue::Double(v) => Value::from(*v),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_to_json).collect())
        }
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| (k.to_string(), amqp_to_json(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(bytes) => {
            use base64::Engine as _;
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes.as_slice()))
        }
        AMQPValue::Void => Value::Null,
    }
}

/// The properties of a replayed action: the original ones, with the attempt bookkeeping and the
/// dead-letter headers removed (fresh budget), and no expiration.
pub fn replay_properties(original: &BasicProperties) -> BasicProperties {
    let headers: BTreeMap<ShortString, AMQPValue> = original
        .headers()
        .as_ref()
        .map(|h| {
            h.into_iter()
                .filter(|(name, _)| !REPLAY_DROPS.contains(&name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut properties = BasicProperties::default().with_headers(FieldTable::from(headers));
    if let Some(v) = original.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        properties = properties.with_content_encoding(v.clone());
    }
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        properties = properties.with_timestamp(*v);
    }
    properties
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::H_EVENT;
    use crate::outcome::ErrorClass;

    #[test]
    fn replay_gives_a_fresh_budget_and_keeps_the_rest() {
        let mut headers = FieldTable::default();
        for name in REPLAY_DROPS {
            set_str(&mut headers, name, "x");
        }
        set_int(&mut headers, H_ATTEMPTS, 7);
        set_str(&mut headers, H_CONNECTOR, "http");
        set_str(&mut headers, H_EVENT, "evt_1");
        let original = BasicProperties::default()
            .with_message_id("act_1".into())
            .with_content_type("application/json".into())
            .with_expiration("5000".into())
            .with_headers(headers);
        let replayed = replay_properties(&original);
        let kept: Vec<&str> = replayed
            .headers()
            .as_ref()
            .map(|h| h.inner().keys().map(|k| k.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(kept, vec![H_CONNECTOR, H_EVENT]);
        assert_eq!(
            replayed.message_id().as_ref().map(|s| s.as_str()),
            Some("act_1")
        );
        assert!(replayed.expiration().is_none());
    }

    #[test]
    fn what_the_worker_writes_the_commands_read() {
        let mut original = FieldTable::default();
        set_str(&mut original, H_EVENT, "evt_1");
        let failure = Failure {
            class: ErrorClass::Permanent,
            reason: "HTTP 422 from api.example.com: bad email".into(),
            status: Some(422),
            retry_after: None,
        };
        let origin = Origin {
            workflow: "crm",
            action: "post",
            workspace: "ws_demo",
        };
        let written = headers(
            Some(&original),
            Attempts {
                calls: 3,
                retries: 1,
            },
            Some(origin),
            "http",
            &failure,
            "0af7651916cd43dd8448eb211c80319c",
        );
        let properties = BasicProperties::default()
            .with_message_id("act_1".into())
            .with_headers(written);
        let letter = DeadLetter::new(properties.clone(), b"{}".to_vec());
        assert_eq!(letter.id(), Some("act_1"));
        assert_eq!(letter.connector().as_deref(), Some("http"));
        assert_eq!(letter.workflow().as_deref(), Some("crm"));
        assert_eq!(letter.action().as_deref(), Some("post"));
        assert_eq!(letter.workspace().as_deref(), Some("ws_demo"));
        assert_eq!(letter.reason(), failure.reason);
        assert_eq!(letter.header(H_CLASS), Some("permanent"));
        assert_eq!(letter.status().as_deref(), Some("422"));
        assert_eq!(letter.header(H_EVENT), Some("evt_1"));
        assert!(letter.dead_at().is_some());
        assert!(letter.header(H_FIRST_ATTEMPT).is_some());
        let counters = Attempts::from_headers(properties.headers().as_ref());
        assert_eq!(
            counters,
            Attempts {
                calls: 3,
                retries: 1
            }
        );
        // A replay resets the budget and keeps where the action came from.
        let replayed = replay_properties(&properties);
        let again = Attempts::from_headers(replayed.headers().as_ref());
        assert_eq!(again, Attempts::default());
        assert_eq!(
            header_str(replayed.headers().as_ref(), H_CONNECTOR),
            Some("http")
        );
    }
}
