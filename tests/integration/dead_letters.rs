//! Dead letters in the client: list them with their reasons, show one, and re-drive selected
//! ones after a fix, each applied exactly once.

use eventline::Selection;
use eventline_events::auth::TOKEN_HEADER;
use eventline_events::catalog::{CatalogCommand, ReserveStock};
use eventline_events::envelope::HeaderValue;
use eventline_events::values::{OrderId, Quantity};
use eventline_events::{Metadata, OutgoingMessage, Service};
use eventline_workers::runtime::broker;
use eventline_workers::runtime::store::EventStore;
use eventline_workers::runtime::{Config, Shutdown};
use eventline_workers::services;

use crate::support::{PATIENCE, TestSystem, eventually, product};

fn reserve(order: OrderId, quantity: u32) -> CatalogCommand {
    CatalogCommand::from(ReserveStock {
        product_id: product("tea"),
        order_id: order,
        quantity: Quantity::parse(quantity).unwrap(),
    })
}

#[tokio::test]
async fn a_dead_letter_redriven_after_a_fix_is_applied_exactly_once() {
    let mut system = TestSystem::start().await;

    // A catalog worker deployed with a database that does not exist: every command fails
    // transiently, is retried in process and through the retry queue, and is finally
    // dead-lettered as `retries_exhausted`. Nothing is wrong with the commands themselves.
    let database = system
        .config
        .database_url
        .database_name()
        .unwrap()
        .to_owned();
    let broken = Config {
        database_url: system
            .config
            .database_url
            .with_path(&format!("{database}_missing")),
        replica: "catalog-misconfigured".into(),
        ..system.config.clone()
    };
    let broken_shutdown = Shutdown::new();
    let broken_store = EventStore::connect_lazy(&broken.database_url, 2).unwrap();
    let broken_worker = tokio::spawn(services::run(
        Service::Catalog,
        broken,
        broken_store,
        broken_shutdown.clone(),
    ));
    system.wait_for_consumers(Service::Catalog, 1).await;
    let first_order = OrderId::new();
    let first = system.client.send(&reserve(first_order, 2)).await.unwrap();
    let second = system
        .client
        .send(&reserve(OrderId::new(), 1))
        .await
        .unwrap();
    let letters = system
        .wait_for_dead_letters("both reservations to be dead-lettered", Service::Catalog, 2)
        .await;
    assert!(
        letters.iter().all(|l| l.code == "retries_exhausted"),
        "{letters:?}"
    );

    // `show`: the reason, where it came from, every header but the token.
    let shown = system
        .client
        .dead_letter(Service::Catalog, &first.to_string())
        .await
        .unwrap()
        .expect("the first reservation is in the dead-letter queue");
    assert!(shown.reason.contains("retry rounds"), "{}", shown.reason);
    assert_eq!(
        shown.original_queue,
        Some(system.topology.command_queue(Service::Catalog))
    );
    assert!(!shown.headers.contains_key(TOKEN_HEADER), "{shown:?}");
    assert!(shown.body.contains("\"quantity\":2"), "{}", shown.body);

    // The fix: the worker is redeployed with the right database, and the product exists.
    broken_shutdown.trigger();
    broken_worker.await.unwrap();
    system.start_catalog_worker("catalog-fixed");
    system.wait_for_consumers(Service::Catalog, 1).await;
    assert!(system.add_product("tea", 5).await.is_accepted());

    // Re-drive the first only.
    let report = system
        .client
        .redrive(Service::Catalog, &Selection::Ids(vec![first.to_string()]))
        .await
        .unwrap();
    assert_eq!(report.redriven, [first.to_string()]);
    assert_eq!(report.left, 1);
    assert!(report.refused.is_empty() && report.not_found.is_empty());
    eventually("the re-driven reservation to be applied", || async {
        system.wait_for_projection().await;
        match system.stock("tea").await {
            (3, 2, 0) => Ok(()),
            seen => Err(format!("stock (available, reserved, sold) = {seen:?}")),
        }
    })
    .await;

    // Exactly once: the same message again (as a second re-drive or the sender's retry would
    // send it: same id, same body) is a duplicate with the stored reply, and the log has one
    // reservation.
    let mut again = OutgoingMessage::new(
        Metadata::origin("catalog.reserve_stock"),
        &reserve(first_order, 2),
    );
    again.metadata.message_id = first;
    let reply = system
        .client
        .request_message(again, PATIENCE)
        .await
        .expect("a reply to the repeat");
    assert!(reply.is_accepted(), "{reply:?}");
    assert_eq!(system.stream_versions("catalog.product-tea").await, [1, 2]);
    assert_eq!(
        system
            .count("SELECT count(*) FROM event_log WHERE event_type = 'catalog.stock_reserved'")
            .await,
        1
    );

    // It left the dead-letter queue; the one not selected is still there, untouched.
    let left = system
        .client
        .dead_letters(Service::Catalog, 10)
        .await
        .unwrap();
    let ids: Vec<_> = left.iter().filter_map(|l| l.message_id.clone()).collect();
    assert_eq!(ids, [second.to_string()]);
    let again = system
        .client
        .redrive(Service::Catalog, &Selection::Ids(vec![first.to_string()]))
        .await
        .unwrap();
    assert!(again.redriven.is_empty());
    assert_eq!(again.not_found, [first.to_string()]);
    assert_eq!(again.left, 1);

    system.stop().await;
}

#[tokio::test]
async fn redrive_by_code_takes_only_that_code_and_keeps_the_rest_in_order() {
    let system = TestSystem::with_catalog(1).await;
    assert!(system.add_product("tea", 5).await.is_accepted());
    // Poison of two kinds: an unknown type (a newer worker might handle it) and a bad body.
    let raw = |message_type: &str, body: &[u8], n: i64| {
        let message = OutgoingMessage {
            metadata: Metadata::origin(message_type),
            body: body.to_vec(),
            extra_headers: vec![("x-test-order", HeaderValue::Int(n))],
        };
        (message.body.clone(), broker::properties(&message))
    };
    for n in 0..3 {
        let (body, properties) = raw("catalog.discontinue", b"{}", n);
        system
            .client
            .publish_raw(Service::Catalog, &body, properties)
            .await
            .unwrap();
    }
    let (body, properties) = raw("catalog.restock", b"not json", 99);
    system
        .client
        .publish_raw(Service::Catalog, &body, properties)
        .await
        .unwrap();
    let letters = system
        .wait_for_dead_letters("four dead letters", Service::Catalog, 4)
        .await;
    let code_of_bad_body = letters
        .iter()
        .find(|l| l.message_type.as_deref() == Some("catalog.restock"))
        .map(|l| l.code.clone())
        .unwrap();
    assert_ne!(code_of_bad_body, "unknown_message_type");

    // Re-driving the unknown types sends them back (still unknown to this worker, so they
    // return to the dead-letter queue behind the other one); the other is left in place.
    let report = system
        .client
        .redrive(
            Service::Catalog,
            &Selection::Code("unknown_message_type".into()),
        )
        .await
        .unwrap();
    assert_eq!(report.redriven.len(), 3, "{report:?}");
    assert_eq!(report.left, 1);
    let letters = system
        .wait_for_dead_letters("the re-driven letters to come back", Service::Catalog, 4)
        .await;
    assert_eq!(
        letters[0].message_type.as_deref(),
        Some("catalog.restock"),
        "the letter not selected keeps its place at the head: {letters:?}"
    );
    let order: Vec<_> = letters[1..]
        .iter()
        .map(|l| l.headers.get("x-test-order").cloned().unwrap_or_default())
        .collect();
    assert_eq!(order, ["0", "1", "2"]);
    system.stop().await;
}
