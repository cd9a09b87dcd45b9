//! The producers' JSON Schema of the event (`schema/event.schema.json`, SPEC §2), built into the
//! binary so that `switchyard test --event` checks an event against the very file producers check
//! with in their own CI, and names the rule it breaks.
//!
//! The router does not use it: `event.rs` stays the one place that decides what is refused, with
//! no validator on the hot path. `tests/schema.rs` keeps the two in step: every event the router
//! refuses breaks the schema, and every envelope rule of the schema is one the router enforces.

use std::sync::OnceLock;

use serde_json::Value;

/// The schema, as shipped in the repository.
pub const EVENT_SCHEMA: &str = include_str!("../schema/event.schema.json");

/// One rule an event breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where in the event (a JSON pointer; empty for the top level).
    pub at: String,
    /// The keyword that failed (`required`, `enum`, `format`, `type`…).
    pub rule: String,
    /// Where the rule is in the schema file (a JSON pointer).
    pub schema_path: String,
    /// What is wrong, as the validator says it.
    pub message: String,
}

/// The schema file could not be compiled (a broken build, caught by the unit tests).
#[derive(Debug, Clone, thiserror::Error)]
#[error("schema/event.schema.json cannot be compiled: {0}")]
pub struct SchemaError(String);

fn validator() -> Result<&'static jsonschema::Validator, SchemaError> {
    static VALIDATOR: OnceLock<Result<jsonschema::Validator, SchemaError>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| {
            let schema: Value =
                serde_json::from_str(EVENT_SCHEMA).map_err(|e| SchemaError(e.to_string()))?;
            jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(&schema)
                .map_err(|e| SchemaError(e.to_string()))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Every rule of the schema `event` breaks (empty when it is valid).
pub fn violations(event: &Value) -> Result<Vec<Violation>, SchemaError> {
    Ok(validator()?
        .iter_errors(event)
        .map(|e| Violation {
            at: e.instance_path().to_string(),
            rule: e.kind().keyword().to_owned(),
            schema_path: e.schema_path().to_string(),
            message: e.to_string(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_compiles_and_names_the_rule_broken() {
        let good: Value = serde_json::from_str(include_str!("../examples/events/prize-won.json"))
            .expect("example");
        assert_eq!(violations(&good).expect("compiles"), []);
        let mut bad = good.clone();
        bad["occurred_at"] = Value::from("yesterday");
        let found = violations(&bad).expect("compiles");
        assert!(
            found
                .iter()
                .any(|v| v.at == "/occurred_at" && (v.rule == "format" || v.rule == "pattern")),
            "{found:?}"
        );
    }
}
