//! The Mailchimp connected app (Marketing API v3): `upsert` a list member and `tag` it.
//!
//! ```yaml
//! connections:
//!   - id: mc-main
//!     workspace: ws_demo
//!     mailchimp: { api_key: "{{ secrets.MAILCHIMP_KEY }}" }   # …-us6: the data centre is us6
//!     # base_url: default https://<dc>.api.mailchimp.com/3.0; limits: default { concurrency: 10 }
//! ```
//!
//! Members are addressed by the subscriber hash, the MD5 of the lowercased email. Errors are
//! `application/problem+json`, classified in [`classify::classify_mailchimp`].

pub mod classify;

use std::sync::Arc;

use base64::Engine as _;
use md5::{Digest, Md5};
use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::debug;
use url::Url;

use super::connection::{
    self, ConnectionKey, FieldMap, Limits, LimitsDef, render_required, render_setting,
};
use super::http::header_value;
use super::{Call, ConnectorKind, Connectors, Request};
use crate::outcome::{ErrorClass, Outcome};
use crate::template::{Context, Engine, TextTemplate};
use crate::workflow::problem::Problem;
use crate::workflow::scope::{ActionScope, Connection};

/// Mailchimp's documented limit: 10 simultaneous connections per account.
pub const DEFAULT_LIMITS: Limits = Limits {
    concurrency: Some(10),
    rate: None,
};

/// The user name of the Basic credential (Mailchimp accepts any).
const BASIC_USER: &str = "switchyard";

/// Member statuses Mailchimp accepts for `status` and `status_if_new`.
const STATUSES: [&str; 5] = [
    "subscribed",
    "unsubscribed",
    "cleaned",
    "pending",
    "transactional",
];

/// The subscriber hash: lowercase hex MD5 of the lowercased email.
pub fn subscriber_hash(email: &str) -> String {
    hex::encode(Md5::digest(email.trim().to_lowercase().as_bytes()))
}

/// The data centre of an API key: the part after the last `-` (`…-us6` → `us6`).
pub fn data_centre(api_key: &str) -> Option<&str> {
    let (_, dc) = api_key.trim().rsplit_once('-')?;
    (!dc.is_empty() && dc.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(dc)
}

/// `connections[].mailchimp`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionDef {
    /// The API key (usually `{{ secrets.X }}`).
    api_key: String,
    /// Overrides `https://<dc>.api.mailchimp.com/3.0` (a proxy, a test double).
    #[serde(default)]
    base_url: Option<String>,
    /// Concurrency and rate limits.
    #[serde(default)]
    limits: Option<LimitsDef>,
}

/// A compiled Mailchimp connection.
#[derive(Debug)]
pub struct MailchimpConnection {
    /// Its id (logs).
    pub id: String,
    /// Where its shared state lives.
    pub key: ConnectionKey,
    /// The API key.
    api_key: TextTemplate,
    /// The API base, when not derived from the key.
    base_url: Option<TextTemplate>,
    /// Concurrency and rate limits.
    pub limits: Limits,
}

impl MailchimpConnection {
    /// Compiles a connection's settings; every problem is returned.
    pub fn compile(
        connection: &Connection,
        engine: &Engine,
    ) -> Result<MailchimpConnection, Vec<String>> {
        let def: ConnectionDef = connection::parse_settings(&connection.settings)?;
        let mut errors = Vec::new();
        let api_key = connection::setting(engine, "api_key", &def.api_key, &mut errors);
        if let Some(key) = api_key.as_ref().and_then(TextTemplate::literal)
            && def.base_url.is_none()
            && data_centre(key).is_none()
        {
            errors.push(
                "api_key has no data-centre suffix (…-us6); set base_url, or use the full key"
                    .into(),
            );
        }
        let base_url = def
            .base_url
            .as_deref()
            .and_then(|src| connection::setting(engine, "base_url", src, &mut errors));
        if let Some(base) = &base_url {
            connection::check_base_url(base, "base_url", &mut errors);
        }
        let limits = Limits::compile(def.limits.as_ref(), DEFAULT_LIMITS)
            .map_err(|e| errors.push(e))
            .ok();
        match (api_key, limits) {
            (Some(api_key), Some(limits)) if errors.is_empty() => Ok(MailchimpConnection {
                id: connection.id.clone(),
                key: ConnectionKey::of(connection),
                api_key,
                base_url,
                limits,
            }),
            _ => Err(errors),
        }
    }

    /// The API base and the `Authorization` value, rendered with secrets.
    fn endpoint(&self, ctx: &Context<'_>, preview: bool) -> Result<(Url, HeaderValue), Outcome> {
        let key = render_setting(&self.api_key, ctx, "mailchimp api_key")?;
        let base = match &self.base_url {
            Some(template) => render_setting(template, ctx, "mailchimp base_url")?,
            None => match data_centre(&key) {
                Some(dc) => format!("https://{dc}.api.mailchimp.com/3.0"),
                // A dry run sees `[redacted]` instead of the key.
                None if preview => "https://dc.api.mailchimp.com/3.0".to_owned(),
                None => {
                    return Err(Outcome::fail(
                        ErrorClass::Config,
                        format!(
                            "connection {}: the Mailchimp API key has no data-centre suffix (…-us6); set base_url",
                            self.id
                        ),
                    ));
                }
            },
        };
        let url = Url::parse(base.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                Outcome::fail(
                    ErrorClass::Config,
                    format!("connection {}: base_url is not an http(s) URL", self.id),
                )
            })?;
        let credential =
            base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_USER}:{key}"));
        let mut auth = header_value("Authorization", &format!("Basic {credential}"))?;
        auth.set_sensitive(true);
        Ok((url, auth))
    }
}

/// `actions[].mailchimp`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionSection {
    /// The connection id.
    connection: String,
    /// Add or update a list member.
    #[serde(default)]
    upsert: Option<UpsertDef>,
    /// Add or remove tags.
    #[serde(default)]
    tag: Option<TagDef>,
}

/// `upsert: { list, email, status_if_new, status, merge_fields }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertDef {
    /// The audience (list) id.
    list: String,
    /// The member's email (a template).
    email: String,
    /// The status of a new member.
    status_if_new: String,
    /// The status to set on an existing member too.
    #[serde(default)]
    status: Option<String>,
    /// Merge tag → mapped value.
    #[serde(default)]
    merge_fields: Map<String, Value>,
}

/// `tag: { list, email, tags }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagDef {
    /// The audience (list) id.
    list: String,
    /// The member's email (a template).
    email: String,
    /// `[name, …]` (active) or `[{ name, status: active | inactive }, …]`.
    tags: Vec<TagItemDef>,
}

/// One tag as written.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TagItemDef {
    /// A name: the tag is applied.
    Name(String),
    /// A name and `active` (apply) or `inactive` (remove).
    Full {
        /// The tag name (a template).
        name: String,
        /// `active` (default) or `inactive`.
        #[serde(default)]
        status: Option<String>,
    },
}

/// A compiled Mailchimp action.
#[derive(Debug)]
pub struct MailchimpAction {
    /// The connection.
    connection: Arc<MailchimpConnection>,
    /// The list id.
    list: TextTemplate,
    /// The member's email.
    email: TextTemplate,
    /// What it does.
    op: Op,
}

/// A compiled operation.
#[derive(Debug)]
enum Op {
    /// `PUT /lists/{list}/members/{hash}`.
    Upsert {
        /// `status_if_new`.
        status_if_new: TextTemplate,
        /// `status`.
        status: Option<TextTemplate>,
        /// `merge_fields`.
        merge_fields: FieldMap,
    },
    /// `POST /lists/{list}/members/{hash}/tags`.
    Tag {
        /// (name, active).
        tags: Vec<(TextTemplate, bool)>,
    },
}

impl MailchimpAction {
    /// Compiles the `mailchimp:` section of an action.
    pub fn compile(
        section: &Value,
        engine: &Engine,
        scope: &ActionScope<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<MailchimpAction> {
        let before = problems.len();
        let def: ActionSection =
            connection::parse_section(section, ConnectorKind::Mailchimp.name(), scope, problems)?;
        let compiled = connection::compile_for(
            scope,
            ConnectorKind::Mailchimp.name(),
            &def.connection,
            problems,
            |c| MailchimpConnection::compile(c, engine),
        );
        if let Some(base) = compiled.as_ref().and_then(|c| c.base_url.as_ref()) {
            connection::warn_if_blocked(scope, base, problems);
        }
        let text = |what: &str, src: &str, problems: &mut Vec<Problem>| {
            connection::action_text(engine, scope, &format!("mailchimp.{what}"), src, problems)
        };
        let status = |what: &str, src: &str, problems: &mut Vec<Problem>| {
            let template = text(what, src, problems)?;
            if let Some(literal) = template.literal()
                && !STATUSES.contains(&literal.trim())
            {
                scope.error(
                    problems,
                    format!(
                        "mailchimp.{what} {literal:?} is not one of {}",
                        STATUSES.join(", ")
                    ),
                );
            }
            Some(template)
        };
        let (list, email, op) = match (&def.upsert, &def.tag) {
            (Some(upsert), None) => {
                let op = (|| {
                    Some(Op::Upsert {
                        status_if_new: status(
                            "upsert.status_if_new",
                            &upsert.status_if_new,
                            problems,
                        )?,
                        status: match &upsert.status {
                            Some(src) => Some(status("upsert.status", src, problems)?),
                            None => None,
                        },
                        merge_fields: FieldMap::compile(
                            engine,
                            scope,
                            "mailchimp.upsert.merge_fields",
                            &upsert.merge_fields,
                            problems,
                        )?,
                    })
                })();
                (
                    text("upsert.list", &upsert.list, problems),
                    text("upsert.email", &upsert.email, problems),
                    op,
                )
            }
            (None, Some(tag)) => {
                if tag.tags.is_empty() {
                    scope.error(problems, "mailchimp.tag.tags: name at least one tag");
                }
                let mut tags = Vec::with_capacity(tag.tags.len());
                for (i, item) in tag.tags.iter().enumerate() {
                    let (name, active) = match item {
                        TagItemDef::Name(name) => (name, true),
                        TagItemDef::Full { name, status } => {
                            let active = match status.as_deref().map(str::trim) {
                                None | Some("active") => true,
                                Some("inactive") => false,
                                Some(other) => {
                                    scope.error(
                                        problems,
                                        format!(
                                            "mailchimp.tag.tags[{i}].status {other:?} is not active or inactive"
                                        ),
                                    );
                                    true
                                }
                            };
                            (name, active)
                        }
                    };
                    if let Some(name) = text(&format!("tag.tags[{i}].name"), name, problems) {
                        tags.push((name, active));
                    }
                }
                (
                    text("tag.list", &tag.list, problems),
                    text("tag.email", &tag.email, problems),
                    Some(Op::Tag { tags }),
                )
            }
            _ => {
                scope.error(
                    problems,
                    "mailchimp: name exactly one operation: upsert or tag",
                );
                (None, None, None)
            }
        };
        if connection::has_errors(problems, before) {
            return None;
        }
        Some(MailchimpAction {
            connection: compiled?,
            list: list?,
            email: email?,
            op: op?,
        })
    }

    /// The request as it would go out (`switchyard test`).
    pub fn preview(&self, call: &Call<'_>) -> Result<Request, Outcome> {
        Ok(self.render(&call.ctx, true)?.0)
    }

    /// Runs the action once, within the connection's limits.
    pub async fn execute(&self, call: &Call<'_>, connectors: &Connectors) -> Outcome {
        let (request, output) = match self.render(&call.ctx, false) {
            Ok(rendered) => rendered,
            Err(outcome) => return outcome,
        };
        let Some(request) = request_if_any(request, &output) else {
            debug!(connection = %self.connection.id, action_id = call.action_id, "no tag to send");
            return Outcome::Success {
                status: 204,
                output,
            };
        };
        let state = connectors
            .registry
            .state(&self.connection.key, self.connection.limits);
        let outcome = state
            .limiter
            .send(&connectors.http, request, classify::classify_mailchimp)
            .await;
        match outcome {
            Outcome::Success { status: 204, .. } => Outcome::Success {
                status: 204,
                output,
            },
            other => other,
        }
    }

    /// The request, and the output of a `204 No Content`.
    fn render(&self, ctx: &Context<'_>, preview: bool) -> Result<(Request, Value), Outcome> {
        let (mut url, auth) = self.connection.endpoint(ctx, preview)?;
        let list = render_required(&self.list, ctx, "mailchimp list")?;
        let email = render_required(&self.email, ctx, "mailchimp email")?;
        let hash = subscriber_hash(&email);
        let (method, tail, body, output) = match &self.op {
            Op::Upsert {
                status_if_new,
                status,
                merge_fields,
            } => {
                let mut body = Map::new();
                body.insert("email_address".into(), Value::String(email.clone()));
                body.insert(
                    "status_if_new".into(),
                    Value::String(render_status(status_if_new, ctx, "status_if_new")?),
                );
                if let Some(status) = status {
                    body.insert(
                        "status".into(),
                        Value::String(render_status(status, ctx, "status")?),
                    );
                }
                let merge = merge_fields.render(ctx, "mailchimp.upsert.merge_fields")?;
                if !merge.is_empty() {
                    body.insert("merge_fields".into(), Value::Object(merge));
                }
                let output = json!({ "id": hash, "email_address": email, "list_id": list });
                (Method::PUT, None, Value::Object(body), output)
            }
            Op::Tag { tags } => {
                let mut items = Vec::with_capacity(tags.len());
                for (name, active) in tags {
                    let name = connection::render_text(name, ctx, "mailchimp.tag.tags")?;
                    let name = name.trim();
                    if !name.is_empty() {
                        let status = if *active { "active" } else { "inactive" };
                        items.push(json!({ "name": name, "status": status }));
                    }
                }
                let output = json!({
                    "id": hash, "email_address": email, "list_id": list,
                    "tags": items.clone(), "success": true,
                });
                let body = json!({ "tags": items, "is_syncing": false });
                (Method::POST, Some("tags"), body, output)
            }
        };
        url.set_query(None);
        url.path_segments_mut()
            .map_err(|()| {
                Outcome::fail(ErrorClass::Config, "mailchimp base_url cannot take a path")
            })?
            .pop_if_empty()
            .extend(["lists", list.as_str(), "members", hash.as_str()])
            .extend(tail);
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert(AUTHORIZATION, auth);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let body = serde_json::to_vec(&body)
            .map_err(|e| Outcome::fail(ErrorClass::Template, format!("mailchimp body: {e}")))?;
        Ok((
            Request {
                method,
                url,
                headers,
                body: Some(body),
                timeout: None,
                connector: ConnectorKind::Mailchimp.name(),
                destination: None,
            },
            output,
        ))
    }
}

/// A tag request whose every tag rendered empty is not sent.
fn request_if_any(request: Request, output: &Value) -> Option<Request> {
    match output.get("tags").and_then(Value::as_array) {
        Some(tags) if tags.is_empty() => None,
        _ => Some(request),
    }
}

fn render_status(
    template: &TextTemplate,
    ctx: &Context<'_>,
    what: &str,
) -> Result<String, Outcome> {
    let status = render_required(template, ctx, &format!("mailchimp {what}"))?;
    if STATUSES.contains(&status.as_str()) {
        Ok(status)
    } else {
        Err(Outcome::fail(
            ErrorClass::Template,
            format!(
                "mailchimp {what} rendered {status:?}, which is not one of {}",
                STATUSES.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_hash_matches_mailchimps_test_vector() {
        assert_eq!(
            subscriber_hash("urist.mcvankab@freddiesjokes.com"),
            "62eeb292278cc15f5817cb78f7790b08"
        );
        assert_eq!(
            subscriber_hash(" Urist.McVankab@FreddiesJokes.com "),
            "62eeb292278cc15f5817cb78f7790b08"
        );
    }

    #[test]
    fn data_centre_is_the_key_suffix() {
        assert_eq!(data_centre("0123456789abcdef-us6"), Some("us6"));
        assert_eq!(data_centre("a-b-us21"), Some("us21"));
        assert_eq!(data_centre("nodash"), None);
        assert_eq!(data_centre("key-"), None);
        assert_eq!(data_centre("key-evil.com/x"), None);
    }

    fn connection(settings: &str) -> Connection {
        Connection {
            id: "mc".into(),
            workspace: "ws".into(),
            kind: "mailchimp".into(),
            settings: serde_yaml_ng::from_str(settings).unwrap(),
        }
    }

    #[test]
    fn endpoint_from_the_key_or_base_url() {
        let engine = Engine::new();
        let secrets: std::collections::HashMap<String, String> =
            [("MC_KEY".to_owned(), "abc123-us6".to_owned())].into();
        let event = json!({});
        let ctx = Context {
            event: (&event).into(),
            steps: &Value::Null,
            secrets: crate::template::SecretsView::Real(&secrets),
        };
        let derived = MailchimpConnection::compile(
            &connection("{ api_key: '{{ secrets.MC_KEY }}' }"),
            &engine,
        )
        .unwrap();
        let (url, auth) = derived.endpoint(&ctx, false).unwrap();
        assert_eq!(url.as_str(), "https://us6.api.mailchimp.com/3.0");
        assert!(auth.is_sensitive());
        let expected = base64::engine::general_purpose::STANDARD.encode("switchyard:abc123-us6");
        assert_eq!(auth.to_str().unwrap(), format!("Basic {expected}"));

        let proxied = MailchimpConnection::compile(
            &connection("{ api_key: '{{ secrets.MC_KEY }}', base_url: 'http://127.0.0.1:9/3.0' }"),
            &engine,
        )
        .unwrap();
        assert_eq!(
            proxied.endpoint(&ctx, false).unwrap().0.as_str(),
            "http://127.0.0.1:9/3.0"
        );

        let no_dc = MailchimpConnection::compile(&connection("{ api_key: plainkey }"), &engine);
        assert!(no_dc.is_err());
        let missing = NoSecrets::new();
        let failed = derived.endpoint(&missing.ctx(), false);
        assert!(matches!(failed, Err(Outcome::Fail(f)) if f.class == ErrorClass::Config));
    }

    /// A context without secrets.
    struct NoSecrets {
        secrets: std::collections::HashMap<String, String>,
        event: Value,
    }

    impl NoSecrets {
        fn new() -> NoSecrets {
            NoSecrets {
                secrets: Default::default(),
                event: json!({}),
            }
        }
        fn ctx(&self) -> Context<'_> {
            Context {
                event: (&self.event).into(),
                steps: &Value::Null,
                secrets: crate::template::SecretsView::Real(&self.secrets),
            }
        }
    }
}
