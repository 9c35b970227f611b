//! Exponential backoff with jitter, for reconnecting and for retrying transient failures.
//!
//! Jitter matters here: after a broker restart every replica reconnects at once, and without
//! it they would all retry in lock-step.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// The delay before the next attempt: the current step with ±50% jitter, then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step.mul_f64(0.5 + fastrand::f64())
    }

    /// Waits for the next delay; returns `false` at once if `cancel` fires first.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = cancel.cancelled() => false,
        }
    }
}

/// Runs `session` until it returns `Ok` (a clean stop) or `cancel` fires, starting it again
/// with backoff (100 ms doubling to 5 s, jittered) whenever it fails: the one reconnect loop
/// of every long-lived broker or database task. `what` names the task in the warning.
pub async fn reconnect<E, F, Fut>(cancel: &CancellationToken, what: &str, mut session: F)
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match session().await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, task = what, "session ended; reconnecting");
                if !backoff.wait(cancel).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(150));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(1500)));
        assert!(delays[7] >= Duration::from_millis(500), "{delays:?}");
    }

    #[tokio::test]
    async fn reconnect_runs_again_after_a_failure_and_stops_on_success_or_cancel() {
        let cancel = CancellationToken::new();
        let mut runs = 0;
        reconnect(&cancel, "test", || {
            runs += 1;
            let result = if runs < 2 { Err("down") } else { Ok(()) };
            async move { result }
        })
        .await;
        assert_eq!(runs, 2);
        cancel.cancel();
        let mut runs = 0;
        reconnect(&cancel, "test", || {
            runs += 1;
            async { Err::<(), _>("down") }
        })
        .await;
        assert_eq!(runs, 1, "a cancelled loop does not start again");
    }
}
