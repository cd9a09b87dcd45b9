//! The event envelope (SPEC §2): parse, validate, normalise aliases.

use chrono::{DateTime, Utc};
use serde_json::Value;

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
    /// The whole envelope, `type` rewritten to the main name; what templates see.
    pub body: Value,
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
}

impl Event {
    /// Parses and validates raw bytes from the broker.
    pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Event, Rejection> {
        if bytes.len() > max_bytes {
            return Err(Rejection::TooLarge {
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        if nesting_depth(bytes) > MAX_DEPTH {
            return Err(Rejection::TooDeep);
        }
        let body: Value =
            serde_json::from_slice(bytes).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
        Event::from_value(body)
    }

    /// Validates an already parsed envelope.
    pub fn from_value(mut body: Value) -> Result<Event, Rejection> {
        let Value::Object(fields) = &mut body else {
            return Err(Rejection::InvalidJson(
                "the top level is not an object".into(),
            ));
        };
        let id = required_str(fields.get("id"), "id")?.to_owned();
        let type_name = required_str(fields.get("type"), "type")?;
        let kind =
            lookup_type(type_name).ok_or_else(|| Rejection::UnknownType(type_name.into()))?;
        let occurred = required_str(fields.get("occurred_at"), "occurred_at")?;
        let occurred_at = DateTime::parse_from_rfc3339(occurred)
            .map_err(|e| Rejection::InvalidField {
                field: "occurred_at",
                problem: format!("{occurred:?} is not an RFC 3339 time ({e})"),
            })?
            .with_timezone(&Utc);
        let workspace = match fields.get("workspace") {
            Some(Value::Object(ws)) => required_str(ws.get("id"), "workspace.id")?.to_owned(),
            Some(Value::Null) | None => return Err(Rejection::MissingField("workspace.id")),
            Some(_) => {
                return Err(Rejection::InvalidField {
                    field: "workspace",
                    problem: "must be an object with an id".into(),
                });
            }
        };
        for optional in ["site", "card", "contact"] {
            if let Some(v) = fields.get(optional)
                && !(v.is_object() || v.is_null())
            {
                return Err(Rejection::InvalidField {
                    field: optional_name(optional),
                    problem: "must be an object".into(),
                });
            }
        }
        let verbatim = kind.name == type_name;
        if !verbatim {
            fields.insert("type".into(), Value::String(kind.name.into()));
        }
        Ok(Event {
            body,
            id,
            kind,
            occurred_at,
            workspace,
            verbatim,
        })
    }

    /// `card.id`, when present.
    pub fn card_id(&self) -> Option<&str> {
        self.body.get("card")?.get("id")?.as_str()
    }

    /// `site.id`, when present.
    pub fn site_id(&self) -> Option<&str> {
        self.body.get("site")?.get("id")?.as_str()
    }
}

fn optional_name(name: &str) -> &'static str {
    match name {
        "site" => "site",
        "card" => "card",
        _ => "contact",
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

/// The deepest bracket nesting in a JSON text, without parsing it (strings are skipped).
pub fn nesting_depth(bytes: &[u8]) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"id":"evt_1","type":"Gameplay.DataCaptured","occurred_at":"2026-11-26T18:00:00Z",
        "workspace":{"id":"ws_demo"},"card":{"id":"card_42"},"extra":{"kept":true}}"#;

    #[test]
    fn a_good_event_keeps_unknown_fields() {
        let e = Event::parse(GOOD.as_bytes(), 262_144).expect("valid");
        assert_eq!(e.id, "evt_1");
        assert_eq!(e.kind.name, "Gameplay.DataCaptured");
        assert_eq!(e.workspace, "ws_demo");
        assert_eq!(e.card_id(), Some("card_42"));
        assert_eq!(e.body["extra"]["kept"], Value::Bool(true));
        assert!(e.verbatim, "nothing was rewritten");
    }

    #[test]
    fn aliases_are_normalised() {
        let raw = GOOD.replace("Gameplay.DataCaptured", "Prize.Awarded");
        let e = Event::parse(raw.as_bytes(), 262_144).expect("valid");
        assert_eq!(e.kind.name, "Prize.Won");
        assert_eq!(e.body["type"], "Prize.Won");
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

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(nesting_depth(br#"{"a":"[[[[{{{{\"]]"}"#), 1);
        assert_eq!(nesting_depth(br#"{"a":[{"b":[]}]}"#), 4);
    }
}
