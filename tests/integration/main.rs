//! Integration tests against a real RabbitMQ and a real PostgreSQL. One binary (faster to
//! build and link than one per file); each test has its own namespace and database.

mod support;

mod append_only;
mod auth;
mod authority;
mod bad_input;
mod batch;
mod catalog;
mod concurrency;
mod connections;
mod crash;
mod dashboard;
mod dead_letters;
mod errors;
mod forged_saga_input;
mod idempotency;
mod least_privilege;
mod lessons;
mod load;
mod observability;
mod payments;
mod poison;
mod presence;
mod projections;
mod python_client;
mod readers;
mod relay;
mod reply_to;
mod saga;
mod settlement;
mod span_export;
