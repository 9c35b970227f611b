//! Trace context across processes: every message handled is a span whose parent is the span
//! that sent it, so one order is one trace from the client through the four services, their
//! replies and the relay.
//!
//! The wire side (header names, their shape) is [`eventline_events::trace`]; this module is the
//! one bridge between it and the `tracing` spans: through `tracing-opentelemetry` when that
//! layer is installed (spans are exported), else through the ids of
//! [`crate::runtime::span_ids`] (the same trace, at a fraction of the cost). A process whose
//! subscriber has neither still passes the incoming context on unchanged, so a trace survives
//! an untraced hop (with that hop missing). This module must never export,
//! log, or decide anything about a message's fate.

use std::borrow::Cow;

use crate::runtime::span_ids;
use eventline_events::OutgoingMessage;
use eventline_events::trace::TraceContext;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes `span` the child of the span named by `incoming` (a new trace's root when there is
/// none), records its `trace_id` and `span_id` fields (which the span must declare, empty),
/// and returns the context to put on whatever it causes: its own, or `incoming` unchanged
/// when this process does not trace.
pub fn continue_trace(span: &Span, incoming: Option<&TraceContext>) -> Option<TraceContext> {
    if let Some(incoming) = incoming {
        if let Some(parent) = remote_parent(incoming) {
            // Fails only when the span is disabled or already started: then it has no context
            // of its own, and `incoming` is passed on below.
            let _ = span.set_parent(parent);
        }
        if let Ok(trace_id) = u128::from_str_radix(incoming.trace_id(), 16) {
            span_ids::set_remote_parent(
                span,
                trace_id,
                incoming.sampled(),
                incoming.tracestate.as_deref(),
            );
        }
    }
    let own = of(span);
    if let Some(trace) = own.as_ref().or(incoming) {
        span.record("trace_id", trace.trace_id());
    }
    if let Some(own) = &own {
        span.record("span_id", own.parent_span_id());
    }
    own.or_else(|| incoming.cloned())
}

/// The context naming `span` as the parent of what it sends; `None` when it is not traced.
pub fn of(span: &Span) -> Option<TraceContext> {
    let cx = span.context();
    let otel = cx.span();
    let context = otel.span_context();
    if !context.is_valid() {
        let ids = span_ids::get(span)?;
        return TraceContext::new(
            &format!("{:032x}", ids.trace_id),
            &format!("{:016x}", ids.span_id),
            ids.sampled,
            ids.state.as_deref(),
        );
    }
    let state = context.trace_state().header();
    TraceContext::new(
        &format!("{:032x}", context.trace_id()),
        &format!("{:016x}", context.span_id()),
        context.is_sampled(),
        Some(state.as_str()).filter(|s| !s.is_empty()),
    )
}

/// `message`, with the current span as its sender when it names none: what a client does
/// before it publishes, so a traced caller's trace continues into the services.
pub fn stamped(message: &OutgoingMessage) -> Cow<'_, OutgoingMessage> {
    if message.metadata.trace.is_some() {
        return Cow::Borrowed(message);
    }
    match of(&Span::current()) {
        Some(trace) => {
            let mut message = message.clone();
            message.metadata.trace = Some(trace);
            Cow::Owned(message)
        }
        None => Cow::Borrowed(message),
    }
}

/// Links `span` to the span `trace` names: how a span that serves several messages (a batch's
/// transaction) points at each of them without joining any one message's trace.
pub fn link(span: &Span, trace: &TraceContext) {
    if let Some(context) = span_context(trace) {
        span.add_link(context);
    }
}

/// The sender's span as a remote parent.
fn remote_parent(trace: &TraceContext) -> Option<opentelemetry::Context> {
    let context = span_context(trace)?;
    Some(opentelemetry::Context::new().with_remote_span_context(context))
}

fn span_context(trace: &TraceContext) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(trace.trace_id()).ok()?;
    let span_id = SpanId::from_hex(trace.parent_span_id()).ok()?;
    let flags = if trace.sampled() {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state = trace
        .tracestate
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_tracer_the_incoming_context_passes_through() {
        let incoming = TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            None,
        );
        let span = tracing::info_span!("message", trace_id = tracing::field::Empty);
        assert_eq!(continue_trace(&span, incoming.as_ref()), incoming);
        assert_eq!(continue_trace(&span, None), None);
    }

    #[test]
    fn with_span_ids_a_message_span_continues_the_senders_trace_as_its_child() {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(span_ids::SpanIdLayer);
        tracing::subscriber::with_default(subscriber, || {
            let incoming = TraceContext::parse(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Some("vendor=1"),
            )
            .unwrap();
            let span = tracing::info_span!("message", trace_id = tracing::field::Empty);
            let own = continue_trace(&span, Some(&incoming)).expect("a context of its own");
            assert_eq!(own.trace_id(), incoming.trace_id());
            assert_ne!(own.parent_span_id(), incoming.parent_span_id());
            assert!(own.sampled());
            assert_eq!(own.tracestate.as_deref(), Some("vendor=1"));
            // What the handling sends names this span, from inside it too.
            let step = span.in_scope(|| of(&Span::current())).unwrap();
            assert_eq!(step, own);
            // A message with no context starts a trace of its own.
            let fresh = tracing::info_span!("message", trace_id = tracing::field::Empty);
            let started = continue_trace(&fresh, None).expect("a new trace");
            assert_ne!(started.trace_id(), incoming.trace_id());
        });
    }
}
