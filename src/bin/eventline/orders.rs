//! `eventline orders [--order ID]`: your orders, or one order, with status, asked over the
//! broker with the session token in EVENTLINE_TOKEN.
//!
//! It must never read the database: the orders service decides what the token may see (a
//! customer their own orders, an admin any).

use std::time::Duration;

use anyhow::Context;
use eventline::Client;
use eventline_events::orders::{GetOrder, ListMyOrders, OrdersQuery};
use eventline_events::values::OrderId;

use crate::query::query_result;
use crate::{Exit, Globals};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    order: Option<uuid::Uuid>,
}

pub async fn run(Args { order }: Args, globals: Globals) -> anyhow::Result<Exit> {
    let config = globals.config;
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
    if globals.json {
        println!("{}", serde_json::to_string_pretty(&orders)?);
    } else {
        for o in orders.as_array().into_iter().flatten() {
            println!(
                "{}  {:<10} total {:>8}  {}",
                o["order_id"].as_str().unwrap_or("?"),
                o["status"].as_str().unwrap_or("?"),
                // A JSON value's Display ignores width.
                o["total"].to_string(),
                o["reason"].as_str().unwrap_or("")
            );
        }
    }
    client.close().await;
    Ok(Exit::Success)
}
