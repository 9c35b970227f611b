//! The catalog end to end: command → transaction → reply → projection → relayed event.

use eventline_events::catalog::{CatalogCommand, Restock};
use eventline_events::values::{OrderId, Quantity};
use eventline_events::{Metadata, OutgoingMessage, Reply};
use futures_util::StreamExt;
use futures_util::future::join_all;

use crate::support::{PATIENCE, TestSystem, product};

#[tokio::test]
async fn a_command_round_trips_to_events_a_reply_and_the_read_model() {
    let mut system = TestSystem::with_catalog(1).await;
    system.start_relay();
    let events = system.client.subscribe("catalog.#").await.unwrap();
    let mut events = Box::pin(events);

    let reply = system.add_product("tea", 10).await;
    let Reply::Accepted {
        stream_id,
        events: recorded,
        ..
    } = &reply
    else {
        panic!("add_product was not accepted: {reply:?}");
    };
    assert_eq!(stream_id.as_str(), "catalog.product-tea");
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].message_type, "catalog.product_added");
    assert_eq!(recorded[0].stream_version, 1);

    let order = OrderId::new();
    let reply = system.reserve("tea", order, 3).await;
    assert!(reply.is_accepted(), "{reply:?}");

    system.wait_for_projection().await;
    assert_eq!(system.stock("tea").await, (7, 3, 0));

    for (expected_type, expected_version) in
        [("catalog.product_added", 1), ("catalog.stock_reserved", 2)]
    {
        let event = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("the relay to publish the event")
            .expect("an event");
        assert_eq!(event.event_type, expected_type);
        assert_eq!(event.stream_version, expected_version);
        assert_eq!(event.stream_id, "catalog.product-tea");
    }
    system.stop().await;
}

#[tokio::test]
async fn rejections_say_why_and_change_nothing() {
    let system = TestSystem::with_catalog(1).await;
    let reply = system.reserve("ghost", OrderId::new(), 1).await;
    let Reply::Rejected { reason } = reply else {
        panic!("reserving a missing product was accepted")
    };
    assert_eq!(reason.code, "unknown_product");
    assert!(
        reason.message.contains("add it first"),
        "{}",
        reason.message
    );

    system.add_product("mug", 2).await;
    let Reply::Rejected { reason } = system.reserve("mug", OrderId::new(), 3).await else {
        panic!("over-reservation accepted");
    };
    assert_eq!(reason.code, "insufficient_stock");
    assert!(
        reason.message.contains("has 2 available, 3 requested"),
        "{}",
        reason.message
    );
    assert_eq!(system.stream_versions("catalog.product-mug").await, [1]);
    system.stop().await;
}

#[tokio::test]
async fn duplicate_delivery_has_one_effect_and_the_same_reply() {
    let system = TestSystem::with_catalog(2).await;
    system.add_product("tea", 0).await;
    let message = OutgoingMessage::new(
        Metadata::origin("catalog.restock"),
        &CatalogCommand::from(Restock {
            product_id: product("tea"),
            quantity: Quantity::parse(5).unwrap(),
        }),
    );
    // The same message id, ten times at once, to two competing workers…
    let replies =
        join_all((0..10).map(|_| system.client.request_message(message.clone(), PATIENCE))).await;
    let mut replies: Vec<Reply> = replies.into_iter().map(|r| r.expect("a reply")).collect();
    // …and once more after all of them were handled: answered from the inbox.
    replies.push(system.request(message.clone()).await);
    assert!(
        replies.iter().all(|r| r == &replies[0]),
        "replies differ: {replies:?}"
    );
    let Reply::Accepted { events, .. } = &replies[0] else {
        panic!("restock refused")
    };
    assert_eq!(events.len(), 1);
    assert_eq!(system.stream_versions("catalog.product-tea").await, [1, 2]);
    assert_eq!(
        system
            .count("SELECT count(*) FROM processed_messages WHERE consumer = 'catalog.commands'")
            .await,
        2,
        "one inbox row per distinct message (add_product, restock)"
    );
    system.stop().await;
}

#[tokio::test]
async fn a_projection_rebuilt_from_position_zero_matches_the_live_one() {
    let system = TestSystem::with_catalog(1).await;
    for (id, stock) in [("a", 5), ("b", 7)] {
        system.add_product(id, stock).await;
    }
    for _ in 0..3 {
        system.reserve("a", OrderId::new(), 1).await;
        system.reserve("b", OrderId::new(), 2).await;
    }
    system.wait_for_projection().await;
    let live: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT product_id, available, reserved, sold, stream_version FROM catalog_products ORDER BY product_id",
    )
    .fetch_all(system.store.pool())
    .await
    .unwrap();
    let mut system = system;
    system.stop_workers().await;
    eventline_workers::runtime::projection::rebuild(
        &eventline_workers::services::catalog::ProductsProjection,
        &system.store,
    )
    .await
    .unwrap();
    let rebuilt: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT product_id, available, reserved, sold, stream_version FROM catalog_products ORDER BY product_id",
    )
    .fetch_all(system.store.pool())
    .await
    .unwrap();
    assert_eq!(rebuilt, live);
    assert_eq!(live.len(), 2);
    system.stop().await;
}
