//! `latency.svg`: latency (p50, p95, p99; log scale) against achieved throughput: a line
//! through the open-loop points, saturation (closed loop, so a different regime: its clients
//! wait for each reply) as separate marks, the other replica counts' saturation p99 as marks
//! too, and the targets as dashed lines: p99 at 70% load, and the throughput E/E* asks for.
//!
//! Hand-written SVG: a few dozen elements do not justify a plotting crate, and the file opens
//! in any browser.

use std::fmt::Write as _;

use crate::report::{E_RATIO_GOAL, EndToEnd, PointReport};

const WIDTH: f64 = 820.0;
const HEIGHT: f64 = 500.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// The p99 target line (at 70% load).
const TARGET_P99_MS: f64 = 20.0;

/// Reads one latency percentile of a point.
type Percentile = fn(&PointReport) -> f64;

struct Axes {
    x_max: f64,
    y_min_log: f64,
    y_max_log: f64,
}

impl Axes {
    fn x(&self, value: f64) -> f64 {
        LEFT + (value / self.x_max).clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, ms: f64) -> f64 {
        let log = ms.max(1e-3).log10();
        let t = ((log - self.y_min_log) / (self.y_max_log - self.y_min_log)).clamp(0.0, 1.0);
        HEIGHT - BOTTOM - t * (HEIGHT - TOP - BOTTOM)
    }
}

/// `e_star`: the run's own ceiling; the throughput target line is the E/E* goal times it.
pub fn svg(e2e: &EndToEnd, e_star: f64, title: &str) -> String {
    let throughput_goal = E_RATIO_GOAL * e_star;
    let mut curve: Vec<&PointReport> = e2e.offered.iter().collect();
    curve.sort_by(|a, b| a.load.achieved_per_s.total_cmp(&b.load.achieved_per_s));
    let others: Vec<&PointReport> = e2e.scaling.iter().collect();
    let all = || curve.iter().chain(others.iter());

    let x_max = all()
        .map(|p| p.load.achieved_per_s)
        .fold(throughput_goal, f64::max)
        * 1.1;
    let lowest = all()
        .map(|p| p.load.latency.p50_ms)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let highest = all()
        .map(|p| p.load.latency.p99_ms)
        .fold(TARGET_P99_MS, f64::max);
    let axes = Axes {
        x_max: nice_step(x_max / 5.0) * 5.0,
        y_min_log: if lowest.is_finite() {
            lowest.log10().floor()
        } else {
            -1.0
        },
        y_max_log: highest.log10().ceil().max(1.0),
    };

    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write_svg(&mut s, &axes, &curve, &others, throughput_goal, title);
    s
}

fn write_svg(
    s: &mut String,
    axes: &Axes,
    curve: &[&PointReport],
    others: &[&PointReport],
    throughput_goal: f64,
    title: &str,
) -> std::fmt::Result {
    writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{LEFT}" y="24" font-size="15">{}</text>"#,
        escape(title)
    )?;
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (HEIGHT - BOTTOM, TOP);
    writeln!(
        s,
        r##"<path d="M{x0},{y1} V{y0} H{x1}" stroke="#333" fill="none"/>"##
    )?;
    // Throughput ticks: five even steps.
    for i in 0..=5 {
        let value = axes.x_max * f64::from(i) / 5.0;
        let x = axes.x(value);
        writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{value:.0}</text>"##,
            y0 + 16.0
        )?;
    }
    // Latency ticks: every power of ten.
    let mut decade = axes.y_min_log;
    while decade <= axes.y_max_log + 1e-9 {
        let ms = 10f64.powf(decade);
        let y = axes.y(ms);
        writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            if ms < 1.0 {
                format!("{}", (ms * 1000.0).round() / 1000.0)
            } else {
                format!("{ms:.0}")
            }
        )?;
        decade += 1.0;
    }
    writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">achieved throughput (commands/s)</text>"#,
        (x0 + x1) / 2.0,
        HEIGHT - 18.0
    )?;
    writeln!(
        s,
        r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">latency, publish to reply (ms, log)</text>"#,
        (y0 + y1) / 2.0
    )?;
    // Targets.
    let ty = axes.y(TARGET_P99_MS);
    let tx = axes.x(throughput_goal);
    writeln!(
        s,
        r##"<line x1="{x0}" y1="{ty:.1}" x2="{x1}" y2="{ty:.1}" stroke="#c33" stroke-dasharray="5,4"/><text x="{:.1}" y="{:.1}" fill="#c33">p99 target 20 ms</text>"##,
        x1 + 4.0,
        ty + 4.0
    )?;
    writeln!(
        s,
        r##"<line x1="{tx:.1}" y1="{y0}" x2="{tx:.1}" y2="{y1}" stroke="#c33" stroke-dasharray="5,4"/><text x="{tx:.1}" y="{:.1}" fill="#c33" text-anchor="middle">{throughput_goal:.0} cmd/s target ({E_RATIO_GOAL} E*)</text>"##,
        y1 - 4.0
    )?;
    // One line per percentile over the base curve.
    let series: [(&str, &str, Percentile); 3] = [
        ("p50", "#2a7", |p| p.load.latency.p50_ms),
        ("p95", "#e90", |p| p.load.latency.p95_ms),
        ("p99", "#36c", |p| p.load.latency.p99_ms),
    ];
    for (row, (name, colour, value)) in series.iter().enumerate() {
        let points: Vec<String> = curve
            .iter()
            .map(|p| {
                format!(
                    "{:.1},{:.1}",
                    axes.x(p.load.achieved_per_s),
                    axes.y(value(p))
                )
            })
            .collect();
        writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            points.join(" ")
        )?;
        for p in curve {
            writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"><title>{}: {name} {:.2} ms at {:.0} cmd/s</title></circle>"#,
                axes.x(p.load.achieved_per_s),
                axes.y(value(p)),
                escape(&p.label),
                value(p),
                p.load.achieved_per_s
            )?;
        }
        // Saturation at the base replica count: this percentile as a diamond.
        if let Some(p) = others.first() {
            let (x, y) = (axes.x(p.load.achieved_per_s), axes.y(value(p)));
            writeln!(
                s,
                r#"<path d="M{x:.1},{:.1} l5,5 l-5,5 l-5,-5 z" fill="{colour}"><title>saturation: {name} {:.2} ms at {:.0} cmd/s</title></path>"#,
                y - 5.0,
                value(p),
                p.load.achieved_per_s
            )?;
        }
        let legend_y = TOP + 20.0 + row as f64 * 18.0;
        writeln!(
            s,
            r#"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            x1 + 10.0,
            x1 + 30.0,
            x1 + 36.0,
            legend_y + 4.0
        )?;
    }
    // Saturation at other replica counts: p99 as hollow squares, labelled.
    for p in others.iter().skip(1) {
        let (x, y) = (axes.x(p.load.achieved_per_s), axes.y(p.load.latency.p99_ms));
        writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="none" stroke="#36c"/><text x="{:.1}" y="{:.1}" fill="#36c">{} replicas</text>"##,
            x - 4.0,
            y - 4.0,
            x + 7.0,
            y - 6.0,
            p.replicas
        )?;
    }
    writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" fill="#555">lines: open loop</text><text x="{:.1}" y="{:.1}" fill="#555">diamonds: saturation</text>"##,
        x1 + 10.0,
        TOP + 90.0,
        x1 + 10.0,
        TOP + 104.0
    )?;
    writeln!(s, "</svg>")
}

/// A round tick step (1, 2, 2.5 or 5 times a power of ten) at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
