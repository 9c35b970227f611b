//! Inside a command's transaction, after its inbox claim: load streams, append events with
//! the expected version (all or nothing per batch), store each message's reply and dispatches
//! with its inbox row, commit. It opens no transaction of its own (`claim.rs` does).

use std::collections::HashMap;

use eventline_events::MessageId;
use eventline_events::values::StreamId;
use sqlx::{Postgres, Row, Transaction};

use super::{EventMetadata, NewEvent, StoreError};

/// One append of [`CommandTx::append_all`].
pub struct Append<'a> {
    pub stream_id: &'a StreamId,
    pub expected_version: i64,
    pub events: &'a [NewEvent],
    pub metadata: &'a EventMetadata,
}

/// One or more commands' open transaction, after their inbox claims.
pub struct CommandTx {
    pub(super) tx: Transaction<'static, Postgres>,
    pub(super) consumer: String,
    /// The message ids this transaction claimed, in the order they were given.
    pub(super) claimed: Vec<MessageId>,
    /// False once a statement left the transaction unable to commit what its handlers meant
    /// (a torn append); the caller must roll back.
    pub(super) usable: bool,
    /// Run once the commit succeeded, never otherwise (see [`CommandTx::after_commit`]).
    pub(super) after_commit: Vec<Box<dyn FnOnce() + Send>>,
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
