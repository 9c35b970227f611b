//! The order saga end to end: `place_order` goes to orders, which reserves stock in catalog,
//! charges payments and confirms; the client hears the outcome from the relayed events. One
//! order is several commands, replies and events across three services, so orders/s is the
//! figure a shop would ask for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventline::Client;
use eventline_events::orders::{OrderLine, OrderLines, PlaceOrder};
use eventline_events::payments::CardToken;
use eventline_events::values::{OrderId, ProductId, Quantity};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::load::{Latency, Window};

/// What the saga point measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SagaReport {
    pub clients: usize,
    /// The AMQP connections they shared.
    pub connections: usize,
    /// Orders whose outcome arrived in the window, per second.
    pub orders_per_s: f64,
    /// Of those, confirmed per second (the rest were rejected or cancelled).
    pub confirmed_per_s: f64,
    /// Outcomes of orders placed in the window, by status.
    pub outcomes: BTreeMap<String, u64>,
    /// Place-to-outcome latency of orders placed in the window.
    pub latency: Latency,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// `concurrency` clients, sharing `clients`' connections round robin, each place an order
/// (one line, quantity 1, a random product, a card that is approved) as soon as the previous
/// one has its outcome, for the warm-up and the window.
pub async fn closed_loop(
    clients: &[Arc<Client>],
    concurrency: usize,
    products: &[ProductId],
    window: Window,
    timeout: Duration,
) -> anyhow::Result<SagaReport> {
    anyhow::ensure!(!products.is_empty(), "the saga point needs products");
    let card = CardToken::parse("tok_visa".to_owned()).map_err(anyhow::Error::msg)?;
    let products = Arc::new(products.to_vec());
    let start = Instant::now();
    let opens = start + window.warmup;
    let closes = opens + window.duration;
    let mut tasks = JoinSet::new();
    for i in 0..concurrency {
        let client = clients[i % clients.len()].clone();
        let (products, card) = (products.clone(), card.clone());
        tasks.spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("constant bounds are valid");
            let (mut done, mut confirmed, mut errors) = (0u64, 0u64, 0u64);
            let mut outcomes = BTreeMap::<String, u64>::new();
            let mut first_error = None;
            while Instant::now() < closes {
                let product = products[fastrand::usize(..products.len())].clone();
                let order = PlaceOrder {
                    order_id: OrderId::new(),
                    lines: OrderLines::parse(vec![OrderLine {
                        product_id: product,
                        quantity: Quantity::parse(1).map_err(anyhow::Error::msg)?,
                    }])
                    .map_err(anyhow::Error::msg)?,
                    card: card.clone(),
                };
                let sent = Instant::now();
                let outcome = client.place_order(&order, timeout).await;
                let finished = Instant::now();
                let in_window = sent >= opens && sent < closes;
                match outcome {
                    Ok(outcome) => {
                        if finished >= opens && finished < closes {
                            done += 1;
                            if outcome.status == "confirmed" {
                                confirmed += 1;
                            }
                        }
                        if in_window {
                            let us = finished.duration_since(sent).as_micros();
                            histogram
                                .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                            *outcomes.entry(outcome.status).or_default() += 1;
                        }
                    }
                    Err(error) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| error.to_string());
                    }
                }
            }
            Ok::<_, anyhow::Error>((histogram, done, confirmed, outcomes, errors, first_error))
        });
    }
    let mut report = SagaReport {
        clients: concurrency,
        connections: clients.len(),
        ..SagaReport::default()
    };
    let mut all: Option<Histogram<u64>> = None;
    let (mut done, mut confirmed) = (0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        let (histogram, d, c, outcomes, errors, first_error) = joined??;
        match &mut all {
            Some(h) => {
                let _ = h.add(&histogram);
            }
            None => all = Some(histogram),
        }
        done += d;
        confirmed += c;
        for (status, n) in outcomes {
            *report.outcomes.entry(status).or_default() += n;
        }
        report.errors += errors;
        if report.first_error.is_none() {
            report.first_error = first_error;
        }
    }
    let seconds = window.duration.as_secs_f64();
    report.orders_per_s = done as f64 / seconds;
    report.confirmed_per_s = confirmed as f64 / seconds;
    report.latency = all
        .as_ref()
        .map(Latency::from_histogram)
        .unwrap_or_default();
    Ok(report)
}
