//! Workflows and webhooks: loading, validation, and matching events against triggers.
//!
//! Everything here is compiled once when the files are loaded (templates included) and shared,
//! read-only, by the router and the workers through an [`arc_swap::ArcSwap`] that SIGHUP replaces.

pub mod def;
mod variables;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::connectors::ActionSpec;
use crate::event::{self, Event, EventType};
use crate::template::{Condition, Context, Engine, SecretsView, TemplateError, TextTemplate};
use def::{FileDef, OneOrMany, WebhookDef, WorkflowDef};

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
    /// The file it came from.
    pub file: PathBuf,
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
}

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
    pub file: PathBuf,
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

/// A connection as written (the connector that uses it interprets the settings).
#[derive(Debug, Clone)]
pub struct Connection {
    /// Its id.
    pub id: String,
    /// The workspace allowed to use it.
    pub workspace: String,
    /// `salesforce`, `mailchimp` or `braze`.
    pub kind: String,
    /// The settings under the kind's key.
    pub settings: serde_json::Value,
}

/// Everything loaded from the workflow files: immutable, swapped whole on reload.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Workflows by index.
    pub workflows: Vec<Workflow>,
    /// Webhook subscriptions.
    pub webhooks: Vec<Webhook>,
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
}

/// The loaded catalog, shared and replaceable.
pub type Shared = Arc<arc_swap::ArcSwap<Catalog>>;

impl Catalog {
    /// Reads every `*.yaml` under `paths`, compiles it, and reports every problem found.
    /// Returns the catalog only when there is no [`Severity::Error`].
    pub fn load(
        paths: &[PathBuf],
        secrets: HashMap<String, String>,
        engine: &Engine,
    ) -> (Option<Catalog>, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut files = Vec::new();
        for path in paths {
            collect_files(path, &mut files, &mut problems);
        }
        let mut parsed = Vec::new();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => match serde_yaml_ng::from_str::<Option<FileDef>>(&text) {
                    Ok(def) => parsed.push((file, def.unwrap_or_default())),
                    Err(e) => problems.push(Problem::error(&file, None, None, e.to_string())),
                },
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
        let catalog = Catalog::compile(parsed, secrets, engine, &mut problems);
        let ok = !problems.iter().any(|p| p.severity == Severity::Error);
        (ok.then_some(catalog), problems)
    }

    /// Compiles parsed files (also used by tests with inline YAML).
    pub fn compile(
        files: Vec<(PathBuf, FileDef)>,
        secrets: HashMap<String, String>,
        engine: &Engine,
        problems: &mut Vec<Problem>,
    ) -> Catalog {
        let mut catalog = Catalog {
            secrets,
            ..Catalog::default()
        };
        for (file, def) in &files {
            for connection in &def.connections {
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
                let compiled = Connection {
                    id: connection.id.clone(),
                    workspace: connection.workspace.clone(),
                    kind,
                    settings,
                };
                for message in crate::connectors::check_connection(&compiled, engine) {
                    problems.push(Problem::error(
                        file,
                        None,
                        None,
                        format!("connection {}: {message}", compiled.id),
                    ));
                }
                if catalog
                    .connections
                    .insert(connection.id.clone(), compiled)
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
        for (file, def) in &files {
            for workflow in &def.workflows {
                if catalog.by_id.contains_key(&workflow.id) {
                    problems.push(Problem::error(
                        file,
                        Some(&workflow.id),
                        None,
                        "workflow id is defined twice; ids must be unique across all files",
                    ));
                    continue;
                }
                if let Some(compiled) = compile_workflow(file, workflow, engine, &catalog, problems)
                {
                    catalog
                        .by_id
                        .insert(compiled.id.clone(), catalog.workflows.len());
                    for kind in &compiled.types {
                        catalog
                            .by_type
                            .entry(kind)
                            .or_default()
                            .push(catalog.workflows.len());
                    }
                    catalog.workflows.push(compiled);
                }
            }
            for webhook in &def.webhooks {
                if catalog.webhook_by_id.contains_key(&webhook.id) {
                    problems.push(Problem::error(
                        file,
                        Some(&webhook.id),
                        None,
                        "webhook id is defined twice",
                    ));
                    continue;
                }
                if let Some(compiled) = compile_webhook(file, webhook, engine, problems) {
                    catalog
                        .webhook_by_id
                        .insert(compiled.id.clone(), catalog.webhooks.len());
                    catalog.webhooks.push(compiled);
                }
            }
        }
        catalog
    }

    /// A workflow by id.
    pub fn workflow(&self, id: &str) -> Option<&Workflow> {
        self.by_id.get(id).map(|&i| &self.workflows[i])
    }

    /// A webhook by id.
    pub fn webhook(&self, id: &str) -> Option<&Webhook> {
        self.webhook_by_id.get(id).map(|&i| &self.webhooks[i])
    }

    /// The workflows whose type, workspace and scope match (the trigger's `if` is not evaluated).
    pub fn candidates<'a>(&'a self, event: &'a Event) -> impl Iterator<Item = &'a Workflow> + 'a {
        self.by_type
            .get(event.kind.name)
            .into_iter()
            .flatten()
            .map(|&i| &self.workflows[i])
            .filter(|wf| wf.workspace == event.workspace && wf.scope_matches(event))
    }

    /// The webhooks subscribed to this event.
    pub fn webhooks_for<'a>(&'a self, event: &'a Event) -> impl Iterator<Item = &'a Webhook> + 'a {
        self.webhooks
            .iter()
            .filter(|wh| wh.workspace == event.workspace && wh.matches_type(event.kind.name))
    }

    /// The template context for an event (no secrets: triggers may not read them).
    pub fn trigger_context<'a>(event: &'a Event) -> Context<'a> {
        Context {
            event: &event.body,
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

    /// Whether the trigger's `if` holds.
    pub fn condition_holds(&self, ctx: &Context<'_>) -> Result<bool, TemplateError> {
        match &self.condition {
            Some(condition) => condition.eval(ctx),
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

impl Problem {
    fn new(
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

fn collect_files(path: &Path, files: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
    if path.is_file() {
        files.push(path.to_path_buf());
        return;
    }
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            found.sort();
            files.extend(found);
        }
        Err(e) => problems.push(Problem::error(
            path,
            None,
            None,
            format!("workflows.paths entry cannot be read: {e}"),
        )),
    }
}

fn compile_workflow(
    file: &Path,
    def: &WorkflowDef,
    engine: &Engine,
    catalog: &Catalog,
    problems: &mut Vec<Problem>,
) -> Option<Workflow> {
    let before = problems.len();
    let wf = Some(def.id.as_str());
    let err = |problems: &mut Vec<Problem>, action: Option<&str>, message: String| {
        problems.push(Problem::error(file, wf, action, message));
    };
    if def.id.trim().is_empty() {
        err(problems, None, "workflow id is empty".into());
    }
    let mut types: Vec<&'static EventType> = Vec::new();
    for name in def.trigger.event.to_vec() {
        match event::lookup_type(&name) {
            Some(kind) if kind.trigger => types.push(kind),
            Some(kind) => err(
                problems,
                None,
                format!(
                    "{} can feed webhooks but not trigger workflows; triggers are: {}",
                    kind.name,
                    trigger_names()
                ),
            ),
            None => err(
                problems,
                None,
                format!(
                    "unknown event type {name:?}; triggers are: {}",
                    trigger_names()
                ),
            ),
        }
    }
    let scope = match &def.trigger.scope {
        None => Scope::Workspace,
        Some(s) => match (&s.card, &s.site) {
            (Some(card), None) => Scope::Card(card.clone()),
            (None, Some(site)) => Scope::Site(site.clone()),
            (None, None) => Scope::Workspace,
            (Some(_), Some(_)) => {
                err(
                    problems,
                    None,
                    "scope takes a card or a site, not both".into(),
                );
                Scope::Workspace
            }
        },
    };
    let condition = def.trigger.condition.as_deref().and_then(|src| {
        engine
            .condition(src)
            .map_err(|e| err(problems, None, format!("trigger if: {e}")))
            .ok()
    });
    if let Some(c) = &condition {
        variables::check(
            file,
            wf,
            None,
            "trigger if",
            c.variables(),
            &types,
            &HashSet::new(),
            false,
            problems,
        );
    }

    // Index and dependency graph first, so that `needs` and `steps.X` can be checked.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, action) in def.actions.iter().enumerate() {
        if index.insert(action.id.as_str(), i).is_some() {
            err(
                problems,
                Some(&action.id),
                "action id is used twice in this workflow".into(),
            );
        }
    }
    if def.actions.is_empty() {
        err(
            problems,
            None,
            "a workflow needs at least one action".into(),
        );
    }
    let mut needs: Vec<Option<usize>> = vec![None; def.actions.len()];
    for (i, action) in def.actions.iter().enumerate() {
        let wanted = action
            .needs
            .as_ref()
            .map(OneOrMany::to_vec)
            .unwrap_or_default();
        match wanted.as_slice() {
            [] => {}
            [one] => match index.get(one.as_str()) {
                Some(&j) if j != i => needs[i] = Some(j),
                Some(_) => err(
                    problems,
                    Some(&action.id),
                    "an action cannot need itself".into(),
                ),
                None => err(
                    problems,
                    Some(&action.id),
                    format!("needs unknown action {one:?}"),
                ),
            },
            _ => err(
                problems,
                Some(&action.id),
                "needs names one action; chain several (a → b → c) instead".into(),
            ),
        }
    }
    // Cycle check: follow `needs` from each action; more steps than actions means a loop.
    for (i, action) in def.actions.iter().enumerate() {
        let mut at = needs[i];
        let mut steps = 0;
        while let Some(j) = at {
            steps += 1;
            if j == i || steps > def.actions.len() {
                err(
                    problems,
                    Some(&action.id),
                    "needs forms a cycle; every chain must start at an action without needs".into(),
                );
                break;
            }
            at = needs[j];
        }
    }
    if problems.len() > before {
        return None;
    }

    let mut actions = Vec::with_capacity(def.actions.len());
    for (i, action) in def.actions.iter().enumerate() {
        // The outputs an action can read: its whole `needs` chain.
        let mut prerequisites = HashSet::new();
        let mut at = needs[i];
        while let Some(j) = at {
            prerequisites.insert(def.actions[j].id.clone());
            at = needs[j];
        }
        let scope = ActionScope {
            file,
            workflow: &def.id,
            action: &action.id,
            types: &types,
            prerequisites: &prerequisites,
            workspace: &def.workspace,
            connections: &catalog.connections,
        };
        let condition = action.condition.as_deref().and_then(|src| {
            engine
                .condition(src)
                .map_err(|e| err(problems, Some(&action.id), format!("if: {e}")))
                .ok()
        });
        if let Some(c) = &condition {
            scope.check_variables("if", c.variables(), false, problems);
        }
        let Some(spec) = ActionSpec::compile(action, engine, &scope, problems) else {
            continue;
        };
        actions.push(Action {
            id: action.id.clone(),
            needs: needs[i],
            dependents: Vec::new(),
            condition,
            spec,
        });
    }
    if problems
        .iter()
        .skip(before)
        .any(|p| p.severity == Severity::Error)
    {
        return None;
    }
    for i in 0..actions.len() {
        if let Some(j) = actions[i].needs {
            actions[j].dependents.push(i);
        }
    }
    Some(Workflow {
        id: def.id.clone(),
        workspace: def.workspace.clone(),
        types: types.iter().map(|t| t.name).collect(),
        scope,
        condition,
        actions,
        file: file.to_path_buf(),
    })
}

/// The kind of address a literal URL names when the private-network guard blocks it by default.
fn blocked_by_default(url: &url::Url) -> Option<&'static str> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => crate::net::forbidden(ip.into()),
        Some(url::Host::Ipv6(ip)) => crate::net::forbidden(ip.into()),
        Some(url::Host::Domain(name)) if name.eq_ignore_ascii_case("localhost") => Some("loopback"),
        _ => None,
    }
}

/// What an action's compiler needs to know to check and report.
pub struct ActionScope<'a> {
    /// The file.
    pub file: &'a Path,
    /// The workflow id.
    pub workflow: &'a str,
    /// The action id.
    pub action: &'a str,
    /// The trigger's types, for variable checks.
    pub types: &'a [&'static EventType],
    /// Action ids whose output `steps.X` may read.
    pub prerequisites: &'a HashSet<String>,
    /// The workflow's workspace (connections must belong to it).
    pub workspace: &'a str,
    /// Every connection.
    pub connections: &'a HashMap<String, Connection>,
}

impl ActionScope<'_> {
    /// Records an error about this action.
    pub fn error(&self, problems: &mut Vec<Problem>, message: impl Into<String>) {
        problems.push(Problem::error(
            self.file,
            Some(self.workflow),
            Some(self.action),
            message,
        ));
    }

    /// Warns when a literal URL points at an address the private-network guard blocks by default.
    pub fn warn_if_blocked(&self, url: &url::Url, problems: &mut Vec<Problem>) {
        if let Some(kind) = blocked_by_default(url) {
            problems.push(Problem::new(
                Severity::Warning,
                self.file,
                Some(self.workflow),
                Some(self.action),
                format!(
                    "{url} is a {kind} address: calls to it are blocked unless http.allow_networks covers it"
                ),
            ));
        }
    }

    /// Compiles a string setting, recording a problem when it does not parse.
    pub fn text(
        &self,
        engine: &Engine,
        what: &str,
        src: &str,
        secrets_allowed: bool,
        problems: &mut Vec<Problem>,
    ) -> Option<TextTemplate> {
        match engine.text(src) {
            Ok(t) => {
                self.check_variables(what, t.variables(), secrets_allowed, problems);
                Some(t)
            }
            Err(e) => {
                self.error(problems, format!("{what}: {e}"));
                None
            }
        }
    }

    /// Checks the variables a setting reads.
    pub fn check_variables(
        &self,
        what: &str,
        vars: &[Vec<String>],
        secrets_allowed: bool,
        problems: &mut Vec<Problem>,
    ) {
        variables::check(
            self.file,
            Some(self.workflow),
            Some(self.action),
            what,
            vars,
            self.types,
            self.prerequisites,
            secrets_allowed,
            problems,
        );
    }
}

fn compile_webhook(
    file: &Path,
    def: &WebhookDef,
    engine: &Engine,
    problems: &mut Vec<Problem>,
) -> Option<Webhook> {
    let before = problems.len();
    let wh = Some(def.id.as_str());
    let patterns = def.events.to_vec();
    for pattern in &patterns {
        let known = pattern == "*"
            || pattern
                .strip_suffix('*')
                .map(|prefix| event::CATALOG.iter().any(|t| t.name.starts_with(prefix)))
                .unwrap_or_else(|| event::lookup_type(pattern).is_some());
        if !known {
            problems.push(Problem::error(
                file,
                wh,
                None,
                format!("event pattern {pattern:?} matches no type in the catalog"),
            ));
        }
    }
    let url = engine
        .text(&def.url)
        .map_err(|e| problems.push(Problem::error(file, wh, None, format!("url: {e}"))))
        .ok();
    // A literal URL is checked like an http action's: http or https only, and a warning when the
    // guard blocks it by default.
    if let Some(literal) = url.as_ref().and_then(TextTemplate::literal) {
        match url::Url::parse(literal.trim()) {
            Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => {
                problems.push(Problem::error(
                    file,
                    wh,
                    None,
                    format!(
                        "url: scheme {} is not allowed; use http or https",
                        parsed.scheme()
                    ),
                ));
            }
            Ok(parsed) => {
                if let Some(kind) = blocked_by_default(&parsed) {
                    problems.push(Problem::new(
                        Severity::Warning,
                        file,
                        wh,
                        None,
                        format!(
                            "{parsed} is a {kind} address: calls to it are blocked unless http.allow_networks covers it"
                        ),
                    ));
                }
            }
            Err(e) => problems.push(Problem::error(
                file,
                wh,
                None,
                format!("url: {literal:?} is not a URL: {e}"),
            )),
        }
    }
    let secrets: Vec<TextTemplate> = def
        .secret
        .as_ref()
        .map(OneOrMany::to_vec)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| {
            engine
                .text(s)
                .map_err(|e| problems.push(Problem::error(file, wh, None, format!("secret: {e}"))))
                .ok()
        })
        .collect();
    let legacy = match def.format.as_deref() {
        None | Some("standard") => false,
        Some("legacy") => true,
        Some(other) => {
            problems.push(Problem::error(
                file,
                wh,
                None,
                format!("format {other:?} is unknown; use standard or legacy"),
            ));
            false
        }
    };
    if problems
        .iter()
        .skip(before)
        .any(|p| p.severity == Severity::Error)
    {
        return None;
    }
    Some(Webhook {
        id: def.id.clone(),
        workspace: def.workspace.clone(),
        patterns,
        url: url?,
        secrets,
        legacy,
        file: file.to_path_buf(),
    })
}

fn trigger_names() -> String {
    event::CATALOG
        .iter()
        .filter(|t| t.trigger)
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}
