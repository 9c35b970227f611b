//! Trace context across processes: every message handled is a span whose parent is the span
//! that sent it, so one order is one trace from the client through the four services, their
//! replies and the relay.
//!
//! The wire side (header names, their shape) is [`eventline_events::trace`]; this module is the
//! one bridge between it and the `tracing` spans, through `tracing-opentelemetry`. A process
//! whose subscriber has no OpenTelemetry layer still passes the incoming context on unchanged,
//! so a trace survives an untraced hop (with that hop missing). This module must never export,
//! log, or decide anything about a message's fate.

use std::borrow::Cow;

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
    if let Some(parent) = incoming.and_then(remote_parent) {
        // Fails only when the span is disabled or already started: then it has no context of
        // its own, and `incoming` is passed on below.
        let _ = span.set_parent(parent);
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
        return None;
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
}
