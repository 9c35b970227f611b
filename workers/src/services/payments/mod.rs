//! The payments service (the seed's Server D): charges and refunds, one stream per order.
//!
//! No provider call ever happens inside a database transaction (a slow provider would hold
//! the transaction, its locks and the log's append lock for as long as it takes). Handling a
//! command is three short steps, each alone:
//!
//! 1. [`Handler::outside`], with no transaction open: record the intent in
//!    `payment_attempts` (one statement), call the provider keyed by the order id (its
//!    idempotency key: a repeat returns the first answer and charges nothing more), record
//!    the answer (one statement). A redelivery finds the answer recorded and does not call.
//! 2. [`Handler::handle`], in the message's transaction: load the stream, read the recorded
//!    answer, append the outcome, reply. A crash anywhere before its commit only repeats
//!    steps that are idempotent.
//!
//! The statements of step 1 commit asynchronously (`synchronous_commit` off for that one
//! statement, set in it): on this machine a WAL flush is 3.5 ms, and an order's charge waited
//! for two of them before its own transaction's. That loses nothing that matters. PostgreSQL
//! writes its log in order, so step 2's synchronous commit, which alone precedes the reply
//! and the ack, flushes these rows with it; a crash before then loses at most the last of
//! them, which is the same as crashing before they ran: the message is redelivered and step
//! 1 runs again, and the provider, keyed by the order id, charges nothing twice.
//!
//! Cancellation races a slow charge: the refund marks the attempt `refund_requested` and
//! releases at the provider; the charge reads that flag in the same statement that records
//! its answer and releases what it authorized. Both write the one row, so whichever writes
//! second sees the other. Must never log or store a card token.

pub mod conformance;
pub mod provider;

use eventline_events::payments::{
    ChargePayment, PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentRefunded,
    PaymentsCommand, PaymentsEvent, RefundPayment, payment_stream,
};
use eventline_events::values::{Money, OrderId};
use eventline_events::{Rejection, Reply, Service};
use sqlx::PgConnection;

use self::provider::{Authorization, PaymentProvider, ProviderUnavailable};
use crate::runtime::State;
use crate::runtime::aggregate::{accepted, append_events, load};
use crate::runtime::handler::{Context, Handled, Handler, HandlerError};
use crate::runtime::store::{CommandTx, EventStore, StoreError};

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

/// What `payment_attempts` says about an order's charge.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attempt {
    /// The provider's answer, recorded after the call.
    Answered(Authorization),
    /// No answer recorded, and a refund was asked for: the charge must not happen.
    Closed,
    /// No answer recorded yet (the call failed, or the intent was never written).
    Unanswered,
}

type AttemptRow = (Option<String>, Option<String>, bool);

fn attempt((reference, declined, refund_requested): AttemptRow) -> Attempt {
    match (reference, declined) {
        (Some(reference), _) => Attempt::Answered(Authorization::Approved { reference }),
        (None, Some(reason)) => Attempt::Answered(Authorization::Declined {
            reason: decline_reason(&reason),
        }),
        (None, None) if refund_requested => Attempt::Closed,
        (None, None) => Attempt::Unanswered,
    }
}

/// The reasons the provider seam knows; anything else stored reads as a plain decline.
fn decline_reason(stored: &str) -> &'static str {
    match stored {
        "insufficient_funds" => "insufficient_funds",
        "unknown_card" => "unknown_card",
        _ => "declined",
    }
}

pub struct PaymentsHandler<P> {
    provider: P,
}

impl<P: PaymentProvider> PaymentsHandler<P> {
    pub fn new(provider: P) -> Self {
        Self { provider }
    }

    /// Step 1 of a charge: intent, provider call, answer — never inside a transaction.
    async fn charge_outside(
        &self,
        store: &EventStore,
        c: &ChargePayment,
    ) -> Result<(), HandlerError> {
        let order = c.order_id.as_uuid();
        // The intent, alone (autocommit). A redelivery finds it, with the answer if there is one.
        let row: AttemptRow = sqlx::query_as(
            "INSERT INTO payment_attempts (order_id, amount) \
             SELECT $1, $2 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed \
             ON CONFLICT (order_id) DO UPDATE SET amount = coalesce(payment_attempts.amount, EXCLUDED.amount) \
             RETURNING reference, declined, refund_requested",
        )
        .bind(order)
        .bind(c.amount.minor_units() as i64)
        .fetch_one(store.pool())
        .await
        .map_err(db)?;
        match attempt(row) {
            Attempt::Answered(_) => return Ok(()),
            Attempt::Closed => {
                // Cancelled before any answer was recorded. An earlier attempt may have
                // reached the provider before crashing: release whatever it holds (a no-op
                // if nothing).
                return self.release(c.order_id).await;
            }
            Attempt::Unanswered => {}
        }
        let answer = match self.provider.authorize(c.order_id, c.amount, &c.card).await {
            Ok(Authorization::Approved { reference }) => {
                self.provider
                    .capture(c.order_id, c.amount)
                    .await
                    .map_err(unavailable)?;
                Authorization::Approved { reference }
            }
            Ok(declined) => declined,
            Err(error) => return Err(unavailable(error)),
        };
        let (reference, declined) = match &answer {
            Authorization::Approved { reference } => (Some(reference.as_str()), None),
            Authorization::Declined { reason } => (None, Some(*reason)),
        };
        // The answer, alone; in the same statement, whether a refund was asked for meanwhile.
        let refund_requested: bool = sqlx::query_scalar(
            "UPDATE payment_attempts SET reference = $2, declined = $3, answered_at = now() \
             FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed \
             WHERE order_id = $1 RETURNING refund_requested",
        )
        .bind(order)
        .bind(reference)
        .bind(declined)
        .fetch_one(store.pool())
        .await
        .map_err(db)?;
        if refund_requested && reference.is_some() {
            self.release(c.order_id).await?;
        }
        Ok(())
    }

    /// Step 1 of a refund: mark the attempt, then release at the provider (idempotent; a
    /// no-op if nothing is held), with no transaction open.
    async fn refund_outside(
        &self,
        store: &EventStore,
        r: &RefundPayment,
    ) -> Result<(), HandlerError> {
        sqlx::query(
            "INSERT INTO payment_attempts (order_id, refund_requested) \
             SELECT $1, true FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed \
             ON CONFLICT (order_id) DO UPDATE SET refund_requested = true",
        )
        .bind(r.order_id.as_uuid())
        .execute(store.pool())
        .await
        .map_err(db)?;
        self.release(r.order_id).await
    }

    async fn release(&self, order_id: OrderId) -> Result<(), HandlerError> {
        self.provider.refund(order_id).await.map_err(unavailable)
    }
}

/// A provider outage: retry later (the worker's transient path).
fn unavailable(error: ProviderUnavailable) -> HandlerError {
    HandlerError::Transient(error.to_string())
}

fn db(error: sqlx::Error) -> HandlerError {
    HandlerError::Store(StoreError::from(error))
}

async fn recorded_attempt(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Attempt, StoreError> {
    let row: Option<AttemptRow> = sqlx::query_as(
        "SELECT reference, declined, refund_requested FROM payment_attempts WHERE order_id = $1",
    )
    .bind(order_id.as_uuid())
    .fetch_optional(conn)
    .await?;
    Ok(row.map_or(Attempt::Unanswered, attempt))
}

impl<P: PaymentProvider> Handler for PaymentsHandler<P> {
    type Command = PaymentsCommand;
    const SERVICE: Service = Service::Payments;

    /// Money moves only when the order saga asks: every payments command needs orders'
    /// service credential, checked by the worker before this handler runs.
    fn only_from_saga(&self, _command: &PaymentsCommand) -> bool {
        true
    }

    async fn outside(
        &self,
        store: &EventStore,
        _ctx: &Context<'_>,
        command: &PaymentsCommand,
    ) -> Result<(), HandlerError> {
        // The sender was checked already: the worker refuses a step without orders'
        // credential before any of this runs (`only_from_saga`).
        match command {
            PaymentsCommand::ChargePayment(c) => self.charge_outside(store, c).await,
            PaymentsCommand::RefundPayment(r) => self.refund_outside(store, r).await,
        }
    }

    async fn handle(
        &self,
        tx: &mut CommandTx,
        ctx: &Context<'_>,
        command: &PaymentsCommand,
    ) -> Result<Handled, HandlerError> {
        let stream_id = payment_stream(command.order_id());
        let (payment, version) = load::<Payment>(tx, &stream_id).await?;
        let (events, rejection): (Vec<PaymentsEvent>, Option<Rejection>) = match (command, &payment)
        {
            (PaymentsCommand::ChargePayment(c), Payment::None) => {
                match recorded_attempt(tx.conn(), c.order_id).await? {
                    Attempt::Answered(Authorization::Approved { reference }) => {
                        (captured(c, reference), None)
                    }
                    Attempt::Answered(Authorization::Declined { reason }) => (
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
                    // Cancelled before the provider answered: close the payment here; the
                    // refund that arrives (or arrived) finds it closed.
                    Attempt::Closed => (vec![closed(c.order_id)], Some(payment_closed(c.order_id))),
                    Attempt::Unanswered => {
                        return Err(HandlerError::Transient(format!(
                            "no provider answer is recorded for order {}'s charge yet",
                            c.order_id
                        )));
                    }
                }
            }
            (PaymentsCommand::ChargePayment(_), Payment::Captured { .. }) => (vec![], None),
            (PaymentsCommand::ChargePayment(_), Payment::Declined { reason }) => {
                (vec![], Some(declined(reason)))
            }
            // Closed by a refund (the order was cancelled); what this charge authorized was
            // released in its outside step, which saw the refund request.
            (PaymentsCommand::ChargePayment(c), Payment::Refunded { .. }) => {
                (vec![], Some(payment_closed(c.order_id)))
            }
            // The provider released it in the refund's outside step.
            (PaymentsCommand::RefundPayment(r), Payment::Captured { amount }) => {
                (vec![refunded(r, *amount)], None)
            }
            (PaymentsCommand::RefundPayment(r), Payment::None) => {
                (vec![refunded(r, Money::ZERO)], None)
            }
            (
                PaymentsCommand::RefundPayment(_),
                Payment::Declined { .. } | Payment::Refunded { .. },
            ) => (vec![], None),
        };
        let new_events = append_events(tx, ctx, &stream_id, version, &events).await?;
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

fn closed(order_id: OrderId) -> PaymentsEvent {
    PaymentRefunded {
        order_id,
        amount: Money::ZERO,
    }
    .into()
}

fn payment_closed(order_id: OrderId) -> Rejection {
    Rejection::new(
        "payment_closed",
        format!(
            "order {order_id}'s payment was closed (the order was cancelled); nothing was charged"
        ),
    )
}

fn declined(reason: &str) -> Rejection {
    let message = match reason {
        "insufficient_funds" => "the card has insufficient funds; use another card",
        "unknown_card" => "the card token is not known to the provider; use another card",
        _ => "the card was declined; use another card",
    };
    Rejection::new(format!("payment_{reason}"), message)
}
