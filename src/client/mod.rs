//! The client library: publish commands, await replies, tail events, read dead letters.
//!
//! One file a job: this one connects (and routes replies to their waiters); `publish.rs`
//! sends commands with confirms and credentials, `replies.rs` waits for a command's reply,
//! `orders.rs` places an order and waits for its outcome, `events.rs` tails the events
//! exchange, `dead_letters.rs` lists, shows and re-drives dead letters. It talks only to
//! RabbitMQ, never prints and never ends the process: errors are [`ClientError`] values.

mod dead_letters;
mod events;
mod orders;
mod publish;
mod replies;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventline_amqp::SecretUrl;
use eventline_amqp::broker::{self, BrokerError};
use eventline_events::values::OrderId;
use eventline_events::{MessageId, Namespace, Reply, Service, Topology};
use futures_util::StreamExt;
use lapin::{Channel, Connection};
use tokio::sync::oneshot;

pub use dead_letters::{DeadLetter, Redrive, Refused, Selection};
pub use events::EventMessage;
pub use orders::{OrderOutcome, parse_order};

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
    pending: Pending,
    token: Option<String>,
    /// Orders' signing key, for operator tools and tests that drive one saga step by hand.
    saga_key: Option<ed25519_dalek::SigningKey>,
    outcomes: tokio::sync::OnceCell<Outcomes>,
}

impl Client {
    /// Connects, declares the exchanges, and consumes its replies by direct reply-to.
    pub async fn connect(url: &SecretUrl, namespace: Namespace) -> Result<Self, ClientError> {
        let topology = Topology::new(namespace);
        let connection = broker::connect(url, "client").await?;
        let publisher = broker::confirm_channel(&connection).await?;
        broker::declare_exchanges(&publisher, &topology).await?;

        // Direct reply-to: replies come straight to this channel, so the broker keeps no reply
        // queue to enqueue into and deliver from. Consumed before the first publish, on the
        // channel the commands go out on, as RabbitMQ requires.
        let mut consumer = broker::consume_direct_replies(&publisher, "replies").await?;
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

    pub fn topology(&self) -> &Topology {
        &self.topology
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
