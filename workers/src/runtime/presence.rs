//! Presence: every worker replica and the relay announce themselves on the broker about once
//! a second — service, replica, pid, messages handled by outcome, in flight, the last error's
//! class — so a live view (`eventline dashboard`) can draw who is alive and what it is doing.
//! A replica whose heartbeats stop for [`GONE_AFTER`] is gone.
//!
//! It must never slow the message path: the worker only bumps a few atomics ([`received`],
//! [`settled`], [`failed`]); the heartbeat runs on a task and a connection of its own, publishes
//! without confirms, and its messages expire after [`TTL`], so a broker that is slow or away
//! costs the worker nothing but a skipped heartbeat. That connection asks for small frames
//! (`broker::connect_publisher`): nothing is delivered to it, and at the server's frame size
//! lapin's buffers would hold 8 MiB of the process's memory for one message a second. It must never carry a secret: what it
//! sends is the [`Heartbeat`] struct, counts and names only (an error *class*, never a reason).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use eventline_events::{Namespace, Service, Topology};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::broker;
use super::config::Config;
use super::metrics::Settled;
use super::relay::RelayProgress;
use super::settle::Settlement;
use super::shutdown::Shutdown;

/// How often a process announces itself.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A heartbeat older than this is dropped by the broker: nobody wants to hear it late.
pub const TTL: Duration = Duration::from_secs(3);
/// Silence after which a reader counts a replica as gone: three missed heartbeats.
pub const GONE_AFTER: Duration = Duration::from_secs(3);
/// The `service` of the relay's heartbeats.
pub const RELAY: &str = "relay";

/// What one process says about itself, once a second.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// `auth`, `catalog`, `orders`, `payments` or [`RELAY`].
    pub service: String,
    /// Its replica name (`EVENTLINE_REPLICA`, e.g. `catalog-1`).
    pub replica: String,
    pub pid: u32,
    /// Numbered from 1 per announcer: a reader can tell a restarted replica (it starts over).
    pub sequence: u64,
    /// Messages settled since start, by outcome (`accepted`, `rejected`, `duplicate`,
    /// `retried`, `dead_lettered`, `unsettled`); for the relay, `published_through` (the log
    /// position it has published up to).
    pub handled: BTreeMap<String, u64>,
    /// Deliveries received and not yet settled.
    pub in_flight: u64,
    /// The class of the last failure (`retried`, `requeued`, or a dead letter's code such as
    /// `undecodable`), if any.
    pub last_error: Option<String>,
}

/// One replica's counters: bumped by the worker, read by its announcer.
#[derive(Debug, Default)]
pub struct Counters {
    namespace: String,
    service: &'static str,
    replica: String,
    settled: [AtomicU64; OUTCOMES.len()],
    in_flight: AtomicU64,
    last_error: Mutex<Option<&'static str>>,
}

const OUTCOMES: [Settled; 6] = [
    Settled::Accepted,
    Settled::Rejected,
    Settled::Duplicate,
    Settled::Retried,
    Settled::DeadLettered,
    Settled::Unsettled,
];

impl Counters {
    fn is(&self, namespace: &Namespace, service: &str, replica: &str) -> bool {
        self.service == service && self.replica == replica && self.namespace == namespace.as_str()
    }

    /// What the counters say now, as a heartbeat's figures.
    fn read(&self) -> (BTreeMap<String, u64>, u64, Option<String>) {
        let handled = OUTCOMES
            .iter()
            .zip(&self.settled)
            .map(|(outcome, n)| (outcome.label().to_owned(), n.load(Ordering::Relaxed)))
            .collect();
        let last = self
            .last_error
            .lock()
            .map(|e| e.map(str::to_owned))
            .unwrap_or_default();
        (handled, self.in_flight.load(Ordering::Relaxed), last)
    }
}

/// Every replica's counters in this process (tests run several replicas in one process, so
/// they are keyed by namespace, service and replica). A handful of entries: a linear scan
/// under a read lock is cheaper than hashing a key per message.
fn registry() -> &'static RwLock<Vec<Arc<Counters>>> {
    static REGISTRY: OnceLock<RwLock<Vec<Arc<Counters>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| RwLock::new(Vec::new()))
}

/// The counters of one replica, created on first use.
pub fn counters(namespace: &Namespace, service: Service, replica: &str) -> Arc<Counters> {
    if let Some(found) = find(namespace, service, replica) {
        return found;
    }
    let mut all = registry().write().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = all
        .iter()
        .find(|c| c.is(namespace, service.name(), replica))
    {
        return found.clone();
    }
    let counters = Arc::new(Counters {
        namespace: namespace.to_string(),
        service: service.name(),
        replica: replica.to_owned(),
        ..Counters::default()
    });
    all.push(counters.clone());
    counters
}

fn find(namespace: &Namespace, service: Service, replica: &str) -> Option<Arc<Counters>> {
    registry()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|c| c.is(namespace, service.name(), replica))
        .cloned()
}

/// `n` deliveries have been received by a worker of `service` named `replica`.
pub fn received(namespace: &Namespace, service: Service, replica: &str, n: usize) {
    counters(namespace, service, replica)
        .in_flight
        .fetch_add(n as u64, Ordering::Relaxed);
}

/// One delivery was settled with `outcome`.
pub fn settled(namespace: &Namespace, service: Service, replica: &str, outcome: Settled) {
    let counters = counters(namespace, service, replica);
    if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
        counters.settled[i].fetch_add(1, Ordering::Relaxed);
    }
    // Saturating: a delivery received before a restart of the counters is never negative.
    let _ = counters
        .in_flight
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(1))
        });
}

/// A delivery is being settled as `settlement`: remembers its class if it is a failure.
pub fn failed(namespace: &Namespace, service: Service, replica: &str, settlement: &Settlement) {
    let class = match settlement {
        Settlement::Ack => return,
        Settlement::Refuse { code, .. } | Settlement::DeadLetter { code, .. } => *code,
        Settlement::Retry { .. } => "retried",
        Settlement::Requeue => "requeued",
    };
    let counters = counters(namespace, service, replica);
    if let Ok(mut last) = counters.last_error.lock() {
        *last = Some(class);
    }
}

/// Where an announcer's figures come from.
enum Source {
    Worker(Arc<Counters>),
    Relay(watch::Receiver<RelayProgress>),
}

/// Announces one process (a worker replica or the relay) on the presence exchange every
/// [`INTERVAL`] until shutdown.
pub struct Announcer {
    config: Config,
    service: String,
    source: Source,
}

impl Announcer {
    /// For a replica of `service`; its counters are those the worker bumps.
    pub fn worker(config: Config, service: Service) -> Self {
        let counters = counters(&config.namespace, service, &config.replica);
        Self {
            service: service.name().to_owned(),
            config,
            source: Source::Worker(counters),
        }
    }

    /// For the relay; it reports how far it has published.
    pub fn relay(config: Config, progress: watch::Receiver<RelayProgress>) -> Self {
        Self {
            service: RELAY.to_owned(),
            config,
            source: Source::Relay(progress),
        }
    }

    fn heartbeat(&self, sequence: u64) -> Heartbeat {
        let (handled, in_flight, last_error) = match &self.source {
            Source::Worker(counters) => counters.read(),
            Source::Relay(progress) => {
                let through = progress.borrow().published_through;
                let handled = [("published_through".to_owned(), through.max(0) as u64)];
                (handled.into_iter().collect(), 0, None)
            }
        };
        Heartbeat {
            service: self.service.clone(),
            replica: self.config.replica.clone(),
            pid: std::process::id(),
            sequence,
            handled,
            in_flight,
            last_error,
        }
    }

    /// Runs until `shutdown`. A broker that is away is tried again at the next tick; nothing
    /// here ever waits on the message path.
    pub async fn run(self, shutdown: Shutdown) {
        let topology = Topology::new(self.config.namespace.clone());
        let role = format!("{} presence {}", self.service, self.config.replica);
        let mut open: Option<(lapin::Connection, lapin::Channel)> = None;
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sequence = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.triggered() => break,
            }
            if open.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
                open = self.open(&topology, &role).await;
            }
            let Some((_, channel)) = &open else { continue };
            sequence += 1;
            let Ok(body) = serde_json::to_vec(&self.heartbeat(sequence)) else {
                continue;
            };
            let sent = tokio::time::timeout(
                INTERVAL,
                broker::publish_heartbeat(channel, &topology, &body, TTL),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::debug!("a presence heartbeat was not sent; trying again next tick");
                open = None;
            }
        }
        if let Some((connection, _)) = open {
            let _ = connection.close(200, "presence stopping".into()).await;
        }
    }

    async fn open(
        &self,
        topology: &Topology,
        role: &str,
    ) -> Option<(lapin::Connection, lapin::Channel)> {
        let opened = async {
            let connection = broker::connect_publisher(&self.config.amqp_url, role).await?;
            let channel = connection.create_channel().await?;
            broker::declare_exchanges(&channel, topology).await?;
            Ok::<_, broker::BrokerError>((connection, channel))
        };
        match tokio::time::timeout(INTERVAL * 2, opened).await {
            Ok(Ok(open)) => Some(open),
            Ok(Err(error)) => {
                tracing::debug!(%error, "presence cannot reach the broker");
                None
            }
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_counts_outcomes_and_in_flight_per_replica() {
        let ns = Namespace::parse("presence-unit").unwrap();
        received(&ns, Service::Catalog, "catalog-1", 3);
        settled(&ns, Service::Catalog, "catalog-1", Settled::Accepted);
        settled(&ns, Service::Catalog, "catalog-1", Settled::DeadLettered);
        failed(
            &ns,
            Service::Catalog,
            "catalog-1",
            &Settlement::DeadLetter {
                code: "undecodable",
                reason: "a secret-free reason that must not be sent".into(),
            },
        );
        received(&ns, Service::Catalog, "catalog-2", 1);
        let (handled, in_flight, last) = counters(&ns, Service::Catalog, "catalog-1").read();
        assert_eq!(handled["accepted"], 1);
        assert_eq!(handled["dead_lettered"], 1);
        assert_eq!(handled["rejected"], 0);
        assert_eq!(in_flight, 1);
        assert_eq!(last.as_deref(), Some("undecodable"));
        let (_, other, last) = counters(&ns, Service::Catalog, "catalog-2").read();
        assert_eq!((other, last), (1, None));
    }
}
