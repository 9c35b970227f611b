//! `eventline projections`: an operator's view of the read models — where each stands, whether
//! it matches a fresh fold of the log, and a rebuild without downtime.
//!
//! A rebuild folds the whole log into shadow tables while the live read model keeps serving,
//! then swaps the result in and moves the checkpoint in one transaction (see
//! `eventline_workers::runtime::projection::rebuild`). It never edits the log.

use anyhow::bail;
use eventline_workers::runtime::projection::{self, Projection};
use eventline_workers::runtime::store::EventStore;
use eventline_workers::services::catalog::ProductsProjection;
use eventline_workers::services::orders::OrdersProjection;

/// What `eventline projections` can do.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum ProjectionsAction {
    /// Each read model's checkpoint, poison (if stopped) and whether it equals a fresh fold.
    Check,
    /// Rebuild one read model from position 0 into a shadow table, swapped in when caught
    /// up; clears its poison. NAME is `catalog_products` or `orders_view`.
    Rebuild { name: String },
}

/// Runs one `eventline projections` action against `store`.
pub async fn run(store: &EventStore, action: ProjectionsAction) -> anyhow::Result<()> {
    match action {
        ProjectionsAction::Check => {
            let mut drifted = false;
            drifted |= check(&ProductsProjection, store).await?;
            drifted |= check(&OrdersProjection, store).await?;
            if drifted {
                bail!(
                    "a read model differs from the log; `eventline projections rebuild NAME` repairs it"
                );
            }
        }
        ProjectionsAction::Rebuild { name } => {
            let reached = match name.trim_start_matches("projection.") {
                "catalog_products" => projection::rebuild(&ProductsProjection, store).await?,
                "orders_view" => projection::rebuild(&OrdersProjection, store).await?,
                other => bail!(
                    "no projection named {other:?}; the read models are catalog_products and orders_view"
                ),
            };
            println!("rebuilt {name} through log position {reached}");
        }
    }
    Ok(())
}

async fn check<P: Projection>(projection: &P, store: &EventStore) -> anyhow::Result<bool> {
    let drift = projection::verify(projection, store).await?;
    let poison = projection::poison(store, P::NAME).await?;
    match (&poison, drift.is_exact()) {
        (None, true) => println!("{}: exact at position {}", P::NAME, drift.position),
        (Some(reason), _) => println!("{}: STOPPED — {reason}", P::NAME),
        (None, false) => println!("{}: DRIFTED {drift}", P::NAME),
    }
    Ok(poison.is_some() || !drift.is_exact())
}
