//! The service configuration (SPEC §3): embedded defaults, then the YAML file, then `SWITCHYARD__…`
//! environment overrides, then validation with messages a user can act on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::connectors::ConnectorKind;

/// The defaults, as YAML: the same values `config/switchyard.yaml` documents.
const DEFAULTS: &str = r#"
amqp:
  url: amqp://guest:guest@127.0.0.1:5672/%2f
  prefix: switchyard
  queue_type: quorum
  connect_timeout: 15s
router:
  prefetch: 256
  max_event_bytes: 262144
  publish_linger: 1ms
worker:
  concurrency: 128
  prefetch: 256
retry:
  schedule: [5s, 30s, 2m, 10m, 30m, 2h, 6h]
  jitter: 0.2
  quick_attempts: 2
http:
  timeout: 15s
  max_response_bytes: 1048576
  max_body_bytes: 1048576
  allow_networks: []
  proxy: ""
  no_proxy: ""
metrics:
  listen: 0.0.0.0:9464
log:
  format: json
  level: info
shutdown_grace: 30s
workflows:
  paths: [config/workflows]
secrets:
  dir: /var/run/secrets/switchyard
history:
  url: ""
  retention: 30d
  response_excerpt: 4KiB
  store_payloads: true
  buffer_rows: 100000
destinations:
  quarantine_after: 24h
  max_tracked: 500
  failure_threshold: 5
  cool_down: 30s
console:
  listen: ""
  tokens: []
"#;

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 5] = [
    "amqp.url",
    "worker.connectors",
    "retry.schedule",
    "http.allow_networks",
    "workflows.paths",
];

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an override could not be read or does not have the right shape.
    #[error("{path}: {source}")]
    Load {
        /// The configuration file.
        path: PathBuf,
        /// What the config crate said.
        #[source]
        source: config::ConfigError,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// The whole service configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The broker connection and the names of everything declared on it.
    pub amqp: AmqpConfig,
    /// The router role.
    pub router: RouterConfig,
    /// The worker role.
    pub worker: WorkerConfig,
    /// Quick in-process retries and broker-held delays.
    pub retry: RetryConfig,
    /// Outbound HTTP.
    pub http: HttpConfig,
    /// The metrics and health endpoint.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
    /// How long in-flight actions may take to finish after SIGTERM.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// Where the connections, workflows and webhooks are defined.
    pub workflows: WorkflowsConfig,
    /// Where secrets are read from (besides `SWITCHYARD_SECRET_*`).
    pub secrets: SecretsConfig,
    /// Run history in PostgreSQL (SPEC §9).
    pub history: HistoryConfig,
    /// Destinations: breakers, quarantine, the metrics' cardinality cap (SPEC §10).
    pub destinations: DestinationsConfig,
    /// The operator console (SPEC §11).
    pub console: ConsoleConfig,
}

/// `amqp:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// The broker's nodes: one `amqp://` or `amqps://` URL (with credentials and vhost), or one per
    /// node of a cluster, tried in turn when a connection fails. Written as a list, or as one string
    /// with the URLs separated by commas (`SWITCHYARD__AMQP__URL`).
    #[serde(deserialize_with = "de_urls")]
    pub url: Vec<String>,
    /// The first part of every exchange and queue name.
    pub prefix: String,
    /// The type of every queue declared.
    pub queue_type: QueueType,
    /// How long opening a connection (TCP, TLS and the AMQP handshake) may take.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Replicas of each quorum queue at creation (`x-quorum-initial-group-size`); unset leaves
    /// RabbitMQ's own default (every node of the cluster).
    #[serde(default)]
    pub quorum_replicas: Option<u32>,
    /// The RabbitMQ management API, where `switchyard topology` reads each queue's leader; unset
    /// means the node `topology` connected to, on port 15672 (15671 with `amqps://`), with the
    /// credentials of its `amqp.url`.
    #[serde(default)]
    pub management_url: Option<String>,
}

/// The RabbitMQ queue type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated, durable (the default).
    Quorum,
    /// Classic durable queues.
    Classic,
}

/// The longest `router.publish_linger`: it adds to every event's latency, and more batches little
/// more.
pub const MAX_PUBLISH_LINGER: Duration = Duration::from_millis(100);

/// `router:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Unacked events the broker may push to the router at once.
    pub prefetch: u16,
    /// Larger events are rejected.
    pub max_event_bytes: usize,
    /// How long an event's action messages may wait so that they go to the broker together with
    /// those of events that arrived close to it (`0s`: each is published at once).
    #[serde(deserialize_with = "de_duration")]
    pub publish_linger: Duration,
}

/// The default `worker.connectors`: every connector, in queue order.
fn every_connector() -> Vec<String> {
    ConnectorKind::names().map(str::to_owned).to_vec()
}

/// `worker:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The action queues this process consumes (default: every [`ConnectorKind`]).
    #[serde(default = "every_connector")]
    pub connectors: Vec<String>,
    /// In-flight actions per process.
    pub concurrency: usize,
    /// Unacked actions the broker may push per queue.
    pub prefetch: u16,
    /// Calls in flight to one host at most, if set (see [`WorkerConfig::per_host_limit`]).
    #[serde(default)]
    pub max_per_host: Option<usize>,
}

impl WorkerConfig {
    /// Calls in flight to one host at most (`worker.max_per_host`, by default half of
    /// `concurrency`, rounded up), so that a hanging host cannot hold every slot.
    pub fn per_host_limit(&self) -> usize {
        self.max_per_host
            .unwrap_or(self.concurrency.div_ceil(2))
            .max(1)
    }
}

/// `retry:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Broker-held delays between attempts, one queue each; after the last, dead-letter.
    #[serde(deserialize_with = "de_durations")]
    pub schedule: Vec<Duration>,
    /// ± fraction applied to each delay.
    pub jitter: f64,
    /// In-process retries before the first broker-held delay.
    pub quick_attempts: u32,
}

/// `http:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Whole-request timeout (connect, send, read).
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Response bodies are read up to this many bytes.
    pub max_response_bytes: usize,
    /// Rendered request bodies larger than this are refused.
    pub max_body_bytes: usize,
    /// CIDRs exempt from the private-network block.
    pub allow_networks: Vec<String>,
    /// The proxy of every outbound request (`http://host:port`); empty: `HTTPS_PROXY` /
    /// `HTTP_PROXY` from the environment, or none.
    pub proxy: String,
    /// Hosts, domains and CIDRs that skip the proxy (as `NO_PROXY`); empty: `NO_PROXY`.
    pub no_proxy: String,
}

/// `metrics:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz` (port 0 picks a free one).
    pub listen: SocketAddr,
}

/// `log:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// A tracing filter: `info`, or `switchyard=debug,lapin=warn`.
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}

/// `workflows:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowsConfig {
    /// Files or folders of `*.yaml`, relative to the working directory.
    pub paths: Vec<PathBuf>,
}

/// `secrets:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// One file per secret, named after it.
    pub dir: PathBuf,
}

/// `destinations:` settings (SPEC §10).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationsConfig {
    /// A destination failing without a success this long is quarantined (paused automatically).
    #[serde(deserialize_with = "de_duration")]
    pub quarantine_after: Duration,
    /// Destinations with a label value of their own in the metrics; the rest are `other`.
    pub max_tracked: usize,
    /// Consecutive retryable failures that open a destination's circuit breaker.
    pub failure_threshold: u32,
    /// How long an open breaker holds calls before one probe goes through.
    #[serde(deserialize_with = "de_duration")]
    pub cool_down: Duration,
}

/// `history:` settings (SPEC §9).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// `postgres://…`; empty turns history off. May be, or contain, `{{ secrets.NAME }}`.
    pub url: String,
    /// How long attempts are kept, in whole days: an expired day's partition is dropped whole.
    #[serde(deserialize_with = "de_duration")]
    pub retention: Duration,
    /// Bytes kept of each response body, after redaction.
    #[serde(deserialize_with = "de_bytes")]
    pub response_excerpt: usize,
    /// Whether each event's JSON is kept (for `runs show` and `runs replay`).
    pub store_payloads: bool,
    /// Rows that may wait for PostgreSQL; beyond this they are dropped and counted.
    pub buffer_rows: usize,
}

impl HistoryConfig {
    /// Whether history is on.
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// `retention` in days.
    pub fn retention_days(&self) -> u32 {
        u32::try_from(self.retention.as_secs() / 86_400).unwrap_or(u32::MAX)
    }
}

// The URL carries a password: never printed.
impl std::fmt::Debug for HistoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryConfig")
            .field("enabled", &self.enabled())
            .field("retention", &self.retention)
            .field("response_excerpt", &self.response_excerpt)
            .field("store_payloads", &self.store_payloads)
            .field("buffer_rows", &self.buffer_rows)
            .finish()
    }
}

/// `console:` settings (SPEC §11).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where the console listens; `None` (written `""`) turns it off.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// Who may sign in.
    pub tokens: Vec<ConsoleToken>,
}

/// One person (or screen) that may sign in to the console.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleToken {
    /// Who it is: shown on the pages and logged with every change they make.
    pub name: String,
    /// What they may do.
    pub role: ConsoleRole,
    /// `{{ secrets.NAME }}`: the token itself is a secret, never written in the file.
    pub token: String,
}

// The token setting names a secret, but is kept out of debug output all the same.
impl std::fmt::Debug for ConsoleToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRole {
    /// Reads, and replays, exports, purges (and pauses destinations).
    Operator,
    /// Reads only.
    Viewer,
}

impl ConsoleRole {
    /// Its name, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleRole::Operator => "operator",
            ConsoleRole::Viewer => "viewer",
        }
    }
}

/// Deserialises a listen address where `""` means off.
fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not a listen address (0.0.0.0:9465, 127.0.0.1:9465), or \"\" for off"
        ))
    })
}

impl Config {
    /// Loads defaults, then `path` (which must exist unless it is the default path), then the
    /// process environment.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        Self::load_with_env(path, required, None)
    }

    /// Like [`Config::load`], with an explicit environment (tests).
    pub fn load_with_env(
        path: &Path,
        required: bool,
        env: Option<config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        let load_err = |source| ConfigError::Load {
            path: path.to_path_buf(),
            source,
        };
        let mut environment = config::Environment::with_prefix("SWITCHYARD")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .source(env);
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        let config: Config = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Yaml))
            .add_source(
                config::File::from(path)
                    .format(config::FileFormat::Yaml)
                    .required(required),
            )
            .add_source(environment)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(load_err)?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Builds a configuration from YAML text alone (tests, examples).
    pub fn from_yaml(yaml: &str) -> Result<Self, ConfigError> {
        let path = PathBuf::from("<inline>");
        let config: Config = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Yaml))
            .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|source| ConfigError::Load {
                path: path.clone(),
                source,
            })?;
        config
            .validate()
            .map_err(|message| ConfigError::Invalid { path, message })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.amqp.url.is_empty() {
            return Err("amqp.url needs at least one node URL".into());
        }
        for (i, url) in self.amqp.url.iter().enumerate() {
            crate::broker::check_url(url).map_err(|e| {
                let entry = match self.amqp.url.len() {
                    1 => "amqp.url".to_owned(),
                    _ => format!("amqp.url entry {}", i + 1),
                };
                format!("{entry} ({}): {e}", crate::broker::redact_url(url))
            })?;
        }
        match (self.amqp.quorum_replicas, self.amqp.queue_type) {
            (Some(0), _) => return Err("amqp.quorum_replicas must be at least 1".into()),
            (Some(_), QueueType::Classic) => {
                return Err(
                    "amqp.quorum_replicas applies to quorum queues only (amqp.queue_type is classic)"
                        .into(),
                );
            }
            _ => {}
        }
        if let Some(url) = &self.amqp.management_url {
            crate::broker::management::check_url(url).map_err(|e| {
                format!(
                    "amqp.management_url ({}): {e}",
                    crate::broker::redact_url(url)
                )
            })?;
        }
        let prefix_ok = !self.amqp.prefix.is_empty()
            && self
                .amqp
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !prefix_ok {
            return Err(format!(
                "amqp.prefix {:?} must be non-empty and use only letters, digits, '-', '_', '.' or ':'",
                self.amqp.prefix
            ));
        }
        for connector in &self.worker.connectors {
            if ConnectorKind::from_name(connector).is_none() {
                return Err(format!(
                    "worker.connectors: unknown connector {connector:?} (known: {})",
                    ConnectorKind::list(|_| true)
                ));
            }
        }
        if self.worker.concurrency == 0 {
            return Err("worker.concurrency must be at least 1".into());
        }
        if self.amqp.connect_timeout.is_zero() {
            return Err("amqp.connect_timeout must be more than 0s".into());
        }
        if self.worker.max_per_host == Some(0) {
            return Err("worker.max_per_host must be at least 1".into());
        }
        if self.router.publish_linger > MAX_PUBLISH_LINGER {
            return Err(format!(
                "router.publish_linger must be at most {}, got {}",
                format_delay(MAX_PUBLISH_LINGER),
                format_delay(self.router.publish_linger)
            ));
        }
        if self.router.prefetch == 0 || self.worker.prefetch == 0 {
            return Err("router.prefetch and worker.prefetch must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.retry.jitter) {
            return Err(format!(
                "retry.jitter must be in [0, 1), got {}",
                self.retry.jitter
            ));
        }
        if self.retry.schedule.iter().any(Duration::is_zero) {
            return Err("retry.schedule delays must be longer than zero".into());
        }
        if self.http.timeout.is_zero() {
            return Err("http.timeout must be longer than zero".into());
        }
        for cidr in &self.http.allow_networks {
            crate::net::parse_cidr(cidr)
                .map_err(|e| format!("http.allow_networks: {cidr:?}: {e}"))?;
        }
        crate::connectors::proxy::ProxyRules::new(&self.http.proxy, &self.http.no_proxy)
            .map_err(|e| e.to_string())?;
        self.validate_history()?;
        self.validate_destinations()?;
        self.validate_console()
    }

    fn validate_console(&self) -> Result<(), String> {
        let console = &self.console;
        let mut names = std::collections::HashSet::new();
        for (i, token) in console.tokens.iter().enumerate() {
            let at = format!("console.tokens entry {}", i + 1);
            if token.name.trim().is_empty() {
                return Err(format!("{at}: name must not be empty"));
            }
            if !names.insert(token.name.as_str()) {
                return Err(format!(
                    "{at}: the name {:?} is used twice; each person or screen gets a token of its own",
                    token.name
                ));
            }
            let named = token.token.trim();
            if !(named.starts_with("{{") && named.ends_with("}}") && named.contains("secrets.")) {
                // The value is never quoted: it may be the token itself.
                return Err(format!(
                    "{at} ({}): token must be {{{{ secrets.NAME }}}}: a token is a secret, read from secrets.dir or SWITCHYARD_SECRET_NAME, never written in this file",
                    token.name
                ));
            }
        }
        if console.listen.is_some() && console.tokens.is_empty() {
            return Err(
                "console.listen is set but console.tokens is empty: nobody could sign in; add a token ({ name, role: operator|viewer, token: \"{{ secrets.NAME }}\" }) or set console.listen to \"\""
                    .into(),
            );
        }
        Ok(())
    }

    fn validate_history(&self) -> Result<(), String> {
        let history = &self.history;
        let url = history.url.trim();
        let templated = url.starts_with("{{");
        let accepted = url.is_empty()
            || templated
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://");
        if !accepted {
            // Only the scheme is quoted: the rest may hold a password.
            return Err(
                "history.url must start with postgres:// or postgresql:// (or be {{ secrets.NAME }}), or be empty to turn history off"
                    .into(),
            );
        }
        let secs = history.retention.as_secs();
        if secs == 0 || !secs.is_multiple_of(86_400) || history.retention.subsec_nanos() != 0 {
            return Err(format!(
                "history.retention must be a whole number of days (30d), got {}",
                humantime::format_duration(history.retention)
            ));
        }
        if history.buffer_rows == 0 {
            return Err("history.buffer_rows must be at least 1".into());
        }
        Ok(())
    }

    fn validate_destinations(&self) -> Result<(), String> {
        let destinations = &self.destinations;
        if destinations.quarantine_after.is_zero() {
            return Err(
                "destinations.quarantine_after must be longer than 0s (24h by default)".into(),
            );
        }
        if destinations.failure_threshold == 0 {
            return Err("destinations.failure_threshold must be at least 1".into());
        }
        if destinations.cool_down.is_zero() {
            return Err("destinations.cool_down must be longer than 0s (30s by default)".into());
        }
        Ok(())
    }

    /// The name of an exchange or queue under this deployment's prefix.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.amqp.prefix)
    }
}

/// Parses `15s`, `2m`, `1h 30m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration ({e})"))
}

/// Parses a byte size: `4096`, `512B`, `4KiB`, `1MiB` (also `KB`/`MB`, read as 1000s).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (4KiB, 512B, 4096)"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        other => return Err(format!("{text:?}: unknown unit {other:?} (B, KiB, MiB)")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BytesRepr {
    Text(String),
    Count(usize),
}

/// Deserialises a size written as `4KiB` or a number of bytes.
fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match BytesRepr::deserialize(d)? {
        BytesRepr::Text(text) => parse_bytes(&text).map_err(serde::de::Error::custom),
        BytesRepr::Count(count) => Ok(count),
    }
}

/// Formats a delay the way retry queues are named: `5s`, `2m`, `6h`, `1500ms`.
pub fn format_delay(delay: Duration) -> String {
    let ms = delay.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = delay.as_secs();
    match secs {
        s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Text(String),
    Secs(u64),
}

impl DurationRepr {
    fn into_duration<E: serde::de::Error>(self) -> Result<Duration, E> {
        match self {
            DurationRepr::Text(text) => parse_duration(&text).map_err(E::custom),
            DurationRepr::Secs(secs) => Ok(Duration::from_secs(secs)),
        }
    }
}

/// Deserialises a duration written as `15s`, `2m` or seconds.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    DurationRepr::deserialize(d)?.into_duration()
}

/// Deserialises an optional duration.
pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<DurationRepr>::deserialize(d)?
        .map(DurationRepr::into_duration)
        .transpose()
}

/// Deserialises `amqp.url`: a list of URLs, or one string of comma-separated URLs (which is also
/// what a single URL is). Blanks around the commas are ignored.
fn de_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
    }
    let urls = match Urls::deserialize(d)? {
        Urls::One(text) => vec![text],
        Urls::Many(list) => list,
    };
    Ok(urls
        .iter()
        .flat_map(|text| text.split(','))
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect())
}

fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<DurationRepr>::deserialize(d)?
        .into_iter()
        .map(DurationRepr::into_duration)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> config::Map<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::load_with_env(Path::new("/nonexistent.yaml"), false, Some(env(&[])))
            .expect("defaults load");
        assert_eq!(c.amqp.prefix, "switchyard");
        assert_eq!(c.amqp.queue_type, QueueType::Quorum);
        assert_eq!(c.amqp.connect_timeout, Duration::from_secs(15));
        assert_eq!(c.router.prefetch, 256);
        assert_eq!(c.router.max_event_bytes, 262_144);
        assert_eq!(c.router.publish_linger, Duration::from_millis(1));
        assert_eq!(c.worker.connectors.len(), 5);
        assert_eq!(c.retry.schedule.len(), 7);
        assert_eq!(c.retry.schedule[2], Duration::from_secs(120));
        assert_eq!(c.http.timeout, Duration::from_secs(15));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.worker.per_host_limit(), 64, "half of concurrency 128");
        assert!(!c.history.enabled(), "history is off by default");
        assert_eq!(c.history.retention_days(), 30);
        assert_eq!(c.history.response_excerpt, 4096);
        assert!(c.history.store_payloads);
        assert!(c.console.listen.is_none(), "the console is off by default");
        assert!(c.console.tokens.is_empty());
    }

    #[test]
    fn history_settings_are_checked() {
        let c = Config::from_yaml(
            "history:\n  url: \"{{ secrets.HISTORY_URL }}\"\n  retention: 7d\n  response_excerpt: 1KiB\n",
        )
        .expect("loads");
        assert!(c.history.enabled());
        assert_eq!(c.history.retention_days(), 7);
        assert_eq!(c.history.response_excerpt, 1024);
        let shown = format!(
            "{:?}",
            Config::from_yaml("history:\n  url: postgres://u:hunter22@db/x\n").expect("loads")
        );
        assert!(!shown.contains("hunter22"), "{shown}");
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("2MiB"), Ok(2 * 1024 * 1024));
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.yaml");
        std::fs::write(
            &path,
            "amqp:\n  prefix: fromfile\nrouter:\n  prefetch: 10\n",
        )
        .expect("write");
        let c = Config::load_with_env(
            &path,
            true,
            Some(env(&[
                ("SWITCHYARD__AMQP__PREFIX", "fromenv"),
                ("SWITCHYARD__WORKER__CONNECTORS", "http,webhook"),
                ("SWITCHYARD__RETRY__SCHEDULE", "1s,2s"),
                ("SWITCHYARD__SHUTDOWN_GRACE", "5s"),
                ("SWITCHYARD__WORKER__MAX_PER_HOST", "3"),
                ("SWITCHYARD__ROUTER__PUBLISH_LINGER", "0s"),
            ])),
        )
        .expect("loads");
        assert_eq!(c.amqp.prefix, "fromenv");
        assert_eq!(c.router.prefetch, 10);
        assert_eq!(c.worker.connectors, vec!["http", "webhook"]);
        assert_eq!(
            c.retry.schedule,
            vec![Duration::from_secs(1), Duration::from_secs(2)]
        );
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        assert_eq!(c.worker.per_host_limit(), 3);
        assert_eq!(c.router.publish_linger, Duration::ZERO);
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("amqp:\n  url: http://x\n", "amqp.url"),
            ("worker:\n  connectors: [smtp]\n", "smtp"),
            ("retry:\n  jitter: 1.5\n", "retry.jitter"),
            ("http:\n  timeout: soon\n", "soon"),
            ("amqp:\n  prefix: 'a b'\n", "amqp.prefix"),
            ("amqp:\n  queue_type: stream\n", "stream"),
            ("nonsense: 1\n", "nonsense"),
            ("worker:\n  max_per_host: 0\n", "worker.max_per_host"),
            ("router:\n  publish_linger: 1s\n", "router.publish_linger"),
            ("history:\n  url: mysql://x\n", "history.url"),
            ("history:\n  retention: 36h\n", "history.retention"),
            ("history:\n  response_excerpt: 4 parsecs\n", "parsecs"),
            ("history:\n  buffer_rows: 0\n", "history.buffer_rows"),
            ("console:\n  listen: everywhere\n", "not a listen address"),
            (
                "console:\n  listen: 127.0.0.1:0\n",
                "console.listen is set but console.tokens is empty",
            ),
            (
                "console:\n  tokens: [{ name: a, role: admin, token: '{{ secrets.A }}' }]\n",
                "admin",
            ),
            (
                "console:\n  tokens: [{ name: a, role: viewer, token: '{{ secrets.A }}' }, { name: a, role: operator, token: '{{ secrets.B }}' }]\n",
                "used twice",
            ),
            (
                "console:\n  tokens: [{ name: a, role: viewer, token: hunter2 }]\n",
                "token must be {{ secrets.NAME }}",
            ),
        ];
        assert_refused(&cases);
    }

    /// Each YAML is refused with an error that contains its needle, and never the password
    /// `hunter2`.
    fn assert_refused(cases: &[(&str, &str)]) {
        for (yaml, needle) in cases {
            let err = Config::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(err.contains(needle), "{yaml:?} gave {err:?}");
            assert!(!err.contains("hunter2"), "{yaml:?} gave {err:?}");
        }
    }

    #[test]
    fn amqp_url_takes_one_url_a_list_or_comma_separated_urls() {
        let one = "amqp://guest:guest@127.0.0.1:5672/%2f";
        let c = Config::from_yaml("").expect("defaults");
        assert_eq!(c.amqp.url, vec![one]);
        assert_eq!(c.amqp.quorum_replicas, None, "RabbitMQ's own by default");
        let c = Config::from_yaml("amqp:\n  url: [amqp://a:5672, 'amqps://u:p@b:5671/v']\n")
            .expect("a list");
        assert_eq!(c.amqp.url, vec!["amqp://a:5672", "amqps://u:p@b:5671/v"]);
        let c = Config::from_yaml("amqp:\n  url: 'amqp://a:1/%2f, amqp://b:2/%2f,'\n")
            .expect("a comma-separated string");
        assert_eq!(c.amqp.url, vec!["amqp://a:1/%2f", "amqp://b:2/%2f"]);
        // The environment replaces the file's list whole, whatever its length.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.yaml");
        std::fs::write(&path, "amqp:\n  url: [amqp://a, amqp://b, amqp://c]\n").expect("write");
        let load = |value: &str| {
            Config::load_with_env(&path, true, Some(env(&[("SWITCHYARD__AMQP__URL", value)])))
                .expect("loads")
                .amqp
                .url
        };
        assert_eq!(load(one), vec![one]);
        assert_eq!(
            load("amqp://x:1/%2f,amqp://y:2/%2f"),
            vec!["amqp://x:1/%2f", "amqp://y:2/%2f"]
        );
    }

    #[test]
    fn a_bad_node_url_is_named_without_its_password() {
        let cases = [
            (
                "amqp:\n  url: [amqp://a, 'http://u:hunter2@b']\n",
                "amqp.url entry 2 (http://u:***@b/): must start with amqp://",
            ),
            (
                "amqp:\n  url: 'amqp://a, amqp://u:hunter2@b:notaport/%2f'\n",
                "amqp.url entry 2 (amqp://u:***@b:notaport/%2f)",
            ),
            (
                "amqp:\n  url: 'amqp://u:hunter2@'\n",
                "amqp.url (amqp://u:***@)",
            ),
            ("amqp:\n  url: []\n", "amqp.url needs at least one node URL"),
            (
                "amqp:\n  url: ' , '\n",
                "amqp.url needs at least one node URL",
            ),
        ];
        assert_refused(&cases);
    }

    #[test]
    fn quorum_replicas_and_management_url_are_checked() {
        let c = Config::from_yaml("amqp:\n  quorum_replicas: 3\n").expect("3 replicas");
        assert_eq!(c.amqp.quorum_replicas, Some(3));
        let cases = [
            (
                "amqp:\n  quorum_replicas: 0\n",
                "amqp.quorum_replicas must be at least 1",
            ),
            (
                "amqp:\n  quorum_replicas: 2\n  queue_type: classic\n",
                "quorum queues only",
            ),
            ("amqp:\n  quorum_replicas: -1\n", "quorum_replicas"),
            (
                "amqp:\n  management_url: 'ftp://u:hunter2@h'\n",
                "amqp.management_url (ftp://u:***@h/): must start with http://",
            ),
        ];
        assert_refused(&cases);
    }

    #[test]
    fn delays_are_named_compactly() {
        let cases = [
            (5, "5s"),
            (30, "30s"),
            (120, "2m"),
            (600, "10m"),
            (7200, "2h"),
            (90, "90s"),
        ];
        for (secs, name) in cases {
            assert_eq!(format_delay(Duration::from_secs(secs)), name);
        }
        assert_eq!(format_delay(Duration::from_millis(1500)), "1500ms");
    }
}
