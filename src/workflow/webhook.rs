//! A compiled webhook subscription, as the router matches it and the webhook connector sends it.

use std::path::Path;
use std::sync::Arc;

use crate::event;
use crate::template::TextTemplate;

/// A compiled webhook subscription.
#[derive(Debug)]
pub struct Webhook {
    /// Its id.
    pub id: String,
    /// The workspace whose events it receives.
    pub workspace: String,
    /// Type patterns.
    pub patterns: Vec<String>,
    /// Where to POST.
    pub url: TextTemplate,
    /// Signing secrets (templates, usually `{{ secrets.X }}`).
    pub secrets: Vec<TextTemplate>,
    /// Komo's flat legacy shape instead of the event JSON.
    pub legacy: bool,
    /// The file it came from.
    pub file: Arc<Path>,
}

impl Webhook {
    /// Whether an event type matches one of the patterns (`*`, `Prize.*`, exact).
    pub fn matches_type(&self, type_name: &str) -> bool {
        self.patterns.iter().any(|p| type_matches(p, type_name))
    }
}

/// Whether a type pattern matches a main type name.
pub fn type_matches(pattern: &str, type_name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return type_name.starts_with(prefix);
    }
    match event::lookup_type(pattern) {
        Some(kind) => kind.name == type_name,
        None => pattern == type_name,
    }
}
