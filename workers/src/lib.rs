//! eventline's workers: the runtime every service runs on, and the services themselves.
//!
//! [`runtime`] does all I/O — broker topology, the consume loop and its one ack decision,
//! the event store, the relay, projections, shutdown. [`services`] holds each service's pure
//! domain logic (`decide` / `apply`) and its read models; a service never touches the broker.

pub mod runtime;
pub mod services;
