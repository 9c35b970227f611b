//! The `eventline` command: one binary for every role in the system.
//!
//! `worker`, `relay` and `migrate` are the server side (what compose runs, one process per
//! replica); `send`, `tail`, `dead-letters` and `products` are the client side (the seed's
//! Client 1 and 2); `demo` runs the whole thing on this machine and reports what happened.
//!
//! This file parses the command line and hands each subcommand to its own module (one file
//! per subcommand, each returning an [`Exit`]); it is the only place that ends the process.
//! To add a subcommand: a file with `Args` and `run`, a variant of [`Command`], an arm in
//! [`run`]. Nothing here prints a command's results.

mod broker_users;
mod chaos;
mod dashboard;
mod database;
mod dead_letters;
mod demo;
mod keygen;
mod lesson;
mod migrate;
mod orders;
mod place_order;
mod products;
mod projections;
mod query;
mod relay;
mod send;
mod status;
mod tail;
mod telemetry;
#[cfg(test)]
mod tests;
mod token;
mod trace;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use eventline_workers::runtime::Config;

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

// A variant's doc comment is its `--help` text; its arguments live with its module.
#[derive(Subcommand)]
enum Command {
    /// Create the database if it is missing and apply the migrations in schema/migrations.
    /// For each of EVENTLINE_{AUTH,CATALOG,ORDERS,PAYMENTS,RELAY}_DATABASE_URL that is set,
    /// also create that URL's user as that process's least-privilege login (its own tables
    /// and streams only; it never rewrites the event log).
    Migrate,
    /// Run one replica of a service's worker (add replicas by running more).
    Worker(worker::Args),
    /// Run the relay that publishes committed events to the events exchange, in log order.
    Relay,
    /// Publish a command and print its reply. A session token is taken from --token or
    /// EVENTLINE_TOKEN.
    Send(send::Args),
    /// Print events as the relay publishes them.
    Tail(tail::Args),
    /// List a service's dead letters with their reasons (they stay in the queue); `show` one
    /// in full; `redrive` selected ones back to the service after a fix.
    DeadLetters(dead_letters::Args),
    /// Print the products with their stock (a query over the broker).
    Products,
    /// Print your orders, or one order, with status (a query over the broker; needs
    /// EVENTLINE_TOKEN).
    Orders(orders::Args),
    /// Place an order and wait for its final outcome (confirmed, rejected or cancelled).
    PlaceOrder(place_order::Args),
    /// One screen: each service's replicas and queues, dead letters, relay and projection
    /// lag, inbox size, the last minute's activity. Exit status 1 when something is unhealthy.
    Status(eventline::status::StatusOptions),
    /// Print one conversation (a correlation id, e.g. an order id) as a causal tree: who
    /// handled what, caused by what, recording which events. Ordered by causation, not clocks.
    Trace(trace::Args),
    /// Print fresh Ed25519 key pairs (auth's, for session tokens; orders', for the saga's step
    /// credentials) and fresh passwords for the per-service broker users, as environment
    /// variables (or JSON with --json).
    Keygen,
    /// Define one broker user per service and one for the relay, each allowed only its own
    /// queues (see README, "Least privilege"). Prints RabbitMQ definitions JSON; with --apply,
    /// imports them with `rabbitmqctl import_definitions`. Passwords come from
    /// EVENTLINE_AMQP_PASSWORD_{AUTH,CATALOG,ORDERS,PAYMENTS,RELAY} (`eventline keygen`).
    BrokerUsers(broker_users::Args),
    /// Mint a session token (operators: e.g. an admin token for catalog changes). Needs
    /// EVENTLINE_AUTH_SIGNING_KEY.
    Token(token::Args),
    /// Run the whole system locally: fresh database and namespace, worker replicas, relay, two
    /// concurrent clients. Prints what happened.
    Demo(eventline::demo::DemoOptions),
    /// Inject faults (killed workers, broker and database outages, a misbehaving network,
    /// duplicate deliveries) into a system of its own under load, check that no accepted
    /// command was lost or applied twice, and print a table. Needs root for the broker and
    /// database faults; restores their defaults when done.
    Chaos(eventline::chaos::ChaosOptions),
    /// Read models: check them against the log, or rebuild one without downtime.
    #[command(subcommand)]
    Projections(eventline::projections::ProjectionsAction),
    /// Serve a live view of the system on loopback (default http://127.0.0.1:8080/): the
    /// seed's diagram with every live replica, queue, reader lag and order outcome in it;
    /// click an order for its causal path.
    Dashboard(eventline::dashboard::DashboardOptions),
    /// Run one of the seed's ten ideas as a live scenario on a small system of its own, and
    /// check its claim: exit 0 if it held, 1 (with the reason) if not. `--list` names them.
    Lesson(eventline::lessons::LessonOptions),
}

/// What every subcommand is given: the configuration from the environment and the global
/// `--json` flag.
struct Globals {
    config: Config,
    json: bool,
}

/// How a subcommand that ran to its end finished. An error is a third outcome, exit status 2,
/// which [`main`] gives to any `Err`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Status 0: done as asked.
    Success,
    /// Status 1: the command ran, but the system said no (a rejected command, an order that
    /// was not confirmed, dead letters kept). Scripts tell this from a failure to run (2), as
    /// the Python example does.
    Refused,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        match exit {
            Exit::Success => ExitCode::SUCCESS,
            Exit::Refused => ExitCode::from(1),
        }
    }
}

/// The status for a command that could not run: bad configuration, an unreachable service,
/// bad input.
const FAILED: u8 = 2;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(FAILED);
        }
    };
    match runtime.block_on(run(Cli::parse())) {
        Ok(exit) => exit.into(),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(FAILED)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let server_role = matches!(cli.command, Command::Worker(_) | Command::Relay);
    let _telemetry = telemetry::init(if server_role {
        "info,sqlx=warn"
    } else {
        "warn,sqlx=error,lapin=off"
    });
    let globals = Globals {
        config: Config::from_env()?,
        json: cli.json,
    };
    match cli.command {
        Command::Migrate => migrate::run(globals).await,
        Command::Worker(args) => worker::run(args, globals).await,
        Command::Relay => relay::run(globals).await,
        Command::Send(args) => send::run(args, globals).await,
        Command::Tail(args) => tail::run(args, globals).await,
        Command::DeadLetters(args) => dead_letters::run(args, globals).await,
        Command::Products => products::run(globals).await,
        Command::Orders(args) => orders::run(args, globals).await,
        Command::PlaceOrder(args) => place_order::run(args, globals).await,
        Command::Status(options) => status::run(options, globals).await,
        Command::Trace(args) => trace::run(args, globals).await,
        Command::Keygen => keygen::run(globals),
        Command::BrokerUsers(args) => broker_users::run(args, globals).await,
        Command::Token(args) => token::run(args, globals),
        Command::Demo(options) => demo::run(options, globals).await,
        Command::Chaos(options) => chaos::run(options, globals).await,
        Command::Projections(action) => projections::run(action, globals).await,
        Command::Dashboard(options) => dashboard::run(options, globals).await,
        Command::Lesson(options) => lesson::run(options, globals).await,
    }
}
