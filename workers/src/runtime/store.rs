//! The event store: the append-only log, the inbox, and checkpoints, in PostgreSQL.
//!
//! Writes happen only inside a [`CommandTx`], which exists only after the command's message
//! id has been claimed in the inbox: the claim makes redeliveries idempotent. Every insert
//! into the log takes the log's shared append lock before it draws a position (a trigger,
//! migration 0004), which is what lets the gap-safe reader ([`super::log_reader`]) tell a
//! permanent hole from a late commit without waiting on anyone else's transactions.

use std::collections::HashMap;
use std::time::Duration;

use eventline_events::trace::TraceContext;
use eventline_events::values::StreamId;
use eventline_events::{CausationId, CorrelationId, EventId, MessageId, Metadata};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::config::{DEFAULT_DB_ACQUIRE_TIMEOUT, SecretUrl};
use super::inbox::Digest;

/// The migrations in `schema/migrations`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../schema/migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream first. Reload and decide again.
    #[error("stream {stream_id} moved past version {expected} while this command was decided")]
    Conflict { stream_id: String, expected: i64 },
    #[error(
        "could not reach PostgreSQL at {url}: {source}. Is it running \
         (`pg_ctlcluster --skip-systemctl-redirect 15 main start`)? Set DATABASE_URL to point elsewhere."
    )]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// A stored event no longer decodes: the log and the code disagree. Not retryable.
    #[error("the log holds an event this version of the code cannot read: {0}")]
    Corrupt(String),
    /// May pass on a later attempt: the connection, a timeout, a serialization failure or a
    /// deadlock, the pool. Retried with backoff, bounded.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The database refused this command's data, and will refuse it every time: a data
    /// exception (SQLSTATE class 22) or an integrity violation (class 23) other than the
    /// append's version race, which is [`StoreError::Conflict`]. Dead-lettered at once.
    #[error("the database refused the data (SQLSTATE {sqlstate}): {message}")]
    Permanent { sqlstate: String, message: String },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Every `?` on a driver error classifies it: the class of an error is what the worker does
/// with the message (see `runtime::settle`), so it is decided once, here.
impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match permanent_sqlstate(&error) {
            Some(sqlstate) => Self::Permanent {
                message: error
                    .as_database_error()
                    .map_or_else(|| error.to_string(), |db| db.message().to_owned()),
                sqlstate,
            },
            None => Self::Database(error),
        }
    }
}

/// The SQLSTATE of an error no retry can cure: classes 22 (data exception) and 23 (integrity
/// constraint violation). Everything else — connection loss, 40001 serialization failure,
/// 40P01 deadlock, 57P01 admin shutdown, 53 insufficient resources — may pass.
fn permanent_sqlstate(error: &sqlx::Error) -> Option<String> {
    let code = error.as_database_error()?.code()?;
    (code.starts_with("22") || code.starts_with("23")).then(|| code.into_owned())
}

impl StoreError {
    /// Whether retrying the same message could ever succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent { .. } | Self::Corrupt(_))
    }

    fn from_append(error: sqlx::Error, stream_id: &StreamId, expected: i64) -> Self {
        let conflict = error.as_database_error().is_some_and(|db| {
            db.is_unique_violation()
                && db.constraint() == Some("event_log_stream_id_stream_version_key")
        });
        if conflict {
            Self::Conflict {
                stream_id: stream_id.to_string(),
                expected,
            }
        } else {
            Self::from(error)
        }
    }
}

/// The ids an event carries in the log's `metadata` column, so its origin can be traced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub correlation_id: CorrelationId,
    /// The message id of the command that recorded this event.
    pub causation_id: CausationId,
    /// The worker replica that recorded it.
    pub recorded_by: String,
    /// The span that recorded it, so the relay, later and in another process, publishes the
    /// event in the trace of the message that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

impl EventMetadata {
    /// Metadata for events recorded while handling the message in `ctx`.
    pub fn for_command(ctx: &super::handler::Context<'_>) -> Self {
        Self {
            correlation_id: ctx.metadata.correlation_id,
            causation_id: ctx.metadata.message_id.into(),
            recorded_by: ctx.config.replica.clone(),
            trace: ctx.metadata.trace.clone(),
        }
    }
}

/// An event about to be appended.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub event_id: EventId,
    pub event_type: &'static str,
    pub data: serde_json::Value,
}

/// An event read back from the log.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    pub position: i64,
    pub stream_id: StreamId,
    pub stream_version: i64,
    pub event_id: EventId,
    pub event_type: String,
    pub schema_version: i32,
    pub data: serde_json::Value,
    pub metadata: EventMetadata,
    pub recorded_at: time::OffsetDateTime,
}

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
    pub async fn check(&self, url: &SecretUrl) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|source| StoreError::Connect {
                url: url.to_string(),
                source,
            })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Starts a command's transaction by claiming its message id for `consumer`, without a
    /// digest: for tools and tests that append directly under ids they never reuse. The
    /// worker claims through [`EventStore::begin_batch`], with the message's digest.
    ///
    /// Returns [`Claim::Duplicate`] with the stored reply when the message was handled before.
    /// A concurrent duplicate blocks on the inbox row until the first commits, then sees it.
    pub async fn begin_command(
        &self,
        consumer: &str,
        message: &Metadata,
        handled_by: &str,
    ) -> Result<Claim, StoreError> {
        let (tx, mut claims) = self
            .begin_batch(consumer, &[(message, None)], handled_by)
            .await?;
        match claims.pop() {
            Some(BatchClaim::New) => Ok(Claim::New(tx)),
            Some(BatchClaim::Duplicate { reply, outputs }) => {
                tx.rollback().await?;
                Ok(Claim::Duplicate { reply, outputs })
            }
            Some(BatchClaim::Reused) => {
                tx.rollback().await?;
                Ok(Claim::Reused)
            }
            None => {
                tx.rollback().await?;
                Err(StoreError::Database(sqlx::Error::RowNotFound))
            }
        }
    }

    /// Starts one transaction for several messages by claiming all their ids for `consumer`
    /// in one statement — the transaction's first write, so it holds a transaction id before
    /// any log position is drawn (see [`super::log_reader`]).
    ///
    /// Each message comes with the [`Digest`] of what it says, stored with its claim. Returns
    /// the transaction and, per message in the order given, whether it is new (its effects go
    /// into this transaction), a duplicate (the same id and digest: with what it got the first
    /// time) or a reused id (the same id, another digest: no effect, the caller refuses it).
    /// A missing digest, on either side, compares as the same message (rows claimed before
    /// digests were stored, and [`EventStore::begin_command`]'s tools).
    /// The transaction is returned even when no message is new; roll it back.
    /// Rows are claimed in message-id order, so two batches that share ids cannot deadlock.
    /// `messages` must not repeat an id (the second would look like a duplicate whose reply
    /// is not stored yet).
    pub async fn begin_batch(
        &self,
        consumer: &str,
        messages: &[(&Metadata, Option<Digest>)],
        handled_by: &str,
    ) -> Result<(CommandTx, Vec<BatchClaim>), StoreError> {
        let mut sorted: Vec<&(&Metadata, Option<Digest>)> = messages.iter().collect();
        sorted.sort_by_key(|(m, _)| m.message_id.as_uuid());
        let ids: Vec<uuid::Uuid> = sorted.iter().map(|(m, _)| m.message_id.as_uuid()).collect();
        let correlations: Vec<uuid::Uuid> = sorted
            .iter()
            .map(|(m, _)| m.correlation_id.as_uuid())
            .collect();
        let causations: Vec<uuid::Uuid> = sorted
            .iter()
            .map(|(m, _)| m.causation_id.as_uuid())
            .collect();
        let types: Vec<&str> = sorted
            .iter()
            .map(|(m, _)| m.message_type.as_str())
            .collect();
        let digests: Vec<Option<&[u8]>> = sorted
            .iter()
            .map(|(_, d)| d.as_ref().map(Digest::as_bytes))
            .collect();
        let mut tx = self.pool.begin().await?;
        // WITH ORDINALITY + ORDER BY: the rows are inserted (and their index entries locked) in
        // message-id order. Still one statement for the whole batch, and the transaction's
        // first write: the digest rides along in the same row.
        let claimed: Result<Vec<uuid::Uuid>, sqlx::Error> = sqlx::query_scalar(
            "INSERT INTO processed_messages \
                 (consumer, message_id, handled_by, correlation_id, causation_id, message_type, digest) \
             SELECT $1, m.id, $3, m.correlation, m.causation, m.kind, m.digest \
             FROM unnest($2::uuid[], $4::uuid[], $5::uuid[], $6::text[], $7::bytea[]) \
                  WITH ORDINALITY AS m(id, correlation, causation, kind, digest, n) \
             ORDER BY m.n \
             ON CONFLICT DO NOTHING RETURNING message_id",
        )
        .bind(consumer)
        .bind(&ids)
        .bind(handled_by)
        .bind(&correlations)
        .bind(&causations)
        .bind(&types)
        .bind(&digests)
        .fetch_all(&mut *tx)
        .await;
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(error) => {
                let _ = tx.rollback().await;
                return Err(error.into());
            }
        };
        let mut stored = std::collections::HashMap::new();
        if claimed.len() < ids.len() {
            let duplicates: Vec<uuid::Uuid> = ids
                .iter()
                .filter(|id| !claimed.contains(id))
                .copied()
                .collect();
            type Stored = (
                uuid::Uuid,
                Option<serde_json::Value>,
                serde_json::Value,
                Option<Vec<u8>>,
            );
            let rows: Result<Vec<Stored>, _> = sqlx::query_as(
                "SELECT message_id, reply, outputs, digest FROM processed_messages \
                 WHERE consumer = $1 AND message_id = ANY($2)",
            )
            .bind(consumer)
            .bind(&duplicates)
            .fetch_all(&mut *tx)
            .await;
            match rows {
                Ok(rows) => stored.extend(rows.into_iter().map(|(id, r, o, d)| (id, (r, o, d)))),
                Err(error) => {
                    let _ = tx.rollback().await;
                    return Err(error.into());
                }
            }
        }
        let claims = messages
            .iter()
            .map(|(m, digest)| match stored.remove(&m.message_id.as_uuid()) {
                Some((_, _, Some(first)))
                    if digest.is_some_and(|d| d.as_bytes() != first.as_slice()) =>
                {
                    BatchClaim::Reused
                }
                Some((reply, outputs, _)) => BatchClaim::Duplicate { reply, outputs },
                None => BatchClaim::New,
            })
            .collect();
        let new = messages
            .iter()
            .map(|(m, _)| m.message_id)
            .filter(|id| claimed.contains(&id.as_uuid()))
            .collect();
        Ok((
            CommandTx {
                tx,
                consumer: consumer.to_owned(),
                claimed: new,
                usable: true,
                after_commit: Vec::new(),
            },
            claims,
        ))
    }

    /// A read-only transaction that claims nothing: for queries, which change nothing, so a
    /// repeated query simply runs again and the inbox stays the record of effects only.
    /// READ ONLY keeps the rule that every write follows a claim: a write in it fails.
    pub async fn begin_read(&self) -> Result<CommandTx, StoreError> {
        let tx = self.pool.begin_with("BEGIN READ ONLY").await?;
        Ok(CommandTx {
            tx,
            consumer: String::new(),
            claimed: Vec::new(),
            usable: true,
            after_commit: Vec::new(),
        })
    }

    /// The log from `after` on, in position order, at most `limit` rows, in one statement
    /// (one snapshot). What is missing below the last row may still commit: read it through
    /// [`super::log_reader::LogReader`], which knows when a hole is permanent.
    pub async fn read_log(
        conn: &mut sqlx::PgConnection,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, stream_id, stream_version, event_id, event_type, schema_version, \
                    data, metadata, recorded_at \
             FROM event_log WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await?;
        rows.into_iter().map(recorded_event).collect()
    }

    /// The transactions (virtual transaction ids) that hold the log's append lock right now:
    /// every transaction that may still commit a row it inserted into `event_log` (migration
    /// 0004 makes each insert take the lock before it draws a position). Read after a
    /// snapshot, it names every writer that snapshot could have missed.
    pub async fn log_writers(conn: &mut sqlx::PgConnection) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT event_log_writers()")
            .fetch_one(conn)
            .await?)
    }

    pub async fn checkpoint(&self, name: &str) -> Result<i64, StoreError> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(position.unwrap_or(0))
    }
}

/// Creates the database `url` names if it does not exist, connecting to the server's
/// `postgres` database to do it. Lets `eventline migrate` work on a fresh server.
pub async fn create_database_if_missing(url: &SecretUrl) -> Result<(), StoreError> {
    let name = url.database_name().unwrap_or("eventline").to_owned();
    let mut admin = admin_connection(url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        // Identifiers cannot be bound as parameters; quote it the way PostgreSQL does.
        let quoted = name.replace('"', "\"\"");
        match sqlx::query(&format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut admin)
            .await
        {
            Ok(_) => {}
            // Another process created it between our check and our CREATE.
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Drops the database `url` names, disconnecting its sessions. For tests and the demo.
pub async fn drop_database(url: &SecretUrl) -> Result<(), StoreError> {
    let Some(name) = url.database_name() else {
        return Ok(());
    };
    let quoted = name.replace('"', "\"\"");
    let mut admin = admin_connection(url).await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)"
    ))
    .execute(&mut admin)
    .await?;
    Ok(())
}

async fn admin_connection(url: &SecretUrl) -> Result<sqlx::PgConnection, StoreError> {
    use sqlx::Connection;
    let admin_url = url.with_path("postgres");
    sqlx::PgConnection::connect(admin_url.expose())
        .await
        .map_err(|source| StoreError::Connect {
            url: admin_url.to_string(),
            source,
        })
}

/// Saves a reader's checkpoint. Positions only move forward, even if an old leader writes late.
pub async fn save_checkpoint(
    conn: &mut sqlx::PgConnection,
    name: &str,
    position: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO checkpoints (name, position) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET position = GREATEST(checkpoints.position, EXCLUDED.position), \
                                          updated_at = now()",
    )
    .bind(name)
    .bind(position)
    .execute(conn)
    .await?;
    Ok(())
}

fn recorded_event(row: sqlx::postgres::PgRow) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.try_get("position")?;
    let metadata: serde_json::Value = row.try_get("metadata")?;
    let metadata = serde_json::from_value(metadata)
        .map_err(|e| StoreError::Corrupt(format!("metadata of position {position}: {e}")))?;
    Ok(RecordedEvent {
        position,
        stream_id: StreamId::from_log(row.try_get("stream_id")?),
        stream_version: row.try_get("stream_version")?,
        event_id: EventId::from_uuid(row.try_get("event_id")?),
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get("schema_version")?,
        data: row.try_get("data")?,
        metadata,
        recorded_at: row.try_get("recorded_at")?,
    })
}

/// The result of claiming a message id.
pub enum Claim {
    New(CommandTx),
    /// Handled before: the reply it got then, and the messages it dispatched.
    Duplicate {
        reply: Option<serde_json::Value>,
        outputs: serde_json::Value,
    },
    /// The id was claimed for a message with other content: no effect, refuse it.
    Reused,
}

/// The result of claiming one message id of a batch (see [`EventStore::begin_batch`]).
#[derive(Debug)]
pub enum BatchClaim {
    /// Claimed in the batch's transaction: handle it there.
    New,
    /// Handled before: the reply it got then, and the messages it dispatched.
    Duplicate {
        reply: Option<serde_json::Value>,
        outputs: serde_json::Value,
    },
    /// The id was claimed for a message with another digest (another type or body): it has
    /// no effect here, and its sender is told `idempotency_key_reused`. Nothing is stored
    /// for it: the row keeps the first message's reply.
    Reused,
}

/// One append of [`CommandTx::append_all`].
pub struct Append<'a> {
    pub stream_id: &'a StreamId,
    pub expected_version: i64,
    pub events: &'a [NewEvent],
    pub metadata: &'a EventMetadata,
}

/// One or more commands' open transaction, after their inbox claims.
pub struct CommandTx {
    tx: Transaction<'static, Postgres>,
    consumer: String,
    /// The message ids this transaction claimed, in the order they were given.
    claimed: Vec<MessageId>,
    /// False once a statement left the transaction unable to commit what its handlers meant
    /// (a torn append); the caller must roll back.
    usable: bool,
    /// Run once the commit succeeded, never otherwise (see [`CommandTx::after_commit`]).
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
}

impl CommandTx {
    /// The transaction's connection, for a service's own tables (auth's credentials).
    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }

    /// Every event of a stream, in version order.
    pub async fn load_stream(
        &mut self,
        stream_id: &StreamId,
    ) -> Result<Vec<(i64, String, serde_json::Value)>, StoreError> {
        self.load_stream_after(stream_id, 0).await
    }

    /// The events of a stream after `version`, in version order.
    pub async fn load_stream_after(
        &mut self,
        stream_id: &StreamId,
        version: i64,
    ) -> Result<Vec<(i64, String, serde_json::Value)>, StoreError> {
        let rows = sqlx::query(
            "SELECT stream_version, event_type, data FROM event_log \
             WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version",
        )
        .bind(stream_id.as_str())
        .bind(version)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok((
                    row.try_get("stream_version")?,
                    row.try_get("event_type")?,
                    row.try_get("data")?,
                ))
            })
            .collect()
    }

    /// The events after the given version of each stream, in version order, in one
    /// statement: for each `(stream, version)`, what [`CommandTx::load_stream`] returns past
    /// `version` (streams with nothing new are absent).
    pub async fn load_streams_after(
        &mut self,
        streams: &[(&StreamId, i64)],
    ) -> Result<HashMap<StreamId, Vec<(i64, String, serde_json::Value)>>, StoreError> {
        let ids: Vec<&str> = streams.iter().map(|(s, _)| s.as_str()).collect();
        let after: Vec<i64> = streams.iter().map(|(_, v)| *v).collect();
        let rows: Vec<(String, i64, String, serde_json::Value)> = sqlx::query_as(
            // LATERAL: one index range scan per stream, never a join over the whole log. The
            // ORDER BY inside is load-bearing: without it the planner pulls the subquery up
            // into a plain join and may hash the whole log (it did in the bench: 12,000 pages
            // a batch). Planned anew each time for the same reason as the inbox update in
            // `commit_all` (a generic plan made while the log was small would stay).
            "SELECT e.stream_id, e.stream_version, e.event_type, e.data \
             FROM unnest($1::text[], $2::bigint[]) AS w(stream_id, after) \
             CROSS JOIN LATERAL ( \
                 SELECT stream_id, stream_version, event_type, data FROM event_log \
                 WHERE stream_id = w.stream_id AND stream_version > w.after \
                 ORDER BY stream_version) e \
             ORDER BY e.stream_id, e.stream_version",
        )
        .bind(&ids)
        .bind(&after)
        .persistent(false)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut loaded: HashMap<StreamId, Vec<(i64, String, serde_json::Value)>> = HashMap::new();
        for (stream_id, version, event_type, data) in rows {
            loaded
                .entry(StreamId::from_log(stream_id))
                .or_default()
                .push((version, event_type, data));
        }
        Ok(loaded)
    }

    /// Several appends (to one or more streams) in one statement, all or nothing. Returns
    /// the streams another writer appended to first (deduplicated); when there are any,
    /// none of the appends went in (rolled back to a savepoint, the transaction stays
    /// usable), and the caller reloads those streams and decides again.
    ///
    /// Rows are inserted in the order given, so two batches that order their appends by
    /// stream wait on each other in the same order and cannot deadlock.
    pub async fn append_all(
        &mut self,
        appends: &[Append<'_>],
    ) -> Result<Vec<StreamId>, StoreError> {
        let rows = appends.iter().map(|a| a.events.len()).sum();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let mut streams: Vec<&str> = Vec::with_capacity(rows);
        let mut versions: Vec<i64> = Vec::with_capacity(rows);
        let mut ids: Vec<uuid::Uuid> = Vec::with_capacity(rows);
        let mut types: Vec<&str> = Vec::with_capacity(rows);
        let mut data: Vec<&serde_json::Value> = Vec::with_capacity(rows);
        let mut metadata: Vec<serde_json::Value> = Vec::with_capacity(rows);
        for append in appends {
            let meta = serde_json::to_value(append.metadata).unwrap_or_default();
            for (event, version) in append.events.iter().zip(append.expected_version + 1..) {
                streams.push(append.stream_id.as_str());
                versions.push(version);
                ids.push(event.event_id.as_uuid());
                types.push(event.event_type);
                data.push(&event.data);
                metadata.push(meta.clone());
            }
        }
        // A lost race skips rows instead of failing the statement (ON CONFLICT DO NOTHING, as
        // in `append`), so RETURNING names every stream that moved at once. The savepoint
        // takes back the rows that did go in: a later command's events must not land on a
        // stream whose earlier command lost.
        let result = async {
            sqlx::query("SAVEPOINT append_all")
                .execute(&mut *self.tx)
                .await?;
            sqlx::query_scalar::<_, uuid::Uuid>(
                "INSERT INTO event_log (stream_id, stream_version, event_id, event_type, schema_version, data, metadata) \
                 SELECT s, v, id, t, $7, d, m \
                 FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::jsonb[], $6::jsonb[]) \
                      WITH ORDINALITY AS e(s, v, id, t, d, m, n) \
                 ORDER BY n \
                 ON CONFLICT (stream_id, stream_version) DO NOTHING RETURNING event_id",
            )
            .bind(&streams)
            .bind(&versions)
            .bind(&ids)
            .bind(&types)
            .bind(&data)
            .bind(&metadata)
            .bind(i32::from(eventline_events::SCHEMA_VERSION))
            .fetch_all(&mut *self.tx)
            .await
        }
        .await;
        let inserted: std::collections::HashSet<uuid::Uuid> = match result {
            Ok(inserted) if inserted.len() == rows => return Ok(Vec::new()),
            Ok(inserted) => inserted.into_iter().collect(),
            Err(error) => {
                self.usable = false;
                return Err(error.into());
            }
        };
        let mut moved: Vec<StreamId> = appends
            .iter()
            .filter(|a| {
                a.events
                    .iter()
                    .any(|e| !inserted.contains(&e.event_id.as_uuid()))
            })
            .map(|a| a.stream_id.clone())
            .collect();
        moved.sort();
        moved.dedup();
        if let Err(error) = sqlx::query("ROLLBACK TO SAVEPOINT append_all")
            .execute(&mut *self.tx)
            .await
        {
            self.usable = false;
            return Err(error.into());
        }
        Ok(moved)
    }

    /// Appends events after `expected_version` (0 for a new stream), or fails with
    /// [`StoreError::Conflict`] if someone else appended first.
    ///
    /// Optimistic concurrency: no lock is taken; the unique (stream_id, stream_version) index
    /// rejects the second of two racing writers, which then reloads and decides again. Conflicts
    /// are rare (one stream per product), so this beats locking the stream on every command.
    pub async fn append(
        &mut self,
        stream_id: &StreamId,
        expected_version: i64,
        events: &[NewEvent],
        metadata: &EventMetadata,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let versions: Vec<i64> = (1..=events.len() as i64)
            .map(|i| expected_version + i)
            .collect();
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id.as_uuid()).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
        let data: Vec<serde_json::Value> = events.iter().map(|e| e.data.clone()).collect();
        let metadata = serde_json::to_value(metadata).unwrap_or_default();
        // ON CONFLICT DO NOTHING instead of a unique violation: a lost race then leaves the
        // transaction usable, so a batch re-decides just the losing command instead of rolling
        // back every command in it. A racing writer's uncommitted row makes this wait for its
        // commit, so a conflict seen here is a committed one, and a reload sees it.
        let inserted = sqlx::query(
            "INSERT INTO event_log (stream_id, stream_version, event_id, event_type, schema_version, data, metadata) \
             SELECT $1, v, id, t, $5, d, $7 FROM unnest($2::bigint[], $3::uuid[], $4::text[], $6::jsonb[]) AS e(v, id, t, d) \
             ON CONFLICT (stream_id, stream_version) DO NOTHING",
        )
        .bind(stream_id.as_str())
        .bind(&versions)
        .bind(&ids)
        .bind(&types)
        .bind(i32::from(eventline_events::SCHEMA_VERSION))
        .bind(&data)
        .bind(&metadata)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| {
            self.usable = false;
            StoreError::from_append(e, stream_id, expected_version)
        })?
        .rows_affected();
        if inserted == events.len() as u64 {
            return Ok(());
        }
        // Some rows went in and some did not (the other writer appended fewer events than
        // this one): this transaction now holds a torn append and must not commit.
        if inserted > 0 {
            self.usable = false;
        }
        Err(StoreError::Conflict {
            stream_id: stream_id.to_string(),
            expected: expected_version,
        })
    }

    /// Runs `f` once this transaction has committed; never when it rolls back or its commit
    /// fails. For what may only learn of committed state (a handler's state cache).
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(f));
    }

    /// Whether the transaction can still commit what its handlers did. False after a torn
    /// append or a failed append statement: roll back.
    pub fn usable(&self) -> bool {
        self.usable
    }

    /// Rolls back now. Dropping a transaction also rolls back, but only when its connection is
    /// next used; until then, if it appended, it holds the log's append lock, and a gap-safe
    /// reader stopped at a hole waits for it (see `log_reader`).
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// Stores the reply and the dispatched messages with the inbox row and commits everything
    /// at once. For a transaction that claimed one message.
    pub async fn commit(
        self,
        reply: &serde_json::Value,
        outputs: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let Some(&message_id) = self.claimed.first() else {
            self.tx.commit().await?;
            return Ok(());
        };
        self.commit_all(&[(message_id, reply.clone(), outputs.clone())])
            .await
    }

    /// Stores each message's reply and dispatched messages with its inbox row, in one
    /// statement, and commits everything at once.
    pub async fn commit_all(
        mut self,
        outcomes: &[(MessageId, serde_json::Value, serde_json::Value)],
    ) -> Result<(), StoreError> {
        if !self.usable {
            let _ = self.tx.rollback().await;
            return Err(StoreError::Conflict {
                stream_id: "(torn append)".into(),
                expected: 0,
            });
        }
        if !outcomes.is_empty() {
            let ids: Vec<uuid::Uuid> = outcomes.iter().map(|(id, _, _)| id.as_uuid()).collect();
            let replies: Vec<&serde_json::Value> = outcomes.iter().map(|(_, r, _)| r).collect();
            let outputs: Vec<&serde_json::Value> = outcomes.iter().map(|(_, _, o)| o).collect();
            // Planned anew each time (not a prepared statement): a cached generic plan is
            // chosen while the inbox is young and small, and its scan of the whole table then
            // stays for the connection's life, costing more with every message (it did:
            // 2,000 pages and 8 ms a batch after a minute of load). Planned with the real
            // array and the table's real size, this is a primary-key lookup per message.
            let updated = sqlx::query(
                "UPDATE processed_messages \
                 SET reply = ($3::jsonb[])[array_position($2::uuid[], message_id)], \
                     outputs = ($4::jsonb[])[array_position($2::uuid[], message_id)] \
                 WHERE consumer = $1 AND message_id = ANY($2::uuid[])",
            )
            .persistent(false)
            .bind(&self.consumer)
            .bind(&ids)
            .bind(&replies)
            .bind(&outputs)
            .execute(&mut *self.tx)
            .await;
            if let Err(error) = updated {
                let _ = self.tx.rollback().await;
                return Err(error.into());
            }
        }
        self.tx.commit().await?;
        for f in self.after_commit {
            f();
        }
        Ok(())
    }
}
