//! The observability endpoint tells the truth: the metrics a workload leaves behind match
//! what it sent, readiness follows the broker link down and up again, and `eventline status`
//! reports the replicas, dead letters and lag it finds; one order is one trace across the
//! services, with each span's parent the span that handled its cause.
//!
//! Every system in this binary shares one process-global metrics recorder; each test reads
//! only the series labelled with its own namespace.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use eventline::chaos::proxy::Proxy;
use eventline::client::parse_order;
use eventline_events::auth::Role;
use eventline_events::catalog::{CatalogCommand, Restock};
use eventline_events::values::{OrderId, Quantity};
use eventline_events::{Metadata, OutgoingMessage, Reply, Service};
use eventline_workers::runtime::http;
use eventline_workers::runtime::{broker, metrics};
use lapin::BasicProperties;
use opentelemetry::trace::{SpanId, TraceContextExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::support::{PATIENCE, TestSystem, eventually, product, spans};

/// The sum of every sample of `name` whose labels include all of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

async fn scrape(address: SocketAddr) -> String {
    let (status, body) = http::get(address, "/metrics", Duration::from_secs(5))
        .await
        .expect("scrape /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

fn restock(quantity: u32) -> OutgoingMessage {
    OutgoingMessage::new(
        Metadata::origin("catalog.restock"),
        &CatalogCommand::from(Restock {
            product_id: product("tea"),
            quantity: Quantity::parse(quantity).unwrap(),
        }),
    )
}

fn properties(message_type: &str) -> BasicProperties {
    broker::properties(&OutgoingMessage {
        metadata: Metadata::origin(message_type),
        body: Vec::new(),
        extra_headers: Vec::new(),
    })
}

#[tokio::test]
async fn metrics_count_exactly_what_the_workload_sent() {
    let mut system = TestSystem::with_catalog(1).await;
    system.start_relay();
    let address = system.serve_observability(true).await;
    let ns = system.namespace.to_string();

    // 1 add_product and 3 reservations accepted, 1 reservation rejected (out of stock).
    assert!(system.add_product("tea", 3).await.is_accepted());
    for _ in 0..3 {
        assert!(system.reserve("tea", OrderId::new(), 1).await.is_accepted());
    }
    let refused = system.reserve("tea", OrderId::new(), 5).await;
    assert!(matches!(refused, Reply::Rejected { .. }), "{refused:?}");
    // 1 restock accepted, then the same message id again: a duplicate, no second effect.
    let message = restock(2);
    for _ in 0..2 {
        let reply = system.request(message.clone()).await;
        assert!(reply.is_accepted(), "{reply:?}");
    }
    // 3 poison: 2 undecodable restocks, 1 of a type the contract does not have.
    let poison: [(&[u8], &str); 3] = [
        (b"{not json", "catalog.restock"),
        (br#"{"product_id":"tea","quantity":-4}"#, "catalog.restock"),
        (
            br#"{"product_id":"tea","quantity":1}"#,
            "catalog.x-rocket-launch",
        ),
    ];
    for (body, message_type) in poison {
        system
            .client
            .publish_raw(Service::Catalog, body, properties(message_type))
            .await
            .unwrap();
    }

    let expected: &[(&str, &str, f64)] = &[
        ("catalog.add_product", "accepted", 1.0),
        ("catalog.reserve_stock", "accepted", 3.0),
        ("catalog.reserve_stock", "rejected", 1.0),
        ("catalog.restock", "accepted", 1.0),
        ("catalog.restock", "duplicate", 1.0),
        ("catalog.restock", "dead_lettered", 2.0),
        ("unknown", "dead_lettered", 1.0),
    ];
    let text = eventually("the poison to be counted as dead-lettered", || async {
        let text = scrape(address).await;
        let dead = value(
            &text,
            metrics::MESSAGES,
            &[("namespace", &ns), ("outcome", "dead_lettered")],
        );
        if dead >= 3.0 {
            Ok(text)
        } else {
            Err(format!("{dead} dead-lettered"))
        }
    })
    .await;
    for (message_type, outcome, count) in expected {
        let seen = value(
            &text,
            metrics::MESSAGES,
            &[
                ("namespace", &ns),
                ("service", "catalog"),
                ("type", message_type),
                ("outcome", outcome),
            ],
        );
        assert_eq!(seen, *count, "{message_type} {outcome}\n{text}");
    }
    let total: f64 = expected.iter().map(|(_, _, n)| n).sum();
    assert_eq!(
        value(&text, metrics::MESSAGES, &[("namespace", &ns)]),
        total,
        "no other outcome was recorded\n{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!("{}_count", metrics::HANDLING_SECONDS),
            &[("namespace", &ns), ("service", "catalog")]
        ),
        total,
        "one latency sample per settled message"
    );
    // The confirms are timed by the broker helpers, which report to the metrics once these are
    // installed (`eventline_amqp::broker::observe_confirms`); per process, so at least the
    // three dead letters published above.
    assert!(
        value(
            &text,
            &format!("{}_count", metrics::CONFIRM_SECONDS),
            &[("publisher", "message")]
        ) >= 3.0,
        "the dead letters' confirms were timed\n{text}"
    );
    // Every stage after the queue counts each delivery once (the settle stage is recorded
    // just after the batch's ack, so it may trail the counters above); the queue wait counts
    // those whose envelope, and so `x-occurred-at`, decoded.
    let stage = |text: &str, stage: &str| {
        value(
            text,
            &format!("{}_count", metrics::STAGE_SECONDS),
            &[("namespace", &ns), ("service", "catalog"), ("stage", stage)],
        )
    };
    let text = eventually("every settlement in the settle stage", || async {
        let text = scrape(address).await;
        let settled = stage(&text, "settle");
        if settled >= total {
            Ok(text)
        } else {
            Err(format!("{settled} of {total}"))
        }
    })
    .await;
    for after_receipt in ["batch_wait", "transaction", "settle"] {
        assert_eq!(
            stage(&text, after_receipt),
            total,
            "{after_receipt}\n{text}"
        );
    }
    let queued = stage(&text, "queue_wait");
    assert!((7.0..=total).contains(&queued), "{queued}\n{text}");
    // The dead letters the metric counts are the ones in the queue.
    let letters = system
        .client
        .dead_letters(Service::Catalog, 100)
        .await
        .unwrap();
    assert_eq!(letters.len(), 3, "{letters:?}");

    // The relay and the projection catch up, and the sampler sees them at zero; the inbox
    // gauge matches the table (8 distinct message ids were handled: poison has no row).
    let inbox = system
        .count("SELECT count(*) FROM processed_messages")
        .await;
    assert_eq!(inbox, 6, "add, 4 reserves, 1 restock");
    eventually(
        "the sampled lag to reach 0 and the inbox gauge its size",
        || async {
            let text = scrape(address).await;
            let relay = [("namespace", ns.as_str()), ("reader", "relay")];
            let projection = [
                ("namespace", ns.as_str()),
                ("reader", "projection.catalog_products"),
            ];
            let seen = (
                text.contains(&format!("{}{{", metrics::READER_LAG_EVENTS)),
                value(&text, metrics::READER_LAG_EVENTS, &relay),
                value(&text, metrics::READER_LAG_SECONDS, &relay),
                value(&text, metrics::READER_LAG_EVENTS, &projection),
                value(&text, metrics::INBOX_ROWS, &[("namespace", &ns)]),
            );
            if seen == (true, 0.0, 0.0, 0.0, inbox as f64) {
                Ok(())
            } else {
                Err(format!(
                    "(sampled, relay events, relay s, projection events, inbox) = {seen:?}"
                ))
            }
        },
    )
    .await;
    let text = scrape(address).await;
    assert!(
        value(&text, metrics::RELAY_PUBLISHED, &[("namespace", &ns)]) >= 5.0,
        "the relay published the 5 events (1 added, 3 reserved, 1 restocked)\n{text}"
    );
    system.stop().await;
}

async fn readiness(address: SocketAddr) -> Result<(u16, String), String> {
    http::get(address, "/readyz", Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn readiness_follows_the_broker_link_down_and_up() {
    let mut system = TestSystem::start().await;
    let (host, port) = system
        .config
        .amqp_url
        .host_port()
        .expect("a broker address");
    let upstream = tokio::net::lookup_host((host.as_str(), port.unwrap_or(5672)))
        .await
        .unwrap()
        .next()
        .expect("the broker's address resolves");
    let proxy = Proxy::start(upstream).await.unwrap();
    // The worker reaches the broker only through the proxy; the test's client does not.
    let direct = system.config.amqp_url.clone();
    system.config.amqp_url = direct.with_address(proxy.address());
    system.start_catalog_worker("catalog-proxied");
    system.config.amqp_url = direct;
    let address = system.serve_observability(false).await;
    let (status, body) = http::get(address, "/healthz", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "alive\n"));

    let wait_for = |want: u16, what: &'static str| async move {
        eventually(what, || async {
            let (status, body) = readiness(address).await?;
            // The worker's consumer must be in the report, whichever way it points.
            if status == want && body.contains("catalog.commands") {
                Ok(body)
            } else {
                Err(format!("{status}: {body}"))
            }
        })
        .await
    };
    let body = wait_for(200, "ready: consuming and the database answering").await;
    assert!(
        body.contains("catalog.commands") && body.contains("database"),
        "{body}"
    );

    proxy.cut();
    let body = wait_for(503, "not ready once the broker link is cut").await;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let consumer = report["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "catalog.commands")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(consumer["ready"], false, "{body}");
    assert!(
        !body.contains("guest:guest"),
        "no password in the readiness report: {body}"
    );

    proxy.restore();
    wait_for(200, "ready again once the link is back").await;
    // And it works again through the restored link.
    assert!(system.add_product("tea", 1).await.is_accepted());
    system.stop().await;
}

#[tokio::test]
async fn status_reports_replicas_dead_letters_and_what_is_unhealthy() {
    let mut system = TestSystem::with_catalog(2).await;
    system.start_relay();
    assert!(system.add_product("tea", 1).await.is_accepted());
    system
        .client
        .publish_raw(
            Service::Catalog,
            b"{not json",
            properties("catalog.restock"),
        )
        .await
        .unwrap();
    let status = eventually(
        "status to see the dead letter and the relay caught up",
        || async {
            let status = eventline::status::collect(&system.config, Duration::from_secs(30)).await;
            let catalog = status
                .services
                .iter()
                .find(|s| s.service == Service::Catalog)
                .ok_or("no catalog row")?;
            let dead = catalog.dead_letters.as_ref().map_or(0, |q| q.messages);
            let relay = status
                .database
                .as_ref()
                .and_then(|d| d.readers.iter().find(|r| r.reader == "relay"))
                .map(|r| r.events);
            if dead == 1 && relay == Some(0) {
                Ok(status)
            } else {
                Err(format!("dead letters {dead}, relay behind {relay:?}"))
            }
        },
    )
    .await;
    let catalog = status
        .services
        .iter()
        .find(|s| s.service == Service::Catalog)
        .unwrap();
    assert_eq!(catalog.replicas, 2, "{status:#?}");
    // Only the catalog runs here: the other three services have no replica, so unhealthy.
    for service in ["auth", "orders", "payments"] {
        assert!(
            status
                .problems
                .contains(&format!("{service} has no live replica")),
            "{:?}",
            status.problems
        );
    }
    assert_eq!(status.problems.len(), 3, "{:?}", status.problems);
    assert!(
        status.warnings.iter().any(|w| w.contains("1 dead letters")),
        "{:?}",
        status.warnings
    );
    let screen = eventline::status::render(&status);
    assert!(
        screen.contains("UNHEALTHY: auth has no live replica"),
        "{screen}"
    );
    let minute = status.last_minute.as_ref().unwrap();
    assert!(
        minute.events.contains(&("catalog".to_owned(), 1)),
        "{minute:?}"
    );
    system.stop().await;
}

/// One order is one trace: every span that carries the order's correlation id (each message
/// a worker handled, each event the relay published) has the trace id of the span the client
/// placed it in, and each one's parent is the span that handled its cause: the client's span
/// for the order itself, else the span whose message id is its causation id.
#[tokio::test]
async fn every_span_of_one_order_shares_its_trace_and_each_parent_is_its_cause() {
    let system = TestSystem::with_all_services(1).await;
    system.add_product("tea", 10).await;
    let shopper = system
        .client_with_token(Some(system.token(Role::Customer, Duration::from_secs(600))))
        .await;
    let order = parse_order(&["tea:2".to_owned()], "tok_visa").unwrap();
    let correlation = order.order_id.to_string();
    spans::watch(&correlation);

    let placed_in = tracing::info_span!("test order");
    let client_span = placed_in.context().span().span_context().clone();
    let outcome = shopper
        .place_order(&order, PATIENCE)
        .instrument(placed_in.clone())
        .await
        .expect("an outcome");
    assert_eq!(outcome.status, "confirmed", "{outcome}");
    system.wait_until_settled().await;

    // Handled by orders, catalog and payments, and events published by the relay, up to the
    // confirmation (the order's timer may still be waiting: it is not required).
    let spans = eventually(
        "the order's spans in every service and the relay",
        || async {
            let spans = spans::finished(&correlation);
            let seen: BTreeSet<String> = spans
                .iter()
                .map(|s| {
                    let name = s.name.to_string();
                    let service = spans::attribute(s, "service").unwrap_or_default();
                    let kind = spans::attribute(s, "message_type").unwrap_or_default();
                    format!("{name}:{service}:{kind}")
                })
                .collect();
            let wanted = [
                "message:orders:orders.place_order",
                "message:catalog:catalog.reserve_stock",
                "message:payments:payments.charge_payment",
                "message:catalog:catalog.commit_reservation",
                "relay::orders.order_confirmed",
            ];
            if wanted.iter().all(|w| seen.contains(*w)) {
                Ok(spans)
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;

    let mut handled_by: HashMap<String, Vec<SpanId>> = HashMap::new();
    for span in &spans {
        assert_eq!(
            span.span_context.trace_id(),
            client_span.trace_id(),
            "span {} ({:?}) is in another trace",
            span.name,
            spans::attribute(span, "message_type")
        );
        if let Some(id) = spans::attribute(span, "message_id") {
            handled_by
                .entry(id)
                .or_default()
                .push(span.span_context.span_id());
        }
    }
    for span in &spans {
        let id = spans::attribute(span, "message_id").unwrap_or_default();
        let causation = spans::attribute(span, "causation_id").unwrap_or_default();
        let what = format!(
            "{} {:?} (message {id}, caused by {causation})",
            span.name,
            spans::attribute(span, "message_type")
        );
        if id == causation {
            assert_eq!(span.parent_span_id, client_span.span_id(), "{what}");
        } else {
            let parents = handled_by
                .get(&causation)
                .unwrap_or_else(|| panic!("no span handled the cause of {what}"));
            assert!(
                parents.contains(&span.parent_span_id),
                "{what}: its parent {} is not a span of its cause {parents:?}",
                span.parent_span_id
            );
        }
    }
    system.stop().await;
}
