//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) as the contract carries it: the
//! `traceparent` and `tracestate` headers, so that one order is one trace across the client,
//! the four services and the relay.
//!
//! This module only names the headers and checks their shape; the runtime decides which span a
//! message's `traceparent` names. A malformed `traceparent` is never poison: the W3C rule is to
//! ignore it and start a new trace, so [`TraceContext::parse`] returns `None` and the message is
//! handled as if it had none. It must never do I/O, nor reject a message.

use serde::{Deserialize, Serialize};

/// The header that names the trace and the span that sent the message.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Vendor-specific trace state, passed on unchanged.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Longest `tracestate` passed on: the W3C limit is 32 members of at most 256 characters; a
/// longer one is dropped rather than truncated (a cut member would be garbage to its vendor).
const MAX_TRACESTATE_LEN: usize = 32 * 257;

/// A validated `traceparent` (version 00) and the `tracestate` that came with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`, lower case.
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Checks a `traceparent` (and its `tracestate`); `None` when it is not a usable one.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = traceparent.trim();
        let mut parts = traceparent.split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
        // Version 00 has exactly four fields; "ff" is forbidden.
        if version != "00" || parts.next().is_some() {
            return None;
        }
        if !(hex(trace_id, 32) && nonzero(trace_id) && hex(span_id, 16) && nonzero(span_id)) {
            return None;
        }
        if !hex(flags, 2) {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN && s.is_ascii())
            .map(str::to_owned);
        Some(Self {
            traceparent: traceparent.to_owned(),
            tracestate,
        })
    }

    /// Builds one from its parts (lower-case hex, as the runtime's tracer gives them).
    pub fn new(
        trace_id: &str,
        span_id: &str,
        sampled: bool,
        tracestate: Option<&str>,
    ) -> Option<Self> {
        let flags = if sampled { "01" } else { "00" };
        Self::parse(&format!("00-{trace_id}-{span_id}-{flags}"), tracestate)
    }

    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The id of the span that sent the message: the parent of the span that handles it.
    pub fn parent_span_id(&self) -> &str {
        &self.traceparent[36..52]
    }

    /// Whether the sender sampled the trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.traceparent[53..55], 16).is_ok_and(|f| f & 1 == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_w3c_example_parses_into_its_parts() {
        let t = TraceContext::parse(GOOD, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id(), "00f067aa0ba902b7");
        assert!(t.sampled());
        assert_eq!(t.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn malformed_traceparents_are_ignored_not_fatal() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
    }

    #[test]
    fn new_round_trips_through_parse() {
        let t = TraceContext::new(
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
            false,
            None,
        )
        .unwrap();
        assert!(!t.sampled());
        assert_eq!(TraceContext::parse(&t.traceparent, None), Some(t));
    }
}
