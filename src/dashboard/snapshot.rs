//! One picture of the running system a second, for the page: the live replicas (from
//! presence), each service's queues (passive declares, as `eventline status` reads them), and
//! from the database the log's head, every reader's lag (`sampler::sample`, the sampler's own
//! query) and the orders by outcome.
//!
//! The database is read at most once per [`INTERVAL`], with one connection, whatever the
//! number of pages open: every page is fed the same snapshot. It only reads — a passive
//! declare changes nothing, and no statement writes — and it never fails: what cannot be read
//! becomes a line in `problems`, so the page still shows the rest.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventline_events::{Service, Topology};
use eventline_workers::runtime::presence::RELAY;
use eventline_workers::runtime::sampler::{self, Sample};
use eventline_workers::runtime::store::EventStore;
use eventline_workers::runtime::{Config, Shutdown, broker};
use serde::Serialize;
use tokio::sync::watch;

use super::roster::{Replica, Roster};
use crate::status::QueueState;

/// How often a snapshot is taken (and the page updated).
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Most orders listed for clicking.
const RECENT_ORDERS: i64 = 12;
/// Longest any one read may take before it is skipped for this second.
const READ_TIMEOUT: Duration = Duration::from_millis(800);

/// One service: its queues (the seed's load balancer) and its live replicas (Server A–D).
#[derive(Clone, Debug, Serialize)]
pub struct ServiceView {
    pub service: Service,
    pub commands: Option<QueueState>,
    pub retry: Option<QueueState>,
    pub dead_letters: Option<QueueState>,
    pub replicas: Vec<Replica>,
    /// The replicas' rates added up: the service's messages per second.
    pub rate: f64,
}

/// An order for the list the page lets one click.
#[derive(Clone, Debug, Serialize)]
pub struct OrderRow {
    pub order_id: uuid::Uuid,
    pub status: String,
    pub code: Option<String>,
}

/// What the database box shows.
#[derive(Clone, Debug, Serialize)]
pub struct DatabaseView {
    /// The last position in the event log.
    pub log_head: i64,
    /// The relay's and every projection's lag.
    pub sample: Sample,
    /// Orders by status (`confirmed`, `rejected`, `cancelled`, and those still open).
    pub orders: BTreeMap<String, i64>,
    pub recent_orders: Vec<OrderRow>,
}

/// Everything the page draws, sent as one JSON object.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub namespace: String,
    /// Milliseconds since the epoch, by this machine's clock: only to show the page is live.
    pub taken_at_ms: u128,
    pub services: Vec<ServiceView>,
    pub relay: Vec<Replica>,
    pub database: Option<DatabaseView>,
    pub problems: Vec<String>,
}

// Cheap reads: the log's head through its primary key, and the orders read model, which is
// one row per order.
const LOG_HEAD: &str = "SELECT coalesce(max(position), 0) FROM event_log";
const ORDERS_BY_STATUS: &str = "SELECT status, count(*) FROM orders_view GROUP BY status";
const RECENT: &str =
    "SELECT order_id, status, code FROM orders_view ORDER BY updated_at DESC, order_id LIMIT $1";

/// Takes a snapshot every [`INTERVAL`] until `shutdown`, publishing each as JSON on `out`.
pub async fn run(
    config: Config,
    roster: Arc<Mutex<Roster>>,
    out: watch::Sender<Arc<String>>,
    shutdown: Shutdown,
) {
    let topology = Topology::new(config.namespace.clone());
    let store = EventStore::connect_lazy(&config.database_url, 1).ok();
    let mut connection: Option<lapin::Connection> = None;
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.triggered() => break,
        }
        let mut problems = Vec::new();
        if connection.as_ref().is_none_or(|c| !c.status().connected()) {
            connection = match tokio::time::timeout(
                READ_TIMEOUT,
                broker::connect(&config.amqp_url, "dashboard"),
            )
            .await
            {
                Ok(Ok(c)) => Some(c),
                Ok(Err(error)) => {
                    problems.push(format!("the broker does not answer: {error}"));
                    None
                }
                Err(_) => {
                    problems.push("the broker does not answer in time".to_owned());
                    None
                }
            };
        }
        let live = roster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live(Instant::now());
        let (relay, workers): (Vec<_>, Vec<_>) = live.into_iter().partition(|r| r.service == RELAY);
        let mut services = Vec::new();
        for service in Service::ALL {
            let replicas: Vec<Replica> = workers
                .iter()
                .filter(|r| r.service == service.name())
                .cloned()
                .collect();
            let inspect = |name: String| {
                let connection = connection.as_ref();
                async move {
                    let connection = connection?;
                    let queue = tokio::time::timeout(
                        READ_TIMEOUT,
                        broker::inspect_queue(connection, &name),
                    )
                    .await
                    .ok()?
                    .ok()?;
                    Some(QueueState {
                        messages: queue.message_count(),
                        consumers: queue.consumer_count(),
                        name,
                    })
                }
            };
            services.push(ServiceView {
                service,
                commands: inspect(topology.command_queue(service)).await,
                retry: inspect(topology.retry_queue(service)).await,
                dead_letters: inspect(topology.dead_letter_queue(service)).await,
                rate: replicas.iter().fold(0.0, |sum, r| sum + r.rate),
                replicas,
            });
        }
        let database = match &store {
            Some(store) => match tokio::time::timeout(READ_TIMEOUT, read_database(store)).await {
                Ok(Ok(view)) => Some(view),
                Ok(Err(error)) => {
                    problems.push(format!("the database does not answer: {error:#}"));
                    None
                }
                Err(_) => {
                    problems.push("the database does not answer in time".to_owned());
                    None
                }
            },
            None => None,
        };
        let snapshot = Snapshot {
            namespace: config.namespace.to_string(),
            taken_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            services,
            relay,
            database,
            problems,
        };
        if let Ok(json) = serde_json::to_string(&snapshot) {
            out.send_replace(Arc::new(json));
        }
    }
    if let Some(connection) = connection {
        let _ = connection.close(200, "dashboard stopping".into()).await;
    }
}

async fn read_database(store: &EventStore) -> anyhow::Result<DatabaseView> {
    let pool = store.pool();
    let sample = sampler::sample(pool).await?;
    let log_head: i64 = sqlx::query_scalar(LOG_HEAD).fetch_one(pool).await?;
    let orders: Vec<(String, i64)> = sqlx::query_as(ORDERS_BY_STATUS).fetch_all(pool).await?;
    let recent: Vec<(uuid::Uuid, String, Option<String>)> = sqlx::query_as(RECENT)
        .bind(RECENT_ORDERS)
        .fetch_all(pool)
        .await?;
    Ok(DatabaseView {
        log_head,
        sample,
        orders: orders.into_iter().collect(),
        recent_orders: recent
            .into_iter()
            .map(|(order_id, status, code)| OrderRow {
                order_id,
                status,
                code,
            })
            .collect(),
    })
}
