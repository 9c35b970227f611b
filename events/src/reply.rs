//! Replies: what a worker sends to a command's `reply_to` after the command's transaction
//! commits (or after deciding the command is poison).
//!
//! A reply is caused by its command: its `x-causation-id` header is the command's message id,
//! which is how a client matches replies to requests. A duplicate delivery of a command gets
//! the very same reply again, read from the worker's inbox.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::EventId;
use crate::values::StreamId;

/// The message type of every reply.
pub const REPLY_TYPE: &str = "eventline.reply";

/// The outcome of one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Reply {
    /// The command was applied. `events` is empty when it changed nothing because it had
    /// already been applied (idempotent commands).
    Accepted {
        stream_id: StreamId,
        events: Vec<ReplyEvent>,
        /// What the command produced besides events, e.g. a log-in's session token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<serde_json::Value>,
    },
    /// The command was refused; nothing changed.
    Rejected { reason: Rejection },
}

impl Reply {
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted { .. })
    }
}

/// One event a command recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyEvent {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub message_type: String,
    pub stream_version: u64,
    pub data: serde_json::Value,
}

/// Why a command was refused: a stable code for programs, a sentence for people that says
/// what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Rejection {
    pub code: String,
    pub message: String,
}

impl Rejection {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}
