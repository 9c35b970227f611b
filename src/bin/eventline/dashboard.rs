//! `eventline dashboard`: serve the live view of the system on loopback until Ctrl-C.
//!
//! It must never draw or gather anything itself: `eventline::dashboard` does; this only
//! starts it with the configuration from the environment.

use crate::{Exit, Globals};

pub async fn run(
    options: eventline::dashboard::DashboardOptions,
    globals: Globals,
) -> anyhow::Result<Exit> {
    eventline::dashboard::run(globals.config, &options).await?;
    Ok(Exit::Success)
}
