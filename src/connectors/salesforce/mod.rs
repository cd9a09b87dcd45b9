//! The Salesforce connected app: `get` (a SOQL query, or a record by id), `create`, `update` by
//! id and `upsert` by external id, over the REST API of the instance the token response names.
//!
//! Connection:
//!
//! ```yaml
//! connections:
//!   - id: sf-main
//!     workspace: ws_demo
//!     salesforce:
//!       login_url: https://acme.my.salesforce.com      # token endpoint: {login_url}/services/oauth2/token
//!       api_version: "61.0"                            # default 61.0
//!       client_credentials: { client_id: "3MVG9…", client_secret: "{{ secrets.SF_CLIENT_SECRET }}" }
//!       limits: { concurrency: 25 }                    # default: Salesforce's 25 long-running requests
//! ```
//!
//! One token per connection is shared by every worker task ([`auth::TokenCache`]); a
//! `401 INVALID_SESSION_ID` fetches a new one and replays the call once. Errors are classified by
//! `errorCode` in [`classify::classify_salesforce`].

pub mod auth;
pub mod classify;

use std::sync::Arc;

use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::info;
use url::Url;

use super::connection::{
    self, ConnectionKey, FieldMap, Limits, LimitsDef, render_required, render_setting,
};
use super::http::header_value;
use super::{Call, ConnectorKind, Connectors, Request};
use crate::outcome::{self, ErrorClass, Outcome};
use crate::template::{Context, Engine, TextTemplate};
use crate::workflow::problem::Problem;
use crate::workflow::scope::{ActionScope, Connection};

/// The REST API version used when a connection does not name one.
pub const DEFAULT_API_VERSION: &str = "61.0";

/// Salesforce's documented limit: 25 concurrent long-running requests per production org.
pub const DEFAULT_LIMITS: Limits = Limits {
    concurrency: Some(25),
    rate: None,
};

/// `connections[].salesforce`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionDef {
    /// The My Domain (or login) URL; the token endpoint is under it.
    login_url: String,
    /// `"61.0"` (a bare number is accepted too).
    #[serde(default)]
    api_version: Option<Value>,
    /// Client-credentials flow.
    #[serde(default)]
    client_credentials: Option<auth::ClientCredentialsDef>,
    /// Refresh-token flow.
    #[serde(default)]
    refresh_token: Option<auth::RefreshTokenDef>,
    /// JWT bearer flow.
    #[serde(default)]
    jwt_bearer: Option<auth::JwtBearerDef>,
    /// Concurrency and rate limits.
    #[serde(default)]
    limits: Option<LimitsDef>,
}

/// A compiled Salesforce connection.
#[derive(Debug)]
pub struct SalesforceConnection {
    /// Its id (logs).
    pub id: String,
    /// Where its shared state lives.
    pub key: ConnectionKey,
    /// The login URL (may read secrets).
    login_url: TextTemplate,
    /// `61.0`.
    api_version: String,
    /// How to get a token.
    grant: auth::Grant,
    /// Concurrency and rate limits.
    pub limits: Limits,
}

impl SalesforceConnection {
    /// Compiles a connection's settings; every problem is returned.
    pub fn compile(
        connection: &Connection,
        engine: &Engine,
    ) -> Result<SalesforceConnection, Vec<String>> {
        let def: ConnectionDef = connection::parse_settings(&connection.settings)?;
        let mut errors = Vec::new();
        let login_url = connection::setting(engine, "login_url", &def.login_url, &mut errors);
        if let Some(url) = &login_url {
            auth::check_login_url(url, &mut errors);
        }
        let api_version = match &def.api_version {
            None => DEFAULT_API_VERSION.to_owned(),
            Some(Value::String(s)) => s.trim().trim_start_matches(['v', 'V']).to_owned(),
            Some(Value::Number(n)) => {
                let text = n.to_string();
                if text.contains('.') {
                    text
                } else {
                    format!("{text}.0")
                }
            }
            Some(other) => other.to_string(),
        };
        let valid_version = api_version.split_once('.').is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && major.bytes().all(|b| b.is_ascii_digit())
                && minor.bytes().all(|b| b.is_ascii_digit())
        });
        if !valid_version {
            errors.push(format!(
                "api_version {api_version:?} is not a version like \"61.0\""
            ));
        }
        let grant = auth::Grant::compile(
            engine,
            def.client_credentials.as_ref(),
            def.refresh_token.as_ref(),
            def.jwt_bearer.as_ref(),
            &mut errors,
        );
        let limits = Limits::compile(def.limits.as_ref(), DEFAULT_LIMITS)
            .map_err(|e| errors.push(e))
            .ok();
        match (login_url, grant, limits) {
            (Some(login_url), Some(grant), Some(limits)) if errors.is_empty() => {
                Ok(SalesforceConnection {
                    id: connection.id.clone(),
                    key: ConnectionKey::of(connection),
                    login_url,
                    api_version,
                    grant,
                    limits,
                })
            }
            _ => Err(errors),
        }
    }
}

/// `actions[].salesforce`, as written: a connection and exactly one operation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionSection {
    /// The connection id.
    connection: String,
    /// Read: a SOQL query, or a record by id.
    #[serde(default)]
    get: Option<GetDef>,
    /// Create a record.
    #[serde(default)]
    create: Option<CreateDef>,
    /// Update a record by id.
    #[serde(default)]
    update: Option<UpdateDef>,
    /// Create or update by external id.
    #[serde(default)]
    upsert: Option<UpsertDef>,
}

/// `get: { query }` or `get: { object, id, fields }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetDef {
    /// SOQL; values go through the `soql` filter.
    #[serde(default)]
    query: Option<String>,
    /// The sObject type.
    #[serde(default)]
    object: Option<String>,
    /// The record id (a template).
    #[serde(default)]
    id: Option<String>,
    /// The fields to read (all readable fields when absent).
    #[serde(default)]
    fields: Option<Vec<String>>,
}

/// `create: { object, fields }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDef {
    /// The sObject type.
    object: String,
    /// Field map.
    fields: Map<String, Value>,
}

/// `update: { object, id, fields }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateDef {
    /// The sObject type.
    object: String,
    /// The record id (a template).
    id: String,
    /// Field map.
    fields: Map<String, Value>,
}

/// `upsert: { object, external_id_field, external_id, fields, update_only }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertDef {
    /// The sObject type.
    object: String,
    /// The external-id field (`Komo_Contact_Id__c`).
    external_id_field: String,
    /// Its value (a template).
    external_id: String,
    /// Field map.
    fields: Map<String, Value>,
    /// Never create (`?updateOnly=true`).
    #[serde(default)]
    update_only: bool,
}

/// A compiled Salesforce action.
#[derive(Debug)]
pub struct SalesforceAction {
    /// The connection (compiled with the catalog).
    connection: Arc<SalesforceConnection>,
    /// What it does.
    op: Op,
}

/// A compiled operation.
#[derive(Debug)]
enum Op {
    /// `GET /query?q=…`.
    Query(TextTemplate),
    /// `GET /sobjects/{object}/{id}?fields=…`.
    Get {
        /// sObject type.
        object: String,
        /// Record id.
        id: TextTemplate,
        /// Fields to read.
        fields: Vec<String>,
    },
    /// `POST /sobjects/{object}/`.
    Create {
        /// sObject type.
        object: String,
        /// Field map.
        fields: FieldMap,
    },
    /// `PATCH /sobjects/{object}/{id}`.
    Update {
        /// sObject type.
        object: String,
        /// Record id.
        id: TextTemplate,
        /// Field map.
        fields: FieldMap,
    },
    /// `PATCH /sobjects/{object}/{field}/{value}`.
    Upsert {
        /// sObject type.
        object: String,
        /// External-id field.
        field: String,
        /// External-id value.
        value: TextTemplate,
        /// Field map.
        fields: FieldMap,
        /// `?updateOnly=true`.
        update_only: bool,
    },
}

/// An operation rendered for one event: everything but the instance and the token.
#[derive(Debug)]
struct Planned {
    /// The method.
    method: Method,
    /// Path segments after `/services/data/vNN.0/`.
    path: Vec<String>,
    /// Query parameters.
    query: Vec<(&'static str, String)>,
    /// The JSON body.
    body: Option<Value>,
    /// The output of a `204 No Content` (update; upsert on API v45 and older).
    no_content: Value,
}

impl SalesforceAction {
    /// Compiles the `salesforce:` section of an action.
    pub fn compile(
        section: &Value,
        engine: &Engine,
        scope: &ActionScope<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<SalesforceAction> {
        let before = problems.len();
        let def: ActionSection =
            connection::parse_section(section, ConnectorKind::Salesforce.name(), scope, problems)?;
        let compiled = connection::compile_for(
            scope,
            ConnectorKind::Salesforce.name(),
            &def.connection,
            problems,
            |c| SalesforceConnection::compile(c, engine),
        );
        if let Some(c) = &compiled {
            connection::warn_if_blocked(scope, &c.login_url, problems);
        }
        let op = compile_op(&def, engine, scope, problems);
        if connection::has_errors(problems, before) {
            return None;
        }
        Some(SalesforceAction {
            connection: compiled?,
            op: op?,
        })
    }

    /// The request as it would go out, for `switchyard test`: the instance is only known from a
    /// token response, so the login URL stands in for it, and the token shows as `[redacted]`.
    pub fn preview(&self, call: &Call<'_>) -> Result<Request, Outcome> {
        let planned = self.op.plan(&call.ctx)?;
        let login =
            render_setting(&self.connection.login_url, &call.ctx, "login_url").unwrap_or_default();
        let instance = Url::parse(&login)
            .or_else(|_| Url::parse("https://login.salesforce.com"))
            .map_err(|e| Outcome::fail(ErrorClass::Config, format!("login_url: {e}")))?;
        self.request(&planned, &instance, "[redacted]")
    }

    /// Runs the action once: token (shared), call, and one replay with a new token on a 401.
    pub async fn execute(&self, call: &Call<'_>, connectors: &Connectors) -> Outcome {
        let planned = match self.op.plan(&call.ctx) {
            Ok(planned) => planned,
            Err(outcome) => return outcome,
        };
        let conn = &self.connection;
        let state = connectors.registry.state(&conn.key, conn.limits);
        let mut replayed = false;
        loop {
            let token = match state
                .tokens
                .get(|| {
                    auth::fetch(
                        &connectors.http,
                        &conn.grant,
                        &conn.login_url,
                        &conn.id,
                        &call.ctx,
                    )
                })
                .await
            {
                Ok(token) => token,
                Err(outcome) => return outcome,
            };
            let request = match self.request(&planned, &token.instance_url, &token.access_token) {
                Ok(request) => request,
                Err(outcome) => return outcome,
            };
            let outcome = state
                .limiter
                .send(&connectors.http, request, classify::classify_salesforce)
                .await;
            match outcome {
                Outcome::Fail(failure) if failure.status == Some(401) && !replayed => {
                    info!(
                        connection = %conn.id,
                        action_id = call.action_id,
                        "salesforce refused the session (401); fetching a new token and replaying once"
                    );
                    state.tokens.invalidate(&token);
                    replayed = true;
                }
                outcome => return finish(outcome, planned, &token.access_token),
            }
        }
    }

    /// The wire request for an instance and a bearer token.
    fn request(&self, planned: &Planned, instance: &Url, bearer: &str) -> Result<Request, Outcome> {
        let mut url = instance.clone();
        url.set_query(None);
        url.set_fragment(None);
        {
            let mut segments = url.path_segments_mut().map_err(|()| {
                Outcome::fail(
                    ErrorClass::Permanent,
                    "the Salesforce instance_url cannot take a path",
                )
            })?;
            segments
                .pop_if_empty()
                .extend(["services", "data"])
                .push(&format!("v{}", self.connection.api_version))
                .extend(planned.path.iter());
        }
        if !planned.query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(planned.query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut headers = HeaderMap::with_capacity(3);
        let mut auth = header_value("Authorization", &format!("Bearer {bearer}"))?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let body = match &planned.body {
            Some(body) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Some(
                    serde_json::to_vec(body)
                        .map_err(|e| Outcome::fail(ErrorClass::Template, format!("fields: {e}")))?,
                )
            }
            None => None,
        };
        Ok(Request {
            method: planned.method.clone(),
            url,
            headers,
            body,
            timeout: None,
            connector: ConnectorKind::Salesforce.name(),
            destination: None,
        })
    }
}

/// Final touches on an outcome: the output of a 204, and the token kept out of any reason.
fn finish(outcome: Outcome, planned: Planned, token: &str) -> Outcome {
    match outcome {
        Outcome::Success { status: 204, .. } => Outcome::Success {
            status: 204,
            output: planned.no_content,
        },
        Outcome::Retry(mut failure) => {
            failure.reason = outcome::redact(&failure.reason, [token.to_owned()].iter());
            Outcome::Retry(failure)
        }
        Outcome::Fail(mut failure) => {
            failure.reason = outcome::redact(&failure.reason, [token.to_owned()].iter());
            Outcome::Fail(failure)
        }
        success => success,
    }
}

/// `Lead`, `Komo_Contact__c`, `Komo_Id__c`: an API name.
fn is_api_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_name(scope: &ActionScope<'_>, what: &str, name: &str, problems: &mut Vec<Problem>) {
    if !is_api_name(name) {
        scope.error(
            problems,
            format!("{what} {name:?} is not a Salesforce API name (letters, digits and _)"),
        );
    }
}

fn compile_op(
    def: &ActionSection,
    engine: &Engine,
    scope: &ActionScope<'_>,
    problems: &mut Vec<Problem>,
) -> Option<Op> {
    let named = [
        def.get.is_some(),
        def.create.is_some(),
        def.update.is_some(),
        def.upsert.is_some(),
    ]
    .iter()
    .filter(|on| **on)
    .count();
    if named != 1 {
        scope.error(
            problems,
            "salesforce: name exactly one operation: get, create, update or upsert",
        );
        return None;
    }
    let text = |what: &str, src: &str, problems: &mut Vec<Problem>| {
        connection::action_text(engine, scope, &format!("salesforce.{what}"), src, problems)
    };
    let fields = |what: &str, map: &Map<String, Value>, problems: &mut Vec<Problem>| {
        FieldMap::compile(engine, scope, &format!("salesforce.{what}"), map, problems)
    };
    if let Some(get) = &def.get {
        return match (&get.query, &get.object, &get.id) {
            (Some(query), None, None) => {
                if get.fields.is_some() {
                    scope.error(
                        problems,
                        "salesforce.get: fields goes with object and id; a query names its fields in SELECT",
                    );
                }
                let template = text("get.query", query, problems)?;
                warn_unescaped_soql(scope, &template, problems);
                Some(Op::Query(template))
            }
            (None, Some(object), Some(id)) => {
                check_name(scope, "salesforce.get.object", object, problems);
                let fields = get.fields.clone().unwrap_or_default();
                for field in &fields {
                    check_name(scope, "salesforce.get.fields", field, problems);
                }
                Some(Op::Get {
                    object: object.clone(),
                    id: text("get.id", id, problems)?,
                    fields,
                })
            }
            _ => {
                scope.error(
                    problems,
                    "salesforce.get takes a query, or an object and an id (with optional fields)",
                );
                None
            }
        };
    }
    if let Some(create) = &def.create {
        check_name(scope, "salesforce.create.object", &create.object, problems);
        if create.fields.keys().any(|k| k.eq_ignore_ascii_case("Id")) {
            scope.error(
                problems,
                "salesforce.create.fields: Id cannot be set on create (Salesforce answers INVALID_FIELD); use update or upsert",
            );
        }
        return Some(Op::Create {
            object: create.object.clone(),
            fields: fields("create.fields", &create.fields, problems)?,
        });
    }
    if let Some(update) = &def.update {
        check_name(scope, "salesforce.update.object", &update.object, problems);
        return Some(Op::Update {
            object: update.object.clone(),
            id: text("update.id", &update.id, problems)?,
            fields: fields("update.fields", &update.fields, problems)?,
        });
    }
    let upsert = def.upsert.as_ref()?;
    check_name(scope, "salesforce.upsert.object", &upsert.object, problems);
    check_name(
        scope,
        "salesforce.upsert.external_id_field",
        &upsert.external_id_field,
        problems,
    );
    Some(Op::Upsert {
        object: upsert.object.clone(),
        field: upsert.external_id_field.clone(),
        value: text("upsert.external_id", &upsert.external_id, problems)?,
        fields: fields("upsert.fields", &upsert.fields, problems)?,
        update_only: upsert.update_only,
    })
}

/// Warns about `{{ … }}` in a SOQL query that does not go through `| soql`: a quote in the value
/// would break the query, or change it.
fn warn_unescaped_soql(
    scope: &ActionScope<'_>,
    template: &TextTemplate,
    problems: &mut Vec<Problem>,
) {
    let source = template.source();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let inner = after[..end].trim().trim_matches('-').trim();
        if !inner.contains("soql") {
            connection::warn(
                scope,
                problems,
                format!(
                    "salesforce.get.query: `{{{{ {inner} }}}}` is not passed through `| soql`; a quote in the value would break the query (SOQL injection). Write `{{{{ {inner} | soql }}}}`, which also adds the quotes"
                ),
            );
        }
        rest = &after[end + 2..];
    }
}

impl Op {
    /// Renders the operation for one event.
    fn plan(&self, ctx: &Context<'_>) -> Result<Planned, Outcome> {
        Ok(match self {
            Op::Query(query) => Planned {
                method: Method::GET,
                path: vec!["query".into()],
                query: vec![("q", render_required(query, ctx, "salesforce.get.query")?)],
                body: None,
                no_content: Value::Null,
            },
            Op::Get { object, id, fields } => {
                let id = render_required(id, ctx, "salesforce.get.id")?;
                Planned {
                    method: Method::GET,
                    path: vec!["sobjects".into(), object.clone(), id],
                    query: if fields.is_empty() {
                        Vec::new()
                    } else {
                        vec![("fields", fields.join(","))]
                    },
                    body: None,
                    no_content: Value::Null,
                }
            }
            Op::Create { object, fields } => Planned {
                method: Method::POST,
                path: vec!["sobjects".into(), object.clone(), String::new()],
                query: Vec::new(),
                body: Some(Value::Object(
                    fields.render(ctx, "salesforce.create.fields")?,
                )),
                no_content: Value::Null,
            },
            Op::Update { object, id, fields } => {
                let id = render_required(id, ctx, "salesforce.update.id")?;
                Planned {
                    method: Method::PATCH,
                    path: vec!["sobjects".into(), object.clone(), id.clone()],
                    query: Vec::new(),
                    body: Some(Value::Object(
                        fields.render(ctx, "salesforce.update.fields")?,
                    )),
                    no_content: json!({ "id": id, "success": true, "errors": [] }),
                }
            }
            Op::Upsert {
                object,
                field,
                value,
                fields,
                update_only,
            } => {
                let value = render_required(value, ctx, "salesforce.upsert.external_id")?;
                Planned {
                    method: Method::PATCH,
                    path: vec!["sobjects".into(), object.clone(), field.clone(), value],
                    query: if *update_only {
                        vec![("updateOnly", "true".to_owned())]
                    } else {
                        Vec::new()
                    },
                    body: Some(Value::Object(
                        fields.render(ctx, "salesforce.upsert.fields")?,
                    )),
                    // API v45 and older answer an update with 204 and no body.
                    no_content: json!({ "success": true, "created": false, "errors": [] }),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{Catalog, compile_yaml};

    fn compile(yaml: &str) -> (Option<Catalog>, Vec<String>) {
        let (catalog, problems) = compile_yaml(yaml);
        let errors: Vec<String> = problems
            .iter()
            .filter(|p| p.severity != crate::workflow::Severity::Warning)
            .map(ToString::to_string)
            .collect();
        (errors.is_empty().then_some(catalog), errors)
    }

    const CONNECTIONS: &str = r#"
connections:
  - id: sf-main
    workspace: ws_demo
    salesforce:
      login_url: https://acme.my.salesforce.com
      client_credentials: { client_id: "3MVG9", client_secret: "{{ secrets.SF_SECRET }}" }
  - id: sf-other
    workspace: ws_other
    salesforce:
      login_url: https://other.my.salesforce.com
      client_credentials: { client_id: "3MVG9", client_secret: "{{ secrets.SF_SECRET }}" }
  - id: mc-main
    workspace: ws_demo
    mailchimp: { api_key: "{{ secrets.MC_KEY }}" }
"#;

    fn workflow(actions: &str) -> String {
        format!(
            "{CONNECTIONS}\nworkflows:\n  - id: wf\n    workspace: ws_demo\n    trigger: {{ event: Gameplay.DataCaptured }}\n    actions:\n{actions}"
        )
    }

    #[test]
    fn the_spec_find_update_create_example_compiles() {
        let (catalog, errors) = compile(&workflow(
            r#"
      - id: find_lead
        salesforce: { connection: sf-main, get: { query: "SELECT Id FROM Lead WHERE Email = {{ contact.email | soql }}" } }
      - id: update_lead
        needs: find_lead
        if: "steps.find_lead.totalSize > 0"
        salesforce:
          connection: sf-main
          update: { object: Lead, id: "{{ steps.find_lead.records[0].Id }}", fields: { Company: form_fields.company } }
      - id: create_lead
        needs: find_lead
        if: "steps.find_lead.totalSize == 0"
        salesforce:
          connection: sf-main
          create:
            object: Lead
            fields: { Email: contact.email, FirstName: contact.first_name, LastName: contact.last_name,
                      Company: form_fields.company, LeadSource: card.name }
"#,
        ));
        assert!(errors.is_empty(), "{errors:#?}");
        let catalog = catalog.unwrap();
        let wf = catalog.workflow("wf").unwrap();
        assert_eq!(wf.actions.len(), 3);
        assert!(
            wf.actions
                .iter()
                .all(|a| a.spec.connector() == "salesforce")
        );
    }

    #[test]
    fn validate_errors_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            (
                "      - { id: a, salesforce: { connection: sf-nope, get: { query: 'SELECT Id FROM Lead' } } }\n",
                "salesforce.connection \"sf-nope\" is not defined",
            ),
            (
                "      - { id: a, salesforce: { connection: mc-main, get: { query: 'SELECT Id FROM Lead' } } }\n",
                "is a mailchimp connection, not a salesforce one",
            ),
            (
                "      - { id: a, salesforce: { connection: sf-other, get: { query: 'SELECT Id FROM Lead' } } }\n",
                "belongs to workspace ws_other",
            ),
            (
                "      - { id: a, salesforce: { connection: sf-main } }\n",
                "name exactly one operation",
            ),
            (
                "      - { id: a, salesforce: { connection: sf-main, create: { object: Lead, fields: { Email: contact.email } }, get: { query: x } } }\n",
                "name exactly one operation",
            ),
            (
                "      - { id: a, salesforce: { connection: sf-main, create: { object: 'Lead; DROP', fields: {} } } }\n",
                "is not a Salesforce API name",
            ),
            (
                "      - { id: a, salesforce: { connection: sf-main, create: { object: Lead, fields: { Id: contact.id } } } }\n",
                "Id cannot be set on create",
            ),
            (
                "      - { id: a, salesforce: { connection: sf-main, create: { object: Lead, fieldz: {} } } }\n",
                "unknown field `fieldz`",
            ),
            (
                "      - { id: a, salesforce: { connection: sf-main, update: { object: Lead, id: '{{ steps.b.id }}', fields: {} } } }\n      - { id: b, salesforce: { connection: sf-main, get: { query: 'SELECT Id FROM Lead' } } }\n",
                "steps.b.id reads the output of b, which this action does not need",
            ),
            (
                "      - { id: a, salesforce: { connection: sf-main, create: { object: Lead, fields: { Company: steps.b.Id } } } }\n      - { id: b, salesforce: { connection: sf-main, get: { query: 'SELECT Id FROM Lead' } } }\n",
                "steps.b.Id reads the output of b",
            ),
            (
                "      - { id: a, salesforce: { connection: sf-main, create: { object: Lead, fields: { Company: '{{ secrets.SF_SECRET }}' } } } }\n",
                "secrets may appear only in auth, headers, url and connection settings",
            ),
            (
                "      - { id: a, needs: b, salesforce: { connection: sf-main, get: { query: x } } }\n      - { id: b, needs: a, salesforce: { connection: sf-main, get: { query: x } } }\n",
                "needs forms a cycle",
            ),
            (
                "      - { id: a, needs: zzz, salesforce: { connection: sf-main, get: { query: x } } }\n",
                "needs unknown action \"zzz\"",
            ),
        ];
        for (actions, want) in cases {
            let (catalog, errors) = compile(&workflow(actions));
            assert!(catalog.is_none(), "{actions}");
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{actions}\nwanted {want:?} in {errors:#?}"
            );
            assert!(
                errors.iter().all(|e| e.contains("wf.yaml")),
                "errors name the file: {errors:#?}"
            );
        }
    }

    #[test]
    fn connection_errors_are_reported_once_with_the_connection() {
        let cases: &[(&str, &str)] = &[
            (
                "{ login_url: https://acme.my.salesforce.com }",
                "name how to log in",
            ),
            (
                "{ login_url: https://acme.my.salesforce.com, client_credentials: { client_id: a, client_secret: b }, refresh_token: { client_id: a, refresh_token: c } }",
                "name one way to log in",
            ),
            (
                "{ login_url: 'ftp://acme', client_credentials: { client_id: a, client_secret: b } }",
                "scheme ftp is not allowed",
            ),
            (
                "{ login_url: https://acme.my.salesforce.com, api_version: latest, client_credentials: { client_id: a, client_secret: b } }",
                "api_version \"latest\"",
            ),
            (
                "{ login_url: https://acme.my.salesforce.com, client_credentials: { client_id: '{{ contact.email }}', client_secret: b } }",
                "can read secrets only",
            ),
            (
                "{ login_url: https://acme.my.salesforce.com, jwt_bearer: { client_id: a, username: u, private_key: 'not a key' } }",
                "jwt_bearer.private_key: not a PEM private key",
            ),
            (
                "{ login_url: https://acme.my.salesforce.com, client_credentials: { client_id: a, client_secret: b }, limits: { rate: fast } }",
                "limits.rate \"fast\"",
            ),
        ];
        for (settings, want) in cases {
            let yaml = format!(
                "connections:\n  - id: sf-x\n    workspace: ws_demo\n    salesforce: {settings}\n"
            );
            let (_, errors) = compile(&yaml);
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains("connection sf-x") && e.contains(want)),
                "{settings}\nwanted {want:?} in {errors:#?}"
            );
        }
        let unknown = "connections:\n  - { id: hs, workspace: ws_demo, hubspot: { token: x } }\n";
        let (_, errors) = compile(unknown);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("hubspot is not a connected app")),
            "{errors:#?}"
        );
    }

    #[test]
    fn unescaped_soql_values_are_warned_about() {
        let yaml = workflow(
            "      - { id: a, salesforce: { connection: sf-main, get: { query: \"SELECT Id FROM Lead WHERE Email = '{{ contact.email }}'\" } } }\n",
        );
        let (_, problems) = compile_yaml(&yaml);
        assert!(
            problems
                .iter()
                .any(|p| p.severity == crate::workflow::Severity::Warning
                    && p.message.contains("| soql")),
            "{problems:#?}"
        );
    }

    #[test]
    fn api_versions_and_names() {
        for name in ["Lead", "Komo_Contact__c", "A1"] {
            assert!(is_api_name(name), "{name}");
        }
        for name in ["", "1A", "Lead/..", "Lead; x", "_x"] {
            assert!(!is_api_name(name), "{name}");
        }
        let connection = |version: &str| {
            Connection {
            id: "sf".into(),
            workspace: "ws".into(),
            kind: "salesforce".into(),
            settings: serde_yaml_ng::from_str(&format!(
                "{{ login_url: 'https://acme.my.salesforce.com', api_version: {version}, client_credentials: {{ client_id: a, client_secret: b }} }}"
            ))
            .unwrap(),
        }
        };
        for (written, want) in [
            ("'61.0'", "61.0"),
            ("v45.0", "45.0"),
            ("62.0", "62.0"),
            ("60", "60.0"),
        ] {
            let compiled = SalesforceConnection::compile(&connection(written), &Engine::new())
                .unwrap_or_else(|e| panic!("{written}: {e:?}"));
            assert_eq!(compiled.api_version, want, "{written}");
        }
    }
}
