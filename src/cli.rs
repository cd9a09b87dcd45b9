//! The one-shot commands of SPEC §4: `validate`, `test`, `publish`, `topology`.
//! Each returns the process exit code: 0 ok, 1 user error, 2 broker or remote unreachable.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lapin::BasicProperties;

use crate::broker::{self, Publisher, Topology};
use crate::config::Config;
use crate::connectors::Call;
use crate::event::Event;
use crate::outcome::Outcome;
use crate::template::{Context, Engine, SecretsView};
use crate::workflow::{Catalog, Severity};

/// Exit code for a user error.
pub const USER_ERROR: u8 = 1;
/// Exit code when the broker or a remote could not be reached.
pub const UNREACHABLE: u8 = 2;

/// Loads the configuration or explains why not (exit 1).
pub fn load_config(path: &Path) -> Result<Config, ExitCode> {
    let required = path != Path::new(crate::DEFAULT_CONFIG);
    Config::load(path, required).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(USER_ERROR)
    })
}

/// `switchyard validate`: every problem with its file, workflow and action; exit 1 on any error.
pub fn validate(config: &Config, out: &mut impl Write) -> ExitCode {
    let secrets = match crate::secrets::load(&config.secrets.dir) {
        Ok(secrets) => secrets,
        Err(e) => {
            let _ = writeln!(
                out,
                "error: secrets.dir {}: {e}",
                config.secrets.dir.display()
            );
            return ExitCode::from(USER_ERROR);
        }
    };
    let (catalog, problems) = Catalog::load(&config.workflows.paths, secrets, &Engine::new());
    for problem in &problems {
        let _ = writeln!(out, "{problem}");
    }
    let failed = problems
        .iter()
        .any(|p| matches!(p.severity, Severity::Error | Severity::Lint));
    match catalog {
        Some(catalog) if !failed => {
            let _ = writeln!(
                out,
                "ok: {} workflow(s), {} webhook(s), {} connection(s)",
                catalog.workflows.len(),
                catalog.webhooks.len(),
                catalog.connections.len()
            );
            ExitCode::SUCCESS
        }
        _ => {
            let errors = problems
                .iter()
                .filter(|p| p.severity != Severity::Warning)
                .count();
            let _ = writeln!(out, "{errors} error(s)");
            ExitCode::from(USER_ERROR)
        }
    }
}

/// `switchyard test --event FILE`: what would match and exactly what would be sent; sends nothing.
pub fn dry_run(config: &Config, event_file: &Path, out: &mut impl Write) -> ExitCode {
    let raw = match std::fs::read(event_file) {
        Ok(raw) => raw,
        Err(e) => {
            let _ = writeln!(out, "error: {}: {e}", event_file.display());
            return ExitCode::from(USER_ERROR);
        }
    };
    let event = match Event::parse(&raw, config.router.max_event_bytes) {
        Ok(event) => event,
        Err(rejection) => {
            let _ = writeln!(
                out,
                "the router would reject this event ({}): {rejection}",
                rejection.label()
            );
            return ExitCode::from(USER_ERROR);
        }
    };
    // Secrets are never read here: every one renders as [redacted].
    let (catalog, problems) =
        Catalog::load(&config.workflows.paths, Default::default(), &Engine::new());
    let Some(catalog) = catalog else {
        for problem in problems.iter().filter(|p| p.severity == Severity::Error) {
            let _ = writeln!(out, "{problem}");
        }
        return ExitCode::from(USER_ERROR);
    };
    let _ = writeln!(
        out,
        "event {} ({}) in workspace {}",
        event.id, event.kind.name, event.workspace
    );
    let ctx = Context {
        event: &event.body,
        steps: &serde_json::Value::Null,
        secrets: SecretsView::Redacted,
    };
    let mut matched = 0;
    for workflow in catalog.candidates(&event) {
        match workflow.condition_holds(&ctx) {
            Ok(true) => {}
            Ok(false) => {
                let _ = writeln!(
                    out,
                    "\nworkflow {}: trigger `if` is false; not run",
                    workflow.id
                );
                continue;
            }
            Err(e) => {
                let _ = writeln!(out, "\nworkflow {}: trigger `if` fails: {e}", workflow.id);
                continue;
            }
        }
        matched += 1;
        let _ = writeln!(
            out,
            "\nworkflow {} ({})",
            workflow.id,
            workflow.file.display()
        );
        for action in &workflow.actions {
            let id = broker::message::action_id(&event.id, &workflow.id, &action.id);
            let call = Call {
                action_id: &id,
                ctx,
            };
            let _ = write!(out, "  action {} [{}]", action.id, action.spec.connector());
            if let Some(needs) = action.needs {
                let _ = write!(
                    out,
                    " — runs after {}; steps.{} is only known then, so it renders empty here",
                    workflow.actions[needs].id, workflow.actions[needs].id
                );
            }
            let _ = writeln!(out);
            if let Some(condition) = &action.condition {
                match condition.eval(&ctx) {
                    Ok(holds) => {
                        let _ = writeln!(out, "    if: {holds}");
                    }
                    Err(e) => {
                        let _ = writeln!(out, "    if fails: {e}");
                    }
                }
            }
            print_preview(out, action.spec.preview(&call));
        }
    }
    for webhook in catalog.webhooks_for(&event) {
        matched += 1;
        let _ = writeln!(out, "\nwebhook {} ({})", webhook.id, webhook.file.display());
        match webhook.url.render(&ctx) {
            Ok(url) => {
                let _ = writeln!(out, "    POST {url} (signed per Standard Webhooks)");
            }
            Err(e) => {
                let _ = writeln!(out, "    url fails to render: {e}");
            }
        }
    }
    if matched == 0 {
        let _ = writeln!(out, "\nno workflow or webhook matches this event");
    }
    ExitCode::SUCCESS
}

fn print_preview(out: &mut impl Write, preview: Result<crate::connectors::Request, Outcome>) {
    match preview {
        Ok(request) => {
            let _ = writeln!(out, "    {} {}", request.method, request.url);
            for (name, value) in &request.headers {
                let shown = if value.is_sensitive()
                    && !value.to_str().unwrap_or("").contains("[redacted]")
                {
                    "[redacted]"
                } else {
                    value.to_str().unwrap_or("[binary]")
                };
                let _ = writeln!(out, "    {name}: {shown}");
            }
            if let Some(body) = request.body {
                let _ = writeln!(out, "\n    {}", String::from_utf8_lossy(&body));
            }
        }
        Err(Outcome::Fail(failure)) | Err(Outcome::Retry(failure)) => {
            let _ = writeln!(
                out,
                "    would fail ({}): {}",
                failure.class.as_str(),
                failure.reason
            );
        }
        Err(Outcome::Success { .. }) => {}
    }
}

/// `switchyard topology`: declares everything and prints it.
pub async fn topology(config: &Config, out: &mut impl Write) -> ExitCode {
    let topology = Topology::new(config);
    let result = async {
        let connection = broker::connect(
            &config.amqp.url,
            "switchyard topology",
            config.amqp.connect_timeout,
        )
        .await?;
        let channel =
            connection
                .create_channel()
                .await
                .map_err(|source| broker::BrokerError::Amqp {
                    context: "opening a channel".into(),
                    source,
                })?;
        topology.declare(&channel).await?;
        broker::close_connection(&connection, 200, "done").await;
        Ok::<(), broker::BrokerError>(())
    }
    .await;
    match result {
        Ok(()) => {
            for line in topology.describe() {
                let _ = writeln!(out, "{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(UNREACHABLE)
        }
    }
}

/// `switchyard publish`: sends an event file `count` times (ids suffixed when count > 1) at up to
/// `rate` per second, with pipelined confirms.
pub async fn publish(
    config: &Config,
    event_file: &Path,
    count: u64,
    rate: Option<f64>,
    out: &mut impl Write,
) -> ExitCode {
    let raw = match std::fs::read(event_file) {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("error: {}: {e}", event_file.display());
            return ExitCode::from(USER_ERROR);
        }
    };
    let mut body: serde_json::Value = match serde_json::from_slice(&raw) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("error: {} is not JSON: {e}", event_file.display());
            return ExitCode::from(USER_ERROR);
        }
    };
    let base_id = body
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or("evt")
        .to_owned();
    let routing_key = body
        .get("type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    let topology = Topology::new(config);
    let started = Instant::now();
    let result = async {
        let connection = broker::connect(
            &config.amqp.url,
            "switchyard publish",
            config.amqp.connect_timeout,
        )
        .await?;
        let publisher = Publisher::open(&connection).await?;
        let mut window = std::collections::VecDeque::new();
        for i in 0..count {
            if let Some(rate) = rate.filter(|r| *r > 0.0) {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            if count > 1 {
                body["id"] = serde_json::Value::String(format!("{base_id}-{i}"));
            }
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let properties =
                BasicProperties::default().with_content_type("application/json".into());
            window.push_back(
                publisher
                    .send(&topology.events, &routing_key, &bytes, properties)
                    .await?,
            );
            if window.len() >= 1000
                && let Some(pending) = window.pop_front()
            {
                Publisher::confirmed(pending, &routing_key).await?;
            }
        }
        for pending in window {
            Publisher::confirmed(pending, &routing_key).await?;
        }
        broker::close_connection(&connection, 200, "done").await;
        Ok::<(), broker::BrokerError>(())
    }
    .await;
    match result {
        Ok(()) => {
            let secs = started.elapsed().as_secs_f64();
            let _ = writeln!(
                out,
                "published {count} event(s) to {} in {secs:.2}s ({:.0}/s)",
                topology.events,
                count as f64 / secs.max(1e-9)
            );
            ExitCode::SUCCESS
        }
        Err(broker::BrokerError::Refused(what)) => {
            eprintln!(
                "error: the broker did not route {what}; run `switchyard topology` (or start the service) first"
            );
            ExitCode::from(UNREACHABLE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(UNREACHABLE)
        }
    }
}
