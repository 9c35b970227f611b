//! The auth service (the seed's Server A): registration and log-in.
//!
//! A custom [`Handler`] rather than a pure aggregate, because its decisions need work that is
//! neither pure nor cheap: argon2id hashing (run on the blocking pool, never on the async
//! runtime) and signing tokens. The user stream (`auth.user-{email}`) still decides uniqueness
//! with the same optimistic append as every other stream; the hash goes to auth's own
//! `auth_credentials` table in the same transaction.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use eventline_events::auth::{
    AuthCommand, AuthEvent, Claims, LogIn, Password, RegisterUser, Role, TOKEN_LIFETIME_SECS,
    UserId, UserLoggedIn, UserRegistered,
};
use eventline_events::{Rejection, Reply, Service};
use serde_json::json;

use crate::runtime::State;
use crate::runtime::aggregate::{accepted, append_events, load};
use crate::runtime::handler::{Context, Handled, Handler, HandlerError};
use crate::runtime::store::{CommandTx, StoreError};
use crate::runtime::token;

/// A user stream's state.
#[derive(Clone, Debug, Default)]
pub struct User(Option<(UserId, Role)>);

impl State for User {
    type Event = AuthEvent;

    fn apply(&mut self, event: &AuthEvent) {
        if let AuthEvent::UserRegistered(e) = event {
            self.0 = Some((e.user_id, e.role));
        }
    }
}

/// The same message for a wrong password and an unknown email, so that log-in does not
/// reveal which emails are registered.
const INVALID_CREDENTIALS: &str = "unknown email or wrong password";

#[derive(Clone, Copy, Debug, Default)]
pub struct AuthHandler;

impl Handler for AuthHandler {
    type Command = AuthCommand;
    const SERVICE: Service = Service::Auth;

    async fn handle(
        &self,
        tx: &mut CommandTx,
        ctx: &Context<'_>,
        command: &AuthCommand,
    ) -> Result<Handled, HandlerError> {
        match command {
            AuthCommand::RegisterUser(c) => register(tx, ctx, c).await,
            AuthCommand::LogIn(c) => log_in(tx, ctx, c).await,
        }
    }
}

async fn register(
    tx: &mut CommandTx,
    ctx: &Context<'_>,
    command: &RegisterUser,
) -> Result<Handled, HandlerError> {
    let stream_id = command.email.stream_id();
    let (user, version) = load::<User>(tx, &stream_id).await?;
    if user.0.is_some() {
        return Ok(rejected(
            "email_taken",
            format!(
                "{} is already registered; log in instead",
                command.email.as_str()
            ),
        ));
    }
    let hash = hash_password(command.password.clone()).await?;
    let user_id = UserId::new();
    let event = AuthEvent::from(UserRegistered {
        user_id,
        email: command.email.clone(),
        role: Role::Customer,
    });
    let recorded = append_events(tx, ctx, &stream_id, version, &[event]).await?;
    sqlx::query("INSERT INTO auth_credentials (user_id, email, password_hash) VALUES ($1, $2, $3)")
        .bind(user_id.as_uuid())
        .bind(command.email.as_str())
        .bind(&hash)
        .execute(tx.conn())
        .await
        .map_err(StoreError::from)?;
    Ok(Handled::reply(accepted(
        stream_id,
        version,
        recorded,
        Some(json!({ "user_id": user_id })),
    )))
}

async fn log_in(
    tx: &mut CommandTx,
    ctx: &Context<'_>,
    command: &LogIn,
) -> Result<Handled, HandlerError> {
    let stream_id = command.email.stream_id();
    let (user, version) = load::<User>(tx, &stream_id).await?;
    let stored: Option<String> =
        sqlx::query_scalar("SELECT password_hash FROM auth_credentials WHERE email = $1")
            .bind(command.email.as_str())
            .fetch_optional(tx.conn())
            .await
            .map_err(StoreError::from)?;
    // Verify even for an unknown email, against a dummy hash, so both take as long.
    let verified = verify_password(command.password.clone(), stored.clone()).await?;
    let (Some((user_id, role)), true) = (user.0, verified && stored.is_some()) else {
        return Ok(rejected("invalid_credentials", INVALID_CREDENTIALS.into()));
    };
    let Some(signing) = &ctx.config.auth.signing else {
        return Ok(rejected(
            "auth_unavailable",
            "this auth worker has no signing key (EVENTLINE_AUTH_SIGNING_KEY); an operator must set one".into(),
        ));
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims {
        sub: user_id,
        role,
        iat: now,
        exp: now + TOKEN_LIFETIME_SECS,
    };
    let token = token::sign(&claims, &signing.0);
    let event = AuthEvent::from(UserLoggedIn { user_id });
    let recorded = append_events(tx, ctx, &stream_id, version, &[event]).await?;
    let reply = |token: serde_json::Value| {
        accepted(
            stream_id.clone(),
            version,
            recorded.clone(),
            Some(
                json!({ "user_id": user_id, "role": role, "token": token, "expires_at": claims.exp }),
            ),
        )
    };
    Ok(Handled {
        reply: reply(json!(token)),
        // Tokens are never stored: a duplicate delivery is told to log in again.
        stored_reply: Some(reply(json!(null))),
        dispatch: Vec::new(),
    })
}

fn rejected(code: &str, message: String) -> Handled {
    Handled::reply(Reply::Rejected {
        reason: Rejection::new(code, message),
    })
}

/// argon2id with the crate's defaults, which are OWASP's recommended minimum
/// (m = 19 MiB, t = 2, p = 1). On the blocking pool: it takes tens of milliseconds of CPU.
async fn hash_password(password: Password) -> Result<String, HandlerError> {
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt)
            .map_err(|e| HandlerError::Transient(format!("no randomness for a salt: {e}")))?;
        let salt = SaltString::encode_b64(&salt)
            .map_err(|e| HandlerError::Transient(format!("salt encoding: {e}")))?;
        Argon2::default()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| HandlerError::Transient(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| HandlerError::Transient(format!("hashing task failed: {e}")))?
}

/// A fixed hash to verify against when the email is unknown (constant-ish timing).
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$mPSBfRkcdi6Ydrq03rvC2uG0Ip0pcCt7EVy5nVEjTjs";

async fn verify_password(password: Password, stored: Option<String>) -> Result<bool, HandlerError> {
    tokio::task::spawn_blocking(move || {
        let hash_text = stored.as_deref().unwrap_or(DUMMY_HASH);
        let Ok(hash) = PasswordHash::new(hash_text) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.expose().as_bytes(), &hash)
            .is_ok()
    })
    .await
    .map_err(|e| HandlerError::Transient(format!("verification task failed: {e}")))
}
