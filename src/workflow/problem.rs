//! What loading the workflow files can find wrong: [`Problem`] and its [`Severity`]. Kept apart
//! so the connectors, which report problems while they compile, need nothing else of workflow/.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with the workflow files, located as precisely as possible.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The file it is in.
    pub file: PathBuf,
    /// The workflow or webhook id, when known.
    pub workflow: Option<String>,
    /// The action id, when known.
    pub action: Option<String>,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
    /// Errors stop `validate` (exit 1); warnings only inform. At run time only errors refuse a set.
    pub severity: Severity,
}

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The set cannot be loaded.
    Error,
    /// `validate` fails on it, `run` logs it: a template variable the event type never carries.
    Lint,
    /// Worth knowing, never fatal.
    Warning,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error | Severity::Lint => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}", self.file.display())?;
        if let Some(workflow) = &self.workflow {
            write!(f, ": workflow {workflow}")?;
        }
        if let Some(action) = &self.action {
            write!(f, ", action {action}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Problem {
    pub(crate) fn new(
        severity: Severity,
        file: &Path,
        workflow: Option<&str>,
        action: Option<&str>,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            file: file.to_path_buf(),
            workflow: workflow.map(str::to_owned),
            action: action.map(str::to_owned),
            message: message.into(),
            severity,
        }
    }

    /// An error at a place.
    pub fn error(
        file: &Path,
        workflow: Option<&str>,
        action: Option<&str>,
        message: impl Into<String>,
    ) -> Problem {
        Problem::new(Severity::Error, file, workflow, action, message)
    }
}
