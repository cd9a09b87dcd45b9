//! `switchyard test --event FILE`: a dry run against the loaded workflows.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::USER_ERROR;
use crate::broker;
use crate::config::Config;
use crate::connectors::Call;
use crate::event::Event;
use crate::outcome::Outcome;
use crate::template::{Context, Engine, SecretsView};
use crate::workflow::{Catalog, Severity};

/// Prints every rule of schema/event.schema.json the event breaks (SPEC §2, what producers
/// check in their CI); true when it breaks any. Bytes that are not JSON are left to the router.
fn schema_report(raw: &[u8], out: &mut impl Write) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(raw) else {
        return false;
    };
    let violations = match crate::schema::violations(&value) {
        Ok(violations) => violations,
        Err(e) => {
            let _ = writeln!(out, "warning: {e}");
            return false;
        }
    };
    if violations.is_empty() {
        return false;
    }
    let _ = writeln!(
        out,
        "the event breaks {} rule(s) of schema/event.schema.json:",
        violations.len()
    );
    for v in &violations {
        let at = if v.at.is_empty() {
            "(top level)"
        } else {
            &v.at
        };
        let _ = writeln!(
            out,
            "  at {at}: {} (rule: {}, schema {})",
            v.message, v.rule, v.schema_path
        );
    }
    true
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
    match preview(config, &raw, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Unpreviewable) => ExitCode::from(USER_ERROR),
    }
}

/// Why an event could not be previewed; what was wrong is already written out.
#[derive(Debug, Clone, Copy)]
pub struct Unpreviewable;

/// Writes what `raw` would match and exactly the requests it would make, secrets redacted (the
/// workflow files are loaded without secrets, so every one renders as `[redacted]`); sends
/// nothing. The `test` command and the console's paste box (SPEC §11) both show this.
pub fn preview(config: &Config, raw: &[u8], out: &mut impl Write) -> Result<(), Unpreviewable> {
    let breaks_schema = schema_report(raw, out);
    let event = match Event::parse(raw, config.router.max_event_bytes) {
        Ok(event) => event,
        Err(rejection) => {
            let _ = writeln!(
                out,
                "the router would reject this event ({}): {rejection}",
                rejection.label()
            );
            return Err(Unpreviewable);
        }
    };
    if breaks_schema {
        let _ = writeln!(
            out,
            "the router would accept it: the rules above are the schema's checks for producers\n"
        );
    }
    // Secrets are never read here: every one renders as [redacted].
    let (catalog, problems) = Catalog::load(
        &config.workflows.paths,
        Default::default(),
        &Engine::new(),
        &crate::net::Guard::new(&config.http.allow_networks),
        None,
    );
    let Some(catalog) = catalog else {
        for problem in problems.iter().filter(|p| p.severity == Severity::Error) {
            let _ = writeln!(out, "{problem}");
        }
        return Err(Unpreviewable);
    };
    let _ = writeln!(
        out,
        "event {} ({}) in workspace {}",
        event.id, event.kind.name, event.workspace
    );
    let ctx = Context {
        event: event.body().into(),
        steps: &serde_json::Value::Null,
        secrets: SecretsView::Redacted,
    };
    let mut matched = 0;
    for workflow in catalog.candidates(&event) {
        match workflow.condition_holds(&event) {
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
    Ok(())
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
        // A preview calls nothing, so no destination holds it.
        Err(Outcome::Success { .. } | Outcome::Held(_)) => {}
    }
}
