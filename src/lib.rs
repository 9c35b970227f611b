//! eventline's client: the seed's Client 1 and Client 2.
//!
//! A [`Client`] talks only to RabbitMQ. It publishes commands (with publisher confirms, so a
//! returned `Ok` means the broker has the command), waits for replies on its own exclusive
//! queue, tails the events exchange, and reads dead-letter queues.
//!
//! The `eventline` binary (src/bin/eventline/, one file per subcommand) wraps this library
//! and also starts workers, the relay and the demo, so one command runs any part of the
//! system.

pub mod broker_users;
pub mod chaos;
pub mod client;
pub mod demo;
pub mod logging;
pub mod projections;
pub mod settled;
pub mod status;
pub mod supervisor;
pub mod trace;

pub use client::{
    Client, ClientError, DeadLetter, EventMessage, OrderOutcome, Redrive, Refused, Selection,
};
