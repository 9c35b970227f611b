//! Authority that holds against any client on the broker: the saga's steps (reserve, release,
//! commit, charge, refund, expire) are obeyed only when orders signed them, whoever else sends
//! them and whatever token they hold; and token roles are enforced as the contract states.

use std::time::Duration;

use eventline::Client;
use eventline::client::parse_order;
use eventline_events::auth::{Role, SERVICE_CREDENTIAL_HEADER};
use eventline_events::catalog::{
    CatalogCommand, CommitReservation, ReleaseReservation, ReserveStock,
};
use eventline_events::envelope::HeaderValue;
use eventline_events::orders::{ExpireOrder, OrdersCommand};
use eventline_events::payments::{CardToken, ChargePayment, PaymentsCommand, RefundPayment};
use eventline_events::values::{Money, OrderId, Quantity};
use eventline_events::{Contract, IncomingMessage, Metadata, OutgoingMessage, Reply, Service};
use eventline_workers::runtime::broker;
use eventline_workers::services::orders::step_id;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use crate::support::{PATIENCE, TestSystem, eventually, product};

/// Every step only the saga may send, aimed at `victim` (an order in flight) where it has one.
fn saga_steps(victim: OrderId) -> Vec<(&'static str, Service, OutgoingMessage)> {
    vec![
        (
            "reserve all the stock",
            Service::Catalog,
            outgoing(&CatalogCommand::from(ReserveStock {
                product_id: product("tea"),
                order_id: OrderId::new(),
                quantity: Quantity::parse(8).unwrap(),
            })),
        ),
        (
            "release the victim's reservation",
            Service::Catalog,
            outgoing(&CatalogCommand::from(ReleaseReservation {
                product_id: product("tea"),
                order_id: victim,
            })),
        ),
        (
            "commit the victim's reservation unpaid",
            Service::Catalog,
            outgoing(&CatalogCommand::from(CommitReservation {
                product_id: product("tea"),
                order_id: victim,
            })),
        ),
        (
            "charge 123 for an order that does not exist",
            Service::Payments,
            outgoing(&PaymentsCommand::from(ChargePayment {
                order_id: OrderId::new(),
                amount: Money::parse(123).unwrap(),
                card: CardToken::parse("tok_visa".into()).unwrap(),
            })),
        ),
        (
            "refund the victim",
            Service::Payments,
            outgoing(&PaymentsCommand::from(RefundPayment { order_id: victim })),
        ),
        (
            "expire the victim",
            Service::Orders,
            outgoing(&OrdersCommand::from(ExpireOrder { order_id: victim })),
        ),
    ]
}

fn outgoing<C: Contract>(command: &C) -> OutgoingMessage {
    OutgoingMessage::new(Metadata::origin(command.message_type()), command)
}

async fn dead_letters(system: &TestSystem, service: Service) -> u32 {
    let connection = broker::connect(&system.config.amqp_url, "test probe")
        .await
        .unwrap();
    let declared = broker::inspect_queue(&connection, &system.topology.dead_letter_queue(service))
        .await
        .unwrap();
    let _ = connection.close(200, "probe".into()).await;
    declared.message_count()
}

/// What changes if a forged step has any effect: the whole log, and the order's status.
async fn effects(system: &TestSystem, order: OrderId) -> (i64, String) {
    let log = system.count("SELECT count(*) FROM event_log").await;
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM orders_view WHERE order_id = $1")
            .bind(order.as_uuid())
            .fetch_optional(system.store.pool())
            .await
            .unwrap();
    let status = status.unwrap_or_else(|| "(not in the read model yet)".into());
    (log, status)
}

async fn assert_all_forbidden(
    senders: &[(&str, &Client)],
    steps: impl Fn() -> Vec<(&'static str, Service, OutgoingMessage)>,
) {
    for (who, client) in senders {
        for (what, _, message) in steps() {
            let reply = client
                .request_message(message, PATIENCE)
                .await
                .unwrap_or_else(|e| panic!("{who}: {what}: no reply: {e}"));
            match reply {
                Reply::Rejected { reason } if reason.code == "forbidden" => {
                    assert!(
                        reason.message.contains("orders"),
                        "{who}: {what}: the reason should say who may: {}",
                        reason.message
                    );
                }
                other => panic!("{who}: {what}: expected `forbidden`, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn only_the_saga_can_reserve_release_commit_charge_refund_or_expire() {
    let mut system = TestSystem::start().await;
    // The order must stay in flight while the forged steps try to move it.
    system.config.saga_timeout = Duration::from_secs(600);
    // Payments' queue exists but nobody consumes it yet: the saga's real charge waits there.
    let setup = broker::connect(&system.config.amqp_url, "test setup")
        .await
        .unwrap();
    let channel = setup.create_channel().await.unwrap();
    for service in [Service::Payments, Service::Orders] {
        broker::declare_service_queues(&channel, &system.topology, service)
            .await
            .unwrap();
    }
    // Any client may bind a queue to the commands exchange and see the saga's steps go by,
    // credential and all: the replay below uses what it captures.
    let snoop = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            snoop.name().as_str().into(),
            system.topology.commands_exchange().as_str().into(),
            "payments".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    system.start_service(Service::Catalog, "catalog-1");
    system.start_service(Service::Orders, "orders-1");
    system.start_relay();
    system.wait_for_consumers(Service::Catalog, 1).await;
    system.wait_for_consumers(Service::Orders, 1).await;
    assert!(system.add_product("tea", 10).await.is_accepted());

    let customer = system
        .client_with_token(Some(system.token(Role::Customer, Duration::from_secs(600))))
        .await;
    let order = parse_order(&["tea:2".to_string()], "tok_visa").unwrap();
    let victim = order.order_id;
    let outcome = tokio::spawn(async move {
        let outcome = customer.place_order(&order, Duration::from_secs(120)).await;
        (customer, outcome)
    });
    eventually("the order to wait for its payment", || async {
        match effects(&system, victim).await.1.as_str() {
            "paying" => Ok(()),
            other => Err(other.to_owned()),
        }
    })
    .await;
    let before = effects(&system, victim).await;

    // A customer, an admin, and another service (a credential signed by a key that is not
    // orders': here auth's, which a compromised auth would hold).
    let customer = system
        .client_with_token(Some(system.token(Role::Customer, Duration::from_secs(600))))
        .await;
    let admin = system
        .client_with_token(Some(system.token(Role::Admin, Duration::from_secs(600))))
        .await;
    let other_service = system
        .client_with_token(None)
        .await
        .with_saga_key(system.config.auth.signing.clone().unwrap().0);
    let senders = [
        ("a customer", &customer),
        ("an admin", &admin),
        ("another service", &other_service),
    ];
    // Payments has no worker yet: its steps are tried once the order is paid, below.
    let in_flight = || {
        saga_steps(victim)
            .into_iter()
            .filter(|(_, service, _)| *service != Service::Payments)
            .collect()
    };
    assert_all_forbidden(&senders, in_flight).await;

    // No effect at all: not one event, the order still waiting, the stock still held, and
    // each forged step parked for operators.
    assert_eq!(effects(&system, victim).await, before);
    assert_eq!(
        system
            .count("SELECT count(*) FROM event_log WHERE stream_id LIKE 'payments.%'")
            .await,
        0
    );
    system.wait_for_projection().await;
    assert_eq!(system.stock("tea").await, (8, 2, 0));
    for (service, forged) in [(Service::Catalog, 9), (Service::Orders, 3)] {
        assert_eq!(dead_letters(&system, service).await, forged, "{service}");
    }

    // The saga's own, signed steps still work: payments starts, the order is confirmed.
    system.start_service(Service::Payments, "payments-1");
    let (_customer, outcome) = outcome.await.unwrap();
    assert_eq!(outcome.expect("an outcome").status, "confirmed");
    eventually("the saga's commit to sell the stock", || async {
        system.wait_for_projection().await;
        match system.stock("tea").await {
            (8, 0, 2) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let captured = || async {
        system
            .count(
                "SELECT count(*) FROM event_log WHERE event_type IN \
                 ('payments.payment_captured', 'payments.payment_refunded')",
            )
            .await
    };
    assert_eq!(captured().await, 1);

    // Charging an order that does not exist, and refunding the confirmed (paid) order, are
    // refused to everyone but the saga.
    let log = system.count("SELECT count(*) FROM event_log").await;
    let payments_steps = || {
        saga_steps(victim)
            .into_iter()
            .filter(|(_, service, _)| *service == Service::Payments)
            .collect()
    };
    assert_all_forbidden(&senders, payments_steps).await;
    assert_eq!(system.count("SELECT count(*) FROM event_log").await, log);
    assert_eq!(dead_letters(&system, Service::Payments).await, 6);

    // A captured credential: the very message again is a duplicate (its stored reply, no
    // second charge); on any other message it is worthless.
    let charge_id = step_id(victim, "charge").to_string();
    let captured_charge = loop {
        let got = channel
            .basic_get(
                snoop.name().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
            .expect("the saga's charge went by the snooping queue");
        let message = broker::incoming(&got.delivery.properties, got.delivery.data.clone());
        if message.message_id.as_deref() == Some(charge_id.as_str()) {
            break message;
        }
    };
    let Some(HeaderValue::Text(credential)) = captured_charge
        .headers
        .get(SERVICE_CREDENTIAL_HEADER)
        .cloned()
    else {
        panic!("the saga's charge carries orders' credential");
    };
    let replay = replayed(&captured_charge, &credential);
    let reply = customer.request_message(replay, PATIENCE).await.unwrap();
    assert!(
        reply.is_accepted(),
        "the stored reply of the charge: {reply:?}"
    );
    let mut refund = outgoing(&PaymentsCommand::from(RefundPayment { order_id: victim }));
    refund.extra_headers.push((
        SERVICE_CREDENTIAL_HEADER,
        HeaderValue::Text(credential.clone()),
    ));
    match customer.request_message(refund, PATIENCE).await.unwrap() {
        Reply::Rejected { reason } => assert_eq!(reason.code, "forbidden"),
        other => panic!("a copied credential authorized a refund: {other:?}"),
    }
    assert_eq!(captured().await, 1, "one charge, never refunded");
    let _ = setup.close(200, "ok".into()).await;
    system.stop().await;
}

/// The captured message, byte for byte, with its credential.
fn replayed(message: &IncomingMessage, credential: &str) -> OutgoingMessage {
    OutgoingMessage {
        metadata: message.metadata().expect("a valid envelope"),
        body: message.body.clone(),
        extra_headers: vec![(
            SERVICE_CREDENTIAL_HEADER,
            HeaderValue::Text(credential.to_owned()),
        )],
    }
}

#[tokio::test]
async fn placing_an_order_needs_the_customer_role() {
    let system = TestSystem::with_all_services(1).await;
    assert!(system.add_product("tea", 5).await.is_accepted());
    let order = parse_order(&["tea:1".to_string()], "tok_visa").unwrap();
    let admin = system
        .client_with_token(Some(system.token(Role::Admin, Duration::from_secs(600))))
        .await;
    let outcome = admin.place_order(&order, PATIENCE).await.expect("a reply");
    assert_eq!(outcome.status, "rejected");
    assert_eq!(outcome.code.as_deref(), Some("forbidden"));
    assert_eq!(
        system
            .stream_versions(&format!("orders.order-{}", order.order_id))
            .await,
        Vec::<i64>::new(),
        "no order was recorded"
    );
    system.stop().await;
}
