//! The broker side of the runtime: connecting, declaring the topology, and translating
//! between the contract's plain messages and AMQP frames.
//!
//! This is the only module that builds `BasicProperties` or reads them back; the names come
//! from [`eventline_events::Topology`], never from string literals here.

use std::time::Duration;

use eventline_events::envelope::{CONTENT_TYPE_JSON, HeaderValue};
use eventline_events::{IncomingMessage, OutgoingMessage, Service, Topology};
use lapin::Confirmation;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::config::SecretUrl;

/// How long a transiently failed command waits in the retry queue before it is delivered again.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// How many times the broker redelivers a command whose worker died (or never acked) before it
/// dead-letters it. Guards against a message that crashes every worker that touches it.
pub const DELIVERY_LIMIT: i64 = 10;

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
pub async fn connect(url: &SecretUrl, role: &str) -> Result<Connection, BrokerError> {
    let properties =
        ConnectionProperties::default().with_connection_name(format!("eventline {role}").into());
    Connection::connect(url.expose(), properties)
        .await
        .map_err(|source| BrokerError::Connect {
            url: url.to_string(),
            source,
        })
}

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
    ] {
        channel
            .exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await?;
    }
    Ok(())
}

/// Declares one service's queues: commands (quorum), retry (delay) and dead letters. Idempotent,
/// so every replica declares at start and none depends on another having done it.
pub async fn declare_service_queues(
    channel: &Channel,
    topology: &Topology,
    service: Service,
) -> Result<(), BrokerError> {
    declare_exchanges(channel, topology).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let routing_key = topology.command_routing_key(service);

    // Quorum queue: replicated-log semantics, survives broker restarts, and counts deliveries
    // so a message that kills its consumer is dead-lettered after DELIVERY_LIMIT tries instead
    // of looping forever. `at-least-once` dead-lettering never drops such a message.
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    dead_letter_to(&mut args, &topology.dead_letter_exchange(), routing_key);
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    let commands = topology.command_queue(service);
    channel
        .queue_declare(commands.as_str().into(), durable, args)
        .await?;
    channel
        .queue_bind(
            commands.into(),
            topology.commands_exchange().into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // Queries: their own queue so reads never wait behind writes. Classic, not quorum: a
    // query changes nothing and its sender retries it, so it needs no replicated log (and each
    // quorum queue costs a process and a log of its own).
    let mut args = FieldTable::default();
    dead_letter_to(&mut args, &topology.dead_letter_exchange(), routing_key);
    let queries = topology.query_queue(service);
    channel
        .queue_declare(queries.as_str().into(), durable, args)
        .await?;
    channel
        .queue_bind(
            queries.into(),
            topology.commands_exchange().into(),
            topology.query_routing_key(service).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // The retry queue has no consumer: messages wait out their TTL, then the broker
    // dead-letters them back to the commands exchange — a delay without a timer in any worker.
    let mut args = FieldTable::default();
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(RETRY_DELAY.as_millis() as i64),
    );
    dead_letter_to(&mut args, &topology.commands_exchange(), routing_key);
    channel
        .queue_declare(topology.retry_queue(service).into(), durable, args)
        .await?;

    // Replies to the commands this service sends (only sagas consume it; declaring it for
    // every service keeps the topology uniform). Durable, with persistent messages: a reply
    // survives a broker restart. Classic: replies come from our own workers, so the delivery
    // limit that guards command queues against poison is not needed here.
    let mut args = FieldTable::default();
    dead_letter_to(&mut args, &topology.dead_letter_exchange(), routing_key);
    channel
        .queue_declare(topology.reply_queue(service).into(), durable, args)
        .await?;

    // Timers: each message carries its own expiration; when it expires the broker delivers it
    // to the service's command queue. All of a service's timers have the same length, so
    // first-in is first-out and no message waits behind a longer one.
    let mut args = FieldTable::default();
    dead_letter_to(&mut args, &topology.commands_exchange(), routing_key);
    channel
        .queue_declare(topology.delay_queue(service).into(), durable, args)
        .await?;

    let dead_letters = topology.dead_letter_queue(service);
    channel
        .queue_declare(dead_letters.as_str().into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            dead_letters.into(),
            topology.dead_letter_exchange().into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
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
            Ok(channel) => channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map(drop),
            Err(e) => Err(e),
        };
        if let Err(error) = result {
            failures.push(format!("queue {queue}: {error}"));
        }
    }
    for exchange in topology.all_exchanges() {
        let result = match connection.create_channel().await {
            Ok(channel) => {
                channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(error) = result {
            failures.push(format!("exchange {exchange}: {error}"));
        }
    }
    failures
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
    let started = std::time::Instant::now();
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
    super::metrics::confirm_waited(super::metrics::Publisher::Message, started.elapsed());
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
