//! A product's rules, as a pure aggregate over the product's stream.
//!
//! Invariants, each enforced by `decide` and checked by the property test below:
//! - stock is never negative: a reservation beyond the available stock is rejected;
//! - stock is conserved: initial + restocked = available + reserved + sold;
//! - reservations are idempotent per order: a retried reserve, release or commit changes
//!   nothing the second time;
//! - an order's reservation, once released or committed, is closed: a late or reordered
//!   reserve for that order is refused instead of locking stock forever.

use std::collections::BTreeMap;

use eventline_events::Service;
use eventline_events::catalog::{
    AddProduct, CatalogCommand, CatalogEvent, ChangePrice, CommitReservation, PriceChanged,
    ProductAdded, ReleaseReservation, ReservationCommitted, ReservationReleased, ReserveStock,
    Restock, Restocked, StockReserved,
};
use eventline_events::values::{
    Money, OrderId, ProductId, ProductName, Quantity, StockLevel, StreamId,
};

use eventline_events::auth::Role;

use crate::runtime::token::{Principal, TokenError};
use crate::runtime::{Aggregate, Context, RejectionReason, State};

/// Why the catalog refused a command. Each message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogRejection {
    #[error("product {0} does not exist; add it first with catalog.add_product")]
    UnknownProduct(ProductId),
    #[error("product {0} already exists; use catalog.change_price or catalog.restock to change it")]
    AlreadyExists(ProductId),
    #[error(
        "product {product_id} has {available} available, {requested} requested; restock it or order fewer"
    )]
    InsufficientStock {
        product_id: ProductId,
        available: u32,
        requested: u32,
    },
    #[error(
        "order {order_id} already holds {held} of product {product_id}, not {requested}; release it before reserving a different quantity"
    )]
    ReservationMismatch {
        product_id: ProductId,
        order_id: OrderId,
        held: u32,
        requested: u32,
    },
    #[error(
        "order {order_id}'s reservation of product {product_id} was already {how}; place a new order instead"
    )]
    OrderClosed {
        product_id: ProductId,
        order_id: OrderId,
        how: &'static str,
    },
    #[error(
        "order {order_id} holds no reservation of product {product_id} to commit; reserve stock first"
    )]
    NoReservation {
        product_id: ProductId,
        order_id: OrderId,
    },
    #[error(
        "restocking product {product_id} by {quantity} would exceed the stock limit of {}",
        StockLevel::MAX
    )]
    StockLimit {
        product_id: ProductId,
        quantity: u32,
    },
    #[error("{0}")]
    Unauthenticated(TokenError),
    #[error("changing the catalog needs the admin role; this token is a {0:?}'s")]
    Forbidden(Role),
}

impl RejectionReason for CatalogRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::UnknownProduct(_) => "unknown_product",
            Self::AlreadyExists(_) => "product_exists",
            Self::InsufficientStock { .. } => "insufficient_stock",
            Self::ReservationMismatch { .. } => "reservation_mismatch",
            Self::OrderClosed { .. } => "order_closed",
            Self::NoReservation { .. } => "no_reservation",
            Self::StockLimit { .. } => "stock_limit",
            Self::Unauthenticated(e) => e.code(),
            Self::Forbidden(_) => "forbidden",
        }
    }
}

/// How an order's reservation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closed {
    Released,
    Committed,
}

/// A listed product's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: ProductName,
    pub price: Money,
    pub available: u32,
    pub sold: u64,
    reservations: BTreeMap<OrderId, Quantity>,
    closed: BTreeMap<OrderId, Closed>,
}

impl Listed {
    pub fn reserved(&self) -> u64 {
        self.reservations.values().map(|q| u64::from(q.get())).sum()
    }
}

/// A product stream's state: not yet added, or listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Product(Option<Listed>);

impl Product {
    pub fn listed(&self) -> Option<&Listed> {
        self.0.as_ref()
    }
}

impl Aggregate for Product {
    type Command = CatalogCommand;
    type Rejection = CatalogRejection;
    const SERVICE: Service = Service::Catalog;

    fn stream_id(command: &CatalogCommand, _: &Context<'_>) -> StreamId {
        command.product_id().stream_id()
    }

    /// Reservations are the order saga's steps: a client that could send them would hold
    /// all the stock or release another order's (the runtime checks orders' credential).
    fn only_from_saga(command: &CatalogCommand) -> bool {
        matches!(
            command,
            CatalogCommand::ReserveStock(_)
                | CatalogCommand::ReleaseReservation(_)
                | CatalogCommand::CommitReservation(_)
        )
    }

    fn decide(
        &self,
        command: &CatalogCommand,
        ctx: &Context<'_>,
    ) -> Result<Vec<CatalogEvent>, CatalogRejection> {
        authorize(command, ctx.principal)?;
        let product_id = command.product_id().clone();
        let listed = match (&self.0, command) {
            (None, CatalogCommand::AddProduct(add)) => return Ok(vec![added(add)]),
            (Some(_), CatalogCommand::AddProduct(_)) => {
                return Err(CatalogRejection::AlreadyExists(product_id));
            }
            (None, _) => return Err(CatalogRejection::UnknownProduct(product_id)),
            (Some(listed), _) => listed,
        };
        let events = match command {
            CatalogCommand::AddProduct(_) => unreachable!("handled above"),
            CatalogCommand::ChangePrice(ChangePrice { price, .. }) => {
                if *price == listed.price {
                    vec![]
                } else {
                    vec![
                        PriceChanged {
                            product_id,
                            price: *price,
                        }
                        .into(),
                    ]
                }
            }
            CatalogCommand::Restock(Restock { quantity, .. }) => {
                if u64::from(listed.available) + listed.reserved() + u64::from(quantity.get())
                    > u64::from(StockLevel::MAX)
                {
                    return Err(CatalogRejection::StockLimit {
                        product_id,
                        quantity: quantity.get(),
                    });
                }
                vec![
                    Restocked {
                        product_id,
                        quantity: *quantity,
                    }
                    .into(),
                ]
            }
            CatalogCommand::ReserveStock(ReserveStock {
                order_id, quantity, ..
            }) => {
                if let Some(how) = listed.closed.get(order_id) {
                    return Err(CatalogRejection::OrderClosed {
                        product_id,
                        order_id: *order_id,
                        how: closed_word(*how),
                    });
                }
                match listed.reservations.get(order_id) {
                    Some(held) if held == quantity => vec![],
                    Some(held) => {
                        return Err(CatalogRejection::ReservationMismatch {
                            product_id,
                            order_id: *order_id,
                            held: held.get(),
                            requested: quantity.get(),
                        });
                    }
                    None if quantity.get() > listed.available => {
                        return Err(CatalogRejection::InsufficientStock {
                            product_id,
                            available: listed.available,
                            requested: quantity.get(),
                        });
                    }
                    None => vec![
                        StockReserved {
                            product_id,
                            order_id: *order_id,
                            quantity: *quantity,
                            unit_price: listed.price,
                        }
                        .into(),
                    ],
                }
            }
            CatalogCommand::ReleaseReservation(ReleaseReservation { order_id, .. }) => {
                if listed.closed.contains_key(order_id) {
                    vec![]
                } else {
                    // Releasing an order that holds nothing still closes it, so a reserve that
                    // arrives after its compensation (reordered delivery) is refused.
                    let quantity = listed.reservations.get(order_id).map_or(0, |q| q.get());
                    vec![
                        ReservationReleased {
                            product_id,
                            order_id: *order_id,
                            quantity,
                        }
                        .into(),
                    ]
                }
            }
            CatalogCommand::CommitReservation(CommitReservation { order_id, .. }) => {
                match (
                    listed.reservations.get(order_id),
                    listed.closed.get(order_id),
                ) {
                    (Some(quantity), _) => vec![
                        ReservationCommitted {
                            product_id,
                            order_id: *order_id,
                            quantity: *quantity,
                        }
                        .into(),
                    ],
                    (None, Some(Closed::Committed)) => vec![],
                    (None, Some(Closed::Released)) => {
                        return Err(CatalogRejection::OrderClosed {
                            product_id,
                            order_id: *order_id,
                            how: closed_word(Closed::Released),
                        });
                    }
                    (None, None) => {
                        return Err(CatalogRejection::NoReservation {
                            product_id,
                            order_id: *order_id,
                        });
                    }
                }
            }
        };
        Ok(events)
    }
}

impl State for Product {
    type Event = CatalogEvent;

    fn apply(&mut self, event: &CatalogEvent) {
        if let CatalogEvent::ProductAdded(added) = event {
            self.0 = Some(Listed {
                name: added.name.clone(),
                price: added.price,
                available: added.initial_stock.get(),
                sold: 0,
                reservations: BTreeMap::new(),
                closed: BTreeMap::new(),
            });
            return;
        }
        // Events are facts already validated by `decide`; saturating arithmetic keeps a
        // corrupted history from panicking a worker.
        let Some(listed) = self.0.as_mut() else {
            return;
        };
        match event {
            CatalogEvent::ProductAdded(_) => {}
            CatalogEvent::PriceChanged(e) => listed.price = e.price,
            CatalogEvent::Restocked(e) => {
                listed.available = listed.available.saturating_add(e.quantity.get());
            }
            CatalogEvent::StockReserved(e) => {
                listed.available = listed.available.saturating_sub(e.quantity.get());
                listed.reservations.insert(e.order_id, e.quantity);
            }
            CatalogEvent::ReservationReleased(e) => {
                if let Some(quantity) = listed.reservations.remove(&e.order_id) {
                    listed.available = listed.available.saturating_add(quantity.get());
                }
                listed.closed.insert(e.order_id, Closed::Released);
            }
            CatalogEvent::ReservationCommitted(e) => {
                if let Some(quantity) = listed.reservations.remove(&e.order_id) {
                    listed.sold += u64::from(quantity.get());
                }
                listed.closed.insert(e.order_id, Closed::Committed);
            }
        }
    }
}

/// Changing what is sold (add, price, restock) is an admin's job. Reservations come from the
/// order saga only, proven by orders' service credential, which the worker checks before
/// `decide` (see `only_from_saga`): no token makes a reservation legitimate.
fn authorize(
    command: &CatalogCommand,
    principal: &Result<Principal, TokenError>,
) -> Result<(), CatalogRejection> {
    let admin_only = matches!(
        command,
        CatalogCommand::AddProduct(_) | CatalogCommand::ChangePrice(_) | CatalogCommand::Restock(_)
    );
    if !admin_only {
        return Ok(());
    }
    match principal {
        Ok(p) if p.role == Role::Admin => Ok(()),
        Ok(p) => Err(CatalogRejection::Forbidden(p.role)),
        Err(e) => Err(CatalogRejection::Unauthenticated(e.clone())),
    }
}

fn added(add: &AddProduct) -> CatalogEvent {
    ProductAdded {
        product_id: add.product_id.clone(),
        name: add.name.clone(),
        price: add.price,
        initial_stock: add.initial_stock,
    }
    .into()
}

fn closed_word(closed: Closed) -> &'static str {
    match closed {
        Closed::Released => "released",
        Closed::Committed => "committed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::handler::testing::TestContext;
    use proptest::prelude::*;

    /// Decides as an admin would (authorization has its own test).
    trait DecideAsAdmin {
        fn decide_as_admin(
            &self,
            command: &CatalogCommand,
        ) -> Result<Vec<CatalogEvent>, CatalogRejection>;
    }

    impl DecideAsAdmin for Product {
        fn decide_as_admin(
            &self,
            command: &CatalogCommand,
        ) -> Result<Vec<CatalogEvent>, CatalogRejection> {
            self.decide(command, &TestContext::admin().ctx())
        }
    }

    /// given(events).when(command) → Ok(events) or Err(rejection), as cqrs-es reads.
    fn given(events: &[CatalogEvent]) -> Product {
        let mut product = Product::default();
        for event in events {
            product.apply(event);
        }
        product
    }

    fn id() -> ProductId {
        ProductId::parse("tea".into()).unwrap()
    }
    fn qty(n: u32) -> Quantity {
        Quantity::parse(n).unwrap()
    }
    fn tea(stock: u32) -> CatalogEvent {
        ProductAdded {
            product_id: id(),
            name: ProductName::parse("Tea".into()).unwrap(),
            price: Money::parse(350).unwrap(),
            initial_stock: StockLevel::parse(stock).unwrap(),
        }
        .into()
    }
    fn reserve(order: OrderId, n: u32) -> CatalogCommand {
        ReserveStock {
            product_id: id(),
            order_id: order,
            quantity: qty(n),
        }
        .into()
    }
    fn release(order: OrderId) -> CatalogCommand {
        ReleaseReservation {
            product_id: id(),
            order_id: order,
        }
        .into()
    }
    fn commit(order: OrderId) -> CatalogCommand {
        CommitReservation {
            product_id: id(),
            order_id: order,
        }
        .into()
    }
    fn reserved(order: OrderId, n: u32) -> CatalogEvent {
        StockReserved {
            product_id: id(),
            order_id: order,
            quantity: qty(n),
            unit_price: Money::parse(350).unwrap(),
        }
        .into()
    }

    #[test]
    fn reserving_within_stock_records_a_reservation() {
        let order = OrderId::new();
        assert_eq!(
            given(&[tea(5)]).decide_as_admin(&reserve(order, 5)),
            Ok(vec![reserved(order, 5)])
        );
    }

    #[test]
    fn reserving_beyond_stock_is_rejected_with_the_numbers() {
        let err = given(&[tea(2)])
            .decide_as_admin(&reserve(OrderId::new(), 3))
            .unwrap_err();
        assert_eq!(err.code(), "insufficient_stock");
        assert!(
            err.to_string().contains("has 2 available, 3 requested"),
            "{err}"
        );
    }

    #[test]
    fn reserving_again_for_the_same_order_changes_nothing() {
        let order = OrderId::new();
        assert_eq!(
            given(&[tea(5), reserved(order, 2)]).decide_as_admin(&reserve(order, 2)),
            Ok(vec![])
        );
        let err = given(&[tea(5), reserved(order, 2)])
            .decide_as_admin(&reserve(order, 3))
            .unwrap_err();
        assert_eq!(err.code(), "reservation_mismatch");
    }

    #[test]
    fn a_release_that_arrives_before_its_reservation_closes_the_order() {
        let order = OrderId::new();
        let state = given(&[tea(5)]);
        let events = state.decide_as_admin(&release(order)).unwrap();
        assert_eq!(
            events,
            vec![
                ReservationReleased {
                    product_id: id(),
                    order_id: order,
                    quantity: 0
                }
                .into()
            ]
        );
        let state = given(&[tea(5), events[0].clone()]);
        assert_eq!(
            state
                .decide_as_admin(&reserve(order, 1))
                .unwrap_err()
                .code(),
            "order_closed"
        );
        assert_eq!(state.decide_as_admin(&release(order)), Ok(vec![]));
    }

    #[test]
    fn commands_for_a_missing_product_are_rejected() {
        assert_eq!(
            given(&[])
                .decide_as_admin(&reserve(OrderId::new(), 1))
                .unwrap_err()
                .code(),
            "unknown_product"
        );
        let add = AddProduct {
            product_id: id(),
            name: ProductName::parse("Tea".into()).unwrap(),
            price: Money::parse(1).unwrap(),
            initial_stock: StockLevel::default(),
        };
        assert_eq!(
            given(&[tea(1)])
                .decide_as_admin(&add.into())
                .unwrap_err()
                .code(),
            "product_exists"
        );
    }

    #[test]
    fn committing_needs_a_reservation_and_is_idempotent() {
        let order = OrderId::new();
        assert_eq!(
            given(&[tea(5)])
                .decide_as_admin(&commit(order))
                .unwrap_err()
                .code(),
            "no_reservation"
        );
        let after = given(&[tea(5), reserved(order, 2)]);
        let events = after.decide_as_admin(&commit(order)).unwrap();
        assert_eq!(events.len(), 1);
        let sold = given(&[tea(5), reserved(order, 2), events[0].clone()]);
        assert_eq!(sold.decide_as_admin(&commit(order)), Ok(vec![]));
        assert_eq!(sold.listed().unwrap().sold, 2);
    }

    #[test]
    fn only_admins_change_the_catalog() {
        let restock: CatalogCommand = Restock {
            product_id: id(),
            quantity: qty(1),
        }
        .into();
        let state = given(&[tea(1)]);
        let customer = TestContext::customer(eventline_events::auth::UserId::new());
        assert_eq!(
            state.decide(&restock, &customer.ctx()).unwrap_err().code(),
            "forbidden"
        );
        assert_eq!(
            state
                .decide(&restock, &TestContext::anonymous().ctx())
                .unwrap_err()
                .code(),
            "token_missing"
        );
        // Reservations come from the saga and need no token.
        assert!(
            state
                .decide(&reserve(OrderId::new(), 1), &TestContext::anonymous().ctx())
                .is_ok()
        );
    }

    fn any_command() -> impl Strategy<Value = CatalogCommand> {
        let order =
            (0u8..6).prop_map(|n| OrderId::from_uuid(uuid::Uuid::from_u128(u128::from(n) + 1)));
        prop_oneof![
            (order.clone(), 1u32..8).prop_map(|(o, n)| reserve(o, n)),
            order.clone().prop_map(release),
            order.prop_map(commit),
            (1u32..5).prop_map(|n| Restock {
                product_id: id(),
                quantity: qty(n)
            }
            .into()),
        ]
    }

    proptest! {
        #[test]
        fn stock_is_never_negative_and_always_conserved(
            initial in 0u32..20,
            commands in proptest::collection::vec(any_command(), 0..60),
        ) {
            let mut product = given(&[tea(initial)]);
            let mut supplied = u64::from(initial);
            for command in &commands {
                if let Ok(events) = product.decide_as_admin(command) {
                    for event in &events {
                        if let CatalogEvent::Restocked(r) = event {
                            supplied += u64::from(r.quantity.get());
                        }
                        product.apply(event);
                    }
                    // Deciding the same command again must change nothing (idempotency),
                    // except restock, which is deliberately additive.
                    if !matches!(command, CatalogCommand::Restock(_)) {
                        prop_assert_eq!(product.decide_as_admin(command).ok(), Some(vec![]));
                    }
                }
                let listed = product.listed().unwrap();
                prop_assert_eq!(
                    u64::from(listed.available) + listed.reserved() + listed.sold,
                    supplied
                );
            }
        }
    }
}
