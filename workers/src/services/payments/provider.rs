//! The payment-provider seam, and a simulated provider with deterministic test cards.
//!
//! Every call carries the order id as idempotency key, as real providers (Stripe, Adyen)
//! accept: a retried call after a crash must not charge twice.

use std::future::Future;

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

/// A payment provider. Implementations must be idempotent per order id.
pub trait PaymentProvider: Send + Sync + 'static {
    fn authorize(
        &self,
        order_id: OrderId,
        amount: Money,
        card: &CardToken,
    ) -> impl Future<Output = Result<Authorization, ProviderUnavailable>> + Send;

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
}

/// A provider that answers by card token, with configurable latency and failure rate.
#[derive(Clone, Debug, Default)]
pub struct SimulatedProvider {
    settings: PaymentSettings,
}

impl SimulatedProvider {
    pub fn new(settings: PaymentSettings) -> Self {
        Self { settings }
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
}

impl PaymentProvider for SimulatedProvider {
    async fn authorize(
        &self,
        order_id: OrderId,
        _amount: Money,
        card: &CardToken,
    ) -> Result<Authorization, ProviderUnavailable> {
        self.call().await?;
        match card.as_str() {
            "tok_visa" | "tok_mastercard" => Ok(Authorization::Approved {
                reference: format!("sim_{order_id}"),
            }),
            "tok_slow" => {
                tokio::time::sleep(self.settings.slow_delay).await;
                Ok(Authorization::Approved {
                    reference: format!("sim_slow_{order_id}"),
                })
            }
            "tok_declined" => Ok(Authorization::Declined { reason: "declined" }),
            "tok_insufficient_funds" => Ok(Authorization::Declined {
                reason: "insufficient_funds",
            }),
            "tok_provider_error" => Err(ProviderUnavailable(
                "simulated provider error (tok_provider_error)".into(),
            )),
            _ => Ok(Authorization::Declined {
                reason: "unknown_card",
            }),
        }
    }

    async fn capture(&self, _order_id: OrderId, _amount: Money) -> Result<(), ProviderUnavailable> {
        self.call().await
    }

    async fn refund(&self, _order_id: OrderId) -> Result<(), ProviderUnavailable> {
        self.call().await
    }
}
