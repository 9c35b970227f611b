//! The log's readers (relay, projections) never wait on a transaction they do not own: a
//! transaction held open elsewhere on the server, or a slow payment, delays no committed event.

use std::time::{Duration, Instant};

use eventline::client::parse_order;
use eventline_events::auth::Role;
use eventline_events::{Metadata, Service};
use eventline_workers::runtime::SecretUrl;
use eventline_workers::runtime::relay::RelayProgress;
use eventline_workers::runtime::store::{self, Claim};
use sqlx::Connection;
use tokio::sync::watch;

use crate::relay::{open_append, position_of};
use crate::support::{PATIENCE, TestSystem, eventually};

/// How long after its commit a committed event may take to reach the events exchange. Not a
/// speed claim: the stalls this guards against lasted as long as the foreign transaction
/// (seconds); a reader that does not wait on it publishes within a few polls.
const MAX_LAG: Duration = Duration::from_secs(1);

/// How long the foreign transaction stays open: the figure, long past any poll
/// interval or timeout of the reader's.
const FOREIGN_HOLD: Duration = Duration::from_secs(30);

/// A transaction in another database of the same server, holding a transaction id — what an
/// operator's forgotten `psql` session or a `pg_dump` does. It holds back the server-wide
/// `xmin` for as long as it stays open.
struct ForeignTransaction {
    conn: sqlx::PgConnection,
    url: SecretUrl,
    xid: String,
}

impl ForeignTransaction {
    async fn open(system: &TestSystem) -> Self {
        let name = format!(
            "{}_elsewhere",
            system.config.database_url.database_name().unwrap()
        );
        let url = system.config.database_url.with_path(&name);
        store::create_database_if_missing(&url).await.unwrap();
        let mut conn = sqlx::PgConnection::connect(url.expose()).await.unwrap();
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        let xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let xmin: String =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                .fetch_one(system.store.pool())
                .await
                .unwrap();
        assert!(
            xmin.parse::<u64>().unwrap() <= xid.parse::<u64>().unwrap(),
            "the foreign transaction {xid} holds back our snapshots' xmin ({xmin})"
        );
        Self { conn, url, xid }
    }

    /// Whether the transaction is still open (and still holding its transaction id).
    async fn still_open(&self, system: &TestSystem) -> bool {
        system
            .count(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_xid::text = '{}'",
                self.xid
            ))
            .await
            == 1
    }

    async fn close(mut self) {
        sqlx::query("ROLLBACK")
            .execute(&mut self.conn)
            .await
            .unwrap();
        let _ = self.conn.close().await;
        store::drop_database(&self.url).await.unwrap();
    }
}

/// Waits until the relay has published `position`; returns how long after `committed` that was.
async fn published_after(
    progress: &mut watch::Receiver<RelayProgress>,
    position: i64,
    committed: Instant,
) -> Duration {
    let reached = tokio::time::timeout(
        PATIENCE,
        progress.wait_for(|p| p.published_through >= position),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let lag = committed.elapsed();
    match reached {
        true => lag,
        false => panic!(
            "position {position} was not published {lag:?} after its commit; the relay had \
             published through {}",
            progress.borrow().published_through
        ),
    }
}

#[tokio::test]
async fn a_transaction_open_in_another_database_delays_no_committed_event() {
    let mut system = TestSystem::start().await;
    let mut progress = system.start_relay();
    let foreign = ForeignTransaction::open(&system).await;
    // A position burnt in our log while the foreign transaction is open: a reader that skips
    // holes only once the server-wide xmin has passed them waits for the foreign transaction.
    let doomed = open_append(&system, "doomed").await;
    doomed.rollback().await.unwrap();

    // Appends one after another for as long as the operator leaves the session open
    // (30 s), burning another position every few seconds; each append waits for its publish,
    // so the loop is paced by the relay, not by sleeps.
    let mut lags = Vec::new();
    let held = Instant::now();
    let mut burnt = Instant::now();
    let mut i = 0;
    while held.elapsed() < FOREIGN_HOLD {
        if burnt.elapsed() >= Duration::from_secs(5) {
            let doomed = open_append(&system, &format!("doomed-{i}")).await;
            doomed.rollback().await.unwrap();
            burnt = Instant::now();
        }
        let stream = format!("after-{i}");
        let tx = open_append(&system, &stream).await;
        tx.commit(&serde_json::Value::Null, &serde_json::json!([]))
            .await
            .unwrap();
        let committed = Instant::now();
        let position = position_of(&system, &stream).await;
        lags.push(published_after(&mut progress, position, committed).await);
        i += 1;
    }
    assert!(
        foreign.still_open(&system).await,
        "the foreign transaction was held for the whole {FOREIGN_HOLD:?}"
    );
    foreign.close().await;
    lags.sort_unstable_by(|a, b| b.cmp(a));
    let worst = lags.first().copied().unwrap_or_default();
    eprintln!(
        "foreign transaction held {FOREIGN_HOLD:?}: {} events published, worst lag {worst:?}",
        lags.len()
    );
    assert!(
        worst <= MAX_LAG,
        "with a transaction open in another database, committed events reached the exchange \
         up to {worst:?} after their commit ({} events over {FOREIGN_HOLD:?}; the worst \
         ten lags: {:?})",
        lags.len(),
        &lags[..lags.len().min(10)]
    );
    system.stop().await;
}

#[tokio::test]
async fn a_slow_payment_delays_no_unrelated_order_event() {
    let mut system = TestSystem::start().await;
    for service in Service::ALL {
        system.start_service(service, &format!("{service}-1"));
    }
    system.start_relay();
    for service in Service::ALL {
        system.wait_for_consumers(service, 1).await;
    }
    system.add_product("tea", 100).await;
    let token = system.token(Role::Customer, Duration::from_secs(600));
    let shopper = system.client_with_token(Some(token.clone())).await;
    let slow_shopper = system.client_with_token(Some(token)).await;
    let slow = parse_order(&["tea:1".to_owned()], "tok_slow").unwrap();
    let slow_order = tokio::spawn(async move { slow_shopper.place_order(&slow, PATIENCE).await });
    system
        .wait_for_count(
            "the slow order's charge to reach the provider",
            "SELECT count(*) FROM event_log WHERE event_type = 'orders.payment_requested'",
            1,
        )
        .await;
    // And a burnt position while the slow charge is at the provider.
    let doomed = open_append(&system, "doomed").await;
    doomed.rollback().await.unwrap();

    let mut lags = Vec::new();
    for _ in 0..3 {
        let order = parse_order(&["tea:1".to_owned()], "tok_visa").unwrap();
        let order_id = order.order_id;
        // Committed = visible in the log; the outcome arrives through the events exchange.
        let sql = format!(
            "SELECT count(*) FROM event_log WHERE event_type = 'orders.order_confirmed' \
             AND data ->> 'order_id' = '{order_id}'"
        );
        let committed = async {
            eventually("the order's confirmation in the log", || async {
                match system.count(&sql).await {
                    1 => Ok(()),
                    n => Err(format!("{n} rows")),
                }
            })
            .await;
            Instant::now()
        };
        let (outcome, committed) = tokio::join!(shopper.place_order(&order, PATIENCE), committed);
        let outcome = outcome.expect("an outcome");
        assert_eq!(outcome.status, "confirmed", "{outcome}");
        lags.push(committed.elapsed());
    }
    let worst = lags.iter().max().copied().unwrap_or_default();
    assert!(
        worst <= MAX_LAG,
        "while a tok_slow payment was at the provider, unrelated orders' confirmations reached \
         the events exchange up to {worst:?} after their commit (lags: {lags:?})"
    );
    // Slower than the saga's timeout in the harness: cancelled (with its charge released).
    let slow = slow_order.await.unwrap().expect("the slow order's outcome");
    assert!(
        ["confirmed", "cancelled"].contains(&slow.status.as_str()),
        "{slow}"
    );
    system.stop().await;
}

#[tokio::test]
async fn a_transaction_left_open_by_a_worker_is_ended_by_the_database() {
    let system = TestSystem::start().await;
    let Claim::New(mut tx) = system
        .store
        .begin_command("test.idle", &Metadata::origin("test.idle"), "test")
        .await
        .unwrap()
    else {
        panic!("a fresh message id was a duplicate");
    };
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(tx.conn())
        .await
        .unwrap();
    // Nothing more is sent: the transaction idles, as one waiting on the outside world would.
    eventually("the database to end a transaction left idle", || async {
        let open = system
            .count(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
            ))
            .await;
        if open == 0 {
            Ok(())
        } else {
            Err(format!("backend {pid} still open"))
        }
    })
    .await;
    let error = tx
        .commit(&serde_json::Value::Null, &serde_json::json!([]))
        .await
        .expect_err("a transaction the database ended cannot commit");
    assert!(
        !error.to_string().is_empty(),
        "the commit failed with an error that says why"
    );
    let claimed = system
        .count("SELECT count(*) FROM processed_messages WHERE consumer = 'test.idle'")
        .await;
    assert_eq!(
        claimed, 0,
        "the idle transaction's inbox claim was rolled back"
    );
    system.stop().await;
}

#[tokio::test]
async fn a_raw_insert_outside_the_store_is_never_skipped_while_it_may_commit() {
    let mut system = TestSystem::start().await;
    let mut progress = system.start_relay();
    // A writer that knows nothing of the protocol: a plain INSERT as its transaction's first
    // statement, held open. The append lock is taken for it by the log's trigger.
    let mut raw = sqlx::PgConnection::connect(system.config.database_url.expose())
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut raw).await.unwrap();
    let raw_position: i64 = sqlx::query_scalar(
        "INSERT INTO event_log (stream_id, stream_version, event_id, event_type, schema_version, data, metadata) \
         VALUES ('raw', 1, gen_random_uuid(), 'test.raw', 1, '{}', \
                 jsonb_build_object('correlation_id', gen_random_uuid(), 'causation_id', gen_random_uuid(), 'recorded_by', 'raw')) \
         RETURNING position",
    )
    .fetch_one(&mut raw)
    .await
    .unwrap();
    let later = open_append(&system, "later").await;
    later
        .commit(&serde_json::Value::Null, &serde_json::json!([]))
        .await
        .unwrap();
    let later_position = position_of(&system, "later").await;
    assert!(raw_position < later_position);
    // Several complete polls of the relay while the raw row is uncommitted.
    let target = progress.borrow().polls + 5;
    let seen = *progress.wait_for(|p| p.polls >= target).await.unwrap();
    assert!(
        seen.published_through < raw_position,
        "the relay passed position {raw_position} while its writer could still commit \
         (published through {})",
        seen.published_through
    );
    sqlx::query("COMMIT").execute(&mut raw).await.unwrap();
    let reached = tokio::time::timeout(
        PATIENCE,
        progress.wait_for(|p| p.published_through >= later_position),
    )
    .await
    .is_ok();
    assert!(
        reached,
        "the relay never published past the raw row after it committed"
    );
    system.stop().await;
}
