//! The broker side of the client and the workers: connecting, declaring the topology,
//! publishing with confirms, consuming, and translating between the contract's plain messages
//! and AMQP frames.
//!
//! This is the only module that builds `BasicProperties` or AMQP field tables, or reads them
//! back, and the only one that acks or nacks (a worker's `broker::carry_out` carries out its
//! `Settlement` through [`ack_delivery`] and [`requeue`]); the names come from
//! [`eventline_events::Topology`], never from string literals here. It must never decide what
//! happens to a message: the workers' `settle` does.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use eventline_events::auth::TOKEN_HEADER;
use eventline_events::envelope::{CONTENT_TYPE_JSON, HeaderValue, headers};
use eventline_events::reply_to::DIRECT_REPLY_TO;
use eventline_events::{IncomingMessage, OutgoingMessage, Service, Topology};
use lapin::Confirmation;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::SecretUrl;

/// How many times a quorum queue hands out a message that is returned (its consumer died,
/// or nacked it) before the broker dead-letters it: the backstop for a message that crashes
/// every worker that touches it. A queue argument, so it never changes (the broker would refuse
/// the re-declare); the worker's own, lower limit with a reason is `RetryPolicy::delivery_limit`.
pub const QUEUE_DELIVERY_LIMIT: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "could not reach RabbitMQ at {url}: {source}. Is it running (`rabbitmq-server -detached`)? \
         Set AMQP_URL to point elsewhere."
    )]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error(
        "could not reach RabbitMQ at {url}: no connection within {after:?}. Is it running \
         (`rabbitmq-server -detached`)? Set AMQP_URL to point elsewhere."
    )]
    ConnectTimedOut { url: String, after: Duration },
    #[error(
        "RabbitMQ refused to store a message published to exchange {exchange:?} with routing key {routing_key:?} (negative confirm); is a disk or memory alarm on?"
    )]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error(
        "no queue is bound to exchange {exchange:?} with routing key {routing_key:?}, so the message was returned, not stored; start that service's worker once (it declares its queues), or check EVENTLINE_NAMESPACE"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled the consumer on queue {0:?} (was the queue deleted?)")]
    ConsumerCancelled(String),
}

/// Opens a connection whose name (`eventline {role}`) shows in `rabbitmqctl list_connections`.
/// It accepts the largest frame the server allows: a delivery's header frame cannot be split,
/// so a consumer that asked for less would have its connection closed by any client's message
/// with a large header, on every redelivery.
pub async fn connect(url: &SecretUrl, role: &str) -> Result<Connection, BrokerError> {
    connect_with(url, role, None).await
}

/// The largest frame a [`connect_publisher`] connection asks for.
pub const PUBLISHER_FRAME_MAX: u32 = 8 * 1024;

/// Opens a connection for a process's own small messages only (presence heartbeats), which
/// nobody delivers to. lapin keeps a send and a receive buffer of 32 frames each, zero-filled:
/// at RabbitMQ's default `frame_max` (128 KiB) that is 8 MiB resident per connection, at
/// [`PUBLISHER_FRAME_MAX`] half a MiB. A larger message is split into more frames, not refused.
pub async fn connect_publisher(url: &SecretUrl, role: &str) -> Result<Connection, BrokerError> {
    connect_with(url, role, Some(PUBLISHER_FRAME_MAX)).await
}

async fn connect_with(
    url: &SecretUrl,
    role: &str,
    frame_max: Option<u32>,
) -> Result<Connection, BrokerError> {
    let properties =
        ConnectionProperties::default().with_connection_name(format!("eventline {role}").into());
    let connecting = async {
        match (frame_max, url.expose().parse::<AMQPUri>()) {
            (Some(frame_max), Ok(mut uri)) => {
                // A frame size the URL names (`?frame_max=`) is the operator's and stays.
                uri.query.frame_max.get_or_insert(frame_max);
                Connection::connect_uri(uri, properties).await
            }
            // Unparsable: lapin's own connect reports it as it reports any bad URL.
            _ => Connection::connect(url.expose(), properties).await,
        }
    };
    // lapin 4 can lose a refused connection's error: its IO thread fails the connect and
    // clears the waiting handshake steps while the caller is still queueing the protocol
    // header, and a header queued after that clearing is never answered. Seen in CI as a
    // `send` to a closed port that never returned. The deadline turns that into the same
    // named error a refusal gives.
    match tokio::time::timeout(CONNECT_DEADLINE, connecting).await {
        Ok(connected) => connected.map_err(|source| BrokerError::Connect {
            url: url.to_string(),
            source,
        }),
        Err(_) => Err(BrokerError::ConnectTimedOut {
            url: url.to_string(),
            after: CONNECT_DEADLINE,
        }),
    }
}

/// How long opening a connection may take, handshake included, before it is reported as
/// unreachable. A live broker on this kind of machine answers in milliseconds even at
/// saturation; the callers that must outlast a broker restart retry on their own.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// A channel in confirm mode: every publish waits for the broker's confirm, so a message the
/// caller considers sent has been written by the broker.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Declares the exchanges every process of a namespace relies on. Idempotent.
pub async fn declare_exchanges(channel: &Channel, topology: &Topology) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in [
        (topology.commands_exchange(), ExchangeKind::Direct),
        (topology.dead_letter_exchange(), ExchangeKind::Direct),
        (topology.events_exchange(), ExchangeKind::Topic),
        (topology.presence_exchange(), ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await?;
    }
    Ok(())
}

/// One queue of a service as it should be declared.
struct QueueSpec {
    name: String,
    args: FieldTable,
    /// `(exchange, routing key)` to bind it to.
    bind: Option<(String, String)>,
    /// A quorum queue: it counts deliveries (`x-delivery-count`) and has a delivery limit.
    quorum: bool,
}

/// A quorum queue's arguments: replicated-log semantics, survives broker restarts, and counts
/// deliveries, so a message that kills its consumer is dead-lettered (`at-least-once`: never
/// dropped) after [`QUEUE_DELIVERY_LIMIT`] tries instead of looping forever.
fn quorum_args(dead_letter_exchange: &str, routing_key: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(QUEUE_DELIVERY_LIMIT)),
    );
    dead_letter_to(&mut args, dead_letter_exchange, routing_key);
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    args
}

/// Every queue of a service, in declaration order. No argument here depends on the retry
/// policy: a policy change must never change a queue's arguments.
fn service_queues(topology: &Topology, service: Service) -> Vec<QueueSpec> {
    let routing_key = topology.command_routing_key(service);
    let dead_letters = topology.dead_letter_exchange();
    let commands = topology.commands_exchange();
    // A delay without a timer in any worker: no consumer; each message carries its own
    // expiration, and when it expires the broker dead-letters it back to the commands
    // exchange. The retry queue holds transient failures (expiration = the policy's retry
    // delay); the delay queue holds saga timers (all of a service's timers have the same
    // length). Within each queue every message waits as long, so first-in is first-out and no
    // message waits behind a longer one.
    let delay = || {
        let mut args = FieldTable::default();
        dead_letter_to(&mut args, &commands, routing_key);
        args
    };
    vec![
        QueueSpec {
            name: topology.command_queue(service),
            args: quorum_args(&dead_letters, routing_key),
            bind: Some((commands.clone(), routing_key.to_owned())),
            quorum: true,
        },
        // Queries: their own queue so reads never wait behind writes. Quorum too: a query
        // that crashes its worker must not loop, and only a quorum queue counts deliveries.
        QueueSpec {
            name: topology.query_queue(service),
            args: quorum_args(&dead_letters, routing_key),
            bind: Some((commands.clone(), topology.query_routing_key(service))),
            quorum: true,
        },
        QueueSpec {
            name: topology.retry_queue(service),
            args: delay(),
            bind: None,
            quorum: false,
        },
        // Replies to the commands this service sends (only sagas consume it; declaring it for
        // every service keeps the topology uniform). Quorum: a reply that crashes the saga's
        // worker is counted and dead-lettered like a command, and survives a broker restart.
        QueueSpec {
            name: topology.reply_queue(service),
            args: quorum_args(&dead_letters, routing_key),
            bind: None,
            quorum: true,
        },
        QueueSpec {
            name: topology.delay_queue(service),
            args: delay(),
            bind: None,
            quorum: false,
        },
        QueueSpec {
            name: topology.dead_letter_queue(service),
            args: FieldTable::default(),
            bind: Some((dead_letters.clone(), routing_key.to_owned())),
            quorum: false,
        },
    ]
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

async fn declare_spec(channel: &Channel, spec: &QueueSpec) -> Result<(), lapin::Error> {
    channel
        .queue_declare(spec.name.as_str().into(), durable(), spec.args.clone())
        .await?;
    bind_spec(channel, spec).await
}

/// Binds a queue as its spec says (nothing for a queue with no binding).
async fn bind_spec(channel: &Channel, spec: &QueueSpec) -> Result<(), lapin::Error> {
    if let Some((exchange, key)) = &spec.bind {
        channel
            .queue_bind(
                spec.name.as_str().into(),
                exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares one service's queues exactly as this version wants them, failing (with the
/// broker's PRECONDITION_FAILED) where one exists with other arguments. For namespaces this
/// process owns (tests, the demo, the bench); workers use [`ensure_service_queues`].
pub async fn declare_service_queues(
    channel: &Channel,
    topology: &Topology,
    service: Service,
) -> Result<(), BrokerError> {
    declare_exchanges(channel, topology).await?;
    for spec in service_queues(topology, service) {
        declare_spec(channel, &spec).await?;
    }
    Ok(())
}

/// What [`ensure_service_queues`] found.
#[derive(Clone, Debug, Default)]
pub struct DeclaredQueues {
    /// Queues known to count deliveries (declared here as quorum queues).
    counting: Vec<String>,
}

impl DeclaredQueues {
    /// Whether deliveries from `queue` carry a trustworthy `x-delivery-count`.
    pub fn counts_deliveries(&self, queue: &str) -> bool {
        self.counting.iter().any(|q| q == queue)
    }
}

/// Declares one service's queues for a worker, tolerating queues that an older version
/// declared with other arguments (a classic reply queue, a retry queue with a fixed TTL): the
/// broker refuses such a re-declare with PRECONDITION_FAILED, which would otherwise make every
/// reconnect fail. Such a queue is used as it is, with a warning that says how to migrate it;
/// it is not trusted to count deliveries. Each queue gets a channel of its own, because a
/// refused declare closes its channel.
pub async fn ensure_service_queues(
    connection: &Connection,
    topology: &Topology,
    service: Service,
) -> Result<DeclaredQueues, BrokerError> {
    let channel = connection.create_channel().await?;
    declare_exchanges(&channel, topology).await?;
    let _ = channel.close(200, "declared".into()).await;
    let mut declared = DeclaredQueues::default();
    for spec in service_queues(topology, service) {
        let channel = connection.create_channel().await?;
        match declare_spec(&channel, &spec).await {
            Ok(()) => {
                let _ = channel.close(200, "declared".into()).await;
                if spec.quorum {
                    declared.counting.push(spec.name.clone());
                }
            }
            Err(error) if is_precondition_failed(&error) => {
                // Exists, with the arguments of an older version: make sure it is there and
                // bound, and carry on with it.
                inspect_queue(connection, &spec.name).await?;
                if spec.bind.is_some() {
                    let channel = connection.create_channel().await?;
                    bind_spec(&channel, &spec).await?;
                    let _ = channel.close(200, "bound".into()).await;
                }
                tracing::warn!(
                    queue = %spec.name,
                    %error,
                    "queue exists with the arguments of an older version; using it as it is \
                     (its deliveries are not counted, so a panic dead-letters at once). To \
                     migrate: stop its senders, let it drain, delete it, and restart a worker"
                );
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(declared)
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

/// Where the broker sends a queue's expired or rejected messages.
fn dead_letter_to(args: &mut FieldTable, exchange: &str, routing_key: &str) {
    args.insert("x-dead-letter-exchange".into(), text(exchange));
    args.insert("x-dead-letter-routing-key".into(), text(routing_key));
}

/// A queue's message and consumer counts, from a passive declare on a channel of its own (a
/// passive declare of a missing queue closes its channel, so it must not share one).
/// Fails, with the broker's NOT_FOUND, if the queue does not exist.
pub async fn inspect_queue(
    connection: &Connection,
    queue: &str,
) -> Result<lapin::Queue, lapin::Error> {
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    if declared.is_ok() {
        let _ = channel.close(200, "probe".into()).await;
    }
    declared
}

/// Deletes every queue and exchange of a namespace, best effort (for tests, the demo and the
/// bench, which own their namespaces). Messages in them are gone. Each deletion gets its own
/// channel, so one failure (which closes its channel) cannot silently skip the rest; failures
/// are returned as text.
pub async fn delete_namespace(connection: &Connection, topology: &Topology) -> Vec<String> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let mut failures = Vec::new();
    for queue in topology.all_queues() {
        let result = match connection.create_channel().await {
            Ok(channel) => {
                let deleted = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .map(drop);
                close_channel(&channel, "deleted").await;
                deleted
            }
            Err(e) => Err(e),
        };
        if let Err(error) = result {
            failures.push(format!("queue {queue}: {error}"));
        }
    }
    for exchange in topology.all_exchanges() {
        let result = match connection.create_channel().await {
            Ok(channel) => {
                let deleted = channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
                close_channel(&channel, "deleted").await;
                deleted
            }
            Err(e) => Err(e),
        };
        if let Err(error) = result {
            failures.push(format!("exchange {exchange}: {error}"));
        }
    }
    failures
}

/// Closes a channel the caller is done with, if it is still open, rather than leaving it to
/// its drop. A dropped channel asks lapin to close it in the background; when its connection
/// is closed right after, that close finds the channel already closing, fails, and lapin logs
/// the failure as a connection ERROR, which an operator would rightly chase.
pub async fn close_channel(channel: &Channel, why: &str) {
    if channel.status().connected() {
        let _ = channel.close(200, why.into()).await;
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Folds AMQP's many header types into the contract's two.
fn header_value(value: &AMQPValue) -> HeaderValue {
    match value {
        AMQPValue::LongString(s) => {
            HeaderValue::Text(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(s) => HeaderValue::Text(s.as_str().to_owned()),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        other => HeaderValue::Other(format!("{other:?}").chars().take(80).collect()),
    }
}

fn amqp_value(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::Text(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
        HeaderValue::Other(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
    }
}

/// A received AMQP message as the contract's unvalidated [`IncomingMessage`].
pub fn incoming(properties: &BasicProperties, body: Vec<u8>) -> IncomingMessage {
    let string = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
    IncomingMessage {
        message_id: string(properties.message_id()),
        correlation_id: string(properties.correlation_id()),
        message_type: string(properties.kind()),
        content_type: string(properties.content_type()),
        reply_to: string(properties.reply_to()),
        headers: properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), header_value(v)))
                    .collect()
            })
            .unwrap_or_default(),
        body,
    }
}

/// The AMQP properties of an outgoing message: persistent, JSON, with every id.
pub fn properties(message: &OutgoingMessage) -> BasicProperties {
    let metadata = &message.metadata;
    let mut headers = FieldTable::default();
    for (name, value) in message.headers() {
        headers.insert(name.into(), amqp_value(&value));
    }
    let mut properties = BasicProperties::default()
        .with_message_id(metadata.message_id.to_string().into())
        .with_correlation_id(metadata.correlation_id.to_string().into())
        .with_type(metadata.message_type.as_str().into())
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(2)
        .with_timestamp(metadata.occurred_at.unix_timestamp().max(0) as u64)
        .with_headers(headers);
    if let Some(reply_to) = &metadata.reply_to {
        properties = properties.with_reply_to(reply_to.as_str().into());
    }
    properties
}

/// Who hears how long each confirm took: set once per process (the workers' metrics, when
/// they are installed), so this crate measures without depending on a metrics crate.
static CONFIRM_OBSERVER: OnceLock<fn(Duration)> = OnceLock::new();

/// Has every later [`publish_confirmed`] in this process report its wait for the confirm
/// (once the broker answered, with a nack or a return too) to `observer`. The first
/// observer stays.
pub fn observe_confirms(observer: fn(Duration)) {
    let _ = CONFIRM_OBSERVER.set(observer);
}

/// Publishes on a confirm channel and waits for the broker's confirm.
///
/// Always `mandatory`: a message no queue would take is returned and reported as
/// [`BrokerError::Unroutable`] instead of being confirmed and silently dropped.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let started = Instant::now();
    let confirm = channel
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
        .await?
        .await?;
    if let Some(observe) = CONFIRM_OBSERVER.get() {
        observe(started.elapsed());
    }
    match confirm {
        Confirmation::Nack(_) => Err(BrokerError::Nacked {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        }),
        Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        }),
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
    }
}

/// Publishes a reply to `reply_to` through the default exchange and waits for the confirm.
///
/// Not `mandatory`, unlike every other publish: RabbitMQ counts a message to a direct
/// reply-to name as routed to no queue and would return every one (while delivering it),
/// and a reply whose client is gone is meant to be dropped (it re-sends the command).
pub async fn publish_reply(
    channel: &Channel,
    reply_to: &str,
    message: &OutgoingMessage,
) -> Result<(), BrokerError> {
    let started = Instant::now();
    let confirm = channel
        .basic_publish(
            "".into(),
            reply_to.into(),
            BasicPublishOptions::default(),
            &message.body,
            properties(message),
        )
        .await?
        .await?;
    if let Some(observe) = CONFIRM_OBSERVER.get() {
        observe(started.elapsed());
    }
    match confirm {
        Confirmation::Nack(_) => Err(BrokerError::Nacked {
            exchange: String::new(),
            routing_key: reply_to.to_owned(),
        }),
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
    }
}

/// Publishes a contract message and waits for the confirm.
pub async fn publish_message(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    message: &OutgoingMessage,
) -> Result<(), BrokerError> {
    publish_confirmed(
        channel,
        exchange,
        routing_key,
        &message.body,
        properties(message),
    )
    .await
}

/// Whether a consumer acks its deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// Each delivery stays the consumer's until acked or nacked (a worker's queues): one that
    /// is never settled is redelivered when the channel closes.
    Manual,
    /// The broker forgets a message once sent: only for a client's private queues, whose
    /// messages nobody else could take anyway.
    None,
}

/// Starts consuming `queue` under consumer tag `tag`.
pub async fn consume(
    channel: &Channel,
    queue: &str,
    tag: &str,
    acks: Acks,
) -> Result<lapin::Consumer, BrokerError> {
    Ok(channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: acks == Acks::None,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?)
}

/// Starts consuming RabbitMQ's direct reply-to pseudo-queue on `channel` (no-ack: the broker
/// requires it). Commands published afterwards on the same channel with `reply_to` =
/// [`DIRECT_REPLY_TO`] get their replies here, with no reply queue on the broker.
pub async fn consume_direct_replies(
    channel: &Channel,
    tag: &str,
) -> Result<lapin::Consumer, BrokerError> {
    consume(channel, DIRECT_REPLY_TO, tag, Acks::None).await
}

/// A delivery's properties for the retry queue: its own, counting retry `round` and expiring
/// after `delay`. The delay travels with the message, not as a queue argument: a policy change
/// never changes the queue.
pub fn retry_properties(
    properties: &BasicProperties,
    round: u32,
    delay: Duration,
) -> BasicProperties {
    let mut table = properties.headers().clone().unwrap_or_default();
    table.insert(
        headers::RETRY_COUNT.into(),
        AMQPValue::LongLongInt(i64::from(round)),
    );
    properties
        .clone()
        .with_headers(table)
        .with_expiration(delay.as_millis().to_string().into())
}

/// A delivery's properties for its dead letter: its own, without the session token, with
/// `fields` (the dead-letter headers: code, reason, original queue, handler) added.
pub fn dead_letter_properties(
    properties: &BasicProperties,
    fields: &[(&str, &str)],
) -> BasicProperties {
    let mut table = headers_of(properties);
    // A dead letter is read by operators: it must not carry a usable session token.
    table.remove(TOKEN_HEADER);
    for (name, value) in fields {
        // Reasons can quote user input; keep them to a readable size.
        let value: String = value.chars().take(1000).collect();
        table.insert(
            (*name).into(),
            AMQPValue::LongString(value.into_bytes().into()),
        );
    }
    properties.clone().with_headers(table.into())
}

/// Acks a delivery on its own channel.
pub async fn ack_delivery(delivery: &Delivery) -> Result<(), BrokerError> {
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// Nacks a delivery back onto its queue (a quorum queue counts it against its delivery limit).
pub async fn requeue(delivery: &Delivery) -> Result<(), BrokerError> {
    delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await?;
    Ok(())
}

/// How often the broker handed this delivery out before and had it returned: a quorum queue's
/// `x-delivery-count` (absent on a first delivery).
pub fn redeliveries(delivery: &Delivery) -> u32 {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|t| t.inner().get("x-delivery-count").map(header_value))
        .and_then(|v| match v {
            HeaderValue::Int(n) => u32::try_from(n).ok(),
            _ => None,
        })
        .unwrap_or(0)
}

/// Acks one delivery by tag on `channel` (the client's dead-letter re-drive).
pub async fn ack(channel: &Channel, delivery_tag: u64) -> Result<(), BrokerError> {
    channel
        .basic_ack(delivery_tag, BasicAckOptions::default())
        .await?;
    Ok(())
}

/// Acks every outstanding delivery of `channel` up to and including `delivery_tag`, which
/// must itself be outstanding (`multiple`): a worker's settled run of a batch.
pub async fn ack_through(channel: &Channel, delivery_tag: u64) -> Result<(), BrokerError> {
    channel
        .basic_ack(delivery_tag, BasicAckOptions { multiple: true })
        .await?;
    Ok(())
}

/// An open private queue and its consumer: named by the broker, exclusive to one connection
/// and deleted with it, consumed without acks. Clients read their replies and tailed events
/// from one, so nothing a client abandons piles up on the broker. It must never carry a
/// service's work: without acks a message is gone once delivered, which is right only for a
/// reader that can ask again.
pub struct PrivateQueue {
    /// The server-chosen name (`amq.gen-…`), e.g. for `reply_to`.
    pub name: String,
    /// The channel it lives on; closing it ends the consumer.
    pub channel: Channel,
    /// Its deliveries, already settled (no acks).
    pub consumer: lapin::Consumer,
}

/// Declares a private queue on a new channel of `connection` and consumes it (no acks) as
/// `tag`; [`bind_to_events`] on its channel adds event patterns.
pub async fn open_private_queue(
    connection: &Connection,
    tag: &str,
) -> Result<PrivateQueue, BrokerError> {
    let channel = connection.create_channel().await?;
    let name = declare_private_queue(&channel)
        .await?
        .name()
        .as_str()
        .to_owned();
    let consumer = consume(&channel, &name, tag, Acks::None).await?;
    Ok(PrivateQueue {
        name,
        channel,
        consumer,
    })
}

/// A server-named, exclusive, auto-deleted queue: it vanishes with its connection, so an
/// abandoned client's replies or event tail never pile up on the broker.
pub async fn declare_private_queue(channel: &Channel) -> Result<lapin::Queue, BrokerError> {
    Ok(channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?)
}

/// Binds `queue` to the events exchange for event types matching `pattern`.
pub async fn bind_to_events(
    channel: &Channel,
    topology: &Topology,
    queue: &str,
    pattern: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            queue.into(),
            topology.events_exchange().into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// A copy of a message's headers, to edit before they go on another message's properties.
fn headers_of(properties: &BasicProperties) -> BTreeMap<ShortString, AMQPValue> {
    properties
        .headers()
        .as_ref()
        .map(|table| table.inner().clone())
        .unwrap_or_default()
}

/// A dead letter's properties for its re-drive: the original message's, without what
/// dead-lettering, retries and the broker's bookkeeping added, with `token` (if any) as its
/// session token.
pub fn redrive_properties(properties: &BasicProperties, token: Option<&str>) -> BasicProperties {
    let mut table = headers_of(properties);
    table.retain(|name, _| {
        let name = name.as_str();
        ![
            headers::DEAD_LETTER_CODE,
            headers::DEAD_LETTER_REASON,
            headers::ORIGINAL_QUEUE,
            headers::HANDLED_BY,
            headers::RETRY_COUNT,
            TOKEN_HEADER,
            // The broker's own dead-lettering and quorum-queue bookkeeping.
            "x-death",
            "x-delivery-count",
        ]
        .contains(&name)
            && !name.starts_with("x-first-death-")
            && !name.starts_with("x-last-death-")
    });
    if let Some(token) = token {
        table.insert(
            TOKEN_HEADER.into(),
            AMQPValue::LongString(token.as_bytes().to_vec().into()),
        );
    }
    properties.clone().with_headers(table.into())
}

/// Properties for a delayed message: a contract message that the delay queue holds for `delay`.
pub fn delayed_properties(message: &OutgoingMessage, delay: Duration) -> BasicProperties {
    properties(message).with_expiration(delay.as_millis().to_string().into())
}

/// A durable queue bound to every event on the events exchange: an auditor's tap that must not
/// miss an event even across a broker restart (the chaos checks).
pub async fn declare_event_tap(
    channel: &Channel,
    topology: &Topology,
    queue: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_declare(queue.into(), durable(), FieldTable::default())
        .await?;
    bind_to_events(channel, topology, queue, "#").await
}

/// Publishes a presence heartbeat (`runtime::presence`) on a plain channel: no confirm, not
/// mandatory, not persistent, expiring after `ttl`. A heartbeat nobody reads is dropped by
/// the broker, and one that waited longer than `ttl` is stale, so neither is worth a wait.
pub async fn publish_heartbeat(
    channel: &Channel,
    topology: &Topology,
    body: &[u8],
    ttl: Duration,
) -> Result<(), BrokerError> {
    let properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_expiration(ttl.as_millis().to_string().into());
    // The returned confirm future is dropped: on a channel without confirms it would only
    // say "not requested".
    let confirm = channel
        .basic_publish(
            topology.presence_exchange().as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?;
    drop(confirm);
    Ok(())
}

/// Binds `queue` (a private one) to the presence exchange: it then sees every heartbeat.
pub async fn bind_to_presence(
    channel: &Channel,
    topology: &Topology,
    queue: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            queue.into(),
            topology.presence_exchange().as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery's properties as a client sent them: an id, a causation header, a token.
    fn sent() -> BasicProperties {
        let mut table = FieldTable::default();
        table.insert(TOKEN_HEADER.into(), text("the-session-token"));
        table.insert(headers::CAUSATION_ID.into(), text("cause-1"));
        BasicProperties::default()
            .with_message_id("message-1".into())
            .with_headers(table)
    }

    fn header(properties: &BasicProperties, name: &str) -> Option<HeaderValue> {
        incoming(properties, Vec::new()).headers.get(name).cloned()
    }

    /// A peer that accepts the TCP connection and never speaks AMQP (a hung broker, a wrong
    /// port) must give the named, redacted error within the deadline, not a connect that
    /// never returns.
    #[tokio::test]
    async fn a_broker_that_never_answers_is_reported_unreachable_within_the_deadline() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let url = SecretUrl::new(format!("amqp://guest:hunter2@127.0.0.1:{port}/%2f"));
        let outcome = tokio::time::timeout(CONNECT_DEADLINE * 3, connect(&url, "test")).await;
        let error = outcome
            .expect("connect must end by its own deadline")
            .expect_err("nothing answered, so nothing connected");
        assert!(
            matches!(error, BrokerError::ConnectTimedOut { .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("guest:***@127.0.0.1:{port}")),
            "{message}"
        );
        assert!(
            !message.contains("hunter2"),
            "the password leaked: {message}"
        );
        drop(silent);
    }

    #[test]
    fn a_retry_keeps_the_message_and_counts_its_round_and_expires_after_its_delay() {
        let retry = retry_properties(&sent(), 3, Duration::from_millis(1500));
        assert_eq!(
            retry.expiration().as_ref().map(ShortString::as_str),
            Some("1500")
        );
        assert_eq!(
            header(&retry, headers::RETRY_COUNT),
            Some(HeaderValue::Int(3))
        );
        assert_eq!(
            header(&retry, TOKEN_HEADER),
            Some(HeaderValue::Text("the-session-token".into())),
            "a retried command still needs its token"
        );
        assert_eq!(
            retry.message_id().as_ref().map(ShortString::as_str),
            Some("message-1")
        );
    }

    #[test]
    fn a_dead_letter_drops_the_token_and_keeps_its_reason_readable() {
        let long = "x".repeat(5000);
        let letter = dead_letter_properties(
            &sent(),
            &[
                (headers::DEAD_LETTER_CODE, "invalid_body"),
                (headers::DEAD_LETTER_REASON, &long),
            ],
        );
        assert_eq!(header(&letter, TOKEN_HEADER), None);
        assert_eq!(
            header(&letter, headers::DEAD_LETTER_CODE),
            Some(HeaderValue::Text("invalid_body".into()))
        );
        assert_eq!(
            header(&letter, headers::DEAD_LETTER_REASON),
            Some(HeaderValue::Text("x".repeat(1000)))
        );
        assert_eq!(
            header(&letter, headers::CAUSATION_ID),
            Some(HeaderValue::Text("cause-1".into()))
        );
    }

    #[test]
    fn a_redrive_drops_what_dead_lettering_added_and_carries_the_new_token() {
        let letter = dead_letter_properties(
            &sent(),
            &[
                (headers::DEAD_LETTER_CODE, "retries_exhausted"),
                (headers::ORIGINAL_QUEUE, "the-queue"),
            ],
        );
        let redriven = redrive_properties(&letter, Some("a-fresh-token"));
        assert_eq!(header(&redriven, headers::DEAD_LETTER_CODE), None);
        assert_eq!(header(&redriven, headers::ORIGINAL_QUEUE), None);
        assert_eq!(
            header(&redriven, TOKEN_HEADER),
            Some(HeaderValue::Text("a-fresh-token".into()))
        );
        assert_eq!(
            header(&redriven, headers::CAUSATION_ID),
            Some(HeaderValue::Text("cause-1".into()))
        );
    }
}
