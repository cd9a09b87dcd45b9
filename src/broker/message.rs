//! The action message: what the router (or a worker completing a prerequisite) publishes for
//! each action, and the headers that travel with it through retries and the dead-letter queue.

use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{header_int, header_str, set_int, set_str};
use crate::trace::TraceContext;

/// Calls made so far for this action (`x-delivery-count` resets after a TTL hop, so we count).
pub const H_ATTEMPTS: &str = "x-switchyard-attempts";
/// Broker-held delays used so far.
pub const H_RETRIES: &str = "x-switchyard-retries";
/// When the first call was made.
pub const H_FIRST_ATTEMPT: &str = "x-switchyard-first-attempt-at";
/// The workflow (or webhook) id.
pub const H_WORKFLOW: &str = "x-switchyard-workflow";
/// The action id.
pub const H_ACTION: &str = "x-switchyard-action";
/// The connector.
pub const H_CONNECTOR: &str = "x-switchyard-connector";
/// The workspace.
pub const H_WORKSPACE: &str = "x-switchyard-workspace";
/// The event id.
pub const H_EVENT: &str = "x-switchyard-event-id";
/// Why it failed (last failure on retries; final on dead-letter).
pub const H_REASON: &str = "x-switchyard-reason";
/// The dead-letter class.
pub const H_CLASS: &str = "x-switchyard-error-class";
/// The last HTTP status, if any.
pub const H_LAST_STATUS: &str = "x-switchyard-last-status";
/// When it was dead-lettered.
pub const H_DEAD_AT: &str = "x-switchyard-dead-at";
/// The destination an action was held for (`kind:id`, SPEC §10), while it waits on the broker.
pub const H_HELD_FOR: &str = "x-switchyard-held-for";
/// How many times an action was held (never counted as attempts).
pub const H_HELD: &str = "x-switchyard-held";
/// Set to `replay` on an action that `switchyard runs replay` published again (run history).
pub const H_TRIGGER: &str = "x-switchyard-trigger";

/// One action to run, as it travels on the broker. A worker first reads it with the event left
/// as its JSON text (`ActionMessage<&RawValue>`), then parses the event as far as the action
/// needs ([`ActionMessage::with_event`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionMessage<E = Value> {
    /// Stable across retries and replays: derived from event, workflow or webhook, and action.
    pub id: String,
    /// The workflow id (absent for webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The webhook id (absent for workflow actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// The action id (`deliver` for webhooks).
    pub action: String,
    /// The connector queue it travels on.
    pub connector: String,
    /// The event's workspace.
    pub workspace: String,
    /// The normalised event envelope.
    pub event: E,
    /// Outputs of the prerequisite chain, an object keyed by action id (`Null` when none).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub steps: Value,
}

impl<E> ActionMessage<E> {
    /// The same message with `event` read another way.
    pub fn with_event<F>(self, event: F) -> ActionMessage<F> {
        ActionMessage {
            id: self.id,
            workflow: self.workflow,
            webhook: self.webhook,
            action: self.action,
            connector: self.connector,
            workspace: self.workspace,
            event,
            steps: self.steps,
        }
    }
}

/// The event inside an action message the router or a worker publishes.
#[derive(Debug, Clone, Copy)]
pub enum EventJson<'a> {
    /// A parsed envelope, serialised into the message.
    Value(&'a Value),
    /// The bytes the envelope was parsed from, when parsing changed nothing in it (the router's
    /// delivery): written into the message as they are, instead of serialising the parsed tree
    /// again. They must be one JSON value (they parsed as the envelope).
    Verbatim(&'a [u8]),
}

/// The borrowed form, so publishing does not clone the event.
#[derive(Debug)]
pub struct ActionMessageRef<'a> {
    /// See [`ActionMessage::id`].
    pub id: &'a str,
    /// See [`ActionMessage::workflow`].
    pub workflow: Option<&'a str>,
    /// See [`ActionMessage::webhook`].
    pub webhook: Option<&'a str>,
    /// See [`ActionMessage::action`].
    pub action: &'a str,
    /// See [`ActionMessage::connector`].
    pub connector: &'a str,
    /// See [`ActionMessage::workspace`].
    pub workspace: &'a str,
    /// See [`ActionMessage::event`].
    pub event: EventJson<'a>,
    /// See [`ActionMessage::steps`].
    pub steps: Option<&'a Value>,
}

/// An action message's fields as serialised; `event` is left out when it is written verbatim.
#[derive(Serialize)]
struct Wire<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook: Option<&'a str>,
    action: &'a str,
    connector: &'a str,
    workspace: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<&'a Value>,
}

impl ActionMessageRef<'_> {
    /// The message's JSON body.
    pub fn body(&self) -> Vec<u8> {
        let wire = Wire {
            id: self.id,
            workflow: self.workflow,
            webhook: self.webhook,
            action: self.action,
            connector: self.connector,
            workspace: self.workspace,
            event: match self.event {
                EventJson::Value(event) => Some(event),
                EventJson::Verbatim(_) => None,
            },
            steps: self.steps,
        };
        // Serialising plain JSON values into a Vec cannot fail.
        let mut body = serde_json::to_vec(&wire).unwrap_or_default();
        if let EventJson::Verbatim(event) = self.event
            && body.last() == Some(&b'}')
        {
            // `{"id":…}` (never empty: `id` is always there) becomes `{"id":…,"event":<bytes>}`.
            body.pop();
            body.reserve(event.len() + 10);
            body.extend_from_slice(b",\"event\":");
            body.extend_from_slice(event);
            body.push(b'}');
        }
        body
    }

    /// The body and properties of a fresh action message (attempt budget untouched), carrying
    /// `trace` (SPEC §12).
    pub fn encode(&self, event_id: &str, trace: &TraceContext) -> (Vec<u8>, BasicProperties) {
        let body = self.body();
        let mut headers = FieldTable::default();
        set_str(
            &mut headers,
            H_WORKFLOW,
            self.workflow.or(self.webhook).unwrap_or(""),
        );
        set_str(&mut headers, H_ACTION, self.action);
        set_str(&mut headers, H_CONNECTOR, self.connector);
        set_str(&mut headers, H_WORKSPACE, self.workspace);
        set_str(&mut headers, H_EVENT, event_id);
        trace.write(&mut headers);
        (body, properties(self.id, headers))
    }
}

/// Persistent JSON properties with a message id and headers.
pub fn properties(message_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(message_id.into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0).cast_unsigned())
        .with_headers(headers)
}

/// The action id: `act_` + 32 hex digits of SHA-256 over (event id, workflow or webhook id,
/// action id). The same on every retry and replay, so destinations can de-duplicate.
pub fn action_id(event_id: &str, source_id: &str, action: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [event_id, source_id, action] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    format!("act_{}", hex::encode(&digest[..16]))
}

/// The attempt bookkeeping read from a delivery's headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Calls made before this delivery.
    pub calls: u32,
    /// Broker-held delays used before this delivery.
    pub retries: u32,
}

impl Attempts {
    /// Reads the counters; missing or malformed headers count as zero.
    pub fn from_headers(headers: Option<&FieldTable>) -> Attempts {
        let read = |name| {
            header_int(headers, name)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0)
        };
        Attempts {
            calls: read(H_ATTEMPTS),
            retries: read(H_RETRIES),
        }
    }
}

/// The trace an action message carries (its `traceparent` / `tracestate` headers, SPEC §12), if
/// any: `trace(headers).map(|t| t.trace_id())` is the trace id of an attempt (run history, logs).
pub fn trace(headers: Option<&FieldTable>) -> Option<TraceContext> {
    TraceContext::from_headers(headers)
}

/// The first-attempt time recorded on the message, if any.
pub fn first_attempt_at(headers: Option<&FieldTable>) -> Option<String> {
    header_str(headers, H_FIRST_ATTEMPT).map(str::to_owned)
}

/// Stamps `x-switchyard-first-attempt-at` with now, unless the original headers have it.
pub fn stamp_first_attempt(headers: &mut FieldTable, original: Option<&FieldTable>) {
    if first_attempt_at(original).is_none() {
        set_str(
            headers,
            H_FIRST_ATTEMPT,
            chrono::Utc::now().to_rfc3339().as_str(),
        );
    }
}

/// The properties of a message the worker publishes again (a retry, a dead letter): the
/// original content type, message id and timestamp, with `headers`.
pub fn copy_properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut properties = BasicProperties::default().with_headers(headers);
    if let Some(v) = original.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        properties = properties.with_timestamp(*v);
    }
    properties
}

/// Copies headers, then sets the attempt counters on the copy. The mark of a hold is not
/// copied: the copy is not held (a hold sets it again).
pub fn with_attempts(headers: Option<&FieldTable>, attempts: Attempts) -> FieldTable {
    let mut out = match headers {
        Some(headers) if headers.contains_key(H_HELD_FOR) => {
            let mut map = headers.inner().clone();
            map.remove(H_HELD_FOR);
            FieldTable::from(map)
        }
        Some(headers) => headers.clone(),
        None => FieldTable::default(),
    };
    set_int(&mut out, H_ATTEMPTS, i64::from(attempts.calls));
    set_int(&mut out, H_RETRIES, i64::from(attempts.retries));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_ids_are_stable_and_distinct() {
        let a = action_id("evt_1", "lead-sync", "hubspot");
        assert_eq!(a, action_id("evt_1", "lead-sync", "hubspot"));
        assert_ne!(a, action_id("evt_1", "lead-sync", "hubspot2"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(action_id("e", "ab", "c"), action_id("e", "a", "bc"));
        assert_eq!(a.len(), 4 + 32);
    }

    /// The router writes a verbatim event as it came; the worker reads the same message as
    /// from a serialised one.
    #[test]
    fn a_verbatim_event_reads_back_like_a_serialised_one() {
        let raw =
            br#" {"id":"evt_1", "type":"Gameplay.DataCaptured","data":{"note":"a\u00e9\"b"}} "#;
        let parsed: Value = serde_json::from_slice(raw).unwrap_or_default();
        let steps = serde_json::json!({"lookup": {"id": "003"}});
        let message = |event| ActionMessageRef {
            id: "act_1",
            workflow: Some("lead-sync"),
            webhook: None,
            action: "post",
            connector: "http",
            workspace: "ws_1",
            event,
            steps: Some(&steps),
        };
        let verbatim = message(EventJson::Verbatim(raw)).body();
        let serialised = message(EventJson::Value(&parsed)).body();
        assert_ne!(verbatim, serialised, "the bytes are not serialised again");
        let read = |body: &[u8]| -> ActionMessage {
            match serde_json::from_slice(body) {
                Ok(message) => message,
                Err(e) => panic!("{e}: {}", String::from_utf8_lossy(body)),
            }
        };
        let (a, b) = (read(&verbatim), read(&serialised));
        assert_eq!(a.event, parsed);
        assert_eq!(a.event, b.event);
        assert_eq!(a.steps, b.steps);
        assert_eq!((a.id, a.workflow, a.action), (b.id, b.workflow, b.action));
        assert_eq!(a.webhook, None);
    }

    #[test]
    fn attempts_round_trip_through_headers() {
        let headers = with_attempts(
            None,
            Attempts {
                calls: 3,
                retries: 1,
            },
        );
        assert_eq!(
            Attempts::from_headers(Some(&headers)),
            Attempts {
                calls: 3,
                retries: 1
            }
        );
        assert_eq!(Attempts::from_headers(None), Attempts::default());
    }
}
