//! Everything that talks AMQP: the topology, connections, the confirmed publisher, message headers.

pub mod acks;
pub mod management;
pub mod message;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{
    BasicCancelOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::{AmqpConfig, Config, QueueType, format_delay};
use crate::connectors::ConnectorKind;

/// Quorum queues redeliver a message at most this many times before dead-lettering it: the
/// backstop against a message that crashes the process every time.
pub const DELIVERY_LIMIT: i64 = 20;

/// The header naming a retry tier, matched by the retry exchange's bindings.
pub const RETRY_TIER_HEADER: &str = "x-switchyard-retry-tier";

/// How long a close waits for the broker's close-ok. lapin's close can wait forever for one:
/// the broker has logged the close and dropped the socket, and the promise never resolves (seen
/// under load in tests/delivery.rs, and in `dlq replay`, which had finished its work and then
/// never exited). Giving up loses nothing: what a closed channel held unacked goes back to its
/// queue either way.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Closes a connection, waiting at most [`CLOSE_TIMEOUT`].
pub async fn close_connection(connection: &Connection, code: u16, text: &str) {
    within_close_timeout(connection.close(code, text.into()), "the connection").await;
}

/// Closes a channel if it is still open, waiting at most [`CLOSE_TIMEOUT`].
pub async fn close_channel(channel: &Channel, code: u16, text: &str) {
    if channel.status().connected() {
        within_close_timeout(channel.close(code, text.into()), "a channel").await;
    }
}

/// Cancels a consumer and waits for the broker's cancel-ok (at most [`CLOSE_TIMEOUT`]), so that
/// nothing is sent on its channel once that channel closes.
///
/// A consumer dropped while still active has lapin send its basic.cancel from lapin's own task,
/// racing whoever closes the channel: a cancel that goes out after the broker has closed the
/// channel reaches a channel number the broker no longer knows, which it answers by closing the
/// whole connection (`CHANNEL_ERROR - expected 'channel.open'`). Cancelled here first, the
/// consumer is dropped already cancelled and lapin sends nothing.
pub async fn cancel_consumer(channel: &Channel, tag: &str) {
    if channel.status().connected() {
        let cancel = channel.basic_cancel(tag.into(), BasicCancelOptions::default());
        within_close_timeout(cancel, "a consumer").await;
    }
}

/// Awaits a close (or a consumer's cancel) for at most [`CLOSE_TIMEOUT`]; says so (debug) when it
/// gave up.
async fn within_close_timeout(close: impl Future, what: &str) {
    if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
        tracing::debug!(
            what,
            timeout_s = CLOSE_TIMEOUT.as_secs(),
            "no answer from the broker (close-ok or cancel-ok); dropping it as it is"
        );
    }
}

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The connection or a channel failed.
    #[error("broker: {context}: {source}")]
    Amqp {
        /// What was being done.
        context: String,
        /// What lapin said.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused a message (a nack: a queue could not take it).
    #[error("broker refused a message for {0}")]
    Refused(String),
    /// The broker returned a mandatory message: no queue is bound for it.
    #[error("no queue is bound for {0} (the broker returned the message)")]
    Unroutable(String),
    /// A consumer stream ended (the channel was closed under us).
    #[error("consumer of {0} stopped")]
    ConsumerEnded(String),
    /// No node of `amqp.url` could be reached: each one's error, in the order tried.
    #[error("no broker node could be reached: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NoNode(Vec<BrokerError>),
    /// The broker did not answer in time.
    #[error("broker: {context}: no answer within {}", humantime::format_duration(*.after))]
    Timeout {
        /// What was being done.
        context: String,
        /// How long it waited.
        after: Duration,
    },
}

/// Attaches context to lapin errors.
pub trait AmqpContext<T> {
    /// Wraps the error with what was being done.
    fn context(self, context: impl Into<String>) -> Result<T, BrokerError>;
}

impl<T> AmqpContext<T> for Result<T, lapin::Error> {
    fn context(self, context: impl Into<String>) -> Result<T, BrokerError> {
        self.map_err(|source| BrokerError::Amqp {
            context: context.into(),
            source,
        })
    }
}

/// [`AmqpContext::context`] with the text built only on failure, for per-message paths.
fn lazy_context<T>(
    result: Result<T, lapin::Error>,
    context: impl FnOnce() -> String,
) -> Result<T, BrokerError> {
    result.map_err(|source| BrokerError::Amqp {
        context: context(),
        source,
    })
}

/// The names of every exchange and queue, derived from `amqp.prefix` (SPEC §1).
#[derive(Debug, Clone)]
pub struct Topology {
    /// Topic exchange upstream publishes to.
    pub events: String,
    /// The router's queue.
    pub router: String,
    /// Direct exchange of action messages, routing key = connector.
    pub actions: String,
    /// (connector, queue) for every connector.
    pub action_queues: Vec<(&'static str, String)>,
    /// Headers exchange that routes a delayed message to its tier queue while keeping its routing
    /// key (the connector), so that dead-lettering returns it to the right action queue.
    pub retry: String,
    /// (delay, queue) per tier, in schedule order.
    pub retry_queues: Vec<(Duration, String)>,
    /// Dead-lettered actions.
    pub dead_letter: String,
    /// Rejected events.
    pub rejected: String,
    /// The stream of operators' pauses and resumes (SPEC §10, [`crate::control`]).
    pub destinations: String,
    /// The stream of each process's destination status.
    pub destinations_status: String,
    /// Queue type of every queue.
    pub queue_type: QueueType,
    /// Replicas of each quorum queue at creation (`amqp.quorum_replicas`); `None`: RabbitMQ's own.
    pub quorum_replicas: Option<u32>,
    /// Jitter fraction: a tier's queue TTL is its delay stretched by it.
    pub jitter: f64,
}

impl Topology {
    /// The names for a configuration.
    pub fn new(config: &Config) -> Topology {
        let mut tiers: Vec<(Duration, String)> = Vec::new();
        for &delay in &config.retry.schedule {
            if !tiers.iter().any(|(d, _)| *d == delay) {
                tiers.push((
                    delay,
                    config.name(&format!("retry.{}", format_delay(delay))),
                ));
            }
        }
        Topology {
            events: config.name("events"),
            router: config.name("router"),
            actions: config.name("actions"),
            action_queues: ConnectorKind::names()
                .into_iter()
                .map(|c| (c, config.name(&format!("action.{c}"))))
                .collect(),
            retry: config.name("retry"),
            retry_queues: tiers,
            dead_letter: config.name("dead-letter"),
            rejected: config.name("events.rejected"),
            destinations: config.name("destinations"),
            destinations_status: config.name("destinations.status"),
            queue_type: config.amqp.queue_type,
            quorum_replicas: config.amqp.quorum_replicas,
            jitter: config.retry.jitter,
        }
    }

    /// The action queue of a connector.
    pub fn action_queue(&self, connector: &str) -> Option<&str> {
        self.action_queues
            .iter()
            .find(|(c, _)| *c == connector)
            .map(|(_, q)| q.as_str())
    }

    /// The tier queue TTL: the delay plus the jitter allowance, so no message waits longer.
    pub fn tier_ttl(&self, delay: Duration) -> Duration {
        crate::delivery::retry::tier_ttl(delay, self.jitter)
    }

    /// Every queue name, for depth gauges.
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = vec![self.router.clone()];
        queues.extend(self.action_queues.iter().map(|(_, q)| q.clone()));
        queues.extend(self.retry_queues.iter().map(|(_, q)| q.clone()));
        queues.push(self.dead_letter.clone());
        queues.push(self.rejected.clone());
        queues
    }

    /// Declares everything, idempotently, on a channel of its own.
    pub async fn declare(&self, connection: &Connection) -> Result<(), BrokerError> {
        let mut channel = connection
            .create_channel()
            .await
            .context("opening a channel to declare the topology")?;
        let result = self.declare_on(connection, &mut channel).await;
        close_channel(&channel, 200, "declared").await;
        result
    }

    async fn declare_on(
        &self,
        connection: &Connection,
        channel: &mut Channel,
    ) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for (name, kind) in [
            (&self.events, ExchangeKind::Topic),
            (&self.actions, ExchangeKind::Direct),
            (&self.retry, ExchangeKind::Headers),
        ] {
            channel
                .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
                .await
                .context(format!("declaring exchange {name}"))?;
        }
        // Poison backstop: a message redelivered too often goes where a person will see it.
        let mut router_args = self.queue_args();
        self.backstop(&mut router_args, &self.rejected);
        self.queue(connection, channel, &self.router, router_args)
            .await?;
        self.bind(
            channel,
            &self.router,
            &self.events,
            "#",
            FieldTable::default(),
        )
        .await?;
        for (connector, queue) in &self.action_queues {
            let mut args = self.queue_args();
            self.backstop(&mut args, &self.dead_letter);
            self.queue(connection, channel, queue, args).await?;
            self.bind(
                channel,
                queue,
                &self.actions,
                connector,
                FieldTable::default(),
            )
            .await?;
        }
        for (delay, queue) in &self.retry_queues {
            let mut args = self.queue_args();
            let ttl = i64::try_from(self.tier_ttl(*delay).as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(self.actions.as_str().into()),
            );
            if self.queue_type == QueueType::Quorum {
                // Without these, quorum dead-lettering is at-most-once.
                args.insert(
                    "x-dead-letter-strategy".into(),
                    AMQPValue::LongString("at-least-once".into()),
                );
                args.insert(
                    "x-overflow".into(),
                    AMQPValue::LongString("reject-publish".into()),
                );
            }
            self.queue(connection, channel, queue, args).await?;
            let mut binding = FieldTable::default();
            // `all-with-x`: with plain `all` the broker ignores binding keys that start with `x-`,
            // so every tier would match every message and each retry would be copied into every
            // tier (RabbitMQ 3.10+).
            binding.insert("x-match".into(), AMQPValue::LongString("all-with-x".into()));
            binding.insert(
                RETRY_TIER_HEADER.into(),
                AMQPValue::LongString(format_delay(*delay).into()),
            );
            self.bind(channel, queue, &self.retry, "", binding).await?;
        }
        self.queue(connection, channel, &self.dead_letter, self.queue_args())
            .await?;
        self.queue(connection, channel, &self.rejected, self.queue_args())
            .await?;
        Ok(())
    }

    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            if let Some(replicas) = self.quorum_replicas {
                // Read at creation only: RabbitMQ does not compare it when the queue exists.
                args.insert(
                    "x-quorum-initial-group-size".into(),
                    AMQPValue::LongLongInt(i64::from(replicas)),
                );
            }
        }
        args
    }

    fn backstop(&self, args: &mut FieldTable, target: &str) {
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(target.into()),
            );
        }
    }

    /// Declares a queue. A quorum queue that exists with another replica count
    /// (`x-quorum-initial-group-size`, which RabbitMQ compares on every declare although it
    /// only acts on it at creation) is taken as it is, with a warning: changing
    /// `amqp.quorum_replicas` must not stop a deployment whose queues already exist. The
    /// refusal closed the channel, so `channel` is replaced by a new one.
    async fn queue(
        &self,
        connection: &Connection,
        channel: &mut Channel,
        name: &str,
        args: FieldTable,
    ) -> Result<(), BrokerError> {
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let context = || {
            format!(
                "declaring queue {name} (if it exists with other arguments, delete it or use another amqp.prefix)"
            )
        };
        match channel.queue_declare(name.into(), options, args).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("'x-quorum-initial-group-size'") => {
                *channel = connection
                    .create_channel()
                    .await
                    .context("reopening the declaring channel")?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(name.into(), passive, FieldTable::default())
                    .await
                    .context(context())?;
                tracing::warn!(
                    queue = name,
                    quorum_replicas = ?self.quorum_replicas,
                    "the queue exists with another replica count; amqp.quorum_replicas applies when a queue is created (`rabbitmq-queues grow` or `shrink` changes an existing one)"
                );
                Ok(())
            }
            Err(e) => Err(e).context(context()),
        }
    }

    async fn bind(
        &self,
        channel: &Channel,
        queue: &str,
        exchange: &str,
        key: &str,
        args: FieldTable,
    ) -> Result<(), BrokerError> {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                args,
            )
            .await
            .context(format!("binding {queue} to {exchange}"))
    }

    /// Every exchange and queue, for `switchyard topology`.
    pub fn describe(&self) -> Vec<String> {
        self.describe_with(|_| String::new())
    }

    /// [`Topology::describe`], with `placement(queue)` appended to each queue's line (where its
    /// leader is).
    pub fn describe_with(&self, placement: impl Fn(&str) -> String) -> Vec<String> {
        let mut lines = vec![
            format!("exchange {} (topic)", self.events),
            format!("exchange {} (direct)", self.actions),
            format!("exchange {} (headers)", self.retry),
            format!(
                "queue {} <- {} #{}",
                self.router,
                self.events,
                placement(&self.router)
            ),
        ];
        for (connector, queue) in &self.action_queues {
            lines.push(format!(
                "queue {queue} <- {} {connector}{}",
                self.actions,
                placement(queue)
            ));
        }
        for (delay, queue) in &self.retry_queues {
            lines.push(format!(
                "queue {queue} <- {} (ttl {} then back to {}){}",
                self.retry,
                humantime::format_duration(self.tier_ttl(*delay)),
                self.actions,
                placement(queue)
            ));
        }
        for queue in [&self.dead_letter, &self.rejected] {
            lines.push(format!("queue {queue}{}", placement(queue)));
        }
        lines
    }
}

/// An open connection and the node of `amqp.url` it reached.
pub struct Connected {
    /// The connection.
    pub connection: Connection,
    /// Its index in `amqp.url`.
    pub node: usize,
}

/// Opens a connection named after the process role to the first node of `urls` that answers,
/// trying them in turn from `first` (wrapping around), each within `timeout`
/// (`amqp.connect_timeout`). With one URL, its error is returned as it is; with several, every
/// node's error.
pub async fn connect_from(
    urls: &[String],
    first: usize,
    name: &str,
    timeout: Duration,
) -> Result<Connected, BrokerError> {
    let mut errors = Vec::new();
    for node in (0..urls.len()).map(|i| (first + i) % urls.len()) {
        match connect(&urls[node], name, timeout).await {
            Ok(connection) => return Ok(Connected { connection, node }),
            Err(error) => {
                if urls.len() > 1 {
                    tracing::warn!(node = %node_label(&urls[node]), error = %error, "broker node unreachable; trying the next");
                }
                errors.push(error);
            }
        }
    }
    match errors.len() {
        1 => Err(errors.remove(0)),
        _ => Err(BrokerError::NoNode(errors)),
    }
}

/// [`connect_from`] the first node of `amqp.url`: for commands, which run once.
pub async fn connect_any(amqp: &AmqpConfig, name: &str) -> Result<Connected, BrokerError> {
    connect_from(&amqp.url, 0, name, amqp.connect_timeout).await
}

/// The largest AMQP frame a connection asks for, unless its URL sets `frame_max`.
///
/// lapin keeps a receive and a send buffer of 32 frames per connection, zero-filled: at
/// RabbitMQ's default of 128 KiB that is 8 MiB of resident memory per connection, a quarter of
/// the service's peak; at 16 KiB, 1 MiB. A message larger than a frame goes in several body
/// frames (events are about 1 KiB; `router.max_event_bytes` is 256 KiB by default).
pub const FRAME_MAX: u32 = 16 * 1024;

/// Opens a connection to one node, within `timeout`.
async fn connect(url: &str, name: &str, timeout: Duration) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let context = || format!("connecting to {}", redact_url(url));
    let mut uri = parse_url(url)
        .map_err(|e| lapin::Error::from(std::io::Error::other(e)))
        .context(context())?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    // Bounded: something that accepts the TCP connection and never speaks AMQP (a wrong port, a
    // wedged broker, a proxy) would otherwise hold a command, or the service's reconnect loop,
    // forever and without a word.
    match tokio::time::timeout(timeout, Connection::connect_uri(uri, properties)).await {
        Ok(connected) => connected.context(context()),
        Err(_) => Err(BrokerError::Timeout {
            context: format!("{} (TCP and the AMQP handshake)", context()),
            after: timeout,
        }),
    }
}

/// Checks a node URL the way the connection will read it; the error never repeats the URL (it
/// may hold a password).
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err("must start with amqp:// or amqps://".into());
    }
    parse_url(url).map(drop)
}

/// Reads a node URL as lapin does; the error never repeats the URL (it may hold a password).
fn parse_url(url: &str) -> Result<lapin::uri::AMQPUri, String> {
    url.parse::<lapin::uri::AMQPUri>()
        .map_err(|e| e.replace(url, "the URL"))
}

/// A node as logs name it: `host:port`, never the credentials.
pub fn node_label(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => {
            let port = parsed.port().unwrap_or(if parsed.scheme() == "amqps" {
                5671
            } else {
                5672
            });
            format!("{}:{port}", parsed.host_str().unwrap_or("localhost"))
        }
        Err(_) => redact_url(url),
    }
}

/// A URL without its password, for messages; also a URL that does not parse (an invalid entry
/// must be named without giving its password away).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => {
            // By hand: the user information ends at the last '@' before the path.
            let start = url.find("://").map_or(0, |i| i + 3);
            let end = url[start..]
                .find(['?', '#'])
                .map_or(url.len(), |i| start + i);
            match url[start..end].rfind('@') {
                Some(at) => {
                    let userinfo = &url[start..start + at];
                    let user = userinfo.split(':').next().unwrap_or("");
                    let hidden = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{}{user}{hidden}{}", &url[..start], &url[start + at..])
                }
                None => url.to_owned(),
            }
        }
    }
}

/// A channel in confirm mode, shared by every task that publishes.
#[derive(Clone, Debug)]
pub struct Publisher {
    /// The confirm-mode channel.
    channel: Channel,
    /// Held while a publish takes its confirm number and queues its frames (see
    /// [`Publisher::send`]).
    order: Arc<Mutex<()>>,
}

/// A publish whose confirm has not arrived yet.
pub type PendingConfirm = lapin::PublisherConfirm;

impl Publisher {
    /// Opens a channel and enables publisher confirms.
    pub async fn open(connection: &Connection) -> Result<Publisher, BrokerError> {
        let channel = connection
            .create_channel()
            .await
            .context("opening the publish channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        Ok(Publisher {
            channel,
            order: Arc::default(),
        })
    }

    /// Sends a persistent message; await the result with [`Publisher::confirmed`].
    /// `mandatory` makes an unroutable message come back as a failure instead of vanishing.
    pub async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PendingConfirm, BrokerError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut publish = std::pin::pin!(self.channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            body,
            properties.with_delivery_mode(2),
        ));
        // lapin numbers a publish for its confirm, then queues its frames, with nothing to keep
        // another thread's publish from coming in between: the broker would then confirm each
        // under the other's number. Both happen in the first poll (the rest waits for the write),
        // so that poll runs under `order`; the wait for the write does not.
        let first = {
            let _order = self
                .order
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut cx = Context::from_waker(Waker::noop());
            publish.as_mut().poll(&mut cx)
        };
        let result = match first {
            Poll::Ready(result) => result,
            Poll::Pending => publish.await,
        };
        lazy_context(result, || format!("publishing to {exchange} {routing_key}"))
    }

    /// Waits for a confirm; a nack or a returned (unroutable) message is an error.
    pub async fn confirmed(pending: PendingConfirm, what: &str) -> Result<(), BrokerError> {
        match lazy_context(pending.await, || format!("confirming {what}"))? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(what.to_owned())),
            Confirmation::Nack(_) => Err(BrokerError::Refused(what.to_owned())),
        }
    }

    /// Publishes and waits for the confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let pending = self.send(exchange, routing_key, body, properties).await?;
        Publisher::confirmed(pending, routing_key).await
    }

    /// The underlying channel (for passive declares and gets).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// A string header.
pub fn header_str<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a str> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// An integer header, whatever width it was sent with.
pub fn header_int(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    match headers?.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

/// Sets a string header.
pub fn set_str(headers: &mut FieldTable, name: &str, value: impl Into<LongString>) {
    headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
}

/// Sets an integer header.
pub fn set_int(headers: &mut FieldTable, name: &str, value: i64) {
    headers.insert(ShortString::from(name), AMQPValue::LongLongInt(value));
}
