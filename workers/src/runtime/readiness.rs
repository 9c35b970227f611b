//! Readiness: whether this process is doing its job right now, as `/readyz` reports it.
//!
//! Each part of a process (a worker's consumer, a projection, the relay, the database probe)
//! reports its own state under a component name with [`report`]; the process is ready when
//! every component it has reported is ready, and not ready before the first report. State is
//! kept per namespace because the integration tests run many systems in one process; a
//! production process serves one.
//!
//! This module only records what the components say: it must never probe anything itself
//! or block (a report is one short lock), and a detail must never hold a secret (callers
//! pass errors whose URLs are `SecretUrl`s).

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use eventline_events::Namespace;
use serde::Serialize;

/// One component's last report.
#[derive(Clone, Debug)]
struct Check {
    ready: bool,
    detail: String,
    since: Instant,
}

/// A component's state as `/readyz` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ComponentState {
    pub component: String,
    pub ready: bool,
    pub detail: String,
    /// Seconds since the state last changed.
    pub for_seconds: u64,
}

/// Every component of a namespace in this process, and whether all are ready.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub ready: bool,
    pub components: Vec<ComponentState>,
}

type Components = BTreeMap<String, Check>;

static STATE: LazyLock<Mutex<HashMap<String, Components>>> = LazyLock::new(Default::default);

fn lock() -> std::sync::MutexGuard<'static, HashMap<String, Components>> {
    // Every write is one insert: a panic elsewhere cannot leave it half-written.
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records `component`'s state. `detail` says why, for a person (e.g. the last error).
pub fn report(namespace: &Namespace, component: &str, ready: bool, detail: impl Into<String>) {
    let detail = detail.into();
    let all_ready = {
        let mut state = lock();
        let components = state.entry(namespace.to_string()).or_default();
        let since = match components.get(component) {
            Some(old) if old.ready == ready => old.since,
            _ => Instant::now(),
        };
        components.insert(
            component.to_owned(),
            Check {
                ready,
                detail,
                since,
            },
        );
        components.values().all(|c| c.ready)
    };
    super::metrics::ready(namespace, all_ready);
}

/// Forgets a component that stopped on purpose (shutdown), so it does not hold readiness down.
pub fn remove(namespace: &Namespace, component: &str) {
    let mut state = lock();
    if let Some(components) = state.get_mut(namespace.as_str()) {
        components.remove(component);
    }
}

/// The namespace's components and whether the process is ready: only if at least one
/// component has reported and every one is ready.
pub fn snapshot(namespace: &Namespace) -> Report {
    let state = lock();
    let components: Vec<ComponentState> = state
        .get(namespace.as_str())
        .map(|components| {
            components
                .iter()
                .map(|(name, check)| ComponentState {
                    component: name.clone(),
                    ready: check.ready,
                    detail: check.detail.clone(),
                    for_seconds: check.since.elapsed().as_secs(),
                })
                .collect()
        })
        .unwrap_or_default();
    Report {
        ready: !components.is_empty() && components.iter().all(|c| c.ready),
        components,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_component_is() {
        let ns = Namespace::parse("readiness-unit").unwrap();
        assert!(!snapshot(&ns).ready, "nothing reported yet");
        report(&ns, "catalog.commands consumer", true, "consuming");
        report(&ns, "database", false, "connection refused");
        assert!(!snapshot(&ns).ready);
        report(&ns, "database", true, "answering");
        assert!(snapshot(&ns).ready);
        report(
            &ns,
            "catalog.commands consumer",
            false,
            "broker session ended",
        );
        let report = snapshot(&ns);
        assert!(!report.ready);
        assert_eq!(report.components.len(), 2);
        remove(&ns, "catalog.commands consumer");
        assert!(snapshot(&ns).ready);
    }
}
