//! Replies by direct reply-to: the client gets them with no reply queue, a forged `reply_to`
//! never costs a worker its broker connection, and a client that left before its reply gets
//! the stored one by re-sending the same id.
//!
//! RabbitMQ 3.10 closes a publisher's whole connection (541 INTERNAL_ERROR) when it publishes
//! to a direct reply-to name it cannot decode, so these tests send exactly such names, from a
//! client that may set any `reply_to` it likes, and count the worker's reconnects.

use std::time::Duration;

use eventline_events::auth::Role;
use eventline_events::catalog::{CatalogCommand, Restock};
use eventline_events::reply_to::DIRECT_REPLY_TO;
use eventline_events::values::Quantity;
use eventline_events::{Metadata, OutgoingMessage, Reply, Service};
use eventline_workers::runtime::{http, metrics};

use crate::support::{TestSystem, eventually, product};

fn restock(quantity: u32, reply_to: &str) -> OutgoingMessage {
    let mut message = OutgoingMessage::new(
        Metadata::origin("catalog.restock"),
        &CatalogCommand::from(Restock {
            product_id: product("tea"),
            quantity: Quantity::parse(quantity).unwrap(),
        }),
    );
    message.metadata.reply_to = Some(reply_to.to_owned());
    message
}

/// The sum of this namespace's samples of `metric` whose labels include `label`, from the
/// metrics endpoint.
async fn counted(address: std::net::SocketAddr, namespace: &str, metric: &str, label: &str) -> f64 {
    let (status, body) = http::get(address, "/metrics", Duration::from_secs(5))
        .await
        .expect("scrape /metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| l.contains(&format!("namespace=\"{namespace}\"")))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Each of the malformed names closed the publisher's connection when tried by hand on
/// RabbitMQ 3.10.8; the last is well formed but names a node tag the broker does not know,
/// which does the same.
/// (What follows `amq.rabbitmq.reply-to` in each.)
const MALFORMED: &[&str] = &[
    ".garbage",
    ".g1h2.x",
    ".!!!.x",
    ".g1hkABNyYWJiaXRAbG9jYWxob3N0AAAAAAAAAAAAAAAA.xxxx",
];
const UNKNOWN_NODE: &str = ".g1h2AA1yZXBseUAxMjM0NTY3AAAAAQAAAAAAAAAF.abc";

fn direct(rest: &str) -> String {
    format!("{DIRECT_REPLY_TO}{rest}")
}

#[tokio::test]
async fn a_forged_direct_reply_to_never_costs_the_worker_its_connection() {
    let system = TestSystem::with_catalog(1).await;
    let address = system.serve_observability(false).await;
    let ns = system.namespace.to_string();
    // The client's own replies come by direct reply-to.
    assert!(system.add_product("tea", 0).await.is_accepted());

    for name in MALFORMED {
        system
            .client
            .publish(&restock(1, &direct(name)))
            .await
            .unwrap();
    }
    // Well formed: the worker handles it, and its first reply to that node goes out on a
    // probe connection of its own, which the broker closes. Sent twice: the second is refused
    // from memory, with no probe.
    for _ in 0..2 {
        system
            .client
            .publish(&restock(10, &direct(UNKNOWN_NODE)))
            .await
            .unwrap();
    }
    // A command sent after them all is answered: the worker still consumes and replies.
    let after = system.request(restock(100, DIRECT_REPLY_TO)).await;
    assert!(after.is_accepted(), "{after:?}");

    let letters = system
        .wait_for_dead_letters(
            "the malformed reply_to names",
            Service::Catalog,
            MALFORMED.len(),
        )
        .await;
    for letter in &letters {
        assert_eq!(letter.code, "invalid_reply_to", "{letter:?}");
    }
    // The two well-formed ones were applied (a bad reply address is not a bad command).
    eventually("both well-formed restocks applied", || async {
        match system.stock("tea").await {
            (120, _, _) => Ok(()),
            other => Err(format!("stock {other:?}")),
        }
    })
    .await;
    assert_eq!(
        counted(address, &ns, metrics::RECONNECTS, "component=\"worker\"").await,
        0.0,
        "a forged reply_to closed the worker's broker connection"
    );
    // One probe for the unknown tag (the second reply to it was refused from memory), and one
    // for the client's real node: every later reply to it took the worker's own publisher.
    for (verdict, n) in [("bad", 1.0), ("good", 1.0)] {
        assert_eq!(
            counted(
                address,
                &ns,
                metrics::REPLY_PROBES,
                &format!("verdict=\"{verdict}\"")
            )
            .await,
            n,
            "{verdict} probes"
        );
    }
    system.stop().await;
}

#[tokio::test]
async fn a_client_gone_before_its_reply_gets_the_stored_one_by_resending_the_id() {
    let system = TestSystem::with_catalog(1).await;
    assert!(system.add_product("tea", 0).await.is_accepted());
    let message = restock(5, DIRECT_REPLY_TO);

    // The first client publishes and leaves at once: its reply, whenever it comes, finds no
    // channel and is dropped by the broker.
    let gone = system
        .client_with_token(Some(system.token(Role::Admin, Duration::from_secs(60))))
        .await;
    gone.publish(&message).await.unwrap();
    gone.close().await;

    // Another connection re-sends the same message id and gets the outcome.
    let reply = system.request(message.clone()).await;
    let Reply::Accepted { events, .. } = &reply else {
        panic!("{reply:?}");
    };
    eventually("the restock applied", || async {
        match system.stock("tea").await {
            (5, _, _) => Ok(()),
            other => Err(format!("stock {other:?}")),
        }
    })
    .await;
    // Applied once: the second delivery was a duplicate answered from the inbox with the
    // first one's events.
    assert_eq!(events.len(), 1, "{reply:?}");
    assert_eq!(
        system.stream_versions("catalog.product-tea").await,
        vec![1, 2],
        "the restock was applied more than once"
    );
    let again = system.request(message).await;
    assert_eq!(again, reply, "a re-send gets the stored reply");
    system.stop().await;
}
