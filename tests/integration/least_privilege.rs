//! Least privilege: each service's database login reads and writes only its own tables,
//! appends only its own streams and never rewrites the log; the relay's only reads the log and
//! keeps its checkpoint; and each service's broker user reaches only its own queues.

use eventline::broker_users::{self, NewUser};
use eventline_events::Service;
use eventline_events::topology::BrokerUser;
use eventline_events::values::OrderId;
use eventline_workers::runtime::relay::{self, Relay};
use eventline_workers::runtime::store::EventStore;
use eventline_workers::runtime::{Config, SecretUrl, Shutdown};
use eventline_workers::runtime::{broker, db_roles, sampler};
use eventline_workers::services;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use sqlx::Connection;

use crate::support::TestSystem;

/// A per-test database login, dropped at the end even if the test panics.
pub(crate) struct Login {
    pub(crate) admin_url: SecretUrl,
    pub(crate) name: String,
}

impl Drop for Login {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Runtime::new()
                && let Err(error) = rt.block_on(db_roles::drop_login(&admin, &name))
            {
                eprintln!("could not drop the test login {name}: {error}");
            }
        })
        .join();
    }
}

/// `url` with another user and password (the harness's URLs carry the administrator).
pub(crate) fn with_user(url: &SecretUrl, user: &str, password: &str) -> SecretUrl {
    let url = url.expose();
    let start = url.find("://").expect("a URL") + 3;
    let host = match url[start..].find('@') {
        Some(at) => start + at + 1,
        None => start,
    };
    SecretUrl::new(format!(
        "{}{user}:{password}@{}",
        &url[..start],
        &url[host..]
    ))
}

/// Creates `process`'s login for this test (a unique name); dropped with the guard.
async fn login_for(system: &TestSystem, process: BrokerUser) -> (Login, SecretUrl) {
    let name = format!("t_{}_{}", process.name(), uuid::Uuid::now_v7().simple());
    let url = with_user(&system.config.database_url, &name, "not-a-real-secret");
    let login = Login {
        admin_url: system.config.database_url.clone(),
        name: db_roles::ensure_login(&system.config.database_url, &url, process)
            .await
            .expect("create the login"),
    };
    assert_eq!(login.name, name);
    // Idempotent: the compose `migrate` service runs it on every `up`.
    db_roles::ensure_login(&system.config.database_url, &url, process)
        .await
        .expect("ensure the login a second time");
    (login, url)
}

/// Runs `sql` as the login of `url`; returns the error text, or panics if it succeeded.
async fn refused(conn: &mut sqlx::PgConnection, sql: &str) -> String {
    sqlx::query(sql)
        .execute(&mut *conn)
        .await
        .expect_err(sql)
        .to_string()
}

#[tokio::test]
async fn each_login_does_its_job_and_touches_only_its_own_tables_and_streams() {
    let mut system = TestSystem::start().await;
    let (catalog_login, catalog_url) =
        login_for(&system, BrokerUser::Service(Service::Catalog)).await;
    let (relay_login, relay_url) = login_for(&system, BrokerUser::Relay).await;
    // Something of auth's and orders' in the tables, so that "cannot see" is not "is empty".
    system.start_service(Service::Auth, "auth-1");
    system.start_service(Service::Orders, "orders-1");
    system.wait_for_consumers(Service::Auth, 1).await;
    system.wait_for_consumers(Service::Orders, 1).await;

    // A catalog worker (with its projection) connected as the catalog login, and the relay as
    // the relay login, do their whole job: inbox, append, reply, read model, checkpoints.
    let catalog_config = Config {
        database_url: catalog_url.clone(),
        replica: "catalog-least".into(),
        ..system.config.clone()
    };
    let relay_config = Config {
        database_url: relay_url.clone(),
        replica: "relay-least".into(),
        ..system.config.clone()
    };
    let catalog_store = EventStore::connect_lazy(&catalog_url, 4).expect("a pool");
    let relay_store = EventStore::connect_lazy(&relay_url, 2).expect("a pool");
    let shutdown = Shutdown::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(services::run(
        Service::Catalog,
        catalog_config,
        catalog_store.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(Relay::new(relay_config, relay_store.clone()).run(shutdown.clone()));
    system.wait_for_consumers(Service::Catalog, 1).await;
    assert!(system.add_product("tea", 5).await.is_accepted());
    assert!(system.reserve("tea", OrderId::new(), 2).await.is_accepted());
    let register =
        eventline_events::auth::AuthCommand::from(eventline_events::auth::RegisterUser {
            email: eventline_events::auth::Email::parse("least@example.com".into()).unwrap(),
            password: eventline_events::auth::Password::parse("correct horse battery".into())
                .unwrap(),
        });
    assert!(
        system
            .client
            .request(&register, crate::support::PATIENCE)
            .await
            .unwrap()
            .is_accepted()
    );
    system.wait_for_projection().await;
    system.wait_for_checkpoint(relay::CHECKPOINT).await;
    assert_eq!(system.stock("tea").await, (3, 2, 0));
    assert_eq!(
        system.count("SELECT count(*) FROM auth_credentials").await,
        1
    );
    let log_before = system.count("SELECT count(*) FROM event_log").await;

    let mut catalog = sqlx::PgConnection::connect(catalog_url.expose())
        .await
        .expect("connect as the catalog login");
    for sql in [
        // Another service's tables.
        "SELECT count(*) FROM auth_credentials",
        "SELECT count(*) FROM orders_view",
        // The log is append-only for everyone.
        "UPDATE event_log SET data = '{}'",
        "DELETE FROM event_log",
        "TRUNCATE event_log",
        "DELETE FROM processed_messages",
        "CREATE TABLE mine (id int)",
    ] {
        let error = refused(&mut catalog, sql).await;
        // Refused by the privilege check, not (only) by the append-only trigger.
        assert!(error.contains("permission denied"), "{sql}: {error}");
    }
    // Another service's stream: refused by row-level security.
    let forged = format!(
        "INSERT INTO event_log (stream_id, stream_version, event_id, event_type, schema_version, data, metadata) \
         VALUES ('orders.order-{0}', 1, '{0}', 'orders.order_confirmed', 1, '{{}}', '{{}}')",
        uuid::Uuid::now_v7()
    );
    let error = refused(&mut catalog, &forged).await;
    assert!(error.contains("row-level security"), "{error}");
    // Other services' inbox rows (stored replies, dispatched charges with card tokens) are
    // invisible, its own are there.
    let inbox: Vec<String> = sqlx::query_scalar("SELECT DISTINCT consumer FROM processed_messages")
        .fetch_all(&mut catalog)
        .await
        .unwrap();
    assert_eq!(inbox, ["catalog.commands"]);
    assert!(
        system
            .count("SELECT count(*) FROM processed_messages WHERE consumer = 'auth.commands'")
            .await
            >= 1
    );
    let _ = catalog.close().await;

    // The relay reads the log and writes its checkpoint, and nothing else.
    let mut relay = sqlx::PgConnection::connect(relay_url.expose())
        .await
        .expect("connect as the relay login");
    for sql in [
        "SELECT count(*) FROM auth_credentials",
        "SELECT count(*) FROM catalog_products",
        "SELECT count(*) FROM processed_messages",
        "INSERT INTO event_log (stream_id, stream_version, event_id, event_type, schema_version, data, metadata) \
         VALUES ('catalog.product-x', 1, gen_random_uuid(), 'catalog.product_added', 1, '{}', '{}')",
    ] {
        let error = refused(&mut relay, sql).await;
        assert!(error.contains("permission denied"), "{sql}: {error}");
    }
    let _ = relay.close().await;
    // What /readyz stands on: the sampler reads the lag with each login. The relay's may
    // not read the inbox, so its sample has no inbox size (it once failed, and compose never
    // saw the relay ready).
    let relay_sample = sampler::sample(relay_store.pool())
        .await
        .expect("the relay login can sample the log readers' lag");
    assert!(
        relay_sample
            .readers
            .iter()
            .any(|r| r.reader == relay::CHECKPOINT)
    );
    assert_eq!(relay_sample.inbox_rows, None);
    let catalog_sample = sampler::sample(catalog_store.pool())
        .await
        .expect("the catalog login can sample lag and its inbox");
    assert!(catalog_sample.inbox_rows.is_some_and(|rows| rows >= 2));
    assert_eq!(
        system.count("SELECT count(*) FROM event_log").await,
        log_before
    );

    shutdown.trigger();
    while tasks.join_next().await.is_some() {}
    catalog_store.pool().close().await;
    relay_store.pool().close().await;
    system.stop().await;
    drop((catalog_login, relay_login));
}

#[tokio::test]
async fn a_superuser_or_another_service_s_login_is_refused() {
    let system = TestSystem::start().await;
    // The harness's own user is the server's administrator.
    let error = db_roles::ensure_login(
        &system.config.database_url,
        &system.config.database_url,
        BrokerUser::Service(Service::Catalog),
    )
    .await
    .expect_err("the administrator must not become a worker login")
    .to_string();
    assert!(error.contains("superuser"), "{error}");
    // One login for two services would hold both roles' privileges.
    let (login, url) = login_for(&system, BrokerUser::Service(Service::Catalog)).await;
    let error = db_roles::ensure_login(
        &system.config.database_url,
        &url,
        BrokerUser::Service(Service::Auth),
    )
    .await
    .expect_err("the catalog's login must not become auth's too")
    .to_string();
    assert!(error.contains("another service"), "{error}");
    system.stop().await;
    drop(login);
}

/// Per-test broker users, deleted at the end even if the test panics.
struct BrokerUsers(Vec<String>);

impl Drop for BrokerUsers {
    fn drop(&mut self) {
        let names = self.0.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Runtime::new()
                && let Err(error) = rt.block_on(broker_users::delete_users(&names))
            {
                eprintln!("could not delete the test's broker users {names:?}: {error}");
            }
        })
        .join();
    }
}

#[tokio::test]
async fn a_service_s_broker_user_cannot_consume_another_service_s_queue() {
    let mut system = TestSystem::start().await;
    // Both services' queues exist (declared by an administrator), so a refusal below is about
    // permissions, not a missing queue.
    let admin = broker::connect(&system.config.amqp_url, "test setup")
        .await
        .unwrap();
    let channel = admin.create_channel().await.unwrap();
    broker::declare_service_queues(&channel, &system.topology, Service::Orders)
        .await
        .unwrap();
    let _ = admin.close(200, "ok".into()).await;

    let users: Vec<NewUser> = [Service::Catalog, Service::Orders]
        .into_iter()
        .map(|service| NewUser {
            user: BrokerUser::Service(service),
            password: broker_users::generate_password(),
        })
        .collect();
    let _cleanup = BrokerUsers(
        users
            .iter()
            .map(|u| system.topology.broker_user(u.user))
            .collect(),
    );
    broker_users::apply(&broker_users::definitions(&system.topology, "/", &users))
        .await
        .expect("import the broker users (the tests run where rabbitmqctl works, as root)");
    let url_of = |service: Service| {
        let user = users
            .iter()
            .find(|u| u.user == BrokerUser::Service(service))
            .unwrap();
        with_user(
            &system.config.amqp_url,
            &system.topology.broker_user(user.user),
            &user.password,
        )
    };

    // Each service's user is enough for its own worker's whole job: declare, consume, reply,
    // dead-letter, saga commands and timers.
    let shutdown = Shutdown::new();
    let mut tasks = tokio::task::JoinSet::new();
    for service in [Service::Catalog, Service::Orders] {
        let config = Config {
            amqp_url: url_of(service),
            replica: format!("{service}-own-user"),
            ..system.config.clone()
        };
        let store = EventStore::connect_lazy(&config.database_url, 4).expect("a pool");
        tasks.spawn(services::run(service, config, store, shutdown.clone()));
    }
    system.wait_for_consumers(Service::Catalog, 1).await;
    system.wait_for_consumers(Service::Orders, 1).await;
    assert!(system.add_product("tea", 5).await.is_accepted());

    // The catalog's user reads its own queue, and is refused the orders' one.
    let catalog = broker::connect(&url_of(Service::Catalog), "test catalog user")
        .await
        .expect("the catalog's user logs in");
    let own = catalog.create_channel().await.unwrap();
    own.basic_get(
        system.topology.dead_letter_queue(Service::Catalog).into(),
        BasicGetOptions { no_ack: false },
    )
    .await
    .expect("the catalog's user may read the catalog's queues");
    let foreign = catalog.create_channel().await.unwrap();
    let refused = foreign
        .basic_consume(
            system.topology.command_queue(Service::Orders).into(),
            "intruder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("the catalog's user must not consume the orders' commands")
        .to_string();
    assert!(refused.contains("ACCESS_REFUSED"), "{refused}");
    let purge = catalog.create_channel().await.unwrap();
    let refused = purge
        .queue_purge(
            system.topology.command_queue(Service::Orders).into(),
            QueuePurgeOptions::default(),
        )
        .await
        .expect_err("the catalog's user must not purge the orders' commands")
        .to_string();
    assert!(refused.contains("ACCESS_REFUSED"), "{refused}");
    let _ = catalog.close(200, "done".into()).await;

    shutdown.trigger();
    while tasks.join_next().await.is_some() {}
    system.stop_workers().await;
    system.stop().await;
}
