//! Field maps: a mapped value is a bare dotted path (keeps its JSON type), a template or a
//! literal; paths are resolved over the same root templates see, without going through Liquid.

use serde_json::Value;

use super::{
    Context, EVENT_FIELDS, Engine, REDACTED, SecretsView, TemplateError, TextTemplate, has_markup,
    scan,
};

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

impl Engine {
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

/// Reads `ident ( .ident | [n] )*`, returning the segments and how many dots it had.
pub(super) fn parse_path_segments(src: &str) -> Option<(Vec<PathSegment>, usize)> {
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
pub(super) fn bare_path(placeholder: &str) -> Option<Vec<PathSegment>> {
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
pub(super) enum Found<'a> {
    /// A value of the event or of `steps`.
    Json(&'a Value),
    /// A value made on the way: a secret, `event` itself, a `size`.
    Owned(Value),
    /// Nothing there.
    Missing,
}

/// Resolves a path over the same root templates see (without going through Liquid).
pub(super) fn lookup<'a>(
    ctx: &Context<'a>,
    path: &[PathSegment],
) -> Result<Found<'a>, TemplateError> {
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
