//! The payments service (the seed's Server D): charges and refunds, one stream per order.
//!
//! A custom handler because the provider call sits between loading the stream and appending.
//! The stream makes it idempotent per order: a charge finds the earlier outcome and repeats it;
//! a refund that arrives before a (slow) charge closes the payment, and the charge that then
//! loses the append race re-decides on the closed stream and releases at the provider instead.

pub mod provider;

use eventline_events::payments::{
    ChargePayment, PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentRefunded,
    PaymentsCommand, PaymentsEvent, RefundPayment, payment_stream,
};
use eventline_events::values::Money;
use eventline_events::{Rejection, Reply, Service};

use self::provider::{Authorization, PaymentProvider};
use crate::runtime::State;
use crate::runtime::aggregate::{accepted, load, new_events};
use crate::runtime::handler::{Context, Handled, Handler, HandlerError};
use crate::runtime::store::{CommandTx, EventMetadata};

/// A payment's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Payment {
    #[default]
    None,
    Captured {
        amount: Money,
    },
    Declined {
        reason: String,
    },
    /// Refunded (`amount` > 0) or closed before any charge (`amount` = 0).
    Refunded {
        amount: Money,
    },
}

impl State for Payment {
    type Event = PaymentsEvent;

    fn apply(&mut self, event: &PaymentsEvent) {
        *self = match event {
            PaymentsEvent::PaymentAuthorized(_) => return,
            PaymentsEvent::PaymentCaptured(e) => Payment::Captured { amount: e.amount },
            PaymentsEvent::PaymentDeclined(e) => Payment::Declined {
                reason: e.reason.clone(),
            },
            PaymentsEvent::PaymentRefunded(e) => Payment::Refunded { amount: e.amount },
        };
    }
}

pub struct PaymentsHandler<P> {
    provider: P,
}

impl<P: PaymentProvider> PaymentsHandler<P> {
    pub fn new(provider: P) -> Self {
        Self { provider }
    }
}

impl<P: PaymentProvider> Handler for PaymentsHandler<P> {
    type Command = PaymentsCommand;
    const SERVICE: Service = Service::Payments;

    /// Money moves only when the order saga asks: every payments command needs orders'
    /// service credential, checked by the worker before this handler runs.
    fn only_from_saga(&self, _command: &PaymentsCommand) -> bool {
        true
    }

    async fn handle(
        &self,
        tx: &mut CommandTx,
        ctx: &Context<'_>,
        command: &PaymentsCommand,
    ) -> Result<Handled, HandlerError> {
        let stream_id = payment_stream(command.order_id());
        let (payment, version) = load::<Payment>(tx, &stream_id).await?;
        let transient = |e: provider::ProviderUnavailable| HandlerError::Transient(e.to_string());
        let (events, rejection): (Vec<PaymentsEvent>, Option<Rejection>) = match (command, &payment)
        {
            (PaymentsCommand::ChargePayment(c), Payment::None) => {
                match self
                    .provider
                    .authorize(c.order_id, c.amount, &c.card)
                    .await
                    .map_err(transient)?
                {
                    Authorization::Approved { reference } => {
                        self.provider
                            .capture(c.order_id, c.amount)
                            .await
                            .map_err(transient)?;
                        (captured(c, reference), None)
                    }
                    Authorization::Declined { reason } => (
                        vec![
                            PaymentDeclined {
                                order_id: c.order_id,
                                amount: c.amount,
                                reason: reason.into(),
                            }
                            .into(),
                        ],
                        Some(declined(reason)),
                    ),
                }
            }
            (PaymentsCommand::ChargePayment(_), Payment::Captured { .. }) => (vec![], None),
            (PaymentsCommand::ChargePayment(_), Payment::Declined { reason }) => {
                (vec![], Some(declined(reason)))
            }
            (PaymentsCommand::ChargePayment(c), Payment::Refunded { .. }) => {
                // Closed by a refund (the order was cancelled). A racing attempt may have
                // authorized at the provider before losing the append: release it.
                self.provider.refund(c.order_id).await.map_err(transient)?;
                (
                    vec![],
                    Some(Rejection::new(
                        "payment_closed",
                        format!(
                            "order {}'s payment was closed (the order was cancelled); nothing was charged",
                            c.order_id
                        ),
                    )),
                )
            }
            (PaymentsCommand::RefundPayment(r), Payment::Captured { amount }) => {
                self.provider.refund(r.order_id).await.map_err(transient)?;
                (vec![refunded(r, *amount)], None)
            }
            (PaymentsCommand::RefundPayment(r), Payment::None) => {
                self.provider.refund(r.order_id).await.map_err(transient)?;
                (vec![refunded(r, Money::ZERO)], None)
            }
            (
                PaymentsCommand::RefundPayment(_),
                Payment::Declined { .. } | Payment::Refunded { .. },
            ) => (vec![], None),
        };
        let new_events = new_events(&events);
        tx.append(
            &stream_id,
            version,
            &new_events,
            &EventMetadata::for_command(ctx),
        )
        .await?;
        let reply = match rejection {
            Some(reason) => Reply::Rejected { reason },
            None => accepted(stream_id, version, new_events, None),
        };
        Ok(Handled::reply(reply))
    }
}

fn captured(c: &ChargePayment, reference: String) -> Vec<PaymentsEvent> {
    vec![
        PaymentAuthorized {
            order_id: c.order_id,
            amount: c.amount,
            authorization: reference,
        }
        .into(),
        PaymentCaptured {
            order_id: c.order_id,
            amount: c.amount,
        }
        .into(),
    ]
}

fn refunded(r: &RefundPayment, amount: Money) -> PaymentsEvent {
    PaymentRefunded {
        order_id: r.order_id,
        amount,
    }
    .into()
}

fn declined(reason: &str) -> Rejection {
    let message = match reason {
        "insufficient_funds" => "the card has insufficient funds; use another card",
        "unknown_card" => "the card token is not known to the provider; use another card",
        _ => "the card was declined; use another card",
    };
    Rejection::new(format!("payment_{reason}"), message)
}
