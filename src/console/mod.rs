//! The operator console (SPEC §11): runs, dead letters, destinations and workflows in a browser, served from
//! the binary by `switchyard run` (when `console.listen` is set) or alone by `switchyard console`.
//! A room beside the pipeline: it reads [`Shared`] and the history and dead-letter code the
//! commands use, and nothing of the pipeline imports it.
//!
//! - [`User`]: who is asking, and the check of a POST (its CSRF token, the operator role).
//! - [`auth`]: tokens, sign-in, sessions; the extractor that turns a session cookie into a [`User`].
//! - [`input`]: reading forms and query strings (fields, filter values).
//! - [`layout`]: the page frame, the navigation, the style sheet, small formatting helpers.
//! - one module per page: [`overview`] (`/`), [`runs`] (`/runs`, `/runs/<action id>`),
//!   [`dead_letters`] (`/dead-letters…`), [`destinations`] (`/destinations`, pause and resume),
//!   [`workflows`] (`/workflows`).
//!
//! A new page is one module with its handlers and one `.merge(…)` in [`router`] (plus its entry
//! in [`layout::NAV`]). Pages are server-rendered with maud (templates checked by the compiler,
//! values escaped); there is no JavaScript. Every change is a POST carrying the session's CSRF
//! token, allowed to operators only, and logged with the user's name and role.

pub mod auth;
pub mod dead_letters;
pub mod destinations;
pub mod input;
pub mod layout;
pub mod overview;
pub mod runs;
pub mod workflows;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use lapin::Connection;
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::input::field;
use crate::config::ConsoleRole;

use crate::broker::{self, BrokerError};
use crate::history::HistoryError;
use crate::shared::Shared;

/// How long the console waits for the broker or PostgreSQL before saying it could not reach them.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request body (a pasted event is capped lower, by `router.max_event_bytes`, with
/// a message; this only stops a client sending without end).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// The strict Content-Security-Policy of every response: the console's own style sheet, its own
/// forms, nothing else (no script, no frames, no foreign images).
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The listen address could not be bound.
    #[error("console.listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A token names a secret that does not exist.
    #[error("console.tokens ({name}): {message}")]
    Token {
        /// The token's name.
        name: String,
        /// What is wrong (never the value).
        message: String,
    },
}

/// What every handler receives: the service's shared state and the console's own.
pub struct Console {
    /// Configuration, catalog, metrics, topology.
    pub app: Arc<Shared>,
    /// Tokens and sessions.
    pub auth: auth::Auth,
    /// Whether this process runs the pipeline (`run`), so that its metrics mean something.
    pub pipeline: bool,
    /// The console's broker connection, opened when first needed and again after it drops.
    broker: Mutex<Option<Arc<Connection>>>,
    /// One dead-letter pass at a time: two passes at once would each see only the records the
    /// other does not hold.
    pub(crate) dlq: tokio::sync::Mutex<()>,
    /// The console's PostgreSQL connection (run history), opened when first needed.
    history: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
    /// Delivery counters sampled over the last minute, for the overview's rates.
    pub(crate) rates: overview::Rates,
    /// The destinations as last read from the streams (every 2 s, by [`destinations::follow`]):
    /// reading them takes a stream's quiet time, which no page view should wait for.
    pub(crate) destinations: destinations::Latest,
}

impl Console {
    /// The console's state over `app`; `pipeline` says whether this process delivers.
    pub fn new(app: Arc<Shared>, pipeline: bool) -> Result<Console, ConsoleError> {
        let auth = auth::Auth::new(&app)?;
        Ok(Console {
            auth,
            pipeline,
            broker: Mutex::new(None),
            dlq: tokio::sync::Mutex::new(()),
            history: tokio::sync::Mutex::new(None),
            rates: overview::Rates::default(),
            destinations: destinations::Latest::default(),
            app,
        })
    }

    /// A connected broker connection (the cached one, or a new one).
    pub(crate) async fn broker(&self) -> Result<Arc<Connection>, PageError> {
        let cached = self.broker.lock().ok().and_then(|held| held.clone());
        if let Some(connection) = cached
            && connection.status().connected()
        {
            return Ok(connection);
        }
        let connected = tokio::time::timeout(
            BACKEND_TIMEOUT,
            broker::connect_any(&self.app.config.amqp, "switchyard console"),
        )
        .await
        .map_err(|_| PageError::unavailable("the broker did not answer in time"))?
        .map_err(|e: BrokerError| PageError::unavailable(format!("the broker: {e}")))?;
        let connection = Arc::new(connected.connection);
        if let Ok(mut held) = self.broker.lock() {
            *held = Some(connection.clone());
        }
        Ok(connection)
    }

    /// A PostgreSQL client for run history, or a page that says history is off.
    pub(crate) async fn history(&self) -> Result<Arc<tokio_postgres::Client>, PageError> {
        let config = &self.app.config.history;
        if !config.enabled() {
            // Not a failure: the page says how to turn it on.
            return Err(PageError::new(
                StatusCode::OK,
                "Run history is off",
                HistoryError::Off.to_string(),
            ));
        }
        let mut held = self.history.lock().await;
        if let Some(client) = held.as_ref()
            && !client.is_closed()
        {
            return Ok(client.clone());
        }
        let secrets = &self.app.catalog.load().secrets;
        let url = crate::history::resolve_url(&config.url, secrets)
            .map_err(|e| PageError::unavailable(e.to_string()))?;
        let client = tokio::time::timeout(BACKEND_TIMEOUT, crate::history::connect(&url))
            .await
            .map_err(|_| PageError::unavailable("PostgreSQL (history.url) did not answer in time"))?
            .map_err(|e| PageError::unavailable(e.to_string()))?;
        let client = Arc::new(client);
        *held = Some(client.clone());
        Ok(client)
    }

    /// `text` with every loaded secret replaced by `[redacted]`: for anything shown that came
    /// from outside (payloads, response excerpts, dead-letter bodies, previews).
    pub(crate) fn redact(&self, text: &str) -> String {
        crate::outcome::redact(text, self.app.catalog.load().secrets.values())
    }
}

/// The signed-in user of a request. A handler that takes one is reached only with a session;
/// without one the browser is sent to `/login`.
#[derive(Debug, Clone)]
pub struct User {
    /// The token's name (logged with every change).
    pub name: String,
    /// What they may do.
    pub role: ConsoleRole,
    /// Their session's CSRF token, for the forms of the page.
    pub csrf: String,
    /// Their session id (sign-out ends it; `auth` makes and reads it).
    session: String,
}

impl User {
    /// Whether they may change things.
    pub fn is_operator(&self) -> bool {
        self.role == ConsoleRole::Operator
    }

    /// Checks a POST: its CSRF token first (403, nothing changed), then, for a change, the role
    /// (403 for a viewer).
    pub fn check_post(&self, form: &[(String, String)], change: bool) -> Result<(), PageError> {
        let sent = field(form, "csrf").unwrap_or_default();
        if !bool::from(sent.as_bytes().ct_eq(self.csrf.as_bytes())) {
            warn!(user = %self.name, role = self.role.as_str(), "console: a POST without its CSRF token was refused");
            return Err(PageError::forbidden(
                "This form is missing its security token (or it is from an old page). Nothing was changed; open the page again and resubmit.",
            ));
        }
        if change && !self.is_operator() {
            warn!(user = %self.name, role = self.role.as_str(), "console: a viewer's change was refused");
            return Err(PageError::forbidden(format!(
                "{} signs in as a viewer, which reads only. Nothing was changed; ask an operator.",
                self.name
            )));
        }
        Ok(())
    }
}

/// A page that could not be shown: its status and a message for the person who asked.
#[derive(Debug)]
pub struct PageError {
    /// 400 bad input, 403 refused, 404 unknown, 503 a backend is away.
    pub status: StatusCode,
    /// The heading.
    pub title: String,
    /// What happened and what to do.
    pub message: String,
    /// The whole page to answer with (the form the input came from, with the message on it);
    /// without it, a page with the message alone.
    pub page: Option<maud::Markup>,
}

impl PageError {
    /// Any status.
    pub fn new(status: StatusCode, title: impl Into<String>, message: impl Into<String>) -> Self {
        PageError {
            status,
            title: title.into(),
            message: message.into(),
            page: None,
        }
    }

    /// The same error, answered with `page` instead of the bare message.
    pub fn on_page(mut self, page: maud::Markup) -> Self {
        self.page = Some(page);
        self
    }

    /// 400: the request itself is wrong.
    pub fn bad_input(message: impl Into<String>) -> Self {
        PageError::new(StatusCode::BAD_REQUEST, "That did not work", message)
    }

    /// 404: nothing has that id.
    pub fn not_found(message: impl Into<String>) -> Self {
        PageError::new(StatusCode::NOT_FOUND, "Not found", message)
    }

    /// 403: not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        PageError::new(StatusCode::FORBIDDEN, "Refused", message)
    }

    /// 503: the broker or PostgreSQL could not be used.
    pub fn unavailable(message: impl Into<String>) -> Self {
        PageError::new(StatusCode::SERVICE_UNAVAILABLE, "Not reachable", message)
    }
}

impl From<crate::commands::dlq::DlqError> for PageError {
    fn from(e: crate::commands::dlq::DlqError) -> PageError {
        use crate::commands::dlq::DlqError;
        match e {
            DlqError::Usage(message) => PageError::bad_input(message),
            other => PageError::unavailable(format!(
                "{other}; nothing was lost: records not yet removed stay in the dead-letter queue"
            )),
        }
    }
}

impl From<HistoryError> for PageError {
    fn from(e: HistoryError) -> PageError {
        PageError::unavailable(e.to_string())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = self
            .page
            .unwrap_or_else(|| layout::message_page(&self.title, &self.message));
        (self.status, body).into_response()
    }
}

/// The console's routes over `console`.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .merge(auth::routes())
        .merge(overview::routes())
        .merge(runs::routes())
        .merge(dead_letters::routes())
        .merge(destinations::routes())
        .merge(workflows::routes())
        .merge(layout::routes())
        .fallback(|| async { PageError::not_found("There is no such page.") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// The headers every response carries: the CSP, no sniffing, no referrer, no caching.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Binds `addr`, checks the tokens, and serves the console until `shutdown`; returns the
/// address it listens on (port 0 picks one).
pub async fn start(
    app: Arc<Shared>,
    addr: SocketAddr,
    pipeline: bool,
    shutdown: CancellationToken,
) -> Result<SocketAddr, ConsoleError> {
    let console = Arc::new(Console::new(app, pipeline)?);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ConsoleError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ConsoleError::Listen { addr, source })?;
    let faults = console.app.faults.clone();
    if pipeline {
        tokio::spawn(faults.guard(
            "console rates",
            overview::sample(console.clone(), shutdown.clone()),
        ));
    }
    tokio::spawn(faults.guard(
        "console destinations",
        destinations::follow(console.clone(), shutdown.clone()),
    ));
    tokio::spawn(faults.guard("console", serve(listener, console, shutdown)));
    info!(console = %local, "console listening");
    Ok(local)
}

async fn serve(listener: TcpListener, console: Arc<Console>, shutdown: CancellationToken) {
    let result = axum::serve(listener, router(console))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        warn!(error = %e, "console stopped");
    }
}
