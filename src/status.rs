//! `eventline status`: the whole system on one screen, for a person on call (or `--json` for
//! a script; `--watch` refreshes it).
//!
//! Per service, the live replicas (consumers on its command queue) and its queue depths,
//! dead letters included, from passive declares on the broker; each log reader's lag, the
//! inbox's size and the last minute's activity from the database, read as an operator. The
//! exit status is 1 when something is unhealthy: a service with no replica, a reader stalled
//! past the threshold, a broker or database that does not answer.
//!
//! It only reads: it must never declare, purge or consume a queue (a passive declare changes
//! nothing), nor write to the database.

use std::time::Duration;

use anyhow::Context;
use eventline_events::{Service, Topology};
use eventline_workers::runtime::http::{RELAY_STALL_VAR, Settings};
use eventline_workers::runtime::sampler::{self, Sample};
use eventline_workers::runtime::store::EventStore;
use eventline_workers::runtime::{Config, broker};
use serde::Serialize;

#[derive(Clone, Debug, clap::Args)]
pub struct StatusOptions {
    /// Refresh every few seconds until Ctrl-C (the exit status is the last screen's).
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
}

/// One queue's depth and consumers; `None` when the queue does not exist (yet).
#[derive(Clone, Debug, Serialize)]
pub struct QueueState {
    pub name: String,
    pub messages: u32,
    pub consumers: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceState {
    pub service: Service,
    /// Consumers on the command queue: the live replicas.
    pub replicas: u32,
    pub commands: Option<QueueState>,
    pub retry: Option<QueueState>,
    pub dead_letters: Option<QueueState>,
    pub queries: Option<QueueState>,
    pub replies: Option<QueueState>,
}

/// The last minute's activity, from the log's and the inbox's timestamps.
#[derive(Clone, Debug, Serialize)]
pub struct LastMinute {
    /// Events recorded, by service (the event type's prefix).
    pub events: Vec<(String, i64)>,
    /// Messages handled, by consumer (`catalog.commands`, …).
    pub handled: Vec<(String, i64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub namespace: String,
    pub services: Vec<ServiceState>,
    pub database: Option<Sample>,
    pub last_minute: Option<LastMinute>,
    /// What makes the system unhealthy; empty when healthy.
    pub problems: Vec<String>,
    /// What deserves a look but is not an outage (dead letters waiting).
    pub warnings: Vec<String>,
}

/// Runs the command; returns the exit status (0 healthy, 1 unhealthy).
pub async fn run(config: &Config, options: &StatusOptions, json: bool) -> anyhow::Result<i32> {
    let stall = Settings::from_env()?.relay_stall;
    loop {
        let status = collect(config, stall).await;
        if json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            if options.watch {
                // Clear the screen and go home, as `watch` does.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&status));
        }
        let code = i32::from(!status.problems.is_empty());
        if !options.watch {
            return Ok(code);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(options.interval.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(code),
        }
    }
}

/// Everything the screen shows. Unreachable services become problems, not errors, so the
/// screen still shows what could be read.
pub async fn collect(config: &Config, stall: Duration) -> Status {
    let topology = Topology::new(config.namespace.clone());
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut services = Vec::new();
    match broker::connect(&config.amqp_url, "status").await {
        Ok(connection) => {
            for service in Service::ALL {
                let inspect = |name: String| {
                    let connection = &connection;
                    async move {
                        broker::inspect_queue(connection, &name)
                            .await
                            .ok()
                            .map(|q| QueueState {
                                messages: q.message_count(),
                                consumers: q.consumer_count(),
                                name,
                            })
                    }
                };
                let state = ServiceState {
                    service,
                    commands: inspect(topology.command_queue(service)).await,
                    retry: inspect(topology.retry_queue(service)).await,
                    dead_letters: inspect(topology.dead_letter_queue(service)).await,
                    queries: inspect(topology.query_queue(service)).await,
                    replies: inspect(topology.reply_queue(service)).await,
                    replicas: 0,
                };
                let replicas = state.commands.as_ref().map_or(0, |q| q.consumers);
                if replicas == 0 {
                    problems.push(format!("{service} has no live replica"));
                }
                if let Some(dead) = state.dead_letters.as_ref().filter(|q| q.messages > 0) {
                    warnings.push(format!(
                        "{service} has {} dead letters (eventline dead-letters {service})",
                        dead.messages
                    ));
                }
                services.push(ServiceState { replicas, ..state });
            }
            let _ = connection.close(200, "status".into()).await;
        }
        Err(error) => problems.push(format!("the broker does not answer: {error}")),
    }
    let (database, last_minute) = match read_database(config).await {
        Ok((sample, minute)) => {
            for reader in &sample.readers {
                if reader.seconds > stall.as_secs_f64() {
                    problems.push(format!(
                        "{} is {} events and {:.1} s behind the log (threshold {} s, {RELAY_STALL_VAR})",
                        reader.reader,
                        reader.events,
                        reader.seconds,
                        stall.as_secs()
                    ));
                }
            }
            (Some(sample), Some(minute))
        }
        Err(error) => {
            problems.push(format!("the database does not answer: {error:#}"));
            (None, None)
        }
    };
    Status {
        namespace: config.namespace.to_string(),
        services,
        database,
        last_minute,
        problems,
        warnings,
    }
}

// The last minute by the log's own clock (`now()` of the database), so the status machine's
// clock does not matter. Both scans are bounded by the index on position / the time filter.
const EVENTS_LAST_MINUTE: &str = "\
    SELECT split_part(event_type, '.', 1), count(*) FROM event_log \
    WHERE recorded_at > now() - interval '1 minute' GROUP BY 1 ORDER BY 1";
const HANDLED_LAST_MINUTE: &str = "\
    SELECT consumer, count(*) FROM processed_messages \
    WHERE processed_at > now() - interval '1 minute' GROUP BY 1 ORDER BY 1";

async fn read_database(config: &Config) -> anyhow::Result<(Sample, LastMinute)> {
    let store = EventStore::connect(&config.database_url, 1)
        .await
        .context("connecting")?;
    let sample = sampler::sample(store.pool()).await?;
    let events = sqlx::query_as(EVENTS_LAST_MINUTE)
        .fetch_all(store.pool())
        .await?;
    let handled = sqlx::query_as(HANDLED_LAST_MINUTE)
        .fetch_all(store.pool())
        .await?;
    store.pool().close().await;
    Ok((sample, LastMinute { events, handled }))
}

/// The screen, as text.
pub fn render(status: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let count = |q: &Option<QueueState>| {
        q.as_ref()
            .map_or("-".to_owned(), |q| q.messages.to_string())
    };
    let _ = writeln!(out, "eventline status: namespace {}\n", status.namespace);
    if !status.services.is_empty() {
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>9} {:>6} {:>13} {:>8} {:>8}",
            "service", "replicas", "commands", "retry", "dead letters", "queries", "replies"
        );
        for s in &status.services {
            let _ = writeln!(
                out,
                "{:<10} {:>8} {:>9} {:>6} {:>13} {:>8} {:>8}",
                s.service.name(),
                s.replicas,
                count(&s.commands),
                count(&s.retry),
                count(&s.dead_letters),
                count(&s.queries),
                count(&s.replies)
            );
        }
        out.push('\n');
    }
    if let Some(sample) = &status.database {
        let _ = writeln!(
            out,
            "{:<32} {:>10} {:>8} {:>12}",
            "log reader", "position", "behind", "oldest unread"
        );
        for r in &sample.readers {
            let _ = writeln!(
                out,
                "{:<32} {:>10} {:>8} {:>11.1}s",
                r.reader, r.position, r.events, r.seconds
            );
        }
        if let Some(rows) = sample.inbox_rows {
            let _ = writeln!(out, "\ninbox: {rows} messages handled in all");
        }
    }
    if let Some(minute) = &status.last_minute {
        let list = |items: &[(String, i64)]| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                items
                    .iter()
                    .map(|(name, n)| format!("{name} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(out, "last minute: events {}", list(&minute.events));
        let _ = writeln!(out, "             handled {}", list(&minute.handled));
    }
    out.push('\n');
    for warning in &status.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    if status.problems.is_empty() {
        let _ = writeln!(out, "healthy");
    } else {
        for problem in &status.problems {
            let _ = writeln!(out, "UNHEALTHY: {problem}");
        }
    }
    out
}
