//! Where a command's time goes inside the workers: each worker's `/metrics` is scraped before
//! and after a load point, and the `eventline_message_stage_seconds` `_sum`/`_count` deltas
//! give each stage's mean per message over that point (queue wait, batch wait, transaction,
//! settle). Only the deltas mean anything: the counters run from each worker's start.
//!
//! This module reads what the workers export; it never records a metric itself.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use eventline_workers::runtime::http;
use eventline_workers::runtime::metrics::{STAGE_SECONDS, Stage};

/// The stage histograms' running sums (seconds) and counts (messages), over every worker
/// scraped, in the order of [`Stage::ALL`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTotals {
    sum: [f64; 4],
    count: [f64; 4],
}

impl StageTotals {
    /// Adds up every `_sum` and `_count` series of the stage histogram in one exposition
    /// (one per namespace and service a worker has; a bench worker has one).
    pub fn parse(text: &str) -> Self {
        let mut totals = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some(rest) = line.strip_prefix(STAGE_SECONDS) else {
                continue;
            };
            let (slot, rest) = if let Some(rest) = rest.strip_prefix("_sum") {
                (&mut totals.sum, rest)
            } else if let Some(rest) = rest.strip_prefix("_count") {
                (&mut totals.count, rest)
            } else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            let (Some(i), Ok(value)) = (stage_of(labels), value.parse::<f64>()) else {
                continue;
            };
            slot[i] += value;
        }
        totals
    }

    fn add(mut self, other: Self) -> Self {
        for i in 0..4 {
            self.sum[i] += other.sum[i];
            self.count[i] += other.count[i];
        }
        self
    }

    /// Each stage's mean per message between `before` and `self`, in milliseconds.
    pub fn means_since(&self, before: &Self) -> StageMeans {
        let mean = |i: usize| {
            let messages = self.count[i] - before.count[i];
            (messages > 0.0).then(|| (self.sum[i] - before.sum[i]) / messages * 1000.0)
        };
        StageMeans {
            queue_wait_ms: mean(0),
            batch_wait_ms: mean(1),
            transaction_ms: mean(2),
            settle_ms: mean(3),
            messages: self.count[3] - before.count[3],
        }
    }
}

/// The index in [`Stage::ALL`] of the series whose label set is `labels` (`{...}`).
fn stage_of(labels: &str) -> Option<usize> {
    Stage::ALL
        .iter()
        .position(|stage| labels.contains(&format!("stage=\"{}\"", stage.label())))
}

/// Each stage's mean per message over one load point, in milliseconds (`None`: no message
/// went through it), and how many messages were settled meanwhile.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StageMeans {
    pub queue_wait_ms: Option<f64>,
    pub batch_wait_ms: Option<f64>,
    pub transaction_ms: Option<f64>,
    pub settle_ms: Option<f64>,
    pub messages: f64,
}

impl StageMeans {
    /// One line: each stage's mean, `-` where nothing was measured.
    pub fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        format!(
            "queue wait {}  batch wait {}  transaction {}  settle {} ms (means of {:.0} messages)",
            ms(self.queue_wait_ms),
            ms(self.batch_wait_ms),
            ms(self.transaction_ms),
            ms(self.settle_ms),
            self.messages
        )
    }
}

/// Scrapes every worker's `/metrics` and adds their stage totals up.
pub async fn scrape(workers: &[SocketAddr]) -> anyhow::Result<StageTotals> {
    let mut totals = StageTotals::default();
    for &address in workers {
        let (status, body) = http::get(address, "/metrics", Duration::from_secs(5))
            .await
            .with_context(|| format!("scraping a worker's metrics at {address}"))?;
        ensure!(status == 200, "http://{address}/metrics answered {status}");
        totals = totals.add(StageTotals::parse(&body));
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(transaction: (f64, f64), settle: (f64, f64)) -> String {
        format!(
            "# TYPE {STAGE_SECONDS} histogram\n\
             {STAGE_SECONDS}_bucket{{namespace=\"b\",service=\"catalog\",stage=\"transaction\",le=\"0.005\"}} 3\n\
             {STAGE_SECONDS}_sum{{namespace=\"b\",service=\"catalog\",stage=\"transaction\"}} {}\n\
             {STAGE_SECONDS}_count{{namespace=\"b\",service=\"catalog\",stage=\"transaction\"}} {}\n\
             {STAGE_SECONDS}_sum{{namespace=\"b\",service=\"catalog\",stage=\"settle\"}} {}\n\
             {STAGE_SECONDS}_count{{namespace=\"b\",service=\"catalog\",stage=\"settle\"}} {}\n\
             eventline_message_handling_seconds_sum{{namespace=\"b\",service=\"catalog\"}} 99\n",
            transaction.0, transaction.1, settle.0, settle.1
        )
    }

    #[test]
    fn parsing_takes_only_the_stage_sums_and_counts() {
        let totals = StageTotals::parse(&exposition((0.5, 100.0), (0.25, 100.0)));
        assert_eq!(totals.sum, [0.0, 0.0, 0.5, 0.25]);
        assert_eq!(totals.count, [0.0, 0.0, 100.0, 100.0]);
    }

    #[test]
    fn means_come_from_the_deltas_not_the_running_totals() {
        let before = StageTotals::parse(&exposition((10.0, 1000.0), (1.0, 1000.0)));
        let after = StageTotals::parse(&exposition((10.6, 1200.0), (1.4, 1200.0)));
        let means = after.means_since(&before);
        // 0.6 s over 200 messages is 3 ms; the totals' own mean (10 ms) must not show.
        assert!(
            (means.transaction_ms.unwrap() - 3.0).abs() < 1e-9,
            "{means:?}"
        );
        assert!((means.settle_ms.unwrap() - 2.0).abs() < 1e-9, "{means:?}");
        assert_eq!(means.queue_wait_ms, None, "no message, no mean");
        assert_eq!(means.messages, 200.0);
    }

    #[test]
    fn workers_add_up_before_the_mean() {
        let one = StageTotals::parse(&exposition((0.1, 10.0), (0.0, 0.0)));
        let two = StageTotals::parse(&exposition((0.3, 30.0), (0.0, 0.0)));
        let means = one.add(two).means_since(&StageTotals::default());
        assert!(
            (means.transaction_ms.unwrap() - 10.0).abs() < 1e-9,
            "{means:?}"
        );
    }
}
