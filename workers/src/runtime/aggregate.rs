//! What most services implement: a pure decision function over one stream.
//!
//! `decide`, `apply` and `dispatch` do no I/O, so a service's rules are tested as plain
//! functions (given events, when command, then events or rejection) and [`AggregateHandler`]
//! does the rest: load, decide, append with the expected version, reply.

use std::marker::PhantomData;
use std::sync::Arc;

use eventline_events::reply::ReplyEvent;
use eventline_events::values::StreamId;
use eventline_events::{Contract, EventId, Metadata, Rejection, Reply, Service};

use std::collections::HashMap;

use super::handler::{BATCH_CONFLICT_RETRIES, Context, Dispatch, Handled, Handler, HandlerError};
use super::state_cache::StateCache;
use super::store::{Append, CommandTx, EventMetadata, NewEvent, StoreError};

/// A stream's state, folded from its events. `Clone` because a worker keeps the states it
/// decided on lately and hands out copies (see [`super::state_cache`]).
pub trait State: Clone + Default + Send + Sync + 'static {
    type Event: Contract + Send + Sync + 'static;

    /// The state after `event`. Never fails: events are facts that already happened.
    fn apply(&mut self, event: &Self::Event);
}

/// A consistency boundary: one stream, its state, and the rules for changing it.
pub trait Aggregate: State {
    type Command: Contract + Send + Sync + 'static;
    type Rejection: RejectionReason;

    /// The service whose command queue feeds this aggregate.
    const SERVICE: Service;
    /// Whether the service also consumes replies to the commands it dispatches.
    const CONSUMES_REPLIES: bool = false;

    /// The stream a message is about.
    fn stream_id(command: &Self::Command, ctx: &Context<'_>) -> StreamId;

    /// The events that carrying out `command` records, or why it cannot be carried out.
    /// An empty list means "already done": the command is accepted and nothing changes.
    fn decide(
        &self,
        command: &Self::Command,
        ctx: &Context<'_>,
    ) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// Messages to send because `event` was just recorded (state already includes it).
    /// Sagas use this; plain aggregates send nothing.
    fn dispatch(&self, _event: &Self::Event, _ctx: &Context<'_>) -> Vec<Dispatch> {
        Vec::new()
    }

    /// Whether only the order saga may send `command` (see [`Handler::only_from_saga`]).
    fn only_from_saga(_command: &Self::Command) -> bool {
        false
    }

    /// Which service must have signed `command`, a reply to a saga step (see
    /// [`Handler::answered_by`]).
    fn answered_by(_command: &Self::Command, _metadata: &Metadata) -> Option<Service> {
        None
    }
}

/// A domain rejection: a normal outcome, reported to the sender with a stable code.
pub trait RejectionReason: std::error::Error + Send + Sync + 'static {
    fn code(&self) -> &'static str;
}

/// Streams whose state a worker remembers, per generation (see [`StateCache`]): enough for
/// every product of a big catalog or the orders in flight, a few MiB at most.
const CACHED_STREAMS: usize = 8192;

/// Runs an [`Aggregate`] as a [`Handler`].
pub struct AggregateHandler<A> {
    /// States as of committed versions: a command reads only the events after them.
    cache: Arc<StateCache<A>>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: State> Default for AggregateHandler<A> {
    fn default() -> Self {
        Self {
            cache: Arc::new(StateCache::new(CACHED_STREAMS)),
            _aggregate: PhantomData,
        }
    }
}

impl<A: State> AggregateHandler<A> {
    /// The stream's state and version: the cached state brought up to date with the events
    /// after it (all of them when nothing is cached), read in `tx`.
    async fn load(&self, tx: &mut CommandTx, stream_id: &StreamId) -> Result<(A, i64), StoreError> {
        let (state, version) = self.cache.get(stream_id).unwrap_or_default();
        let events = tx.load_stream_after(stream_id, version).await?;
        fold_onto(stream_id, state, version, events)
    }

    /// Caches `state` at `version` once `tx` has committed it.
    fn remember(&self, tx: &mut CommandTx, stream_id: StreamId, state: A, version: i64) {
        let cache = self.cache.clone();
        tx.after_commit(move || cache.put(stream_id, state, version));
    }
}

/// Replays a stream into its aggregate; returns the state and the stream's version.
pub async fn load<S: State>(
    tx: &mut CommandTx,
    stream_id: &StreamId,
) -> Result<(S, i64), StoreError> {
    fold_onto(stream_id, S::default(), 0, tx.load_stream(stream_id).await?)
}

/// `state` (as of `version`) with `events` (the ones after `version`) applied.
fn fold_onto<S: State>(
    stream_id: &StreamId,
    mut state: S,
    mut version: i64,
    events: Vec<(i64, String, serde_json::Value)>,
) -> Result<(S, i64), StoreError> {
    for (event_version, event_type, data) in events {
        let event = S::Event::from_json(&event_type, data).map_err(|e| {
            StoreError::Corrupt(format!("{stream_id} version {event_version}: {e}"))
        })?;
        state.apply(&event);
        version = event_version;
    }
    Ok((state, version))
}

/// A decision of a batch, waiting for its append.
struct Decided {
    /// Index in the batch.
    index: usize,
    expected: i64,
    events: Vec<NewEvent>,
    dispatch: Vec<Dispatch>,
}

impl<A: Aggregate> Handler for AggregateHandler<A> {
    type Command = A::Command;
    const SERVICE: Service = A::SERVICE;
    const CONSUMES_REPLIES: bool = A::CONSUMES_REPLIES;
    // The append is the only write, and it comes last.
    const BATCH: bool = true;

    fn only_from_saga(&self, command: &A::Command) -> bool {
        A::only_from_saga(command)
    }

    fn answered_by(&self, command: &A::Command, metadata: &Metadata) -> Option<Service> {
        A::answered_by(command, metadata)
    }

    fn stream_hint(&self, command: &A::Command, ctx: &Context<'_>) -> Option<StreamId> {
        Some(A::stream_id(command, ctx))
    }

    async fn handle(
        &self,
        tx: &mut CommandTx,
        ctx: &Context<'_>,
        command: &A::Command,
    ) -> Result<Handled, HandlerError> {
        let stream_id = A::stream_id(command, ctx);
        let (mut state, version) = self.load(tx, &stream_id).await?;
        let events = match state.decide(command, ctx) {
            Err(rejection) => {
                self.remember(tx, stream_id, state, version);
                return Ok(Handled::reply(Reply::Rejected {
                    reason: Rejection::new(rejection.code(), rejection.to_string()),
                }));
            }
            Ok(events) => events,
        };
        let new_events = append_events(tx, ctx, &stream_id, version, &events).await?;
        let mut dispatch = Vec::new();
        for event in &events {
            state.apply(event);
            dispatch.extend(state.dispatch(event, ctx));
        }
        self.remember(tx, stream_id.clone(), state, version + events.len() as i64);
        let reply = accepted(stream_id, version, new_events, None);
        Ok(Handled {
            reply,
            stored_reply: None,
            dispatch,
        })
    }

    /// The whole batch in a few statements however big it is: load every stream it is
    /// about, decide each command in order (each sees the events of the ones before it on
    /// its stream), append everything at once. If another writer appended to one of the
    /// streams meanwhile, nothing goes in and every command is decided again on reloaded
    /// streams.
    async fn handle_batch(
        &self,
        tx: &mut CommandTx,
        batch: &[(Context<'_>, &A::Command)],
    ) -> Result<Vec<Handled>, HandlerError> {
        let streams: Vec<StreamId> = batch.iter().map(|(ctx, c)| A::stream_id(c, ctx)).collect();
        let mut results: Vec<Option<Handled>> = batch.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut rounds = 0;
        while !pending.is_empty() {
            rounds += 1;
            if rounds > 1
                && let Some((ctx, _)) = batch.first()
            {
                super::metrics::conflicts_redecided(
                    &ctx.config.namespace,
                    A::SERVICE,
                    pending.len(),
                );
            }
            if rounds > 1 + BATCH_CONFLICT_RETRIES {
                return Err(StoreError::Conflict {
                    stream_id: streams[pending[0]].to_string(),
                    expected: 0,
                }
                .into());
            }
            let mut wanted: Vec<&StreamId> = pending.iter().map(|&i| &streams[i]).collect();
            wanted.sort();
            wanted.dedup();
            let cached: Vec<(&StreamId, (A, i64))> = wanted
                .into_iter()
                .map(|s| (s, self.cache.get(s).unwrap_or_default()))
                .collect();
            let after: Vec<(&StreamId, i64)> = cached.iter().map(|(s, (_, v))| (*s, *v)).collect();
            let mut loaded = tx.load_streams_after(&after).await?;
            let mut states: HashMap<&StreamId, (A, i64)> = HashMap::with_capacity(cached.len());
            for (stream_id, (state, version)) in cached {
                let events = loaded.remove(stream_id).unwrap_or_default();
                states.insert(stream_id, fold_onto(stream_id, state, version, events)?);
            }
            let mut decided = Vec::new();
            for &i in &pending {
                let (ctx, command) = &batch[i];
                let Some((state, version)) = states.get_mut(&streams[i]) else {
                    return Err(
                        StoreError::Corrupt(format!("{} was not loaded", streams[i])).into(),
                    );
                };
                match state.decide(command, ctx) {
                    Err(rejection) => {
                        results[i] = Some(Handled::reply(Reply::Rejected {
                            reason: Rejection::new(rejection.code(), rejection.to_string()),
                        }));
                    }
                    Ok(events) => {
                        let mut dispatch = Vec::new();
                        for event in &events {
                            state.apply(event);
                            dispatch.extend(state.dispatch(event, ctx));
                        }
                        let expected = *version;
                        *version += events.len() as i64;
                        decided.push(Decided {
                            index: i,
                            expected,
                            events: new_events(&events),
                            dispatch,
                        });
                    }
                }
            }
            let metadata: Vec<EventMetadata> = decided
                .iter()
                .map(|d| batch[d.index].0.event_metadata())
                .collect();
            let appends: Vec<Append<'_>> = decided
                .iter()
                .zip(&metadata)
                .map(|(d, metadata)| Append {
                    stream_id: &streams[d.index],
                    expected_version: d.expected,
                    events: &d.events,
                    metadata,
                })
                .collect();
            let moved = tx.append_all(&appends).await?;
            drop(appends);
            if !moved.is_empty() {
                // Nothing went in: decide everything again, on the reloaded streams.
                tracing::debug!(
                    streams = moved.len(),
                    "version conflict in a batch; deciding again"
                );
                continue;
            }
            for (stream_id, (state, version)) in states {
                self.remember(tx, stream_id.clone(), state, version);
            }
            for d in decided {
                results[d.index] = Some(Handled {
                    reply: accepted(streams[d.index].clone(), d.expected, d.events, None),
                    stored_reply: None,
                    dispatch: d.dispatch,
                });
            }
            pending.clear();
        }
        results
            .into_iter()
            .collect::<Option<Vec<Handled>>>()
            .ok_or_else(|| StoreError::Corrupt("a batch left a command undecided".into()).into())
    }
}

/// Fresh ids and JSON bodies for events about to be appended.
pub fn new_events<E: Contract>(events: &[E]) -> Vec<NewEvent> {
    events
        .iter()
        .map(|event| NewEvent {
            event_id: EventId::new(),
            event_type: event.message_type(),
            data: event.to_json(),
        })
        .collect()
}

/// Appends `events` to `stream_id` after `version`, as recorded while handling `ctx`'s
/// message, and returns them as appended: what [`accepted`] turns into the reply. The one
/// append of a handler that writes a single stream (aggregates, payments, auth).
pub async fn append_events<E: Contract>(
    tx: &mut CommandTx,
    ctx: &Context<'_>,
    stream_id: &StreamId,
    version: i64,
    events: &[E],
) -> Result<Vec<NewEvent>, StoreError> {
    let new_events = new_events(events);
    tx.append(stream_id, version, &new_events, &ctx.event_metadata())
        .await?;
    Ok(new_events)
}

/// The reply for events appended after `version`.
pub fn accepted(
    stream_id: StreamId,
    version: i64,
    events: Vec<NewEvent>,
    result: Option<serde_json::Value>,
) -> Reply {
    Reply::Accepted {
        stream_id,
        events: events
            .into_iter()
            .zip(version + 1..)
            .map(|(event, v)| ReplyEvent {
                event_id: event.event_id,
                message_type: event.event_type.to_owned(),
                stream_version: v as u64,
                data: event.data,
            })
            .collect(),
        result,
    }
}
