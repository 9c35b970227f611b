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

pub mod projection;
pub mod queries;

use eventline_events::auth::{Role, UserId};
use eventline_events::catalog::{CommitReservation, ReleaseReservation, ReserveStock};
use eventline_events::orders::{
    ExpireOrder, LineReserved, OrderCancelled, OrderConfirmed, OrderLines, OrderPlaced,
    OrderRejected, OrdersCommand, OrdersEvent, PaymentRequested, order_stream,
};
use eventline_events::payments::{CardToken, ChargePayment, RefundPayment};
use eventline_events::values::{Money, OrderId, ProductId, Quantity, StreamId};
use eventline_events::{CorrelationId, MessageId, Reply, Service};

use crate::runtime::token::TokenError;
use crate::runtime::{Aggregate, Context, Dispatch, RejectionReason, State};

pub use projection::OrdersProjection;
pub use queries::OrdersQueries;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrdersRejection {
    #[error("{0}")]
    Unauthenticated(TokenError),
    #[error("order {0} already exists for another customer; choose a new order id")]
    OrderExists(OrderId),
    #[error(
        "placing an order needs the customer role; this token is a {0:?}'s (log in as a customer)"
    )]
    Forbidden(Role),
}

impl RejectionReason for OrdersRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(e) => e.code(),
            Self::OrderExists(_) => "order_exists",
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
    pub card: CardToken,
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
                card: e.card.clone(),
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
                    Some(order) if order.customer_id == customer.user_id => Ok(vec![]),
                    Some(_) => Err(OrdersRejection::OrderExists(c.order_id)),
                    None => Ok(vec![
                        OrderPlaced {
                            order_id: c.order_id,
                            customer_id: customer.user_id,
                            lines: c.lines.clone(),
                            card: c.card.clone(),
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
            OrdersEvent::PaymentRequested(e) => vec![Dispatch::command(
                Service::Payments,
                step_id(id, "charge"),
                correlation,
                ctx.metadata,
                &eventline_events::payments::PaymentsCommand::from(ChargePayment {
                    order_id: id,
                    amount: e.amount,
                    card: order.card.clone(),
                }),
            )],
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
