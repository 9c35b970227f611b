//! The order saga, path by path, as cqrs-es reads: given the order's events, when a command,
//! a reply or the timer arrives, then these events are recorded and these messages sent.
//!
//! No broker and no database: `decide`, `apply` and `dispatch` are pure, and the helpers here
//! chain them the way `AggregateHandler` does. Replies are built as catalog and payments
//! build them (typed events through the runtime's `accepted`), and what the saga sends is
//! decoded back through the typed contract — never compared as strings or JSON fields. Events
//! and commands are made by the small constructor functions below, so a change to the
//! contract (a field added to or removed from `OrderPlaced`, say) is a change in one place.

use std::time::Duration;

use eventline_events::catalog::{CatalogCommand, CatalogEvent, StockReserved};
use eventline_events::orders::{OrderLine, PlaceOrder, RefundRequested};
use eventline_events::payments::{
    PaymentAuthorized, PaymentCaptured, PaymentsCommand, payment_stream,
};
use eventline_events::reply::REPLY_TYPE;
use eventline_events::{Contract, Metadata, Rejection};

use super::*;
use crate::runtime::aggregate::{accepted, new_events};
use crate::runtime::handler::Destination;
use crate::runtime::handler::testing::TestContext;

// ---------------------------------------------------------------------------------------------
// The cast: one order, its customer, its products.

fn order_id() -> OrderId {
    OrderId::from_uuid(uuid::Uuid::from_u128(
        0x0193_0000_0000_7000_8000_0000_0000_0001,
    ))
}

fn customer() -> UserId {
    UserId::from_uuid(uuid::Uuid::from_u128(
        0x0193_0000_0000_7000_8000_0000_0000_00c1,
    ))
}

fn someone_else() -> UserId {
    UserId::from_uuid(uuid::Uuid::from_u128(
        0x0193_0000_0000_7000_8000_0000_0000_00c2,
    ))
}

fn product(name: &str) -> ProductId {
    ProductId::parse(name.to_owned()).expect("a valid product id")
}

fn qty(n: u32) -> Quantity {
    Quantity::parse(n).expect("a valid quantity")
}

fn money(minor_units: u64) -> Money {
    Money::parse(minor_units).expect("a valid amount")
}

fn card() -> CardToken {
    CardToken::parse("tok_visa".into()).expect("a valid card token")
}

/// Two lines: 2 × tea, 1 × mug.
const TWO_LINES: &[(&str, u32)] = &[("tea", 2), ("mug", 1)];

fn order_lines(lines: &[(&str, u32)]) -> OrderLines {
    OrderLines::parse(
        lines
            .iter()
            .map(|&(p, n)| OrderLine {
                product_id: product(p),
                quantity: qty(n),
            })
            .collect(),
    )
    .expect("valid order lines")
}

/// The saga's timeout in the test configuration, as the timeout's reason states it.
fn saga_timeout() -> Duration {
    TestContext::anonymous().config.saga_timeout
}

// ---------------------------------------------------------------------------------------------
// The order's events (given, and then expected).

fn placed(lines: &[(&str, u32)]) -> OrdersEvent {
    OrderPlaced {
        order_id: order_id(),
        customer_id: customer(),
        lines: order_lines(lines),
    }
    .into()
}

fn line_reserved(p: &str, n: u32, unit_price: u64) -> OrdersEvent {
    LineReserved {
        order_id: order_id(),
        product_id: product(p),
        quantity: qty(n),
        unit_price: money(unit_price),
    }
    .into()
}

fn payment_requested(amount: u64) -> OrdersEvent {
    PaymentRequested {
        order_id: order_id(),
        amount: money(amount),
    }
    .into()
}

fn confirmed(total: u64) -> OrdersEvent {
    OrderConfirmed {
        order_id: order_id(),
        total: money(total),
    }
    .into()
}

fn rejected(code: &str, reason: &str) -> OrdersEvent {
    OrderRejected {
        order_id: order_id(),
        code: code.into(),
        reason: reason.into(),
    }
    .into()
}

fn cancelled(code: &str, reason: &str) -> OrdersEvent {
    OrderCancelled {
        order_id: order_id(),
        code: code.into(),
        reason: reason.into(),
    }
    .into()
}

fn timed_out() -> OrdersEvent {
    cancelled(
        "timeout",
        &format!(
            "catalog or payments did not answer within {} ms; the order was cancelled and its stock released",
            saga_timeout().as_millis()
        ),
    )
}

/// Both lines of [`TWO_LINES`] reserved (tea at 350, mug at 1200) and the payment requested.
fn paying() -> Vec<OrdersEvent> {
    vec![
        placed(TWO_LINES),
        line_reserved("tea", 2, 350),
        line_reserved("mug", 1, 1200),
        payment_requested(1900),
    ]
}

// ---------------------------------------------------------------------------------------------
// Commands the orders service receives from clients and from itself.

fn place(lines: &[(&str, u32)]) -> OrdersCommand {
    PlaceOrder {
        order_id: order_id(),
        lines: order_lines(lines),
        card: card(),
    }
    .into()
}

fn expire() -> OrdersCommand {
    ExpireOrder {
        order_id: order_id(),
    }
    .into()
}

// ---------------------------------------------------------------------------------------------
// Steps (what a reply answers: its causation id is the step's message id) and the replies
// catalog and payments send, built as their handlers build them.

/// One message the saga sends, named as `step_id` names it.
#[derive(Clone, Debug)]
struct SagaStep(String);

impl SagaStep {
    fn id(&self) -> MessageId {
        step_id(order_id(), &self.0)
    }
}

fn reserve(p: &str) -> SagaStep {
    SagaStep(format!("reserve/{p}"))
}
fn release(p: &str) -> SagaStep {
    SagaStep(format!("release/{p}"))
}
fn commit(p: &str) -> SagaStep {
    SagaStep(format!("commit/{p}"))
}
fn charge() -> SagaStep {
    SagaStep("charge".into())
}
fn refund() -> SagaStep {
    SagaStep("refund".into())
}
fn timer() -> SagaStep {
    SagaStep("expire".into())
}

/// The catalog's reply to a reservation it made: its `StockReserved` event, as the aggregate
/// runtime reports it.
fn stock_reserved(p: &str, n: u32, unit_price: u64) -> Reply {
    let event = CatalogEvent::from(StockReserved {
        product_id: product(p),
        order_id: order_id(),
        quantity: qty(n),
        unit_price: money(unit_price),
    });
    accepted(product(p).stream_id(), 1, new_events(&[event]), None)
}

/// An accepted reply that recorded nothing ("already done").
fn accepted_nothing(stream_id: StreamId) -> Reply {
    accepted(stream_id, 3, Vec::new(), None)
}

/// Payments' reply to a charge it captured.
fn captured(amount: u64) -> Reply {
    let events: Vec<eventline_events::payments::PaymentsEvent> = vec![
        PaymentAuthorized {
            order_id: order_id(),
            amount: money(amount),
            authorization: "auth_1".into(),
        }
        .into(),
        PaymentCaptured {
            order_id: order_id(),
            amount: money(amount),
        }
        .into(),
    ];
    accepted(payment_stream(order_id()), 0, new_events(&events), None)
}

fn refused(code: &str, message: &str) -> Reply {
    Reply::Rejected {
        reason: Rejection::new(code, message),
    }
}

// ---------------------------------------------------------------------------------------------
// What the saga sends, decoded through the contract.

#[derive(Clone, Debug, PartialEq)]
enum Sent {
    Catalog(MessageId, CatalogCommand),
    Payments(MessageId, PaymentsCommand),
    /// A command to the orders service itself, through its delay queue.
    Timer(MessageId, OrdersCommand, Duration),
}

fn sends_reserve(p: &str, n: u32) -> Sent {
    Sent::Catalog(
        reserve(p).id(),
        ReserveStock {
            product_id: product(p),
            order_id: order_id(),
            quantity: qty(n),
        }
        .into(),
    )
}

fn sends_release(p: &str) -> Sent {
    Sent::Catalog(
        release(p).id(),
        ReleaseReservation {
            product_id: product(p),
            order_id: order_id(),
        }
        .into(),
    )
}

fn sends_commit(p: &str) -> Sent {
    Sent::Catalog(
        commit(p).id(),
        CommitReservation {
            product_id: product(p),
            order_id: order_id(),
        }
        .into(),
    )
}

fn sends_charge(amount: u64) -> Sent {
    Sent::Payments(
        charge().id(),
        ChargePayment {
            order_id: order_id(),
            amount: money(amount),
            card: card(),
        }
        .into(),
    )
}

fn sends_refund() -> Sent {
    Sent::Payments(
        refund().id(),
        RefundPayment {
            order_id: order_id(),
        }
        .into(),
    )
}

fn sends_timer() -> Sent {
    Sent::Timer(timer().id(), expire(), saga_timeout())
}

// ---------------------------------------------------------------------------------------------
// given / when / then.

/// An order's state, and who sends the next message.
struct Given {
    order: Order,
    ctx: TestContext,
}

fn given(events: &[OrdersEvent]) -> Given {
    let mut order = Order::default();
    for event in events {
        order.apply(event);
    }
    Given {
        order,
        ctx: TestContext::customer(customer()),
    }
}

/// No order yet.
fn nothing() -> Given {
    given(&[])
}

impl Given {
    /// The next message comes with another principal (or none).
    fn from(mut self, ctx: TestContext) -> Self {
        self.ctx = ctx;
        self
    }

    /// A command with a fresh envelope, in the order's conversation.
    fn when(mut self, command: OrdersCommand) -> Then {
        let mut metadata = Metadata::origin(command.message_type());
        metadata.correlation_id = CorrelationId::from_uuid(order_id().as_uuid());
        self.ctx.metadata = metadata;
        self.decide(command)
    }

    /// The timer the saga set when the order was placed, come due.
    fn when_timer_fires(mut self) -> Then {
        let command = expire();
        let mut metadata = Metadata::origin(command.message_type());
        metadata.message_id = timer().id();
        metadata.correlation_id = CorrelationId::from_uuid(order_id().as_uuid());
        self.ctx = TestContext::anonymous();
        self.ctx.metadata = metadata;
        self.decide(command)
    }

    /// `reply` to the saga's `step`, in the envelope a service's reply has: the order's
    /// correlation id, the step's message id as causation, no token.
    fn when_reply(mut self, step: SagaStep, reply: Reply) -> Then {
        let cause = Metadata {
            message_id: step.id(),
            correlation_id: CorrelationId::from_uuid(order_id().as_uuid()),
            ..Metadata::origin(REPLY_TYPE)
        };
        self.ctx = TestContext::anonymous();
        self.ctx.metadata = Metadata::caused_by(&cause, REPLY_TYPE);
        self.decide(OrdersCommand::from(reply))
    }

    fn decide(self, command: OrdersCommand) -> Then {
        let ctx = self.ctx.ctx();
        assert_eq!(
            Order::stream_id(&command, &ctx),
            order_stream(order_id()),
            "every message of the conversation is about the order's stream"
        );
        let decided = self.order.decide(&command, &ctx);
        Then {
            order: self.order,
            ctx: self.ctx,
            decided,
        }
    }
}

struct Then {
    order: Order,
    ctx: TestContext,
    decided: Result<Vec<OrdersEvent>, OrdersRejection>,
}

impl Then {
    /// Exactly these events are recorded.
    #[track_caller]
    fn then_expect(self, expected: &[OrdersEvent]) -> Self {
        match &self.decided {
            Ok(events) => assert_eq!(events, expected, "recorded events"),
            Err(rejection) => panic!("expected {expected:?}, got the rejection {rejection:?}"),
        }
        self
    }

    /// Accepted, and nothing changes (a duplicate, a late reply, a timer for nothing).
    #[track_caller]
    fn then_nothing_happens(self) {
        self.then_expect(&[]).then_send(&[]);
    }

    /// Refused with this code, recording nothing.
    #[track_caller]
    fn then_expect_rejection(self, code: &str) {
        match self.decided {
            Err(rejection) => assert_eq!(rejection.code(), code, "{rejection}"),
            Ok(events) => panic!("expected the rejection {code}, got the events {events:?}"),
        }
    }

    /// After the recorded events, the saga sends exactly these messages, in this order, each
    /// in the order's conversation and caused by the message just handled.
    #[track_caller]
    fn then_send(self, expected: &[Sent]) {
        let events = self.decided.expect("accepted");
        let ctx = self.ctx.ctx();
        let mut state = self.order;
        let mut dispatched = Vec::new();
        // As `OrdersHandler` does: each event applied, then its dispatches taken; a payment
        // request is charged with the card the order was placed with (kept out of the events,
        // in the service's private table).
        for event in &events {
            state.apply(event);
            dispatched.extend(state.dispatch(event, &ctx));
            if let OrdersEvent::PaymentRequested(requested) = event {
                dispatched.push(super::charge(
                    requested.order_id,
                    requested.amount,
                    card(),
                    &ctx,
                ));
            }
        }
        let sent: Vec<Sent> = dispatched
            .into_iter()
            .map(|d| {
                assert_eq!(d.correlation_id.as_uuid(), order_id().as_uuid(), "{d:?}");
                assert_eq!(
                    d.causation_id.as_uuid(),
                    ctx.metadata.message_id.as_uuid(),
                    "{d:?}"
                );
                decode(d)
            })
            .collect();
        assert_eq!(sent, expected, "sent messages");
    }
}

fn decode(d: Dispatch) -> Sent {
    match d.to.clone() {
        Destination::Service {
            service: Service::Catalog,
        } => {
            assert!(d.wants_reply, "the saga waits for catalog's reply: {d:?}");
            Sent::Catalog(
                d.message_id,
                CatalogCommand::from_json(&d.message_type, d.body).expect("a catalog command"),
            )
        }
        Destination::Service {
            service: Service::Payments,
        } => {
            assert!(d.wants_reply, "the saga waits for payments' reply: {d:?}");
            Sent::Payments(
                d.message_id,
                PaymentsCommand::from_json(&d.message_type, d.body).expect("a payments command"),
            )
        }
        Destination::Delayed {
            service: Service::Orders,
            delay_ms,
        } => Sent::Timer(
            d.message_id,
            OrdersCommand::from_json(&d.message_type, d.body).expect("an orders command"),
            Duration::from_millis(delay_ms),
        ),
        _ => panic!("the saga sent to an unexpected destination: {d:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Placing an order.

#[test]
fn placing_an_order_reserves_every_line_and_sets_the_timer() {
    nothing()
        .when(place(TWO_LINES))
        .then_expect(&[placed(TWO_LINES)])
        .then_send(&[
            sends_reserve("tea", 2),
            sends_reserve("mug", 1),
            sends_timer(),
        ]);
}

#[test]
fn placing_the_same_order_again_changes_nothing() {
    given(&[placed(TWO_LINES)])
        .when(place(TWO_LINES))
        .then_nothing_happens();
}

#[test]
fn placing_an_order_id_another_customer_holds_is_refused() {
    given(&[placed(TWO_LINES)])
        .from(TestContext::customer(someone_else()))
        .when(place(TWO_LINES))
        .then_expect_rejection("order_exists");
}

#[test]
fn placing_an_order_without_a_session_is_refused() {
    nothing()
        .from(TestContext::anonymous())
        .when(place(TWO_LINES))
        .then_expect_rejection("token_missing");
}

// ---------------------------------------------------------------------------------------------
// Reservations.

#[test]
fn a_reserved_line_records_its_price_and_waits_for_the_others() {
    given(&[placed(TWO_LINES)])
        .when_reply(reserve("tea"), stock_reserved("tea", 2, 350))
        .then_expect(&[line_reserved("tea", 2, 350)])
        .then_send(&[]);
}

#[test]
fn the_last_reserved_line_requests_the_payment_of_the_total() {
    given(&[placed(TWO_LINES), line_reserved("tea", 2, 350)])
        .when_reply(reserve("mug"), stock_reserved("mug", 1, 1200))
        .then_expect(&[line_reserved("mug", 1, 1200), payment_requested(1900)])
        .then_send(&[sends_charge(1900)]);
}

#[test]
fn lines_reserved_in_any_order_request_the_same_payment() {
    given(&[placed(TWO_LINES), line_reserved("mug", 1, 1200)])
        .when_reply(reserve("tea"), stock_reserved("tea", 2, 350))
        .then_expect(&[line_reserved("tea", 2, 350), payment_requested(1900)])
        .then_send(&[sends_charge(1900)]);
}

#[test]
fn a_one_line_order_requests_payment_on_its_reservation() {
    given(&[placed(&[("tea", 3)])])
        .when_reply(reserve("tea"), stock_reserved("tea", 3, 350))
        .then_expect(&[line_reserved("tea", 3, 350), payment_requested(1050)])
        .then_send(&[sends_charge(1050)]);
}

#[test]
fn a_refused_line_rejects_the_order_and_releases_every_line() {
    given(&[placed(TWO_LINES)])
        .when_reply(
            reserve("tea"),
            refused(
                "insufficient_stock",
                "product tea has 1 available, 2 requested",
            ),
        )
        .then_expect(&[rejected(
            "insufficient_stock",
            "product tea: product tea has 1 available, 2 requested",
        )])
        .then_send(&[sends_release("tea"), sends_release("mug")]);
}

#[test]
fn a_line_refused_after_another_was_reserved_releases_both() {
    given(&[placed(TWO_LINES), line_reserved("tea", 2, 350)])
        .when_reply(
            reserve("mug"),
            refused("unknown_product", "product mug does not exist"),
        )
        .then_expect(&[rejected(
            "unknown_product",
            "product mug: product mug does not exist",
        )])
        .then_send(&[sends_release("tea"), sends_release("mug")]);
}

#[test]
fn a_total_over_the_payment_limit_rejects_the_order_and_releases_it() {
    let price = Money::MAX_MINOR_UNITS / 2;
    given(&[
        placed(&[("tea", 1), ("mug", 1)]),
        line_reserved("tea", 1, price),
    ])
    .when_reply(reserve("mug"), stock_reserved("mug", 1, price + 1))
    .then_expect(&[
        line_reserved("mug", 1, price + 1),
        rejected(
            "amount_too_large",
            "the order's total is over the payment limit",
        ),
    ])
    .then_send(&[sends_release("tea"), sends_release("mug")]);
}

#[test]
fn a_line_total_over_the_payment_limit_rejects_the_order() {
    // Each unit is within the limit; quantity × price is not.
    let price = Money::MAX_MINOR_UNITS / 2 + 1;
    given(&[placed(&[("tea", 2)])])
        .when_reply(reserve("tea"), stock_reserved("tea", 2, price))
        .then_expect(&[
            line_reserved("tea", 2, price),
            rejected(
                "amount_too_large",
                "the order's total is over the payment limit",
            ),
        ])
        .then_send(&[sends_release("tea")]);
}

#[test]
fn a_reservation_accepted_without_a_price_cancels_the_order() {
    // Catalog broke the protocol: the saga cannot know what to charge, so it compensates
    // instead of guessing.
    given(&[placed(TWO_LINES)])
        .when_reply(reserve("tea"), accepted_nothing(product("tea").stream_id()))
        .then_expect(&[cancelled(
            "protocol_error",
            "catalog accepted the reservation of tea without saying its price",
        )])
        .then_send(&[sends_release("tea"), sends_release("mug")]);
}

#[test]
fn a_duplicate_reservation_reply_changes_nothing() {
    given(&[placed(TWO_LINES), line_reserved("tea", 2, 350)])
        .when_reply(reserve("tea"), stock_reserved("tea", 2, 350))
        .then_nothing_happens();
}

#[test]
fn a_refusal_for_a_line_already_reserved_changes_nothing() {
    // Two replies to one step (a redelivery answered after a restock, say): the first wins.
    given(&[placed(TWO_LINES), line_reserved("tea", 2, 350)])
        .when_reply(reserve("tea"), refused("insufficient_stock", "none left"))
        .then_nothing_happens();
}

#[test]
fn a_reservation_after_the_order_was_rejected_changes_nothing() {
    // The release sent at rejection covers it: catalog releases (or refuses) it.
    given(&[
        placed(TWO_LINES),
        rejected("insufficient_stock", "product tea: none left"),
    ])
    .when_reply(reserve("mug"), stock_reserved("mug", 1, 1200))
    .then_nothing_happens();
}

#[test]
fn a_reservation_after_the_timeout_changes_nothing() {
    given(&[placed(TWO_LINES), timed_out()])
        .when_reply(reserve("tea"), stock_reserved("tea", 2, 350))
        .then_nothing_happens();
}

#[test]
fn a_reservation_reply_once_paying_changes_nothing() {
    given(&paying())
        .when_reply(reserve("tea"), refused("insufficient_stock", "none left"))
        .then_nothing_happens();
}

// ---------------------------------------------------------------------------------------------
// Payment.

#[test]
fn a_captured_payment_confirms_the_order_and_commits_every_line() {
    given(&paying())
        .when_reply(charge(), captured(1900))
        .then_expect(&[confirmed(1900)])
        .then_send(&[sends_commit("tea"), sends_commit("mug")]);
}

#[test]
fn a_declined_payment_cancels_the_order_releases_every_line_and_closes_the_payment() {
    // The refund closes the payment at payments, so a charge still in flight cannot
    // capture after the order is cancelled.
    given(&paying())
        .when_reply(charge(), refused("card_declined", "the card was declined"))
        .then_expect(&[cancelled("card_declined", "the card was declined")])
        .then_send(&[sends_release("tea"), sends_release("mug"), sends_refund()]);
}

#[test]
fn a_duplicate_capture_after_confirmation_changes_nothing() {
    let mut events = paying();
    events.push(confirmed(1900));
    given(&events)
        .when_reply(charge(), captured(1900))
        .then_nothing_happens();
}

#[test]
fn a_decline_after_confirmation_changes_nothing() {
    let mut events = paying();
    events.push(confirmed(1900));
    given(&events)
        .when_reply(charge(), refused("card_declined", "the card was declined"))
        .then_nothing_happens();
}

#[test]
fn a_capture_after_the_timeout_changes_nothing() {
    // The cancellation already asked payments for a refund (see the timeout tests).
    let mut events = paying();
    events.push(timed_out());
    given(&events)
        .when_reply(charge(), captured(1900))
        .then_nothing_happens();
}

#[test]
fn a_payment_reply_before_the_payment_was_requested_changes_nothing() {
    given(&[placed(TWO_LINES), line_reserved("tea", 2, 350)])
        .when_reply(charge(), captured(1900))
        .then_nothing_happens();
}

// ---------------------------------------------------------------------------------------------
// The timer.

#[test]
fn the_timer_while_reserving_cancels_and_releases_every_line() {
    given(&[placed(TWO_LINES), line_reserved("tea", 2, 350)])
        .when_timer_fires()
        .then_expect(&[timed_out()])
        .then_send(&[sends_release("tea"), sends_release("mug")]);
}

#[test]
fn the_timer_while_paying_cancels_releases_and_refunds() {
    given(&paying())
        .when_timer_fires()
        .then_expect(&[timed_out()])
        .then_send(&[sends_release("tea"), sends_release("mug"), sends_refund()]);
}

#[test]
fn the_timer_after_confirmation_changes_nothing() {
    let mut events = paying();
    events.push(confirmed(1900));
    given(&events).when_timer_fires().then_nothing_happens();
}

#[test]
fn the_timer_after_rejection_changes_nothing() {
    given(&[
        placed(TWO_LINES),
        rejected("insufficient_stock", "none left"),
    ])
    .when_timer_fires()
    .then_nothing_happens();
}

#[test]
fn the_timer_after_cancellation_changes_nothing() {
    let mut events = paying();
    events.push(cancelled("card_declined", "the card was declined"));
    given(&events).when_timer_fires().then_nothing_happens();
}

#[test]
fn the_timer_firing_twice_cancels_once() {
    given(&[placed(TWO_LINES), timed_out()])
        .when_timer_fires()
        .then_nothing_happens();
}

#[test]
fn the_timer_for_an_order_that_does_not_exist_does_nothing() {
    nothing().when_timer_fires().then_nothing_happens();
}

// ---------------------------------------------------------------------------------------------
// Replies the saga does not wait for, and replies about nothing.

#[test]
fn replies_to_compensations_change_nothing() {
    let mut events = paying();
    events.push(confirmed(1900));
    for step in [commit("tea"), release("mug"), refund(), timer()] {
        given(&events)
            .when_reply(step.clone(), accepted_nothing(product("tea").stream_id()))
            .then_nothing_happens();
        given(&events)
            .when_reply(step, refused("order_closed", "closed"))
            .then_nothing_happens();
    }
}

#[test]
fn a_reply_to_a_step_the_order_does_not_have_changes_nothing() {
    // A reserve step for a product not in the order: matched to no line.
    given(&[placed(TWO_LINES)])
        .when_reply(reserve("cup"), stock_reserved("cup", 1, 100))
        .then_nothing_happens();
}

#[test]
fn a_reply_for_an_order_that_does_not_exist_changes_nothing() {
    nothing()
        .when_reply(reserve("tea"), stock_reserved("tea", 2, 350))
        .then_nothing_happens();
}

// ---------------------------------------------------------------------------------------------
// The state the saga folds.

#[test]
fn the_state_follows_the_order_through_its_statuses() {
    let status = |events: &[OrdersEvent]| given(events).order.placed().map(|p| p.status);
    assert_eq!(status(&[]), None);
    assert_eq!(status(&[placed(TWO_LINES)]), Some(Status::Reserving));
    assert_eq!(status(&paying()), Some(Status::Paying));
    let mut events = paying();
    events.push(confirmed(1900));
    assert_eq!(status(&events), Some(Status::Confirmed));
    assert_eq!(
        status(&[placed(TWO_LINES), rejected("x", "y")]),
        Some(Status::Rejected)
    );
    assert_eq!(
        status(&[placed(TWO_LINES), timed_out()]),
        Some(Status::Cancelled)
    );
    // A refund request is a record, not a change of status.
    events.push(
        RefundRequested {
            order_id: order_id(),
        }
        .into(),
    );
    assert_eq!(status(&events), Some(Status::Confirmed));
}

#[test]
fn events_before_the_order_was_placed_are_ignored() {
    // A stream is never written that way; folding one must still not invent an order.
    assert_eq!(
        given(&[line_reserved("tea", 2, 350), confirmed(700)]).order,
        Order::default()
    );
}
