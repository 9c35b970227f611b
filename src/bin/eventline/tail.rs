//! `eventline tail [PATTERN]`: print events as the relay publishes them.
//!
//! It must never acknowledge anything on a service's behalf: it reads from a private queue of
//! its own, bound to the events exchange, which goes away with it.

use futures_util::StreamExt;

use eventline::Client;

use crate::{Exit, Globals};

#[derive(clap::Args)]
pub struct Args {
    /// Topic pattern on event types: catalog.#, #.stock_reserved, # (all).
    #[arg(default_value = "#")]
    pattern: String,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
}

pub async fn run(Args { pattern, count }: Args, globals: Globals) -> anyhow::Result<Exit> {
    let config = globals.config;
    let client = Client::connect(&config.amqp_url, config.namespace.clone()).await?;
    let events = client.subscribe(&pattern).await?;
    let mut events = std::pin::pin!(events.take(count.unwrap_or(usize::MAX)));
    eprintln!(
        "tailing {} for {pattern:?}; Ctrl-C to stop",
        client.topology().events_exchange()
    );
    while let Some(event) = events.next().await {
        if globals.json {
            println!("{}", serde_json::to_string(&event)?);
        } else {
            println!(
                "#{:<6} {:<32} {} v{}  {}",
                event.position, event.event_type, event.stream_id, event.stream_version, event.data
            );
        }
    }
    Ok(Exit::Success)
}
