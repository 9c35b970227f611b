//! What a database failure means for the message that met it: a conflict, a transient fault
//! or a permanent refusal. Classified once, here, at the `?`; it never decides an ack.

use eventline_events::values::StreamId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream first. Reload and decide again.
    #[error("stream {stream_id} moved past version {expected} while this command was decided")]
    Conflict { stream_id: String, expected: i64 },
    #[error(
        "could not reach PostgreSQL at {url}: {source}. Is it running \
         (`pg_ctlcluster --skip-systemctl-redirect 15 main start`)? Set DATABASE_URL to point elsewhere."
    )]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// A stored event no longer decodes: the log and the code disagree. Not retryable.
    #[error("the log holds an event this version of the code cannot read: {0}")]
    Corrupt(String),
    /// May pass on a later attempt: the connection, a timeout, a serialization failure or a
    /// deadlock, the pool. Retried with backoff, bounded.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The database refused this command's data, and will refuse it every time: a data
    /// exception (SQLSTATE class 22) or an integrity violation (class 23) other than the
    /// append's version race, which is [`StoreError::Conflict`]. Dead-lettered at once.
    #[error("the database refused the data (SQLSTATE {sqlstate}): {message}")]
    Permanent { sqlstate: String, message: String },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Every `?` on a driver error classifies it: the class of an error is what the worker does
/// with the message (see `runtime::settle`), so it is decided once, here.
impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match permanent_sqlstate(&error) {
            Some(sqlstate) => Self::Permanent {
                message: error
                    .as_database_error()
                    .map_or_else(|| error.to_string(), |db| db.message().to_owned()),
                sqlstate,
            },
            None => Self::Database(error),
        }
    }
}

/// The SQLSTATE of an error no retry can cure: classes 22 (data exception) and 23 (integrity
/// constraint violation). Everything else — connection loss, 40001 serialization failure,
/// 40P01 deadlock, 57P01 admin shutdown, 53 insufficient resources — may pass.
fn permanent_sqlstate(error: &sqlx::Error) -> Option<String> {
    let code = error.as_database_error()?.code()?;
    (code.starts_with("22") || code.starts_with("23")).then(|| code.into_owned())
}

impl StoreError {
    /// Whether retrying the same message could ever succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent { .. } | Self::Corrupt(_))
    }

    pub(super) fn from_append(error: sqlx::Error, stream_id: &StreamId, expected: i64) -> Self {
        let conflict = error.as_database_error().is_some_and(|db| {
            db.is_unique_violation()
                && db.constraint() == Some("event_log_stream_id_stream_version_key")
        });
        if conflict {
            Self::Conflict {
                stream_id: stream_id.to_string(),
                expected,
            }
        } else {
            Self::from(error)
        }
    }
}
