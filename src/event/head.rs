//! One pass over an event's text that keeps only what routing reads (`id`, `type`,
//! `occurred_at`, and the objects `workspace`, `site`, `card`, `contact` with their `id`) and
//! checks everything else as strictly as parsing it into a [`Value`] does, without building it.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Fields, Member};

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
                Key::Id => parts.id = Some(map.next_value()?),
                Key::Type => parts.r#type = Some(map.next_value()?),
                Key::OccurredAt => parts.occurred_at = Some(map.next_value()?),
                Key::Workspace => parts.workspace = map.next_value()?,
                Key::Site => parts.site = map.next_value()?,
                Key::Card => parts.card = map.next_value()?,
                Key::Contact => parts.contact = map.next_value()?,
                Key::Other => {
                    map.next_value::<Checked>()?;
                }
            }
        }
        Ok(Head::Object(parts))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Head, A::Error> {
        CheckedVisitor.visit_seq(seq).map(|_| Head::NotObject)
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
                Key::Id => id = Some(map.next_value()?),
                _ => {
                    map.next_value::<Checked>()?;
                }
            }
        }
        Ok(Part::Object(id))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Part, A::Error> {
        CheckedVisitor.visit_seq(seq).map(|_| Part::Other)
    }

    scalars!(Part, Part::Other, Part::Null);
}

/// Any JSON value, checked as [`Value`]'s parse checks it (through `deserialize_any`: strings
/// are UTF-8, numbers in range), and dropped. Unlike serde's `IgnoredAny`, which skips without
/// checking, what this accepts a [`Value`] accepts.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Checked, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    scalars!(Checked, Checked, Checked);
}
