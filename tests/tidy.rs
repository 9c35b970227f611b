//! Architecture invariants as tests (rust-analyzer's "tidy" style): each rule reads the source
//! tree and fails, naming the file and line, when an invariant of ARCHITECTURE.md is broken.
//! Every checker is a pure function over file text, and is itself tested on a bad snippet.
//! Plain std only: no broker, no database, so it runs in milliseconds.

use std::path::{Path, PathBuf};

/// Production source trees (tests may build raw AMQP frames to attack the workers).
const SOURCE_ROOTS: &[&str] = &["src", "workers/src", "events/src", "amqp/src", "bench/src"];

/// The only file that builds AMQP properties and field tables, and acks or nacks (the
/// workers' `runtime::broker` re-exports it and only chooses among its functions).
const BROKER: &str = "amqp/src/broker.rs";
/// The only file that spells a broker name.
const TOPOLOGY: &str = "events/src/topology.rs";

/// Files exempt from a rule, each with the reason. Keep it short: an entry is a debt.
const RAW_BROKER_BASELINE: &str = "bench/src/raw_broker.rs";
/// (file, why) exempt from the AMQP-construction and ack rules.
const AMQP_EXEMPT: &[(&str, &str)] = &[(
    RAW_BROKER_BASELINE,
    "the raw broker baseline measures lapin itself, without the runtime around it",
)];
/// (file, literal, why) exempt from the broker-name rule.
const NAME_EXEMPT: &[(&str, &str, &str)] = &[
    (
        "workers/src/runtime/worker/execute.rs",
        "{}.commands",
        "an inbox key in processed_messages, not a broker name; stored rows depend on it",
    ),
    (
        "workers/src/runtime/worker/execute.rs",
        "{}.queries",
        "an inbox key in processed_messages, not a broker name; stored rows depend on it",
    ),
    (
        "bench/src/raw_db.rs",
        "catalog.commands",
        "the catalog worker's inbox key, bound by the raw database baseline",
    ),
];

/// Crates that do I/O, which `events/` (the wire contract) must never depend on.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tokio-util",
    "lapin",
    "sqlx",
    "reqwest",
    "hyper",
    "mio",
    "async-std",
    "futures",
    "futures-util",
    "tracing-subscriber",
];

/// Crates an application that embeds the client must not get: the workers' crate and what only
/// the workers need (the database, the HTTP server, metrics), and `anyhow` (errors are values).
/// A name also bars its family (`sqlx` bars `sqlx-core`).
const NOT_FOR_THE_CLIENT: &[&str] = &["eventline-workers", "sqlx", "axum", "metrics", "anyhow"];

// ---------------------------------------------------------------- the checkers (pure)

/// Lines of `text` that build AMQP properties or field tables.
fn builds_amqp_properties(text: &str) -> Vec<usize> {
    const BUILDS: &[&str] = &[
        "BasicProperties::default",
        "FieldTable::default",
        "FieldTable::from",
        ".with_headers(",
        ".with_expiration(",
        "AMQPValue::",
    ];
    matching_lines(text, BUILDS)
}

/// Lines of `text` that ack, nack or reject a delivery.
fn settles_deliveries(text: &str) -> Vec<usize> {
    const SETTLES: &[&str] = &[
        "basic_ack",
        "basic_nack",
        "basic_reject",
        ".ack(",
        ".nack(",
        ".reject(",
    ];
    matching_lines(text, SETTLES)
}

/// Lines of a service's file that reach for the broker, lapin, a pool or a connection.
fn service_does_io(text: &str) -> Vec<usize> {
    const IO: &[&str] = &[
        "runtime::broker",
        "lapin",
        "PgPool",
        "sqlx::Pool",
        "EventStore",
        "PgConnection::connect",
        "connect_lazy",
    ];
    matching_lines(text, IO)
}

/// The string literals of `text` that look like broker names: `….commands`, `….queries`,
/// `….retry`, `….replies`, `….delay`, `….dead-letter`, `….events`, `….tap.…`, or `amq.…`.
fn broker_names(text: &str) -> Vec<(usize, String)> {
    const SUFFIXES: &[&str] = &[
        ".commands",
        ".queries",
        ".retry",
        ".replies",
        ".delay",
        ".dead-letter",
        ".events",
        ".tap.",
    ];
    let mut found = Vec::new();
    for (number, line) in code_lines(text) {
        for literal in string_literals(line) {
            let named = literal.starts_with("amq.")
                || SUFFIXES.iter().any(|suffix| {
                    literal.match_indices(suffix).any(|(at, _)| {
                        let before = literal[..at].chars().last();
                        let after = literal[at + suffix.len()..].chars().next();
                        // `{ns}.commands`, `catalog.commands`: a name part before it, and
                        // the end of the name (or a further part) after it.
                        before.is_some_and(|c| c.is_alphanumeric() || c == '}' || c == '_')
                            && after.is_none_or(|c| !c.is_alphanumeric() || suffix.ends_with('.'))
                    })
                });
            if named {
                found.push((number, literal));
            }
        }
    }
    found
}

/// Lines of a client file that print, end the process or reach for `anyhow`: an application
/// that embeds the client gets errors as values, never output or an exit.
fn client_prints_or_uses_anyhow(text: &str) -> Vec<usize> {
    const FORBIDDEN: &[&str] = &[
        "anyhow",
        "println!",
        "eprintln!",
        "print!(",
        "eprint!(",
        "dbg!(",
        "process::exit",
    ];
    matching_lines(text, FORBIDDEN)
}

/// The I/O crates among the `[dependencies]` of a Cargo.toml.
fn io_dependencies(cargo_toml: &str) -> Vec<String> {
    let mut in_dependencies = false;
    let mut found = Vec::new();
    for line in cargo_toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]"
                || line.starts_with("[target.") && line.ends_with(".dependencies]");
            continue;
        }
        if !in_dependencies || line.starts_with('#') {
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim().trim_matches('"');
        let name = name.split('.').next().unwrap_or(name);
        if IO_CRATES.contains(&name) {
            found.push(name.to_owned());
        }
    }
    found
}

/// The crates of a `cargo tree --prefix none` listing that [`NOT_FOR_THE_CLIENT`] bars.
fn barred_from_the_client(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            NOT_FOR_THE_CLIENT
                .iter()
                .any(|barred| name == barred || name.starts_with(&format!("{barred}-")))
        })
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Whether a file opens with a `//!` paragraph (its first non-blank line).
fn opens_with_module_doc(text: &str) -> bool {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_start().starts_with("//!"))
}

/// Numbers (1-based) of the code lines that contain any of `needles`.
fn matching_lines(text: &str, needles: &[&str]) -> Vec<usize> {
    code_lines(text)
        .filter(|(_, line)| needles.iter().any(|n| line.contains(n)))
        .map(|(n, _)| n)
        .collect()
}

/// Lines with their numbers, without comments and without `#[cfg(test)]` modules (unit tests
/// build bad input on purpose). A test module is assumed to run to the end of the file, as
/// ours do.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, line)| {
            let t = line.trim_start();
            !t.starts_with("//")
        })
}

/// The contents of the `"…"` literals on a line (no escapes beyond `\"`; enough for names).
fn string_literals(line: &str) -> Vec<String> {
    let mut literals = Vec::new();
    let mut current: Option<String> = None;
    let mut escaped = false;
    for c in line.chars() {
        match (&mut current, c) {
            (Some(s), _) if escaped => {
                s.push(c);
                escaped = false;
            }
            (Some(_), '\\') => escaped = true,
            (Some(_), '"') => literals.push(current.take().unwrap_or_default()),
            (Some(s), c) => s.push(c),
            (None, '"') => current = Some(String::new()),
            (None, _) => {}
        }
    }
    literals
}

// ---------------------------------------------------------------- the tree

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, as (path relative to the workspace root, text).
fn rust_files(dir: &str) -> Vec<(String, String)> {
    fn walk(path: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&root().join(dir), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let relative = path
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (relative, text)
        })
        .collect()
}

fn sources() -> Vec<(String, String)> {
    let files: Vec<_> = SOURCE_ROOTS.iter().flat_map(|d| rust_files(d)).collect();
    assert!(
        files.iter().any(|(path, _)| path == BROKER),
        "the tidy checks found no {BROKER}: are they reading the right tree?"
    );
    files
}

fn exempt(path: &str) -> bool {
    path == BROKER || AMQP_EXEMPT.iter().any(|(file, _)| *file == path)
}

fn report(rule: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "{rule}:\n  {}",
        violations.join("\n  ")
    );
}

// ---------------------------------------------------------------- the rules

#[test]
fn only_the_broker_module_builds_amqp_properties() {
    let mut violations = Vec::new();
    for (path, text) in sources() {
        if exempt(&path) {
            continue;
        }
        for line in builds_amqp_properties(&text) {
            violations.push(format!("{path}:{line}"));
        }
    }
    report(
        &format!("AMQP properties or field tables built outside {BROKER} (add a function there)"),
        violations,
    );
}

#[test]
fn only_the_broker_module_acks_or_nacks() {
    let mut violations = Vec::new();
    for (path, text) in sources() {
        if exempt(&path) {
            continue;
        }
        for line in settles_deliveries(&text) {
            violations.push(format!("{path}:{line}"));
        }
    }
    report(
        &format!(
            "a delivery acked or nacked outside {BROKER} (return a Settlement; the workers' broker::carry_out settles)"
        ),
        violations,
    );
}

#[test]
fn the_contract_crate_depends_on_no_io_crate() {
    let toml = std::fs::read_to_string(root().join("events/Cargo.toml")).unwrap();
    report(
        "events/ (the wire contract) depends on an I/O crate",
        io_dependencies(&toml),
    );
}

/// Service files allowed to name the store, each with its reason.
const IO_EXEMPT: &[(&str, &str)] = &[(
    "workers/src/services/payments/mod.rs",
    "its `Handler::outside` step records the intent and the provider's answer in single \
     statements around the provider call, with no transaction open (no external call inside a \
     transaction); the runtime hands it the store for exactly that",
)];

#[test]
fn the_store_knows_nothing_of_handlers() {
    // The store is below the handlers: handlers use it, never the other way round, so the
    // store can be read, tested and replaced without the runtime above it.
    let mut violations = Vec::new();
    for (path, text) in rust_files("workers/src/runtime/store") {
        for line in matching_lines(
            &text,
            &["handler::", "super::handler", "super::super::handler"],
        ) {
            violations.push(format!("{path}:{line}"));
        }
    }
    report("the store names the handler module", violations);
}

#[test]
fn no_service_reaches_for_the_broker_or_a_pool() {
    let mut violations = Vec::new();
    // Each service's own folder; services/mod.rs is the wiring that starts them.
    for (path, text) in rust_files("workers/src/services") {
        if path.matches('/').count() < 4 || IO_EXEMPT.iter().any(|(file, _)| *file == path) {
            continue;
        }
        for line in service_does_io(&text) {
            violations.push(format!("{path}:{line}"));
        }
    }
    report(
        "a service opens a connection, publishes or holds a pool (the runtime does all I/O)",
        violations,
    );
}

#[test]
fn only_the_topology_spells_broker_names() {
    let mut violations = Vec::new();
    for (path, text) in sources() {
        if path == TOPOLOGY {
            continue;
        }
        for (line, literal) in broker_names(&text) {
            let allowed = NAME_EXEMPT
                .iter()
                .any(|(file, name, _)| *file == path && *name == literal);
            if !allowed {
                violations.push(format!("{path}:{line}: {literal:?}"));
            }
        }
    }
    report(
        &format!("a broker name spelled outside {TOPOLOGY} (add a Topology method)"),
        violations,
    );
}

#[test]
fn every_source_file_opens_with_its_purpose() {
    let mut violations = Vec::new();
    for dir in SOURCE_ROOTS.iter().copied().chain(["tests"]) {
        for (path, text) in rust_files(dir) {
            if !opens_with_module_doc(&text) {
                violations.push(path);
            }
        }
    }
    report(
        "a file without its `//!` opening paragraph (what it is for, what it must never do)",
        violations,
    );
}

// ---------------------------------------------------------------- the checkers, checked

#[test]
fn the_client_library_neither_prints_nor_uses_anyhow() {
    let client: Vec<_> = rust_files("src/client");
    assert!(
        client.iter().any(|(path, _)| path == "src/client/mod.rs"),
        "the tidy checks found no src/client/mod.rs: are they reading the right tree?"
    );
    let mut violations = Vec::new();
    for (path, text) in client {
        for line in client_prints_or_uses_anyhow(&text) {
            violations.push(format!("{path}:{line}"));
        }
    }
    report(
        "the client (src/client/) prints, exits or uses anyhow (return a ClientError)",
        violations,
    );
}

/// The client's own dependency tree (the crate without its `operator` feature, normal
/// dependencies only), from `cargo tree`: an application that embeds the client must not get
/// the workers' database, HTTP or metrics crates, nor anyhow.
#[test]
fn the_client_depends_on_none_of_the_workers_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "--package",
            "eventline",
            "--no-default-features",
            "--edges",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && tree.contains("eventline-amqp"),
        "cargo tree failed or lists no eventline-amqp: {}\n{tree}",
        String::from_utf8_lossy(&output.stderr)
    );
    report(
        "the client (`eventline` without `operator`) depends on a crate only the workers or the \
         binary may use (move what it needs into eventline-amqp, or behind the feature)",
        barred_from_the_client(&tree),
    );
}

#[test]
fn each_checker_catches_a_deliberately_bad_snippet() {
    let bad = "//! A module.\nuse lapin::types::FieldTable;\nfn f() {\n    let t = FieldTable::default();\n    let p = lapin::BasicProperties::default().with_headers(t);\n}\n";
    assert_eq!(builds_amqp_properties(bad), vec![4, 5]);
    let good = "//! A module.\n// FieldTable::default() in a comment is fine\nfn f() {}\n#[cfg(test)]\nmod tests {\n    fn g() { let _ = FieldTable::default(); }\n}\n";
    assert!(builds_amqp_properties(good).is_empty());

    let bad = "fn f() {\n    delivery.acker.ack(BasicAckOptions::default()).await;\n    channel.basic_nack(1, o).await;\n}\n";
    assert_eq!(settles_deliveries(bad), vec![2, 3]);
    assert!(settles_deliveries("fn f() { let acknowledged = true; }\n").is_empty());

    let bad = "use crate::runtime::broker;\nuse lapin::Channel;\nfn f(pool: sqlx::PgPool) {}\n";
    assert_eq!(service_does_io(bad), vec![1, 2, 3]);
    assert!(service_does_io("use crate::runtime::{Aggregate, Context};\n").is_empty());

    let bad = "let q = format!(\"{}.orders.commands\", ns);\nlet x = \"amq.direct\";\nlet e = format!(\"{ns}.events\");\n";
    let names: Vec<usize> = broker_names(bad).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec![1, 2, 3]);
    let good = "let msg = \"see the events exchange\";\nlet t = \"catalog.restock\";\nlet r = \"retry later.\";\n";
    assert!(broker_names(good).is_empty(), "{:?}", broker_names(good));

    let bad = "[package]\nname = \"x\"\n\n[dependencies]\nserde = \"1\"\ntokio.workspace = true\nsqlx = { version = \"0.8\" }\n\n[dev-dependencies]\nlapin = \"4\"\n";
    assert_eq!(io_dependencies(bad), vec!["tokio", "sqlx"]);

    let bad = "use anyhow::Context;\nfn f() {\n    println!(\"hi\");\n    eprint!(\"x\");\n}\n";
    assert_eq!(client_prints_or_uses_anyhow(bad), vec![1, 3, 4]);
    assert!(
        client_prints_or_uses_anyhow("fn f() -> Result<(), ClientError> { Ok(()) }\n").is_empty()
    );

    let bad = "eventline v0.1.0 (/w)\neventline-workers v0.1.0 (/w/workers)\nsqlx-core v0.8.6\nmetrics v0.24.3\nanyhow v1.0.100\nlapin v4.0.0\n";
    assert_eq!(
        barred_from_the_client(bad),
        ["anyhow", "eventline-workers", "metrics", "sqlx-core"]
    );
    let good =
        "eventline v0.1.0 (/w)\neventline-amqp v0.1.0 (/w/amqp)\nsqlxish v1.0.0\nlapin v4.0.0\n";
    assert!(barred_from_the_client(good).is_empty());

    assert!(!opens_with_module_doc("use std::fmt;\n//! Too late.\n"));
    assert!(!opens_with_module_doc(
        "/// An item doc is not a module doc.\nfn f() {}\n"
    ));
    assert!(opens_with_module_doc(
        "\n//! What this is for.\nuse std::fmt;\n"
    ));
}

// ---------------------------------------------------------------- the operator's dashboard

/// Every `eventline_…` metric name in `text`, histogram series folded onto their metric.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("eventline_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.push(name.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The names `metrics.rs` exports (its `pub const NAME: &str = "eventline_…"` lines).
fn exported_metrics(metrics_rs: &str) -> Vec<String> {
    metrics_rs
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const") && l.contains("\"eventline_"))
        .flat_map(metric_names)
        .collect()
}

#[test]
fn metric_names_fold_histogram_series_onto_their_metric() {
    assert_eq!(
        metric_names(r#"rate(eventline_batch_size_bucket{x="1"}[1m]) / eventline_ready"#),
        ["eventline_batch_size", "eventline_ready"]
    );
}

/// A renamed metric would leave an empty panel, silently: the dashboard may query only
/// what `metrics.rs` exports, and must query the message counts and the reader lag.
#[test]
fn the_dashboard_queries_only_metrics_that_metrics_rs_exports() {
    let read = |path: &str| {
        std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let exported = exported_metrics(&read("workers/src/runtime/metrics.rs"));
    assert!(
        exported.len() > 5,
        "found no metric names in metrics.rs: {exported:?}"
    );
    let dashboard = "ops/grafana/dashboards/eventline.json";
    let queried = metric_names(&read(dashboard));
    let unknown: Vec<String> = queried
        .iter()
        .filter(|name| !exported.contains(name))
        .map(|name| format!("{dashboard}: {name} is not exported by metrics.rs"))
        .collect();
    report("dashboard queries real metrics", unknown);
    for needed in ["eventline_messages_total", "eventline_reader_lag_seconds"] {
        assert!(
            queried.iter().any(|q| q == needed),
            "{dashboard} never shows {needed}"
        );
    }
}
