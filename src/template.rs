//! Liquid templates over the event, compiled once per workflow and rendered per action.
//!
//! STUB: the signatures below are the contract the rest of the crate codes against.

use std::collections::HashMap;

use serde_json::Value;

/// Why a template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template source is not valid Liquid.
    #[error("template does not parse: {0}")]
    Parse(String),
    /// Rendering failed (a filter error, a bad index…).
    #[error("template failed to render: {0}")]
    Render(String),
    /// The template names a secret that is not configured.
    #[error(
        "secret {0} is not configured (set SWITCHYARD_SECRET_{0} or add a file to secrets.dir)"
    )]
    MissingSecret(String),
}

/// Where secret values come from while rendering.
#[derive(Clone, Copy, Debug)]
pub enum SecretsView<'a> {
    /// The real values (name → value).
    Real(&'a HashMap<String, String>),
    /// Every secret renders as `[redacted]` (dry runs, `switchyard test`).
    Redacted,
}

/// Everything a template can see.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The normalised event envelope (a JSON object): its fields are top-level variables,
    /// and `event` exposes `id`, `type` and `occurred_at`.
    pub event: &'a Value,
    /// Outputs of prerequisite actions keyed by action id (an object, or `Null`): `steps.<id>`.
    pub steps: &'a Value,
    /// `secrets.<NAME>`.
    pub secrets: SecretsView<'a>,
}

/// Builds templates; holds the Liquid parser with switchyard's filters. Build once.
pub struct Engine {}

/// A compiled string setting (a literal when it holds no Liquid markup).
#[derive(Debug, Clone)]
pub struct TextTemplate {}

/// A compiled condition: the inside of `{% if … %}`.
#[derive(Debug, Clone)]
pub struct Condition {}

/// A compiled body: JSON-safe when the source reads as (lenient) JSON, plain text otherwise.
#[derive(Debug, Clone)]
pub struct BodyTemplate {}

/// A compiled field-map value: a bare dotted path, a template, or a literal.
#[derive(Debug, Clone)]
pub enum MappedValue {
    /// `contact.email` — inserts the value with its JSON type.
    Path(Vec<PathSegment>),
    /// A string containing `{{` — renders to text.
    Template(TextTemplate),
    /// `{ const: … }`, a bare word, a number or a boolean.
    Literal(Value),
}

/// One step of a dotted path: `records[0].Id` is `Key("records"), Index(0), Key("Id")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// A parser with the standard library and the `soql`, `url_encode`, `json` and `md5` filters.
    pub fn new() -> Self {
        todo!()
    }
    /// Compiles a string setting.
    pub fn text(&self, _src: &str) -> Result<TextTemplate, TemplateError> {
        todo!()
    }
    /// Compiles a condition.
    pub fn condition(&self, _src: &str) -> Result<Condition, TemplateError> {
        todo!()
    }
    /// Compiles a request body.
    pub fn body(&self, _src: &str) -> Result<BodyTemplate, TemplateError> {
        todo!()
    }
    /// Compiles a field-map value (YAML already converted to JSON).
    pub fn mapping(&self, _value: &Value) -> Result<MappedValue, TemplateError> {
        todo!()
    }
}

impl TextTemplate {
    /// Renders to text; a missing variable renders empty; a missing secret is an error.
    pub fn render(&self, _ctx: &Context<'_>) -> Result<String, TemplateError> {
        todo!()
    }
    /// The variable paths the template reads, e.g. `["contact", "email"]`.
    pub fn variables(&self) -> &[Vec<String>] {
        todo!()
    }
    /// The source, as written.
    pub fn source(&self) -> &str {
        todo!()
    }
}

impl Condition {
    /// True when the condition holds.
    pub fn eval(&self, _ctx: &Context<'_>) -> Result<bool, TemplateError> {
        todo!()
    }
    /// The variable paths the condition reads.
    pub fn variables(&self) -> &[Vec<String>] {
        todo!()
    }
}

impl BodyTemplate {
    /// Renders the body bytes.
    pub fn render(&self, _ctx: &Context<'_>) -> Result<String, TemplateError> {
        todo!()
    }
    /// True when the body was recognised as JSON (send `Content-Type: application/json` by default).
    pub fn is_json(&self) -> bool {
        todo!()
    }
    /// The variable paths the body reads.
    pub fn variables(&self) -> Vec<Vec<String>> {
        todo!()
    }
}

impl MappedValue {
    /// The value, or `None` when it resolves to nothing (the field is then left out).
    pub fn resolve(&self, _ctx: &Context<'_>) -> Result<Option<Value>, TemplateError> {
        todo!()
    }
    /// The variable paths the value reads.
    pub fn variables(&self) -> Vec<Vec<String>> {
        todo!()
    }
}
