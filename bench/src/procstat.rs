//! CPU time and memory of processes, read from `/proc`: the worker children, the relay, and the
//! services they share the machine with.
//!
//! The bench reads these itself instead of asking the workers, so that it measures the real
//! binary without a metrics endpoint and without changing it. Linux only: on a system without
//! `/proc` every read fails with a [`ProcError`] and the report says "n/a" instead of a number.
//! This module only reads; it never signals or otherwise touches a process.

use std::path::PathBuf;

/// Why a figure could not be read. The process may simply have exited between two reads.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not have the expected layout ({what})")]
    Layout { path: PathBuf, what: &'static str },
}

fn read(path: PathBuf) -> Result<String, ProcError> {
    std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

/// Fields of `/proc/<pid>/stat` after the command name, which is in parentheses and may itself
/// contain spaces and parentheses (hence the search for the *last* `)`).
fn stat_fields(pid: u32) -> Result<Vec<String>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = read(path.clone())?;
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or(ProcError::Layout {
            path,
            what: "no ')' after the command name",
        })?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU time of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, ProcError> {
    let fields = stat_fields(pid)?;
    // After the name: state(3) ppid(4) … utime(14) stime(15), i.e. indexes 11 and 12 here.
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => Err(ProcError::Layout {
            path: PathBuf::from(format!("/proc/{pid}/stat")),
            what: "utime/stime are not numbers",
        }),
    }
}

fn parent_pid(pid: u32) -> Option<u32> {
    stat_fields(pid).ok()?.get(1)?.parse().ok()
}

/// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = read(path.clone())?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss_kib), Some(peak_rss_kib)) => Ok(Memory {
            rss_kib,
            peak_rss_kib,
        }),
        _ => Err(ProcError::Layout {
            path,
            what: "no VmRSS/VmHWM lines",
        }),
    }
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The command line of a process, arguments joined by spaces (process titles such as
/// PostgreSQL's `postgres: user db host(port) idle` come back as one argument).
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .split('\0')
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// A value from a process's environment, e.g. the `EVENTLINE_REPLICA` the supervisor set.
fn environment_value(pid: u32, name: &str) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    String::from_utf8_lossy(&bytes)
        .split('\0')
        .find_map(|entry| entry.strip_prefix(&prefix).map(str::to_owned))
}

/// A child process of this one: its pid, the replica name the supervisor gave it, and its
/// command line (`… worker catalog`, `… relay`).
#[derive(Clone, Debug)]
pub struct ChildProcess {
    pub pid: u32,
    pub name: String,
    pub cmdline: String,
}

/// Direct children of this process. The supervisor does not expose its children's pids, so
/// they are found by parent pid, and named by the `EVENTLINE_REPLICA` it put in their
/// environment.
pub fn children() -> Vec<ChildProcess> {
    let me = std::process::id();
    pids()
        .into_iter()
        .filter(|&pid| parent_pid(pid) == Some(me))
        .map(|pid| ChildProcess {
            pid,
            name: environment_value(pid, "EVENTLINE_REPLICA").unwrap_or_else(|| pid.to_string()),
            cmdline: cmdline(pid),
        })
        .collect()
}

/// RabbitMQ's Erlang VM (`beam.smp`): every queue, channel and connection runs inside it.
pub fn broker_pids() -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&pid| comm(pid) == "beam.smp")
        .collect()
}

/// PostgreSQL's processes that work for `database`: its client backends, plus the shared
/// ones (postmaster, WAL writer, checkpointer, autovacuum…). Backends of other databases —
/// other people's tests on the same server — are left out.
pub fn database_pids(database: &str) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&pid| comm(pid) == "postgres" || cmdline(pid).starts_with("postgres"))
        .filter(|&pid| match backend_database(&cmdline(pid)) {
            Some(db) => db == database,
            None => true,
        })
        .collect()
}

/// The database of a client backend's process title `postgres: user db host(port) state`,
/// or `None` for a server-wide process.
fn backend_database(title: &str) -> Option<&str> {
    let rest = title.strip_prefix("postgres: ")?;
    let mut words = rest.split_whitespace();
    let _user = words.next()?;
    let database = words.next()?;
    let host = words.next()?;
    (host.contains('(') || host == "[local]").then_some(database)
}

/// Ticks per second of the CPU times above (`getconf CLK_TCK`; 100 on every Linux we know).
pub fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// The whole machine's CPU time from `/proc/stat`: (busy, total) ticks over all cores.
pub fn machine_ticks() -> Result<(u64, u64), ProcError> {
    let path = PathBuf::from("/proc/stat");
    let text = read(path.clone())?;
    let numbers: Vec<u64> = text
        .lines()
        .find_map(|line| line.strip_prefix("cpu "))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if numbers.len() < 5 {
        return Err(ProcError::Layout {
            path,
            what: "no aggregate 'cpu' line",
        });
    }
    // user nice system idle iowait irq softirq steal …; guest time is already in user.
    let total: u64 = numbers.iter().take(8).sum();
    let idle = numbers[3] + numbers[4];
    Ok((total - idle, total))
}

/// The 1-minute load average (`/proc/loadavg`): on a shared machine, how busy it was
/// before the bench added its own load.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Number of CPUs the machine has, for "% of the machine" figures.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_client_backends_from_server_processes() {
        assert_eq!(
            backend_database("postgres: root eventline_bench_1 127.0.0.1(40000) idle"),
            Some("eventline_bench_1")
        );
        assert_eq!(backend_database("postgres: walwriter "), None);
        assert_eq!(
            backend_database("postgres: autovacuum launcher "),
            None,
            "two words but no host"
        );
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_ok());
        assert!(memory(me).map(|m| m.rss_kib > 0).unwrap_or(false));
        let (busy, total) = machine_ticks().unwrap();
        assert!(busy <= total);
    }
}
