//! W3C trace context (SPEC §12): one trace per event, from its producer to every outbound call.
//!
//! The router reads the event's `traceparent` (and `tracestate`) AMQP headers, or starts a trace
//! when there is none or it is malformed, and writes `traceparent` (with the router's own span id)
//! on every action message it produces. Workers carry those headers unchanged through
//! dependents, retries and the dead-letter queue, and every outbound call sends a `traceparent` of
//! the same trace with a span id of its own ([`TraceContext::child`], through [`CURRENT`], which the
//! worker sets around the call so that the HTTP client finds it wherever a connector builds its
//! request). The trace id also appears in log lines (the `trace_id` field of the `event` and
//! `action` spans) and in the dead-letter header `x-switchyard-trace-id`.
//!
//! Spans are not exported (`tracing.otlp_endpoint` is not implemented): the ids only link the
//! producer's trace to the destinations' logs.

use std::fmt;

use lapin::types::FieldTable;

use crate::broker::{header_str, set_str};

/// The W3C header carrying the trace id, the parent span id and the flags.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor state, passed on untouched.
pub const TRACESTATE: &str = "tracestate";
/// The dead-letter header naming the trace (32 hex digits).
pub const H_TRACE_ID: &str = "x-switchyard-trace-id";

tokio::task_local! {
    /// The trace of the action a worker task is running; the HTTP client reads it for each call.
    pub static CURRENT: TraceContext;
}

/// One position in a trace: the trace, the span that is the parent of what comes next, flags and
/// vendor state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    trace_id: [u8; 16],
    /// 8 bytes, never all zero.
    span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    flags: u8,
    /// `tracestate`, as received.
    state: Option<String>,
}

impl TraceContext {
    /// A new trace (sampled), for an event published without one.
    pub fn root() -> TraceContext {
        let mut trace_id = [0u8; 16];
        while trace_id == [0u8; 16] {
            trace_id = rand::random();
        }
        TraceContext {
            trace_id,
            span_id: new_span_id(),
            flags: 1,
            state: None,
        }
    }

    /// Parses a `traceparent` value (version 00, or a later version read as 00 as the
    /// specification says); `None` when it is malformed or its ids are all zero.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let value = traceparent.trim();
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let lower_hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(version, 2) || version == "ff" || !lower_hex(flags, 2) {
            return None;
        }
        // Version 00 has exactly four fields; a later one may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if !lower_hex(trace, 32) || !lower_hex(span, 16) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        if trace_id == [0u8; 16] || span_id == [0u8; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
            state: tracestate
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        })
    }

    /// The context of an event's AMQP headers, or a new trace.
    pub fn of_event(headers: Option<&FieldTable>) -> TraceContext {
        TraceContext::from_headers(headers).unwrap_or_else(TraceContext::root)
    }

    /// The context carried by a message's headers, if any (an action message always has one
    /// since trace context exists; older messages have none).
    pub fn from_headers(headers: Option<&FieldTable>) -> Option<TraceContext> {
        let parent = header_str(headers, TRACEPARENT)?;
        TraceContext::parse(parent, header_str(headers, TRACESTATE))
    }

    /// The same trace with a new span id: the span of the next hop (an action message, a call).
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: new_span_id(),
            ..self.clone()
        }
    }

    /// Writes `traceparent` (and `tracestate`) into message headers.
    pub fn write(&self, headers: &mut FieldTable) {
        set_str(headers, TRACEPARENT, self.traceparent().as_str());
        if let Some(state) = &self.state {
            set_str(headers, TRACESTATE, state.as_str());
        }
    }

    /// The `traceparent` value: `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> String {
        // Written out by hand: every action message and every call carries one, and `format!`
        // over `hex::encode` cost three allocations and the formatting machinery each time.
        let mut out = String::with_capacity(TRACEPARENT_LEN);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    /// `tracestate`, as received.
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The trace id, 32 lowercase hex digits (what logs, dead letters and run history show).
    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }

    /// The span id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        hex::encode(self.span_id)
    }
}

/// A trace id, displayed as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId([u8; 16]);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The length of a version 00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// Appends `bytes` as lowercase hex digits.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

fn new_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    while id == [0u8; 8] {
        id = rand::random();
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_writes_the_w3c_example() {
        let ctx = TraceContext::parse(PARENT, Some("congo=t61rcWkgMzE")).expect("valid");
        assert_eq!(
            ctx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(ctx.span_id(), "00f067aa0ba902b7");
        assert_eq!(ctx.traceparent(), PARENT);
        assert_eq!(ctx.tracestate(), Some("congo=t61rcWkgMzE"));
    }

    /// Every byte value of the ids and flags is written as two lowercase digits.
    #[test]
    fn written_values_read_back() {
        for flags in ["00", "01", "7f", "a0", "ff"] {
            let written = format!("00-0123456789abcdeffedcba9876543210-f0e1d2c3b4a59687-{flags}");
            let ctx = TraceContext::parse(&written, None).expect("valid");
            assert_eq!(ctx.traceparent(), written);
            assert_eq!(ctx.traceparent().len(), TRACEPARENT_LEN);
        }
        for _ in 0..100 {
            let ctx = TraceContext::root().child();
            let written = ctx.traceparent();
            assert_eq!(TraceContext::parse(&written, None), Some(ctx), "{written}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_takes_a_new_span() {
        let ctx = TraceContext::parse(PARENT, None).expect("valid");
        let child = ctx.child();
        assert_eq!(child.trace_id(), ctx.trace_id());
        assert_ne!(child.span_id(), ctx.span_id());
        assert!(
            child
                .traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(child.traceparent().ends_with("-01"));
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(
            TraceContext::parse(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later",
                None
            )
            .is_some()
        );
    }

    #[test]
    fn an_event_without_context_starts_a_trace_and_headers_round_trip() {
        let fresh = TraceContext::of_event(None);
        assert_ne!(fresh.trace_id(), TraceContext::of_event(None).trace_id());
        let mut headers = FieldTable::default();
        let ctx = TraceContext::parse(PARENT, Some("a=b")).expect("valid");
        ctx.write(&mut headers);
        assert_eq!(
            TraceContext::from_headers(Some(&headers)),
            Some(ctx.clone())
        );
        assert_eq!(TraceContext::of_event(Some(&headers)), ctx);
    }
}
