//! Request bodies: a lenient-JSON body is compiled value by value and rendered so that the
//! output is valid JSON whatever the event holds; anything else is one text template.

use serde_json::{Map, Value};

use super::mapping::{Found, PathSegment, bare_path, lookup};
use super::view::Root;
use super::{
    Context, Engine, TemplateError, TextTemplate, check_secrets, has_markup, into_string, lenient,
    push_unique, render_error,
};

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

impl Engine {
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

    /// Compiles one value of a lenient-JSON body, folding template-free parts into constants.
    fn compile_node(&self, raw: lenient::Raw) -> Result<Node, TemplateError> {
        match raw {
            lenient::Raw::Literal(value) => Node::constant(value),
            lenient::Raw::Str(s) if has_markup(&s) => Ok(Node::Str(self.text(&s)?)),
            lenient::Raw::Str(s) => Node::constant(Value::String(s)),
            lenient::Raw::Bare(src) => {
                let template = self.text(&src)?;
                let path = bare_path(&src);
                Ok(Node::Bare(Box::new(Bare { template, path })))
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
                    None => Ok(Node::Array(nodes.into_boxed_slice())),
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
                    None => Ok(Node::Object(members.into_boxed_slice())),
                }
            }
        }
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

/// One value of a JSON body. Two words wide (the larger parts are boxed): a catalog of ten
/// thousand workflows holds tens of thousands of them.
#[derive(Debug, Clone)]
enum Node {
    /// A part without templates, serialised once at compile time.
    Const(Box<Constant>),
    /// A quoted string with markup: always renders to a JSON string.
    Str(TextTemplate),
    /// A `{{ … }}` standing where a value goes.
    Bare(Box<Bare>),
    /// An object with at least one template in it; keys are templates too.
    Object(Box<[(TextTemplate, Node)]>),
    /// An array with at least one template in it.
    Array(Box<[Node]>),
}

/// A part of a body without templates.
#[derive(Debug, Clone)]
struct Constant {
    /// The value (for [`BodyTemplate::render_value`]).
    value: Value,
    /// Its compact JSON text (for [`BodyTemplate::render`]).
    json: String,
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
        Ok(Node::Const(Box::new(Constant { value, json })))
    }

    fn constant_value(&self) -> Option<&Value> {
        match self {
            Node::Const(constant) => Some(&constant.value),
            _ => None,
        }
    }

    fn for_each_template(&self, f: &mut dyn FnMut(&TextTemplate)) {
        match self {
            Node::Const(_) => {}
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
            Node::Const(constant) => out.extend_from_slice(constant.json.as_bytes()),
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
        Node::Const(constant) => Ok(constant.value.clone()),
        Node::Str(template) => text(template).map(Value::String),
        Node::Bare(bare) => match &bare.path {
            Some(path) => Ok(match lookup(ctx, path)? {
                Found::Json(value) => value.clone(),
                Found::Owned(value) => value,
                Found::Missing => Value::Null,
            }),
            None => {
                let rendered = text(&bare.template)?;
                Ok(serde_json::from_str(&rendered).unwrap_or(Value::String(rendered)))
            }
        },
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
