//! W3C ids for spans when nothing exports them: a `tracing` layer that gives every span a
//! trace id (its parent's, or a fresh one at a root) and a span id of its own, and nothing else.
//!
//! Why it exists: the messages carry their sender's span as `traceparent`, so every process
//! needs span ids, exporting or not. The `tracing-opentelemetry` layer gives them, but it also
//! builds a full OpenTelemetry span (attributes, events, links) for every span, to drop it at
//! close when there is no exporter: the bench measured that at about a tenth of a worker's
//! throughput. This layer stores two random numbers per span in the registry's extensions.
//! [`crate::runtime::propagation`] reads the OpenTelemetry context when that layer is installed
//! (an OTLP endpoint is set) and these ids otherwise, so a trace is the same trace either way.
//! This module must never log, export, or read a message.

use tracing::span::{Attributes, Id};
use tracing::{Span, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// A span's place in its trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
    /// The vendors' `tracestate`, carried along unchanged from the remote parent.
    pub state: Option<String>,
}

impl SpanIds {
    fn root() -> Self {
        SpanIds {
            trace_id: fastrand::u128(1..),
            span_id: fastrand::u64(1..),
            sampled: true,
            state: None,
        }
    }

    fn child_of(parent: &SpanIds) -> Self {
        SpanIds {
            span_id: fastrand::u64(1..),
            ..parent.clone()
        }
    }
}

/// The layer: install it on a `tracing_subscriber::registry()` in place of the OpenTelemetry
/// layer when spans are not exported.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpanIdLayer;

impl<S> Layer<S> for SpanIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        // The registry has already resolved the parent (explicit, contextual or none).
        let ids = span
            .parent()
            .and_then(|parent| parent.extensions().get::<SpanIds>().map(SpanIds::child_of))
            .unwrap_or_else(SpanIds::root);
        span.extensions_mut().insert(ids);
    }
}

/// The ids this layer gave `span`; `None` when the layer is not installed or the span is
/// disabled.
pub fn get(span: &Span) -> Option<SpanIds> {
    with(span, |ids| ids.clone())
}

/// Makes `span` a child of the remote span `parent`: same trace, `parent`'s sampling and
/// state, its own span id. Like OpenTelemetry's `set_parent`, it must be called before the
/// span has children. `false` when the layer is not installed.
pub fn set_remote_parent(span: &Span, trace_id: u128, sampled: bool, state: Option<&str>) -> bool {
    with(span, |ids| {
        ids.trace_id = trace_id;
        ids.sampled = sampled;
        ids.state = state.map(str::to_owned);
    })
    .is_some()
}

fn with<T>(span: &Span, f: impl FnOnce(&mut SpanIds) -> T) -> Option<T> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let span = registry.span(id)?;
        let mut extensions = span.extensions_mut();
        extensions.get_mut::<SpanIds>().map(f)
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn traced<T>(f: impl FnOnce() -> T) -> T {
        let subscriber = tracing_subscriber::registry().with(SpanIdLayer);
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_root_starts_a_trace_and_its_children_share_it_with_ids_of_their_own() {
        traced(|| {
            let root = tracing::info_span!("root");
            let child = root.in_scope(|| tracing::info_span!("child"));
            let explicit = tracing::info_span!(parent: &root, "explicit");
            let other = tracing::info_span!(parent: None, "other root");
            let (root, child, explicit, other) = (
                get(&root).unwrap(),
                get(&child).unwrap(),
                get(&explicit).unwrap(),
                get(&other).unwrap(),
            );
            assert_eq!(child.trace_id, root.trace_id);
            assert_eq!(explicit.trace_id, root.trace_id);
            assert_ne!(child.span_id, root.span_id);
            assert_ne!(explicit.span_id, child.span_id);
            assert_ne!(other.trace_id, root.trace_id);
            assert!(root.trace_id != 0 && root.span_id != 0);
        });
    }

    #[test]
    fn a_remote_parent_moves_the_span_and_what_it_then_starts_into_the_callers_trace() {
        traced(|| {
            let span = tracing::info_span!("message");
            assert!(set_remote_parent(&span, 42, false, Some("k=v")));
            let child = span.in_scope(|| tracing::info_span!("step"));
            let (span, child) = (get(&span).unwrap(), get(&child).unwrap());
            assert_eq!((span.trace_id, span.sampled), (42, false));
            assert_eq!(span.state.as_deref(), Some("k=v"));
            assert_eq!((child.trace_id, child.sampled), (42, false));
        });
    }

    #[test]
    fn without_the_layer_there_are_no_ids() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("message");
            assert_eq!(get(&span), None);
            assert!(!set_remote_parent(&span, 42, true, None));
        });
    }
}
