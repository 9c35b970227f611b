//! The command worker: consumes a service's queue, runs each command in one transaction, and
//! decides — in one `match`, in [`CommandWorker::settle`] — whether a delivery is acked,
//! retried later or dead-lettered.
//!
//! Per delivery, in order:
//! 1. decode (poison → dead-letter queue with the reason, reply "rejected", ack);
//! 2. one PostgreSQL transaction: claim the message id in the inbox (a duplicate gets its
//!    stored reply again), load the stream, `decide`, append with the expected version,
//!    store the reply, commit. A version conflict reloads and decides again at once;
//! 3. reply on `reply_to` (after the commit: a reply never announces something uncommitted);
//! 4. ack. A crash anywhere before the ack means redelivery, which step 2 makes harmless.
//!
//! Group commit: for handlers that allow it ([`Handler::BATCH`]), the deliveries the broker
//! has already sent (up to `MAX_BATCH`) are handled together in step 2 — one transaction,
//! one inbox statement and one commit for all of them, one batch in the database at a time
//! (`DB_LANES`) — and then each is settled on its own (steps 3 and 4, concurrently, so their
//! publishes are pipelined, while the next batch runs its transaction). A duplicate in the batch
//! gets its stored reply; a version conflict re-decides just that command inside the
//! transaction; any other failure rolls the whole batch back and each message is handled in
//! a transaction of its own, so one bad message costs its batch a retry, never its outcome.
//!
//! Transient failures (database unreachable, serialization failure) are retried in-process
//! with backoff a few times, then the command is parked in the retry queue, a bounded number
//! of rounds, and finally dead-lettered with the last error as reason — never requeued forever.

use std::sync::Arc;
use std::time::Duration;

use eventline_events::auth::TOKEN_HEADER;
use eventline_events::envelope::{HeaderValue, headers};
use eventline_events::reply::REPLY_TYPE;
use eventline_events::{
    DecodeError, IncomingMessage, Metadata, OutgoingMessage, Rejection, Reply, SCHEMA_VERSION,
    Topology,
};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::task::JoinSet;
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use super::backoff::Backoff;
use super::broker::{self, BrokerError};
use super::config::Config;
use super::handler::{Context, Destination, Dispatch, Handled, Handler, HandlerError, Input};
use super::metrics::{self, Settled};
use super::readiness;
use super::shutdown::Shutdown;
use super::store::{BatchClaim, Claim, EventStore, StoreError};
use super::token::{self, Principal, TokenError};

/// Immediate re-decides after a version conflict before the command counts as a transient failure.
const MAX_CONFLICT_RETRIES: u32 = 20;
/// In-process attempts for a transient failure before the command goes to the retry queue.
const IN_PROCESS_ATTEMPTS: u32 = 3;
/// Rounds through the retry queue before the command is dead-lettered.
pub const MAX_RETRY_ROUNDS: i64 = 10;
/// Most messages one transaction handles. A bigger batch amortizes the commit and the
/// inbox statement further, but holds its first message's reply back longer.
const MAX_BATCH: usize = 32;
/// Transactions a worker runs at once, when its handler batches. One: deliveries that arrive
/// while it commits gather in the prefetch buffer and the next batch takes them all (group
/// commit), and a worker's own batches never race each other for a stream. Measured: four
/// lanes made concurrent batches collide on the same products (thousands of re-decides a run)
/// and cut saturation by a third; more throughput comes from more replicas.
const DB_LANES: usize = 1;
/// Batches a worker holds at once: the one in its transaction, plus two settling with the
/// broker (reply, dispatches, ack) meanwhile.
const BATCHES_IN_FLIGHT: usize = DB_LANES + 2;

/// How handling a message ended, before the ack decision.
#[derive(Debug)]
enum Outcome {
    /// Committed (or found already committed): send the dispatches and the reply, then ack.
    Handled {
        reply: Reply,
        dispatch: Vec<Dispatch>,
        /// A message id handled before: its stored outcome, sent again.
        duplicate: bool,
    },
    /// Cannot ever succeed: dead-letter with this reason.
    Poison { code: &'static str, reason: String },
    /// May succeed later.
    Transient(String),
}

/// A replica of one service's worker.
pub struct CommandWorker<H: Handler> {
    config: Config,
    topology: Topology,
    store: EventStore,
    handler: H,
}

struct Session {
    publisher: Channel,
}

/// A delivery and what decoding it found, carried from receipt to settlement.
struct Received<C> {
    delivery: Delivery,
    message: IncomingMessage,
    metadata: Option<Metadata>,
    /// `None` when the message does not decode; `outcome` then says why.
    command: Option<(Metadata, C)>,
    principal: Result<Principal, TokenError>,
    span: Span,
    outcome: Option<Outcome>,
}

impl<H: Handler> CommandWorker<H> {
    pub fn new(config: Config, store: EventStore, handler: H) -> Self {
        readiness::report(&config.namespace, &Self::inbox_name(), false, "starting");
        Self {
            topology: Topology::new(config.namespace.clone()),
            config,
            store,
            handler,
        }
    }

    fn inbox_name() -> String {
        match H::INPUT {
            Input::Commands => format!("{}.commands", H::SERVICE),
            Input::Queries => format!("{}.queries", H::SERVICE),
        }
    }

    /// Runs until `shutdown` fires, reconnecting to the broker with backoff whenever the
    /// connection drops. Returns only on shutdown.
    pub async fn run(self, shutdown: Shutdown) {
        let this = Arc::new(self);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match this.clone().session(&shutdown).await {
                Ok(()) => return readiness::remove(&this.config.namespace, &Self::inbox_name()),
                Err(error) => {
                    warn!(%error, service = %H::SERVICE, "broker session ended; reconnecting");
                    readiness::report(
                        &this.config.namespace,
                        &Self::inbox_name(),
                        false,
                        error.to_string(),
                    );
                    metrics::reconnecting(&this.config.namespace, "worker", metrics::Peer::Broker);
                    if !backoff.wait(shutdown.token()).await {
                        return;
                    }
                }
            }
        }
    }

    /// One connection's lifetime: declare, consume, and on shutdown drain in-flight work.
    async fn session(self: Arc<Self>, shutdown: &Shutdown) -> Result<(), BrokerError> {
        let role = format!("{} worker {}", H::SERVICE, self.config.replica);
        let connection = broker::connect(&self.config.amqp_url, &role).await?;
        let consume = connection.create_channel().await?;
        broker::declare_service_queues(&consume, &self.topology, H::SERVICE).await?;
        consume
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let session = Arc::new(Session {
            publisher: broker::confirm_channel(&connection).await?,
        });
        let mut queues = vec![match H::INPUT {
            Input::Commands => self.topology.command_queue(H::SERVICE),
            Input::Queries => self.topology.query_queue(H::SERVICE),
        }];
        if H::CONSUMES_REPLIES {
            queues.push(self.topology.reply_queue(H::SERVICE));
        }
        let mut tags = Vec::new();
        let mut consumers = Vec::new();
        for queue in &queues {
            let tag = format!("{}-{}", self.config.replica, uuid::Uuid::now_v7().simple());
            consumers.push(
                consume
                    .basic_consume(
                        queue.as_str().into(),
                        tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?,
            );
            tags.push(tag);
        }
        let mut deliveries = futures_util::stream::select_all(consumers);
        info!(queues = ?queues, replica = %self.config.replica, prefetch = self.config.prefetch, "consuming");
        readiness::report(
            &self.config.namespace,
            &Self::inbox_name(),
            true,
            "consuming",
        );

        // Batches are handled concurrently; the broker's prefetch bounds how many deliveries
        // they hold, and for a batching handler BATCHES_IN_FLIGHT bounds how many batches, so
        // deliveries that arrive meanwhile make the next batch bigger.
        let (max_batch, max_in_flight) = if H::BATCH {
            (MAX_BATCH, BATCHES_IN_FLIGHT)
        } else {
            (1, usize::MAX)
        };
        let mut in_flight = JoinSet::new();
        // The database lanes: a batch is formed only once a lane is free.
        let lane = Arc::new(tokio::sync::Semaphore::new(DB_LANES));
        let mut turn: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let result = loop {
            tokio::select! {
                () = shutdown.triggered() => break Ok(()),
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                permit = lane.clone().acquire_owned(), if H::BATCH && turn.is_none() => {
                    turn = permit.ok();
                }
                next = deliveries.next(), if in_flight.len() < max_in_flight && (turn.is_some() || !H::BATCH) => match next {
                    Some(Ok(delivery)) => {
                        // What the broker has already sent joins the batch; nothing waits for more.
                        let mut batch = vec![delivery];
                        let mut failed = None;
                        while batch.len() < max_batch {
                            match deliveries.next().now_or_never() {
                                Some(Some(Ok(delivery))) => batch.push(delivery),
                                Some(Some(Err(error))) => {
                                    failed = Some(BrokerError::Amqp(error));
                                    break;
                                }
                                Some(None) | None => break,
                            }
                        }
                        let this = self.clone();
                        let session = session.clone();
                        let turn = turn.take();
                        in_flight.spawn(async move { this.process(&session, batch, turn).await });
                        if let Some(error) = failed {
                            break Err(error);
                        }
                    }
                    Some(Err(error)) => break Err(BrokerError::Amqp(error)),
                    None => break Err(BrokerError::ConsumerCancelled(queues.join(", "))),
                },
            }
        };
        // Stop new deliveries, finish the ones we hold (each commits, replies and acks), then
        // close: whatever the broker still had in flight for us goes back to the queue.
        if result.is_ok() {
            for tag in &tags {
                let _ = consume
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await;
            }
        }
        while in_flight.join_next().await.is_some() {}
        if result.is_ok() {
            let _ = connection.close(200, "worker shutting down".into()).await;
            info!(replica = %self.config.replica, "stopped cleanly");
        }
        result
    }

    /// Handles a batch of deliveries, gives up the database lane (`turn`), then settles each.
    async fn process(
        &self,
        session: &Session,
        deliveries: Vec<Delivery>,
        turn: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let started = std::time::Instant::now();
        let mut items: Vec<Received<H::Command>> =
            deliveries.into_iter().map(|d| self.receive(d)).collect();
        self.handle_all(&mut items).await;
        metrics::batch_handled(&self.config.namespace, H::SERVICE, items.len());
        drop(turn);
        let outcomes: Vec<Outcome> = items
            .iter_mut()
            .map(|item| {
                item.outcome
                    .take()
                    .unwrap_or_else(|| Outcome::Transient("the message was not handled".into()))
            })
            .collect();
        // Concurrently: each waits only for its own confirms, so the publishes of the whole
        // batch are in flight together.
        futures_util::future::join_all(items.iter().zip(outcomes).map(|(item, outcome)| {
            self.settle(
                session,
                &item.delivery,
                &item.message,
                item.metadata.as_ref(),
                outcome,
                started,
            )
            .instrument(item.span.clone())
        }))
        .await;
    }

    /// Decodes a delivery and opens its span.
    fn receive(&self, mut delivery: Delivery) -> Received<H::Command> {
        let message = broker::incoming(&delivery.properties, std::mem::take(&mut delivery.data));
        let metadata = message.metadata().ok();
        let span = info_span!(
            "message",
            service = %H::SERVICE,
            replica = %self.config.replica,
            message_id = metadata.as_ref().map(|m| m.message_id.to_string()).unwrap_or_default(),
            correlation_id = metadata.as_ref().map(|m| m.correlation_id.to_string()).unwrap_or_default(),
            causation_id = metadata.as_ref().map(|m| m.causation_id.to_string()).unwrap_or_default(),
            message_type = message.message_type.as_deref().unwrap_or("?"),
            redelivered = delivery.redelivered,
        );
        let (command, outcome) = match message.decode::<H::Command>() {
            Ok(decoded) => (Some(decoded), None),
            Err(error) => (None, Some(poison(&error))),
        };
        let principal = self.principal(&message);
        Received {
            delivery,
            message,
            metadata,
            command,
            principal,
            span,
            outcome,
        }
    }

    /// The sender's identity, from the token header, checked with the public key.
    fn principal(&self, message: &IncomingMessage) -> Result<Principal, TokenError> {
        let token = match message.headers.get(TOKEN_HEADER) {
            Some(HeaderValue::Text(token)) => token,
            Some(_) => return Err(TokenError::Malformed),
            None => return Err(TokenError::Missing),
        };
        let key = self
            .config
            .auth
            .verifying
            .as_ref()
            .ok_or(TokenError::NoKey)?;
        token::verify(token, key, time::OffsetDateTime::now_utc().unix_timestamp())
    }

    /// Gives every decoded message of a batch its outcome: all in one transaction when there
    /// are several, and one transaction each for what that could not settle.
    async fn handle_all(&self, items: &mut [Received<H::Command>]) {
        let pending: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].command.is_some())
            .collect();
        if pending.len() > 1 {
            // A message id twice in one batch (a sender's retry) cannot share the transaction:
            // the second is handled after the first commits, and gets its stored reply.
            let mut seen = std::collections::HashSet::new();
            let mut together: Vec<usize> = pending
                .iter()
                .copied()
                .filter(|&i| {
                    let id = items[i].command.as_ref().map(|(m, _)| m.message_id);
                    seen.insert(id)
                })
                .collect();
            if together.len() > 1 {
                together.sort_by_cached_key(|&i| {
                    let item = &items[i];
                    item.command.as_ref().and_then(|(metadata, command)| {
                        let ctx = Context {
                            metadata,
                            principal: &item.principal,
                            config: &self.config,
                        };
                        self.handler.stream_hint(command, &ctx)
                    })
                });
                match self.handle_together(items, &together).await {
                    Ok(outcomes) => {
                        for (i, outcome) in outcomes {
                            items[i].outcome = Some(outcome);
                        }
                    }
                    Err(error) => {
                        debug!(%error, size = together.len(), "batch rolled back; handling its messages one by one");
                    }
                }
            }
        }
        for item in items.iter_mut() {
            if item.outcome.is_some() {
                continue;
            }
            let Some((metadata, command)) = &item.command else {
                continue;
            };
            let ctx = Context {
                metadata,
                principal: &item.principal,
                config: &self.config,
            };
            let outcome = self
                .handle(&ctx, command)
                .instrument(item.span.clone())
                .await;
            item.outcome = Some(outcome);
        }
    }

    /// One transaction for the messages at `order` (distinct ids, in stream order): claim
    /// them all, hand the new ones to [`Handler::handle_batch`], store every reply, commit.
    /// On any failure everything is rolled back and the error returned; the caller then
    /// handles each message in a transaction of its own.
    async fn handle_together(
        &self,
        items: &[Received<H::Command>],
        order: &[usize],
    ) -> Result<Vec<(usize, Outcome)>, HandlerError> {
        let decoded: Vec<(usize, &Received<H::Command>)> = order
            .iter()
            .filter(|&&i| items[i].command.is_some())
            .map(|&i| (i, &items[i]))
            .collect();
        let metadatas: Vec<&Metadata> = decoded
            .iter()
            .filter_map(|(_, item)| item.command.as_ref().map(|(m, _)| m))
            .collect();
        let (mut tx, claims) = self
            .store
            .begin_batch(&Self::inbox_name(), &metadatas, &self.config.replica)
            .await?;
        let mut outcomes = Vec::with_capacity(decoded.len());
        let mut new = Vec::with_capacity(decoded.len());
        for ((i, item), claim) in decoded.into_iter().zip(claims) {
            match claim {
                BatchClaim::Duplicate { reply, outputs } => {
                    item.span.in_scope(|| {
                        debug!("duplicate delivery; re-sending the stored outcome");
                    });
                    outcomes.push((i, duplicate(reply, outputs)));
                }
                BatchClaim::New => {
                    if let Some((metadata, command)) = &item.command {
                        let ctx = Context {
                            metadata,
                            principal: &item.principal,
                            config: &self.config,
                        };
                        new.push((i, (ctx, command)));
                    }
                }
            }
        }
        if new.is_empty() {
            tx.rollback().await?;
            return Ok(outcomes);
        }
        let (indexes, batch): (Vec<usize>, Vec<(Context<'_>, &H::Command)>) =
            new.into_iter().unzip();
        let span = info_span!("batch", service = %H::SERVICE, size = batch.len());
        let handled = match self
            .handler
            .handle_batch(&mut tx, &batch)
            .instrument(span)
            .await
        {
            Ok(handled) if handled.len() == batch.len() && tx.usable() => handled,
            Ok(_) => {
                let _ = tx.rollback().await;
                return Err(HandlerError::Transient(
                    "the batch handler did not settle every message".into(),
                ));
            }
            Err(error) => {
                let _ = tx.rollback().await;
                return Err(error);
            }
        };
        let mut stored = Vec::with_capacity(handled.len());
        for ((i, (ctx, _)), handled) in indexes.into_iter().zip(&batch).zip(handled) {
            let (outcome, reply, outputs) = to_stored(handled);
            stored.push((ctx.metadata.message_id, reply, outputs));
            outcomes.push((i, outcome));
        }
        tx.commit_all(&stored).await?;
        Ok(outcomes)
    }

    /// Handles one message in transactions of its own, retrying conflicts at once and
    /// transient failures with a short backoff.
    async fn handle(&self, ctx: &Context<'_>, command: &H::Command) -> Outcome {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.handle_once(ctx, command).await {
                Ok(outcome) => return outcome,
                Err(HandlerError::Store(StoreError::Corrupt(reason))) => {
                    return Outcome::Poison {
                        code: "unreadable_stream",
                        reason,
                    };
                }
                Err(error) if attempt < IN_PROCESS_ATTEMPTS => {
                    warn!(%error, attempt, "transient failure; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => return Outcome::Transient(error.to_string()),
            }
        }
    }

    /// One transaction; version conflicts loop here without backoff (another writer won,
    /// so the next attempt sees its events and decides on fresh state).
    async fn handle_once(
        &self,
        ctx: &Context<'_>,
        command: &H::Command,
    ) -> Result<Outcome, HandlerError> {
        let mut conflicts = 0;
        loop {
            let mut tx = match self
                .store
                .begin_command(&Self::inbox_name(), ctx.metadata, &self.config.replica)
                .await?
            {
                Claim::New(tx) => tx,
                Claim::Duplicate { reply, outputs } => {
                    debug!("duplicate delivery; re-sending the stored outcome");
                    return Ok(duplicate(reply, outputs));
                }
            };
            let handled = match self.handler.handle(&mut tx, ctx, command).await {
                Ok(handled) => handled,
                Err(error) => {
                    // Roll back now, not when the pooled connection is next used: an open
                    // transaction holds back the relay.
                    let _ = tx.rollback().await;
                    match error {
                        HandlerError::Store(StoreError::Conflict { .. })
                            if conflicts < MAX_CONFLICT_RETRIES =>
                        {
                            conflicts += 1;
                            metrics::conflicts_redecided(&self.config.namespace, H::SERVICE, 1);
                            debug!(conflicts, "version conflict; deciding again");
                            continue;
                        }
                        other => return Err(other),
                    }
                }
            };
            let (outcome, stored, outputs) = to_stored(handled);
            tx.commit(&stored, &outputs).await?;
            return Ok(outcome);
        }
    }

    /// The one place that decides what happens to a delivery.
    async fn settle(
        &self,
        session: &Session,
        delivery: &Delivery,
        message: &IncomingMessage,
        metadata: Option<&Metadata>,
        outcome: Outcome,
        started: std::time::Instant,
    ) {
        let kind = settled_kind::<H>(&outcome, retry_count(message));
        let settled = match outcome {
            Outcome::Handled {
                reply, dispatch, ..
            } => {
                match &reply {
                    Reply::Accepted { events, .. } => debug!(events = events.len(), "accepted"),
                    Reply::Rejected { reason } => info!(code = %reason.code, "rejected"),
                }
                // Dispatches before the ack: if one fails, the redelivery re-sends them all.
                match self.send_dispatches(session, &dispatch).await {
                    Ok(()) => {
                        self.reply(session, metadata, &reply).await;
                        Ok(())
                    }
                    Err(error) => Err(error),
                }
            }
            Outcome::Poison { code, reason } => {
                warn!(code, %reason, "poison message; dead-lettering");
                // Dead-letter first: if that fails the message is redelivered, and the
                // sender must not have had a reply yet.
                let parked = self
                    .dead_letter(session, delivery, message, code, &reason)
                    .await;
                if parked.is_ok() {
                    self.reply(
                        session,
                        metadata,
                        &Reply::Rejected {
                            reason: Rejection::new(code, reason.clone()),
                        },
                    )
                    .await;
                }
                parked
            }
            // A query is safe for its sender to repeat: answer at once instead of parking it.
            Outcome::Transient(error) if H::INPUT == Input::Queries => {
                warn!(%error, "query failed; telling the sender to retry");
                self.reply(
                    session,
                    metadata,
                    &Reply::Rejected {
                        reason: Rejection::new(
                            "unavailable",
                            format!("the read model could not be read ({error}); try again"),
                        ),
                    },
                )
                .await;
                Ok(())
            }
            Outcome::Transient(error) => {
                let rounds = retry_count(message);
                if rounds < MAX_RETRY_ROUNDS {
                    warn!(%error, round = rounds + 1, "transient failure; parking in the retry queue");
                    self.park_for_retry(session, delivery, message, rounds + 1)
                        .await
                } else {
                    let reason = format!(
                        "gave up after {MAX_RETRY_ROUNDS} retry rounds; last error: {error}"
                    );
                    error!(%reason, "dead-lettering");
                    self.dead_letter(session, delivery, message, "retries_exhausted", &reason)
                        .await
                }
            }
        };
        let message_type = metrics::type_label::<H::Command>(message.message_type.as_deref());
        let kind = if settled.is_ok() {
            kind
        } else {
            Settled::Unsettled
        };
        metrics::message_settled(
            &self.config.namespace,
            H::SERVICE,
            message_type,
            kind,
            started.elapsed(),
        );
        match settled {
            Ok(()) => {
                if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                    // The channel is gone; the broker will redeliver and the inbox makes that
                    // harmless.
                    warn!(%error, "ack failed; the message will be redelivered");
                }
            }
            // Not acked: the broker redelivers it when this channel closes.
            Err(error) => warn!(%error, "could not settle the message; leaving it unacked"),
        }
    }

    /// Publishes what the handler dispatched, each with a confirm.
    async fn send_dispatches(
        &self,
        session: &Session,
        dispatch: &[Dispatch],
    ) -> Result<(), BrokerError> {
        for d in dispatch {
            let mut metadata = Metadata {
                message_id: d.message_id,
                correlation_id: d.correlation_id,
                causation_id: d.causation_id,
                message_type: d.message_type.clone(),
                schema_version: SCHEMA_VERSION,
                occurred_at: time::OffsetDateTime::now_utc(),
                reply_to: None,
            };
            if d.wants_reply {
                metadata.reply_to = Some(self.topology.reply_queue(H::SERVICE));
            }
            let message = OutgoingMessage {
                metadata,
                body: d.body.to_string().into_bytes(),
                extra_headers: Vec::new(),
            };
            match d.to {
                Destination::Service { service } => {
                    broker::publish_message(
                        &session.publisher,
                        &self.topology.commands_exchange(),
                        self.topology.command_routing_key(service),
                        &message,
                    )
                    .await?
                }
                Destination::Delayed { service, delay_ms } => {
                    let properties =
                        broker::properties(&message).with_expiration(delay_ms.to_string().into());
                    broker::publish_confirmed(
                        &session.publisher,
                        "",
                        &self.topology.delay_queue(service),
                        &message.body,
                        properties,
                    )
                    .await?
                }
            }
        }
        Ok(())
    }

    async fn reply(&self, session: &Session, cause: Option<&Metadata>, reply: &Reply) {
        let Some(cause) = cause else { return };
        let Some(reply_to) = &cause.reply_to else {
            return;
        };
        let metadata = Metadata::caused_by(cause, REPLY_TYPE);
        let mut message = OutgoingMessage {
            body: serde_json::to_vec(reply).unwrap_or_default(),
            metadata,
            extra_headers: vec![(
                headers::HANDLED_BY,
                HeaderValue::Text(self.config.replica.clone()),
            )],
        };
        message.metadata.message_type = REPLY_TYPE.to_owned();
        // Replies are best effort: the outcome is already committed, and a client that missed
        // it re-sends the same message id and gets the stored reply.
        if let Err(error) =
            broker::publish_message(&session.publisher, "", reply_to, &message).await
        {
            warn!(%error, %reply_to, "could not send the reply");
        }
    }

    /// Publishes the original message, untouched but for reason headers, to the dead-letter
    /// queue, and waits for the broker to confirm it before the original may be acked.
    async fn dead_letter(
        &self,
        session: &Session,
        delivery: &Delivery,
        message: &IncomingMessage,
        code: &str,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let properties = with_headers(
            &delivery.properties,
            &[
                (headers::DEAD_LETTER_CODE, code.to_owned()),
                (headers::DEAD_LETTER_REASON, reason.to_owned()),
                (
                    headers::ORIGINAL_QUEUE,
                    self.topology.command_queue(H::SERVICE),
                ),
                (headers::HANDLED_BY, self.config.replica.clone()),
            ],
        );
        let mut table = properties.headers().clone().unwrap_or_default();
        // A dead letter is read by operators: it must not carry a usable session token.
        let mut inner = table.inner().clone();
        inner.remove(TOKEN_HEADER);
        table = inner.into();
        broker::publish_confirmed(
            &session.publisher,
            &self.topology.dead_letter_exchange(),
            self.topology.command_routing_key(H::SERVICE),
            &redact_secrets(&message.body),
            properties.with_headers(table),
        )
        .await
    }

    async fn park_for_retry(
        &self,
        session: &Session,
        delivery: &Delivery,
        message: &IncomingMessage,
        round: i64,
    ) -> Result<(), BrokerError> {
        let mut properties = with_headers(&delivery.properties, &[]);
        let mut table = properties.headers().clone().unwrap_or_default();
        table.insert(
            headers::RETRY_COUNT.into(),
            lapin::types::AMQPValue::LongLongInt(round),
        );
        properties = properties.with_headers(table);
        broker::publish_confirmed(
            &session.publisher,
            "",
            &self.topology.retry_queue(H::SERVICE),
            &message.body,
            properties,
        )
        .await
    }
}

/// The `outcome` label of a settlement, as [`CommandWorker::settle`] carries it out.
fn settled_kind<H: Handler>(outcome: &Outcome, retry_rounds: i64) -> Settled {
    match outcome {
        Outcome::Handled {
            duplicate: true, ..
        } => Settled::Duplicate,
        Outcome::Handled {
            reply: Reply::Accepted { .. },
            ..
        } => Settled::Accepted,
        Outcome::Handled { .. } => Settled::Rejected,
        Outcome::Poison { .. } => Settled::DeadLettered,
        Outcome::Transient(_) if H::INPUT == Input::Queries => Settled::Rejected,
        Outcome::Transient(_) if retry_rounds < MAX_RETRY_ROUNDS => Settled::Retried,
        Outcome::Transient(_) => Settled::DeadLettered,
    }
}

/// What a duplicate delivery gets: the stored reply and the same dispatches again.
fn duplicate(reply: Option<serde_json::Value>, outputs: serde_json::Value) -> Outcome {
    let reply = reply
        .and_then(|r| serde_json::from_value(r).ok())
        .unwrap_or_else(|| Reply::Rejected {
            reason: Rejection::new(
                "duplicate",
                "this message id was already handled; its outcome was not stored",
            ),
        });
    let dispatch = serde_json::from_value(outputs).unwrap_or_default();
    Outcome::Handled {
        reply,
        dispatch,
        duplicate: true,
    }
}

/// A handler's result as an outcome, plus the reply and dispatches to store with its inbox row.
fn to_stored(handled: Handled) -> (Outcome, serde_json::Value, serde_json::Value) {
    let Handled {
        reply,
        stored_reply,
        dispatch,
    } = handled;
    let stored = serde_json::to_value(stored_reply.as_ref().unwrap_or(&reply)).unwrap_or_default();
    let outputs = serde_json::to_value(&dispatch).unwrap_or_default();
    (
        Outcome::Handled {
            reply,
            dispatch,
            duplicate: false,
        },
        stored,
        outputs,
    )
}

fn poison(error: &DecodeError) -> Outcome {
    Outcome::Poison {
        code: error.code(),
        reason: error.to_string(),
    }
}

/// A body as it may be kept for operators: every `"password"` field of a JSON object is
/// replaced by `"***"`, and an unreadable body that mentions a password is dropped whole.
fn redact_secrets(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const FIELD: &[u8] = b"password";
    if !body
        .windows(FIELD.len())
        .any(|w| w.eq_ignore_ascii_case(FIELD))
    {
        return std::borrow::Cow::Borrowed(body);
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut value) => {
            redact_value(&mut value);
            std::borrow::Cow::Owned(value.to_string().into_bytes())
        }
        Err(_) => std::borrow::Cow::Owned(
            b"\"(redacted: an unreadable body that mentioned a password)\"".to_vec(),
        ),
    }
}

fn redact_value(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if key.eq_ignore_ascii_case("password") {
                    *field = serde_json::Value::String("***".into());
                } else {
                    redact_value(field);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_value),
        _ => {}
    }
}

fn retry_count(message: &IncomingMessage) -> i64 {
    match message.headers.get(headers::RETRY_COUNT) {
        Some(HeaderValue::Int(n)) => *n,
        _ => 0,
    }
}

fn with_headers(properties: &BasicProperties, extra: &[(&str, String)]) -> BasicProperties {
    let mut table = properties.headers().clone().unwrap_or_default();
    for (name, value) in extra {
        // Reasons can quote user input; keep them to a readable size.
        let value: String = value.chars().take(1000).collect();
        table.insert(
            (*name).into(),
            lapin::types::AMQPValue::LongString(value.into_bytes().into()),
        );
    }
    properties.clone().with_headers(table)
}
