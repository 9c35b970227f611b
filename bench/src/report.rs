//! The run's results: one serialisable [`Report`] (written as `bench.json`, to compare
//! commits) and the table printed from it.
//!
//! The JSON holds every figure the table shows and more (each worker's CPU and memory, the
//! CPU of every component at every saturation point, errors); the table is for a person
//! reading one run. Targets are reported as met or missed, never asserted.

use std::fmt::Write as _;

use crate::ceiling::Ceiling;
use crate::load::LoadResult;
use crate::options::Plan;
use crate::raw_broker::BrokerFigures;
use crate::raw_db::DbFigures;
use crate::system::Fill;
use crate::usage::Usage;

/// The second performance round's goal for E/E*: what the chart's throughput line shows too.
pub const E_RATIO_GOAL: f64 = 0.75;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Meta {
    pub bench_version: &'static str,
    /// `git rev-parse HEAD` of the workspace, and whether the tree had changes.
    pub commit: Option<String>,
    pub dirty: Option<bool>,
    pub started_at: String,
    pub seconds: f64,
    pub cpus: usize,
    /// 1-minute load average before the run started: other work on a shared machine.
    pub load_average_before: Option<f64>,
    pub eventline_binary: String,
    pub namespace: String,
    pub database: String,
}

/// One end-to-end load point.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PointReport {
    pub label: String,
    pub replicas: usize,
    pub products: usize,
    /// Events in the log when the point started.
    pub log_events: i64,
    pub load: LoadResult,
    /// Events appended during the point (warm-up included).
    pub appended: i64,
    /// Positions burned by appends that lost a version race and were retried.
    pub conflicts: i64,
    /// Events not yet relayed / projected when the point ended.
    pub relay_lag: i64,
    pub projection_lag: i64,
    /// CPU and memory over the window (saturation points only).
    pub usage: Option<Usage>,
    /// Each stage's mean per message inside the workers, from their `/metrics` (points run
    /// with metrics on only).
    pub stages: Option<crate::stages::StageMeans>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LogGrowth {
    pub fill: Fill,
    pub short_streams: PointReport,
    pub long_streams: PointReport,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EndToEnd {
    pub command: &'static str,
    pub clients: usize,
    /// The AMQP connections the clients shared.
    pub connections: usize,
    /// How the wait for a quiet machine before the first point ended.
    pub quiet: crate::quiet::Quiet,
    pub saturation: PointReport,
    /// The saturation point again, with metrics and tracing off and then on.
    pub observability: Observability,
    pub offered: Vec<PointReport>,
    pub conflict_heavy: PointReport,
    pub scaling: Vec<PointReport>,
    pub log_growth: LogGrowth,
    /// The whole order saga (orders, catalog, payments, relay), closed loop.
    pub saga: crate::saga::SagaReport,
    /// Where the closed loop's confirmed orders spent their time, and messages per order.
    pub saga_stages: crate::saga_stages::SagaStages,
    /// The saga again, open loop at half the closed loop's orders/s.
    pub saga_half: crate::saga::SagaReport,
}

impl EndToEnd {
    /// Catalog saturation divided by the messages one order makes the services handle: the
    /// orders/s the saga would reach if each of its messages cost a catalog command.
    pub fn saga_ceiling(&self) -> Option<f64> {
        let m = self.saga_stages.messages_per_order;
        (m > 0.0).then(|| self.saturation.load.achieved_per_s / m)
    }
}

/// Saturation with the metrics endpoint and per-message spans off, then on, in one run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Observability {
    pub off: PointReport,
    pub on: PointReport,
    /// 70% of saturation with metrics on, right after `on`: where the stages' time goes
    /// below saturation.
    pub on_at_70: PointReport,
}

impl Observability {
    /// Throughput lost by turning them on, in percent of the throughput without them.
    pub fn cost_percent(&self) -> f64 {
        let off = self.off.load.achieved_per_s;
        if off > 0.0 {
            (off - self.on.load.achieved_per_s) / off * 100.0
        } else {
            0.0
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Target {
    pub name: &'static str,
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub meta: Meta,
    pub plan: Plan,
    pub raw_broker: BrokerFigures,
    pub raw_database: DbFigures,
    pub end_to_end: EndToEnd,
    pub ceiling: Ceiling,
    pub targets: Vec<Target>,
}

impl Report {
    /// The targets of the performance issue (round two), each against what this run
    /// measured. "Twice the best peer" is not among them: the peers run beside the bench
    /// (`../shared/peers/run.sh` with `EVENTLINE_JSON`), not inside it.
    pub fn targets(e2e: &EndToEnd, ceiling: &Ceiling) -> Vec<Target> {
        let offered = |label: &str| e2e.offered.iter().find(|p| p.label.starts_with(label));
        let peak_rss = e2e
            .scaling
            .iter()
            .chain([&e2e.saturation, &e2e.log_growth.short_streams])
            .filter_map(|p| p.usage.as_ref())
            .flat_map(|u| u.workers.iter().map(|w| w.peak_rss_mib))
            .fold(0.0_f64, f64::max);
        let mut targets = vec![Target {
            name: "E/E*",
            goal: format!(">= {E_RATIO_GOAL}"),
            measured: format!(
                "{:.2} (best), {:.2} (base)",
                ceiling.ratio_best, ceiling.ratio
            ),
            met: ceiling.ratio_best >= E_RATIO_GOAL,
        }];
        if let Some(p) = offered("70%") {
            targets.push(Target {
                name: "p99 at 70% of saturation",
                goal: "<= 20 ms".into(),
                measured: format!("{:.1} ms", p.load.latency.p99_ms),
                met: p.load.latency.p99_ms <= 20.0,
            });
        }
        if let Some(p) = offered("90%") {
            let offered = p.load.offered_per_s.unwrap_or_default();
            let share = if offered > 0.0 {
                p.load.achieved_per_s / offered
            } else {
                0.0
            };
            targets.push(Target {
                name: "90% of saturation sustained",
                goal: ">= 95% of offered".into(),
                measured: format!(
                    "{:.0} of {offered:.0} cmd/s ({:.0}%)",
                    p.load.achieved_per_s,
                    share * 100.0
                ),
                met: share >= 0.95,
            });
        }
        if let Some(ceiling) = e2e.saga_ceiling() {
            let goal = 0.8 * ceiling;
            targets.push(Target {
                name: "saga orders/s",
                goal: format!(">= {goal:.0} (0.8 x ceiling)"),
                measured: format!("{:.0} orders/s", e2e.saga.orders_per_s),
                met: e2e.saga.orders_per_s >= goal,
            });
        }
        let half = &e2e.saga_half;
        targets.push(Target {
            name: "saga p99 at 50%",
            goal: "<= 100 ms".into(),
            measured: format!(
                "{:.1} ms at {:.0} orders/s",
                half.latency.p99_ms, half.orders_per_s
            ),
            met: half.latency.samples > 0 && half.latency.p99_ms <= 100.0 && half.errors == 0,
        });
        targets.push(Target {
            name: "worker RSS (peak)",
            goal: "<= 32 MiB".into(),
            measured: format!("{peak_rss:.1} MiB"),
            met: peak_rss > 0.0 && peak_rss <= 32.0,
        });
        let empty = e2e.saturation.load.achieved_per_s;
        let grown = &e2e.log_growth;
        let worst = [&grown.short_streams, &grown.long_streams]
            .into_iter()
            .filter(|p| p.load.achieved_per_s > 0.0)
            .map(|p| p.load.achieved_per_s)
            .fold(f64::INFINITY, f64::min);
        if empty > 0.0 && worst.is_finite() {
            targets.push(Target {
                name: "throughput on a grown log",
                goal: ">= 95% of empty".into(),
                measured: format!(
                    "{:.0}% at {} events",
                    worst / empty * 100.0,
                    grown.short_streams.log_events
                ),
                met: worst >= 0.95 * empty,
            });
        }
        let cost = e2e.observability.cost_percent();
        targets.push(Target {
            name: "metrics + traces cost at saturation",
            goal: "< 5% of throughput".into(),
            measured: format!("{cost:.1}%"),
            met: cost < 5.0,
        });
        targets
    }

    /// The table a person reads.
    pub fn table(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_table(&mut out);
        out
    }

    fn write_table(&self, out: &mut String) -> std::fmt::Result {
        let m = &self.meta;
        let b = &self.raw_broker;
        let d = &self.raw_database;
        let e = &self.end_to_end;
        writeln!(
            out,
            "eventline bench  commit {}{}  {}  {} cpus (load average {} before the run)  PostgreSQL {} (synchronous_commit={})  {:.0} s",
            m.commit.as_deref().map_or("?", |c| &c[..c.len().min(10)]),
            if m.dirty == Some(true) { "+dirty" } else { "" },
            m.started_at,
            m.cpus,
            m.load_average_before
                .map_or("n/a".to_owned(), |l| format!("{l:.1}")),
            d.server_version,
            d.synchronous_commit,
            m.seconds
        )?;

        writeln!(
            out,
            "\nRAW BROKER  reserve_stock command: {} B body + {} B headers, persistent; confirm window {}, prefetch {}, ack each",
            b.command_body_bytes, b.command_header_bytes, b.confirm_window, b.prefetch
        )?;
        writeln!(out, "  {:<44} {:>12} {:>12}", "", "publish/s", "consume/s")?;
        for (name, q) in [
            ("classic durable queue", &b.classic),
            ("quorum queue (the command queue's declaration)", &b.quorum),
        ] {
            writeln!(
                out,
                "  {name:<44} {:>12} {:>12}",
                rate(q.publish_per_s),
                rate(q.consume_per_s)
            )?;
        }
        writeln!(
            out,
            "  {:<44} {:>12}",
            "reply by direct reply-to (consumed)",
            rate(b.reply_publish_per_s)
        )?;
        writeln!(
            out,
            "  {:<44} {:>12}",
            "event to the topic exchange (unbound)",
            rate(b.event_publish_per_s)
        )?;

        writeln!(
            out,
            "\nRAW DATABASE  rows shaped like event_log, durable commits"
        )?;
        writeln!(out, "  {:<44} {:>12} {:>12}", "", "rows/s", "commits/s")?;
        for (name, r) in [
            ("single-row INSERT, 1 connection", &d.single_row_1),
            ("single-row INSERT, 8 connections", &d.single_row_8),
            ("UNNEST 100 rows/commit, 1 connection", &d.batched_1),
            ("UNNEST 100 rows/commit, 8 connections", &d.batched_8),
            ("command transaction, 8 connections", &d.command_txn_8),
            ("32-command transaction, 8 connections", &d.command_batch_8),
        ] {
            writeln!(
                out,
                "  {name:<44} {:>12} {:>12}",
                rate(r.rows_per_s),
                rate(r.commits_per_s)
            )?;
        }

        writeln!(
            out,
            "\nEND TO END  {} (quantity 1, fresh order), {} clients on {} connections, published -> committed -> replied; latency from (scheduled) publish to reply",
            e.command, e.clients, e.connections
        )?;
        writeln!(
            out,
            "  first point after {:.1} s waiting for a quiet machine: {:.2} cores busy{}",
            e.quiet.waited_s,
            e.quiet.busy_cores,
            if e.quiet.reached {
                ""
            } else {
                " (the deadline passed first)"
            }
        )?;
        writeln!(
            out,
            "  {:<30} {:>4} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6}",
            "point",
            "repl",
            "offered",
            "cmd/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "errors",
            "confl"
        )?;
        let mut rows: Vec<&PointReport> = vec![
            &e.saturation,
            &e.observability.off,
            &e.observability.on,
            &e.observability.on_at_70,
        ];
        rows.extend(e.offered.iter());
        rows.push(&e.conflict_heavy);
        rows.extend(e.scaling.iter().skip(1));
        rows.push(&e.log_growth.short_streams);
        rows.push(&e.log_growth.long_streams);
        for p in rows {
            let l = &p.load;
            writeln!(
                out,
                "  {:<30} {:>4} {:>9} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>7} {:>6}",
                p.label,
                p.replicas,
                l.offered_per_s
                    .map_or("closed".into(), |o| format!("{o:.0}")),
                format!("{:.0}", l.achieved_per_s),
                l.latency.p50_ms,
                l.latency.p95_ms,
                l.latency.p99_ms,
                l.latency.max_ms,
                l.errors + l.rejected + l.dropped,
                p.conflicts
            )?;
        }
        let worst = |lag: fn(&PointReport) -> i64| {
            e.scaling
                .iter()
                .chain(e.offered.iter())
                .chain([&e.conflict_heavy, &e.log_growth.short_streams])
                .map(lag)
                .max()
                .unwrap_or(0)
        };
        writeln!(
            out,
            "  relay / projection behind the log when a point ended: at most {} / {} events",
            worst(|p| p.relay_lag),
            worst(|p| p.projection_lag)
        )?;
        writeln!(
            out,
            "  metrics + traces cost at saturation: {:.1}% of throughput ({:.0} -> {:.0} cmd/s; goal < 5%)",
            e.observability.cost_percent(),
            e.observability.off.load.achieved_per_s,
            e.observability.on.load.achieved_per_s
        )?;
        for p in [&e.observability.on, &e.observability.on_at_70] {
            if let Some(stages) = &p.stages {
                writeln!(out, "  stages, {}: {}", p.label, stages.line())?;
            }
        }
        let fill = &e.log_growth.fill;
        writeln!(
            out,
            "  log growth: filled {} events in {:.0} s ({} long streams of {} events, the rest in streams of 10)",
            fill.events, fill.seconds, fill.long_streams, fill.long_stream_events
        )?;
        let saga = &e.saga;
        writeln!(
            out,
            "\nORDER SAGA  place_order -> orders -> catalog -> payments -> outcome event, {} clients on {} connections, closed loop",
            saga.clients, saga.connections
        )?;
        writeln!(
            out,
            "  {:.0} orders/s ({:.0} confirmed/s)  p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1} ms  outcomes {:?}  errors {}{}",
            saga.orders_per_s,
            saga.confirmed_per_s,
            saga.latency.p50_ms,
            saga.latency.p95_ms,
            saga.latency.p99_ms,
            saga.latency.max_ms,
            saga.outcomes,
            saga.errors,
            saga.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        )?;

        let half = &e.saga_half;
        writeln!(
            out,
            "  open loop at {:.0} orders/s (50%): {:.0} orders/s  p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1} ms  errors {}  dropped {}",
            half.offered_per_s.unwrap_or_default(),
            half.orders_per_s,
            half.latency.p50_ms,
            half.latency.p95_ms,
            half.latency.p99_ms,
            half.latency.max_ms,
            half.errors,
            half.dropped
        )?;
        let stages = &e.saga_stages;
        writeln!(
            out,
            "  where a confirmed order's time goes (closed loop, {} orders; from each event's transaction start in the log):",
            stages.orders
        )?;
        for stage in &stages.stages {
            writeln!(
                out,
                "    {:<20} p50 {:>7.1}  p99 {:>7.1} ms   {}",
                stage.name, stage.p50_ms, stage.p99_ms, stage.covers
            )?;
        }
        if let Some(ceiling) = e.saga_ceiling() {
            writeln!(
                out,
                "  messages handled per order: {:.2} (events appended: {:.2}); catalog saturation {:.0} cmd/s / {:.2} = saga ceiling {:.0} orders/s; measured {:.0} = {:.2} of it",
                stages.messages_per_order,
                stages.events_per_order,
                e.saturation.load.achieved_per_s,
                stages.messages_per_order,
                ceiling,
                saga.orders_per_s,
                saga.orders_per_s / ceiling
            )?;
        }

        writeln!(
            out,
            "\nRESOURCES AT SATURATION  CPU in cores (of {}) and µs per command; worker memory",
            m.cpus
        )?;
        writeln!(
            out,
            "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
            "point",
            "cmd/s",
            "workers",
            "relay",
            "rabbitmq",
            "postgres",
            "clients",
            "other",
            "machine",
            "worker RSS"
        )?;
        let mut points: Vec<&PointReport> = e.scaling.iter().collect();
        points.push(&e.conflict_heavy);
        points.push(&e.log_growth.short_streams);
        points.push(&e.log_growth.long_streams);
        for p in points {
            let Some(u) = &p.usage else { continue };
            let per_cmd = |name: &str| {
                u.component(name).map_or("n/a".to_owned(), |c| {
                    let commands = p.load.achieved_per_s * u.seconds;
                    if commands > 0.0 {
                        format!("{:.2}/{:.0}", c.cores, c.cpu_seconds / commands * 1e6)
                    } else {
                        format!("{:.2}/-", c.cores)
                    }
                })
            };
            let rss = u
                .workers
                .iter()
                .map(|w| format!("{:.0}", w.peak_rss_mib))
                .collect::<Vec<_>>()
                .join(",");
            writeln!(
                out,
                "  {:<22} {:>9.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9.2} {:>8} MiB",
                p.label,
                p.load.achieved_per_s,
                per_cmd("workers"),
                per_cmd("relay"),
                per_cmd("rabbitmq"),
                per_cmd("postgres"),
                per_cmd("bench clients"),
                per_cmd("other"),
                u.machine_busy_cores,
                rss
            )?;
        }
        if let Some(u) = &e.saga.usage {
            // The saga's workers are orders, catalog and payments together; per order, not
            // per command, over the whole run (warm-up included, as its CPU is).
            let per_order = |name: &str| {
                u.component(name).map_or("n/a".to_owned(), |c| {
                    if e.saga.orders_all > 0 {
                        format!(
                            "{:.2}/{:.0}",
                            c.cores,
                            c.cpu_seconds / e.saga.orders_all as f64 * 1e6
                        )
                    } else {
                        format!("{:.2}/-", c.cores)
                    }
                })
            };
            writeln!(
                out,
                "  {:<22} {:>9.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9.2}",
                "order saga (per order)",
                e.saga.orders_per_s,
                per_order("workers"),
                per_order("relay"),
                per_order("rabbitmq"),
                per_order("postgres"),
                per_order("bench clients"),
                per_order("other"),
                u.machine_busy_cores
            )?;
        }
        writeln!(
            out,
            "  (cores/µs per command, for the saga per order; 'other' is the kernel and everything else on the machine; RSS is each worker's peak)"
        )?;

        let c = &self.ceiling;
        writeln!(
            out,
            "\nCEILING E*  each command costs, per resource, what it must (worker and client CPU: nothing); E* = min over resources of capacity / cost"
        )?;
        writeln!(
            out,
            "  {:<9} {:<8} {:<52} {:>9} {:>9} {:>9}",
            "resource", "share", "operation", "raw/s", "time µs", "CPU µs"
        )?;
        for cost in &c.costs {
            let share = if cost.per_command >= 1.0 {
                format!("{}x", cost.per_command)
            } else {
                format!("1/{:.0} of", 1.0 / cost.per_command)
            };
            writeln!(
                out,
                "  {:<9} {share:<8} {:<52} {:>9} {:>9.1} {:>9.1}",
                cost.resource,
                cost.operation,
                rate(cost.raw_per_s),
                cost.micros * cost.per_command,
                cost.cpu_micros * cost.per_command
            )?;
        }
        writeln!(
            out,
            "  broker {:.0} cmd/s (1/sum of broker time), database {:.0} cmd/s, services' CPU {:.0} cmd/s ({} cores / sum of CPU µs)",
            c.broker_per_s, c.database_per_s, c.cpu_per_s, c.cpus
        )?;
        writeln!(
            out,
            "  => E* = {:.0} cmd/s, bound by {}   (one transaction per command would cap the database at {:.0} cmd/s)",
            c.e_star, c.bound_by, c.database_unbatched_per_s
        )?;
        match &c.load_generator {
            Some(g) => writeln!(
                out,
                "  load generator (the bench's clients) at saturation: {:.2} of {} cores ({:.0}% of the machine, {:.0} µs per command); \
                 on the {:.2} cores it left, services' CPU allows {:.0} cmd/s => E* without its share = {:.0} cmd/s, bound by {}; E/E* = {:.2}",
                g.cores,
                c.cpus,
                g.share * 100.0,
                g.cpu_micros_per_command,
                (c.cpus as f64 - g.cores).max(0.0),
                g.cpu_per_s,
                g.e_star,
                g.bound_by,
                g.ratio
            )?,
            None => writeln!(
                out,
                "  load generator (the bench's clients): CPU not measured (no /proc), so no ceiling without its share"
            )?,
        }
        writeln!(
            out,
            "  E = {:.0} cmd/s at {} replica(s): E/E* = {:.2};  best E = {:.0} cmd/s: E/E* = {:.2}",
            c.e,
            self.plan.base_replicas(),
            c.ratio,
            c.e_best,
            c.ratio_best
        )?;

        writeln!(out, "\nTARGETS (reported, not asserted)")?;
        for t in &self.targets {
            writeln!(
                out,
                "  {:<36} {:<26} {:<40} {}",
                t.name,
                t.goal,
                t.measured,
                if t.met { "met" } else { "MISSED" }
            )?;
        }
        Ok(())
    }
}

/// A rate for a table cell: `12345.6` → `12346`.
fn rate(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.0}")
    } else {
        "n/a".into()
    }
}
