//! The integration-test harness, shared by every file under `tests/`.
//!
//! - [`Harness`] boots the service in process with its own `amqp.prefix`, a temporary folder for
//!   workflows and secrets, metrics on port 0, and deletes its exchanges and queues at the end
//!   (also when the test panics).
//! - [`FakeServer`] is a remote HTTP service: it records every request and answers from a script.
//! - [`apps`] holds fake Salesforce, Mailchimp and Braze servers built on it, quirks included.
//! - [`Broker`] publishes events with confirms and reads queues back.
//! - [`pg`] gives a test its own PostgreSQL schema (run history).
//! - [`wait_until`] / [`wait_for`] poll a condition with a deadline instead of sleeping.
//!
//! Every test file compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::Value;
use switchyard::broker::Topology;
use switchyard::{Config, Role, Service};
use tokio_util::sync::CancellationToken;

pub mod apps;
pub mod cluster;
pub mod console;
pub mod paced;
pub mod pg;

/// The broker every test uses.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(20);
/// How long a condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The example event of the repository (SPEC §2), as JSON.
pub const EXAMPLE_EVENT: &str = include_str!("../../examples/events/data-captured.json");

/// `workflows.paths` with the vendor examples of config/examples/ switched on beside the demo (as
/// shipped, config/switchyard.yaml loads the demo alone).
pub const VENDOR_EXAMPLES_ON: &str = "config/workflows,config/examples";

/// `t-<name>-<8 hex digits>`: a prefix no other test (or run) uses.
pub fn unique_prefix(name: &str) -> String {
    format!("t-{name}-{:08x}", rand::random::<u32>())
}

/// The repository root (where `config/` and `examples/` live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The example event with another id and type.
pub fn event(id: &str, event_type: &str) -> Value {
    // The file is part of the repository and is valid JSON.
    let mut event: Value = serde_json::from_str(EXAMPLE_EVENT).expect("example event is JSON");
    event["id"] = Value::String(id.to_owned());
    event["type"] = Value::String(event_type.to_owned());
    event
}

// ---------------------------------------------------------------------------------------------
// Waiting

/// Polls `check` every [`POLL`] until it holds; fails the test after [`DEADLINE`].
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    wait_for(what, async || check().await.then_some(())).await
}

/// Polls `probe` every [`POLL`] until it returns a value; fails the test after [`DEADLINE`].
pub async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] with a deadline of the caller's choice (long scenarios: restarts, thousands of
/// events).
pub async fn wait_until_within(
    what: &str,
    deadline: Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let end = Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a child process's `metrics.listen`).
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().expect("address").port()
}

// ---------------------------------------------------------------------------------------------
// Metric series

/// `switchyard_action_attempts_total{connector=…,outcome=…}`.
pub fn attempts(connector: &str, outcome: &str) -> String {
    format!("switchyard_action_attempts_total{{connector=\"{connector}\",outcome=\"{outcome}\"}}")
}

/// The attempts series of the http connector.
pub fn http_attempts(outcome: &str) -> String {
    attempts("http", outcome)
}

// ---------------------------------------------------------------------------------------------
// Fake remote services

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// `POST`, `GET`…
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Every header.
    pub headers: HeaderMap,
    /// The body bytes.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Recorded {
    /// A header as text (the first one of that name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// How many headers of that name arrived.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }

    /// The body parsed as JSON; fails the test with the raw body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {} sent a body that is not valid JSON ({e}):\n{}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// What the fake answers.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// How long to hold the request before answering.
    pub delay: Duration,
}

impl Reply {
    /// An empty answer with a status.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            ..Reply::status(status)
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
            ..Reply::status(status)
        }
    }

    /// Holds the request this long before answering.
    pub fn after(self, delay: Duration) -> Reply {
        Reply { delay, ..self }
    }

    /// HubSpot's `POST /crm/v3/objects/contacts` success: 201 with the created contact.
    pub fn hubspot_created(request: &Recorded) -> Reply {
        let sent = serde_json::from_slice::<Value>(&request.body).unwrap_or(Value::Null);
        let mut properties = sent
            .get("properties")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        properties["createdate"] = Value::String(now.clone());
        properties["hs_object_id"] = Value::String("51".into());
        Reply::json(
            201,
            &serde_json::json!({
                "id": "51",
                "properties": properties,
                "createdAt": now,
                "updatedAt": now,
                "archived": false,
            }),
        )
    }

    /// HubSpot's validation error.
    pub fn hubspot_invalid(message: &str) -> Reply {
        Reply::json(
            400,
            &serde_json::json!({
                "status": "error",
                "message": message,
                "correlationId": "3f1e8a52-6d7b-4c8e-9a0b-2c4d6e8f0a1b",
                "category": "VALIDATION_ERROR",
            }),
        )
    }

    /// A Slack incoming webhook's success: 200, plain text `ok`.
    pub fn slack_ok() -> Reply {
        Reply::text(200, "ok")
    }
}

type Script = dyn Fn(&Recorded) -> Reply + Send + Sync;

struct FakeState {
    /// Decides each answer.
    script: Box<Script>,
    /// Every request, in arrival order.
    requests: Mutex<Vec<Recorded>>,
    /// Requests whose handler ran to the end (the answer was handed to the connection).
    completed: AtomicUsize,
    /// Requests being handled right now.
    active: AtomicUsize,
    /// The most requests ever handled at once.
    max_active: AtomicUsize,
}

/// Counts a request as active while it lives (also when the client gives up on it).
struct ActiveGuard<'a>(&'a FakeState);

impl<'a> ActiveGuard<'a> {
    fn enter(state: &'a FakeState) -> ActiveGuard<'a> {
        let now = state.active.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_active.fetch_max(now, Ordering::SeqCst);
        ActiveGuard(state)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An HTTP server on 127.0.0.1 standing in for a remote API.
pub struct FakeServer {
    addr: SocketAddr,
    state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    /// Starts a server answering every request with `script`.
    pub async fn start(script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> FakeServer {
        let state = Arc::new(FakeState {
            script: Box::new(script),
            requests: Mutex::new(Vec::new()),
            completed: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake server");
        let addr = listener.local_addr().expect("fake server address");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeServer { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The distinct `event` fields of the JSON bodies received so far (the test workflows post
    /// `{"event": "{{ event.id }}"}`).
    pub fn events(&self) -> std::collections::BTreeSet<String> {
        self.inspect(|requests| {
            requests
                .iter()
                .map(|r| r.json()["event"].as_str().unwrap_or("").to_owned())
                .collect()
        })
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.state.requests.lock().expect("lock").len()
    }

    /// How many requests were answered (the handler was not abandoned by the client).
    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }

    /// Requests received but not answered yet.
    pub fn in_flight(&self) -> usize {
        // `completed` is bumped after the request is recorded, so read it first.
        let completed = self.completed();
        self.count().saturating_sub(completed)
    }

    /// The most requests the fake was handling at the same moment.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_active.load(Ordering::SeqCst)
    }

    /// Looks at the requests without copying them (for polls over thousands of requests).
    pub fn inspect<T>(&self, look: impl FnOnce(&[Recorded]) -> T) -> T {
        look(&self.state.requests.lock().expect("lock"))
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers,
        body,
        at: Instant::now(),
    };
    let _active = ActiveGuard::enter(&state);
    let reply = (state.script)(&recorded);
    state.requests.lock().expect("lock").push(recorded);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut builder = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(name, value);
    }
    let response = builder
        .body(Body::from(reply.body))
        .expect("a valid fake response");
    state.completed.fetch_add(1, Ordering::SeqCst);
    response
}

// ---------------------------------------------------------------------------------------------
// The broker, from the test's side

/// A message read back from a queue.
#[derive(Debug)]
pub struct Got {
    /// The body.
    pub body: Vec<u8>,
    /// The properties.
    pub properties: BasicProperties,
}

impl Got {
    /// The message id (the action id of an action message).
    pub fn message_id(&self) -> Option<String> {
        self.properties.message_id().as_ref().map(|s| s.to_string())
    }

    /// The headers (empty when there are none).
    pub fn headers(&self) -> FieldTable {
        self.properties.headers().clone().unwrap_or_default()
    }

    /// A string header.
    pub fn header_str(&self, name: &str) -> Option<String> {
        switchyard::broker::header_str(self.properties.headers().as_ref(), name).map(str::to_owned)
    }

    /// An integer header.
    pub fn header_int(&self, name: &str) -> Option<i64> {
        switchyard::broker::header_int(self.properties.headers().as_ref(), name)
    }

    /// Every header as `name=value` text, for "does this secret appear anywhere" checks.
    pub fn headers_text(&self) -> String {
        let mut out = String::new();
        for (name, value) in self.headers().inner() {
            let value = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                other => format!("{other:?}"),
            };
            out.push_str(&format!("{name}={value}\n"));
        }
        out
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the message body is JSON")
    }
}

/// What to do with messages read by [`Broker::take_all`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterGet {
    /// Remove them.
    Ack,
    /// Put them back.
    Requeue,
}

/// A test's own broker connection, with a confirm-mode channel.
pub struct Broker {
    /// The connection.
    pub connection: Connection,
    /// A channel in confirm mode.
    pub channel: Channel,
}

/// Fails the test unless the broker accepted (and could route) the message.
async fn assert_accepted(confirm: lapin::PublisherConfirm, exchange: &str, routing_key: &str) {
    let confirm = confirm.await.expect("confirm");
    assert!(
        matches!(confirm, Confirmation::Ack(None)),
        "the broker did not accept a message to {exchange} {routing_key}: {confirm:?}"
    );
}

impl Broker {
    /// Connects to [`AMQP_URL`].
    pub async fn connect() -> Broker {
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ at 127.0.0.1:5672 (guest/guest) is needed by the integration tests");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Broker {
            connection,
            channel,
        }
    }

    /// Publishes a persistent JSON message and waits for the broker's confirm; an unroutable
    /// message fails the test.
    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        let message = (routing_key.to_owned(), body.to_vec());
        self.publish_pipelined(exchange, std::slice::from_ref(&message), 1)
            .await;
    }

    /// Publishes many persistent JSON messages `(routing key, body)` with pipelined confirms:
    /// up to `window` publishes are outstanding before their confirms are awaited. Any nack or
    /// unroutable message fails the test.
    pub async fn publish_pipelined(
        &self,
        exchange: &str,
        messages: &[(String, Vec<u8>)],
        window: usize,
    ) {
        for chunk in messages.chunks(window.max(1)) {
            let mut pending = Vec::with_capacity(chunk.len());
            for (routing_key, body) in chunk {
                let confirm = self
                    .start_publish(exchange, routing_key, body, FieldTable::default())
                    .await;
                pending.push((routing_key, confirm));
            }
            for (routing_key, confirm) in pending {
                assert_accepted(confirm, exchange, routing_key).await;
            }
        }
    }

    /// Publishes a persistent JSON message with AMQP headers (e.g. `traceparent`) and waits for
    /// the broker's confirm.
    pub async fn publish_with_headers(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) {
        let confirm = self
            .start_publish(exchange, routing_key, body, headers)
            .await;
        assert_accepted(confirm, exchange, routing_key).await;
    }

    /// One mandatory, persistent JSON publish; its confirm is still to come.
    async fn start_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> lapin::PublisherConfirm {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .expect("publish")
    }

    /// Ready messages in a queue (passive declare on a fresh channel, so a missing queue does
    /// not close the shared one).
    pub async fn queue_len(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("queue {queue} should exist: {e}"));
        let _ = channel.close(200, "done".into()).await;
        q.message_count()
    }

    /// Reads every ready message of a queue with basic.get, then acks or requeues them all.
    pub async fn take_all(&self, queue: &str, after: AfterGet) -> Vec<Got> {
        let channel = self.connection.create_channel().await.expect("channel");
        let mut got = Vec::new();
        let mut tags = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap_or_else(|e| panic!("basic.get on {queue}: {e}"))
        {
            let delivery = message.delivery;
            tags.push(delivery.delivery_tag);
            got.push(Got {
                body: delivery.data,
                properties: delivery.properties,
            });
        }
        for tag in tags {
            match after {
                AfterGet::Ack => channel.basic_ack(tag, BasicAckOptions::default()).await,
                AfterGet::Requeue => {
                    channel
                        .basic_nack(
                            tag,
                            BasicNackOptions {
                                requeue: true,
                                ..BasicNackOptions::default()
                            },
                        )
                        .await
                }
            }
            .expect("settle a message read with basic.get");
        }
        let _ = channel.close(200, "done".into()).await;
        got
    }
}

/// Deletes every exchange and queue of a deployment (best effort).
pub async fn delete_topology(topology: &Topology) {
    let Ok(connection) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await
    else {
        return;
    };
    // A failed delete closes the channel, so each gets its own.
    let mut queues = topology.all_queues();
    queues.extend([
        topology.destinations.clone(),
        topology.destinations_status.clone(),
    ]);
    for queue in queues {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel.close(200, "done".into()).await;
        }
    }
    for exchange in [&topology.events, &topology.actions, &topology.retry] {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
            let _ = channel.close(200, "done".into()).await;
        }
    }
    let _ = connection.close(200, "cleaned up".into()).await;
}

/// [`delete_topology`] from synchronous code (`Drop`), on a thread of its own.
pub fn delete_topology_blocking(topology: Topology) {
    let worker = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(async {
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), delete_topology(&topology)).await;
            });
        }
    });
    let _ = worker.join();
}

/// Deletes a deployment's exchanges and queues when dropped, so a failing test cleans up too.
pub struct TopologyGuard {
    topology: Option<Topology>,
}

impl TopologyGuard {
    /// Guards the names of a configuration.
    pub fn new(config: &Config) -> TopologyGuard {
        TopologyGuard {
            topology: Some(Topology::new(config)),
        }
    }

    /// Deletes now.
    pub async fn delete(mut self) {
        if let Some(topology) = self.topology.take() {
            delete_topology(&topology).await;
        }
    }
}

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        if let Some(topology) = self.topology.take() {
            delete_topology_blocking(topology);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// Merges `extra` into `base`: mappings key by key, anything else replaced.
pub fn merge_yaml(base: &mut serde_yaml_ng::Value, extra: serde_yaml_ng::Value) {
    match (base, extra) {
        (serde_yaml_ng::Value::Mapping(base), serde_yaml_ng::Value::Mapping(extra)) => {
            for (key, value) in extra {
                match base.get_mut(&key) {
                    Some(slot) => merge_yaml(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, extra) => *base = extra,
    }
}

/// The service configuration of a test, as YAML: its prefix, metrics on a free port, workflows
/// and secrets in `dir`, loopback allowed, a short retry schedule without quick retries and a
/// short shutdown grace; then `extra` on top.
pub fn test_config_yaml(prefix: &str, dir: &Path, extra: &str) -> String {
    let level = std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "warn".into());
    let mut config = serde_yaml_ng::to_value(serde_json::json!({
        "amqp": { "url": AMQP_URL, "prefix": prefix, "queue_type": "quorum" },
        "metrics": { "listen": "127.0.0.1:0" },
        "workflows": { "paths": [dir.join("workflows")] },
        "secrets": { "dir": dir.join("secrets") },
        "http": { "allow_networks": ["127.0.0.1/32"] },
        "retry": { "schedule": ["1s"], "quick_attempts": 0 },
        "shutdown_grace": "5s",
        "log": { "format": "text", "level": level },
    }))
    .expect("config as YAML");
    if !extra.trim().is_empty() {
        let extra: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(extra).expect("the test's extra config is YAML");
        merge_yaml(&mut config, extra);
    }
    serde_yaml_ng::to_string(&config).expect("config as YAML")
}

/// Workflow `id`: every `Gameplay.DataCaptured` POSTs `{"event": "<event id>"}` to `url` (action
/// `post`), so that a fake counts events by body and by `Idempotency-Key`.
pub fn posting_workflow(id: &str, url: &str) -> String {
    format!(
        r#"
workflows:
  - id: {id}
    workspace: ws_demo
    trigger: {{ event: Gameplay.DataCaptured }}
    actions:
      - {{ id: post, http: {{ url: "{url}", body: '{{"event": "{{{{ event.id }}}}"}}' }} }}
"#
    )
}

/// Writes `workflows.yaml` and one file per secret under `dir`.
pub fn write_workflows_and_secrets(dir: &Path, workflows: &str, secrets: &[(&str, &str)]) {
    let workflows_dir = dir.join("workflows");
    let secrets_dir = dir.join("secrets");
    std::fs::create_dir_all(&workflows_dir).expect("create workflows dir");
    std::fs::create_dir_all(&secrets_dir).expect("create secrets dir");
    std::fs::write(workflows_dir.join("workflows.yaml"), workflows).expect("write workflows");
    for (name, value) in secrets {
        std::fs::write(secrets_dir.join(name), format!("{value}\n")).expect("write secret");
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// `GET url` → (status, body).
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The value of one series in a Prometheus text exposition, e.g.
/// `switchyard_action_attempts_total{connector="http",outcome="success"}`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

// ---------------------------------------------------------------------------------------------
// The service in process

/// A service started for one test, with its own prefix, folder and broker connection.
pub struct Harness {
    /// The `amqp.prefix`.
    pub prefix: String,
    /// The configuration it was started with.
    pub config: Config,
    /// Holds `workflows/` and `secrets/`.
    pub dir: tempfile::TempDir,
    /// The test's own broker connection.
    pub broker: Broker,
    /// Where `/metrics` answers.
    pub metrics_addr: SocketAddr,
    /// Where the console answers (when the test set `console.listen`).
    pub console_addr: Option<SocketAddr>,
    /// Stops the service.
    token: CancellationToken,
    /// The running service (taken by [`Harness::finish`]).
    service: Option<Service>,
    /// Deletes the topology at the end.
    guard: Option<TopologyGuard>,
}

impl Harness {
    /// Writes the workflows and secrets, starts the service with `extra` config on top of
    /// [`test_config_yaml`], and waits for `/readyz`.
    pub async fn start(
        name: &str,
        workflows: &str,
        extra: &str,
        secrets: &[(&str, &str)],
    ) -> Harness {
        Harness::start_with_prefix(unique_prefix(name), workflows, extra, secrets).await
    }

    /// [`Harness::start`] with a prefix the test chose (and may have used before the start).
    pub async fn start_with_prefix(
        prefix: String,
        workflows: &str,
        extra: &str,
        secrets: &[(&str, &str)],
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        write_workflows_and_secrets(dir.path(), workflows, secrets);
        let yaml = test_config_yaml(&prefix, dir.path(), extra);
        let config = Config::from_yaml(&yaml)
            .unwrap_or_else(|e| panic!("the test config is invalid: {e}\n{yaml}"));
        let _ = switchyard::telemetry::init_logging(&config.log);
        let guard = TopologyGuard::new(&config);
        let token = CancellationToken::new();
        let service = Service::start(config.clone(), Role::All, token.clone())
            .await
            .unwrap_or_else(|e| panic!("the service did not start: {e}"));
        let metrics_addr = service.metrics_addr();
        let console_addr = service.console_addr();
        let harness = Harness {
            prefix,
            config,
            dir,
            broker: Broker::connect().await,
            metrics_addr,
            console_addr,
            token,
            service: Some(service),
            guard: Some(guard),
        };
        let ready = format!("http://{metrics_addr}/readyz");
        wait_until("/readyz to answer 200", async || {
            matches!(http_get(&ready).await, Some((200, _)))
        })
        .await;
        harness
    }

    /// The running service's shared state (reloads, connection registry).
    pub fn app(&self) -> std::sync::Arc<switchyard::shared::Shared> {
        self.service
            .as_ref()
            .map(|s| s.app.clone())
            .expect("the service is running")
    }

    /// `<prefix>.<suffix>`.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    /// Publishes an event to `<prefix>.events` with its type as the routing key.
    pub async fn publish(&self, event: &Value) {
        let routing_key = event["type"].as_str().expect("the event has a type");
        let body = serde_json::to_vec(event).expect("event as JSON");
        self.publish_raw(routing_key, &body).await;
    }

    /// Publishes raw bytes to `<prefix>.events`.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        self.broker
            .publish(&self.name("events"), routing_key, body)
            .await;
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, body) = http_get(&format!("http://{}/metrics", self.metrics_addr))
            .await
            .expect("/metrics answers");
        assert_eq!(status, 200, "/metrics status");
        body
    }

    /// One series' value (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series).unwrap_or(0.0)
    }

    /// Waits until a series reaches `want`.
    pub async fn wait_metric(&self, series: &str, want: f64) {
        wait_until(&format!("{series} == {want}"), async || {
            self.metric(series).await == want
        })
        .await;
    }

    /// Stops the service (it must stop cleanly) and deletes the topology.
    pub async fn finish(mut self) {
        self.token.cancel();
        if let Some(service) = self.service.take() {
            let result = tokio::time::timeout(DEADLINE, service.wait())
                .await
                .expect("the service stops within the deadline after cancel");
            assert!(result.is_ok(), "the service stopped with {result:?}");
        }
        if let Some(guard) = self.guard.take() {
            guard.delete().await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // A test that panicked: stop consuming before the queues go away.
        self.token.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary

/// The `switchyard` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A command for the binary, run from the repository root, without any `SWITCHYARD*` variable
/// inherited from the test's environment.
pub fn switchyard_command(args: &[&str], envs: &[(&str, &str)]) -> std::process::Command {
    let mut command = std::process::Command::new(BIN);
    command.args(args).current_dir(repo_root());
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHYARD") {
            command.env_remove(key);
        }
    }
    command.envs(envs.iter().copied());
    command
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Ran {
    /// The arguments, for failure messages.
    pub args: String,
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Ran {
    /// Asserts that the command succeeded (exit 0).
    #[track_caller]
    pub fn ok(self) -> Ran {
        assert_eq!(
            self.code,
            Some(0),
            "switchyard {} failed: {self:#?}",
            self.args
        );
        self
    }

    /// The command could not reach the broker: exit 2, an error that says `says`, and no password.
    pub fn assert_broker_unreachable(&self, says: &str) {
        assert_eq!(self.code, Some(2), "{self:?}");
        assert!(self.stderr.contains(says), "says {says:?}: {self:?}");
        assert!(
            !self.stderr.contains(":guest@"),
            "the password is hidden: {self:?}"
        );
    }
}

/// Runs the binary to completion (at most [`DEADLINE`] × 3) and captures its output.
pub async fn run_switchyard(args: &[&str], envs: &[(&str, &str)]) -> Ran {
    let mut command = tokio::process::Command::from(switchyard_command(args, envs));
    command.kill_on_drop(true);
    let started = Instant::now();
    let output = tokio::time::timeout(DEADLINE * 3, command.output())
        .await
        .unwrap_or_else(|_| panic!("switchyard {args:?} did not finish"))
        .expect("the switchyard binary runs");
    Ran {
        args: args.join(" "),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// `switchyard run` as a child process, with its output in files; killed (SIGKILL) if the test
/// ends while it still runs.
pub struct Process {
    /// The child.
    pub child: std::process::Child,
    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub port: u16,
    /// Its standard error (the logs).
    pub stderr_path: PathBuf,
}

/// Writes `yaml` as `dir/switchyard.yaml`, starts `switchyard run` on it and waits until it is
/// ready; the guard deletes its topology at the end.
pub async fn spawn_ready(dir: &Path, yaml: &str) -> (Process, TopologyGuard) {
    let config = Config::from_yaml(yaml).expect("valid config");
    let guard = TopologyGuard::new(&config);
    let config_path = dir.join("switchyard.yaml");
    std::fs::write(&config_path, yaml).expect("write config");
    let mut process = Process::spawn(&config_path, dir, "run");
    process.wait_ready(DEADLINE).await;
    (process, guard)
}

impl Process {
    /// Starts `switchyard run --config <config>` with `metrics.listen` on a free port; `name`
    /// tells apart the log files of several starts in one `dir`.
    pub fn spawn(config: &Path, dir: &Path, name: &str) -> Process {
        let (command, port) = Process::run_command(config);
        Process::start(command, port, dir, name)
    }

    /// `switchyard run --config <config>` with `metrics.listen` on a free port, not started.
    pub fn run_command(config: &Path) -> (std::process::Command, u16) {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let command = switchyard_command(
            &["run", "--config", config.to_str().expect("utf-8 path")],
            &[("SWITCHYARD__METRICS__LISTEN", &listen)],
        );
        (command, port)
    }

    /// Starts `command` (whose `/readyz` answers on `port`) with its output in files under `dir`.
    pub fn start(mut command: std::process::Command, port: u16, dir: &Path, name: &str) -> Process {
        let stdout_path = dir.join(format!("{name}.stdout.log"));
        let stderr_path = dir.join(format!("{name}.stderr.log"));
        let child = command
            .stdout(std::process::Stdio::from(
                std::fs::File::create(&stdout_path).expect("stdout file"),
            ))
            .stderr(std::process::Stdio::from(
                std::fs::File::create(&stderr_path).expect("stderr file"),
            ))
            .spawn()
            .expect("start the command");
        Process {
            child,
            port,
            stderr_path,
        }
    }

    /// Starts `command` as `command 2>&1 | head -c <bytes>` would: its output goes to a pipe whose
    /// reader takes the first `bytes` and then closes it. Returns with the reader still reading;
    /// the handle finishes once the pipe is closed. [`Process::logs`] is empty.
    pub fn start_into_closing_pipe(
        mut command: std::process::Command,
        port: u16,
        bytes: usize,
    ) -> (Process, std::thread::JoinHandle<Vec<u8>>) {
        use std::io::Read as _;
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the command");
        let stderr = child.stderr.take().expect("a piped stderr");
        let head = std::thread::spawn(move || {
            let mut taken = Vec::new();
            // Dropping the pipe's read end at the end of the thread closes it, as `head` exiting does.
            let _ = stderr.take(bytes as u64).read_to_end(&mut taken);
            taken
        });
        let process = Process {
            child,
            port,
            stderr_path: PathBuf::new(),
        };
        (process, head)
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Fails the test (with the logs) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "switchyard run exited unexpectedly ({status}):\n{}",
                self.logs()
            );
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, deadline: Duration) {
        let ready = format!("http://127.0.0.1:{}/readyz", self.port);
        wait_until_within("switchyard run to be ready", deadline, async || {
            self.assert_running();
            matches!(http_get(&ready).await, Some((200, _)))
        })
        .await;
    }

    /// Sends a signal with `kill -<signal>`.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.clone()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// `kill -9`, and reaps it.
    pub fn kill9(&mut self) -> std::process::ExitStatus {
        // `Child::kill` is SIGKILL on Unix.
        self.child.kill().expect("SIGKILL the child");
        self.child.wait().expect("reap the child")
    }

    /// SIGTERM, then fails the test unless it exits with 0 within 30 s.
    pub async fn stop_cleanly(&mut self) {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "a clean stop: {status}\n{}", self.logs());
    }

    /// Polls until the process exits; fails the test after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "switchyard run still running after {deadline:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The local RabbitMQ node

/// `rabbitmqctl`, wherever the package put it (`/usr/sbin` is not on every PATH).
pub fn rabbitmqctl_path() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("rabbitmqctl"))
        .find(|p| p.is_file())
        .expect("rabbitmqctl (this test drives the local RabbitMQ node)")
}

/// `rabbitmqctl ARGS` on the local node; fails the test unless it succeeds. Its standard output.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new(rabbitmqctl_path())
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
