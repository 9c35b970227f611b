//! Errors people see say what failed, where, and what to do — and never show a password.

use std::process::Command;

#[test]
fn an_unreachable_broker_is_named_with_its_password_redacted() {
    let output = Command::new(env!("CARGO_BIN_EXE_eventline"))
        .args([
            "send",
            "catalog.restock",
            r#"{"product_id":"tea","quantity":1}"#,
        ])
        .env("AMQP_URL", "amqp://guest:hunter2-secret@127.0.0.1:1/%2f")
        .output()
        .unwrap();
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

#[test]
fn an_unreachable_database_is_named_with_its_password_redacted() {
    let output = Command::new(env!("CARGO_BIN_EXE_eventline"))
        .args(["migrate"])
        .env(
            "DATABASE_URL",
            "postgres://app:hunter2-secret@127.0.0.1:1/eventline",
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("could not reach PostgreSQL at postgres://app:***@127.0.0.1:1/"),
        "{stderr}"
    );
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

#[test]
fn a_command_for_a_service_without_a_queue_is_reported_not_silently_dropped() {
    let output = Command::new(env!("CARGO_BIN_EXE_eventline"))
        .args([
            "send",
            "catalog.restock",
            r#"{"product_id":"tea","quantity":1}"#,
        ])
        .env(
            "EVENTLINE_NAMESPACE",
            format!("nobody-{}", std::process::id()),
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no queue is bound"), "{stderr}");
}
