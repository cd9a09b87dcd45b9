//! The external systems switchyard calls. One variant of [`ActionSpec`] per kind of action; each
//! compiles its settings once and turns a rendered action into an [`Outcome`].

pub mod braze;
pub mod bulkhead;
pub mod client;
pub mod connection;
pub mod http;
pub mod kind;
pub mod mailchimp;
pub mod proxy;
pub mod registry;
pub mod salesforce;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;
use url::Url;

use crate::outcome::Outcome;
use crate::telemetry::Metrics;
use crate::template::{Context, Engine};
use crate::workflow::def::ActionDef;
use crate::workflow::problem::Problem;
use crate::workflow::scope::{ActionScope, Connection};
use crate::workflow::webhook::Webhook;
pub use client::HttpClient;
pub use kind::ConnectorKind;

/// A compiled action of one of the connector kinds.
#[derive(Debug)]
pub enum ActionSpec {
    /// A custom HTTP request.
    Http(http::HttpAction),
    /// A Salesforce operation.
    Salesforce(salesforce::SalesforceAction),
    /// A Mailchimp operation.
    Mailchimp(mailchimp::MailchimpAction),
    /// A Braze operation.
    Braze(braze::BrazeAction),
}

/// Everything an action needs besides its own settings: shared clients, built once per process.
#[derive(Clone, Debug)]
pub struct Connectors {
    /// The outbound HTTP client every connector uses.
    pub http: HttpClient,
    /// Per-connection state of the connected apps (tokens, limits); survives reloads.
    pub registry: Arc<registry::Registry>,
    /// For connector-level counters (Braze partial failures).
    pub metrics: Arc<Metrics>,
}

impl Connectors {
    /// The shared clients and an empty connection registry.
    pub fn new(http: HttpClient, metrics: Arc<Metrics>) -> Connectors {
        Connectors {
            http,
            registry: Arc::default(),
            metrics,
        }
    }
}

/// One action about to run.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// The stable action id (`Idempotency-Key`, `webhook-id`).
    pub action_id: &'a str,
    /// What templates see.
    pub ctx: Context<'a>,
}

/// A request fully rendered, as it will go on the wire.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The URL with its query.
    pub url: Url,
    /// Every header switchyard sets.
    pub headers: HeaderMap,
    /// The body, if any.
    pub body: Option<Vec<u8>>,
    /// Overrides the client's timeout.
    pub timeout: Option<Duration>,
    /// The connector sending it.
    pub connector: &'static str,
    /// Where it goes (SPEC §10): a connection or webhook, set by the sender; `None` is the URL's
    /// `host[:port]`.
    pub destination: Option<crate::destinations::Destination>,
}

impl ActionSpec {
    /// Compiles the one connector section an action has.
    pub fn compile(
        def: &ActionDef,
        engine: &Engine,
        scope: &ActionScope<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<ActionSpec> {
        let named: Vec<ConnectorKind> = ConnectorKind::ALL
            .into_iter()
            .filter(|kind| def.names(*kind))
            .collect();
        match named.as_slice() {
            // One arm per connector: a new one does not compile until it has its own.
            [kind] => match kind {
                ConnectorKind::Http => {
                    let http = def.http.as_ref()?;
                    http::HttpAction::compile(http, engine, scope, problems).map(ActionSpec::Http)
                }
                ConnectorKind::Salesforce => {
                    let section = def.salesforce.as_ref()?;
                    salesforce::SalesforceAction::compile(section, engine, scope, problems)
                        .map(ActionSpec::Salesforce)
                }
                ConnectorKind::Mailchimp => {
                    let section = def.mailchimp.as_ref()?;
                    mailchimp::MailchimpAction::compile(section, engine, scope, problems)
                        .map(ActionSpec::Mailchimp)
                }
                ConnectorKind::Braze => {
                    let section = def.braze.as_ref()?;
                    braze::BrazeAction::compile(section, engine, scope, problems)
                        .map(ActionSpec::Braze)
                }
                // `ActionDef::names` never names a webhook: it is a subscription, not an action.
                ConnectorKind::Webhook => None,
            },
            [] => {
                scope.error(
                    problems,
                    format!(
                        "names no action kind; use one of {}",
                        ConnectorKind::list(ConnectorKind::is_action)
                    ),
                );
                None
            }
            many => {
                let names: Vec<&str> = many.iter().map(|kind| kind.name()).collect();
                scope.error(
                    problems,
                    format!(
                        "names several action kinds ({}); use one per action",
                        names.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// The connector the action belongs to.
    pub fn kind(&self) -> ConnectorKind {
        match self {
            ActionSpec::Http(_) => ConnectorKind::Http,
            ActionSpec::Salesforce(_) => ConnectorKind::Salesforce,
            ActionSpec::Mailchimp(_) => ConnectorKind::Mailchimp,
            ActionSpec::Braze(_) => ConnectorKind::Braze,
        }
    }

    /// The connector queue the action travels on.
    pub fn connector(&self) -> &'static str {
        self.kind().name()
    }

    /// Renders the request(s) the action would send, for `switchyard test`.
    pub fn preview(&self, call: &Call<'_>) -> Result<Request, Outcome> {
        match self {
            ActionSpec::Http(action) => action.render(call),
            ActionSpec::Salesforce(action) => action.preview(call),
            ActionSpec::Mailchimp(action) => action.preview(call),
            ActionSpec::Braze(action) => action.preview(call),
        }
    }

    /// Runs the action once.
    pub async fn execute(&self, call: &Call<'_>, connectors: &Connectors) -> Outcome {
        match self {
            ActionSpec::Http(action) => match action.render(call) {
                Ok(request) => connectors.http.send(request).await,
                Err(outcome) => outcome,
            },
            ActionSpec::Salesforce(action) => action.execute(call, connectors).await,
            ActionSpec::Mailchimp(action) => action.execute(call, connectors).await,
            ActionSpec::Braze(action) => action.execute(call, connectors).await,
        }
    }
}

/// Checks a connection's settings when the workflow files load (every problem, as text).
pub fn check_connection(connection: &Connection, engine: &Engine) -> Vec<String> {
    connection::check(connection, engine)
}

/// What a worker runs: a workflow action, or a webhook delivery.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// A workflow action.
    Action(&'a ActionSpec),
    /// A webhook subscription.
    Webhook(&'a Webhook),
}

impl Target<'_> {
    /// Runs it once.
    pub async fn execute(&self, call: &Call<'_>, connectors: &Connectors) -> Outcome {
        match self {
            Target::Action(spec) => spec.execute(call, connectors).await,
            Target::Webhook(webhook) => {
                match webhook::render(webhook, call, chrono::Utc::now().timestamp()) {
                    Ok(request) => connectors.http.send(request).await,
                    Err(outcome) => outcome,
                }
            }
        }
    }
}
