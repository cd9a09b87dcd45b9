//! One pass over an event's text that keeps only what routing reads (`id`, `type`,
//! `occurred_at`, and the objects `workspace`, `site`, `card`, `contact` with their `id`) and
//! checks everything else as strictly as parsing it into a [`Value`] does, without building it.
//! It refuses a text nested deeper than [`MAX_DEPTH`] too, so the router need not count
//! brackets in a second pass (a refused text is read again the plain way, which says why).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Fields, MAX_DEPTH, Member};

/// A visitor's answers to the scalars (boolean, number, string; and `null`), which are read and
/// checked by the deserializer before the visitor sees them.
macro_rules! scalars {
    ($value:ty, $scalar:expr, $null:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$value, E> {
            Ok($scalar)
        }

        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$value, E> {
            Ok($scalar)
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$value, E> {
            Ok($scalar)
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$value, E> {
            Ok($scalar)
        }

        fn visit_str<E: de::Error>(self, _: &str) -> Result<$value, E> {
            Ok($scalar)
        }

        fn visit_unit<E: de::Error>(self) -> Result<$value, E> {
            Ok($null)
        }
    };
}

/// An event's text, read for routing.
pub(super) enum Head {
    /// The top level is an object.
    Object(Box<Parts>),
    /// Valid JSON, but not an object.
    NotObject,
}

/// The routing fields of an envelope. A repeated key keeps its last value, as in a [`Value`].
#[derive(Default)]
pub(super) struct Parts {
    id: Option<Value>,
    r#type: Option<Value>,
    occurred_at: Option<Value>,
    workspace: Part,
    site: Part,
    card: Part,
    contact: Part,
}

/// An optional object field, as [`Member`] reads it, owning its `id`.
#[derive(Default)]
enum Part {
    #[default]
    Absent,
    Null,
    Object(Option<Value>),
    Other,
}

impl Parts {
    /// The fields validation reads.
    pub(super) fn fields(&self) -> Fields<'_> {
        Fields {
            id: self.id.as_ref(),
            r#type: self.r#type.as_ref(),
            occurred_at: self.occurred_at.as_ref(),
            workspace: self.workspace.member(),
            site: self.site.member(),
            card: self.card.member(),
            contact: self.contact.member(),
        }
    }
}

impl Part {
    fn member(&self) -> Member<'_> {
        match self {
            Part::Absent => Member::Absent,
            Part::Null => Member::Null,
            Part::Object(id) => Member::Object(id.as_ref()),
            Part::Other => Member::Other,
        }
    }
}

/// A top-level key routing reads, or another.
enum Key {
    Id,
    Type,
    OccurredAt,
    Workspace,
    Site,
    Card,
    Contact,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "id" => Key::Id,
                    "type" => Key::Type,
                    "occurred_at" => Key::OccurredAt,
                    "workspace" => Key::Workspace,
                    "site" => Key::Site,
                    "card" => Key::Card,
                    "contact" => Key::Contact,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Head {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Head, D::Error> {
        deserializer.deserialize_any(HeadVisitor)
    }
}

struct HeadVisitor;

impl<'de> Visitor<'de> for HeadVisitor {
    type Value = Head;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
        let mut parts = Box::<Parts>::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Id => parts.id = Some(within(map.next_value()?, MEMBER)?),
                Key::Type => parts.r#type = Some(within(map.next_value()?, MEMBER)?),
                Key::OccurredAt => parts.occurred_at = Some(within(map.next_value()?, MEMBER)?),
                Key::Workspace => parts.workspace = map.next_value()?,
                Key::Site => parts.site = map.next_value()?,
                Key::Card => parts.card = map.next_value()?,
                Key::Contact => parts.contact = map.next_value()?,
                Key::Other => map.next_value_seed(Checked { depth: MEMBER })?,
            }
        }
        Ok(Head::Object(parts))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Head, A::Error> {
        Checked { depth: TOP }
            .visit_seq(seq)
            .map(|()| Head::NotObject)
    }

    scalars!(Head, Head::NotObject, Head::NotObject);
}

impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Part, D::Error> {
        deserializer.deserialize_any(PartVisitor)
    }
}

struct PartVisitor;

impl<'de> Visitor<'de> for PartVisitor {
    type Value = Part;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Part, A::Error> {
        let mut id = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Id => id = Some(within(map.next_value()?, MEMBER + 1)?),
                _ => map.next_value_seed(Checked { depth: MEMBER + 1 })?,
            }
        }
        Ok(Part::Object(id))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Part, A::Error> {
        Checked { depth: MEMBER }
            .visit_seq(seq)
            .map(|()| Part::Other)
    }

    scalars!(Part, Part::Other, Part::Null);
}

/// The depth of the top level's container.
const TOP: usize = 1;
/// The depth of a container that is a member of the top level's.
const MEMBER: usize = 2;

/// A value parsed whole at `depth` (where a container would be nested `depth` deep), refused
/// when it reaches deeper than [`MAX_DEPTH`].
fn within<E: de::Error>(value: Value, depth: usize) -> Result<Value, E> {
    fn nesting(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(nesting).max().unwrap_or(0),
            _ => 0,
        }
    }
    if depth - 1 + nesting(&value) > MAX_DEPTH {
        return Err(E::custom("nested too deep"));
    }
    Ok(value)
}

/// Any JSON value, checked as [`Value`]'s parse checks it (through `deserialize_any`: strings
/// are UTF-8, numbers in range), and dropped. Unlike serde's `IgnoredAny`, which skips without
/// checking, what this accepts a [`Value`] accepts. A container here is nested `depth` deep;
/// one deeper than [`MAX_DEPTH`] is refused.
#[derive(Clone, Copy)]
struct Checked {
    depth: usize,
}

impl Checked {
    /// The seed for the members of a container at this position, unless it is too deep.
    fn members<E: de::Error>(self) -> Result<Checked, E> {
        if self.depth > MAX_DEPTH {
            return Err(E::custom("nested too deep"));
        }
        Ok(Checked {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let members = self.members()?;
        while map.next_key_seed(members)?.is_some() {
            map.next_value_seed(members)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let members = self.members()?;
        while seq.next_element_seed(members)?.is_some() {}
        Ok(())
    }

    scalars!((), (), ());
}
