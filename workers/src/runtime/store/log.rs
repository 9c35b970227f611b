//! Reading the log in position order, and naming the transactions that may still commit into
//! it. The gap-safe reader on top of these is `runtime::log_reader`; nothing here waits.

use super::event::recorded_event;
use super::{EventStore, RecordedEvent, StoreError};

impl EventStore {
    /// The log from `after` on, in position order, at most `limit` rows, in one statement
    /// (one snapshot). What is missing below the last row may still commit: read it through
    /// [`crate::runtime::log_reader::LogReader`], which knows when a hole is permanent.
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
}
