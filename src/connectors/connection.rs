//! What the connected apps (Salesforce, Mailchimp, Braze) share at load time: finding an action's
//! `connection:`, compiling connection settings (which may read secrets and nothing else), limits,
//! and field maps.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::ConnectorKind;
use super::http::template_failure;
use crate::outcome::{ErrorClass, Outcome};
use crate::template::{Context, Engine, MappedValue, TextTemplate};
use crate::workflow::problem::{Problem, Severity};
use crate::workflow::scope::{ActionScope, Connection};

/// Identifies a connection's runtime state (token, semaphore, rate limiter) across reloads: the
/// same id with the same settings keeps its state; changed settings start afresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    /// The connection id.
    pub id: String,
    /// A digest of the workspace, kind and settings as written (templates, not secret values).
    pub fingerprint: String,
}

impl ConnectionKey {
    /// The key of a connection as loaded.
    pub fn of(connection: &Connection) -> ConnectionKey {
        let mut digest = Sha256::new();
        for part in [
            connection.workspace.as_str(),
            connection.kind.as_str(),
            &connection.settings.to_string(),
        ] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
        ConnectionKey {
            id: connection.id.clone(),
            fingerprint: hex::encode(&digest.finalize()[..12]),
        }
    }
}

/// Checks a connection's settings when the files load, so that a broken connection is reported
/// once, even when no action uses it. Returns one message per problem.
pub fn check(connection: &Connection, engine: &Engine) -> Vec<String> {
    let result = match ConnectorKind::from_name(&connection.kind) {
        Some(ConnectorKind::Salesforce) => {
            super::salesforce::SalesforceConnection::compile(connection, engine).map(|_| ())
        }
        Some(ConnectorKind::Mailchimp) => {
            super::mailchimp::MailchimpConnection::compile(connection, engine).map(|_| ())
        }
        Some(ConnectorKind::Braze) => {
            super::braze::BrazeConnection::compile(connection, engine).map(|_| ())
        }
        Some(ConnectorKind::Http | ConnectorKind::Webhook) | None => Err(vec![format!(
            "{} is not a connected app; use one of {}",
            connection.kind,
            ConnectorKind::list(ConnectorKind::is_app)
        )]),
    };
    result.err().unwrap_or_default()
}

/// Finds the connection an action names, checking its kind and workspace.
pub fn lookup<'a>(
    scope: &ActionScope<'a>,
    kind: &str,
    id: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'a Connection> {
    let Some(connection) = scope.connections.get(id) else {
        let mut known: Vec<&str> = scope
            .connections
            .values()
            .filter(|c| c.kind == kind && c.workspace == scope.workspace)
            .map(|c| c.id.as_str())
            .collect();
        known.sort_unstable();
        let hint = if known.is_empty() {
            format!(
                "define one under `connections:` with workspace {} and a {kind} section",
                scope.workspace
            )
        } else {
            format!(
                "{kind} connections of {}: {}",
                scope.workspace,
                known.join(", ")
            )
        };
        scope.error(
            problems,
            format!("{kind}.connection {id:?} is not defined; {hint}"),
        );
        return None;
    };
    if connection.kind != kind {
        scope.error(
            problems,
            format!(
                "{kind}.connection {id:?} is a {} connection, not a {kind} one",
                connection.kind
            ),
        );
        return None;
    }
    if connection.workspace != scope.workspace {
        scope.error(
            problems,
            format!(
                "{kind}.connection {id:?} belongs to workspace {}, not to this workflow's workspace {}",
                connection.workspace, scope.workspace
            ),
        );
        return None;
    }
    Some(connection)
}

/// Finds the connection an action names ([`lookup`]) and compiles it with `compile`. A
/// connection that does not compile is reported here once for the action (its own errors are
/// reported with the connection).
pub fn compile_for<C, E>(
    scope: &ActionScope<'_>,
    kind: &str,
    id: &str,
    problems: &mut Vec<Problem>,
    compile: impl FnOnce(&Connection) -> Result<C, E>,
) -> Option<std::sync::Arc<C>> {
    let connection = lookup(scope, kind, id, problems)?;
    match compile(connection) {
        Ok(compiled) => Some(std::sync::Arc::new(compiled)),
        Err(_) => {
            scope.error(
                problems,
                format!("{kind}.connection {id:?} has errors (reported with the connection)"),
            );
            None
        }
    }
}

/// Deserialises an action's section into its typed shape, reporting serde's message.
pub fn parse_section<T: DeserializeOwned>(
    value: &Value,
    kind: &str,
    scope: &ActionScope<'_>,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match T::deserialize(value) {
        Ok(def) => Some(def),
        Err(e) => {
            scope.error(problems, format!("{kind}: {e}"));
            None
        }
    }
}

/// Deserialises connection settings into their typed shape.
pub fn parse_settings<T: DeserializeOwned>(settings: &Value) -> Result<T, Vec<String>> {
    T::deserialize(settings).map_err(|e| vec![e.to_string()])
}

/// Compiles a connection setting: a literal, or a template that reads secrets only (connection
/// settings are shared by every workflow of the workspace and see no event).
pub fn setting(
    engine: &Engine,
    what: &str,
    src: &str,
    errors: &mut Vec<String>,
) -> Option<TextTemplate> {
    match engine.text(src) {
        Ok(template) => {
            let others: Vec<String> = template
                .variables()
                .iter()
                .filter(|path| path.first().map(String::as_str) != Some("secrets"))
                .map(|path| path.join("."))
                .collect();
            if others.is_empty() {
                Some(template)
            } else {
                errors.push(format!(
                    "{what}: connection settings can read secrets only ({{{{ secrets.NAME }}}}), not {}",
                    others.join(", ")
                ));
                None
            }
        }
        Err(e) => {
            errors.push(format!("{what}: {e}"));
            None
        }
    }
}

/// Checks a literal base URL setting (a template is checked when rendered).
pub fn check_base_url(template: &TextTemplate, what: &str, errors: &mut Vec<String>) {
    if let Some(literal) = template.literal() {
        match url::Url::parse(literal.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => errors.push(format!(
                "{what}: scheme {} is not allowed; use https",
                url.scheme()
            )),
            Err(e) => errors.push(format!("{what} {literal:?} is not a URL: {e}")),
        }
    }
}

/// Warns when a literal base URL points at an address blocked by default.
pub fn warn_if_blocked(
    scope: &ActionScope<'_>,
    template: &TextTemplate,
    problems: &mut Vec<Problem>,
) {
    if let Some(url) = template
        .literal()
        .and_then(|l| url::Url::parse(l.trim()).ok())
    {
        scope.warn_if_blocked(&url, problems);
    }
}

/// Renders a connection setting; a missing secret is a configuration failure.
pub fn render_setting(
    template: &TextTemplate,
    ctx: &Context<'_>,
    what: &str,
) -> Result<String, Outcome> {
    template
        .render(ctx)
        .map(|s| s.trim().to_owned())
        .map_err(|e| template_failure(what, &e))
}

/// Renders an action setting (a template over the event); `what` names it in the reason.
pub fn render_text(
    template: &TextTemplate,
    ctx: &Context<'_>,
    what: &str,
) -> Result<String, Outcome> {
    template.render(ctx).map_err(|e| template_failure(what, &e))
}

/// Like [`render_text`], but an empty result is a failure: the request cannot be built without it.
pub fn render_required(
    template: &TextTemplate,
    ctx: &Context<'_>,
    what: &str,
) -> Result<String, Outcome> {
    let text = render_text(template, ctx, what)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(Outcome::fail(
            ErrorClass::Template,
            format!(
                "{what} rendered empty (from {:?}); the event or the step output lacks it",
                template.source()
            ),
        ));
    }
    Ok(text.to_owned())
}

/// Compiles an action's string setting (no secrets: it may end up in a body or a URL path).
pub fn action_text(
    engine: &Engine,
    scope: &ActionScope<'_>,
    what: &str,
    src: &str,
    problems: &mut Vec<Problem>,
) -> Option<TextTemplate> {
    scope.text(engine, what, src, false, problems)
}

/// Records a warning about an action.
pub fn warn(scope: &ActionScope<'_>, problems: &mut Vec<Problem>, message: String) {
    problems.push(Problem {
        file: scope.file.to_path_buf(),
        workflow: Some(scope.workflow.to_owned()),
        action: Some(scope.action.to_owned()),
        message,
        severity: Severity::Warning,
    });
}

/// A compiled field map (`fields`, `merge_fields`, `attributes`, event `properties`): destination
/// field → mapped value, in the order written.
#[derive(Debug, Clone, Default)]
pub struct FieldMap(Vec<(String, MappedValue)>);

impl FieldMap {
    /// Compiles a YAML mapping; every value goes through [`Engine::mapping`] and its variables are
    /// checked (no secrets; `steps.X` only for prerequisites).
    pub fn compile(
        engine: &Engine,
        scope: &ActionScope<'_>,
        what: &str,
        value: &Map<String, Value>,
        problems: &mut Vec<Problem>,
    ) -> Option<FieldMap> {
        let before = problems.len();
        let mut fields = Vec::with_capacity(value.len());
        for (name, source) in value {
            if name.trim().is_empty() {
                scope.error(problems, format!("{what}: a field name is empty"));
                continue;
            }
            if let Some(mapped) =
                compile_value(engine, scope, &format!("{what}.{name}"), source, problems)
            {
                fields.push((name.clone(), mapped));
            }
        }
        (!has_errors(problems, before)).then_some(FieldMap(fields))
    }

    /// Resolves every field; a value that resolves to nothing leaves its field out.
    pub fn render(&self, ctx: &Context<'_>, what: &str) -> Result<Map<String, Value>, Outcome> {
        let mut out = Map::with_capacity(self.0.len());
        for (name, mapped) in &self.0 {
            if let Some(value) = resolve(mapped, ctx, &format!("{what}.{name}"))? {
                out.insert(name.clone(), value);
            }
        }
        Ok(out)
    }

    /// True when no field is mapped.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Compiles one mapped value and checks its variables.
pub fn compile_value(
    engine: &Engine,
    scope: &ActionScope<'_>,
    what: &str,
    source: &Value,
    problems: &mut Vec<Problem>,
) -> Option<MappedValue> {
    match engine.mapping(source) {
        Ok(mapped) => {
            scope.check_variables(what, &mapped.variables(), false, problems);
            Some(mapped)
        }
        Err(e) => {
            scope.error(problems, format!("{what}: {e}"));
            None
        }
    }
}

/// Resolves one mapped value.
pub fn resolve(
    mapped: &MappedValue,
    ctx: &Context<'_>,
    what: &str,
) -> Result<Option<Value>, Outcome> {
    mapped.resolve(ctx).map_err(|e| template_failure(what, &e))
}

/// Whether errors were recorded since `before`.
pub fn has_errors(problems: &[Problem], before: usize) -> bool {
    problems[before..]
        .iter()
        .any(|p| p.severity == Severity::Error)
}

/// `limits:` of a connection.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDef {
    /// Calls in flight at once, across every worker task of the process.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// `N/s`, `N/min`, `N/h` or `N/<duration>` (`3000/3s`); `none` turns the default off.
    #[serde(default)]
    pub rate: Option<String>,
}

/// Compiled limits of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls in flight at once; `None` is unbounded.
    pub concurrency: Option<u32>,
    /// At most `count` calls per `per` (with bursts up to `count`); `None` is unbounded.
    pub rate: Option<Rate>,
}

/// A rate: `count` calls per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Calls…
    pub count: NonZeroU32,
    /// …per this period.
    pub per: Duration,
}

impl Limits {
    /// Applies the settings over the app's defaults.
    pub fn compile(def: Option<&LimitsDef>, defaults: Limits) -> Result<Limits, String> {
        let Some(def) = def else {
            return Ok(defaults);
        };
        let concurrency = match def.concurrency {
            None => defaults.concurrency,
            Some(0) => {
                return Err(
                    "limits.concurrency must be at least 1 (leave it out for the default)".into(),
                );
            }
            Some(n) => Some(n),
        };
        let rate = match def.rate.as_deref().map(str::trim) {
            None => defaults.rate,
            Some("none" | "unlimited") => None,
            Some(text) => Some(Rate::parse(text)?),
        };
        Ok(Limits { concurrency, rate })
    }
}

impl Rate {
    /// Parses `100/s`, `6000/min`, `250000/h`, `3000/3s`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || {
            format!(
                "limits.rate {text:?} is not a rate; write calls/period, e.g. 100/s, 6000/min, 3000/3s, or none"
            )
        };
        let (count, period) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let count = NonZeroU32::new(count).ok_or_else(bad)?;
        let period = period.trim();
        let per = match period {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => humantime::parse_duration(other).map_err(|_| bad())?,
        };
        if per.is_zero() || (per / count.get()).is_zero() {
            return Err(bad());
        }
        Ok(Rate { count, per })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of SPEC §3, verbatim: every connector, the find → update-or-create chain.
    const SPEC_EXAMPLE: &str = r#"
connections:
  - id: sf-main
    workspace: ws_demo
    salesforce:
      login_url: https://acme.my.salesforce.com
      api_version: "61.0"
      client_credentials: { client_id: "3MVG9…", client_secret: "{{ secrets.SF_CLIENT_SECRET }}" }
  - id: mc-main
    workspace: ws_demo
    mailchimp: { api_key: "{{ secrets.MAILCHIMP_KEY }}" }
  - id: braze-main
    workspace: ws_demo
    braze: { rest_endpoint: https://rest.iad-01.braze.com, api_key: "{{ secrets.BRAZE_KEY }}" }

workflows:
  - id: lead-sync
    workspace: ws_demo
    trigger:
      event: Gameplay.DataCaptured
      scope: { card: card_42 }
      if: "contact.email != blank"
    actions:
      - id: hubspot
        http:
          method: POST
          url: https://api.hubapi.com/crm/v3/objects/contacts
          headers: { Content-Type: application/json }
          auth: { bearer: "{{ secrets.HUBSPOT_TOKEN }}" }
          body: |
            { "properties": { "email": "{{ contact.email }}", "firstname": "{{ contact.first_name }}",
                              "lead_source": "Komo - {{ card.name }}", "komo_score": "{{ gameplay.score }}", } }
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
      - id: subscribe
        mailchimp: { connection: mc-main, upsert: { list: a1b2c3, email: "{{ contact.email }}", status_if_new: subscribed,
                     merge_fields: { FNAME: contact.first_name } } }
      - id: tag
        needs: subscribe
        mailchimp: { connection: mc-main, tag: { list: a1b2c3, email: "{{ contact.email }}", tags: [promo-entrant] } }
      - id: braze
        braze: { connection: braze-main, track: { external_id: "{{ contact.id }}",
                 attributes: { komo_last_card: card.name }, events: [ { name: form_submitted } ] } }
"#;

    #[test]
    fn the_spec_example_compiles_with_every_connector() {
        let def: crate::workflow::def::FileDef =
            serde_yaml_ng::from_str(SPEC_EXAMPLE).expect("the SPEC example is YAML");
        let mut problems = Vec::new();
        let catalog = crate::workflow::Catalog::compile(
            vec![("spec.yaml".into(), def)],
            Default::default(),
            &Engine::new(),
            &mut problems,
        );
        let errors: Vec<String> = problems
            .iter()
            .filter(|p| p.severity != Severity::Warning)
            .map(ToString::to_string)
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        let workflow = catalog.workflow("lead-sync").expect("compiled");
        let kinds: Vec<(&str, &str)> = workflow
            .actions
            .iter()
            .map(|a| (a.id.as_str(), a.spec.connector()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("hubspot", "http"),
                ("find_lead", "salesforce"),
                ("update_lead", "salesforce"),
                ("create_lead", "salesforce"),
                ("subscribe", "mailchimp"),
                ("tag", "mailchimp"),
                ("braze", "braze"),
            ]
        );
        assert_eq!(catalog.connections.len(), 3);
    }

    #[test]
    fn connection_keys_follow_the_settings() {
        let connection = |settings: Value| Connection {
            id: "mc".into(),
            workspace: "ws".into(),
            kind: "mailchimp".into(),
            settings,
        };
        let a = ConnectionKey::of(&connection(
            serde_json::json!({ "api_key": "{{ secrets.A }}" }),
        ));
        let same = ConnectionKey::of(&connection(
            serde_json::json!({ "api_key": "{{ secrets.A }}" }),
        ));
        let other = ConnectionKey::of(&connection(
            serde_json::json!({ "api_key": "{{ secrets.B }}" }),
        ));
        assert_eq!(a, same);
        assert_ne!(a, other);
    }

    #[test]
    fn rates_parse() {
        let ok = |text: &str, count: u32, secs: f64| {
            let rate = Rate::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(rate.count.get(), count, "{text}");
            assert_eq!(rate.per.as_secs_f64(), secs, "{text}");
        };
        ok("100/s", 100, 1.0);
        ok("6000/min", 6000, 60.0);
        ok("250000/h", 250_000, 3600.0);
        ok("3000/3s", 3000, 3.0);
        ok(" 10 / 500ms ", 10, 0.5);
        for bad in ["", "100", "0/s", "x/s", "10/fortnight", "-1/s", "10/0s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_override_defaults() {
        let defaults = Limits {
            concurrency: Some(25),
            rate: None,
        };
        assert_eq!(Limits::compile(None, defaults), Ok(defaults));
        let def = LimitsDef {
            concurrency: Some(4),
            rate: Some("10/s".into()),
        };
        let limits = Limits::compile(Some(&def), defaults).unwrap();
        assert_eq!(limits.concurrency, Some(4));
        assert_eq!(limits.rate.map(|r| r.count.get()), Some(10));
        let off = LimitsDef {
            concurrency: None,
            rate: Some("none".into()),
        };
        let braze = Limits {
            concurrency: None,
            rate: Some(Rate::parse("3000/3s").unwrap()),
        };
        assert_eq!(
            Limits::compile(Some(&off), braze),
            Ok(Limits {
                concurrency: None,
                rate: None
            })
        );
        let zero = LimitsDef {
            concurrency: Some(0),
            rate: None,
        };
        assert!(Limits::compile(Some(&zero), defaults).is_err());
    }
}
