//! `eventline chaos`: the whole system under injected faults, with the promise checked after
//! every scenario — no accepted command lost, none applied twice.
//!
//! Each scenario gets a namespace and a database of its own, starts the relay and worker
//! replicas of every service as child processes whose broker and database connections run
//! through [`proxy::Proxy`]s, and then, at the same time:
//! - two clients place orders at a steady pace (retrying with the *same* message id whenever a
//!   reply does not come, as a real client must), plus a few poison messages;
//! - the fault loop injects the scenario's fault a bounded number of times, clears it, and
//!   measures how long until a fresh command is answered again (recovery).
//!
//! When both are done it waits, within a stated bound, for every accepted order to end, and
//! checks the log: see [`checks`].

pub mod checks;
pub mod faults;
pub mod proxy;

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventline_events::Topology;
use eventline_events::auth::Role;
use eventline_events::catalog::{AddProduct, CatalogCommand, Restock};
use eventline_events::orders::OrdersCommand;
use eventline_events::values::{Money, ProductId, ProductName, Quantity, StockLevel};
use eventline_events::{CorrelationId, Metadata, Namespace, OutgoingMessage, Reply, Service};
use eventline_workers::runtime::store::{self, EventStore};
use eventline_workers::runtime::{Config, SecretUrl, broker, token};
use tokio::sync::Mutex;

use crate::client::{Client, parse_order};
use crate::supervisor::Supervisor;
pub use checks::Checks;
pub use faults::Scenario;
use proxy::Proxy;

#[derive(Clone, Debug, clap::Args)]
pub struct ChaosOptions {
    /// Scenarios to run (repeat the flag); all of them when none is given.
    #[arg(long = "scenario", value_enum)]
    pub scenarios: Vec<Scenario>,
    /// Orders placed during each scenario.
    #[arg(long, default_value_t = 120)]
    pub orders: usize,
    /// Times the fault is injected per scenario.
    #[arg(long, default_value_t = 4)]
    pub faults: usize,
    /// How long a lasting fault (broker down, alarm, stall, latency) is held, in ms.
    #[arg(long, default_value_t = 2000)]
    pub hold_ms: u64,
    /// Worker replicas per service.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// After the last fault clears, every accepted order must have ended within this many
    /// seconds, and each recovery must take less.
    #[arg(long, default_value_t = 60)]
    pub bound_s: u64,
    /// The RabbitMQ node that `rabbitmqctl -n` acts on (default: rabbitmqctl's own default,
    /// this machine's node).
    #[arg(long)]
    pub rabbitmq_node: Option<String>,
    /// The Debian PostgreSQL cluster to restart, as `version/name` (default: the newest
    /// version's `main`).
    #[arg(long)]
    pub pg_cluster: Option<String>,
}

impl ChaosOptions {
    /// The short form the test suite runs.
    pub fn quick(scenario: Scenario) -> Self {
        Self {
            scenarios: vec![scenario],
            orders: 24,
            faults: 2,
            hold_ms: 1000,
            replicas: 2,
            bound_s: 60,
            rabbitmq_node: None,
            pg_cluster: None,
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub faults_injected: usize,
    /// What the faults did, as seen: processes killed, connections terminated, reconnections
    /// through the proxies.
    pub evidence: String,
    /// Connections the workers opened through the proxies after the load began (each
    /// reconnection after a fault is one).
    pub reconnections: u64,
    /// Orders placed (each retried under one message id until answered).
    pub sent: usize,
    /// Orders the system accepted (placed); the others were refused with a reason.
    pub accepted: usize,
    /// Accepted orders missing from the log or not ended within the bound.
    pub lost: usize,
    /// Effects recorded more than once (an event per command, a charge or a reservation per
    /// order).
    pub duplicated: usize,
    /// The longest time from a fault's end until a fresh command was answered.
    pub longest_recovery: Duration,
    /// From the last fault's end until every accepted order had ended.
    pub settled_after: Duration,
    /// The longest a committed event waited for the relay during the load (sampled).
    pub relay_worst_lag: Duration,
    pub checks: Checks,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.checks.failures().is_empty()
    }
}

/// Runs the chosen scenarios one after another and prints the report; fails if any row lost
/// or duplicated anything or broke an invariant.
pub async fn run(base: Config, options: ChaosOptions) -> anyhow::Result<Vec<Row>> {
    let scenarios = if options.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        options.scenarios.clone()
    };
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for scenario in scenarios {
        println!("chaos: {} …", scenario.name());
        let row = run_scenario(&base, scenario, &options, &exe).await?;
        for failure in row.checks.failures() {
            println!("  FAILED: {failure}");
        }
        rows.push(row);
    }
    println!("\n{}", render(&rows));
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.scenario)
        .collect();
    if !failed.is_empty() {
        bail!(
            "scenarios with lost or duplicated commands or broken invariants: {}",
            failed.join(", ")
        );
    }
    Ok(rows)
}

/// The report as a Markdown table.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | faults injected | what happened | commands sent | accepted | lost | duplicated | longest recovery | all ended after | relay worst lag | invariants |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let failures = r.checks.failures();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} s | {:.1} s | {:.2} s | {} |\n",
            r.scenario,
            r.faults_injected,
            r.evidence,
            r.sent,
            r.accepted,
            r.lost,
            r.duplicated,
            r.longest_recovery.as_secs_f64(),
            r.settled_after.as_secs_f64(),
            r.relay_worst_lag.as_secs_f64(),
            if failures.is_empty() {
                "all hold".to_owned()
            } else {
                failures.join("; ")
            }
        ));
    }
    out
}

const PRODUCTS: [(&str, u64); 3] = [("tea", 450), ("coffee", 890), ("mug", 1200)];
const INITIAL_STOCK: u32 = 100_000;
/// A product only the recovery probes restock.
const PROBE_PRODUCT: &str = "probe";
const POISON: usize = 3;

/// One scenario on a system of its own; `exe` is the `eventline` binary to run workers with.
pub async fn run_scenario(
    base: &Config,
    scenario: Scenario,
    options: &ChaosOptions,
    exe: &std::path::Path,
) -> anyhow::Result<Row> {
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let namespace =
        Namespace::parse(&format!("chaos-{}", &run_id[20..])).map_err(anyhow::Error::msg)?;
    let db_name = format!(
        "{}_chaos_{}",
        base.database_url.database_name().unwrap_or("eventline"),
        &run_id[20..]
    );
    let database_url = base.database_url.with_path(&db_name);
    store::create_database_if_missing(&database_url).await?;
    let store = EventStore::connect(&database_url, 4).await?;
    store.migrate().await?;

    let amqp = Proxy::start(upstream(&base.amqp_url, 5672)?).await?;
    let postgres = Proxy::start(upstream(&base.database_url, 5432)?).await?;
    let signing = token::generate_signing_key();
    let log_dir = std::env::current_dir()?
        .join("target/chaos-logs")
        .join(scenario.name());
    let _ = std::fs::remove_dir_all(&log_dir);
    // Orders' key: the system's orders workers sign the saga's steps with it, and the
    // duplicates scenario signs its early steps with it too (a step without it is forbidden).
    let saga = token::generate_signing_key();
    let mut supervisor = Supervisor::new(
        exe,
        vec![
            (
                "AMQP_URL".into(),
                base.amqp_url
                    .with_address(amqp.address())
                    .expose()
                    .to_owned(),
            ),
            (
                "DATABASE_URL".into(),
                database_url
                    .with_address(postgres.address())
                    .expose()
                    .to_owned(),
            ),
            ("EVENTLINE_NAMESPACE".into(), namespace.to_string()),
            ("EVENTLINE_DB_CONNECTIONS".into(), "3".into()),
            (
                "EVENTLINE_AUTH_PUBLIC_KEY".into(),
                token::encode_key(&signing.verifying_key().to_bytes()),
            ),
            (
                "EVENTLINE_AUTH_SIGNING_KEY".into(),
                token::encode_key(&signing.to_bytes()),
            ),
            // Orders signs the saga's steps; the other services only verify (they drop it).
            (
                "EVENTLINE_ORDERS_SIGNING_KEY".into(),
                token::encode_key(&saga.to_bytes()),
            ),
            ("EVENTLINE_SAGA_TIMEOUT_MS".into(), "5000".into()),
            ("RUST_LOG".into(), "info,lapin=off".into()),
        ],
        &log_dir,
    );
    let system = System {
        base,
        topology: Topology::new(namespace.clone()),
        namespace,
        store: store.clone(),
        signing,
        saga,
        options,
        scenario,
    };
    let targets = faults::Targets {
        amqp: &amqp,
        postgres: &postgres,
        admin_database_url: &base.database_url.with_path("postgres"),
        database: &db_name,
        rabbitmq_node: options.rabbitmq_node.as_deref(),
        pg_cluster: options.pg_cluster.as_deref(),
        held: &tokio::sync::Mutex::new(Vec::new()),
    };
    let result = system.drive(&mut supervisor, &targets).await;
    // Whatever happened, put the servers back before anything else runs.
    let restored = faults::restore_servers(scenario, &targets).await;
    supervisor.stop_all(Duration::from_secs(10)).await;
    if let Ok(connection) = broker::connect(&base.amqp_url, "chaos cleanup").await {
        let _ = broker::delete_namespace(&connection, &system.topology).await;
        // The audit's tap queue, if the run ended before the audit removed it.
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(
                    system.topology.tap_queue("audit").as_str().into(),
                    Default::default(),
                )
                .await;
        }
        let _ = connection.close(200, "cleaned".into()).await;
    }
    store.pool().close().await;
    if result.as_ref().is_ok_and(Row::passed) {
        let _ = store::drop_database(&database_url).await;
    } else {
        println!(
            "  kept {database_url} and the logs in {} for a look",
            log_dir.display()
        );
    }
    restored?;
    result
}

struct System<'a> {
    base: &'a Config,
    namespace: Namespace,
    topology: Topology,
    store: EventStore,
    signing: ed25519_dalek::SigningKey,
    /// Orders' key, for the saga steps the duplicates scenario sends early.
    saga: ed25519_dalek::SigningKey,
    options: &'a ChaosOptions,
    scenario: Scenario,
}

/// The answer a client finally got for one order.
#[derive(Debug)]
enum Answer {
    Accepted,
    Refused(String),
    Unanswered,
}

impl System<'_> {
    async fn drive(
        &self,
        supervisor: &mut Supervisor,
        targets: &faults::Targets<'_>,
    ) -> anyhow::Result<Row> {
        let replicas = self.options.replicas.max(1);
        let mut names = vec!["relay".to_owned()];
        supervisor.spawn("relay", &["relay"])?;
        for service in Service::ALL {
            for i in 1..=replicas {
                let name = format!("{service}-{i}");
                supervisor.spawn(&name, &["worker", service.name()])?;
                names.push(name);
            }
        }
        let audit = checks::Audit::declare(&self.base.amqp_url, &self.topology).await?;
        // Declared as the workers declare them (idempotent), so nothing sent before a worker
        // is up is returned unroutable.
        let connection = broker::connect(&self.base.amqp_url, "chaos setup").await?;
        let channel = connection.create_channel().await?;
        for service in Service::ALL {
            broker::declare_service_queues(&channel, &self.topology, service).await?;
        }
        let _ = connection.close(200, "declared".into()).await;
        let admin = Connections::new(self, Role::Admin);
        self.setup(&admin).await?;
        let connections_at_start = targets.amqp.accepted() + targets.postgres.accepted();

        let bound = Duration::from_secs(self.options.bound_s);
        let faults_done = std::sync::atomic::AtomicBool::new(false);
        let load = self.load(bound, &faults_done);
        let faults = async {
            let result = self
                .faults(supervisor, &names, targets, &admin, bound)
                .await;
            faults_done.store(true, std::sync::atomic::Ordering::Release);
            result
        };
        let lag = checks::relay_worst_lag(&self.store, &faults_done);
        let (answers, faults, relay_worst_lag) = tokio::join!(load, faults, lag);
        let (injected, mut evidence, longest_recovery, faults_cleared) = faults?;
        let reconnections = (targets.amqp.accepted() + targets.postgres.accepted())
            .saturating_sub(connections_at_start);
        if !evidence.is_empty() {
            evidence.push_str("; ");
        }
        evidence.push_str(&format!("{reconnections} connections re-opened by workers"));
        let answers = answers?;

        let accepted: Vec<_> = answers
            .iter()
            .filter(|(_, a)| matches!(a, Answer::Accepted))
            .map(|(id, _)| *id)
            .collect();
        let unanswered = answers
            .iter()
            .filter(|(_, a)| matches!(a, Answer::Unanswered))
            .count();
        let refused: BTreeMap<String, usize> =
            answers.iter().fold(BTreeMap::new(), |mut m, (_, a)| {
                if let Answer::Refused(code) = a {
                    *m.entry(code.clone()).or_default() += 1;
                }
                m
            });
        let ended = checks::wait_until_ended(&self.store, &accepted, faults_cleared + bound).await;
        let settled_after = faults_cleared.elapsed();
        let mut checks = checks::run(&self.store, &accepted, &PRODUCTS, INITIAL_STOCK).await?;
        checks.unanswered = unanswered;
        checks.refused = refused;
        checks.not_ended = ended.not_ended;
        checks.recovery_within_bound = longest_recovery < bound;
        // A fresh connection: the faults may have broken any cached one.
        let auditor = Client::connect(&self.base.amqp_url, self.namespace.clone()).await?;
        checks.dead_letters = checks::dead_letters(&auditor, POISON).await?;
        auditor.close().await;
        checks.relay = audit.verify(&self.store, bound).await?;
        Ok(Row {
            scenario: self.scenario.name(),
            faults_injected: injected,
            evidence,
            reconnections,
            sent: answers.len(),
            accepted: accepted.len(),
            lost: checks.lost + ended.not_ended,
            duplicated: checks.duplicated,
            longest_recovery,
            settled_after,
            relay_worst_lag,
            checks,
        })
    }

    /// Products with plenty of stock, so orders end by payment outcome, not by stock.
    async fn setup(&self, admin: &Connections) -> anyhow::Result<()> {
        let client = admin.get().await?;
        for (id, price) in PRODUCTS.iter().copied().chain([(PROBE_PRODUCT, 1)]) {
            let command = AddProduct {
                product_id: ProductId::parse(id.into()).map_err(anyhow::Error::msg)?,
                name: ProductName::parse(id.into()).map_err(anyhow::Error::msg)?,
                price: Money::parse(price).map_err(anyhow::Error::msg)?,
                initial_stock: StockLevel::parse(INITIAL_STOCK).map_err(anyhow::Error::msg)?,
            };
            let reply = client
                .request(&CatalogCommand::from(command), Duration::from_secs(30))
                .await
                .context("adding the products (did the workers start? see target/chaos-logs)")?;
            if !reply.is_accepted() {
                bail!("adding {id} was refused: {reply:?}");
            }
        }
        Ok(())
    }

    /// Two clients place the orders at a steady pace spread over the fault window, a few at a
    /// time, and a few poison messages; each order is retried under its one message id until
    /// it is answered or the bound passes.
    async fn load(
        &self,
        bound: Duration,
        faults_done: &std::sync::atomic::AtomicBool,
    ) -> anyhow::Result<Vec<(uuid::Uuid, Answer)>> {
        let clients = [
            Arc::new(Connections::new(self, Role::Customer)),
            Arc::new(Connections::new(self, Role::Customer)),
        ];
        let window = self.fault_window();
        let pace = window / (self.options.orders.max(1) as u32);
        let mut tasks = tokio::task::JoinSet::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(8));
        // Orders keep coming, at a steady pace, until the faults are over and at least
        // `orders` were placed: every fault meets traffic.
        let every = (self.options.orders / POISON).max(1);
        let mut i = 0;
        while i < self.options.orders || !faults_done.load(std::sync::atomic::Ordering::Acquire) {
            if i % every == 0 && i / every < POISON {
                let (service, body, properties) = checks::poison(i / every);
                if !clients[0]
                    .publish_raw(service, &body, properties, bound)
                    .await
                {
                    bail!("a poison message could not be published within {bound:?}");
                }
            }
            let card = if i % 7 == 5 {
                "tok_declined"
            } else {
                "tok_visa"
            };
            let words = vec![
                format!("{}:{}", PRODUCTS[i % 3].0, 1 + i % 2),
                format!("{}:1", PRODUCTS[(i + 1) % 3].0),
            ];
            let order = parse_order(&words, card).map_err(anyhow::Error::msg)?;
            let mut metadata = Metadata::origin("orders.place_order");
            metadata.correlation_id = CorrelationId::from_uuid(order.order_id.as_uuid());
            let message = OutgoingMessage::new(metadata, &OrdersCommand::from(order));
            let client = clients[i % 2].clone();
            let permit = limit.clone().acquire_owned().await?;
            let twice = self.scenario == Scenario::Duplicates;
            tasks.spawn(async move {
                let answer = client.deliver(&message, bound, twice).await;
                drop(permit);
                (message.metadata.correlation_id.as_uuid(), message, answer)
            });
            tokio::time::sleep(pace).await;
            i += 1;
        }
        let mut answers = Vec::new();
        let mut replay = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (id, message, answer) = done?;
            if matches!(answer, Answer::Accepted) && replay.len() < 10 {
                replay.push(message);
            }
            answers.push((id, answer));
        }
        if self.scenario == Scenario::Duplicates {
            // Old message ids, replayed after their orders were handled: answered from the
            // inbox, never placed again.
            for message in replay {
                match clients[0].deliver(&message, bound, false).await {
                    Answer::Accepted => {}
                    other => bail!(
                        "a replayed place_order was answered {other:?}, not with its stored acceptance"
                    ),
                }
            }
            for step in checks::steps_before_state(&self.saga) {
                if let Answer::Unanswered = clients[0].deliver(&step, bound, false).await {
                    bail!(
                        "{} sent before its state was never answered",
                        step.metadata.message_type
                    );
                }
            }
        }
        Ok(answers)
    }

    fn fault_window(&self) -> Duration {
        let per_fault =
            Duration::from_millis(self.options.hold_ms.max(500)) + Duration::from_millis(500);
        per_fault * self.options.faults.max(1) as u32
    }

    /// Injects the fault `faults` times; after each one clears, times a fresh command until
    /// it is answered. Returns (faults injected, longest recovery, when the last cleared).
    async fn faults(
        &self,
        supervisor: &mut Supervisor,
        names: &[String],
        targets: &faults::Targets<'_>,
        admin: &Connections,
        bound: Duration,
    ) -> anyhow::Result<(usize, String, Duration, Instant)> {
        let hold = Duration::from_millis(self.options.hold_ms);
        let mut longest = Duration::ZERO;
        let mut seen: Vec<String> = Vec::new();
        let mut injected = 0;
        let mut rng = crate::demo::fastrand_like(names.len() as u64 + self.options.orders as u64);
        // Let the load start first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..self.options.faults {
            match self.scenario {
                Scenario::KillWorkers => {
                    // One replica of every service, and the relay, each time.
                    for prefix in Service::ALL.iter().map(|s| s.name()).chain(["relay"]) {
                        let candidates: Vec<&String> =
                            names.iter().filter(|n| n.starts_with(prefix)).collect();
                        let name = candidates[(rng() % candidates.len() as u64) as usize];
                        supervisor.kill(name).await;
                        seen.push(format!("killed {name}"));
                        let args: Vec<&str> = if name == "relay" {
                            vec!["relay"]
                        } else {
                            vec!["worker", prefix]
                        };
                        supervisor.spawn(name, &args)?;
                    }
                }
                Scenario::Duplicates => seen.push(
                    "every order delivered twice, 10 old ids replayed, 2 steps before their state"
                        .into(),
                ),
                lasting => {
                    seen.push(faults::inject(lasting, targets).await?);
                    if !matches!(
                        lasting,
                        Scenario::DbTerminate
                            | Scenario::NetDrop
                            | Scenario::BrokerConnections
                            | Scenario::DbRestart
                    ) {
                        tokio::time::sleep(hold).await;
                    }
                    faults::clear(lasting, targets).await?;
                }
            }
            injected += 1;
            let cleared = Instant::now();
            probe(admin, bound).await?;
            longest = longest.max(cleared.elapsed());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut counted: BTreeMap<String, usize> = BTreeMap::new();
        for what in seen {
            *counted.entry(what).or_default() += 1;
        }
        let evidence: Vec<String> = counted
            .into_iter()
            .map(|(what, n)| if n > 1 { format!("{what} ×{n}") } else { what })
            .collect();
        Ok((injected, evidence.join(", "), longest, Instant::now()))
    }
}

/// Restocks the probe product under a fresh message id, retrying that same id until answered.
async fn probe(admin: &Connections, bound: Duration) -> anyhow::Result<()> {
    let message = OutgoingMessage::new(
        Metadata::origin("catalog.restock"),
        &CatalogCommand::from(Restock {
            product_id: ProductId::parse(PROBE_PRODUCT.into()).map_err(anyhow::Error::msg)?,
            quantity: Quantity::parse(1).map_err(anyhow::Error::msg)?,
        }),
    );
    match admin.deliver(&message, bound, false).await {
        Answer::Accepted => Ok(()),
        other => bail!("the recovery probe was answered {other:?} within {bound:?}"),
    }
}

/// A client connection that is re-made whenever the broker drops it, as a real client's
/// would be.
struct Connections {
    url: SecretUrl,
    namespace: Namespace,
    token: String,
    current: Mutex<Option<Arc<Client>>>,
}

impl Connections {
    fn new(system: &System<'_>, role: Role) -> Self {
        Self {
            url: system.base.amqp_url.clone(),
            namespace: system.namespace.clone(),
            token: token::mint(&system.signing, role, 3600),
            current: Mutex::new(None),
        }
    }

    async fn get(&self) -> anyhow::Result<Arc<Client>> {
        let mut current = self.current.lock().await;
        if let Some(client) = current.as_ref() {
            return Ok(client.clone());
        }
        let client = Arc::new(
            Client::connect(&self.url, self.namespace.clone())
                .await?
                .with_token(self.token.clone()),
        );
        *current = Some(client.clone());
        Ok(client)
    }

    async fn forget(&self, broken: &Arc<Client>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            *current = None;
        }
    }

    /// Publishes a raw message (the same id every time) until the broker confirms it.
    async fn publish_raw(
        &self,
        service: Service,
        body: &[u8],
        properties: lapin::BasicProperties,
        bound: Duration,
    ) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(client) = self.get().await {
                let sent = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.publish_raw(service, body, properties.clone()),
                )
                .await;
                if let Ok(Ok(())) = sent {
                    return true;
                }
                self.forget(&client).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Sends `message` (the same id every time) until a reply comes or `bound` passes.
    async fn deliver(&self, message: &OutgoingMessage, bound: Duration, twice: bool) -> Answer {
        let deadline = Instant::now() + bound;
        let wait = Duration::from_secs(3);
        while Instant::now() < deadline {
            let Ok(client) = self.get().await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if twice {
                let _ = client.publish(message).await;
            }
            match tokio::time::timeout(
                wait + Duration::from_secs(1),
                client.request_message(message.clone(), wait),
            )
            .await
            {
                Ok(Ok(Reply::Accepted { .. })) => return Answer::Accepted,
                Ok(Ok(Reply::Rejected { reason })) => return Answer::Refused(reason.code),
                Ok(Err(crate::ClientError::Timeout { .. })) => {}
                // Connection trouble (or a publish blocked by an alarm): reconnect, resend.
                Ok(Err(_)) | Err(_) => {
                    self.forget(&client).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Answer::Unanswered
    }
}

/// Where a URL points, resolved (`default_port` when it names none). Chaos acts only on this
/// machine: anything but a loopback address is refused.
fn upstream(url: &SecretUrl, default_port: u16) -> anyhow::Result<SocketAddr> {
    let (host, port) = url
        .host_port()
        .with_context(|| format!("no host in {url}"))?;
    let port = port.unwrap_or(default_port);
    let address = (host.as_str(), port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}:{port} from {url}"))?
        .next()
        .with_context(|| format!("{host}:{port} from {url} resolves to nothing"))?;
    if !address.ip().is_loopback() {
        bail!(
            "chaos injects faults only into services on this machine, but {url} is at {address}; \
             point AMQP_URL and DATABASE_URL at 127.0.0.1"
        );
    }
    Ok(address)
}
