//! `eventline token`: mint a session token with EVENTLINE_AUTH_SIGNING_KEY (operators: e.g.
//! an admin token for catalog changes).
//!
//! It must never print the signing key, nor mint a token for a role the contract does not
//! know.

use anyhow::Context;
use eventline_events::auth::{Claims, Role, UserId};
use eventline_workers::runtime::token;

use crate::{Exit, Globals};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "admin")]
    role: String,
    #[arg(long)]
    user: Option<uuid::Uuid>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: i64,
}

pub fn run(Args { role, user, ttl }: Args, globals: Globals) -> anyhow::Result<Exit> {
    let signing =
        globals.config.auth.signing.as_ref().context(
            "EVENTLINE_AUTH_SIGNING_KEY is not set; generate keys with `eventline keygen`",
        )?;
    let role: Role = serde_json::from_value(serde_json::Value::String(role.clone()))
        .map_err(|_| anyhow::anyhow!("unknown role {role:?}; use admin or customer"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims {
        sub: user.map_or_else(UserId::new, UserId::from_uuid),
        role,
        iat: now,
        exp: now + ttl,
    };
    let signed = token::sign(&claims, &signing.0);
    if globals.json {
        let json = serde_json::json!({"token": signed, "user_id": claims.sub, "role": claims.role, "expires_at": claims.exp});
        println!("{json}");
    } else {
        println!("{signed}");
    }
    Ok(Exit::Success)
}
