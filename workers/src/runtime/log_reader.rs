//! Reads the log in position order without ever skipping an event that may still commit.
//!
//! Positions come from an identity sequence, drawn when a row is inserted, but transactions
//! commit in any order: position 41 can become visible after 42, or never (rolled back). A
//! reader that simply remembers "the highest position I saw" skips 41 forever. So this reader
//! hands out only the *contiguous* prefix after its checkpoint, and at a hole it waits until
//! the hole is provably permanent:
//!
//! 1. Reading in a REPEATABLE READ transaction, it sees the hole at `p` with a later row
//!    visible, and records `horizon = xmax` of that snapshot. Whoever drew `p` drew it before
//!    the later row's writer drew its number, and had a transaction id before that (the store
//!    writes the inbox row first — see [`super::store`]), so that transaction's id < horizon.
//! 2. Once a later snapshot has `xmin >= horizon`, every transaction below the horizon has
//!    ended. If `p` is still not visible in that same snapshot, it was rolled back: skip it.
//!
//! Usually a hole closes within a millisecond (the writer commits); rolled-back holes cost
//! one extra poll. Per-stream order is implied: version n+1 is drawn after version n committed.

use sqlx::{Connection, PgConnection};

use super::store::{EventStore, RecordedEvent, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hole {
    position: i64,
    horizon: i64,
}

/// A cursor over the log that yields each committed event exactly once, in position order.
#[derive(Debug)]
pub struct LogReader {
    position: i64,
    hole: Option<Hole>,
    batch_size: i64,
}

impl LogReader {
    /// A reader that resumes after `position` (0 reads from the start).
    pub fn after(position: i64, batch_size: i64) -> Self {
        Self {
            position,
            hole: None,
            batch_size,
        }
    }

    /// The position of the last event handed out.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Whether the reader is stopped at a hole that may still be filled.
    pub fn waiting_on_hole(&self) -> bool {
        self.hole.is_some()
    }

    /// The next committed events, possibly none. Never returns an event twice, and never
    /// returns an event before one with a lower position that may still commit.
    pub async fn next_batch(
        &mut self,
        conn: &mut PgConnection,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut tx = conn.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        // Same snapshot for the horizon check and the rows: that is what makes the check sound.
        let (xmin, xmax): (i64, i64) = sqlx::query_as(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, \
                    pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
        )
        .fetch_one(&mut *tx)
        .await?;
        let rows = EventStore::read_log(&mut tx, self.position, self.batch_size).await?;
        tx.commit().await?;
        Ok(self.take_contiguous(rows, xmin, xmax))
    }

    fn take_contiguous(
        &mut self,
        rows: Vec<RecordedEvent>,
        xmin: i64,
        xmax: i64,
    ) -> Vec<RecordedEvent> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let expected = self.position + 1;
            if row.position != expected {
                match self.hole {
                    Some(hole) if hole.position == expected && xmin >= hole.horizon => {
                        tracing::debug!(
                            from = expected,
                            to = row.position - 1,
                            "skipping rolled-back positions"
                        );
                    }
                    Some(hole) if hole.position == expected => break,
                    _ => {
                        self.hole = Some(Hole {
                            position: expected,
                            horizon: xmax,
                        });
                        break;
                    }
                }
            }
            self.hole = None;
            self.position = row.position;
            out.push(row);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::store::EventMetadata;
    use eventline_events::values::StreamId;
    use eventline_events::{CausationId, CorrelationId, EventId};

    fn event(position: i64) -> RecordedEvent {
        RecordedEvent {
            position,
            stream_id: StreamId::from_log(format!("s-{position}")),
            stream_version: 1,
            event_id: EventId::new(),
            event_type: "t".into(),
            schema_version: 1,
            data: serde_json::Value::Null,
            metadata: EventMetadata {
                correlation_id: CorrelationId::new(),
                causation_id: CausationId::new(),
                recorded_by: "test".into(),
            },
        }
    }

    fn positions(events: &[RecordedEvent]) -> Vec<i64> {
        events.iter().map(|e| e.position).collect()
    }

    #[test]
    fn stops_at_a_hole_until_every_older_transaction_has_ended() {
        let mut reader = LogReader::after(0, 100);
        // 1, 2 committed; 3 in flight; 4 committed. Snapshot: xmin 10, xmax 20.
        let got = reader.take_contiguous(vec![event(1), event(2), event(4)], 10, 20);
        assert_eq!(positions(&got), [1, 2]);
        // Transactions below 20 still running (xmin 15): keep waiting.
        let got = reader.take_contiguous(vec![event(4)], 15, 25);
        assert!(got.is_empty());
        // 3 committed meanwhile: it comes first, then 4.
        let got = reader.take_contiguous(vec![event(3), event(4)], 15, 25);
        assert_eq!(positions(&got), [3, 4]);
    }

    #[test]
    fn skips_a_hole_once_its_writer_has_provably_ended() {
        let mut reader = LogReader::after(0, 100);
        assert_eq!(
            positions(&reader.take_contiguous(vec![event(2)], 10, 20)),
            Vec::<i64>::new()
        );
        // Every transaction below the horizon (20) ended and 1 is still absent: rolled back.
        assert_eq!(
            positions(&reader.take_contiguous(vec![event(2), event(3)], 20, 30)),
            [2, 3]
        );
        assert_eq!(reader.position(), 3);
    }
}
