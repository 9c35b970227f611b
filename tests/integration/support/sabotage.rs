//! A test-only handler: the real catalog aggregate, except that a restock of product `panic`
//! panics inside the handler and a restock of product `div0` makes the database refuse the
//! transaction (division by zero, SQLSTATE 22012), and a restock of product `hang` waits
//! inside its transaction on something that never answers. Run through the real `CommandWorker`, so
//! the runtime's settlement is tested without any trigger in production code.

use eventline_events::Service;
use eventline_events::catalog::CatalogCommand;
use eventline_events::values::StreamId;
use eventline_workers::runtime::store::{CommandTx, StoreError};
use eventline_workers::runtime::{AggregateHandler, Context, Handled, Handler, HandlerError};
use eventline_workers::services::catalog::Product;

/// The product id whose restock panics.
pub const PANIC: &str = "panic";
/// The product id whose restock hits a data exception in the database.
pub const DIVIDE_BY_ZERO: &str = "div0";
/// The product id whose restock waits forever with its transaction open, as a handler that
/// calls the outside world inside its transaction would when the outside world is slow.
pub const HANG: &str = "hang";

#[derive(Default)]
pub struct Sabotaged {
    catalog: AggregateHandler<Product>,
}

impl Handler for Sabotaged {
    type Command = CatalogCommand;
    const SERVICE: Service = Service::Catalog;
    const BATCH: bool = true;

    fn stream_hint(&self, command: &CatalogCommand, ctx: &Context<'_>) -> Option<StreamId> {
        self.catalog.stream_hint(command, ctx)
    }

    fn only_from_saga(&self, command: &CatalogCommand) -> bool {
        self.catalog.only_from_saga(command)
    }

    async fn handle(
        &self,
        tx: &mut CommandTx,
        ctx: &Context<'_>,
        command: &CatalogCommand,
    ) -> Result<Handled, HandlerError> {
        if let CatalogCommand::Restock(restock) = command {
            match restock.product_id.as_str() {
                PANIC => panic!("sabotaged: the restock of {PANIC:?} panics"),
                DIVIDE_BY_ZERO => {
                    sqlx::query("SELECT 1 / 0")
                        .execute(tx.conn())
                        .await
                        .map_err(StoreError::from)?;
                }
                HANG => std::future::pending::<()>().await,
                _ => {}
            }
        }
        self.catalog.handle(tx, ctx, command).await
    }
}
