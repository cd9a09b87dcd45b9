//! The operator console (SPEC §11) over HTTP, against the real service, broker and PostgreSQL:
//! sign-in and sessions, roles and CSRF (a refused change changes nothing), bad input answered
//! with a message on the page, the security headers, and no secret on any page.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::console::{
    API_SECRET, CONSOLE_YAML, ConsoleClient, OPERATOR_TOKEN, Page, SECRETS, VIEWER_TOKEN, workflow,
};
use support::pg::Schema;
use support::{FakeServer, Harness, Reply, event, wait_until};
use switchyard::broker::message::action_id;

/// A service with the console (and history in `schema`, if given) whose fake refuses the first
/// `refusals` calls with a 400 (each a dead letter), then accepts.
async fn start(
    name: &str,
    schema: Option<&Schema>,
    refusals: usize,
) -> (Harness, FakeServer, ConsoleClient) {
    let calls = Arc::new(AtomicUsize::new(0));
    let fake = FakeServer::start(move |_| {
        if calls.fetch_add(1, Ordering::SeqCst) < refusals {
            Reply::text(400, "refused: bad contact")
        } else {
            Reply::status(200)
        }
    })
    .await;
    let extra = match schema {
        Some(schema) => format!("{}\n{CONSOLE_YAML}", schema.config()),
        None => CONSOLE_YAML.to_owned(),
    };
    let h = Harness::start(name, &workflow(&fake), &extra, &SECRETS).await;
    let client = ConsoleClient::new(h.console_addr.expect("the console listens"));
    (h, fake, client)
}

/// Publishes an event for `email` and waits until its call was refused and dead-lettered.
async fn dead_letter(h: &Harness, fake: &FakeServer, id: &str, email: &str) -> String {
    let mut e = event(id, "Gameplay.DataCaptured");
    e["contact"]["email"] = email.into();
    let before = h.broker.queue_len(&h.name("dead-letter")).await;
    let calls = fake.count();
    h.publish(&e).await;
    wait_until("the call was made", async || fake.count() > calls).await;
    wait_until("the dead letter", async || {
        h.broker.queue_len(&h.name("dead-letter")).await > before
    })
    .await;
    action_id(id, "crm-sync", "post")
}

fn assert_headers(page: &Page, what: &str) {
    let csp = page.csp.as_deref().unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{what}: CSP {csp:?}"
    );
    assert_eq!(page.nosniff.as_deref(), Some("nosniff"), "{what}");
}

fn assert_no_secret(page: &Page, what: &str) {
    for secret in [OPERATOR_TOKEN, VIEWER_TOKEN, API_SECRET] {
        assert!(
            !page.body.contains(secret),
            "{what} shows a secret:\n{}",
            page.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sessions_and_headers() {
    let (h, _fake, mut client) = start("console-signin", None, 0).await;

    // Without a session every page redirects to /login.
    for path in ["/", "/runs", "/dead-letters", "/workflows", "/runs/act_x"] {
        let page = client.get(path).await;
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.location.as_deref(), Some("/login"), "{path}");
    }
    let login = client.get("/login").await;
    assert_eq!(login.status, 200);
    assert_headers(&login, "/login");

    // A wrong token is refused, slowly, and sets no cookie.
    let started = Instant::now();
    let refused = client.sign_in("not-a-token").await;
    assert_eq!(refused.status, 401);
    assert!(started.elapsed() >= Duration::from_millis(900), "slowed");
    assert!(refused.set_cookie.is_none());
    assert!(refused.body.contains("not valid"), "{}", refused.body);
    assert!(client.get("/").await.status == 303);

    // The right one opens a session: an HttpOnly, SameSite=Strict cookie, Secure behind TLS.
    let behind_tls = client
        .post_with(
            "/login",
            &[("token", OPERATOR_TOKEN)],
            &[("x-forwarded-proto", "https")],
        )
        .await;
    assert!(
        behind_tls
            .set_cookie
            .as_deref()
            .is_some_and(|c| c.contains("; Secure")),
        "{behind_tls:?}"
    );
    let signed_in = client.sign_in(OPERATOR_TOKEN).await;
    assert_eq!(signed_in.status, 303);
    assert_eq!(signed_in.location.as_deref(), Some("/"));
    let cookie = signed_in.set_cookie.clone().expect("a session cookie");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");

    for path in ["/", "/runs", "/dead-letters", "/workflows"] {
        let page = client.get(path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(page.body.contains("alice"), "{path}");
        assert_headers(&page, path);
        assert_no_secret(&page, path);
    }
    // History is off here: the runs page says how to turn it on.
    let runs = client.get("/runs").await;
    assert!(runs.body.contains("history.url"), "{}", runs.body);

    // Signing out ends the session (with its CSRF token).
    let csrf = client.get("/").await.csrf();
    let out = client.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert_eq!(client.get("/").await.status, 303);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_an_operator_and_the_csrf_token() {
    let (h, fake, mut operator) = start("console-csrf", None, 1).await;
    let id = dead_letter(&h, &fake, "evt_console_csrf", "ana@example.com").await;
    let dlq = h.name("dead-letter");
    assert_eq!(operator.sign_in(OPERATOR_TOKEN).await.status, 303);
    let mut viewer = ConsoleClient::new(h.console_addr.expect("console"));
    assert_eq!(viewer.sign_in(VIEWER_TOKEN).await.status, 303);

    let list = operator.get("/dead-letters").await;
    assert_eq!(list.status, 200);
    assert!(list.body.contains(&id), "{}", list.body);
    let shown = operator.get(&format!("/dead-letters/{id}")).await;
    assert_eq!(shown.status, 200);
    assert!(
        shown.body.contains("refused: bad contact"),
        "{}",
        shown.body
    );
    assert_no_secret(&shown, "a dead letter");

    // A POST without the CSRF token is refused and changes nothing.
    let form = [("id", id.as_str()), ("expected", "1"), ("confirm", "1")];
    let no_csrf = operator.post("/dead-letters/purge", &form).await;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    let no_csrf = operator.post("/dead-letters/replay", &form[..2]).await;
    assert_eq!(no_csrf.status, 403);
    // A viewer's change is refused, with its own valid token.
    let viewer_csrf = viewer.get("/dead-letters").await.csrf();
    let as_viewer = [
        ("csrf", viewer_csrf.as_str()),
        ("id", id.as_str()),
        ("expected", "1"),
        ("confirm", "1"),
    ];
    let refused = viewer.post("/dead-letters/purge", &as_viewer).await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("viewer"), "{}", refused.body);
    assert_eq!(
        viewer.post("/dead-letters/replay", &as_viewer).await.status,
        403
    );
    assert_eq!(
        viewer.post("/dead-letters/export", &as_viewer).await.status,
        403
    );
    // Another session's token is not this one's.
    let csrf = operator.get("/dead-letters").await.csrf();
    assert_ne!(csrf, viewer_csrf);
    let crossed = [
        ("csrf", viewer_csrf.as_str()),
        ("id", id.as_str()),
        ("expected", "1"),
        ("confirm", "1"),
    ];
    assert_eq!(
        operator.post("/dead-letters/purge", &crossed).await.status,
        403
    );
    // A purge whose typed count is wrong deletes nothing.
    let mistyped = [
        ("csrf", csrf.as_str()),
        ("id", id.as_str()),
        ("expected", "1"),
        ("confirm", "one"),
    ];
    assert_eq!(
        operator.post("/dead-letters/purge", &mistyped).await.status,
        400
    );
    assert_eq!(h.broker.queue_len(&dlq).await, 1, "nothing changed");

    // The operator's export is a download; the record stays.
    let export = operator
        .post("/dead-letters/export", &[("csrf", &csrf), ("id", &id)])
        .await;
    assert_eq!(export.status, 200);
    assert!(export.body.contains(&id) && export.body.ends_with('\n'));
    assert_eq!(h.broker.queue_len(&dlq).await, 1, "an export is a copy");

    // Replay: the dry run first, then the confirmed POST; the fake gets the call again.
    let preview = operator.get(&format!("/dead-letters/replay?id={id}")).await;
    assert_eq!(preview.status, 200);
    assert!(preview.body.contains("would replay"), "{}", preview.body);
    assert_eq!(
        h.broker.queue_len(&dlq).await,
        1,
        "a dry run changes nothing"
    );
    let calls = fake.count();
    let replayed = operator
        .post(
            "/dead-letters/replay",
            &[("csrf", &csrf), ("id", &id), ("expected", "1")],
        )
        .await;
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    assert!(
        replayed.body.contains("Replayed 1 record"),
        "{}",
        replayed.body
    );
    wait_until("the replayed call", async || fake.count() > calls).await;
    assert_eq!(h.broker.queue_len(&dlq).await, 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_bad_input_and_no_secret_on_any_page() {
    let schema = Schema::create("console").await;
    let (h, fake, mut client) = start("console-runs", Some(&schema), 1).await;
    let id = dead_letter(&h, &fake, "evt_console_runs", "Bea@Example.com").await;
    assert_eq!(client.sign_in(VIEWER_TOKEN).await.status, 303);

    // Found by the contact's email (any case), with its attempt on its page.
    let found = support::wait_for("the run in history", async || {
        let page = client.get("/runs?contact=bea%40example.com").await;
        page.body.contains(&id).then_some(page)
    })
    .await;
    assert_eq!(found.status, 200);
    let run = client.get(&format!("/runs/{id}")).await;
    assert_eq!(run.status, 200);
    for shown in [
        "evt_console_runs",
        "crm-sync",
        "dead",
        "400",
        "refused: bad contact",
    ] {
        assert!(run.body.contains(shown), "{shown}: {}", run.body);
    }
    for filter in [
        "workflow=crm-sync",
        "connector=http",
        "outcome=dead",
        "event=evt_console_runs",
        "workspace=ws_demo",
        "since=1h",
    ] {
        let page = client.get(&format!("/runs?{filter}")).await;
        assert!(page.body.contains(&id), "{filter}");
    }

    // Bad input: a message on the page with a 4xx, never a 500.
    let bad = [
        ("/runs?since=yesterdayish", 400, "since"),
        ("/runs?connector=smtp", 400, "unknown connector"),
        ("/runs?outcome=fine", 400, "outcome"),
        (
            "/runs?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            400,
            "after",
        ),
        ("/dead-letters?until=soonish", 400, "until"),
        ("/dead-letters?limit=-3", 400, "limit"),
        (
            "/runs/act_00000000000000000000000000000000",
            404,
            "no attempt",
        ),
        ("/dead-letters/act_nothing_here", 404, "No record"),
        ("/no-such-page", 404, "no such page"),
    ];
    for (path, status, message) in bad {
        let page = client.get(path).await;
        assert_eq!(page.status, status, "{path}: {}", page.body);
        assert!(page.body.contains(message), "{path}: {}", page.body);
        assert_headers(&page, path);
    }
    let csrf = client.get("/workflows").await.csrf();
    let oversized = format!("{{\"pad\": \"{}\"}}", "x".repeat(300 * 1024));
    let page = client
        .post("/workflows", &[("csrf", &csrf), ("event", &oversized)])
        .await;
    assert_eq!(page.status, 400);
    assert!(
        page.body.contains("the limit is 262144 bytes"),
        "{}",
        page.body
    );
    let page = client
        .post("/workflows", &[("csrf", &csrf), ("event", "{not json")])
        .await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("reject"), "{}", page.body);

    // The paste box shows the request, its secret redacted.
    let preview = client
        .post(
            "/workflows",
            &[("csrf", &csrf), ("event", support::EXAMPLE_EVENT)],
        )
        .await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert!(preview.body.contains("POST ") && preview.body.contains("[redacted]"));

    // No secret on any page.
    for path in [
        "/",
        "/runs",
        &format!("/runs/{id}"),
        "/dead-letters",
        &format!("/dead-letters/{id}"),
        &format!("/dead-letters/replay?id={id}"),
        &format!("/dead-letters/purge?id={id}"),
        "/workflows",
    ] {
        let page = client.get(path).await;
        assert_eq!(page.status, 200, "{path}");
        assert_no_secret(&page, path);
    }
    assert_no_secret(&preview, "the preview");
    h.finish().await;
    schema.drop_now().await;
}

/// `switchyard console` serves the console alone (nothing consumed), and stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_command_serves_it_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = support::unique_prefix("console-cmd");
    support::write_workflows_and_secrets(dir.path(), "workflows: []\n", &SECRETS);
    let port = support::free_port();
    let extra = CONSOLE_YAML.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let yaml = support::test_config_yaml(&prefix, dir.path(), &extra);
    // The console declares the destinations streams it reads.
    let guard = support::TopologyGuard::new(&switchyard::Config::from_yaml(&yaml).expect("config"));
    let config = dir.path().join("switchyard.yaml");
    std::fs::write(&config, yaml).expect("write the config");
    let config = config.to_str().expect("utf-8 path");

    // Without console.listen it says what to set.
    let off = support::run_switchyard(
        &["console", "--config", config],
        &[("SWITCHYARD__CONSOLE__LISTEN", "")],
    )
    .await;
    assert_eq!(off.code, Some(1), "{off:?}");

    // Killed when dropped, should the test fail before it stops.
    let mut child = tokio::process::Command::from(support::switchyard_command(
        &["console", "--config", config],
        &[],
    ))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .expect("start switchyard console");
    let mut client = ConsoleClient::new(([127, 0, 0, 1], port).into());
    wait_until("the console to answer", async || {
        reqwest::get(format!("{}/login", client.base)).await.is_ok()
    })
    .await;
    assert_eq!(client.sign_in(OPERATOR_TOKEN).await.status, 303);
    let workflows = client.get("/workflows").await;
    assert_eq!(workflows.status, 200);
    assert!(workflows.body.contains("taken"), "{}", workflows.body);
    let overview = client.get("/").await;
    assert!(
        overview.body.contains("serves the console only"),
        "{}",
        overview.body
    );

    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let status = tokio::time::timeout(support::DEADLINE, child.wait())
        .await
        .expect("it stops")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    guard.delete().await;
}
