//! The faults themselves: what each scenario does to a running system, and how it is undone.
//!
//! Broker and database faults act on this machine's RabbitMQ and PostgreSQL (as root, through
//! `rabbitmqctl` and `pg_ctlcluster`); network faults act on the scenario's own proxies;
//! worker faults on its own child processes. Nothing here reaches beyond loopback.

use std::time::Duration;

use anyhow::{Context, bail};
use eventline_workers::runtime::SecretUrl;

use super::proxy::{Link, Proxy};

/// One kind of fault, injected again and again during a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// SIGKILL a random worker replica (or the relay); it is restarted at once, as a process
    /// manager would.
    KillWorkers,
    /// `rabbitmqctl close_all_connections`: the broker drops every client.
    BrokerConnections,
    /// `rabbitmqctl stop_app` … `start_app`: the broker is gone for a while.
    BrokerRestart,
    /// A memory alarm (`set_vm_memory_high_watermark`): the broker blocks every publisher.
    BrokerAlarm,
    /// `pg_terminate_backend` on every connection to the scenario's database.
    DbTerminate,
    /// `pg_ctlcluster … restart` under load.
    DbRestart,
    /// The proxies delay every chunk in both directions.
    NetLatency,
    /// The proxies stop forwarding for a while; sockets stay open (half-open links).
    NetStall,
    /// The proxies reset every open connection.
    NetDrop,
    /// Every command is delivered twice, old message ids are replayed, and a step arrives
    /// before the state it depends on.
    Duplicates,
    /// A transaction held open in another database of the server (an operator's idle
    /// `psql`, a `pg_dump`), holding a transaction id, while a position is burnt in ours: the
    /// log's readers must not wait for it (the report shows the relay's worst lag).
    LongTransaction,
}

impl Scenario {
    pub const ALL: [Scenario; 11] = [
        Scenario::KillWorkers,
        Scenario::BrokerConnections,
        Scenario::BrokerRestart,
        Scenario::BrokerAlarm,
        Scenario::DbTerminate,
        Scenario::DbRestart,
        Scenario::NetLatency,
        Scenario::NetStall,
        Scenario::NetDrop,
        Scenario::Duplicates,
        Scenario::LongTransaction,
    ];

    /// Faults that hit the whole broker or database server, not only this scenario's
    /// processes and connections: they must not run beside anything else using them.
    pub fn is_server_wide(self) -> bool {
        matches!(
            self,
            Scenario::BrokerConnections
                | Scenario::BrokerRestart
                | Scenario::BrokerAlarm
                | Scenario::DbRestart
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillWorkers => "kill-workers",
            Scenario::BrokerConnections => "broker-connections",
            Scenario::BrokerRestart => "broker-restart",
            Scenario::BrokerAlarm => "broker-alarm",
            Scenario::DbTerminate => "db-terminate",
            Scenario::DbRestart => "db-restart",
            Scenario::NetLatency => "net-latency",
            Scenario::NetStall => "net-stall",
            Scenario::NetDrop => "net-drop",
            Scenario::Duplicates => "duplicates",
            Scenario::LongTransaction => "long-transaction",
        }
    }
}

/// What a fault needs to reach: the scenario's proxies and database.
pub struct Targets<'a> {
    pub amqp: &'a Proxy,
    pub postgres: &'a Proxy,
    /// An admin connection URL on the real server (not through the proxy).
    pub admin_database_url: &'a SecretUrl,
    pub database: &'a str,
    pub rabbitmq_node: Option<&'a str>,
    /// `version/name` of a Debian PostgreSQL cluster.
    pub pg_cluster: Option<&'a str>,
    /// The transactions a lasting fault holds open until [`clear`].
    pub held: &'a tokio::sync::Mutex<Vec<sqlx::PgConnection>>,
}

/// Starts a fault that lasts until [`clear`]; returns a short description for the log.
pub async fn inject(scenario: Scenario, targets: &Targets<'_>) -> anyhow::Result<String> {
    match scenario {
        // Handled by the runner, which owns the processes; duplicates need no server fault.
        Scenario::KillWorkers | Scenario::Duplicates => Ok(String::new()),
        Scenario::BrokerConnections => {
            rabbitmqctl(targets, &["close_all_connections", "eventline chaos"]).await?;
            Ok("closed all broker connections".into())
        }
        Scenario::BrokerRestart => {
            rabbitmqctl(targets, &["stop_app"]).await?;
            Ok("stopped the broker app".into())
        }
        Scenario::BrokerAlarm => {
            rabbitmqctl(targets, &["set_vm_memory_high_watermark", "0.000001"]).await?;
            Ok("raised a memory alarm".into())
        }
        Scenario::DbTerminate => {
            let n = terminate_backends(targets.admin_database_url, targets.database).await?;
            Ok(format!("terminated {n} database connections"))
        }
        Scenario::DbRestart => {
            pg_ctlcluster(targets, "restart").await?;
            Ok("restarted PostgreSQL".into())
        }
        Scenario::NetLatency => {
            for proxy in [targets.amqp, targets.postgres] {
                proxy.set(Link::Slow(Duration::from_millis(25)));
            }
            Ok("added 25 ms per chunk".into())
        }
        Scenario::NetStall => {
            for proxy in [targets.amqp, targets.postgres] {
                proxy.set(Link::Stalled);
            }
            Ok("stalled every link".into())
        }
        Scenario::NetDrop => {
            for proxy in [targets.amqp, targets.postgres] {
                proxy.drop_all();
            }
            Ok("reset every connection".into())
        }
        Scenario::LongTransaction => long_transaction(targets).await,
    }
}

/// Ends the fault that `inject` started (a no-op for instantaneous ones).
pub async fn clear(scenario: Scenario, targets: &Targets<'_>) -> anyhow::Result<()> {
    match scenario {
        Scenario::BrokerRestart => rabbitmqctl(targets, &["start_app"]).await,
        Scenario::BrokerAlarm => restore_memory_watermark(targets).await,
        Scenario::NetLatency | Scenario::NetStall => {
            for proxy in [targets.amqp, targets.postgres] {
                proxy.set(Link::Healthy);
            }
            Ok(())
        }
        Scenario::LongTransaction => {
            release_held(targets).await;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Puts the servers back as the machine's defaults have them, whatever state a failed run left.
pub async fn restore_servers(scenario: Scenario, targets: &Targets<'_>) -> anyhow::Result<()> {
    release_held(targets).await;
    match scenario {
        Scenario::BrokerRestart => rabbitmqctl(targets, &["start_app"]).await,
        Scenario::BrokerAlarm => restore_memory_watermark(targets).await,
        _ => Ok(()),
    }
}

/// The default watermark (RabbitMQ's 0.4 of RAM).
async fn restore_memory_watermark(targets: &Targets<'_>) -> anyhow::Result<()> {
    rabbitmqctl(targets, &["set_vm_memory_high_watermark", "0.4"]).await
}

async fn rabbitmqctl(targets: &Targets<'_>, args: &[&str]) -> anyhow::Result<()> {
    let mut command = tokio::process::Command::new("rabbitmqctl");
    if let Some(node) = targets.rabbitmq_node {
        command.args(["-n", node]);
    }
    let output = command
        .args(args)
        .output()
        .await
        .context("running rabbitmqctl (is RabbitMQ installed on this machine?)")?;
    if !output.status.success() {
        bail!(
            "rabbitmqctl {} failed: {} (it needs to run as root, on the broker's machine)",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

async fn pg_ctlcluster(targets: &Targets<'_>, action: &str) -> anyhow::Result<()> {
    let (version, name) = match targets.pg_cluster.and_then(|c| c.split_once('/')) {
        Some((version, name)) => (version.to_owned(), name.to_owned()),
        None => (
            std::fs::read_dir("/etc/postgresql")
                .context(
                    "reading /etc/postgresql: db-restart needs a Debian PostgreSQL cluster here",
                )?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .max()
                .context("no PostgreSQL cluster under /etc/postgresql")?,
            "main".to_owned(),
        ),
    };
    // Through a shell that first closes every descriptor but the standard three: the server
    // that `restart` starts outlives this process, and would otherwise keep whatever this
    // process inherited — the services lock the developers' guide runs chaos under
    // (`flock`), held by PostgreSQL for good.
    let output = tokio::process::Command::new("bash")
        .args([
            "-c",
            r#"for fd in /proc/self/fd/*; do fd=${fd##*/}; if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi; done; exec pg_ctlcluster "$@""#,
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            &version,
            &name,
            action,
        ])
        .output()
        .await
        .context("running pg_ctlcluster")?;
    if !output.status.success() {
        bail!(
            "pg_ctlcluster {version} {name} {action} failed: {} (it needs to run as root)",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

async fn terminate_backends(admin: &SecretUrl, database: &str) -> anyhow::Result<i64> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin.expose())
        .await
        .with_context(|| format!("connecting to {admin} to terminate backends"))?;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_one(&mut conn)
    .await?;
    let _ = conn.close().await;
    Ok(n)
}

/// Opens a transaction in the admin database (another database than the scenario's) that
/// takes a transaction id and stays open until [`clear`], and burns a log position in the
/// scenario's database (an append rolled back) so its readers meet a hole meanwhile.
async fn long_transaction(targets: &Targets<'_>) -> anyhow::Result<String> {
    use sqlx::Connection;
    let mut elsewhere = sqlx::PgConnection::connect(targets.admin_database_url.expose())
        .await
        .with_context(|| format!("connecting to {}", targets.admin_database_url))?;
    sqlx::query("BEGIN").execute(&mut elsewhere).await?;
    let xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut elsewhere)
        .await?;
    targets.held.lock().await.push(elsewhere);
    let ours = targets.admin_database_url.with_path(targets.database);
    let mut conn = sqlx::PgConnection::connect(ours.expose())
        .await
        .with_context(|| format!("connecting to {ours}"))?;
    sqlx::query("BEGIN").execute(&mut conn).await?;
    sqlx::query(
        "INSERT INTO event_log (stream_id, stream_version, event_id, event_type, schema_version, data, metadata) \
         VALUES ('chaos.burnt', 1, gen_random_uuid(), 'chaos.burnt', 1, '{}', '{}')",
    )
    .execute(&mut conn)
    .await?;
    sqlx::query("ROLLBACK").execute(&mut conn).await?;
    let _ = conn.close().await;
    Ok(format!(
        "held transaction {xid} open in another database, burnt a position"
    ))
}

async fn release_held(targets: &Targets<'_>) {
    use sqlx::Connection;
    for mut conn in targets.held.lock().await.drain(..) {
        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
        let _ = conn.close().await;
    }
}
