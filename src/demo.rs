//! `eventline demo`: the seed's picture, running. Two clients register, log in and place orders
//! against two replicas of each server (auth, catalog, orders, payments) behind RabbitMQ, while
//! the relay streams the log to the events exchange; then it prints how the orders ended, what
//! the stock and the money are, how the broker spread the work, and one order's causal path.
//!
//! It uses a namespace of its own per run (`demo-…`, removed at the end) and a database of its
//! own (`{db}_demo`, recreated on every run and kept for exploring), so it never touches a real
//! deployment's data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventline_events::auth::Role;
use eventline_events::catalog::{AddProduct, CatalogCommand, Restock};
use eventline_events::values::{Money, OrderId, ProductId, ProductName, Quantity, StockLevel};
use eventline_events::{Metadata, Namespace, OutgoingMessage, Reply, Service, Topology};
use eventline_workers::runtime::store::{self, EventStore};
use eventline_workers::runtime::{Config, SecretUrl};
use eventline_workers::runtime::{broker, token};
use futures_util::StreamExt;
use sqlx::Row;

use crate::client::Client;
use crate::settled;
use crate::supervisor::{Supervisor, system_env};

#[derive(Clone, Debug, clap::Args)]
pub struct DemoOptions {
    /// Worker replicas to start per service.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Orders each of the two clients places.
    #[arg(long, default_value_t = 25)]
    pub orders: usize,
    /// Seed for the clients' random choices, for a repeatable run.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Drive an already running system (e.g. compose's) instead of starting one: no reset,
    /// no child processes; waits for `--replicas` consumers per service. Needs an empty event
    /// log (the summary checks stock against the demo's own starting levels) and
    /// EVENTLINE_AUTH_SIGNING_KEY (to mint the operator's admin token).
    #[arg(long)]
    pub attach: bool,
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
    ("tea", "Earl Grey tea", 450, 30),
    ("coffee", "Filter coffee", 890, 20),
    ("mug", "Enamel mug", 1200, 5),
];

pub async fn run(base: Config, options: DemoOptions) -> anyhow::Result<()> {
    if options.attach {
        return attach(base, options).await;
    }
    let started = Instant::now();
    // A namespace of its own per run: nothing left over from an earlier run (or another
    // version's queue arguments) can interfere, and two demos on one broker do not collide.
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let namespace =
        Namespace::parse(&format!("demo-{}", &run_id[20..])).map_err(anyhow::Error::msg)?;
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

    // Fresh keys for this run: auth signs with the private half, every service verifies with
    // the public half. The demo keeps the private key to mint the operator's admin token.
    let signing = token::generate_signing_key();
    let log_dir = std::env::current_dir()?.join("target/demo-logs");
    let mut env = system_env(
        &base.amqp_url,
        &database_url,
        &namespace,
        &signing,
        SAGA_TIMEOUT_MS,
    );
    env.push((
        "EVENTLINE_PAYMENT_SLOW_MS".into(),
        (SAGA_TIMEOUT_MS * 2).to_string(),
    ));
    let mut supervisor = Supervisor::new(std::env::current_exe()?, env, &log_dir);
    let result = drive(
        &base,
        &namespace,
        &store,
        &mut supervisor,
        &options,
        &signing,
    )
    .await;
    supervisor.stop_all(Duration::from_secs(15)).await;
    // The namespace was this run's alone: leave no queues behind (quorum queues cost the
    // broker even when idle). The database stays, for exploring.
    if let Err(error) = reset_broker(&base.amqp_url, &topology).await {
        eprintln!("could not remove the demo's namespace {namespace}: {error:#}");
    }
    result?;
    println!(
        "\nfinished in {:.1}s; worker logs in {}\nexplore the log: DATABASE_URL={database_url} eventline trace <order id>",
        started.elapsed().as_secs_f64(),
        log_dir.display()
    );
    Ok(())
}

/// `--attach`: the system is already running (compose); use its namespace and database as
/// they are and only play the operator and the two clients.
async fn attach(config: Config, options: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    println!(
        "eventline demo --attach: namespace {}, database {}",
        config.namespace, config.database_url
    );
    let signing = config
        .auth
        .signing
        .as_ref()
        .context(
            "demo --attach needs EVENTLINE_AUTH_SIGNING_KEY to mint the operator's admin token",
        )?
        .0
        .clone();
    let store = EventStore::connect(&config.database_url, 4).await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM event_log")
        .fetch_one(store.pool())
        .await
        .context("reading event_log (has `eventline migrate` run?)")?;
    if events > 0 {
        bail!(
            "the event log of {} already holds {events} events; the demo needs an empty one \
             (with compose: `docker compose down -v`, then up again)",
            config.database_url
        );
    }
    let replicas = options.replicas.max(1);
    wait_for_consumers(&config.amqp_url, &config.namespace, replicas, None).await?;
    println!("attached: at least {replicas} consumers on every service's queue");
    exercise(&config, &config.namespace, &store, &options, &signing).await?;
    println!("\nfinished in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// How long the saga waits before cancelling; `tok_slow` takes twice as long.
const SAGA_TIMEOUT_MS: u64 = 2000;

async fn drive(
    base: &Config,
    namespace: &Namespace,
    store: &EventStore,
    supervisor: &mut Supervisor,
    options: &DemoOptions,
    signing: &ed25519_dalek::SigningKey,
) -> anyhow::Result<()> {
    supervisor.spawn("relay", &["relay"])?;
    let replicas = options.replicas.max(1);
    for service in Service::ALL {
        for i in 1..=replicas {
            supervisor.spawn(&format!("{service}-{i}"), &["worker", service.name()])?;
        }
    }
    wait_for_consumers(&base.amqp_url, namespace, replicas, Some(supervisor)).await?;
    println!(
        "started: relay and {replicas} replicas each of auth (A), catalog (B), orders (C), payments (D), all behind RabbitMQ queues"
    );
    exercise(base, namespace, store, options, signing).await
}

/// The operator's and the two clients' session, and the summary; the same whoever runs the
/// workers.
async fn exercise(
    base: &Config,
    namespace: &Namespace,
    store: &EventStore,
    options: &DemoOptions,
    signing: &ed25519_dalek::SigningKey,
) -> anyhow::Result<()> {
    let admin_token = token::mint(signing, Role::Admin, 3600);
    let admin = Client::connect(&base.amqp_url, namespace.clone())
        .await?
        .with_token(admin_token);
    let mut events = Box::pin(admin.subscribe("#").await?);

    let timeout = Duration::from_secs(20);
    for (id, name, price, stock) in PRODUCTS {
        let command = AddProduct {
            product_id: ProductId::parse(id.into()).map_err(anyhow::Error::msg)?,
            name: ProductName::parse(name.into()).map_err(anyhow::Error::msg)?,
            price: Money::parse(price).map_err(anyhow::Error::msg)?,
            initial_stock: StockLevel::parse(stock).map_err(anyhow::Error::msg)?,
        };
        let reply = admin
            .request(&CatalogCommand::from(command), timeout)
            .await?;
        if !reply.is_accepted() {
            bail!("adding {id} was refused: {reply:?}");
        }
    }
    println!(
        "operator (admin token): added tea (stock 30, 4.50), coffee (20, 8.90), mug (5, 12.00)"
    );

    // A retried command (same message id) is answered from the inbox: one effect, same reply.
    let retry = OutgoingMessage::new(
        Metadata::origin("catalog.restock"),
        &CatalogCommand::from(Restock {
            product_id: ProductId::parse("mug".into()).map_err(anyhow::Error::msg)?,
            quantity: Quantity::parse(2).map_err(anyhow::Error::msg)?,
        }),
    );
    let first = admin.request_message(retry.clone(), timeout).await?;
    let second = admin.request_message(retry, timeout).await?;
    println!(
        "operator: restocked mug by 2, then re-sent the very same message: replies identical = {}",
        first == second
    );

    let (c1, c2) = tokio::join!(
        customer(
            base,
            namespace,
            "alice@example.com",
            1,
            options.orders,
            options.seed
        ),
        customer(
            base,
            namespace,
            "bob@example.com",
            2,
            options.orders,
            options.seed.wrapping_add(1)
        ),
    );
    let (c1, c2) = (c1?, c2?);

    // Poison: a reserve with a negative quantity. Refused with a reason, parked in the
    // dead-letter queue; the workers carry on.
    let poison = admin
        .request_message(
            OutgoingMessage {
                metadata: Metadata::origin("catalog.reserve_stock"),
                body: br#"{"product_id":"tea","order_id":"0190f0a0-0000-7000-8000-000000000000","quantity":-3}"#.to_vec(),
                extra_headers: Vec::new(),
            },
            timeout,
        )
        .await?;

    // Every order is terminal (the clients waited for it); let late compensations finish, the
    // read models and the relay catch up.
    settle(store).await?;
    let total_events: i64 = sqlx::query_scalar("SELECT count(*) FROM event_log")
        .fetch_one(store.pool())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut relayed = Vec::new();
    while (relayed.len() as i64) < total_events {
        match tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            events.next(),
        )
        .await
        {
            Ok(Some(event)) => relayed.push(event.position),
            _ => bail!(
                "the relay published {} of {total_events} events within 30 s; see target/demo-logs/relay.log",
                relayed.len()
            ),
        }
    }

    println!(
        "\n{:<40} {:>9} {:>9}",
        "order outcome", "client 1", "client 2"
    );
    let keys: std::collections::BTreeSet<_> =
        c1.outcomes.keys().chain(c2.outcomes.keys()).collect();
    for key in keys {
        println!(
            "{:<40} {:>9} {:>9}",
            key,
            c1.outcomes.get(key).unwrap_or(&0),
            c2.outcomes.get(key).unwrap_or(&0)
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

    let money: (i64, i64, i64) = sqlx::query_as(
        "SELECT \
           coalesce((SELECT sum((data ->> 'amount')::bigint) FROM event_log WHERE event_type = 'payments.payment_captured'), 0)::bigint, \
           coalesce((SELECT sum((data ->> 'amount')::bigint) FROM event_log WHERE event_type = 'payments.payment_refunded'), 0)::bigint, \
           coalesce((SELECT sum(total) FROM orders_view WHERE status = 'confirmed'), 0)::bigint",
    )
    .fetch_one(store.pool())
    .await?;
    let balanced = money.0 - money.1 == money.2;
    println!(
        "\npayments: captured {} − refunded {} = {}; confirmed orders total {}: {}",
        cents(money.0),
        cents(money.1),
        cents(money.0 - money.1),
        cents(money.2),
        if balanced { "balanced" } else { "UNBALANCED" }
    );
    if !balanced {
        bail!("payments do not match confirmed orders");
    }

    println!("\n{:<12} {:>17}", "replica", "messages handled");
    let per_replica = sqlx::query("SELECT handled_by, count(*) AS n FROM processed_messages GROUP BY handled_by ORDER BY handled_by")
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
    if let Some(order_id) = c1.confirmed.first() {
        println!("\none confirmed order's path across the services (eventline trace {order_id}):");
        print!("{}", crate::trace::render(store, order_id.as_uuid()).await?);
    }
    if !in_order {
        bail!("events were relayed out of order");
    }
    Ok(())
}

struct Shopper {
    outcomes: BTreeMap<String, usize>,
    confirmed: Vec<OrderId>,
}

/// One of the seed's clients: registers, logs in, and places orders with a mix of cards.
async fn customer(
    base: &Config,
    namespace: &Namespace,
    email: &str,
    number: u32,
    orders: usize,
    seed: u64,
) -> anyhow::Result<Shopper> {
    let timeout = Duration::from_secs(30);
    let client = Client::connect(&base.amqp_url, namespace.clone()).await?;
    let credentials =
        serde_json::json!({ "email": email, "password": format!("demo-password-{number}") });
    for message_type in ["auth.register_user", "auth.log_in"] {
        let message = OutgoingMessage {
            metadata: Metadata::origin(message_type),
            body: credentials.to_string().into_bytes(),
            extra_headers: Vec::new(),
        };
        let reply = client.request_message(message, timeout).await?;
        if let Reply::Accepted {
            result: Some(result),
            ..
        } = &reply
            && let Some(token) = result.get("token").and_then(|t| t.as_str())
        {
            println!("client {number}: registered {email} and logged in (token valid for 1 h)");
            return shop(client.with_token(token), number, orders, seed).await;
        }
        if !reply.is_accepted() {
            bail!("{message_type} for {email} was refused: {reply:?}");
        }
    }
    bail!("logging in as {email} returned no token")
}

async fn shop(client: Client, number: u32, orders: usize, seed: u64) -> anyhow::Result<Shopper> {
    let mut rng = fastrand_like(seed);
    let mut shopper = Shopper {
        outcomes: BTreeMap::new(),
        confirmed: Vec::new(),
    };
    let client = Arc::new(client);
    let mut placed = Vec::new();
    for i in 0..orders {
        let card = match i {
            _ if number == 2 && i == 3 => "tok_slow",
            _ if i % 7 == 5 => "tok_declined",
            _ if i % 11 == 9 => "tok_insufficient_funds",
            _ => "tok_visa",
        };
        let mut words = vec![format!(
            "{}:{}",
            PRODUCTS[(rng() % 3) as usize].0,
            1 + rng() % 3
        )];
        let second = PRODUCTS[(rng() % 3) as usize].0;
        if rng().is_multiple_of(2) && !words[0].starts_with(second) {
            words.push(format!("{second}:1"));
        }
        let order = crate::client::parse_order(&words, card).map_err(anyhow::Error::msg)?;
        let client = client.clone();
        // A few orders in flight per client, like a busy shop front.
        placed.push(tokio::spawn(async move {
            let outcome = client.place_order(&order, Duration::from_secs(30)).await;
            (order.order_id, outcome)
        }));
        if placed.len() >= 4 {
            record(&mut shopper, placed.remove(0).await?)?;
        }
    }
    for task in placed {
        record(&mut shopper, task.await?)?;
    }
    println!("client {number}: placed {orders} orders, each now confirmed, rejected or cancelled");
    Ok(shopper)
}

fn record(
    shopper: &mut Shopper,
    (order_id, outcome): (OrderId, Result<crate::OrderOutcome, crate::ClientError>),
) -> anyhow::Result<()> {
    let outcome = outcome?;
    if outcome.status == "confirmed" {
        shopper.confirmed.push(order_id);
    }
    let key = match &outcome.code {
        Some(code) => format!("{}: {code}", outcome.status),
        None => outcome.status.clone(),
    };
    *shopper.outcomes.entry(key).or_default() += 1;
    Ok(())
}

fn cents(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

/// Waits until every order has ended, no reservation is held and the read models have
/// caught up (see [`crate::settled`]).
async fn settle(store: &EventStore) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = settled::snapshot(store, settled::Orders::All).await?;
        if now.is_settled() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the system did not settle within 30 s: {} items still reserved, {} orders open",
                now.held,
                now.open_orders
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tiny seeded generator (SplitMix64) so two runs with one seed choose alike (the demo's
/// orders, the chaos run's victims).
pub(crate) fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
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
    let failures = broker::delete_namespace(&connection, topology).await;
    let _ = connection.close(200, "reset".into()).await;
    if !failures.is_empty() {
        bail!(
            "could not reset the demo's namespace: {}",
            failures.join("; ")
        );
    }
    Ok(())
}

/// Waits until every service's command queue has `replicas` consumers, or a replica exits.
async fn wait_for_consumers(
    url: &SecretUrl,
    namespace: &Namespace,
    replicas: usize,
    mut supervisor: Option<&mut Supervisor>,
) -> anyhow::Result<()> {
    let logs = supervisor.as_ref().map_or_else(
        || "the workers' logs".to_owned(),
        |s| s.log_dir().display().to_string(),
    );
    let topology = Topology::new(namespace.clone());
    let connection = broker::connect(url, "demo probe").await?;
    // Declare the queues as the workers do (idempotent, same arguments), so the passive
    // checks below never race a worker that has not declared its queues yet.
    {
        let channel = connection.create_channel().await?;
        for service in Service::ALL {
            broker::declare_service_queues(&channel, &topology, service).await?;
        }
        let _ = channel.close(200, "declared".into()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crashed = supervisor.as_mut().map(|s| s.exited()).unwrap_or_default();
        if !crashed.is_empty() {
            bail!("{} exited at start; see {}", crashed.join(", "), logs);
        }
        let mut consumers = usize::MAX;
        for service in Service::ALL {
            let count = broker::inspect_queue(&connection, &topology.command_queue(service))
                .await
                .map(|q| q.consumer_count() as usize)
                .unwrap_or(0);
            consumers = consumers.min(count);
        }
        if consumers >= replicas {
            let _ = connection.close(200, "ready".into()).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {consumers} of {replicas} workers of some service came up within 30 s; see {}",
                logs
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
