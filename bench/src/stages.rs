//! Where a command's time goes inside the workers: each worker's `/metrics` is scraped before
//! and after a load point, and the `eventline_message_stage_seconds` `_sum`/`_count` deltas
//! give each stage's mean per message over that point (queue wait, batch wait, transaction,
//! settle); the `_bucket` deltas give its p99, interpolated inside the bucket it falls in as
//! Prometheus' `histogram_quantile` does (so only as fine as the buckets: 5, 10, 25, 50 ms…).
//! Only the deltas mean anything: the counters run from each worker's start.
//!
//! This module reads what the workers export; it never records a metric itself.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use eventline_workers::runtime::http;
use eventline_workers::runtime::metrics::{STAGE_SECONDS, Stage};

/// The stage histograms' running sums (seconds), counts (messages) and cumulative buckets
/// (upper bound in seconds, messages at or below it; `+Inf` included), over every worker
/// scraped, in the order of [`Stage::ALL`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageTotals {
    sum: [f64; 4],
    count: [f64; 4],
    buckets: [Vec<(f64, f64)>; 4],
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
            let (kind, rest) = if let Some(rest) = rest.strip_prefix("_sum") {
                (Series::Sum, rest)
            } else if let Some(rest) = rest.strip_prefix("_count") {
                (Series::Count, rest)
            } else if let Some(rest) = rest.strip_prefix("_bucket") {
                (Series::Bucket, rest)
            } else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            let (Some(i), Ok(value)) = (stage_of(labels), value.parse::<f64>()) else {
                continue;
            };
            match kind {
                Series::Sum => totals.sum[i] += value,
                Series::Count => totals.count[i] += value,
                Series::Bucket => {
                    if let Some(le) = upper_bound(labels) {
                        add_bucket(&mut totals.buckets[i], le, value);
                    }
                }
            }
        }
        totals
    }

    fn add(mut self, other: Self) -> Self {
        for i in 0..4 {
            self.sum[i] += other.sum[i];
            self.count[i] += other.count[i];
            for &(le, count) in &other.buckets[i] {
                add_bucket(&mut self.buckets[i], le, count);
            }
        }
        self
    }

    /// Stage `i`'s `q` quantile (0..1) between `before` and `self`, in milliseconds: found
    /// in the bucket where the rank falls and interpolated linearly inside it (from 0 in the
    /// first); in the `+Inf` bucket, the largest finite bound. `None` when nothing was
    /// recorded, or the buckets did not come with the exposition.
    fn quantile_since(&self, before: &Self, i: usize, q: f64) -> Option<f64> {
        let mut deltas: Vec<(f64, f64)> = self.buckets[i]
            .iter()
            .map(|&(le, count)| {
                let earlier = before.buckets[i]
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0.0, |&(_, c)| c);
                (le, count - earlier)
            })
            .collect();
        deltas.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = deltas.last().map(|&(_, c)| c).filter(|&c| c > 0.0)?;
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, count) in &deltas {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower * 1000.0);
                }
                // `count > below` here: the rank (above 0) passed every earlier bucket.
                let within = (rank - below) / (count - below);
                return Some((lower + (le - lower) * within) * 1000.0);
            }
            (lower, below) = (le, count);
        }
        None
    }

    /// Each stage's mean per message between `before` and `self`, in milliseconds.
    pub fn means_since(&self, before: &Self) -> StageMeans {
        let mean = |i: usize| {
            let messages = self.count[i] - before.count[i];
            (messages > 0.0).then(|| (self.sum[i] - before.sum[i]) / messages * 1000.0)
        };
        let p99 = |i: usize| self.quantile_since(before, i, 0.99);
        StageMeans {
            queue_wait_ms: mean(0),
            batch_wait_ms: mean(1),
            transaction_ms: mean(2),
            settle_ms: mean(3),
            queue_wait_p99_ms: p99(0),
            batch_wait_p99_ms: p99(1),
            transaction_p99_ms: p99(2),
            settle_p99_ms: p99(3),
            messages: self.count[3] - before.count[3],
        }
    }
}

/// Which series of the stage histogram a line is.
enum Series {
    Sum,
    Count,
    Bucket,
}

/// A bucket line's `le` bound in seconds (`+Inf` as infinity).
fn upper_bound(labels: &str) -> Option<f64> {
    let (_, rest) = labels.split_once("le=\"")?;
    let (bound, _) = rest.split_once('"')?;
    match bound {
        "+Inf" => Some(f64::INFINITY),
        bound => bound.parse().ok(),
    }
}

/// Adds `count` to the bucket bounded by `le`, making it if it is new.
fn add_bucket(buckets: &mut Vec<(f64, f64)>, le: f64, count: f64) {
    match buckets.iter_mut().find(|(b, _)| *b == le) {
        Some((_, c)) => *c += count,
        None => buckets.push((le, count)),
    }
}

/// The index in [`Stage::ALL`] of the series whose label set is `labels` (`{...}`).
fn stage_of(labels: &str) -> Option<usize> {
    Stage::ALL
        .iter()
        .position(|stage| labels.contains(&format!("stage=\"{}\"", stage.label())))
}

/// Each stage's mean and p99 per message over one load point, in milliseconds (`None`: no
/// message went through it), and how many messages were settled meanwhile.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StageMeans {
    pub queue_wait_ms: Option<f64>,
    pub batch_wait_ms: Option<f64>,
    pub transaction_ms: Option<f64>,
    pub settle_ms: Option<f64>,
    pub queue_wait_p99_ms: Option<f64>,
    pub batch_wait_p99_ms: Option<f64>,
    pub transaction_p99_ms: Option<f64>,
    pub settle_p99_ms: Option<f64>,
    pub messages: f64,
}

impl StageMeans {
    /// One line: each stage's mean and p99, `-` where nothing was measured.
    pub fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        let p99 = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        format!(
            "queue wait {} / {}  batch wait {} / {}  transaction {} / {}  settle {} / {} ms \
             (mean / p99 in the buckets, of {:.0} messages)",
            ms(self.queue_wait_ms),
            p99(self.queue_wait_p99_ms),
            ms(self.batch_wait_ms),
            p99(self.batch_wait_p99_ms),
            ms(self.transaction_ms),
            p99(self.transaction_p99_ms),
            ms(self.settle_ms),
            p99(self.settle_p99_ms),
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

    /// A queue-wait histogram with these cumulative bucket counts (`le` in seconds).
    fn queue_waits(buckets: &[(&str, f64)]) -> String {
        buckets
            .iter()
            .map(|(le, count)| {
                format!(
                    "{STAGE_SECONDS}_bucket{{namespace=\"b\",service=\"catalog\",stage=\"queue_wait\",le=\"{le}\"}} {count}\n"
                )
            })
            .collect()
    }

    #[test]
    fn the_p99_is_interpolated_in_the_bucket_its_rank_falls_in_over_the_deltas() {
        // Before: 1,000 slow messages from an earlier point, which must not count.
        let before = StageTotals::parse(&queue_waits(&[
            ("0.005", 0.0),
            ("0.01", 0.0),
            ("0.025", 0.0),
            ("+Inf", 1000.0),
        ]));
        // This point: 50 under 5 ms, 48 more under 10 ms, the last 2 under 25 ms. Rank 99 is
        // half way into the (10, 25] bucket: 17.5 ms.
        let after = StageTotals::parse(&queue_waits(&[
            ("0.005", 50.0),
            ("0.01", 98.0),
            ("0.025", 100.0),
            ("+Inf", 1100.0),
        ]));
        let p99 = after.means_since(&before).queue_wait_p99_ms.unwrap();
        assert!((p99 - 17.5).abs() < 1e-9, "{p99}");
        assert_eq!(
            after.means_since(&before).transaction_p99_ms,
            None,
            "no buckets, no p99"
        );
    }

    #[test]
    fn a_p99_past_the_last_bound_is_that_bound_and_workers_add_up_first() {
        let one = StageTotals::parse(&queue_waits(&[("0.005", 90.0), ("+Inf", 90.0)]));
        let two = StageTotals::parse(&queue_waits(&[("0.005", 0.0), ("+Inf", 10.0)]));
        // Together 90 of 100 under 5 ms: the p99 is beyond every finite bound.
        let means = one.add(two).means_since(&StageTotals::default());
        assert_eq!(means.queue_wait_p99_ms, Some(5.0));
        // Alone, the first worker's p99 is inside its first bucket (from 0).
        let alone = StageTotals::parse(&queue_waits(&[("0.005", 90.0), ("+Inf", 90.0)]))
            .means_since(&StageTotals::default());
        assert!(
            (alone.queue_wait_p99_ms.unwrap() - 4.95).abs() < 1e-9,
            "{alone:?}"
        );
    }
}
