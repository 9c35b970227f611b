//! `eventline migrate`: create the database if it is missing, apply the migrations, and
//! (with EVENTLINE_{AUTH,CATALOG,ORDERS,PAYMENTS,RELAY}_DATABASE_URL) create each process's
//! least-privilege login.
//!
//! It must never run as part of a worker's start-up: only this step runs as an administrator.

use anyhow::Context;
use eventline_events::topology::BrokerUser;
use eventline_workers::runtime::SecretUrl;
use eventline_workers::runtime::db_roles;
use eventline_workers::runtime::store::{self, EventStore};

use crate::{Exit, Globals};

pub async fn run(globals: Globals) -> anyhow::Result<Exit> {
    let config = globals.config;
    store::create_database_if_missing(&config.database_url).await?;
    let store = EventStore::connect(&config.database_url, 2).await?;
    store.migrate().await?;
    println!("database {} is migrated", config.database_url);
    // Each process's own login (README, "Least privilege"): created here because only an
    // administrator can, and migrate is the one step that runs as one.
    for process in BrokerUser::ALL {
        let var = db_roles::login_url_var(process);
        let Some(url) = std::env::var(&var).ok().filter(|v| !v.is_empty()) else {
            continue;
        };
        let url = SecretUrl::new(url);
        let user = db_roles::ensure_login(&config.database_url, &url, process)
            .await
            .with_context(|| format!("creating the {process:?} login from {var}"))?;
        println!(
            "login {user} is a member of {}: its own tables and streams only; it never rewrites the log",
            db_roles::group_role(process)
        );
    }
    Ok(Exit::Success)
}
