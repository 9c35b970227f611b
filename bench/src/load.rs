//! Load generators: closed loop (each client sends its next command when the previous reply
//! arrives: finds saturation) and open loop (commands sent on a fixed schedule: latency at a
//! given offered rate).
//!
//! The open loop measures each command from its *scheduled* send time, not from when it was
//! actually sent, so that a system that stalls the sender is charged for the wait
//! (coordinated omission). Its only sleeps pace that schedule.
//!
//! Both record into HdrHistograms (microseconds) and count only what falls in the measured
//! window: latency of commands sent in it, throughput of replies received in it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventline::{Client, ClientError};
use eventline_events::Reply;
use eventline_events::catalog::{CatalogCommand, ReserveStock};
use eventline_events::values::{OrderId, ProductId, Quantity};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::progress::Progress;

/// Upper bound of the histograms: a reply slower than a minute is off the chart anyway
/// (and the request timeout is far below it).
const MAX_LATENCY_US: u64 = 60_000_000;

/// Safety valve for the open loop: if this many commands are outstanding the system is far
/// past saturation; the generator stops sending and reports how many it dropped.
const MAX_OPEN_LOOP_IN_FLIGHT: usize = 50_000;

/// A latency histogram in microseconds, as every load point records.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds are valid")
}

/// What to send: `catalog.reserve_stock` of quantity 1 for a fresh order on a random product,
/// so a command never repeats and conflicts happen only when two land on one product at once.
#[derive(Clone, Debug)]
pub struct Workload {
    products: Arc<Vec<ProductId>>,
}

impl Workload {
    pub fn new(products: Vec<ProductId>) -> Self {
        Self {
            products: Arc::new(products),
        }
    }

    pub fn products(&self) -> usize {
        self.products.len()
    }

    pub fn product_ids(&self) -> &[ProductId] {
        &self.products
    }

    fn next_command(&self) -> CatalogCommand {
        let product = &self.products[fastrand::usize(..self.products.len())];
        CatalogCommand::from(ReserveStock {
            product_id: product.clone(),
            order_id: OrderId::new(),
            quantity: Quantity::parse(1).expect("1 is a valid quantity"),
        })
    }
}

/// When a load point records.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub warmup: Duration,
    pub duration: Duration,
}

/// Latency from publish (or scheduled publish) to reply, in milliseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Latency {
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            samples: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// What one load point measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LoadResult {
    /// Commands per second offered (open loop); `None` for closed loop.
    pub offered_per_s: Option<f64>,
    /// Accepted replies received per second during the window.
    pub achieved_per_s: f64,
    pub latency: Latency,
    /// Commands sent in the window.
    pub sent: u64,
    /// Replies that said "rejected" (none expected: stock is huge and orders are fresh).
    pub rejected: u64,
    /// Timeouts and broker errors.
    pub errors: u64,
    /// Open loop only: commands not sent because too many were outstanding.
    pub dropped: u64,
    /// Largest number of commands outstanding at once.
    pub max_in_flight: u64,
    /// One error message, to say what went wrong when `errors` is not zero.
    pub first_error: Option<String>,
}

#[derive(Default)]
struct Tally {
    histogram: Option<Histogram<u64>>,
    sent: u64,
    completed_in_window: u64,
    rejected: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn record(
        &mut self,
        started: Instant,
        finished: Instant,
        outcome: Result<Reply, ClientError>,
        window: (Instant, Instant),
    ) {
        let sent_in_window = started >= window.0 && started < window.1;
        if sent_in_window {
            self.sent += 1;
        }
        match outcome {
            Ok(Reply::Accepted { .. }) => {
                if sent_in_window {
                    let us = finished.saturating_duration_since(started).as_micros();
                    let us = u64::try_from(us).unwrap_or(u64::MAX).max(1);
                    self.histogram
                        .get_or_insert_with(histogram)
                        .saturating_record(us);
                }
                if finished >= window.0 && finished < window.1 {
                    self.completed_in_window += 1;
                }
            }
            Ok(Reply::Rejected { reason }) => {
                self.rejected += 1;
                self.first_error
                    .get_or_insert_with(|| format!("rejected: {reason}"));
            }
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        if let Some(h) = other.histogram {
            match &mut self.histogram {
                Some(mine) => {
                    // Same bounds on both sides, so adding cannot fail.
                    let _ = mine.add(&h);
                }
                None => self.histogram = Some(h),
            }
        }
        self.sent += other.sent;
        self.completed_in_window += other.completed_in_window;
        self.rejected += other.rejected;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn result(self, window: &Window, offered: Option<f64>) -> LoadResult {
        LoadResult {
            offered_per_s: offered,
            achieved_per_s: self.completed_in_window as f64 / window.duration.as_secs_f64(),
            latency: self
                .histogram
                .as_ref()
                .map(Latency::from_histogram)
                .unwrap_or_default(),
            sent: self.sent,
            rejected: self.rejected,
            errors: self.errors,
            dropped: 0,
            max_in_flight: 0,
            first_error: self.first_error,
        }
    }
}

/// Called once when the measured window opens and once when it closes, e.g. to read CPU
/// counters over exactly the window.
pub trait WindowHook {
    fn opened(&mut self);
    fn closed(&mut self);
}

/// No hook.
impl WindowHook for () {
    fn opened(&mut self) {}
    fn closed(&mut self) {}
}

/// Opens and closes `hook` at the window's edges while showing live progress; returns when
/// the window has closed.
async fn watch_window(
    start: Instant,
    window: &Window,
    done: &AtomicU64,
    progress: &Progress,
    label: &str,
    hook: &mut dyn WindowHook,
) {
    let opens = start + window.warmup;
    let closes = opens + window.duration;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut opened = false;
    let mut last = (Instant::now(), done.load(Ordering::Relaxed));
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if !opened && now >= opens {
            hook.opened();
            opened = true;
        }
        if now >= closes {
            if !opened {
                hook.opened();
            }
            hook.closed();
            return;
        }
        let count = done.load(Ordering::Relaxed);
        let rate = (count - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, count);
        let phase = if opened { "measuring" } else { "warming up" };
        progress.message(format!("{label}: {phase}, {rate:.0} cmd/s"));
    }
}

/// One load point: who sends what, for how long, and where progress shows.
pub struct Point<'a> {
    pub clients: &'a [Arc<Client>],
    pub workload: &'a Workload,
    pub window: Window,
    /// How long a client waits for one reply before counting an error.
    pub timeout: Duration,
    pub progress: &'a Progress,
    pub label: &'a str,
}

/// `concurrency` clients, each sending its next command as soon as its previous one is
/// answered, for the warm-up and the window.
pub async fn closed_loop(
    point: &Point<'_>,
    concurrency: usize,
    hook: &mut dyn WindowHook,
) -> LoadResult {
    let Point {
        clients,
        workload,
        window,
        timeout,
        progress,
        label,
    } = *point;
    let start = Instant::now();
    let bounds = (
        start + window.warmup,
        start + window.warmup + window.duration,
    );
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for i in 0..concurrency {
        let client = clients[i % clients.len()].clone();
        let workload = workload.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            // Bounded by time: no client starts a command after the window closes.
            while Instant::now() < bounds.1 {
                let started = Instant::now();
                let outcome = client.request(&workload.next_command(), timeout).await;
                tally.record(started, Instant::now(), outcome, bounds);
                done.fetch_add(1, Ordering::Relaxed);
            }
            tally
        });
    }
    watch_window(start, &window, &done, progress, label, hook).await;
    let mut total = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(tally) = joined {
            total.merge(tally);
        }
    }
    let mut result = total.result(&window, None);
    result.max_in_flight = concurrency as u64;
    result
}

/// An open loop's timetable: sends at `rate` per second from `start` (a moment ahead, so the
/// first is not already late) for the warm-up and the window, which `bounds` delimits.
pub struct Timetable {
    pub start: Instant,
    pub rate: f64,
    pub bounds: (Instant, Instant),
    total: u64,
}

impl Timetable {
    pub fn new(rate: f64, window: &Window) -> Self {
        let rate = rate.max(1.0);
        let start = Instant::now() + Duration::from_millis(20);
        Self {
            start,
            rate,
            bounds: (
                start + window.warmup,
                start + window.warmup + window.duration,
            ),
            total: ((window.warmup + window.duration).as_secs_f64() * rate).floor() as u64,
        }
    }

    fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// Sends on schedule, whatever the answers do: `send(n)` (n counts from 1) gives each
    /// send's task, and `record` gets each task's output with the time it was due, so each is
    /// timed from then. With `max_in_flight` tasks still waiting, a send is dropped instead.
    /// Returns the sends dropped and the most tasks that waited at once.
    pub async fn run<T, F, E>(
        &self,
        max_in_flight: usize,
        mut send: impl FnMut(u64) -> Result<F, E>,
        mut record: impl FnMut(T, Instant),
    ) -> Result<(u64, usize), E>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let mut tasks = JoinSet::new();
        let (mut next, mut dropped, mut most) = (0u64, 0u64, 0usize);
        while next < self.total {
            tokio::select! {
                biased;
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok((output, due)) = joined {
                        record(output, due);
                    }
                }
                () = tokio::time::sleep_until(self.due(next).into()) => {
                    // Send everything that is due by now; a late wake-up sends a small burst,
                    // and each is still timed from its own due time.
                    let now = Instant::now();
                    while next < self.total && self.due(next) <= now {
                        let due = self.due(next);
                        next += 1;
                        if tasks.len() >= max_in_flight {
                            dropped += 1;
                            continue;
                        }
                        let work = send(next)?;
                        tasks.spawn(async move { (work.await, due) });
                        most = most.max(tasks.len());
                    }
                }
            }
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok((output, due)) = joined {
                record(output, due);
            }
        }
        Ok((dropped, most))
    }
}

/// Commands sent on a fixed schedule at `rate` per second, spread over the clients, whatever
/// the replies do; each is timed from when it was due.
pub async fn open_loop(point: &Point<'_>, rate: f64) -> LoadResult {
    let Point {
        clients,
        workload,
        window,
        timeout,
        progress,
        label,
    } = *point;
    let timetable = Timetable::new(rate, &window);
    let bounds = timetable.bounds;
    let done = Arc::new(AtomicU64::new(0));
    let mut tally = Tally::default();
    let generator = timetable.run(
        MAX_OPEN_LOOP_IN_FLIGHT,
        |n| {
            let client = clients[(n as usize) % clients.len()].clone();
            let command = workload.next_command();
            let done = done.clone();
            Ok::<_, Infallible>(async move {
                let outcome = client.request(&command, timeout).await;
                done.fetch_add(1, Ordering::Relaxed);
                (Instant::now(), outcome)
            })
        },
        |(finished, outcome), due| tally.record(due, finished, outcome, bounds),
    );
    let mut no_hook = ();
    let watcher = watch_window(
        timetable.start,
        &window,
        &done,
        progress,
        label,
        &mut no_hook,
    );
    let (Ok((dropped, max_in_flight)), ()) = tokio::join!(generator, watcher);
    let mut result = tally.result(&window, Some(timetable.rate));
    result.dropped = dropped;
    result.max_in_flight = max_in_flight as u64;
    result
}
