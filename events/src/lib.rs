//! The wire contract of eventline: what travels between clients, workers and the relay.
//!
//! Everything a process needs to *talk* lives here — ids, the envelope's metadata, typed
//! commands, events and replies for each service, and the names of every exchange and queue
//! ([`topology`]). Nothing here does I/O or knows about tokio, lapin or sqlx: the runtime
//! translates [`envelope::OutgoingMessage`] / [`envelope::IncomingMessage`] to AMQP frames in
//! one place, and any client in any language can do the same from `schema/CONTRACT.md`.
//!
//! Inputs are parsed once, at decode time, into types that cannot hold invalid values
//! ([`values`]); code behind the decoder never re-validates.

#[macro_use]
mod macros;

pub mod auth;
pub mod catalog;
pub mod codes;
pub mod envelope;
pub mod ids;
pub mod orders;
pub mod payments;
pub mod reply;
pub mod reply_to;
pub mod schema;
pub mod topology;
pub mod trace;
pub mod values;

pub use envelope::{DecodeError, IncomingMessage, Metadata, OutgoingMessage};
pub use ids::{CausationId, CorrelationId, EventId, MessageId};
pub use reply::{Rejection, Reply};
pub use topology::{Namespace, Service, Topology};

/// A family of messages (one service's commands, or its events) that can be decoded from its
/// message-type string and a JSON body, and encoded back.
///
/// Implemented by the `wire_enum!` macro so that each type's wire name is written exactly once.
pub trait Contract: Sized {
    /// Every message type of this family, as it appears in the AMQP `type` property.
    const MESSAGE_TYPES: &'static [&'static str];

    /// The wire name of this message, e.g. `catalog.reserve_stock`.
    fn message_type(&self) -> &'static str;

    /// Parses a body of the given message type. Fails with a reason a sender can act on.
    fn decode(message_type: &str, body: &[u8]) -> Result<Self, DecodeError>;

    /// Parses an already-parsed JSON body, e.g. one read back from the event log.
    fn from_json(message_type: &str, body: serde_json::Value) -> Result<Self, DecodeError>;

    /// The JSON body of this message.
    fn to_json(&self) -> serde_json::Value;

    /// The JSON Schema of each message type of this family, keyed by wire name.
    fn json_schemas() -> Vec<(&'static str, serde_json::Value)>;
}

/// Parses a body that must be a JSON object.
///
/// serde's derived structs also read a JSON array, by field position (`["tea", 1]` would be a
/// restock); the contract says "object", and a positional body breaks silently when a field is
/// added, so anything else is refused before serde sees it.
fn decode_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    use serde::de::Error;
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(body),
        Some(b'[') => Err(serde_json::Error::custom(
            "the body is a JSON array; send a JSON object",
        )),
        _ => serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
            .and_then(|_| Err(serde_json::Error::custom("the body must be a JSON object"))),
    }
}

/// The schema version every message type is currently at. A message with another version is
/// poison: it goes to the dead-letter queue with a reason naming the supported version.
pub const SCHEMA_VERSION: u16 = 1;

/// Bodies larger than this are poison. Commands are small; a large body is a bug or an attack.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
