//! `eventline demo`: the seed's picture, running. Two clients talk to three catalog replicas
//! through RabbitMQ while the relay streams the log to the events exchange; then it prints
//! what each client saw, what the stock is, and how the broker spread the work.
//!
//! It uses a namespace and a database of its own (`eventline-demo`, `{db}_demo`), recreated
//! on every run, so it never touches a real deployment's data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventline_events::catalog::{
    AddProduct, CatalogCommand, CommitReservation, ReleaseReservation, ReserveStock, Restock,
};
use eventline_events::values::{Money, OrderId, ProductId, ProductName, Quantity, StockLevel};
use eventline_events::{Metadata, Namespace, OutgoingMessage, Reply, Service, Topology};
use eventline_workers::runtime::broker;
use eventline_workers::runtime::store::{self, EventStore};
use eventline_workers::runtime::{Config, SecretUrl};
use futures_util::StreamExt;
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use sqlx::Row;

use crate::client::Client;
use crate::supervisor::Supervisor;

#[derive(Clone, Debug, clap::Args)]
pub struct DemoOptions {
    /// Catalog worker replicas to start.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Reservations each of the two clients makes.
    #[arg(long, default_value_t = 60)]
    pub orders: usize,
    /// Seed for the clients' random choices, for a repeatable run.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// A row of the products read model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProductRow {
    pub product_id: String,
    pub price: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub stream_version: i64,
}

/// The catalog's read model, ordered by product id.
pub async fn products(store: &EventStore) -> anyhow::Result<Vec<ProductRow>> {
    let rows = sqlx::query(
        "SELECT product_id, price, available, reserved, sold, stream_version \
         FROM catalog_products ORDER BY product_id",
    )
    .fetch_all(store.pool())
    .await
    .context("reading catalog_products (has `eventline migrate` run?)")?;
    rows.into_iter()
        .map(|r| {
            Ok(ProductRow {
                product_id: r.try_get("product_id")?,
                price: r.try_get("price")?,
                available: r.try_get("available")?,
                reserved: r.try_get("reserved")?,
                sold: r.try_get("sold")?,
                stream_version: r.try_get("stream_version")?,
            })
        })
        .collect()
}

const PRODUCTS: [(&str, &str, u64, u32); 3] = [
    ("tea", "Earl Grey tea", 450, 40),
    ("coffee", "Filter coffee", 890, 25),
    ("mug", "Enamel mug", 1200, 8),
];

#[derive(Default)]
struct Tally {
    accepted: usize,
    rejected: BTreeMap<String, usize>,
}

pub async fn run(base: Config, options: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let namespace = Namespace::parse("eventline-demo").map_err(anyhow::Error::msg)?;
    let db_name = format!(
        "{}_demo",
        base.database_url.database_name().unwrap_or("eventline")
    );
    let database_url = base.database_url.with_path(&db_name);
    let topology = Topology::new(namespace.clone());

    println!("eventline demo: namespace {namespace}, database {database_url}");
    reset_broker(&base.amqp_url, &topology).await?;
    store::drop_database(&database_url).await?;
    store::create_database_if_missing(&database_url).await?;
    let store = EventStore::connect(&database_url, 4).await?;
    store.migrate().await?;

    let log_dir = std::env::current_dir()?.join("target/demo-logs");
    let mut supervisor = Supervisor::new(
        std::env::current_exe()?,
        vec![
            ("AMQP_URL".into(), base.amqp_url.expose().to_owned()),
            ("DATABASE_URL".into(), database_url.expose().to_owned()),
            ("EVENTLINE_NAMESPACE".into(), namespace.to_string()),
        ],
        &log_dir,
    );
    let result = drive(&base, &namespace, &store, &mut supervisor, &options).await;
    supervisor.stop_all(Duration::from_secs(10)).await;
    result?;
    println!(
        "\nfinished in {:.1}s; worker logs in {}; explore with EVENTLINE_NAMESPACE={namespace} DATABASE_URL={database_url} eventline products",
        started.elapsed().as_secs_f64(),
        log_dir.display()
    );
    Ok(())
}

async fn drive(
    base: &Config,
    namespace: &Namespace,
    store: &EventStore,
    supervisor: &mut Supervisor,
    options: &DemoOptions,
) -> anyhow::Result<()> {
    supervisor.spawn("relay", &["relay"])?;
    let mut names = Vec::new();
    for i in 1..=options.replicas.max(1) {
        let name = format!("catalog-{i}");
        supervisor.spawn(&name, &["worker", "catalog"])?;
        names.push(name);
    }
    let client1 = Arc::new(Client::connect(&base.amqp_url, namespace.clone()).await?);
    let client2 = Arc::new(Client::connect(&base.amqp_url, namespace.clone()).await?);
    wait_for_consumers(
        &base.amqp_url,
        namespace,
        options.replicas.max(1),
        supervisor,
    )
    .await?;
    println!(
        "started: relay, {} (Server B replicas behind the broker's queue)",
        names.join(", ")
    );

    // Bound before any command, so it sees every event the relay publishes.
    let mut events = Box::pin(client2.subscribe("catalog.#").await?);

    let timeout = Duration::from_secs(15);
    for (id, name, price, stock) in PRODUCTS {
        let command = AddProduct {
            product_id: ProductId::parse(id.into()).map_err(anyhow::Error::msg)?,
            name: ProductName::parse(name.into()).map_err(anyhow::Error::msg)?,
            price: Money::parse(price).map_err(anyhow::Error::msg)?,
            initial_stock: StockLevel::parse(stock).map_err(anyhow::Error::msg)?,
        };
        let reply = client1
            .request(&CatalogCommand::from(command), timeout)
            .await?;
        if !reply.is_accepted() {
            bail!("adding {id} was refused: {reply:?}");
        }
    }
    println!("client 1: added tea (stock 40), coffee (25), mug (8)");

    // A retried command (same message id) is answered from the inbox: one effect, same reply.
    let retry = OutgoingMessage::new(
        Metadata::origin("catalog.restock"),
        &CatalogCommand::from(Restock {
            product_id: ProductId::parse("mug".into()).map_err(anyhow::Error::msg)?,
            quantity: Quantity::parse(2).map_err(anyhow::Error::msg)?,
        }),
    );
    let first = client1.request_message(retry.clone(), timeout).await?;
    let second = client1.request_message(retry, timeout).await?;
    println!(
        "client 1: restocked mug by 2, then sent the very same message again: replies identical = {}",
        first == second
    );

    println!(
        "client 1 and client 2: {} reservations each, concurrently (some commit, some release)…",
        options.orders
    );
    let (t1, t2) = tokio::join!(
        shop(client1.clone(), options.orders, options.seed),
        shop(
            client2.clone(),
            options.orders,
            options.seed.wrapping_add(1)
        ),
    );
    let (t1, t2) = (t1?, t2?);

    // Poison: a reserve with a negative quantity. It is refused with a reason and parked in
    // the dead-letter queue; the workers carry on.
    let poison = client2
        .request_message(
            OutgoingMessage {
                metadata: Metadata::origin("catalog.reserve_stock"),
                body: br#"{"product_id":"tea","order_id":"0190f0a0-0000-7000-8000-000000000000","quantity":-3}"#.to_vec(),
                extra_headers: Vec::new(),
            },
            timeout,
        )
        .await?;

    // Wait for the read model and the relay to catch up with the log.
    let total_events: i64 = sqlx::query_scalar("SELECT count(*) FROM event_log")
        .fetch_one(store.pool())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut relayed = Vec::new();
    while (relayed.len() as i64) < total_events {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, events.next()).await {
            Ok(Some(event)) => relayed.push(event.position),
            _ => bail!(
                "the relay published {} of {total_events} events within 30 s; see target/demo-logs/relay.log",
                relayed.len()
            ),
        }
    }
    wait_for_projection(store, total_events).await?;

    println!("\n{:<34} {:>9} {:>9}", "outcome", "client 1", "client 2");
    println!("{:<34} {:>9} {:>9}", "accepted", t1.accepted, t2.accepted);
    let codes: std::collections::BTreeSet<_> =
        t1.rejected.keys().chain(t2.rejected.keys()).collect();
    for code in codes {
        println!(
            "{:<34} {:>9} {:>9}",
            format!("rejected: {code}"),
            t1.rejected.get(code).unwrap_or(&0),
            t2.rejected.get(code).unwrap_or(&0)
        );
    }

    println!(
        "\n{:<8} {:>8} {:>10} {:>9} {:>6}   initial + restocked = available + reserved + sold",
        "product", "initial", "available", "reserved", "sold"
    );
    for row in products(store).await? {
        let initial = PRODUCTS
            .iter()
            .find(|p| p.0 == row.product_id)
            .map_or(0, |p| i64::from(p.3));
        let restocked = if row.product_id == "mug" { 2 } else { 0 };
        let conserved = initial + restocked == row.available + row.reserved + row.sold;
        println!(
            "{:<8} {:>8} {:>10} {:>9} {:>6}   {}",
            row.product_id,
            initial,
            row.available,
            row.reserved,
            row.sold,
            if conserved { "holds" } else { "BROKEN" }
        );
        if !conserved {
            bail!("stock of {} is not conserved", row.product_id);
        }
    }

    println!("\n{:<12} {:>17}", "replica", "commands handled");
    let per_replica = sqlx::query(
        "SELECT handled_by, count(*) AS n FROM processed_messages GROUP BY handled_by ORDER BY handled_by",
    )
    .fetch_all(store.pool())
    .await?;
    for row in per_replica {
        let name: String = row.try_get("handled_by")?;
        let n: i64 = row.try_get("n")?;
        println!("{name:<12} {n:>17}");
    }

    let in_order = relayed.windows(2).all(|w| w[0] < w[1]);
    println!(
        "\nrelay: {} events published to {}, in log order: {}",
        relayed.len(),
        Topology::new(namespace.clone()).events_exchange(),
        if in_order { "yes" } else { "NO" }
    );
    match poison {
        Reply::Rejected { reason } => println!(
            "poison: a reserve with quantity -3 was refused ({}) and dead-lettered; the workers kept going",
            reason.code
        ),
        Reply::Accepted { .. } => bail!("a negative quantity was accepted"),
    }
    let letters = client1.dead_letters(Service::Catalog, 10).await?;
    println!("dead letters in the catalog's queue: {}", letters.len());
    if !in_order {
        bail!("events were relayed out of order");
    }
    Ok(())
}

async fn shop(client: Arc<Client>, orders: usize, seed: u64) -> anyhow::Result<Tally> {
    let mut rng = fastrand_like(seed);
    let mut tally = Tally::default();
    let timeout = Duration::from_secs(15);
    for _ in 0..orders {
        let (id, _, _, _) = PRODUCTS[(rng() % 3) as usize];
        let product_id = ProductId::parse(id.into()).map_err(anyhow::Error::msg)?;
        let order_id = OrderId::new();
        let quantity = Quantity::parse(1 + (rng() % 3) as u32).map_err(anyhow::Error::msg)?;
        let reply = client
            .request(
                &CatalogCommand::from(ReserveStock {
                    product_id: product_id.clone(),
                    order_id,
                    quantity,
                }),
                timeout,
            )
            .await?;
        match reply {
            Reply::Accepted { .. } => {
                tally.accepted += 1;
                let follow_up = match rng() % 4 {
                    0 | 1 => Some(CatalogCommand::from(CommitReservation {
                        product_id,
                        order_id,
                    })),
                    2 => Some(CatalogCommand::from(ReleaseReservation {
                        product_id,
                        order_id,
                    })),
                    _ => None,
                };
                if let Some(command) = follow_up {
                    let reply = client.request(&command, timeout).await?;
                    if !reply.is_accepted() {
                        bail!("a follow-up for order {order_id} was refused: {reply:?}");
                    }
                }
            }
            Reply::Rejected { reason } => *tally.rejected.entry(reason.code).or_default() += 1,
        }
    }
    Ok(tally)
}

/// A tiny seeded generator (SplitMix64) so two demo runs with one seed choose alike.
fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Deletes the demo namespace's queues and exchanges so each run starts empty.
async fn reset_broker(url: &SecretUrl, topology: &Topology) -> anyhow::Result<()> {
    let connection = broker::connect(url, "demo reset").await?;
    let channel = connection.create_channel().await?;
    for queue in topology.all_queues() {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in topology.all_exchanges() {
        channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "reset".into()).await;
    Ok(())
}

/// Waits until `replicas` consumers are on the catalog queue, or a replica exits.
async fn wait_for_consumers(
    url: &SecretUrl,
    namespace: &Namespace,
    replicas: usize,
    supervisor: &mut Supervisor,
) -> anyhow::Result<()> {
    let topology = Topology::new(namespace.clone());
    let connection = broker::connect(url, "demo probe").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crashed = supervisor.exited();
        if !crashed.is_empty() {
            bail!(
                "{} exited at start; see {}",
                crashed.join(", "),
                supervisor.log_dir().display()
            );
        }
        // Passive declare on a fresh channel: it closes the channel if the queue is missing.
        let channel = connection.create_channel().await?;
        let consumers = channel
            .queue_declare(
                topology.command_queue(Service::Catalog).into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.consumer_count() as usize)
            .unwrap_or(0);
        if consumers >= replicas {
            let _ = connection.close(200, "ready".into()).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {consumers} of {replicas} catalog workers came up within 30 s; see {}",
                supervisor.log_dir().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_projection(store: &EventStore, events: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let max: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM event_log")
        .fetch_one(store.pool())
        .await?;
    loop {
        let at = store.checkpoint("projection.catalog_products").await?;
        if at >= max {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the products projection reached {at} of {max} ({events} events) within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
