//! The `eventline` command: one binary for every role in the system.
//!
//! `worker`, `relay` and `migrate` are the server side (what compose runs, one process per
//! replica); `send`, `tail`, `dead-letters` and `products` are the client side (the seed's
//! Client 1 and 2); `demo` runs the whole thing on this machine and reports what happened.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use eventline::Client;
use eventline_events::{Metadata, OutgoingMessage, Reply, Service};
use eventline_workers::runtime::projection;
use eventline_workers::runtime::relay::Relay;
use eventline_workers::runtime::store::{self, EventStore};
use eventline_workers::runtime::worker::CommandWorker;
use eventline_workers::runtime::{Config, Shutdown};
use eventline_workers::services::catalog::{Product, ProductsProjection};
use futures_util::StreamExt;
use tracing_subscriber::EnvFilter;

/// eventline: a message-driven, event-sourced model of a distributed system.
///
/// Configuration comes from the environment: AMQP_URL, DATABASE_URL, EVENTLINE_NAMESPACE,
/// EVENTLINE_REPLICA, EVENTLINE_PREFETCH, EVENTLINE_DB_CONNECTIONS, RUST_LOG, EVENTLINE_LOG=json.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if it is missing and apply the migrations in schema/migrations.
    Migrate,
    /// Run one replica of a service's worker (add replicas by running more).
    Worker {
        /// auth, catalog, orders or payments.
        service: Service,
    },
    /// Run the relay that publishes committed events to the events exchange, in log order.
    Relay,
    /// Publish a command and print its reply.
    Send {
        /// The message type, e.g. catalog.reserve_stock (see schema/json).
        message_type: String,
        /// The JSON body, e.g. '{"product_id":"tea","order_id":"…","quantity":1}'.
        body: String,
        /// Do not wait for the reply.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// Reuse a message id (e.g. to retry a command whose reply was lost; it is never
        /// applied twice).
        #[arg(long)]
        message_id: Option<uuid::Uuid>,
    },
    /// Print events as the relay publishes them.
    Tail {
        /// Topic pattern on event types: catalog.#, #.stock_reserved, # (all).
        #[arg(default_value = "#")]
        pattern: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// List a service's dead letters with their reasons (they stay in the queue).
    DeadLetters {
        service: Service,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print the catalog's products read model.
    Products,
    /// Run the whole system locally: fresh database and namespace, worker replicas, relay, two
    /// concurrent clients. Prints what happened.
    Demo(eventline::demo::DemoOptions),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let server_role = matches!(cli.command, Command::Worker { .. } | Command::Relay);
    init_tracing(if server_role { "info" } else { "warn" });
    let config = Config::from_env()?;
    match cli.command {
        Command::Migrate => {
            store::create_database_if_missing(&config.database_url).await?;
            let store = EventStore::connect(&config.database_url, 2).await?;
            store.migrate().await?;
            println!("database {} is migrated", config.database_url);
        }
        Command::Worker { service } => run_worker(config, service).await?,
        Command::Relay => {
            let store = wait_for_database(&config).await?;
            Relay::new(config, store).run(Shutdown::on_signals()).await;
        }
        Command::Send {
            message_type,
            body,
            no_wait,
            timeout,
            message_id,
        } => {
            let body: serde_json::Value = serde_json::from_str(&body)
                .with_context(|| format!("the body is not valid JSON: {body}"))?;
            let mut metadata = Metadata::origin(&message_type);
            if let Some(id) = message_id {
                metadata.message_id = eventline_events::MessageId::from_uuid(id);
                metadata.correlation_id = metadata.message_id.into();
                metadata.causation_id = metadata.message_id.into();
            }
            let message = OutgoingMessage {
                metadata,
                body: body.to_string().into_bytes(),
                extra_headers: Vec::new(),
            };
            let client = Client::connect(&config.amqp_url, config.namespace.clone()).await?;
            if no_wait {
                client.publish(&message).await?;
                println!("sent {}", message.metadata.message_id);
            } else {
                let reply = client
                    .request_message(message, Duration::from_secs(timeout))
                    .await?;
                print_reply(&reply, cli.json);
                if !reply.is_accepted() {
                    std::process::exit(2);
                }
            }
            client.close().await;
        }
        Command::Tail { pattern, count } => {
            let client = Client::connect(&config.amqp_url, config.namespace.clone()).await?;
            let events = client.subscribe(&pattern).await?;
            let mut events = std::pin::pin!(events.take(count.unwrap_or(usize::MAX)));
            eprintln!(
                "tailing {} for {pattern:?}; Ctrl-C to stop",
                client.topology().events_exchange()
            );
            while let Some(event) = events.next().await {
                if cli.json {
                    println!("{}", serde_json::to_string(&event)?);
                } else {
                    println!(
                        "#{:<6} {:<32} {} v{}  {}",
                        event.position,
                        event.event_type,
                        event.stream_id,
                        event.stream_version,
                        event.data
                    );
                }
            }
        }
        Command::DeadLetters { service, limit } => {
            let client = Client::connect(&config.amqp_url, config.namespace.clone()).await?;
            let letters = client.dead_letters(service, limit).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!(
                    "no dead letters in {}",
                    client.topology().dead_letter_queue(service)
                );
            } else {
                for letter in &letters {
                    println!(
                        "{}  {}  [{}] {}\n    body: {}",
                        letter.message_id.as_deref().unwrap_or("(no id)"),
                        letter.message_type.as_deref().unwrap_or("(no type)"),
                        letter.code,
                        letter.reason,
                        letter.body.chars().take(200).collect::<String>()
                    );
                }
            }
            client.close().await;
        }
        Command::Products => {
            let store = EventStore::connect(&config.database_url, 1).await?;
            let products = eventline::demo::products(&store).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&products)?);
            } else {
                println!(
                    "{:<20} {:>9} {:>9} {:>9} {:>6} {:>10}",
                    "product", "available", "reserved", "sold", "price", "version"
                );
                for p in products {
                    println!(
                        "{:<20} {:>9} {:>9} {:>9} {:>6} {:>10}",
                        p.product_id, p.available, p.reserved, p.sold, p.price, p.stream_version
                    );
                }
            }
        }
        Command::Demo(options) => eventline::demo::run(config, options).await?,
    }
    Ok(())
}

async fn run_worker(config: Config, service: Service) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals();
    let store = wait_for_database(&config).await?;
    match service {
        Service::Catalog => {
            let projection = tokio::spawn(projection::run(
                ProductsProjection,
                store.clone(),
                shutdown.clone(),
                tokio::sync::watch::Sender::new(0),
            ));
            CommandWorker::<Product>::new(config, store)
                .run(shutdown)
                .await;
            projection.await?;
        }
        other => bail!(
            "the {other} service is not built yet; this build runs: catalog. \
             (auth, orders and payments are the next milestone)"
        ),
    }
    Ok(())
}

/// Waits, with backoff and a clear message, until the database answers: a worker that starts
/// before its database (compose, a reboot) waits instead of crash-looping.
async fn wait_for_database(config: &Config) -> anyhow::Result<EventStore> {
    let store = EventStore::connect_lazy(&config.database_url, config.max_db_connections)?;
    let mut backoff = eventline_workers::runtime::backoff::Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(5),
    );
    loop {
        match store.check(&config.database_url).await {
            Ok(()) => return Ok(store),
            Err(error) => {
                tracing::warn!(%error, "waiting for the database");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

fn print_reply(reply: &Reply, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(reply).unwrap_or_default()
        );
        return;
    }
    match reply {
        Reply::Accepted { stream_id, events } if events.is_empty() => {
            println!("accepted: nothing to change in {stream_id} (already done)");
        }
        Reply::Accepted { stream_id, events } => {
            println!("accepted: {stream_id}");
            for event in events {
                println!(
                    "  v{} {} {}",
                    event.stream_version, event.message_type, event.data
                );
            }
        }
        Reply::Rejected { reason } => println!("rejected: {} ({})", reason.message, reason.code),
    }
}

fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("EVENTLINE_LOG").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
