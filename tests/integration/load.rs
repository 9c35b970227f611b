//! The whole system under a concurrent load: 1,000 orders from two clients against two
//! replicas of every service, then every invariant checked from the log.

use std::sync::Arc;
use std::time::Duration;

use eventline::client::parse_order;
use eventline_events::{Metadata, OutgoingMessage, Reply};

use crate::support::TestSystem;

const ORDERS: usize = 1000;
const PRODUCTS: [&str; 5] = ["p0", "p1", "p2", "p3", "p4"];
const STOCK: i64 = 300;

#[tokio::test]
async fn a_thousand_concurrent_orders_keep_every_invariant() {
    let system = TestSystem::with_all_services(2).await;
    for p in PRODUCTS {
        system.add_product(p, STOCK as u32).await; // price 2.50 each
    }
    // Two customers, registered and logged in through the auth service.
    let mut clients = Vec::new();
    for email in ["one@example.com", "two@example.com"] {
        let credentials = serde_json::json!({ "email": email, "password": "load-test-password" });
        let mut token = None;
        for message_type in ["auth.register_user", "auth.log_in"] {
            let message = OutgoingMessage {
                metadata: Metadata::origin(message_type),
                body: credentials.to_string().into_bytes(),
                extra_headers: Vec::new(),
            };
            let reply = system.request(message).await;
            if let Reply::Accepted {
                result: Some(result),
                ..
            } = reply
            {
                token = result["token"].as_str().map(str::to_owned);
            }
        }
        clients.push(Arc::new(system.client_with_token(token).await));
    }
    let mut tasks = tokio::task::JoinSet::new();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(40));
    for i in 0..ORDERS {
        let client = clients[i % 2].clone();
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let card = match i % 10 {
            7 => "tok_declined",
            8 => "tok_insufficient_funds",
            _ => "tok_visa",
        };
        let lines = vec![
            format!("{}:{}", PRODUCTS[i % 5], 1 + i % 3),
            format!("{}:1", PRODUCTS[(i / 5 + 1 + i) % 5]),
        ];
        let lines: Vec<String> = if lines[0].starts_with(&lines[1][..2]) {
            lines[..1].to_vec()
        } else {
            lines
        };
        let order = parse_order(&lines, card).unwrap();
        tasks.spawn(async move {
            let outcome = client.place_order(&order, Duration::from_secs(120)).await;
            drop(permit);
            outcome.map(|o| o.status)
        });
    }
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    while let Some(result) = tasks.join_next().await {
        *statuses
            .entry(result.unwrap().expect("every order reaches an outcome"))
            .or_default() += 1;
    }
    assert_eq!(statuses.values().sum::<usize>(), ORDERS);
    assert!(
        statuses.get("confirmed").copied().unwrap_or(0) > 0,
        "{statuses:?}"
    );
    assert!(
        statuses.get("rejected").copied().unwrap_or(0) > 0,
        "stock should run out: {statuses:?}"
    );

    // Let compensations and projections finish.
    system.wait_until_settled().await;
    system.wait_for_checkpoint("projection.orders_view").await;

    // Every order terminal.
    let open = system.count("SELECT count(*) FROM orders_view WHERE status NOT IN ('confirmed','rejected','cancelled')").await;
    assert_eq!(open, 0);
    assert_eq!(
        system.count("SELECT count(*) FROM orders_view").await,
        ORDERS as i64
    );
    // Stock conserved: initial = available + reserved + sold, and never negative (CHECKs).
    let conserved = system
        .count(&format!(
            "SELECT count(*) FROM catalog_products WHERE available + reserved + sold = {STOCK}"
        ))
        .await;
    assert_eq!(conserved, PRODUCTS.len() as i64);
    // Captured payments, net of refunds, equal the confirmed orders' totals.
    let net = system
        .count(
            "SELECT coalesce(sum(CASE event_type WHEN 'payments.payment_captured' THEN 1 ELSE -1 END \
                                * (data ->> 'amount')::bigint), 0)::bigint FROM event_log \
             WHERE event_type IN ('payments.payment_captured', 'payments.payment_refunded')",
        )
        .await;
    let confirmed = system
        .count("SELECT coalesce(sum(total), 0)::bigint FROM orders_view WHERE status = 'confirmed'")
        .await;
    assert_eq!(net, confirmed);
    // Sold items equal the confirmed orders' quantities.
    let sold = system
        .count("SELECT coalesce(sum(sold), 0)::bigint FROM catalog_products")
        .await;
    let ordered = system
        .count(
            "SELECT coalesce(sum((l ->> 'quantity')::bigint), 0)::bigint \
             FROM orders_view, jsonb_array_elements(lines) AS l WHERE status = 'confirmed'",
        )
        .await;
    assert_eq!(sold, ordered);
    // No order charged twice.
    let twice = system
        .count("SELECT count(*) FROM (SELECT stream_id FROM event_log WHERE event_type = 'payments.payment_captured' GROUP BY stream_id HAVING count(*) > 1) t")
        .await;
    assert_eq!(twice, 0);
    // No gap in any stream's versions.
    let gaps = system
        .count("SELECT count(*) FROM (SELECT stream_id FROM event_log GROUP BY stream_id HAVING max(stream_version) <> count(*)) t")
        .await;
    assert_eq!(gaps, 0);
    // Both replicas of each busy service took part: the queues balanced the load.
    for service in ["catalog", "orders", "payments"] {
        let replicas = system
            .count(&format!("SELECT count(DISTINCT handled_by) FROM processed_messages WHERE handled_by LIKE '{service}-%'"))
            .await;
        assert_eq!(replicas, 2, "{service}");
    }
    system.stop().await;
}
