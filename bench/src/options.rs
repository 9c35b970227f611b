//! The command line, and the plan it turns into: how long each phase runs and how big each
//! load is.
//!
//! Two presets share one code path: the default run (about three minutes, for a person
//! comparing commits) and `--quick` (seconds, for CI to check that the bench still runs).
//! Explicit flags override either preset. Nothing here knows what a good figure is: the bench
//! measures and reports, it never asserts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure};
use eventline_workers::runtime::SecretUrl;
use eventline_workers::runtime::config::DEFAULT_AMQP_URL;

/// Measures RabbitMQ and PostgreSQL raw, then eventline end to end on the same services, and
/// reports the gap. Writes bench.json and latency.svg to --out.
#[derive(Clone, Debug, clap::Parser)]
#[command(version, about)]
pub struct Options {
    /// Smoke run for CI: every phase, a few seconds each, small log.
    #[arg(long)]
    pub quick: bool,
    /// Seconds each measured load point runs, after its warm-up [default: 8, --quick: 1.5].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Concurrent clients (one command, or one order, in flight each at saturation)
    /// [default: 64, --quick: 16].
    #[arg(long)]
    pub clients: Option<usize>,
    /// AMQP connections the clients share, round robin (each a `Client`: one channel, one
    /// direct reply-to consumer, one outcome tail for the saga). One per client makes the
    /// broker fan every order's outcome out to as many tails [default: 4, at most --clients].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Worker replica counts to measure saturation with, e.g. 1,2,4. The first is the one
    /// every other end-to-end point uses.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub replicas: Vec<usize>,
    /// Events added to the log before the log-growth points, on top of what the earlier
    /// points appended (e.g. 1000000) [default: 100000, --quick: 10000].
    #[arg(long)]
    pub log_size: Option<u64>,
    /// Products the commands are spread over (few products = many version conflicts).
    #[arg(long, default_value_t = 1000)]
    pub products: usize,
    /// Products for the conflict-heavy point.
    #[arg(long, default_value_t = 4)]
    pub hot_products: usize,
    /// Unacknowledged deliveries per worker, and per consumer in the raw broker test.
    #[arg(long, default_value_t = 64)]
    pub prefetch: u16,
    /// Where bench.json, latency.svg and the workers' logs go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// The broker. Each run uses its own namespace on it and deletes it at the end.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// A database URL on the PostgreSQL server to use; each run creates (and drops) a
    /// database of its own there, so the database named here is only used to connect.
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://root@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// The `eventline` binary whose workers are measured. Without it the bench builds it
    /// with cargo (same profile as the bench itself) and takes it from the same target dir.
    #[arg(long)]
    pub eventline_bin: Option<PathBuf>,
}

/// Every duration and size of one run, fixed before it starts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub quick: bool,
    /// Measured time of each end-to-end load point.
    #[serde(with = "seconds")]
    pub duration: Duration,
    /// Load before each measured window, not recorded (connections, caches, JIT-free but
    /// still: the first commands on a fresh product set are cheaper).
    #[serde(with = "seconds")]
    pub warmup: Duration,
    /// How long each raw publish / insert test runs.
    #[serde(with = "seconds")]
    pub raw_duration: Duration,
    pub clients: usize,
    pub connections: usize,
    pub replicas: Vec<usize>,
    pub log_size: u64,
    pub products: usize,
    pub hot_products: usize,
    pub prefetch: u16,
    /// In-flight publishes in the raw broker test before the publisher waits for a confirm.
    pub confirm_window: usize,
    /// Fractions of saturation offered open loop.
    pub offered_fractions: Vec<f64>,
    /// How long a client waits for one reply before counting it as an error.
    #[serde(with = "seconds")]
    pub request_timeout: Duration,
    #[serde(skip)]
    pub amqp_url: SecretUrl,
    #[serde(skip)]
    pub database_url: SecretUrl,
    #[serde(skip)]
    pub out: PathBuf,
}

impl Plan {
    pub fn new(options: &Options) -> anyhow::Result<Self> {
        let quick = options.quick;
        let duration = options.duration.unwrap_or(if quick { 1.5 } else { 8.0 });
        ensure!(
            duration.is_finite() && (0.2..=3600.0).contains(&duration),
            "--duration {duration} is out of range; use 0.2 to 3600 seconds"
        );
        let clients = options.clients.unwrap_or(if quick { 16 } else { 64 });
        ensure!(
            (1..=1000).contains(&clients),
            "--clients {clients} is out of range; use 1 to 1000"
        );
        let connections = options.connections.unwrap_or(4).min(clients);
        ensure!(
            connections >= 1,
            "--connections {connections} is out of range; use 1 to --clients"
        );
        if options.replicas.is_empty() || options.replicas.iter().any(|&r| !(1..=16).contains(&r)) {
            bail!(
                "--replicas {:?} is invalid; give 1 to 16 replicas per point, e.g. 1,2,4",
                options.replicas
            );
        }
        ensure!(
            (1..=100_000).contains(&options.products),
            "--products must be 1 to 100000"
        );
        ensure!(
            (1..=100_000).contains(&options.hot_products),
            "--hot-products must be 1 to 100000"
        );
        ensure!(options.prefetch >= 1, "--prefetch must be at least 1");
        let log_size = options
            .log_size
            .unwrap_or(if quick { 10_000 } else { 100_000 });
        ensure!(
            log_size <= 100_000_000,
            "--log-size {log_size} is over the bench's limit of 100000000"
        );
        let database_url = SecretUrl::new(options.database_url.clone());
        ensure!(
            database_url.database_name().is_some(),
            "--database-url {database_url} names no database; add one, e.g. /postgres"
        );
        Ok(Self {
            quick,
            duration: Duration::from_secs_f64(duration),
            warmup: Duration::from_secs_f64(if quick { 0.5_f64 } else { 2.0 }.min(duration)),
            raw_duration: Duration::from_secs_f64(if quick { 1.0 } else { 3.0 }),
            clients,
            connections,
            replicas: options.replicas.clone(),
            log_size,
            products: options.products,
            hot_products: options.hot_products,
            prefetch: options.prefetch,
            confirm_window: 256,
            offered_fractions: vec![0.25, 0.50, 0.70, 0.90],
            request_timeout: Duration::from_secs(10),
            amqp_url: SecretUrl::new(options.amqp_url.clone()),
            database_url,
            out: options.out.clone(),
        })
    }

    /// The replica count every end-to-end point but the scaling ones uses.
    pub fn base_replicas(&self) -> usize {
        self.replicas[0]
    }
}

/// Durations as fractional seconds in the JSON, so a reader needs no Duration format.
mod seconds {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(value.as_secs_f64())
    }
}
