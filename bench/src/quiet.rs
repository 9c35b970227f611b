//! Waiting for the machine to go quiet before the first end-to-end point.
//!
//! The first saturation point follows the raw tests and the seeding of the products: the
//! broker is still winding down the raw test's quorum queues, PostgreSQL is still vacuuming
//! and the projector and relay are still catching up. Measured straight after, RabbitMQ
//! once spent 0.71 cores (493 µs per command) against ~0.5 in the same run's later
//! saturation points. So the bench waits until the whole machine's CPU over a short window
//! falls below a threshold, with a deadline, and reports what it found.

use std::time::{Duration, Instant};

use crate::procstat;

/// How the wait for a quiet machine ended.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Quiet {
    /// Seconds waited.
    pub waited_s: f64,
    /// Cores busy (all processes) in the last window measured.
    pub busy_cores: f64,
    /// Whether `busy_cores` fell below the threshold before the deadline.
    pub reached: bool,
}

/// One measuring window: long enough that a 100 Hz tick count means something.
const WINDOW: Duration = Duration::from_millis(500);

/// Waits until the machine's busy cores over one window fall below `threshold`, or
/// `deadline` has passed; either way it says how it ended.
pub async fn wait(threshold: f64, deadline: Duration) -> Quiet {
    let started = Instant::now();
    let mut busy_cores = f64::NAN;
    loop {
        let Ok(before) = procstat::machine_ticks() else {
            // No /proc/stat: nothing to wait on.
            return Quiet::default();
        };
        tokio::time::sleep(WINDOW).await;
        if let Ok(after) = procstat::machine_ticks() {
            busy_cores = cores(before, after, procstat::cpu_count());
        }
        let waited = started.elapsed();
        let reached = busy_cores < threshold;
        if reached || waited >= deadline {
            return Quiet {
                waited_s: waited.as_secs_f64(),
                busy_cores,
                reached,
            };
        }
    }
}

/// Busy cores between two `(busy, total)` readings of `/proc/stat`, on `cpus` cores.
fn cores(before: (u64, u64), after: (u64, u64), cpus: usize) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return f64::NAN;
    }
    after.0.saturating_sub(before.0) as f64 / total as f64 * cpus as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_cores_are_the_busy_share_of_all_cores() {
        assert_eq!(cores((100, 1000), (150, 1200), 2), 0.5);
        assert!(
            cores((100, 1000), (100, 1000), 2).is_nan(),
            "no time passed"
        );
    }
}
