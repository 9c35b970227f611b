//! The orders service (the seed's Server C): an event-sourced saga (process manager) that
//! carries an order across catalog and payments, with compensation.
//!
//! ```text
//! place_order ─▶ OrderPlaced ─▶ reserve_stock × lines ─┬─ all reserved ─▶ PaymentRequested ─▶ charge_payment
//!      │                        (+ expire_order, delayed) └─ one refused ─▶ OrderRejected ─▶ release × lines
//!      │                                       charge accepted ─▶ OrderConfirmed ─▶ commit_reservation × lines
//!      │                                       charge refused  ─▶ OrderCancelled ─▶ release × lines
//!      └ expire_order before a terminal state ─▶ OrderCancelled(timeout) ─▶ release × lines (+ refund)
//! ```
//!
//! Everything the saga sends has a deterministic message id (UUIDv5 of the order id and the
//! step), so a re-sent step is deduplicated by its receiver, and a reply is matched to its
//! step by its causation id. The timer is a message waiting in RabbitMQ, so it survives any
//! worker's restart. The saga is pure: [`Order::decide`] and [`Order::dispatch`] do no I/O.

pub mod cards;
pub mod projection;
pub mod queries;
#[cfg(test)]
mod tests;

use eventline_events::auth::{Role, UserId};
use eventline_events::catalog::{CommitReservation, ReleaseReservation, ReserveStock};
use eventline_events::orders::{
    ExpireOrder, LineReserved, OrderCancelled, OrderConfirmed, OrderLines, OrderPlaced,
    OrderRejected, OrdersCommand, OrdersEvent, PaymentRequested, order_stream,
};
use eventline_events::payments::{CardToken, ChargePayment, RefundPayment};
use eventline_events::values::{Money, OrderId, ProductId, Quantity, StreamId};
use eventline_events::{CorrelationId, MessageId, Metadata, Reply, Service};

use crate::runtime::token::TokenError;
use crate::runtime::{Aggregate, Context, Dispatch, RejectionReason, State};

pub use cards::OrdersHandler;
pub use projection::OrdersProjection;
pub use queries::OrdersQueries;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrdersRejection {
    #[error("{0}")]
    Unauthenticated(TokenError),
    #[error("order {0} already exists for another customer; choose a new order id")]
    OrderExists(OrderId),
    /// The same customer placed this order id before with other content. `difference` names
    /// what differs; it never quotes a card token.
    #[error(
        "order {order_id} was already placed with {difference}; a placed order never changes: \
         re-send it unchanged to see it, or place a new order under a new order id"
    )]
    OrderDiffers {
        order_id: OrderId,
        difference: String,
    },
    #[error(
        "placing an order needs the customer role; this token is a {0:?}'s (log in as a customer)"
    )]
    Forbidden(Role),
}

impl RejectionReason for OrdersRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(e) => e.code(),
            Self::OrderExists(_) | Self::OrderDiffers { .. } => "order_exists",
            Self::Forbidden(_) => "forbidden",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Reserving,
    Paying,
    Confirmed,
    Rejected,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Confirmed | Self::Rejected | Self::Cancelled)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub product_id: ProductId,
    pub quantity: Quantity,
    pub unit_price: Option<Money>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub order_id: OrderId,
    pub customer_id: UserId,
    pub lines: Vec<Line>,
    pub status: Status,
    pub payment_requested: Option<Money>,
}

/// An order's stream state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Order(Option<Placed>);

impl Order {
    pub fn placed(&self) -> Option<&Placed> {
        self.0.as_ref()
    }
}

/// The message id of one step of an order: the same every time the step is sent.
pub fn step_id(order_id: OrderId, step: &str) -> MessageId {
    MessageId::from_uuid(uuid::Uuid::new_v5(&order_id.as_uuid(), step.as_bytes()))
}

/// The steps payments answers; catalog answers all the others that expect a reply.
const PAYMENTS_STEPS: [&str; 2] = ["charge", "refund"];

/// Which step a reply answers.
enum Step {
    Reserve(usize),
    Charge,
    Other,
}

impl Placed {
    fn step_of(&self, ctx: &Context<'_>) -> Step {
        let cause = ctx.metadata.causation_id.as_uuid();
        if cause == step_id(self.order_id, "charge").as_uuid() {
            return Step::Charge;
        }
        self.lines
            .iter()
            .position(|l| {
                cause == step_id(self.order_id, &format!("reserve/{}", l.product_id)).as_uuid()
            })
            .map_or(Step::Other, Step::Reserve)
    }

    /// What `command` (the same order id, the same customer) says differently from the order
    /// as placed, for a person: `None` when it is the same order. Lines compare as a set (their
    /// order changes nothing).
    fn difference_from(&self, command: &eventline_events::orders::PlaceOrder) -> Option<String> {
        let placed: std::collections::BTreeMap<&ProductId, Quantity> = self
            .lines
            .iter()
            .map(|l| (&l.product_id, l.quantity))
            .collect();
        let sent: std::collections::BTreeMap<&ProductId, Quantity> = command
            .lines
            .iter()
            .map(|l| (&l.product_id, l.quantity))
            .collect();
        let show = |lines: &std::collections::BTreeMap<&ProductId, Quantity>| {
            lines
                .iter()
                .map(|(product, quantity)| format!("{product} x{}", quantity.get()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut differences = Vec::new();
        if placed != sent {
            differences.push(format!(
                "other lines (placed: {}; this command: {})",
                show(&placed),
                show(&sent)
            ));
        }
        // The card is not in the order's events (it stays in the service's private table), so
        // `OrdersHandler` compares it after this decision: see `cards::card_differs`.
        (!differences.is_empty()).then(|| differences.join(" and "))
    }

    fn total(&self) -> Option<Money> {
        self.lines.iter().try_fold(Money::ZERO, |sum, line| {
            line.unit_price?
                .times(line.quantity)
                .and_then(|m| sum.plus(m))
        })
    }
}

impl State for Order {
    type Event = OrdersEvent;

    fn apply(&mut self, event: &OrdersEvent) {
        if let OrdersEvent::OrderPlaced(e) = event {
            self.0 = Some(Placed {
                order_id: e.order_id,
                customer_id: e.customer_id,
                lines: e
                    .lines
                    .iter()
                    .map(|l| Line {
                        product_id: l.product_id.clone(),
                        quantity: l.quantity,
                        unit_price: None,
                    })
                    .collect(),
                status: Status::Reserving,
                payment_requested: None,
            });
            return;
        }
        let Some(order) = self.0.as_mut() else { return };
        match event {
            OrdersEvent::OrderPlaced(_) | OrdersEvent::RefundRequested(_) => {}
            OrdersEvent::LineReserved(e) => {
                if let Some(line) = order
                    .lines
                    .iter_mut()
                    .find(|l| l.product_id == e.product_id)
                {
                    line.unit_price = Some(e.unit_price);
                }
            }
            OrdersEvent::PaymentRequested(e) => {
                order.status = Status::Paying;
                order.payment_requested = Some(e.amount);
            }
            OrdersEvent::OrderConfirmed(_) => order.status = Status::Confirmed,
            OrdersEvent::OrderRejected(_) => order.status = Status::Rejected,
            OrdersEvent::OrderCancelled(_) => order.status = Status::Cancelled,
        }
    }
}

impl Aggregate for Order {
    type Command = OrdersCommand;
    type Rejection = OrdersRejection;
    const SERVICE: Service = Service::Orders;
    const CONSUMES_REPLIES: bool = true;

    fn stream_id(command: &OrdersCommand, ctx: &Context<'_>) -> StreamId {
        match command {
            OrdersCommand::PlaceOrder(c) => order_stream(c.order_id),
            OrdersCommand::ExpireOrder(c) => order_stream(c.order_id),
            // The order is the conversation: replies carry its id as correlation id.
            OrdersCommand::StepReply(_) => {
                order_stream(OrderId::from_uuid(ctx.metadata.correlation_id.as_uuid()))
            }
        }
    }

    /// The timeout is a message orders sends itself; from anyone else it would cancel an
    /// order in flight.
    fn only_from_saga(command: &OrdersCommand) -> bool {
        matches!(command, OrdersCommand::ExpireOrder(_))
    }

    /// A reply to the charge or the refund is payments' word; a reply to anything else
    /// (reservations, releases, commits) must be catalog's. Decided from the reply's own ids
    /// (the order is its correlation id, the step its causation id, the same two that
    /// [`Order::stream_id`] and `step_of` read), so no state is needed before the check.
    fn answered_by(command: &OrdersCommand, metadata: &Metadata) -> Option<Service> {
        let OrdersCommand::StepReply(_) = command else {
            return None;
        };
        let order_id = OrderId::from_uuid(metadata.correlation_id.as_uuid());
        let cause = metadata.causation_id.as_uuid();
        let payments = PAYMENTS_STEPS
            .iter()
            .any(|step| step_id(order_id, step).as_uuid() == cause);
        Some(if payments {
            Service::Payments
        } else {
            Service::Catalog
        })
    }

    fn decide(
        &self,
        command: &OrdersCommand,
        ctx: &Context<'_>,
    ) -> Result<Vec<OrdersEvent>, OrdersRejection> {
        match (command, &self.0) {
            (OrdersCommand::PlaceOrder(c), existing) => {
                let customer = ctx.principal.as_ref().map_err(|e| OrdersRejection::Unauthenticated(e.clone()))?;
                if customer.role != Role::Customer {
                    return Err(OrdersRejection::Forbidden(customer.role));
                }
                match existing {
                    // The order id is the order's natural key: the identical order again (a
                    // client's retry under a new message id) is a success with no new effect;
                    // other lines or another card under the same id are refused.
                    Some(order) if order.customer_id == customer.user_id => {
                        match order.difference_from(c) {
                            None => Ok(vec![]),
                            Some(difference) => Err(OrdersRejection::OrderDiffers {
                                order_id: c.order_id,
                                difference,
                            }),
                        }
                    }
                    Some(_) => Err(OrdersRejection::OrderExists(c.order_id)),
                    None => Ok(vec![
                        OrderPlaced {
                            order_id: c.order_id,
                            customer_id: customer.user_id,
                            lines: c.lines.clone(),
                        }
                        .into(),
                    ]),
                }
            }
            (OrdersCommand::ExpireOrder(_), Some(order)) if !order.status.is_terminal() => Ok(vec![
                OrderCancelled {
                    order_id: order.order_id,
                    code: "timeout".into(),
                    reason: format!(
                        "catalog or payments did not answer within {} ms; the order was cancelled and its stock released",
                        ctx.config.saga_timeout.as_millis()
                    ),
                }
                .into(),
            ]),
            (OrdersCommand::ExpireOrder(_), _) => Ok(vec![]),
            (OrdersCommand::StepReply(_), None) => Ok(vec![]),
            (OrdersCommand::StepReply(reply), Some(order)) => Ok(on_reply(order, reply, ctx)),
        }
    }

    fn dispatch(&self, event: &OrdersEvent, ctx: &Context<'_>) -> Vec<Dispatch> {
        let Some(order) = &self.0 else { return vec![] };
        let id = order.order_id;
        let correlation = CorrelationId::from_uuid(id.as_uuid());
        let per_line = |step: &str,
                        make: &dyn Fn(&Line) -> eventline_events::catalog::CatalogCommand|
         -> Vec<Dispatch> {
            order
                .lines
                .iter()
                .map(|line| {
                    Dispatch::command(
                        Service::Catalog,
                        step_id(id, &format!("{step}/{}", line.product_id)),
                        correlation,
                        ctx.metadata,
                        &make(line),
                    )
                })
                .collect()
        };
        let release = || {
            per_line("release", &|l| {
                ReleaseReservation {
                    product_id: l.product_id.clone(),
                    order_id: id,
                }
                .into()
            })
        };
        match event {
            OrdersEvent::OrderPlaced(_) => {
                let mut out = per_line("reserve", &|l| {
                    ReserveStock {
                        product_id: l.product_id.clone(),
                        order_id: id,
                        quantity: l.quantity,
                    }
                    .into()
                });
                out.push(
                    Dispatch::command(
                        Service::Orders,
                        step_id(id, "expire"),
                        correlation,
                        ctx.metadata,
                        &OrdersCommand::from(ExpireOrder { order_id: id }),
                    )
                    .delayed(ctx.config.saga_timeout),
                );
                out
            }
            // The charge needs the card, which no event carries: [`OrdersHandler`] reads it
            // from the service's private table and dispatches [`charge`].
            OrdersEvent::PaymentRequested(_) => vec![],
            OrdersEvent::OrderConfirmed(_) => per_line("commit", &|l| {
                CommitReservation {
                    product_id: l.product_id.clone(),
                    order_id: id,
                }
                .into()
            }),
            OrdersEvent::OrderRejected(_) => release(),
            OrdersEvent::OrderCancelled(_) => {
                let mut out = release();
                if order.payment_requested.is_some() {
                    out.push(Dispatch::command(
                        Service::Payments,
                        step_id(id, "refund"),
                        correlation,
                        ctx.metadata,
                        &eventline_events::payments::PaymentsCommand::from(RefundPayment {
                            order_id: id,
                        }),
                    ));
                }
                out
            }
            OrdersEvent::LineReserved(_) | OrdersEvent::RefundRequested(_) => vec![],
        }
    }
}

/// What a reply from catalog or payments means for the order.
fn on_reply(order: &Placed, reply: &Reply, ctx: &Context<'_>) -> Vec<OrdersEvent> {
    let id = order.order_id;
    match (order.step_of(ctx), reply) {
        (Step::Reserve(i), _)
            if order.status != Status::Reserving || order.lines[i].unit_price.is_some() =>
        {
            vec![]
        }
        (Step::Reserve(i), Reply::Accepted { events, .. }) => {
            let line = &order.lines[i];
            let price = events
                .iter()
                .find(|e| e.message_type == "catalog.stock_reserved")
                .and_then(|e| e.data.get("unit_price")?.as_u64())
                .and_then(|p| Money::parse(p).ok());
            let Some(unit_price) = price else {
                return vec![cancel(
                    id,
                    "protocol_error",
                    format!(
                        "catalog accepted the reservation of {} without saying its price",
                        line.product_id
                    ),
                )];
            };
            let mut out: Vec<OrdersEvent> = vec![
                LineReserved {
                    order_id: id,
                    product_id: line.product_id.clone(),
                    quantity: line.quantity,
                    unit_price,
                }
                .into(),
            ];
            let mut after = order.clone();
            after.lines[i].unit_price = Some(unit_price);
            if after.lines.iter().all(|l| l.unit_price.is_some()) {
                match after.total() {
                    Some(amount) => out.push(
                        PaymentRequested {
                            order_id: id,
                            amount,
                        }
                        .into(),
                    ),
                    None => out.push(
                        OrderRejected {
                            order_id: id,
                            code: "amount_too_large".into(),
                            reason: "the order's total is over the payment limit".into(),
                        }
                        .into(),
                    ),
                }
            }
            out
        }
        (Step::Reserve(i), Reply::Rejected { reason }) => vec![
            OrderRejected {
                order_id: id,
                code: reason.code.clone(),
                reason: format!("product {}: {}", order.lines[i].product_id, reason.message),
            }
            .into(),
        ],
        (Step::Charge, _) if order.status != Status::Paying => vec![],
        (Step::Charge, Reply::Accepted { .. }) => vec![
            OrderConfirmed {
                order_id: id,
                total: order.payment_requested.unwrap_or(Money::ZERO),
            }
            .into(),
        ],
        (Step::Charge, Reply::Rejected { reason }) => {
            vec![cancel(id, &reason.code, reason.message.clone())]
        }
        // Replies to releases, commits and refunds change nothing: they are idempotent
        // compensations whose success the saga does not wait for.
        (Step::Other, _) => vec![],
    }
}

/// The saga's charge step: asks payments to charge `amount` to `card` for the order.
pub fn charge(order_id: OrderId, amount: Money, card: CardToken, ctx: &Context<'_>) -> Dispatch {
    Dispatch::command(
        Service::Payments,
        step_id(order_id, "charge"),
        CorrelationId::from_uuid(order_id.as_uuid()),
        ctx.metadata,
        &eventline_events::payments::PaymentsCommand::from(ChargePayment {
            order_id,
            amount,
            card,
        }),
    )
}

fn cancel(order_id: OrderId, code: &str, reason: String) -> OrdersEvent {
    OrderCancelled {
        order_id,
        code: code.to_owned(),
        reason,
    }
    .into()
}

/// The lines of an order, for clients building `orders.place_order`.
pub fn lines(items: &[(ProductId, Quantity)]) -> Result<OrderLines, String> {
    OrderLines::parse(
        items
            .iter()
            .map(|(p, q)| eventline_events::orders::OrderLine {
                product_id: p.clone(),
                quantity: *q,
            })
            .collect(),
    )
}

#[cfg(test)]
mod natural_key {
    use eventline_events::orders::PlaceOrder;

    use super::*;
    use crate::runtime::handler::testing::TestContext;

    fn card(token: &str) -> CardToken {
        CardToken::parse(token.into()).unwrap()
    }

    fn place(order_id: OrderId, items: &[(&str, u32)], token: &str) -> OrdersCommand {
        let items: Vec<(ProductId, Quantity)> = items
            .iter()
            .map(|(p, q)| {
                (
                    ProductId::parse((*p).into()).unwrap(),
                    Quantity::parse(*q).unwrap(),
                )
            })
            .collect();
        PlaceOrder {
            order_id,
            lines: lines(&items).unwrap(),
            card: card(token),
        }
        .into()
    }

    /// An order placed by `customer`: mug x1 and tea x2, paid with tok_visa.
    fn given_placed(order_id: OrderId, customer: UserId) -> Order {
        let mut order = Order::default();
        let OrdersCommand::PlaceOrder(c) = place(order_id, &[("mug", 1), ("tea", 2)], "tok_visa")
        else {
            unreachable!()
        };
        order.apply(
            &OrderPlaced {
                order_id,
                customer_id: customer,
                lines: c.lines,
            }
            .into(),
        );
        order
    }

    #[test]
    fn the_identical_order_again_is_a_success_with_no_new_event() {
        let (id, customer) = (OrderId::new(), UserId::new());
        let order = given_placed(id, customer);
        let ctx = TestContext::customer(customer);
        // Lines in another order are the same order.
        let again = place(id, &[("tea", 2), ("mug", 1)], "tok_visa");
        assert_eq!(order.decide(&again, &ctx.ctx()), Ok(vec![]));
    }

    #[test]
    fn the_same_order_id_with_other_lines_is_refused_naming_the_difference() {
        let (id, customer) = (OrderId::new(), UserId::new());
        let order = given_placed(id, customer);
        let ctx = TestContext::customer(customer);

        let other_lines = place(id, &[("mug", 3)], "tok_visa");
        let refused = order.decide(&other_lines, &ctx.ctx()).unwrap_err();
        assert_eq!(refused.code(), "order_exists");
        let reason = refused.to_string();
        assert!(
            reason.contains("other lines (placed: mug x1, tea x2; this command: mug x3)"),
            "{reason}"
        );
        assert!(!reason.contains("card"), "{reason}");

        // Another card is refused by `OrdersHandler`, which holds the cards (`idempotency.rs`).
        let other_card = place(id, &[("mug", 1), ("tea", 2)], "tok_mastercard_secret");
        assert_eq!(order.decide(&other_card, &ctx.ctx()), Ok(vec![]));
    }

    #[test]
    fn another_customer_reusing_the_order_id_learns_nothing_about_the_order() {
        let id = OrderId::new();
        let order = given_placed(id, UserId::new());
        let ctx = TestContext::customer(UserId::new());
        let refused = order
            .decide(&place(id, &[("mug", 3)], "tok_visa"), &ctx.ctx())
            .unwrap_err();
        assert_eq!(refused, OrdersRejection::OrderExists(id));
        assert!(!refused.to_string().contains("mug"));
    }
}
