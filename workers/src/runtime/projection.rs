//! Projections: read models kept current from the log, exactly once.
//!
//! A projection reads the log through the gap-safe [`LogReader`] and applies each batch in
//! one transaction together with its checkpoint, so a crash can never apply an event twice or
//! skip one. Because it reads the log (not the broker), it can be rebuilt from position 0 at
//! any time and ends identical to the live one.

use std::future::Future;
use std::time::Duration;

use sqlx::{Acquire, PgConnection};
use tokio::sync::watch;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::log_reader::{HOLE_POLL_INTERVAL, LogReader};
use super::shutdown::Shutdown;
use super::store::{EventStore, RecordedEvent, StoreError, save_checkpoint};

const BATCH_SIZE: i64 = 1000;
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A read model fed from the log.
pub trait Projection: Send + Sync + 'static {
    /// The checkpoint name, e.g. `projection.catalog_products`.
    const NAME: &'static str;

    /// Applies one event inside the batch's transaction. Events of other services are passed
    /// too; ignore them.
    fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Empties the read model, for a rebuild from position 0.
    fn reset(&self, conn: &mut PgConnection)
    -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Keeps a projection current until shutdown. `progress` receives the position applied through.
pub async fn run<P: Projection>(
    projection: P,
    store: EventStore,
    shutdown: Shutdown,
    progress: watch::Sender<i64>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !shutdown.is_triggered() {
        match follow(&projection, &store, &shutdown, &progress).await {
            Ok(()) => return,
            Err(error) => {
                warn!(%error, projection = P::NAME, "projection stopped; resuming from its checkpoint");
                if !backoff.wait(shutdown.token()).await {
                    return;
                }
            }
        }
    }
}

async fn follow<P: Projection>(
    projection: &P,
    store: &EventStore,
    shutdown: &Shutdown,
    progress: &watch::Sender<i64>,
) -> Result<(), StoreError> {
    let mut conn = store.pool().acquire().await?;
    let mut reader = LogReader::after(store.checkpoint(P::NAME).await?, BATCH_SIZE);
    info!(projection = P::NAME, from = reader.position(), "projecting");
    progress.send_replace(reader.position());
    loop {
        let from = reader.position();
        let batch = reader.next_batch(&mut conn).await?;
        if batch.is_empty() {
            // At a hole the writer is usually a millisecond from committing: look again soon.
            let wait = if reader.waiting_on_hole() {
                HOLE_POLL_INTERVAL
            } else {
                POLL_INTERVAL
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => continue,
                () = shutdown.triggered() => return Ok(()),
            }
        }
        let mut tx = conn.begin().await?;
        // Compare-and-set on the checkpoint: with several replicas running the same projection,
        // the row lock serializes them, and a replica whose batch no longer starts at the
        // checkpoint (another applied it, or a rebuild reset it) reloads instead of applying
        // events twice.
        let committed = lock_checkpoint(&mut tx, P::NAME).await?;
        if committed != from {
            tx.rollback().await?;
            reader = LogReader::after(committed, BATCH_SIZE);
            continue;
        }
        for event in &batch {
            projection.apply(&mut tx, event).await?;
        }
        save_checkpoint(&mut tx, P::NAME, reader.position()).await?;
        tx.commit().await?;
        progress.send_replace(reader.position());
    }
}

async fn lock_checkpoint(conn: &mut PgConnection, name: &str) -> Result<i64, StoreError> {
    sqlx::query("INSERT INTO checkpoints (name, position) VALUES ($1, 0) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let position =
        sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
    Ok(position)
}

/// Empties a projection and replays the whole log into it; returns the position reached.
///
/// Call it with the projection's live runner stopped (a runner keeps its position in memory).
/// It reads through the same gap-safe reader, so it ends identical to a live projection.
pub async fn rebuild<P: Projection>(projection: &P, store: &EventStore) -> Result<i64, StoreError> {
    let mut conn = store.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    projection.reset(&mut tx).await?;
    sqlx::query("DELETE FROM checkpoints WHERE name = $1")
        .bind(P::NAME)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut reader = LogReader::after(0, BATCH_SIZE);
    loop {
        let batch = reader.next_batch(&mut conn).await?;
        if batch.is_empty() {
            if reader.waiting_on_hole() {
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            return Ok(reader.position());
        }
        let mut tx = conn.begin().await?;
        for event in &batch {
            projection.apply(&mut tx, event).await?;
        }
        save_checkpoint(&mut tx, P::NAME, reader.position()).await?;
        tx.commit().await?;
    }
}
