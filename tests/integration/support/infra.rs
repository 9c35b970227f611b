//! Finds or starts the RabbitMQ and PostgreSQL the tests run against (see the parent module).

use std::time::Duration;

use eventline_workers::runtime::SecretUrl;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::sync::OnceCell;

pub struct Services {
    pub amqp_url: SecretUrl,
    /// A URL to the server; tests swap in their own database name.
    pub database_url: SecretUrl,
    /// Kept alive for the whole test binary when the services came from testcontainers.
    _containers: Option<(ContainerAsync<GenericImage>, ContainerAsync<GenericImage>)>,
}

static SERVICES: OnceCell<Services> = OnceCell::const_new();

pub async fn services() -> &'static Services {
    SERVICES.get_or_init(find_or_start).await
}

async fn find_or_start() -> Services {
    let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    if let (Some(amqp), Some(db)) = (env("TEST_AMQP_URL"), env("TEST_DATABASE_URL")) {
        return Services {
            amqp_url: SecretUrl::new(amqp),
            database_url: SecretUrl::new(db),
            _containers: None,
        };
    }
    let local_amqp = SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f");
    let local_db = SecretUrl::new("postgres://root@127.0.0.1:5432/postgres");
    if env("EVENTLINE_TEST_FORCE_CONTAINERS").is_none() && answers(&local_amqp, &local_db).await {
        return Services {
            amqp_url: local_amqp,
            database_url: local_db,
            _containers: None,
        };
    }
    start_containers().await
}

async fn answers(amqp: &SecretUrl, db: &SecretUrl) -> bool {
    use sqlx::Connection;
    let broker = eventline_workers::runtime::broker::connect(amqp, "test probe").await;
    let database = sqlx::PgConnection::connect(db.expose()).await;
    broker.is_ok() && database.is_ok()
}

fn image(var: &str, default: &str) -> GenericImage {
    let reference = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let (name, tag) = reference.rsplit_once(':').unwrap_or((&reference, "latest"));
    GenericImage::new(name, tag)
}

async fn start_containers() -> Services {
    let rabbit = image("EVENTLINE_TEST_RABBITMQ_IMAGE", "rabbitmq:3.13")
        .with_exposed_port(5672.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Server startup complete"))
        .with_startup_timeout(Duration::from_secs(120))
        .start()
        .await
        .expect(
            "no local RabbitMQ/PostgreSQL answered and testcontainers could not start RabbitMQ: \
             start the local services, set TEST_AMQP_URL and TEST_DATABASE_URL, or start Docker",
        );
    let postgres = image("EVENTLINE_TEST_POSTGRES_IMAGE", "postgres:16")
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_startup_timeout(Duration::from_secs(120))
        .start()
        .await
        .expect("testcontainers could not start PostgreSQL");
    let amqp_port = rabbit
        .get_host_port_ipv4(5672)
        .await
        .expect("RabbitMQ port");
    let pg_port = postgres
        .get_host_port_ipv4(5432)
        .await
        .expect("PostgreSQL port");
    let services = Services {
        amqp_url: SecretUrl::new(format!("amqp://guest:guest@127.0.0.1:{amqp_port}/%2f")),
        database_url: SecretUrl::new(format!("postgres://postgres@127.0.0.1:{pg_port}/postgres")),
        _containers: Some((rabbit, postgres)),
    };
    // The official postgres image logs "ready" once before its init restart; wait until a
    // real connection succeeds.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !answers(&services.amqp_url, &services.database_url).await {
        assert!(
            std::time::Instant::now() < deadline,
            "containers started but do not answer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // ok: bounded by the deadline above
    }
    services
}
