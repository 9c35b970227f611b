//! Per-service broker users: one RabbitMQ user per service and one for the relay, each allowed
//! only its own queues (the permissions come from [`Topology::permissions`], the one place
//! that knows names).
//!
//! The users are written as a RabbitMQ *definitions* document (the format of
//! `rabbitmqctl export_definitions`), so one artefact serves every way of applying it:
//! `eventline broker-users --apply` imports it with `rabbitmqctl import_definitions`, and
//! the same JSON can be loaded by a broker at boot or posted to the management API.
//!
//! Passwords come from the environment (`eventline keygen` prints fresh ones) and only their
//! salted hashes are written; nothing here prints or logs a password.

use eventline_events::Topology;
use eventline_events::topology::BrokerUser;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum BrokerUsersError {
    #[error(
        "{0} is not set: each broker user needs a password; generate them with `eventline keygen` (and load the file it writes)"
    )]
    MissingPassword(String),
    #[error(
        "could not run {program:?}: {source}. Run this where `rabbitmqctl` can reach the node (as root or the rabbitmq user), or set RABBITMQCTL"
    )]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`rabbitmqctl {action}` failed: {output}")]
    Rabbitmqctl { action: String, output: String },
}

/// The environment variable that holds `user`'s password, e.g. `EVENTLINE_AMQP_PASSWORD_CATALOG`.
pub fn password_var(user: BrokerUser) -> String {
    format!(
        "EVENTLINE_AMQP_PASSWORD_{}",
        user.name().to_ascii_uppercase()
    )
}

/// One user to define, with its password (never shown).
pub struct NewUser {
    pub user: BrokerUser,
    pub password: String,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewUser({:?}, password: ***)", self.user)
    }
}

/// Every user of a deployment ([`BrokerUser::ALL`]), with passwords from the environment.
pub fn users_from_env() -> Result<Vec<NewUser>, BrokerUsersError> {
    BrokerUser::ALL
        .into_iter()
        .map(|user| {
            let var = password_var(user);
            match std::env::var(&var) {
                Ok(password) if !password.is_empty() => Ok(NewUser { user, password }),
                _ => Err(BrokerUsersError::MissingPassword(var)),
            }
        })
        .collect()
}

/// A fresh random password, URL-safe (it goes into `AMQP_URL` unescaped).
pub fn generate_password() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The definitions document for `users` in `vhost`: users (salted SHA-256 password hashes,
/// no tags, so no management access) and their permissions.
pub fn definitions(topology: &Topology, vhost: &str, users: &[NewUser]) -> serde_json::Value {
    let user_entries: Vec<_> = users
        .iter()
        .map(|u| {
            json!({
                "name": topology.broker_user(u.user),
                "password_hash": password_hash(&u.password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": "",
            })
        })
        .collect();
    let permissions: Vec<_> = users
        .iter()
        .map(|u| {
            let p = topology.permissions(u.user);
            json!({
                "user": topology.broker_user(u.user),
                "vhost": vhost,
                "configure": p.configure,
                "write": p.write,
                "read": p.read,
            })
        })
        .collect();
    json!({ "users": user_entries, "permissions": permissions })
}

/// A complete document for a broker to load at boot (`load_definitions`): the virtual host, the
/// operator (`operator`, with every permission and the administrator tag) and the service
/// users. A broker that loads definitions at boot creates no default user or virtual host, so
/// both must be in it.
pub fn boot_definitions(
    topology: &Topology,
    vhost: &str,
    operator: (&str, &str),
    users: &[NewUser],
) -> serde_json::Value {
    let mut document = definitions(topology, vhost, users);
    document["vhosts"] = json!([{ "name": vhost }]);
    if let Some(list) = document["users"].as_array_mut() {
        list.insert(
            0,
            json!({
                "name": operator.0,
                "password_hash": password_hash(operator.1),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": "administrator",
            }),
        );
    }
    if let Some(list) = document["permissions"].as_array_mut() {
        list.insert(
            0,
            json!({
                "user": operator.0,
                "vhost": vhost,
                "configure": ".*",
                "write": ".*",
                "read": ".*",
            }),
        );
    }
    document
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ‖ SHA-256(salt ‖ password)), with
/// a 4-byte random salt.
fn password_hash(password: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let mut salt = [0u8; 4];
    getrandom::fill(&mut salt).expect("the operating system's random source");
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(password.as_bytes())
        .finalize();
    let mut out = salt.to_vec();
    out.extend_from_slice(&digest);
    base64::engine::general_purpose::STANDARD.encode(out)
}

fn rabbitmqctl() -> String {
    std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned())
}

/// Imports `definitions` into the local node with `rabbitmqctl import_definitions` (from its standard input).
/// Additive: users are created or updated, nothing else is touched. The document goes
/// through a pipe, so the hashes are never written to a file.
pub async fn apply(definitions: &serde_json::Value) -> Result<(), BrokerUsersError> {
    run(
        &["import_definitions", "--format", "json"],
        Some(definitions.to_string().into_bytes()),
    )
    .await
}

/// Deletes broker users by name (for tests and tear-down). A user that does not exist is not
/// an error.
pub async fn delete_users(names: &[String]) -> Result<(), BrokerUsersError> {
    for name in names {
        match run(&["delete_user", name], None).await {
            Err(BrokerUsersError::Rabbitmqctl { output, .. })
                if output.contains("does not exist") || output.contains("no_such_user") => {}
            other => other?,
        }
    }
    Ok(())
}

async fn run(args: &[&str], stdin: Option<Vec<u8>>) -> Result<(), BrokerUsersError> {
    use tokio::io::AsyncWriteExt;
    let program = rabbitmqctl();
    let spawn_error = |source| BrokerUsersError::Spawn {
        program: program.clone(),
        source,
    };
    let mut child = tokio::process::Command::new(&program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    // The pipe is dropped after writing (or at once), so rabbitmqctl sees the end of input.
    if let (Some(mut pipe), Some(input)) = (child.stdin.take(), stdin) {
        pipe.write_all(&input).await.map_err(spawn_error)?;
    }
    let output = child.wait_with_output().await.map_err(spawn_error)?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if text.is_empty() {
        text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    Err(BrokerUsersError::Rabbitmqctl {
        action: args.first().copied().unwrap_or_default().to_owned(),
        output: text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_is_rabbitmq_s_salted_sha256_and_never_the_password() {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let hash = password_hash("s3cret");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&hash)
            .unwrap();
        assert_eq!(bytes.len(), 4 + 32);
        let (salt, digest) = bytes.split_at(4);
        let expected = Sha256::new()
            .chain_update(salt)
            .chain_update(b"s3cret")
            .finalize();
        assert_eq!(digest, expected.as_slice());
        assert_ne!(password_hash("s3cret"), hash, "salted: two hashes differ");
    }

    #[test]
    fn definitions_never_carry_a_password() {
        let topology = Topology::default();
        let users = vec![NewUser {
            user: BrokerUser::Relay,
            password: "hunter2-password".into(),
        }];
        let text = definitions(&topology, "/", &users).to_string();
        assert!(!text.contains("hunter2"));
        assert!(text.contains("eventline-relay"));
        assert!(!format!("{:?}", users[0]).contains("hunter2"));
    }
}
