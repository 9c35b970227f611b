//! `eventline lesson`: every one of the seed's ten ideas runs against the real services and
//! its claim holds (exit 0); and a lesson whose claim does not hold exits non-zero, with the
//! reason — `--sabotage` runs a scenario wrongly on purpose to prove the check can tell.
//!
//! Each lesson starts its own small system (its own namespace and database, worker processes
//! of the real binary) and removes it at the end.

use std::process::Output;

use crate::support::services;

/// Runs `eventline lesson {args}` against the test services; returns its output.
async fn lesson(args: &[&str]) -> Output {
    let services = services().await;
    tokio::process::Command::new(env!("CARGO_BIN_EXE_eventline"))
        .arg("lesson")
        .args(args)
        .env("AMQP_URL", services.amqp_url.expose())
        .env("DATABASE_URL", services.database_url.expose())
        .env_remove("EVENTLINE_NAMESPACE")
        .kill_on_drop(true)
        .output()
        .await
        .expect("eventline runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn every_lesson_runs_against_the_real_system_and_its_claim_holds() {
    let list = lesson(&["--list"]).await;
    assert!(list.status.success(), "{}", text(&list));
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(names.len(), 10, "{}", text(&list));
    // One after another: each starts a handful of processes, and the machine is shared.
    let mut failed = Vec::new();
    for name in &names {
        let output = lesson(&[name]).await;
        let said = text(&output);
        if output.status.code() != Some(0) || !said.contains("HELD:") {
            failed.push(format!("{name} ({:?}):\n{said}", output.status.code()));
        }
    }
    assert!(
        failed.is_empty(),
        "lessons that failed:\n{}",
        failed.join("\n")
    );
}

#[tokio::test]
async fn a_lesson_whose_claim_does_not_hold_exits_non_zero_with_the_reason() {
    // The re-send goes out as a new message, so the inbox cannot know it: two effects.
    let output = lesson(&["network-unreliability", "--sabotage"]).await;
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("DID NOT HOLD") && said.contains("[1, 2, 3]"),
        "{said}"
    );
    // A lesson with no way to be sabotaged says so rather than pretending.
    let output = lesson(&["concurrency", "--sabotage"]).await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
}
