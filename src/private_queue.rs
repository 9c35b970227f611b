//! A private queue: named by the broker, exclusive to one connection and deleted with it,
//! optionally bound to exchanges, consumed without acks. Clients read their replies and
//! tailed events from one, so nothing a client abandons piles up on the broker.
//!
//! It must never carry a service's work: without acks a message is gone once delivered (a
//! crash loses it), which is right only for a reader that can ask again.

use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};

/// An open private queue and its consumer.
pub struct PrivateQueue {
    /// The server-chosen name (`amq.gen-…`), e.g. for `reply_to`.
    pub name: String,
    /// The channel it lives on; closing it ends the consumer.
    pub channel: Channel,
    /// Its deliveries, already settled (no acks).
    pub consumer: Consumer,
}

/// Declares a private queue on a new channel of `connection`, binds it to each
/// `(exchange, routing key or pattern)`, and starts consuming it as `consumer_tag`.
pub async fn open(
    connection: &Connection,
    consumer_tag: &str,
    bindings: &[(&str, &str)],
) -> Result<PrivateQueue, lapin::Error> {
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let name = queue.name().as_str().to_owned();
    for (exchange, pattern) in bindings {
        channel
            .queue_bind(
                name.as_str().into(),
                (*exchange).into(),
                (*pattern).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let consumer = channel
        .basic_consume(
            name.as_str().into(),
            consumer_tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(PrivateQueue {
        name,
        channel,
        consumer,
    })
}
