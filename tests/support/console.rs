//! The operator console (SPEC §11) in tests: its configuration with an operator and a viewer, a
//! workflow whose first call is refused (so that a dead letter exists), and an HTTP client that
//! keeps the session cookie and never follows redirects (tests look at the 303 itself).

use std::net::SocketAddr;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;

use super::FakeServer;

/// The operator's token (secret `CONSOLE_ALICE`).
pub const OPERATOR_TOKEN: &str = "operator-token-7f3a9c1e5b2d4f60";
/// The viewer's token (secret `CONSOLE_BOARD`).
pub const VIEWER_TOKEN: &str = "viewer-token-0c8e2a4b6d1f3e57";
/// The secret the workflow's calls carry; no page may show it.
pub const API_SECRET: &str = "api-secret-5d4c3b2a1f0e9d8c";

/// The secrets files the console tests write.
pub const SECRETS: [(&str, &str); 3] = [
    ("CONSOLE_ALICE", OPERATOR_TOKEN),
    ("CONSOLE_BOARD", VIEWER_TOKEN),
    ("TOKEN", API_SECRET),
];

/// `console:` on a free port, with alice (operator) and board (viewer).
pub const CONSOLE_YAML: &str = r#"
console:
  listen: 127.0.0.1:0
  tokens:
    - { name: alice, role: operator, token: "{{ secrets.CONSOLE_ALICE }}" }
    - { name: board, role: viewer, token: "{{ secrets.CONSOLE_BOARD }}" }
"#;

/// Workflow `crm-sync`: every `Gameplay.DataCaptured` POSTs to `fake` with the `TOKEN` secret.
pub fn workflow(fake: &FakeServer) -> String {
    r#"
workflows:
  - id: crm-sync
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - id: post
        http:
          url: "@FAKE@/contacts"
          auth: { bearer: "{{ secrets.TOKEN }}" }
          body: '{"event": "{{ event.id }}", "email": "{{ contact.email }}"}'
"#
    .replace("@FAKE@", &fake.url())
}

/// One answer: status, headers of interest, body.
#[derive(Debug)]
pub struct Page {
    /// The status code.
    pub status: u16,
    /// `Location`, on a redirect.
    pub location: Option<String>,
    /// `Content-Security-Policy`.
    pub csp: Option<String>,
    /// `X-Content-Type-Options`.
    pub nosniff: Option<String>,
    /// `Set-Cookie`.
    pub set_cookie: Option<String>,
    /// The body.
    pub body: String,
}

impl Page {
    /// The value of the first `name="csrf"` hidden field of the page.
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find(r#"name="csrf" value=""#)
            .unwrap_or_else(|| panic!("no CSRF field on the page:\n{}", self.body));
        let rest = &self.body[at + r#"name="csrf" value=""#.len()..];
        rest[..rest.find('"').expect("the value ends")].to_owned()
    }
}

/// A browser without a browser: the session cookie, no redirects followed.
pub struct ConsoleClient {
    /// `http://host:port`.
    pub base: String,
    http: reqwest::Client,
    /// The session cookie (`name=value`), once signed in.
    pub cookie: Option<String>,
}

impl ConsoleClient {
    /// A client of the console at `addr`, not signed in.
    pub fn new(addr: SocketAddr) -> ConsoleClient {
        ConsoleClient {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .expect("a reqwest client"),
            cookie: None,
        }
    }

    /// Signs in with `token` (keeping the cookie when it works); the answer.
    pub async fn sign_in(&mut self, token: &str) -> Page {
        let page = self.post("/login", &[("token", token)]).await;
        if let Some(cookie) = &page.set_cookie {
            self.cookie = cookie.split(';').next().map(str::to_owned);
        }
        page
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Page {
        let request = match &self.cookie {
            Some(cookie) => request.header(COOKIE, cookie),
            None => request,
        };
        let response = request.send().await.expect("the console answers");
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let (location, csp, nosniff, set_cookie) = (
            header(LOCATION),
            header(reqwest::header::CONTENT_SECURITY_POLICY),
            header(reqwest::header::X_CONTENT_TYPE_OPTIONS),
            header(SET_COOKIE),
        );
        Page {
            status: response.status().as_u16(),
            location,
            csp,
            nosniff,
            set_cookie,
            body: response.text().await.expect("a body"),
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// `POST path` with a form.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(self.http.post(format!("{}{path}", self.base)).form(form))
            .await
    }

    /// `POST path` with a form and extra headers.
    pub async fn post_with(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut request = self.http.post(format!("{}{path}", self.base)).form(form);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }
}
