//! Read models stay exactly a fold of the log: under killed connections, with a rebuild
//! running beside the live projector, and a check that says so (and can say otherwise).

use std::time::Duration;

use eventline::client::parse_order;
use eventline_events::Service;
use eventline_events::auth::Role;
use eventline_events::values::OrderId;
use eventline_workers::runtime::projection::{self, Drift, ProjectionError};
use eventline_workers::runtime::readiness;
use eventline_workers::services::catalog::ProductsProjection;
use eventline_workers::services::orders::OrdersProjection;
use futures_util::future::join_all;
use sqlx::Connection;

use crate::support::{TestSystem, eventually};

async fn drift(system: &TestSystem) -> (Drift, Drift) {
    let products = projection::verify(&ProductsProjection, &system.store)
        .await
        .expect("fold the log");
    let orders = projection::verify(&OrdersProjection, &system.store)
        .await
        .expect("fold the log");
    (products, orders)
}

#[tokio::test]
async fn the_read_model_check_reports_a_corrupted_row() {
    let system = TestSystem::with_catalog(1).await;
    system.add_product("tea", 10).await;
    system.add_product("mug", 3).await;
    system.reserve("tea", OrderId::new(), 2).await;
    system.wait_for_projection().await;
    let (products, _) = drift(&system).await;
    assert!(products.is_exact(), "before any corruption: {products}");

    sqlx::query("UPDATE catalog_products SET available = available + 1 WHERE product_id = 'tea'")
        .execute(system.store.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM catalog_products WHERE product_id = 'mug'")
        .execute(system.store.pool())
        .await
        .unwrap();
    let (products, _) = drift(&system).await;
    assert_eq!(
        (products.unexpected.len(), products.missing.len()),
        (1, 2),
        "the corrupted tea row is unexpected, the real tea and mug rows missing: {products}"
    );
    assert!(products.to_string().contains("tea"), "{products}");
    system.stop().await;
}

/// Kills every connection to THIS test's database (never another's) except its own.
async fn terminate_backends(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(conn)
    .await
    .unwrap_or(0)
}

#[tokio::test]
async fn read_models_equal_a_fresh_fold_after_connections_are_killed_repeatedly() {
    let mut system = TestSystem::start().await;
    for service in Service::ALL {
        for replica in 1..=2 {
            system.start_service(service, &format!("{service}-{replica}"));
        }
    }
    system.start_relay();
    for service in Service::ALL {
        system.wait_for_consumers(service, 2).await;
    }
    for p in ["tea", "mug", "pot"] {
        system.add_product(p, 1000).await;
    }
    let shopper = system
        .client_with_token(Some(system.token(Role::Customer, Duration::from_secs(600))))
        .await;
    let mut killer = sqlx::PgConnection::connect(system.config.database_url.expose())
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let killing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut killed = 0;
            let mut rounds = 0;
            while !stop.is_cancelled() {
                killed += terminate_backends(&mut killer).await;
                rounds += 1;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(150)) => {} // ok: the pace of the fault, not a wait for a result
                    () = stop.cancelled() => {}
                }
            }
            (rounds, killed)
        })
    };
    let cards = [
        "tok_visa",
        "tok_declined",
        "tok_visa",
        "tok_insufficient_funds",
    ];
    let orders = (0..24).map(|i| {
        let shopper = &shopper;
        let line = format!("{}:{}", ["tea", "mug", "pot"][i % 3], 1 + i % 2);
        let order = parse_order(&[line], cards[i % cards.len()]).unwrap();
        // Outcomes may time out while connections die; the read models must not care.
        async move { shopper.place_order(&order, Duration::from_secs(20)).await }
    });
    join_all(orders).await;
    stop.cancel();
    let (rounds, killed) = killing.await.unwrap();
    assert!(killed > 0, "no backend was terminated in {rounds} rounds");

    for checkpoint in ["projection.catalog_products", "projection.orders_view"] {
        system.wait_for_checkpoint(checkpoint).await;
    }
    let (products, orders) = drift(&system).await;
    assert!(
        products.is_exact() && orders.is_exact(),
        "after {rounds} rounds ({killed} backends killed): catalog_products {products}; \
         orders_view {orders}"
    );
    system.stop().await;
}

#[tokio::test]
async fn a_rebuild_beside_the_live_projector_ends_exact_and_the_projector_resumes() {
    let system = TestSystem::with_catalog(2).await;
    system.add_product("tea", 1000).await;
    let reserving = join_all((0..30).map(|_| system.reserve("tea", OrderId::new(), 1)));
    let (replies, rebuilt) = tokio::join!(
        reserving,
        projection::rebuild(&ProductsProjection, &system.store)
    );
    assert!(replies.iter().all(|r| r.is_accepted()));
    rebuilt.expect("the rebuild");
    // More events after the rebuild: the live projector took the election back.
    system.reserve("tea", OrderId::new(), 1).await;
    system.wait_for_projection().await;
    let (products, _) = drift(&system).await;
    assert!(products.is_exact(), "{products}");
    assert_eq!(system.stock("tea").await, (969, 31, 0));
    system.stop().await;
}

#[tokio::test]
async fn an_event_the_projection_cannot_apply_poisons_it_with_a_reason() {
    let system = TestSystem::with_catalog(1).await;
    system.add_product("tea", 1).await;
    system.wait_for_projection().await;
    let projector = || {
        readiness::snapshot(&system.namespace)
            .components
            .into_iter()
            .find(|c| c.component == "projection.catalog_products")
    };
    eventually("the projector to say it projects", || async {
        match projector() {
            Some(c) if c.ready => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // A reservation the catalog would never record (more than its stock), written raw:
    // applying it breaks the read model's `available >= 0`.
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO event_log (stream_id, stream_version, event_id, event_type, schema_version, data, metadata) \
         SELECT stream_id, stream_version + 1, gen_random_uuid(), 'catalog.stock_reserved', 1, \
                jsonb_build_object('product_id', 'tea', 'order_id', gen_random_uuid(), 'quantity', 5, 'unit_price', 250), metadata \
         FROM event_log WHERE stream_id LIKE '%tea' ORDER BY stream_version DESC LIMIT 1 \
         RETURNING position",
    )
    .fetch_one(system.store.pool())
    .await
    .unwrap();
    let reason = eventually("the projection to record why it stopped", || async {
        match projection::poison(&system.store, "projection.catalog_products").await {
            Ok(Some(reason)) => Ok(reason),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        reason.contains(&format!("position {position}")),
        "the reason names the event: {reason}"
    );
    // An operator sees it without reading logs: the process is not ready, and says why.
    eventually("readiness to show the poison", || async {
        match projector() {
            Some(c) if !c.ready && c.detail.contains("poisoned") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(!readiness::snapshot(&system.namespace).ready);
    assert_eq!(
        system.stock("tea").await,
        (1, 0, 0),
        "nothing of it applied"
    );
    match projection::rebuild(&ProductsProjection, &system.store).await {
        Err(ProjectionError::Poisoned { reason, .. }) => {
            assert!(reason.contains(&format!("position {position}")), "{reason}")
        }
        other => panic!("a rebuild cannot apply the event either: {other:?}"),
    }
    system.stop().await;
}

#[tokio::test]
async fn the_products_read_model_equals_the_fold_after_killed_replicas_and_killed_connections() {
    const RESERVATIONS: i64 = 300;
    let mut system = TestSystem::start().await;
    system.start_catalog_worker("setup");
    system.add_product("tea", 10_000).await;
    system.stop_workers().await;
    for name in ["catalog-1", "catalog-2"] {
        system
            .processes()
            .spawn(name, &["worker", "catalog"])
            .unwrap();
    }
    system.wait_for_consumers(Service::Catalog, 2).await;
    for _ in 0..RESERVATIONS {
        let message = eventline_events::OutgoingMessage::new(
            eventline_events::Metadata::origin("catalog.reserve_stock"),
            &eventline_events::catalog::CatalogCommand::from(
                eventline_events::catalog::ReserveStock {
                    product_id: crate::support::product("tea"),
                    order_id: OrderId::new(),
                    quantity: eventline_events::values::Quantity::parse(1).unwrap(),
                },
            ),
        );
        system.client.publish(&message).await.unwrap();
    }
    let handled = "SELECT count(*) FROM processed_messages WHERE consumer = 'catalog.commands'";
    let mut killer = sqlx::PgConnection::connect(system.config.database_url.expose())
        .await
        .unwrap();
    let mut killed = 0;
    // Rounds of: kill one replica (SIGKILL) and restart it, terminate every connection to this
    // test's database, until every reservation is handled.
    for round in 0.. {
        let n = system.count(handled).await;
        if n > RESERVATIONS {
            break;
        }
        assert!(round < 2000, "only {n} handled after {round} rounds");
        if round % 3 == 0 {
            let name = ["catalog-1", "catalog-2"][round % 2];
            system.processes().kill(name).await;
            system
                .processes()
                .spawn(name, &["worker", "catalog"])
                .unwrap();
        }
        killed += terminate_backends(&mut killer).await;
        eventually("more reservations handled", || async {
            let now = system.count(handled).await;
            if now > n || now > RESERVATIONS {
                Ok(())
            } else {
                Err(format!("{now} handled"))
            }
        })
        .await;
    }
    assert!(killed > 0, "no backend was terminated");
    system.wait_for_projection().await;
    let (products, _) = drift(&system).await;
    assert!(
        products.is_exact(),
        "after killed replicas and {killed} killed connections: {products}"
    );
    assert_eq!(
        system.stock("tea").await,
        (10_000 - RESERVATIONS, RESERVATIONS, 0)
    );
    system.stop().await;
}

#[tokio::test]
async fn a_batch_of_every_catalog_event_projects_as_one_event_at_a_time_would() {
    use eventline_events::catalog::{
        AddProduct, CatalogCommand, ChangePrice, CommitReservation, ReleaseReservation,
        ReserveStock, Restock,
    };
    use eventline_events::values::{Money, ProductName, Quantity, StockLevel};
    use eventline_events::{Contract, Metadata, OutgoingMessage};

    let mut system = TestSystem::start().await;
    system.start_catalog_worker("setup");
    system.add_product("tea", 10).await;
    system.wait_for_projection().await;
    system.stop_workers().await;
    // Queued while no worker runs, so one worker takes them together: their events commit
    // close together and the projector meets several events of one product in a batch
    // (the set-based `apply_all`); the fold `verify` makes applies them one at a time.
    let product = crate::support::product;
    let (a, c) = (OrderId::new(), OrderId::new());
    let admin: Vec<CatalogCommand> = vec![
        ChangePrice {
            product_id: product("tea"),
            price: Money::parse(300).unwrap(),
        }
        .into(),
        Restock {
            product_id: product("tea"),
            quantity: Quantity::parse(3).unwrap(),
        }
        .into(),
        AddProduct {
            product_id: product("milk"),
            name: ProductName::parse("Milk".to_owned()).unwrap(),
            price: Money::parse(90).unwrap(),
            initial_stock: StockLevel::parse(4).unwrap(),
        }
        .into(),
    ];
    let reserve = |id: &str, order: OrderId, n: u32| -> CatalogCommand {
        ReserveStock {
            product_id: product(id),
            order_id: order,
            quantity: Quantity::parse(n).unwrap(),
        }
        .into()
    };
    let steps: Vec<CatalogCommand> = vec![
        reserve("tea", a, 2),
        reserve("tea", c, 1),
        reserve("milk", a, 1),
        ReleaseReservation {
            product_id: product("tea"),
            order_id: a,
        }
        .into(),
        CommitReservation {
            product_id: product("tea"),
            order_id: c,
        }
        .into(),
    ];
    let saga = system.saga_client().await;
    let message = |command: &CatalogCommand| {
        OutgoingMessage::new(Metadata::origin(command.message_type()), command)
    };
    for command in &admin {
        system.client.publish(&message(command)).await.unwrap();
    }
    for command in &steps {
        saga.publish(&message(command)).await.unwrap();
    }
    let events_before = system.count("SELECT count(*) FROM event_log").await;
    // A process of its own: the in-process tasks' shutdown has been triggered.
    system
        .processes()
        .spawn("catalog-1", &["worker", "catalog"])
        .unwrap();
    system
        .wait_for_count(
            "every command's events",
            "SELECT count(*) FROM event_log",
            events_before + (admin.len() + steps.len()) as i64,
        )
        .await;
    system.wait_for_projection().await;
    assert_eq!(system.stock("tea").await, (12, 0, 1), "10 + 3 - 2 - 1 + 2");
    assert_eq!(system.stock("milk").await, (3, 1, 0));
    let price: i64 =
        sqlx::query_scalar("SELECT price FROM catalog_products WHERE product_id = 'tea'")
            .fetch_one(system.store.pool())
            .await
            .unwrap();
    assert_eq!(price, 300);
    let (products, _) = drift(&system).await;
    assert!(products.is_exact(), "{products}");
    system.stop().await;
}

#[tokio::test]
async fn a_batch_of_every_order_event_projects_as_one_event_at_a_time_would() {
    use eventline_events::Contract;
    use eventline_events::auth::UserId;
    use eventline_events::ids::{CausationId, CorrelationId, MessageId};
    use eventline_events::orders::{
        LineReserved, OrderCancelled, OrderConfirmed, OrderLine, OrderLines, OrderPlaced,
        OrderRejected, OrdersEvent, PaymentRequested, RefundRequested, order_stream,
    };
    use eventline_events::values::{Money, Quantity};
    use eventline_workers::runtime::shutdown::Shutdown;
    use eventline_workers::runtime::store::EventMetadata;

    let system = TestSystem::start().await;
    let message = MessageId::new();
    let metadata = serde_json::to_value(EventMetadata {
        correlation_id: CorrelationId::from(message),
        causation_id: CausationId::from(message),
        recorded_by: "test".into(),
        trace: None,
    })
    .unwrap();
    // Written straight to the log, as the orders worker would record them, so that the
    // projector meets them all in one batch (the set-based `apply_all`); the fold `verify`
    // makes applies them one at a time.
    let append = |order: OrderId, version: i64, event: OrdersEvent| {
        let metadata = metadata.clone();
        let store = system.store.clone();
        async move {
            sqlx::query(
                "INSERT INTO event_log (stream_id, stream_version, event_id, event_type, schema_version, data, metadata) \
                 VALUES ($1, $2, gen_random_uuid(), $3, 1, $4, $5)",
            )
            .bind(order_stream(order).as_str())
            .bind(version)
            .bind(event.message_type())
            .bind(event.to_json())
            .bind(metadata)
            .execute(store.pool())
            .await
            .unwrap();
        }
    };
    let lines = || {
        OrderLines::parse(vec![OrderLine {
            product_id: crate::support::product("tea"),
            quantity: Quantity::parse(1).unwrap(),
        }])
        .unwrap()
    };
    let placed = |order_id: OrderId| {
        OrdersEvent::from(OrderPlaced {
            order_id,
            customer_id: UserId::new(),
            lines: lines(),
        })
    };
    let reserved = |order_id: OrderId| {
        OrdersEvent::from(LineReserved {
            order_id,
            product_id: crate::support::product("tea"),
            quantity: Quantity::parse(1).unwrap(),
            unit_price: Money::parse(500).unwrap(),
        })
    };
    let payment = |order_id: OrderId, amount: u64| {
        OrdersEvent::from(PaymentRequested {
            order_id,
            amount: Money::parse(amount).unwrap(),
        })
    };
    let [w, x, y, z] = [(); 4].map(|()| OrderId::new());
    // W is placed in an earlier batch (the rebuild's) and moved in this one.
    append(w, 1, placed(w)).await;
    projection::rebuild(&OrdersProjection, &system.store)
        .await
        .expect("project W's placement");
    append(x, 1, placed(x)).await;
    append(y, 1, placed(y)).await;
    append(w, 2, reserved(w)).await;
    append(x, 2, reserved(x)).await;
    let rejected = OrderRejected {
        order_id: y,
        code: "out_of_stock".into(),
        reason: "tea: 0 available".into(),
    };
    append(y, 2, rejected.into()).await;
    append(w, 3, payment(w, 700)).await;
    append(x, 3, payment(x, 500)).await;
    append(z, 1, placed(z)).await;
    let confirmed = OrderConfirmed {
        order_id: w,
        total: Money::parse(700).unwrap(),
    };
    append(w, 4, confirmed.into()).await;
    let cancelled = OrderCancelled {
        order_id: x,
        code: "payment_declined".into(),
        reason: "the card was declined".into(),
    };
    append(x, 4, cancelled.into()).await;
    append(x, 5, RefundRequested { order_id: x }.into()).await;

    let shutdown = Shutdown::new();
    let projector = tokio::spawn(projection::run(
        OrdersProjection,
        system.store.clone(),
        system.namespace.clone(),
        shutdown.clone(),
        tokio::sync::watch::channel(0).0,
    ));
    system.wait_for_checkpoint("projection.orders_view").await;
    let row = |order: OrderId| {
        let store = system.store.clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>, Option<i64>, i64)>(
                "SELECT status, code, total, stream_version FROM orders_view WHERE order_id = $1",
            )
            .bind(order.as_uuid())
            .fetch_one(store.pool())
            .await
            .unwrap()
        }
    };
    assert_eq!(row(w).await, ("confirmed".into(), None, Some(700), 4));
    assert_eq!(
        row(x).await,
        (
            "cancelled".into(),
            Some("payment_declined".into()),
            Some(500),
            4
        ),
        "the total from the payment request, the code from the cancellation; the refund request moves nothing"
    );
    assert_eq!(
        row(y).await,
        ("rejected".into(), Some("out_of_stock".into()), None, 2)
    );
    assert_eq!(row(z).await, ("placed".into(), None, None, 1));
    let (_, orders) = drift(&system).await;
    assert!(orders.is_exact(), "{orders}");
    shutdown.trigger();
    projector.await.unwrap();
    system.stop().await;
}
