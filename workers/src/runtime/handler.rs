//! What the worker runs for each message: a [`Handler`], inside the message's transaction.
//!
//! Most services are pure [`super::Aggregate`]s and get a handler for free; a service whose
//! decision needs I/O in the middle (auth hashes passwords, payments calls a provider)
//! implements `Handler` itself. Either way the runtime owns the transaction, the inbox, the
//! replies, the ack — and the [`Dispatch`]es a handler asks for, which are stored with the
//! inbox row and published after the commit, so a crash in between re-sends them on
//! redelivery (same message ids: receivers deduplicate).

use std::future::Future;
use std::time::Duration;

use eventline_events::trace::TraceContext;
use eventline_events::values::StreamId;
use eventline_events::{CausationId, Contract, CorrelationId, MessageId, Metadata, Reply, Service};
use serde::{Deserialize, Serialize};

use super::config::{Config, SagaKeys};
use super::store::{CommandTx, EventMetadata, EventStore, StoreError};
use super::token::{Principal, TokenError};

/// What a handler knows about the message besides its body.
pub struct Context<'a> {
    pub metadata: &'a Metadata,
    /// The sender, from the `x-auth-token` header, or why there is none.
    pub principal: &'a Result<Principal, TokenError>,
    pub config: &'a Config,
}

impl Context<'_> {
    /// Metadata for events recorded while handling this message. Here rather than in the
    /// store, so that the store knows nothing of handlers (the dependency runs one way).
    pub fn event_metadata(&self) -> EventMetadata {
        EventMetadata {
            correlation_id: self.metadata.correlation_id,
            causation_id: self.metadata.message_id.into(),
            recorded_by: self.config.replica.clone(),
            trace: self.metadata.trace.clone(),
        }
    }
}

/// A handler's result, committed atomically with the inbox row.
#[derive(Debug)]
pub struct Handled {
    /// Sent to the command's `reply_to`.
    pub reply: Reply,
    /// What a duplicate delivery gets instead of `reply`, when the reply holds a secret
    /// (a log-in's token) that must not be stored.
    pub stored_reply: Option<Reply>,
    pub dispatch: Vec<Dispatch>,
}

impl Handled {
    pub fn reply(reply: Reply) -> Self {
        Self {
            reply,
            stored_reply: None,
            dispatch: Vec::new(),
        }
    }
}

/// Where a dispatched message goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Destination {
    /// A service's command queue.
    Service { service: Service },
    /// A service's own delay queue, delivered to its command queue after `delay_ms`.
    Delayed { service: Service, delay_ms: u64 },
}

/// A message a handler sends as a consequence of the one it handled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    pub to: Destination,
    pub message_id: MessageId,
    pub correlation_id: CorrelationId,
    pub causation_id: CausationId,
    pub message_type: String,
    pub body: serde_json::Value,
    /// Ask for the reply on the sending service's reply queue.
    pub wants_reply: bool,
    /// The service credential (header `x-eventline-service-credential`) that proves the
    /// orders service sent this message; see [`Dispatch::signed`]. Stored with the rest, so a
    /// re-sent step carries the same credential. Absent in outputs stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The span that dispatched it (the handling span of `cause`), so the step continues the
    /// order's trace even when a redelivery re-sends it from the inbox row. Absent in outputs
    /// stored before it existed, and when the sender was not traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

impl Dispatch {
    /// A command to `service`, caused by `cause`, with a caller-chosen (deterministic) id.
    pub fn command<C: Contract>(
        service: Service,
        message_id: MessageId,
        correlation_id: CorrelationId,
        cause: &Metadata,
        command: &C,
    ) -> Self {
        Self {
            to: Destination::Service { service },
            message_id,
            correlation_id,
            causation_id: cause.message_id.into(),
            message_type: command.message_type().to_owned(),
            body: command.to_json(),
            wants_reply: true,
            credential: None,
            trace: cause.trace.clone(),
        }
    }

    /// The body exactly as the worker publishes it, and as the credential signs it.
    pub fn body_bytes(&self) -> Vec<u8> {
        self.body.to_string().into_bytes()
    }

    /// The same message with the orders service's credential, when this process holds the
    /// signing key (only orders' workers do: see [`SagaKeys::keep_signing_key_of`]);
    /// unchanged otherwise. The signature covers
    /// the id, type and [`Dispatch::body_bytes`], so the message cannot be altered in flight
    /// or its credential reused for another.
    pub fn signed(mut self, keys: &SagaKeys) -> Self {
        if let Some(key) = &keys.orders.signing {
            self.credential = Some(super::token::service_credential(
                &key.0,
                &self.message_id.to_string(),
                &self.message_type,
                &self.body_bytes(),
            ));
        }
        self
    }

    /// The same message, delivered to the service's own command queue after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        if let Destination::Service { service } = self.to {
            self.to = Destination::Delayed {
                service,
                delay_ms: delay.as_millis() as u64,
            };
        }
        self.wants_reply = false;
        self
    }
}

/// Why a handler could not finish; the worker turns each into retry, re-decide or poison.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A dependency (a payment provider) failed in a way that may pass: retry later.
    #[error("{0}")]
    Transient(String),
}

/// Which of its service's queues a handler consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    Commands,
    /// Read-only requests, in a read-only transaction. They claim nothing in the inbox: a
    /// query changes nothing, so a repeated query id simply runs again.
    Queries,
}

/// Handles one service's messages inside a transaction the runtime opened.
pub trait Handler: Send + Sync + 'static {
    type Command: Contract + Send + Sync + 'static;
    const SERVICE: Service;
    const INPUT: Input = Input::Commands;
    /// Whether the worker also consumes the service's reply queue (sagas).
    const CONSUMES_REPLIES: bool = false;
    /// Whether several messages may share one transaction (group commit). Only for handlers
    /// whose one write is a final [`CommandTx::append`] (or none) and that do no slow I/O:
    /// after a version conflict the worker calls `handle` again in the same transaction,
    /// which is only sound when the failed attempt wrote nothing else.
    const BATCH: bool = false;

    /// Whether only the order saga may send `command` (a reservation, payment or timer
    /// step). The worker then checks the message's service credential, one signature check,
    /// before claiming its id, and dead-letters it as `forbidden` without a valid one.
    /// Commands that clients send answer false; their tokens are checked by `decide`.
    fn only_from_saga(&self, _command: &Self::Command) -> bool {
        false
    }

    /// Which service alone may have sent `command`, when it is a reply to a saga step (the
    /// step's callee). The worker then checks the reply's credential with that service's
    /// key, one signature check, before claiming its id, and dead-letters it as `forbidden`
    /// without a valid one. `None` for everything else.
    fn answered_by(&self, _command: &Self::Command, _metadata: &Metadata) -> Option<Service> {
        None
    }

    /// The stream `command` will append to, if known before handling. A batch handles its
    /// commands in stream order, so two batches lock streams in the same order and cannot
    /// deadlock.
    fn stream_hint(&self, _command: &Self::Command, _ctx: &Context<'_>) -> Option<StreamId> {
        None
    }

    /// The part of handling that must run with **no transaction open**: a call to the outside
    /// world (a payment provider, HTTP). The worker runs it before it claims the message and
    /// opens the message's transaction, on every attempt and every delivery (a duplicate
    /// too), so it must be idempotent: record the intent, call keyed by an idempotency key,
    /// record the answer — each in a short statement of its own on `store` — and let
    /// [`Handler::handle`] read the answer inside the transaction. Nothing may be awaited
    /// with a transaction open. Not called for batches: a [`Handler::BATCH`] handler does no
    /// slow I/O. The default does nothing.
    fn outside<'a>(
        &'a self,
        _store: &'a EventStore,
        _ctx: &'a Context<'a>,
        _command: &'a Self::Command,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a {
        async { Ok(()) }
    }

    /// Decides and records, inside the transaction the runtime opened after the inbox claim.
    /// Must finish within [`MAX_TRANSACTION`], or the runtime rolls it back.
    fn handle<'a>(
        &'a self,
        tx: &'a mut CommandTx,
        ctx: &'a Context<'a>,
        command: &'a Self::Command,
    ) -> impl Future<Output = Result<Handled, HandlerError>> + Send + 'a;

    /// Handles several messages (distinct ids, claimed in `tx`) in one transaction; returns
    /// one result per message, in order. Called only when [`Handler::BATCH`] is true. On an
    /// error the worker rolls the transaction back and handles each message alone.
    ///
    /// The default calls `handle` for each in turn and, after a version conflict that left
    /// the transaction usable, calls it again on fresh state.
    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut CommandTx,
        batch: &'a [(Context<'a>, &'a Self::Command)],
    ) -> impl Future<Output = Result<Vec<Handled>, HandlerError>> + Send + 'a {
        async move {
            let mut handled = Vec::with_capacity(batch.len());
            for (ctx, command) in batch {
                let mut conflicts = 0;
                loop {
                    match self.handle(tx, ctx, command).await {
                        Ok(h) => {
                            handled.push(h);
                            break;
                        }
                        Err(HandlerError::Store(StoreError::Conflict { .. }))
                            if tx.usable() && conflicts < BATCH_CONFLICT_RETRIES =>
                        {
                            conflicts += 1;
                        }
                        Err(error) => return Err(error),
                    }
                }
            }
            Ok(handled)
        }
    }
}

/// The longest a handler may keep its message's transaction open. Real ones take
/// milliseconds; a handler that waits on the outside world inside it (which
/// [`Handler::outside`] exists to avoid) is rolled back with [`HandlerError::Transient`]
/// instead of holding locks and the log's append lock. The database enforces the same
/// bound on every pooled connection (`idle_in_transaction_session_timeout`, see
/// [`super::store::EventStore::connect_lazy`]).
pub const MAX_TRANSACTION: Duration = Duration::from_secs(5);

/// The error of a handler that kept its transaction open too long.
pub fn transaction_too_long() -> HandlerError {
    HandlerError::Transient(format!(
        "the handler kept its transaction open longer than {MAX_TRANSACTION:?} and was rolled \
         back; a handler must not wait on the outside world inside its transaction (use \
         Handler::outside)"
    ))
}

/// Re-decides after version conflicts inside one batch before the batch gives up (and its
/// messages are handled one by one).
pub const BATCH_CONFLICT_RETRIES: u32 = 5;

/// Contexts for unit tests of pure domain logic: no broker, no database.
pub mod testing {
    use eventline_events::Metadata;
    use eventline_events::auth::{Role, UserId};

    use super::Context;
    use crate::runtime::config::Config;
    use crate::runtime::token::{Principal, TokenError};

    /// Owns what a [`Context`] borrows.
    pub struct TestContext {
        pub metadata: Metadata,
        pub principal: Result<Principal, TokenError>,
        pub config: Config,
    }

    impl TestContext {
        pub fn new(principal: Result<Principal, TokenError>) -> Self {
            Self {
                metadata: Metadata::origin("test"),
                principal,
                config: Config::local(),
            }
        }

        pub fn admin() -> Self {
            Self::new(Ok(Principal {
                user_id: UserId::new(),
                role: Role::Admin,
            }))
        }

        pub fn customer(user_id: UserId) -> Self {
            Self::new(Ok(Principal {
                user_id,
                role: Role::Customer,
            }))
        }

        pub fn anonymous() -> Self {
            Self::new(Err(TokenError::Missing))
        }

        pub fn ctx(&self) -> Context<'_> {
            Context {
                metadata: &self.metadata,
                principal: &self.principal,
                config: &self.config,
            }
        }
    }
}
