//! `eventline keygen`: fresh Ed25519 key pairs (auth's, for session tokens; orders', catalog's
//! and payments', for the saga's service credentials) and fresh passwords for the per-service broker users, printed as
//! environment variables (or one JSON object with `--json`).
//!
//! It must never write the secrets anywhere but stdout: where they are kept is the
//! operator's choice.

use eventline::broker_users;
use eventline_events::topology::BrokerUser;
use eventline_workers::runtime::config::SagaKeys;
use eventline_workers::runtime::token;

use crate::{Exit, Globals};

pub fn run(globals: Globals) -> anyhow::Result<Exit> {
    let auth = token::generate_signing_key();
    let mut vars = vec![
        (
            "EVENTLINE_AUTH_SIGNING_KEY".to_owned(),
            token::encode_key(&auth.to_bytes()),
        ),
        (
            "EVENTLINE_AUTH_PUBLIC_KEY".to_owned(),
            token::encode_key(&auth.verifying_key().to_bytes()),
        ),
    ];
    // Orders signs the saga's steps, catalog and payments their replies; each gets only its
    // own signing key, every saga service all three public keys.
    for (_, signing, public) in SagaKeys::SIGNERS {
        let key = token::generate_signing_key();
        vars.push((signing.to_owned(), token::encode_key(&key.to_bytes())));
        vars.push((
            public.to_owned(),
            token::encode_key(&key.verifying_key().to_bytes()),
        ));
    }
    for user in BrokerUser::ALL {
        vars.push((
            broker_users::password_var(user),
            broker_users::generate_password(),
        ));
    }
    if globals.json {
        let map: serde_json::Map<String, serde_json::Value> =
            vars.into_iter().map(|(k, v)| (k, v.into())).collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        vars.iter()
            .for_each(|(name, value)| println!("{name}={value}"));
    }
    Ok(Exit::Success)
}
