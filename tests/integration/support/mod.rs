//! The test harness: a real broker, a real database, and a `TestSystem` per test with its own
//! broker namespace and its own database, so tests run in parallel without seeing each other.
//!
//! Where the services come from, in order:
//! 1. `TEST_AMQP_URL` / `TEST_DATABASE_URL`, if set;
//! 2. the local defaults (`amqp://guest:guest@127.0.0.1:5672/%2f`,
//!    `postgres://root@127.0.0.1:5432/postgres`), if they answer;
//! 3. testcontainers, with images `EVENTLINE_TEST_RABBITMQ_IMAGE` (default `rabbitmq:3.13`)
//!    and `EVENTLINE_TEST_POSTGRES_IMAGE` (default `postgres:16`).

#![allow(dead_code)]

mod infra;
pub mod sabotage;
pub mod spans;

use std::future::Future;
use std::time::{Duration, Instant};

use eventline::supervisor::Supervisor;
use eventline::{Client, DeadLetter};
use eventline_events::auth::Role;
use eventline_events::catalog::{AddProduct, CatalogCommand, ReserveStock};
use eventline_events::values::{Money, OrderId, ProductId, ProductName, Quantity, StockLevel};
use eventline_events::{Namespace, OutgoingMessage, Reply, Service, Topology};
use eventline_workers::runtime::Handler;
use eventline_workers::runtime::config::{self, AuthKeys, PaymentSettings, RetryPolicy, SagaKeys};
use eventline_workers::runtime::relay::{Relay, RelayProgress};
use eventline_workers::runtime::store::{self, EventStore};
use eventline_workers::runtime::worker::CommandWorker;
use eventline_workers::runtime::{Config, SecretUrl, Shutdown};
use eventline_workers::runtime::{broker, presence, token};
use eventline_workers::services;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use infra::services;

/// How long any wait in a test may take before it fails with what it was waiting for.
pub const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);

/// Polls `probe` until it returns `Some`, or panics after [`PATIENCE`] naming `what` and the
/// last thing seen.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {PATIENCE:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(POLL.min(deadline - Instant::now())).await,
        }
    }
}

/// One test's private system: namespace, database, client, and whatever workers it starts.
pub struct TestSystem {
    pub namespace: Namespace,
    pub topology: Topology,
    pub config: Config,
    pub store: EventStore,
    pub client: Client,
    shutdown: Shutdown,
    tasks: JoinSet<()>,
    relay: Option<watch::Receiver<RelayProgress>>,
    processes: Option<Supervisor>,
    cleaned: bool,
}

impl TestSystem {
    /// A fresh namespace and database, migrated, with the catalog's queues declared and a
    /// connected client. No workers yet.
    pub async fn start() -> Self {
        // `TEST_LOG=debug cargo test …` shows the in-process workers' logs.
        spans::install();
        let services = services().await;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let namespace = Namespace::parse(&format!("t-{}", &id[20..])).unwrap();
        let database_url = services
            .database_url
            .with_path(&format!("eventline_test_{id}"));
        store::create_database_if_missing(&database_url)
            .await
            .expect("create the test database");
        let store = EventStore::connect(&database_url, 10)
            .await
            .expect("connect to the test database");
        store.migrate().await.expect("migrate the test database");
        let signing = token::generate_signing_key();
        let config = Config {
            amqp_url: services.amqp_url.clone(),
            database_url,
            namespace: namespace.clone(),
            replica: "test".into(),
            prefetch: 16,
            max_db_connections: 8,
            auth: AuthKeys::from_signing(signing.clone()),
            // Orders signs the saga's steps, catalog and payments their replies.
            saga: SagaKeys::generate(),
            saga_timeout: Duration::from_secs(3),
            payments: PaymentSettings {
                slow_delay: Duration::from_secs(6),
                ..PaymentSettings::default()
            },
            retry: RetryPolicy::default(),
            dedup_window: config::DEFAULT_DEDUP_WINDOW,
            db_acquire_timeout: config::DEFAULT_DB_ACQUIRE_TIMEOUT,
        };
        let topology = Topology::new(namespace.clone());
        // Declared up front so commands published before a worker starts are queued, not lost.
        let connection = broker::connect(&config.amqp_url, "test setup")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        // The catalog's, so that commands published before a worker starts are queued, not
        // returned. Other services' workers declare their own when they start.
        broker::declare_service_queues(&channel, &topology, Service::Catalog)
            .await
            .unwrap();
        let _ = connection.close(200, "ok".into()).await;
        let client = Client::connect(&config.amqp_url, namespace.clone())
            .await
            .expect("connect the client")
            .with_token(mint(&signing, Role::Admin, Duration::from_secs(3600)))
            // The operator's client: it may also send a single saga step (tests of the
            // catalog's reservation rules do). Clients from `client_with_token` may not.
            .with_saga_key(config.saga.orders.signing.clone().expect("test keys").0);
        Self {
            namespace,
            topology,
            config,
            store,
            client,
            shutdown: Shutdown::new(),
            tasks: JoinSet::new(),
            relay: None,
            processes: None,
            cleaned: false,
        }
    }

    /// A system with `replicas` in-process catalog workers (each also runs the products
    /// projection). The client holds an admin token and orders' signing key.
    pub async fn with_catalog(replicas: usize) -> Self {
        let mut system = Self::start().await;
        for i in 1..=replicas {
            system.start_catalog_worker(&format!("catalog-{i}"));
        }
        system.wait_for_consumers(Service::Catalog, replicas).await;
        system
    }

    /// The whole seed system in-process: `replicas` of every service and the relay.
    pub async fn with_all_services(replicas: usize) -> Self {
        let mut system = Self::start().await;
        for service in Service::ALL {
            for i in 1..=replicas {
                system.start_service(service, &format!("{service}-{i}"));
            }
        }
        system.start_relay();
        for service in Service::ALL {
            system.wait_for_consumers(service, replicas).await;
        }
        system
    }

    /// Starts one in-process replica of a service (worker and projections).
    pub fn start_service(&mut self, service: Service, replica: &str) {
        let config = Config {
            replica: replica.to_owned(),
            ..self.config.clone()
        };
        self.start_service_with(service, config);
    }

    /// Starts one in-process replica of a service with its own configuration (a short dedup
    /// window, a database that does not answer).
    pub fn start_service_with(&mut self, service: Service, config: Config) {
        // Its own small pool, as a real replica process has: replicas sharing one pool would
        // starve each other (and the projections) under load.
        let store =
            EventStore::connect_lazy_with(&config.database_url, 4, config.db_acquire_timeout)
                .expect("a pool");
        self.tasks
            .spawn(services::run(service, config, store, self.shutdown.clone()));
    }

    /// Starts one in-process worker running `handler` (a test's own, or a service's) with
    /// `config`, through the real [`CommandWorker`].
    pub fn start_handler<H: Handler>(&mut self, config: Config, handler: H) {
        let store = EventStore::connect_lazy(&config.database_url, 4).expect("a pool");
        self.tasks
            .spawn(CommandWorker::new(config, store, handler).run(self.shutdown.clone()));
    }

    /// Serves this system's `/metrics`, `/healthz` and `/readyz` on a free loopback port,
    /// with the database sampler (and the relay-stall check when `relay`), as a server
    /// process does with EVENTLINE_METRICS_ADDR. Returns the bound address.
    pub async fn serve_observability(&self, relay: bool) -> std::net::SocketAddr {
        let settings = eventline_workers::runtime::http::Settings {
            address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            relay_stall: Duration::from_secs(30),
        };
        settings
            .start(&self.namespace, &self.store, relay, &self.shutdown)
            .await
            .expect("serve the observability endpoint")
            .expect("an address was given")
    }

    /// A session token signed with this system's key.
    pub fn token(&self, role: Role, lifetime: Duration) -> String {
        let signing = &self.config.auth.signing.as_ref().expect("test keys").0;
        mint(signing, role, lifetime)
    }

    /// A client with its own connection and the given token, and no service credential: what
    /// any customer, admin or other service can send.
    pub async fn client_with_token(&self, token: Option<String>) -> Client {
        let client = Client::connect(&self.config.amqp_url, self.namespace.clone())
            .await
            .unwrap();
        match token {
            Some(token) => client.with_token(token),
            None => client,
        }
    }

    /// `service`'s own signing key for saga traffic (orders', catalog's or payments').
    pub fn signing_key(&self, service: Service) -> ed25519_dalek::SigningKey {
        let keys = self.config.saga.of(service).expect("a saga service");
        keys.signing.clone().expect("test keys").0
    }

    /// A client with its own connection that signs what it sends with orders' key, as the
    /// saga does: for tests that drive catalog's or payments' steps directly.
    pub async fn saga_client(&self) -> Client {
        let key = self.signing_key(Service::Orders);
        self.client_with_token(None).await.with_saga_key(key)
    }

    /// Waits until `n` consumers are attached to the catalog's command queue.
    pub async fn wait_for_consumers(&self, service: Service, n: usize) {
        let connection = broker::connect(&self.config.amqp_url, "test probe")
            .await
            .unwrap();
        let queue = self.topology.command_queue(service);
        eventually(&format!("{n} consumers on {queue}"), || {
            let connection = &connection;
            let queue = queue.clone();
            async move {
                let declared = broker::inspect_queue(connection, &queue)
                    .await
                    .map_err(|e| e.to_string())?;
                let consumers = declared.consumer_count() as usize;
                if consumers >= n {
                    Ok(())
                } else {
                    Err(format!("{consumers} consumers"))
                }
            }
        })
        .await;
        let _ = connection.close(200, "probe".into()).await;
    }

    /// What `service`'s command queue still holds, ready for a consumer (not acked).
    pub async fn queued_commands(&self, service: Service) -> u32 {
        let connection = broker::connect(&self.config.amqp_url, "test probe")
            .await
            .unwrap();
        let declared = broker::inspect_queue(&connection, &self.topology.command_queue(service))
            .await
            .unwrap();
        let _ = connection.close(200, "probe".into()).await;
        declared.message_count()
    }

    pub fn start_catalog_worker(&mut self, replica: &str) {
        self.start_service(Service::Catalog, replica);
    }

    /// Starts the relay; returns its progress.
    pub fn start_relay(&mut self) -> watch::Receiver<RelayProgress> {
        let relay = Relay::new(self.config.clone(), self.store.clone());
        let progress = relay.progress();
        self.relay = Some(progress.clone());
        // Its heartbeat, as `eventline relay` sends one (the dashboard test draws it).
        let presence = presence::Announcer::relay(self.config.clone(), progress.clone());
        self.tasks.spawn(presence.run(self.shutdown.clone()));
        self.tasks.spawn(relay.run(self.shutdown.clone()));
        progress
    }

    /// Child processes of the real `eventline` binary, configured for this test's system.
    pub fn processes(&mut self) -> &mut Supervisor {
        let config = &self.config;
        self.processes.get_or_insert_with(|| {
            Supervisor::new(
                env!("CARGO_BIN_EXE_eventline"),
                [
                    ("AMQP_URL".into(), config.amqp_url.expose().to_owned()),
                    (
                        "DATABASE_URL".into(),
                        config.database_url.expose().to_owned(),
                    ),
                    ("EVENTLINE_NAMESPACE".into(), config.namespace.to_string()),
                    ("EVENTLINE_PREFETCH".into(), "16".into()),
                    (
                        "EVENTLINE_SAGA_TIMEOUT_MS".into(),
                        config.saga_timeout.as_millis().to_string(),
                    ),
                    (
                        "EVENTLINE_AUTH_SIGNING_KEY".into(),
                        token::encode_key(
                            &config
                                .auth
                                .signing
                                .as_ref()
                                .expect("test keys")
                                .0
                                .to_bytes(),
                        ),
                    ),
                    ("RUST_LOG".into(), "info".into()),
                ]
                .into_iter()
                .chain(config.saga.signing_env())
                .collect(),
                std::env::temp_dir().join(format!("eventline-{}", config.namespace)),
            )
        })
    }

    pub async fn add_product(&self, id: &str, stock: u32) -> Reply {
        let command = AddProduct {
            product_id: product(id),
            name: ProductName::parse(format!("Product {id}")).unwrap(),
            price: Money::parse(250).unwrap(),
            initial_stock: StockLevel::parse(stock).unwrap(),
        };
        self.client
            .request(&CatalogCommand::from(command), PATIENCE)
            .await
            .expect("reply to add_product")
    }

    pub async fn reserve(&self, id: &str, order: OrderId, quantity: u32) -> Reply {
        let command = ReserveStock {
            product_id: product(id),
            order_id: order,
            quantity: Quantity::parse(quantity).unwrap(),
        };
        self.client
            .request(&CatalogCommand::from(command), PATIENCE)
            .await
            .expect("reply to reserve_stock")
    }

    /// Stream versions of one stream, in order.
    pub async fn stream_versions(&self, stream_id: &str) -> Vec<i64> {
        sqlx::query_scalar(
            "SELECT stream_version FROM event_log WHERE stream_id = $1 ORDER BY stream_version",
        )
        .bind(stream_id)
        .fetch_all(self.store.pool())
        .await
        .unwrap()
    }

    /// Sends a prepared message and waits for its reply, panicking with its type if none
    /// comes within [`PATIENCE`].
    pub async fn request(&self, message: OutgoingMessage) -> Reply {
        let what = message.metadata.message_type.clone();
        self.client
            .request_message(message, PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("{what}: no reply: {e}"))
    }

    /// Waits until `service`'s dead-letter queue holds `n` letters (it reads at most 10),
    /// and returns them, naming `what` if it never does.
    pub async fn wait_for_dead_letters(
        &self,
        what: &str,
        service: Service,
        n: usize,
    ) -> Vec<DeadLetter> {
        self.wait_for_dead_letters_where(what, service, n, |_| true)
            .await
    }

    /// Waits until exactly `n` of `service`'s dead letters are ones `keep` keeps; returns them.
    pub async fn wait_for_dead_letters_where(
        &self,
        what: &str,
        service: Service,
        n: usize,
        keep: impl Fn(&DeadLetter) -> bool,
    ) -> Vec<DeadLetter> {
        eventually(what, || async {
            let letters: Vec<DeadLetter> = self
                .client
                .dead_letters(service, 100)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|l| keep(l))
                .collect();
            if letters.len() == n {
                Ok(letters)
            } else {
                Err(format!("{} dead letters", letters.len()))
            }
        })
        .await
    }

    /// Waits until `sql` (a `count(*)`) counts `n`, naming `what` if it never does.
    pub async fn wait_for_count(&self, what: &str, sql: &str, n: i64) {
        eventually(what, || async {
            let seen = self.count(sql).await;
            if seen == n {
                Ok(())
            } else {
                Err(format!("{seen}, not {n}: {sql}"))
            }
        })
        .await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(self.store.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Waits until the products projection has applied everything in the log.
    pub async fn wait_for_projection(&self) {
        self.wait_for_checkpoint("projection.catalog_products")
            .await;
    }

    /// Waits until no stock is reserved (every compensation applied) and the products
    /// projection has caught up.
    pub async fn wait_until_settled(&self) {
        eventually("compensations to finish", || async {
            self.wait_for_projection().await;
            let held = self
                .count("SELECT coalesce(sum(reserved), 0)::bigint FROM catalog_products")
                .await;
            if held == 0 {
                Ok(())
            } else {
                Err(format!("{held} items still reserved"))
            }
        })
        .await;
    }

    /// Waits until the reader named `checkpoint` has passed everything now in the log.
    pub async fn wait_for_checkpoint(&self, checkpoint: &str) {
        let max = self
            .count("SELECT coalesce(max(position), 0) FROM event_log")
            .await;
        eventually(&format!("{checkpoint} to catch up"), || async {
            let at = self
                .store
                .checkpoint(checkpoint)
                .await
                .map_err(|e| e.to_string())?;
            if at >= max {
                Ok(())
            } else {
                Err(format!("at {at} of {max}"))
            }
        })
        .await;
    }

    /// (available, reserved, sold) of a product in the read model.
    pub async fn stock(&self, id: &str) -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT available, reserved, sold FROM catalog_products WHERE product_id = $1",
        )
        .bind(id)
        .fetch_one(self.store.pool())
        .await
        .unwrap()
    }

    /// Stops every worker, relay and projection (in-process and child processes); the
    /// database and queues stay for inspection.
    pub async fn stop_workers(&mut self) {
        self.shutdown.trigger();
        while self.tasks.join_next().await.is_some() {}
        if let Some(mut processes) = self.processes.take() {
            processes.stop_all(Duration::from_secs(10)).await;
        }
    }

    /// Stops workers, deletes the namespace's queues and exchanges, drops the database.
    pub async fn stop(mut self) {
        self.stop_workers().await;
        cleanup(
            &self.config.amqp_url,
            &self.topology,
            &self.config.database_url,
        )
        .await;
        self.cleaned = true;
    }
}

impl Drop for TestSystem {
    /// A test that panicked still removes its queues and database.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        self.shutdown.trigger();
        let (amqp, topology, db) = (
            self.config.amqp_url.clone(),
            self.topology.clone(),
            self.config.database_url.clone(),
        );
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Runtime::new() {
                rt.block_on(cleanup(&amqp, &topology, &db));
            }
        })
        .join();
    }
}

async fn cleanup(amqp_url: &SecretUrl, topology: &Topology, database_url: &SecretUrl) {
    if let Ok(connection) = broker::connect(amqp_url, "test cleanup").await {
        broker::delete_namespace(&connection, topology).await;
        let _ = connection.close(200, "cleanup".into()).await;
    }
    let _ = store::drop_database(database_url).await;
}

/// Signs a token for a new user with `role`, valid for `lifetime` (negative: already expired).
pub fn mint(signing: &ed25519_dalek::SigningKey, role: Role, lifetime: Duration) -> String {
    token::mint(signing, role, lifetime.as_secs() as i64)
}

pub fn product(id: &str) -> ProductId {
    ProductId::parse(id.to_owned()).unwrap()
}
