//! Least privilege: the workers' database login can append to the log but never rewrite it,
//! and each service's broker user reaches only its own queues.

use eventline::broker_users::{self, NewUser};
use eventline_events::Service;
use eventline_events::topology::BrokerUser;
use eventline_events::values::OrderId;
use eventline_workers::runtime::relay::{self, Relay};
use eventline_workers::runtime::store::EventStore;
use eventline_workers::runtime::{Config, SecretUrl, Shutdown};
use eventline_workers::runtime::{broker, db_roles};
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

#[tokio::test]
async fn the_worker_login_appends_to_the_log_but_cannot_rewrite_it() {
    let system = TestSystem::start().await;
    let name = format!("t_worker_{}", uuid::Uuid::now_v7().simple());
    let worker_url = with_user(&system.config.database_url, &name, "not-a-real-secret");
    let login = Login {
        admin_url: system.config.database_url.clone(),
        name: db_roles::ensure_worker_login(&system.config.database_url, &worker_url)
            .await
            .expect("create the worker login"),
    };
    assert_eq!(login.name, name);
    // Idempotent: the compose `migrate` service runs it on every `up`.
    db_roles::ensure_worker_login(&system.config.database_url, &worker_url)
        .await
        .expect("ensure the worker login a second time");

    // A catalog worker (with its projection) and the relay, connected as the worker login,
    // do their whole job: inbox, append, reply, read model, checkpoints.
    let config = Config {
        database_url: worker_url.clone(),
        replica: "catalog-least".into(),
        ..system.config.clone()
    };
    let store = EventStore::connect_lazy(&worker_url, 4).expect("a pool");
    let shutdown = Shutdown::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(services::run(
        Service::Catalog,
        config.clone(),
        store.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(Relay::new(config, store.clone()).run(shutdown.clone()));
    system.wait_for_consumers(Service::Catalog, 1).await;
    assert!(system.add_product("tea", 5).await.is_accepted());
    assert!(system.reserve("tea", OrderId::new(), 2).await.is_accepted());
    system.wait_for_projection().await;
    system.wait_for_checkpoint(relay::CHECKPOINT).await;
    assert_eq!(system.stock("tea").await, (3, 2, 0));

    let mut conn = sqlx::PgConnection::connect(worker_url.expose())
        .await
        .expect("connect as the worker login");
    for sql in [
        "UPDATE event_log SET data = '{}'",
        "DELETE FROM event_log",
        "TRUNCATE event_log",
        "UPDATE auth_credentials SET password_hash = '$argon2id$x'",
        "DELETE FROM processed_messages",
        "CREATE TABLE mine (id int)",
    ] {
        let error = sqlx::query(sql)
            .execute(&mut conn)
            .await
            .expect_err(sql)
            .to_string();
        // Refused by the privilege check, not (only) by the append-only trigger.
        assert!(error.contains("permission denied"), "{sql}: {error}");
    }
    assert_eq!(system.count("SELECT count(*) FROM event_log").await, 2);
    let _ = conn.close().await;

    shutdown.trigger();
    while tasks.join_next().await.is_some() {}
    store.pool().close().await;
    system.stop().await;
    drop(login);
}

#[tokio::test]
async fn a_superuser_is_refused_as_the_worker_login() {
    let system = TestSystem::start().await;
    // The harness's own user is the server's administrator.
    let error =
        db_roles::ensure_worker_login(&system.config.database_url, &system.config.database_url)
            .await
            .expect_err("the administrator must not become a worker login")
            .to_string();
    assert!(error.contains("superuser"), "{error}");
    system.stop().await;
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
