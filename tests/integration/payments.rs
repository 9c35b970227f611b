//! Payments' step outside the transaction (intent, keyed provider call, answer) commits each
//! statement without a WAL flush of its own. That is sound only because the message's own
//! transaction, which alone precedes the reply and the ack, still commits synchronously on
//! the same connection and so flushes them with it: this checks that the relaxed setting
//! ends with its statement.

use eventline_events::payments::{CardToken, ChargePayment, PaymentsCommand, RefundPayment};
use eventline_events::values::{Money, OrderId};
use eventline_workers::runtime::Handler;
use eventline_workers::runtime::handler::testing::TestContext;
use eventline_workers::runtime::store::EventStore;
use eventline_workers::services::payments::PaymentsHandler;
use eventline_workers::services::payments::provider::SimulatedProvider;

use crate::support::TestSystem;

/// `synchronous_commit` as the pool's one connection has it now, alone and in a transaction.
async fn commits_synchronously(store: &EventStore) -> (String, String) {
    let alone: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(store.pool())
        .await
        .expect("the setting");
    let mut tx = store.pool().begin().await.expect("a transaction");
    let inside: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut *tx)
        .await
        .expect("the setting");
    tx.commit().await.expect("commit");
    (alone, inside)
}

#[tokio::test]
async fn the_outside_steps_relaxed_commits_end_with_their_statements() {
    let system = TestSystem::start().await;
    // One connection, so every statement below runs on the one the handler used.
    let store = EventStore::connect(&system.config.database_url, 1)
        .await
        .expect("a pool of one");
    let handler = PaymentsHandler::new(SimulatedProvider::new(system.config.payments.clone()));
    let ctx = TestContext::admin();
    let charged = OrderId::new();
    let charge = PaymentsCommand::ChargePayment(ChargePayment {
        order_id: charged,
        amount: Money::parse(1250).unwrap(),
        card: CardToken::parse("tok_visa".into()).unwrap(),
    });
    handler
        .outside(&store, &ctx.ctx(), &charge)
        .await
        .expect("the charge's outside step");
    let (reference, answered): (Option<String>, bool) = sqlx::query_as(
        "SELECT reference, answered_at IS NOT NULL FROM payment_attempts WHERE order_id = $1",
    )
    .bind(charged.as_uuid())
    .fetch_one(store.pool())
    .await
    .expect("the attempt row");
    assert!(
        reference.is_some() && answered,
        "the intent and the answer are recorded"
    );
    assert_eq!(
        commits_synchronously(&store).await,
        ("on".to_owned(), "on".to_owned()),
        "after the charge's statements the connection commits synchronously again"
    );

    let refunded = OrderId::new();
    let refund = PaymentsCommand::RefundPayment(RefundPayment { order_id: refunded });
    handler
        .outside(&store, &ctx.ctx(), &refund)
        .await
        .expect("the refund's outside step");
    let requested: bool =
        sqlx::query_scalar("SELECT refund_requested FROM payment_attempts WHERE order_id = $1")
            .bind(refunded.as_uuid())
            .fetch_one(store.pool())
            .await
            .expect("the refund's mark");
    assert!(requested, "the refund is marked");
    assert_eq!(
        commits_synchronously(&store).await,
        ("on".to_owned(), "on".to_owned()),
        "after the refund's statement too"
    );
    system.stop().await;
}
