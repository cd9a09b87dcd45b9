//! Liquid templates over the event, compiled once per workflow and rendered per action.
//!
//! The pieces, in the order a request meets them:
//!
//! - [`Engine`] holds the Liquid parser with the standard library and switchyard's filters (`soql`,
//!   `json`, `md5`; `url_encode` is the standard library's). Build it once.
//! - [`TextTemplate`] is a string setting. A string without `{{` or `{%` is a literal and is never
//!   handed to Liquid.
//! - [`Condition`] is the inside of `{% if … %}` (a trigger's or an action's `if`).
//! - [`BodyTemplate`] is a request body. When it reads as (lenient) JSON it is parsed at compile time
//!   and rendered value by value, so whatever the event holds the output is valid JSON.
//! - [`MappedValue`] is one value of a field map: a bare dotted path (keeps its JSON type), a
//!   template (renders to text) or a literal.
//!
//! Rendering never converts the event into Liquid values up front: the template root is a view
//! (`view::Root`) that answers Liquid's look-ups straight from the `serde_json::Value`, and answers
//! `nil` for anything missing, because SPEC §3 says a variable that resolves to nothing renders as an
//! empty string (Liquid itself would fail with "Unknown variable").
//!
//! Choices made where SPEC §3 is silent:
//!
//! - Missing keys, out-of-range indexes and anything under a missing or `null` value are `nil`.
//!   Indexing a string or a number by name (`contact.email.domain`), or an array by a name other than
//!   `first`, `last` and `size`, is a type mistake and fails to render ([`TemplateError::Render`]).
//! - `event` exposes exactly `id`, `type` and `occurred_at`; every other envelope field is top level.
//! - Secrets are collected by name at compile time; `secrets` used without a literal name
//!   (`{{ secrets }}`, `secrets[x]`) does not compile. A missing secret fails before rendering starts.
//! - [`TextTemplate::variables`] lists paths as strings: `steps.find_lead.records[0].Id` reads as
//!   `["steps", "find_lead", "records", "0", "Id"]`. Names bound inside the template (`assign`,
//!   `capture`, `for`) and `forloop` are left out.
//! - A body is JSON only when its top level is an object or an array (`{{ contact | json }}` alone is
//!   a text body). Inside a JSON string, the inside of `{{ … }}` / `{% … %}` may use plain `"` quotes
//!   (`"{{ name | default: "friend" }}"`) as well as JSON-escaped ones.
//! - A mapped template that renders only whitespace resolves to nothing. A literal `null` (`{ const:
//!   null }`) is a value and is sent.
//! - The `json` filter sees Liquid values, whose objects are unordered: it writes object keys in
//!   sorted order so its output is stable. A bare `{{ contact }}` in a JSON body keeps the event's
//!   key order.

mod body;
mod filters;
mod lenient;
mod mapping;
mod partial;
mod scan;
#[cfg(test)]
mod tests;
mod view;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::Value;

pub use self::body::BodyTemplate;
pub use self::mapping::{MappedValue, PathSegment, parse_path};
pub use self::partial::{EventRef, PartialEvent};
use self::view::Root;
use crate::intern::Interned;

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
#[derive(Clone, Copy)]
pub enum SecretsView<'a> {
    /// The real values (name → value).
    Real(&'a HashMap<String, String>),
    /// Every secret renders as `[redacted]` (dry runs, `switchyard test`).
    Redacted,
}

/// Shows secret names only, never values, so a `{:?}` of a [`Context`] is safe to log.
impl fmt::Debug for SecretsView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretsView::Real(map) => {
                let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
                names.sort_unstable();
                f.debug_tuple("Real").field(&names).finish()
            }
            SecretsView::Redacted => f.write_str("Redacted"),
        }
    }
}

/// Everything a template can see.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The normalised event envelope (a JSON object): its fields are top-level variables,
    /// and `event` exposes `id`, `type` and `occurred_at`.
    pub event: EventRef<'a>,
    /// Outputs of prerequisite actions keyed by action id (an object, or `Null`): `steps.<id>`.
    pub steps: &'a Value,
    /// `secrets.<NAME>`.
    pub secrets: SecretsView<'a>,
}

/// Adds the envelope's top-level fields that variable `paths` name to `out`: `contact.email`
/// names `contact`, `event.id` names `id`, `event` alone its three fields; `steps` and
/// `secrets` name none.
pub fn event_fields(paths: &[Vec<String>], out: &mut Vec<Box<str>>) {
    for path in paths {
        match path.as_slice() {
            [] => {}
            [root, ..] if root == "steps" || root == "secrets" => {}
            [root] if root == "event" => out.extend(EVENT_FIELDS.map(Box::from)),
            [root, field, ..] if root == "event" => out.push(field.as_str().into()),
            [root, ..] => out.push(root.as_str().into()),
        }
    }
}

/// Builds templates; holds the Liquid parser with switchyard's filters. Build once.
#[derive(Clone)]
pub struct Engine {
    /// The Liquid parser: standard library plus `soql`, `json` and `md5`.
    parser: liquid::Parser,
    /// Templates compiled so far, by source, shared by every clone of the engine.
    interned: Arc<Mutex<Interned<TextInner>>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// A compiled string setting (a literal when it holds no Liquid markup); clones, and templates
/// of the same source from one [`Engine`], share it.
#[derive(Debug, Clone)]
pub struct TextTemplate(Arc<TextInner>);

impl std::ops::Deref for TextTemplate {
    type Target = TextInner;

    fn deref(&self) -> &TextInner {
        &self.0
    }
}

/// What a [`TextTemplate`] holds.
#[derive(Debug)]
pub struct TextInner {
    /// The source as written; also the rendered text of a literal.
    source: String,
    /// The parsed Liquid; `None` for a literal.
    compiled: Option<Compiled>,
    /// The variable paths the template reads (see [`TextTemplate::variables`]).
    variables: Vec<Vec<String>>,
    /// The secret names the template reads, checked before rendering.
    secrets: Vec<String>,
}

/// A compiled condition: the inside of `{% if … %}`.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The condition as written.
    source: String,
    /// `{% if SOURCE %}1{% endif %}`.
    template: TextTemplate,
}

/// The root names every template can read besides the envelope's own fields.
pub const ROOT_NAMES: [&str; 3] = ["event", "steps", "secrets"];

/// The fields `event.*` exposes.
pub(crate) const EVENT_FIELDS: [&str; 3] = ["id", "type", "occurred_at"];

/// What a redacted secret renders as.
const REDACTED: &str = "[redacted]";

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// A parser with the standard library and the `soql`, `url_encode`, `json` and `md5` filters.
    pub fn new() -> Self {
        let parser = liquid::ParserBuilder::with_stdlib()
            .filter(filters::Soql)
            .filter(filters::JsonText)
            .filter(filters::Md5Hex)
            .build()
            // `build` only fails when compiling partials, and this builder has none.
            .expect("a parser without partials always builds");
        Self {
            parser,
            interned: Arc::default(),
        }
    }

    /// Compiles a string setting (or hands out the one already compiled from the same source).
    pub fn text(&self, src: &str) -> Result<TextTemplate, TemplateError> {
        if let Some(template) = self.interned().get(src) {
            return Ok(TextTemplate(template));
        }
        let inner = if has_markup(src) {
            scan::check_integer_literals(src)?;
            let template = self
                .parser
                .parse(src)
                .map_err(|e| TemplateError::Parse(e.to_string()))?;
            let variables = scan::variables(src);
            let secrets = secret_names(&variables)?;
            TextInner {
                source: src.to_owned(),
                compiled: Some(Compiled(template)),
                variables,
                secrets,
            }
        } else {
            TextInner::literal_of(src)
        };
        Ok(TextTemplate(
            self.interned().insert(inner.source.clone(), inner),
        ))
    }

    fn interned(&self) -> std::sync::MutexGuard<'_, Interned<TextInner>> {
        self.interned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Compiles a condition.
    pub fn condition(&self, src: &str) -> Result<Condition, TemplateError> {
        let inner = src.trim();
        if inner.is_empty() {
            return Err(TemplateError::Parse("the condition is empty".to_owned()));
        }
        if inner.contains("{%") || inner.contains("%}") {
            return Err(TemplateError::Parse(format!(
                "a condition is the inside of {{% if … %}} and cannot hold `{{%` or `%}}`: {inner}"
            )));
        }
        let template = self.text(&format!("{{% if {inner} %}}1{{% endif %}}"))?;
        Ok(Condition {
            source: src.to_owned(),
            template,
        })
    }
}

impl TextTemplate {
    /// Renders to text; a missing variable renders empty; a missing secret is an error.
    pub fn render(&self, ctx: &Context<'_>) -> Result<String, TemplateError> {
        self.render_cow(ctx).map(Cow::into_owned)
    }

    /// Like [`TextTemplate::render`], but a literal borrows its text instead of copying it.
    pub fn render_cow(&self, ctx: &Context<'_>) -> Result<Cow<'_, str>, TemplateError> {
        let Some(compiled) = &self.compiled else {
            return Ok(Cow::Borrowed(&self.source));
        };
        check_secrets(&self.secrets, ctx.secrets)?;
        let mut out = Vec::with_capacity(self.source.len() + 32);
        compiled.render_to(&Root::new(ctx), &mut out)?;
        into_string(out).map(Cow::Owned)
    }

    /// The variable paths the template reads, e.g. `["contact", "email"]`; an index is written in
    /// decimal (`records[0]` → `"records", "0"`).
    pub fn variables(&self) -> &[Vec<String>] {
        &self.variables
    }

    /// The source, as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text, when the source holds no Liquid markup.
    pub fn literal(&self) -> Option<&str> {
        self.compiled.is_none().then_some(self.source.as_str())
    }

    /// The secret names the template reads.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// Appends the rendered text to `out`; secrets must have been checked by the caller.
    fn render_into(&self, root: &Root<'_>, out: &mut Vec<u8>) -> Result<(), TemplateError> {
        match &self.compiled {
            None => {
                out.extend_from_slice(self.source.as_bytes());
                Ok(())
            }
            Some(compiled) => compiled.render_to(root, out),
        }
    }
}

impl TextInner {
    /// A template that renders `src` unchanged.
    fn literal_of(src: &str) -> Self {
        Self {
            source: src.to_owned(),
            compiled: None,
            variables: Vec::new(),
            secrets: Vec::new(),
        }
    }
}

impl Condition {
    /// True when the condition holds.
    pub fn eval(&self, ctx: &Context<'_>) -> Result<bool, TemplateError> {
        check_secrets(&self.template.secrets, ctx.secrets)?;
        let mut out = Vec::with_capacity(1);
        self.template.render_into(&Root::new(ctx), &mut out)?;
        Ok(out == b"1")
    }

    /// The variable paths the condition reads.
    pub fn variables(&self) -> &[Vec<String>] {
        self.template.variables()
    }

    /// The condition, as written.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// A parsed Liquid template (shared through its [`TextTemplate`]).
struct Compiled(liquid::Template);

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Compiled(..)")
    }
}

impl Compiled {
    fn render_to(&self, root: &Root<'_>, out: &mut Vec<u8>) -> Result<(), TemplateError> {
        self.0
            .render_to(out, root)
            .map_err(|e| TemplateError::Render(e.to_string()))
    }
}

fn render_error(e: impl fmt::Display) -> TemplateError {
    TemplateError::Render(e.to_string())
}

fn into_string(bytes: Vec<u8>) -> Result<String, TemplateError> {
    String::from_utf8(bytes).map_err(render_error)
}

fn has_markup(src: &str) -> bool {
    src.contains("{{") || src.contains("{%")
}

/// Appends the items of `from` that `to` does not hold yet.
fn push_unique<T: Clone + PartialEq>(to: &mut Vec<T>, from: &[T]) {
    for item in from {
        if !to.contains(item) {
            to.push(item.clone());
        }
    }
}

/// The secret names read by a template's variables; `secrets` without a name is refused.
fn secret_names(variables: &[Vec<String>]) -> Result<Vec<String>, TemplateError> {
    let mut names = Vec::new();
    for path in variables {
        match path.as_slice() {
            [root, name, ..] if root == "secrets" => {
                push_unique(&mut names, std::slice::from_ref(name))
            }
            [root] if root == "secrets" => {
                return Err(TemplateError::Parse(
                    "secrets must be named literally, as in {{ secrets.NAME }}".to_owned(),
                ));
            }
            _ => {}
        }
    }
    Ok(names)
}

fn check_secrets(names: &[String], secrets: SecretsView<'_>) -> Result<(), TemplateError> {
    if let SecretsView::Real(values) = secrets
        && let Some(missing) = names
            .iter()
            .find(|name| !values.contains_key(name.as_str()))
    {
        return Err(TemplateError::MissingSecret(missing.clone()));
    }
    Ok(())
}
