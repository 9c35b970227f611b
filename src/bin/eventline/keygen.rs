//! `eventline keygen`: a fresh Ed25519 key pair for session tokens and fresh passwords for
//! the per-service broker users, printed as environment variables.
//!
//! It must never write the secrets anywhere but stdout: where they are kept is the
//! operator's choice.

use eventline::broker_users;
use eventline_events::topology::BrokerUser;
use eventline_workers::runtime::token;

use crate::{Exit, Globals};

pub fn run(_globals: Globals) -> anyhow::Result<Exit> {
    let key = token::generate_signing_key();
    println!(
        "EVENTLINE_AUTH_SIGNING_KEY={}",
        token::encode_key(&key.to_bytes())
    );
    println!(
        "EVENTLINE_AUTH_PUBLIC_KEY={}",
        token::encode_key(&key.verifying_key().to_bytes())
    );
    for user in BrokerUser::ALL {
        println!(
            "{}={}",
            broker_users::password_var(user),
            broker_users::generate_password()
        );
    }
    Ok(Exit::Success)
}
