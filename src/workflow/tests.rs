//! Workflow compilation: what a set of files compiles to, and every problem it reports.

use super::*;

const EVENT: &str = r#"{
  "id": "evt_1", "type": "Gameplay.DataCaptured", "occurred_at": "2026-11-26T18:00:00Z",
  "workspace": { "id": "ws_demo" }, "card": { "id": "card_42" }, "site": { "id": "site_9" },
  "contact": { "email": "ana@example.com" }, "gameplay": { "score": 120 }
}"#;

/// One workflow of `ws_demo` on `Gameplay.DataCaptured` with these actions.
fn workflow(extra_trigger: &str, actions: &str) -> String {
    format!(
        "workflows:\n  - id: wf\n    workspace: ws_demo\n    trigger: {{ event: Gameplay.DataCaptured{extra_trigger} }}\n    actions:\n{actions}"
    )
}

/// An http action with an id and optional extra keys.
fn http(id: &str, extra: &str) -> String {
    format!(
        "      - id: {id}\n{extra}        http: {{ method: POST, url: \"https://crm.example.com/{id}\", body: \"{{}}\" }}\n"
    )
}

fn errors(problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .filter(|p| p.severity != Severity::Warning)
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_workflow_compiles_to_its_types_scope_and_needs_graph() {
    let actions = [
        http("find", ""),
        http("update", "        needs: find\n"),
        http("notify", "        needs: update\n"),
        http("other", ""),
    ]
    .concat();
    let (catalog, problems) = compile_yaml(&workflow(", scope: { card: card_42 }", &actions));
    assert!(errors(&problems).is_empty(), "{problems:#?}");
    let wf = catalog.workflow("wf").expect("wf is loaded");
    assert_eq!(wf.types, ["Gameplay.DataCaptured"]);
    assert_eq!(wf.scope, Scope::Card("card_42".into()));
    let roots: Vec<&str> = wf.roots().map(|a| a.id.as_str()).collect();
    assert_eq!(roots, ["find", "other"]);
    let (find, _) = wf.action("find").expect("find exists");
    let chain: Vec<&str> = wf
        .with_dependents(find)
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(chain, ["find", "update", "notify"]);
    let (_, update) = wf.action("update").expect("update exists");
    assert_eq!(update.needs, Some(find));

    let event = Event::parse(EVENT.as_bytes(), 1 << 20).expect("the test event is valid");
    assert!(wf.scope_matches(&event));
    assert_eq!(catalog.candidates(&event).count(), 1);
}

#[test]
fn scopes_and_trigger_conditions_select_events() {
    let event = Event::parse(EVENT.as_bytes(), 1 << 20).expect("the test event is valid");
    let cases = [
        (", scope: { card: card_42 }", true, Ok(true)),
        (", scope: { card: card_7 }", false, Ok(true)),
        (", scope: { site: site_9 }", true, Ok(true)),
        (", if: \"gameplay.score > 100\"", true, Ok(true)),
        (", if: \"gameplay.score > 500\"", true, Ok(false)),
        (", if: \"contact.email.domain == 1\"", true, Err(())),
    ];
    for (trigger, in_scope, holds) in cases {
        let (catalog, problems) = compile_yaml(&workflow(trigger, &http("post", "")));
        assert!(errors(&problems).is_empty(), "{trigger}: {problems:#?}");
        let wf = catalog.workflow("wf").expect("wf is loaded");
        assert_eq!(wf.scope_matches(&event), in_scope, "{trigger}");
        assert_eq!(
            wf.condition_holds(&event).map_err(|_| ()),
            holds,
            "{trigger}"
        );
    }
}

#[test]
fn every_problem_is_reported_with_its_place() {
    let cases: Vec<(String, &str)> = vec![
        (
            workflow("", &[http("a", ""), http("a", "")].concat()),
            "workflow wf, action a: action id is used twice in this workflow",
        ),
        (
            workflow("", &http("a", "        needs: ghost\n")),
            "needs unknown action \"ghost\"",
        ),
        (
            workflow("", &http("a", "        needs: a\n")),
            "an action cannot need itself",
        ),
        (
            workflow(
                "",
                &[
                    http("a", "        needs: b\n"),
                    http("b", "        needs: a\n"),
                ]
                .concat(),
            ),
            "needs forms a cycle",
        ),
        (
            workflow(", scope: { card: c, site: s }", &http("a", "")),
            "scope takes a card or a site, not both",
        ),
        (
            workflow(", if: \"{% if %}\"", &http("a", "")),
            "trigger if:",
        ),
        (
            "workflows:\n  - id: wf\n    workspace: ws_demo\n    trigger: { event: Nope.Nothing }\n    actions:\n".to_owned()
                + &http("a", ""),
            "unknown event type \"Nope.Nothing\"",
        ),
        (
            workflow("", "      - id: a\n"),
            "names no action kind; use one of http, salesforce, mailchimp, braze",
        ),
        (
            workflow(
                "",
                "      - id: a\n        http: { url: \"https://x.example.com\" }\n        braze: { connection: b }\n",
            ),
            "names several action kinds (http, braze); use one per action",
        ),
        (
            workflow("", &http("a", "        if: \"steps.b.id == 1\"\n")),
            "if:",
        ),
    ];
    for (yaml, want) in cases {
        let (catalog, problems) = compile_yaml(&yaml);
        let errors = errors(&problems);
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{want:?} not in {errors:#?}\n{yaml}"
        );
        assert!(
            catalog.workflow("wf").is_none(),
            "a workflow with errors is not loaded: {yaml}"
        );
    }
}

#[test]
fn webhooks_match_type_patterns() {
    let cases = [
        ("*", "Gameplay.DataCaptured", true),
        ("Gameplay.*", "Gameplay.DataCaptured", true),
        ("Prize.*", "Gameplay.DataCaptured", false),
        ("Gameplay.DataCaptured", "Gameplay.DataCaptured", true),
        ("Gameplay.Data", "Gameplay.DataCaptured", false),
    ];
    for (pattern, type_name, want) in cases {
        assert_eq!(
            type_matches(pattern, type_name),
            want,
            "{pattern} {type_name}"
        );
    }
}

#[test]
fn a_folder_loads_file_by_file_with_connections_from_any_file_and_each_problem_once() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("write a workflow file");
    };
    // `a.yaml` is compiled first and uses the connection that `b.yaml` defines; its webhook's
    // loopback URL is a warning.
    let tag = "workflows:\n  - id: tag\n    workspace: ws_demo\n    trigger: { event: Prize.Won }\n    actions:\n      - id: t\n        mailchimp: { connection: mc-main, tag: { list: a1b2c3, email: \"{{ contact.email }}\", tags: [winner] } }\nwebhooks:\n  - { id: hook, workspace: ws_demo, url: \"http://127.0.0.1:9/hook\", events: [\"*\"] }\n";
    let connection = |workspace: &str| {
        format!(
            "connections:\n  - id: mc-main\n    workspace: {workspace}\n    mailchimp: {{ api_key: \"{{{{ secrets.MC_KEY }}}}\" }}\n"
        )
    };
    write("a.yaml", tag);
    write("b.yaml", &connection("ws_demo"));
    write("c.yaml", "workflows: [ { id: broken\n");
    write("d.yaml", "connections: []\nwokflows: []\n");
    let secrets = |key: &str| HashMap::from([("MC_KEY".to_owned(), key.to_owned())]);
    let load = |key: &str, previous: Option<&Catalog>| {
        Catalog::load(
            &[dir.path().to_path_buf()],
            secrets(key),
            &Engine::new(),
            &Guard::default(),
            previous,
        )
    };

    let (catalog, problems) = load("0123456789abcdef-us6", None);
    assert!(catalog.is_none(), "two files do not parse");
    let found = errors(&problems);
    assert_eq!(found.len(), 2, "one problem per bad file: {found:#?}");
    assert!(found[0].contains("c.yaml"), "{found:#?}");
    assert!(
        found[1].contains("d.yaml") && found[1].contains("wokflows"),
        "{found:#?}"
    );

    std::fs::remove_file(dir.path().join("c.yaml")).expect("remove c.yaml");
    std::fs::remove_file(dir.path().join("d.yaml")).expect("remove d.yaml");
    let warned = |problems: &[Problem]| {
        problems
            .iter()
            .filter(|p| p.severity == Severity::Warning && p.to_string().contains("loopback"))
            .count()
    };
    let (first, problems) = load("0123456789abcdef-us6", None);
    assert!(errors(&problems).is_empty(), "{problems:#?}");
    assert_eq!(warned(&problems), 1, "{problems:#?}");
    let first = first.expect("the folder loads");
    assert!(first.workflow("tag").is_some() && first.webhook("hook").is_some());
    assert!(first.connections.contains_key("mc-main"));

    // A reload of unchanged files keeps the compiled workflows, and says their warnings again.
    let (second, problems) = load("0123456789abcdef-us6", Some(&first));
    let second = second.expect("the same folder loads again");
    assert!(Arc::ptr_eq(&first.workflows[0], &second.workflows[0]));
    assert!(Arc::ptr_eq(&first.webhooks[0], &second.webhooks[0]));
    assert_eq!(warned(&problems), 1, "{problems:#?}");

    // A changed file, changed secrets or a changed connection elsewhere: compiled again.
    write("a.yaml", &format!("# edited\n{tag}"));
    let (third, _) = load("0123456789abcdef-us6", Some(&second));
    let third = third.expect("the edited folder loads");
    assert!(!Arc::ptr_eq(&second.workflows[0], &third.workflows[0]));
    let (fourth, _) = load("fedcba9876543210-us7", Some(&third));
    let fourth = fourth.expect("new secrets load");
    assert!(!Arc::ptr_eq(&third.workflows[0], &fourth.workflows[0]));
    write("b.yaml", &connection("ws_other"));
    let (fifth, problems) = load("fedcba9876543210-us7", Some(&fourth));
    assert!(
        fifth.is_none(),
        "a.yaml is compiled again against the moved connection: {problems:#?}"
    );
    assert!(
        errors(&problems)
            .iter()
            .any(|e| e.contains("a.yaml") && e.contains("mc-main")),
        "{problems:#?}"
    );
}

/// What a worker parses of an event up front for each action: the fields its templates and its
/// `if` name, besides those it always reads.
#[test]
fn an_action_knows_the_event_fields_it_names() {
    let actions = [
        "      - id: post\n        if: \"gameplay.score > 1\"\n        http: { method: POST, url: \"https://crm.example.com/{{ site.id }}\", headers: { X-Card: \"{{ card.name }}\" }, body: '{\"e\": \"{{ contact.email }}\", \"id\": \"{{ event.id }}\"}' }\n",
        &http("plain", ""),
    ]
    .concat();
    let (catalog, problems) = compile_yaml(&workflow("", &actions));
    assert!(errors(&problems).is_empty(), "{problems:#?}");
    let wf = catalog.workflow("wf").expect("wf is loaded");
    let names = |id: &str| -> Vec<String> {
        let (_, action) = wf.action(id).expect("the action");
        action.event_fields.iter().map(|n| n.to_string()).collect()
    };
    assert_eq!(names("post"), ["card", "gameplay", "site"]);
    assert!(names("plain").is_empty());
}
