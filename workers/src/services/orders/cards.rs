//! The orders saga's handler: [`Order`] run as an aggregate, plus the card token an order is
//! paid with, kept in the service-private `orders_cards` table instead of the public
//! `orders.order_placed` event (which the relay publishes to every subscriber).
//!
//! The card is written in the transaction that records `OrderPlaced`, and read back in the
//! transaction that records `PaymentRequested`, to dispatch `payments.charge_payment`. Both
//! writes come after the aggregate's append, in the same transaction, so group commit stays
//! sound. This module must never log a card or put one in an event or an error.

use eventline_events::orders::{OrdersCommand, OrdersEvent};
use eventline_events::payments::CardToken;
use eventline_events::values::{OrderId, StreamId};
use eventline_events::{Contract, Metadata, Reply, Service};

use super::{Order, charge};
use crate::runtime::store::{CommandTx, StoreError};
use crate::runtime::{AggregateHandler, Context, Handled, Handler, HandlerError};

/// [`Order`] as a handler, with its card tokens kept private.
#[derive(Default)]
pub struct OrdersHandler {
    saga: AggregateHandler<Order>,
}

impl OrdersHandler {
    /// What the aggregate's result needs besides its append: the card of a new order is
    /// recorded; an order whose lines are all reserved is charged with its recorded card.
    async fn complete(
        &self,
        tx: &mut CommandTx,
        ctx: &Context<'_>,
        command: &OrdersCommand,
        handled: &mut Handled,
    ) -> Result<(), HandlerError> {
        let Reply::Accepted { events, .. } = &handled.reply else {
            return Ok(());
        };
        if let (OrdersCommand::PlaceOrder(place), true) = (command, events.is_empty()) {
            // The order exists and its lines match (the aggregate said so); the card is known
            // only here. Another card under the same order id is refused like other lines.
            if let Some(on_file) = on_file(tx, place.order_id).await?
                && on_file != place.card
            {
                let refused = super::OrdersRejection::OrderDiffers {
                    order_id: place.order_id,
                    difference: "another card (tokens are not shown)".to_owned(),
                };
                *handled = Handled::reply(Reply::Rejected {
                    reason: eventline_events::Rejection::new(
                        crate::runtime::RejectionReason::code(&refused),
                        refused.to_string(),
                    ),
                });
            }
            return Ok(());
        }
        for event in events {
            let decoded = OrdersEvent::from_json(&event.message_type, event.data.clone())
                .map_err(|e| StoreError::Corrupt(format!("an event just decided: {e}")))?;
            match decoded {
                OrdersEvent::OrderPlaced(placed) => {
                    let OrdersCommand::PlaceOrder(place) = command else {
                        continue;
                    };
                    record(tx, placed.order_id, &place.card).await?;
                }
                OrdersEvent::PaymentRequested(requested) => {
                    let card = recorded(tx, requested.order_id).await?;
                    handled
                        .dispatch
                        .push(charge(requested.order_id, requested.amount, card, ctx));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Records the card an order is paid with. The order id is new (its `OrderPlaced` was just
/// appended), so a row already there is this order's own from an earlier, rolled-back try.
async fn record(tx: &mut CommandTx, order_id: OrderId, card: &CardToken) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO orders_cards (order_id, card) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(order_id.as_uuid())
        .bind(card.as_str())
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// The card on file for an order, if it has one.
async fn on_file(tx: &mut CommandTx, order_id: OrderId) -> Result<Option<CardToken>, StoreError> {
    let card: Option<String> =
        sqlx::query_scalar("SELECT card FROM orders_cards WHERE order_id = $1")
            .bind(order_id.as_uuid())
            .fetch_optional(tx.conn())
            .await?;
    card.map(|card| {
        CardToken::parse(card).map_err(|_| {
            StoreError::Corrupt(format!("order {order_id} has an unreadable card on file"))
        })
    })
    .transpose()
}

/// The card recorded for an order. Its absence is not retryable: the order was placed without
/// one, which this version of the code never does.
async fn recorded(tx: &mut CommandTx, order_id: OrderId) -> Result<CardToken, StoreError> {
    on_file(tx, order_id).await?.ok_or_else(|| {
        StoreError::Corrupt(format!("order {order_id} has no card on file to charge"))
    })
}

impl Handler for OrdersHandler {
    type Command = OrdersCommand;
    const SERVICE: Service = Service::Orders;
    const CONSUMES_REPLIES: bool = true;
    // The aggregate's append is followed only by these writes, after it succeeded.
    const BATCH: bool = true;

    fn stream_hint(&self, command: &OrdersCommand, ctx: &Context<'_>) -> Option<StreamId> {
        self.saga.stream_hint(command, ctx)
    }

    // The saga's own timer (`orders.expire_order`) must come from orders itself.
    fn only_from_saga(&self, command: &OrdersCommand) -> bool {
        self.saga.only_from_saga(command)
    }

    // Catalog's and payments' replies must come from catalog and payments.
    fn answered_by(&self, command: &OrdersCommand, metadata: &Metadata) -> Option<Service> {
        self.saga.answered_by(command, metadata)
    }

    async fn handle(
        &self,
        tx: &mut CommandTx,
        ctx: &Context<'_>,
        command: &OrdersCommand,
    ) -> Result<Handled, HandlerError> {
        let mut handled = self.saga.handle(tx, ctx, command).await?;
        self.complete(tx, ctx, command, &mut handled).await?;
        Ok(handled)
    }

    async fn handle_batch(
        &self,
        tx: &mut CommandTx,
        batch: &[(Context<'_>, &OrdersCommand)],
    ) -> Result<Vec<Handled>, HandlerError> {
        let mut all = self.saga.handle_batch(tx, batch).await?;
        for ((ctx, command), handled) in batch.iter().zip(&mut all) {
            self.complete(tx, ctx, command, handled).await?;
        }
        Ok(all)
    }
}
