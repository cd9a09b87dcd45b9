//! `switchyard validate`.

use std::io::Write;
use std::process::ExitCode;

use super::USER_ERROR;
use crate::config::Config;
use crate::template::Engine;
use crate::workflow::{Catalog, Severity};

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
    let guard = crate::net::Guard::new(&config.http.allow_networks);
    let (catalog, problems) = Catalog::load(
        &config.workflows.paths,
        secrets,
        &Engine::new(),
        &guard,
        None,
    );
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
