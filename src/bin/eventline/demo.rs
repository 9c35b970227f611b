//! `eventline demo`: the whole system on this machine (src/demo.rs runs it and prints what
//! happened).
//!
//! It must stay a hand-over: the demo's options, its isolation (a namespace and a database of
//! its own, or `--attach`) and its report belong to src/demo.rs.

use eventline::demo::DemoOptions;

use crate::{Exit, Globals};

pub async fn run(options: DemoOptions, globals: Globals) -> anyhow::Result<Exit> {
    eventline::demo::run(globals.config, options).await?;
    Ok(Exit::Success)
}
