//! The payment-provider seam, and a simulated provider with deterministic test cards.
//!
//! Every call carries the order id as idempotency key, as real providers (Stripe, Adyen)
//! accept: a repeated call — a redelivery, a retry after a crash between the call and the
//! record of its answer — returns the first answer and never charges twice. The payments
//! handler calls a provider only with no database transaction open (see `super`); nothing
//! here may log or return a card token.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use eventline_events::payments::CardToken;
use eventline_events::values::{Money, OrderId};

use crate::runtime::config::PaymentSettings;

/// What a provider answered to an authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authorization {
    Approved {
        reference: String,
    },
    /// `declined`, `insufficient_funds` or `unknown_card`.
    Declined {
        reason: &'static str,
    },
}

/// The provider could not answer; the call may succeed if retried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the payment provider is unavailable: {0}")]
pub struct ProviderUnavailable(pub String);

/// A payment provider. Implementations must be idempotent per order id (the idempotency
/// key): the same key gets the same authorization, a repeated capture or refund moves no
/// more money. [`super::conformance`] is the suite every implementation must pass.
pub trait PaymentProvider: Send + Sync + 'static {
    fn authorize(
        &self,
        order_id: OrderId,
        amount: Money,
        card: &CardToken,
    ) -> impl Future<Output = Result<Authorization, ProviderUnavailable>> + Send;

    /// Captures what `order_id`'s authorization holds; once, however often it is called.
    fn capture(
        &self,
        order_id: OrderId,
        amount: Money,
    ) -> impl Future<Output = Result<(), ProviderUnavailable>> + Send;

    /// Returns captured money, or releases an authorization; a no-op if there is neither.
    fn refund(
        &self,
        order_id: OrderId,
    ) -> impl Future<Output = Result<(), ProviderUnavailable>> + Send;

    /// What the provider holds for `order_id` now: captured minus refunded. For
    /// reconciliation and the conformance suite.
    fn charged(
        &self,
        order_id: OrderId,
    ) -> impl Future<Output = Result<Money, ProviderUnavailable>> + Send;
}

/// The simulated provider's books for one order (idempotency key).
#[derive(Clone, Debug, Default)]
struct Entry {
    authorization: Option<Authorization>,
    authorized: Option<Money>,
    captured: bool,
    refunded: bool,
}

/// A provider that answers by card token, with configurable latency and failure rate. It
/// keeps its books per process (per replica), like a provider keyed by order id would.
#[derive(Clone, Debug, Default)]
pub struct SimulatedProvider {
    settings: PaymentSettings,
    books: Arc<Mutex<HashMap<OrderId, Entry>>>,
}

impl SimulatedProvider {
    pub fn new(settings: PaymentSettings) -> Self {
        Self {
            settings,
            books: Arc::default(),
        }
    }

    async fn call(&self) -> Result<(), ProviderUnavailable> {
        if !self.settings.latency.is_zero() {
            tokio::time::sleep(self.settings.latency).await;
        }
        if self.settings.failure_percent > 0
            && fastrand::u32(0..100) < self.settings.failure_percent
        {
            return Err(ProviderUnavailable(
                "simulated outage (EVENTLINE_PAYMENT_FAILURE_PERCENT)".into(),
            ));
        }
        Ok(())
    }

    fn with_entry<T>(&self, order_id: OrderId, f: impl FnOnce(&mut Entry) -> T) -> T {
        // A poisoned lock only means another call panicked mid-update of a plain struct.
        let mut books = self.books.lock().unwrap_or_else(|e| e.into_inner());
        f(books.entry(order_id).or_default())
    }
}

impl PaymentProvider for SimulatedProvider {
    async fn authorize(
        &self,
        order_id: OrderId,
        amount: Money,
        card: &CardToken,
    ) -> Result<Authorization, ProviderUnavailable> {
        if let Some(first) = self.with_entry(order_id, |e| e.authorization.clone()) {
            return Ok(first);
        }
        self.call().await?;
        let answer = match card.as_str() {
            "tok_visa" | "tok_mastercard" => Authorization::Approved {
                reference: format!("sim_{order_id}"),
            },
            "tok_slow" => {
                tokio::time::sleep(self.settings.slow_delay).await;
                Authorization::Approved {
                    reference: format!("sim_slow_{order_id}"),
                }
            }
            "tok_declined" => Authorization::Declined { reason: "declined" },
            "tok_insufficient_funds" => Authorization::Declined {
                reason: "insufficient_funds",
            },
            "tok_provider_error" => {
                return Err(ProviderUnavailable(
                    "simulated provider error (tok_provider_error)".into(),
                ));
            }
            _ => Authorization::Declined {
                reason: "unknown_card",
            },
        };
        // Two concurrent first calls with one key: the first answer recorded wins.
        Ok(self.with_entry(order_id, |e| {
            if e.authorization.is_none() {
                if matches!(answer, Authorization::Approved { .. }) && !e.refunded {
                    e.authorized = Some(amount);
                }
                e.authorization = Some(answer);
            }
            e.authorization
                .clone()
                .unwrap_or(Authorization::Declined { reason: "declined" })
        }))
    }

    async fn capture(&self, order_id: OrderId, _amount: Money) -> Result<(), ProviderUnavailable> {
        self.call().await?;
        self.with_entry(order_id, |e| {
            if !e.refunded && e.authorized.is_some() {
                e.captured = true;
            }
        });
        Ok(())
    }

    async fn refund(&self, order_id: OrderId) -> Result<(), ProviderUnavailable> {
        self.call().await?;
        self.with_entry(order_id, |e| e.refunded = true);
        Ok(())
    }

    async fn charged(&self, order_id: OrderId) -> Result<Money, ProviderUnavailable> {
        Ok(self.with_entry(order_id, |e| match e.authorized {
            Some(amount) if e.captured && !e.refunded => amount,
            _ => Money::ZERO,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn simulated() -> SimulatedProvider {
        SimulatedProvider::new(PaymentSettings {
            slow_delay: Duration::from_millis(200),
            ..PaymentSettings::default()
        })
    }

    crate::provider_conformance!(simulated(), super::super::conformance::TestCards::SIMULATED);
}
