//! The broker side of the runtime: the helpers shared with the client ([`eventline_amqp::broker`],
//! re-exported here at their old paths), publishing timed for the metrics, and [`carry_out`],
//! which carries out a worker's [`Settlement`].
//!
//! Every AMQP property, field table, ack and nack is built in `eventline_amqp::broker`; this
//! module only picks which, and the names come from [`eventline_events::Topology`]. It must
//! never decide what happens to a message: `settle` does.

use std::future::Future;

use eventline_events::envelope::headers;
use eventline_events::{OutgoingMessage, Service, Topology};
use lapin::message::Delivery;
use lapin::{BasicProperties, Channel};

pub use eventline_amqp::broker::*;

use super::settle::Settlement;

/// Publishes on a confirm channel and waits for the broker's confirm
/// ([`eventline_amqp::broker::publish_confirmed`]), recording the wait.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let started = std::time::Instant::now();
    let published =
        eventline_amqp::broker::publish_confirmed(channel, exchange, routing_key, body, properties)
            .await;
    super::metrics::confirm_waited(super::metrics::Publisher::Message, started.elapsed());
    published
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

/// Where a worker's settlements go, besides the delivery's own channel.
pub struct SettleRoute<'a> {
    pub publisher: &'a Channel,
    pub topology: &'a Topology,
    pub service: Service,
    /// The queue the delivery came from, recorded on its dead letter.
    pub queue: &'a str,
    /// This replica, recorded on dead letters.
    pub replica: &'a str,
}

/// Carries a [`Settlement`] out: the one place where a worker's delivery is acked, nacked,
/// parked in the retry queue or dead-lettered. `reply` runs where the sender is due an answer
/// (after a dead letter is confirmed, so a sender never hears of a message that could still
/// be redelivered; before the ack). `body` is the delivery's body (a retry carries it as it is),
/// `dead_letter_body` the body as operators may see it (secrets redacted). An error means the settlement did not happen and the delivery is not
/// acked: settle it again (`Failure::NotSettled`).
pub async fn carry_out(
    delivery: &Delivery,
    settlement: &Settlement,
    route: &SettleRoute<'_>,
    body: &[u8],
    dead_letter_body: &[u8],
    reply: impl Future<Output = ()>,
) -> Result<(), BrokerError> {
    match settlement {
        Settlement::Ack | Settlement::Refuse { .. } => reply.await,
        Settlement::Retry { round, delay } => {
            publish_confirmed(
                route.publisher,
                "",
                &route.topology.retry_queue(route.service),
                body,
                retry_properties(&delivery.properties, *round, *delay),
            )
            .await?;
        }
        Settlement::DeadLetter { code, reason } => {
            let fields = [
                (headers::DEAD_LETTER_CODE, *code),
                (headers::DEAD_LETTER_REASON, reason.as_str()),
                (headers::ORIGINAL_QUEUE, route.queue),
                (headers::HANDLED_BY, route.replica),
            ];
            publish_confirmed(
                route.publisher,
                &route.topology.dead_letter_exchange(),
                route.topology.command_routing_key(route.service),
                dead_letter_body,
                dead_letter_properties(&delivery.properties, &fields),
            )
            .await?;
            reply.await;
        }
        Settlement::Requeue => return requeue(delivery).await,
    }
    ack_delivery(delivery).await
}
