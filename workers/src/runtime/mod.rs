//! The runtime: everything between the wire and a service's pure domain logic.
//!
//! Reading order: [`config`] → [`broker`] (names → AMQP) → [`store`] (the log, the inbox) →
//! [`inbox`] (what a claim remembers, and for how long) → [`handler`] / [`aggregate`] (what a
//! service implements) → [`worker`] (the consume loop) → [`settle`] (the one decision: ack,
//! retry, requeue or dead-letter; `broker::carry_out` carries it out) → [`log_reader`] →
//! [`relay`] / [`projection`].
//! Observability: [`metrics`] (every metric's name and recording function), [`readiness`],
//! [`sampler`] (lag and inbox gauges from the database), [`http`] (`/metrics`, `/healthz`,
//! `/readyz`), [`presence`] (each replica's heartbeat on the broker, for the live view).

pub mod acks;
pub mod aggregate;
pub mod backoff;
pub mod broker;
pub mod config;
pub mod credential_batch;
pub mod db_roles;
pub mod handler;
pub mod http;
pub mod inbox;
pub mod log_reader;
pub mod metrics;
pub mod presence;
pub mod projection;
pub mod readiness;
pub mod redact;
pub mod relay;
pub mod reply_nodes;
pub mod sampler;
pub mod settle;
pub mod shared_connection;
pub mod shutdown;
pub mod state_cache;
pub mod store;
pub mod token;
pub mod token_cache;
pub mod worker;

pub use aggregate::{Aggregate, AggregateHandler, RejectionReason, State};
pub use config::{Config, ConfigError, RetryPolicy, SecretUrl};
pub use handler::{Context, Dispatch, Handled, Handler, HandlerError};
pub use shutdown::Shutdown;

/// Trace context across processes, shared with the client: `eventline_amqp::propagation`.
pub use eventline_amqp::propagation;
/// The span ids propagation uses when nothing exports spans: `eventline_amqp::span_ids`.
pub use eventline_amqp::span_ids;
