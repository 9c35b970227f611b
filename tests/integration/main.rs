//! Integration tests against a real RabbitMQ and a real PostgreSQL. One binary (faster to
//! build and link than one per file); each test has its own namespace and database.

mod support;

mod append_only;
mod auth;
mod bad_input;
mod batch;
mod catalog;
mod concurrency;
mod crash;
mod dead_letters;
mod errors;
mod least_privilege;
mod load;
mod observability;
mod poison;
mod python_client;
mod relay;
mod saga;
