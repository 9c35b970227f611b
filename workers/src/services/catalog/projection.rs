//! The `catalog_products` read model: one row per product with its stock split into
//! available, reserved and sold. Kept exactly once by [`crate::runtime::projection`].

use eventline_events::Contract;
use eventline_events::catalog::{CatalogEvent, PRODUCT_STREAM_CATEGORY};
use sqlx::PgConnection;

use crate::runtime::projection::Projection;
use crate::runtime::store::{RecordedEvent, StoreError};

#[derive(Clone, Copy, Debug, Default)]
pub struct ProductsProjection;

impl Projection for ProductsProjection {
    const NAME: &'static str = "projection.catalog_products";
    const TABLES: &'static [&'static str] = &["catalog_products"];

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), StoreError> {
        if !event.stream_id.in_category(PRODUCT_STREAM_CATEGORY) {
            return Ok(());
        }
        let decoded = CatalogEvent::from_json(&event.event_type, event.data.clone())
            .map_err(|e| StoreError::Corrupt(format!("position {}: {e}", event.position)))?;
        // Each arm adjusts counters; the projection runs exactly once per event, so
        // increments are safe.
        let (sql, product, a, b): (&str, &str, i64, String) = match &decoded {
            CatalogEvent::ProductAdded(e) => {
                sqlx::query(
                    "INSERT INTO catalog_products (product_id, name, price, available, reserved, sold, stream_version) \
                     VALUES ($1, $2, $3, $4, 0, 0, $5)",
                )
                .bind(e.product_id.as_str())
                .bind(e.name.as_str())
                .bind(e.price.minor_units() as i64)
                .bind(i64::from(e.initial_stock.get()))
                .bind(event.stream_version)
                .execute(&mut *conn)
                .await?;
                return Ok(());
            }
            CatalogEvent::PriceChanged(e) => (
                "UPDATE catalog_products SET price = $2, stream_version = $4, updated_at = now() WHERE product_id = $1 AND $3 = $3",
                e.product_id.as_str(),
                e.price.minor_units() as i64,
                String::new(),
            ),
            CatalogEvent::Restocked(e) => (
                "UPDATE catalog_products SET available = available + $2, stream_version = $4, updated_at = now() WHERE product_id = $1 AND $3 = $3",
                e.product_id.as_str(),
                i64::from(e.quantity.get()),
                String::new(),
            ),
            CatalogEvent::StockReserved(e) => (
                "UPDATE catalog_products SET available = available - $2, reserved = reserved + $2, stream_version = $4, updated_at = now() WHERE product_id = $1 AND $3 = $3",
                e.product_id.as_str(),
                i64::from(e.quantity.get()),
                String::new(),
            ),
            CatalogEvent::ReservationReleased(e) => (
                "UPDATE catalog_products SET available = available + $2, reserved = reserved - $2, stream_version = $4, updated_at = now() WHERE product_id = $1 AND $3 = $3",
                e.product_id.as_str(),
                i64::from(e.quantity),
                String::new(),
            ),
            CatalogEvent::ReservationCommitted(e) => (
                "UPDATE catalog_products SET reserved = reserved - $2, sold = sold + $2, stream_version = $4, updated_at = now() WHERE product_id = $1 AND $3 = $3",
                e.product_id.as_str(),
                i64::from(e.quantity.get()),
                String::new(),
            ),
        };
        sqlx::query(sql)
            .bind(product)
            .bind(a)
            .bind(b)
            .bind(event.stream_version)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM catalog_products")
            .execute(conn)
            .await?;
        Ok(())
    }
}
