//! Presence: a running replica announces itself about once a second on the namespace's
//! presence exchange with what it has handled, and nothing secret; a listener that stops
//! hearing it counts it gone (the dashboard's roster, `src/dashboard/roster.rs`).

use std::time::Instant;

use eventline_events::Service;
use eventline_workers::runtime::broker;
use eventline_workers::runtime::presence::Heartbeat;
use futures_util::StreamExt;

use crate::support::{PATIENCE, TestSystem};

#[tokio::test]
async fn a_replica_announces_what_it_handled_and_nothing_secret() {
    let system = TestSystem::with_catalog(1).await;
    let connection = broker::connect(&system.config.amqp_url, "presence probe")
        .await
        .unwrap();
    let mut queue = broker::open_private_queue(&connection, "presence-probe")
        .await
        .unwrap();
    broker::bind_to_presence(&queue.channel, &system.topology, &queue.name)
        .await
        .unwrap();
    assert!(system.add_product("tea", 5).await.is_accepted());

    let deadline = Instant::now() + PATIENCE;
    let (heartbeat, raw) = loop {
        let delivery = tokio::time::timeout_at(deadline.into(), queue.consumer.next())
            .await
            .expect("a heartbeat of catalog-1 with the accepted command, within PATIENCE")
            .expect("the consumer is open")
            .expect("a delivery");
        let raw = String::from_utf8(delivery.data.clone()).unwrap();
        let heartbeat: Heartbeat = serde_json::from_str(&raw).unwrap();
        if heartbeat.replica == "catalog-1" && heartbeat.handled["accepted"] >= 1 {
            break (heartbeat, raw);
        }
    };
    assert_eq!(heartbeat.service, Service::Catalog.name());
    assert_eq!(heartbeat.pid, std::process::id(), "an in-process replica");
    assert!(heartbeat.sequence >= 1);
    // Counts and names only: no URL (with its password) and no key.
    let key = eventline_workers::runtime::token::encode_key(
        &system.signing_key(Service::Catalog).to_bytes(),
    );
    for secret in [
        system.config.amqp_url.expose(),
        system.config.database_url.expose(),
        key.as_str(),
    ] {
        assert!(!raw.contains(secret), "a heartbeat carries a secret: {raw}");
    }
    let _ = connection.close(200, "probe".into()).await;
    system.stop().await;
}

/// The heartbeat's connection holds small buffers (lapin sizes them by the negotiated frame),
/// and a consumer's connection still takes the server's largest frame, so no client's large
/// header can close it.
#[tokio::test]
async fn a_publisher_connection_asks_for_small_frames_and_a_consumer_for_the_servers() {
    let url = &crate::support::services().await.amqp_url;
    let publisher = broker::connect_publisher(url, "frame probe publisher")
        .await
        .unwrap();
    assert_eq!(
        publisher.configuration().frame_max(),
        broker::PUBLISHER_FRAME_MAX
    );
    let consumer = broker::connect(url, "frame probe consumer").await.unwrap();
    assert!(
        consumer.configuration().frame_max() > broker::PUBLISHER_FRAME_MAX,
        "a consumer's connection negotiated {} bytes",
        consumer.configuration().frame_max()
    );
    let _ = publisher.close(200, "probe".into()).await;
    let _ = consumer.close(200, "probe".into()).await;
}
