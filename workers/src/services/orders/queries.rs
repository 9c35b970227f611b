//! The orders service's queries, answered from the `orders_view` read model over the broker.
//! A customer sees only their own orders; an admin sees any.

use eventline_events::auth::Role;
use eventline_events::orders::OrdersQuery;
use eventline_events::{Rejection, Reply, Service};
use serde_json::json;

use crate::runtime::handler::{Context, Handled, Handler, HandlerError, Input};
use crate::runtime::store::{CommandTx, StoreError};

#[derive(Clone, Copy, Debug, Default)]
pub struct OrdersQueries;

type Row = (
    uuid::Uuid,
    uuid::Uuid,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    serde_json::Value,
);

const SELECT: &str =
    "SELECT order_id, customer_id, status, code, reason, total, lines FROM orders_view";

impl Handler for OrdersQueries {
    type Command = OrdersQuery;
    const SERVICE: Service = Service::Orders;
    const INPUT: Input = Input::Queries;
    // Read-only: nothing to conflict on.
    const BATCH: bool = true;

    async fn handle(
        &self,
        tx: &mut CommandTx,
        ctx: &Context<'_>,
        query: &OrdersQuery,
    ) -> Result<Handled, HandlerError> {
        let principal = match ctx.principal {
            Ok(p) => *p,
            Err(e) => {
                return Ok(Handled::reply(Reply::Rejected {
                    reason: Rejection::new(e.code(), e.to_string()),
                }));
            }
        };
        let rows: Vec<Row> = match query {
            OrdersQuery::GetOrder(q) => sqlx::query_as(&format!("{SELECT} WHERE order_id = $1"))
                .bind(q.order_id.as_uuid())
                .fetch_all(tx.conn())
                .await
                .map_err(StoreError::from)?,
            OrdersQuery::ListMyOrders(_) => sqlx::query_as(&format!(
                "{SELECT} WHERE customer_id = $1 ORDER BY order_id"
            ))
            .bind(principal.user_id.as_uuid())
            .fetch_all(tx.conn())
            .await
            .map_err(StoreError::from)?,
        };
        let visible: Vec<_> = rows
            .into_iter()
            .filter(|r| principal.role == Role::Admin || r.1 == principal.user_id.as_uuid())
            .map(
                |(order_id, customer_id, status, code, reason, total, lines)| {
                    json!({ "order_id": order_id, "customer_id": customer_id, "status": status,
                        "code": code, "reason": reason, "total": total, "lines": lines })
                },
            )
            .collect();
        if let OrdersQuery::GetOrder(q) = query
            && visible.is_empty()
        {
            // The same answer for "absent" and "someone else's": no probing other customers.
            return Ok(Handled::reply(Reply::Rejected {
                reason: Rejection::new(
                    "unknown_order",
                    format!("no order {} among yours", q.order_id),
                ),
            }));
        }
        Ok(Handled::reply(super::super::answer(
            json!({ "orders": visible }),
        )))
    }
}
