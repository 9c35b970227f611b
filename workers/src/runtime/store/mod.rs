//! The event store: the append-only log, the inbox, and checkpoints, in PostgreSQL.
//!
//! Writes happen only inside a [`CommandTx`], which exists only after the command's message
//! id has been claimed in the inbox: the claim makes redeliveries idempotent. Every insert
//! into the log takes the log's shared append lock before it draws a position (a trigger,
//! migration 0004), which is what lets the gap-safe reader ([`super::log_reader`]) tell a
//! permanent hole from a late commit without waiting on anyone else's transactions.
//!
//! One file a job: this one is the handle (connect, pool, migrations); `claim.rs` opens a
//! transaction by claiming message ids in the inbox, `tx.rs` is what happens inside it (load,
//! append, commit with the replies), `log.rs` reads the log, `checkpoint.rs` keeps readers'
//! positions, `admin.rs` creates and drops databases, `error.rs` classifies database errors
//! and `event.rs` holds the types of an event going in and coming out. It must never decide
//! what happens to a message: it says what failed, and `settle` decides.

mod admin;
mod checkpoint;
mod claim;
mod error;
mod event;
mod log;
mod tx;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::config::{DEFAULT_DB_ACQUIRE_TIMEOUT, SecretUrl};

pub use admin::{create_database_if_missing, drop_database};
pub use checkpoint::save_checkpoint;
pub use claim::{BatchClaim, Claim};
pub use error::StoreError;
pub use event::{EventMetadata, NewEvent, RecordedEvent};
pub use tx::{Append, CommandTx};

/// The migrations in `schema/migrations`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../schema/migrations");

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventStore {
    pool: PgPool,
}

impl EventStore {
    /// A pool that connects lazily: a worker started before its database keeps retrying
    /// instead of crashing (independent failures). Use [`EventStore::check`] to fail fast.
    /// Waits for a connection at most [`DEFAULT_DB_ACQUIRE_TIMEOUT`].
    pub fn connect_lazy(url: &SecretUrl, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_lazy_with(url, max_connections, DEFAULT_DB_ACQUIRE_TIMEOUT)
    }

    /// [`EventStore::connect_lazy`], waiting at most `acquire_timeout` for a connection (a
    /// free one from the pool, or a new one, connect included) before the caller's statement
    /// fails with a transient error. Short, so that a message meets a database that is away
    /// with its retry or `unavailable` reply within about that time, not after minutes.
    pub fn connect_lazy_with(
        url: &SecretUrl,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options: PgConnectOptions =
            url.expose().parse().map_err(|source| StoreError::Connect {
                url: url.to_string(),
                source,
            })?;
        // No transaction of ours waits on anything but the database (external calls happen
        // outside, see `Handler::outside`), and an abandoned one holds locks and the log's
        // append lock (readers wait for its holders), so the database ends any that idles
        // in a transaction for long. The worker's own bound is tighter (`MAX_TRANSACTION`).
        let options = options.options([("idle_in_transaction_session_timeout", "10s")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// Connects now, with an error that names the URL if the database cannot be reached.
    pub async fn connect(url: &SecretUrl, max_connections: u32) -> Result<Self, StoreError> {
        let store = Self::connect_lazy(url, max_connections)?;
        store.check(url).await?;
        Ok(store)
    }

    /// Fails with a [`StoreError::Connect`] naming `url` if no connection can be made.
    ///
    /// A process's first connection may take longer than the pool's short acquire timeout
    /// on a loaded server (a fresh backend, TLS, authentication); that timeout is for messages
    /// meeting a database that is away, not for starting up, so a timed-out first attempt is
    /// tried again a few times before this gives up. Any other error is final at once.
    pub async fn check(&self, url: &SecretUrl) -> Result<(), StoreError> {
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            match sqlx::query("SELECT 1").execute(&self.pool).await {
                Ok(_) => return Ok(()),
                Err(sqlx::Error::PoolTimedOut) if attempt < ATTEMPTS => attempt += 1,
                Err(source) => {
                    return Err(StoreError::Connect {
                        url: url.to_string(),
                        source,
                    });
                }
            }
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}
