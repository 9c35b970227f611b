//! The envelope: the metadata every message carries, and how it maps onto AMQP.
//!
//! The body of a message is only its payload (JSON). Ids, type and version travel as AMQP
//! properties and headers, so that routing, tracing and dead-lettering never parse a body:
//!
//! | what            | AMQP                          |
//! |-----------------|-------------------------------|
//! | message id      | `message_id` property         |
//! | correlation id  | `correlation_id` property     |
//! | message type    | `type` property               |
//! | causation id    | `x-causation-id` header       |
//! | schema version  | `x-schema-version` header     |
//! | occurred at     | `x-occurred-at` header (RFC 3339) |
//! | reply address   | `reply_to` property (optional) |
//! | trace context   | `traceparent`, `tracestate` headers (W3C, optional; see [`crate::trace`]) |
//!
//! [`IncomingMessage`] is what a transport hands over, unvalidated; [`IncomingMessage::decode`]
//! turns it into [`Metadata`] plus a typed message or a [`DecodeError`] saying what is wrong.

use std::collections::BTreeMap;
use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ids::{CausationId, CorrelationId, MessageId};
use crate::reply_to;
use crate::trace::{TRACEPARENT_HEADER, TRACESTATE_HEADER, TraceContext};
use crate::{Contract, MAX_BODY_BYTES, SCHEMA_VERSION};

/// Header names. Property names are AMQP's own.
pub mod headers {
    /// The message id of the command or the event id that caused this message.
    pub const CAUSATION_ID: &str = "x-causation-id";
    /// The schema version of the body, an integer.
    pub const SCHEMA_VERSION: &str = "x-schema-version";
    /// When the sender created the message, RFC 3339. Informational only: no logic orders by it.
    pub const OCCURRED_AT: &str = "x-occurred-at";
    /// On events: the stream the event belongs to.
    pub const STREAM_ID: &str = "x-stream-id";
    /// On events: the event's version within its stream (1, 2, …; gap-free).
    pub const STREAM_VERSION: &str = "x-stream-version";
    /// On events: the event's position in the global log.
    pub const LOG_POSITION: &str = "x-log-position";
    /// On dead letters: why the message was dead-lettered, for a person.
    pub const DEAD_LETTER_REASON: &str = "x-eventline-reason";
    /// On dead letters: the reason as a stable code, for a program.
    pub const DEAD_LETTER_CODE: &str = "x-eventline-reason-code";
    /// On dead letters: the queue the message was taken from.
    pub const ORIGINAL_QUEUE: &str = "x-eventline-original-queue";
    /// On retries: how many times the message has been sent back for a retry.
    pub const RETRY_COUNT: &str = "x-eventline-retry-count";
    /// On replies and dead letters: which worker replica handled the message.
    pub const HANDLED_BY: &str = "x-eventline-handled-by";
}

/// The only content type eventline reads and writes.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// The validated envelope of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub message_id: MessageId,
    pub correlation_id: CorrelationId,
    pub causation_id: CausationId,
    pub message_type: String,
    pub schema_version: u16,
    pub occurred_at: OffsetDateTime,
    pub reply_to: Option<String>,
    /// The W3C trace context: which trace this message belongs to and which span sent it.
    /// The runtime replaces an incoming one with its handling span's before a handler sees it,
    /// so everything the handler causes names that span as its parent.
    pub trace: Option<TraceContext>,
}

impl Metadata {
    /// The envelope of a message that starts a new conversation: it is its own correlation
    /// and causation.
    pub fn origin(message_type: &str) -> Self {
        let message_id = MessageId::new();
        Self {
            message_id,
            correlation_id: message_id.into(),
            causation_id: message_id.into(),
            message_type: message_type.to_owned(),
            schema_version: SCHEMA_VERSION,
            occurred_at: OffsetDateTime::now_utc(),
            reply_to: None,
            trace: None,
        }
    }

    /// The envelope of a message caused by `cause`: same conversation, causation = cause.
    pub fn caused_by(cause: &Metadata, message_type: &str) -> Self {
        Self {
            message_id: MessageId::new(),
            correlation_id: cause.correlation_id,
            causation_id: cause.message_id.into(),
            message_type: message_type.to_owned(),
            schema_version: SCHEMA_VERSION,
            occurred_at: OffsetDateTime::now_utc(),
            reply_to: None,
            trace: cause.trace.clone(),
        }
    }

    /// Asks for a reply on the given queue.
    pub fn with_reply_to(mut self, queue: impl Into<String>) -> Self {
        self.reply_to = Some(queue.into());
        self
    }

    /// The headers this envelope puts on the wire, besides AMQP's own properties.
    pub fn headers(&self) -> Vec<(&'static str, HeaderValue)> {
        let mut all = vec![
            (
                headers::CAUSATION_ID,
                HeaderValue::Text(self.causation_id.to_string()),
            ),
            (
                headers::SCHEMA_VERSION,
                HeaderValue::Int(i64::from(self.schema_version)),
            ),
            (
                headers::OCCURRED_AT,
                HeaderValue::Text(self.occurred_at.format(&Rfc3339).unwrap_or_default()),
            ),
        ];
        if let Some(trace) = &self.trace {
            all.push((
                TRACEPARENT_HEADER,
                HeaderValue::Text(trace.traceparent.clone()),
            ));
            if let Some(state) = &trace.tracestate {
                all.push((TRACESTATE_HEADER, HeaderValue::Text(state.clone())));
            }
        }
        all
    }
}

/// A header value as the transport delivered it. AMQP has many integer and string types;
/// the runtime folds them into these two so that the contract does not depend on which width
/// a client library picked (pika sends Python ints as 64-bit, lapin as what you choose).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    Text(String),
    Int(i64),
    /// Any other AMQP type (tables, arrays, floats…), kept as a description for error messages.
    Other(String),
}

impl fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(text) => write!(f, "{text:?}"),
            Self::Int(int) => write!(f, "{int}"),
            Self::Other(other) => f.write_str(other),
        }
    }
}

/// A message as a transport received it: nothing validated yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IncomingMessage {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub message_type: Option<String>,
    pub content_type: Option<String>,
    pub reply_to: Option<String>,
    pub headers: BTreeMap<String, HeaderValue>,
    pub body: Vec<u8>,
}

impl IncomingMessage {
    /// Validates the envelope only (ids, type, version, size), not the body.
    ///
    /// Partial results matter: even when the body is bad, a valid envelope lets the worker
    /// reply to the sender and trace the dead letter.
    pub fn metadata(&self) -> Result<Metadata, DecodeError> {
        let message_id = parse_id(self.message_id.as_deref(), "message_id")?;
        let correlation_id = parse_id(self.correlation_id.as_deref(), "correlation_id")?;
        let causation_id = match self.headers.get(headers::CAUSATION_ID) {
            Some(HeaderValue::Text(text)) => parse_id(Some(text), headers::CAUSATION_ID)?,
            Some(other) => {
                return Err(DecodeError::InvalidHeader {
                    name: headers::CAUSATION_ID,
                    value: other.to_string(),
                    expected: "a UUID string",
                });
            }
            None => return Err(DecodeError::MissingField(headers::CAUSATION_ID)),
        };
        let message_type = match self.message_type.as_deref() {
            Some(t) if !t.is_empty() => t.to_owned(),
            _ => return Err(DecodeError::MissingField("type")),
        };
        let schema_version = match self.headers.get(headers::SCHEMA_VERSION) {
            Some(HeaderValue::Int(v)) if *v == i64::from(SCHEMA_VERSION) => SCHEMA_VERSION,
            Some(HeaderValue::Text(v)) if v.trim() == SCHEMA_VERSION.to_string() => SCHEMA_VERSION,
            Some(other) => {
                return Err(DecodeError::UnsupportedSchemaVersion {
                    found: other.to_string(),
                    supported: SCHEMA_VERSION,
                });
            }
            None => return Err(DecodeError::MissingField(headers::SCHEMA_VERSION)),
        };
        let occurred_at = match self.headers.get(headers::OCCURRED_AT) {
            Some(HeaderValue::Text(text)) => {
                OffsetDateTime::parse(text, &Rfc3339).map_err(|_| DecodeError::InvalidHeader {
                    name: headers::OCCURRED_AT,
                    value: text.chars().take(64).collect(),
                    expected: "an RFC 3339 timestamp such as 2026-01-31T12:00:00Z",
                })?
            }
            Some(other) => {
                return Err(DecodeError::InvalidHeader {
                    name: headers::OCCURRED_AT,
                    value: other.to_string(),
                    expected: "an RFC 3339 timestamp string",
                });
            }
            // Optional: it is informational, never used for ordering.
            None => OffsetDateTime::now_utc(),
        };
        // Checked here so that nothing downstream (a reply, a dead letter's rejection) can
        // publish to an address the broker would crash on (see `reply_to`).
        let reply_to = match self.reply_to.as_deref() {
            None | Some("") => None,
            Some(address) => match reply_to::classify(address) {
                Ok(_) => Some(address.to_owned()),
                Err(why) => {
                    return Err(DecodeError::InvalidReplyTo {
                        value: address.chars().take(255).collect(),
                        why,
                    });
                }
            },
        };
        Ok(Metadata {
            message_id,
            correlation_id,
            causation_id,
            message_type,
            schema_version,
            occurred_at,
            reply_to,
            trace: self.trace(),
        })
    }

    /// The trace context the sender put on the message, if it is a well-formed one.
    fn trace(&self) -> Option<TraceContext> {
        let text = |name| match self.headers.get(name) {
            Some(HeaderValue::Text(text)) => Some(text.as_str()),
            _ => None,
        };
        TraceContext::parse(text(TRACEPARENT_HEADER)?, text(TRACESTATE_HEADER))
    }

    /// Validates the size, the envelope, the content type and the body, in that order.
    pub fn decode<C: Contract>(&self) -> Result<(Metadata, C), DecodeError> {
        if self.body.len() > MAX_BODY_BYTES {
            return Err(DecodeError::BodyTooLarge {
                size: self.body.len(),
                limit: MAX_BODY_BYTES,
            });
        }
        let metadata = self.metadata()?;
        if let Some(content_type) = &self.content_type {
            let essence = content_type.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
                return Err(DecodeError::UnsupportedContentType(
                    content_type.chars().take(100).collect(),
                ));
            }
        }
        let message = C::decode(&metadata.message_type, &self.body)?;
        Ok((metadata, message))
    }
}

/// Parses a UUID id. The nil and max UUIDs are refused: they are what an uninitialised id looks
/// like, and two senders that both send one would share one inbox entry (the second would get
/// the first one's reply and have no effect).
fn parse_id<T: std::str::FromStr>(
    value: Option<&str>,
    field: &'static str,
) -> Result<T, DecodeError> {
    let value = value.ok_or(DecodeError::MissingField(field))?;
    let invalid = || DecodeError::InvalidId {
        field,
        value: value.chars().take(64).collect(),
    };
    match uuid::Uuid::parse_str(value) {
        Ok(uuid) if uuid.is_nil() || uuid.is_max() => Err(invalid()),
        _ => value.parse().map_err(|_| invalid()),
    }
}

/// A message ready to be sent: its envelope and its JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub metadata: Metadata,
    pub body: Vec<u8>,
    /// Headers beyond the envelope's own (stream position on events, reasons on dead letters).
    pub extra_headers: Vec<(&'static str, HeaderValue)>,
}

impl OutgoingMessage {
    /// Encodes a typed message. The metadata's type is taken from the message itself, so the
    /// two cannot disagree.
    pub fn new<C: Contract>(mut metadata: Metadata, message: &C) -> Self {
        metadata.message_type = message.message_type().to_owned();
        Self {
            metadata,
            body: message.to_json().to_string().into_bytes(),
            extra_headers: Vec::new(),
        }
    }

    /// Every header to put on the wire.
    pub fn headers(&self) -> Vec<(&'static str, HeaderValue)> {
        let mut all = self.metadata.headers();
        all.extend(self.extra_headers.iter().cloned());
        all
    }
}

/// Why a message could not be read. Each variant is poison: retrying cannot fix it, so the
/// message goes to the dead-letter queue with [`DecodeError::code`] and this text as reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "the message has no {0}; every message needs the message_id, correlation_id and type \
         properties and the x-causation-id and x-schema-version headers (see schema/CONTRACT.md)"
    )]
    MissingField(&'static str),
    #[error(
        "{field} is {value:?}, which is not a usable UUID (nil and max are refused); use a fresh UUID (v7 recommended) such as 01890a5d-ac96-774b-bcce-b302099a8057"
    )]
    InvalidId { field: &'static str, value: String },
    #[error("header {name} is {value}; expected {expected}")]
    InvalidHeader {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "reply_to {value:?} {why}; name a queue, or consume amq.rabbitmq.reply-to and let the broker write the name (see schema/CONTRACT.md)"
    )]
    InvalidReplyTo {
        value: String,
        why: crate::reply_to::InvalidReplyTo,
    },
    #[error("content type {0:?} is not supported; send JSON with content_type application/json")]
    UnsupportedContentType(String),
    #[error("schema version {found} is not supported; this worker reads version {supported}")]
    UnsupportedSchemaVersion { found: String, supported: u16 },
    #[error("unknown message type {message_type:?}; this queue accepts {}", expected.join(", "))]
    UnknownMessageType {
        message_type: String,
        expected: &'static [&'static str],
    },
    #[error("the body of {message_type} is invalid: {error} (see schema/json/{message_type}.json)")]
    InvalidBody {
        message_type: &'static str,
        error: String,
    },
    #[error(
        "the body is {size} bytes, over the limit of {limit}; commands are small, so split it or check the sender"
    )]
    BodyTooLarge { size: usize, limit: usize },
}

impl DecodeError {
    /// A stable machine-readable code, put in the `x-eventline-reason-code` header.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingField(_) => "missing_field",
            Self::InvalidId { .. } => "invalid_id",
            Self::InvalidHeader { .. } => "invalid_header",
            Self::InvalidReplyTo { .. } => "invalid_reply_to",
            Self::UnsupportedContentType(_) => "unsupported_content_type",
            Self::UnsupportedSchemaVersion { .. } => "unsupported_schema_version",
            Self::UnknownMessageType { .. } => "unknown_message_type",
            Self::InvalidBody { .. } => "invalid_body",
            Self::BodyTooLarge { .. } => "body_too_large",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn well_formed() -> IncomingMessage {
        let id = crate::MessageId::new().to_string();
        IncomingMessage {
            message_id: Some(id.clone()),
            correlation_id: Some(id.clone()),
            message_type: Some("catalog.restock".into()),
            headers: [
                (headers::CAUSATION_ID.to_owned(), HeaderValue::Text(id)),
                (headers::SCHEMA_VERSION.to_owned(), HeaderValue::Int(1)),
            ]
            .into(),
            ..IncomingMessage::default()
        }
    }

    #[test]
    fn nil_and_max_uuids_are_not_ids() {
        assert!(well_formed().metadata().is_ok());
        for (field, value) in [
            ("message_id", "00000000-0000-0000-0000-000000000000"),
            ("correlation_id", "ffffffff-ffff-ffff-ffff-ffffffffffff"),
        ] {
            let mut message = well_formed();
            match field {
                "message_id" => message.message_id = Some(value.into()),
                _ => message.correlation_id = Some(value.into()),
            }
            let err = message.metadata().unwrap_err();
            assert_eq!(err.code(), "invalid_id", "{field}");
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
