//! The `eventline` command: one binary for every role in the system.
//!
//! `worker`, `relay` and `migrate` are the server side (what compose runs, one process per
//! replica); `send`, `tail`, `dead-letters` and `products` are the client side (the seed's
//! Client 1 and 2); `demo` runs the whole thing on this machine and reports what happened.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use eventline::client::Selection;
use eventline::{Client, DeadLetter, broker_users};
use eventline_events::catalog::{CatalogQuery, ListProducts};
use eventline_events::orders::{GetOrder, ListMyOrders, OrdersQuery};
use eventline_events::topology::BrokerUser;
use eventline_events::values::OrderId;
use eventline_events::{Metadata, OutgoingMessage, Reply, Service};
use eventline_workers::runtime::db_roles;
use eventline_workers::runtime::relay::Relay;
use eventline_workers::runtime::store::{self, EventStore};
use eventline_workers::runtime::token;
use eventline_workers::runtime::{Config, Shutdown};
use eventline_workers::services;
use futures_util::StreamExt;

/// eventline: a message-driven, event-sourced model of a distributed system.
///
/// Configuration comes from the environment: AMQP_URL, DATABASE_URL, EVENTLINE_NAMESPACE,
/// EVENTLINE_REPLICA, EVENTLINE_PREFETCH, EVENTLINE_DB_CONNECTIONS, RUST_LOG, EVENTLINE_LOG=json,
/// EVENTLINE_METRICS_ADDR, EVENTLINE_RELAY_STALL_SECS.
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
    /// With EVENTLINE_WORKER_DATABASE_URL set, also create that URL's user as a
    /// least-privilege worker login (it may append to the event log, never rewrite it).
    Migrate,
    /// Run one replica of a service's worker (add replicas by running more).
    Worker {
        /// auth, catalog, orders or payments.
        service: Service,
    },
    /// Run the relay that publishes committed events to the events exchange, in log order.
    Relay,
    /// Publish a command and print its reply. A session token is taken from --token or
    /// EVENTLINE_TOKEN.
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
        /// Session token for commands that need one (or EVENTLINE_TOKEN).
        #[arg(long, env = "EVENTLINE_TOKEN", hide_env_values = true)]
        token: Option<String>,
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
    /// List a service's dead letters with their reasons (they stay in the queue); `show` one
    /// in full; `redrive` selected ones back to the service after a fix.
    DeadLetters {
        service: Service,
        /// How many to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(subcommand)]
        action: Option<DeadLetterAction>,
    },
    /// Print the products with their stock (a query over the broker).
    Products,
    /// Print your orders, or one order, with status (a query over the broker; needs
    /// EVENTLINE_TOKEN).
    Orders {
        #[arg(long)]
        order: Option<uuid::Uuid>,
    },
    /// Place an order and wait for its final outcome (confirmed, rejected or cancelled).
    PlaceOrder {
        /// Lines as product:quantity, e.g. tea:2 mug:1.
        #[arg(required = true)]
        lines: Vec<String>,
        /// A card token: tok_visa, tok_declined, tok_insufficient_funds, tok_slow, …
        #[arg(long, default_value = "tok_visa")]
        card: String,
        /// Seconds to wait for the outcome.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// One screen: each service's replicas and queues, dead letters, relay and projection
    /// lag, inbox size, the last minute's activity. Exit status 1 when something is unhealthy.
    Status(eventline::status::StatusOptions),
    /// Print one conversation (a correlation id, e.g. an order id) as a causal tree: who
    /// handled what, caused by what, recording which events. Ordered by causation, not clocks.
    Trace { correlation_id: uuid::Uuid },
    /// Print a fresh Ed25519 key pair for session tokens and fresh passwords for the
    /// per-service broker users, as environment variables.
    Keygen,
    /// Define one broker user per service and one for the relay, each allowed only its own
    /// queues (see README, "Least privilege"). Prints RabbitMQ definitions JSON; with --apply,
    /// imports them with `rabbitmqctl import_definitions`. Passwords come from
    /// EVENTLINE_AMQP_PASSWORD_{AUTH,CATALOG,ORDERS,PAYMENTS,RELAY} (`eventline keygen`).
    BrokerUsers {
        /// Import into the local node (run where rabbitmqctl works: as root or rabbitmq).
        #[arg(long)]
        apply: bool,
        /// The virtual host the permissions are for.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Instead, write a complete file for a broker to load at boot (`load_definitions`;
        /// compose does this): the virtual host, the operator named in AMQP_URL (with all
        /// permissions: a broker loading definitions creates no default user) and the service
        /// users.
        #[arg(long, conflicts_with = "apply")]
        boot_file: Option<std::path::PathBuf>,
    },
    /// Mint a session token (operators: e.g. an admin token for catalog changes). Needs
    /// EVENTLINE_AUTH_SIGNING_KEY.
    Token {
        #[arg(long, default_value = "admin")]
        role: String,
        #[arg(long)]
        user: Option<uuid::Uuid>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
    },
    /// Run the whole system locally: fresh database and namespace, worker replicas, relay, two
    /// concurrent clients. Prints what happened.
    Demo(eventline::demo::DemoOptions),
    /// Inject faults (killed workers, broker and database outages, a misbehaving network,
    /// duplicate deliveries) into a system of its own under load, check that no accepted
    /// command was lost or applied twice, and print a table. Needs root for the broker and
    /// database faults; restores their defaults when done.
    Chaos(eventline::chaos::ChaosOptions),
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// Print one dead letter in full: its reason, every header and the whole body.
    Show { message_id: String },
    /// Send dead letters back to the service's queue with the same message ids (the inbox
    /// makes anything already applied a duplicate), removing each from the dead-letter queue
    /// once the broker has its copy. Choose message ids, --code or --all.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["message_ids", "code", "all"])))]
    Redrive {
        /// The message ids to re-drive.
        message_ids: Vec<String>,
        /// Every dead letter with this reason code, e.g. retries_exhausted.
        #[arg(long)]
        code: Option<String>,
        /// Every dead letter of the service.
        #[arg(long)]
        all: bool,
        /// Session token to send them with (the dead letters' own were removed), e.g. an admin
        /// token for catalog changes; or EVENTLINE_TOKEN.
        #[arg(long, env = "EVENTLINE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let server_role = matches!(cli.command, Command::Worker { .. } | Command::Relay);
    init_tracing(if server_role {
        "info,sqlx=warn"
    } else {
        "warn,sqlx=error,lapin=off"
    });
    let config = Config::from_env()?;
    match cli.command {
        Command::Migrate => {
            store::create_database_if_missing(&config.database_url).await?;
            let store = EventStore::connect(&config.database_url, 2).await?;
            store.migrate().await?;
            println!("database {} is migrated", config.database_url);
            // The workers' own login (README, "Least privilege"): created here because only an
            // administrator can, and migrate is the one step that runs as one.
            if let Some(worker_url) = std::env::var("EVENTLINE_WORKER_DATABASE_URL")
                .ok()
                .filter(|v| !v.is_empty())
            {
                let worker_url = eventline_workers::runtime::SecretUrl::new(worker_url);
                let user = db_roles::ensure_worker_login(&config.database_url, &worker_url)
                    .await
                    .context("creating the workers' login from EVENTLINE_WORKER_DATABASE_URL")?;
                println!(
                    "login {user} is a member of {}: it may append to the event log, never rewrite it",
                    db_roles::WORKER_ROLE
                );
            }
        }
        Command::Worker { service } => run_worker(config, service).await?,
        Command::Relay => {
            let store = wait_for_database(&config).await?;
            let shutdown = Shutdown::on_signals();
            eventline_workers::runtime::http::Settings::from_env()?
                .start(&config.namespace, &store, true, &shutdown)
                .await?;
            Relay::new(config, store).run(shutdown).await;
        }
        Command::Send {
            message_type,
            body,
            no_wait,
            timeout,
            message_id,
            token,
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
            let mut client = Client::connect(&config.amqp_url, config.namespace.clone()).await?;
            if let Some(token) = token {
                client = client.with_token(token);
            }
            if no_wait {
                client.publish(&message).await?;
                println!("sent {}", message.metadata.message_id);
            } else {
                let reply = client
                    .request_message(message, Duration::from_secs(timeout))
                    .await?;
                print_reply(&reply, cli.json);
                if !reply.is_accepted() {
                    client.close().await;
                    // 1 = refused (as the Python example); errors exit with 2 (see main).
                    std::process::exit(1);
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
        Command::DeadLetters {
            service,
            limit,
            action,
        } => {
            let mut client = Client::connect(&config.amqp_url, config.namespace.clone()).await?;
            let queue = client.topology().dead_letter_queue(service);
            let mut refused_any = false;
            match action {
                None => {
                    let letters = client.dead_letters(service, limit).await?;
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&letters)?);
                    } else if letters.is_empty() {
                        println!("no dead letters in {queue}");
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
                }
                Some(DeadLetterAction::Show { message_id }) => {
                    let Some(letter) = client.dead_letter(service, &message_id).await? else {
                        client.close().await;
                        bail!(
                            "no dead letter with message id {message_id} in {queue}; list them with `eventline dead-letters {service}`"
                        );
                    };
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&letter)?);
                    } else {
                        print_dead_letter(&letter);
                    }
                }
                Some(DeadLetterAction::Redrive {
                    message_ids,
                    code,
                    all,
                    token,
                }) => {
                    if let Some(token) = token {
                        client = client.with_token(token);
                    }
                    let selection = if all {
                        Selection::All
                    } else if let Some(code) = code {
                        Selection::Code(code)
                    } else {
                        Selection::Ids(message_ids)
                    };
                    let report = client.redrive(service, &selection).await?;
                    refused_any = !report.refused.is_empty() || !report.not_found.is_empty();
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    } else {
                        for id in &report.redriven {
                            println!("redriven  {id}");
                        }
                        for refused in &report.refused {
                            println!("kept      {}: {}", refused.message_id, refused.why);
                        }
                        for id in &report.not_found {
                            println!("not found {id} (not in {queue})");
                        }
                        println!(
                            "{} redriven to {service}; {} left in {queue}",
                            report.redriven.len(),
                            report.left
                        );
                    }
                }
            }
            client.close().await;
            if refused_any {
                // 1 = done, but not everything asked for (as `send` for a refusal).
                std::process::exit(1);
            }
        }
        Command::Products => {
            let client = Client::connect(&config.amqp_url, config.namespace.clone()).await?;
            let reply = client
                .request(
                    &CatalogQuery::from(ListProducts {}),
                    Duration::from_secs(10),
                )
                .await?;
            let products = query_result(reply, "products")?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&products)?);
            } else {
                println!(
                    "{:<20} {:>9} {:>9} {:>9} {:>8}",
                    "product", "available", "reserved", "sold", "price"
                );
                for p in products.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {:>9} {:>9} {:>9} {:>8}",
                        p["product_id"].as_str().unwrap_or("?"),
                        p["available"],
                        p["reserved"],
                        p["sold"],
                        p["price"]
                    );
                }
            }
            client.close().await;
        }
        Command::Orders { order } => {
            let token = std::env::var("EVENTLINE_TOKEN").context(
                "orders needs a session token in EVENTLINE_TOKEN (a customer sees their own orders, an admin any)",
            )?;
            let client = Client::connect(&config.amqp_url, config.namespace.clone())
                .await?
                .with_token(token);
            let query = match order {
                Some(order_id) => OrdersQuery::from(GetOrder {
                    order_id: OrderId::from_uuid(order_id),
                }),
                None => OrdersQuery::from(ListMyOrders {}),
            };
            let reply = client.request(&query, Duration::from_secs(10)).await?;
            let orders = query_result(reply, "orders")?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&orders)?);
            } else {
                for o in orders.as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<10} total {:>8}  {}",
                        o["order_id"].as_str().unwrap_or("?"),
                        o["status"].as_str().unwrap_or("?"),
                        o["total"],
                        o["reason"].as_str().unwrap_or("")
                    );
                }
            }
            client.close().await;
        }
        Command::PlaceOrder {
            lines,
            card,
            timeout,
        } => {
            let token = std::env::var("EVENTLINE_TOKEN")
                .context("place-order needs a customer session token in EVENTLINE_TOKEN (log in with `eventline send auth.log_in …`)")?;
            let client = Client::connect(&config.amqp_url, config.namespace.clone())
                .await?
                .with_token(token);
            let order =
                eventline::client::parse_order(&lines, &card).map_err(anyhow::Error::msg)?;
            let outcome = client
                .place_order(&order, Duration::from_secs(timeout))
                .await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                println!("order {}: {}", order.order_id, outcome);
            }
            client.close().await;
            if outcome.status != "confirmed" {
                std::process::exit(1);
            }
        }
        Command::Status(options) => {
            std::process::exit(eventline::status::run(&config, &options, cli.json).await?)
        }
        Command::Trace { correlation_id } => {
            let store = EventStore::connect(&config.database_url, 1).await?;
            print!(
                "{}",
                eventline::trace::render(&store, correlation_id).await?
            );
        }
        Command::Keygen => {
            let key = token::generate_signing_key();
            println!(
                "EVENTLINE_AUTH_SIGNING_KEY={}",
                token::encode_key(&key.to_bytes())
            );
            println!(
                "EVENTLINE_AUTH_PUBLIC_KEY={}",
                token::encode_key(&key.verifying_key().to_bytes())
            );
            for user in BrokerUser::ALL {
                println!(
                    "{}={}",
                    broker_users::password_var(user),
                    broker_users::generate_password()
                );
            }
        }
        Command::BrokerUsers {
            apply,
            vhost,
            boot_file,
        } => {
            let topology = eventline_events::Topology::new(config.namespace.clone());
            let users = broker_users::users_from_env()?;
            if let Some(path) = boot_file {
                let Some((user, Some(password))) = config.amqp_url.credentials() else {
                    bail!(
                        "--boot-file needs the operator's user and password in AMQP_URL (amqp://user:password@host/…), \
                         got {}",
                        config.amqp_url
                    );
                };
                let document =
                    broker_users::boot_definitions(&topology, &vhost, (&user, &password), &users);
                std::fs::write(&path, serde_json::to_vec_pretty(&document)?)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!(
                    "wrote {} (operator {user} and {} service users; password hashes only)",
                    path.display(),
                    users.len()
                );
                return Ok(());
            }
            let definitions = broker_users::definitions(&topology, &vhost, &users);
            if !apply {
                println!("{}", serde_json::to_string_pretty(&definitions)?);
                return Ok(());
            }
            broker_users::apply(&definitions).await?;
            for new in &users {
                let p = topology.permissions(new.user);
                println!(
                    "{} (vhost {vhost}):\n  configure {}\n  write     {}\n  read      {}",
                    topology.broker_user(new.user),
                    p.configure,
                    p.write,
                    p.read
                );
            }
        }
        Command::Token { role, user, ttl } => {
            let signing = config.auth.signing.as_ref().context(
                "EVENTLINE_AUTH_SIGNING_KEY is not set; generate keys with `eventline keygen`",
            )?;
            let role: eventline_events::auth::Role =
                serde_json::from_value(serde_json::Value::String(role.clone()))
                    .map_err(|_| anyhow::anyhow!("unknown role {role:?}; use admin or customer"))?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let claims = eventline_events::auth::Claims {
                sub: user.map_or_else(
                    eventline_events::auth::UserId::new,
                    eventline_events::auth::UserId::from_uuid,
                ),
                role,
                iat: now,
                exp: now + ttl,
            };
            println!("{}", token::sign(&claims, &signing.0));
        }
        Command::Demo(options) => eventline::demo::run(config, options).await?,
        Command::Chaos(options) => {
            let rows = eventline::chaos::run(config, options).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            }
        }
    }
    Ok(())
}

async fn run_worker(config: Config, service: Service) -> anyhow::Result<()> {
    if service == Service::Auth && config.auth.signing.is_none() {
        bail!(
            "the auth worker needs EVENTLINE_AUTH_SIGNING_KEY to sign session tokens; \
             generate keys with `eventline keygen`"
        );
    }
    if config.auth.verifying.is_none() {
        tracing::warn!(
            "EVENTLINE_AUTH_PUBLIC_KEY is not set: commands that need a session token will be refused"
        );
    }
    let shutdown = Shutdown::on_signals();
    let store = wait_for_database(&config).await?;
    eventline_workers::runtime::http::Settings::from_env()?
        .start(&config.namespace, &store, false, &shutdown)
        .await?;
    services::run(service, config, store, shutdown).await;
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

/// The `key` of a query's answer, or the reason it was refused.
fn query_result(reply: Reply, key: &str) -> anyhow::Result<serde_json::Value> {
    match reply {
        Reply::Accepted {
            result: Some(mut result),
            ..
        } => Ok(result[key].take()),
        Reply::Accepted { result: None, .. } => bail!("the query's reply had no result"),
        Reply::Rejected { reason } => bail!("{} ({})", reason.message, reason.code),
    }
}

fn print_dead_letter(letter: &DeadLetter) {
    println!(
        "message id   {}\ntype         {}\nreason       [{}] {}\nqueue        {}\nhandled by   {}\ncorrelation  {}\nheaders:",
        letter.message_id.as_deref().unwrap_or("(none)"),
        letter.message_type.as_deref().unwrap_or("(none)"),
        letter.code,
        letter.reason,
        letter.original_queue.as_deref().unwrap_or("?"),
        letter.handled_by.as_deref().unwrap_or("?"),
        letter.correlation_id.as_deref().unwrap_or("?"),
    );
    for (name, value) in &letter.headers {
        println!("  {name}: {value}");
    }
    // Pretty-printed when it is JSON, as sent otherwise.
    let body = serde_json::from_str::<serde_json::Value>(&letter.body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| letter.body.clone());
    println!("body:\n{body}");
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
        Reply::Accepted {
            stream_id,
            events,
            result,
        } if events.is_empty() && result.is_none() => {
            println!("accepted: nothing to change in {stream_id} (already done)");
        }
        Reply::Accepted {
            stream_id,
            events,
            result,
        } => {
            println!("accepted: {stream_id}");
            if let Some(result) = result {
                println!("  result: {result}");
            }
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
    eventline::logging::init(default);
}
