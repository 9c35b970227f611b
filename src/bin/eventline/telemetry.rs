//! Logging set-up: `tracing` to stderr, filtered by RUST_LOG (or a default per role), as JSON
//! with EVENTLINE_LOG=json.
//!
//! It must never write to stdout: stdout carries a command's results, which scripts parse.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `default` is the filter when RUST_LOG is unset (servers
/// log at info, client commands only warnings, so their output stays readable).
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("EVENTLINE_LOG").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
