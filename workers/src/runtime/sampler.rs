//! The periodic sampler: every few seconds, reads from the database what no single message
//! tells — each log reader's lag (the relay's and every projection's, in events and in
//! seconds since the oldest event it has not passed), the inbox's size — and this process's
//! pool use, and records them as gauges. Its query is also the database's readiness probe.
//!
//! It must never run per message or per scrape (a few cheap indexed reads per interval,
//! whatever the load), and it only reads: it writes no checkpoint and takes no lock.

use std::time::Duration;

use eventline_events::Namespace;
use sqlx::PgPool;

use super::shutdown::Shutdown;
use super::store::{EventStore, StoreError};
use super::{metrics, readiness};

/// How often the database is sampled.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Most events counted behind a reader: past this the gauge says "at least this many",
/// which keeps a long outage's sample as cheap as a quiet day's.
const LAG_COUNT_CAP: i64 = 1_000_000;
/// The readiness component this sampler reports under.
pub const DATABASE_COMPONENT: &str = "database";
/// The readiness component for the relay's lag.
pub const RELAY_LAG_COMPONENT: &str = "relay lag";

/// One reader's position and how far behind the log's committed events it is.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ReaderLag {
    /// `relay`, or a projection's checkpoint name (`projection.catalog_products`).
    pub reader: String,
    pub position: i64,
    /// Committed events after `position` (capped at a million).
    pub events: i64,
    /// Age of the oldest of them, in seconds; 0 when caught up.
    pub seconds: f64,
}

/// What one sample found.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Sample {
    pub readers: Vec<ReaderLag>,
    /// `None` for a login that may not read the inbox: the relay's (it has none of its own).
    pub inbox_rows: Option<i64>,
}

/// What the sampler watches, and when the relay counts as stalled.
pub struct Sampler {
    pub namespace: Namespace,
    pub store: EventStore,
    /// In the relay's process: the relay is not ready while its oldest unpublished event is
    /// older than this. `None` elsewhere (a stalled relay does not make a worker unready).
    pub relay_stall: Option<Duration>,
}

impl Sampler {
    /// Samples every [`INTERVAL`] until shutdown.
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            self.sample_once().await;
            tokio::select! {
                () = tokio::time::sleep(INTERVAL) => {}
                () = shutdown.triggered() => break,
            }
        }
        readiness::remove(&self.namespace, DATABASE_COMPONENT);
        readiness::remove(&self.namespace, RELAY_LAG_COMPONENT);
    }

    async fn sample_once(&self) {
        let pool = self.store.pool();
        let idle = pool.num_idle();
        metrics::db_pool(
            &self.namespace,
            (pool.size() as usize).saturating_sub(idle),
            idle,
        );
        match sample(pool).await {
            Ok(sample) => {
                readiness::report(&self.namespace, DATABASE_COMPONENT, true, "answering");
                for lag in &sample.readers {
                    metrics::reader_lag(&self.namespace, &lag.reader, lag.events, lag.seconds);
                }
                if let Some(rows) = sample.inbox_rows {
                    metrics::inbox_rows(&self.namespace, rows);
                }
                if let Some(threshold) = self.relay_stall {
                    let relay = sample.readers.iter().find(|r| r.reader == RELAY_READER);
                    let behind = relay.map_or(0.0, |r| r.seconds);
                    let stalled = behind > threshold.as_secs_f64();
                    let detail = if stalled {
                        format!(
                            "the oldest unpublished event is {behind:.1} s old (threshold {threshold:?})"
                        )
                    } else {
                        format!("{:.1} s behind", behind)
                    };
                    readiness::report(&self.namespace, RELAY_LAG_COMPONENT, !stalled, detail);
                }
            }
            Err(error) => {
                readiness::report(
                    &self.namespace,
                    DATABASE_COMPONENT,
                    false,
                    error.to_string(),
                );
            }
        }
    }
}

/// The relay's checkpoint name (as `relay::CHECKPOINT`; repeated here so that sampling does
/// not depend on the relay's module).
const RELAY_READER: &str = "relay";

// Per reader: the events committed after its checkpoint (an index range on the primary key,
// capped) and the age of the first of them. The relay is listed even before its first
// checkpoint (at 0): a relay that never ran is the most behind of all. Plain reads at READ
// COMMITTED: an uncommitted event is not yet something a reader could have passed.
const READERS: &str = "\
    WITH readers AS ( \
        SELECT name, position FROM checkpoints \
        UNION ALL SELECT 'relay', 0 WHERE NOT EXISTS (SELECT 1 FROM checkpoints WHERE name = 'relay') \
    ) \
    SELECT r.name, r.position, \
        (SELECT count(*) FROM (SELECT 1 FROM event_log e WHERE e.position > r.position LIMIT $1) behind), \
        coalesce((SELECT extract(epoch FROM now() - e.recorded_at)::float8 FROM event_log e \
                  WHERE e.position > r.position ORDER BY e.position LIMIT 1), 0) \
    FROM readers r ORDER BY r.name";

// Exact while the inbox is small; past the threshold, the planner's estimate (kept by
// autovacuum's ANALYZE), because counting millions of rows every interval in every process
// would cost more than the figure is worth. `reltuples` is -1 before the first ANALYZE.
const INBOX: &str = "\
    SELECT CASE WHEN c.reltuples > 100000 THEN c.reltuples::bigint \
                ELSE (SELECT count(*) FROM processed_messages) END \
    FROM pg_class c WHERE c.oid = 'processed_messages'::regclass";

// Asked apart from INBOX: PostgreSQL checks a statement's table privileges before it runs
// any of it, so a CASE around INBOX's count would still fail for a login without SELECT.
const MAY_READ_INBOX: &str = "SELECT has_table_privilege('processed_messages', 'SELECT')";

/// One sample of the database, for the sampler and for `eventline status`. Works with any
/// login that may read the log: the relay's may not read the inbox, so its sample has none
/// (before, the relay's sampler failed every time and the relay was never ready).
pub async fn sample(pool: &PgPool) -> Result<Sample, StoreError> {
    let rows: Vec<(String, i64, i64, f64)> = sqlx::query_as(READERS)
        .bind(LAG_COUNT_CAP)
        .fetch_all(pool)
        .await?;
    let may_read_inbox: bool = sqlx::query_scalar(MAY_READ_INBOX).fetch_one(pool).await?;
    let inbox_rows = if may_read_inbox {
        Some(sqlx::query_scalar(INBOX).fetch_one(pool).await?)
    } else {
        None
    };
    Ok(Sample {
        readers: rows
            .into_iter()
            .map(|(reader, position, events, seconds)| ReaderLag {
                reader,
                position,
                events,
                seconds: seconds.max(0.0),
            })
            .collect(),
        inbox_rows,
    })
}
