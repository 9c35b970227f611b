//! `eventline migrate`: create the database if it is missing, apply the migrations, and
//! (with EVENTLINE_WORKER_DATABASE_URL) create the workers' least-privilege login.
//!
//! It must never run as part of a worker's start-up: only this step runs as an administrator.

use anyhow::Context;
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
    // The workers' own login (README, "Least privilege"): created here because only an
    // administrator can, and migrate is the one step that runs as one.
    if let Some(worker_url) = std::env::var("EVENTLINE_WORKER_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
    {
        let worker_url = SecretUrl::new(worker_url);
        let user = db_roles::ensure_worker_login(&config.database_url, &worker_url)
            .await
            .context("creating the workers' login from EVENTLINE_WORKER_DATABASE_URL")?;
        println!(
            "login {user} is a member of {}: it may append to the event log, never rewrite it",
            db_roles::WORKER_ROLE
        );
    }
    Ok(Exit::Success)
}
