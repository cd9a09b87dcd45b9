//! The `braze:` section of an action as written (YAML shapes, checked by serde).

use serde::Deserialize;
use serde_json::{Map, Value};

/// `actions[].braze`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionSection {
    /// The connection id.
    pub(super) connection: String,
    /// The one operation.
    pub(super) track: TrackDef,
}

/// `track:` — one user, identified once, with attributes, events and purchases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrackDef {
    /// Identifier: the external user id.
    #[serde(default)]
    pub(super) external_id: Option<String>,
    /// Identifier: an alias.
    #[serde(default)]
    pub(super) user_alias: Option<UserAliasDef>,
    /// Identifier: Braze's own id.
    #[serde(default)]
    pub(super) braze_id: Option<String>,
    /// Identifier: email.
    #[serde(default)]
    pub(super) email: Option<String>,
    /// Identifier: phone (E.164).
    #[serde(default)]
    pub(super) phone: Option<String>,
    /// Attribute → mapped value, or `{ inc: n }`, `{ add: […] }`, `{ remove: […] }`.
    #[serde(default)]
    pub(super) attributes: Map<String, Value>,
    /// Braze `_update_existing_only` on the attributes object.
    #[serde(default)]
    pub(super) update_existing_only: Option<bool>,
    /// Custom events.
    #[serde(default)]
    pub(super) events: Vec<EventDef>,
    /// Purchases.
    #[serde(default)]
    pub(super) purchases: Vec<PurchaseDef>,
}

/// `user_alias: { alias_name, alias_label }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserAliasDef {
    /// The alias (a template).
    pub(super) alias_name: String,
    /// Its label (a template).
    pub(super) alias_label: String,
}

/// One custom event.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventDef {
    /// The event name (a template).
    pub(super) name: String,
    /// ISO-8601 (a template); the event's `occurred_at` when absent.
    #[serde(default)]
    pub(super) time: Option<String>,
    /// Property → mapped value.
    #[serde(default)]
    pub(super) properties: Map<String, Value>,
}

/// One purchase.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PurchaseDef {
    /// The product id (a template).
    pub(super) product_id: String,
    /// ISO 4217 currency (default USD).
    #[serde(default)]
    pub(super) currency: Option<String>,
    /// The price (a mapped value: a path, a template or a number).
    pub(super) price: Value,
    /// The quantity (a mapped value).
    #[serde(default)]
    pub(super) quantity: Option<Value>,
    /// ISO-8601 (a template); the event's `occurred_at` when absent.
    #[serde(default)]
    pub(super) time: Option<String>,
    /// Property → mapped value.
    #[serde(default)]
    pub(super) properties: Map<String, Value>,
}
