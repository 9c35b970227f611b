//! The `orders_view` read model: each order with its status and, once known, its total and
//! the reason it failed. Serves "an order with its status" and "a customer's orders".

use eventline_events::Contract;
use eventline_events::orders::{ORDER_STREAM_CATEGORY, OrdersEvent};
use sqlx::PgConnection;

use crate::runtime::projection::Projection;
use crate::runtime::store::{RecordedEvent, StoreError};

#[derive(Clone, Copy, Debug, Default)]
pub struct OrdersProjection;

impl Projection for OrdersProjection {
    const NAME: &'static str = "projection.orders_view";
    const TABLES: &'static [&'static str] = &["orders_view"];

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), StoreError> {
        if !event.stream_id.in_category(ORDER_STREAM_CATEGORY) {
            return Ok(());
        }
        let decoded = OrdersEvent::from_json(&event.event_type, event.data.clone())
            .map_err(|e| StoreError::Corrupt(format!("position {}: {e}", event.position)))?;
        let update = |status: &'static str,
                      code: Option<&str>,
                      reason: Option<&str>,
                      total: Option<i64>| {
            sqlx::query(
                "UPDATE orders_view SET status = $2, code = coalesce($3, code), reason = coalesce($4, reason), \
                 total = coalesce($5, total), stream_version = $6, updated_at = now() WHERE order_id = $1",
            )
            .bind(order_uuid(&decoded))
            .bind(status)
            .bind(code.map(str::to_owned))
            .bind(reason.map(str::to_owned))
            .bind(total)
            .bind(event.stream_version)
        };
        match &decoded {
            OrdersEvent::OrderPlaced(e) => {
                sqlx::query(
                    "INSERT INTO orders_view (order_id, customer_id, status, lines, stream_version) \
                     VALUES ($1, $2, 'placed', $3, $4)",
                )
                .bind(e.order_id.as_uuid())
                .bind(e.customer_id.as_uuid())
                .bind(serde_json::to_value(&e.lines).unwrap_or_default())
                .bind(event.stream_version)
                .execute(conn)
                .await?;
            }
            OrdersEvent::LineReserved(_) | OrdersEvent::RefundRequested(_) => {}
            OrdersEvent::PaymentRequested(e) => {
                update("paying", None, None, Some(e.amount.minor_units() as i64))
                    .execute(conn)
                    .await?;
            }
            OrdersEvent::OrderConfirmed(e) => {
                update("confirmed", None, None, Some(e.total.minor_units() as i64))
                    .execute(conn)
                    .await?;
            }
            OrdersEvent::OrderRejected(e) => {
                update("rejected", Some(&e.code), Some(&e.reason), None)
                    .execute(conn)
                    .await?;
            }
            OrdersEvent::OrderCancelled(e) => {
                update("cancelled", Some(&e.code), Some(&e.reason), None)
                    .execute(conn)
                    .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM orders_view").execute(conn).await?;
        Ok(())
    }
}

fn order_uuid(event: &OrdersEvent) -> uuid::Uuid {
    match event {
        OrdersEvent::OrderPlaced(e) => e.order_id.as_uuid(),
        OrdersEvent::LineReserved(e) => e.order_id.as_uuid(),
        OrdersEvent::PaymentRequested(e) => e.order_id.as_uuid(),
        OrdersEvent::OrderConfirmed(e) => e.order_id.as_uuid(),
        OrdersEvent::OrderRejected(e) => e.order_id.as_uuid(),
        OrdersEvent::OrderCancelled(e) => e.order_id.as_uuid(),
        OrdersEvent::RefundRequested(e) => e.order_id.as_uuid(),
    }
}
