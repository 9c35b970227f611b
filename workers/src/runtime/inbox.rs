//! The inbox's two policies: what a claim remembers about a message (a [`Digest`] of what it
//! says), and for how long (the dedup window, enforced by one elected [`Pruner`]).
//!
//! A message id is an idempotency key: a re-send with the same id and the same content, within
//! the window, has one effect and gets the stored reply; the same id with other content is
//! refused (`idempotency_key_reused`, see `schema/CONTRACT.md`), as a payment API refuses a
//! reused idempotency key with another request. This module never decides an outcome and
//! never writes a claim: `store/claim.rs` claims, the worker replies. The pruner never deletes a row
//! itself — it calls `eventline_prune_inbox` (migration 0005), which removes only rows older
//! than the window, so the workers' role needs no DELETE on the inbox.

use std::time::Duration;

use sha2::{Digest as _, Sha256};
use sqlx::Connection;
use tracing::{debug, info, warn};

use super::config::Config;
use super::shutdown::Shutdown;
use super::store::StoreError;

/// Rows one prune statement removes at most: a short statement, holding few locks, however
/// large the backlog (the function refuses more than 10,000).
pub const PRUNE_BATCH: i32 = 1000;
/// How long the pruner waits for its own connection before it tries again later.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Advisory lock key of the pruner's leader, readable in `pg_locks` like the relay's.
const LEADER_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('eventline.inbox_pruner'))";

/// SHA-256 of what a message says: its type and its body, re-serialized canonically.
///
/// Covered: the message type and every field of the decoded body — objects with their keys in
/// sorted order, so neither key order nor whitespace nor number spelling of the sent bytes
/// matters (the body is the decoded command serialized again). Not covered: anything in the
/// transport headers (token, retry count, timestamps, reply address, correlation), so a retry
/// of the same message, with a fresh token or after a round in the retry queue, is still the
/// same message; and the value of any field named `password` (any case), whose digest would be
/// material for offline guessing, as a fast hash of a password is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of a message of `message_type` whose decoded body is `body`.
    pub fn of(message_type: &str, body: &serde_json::Value) -> Self {
        let mut hasher = Sha256::new();
        // A version tag: a change of this rule must not make old rows look like other content
        // (a new tag would; rows then compare unequal — bump it only with a migration that
        // clears the old digests).
        hasher.update(b"eventline.inbox.digest.v1\0");
        feed_text(&mut hasher, message_type);
        feed_value(&mut hasher, body);
        Self(hasher.finalize().into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest(")?;
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Length-prefixed, so that no two different values feed the same bytes.
fn feed_text(hasher: &mut Sha256, text: &str) {
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
}

fn feed_value(hasher: &mut Sha256, value: &serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Null => hasher.update(b"n"),
        Value::Bool(true) => hasher.update(b"t"),
        Value::Bool(false) => hasher.update(b"f"),
        Value::Number(number) => {
            hasher.update(b"#");
            feed_text(hasher, &number.to_string());
        }
        Value::String(text) => {
            hasher.update(b"s");
            feed_text(hasher, text);
        }
        Value::Array(items) => {
            hasher.update(b"[");
            hasher.update((items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| feed_value(hasher, item));
        }
        Value::Object(map) => {
            // Sorted here, whatever order the map keeps (serde_json's `preserve_order`
            // feature, if anything in the build turns it on, keeps insertion order).
            let mut fields: Vec<(&String, &Value)> = map.iter().collect();
            fields.sort_by(|a, b| a.0.cmp(b.0));
            hasher.update(b"{");
            hasher.update((fields.len() as u64).to_le_bytes());
            for (key, field) in fields {
                feed_text(hasher, key);
                if key.eq_ignore_ascii_case("password") {
                    hasher.update(b"*");
                } else {
                    feed_value(hasher, field);
                }
            }
        }
    }
}

/// How often the leader prunes: a tenth of the window, from 100 ms to a minute. A row then
/// outlives its window by at most a tenth of it (or a minute), so the inbox holds about
/// 1.1 windows of traffic.
pub fn prune_interval(window: Duration) -> Duration {
    (window / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Removes inbox rows older than the dedup window, in bounded batches, in one process of the
/// fleet at a time: the holder of a session advisory lock, on a connection of its own (the
/// lock dies with it). Every worker process runs one; the others stand by, connecting only to
/// ask for the lock now and then, so standing by costs no connection.
pub struct Pruner {
    config: Config,
}

impl Pruner {
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// Runs until shutdown; database failures end the leadership, and it is sought again.
    pub async fn run(self, shutdown: Shutdown) {
        let interval = prune_interval(self.config.dedup_window);
        // Standing by is cheap but not free (a connection each time): ask at most every 5 s.
        let standby = interval.max(Duration::from_secs(5));
        let mut logged_standby = false;
        while !shutdown.is_triggered() {
            // Raced with shutdown: a database that accepts and never answers would otherwise
            // hold the connect (and shutdown) forever.
            let session = tokio::select! {
                result = self.session(&shutdown, interval) => result,
                () = shutdown.triggered() => return,
            };
            let wait = match session {
                Ok(Leadership::Ended) => return,
                Ok(Leadership::Refused) => {
                    if !logged_standby {
                        debug!("another process prunes the inbox; standing by");
                        logged_standby = true;
                    }
                    standby
                }
                Err(error) => {
                    warn!(%error, "inbox pruner lost the database; trying again");
                    standby
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.triggered() => return,
            }
        }
    }

    async fn session(
        &self,
        shutdown: &Shutdown,
        interval: Duration,
    ) -> Result<Leadership, StoreError> {
        let url = &self.config.database_url;
        let connect = sqlx::PgConnection::connect(url.expose());
        let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(connected) => connected,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
        .map_err(|source| StoreError::Connect {
            url: url.to_string(),
            source,
        })?;
        let leader: bool = sqlx::query_scalar(LEADER_LOCK).fetch_one(&mut conn).await?;
        if !leader {
            let _ = conn.close().await;
            return Ok(Leadership::Refused);
        }
        info!(window = ?self.config.dedup_window, ?interval, "this process prunes the inbox");
        loop {
            let removed = prune(&mut conn, self.config.dedup_window).await?;
            if removed > 0 {
                debug!(removed, "pruned the inbox");
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shutdown.triggered() => {
                    let _ = conn.close().await;
                    return Ok(Leadership::Ended);
                }
            }
        }
    }
}

enum Leadership {
    /// Shutdown while leading.
    Ended,
    /// Another process holds the lock.
    Refused,
}

/// Removes every inbox row older than `window`, [`PRUNE_BATCH`] rows a statement (each its
/// own short transaction), and returns how many. Stops after a batch that was not full.
pub async fn prune(conn: &mut sqlx::PgConnection, window: Duration) -> Result<u64, StoreError> {
    let mut total = 0u64;
    loop {
        let removed: i32 = sqlx::query_scalar("SELECT eventline_prune_inbox($1, $2)")
            .bind(window_interval(window))
            .bind(PRUNE_BATCH)
            .fetch_one(&mut *conn)
            .await?;
        total += u64::try_from(removed).unwrap_or(0);
        if removed < PRUNE_BATCH {
            return Ok(total);
        }
    }
}

/// `window` as a PostgreSQL interval, to the microsecond.
fn window_interval(window: Duration) -> sqlx::postgres::types::PgInterval {
    sqlx::postgres::types::PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(window.as_micros()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_digest_ignores_key_order_and_covers_every_value_and_the_type() {
        let a = Digest::of(
            "catalog.restock",
            &json!({"product_id": "tea", "quantity": 2}),
        );
        let reordered = Digest::of(
            "catalog.restock",
            &serde_json::from_str(r#"{ "quantity": 2, "product_id": "tea" }"#).unwrap(),
        );
        assert_eq!(a, reordered);
        assert_ne!(
            a,
            Digest::of(
                "catalog.restock",
                &json!({"product_id": "tea", "quantity": 3})
            )
        );
        assert_ne!(
            a,
            Digest::of(
                "catalog.reserve",
                &json!({"product_id": "tea", "quantity": 2})
            )
        );
        // Length prefixes: moving text between the type and a field changes the digest.
        assert_ne!(Digest::of("ab", &json!("c")), Digest::of("a", &json!("bc")));
        assert_ne!(
            Digest::of("t", &json!([["a"], "b"])),
            Digest::of("t", &json!([["a", "b"]]))
        );
        assert_ne!(Digest::of("t", &json!(1)), Digest::of("t", &json!("1")));
    }

    #[test]
    fn the_digest_leaves_passwords_out() {
        let first = Digest::of(
            "auth.log_in",
            &json!({"email": "ann@example.com", "password": "correct horse"}),
        );
        let other = Digest::of(
            "auth.log_in",
            &json!({"email": "ann@example.com", "Password": "battery staple"}),
        );
        assert_ne!(
            first,
            Digest::of(
                "auth.log_in",
                &json!({"email": "bob@example.com", "password": "correct horse"})
            )
        );
        // Same email, another password (and key case): the same digest, so the password's
        // hash is never stored.
        let same_case = Digest::of(
            "auth.log_in",
            &json!({"email": "ann@example.com", "password": "battery staple"}),
        );
        assert_eq!(first, same_case);
        assert_ne!(first, other, "key names stay covered");
        assert!(!format!("{first:?}").contains("horse"));
    }

    #[test]
    fn the_prune_interval_is_a_tenth_of_the_window_within_bounds() {
        assert_eq!(
            prune_interval(Duration::from_secs(7 * 24 * 3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            prune_interval(Duration::from_secs(3)),
            Duration::from_millis(300)
        );
        assert_eq!(
            prune_interval(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
    }
}
