//! What history keeps: one [`Attempt`] per call of an action, one [`EventRecord`] per event
//! received or rejected (SPEC §9), and the text rules that make any value storable.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// What caused an attempt (SPEC §9 `trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The first call of an action the router (or a completed prerequisite) published.
    Delivery,
    /// A quick or broker-held retry.
    Retry,
    /// The first call after `runs replay` published the action again.
    Replay,
}

impl Trigger {
    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Delivery => "delivery",
            Trigger::Retry => "retry",
            Trigger::Replay => "replay",
        }
    }

    /// Reads a stored value.
    pub fn parse(text: &str) -> Option<Trigger> {
        [Trigger::Delivery, Trigger::Retry, Trigger::Replay]
            .into_iter()
            .find(|t| t.as_str() == text)
    }
}

/// How an attempt ended (SPEC §9 `outcome`, the same words as the attempts metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// The call succeeded.
    Success,
    /// It failed and will be tried again.
    Retry,
    /// It was dead-lettered.
    Dead,
    /// Its `if` (or a prerequisite's) was false: no call.
    Skipped,
}

impl RunOutcome {
    /// The stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Success => "success",
            RunOutcome::Retry => "retry",
            RunOutcome::Dead => "dead",
            RunOutcome::Skipped => "skipped",
        }
    }

    /// Reads a stored value.
    pub fn parse(text: &str) -> Option<RunOutcome> {
        [
            RunOutcome::Success,
            RunOutcome::Retry,
            RunOutcome::Dead,
            RunOutcome::Skipped,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

/// One call of an action (or the decision that stood in for one: skipped, or dead-lettered
/// before any call because its workflow or template was broken). Written by the worker, read
/// back by `runs show` (its JSON form is what `--json` prints).
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// The stable action id (`act_…`).
    pub action_id: String,
    /// The event's id.
    pub event_id: String,
    /// The event's (normalised) type.
    pub event_type: String,
    /// The event's workspace.
    pub workspace: String,
    /// The workflow id, for workflow actions.
    pub workflow: Option<String>,
    /// The webhook id, for webhook deliveries.
    pub webhook: Option<String>,
    /// The action id within its workflow (`deliver` for webhooks).
    pub action: String,
    /// The connector queue.
    pub connector: String,
    /// Where the call went (SPEC §10), when known.
    pub destination: Option<String>,
    /// The contact's email (lower case), when the event has one.
    pub contact_email: Option<String>,
    /// The contact's id, when the event has one.
    pub contact_id: Option<String>,
    /// Calls of this action so far, this one included (since its last replay).
    pub attempt: i32,
    /// What caused it.
    pub trigger: Trigger,
    /// When the call started.
    pub started_at: DateTime<Utc>,
    /// How long it took, in milliseconds.
    pub duration_ms: i32,
    /// How it ended.
    pub outcome: RunOutcome,
    /// The dead-letter class, when it was dead-lettered.
    pub error_class: Option<String>,
    /// The HTTP status, when a response came back.
    pub http_status: Option<i16>,
    /// Why it failed (already redacted), or why it was skipped.
    pub reason: Option<String>,
    /// The start of the response body, redacted and cut to `history.response_excerpt`.
    pub response_excerpt: Option<String>,
    /// The W3C trace id (SPEC §12), when the action message carries one.
    pub trace_id: Option<String>,
    /// The outputs of earlier steps that a dependent action was given (JSON, redacted; with
    /// `history.store_payloads`), so that `runs replay` gives them to it again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<String>,
}

/// An event as the router received it, or rejected it (and as `runs show --event` reads it).
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// Its id (absent when a rejected message had none).
    pub event_id: Option<String>,
    /// Its type, when known.
    pub event_type: Option<String>,
    /// Its workspace, when known.
    pub workspace: Option<String>,
    /// When the router received it.
    pub received_at: DateTime<Utc>,
    /// Why it was rejected; `None` for a valid event.
    pub rejected: Option<String>,
    /// Its JSON (or, for a rejected message, its bytes read as text), with `store_payloads`.
    pub payload: Option<String>,
    /// The W3C trace id (SPEC §12), when known.
    pub trace_id: Option<String>,
}

/// The parts of an attempt that come from its event: contact email and id.
pub fn contact(event: &Value) -> (Option<String>, Option<String>) {
    let contact = event.get("contact");
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    // A form may carry the address when the contact object does not (a lead form).
    let email = text(contact.and_then(|c| c.get("email")))
        .or_else(|| text(event.get("form_fields").and_then(|f| f.get("email"))))
        .map(|e| e.to_lowercase());
    let id = text(contact.and_then(|c| c.get("id")));
    (email, id)
}

/// The trace id of a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`), if the
/// message carries a valid one (SPEC §12).
pub fn trace_id(headers: Option<&lapin::types::FieldTable>) -> Option<String> {
    let parent = crate::broker::header_str(headers, "traceparent")?;
    let trace = parent.split('-').nth(1)?;
    let valid = trace.len() == 32
        && trace.bytes().all(|b| b.is_ascii_hexdigit())
        && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_ascii_lowercase())
}

/// Text PostgreSQL can store: its `text` type refuses NUL, so a NUL becomes the six characters
/// `\u0000`. (Rust strings are valid UTF-8 already; bytes go through [`storable_bytes`].)
pub fn storable(text: &str) -> Cow<'_, str> {
    // `memchr` looks at 32 bytes a step where `str::contains` looks at one word: every text of
    // every row passes here, payloads of a kilobyte among them.
    if memchr::memchr(0, text.as_bytes()).is_some() {
        Cow::Owned(text.replace('\0', "\\u0000"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Bytes as text, invalid UTF-8 as U+FFFD. Valid text (every event that parsed) goes through the
/// standard library's word-at-a-time check and one copy: `String::from_utf8_lossy` decodes byte
/// by byte even when nothing is invalid, 7,000 instructions for a 1 KiB event.
pub fn text_lossy(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Bytes as storable text: invalid UTF-8 becomes U+FFFD, NUL becomes `\u0000`.
pub fn storable_bytes(bytes: &[u8]) -> String {
    let text = text_lossy(bytes);
    match storable(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(replaced) => replaced,
    }
}

/// The first `limit` bytes of `text` (cut on a character boundary, marked with `…`).
pub fn excerpt(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_bad_utf8_become_storable() {
        assert_eq!(storable("a\0b"), "a\\u0000b");
        assert!(matches!(storable("plain"), Cow::Borrowed("plain")));
        assert_eq!(storable_bytes(b"ok\xff\0"), "ok\u{fffd}\\u0000");
        assert_eq!(storable_bytes(b"ok\0"), "ok\\u0000");
        assert_eq!(storable_bytes("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(text_lossy(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn excerpts_cut_on_a_character_boundary() {
        assert_eq!(excerpt("hello", 10), "hello");
        assert_eq!(excerpt("hello", 3), "hel…");
        // "é" is two bytes: a cut inside it goes back to before it.
        assert_eq!(excerpt("aé", 2), "a…");
    }

    #[test]
    fn trace_ids_come_from_traceparent() {
        let mut headers = lapin::types::FieldTable::default();
        crate::broker::set_str(
            &mut headers,
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert_eq!(
            trace_id(Some(&headers)).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        crate::broker::set_str(&mut headers, "traceparent", "garbage");
        assert_eq!(trace_id(Some(&headers)), None);
        assert_eq!(trace_id(None), None);
    }

    #[test]
    fn contact_comes_from_the_contact_or_the_form() {
        let event = serde_json::json!({"contact": {"id": "ct_7", "email": "Ana@Example.com"}});
        assert_eq!(
            contact(&event),
            (Some("ana@example.com".into()), Some("ct_7".into()))
        );
        let form = serde_json::json!({"form_fields": {"email": "bo@example.com"}});
        assert_eq!(contact(&form), (Some("bo@example.com".into()), None));
        assert_eq!(contact(&serde_json::json!({})), (None, None));
    }
}
