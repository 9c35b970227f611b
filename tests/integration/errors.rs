//! Errors people see say what failed, where, and what to do — and never show a password.

use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

/// A command any service would accept, for the tests that are about where it cannot go.
const RESTOCK: [&str; 3] = [
    "send",
    "catalog.restock",
    r#"{"product_id":"tea","quantity":1}"#,
];

/// Runs the CLI with `args` and one environment variable to its end, or fails the test if it
/// does not end: a CLI that hangs on an unreachable service is the defect these tests exist
/// to catch (one hung CI once), so it must fail here, not stall the suite. The deadline is far
/// above the CLI's own connect deadline; the child is killed when the future is dropped.
async fn eventline(args: &[&str], (name, value): (&str, &str)) -> Output {
    const DEADLINE: Duration = Duration::from_secs(60);
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventline"));
    command.args(args).env(name, value).kill_on_drop(true);
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("`eventline` did not exit within {DEADLINE:?}"))
        .expect("eventline runs")
}

#[tokio::test]
async fn an_unreachable_broker_is_named_with_its_password_redacted() {
    let output = eventline(
        &RESTOCK,
        ("AMQP_URL", "amqp://guest:hunter2-secret@127.0.0.1:1/%2f"),
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("could not reach RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f"),
        "{stderr}"
    );
    assert!(
        stderr.contains("AMQP_URL"),
        "the error should say how to fix it: {stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

#[tokio::test]
async fn an_unreachable_database_is_named_with_its_password_redacted() {
    let output = eventline(
        &["migrate"],
        (
            "DATABASE_URL",
            "postgres://app:hunter2-secret@127.0.0.1:1/eventline",
        ),
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("could not reach PostgreSQL at postgres://app:***@127.0.0.1:1/"),
        "{stderr}"
    );
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

#[tokio::test]
async fn a_command_for_a_service_without_a_queue_is_reported_not_silently_dropped() {
    let namespace = format!("nobody-{}", std::process::id());
    let output = eventline(&RESTOCK, ("EVENTLINE_NAMESPACE", &namespace)).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no queue is bound"), "{stderr}");
}
