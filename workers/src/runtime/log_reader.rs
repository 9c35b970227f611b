//! Reads the log in position order without ever skipping an event that may still commit.
//!
//! Positions come from an identity sequence, drawn when a row is inserted, but transactions
//! commit in any order: position 41 can become visible after 42, or never (rolled back). A
//! reader that simply remembers "the highest position I saw" skips 41 forever. So this reader
//! hands out only the *contiguous* prefix after its checkpoint, and at a hole it waits until
//! the hole is provably permanent:
//!
//! 1. Reading in one statement (one snapshot), it sees holes below the highest visible
//!    position `up_to`, and records `horizon = xmax` of that snapshot. Whoever drew a missing
//!    `p < up_to` drew it before `up_to`'s writer drew its number, and had a transaction id
//!    before that (the store writes the inbox row first — see [`super::store`]), so that
//!    transaction's id < horizon.
//! 2. Once a later snapshot has `xmin >= horizon`, every transaction below the horizon has
//!    ended. Whatever is still missing up to `up_to` in that same snapshot was never written
//!    (rolled back, or drawn for a row that lost a version race): skip it, all at once.
//!
//! Usually a hole closes within a millisecond (the writer commits); rolled-back holes cost
//! one extra poll per batch, not per hole. Per-stream order is implied: version n+1 is drawn
//! after version n committed.

use sqlx::PgConnection;

use super::store::{EventStore, RecordedEvent, StoreError};

/// Missing positions seen in one snapshot: everything missing up to `up_to` was drawn before
/// that snapshot, by transactions below `horizon`.
/// How soon a reader stopped at a hole looks again.
pub const HOLE_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Holes {
    up_to: i64,
    horizon: i64,
}

/// A cursor over the log that yields each committed event exactly once, in position order.
#[derive(Debug)]
pub struct LogReader {
    position: i64,
    holes: Option<Holes>,
    batch_size: i64,
}

impl LogReader {
    /// A reader that resumes after `position` (0 reads from the start).
    pub fn after(position: i64, batch_size: i64) -> Self {
        Self {
            position,
            holes: None,
            batch_size,
        }
    }

    /// The position of the last event handed out.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Whether the reader is stopped at a hole that may still be filled.
    pub fn waiting_on_hole(&self) -> bool {
        self.holes.is_some()
    }

    /// The next committed events, possibly none. Never returns an event twice, and never
    /// returns an event before one with a lower position that may still commit.
    pub async fn next_batch(
        &mut self,
        conn: &mut PgConnection,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // One statement, one snapshot: the horizon check and the rows come from the same
        // snapshot, which is what makes the check sound.
        let (rows, snapshot) =
            EventStore::read_log_with_snapshot(conn, self.position, self.batch_size).await?;
        Ok(match snapshot {
            Some((xmin, xmax)) => self.take_contiguous(rows, xmin, xmax),
            None => Vec::new(),
        })
    }

    fn take_contiguous(
        &mut self,
        rows: Vec<RecordedEvent>,
        xmin: i64,
        xmax: i64,
    ) -> Vec<RecordedEvent> {
        let last_seen = rows.last().map_or(self.position, |r| r.position);
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let expected = self.position + 1;
            if row.position != expected {
                match self.holes {
                    // Every transaction that could fill the gap has ended and the gap lies
                    // within what that earlier snapshot covered: the numbers were burnt by
                    // rollbacks. Skip them all at once.
                    Some(holes) if xmin >= holes.horizon && row.position - 1 <= holes.up_to => {
                        tracing::trace!(
                            from = expected,
                            to = row.position - 1,
                            "skipping rolled-back positions"
                        );
                    }
                    Some(holes) if row.position - 1 <= holes.up_to => break,
                    _ => {
                        self.holes = Some(Holes {
                            up_to: last_seen,
                            horizon: xmax,
                        });
                        break;
                    }
                }
            }
            self.position = row.position;
            if self.holes.is_some_and(|h| self.position >= h.up_to) {
                self.holes = None;
            }
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
            recorded_at: time::OffsetDateTime::UNIX_EPOCH,
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
    fn many_rolled_back_holes_in_one_batch_are_skipped_in_one_step() {
        let mut reader = LogReader::after(0, 100);
        assert!(
            reader
                .take_contiguous(vec![event(2), event(4), event(6)], 10, 20)
                .is_empty()
        );
        let got = reader.take_contiguous(vec![event(2), event(4), event(6), event(8)], 20, 30);
        // 1, 3, 5 were covered by the first snapshot and are skipped; 7 was not: wait for it.
        assert_eq!(positions(&got), [2, 4, 6]);
        assert!(reader.waiting_on_hole());
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
