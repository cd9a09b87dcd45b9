//! The HTTP Request action: any method, URL, headers, query, body and auth, all templated.

use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use url::Url;

use super::{Call, ConnectorKind, Request};
use crate::intern::Interned;
use crate::outcome::{ErrorClass, Outcome};
use crate::template::{BodyTemplate, Context, Engine, TextTemplate};
use crate::workflow::def::{AuthDef, HttpActionDef};
use crate::workflow::problem::Problem;
use crate::workflow::scope::ActionScope;

/// `Idempotency-Key`: the stable action id, the same on every retry and replay.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A compiled HTTP Request action.
#[derive(Debug)]
pub struct HttpAction {
    /// The method.
    method: Method,
    /// The URL.
    url: UrlSpec,
    /// Headers (may read secrets).
    headers: Box<[(HeaderName, TextTemplate)]>,
    /// Query parameters appended to the URL.
    query: Box<[(String, TextTemplate)]>,
    /// Credentials.
    auth: Option<Auth>,
    /// The body.
    body: Option<BodyTemplate>,
    /// Overrides `http.timeout`.
    timeout: Option<Duration>,
}

/// An action's URL: parsed once when it is literal (three parses a call were 6 % of the service's
/// instructions, two of them inside reqwest), rendered and parsed per call when it is a template.
#[derive(Debug)]
enum UrlSpec {
    /// A literal http(s) URL, shared by every action with the same one.
    Literal(Arc<Url>),
    /// A template (may read secrets).
    Template(TextTemplate),
}

/// One parsed URL per distinct literal, shared as compiled templates are: a `Url` per action cost
/// 10,000 workflows 3 MiB.
fn shared_url(url: Url) -> Arc<Url> {
    static SHARED: LazyLock<Mutex<Interned<Url>>> = LazyLock::new(Mutex::default);
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    match shared.get(url.as_str()) {
        Some(known) => known,
        None => shared.insert(url.as_str().to_owned(), url),
    }
}

/// Compiled credentials.
#[derive(Debug)]
enum Auth {
    /// `Authorization: Bearer …`.
    Bearer(TextTemplate),
    /// HTTP Basic.
    Basic(TextTemplate, TextTemplate),
    /// A header of the user's choice.
    Header(HeaderName, TextTemplate),
}

impl HttpAction {
    /// Compiles the `http:` section of an action.
    pub fn compile(
        def: &HttpActionDef,
        engine: &Engine,
        scope: &ActionScope<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<HttpAction> {
        let before = problems.len();
        let method = match def
            .method
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("POST") => Method::POST,
            Some("GET") => Method::GET,
            Some("PUT") => Method::PUT,
            Some("PATCH") => Method::PATCH,
            Some("DELETE") => Method::DELETE,
            Some("HEAD") => Method::HEAD,
            Some(other) => {
                scope.error(
                    problems,
                    format!(
                        "http.method {other:?} is not one of GET, POST, PUT, PATCH, DELETE, HEAD"
                    ),
                );
                Method::POST
            }
        };
        let mut url = scope
            .text(engine, "http.url", &def.url, true, problems)
            .map(UrlSpec::Template);
        if let Some(UrlSpec::Template(template)) = &url
            && template.literal().is_some()
        {
            match Url::parse(template.source().trim()) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                    scope.warn_if_blocked(&parsed, problems);
                    url = Some(UrlSpec::Literal(shared_url(parsed)));
                }
                Ok(parsed) => scope.error(
                    problems,
                    format!(
                        "http.url: scheme {} is not allowed; use http or https",
                        parsed.scheme()
                    ),
                ),
                Err(e) => scope.error(
                    problems,
                    format!("http.url {:?} is not a URL: {e}", template.source()),
                ),
            }
        }
        let mut headers = Vec::new();
        for (name, value) in &def.headers {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(header) => {
                    if let Some(t) = scope.text(
                        engine,
                        &format!("http.headers.{name}"),
                        value,
                        true,
                        problems,
                    ) {
                        headers.push((header, t));
                    }
                }
                Err(_) => scope.error(
                    problems,
                    format!("http.headers: {name:?} is not a valid header name"),
                ),
            }
        }
        let mut query = Vec::new();
        for (name, value) in &def.query {
            if let Some(t) = scope.text(
                engine,
                &format!("http.query.{name}"),
                value,
                false,
                problems,
            ) {
                query.push((name.clone(), t));
            }
        }
        let auth = match &def.auth {
            None => None,
            Some(AuthDef {
                bearer: Some(token),
                basic: None,
                header: None,
            }) => scope
                .text(engine, "http.auth.bearer", token, true, problems)
                .map(Auth::Bearer),
            Some(AuthDef {
                bearer: None,
                basic: Some(basic),
                header: None,
            }) => {
                let user = scope.text(engine, "http.auth.basic.user", &basic.user, true, problems);
                let password = scope.text(
                    engine,
                    "http.auth.basic.password",
                    &basic.password,
                    true,
                    problems,
                );
                user.zip(password).map(|(u, p)| Auth::Basic(u, p))
            }
            Some(AuthDef {
                bearer: None,
                basic: None,
                header: Some(header),
            }) => match HeaderName::from_bytes(header.name.as_bytes()) {
                Ok(name) => scope
                    .text(engine, "http.auth.header", &header.value, true, problems)
                    .map(|v| Auth::Header(name, v)),
                Err(_) => {
                    scope.error(
                        problems,
                        format!(
                            "http.auth.header: {:?} is not a valid header name",
                            header.name
                        ),
                    );
                    None
                }
            },
            Some(_) => {
                scope.error(
                    problems,
                    "http.auth takes exactly one of bearer, basic or header",
                );
                None
            }
        };
        let body = match &def.body {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => {
                let source = match value {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                match engine.body(&source) {
                    Ok(body) => {
                        scope.check_variables("http.body", &body.variables(), false, problems);
                        Some(body)
                    }
                    Err(e) => {
                        scope.error(problems, format!("http.body: {e}"));
                        None
                    }
                }
            }
        };
        if problems[before..]
            .iter()
            .any(|p| p.severity == crate::workflow::Severity::Error)
        {
            return None;
        }
        Some(HttpAction {
            method,
            url: url?,
            // Exact size: a catalog holds one of these per action, for as long as it is loaded.
            headers: headers.into_boxed_slice(),
            query: query.into_boxed_slice(),
            auth,
            body,
            timeout: def.timeout,
        })
    }

    /// Renders the request; a failure here is permanent (template, config or a bad header).
    pub fn render(&self, call: &Call<'_>) -> Result<Request, Outcome> {
        let ctx = &call.ctx;
        let mut url = match &self.url {
            UrlSpec::Literal(url) => Url::clone(url),
            UrlSpec::Template(template) => {
                let url_text = render(template, ctx, "url")?;
                let url = Url::parse(url_text.trim()).map_err(|e| {
                    Outcome::fail(
                        ErrorClass::Template,
                        format!("http.url does not render to a URL: {e}"),
                    )
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(Outcome::fail(
                        ErrorClass::Blocked,
                        format!("http.url scheme {} is not allowed", url.scheme()),
                    ));
                }
                url
            }
        };
        if !self.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in &self.query {
                pairs.append_pair(name, &render(value, ctx, "query")?);
            }
        }
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 3);
        let mut body = None;
        if let Some(template) = &self.body {
            let rendered = template
                .render(ctx)
                .map_err(|e| template_failure("body", &e))?;
            if template.is_json() {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            body = Some(rendered.into_bytes());
        }
        for (name, template) in &self.headers {
            headers.insert(
                name.clone(),
                header_value(name.as_str(), &render(template, ctx, "headers")?)?,
            );
        }
        match &self.auth {
            None => {}
            Some(Auth::Bearer(token)) => {
                let value = format!("Bearer {}", render(token, ctx, "auth")?);
                headers.insert(
                    AUTHORIZATION,
                    sensitive(header_value("Authorization", &value)?),
                );
            }
            Some(Auth::Basic(user, password)) => {
                let pair = format!(
                    "{}:{}",
                    render(user, ctx, "auth")?,
                    render(password, ctx, "auth")?
                );
                let value = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                );
                headers.insert(
                    AUTHORIZATION,
                    sensitive(header_value("Authorization", &value)?),
                );
            }
            Some(Auth::Header(name, value)) => {
                let value = header_value(name.as_str(), &render(value, ctx, "auth")?)?;
                headers.insert(name.clone(), sensitive(value));
            }
        }
        headers.insert(
            IDEMPOTENCY_KEY,
            header_value("Idempotency-Key", call.action_id)?,
        );
        Ok(Request {
            method: self.method.clone(),
            url,
            headers,
            body,
            timeout: self.timeout,
            connector: ConnectorKind::Http.name(),
            destination: None,
        })
    }
}

fn render(template: &TextTemplate, ctx: &Context<'_>, what: &str) -> Result<String, Outcome> {
    template.render(ctx).map_err(|e| template_failure(what, &e))
}

/// A template error as an outcome: a missing secret is a configuration problem.
pub fn template_failure(what: &str, error: &crate::template::TemplateError) -> Outcome {
    let class = match error {
        crate::template::TemplateError::MissingSecret(_) => ErrorClass::Config,
        _ => ErrorClass::Template,
    };
    Outcome::fail(class, format!("{what}: {error}"))
}

/// A header value, refusing CR, LF and other control characters (header injection).
pub fn header_value(name: &str, value: &str) -> Result<HeaderValue, Outcome> {
    HeaderValue::from_str(value).map_err(|_| {
        Outcome::fail(
            ErrorClass::Template,
            format!(
                "header {name} rendered to a value with a line break or control character; refused"
            ),
        )
    })
}

fn sensitive(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::{Value, json};

    use super::*;
    use crate::connectors::ActionSpec;
    use crate::template::SecretsView;
    use crate::workflow::compile_yaml;

    /// One workflow whose action `a` has this `http:` section.
    fn compile(section: &str) -> (Option<HttpAction>, Vec<String>) {
        let yaml = format!(
            "workflows:\n  - id: wf\n    workspace: ws_demo\n    trigger: {{ event: Gameplay.DataCaptured }}\n    actions:\n      - id: a\n        http: {section}\n"
        );
        let (catalog, problems) = compile_yaml(&yaml);
        let errors = problems
            .iter()
            .filter(|p| p.severity != crate::workflow::Severity::Warning)
            .map(ToString::to_string)
            .collect();
        let mut workflows = catalog.workflows.into_iter();
        let action = workflows
            .next()
            .and_then(std::sync::Arc::into_inner)
            .and_then(|wf| wf.actions.into_iter().next())
            .and_then(|action| match action.spec {
                ActionSpec::Http(http) => Some(http),
                _ => None,
            });
        (action, errors)
    }

    fn event() -> Value {
        json!({
            "id": "evt_1", "type": "Gameplay.DataCaptured", "occurred_at": "2026-11-26T18:00:00Z",
            "workspace": { "id": "ws_demo" },
            "contact": { "email": "ana@example.com", "first_name": "Ana" },
            "gameplay": { "score": 120 }
        })
    }

    fn render_with(
        action: &HttpAction,
        event: &Value,
        secrets: &HashMap<String, String>,
    ) -> Result<Request, Outcome> {
        let call = Call {
            action_id: "act_1",
            ctx: Context {
                event: event.into(),
                steps: &Value::Null,
                secrets: SecretsView::Real(secrets),
            },
        };
        action.render(&call)
    }

    fn secrets() -> HashMap<String, String> {
        HashMap::from([("CRM_TOKEN".to_owned(), "tok_123".to_owned())])
    }

    fn failure(result: Result<Request, Outcome>) -> (ErrorClass, String) {
        match result {
            Err(Outcome::Fail(f)) => (f.class, f.reason),
            other => panic!("expected a permanent failure, got {other:?}"),
        }
    }

    #[test]
    fn a_request_renders_method_url_query_headers_auth_and_body() {
        let (action, errors) = compile(
            r#"
          method: put
          url: "https://crm.example.com/contacts/{{ contact.email | url_encode }}"
          query: { source: "{{ event.type }}" }
          headers: { X-Score: "{{ gameplay.score }}" }
          auth: { bearer: "{{ secrets.CRM_TOKEN }}" }
          body: { email: "{{ contact.email }}", score: "{{ gameplay.score }}" }
          timeout: 3s"#,
        );
        let Some(action) = action else {
            panic!("compiles: {errors:#?}");
        };
        let request = match render_with(&action, &event(), &secrets()) {
            Ok(request) => request,
            Err(outcome) => panic!("renders: {outcome:?}"),
        };
        assert_eq!(request.method, Method::PUT);
        assert_eq!(
            request.url.as_str(),
            "https://crm.example.com/contacts/ana%40example.com?source=Gameplay.DataCaptured"
        );
        let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("x-score"), Some("120"));
        assert_eq!(header("authorization"), Some("Bearer tok_123"));
        assert!(request.headers["authorization"].is_sensitive());
        assert_eq!(header("content-type"), Some("application/json"));
        assert_eq!(header("idempotency-key"), Some("act_1"));
        let body: Value = request
            .body
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        assert_eq!(body, json!({"email": "ana@example.com", "score": "120"}));
        assert_eq!(request.timeout, Some(Duration::from_secs(3)));
        assert_eq!(request.connector, "http");
    }

    #[test]
    fn a_literal_url_is_parsed_once_and_each_call_gets_its_own_query() {
        let (action, errors) = compile(
            r#"{ url: " https://crm.example.com/leads?x=1 ", query: { email: "{{ contact.email }}" } }"#,
        );
        let Some(action) = action else {
            panic!("compiles: {errors:#?}");
        };
        assert!(
            matches!(action.url, UrlSpec::Literal(_)),
            "{:?}",
            action.url
        );
        for _ in 0..2 {
            let request = match render_with(&action, &event(), &secrets()) {
                Ok(request) => request,
                Err(outcome) => panic!("renders: {outcome:?}"),
            };
            assert_eq!(
                request.url.as_str(),
                "https://crm.example.com/leads?x=1&email=ana%40example.com"
            );
        }
        let (twin, _) = compile(r#"{ url: "https://crm.example.com/leads?x=1" }"#);
        match (&action.url, twin.map(|t| t.url)) {
            (UrlSpec::Literal(one), Some(UrlSpec::Literal(other))) => {
                assert!(Arc::ptr_eq(one, &other), "one parsed URL for both actions")
            }
            other => panic!("two literals: {other:?}"),
        }
        let (action, _) = compile(r#"{ url: "https://crm.example.com/{{ event.type }}" }"#);
        assert!(
            matches!(action.map(|a| a.url), Some(UrlSpec::Template(_))),
            "a template is rendered per call"
        );
    }

    #[test]
    fn basic_and_header_auth() {
        let (action, errors) = compile(
            r#"{ url: "https://x.example.com", auth: { basic: { user: u, password: "{{ secrets.CRM_TOKEN }}" } } }"#,
        );
        let Some(action) = action else {
            panic!("compiles: {errors:#?}");
        };
        let request = render_with(&action, &event(), &secrets()).ok();
        let auth = request
            .as_ref()
            .and_then(|r| r.headers.get("authorization"))
            .and_then(|v| v.to_str().ok());
        // base64("u:tok_123")
        assert_eq!(auth, Some("Basic dTp0b2tfMTIz"));
        assert_eq!(
            request.map(|r| r.method),
            Some(Method::POST),
            "POST by default"
        );

        let (action, errors) = compile(
            r#"{ url: "https://x.example.com", auth: { header: { name: X-Api-Key, value: "{{ secrets.CRM_TOKEN }}" } } }"#,
        );
        let Some(action) = action else {
            panic!("compiles: {errors:#?}");
        };
        let request = render_with(&action, &event(), &secrets()).ok();
        let key = request.as_ref().and_then(|r| r.headers.get("x-api-key"));
        assert_eq!(key.and_then(|v| v.to_str().ok()), Some("tok_123"));
        assert!(key.is_some_and(HeaderValue::is_sensitive));
    }

    #[test]
    fn compile_problems_name_the_setting() {
        let cases = [
            (
                r#"{ method: FETCH, url: "https://x.example.com" }"#,
                "http.method \"FETCH\"",
            ),
            (
                r#"{ url: "ftp://x.example.com" }"#,
                "http.url: scheme ftp is not allowed",
            ),
            (r#"{ url: "not a url" }"#, "is not a URL"),
            (
                r#"{ url: "https://x.example.com", headers: { "bad header": x } }"#,
                "is not a valid header name",
            ),
            (
                r#"{ url: "https://x.example.com", auth: { bearer: a, basic: { user: u, password: p } } }"#,
                "http.auth takes exactly one of bearer, basic or header",
            ),
            (
                r#"{ url: "https://x.example.com", query: { k: "{{ secrets.CRM_TOKEN }}" } }"#,
                "http.query.k",
            ),
        ];
        for (section, want) in cases {
            let (action, errors) = compile(section);
            assert!(action.is_none(), "{section} must not compile");
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{want:?} not in {errors:#?}"
            );
        }
    }

    #[test]
    fn render_failures_are_permanent_with_their_class() {
        let cases = [
            (
                r#"{ url: "{{ contact.first_name }}" }"#,
                ErrorClass::Template,
                "http.url does not render to a URL",
            ),
            (
                r#"{ url: "file:///{{ contact.first_name }}" }"#,
                ErrorClass::Blocked,
                "http.url scheme file is not allowed",
            ),
            (
                r#"{ url: "https://x.example.com", headers: { X-Name: "{{ contact.first_name }}\r\nX-Evil: 1" } }"#,
                ErrorClass::Template,
                "header x-name rendered to a value with a line break",
            ),
            (
                r#"{ url: "https://x.example.com", auth: { bearer: "{{ secrets.MISSING }}" } }"#,
                ErrorClass::Config,
                "secret MISSING is not configured",
            ),
        ];
        for (section, class, want) in cases {
            let (action, errors) = compile(section);
            let Some(action) = action else {
                panic!("{section} compiles: {errors:#?}");
            };
            let (got_class, reason) = failure(render_with(&action, &event(), &secrets()));
            assert_eq!(got_class, class, "{section}: {reason}");
            assert!(reason.contains(want), "{want:?} not in {reason:?}");
        }
    }
}
