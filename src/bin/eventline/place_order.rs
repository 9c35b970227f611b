//! `eventline place-order LINE…`: place an order as a customer and wait for its final
//! outcome (confirmed, rejected or cancelled).
//!
//! It must never report an order as placed before the saga has ended it: the exit status is
//! 0 only for a confirmed order.

use std::time::Duration;

use anyhow::Context;
use eventline::Client;

use crate::{Exit, Globals};

#[derive(clap::Args)]
pub struct Args {
    /// Lines as product:quantity, e.g. tea:2 mug:1.
    #[arg(required = true)]
    lines: Vec<String>,
    /// A card token: tok_visa, tok_declined, tok_insufficient_funds, tok_slow, …
    #[arg(long, default_value = "tok_visa")]
    card: String,
    /// Seconds to wait for the outcome.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

pub async fn run(args: Args, globals: Globals) -> anyhow::Result<Exit> {
    let Args {
        lines,
        card,
        timeout,
    } = args;
    let config = globals.config;
    let token = std::env::var("EVENTLINE_TOKEN")
        .context("place-order needs a customer session token in EVENTLINE_TOKEN (log in with `eventline send auth.log_in …`)")?;
    let client = Client::connect(&config.amqp_url, config.namespace.clone())
        .await?
        .with_token(token);
    let order = eventline::client::parse_order(&lines, &card).map_err(anyhow::Error::msg)?;
    let outcome = client
        .place_order(&order, Duration::from_secs(timeout))
        .await?;
    if globals.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!("order {}: {}", order.order_id, outcome);
    }
    client.close().await;
    Ok(if outcome.status == "confirmed" {
        Exit::Success
    } else {
        Exit::Refused
    })
}
