//! `eventline status`: one screen of the running system, and an exit status a probe can use.
//!
//! It must never decide what is healthy: `eventline::status` does; this maps its verdict to
//! the process's exit status.

use crate::{Exit, Globals};

pub async fn run(
    options: eventline::status::StatusOptions,
    globals: Globals,
) -> anyhow::Result<Exit> {
    let code = eventline::status::run(&globals.config, &options, globals.json).await?;
    Ok(if code == 0 {
        Exit::Success
    } else {
        Exit::Refused
    })
}
