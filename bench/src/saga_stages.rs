//! Where one order's time goes under load, read from the log the saga wrote: every event of
//! an order carries its `order_id`, and `recorded_at` is when the transaction that appended
//! it began (PostgreSQL's `now()`), on the clock the bench's wall clock shares on this
//! machine; payments' own `payment_attempts` row says when it called the provider and
//! when the answer came, outside any transaction. Between two of an order's events lies one hop of the saga: the commit and
//! publish of a step, its queue, the next service's transaction start. The client's own
//! send and outcome times close both ends.
//!
//! Also the saga's cost in messages: the inbox rows (one per message a service handled)
//! the saga point added, per order it placed. Catalog's saturation divided by that is what
//! the saga could reach if every message cost what a catalog command costs: its ceiling.

use std::collections::HashMap;

use eventline_events::Contract;
use eventline_events::catalog::CatalogEvent;
use eventline_events::orders::OrdersEvent;
use eventline_events::payments::PaymentsEvent;
use eventline_events::values::OrderId;
use hdrhistogram::Histogram;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::load::{Latency, histogram};
use crate::saga::Timed;

/// Where the log and the inbox stood before the saga point.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    position: i64,
    inbox_rows: i64,
}

/// One hop of an order, across the confirmed orders placed in the window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stage {
    pub name: &'static str,
    /// What the hop spends its time on.
    pub covers: &'static str,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SagaStages {
    /// Confirmed orders placed in the window with every event of the breakdown in the log.
    pub orders: u64,
    pub stages: Vec<Stage>,
    /// Messages the services handled (inbox rows) per order the saga point placed.
    pub messages_per_order: f64,
    /// Events appended per order the saga point placed (what the relay publishes).
    pub events_per_order: f64,
}

/// The moments of one order, in the order the saga reaches them.
const MOMENTS: usize = 9;
const CLIENT_SENT: usize = 0;
const PLACED: usize = 1;
const STOCK_RESERVED: usize = 2;
const LINE_RESERVED: usize = 3;
/// Payments recorded its intent (`payment_attempts.requested_at`), before the provider call.
const PAYMENT_REQUESTED: usize = 4;
/// Payments recorded the provider's answer (`answered_at`).
const PAYMENT_ANSWERED: usize = 5;
/// The payment's transaction (it appends authorization and capture together).
const CAPTURED: usize = 6;
const CONFIRMED: usize = 7;
const CLIENT_HEARD: usize = 8;

/// Each hop: its name, what it covers, and the two moments it lies between.
const HOPS: [(&str, &str, usize, usize); 8] = [
    (
        "client -> orders",
        "publish, orders' queue and lane, up to its transaction",
        CLIENT_SENT,
        PLACED,
    ),
    (
        "orders -> catalog",
        "orders commits, publishes reserve_stock; catalog's queue and lane",
        PLACED,
        STOCK_RESERVED,
    ),
    (
        "catalog -> orders",
        "catalog commits and replies; orders' queue and lane",
        STOCK_RESERVED,
        LINE_RESERVED,
    ),
    (
        "orders -> payments",
        "orders commits, publishes charge_payment; payments' queue, its intent recorded",
        LINE_RESERVED,
        PAYMENT_REQUESTED,
    ),
    (
        "payments: provider",
        "the provider's authorize and capture, no transaction open",
        PAYMENT_REQUESTED,
        PAYMENT_ANSWERED,
    ),
    (
        "payments: to its tx",
        "answer recorded, up to the payment's transaction",
        PAYMENT_ANSWERED,
        CAPTURED,
    ),
    (
        "payments -> orders",
        "payments commits and replies; orders' queue and lane",
        CAPTURED,
        CONFIRMED,
    ),
    (
        "orders -> client",
        "orders commits; the relay reads and publishes; the client's tail",
        CONFIRMED,
        CLIENT_HEARD,
    ),
];

pub async fn mark(pool: &PgPool) -> anyhow::Result<Mark> {
    let (position, inbox_rows): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT coalesce(max(position), 0) FROM event_log), \
                (SELECT count(*) FROM processed_messages)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Mark {
        position,
        inbox_rows,
    })
}

/// The breakdown of `timed` (confirmed orders placed in the window), from every event and
/// inbox row since `before`. Run it right after the closed loop, before anything else adds
/// to the log.
pub async fn measure(pool: &PgPool, before: Mark, timed: &[Timed]) -> anyhow::Result<SagaStages> {
    let rows: Vec<(String, serde_json::Value, OffsetDateTime)> = sqlx::query_as(
        "SELECT event_type, data, recorded_at FROM event_log WHERE position > $1 ORDER BY position",
    )
    .bind(before.position)
    .fetch_all(pool)
    .await?;
    let attempts: Vec<(uuid::Uuid, OffsetDateTime, OffsetDateTime)> = sqlx::query_as(
        "SELECT order_id, requested_at, answered_at FROM payment_attempts WHERE answered_at IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    let now = mark(pool).await?;

    let events = rows.len();
    let mut moments: HashMap<OrderId, [Option<OffsetDateTime>; MOMENTS]> = HashMap::new();
    let mut placed = 0u64;
    for (event_type, data, recorded_at) in rows {
        let Some((order_id, moment)) = moment_of(&event_type, data) else {
            continue;
        };
        if moment == PLACED {
            placed += 1;
        }
        let slot = &mut moments.entry(order_id).or_default()[moment];
        // The first time an order reaches a moment; a retried step appends nothing new.
        if slot.is_none() {
            *slot = Some(recorded_at);
        }
    }

    for (order_id, requested, answered) in attempts {
        if let Some(order) = moments.get_mut(&OrderId::from_uuid(order_id)) {
            order[PAYMENT_REQUESTED] = Some(requested);
            order[PAYMENT_ANSWERED] = Some(answered);
        }
    }

    let mut histograms: Vec<Histogram<u64>> = HOPS.iter().map(|_| histogram()).collect();
    let mut orders = 0u64;
    for t in timed {
        let Some(logged) = moments.get(&t.order_id) else {
            continue;
        };
        let mut all = *logged;
        all[CLIENT_SENT] = Some(t.sent);
        all[CLIENT_HEARD] = Some(t.heard);
        let Some(all) = all.into_iter().collect::<Option<Vec<_>>>() else {
            continue;
        };
        orders += 1;
        for (h, &(_, _, from, to)) in histograms.iter_mut().zip(HOPS.iter()) {
            // Clamped at 1 µs: a hop's two ends can be read within the clocks' resolution.
            let us = (all[to] - all[from]).whole_microseconds().max(1);
            h.saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
        }
    }
    let stages = HOPS
        .iter()
        .zip(&histograms)
        .map(|(&(name, covers, _, _), h)| {
            let latency = Latency::from_histogram(h);
            Stage {
                name,
                covers,
                p50_ms: latency.p50_ms,
                p99_ms: latency.p99_ms,
            }
        })
        .collect();
    let handled = now.inbox_rows - before.inbox_rows;
    let per_order = |n: f64| if placed > 0 { n / placed as f64 } else { 0.0 };
    Ok(SagaStages {
        orders,
        stages,
        messages_per_order: per_order(handled as f64),
        events_per_order: per_order(events as f64),
    })
}

/// Which moment of which order an event marks, if it is one of the breakdown's.
fn moment_of(event_type: &str, data: serde_json::Value) -> Option<(OrderId, usize)> {
    if let Ok(event) = OrdersEvent::from_json(event_type, data.clone()) {
        return match event {
            OrdersEvent::OrderPlaced(e) => Some((e.order_id, PLACED)),
            OrdersEvent::LineReserved(e) => Some((e.order_id, LINE_RESERVED)),
            OrdersEvent::OrderConfirmed(e) => Some((e.order_id, CONFIRMED)),
            _ => None,
        };
    }
    if let Ok(event) = CatalogEvent::from_json(event_type, data.clone()) {
        return match event {
            CatalogEvent::StockReserved(e) => Some((e.order_id, STOCK_RESERVED)),
            _ => None,
        };
    }
    match PaymentsEvent::from_json(event_type, data).ok()? {
        PaymentsEvent::PaymentCaptured(e) => Some((e.order_id, CAPTURED)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use eventline_events::catalog::StockReserved;
    use eventline_events::orders::{OrderConfirmed, OrderPlaced};
    use eventline_events::payments::{PaymentAuthorized, PaymentCaptured};
    use eventline_events::values::{Money, ProductId, Quantity};

    use super::*;

    /// An event as the log stores it: its wire type and its body.
    fn logged<E: Contract>(event: E) -> (String, serde_json::Value) {
        (event.message_type().to_owned(), event.to_json())
    }

    #[test]
    fn each_moment_is_read_from_the_event_that_marks_it_and_no_other() {
        let order_id = OrderId::new();
        let product_id = ProductId::parse("tea".into()).unwrap();
        let amount = Money::parse(250).unwrap();
        let quantity = Quantity::parse(1).unwrap();
        let placed = OrderPlaced {
            order_id,
            customer_id: eventline_events::auth::UserId::new(),
            lines: eventline_events::orders::OrderLines::parse(vec![
                eventline_events::orders::OrderLine {
                    product_id: product_id.clone(),
                    quantity,
                },
            ])
            .unwrap(),
        };
        let cases = [
            (logged(OrdersEvent::from(placed)), Some(PLACED)),
            (
                logged(CatalogEvent::from(StockReserved {
                    product_id,
                    order_id,
                    quantity,
                    unit_price: amount,
                })),
                Some(STOCK_RESERVED),
            ),
            (
                logged(PaymentsEvent::from(PaymentAuthorized {
                    order_id,
                    amount,
                    authorization: "auth-1".into(),
                })),
                None,
            ),
            (
                logged(PaymentsEvent::from(PaymentCaptured { order_id, amount })),
                Some(CAPTURED),
            ),
            (
                logged(OrdersEvent::from(OrderConfirmed {
                    order_id,
                    total: amount,
                })),
                Some(CONFIRMED),
            ),
            (
                ("catalog.no_such_event".to_owned(), serde_json::json!({})),
                None,
            ),
        ];
        for ((event_type, data), expected) in cases {
            let got = moment_of(&event_type, data);
            assert_eq!(got.map(|(_, m)| m), expected, "{event_type}");
            if let Some((id, _)) = got {
                assert_eq!(id, order_id, "{event_type}");
            }
        }
    }
}
