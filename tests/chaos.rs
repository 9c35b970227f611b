//! The chaos suite in its short form: every `eventline chaos` scenario, with fewer orders and
//! faults, and the same checks. A test fails if any accepted command was lost or applied twice,
//! if any invariant broke, or if the fault visibly did not happen.
//!
//! Scenarios that act only on their own processes, proxies and database run in parallel; the
//! ones that stop, restart or alarm the whole broker or database server take a write lock and
//! run alone. Cargo runs this test binary after the others, never beside them.
//!
//! Needs the local services and root (for `rabbitmqctl`, `pg_ctlcluster`), as CI has.
//! `TEST_AMQP_URL` / `TEST_DATABASE_URL` point it elsewhere; `CHAOS_RABBITMQ_NODE` and
//! `CHAOS_PG_CLUSTER` (`15/main`) choose which broker node and cluster the server-wide faults
//! hit.

use std::path::Path;

use eventline::chaos::{self, ChaosOptions, Row, Scenario, checks};
use eventline_workers::runtime::store::{self, EventStore};
use eventline_workers::runtime::{Config, SecretUrl};
use tokio::sync::RwLock;

static SERVERS: RwLock<()> = RwLock::const_new(());

fn config() -> Config {
    let mut config = Config::local();
    if let Ok(url) = std::env::var("TEST_AMQP_URL") {
        config.amqp_url = SecretUrl::new(url);
    }
    if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
        config.database_url = SecretUrl::new(url);
    }
    config
}

async fn run(scenario: Scenario) -> Row {
    let _shared;
    let _exclusive;
    if scenario.is_server_wide() {
        _exclusive = SERVERS.write().await;
    } else {
        _shared = SERVERS.read().await;
    }
    let mut options = ChaosOptions::quick(scenario);
    options.rabbitmq_node = std::env::var("CHAOS_RABBITMQ_NODE").ok();
    options.pg_cluster = std::env::var("CHAOS_PG_CLUSTER").ok();
    let row = chaos::run_scenario(
        &config(),
        scenario,
        &options,
        Path::new(env!("CARGO_BIN_EXE_eventline")),
    )
    .await
    .unwrap_or_else(|error| panic!("{} could not run: {error:#}", scenario.name()));
    let table = chaos::render(std::slice::from_ref(&row));
    assert_eq!(row.faults_injected, options.faults, "{table}");
    assert!(row.accepted >= options.orders, "{table}");
    assert_eq!(row.lost, 0, "{table}");
    assert_eq!(row.duplicated, 0, "{table}");
    assert!(row.checks.failures().is_empty(), "{table}");
    row
}

/// The fault must have been felt: the workers had to open new connections.
fn assert_reconnected(row: &Row) {
    assert!(
        row.reconnections > 0,
        "{}: no worker reconnected, so the fault never reached them",
        row.scenario
    );
}

#[tokio::test]
async fn killed_workers_and_relay_lose_nothing() {
    let row = run(Scenario::KillWorkers).await;
    for service in ["auth", "catalog", "orders", "payments", "relay"] {
        assert!(
            row.evidence.contains(&format!("killed {service}")),
            "{}",
            row.evidence
        );
    }
}

#[tokio::test]
async fn terminated_database_connections_lose_nothing() {
    assert_reconnected(&run(Scenario::DbTerminate).await);
}

#[tokio::test]
async fn a_slow_network_loses_nothing() {
    run(Scenario::NetLatency).await;
}

#[tokio::test]
async fn stalled_links_lose_nothing() {
    run(Scenario::NetStall).await;
}

#[tokio::test]
async fn dropped_connections_lose_nothing() {
    assert_reconnected(&run(Scenario::NetDrop).await);
}

#[tokio::test]
async fn a_transaction_open_in_another_database_delays_no_event() {
    let row = run(Scenario::LongTransaction).await;
    // A reader that waited on the foreign transaction would lag at least as long as it is held.
    let hold =
        std::time::Duration::from_millis(ChaosOptions::quick(Scenario::LongTransaction).hold_ms);
    assert!(
        row.relay_worst_lag < hold,
        "the relay lagged {:?} while a transaction was open elsewhere for {hold:?}\n{}",
        row.relay_worst_lag,
        chaos::render(std::slice::from_ref(&row))
    );
}

#[tokio::test]
async fn duplicate_and_early_deliveries_apply_once() {
    run(Scenario::Duplicates).await;
}

#[tokio::test]
async fn the_broker_closing_every_connection_loses_nothing() {
    assert_reconnected(&run(Scenario::BrokerConnections).await);
}

#[tokio::test]
async fn a_broker_restart_loses_nothing() {
    assert_reconnected(&run(Scenario::BrokerRestart).await);
}

#[tokio::test]
async fn a_broker_memory_alarm_loses_nothing() {
    run(Scenario::BrokerAlarm).await;
}

#[tokio::test]
async fn a_database_restart_loses_nothing() {
    assert_reconnected(&run(Scenario::DbRestart).await);
}

/// The checks are not vacuous: a log with a lost order, a duplicated effect and a version gap
/// fails them.
#[tokio::test]
async fn the_checks_catch_a_lost_order_a_duplicate_and_a_gap() {
    let _shared = SERVERS.read().await;
    let base = config();
    let url = base.database_url.with_path(&format!(
        "eventline_test_checks_{}",
        uuid::Uuid::now_v7().simple()
    ));
    store::create_database_if_missing(&url).await.unwrap();
    let store = EventStore::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let placed = uuid::Uuid::now_v7();
    let lost = uuid::Uuid::now_v7();
    for (stream, version, causation) in [
        ("orders.order-a", 1, uuid::Uuid::now_v7()),
        // The same order placed again on another stream, and a version skipped.
        ("orders.order-b", 2, uuid::Uuid::now_v7()),
    ] {
        sqlx::query(
            "INSERT INTO event_log (stream_id, stream_version, event_id, event_type, \
             schema_version, data, metadata) VALUES ($1, $2, $3, 'orders.order_placed', 1, $4, $5)",
        )
        .bind(stream)
        .bind(version as i64)
        .bind(uuid::Uuid::now_v7())
        .bind(serde_json::json!({ "order_id": placed }))
        .bind(serde_json::json!({ "causation_id": causation, "correlation_id": placed, "recorded_by": "test" }))
        .execute(store.pool())
        .await
        .unwrap();
    }
    let found = checks::run(&store, &[placed, lost], &[], 0).await.unwrap();
    store.pool().close().await;
    store::drop_database(&url).await.unwrap();
    assert_eq!(found.lost, 1, "{found:?}");
    assert_eq!(found.duplicated, 1, "{found:?}");
    assert_eq!(found.gapped_streams, 1, "{found:?}");
    assert_eq!(found.failures().len(), 3, "{:?}", found.failures());
}
