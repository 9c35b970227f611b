//! Who used the CPU during a measured window, and how much memory the workers held.
//!
//! Read from `/proc` at the window's two edges (see [`crate::procstat`]): each worker child,
//! the relay child, RabbitMQ's VM, this run's PostgreSQL processes, the bench itself (the
//! clients), and the whole machine. What the machine spent beyond those is "other": the
//! kernel, and whatever else runs here (other people's builds on a shared machine), which is
//! why it is reported rather than assumed to be zero.

use std::collections::HashMap;
use std::time::Instant;

use crate::load::WindowHook;
use crate::procstat;

/// CPU of one component over the window.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ComponentCpu {
    pub name: String,
    pub cpu_seconds: f64,
    /// Average number of cores it kept busy.
    pub cores: f64,
}

/// One worker process at the end of the window.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WorkerUsage {
    pub name: String,
    pub pid: u32,
    pub cores: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Usage {
    pub seconds: f64,
    pub cpus: usize,
    /// Workers (all replicas), relay, rabbitmq, postgres, bench clients, other.
    pub components: Vec<ComponentCpu>,
    pub machine_busy_cores: f64,
    pub workers: Vec<WorkerUsage>,
}

impl Usage {
    pub fn component(&self, name: &str) -> Option<&ComponentCpu> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// Where a component's processes are found. Read again when the window closes: a process
/// that started inside the window (a pool's connection opened on demand, a worker started
/// for the point) spent all its CPU there, and missing it would charge that CPU to "other".
#[derive(Clone, Copy)]
enum Source {
    /// This run's children whose command line has this word (`worker`, `relay`).
    Children(&'static str),
    Broker,
    Database,
    Bench,
}

struct Group {
    name: &'static str,
    source: Source,
    /// Each process's CPU ticks when the window opened.
    start: HashMap<u32, u64>,
}

/// A [`WindowHook`] that measures [`Usage`] over the window.
pub struct UsageProbe {
    database: String,
    ticks_per_second: f64,
    groups: Vec<Group>,
    workers: Vec<(String, u32, Option<u64>)>,
    machine: Option<(u64, u64)>,
    opened: Option<Instant>,
    pub usage: Option<Usage>,
}

impl UsageProbe {
    pub fn new(database: &str) -> Self {
        Self {
            database: database.to_owned(),
            ticks_per_second: procstat::ticks_per_second(),
            groups: Vec::new(),
            workers: Vec::new(),
            machine: None,
            opened: None,
            usage: None,
        }
    }

    fn pids(&self, source: Source) -> Vec<u32> {
        match source {
            Source::Children(kind) => procstat::children()
                .into_iter()
                .filter(|c| is_kind(c, kind))
                .map(|c| c.pid)
                .collect(),
            Source::Broker => procstat::broker_pids(),
            Source::Database => procstat::database_pids(&self.database),
            Source::Bench => vec![std::process::id()],
        }
    }
}

/// Whether a child of the bench runs as `kind` (`worker`, `relay`): a word of its command line.
fn is_kind(child: &procstat::ChildProcess, kind: &str) -> bool {
    child.cmdline.split_whitespace().any(|word| word == kind)
}

fn ticks(pids: &[u32]) -> HashMap<u32, u64> {
    pids.iter()
        .filter_map(|&pid| Some((pid, procstat::cpu_ticks(pid).ok()?)))
        .collect()
}

/// Ticks spent since `start` by the processes alive now: from their start for those the
/// window's opening saw, all of them for those that started since. (A process that ended
/// inside the window cannot be read and is lost.)
fn spent(start: &HashMap<u32, u64>, now: &HashMap<u32, u64>) -> u64 {
    now.iter()
        .map(|(pid, &end)| end.saturating_sub(start.get(pid).copied().unwrap_or(0)))
        .sum()
}

impl WindowHook for UsageProbe {
    fn opened(&mut self) {
        self.workers = procstat::children()
            .iter()
            .filter(|c| is_kind(c, "worker"))
            .map(|c| (c.name.clone(), c.pid, procstat::cpu_ticks(c.pid).ok()))
            .collect();
        self.groups = [
            ("workers", Source::Children("worker")),
            ("relay", Source::Children("relay")),
            ("rabbitmq", Source::Broker),
            ("postgres", Source::Database),
            ("bench clients", Source::Bench),
        ]
        .into_iter()
        .map(|(name, source)| Group {
            name,
            source,
            start: ticks(&self.pids(source)),
        })
        .collect();
        self.machine = procstat::machine_ticks().ok();
        self.opened = Some(Instant::now());
    }

    fn closed(&mut self) {
        let Some(opened) = self.opened else { return };
        let seconds = opened.elapsed().as_secs_f64().max(1e-3);
        let per_second = self.ticks_per_second;
        let mut components: Vec<ComponentCpu> = self
            .groups
            .iter()
            .map(|group| {
                let now = ticks(&self.pids(group.source));
                let cpu_seconds = spent(&group.start, &now) as f64 / per_second;
                ComponentCpu {
                    name: group.name.to_owned(),
                    cpu_seconds,
                    cores: cpu_seconds / seconds,
                }
            })
            .collect();
        let machine_busy_cores = match (self.machine, procstat::machine_ticks().ok()) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                // /proc/stat counts every core: total ticks per second = cores × tick rate.
                let busy_seconds = busy1.saturating_sub(busy0) as f64 / per_second;
                let accounted: f64 = components.iter().map(|c| c.cpu_seconds).sum();
                components.push(ComponentCpu {
                    name: "other".into(),
                    cpu_seconds: (busy_seconds - accounted).max(0.0),
                    cores: (busy_seconds - accounted).max(0.0) / seconds,
                });
                busy_seconds / seconds
            }
            _ => 0.0,
        };
        let mib = |kib: u64| kib as f64 / 1024.0;
        let workers = self
            .workers
            .iter()
            .map(|(name, pid, start)| {
                let end = procstat::cpu_ticks(*pid).ok();
                let memory = procstat::memory(*pid).unwrap_or_default();
                WorkerUsage {
                    name: name.clone(),
                    pid: *pid,
                    cores: end.zip(*start).map_or(0, |(e, s)| e.saturating_sub(s)) as f64
                        / per_second
                        / seconds,
                    rss_mib: mib(memory.rss_kib),
                    peak_rss_mib: mib(memory.peak_rss_kib),
                }
            })
            .collect();
        self.usage = Some(Usage {
            seconds,
            cpus: procstat::cpu_count(),
            components,
            machine_busy_cores,
            workers,
        });
    }
}

/// Runs `work` and returns its output with the CPU each component used meanwhile; the raw
/// tests use it to charge each operation its CPU on the broker or the database.
pub async fn with_usage<F: std::future::Future>(database: &str, work: F) -> (F::Output, Usage) {
    let mut probe = UsageProbe::new(database);
    probe.opened();
    let output = work.await;
    probe.closed();
    (output, probe.usage.unwrap_or_default())
}

/// Microseconds of `component`'s CPU per operation, over `operations`.
pub fn micros_per(usage: &Usage, component: &str, operations: u64) -> f64 {
    match usage.component(component) {
        Some(c) if operations > 0 => c.cpu_seconds / operations as f64 * 1e6,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_started_inside_the_window_counts_in_full() {
        let start = HashMap::from([(10, 100), (11, 50)]);
        // 10 ran 20 ticks; 11 ended (unreadable, lost); 12 started and ran 7.
        let now = HashMap::from([(10, 120), (12, 7)]);
        assert_eq!(spent(&start, &now), 27);
    }
}
