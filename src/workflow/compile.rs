//! Compiling the workflow files: collecting them, then each workflow (trigger, actions, the
//! `needs` graph) and each webhook, with every problem located.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::def::{OneOrMany, WebhookDef, WorkflowDef};
use super::scope::blocked_by;
use super::{Action, ActionScope, Catalog, Problem, Scope, Severity, Webhook, Workflow, variables};
use crate::connectors::ActionSpec;
use crate::event::{self, EventType};
use crate::net::Guard;
use crate::template::{Engine, PartialEvent, TextTemplate};

pub(super) fn collect_files(path: &Path, files: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
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

pub(super) fn compile_workflow(
    file: &Arc<Path>,
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
            guard: &catalog.guard,
            reads: Default::default(),
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
        let mut event_fields = scope.reads.take();
        event_fields.sort_unstable();
        event_fields.dedup();
        event_fields.retain(|name| !PartialEvent::ALWAYS.contains(&&**name));
        actions.push(Action {
            id: action.id.clone(),
            needs: needs[i],
            dependents: Vec::new(),
            condition,
            spec,
            event_fields: event_fields.into_boxed_slice(),
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
        file: file.clone(),
    })
}

pub(super) fn compile_webhook(
    file: &Arc<Path>,
    def: &WebhookDef,
    engine: &Engine,
    guard: &Guard,
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
                if let Some(kind) = blocked_by(guard, &parsed) {
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
        file: file.clone(),
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
