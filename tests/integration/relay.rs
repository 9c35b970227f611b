//! The relay publishes committed events in log order and never skips one, even when
//! transactions commit out of position order or roll back.

use eventline_events::values::StreamId;
use eventline_events::{EventId, Metadata};
use eventline_workers::runtime::relay::RelayProgress;
use eventline_workers::runtime::store::{Claim, CommandTx, EventMetadata, NewEvent};
use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio::sync::watch;

use crate::support::{PATIENCE, TestSystem};

/// Opens a transaction that appends one event to `stream` and does not commit it yet.
pub(crate) async fn open_append(system: &TestSystem, stream: &str) -> CommandTx {
    let Claim::New(mut tx) = system
        .store
        .begin_command("test.appender", &Metadata::origin("test.append"), "test")
        .await
        .unwrap()
    else {
        panic!("a fresh message id was a duplicate");
    };
    let metadata = EventMetadata {
        correlation_id: eventline_events::CorrelationId::new(),
        causation_id: eventline_events::CausationId::new(),
        recorded_by: "test".into(),
        trace: None,
    };
    let event = NewEvent {
        event_id: EventId::new(),
        event_type: "test.appended",
        data: serde_json::json!({ "stream": stream }),
    };
    tx.append(
        &StreamId::from_log(stream.to_owned()),
        0,
        &[event],
        &metadata,
    )
    .await
    .unwrap();
    tx
}

pub(crate) async fn position_of(system: &TestSystem, stream: &str) -> i64 {
    system
        .count(&format!(
            "SELECT position FROM event_log WHERE stream_id = '{stream}'"
        ))
        .await
}

/// Waits until the relay has read the log `n` more times, so "it has not published X" is a
/// statement about several complete polls, not about timing.
async fn wait_polls(progress: &mut watch::Receiver<RelayProgress>, n: u64) -> RelayProgress {
    let target = progress.borrow().polls + n;
    let seen = progress
        .wait_for(|p| p.polls >= target)
        .await
        .expect("relay running");
    *seen
}

#[tokio::test]
async fn the_relay_waits_for_an_earlier_transaction_that_commits_late() {
    let mut system = TestSystem::start().await;
    let mut progress = system.start_relay();
    let mut events = Box::pin(system.client.subscribe("test.#").await.unwrap());

    let early = open_append(&system, "early").await; // draws the lower position, commits last
    let late = open_append(&system, "late").await;
    late.commit(&serde_json::Value::Null, &serde_json::json!([]))
        .await
        .unwrap();
    let late_position = position_of(&system, "late").await;

    let seen = wait_polls(&mut progress, 3).await;
    assert!(
        seen.published_through < late_position,
        "the relay published position {late_position} while an earlier position was uncommitted"
    );

    early
        .commit(&serde_json::Value::Null, &serde_json::json!([]))
        .await
        .unwrap();
    let early_position = position_of(&system, "early").await;
    assert!(early_position < late_position);
    let first = tokio::time::timeout(PATIENCE, events.next())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(PATIENCE, events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.stream_id.as_str(), second.stream_id.as_str()),
        ("early", "late")
    );
    assert_eq!(
        (first.position, second.position),
        (early_position, late_position)
    );
    system.stop().await;
}

#[tokio::test]
async fn the_relay_skips_a_rolled_back_position_and_carries_on() {
    let mut system = TestSystem::start().await;
    let mut progress = system.start_relay();
    let rolled_back = open_append(&system, "doomed").await;
    let kept = open_append(&system, "kept").await;
    kept.commit(&serde_json::Value::Null, &serde_json::json!([]))
        .await
        .unwrap();
    let kept_position = position_of(&system, "kept").await;
    rolled_back.rollback().await.unwrap(); // its position is now a permanent hole
    let reached = progress
        .wait_for(|p| p.published_through >= kept_position)
        .await
        .unwrap()
        .published_through;
    assert_eq!(reached, kept_position);
    system.stop().await;
}

#[tokio::test]
async fn under_concurrent_appends_the_relay_publishes_every_event_once_in_log_order() {
    let mut system = TestSystem::with_catalog(2).await;
    system.start_relay();
    let mut events = Box::pin(system.client.subscribe("catalog.#").await.unwrap());

    // 8 products × 25 reservations from many concurrent requests: version conflicts roll
    // transactions back (holes) and commits land out of position order.
    for p in 0..8 {
        system.add_product(&format!("p{p}"), 1000).await;
    }
    let requests = (0..200).map(|i| {
        let system = &system;
        async move {
            system
                .reserve(
                    &format!("p{}", i % 8),
                    eventline_events::values::OrderId::new(),
                    1,
                )
                .await
        }
    });
    let replies = join_all(requests).await;
    assert!(replies.iter().all(|r| r.is_accepted()));

    let total = system.count("SELECT count(*) FROM event_log").await;
    assert_eq!(total, 208);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut positions = Vec::new();
    while positions.len() < total as usize {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(event)) => positions.push(event.position),
            _ => panic!(
                "the relay published {} of {total} events within {PATIENCE:?}",
                positions.len()
            ),
        }
    }
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order: {positions:?}"
    );
    let in_log: Vec<i64> = sqlx::query_scalar("SELECT position FROM event_log ORDER BY position")
        .fetch_all(system.store.pool())
        .await
        .unwrap();
    assert_eq!(positions, in_log, "the relay skipped or invented an event");
    system.stop().await;
}
