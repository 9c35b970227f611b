//! eventline's client: the seed's Client 1 and Client 2.
//!
//! A [`Client`] talks only to RabbitMQ. It publishes commands (with publisher confirms, so a
//! returned `Ok` means the broker has the command), waits for replies on its own exclusive
//! queue, tails the events exchange, and reads dead-letter queues.
//!
//! The `eventline` binary (src/bin/eventline/, one file per subcommand) wraps this library
//! and also starts workers, the relay and the demo, so one command runs any part of the
//! system. The operator tooling it uses (demo, chaos, supervisor, status, trace…) is behind
//! the default `operator` feature: with `default-features = false` this crate is the client
//! alone, with no `anyhow` and nothing that prints, and none of the workers' crates (it reaches
//! the broker through `eventline-amqp`; tidy checks the dependency tree).

pub mod client;

// Operator tooling: prints, uses anyhow and reads the database. Off without `operator`.
#[cfg(feature = "operator")]
pub mod broker_users;
#[cfg(feature = "operator")]
pub mod chaos;
#[cfg(feature = "operator")]
pub mod dashboard;
#[cfg(feature = "operator")]
pub mod demo;
#[cfg(feature = "operator")]
pub mod lessons;
#[cfg(feature = "operator")]
pub mod logging;
#[cfg(feature = "operator")]
pub mod projections;
#[cfg(feature = "operator")]
pub mod settled;
#[cfg(feature = "operator")]
pub mod status;
#[cfg(feature = "operator")]
pub mod supervisor;
#[cfg(feature = "operator")]
pub mod trace;

pub use client::{
    Client, ClientError, DeadLetter, EventMessage, OrderOutcome, Redrive, Refused, Selection,
};
