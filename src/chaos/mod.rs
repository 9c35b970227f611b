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
mod connections;
pub mod faults;
pub mod proxy;
mod report;
mod system;

use crate::supervisor::Supervisor;
use anyhow::Context;
use anyhow::bail;
use eventline_events::Namespace;
use eventline_events::Topology;
use eventline_workers::runtime::Config;
use eventline_workers::runtime::SecretUrl;
use eventline_workers::runtime::broker;
use eventline_workers::runtime::config::SagaKeys;
use eventline_workers::runtime::store;
use eventline_workers::runtime::store::EventStore;
use eventline_workers::runtime::token;
use proxy::Proxy;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub use checks::Checks;
pub use faults::Scenario;
pub use report::{Row, render};
use system::System;

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
    // The saga's keys: orders' workers sign the steps with orders' (and the duplicates
    // scenario its early steps: a step without it is forbidden), catalog's and payments'
    // workers their replies with their own (orders refuses an unsigned reply). Every worker
    // is handed all three and keeps its own service's.
    let keys = SagaKeys::generate();
    let saga = keys.orders.signing.clone().expect("generated keys").0;
    let mut supervisor = Supervisor::new(
        exe,
        [
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
            ("EVENTLINE_SAGA_TIMEOUT_MS".into(), "5000".into()),
            ("RUST_LOG".into(), "info,lapin=off".into()),
        ]
        .into_iter()
        .chain(keys.signing_env())
        .collect(),
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
