//! What must hold after every scenario, read from the log and the broker as an operator would:
//! no accepted order lost, no effect recorded twice, stock conserved and never negative, money
//! balanced, per-stream versions gap-free, exactly the poison in the dead-letter queues (each
//! with a reason), and every logged event relayed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use eventline_events::{Metadata, OutgoingMessage, Service, Topology};
use eventline_workers::runtime::projection;
use eventline_workers::runtime::store::EventStore;
use eventline_workers::runtime::{SecretUrl, broker};
use eventline_workers::services::catalog::ProductsProjection;
use eventline_workers::services::orders::OrdersProjection;
use lapin::options::BasicGetOptions;

use crate::client::{Client, EventMessage};
use crate::settled;

/// The outcome of every check; a `Some`/non-zero field is a failure, described.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Checks {
    /// Accepted orders with no `orders.order_placed` in the log.
    pub lost: usize,
    /// Groups of events that record one effect more than once.
    pub duplicated: usize,
    /// Orders that never got a reply, however often re-sent, within the bound.
    pub unanswered: usize,
    /// Orders refused, by code (every order the chaos clients place is valid).
    pub refused: BTreeMap<String, usize>,
    /// Accepted orders not confirmed, rejected or cancelled within the bound.
    pub not_ended: usize,
    pub recovery_within_bound: bool,
    pub stock: Option<String>,
    pub money: Option<String>,
    /// Streams whose versions are not exactly 1..=n.
    pub gapped_streams: i64,
    pub dead_letters: Option<String>,
    pub relay: Option<String>,
    /// Read models that differ from a fresh fold of the log.
    pub read_models: Option<String>,
}

impl Checks {
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.lost > 0 {
            out.push(format!(
                "{} accepted orders missing from the log",
                self.lost
            ));
        }
        if self.duplicated > 0 {
            out.push(format!("{} effects recorded twice", self.duplicated));
        }
        if self.unanswered > 0 {
            out.push(format!("{} orders never answered", self.unanswered));
        }
        if !self.refused.is_empty() {
            out.push(format!("valid orders refused: {:?}", self.refused));
        }
        if self.not_ended > 0 {
            out.push(format!("{} orders not ended in time", self.not_ended));
        }
        if !self.recovery_within_bound {
            out.push("a recovery took longer than the bound".into());
        }
        out.extend(self.stock.clone());
        out.extend(self.money.clone());
        if self.gapped_streams > 0 {
            out.push(format!("{} streams with version gaps", self.gapped_streams));
        }
        out.extend(self.dead_letters.clone());
        out.extend(self.relay.clone());
        out.extend(self.read_models.clone());
        out
    }
}

pub struct Ended {
    pub not_ended: usize,
}

/// Waits until every accepted order has ended, no stock is held, and the read models have
/// caught up with the log — or `deadline` passes.
pub async fn wait_until_ended(
    store: &EventStore,
    orders: &[uuid::Uuid],
    deadline: Instant,
) -> Ended {
    loop {
        let now = settled::snapshot(store, settled::Orders::These(orders)).await;
        if let Ok(now) = now
            && (now.is_settled() || Instant::now() > deadline)
        {
            return Ended {
                not_ended: usize::try_from(now.open_orders).unwrap_or(usize::MAX),
            };
        }
        if now.is_err() && Instant::now() > deadline {
            return Ended {
                not_ended: orders.len(),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Samples, every 100 ms until `done`, the log's end and the relay's checkpoint: the
/// longest any sampled position waited, from when it was visible until the relay had
/// published it. Database errors (faults) skip a sample.
pub async fn relay_worst_lag(store: &EventStore, done: &std::sync::atomic::AtomicBool) -> Duration {
    let mut pending: std::collections::VecDeque<(Instant, i64)> = Default::default();
    let mut worst = Duration::ZERO;
    while !done.load(std::sync::atomic::Ordering::Acquire) || !pending.is_empty() {
        let sampled = async {
            let end: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM event_log")
                .fetch_one(store.pool())
                .await?;
            let at = store
                .checkpoint(eventline_workers::runtime::relay::CHECKPOINT)
                .await
                .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            Ok::<_, sqlx::Error>((end, at))
        }
        .await;
        if let Ok((end, at)) = sampled {
            let now = Instant::now();
            if pending.back().is_none_or(|(_, p)| *p < end) {
                pending.push_back((now, end));
            }
            while let Some((seen, _)) = pending.front().filter(|(_, p)| *p <= at) {
                worst = worst.max(now - *seen);
                pending.pop_front();
            }
            if let Some((seen, _)) = pending.front() {
                worst = worst.max(now - *seen);
            }
        }
        if done.load(std::sync::atomic::Ordering::Acquire)
            && pending
                .front()
                .is_some_and(|(seen, _)| seen.elapsed() > Duration::from_secs(60))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worst
}

/// The log-level checks.
pub async fn run(
    store: &EventStore,
    accepted: &[uuid::Uuid],
    products: &[(&str, u64)],
    initial_stock: u32,
) -> anyhow::Result<Checks> {
    let pool = store.pool();
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM unnest($1::uuid[]) AS a(id) WHERE NOT EXISTS ( \
           SELECT 1 FROM event_log WHERE event_type = 'orders.order_placed' \
           AND data ->> 'order_id' = a.id::text)",
    )
    .bind(accepted)
    .fetch_one(pool)
    .await?;
    let duplicated: i64 = sqlx::query_scalar(
        "SELECT \
          (SELECT count(*) FROM (SELECT 1 FROM event_log \
             GROUP BY stream_id, event_type, metadata ->> 'causation_id' HAVING count(*) > 1) a) \
        + (SELECT count(*) FROM (SELECT 1 FROM event_log WHERE event_type = 'orders.order_placed' \
             GROUP BY data ->> 'order_id' HAVING count(*) > 1) b) \
        + (SELECT count(*) FROM (SELECT 1 FROM event_log WHERE event_type = 'payments.payment_captured' \
             GROUP BY data ->> 'order_id' HAVING count(*) > 1) c) \
        + (SELECT count(*) FROM (SELECT 1 FROM event_log WHERE event_type = 'catalog.stock_reserved' \
             GROUP BY data ->> 'product_id', data ->> 'order_id' HAVING count(*) > 1) d)",
    )
    .fetch_one(pool)
    .await?;
    let gapped_streams: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT stream_id FROM event_log GROUP BY stream_id \
           HAVING min(stream_version) <> 1 OR max(stream_version) <> count(*)) s",
    )
    .fetch_one(pool)
    .await?;

    let mut stock = Vec::new();
    for (product, _) in products {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT available, reserved, sold FROM catalog_products WHERE product_id = $1",
        )
        .bind(product)
        .fetch_optional(pool)
        .await?;
        let sold_by_orders: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum((line ->> 'quantity')::bigint), 0)::bigint \
             FROM orders_view, jsonb_array_elements(lines) AS line \
             WHERE status = 'confirmed' AND line ->> 'product_id' = $1",
        )
        .bind(product)
        .fetch_one(pool)
        .await?;
        match row {
            None => stock.push(format!("{product} missing from the read model")),
            Some((available, reserved, sold)) => {
                if available < 0 || reserved < 0 || sold < 0 {
                    stock.push(format!("{product} negative: {available}/{reserved}/{sold}"));
                }
                if available + reserved + sold != i64::from(initial_stock) {
                    stock.push(format!(
                        "{product} not conserved: {available}+{reserved}+{sold} ≠ {initial_stock}"
                    ));
                }
                if sold != sold_by_orders {
                    stock.push(format!(
                        "{product}: sold {sold} but confirmed orders hold {sold_by_orders}"
                    ));
                }
            }
        }
    }
    let (captured, refunded, confirmed): (i64, i64, i64) = sqlx::query_as(
        "SELECT \
           coalesce((SELECT sum((data ->> 'amount')::bigint) FROM event_log WHERE event_type = 'payments.payment_captured'), 0)::bigint, \
           coalesce((SELECT sum((data ->> 'amount')::bigint) FROM event_log WHERE event_type = 'payments.payment_refunded'), 0)::bigint, \
           coalesce((SELECT sum(total) FROM orders_view WHERE status = 'confirmed'), 0)::bigint",
    )
    .fetch_one(pool)
    .await?;
    let money = (captured - refunded != confirmed).then(|| {
        format!(
            "money unbalanced: captured {captured} − refunded {refunded} ≠ confirmed {confirmed}"
        )
    });
    let mut drifted = Vec::new();
    let products = projection::verify(&ProductsProjection, store).await?;
    if !products.is_exact() {
        drifted.push(format!("catalog_products drifted from the log {products}"));
    }
    let orders = projection::verify(&OrdersProjection, store).await?;
    if !orders.is_exact() {
        drifted.push(format!("orders_view drifted from the log {orders}"));
    }
    Ok(Checks {
        read_models: (!drifted.is_empty()).then(|| drifted.join("; ")),
        lost: usize::try_from(lost).unwrap_or(usize::MAX),
        duplicated: usize::try_from(duplicated).unwrap_or(usize::MAX),
        gapped_streams,
        stock: (!stock.is_empty()).then(|| stock.join("; ")),
        money,
        recovery_within_bound: true,
        ..Checks::default()
    })
}

/// Poison number `index`, one per service in turn: each must land in its dead-letter queue.
/// Its message id is fixed here, so a re-send after a lost confirm is the same message.
pub fn poison(index: usize) -> (Service, Vec<u8>, lapin::BasicProperties) {
    let (service, message_type, body): (Service, &str, &[u8]) = match index % 3 {
        0 => (Service::Catalog, "catalog.restock", b"{not json"),
        1 => (
            Service::Orders,
            "orders.launch_rockets",
            br#"{"order_id":"0190f0a0-0000-7000-8000-000000000000"}"#,
        ),
        _ => (
            Service::Payments,
            "payments.charge_payment",
            br#"{"order_id":"0190f0a0-0000-7000-8000-000000000000","amount":-500,"card":"tok_visa"}"#,
        ),
    };
    let properties = broker::properties(&OutgoingMessage {
        metadata: Metadata::origin(message_type),
        body: Vec::new(),
        extra_headers: Vec::new(),
    });
    (service, body.to_vec(), properties)
}

/// Steps that arrive before the state they depend on: a commit of a reservation that was never
/// made, and a refund of a payment that was never charged. Each must be answered and change
/// nothing (the stock and money checks see to that). They are signed with orders' key `saga`,
/// as the saga signs its steps: these test order, not authority.
pub fn steps_before_state(saga: &ed25519_dalek::SigningKey) -> Vec<OutgoingMessage> {
    let order = uuid::Uuid::now_v7();
    [
        (
            "catalog.commit_reservation",
            serde_json::json!({ "product_id": "tea", "order_id": order }),
        ),
        (
            "payments.refund_payment",
            serde_json::json!({ "order_id": order }),
        ),
    ]
    .into_iter()
    .map(|(message_type, body)| {
        let metadata = Metadata::origin(message_type);
        let body = body.to_string().into_bytes();
        let credential = eventline_workers::runtime::token::service_credential(
            saga,
            &metadata.message_id.to_string(),
            message_type,
            &body,
        );
        OutgoingMessage {
            metadata,
            body,
            extra_headers: vec![(
                eventline_events::auth::SERVICE_CREDENTIAL_HEADER,
                eventline_events::envelope::HeaderValue::Text(credential),
            )],
        }
    })
    .collect()
}

/// Exactly `expected` dead letters over all services (by message id: a poison message re-sent
/// after a lost confirm is still one), each with a reason.
pub async fn dead_letters(client: &Client, expected: usize) -> anyhow::Result<Option<String>> {
    let mut found = Vec::new();
    let mut ids = BTreeSet::new();
    for service in Service::ALL {
        for letter in client.dead_letters(service, 1000).await? {
            if ids.insert(letter.message_id.clone()) {
                found.push((service, letter));
            }
        }
    }
    let unexplained: Vec<_> = found
        .iter()
        .filter(|(_, l)| l.reason.is_empty() || l.code.is_empty())
        .collect();
    if found.len() != expected || !unexplained.is_empty() {
        let codes: Vec<String> = found
            .iter()
            .map(|(s, l)| {
                format!(
                    "{s}: {} ({})",
                    l.code,
                    l.message_type.as_deref().unwrap_or("?")
                )
            })
            .collect();
        return Ok(Some(format!(
            "dead letters: expected the {expected} poison messages, each with a reason; found {}: {}",
            found.len(),
            codes.join(", ")
        )));
    }
    Ok(None)
}

/// A durable queue bound to every event, declared before the load: what the relay published,
/// whatever the broker went through.
pub struct Audit {
    url: SecretUrl,
    queue: String,
}

impl Audit {
    pub async fn declare(url: &SecretUrl, topology: &Topology) -> anyhow::Result<Self> {
        let queue = topology.tap_queue("audit");
        let connection = broker::connect(url, "chaos audit").await?;
        let channel = connection.create_channel().await?;
        broker::declare_exchanges(&channel, topology).await?;
        broker::declare_event_tap(&channel, topology, &queue).await?;
        let _ = connection.close(200, "declared".into()).await;
        Ok(Self {
            url: url.clone(),
            queue,
        })
    }

    /// Waits for the relay's checkpoint to reach the log's end, then checks that every
    /// position in the log reached the queue (duplicates are allowed: the relay is
    /// at-least-once).
    pub async fn verify(
        &self,
        store: &EventStore,
        bound: Duration,
    ) -> anyhow::Result<Option<String>> {
        let deadline = Instant::now() + bound;
        let max: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM event_log")
            .fetch_one(store.pool())
            .await?;
        loop {
            let at = store
                .checkpoint(eventline_workers::runtime::relay::CHECKPOINT)
                .await?;
            if at >= max {
                break;
            }
            if Instant::now() > deadline {
                return Ok(Some(format!(
                    "relay checkpoint at {at}, the log ends at {max}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let positions: BTreeSet<i64> =
            sqlx::query_scalar("SELECT position FROM event_log ORDER BY position")
                .fetch_all(store.pool())
                .await?
                .into_iter()
                .collect();
        let connection = broker::connect(&self.url, "chaos audit").await?;
        let channel = connection.create_channel().await?;
        let mut seen = BTreeSet::new();
        while let Some(message) = channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
        {
            let delivery = message.delivery;
            if let Some(event) =
                EventMessage::from_incoming(broker::incoming(&delivery.properties, delivery.data))
            {
                seen.insert(event.position);
            }
        }
        let _ = channel
            .queue_delete(self.queue.as_str().into(), Default::default())
            .await;
        let _ = connection.close(200, "audited".into()).await;
        let missing: Vec<_> = positions.difference(&seen).take(5).collect();
        Ok((!missing.is_empty()).then(|| {
            format!(
                "{} logged events never relayed, e.g. positions {missing:?}",
                positions.difference(&seen).count()
            )
        }))
    }
}
