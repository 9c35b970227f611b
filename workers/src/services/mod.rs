//! The seed's servers, each a pure domain on the shared runtime.
//!
//! Architecture invariant: nothing under `services/` opens a connection, publishes, or
//! acks; a service's `decide` and `apply` are plain functions.

pub mod auth;
pub mod catalog;
pub mod orders;
pub mod payments;

use eventline_events::Service;
use tokio::sync::watch;

use crate::runtime::projection;
use crate::runtime::shared_connection::SharedConnection;
use crate::runtime::store::EventStore;
use crate::runtime::worker::CommandWorker;
use crate::runtime::{AggregateHandler, Config, Shutdown};

/// A query's reply: accepted, no events, the answer in `result`.
fn answer(result: serde_json::Value) -> eventline_events::Reply {
    eventline_events::Reply::Accepted {
        stream_id: eventline_events::values::StreamId::from_log("(query)".into()),
        events: Vec::new(),
        result: Some(result),
    }
}

/// Runs one replica of `service` — its command worker and its read models — until shutdown.
///
/// Every replica also runs its service's projections; the projection's checkpoint lock makes
/// that safe (one applies each batch, the others skip it) and keeps them current when a
/// replica dies.
pub async fn run(service: Service, mut config: Config, store: EventStore, shutdown: Shutdown) {
    // Each service signs only as itself: orders its steps, catalog and payments their replies.
    // Handed the others' keys (one env file for all, as in a dev setup), it forgets them, so
    // catalog can never drive the saga nor answer for payments.
    config.saga.keep_signing_key_of(service);
    let mut tasks = tokio::task::JoinSet::new();
    // Every worker process offers to prune the inbox; one elected process does it.
    tasks.spawn(crate::runtime::inbox::Pruner::new(config.clone()).run(shutdown.clone()));
    // Its heartbeat, for the live view: on a task and a connection of its own.
    tasks.spawn(
        crate::runtime::presence::Announcer::worker(config.clone(), service).run(shutdown.clone()),
    );
    match service {
        Service::Auth => {
            tasks.spawn(CommandWorker::new(config, store, auth::AuthHandler).run(shutdown));
        }
        Service::Catalog => {
            tasks.spawn(projection::run(
                catalog::ProductsProjection,
                store.clone(),
                config.namespace.clone(),
                shutdown.clone(),
                watch::Sender::new(0),
            ));
            let connection = consumers(&config, service);
            tasks.spawn(
                CommandWorker::new(config.clone(), store.clone(), catalog::CatalogQueries)
                    .sharing(connection.clone())
                    .run(shutdown.clone()),
            );
            let handler = AggregateHandler::<catalog::Product>::default();
            let worker = CommandWorker::new(config, store, handler).sharing(connection);
            tasks.spawn(worker.run(shutdown));
        }
        Service::Orders => {
            tasks.spawn(projection::run(
                orders::OrdersProjection,
                store.clone(),
                config.namespace.clone(),
                shutdown.clone(),
                watch::Sender::new(0),
            ));
            let connection = consumers(&config, service);
            tasks.spawn(
                CommandWorker::new(config.clone(), store.clone(), orders::OrdersQueries)
                    .sharing(connection.clone())
                    .run(shutdown.clone()),
            );
            let handler = orders::OrdersHandler::default();
            let worker = CommandWorker::new(config, store, handler).sharing(connection);
            tasks.spawn(worker.run(shutdown));
        }
        Service::Payments => {
            let provider = payments::provider::SimulatedProvider::new(config.payments.clone());
            let handler = payments::PaymentsHandler::new(provider);
            tasks.spawn(CommandWorker::new(config, store, handler).run(shutdown));
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// The one broker connection a process's command and query workers consume on (each on
/// channels of its own): a consuming connection costs 8 MiB of lapin's buffers.
fn consumers(config: &Config, service: Service) -> std::sync::Arc<SharedConnection> {
    SharedConnection::new(
        config.amqp_url.clone(),
        format!("{service} workers {}", config.replica),
    )
}

#[cfg(test)]
mod tests {
    use eventline_events::auth::Role;
    use eventline_events::codes;
    use eventline_events::values::{OrderId, ProductId};

    use super::catalog::CatalogRejection;
    use super::orders::OrdersRejection;
    use crate::runtime::RejectionReason;
    use crate::runtime::token::{CredentialError, TokenError};

    /// schema/CONTRACT.md §4 is checked against `eventline_events::codes`; this keeps that
    /// registry complete for the services' own rejection types.
    #[test]
    fn every_code_a_service_rejects_with_is_registered() {
        let product = ProductId::parse("p".into()).unwrap();
        let order = OrderId::new();
        let tokens = [
            TokenError::Missing,
            TokenError::Malformed,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NoKey,
        ];
        let mut emitted: Vec<&str> = tokens.iter().map(TokenError::code).collect();
        emitted.push(CredentialError::Missing(String::new()).code());
        let catalog = [
            CatalogRejection::UnknownProduct(product.clone()),
            CatalogRejection::AlreadyExists(product.clone()),
            CatalogRejection::InsufficientStock {
                product_id: product.clone(),
                available: 0,
                requested: 1,
            },
            CatalogRejection::ReservationMismatch {
                product_id: product.clone(),
                order_id: order,
                held: 1,
                requested: 2,
            },
            CatalogRejection::OrderClosed {
                product_id: product.clone(),
                order_id: order,
                how: "released",
            },
            CatalogRejection::NoReservation {
                product_id: product.clone(),
                order_id: order,
            },
            CatalogRejection::StockLimit {
                product_id: product,
                quantity: 1,
            },
            CatalogRejection::Unauthenticated(TokenError::Missing),
            CatalogRejection::Forbidden(Role::Customer),
        ];
        emitted.extend(catalog.iter().map(RejectionReason::code));
        let orders = [
            OrdersRejection::Unauthenticated(TokenError::Expired),
            OrdersRejection::OrderExists(order),
            OrdersRejection::Forbidden(Role::Admin),
        ];
        emitted.extend(orders.iter().map(RejectionReason::code));
        let missing: Vec<&str> = emitted
            .into_iter()
            .filter(|c| codes::find(c).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "not in eventline_events::codes: {missing:?}"
        );
    }
}
