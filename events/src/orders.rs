//! The orders service's contract (the seed's Server C): orders and the saga that carries
//! them across catalog and payments.
//!
//! The order is the conversation: a client places an order with `correlation_id = order_id`,
//! and every command the saga sends for it carries the same correlation id, so the replies
//! that come back (type `eventline.reply`) name their order, and one id traces the whole path.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

use crate::auth::UserId;
use crate::payments::CardToken;
use crate::reply::Reply;
use crate::values::{Money, OrderId, ProductId, Quantity, StreamId};

pub const ORDER_STREAM_CATEGORY: &str = "orders.order";

/// The stream of an order.
pub fn order_stream(order_id: OrderId) -> StreamId {
    StreamId::new(ORDER_STREAM_CATEGORY, order_id)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    pub product_id: ProductId,
    pub quantity: Quantity,
}

/// 1 to 20 lines, each product at most once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct OrderLines(Vec<OrderLine>);

impl OrderLines {
    pub fn parse(lines: Vec<OrderLine>) -> Result<Self, String> {
        if lines.is_empty() || lines.len() > 20 {
            return Err(format!("an order needs 1 to 20 lines, got {}", lines.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = lines.iter().find(|l| !seen.insert(&l.product_id)) {
            return Err(format!(
                "product {} appears twice; merge its lines",
                dup.product_id
            ));
        }
        Ok(Self(lines))
    }

    pub fn iter(&self) -> impl Iterator<Item = &OrderLine> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for OrderLines {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::parse(Vec::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for OrderLines {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OrderLines".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let line = generator.subschema_for::<OrderLine>();
        json_schema!({ "type": "array", "minItems": 1, "maxItems": 20, "items": line })
    }
}

/// Places an order for the customer named by the `x-auth-token` header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    pub order_id: OrderId,
    pub lines: OrderLines,
    pub card: CardToken,
}

/// Sent by the saga to itself through a delay queue: if the order is not finished by now,
/// cancel it and compensate. Survives restarts because it waits in RabbitMQ, not in memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpireOrder {
    pub order_id: OrderId,
}

wire_enum! {
    /// Everything the orders service consumes: its commands, and the replies to the commands
    /// its saga sent to catalog and payments.
    pub enum OrdersCommand {
        PlaceOrder(PlaceOrder) = "orders.place_order",
        ExpireOrder(ExpireOrder) = "orders.expire_order",
        StepReply(Reply) = "eventline.reply",
    }
}

/// Asks for one order with its status. Customers see only their own orders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetOrder {
    pub order_id: OrderId,
}

/// Asks for the orders of the customer named by the token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListMyOrders {}

wire_enum! {
    /// The orders service's queries, answered from its read model.
    pub enum OrdersQuery {
        GetOrder(GetOrder) = "orders.query.get_order",
        ListMyOrders(ListMyOrders) = "orders.query.list_my_orders",
    }
}

/// An order was placed. Public (the relay publishes it to every subscriber), so it carries no
/// card token: the orders service keeps that in a private table. Events recorded before
/// migration 0007 still hold a `card` field, which decoding ignores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    pub order_id: OrderId,
    pub customer_id: UserId,
    pub lines: OrderLines,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LineReserved {
    pub order_id: OrderId,
    pub product_id: ProductId,
    pub quantity: Quantity,
    pub unit_price: Money,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRequested {
    pub order_id: OrderId,
    pub amount: Money,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {
    pub order_id: OrderId,
    pub total: Money,
}

/// Out of stock (or a product that does not exist): nothing was charged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderRejected {
    pub order_id: OrderId,
    pub code: String,
    pub reason: String,
}

/// Payment declined or a step timed out: reservations are released (and a late capture is
/// refunded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub order_id: OrderId,
    pub code: String,
    pub reason: String,
}

/// A capture arrived after the order was cancelled; the saga asked payments to refund it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RefundRequested {
    pub order_id: OrderId,
}

wire_enum! {
    /// Every event the orders service records.
    pub enum OrdersEvent {
        OrderPlaced(OrderPlaced) = "orders.order_placed",
        LineReserved(LineReserved) = "orders.line_reserved",
        PaymentRequested(PaymentRequested) = "orders.payment_requested",
        OrderConfirmed(OrderConfirmed) = "orders.order_confirmed",
        OrderRejected(OrderRejected) = "orders.order_rejected",
        OrderCancelled(OrderCancelled) = "orders.order_cancelled",
        RefundRequested(RefundRequested) = "orders.refund_requested",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placed_order_carries_no_card_and_a_command_never_shows_one() {
        let lines = OrderLines::parse(vec![OrderLine {
            product_id: ProductId::parse("tea".into()).unwrap(),
            quantity: Quantity::parse(1).unwrap(),
        }])
        .unwrap();
        let command = PlaceOrder {
            order_id: OrderId::new(),
            lines: lines.clone(),
            card: CardToken::parse("tok_visa".into()).unwrap(),
        };
        assert!(!format!("{command:?}").contains("tok_visa"));
        let placed = OrderPlaced {
            order_id: command.order_id,
            customer_id: UserId::new(),
            lines,
        };
        assert!(!serde_json::to_string(&placed).unwrap().contains("card"));
        // An event recorded before the card left it still decodes.
        let mut old = serde_json::to_value(&placed).unwrap();
        old["card"] = serde_json::json!("tok_visa");
        assert_eq!(serde_json::from_value::<OrderPlaced>(old).unwrap(), placed);
    }
}
