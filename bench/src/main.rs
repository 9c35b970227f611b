//! `eventline-bench`: measures, in one run on the same RabbitMQ and PostgreSQL, what the two
//! services can do raw and what eventline does with them end to end, and how far apart the two
//! are.
//!
//! Reading this file top to bottom gives the whole run: build (or find) the real `eventline`
//! binary, create a namespace and a database of the run's own, measure the broker raw, the
//! database raw, then the catalog's `reserve_stock` end to end — saturation, open-loop rates,
//! a conflict-heavy mix, 1/2/4 replicas, a grown log — and finally print the table, write
//! `bench.json` and `latency.svg`, and remove everything the run created, even when it fails
//! or is interrupted.
//!
//! The bench measures only. It never changes the runtime or asserts a target: a target missed
//! is a line in the report, not an exit code.

mod ceiling;
mod chart;
mod load;
mod options;
mod procstat;
mod progress;
mod quiet;
mod raw_broker;
mod raw_db;
mod report;
mod saga;
mod saga_stages;
mod stages;
mod system;
mod usage;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use clap::Parser;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::load::{Point, Window, Workload};
use crate::options::{Options, Plan};
use crate::progress::Progress;
use crate::raw_broker::BrokerFigures;
use crate::raw_db::DbFigures;
use crate::report::{EndToEnd, LogGrowth, Meta, PointReport, Report};
use crate::system::System;
use crate::usage::UsageProbe;

/// Off/on pairs of the observability-cost point.
const OBSERVABILITY_ROUNDS: usize = 2;

/// Products whose streams the log fill makes long.
const LONG_STREAMS: u64 = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let plan = Plan::new(&options)?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned);
    let eventline = eventline_binary(options.eventline_bin.as_deref(), workspace.as_deref())?;
    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("creating the output directory {}", plan.out.display()))?;

    let load_average_before = procstat::load_average();
    let started = Instant::now();
    let started_at = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let mut system = within(
        "creating the namespace and database",
        SETUP_PATIENCE,
        System::create(&plan, eventline.clone()),
    )
    .await?;
    eprintln!(
        "eventline-bench: namespace {}, database {}, workers from {}",
        system.namespace,
        system.database_name,
        eventline.display()
    );
    let progress = Progress::new(step_count(&plan));
    let outcome = tokio::select! {
        result = measure(&plan, &mut system, &progress) => result,
        signal = interrupted() => Err(anyhow!("interrupted by {signal}")),
    };
    progress.finish();
    let meta = Meta {
        bench_version: env!("CARGO_PKG_VERSION"),
        commit: workspace
            .as_deref()
            .and_then(|w| git(w, &["rev-parse", "HEAD"])),
        dirty: workspace
            .as_deref()
            .and_then(|w| git(w, &["status", "--porcelain"]))
            .map(|status| !status.is_empty()),
        started_at,
        seconds: started.elapsed().as_secs_f64(),
        cpus: procstat::cpu_count(),
        load_average_before,
        eventline_binary: eventline.display().to_string(),
        namespace: system.namespace.to_string(),
        database: system.database_name.clone(),
    };
    raw_broker::cleanup(&plan.amqp_url, &system.namespace).await;
    system.destroy().await;
    let (raw_broker, raw_database, end_to_end) =
        outcome.context("the benchmark stopped; everything it created has been removed")?;

    let e = end_to_end.saturation.load.achieved_per_s;
    let e_best = end_to_end
        .scaling
        .iter()
        .map(|p| p.load.achieved_per_s)
        .fold(e, f64::max);
    // The clients' CPU over the window that measured E: what the services could not use.
    let clients_cores = end_to_end
        .saturation
        .usage
        .as_ref()
        .and_then(|u| u.component("bench clients"))
        .map(|c| c.cores);
    let ceiling = ceiling::compute(&raw_broker, &raw_database, procstat::cpu_count(), e, e_best)
        .with_load_generator(clients_cores);
    let report = Report {
        targets: Report::targets(&end_to_end, &ceiling),
        meta,
        plan: plan.clone(),
        raw_broker,
        raw_database,
        end_to_end,
        ceiling,
    };
    println!("{}", report.table());
    let json = plan.out.join("bench.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let svg = plan.out.join("latency.svg");
    let title = format!(
        "eventline {} end to end, {} clients, commit {}",
        report.end_to_end.command,
        plan.clients,
        report
            .meta
            .commit
            .as_deref()
            .map_or("?", |c| &c[..c.len().min(10)])
    );
    std::fs::write(
        &svg,
        chart::svg(&report.end_to_end, report.ceiling.e_star, &title),
    )
    .with_context(|| format!("writing {}", svg.display()))?;
    println!("\nwrote {} and {}", json.display(), svg.display());
    Ok(())
}

/// Every phase in order. Each end-to-end point gets fresh products, so they compare.
async fn measure(
    plan: &Plan,
    system: &mut System,
    progress: &Progress,
) -> anyhow::Result<(BrokerFigures, DbFigures, EndToEnd)> {
    let raw_patience = plan.raw_duration * 12 + SETUP_PATIENCE;
    let raw_broker = within(
        "the raw broker test",
        raw_patience,
        raw_broker::measure(plan, &system.namespace, progress),
    )
    .await?;
    let raw_database = within(
        "the raw database test",
        raw_patience,
        raw_db::measure(plan, &system.database_url, &system.database_name, progress),
    )
    .await?;

    progress.phase("starting the relay and workers");
    within(
        "connecting the clients",
        SETUP_PATIENCE,
        system.connect_clients(plan.connections),
    )
    .await?;
    let base = plan.base_replicas();
    within("starting the workers", SETUP_PATIENCE, system.start(base)).await?;

    let workload = within(
        "adding products",
        SETUP_PATIENCE,
        system.seed("s", plan.products, progress),
    )
    .await?;
    progress.phase("waiting for the machine to go quiet");
    let quiet = quiet::wait(QUIET_CORES, QUIET_DEADLINE).await;
    progress.note(format!(
        "quiet: {:.2} cores busy after {:.1} s{}",
        quiet.busy_cores,
        quiet.waited_s,
        if quiet.reached { "" } else { " (deadline)" }
    ));
    let saturation = point(plan, system, progress, "saturation", &workload, None).await?;

    // The cost of metrics and tracing: the same saturation point with both off and on,
    // alternated twice; the better of each pair counts, so one stall of the shared machine
    // does not read as a cost (or a gain).
    let mut off = Vec::new();
    let mut on = Vec::new();
    for round in 0..OBSERVABILITY_ROUNDS {
        for observe in [false, true] {
            system.observe(Some(observe));
            within("starting the workers", SETUP_PATIENCE, system.start(base)).await?;
            let workload = within(
                "adding products",
                SETUP_PATIENCE,
                system.seed(
                    &format!("b{round}{}", u8::from(observe)),
                    plan.products,
                    progress,
                ),
            )
            .await?;
            let label = format!(
                "saturation, metrics+traces {}",
                if observe { "on" } else { "off" }
            );
            let measured = point(plan, system, progress, &label, &workload, None).await?;
            if observe { &mut on } else { &mut off }.push(measured);
        }
    }
    // The same workers (metrics on) below saturation, for where the stages' time goes there.
    let workload = within(
        "adding products",
        SETUP_PATIENCE,
        system.seed("b70", plan.products, progress),
    )
    .await?;
    let rate = STAGES_FRACTION * saturation.load.achieved_per_s;
    let label = format!("{:.0}% of saturation, metrics on", STAGES_FRACTION * 100.0);
    let on_at_70 = point(plan, system, progress, &label, &workload, Some(rate)).await?;
    system.observe(None);
    within("starting the workers", SETUP_PATIENCE, system.start(base)).await?;
    let best = |points: Vec<PointReport>| {
        points
            .into_iter()
            .max_by(|a, b| a.load.achieved_per_s.total_cmp(&b.load.achieved_per_s))
            .unwrap_or_default()
    };
    let observability = report::Observability {
        off: best(off),
        on: best(on),
        on_at_70,
    };

    let mut offered = Vec::new();
    for (i, fraction) in plan.offered_fractions.iter().enumerate() {
        let workload = within(
            "adding products",
            SETUP_PATIENCE,
            system.seed(&format!("o{i}"), plan.products, progress),
        )
        .await?;
        let rate = fraction * saturation.load.achieved_per_s;
        let label = format!("{:.0}% of saturation", fraction * 100.0);
        offered.push(point(plan, system, progress, &label, &workload, Some(rate)).await?);
    }

    let hot = within(
        "adding products",
        SETUP_PATIENCE,
        system.seed("h", plan.hot_products, progress),
    )
    .await?;
    let label = format!("conflict-heavy, {} products", plan.hot_products);
    let conflict_heavy = point(plan, system, progress, &label, &hot, None).await?;

    let mut scaling = vec![saturation.clone()];
    for &replicas in &plan.replicas[1..] {
        progress.phase(format!("restarting with {replicas} replicas"));
        within(
            "starting the workers",
            SETUP_PATIENCE,
            system.start(replicas),
        )
        .await?;
        let workload = within(
            "adding products",
            SETUP_PATIENCE,
            system.seed(&format!("r{replicas}"), plan.products, progress),
        )
        .await?;
        let label = format!("saturation, {replicas} replicas");
        scaling.push(point(plan, system, progress, &label, &workload, None).await?);
    }

    progress.phase(format!("adding {} events to the log", plan.log_size));
    system.stop().await;
    let fill = system
        .fill_log(plan.log_size, LONG_STREAMS, progress)
        .await?;
    progress.done(format!(
        "log         filled {} events in {:.1} s",
        fill.events, fill.seconds
    ));
    within("starting the workers", SETUP_PATIENCE, system.start(base)).await?;
    let workload = within(
        "adding products",
        SETUP_PATIENCE,
        system.seed("g", plan.products, progress),
    )
    .await?;
    let log_events = system.log_mark().await?.events;
    let label = format!("log {}, new streams", compact(log_events));
    let short_streams = point(plan, system, progress, &label, &workload, None).await?;
    let long_streams = if fill.long_streams > 0 {
        let workload = System::long_stream_workload(&fill)?;
        let label = format!(
            "log {}, streams of {}",
            compact(log_events),
            fill.long_stream_events
        );
        point(plan, system, progress, &label, &workload, None).await?
    } else {
        PointReport {
            label: "long streams (log too small)".into(),
            ..PointReport::default()
        }
    };

    progress.phase(format!("order saga, {} clients", plan.clients));
    within(
        "starting the saga's workers",
        SETUP_PATIENCE,
        system.start_saga(base),
    )
    .await?;
    let saga_products = within(
        "adding products",
        SETUP_PATIENCE,
        system.seed("sg", plan.products, progress),
    )
    .await?;
    let saga_clients = within(
        "connecting the saga's clients",
        SETUP_PATIENCE,
        system.saga_clients(plan.connections),
    )
    .await?;
    let window = Window {
        warmup: plan.warmup,
        duration: plan.duration,
    };
    // Every order ends within the request timeout, as every command does in a point.
    let patience = plan.warmup + plan.duration + plan.request_timeout * 2 + SETUP_PATIENCE;
    let before_saga = saga_stages::mark(system.store.pool()).await?;
    let (closed, saga_usage) = usage::with_usage(
        &system.database_name,
        within(
            "the order saga",
            patience,
            saga::closed_loop(
                &saga_clients,
                plan.clients,
                saga_products.product_ids(),
                window,
                plan.request_timeout,
            ),
        ),
    )
    .await;
    let (mut saga, timed) = closed?;
    saga.usage = Some(saga_usage);
    let saga_stages = saga_stages::measure(system.store.pool(), before_saga, &timed).await?;
    progress.done(format!(
        "saga        {:.0} orders/s ({:.0} confirmed/s)  p50 {:.1}  p99 {:.1} ms  errors {}",
        saga.orders_per_s,
        saga.confirmed_per_s,
        saga.latency.p50_ms,
        saga.latency.p99_ms,
        saga.errors
    ));
    let half = saga.orders_per_s * 0.5;
    progress.phase(format!("order saga, open loop at 50% ({half:.0} orders/s)"));
    let saga_half = within(
        "the order saga at 50%",
        patience,
        saga::open_loop(
            &saga_clients,
            half,
            saga_products.product_ids(),
            window,
            plan.request_timeout,
        ),
    )
    .await?;
    progress.done(format!(
        "saga 50%    {:.0} of {half:.0} orders/s  p50 {:.1}  p99 {:.1} ms  errors {}",
        saga_half.orders_per_s,
        saga_half.latency.p50_ms,
        saga_half.latency.p99_ms,
        saga_half.errors
    ));

    let end_to_end = EndToEnd {
        command: "catalog.reserve_stock",
        clients: plan.clients,
        connections: plan.connections,
        quiet,
        saturation,
        observability,
        offered,
        conflict_heavy,
        scaling,
        log_growth: LogGrowth {
            fill,
            short_streams,
            long_streams,
        },
        saga,
        saga_stages,
        saga_half,
    };
    Ok((raw_broker, raw_database, end_to_end))
}

/// Runs one load point — closed loop at saturation when `rate` is `None`, open loop at
/// `rate` otherwise — and gathers what the log, the relay and /proc say about it.
async fn point(
    plan: &Plan,
    system: &System,
    progress: &Progress,
    label: &str,
    workload: &Workload,
    rate: Option<f64>,
) -> anyhow::Result<PointReport> {
    progress.phase(label.to_owned());
    let before = system.log_mark().await?;
    let spec = Point {
        clients: system.clients(),
        workload,
        window: Window {
            warmup: plan.warmup,
            duration: plan.duration,
        },
        timeout: plan.request_timeout,
        progress,
        label,
    };
    // Every command ends within the request timeout, so a point that runs much longer than
    // its window means a service stopped answering.
    let patience = plan.warmup + plan.duration + plan.request_timeout * 2 + SETUP_PATIENCE;
    // Warm-up included: the workers' counters cannot be read at the window's edge exactly.
    let workers = system.worker_metrics();
    let stages_before = if workers.is_empty() {
        None
    } else {
        Some(stages::scrape(workers).await?)
    };
    let (load, usage) = match rate {
        None => {
            let mut probe = UsageProbe::new(&system.database_name);
            let closed = async {
                Ok::<_, anyhow::Error>(load::closed_loop(&spec, plan.clients, &mut probe).await)
            };
            let load = within(label, patience, closed).await?;
            (load, probe.usage)
        }
        Some(rate) => {
            let open = async { Ok::<_, anyhow::Error>(load::open_loop(&spec, rate).await) };
            (within(label, patience, open).await?, None)
        }
    };
    let stages = match stages_before {
        Some(before) => Some(stages::scrape(workers).await?.means_since(&before)),
        None => None,
    };
    let (appended, conflicts) = system.since(before).await?;
    let (relay_lag, projection_lag) = system.lags().await?;
    let report = PointReport {
        label: label.to_owned(),
        replicas: system.replicas(),
        products: workload.products(),
        log_events: before.events,
        load,
        appended,
        conflicts,
        relay_lag,
        projection_lag,
        usage,
        stages,
    };
    let l = &report.load;
    progress.done(format!(
        "e2e         {label:<30} {:>7.0} cmd/s  p50 {:>6.2}  p99 {:>7.2}  max {:>7.1} ms  errors {}{}",
        l.achieved_per_s,
        l.latency.p50_ms,
        l.latency.p99_ms,
        l.latency.max_ms,
        l.errors + l.rejected + l.dropped,
        l.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    ));
    if let Some(stages) = &report.stages {
        progress.note(format!("stages      {label:<30} {}", stages.line()));
    }
    ensure!(
        l.sent > 0,
        "no command was sent during {label}; see the worker logs in {}",
        plan.out.join("logs").display()
    );
    Ok(report)
}

/// The first point waits until the machine's busy cores fall below this (the workers, relay
/// and projectors idle spend a few hundredths of a core) ...
const QUIET_CORES: f64 = 0.25;
/// ... or until this much time has passed, whichever comes first.
const QUIET_DEADLINE: Duration = Duration::from_secs(30);

/// The fraction of saturation at which the stages are also measured (with metrics on).
const STAGES_FRACTION: f64 = 0.7;

/// How long connecting, declaring or seeding may take before the run is declared stuck.
const SETUP_PATIENCE: Duration = Duration::from_secs(120);

/// Runs `work`, or fails after `patience` saying what was stuck: without it, a broker that
/// stops answering (it happens when RabbitMQ runs out of file handles) hangs the bench
/// forever and leaves its namespace and database behind.
async fn within<T, E: Into<anyhow::Error>>(
    what: &str,
    patience: Duration,
    work: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(patience, work).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => bail!(
            "{what} did not finish within {patience:?}; RabbitMQ or PostgreSQL may have stopped \
             answering (for RabbitMQ, check `rabbitmqctl status` for file handles and alarms)"
        ),
    }
}

/// Resolves on Ctrl-C or SIGTERM (what `timeout` and CI send), naming the signal, so that the
/// run still removes what it created.
async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => return "SIGTERM",
                _ = tokio::signal::ctrl_c() => return "Ctrl-C",
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}

fn step_count(plan: &Plan) -> u64 {
    let raw = 4 + 5;
    let e2e = 1
        + 2 * OBSERVABILITY_ROUNDS
        + 1
        + plan.offered_fractions.len()
        + 1
        + (plan.replicas.len() - 1)
        + 1
        + 2
        + 1;
    (raw + e2e) as u64
}

fn compact(n: i64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.0}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// The `eventline` binary whose workers are measured: `explicit` if given; otherwise built
/// with cargo in the bench's own profile (a no-op when up to date) and taken from the
/// directory the bench itself runs from, which is where that build puts it.
fn eventline_binary(explicit: Option<&Path>, workspace: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        ensure!(
            path.is_file(),
            "--eventline-bin {} does not exist; build it with `cargo build --release -p eventline`",
            path.display()
        );
        return Ok(path.to_owned());
    }
    let release = !cfg!(debug_assertions);
    if !release {
        eprintln!(
            "warning: this bench is a debug build, and so will be the workers it measures; \
             run it as `cargo run --release -p eventline-bench` for figures that mean something"
        );
    }
    if let Some(workspace) = workspace.filter(|w| w.join("Cargo.toml").is_file()) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(&cargo);
        build.current_dir(workspace).args([
            "build",
            "--quiet",
            "-p",
            "eventline",
            "--bin",
            "eventline",
        ]);
        if release {
            build.arg("--release");
        }
        match build.status() {
            Ok(status) if status.success() => {}
            Ok(status) => bail!(
                "building the eventline binary failed ({status}); run `cargo build --release -p eventline` in {} to see why",
                workspace.display()
            ),
            Err(error) => bail!(
                "could not run cargo to build the eventline binary ({error}); build it with \
                 `cargo build --release -p eventline` and pass --eventline-bin target/release/eventline"
            ),
        }
    }
    let exe = std::env::current_exe()?
        .parent()
        .map(|dir| dir.join("eventline"))
        .context("the bench's own path has no directory")?;
    ensure!(
        exe.is_file(),
        "{} is missing; run `cargo build --release` in the workspace, or pass --eventline-bin <path>",
        exe.display()
    );
    Ok(exe)
}

/// Output of a git command in the workspace, if git and a repository are there.
fn git(workspace: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(workspace)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
