//! `eventline dead-letters SERVICE [show ID | redrive …]`: list a service's dead letters with
//! their reasons, print one in full, or send selected ones back to the service.
//!
//! It must never remove a dead letter it has not re-driven: listing and showing leave the
//! queue as it was, and `Client::redrive` removes a letter only once its copy is confirmed.

use anyhow::bail;
use eventline::client::Selection;
use eventline::{Client, DeadLetter};
use eventline_events::Service;

use crate::{Exit, Globals};

#[derive(clap::Args)]
pub struct Args {
    service: Service,
    /// How many to list.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Print one dead letter in full: its reason, every header and the whole body.
    Show { message_id: String },
    /// Send dead letters back to the service's queue with the same message ids (the inbox
    /// makes anything already applied a duplicate), removing each from the dead-letter queue
    /// once the broker has its copy. Choose message ids, --code or --all.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["message_ids", "code", "all"])))]
    Redrive {
        /// The message ids to re-drive.
        message_ids: Vec<String>,
        /// Every dead letter with this reason code, e.g. retries_exhausted.
        #[arg(long)]
        code: Option<String>,
        /// Every dead letter of the service.
        #[arg(long)]
        all: bool,
        /// Session token to send them with (the dead letters' own were removed), e.g. an admin
        /// token for catalog changes; or EVENTLINE_TOKEN.
        #[arg(long, env = "EVENTLINE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

pub async fn run(args: Args, globals: Globals) -> anyhow::Result<Exit> {
    let Args {
        service,
        limit,
        action,
    } = args;
    let config = globals.config;
    let json = globals.json;
    let mut client = Client::connect(&config.amqp_url, config.namespace.clone()).await?;
    let queue = client.topology().dead_letter_queue(service);
    let mut exit = Exit::Success;
    match action {
        None => {
            let letters = client.dead_letters(service, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!("no dead letters in {queue}");
            } else {
                for letter in &letters {
                    println!(
                        "{}  {}  [{}] {}\n    body: {}",
                        letter.message_id.as_deref().unwrap_or("(no id)"),
                        letter.message_type.as_deref().unwrap_or("(no type)"),
                        letter.code,
                        letter.reason,
                        letter.body.chars().take(200).collect::<String>()
                    );
                }
            }
        }
        Some(Action::Show { message_id }) => {
            let Some(letter) = client.dead_letter(service, &message_id).await? else {
                client.close().await;
                bail!(
                    "no dead letter with message id {message_id} in {queue}; list them with `eventline dead-letters {service}`"
                );
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&letter)?);
            } else {
                print_dead_letter(&letter);
            }
        }
        Some(Action::Redrive {
            message_ids,
            code,
            all,
            token,
        }) => {
            if let Some(token) = token {
                client = client.with_token(token);
            }
            let selection = if all {
                Selection::All
            } else if let Some(code) = code {
                Selection::Code(code)
            } else {
                Selection::Ids(message_ids)
            };
            let report = client.redrive(service, &selection).await?;
            if !report.refused.is_empty() || !report.not_found.is_empty() {
                // Done, but not everything asked for (as `send` for a refusal).
                exit = Exit::Refused;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for id in &report.redriven {
                    println!("redriven  {id}");
                }
                for refused in &report.refused {
                    println!("kept      {}: {}", refused.message_id, refused.why);
                }
                for id in &report.not_found {
                    println!("not found {id} (not in {queue})");
                }
                println!(
                    "{} redriven to {service}; {} left in {queue}",
                    report.redriven.len(),
                    report.left
                );
            }
        }
    }
    client.close().await;
    Ok(exit)
}

fn print_dead_letter(letter: &DeadLetter) {
    println!(
        "message id   {}\ntype         {}\nreason       [{}] {}\nqueue        {}\nhandled by   {}\ncorrelation  {}\nheaders:",
        letter.message_id.as_deref().unwrap_or("(none)"),
        letter.message_type.as_deref().unwrap_or("(none)"),
        letter.code,
        letter.reason,
        letter.original_queue.as_deref().unwrap_or("?"),
        letter.handled_by.as_deref().unwrap_or("?"),
        letter.correlation_id.as_deref().unwrap_or("?"),
    );
    for (name, value) in &letter.headers {
        println!("  {name}: {value}");
    }
    // Pretty-printed when it is JSON, as sent otherwise.
    let body = serde_json::from_str::<serde_json::Value>(&letter.body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| letter.body.clone());
    println!("body:\n{body}");
}
