//! `eventline broker-users`: one broker user per service and one for the relay, each allowed
//! only its own queues, as RabbitMQ definitions (printed, imported with --apply, or written as
//! a boot file).
//!
//! It must never write a permission by hand: they all come from `Topology::permissions`
//! (src/broker_users.rs), and only password hashes leave this process.

use anyhow::{Context, bail};
use eventline::broker_users;
use eventline_events::Topology;

use crate::{Exit, Globals};

#[derive(clap::Args)]
pub struct Args {
    /// Import into the local node (run where rabbitmqctl works: as root or rabbitmq).
    #[arg(long)]
    apply: bool,
    /// The virtual host the permissions are for.
    #[arg(long, default_value = "/")]
    vhost: String,
    /// Instead, write a complete file for a broker to load at boot (`load_definitions`;
    /// compose does this): the virtual host, the operator named in AMQP_URL (with all
    /// permissions: a broker loading definitions creates no default user) and the service
    /// users.
    #[arg(long, conflicts_with = "apply")]
    boot_file: Option<std::path::PathBuf>,
}

pub async fn run(args: Args, globals: Globals) -> anyhow::Result<Exit> {
    let Args {
        apply,
        vhost,
        boot_file,
    } = args;
    let config = globals.config;
    let topology = Topology::new(config.namespace.clone());
    let users = broker_users::users_from_env()?;
    if let Some(path) = boot_file {
        let Some((user, Some(password))) = config.amqp_url.credentials() else {
            bail!(
                "--boot-file needs the operator's user and password in AMQP_URL (amqp://user:password@host/…), \
                 got {}",
                config.amqp_url
            );
        };
        let document =
            broker_users::boot_definitions(&topology, &vhost, (&user, &password), &users);
        std::fs::write(&path, serde_json::to_vec_pretty(&document)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "wrote {} (operator {user} and {} service users; password hashes only)",
            path.display(),
            users.len()
        );
        return Ok(Exit::Success);
    }
    let definitions = broker_users::definitions(&topology, &vhost, &users);
    if !apply {
        println!("{}", serde_json::to_string_pretty(&definitions)?);
        return Ok(Exit::Success);
    }
    broker_users::apply(&definitions).await?;
    for new in &users {
        let p = topology.permissions(new.user);
        println!(
            "{} (vhost {vhost}):\n  configure {}\n  write     {}\n  read      {}",
            topology.broker_user(new.user),
            p.configure,
            p.write,
            p.read
        );
    }
    Ok(Exit::Success)
}
