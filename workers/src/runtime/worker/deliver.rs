//! Settling one delivery: asks [`settle`] what to do with it, publishes what the handler
//! dispatched, and has [`broker::carry_out`] do the rest (reply, retry, dead letter, ack,
//! nack). This module must never choose a settlement itself: it only gathers the facts
//! (`Attempt`) and publishes.

use eventline_events::auth::SERVICE_CREDENTIAL_HEADER;
use eventline_events::envelope::{HeaderValue, headers};
use eventline_events::reply::REPLY_TYPE;
use eventline_events::{Metadata, OutgoingMessage, Rejection, Reply, SCHEMA_VERSION};
use tracing::{debug, error, info, warn};

use super::{CommandWorker, Outcome, Received, Session};
use crate::runtime::broker::{self, BrokerError, SettleRoute};
use crate::runtime::handler::{Destination, Dispatch, Handler};
use crate::runtime::metrics::{self, Settled};
use crate::runtime::presence;
use crate::runtime::redact::redact_secrets;
use crate::runtime::settle::{Attempt, Failure, Happened, Settlement, settle};
use crate::runtime::token;

impl<H: Handler> CommandWorker<H> {
    /// Settles one delivery. Never leaves it unacked on a live channel: whatever cannot be
    /// carried out is settled again as [`Failure::NotSettled`] (handed back to the queue).
    pub(super) async fn settle(
        &self,
        session: &Session,
        item: &Received<H::Command>,
        outcome: Outcome,
    ) {
        let attempt = Attempt {
            retry_round: match item.message.headers.get(headers::RETRY_COUNT) {
                Some(HeaderValue::Int(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
                _ => 0,
            },
            redeliveries: session
                .declared
                .counts_deliveries(&item.queue)
                .then(|| broker::redeliveries(&item.delivery)),
            input: H::INPUT,
        };
        let route = SettleRoute {
            publisher: &session.publisher,
            topology: &self.topology,
            service: H::SERVICE,
            queue: &item.queue,
            replica: &self.config.replica,
        };
        let body = &item.message.body;
        // The `outcome` label when the settlement is an ack of a handled message.
        let mut kind = Settled::Rejected;
        let (mut settlement, reply) = match outcome {
            Outcome::Handled {
                reply,
                dispatch,
                duplicate,
            } => {
                kind = match (&reply, duplicate) {
                    (_, true) => Settled::Duplicate,
                    (Reply::Accepted { .. }, false) => Settled::Accepted,
                    (Reply::Rejected { .. }, false) => Settled::Rejected,
                };
                match &reply {
                    Reply::Accepted { events, .. } => debug!(events = events.len(), "accepted"),
                    Reply::Rejected { reason } => info!(code = %reason.code, "rejected"),
                }
                // Dispatches before the ack: if one fails, the retry re-sends them all.
                match self.send_dispatches(session, &dispatch).await {
                    Ok(()) => (
                        settle(Happened::Handled, &attempt, &self.config.retry),
                        reply,
                    ),
                    Err(error) => {
                        let failure = Failure::Transient(format!(
                            "could not publish what the message dispatched: {error}"
                        ));
                        (
                            settle(Happened::Failed(&failure), &attempt, &self.config.retry),
                            reply,
                        )
                    }
                }
            }
            Outcome::Failed(failure) => {
                let settlement = settle(Happened::Failed(&failure), &attempt, &self.config.retry);
                let reply = match &settlement {
                    Settlement::DeadLetter { code, reason }
                    | Settlement::Refuse { code, reason } => Reply::Rejected {
                        reason: Rejection::new(*code, reason.clone()),
                    },
                    _ => Reply::Rejected {
                        reason: Rejection::new("unsettled", "no reply is due"),
                    },
                };
                (settlement, reply)
            }
        };
        log(&settlement);
        presence::failed(
            &self.config.namespace,
            H::SERVICE,
            &self.config.replica,
            &settlement,
        );
        loop {
            let result = broker::carry_out(
                &item.delivery,
                &settlement,
                &route,
                session.acks.as_ref(),
                body,
                &redact_secrets(body),
                self.reply(session, item, &reply),
            )
            .await;
            match result {
                Ok(()) => {
                    let outcome = match &settlement {
                        Settlement::Ack => kind,
                        Settlement::Refuse { .. } => Settled::Rejected,
                        Settlement::Retry { .. } | Settlement::Requeue => Settled::Retried,
                        Settlement::DeadLetter { .. } => Settled::DeadLettered,
                    };
                    return self.count(item, outcome);
                }
                Err(error) if settlement != Settlement::Requeue => {
                    let failure = Failure::NotSettled(error.to_string());
                    warn!(%error, ?settlement, "could not carry the settlement out");
                    settlement = settle(Happened::Failed(&failure), &attempt, &self.config.retry);
                }
                // The channel is gone: the broker redelivers, and the inbox makes that harmless.
                Err(error) => {
                    warn!(%error, "could not settle the message; the broker will redeliver it");
                    return self.count(item, Settled::Unsettled);
                }
            }
        }
    }

    /// Counts one settled delivery: the one place a message's outcome reaches the metrics.
    fn count(&self, item: &Received<H::Command>, outcome: Settled) {
        presence::settled(
            &self.config.namespace,
            H::SERVICE,
            &self.config.replica,
            outcome,
        );
        metrics::message_settled(
            &self.config.namespace,
            H::SERVICE,
            metrics::type_label::<H::Command>(item.message.message_type.as_deref()),
            outcome,
            item.received_at.elapsed(),
        );
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
                trace: d.trace.clone(),
            };
            if d.wants_reply {
                metadata.reply_to = Some(self.topology.reply_queue(H::SERVICE));
            }
            let message = OutgoingMessage {
                metadata,
                body: d.body_bytes(),
                extra_headers: d
                    .credential
                    .iter()
                    .map(|c| (SERVICE_CREDENTIAL_HEADER, HeaderValue::Text(c.clone())))
                    .collect(),
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
                    broker::publish_confirmed(
                        &session.publisher,
                        "",
                        &self.topology.delay_queue(service),
                        &message.body,
                        broker::delayed_properties(
                            &message,
                            std::time::Duration::from_millis(delay_ms),
                        ),
                    )
                    .await?
                }
            }
        }
        Ok(())
    }

    /// Sends `reply` to the sender of `item`, if it asked for one. A reply to a saga step
    /// whose orders credential verified is signed with this service's own key, when it holds
    /// one: orders takes a step's reply only with its callee's signature. A step refused for
    /// its credential gets an unsigned `forbidden`, so a forger who names a real step's id and
    /// orders' reply queue cannot have catalog's signed refusal reject a real order.
    async fn reply(&self, session: &Session, item: &Received<H::Command>, reply: &Reply) {
        let Some(cause) = item.metadata.as_ref() else {
            return;
        };
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
        let key = self
            .config
            .saga
            .of(H::SERVICE)
            .and_then(|k| k.signing.as_ref());
        if let Some(key) = key
            && item.verified_step
        {
            token::sign_reply(&mut message, &key.0, H::SERVICE);
        }
        // Replies are best effort: the outcome is already committed, and a client that missed
        // it re-sends the same message id and gets the stored reply.
        if let Err(error) = self
            .reply_nodes
            .publish(
                &session.publisher,
                &self.config.amqp_url,
                reply_to,
                &message,
            )
            .await
        {
            warn!(%error, %reply_to, "could not send the reply");
        }
    }
}

/// Logs a settlement once, where it is decided.
fn log(settlement: &Settlement) {
    match settlement {
        Settlement::Ack => {}
        Settlement::Refuse { code, reason } => warn!(code, %reason, "refused; telling the sender"),
        Settlement::Retry { round, delay } => {
            warn!(
                round,
                delay_ms = delay.as_millis() as u64,
                "transient failure; parking in the retry queue"
            )
        }
        Settlement::DeadLetter { code, reason } => {
            error!(code, %reason, "dead-lettering")
        }
        Settlement::Requeue => warn!("handing the message back to its queue"),
    }
}
