//! The client library: publish commands, await replies, tail events, read dead letters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventline_events::auth::{SERVICE_CREDENTIAL_HEADER, TOKEN_HEADER};
use eventline_events::envelope::{HeaderValue, headers};
use eventline_events::orders::{OrderLine, OrderLines, OrdersCommand, PlaceOrder};
use eventline_events::payments::CardToken;
use eventline_events::topology::is_query;
use eventline_events::values::{OrderId, ProductId, Quantity};
use eventline_events::{
    Contract, CorrelationId, IncomingMessage, MessageId, Metadata, Namespace, OutgoingMessage,
    Reply, Service, Topology,
};
use eventline_workers::runtime::SecretUrl;
use eventline_workers::runtime::broker::{self, BrokerError};
use eventline_workers::runtime::{propagation, token};
use futures_util::{Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::BasicGetOptions;
use lapin::{Channel, Connection};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(
        "no reply to {message_id} within {timeout:?}; the command may still be processed — \
             send it again with the same message id to get its outcome (it will not be applied twice)"
    )]
    Timeout {
        message_id: MessageId,
        timeout: Duration,
    },
    #[error(
        "message type {0:?} does not start with a service name (auth., catalog., orders., payments.)"
    )]
    UnknownService(String),
    #[error("the reply could not be read: {0}")]
    BadReply(String),
    #[error("the client's connection closed before the reply arrived")]
    Closed,
    #[error(
        "order {order_id} was placed but reached no outcome within {timeout:?}; it is still running — check it with `eventline orders` or `eventline trace {order_id}`"
    )]
    NoOutcome {
        order_id: OrderId,
        timeout: Duration,
    },
    #[error(
        "re-driving stopped after {redriven} message(s): {source}. Nothing was lost: the rest are still in the dead-letter queue; run it again"
    )]
    RedriveStopped {
        redriven: usize,
        #[source]
        source: BrokerError,
    },
    #[error(
        "the dead-letter queue {0} does not exist: no worker of that service has run in this namespace (check EVENTLINE_NAMESPACE)"
    )]
    NoSuchQueue(String),
}

impl From<lapin::Error> for ClientError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(error.into())
    }
}

/// Waiters by the message id of the command they sent. Several may wait on one id (a command
/// re-sent while its first reply is pending); the first reply answers them all.
type Pending = Arc<Mutex<HashMap<MessageId, Vec<oneshot::Sender<Reply>>>>>;

/// Order-outcome waiters by order id.
type Outcomes = Arc<Mutex<HashMap<OrderId, Vec<oneshot::Sender<OrderOutcome>>>>>;

/// A connection to the system. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Client {
    connection: Connection,
    publisher: Channel,
    topology: Topology,
    reply_queue: String,
    pending: Pending,
    token: Option<String>,
    /// Orders' signing key, for operator tools and tests that drive one saga step by hand.
    saga_key: Option<ed25519_dalek::SigningKey>,
    outcomes: tokio::sync::OnceCell<Outcomes>,
}

impl Client {
    /// Connects, declares the exchanges, and opens a private reply queue.
    pub async fn connect(url: &SecretUrl, namespace: Namespace) -> Result<Self, ClientError> {
        let topology = Topology::new(namespace);
        let connection = broker::connect(url, "client").await?;
        let publisher = broker::confirm_channel(&connection).await?;
        broker::declare_exchanges(&publisher, &topology).await?;

        // A private queue vanishes with the connection, so abandoned replies never pile up
        // on the broker.
        let replies = broker::open_private_queue(&connection, "replies").await?;
        let reply_queue = replies.name;
        let mut consumer = replies.consumer;
        let pending: Pending = Arc::default();
        let router = pending.clone();
        tokio::spawn(async move {
            // Lives as long as the connection: the consumer stream ends when it closes.
            while let Some(Ok(delivery)) = consumer.next().await {
                let message = broker::incoming(&delivery.properties, delivery.data);
                let Ok(metadata) = message.metadata() else {
                    continue;
                };
                let Ok(reply) = serde_json::from_slice::<Reply>(&message.body) else {
                    continue;
                };
                let cause = MessageId::from_uuid(metadata.causation_id.as_uuid());
                let waiters = router.lock().ok().and_then(|mut p| p.remove(&cause));
                for waiter in waiters.into_iter().flatten() {
                    let _ = waiter.send(reply.clone());
                }
            }
        });
        Ok(Self {
            connection,
            publisher,
            topology,
            reply_queue,
            pending,
            token: None,
            saga_key: None,
            outcomes: tokio::sync::OnceCell::new(),
        })
    }

    /// Sends this session token (from `auth.log_in`) with every command.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Signs every command with the orders service's credential, as orders signs its saga
    /// steps: for an operator (or a test, or the benchmark) that holds
    /// `EVENTLINE_ORDERS_SIGNING_KEY` and must send a reservation or payment step itself.
    /// A client without it cannot reserve, release, commit, charge, refund or expire.
    pub fn with_saga_key(mut self, key: ed25519_dalek::SigningKey) -> Self {
        self.saga_key = Some(key);
        self
    }

    /// Places an order and waits for its final outcome: confirmed, rejected (stock) or
    /// cancelled (payment, timeout). The order is its own conversation: its correlation id is
    /// the order id, so `eventline trace <order id>` shows its whole path.
    pub async fn place_order(
        &self,
        order: &PlaceOrder,
        timeout: Duration,
    ) -> Result<OrderOutcome, ClientError> {
        let outcomes = self
            .outcomes
            .get_or_try_init(|| self.follow_outcomes())
            .await?;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiting) = outcomes.lock() {
            waiting.entry(order.order_id).or_default().push(tx);
        }
        let mut metadata = Metadata::origin("orders.place_order");
        metadata.correlation_id = CorrelationId::from_uuid(order.order_id.as_uuid());
        let message = OutgoingMessage::new(metadata, &OrdersCommand::from(order.clone()));
        let deadline = tokio::time::Instant::now() + timeout;
        let placed = self.request_message(message, timeout).await?;
        if let Reply::Rejected { reason } = placed {
            return Ok(OrderOutcome {
                status: "rejected".into(),
                code: Some(reason.code),
                reason: Some(reason.message),
                total: None,
            });
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::NoOutcome {
                order_id: order.order_id,
                timeout,
            }),
        }
    }

    /// Routes the saga's terminal events to the waiters of `place_order`.
    async fn follow_outcomes(&self) -> Result<Outcomes, ClientError> {
        let events = self
            .subscribe_to(&[
                "orders.order_confirmed",
                "orders.order_rejected",
                "orders.order_cancelled",
            ])
            .await?;
        let outcomes: Outcomes = Arc::default();
        let router = outcomes.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let Some(order_id) = event
                    .data
                    .get("order_id")
                    .and_then(|v| serde_json::from_value::<OrderId>(v.clone()).ok())
                else {
                    continue;
                };
                let outcome = OrderOutcome::from_event(&event);
                let waiters = router.lock().ok().and_then(|mut w| w.remove(&order_id));
                for waiter in waiters.into_iter().flatten() {
                    let _ = waiter.send(outcome.clone());
                }
            }
        });
        Ok(outcomes)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes a typed command that starts a new conversation; returns once the broker has it.
    pub async fn send<C: Contract>(&self, command: &C) -> Result<MessageId, ClientError> {
        let message = OutgoingMessage::new(Metadata::origin(command.message_type()), command);
        self.publish(&message).await?;
        Ok(message.metadata.message_id)
    }

    /// Publishes a typed command and waits for its reply.
    pub async fn request<C: Contract>(
        &self,
        command: &C,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let message = OutgoingMessage::new(Metadata::origin(command.message_type()), command);
        self.request_message(message, timeout).await
    }

    /// Publishes a prepared message (any type, any body, e.g. from the CLI) and waits for its
    /// reply. Sending the same message again (same message id) is safe: the worker answers a
    /// duplicate with the reply it stored the first time.
    pub async fn request_message(
        &self,
        mut message: OutgoingMessage,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        message.metadata.reply_to = Some(self.reply_queue.clone());
        let message_id = message.metadata.message_id;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.entry(message_id).or_default().push(tx);
        }
        if let Err(error) = self.publish(&message).await {
            drop(rx);
            self.forget(message_id);
            return Err(error);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                self.forget(message_id);
                Err(ClientError::Timeout {
                    message_id,
                    timeout,
                })
            }
        }
    }

    /// Drops waiters whose receiver is gone (timed out), keeping any still waiting.
    fn forget(&self, message_id: MessageId) {
        if let Ok(mut pending) = self.pending.lock()
            && let Some(waiters) = pending.get_mut(&message_id)
        {
            waiters.retain(|w| !w.is_closed());
            if waiters.is_empty() {
                pending.remove(&message_id);
            }
        }
    }

    /// Publishes a prepared message to the service its type names, with a confirm.
    pub async fn publish(&self, message: &OutgoingMessage) -> Result<(), ClientError> {
        let service = service_of(&message.metadata.message_type)?;
        let traced = propagation::stamped(message);
        let message = traced.as_ref();
        let with_token;
        let message = if self.token.is_some() || self.saga_key.is_some() {
            let mut m = message.clone();
            if let Some(token) = &self.token {
                m.extra_headers
                    .push((TOKEN_HEADER, HeaderValue::Text(token.clone())));
            }
            if let Some(key) = &self.saga_key {
                let credential = token::service_credential(
                    key,
                    &m.metadata.message_id.to_string(),
                    &m.metadata.message_type,
                    &m.body,
                );
                m.extra_headers
                    .push((SERVICE_CREDENTIAL_HEADER, HeaderValue::Text(credential)));
            }
            with_token = m;
            &with_token
        } else {
            message
        };
        let routing_key = if is_query(&message.metadata.message_type) {
            self.topology.query_routing_key(service)
        } else {
            self.topology.command_routing_key(service).to_owned()
        };
        broker::publish_message(
            &self.publisher,
            &self.topology.commands_exchange(),
            &routing_key,
            message,
        )
        .await?;
        Ok(())
    }

    /// Publishes raw bytes with raw properties to a service's commands: for tests and tools
    /// that need to send what a well-behaved client never would.
    pub async fn publish_raw(
        &self,
        service: Service,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) -> Result<(), ClientError> {
        broker::publish_confirmed(
            &self.publisher,
            &self.topology.commands_exchange(),
            self.topology.command_routing_key(service),
            body,
            properties,
        )
        .await?;
        Ok(())
    }

    /// Events published by the relay whose type matches `pattern` (AMQP topic syntax:
    /// `catalog.#`, `#.stock_reserved`, `#` for all), from now on.
    pub async fn subscribe(
        &self,
        pattern: &str,
    ) -> Result<impl Stream<Item = EventMessage> + use<>, ClientError> {
        self.subscribe_to(&[pattern]).await
    }

    /// Like [`Client::subscribe`], for several patterns on one queue.
    pub async fn subscribe_to(
        &self,
        patterns: &[&str],
    ) -> Result<impl Stream<Item = EventMessage> + use<>, ClientError> {
        let queue = broker::open_private_queue(&self.connection, "tail").await?;
        for pattern in patterns {
            broker::bind_to_events(&queue.channel, &self.topology, &queue.name, pattern).await?;
        }
        let consumer = queue.consumer;
        Ok(consumer.filter_map(|delivery| async move {
            let delivery = delivery.ok()?;
            let message = broker::incoming(&delivery.properties, delivery.data);
            EventMessage::from_incoming(message)
        }))
    }

    /// Reads up to `limit` dead letters of a service without removing them: they are fetched
    /// unacknowledged on a private channel, which is then closed so the broker puts them back.
    pub async fn dead_letters(
        &self,
        service: Service,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, ClientError> {
        let (channel, held) = self.hold_dead_letters(service, limit).await?;
        let _ = channel.close(200, "peeked".into()).await;
        Ok(held
            .into_iter()
            .map(|(letter, _)| letter.truncated(LISTED_BODY_CHARS))
            .collect())
    }

    /// One dead letter, in full (every header, the whole body), by message id; left in the
    /// queue. `None` if no dead letter of `service` has that id.
    pub async fn dead_letter(
        &self,
        service: Service,
        message_id: &str,
    ) -> Result<Option<DeadLetter>, ClientError> {
        let (channel, held) = self.hold_dead_letters(service, usize::MAX).await?;
        let _ = channel.close(200, "peeked".into()).await;
        Ok(held
            .into_iter()
            .map(|(letter, _)| letter)
            .find(|letter| letter.message_id.as_deref() == Some(message_id)))
    }

    /// Sends the selected dead letters of `service` back to its queue, after a fix, and removes
    /// each from the dead-letter queue only once the broker has confirmed its copy.
    ///
    /// A re-driven message keeps its message id, so the inbox turns anything that was in fact
    /// applied into a duplicate with the stored reply: re-driving twice, or re-driving a
    /// command that had committed before it was dead-lettered, has one effect. The dead-letter
    /// headers and the retry count are dropped (it starts afresh); the dead letter's session
    /// token was removed when it was parked, so this client's token, if any, goes instead.
    /// Letters whose body was redacted (a password was replaced by `***`) or that have no
    /// message id are refused: re-sending them would not be the original command.
    ///
    /// Bounded: the queue is read once, at most as many messages as it held at the start;
    /// letters not selected go back in their place when the scan ends.
    pub async fn redrive(
        &self,
        service: Service,
        selection: &Selection,
    ) -> Result<Redrive, ClientError> {
        let (channel, held) = self.hold_dead_letters(service, usize::MAX).await?;
        let mut report = Redrive::default();
        let mut failure = None;
        for (letter, delivery) in held {
            if !selection.matches(&letter) {
                report.left += 1;
                continue;
            }
            let id = letter.message_id.clone().unwrap_or_default();
            if let Some(why) = letter.not_redrivable() {
                report.refused.push(Refused {
                    message_id: id,
                    why,
                });
                report.left += 1;
                continue;
            }
            if failure.is_some() {
                report.left += 1;
                continue;
            }
            let routing_key = match &letter.message_type {
                Some(t) if is_query(t) => self.topology.query_routing_key(service),
                _ => self.topology.command_routing_key(service).to_owned(),
            };
            let properties = self.fresh_properties(&delivery.properties);
            match broker::publish_confirmed(
                &self.publisher,
                &self.topology.commands_exchange(),
                &routing_key,
                &delivery.data,
                properties,
            )
            .await
            {
                Ok(()) => {
                    // Confirmed: the copy is stored, so the dead letter may go. If this ack is
                    // lost the letter stays, and a second re-drive is a harmless duplicate.
                    broker::ack(&channel, delivery.delivery_tag).await?;
                    report.redriven.push(id);
                }
                Err(error) => {
                    report.left += 1;
                    failure = Some(error);
                }
            }
        }
        if let Some(ids) = selection.ids() {
            report.not_found = ids
                .iter()
                .filter(|id| {
                    !report.redriven.contains(id)
                        && !report.refused.iter().any(|r| &r.message_id == *id)
                })
                .cloned()
                .collect();
        }
        // Everything still held goes back to the queue, in its place.
        let _ = channel.close(200, "redriven".into()).await;
        match failure {
            Some(error) => Err(ClientError::RedriveStopped {
                redriven: report.redriven.len(),
                source: error,
            }),
            None => Ok(report),
        }
    }

    /// The original message's properties without what the dead-lettering added.
    fn fresh_properties(&self, properties: &lapin::BasicProperties) -> lapin::BasicProperties {
        broker::redrive_properties(properties, self.token.as_deref())
    }

    /// Fetches up to `limit` of a service's dead letters, unacknowledged, on a new channel:
    /// never more than the queue held when it was asked, so the read ends even while new dead
    /// letters arrive. Closing the channel puts back whatever was not acked.
    async fn hold_dead_letters(
        &self,
        service: Service,
        limit: usize,
    ) -> Result<(Channel, Vec<(DeadLetter, Delivery)>), ClientError> {
        let queue = self.topology.dead_letter_queue(service);
        let not_found = |error: lapin::Error| {
            if error.to_string().contains("NOT_FOUND") {
                ClientError::NoSuchQueue(queue.clone())
            } else {
                error.into()
            }
        };
        let declared = broker::inspect_queue(&self.connection, &queue)
            .await
            .map_err(not_found)?;
        let count = (declared.message_count() as usize).min(limit);
        let channel = self.connection.create_channel().await?;
        let mut held = Vec::new();
        while held.len() < count {
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(not_found)?;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            let letter = DeadLetter::from_incoming(broker::incoming(
                &delivery.properties,
                delivery.data.clone(),
            ));
            held.push((letter, delivery));
        }
        Ok((channel, held))
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "client done".into()).await;
    }
}

/// The service a message type belongs to: the part before the first dot.
pub fn service_of(message_type: &str) -> Result<Service, ClientError> {
    message_type
        .split('.')
        .next()
        .and_then(|prefix| prefix.parse().ok())
        .ok_or_else(|| ClientError::UnknownService(message_type.to_owned()))
}

/// An event as received from the events exchange.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EventMessage {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub stream_id: String,
    pub stream_version: i64,
    pub position: i64,
    pub correlation_id: String,
    pub causation_id: String,
    pub data: serde_json::Value,
}

impl EventMessage {
    pub fn from_incoming(message: IncomingMessage) -> Option<Self> {
        let metadata = message.metadata().ok()?;
        let int = |name: &str| match message.headers.get(name) {
            Some(HeaderValue::Int(n)) => *n,
            _ => 0,
        };
        let text = |name: &str| match message.headers.get(name) {
            Some(HeaderValue::Text(s)) => s.clone(),
            _ => String::new(),
        };
        Some(Self {
            event_id: metadata.message_id.to_string(),
            event_type: metadata.message_type,
            stream_id: text(headers::STREAM_ID),
            stream_version: int(headers::STREAM_VERSION),
            position: int(headers::LOG_POSITION),
            correlation_id: metadata.correlation_id.to_string(),
            causation_id: metadata.causation_id.to_string(),
            data: serde_json::from_slice(&message.body).unwrap_or(serde_json::Value::Null),
        })
    }
}

/// How much of a body `dead-letters` lists (`show` prints it whole).
const LISTED_BODY_CHARS: usize = 2000;

/// A dead-lettered message with the reason it was set aside.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub message_type: Option<String>,
    /// Stable code (`invalid_body`, `unknown_message_type`, `retries_exhausted`, …), or
    /// `delivery_limit` when the broker gave up redelivering it.
    pub code: String,
    pub reason: String,
    pub handled_by: Option<String>,
    /// The queue it was taken from.
    pub original_queue: Option<String>,
    pub correlation_id: Option<String>,
    /// Every header, as text (the session token was removed when it was dead-lettered).
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body as text (lossy for non-UTF-8); passwords were replaced by `***`.
    pub body: String,
}

impl DeadLetter {
    fn from_incoming(message: IncomingMessage) -> Self {
        let text = |name: &str| match message.headers.get(name) {
            Some(HeaderValue::Text(s)) => Some(s.clone()),
            _ => None,
        };
        // The broker dead-letters on its own (delivery limit) without our headers; say so.
        let code = text(headers::DEAD_LETTER_CODE).unwrap_or_else(|| "delivery_limit".into());
        let reason = text(headers::DEAD_LETTER_REASON).unwrap_or_else(|| {
            "the broker dead-lettered it after too many deliveries without an ack (a worker crashed on it each time?)".into()
        });
        Self {
            message_id: message.message_id.clone(),
            message_type: message.message_type.clone(),
            code,
            reason,
            handled_by: text(headers::HANDLED_BY),
            original_queue: text(headers::ORIGINAL_QUEUE),
            correlation_id: message.correlation_id.clone(),
            headers: message
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = match value {
                        HeaderValue::Text(s) | HeaderValue::Other(s) => s.clone(),
                        HeaderValue::Int(n) => n.to_string(),
                    };
                    (name.clone(), value)
                })
                .collect(),
            body: String::from_utf8_lossy(&message.body).into_owned(),
        }
    }

    fn truncated(mut self, chars: usize) -> Self {
        if self.body.chars().count() > chars {
            self.body = self.body.chars().take(chars).collect();
        }
        self
    }

    /// Why re-sending this letter would not re-send the original command, if it would not.
    fn not_redrivable(&self) -> Option<String> {
        if self.message_id.is_none() {
            return Some(
                "it has no message id, so the inbox could not tell a repeat from a new command"
                    .into(),
            );
        }
        if self.body.to_ascii_lowercase().contains("password") {
            return Some(
                "its body was redacted when it was dead-lettered (a password was removed); ask its sender to send it again"
                    .into(),
            );
        }
        None
    }
}

/// Which dead letters to re-drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// These message ids.
    Ids(Vec<String>),
    /// Every letter with this reason code (e.g. `retries_exhausted`).
    Code(String),
    /// Every letter in the queue.
    All,
}

impl Selection {
    fn matches(&self, letter: &DeadLetter) -> bool {
        match self {
            Self::Ids(ids) => letter
                .message_id
                .as_ref()
                .is_some_and(|id| ids.contains(id)),
            Self::Code(code) => &letter.code == code,
            Self::All => true,
        }
    }

    fn ids(&self) -> Option<&[String]> {
        match self {
            Self::Ids(ids) => Some(ids),
            _ => None,
        }
    }
}

/// What a re-drive did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Redrive {
    /// Message ids sent back to the service (and removed from the dead-letter queue).
    pub redriven: Vec<String>,
    /// Selected but kept, with why.
    pub refused: Vec<Refused>,
    /// Ids asked for that are not in the dead-letter queue.
    pub not_found: Vec<String>,
    /// Letters left in the dead-letter queue.
    pub left: usize,
}

/// A selected dead letter that was not re-driven.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Refused {
    pub message_id: String,
    pub why: String,
}

/// How an order ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OrderOutcome {
    /// `confirmed`, `rejected` or `cancelled`.
    pub status: String,
    pub code: Option<String>,
    pub reason: Option<String>,
    /// Minor units, for a confirmed order.
    pub total: Option<u64>,
}

impl OrderOutcome {
    fn from_event(event: &EventMessage) -> Self {
        let text = |k: &str| {
            event
                .data
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Self {
            status: event
                .event_type
                .trim_start_matches("orders.order_")
                .to_owned(),
            code: text("code"),
            reason: text("reason"),
            total: event.data.get("total").and_then(|v| v.as_u64()),
        }
    }
}

impl std::fmt::Display for OrderOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.status)?;
        if let Some(total) = self.total {
            write!(f, ", total {}.{:02}", total / 100, total % 100)?;
        }
        if let (Some(code), Some(reason)) = (&self.code, &self.reason) {
            write!(f, " ({code}: {reason})")?;
        }
        Ok(())
    }
}

/// Builds a `PlaceOrder` from `product:quantity` words and a card token, with a new order id.
pub fn parse_order(lines: &[String], card: &str) -> Result<PlaceOrder, String> {
    let lines = lines
        .iter()
        .map(|word| {
            let (product, quantity) = word
                .split_once(':')
                .ok_or_else(|| format!("{word:?} is not product:quantity (e.g. tea:2)"))?;
            let quantity: u32 = quantity
                .parse()
                .map_err(|_| format!("{quantity:?} in {word:?} is not a whole number"))?;
            Ok(OrderLine {
                product_id: ProductId::parse(product.to_owned())?,
                quantity: Quantity::parse(quantity)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(PlaceOrder {
        order_id: OrderId::new(),
        lines: OrderLines::parse(lines)?,
        card: CardToken::parse(card.to_owned())?,
    })
}
