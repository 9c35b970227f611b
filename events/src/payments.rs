//! The payments service's contract (the seed's Server D): charges and refunds per order.
//!
//! One stream per order (`payments.payment-{order_id}`) makes every command idempotent per
//! order: a redelivered or repeated charge never charges twice.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{Money, OrderId, StreamId};

pub const PAYMENT_STREAM_CATEGORY: &str = "payments.payment";

/// The payment stream of an order.
pub fn payment_stream(order_id: OrderId) -> StreamId {
    StreamId::new(PAYMENT_STREAM_CATEGORY, order_id)
}

/// A tokenized card (never a card number): `tok_` followed by 1 to 60 letters, digits or `_`.
///
/// The simulated provider knows `tok_visa` (approves), `tok_declined`, `tok_insufficient_funds`,
/// `tok_slow` (approves after a long delay) and `tok_provider_error` (fails transiently).
// `Debug` shows `CardToken(***)`: a command logged with `{:?}` must not leak the token.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct CardToken(#[schemars(regex(pattern = r"^tok_[A-Za-z0-9_]{1,60}$"))] String);

impl CardToken {
    pub fn parse(value: String) -> Result<Self, String> {
        let rest = value.strip_prefix("tok_").unwrap_or("");
        if (1..=60).contains(&rest.len())
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            Ok(Self(value))
        } else {
            Err("card must be a card token like tok_visa, never a card number".to_owned())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for CardToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardToken(***)")
    }
}

impl<'de> Deserialize<'de> for CardToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// Authorizes and captures `amount` for an order. Idempotent per order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChargePayment {
    pub order_id: OrderId,
    pub amount: Money,
    pub card: CardToken,
}

/// Refunds an order's captured payment; closes the payment if nothing was captured, so a late
/// charge is refused. Idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundPayment {
    pub order_id: OrderId,
}

wire_enum! {
    /// Every command the payments service accepts.
    pub enum PaymentsCommand {
        ChargePayment(ChargePayment) = "payments.charge_payment",
        RefundPayment(RefundPayment) = "payments.refund_payment",
    }
}

impl PaymentsCommand {
    pub fn order_id(&self) -> OrderId {
        match self {
            Self::ChargePayment(c) => c.order_id,
            Self::RefundPayment(c) => c.order_id,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentAuthorized {
    pub order_id: OrderId,
    pub amount: Money,
    /// The provider's reference for the authorization.
    pub authorization: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentCaptured {
    pub order_id: OrderId,
    pub amount: Money,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentDeclined {
    pub order_id: OrderId,
    pub amount: Money,
    /// `declined` or `insufficient_funds`.
    pub reason: String,
}

/// `amount` is 0 when nothing had been captured: the refund only closed the payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefunded {
    pub order_id: OrderId,
    pub amount: Money,
}

wire_enum! {
    /// Every event the payments service records.
    pub enum PaymentsEvent {
        PaymentAuthorized(PaymentAuthorized) = "payments.payment_authorized",
        PaymentCaptured(PaymentCaptured) = "payments.payment_captured",
        PaymentDeclined(PaymentDeclined) = "payments.payment_declined",
        PaymentRefunded(PaymentRefunded) = "payments.payment_refunded",
    }
}
