//! An event envelope read in part: a worker parses only the top-level fields an action's
//! templates name, and the rest when something reads beyond them.

use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// The event envelope a context reads: whole, or only the top-level fields an action's
/// templates name, with the way to the rest (see [`PartialEvent`]).
#[derive(Clone, Copy, Debug)]
pub enum EventRef<'a> {
    /// The whole envelope.
    Whole(&'a Value),
    /// Some top-level fields parsed, the rest on demand.
    Partial(&'a PartialEvent<'a>),
}

impl<'a> From<&'a Value> for EventRef<'a> {
    fn from(event: &'a Value) -> EventRef<'a> {
        EventRef::Whole(event)
    }
}

impl<'a> EventRef<'a> {
    /// A top-level field. A field that was not parsed up front is read from the whole envelope,
    /// so what a template sees never depends on which fields were named.
    pub fn get(self, field: &str) -> Option<&'a Value> {
        match self {
            EventRef::Whole(event) => event.get(field),
            EventRef::Partial(partial) if partial.has(field) => partial.fields.get(field),
            EventRef::Partial(partial) => partial.whole().get(field),
        }
    }

    /// An object holding at least `id`, `type` and `occurred_at` (what `event.*` reads),
    /// without parsing the rest.
    pub fn known(self) -> &'a Value {
        match self {
            EventRef::Whole(event) => event,
            EventRef::Partial(partial) => partial.fields,
        }
    }

    /// The whole envelope (parsed now, if it was partial and nothing needed it before).
    pub fn whole(self) -> &'a Value {
        match self {
            EventRef::Whole(event) => event,
            EventRef::Partial(partial) => partial.whole(),
        }
    }
}

/// An envelope of which only some top-level fields were parsed ([`PartialEvent::ALWAYS`] and
/// the action's own): what a worker reads for an action whose templates name few fields. The
/// rest is parsed from the message's text the first time anything reads beyond them.
#[derive(Debug)]
pub struct PartialEvent<'a> {
    /// The fields parsed, as an object (a field named but absent is simply not there).
    fields: &'a Value,
    /// The names parsed up front besides [`PartialEvent::ALWAYS`] (the action's
    /// `event_fields`).
    named: &'a [Box<str>],
    /// The envelope's JSON text.
    text: &'a str,
    /// The whole envelope, once something asked for it.
    whole: OnceLock<Value>,
}

impl<'a> PartialEvent<'a> {
    /// `fields` must be what [`PartialEvent::parse_fields`] read of `text` for `named`.
    pub fn new(fields: &'a Value, named: &'a [Box<str>], text: &'a str) -> PartialEvent<'a> {
        PartialEvent {
            fields,
            named,
            text,
            whole: OnceLock::new(),
        }
    }

    /// What a worker reads of every event besides what the action names: the fields of `event`
    /// (see [`EventRef::known`]), and `contact` and `form_fields` for run history's contact.
    pub const ALWAYS: [&'static str; 5] = ["id", "type", "occurred_at", "contact", "form_fields"];

    fn has(&self, field: &str) -> bool {
        parsed_up_front(self.named, field)
    }

    fn whole(&self) -> &Value {
        self.whole
            .get_or_init(|| match serde_json::from_str(self.text) {
                Ok(whole) => whole,
                Err(e) => {
                    // The router checked this text strictly before it published it.
                    tracing::error!(error = %e, "an action message's event no longer parses whole");
                    self.fields.clone()
                }
            })
    }

    /// Parses the top-level fields of `text` in [`PartialEvent::ALWAYS`] or `named` (the others
    /// are skipped, not built); `None` unless `text` is one JSON object.
    pub fn parse_fields(text: &str, named: &[Box<str>]) -> Option<Value> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let fields = Named(named).deserialize(&mut deserializer).ok()?;
        deserializer.end().ok()?;
        Some(Value::Object(fields))
    }
}

/// Whether `field` is parsed up front: in [`PartialEvent::ALWAYS`] or among `named`.
fn parsed_up_front(named: &[Box<str>], field: &str) -> bool {
    PartialEvent::ALWAYS.contains(&field) || named.iter().any(|name| &**name == field)
}

/// The top-level fields of an object parsed up front (a repeated key keeps its last value, in
/// its first place, as in a [`Value`]).
struct Named<'n>(&'n [Box<str>]);

impl<'de> DeserializeSeed<'de> for Named<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Named<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key_seed(NamedKey(self.0))? {
            match key {
                Some(name) => {
                    let value = map.next_value()?;
                    fields.insert(name, value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// A key, owned when it is parsed up front (a skipped key is never copied).
struct NamedKey<'n>(&'n [Box<str>]);

impl<'de> DeserializeSeed<'de> for NamedKey<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for NamedKey<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(parsed_up_front(self.0, key).then(|| key.to_owned()))
    }
}
