//! Workflows and webhooks: loading, validation, and matching events against triggers.
//!
//! Everything here is compiled once when the files are loaded (templates included) and shared,
//! read-only, by the router and the workers through an [`arc_swap::ArcSwap`] that SIGHUP replaces.

mod compile;
pub mod def;
pub mod problem;
pub mod scope;
mod variables;
pub mod webhook;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use self::compile::{collect_files, compile_webhook, compile_workflow};
use crate::connectors::ActionSpec;
use crate::event::Event;
use crate::net::Guard;
use crate::template::{Condition, Context, Engine, SecretsView, TemplateError};
use def::{ConnectionDef, ConnectionsOnly, FileDef};

pub use self::problem::{Problem, Severity};
pub use self::scope::{ActionScope, Connection};
pub use self::webhook::{Webhook, type_matches};

/// Where a trigger applies within its workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every event of the workspace.
    Workspace,
    /// Only events whose `card.id` is this.
    Card(String),
    /// Only events whose `site.id` is this.
    Site(String),
}

/// A compiled workflow.
#[derive(Debug)]
pub struct Workflow {
    /// Its id.
    pub id: String,
    /// The workspace whose events trigger it.
    pub workspace: String,
    /// Main type names that trigger it.
    pub types: Vec<&'static str>,
    /// Card, site or workspace.
    pub scope: Scope,
    /// The trigger's `if`.
    pub condition: Option<Condition>,
    /// Its actions, in file order.
    pub actions: Vec<Action>,
    /// The file it came from (one allocation for all the workflows of a file).
    pub file: Arc<Path>,
}

/// A compiled action.
#[derive(Debug)]
pub struct Action {
    /// Its id within the workflow.
    pub id: String,
    /// The index of the action it needs, if any.
    pub needs: Option<usize>,
    /// The indexes of the actions that need it.
    pub dependents: Vec<usize>,
    /// Its `if`.
    pub condition: Option<Condition>,
    /// What it does.
    pub spec: ActionSpec,
    /// The envelope's top-level fields its templates name besides [`PartialEvent::ALWAYS`]
    /// (a worker parses these up front and the rest only if something reads it).
    ///
    /// [`PartialEvent::ALWAYS`]: crate::template::PartialEvent::ALWAYS
    pub event_fields: Box<[Box<str>]>,
}

/// Everything loaded from the workflow files: immutable, swapped whole on reload.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Workflows by index (shared with the next catalog when their file has not changed).
    pub workflows: Vec<Arc<Workflow>>,
    /// Webhook subscriptions.
    pub webhooks: Vec<Arc<Webhook>>,
    /// Connections by id.
    pub connections: HashMap<String, Connection>,
    /// Secret values by name.
    pub secrets: HashMap<String, String>,
    /// Workflow indexes by main type name.
    by_type: HashMap<&'static str, Vec<usize>>,
    /// Workflow indexes by id.
    by_id: HashMap<String, usize>,
    /// Webhook indexes by id.
    webhook_by_id: HashMap<String, usize>,
    /// The private-network guard of `http.allow_networks`: a literal URL it lets through gets no
    /// "blocked" warning.
    guard: Guard,
    /// What each file contributed, for the next reload to take over what has not changed.
    files: HashMap<PathBuf, FileLoad>,
}

/// Compiles one file's connections, with the problems of each on its own.
fn compile_connections(
    file: &Path,
    connections: &[ConnectionDef],
    engine: &Engine,
    problems: &mut Vec<Problem>,
) -> Vec<Connection> {
    let mut compiled = Vec::with_capacity(connections.len());
    for connection in connections {
        let (kind, settings) = match connection.kind.iter().next() {
            Some((kind, settings)) if connection.kind.len() == 1 => {
                (kind.clone(), settings.clone())
            }
            _ => {
                problems.push(Problem::error(
                    file,
                    None,
                    None,
                    format!(
                        "connection {}: name exactly one app (salesforce, mailchimp or braze)",
                        connection.id
                    ),
                ));
                continue;
            }
        };
        let one = Connection {
            id: connection.id.clone(),
            workspace: connection.workspace.clone(),
            kind,
            settings,
        };
        for message in crate::connectors::check_connection(&one, engine) {
            problems.push(Problem::error(
                file,
                None,
                None,
                format!("connection {}: {message}", one.id),
            ));
        }
        compiled.push(one);
    }
    compiled
}

/// The problem of a workflow id that another file (or the same one) already defines.
const WORKFLOW_TWICE: &str = "workflow id is defined twice; ids must be unique across all files";
/// The problem of a webhook id defined twice.
const WEBHOOK_TWICE: &str = "webhook id is defined twice";

/// Whether `id` is already in `index`, which is an error (`message`) in `file`.
fn defined_twice(
    index: &HashMap<String, usize>,
    file: &Path,
    id: &str,
    message: &str,
    problems: &mut Vec<Problem>,
) -> bool {
    let taken = index.contains_key(id);
    if taken {
        problems.push(Problem::error(file, Some(id), None, message));
    }
    taken
}

/// One file's share of a catalog.
#[derive(Debug, Clone)]
struct FileLoad {
    /// SHA-256 of the file's text.
    digest: [u8; 32],
    /// Its connections (kept when the file and the secrets are unchanged).
    connections: Vec<Connection>,
    /// What compiling them reported.
    connection_problems: Vec<Problem>,
    /// Where its workflows are in the catalog's `workflows`, in file order.
    workflows: Range<usize>,
    /// Where its webhooks are in the catalog's `webhooks`.
    webhooks: Range<usize>,
    /// What compiling them reported (warnings only: a catalog with an error is never kept).
    problems: Vec<Problem>,
}

/// The loaded catalog, shared and replaceable.
pub type Shared = Arc<arc_swap::ArcSwap<Catalog>>;

impl Catalog {
    /// Reads every `*.yaml` under `paths`, compiles it, and reports every problem found.
    /// Returns the catalog only when there is no [`Severity::Error`].
    ///
    /// A reload passes the catalog it replaces as `previous`: a file whose text is unchanged
    /// then keeps its compiled workflows and webhooks (shared, not copied) when the secrets and
    /// every file's connections are unchanged too, which is all a compiled workflow depends on
    /// besides its own file (and the guard, fixed for the process). Reloading ten thousand
    /// workflows to change one then compiles one file, and holds one catalog's worth of memory.
    pub fn load(
        paths: &[PathBuf],
        secrets: HashMap<String, String>,
        engine: &Engine,
        guard: &Guard,
        previous: Option<&Catalog>,
    ) -> (Option<Catalog>, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut files = Vec::new();
        for path in paths {
            collect_files(path, &mut files, &mut problems);
        }
        // Every file is read once, up front, so that the catalog is one snapshot of the folder.
        let mut texts = Vec::new();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => texts.push((file, text)),
                Err(e) => {
                    problems.push(Problem::error(
                        &file,
                        None,
                        None,
                        format!("cannot read: {e}"),
                    ));
                }
            }
        }
        // Two passes, so that the parsed workflows of only one file are held at a time (a
        // large catalog's parsed files weigh more than the compiled catalog): the connections
        // of every file first, since an action may use a connection of any file; then each
        // file whole, its workflows and webhooks compiled and its parse dropped. A file that
        // does not parse is reported by the second pass.
        let mut catalog = Catalog::empty(secrets, guard);
        // A file whose text is unchanged keeps its compiled connections too, when the secrets
        // are the same: an unchanged folder is not parsed at all.
        let same_secrets = previous.filter(|p| p.secrets == catalog.secrets);
        let mut pending = Vec::with_capacity(texts.len());
        for (file, text) in texts {
            let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
            let kept = same_secrets
                .and_then(|p| p.files.get(&file))
                .filter(|kept| kept.digest == digest);
            let (connections, reported) = match kept {
                Some(kept) => {
                    problems.extend(kept.connection_problems.iter().cloned());
                    (kept.connections.clone(), kept.connection_problems.clone())
                }
                None => {
                    let before = problems.len();
                    let defs = serde_yaml_ng::from_str::<Option<ConnectionsOnly>>(&text)
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    let compiled =
                        compile_connections(&file, &defs.connections, engine, &mut problems);
                    (compiled, problems[before..].to_vec())
                }
            };
            catalog.insert_connections(&file, &connections, &mut problems);
            pending.push((file, text, digest, connections, reported));
        }
        let reusable = previous
            .filter(|p| p.secrets == catalog.secrets && p.connections == catalog.connections);
        for (file, text, digest, connections, connection_problems) in pending {
            if let Some((previous, kept)) = reusable
                .and_then(|p| Some((p, p.files.get(&file)?)))
                .filter(|(_, kept)| kept.digest == digest)
            {
                catalog.take_over(&file, previous, kept, &mut problems);
                continue;
            }
            match serde_yaml_ng::from_str::<Option<FileDef>>(&text) {
                Ok(def) => {
                    let def = def.unwrap_or_default();
                    let (workflows, webhooks, reported) = (
                        catalog.workflows.len(),
                        catalog.webhooks.len(),
                        problems.len(),
                    );
                    catalog.add_workflows(&file, &def, engine, &mut problems);
                    let load = FileLoad {
                        digest,
                        connections,
                        connection_problems,
                        workflows: workflows..catalog.workflows.len(),
                        webhooks: webhooks..catalog.webhooks.len(),
                        problems: problems[reported..].to_vec(),
                    };
                    catalog.files.insert(file, load);
                }
                Err(e) => problems.push(Problem::error(&file, None, None, e.to_string())),
            }
        }
        // Held until the next reload: no room left over from the doubling as it grew.
        catalog.workflows.shrink_to_fit();
        catalog.webhooks.shrink_to_fit();
        let ok = !problems.iter().any(|p| p.severity == Severity::Error);
        (ok.then_some(catalog), problems)
    }

    /// Compiles parsed files (also used by tests with inline YAML), with the default guard.
    pub fn compile(
        files: Vec<(PathBuf, FileDef)>,
        secrets: HashMap<String, String>,
        engine: &Engine,
        problems: &mut Vec<Problem>,
    ) -> Catalog {
        Catalog::compile_guarded(files, secrets, engine, &Guard::default(), problems)
    }

    /// Compiles parsed files; literal URLs are checked against `guard`.
    pub fn compile_guarded(
        files: Vec<(PathBuf, FileDef)>,
        secrets: HashMap<String, String>,
        engine: &Engine,
        guard: &Guard,
        problems: &mut Vec<Problem>,
    ) -> Catalog {
        let mut catalog = Catalog::empty(secrets, guard);
        for (file, def) in &files {
            let connections = compile_connections(file, &def.connections, engine, problems);
            catalog.insert_connections(file, &connections, problems);
        }
        for (file, def) in &files {
            catalog.add_workflows(file, def, engine, problems);
        }
        catalog
    }

    /// A catalog with nothing loaded yet.
    fn empty(secrets: HashMap<String, String>, guard: &Guard) -> Catalog {
        Catalog {
            secrets,
            guard: guard.clone(),
            ..Catalog::default()
        }
    }

    /// Adds one file's compiled connections; an id defined twice is an error.
    fn insert_connections(
        &mut self,
        file: &Path,
        connections: &[Connection],
        problems: &mut Vec<Problem>,
    ) {
        for connection in connections {
            if self
                .connections
                .insert(connection.id.clone(), connection.clone())
                .is_some()
            {
                problems.push(Problem::error(
                    file,
                    None,
                    None,
                    format!("connection id {} is defined twice", connection.id),
                ));
            }
        }
    }

    /// Compiles one file's workflows and webhooks (after every file's connections).
    fn add_workflows(
        &mut self,
        file: &Path,
        def: &FileDef,
        engine: &Engine,
        problems: &mut Vec<Problem>,
    ) {
        let file: Arc<Path> = Arc::from(file);
        let file = &file;
        for workflow in &def.workflows {
            if defined_twice(&self.by_id, file, &workflow.id, WORKFLOW_TWICE, problems) {
                continue;
            }
            if let Some(compiled) = compile_workflow(file, workflow, engine, self, problems) {
                self.index_workflow(Arc::new(compiled));
            }
        }
        for webhook in &def.webhooks {
            if defined_twice(
                &self.webhook_by_id,
                file,
                &webhook.id,
                WEBHOOK_TWICE,
                problems,
            ) {
                continue;
            }
            if let Some(compiled) = compile_webhook(file, webhook, engine, &self.guard, problems) {
                self.index_webhook(Arc::new(compiled));
            }
        }
    }

    /// Takes over an unchanged file's workflows and webhooks from the catalog being replaced,
    /// with what compiling them reported; an id that a changed file now also defines is refused
    /// as [`Catalog::add_workflows`] refuses it.
    fn take_over(
        &mut self,
        file: &Path,
        previous: &Catalog,
        kept: &FileLoad,
        problems: &mut Vec<Problem>,
    ) {
        problems.extend(kept.problems.iter().cloned());
        let (workflows, webhooks) = (self.workflows.len(), self.webhooks.len());
        for workflow in &previous.workflows[kept.workflows.clone()] {
            if !defined_twice(&self.by_id, file, &workflow.id, WORKFLOW_TWICE, problems) {
                self.index_workflow(workflow.clone());
            }
        }
        for webhook in &previous.webhooks[kept.webhooks.clone()] {
            if !defined_twice(
                &self.webhook_by_id,
                file,
                &webhook.id,
                WEBHOOK_TWICE,
                problems,
            ) {
                self.index_webhook(webhook.clone());
            }
        }
        let load = FileLoad {
            workflows: workflows..self.workflows.len(),
            webhooks: webhooks..self.webhooks.len(),
            ..kept.clone()
        };
        self.files.insert(file.to_path_buf(), load);
    }

    /// Adds a compiled workflow to the indexes.
    fn index_workflow(&mut self, workflow: Arc<Workflow>) {
        self.by_id.insert(workflow.id.clone(), self.workflows.len());
        for kind in &workflow.types {
            self.by_type
                .entry(kind)
                .or_default()
                .push(self.workflows.len());
        }
        self.workflows.push(workflow);
    }

    /// Adds a compiled webhook to the index.
    fn index_webhook(&mut self, webhook: Arc<Webhook>) {
        self.webhook_by_id
            .insert(webhook.id.clone(), self.webhooks.len());
        self.webhooks.push(webhook);
    }

    /// A workflow by id.
    pub fn workflow(&self, id: &str) -> Option<&Workflow> {
        self.by_id.get(id).map(|&i| &*self.workflows[i])
    }

    /// A webhook by id.
    pub fn webhook(&self, id: &str) -> Option<&Webhook> {
        self.webhook_by_id.get(id).map(|&i| &*self.webhooks[i])
    }

    /// The workflows whose type, workspace and scope match (the trigger's `if` is not evaluated).
    pub fn candidates<'a>(&'a self, event: &'a Event) -> impl Iterator<Item = &'a Workflow> + 'a {
        self.by_type
            .get(event.kind.name)
            .into_iter()
            .flatten()
            .map(|&i| &*self.workflows[i])
            .filter(|wf| wf.workspace == event.workspace && wf.scope_matches(event))
    }

    /// The webhooks subscribed to this event.
    pub fn webhooks_for<'a>(&'a self, event: &'a Event) -> impl Iterator<Item = &'a Webhook> + 'a {
        self.webhooks
            .iter()
            .map(|wh| &**wh)
            .filter(|wh| wh.workspace == event.workspace && wh.matches_type(event.kind.name))
    }

    /// The template context for an event (no secrets: triggers may not read them).
    pub fn trigger_context<'a>(event: &'a Event) -> Context<'a> {
        Context {
            event: event.body().into(),
            steps: &serde_json::Value::Null,
            secrets: SecretsView::Redacted,
        }
    }
}

impl Workflow {
    /// Whether the event is in the trigger's scope.
    pub fn scope_matches(&self, event: &Event) -> bool {
        match &self.scope {
            Scope::Workspace => true,
            Scope::Card(card) => event.card_id() == Some(card.as_str()),
            Scope::Site(site) => event.site_id() == Some(site.as_str()),
        }
    }

    /// Whether the trigger's `if` holds. Only a condition reads the event's whole envelope
    /// (the router does not build it otherwise).
    pub fn condition_holds(&self, event: &Event) -> Result<bool, TemplateError> {
        match &self.condition {
            Some(condition) => condition.eval(&Catalog::trigger_context(event)),
            None => Ok(true),
        }
    }

    /// The actions that run first (no `needs`).
    pub fn roots(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(|a| a.needs.is_none())
    }

    /// An action by id.
    pub fn action(&self, id: &str) -> Option<(usize, &Action)> {
        self.actions.iter().enumerate().find(|(_, a)| a.id == id)
    }

    /// The action at `index` and every action that transitively needs it.
    pub fn with_dependents(&self, index: usize) -> Vec<&Action> {
        let mut out = Vec::new();
        let mut stack = vec![index];
        while let Some(i) = stack.pop() {
            if let Some(action) = self.actions.get(i) {
                out.push(action);
                stack.extend(action.dependents.iter().copied());
            }
        }
        out
    }
}

/// Compiles workflow files written inline, for unit tests across the crate.
#[cfg(test)]
pub(crate) fn compile_yaml(yaml: &str) -> (Catalog, Vec<Problem>) {
    let def: FileDef = match serde_yaml_ng::from_str(yaml) {
        Ok(def) => def,
        Err(e) => panic!("the test YAML does not parse: {e}"),
    };
    let mut problems = Vec::new();
    let catalog = Catalog::compile(
        vec![("wf.yaml".into(), def)],
        HashMap::new(),
        &Engine::new(),
        &mut problems,
    );
    (catalog, problems)
}

#[cfg(test)]
mod tests;
