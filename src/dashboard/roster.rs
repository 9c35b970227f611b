//! Who is alive, from the presence heartbeats (`eventline_workers::runtime::presence`): the
//! dashboard's list of replicas, each with its message rate, in flight and last error.
//!
//! A replica is live while its heartbeats keep coming, and gone once they have stopped for
//! [`GONE_AFTER`] — a SIGKILLed worker leaves the picture within about three seconds, with no
//! one having to tell. Rates are computed here from the counters' growth, so a heartbeat
//! carries totals only. It must never decide anything about the system: it only listens.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventline_events::Topology;
use eventline_workers::runtime::presence::{GONE_AFTER, Heartbeat};
use eventline_workers::runtime::{Config, Shutdown, backoff, broker};
use futures_util::StreamExt;
use serde::Serialize;

/// How far back a rate looks: long enough to smooth a bursty second, short enough that a
/// replica that stops handling shows 0 soon.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// One live replica, as the page draws it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Replica {
    pub service: String,
    pub replica: String,
    pub pid: u32,
    /// Messages settled per second (for the relay: log positions published per second).
    pub rate: f64,
    /// Every message settled since the replica started (for the relay: its position).
    pub total: u64,
    pub handled: BTreeMap<String, u64>,
    pub in_flight: u64,
    pub last_error: Option<String>,
    /// Seconds since its last heartbeat.
    pub silent_for: f64,
}

struct Seen {
    last: Heartbeat,
    at: Instant,
    /// (when, total) of recent heartbeats, oldest first.
    history: VecDeque<(Instant, u64)>,
}

/// The replicas heard from, keyed by (service, replica).
#[derive(Default)]
pub struct Roster {
    seen: BTreeMap<(String, String), Seen>,
}

fn total(heartbeat: &Heartbeat) -> u64 {
    heartbeat.handled.values().sum()
}

impl Roster {
    /// Takes one heartbeat in. A replica that restarted (its sequence starts over) starts a
    /// new history, so its rate never goes negative.
    pub fn record(&mut self, heartbeat: Heartbeat, now: Instant) {
        let key = (heartbeat.service.clone(), heartbeat.replica.clone());
        let total = total(&heartbeat);
        let seen = self.seen.entry(key).or_insert_with(|| Seen {
            last: heartbeat.clone(),
            at: now,
            history: VecDeque::new(),
        });
        if heartbeat.sequence < seen.last.sequence || heartbeat.pid != seen.last.pid {
            seen.history.clear();
        }
        seen.history.push_back((now, total));
        while seen
            .history
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            seen.history.pop_front();
        }
        seen.last = heartbeat;
        seen.at = now;
    }

    /// The live replicas, by service and name; forgets those silent for [`GONE_AFTER`].
    pub fn live(&mut self, now: Instant) -> Vec<Replica> {
        self.seen
            .retain(|_, seen| now.duration_since(seen.at) < GONE_AFTER);
        self.seen
            .values()
            .map(|seen| {
                let rate = match (seen.history.front(), seen.history.back()) {
                    (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                        n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64()
                    }
                    _ => 0.0,
                };
                Replica {
                    service: seen.last.service.clone(),
                    replica: seen.last.replica.clone(),
                    pid: seen.last.pid,
                    rate,
                    total: total(&seen.last),
                    handled: seen.last.handled.clone(),
                    in_flight: seen.last.in_flight,
                    last_error: seen.last.last_error.clone(),
                    silent_for: now.duration_since(seen.at).as_secs_f64(),
                }
            })
            .collect()
    }
}

/// Listens to the namespace's presence exchange until `shutdown`, recording every heartbeat
/// in `roster`; reconnects with backoff when the broker goes away. Its queue is private
/// (exclusive, auto-deleted, no acks): heartbeats are worth nothing later.
pub async fn listen(config: Config, roster: Arc<Mutex<Roster>>, shutdown: Shutdown) {
    let topology = Topology::new(config.namespace.clone());
    backoff::reconnect(shutdown.token(), "dashboard presence", || {
        let (config, topology, roster, shutdown) = (&config, &topology, &roster, &shutdown);
        async move {
            let connection = broker::connect(&config.amqp_url, "dashboard presence").await?;
            let channel = connection.create_channel().await?;
            broker::declare_exchanges(&channel, topology).await?;
            let mut queue = broker::open_private_queue(&connection, "dashboard").await?;
            broker::bind_to_presence(&queue.channel, topology, &queue.name).await?;
            loop {
                tokio::select! {
                    () = shutdown.triggered() => {
                        let _ = connection.close(200, "dashboard stopping".into()).await;
                        return Ok(());
                    }
                    next = queue.consumer.next() => match next {
                        Some(Ok(delivery)) => {
                            // A heartbeat that does not parse (another version's) is skipped.
                            if let Ok(heartbeat) = serde_json::from_slice::<Heartbeat>(&delivery.data) {
                                roster
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .record(heartbeat, Instant::now());
                            }
                        }
                        Some(Err(error)) => return Err(broker::BrokerError::Amqp(error)),
                        None => return Err(broker::BrokerError::ConsumerCancelled(queue.name.clone())),
                    },
                }
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(replica: &str, sequence: u64, accepted: u64) -> Heartbeat {
        Heartbeat {
            service: "catalog".into(),
            replica: replica.into(),
            pid: 7,
            sequence,
            handled: [("accepted".to_owned(), accepted)].into_iter().collect(),
            in_flight: 0,
            last_error: None,
        }
    }

    #[test]
    fn a_replica_has_a_rate_and_is_gone_after_three_silent_seconds() {
        let mut roster = Roster::default();
        let t0 = Instant::now();
        roster.record(beat("catalog-1", 1, 0), t0);
        roster.record(beat("catalog-1", 2, 20), t0 + Duration::from_secs(1));
        roster.record(beat("catalog-2", 1, 5), t0 + Duration::from_secs(1));
        let live = roster.live(t0 + Duration::from_secs(1));
        assert_eq!(live.len(), 2);
        assert_eq!(live[0].replica, "catalog-1");
        assert!((live[0].rate - 20.0).abs() < 1e-9, "{live:?}");
        assert_eq!(live[1].rate, 0.0);
        roster.record(beat("catalog-2", 2, 6), t0 + Duration::from_secs(3));
        let live = roster.live(t0 + Duration::from_millis(4100));
        assert_eq!(
            live.iter().map(|r| r.replica.as_str()).collect::<Vec<_>>(),
            ["catalog-2"],
            "catalog-1 fell silent 3.1 s ago"
        );
    }

    #[test]
    fn a_restarted_replica_never_has_a_negative_rate() {
        let mut roster = Roster::default();
        let t0 = Instant::now();
        roster.record(beat("catalog-1", 5, 100), t0);
        roster.record(beat("catalog-1", 1, 2), t0 + Duration::from_secs(1));
        let live = roster.live(t0 + Duration::from_secs(1));
        assert_eq!(live[0].rate, 0.0);
        assert_eq!(live[0].total, 2);
    }
}
