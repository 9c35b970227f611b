//! `eventline relay`: publish committed events to the events exchange, in log order, until
//! SIGTERM or Ctrl-C.
//!
//! It must never publish on its own: the relay (workers/src/runtime/relay.rs) decides order
//! and leadership; this only starts it once the database answers.

use eventline_workers::runtime::Shutdown;
use eventline_workers::runtime::presence::Announcer;
use eventline_workers::runtime::relay::Relay;

use crate::database::wait_for_database;
use crate::{Exit, Globals};

pub async fn run(globals: Globals) -> anyhow::Result<Exit> {
    let config = globals.config;
    let store = wait_for_database(&config).await?;
    let shutdown = Shutdown::on_signals();
    eventline_workers::runtime::http::Settings::from_env()?
        .start(&config.namespace, &store, true, &shutdown)
        .await?;
    let relay = Relay::new(config.clone(), store);
    // Its heartbeat, for the live view (`eventline dashboard`).
    tokio::spawn(Announcer::relay(config, relay.progress()).run(shutdown.clone()));
    relay.run(shutdown).await;
    Ok(Exit::Success)
}
