//! Where each queue's replicas run, from the RabbitMQ management HTTP API: AMQP does not say.
//!
//! Only `switchyard topology` asks, once per queue, after declaring them. The service never
//! does: nothing on the delivery path depends on the management plugin being enabled.

use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::telemetry::error_chain;

/// How long one request to the management API may take: `topology` must not hang on it.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The management API of a cluster, with the credentials to read it.
pub struct Management {
    /// The API's base URL, without credentials (shown in messages).
    base: url::Url,
    /// User name for HTTP Basic auth.
    user: String,
    /// Its password.
    password: String,
    /// The vhost of the queues.
    vhost: String,
    /// The client, with [`TIMEOUT`].
    client: reqwest::Client,
}

/// Where a queue's replicas are, as RabbitMQ names its nodes (`rabbit@host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The node of the leader (a classic queue: the node it lives on); `None` while it has none.
    pub leader: Option<String>,
    /// Every replica's node (empty for a classic queue).
    pub members: Vec<String>,
}

impl Placement {
    /// ` leader: rabbit@a, members: rabbit@a rabbit@b rabbit@c`.
    pub fn describe(&self) -> String {
        let leader = self.leader.as_deref().unwrap_or("none (electing)");
        match self.members.is_empty() {
            true => format!("  leader: {leader}"),
            false => format!("  leader: {leader}, members: {}", self.members.join(" ")),
        }
    }
}

/// Why the API could not say.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// No answer: the plugin is off, the port is closed, or the request timed out.
    #[error("management API not reachable at {url}: {}", error_chain(.source))]
    Unreachable {
        /// The API's base URL (no credentials).
        url: String,
        /// What the HTTP client said.
        #[source]
        source: reqwest::Error,
    },
    /// It answered, but not with the queue.
    #[error("management API at {url} answered {status}")]
    Status {
        /// The API's base URL (no credentials).
        url: String,
        /// The HTTP status (401: the user may not read it; 404: no such queue).
        status: reqwest::StatusCode,
    },
}

/// Checks `amqp.management_url`.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    match parsed.scheme() {
        "http" | "https" => Ok(()),
        _ => Err("must start with http:// or https://".into()),
    }
}

impl Management {
    /// The API for the node at `amqp_url` (the one a command connected to): `management_url`
    /// when set, else the node's host on port 15672 (https on 15671 for `amqps://`). Credentials
    /// come from `management_url` when it has them, else from `amqp_url`; the vhost from
    /// `amqp_url`.
    pub fn new(management_url: Option<&str>, amqp_url: &str) -> Result<Management, String> {
        let amqp = url::Url::parse(amqp_url).map_err(|e| e.to_string())?;
        let mut base = match management_url {
            Some(url) => url::Url::parse(url).map_err(|e| e.to_string())?,
            None => {
                let (scheme, port) = match amqp.scheme() {
                    "amqps" => ("https", 15671),
                    _ => ("http", 15672),
                };
                let host = amqp.host_str().unwrap_or("localhost");
                url::Url::parse(&format!("{scheme}://{host}:{port}/")).map_err(|e| e.to_string())?
            }
        };
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8_lossy()
                .into_owned()
        };
        let (user, password) = match base.username() {
            "" => (
                decode(amqp.username()),
                decode(amqp.password().unwrap_or("")),
            ),
            user => (decode(user), decode(base.password().unwrap_or(""))),
        };
        // Never shown: the credentials go in a header.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let vhost = match amqp.path().strip_prefix('/').unwrap_or("") {
            "" => "/".to_owned(),
            path => decode(path),
        };
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| error_chain(&e))?;
        Ok(Management {
            base,
            user,
            password,
            vhost,
            client,
        })
    }

    /// The API's base URL, without credentials.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// Where a queue's leader and replicas are (`GET /api/queues/<vhost>/<name>`).
    pub async fn placement(&self, queue: &str) -> Result<Placement, ManagementError> {
        let unreachable = |source| ManagementError::Unreachable {
            url: self.base.to_string(),
            source,
        };
        let url = format!(
            "{}api/queues/{}/{}",
            self.base,
            utf8_percent_encode(&self.vhost, NON_ALPHANUMERIC),
            utf8_percent_encode(queue, NON_ALPHANUMERIC)
        );
        let response = self
            .client
            .get(url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ManagementError::Status {
                url: self.base.to_string(),
                status,
            });
        }
        let body: serde_json::Value = response.json().await.map_err(unreachable)?;
        Ok(placement_of(&body))
    }
}

/// Reads a queue object of the management API: quorum queues have `leader` and `members`,
/// classic queues only `node`.
fn placement_of(queue: &serde_json::Value) -> Placement {
    let text = |key: &str| queue.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    Placement {
        leader: text("leader").or_else(|| text("node")),
        members: queue
            .get("members")
            .and_then(|v| v.as_array())
            .map(|members| {
                members
                    .iter()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_node_on_15672_with_its_credentials_and_vhost() {
        let m = Management::new(None, "amqp://ops:s%40cret@10.0.0.7:5673/prod").expect("builds");
        assert_eq!(m.url(), "http://10.0.0.7:15672/");
        assert_eq!((m.user.as_str(), m.password.as_str()), ("ops", "s@cret"));
        assert_eq!(m.vhost, "prod");
        let m = Management::new(None, "amqps://u:p@rabbit.example.com/%2f").expect("builds");
        assert_eq!(m.url(), "https://rabbit.example.com:15671/");
        assert_eq!(m.vhost, "/");
    }

    #[test]
    fn a_set_url_keeps_its_own_credentials_out_of_sight() {
        let m = Management::new(
            Some("https://admin:hunter2@mgmt.example.com/rabbit"),
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        )
        .expect("builds");
        assert_eq!(m.url(), "https://mgmt.example.com/rabbit/");
        assert_eq!((m.user.as_str(), m.password.as_str()), ("admin", "hunter2"));
        let m = Management::new(
            Some("http://mgmt:15672"),
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        )
        .expect("builds");
        assert_eq!(m.user, "guest", "the AMQP credentials by default");
    }

    #[test]
    fn quorum_and_classic_queues_are_read() {
        let quorum = serde_json::json!({
            "type": "quorum", "leader": "sy-b@localhost", "node": "sy-b@localhost",
            "members": ["sy-a@localhost", "sy-b@localhost", "sy-c@localhost"]
        });
        let placement = placement_of(&quorum);
        assert_eq!(placement.leader.as_deref(), Some("sy-b@localhost"));
        assert_eq!(placement.members.len(), 3);
        assert_eq!(
            placement.describe(),
            "  leader: sy-b@localhost, members: sy-a@localhost sy-b@localhost sy-c@localhost"
        );
        let classic = placement_of(&serde_json::json!({ "type": "classic", "node": "rabbit@a" }));
        assert_eq!(classic.describe(), "  leader: rabbit@a");
    }
}
