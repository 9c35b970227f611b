//! The broker side of the runtime: the helpers shared with the client ([`eventline_amqp::broker`],
//! re-exported here at their old paths), and [`carry_out`], which carries out a worker's
//! [`Settlement`].
//!
//! Every AMQP property, field table, ack and nack is built in `eventline_amqp::broker`; this
//! module only picks which, and the names come from [`eventline_events::Topology`]. It must
//! never decide what happens to a message: `settle` does.

use std::future::Future;

use eventline_events::envelope::headers;
use eventline_events::{Service, Topology};
use lapin::Channel;
use lapin::message::Delivery;

pub use eventline_amqp::broker::*;

use super::acks::{ChannelAcks, How};
use super::settle::Settlement;

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
///
/// With `acks` (a batching worker's consume channel), an ack, refusal or retry is recorded
/// there and acked by the batch's run ([`ChannelAcks::ack_settled_run`]): one `multiple` ack
/// for the batch. A dead letter and a requeue are acked or nacked alone, at once, and
/// recorded so that no run covers them again. Without `acks` every delivery is acked alone.
pub async fn carry_out(
    delivery: &Delivery,
    settlement: &Settlement,
    route: &SettleRoute<'_>,
    acks: Option<&ChannelAcks>,
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
            ack_delivery(delivery).await?;
            settled_alone(acks, delivery);
            return Ok(());
        }
        Settlement::Requeue => {
            requeue(delivery).await?;
            settled_alone(acks, delivery);
            return Ok(());
        }
    }
    match acks {
        Some(acks) => acks.settled(delivery.delivery_tag, How::InRun),
        None => ack_delivery(delivery).await?,
    }
    Ok(())
}

/// Tells the run that `delivery` was acked or nacked alone (after the frame went out, so no
/// later run can reach the broker before it).
fn settled_alone(acks: Option<&ChannelAcks>, delivery: &Delivery) {
    if let Some(acks) = acks {
        acks.settled(delivery.delivery_tag, How::Alone);
    }
}
