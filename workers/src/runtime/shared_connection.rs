//! The one broker connection a worker process's consumers share (catalog's command and query
//! workers; orders' too), opened again by whichever of them first finds it closed.
//!
//! Why one: lapin keeps a send and a receive buffer of 32 frames each per connection,
//! zero-filled, and a consumer must accept the largest frame the server allows (see
//! [`broker::connect`]): 8 MiB resident per connection at RabbitMQ's default `frame_max`,
//! plus an I/O thread. Two consumers on two connections were half a catalog worker's memory.
//!
//! What stays per worker: its channels (one to consume, one to publish confirmed), so a
//! worker that must hand its deliveries back (a panic in its batch task) closes its own
//! consume channel, which returns exactly its unacked deliveries, and leaves the other
//! worker's channels alone. Whatever breaks the connection itself ends every session on it;
//! each reconnect loop then asks here again and the first opens a new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::Connection;
use tokio::sync::Mutex;

use super::broker::{self, BrokerError};
use super::config::SecretUrl;

/// A process's broker connection for its consumers, opened on first use.
pub struct SharedConnection {
    url: SecretUrl,
    /// The connection's name on the broker (`eventline {role}`).
    role: String,
    current: Mutex<Option<Arc<Connection>>>,
    /// Workers running on it ([`Self::enter`] to [`Self::leave`]): the last to leave closes it,
    /// so a worker that stops first never cuts off one still finishing what it holds.
    users: AtomicUsize,
}

impl SharedConnection {
    pub fn new(url: SecretUrl, role: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            url,
            role: role.into(),
            current: Mutex::new(None),
            users: AtomicUsize::new(0),
        })
    }

    /// The open connection, or a new one if there is none or it has closed (or is closing).
    /// Callers that race here get the same connection: the lock is held while connecting.
    pub async fn get(&self) -> Result<Arc<Connection>, BrokerError> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref()
            && connection.status().connected()
        {
            return Ok(connection.clone());
        }
        let connection = Arc::new(broker::connect(&self.url, &self.role).await?);
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// A worker starts running on this connection.
    pub fn enter(&self) {
        self.users.fetch_add(1, Ordering::AcqRel);
    }

    /// A worker has stopped for good (shutdown): the last one closes the connection cleanly.
    pub async fn leave(&self) {
        if self.users.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if let Some(connection) = self.current.lock().await.take()
            && connection.status().connected()
        {
            let _ = connection.close(200, "worker shutting down".into()).await;
        }
    }
}
