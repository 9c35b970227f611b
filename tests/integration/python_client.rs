//! A client in another language, written only from schema/ and schema/CONTRACT.md, can
//! publish a command and read its reply.

use std::process::Command;

use crate::support::TestSystem;

#[tokio::test]
async fn the_python_example_adds_a_product_and_reads_the_reply() {
    let system = TestSystem::with_catalog(1).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/catalog_client.py"
    );
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let config = system.config.clone();
    let token = system.token(
        eventline_events::auth::Role::Admin,
        std::time::Duration::from_secs(600),
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--product-id", "py-tea", "--stock", "5"])
            .env("AMQP_URL", config.amqp_url.expose())
            .env("EVENTLINE_NAMESPACE", config.namespace.to_string())
            .env("EVENTLINE_TOKEN", token)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed (install its dependency with `pip install -r examples/python/requirements.txt`)\nstdout: {stdout}\nstderr: {stderr}"
    );
    let reply: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("the last line is not the JSON reply ({e}): {stdout}"));
    assert_eq!(reply["outcome"], "accepted", "{reply}");
    assert_eq!(reply["events"][0]["type"], "catalog.product_added");
    assert_eq!(system.stream_versions("catalog.product-py-tea").await, [1]);
    system.stop().await;
}
