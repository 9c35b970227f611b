//! `eventline projections check|rebuild`: an operator's tools for read models.
//!
//! It must never decide how a read model is folded or swapped: that lives in
//! `eventline::projections` and the runtime's projection module; this only connects.

use eventline_workers::runtime::store::EventStore;

use crate::{Exit, Globals};

pub async fn run(
    action: eventline::projections::ProjectionsAction,
    globals: Globals,
) -> anyhow::Result<Exit> {
    let store = EventStore::connect(&globals.config.database_url, 2).await?;
    eventline::projections::run(&store, action).await?;
    Ok(Exit::Success)
}
