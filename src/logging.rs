//! Log output for every `eventline` command: human-readable lines, or one JSON object per
//! line with `EVENTLINE_LOG=json`, on stderr.
//!
//! Colour codes are written only when stderr is a terminal: logs redirected to a file or
//! collected by a container runtime stay plain text. JSON lines carry the current span and
//! the list of enclosing spans, so each line names the message (message, correlation and
//! causation ids, type, service, replica) it belongs to. This module must never log anything
//! itself, nor read secrets.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `RUST_LOG` if set, else `default` (e.g. `info,sqlx=warn`).
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("EVENTLINE_LOG").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        builder.init();
    }
}
