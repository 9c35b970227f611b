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
    // Only orders signs saga steps; any other service handed its key (one env file for all,
    // as in a dev setup) forgets it, so it can never drive the saga itself.
    if service != Service::Orders {
        config.saga.signing = None;
    }
    let mut tasks = tokio::task::JoinSet::new();
    match service {
        Service::Auth => {
            tasks.spawn(CommandWorker::new(config, store, auth::AuthHandler).run(shutdown));
        }
        Service::Catalog => {
            tasks.spawn(projection::run(
                catalog::ProductsProjection,
                store.clone(),
                shutdown.clone(),
                watch::Sender::new(0),
            ));
            tasks.spawn(
                CommandWorker::new(config.clone(), store.clone(), catalog::CatalogQueries)
                    .run(shutdown.clone()),
            );
            let handler = AggregateHandler::<catalog::Product>::default();
            tasks.spawn(CommandWorker::new(config, store, handler).run(shutdown));
        }
        Service::Orders => {
            tasks.spawn(projection::run(
                orders::OrdersProjection,
                store.clone(),
                shutdown.clone(),
                watch::Sender::new(0),
            ));
            tasks.spawn(
                CommandWorker::new(config.clone(), store.clone(), orders::OrdersQueries)
                    .run(shutdown.clone()),
            );
            let handler = AggregateHandler::<orders::Order>::default();
            tasks.spawn(CommandWorker::new(config, store, handler).run(shutdown));
        }
        Service::Payments => {
            let provider = payments::provider::SimulatedProvider::new(config.payments.clone());
            let handler = payments::PaymentsHandler::new(provider);
            tasks.spawn(CommandWorker::new(config, store, handler).run(shutdown));
        }
    }
    while tasks.join_next().await.is_some() {}
}
