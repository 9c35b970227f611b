//! `eventline trace CORRELATION_ID`: one conversation as a causal tree, read from the event
//! log and the inbox as an operator would.
//!
//! It must never order by clocks: the tree follows causation ids (src/trace.rs renders it).

use eventline_workers::runtime::store::EventStore;

use crate::{Exit, Globals};

#[derive(clap::Args)]
pub struct Args {
    correlation_id: uuid::Uuid,
}

pub async fn run(Args { correlation_id }: Args, globals: Globals) -> anyhow::Result<Exit> {
    let store = EventStore::connect(&globals.config.database_url, 1).await?;
    print!(
        "{}",
        eventline::trace::render(&store, correlation_id).await?
    );
    Ok(Exit::Success)
}
