//! `eventline chaos`: fault injection against a system of its own under load (src/chaos/
//! runs the scenarios and prints the table; with --json the rows are printed too).
//!
//! It must stay a hand-over: the scenarios, their faults and their checks belong to
//! src/chaos/.

use eventline::chaos::ChaosOptions;

use crate::{Exit, Globals};

pub async fn run(options: ChaosOptions, globals: Globals) -> anyhow::Result<Exit> {
    let rows = eventline::chaos::run(globals.config, options).await?;
    if globals.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(Exit::Success)
}
