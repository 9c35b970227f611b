//! The `catalog_products` read model: one row per product with its stock split into
//! available, reserved and sold. Kept exactly once by [`crate::runtime::projection`].

use std::collections::HashMap;

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

    /// The whole batch in at most two statements: the products it adds, then one update
    /// that moves each product by the sum of its events' changes. The same rows as one event
    /// at a time: a product's first event is the one that adds it, counters are sums, and a
    /// product's last event in the batch sets its price (if any did) and version.
    async fn apply_all(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let mut added = Added::default();
        let mut moved = Moved::default();
        for event in events {
            if !event.stream_id.in_category(PRODUCT_STREAM_CATEGORY) {
                continue;
            }
            let decoded = CatalogEvent::from_json(&event.event_type, event.data.clone())
                .map_err(|e| StoreError::Corrupt(format!("position {}: {e}", event.position)))?;
            let version = event.stream_version;
            match decoded {
                CatalogEvent::ProductAdded(e) => {
                    added.product.push(e.product_id.as_str().to_owned());
                    added.name.push(e.name.as_str().to_owned());
                    added.price.push(e.price.minor_units() as i64);
                    added.available.push(i64::from(e.initial_stock.get()));
                    added.version.push(version);
                }
                CatalogEvent::PriceChanged(e) => {
                    let row = moved.row(e.product_id.as_str(), version);
                    moved.price[row] = Some(e.price.minor_units() as i64);
                }
                CatalogEvent::Restocked(e) => {
                    let row = moved.row(e.product_id.as_str(), version);
                    moved.available[row] += i64::from(e.quantity.get());
                }
                CatalogEvent::StockReserved(e) => {
                    let row = moved.row(e.product_id.as_str(), version);
                    let quantity = i64::from(e.quantity.get());
                    moved.available[row] -= quantity;
                    moved.reserved[row] += quantity;
                }
                CatalogEvent::ReservationReleased(e) => {
                    let row = moved.row(e.product_id.as_str(), version);
                    let quantity = i64::from(e.quantity);
                    moved.available[row] += quantity;
                    moved.reserved[row] -= quantity;
                }
                CatalogEvent::ReservationCommitted(e) => {
                    let row = moved.row(e.product_id.as_str(), version);
                    let quantity = i64::from(e.quantity.get());
                    moved.reserved[row] -= quantity;
                    moved.sold[row] += quantity;
                }
            }
        }
        if !added.product.is_empty() {
            sqlx::query(
                "INSERT INTO catalog_products (product_id, name, price, available, reserved, sold, stream_version) \
                 SELECT product_id, name, price, available, 0, 0, stream_version \
                 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[]) \
                   AS n(product_id, name, price, available, stream_version)",
            )
            .bind(&added.product)
            .bind(&added.name)
            .bind(&added.price)
            .bind(&added.available)
            .bind(&added.version)
            .execute(&mut *conn)
            .await?;
        }
        if !moved.product.is_empty() {
            sqlx::query(
                "UPDATE catalog_products AS p SET available = p.available + d.available, \
                   reserved = p.reserved + d.reserved, sold = p.sold + d.sold, \
                   price = COALESCE(d.price, p.price), stream_version = d.stream_version, \
                   updated_at = now() \
                 FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[]) \
                   AS d(product_id, available, reserved, sold, price, stream_version) \
                 WHERE p.product_id = d.product_id",
            )
            .bind(&moved.product)
            .bind(&moved.available)
            .bind(&moved.reserved)
            .bind(&moved.sold)
            .bind(&moved.price)
            .bind(&moved.version)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM catalog_products")
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// Products a batch adds, as the columns of one `INSERT ... SELECT FROM UNNEST`.
#[derive(Default)]
struct Added {
    product: Vec<String>,
    name: Vec<String>,
    price: Vec<i64>,
    available: Vec<i64>,
    version: Vec<i64>,
}

/// What a batch changes in existing products, one row per product (in the order the batch
/// first touches them), as the columns of one `UPDATE ... FROM UNNEST`.
#[derive(Default)]
struct Moved {
    rows: HashMap<String, usize>,
    product: Vec<String>,
    available: Vec<i64>,
    reserved: Vec<i64>,
    sold: Vec<i64>,
    price: Vec<Option<i64>>,
    version: Vec<i64>,
}

impl Moved {
    /// The row of `product`, added if the batch had not touched it; its version becomes
    /// `version` (a stream's versions rise through the log, so the last one is the highest).
    fn row(&mut self, product: &str, version: i64) -> usize {
        if let Some(&row) = self.rows.get(product) {
            self.version[row] = version;
            return row;
        }
        let row = self.product.len();
        self.rows.insert(product.to_owned(), row);
        self.product.push(product.to_owned());
        self.available.push(0);
        self.reserved.push(0);
        self.sold.push(0);
        self.price.push(None);
        self.version.push(version);
        row
    }
}
