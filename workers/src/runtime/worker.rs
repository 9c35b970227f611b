//! The command worker: consumes a service's queues and hands each batch of deliveries to
//! [`execute`] (the transactions) and then [`deliver`] (the settlement). This file is the
//! lifecycle — connect, declare, consume, drain on shutdown, reconnect — and must never
//! decide what happens to a message (`settle` does) nor ack one (`broker::carry_out` does;
//! for a batch it records the ack, and the batch's settled run goes out as one `multiple` ack
//! through [`super::acks`]).
//!
//! Per delivery, in order:
//! 1. decode (poison → dead-letter queue with the reason, reply "rejected", ack);
//! 2. one PostgreSQL transaction: claim the message id in the inbox with the digest of its
//!    content (a duplicate gets its stored reply again; the same id with other content is
//!    refused `idempotency_key_reused`; queries claim nothing), load the stream, `decide`,
//!    append with the expected version, store the reply, commit. A version conflict reloads
//!    and decides again at once;
//! 3. reply on `reply_to` (after the commit: a reply never announces something uncommitted);
//! 4. ack (a batch's deliveries: one `multiple` ack once every delivery up to its highest
//!    tag is settled). A crash anywhere before the ack means redelivery, which step 2 makes
//!    harmless.
//!
//! Group commit: for handlers that allow it ([`Handler::BATCH`]), each delivery is decoded and
//! its credentials checked (step 1) as soon as it arrives, while the previous batch's
//! transaction waits on the database; once the lane is free, what has arrived (up to
//! `MAX_BATCH`) is handled together in step 2 — one transaction,
//! one inbox statement and one commit for all of them, one batch in the database at a time
//! (`DB_LANES`) — and then each is settled on its own (steps 3 and 4, concurrently, so their
//! publishes are pipelined, while the next batch runs its transaction). A duplicate in the batch
//! gets its stored reply; a version conflict re-decides just that command inside the
//! transaction; any other failure (a panic included) rolls the whole batch back and each
//! message is handled in a transaction of its own, so one bad message costs its batch a retry,
//! never its outcome.
//!
//! Everything that can go wrong — undecodable input, permanent and transient database errors,
//! endless conflicts, a panicking handler, a stored dispatch that no longer decodes — becomes a
//! [`Failure`](super::settle::Failure), and [`super::settle::settle`] alone turns it into ack,
//! retry, requeue or dead letter under the configured [`RetryPolicy`](super::config::RetryPolicy).
//! A panic that escapes that (in the runtime, outside the handler) ends the session: the
//! closed channel returns every unacked delivery, and the reconnect loop starts again.

mod deliver;
mod execute;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use eventline_events::auth::TOKEN_HEADER;
use eventline_events::envelope::HeaderValue;
use eventline_events::{IncomingMessage, Metadata, Reply, Topology};
use futures_util::{FutureExt, StreamExt};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicQosOptions};
use tokio::task::JoinSet;
use tracing::{Instrument, Span, error, info, info_span, warn};

use super::acks::ChannelAcks;
use super::backoff;
use super::broker::{self, BrokerError, DeclaredQueues};
use super::config::Config;
use super::credential_batch;
use super::handler::{Dispatch, Handler, Input};
use super::metrics;
use super::presence;
use super::propagation;
use super::readiness;
use super::reply_nodes::ReplyNodes;
use super::settle::Failure;
use super::shared_connection::SharedConnection;
use super::shutdown::Shutdown;
use super::store::EventStore;
use super::token::{self, Principal, TokenError};
use super::token_cache::{self, TokenCache};

/// Most messages one transaction handles. A bigger batch amortizes the commit and the
/// inbox statement further, but holds its first message's reply back longer.
const MAX_BATCH: usize = 32;
/// Transactions a worker runs at once, when its handler batches. One: deliveries that arrive
/// while it commits gather in the prefetch buffer and the next batch takes them all (group
/// commit), and a worker's own batches never race each other for a stream. Measured: four
/// lanes made concurrent batches collide on the same products (thousands of re-decides a run)
/// and cut saturation by a third; two lanes for orders' saga, whose streams do not collide,
/// made smaller batches that cost more CPU per order and a worse p99; more throughput comes
/// from more replicas.
const DB_LANES: usize = 1;
/// Batches a worker holds at once: the one in its transaction, plus two settling with the
/// broker (reply, dispatches, ack) meanwhile.
const BATCHES_IN_FLIGHT: usize = DB_LANES + 2;

/// Why a worker's session ended, for the reconnect loop (which logs it and starts again).
/// The worker's own type, so a failure of the worker itself needs no variant in the shared
/// [`BrokerError`].
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Handling a delivery panicked outside the handler's `handle` (whose panics `execute`
    /// catches): in its receipt (decoding, the credential checks, which ask the handler) or
    /// in its batch's task. Its deliveries will never be settled, and with `multiple` acks one
    /// unsettled tag holds back every later run, so the session ends and the closed channel
    /// returns them all.
    #[error(
        "{0} panicked ({1}); the session was closed so the broker redelivers every \
         unacked delivery (the queue's delivery limit ends a message that keeps doing this). \
         This is a bug in the worker: report it with this message"
    )]
    Panicked(&'static str, String),
}

impl From<lapin::Error> for SessionError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(BrokerError::Amqp(error))
    }
}

/// How handling a message ended, before the settlement.
#[derive(Debug)]
enum Outcome {
    /// Committed (or found already committed): send the dispatches and the reply, then ack.
    Handled {
        reply: Reply,
        dispatch: Vec<Dispatch>,
        /// A message id handled before: its stored outcome, sent again.
        duplicate: bool,
    },
    Failed(Failure),
}

/// A replica of one service's worker.
pub struct CommandWorker<H: Handler> {
    config: Config,
    topology: Topology,
    store: EventStore,
    handler: H,
    /// The session tokens verified so far, with the auth key (`None`: no key configured).
    tokens: Option<TokenCache>,
    /// The direct reply-to nodes this process has published replies to.
    reply_nodes: ReplyNodes,
    /// The broker connection it consumes on: its own, unless [`Self::sharing`] one.
    connection: Arc<SharedConnection>,
}

/// One connection's publishing side, what its declare found, and its consume channel's acks.
struct Session {
    publisher: Channel,
    declared: DeclaredQueues,
    /// A batching worker's acks: one `multiple` ack per settled run. `None` (a handler that
    /// does not batch, such as payments' slow provider calls, with any number in flight):
    /// each delivery is acked alone, so one slow message never holds back the others' acks.
    acks: Option<ChannelAcks>,
    /// The stage histograms, registered once per session rather than once per message.
    stages: metrics::Stages,
}

/// A delivery and what decoding it found, carried from receipt to settlement.
struct Received<C> {
    delivery: Delivery,
    /// The queue it came from.
    queue: Arc<str>,
    message: IncomingMessage,
    metadata: Option<Metadata>,
    /// `None` when the message does not decode; `outcome` then says why.
    command: Option<(Metadata, C)>,
    principal: Result<Principal, TokenError>,
    /// A saga step whose orders credential verified: only its reply is signed (a reply to
    /// a step refused for a bad credential must not carry this service's word to orders).
    verified_step: bool,
    /// The credential this message needs, read but not yet checked, and whether it is a
    /// saga step's: checked a group at a time ([`CommandWorker::gather`], then
    /// [`CommandWorker::check_credentials`]).
    unchecked: Option<(token::Unchecked, bool)>,
    span: Span,
    outcome: Option<Outcome>,
    /// When it was received: the handling latency runs from here to its settlement.
    received_at: std::time::Instant,
}

impl<H: Handler> CommandWorker<H> {
    pub fn new(config: Config, store: EventStore, handler: H) -> Self {
        readiness::report(&config.namespace, &Self::inbox_name(), false, "starting");
        let role = format!("{} worker {}", H::SERVICE, config.replica);
        Self {
            connection: SharedConnection::new(config.amqp_url.clone(), role),
            topology: Topology::new(config.namespace.clone()),
            tokens: config
                .auth
                .verifying
                .map(|key| TokenCache::new(key, token_cache::DEFAULT_CAPACITY)),
            reply_nodes: ReplyNodes::new(config.namespace.clone()),
            config,
            store,
            handler,
        }
    }

    /// Consumes on `connection`, which the process's other workers share, instead of a
    /// connection of its own (see [`SharedConnection`] for why).
    pub fn sharing(mut self, connection: Arc<SharedConnection>) -> Self {
        self.connection = connection;
        self
    }

    /// Runs until `shutdown` fires, reconnecting to the broker with backoff whenever the
    /// connection drops. Returns only on shutdown.
    pub async fn run(self, shutdown: Shutdown) {
        let this = Arc::new(self);
        this.connection.enter();
        let what = format!("{} worker", H::SERVICE);
        backoff::reconnect(shutdown.token(), &what, || {
            let this = this.clone();
            let shutdown = &shutdown;
            async move {
                let namespace = this.config.namespace.clone();
                let ended = this.session(shutdown).await;
                if let Err(error) = &ended {
                    readiness::report(&namespace, &Self::inbox_name(), false, error.to_string());
                    metrics::reconnecting(&namespace, "worker", metrics::Peer::Broker);
                }
                ended
            }
        })
        .await;
        this.connection.leave().await;
        readiness::remove(&this.config.namespace, &Self::inbox_name());
    }

    /// One session's lifetime on the (shared) connection: declare, consume, and on shutdown
    /// drain in-flight work.
    async fn session(self: Arc<Self>, shutdown: &Shutdown) -> Result<(), SessionError> {
        let connection = self.connection.get().await?;
        let declared =
            broker::ensure_service_queues(&connection, &self.topology, H::SERVICE).await?;
        let consume = connection.create_channel().await?;
        consume
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let session = Arc::new(Session {
            publisher: broker::confirm_channel(&connection).await?,
            declared,
            acks: H::BATCH.then(|| ChannelAcks::new(consume.clone())),
            stages: metrics::Stages::new(&self.config.namespace, H::SERVICE),
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
            let name: Arc<str> = Arc::from(queue.as_str());
            let consumer = broker::consume(&consume, queue, &tag, broker::Acks::Manual).await?;
            consumers.push(consumer.map(move |d| (name.clone(), d)));
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
        let mut in_flight = JoinSet::new();
        // The database lanes: a batch is formed only once a lane is free.
        let lane = Arc::new(tokio::sync::Semaphore::new(DB_LANES));
        let mut turn: Option<tokio::sync::OwnedSemaphorePermit> = None;
        // A batching handler's deliveries, decoded and their credentials read as they
        // arrive, waiting for the lane; their signatures are checked a group at a time as
        // the groups gather (`gather`), while the lane's transaction waits on the database,
        // and what is left when the batch forms, in the batch's own task (`process`).
        let mut ready: Vec<Received<H::Command>> = Vec::new();
        let result = loop {
            if H::BATCH && turn.is_some() && in_flight.len() < BATCHES_IN_FLIGHT {
                // What the broker has already sent joins the batch; nothing waits for more.
                let mut failed = None;
                while ready.len() < MAX_BATCH {
                    match deliveries.next().now_or_never() {
                        Some(Some((queue, Ok(delivery)))) => {
                            match self.take_in_loop(&session, queue, delivery) {
                                Ok(item) => Self::gather(&mut ready, item),
                                Err(error) => {
                                    failed = Some(error);
                                    break;
                                }
                            }
                        }
                        Some(Some((_, Err(error)))) => {
                            failed = Some(SessionError::from(error));
                            break;
                        }
                        Some(None) | None => break,
                    }
                }
                if !ready.is_empty() {
                    let batch = std::mem::take(&mut ready);
                    let this = self.clone();
                    let session = session.clone();
                    let turn = turn.take();
                    in_flight.spawn(async move { this.process(&session, batch, turn).await });
                }
                if let Some(error) = failed {
                    break Err(error);
                }
            }
            // Room for another delivery: a batching worker holds at most one batch's worth
            // waiting for the lane; the prefetch bounds the rest.
            let room = !H::BATCH || ready.len() < MAX_BATCH;
            tokio::select! {
                () = shutdown.triggered() => break Ok(()),
                Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Err(failed) = joined
                        && failed.is_panic()
                    {
                        let panic = execute::panic_message(&*failed.into_panic());
                        error!(%panic, replica = %self.config.replica, "a batch task panicked; ending the session so its deliveries are redelivered");
                        break Err(SessionError::Panicked("a batch task", panic));
                    }
                }
                permit = lane.clone().acquire_owned(), if H::BATCH && turn.is_none() => {
                    turn = permit.ok();
                }
                next = deliveries.next(), if room => match next {
                    Some((queue, Ok(delivery))) if H::BATCH => {
                        match self.take_in_loop(&session, queue, delivery) {
                            Ok(item) => Self::gather(&mut ready, item),
                            Err(error) => break Err(error),
                        }
                    }
                    // Not batching (payments' slow provider calls): each delivery is handled
                    // on its own, as many at once as the prefetch allows.
                    Some((queue, Ok(delivery))) => {
                        let this = self.clone();
                        let session = session.clone();
                        in_flight.spawn(async move {
                            let item = this.take(&session, queue, delivery);
                            this.process(&session, vec![item], None).await;
                        });
                    }
                    Some((_, Err(error))) => break Err(error.into()),
                    None => break Err(BrokerError::ConsumerCancelled(queues.join(", ")).into()),
                },
            }
        };
        // Received but never batched: unsettled, so no ack covers them, and they go back to
        // the queue with the channel.
        drop(ready);
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
        // What is settled but held back by a delivery still in a consumer's buffer is acked
        // now; that delivery goes back to the queue with the channel.
        if let (Ok(()), Some(acks)) = (&result, &session.acks)
            && let Err(error) = acks.ack_all_settled().await
        {
            warn!(%error, "could not ack the last settled deliveries; the broker will redeliver them");
        }
        // This session's channels, not the connection, which the process's other workers may
        // share: closing the consume channel returns exactly this worker's unacked deliveries
        // (a panicked batch's included) before the reconnect. The connection is closed by the
        // last worker to stop (`SharedConnection::leave`), or is already gone.
        let why = match &result {
            Ok(()) => {
                info!(replica = %self.config.replica, "stopped cleanly");
                "worker shutting down".to_owned()
            }
            Err(SessionError::Panicked(what, _)) => format!("{what} panicked"),
            Err(SessionError::Broker(_)) => "session ended".to_owned(),
        };
        for channel in [&consume, &session.publisher] {
            broker::close_channel(channel, &why).await;
        }
        result
    }

    /// Handles a batch of received deliveries, gives up the database lane (`turn`), then
    /// settles each.
    async fn process(
        &self,
        session: &Session,
        mut items: Vec<Received<H::Command>>,
        turn: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        presence::received(
            &self.config.namespace,
            H::SERVICE,
            &self.config.replica,
            items.len(),
        );
        let stages = &session.stages;
        // What `gather` left unchecked (fewer than a group; all of a non-batching worker's
        // single delivery), before the inbox claim. Its time counts as batch wait.
        Self::check_credentials(&mut items);
        let begun = std::time::Instant::now();
        for item in &items {
            stages.record(metrics::Stage::BatchWait, begun - item.received_at, 1);
        }
        self.handle_all(&mut items).await;
        let committed = std::time::Instant::now();
        stages.record(metrics::Stage::Transaction, committed - begun, items.len());
        metrics::batch_handled(&self.config.namespace, H::SERVICE, items.len());
        drop(turn);
        // Concurrently: each waits only for its own confirms, so the publishes of the whole
        // batch are in flight together.
        futures_util::future::join_all(items.iter_mut().map(|item| {
            let outcome = item.outcome.take().unwrap_or_else(|| {
                Outcome::Failed(Failure::Transient("the message was not handled".into()))
            });
            let span = item.span.clone();
            self.settle(session, item, outcome).instrument(span)
        }))
        .await;
        // The batch's acks, as one: every delivery up to the highest tag settled without a
        // gap (an earlier batch still settling holds this one's acks back for its own run).
        if let Some(acks) = &session.acks
            && let Err(error) = acks.ack_settled_run().await
        {
            // The channel is gone: the broker redelivers, and the inbox makes that harmless.
            warn!(%error, "could not ack a settled run; the broker will redeliver it");
        }
        stages.record(metrics::Stage::Settle, committed.elapsed(), items.len());
    }

    /// [`Self::take`] on the consume loop itself, where a panic (a handler's `only_from_saga`
    /// or `answered_by`, say) would otherwise end the worker for good: it ends the session
    /// instead, and the reconnect loop starts again.
    fn take_in_loop(
        &self,
        session: &Session,
        queue: Arc<str>,
        delivery: Delivery,
    ) -> Result<Received<H::Command>, SessionError> {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.take(session, queue, delivery)))
            .map_err(|panic| {
                let panic = execute::panic_message(&*panic);
                error!(%panic, replica = %self.config.replica, "receiving a delivery panicked; ending the session so it is redelivered");
                SessionError::Panicked("receiving a delivery", panic)
            })
    }

    /// Takes a delivery from its consumer: decodes it, checks its credentials and records
    /// how long it waited in the queue (from the sender's `x-occurred-at`).
    fn take(&self, session: &Session, queue: Arc<str>, delivery: Delivery) -> Received<H::Command> {
        let item = self.receive(queue, delivery);
        if let Some(metadata) = &item.metadata {
            let waited =
                metrics::wall_clock_since(metadata.occurred_at, time::OffsetDateTime::now_utc());
            session.stages.record(metrics::Stage::QueueWait, waited, 1);
        }
        item
    }

    /// Decodes a delivery and opens its span.
    fn receive(&self, queue: Arc<str>, mut delivery: Delivery) -> Received<H::Command> {
        let message = broker::incoming(&delivery.properties, std::mem::take(&mut delivery.data));
        let mut metadata = message.metadata().ok();
        let span = info_span!(
            "message",
            service = %H::SERVICE,
            replica = %self.config.replica,
            message_id = metadata.as_ref().map(|m| m.message_id.to_string()).unwrap_or_default(),
            correlation_id = metadata.as_ref().map(|m| m.correlation_id.to_string()).unwrap_or_default(),
            causation_id = metadata.as_ref().map(|m| m.causation_id.to_string()).unwrap_or_default(),
            message_type = message.message_type.as_deref().unwrap_or("?"),
            redelivered = delivery.redelivered,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        // From here on the message's trace context names this span: whatever handling it
        // causes (steps, replies, events) is its child.
        let trace =
            propagation::continue_trace(&span, metadata.as_ref().and_then(|m| m.trace.as_ref()));
        if let Some(metadata) = &mut metadata {
            metadata.trace = trace.clone();
        }
        let mut unchecked = None;
        let (mut command, outcome) = match message.decode::<H::Command>() {
            // Read here, checked before the inbox claim (`check_credentials`): a forged step
            // must not take the real step's id.
            Ok(decoded) => match self.authorize(&message, &decoded) {
                Ok(credential) => {
                    unchecked = credential;
                    (Some(decoded), None)
                }
                Err(e) => (None, Some(forbidden(&e))),
            },
            Err(error) => (
                None,
                Some(Outcome::Failed(Failure::Undecodable {
                    code: error.code(),
                    reason: error.to_string(),
                })),
            ),
        };
        if let Some((metadata, _)) = &mut command {
            metadata.trace = trace;
        }
        let principal = self.principal(&message);
        Received {
            delivery,
            queue,
            message,
            metadata,
            command,
            principal,
            verified_step: false,
            unchecked,
            span,
            outcome,
            received_at: std::time::Instant::now(),
        }
    }

    /// Reads the service credential of a message only one service may send: a saga step
    /// (orders' signature, `true` beside it) or a reply to one (its callee's). Refuses at
    /// once a message that has none; the signature itself is checked with its batch's
    /// ([`Self::check_credentials`]). Every other message passes untouched (its token, if it
    /// needs one, is `decide`'s).
    fn authorize(
        &self,
        message: &IncomingMessage,
        (metadata, command): &(Metadata, H::Command),
    ) -> Result<Option<(token::Unchecked, bool)>, token::CredentialError> {
        let keys = &self.config.saga;
        if self.handler.only_from_saga(command) {
            let credential = token::service_credential_of(message, keys.orders.verifying.as_ref())?;
            return Ok(Some((credential, true)));
        }
        if let Some(callee) = self.handler.answered_by(command, metadata) {
            let credential = token::reply_credential_of(
                message,
                &metadata.causation_id.to_string(),
                callee,
                keys.of(callee).and_then(|k| k.verifying.as_ref()),
            )?;
            return Ok(Some((credential, false)));
        }
        Ok(None)
    }

    /// Adds a received delivery to those waiting for the lane, and checks the credentials
    /// among them once a group's worth ([`credential_batch::GROUP`]) is unchecked: the group
    /// size that costs least per signature, checked outside the database lane.
    fn gather(ready: &mut Vec<Received<H::Command>>, item: Received<H::Command>) {
        let needs_check = item.unchecked.is_some();
        ready.push(item);
        if needs_check
            && ready.iter().filter(|r| r.unchecked.is_some()).count() >= credential_batch::GROUP
        {
            Self::check_credentials(ready);
        }
    }

    /// Checks the credentials the batch's messages carry, all at once, before any of them
    /// reaches the inbox: a message whose signature fails loses its command and is refused
    /// (`forbidden`, dead-lettered with the reason), exactly as if checked alone.
    fn check_credentials(items: &mut [Received<H::Command>]) {
        let (pending, credentials): (Vec<_>, Vec<_>) = items
            .iter_mut()
            .filter_map(|item| item.unchecked.take().map(|c| (item, c)))
            .unzip();
        if pending.is_empty() {
            return;
        }
        let verdicts =
            credential_batch::check_all(&credentials.iter().map(|(c, _)| c).collect::<Vec<_>>());
        for ((item, (_, step)), verdict) in pending.into_iter().zip(credentials).zip(verdicts) {
            match verdict {
                Ok(()) => item.verified_step = step,
                Err(e) => {
                    item.command = None;
                    item.outcome = Some(forbidden(&e));
                }
            }
        }
    }

    /// The sender's identity, from the token header, checked with the public key.
    fn principal(&self, message: &IncomingMessage) -> Result<Principal, TokenError> {
        let token = match message.headers.get(TOKEN_HEADER) {
            Some(HeaderValue::Text(token)) => token,
            Some(_) => return Err(TokenError::Malformed),
            None => return Err(TokenError::Missing),
        };
        // Once per token: a session sends the same one on every command.
        let tokens = self.tokens.as_ref().ok_or(TokenError::NoKey)?;
        tokens.verify(token, time::OffsetDateTime::now_utc().unix_timestamp())
    }
}

/// The refusal of a message whose service credential is missing or does not verify.
fn forbidden(error: &token::CredentialError) -> Outcome {
    Outcome::Failed(Failure::Forbidden {
        code: error.code(),
        reason: error.to_string(),
    })
}
