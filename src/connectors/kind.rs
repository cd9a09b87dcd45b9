//! The one list of connectors. Everything that names a connector (its action queue, the default
//! `worker.connectors`, config validation, metric labels, the dead-letter header, the YAML section
//! of an action, the `connections:` kinds) goes through [`ConnectorKind`], so adding one is a
//! variant here and the match arms the compiler then asks for (docs/ARCHITECTURE.md lists them).
//!
//! This module imports nothing from the crate: every other room may depend on it.

use std::fmt;

/// A connector: one action queue, one folder under `src/connectors/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectorKind {
    /// `http:` actions: a custom request to any REST API.
    Http,
    /// Webhook subscriptions (`webhooks:`), signed deliveries.
    Webhook,
    /// The Salesforce connected app.
    Salesforce,
    /// The Mailchimp connected app.
    Mailchimp,
    /// The Braze connected app.
    Braze,
}

impl ConnectorKind {
    /// Every connector, in queue order (the order `worker.connectors` defaults to).
    pub const ALL: [ConnectorKind; 5] = [
        ConnectorKind::Http,
        ConnectorKind::Webhook,
        ConnectorKind::Salesforce,
        ConnectorKind::Mailchimp,
        ConnectorKind::Braze,
    ];

    /// The name in queue names (`<prefix>.action.<name>`), routing keys, configuration, metric
    /// labels and the `x-switchyard-connector` header (SPEC names: never change one).
    pub const fn name(self) -> &'static str {
        match self {
            ConnectorKind::Http => "http",
            ConnectorKind::Webhook => "webhook",
            ConnectorKind::Salesforce => "salesforce",
            ConnectorKind::Mailchimp => "mailchimp",
            ConnectorKind::Braze => "braze",
        }
    }

    /// The connector of a name, if it is one.
    pub fn from_name(name: &str) -> Option<ConnectorKind> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Whether a workflow action names it by a section of its own (`http: {…}`,
    /// `salesforce: {…}`); webhooks are subscriptions, not actions.
    pub const fn is_action(self) -> bool {
        match self {
            ConnectorKind::Http
            | ConnectorKind::Salesforce
            | ConnectorKind::Mailchimp
            | ConnectorKind::Braze => true,
            ConnectorKind::Webhook => false,
        }
    }

    /// Whether it is a connected app: credentials in a `connections:` entry of this kind.
    pub const fn is_app(self) -> bool {
        match self {
            ConnectorKind::Salesforce | ConnectorKind::Mailchimp | ConnectorKind::Braze => true,
            ConnectorKind::Http | ConnectorKind::Webhook => false,
        }
    }

    /// Every name, for metric label sets.
    pub fn names() -> [&'static str; 5] {
        Self::ALL.map(ConnectorKind::name)
    }

    /// The command-line parser of a `--connector` filter (`dlq`, `runs`): one of the names, which
    /// `--help` lists; any other is refused with the list instead of matching nothing.
    pub fn parser() -> clap::builder::PossibleValuesParser {
        clap::builder::PossibleValuesParser::new(Self::names())
    }

    /// The names of the connectors that pass `filter`, joined for a message ("http, webhook").
    pub fn list(filter: impl Fn(ConnectorKind) -> bool) -> String {
        Self::ALL
            .into_iter()
            .filter(|kind| filter(*kind))
            .map(ConnectorKind::name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for ConnectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_is_listed_once_and_names_round_trip() {
        // A variant missing from ALL would have no queue: `name` is exhaustive, ALL is not, so
        // check that every name maps back to a variant that ALL holds exactly once.
        for kind in ConnectorKind::ALL {
            assert_eq!(ConnectorKind::from_name(kind.name()), Some(kind));
            let count = ConnectorKind::ALL.iter().filter(|k| **k == kind).count();
            assert_eq!(count, 1, "{kind}");
        }
        let variant_count = |kind: ConnectorKind| match kind {
            ConnectorKind::Http
            | ConnectorKind::Webhook
            | ConnectorKind::Salesforce
            | ConnectorKind::Mailchimp
            | ConnectorKind::Braze => 5,
        };
        assert_eq!(ConnectorKind::ALL.len(), variant_count(ConnectorKind::Http));
        assert_eq!(ConnectorKind::from_name("smtp"), None);
    }

    #[test]
    fn lists_for_messages() {
        assert_eq!(
            ConnectorKind::list(|_| true),
            "http, webhook, salesforce, mailchimp, braze"
        );
        assert_eq!(
            ConnectorKind::list(ConnectorKind::is_app),
            "salesforce, mailchimp, braze"
        );
        assert_eq!(
            ConnectorKind::list(ConnectorKind::is_action),
            "http, salesforce, mailchimp, braze"
        );
    }

    #[test]
    fn the_connector_filter_takes_only_connector_names() {
        let command = clap::Command::new("switchyard").arg(
            clap::Arg::new("connector")
                .long("connector")
                .value_parser(ConnectorKind::parser()),
        );
        for kind in ConnectorKind::ALL {
            let matches = command
                .clone()
                .try_get_matches_from(["switchyard", "--connector", kind.name()])
                .expect("a connector's name");
            assert_eq!(
                matches.get_one::<String>("connector").map(String::as_str),
                Some(kind.name())
            );
        }
        let refused = command
            .try_get_matches_from(["switchyard", "--connector", "salesforse"])
            .expect_err("not a connector");
        let message = refused.to_string();
        assert!(message.contains("salesforse"), "{message}");
        assert!(
            message.contains("salesforce"),
            "the names are listed: {message}"
        );
    }
}
