//! The shapes of `config/workflows/*.yaml`, exactly as operators write them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::connectors::ConnectorKind;

/// One workflow file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDef {
    /// Credentials of connected apps, referenced by id from actions.
    #[serde(default)]
    pub connections: Vec<ConnectionDef>,
    /// Triggers and their actions.
    #[serde(default)]
    pub workflows: Vec<WorkflowDef>,
    /// Signed event streams to customers' endpoints.
    #[serde(default)]
    pub webhooks: Vec<WebhookDef>,
}

/// A file read for its connections alone (the first pass of `Catalog::load`); what else it
/// holds is skipped unparsed, and checked by the second pass.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectionsOnly {
    /// See [`FileDef::connections`].
    #[serde(default)]
    pub connections: Vec<ConnectionDef>,
}

/// A connected app's credentials.
#[derive(Debug, Deserialize)]
pub struct ConnectionDef {
    /// Referenced as `connection:` by actions.
    pub id: String,
    /// The workspace allowed to use it.
    pub workspace: String,
    /// `salesforce: {…}`, `mailchimp: {…}` or `braze: {…}`.
    #[serde(flatten)]
    pub kind: BTreeMap<String, Value>,
}

/// A trigger and the actions it runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDef {
    /// Unique across all files; names the workflow in logs, metrics-free headers and the DLQ.
    pub id: String,
    /// Only events of this workspace trigger it.
    pub workspace: String,
    /// When it fires.
    pub trigger: TriggerDef,
    /// What it does.
    pub actions: Vec<ActionDef>,
}

/// `trigger:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    /// One event type or a list.
    pub event: OneOrMany,
    /// `{ card: ID }`, `{ site: ID }`, or absent for the whole workspace.
    #[serde(default)]
    pub scope: Option<ScopeDef>,
    /// A Liquid condition (the inside of `{% if %}`).
    #[serde(default, rename = "if")]
    pub condition: Option<String>,
}

/// `scope:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeDef {
    /// Only events of this card.
    #[serde(default)]
    pub card: Option<String>,
    /// Only events of this site.
    #[serde(default)]
    pub site: Option<String>,
}

/// One action of a workflow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionDef {
    /// Unique within the workflow; `steps.<id>` names its output.
    pub id: String,
    /// The action whose output this one needs; it runs after it.
    #[serde(default)]
    pub needs: Option<OneOrMany>,
    /// Skip the action unless this Liquid condition holds.
    #[serde(default, rename = "if")]
    pub condition: Option<String>,
    // The sections are boxed: an action has one of the four, and the parsed files of a large
    // catalog are all held while it compiles (ten thousand workflows: 24 MiB of unboxed
    // sections, 5 boxed).
    /// A custom HTTP request.
    #[serde(default)]
    pub http: Option<Box<HttpActionDef>>,
    /// A Salesforce operation.
    #[serde(default)]
    pub salesforce: Option<Box<Value>>,
    /// A Mailchimp operation.
    #[serde(default)]
    pub mailchimp: Option<Box<Value>>,
    /// A Braze operation.
    #[serde(default)]
    pub braze: Option<Box<Value>>,
}

impl ActionDef {
    /// Whether the action has the section of this connector (`http: {…}`, `braze: {…}`).
    pub fn names(&self, kind: ConnectorKind) -> bool {
        match kind {
            ConnectorKind::Http => self.http.is_some(),
            ConnectorKind::Salesforce => self.salesforce.is_some(),
            ConnectorKind::Mailchimp => self.mailchimp.is_some(),
            ConnectorKind::Braze => self.braze.is_some(),
            ConnectorKind::Webhook => false,
        }
    }
}

/// `http:` — a custom request to any REST API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpActionDef {
    /// GET, POST, PUT, PATCH or DELETE (default POST).
    #[serde(default)]
    pub method: Option<String>,
    /// A template.
    pub url: String,
    /// Header name → template.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameter → template, appended to the URL.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Credentials.
    #[serde(default)]
    pub auth: Option<AuthDef>,
    /// A template (JSON-safe when it reads as JSON), or a mapping sent as JSON.
    #[serde(default)]
    pub body: Option<Value>,
    /// Overrides `http.timeout`.
    #[serde(default, deserialize_with = "crate::config::de_opt_duration")]
    pub timeout: Option<std::time::Duration>,
}

/// `auth:` — exactly one of `bearer`, `basic` or `header`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthDef {
    /// `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer: Option<String>,
    /// HTTP Basic.
    #[serde(default)]
    pub basic: Option<BasicAuthDef>,
    /// Any header, e.g. `X-API-Key`.
    #[serde(default)]
    pub header: Option<HeaderAuthDef>,
}

/// `auth: { basic: { user, password } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthDef {
    /// The user name.
    pub user: String,
    /// The password.
    #[serde(default)]
    pub password: String,
}

/// `auth: { header: { name, value } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderAuthDef {
    /// The header name.
    pub name: String,
    /// The header value.
    pub value: String,
}

/// A webhook subscription.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDef {
    /// Unique across all files.
    pub id: String,
    /// Only events of this workspace are sent.
    pub workspace: String,
    /// The receiving endpoint.
    pub url: String,
    /// Type patterns: `Prize.*`, `*`, exact names.
    pub events: OneOrMany,
    /// `whsec_…` secrets (a list during rotation).
    #[serde(default)]
    pub secret: Option<OneOrMany>,
    /// `standard` (default) or `legacy`.
    #[serde(default)]
    pub format: Option<String>,
}

/// A value written as one string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `event: Prize.Won`.
    One(String),
    /// `event: [Prize.Won, Coupon.Redeemed]`.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values, in order.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        }
    }
}
