//! A reader's position in the log (relay, projections), which only moves forward.

use super::{EventStore, StoreError};

impl EventStore {
    pub async fn checkpoint(&self, name: &str) -> Result<i64, StoreError> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(position.unwrap_or(0))
    }
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
