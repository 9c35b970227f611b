//! A test-only handler: the real catalog aggregate, except that a restock of product `panic`
//! panics inside the handler and a restock of product `div0` makes the database refuse the
//! transaction (division by zero, SQLSTATE 22012), and a restock of product `hang` waits
//! inside its transaction on something that never answers; a restock of product `crash` panics
//! once, outside the handler's catch (a bug in the runtime, as far as the worker can tell). Run through the real `CommandWorker`, so
//! the runtime's settlement is tested without any trigger in production code.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// The product id whose restock panics the first time it is received, outside the handler
/// (in `only_from_saga`, which the worker calls on receipt): the batch's task itself panics.
pub const CRASH: &str = "crash";

#[derive(Default)]
pub struct Sabotaged {
    catalog: AggregateHandler<Product>,
    /// Set once a restock of [`CRASH`] has panicked; shared so a test can check it did.
    pub crashed: Arc<AtomicBool>,
}

impl Handler for Sabotaged {
    type Command = CatalogCommand;
    const SERVICE: Service = Service::Catalog;
    const BATCH: bool = true;

    fn stream_hint(&self, command: &CatalogCommand, ctx: &Context<'_>) -> Option<StreamId> {
        self.catalog.stream_hint(command, ctx)
    }

    fn only_from_saga(&self, command: &CatalogCommand) -> bool {
        if let CatalogCommand::Restock(restock) = command
            && restock.product_id.as_str() == CRASH
            && !self.crashed.swap(true, Ordering::SeqCst)
        {
            panic!("sabotaged: the receipt of a restock of {CRASH:?} panics");
        }
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
