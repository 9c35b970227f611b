//! A lesson's own small system: a fresh namespace and database, worker replicas and the relay
//! as child processes of the `eventline` binary (through [`Supervisor`], as the demo starts
//! them), an operator with an admin token and a customer, and the few moves a lesson makes
//! (kill a replica, add one, place orders, read the inbox).
//!
//! It must never touch a real deployment: the namespace (`lesson-…`) and the database
//! (`{db}_lesson_…`) are this run's alone, and [`Lab::stop`] removes both.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventline_events::auth::Role;
use eventline_events::catalog::{AddProduct, CatalogCommand};
use eventline_events::values::{Money, ProductId, ProductName, StockLevel};
use eventline_events::{Namespace, Reply, Service, Topology};
use eventline_workers::runtime::store::{self, EventStore};
use eventline_workers::runtime::{Config, broker, token};

use crate::client::{Client, OrderOutcome, parse_order};
use crate::supervisor::{Supervisor, system_env};

/// How long any one wait of a lesson may take before it fails, naming what it waited for.
pub const PATIENCE: Duration = Duration::from_secs(20);
/// How long the saga waits for catalog and payments before it cancels an order: long enough
/// that a busy machine's redelivery after a SIGKILL never passes for a timeout (fault
/// tolerance), short enough that the lesson on independent failures sees one in seconds.
pub const SAGA_TIMEOUT_MS: u64 = 5000;

/// One lesson's running system.
pub struct Lab {
    pub namespace: Namespace,
    pub topology: Topology,
    pub config: Config,
    pub store: EventStore,
    /// The operator: an admin token.
    pub admin: Client,
    admin_token: String,
    /// A customer: may place orders.
    pub customer: Client,
    /// Behind a lock so that a lesson can kill or add a replica while its load runs.
    processes: tokio::sync::Mutex<Supervisor>,
}

impl Lab {
    /// Starts `replicas` of each listed service and the relay, and waits until each service's
    /// command queue has that many consumers. `exe` is the `eventline` binary.
    pub async fn start(
        base: &Config,
        exe: &std::path::Path,
        replicas: &[(Service, usize)],
    ) -> anyhow::Result<Self> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let namespace =
            Namespace::parse(&format!("lesson-{}", &id[20..])).map_err(anyhow::Error::msg)?;
        let database_url = base.database_url.with_path(&format!(
            "{}_lesson_{}",
            base.database_url.database_name().unwrap_or("eventline"),
            &id[20..]
        ));
        store::create_database_if_missing(&database_url).await?;
        let store = EventStore::connect(&database_url, 4).await?;
        store.migrate().await?;
        let signing = token::generate_signing_key();
        let config = Config {
            namespace: namespace.clone(),
            database_url: database_url.clone(),
            ..base.clone()
        };
        let topology = Topology::new(namespace.clone());
        let mut env = system_env(
            &base.amqp_url,
            &database_url,
            &namespace,
            &signing,
            SAGA_TIMEOUT_MS,
        );
        env.push(("RUST_LOG".into(), "warn".into()));
        let log_dir = std::env::temp_dir().join(format!("eventline-{namespace}"));
        let mut processes = Supervisor::new(exe, env, log_dir);
        // Declared before anyone publishes, so nothing sent early is returned unroutable.
        {
            let connection = broker::connect(&base.amqp_url, "lesson setup").await?;
            let channel = connection.create_channel().await?;
            for service in Service::ALL {
                broker::declare_service_queues(&channel, &topology, service).await?;
            }
            let _ = connection.close(200, "declared".into()).await;
        }
        processes.spawn("relay", &["relay"])?;
        for (service, n) in replicas {
            for i in 1..=*n {
                processes.spawn(&format!("{service}-{i}"), &["worker", service.name()])?;
            }
        }
        let admin_token = token::mint(&signing, Role::Admin, 3600);
        let admin = Client::connect(&base.amqp_url, namespace.clone())
            .await?
            .with_token(admin_token.clone());
        let customer = Client::connect(&base.amqp_url, namespace.clone())
            .await?
            .with_token(token::mint(&signing, Role::Customer, 3600));
        let lab = Self {
            namespace,
            topology,
            config,
            store,
            admin,
            admin_token,
            customer,
            processes: tokio::sync::Mutex::new(processes),
        };
        for (service, n) in replicas {
            lab.wait_for_consumers(*service, *n).await?;
        }
        Ok(lab)
    }

    /// The operator's token, for a second operator client (another machine, another clock).
    pub fn admin_token(&self) -> String {
        self.admin_token.clone()
    }

    /// Waits until `service`'s command queue has exactly `n` consumers.
    pub async fn wait_for_consumers(&self, service: Service, n: usize) -> anyhow::Result<()> {
        let connection = broker::connect(&self.config.amqp_url, "lesson probe").await?;
        let queue = self.topology.command_queue(service);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let seen = broker::inspect_queue(&connection, &queue)
                .await
                .map(|q| q.consumer_count() as usize)
                .unwrap_or(0);
            if seen == n {
                let _ = connection.close(200, "probe".into()).await;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{queue} has {seen} consumers, not {n}, after {PATIENCE:?}; see the logs in {}",
                    self.processes.lock().await.log_dir().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: the replica dies mid-whatever.
    pub async fn kill(&self, replica: &str) {
        self.processes.lock().await.kill(replica).await;
    }

    /// Starts one more replica named `replica`.
    pub async fn spawn(&self, service: Service, replica: &str) -> anyhow::Result<()> {
        self.processes
            .lock()
            .await
            .spawn(replica, &["worker", service.name()])
            .context("starting a replica")
    }

    /// The operator adds a product with `stock` items.
    pub async fn add_product(&self, id: &str, stock: u32) -> anyhow::Result<()> {
        let command = AddProduct {
            product_id: ProductId::parse(id.into()).map_err(anyhow::Error::msg)?,
            name: ProductName::parse(format!("Lesson {id}")).map_err(anyhow::Error::msg)?,
            price: Money::parse(300).map_err(anyhow::Error::msg)?,
            initial_stock: StockLevel::parse(stock).map_err(anyhow::Error::msg)?,
        };
        match self
            .admin
            .request(&CatalogCommand::from(command), PATIENCE)
            .await?
        {
            Reply::Accepted { .. } => Ok(()),
            refused => bail!("adding {id} was refused: {refused:?}"),
        }
    }

    /// The customer orders one `product` and waits for the outcome (or `PATIENCE`).
    pub async fn order(&self, product: &str, card: &str) -> anyhow::Result<OrderOutcome> {
        let order = parse_order(&[format!("{product}:1")], card).map_err(anyhow::Error::msg)?;
        Ok(self.customer.place_order(&order, PATIENCE).await?)
    }

    /// Messages handled per replica (the inbox's `handled_by`), for `consumer` (e.g.
    /// `catalog.commands`), since `after` (the database's clock, in the inbox).
    pub async fn handled_by(
        &self,
        consumer_prefix: &str,
        after: Option<time::OffsetDateTime>,
    ) -> anyhow::Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT handled_by, count(*) FROM processed_messages \
             WHERE consumer LIKE $1 || '%' AND ($2::timestamptz IS NULL OR processed_at > $2) \
             GROUP BY 1 ORDER BY 1",
        )
        .bind(consumer_prefix)
        .bind(after)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// The database's clock now.
    pub async fn now(&self) -> anyhow::Result<time::OffsetDateTime> {
        Ok(sqlx::query_scalar("SELECT now()")
            .fetch_one(self.store.pool())
            .await?)
    }

    /// Stops every process, removes the namespace and drops the database.
    pub async fn stop(self) {
        self.processes
            .into_inner()
            .stop_all(Duration::from_secs(5))
            .await;
        if let Ok(connection) = broker::connect(&self.config.amqp_url, "lesson cleanup").await {
            broker::delete_namespace(&connection, &self.topology).await;
            let _ = connection.close(200, "cleanup".into()).await;
        }
        self.store.pool().close().await;
        let _ = store::drop_database(&self.config.database_url).await;
    }
}
