//! Placing an order and waiting for the saga's outcome (confirmed, rejected, cancelled), and
//! reading an order from the command line.

use std::sync::Arc;
use std::time::Duration;

use eventline_events::orders::{OrderLine, OrderLines, OrdersCommand, PlaceOrder};
use eventline_events::payments::CardToken;
use eventline_events::values::{OrderId, ProductId, Quantity};
use eventline_events::{CorrelationId, Metadata, OutgoingMessage, Reply};
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::{Client, ClientError, EventMessage, Outcomes};

impl Client {
    /// Places an order and waits for its final outcome: confirmed, rejected (stock) or
    /// cancelled (payment, timeout). The order is its own conversation: its correlation id is
    /// the order id, so `eventline trace <order id>` shows its whole path.
    pub async fn place_order(
        &self,
        order: &PlaceOrder,
        timeout: Duration,
    ) -> Result<OrderOutcome, ClientError> {
        let outcomes = self
            .outcomes
            .get_or_try_init(|| self.follow_outcomes())
            .await?;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiting) = outcomes.lock() {
            waiting.entry(order.order_id).or_default().push(tx);
        }
        let mut metadata = Metadata::origin("orders.place_order");
        metadata.correlation_id = CorrelationId::from_uuid(order.order_id.as_uuid());
        let message = OutgoingMessage::new(metadata, &OrdersCommand::from(order.clone()));
        let deadline = tokio::time::Instant::now() + timeout;
        let placed = self.request_message(message, timeout).await?;
        if let Reply::Rejected { reason } = placed {
            return Ok(OrderOutcome {
                status: "rejected".into(),
                code: Some(reason.code),
                reason: Some(reason.message),
                total: None,
            });
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::NoOutcome {
                order_id: order.order_id,
                timeout,
            }),
        }
    }

    /// Routes the saga's terminal events to the waiters of `place_order`.
    async fn follow_outcomes(&self) -> Result<Outcomes, ClientError> {
        let events = self
            .subscribe_to(&[
                "orders.order_confirmed",
                "orders.order_rejected",
                "orders.order_cancelled",
            ])
            .await?;
        let outcomes: Outcomes = Arc::default();
        let router = outcomes.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let Some(order_id) = event
                    .data
                    .get("order_id")
                    .and_then(|v| serde_json::from_value::<OrderId>(v.clone()).ok())
                else {
                    continue;
                };
                let outcome = OrderOutcome::from_event(&event);
                let waiters = router.lock().ok().and_then(|mut w| w.remove(&order_id));
                for waiter in waiters.into_iter().flatten() {
                    let _ = waiter.send(outcome.clone());
                }
            }
        });
        Ok(outcomes)
    }
}

/// How an order ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OrderOutcome {
    /// `confirmed`, `rejected` or `cancelled`.
    pub status: String,
    pub code: Option<String>,
    pub reason: Option<String>,
    /// Minor units, for a confirmed order.
    pub total: Option<u64>,
}

impl OrderOutcome {
    fn from_event(event: &EventMessage) -> Self {
        let text = |k: &str| {
            event
                .data
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Self {
            status: event
                .event_type
                .trim_start_matches("orders.order_")
                .to_owned(),
            code: text("code"),
            reason: text("reason"),
            total: event.data.get("total").and_then(|v| v.as_u64()),
        }
    }
}

impl std::fmt::Display for OrderOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.status)?;
        if let Some(total) = self.total {
            write!(f, ", total {}.{:02}", total / 100, total % 100)?;
        }
        if let (Some(code), Some(reason)) = (&self.code, &self.reason) {
            write!(f, " ({code}: {reason})")?;
        }
        Ok(())
    }
}

/// Builds a `PlaceOrder` from `product:quantity` words and a card token, with a new order id.
pub fn parse_order(lines: &[String], card: &str) -> Result<PlaceOrder, String> {
    let lines = lines
        .iter()
        .map(|word| {
            let (product, quantity) = word
                .split_once(':')
                .ok_or_else(|| format!("{word:?} is not product:quantity (e.g. tea:2)"))?;
            let quantity: u32 = quantity
                .parse()
                .map_err(|_| format!("{quantity:?} in {word:?} is not a whole number"))?;
            Ok(OrderLine {
                product_id: ProductId::parse(product.to_owned())?,
                quantity: Quantity::parse(quantity)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(PlaceOrder {
        order_id: OrderId::new(),
        lines: OrderLines::parse(lines)?,
        card: CardToken::parse(card.to_owned())?,
    })
}
