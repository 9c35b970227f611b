//! Logging set-up for the binary: the library's `eventline::logging` (stderr, RUST_LOG or a
//! default per role, JSON with EVENTLINE_LOG=json, colour only on a terminal, spans over OTLP
//! with OTEL_EXPORTER_OTLP_ENDPOINT).
//!
//! It must never write to stdout: stdout carries a command's results, which scripts parse.

/// Installs the global subscriber; `default` is the filter when RUST_LOG is unset (servers
/// log at info, client commands only warnings, so their output stays readable). Keep the
/// guard until the command ends: dropping it flushes the spans not yet exported.
pub fn init(default: &str) -> eventline::logging::Telemetry {
    eventline::logging::init(default)
}
