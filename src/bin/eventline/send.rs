//! `eventline send TYPE BODY`: publish any command, as any client may, and print its reply.
//!
//! It must never check the body against the contract: the services do, and seeing how they
//! refuse bad input is part of what this command is for.

use std::time::Duration;

use anyhow::Context;
use eventline::Client;
use eventline_events::{MessageId, Metadata, OutgoingMessage, Reply};

use crate::{Exit, Globals};

#[derive(clap::Args)]
pub struct Args {
    /// The message type, e.g. catalog.reserve_stock (see schema/json).
    message_type: String,
    /// The JSON body, e.g. '{"product_id":"tea","order_id":"…","quantity":1}'.
    body: String,
    /// Do not wait for the reply.
    #[arg(long)]
    no_wait: bool,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Reuse a message id (e.g. to retry a command whose reply was lost; it is never
    /// applied twice).
    #[arg(long)]
    message_id: Option<uuid::Uuid>,
    /// Session token for commands that need one (or EVENTLINE_TOKEN).
    #[arg(long, env = "EVENTLINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub async fn run(args: Args, globals: Globals) -> anyhow::Result<Exit> {
    let Args {
        message_type,
        body,
        no_wait,
        timeout,
        message_id,
        token,
    } = args;
    let config = globals.config;
    let body: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("the body is not valid JSON: {body}"))?;
    let mut metadata = Metadata::origin(&message_type);
    if let Some(id) = message_id {
        metadata.message_id = MessageId::from_uuid(id);
        metadata.correlation_id = metadata.message_id.into();
        metadata.causation_id = metadata.message_id.into();
    }
    let message = OutgoingMessage {
        metadata,
        body: body.to_string().into_bytes(),
        extra_headers: Vec::new(),
    };
    let mut client = Client::connect(&config.amqp_url, config.namespace.clone()).await?;
    if let Some(token) = token {
        client = client.with_token(token);
    }
    let mut exit = Exit::Success;
    if no_wait {
        client.publish(&message).await?;
        println!("sent {}", message.metadata.message_id);
    } else {
        let reply = client
            .request_message(message, Duration::from_secs(timeout))
            .await?;
        print_reply(&reply, globals.json);
        if !reply.is_accepted() {
            exit = Exit::Refused;
        }
    }
    client.close().await;
    Ok(exit)
}

fn print_reply(reply: &Reply, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(reply).unwrap_or_default()
        );
        return;
    }
    match reply {
        Reply::Accepted {
            stream_id,
            events,
            result,
        } if events.is_empty() && result.is_none() => {
            println!("accepted: nothing to change in {stream_id} (already done)");
        }
        Reply::Accepted {
            stream_id,
            events,
            result,
        } => {
            println!("accepted: {stream_id}");
            if let Some(result) = result {
                println!("  result: {result}");
            }
            for event in events {
                println!(
                    "  v{} {} {}",
                    event.stream_version, event.message_type, event.data
                );
            }
        }
        Reply::Rejected { reason } => println!("rejected: {} ({})", reason.message, reason.code),
    }
}
