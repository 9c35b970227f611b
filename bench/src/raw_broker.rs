//! The broker alone: how many of eventline's messages per second RabbitMQ takes and hands out
//! when nothing else is in the way. These are the capacities the ceiling model divides.
//!
//! Every message is the real thing, encoded by the runtime's own code: a `reserve_stock`
//! command with its AMQP properties and headers, a worker's reply, a relayed event. Publishes
//! use publisher confirms with a window of in-flight messages; consumers use the workers'
//! prefetch and ack each message, as the worker does. The quorum-queue figures are measured
//! on a queue declared by `broker::declare_service_queues` itself (in a namespace of its own),
//! so it has exactly the command queue's arguments.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventline_events::catalog::{CatalogCommand, CatalogEvent, ReserveStock, StockReserved};
use eventline_events::envelope::{HeaderValue, headers};
use eventline_events::reply::{REPLY_TYPE, ReplyEvent};
use eventline_events::reply_to::DIRECT_REPLY_TO;
use eventline_events::values::{OrderId, ProductId, Quantity};
use eventline_events::{
    CausationId, Contract, CorrelationId, EventId, Metadata, Namespace, OutgoingMessage, Reply,
    Service, Topology,
};
use eventline_workers::runtime::SecretUrl;
use eventline_workers::runtime::broker;
use eventline_workers::runtime::relay;
use eventline_workers::runtime::store::{EventMetadata, RecordedEvent};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation};

use crate::options::Plan;
use crate::progress::Progress;
use crate::usage::{micros_per, with_usage};

/// At most this many messages per publish test, so a fast broker does not fill its disk.
const MAX_MESSAGES: u64 = 2_000_000;
/// A consumer that has not drained its queue by then reports what it got.
const CONSUME_DEADLINE: Duration = Duration::from_secs(60);

/// Publish and consume rates of one kind of queue.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct QueueFigures {
    /// Persistent messages published and confirmed per second.
    pub publish_per_s: f64,
    /// Messages delivered and acked per second, from a full queue.
    pub consume_per_s: f64,
    pub messages: u64,
    /// RabbitMQ's CPU per published / per consumed message, in µs.
    pub publish_cpu_us: f64,
    pub consume_cpu_us: f64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BrokerFigures {
    /// Body bytes of a `catalog.reserve_stock` command (properties and headers come on top).
    pub command_body_bytes: usize,
    /// Bytes of the command's AMQP headers table as the runtime sets it.
    pub command_header_bytes: usize,
    pub confirm_window: usize,
    pub prefetch: u16,
    pub classic: QueueFigures,
    /// The command queue's own declaration: quorum, delivery limit, dead-lettering.
    pub quorum: QueueFigures,
    /// A worker's reply: by direct reply-to to a client's channel, through the default exchange.
    pub reply_publish_per_s: f64,
    /// A relayed event: to the topic events exchange (nothing bound, as in the bench).
    pub event_publish_per_s: f64,
    /// RabbitMQ's CPU per reply / per event published, in µs.
    pub reply_cpu_us: f64,
    pub event_cpu_us: f64,
}

/// The three kinds of message a command puts on the broker, encoded by the runtime.
pub struct Samples {
    pub command: OutgoingMessage,
    pub reply: OutgoingMessage,
    pub event: OutgoingMessage,
}

impl Samples {
    pub fn new() -> Self {
        let product_id = ProductId::parse("s1-0042".into()).expect("a valid product id");
        let order_id = OrderId::new();
        let quantity = Quantity::parse(1).expect("1 is a valid quantity");
        let command = CatalogCommand::from(ReserveStock {
            product_id: product_id.clone(),
            order_id,
            quantity,
        });
        let mut command = OutgoingMessage::new(Metadata::origin(command.message_type()), &command);
        // Direct reply-to names look like this; the name's length is what matters.
        command.metadata.reply_to = Some(format!(
            "{DIRECT_REPLY_TO}.g1h2AA1yZXBseUA5MjQ4ODg0AAAC/QAAAABrD+/6.b0H+f3raDndoBxFJuuQ6ZA=="
        ));
        let event = CatalogEvent::from(StockReserved {
            product_id: product_id.clone(),
            order_id,
            quantity,
            unit_price: eventline_events::values::Money::ZERO,
        });
        let event_id = EventId::new();
        let reply = Reply::Accepted {
            stream_id: product_id.stream_id(),
            events: vec![ReplyEvent {
                event_id,
                message_type: event.message_type().to_owned(),
                stream_version: 42,
                data: event.to_json(),
            }],
            result: None,
        };
        let reply = OutgoingMessage {
            body: serde_json::to_vec(&reply).unwrap_or_default(),
            metadata: Metadata::caused_by(&command.metadata, REPLY_TYPE),
            extra_headers: vec![(headers::HANDLED_BY, HeaderValue::Text("catalog-1".into()))],
        };
        let recorded = RecordedEvent {
            position: 123_456,
            stream_id: product_id.stream_id(),
            stream_version: 42,
            event_id,
            event_type: event.message_type().to_owned(),
            schema_version: 1,
            data: event.to_json(),
            metadata: EventMetadata {
                correlation_id: CorrelationId::new(),
                causation_id: CausationId::new(),
                recorded_by: "catalog-1".into(),
                trace: None,
            },
            recorded_at: time::OffsetDateTime::now_utc(),
        };
        Self {
            command,
            reply,
            event: relay::outgoing(&recorded),
        }
    }
}

/// The namespace whose command queue the quorum figures are measured on.
pub fn raw_namespace(run: &Namespace) -> Namespace {
    Namespace::parse(&format!("{run}-raw")).unwrap_or_else(|_| run.clone())
}

/// The classic queue of the raw test, deleted when it ends.
pub fn classic_queue(run: &Namespace) -> String {
    format!("{run}.bench.raw-classic")
}

pub async fn measure(
    plan: &Plan,
    namespace: &Namespace,
    progress: &Progress,
) -> anyhow::Result<BrokerFigures> {
    let samples = Samples::new();
    let url = &plan.amqp_url;
    let publisher = broker::connect(url, "bench raw publisher").await?;
    let consumer = broker::connect(url, "bench raw consumer").await?;
    let pub_channel = broker::confirm_channel(&publisher).await?;
    let mut figures = BrokerFigures {
        command_body_bytes: samples.command.body.len(),
        command_header_bytes: header_bytes(&samples.command),
        confirm_window: plan.confirm_window,
        prefetch: plan.prefetch,
        ..BrokerFigures::default()
    };

    // Classic durable queue, through the default exchange.
    progress.phase("raw broker: classic queue");
    let classic = classic_queue(namespace);
    let setup = publisher.create_channel().await?;
    setup
        .queue_declare(
            classic.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    figures.classic = publish_then_consume(
        plan,
        &pub_channel,
        &consumer,
        ("", &classic),
        &classic,
        &samples,
    )
    .await?;
    setup
        .queue_delete(classic.as_str().into(), QueueDeleteOptions::default())
        .await?;
    progress.done(format!(
        "raw broker  classic durable: publish+confirm {:>8.0} msg/s, consume+ack {:>8.0} msg/s",
        figures.classic.publish_per_s, figures.classic.consume_per_s
    ));

    // The command queue as the runtime declares it, through the commands exchange.
    progress.phase("raw broker: quorum command queue");
    let raw = Topology::new(raw_namespace(namespace));
    broker::declare_service_queues(&setup, &raw, Service::Catalog).await?;
    let quorum = raw.command_queue(Service::Catalog);
    figures.quorum = publish_then_consume(
        plan,
        &pub_channel,
        &consumer,
        (
            &raw.commands_exchange(),
            raw.command_routing_key(Service::Catalog),
        ),
        &quorum,
        &samples,
    )
    .await
    .with_context(|| format!("measuring the quorum queue {quorum}"))?;
    progress.done(format!(
        "raw broker  quorum (command):  publish+confirm {:>8.0} msg/s, consume+ack {:>8.0} msg/s",
        figures.quorum.publish_per_s, figures.quorum.consume_per_s
    ));

    // Replies: to an exclusive, server-named queue that a client drains without acks.
    progress.phase("raw broker: reply path");
    (figures.reply_publish_per_s, figures.reply_cpu_us) =
        reply_path(plan, &pub_channel, &consumer, &samples).await?;
    progress.done(format!(
        "raw broker  reply (direct reply-to, consumed): publish+confirm {:>8.0} msg/s",
        figures.reply_publish_per_s
    ));

    // Relayed events: to the topic exchange; nothing is bound in the bench, as in e2e.
    progress.phase("raw broker: event path");
    let events_exchange = raw.events_exchange();
    let (published, usage) = with_usage(
        "",
        publish_for(
            &pub_channel,
            &events_exchange,
            &samples.event.metadata.message_type,
            &samples.event,
            false,
            plan.confirm_window,
            plan.raw_duration,
        ),
    )
    .await;
    let (count, elapsed) = published?;
    figures.event_publish_per_s = count as f64 / elapsed.as_secs_f64();
    figures.event_cpu_us = micros_per(&usage, "rabbitmq", count);
    progress.done(format!(
        "raw broker  event (topic exchange): publish+confirm {:>8.0} msg/s",
        figures.event_publish_per_s
    ));

    let _ = publisher.close(200, "raw broker done".into()).await;
    let _ = consumer.close(200, "raw broker done".into()).await;
    Ok(figures)
}

/// Fills `queue` through `(exchange, routing key)` for `plan.raw_duration`, then drains it
/// with one consumer.
async fn publish_then_consume(
    plan: &Plan,
    channel: &Channel,
    consumer: &lapin::Connection,
    (exchange, routing_key): (&str, &str),
    queue: &str,
    samples: &Samples,
) -> anyhow::Result<QueueFigures> {
    let (outcome, publish_usage) = with_usage(
        "",
        publish_for(
            channel,
            exchange,
            routing_key,
            &samples.command,
            true,
            plan.confirm_window,
            plan.raw_duration,
        ),
    )
    .await;
    let (published, elapsed) = outcome?;
    let channel = consumer.create_channel().await?;
    channel
        .basic_qos(plan.prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let deadline = started + CONSUME_DEADLINE;
    let drain = async {
        let mut consumed = 0u64;
        while consumed < published {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, deliveries.next()).await {
                Ok(Some(Ok(delivery))) => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    consumed += 1;
                }
                Ok(Some(Err(error))) => return Err(error.into()),
                Ok(None) => bail!("the broker cancelled the raw consumer on {queue}"),
                Err(_) => break,
            }
        }
        Ok(consumed)
    };
    let (consumed, consume_usage) = with_usage("", drain).await;
    let consumed = consumed?;
    let consume_elapsed = started.elapsed();
    let _ = channel.close(200, "drained".into()).await;
    Ok(QueueFigures {
        publish_per_s: published as f64 / elapsed.as_secs_f64(),
        consume_per_s: consumed as f64 / consume_elapsed.as_secs_f64(),
        messages: published,
        publish_cpu_us: micros_per(&publish_usage, "rabbitmq", published),
        consume_cpu_us: micros_per(&consume_usage, "rabbitmq", consumed),
    })
}

/// Publishes `message` for `duration` with up to `window` unconfirmed publishes in flight;
/// returns how many were confirmed and how long that took.
async fn publish_for(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    message: &OutgoingMessage,
    mandatory: bool,
    window: usize,
    duration: Duration,
) -> anyhow::Result<(u64, Duration)> {
    let properties = broker::properties(message);
    let options = BasicPublishOptions {
        mandatory,
        ..BasicPublishOptions::default()
    };
    let started = Instant::now();
    let end = started + duration;
    let mut pending = VecDeque::with_capacity(window);
    let mut sent = 0u64;
    while Instant::now() < end && sent < MAX_MESSAGES {
        if pending.len() >= window
            && let Some(oldest) = pending.pop_front()
        {
            settle(oldest, exchange, routing_key).await?;
        }
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                &message.body,
                properties.clone(),
            )
            .await?;
        pending.push_back(confirm);
        sent += 1;
    }
    for confirm in pending {
        settle(confirm, exchange, routing_key).await?;
    }
    Ok((sent, started.elapsed()))
}

async fn settle(
    confirm: lapin::PublisherConfirm,
    exchange: &str,
    routing_key: &str,
) -> anyhow::Result<()> {
    match confirm.await? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => bail!(
            "a raw publish to exchange {exchange:?} with key {routing_key:?} was returned: nothing is bound there"
        ),
        Confirmation::Nack(_) => bail!(
            "RabbitMQ refused a raw publish to {exchange:?} (negative confirm); is a disk or memory alarm on?"
        ),
    }
}

/// Publishes replies by direct reply-to to a channel of another connection that consumes
/// them, as the client does; returns confirmed publishes per second and RabbitMQ's µs per
/// publish.
async fn reply_path(
    plan: &Plan,
    channel: &Channel,
    consumer: &lapin::Connection,
    samples: &Samples,
) -> anyhow::Result<(f64, f64)> {
    let replies = consumer.create_channel().await?;
    let mut deliveries = broker::consume_direct_replies(&replies, "bench-replies").await?;
    let name = direct_reply_name(consumer, &replies).await?;
    // Ends when the channel closes below.
    let drain = tokio::spawn(async move {
        let mut count = 0u64;
        while let Some(Ok(_)) = deliveries.next().await {
            count += 1;
        }
        count
    });
    let (published, usage) = with_usage(
        "",
        publish_for(
            channel,
            "",
            &name,
            &samples.reply,
            // As the worker publishes replies: a direct reply-to publish counts as routed to
            // no queue, and a mandatory one comes back as a return.
            false,
            plan.confirm_window,
            plan.raw_duration,
        ),
    )
    .await;
    let (count, elapsed) = published?;
    let _ = replies.close(200, "replies done".into()).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    Ok((
        count as f64 / elapsed.as_secs_f64(),
        micros_per(&usage, "rabbitmq", count),
    ))
}

/// The name the broker writes for `replies`' direct reply-to consumer: read back from a
/// message `replies` publishes to a private queue with `reply_to` set.
async fn direct_reply_name(
    connection: &lapin::Connection,
    replies: &Channel,
) -> anyhow::Result<String> {
    let probe = broker::open_private_queue(connection, "bench-reply-name").await?;
    let properties = lapin::BasicProperties::default().with_reply_to(DIRECT_REPLY_TO.into());
    replies
        .basic_publish(
            "".into(),
            probe.name.as_str().into(),
            BasicPublishOptions::default(),
            b"name?",
            properties,
        )
        .await?;
    let mut consumer = probe.consumer;
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .context("the reply-name probe never arrived")?
        .context("the probe queue closed")??;
    let _ = probe.channel.close(200, "probe done".into()).await;
    let name = delivery
        .properties
        .reply_to()
        .as_ref()
        .map(|n| n.to_string())
        .context("the broker wrote no reply_to on the probe")?;
    Ok(name)
}

/// Size of the headers table the runtime puts on a message, as encoded on the wire.
fn header_bytes(message: &OutgoingMessage) -> usize {
    // Per entry: 1-byte name length + name + 1-byte type + value (4-byte length + text, or 8).
    message
        .headers()
        .iter()
        .map(|(name, value)| {
            2 + name.len()
                + match value {
                    HeaderValue::Text(text) | HeaderValue::Other(text) => 4 + text.len(),
                    HeaderValue::Int(_) => 8,
                }
        })
        .sum()
}

/// Deletes what the raw test declared, in case it stopped half-way.
pub async fn cleanup(url: &SecretUrl, run: &Namespace) {
    let raw = Topology::new(raw_namespace(run));
    crate::system::delete_topology(url, &raw, &[classic_queue(run)]).await;
}
