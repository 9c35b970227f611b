//! The seed's six key characteristics as scenarios: distribution, autonomy, coordination,
//! transparency, fault tolerance, scalability. Each acts on its [`Lab`] and returns what it
//! saw as a [`Verdict`]; none decides a claim from anything but the running system (replies,
//! the inbox's `handled_by`, the read models).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use eventline_events::Service;
use eventline_events::catalog::{CatalogCommand, Restock};
use eventline_events::values::{ProductId, Quantity};

use super::Verdict;
use super::lab::{Lab, PATIENCE};
use crate::client::{OrderOutcome, parse_order};

/// Waits until the products read model shows nothing reserved for `product`; returns its
/// (available, reserved, sold).
pub(super) async fn settled_stock(lab: &Lab, product: &str) -> anyhow::Result<(i64, i64, i64)> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT available, reserved, sold FROM catalog_products WHERE product_id = $1",
        )
        .bind(product)
        .fetch_optional(lab.store.pool())
        .await?;
        match row {
            Some(row) if row.1 == 0 => return Ok(row),
            seen if Instant::now() > deadline => {
                bail!("{product} still has items reserved after {PATIENCE:?}: {seen:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Places `n` orders of one `product` with `card`, `parallel` at a time, and returns their
/// outcomes.
pub(super) async fn orders(
    lab: &Lab,
    product: &str,
    card: &str,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Vec<OrderOutcome>> {
    let next = AtomicUsize::new(0);
    let outcomes = futures_util::future::join_all((0..parallel).map(|_| async {
        let mut mine = Vec::new();
        while next.fetch_add(1, Ordering::Relaxed) < n {
            mine.push(lab.order(product, card).await);
        }
        mine
    }))
    .await;
    outcomes.into_iter().flatten().collect()
}

pub async fn distribution(lab: &mut Lab) -> anyhow::Result<Verdict> {
    lab.add_product("tea", 10).await?;
    let order = parse_order(&["tea:1".into()], "tok_visa").map_err(anyhow::Error::msg)?;
    let outcome = lab.customer.place_order(&order, PATIENCE).await?;
    println!("one order: {outcome}");
    let handlers: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT split_part(consumer, '.', 1), handled_by FROM processed_messages \
         WHERE correlation_id = $1 ORDER BY 1, 2",
    )
    .bind(order.order_id.as_uuid())
    .fetch_all(lab.store.pool())
    .await?;
    let services: std::collections::BTreeSet<&str> =
        handlers.iter().map(|(s, _)| s.as_str()).collect();
    let list = handlers
        .iter()
        .map(|(s, r)| format!("{s} by {r}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Verdict::check(
        outcome.status == "confirmed"
            && ["catalog", "orders", "payments"]
                .iter()
                .all(|s| services.contains(s)),
        format!("order {} was handled by: {list}", order.order_id),
    ))
}

pub async fn autonomy(lab: &mut Lab) -> anyhow::Result<Verdict> {
    lab.kill("payments-1").await;
    lab.wait_for_consumers(Service::Payments, 0).await?;
    println!("payments-1 killed: no payments replica is running");
    let started = Instant::now();
    lab.add_product("mug", 3).await?;
    let restock = CatalogCommand::from(Restock {
        product_id: ProductId::parse("mug".into()).map_err(anyhow::Error::msg)?,
        quantity: Quantity::parse(2).map_err(anyhow::Error::msg)?,
    });
    let reply = lab.admin.request(&restock, PATIENCE).await?;
    Ok(Verdict::check(
        reply.is_accepted(),
        format!(
            "with payments down, catalog added a product and restocked it in {:.2} s ({})",
            started.elapsed().as_secs_f64(),
            if reply.is_accepted() {
                "accepted"
            } else {
                "refused"
            }
        ),
    ))
}

pub async fn coordination(lab: &mut Lab) -> anyhow::Result<Verdict> {
    lab.add_product("tea", 10).await?;
    let outcome = lab.order("tea", "tok_declined").await?;
    println!("an order paid with a declined card: {outcome}");
    let (available, reserved, sold) = settled_stock(lab, "tea").await?;
    Ok(Verdict::check(
        outcome.status != "confirmed" && available == 10 && reserved == 0 && sold == 0,
        format!(
            "catalog reserved the item, payments declined, orders told catalog to release it: \
             available {available}, reserved {reserved}, sold {sold}"
        ),
    ))
}

pub async fn transparency(lab: &mut Lab) -> anyhow::Result<Verdict> {
    lab.add_product("tea", 1000).await?;
    let outcomes = orders(lab, "tea", "tok_visa", 24, 6).await?;
    let confirmed = outcomes.iter().filter(|o| o.status == "confirmed").count();
    let per_replica = lab.handled_by("catalog.", None).await?;
    println!(
        "the client sent to {} only",
        lab.topology.commands_exchange()
    );
    let both = per_replica.iter().filter(|(_, n)| *n > 0).count() >= 2;
    Ok(Verdict::check(
        confirmed == outcomes.len() && both,
        format!(
            "{confirmed} of {} orders confirmed; catalog's work by replica: {per_replica:?}",
            outcomes.len()
        ),
    ))
}

pub async fn fault_tolerance(lab: &mut Lab, sabotage: bool) -> anyhow::Result<Verdict> {
    lab.add_product("tea", 1000).await?;
    let total = 30;
    let ended = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    let lab = &*lab;
    let load = futures_util::future::join_all((0..5).map(|_| async {
        let mut mine = Vec::new();
        while next.fetch_add(1, Ordering::Relaxed) < total {
            mine.push(lab.order("tea", "tok_visa").await);
            ended.fetch_add(1, Ordering::Relaxed);
        }
        mine
    }));
    // Sabotage: no survivor, so the claim cannot hold.
    let victims: &[&str] = if sabotage {
        &["catalog-1", "catalog-2"]
    } else {
        &["catalog-1"]
    };
    // The killer runs beside the load, once a third of the orders have ended.
    let killer = async {
        while ended.load(Ordering::Relaxed) < total / 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for victim in victims {
            lab.kill(victim).await;
        }
        println!(
            "SIGKILL {} with {} of {total} orders ended",
            victims.join(" and "),
            ended.load(Ordering::Relaxed)
        );
    };
    let (outcomes, ()) = tokio::join!(load, killer);
    let outcomes: Vec<OrderOutcome> = outcomes.into_iter().flatten().collect::<Result<_, _>>()?;
    let confirmed = outcomes.iter().filter(|o| o.status == "confirmed").count();
    let others: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status != "confirmed")
        .map(|o| o.to_string())
        .take(3)
        .collect();
    Ok(Verdict::check(
        confirmed == total,
        format!("{confirmed} of {total} orders confirmed; others: {others:?}"),
    ))
}

pub async fn scalability(lab: &mut Lab) -> anyhow::Result<Verdict> {
    lab.add_product("tea", 1000).await?;
    let before = orders(lab, "tea", "tok_visa", 10, 4).await?;
    let since = lab.now().await?;
    lab.spawn(Service::Catalog, "catalog-2").await?;
    lab.wait_for_consumers(Service::Catalog, 2).await?;
    println!(
        "catalog-2 added after {} orders, under the same load; nothing else was told",
        before.len()
    );
    let after = orders(lab, "tea", "tok_visa", 24, 6).await?;
    let shares = lab.handled_by("catalog.", Some(since)).await?;
    let catalog_2 = shares
        .iter()
        .find(|(r, _)| r == "catalog-2")
        .map_or(0, |(_, n)| *n);
    let catalog_1 = shares
        .iter()
        .find(|(r, _)| r == "catalog-1")
        .map_or(0, |(_, n)| *n);
    Ok(Verdict::check(
        catalog_2 > 0 && catalog_1 > 0 && after.iter().all(|o| o.status == "confirmed"),
        format!(
            "after the addition, catalog messages by replica: catalog-1 {catalog_1}, catalog-2 {catalog_2}"
        ),
    ))
}
