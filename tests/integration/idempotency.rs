//! Idempotency that checks what it deduplicates, a bounded inbox, and failing fast when the
//! database is away (schema/CONTRACT.md, "Idempotency").
//!
//! A message id is an idempotency key: the same id and content again has one effect and gets
//! the stored reply; the same id with other content is refused `idempotency_key_reused`. An
//! order id is a natural key: the identical order again is a success with no new effect, other
//! lines or another card are refused `order_exists`. Inbox rows live for the dedup window and
//! are then pruned by one elected process; queries leave no row at all.

use std::time::Duration;

use eventline_events::auth::Role;
use eventline_events::catalog::{CatalogCommand, CatalogQuery, ChangePrice, ListProducts, Restock};
use eventline_events::orders::{OrdersCommand, PlaceOrder};
use eventline_events::payments::CardToken;
use eventline_events::values::{Money, OrderId, Quantity};
use eventline_events::{Metadata, OutgoingMessage, Reply, Service};
use eventline_workers::runtime::Config;
use eventline_workers::runtime::db_roles;
use eventline_workers::services::orders;
use sqlx::Connection;

use crate::support::{PATIENCE, TestSystem, eventually, product};

fn restock(id: &str, quantity: u32) -> CatalogCommand {
    CatalogCommand::from(Restock {
        product_id: product(id),
        quantity: Quantity::parse(quantity).unwrap(),
    })
}

/// `message` again under the same message id, with `command` as its body.
fn same_id<C: eventline_events::Contract>(
    message: &OutgoingMessage,
    command: &C,
) -> OutgoingMessage {
    OutgoingMessage::new(message.metadata.clone(), command)
}

fn code(reply: &Reply) -> Option<&str> {
    match reply {
        Reply::Rejected { reason } => Some(reason.code.as_str()),
        Reply::Accepted { .. } => None,
    }
}

#[tokio::test]
async fn a_message_id_reused_with_another_body_or_type_is_refused_and_has_no_effect() {
    let system = TestSystem::with_catalog(1).await;
    assert!(system.add_product("cup", 10).await.is_accepted());
    let first = OutgoingMessage::new(Metadata::origin("catalog.restock"), &restock("cup", 1));
    let accepted = system.request(first.clone()).await;
    assert!(accepted.is_accepted(), "{accepted:?}");

    // The same message again, its body's keys in another order and with another sender's
    // token: a re-send (headers and spelling are not content), the stored reply, no effect.
    let mut respelled = first.clone();
    respelled.body = br#"{ "quantity": 1, "product_id": "cup" }"#.to_vec();
    let other_sender = system
        .client_with_token(Some(system.token(Role::Admin, Duration::from_secs(600))))
        .await;
    let again = other_sender
        .request_message(respelled, PATIENCE)
        .await
        .unwrap();
    assert_eq!(again, accepted, "a re-send gets the stored reply");

    // Another quantity, then another command type, under the same id: refused, no effect.
    for (what, message) in [
        ("another body", same_id(&first, &restock("cup", 7))),
        (
            "another type",
            same_id(
                &first,
                &CatalogCommand::from(ChangePrice {
                    product_id: product("cup"),
                    price: Money::parse(999).unwrap(),
                }),
            ),
        ),
    ] {
        let reply = system.request(message).await;
        assert_eq!(
            code(&reply),
            Some("idempotency_key_reused"),
            "{what}: {reply:?}"
        );
    }
    assert_eq!(
        system.stream_versions("catalog.product-cup").await,
        vec![1, 2],
        "only the add and the first restock"
    );
    // The row still holds the first message's reply: a faithful re-send still gets it.
    let third = system.request(first).await;
    assert_eq!(third, accepted);
    // A reply, not a dead letter: the first outcome stands and there is nothing to re-drive.
    let dead = system
        .client
        .dead_letters(Service::Catalog, 10)
        .await
        .unwrap();
    assert!(dead.is_empty(), "{dead:?}");
    system.stop().await;
}

fn place(order_id: OrderId, items: &[(&str, u32)], card: &str) -> OrdersCommand {
    let items: Vec<_> = items
        .iter()
        .map(|(p, q)| (product(p), Quantity::parse(*q).unwrap()))
        .collect();
    OrdersCommand::from(PlaceOrder {
        order_id,
        lines: orders::lines(&items).unwrap(),
        card: CardToken::parse(card.into()).unwrap(),
    })
}

#[tokio::test]
async fn an_order_id_placed_again_is_idempotent_when_identical_and_refused_when_different() {
    let mut system = TestSystem::start().await;
    system.start_service(Service::Orders, "orders-1");
    system.wait_for_consumers(Service::Orders, 1).await;
    let customer = system
        .client_with_token(Some(system.token(Role::Customer, Duration::from_secs(600))))
        .await;
    let id = OrderId::new();
    let first = customer
        .request(&place(id, &[("mug", 1), ("tea", 2)], "tok_visa"), PATIENCE)
        .await
        .unwrap();
    assert!(first.is_accepted(), "{first:?}");

    // The identical order under a new message id (a client that lost the reply): a success,
    // no second order.
    let again = customer
        .request(&place(id, &[("tea", 2), ("mug", 1)], "tok_visa"), PATIENCE)
        .await
        .unwrap();
    assert!(again.is_accepted(), "{again:?}");

    for (what, command, expected) in [
        (
            "other lines",
            place(id, &[("mug", 3)], "tok_visa"),
            "other lines (placed: mug x1, tea x2; this command: mug x3)",
        ),
        (
            "another card",
            place(id, &[("mug", 1), ("tea", 2)], "tok_insufficient_funds"),
            "another card",
        ),
    ] {
        let reply = customer.request(&command, PATIENCE).await.unwrap();
        let Reply::Rejected { reason } = &reply else {
            panic!("{what}: accepted, but the order id is taken: {reply:?}")
        };
        assert_eq!(reason.code, "order_exists", "{what}");
        assert!(
            reason.message.contains(expected),
            "{what}: {}",
            reason.message
        );
        assert!(
            !reason.message.contains("tok_"),
            "a card token is never quoted: {}",
            reason.message
        );
    }
    let placed = system
        .count(&format!(
            "SELECT count(*) FROM event_log WHERE event_type = 'orders.order_placed' \
             AND data ->> 'order_id' = '{id}'"
        ))
        .await;
    assert_eq!(placed, 1, "one order placed");
    system.stop().await;
}

#[tokio::test]
async fn queries_leave_no_inbox_row_and_a_repeated_query_runs_again() {
    let system = TestSystem::with_catalog(1).await;
    assert!(system.add_product("tea", 3).await.is_accepted());
    system.wait_for_projection().await;
    let query = OutgoingMessage::new(
        Metadata::origin("catalog.query.list_products"),
        &CatalogQuery::from(ListProducts {}),
    );
    let before = system.request(query.clone()).await;
    assert!(before.is_accepted(), "{before:?}");
    assert!(system.add_product("jar", 1).await.is_accepted());
    system.wait_for_projection().await;
    // The same query id again answers from the read model as it is now, not a stored snapshot.
    let after = system.request(query).await;
    let names = |reply: &Reply| match reply {
        Reply::Accepted { result, .. } => {
            result.as_ref().map(|r| r.to_string()).unwrap_or_default()
        }
        Reply::Rejected { .. } => String::new(),
    };
    assert!(
        !names(&before).contains("jar") && names(&after).contains("jar"),
        "{after:?}"
    );
    assert_eq!(
        system
            .count("SELECT count(*) FROM processed_messages WHERE consumer = 'catalog.queries'")
            .await,
        0
    );
    assert_eq!(
        system
            .count("SELECT count(*) FROM processed_messages WHERE consumer = 'catalog.commands'")
            .await,
        2,
        "commands still claim"
    );
    system.stop().await;
}

/// A catalog worker whose inbox forgets after `window`.
async fn catalog_with_window(window: Duration) -> TestSystem {
    let mut system = TestSystem::start().await;
    let config = Config {
        replica: "catalog-window".into(),
        dedup_window: window,
        ..system.config.clone()
    };
    system.start_service_with(Service::Catalog, config);
    system.wait_for_consumers(Service::Catalog, 1).await;
    system
}

/// (claimed at, its age now), by the database's clock, of a message's inbox row, if any.
async fn inbox_row(system: &TestSystem, message: &OutgoingMessage) -> Option<(f64, f64)> {
    sqlx::query_as(
        "SELECT extract(epoch FROM processed_at)::float8, \
                extract(epoch FROM now() - processed_at)::float8 \
         FROM processed_messages WHERE message_id = $1",
    )
    .bind(message.metadata.message_id.as_uuid())
    .fetch_optional(system.store.pool())
    .await
    .unwrap()
}

async fn db_now(system: &TestSystem) -> f64 {
    sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(system.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_resend_within_the_window_has_one_effect_and_the_row_goes_only_after_it() {
    const WINDOW: Duration = Duration::from_secs(4);
    let system = catalog_with_window(WINDOW).await;
    assert!(system.add_product("cup", 10).await.is_accepted());
    let message = OutgoingMessage::new(Metadata::origin("catalog.restock"), &restock("cup", 1));
    let first = system.request(message.clone()).await;
    assert!(first.is_accepted());
    let (claimed_at, _) = inbox_row(&system, &message).await.expect("claimed");

    // Re-sent again and again while the row is younger than the window less a margin for
    // handling (the pruner may take it the moment it turns older): each has no effect.
    let latest_resend_age = std::cell::Cell::new(0.0);
    eventually("re-sends up to the window's edge", || async {
        let age = db_now(&system).await - claimed_at;
        if age >= WINDOW.as_secs_f64() - 1.0 {
            return Ok(());
        }
        let reply = system
            .client
            .request_message(message.clone(), PATIENCE)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(
            reply, first,
            "a re-send at {age:.2} s gets the stored reply"
        );
        assert_eq!(
            system.stream_versions("catalog.product-cup").await,
            vec![1, 2]
        );
        latest_resend_age.set(age);
        Err(format!("row {age:.2} s old"))
    })
    .await;
    let latest_resend_age = latest_resend_age.get();
    assert!(
        latest_resend_age >= WINDOW.as_secs_f64() / 2.0,
        "{latest_resend_age}"
    );

    // The row goes, and not before the window has passed.
    eventually("the inbox row to be pruned", || async {
        let now = db_now(&system).await;
        match inbox_row(&system, &message).await {
            Some((_, age)) => Err(format!("still there at {age:.2} s")),
            None => {
                let age = now - claimed_at;
                assert!(
                    age >= WINDOW.as_secs_f64(),
                    "pruned at {age:.2} s, inside the window"
                );
                Ok(())
            }
        }
    })
    .await;
    // The window is the promise: after it, the same id is a new message.
    let late = system.request(message).await;
    assert!(late.is_accepted());
    assert_eq!(
        system.stream_versions("catalog.product-cup").await,
        vec![1, 2, 3]
    );
    system.stop().await;
}

#[tokio::test]
async fn the_inbox_stays_bounded_under_a_long_run_and_keeps_every_row_inside_the_window() {
    const WINDOW: Duration = Duration::from_secs(2);
    let system = catalog_with_window(WINDOW).await;
    assert!(system.add_product("tea", 0).await.is_accepted());
    let start = db_now(&system).await;
    // Four windows of traffic, one restock after another; each row's claim time is noted.
    let mut sent: Vec<(uuid::Uuid, f64)> = Vec::new();
    while db_now(&system).await - start < 4.0 * WINDOW.as_secs_f64() {
        let message = OutgoingMessage::new(Metadata::origin("catalog.restock"), &restock("tea", 1));
        let reply = system.request(message.clone()).await;
        assert!(reply.is_accepted(), "{reply:?}");
        let (claimed_at, _) = inbox_row(&system, &message)
            .await
            .expect("a fresh row is inside the window");
        sent.push((message.metadata.message_id.as_uuid(), claimed_at));
    }
    let ids: Vec<uuid::Uuid> = sent.iter().map(|(id, _)| *id).collect();
    let claimed: Vec<f64> = sent.iter().map(|(_, at)| *at).collect();
    let total = sent.len() as i64;
    eventually(
        "the inbox to hold at most the last window and a bit",
        || async {
            // Checked in one statement, by one clock: every row younger than the window is there,
            // and nothing older than the window plus two prune intervals (0.2 s each) is.
            let (missing, stale, held): (i64, i64, i64) = sqlx::query_as(
                "SELECT \
               (SELECT count(*) FROM unnest($1::uuid[], $2::float8[]) AS s(id, at) \
                WHERE to_timestamp(s.at) > now() - $3 * interval '1 second' \
                  AND NOT EXISTS (SELECT 1 FROM processed_messages p WHERE p.message_id = s.id)), \
               (SELECT count(*) FROM processed_messages \
                WHERE processed_at < now() - ($3 + 0.4) * interval '1 second'), \
               (SELECT count(*) FROM processed_messages WHERE consumer = 'catalog.commands')",
            )
            .bind(&ids)
            .bind(&claimed)
            .bind(WINDOW.as_secs_f64())
            .fetch_one(system.store.pool())
            .await
            .map_err(|e| e.to_string())?;
            assert_eq!(missing, 0, "a row inside the window was removed");
            if stale == 0 && held < total / 2 {
                Ok(())
            } else {
                Err(format!(
                    "{stale} rows past the window; {held} of {total} rows held"
                ))
            }
        },
    )
    .await;
    assert_eq!(
        system.stream_versions("catalog.product-tea").await.len() as i64,
        total + 1,
        "every restock applied once"
    );
    system.stop().await;
}

#[tokio::test]
async fn one_elected_process_prunes_the_inbox() {
    let mut system = TestSystem::start().await;
    for i in 1..=3 {
        let config = Config {
            replica: format!("catalog-{i}"),
            dedup_window: Duration::from_secs(1),
            ..system.config.clone()
        };
        system.start_service_with(Service::Catalog, config);
    }
    system.wait_for_consumers(Service::Catalog, 3).await;
    let leaders = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND objsubid = 1 \
                   AND objid = (hashtext('eventline.inbox_pruner')::bigint & 4294967295)::oid";
    eventually("a pruner leader", || async {
        match system.count(leaders).await {
            1 => Ok(()),
            n => Err(format!("{n} leaders")),
        }
    })
    .await;
    // And it prunes: an old row goes.
    assert!(system.add_product("tea", 1).await.is_accepted());
    eventually("the add's row to be pruned", || async {
        match system
            .count("SELECT count(*) FROM processed_messages")
            .await
        {
            0 => Ok(()),
            n => Err(format!("{n} rows")),
        }
    })
    .await;
    assert_eq!(system.count(leaders).await, 1, "still one leader");
    system.stop().await;
}

#[tokio::test]
async fn the_worker_login_prunes_only_through_the_window_function() {
    let system = TestSystem::start().await;
    let name = format!("t_pruner_{}", uuid::Uuid::now_v7().simple());
    let worker_url =
        crate::least_privilege::with_user(&system.config.database_url, &name, "not-a-real-secret");
    let _login = crate::least_privilege::Login {
        admin_url: system.config.database_url.clone(),
        name: db_roles::ensure_login(
            &system.config.database_url,
            &worker_url,
            eventline_events::topology::BrokerUser::Service(Service::Catalog),
        )
        .await
        .expect("create the worker login"),
    };
    sqlx::query(
        "INSERT INTO processed_messages (consumer, message_id, handled_by, processed_at) \
         VALUES ('catalog.commands', gen_random_uuid(), 'old', now() - interval '2 hours'), \
                ('catalog.commands', gen_random_uuid(), 'young', now())",
    )
    .execute(system.store.pool())
    .await
    .unwrap();
    let mut conn = sqlx::PgConnection::connect(worker_url.expose())
        .await
        .unwrap();
    let refused = sqlx::query("DELETE FROM processed_messages")
        .execute(&mut conn)
        .await
        .expect_err("no DELETE on the inbox")
        .to_string();
    assert!(refused.contains("permission denied"), "{refused}");
    let too_short = sqlx::query("SELECT eventline_prune_inbox(interval '0.5 seconds', 10)")
        .execute(&mut conn)
        .await
        .expect_err("a window under a second")
        .to_string();
    assert!(too_short.contains("too short"), "{too_short}");
    let removed = eventline_workers::runtime::inbox::prune(&mut conn, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT handled_by FROM processed_messages")
        .fetch_all(system.store.pool())
        .await
        .unwrap();
    assert_eq!(left, vec!["young".to_owned()]);
    let _ = conn.close().await;
    system.stop().await;
}

#[tokio::test]
async fn a_query_while_the_database_does_not_answer_is_told_it_is_unavailable_within_a_second() {
    // A "database" that accepts connections and never says a word: the worst case, since no
    // error ever arrives; only the acquire timeout ends the wait.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut system = TestSystem::start().await;
    // The deployed default, so the bound below is the one a client meets.
    let acquire = eventline_workers::runtime::config::DEFAULT_DB_ACQUIRE_TIMEOUT;
    let config = Config {
        replica: "catalog-no-db".into(),
        database_url: system.config.database_url.with_address(address),
        db_acquire_timeout: acquire,
        ..system.config.clone()
    };
    system.start_service_with(Service::Catalog, config);
    system.wait_for_consumers(Service::Catalog, 1).await;
    let asked = std::time::Instant::now();
    let reply = system
        .client
        .request(
            &CatalogQuery::from(ListProducts {}),
            Duration::from_secs(10),
        )
        .await
        .expect("an answer, not silence");
    let waited = asked.elapsed();
    let Reply::Rejected { reason } = &reply else {
        panic!("answered from a database that is not there: {reply:?}")
    };
    assert_eq!(reason.code, "unavailable");
    assert!(reason.message.contains("read model"), "{}", reason.message);
    // One acquire timeout and the round trip, not one timeout per in-process attempt.
    assert!(
        waited < acquire + Duration::from_millis(700),
        "the unavailable reply took {waited:?}; a query should wait at most one acquire \
         timeout ({acquire:?})"
    );
    silent.abort();
    system.stop().await;
}
