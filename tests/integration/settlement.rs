//! Every way a message can end is settled — never left unacked on a live channel, never
//! retried when no retry can help, never dropped silently — and the retry policy can change
//! between restarts without the broker refusing a queue.

use std::time::Duration;

use eventline::Client;
use eventline::client::{DeadLetter, parse_order};
use eventline_events::auth::Role;
use eventline_events::catalog::{CatalogCommand, Restock};
use eventline_events::values::Quantity;
use eventline_events::{Metadata, OutgoingMessage, Service};
use eventline_workers::runtime::config::RetryPolicy;
use eventline_workers::runtime::handler::MAX_TRANSACTION;
use eventline_workers::runtime::store::EventStore;
use eventline_workers::runtime::{Config, Shutdown, broker};
use eventline_workers::services;
use futures_util::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

use crate::support::sabotage::{CRASH, DIVIDE_BY_ZERO, HANG, PANIC, Sabotaged};
use crate::support::{PATIENCE, TestSystem, eventually, product};

fn restock(id: &str) -> OutgoingMessage {
    OutgoingMessage::new(
        Metadata::origin("catalog.restock"),
        &CatalogCommand::from(Restock {
            product_id: product(id),
            quantity: Quantity::parse(1).unwrap(),
        }),
    )
}

/// Waits until the catalog's dead letters include every message id in `ids`; returns them.
async fn dead_letters_of(system: &TestSystem, ids: &[String]) -> Vec<DeadLetter> {
    eventually(&format!("{} dead letters", ids.len()), || async {
        let letters = system
            .client
            .dead_letters(Service::Catalog, 100)
            .await
            .map_err(|e| e.to_string())?;
        let mine: Vec<DeadLetter> = letters
            .into_iter()
            .filter(|l| l.message_id.as_ref().is_some_and(|id| ids.contains(id)))
            .collect();
        if mine.len() >= ids.len() {
            Ok(mine)
        } else {
            Err(format!("{} of {}: {mine:?}", mine.len(), ids.len()))
        }
    })
    .await
}

#[tokio::test]
async fn a_panicking_handler_is_requeued_then_dead_lettered_and_the_worker_keeps_its_prefetch() {
    let mut system = TestSystem::start().await;
    let config = Config {
        replica: "catalog-sabotaged".into(),
        // Fewer slots than panicking messages: one slot lost per panic would stall the worker.
        prefetch: 2,
        retry: RetryPolicy {
            delivery_limit: 3,
            ..RetryPolicy::default()
        },
        ..system.config.clone()
    };
    system.start_handler(config, Sabotaged::default());
    system.wait_for_consumers(Service::Catalog, 1).await;
    assert!(system.add_product("tea", 1).await.is_accepted());

    let mut ids = Vec::new();
    for _ in 0..4 {
        let message = restock(PANIC);
        ids.push(message.metadata.message_id.to_string());
        system.client.publish(&message).await.unwrap();
    }
    // Still handling other messages, with its whole prefetch.
    for id in ["mug", "pot", "cup"] {
        assert!(system.add_product(id, 1).await.is_accepted());
    }
    let letters = dead_letters_of(&system, &ids).await;
    for letter in &letters {
        assert_eq!(letter.code, "handler_panicked", "{letter:?}");
        assert!(
            letter.reason.contains("3 deliveries") && letter.reason.contains("sabotaged"),
            "{letter:?}"
        );
        // Counted by the quorum queue: the last delivery had been returned twice.
        assert_eq!(
            letter.headers.get("x-delivery-count").map(String::as_str),
            Some("2"),
            "{letter:?}"
        );
    }
    system.stop().await;
}

#[tokio::test]
async fn a_batch_task_that_panics_ends_the_session_and_its_deliveries_come_back() {
    let mut system = TestSystem::start().await;
    let config = Config {
        replica: "catalog-sabotaged".into(),
        // Fewer slots than the commands after the panic: a delivery left unsettled (and the
        // multiple acks it holds back) would stall the worker.
        prefetch: 2,
        ..system.config.clone()
    };
    let sabotaged = Sabotaged::default();
    let crashed = sabotaged.crashed.clone();
    system.start_handler(config, sabotaged);
    system.wait_for_consumers(Service::Catalog, 1).await;
    assert!(system.add_product(CRASH, 1).await.is_accepted());

    // Its first receipt panics (on the consume loop, where a batching worker receives); the
    // session ends, the broker redelivers it to the reconnected worker, and this time it is
    // handled.
    let reply = system.request(restock(CRASH)).await;
    assert!(reply.is_accepted(), "{reply:?}");
    assert!(crashed.load(std::sync::atomic::Ordering::SeqCst));
    for id in ["mug", "pot", "cup"] {
        assert!(system.add_product(id, 1).await.is_accepted());
    }
    // Applied once: the product's creation and one restock.
    assert_eq!(
        system
            .stream_versions(&format!("catalog.product-{CRASH}"))
            .await,
        vec![1, 2]
    );
    system.stop().await;
}

#[tokio::test]
async fn a_permanent_database_error_is_dead_lettered_at_once_with_its_reason() {
    let mut system = TestSystem::start().await;
    let config = Config {
        replica: "catalog-sabotaged".into(),
        ..system.config.clone()
    };
    system.start_handler(config, Sabotaged::default());
    system.wait_for_consumers(Service::Catalog, 1).await;
    let message = restock(DIVIDE_BY_ZERO);
    let id = message.metadata.message_id.to_string();
    system.client.publish(&message).await.unwrap();
    let letters = dead_letters_of(&system, std::slice::from_ref(&id)).await;
    let letter = &letters[0];
    assert_eq!(letter.code, "database_refused", "{letter:?}");
    assert!(
        letter.reason.contains("22012") && letter.reason.contains("division by zero"),
        "{letter:?}"
    );
    // Never parked in the retry queue.
    assert!(
        !letter.headers.contains_key("x-eventline-retry-count"),
        "{letter:?}"
    );
    // A valid command still flows.
    assert!(system.add_product("tea", 1).await.is_accepted());
    system.stop().await;
}

#[tokio::test]
async fn a_handler_that_keeps_its_transaction_open_too_long_is_rolled_back_by_the_runtime() {
    let mut system = TestSystem::start().await;
    let config = Config {
        replica: "catalog-sabotaged".into(),
        // One attempt and no retry round: the first timeout is the message's end.
        retry: RetryPolicy {
            in_process_attempts: 1,
            max_rounds: 0,
            ..RetryPolicy::default()
        },
        ..system.config.clone()
    };
    system.start_handler(config, Sabotaged::default());
    system.wait_for_consumers(Service::Catalog, 1).await;
    assert!(system.add_product(HANG, 1).await.is_accepted());
    let message = restock(HANG);
    let id = message.metadata.message_id.to_string();
    system.client.publish(&message).await.unwrap();
    let letters = dead_letters_of(&system, std::slice::from_ref(&id)).await;
    let letter = &letters[0];
    // The runtime's own bound ended it, not the database's idle timeout (10 s, later), and
    // the reason tells the handler's author what to do instead.
    assert_eq!(letter.code, "retries_exhausted", "{letter:?}");
    assert!(
        letter
            .reason
            .contains(&format!("longer than {MAX_TRANSACTION:?}"))
            && letter.reason.contains("Handler::outside"),
        "{letter:?}"
    );
    // Rolled back: no inbox claim survives, and nothing was appended for the hanging restock.
    assert_eq!(
        system
            .count(&format!(
                "SELECT count(*) FROM processed_messages WHERE message_id::text = '{id}'"
            ))
            .await,
        0
    );
    assert_eq!(
        system
            .count(&format!(
                "SELECT count(*) FROM event_log WHERE stream_id = 'catalog.product-{HANG}'"
            ))
            .await,
        1,
        "only the product's creation is in its stream"
    );
    // The worker is still there for everyone else.
    assert!(system.add_product("tea", 1).await.is_accepted());
    system.stop().await;
}

#[tokio::test]
async fn a_stored_dispatch_that_no_longer_decodes_is_dead_lettered_not_dropped() {
    let system = TestSystem::with_catalog(1).await;
    system.add_product("tea", 1).await;
    let message = restock("tea");
    let metadata = &message.metadata;
    // As if an older version had handled it and stored dispatches this one cannot read.
    sqlx::query(
        "INSERT INTO processed_messages \
             (consumer, message_id, handled_by, correlation_id, causation_id, message_type, outputs) \
         VALUES ('catalog.commands', $1, 'an-older-worker', $2, $3, 'catalog.restock', $4)",
    )
    .bind(metadata.message_id.as_uuid())
    .bind(metadata.correlation_id.as_uuid())
    .bind(metadata.causation_id.as_uuid())
    .bind(serde_json::json!([{ "to": { "kind": "teleport" } }]))
    .execute(system.store.pool())
    .await
    .unwrap();
    let id = metadata.message_id.to_string();
    system.client.publish(&message).await.unwrap();
    let letters = dead_letters_of(&system, std::slice::from_ref(&id)).await;
    assert_eq!(
        letters[0].code, "undecodable_stored_dispatch",
        "{:?}",
        letters[0]
    );
    system.stop().await;
}

/// A catalog worker with its own shutdown, so a test can stop it and start another.
fn start_catalog(config: Config) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let shutdown = Shutdown::new();
    let store = EventStore::connect_lazy(&config.database_url, 4).expect("a pool");
    let task = tokio::spawn(services::run(
        Service::Catalog,
        config,
        store,
        shutdown.clone(),
    ));
    (shutdown, task)
}

#[tokio::test]
async fn the_retry_policy_changes_between_restarts_without_the_broker_refusing_a_queue() {
    let system = TestSystem::start().await;
    // An older version's queues: a classic reply and query queue, and a retry queue whose
    // delay is a queue argument. Re-declaring any of them differently is PRECONDITION_FAILED.
    let connection = broker::connect(&system.config.amqp_url, "test old topology")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let topology = &system.topology;
    let mut ttl = FieldTable::default();
    ttl.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1000));
    for (queue, args) in [
        (topology.retry_queue(Service::Orders), ttl),
        (topology.reply_queue(Service::Orders), FieldTable::default()),
        (topology.query_queue(Service::Orders), FieldTable::default()),
    ] {
        channel
            .queue_declare(queue.as_str().into(), durable, args)
            .await
            .unwrap();
    }
    let _ = connection.close(200, "declared".into()).await;

    let first = Config {
        replica: "catalog-first".into(),
        ..system.config.clone()
    };
    let (shutdown, task) = start_catalog(first.clone());
    system.wait_for_consumers(Service::Catalog, 1).await;
    assert!(system.add_product("tea", 1).await.is_accepted());
    shutdown.trigger();
    task.await.unwrap();

    // Another policy against the same namespace: it declares and consumes at once.
    let second = Config {
        replica: "catalog-second".into(),
        retry: RetryPolicy {
            in_process_attempts: 1,
            max_rounds: 1,
            retry_delay: Duration::from_millis(200),
            delivery_limit: 2,
            ..RetryPolicy::default()
        },
        ..first.clone()
    };
    let (shutdown, task) = start_catalog(second.clone());
    system.wait_for_consumers(Service::Catalog, 1).await;
    assert!(system.add_product("mug", 1).await.is_accepted());

    // The orders' old queues are tolerated too: its worker consumes, and answers queries.
    let orders_store = EventStore::connect_lazy(&second.database_url, 4).expect("a pool");
    let orders_shutdown = Shutdown::new();
    let orders = tokio::spawn(services::run(
        Service::Orders,
        Config {
            replica: "orders-on-old-queues".into(),
            ..second.clone()
        },
        orders_store,
        orders_shutdown.clone(),
    ));
    system.wait_for_consumers(Service::Orders, 1).await;

    // The new policy is the one in force: a worker whose database is gone gives up after one
    // retry round, each waiting the policy's delay carried on the message.
    shutdown.trigger();
    task.await.unwrap();
    let database = second.database_url.database_name().unwrap().to_owned();
    let broken = Config {
        replica: "catalog-broken".into(),
        database_url: second
            .database_url
            .with_path(&format!("{database}_missing")),
        ..second.clone()
    };
    let (broken_shutdown, broken_task) = start_catalog(broken);
    system.wait_for_consumers(Service::Catalog, 1).await;
    let message = restock("tea");
    let id = message.metadata.message_id.to_string();
    system.client.publish(&message).await.unwrap();
    let letters = dead_letters_of(&system, std::slice::from_ref(&id)).await;
    assert_eq!(letters[0].code, "retries_exhausted", "{:?}", letters[0]);
    assert!(
        letters[0].reason.contains("after 1 retry rounds"),
        "{:?}",
        letters[0]
    );
    broken_shutdown.trigger();
    broken_task.await.unwrap();
    orders_shutdown.trigger();
    orders.await.unwrap();
    system.stop().await;
}

#[tokio::test]
async fn no_event_on_the_events_exchange_carries_the_card_token() {
    let system = TestSystem::with_all_services(1).await;
    system.add_product("tea", 10).await;
    let mut events = Box::pin(system.client.subscribe("#").await.unwrap());
    let shopper: Client = system
        .client_with_token(Some(system.token(Role::Customer, Duration::from_secs(600))))
        .await;
    let card = "tok_visa";
    let order = parse_order(&["tea:2".to_owned()], card).unwrap();
    let outcome = shopper
        .place_order(&order, Duration::from_secs(30))
        .await
        .expect("an outcome");
    // The saga still charged the card it was given.
    assert_eq!(outcome.status, "confirmed", "{outcome}");
    let mut seen = Vec::new();
    let confirmed = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.next().await {
            let done = event.event_type == "orders.order_confirmed";
            seen.push(event);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        confirmed,
        Ok(true),
        "waiting for orders.order_confirmed on the events exchange; saw {} events",
        seen.len()
    );
    assert!(seen.iter().any(|e| e.event_type == "orders.order_placed"));
    for event in &seen {
        assert!(
            !event.data.to_string().contains(card),
            "{} carries the card: {}",
            event.event_type,
            event.data
        );
    }
    let in_log = system
        .count(&format!(
            "SELECT count(*) FROM event_log WHERE data::text LIKE '%{card}%'"
        ))
        .await;
    assert_eq!(in_log, 0, "the log holds the card");
    system.stop().await;
}
