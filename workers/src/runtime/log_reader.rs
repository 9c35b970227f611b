//! Reads the log in position order without ever skipping an event that may still commit,
//! and without waiting on any transaction that is not one of the log's own writers.
//!
//! Positions come from an identity sequence, drawn when a row is inserted, but transactions
//! commit in any order: position 41 can become visible after 42, or never (rolled back, or
//! drawn for a row that lost a version race). A reader that simply remembers "the highest
//! position I saw" skips 41 forever. So this reader hands out only the *contiguous* prefix
//! after its checkpoint, and at a hole it waits until the hole is provably permanent:
//!
//! 1. Every insert into `event_log` takes the log's *shared* append lock, held to the end of
//!    its transaction, before it draws a position (a statement trigger, migration 0004: no
//!    writer can skip it).
//! 2. A snapshot `S` shows a hole below its highest visible position `up_to`. Whoever drew a
//!    missing position drew it before `up_to` was drawn, hence before `S`, while holding the
//!    lock. Asked *after* `S`, the set of lock holders (`event_log_writers()`, from
//!    `pg_locks`) therefore contains that writer, or it has already ended.
//! 3. Once every transaction of that set is gone (committed or rolled back; PostgreSQL
//!    releases locks only after a commit is visible), a fresh snapshot shows all they
//!    committed. What is still missing up to `up_to` never will be: skip it, all at once.
//!    Anyone who takes the lock later draws a position above `up_to`.
//!
//! Guarantee: no event is ever skipped or handed out twice, and a committed event waits only
//! for the log's own writers that were in flight when its hole was seen. Cost: one shared
//! lock per append statement, and one `pg_locks` read per poll while stopped at a hole.
//! Usually a hole closes within a millisecond (the writer commits); rolled-back holes cost
//! a poll or two per batch, not per hole. Per-stream order is implied: version n+1 is drawn
//! after version n committed. A transaction elsewhere on the server (another database, an
//! operator's idle `psql`, `pg_dump`) never delays this reader: it holds no append lock here.

use sqlx::PgConnection;

use super::store::{EventStore, RecordedEvent, StoreError};

/// How soon a reader stopped at a hole looks again.
pub const HOLE_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// Missing positions seen in one snapshot, up to `up_to`, and who may still fill them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holes {
    up_to: i64,
    writers: Writers,
}

/// The log's writers a hole is waiting on.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Writers {
    /// Not asked yet: ask after the snapshot that showed the hole.
    Unknown,
    /// These held the append lock after that snapshot; wait until none of them does.
    Waiting(Vec<String>),
    /// All of them ended before the latest check: the next snapshot shows all they committed.
    Gone,
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
        // At most twice: once the writers a hole waits on are gone, read again at once with a
        // snapshot taken after that check.
        for _ in 0..2 {
            let rows = EventStore::read_log(conn, self.position, self.batch_size).await?;
            let out = self.take_contiguous(rows);
            if !out.is_empty() || self.holes.is_none() {
                return Ok(out);
            }
            // Stopped at a hole: who may still fill it? Asked after the read above.
            let holders = EventStore::log_writers(conn).await?;
            if !self.writers_checked(&holders) {
                return Ok(out);
            }
        }
        Ok(Vec::new())
    }

    /// Records which writers hold the append lock now; true once every writer the current
    /// holes wait on has ended.
    fn writers_checked(&mut self, holders: &[String]) -> bool {
        let Some(holes) = &mut self.holes else {
            return false;
        };
        let waiting = match std::mem::replace(&mut holes.writers, Writers::Unknown) {
            Writers::Unknown => holders.to_vec(),
            Writers::Waiting(mut waiting) => {
                waiting.retain(|w| holders.contains(w));
                waiting
            }
            Writers::Gone => Vec::new(),
        };
        holes.writers = if waiting.is_empty() {
            Writers::Gone
        } else {
            Writers::Waiting(waiting)
        };
        holes.writers == Writers::Gone
    }

    fn take_contiguous(&mut self, rows: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
        let last_seen = rows.last().map_or(self.position, |r| r.position);
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let expected = self.position + 1;
            if row.position != expected {
                let new_holes = Holes {
                    up_to: last_seen,
                    writers: Writers::Unknown,
                };
                match &self.holes {
                    // Every writer that could fill the gap has ended, and the gap lies within
                    // what the snapshot that showed it covered: the numbers were burnt.
                    Some(holes) if holes.writers == Writers::Gone => {
                        if row.position - 1 > holes.up_to {
                            // Burnt up to `up_to`; what lies above is a newer hole.
                            self.position = holes.up_to;
                            self.holes = Some(new_holes);
                            break;
                        }
                        tracing::trace!(
                            from = expected,
                            to = row.position - 1,
                            "skipping burnt positions"
                        );
                    }
                    Some(_) => break,
                    None => {
                        self.holes = Some(new_holes);
                        break;
                    }
                }
            }
            self.position = row.position;
            if self
                .holes
                .as_ref()
                .is_some_and(|h| self.position >= h.up_to)
            {
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
                trace: None,
            },
            recorded_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn events(positions: &[i64]) -> Vec<RecordedEvent> {
        positions.iter().copied().map(event).collect()
    }

    fn positions(events: &[RecordedEvent]) -> Vec<i64> {
        events.iter().map(|e| e.position).collect()
    }

    fn writers(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn stops_at_a_hole_until_every_writer_seen_after_it_has_ended() {
        let mut reader = LogReader::after(0, 100);
        // 1, 2 committed; 3 in flight (writer 3/1); 4 committed.
        assert_eq!(
            positions(&reader.take_contiguous(events(&[1, 2, 4]))),
            [1, 2]
        );
        assert!(!reader.writers_checked(&writers(&["3/1", "5/9"])));
        // 5/9 ended, 3/1 still holds the lock: keep waiting.
        assert!(reader.take_contiguous(events(&[4])).is_empty());
        assert!(!reader.writers_checked(&writers(&["3/1", "7/2"])));
        // 3 committed meanwhile: it comes first, then 4.
        assert_eq!(positions(&reader.take_contiguous(events(&[3, 4]))), [3, 4]);
        assert!(!reader.waiting_on_hole());
    }

    #[test]
    fn a_writer_that_started_after_the_hole_was_seen_is_not_waited_for() {
        let mut reader = LogReader::after(0, 100);
        assert!(reader.take_contiguous(events(&[2])).is_empty());
        assert!(!reader.writers_checked(&writers(&["3/1"])));
        // 3/1 ended; 4/4 is new (it draws positions above 2): the hole is permanent.
        assert!(reader.writers_checked(&writers(&["4/4"])));
        assert_eq!(positions(&reader.take_contiguous(events(&[2, 3]))), [2, 3]);
        assert_eq!(reader.position(), 3);
    }

    #[test]
    fn many_burnt_holes_in_one_batch_are_skipped_in_one_step() {
        let mut reader = LogReader::after(0, 100);
        assert!(reader.take_contiguous(events(&[2, 4, 6])).is_empty());
        // No writer holds the lock: 1, 3, 5 were burnt.
        assert!(reader.writers_checked(&[]));
        let got = reader.take_contiguous(events(&[2, 4, 6, 8]));
        // 7 was not covered by the snapshot that showed the holes: wait for it.
        assert_eq!(positions(&got), [2, 4, 6]);
        assert!(reader.waiting_on_hole());
        assert!(!reader.writers_checked(&writers(&["9/9"])));
        assert!(reader.take_contiguous(events(&[8])).is_empty());
    }

    #[test]
    fn a_burnt_gap_that_reaches_past_the_snapshot_is_skipped_only_as_far_as_it_covered() {
        let mut reader = LogReader::after(0, 100);
        assert!(reader.take_contiguous(events(&[3])).is_empty());
        assert!(reader.writers_checked(&[]));
        // Now 3 is gone from the batch's start (a smaller batch would not do this, but a
        // reader must not trust the batch): 1..=3 burnt or handed out, 4..=5 unknown.
        assert!(reader.take_contiguous(events(&[6])).is_empty());
        assert_eq!(reader.position(), 3);
        assert!(reader.waiting_on_hole());
    }
}
