//! The frame of every page: head, navigation, the signed-in user and sign-out, the style sheet
//! (served by the binary: the CSP allows no inline style), and small formatting helpers.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{DOCTYPE, Markup, html};

use super::Console;
use super::User;

/// The navigation, in order: (path, label). A new page adds its line here.
pub const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/runs", "Runs"),
    ("/dead-letters", "Dead letters"),
    ("/destinations", "Destinations"),
    ("/workflows", "Workflows"),
];

/// The style sheet.
const CSS: &str = include_str!("console.css");

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new().route("/static/console.css", get(css))
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · switchyard" }
            link rel="stylesheet" href="/static/console.css";
        }
    }
}

/// A page of a signed-in user: navigation (with `current` marked), who they are, sign-out.
pub fn page(title: &str, current: &str, user: &User, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    nav {
                        span.brand { "switchyard" }
                        @for (path, label) in NAV {
                            @if *path == current {
                                a.current href=(path) aria-current="page" { (label) }
                            } @else {
                                a href=(path) { (label) }
                            }
                        }
                    }
                    div.who {
                        span { (user.name) " (" (user.role.as_str()) ")" }
                        form.inline method="post" action="/logout" {
                            (csrf(user))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page without navigation (sign-in).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main.narrow { (body) } }
        }
    }
}

/// A page that only says something (errors).
pub fn message_page(title: &str, message: &str) -> Markup {
    bare(
        title,
        html! {
            h1 { (title) }
            p.error role="alert" { (message) }
            p { a href="/" { "Back to the overview" } }
        },
    )
}

/// The hidden CSRF field every form of a change carries.
pub fn csrf(user: &User) -> Markup {
    html! { input type="hidden" name="csrf" value=(user.csrf); }
}

/// A time as people read it in a table (UTC).
pub fn when(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A time as a filter takes it back (RFC 3339).
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// An optional value, or `-`.
pub fn or_dash(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or("-")
}

/// `pairs` as a query string (values percent-encoded).
pub fn query_string(pairs: &[(&str, String)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if !value.is_empty() {
            out.append_pair(name, value);
        }
    }
    out.finish()
}

/// What a path segment keeps as it is: the unreserved characters of RFC 3986.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A path segment, percent-encoded (ids in links: `act_…` stays as it reads).
pub fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, SEGMENT).to_string()
}
