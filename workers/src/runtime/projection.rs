//! Projections: read models kept current from the log, exactly once, by one projector at a
//! time.
//!
//! A projection reads the log through the gap-safe [`LogReader`] and applies each batch in
//! one transaction together with its checkpoint, so a crash can never apply an event twice
//! or skip one, and a connection that dies around the commit leaves an unambiguous outcome:
//! the checkpoint row says whether the batch is in.
//!
//! Election and fencing: every replica runs its service's projections, but only the holder
//! of the projection's session advisory lock projects; the others stand by. The holder bumps
//! the checkpoint row's `epoch` when elected, and each batch moves the checkpoint by a
//! compare-and-set on `(epoch, position)` inside the transaction that applied the events.
//! A projector that lost its election (a dropped connection, a rebuild took over) finds the
//! epoch moved: its batch rolls back instead of committing a second copy.
//!
//! An event the projection cannot apply (undecodable, or a constraint the read model
//! enforces) is poison: the reason is recorded in `checkpoints.poison`, logged once, and the
//! projection waits for a [`rebuild`] instead of retrying in a loop. [`verify`] compares a
//! read model with a fresh fold of the log through the same `apply` code.
//!
//! Must never apply an event outside the transaction that moves its checkpoint.

use std::future::Future;
use std::time::Duration;

use sqlx::{Acquire, PgConnection};
use tokio::sync::watch;
use tracing::{error, info, warn};

use eventline_events::Namespace;

use super::backoff;
use super::log_reader::{HOLE_POLL_INTERVAL, LogReader};
use super::metrics::{self, Peer};
use super::readiness;
use super::shutdown::Shutdown;
use super::store::{EventStore, RecordedEvent, StoreError};

const BATCH_SIZE: i64 = 1000;
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How often a standby (or a poisoned projection) looks again.
const STANDBY_INTERVAL: Duration = Duration::from_secs(1);

/// A read model fed from the log.
pub trait Projection: Send + Sync + 'static {
    /// The checkpoint name, e.g. `projection.catalog_products`.
    const NAME: &'static str;
    /// The tables the projection writes (and nothing else does), for [`verify`] and
    /// [`rebuild`]. Their `updated_at` column, if any, is not compared.
    const TABLES: &'static [&'static str];

    /// Applies one event inside the batch's transaction. Events of other services are passed
    /// too; ignore them. Must write only the projection's [`Projection::TABLES`], unqualified
    /// (a rebuild and a verification fold into temporary tables of the same names).
    fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Applies a whole batch inside its transaction. The default applies each event in turn;
    /// a projection may instead fold the batch into a few set-based statements (one round
    /// trip for many events), provided the rows it leaves are the ones applying the events
    /// one at a time leaves, for every log the services can write: [`verify`] folds the log
    /// one event at a time and compares. If this refuses the batch as poison, the projector
    /// rolls it back and applies it one event at a time to name the event that is poison.
    fn apply_all(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            for event in events {
                self.apply(&mut *conn, event).await?;
            }
            Ok(())
        }
    }

    /// Empties the read model.
    fn reset(&self, conn: &mut PgConnection)
    -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Why a projector stopped following.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another projector (or a rebuild) was elected since: this one must not commit.
    #[error("projection {name}: fenced (epoch {epoch} is no longer the current one)")]
    Fenced { name: &'static str, epoch: i64 },
    /// An event this projection cannot apply; stopped until it is rebuilt.
    #[error("projection {name} is poisoned: {reason}")]
    Poisoned { name: &'static str, reason: String },
}

impl From<sqlx::Error> for ProjectionError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// Keeps a projection current until shutdown. `progress` receives the position applied through.
///
/// It reports to `/readyz` under its name: ready while it projects or stands by for
/// another replica, not ready while it is starting, reconnecting, or poisoned (its read model
/// has stopped moving until somebody rebuilds it).
pub async fn run<P: Projection>(
    projection: P,
    store: EventStore,
    namespace: Namespace,
    shutdown: Shutdown,
    progress: watch::Sender<i64>,
) {
    let ready = Ready {
        namespace: &namespace,
        component: P::NAME,
    };
    ready.report(false, "starting");
    let (projection, store, stop, progress) = (&projection, &store, &shutdown, &progress);
    // A poisoned projection waits for a rebuild, not for a backoff: only other failures
    // (connection, database) end the session and go through the reconnect loop.
    backoff::reconnect(shutdown.token(), P::NAME, || async move {
        loop {
            match follow(projection, store, ready, stop, progress).await {
                Err(ProjectionError::Poisoned { reason, .. }) => {
                    // Logged once where it was found; here only wait for a rebuild to clear it.
                    warn!(projection = P::NAME, %reason, "projection poisoned; waiting for `eventline projections rebuild`");
                    ready.report(false, format!("poisoned, waiting for a rebuild: {reason}"));
                    if !wait_for_cure::<P>(store, stop).await {
                        return Ok(());
                    }
                }
                Err(error) => {
                    ready.report(false, error.to_string());
                    // A fenced projector re-elects; only a failed database session reconnects.
                    if matches!(error, ProjectionError::Store(_)) {
                        metrics::reconnecting(ready.namespace, "projection", Peer::Database);
                    }
                    return Err(error);
                }
                Ok(()) => return Ok(()),
            }
        }
    })
    .await;
    readiness::remove(&namespace, P::NAME);
}

/// Where a projector tells `/readyz` how it is doing.
#[derive(Clone, Copy)]
struct Ready<'a> {
    namespace: &'a Namespace,
    component: &'a str,
}

impl Ready<'_> {
    fn report(self, ready: bool, detail: impl Into<String>) {
        readiness::report(self.namespace, self.component, ready, detail);
    }
}

/// Waits until the projection's poison is cleared; false on shutdown.
async fn wait_for_cure<P: Projection>(store: &EventStore, shutdown: &Shutdown) -> bool {
    loop {
        tokio::select! {
            () = tokio::time::sleep(STANDBY_INTERVAL * 5) => {}
            () = shutdown.triggered() => return false,
        }
        if let Ok(None) = poison(store, P::NAME).await {
            return true;
        }
    }
}

/// Why projection `name` stopped, if it did.
pub async fn poison(store: &EventStore, name: &str) -> Result<Option<String>, StoreError> {
    let reason: Option<Option<String>> =
        sqlx::query_scalar("SELECT poison FROM checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(store.pool())
            .await?;
    Ok(reason.flatten())
}

/// A connection of its own (detached from the pool): the election lock lives and dies with
/// it, and every batch is applied on it, so a projector whose lock is gone cannot commit.
async fn elect<P: Projection>(
    store: &EventStore,
    ready: Ready<'_>,
    shutdown: &Shutdown,
    owner: &str,
) -> Result<Option<(PgConnection, Elected)>, ProjectionError> {
    let mut conn = store.pool().acquire().await?.detach();
    let mut waiting_logged = false;
    loop {
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(P::NAME)
            .fetch_one(&mut conn)
            .await?;
        if leader {
            break;
        }
        if !waiting_logged {
            info!(
                projection = P::NAME,
                "another replica projects; standing by"
            );
            ready.report(true, "standing by: another replica projects");
            waiting_logged = true;
        }
        tokio::select! {
            () = tokio::time::sleep(STANDBY_INTERVAL) => {}
            () = shutdown.triggered() => return Ok(None),
        }
    }
    let elected = take_over(&mut conn, P::NAME, owner).await?;
    Ok(Some((conn, elected)))
}

/// What an elected projector starts from.
#[derive(Clone, Debug)]
struct Elected {
    epoch: i64,
    position: i64,
    poison: Option<String>,
}

/// Bumps the epoch (fencing whoever held it) and reads where the projection stands.
async fn take_over(
    conn: &mut PgConnection,
    name: &str,
    owner: &str,
) -> Result<Elected, StoreError> {
    sqlx::query("INSERT INTO checkpoints (name, position) VALUES ($1, 0) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let (epoch, position, poison): (i64, i64, Option<String>) = sqlx::query_as(
        "UPDATE checkpoints SET epoch = epoch + 1, owner = $2, updated_at = now() \
         WHERE name = $1 RETURNING epoch, position, poison",
    )
    .bind(name)
    .bind(owner)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Elected {
        epoch,
        position,
        poison,
    })
}

/// Moves the checkpoint from `from` to `to` if `epoch` still owns it; false if fenced.
async fn advance(
    conn: &mut PgConnection,
    name: &str,
    epoch: i64,
    from: i64,
    to: i64,
) -> Result<bool, StoreError> {
    let moved = sqlx::query(
        "UPDATE checkpoints SET position = $4, updated_at = now() \
         WHERE name = $1 AND epoch = $2 AND position = $3",
    )
    .bind(name)
    .bind(epoch)
    .bind(from)
    .bind(to)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

/// Whether an apply error is the event's fault (poison), not the connection's.
fn is_poison(error: &StoreError) -> bool {
    // The store classifies driver errors once: SQLSTATE 22 (data exception) and 23
    // (integrity constraint violation) are `Permanent`.
    matches!(error, StoreError::Corrupt(_) | StoreError::Permanent { .. })
}

/// Applies `batch` in the open transaction `tx`, or says which event is poison.
async fn apply_batch<P: Projection>(
    projection: &P,
    tx: &mut PgConnection,
    batch: &[RecordedEvent],
) -> Result<(), (StoreError, Option<String>)> {
    for event in batch {
        if let Err(error) = projection.apply(tx, event).await {
            let reason = is_poison(&error).then(|| {
                format!(
                    "event at position {} ({}, id {}) cannot be applied: {error}",
                    event.position, event.event_type, event.event_id
                )
            });
            return Err((error, reason));
        }
    }
    Ok(())
}

async fn follow<P: Projection>(
    projection: &P,
    store: &EventStore,
    ready: Ready<'_>,
    shutdown: &Shutdown,
    progress: &watch::Sender<i64>,
) -> Result<(), ProjectionError> {
    let owner = format!("{}:{}", std::process::id(), uuid::Uuid::now_v7().simple());
    let Some((mut conn, elected)) = elect::<P>(store, ready, shutdown, &owner).await? else {
        return Ok(());
    };
    if let Some(reason) = elected.poison {
        return Err(ProjectionError::Poisoned {
            name: P::NAME,
            reason,
        });
    }
    let epoch = elected.epoch;
    // Set-based batches join an UNNEST of parameters to the read model; the generic plan a
    // prepared statement settles on guesses 10 rows and picks a hash join over a sequential
    // scan of a table every event updates (dead rows included). Every statement this
    // connection runs has an index to use.
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut conn)
        .await?;
    let mut reader = LogReader::after(elected.position, BATCH_SIZE);
    info!(
        projection = P::NAME,
        from = reader.position(),
        epoch,
        "projecting"
    );
    ready.report(true, "the projector, projecting");
    progress.send_replace(reader.position());
    let mut last_check = tokio::time::Instant::now();
    loop {
        let from = reader.position();
        let batch = reader.next_batch(&mut conn).await?;
        if batch.is_empty() {
            // An idle projector makes no compare-and-set that would tell it it was fenced:
            // look now and then, so a rebuild waiting for the election gets it.
            if last_check.elapsed() >= STANDBY_INTERVAL {
                last_check = tokio::time::Instant::now();
                let current: i64 =
                    sqlx::query_scalar("SELECT epoch FROM checkpoints WHERE name = $1")
                        .bind(P::NAME)
                        .fetch_one(&mut conn)
                        .await?;
                if current != epoch {
                    return Err(ProjectionError::Fenced {
                        name: P::NAME,
                        epoch,
                    });
                }
            }
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
        let applied = match projection.apply_all(&mut tx, &batch).await {
            Ok(()) => Ok(()),
            // Refused as a whole: find out which event, one at a time, in a fresh transaction
            // (the refused statement aborted this one).
            Err(error) if is_poison(&error) => {
                tx.rollback().await?;
                tx = conn.begin().await?;
                apply_batch(projection, &mut tx, &batch).await
            }
            Err(error) => Err((error, None)),
        };
        if let Err((error, poison)) = applied {
            tx.rollback().await?;
            let Some(reason) = poison else {
                return Err(error.into());
            };
            error!(projection = P::NAME, %reason, "projection poisoned");
            sqlx::query("UPDATE checkpoints SET poison = $3 WHERE name = $1 AND epoch = $2")
                .bind(P::NAME)
                .bind(epoch)
                .bind(&reason)
                .execute(&mut conn)
                .await?;
            return Err(ProjectionError::Poisoned {
                name: P::NAME,
                reason,
            });
        }
        if !advance(&mut tx, P::NAME, epoch, from, reader.position()).await? {
            tx.rollback().await?;
            return Err(ProjectionError::Fenced {
                name: P::NAME,
                epoch,
            });
        }
        tx.commit().await?;
        progress.send_replace(reader.position());
    }
}

/// Creates, in this session, temporary tables that shadow the projection's tables (the
/// temporary schema is searched first), empty, with the same columns and constraints.
async fn shadow_tables<P: Projection>(conn: &mut PgConnection) -> Result<(), StoreError> {
    for table in P::TABLES {
        sqlx::query(&format!(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {table} (LIKE public.{table} INCLUDING ALL)"
        ))
        .execute(&mut *conn)
        .await?;
        sqlx::query(&format!("DELETE FROM pg_temp.{table}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn drop_shadow_tables<P: Projection>(conn: &mut PgConnection) -> Result<(), StoreError> {
    for table in P::TABLES {
        sqlx::query(&format!("DROP TABLE IF EXISTS pg_temp.{table}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Rows that differ between a read model and a fresh fold of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// The checkpoint both were compared at.
    pub position: i64,
    /// Rows (as JSON, without `updated_at`) the read model has and the fold does not.
    pub unexpected: Vec<serde_json::Value>,
    /// Rows the fold has and the read model does not.
    pub missing: Vec<serde_json::Value>,
}

impl Drift {
    pub fn is_exact(&self) -> bool {
        self.unexpected.is_empty() && self.missing.is_empty()
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at position {}: {} row(s) not in a fresh fold of the log, {} row(s) of the fold \
             missing; first of each: {:?} / {:?}",
            self.position,
            self.unexpected.len(),
            self.missing.len(),
            self.unexpected.first(),
            self.missing.first()
        )
    }
}

/// Compares the projection's read model with a fresh fold of the log up to its checkpoint,
/// through the projection's own `apply`, in one REPEATABLE READ snapshot (the checkpoint and
/// the read model move together, so they are consistent in any snapshot). Changes nothing.
/// A fold that cannot apply an event is reported as an error.
pub async fn verify<P: Projection>(
    projection: &P,
    store: &EventStore,
) -> Result<Drift, StoreError> {
    let mut conn = store.pool().acquire().await?.detach();
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ WRITE")
        .execute(&mut *tx)
        .await?;
    let position: i64 = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
        .bind(P::NAME)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or(0);
    shadow_tables::<P>(&mut tx).await?;
    // Everything up to the checkpoint is settled (the projector saw no hole below it that
    // could still fill), and visible in this snapshot, which sees the checkpoint.
    let mut after = 0;
    loop {
        let batch = EventStore::read_log(&mut tx, after, BATCH_SIZE).await?;
        let batch: Vec<RecordedEvent> = batch
            .into_iter()
            .filter(|e| e.position <= position)
            .collect();
        let Some(last) = batch.last() else { break };
        after = last.position;
        for event in &batch {
            projection.apply(&mut tx, event).await?;
        }
    }
    let mut drift = Drift {
        position,
        ..Drift::default()
    };
    for table in P::TABLES {
        let diff = |a: &str, b: &str| {
            format!(
                "SELECT to_jsonb(t) - 'updated_at' FROM {a}.{table} t \
                 EXCEPT ALL SELECT to_jsonb(t) - 'updated_at' FROM {b}.{table} t"
            )
        };
        let unexpected: Vec<serde_json::Value> = sqlx::query_scalar(&diff("public", "pg_temp"))
            .fetch_all(&mut *tx)
            .await?;
        let missing: Vec<serde_json::Value> = sqlx::query_scalar(&diff("pg_temp", "public"))
            .fetch_all(&mut *tx)
            .await?;
        drift.unexpected.extend(unexpected);
        drift.missing.extend(missing);
    }
    tx.rollback().await?;
    Ok(drift)
}

/// Rebuilds a projection from position 0 without taking its read model away: it takes the
/// projection's election (so the live projector stands by and cannot commit), folds the
/// whole log into temporary shadow tables through `apply`, and once caught up swaps the
/// result in and moves the checkpoint in one transaction; readers see the old model until
/// then and the rebuilt one after. Clears a poison. Returns the position reached.
pub async fn rebuild<P: Projection>(
    projection: &P,
    store: &EventStore,
) -> Result<i64, ProjectionError> {
    let mut conn = store.pool().acquire().await?.detach();
    // Fence the live projector (its next compare-and-set, or its next idle check, fails and
    // it gives up the election), wait for the election, and hold it.
    sqlx::query("UPDATE checkpoints SET epoch = epoch + 1 WHERE name = $1")
        .bind(P::NAME)
        .execute(&mut conn)
        .await?;
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(P::NAME)
        .execute(&mut conn)
        .await?;
    let owner = format!("rebuild:{}", std::process::id());
    let elected = take_over(&mut conn, P::NAME, &owner).await?;
    shadow_tables::<P>(&mut conn).await?;
    let mut reader = LogReader::after(0, BATCH_SIZE);
    loop {
        let batch = reader.next_batch(&mut conn).await?;
        if batch.is_empty() {
            if reader.waiting_on_hole() {
                tokio::time::sleep(HOLE_POLL_INTERVAL).await;
                continue;
            }
            break;
        }
        let mut tx = conn.begin().await?;
        if let Err((error, reason)) = apply_batch(projection, &mut tx, &batch).await {
            tx.rollback().await?;
            return Err(match reason {
                Some(reason) => ProjectionError::Poisoned {
                    name: P::NAME,
                    reason,
                },
                None => error.into(),
            });
        }
        tx.commit().await?;
    }
    let mut tx = conn.begin().await?;
    for table in P::TABLES {
        sqlx::query(&format!("DELETE FROM public.{table}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO public.{table} SELECT * FROM pg_temp.{table}"
        ))
        .execute(&mut *tx)
        .await?;
    }
    let swapped = sqlx::query(
        "UPDATE checkpoints SET position = $3, poison = NULL, updated_at = now() \
         WHERE name = $1 AND epoch = $2",
    )
    .bind(P::NAME)
    .bind(elected.epoch)
    .bind(reader.position())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if swapped != 1 {
        tx.rollback().await?;
        return Err(ProjectionError::Fenced {
            name: P::NAME,
            epoch: elected.epoch,
        });
    }
    tx.commit().await?;
    drop_shadow_tables::<P>(&mut conn).await?;
    // Closing the connection frees the election for the live projector.
    let _ = sqlx::Connection::close(conn).await;
    Ok(reader.position())
}
