//! Group commit: the deliveries a worker already holds are handled in one transaction, and
//! each still gets the outcome it would have got alone — a duplicate its stored reply, poison
//! the dead-letter queue, a command that lost a version race a fresh decision.

use std::sync::Arc;

use eventline_events::catalog::{
    CatalogCommand, CatalogEvent, ProductAdded, ReserveStock, StockReserved,
};
use eventline_events::values::{Money, OrderId, ProductName, Quantity, StockLevel, StreamId};
use eventline_events::{Metadata, OutgoingMessage, Rejection, Reply, Service};
use eventline_workers::runtime::aggregate::new_events;
use eventline_workers::runtime::broker;
use eventline_workers::runtime::store::{Claim, CommandTx, EventMetadata};
use futures_util::future::join_all;

use crate::support::{PATIENCE, TestSystem, eventually, product};

fn stream(id: &str) -> StreamId {
    StreamId::from_log(format!("catalog.product-{id}"))
}

fn test_metadata() -> EventMetadata {
    EventMetadata {
        correlation_id: eventline_events::CorrelationId::new(),
        causation_id: eventline_events::CausationId::new(),
        recorded_by: "test".into(),
        trace: None,
    }
}

/// A transaction of the test's own that appends `event` to `id`'s stream after `version`.
async fn open_append(
    system: &TestSystem,
    id: &str,
    version: i64,
    event: CatalogEvent,
) -> CommandTx {
    let Claim::New(mut tx) = system
        .store
        .begin_command("test.appender", &Metadata::origin("test.append"), "test")
        .await
        .unwrap()
    else {
        panic!("a fresh message id was a duplicate");
    };
    tx.append(
        &stream(id),
        version,
        &new_events(&[event]),
        &test_metadata(),
    )
    .await
    .unwrap();
    tx
}

fn reservation(id: &str) -> OutgoingMessage {
    OutgoingMessage::new(
        Metadata::origin("catalog.reserve_stock"),
        &CatalogCommand::from(ReserveStock {
            product_id: product(id),
            order_id: OrderId::new(),
            quantity: Quantity::parse(1).unwrap(),
        }),
    )
}

#[tokio::test]
async fn a_batch_settles_a_duplicate_poison_and_a_lost_race_each_as_if_alone() {
    let mut system = TestSystem::start().await;
    // Products written straight into the log, so that everything below is queued before a
    // worker starts and reaches it in as few batches as possible.
    for id in ["a", "b", "c"] {
        let added = CatalogEvent::from(ProductAdded {
            product_id: product(id),
            name: ProductName::parse(format!("Product {id}")).unwrap(),
            price: Money::parse(250).unwrap(),
            initial_stock: StockLevel::parse(100).unwrap(),
        });
        open_append(&system, id, 0, added)
            .await
            .commit(&serde_json::json!(null), &serde_json::json!([]))
            .await
            .unwrap();
    }
    // A message handled before: its inbox row holds the reply it got then.
    let earlier = reservation("b");
    let earlier_reply = Reply::Rejected {
        reason: Rejection::new("handled_earlier", "this is the stored reply"),
    };
    sqlx::query(
        "INSERT INTO processed_messages (consumer, message_id, handled_by, reply) \
         VALUES ('catalog.commands', $1, 'earlier', $2)",
    )
    .bind(earlier.metadata.message_id.as_uuid())
    .bind(serde_json::to_value(&earlier_reply).unwrap())
    .execute(system.store.pool())
    .await
    .unwrap();
    // A writer that appends to "c" first and commits only once the worker waits on it, so
    // the worker's command on "c" loses the race.
    let rival = open_append(
        &system,
        "c",
        1,
        CatalogEvent::from(StockReserved {
            product_id: product("c"),
            order_id: OrderId::new(),
            quantity: Quantity::parse(1).unwrap(),
            unit_price: Money::parse(250).unwrap(),
        }),
    )
    .await;

    let fresh: Vec<OutgoingMessage> = ["a", "b", "c"]
        .iter()
        .cycle()
        .take(12)
        .map(|id| reservation(id))
        .collect();
    let twice = reservation("a");
    let mut messages = fresh.clone();
    messages.extend([twice.clone(), twice.clone(), earlier.clone()]);
    let client = Arc::new(system.saga_client().await);
    let requests = tokio::spawn({
        let client = client.clone();
        let messages = messages.clone();
        async move {
            join_all(
                messages
                    .into_iter()
                    .map(|m| client.request_message(m, PATIENCE)),
            )
            .await
        }
    });
    system
        .client
        .publish_raw(
            Service::Catalog,
            b"{not json",
            broker::properties(&OutgoingMessage {
                metadata: Metadata::origin("catalog.restock"),
                body: Vec::new(),
                extra_headers: Vec::new(),
            }),
        )
        .await
        .unwrap();
    let expected = messages.len() as u32 + 1;
    eventually("every message to be queued", || async {
        match system.queued_commands(Service::Catalog).await {
            n if n >= expected => Ok(()),
            n => Err(format!("{n} of {expected} queued")),
        }
    })
    .await;

    system.start_catalog_worker("catalog-1");
    eventually("the worker to wait on the rival's append", || async {
        match system
            .count(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await
        {
            0 => Err("no session waits on a lock".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    rival
        .commit(&serde_json::json!(null), &serde_json::json!([]))
        .await
        .unwrap();

    let replies: Vec<Reply> = requests
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.expect("a reply"))
        .collect();
    let (fresh_replies, rest) = replies.split_at(fresh.len());
    assert!(
        fresh_replies.iter().all(Reply::is_accepted),
        "{fresh_replies:?}"
    );
    assert!(rest[0].is_accepted(), "{:?}", rest[0]);
    assert_eq!(rest[0], rest[1], "both deliveries of one id get one reply");
    assert_eq!(rest[2], earlier_reply, "a duplicate gets its stored reply");

    // One effect per distinct command; the rival's event on "c" kept; no gaps.
    assert_eq!(
        system.stream_versions("catalog.product-a").await,
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(
        system.stream_versions("catalog.product-b").await,
        (1..=5).collect::<Vec<_>>()
    );
    assert_eq!(
        system.stream_versions("catalog.product-c").await,
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(
        system
            .count("SELECT count(*) FROM processed_messages WHERE consumer = 'catalog.commands'")
            .await,
        fresh.len() as i64 + 2,
        "one inbox row per distinct message id"
    );
    let letters = eventually("the poison message in the dead-letter queue", || async {
        let letters = system
            .client
            .dead_letters(Service::Catalog, 10)
            .await
            .unwrap();
        if letters.is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(letters)
        }
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].code, "invalid_body");
    // The point of it all: some transaction handled several messages.
    assert!(
        system
            .count(
                "SELECT count(*) FROM (SELECT xmin::text FROM processed_messages \
                 WHERE consumer = 'catalog.commands' GROUP BY 1 HAVING count(*) > 1) AS batches",
            )
            .await
            >= 1,
        "no transaction handled more than one message"
    );
    system.stop().await;
}

/// A worker remembers the states it decided on, and still sees what another writer appended
/// after them: with a stale state it would sell stock that is gone.
#[tokio::test]
async fn a_remembered_state_still_sees_what_other_writers_appended() {
    let system = TestSystem::with_catalog(1).await;
    assert!(system.add_product("d", 2).await.is_accepted());
    // The worker decides on "d" at version 2 and remembers it: 1 left.
    assert!(system.reserve("d", OrderId::new(), 1).await.is_accepted());
    // Another replica takes the last one, behind this worker's back.
    open_append(
        &system,
        "d",
        2,
        CatalogEvent::from(StockReserved {
            product_id: product("d"),
            order_id: OrderId::new(),
            quantity: Quantity::parse(1).unwrap(),
            unit_price: Money::parse(250).unwrap(),
        }),
    )
    .await
    .commit(&serde_json::json!(null), &serde_json::json!([]))
    .await
    .unwrap();

    match system.reserve("d", OrderId::new(), 1).await {
        Reply::Rejected { reason } => assert_eq!(reason.code, "insufficient_stock"),
        other => panic!("sold stock that another writer had taken: {other:?}"),
    }
    assert_eq!(
        system.stream_versions("catalog.product-d").await,
        vec![1, 2, 3]
    );
    system.stop().await;
}
