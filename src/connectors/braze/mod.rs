//! The Braze connected app: `track` (`POST /users/track`) user attributes, custom events and
//! purchases for one user.
//!
//! ```yaml
//! connections:
//!   - id: braze-main
//!     workspace: ws_demo
//!     braze: { rest_endpoint: https://rest.iad-01.braze.com, api_key: "{{ secrets.BRAZE_KEY }}" }
//!     # limits: default { rate: 3000/3s } (Braze's limit for /users/track)
//! ```
//!
//! A partial success (`errors` next to `"message":"success"`) is a success: Braze applied the
//! valid items. The rejected ones are logged and counted in `switchyard_partial_failures_total`.

pub mod classify;
mod def;

use std::sync::Arc;

use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::warn;
use url::Url;

use self::def::ActionSection;
use super::connection::{
    self, ConnectionKey, FieldMap, Limits, LimitsDef, Rate, render_required, render_setting,
    resolve,
};
use super::http::header_value;
use super::{Call, ConnectorKind, Connectors, Request};
use crate::outcome::{ErrorClass, Outcome};
use crate::telemetry::ConnectorLabel;
use crate::template::{Context, Engine, MappedValue, TextTemplate};
use crate::workflow::problem::Problem;
use crate::workflow::scope::{ActionScope, Connection};

/// Objects (attributes + events + purchases) Braze accepts in one request.
pub const MAX_OBJECTS: usize = 75;

/// Braze's documented limit for `/users/track`: 3,000 requests per 3 seconds.
pub fn default_limits() -> Limits {
    Limits {
        concurrency: None,
        rate: Some(Rate {
            count: std::num::NonZeroU32::MIN.saturating_add(2999),
            per: std::time::Duration::from_secs(3),
        }),
    }
}

/// `connections[].braze`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionDef {
    /// The cluster's REST endpoint (`https://rest.iad-01.braze.com`).
    rest_endpoint: String,
    /// A REST API key with `users.track` (usually `{{ secrets.X }}`).
    api_key: String,
    /// Concurrency and rate limits.
    #[serde(default)]
    limits: Option<LimitsDef>,
}

/// A compiled Braze connection.
#[derive(Debug)]
pub struct BrazeConnection {
    /// Its id (logs).
    pub id: String,
    /// Where its shared state lives.
    pub key: ConnectionKey,
    /// The REST endpoint.
    rest_endpoint: TextTemplate,
    /// The API key.
    api_key: TextTemplate,
    /// Concurrency and rate limits.
    pub limits: Limits,
}

impl BrazeConnection {
    /// Compiles a connection's settings; every problem is returned.
    pub fn compile(
        connection: &Connection,
        engine: &Engine,
    ) -> Result<BrazeConnection, Vec<String>> {
        let def: ConnectionDef = connection::parse_settings(&connection.settings)?;
        let mut errors = Vec::new();
        let rest_endpoint =
            connection::setting(engine, "rest_endpoint", &def.rest_endpoint, &mut errors);
        if let Some(endpoint) = &rest_endpoint {
            connection::check_base_url(endpoint, "rest_endpoint", &mut errors);
        }
        let api_key = connection::setting(engine, "api_key", &def.api_key, &mut errors);
        let limits = Limits::compile(def.limits.as_ref(), default_limits())
            .map_err(|e| errors.push(e))
            .ok();
        match (rest_endpoint, api_key, limits) {
            (Some(rest_endpoint), Some(api_key), Some(limits)) if errors.is_empty() => {
                Ok(BrazeConnection {
                    id: connection.id.clone(),
                    key: ConnectionKey::of(connection),
                    rest_endpoint,
                    api_key,
                    limits,
                })
            }
            _ => Err(errors),
        }
    }
}

/// A compiled Braze action.
#[derive(Debug)]
pub struct BrazeAction {
    /// The connection.
    connection: Arc<BrazeConnection>,
    /// Who.
    identifier: Identifier,
    /// Attribute name → value.
    attributes: Vec<(String, Attribute)>,
    /// `_update_existing_only`.
    update_existing_only: Option<bool>,
    /// Custom events.
    events: Vec<Event>,
    /// Purchases.
    purchases: Vec<Purchase>,
}

/// The user's one identifier.
#[derive(Debug)]
enum Identifier {
    /// `external_id`.
    ExternalId(TextTemplate),
    /// `user_alias`.
    UserAlias {
        /// `alias_name`.
        name: TextTemplate,
        /// `alias_label`.
        label: TextTemplate,
    },
    /// `braze_id`.
    BrazeId(TextTemplate),
    /// `email`.
    Email(TextTemplate),
    /// `phone`.
    Phone(TextTemplate),
}

/// One attribute value.
#[derive(Debug)]
enum Attribute {
    /// A mapped value (path, template, literal).
    Set(MappedValue),
    /// `{ inc: n }`.
    Inc(MappedValue),
    /// `{ add: […] }`.
    Add(Operand),
    /// `{ remove: […] }`.
    Remove(Operand),
}

/// The operand of `add` / `remove`.
#[derive(Debug)]
enum Operand {
    /// A list written out, item by item.
    List(Vec<MappedValue>),
    /// One mapped value (a path to an array, or a single item).
    One(MappedValue),
}

/// A compiled custom event.
#[derive(Debug)]
struct Event {
    /// `name`.
    name: TextTemplate,
    /// `time`.
    time: Option<TextTemplate>,
    /// `properties`.
    properties: FieldMap,
}

/// A compiled purchase.
#[derive(Debug)]
struct Purchase {
    /// `product_id`.
    product_id: TextTemplate,
    /// `currency`.
    currency: TextTemplate,
    /// `price`.
    price: MappedValue,
    /// `quantity`.
    quantity: Option<MappedValue>,
    /// `time`.
    time: Option<TextTemplate>,
    /// `properties`.
    properties: FieldMap,
}

impl BrazeAction {
    /// Compiles the `braze:` section of an action.
    pub fn compile(
        section: &Value,
        engine: &Engine,
        scope: &ActionScope<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<BrazeAction> {
        let before = problems.len();
        let def: ActionSection =
            connection::parse_section(section, ConnectorKind::Braze.name(), scope, problems)?;
        let compiled = connection::compile_for(
            scope,
            ConnectorKind::Braze.name(),
            &def.connection,
            problems,
            |c| BrazeConnection::compile(c, engine),
        );
        if let Some(c) = &compiled {
            connection::warn_if_blocked(scope, &c.rest_endpoint, problems);
        }
        let track = &def.track;
        let text = |what: &str, src: &str, problems: &mut Vec<Problem>| {
            connection::action_text(engine, scope, &format!("braze.track.{what}"), src, problems)
        };
        let value = |what: &str, src: &Value, problems: &mut Vec<Problem>| {
            connection::compile_value(engine, scope, &format!("braze.track.{what}"), src, problems)
        };
        let fields = |what: &str, map: &Map<String, Value>, problems: &mut Vec<Problem>| {
            FieldMap::compile(engine, scope, &format!("braze.track.{what}"), map, problems)
        };

        let named = [
            track.external_id.is_some(),
            track.user_alias.is_some(),
            track.braze_id.is_some(),
            track.email.is_some(),
            track.phone.is_some(),
        ]
        .iter()
        .filter(|on| **on)
        .count();
        let identifier = if named == 1 {
            match (
                &track.external_id,
                &track.user_alias,
                &track.braze_id,
                &track.email,
                &track.phone,
            ) {
                (Some(id), ..) => text("external_id", id, problems).map(Identifier::ExternalId),
                (_, Some(alias), ..) => {
                    let name = text("user_alias.alias_name", &alias.alias_name, problems);
                    let label = text("user_alias.alias_label", &alias.alias_label, problems);
                    name.zip(label)
                        .map(|(name, label)| Identifier::UserAlias { name, label })
                }
                (_, _, Some(id), ..) => text("braze_id", id, problems).map(Identifier::BrazeId),
                (_, _, _, Some(email), _) => text("email", email, problems).map(Identifier::Email),
                (.., Some(phone)) => text("phone", phone, problems).map(Identifier::Phone),
                _ => None,
            }
        } else {
            scope.error(
                problems,
                "braze.track: name exactly one identifier: external_id, user_alias, braze_id, email or phone",
            );
            None
        };

        let mut attributes = Vec::with_capacity(track.attributes.len());
        for (name, source) in &track.attributes {
            let what = format!("attributes.{name}");
            let operator = match source {
                Value::Object(map) if map.len() == 1 => map
                    .iter()
                    .next()
                    .filter(|(k, _)| matches!(k.as_str(), "inc" | "add" | "remove")),
                _ => None,
            };
            let attribute = match operator {
                Some((op, operand)) => {
                    let what = format!("{what}.{op}");
                    match op.as_str() {
                        "inc" => value(&what, operand, problems).map(Attribute::Inc),
                        _ => {
                            let operand = match operand {
                                Value::Array(items) => items
                                    .iter()
                                    .enumerate()
                                    .map(|(i, item)| value(&format!("{what}[{i}]"), item, problems))
                                    .collect::<Option<Vec<_>>>()
                                    .map(Operand::List),
                                one => value(&what, one, problems).map(Operand::One),
                            };
                            if op == "add" {
                                operand.map(Attribute::Add)
                            } else {
                                operand.map(Attribute::Remove)
                            }
                        }
                    }
                }
                None => value(&what, source, problems).map(Attribute::Set),
            };
            if let Some(attribute) = attribute {
                attributes.push((name.clone(), attribute));
            }
        }

        let mut events = Vec::with_capacity(track.events.len());
        for (i, event) in track.events.iter().enumerate() {
            let name = text(&format!("events[{i}].name"), &event.name, problems);
            let time = match &event.time {
                Some(src) => text(&format!("events[{i}].time"), src, problems),
                None => None,
            };
            let properties = fields(
                &format!("events[{i}].properties"),
                &event.properties,
                problems,
            );
            if let (Some(name), Some(properties)) = (name, properties) {
                events.push(Event {
                    name,
                    time,
                    properties,
                });
            }
        }

        let mut purchases = Vec::with_capacity(track.purchases.len());
        for (i, purchase) in track.purchases.iter().enumerate() {
            let at = |field: &str| format!("purchases[{i}].{field}");
            let product_id = text(&at("product_id"), &purchase.product_id, problems);
            let currency = text(
                &at("currency"),
                purchase.currency.as_deref().unwrap_or("USD"),
                problems,
            );
            let price = value(&at("price"), &purchase.price, problems);
            let quantity = match &purchase.quantity {
                Some(q) => value(&at("quantity"), q, problems),
                None => None,
            };
            let time = match &purchase.time {
                Some(src) => text(&at("time"), src, problems),
                None => None,
            };
            let properties = fields(&at("properties"), &purchase.properties, problems);
            if let (Some(product_id), Some(currency), Some(price), Some(properties)) =
                (product_id, currency, price, properties)
            {
                purchases.push(Purchase {
                    product_id,
                    currency,
                    price,
                    quantity,
                    time,
                    properties,
                });
            }
        }

        if track.attributes.is_empty() && track.events.is_empty() && track.purchases.is_empty() {
            scope.error(
                problems,
                "braze.track: give attributes, events or purchases (there is nothing to send)",
            );
        }
        let objects =
            usize::from(!track.attributes.is_empty()) + track.events.len() + track.purchases.len();
        if objects > MAX_OBJECTS {
            scope.error(
                problems,
                format!(
                    "braze.track: {objects} objects in one request; Braze accepts at most {MAX_OBJECTS}"
                ),
            );
        }
        if connection::has_errors(problems, before) {
            return None;
        }
        Some(BrazeAction {
            connection: compiled?,
            identifier: identifier?,
            attributes,
            update_existing_only: track.update_existing_only,
            events,
            purchases,
        })
    }

    /// The request as it would go out (`switchyard test`).
    pub fn preview(&self, call: &Call<'_>) -> Result<Request, Outcome> {
        match self.render(&call.ctx)? {
            Some(request) => Ok(request),
            None => Err(Outcome::fail(
                ErrorClass::Template,
                "every attribute, event and purchase resolves to nothing; no call would be made",
            )),
        }
    }

    /// Runs the action once, within the connection's limits.
    pub async fn execute(&self, call: &Call<'_>, connectors: &Connectors) -> Outcome {
        let request = match self.render(&call.ctx) {
            Ok(Some(request)) => request,
            Ok(None) => {
                return Outcome::Success {
                    status: 204,
                    output: serde_json::json!({ "message": "nothing to send" }),
                };
            }
            Err(outcome) => return outcome,
        };
        let state = connectors
            .registry
            .state(&self.connection.key, self.connection.limits);
        let outcome = state
            .limiter
            .send(&connectors.http, request, classify::classify_braze)
            .await;
        if let Outcome::Success { output, .. } = &outcome {
            let rejected = partial_errors(output);
            if !rejected.is_empty() {
                connectors
                    .metrics
                    .partial_failures
                    .get_or_create(&ConnectorLabel {
                        connector: ConnectorKind::Braze.name(),
                    })
                    .inc_by(rejected.len() as u64);
                let first = &rejected[0];
                let input_array = first
                    .get("input_array")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let index = first.get("index").and_then(Value::as_u64).unwrap_or(0);
                let error = first.get("type").and_then(Value::as_str).unwrap_or("");
                warn!(
                    connection = %self.connection.id,
                    action_id = call.action_id,
                    rejected = rejected.len(),
                    input_array,
                    index,
                    error,
                    "braze applied the request but rejected some of its items; not retried"
                );
            }
        }
        outcome
    }

    /// Builds `POST {rest_endpoint}/users/track`; `None` when nothing resolves to a value.
    fn render(&self, ctx: &Context<'_>) -> Result<Option<Request>, Outcome> {
        let endpoint = render_setting(&self.connection.rest_endpoint, ctx, "braze rest_endpoint")?;
        let key = render_setting(&self.connection.api_key, ctx, "braze api_key")?;
        let mut url = Url::parse(&endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                Outcome::fail(
                    ErrorClass::Config,
                    format!(
                        "connection {}: rest_endpoint is not an http(s) URL",
                        self.connection.id
                    ),
                )
            })?;
        url.set_query(None);
        url.path_segments_mut()
            .map_err(|()| Outcome::fail(ErrorClass::Config, "rest_endpoint cannot take a path"))?
            .pop_if_empty()
            .extend(["users", "track"]);

        let who = self.identifier.render(ctx)?;
        let occurred_at = ctx
            .event
            .get("occurred_at")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| chrono::Utc::now().to_rfc3339());
        let time = |template: &Option<TextTemplate>, what: &str| -> Result<String, Outcome> {
            let rendered = match template {
                Some(t) => connection::render_text(t, ctx, what)?,
                None => String::new(),
            };
            let rendered = rendered.trim();
            Ok(if rendered.is_empty() {
                occurred_at.clone()
            } else {
                rendered.to_owned()
            })
        };

        let mut body = Map::new();
        let mut attributes = who.clone();
        for (name, attribute) in &self.attributes {
            if let Some(value) = attribute.render(ctx, &format!("braze.track.attributes.{name}"))? {
                attributes.insert(name.clone(), value);
            }
        }
        if attributes.len() > who.len() {
            if let Some(flag) = self.update_existing_only {
                attributes.insert("_update_existing_only".into(), Value::Bool(flag));
            }
            body.insert(
                "attributes".into(),
                Value::Array(vec![Value::Object(attributes)]),
            );
        }
        let mut events = Vec::with_capacity(self.events.len());
        for (i, event) in self.events.iter().enumerate() {
            let mut object = who.clone();
            object.insert(
                "name".into(),
                Value::String(render_required(
                    &event.name,
                    ctx,
                    &format!("braze.track.events[{i}].name"),
                )?),
            );
            object.insert(
                "time".into(),
                Value::String(time(&event.time, "braze.track.events.time")?),
            );
            let properties = event
                .properties
                .render(ctx, &format!("braze.track.events[{i}].properties"))?;
            if !properties.is_empty() {
                object.insert("properties".into(), Value::Object(properties));
            }
            events.push(Value::Object(object));
        }
        if !events.is_empty() {
            body.insert("events".into(), Value::Array(events));
        }
        let mut purchases = Vec::with_capacity(self.purchases.len());
        for (i, purchase) in self.purchases.iter().enumerate() {
            let at = |field: &str| format!("braze.track.purchases[{i}].{field}");
            let mut object = who.clone();
            object.insert(
                "product_id".into(),
                Value::String(render_required(
                    &purchase.product_id,
                    ctx,
                    &at("product_id"),
                )?),
            );
            object.insert(
                "currency".into(),
                Value::String(render_required(&purchase.currency, ctx, &at("currency"))?),
            );
            let price = resolve(&purchase.price, ctx, &at("price"))?.ok_or_else(|| {
                Outcome::fail(
                    ErrorClass::Template,
                    format!("{} resolved to nothing", at("price")),
                )
            })?;
            object.insert("price".into(), number(price, &at("price"))?);
            if let Some(quantity) = &purchase.quantity
                && let Some(q) = resolve(quantity, ctx, &at("quantity"))?
            {
                object.insert("quantity".into(), number(q, &at("quantity"))?);
            }
            object.insert(
                "time".into(),
                Value::String(time(&purchase.time, &at("time"))?),
            );
            let properties = purchase.properties.render(ctx, &at("properties"))?;
            if !properties.is_empty() {
                object.insert("properties".into(), Value::Object(properties));
            }
            purchases.push(Value::Object(object));
        }
        if !purchases.is_empty() {
            body.insert("purchases".into(), Value::Array(purchases));
        }
        if body.is_empty() {
            return Ok(None);
        }

        let mut headers = HeaderMap::with_capacity(3);
        let mut auth = header_value("Authorization", &format!("Bearer {key}"))?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let body = serde_json::to_vec(&Value::Object(body))
            .map_err(|e| Outcome::fail(ErrorClass::Template, format!("braze body: {e}")))?;
        Ok(Some(Request {
            method: Method::POST,
            url,
            headers,
            body: Some(body),
            timeout: None,
            connector: ConnectorKind::Braze.name(),
            destination: None,
        }))
    }
}

impl Identifier {
    /// The identifier fields every object of the request starts with.
    fn render(&self, ctx: &Context<'_>) -> Result<Map<String, Value>, Outcome> {
        let mut out = Map::with_capacity(1);
        let mut one = |key: &str, template: &TextTemplate| -> Result<(), Outcome> {
            let value = render_required(template, ctx, &format!("braze.track.{key}"))?;
            out.insert(key.to_owned(), Value::String(value));
            Ok(())
        };
        match self {
            Identifier::ExternalId(t) => one("external_id", t)?,
            Identifier::BrazeId(t) => one("braze_id", t)?,
            Identifier::Email(t) => one("email", t)?,
            Identifier::Phone(t) => one("phone", t)?,
            Identifier::UserAlias { name, label } => {
                let name = render_required(name, ctx, "braze.track.user_alias.alias_name")?;
                let label = render_required(label, ctx, "braze.track.user_alias.alias_label")?;
                let mut alias = Map::with_capacity(2);
                alias.insert("alias_name".into(), Value::String(name));
                alias.insert("alias_label".into(), Value::String(label));
                out.insert("user_alias".into(), Value::Object(alias));
            }
        }
        Ok(out)
    }
}

impl Attribute {
    /// The attribute's value; `None` leaves it out.
    fn render(&self, ctx: &Context<'_>, what: &str) -> Result<Option<Value>, Outcome> {
        Ok(match self {
            Attribute::Set(mapped) => resolve(mapped, ctx, what)?,
            Attribute::Inc(mapped) => match resolve(mapped, ctx, what)? {
                Some(n) => Some(single("inc", number(n, &format!("{what}.inc"))?)),
                None => None,
            },
            Attribute::Add(operand) => operand
                .render(ctx, &format!("{what}.add"))?
                .map(|items| single("add", items)),
            Attribute::Remove(operand) => operand
                .render(ctx, &format!("{what}.remove"))?
                .map(|items| single("remove", items)),
        })
    }
}

impl Operand {
    /// The items as an array; `None` when there are none.
    fn render(&self, ctx: &Context<'_>, what: &str) -> Result<Option<Value>, Outcome> {
        let mut items = Vec::new();
        let mut push = |value: Value| match value {
            Value::Array(values) => items.extend(values),
            other => items.push(other),
        };
        match self {
            Operand::List(list) => {
                for mapped in list {
                    if let Some(value) = resolve(mapped, ctx, what)? {
                        push(value);
                    }
                }
            }
            Operand::One(mapped) => {
                if let Some(value) = resolve(mapped, ctx, what)? {
                    push(value);
                }
            }
        }
        Ok((!items.is_empty()).then_some(Value::Array(items)))
    }
}

fn single(key: &str, value: Value) -> Value {
    let mut map = Map::with_capacity(1);
    map.insert(key.to_owned(), value);
    Value::Object(map)
}

/// A number, from a number or from text that reads as one (a template renders text).
fn number(value: Value, what: &str) -> Result<Value, Outcome> {
    match value {
        Value::Number(_) => Ok(value),
        Value::String(text) => {
            let text = text.trim();
            if let Ok(n) = text.parse::<i64>() {
                return Ok(Value::from(n));
            }
            text.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| {
                    Outcome::fail(
                        ErrorClass::Template,
                        format!("{what} is {text:?}, not a number"),
                    )
                })
        }
        other => Err(Outcome::fail(
            ErrorClass::Template,
            format!("{what} is {other}, not a number"),
        )),
    }
}

/// The items Braze rejected in a partial success: `errors` next to `"message":"success"`.
pub fn partial_errors(output: &Value) -> &[Value] {
    match (
        output.get("message").and_then(Value::as_str),
        output.get("errors").and_then(Value::as_array),
    ) {
        (Some("success"), Some(errors)) => errors,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn partial_success_is_recognised() {
        let partial = json!({
            "message": "success", "attributes_processed": 1, "events_processed": 1,
            "errors": [{ "type": "'external_id' or 'braze_id' or 'user_alias' is required", "input_array": "events", "index": 1 }]
        });
        assert_eq!(partial_errors(&partial).len(), 1);
        assert!(partial_errors(&json!({ "message": "success", "events_processed": 1 })).is_empty());
        assert!(partial_errors(&json!({ "message": "queued" })).is_empty());
        assert!(partial_errors(&json!({ "message": "Invalid", "errors": [{}] })).is_empty());
    }

    #[test]
    fn numbers_from_text() {
        assert_eq!(number(json!("5"), "x").unwrap(), json!(5));
        assert_eq!(number(json!(" 2.5 "), "x").unwrap(), json!(2.5));
        assert_eq!(number(json!(7), "x").unwrap(), json!(7));
        assert!(number(json!("five"), "x").is_err());
        assert!(number(json!(true), "x").is_err());
    }

    #[test]
    fn default_limit_is_brazes() {
        let limits = default_limits();
        let rate = limits.rate.unwrap();
        assert_eq!(rate.count.get(), 3000);
        assert_eq!(rate.per, std::time::Duration::from_secs(3));
        assert_eq!(limits.concurrency, None);
    }
}
