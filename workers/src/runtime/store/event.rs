//! An event going into the log ([`NewEvent`], with its [`EventMetadata`]) and coming out of it
//! ([`RecordedEvent`]). Types and one row decoder; no statement runs here.

use eventline_events::trace::TraceContext;
use eventline_events::values::StreamId;
use eventline_events::{CausationId, CorrelationId, EventId};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::StoreError;

/// The ids an event carries in the log's `metadata` column, so its origin can be traced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub correlation_id: CorrelationId,
    /// The message id of the command that recorded this event.
    pub causation_id: CausationId,
    /// The worker replica that recorded it.
    pub recorded_by: String,
    /// The span that recorded it, so the relay, later and in another process, publishes the
    /// event in the trace of the message that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// An event about to be appended.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub event_id: EventId,
    pub event_type: &'static str,
    pub data: serde_json::Value,
}

/// An event read back from the log.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    pub position: i64,
    pub stream_id: StreamId,
    pub stream_version: i64,
    pub event_id: EventId,
    pub event_type: String,
    pub schema_version: i32,
    pub data: serde_json::Value,
    pub metadata: EventMetadata,
    pub recorded_at: time::OffsetDateTime,
}

pub(super) fn recorded_event(row: sqlx::postgres::PgRow) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.try_get("position")?;
    let metadata: serde_json::Value = row.try_get("metadata")?;
    let metadata = serde_json::from_value(metadata)
        .map_err(|e| StoreError::Corrupt(format!("metadata of position {position}: {e}")))?;
    Ok(RecordedEvent {
        position,
        stream_id: StreamId::from_log(row.try_get("stream_id")?),
        stream_version: row.try_get("stream_version")?,
        event_id: EventId::from_uuid(row.try_get("event_id")?),
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get("schema_version")?,
        data: row.try_get("data")?,
        metadata,
        recorded_at: row.try_get("recorded_at")?,
    })
}
