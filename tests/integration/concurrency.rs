//! Concurrency: competing workers on one product never oversell and lose no update.

use eventline_events::Reply;
use eventline_events::values::OrderId;
use futures_util::future::join_all;

use crate::support::TestSystem;

#[tokio::test]
async fn concurrent_reservations_from_two_workers_never_oversell() {
    let mut system = TestSystem::with_catalog(2).await;
    let second_client = system.saga_client().await;
    system.add_product("tea", 50).await;

    // 120 reservations of 1 for 50 items, half from each client, all in flight at once.
    let orders: Vec<OrderId> = (0..120).map(|_| OrderId::new()).collect();
    let requests = orders.iter().enumerate().map(|(i, order)| {
        let client = if i % 2 == 0 {
            &system.client
        } else {
            &second_client
        };
        let command = eventline_events::catalog::CatalogCommand::from(
            eventline_events::catalog::ReserveStock {
                product_id: crate::support::product("tea"),
                order_id: *order,
                quantity: eventline_events::values::Quantity::parse(1).unwrap(),
            },
        );
        async move {
            client
                .request(&command, crate::support::PATIENCE)
                .await
                .unwrap()
        }
    });
    let replies: Vec<Reply> = join_all(requests).await;

    let accepted = replies.iter().filter(|r| r.is_accepted()).count();
    let insufficient = replies
        .iter()
        .filter(|r| matches!(r, Reply::Rejected { reason } if reason.code == "insufficient_stock"))
        .count();
    assert_eq!(accepted, 50, "exactly the stock is reserved");
    assert_eq!(insufficient, 70, "every other request is refused for stock");

    // No lost update: every accepted reservation is an event, versions are gap-free.
    let versions = system.stream_versions("catalog.product-tea").await;
    assert_eq!(versions, (1..=51).collect::<Vec<i64>>());
    system.wait_for_projection().await;
    assert_eq!(system.stock("tea").await, (0, 50, 0));

    // Both replicas took part: the queue is the load balancer.
    let replicas = system
        .count("SELECT count(DISTINCT handled_by) FROM processed_messages")
        .await;
    assert_eq!(replicas, 2);
    second_client.close().await;
    system.stop_workers().await;
    system.stop().await;
}
