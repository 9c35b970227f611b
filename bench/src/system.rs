//! The system under test: a namespace and a database of the run's own, the real `eventline`
//! binary's catalog workers and relay as child processes, and the clients that drive them.
//!
//! Everything the run creates is named after one fresh id (`bench-{id}` on the broker,
//! `eventline_bench_{id}` in PostgreSQL) and removed by [`System::destroy`], which `main`
//! calls whether the run succeeded, failed or was interrupted. The bench never changes how a
//! worker runs: it only starts the binary with the usual environment variables.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use eventline::Client;
use eventline::supervisor::Supervisor;
use eventline_events::catalog::{AddProduct, CatalogCommand};
use eventline_events::values::{Money, ProductId, ProductName, StockLevel};
use eventline_events::{Namespace, Reply, Service, Topology};
use eventline_workers::runtime::SecretUrl;
use eventline_workers::runtime::broker;
use eventline_workers::runtime::projection::Projection;
use eventline_workers::runtime::relay;
use eventline_workers::runtime::store::{self, EventStore};
use eventline_workers::services::catalog::ProductsProjection;
use lapin::options::QueueDeleteOptions;
use tokio::task::JoinSet;

use crate::load::Workload;
use crate::options::Plan;
use crate::progress::Progress;

/// How long workers may take to attach to their queue, or to stop, before the run gives up.
const PATIENCE: Duration = Duration::from_secs(30);
/// Rows per INSERT when filling the log: big enough to be fast, small enough to show progress.
const FILL_CHUNK: u64 = 50_000;

/// How many events one stream gets when the log is filled: short streams stand for the
/// many small aggregates of a real log; the long ones for products with a long history.
const SHORT_STREAM_EVENTS: u64 = 10;

pub struct System {
    pub namespace: Namespace,
    pub topology: Topology,
    pub database_name: String,
    pub database_url: SecretUrl,
    pub store: EventStore,
    amqp_url: SecretUrl,
    supervisor: Supervisor,
    clients: Vec<Arc<Client>>,
    workers: Vec<String>,
    /// Whether children started from now on serve metrics (see [`System::observe`]).
    metrics_on: bool,
    /// Each running catalog worker's metrics address, when they serve metrics.
    metrics: Vec<std::net::SocketAddr>,
    timeout: Duration,
    /// Signed for this run's key; lets the setup add products.
    admin_token: String,
    /// Signed for this run's key; what the saga point's clients place orders with.
    customer_token: String,
    /// Orders' key: the load sends `reserve_stock`, a saga step, so it signs like orders.
    orders_key: eventline_workers::runtime::config::SigningKey,
}

/// Where the log is, to tell how many events a load point added and how many positions
/// it burned (each append that lost a version race draws a position and rolls back).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogMark {
    pub events: i64,
    pub sequence: i64,
}

/// What a fill of the log did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Fill {
    pub events: u64,
    pub long_streams: u64,
    pub long_stream_events: u64,
    pub seconds: f64,
}

impl System {
    /// A fresh namespace and database, migrated, with the catalog's queues declared; no
    /// processes yet.
    pub async fn create(plan: &Plan, eventline: PathBuf) -> anyhow::Result<Self> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let namespace =
            Namespace::parse(&format!("bench-{}", &id[20..])).map_err(anyhow::Error::msg)?;
        let database_name = format!("eventline_bench_{}", &id[20..]);
        let database_url = plan.database_url.with_path(&database_name);
        store::create_database_if_missing(&database_url).await?;
        let store = EventStore::connect(&database_url, 4).await?;
        store.migrate().await?;
        let topology = Topology::new(namespace.clone());
        // Declared up front so nothing published before a worker starts is lost.
        let connection = broker::connect(&plan.amqp_url, "bench setup").await?;
        let channel = connection.create_channel().await?;
        broker::declare_service_queues(&channel, &topology, Service::Catalog).await?;
        let _ = connection.close(200, "declared".into()).await;
        // Token keys for this run: the operator's admin token adds the products; the load's
        // reservations need none.
        let signing = eventline_workers::runtime::token::generate_signing_key();
        let day = 24 * 3600;
        let admin_token = eventline_workers::runtime::token::mint(
            &signing,
            eventline_events::auth::Role::Admin,
            day,
        );
        let customer_token = eventline_workers::runtime::token::mint(
            &signing,
            eventline_events::auth::Role::Customer,
            day,
        );
        // Orders signs its steps, catalog and payments their replies; each worker keeps only
        // its own service's signing key.
        let keys = eventline_workers::runtime::config::SagaKeys::generate();
        let orders_key = keys.orders.signing.clone().expect("generated keys");
        let supervisor = Supervisor::new(
            eventline,
            [
                (
                    "EVENTLINE_AUTH_SIGNING_KEY".into(),
                    eventline_workers::runtime::token::encode_key(&signing.to_bytes()),
                ),
                ("AMQP_URL".into(), plan.amqp_url.expose().to_owned()),
                ("DATABASE_URL".into(), database_url.expose().to_owned()),
                ("EVENTLINE_NAMESPACE".into(), namespace.to_string()),
                ("EVENTLINE_PREFETCH".into(), plan.prefetch.to_string()),
                // The workers' own default; set so a RUST_LOG in the caller's shell does not
                // turn on per-message debug logging and measure the log writer instead.
                ("RUST_LOG".into(), "info".into()),
            ]
            .into_iter()
            .chain(keys.signing_env())
            .collect(),
            plan.out.join("logs"),
        );
        Ok(Self {
            namespace,
            topology,
            database_name,
            database_url,
            store,
            amqp_url: plan.amqp_url.clone(),
            supervisor,
            clients: Vec::new(),
            workers: Vec::new(),
            metrics_on: false,
            metrics: Vec::new(),
            timeout: plan.request_timeout,
            admin_token,
            customer_token,
            orders_key,
        })
    }

    /// What the workers and relay started from now on observe: `Some(true)` serves metrics
    /// (on a free loopback port each) and traces every message (spans made, not exported);
    /// `Some(false)` neither (`OTEL_SDK_DISABLED`, no metrics address); `None` the defaults
    /// (spans made, no metrics endpoint), as every other point runs.
    pub fn observe(&mut self, on: Option<bool>) {
        let (metrics, tracing_off) = match on {
            Some(true) => (Some("127.0.0.1:0"), Some("false")),
            Some(false) => (None, Some("true")),
            None => (None, None),
        };
        self.supervisor
            .set_env(eventline_workers::runtime::http::ADDRESS_VAR, metrics);
        self.supervisor.set_env("OTEL_SDK_DISABLED", tracing_off);
        self.metrics_on = metrics.is_some();
    }

    /// The running catalog workers' metrics addresses (empty unless they serve metrics).
    pub fn worker_metrics(&self) -> &[std::net::SocketAddr] {
        &self.metrics
    }

    pub fn clients(&self) -> &[Arc<Client>] {
        &self.clients
    }

    pub fn replicas(&self) -> usize {
        self.workers.len()
    }

    /// Opens `n` clients, each its own connection: one channel that publishes and consumes
    /// its replies by direct reply-to. The load shares them round robin.
    pub async fn connect_clients(&mut self, n: usize) -> anyhow::Result<()> {
        let mut connecting = JoinSet::new();
        for _ in 0..n {
            let (url, namespace) = (self.amqp_url.clone(), self.namespace.clone());
            let key = self.orders_key.0.clone();
            connecting.spawn(async move {
                Client::connect(&url, namespace)
                    .await
                    .map(|c| c.with_saga_key(key))
            });
        }
        while let Some(joined) = connecting.join_next().await {
            let client = joined.context("connecting a client panicked")??;
            self.clients.push(Arc::new(client));
        }
        Ok(())
    }

    /// (Re)starts the relay and `replicas` catalog workers, and waits until every worker
    /// consumes from the command queue.
    pub async fn start(&mut self, replicas: usize) -> anyhow::Result<()> {
        self.stop().await;
        self.supervisor.spawn("relay", &["relay"])?;
        let any_port = self.metrics_on.then_some("127.0.0.1:0");
        for i in 1..=replicas {
            let name = format!("catalog-{i}");
            // A port of its own that the bench knows, so it can scrape this worker: one the
            // kernel just handed out and took back (another process could take it meanwhile;
            // the worker then fails to start and the wait below says so).
            let address = if self.metrics_on {
                let free = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
                self.supervisor.set_env(
                    eventline_workers::runtime::http::ADDRESS_VAR,
                    Some(&free.to_string()),
                );
                Some(free)
            } else {
                None
            };
            self.supervisor.spawn(&name, &["worker", "catalog"])?;
            self.workers.push(name);
            self.metrics.extend(address);
        }
        self.supervisor
            .set_env(eventline_workers::runtime::http::ADDRESS_VAR, any_port);
        self.wait_for_consumers(replicas).await
    }

    /// (Re)starts the relay and `replicas` workers of each service the order saga needs
    /// (catalog, orders, payments), and waits until they all consume.
    pub async fn start_saga(&mut self, replicas: usize) -> anyhow::Result<()> {
        self.stop().await;
        self.supervisor.spawn("relay", &["relay"])?;
        for service in ["catalog", "orders", "payments"] {
            for i in 1..=replicas {
                let name = format!("{service}-{i}");
                self.supervisor.spawn(&name, &["worker", service])?;
                self.workers.push(name);
            }
        }
        for service in [Service::Catalog, Service::Orders, Service::Payments] {
            self.wait_for(service, replicas).await?;
        }
        Ok(())
    }

    /// `n` clients that place orders as this run's customer, each its own connection (and
    /// outcome tail); the saga shares them round robin.
    pub async fn saga_clients(&self, n: usize) -> anyhow::Result<Vec<Arc<Client>>> {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let client = Client::connect(&self.amqp_url, self.namespace.clone())
                .await?
                .with_token(self.customer_token.clone());
            clients.push(Arc::new(client));
        }
        Ok(clients)
    }

    /// Stops every child with SIGTERM (each finishes its in-flight commands first).
    pub async fn stop(&mut self) {
        self.supervisor.stop_all(PATIENCE).await;
        self.workers.clear();
        self.metrics.clear();
    }

    async fn wait_for_consumers(&mut self, replicas: usize) -> anyhow::Result<()> {
        self.wait_for(Service::Catalog, replicas).await
    }

    async fn wait_for(&mut self, service: Service, replicas: usize) -> anyhow::Result<()> {
        let queue = self.topology.command_queue(service);
        let connection = broker::connect(&self.amqp_url, "bench probe").await?;
        let deadline = Instant::now() + PATIENCE;
        let result = loop {
            let crashed = self.supervisor.exited();
            if !crashed.is_empty() {
                break Err(anyhow::anyhow!(
                    "{} exited at start; see the logs in {}",
                    crashed.join(", "),
                    self.supervisor.log_dir().display()
                ));
            }
            let consumers = broker::inspect_queue(&connection, &queue)
                .await
                .map(|q| q.consumer_count() as usize)
                .unwrap_or(0);
            if consumers >= replicas {
                break Ok(());
            }
            if Instant::now() > deadline {
                break Err(anyhow::anyhow!(
                    "only {consumers} of {replicas} {service} workers consumed from {queue} within {PATIENCE:?}; see the logs in {}",
                    self.supervisor.log_dir().display()
                ));
            }
            // Polling a condition with a deadline; nothing here depends on the pause's length.
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = connection.close(200, "probe done".into()).await;
        result
    }

    /// Adds `count` products named `{prefix}-{i}` with the largest stock there is, through the
    /// workers, and returns a workload over them. A fresh set per load point keeps every
    /// point's streams equally short, so points compare.
    pub async fn seed(
        &self,
        prefix: &str,
        count: usize,
        progress: &Progress,
    ) -> anyhow::Result<Workload> {
        ensure!(
            !self.clients.is_empty(),
            "connect the clients before adding products"
        );
        progress.message(format!("adding {count} products ({prefix}-*)"));
        let products: Vec<ProductId> = (0..count)
            .map(|i| ProductId::parse(format!("{prefix}-{i:04}")).map_err(anyhow::Error::msg))
            .collect::<Result<_, _>>()?;
        let lanes = self.clients.len().max(1);
        // One admin client (the load's clients send no token, so workers verify none).
        let admin = Arc::new(
            Client::connect(&self.amqp_url, self.namespace.clone())
                .await?
                .with_token(self.admin_token.clone()),
        );
        let mut adding = JoinSet::new();
        for lane in 0..lanes {
            let client = admin.clone();
            let mine: Vec<ProductId> = products.iter().skip(lane).step_by(lanes).cloned().collect();
            let timeout = self.timeout;
            adding.spawn(async move {
                for product_id in mine {
                    let command = CatalogCommand::from(AddProduct {
                        name: ProductName::parse(format!("Bench product {product_id}"))
                            .map_err(anyhow::Error::msg)?,
                        product_id,
                        price: Money::parse(250).map_err(anyhow::Error::msg)?,
                        initial_stock: StockLevel::parse(StockLevel::MAX)
                            .map_err(anyhow::Error::msg)?,
                    });
                    match client.request(&command, timeout).await? {
                        Reply::Accepted { .. } => {}
                        Reply::Rejected { reason } => {
                            bail!("adding a product was refused: {reason}")
                        }
                    }
                }
                Ok::<(), anyhow::Error>(())
            });
        }
        while let Some(joined) = adding.join_next().await {
            joined.context("adding products panicked")??;
        }
        Ok(Workload::new(products))
    }

    /// Products that [`System::fill_log`] gave long streams, as a workload.
    pub fn long_stream_workload(fill: &Fill) -> anyhow::Result<Workload> {
        let products = (0..fill.long_streams)
            .map(|i| ProductId::parse(format!("ll-{i}")).map_err(anyhow::Error::msg))
            .collect::<Result<_, _>>()?;
        Ok(Workload::new(products))
    }

    pub async fn log_mark(&self) -> anyhow::Result<LogMark> {
        let (events, sequence): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM event_log), \
                    coalesce(pg_sequence_last_value(pg_get_serial_sequence('event_log', 'position')::regclass), 0)",
        )
        .fetch_one(self.store.pool())
        .await?;
        Ok(LogMark { events, sequence })
    }

    /// Events appended and positions burned (version conflicts retried) since `before`.
    pub async fn since(&self, before: LogMark) -> anyhow::Result<(i64, i64)> {
        let now = self.log_mark().await?;
        let appended = now.events - before.events;
        Ok((appended, (now.sequence - before.sequence) - appended))
    }

    /// Events the relay and the products projection still had to handle at this moment.
    pub async fn lags(&self) -> anyhow::Result<(i64, i64)> {
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM event_log")
            .fetch_one(self.store.pool())
            .await?;
        let relayed = self.store.checkpoint(relay::CHECKPOINT).await?;
        let projected = self.store.checkpoint(ProductsProjection::NAME).await?;
        Ok((head - relayed, head - projected))
    }

    /// Adds `events` catalog events to the log, written straight into
    /// `event_log` (the workers must be stopped): half in `long_streams` product streams, the
    /// rest in streams of ten. Then vacuums and checkpoints, and moves the relay's and the
    /// projection's checkpoints past the filler, as if that history had been relayed and
    /// projected long ago.
    pub async fn fill_log(
        &self,
        events: u64,
        long_streams: u64,
        progress: &Progress,
    ) -> anyhow::Result<Fill> {
        ensure!(
            self.workers.is_empty(),
            "stop the workers before filling the log"
        );
        let started = Instant::now();
        let missing = events;
        let long_stream_events = (missing / 2 / long_streams.max(1)).clamp(2, 10_000);
        let long_total = if missing >= long_streams * long_stream_events {
            long_streams * long_stream_events
        } else {
            0
        };
        let short_total = missing - long_total;
        let mut written = 0u64;
        for (prefix, per_stream, total) in [
            ("ll-", long_stream_events, long_total),
            ("lf-", SHORT_STREAM_EVENTS, short_total),
        ] {
            let mut from = 0u64;
            while from < total {
                let to = (from + FILL_CHUNK).min(total);
                progress.message(format!(
                    "filling the log: {} of {missing} events",
                    written + to - from
                ));
                sqlx::query(FILL)
                    .bind(prefix)
                    .bind(i64::try_from(per_stream)?)
                    .bind(i64::try_from(from)?)
                    .bind(i64::try_from(to - 1)?)
                    .execute(self.store.pool())
                    .await
                    .context("filling the event log")?;
                written += to - from;
                from = to;
            }
        }
        progress.message("vacuuming and checkpointing after the fill".into());
        // Autovacuum and a checkpoint would otherwise land in the middle of the next
        // measurement; a long-lived log has had both long ago.
        sqlx::raw_sql("VACUUM (ANALYZE) event_log")
            .execute(self.store.pool())
            .await?;
        let _ = sqlx::raw_sql("CHECKPOINT").execute(self.store.pool()).await;
        sqlx::query(
            "INSERT INTO checkpoints (name, position) \
             SELECT n, (SELECT coalesce(max(position), 0) FROM event_log) FROM unnest($1::text[]) AS n \
             ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
        )
        .bind(vec![relay::CHECKPOINT, ProductsProjection::NAME])
        .execute(self.store.pool())
        .await?;
        Ok(Fill {
            events: written,
            long_streams: if long_total > 0 { long_streams } else { 0 },
            long_stream_events: if long_total > 0 {
                long_stream_events
            } else {
                0
            },
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Stops every process, closes the clients, deletes the namespace's queues and exchanges
    /// and drops the database. Errors are reported, not returned: clean-up does all it can.
    pub async fn destroy(mut self) {
        self.stop().await;
        for client in std::mem::take(&mut self.clients) {
            if let Ok(client) = Arc::try_unwrap(client) {
                client.close().await;
            }
        }
        delete_topology(&self.amqp_url, &self.topology, &[]).await;
        self.store.pool().close().await;
        if let Err(error) = store::drop_database(&self.database_url).await {
            eprintln!(
                "could not drop the bench database {}: {error}",
                self.database_url
            );
        }
    }
}

/// One chunk of filler events: rows `$3..=$4` of streams `{prefix}{n}` of `$2` events each,
/// a `product_added` then `stock_reserved`s, shaped exactly as the catalog writes them.
const FILL: &str = "\
INSERT INTO event_log (stream_id, stream_version, event_id, event_type, schema_version, data, metadata)
SELECT 'catalog.product-' || p.id, p.v, gen_random_uuid(),
       CASE WHEN p.v = 1 THEN 'catalog.product_added' ELSE 'catalog.stock_reserved' END,
       1,
       CASE WHEN p.v = 1
            THEN jsonb_build_object('product_id', p.id, 'name', 'Log filler', 'price', 250,
                                    'initial_stock', 1000000000)
            ELSE jsonb_build_object('product_id', p.id, 'order_id', gen_random_uuid(), 'quantity', 1, 'unit_price', 250)
       END,
       jsonb_build_object('correlation_id', gen_random_uuid(), 'causation_id', gen_random_uuid(),
                          'recorded_by', 'bench-fill')
FROM (SELECT $1 || (g / $2)::text AS id, (g % $2) + 1 AS v
      FROM generate_series($3::bigint, $4::bigint) AS g) AS p";

/// Deletes a namespace's queues and exchanges (and `extra` queues), ignoring what is
/// already gone.
pub async fn delete_topology(url: &SecretUrl, topology: &Topology, extra: &[String]) {
    let Ok(connection) = broker::connect(url, "bench cleanup").await else {
        eprintln!("could not connect to {url} to delete the bench's queues");
        return;
    };
    broker::delete_namespace(&connection, topology).await;
    if let Ok(channel) = connection.create_channel().await {
        for queue in extra {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        broker::close_channel(&channel, "cleanup").await;
    }
    let _ = connection.close(200, "cleanup".into()).await;
}
