//! Opening a transaction by claiming message ids in the inbox: the claim is every
//! transaction's first write, so a message id has at most one effect. Queries open a read-only
//! transaction that claims nothing.

use eventline_events::Metadata;

use super::{CommandTx, EventStore, StoreError};
use crate::runtime::inbox::Digest;

impl EventStore {
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
    /// any log position is drawn (see [`crate::runtime::log_reader`]).
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
