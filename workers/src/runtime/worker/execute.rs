//! Execution: gives every decoded message of a batch its [`Outcome`] — in one transaction for
//! the batch where the handler allows it, else (and for whatever that could not settle) in
//! transactions of their own, retrying version conflicts at once and transient failures with a
//! short backoff, as the [`RetryPolicy`](crate::runtime::config::RetryPolicy) says.
//!
//! A handler's panic is caught here and becomes [`Failure::Panicked`]: the task that runs the
//! batch survives, so its deliveries are still settled (a lost panic would hold their prefetch
//! slots for the connection's life). This module must never publish or ack; it classifies.

use std::panic::AssertUnwindSafe;

use eventline_events::{Contract, Metadata, Rejection, Reply};
use futures_util::FutureExt;
use tracing::{Instrument, Span, debug, info, info_span, warn};

use super::{CommandWorker, Outcome, Received};
use crate::runtime::backoff::Backoff;
use crate::runtime::handler::{
    Context, Dispatch, Handled, Handler, HandlerError, Input, MAX_TRANSACTION, transaction_too_long,
};
use crate::runtime::inbox::Digest;
use crate::runtime::metrics;
use crate::runtime::propagation;
use crate::runtime::settle::Failure;
use crate::runtime::store::{BatchClaim, CommandTx, StoreError};

impl<H: Handler> CommandWorker<H> {
    /// The inbox a handler's messages are claimed in.
    pub(super) fn inbox_name() -> String {
        match H::INPUT {
            Input::Commands => format!("{}.commands", H::SERVICE),
            Input::Queries => format!("{}.queries", H::SERVICE),
        }
    }

    /// Gives every decoded message of a batch its outcome: all in one transaction when there
    /// are several, and one transaction each for what that could not settle.
    pub(super) async fn handle_all(&self, items: &mut [Received<H::Command>]) {
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
                let batch = AssertUnwindSafe(self.handle_together(items, &together))
                    .catch_unwind()
                    .await;
                match batch {
                    Ok(Ok(outcomes)) => {
                        for (i, outcome) in outcomes {
                            items[i].outcome = Some(outcome);
                        }
                    }
                    Ok(Err(error)) => {
                        debug!(%error, size = together.len(), "batch rolled back; handling its messages one by one");
                    }
                    Err(panic) => {
                        warn!(panic = %panic_message(&*panic), size = together.len(), "a handler panicked in a batch; handling its messages one by one");
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
        let messages: Vec<(&Metadata, &H::Command)> = decoded
            .iter()
            .filter_map(|(_, item)| item.command.as_ref().map(|(m, c)| (m, c)))
            .collect();
        let (mut tx, claims) = self.begin(&messages).await?;
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
                BatchClaim::Reused => outcomes.push((i, reused(&item.span))),
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
        for trace in batch
            .iter()
            .filter_map(|(ctx, _)| ctx.metadata.trace.as_ref())
        {
            propagation::link(&span, trace);
        }
        let handled = match tokio::time::timeout(
            MAX_TRANSACTION,
            self.handler.handle_batch(&mut tx, &batch).instrument(span),
        )
        .await
        .unwrap_or_else(|_| Err(transaction_too_long()))
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
            let (outcome, reply, outputs) = to_stored(handled, &self.config.saga);
            stored.push((ctx.metadata.message_id, reply, outputs));
            outcomes.push((i, outcome));
        }
        tx.commit_all(&stored).await?;
        Ok(outcomes)
    }

    /// Handles one message in transactions of its own, retrying conflicts at once and
    /// transient failures with a short backoff; permanent failures and panics end at once.
    ///
    /// A query is tried once: it changes nothing, so the client's own re-send is as good a
    /// retry as ours, and a client waiting on a silent database hears `unavailable` after one
    /// acquire timeout (about a second) instead of one per attempt.
    async fn handle(&self, ctx: &Context<'_>, command: &H::Command) -> Outcome {
        let policy = &self.config.retry;
        let attempts = match H::INPUT {
            Input::Queries => 1,
            Input::Commands => policy.in_process_attempts,
        };
        let mut backoff = Backoff::new(
            policy.in_process_backoff,
            std::time::Duration::from_secs(1).max(policy.in_process_backoff),
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let once = AssertUnwindSafe(self.handle_once(ctx, command))
                .catch_unwind()
                .await;
            let error = match once {
                Ok(Ok(outcome)) => return outcome,
                Err(panic) => {
                    let panic = panic_message(&*panic);
                    warn!(%panic, "the handler panicked");
                    return Outcome::Failed(Failure::Panicked(panic));
                }
                Ok(Err(error)) => error,
            };
            let failure = classify(&error);
            match failure {
                Failure::Transient(_) | Failure::ConflictsExhausted(_) if attempt < attempts => {
                    warn!(%error, attempt, "transient failure; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                failure => return Outcome::Failed(failure),
            }
        }
    }

    /// Opens the transaction for `messages`. Commands claim their ids in the inbox, each with
    /// the digest of what it says (see [`Digest`]); queries change nothing, so they claim
    /// nothing (a read-only transaction) and a repeated query simply runs again.
    async fn begin(
        &self,
        messages: &[(&Metadata, &H::Command)],
    ) -> Result<(CommandTx, Vec<BatchClaim>), StoreError> {
        if H::INPUT == Input::Queries {
            let claims = messages.iter().map(|_| BatchClaim::New).collect();
            return Ok((self.store.begin_read().await?, claims));
        }
        let claims: Vec<(&Metadata, Option<Digest>)> = messages
            .iter()
            .map(|(m, c)| {
                (
                    *m,
                    Some(Digest::of(&m.message_type, &Contract::to_json(*c))),
                )
            })
            .collect();
        self.store
            .begin_batch(&Self::inbox_name(), &claims, &self.config.replica)
            .await
    }

    /// One transaction; version conflicts loop here without backoff (another writer won,
    /// so the next attempt sees its events and decides on fresh state).
    async fn handle_once(
        &self,
        ctx: &Context<'_>,
        command: &H::Command,
    ) -> Result<Outcome, HandlerError> {
        // No transaction is open here: the handler's calls to the outside world go now.
        self.handler.outside(&self.store, ctx, command).await?;
        let mut conflicts = 0;
        loop {
            let (tx, mut claims) = self.begin(&[(ctx.metadata, command)]).await?;
            let mut tx = match claims.pop() {
                Some(BatchClaim::New) => tx,
                Some(BatchClaim::Duplicate { reply, outputs }) => {
                    tx.rollback().await?;
                    debug!("duplicate delivery; re-sending the stored outcome");
                    return Ok(duplicate(reply, outputs));
                }
                other => {
                    tx.rollback().await?;
                    return Ok(match other {
                        Some(BatchClaim::Reused) => reused(&Span::current()),
                        _ => Outcome::Failed(Failure::Transient(
                            "the inbox claim returned nothing".into(),
                        )),
                    });
                }
            };
            let handled = match tokio::time::timeout(
                MAX_TRANSACTION,
                self.handler.handle(&mut tx, ctx, command),
            )
            .await
            .unwrap_or_else(|_| Err(transaction_too_long()))
            {
                Ok(handled) => handled,
                Err(error) => {
                    // Roll back now, not when the pooled connection is next used: an open
                    // transaction holds back the relay.
                    let _ = tx.rollback().await;
                    match error {
                        HandlerError::Store(StoreError::Conflict { .. })
                            if conflicts < self.config.retry.max_conflict_retries =>
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
            let (outcome, stored, outputs) = to_stored(handled, &self.config.saga);
            tx.commit(&stored, &outputs).await?;
            return Ok(outcome);
        }
    }
}

/// The class of a handler's error: which [`Failure`] it is.
fn classify(error: &HandlerError) -> Failure {
    match error {
        HandlerError::Store(StoreError::Corrupt(reason)) => {
            Failure::UnreadableStream(reason.clone())
        }
        HandlerError::Store(permanent @ StoreError::Permanent { .. }) => {
            Failure::Permanent(permanent.to_string())
        }
        HandlerError::Store(conflict @ StoreError::Conflict { .. }) => {
            Failure::ConflictsExhausted(conflict.to_string())
        }
        other => Failure::Transient(other.to_string()),
    }
}

/// What a duplicate delivery gets: the stored reply and the same dispatches again. Stored
/// dispatches that no longer decode are a failure, never an empty list: re-sending nothing
/// would silently drop saga steps.
fn duplicate(reply: Option<serde_json::Value>, outputs: serde_json::Value) -> Outcome {
    let dispatch = match serde_json::from_value::<Vec<Dispatch>>(outputs) {
        Ok(dispatch) => dispatch,
        Err(error) => {
            return Outcome::Failed(Failure::UndecodableStoredDispatch(error.to_string()));
        }
    };
    let reply = reply
        .and_then(|r| serde_json::from_value(r).ok())
        .unwrap_or_else(|| Reply::Rejected {
            reason: Rejection::new(
                "duplicate",
                "this message id was already handled; its outcome was not stored",
            ),
        });
    Outcome::Handled {
        reply,
        dispatch,
        duplicate: true,
    }
}

/// What a message gets whose id was already used for a message with other content: a
/// rejection, acked, with no effect and nothing stored. A reply rather than a dead letter: the
/// first message's outcome stands, so there is nothing an operator could re-drive.
fn reused(span: &Span) -> Outcome {
    span.in_scope(|| info!("message id reused with other content; refusing it"));
    Outcome::Handled {
        reply: Reply::Rejected {
            reason: Rejection::new(
                "idempotency_key_reused",
                "this message id was already used for a message with another type or body; \
                 the first message's outcome stands and this one had no effect. \
                 Send a new message under a new message id",
            ),
        },
        dispatch: Vec::new(),
        duplicate: false,
    }
}

/// A handler's result as an outcome, plus the reply and dispatches to store with its inbox row.
///
/// Every dispatch is signed here with the orders service's credential when this process holds
/// its key (only orders' workers do), so no handler can forget to: a step sent unsigned would
/// be dead-lettered as `forbidden` by its receiver.
fn to_stored(
    handled: Handled,
    saga: &crate::runtime::config::SagaKeys,
) -> (Outcome, serde_json::Value, serde_json::Value) {
    let Handled {
        reply,
        stored_reply,
        dispatch,
    } = handled;
    let dispatch: Vec<Dispatch> = dispatch.into_iter().map(|d| d.signed(saga)).collect();
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

/// A panic's message, as far as it has one.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_dispatches_that_do_not_decode_are_a_failure_not_an_empty_list() {
        let outcome = duplicate(None, serde_json::json!([{"to": "nowhere"}]));
        assert!(
            matches!(
                outcome,
                Outcome::Failed(Failure::UndecodableStoredDispatch(_))
            ),
            "{outcome:?}"
        );
        let outcome = duplicate(None, serde_json::json!([]));
        assert!(matches!(outcome, Outcome::Handled { ref dispatch, .. } if dispatch.is_empty()));
    }

    #[test]
    fn errors_are_classified_by_what_can_be_done_about_them() {
        let permanent = HandlerError::Store(StoreError::Permanent {
            sqlstate: "22012".into(),
            message: "division by zero".into(),
        });
        assert!(matches!(classify(&permanent), Failure::Permanent(_)));
        let corrupt = HandlerError::Store(StoreError::Corrupt("v1".into()));
        assert!(matches!(classify(&corrupt), Failure::UnreadableStream(_)));
        let conflict = HandlerError::Store(StoreError::Conflict {
            stream_id: "s".into(),
            expected: 1,
        });
        assert!(matches!(
            classify(&conflict),
            Failure::ConflictsExhausted(_)
        ));
        let transient = HandlerError::Transient("provider down".into());
        assert!(matches!(classify(&transient), Failure::Transient(_)));
        let pool = HandlerError::Store(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert!(matches!(classify(&pool), Failure::Transient(_)));
    }
}
