//! eventline's broker side, shared by the client and the workers: [`broker`] (connecting,
//! declaring the topology, publishing with confirms, consuming, and every AMQP property and
//! field table), [`SecretUrl`] (a URL that never shows its password), [`credential`]
//! (signing the service credentials of saga steps and their replies), [`propagation`] (a
//! message's W3C trace context ↔ its `tracing` span) and [`span_ids`] (the span ids it uses
//! when nothing exports spans).
//!
//! It holds what an application that embeds the client needs and nothing more: no database,
//! no HTTP server, no metrics, so the client crate pulls none of the workers' dependencies.
//! It must never decide what happens to a message (the workers' `settle` does).

pub mod broker;
pub mod credential;
pub mod propagation;
mod secret_url;
pub mod span_ids;

pub use secret_url::SecretUrl;
