//! The seed's servers, each a pure domain on the shared runtime.
//!
//! Architecture invariant: nothing under `services/` opens a connection, publishes, or
//! acks; a service's `decide` and `apply` are plain functions.

pub mod catalog;
