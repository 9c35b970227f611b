//! The `orders_view` read model: each order with its status and, once known, its total and
//! the reason it failed. Serves "an order with its status" and "a customer's orders".

use std::collections::HashMap;

use eventline_events::Contract;
use eventline_events::orders::{ORDER_STREAM_CATEGORY, OrdersEvent};
use sqlx::PgConnection;
use uuid::Uuid;

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

    /// The whole batch in at most two statements: the orders it places, then one update
    /// that gives each order the state its last event in the batch leaves. The same rows as
    /// one event at a time: an order's first event is the one that places it, each status
    /// event overwrites the status and version, and code, reason and total keep the last
    /// value any event gave them. Events that change no status touch no row, as in `apply`.
    async fn apply_all(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let mut placed = Placed::default();
        let mut moved = Moved::default();
        for event in events {
            if !event.stream_id.in_category(ORDER_STREAM_CATEGORY) {
                continue;
            }
            let decoded = OrdersEvent::from_json(&event.event_type, event.data.clone())
                .map_err(|e| StoreError::Corrupt(format!("position {}: {e}", event.position)))?;
            let order = order_uuid(&decoded);
            let version = event.stream_version;
            match decoded {
                OrdersEvent::OrderPlaced(e) => {
                    placed.order.push(order);
                    placed.customer.push(e.customer_id.as_uuid());
                    placed
                        .lines
                        .push(serde_json::to_value(&e.lines).unwrap_or_default());
                    placed.version.push(version);
                }
                OrdersEvent::LineReserved(_) | OrdersEvent::RefundRequested(_) => {}
                OrdersEvent::PaymentRequested(e) => {
                    let row = moved.row(order, "paying", version);
                    moved.total[row] = Some(e.amount.minor_units() as i64);
                }
                OrdersEvent::OrderConfirmed(e) => {
                    let row = moved.row(order, "confirmed", version);
                    moved.total[row] = Some(e.total.minor_units() as i64);
                }
                OrdersEvent::OrderRejected(e) => {
                    let row = moved.row(order, "rejected", version);
                    moved.code[row] = Some(e.code);
                    moved.reason[row] = Some(e.reason);
                }
                OrdersEvent::OrderCancelled(e) => {
                    let row = moved.row(order, "cancelled", version);
                    moved.code[row] = Some(e.code);
                    moved.reason[row] = Some(e.reason);
                }
            }
        }
        if !placed.order.is_empty() {
            sqlx::query(
                "INSERT INTO orders_view (order_id, customer_id, status, lines, stream_version) \
                 SELECT order_id, customer_id, 'placed', lines, stream_version \
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::jsonb[], $4::int8[]) \
                   AS n(order_id, customer_id, lines, stream_version)",
            )
            .bind(&placed.order)
            .bind(&placed.customer)
            .bind(&placed.lines)
            .bind(&placed.version)
            .execute(&mut *conn)
            .await?;
        }
        if !moved.order.is_empty() {
            sqlx::query(
                "UPDATE orders_view AS v SET status = d.status, code = coalesce(d.code, v.code), \
                   reason = coalesce(d.reason, v.reason), total = coalesce(d.total, v.total), \
                   stream_version = d.stream_version, updated_at = now() \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[]) \
                   AS d(order_id, status, code, reason, total, stream_version) \
                 WHERE v.order_id = d.order_id",
            )
            .bind(&moved.order)
            .bind(&moved.status)
            .bind(&moved.code)
            .bind(&moved.reason)
            .bind(&moved.total)
            .bind(&moved.version)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM orders_view").execute(conn).await?;
        Ok(())
    }
}

fn order_uuid(event: &OrdersEvent) -> Uuid {
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

/// Orders a batch places, as the columns of one `INSERT ... SELECT FROM UNNEST`.
#[derive(Default)]
struct Placed {
    order: Vec<Uuid>,
    customer: Vec<Uuid>,
    lines: Vec<serde_json::Value>,
    version: Vec<i64>,
}

/// The state a batch leaves each order it moves in, one row per order (in the order the
/// batch first moves them), as the columns of one `UPDATE ... FROM UNNEST`.
#[derive(Default)]
struct Moved {
    rows: HashMap<Uuid, usize>,
    order: Vec<Uuid>,
    status: Vec<&'static str>,
    code: Vec<Option<String>>,
    reason: Vec<Option<String>>,
    total: Vec<Option<i64>>,
    version: Vec<i64>,
}

impl Moved {
    /// The row of `order`, added if the batch had not moved it; its status becomes `status`
    /// and its version `version` (the event's, and a stream's versions rise through the log).
    fn row(&mut self, order: Uuid, status: &'static str, version: i64) -> usize {
        if let Some(&row) = self.rows.get(&order) {
            self.status[row] = status;
            self.version[row] = version;
            return row;
        }
        let row = self.order.len();
        self.rows.insert(order, row);
        self.order.push(order);
        self.status.push(status);
        self.code.push(None);
        self.reason.push(None);
        self.total.push(None);
        self.version.push(version);
        row
    }
}
