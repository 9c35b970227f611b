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

use super::provider::{Authorization, PaymentProvider, ProviderUnavailable};

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

/// `p.authorize(order, amount(), token)`: its answer or its error, within [`PATIENCE`].
async fn authorize<P: PaymentProvider>(
    p: &P,
    order: OrderId,
    token: &str,
) -> Result<Authorization, ProviderUnavailable> {
    within("authorize", p.authorize(order, amount(), &card(token))).await
}

/// Captures `amount()` for `order`, which must succeed within [`PATIENCE`].
async fn capture<P: PaymentProvider>(p: &P, order: OrderId) {
    within("capture", p.capture(order, amount()))
        .await
        .unwrap_or_else(|e| panic!("capture of {order}: {e}"));
}

/// Refunds `order`, which must succeed within [`PATIENCE`].
async fn refund<P: PaymentProvider>(p: &P, order: OrderId) {
    within("refund", p.refund(order))
        .await
        .unwrap_or_else(|e| panic!("refund of {order}: {e}"));
}

/// What the provider holds for `order`, within [`PATIENCE`].
async fn charged<P: PaymentProvider>(p: &P, order: OrderId) -> Money {
    within("charged", p.charged(order))
        .await
        .unwrap_or_else(|e| panic!("charged for {order}: {e}"))
}

/// The same key twice gets the same answer, and a repeated capture charges once.
pub async fn an_idempotency_key_is_charged_once<P: PaymentProvider>(p: &P, cards: TestCards) {
    let order = OrderId::new();
    let first = authorize(p, order, cards.approved)
        .await
        .expect("an answer");
    let Authorization::Approved { .. } = &first else {
        panic!("{} was not approved: {first:?}", cards.approved);
    };
    capture(p, order).await;
    let again = authorize(p, order, cards.approved)
        .await
        .expect("an answer");
    capture(p, order).await;
    assert_eq!(again, first, "the same key got a different answer");
    assert_eq!(
        charged(p, order).await,
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
            let answer = authorize(p, order, token).await.expect("an answer");
            assert_eq!(answer, Authorization::Declined { reason }, "card {token}");
        }
        capture(p, order).await;
        assert_eq!(charged(p, order).await, Money::ZERO);
    }
}

/// A transient failure is an error the caller may retry, and charges nothing.
pub async fn a_transient_failure_is_retryable_and_charges_nothing<P: PaymentProvider>(
    p: &P,
    cards: TestCards,
) {
    let order = OrderId::new();
    let failed = authorize(p, order, cards.transient).await;
    let error = failed.expect_err("the transient card must fail");
    assert!(
        !error.to_string().contains(cards.transient) || cards.transient.starts_with("tok_"),
        "an error may name the test card, never a real card"
    );
    assert_eq!(charged(p, order).await, Money::ZERO);
}

/// A slow answer is still the right one, and a retry after it charges nothing more.
pub async fn a_slow_answer_is_the_right_answer<P: PaymentProvider>(p: &P, cards: TestCards) {
    let order = OrderId::new();
    let answer = authorize(p, order, cards.slow).await.expect("an answer");
    assert!(
        matches!(answer, Authorization::Approved { .. }),
        "{answer:?}"
    );
    capture(p, order).await;
    let retried = authorize(p, order, cards.slow).await.expect("an answer");
    assert_eq!(retried, answer);
    assert_eq!(charged(p, order).await, amount());
}

/// A refund returns a capture once; a refund before any charge, and a repeated one, are
/// no-ops; a refund before the charge's authorization leaves nothing captured after it.
pub async fn a_refund_returns_the_charge_once<P: PaymentProvider>(p: &P, cards: TestCards) {
    let order = OrderId::new();
    authorize(p, order, cards.approved).await.unwrap();
    capture(p, order).await;
    refund(p, order).await;
    refund(p, order).await;
    assert_eq!(charged(p, order).await, Money::ZERO);

    let never_charged = OrderId::new();
    refund(p, never_charged).await;
    authorize(p, never_charged, cards.approved).await.unwrap();
    capture(p, never_charged).await;
    assert_eq!(
        charged(p, never_charged).await,
        Money::ZERO,
        "a refund is final: an authorization under its key afterwards captures nothing"
    );
}

/// The whole suite as `#[tokio::test]`s: `provider_conformance!(make_provider(), cards)`,
/// where the first expression makes a fresh provider for each test. One test per check,
/// named `conformance_` and the check's name, from one list: a new check is one line here.
#[macro_export]
macro_rules! provider_conformance {
    ($provider:expr, $cards:expr) => {
        $crate::provider_conformance!(@checks $provider, $cards;
            conformance_an_idempotency_key_is_charged_once => an_idempotency_key_is_charged_once,
            conformance_a_declined_card_is_declined_and_charges_nothing => a_declined_card_is_declined_and_charges_nothing,
            conformance_a_transient_failure_is_retryable_and_charges_nothing => a_transient_failure_is_retryable_and_charges_nothing,
            conformance_a_slow_answer_is_the_right_answer => a_slow_answer_is_the_right_answer,
            conformance_a_refund_returns_the_charge_once => a_refund_returns_the_charge_once,
        );
    };
    (@checks $provider:expr, $cards:expr; $($test:ident => $check:ident,)*) => {
        $(
            #[tokio::test]
            async fn $test() {
                $crate::services::payments::conformance::$check(&$provider, $cards).await;
            }
        )*
    };
}
