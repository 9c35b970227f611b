//! The chaos report: one row per scenario, what it measured and whether it kept the promise,
//! and the table `eventline chaos` prints.

use super::Checks;
use std::time::Duration;

/// One row of the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub faults_injected: usize,
    /// What the faults did, as seen: processes killed, connections terminated, reconnections
    /// through the proxies.
    pub evidence: String,
    /// Connections the workers opened through the proxies after the load began (each
    /// reconnection after a fault is one).
    pub reconnections: u64,
    /// Orders placed (each retried under one message id until answered).
    pub sent: usize,
    /// Orders the system accepted (placed); the others were refused with a reason.
    pub accepted: usize,
    /// Accepted orders missing from the log or not ended within the bound.
    pub lost: usize,
    /// Effects recorded more than once (an event per command, a charge or a reservation per
    /// order).
    pub duplicated: usize,
    /// The longest time from a fault's end until a fresh command was answered.
    pub longest_recovery: Duration,
    /// From the last fault's end until every accepted order had ended.
    pub settled_after: Duration,
    /// The longest a committed event waited for the relay during the load (sampled).
    pub relay_worst_lag: Duration,
    pub checks: Checks,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.checks.failures().is_empty()
    }
}

/// The report as a Markdown table.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | faults injected | what happened | commands sent | accepted | lost | duplicated | longest recovery | all ended after | relay worst lag | invariants |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let failures = r.checks.failures();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} s | {:.1} s | {:.2} s | {} |\n",
            r.scenario,
            r.faults_injected,
            r.evidence,
            r.sent,
            r.accepted,
            r.lost,
            r.duplicated,
            r.longest_recovery.as_secs_f64(),
            r.settled_after.as_secs_f64(),
            r.relay_worst_lag.as_secs_f64(),
            if failures.is_empty() {
                "all hold".to_owned()
            } else {
                failures.join("; ")
            }
        ));
    }
    out
}
