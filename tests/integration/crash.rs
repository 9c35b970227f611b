//! Independent failures: a worker process killed mid-stream (SIGKILL) loses nothing, and a
//! worker stopped with SIGTERM finishes what it holds.

use eventline_events::catalog::{CatalogCommand, ReserveStock};
use eventline_events::values::{OrderId, Quantity};
use eventline_events::{Metadata, OutgoingMessage, Service};

use crate::support::{TestSystem, eventually, product};

const COMMANDS: i64 = 400;

async fn publish_reservations(system: &TestSystem) {
    for _ in 0..COMMANDS {
        let message = OutgoingMessage::new(
            Metadata::origin("catalog.reserve_stock"),
            &CatalogCommand::from(ReserveStock {
                product_id: product("tea"),
                order_id: OrderId::new(),
                quantity: Quantity::parse(1).unwrap(),
            }),
        );
        system.client.publish(&message).await.unwrap();
    }
}

async fn handled(system: &TestSystem) -> i64 {
    system
        .count("SELECT count(*) FROM processed_messages WHERE consumer = 'catalog.commands'")
        .await
}

async fn assert_each_command_applied_once(system: &TestSystem) {
    eventually("every command to be handled", || async {
        let n = handled(system).await;
        if n == COMMANDS + 1 {
            Ok(())
        } else {
            Err(format!("{n} handled"))
        }
    })
    .await;
    let reservations = system
        .count("SELECT count(*) FROM event_log WHERE event_type = 'catalog.stock_reserved'")
        .await;
    assert_eq!(
        reservations, COMMANDS,
        "a reservation was lost or applied twice"
    );
    let versions = system.stream_versions("catalog.product-tea").await;
    assert_eq!(versions, (1..=COMMANDS + 1).collect::<Vec<_>>());
}

/// A product with plenty of stock, a catalog worker process named `name` consuming, and
/// `COMMANDS` reservations published and partly handled.
async fn mid_stream(name: &str) -> TestSystem {
    let mut system = TestSystem::start().await;
    system.start_catalog_worker("setup");
    system.add_product("tea", 10_000).await;
    system.stop_workers().await;
    system
        .processes()
        .spawn(name, &["worker", "catalog"])
        .unwrap();
    system.wait_for_consumers(Service::Catalog, 1).await;
    publish_reservations(&system).await;
    eventually("the worker to be mid-stream", || async {
        let n = handled(&system).await;
        if n > 20 {
            Ok(())
        } else {
            Err(format!("{n} handled"))
        }
    })
    .await;
    system
}

#[tokio::test]
async fn a_worker_killed_mid_stream_loses_nothing_once_another_takes_over() {
    let mut system = mid_stream("doomed").await;
    system.processes().kill("doomed").await;
    let at_kill = handled(&system).await;
    assert!(
        at_kill < COMMANDS + 1,
        "the worker finished before it could be killed; raise COMMANDS"
    );

    system
        .processes()
        .spawn("survivor", &["worker", "catalog"])
        .unwrap();
    assert_each_command_applied_once(&system).await;
    system.stop().await;
}

#[tokio::test]
async fn a_worker_stopped_with_sigterm_finishes_in_flight_work_and_exits_cleanly() {
    let mut system = mid_stream("first").await;
    let status = system.processes().terminate("first").await;
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM exit: {status:?}"
    );

    system
        .processes()
        .spawn("second", &["worker", "catalog"])
        .unwrap();
    assert_each_command_applied_once(&system).await;
    system.stop().await;
}
