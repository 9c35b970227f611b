//! The conformance suite every [`PaymentProvider`] must pass: one shared set of checks, run
//! against each implementation (the simulated one today, a real provider's sandbox next), as
//! Watermill's `TestPubSub` is for its transports.
//!
//! Each check takes a fresh provider and the card tokens that provoke each behaviour on it;
//! [`provider_conformance!`](crate::provider_conformance) turns the whole suite into
//! `#[tokio::test]`s. The checks use fresh order ids only, so they may share a sandbox. They
//! never assert speed: a slow answer must only be the right answer.

use std::time::Duration;

use eventline_events::payments::CardToken;
use eventline_events::values::{Money, OrderId};

use super::provider::{Authorization, PaymentProvider};

/// The card tokens that make a provider approve, decline, and so on.
#[derive(Clone, Copy, Debug)]
pub struct TestCards {
    pub approved: &'static str,
    pub declined: &'static str,
    pub insufficient_funds: &'static str,
    /// Fails transiently (the provider is unavailable) on every call.
    pub transient: &'static str,
    /// Approved, after a long delay.
    pub slow: &'static str,
}

impl TestCards {
    /// The simulated provider's cards (see the README's test-card table).
    pub const SIMULATED: TestCards = TestCards {
        approved: "tok_visa",
        declined: "tok_declined",
        insufficient_funds: "tok_insufficient_funds",
        transient: "tok_provider_error",
        slow: "tok_slow",
    };
}

/// How long any one call of the suite may take before the check fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

fn card(token: &str) -> CardToken {
    CardToken::parse(token.to_owned()).expect("a test card token")
}

fn amount() -> Money {
    Money::parse(1250).expect("a small amount")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {PATIENCE:?}"))
}

/// The same key twice gets the same answer, and a repeated capture charges once.
pub async fn an_idempotency_key_is_charged_once<P: PaymentProvider>(p: &P, cards: TestCards) {
    let order = OrderId::new();
    let first = within(
        "authorize",
        p.authorize(order, amount(), &card(cards.approved)),
    )
    .await
    .expect("an answer");
    let Authorization::Approved { .. } = &first else {
        panic!("{} was not approved: {first:?}", cards.approved);
    };
    within("capture", p.capture(order, amount())).await.unwrap();
    let again = within(
        "authorize",
        p.authorize(order, amount(), &card(cards.approved)),
    )
    .await
    .expect("an answer");
    within("capture", p.capture(order, amount())).await.unwrap();
    assert_eq!(again, first, "the same key got a different answer");
    assert_eq!(
        within("charged", p.charged(order)).await.unwrap(),
        amount(),
        "a repeated authorize and capture under one key must charge once"
    );
}

/// A declined card is an answer (not an error), repeated under the same key, charging nothing.
pub async fn a_declined_card_is_declined_and_charges_nothing<P: PaymentProvider>(
    p: &P,
    cards: TestCards,
) {
    for (token, reason) in [
        (cards.declined, "declined"),
        (cards.insufficient_funds, "insufficient_funds"),
    ] {
        let order = OrderId::new();
        for _ in 0..2 {
            let answer = within("authorize", p.authorize(order, amount(), &card(token)))
                .await
                .expect("an answer");
            assert_eq!(answer, Authorization::Declined { reason }, "card {token}");
        }
        within("capture", p.capture(order, amount())).await.unwrap();
        assert_eq!(
            within("charged", p.charged(order)).await.unwrap(),
            Money::ZERO
        );
    }
}

/// A transient failure is an error the caller may retry, and charges nothing.
pub async fn a_transient_failure_is_retryable_and_charges_nothing<P: PaymentProvider>(
    p: &P,
    cards: TestCards,
) {
    let order = OrderId::new();
    let failed = within(
        "authorize",
        p.authorize(order, amount(), &card(cards.transient)),
    )
    .await;
    let error = failed.expect_err("the transient card must fail");
    assert!(
        !error.to_string().contains(cards.transient) || cards.transient.starts_with("tok_"),
        "an error may name the test card, never a real card"
    );
    assert_eq!(
        within("charged", p.charged(order)).await.unwrap(),
        Money::ZERO
    );
}

/// A slow answer is still the right one, and a retry after it charges nothing more.
pub async fn a_slow_answer_is_the_right_answer<P: PaymentProvider>(p: &P, cards: TestCards) {
    let order = OrderId::new();
    let answer = within("authorize", p.authorize(order, amount(), &card(cards.slow)))
        .await
        .expect("an answer");
    assert!(
        matches!(answer, Authorization::Approved { .. }),
        "{answer:?}"
    );
    within("capture", p.capture(order, amount())).await.unwrap();
    let retried = within("authorize", p.authorize(order, amount(), &card(cards.slow)))
        .await
        .expect("an answer");
    assert_eq!(retried, answer);
    assert_eq!(within("charged", p.charged(order)).await.unwrap(), amount());
}

/// A refund returns a capture once; a refund before any charge, and a repeated one, are
/// no-ops; a refund before the charge's authorization leaves nothing captured after it.
pub async fn a_refund_returns_the_charge_once<P: PaymentProvider>(p: &P, cards: TestCards) {
    let order = OrderId::new();
    within(
        "authorize",
        p.authorize(order, amount(), &card(cards.approved)),
    )
    .await
    .unwrap();
    within("capture", p.capture(order, amount())).await.unwrap();
    within("refund", p.refund(order)).await.unwrap();
    within("refund", p.refund(order)).await.unwrap();
    assert_eq!(
        within("charged", p.charged(order)).await.unwrap(),
        Money::ZERO
    );

    let never_charged = OrderId::new();
    within("refund", p.refund(never_charged)).await.unwrap();
    within(
        "authorize",
        p.authorize(never_charged, amount(), &card(cards.approved)),
    )
    .await
    .unwrap();
    within("capture", p.capture(never_charged, amount()))
        .await
        .unwrap();
    assert_eq!(
        within("charged", p.charged(never_charged)).await.unwrap(),
        Money::ZERO,
        "a refund is final: an authorization under its key afterwards captures nothing"
    );
}

/// The whole suite as `#[tokio::test]`s: `provider_conformance!(make_provider(), cards)`,
/// where the first expression makes a fresh provider for each test.
#[macro_export]
macro_rules! provider_conformance {
    ($provider:expr, $cards:expr) => {
        #[tokio::test]
        async fn conformance_an_idempotency_key_is_charged_once() {
            $crate::services::payments::conformance::an_idempotency_key_is_charged_once(
                &$provider, $cards,
            )
            .await;
        }
        #[tokio::test]
        async fn conformance_a_declined_card_is_declined_and_charges_nothing() {
            $crate::services::payments::conformance::a_declined_card_is_declined_and_charges_nothing(
                &$provider, $cards,
            )
            .await;
        }
        #[tokio::test]
        async fn conformance_a_transient_failure_is_retryable_and_charges_nothing() {
            $crate::services::payments::conformance::a_transient_failure_is_retryable_and_charges_nothing(
                &$provider, $cards,
            )
            .await;
        }
        #[tokio::test]
        async fn conformance_a_slow_answer_is_the_right_answer() {
            $crate::services::payments::conformance::a_slow_answer_is_the_right_answer(
                &$provider, $cards,
            )
            .await;
        }
        #[tokio::test]
        async fn conformance_a_refund_returns_the_charge_once() {
            $crate::services::payments::conformance::a_refund_returns_the_charge_once(
                &$provider, $cards,
            )
            .await;
        }
    };
}
