//! Who may use the console (SPEC §11): sign-in with a token of `console.tokens`, sessions held in
//! memory, the CSRF token of every change, and the operator and viewer roles.
//!
//! Tokens are compared as SHA-256 digests in constant time (`subtle`), every configured token
//! every time, so neither the timing nor the order of the list tells which one nearly matched; a
//! failed sign-in answers after [`FAILED_SIGN_IN_DELAY`] (an async sleep: other requests go on).
//! Tokens are resolved from the secrets at each sign-in, so a rotated secret file takes effect
//! on the next SIGHUP reload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use maud::{Markup, html};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::input::field;
use super::{Console, ConsoleError, PageError, User, layout};
use crate::config::{ConsoleRole, ConsoleToken};
use crate::shared::Shared;

/// The session cookie.
pub const COOKIE: &str = "switchyard_console";
/// How long a failed sign-in takes to answer.
pub const FAILED_SIGN_IN_DELAY: Duration = Duration::from_secs(1);
/// A session ends this long after sign-in, whatever happens.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A session ends after this long without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(2 * 3600);
/// Sessions held at most; beyond, the oldest is dropped (its user signs in again).
const MAX_SESSIONS: usize = 10_000;

/// The configured tokens and the open sessions.
pub struct Auth {
    /// Who may sign in (the token settings name secrets).
    tokens: Vec<ConsoleToken>,
    /// Open sessions by id.
    sessions: Mutex<HashMap<String, Session>>,
}

/// One signed-in browser.
#[derive(Debug, Clone)]
struct Session {
    /// The token's name.
    name: String,
    /// What it may do.
    role: ConsoleRole,
    /// The token every form of this session carries.
    csrf: String,
    /// When it signed in.
    created: Instant,
    /// Its latest request.
    seen: Instant,
}

impl Auth {
    /// Checks that every token's secret exists now, so a typo fails at start, not at sign-in.
    pub fn new(app: &Shared) -> Result<Auth, ConsoleError> {
        let secrets = &app.catalog.load().secrets;
        for token in &app.config.console.tokens {
            crate::secrets::resolve(&token.token, secrets).map_err(|message| {
                ConsoleError::Token {
                    name: token.name.clone(),
                    message,
                }
            })?;
        }
        Ok(Auth {
            tokens: app.config.console.tokens.clone(),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The token `given` belongs to, if any (see the module documentation).
    fn identify(&self, app: &Shared, given: &str) -> Option<&ConsoleToken> {
        let secrets = &app.catalog.load().secrets;
        let given = Sha256::digest(given.trim().as_bytes());
        let mut found = None;
        for token in &self.tokens {
            let Ok(value) = crate::secrets::resolve(&token.token, secrets) else {
                continue;
            };
            // An empty secret never signs anyone in.
            let digest = Sha256::digest(value.as_bytes());
            let equal = digest.ct_eq(&given) & subtle::Choice::from(u8::from(!value.is_empty()));
            if bool::from(equal) && found.is_none() {
                found = Some(token);
            }
        }
        found
    }

    /// Opens a session; returns its id.
    fn open(&self, token: &ConsoleToken) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let session = Session {
            name: token.name.clone(),
            role: token.role,
            csrf: hex::encode(rand::random::<[u8; 32]>()),
            created: now,
            seen: now,
        };
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.retain(|_, s| alive(s, now));
            if sessions.len() >= MAX_SESSIONS
                && let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.created)
                    .map(|(id, _)| id.clone())
            {
                sessions.remove(&oldest);
            }
            sessions.insert(id.clone(), session);
        }
        id
    }

    /// The user of a live session, which counts as a request in it.
    fn user(&self, id: &str) -> Option<User> {
        let mut sessions = self.sessions.lock().ok()?;
        let now = Instant::now();
        let session = sessions.get_mut(id)?;
        if !alive(session, now) {
            sessions.remove(id);
            return None;
        }
        session.seen = now;
        Some(User {
            name: session.name.clone(),
            role: session.role,
            csrf: session.csrf.clone(),
            session: id.to_owned(),
        })
    }

    fn close(&self, id: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(id);
        }
    }
}

fn alive(session: &Session, now: Instant) -> bool {
    now.duration_since(session.created) < SESSION_LIFETIME
        && now.duration_since(session.seen) < SESSION_IDLE
}

/// The session id the request's cookie carries.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

impl FromRequestParts<Arc<Console>> for User {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<User, Response> {
        session_cookie(&parts.headers)
            .and_then(|id| console.auth.user(id))
            .ok_or_else(|| Redirect::to("/login").into_response())
    }
}

/// Whether the browser reached us over TLS (here, or at a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

fn cookie(value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/login", get(login_page).post(sign_in))
        .route("/logout", axum::routing::post(sign_out))
}

async fn login_page() -> Markup {
    login_form(None)
}

fn login_form(problem: Option<&str>) -> Markup {
    layout::bare(
        "Sign in",
        html! {
            h1 { "switchyard console" }
            @if let Some(problem) = problem {
                p.error role="alert" { (problem) }
            }
            form.login method="post" action="/login" {
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint { "Tokens are set in console.tokens; each names a secret." }
        },
    )
}

async fn sign_in(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let given = field(&form, "token").unwrap_or_default();
    let Some(token) = console.auth.identify(&console.app, given) else {
        warn!("console: a sign-in with an unknown token was refused");
        tokio::time::sleep(FAILED_SIGN_IN_DELAY).await;
        return (
            StatusCode::UNAUTHORIZED,
            login_form(Some("That token is not valid.")),
        )
            .into_response();
    };
    let id = console.auth.open(token);
    info!(user = %token.name, role = token.role.as_str(), "console: signed in");
    (
        [(
            header::SET_COOKIE,
            cookie(&id, SESSION_LIFETIME, over_tls(&headers)),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

async fn sign_out(
    State(console): State<Arc<Console>>,
    user: User,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    user.check_post(&form, false)?;
    console.auth.close(&user.session);
    info!(user = %user.name, role = user.role.as_str(), "console: signed out");
    Ok((
        [(
            header::SET_COOKIE,
            cookie("", Duration::ZERO, over_tls(&headers)),
        )],
        Redirect::to("/login"),
    )
        .into_response())
}
