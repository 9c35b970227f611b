//! Waiting for the database at start-up, for the server roles (`worker`, `relay`).
//!
//! A process that starts before its database (compose, a reboot) waits here instead of
//! crash-looping. It must never give up or fail on an unreachable database: only a supervisor
//! (or Ctrl-C) decides that the wait is over.

use std::time::Duration;

use eventline_workers::runtime::Config;
use eventline_workers::runtime::backoff::Backoff;
use eventline_workers::runtime::store::EventStore;

/// Waits, with backoff and a warning per attempt, until the database answers.
pub async fn wait_for_database(config: &Config) -> anyhow::Result<EventStore> {
    let store = EventStore::connect_lazy(&config.database_url, config.max_db_connections)?;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match store.check(&config.database_url).await {
            Ok(()) => return Ok(store),
            Err(error) => {
                tracing::warn!(%error, "waiting for the database");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
