//! Checks of the command line itself: clap's own consistency checks, the exit statuses
//! scripts rely on, and the invariant that only `main` ends the process.
//!
//! They must never start a service: what the subcommands do is tested end to end in
//! tests/integration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;

use crate::{Cli, Exit, FAILED};

#[test]
fn command_line_definition_is_consistent() {
    // Catches what clap otherwise reports only when a user reaches the broken flag: duplicate
    // names, a group naming a missing argument, a conflict with a global flag.
    Cli::command().debug_assert();
}

#[test]
fn exit_statuses_are_the_documented_ones() {
    // 0 done, 1 refused, 2 failed to run: README and the Python example depend on these.
    assert_eq!(ExitCode::from(Exit::Success), ExitCode::SUCCESS);
    assert_eq!(ExitCode::from(Exit::Refused), ExitCode::from(1));
    assert_eq!(FAILED, 2);
}

#[test]
fn only_main_ends_the_process() {
    // ARCHITECTURE.md: "only the binary's `main` ends the process". An exit from deep inside a
    // command skips closing connections and hides the status from `main`. Spelled in two
    // parts so that this file does not match itself.
    let needle = concat!("process", "::", "exit(");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files: Vec<PathBuf> = ["src", "workers/src", "events/src", "bench/src", "tests"]
        .iter()
        .flat_map(|dir| rust_files(&root.join(dir)))
        .collect();
    // A scan that found nothing would pass vacuously.
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("src/bin/eventline/main.rs")),
        "the scan of {} did not reach src/bin/eventline/main.rs",
        root.display()
    );
    let mut offenders = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if line.contains(needle) && !line.trim_start().starts_with("//") {
                offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "return an `Exit` to main instead of exiting:\n{}",
        offenders.join("\n")
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}
