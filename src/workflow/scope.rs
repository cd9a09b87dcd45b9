//! What a connector's compiler receives: the action's [`ActionScope`] (where it is, what it may
//! read, which connections exist) and the [`Connection`]s as written.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use super::problem::{Problem, Severity};
use super::variables;
use crate::event::EventType;
use crate::net::Guard;
use crate::template::{Engine, TextTemplate};

/// A connection as written (the connector that uses it interprets the settings).
#[derive(Debug, Clone, PartialEq)]
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

/// The kind of address a literal URL names when the private-network guard blocks it by default.
/// What kind of blocked address a literal URL names, unless `http.allow_networks` covers it.
/// `localhost` is taken as 127.0.0.1 (the address it resolves to here).
pub(super) fn blocked_by(guard: &Guard, url: &url::Url) -> Option<&'static str> {
    let (host, addr) = match url.host()? {
        url::Host::Ipv4(ip) => (ip.to_string(), IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => (ip.to_string(), IpAddr::V6(ip)),
        url::Host::Domain(name) if name.eq_ignore_ascii_case("localhost") => {
            (name.to_owned(), IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
        url::Host::Domain(_) => return None,
    };
    guard.check(&host, addr).err().map(|blocked| blocked.kind)
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
    /// `http.allow_networks`, for the "blocked" warning.
    pub guard: &'a Guard,
    /// The envelope's top-level fields the action's templates name, as they are checked
    /// ([`crate::template::event_fields`]): what a worker parses of its events up front.
    pub reads: RefCell<Vec<Box<str>>>,
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
        if let Some(kind) = blocked_by(self.guard, url) {
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
        crate::template::event_fields(vars, &mut self.reads.borrow_mut());
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
