//! The views Liquid reads the context through, without converting it.

use std::fmt;

use liquid_core::model::{
    ArrayView, DisplayCow, KString, KStringCow, ObjectView, ScalarCow, State, ValueView,
};
use ref_cast::RefCast;
use serde_json::Value;

use super::{Context, EVENT_FIELDS, EventRef, REDACTED, SecretsView};

type LiquidValue = liquid_core::Value;

/// What every missing name answers.
static NULL: Value = Value::Null;

/// The template root: `steps`, `secrets`, `event`, then the envelope's fields.
#[derive(Debug)]
pub(super) struct Root<'a> {
    event: EventRef<'a>,
    steps: &'a Value,
    secrets: Secrets<'a>,
}

impl<'a> Root<'a> {
    pub(super) fn new(ctx: &Context<'a>) -> Self {
        Self {
            event: ctx.event,
            steps: ctx.steps,
            secrets: Secrets(ctx.secrets),
        }
    }

    fn entries(&self) -> impl Iterator<Item = (&str, &dyn ValueView)> {
        let fixed: [(&str, &dyn ValueView); 3] = [
            ("steps", JsonView::new(self.steps)),
            ("secrets", &self.secrets),
            ("event", EventView::ref_cast(self.event.known())),
        ];
        let fields = self
            .event
            .whole()
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !matches!(k.as_str(), "steps" | "secrets" | "event"))
            .map(|(k, v)| (k.as_str(), JsonView::new(v) as &dyn ValueView));
        fixed.into_iter().chain(fields)
    }
}

impl ValueView for Root<'_> {
    fn as_debug(&self) -> &dyn fmt::Debug {
        self
    }
    fn render(&self) -> DisplayCow<'_> {
        DisplayCow::Owned(Box::new(Rendered(self.to_value())))
    }
    fn source(&self) -> DisplayCow<'_> {
        DisplayCow::Owned(Box::new(Sourced(self.to_value())))
    }
    fn type_name(&self) -> &'static str {
        "object"
    }
    fn query_state(&self, state: State) -> bool {
        state == State::Truthy
    }
    fn to_kstr(&self) -> KStringCow<'_> {
        KStringCow::from_string(self.render().to_string())
    }
    fn to_value(&self) -> LiquidValue {
        LiquidValue::Object(
            self.entries()
                .map(|(k, v)| (KString::from_ref(k), v.to_value()))
                .collect(),
        )
    }
    fn as_object(&self) -> Option<&dyn ObjectView> {
        Some(self)
    }
}

impl ObjectView for Root<'_> {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        len_i64(self.entries().count())
    }
    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
        Box::new(self.entries().map(|(k, _)| KStringCow::from_ref(k)))
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        Box::new(self.entries().map(|(_, v)| v))
    }
    fn iter<'k>(&'k self) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
        Box::new(self.entries().map(|(k, v)| (KStringCow::from_ref(k), v)))
    }
    /// Every name is "present" so Liquid never fails with "Unknown variable"; a name that is not
    /// there answers `nil` from `get`.
    fn contains_key(&self, _index: &str) -> bool {
        true
    }
    fn get<'s>(&'s self, index: &str) -> Option<&'s dyn ValueView> {
        Some(match index {
            "steps" => JsonView::new(self.steps) as &dyn ValueView,
            "secrets" => &self.secrets,
            "event" => EventView::ref_cast(self.event.known()),
            field => JsonView::new(self.event.get(field).unwrap_or(&NULL)),
        })
    }
}

/// A `serde_json::Value` seen as a Liquid value. `null` (and so anything missing) also acts as
/// an object that answers `nil` for every key, so `a.b.c` under a missing `a` is `nil`.
#[derive(Debug, RefCast)]
#[repr(transparent)]
pub(super) struct JsonView(Value);

impl JsonView {
    pub(super) fn new(value: &Value) -> &JsonView {
        JsonView::ref_cast(value)
    }

    fn nil() -> &'static JsonView {
        JsonView::ref_cast(&NULL)
    }
}

impl ValueView for JsonView {
    fn as_debug(&self) -> &dyn fmt::Debug {
        &self.0
    }
    fn render(&self) -> DisplayCow<'_> {
        match &self.0 {
            Value::Null => DisplayCow::Borrowed(&""),
            Value::Bool(b) => DisplayCow::Borrowed(b),
            Value::String(s) => DisplayCow::Borrowed(s),
            Value::Number(n) if n.is_i64() => DisplayCow::Borrowed(n),
            Value::Number(n) => DisplayCow::Owned(Box::new(n.as_f64().unwrap_or(f64::NAN))),
            Value::Array(_) | Value::Object(_) => {
                DisplayCow::Owned(Box::new(Rendered(self.to_value())))
            }
        }
    }
    fn source(&self) -> DisplayCow<'_> {
        DisplayCow::Owned(Box::new(Sourced(self.to_value())))
    }
    fn type_name(&self) -> &'static str {
        match &self.0 {
            Value::Null => "nil",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() => "whole number",
            Value::Number(_) => "fractional number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
    fn query_state(&self, state: State) -> bool {
        match &self.0 {
            Value::Null => LiquidValue::Nil.query_state(state),
            Value::Bool(b) => b.query_state(state),
            Value::Number(_) => state == State::Truthy,
            Value::String(s) => s.query_state(state),
            Value::Array(items) => state == State::Truthy || items.is_empty(),
            Value::Object(map) => state == State::Truthy || map.is_empty(),
        }
    }
    fn to_kstr(&self) -> KStringCow<'_> {
        match &self.0 {
            Value::Null => KStringCow::from_static(""),
            Value::String(s) => KStringCow::from_ref(s),
            _ => KStringCow::from_string(self.render().to_string()),
        }
    }
    fn to_value(&self) -> LiquidValue {
        to_liquid(&self.0)
    }
    fn as_scalar(&self) -> Option<ScalarCow<'_>> {
        match &self.0 {
            Value::Bool(b) => Some(ScalarCow::new(*b)),
            Value::Number(n) => Some(match n.as_i64() {
                Some(i) => ScalarCow::new(i),
                None => ScalarCow::new(n.as_f64().unwrap_or(f64::NAN)),
            }),
            Value::String(s) => Some(ScalarCow::new(s.as_str())),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<&dyn ArrayView> {
        self.0.is_array().then_some(self as &dyn ArrayView)
    }
    fn as_object(&self) -> Option<&dyn ObjectView> {
        matches!(self.0, Value::Object(_) | Value::Null).then_some(self as &dyn ObjectView)
    }
    fn is_nil(&self) -> bool {
        self.0.is_null()
    }
}

impl ObjectView for JsonView {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        len_i64(self.0.as_object().map_or(0, |map| map.len()))
    }
    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
        let map = self.0.as_object().into_iter().flatten();
        Box::new(map.map(|(k, _)| KStringCow::from_ref(k)))
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        let map = self.0.as_object().into_iter().flatten();
        Box::new(map.map(|(_, v)| JsonView::new(v) as &dyn ValueView))
    }
    fn iter<'k>(&'k self) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
        let map = self.0.as_object().into_iter().flatten();
        Box::new(map.map(|(k, v)| (KStringCow::from_ref(k), JsonView::new(v) as &dyn ValueView)))
    }
    fn contains_key(&self, index: &str) -> bool {
        self.0.get(index).is_some()
    }
    fn get<'s>(&'s self, index: &str) -> Option<&'s dyn ValueView> {
        match &self.0 {
            Value::Object(map) => match map.get(index) {
                Some(value) => Some(JsonView::new(value) as &dyn ValueView),
                // Liquid answers `size` itself when an object has no such key.
                None if index == "size" => None,
                None => Some(JsonView::nil() as &dyn ValueView),
            },
            _ => Some(JsonView::nil() as &dyn ValueView),
        }
    }
}

impl ArrayView for JsonView {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        len_i64(self.0.as_array().map_or(0, Vec::len))
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        let items = self.0.as_array().into_iter().flatten();
        Box::new(items.map(|v| JsonView::new(v) as &dyn ValueView))
    }
    fn contains_key(&self, index: i64) -> bool {
        self.element(index).is_some()
    }
    /// An index past either end is `nil`, not an error.
    fn get(&self, index: i64) -> Option<&dyn ValueView> {
        Some(self.element(index).map_or(JsonView::nil(), JsonView::new) as &dyn ValueView)
    }
}

impl JsonView {
    /// The element at `index`, counting from the end when negative (as Liquid does).
    fn element(&self, index: i64) -> Option<&Value> {
        let items = self.0.as_array()?;
        let index = if index < 0 {
            len_i64(items.len()).checked_add(index)?
        } else {
            index
        };
        items.get(usize::try_from(index).ok()?)
    }
}

/// `event`: `id`, `type` and `occurred_at` of the envelope.
#[derive(Debug, RefCast)]
#[repr(transparent)]
struct EventView(Value);

impl EventView {
    fn fields(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        EVENT_FIELDS
            .iter()
            .filter_map(|&k| Some((k, self.0.get(k)?)))
    }
}

impl ValueView for EventView {
    fn as_debug(&self) -> &dyn fmt::Debug {
        self
    }
    fn render(&self) -> DisplayCow<'_> {
        DisplayCow::Owned(Box::new(Rendered(self.to_value())))
    }
    fn source(&self) -> DisplayCow<'_> {
        DisplayCow::Owned(Box::new(Sourced(self.to_value())))
    }
    fn type_name(&self) -> &'static str {
        "object"
    }
    fn query_state(&self, state: State) -> bool {
        state == State::Truthy || self.fields().next().is_none()
    }
    fn to_kstr(&self) -> KStringCow<'_> {
        KStringCow::from_string(self.render().to_string())
    }
    fn to_value(&self) -> LiquidValue {
        LiquidValue::Object(
            self.fields()
                .map(|(k, v)| (KString::from_static(k), to_liquid(v)))
                .collect(),
        )
    }
    fn as_object(&self) -> Option<&dyn ObjectView> {
        Some(self)
    }
}

impl ObjectView for EventView {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        len_i64(self.fields().count())
    }
    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
        Box::new(self.fields().map(|(k, _)| KStringCow::from_static(k)))
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        Box::new(
            self.fields()
                .map(|(_, v)| JsonView::new(v) as &dyn ValueView),
        )
    }
    fn iter<'k>(&'k self) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
        Box::new(self.fields().map(|(k, v)| {
            (
                KStringCow::from_static(k),
                JsonView::new(v) as &dyn ValueView,
            )
        }))
    }
    fn contains_key(&self, index: &str) -> bool {
        self.fields().any(|(k, _)| k == index)
    }
    fn get<'s>(&'s self, index: &str) -> Option<&'s dyn ValueView> {
        match self.fields().find(|(k, _)| *k == index) {
            Some((_, value)) => Some(JsonView::new(value) as &dyn ValueView),
            None if index == "size" => None,
            None => Some(JsonView::nil() as &dyn ValueView),
        }
    }
}

/// `secrets`: answers a secret by name and never lists or converts the values.
#[derive(Debug)]
struct Secrets<'a>(SecretsView<'a>);

impl ValueView for Secrets<'_> {
    fn as_debug(&self) -> &dyn fmt::Debug {
        self
    }
    fn render(&self) -> DisplayCow<'_> {
        DisplayCow::Borrowed(&"")
    }
    fn source(&self) -> DisplayCow<'_> {
        DisplayCow::Borrowed(&"secrets")
    }
    fn type_name(&self) -> &'static str {
        "object"
    }
    fn query_state(&self, state: State) -> bool {
        state == State::Truthy
    }
    fn to_kstr(&self) -> KStringCow<'_> {
        KStringCow::from_static("")
    }
    fn to_value(&self) -> LiquidValue {
        LiquidValue::Object(liquid_core::Object::new())
    }
    fn as_object(&self) -> Option<&dyn ObjectView> {
        Some(self)
    }
}

impl ObjectView for Secrets<'_> {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        0
    }
    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
        Box::new(std::iter::empty())
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        Box::new(std::iter::empty())
    }
    fn iter<'k>(&'k self) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
        Box::new(std::iter::empty())
    }
    fn contains_key(&self, index: &str) -> bool {
        match self.0 {
            SecretsView::Real(values) => values.contains_key(index),
            SecretsView::Redacted => true,
        }
    }
    fn get<'s>(&'s self, index: &str) -> Option<&'s dyn ValueView> {
        static REDACTED_VIEW: &str = REDACTED;
        Some(match self.0 {
            SecretsView::Redacted => &REDACTED_VIEW as &dyn ValueView,
            // Names are checked before rendering; an unchecked one can only be `nil`.
            SecretsView::Real(values) => match values.get(index) {
                Some(value) => value as &dyn ValueView,
                None => JsonView::nil(),
            },
        })
    }
}

/// Converts JSON to a Liquid value (what Liquid does with a value it has looked up).
fn to_liquid(value: &Value) -> LiquidValue {
    match value {
        Value::Null => LiquidValue::Nil,
        Value::Bool(b) => LiquidValue::scalar(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => LiquidValue::scalar(i),
            None => LiquidValue::scalar(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => LiquidValue::scalar(KString::from_ref(s)),
        Value::Array(items) => LiquidValue::Array(items.iter().map(to_liquid).collect()),
        Value::Object(map) => LiquidValue::Object(
            map.iter()
                .map(|(k, v)| (KString::from_ref(k), to_liquid(v)))
                .collect(),
        ),
    }
}

fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// Displays an owned Liquid value as Liquid renders it.
struct Rendered(LiquidValue);

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.render().fmt(f)
    }
}

/// Displays an owned Liquid value as Liquid source.
struct Sourced(LiquidValue);

impl fmt::Display for Sourced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.source().fmt(f)
    }
}
