//! The relay: publishes committed events from the log to the events exchange, in log order,
//! with publisher confirms and a durable checkpoint.
//!
//! This is the outbox pattern without an outbox table: the log *is* the outbox, so there is
//! no dual write — a command's events are committed once, and the relay delivers them at least
//! once (a crash between publish and checkpoint re-publishes; consumers dedupe by event id,
//! which is the AMQP `message_id`). Order and completeness come from [`LogReader`].
//!
//! Several relays may run; a PostgreSQL advisory lock makes one the leader and the others
//! wait, so order holds across the fleet and a dead leader's lock is freed with its session.

use std::pin::Pin;
use std::time::Duration;

use eventline_events::envelope::{HeaderValue, headers};
use eventline_events::{MessageId, Metadata, OutgoingMessage, SCHEMA_VERSION, Topology};
use futures_util::future::maybe_done;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use sqlx::Connection;
use tokio::sync::watch;
use tracing::{debug, info, info_span};

use super::backoff;
use super::broker::{self, BrokerError};
use super::config::Config;
use super::log_reader::{HOLE_POLL_INTERVAL, LogReader};
use super::metrics::{self, Peer, Publisher};
use super::propagation;
use super::readiness;
use super::shutdown::Shutdown;
use super::store::{EventStore, RecordedEvent, StoreError, save_checkpoint};

/// The relay's checkpoint name in the `checkpoints` table.
pub const CHECKPOINT: &str = "relay";
/// How long an idle relay waits before polling the log again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);
const BATCH_SIZE: i64 = 512;
/// The relay's component in the readiness report.
const READINESS: &str = "relay";
/// Advisory lock key: `hashtext('eventline.relay')` keeps it readable in `pg_locks`.
const LEADER_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('eventline.relay'))";

/// What the relay has done so far, for tests and health checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayProgress {
    /// Every event up to this position has been published and confirmed.
    pub published_through: i64,
    /// How many times the relay has read the log (grows even when nothing is new).
    pub polls: u64,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl RelayError {
    /// Which side failed, for the reconnect counter.
    fn peer(&self) -> Peer {
        match self {
            Self::Store(_) => Peer::Database,
            Self::Broker(_) => Peer::Broker,
        }
    }
}

impl From<sqlx::Error> for RelayError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

impl From<lapin::Error> for RelayError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(error.into())
    }
}

pub struct Relay {
    config: Config,
    store: EventStore,
    topology: Topology,
    progress: watch::Sender<RelayProgress>,
}

impl Relay {
    pub fn new(config: Config, store: EventStore) -> Self {
        readiness::report(&config.namespace, READINESS, false, "starting");
        Self {
            topology: Topology::new(config.namespace.clone()),
            config,
            store,
            progress: watch::Sender::new(RelayProgress::default()),
        }
    }

    pub fn progress(&self) -> watch::Receiver<RelayProgress> {
        self.progress.subscribe()
    }

    /// Runs until shutdown, reconnecting to either service with backoff.
    pub async fn run(self, shutdown: Shutdown) {
        let (this, stop) = (&self, &shutdown);
        backoff::reconnect(shutdown.token(), "relay", || async move {
            let ended = this.session(stop).await;
            if let Err(error) = &ended {
                readiness::report(&this.config.namespace, READINESS, false, error.to_string());
                metrics::reconnecting(&this.config.namespace, "relay", error.peer());
            }
            ended
        })
        .await;
        readiness::remove(&self.config.namespace, READINESS);
    }

    async fn session(&self, shutdown: &Shutdown) -> Result<(), RelayError> {
        // A dedicated connection: the advisory lock lives and dies with it.
        let mut conn = sqlx::PgConnection::connect(self.config.database_url.expose())
            .await
            .map_err(|source| StoreError::Connect {
                url: self.config.database_url.to_string(),
                source,
            })?;
        let mut waiting_logged = false;
        loop {
            let leader: bool = sqlx::query_scalar(LEADER_LOCK).fetch_one(&mut conn).await?;
            if leader {
                break;
            }
            if !waiting_logged {
                info!("another relay is the leader; standing by");
                readiness::report(&self.config.namespace, READINESS, true, "standing by");
                waiting_logged = true;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.triggered() => return Ok(()),
            }
        }
        let connection = broker::connect(
            &self.config.amqp_url,
            &format!("relay {}", self.config.replica),
        )
        .await?;
        let channel = broker::confirm_channel(&connection).await?;
        broker::declare_exchanges(&channel, &self.topology).await?;
        let exchange = self.topology.events_exchange();

        let mut reader = LogReader::after(self.store.checkpoint(CHECKPOINT).await?, BATCH_SIZE);
        info!(from = reader.position(), "relay is the leader; publishing");
        readiness::report(
            &self.config.namespace,
            READINESS,
            true,
            "the leader, publishing",
        );
        loop {
            let batch = reader.next_batch(&mut conn).await?;
            self.progress.send_modify(|p| p.polls += 1);
            if batch.is_empty() {
                // At a hole the writer is usually a millisecond from committing.
                let wait = if reader.waiting_on_hole() {
                    HOLE_POLL_INTERVAL
                } else {
                    POLL_INTERVAL
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    () = shutdown.triggered() => break,
                }
            }
            // Pipelined: every publish of the batch is queued on the channel, in log order,
            // before any is awaited, and then one wait takes the confirms, in order. The first
            // poll of `basic_publish` queues its frames and numbers its confirm; the rest of it
            // only waits for the socket write. Awaiting each write before queueing the next
            // event cost a wake-up of the I/O loop and a socket write per event; queued
            // together, the loop writes the batch in a few.
            let messages: Vec<OutgoingMessage> = batch
                .iter()
                .map(|event| {
                    let mut message = outgoing(event);
                    traced(&mut message);
                    message
                })
                .collect();
            let mut publishes = Vec::with_capacity(batch.len());
            for (event, message) in batch.iter().zip(&messages) {
                let mut publish = maybe_done(Box::pin(channel.basic_publish(
                    exchange.as_str().into(),
                    event.event_type.as_str().into(),
                    BasicPublishOptions::default(),
                    &message.body,
                    broker::properties(message),
                )));
                // Once, here, so the frames are queued in this order, whatever polls later.
                let _ = futures_util::poll!(&mut publish);
                publishes.push(publish);
            }
            let mut confirms = Vec::with_capacity(publishes.len());
            for mut publish in publishes {
                (&mut publish).await;
                // Awaited to its end, it holds its output until taken, here, once.
                let confirm = Pin::new(&mut publish)
                    .take_output()
                    .expect("a publish awaited to its end holds its output");
                confirms.push(confirm?);
            }
            let started = std::time::Instant::now();
            for confirm in confirms {
                if let Confirmation::Nack(_) = confirm.await? {
                    return Err(BrokerError::Nacked {
                        exchange: exchange.clone(),
                        routing_key: "(event batch)".into(),
                    }
                    .into());
                }
            }
            metrics::confirm_waited(Publisher::RelayBatch, started.elapsed());
            save_checkpoint(&mut conn, CHECKPOINT, reader.position()).await?;
            metrics::relay_published(&self.config.namespace, batch.len());
            debug!(
                count = batch.len(),
                through = reader.position(),
                "published"
            );
            self.progress
                .send_modify(|p| p.published_through = reader.position());
        }
        let _ = connection.close(200, "relay shutting down".into()).await;
        Ok(())
    }
}

/// Publishing an event is a span in the trace of the message that recorded it (its parent is
/// that message's handling span, stored with the event), and the event names it as its
/// sender. Events recorded untraced get no span: a root span per event would be a trace of
/// one span each.
fn traced(message: &mut OutgoingMessage) {
    let Some(recorded_in) = message.metadata.trace.take() else {
        return;
    };
    let metadata = &message.metadata;
    let span = info_span!(
        "relay",
        message_id = %metadata.message_id,
        correlation_id = %metadata.correlation_id,
        causation_id = %metadata.causation_id,
        message_type = %metadata.message_type,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    message.metadata.trace = propagation::continue_trace(&span, Some(&recorded_in));
}

/// An event as a message on the events exchange. Its message id is its event id, so consumers
/// deduplicate re-published events with the same inbox that dedupes commands.
pub fn outgoing(event: &RecordedEvent) -> OutgoingMessage {
    let metadata = Metadata {
        message_id: MessageId::from_uuid(event.event_id.as_uuid()),
        correlation_id: event.metadata.correlation_id,
        causation_id: event.metadata.causation_id,
        message_type: event.event_type.clone(),
        schema_version: u16::try_from(event.schema_version).unwrap_or(SCHEMA_VERSION),
        occurred_at: event.recorded_at,
        reply_to: None,
        trace: event.metadata.trace.clone(),
    };
    OutgoingMessage {
        metadata,
        body: event.data.to_string().into_bytes(),
        extra_headers: vec![
            (
                headers::STREAM_ID,
                HeaderValue::Text(event.stream_id.to_string()),
            ),
            (
                headers::STREAM_VERSION,
                HeaderValue::Int(event.stream_version),
            ),
            (headers::LOG_POSITION, HeaderValue::Int(event.position)),
        ],
    }
}
