//! The event envelope (SPEC §2): parse, validate, normalise aliases.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde_json::Value;

use self::head::Head;

mod head;

/// Deepest nesting accepted in an event.
pub const MAX_DEPTH: usize = 64;

/// One entry of the event catalog.
#[derive(Debug)]
pub struct EventType {
    /// The main name.
    pub name: &'static str,
    /// Other names upstream may publish; normalised to `name`.
    pub aliases: &'static [&'static str],
    /// Whether workflows may be triggered by it (the rest feed webhooks only).
    pub trigger: bool,
    /// The per-type object it carries, if any (`form_fields`, `gameplay`, …).
    pub carries: &'static [&'static str],
}

/// The catalog of SPEC §2.
pub const CATALOG: &[EventType] = &[
    EventType {
        name: "Gameplay.DataCaptured",
        aliases: &[],
        trigger: true,
        carries: &["form_fields", "gameplay"],
    },
    EventType {
        name: "Gameplay.DataCapturedQualified",
        aliases: &[],
        trigger: true,
        carries: &["form_fields", "gameplay"],
    },
    EventType {
        name: "Gameplay.Ended",
        aliases: &["Card.Completed"],
        trigger: true,
        carries: &["gameplay"],
    },
    EventType {
        name: "Prize.Won",
        aliases: &["Prize.Awarded"],
        trigger: true,
        carries: &["prize", "gameplay"],
    },
    EventType {
        name: "Coupon.Redeemed",
        aliases: &[],
        trigger: true,
        carries: &["coupon"],
    },
    EventType {
        name: "Contact.Created",
        aliases: &["Contact.Identified"],
        trigger: true,
        carries: &[],
    },
    EventType {
        name: "Gameplay.Started",
        aliases: &[],
        trigger: false,
        carries: &["gameplay"],
    },
    EventType {
        name: "Form.Submitted",
        aliases: &[],
        trigger: false,
        carries: &["form_fields", "gameplay"],
    },
    EventType {
        name: "Prize.Claimed",
        aliases: &[],
        trigger: false,
        carries: &["prize"],
    },
    EventType {
        name: "Prize.DrawCompleted",
        aliases: &[],
        trigger: false,
        carries: &["draw", "prize"],
    },
    EventType {
        name: "Coupon.Issued",
        aliases: &[],
        trigger: false,
        carries: &["coupon"],
    },
    EventType {
        name: "Site.Published",
        aliases: &[],
        trigger: false,
        carries: &[],
    },
    EventType {
        name: "Site.Unpublished",
        aliases: &[],
        trigger: false,
        carries: &[],
    },
];

/// Fields every event may carry, with the known keys of each (`None`: free-form keys).
pub const COMMON_FIELDS: &[(&str, Option<&[&str]>)] = &[
    ("id", None),
    ("type", None),
    ("occurred_at", None),
    ("workspace", Some(&["id", "name"])),
    ("site", Some(&["id", "name", "url"])),
    ("card", Some(&["id", "name", "type"])),
    (
        "contact",
        Some(&[
            "id",
            "email",
            "first_name",
            "last_name",
            "phone",
            "optin",
            "properties",
        ]),
    ),
    ("data", None),
];

/// Known keys of the per-type objects (`None`: free-form keys).
pub const TYPED_FIELDS: &[(&str, Option<&[&str]>)] = &[
    ("form_fields", None),
    (
        "gameplay",
        Some(&[
            "id",
            "score",
            "correct",
            "completed",
            "duration_ms",
            "started_at",
            "ended_at",
        ]),
    ),
    (
        "prize",
        Some(&["id", "name", "type", "value", "recipient_id", "claimed_at"]),
    ),
    (
        "draw",
        Some(&["id", "prize_id", "drawn_at", "winner_count", "winners"]),
    ),
    (
        "coupon",
        Some(&[
            "id",
            "code",
            "offer_id",
            "offer_name",
            "issued_at",
            "redeemed_at",
            "expires_at",
        ]),
    ),
];

/// Finds a type by its main name or an alias.
pub fn lookup_type(name: &str) -> Option<&'static EventType> {
    CATALOG
        .iter()
        .find(|t| t.name == name || t.aliases.contains(&name))
}

/// Why an event was rejected. `label()` is the bounded metric label; `Display` is the reason header.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Larger than `router.max_event_bytes`.
    #[error("event is {size} bytes, larger than router.max_event_bytes ({limit})")]
    TooLarge {
        /// Size of the body.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("event is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Not JSON, or not an object.
    #[error("event is not valid JSON: {0}")]
    InvalidJson(String),
    /// A required field is absent or empty.
    #[error("event lacks required field {0}")]
    MissingField(&'static str),
    /// A field has the wrong shape.
    #[error("event field {field} is invalid: {problem}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The type is not in the catalog.
    #[error("event type {0:?} is not in the catalog")]
    UnknownType(String),
}

impl Rejection {
    /// The `reason` label of `switchyard_events_rejected_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too_large",
            Rejection::TooDeep => "too_deep",
            Rejection::InvalidJson(_) => "invalid_json",
            Rejection::MissingField(_) => "missing_field",
            Rejection::InvalidField { .. } => "invalid_field",
            Rejection::UnknownType(_) => "unknown_type",
        }
    }
}

/// A validated, normalised event.
#[derive(Debug, Clone)]
pub struct Event {
    /// The whole envelope, `type` rewritten to the main name, once something asked for it
    /// ([`Event::body`]).
    body: OnceLock<Value>,
    /// The bytes `body` is parsed from when first asked for (empty when it was parsed at once).
    source: Box<[u8]>,
    /// `id`.
    pub id: String,
    /// The catalog entry of `type`.
    pub kind: &'static EventType,
    /// `occurred_at`.
    pub occurred_at: DateTime<Utc>,
    /// `workspace.id`.
    pub workspace: String,
    /// True when `body` is the message's JSON as published (its `type` was the main name, so
    /// nothing was rewritten): run history then keeps the message's own bytes instead of
    /// serialising `body` again.
    pub verbatim: bool,
    /// `card.id`, when it is a string.
    card_id: Option<String>,
    /// `site.id`, when it is a string.
    site_id: Option<String>,
}

impl Event {
    /// Parses and validates raw bytes from the broker.
    ///
    /// Routing needs only a few fields of the envelope, so they are read in one pass that checks
    /// the rest as strictly as parsing it into a [`Value`] would (every string is UTF-8, every
    /// number in range, no deeper than [`MAX_DEPTH`]) without building it; the tree is built when
    /// [`Event::body`] is first asked for (a trigger's `if`, an alias to rewrite). Whatever the
    /// pass refuses, or finds invalid, is read again the plain way (count the brackets, parse
    /// the tree, validate it), so a rejection is the same either way.
    pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Event, Rejection> {
        if bytes.len() > max_bytes {
            return Err(Rejection::TooLarge {
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        let Ok(Head::Object(head)) = serde_json::from_slice::<Head>(bytes) else {
            return Event::parse_tree(bytes);
        };
        match head.fields().validate() {
            Ok(fields) if fields.verbatim => {
                Ok(Event::assemble(OnceLock::new(), bytes.into(), fields))
            }
            // An alias (the tree is needed now, to rewrite `type` in it), or a rejection.
            _ => Event::parse_tree(bytes),
        }
    }

    /// The plain way: depth, then the whole tree, then validation.
    fn parse_tree(bytes: &[u8]) -> Result<Event, Rejection> {
        if nesting_depth(bytes) > MAX_DEPTH {
            return Err(Rejection::TooDeep);
        }
        let body: Value =
            serde_json::from_slice(bytes).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
        Event::from_value(body)
    }

    /// Validates an already parsed envelope.
    pub fn from_value(mut body: Value) -> Result<Event, Rejection> {
        let Value::Object(map) = &mut body else {
            return Err(Rejection::InvalidJson(
                "the top level is not an object".into(),
            ));
        };
        let fields = Fields::of(map).validate()?;
        if !fields.verbatim {
            map.insert("type".into(), Value::String(fields.kind.name.into()));
        }
        Ok(Event::assemble(
            OnceLock::from(body),
            Box::default(),
            fields,
        ))
    }

    fn assemble(body: OnceLock<Value>, source: Box<[u8]>, fields: Valid) -> Event {
        Event {
            body,
            source,
            id: fields.id,
            kind: fields.kind,
            occurred_at: fields.occurred_at,
            workspace: fields.workspace,
            verbatim: fields.verbatim,
            card_id: fields.card_id,
            site_id: fields.site_id,
        }
    }

    /// The whole envelope, `type` rewritten to the main name; what templates see. Parsed from
    /// the message on first use.
    pub fn body(&self) -> &Value {
        self.body
            .get_or_init(|| match serde_json::from_slice(&self.source) {
                Ok(body) => body,
                Err(e) => {
                    // `parse` read these bytes as strictly as this does; it cannot happen.
                    tracing::error!(event_id = %self.id, error = %e, "an accepted event no longer parses");
                    Value::Null
                }
            })
    }

    /// Whether [`Event::body`] has been built.
    #[cfg(test)]
    pub(crate) fn tree_built(&self) -> bool {
        self.body.get().is_some()
    }

    /// `card.id`, when present.
    pub fn card_id(&self) -> Option<&str> {
        self.card_id.as_deref()
    }

    /// `site.id`, when present.
    pub fn site_id(&self) -> Option<&str> {
        self.site_id.as_deref()
    }
}

/// The envelope's fields that validation reads, whichever way they were parsed.
struct Fields<'a> {
    id: Option<&'a Value>,
    r#type: Option<&'a Value>,
    occurred_at: Option<&'a Value>,
    workspace: Member<'a>,
    site: Member<'a>,
    card: Member<'a>,
    contact: Member<'a>,
}

/// What validation needs of an optional object field.
#[derive(Debug, Default)]
enum Member<'a> {
    /// Not there.
    #[default]
    Absent,
    /// `null`.
    Null,
    /// An object, with its `id` if it has one.
    Object(Option<&'a Value>),
    /// Anything else.
    Other,
}

impl<'a> Member<'a> {
    fn of(value: Option<&'a Value>) -> Member<'a> {
        match value {
            None => Member::Absent,
            Some(Value::Null) => Member::Null,
            Some(Value::Object(map)) => Member::Object(map.get("id")),
            Some(_) => Member::Other,
        }
    }

    fn id(&self) -> Option<String> {
        match self {
            Member::Object(Some(Value::String(id))) => Some(id.clone()),
            _ => None,
        }
    }
}

/// The validated fields of an event.
struct Valid {
    id: String,
    kind: &'static EventType,
    occurred_at: DateTime<Utc>,
    workspace: String,
    verbatim: bool,
    card_id: Option<String>,
    site_id: Option<String>,
}

impl<'a> Fields<'a> {
    fn of(map: &'a serde_json::Map<String, Value>) -> Fields<'a> {
        Fields {
            id: map.get("id"),
            r#type: map.get("type"),
            occurred_at: map.get("occurred_at"),
            workspace: Member::of(map.get("workspace")),
            site: Member::of(map.get("site")),
            card: Member::of(map.get("card")),
            contact: Member::of(map.get("contact")),
        }
    }

    fn validate(&self) -> Result<Valid, Rejection> {
        let id = required_str(self.id, "id")?.to_owned();
        let type_name = required_str(self.r#type, "type")?;
        let kind =
            lookup_type(type_name).ok_or_else(|| Rejection::UnknownType(type_name.into()))?;
        let occurred = required_str(self.occurred_at, "occurred_at")?;
        let occurred_at = DateTime::parse_from_rfc3339(occurred)
            .map_err(|e| Rejection::InvalidField {
                field: "occurred_at",
                problem: format!("{occurred:?} is not an RFC 3339 time ({e})"),
            })?
            .with_timezone(&Utc);
        let workspace = match &self.workspace {
            Member::Object(id) => required_str(*id, "workspace.id")?.to_owned(),
            Member::Null | Member::Absent => return Err(Rejection::MissingField("workspace.id")),
            Member::Other => {
                return Err(Rejection::InvalidField {
                    field: "workspace",
                    problem: "must be an object with an id".into(),
                });
            }
        };
        for (field, member) in [
            ("site", &self.site),
            ("card", &self.card),
            ("contact", &self.contact),
        ] {
            if matches!(member, Member::Other) {
                return Err(Rejection::InvalidField {
                    field,
                    problem: "must be an object".into(),
                });
            }
        }
        Ok(Valid {
            id,
            kind,
            occurred_at,
            workspace,
            verbatim: kind.name == type_name,
            card_id: self.card.id(),
            site_id: self.site.id(),
        })
    }
}

fn required_str<'a>(value: Option<&'a Value>, field: &'static str) -> Result<&'a str, Rejection> {
    match value {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::Null) | None => Err(Rejection::MissingField(field)),
        Some(Value::String(_)) => Err(Rejection::MissingField(field)),
        Some(_) => Err(Rejection::InvalidField {
            field,
            problem: "must be a string".into(),
        }),
    }
}

/// The deepest bracket nesting in a JSON text, without parsing it (strings are skipped, a
/// search for their closing quote at a time).
pub fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut at) = (0usize, 0usize, 0usize);
    while let Some(&b) = bytes.get(at) {
        at += 1;
        match b {
            b'"' => loop {
                // To the next quote or backslash; a backslash escapes the byte after it.
                let Some(rest) = bytes.get(at..) else {
                    return max;
                };
                match memchr::memchr2(b'"', b'\\', rest) {
                    Some(found) if rest[found] == b'\\' => at += found + 2,
                    Some(found) => {
                        at += found + 1;
                        break;
                    }
                    // An unterminated string: nothing after it counts.
                    None => return max,
                }
            },
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"id":"evt_1","type":"Gameplay.DataCaptured","occurred_at":"2026-11-26T18:00:00Z",
        "workspace":{"id":"ws_demo"},"card":{"id":"card_42"},"extra":{"kept":true}}"#;

    #[test]
    fn a_good_event_keeps_unknown_fields() {
        let e = Event::parse(GOOD.as_bytes(), 262_144).expect("valid");
        assert!(e.body.get().is_none(), "routing does not build the tree");
        assert_eq!(e.id, "evt_1");
        assert_eq!(e.kind.name, "Gameplay.DataCaptured");
        assert_eq!(e.workspace, "ws_demo");
        assert_eq!(e.card_id(), Some("card_42"));
        assert_eq!(e.body()["extra"]["kept"], Value::Bool(true));
        assert!(e.verbatim, "nothing was rewritten");
    }

    #[test]
    fn aliases_are_normalised() {
        let raw = GOOD.replace("Gameplay.DataCaptured", "Prize.Awarded");
        let e = Event::parse(raw.as_bytes(), 262_144).expect("valid");
        assert_eq!(e.kind.name, "Prize.Won");
        assert_eq!(e.body()["type"], "Prize.Won");
        assert!(!e.verbatim, "an alias is rewritten");
    }

    #[test]
    fn every_rejection_has_its_label() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let cases: Vec<(String, &str)> = vec![
            (GOOD.to_string(), "too_large"),
            (deep, "too_deep"),
            ("{not json".into(), "invalid_json"),
            ("[1,2]".into(), "invalid_json"),
            (GOOD.replace(r#""id":"evt_1","#, ""), "missing_field"),
            (GOOD.replace(r#"{"id":"ws_demo"}"#, "{}"), "missing_field"),
            (
                GOOD.replace("Gameplay.DataCaptured", "Nope.Nothing"),
                "unknown_type",
            ),
            (
                GOOD.replace("2026-11-26T18:00:00Z", "yesterday"),
                "invalid_field",
            ),
            (GOOD.replace(r#""evt_1""#, "42"), "invalid_field"),
        ];
        for (i, (raw, label)) in cases.into_iter().enumerate() {
            let limit = if i == 0 { 10 } else { 262_144 };
            let err = Event::parse(raw.as_bytes(), limit).expect_err(label);
            assert_eq!(err.label(), label, "{raw}: {err}");
        }
    }

    /// What the plain way reads: the whole tree, then validation.
    fn through_a_tree(raw: &[u8]) -> Result<Event, Rejection> {
        if depth_byte_by_byte(raw) > MAX_DEPTH {
            return Err(Rejection::TooDeep);
        }
        let body: Value =
            serde_json::from_slice(raw).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
        Event::from_value(body)
    }

    /// The routing pass accepts exactly what parsing the whole tree accepts, reads the same
    /// fields, and its body (built later) is the same tree.
    #[test]
    fn the_routing_pass_reads_as_the_whole_tree_does() {
        let cases: Vec<Vec<u8>> = vec![
            GOOD.into(),
            GOOD.replace("Gameplay.DataCaptured", "Prize.Awarded")
                .into(),
            // A repeated key keeps its last value.
            GOOD.replace(r#""id":"evt_1","#, r#""id":"evt_0","id":"evt_1","#)
                .into(),
            GOOD.replace(
                r#""card":{"id":"card_42"}"#,
                r#""card":{"id":"a","id":"b"},"card":null"#,
            )
            .into(),
            GOOD.replace(r#""card":{"id":"card_42"}"#, r#""card":"card_42""#)
                .into(),
            GOOD.replace(r#""card":{"id":"card_42"}"#, r#""card":{"id":42}"#)
                .into(),
            GOOD.replace(
                r#""card":{"id":"card_42"}"#,
                r#""site":{"name":"s","id":"site_1"}"#,
            )
            .into(),
            GOOD.replace(r#"{"id":"ws_demo"}"#, "[]").into(),
            GOOD.replace(r#"{"id":"ws_demo"}"#, r#"{"id":"  "}"#).into(),
            GOOD.replace(r#"{"kept":true}"#, r#"{"big":1e400}"#).into(),
            GOOD.replace(
                r#"{"kept":true}"#,
                r#"{"big":123456789012345678901234567890}"#,
            )
            .into(),
            GOOD.replace(r#"{"kept":true}"#, r#"{"s":"\ud800"}"#).into(),
            GOOD.replace(r#"{"kept":true}"#, r#"{"s":"\ud83d\ude00 \u0000"}"#)
                .into(),
            GOOD.replace(r#"{"kept":true}"#, "{\"s\":\"tab\there\"}")
                .into(),
            GOOD.replace(r#"{"kept":true}"#, r#"{"s":"\q"}"#).into(),
            GOOD.replace(r#"{"kept":true}"#, r#"[1,2,]"#).into(),
            [&GOOD.as_bytes()[..GOOD.len() - 1], b",\"x\":\"\xff\xfe\"}"].concat(),
            [GOOD.as_bytes(), b" {}"].concat(),
            [GOOD.as_bytes(), b" \n"].concat(),
            br#"[{"id":"evt_1"}]"#.to_vec(),
            b"\"just a string\"".to_vec(),
            b"null".to_vec(),
            b"".to_vec(),
        ];
        // Nesting at the limit and one past it, in each place the pass reads differently: a
        // field it skips, a field it keeps (`id`), an object's `id` (`card.id`), a top-level
        // array; and past it before a syntax error.
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let mut cases = cases;
        for n in [62, 63, 64, 65, 200] {
            let deep = nest(n);
            for (from, to) in [
                (r#"{"kept":true}"#, format!(r#"{{"kept":{deep}}}"#)),
                (r#""evt_1""#, deep.clone()),
                (r#""card_42""#, deep.clone()),
            ] {
                cases.push(GOOD.replace(from, &to).into_bytes());
            }
            cases.push(nest(n + 1).into_bytes());
            cases.push(format!("{}{GOOD}", "[".repeat(n)).into_bytes());
        }
        for raw in cases {
            let shown = String::from_utf8_lossy(&raw).into_owned();
            match (Event::parse(&raw, 262_144), through_a_tree(&raw)) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(
                        (&a.id, a.kind.name, &a.workspace, a.occurred_at, a.verbatim),
                        (&b.id, b.kind.name, &b.workspace, b.occurred_at, b.verbatim),
                        "{shown}"
                    );
                    assert_eq!(
                        (a.card_id(), a.site_id()),
                        (b.card_id(), b.site_id()),
                        "{shown}"
                    );
                    assert_eq!(a.body(), b.body(), "{shown}");
                    assert!(a.body().is_object(), "{shown}");
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{shown}"),
                (a, b) => panic!("{shown}: the pass read {a:?}, the tree {b:?}"),
            }
        }
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(nesting_depth(br#"{"a":"[[[[{{{{\"]]"}"#), 1);
        assert_eq!(nesting_depth(br#"{"a":[{"b":[]}]}"#), 4);
        assert_eq!(nesting_depth(b""), 0);
        // Every prefix of a text with escapes, nested strings and brackets (so unterminated
        // strings and a trailing backslash too) reads as a byte-by-byte scan reads it.
        let text = br#"{"a\\":["[\"{",{"b\\\"":[[1,"]"],{}]}],"c":"\\"}"#;
        for end in 0..=text.len() {
            let prefix = &text[..end];
            assert_eq!(
                nesting_depth(prefix),
                depth_byte_by_byte(prefix),
                "{}",
                String::from_utf8_lossy(prefix)
            );
        }
        assert_eq!(nesting_depth(text), 5);
    }

    /// The plain scan `nesting_depth` must agree with.
    fn depth_byte_by_byte(bytes: &[u8]) -> usize {
        let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
        for &b in bytes {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    max = max.max(depth);
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        max
    }
}
