//! The order saga across catalog and payments: every path ends in a terminal state with its
//! compensation done.

use std::time::Duration;

use eventline::Client;
use eventline::client::parse_order;
use eventline_events::Service;
use eventline_events::auth::Role;

use crate::support::{TestSystem, eventually};

async fn customer(system: &TestSystem) -> Client {
    system
        .client_with_token(Some(system.token(Role::Customer, Duration::from_secs(600))))
        .await
}

async fn place(client: &Client, lines: &[&str], card: &str) -> eventline::OrderOutcome {
    let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let order = parse_order(&lines, card).unwrap();
    client
        .place_order(&order, Duration::from_secs(30))
        .await
        .expect("an outcome")
}

async fn net_captured(system: &TestSystem) -> i64 {
    system
        .count(
            "SELECT coalesce(sum(CASE event_type WHEN 'payments.payment_captured' THEN 1 ELSE -1 END \
                               * (data ->> 'amount')::bigint), 0)::bigint \
             FROM event_log WHERE event_type IN ('payments.payment_captured', 'payments.payment_refunded')",
        )
        .await
}

#[tokio::test]
async fn an_order_with_stock_and_a_good_card_is_confirmed_and_its_stock_sold() {
    let system = TestSystem::with_all_services(1).await;
    system.add_product("tea", 10).await; // price 2.50
    let shopper = customer(&system).await;
    let outcome = place(&shopper, &["tea:2"], "tok_visa").await;
    assert_eq!(outcome.status, "confirmed", "{outcome}");
    assert_eq!(outcome.total, Some(500));
    system.wait_until_settled().await;
    assert_eq!(system.stock("tea").await, (8, 0, 2));
    assert_eq!(net_captured(&system).await, 500);
    system.stop().await;
}

#[tokio::test]
async fn an_order_beyond_stock_is_rejected_and_holds_nothing() {
    let system = TestSystem::with_all_services(1).await;
    system.add_product("tea", 10).await;
    system.add_product("mug", 1).await;
    let shopper = customer(&system).await;
    let outcome = place(&shopper, &["tea:1", "mug:2"], "tok_visa").await;
    assert_eq!(outcome.status, "rejected", "{outcome}");
    assert_eq!(outcome.code.as_deref(), Some("insufficient_stock"));
    system.wait_until_settled().await;
    assert_eq!(
        system.stock("tea").await,
        (10, 0, 0),
        "the tea line was released"
    );
    assert_eq!(system.stock("mug").await, (1, 0, 0));
    assert_eq!(net_captured(&system).await, 0);
    system.stop().await;
}

#[tokio::test]
async fn a_declined_card_cancels_the_order_and_releases_its_stock() {
    let system = TestSystem::with_all_services(1).await;
    system.add_product("tea", 10).await;
    let shopper = customer(&system).await;
    for (card, code) in [
        ("tok_declined", "payment_declined"),
        ("tok_insufficient_funds", "payment_insufficient_funds"),
    ] {
        let outcome = place(&shopper, &["tea:3"], card).await;
        assert_eq!(outcome.status, "cancelled", "{outcome}");
        assert_eq!(outcome.code.as_deref(), Some(code));
    }
    system.wait_until_settled().await;
    assert_eq!(system.stock("tea").await, (10, 0, 0));
    assert_eq!(net_captured(&system).await, 0);
    system.stop().await;
}

#[tokio::test]
async fn a_payment_slower_than_the_timeout_cancels_the_order_and_compensates() {
    let system = TestSystem::with_all_services(1).await;
    system.add_product("tea", 10).await;
    let shopper = customer(&system).await;
    let outcome = place(&shopper, &["tea:4"], "tok_slow").await;
    assert_eq!(outcome.status, "cancelled", "{outcome}");
    assert_eq!(outcome.code.as_deref(), Some("timeout"));
    system.wait_until_settled().await;
    assert_eq!(system.stock("tea").await, (10, 0, 0));
    // The slow charge finishes after the cancellation; whichever way the race between the
    // charge and the refund goes, no money is kept for a cancelled order.
    eventually("the late charge to be settled", || async {
        let handled = system
            .count("SELECT count(*) FROM processed_messages WHERE message_type = 'payments.charge_payment' AND reply IS NOT NULL")
            .await;
        if handled == 1 { Ok(()) } else { Err("charge still running".to_string()) }
    })
    .await;
    assert_eq!(net_captured(&system).await, 0);
    system.stop().await;
}

#[tokio::test]
async fn a_saga_timeout_survives_the_orders_worker_being_killed() {
    let mut system = TestSystem::start().await;
    system.start_service(Service::Catalog, "catalog-1");
    system.start_service(Service::Auth, "auth-1");
    system.start_relay();
    // No payments worker: the charge is never answered.
    system
        .processes()
        .spawn("orders-doomed", &["worker", "orders"])
        .unwrap();
    system.wait_for_consumers(Service::Orders, 1).await;
    system.add_product("tea", 10).await;
    let shopper = customer(&system).await;
    let order = parse_order(&["tea:1".to_string()], "tok_visa").unwrap();
    let waiting = tokio::spawn(async move {
        let outcome = shopper.place_order(&order, Duration::from_secs(30)).await;
        (shopper, outcome)
    });
    system
        .wait_for_count(
            "the saga to ask for payment",
            "SELECT count(*) FROM event_log WHERE event_type = 'orders.payment_requested'",
            1,
        )
        .await;
    system.processes().kill("orders-doomed").await;
    system
        .processes()
        .spawn("orders-survivor", &["worker", "orders"])
        .unwrap();
    let (_shopper, outcome) = waiting.await.unwrap();
    let outcome = outcome.expect("an outcome");
    assert_eq!(outcome.status, "cancelled", "{outcome}");
    assert_eq!(outcome.code.as_deref(), Some("timeout"));
    system.wait_until_settled().await;
    assert_eq!(system.stock("tea").await, (10, 0, 0));
    system.stop().await;
}

#[tokio::test]
async fn one_order_can_be_traced_across_services_by_causation() {
    let system = TestSystem::with_all_services(1).await;
    system.add_product("tea", 10).await;
    let shopper = customer(&system).await;
    let order = parse_order(&["tea:1".to_string()], "tok_visa").unwrap();
    let outcome = shopper
        .place_order(&order, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(outcome.status, "confirmed");
    system.wait_until_settled().await;
    let trace = eventline::trace::render(&system.store, order.order_id.as_uuid())
        .await
        .unwrap();
    // Each step is printed under (indented deeper than) the message that caused it.
    let depth = |needle: &str| {
        trace
            .lines()
            .find(|l| l.contains(needle))
            .map(|l| l.len() - l.trim_start().len())
            .unwrap_or_else(|| panic!("{needle} missing from the trace:\n{trace}"))
    };
    assert!(
        depth("orders.place_order") < depth("catalog.reserve_stock"),
        "{trace}"
    );
    assert!(
        depth("catalog.reserve_stock") < depth("payments.charge_payment"),
        "{trace}"
    );
    assert!(
        depth("payments.charge_payment") < depth("catalog.commit_reservation"),
        "{trace}"
    );
    assert!(trace.contains("orders.order_confirmed"), "{trace}");
    system.stop().await;
}

#[tokio::test]
async fn read_models_are_served_over_the_broker_and_customers_see_only_their_orders() {
    use eventline_events::catalog::{CatalogQuery, ListProducts};
    use eventline_events::orders::{GetOrder, ListMyOrders, OrdersQuery};

    let system = TestSystem::with_all_services(1).await;
    system.add_product("tea", 10).await;
    let alice = customer(&system).await;
    let bob = customer(&system).await;
    let order = parse_order(&["tea:2".to_string()], "tok_visa").unwrap();
    assert_eq!(
        alice
            .place_order(&order, crate::support::PATIENCE)
            .await
            .unwrap()
            .status,
        "confirmed"
    );
    system.wait_until_settled().await;
    system.wait_for_checkpoint("projection.orders_view").await;

    let result = |reply: eventline_events::Reply| match reply {
        eventline_events::Reply::Accepted {
            result: Some(r), ..
        } => r,
        other => panic!("query refused: {other:?}"),
    };
    let products = result(
        bob.request(
            &CatalogQuery::from(ListProducts {}),
            crate::support::PATIENCE,
        )
        .await
        .unwrap(),
    );
    assert_eq!(products["products"][0]["available"], 8);
    let mine = result(
        alice
            .request(
                &OrdersQuery::from(ListMyOrders {}),
                crate::support::PATIENCE,
            )
            .await
            .unwrap(),
    );
    assert_eq!(mine["orders"][0]["status"], "confirmed");
    assert_eq!(mine["orders"][0]["total"], 500);
    let theirs = result(
        bob.request(
            &OrdersQuery::from(ListMyOrders {}),
            crate::support::PATIENCE,
        )
        .await
        .unwrap(),
    );
    assert_eq!(theirs["orders"].as_array().map(Vec::len), Some(0));
    let peek = bob
        .request(
            &OrdersQuery::from(GetOrder {
                order_id: order.order_id,
            }),
            crate::support::PATIENCE,
        )
        .await
        .unwrap();
    assert!(
        matches!(peek, eventline_events::Reply::Rejected { ref reason } if reason.code == "unknown_order"),
        "{peek:?}"
    );
    system.stop().await;
}
