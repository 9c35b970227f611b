//! What a service implements: a pure decision function over one stream.
//!
//! `decide` and `apply` do no I/O, so a service's rules are tested as plain functions
//! (given events, when command, then events or rejection) and the runtime owns every side
//! effect: loading, appending, retrying, replying.

use eventline_events::values::StreamId;
use eventline_events::{Contract, Service};

/// A consistency boundary: one stream, its state, and the rules for changing it.
pub trait Aggregate: Default + Send + Sync + 'static {
    type Command: Contract + Send + Sync + 'static;
    type Event: Contract + Send + Sync + 'static;
    type Rejection: RejectionReason;

    /// The service whose command queue feeds this aggregate.
    const SERVICE: Service;

    /// The stream a command is about.
    fn stream_id(command: &Self::Command) -> StreamId;

    /// The events that carrying out `command` records, or why it cannot be carried out.
    /// An empty list means "already done": the command is accepted and nothing changes.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// The state after `event`. Never fails: events are facts that already happened.
    fn apply(&mut self, event: &Self::Event);
}

/// A domain rejection: a normal outcome, reported to the sender with a stable code.
pub trait RejectionReason: std::error::Error + Send + Sync + 'static {
    fn code(&self) -> &'static str;
}
