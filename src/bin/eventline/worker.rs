//! `eventline worker SERVICE`: one replica of a service's worker, until SIGTERM or Ctrl-C.
//!
//! It must never start a worker that would refuse everything for a configuration reason it
//! can see at start-up (the auth worker without a signing key): it fails with what to set.

use anyhow::bail;
use eventline_events::Service;
use eventline_workers::runtime::Shutdown;
use eventline_workers::runtime::config::SagaKeys;
use eventline_workers::services;

use crate::database::wait_for_database;
use crate::{Exit, Globals};

#[derive(clap::Args)]
pub struct Args {
    /// auth, catalog, orders or payments.
    service: Service,
}

pub async fn run(Args { service }: Args, globals: Globals) -> anyhow::Result<Exit> {
    let config = globals.config;
    if service == Service::Auth && config.auth.signing.is_none() {
        bail!(
            "the auth worker needs EVENTLINE_AUTH_SIGNING_KEY to sign session tokens; \
             generate keys with `eventline keygen`"
        );
    }
    if config.auth.verifying.is_none() {
        tracing::warn!(
            "EVENTLINE_AUTH_PUBLIC_KEY is not set: commands that need a session token will be refused"
        );
    }
    // Every saga service verifies the others' credentials and signs its own messages: orders
    // its steps, catalog and payments their replies (which orders refuses unsigned).
    if config.saga.of(service).is_some() {
        for (other, signing, public) in SagaKeys::SIGNERS {
            let Some(keys) = config.saga.of(other) else {
                continue;
            };
            if other == service && keys.signing.is_none() {
                bail!(
                    "the {service} worker needs {signing} to sign its saga messages; \
                     generate keys with `eventline keygen`"
                );
            }
            if other != service && keys.verifying.is_none() {
                tracing::warn!(
                    "{public} is not set: saga messages from {other} will be refused as forbidden"
                );
            }
        }
    }
    let shutdown = Shutdown::on_signals();
    let store = wait_for_database(&config).await?;
    eventline_workers::runtime::http::Settings::from_env()?
        .start(&config.namespace, &store, false, &shutdown)
        .await?;
    services::run(service, config, store, shutdown).await;
    Ok(Exit::Success)
}
