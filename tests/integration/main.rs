//! Integration tests against a real RabbitMQ and a real PostgreSQL. One binary (faster to
//! build and link than one per file); each test has its own namespace and database.

mod support;

mod append_only;
mod auth;
mod batch;
mod catalog;
mod concurrency;
mod crash;
mod errors;
mod load;
mod poison;
mod python_client;
mod relay;
mod saga;
