//! The catalog's queries, answered from the `catalog_products` read model over the broker.

use eventline_events::Service;
use eventline_events::catalog::CatalogQuery;
use serde_json::json;

use crate::runtime::handler::{Context, Handled, Handler, HandlerError, Input};
use crate::runtime::store::{CommandTx, StoreError};

#[derive(Clone, Copy, Debug, Default)]
pub struct CatalogQueries;

impl Handler for CatalogQueries {
    type Command = CatalogQuery;
    const SERVICE: Service = Service::Catalog;
    const INPUT: Input = Input::Queries;
    // Read-only: nothing to conflict on.
    const BATCH: bool = true;

    async fn handle(
        &self,
        tx: &mut CommandTx,
        _ctx: &Context<'_>,
        query: &CatalogQuery,
    ) -> Result<Handled, HandlerError> {
        match query {
            CatalogQuery::ListProducts(_) => {
                let rows: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
                    "SELECT product_id, name, price, available, reserved, sold \
                     FROM catalog_products ORDER BY product_id",
                )
                .fetch_all(tx.conn())
                .await
                .map_err(StoreError::from)?;
                let products: Vec<_> = rows
                    .into_iter()
                    .map(|(product_id, name, price, available, reserved, sold)| {
                        json!({ "product_id": product_id, "name": name, "price": price,
                                "available": available, "reserved": reserved, "sold": sold })
                    })
                    .collect();
                Ok(Handled::reply(super::super::answer(
                    json!({ "products": products }),
                )))
            }
        }
    }
}
