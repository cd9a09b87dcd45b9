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

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use self::view::Root;

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
    pub event: &'a Value,
    /// Outputs of prerequisite actions keyed by action id (an object, or `Null`): `steps.<id>`.
    pub steps: &'a Value,
    /// `secrets.<NAME>`.
    pub secrets: SecretsView<'a>,
}

/// Refuses an integer literal inside a tag that does not fit an `i64`: the `liquid` parser
/// panics on one ("Grammar ensures matches are parseable as integers", found by the
/// `json_template` fuzz target). Quoted strings are skipped; a fraction (`1.5`) is a float.
fn check_integer_literals(src: &str) -> Result<(), TemplateError> {
    let b = src.as_bytes();
    let mut in_tag = false;
    let mut i = 0;
    while i < b.len() {
        let pair = (b[i], b.get(i + 1).copied());
        match pair {
            (b'{', Some(b'{' | b'%')) => {
                in_tag = true;
                i += 2;
                continue;
            }
            (b'}' | b'%', Some(b'}')) => {
                in_tag = false;
                i += 2;
                continue;
            }
            _ => {}
        }
        if !in_tag {
            i += 1;
            continue;
        }
        if b[i] == b'"' || b[i] == b'\'' {
            let quote = b[i];
            i += 1;
            while i < b.len() && b[i] != quote {
                i += 1;
            }
            i += 1;
            continue;
        }
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            // The fraction of a float (`1.5`, but not the end of a range `1..5`).
            let fraction = start >= 2 && b[start - 1] == b'.' && b[start - 2].is_ascii_digit();
            // The integer part of a float.
            let integer_part =
                b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit);
            let negative = start >= 1 && b[start - 1] == b'-';
            let digits = &src[start..i];
            let text = if negative {
                format!("-{digits}")
            } else {
                digits.to_owned()
            };
            if !fraction && !integer_part && text.parse::<i64>().is_err() {
                return Err(TemplateError::Parse(format!(
                    "the number {text} is too large for an integer"
                )));
            }
            continue;
        }
        i += 1;
    }
    Ok(())
}

/// Builds templates; holds the Liquid parser with switchyard's filters. Build once.
#[derive(Clone)]
pub struct Engine {
    /// The Liquid parser: standard library plus `soql`, `json` and `md5`.
    parser: liquid::Parser,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// A compiled string setting (a literal when it holds no Liquid markup).
#[derive(Debug, Clone)]
pub struct TextTemplate {
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

/// A compiled body: JSON-safe when the source reads as (lenient) JSON, plain text otherwise.
#[derive(Debug, Clone)]
pub struct BodyTemplate {
    /// The body as written.
    source: String,
    /// How it renders.
    kind: BodyKind,
    /// Every secret name the body reads, checked once before rendering.
    secrets: Vec<String>,
}

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

impl PathSegment {
    /// The segment as a variable-path string: a key as is, an index in decimal.
    pub fn to_variable(&self) -> String {
        match self {
            PathSegment::Key(key) => key.clone(),
            PathSegment::Index(index) => index.to_string(),
        }
    }
}

/// Reads a bare dotted path as field maps accept it: an identifier, then one or more `.ident` or
/// `[n]` segments with at least one dot (`contact.email`, `steps.find_lead.records[0].Id`).
/// Identifiers are Liquid's: an ASCII letter or `_`, then letters, digits, `_` or `-`.
pub fn parse_path(src: &str) -> Option<Vec<PathSegment>> {
    let (path, dots) = parse_path_segments(src)?;
    (dots > 0).then_some(path)
}

/// The root names every template can read besides the envelope's own fields.
pub const ROOT_NAMES: [&str; 3] = ["event", "steps", "secrets"];

/// The fields `event.*` exposes.
const EVENT_FIELDS: [&str; 3] = ["id", "type", "occurred_at"];

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
        Self { parser }
    }

    /// Compiles a string setting.
    pub fn text(&self, src: &str) -> Result<TextTemplate, TemplateError> {
        if !has_markup(src) {
            return Ok(TextTemplate::literal_of(src));
        }
        check_integer_literals(src)?;
        let template = self
            .parser
            .parse(src)
            .map_err(|e| TemplateError::Parse(e.to_string()))?;
        let variables = scan::variables(src);
        let secrets = secret_names(&variables)?;
        Ok(TextTemplate {
            source: src.to_owned(),
            compiled: Some(Compiled(Arc::new(template))),
            variables,
            secrets,
        })
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

    /// Compiles a request body.
    pub fn body(&self, src: &str) -> Result<BodyTemplate, TemplateError> {
        let kind = match lenient::parse(src) {
            Some(raw) => BodyKind::Json(self.compile_node(raw)?),
            None => BodyKind::Text(self.text(src)?),
        };
        let mut secrets = Vec::new();
        kind.for_each_template(&mut |t| push_unique(&mut secrets, &t.secrets));
        Ok(BodyTemplate {
            source: src.to_owned(),
            kind,
            secrets,
        })
    }

    /// Compiles a field-map value (YAML already converted to JSON).
    pub fn mapping(&self, value: &Value) -> Result<MappedValue, TemplateError> {
        match value {
            Value::String(s) if has_markup(s) => Ok(MappedValue::Template(self.text(s)?)),
            Value::String(s) => match parse_path(s.trim()) {
                Some(path) if path.first() == Some(&PathSegment::Key("secrets".to_owned())) => {
                    Err(TemplateError::Parse(format!(
                        "`{}`: secrets cannot be mapped as a path; use \"{{{{ {} }}}}\" where secrets are allowed",
                        s.trim(),
                        s.trim()
                    )))
                }
                Some(path) => Ok(MappedValue::Path(path)),
                None => Ok(MappedValue::Literal(value.clone())),
            },
            Value::Object(map) if map.len() == 1 => match map.get("const") {
                Some(constant) => Ok(MappedValue::Literal(constant.clone())),
                None => Ok(MappedValue::Literal(value.clone())),
            },
            _ => Ok(MappedValue::Literal(value.clone())),
        }
    }

    /// Compiles one value of a lenient-JSON body, folding template-free parts into constants.
    fn compile_node(&self, raw: lenient::Raw) -> Result<Node, TemplateError> {
        match raw {
            lenient::Raw::Literal(value) => Node::constant(value),
            lenient::Raw::Str(s) if has_markup(&s) => Ok(Node::Str(self.text(&s)?)),
            lenient::Raw::Str(s) => Node::constant(Value::String(s)),
            lenient::Raw::Bare(src) => {
                let template = self.text(&src)?;
                let path = bare_path(&src);
                Ok(Node::Bare(Bare { template, path }))
            }
            lenient::Raw::Array(items) => {
                let nodes = items
                    .into_iter()
                    .map(|item| self.compile_node(item))
                    .collect::<Result<Vec<_>, _>>()?;
                let constants: Option<Vec<Value>> =
                    nodes.iter().map(|n| n.constant_value().cloned()).collect();
                match constants {
                    Some(values) => Node::constant(Value::Array(values)),
                    None => Ok(Node::Array(nodes)),
                }
            }
            lenient::Raw::Object(members) => {
                let members = members
                    .into_iter()
                    .map(|(key, value)| Ok((self.text(&key)?, self.compile_node(value)?)))
                    .collect::<Result<Vec<_>, TemplateError>>()?;
                let constants: Option<Map<String, Value>> = members
                    .iter()
                    .map(|(k, v)| Some((k.literal()?.to_owned(), v.constant_value()?.clone())))
                    .collect();
                match constants {
                    Some(map) => Node::constant(Value::Object(map)),
                    None => Ok(Node::Object(members)),
                }
            }
        }
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

    /// A template that renders `src` unchanged.
    fn literal_of(src: &str) -> Self {
        Self {
            source: src.to_owned(),
            compiled: None,
            variables: Vec::new(),
            secrets: Vec::new(),
        }
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

impl BodyTemplate {
    /// Renders the body bytes.
    pub fn render(&self, ctx: &Context<'_>) -> Result<String, TemplateError> {
        match &self.kind {
            BodyKind::Text(template) => template.render(ctx),
            BodyKind::Json(node) => {
                check_secrets(&self.secrets, ctx.secrets)?;
                let mut writer = JsonWriter {
                    ctx,
                    root: Root::new(ctx),
                    scratch: Vec::new(),
                };
                let mut out = Vec::with_capacity(self.source.len() + 64);
                writer.node(node, &mut out)?;
                into_string(out)
            }
        }
    }

    /// Renders the body as a JSON value: the document of a JSON body, a string for a text body.
    /// Serialising it gives the same text as [`BodyTemplate::render`].
    pub fn render_value(&self, ctx: &Context<'_>) -> Result<Value, TemplateError> {
        match &self.kind {
            BodyKind::Text(template) => template.render(ctx).map(Value::String),
            BodyKind::Json(node) => {
                check_secrets(&self.secrets, ctx.secrets)?;
                node_value(node, ctx, &Root::new(ctx))
            }
        }
    }

    /// True when the body was recognised as JSON (send `Content-Type: application/json` by default).
    pub fn is_json(&self) -> bool {
        matches!(self.kind, BodyKind::Json(_))
    }

    /// The variable paths the body reads.
    pub fn variables(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.kind
            .for_each_template(&mut |t| push_unique(&mut out, &t.variables));
        out
    }

    /// The secret names the body reads.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// The body, as written.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl MappedValue {
    /// The value, or `None` when it resolves to nothing (the field is then left out).
    pub fn resolve(&self, ctx: &Context<'_>) -> Result<Option<Value>, TemplateError> {
        match self {
            MappedValue::Path(path) => Ok(match lookup(ctx, path)? {
                Found::Json(Value::Null) | Found::Missing => None,
                Found::Json(value) => Some(value.clone()),
                Found::Owned(value) => Some(value),
            }),
            MappedValue::Template(template) => {
                let text = template.render(ctx)?;
                Ok((!text.trim().is_empty()).then_some(Value::String(text)))
            }
            MappedValue::Literal(value) => Ok(Some(value.clone())),
        }
    }

    /// The variable paths the value reads.
    pub fn variables(&self) -> Vec<Vec<String>> {
        match self {
            MappedValue::Path(path) => vec![path.iter().map(PathSegment::to_variable).collect()],
            MappedValue::Template(template) => template.variables().to_vec(),
            MappedValue::Literal(_) => Vec::new(),
        }
    }
}

/// A parsed Liquid template, shared between clones.
#[derive(Clone)]
struct Compiled(Arc<liquid::Template>);

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

/// How a body renders.
#[derive(Debug, Clone)]
enum BodyKind {
    /// A (lenient) JSON document, rendered value by value.
    Json(Node),
    /// Anything else: one Liquid template.
    Text(TextTemplate),
}

impl BodyKind {
    fn for_each_template(&self, f: &mut dyn FnMut(&TextTemplate)) {
        match self {
            BodyKind::Json(node) => node.for_each_template(f),
            BodyKind::Text(template) => f(template),
        }
    }
}

/// One value of a JSON body.
#[derive(Debug, Clone)]
enum Node {
    /// A part without templates, serialised once at compile time.
    Const {
        /// The value (for [`BodyTemplate::render_value`]).
        value: Value,
        /// Its compact JSON text (for [`BodyTemplate::render`]).
        json: String,
    },
    /// A quoted string with markup: always renders to a JSON string.
    Str(TextTemplate),
    /// A `{{ … }}` standing where a value goes.
    Bare(Bare),
    /// An object with at least one template in it; keys are templates too.
    Object(Vec<(TextTemplate, Node)>),
    /// An array with at least one template in it.
    Array(Vec<Node>),
}

/// A placeholder standing where a JSON value goes.
#[derive(Debug, Clone)]
struct Bare {
    /// The placeholder, `{{ … }}` included.
    template: TextTemplate,
    /// Set when the placeholder is a plain path (no filters): the value is then inserted with its
    /// JSON type without going through Liquid.
    path: Option<Vec<PathSegment>>,
}

impl Node {
    fn constant(value: Value) -> Result<Node, TemplateError> {
        let json =
            serde_json::to_string(&value).map_err(|e| TemplateError::Parse(e.to_string()))?;
        Ok(Node::Const { value, json })
    }

    fn constant_value(&self) -> Option<&Value> {
        match self {
            Node::Const { value, .. } => Some(value),
            _ => None,
        }
    }

    fn for_each_template(&self, f: &mut dyn FnMut(&TextTemplate)) {
        match self {
            Node::Const { .. } => {}
            Node::Str(template) => f(template),
            Node::Bare(bare) => f(&bare.template),
            Node::Object(members) => {
                for (key, value) in members {
                    f(key);
                    value.for_each_template(f);
                }
            }
            Node::Array(items) => items.iter().for_each(|item| item.for_each_template(f)),
        }
    }
}

/// Writes a JSON body; `scratch` is reused for every string a template renders.
struct JsonWriter<'c, 'a> {
    ctx: &'c Context<'a>,
    root: Root<'a>,
    scratch: Vec<u8>,
}

impl JsonWriter<'_, '_> {
    fn node(&mut self, node: &Node, out: &mut Vec<u8>) -> Result<(), TemplateError> {
        match node {
            Node::Const { json, .. } => out.extend_from_slice(json.as_bytes()),
            Node::Str(template) => self.string(template, out)?,
            Node::Bare(bare) => self.bare(bare, out)?,
            Node::Object(members) => {
                out.push(b'{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.string(key, out)?;
                    out.push(b':');
                    self.node(value, out)?;
                }
                out.push(b'}');
            }
            Node::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.node(item, out)?;
                }
                out.push(b']');
            }
        }
        Ok(())
    }

    fn string(&mut self, template: &TextTemplate, out: &mut Vec<u8>) -> Result<(), TemplateError> {
        if let Some(text) = template.literal() {
            return write_json_str(out, text);
        }
        self.scratch.clear();
        template.render_into(&self.root, &mut self.scratch)?;
        let text = std::str::from_utf8(&self.scratch).map_err(render_error)?;
        write_json_str(out, text)
    }

    fn bare(&mut self, bare: &Bare, out: &mut Vec<u8>) -> Result<(), TemplateError> {
        if let Some(path) = &bare.path {
            return match lookup(self.ctx, path)? {
                Found::Json(value) => write_json(out, value),
                Found::Owned(value) => write_json(out, &value),
                Found::Missing => {
                    out.extend_from_slice(b"null");
                    Ok(())
                }
            };
        }
        self.scratch.clear();
        bare.template.render_into(&self.root, &mut self.scratch)?;
        match serde_json::from_slice::<Value>(&self.scratch) {
            Ok(value) => write_json(out, &value),
            Err(_) => {
                let text = std::str::from_utf8(&self.scratch).map_err(render_error)?;
                write_json_str(out, text)
            }
        }
    }
}

/// Builds the JSON value of a body node (see [`BodyTemplate::render_value`]).
fn node_value(node: &Node, ctx: &Context<'_>, root: &Root<'_>) -> Result<Value, TemplateError> {
    let text = |template: &TextTemplate| -> Result<String, TemplateError> {
        let mut out = Vec::new();
        template.render_into(root, &mut out)?;
        into_string(out)
    };
    match node {
        Node::Const { value, .. } => Ok(value.clone()),
        Node::Str(template) => text(template).map(Value::String),
        Node::Bare(Bare {
            path: Some(path), ..
        }) => Ok(match lookup(ctx, path)? {
            Found::Json(value) => value.clone(),
            Found::Owned(value) => value,
            Found::Missing => Value::Null,
        }),
        Node::Bare(Bare { template, .. }) => {
            let rendered = text(template)?;
            Ok(serde_json::from_str(&rendered).unwrap_or(Value::String(rendered)))
        }
        Node::Object(members) => {
            let mut map = Map::with_capacity(members.len());
            for (key, value) in members {
                map.insert(text(key)?, node_value(value, ctx, root)?);
            }
            Ok(Value::Object(map))
        }
        Node::Array(items) => items
            .iter()
            .map(|item| node_value(item, ctx, root))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
    }
}

fn write_json(out: &mut Vec<u8>, value: &Value) -> Result<(), TemplateError> {
    serde_json::to_writer(out, value).map_err(render_error)
}

fn write_json_str(out: &mut Vec<u8>, text: &str) -> Result<(), TemplateError> {
    serde_json::to_writer(out, text).map_err(render_error)
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

/// Reads `ident ( .ident | [n] )*`, returning the segments and how many dots it had.
fn parse_path_segments(src: &str) -> Option<(Vec<PathSegment>, usize)> {
    let b = src.as_bytes();
    let mut i = scan::ident_end(b, 0);
    if i == 0 {
        return None;
    }
    let mut path = vec![PathSegment::Key(src[..i].to_owned())];
    let mut dots = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let end = scan::ident_end(b, i + 1);
                if end == i + 1 {
                    return None;
                }
                path.push(PathSegment::Key(src[i + 1..end].to_owned()));
                dots += 1;
                i = end;
            }
            b'[' => {
                let close = i + 1 + src[i + 1..].find(']')?;
                let digits = &src[i + 1..close];
                if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                path.push(PathSegment::Index(digits.parse().ok()?));
                i = close + 1;
            }
            _ => return None,
        }
    }
    Some((path, dots))
}

/// The path of a placeholder that is a plain variable (`{{ gameplay.score }}`), `None` when it
/// has filters or is anything else (a literal, a keyword such as `true`).
fn bare_path(placeholder: &str) -> Option<Vec<PathSegment>> {
    let inner = placeholder.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    let (path, _) = parse_path_segments(inner.trim())?;
    match path.as_slice() {
        [PathSegment::Key(word)] if scan::KEYWORDS.contains(&word.as_str()) => None,
        _ => Some(path),
    }
}

/// What a path found in the context.
enum Found<'a> {
    /// A value of the event or of `steps`.
    Json(&'a Value),
    /// A value made on the way: a secret, `event` itself, a `size`.
    Owned(Value),
    /// Nothing there.
    Missing,
}

/// Resolves a path over the same root templates see (without going through Liquid).
fn lookup<'a>(ctx: &Context<'a>, path: &[PathSegment]) -> Result<Found<'a>, TemplateError> {
    let Some((PathSegment::Key(first), rest)) = path.split_first() else {
        return Ok(Found::Missing);
    };
    let (start, rest) = match first.as_str() {
        "steps" => (ctx.steps, rest),
        "secrets" => {
            return match (rest, ctx.secrets) {
                ([PathSegment::Key(_)], SecretsView::Redacted) => {
                    Ok(Found::Owned(Value::String(REDACTED.to_owned())))
                }
                ([PathSegment::Key(name)], SecretsView::Real(values)) => match values.get(name) {
                    Some(secret) => Ok(Found::Owned(Value::String(secret.clone()))),
                    None => Err(TemplateError::MissingSecret(name.clone())),
                },
                _ => Ok(Found::Missing),
            };
        }
        "event" => match rest.split_first() {
            None => {
                let meta = EVENT_FIELDS
                    .iter()
                    .filter_map(|&k| Some((k.to_owned(), ctx.event.get(k)?.clone())))
                    .collect();
                return Ok(Found::Owned(Value::Object(meta)));
            }
            Some((PathSegment::Key(field), tail)) if EVENT_FIELDS.contains(&field.as_str()) => {
                match ctx.event.get(field) {
                    Some(value) => (value, tail),
                    None => return Ok(Found::Missing),
                }
            }
            Some(_) => return Ok(Found::Missing),
        },
        field => match ctx.event.get(field) {
            Some(value) => (value, rest),
            None => return Ok(Found::Missing),
        },
    };
    Ok(navigate(start, rest))
}

/// Walks `path` down from `value` with Liquid's meaning of `first`, `last` and `size`.
fn navigate<'a>(mut value: &'a Value, path: &[PathSegment]) -> Found<'a> {
    for (i, segment) in path.iter().enumerate() {
        let size = |len: usize| {
            if i + 1 == path.len() {
                Found::Owned(Value::from(len))
            } else {
                Found::Missing
            }
        };
        let next = match (value, segment) {
            (Value::Object(map), PathSegment::Key(key)) => match map.get(key) {
                None if key == "size" => return size(map.len()),
                found => found,
            },
            (Value::Object(map), PathSegment::Index(index)) => map.get(&index.to_string()),
            (Value::Array(items), PathSegment::Index(index)) => items.get(*index),
            (Value::Array(items), PathSegment::Key(key)) => match key.as_str() {
                "first" => items.first(),
                "last" => items.last(),
                "size" => return size(items.len()),
                _ => None,
            },
            (Value::String(s), PathSegment::Key(key)) if key == "size" => return size(s.len()),
            _ => None,
        };
        match next {
            Some(next) => value = next,
            None => return Found::Missing,
        }
    }
    Found::Json(value)
}

/// The views Liquid reads the context through, without converting it.
mod view {
    use std::fmt;

    use liquid_core::model::{
        ArrayView, DisplayCow, KString, KStringCow, ObjectView, ScalarCow, State, ValueView,
    };
    use ref_cast::RefCast;
    use serde_json::Value;

    use super::{Context, EVENT_FIELDS, REDACTED, SecretsView};

    type LiquidValue = liquid_core::Value;

    /// What every missing name answers.
    static NULL: Value = Value::Null;

    /// The template root: `steps`, `secrets`, `event`, then the envelope's fields.
    #[derive(Debug)]
    pub(super) struct Root<'a> {
        event: &'a Value,
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
                ("event", EventView::ref_cast(self.event)),
            ];
            let fields = self
                .event
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
        fn iter<'k>(
            &'k self,
        ) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
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
                "event" => EventView::ref_cast(self.event),
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
        fn iter<'k>(
            &'k self,
        ) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
            let map = self.0.as_object().into_iter().flatten();
            Box::new(
                map.map(|(k, v)| (KStringCow::from_ref(k), JsonView::new(v) as &dyn ValueView)),
            )
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
        fn iter<'k>(
            &'k self,
        ) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
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
        fn iter<'k>(
            &'k self,
        ) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
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
}

/// switchyard's Liquid filters.
mod filters {
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
}

/// A small scanner that finds the variables a Liquid source reads.
mod scan {
    /// Words that are not variables when they stand alone.
    pub(super) const KEYWORDS: [&str; 14] = [
        "and", "or", "contains", "nil", "null", "true", "false", "empty", "blank", "in",
        "reversed", "with", "as", "for",
    ];

    /// Names Liquid defines inside loops.
    const LOOP_NAMES: [&str; 2] = ["forloop", "tablerowloop"];

    /// The variable paths read by `{{ … }}` and by the expressions of `if`, `elsif`, `unless`,
    /// `case`, `when`, `assign`, `for`, `echo` and `cycle` tags, in order of appearance, without
    /// duplicates, without names the template binds itself.
    pub(super) fn variables(src: &str) -> Vec<Vec<String>> {
        let mut found = Vec::new();
        let mut locals: Vec<String> = Vec::new();
        let mut i = 0;
        while let Some(offset) = find_open(&src[i..]) {
            let start = i + offset;
            let is_tag = src.as_bytes()[start + 1] == b'%';
            let inner_start = start + 2;
            let Some(len) = find_close(&src[inner_start..], if is_tag { "%}" } else { "}}" })
            else {
                break;
            };
            i = inner_start + len + 2;
            let inner = trim_dashes(&src[inner_start..inner_start + len]);
            if !is_tag {
                expression(inner, &mut found);
                continue;
            }
            let (tag, args) = split_word(inner);
            match tag {
                "if" | "elsif" | "unless" | "case" | "when" | "echo" | "cycle" => {
                    expression(args, &mut found);
                }
                "assign" => {
                    if let Some((name, value)) = args.split_once('=') {
                        locals.push(name.trim().to_owned());
                        expression(value, &mut found);
                    }
                }
                "capture" | "increment" | "decrement" => locals.push(split_word(args).0.to_owned()),
                "for" | "tablerow" => {
                    let (name, rest) = split_word(args);
                    locals.push(name.to_owned());
                    let (word, collection) = split_word(rest);
                    if word == "in" {
                        expression(collection, &mut found);
                    }
                }
                "raw" | "comment" => {
                    let end = format!("end{tag}");
                    i = skip_to_end_tag(src, i, &end);
                }
                _ => {}
            }
        }
        let mut unique: Vec<Vec<String>> = Vec::with_capacity(found.len());
        for path in found {
            let root = path[0].as_str();
            if locals.iter().any(|l| l == root) || LOOP_NAMES.contains(&root) {
                continue;
            }
            if !unique.contains(&path) {
                unique.push(path);
            }
        }
        unique
    }

    /// Scans one expression (`a.b | filter: c, key: d`, `a == b and c contains "x"`).
    fn expression(expr: &str, found: &mut Vec<Vec<String>>) {
        let b = expr.as_bytes();
        let mut i = 0;
        let mut filter_name_next = false;
        while i < b.len() {
            let c = b[i];
            if c == b'"' || c == b'\'' {
                i = skip_quoted(b, i).unwrap_or(b.len());
            } else if c == b'|' {
                filter_name_next = true;
                i += 1;
            } else if is_ident_start(c) {
                let (path, next, nested) = read_path(expr, i);
                i = next;
                let single = path.len() == 1;
                let keyword_argument = single && expr[i..].trim_start().starts_with(':');
                let keyword = single && KEYWORDS.contains(&path[0].as_str());
                if !(filter_name_next || keyword_argument || keyword) {
                    found.push(path);
                }
                filter_name_next = false;
                for inner in nested {
                    expression(inner, found);
                }
            } else if c.is_ascii_digit() {
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
    }

    /// Reads `ident ( .ident | [literal] | [expression] )*` from `start`. A bracket holding an
    /// expression ends the static path; the expression is returned to be scanned on its own.
    fn read_path(expr: &str, start: usize) -> (Vec<String>, usize, Vec<&str>) {
        let b = expr.as_bytes();
        let mut i = ident_end(b, start);
        let mut path = vec![expr[start..i].to_owned()];
        let mut nested = Vec::new();
        let mut dynamic = false;
        loop {
            if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(|&c| is_ident_start(c)) {
                let end = ident_end(b, i + 1);
                if !dynamic {
                    path.push(expr[i + 1..end].to_owned());
                }
                i = end;
            } else if b.get(i) == Some(&b'[') {
                let Some(close) = matching_bracket(b, i) else {
                    break;
                };
                let inner = expr[i + 1..close].trim();
                i = close + 1;
                let digits = inner.strip_prefix('-').unwrap_or(inner);
                let quoted = inner.len() >= 2
                    && (inner.starts_with('"') && inner.ends_with('"')
                        || inner.starts_with('\'') && inner.ends_with('\''));
                if dynamic {
                    nested.push(inner);
                } else if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
                    path.push(inner.to_owned());
                } else if quoted {
                    path.push(inner[1..inner.len() - 1].to_owned());
                } else {
                    nested.push(inner);
                    dynamic = true;
                }
            } else {
                break;
            }
        }
        (path, i, nested)
    }

    pub(super) fn is_ident_start(c: u8) -> bool {
        c.is_ascii_alphabetic() || c == b'_'
    }

    /// The end of the identifier starting at `start` (`start` itself when there is none).
    pub(super) fn ident_end(b: &[u8], start: usize) -> usize {
        if !b.get(start).is_some_and(|&c| is_ident_start(c)) {
            return start;
        }
        let mut i = start + 1;
        while b
            .get(i)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            i += 1;
        }
        i
    }

    /// The index after the quoted string starting at `start`; `None` when it is not closed.
    fn skip_quoted(b: &[u8], start: usize) -> Option<usize> {
        let quote = b[start];
        b[start + 1..]
            .iter()
            .position(|&c| c == quote)
            .map(|p| start + p + 2)
    }

    fn matching_bracket(b: &[u8], open: usize) -> Option<usize> {
        let mut depth = 0usize;
        let mut i = open;
        while i < b.len() {
            match b[i] {
                b'"' | b'\'' => {
                    i = skip_quoted(b, i)?;
                    continue;
                }
                b'[' => depth += 1,
                b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
            i += 1;
        }
        None
    }

    /// The offset of the next `{{` or `{%`.
    fn find_open(s: &str) -> Option<usize> {
        let b = s.as_bytes();
        (0..b.len().saturating_sub(1))
            .find(|&i| b[i] == b'{' && (b[i + 1] == b'{' || b[i + 1] == b'%'))
    }

    /// The offset of `close` in `s`, skipping quoted strings (as Liquid's grammar does).
    pub(super) fn find_close(s: &str, close: &str) -> Option<usize> {
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'"' || b[i] == b'\'' {
                match skip_quoted(b, i) {
                    Some(next) => {
                        i = next;
                        continue;
                    }
                    // An unclosed quote: fall back to the first `close` after it.
                    None => return s[i..].find(close).map(|p| p + i),
                }
            }
            // Bytes, not `s[i..]`: `i` may be inside a multi-byte character. `close` is ASCII, so
            // a match is always at a character boundary.
            if b[i..].starts_with(close.as_bytes()) {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    fn skip_to_end_tag(src: &str, from: usize, end: &str) -> usize {
        let mut i = from;
        while let Some(offset) = src[i..].find("{%") {
            let start = i + offset + 2;
            let Some(len) = src[start..].find("%}") else {
                return src.len();
            };
            i = start + len + 2;
            if split_word(trim_dashes(&src[start..start + len])).0 == end {
                return i;
            }
        }
        src.len()
    }

    /// Strips whitespace control (`{{-`, `-}}`) and surrounding spaces.
    fn trim_dashes(inner: &str) -> &str {
        let inner = inner.strip_prefix('-').unwrap_or(inner);
        inner.strip_suffix('-').unwrap_or(inner).trim()
    }

    fn split_word(s: &str) -> (&str, &str) {
        let s = s.trim_start();
        match s.find(|c: char| c.is_whitespace()) {
            Some(end) => (&s[..end], &s[end..]),
            None => (s, ""),
        }
    }
}

/// The lenient JSON reader for bodies: standard JSON, plus trailing commas and `{{ … }}` standing
/// where a value goes.
mod lenient {
    use serde_json::Value;

    /// Deeper documents are read as text templates (and never overflow the stack).
    const MAX_DEPTH: usize = 128;

    /// A parsed body, before its strings are compiled.
    #[derive(Debug)]
    pub(super) enum Raw {
        Object(Vec<(String, Raw)>),
        Array(Vec<Raw>),
        /// A decoded string (it may hold markup).
        Str(String),
        /// A placeholder, `{{ … }}` included.
        Bare(String),
        /// A number, a boolean or `null`.
        Literal(Value),
    }

    /// The document, when `src` is an object or an array in lenient JSON.
    pub(super) fn parse(src: &str) -> Option<Raw> {
        let mut p = Reader { s: src, i: 0 };
        p.ws();
        let doc = match (p.peek()?, p.peek_at(1)) {
            (b'{', Some(b'{' | b'%')) => return None,
            (b'{' | b'[', _) => p.value(0)?,
            _ => return None,
        };
        p.ws();
        (p.i == src.len()).then_some(doc)
    }

    struct Reader<'s> {
        s: &'s str,
        i: usize,
    }

    impl Reader<'_> {
        fn peek(&self) -> Option<u8> {
            self.s.as_bytes().get(self.i).copied()
        }

        fn peek_at(&self, ahead: usize) -> Option<u8> {
            self.s.as_bytes().get(self.i + ahead).copied()
        }

        fn eat(&mut self, c: u8) -> bool {
            let matched = self.peek() == Some(c);
            if matched {
                self.i += 1;
            }
            matched
        }

        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.i += 1;
            }
        }

        fn value(&mut self, depth: usize) -> Option<Raw> {
            if depth > MAX_DEPTH {
                return None;
            }
            match self.peek()? {
                b'{' if self.peek_at(1) == Some(b'{') => self.bare(),
                b'{' => self.object(depth),
                b'[' => self.array(depth),
                b'"' => self.string().map(Raw::Str),
                b't' => self.word("true", Value::Bool(true)),
                b'f' => self.word("false", Value::Bool(false)),
                b'n' => self.word("null", Value::Null),
                b'-' | b'0'..=b'9' => self.number(),
                _ => None,
            }
        }

        fn object(&mut self, depth: usize) -> Option<Raw> {
            self.i += 1;
            let mut members = Vec::new();
            loop {
                self.ws();
                if self.eat(b'}') {
                    return Some(Raw::Object(members));
                }
                let key = self.string()?;
                self.ws();
                if !self.eat(b':') {
                    return None;
                }
                self.ws();
                members.push((key, self.value(depth + 1)?));
                self.ws();
                if self.eat(b'}') {
                    return Some(Raw::Object(members));
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }

        fn array(&mut self, depth: usize) -> Option<Raw> {
            self.i += 1;
            let mut items = Vec::new();
            loop {
                self.ws();
                if self.eat(b']') {
                    return Some(Raw::Array(items));
                }
                items.push(self.value(depth + 1)?);
                self.ws();
                if self.eat(b']') {
                    return Some(Raw::Array(items));
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }

        fn bare(&mut self) -> Option<Raw> {
            let start = self.i;
            let len = super::scan::find_close(&self.s[start + 2..], "}}")?;
            self.i = start + 2 + len + 2;
            Some(Raw::Bare(self.s[start..self.i].to_owned()))
        }

        fn word(&mut self, word: &str, value: Value) -> Option<Raw> {
            if !self.s[self.i..].starts_with(word) {
                return None;
            }
            self.i += word.len();
            Some(Raw::Literal(value))
        }

        fn number(&mut self) -> Option<Raw> {
            let start = self.i;
            while matches!(
                self.peek(),
                Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            ) {
                self.i += 1;
            }
            let value: Value = serde_json::from_str(&self.s[start..self.i]).ok()?;
            value.is_number().then_some(Raw::Literal(value))
        }

        /// A JSON string, decoded. Inside `{{ … }}` and `{% … %}` a plain `"` is Liquid's quote,
        /// not the end of the JSON string.
        fn string(&mut self) -> Option<String> {
            if !self.eat(b'"') {
                return None;
            }
            let mut out = String::new();
            // The closing delimiter of the markup we are in (`}` or `%`), and its open quote.
            let mut markup: Option<char> = None;
            let mut quote: Option<char> = None;
            loop {
                let c = match self.peek()? {
                    b'\\' => self.escape()?,
                    b'"' if markup.is_none() => {
                        self.i += 1;
                        return Some(out);
                    }
                    _ => {
                        let c = self.s[self.i..].chars().next()?;
                        self.i += c.len_utf8();
                        c
                    }
                };
                let previous = out.chars().next_back();
                out.push(c);
                match (markup, quote) {
                    (None, _) => {
                        if previous == Some('{') && (c == '{' || c == '%') {
                            markup = Some(if c == '{' { '}' } else { '%' });
                        }
                    }
                    (Some(_), Some(q)) => {
                        if c == q {
                            quote = None;
                        }
                    }
                    (Some(close), None) => {
                        if c == '"' || c == '\'' {
                            quote = Some(c);
                        } else if c == '}' && previous == Some(close) {
                            markup = None;
                        }
                    }
                }
            }
        }

        fn escape(&mut self) -> Option<char> {
            let c = self.peek_at(1)?;
            self.i += 2;
            Some(match c {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let high = self.hex4()?;
                    if (0xD800..0xDC00).contains(&high) {
                        if !(self.eat(b'\\') && self.eat(b'u')) {
                            return None;
                        }
                        let low = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&low) {
                            return None;
                        }
                        char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))?
                    } else {
                        char::from_u32(high)?
                    }
                }
                _ => return None,
            })
        }

        fn hex4(&mut self) -> Option<u32> {
            let digits = self.s.get(self.i..self.i + 4)?;
            let value = u32::from_str_radix(digits, 16).ok()?;
            self.i += 4;
            Some(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NASTY: &str = "Ana \"The Ace\" O'Neil\\\nJosé Ñandú 🎉\t</script>";

    fn event() -> Value {
        json!({
            "id": "evt_01JD8X4Q2M3N",
            "type": "Gameplay.DataCaptured",
            "occurred_at": "2026-11-26T18:00:00Z",
            "workspace": { "id": "ws_demo", "name": "Demo Brand" },
            "site": { "id": "site_9", "name": "Summer Promo", "url": "https://promo.example.com" },
            "card": { "id": "card_42", "name": "Spin to Win", "type": "SpinToWin" },
            "contact": { "id": "ct_7", "email": "ana@example.com", "first_name": "Ana",
                         "last_name": "Silva", "phone": null, "optin": true, "properties": {} },
            "form_fields": { "company": "Acme", "email": "ana@example.com" },
            "gameplay": { "id": "gp_3", "score": 120, "completed": true, "duration_ms": 53000 },
            "data": { "ratio": 0.5, "tags": ["a", "b"] }
        })
    }

    fn steps() -> Value {
        json!({ "find_lead": { "totalSize": 2, "records": [ { "Id": "00Q1" }, { "Id": "00Q2" } ] } })
    }

    fn secrets() -> HashMap<String, String> {
        HashMap::from([("HUBSPOT_TOKEN".to_owned(), "pat-123".to_owned())])
    }

    fn ctx<'a>(
        event: &'a Value,
        steps: &'a Value,
        secrets: &'a HashMap<String, String>,
    ) -> Context<'a> {
        Context {
            event,
            steps,
            secrets: SecretsView::Real(secrets),
        }
    }

    /// Renders `src` as a text template against the sample event, steps and secrets.
    fn text(src: &str) -> String {
        let (event, steps, secrets) = (event(), steps(), secrets());
        Engine::new()
            .text(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .render(&ctx(&event, &steps, &secrets))
            .unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    fn body_json(engine: &Engine, src: &str, event: &Value) -> Value {
        let body = engine.body(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert!(body.is_json(), "{src} should read as JSON");
        let (steps, secrets) = (steps(), secrets());
        let ctx = ctx(event, &steps, &secrets);
        let rendered = body.render(&ctx).unwrap();
        let parsed: Value = serde_json::from_str(&rendered)
            .unwrap_or_else(|e| panic!("{src} rendered invalid JSON {rendered}: {e}"));
        assert_eq!(
            parsed,
            body.render_value(&ctx).unwrap(),
            "render and render_value agree"
        );
        parsed
    }

    #[test]
    fn filters() {
        let cases = [
            (r#"{{ "O'Neil" | soql }}"#, r"'O\'Neil'"),
            ("{{ contact.nope | soql }}", "''"),
            ("{{ contact.email | soql }}", "'ana@example.com'"),
            (r#"{{ "a b&c/é" | url_encode }}"#, "a%20b%26c%2F%C3%A9"),
            ("{{ contact.nope | url_encode }}", ""),
            (
                r#"{{ "urist.mcvankab@freddiesjokes.com" | md5 }}"#,
                "62eeb292278cc15f5817cb78f7790b08",
            ),
            ("{{ contact.nope | md5 }}", ""),
            ("{{ contact.first_name | json }}", r#""Ana""#),
            ("{{ gameplay.score | json }}", "120"),
            ("{{ data.ratio | json }}", "0.5"),
            ("{{ contact.optin | json }}", "true"),
            ("{{ contact.phone | json }}", "null"),
            ("{{ contact.nope | json }}", "null"),
            ("{{ data.tags | json }}", r#"["a","b"]"#),
            (
                "{{ gameplay | json }}",
                r#"{"completed":true,"duration_ms":53000,"id":"gp_3","score":120}"#,
            ),
            ("{{ contact.first_name | upcase }}", "ANA"),
        ];
        for (src, expected) in cases {
            assert_eq!(text(src), expected, "{src}");
        }
    }

    #[test]
    fn soql_escapes_every_special_character() {
        let event = json!({ "contact": { "name": NASTY } });
        let (steps, secrets) = (Value::Null, secrets());
        let out = Engine::new()
            .text("{{ contact.name | soql }}")
            .unwrap()
            .render(&ctx(&event, &steps, &secrets))
            .unwrap();
        assert_eq!(
            out,
            "'Ana \\\"The Ace\\\" O\\'Neil\\\\\\nJosé Ñandú 🎉\\t</script>'"
        );
    }

    #[test]
    fn lookups() {
        let cases = [
            (
                "{{ event.id }}/{{ event.type }}",
                "evt_01JD8X4Q2M3N/Gameplay.DataCaptured",
            ),
            ("{{ event.occurred_at }}", "2026-11-26T18:00:00Z"),
            ("{{ id }}", "evt_01JD8X4Q2M3N"),
            ("{{ event.workspace.id }}", ""),
            ("{{ workspace.id }}", "ws_demo"),
            ("{{ steps.find_lead.records[0].Id }}", "00Q1"),
            ("{{ steps.find_lead.records[-1].Id }}", "00Q2"),
            ("{{ steps.find_lead.records.first.Id }}", "00Q1"),
            ("{{ steps.find_lead.records.last.Id }}", "00Q2"),
            ("{{ steps.find_lead.records.size }}", "2"),
            ("{{ steps.find_lead.records | size }}", "2"),
            ("{{ steps['find_lead'].totalSize }}", "2"),
            ("{{ gameplay.size }}", "4"),
            ("{{ contact.email.size }}", "15"),
            ("{{ gameplay.score | plus: 1 }}", "121"),
            ("{{ data.ratio | times: 2 }}", "1"),
            ("{{ contact.optin }}", "true"),
            (
                "{% for t in data.tags %}[{{ t }}{{ forloop.index }}]{% endfor %}",
                "[a1][b2]",
            ),
            (
                "{% assign n = card.name %}{{ n | downcase }}",
                "spin to win",
            ),
            ("{{ contact.nope | default: 'friend' }}", "friend"),
            ("{{ contact.phone | default: 'none' }}", "none"),
        ];
        for (src, expected) in cases {
            assert_eq!(text(src), expected, "{src}");
        }
    }

    #[test]
    fn missing_values_render_empty() {
        let cases = [
            "[{{ nope }}]",
            "[{{ contact.nope }}]",
            "[{{ contact.phone }}]",
            "[{{ contact.nope.deeper.still }}]",
            "[{{ nope[3].x }}]",
            "[{{ steps.nope.records[0].Id }}]",
            "[{{ steps.find_lead.records[9].Id }}]",
            "[{{ event.nope }}]",
            "[{{ contact.properties.nope }}]",
            "[{% if nope %}x{% endif %}]",
        ];
        for src in cases {
            assert_eq!(text(src), "[]", "{src}");
        }
        // No steps at all (`Null`), as for an action without `needs`.
        let event = event();
        let secrets = secrets();
        let out = Engine::new()
            .text("[{{ steps.find_lead.records[0].Id }}]")
            .unwrap()
            .render(&ctx(&event, &Value::Null, &secrets))
            .unwrap();
        assert_eq!(out, "[]");
    }

    #[test]
    fn indexing_a_string_by_name_is_a_render_error() {
        let (event, steps, secrets) = (event(), steps(), secrets());
        let err = Engine::new()
            .text("{{ contact.email.domain }}")
            .unwrap()
            .render(&ctx(&event, &steps, &secrets))
            .unwrap_err();
        assert!(matches!(err, TemplateError::Render(_)), "{err}");
    }

    #[test]
    fn conditions() {
        let engine = Engine::new();
        let with_empty_email = json!({ "contact": { "email": "  " } });
        let no_contact = json!({ "id": "e" });
        let cases: [(&str, &Value, bool); 16] = [
            ("contact.email != blank", &event(), true),
            ("contact.email == blank", &event(), false),
            ("contact.email != blank", &with_empty_email, false),
            ("contact.email != blank", &no_contact, false),
            ("contact.email == blank", &no_contact, true),
            ("contact.email == empty", &no_contact, true),
            ("contact.email == nil", &no_contact, true),
            ("contact.phone == blank", &event(), true),
            ("steps.find_lead.totalSize > 0", &event(), true),
            ("steps.find_lead.totalSize == 0", &event(), false),
            ("gameplay.score >= 100 and contact.optin", &event(), true),
            ("gameplay.score > 200 or contact.nope", &event(), false),
            ("contact.optin", &event(), true),
            ("contact.nope", &event(), false),
            ("card.name contains \"Spin\"", &event(), true),
            ("event.type == \"Gameplay.DataCaptured\"", &event(), true),
        ];
        let (steps, secrets) = (steps(), secrets());
        for (src, event, expected) in cases {
            let condition = engine.condition(src).unwrap();
            assert_eq!(condition.source(), src);
            let got = condition.eval(&ctx(event, &steps, &secrets)).unwrap();
            assert_eq!(got, expected, "{src} on {event}");
        }
        // Steps missing entirely: neither branch of find_lead fires, and nothing errors.
        let event = event();
        for src in [
            "steps.find_lead.totalSize > 0",
            "steps.find_lead.totalSize == 0",
        ] {
            let got = engine
                .condition(src)
                .unwrap()
                .eval(&ctx(&event, &Value::Null, &secrets));
            assert!(!got.unwrap(), "{src}");
        }
        assert!(matches!(
            engine.condition("  "),
            Err(TemplateError::Parse(_))
        ));
        assert!(matches!(
            engine.condition("a %}{% if b"),
            Err(TemplateError::Parse(_))
        ));
        assert!(matches!(
            engine.condition("a ==="),
            Err(TemplateError::Parse(_))
        ));
    }

    #[test]
    fn hubspot_body_from_the_product_brief() {
        let src = r#"{
  "properties": {
    "email": "{{ contact.email }}",
    "firstname": "{{ contact.first_name }}",
    "lastname": "{{ contact.last_name }}",
    "lead_source": "Komo - {{ card.name }}",
    "komo_score": "{{ gameplay.score }}",
  }
}
"#;
        let engine = Engine::new();
        let body = engine.body(src).unwrap();
        assert!(body.is_json());
        let (event, steps, secrets) = (event(), steps(), secrets());
        assert_eq!(
            body.render(&ctx(&event, &steps, &secrets)).unwrap(),
            r#"{"properties":{"email":"ana@example.com","firstname":"Ana","lastname":"Silva","lead_source":"Komo - Spin to Win","komo_score":"120"}}"#
        );
        assert_eq!(
            body.variables(),
            [
                vec!["contact", "email"],
                vec!["contact", "first_name"],
                vec!["contact", "last_name"],
                vec!["card", "name"],
                vec!["gameplay", "score"],
            ]
        );
    }

    #[test]
    fn nasty_values_stay_valid_json() {
        let src = r#"{ "name": "{{ contact.first_name }}", "hi": "Hello {{ contact.first_name }}!",
                      "soql": "{{ contact.first_name | soql }}", "raw": {{ contact.first_name }},
                      "{{ contact.first_name }}": 1 }"#;
        let event = json!({ "contact": { "first_name": NASTY } });
        let got = body_json(&Engine::new(), src, &event);
        let mut expected = Map::new();
        expected.insert("name".into(), json!(NASTY));
        expected.insert("hi".into(), json!(format!("Hello {NASTY}!")));
        expected.insert(
            "soql".into(),
            json!("'Ana \\\"The Ace\\\" O\\'Neil\\\\\\nJosé Ñandú 🎉\\t</script>'"),
        );
        expected.insert("raw".into(), json!(NASTY));
        expected.insert(NASTY.into(), json!(1));
        assert_eq!(got, Value::Object(expected));
    }

    #[test]
    fn bare_placeholders_keep_json_types() {
        let engine = Engine::new();
        let event = event();
        let cases = [
            (
                r#"{"score": {{ gameplay.score }}}"#,
                json!({ "score": 120 }),
            ),
            (
                r#"{"score": {{- gameplay.score -}}}"#,
                json!({ "score": 120 }),
            ),
            (r#"{"ratio": {{ data.ratio }}}"#, json!({ "ratio": 0.5 })),
            (
                r#"{"optin": {{ contact.optin }}}"#,
                json!({ "optin": true }),
            ),
            (
                r#"{"game": {{ gameplay }}}"#,
                json!({ "game": { "id": "gp_3", "score": 120, "completed": true, "duration_ms": 53000 } }),
            ),
            (
                r#"{"nope": {{ contact.nope }}, "phone": {{ contact.phone }}}"#,
                json!({ "nope": null, "phone": null }),
            ),
            (
                r#"{"id": {{ steps.find_lead.records[1].Id }}}"#,
                json!({ "id": "00Q2" }),
            ),
            (
                r#"{"n": {{ steps.find_lead.records.size }}}"#,
                json!({ "n": 2 }),
            ),
            (
                r#"{"event": {{ event }}}"#,
                json!({ "event": {
                "id": "evt_01JD8X4Q2M3N", "type": "Gameplay.DataCaptured", "occurred_at": "2026-11-26T18:00:00Z" } }),
            ),
            (
                r#"{"next": {{ gameplay.score | plus: 1 }}}"#,
                json!({ "next": 121 }),
            ),
            (
                r#"{"up": {{ contact.first_name | upcase }}}"#,
                json!({ "up": "ANA" }),
            ),
            (
                r#"{"tags": {{ data.tags | json }}}"#,
                json!({ "tags": ["a", "b"] }),
            ),
            (
                r#"{"t": {{ true }}, "s": {{ "x" }}}"#,
                json!({ "t": true, "s": "x" }),
            ),
            (
                r#"{"empty": {{ contact.nope | upcase }}}"#,
                json!({ "empty": "" }),
            ),
            (
                r#"{"quoted": "{{ gameplay.score }}"}"#,
                json!({ "quoted": "120" }),
            ),
        ];
        for (src, expected) in cases {
            assert_eq!(body_json(&engine, src, &event), expected, "{src}");
        }
        // Key order follows the event, not the alphabet.
        let out = engine
            .body(r#"{"game": {{ gameplay }}}"#)
            .unwrap()
            .render(&ctx(&event, &steps(), &secrets()))
            .unwrap();
        assert_eq!(
            out,
            r#"{"game":{"id":"gp_3","score":120,"completed":true,"duration_ms":53000}}"#
        );
    }

    #[test]
    fn lenient_json_forms() {
        let engine = Engine::new();
        let event = event();
        let cases = [
            (r#"[1, "{{ card.id }}", ]"#, json!([1, "card_42"])),
            (
                r#"{"a": [ {{ gameplay.score }}, [true, null,], ], "b": {"c": -1.5e2,},}"#,
                json!({ "a": [120, [true, null]], "b": { "c": -150.0 } }),
            ),
            (
                r#"  {"k": "\u00e9\ud83c\udf89\n\"\/"}  "#,
                json!({ "k": "é🎉\n\"/" }),
            ),
            (
                r#"{"greeting": "{{ contact.nope | default: "friend" }}"}"#,
                json!({ "greeting": "friend" }),
            ),
            (
                r#"{"greeting": "{{ contact.nope | default: \"pal\" }}"}"#,
                json!({ "greeting": "pal" }),
            ),
            (
                r#"{"x": "{% if contact.optin %}yes{% else %}no{% endif %}"}"#,
                json!({ "x": "yes" }),
            ),
            (
                r#"{"big": 12345678901234567890, "small": 0}"#,
                json!({ "big": 12345678901234567890_u64, "small": 0 }),
            ),
            ("{}", json!({})),
            ("[]", json!([])),
        ];
        for (src, expected) in cases {
            assert_eq!(body_json(&engine, src, &event), expected, "{src}");
        }
    }

    #[test]
    fn non_json_bodies_are_text() {
        let engine = Engine::new();
        let (event, steps, secrets) = (event(), steps(), secrets());
        let ctx = ctx(&event, &steps, &secrets);
        let cases = [
            ("Hello {{ contact.first_name }}", "Hello Ana"),
            ("{ not json {{ card.id }}", "{ not json card_42"),
            (r#"{"a": 1} trailing"#, r#"{"a": 1} trailing"#),
            (r#"{"a": 1,, }"#, r#"{"a": 1,, }"#),
            ("{{ gameplay.score }}", "120"),
            ("{% if contact.optin %}{\"a\":1}{% endif %}", "{\"a\":1}"),
            (
                "email={{ contact.email | url_encode }}",
                "email=ana%40example.com",
            ),
        ];
        for (src, expected) in cases {
            let body = engine.body(src).unwrap();
            assert!(!body.is_json(), "{src}");
            assert_eq!(body.render(&ctx).unwrap(), expected, "{src}");
            assert_eq!(body.source(), src);
        }
    }

    #[test]
    fn secrets_real_redacted_and_missing() {
        let engine = Engine::new();
        let (event, steps, real) = (event(), steps(), secrets());
        let redacted = Context {
            event: &event,
            steps: &steps,
            secrets: SecretsView::Redacted,
        };
        let real = ctx(&event, &steps, &real);

        let auth = engine.text("Bearer {{ secrets.HUBSPOT_TOKEN }}").unwrap();
        assert_eq!(auth.secrets(), ["HUBSPOT_TOKEN"]);
        assert_eq!(auth.render(&real).unwrap(), "Bearer pat-123");
        assert_eq!(auth.render(&redacted).unwrap(), "Bearer [redacted]");

        let missing = engine.text("{{ secrets.NOPE }}").unwrap();
        assert!(
            matches!(missing.render(&real), Err(TemplateError::MissingSecret(n)) if n == "NOPE")
        );
        assert_eq!(missing.render(&redacted).unwrap(), "[redacted]");
        let err = missing.render(&real).unwrap_err().to_string();
        assert!(err.contains("SWITCHYARD_SECRET_NOPE"), "{err}");

        let body = engine
            .body(r#"{"t": "{{ secrets.HUBSPOT_TOKEN }}", "n": "{{ secrets.NOPE }}"}"#)
            .unwrap();
        assert_eq!(body.secrets(), ["HUBSPOT_TOKEN", "NOPE"]);
        assert!(matches!(body.render(&real), Err(TemplateError::MissingSecret(n)) if n == "NOPE"));
        assert_eq!(
            body.render(&redacted).unwrap(),
            r#"{"t":"[redacted]","n":"[redacted]"}"#
        );
        let bare = engine
            .body(r#"{"t": {{ secrets.HUBSPOT_TOKEN }}}"#)
            .unwrap();
        assert_eq!(bare.render(&real).unwrap(), r#"{"t":"pat-123"}"#);

        let condition = engine.condition("secrets.NOPE != blank").unwrap();
        assert!(matches!(
            condition.eval(&real),
            Err(TemplateError::MissingSecret(_))
        ));

        for unnamed in [
            "{{ secrets }}",
            "{{ secrets[contact.id] }}",
            "{{ secrets | json }}",
        ] {
            assert!(
                matches!(engine.text(unnamed), Err(TemplateError::Parse(_))),
                "{unnamed}"
            );
        }
        let ctx_debug = format!("{real:?}");
        assert!(!ctx_debug.contains("pat-123"), "{ctx_debug}");
        assert!(ctx_debug.contains("HUBSPOT_TOKEN"), "{ctx_debug}");
    }

    #[test]
    fn literals_are_not_parsed() {
        let engine = Engine::new();
        let (event, steps, secrets) = (event(), steps(), secrets());
        let ctx = ctx(&event, &steps, &secrets);
        for src in [
            "https://api.hubapi.com/crm/v3/objects/contacts",
            "a } b { c",
            "{ single }",
            "",
        ] {
            let t = engine.text(src).unwrap();
            assert_eq!(t.literal(), Some(src));
            assert_eq!(t.source(), src);
            assert!(t.variables().is_empty());
            assert!(matches!(t.render_cow(&ctx).unwrap(), Cow::Borrowed(s) if s == src));
        }
        let t = engine.text("{{ card.id }}").unwrap();
        assert_eq!(t.literal(), None);
        assert!(matches!(
            engine.text("{{ card.id | no_such_filter }}"),
            Err(TemplateError::Parse(_))
        ));
        assert!(matches!(
            engine.text("{% if %}"),
            Err(TemplateError::Parse(_))
        ));
        assert!(matches!(
            engine.body(r#"{"a": "{{ x | nope }}"}"#),
            Err(TemplateError::Parse(_))
        ));
    }

    #[test]
    fn variables_extraction() {
        let engine = Engine::new();
        let cases: [(&str, &[&[&str]]); 11] = [
            ("{{ contact.email }}", &[&["contact", "email"]]),
            (
                "{{ steps.find_lead.records[0].Id | soql }}",
                &[&["steps", "find_lead", "records", "0", "Id"]],
            ),
            ("{{ a.b }}{{ a.b }}{{- c -}}", &[&["a", "b"], &["c"]]),
            (
                "{{ x | default: contact.name | append: \"y.z\" }}",
                &[&["x"], &["contact", "name"]],
            ),
            ("{{ x | slice: 1, y.z }}", &[&["x"], &["y", "z"]]),
            (
                "{% if contact.email != blank and gameplay.score > 10 or card.name contains 'a.b' %}{% elsif z == nil %}{% endif %}",
                &[
                    &["contact", "email"],
                    &["gameplay", "score"],
                    &["card", "name"],
                    &["z"],
                ],
            ),
            (
                "{% unless contact.optin == true %}{% endunless %}",
                &[&["contact", "optin"]],
            ),
            (
                "{% for r in steps.x.records reversed limit: 2 %}{{ r.Id }}{{ forloop.index }}{% endfor %}",
                &[&["steps", "x", "records"]],
            ),
            (
                "{% assign n = card.name | upcase %}{{ n }}{{ site.url }}",
                &[&["card", "name"], &["site", "url"]],
            ),
            (
                "{{ data[contact.key].x }}{{ data['a b'] }}",
                &[&["data"], &["contact", "key"], &["data", "a b"]],
            ),
            (
                "{% raw %}{{ not.a.var }}{% endraw %}{% comment %}{{ nor.this }}{% endcomment %}{{ yes }}",
                &[&["yes"]],
            ),
        ];
        for (src, expected) in cases {
            let t = engine.text(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(t.variables(), expected, "{src}");
        }
        let condition = engine.condition("steps.find_lead.totalSize > 0").unwrap();
        assert_eq!(
            condition.variables(),
            [vec!["steps", "find_lead", "totalSize"]]
        );
    }

    #[test]
    fn mapping_forms() {
        let engine = Engine::new();
        let (event, steps, secrets) = (event(), steps(), secrets());
        let ctx = ctx(&event, &steps, &secrets);
        let cases = [
            (json!("contact.email"), Some(json!("ana@example.com"))),
            (json!("gameplay.score"), Some(json!(120))),
            (json!("contact.optin"), Some(json!(true))),
            (json!("contact.properties"), Some(json!({}))),
            (json!("form_fields.company"), Some(json!("Acme"))),
            (json!(" card.name "), Some(json!("Spin to Win"))),
            (json!("steps.find_lead.records[0].Id"), Some(json!("00Q1"))),
            (
                json!("steps.find_lead.records.last.Id"),
                Some(json!("00Q2")),
            ),
            (json!("steps.find_lead.records[7].Id"), None),
            (json!("event.type"), Some(json!("Gameplay.DataCaptured"))),
            (json!("contact.phone"), None),
            (json!("contact.nope"), None),
            (json!("nope.deeper"), None),
            (
                json!("{{ contact.first_name }} {{ contact.last_name }}"),
                Some(json!("Ana Silva")),
            ),
            (json!("{{ gameplay.score }}"), Some(json!("120"))),
            (json!("{{ contact.nope }}"), None),
            (json!("{{ contact.nope }} "), None),
            (json!("Web"), Some(json!("Web"))),
            (json!("v1.2"), Some(json!("v1.2"))),
            (json!("ana@example.com"), Some(json!("ana@example.com"))),
            (json!(42), Some(json!(42))),
            (json!(false), Some(json!(false))),
            (
                json!({ "const": "contact.email" }),
                Some(json!("contact.email")),
            ),
            (json!({ "const": [1, 2] }), Some(json!([1, 2]))),
            (json!({ "const": null }), Some(Value::Null)),
            (json!({ "other": 1 }), Some(json!({ "other": 1 }))),
            (json!(["promo-entrant"]), Some(json!(["promo-entrant"]))),
        ];
        for (value, expected) in cases {
            let mapped = engine
                .mapping(&value)
                .unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(mapped.resolve(&ctx).unwrap(), expected, "{value}");
        }
        let path = engine
            .mapping(&json!("steps.find_lead.records[0].Id"))
            .unwrap();
        assert!(matches!(&path, MappedValue::Path(p) if p == &[
            PathSegment::Key("steps".into()), PathSegment::Key("find_lead".into()),
            PathSegment::Key("records".into()), PathSegment::Index(0), PathSegment::Key("Id".into()),
        ]));
        assert_eq!(
            path.variables(),
            [vec!["steps", "find_lead", "records", "0", "Id"]]
        );
        assert!(matches!(
            engine.mapping(&json!("Web")).unwrap(),
            MappedValue::Literal(_)
        ));
        assert!(
            engine
                .mapping(&json!("Web"))
                .unwrap()
                .variables()
                .is_empty()
        );
        assert!(matches!(
            engine.mapping(&json!("{{ a }}")).unwrap(),
            MappedValue::Template(_)
        ));
        assert!(matches!(
            engine.mapping(&json!("secrets.KEY")),
            Err(TemplateError::Parse(_))
        ));
    }

    #[test]
    fn paths_parse() {
        let key = |k: &str| PathSegment::Key(k.to_owned());
        let cases = [
            ("contact.email", Some(vec![key("contact"), key("email")])),
            (
                "form_fields.opt-in",
                Some(vec![key("form_fields"), key("opt-in")]),
            ),
            (
                "a[0][12].b",
                Some(vec![
                    key("a"),
                    PathSegment::Index(0),
                    PathSegment::Index(12),
                    key("b"),
                ]),
            ),
            ("Web", None),
            ("a[0]", None),
            ("a.", None),
            (".a", None),
            ("a..b", None),
            ("a.1b", None),
            ("a[x].b", None),
            ("a.b c", None),
            ("1.5", None),
        ];
        for (src, expected) in cases {
            assert_eq!(parse_path(src), expected, "{src}");
        }
    }

    #[test]
    fn compiled_parts_are_shareable() {
        fn assert_send_sync<T: Send + Sync + Clone + fmt::Debug>() {}
        assert_send_sync::<Engine>();
        assert_send_sync::<TextTemplate>();
        assert_send_sync::<Condition>();
        assert_send_sync::<BodyTemplate>();
        assert_send_sync::<MappedValue>();
    }

    /// Regression (found by the `json_template` fuzz target): the `liquid` parser panics on an
    /// integer literal larger than an `i64`; it is now a parse error.
    #[test]
    fn an_integer_literal_too_large_is_a_parse_error_not_a_panic() {
        let engine = Engine::new();
        for src in [
            "{{ 99999999999999999999 }}",
            "{{ contact.score | plus: 99999999999999999999 }}",
            "{% for i in (1..99999999999999999999) %}{{ i }}{% endfor %}",
            "{{ -99999999999999999999 }}",
            r#"{"b": "{{ 2222222222222222222222222222222222222222 -}}"}"#,
        ] {
            match engine.text(src) {
                Err(TemplateError::Parse(message)) => {
                    assert!(message.contains("too large"), "{src}: {message}")
                }
                other => panic!("{src}: {other:?}"),
            }
            let _ = engine.body(src);
        }
        // What still compiles: the largest integers, big floats, digits in strings and text.
        for src in [
            "{{ 9223372036854775807 }}",
            "{{ -9223372036854775808 }}",
            "{{ 99999999999999999999.5 }}",
            "{{ 1.99999999999999999999 }}",
            "{{ \"99999999999999999999\" }}",
            "99999999999999999999 {{ contact.id }}",
        ] {
            assert!(engine.text(src).is_ok(), "{src}");
        }
    }

    /// Regression (found by the `json_template` fuzz target): scanning a tag for its closing
    /// `}}` walked byte by byte and sliced the source at every byte, so a multi-byte character
    /// inside a tag panicked ("byte index is not a char boundary").
    #[test]
    fn multibyte_characters_inside_a_tag_do_not_panic() {
        let engine = Engine::new();
        for src in [
            "{{ contactۂ }}",
            "{{ a | append: ۂ }}",
            "{% if ۂ %}x{% endif %}",
            r#"{"k{{ site.id }}": {{ steps.find ۂ }}, "e": "{{ é }}"}"#,
        ] {
            // Compiling may fail (not Liquid); it must not panic.
            let _ = engine.text(src);
            let _ = engine.body(src);
        }
        // The fuzzer's input, as found.
        let found = b"{\"k{{ siteid.id }}\": {{ steps.finXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXYXXXXXXXXXXXXXXXXXXXXXXXXXXXXX iXXXXXXXXXXX\x18\x00XXXXXXXet\x0e\x00\x00\x00\x00\x00\x00\x00s.API_KEY\xdb\x82}\"}";
        let _ = engine.body(std::str::from_utf8(found).expect("UTF-8"));
        // And a tag holding one still reads its variables.
        let t = engine
            .text("{{ contact.first_name | append: \"é\" }}")
            .expect("compiles");
        assert_eq!(
            t.variables(),
            [vec!["contact".to_owned(), "first_name".to_owned()]]
        );
    }
}
