//! The database alone: how many event rows and command transactions per second PostgreSQL
//! commits when nothing else is in the way.
//!
//! Raw rows go to a scratch copy of the log (`CREATE TABLE … (LIKE event_log INCLUDING
//! ALL)`: same columns, identity, constraints and indexes, including the correlation-id
//! expression index), in the run's own database, dropped afterwards, so the end-to-end log
//! starts empty. The command transactions go through the store itself (`EventStore`,
//! `CommandTx`) on a scratch database of their own, migrated like the real one and dropped
//! afterwards: the worker's own statements, never a copy that drifts from them. Every commit
//! is durable with the server's own settings, which the report records
//! (`synchronous_commit`).
//!
//! Four shapes: single-row INSERT commits on 1 and 8 connections; the runtime's UNNEST append
//! with 100 rows per commit on 1 and 8 connections; and the worker's command transaction —
//! inbox claim, stream read, append, reply update — on 8 connections, the pool size of a
//! worker, once with one command per transaction and once with `COMMANDS_PER_BATCH` per
//! transaction through the worker's batch path (one statement per step for the whole batch).
//! The batched one is what the ceiling model charges a command on the database: it is what a
//! group-committing worker does when it is saturated.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use eventline_events::catalog::{CatalogEvent, StockReserved};
use eventline_events::values::StreamId;
use eventline_events::values::{OrderId, ProductId, Quantity};
use eventline_events::{CausationId, Contract, CorrelationId, EventId, Metadata, Reply};
use eventline_workers::runtime::SecretUrl;
use eventline_workers::runtime::store::{
    self, Append, Claim, EventMetadata, EventStore, NewEvent, StoreError,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinSet;

use crate::options::Plan;
use crate::progress::Progress;
use crate::usage::{micros_per, with_usage};

const BATCH_ROWS: usize = 100;
/// Commands per transaction in the batched command test: the worker's largest batch.
pub const COMMANDS_PER_BATCH: usize = 32;

/// One shape's result.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Rate {
    pub connections: usize,
    pub commits: u64,
    pub rows_per_commit: usize,
    pub commits_per_s: f64,
    pub rows_per_s: f64,
    /// Command transactions only: appends that lost a version race and were retried.
    pub conflicts: u64,
    /// CPU of this database's PostgreSQL processes per commit, in µs.
    pub cpu_us_per_commit: f64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DbFigures {
    pub server_version: String,
    pub synchronous_commit: String,
    pub shared_buffers: String,
    pub single_row_1: Rate,
    pub single_row_8: Rate,
    pub batched_1: Rate,
    pub batched_8: Rate,
    /// The worker's transaction per command (inbox + read + append + reply), 8 connections.
    pub command_txn_8: Rate,
    /// The same steps for `COMMANDS_PER_BATCH` commands per transaction, 8 connections
    /// (`rows_per_s` counts commands).
    pub command_batch_8: Rate,
}

const CREATE: &str = "CREATE TABLE bench_raw_log (LIKE event_log INCLUDING ALL)";
const DROP: &str = "DROP TABLE IF EXISTS bench_raw_log";

/// The inbox key and message type the command transactions claim under, as the catalog
/// worker's would.
const CONSUMER: &str = "catalog.commands";
const COMMAND_TYPE: &str = "catalog.reserve_stock";

// One event per statement; autocommit makes each its own durable commit.
const INSERT_ONE: &str = "INSERT INTO bench_raw_log \
     (stream_id, stream_version, event_id, event_type, schema_version, data, metadata) \
     VALUES ($1, $2, $3, $4, 1, $5, $6)";

// The same batch shape across many streams (one per row), as a batching writer would send.
const APPEND_MANY: &str = "INSERT INTO bench_raw_log \
     (stream_id, stream_version, event_id, event_type, schema_version, data, metadata) \
     SELECT s, v, id, t, 1, d, $6 \
     FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::jsonb[]) AS e(s, v, id, t, d)";

/// What every row carries: a `stock_reserved` body and an event's metadata, as the runtime
/// serialises them.
#[derive(Clone)]
struct Shape {
    event_type: &'static str,
    data: serde_json::Value,
    metadata: serde_json::Value,
    event_metadata: EventMetadata,
    reply: serde_json::Value,
}

impl Shape {
    /// `n` fresh events of the shape, for the store's append.
    fn events(&self, n: usize) -> Vec<NewEvent> {
        (0..n)
            .map(|_| NewEvent {
                event_id: EventId::new(),
                event_type: self.event_type,
                data: self.data.clone(),
            })
            .collect()
    }

    fn new() -> Self {
        let event = CatalogEvent::from(StockReserved {
            product_id: ProductId::parse("s1-0042".into()).expect("a valid product id"),
            order_id: OrderId::new(),
            quantity: Quantity::parse(1).expect("1 is a valid quantity"),
            unit_price: eventline_events::values::Money::ZERO,
        });
        let metadata = EventMetadata {
            correlation_id: CorrelationId::new(),
            causation_id: CausationId::new(),
            recorded_by: "catalog-1".into(),
            trace: None,
        };
        let reply = Reply::Accepted {
            stream_id: ProductId::parse("s1-0042".into())
                .expect("a valid product id")
                .stream_id(),
            events: vec![eventline_events::reply::ReplyEvent {
                event_id: EventId::new(),
                message_type: event.message_type().to_owned(),
                stream_version: 1,
                data: event.to_json(),
            }],
            result: None,
        };
        Self {
            event_type: event.message_type(),
            data: event.to_json(),
            metadata: serde_json::to_value(&metadata).unwrap_or_default(),
            event_metadata: metadata,
            reply: serde_json::to_value(&reply).unwrap_or_default(),
        }
    }
}

pub async fn measure(
    plan: &Plan,
    database_url: &SecretUrl,
    database: &str,
    progress: &Progress,
) -> anyhow::Result<DbFigures> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(database_url.expose())
        .await
        .with_context(|| format!("connecting to {database_url} for the raw database test"))?;
    sqlx::raw_sql(DROP).execute(&pool).await?;
    sqlx::raw_sql(CREATE).execute(&pool).await?;
    let setting = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
                .fetch_one(&pool)
                .await
                .unwrap_or_default()
        }
    };
    let mut figures = DbFigures {
        server_version: setting("server_version").await,
        synchronous_commit: setting("synchronous_commit").await,
        shared_buffers: setting("shared_buffers").await,
        ..DbFigures::default()
    };
    let shape = Shape::new();
    let duration = plan.raw_duration;

    let cases: [(&str, usize, usize); 4] = [
        ("single-row commits, 1 connection", 1, 1),
        ("single-row commits, 8 connections", 8, 1),
        ("100-row commits, 1 connection", 1, BATCH_ROWS),
        ("100-row commits, 8 connections", 8, BATCH_ROWS),
    ];
    for (case, (name, connections, rows)) in cases.into_iter().enumerate() {
        progress.phase(format!("raw database: {name}"));
        let (rate, usage) = with_usage(
            database,
            inserts(&pool, &shape, case, connections, rows, duration),
        )
        .await;
        let mut rate = rate?;
        rate.cpu_us_per_commit = micros_per(&usage, "postgres", rate.commits);
        progress.done(format!(
            "raw database  {name:<34} {:>8.0} rows/s ({:.0} commits/s)",
            rate.rows_per_s, rate.commits_per_s
        ));
        match case {
            0 => figures.single_row_1 = rate,
            1 => figures.single_row_8 = rate,
            2 => figures.batched_1 = rate,
            _ => figures.batched_8 = rate,
        }
    }

    // The command transactions run through the store on a scratch database of their own,
    // migrated like the real one (its triggers and indexes included), so the end-to-end log
    // starts empty and the bench measures the worker's statements rather than a copy.
    let scratch = format!("{database}_rawstore");
    let scratch_url = database_url.with_path(&scratch);
    store::create_database_if_missing(&scratch_url).await?;
    let store = EventStore::connect(&scratch_url, 8).await?;
    store.migrate().await?;

    progress.phase("raw database: command transactions, 8 connections");
    let (rate, usage) = with_usage(
        &scratch,
        command_transactions(&store, &shape, plan.products, 8, duration),
    )
    .await;
    figures.command_txn_8 = rate?;
    figures.command_txn_8.cpu_us_per_commit =
        micros_per(&usage, "postgres", figures.command_txn_8.commits);
    progress.done(format!(
        "raw database  {:<34} {:>8.0} txn/s ({} version conflicts)",
        "command transactions, 8 connections",
        figures.command_txn_8.commits_per_s,
        figures.command_txn_8.conflicts
    ));

    progress.phase("raw database: batched command transactions, 8 connections");
    let (rate, usage) = with_usage(
        &scratch,
        command_batches(&store, &shape, plan.products, 8, duration),
    )
    .await;
    figures.command_batch_8 = rate?;
    figures.command_batch_8.cpu_us_per_commit =
        micros_per(&usage, "postgres", figures.command_batch_8.commits);
    progress.done(format!(
        "raw database  {:<34} {:>8.0} cmd/s ({:.0} txn/s)",
        format!("{COMMANDS_PER_BATCH} commands/txn, 8 connections"),
        figures.command_batch_8.rows_per_s,
        figures.command_batch_8.commits_per_s,
    ));

    store.pool().close().await;
    store::drop_database(&scratch_url).await?;
    sqlx::raw_sql(DROP).execute(&pool).await?;
    pool.close().await;
    Ok(figures)
}

/// `connections` writers, each committing `rows` new events per statement to streams of its
/// own (no conflicts), for `duration`.
async fn inserts(
    pool: &PgPool,
    shape: &Shape,
    case: usize,
    connections: usize,
    rows: usize,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let shape = Arc::new(shape.clone());
    run_writers(pool, connections, rows, duration, |writer, pool, end| {
        let shape = shape.clone();
        async move {
            let mut conn = pool.acquire().await?;
            let stream = format!("catalog.product-raw{case}-{writer}");
            let mut version = 0i64;
            let mut commits = 0u64;
            while Instant::now() < end {
                if rows == 1 {
                    version += 1;
                    sqlx::query(INSERT_ONE)
                        .bind(&stream)
                        .bind(version)
                        .bind(EventId::new().as_uuid())
                        .bind(shape.event_type)
                        .bind(&shape.data)
                        .bind(&shape.metadata)
                        .execute(&mut *conn)
                        .await?;
                } else {
                    // One stream per row, as a writer batching many commands would append.
                    let streams: Vec<String> = (0..rows).map(|i| format!("{stream}-{i}")).collect();
                    version += 1;
                    let versions = vec![version; rows];
                    let ids: Vec<uuid::Uuid> =
                        (0..rows).map(|_| EventId::new().as_uuid()).collect();
                    let types = vec![shape.event_type; rows];
                    let data = vec![shape.data.clone(); rows];
                    sqlx::query(APPEND_MANY)
                        .bind(&streams)
                        .bind(&versions)
                        .bind(&ids)
                        .bind(&types)
                        .bind(&data)
                        .bind(&shape.metadata)
                        .execute(&mut *conn)
                        .await?;
                }
                commits += 1;
            }
            Ok::<_, sqlx::Error>(Tally {
                commits,
                rows: commits * rows as u64,
                conflicts: 0,
            })
        }
    })
    .await
}

/// The worker's transaction, one command each, through the store itself
/// (`EventStore::begin_command`, `CommandTx::load_stream`, `append`, `commit`), on `products`
/// streams chosen at random: the worker's own statements, never a copy of them.
async fn command_transactions(
    store: &EventStore,
    shape: &Shape,
    products: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let shape = Arc::new(shape.clone());
    run_writers(store, connections, 1, duration, |_, store, end| {
        let shape = shape.clone();
        async move {
            let (mut commits, mut conflicts) = (0u64, 0u64);
            while Instant::now() < end {
                let stream = StreamId::from_log(format!(
                    "catalog.product-rawcmd-{}",
                    fastrand::usize(..products)
                ));
                let metadata = Metadata::origin(COMMAND_TYPE);
                let Claim::New(mut tx) = store.begin_command(CONSUMER, &metadata, "bench").await?
                else {
                    continue;
                };
                let history = tx.load_stream(&stream).await?;
                let version = history.last().map_or(0, |row| row.0);
                match tx
                    .append(&stream, version, &shape.events(1), &shape.event_metadata)
                    .await
                {
                    Ok(()) => {}
                    Err(StoreError::Conflict { .. }) => {
                        tx.rollback().await?;
                        conflicts += 1;
                        continue;
                    }
                    Err(error) => return Err(error),
                }
                tx.commit(&shape.reply, &serde_json::json!([])).await?;
                commits += 1;
            }
            Ok::<_, StoreError>(Tally {
                commits,
                rows: commits,
                conflicts,
            })
        }
    })
    .await
}

/// `connections` writers, each committing transactions of `COMMANDS_PER_BATCH` commands
/// through the worker's batch path in the store (`EventStore::begin_batch`,
/// `CommandTx::load_streams_after`, `append_all`, `commit_all`): one inbox claim for all, one
/// read of what each stream gained since the writer last saw it (the worker keeps stream
/// states in memory), one append for all, one reply update for all. Each writer has streams
/// of its own, so there are no version conflicts: a ceiling, not a workload.
async fn command_batches(
    store: &EventStore,
    shape: &Shape,
    products: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let shape = Arc::new(shape.clone());
    run_writers(
        store,
        connections,
        COMMANDS_PER_BATCH,
        duration,
        |writer, store, end| {
            let shape = shape.clone();
            async move {
                let mut versions = std::collections::HashMap::<StreamId, i64>::new();
                let (mut commits, mut commands) = (0u64, 0u64);
                while Instant::now() < end {
                    let mut streams: Vec<StreamId> = (0..COMMANDS_PER_BATCH)
                        .map(|_| {
                            StreamId::from_log(format!(
                                "catalog.product-rawbatch-{writer}-{}",
                                fastrand::usize(..products.max(COMMANDS_PER_BATCH))
                            ))
                        })
                        .collect();
                    streams.sort();
                    streams.dedup();
                    let metadata: Vec<Metadata> = streams
                        .iter()
                        .map(|_| Metadata::origin(COMMAND_TYPE))
                        .collect();
                    let messages: Vec<_> = metadata.iter().map(|m| (m, None)).collect();
                    let (mut tx, _claims) = store.begin_batch(CONSUMER, &messages, "bench").await?;
                    let after: Vec<(&StreamId, i64)> = streams
                        .iter()
                        .map(|s| (s, versions.get(s).copied().unwrap_or(0)))
                        .collect();
                    let _news = tx.load_streams_after(&after).await?;
                    let events: Vec<Vec<NewEvent>> =
                        streams.iter().map(|_| shape.events(1)).collect();
                    let appends: Vec<Append<'_>> = after
                        .iter()
                        .zip(&events)
                        .map(|((stream_id, version), events)| Append {
                            stream_id,
                            expected_version: *version,
                            events,
                            metadata: &shape.event_metadata,
                        })
                        .collect();
                    tx.append_all(&appends).await?;
                    let outcomes: Vec<_> = metadata
                        .iter()
                        .map(|m| (m.message_id, shape.reply.clone(), serde_json::json!([])))
                        .collect();
                    tx.commit_all(&outcomes).await?;
                    commands += streams.len() as u64;
                    for (stream, version) in after {
                        versions.insert(stream.clone(), version + 1);
                    }
                    commits += 1;
                }
                Ok::<_, StoreError>(Tally {
                    commits,
                    rows: commands,
                    conflicts: 0,
                })
            }
        },
    )
    .await
}

/// What one writer committed.
#[derive(Default)]
struct Tally {
    commits: u64,
    /// Rows (events, or commands) those commits carried.
    rows: u64,
    /// Appends that lost a version race and were retried.
    conflicts: u64,
}

/// Runs `connections` writers at once — `writer(index, handle, deadline)`, each working until
/// the deadline `duration` from now — and sums what they committed into a rate. The handle
/// is a pool (the raw statements) or the store (the worker's transactions).
async fn run_writers<H, W, F, E>(
    handle: &H,
    connections: usize,
    rows_per_commit: usize,
    duration: Duration,
    writer: W,
) -> anyhow::Result<Rate>
where
    H: Clone,
    W: Fn(usize, H, Instant) -> F,
    F: Future<Output = Result<Tally, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let end = started + duration;
    let mut writers = JoinSet::new();
    for index in 0..connections {
        writers.spawn(writer(index, handle.clone(), end));
    }
    let mut total = Tally::default();
    while let Some(joined) = writers.join_next().await {
        let tally = joined.context("a raw database writer panicked")??;
        total.commits += tally.commits;
        total.rows += tally.rows;
        total.conflicts += tally.conflicts;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Rate {
        connections,
        commits: total.commits,
        rows_per_commit,
        commits_per_s: total.commits as f64 / seconds,
        rows_per_s: total.rows as f64 / seconds,
        conflicts: total.conflicts,
        cpu_us_per_commit: 0.0,
    })
}
