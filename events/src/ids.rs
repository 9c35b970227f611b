//! The ids every message carries, so that any message's path can be traced.
//!
//! - a **message id** names one message; redeliveries and client retries reuse it, which is
//!   what makes consumers idempotent;
//! - a **correlation id** names the whole conversation (one client request and everything it
//!   causes, across services);
//! - a **causation id** names the one message that directly caused this one. Following
//!   causation ids orders a conversation without any clock (see ARCHITECTURE.md, "no global
//!   clock").
//!
//! All are UUIDv7: unique without coordination, and roughly time-sortable for humans.

/// A UUID newtype with one wire form (a JSON string, `format: uuid`): the ids of this module,
/// `OrderId` (values) and `UserId` (auth). One definition, so they cannot drift apart.
macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize, ::schemars::JsonSchema)]
        #[serde(transparent)]
        pub struct $name(::uuid::Uuid);

        impl $name {
            /// A fresh, unique id (UUIDv7).
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self(::uuid::Uuid::now_v7())
            }

            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: ::uuid::Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> ::uuid::Uuid {
                self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                ::uuid::Uuid::parse_str(s).map(Self)
            }
        }
    };
}
// Paths are absolute so that other modules of the crate (`values`, `auth`) can use it.
pub(crate) use id_type;

id_type! {
    /// Names one message. Reused on redelivery and on a client's retry of the same command.
    MessageId
}
id_type! {
    /// Names a conversation: a client's request and everything it causes.
    CorrelationId
}
id_type! {
    /// Names the message (command or event) that directly caused this one.
    CausationId
}
id_type! {
    /// Names one event in the log. Unique across the whole log.
    EventId
}

impl From<MessageId> for CausationId {
    fn from(id: MessageId) -> Self {
        Self(id.0)
    }
}

impl From<EventId> for CausationId {
    fn from(id: EventId) -> Self {
        Self(id.0)
    }
}

impl From<MessageId> for CorrelationId {
    /// A conversation that starts with this message takes the message's id as its own.
    fn from(id: MessageId) -> Self {
        Self(id.0)
    }
}
