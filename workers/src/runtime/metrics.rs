//! Every metric eventline exports: its name, its labels, and the one function that records it.
//!
//! The rest of the runtime calls these functions (one line at the point where the thing
//! happens) and never spells a metric name itself, so the list below *is* the catalogue an
//! operator reads (README, "Metrics"). Names follow the Prometheus conventions: an
//! `eventline_` prefix, `_total` on counters, base units (`_seconds`).
//!
//! Every series carries a `namespace` label: a process normally serves one namespace, but the
//! integration tests run many systems in one process against one process-global recorder,
//! and each test reads only its own namespace's series.
//!
//! This module must never take a label value from the wire unchecked: a message type is a
//! label only when it is one of the contract's types (anything else is `unknown`), so a
//! client sending random types cannot grow the registry without bound. It never records a
//! secret either (labels are names of services, types, outcomes, peers and checkpoints).
//! Recording is a no-op until [`install`] has run, so libraries and the client pay nothing.

use std::sync::OnceLock;
use std::time::Duration;

use eventline_events::reply::REPLY_TYPE;
use eventline_events::{Contract, Namespace, Service};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Messages settled, by `namespace`, `service`, `type` and `outcome` ([`Settled`]).
pub const MESSAGES: &str = "eventline_messages_total";
/// Time from a delivery's receipt (taken from its consumer and decoded) to its settlement (ack,
/// retry or dead letter).
pub const HANDLING_SECONDS: &str = "eventline_message_handling_seconds";
/// Time a worker's message spent in each stage of its life, by `stage` ([`Stage`]): the
/// stages follow each other, so their means add up to the message's time from its sender's
/// `x-occurred-at` to its ack.
pub const STAGE_SECONDS: &str = "eventline_message_stage_seconds";
/// Deliveries handled together in one transaction (1 for handlers that do not batch).
pub const BATCH_SIZE: &str = "eventline_batch_size";
/// Decisions taken again because another writer appended to the stream first.
pub const CONFLICTS: &str = "eventline_conflict_redecides_total";
/// Time from a publish to the broker's confirm, by `publisher` (worker or relay batch).
pub const CONFIRM_SECONDS: &str = "eventline_publish_confirm_seconds";
/// Sessions re-opened after a failure, by `component` and `peer` (broker or database).
pub const RECONNECTS: &str = "eventline_reconnects_total";
/// Replies sent on a connection of their own to try a direct reply-to node tag not seen
/// before, by `verdict` (`good`: the broker took it; `bad`: it closed the connection). More
/// than one `good` per node per process, or any `bad`, deserves a look.
pub const REPLY_PROBES: &str = "eventline_reply_probes_total";
/// Events the relay has published and had confirmed.
pub const RELAY_PUBLISHED: &str = "eventline_relay_published_events_total";
/// Committed events a log reader (`reader`: `relay` or `projection.*`) has not yet passed.
pub const READER_LAG_EVENTS: &str = "eventline_reader_lag_events";
/// Age of the oldest committed event a reader has not passed (0 when caught up).
pub const READER_LAG_SECONDS: &str = "eventline_reader_lag_seconds";
/// Rows in the inbox (`processed_messages`): exact up to 100,000, then the planner's estimate.
pub const INBOX_ROWS: &str = "eventline_inbox_rows";
/// State-cache lookups, by `result` (`hit` or `miss`); the hit ratio is hit / (hit + miss).
pub const STATE_CACHE: &str = "eventline_state_cache_lookups_total";
/// Database connections of this process's pool, by `state` (`in_use` or `idle`).
pub const DB_POOL: &str = "eventline_db_pool_connections";
/// 1 while the process is ready (see `readiness`), 0 while it is not.
pub const READY: &str = "eventline_ready";

/// How a delivery was settled: the `outcome` label of [`MESSAGES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Committed with events (or a query answered); replied, acked.
    Accepted,
    /// A domain rejection (or a query that could not be answered): replied, acked.
    Rejected,
    /// A message id already handled: its stored outcome sent again, no second effect.
    Duplicate,
    /// A transient failure: parked in the retry queue for another round.
    Retried,
    /// Poison, or retries exhausted: in the dead-letter queue with a reason.
    DeadLettered,
    /// Could not be settled with the broker (publish or confirm failed): left unacked, so the
    /// broker redelivers it.
    Unsettled,
}

impl Settled {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Duplicate => "duplicate",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::Unsettled => "unsettled",
        }
    }
}

/// A stage of a message's life in a worker: the `stage` label of [`STAGE_SECONDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// From the sender's `x-occurred-at` to the worker's receipt (taking it from its
    /// consumer, decoding it and checking its credentials): the broker's queue, the network
    /// and the prefetch buffer (clamped at 0 when the sender's clock is ahead). A batching
    /// worker takes deliveries as they arrive, holding up to one batch's worth for the lane.
    QueueWait,
    /// From receipt to the start of its batch's transaction: the wait for the database lane
    /// (the previous batch's transaction), then forming the batch.
    BatchWait,
    /// From the batch's transaction start to its commit (the per-message transactions of a
    /// batch that rolled back included).
    Transaction,
    /// From the commit to the ack: replies and dispatches confirmed, then the ack sent.
    Settle,
}

impl Stage {
    /// Every stage, in the order a message goes through them.
    pub const ALL: [Self; 4] = [
        Self::QueueWait,
        Self::BatchWait,
        Self::Transaction,
        Self::Settle,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::QueueWait => "queue_wait",
            Self::BatchWait => "batch_wait",
            Self::Transaction => "transaction",
            Self::Settle => "settle",
        }
    }
}

/// One worker session's [`STAGE_SECONDS`] histograms, registered once (at the first record
/// after [`install`]) so that recording a message formats no label and allocates nothing;
/// until `install` has run they record nothing, as every other function here.
pub struct Stages {
    namespace: String,
    service: Service,
    histograms: OnceLock<[metrics::Histogram; 4]>,
}

impl Stages {
    pub fn new(namespace: &Namespace, service: Service) -> Self {
        Self {
            namespace: namespace.to_string(),
            service,
            histograms: OnceLock::new(),
        }
    }

    /// `messages` messages each spent `spent` in `stage` (a batch's shared stages are one call).
    pub fn record(&self, stage: Stage, spent: Duration, messages: usize) {
        if let Some(histograms) = self.histograms() {
            histograms[stage as usize].record_many(spent.as_secs_f64(), messages);
        }
    }

    fn histograms(&self) -> Option<&[metrics::Histogram; 4]> {
        if let Some(registered) = self.histograms.get() {
            return Some(registered);
        }
        // Registered before the recorder exists, a handle would record nothing for good.
        HANDLE.get()?;
        Some(self.histograms.get_or_init(|| {
            Stage::ALL.map(|stage| {
                histogram!(STAGE_SECONDS,
                    "namespace" => self.namespace.clone(),
                    "service" => self.service.name(),
                    "stage" => stage.label())
            })
        }))
    }
}

/// The time from `earlier` (another clock's wall time, such as a sender's `x-occurred-at`)
/// to `now`, and zero when `earlier` is ahead: clocks of two machines disagree, and a
/// negative wait would drag a mean below the truth.
pub fn wall_clock_since(earlier: time::OffsetDateTime, now: time::OffsetDateTime) -> Duration {
    Duration::try_from(now - earlier).unwrap_or(Duration::ZERO)
}

/// Who waited for a confirm: the `publisher` label of [`CONFIRM_SECONDS`].
#[derive(Clone, Copy, Debug)]
pub enum Publisher {
    /// One message (a reply, a dispatch, a retry or a dead letter), or the client's command.
    Message,
    /// A relay batch: the wait for its last confirm.
    RelayBatch,
}

/// The other end of a connection that was re-opened.
#[derive(Clone, Copy, Debug)]
pub enum Peer {
    Broker,
    Database,
}

impl Peer {
    const fn label(self) -> &'static str {
        match self {
            Self::Broker => "broker",
            Self::Database => "database",
        }
    }
}

/// Histogram buckets in seconds: from a fast local commit to a payment provider timing out.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Batch sizes: powers of two up to the worker's largest batch.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often the recorder folds the histogram samples recorded since into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process-global Prometheus recorder (once; later calls return the same
/// handle). Until it runs, every function here records nothing.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS))
            .expect("the bucket lists are constant and not empty")
            .build_recorder();
        let handle = recorder.handle();
        // The recorder keeps every histogram sample (24 bytes) until an upkeep folds it into
        // the buckets. Done only at a scrape, a worker nobody scrapes would keep them all: a
        // dozen samples a message, tens of MiB a day at a thousand messages a second. A thread
        // of its own, so it runs whatever runtime (or none) the process has.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        // Fails only if another recorder was installed first (a host program's own): then
        // ours renders nothing, which the metrics test would show.
        let _ = metrics::set_global_recorder(recorder);
        // The broker helpers (shared with the client) measure each confirm and report here.
        eventline_amqp::broker::observe_confirms(|waited| {
            confirm_waited(Publisher::Message, waited)
        });
        handle
    })
}

/// The Prometheus text exposition of every series in this process.
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}

/// The `type` label for a message type: the contract's own name for it, or `unknown`.
pub fn type_label<C: Contract>(message_type: Option<&str>) -> &'static str {
    let Some(message_type) = message_type else {
        return "unknown";
    };
    if message_type == REPLY_TYPE {
        return REPLY_TYPE;
    }
    C::MESSAGE_TYPES
        .iter()
        .find(|known| **known == message_type)
        .copied()
        .unwrap_or("unknown")
}

/// The worker's settlement point: one call per delivery, with how it ended.
pub fn message_settled(
    namespace: &Namespace,
    service: Service,
    message_type: &'static str,
    outcome: Settled,
    since_batch_start: Duration,
) {
    let ns = namespace.to_string();
    counter!(MESSAGES,
        "namespace" => ns.clone(),
        "service" => service.name(),
        "type" => message_type,
        "outcome" => outcome.label())
    .increment(1);
    histogram!(HANDLING_SECONDS, "namespace" => ns, "service" => service.name())
        .record(since_batch_start.as_secs_f64());
}

/// A batch has been through the database (one transaction, or one each after a rollback).
pub fn batch_handled(namespace: &Namespace, service: Service, size: usize) {
    histogram!(BATCH_SIZE, "namespace" => namespace.to_string(), "service" => service.name())
        .record(size as f64);
}

/// `commands` decisions are being taken again after a version conflict.
pub fn conflicts_redecided(namespace: &Namespace, service: Service, commands: usize) {
    counter!(CONFLICTS, "namespace" => namespace.to_string(), "service" => service.name())
        .increment(commands as u64);
}

/// The broker confirmed after `waited`. No namespace label: the broker module is shared by
/// every publisher and knows none (the histogram is per process).
pub fn confirm_waited(publisher: Publisher, waited: Duration) {
    let publisher = match publisher {
        Publisher::Message => "message",
        Publisher::RelayBatch => "relay_batch",
    };
    histogram!(CONFIRM_SECONDS, "publisher" => publisher).record(waited.as_secs_f64());
}

/// A session to `peer` ended with an error and `component` is about to open another.
pub fn reconnecting(namespace: &Namespace, component: &'static str, peer: Peer) {
    counter!(RECONNECTS,
        "namespace" => namespace.to_string(),
        "component" => component,
        "peer" => peer.label())
    .increment(1);
}

/// A reply tried a direct reply-to node tag on a connection of its own.
pub fn reply_probed(namespace: &Namespace, good: bool) {
    counter!(REPLY_PROBES,
        "namespace" => namespace.to_string(),
        "verdict" => if good { "good" } else { "bad" })
    .increment(1);
}

/// The relay published (and had confirmed) `count` events.
pub fn relay_published(namespace: &Namespace, count: usize) {
    counter!(RELAY_PUBLISHED, "namespace" => namespace.to_string()).increment(count as u64);
}

/// A state-cache lookup. No namespace or service label: the cache is generic over the state
/// and knows neither; the ratio is per process.
pub fn state_cache_lookup(hit: bool) {
    counter!(STATE_CACHE, "result" => if hit { "hit" } else { "miss" }).increment(1);
}

/// A log reader's lag, as sampled from the database.
pub fn reader_lag(namespace: &Namespace, reader: &str, events: i64, seconds: f64) {
    let ns = namespace.to_string();
    gauge!(READER_LAG_EVENTS, "namespace" => ns.clone(), "reader" => reader.to_owned())
        .set(events as f64);
    gauge!(READER_LAG_SECONDS, "namespace" => ns, "reader" => reader.to_owned()).set(seconds);
}

/// The inbox's size, as sampled from the database.
pub fn inbox_rows(namespace: &Namespace, rows: i64) {
    gauge!(INBOX_ROWS, "namespace" => namespace.to_string()).set(rows as f64);
}

/// This process's pool: connections open and lent out, and open but idle.
pub fn db_pool(namespace: &Namespace, in_use: usize, idle: usize) {
    let ns = namespace.to_string();
    gauge!(DB_POOL, "namespace" => ns.clone(), "state" => "in_use").set(in_use as f64);
    gauge!(DB_POOL, "namespace" => ns, "state" => "idle").set(idle as f64);
}

/// Whether the namespace's components in this process are all ready.
pub fn ready(namespace: &Namespace, ready: bool) {
    gauge!(READY, "namespace" => namespace.to_string()).set(if ready { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use eventline_events::catalog::CatalogCommand;

    use super::*;

    #[test]
    fn only_contract_types_become_labels() {
        assert_eq!(
            type_label::<CatalogCommand>(Some("catalog.reserve_stock")),
            "catalog.reserve_stock"
        );
        assert_eq!(
            type_label::<CatalogCommand>(Some("catalog.x1234")),
            "unknown"
        );
        assert_eq!(
            type_label::<CatalogCommand>(Some("orders.place_order")),
            "unknown"
        );
        assert_eq!(type_label::<CatalogCommand>(None), "unknown");
        assert_eq!(type_label::<CatalogCommand>(Some(REPLY_TYPE)), REPLY_TYPE);
    }

    /// The architecture invariant: no other file of the workspace records a metric (the
    /// `metrics` macros appear only here), so every name and label set is in this file.
    #[test]
    fn only_this_module_records_metrics() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut offenders = Vec::new();
        let mut dirs = vec![
            root.join("workers/src"),
            root.join("src"),
            root.join("bench/src"),
        ];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("runtime/metrics.rs")
                    && ["counter!(", "gauge!(", "histogram!("]
                        .iter()
                        .any(|m| std::fs::read_to_string(&path).unwrap().contains(m))
                {
                    offenders.push(path.display().to_string());
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "metrics recorded outside metrics.rs: {offenders:?}"
        );
    }

    #[test]
    fn a_wait_from_a_clock_ahead_of_ours_is_zero_not_negative() {
        let now = time::OffsetDateTime::now_utc();
        let earlier = now - time::Duration::milliseconds(40);
        assert_eq!(wall_clock_since(earlier, now), Duration::from_millis(40));
        assert_eq!(
            wall_clock_since(now + time::Duration::seconds(2), now),
            Duration::ZERO
        );
    }

    #[test]
    fn stages_render_with_one_series_each_and_shared_stages_count_every_message() {
        let ns = Namespace::parse("metrics-stages").unwrap();
        install();
        let stages = Stages::new(&ns, Service::Catalog);
        stages.record(Stage::Transaction, Duration::from_millis(4), 3);
        stages.record(Stage::QueueWait, Duration::from_millis(1), 1);
        let text = render();
        let series = |stage: &str, suffix: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!("{STAGE_SECONDS}_{suffix}"))
                        && l.contains("namespace=\"metrics-stages\"")
                        && l.contains(&format!("stage=\"{stage}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        assert_eq!(series("transaction", "count"), Some(3.0), "{text}");
        assert!(
            (series("transaction", "sum").unwrap() - 0.012).abs() < 1e-9,
            "{text}"
        );
        assert_eq!(series("queue_wait", "count"), Some(1.0), "{text}");
        assert_eq!(series("settle", "count").unwrap_or(0.0), 0.0, "{text}");
    }

    #[test]
    fn settled_messages_render_with_their_labels() {
        let ns = Namespace::parse("metrics-unit").unwrap();
        install();
        message_settled(
            &ns,
            Service::Catalog,
            "catalog.add_product",
            Settled::DeadLettered,
            Duration::from_millis(3),
        );
        let text = render();
        assert!(
            text.lines().any(|l| l.starts_with(MESSAGES)
                && l.contains("namespace=\"metrics-unit\"")
                && l.contains("outcome=\"dead_lettered\"")
                && l.ends_with(" 1")),
            "{text}"
        );
        assert!(
            text.contains("eventline_message_handling_seconds_bucket"),
            "{text}"
        );
    }
}
