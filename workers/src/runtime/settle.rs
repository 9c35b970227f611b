//! The settlement decision: what happens to a delivery, given what happened when it was
//! handled, how often it was tried, and the [`RetryPolicy`]. A pure function over values, so
//! every branch is a unit test without a broker.
//!
//! Every way a message can end arrives here — handled or rejected, an undecodable message, an
//! unreadable stream, a permanent or a transient database error, version conflicts that never
//! stopped, a handler that panicked, a stored dispatch that no longer decodes, a settlement
//! that could not be carried out — and nothing else decides ack, retry, requeue or
//! dead-letter. This module must never do I/O: `broker::carry_out` carries its answer out.

use std::time::Duration;

use super::config::RetryPolicy;
use super::handler::Input;

/// Why a message was not handled. Each variant is one class of failure with one answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The message does not decode (bad body, unknown type, bad ids, …): it never will.
    Undecodable { code: &'static str, reason: String },
    /// A saga step without a valid credential of the orders service (any client may publish
    /// to a queue): it never will have one.
    Forbidden { code: &'static str, reason: String },
    /// A stored event of the stream no longer decodes: the log and the code disagree.
    UnreadableStream(String),
    /// The database refused the command's data (SQLSTATE class 22 or 23).
    Permanent(String),
    /// The database or a dependency failed in a way that may pass.
    Transient(String),
    /// Other writers kept winning the append after every immediate re-decide.
    ConflictsExhausted(String),
    /// The handler panicked. It may be a bug that this message triggers every time.
    Panicked(String),
    /// The message was handled before, but what it dispatched then no longer decodes:
    /// re-sending nothing would silently drop saga steps.
    UndecodableStoredDispatch(String),
    /// The outcome was decided but could not be published (dispatches, retry or dead letter).
    NotSettled(String),
}

/// What handling a message came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Happened<'a> {
    /// Committed, or found committed before (a duplicate): its dispatches are sent and its
    /// reply (acceptance or domain rejection) is due.
    Handled,
    Failed(&'a Failure),
}

/// How often a message was tried already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// Rounds through the retry queue so far (the `x-retry-count` header; 0 at first).
    pub retry_round: u32,
    /// Times the broker delivered it before and it was returned (a quorum queue's
    /// `x-delivery-count`), or `None` when its queue does not count deliveries.
    pub redeliveries: Option<u32>,
    /// Which kind of queue it came from.
    pub input: Input,
}

impl Attempt {
    /// A command's first delivery.
    pub fn first_command() -> Self {
        Self {
            retry_round: 0,
            redeliveries: None,
            input: Input::Commands,
        }
    }
}

/// What to do with a delivery. Carried out by `broker::carry_out`, and only there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Reply (the handled outcome), then ack.
    Ack,
    /// Reply with this rejection, then ack: a query its sender may simply repeat.
    Refuse { code: &'static str, reason: String },
    /// Publish a copy to the retry queue that waits `delay` and carries `round`; then ack.
    Retry { round: u32, delay: Duration },
    /// Publish to the dead-letter queue with the reason, reply with it as a rejection,
    /// then ack.
    DeadLetter { code: &'static str, reason: String },
    /// Give it back to the queue (nack with requeue); the quorum queue counts it.
    Requeue,
}

/// The one decision. See the module documentation.
pub fn settle(happened: Happened<'_>, attempt: &Attempt, policy: &RetryPolicy) -> Settlement {
    let failure = match happened {
        Happened::Handled => return Settlement::Ack,
        Happened::Failed(failure) => failure,
    };
    match failure {
        Failure::Undecodable { code, reason } | Failure::Forbidden { code, reason } => {
            Settlement::DeadLetter {
                code,
                reason: reason.clone(),
            }
        }
        Failure::UnreadableStream(reason) => Settlement::DeadLetter {
            code: "unreadable_stream",
            reason: reason.clone(),
        },
        Failure::Permanent(reason) => Settlement::DeadLetter {
            code: "database_refused",
            reason: format!(
                "the database refused this message's data, which no retry can cure: {reason}"
            ),
        },
        Failure::UndecodableStoredDispatch(reason) => Settlement::DeadLetter {
            code: "undecodable_stored_dispatch",
            reason: format!(
                "this message was handled before, but the messages it dispatched then no longer decode, so they cannot be re-sent: {reason}"
            ),
        },
        Failure::Transient(error) | Failure::ConflictsExhausted(error) => {
            if attempt.input == Input::Queries {
                return Settlement::Refuse {
                    code: "unavailable",
                    reason: format!("the read model could not be read ({error}); try again"),
                };
            }
            if attempt.retry_round < policy.max_rounds {
                Settlement::Retry {
                    round: attempt.retry_round + 1,
                    delay: policy.retry_delay,
                }
            } else {
                Settlement::DeadLetter {
                    code: "retries_exhausted",
                    reason: format!(
                        "gave up after {} retry rounds; last error: {error}",
                        attempt.retry_round
                    ),
                }
            }
        }
        Failure::Panicked(panic) => match attempt.redeliveries {
            // This delivery is number `n + 1`; requeue while the limit allows another.
            Some(n) if n + 1 < policy.delivery_limit => Settlement::Requeue,
            Some(n) => Settlement::DeadLetter {
                code: "handler_panicked",
                reason: format!(
                    "the handler panicked on each of {} deliveries: {panic}",
                    n + 1
                ),
            },
            // A queue that does not count deliveries cannot bound a requeue loop.
            None => Settlement::DeadLetter {
                code: "handler_panicked",
                reason: format!(
                    "the handler panicked (its queue counts no redeliveries, so it is not retried): {panic}"
                ),
            },
        },
        // A broker that refused the publish is not the message's fault: hand it back, and
        // the quorum queue's delivery limit bounds how often.
        Failure::NotSettled(_) => Settlement::Requeue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            in_process_attempts: 3,
            in_process_backoff: Duration::from_millis(50),
            max_rounds: 4,
            retry_delay: Duration::from_millis(700),
            delivery_limit: 3,
            max_conflict_retries: 20,
        }
    }

    fn failed(failure: Failure, attempt: Attempt) -> Settlement {
        settle(Happened::Failed(&failure), &attempt, &policy())
    }

    fn code(settlement: &Settlement) -> &'static str {
        match settlement {
            Settlement::DeadLetter { code, .. } | Settlement::Refuse { code, .. } => code,
            other => panic!("expected a dead letter or refusal, got {other:?}"),
        }
    }

    #[test]
    fn handled_messages_are_acked_whatever_the_attempt() {
        let late = Attempt {
            retry_round: 99,
            redeliveries: Some(99),
            input: Input::Commands,
        };
        assert_eq!(settle(Happened::Handled, &late, &policy()), Settlement::Ack);
        assert_eq!(
            settle(Happened::Handled, &Attempt::first_command(), &policy()),
            Settlement::Ack
        );
    }

    #[test]
    fn forged_saga_steps_are_dead_lettered_with_their_own_code() {
        let s = failed(
            Failure::Forbidden {
                code: "forbidden",
                reason: "no credential".into(),
            },
            Attempt::first_command(),
        );
        assert_eq!(
            s,
            Settlement::DeadLetter {
                code: "forbidden",
                reason: "no credential".into()
            }
        );
    }

    #[test]
    fn undecodable_messages_are_dead_lettered_with_their_own_code() {
        let s = failed(
            Failure::Undecodable {
                code: "invalid_body",
                reason: "expected value at line 1".into(),
            },
            Attempt::first_command(),
        );
        assert_eq!(
            s,
            Settlement::DeadLetter {
                code: "invalid_body",
                reason: "expected value at line 1".into()
            }
        );
    }

    #[test]
    fn unreadable_streams_are_dead_lettered() {
        let s = failed(
            Failure::UnreadableStream("v3: bad".into()),
            Attempt::first_command(),
        );
        assert_eq!(code(&s), "unreadable_stream");
    }

    #[test]
    fn permanent_database_errors_are_dead_lettered_at_once() {
        // Even on the first attempt, with every retry round still available.
        let s = failed(
            Failure::Permanent("division by zero (22012)".into()),
            Attempt::first_command(),
        );
        assert_eq!(code(&s), "database_refused");
        let Settlement::DeadLetter { reason, .. } = s else {
            unreachable!()
        };
        assert!(reason.contains("division by zero"), "{reason}");
    }

    #[test]
    fn undecodable_stored_dispatches_are_a_loud_dead_letter() {
        let s = failed(
            Failure::UndecodableStoredDispatch("missing field `to`".into()),
            Attempt::first_command(),
        );
        assert_eq!(code(&s), "undecodable_stored_dispatch");
    }

    #[test]
    fn transient_failures_retry_with_the_policy_delay_until_the_rounds_run_out() {
        for round in 0..4 {
            let s = failed(
                Failure::Transient("connection reset".into()),
                Attempt {
                    retry_round: round,
                    ..Attempt::first_command()
                },
            );
            assert_eq!(
                s,
                Settlement::Retry {
                    round: round + 1,
                    delay: Duration::from_millis(700)
                }
            );
        }
        let s = failed(
            Failure::Transient("connection reset".into()),
            Attempt {
                retry_round: 4,
                ..Attempt::first_command()
            },
        );
        assert_eq!(code(&s), "retries_exhausted");
        let Settlement::DeadLetter { reason, .. } = s else {
            unreachable!()
        };
        assert!(reason.contains("4 retry rounds") && reason.contains("connection reset"));
    }

    #[test]
    fn conflict_exhaustion_is_retried_like_a_transient_failure() {
        let s = failed(
            Failure::ConflictsExhausted("stream moved".into()),
            Attempt::first_command(),
        );
        assert!(matches!(s, Settlement::Retry { round: 1, .. }), "{s:?}");
        let s = failed(
            Failure::ConflictsExhausted("stream moved".into()),
            Attempt {
                retry_round: 4,
                ..Attempt::first_command()
            },
        );
        assert_eq!(code(&s), "retries_exhausted");
    }

    #[test]
    fn transient_query_failures_are_answered_not_parked() {
        let s = failed(
            Failure::Transient("pool timed out".into()),
            Attempt {
                input: Input::Queries,
                ..Attempt::first_command()
            },
        );
        assert_eq!(code(&s), "unavailable");
        assert!(matches!(s, Settlement::Refuse { .. }));
    }

    #[test]
    fn a_panic_is_requeued_until_the_delivery_limit_then_dead_lettered() {
        let attempt = |n| Attempt {
            redeliveries: Some(n),
            ..Attempt::first_command()
        };
        assert_eq!(
            failed(Failure::Panicked("boom".into()), attempt(0)),
            Settlement::Requeue
        );
        assert_eq!(
            failed(Failure::Panicked("boom".into()), attempt(1)),
            Settlement::Requeue
        );
        let s = failed(Failure::Panicked("boom".into()), attempt(2));
        assert_eq!(code(&s), "handler_panicked");
        let Settlement::DeadLetter { reason, .. } = s else {
            unreachable!()
        };
        assert!(
            reason.contains("3 deliveries") && reason.contains("boom"),
            "{reason}"
        );
    }

    #[test]
    fn a_panic_on_a_queue_that_counts_nothing_is_dead_lettered_at_once() {
        let s = failed(Failure::Panicked("boom".into()), Attempt::first_command());
        assert_eq!(code(&s), "handler_panicked");
    }

    #[test]
    fn a_settlement_that_could_not_be_published_is_handed_back() {
        assert_eq!(
            failed(
                Failure::NotSettled("nacked".into()),
                Attempt::first_command()
            ),
            Settlement::Requeue
        );
    }
}
