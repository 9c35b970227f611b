//! A worker process's command and query workers consume on one broker connection (a
//! consuming connection is 8 MiB of lapin's buffers), each on channels of its own, and open
//! it again when the broker closes it: one connection again, and both answer.

use eventline_events::catalog::{CatalogQuery, ListProducts};
use eventline_events::{Metadata, OutgoingMessage, Service};

use crate::support::{TestSystem, eventually};

/// The broker's connections whose client named them `name`, by process id (`rabbitmqctl`, as root, on the
/// broker's machine, as the chaos suite and `least_privilege.rs` need too).
async fn connections_named(name: &str) -> Result<Vec<String>, String> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "--no-table-headers",
            "list_connections",
            "pid",
            "client_properties",
        ])
        .output()
        .await
        .map_err(|e| format!("rabbitmqctl: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            // The client's properties, quoted as Erlang terms: its `connection_name` among them.
            let (pid, properties) = line.split_once('\t')?;
            properties
                .contains(&format!("\"{name}\""))
                .then(|| pid.trim().to_owned())
        })
        .collect())
}

/// Waits until exactly one connection is named `name` (and it is not `not`); returns its pid.
async fn the_one_connection(name: &str, not: Option<&str>) -> String {
    eventually(&format!("one connection named {name:?}"), || async move {
        match connections_named(name).await?.as_slice() {
            [pid] if Some(pid.as_str()) != not => Ok(pid.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

fn list_products() -> OutgoingMessage {
    OutgoingMessage::new(
        Metadata::origin("catalog.query.list_products"),
        &CatalogQuery::from(ListProducts {}),
    )
}

#[tokio::test]
async fn a_processs_workers_share_one_connection_and_reopen_it_together() {
    let mut system = TestSystem::start().await;
    let replica = format!("shared-{}", system.namespace);
    system.start_service(Service::Catalog, &replica);
    system.wait_for_consumers(Service::Catalog, 1).await;
    assert!(system.request(list_products()).await.is_accepted());
    let shared = format!("eventline catalog workers {replica}");
    let first = the_one_connection(&shared, None).await;
    // Neither worker opened one of its own (a worker's own connection carries its name).
    let own = format!("eventline catalog worker {replica}");
    assert_eq!(
        connections_named(&own).await.expect("rabbitmqctl"),
        Vec::<String>::new(),
        "{own}"
    );

    let closed = tokio::process::Command::new("rabbitmqctl")
        .args([
            "close_connection",
            &first,
            "test: the shared connection drops",
        ])
        .output()
        .await
        .expect("rabbitmqctl");
    assert!(closed.status.success(), "{closed:?}");

    // Both sessions end; the first to reconnect opens a new connection, the other joins it.
    let second = the_one_connection(&shared, Some(&first)).await;
    assert_ne!(first, second);
    assert!(
        system.add_product("tea", 3).await.is_accepted(),
        "the command worker consumes again"
    );
    assert!(
        system.request(list_products()).await.is_accepted(),
        "the query worker consumes again"
    );
    assert_eq!(
        connections_named(&shared).await.expect("rabbitmqctl"),
        vec![second],
        "still one connection"
    );
    system.stop().await;
}
