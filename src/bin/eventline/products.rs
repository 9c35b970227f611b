//! `eventline products`: the catalog's products with their stock, asked over the broker as
//! any client would.
//!
//! It must never read the database: the answer comes from the catalog service's query.

use std::time::Duration;

use eventline::Client;
use eventline_events::catalog::{CatalogQuery, ListProducts};

use crate::query::query_result;
use crate::{Exit, Globals};

pub async fn run(globals: Globals) -> anyhow::Result<Exit> {
    let config = globals.config;
    let client = Client::connect(&config.amqp_url, config.namespace.clone()).await?;
    let reply = client
        .request(
            &CatalogQuery::from(ListProducts {}),
            Duration::from_secs(10),
        )
        .await?;
    let products = query_result(reply, "products")?;
    if globals.json {
        println!("{}", serde_json::to_string_pretty(&products)?);
    } else {
        println!(
            "{:<20} {:>9} {:>9} {:>9} {:>8}",
            "product", "available", "reserved", "sold", "price"
        );
        for p in products.as_array().into_iter().flatten() {
            // A JSON value's Display ignores width: format the numbers as text first.
            println!(
                "{:<20} {:>9} {:>9} {:>9} {:>8}",
                p["product_id"].as_str().unwrap_or("?"),
                p["available"].to_string(),
                p["reserved"].to_string(),
                p["sold"].to_string(),
                p["price"].to_string()
            );
        }
    }
    client.close().await;
    Ok(Exit::Success)
}
