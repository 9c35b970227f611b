//! The seed's four core challenges as scenarios: concurrency, no global clock, independent
//! failures, network unreliability. Like the characteristics (`seed.rs`), each returns what
//! it saw in the running system as a [`Verdict`].

use std::time::Duration;

use eventline_events::catalog::{AddProduct, CatalogCommand, Restock};
use eventline_events::values::{Money, ProductId, ProductName, Quantity, StockLevel};
use eventline_events::{Metadata, OutgoingMessage, Service};

use super::Verdict;
use super::lab::{Lab, PATIENCE};
use super::seed::{orders, settled_stock};
use crate::client::Client;

pub async fn concurrency(lab: &mut Lab) -> anyhow::Result<Verdict> {
    lab.add_product("mug", 5).await?;
    // All ten at once: they race for the same stream; optimistic concurrency picks winners.
    let outcomes = orders(lab, "mug", "tok_visa", 10, 10).await?;
    let confirmed = outcomes.iter().filter(|o| o.status == "confirmed").count();
    let (available, reserved, sold) = settled_stock(lab, "mug").await?;
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_log WHERE stream_id = 'catalog.product-mug'",
    )
    .fetch_one(lab.store.pool())
    .await?;
    Ok(Verdict::check(
        confirmed == 5 && available == 0 && reserved == 0 && sold == 5,
        format!(
            "{confirmed} of 10 confirmed; mug: available {available}, reserved {reserved}, sold {sold}; \
             its stream has {events} events, each at its own version"
        ),
    ))
}

pub async fn no_global_clock(lab: &mut Lab) -> anyhow::Result<Verdict> {
    // Client 1's clock runs an hour fast; Client 2's is right. Client 2 acts only after
    // Client 1's reply, so its command is caused after — yet stamped an hour earlier.
    let client_2 = Client::connect(&lab.config.amqp_url, lab.namespace.clone())
        .await?
        .with_token(lab.admin_token());
    let mut add = Metadata::origin("catalog.add_product");
    add.occurred_at += Duration::from_secs(3600);
    let add = OutgoingMessage::new(
        add,
        &CatalogCommand::from(AddProduct {
            product_id: ProductId::parse("clock".into()).map_err(anyhow::Error::msg)?,
            name: ProductName::parse("Wall clock".into()).map_err(anyhow::Error::msg)?,
            price: Money::parse(1500).map_err(anyhow::Error::msg)?,
            initial_stock: StockLevel::parse(1).map_err(anyhow::Error::msg)?,
        }),
    );
    let stamped_add = add.metadata.occurred_at;
    let first = lab.admin.request_message(add, PATIENCE).await?;
    let restock = OutgoingMessage::new(
        Metadata::origin("catalog.restock"),
        &CatalogCommand::from(Restock {
            product_id: ProductId::parse("clock".into()).map_err(anyhow::Error::msg)?,
            quantity: Quantity::parse(1).map_err(anyhow::Error::msg)?,
        }),
    );
    let stamped_restock = restock.metadata.occurred_at;
    let second = client_2.request_message(restock, PATIENCE).await?;
    println!(
        "client 1 stamped add_product {stamped_add}; client 2, after its reply, stamped restock {stamped_restock}"
    );
    let log: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT position, stream_version, event_type FROM event_log \
         WHERE stream_id = 'catalog.product-clock' ORDER BY position",
    )
    .fetch_all(lab.store.pool())
    .await?;
    let types: Vec<&str> = log.iter().map(|(_, _, t)| t.as_str()).collect();
    let clocks_disagree = stamped_restock < stamped_add;
    let causal = log.len() == 2
        && log[0].1 == 1
        && log[1].1 == 2
        && types[0].ends_with("product_added")
        && first.is_accepted()
        && second.is_accepted();
    Ok(Verdict::check(
        clocks_disagree && causal,
        format!(
            "by the clocks restock came {} s before the product existed; the log says {:?}",
            (stamped_add - stamped_restock).whole_seconds(),
            log
        ),
    ))
}

pub async fn independent_failures(lab: &mut Lab) -> anyhow::Result<Verdict> {
    lab.add_product("tea", 10).await?;
    lab.kill("payments-1").await;
    lab.wait_for_consumers(Service::Payments, 0).await?;
    println!("payments-1 SIGKILLed; placing an order that needs it");
    let (outcome, catalog) = tokio::join!(lab.order("tea", "tok_visa"), async {
        lab.add_product("mug", 2).await
    });
    let outcome = outcome?;
    let catalog_ok = catalog.is_ok();
    let (available, reserved, _) = settled_stock(lab, "tea").await?;
    Ok(Verdict::check(
        outcome.status == "cancelled" && catalog_ok && available == 10 && reserved == 0,
        format!(
            "the order ended {outcome}; catalog {} meanwhile; tea: available {available}, reserved {reserved}",
            if catalog_ok {
                "kept accepting commands"
            } else {
                "failed too"
            }
        ),
    ))
}

pub async fn network_unreliability(lab: &mut Lab, sabotage: bool) -> anyhow::Result<Verdict> {
    lab.add_product("tea", 10).await?;
    let restock = OutgoingMessage::new(
        Metadata::origin("catalog.restock"),
        &CatalogCommand::from(Restock {
            product_id: ProductId::parse("tea".into()).map_err(anyhow::Error::msg)?,
            quantity: Quantity::parse(5).map_err(anyhow::Error::msg)?,
        }),
    );
    let first = lab.admin.request_message(restock.clone(), PATIENCE).await?;
    // The reply was "lost": the client sends again. Sabotage: as a new message (a fresh id),
    // which the inbox cannot know is the same request.
    let again = if sabotage {
        let mut copy = restock.clone();
        copy.metadata = Metadata::origin("catalog.restock");
        copy
    } else {
        restock
    };
    let second = lab.admin.request_message(again, PATIENCE).await?;
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT stream_version FROM event_log WHERE stream_id = 'catalog.product-tea' ORDER BY 1",
    )
    .fetch_all(lab.store.pool())
    .await?;
    Ok(Verdict::check(
        versions == [1, 2] && first == second,
        format!(
            "sent twice; replies identical: {}; the product's stream versions: {versions:?}",
            first == second
        ),
    ))
}
