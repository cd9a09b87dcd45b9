//! The router's plan: which action messages an event produces, as a pure function of the
//! catalog and the event. The router publishes what the plan says; the worker plans a
//! succeeded action's dependents the same way.

use serde_json::Value;

use crate::broker::message::{ActionMessageRef, EventJson, action_id};
use crate::connectors::ConnectorKind;
use crate::event::Event;
use crate::template::TemplateError;
use crate::workflow::{Action, Catalog, Workflow};

/// The action id webhook deliveries use.
pub const WEBHOOK_ACTION: &str = "deliver";

/// One action message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned<'a> {
    /// The stable action id (`act_…`).
    pub id: String,
    /// The workflow, for a workflow action.
    pub workflow: Option<&'a str>,
    /// The webhook, for a webhook delivery.
    pub webhook: Option<&'a str>,
    /// The action id within its workflow ([`WEBHOOK_ACTION`] for a webhook).
    pub action: &'a str,
    /// The connector: the routing key and action queue.
    pub connector: &'static str,
}

impl Planned<'_> {
    /// The action message, over the event it belongs to and the outputs of earlier steps.
    pub fn message<'m>(
        &'m self,
        workspace: &'m str,
        event: EventJson<'m>,
        steps: Option<&'m Value>,
    ) -> ActionMessageRef<'m> {
        ActionMessageRef {
            id: &self.id,
            workflow: self.workflow,
            webhook: self.webhook,
            action: self.action,
            connector: self.connector,
            workspace,
            event,
            steps,
        }
    }
}

/// A candidate workflow whose trigger `if` kept it from running.
#[derive(Debug)]
pub struct NotRun<'a> {
    /// The workflow.
    pub workflow: &'a str,
    /// Why: `None` when the condition is false, the error when it failed to evaluate.
    pub error: Option<TemplateError>,
}

/// What an event produces.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// The messages to publish, in order: each matching workflow's root actions, then the
    /// webhook deliveries.
    pub actions: Vec<Planned<'a>>,
    /// Candidate workflows whose trigger condition did not hold (for the logs).
    pub not_run: Vec<NotRun<'a>>,
}

/// Plans one event: the root actions of every candidate workflow whose trigger `if` holds,
/// then one delivery per matching webhook.
pub fn plan<'a>(catalog: &'a Catalog, event: &'a Event) -> Plan<'a> {
    let mut plan = Plan::default();
    for workflow in catalog.candidates(event) {
        match workflow.condition_holds(event) {
            Ok(true) => {}
            Ok(false) => {
                plan.not_run.push(NotRun {
                    workflow: &workflow.id,
                    error: None,
                });
                continue;
            }
            Err(error) => {
                plan.not_run.push(NotRun {
                    workflow: &workflow.id,
                    error: Some(error),
                });
                continue;
            }
        }
        plan.actions.extend(
            workflow
                .roots()
                .map(|action| workflow_action(&event.id, workflow, action)),
        );
    }
    for webhook in catalog.webhooks_for(event) {
        plan.actions.push(Planned {
            id: action_id(&event.id, &webhook.id, WEBHOOK_ACTION),
            workflow: None,
            webhook: Some(&webhook.id),
            action: WEBHOOK_ACTION,
            connector: ConnectorKind::Webhook.name(),
        });
    }
    plan
}

/// The messages of the actions that need `action`, once it succeeded.
pub fn dependents<'a>(event_id: &str, workflow: &'a Workflow, action: &Action) -> Vec<Planned<'a>> {
    action
        .dependents
        .iter()
        .filter_map(|&index| workflow.actions.get(index))
        .map(|next| workflow_action(event_id, workflow, next))
        .collect()
}

fn workflow_action<'a>(event_id: &str, workflow: &'a Workflow, action: &'a Action) -> Planned<'a> {
    Planned {
        id: action_id(event_id, &workflow.id, &action.id),
        workflow: Some(&workflow.id),
        webhook: None,
        action: &action.id,
        connector: action.spec.connector(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::compile_yaml;

    const EVENT: &str = r#"{
      "id": "evt_1", "type": "Gameplay.DataCaptured", "occurred_at": "2026-11-26T18:00:00Z",
      "workspace": { "id": "ws_demo" }, "card": { "id": "card_42" },
      "contact": { "email": "ana@example.com" }, "gameplay": { "score": 120 }
    }"#;

    const FILES: &str = r#"
workflows:
  - id: crm
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - id: post
        http: { method: POST, url: "https://crm.example.com/leads", body: "{}" }
      - id: after
        needs: post
        http: { method: POST, url: "https://crm.example.com/after", body: "{}" }
      - id: also
        http: { method: POST, url: "https://crm.example.com/also", body: "{}" }
  - id: high-scores
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured, if: "gameplay.score > 500" }
    actions:
      - id: post
        http: { method: POST, url: "https://crm.example.com/high", body: "{}" }
  - id: other-card
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured, scope: { card: card_7 } }
    actions:
      - id: post
        http: { method: POST, url: "https://crm.example.com/card", body: "{}" }
  - id: broken-if
    workspace: ws_demo
    trigger: { event: Gameplay.DataCaptured, if: "contact.email.domain == 1" }
    actions:
      - id: post
        http: { method: POST, url: "https://crm.example.com/broken", body: "{}" }
  - id: other-workspace
    workspace: ws_other
    trigger: { event: Gameplay.DataCaptured }
    actions:
      - id: post
        http: { method: POST, url: "https://crm.example.com/other", body: "{}" }
webhooks:
  - id: everything
    workspace: ws_demo
    events: ["*"]
    url: https://hooks.example.com/in
  - id: prizes
    workspace: ws_demo
    events: ["Prize.*"]
    url: https://hooks.example.com/prizes
"#;

    fn catalog() -> Catalog {
        let (catalog, problems) = compile_yaml(FILES);
        assert!(problems.is_empty(), "{problems:#?}");
        catalog
    }

    #[test]
    fn an_event_plans_the_roots_of_matching_workflows_then_the_webhooks() {
        let catalog = catalog();
        let event = Event::parse(EVENT.as_bytes(), 1 << 20).expect("the test event is valid");
        let plan = plan(&catalog, &event);
        let got: Vec<(Option<&str>, Option<&str>, &str, &str)> = plan
            .actions
            .iter()
            .map(|p| (p.workflow, p.webhook, p.action, p.connector))
            .collect();
        assert_eq!(
            got,
            [
                (Some("crm"), None, "post", "http"),
                (Some("crm"), None, "also", "http"),
                (None, Some("everything"), WEBHOOK_ACTION, "webhook"),
            ]
        );
        assert_eq!(plan.actions[0].id, action_id("evt_1", "crm", "post"));
        let not_run: Vec<(&str, bool)> = plan
            .not_run
            .iter()
            .map(|n| (n.workflow, n.error.is_some()))
            .collect();
        assert_eq!(not_run, [("high-scores", false), ("broken-if", true)]);
    }

    /// The router reads only an event's routing fields unless a candidate has an `if`.
    #[test]
    fn only_a_trigger_condition_builds_the_event_tree() {
        let end = FILES
            .find("  - id: high-scores")
            .expect("the second workflow");
        let (unconditional, problems) = compile_yaml(&FILES[..end]);
        assert!(problems.is_empty(), "{problems:#?}");
        let event = Event::parse(EVENT.as_bytes(), 1 << 20).expect("the test event is valid");
        assert_eq!(plan(&unconditional, &event).actions.len(), 2);
        assert!(!event.tree_built());
        assert_eq!(plan(&catalog(), &event).not_run.len(), 2);
        assert!(event.tree_built());
    }

    #[test]
    fn a_succeeded_action_plans_its_dependents() {
        let catalog = catalog();
        let workflow = catalog.workflow("crm").expect("crm is loaded");
        let (_, post) = workflow.action("post").expect("post exists");
        let next = dependents("evt_1", workflow, post);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].action, "after");
        assert_eq!(next[0].id, action_id("evt_1", "crm", "after"));
        let (_, also) = workflow.action("also").expect("also exists");
        assert!(dependents("evt_1", workflow, also).is_empty());
    }
}
