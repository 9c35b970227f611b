//! Whether a system has come to rest after a run: its orders ended, no stock held by a
//! reservation, the read models caught up with the log. The demo's summary and the chaos
//! checks wait for it before they count anything; both read it here, so "settled" means one
//! thing.
//!
//! It reads the database, as an operator would. It must never write, and never wait or
//! decide a deadline itself: each caller chooses how long to wait and what to report.

use eventline_workers::runtime::store::{EventStore, StoreError};

/// The read models whose checkpoints must reach the end of the log.
pub const READ_MODELS: [&str; 2] = ["projection.catalog_products", "projection.orders_view"];

/// Which orders must have ended.
#[derive(Clone, Copy, Debug)]
pub enum Orders<'a> {
    /// Every order the orders read model knows.
    All,
    /// These orders, which must also be known to it: an order the read model has not seen
    /// yet is still open.
    These(&'a [uuid::Uuid]),
}

/// One look at the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Orders not yet confirmed, rejected or cancelled.
    pub open_orders: i64,
    /// Items still reserved across all products: a compensation not yet applied.
    pub held: i64,
    /// Whether a read model has not yet folded the whole log.
    pub projections_behind: bool,
}

impl Snapshot {
    pub fn is_settled(&self) -> bool {
        self.open_orders == 0 && self.held == 0 && !self.projections_behind
    }
}

/// Looks once; callers poll it against their own deadline.
pub async fn snapshot(store: &EventStore, orders: Orders<'_>) -> Result<Snapshot, StoreError> {
    let pool = store.pool();
    let open_orders: i64 = match orders {
        Orders::All => {
            sqlx::query_scalar(
                "SELECT count(*) FROM orders_view \
                 WHERE status NOT IN ('confirmed', 'rejected', 'cancelled')",
            )
            .fetch_one(pool)
            .await?
        }
        Orders::These(ids) => {
            let ended: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM orders_view WHERE order_id = ANY($1) \
                 AND status IN ('confirmed', 'rejected', 'cancelled')",
            )
            .bind(ids)
            .fetch_one(pool)
            .await?;
            ids.len() as i64 - ended
        }
    };
    let held: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(reserved), 0)::bigint FROM catalog_products")
            .fetch_one(pool)
            .await?;
    let end_of_log: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM event_log")
        .fetch_one(pool)
        .await?;
    let mut projections_behind = false;
    for read_model in READ_MODELS {
        projections_behind |= store.checkpoint(read_model).await? < end_of_log;
    }
    Ok(Snapshot {
        open_orders,
        held,
        projections_behind,
    })
}
