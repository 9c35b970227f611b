//! The order saga end to end: `place_order` goes to orders, which reserves stock in catalog,
//! charges payments and confirms; the client hears the outcome from the relayed events. One
//! order is several commands, replies and events across three services, so orders/s is the
//! figure a shop would ask for. Two loads: closed (each client places its next order when
//! the previous one has its outcome: saturation) and open (orders on a fixed schedule: the
//! latency a shop sees below saturation).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventline::Client;
use eventline_events::orders::{OrderLine, OrderLines, PlaceOrder};
use eventline_events::payments::CardToken;
use eventline_events::values::{OrderId, ProductId, Quantity};
use hdrhistogram::Histogram;
use time::OffsetDateTime;
use tokio::task::JoinSet;

use crate::load::{Latency, Timetable, Window, histogram};

/// Orders an open-loop point lets wait at once before it counts the next ones as dropped.
const MAX_IN_FLIGHT: usize = 20_000;

/// What a saga point measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SagaReport {
    /// Orders in flight at once (closed loop); 0 for an open loop.
    pub clients: usize,
    /// The AMQP connections they shared.
    pub connections: usize,
    /// Orders per second placed on schedule (open loop); `None` for a closed loop.
    pub offered_per_s: Option<f64>,
    /// Orders whose outcome arrived in the window, per second.
    pub orders_per_s: f64,
    /// Of those, confirmed per second (the rest were rejected or cancelled).
    pub confirmed_per_s: f64,
    /// Outcomes of orders placed in the window, by status.
    pub outcomes: BTreeMap<String, u64>,
    /// Place-to-outcome latency of orders placed in the window (open loop: from when each
    /// was due).
    pub latency: Latency,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Orders an open loop did not send because too many were still waiting.
    pub dropped: u64,
    /// Outcomes that arrived over the whole run, warm-up included: what the CPU of
    /// [`SagaReport::usage`] was spent on.
    pub orders_all: u64,
    /// CPU and memory over the whole closed-loop run (`None` for the open loop).
    pub usage: Option<crate::usage::Usage>,
}

/// A confirmed order placed in the window: its id, and when the client sent it and heard
/// its outcome, by the wall clock (which the database's `recorded_at` shares on this
/// machine), for [`crate::saga_stages`].
#[derive(Clone, Copy, Debug)]
pub struct Timed {
    pub order_id: OrderId,
    pub sent: OffsetDateTime,
    pub heard: OffsetDateTime,
}

/// What the orders of one client, or of one open loop, came to.
struct Tally {
    histogram: Histogram<u64>,
    done: u64,
    all: u64,
    confirmed: u64,
    outcomes: BTreeMap<String, u64>,
    errors: u64,
    first_error: Option<String>,
    timed: Vec<Timed>,
}

impl Tally {
    fn new() -> Self {
        Self {
            histogram: histogram(),
            done: 0,
            all: 0,
            confirmed: 0,
            outcomes: BTreeMap::new(),
            errors: 0,
            first_error: None,
            timed: Vec::new(),
        }
    }

    /// Counts one order: `due` is when it was sent (closed loop) or due (open loop).
    fn record(&mut self, placed: Placed, due: Instant, bounds: (Instant, Instant)) {
        let in_window = due >= bounds.0 && due < bounds.1;
        match placed.status {
            Ok(status) => {
                self.all += 1;
                if placed.finished >= bounds.0 && placed.finished < bounds.1 {
                    self.done += 1;
                    if status == "confirmed" {
                        self.confirmed += 1;
                    }
                }
                if in_window {
                    let us = placed.finished.duration_since(due).as_micros();
                    self.histogram
                        .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                    if status == "confirmed" {
                        self.timed.push(placed.timed);
                    }
                    *self.outcomes.entry(status).or_default() += 1;
                }
            }
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.histogram.add(&other.histogram);
        self.done += other.done;
        self.all += other.all;
        self.confirmed += other.confirmed;
        for (status, n) in other.outcomes {
            *self.outcomes.entry(status).or_default() += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.timed.extend(other.timed);
    }

    fn report(self, window: &Window, base: SagaReport) -> (SagaReport, Vec<Timed>) {
        let seconds = window.duration.as_secs_f64();
        let report = SagaReport {
            orders_per_s: self.done as f64 / seconds,
            confirmed_per_s: self.confirmed as f64 / seconds,
            outcomes: self.outcomes,
            latency: Latency::from_histogram(&self.histogram),
            errors: self.errors,
            first_error: self.first_error,
            orders_all: self.all,
            ..base
        };
        (report, self.timed)
    }
}

/// One order as the client saw it.
struct Placed {
    finished: Instant,
    /// The outcome's status, or why there was none.
    status: Result<String, String>,
    timed: Timed,
}

/// What every order of the bench is: one line, quantity 1, a random product, a card that is
/// approved.
#[derive(Clone)]
struct Orders {
    products: Arc<Vec<ProductId>>,
    card: CardToken,
}

impl Orders {
    fn new(products: &[ProductId]) -> anyhow::Result<Self> {
        anyhow::ensure!(!products.is_empty(), "the saga point needs products");
        Ok(Self {
            products: Arc::new(products.to_vec()),
            card: CardToken::parse("tok_visa".to_owned()).map_err(anyhow::Error::msg)?,
        })
    }

    fn next(&self) -> anyhow::Result<PlaceOrder> {
        let product = self.products[fastrand::usize(..self.products.len())].clone();
        Ok(PlaceOrder {
            order_id: OrderId::new(),
            lines: OrderLines::parse(vec![OrderLine {
                product_id: product,
                quantity: Quantity::parse(1).map_err(anyhow::Error::msg)?,
            }])
            .map_err(anyhow::Error::msg)?,
            card: self.card.clone(),
        })
    }
}

async fn place(client: &Client, order: PlaceOrder, timeout: Duration) -> Placed {
    let sent = OffsetDateTime::now_utc();
    let outcome = client.place_order(&order, timeout).await;
    let finished = Instant::now();
    Placed {
        finished,
        status: outcome.map(|o| o.status).map_err(|error| error.to_string()),
        timed: Timed {
            order_id: order.order_id,
            sent,
            heard: OffsetDateTime::now_utc(),
        },
    }
}

/// `concurrency` clients, sharing `clients`' connections round robin, each place an order
/// as soon as the previous one has its outcome, for the warm-up and the window.
pub async fn closed_loop(
    clients: &[Arc<Client>],
    concurrency: usize,
    products: &[ProductId],
    window: Window,
    timeout: Duration,
) -> anyhow::Result<(SagaReport, Vec<Timed>)> {
    let orders = Orders::new(products)?;
    let start = Instant::now();
    let bounds = (
        start + window.warmup,
        start + window.warmup + window.duration,
    );
    let mut tasks = JoinSet::new();
    for i in 0..concurrency {
        let client = clients[i % clients.len()].clone();
        let orders = orders.clone();
        tasks.spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < bounds.1 {
                let sent = Instant::now();
                let placed = place(&client, orders.next()?, timeout).await;
                tally.record(placed, sent, bounds);
            }
            Ok::<_, anyhow::Error>(tally)
        });
    }
    let mut total = Tally::new();
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined??);
    }
    Ok(total.report(
        &window,
        SagaReport {
            clients: concurrency,
            connections: clients.len(),
            ..SagaReport::default()
        },
    ))
}

/// Orders placed on a fixed schedule at `rate` per second, spread over the clients, whatever
/// the outcomes do; each is timed from when it was due.
pub async fn open_loop(
    clients: &[Arc<Client>],
    rate: f64,
    products: &[ProductId],
    window: Window,
    timeout: Duration,
) -> anyhow::Result<SagaReport> {
    let orders = Orders::new(products)?;
    let timetable = Timetable::new(rate, &window);
    let bounds = timetable.bounds;
    let mut tally = Tally::new();
    let (dropped, _) = timetable
        .run(
            MAX_IN_FLIGHT,
            |n| {
                let client = clients[(n as usize) % clients.len()].clone();
                let order = orders.next()?;
                Ok::<_, anyhow::Error>(async move { place(&client, order, timeout).await })
            },
            |placed, due| tally.record(placed, due, bounds),
        )
        .await?;
    let (report, _) = tally.report(
        &window,
        SagaReport {
            connections: clients.len(),
            offered_per_s: Some(timetable.rate),
            dropped,
            ..SagaReport::default()
        },
    );
    Ok(report)
}
