//! Saga inputs forged by a client: the orders service takes replies (`eventline.reply`) on
//! the same decode path as commands, and a step's message id is a UUIDv5 of the order id that
//! anyone who knows the order can compute. So orders takes a reply to a step only with the
//! credential of that step's callee (payments for the charge and the refund, catalog for the
//! rest), over the reply's id, type, causation id and body; anything else is dead-lettered
//! `forbidden` before it can touch the order.

use std::time::Duration;

use eventline::client::{Client, parse_order};
use eventline_events::auth::Role;
use eventline_events::orders::OrdersCommand;
use eventline_events::payments::payment_stream;
use eventline_events::reply::REPLY_TYPE;
use eventline_events::values::OrderId;
use eventline_events::{CorrelationId, Metadata, OutgoingMessage, Reply, Service};
use eventline_workers::runtime::{broker, token};
use eventline_workers::services::orders::step_id;

use crate::support::{TestSystem, eventually};

/// A signer for a forged reply: which key signs it, and as which service it claims to sign.
type Forger = Option<(ed25519_dalek::SigningKey, Service)>;

/// An `accepted` reply to `order`'s charge step, as payments would send it, signed by `forger`.
fn forged_charge_reply(order: OrderId, forger: &Forger) -> OutgoingMessage {
    let forged = Reply::Accepted {
        stream_id: payment_stream(order),
        events: Vec::new(),
        result: None,
    };
    let mut metadata = Metadata::origin(REPLY_TYPE);
    metadata.correlation_id = CorrelationId::from_uuid(order.as_uuid());
    metadata.causation_id = step_id(order, "charge").into();
    let mut message = OutgoingMessage::new(metadata, &OrdersCommand::from(forged));
    if let Some((key, claimed)) = forger {
        token::sign_reply(&mut message, key, *claimed);
    }
    message
}

/// Places a `tok_slow` order (the real charge takes longer than the saga's timeout, so left
/// alone the order is cancelled as "timeout", and the window for a forgery is wide), sends
/// each of `forgers`' replies once the order asks for its payment, and returns its status.
async fn status_after_forged_replies(system: &TestSystem, forgers: &[Forger]) -> String {
    system.add_product("tea", 10).await;
    let shopper = system
        .client_with_token(Some(system.token(Role::Customer, Duration::from_secs(600))))
        .await;
    let order = parse_order(&["tea:1".to_string()], "tok_slow").unwrap();
    let forge = async {
        eventually("the order to request its payment", || async {
            let n = system
                .count(&format!(
                    "SELECT count(*) FROM event_log WHERE event_type = 'orders.payment_requested' \
                     AND data ->> 'order_id' = '{}'",
                    order.order_id
                ))
                .await;
            if n == 1 {
                Ok(())
            } else {
                Err(format!("{n} payment requests"))
            }
        })
        .await;
        let intruder: Client = system.client_with_token(None).await;
        for forger in forgers {
            let message = forged_charge_reply(order.order_id, forger);
            intruder
                .publish_raw(Service::Orders, &message.body, broker::properties(&message))
                .await
                .expect("the broker takes the forged reply");
        }
    };
    let (outcome, ()) = tokio::join!(shopper.place_order(&order, Duration::from_secs(30)), forge);
    outcome.expect("an outcome").status
}

/// Waits until orders' dead-letter queue holds `n` `forbidden` replies, and returns them.
async fn forbidden_replies(system: &TestSystem, n: usize) -> Vec<eventline::client::DeadLetter> {
    system
        .wait_for_dead_letters_where(
            "the forged replies in orders' dead-letter queue",
            Service::Orders,
            n,
            |l| l.code == "forbidden" && l.message_type.as_deref() == Some(REPLY_TYPE),
        )
        .await
}

#[tokio::test]
async fn a_forged_payment_reply_does_not_confirm_an_order() {
    let system = TestSystem::with_all_services(1).await;
    let status = status_after_forged_replies(&system, &[None]).await;
    assert_eq!(
        status, "cancelled",
        "only payments' own reply may confirm an order"
    );
    let letters = forbidden_replies(&system, 1).await;
    assert!(
        letters[0].reason.contains("only payments may answer"),
        "{}",
        letters[0].reason
    );
    system.stop().await;
}

#[tokio::test]
async fn a_payment_reply_signed_by_another_service_does_not_confirm_an_order() {
    let system = TestSystem::with_all_services(1).await;
    let catalog = system.signing_key(Service::Catalog);
    // Catalog's key signing as catalog, and catalog's key passing itself off as payments.
    let forgers = [
        Some((catalog.clone(), Service::Catalog)),
        Some((catalog, Service::Payments)),
    ];
    let status = status_after_forged_replies(&system, &forgers).await;
    assert_eq!(
        status, "cancelled",
        "catalog's word is no payment; got {status}"
    );
    for letter in forbidden_replies(&system, 2).await {
        assert!(
            letter
                .reason
                .contains("does not verify with the public key of payments"),
            "{}",
            letter.reason
        );
    }
    system.stop().await;
}

/// The reply catalog sends to a `reserve_stock` that carries `credential`, read from a queue
/// of the test's own (the step's `reply_to`), with its headers.
async fn reply_to_reservation(
    system: &TestSystem,
    order: OrderId,
    credential: Option<String>,
) -> eventline_events::IncomingMessage {
    let connection = broker::connect(&system.config.amqp_url, "test replies")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = broker::declare_private_queue(&channel).await.unwrap();
    let step =
        eventline_events::catalog::CatalogCommand::from(eventline_events::catalog::ReserveStock {
            product_id: eventline_events::values::ProductId::parse("tea".into()).unwrap(),
            order_id: order,
            quantity: eventline_events::values::Quantity::parse(1).unwrap(),
        });
    // The real step's (predictable) id, and its order as the conversation.
    let mut metadata =
        Metadata::origin("catalog.reserve_stock").with_reply_to(queue.name().as_str());
    metadata.message_id = step_id(order, "reserve/tea");
    metadata.correlation_id = CorrelationId::from_uuid(order.as_uuid());
    let mut message = OutgoingMessage::new(metadata, &step);
    if let Some(credential) = credential {
        message.extra_headers.push((
            eventline_events::auth::SERVICE_CREDENTIAL_HEADER,
            eventline_events::envelope::HeaderValue::Text(credential),
        ));
    }
    system
        .client
        .publish_raw(
            Service::Catalog,
            &message.body,
            broker::properties(&message),
        )
        .await
        .expect("the broker takes the step");
    let reply = eventually("catalog's reply", || async {
        match channel
            .basic_get(
                queue.name().as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
        {
            Ok(Some(got)) => Ok(broker::incoming(
                &got.delivery.properties,
                got.delivery.data,
            )),
            Ok(None) => Err("no reply yet".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let _ = connection.close(200, "done".into()).await;
    reply
}

#[tokio::test]
async fn catalog_signs_its_reply_only_to_a_step_whose_credential_verified() {
    let system = TestSystem::with_all_services(1).await;
    system.add_product("tea", 10).await;
    let catalog = system.signing_key(Service::Catalog).verifying_key();
    let check = |reply: &eventline_events::IncomingMessage| {
        let causation = reply.metadata().expect("a reply's envelope").causation_id;
        token::check_reply_credential(
            reply,
            &causation.to_string(),
            Service::Catalog,
            Some(&catalog),
        )
    };
    // A forger names a real step's id and a garbage credential: catalog refuses it, and its
    // refusal must not carry catalog's word (sent to orders' reply queue, a signed `forbidden`
    // would reject the real order).
    let forged = reply_to_reservation(&system, OrderId::new(), Some("AAAA".into())).await;
    assert!(
        !forged
            .headers
            .contains_key(eventline_events::auth::SERVICE_CREDENTIAL_HEADER),
        "catalog signed its refusal of a forged step: {:?}",
        forged.headers
    );
    assert!(check(&forged).is_err());
    // The real step, signed by orders, gets a reply orders can verify as catalog's.
    let order = OrderId::new();
    let body = {
        let step = eventline_events::catalog::CatalogCommand::from(
            eventline_events::catalog::ReserveStock {
                product_id: eventline_events::values::ProductId::parse("tea".into()).unwrap(),
                order_id: order,
                quantity: eventline_events::values::Quantity::parse(1).unwrap(),
            },
        );
        OutgoingMessage::new(Metadata::origin("catalog.reserve_stock"), &step).body
    };
    let credential = token::service_credential(
        &system.signing_key(Service::Orders),
        &step_id(order, "reserve/tea").to_string(),
        "catalog.reserve_stock",
        &body,
    );
    let genuine = reply_to_reservation(&system, order, Some(credential)).await;
    assert_eq!(check(&genuine), Ok(()));
    system.stop().await;
}
