//! switchyard's Liquid filters.

use liquid_core::model::ValueView;
use liquid_core::{Display_filter, Filter, FilterReflection, ParseFilter, Result, Runtime};
use md5::{Digest, Md5};
use serde_json::Value;

type LiquidValue = liquid_core::Value;

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "soql",
    description = "Quotes and escapes the input as a SOQL string literal ('O\\'Neil'); nil gives ''.",
    parsed(SoqlFilter)
)]
pub(super) struct Soql;

#[derive(Debug, Default, Display_filter)]
#[name = "soql"]
struct SoqlFilter;

impl Filter for SoqlFilter {
    fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> Result<LiquidValue> {
        Ok(LiquidValue::scalar(soql_literal(input.to_kstr().as_str())))
    }
}

/// `s` as a quoted SOQL string literal.
pub(super) fn soql_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "json",
    description = "The input as JSON: a string gets quotes, an object becomes {\"a\":1} (keys sorted).",
    parsed(JsonFilter)
)]
pub(super) struct JsonText;

#[derive(Debug, Default, Display_filter)]
#[name = "json"]
struct JsonFilter;

impl Filter for JsonFilter {
    fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> Result<LiquidValue> {
        let text = serde_json::to_string(&to_json(input))
            .map_err(|e| liquid_core::Error::with_msg(e.to_string()))?;
        Ok(LiquidValue::scalar(text))
    }
}

/// Converts a Liquid value to JSON; object keys come out sorted (Liquid objects are unordered).
fn to_json(value: &dyn ValueView) -> Value {
    if value.is_nil() || value.is_state() {
        return Value::Null;
    }
    if let Some(scalar) = value.as_scalar() {
        return match scalar.type_name() {
            "whole number" => scalar.to_integer().map_or(Value::Null, Value::from),
            "fractional number" => scalar.to_float().map_or(Value::Null, Value::from),
            "boolean" => scalar.to_bool().map_or(Value::Null, Value::Bool),
            _ => Value::String(scalar.to_kstr().as_str().to_owned()),
        };
    }
    if let Some(array) = value.as_array() {
        return Value::Array(array.values().map(to_json).collect());
    }
    if let Some(object) = value.as_object() {
        let mut entries: Vec<_> = object.iter().collect();
        entries.sort_by(|(a, _), (b, _)| a.as_str().cmp(b.as_str()));
        return Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
                .collect(),
        );
    }
    Value::String(value.to_kstr().as_str().to_owned())
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "md5",
    description = "The lowercase hex MD5 of the input; nil stays nil.",
    parsed(Md5Filter)
)]
pub(super) struct Md5Hex;

#[derive(Debug, Default, Display_filter)]
#[name = "md5"]
struct Md5Filter;

impl Filter for Md5Filter {
    fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> Result<LiquidValue> {
        if input.is_nil() {
            return Ok(LiquidValue::Nil);
        }
        let digest = Md5::digest(input.to_kstr().as_bytes());
        Ok(LiquidValue::scalar(hex::encode(digest)))
    }
}
