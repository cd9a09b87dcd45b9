//! Checks the variables a template reads against what the trigger's event types carry, so that
//! typos are caught by `validate` before they ship (SPEC §3).

use std::collections::HashSet;
use std::path::Path;

use super::problem::{Problem, Severity};
use crate::event::{COMMON_FIELDS, EventType, TYPED_FIELDS};

/// Records a problem for every variable in `vars` that cannot resolve for `types`.
#[allow(clippy::too_many_arguments)]
pub fn check(
    file: &Path,
    workflow: Option<&str>,
    action: Option<&str>,
    what: &str,
    vars: &[Vec<String>],
    types: &[&'static EventType],
    prerequisites: &HashSet<String>,
    secrets_allowed: bool,
    problems: &mut Vec<Problem>,
) {
    let mut push = |severity, message: String| {
        problems.push(Problem {
            file: file.to_path_buf(),
            workflow: workflow.map(str::to_owned),
            action: action.map(str::to_owned),
            message: format!("{what}: {message}"),
            severity,
        });
    };
    for path in vars {
        let Some(root) = path.first() else { continue };
        let child = path.get(1).map(String::as_str);
        let dotted = path.join(".");
        match root.as_str() {
            "secrets" if !secrets_allowed => push(
                Severity::Error,
                format!(
                    "{dotted}: secrets may appear only in auth, headers, url and connection \
                     settings, so that they never reach a body, a log or the dead-letter queue"
                ),
            ),
            "secrets" => {}
            "steps" => match child {
                Some(step) if prerequisites.contains(step) => {}
                Some(step) => push(
                    Severity::Error,
                    format!(
                        "{dotted} reads the output of {step}, which this action does not need; \
                         add `needs: {step}` (directly or through its chain)"
                    ),
                ),
                None => {}
            },
            "event" => {
                if let Some(field) = child
                    && !["id", "type", "occurred_at"].contains(&field)
                {
                    push(
                        Severity::Lint,
                        format!("{dotted}: event has id, type and occurred_at only"),
                    );
                }
            }
            name => {
                if let Some((_, keys)) = COMMON_FIELDS.iter().find(|(n, _)| *n == name) {
                    check_key(name, child, *keys, &dotted, &mut push);
                } else if let Some((_, keys)) = TYPED_FIELDS.iter().find(|(n, _)| *n == name) {
                    let carried =
                        types.is_empty() || types.iter().any(|t| t.carries.contains(&name));
                    if carried {
                        check_key(name, child, *keys, &dotted, &mut push);
                    } else {
                        push(
                            Severity::Lint,
                            format!("{dotted}: {} events never carry {name}", type_list(types)),
                        );
                    }
                } else {
                    push(
                        Severity::Lint,
                        format!(
                            "{dotted}: {name} is not a field of {} events (a typo?)",
                            type_list(types)
                        ),
                    );
                }
            }
        }
    }
}

fn check_key(
    name: &str,
    child: Option<&str>,
    keys: Option<&[&str]>,
    dotted: &str,
    push: &mut impl FnMut(Severity, String),
) {
    let (Some(child), Some(keys)) = (child, keys) else {
        return;
    };
    if !keys.contains(&child) && !["size", "first", "last"].contains(&child) {
        push(
            Severity::Lint,
            format!(
                "{dotted}: {name} has no field {child} (known: {})",
                keys.join(", ")
            ),
        );
    }
}

fn type_list(types: &[&EventType]) -> String {
    if types.is_empty() {
        return "these".into();
    }
    types.iter().map(|t| t.name).collect::<Vec<_>>().join(" / ")
}
