//! The HTTP Request action: any method, URL, headers, query, body and auth, all templated.

use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use url::Url;

use super::{Call, Request};
use crate::outcome::{ErrorClass, Outcome};
use crate::template::{BodyTemplate, Context, Engine, TextTemplate};
use crate::workflow::def::{AuthDef, HttpActionDef};
use crate::workflow::{ActionScope, Problem};

/// `Idempotency-Key`: the stable action id, the same on every retry and replay.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A compiled HTTP Request action.
#[derive(Debug)]
pub struct HttpAction {
    /// The method.
    method: Method,
    /// The URL (may read secrets).
    url: TextTemplate,
    /// Headers (may read secrets).
    headers: Vec<(HeaderName, TextTemplate)>,
    /// Query parameters appended to the URL.
    query: Vec<(String, TextTemplate)>,
    /// Credentials.
    auth: Option<Auth>,
    /// The body.
    body: Option<BodyTemplate>,
    /// Overrides `http.timeout`.
    timeout: Option<Duration>,
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
        let url = scope.text(engine, "http.url", &def.url, true, problems);
        if let Some(url) = &url
            && url.literal().is_some()
        {
            match Url::parse(url.source()) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                    scope.warn_if_blocked(&parsed, problems);
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
                    format!("http.url {:?} is not a URL: {e}", url.source()),
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
            headers,
            query,
            auth,
            body,
            timeout: def.timeout,
        })
    }

    /// Renders the request; a failure here is permanent (template, config or a bad header).
    pub fn render(&self, call: &Call<'_>) -> Result<Request, Outcome> {
        let ctx = &call.ctx;
        let url_text = render(&self.url, ctx, "url")?;
        let mut url = Url::parse(url_text.trim()).map_err(|e| {
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
            connector: "http",
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
