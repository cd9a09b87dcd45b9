//! Run history for the worker: one delivery's attempts, recorded without waiting (SPEC §9).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lapin::types::FieldTable;
use serde_json::Value;

use crate::broker::header_str;
use crate::broker::message::{ActionMessage, H_TRIGGER};
use crate::destinations::Destination;
use crate::history::{Attempt, History, RunOutcome, Trigger};
use crate::outcome::Failure;

/// When and how long one call took.
#[derive(Debug, Clone)]
struct Timing {
    /// When the call started.
    started_at: chrono::DateTime<chrono::Utc>,
    /// How long it took.
    took: Duration,
    /// Where it went (SPEC §10), as the HTTP client named it.
    destination: Option<Destination>,
}

/// Records one delivery's attempts in run history (SPEC §9). Recording never waits: see
/// [`History`]. With history off it does nothing and builds nothing.
pub(super) struct Recorder<'a> {
    /// Where rows go.
    history: &'a History,
    /// The fields every row of this delivery shares; `None` with history off.
    base: Option<Attempt>,
    /// The message was published by `runs replay`.
    replay: bool,
    /// Calls made for this action by earlier deliveries (since its last replay).
    prior_calls: u32,
    /// For redacting response excerpts.
    secrets: Option<&'a HashMap<String, String>>,
    /// Calls made by this delivery so far.
    calls: AtomicU32,
    /// The latest call's timing.
    last: Mutex<Option<Timing>>,
}

impl<'a> Recorder<'a> {
    /// Records nothing (the message could not be read).
    pub(super) fn off(history: &'a History) -> Recorder<'a> {
        Recorder {
            history,
            base: None,
            replay: false,
            prior_calls: 0,
            secrets: None,
            calls: AtomicU32::new(0),
            last: Mutex::new(None),
        }
    }

    pub(super) fn new(
        history: &'a History,
        message: &ActionMessage,
        connector: &str,
        headers: Option<&FieldTable>,
        prior_calls: u32,
        secrets: &'a HashMap<String, String>,
    ) -> Recorder<'a> {
        let base = history.enabled().then(|| {
            let mut base = attempt_base(message, connector, headers);
            // A dependent action's inputs from earlier steps, for `runs replay` (redacted: they
            // come from remote responses, which may echo a credential).
            if history.store_payloads() && !message.steps.is_null() {
                let steps = message.steps.to_string();
                base.steps = Some(crate::outcome::redact(&steps, secrets.values()));
            }
            base
        });
        Recorder {
            base,
            replay: header_str(headers, H_TRIGGER) == Some(Trigger::Replay.as_str()),
            prior_calls,
            secrets: Some(secrets),
            ..Recorder::off(history)
        }
    }

    /// Whether anything is recorded (history on, the message read).
    pub(super) fn enabled(&self) -> bool {
        self.base.is_some()
    }

    /// Notes a call just made, and where it went when the HTTP client said so.
    pub(super) fn called(
        &self,
        started_at: chrono::DateTime<chrono::Utc>,
        took: Duration,
        destination: Option<Destination>,
    ) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Timing {
                started_at,
                took,
                destination,
            });
        }
    }

    /// Records the latest call (or, if none was made, the decision) with its outcome.
    pub(super) fn record(
        &self,
        outcome: RunOutcome,
        status: Option<u16>,
        failure: Option<&Failure>,
        body: Option<&Value>,
    ) {
        let Some(base) = &self.base else {
            return;
        };
        let calls = self.calls.load(Ordering::Relaxed);
        let trigger = if calls > 1 || self.prior_calls > 0 {
            Trigger::Retry
        } else if self.replay {
            Trigger::Replay
        } else {
            Trigger::Delivery
        };
        let timing = self.last.lock().ok().and_then(|last| last.clone());
        let excerpt = body.and_then(|body| {
            // Cut first, then redact: the scan for secrets covers `history.response_excerpt`
            // bytes, not the whole body (`redact` also catches a secret the cut ends inside).
            let text = serde_json::to_string(body).unwrap_or_default();
            let excerpt = self.history.excerpt(&text)?;
            Some(match self.secrets {
                Some(secrets) => crate::outcome::redact(&excerpt, secrets.values()),
                None => excerpt,
            })
        });
        let (started_at, duration_ms, destination) = match timing {
            Some(t) => (
                t.started_at,
                i32::try_from(t.took.as_millis()).unwrap_or(i32::MAX),
                t.destination.map(|d| d.id),
            ),
            None => (chrono::Utc::now(), 0, None),
        };
        self.history.attempt(Attempt {
            attempt: i32::try_from(self.prior_calls + calls).unwrap_or(i32::MAX),
            trigger,
            started_at,
            duration_ms,
            destination: destination.or_else(|| base.destination.clone()),
            outcome,
            error_class: failure
                .filter(|_| outcome == RunOutcome::Dead)
                .map(|f| f.class.as_str().to_owned()),
            http_status: status.and_then(|s| i16::try_from(s).ok()),
            reason: failure.map(|f| f.reason.clone()),
            response_excerpt: excerpt,
            ..base.clone()
        });
    }

    /// Records an action skipped because its `if` (or a prerequisite's) was false.
    pub(super) fn skipped(
        &self,
        action_id: String,
        action: &str,
        connector: &str,
        because_of: &str,
    ) {
        let Some(base) = &self.base else {
            return;
        };
        let reason = if action == because_of {
            "if: the condition is false".to_owned()
        } else {
            format!("not run: its prerequisite {because_of} was skipped")
        };
        self.history.attempt(Attempt {
            action_id,
            action: action.to_owned(),
            connector: connector.to_owned(),
            outcome: RunOutcome::Skipped,
            reason: Some(reason),
            started_at: chrono::Utc::now(),
            ..base.clone()
        });
    }
}

/// The fields of an attempt that come from the action message.
fn attempt_base(message: &ActionMessage, connector: &str, headers: Option<&FieldTable>) -> Attempt {
    let text = |key: &str| {
        message
            .event
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (contact_email, contact_id) = crate::history::record::contact(&message.event);
    Attempt {
        action_id: message.id.clone(),
        event_id: text("id"),
        event_type: text("type"),
        workspace: message.workspace.clone(),
        workflow: message.workflow.clone(),
        webhook: message.webhook.clone(),
        action: message.action.clone(),
        connector: connector.to_owned(),
        // A webhook is its own destination; the HTTP client names the others as it calls.
        destination: message.webhook.clone(),
        contact_email,
        contact_id,
        attempt: 0,
        trigger: Trigger::Delivery,
        started_at: chrono::Utc::now(),
        duration_ms: 0,
        outcome: RunOutcome::Success,
        error_class: None,
        http_status: None,
        reason: None,
        response_excerpt: None,
        trace_id: crate::history::record::trace_id(headers),
        steps: None,
    }
}
