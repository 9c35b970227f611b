//! The database logins of the workers and the relay: one per service (and one for the relay),
//! each a member of its process's group role (schema/migrations/0006_service_roles.sql), which
//! may read and write only that service's tables, append only to its own streams and see only
//! its own inbox rows — and, like every worker role, never rewrite the log (0003).
//!
//! Creating a login needs an administrator, so only `eventline migrate` (and the tests) call
//! this; workers never do. The password passes through SQL text, so the connection used here
//! has statement logging switched off, and no error built here quotes a statement.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use eventline_events::topology::BrokerUser;

use super::config::SecretUrl;
use super::store::StoreError;

/// The group role every service's role is a member of: the shared log, inbox and checkpoints.
pub const WORKER_ROLE: &str = "eventline_worker";

/// The group role of one process kind: `eventline_catalog`, …, `eventline_relay`.
pub fn group_role(user: BrokerUser) -> String {
    format!("eventline_{}", user.name())
}

/// The variable `eventline migrate` reads the login of `user` from, such as
/// `EVENTLINE_CATALOG_DATABASE_URL`: the URL that process then uses as its `DATABASE_URL`.
pub fn login_url_var(user: BrokerUser) -> String {
    format!(
        "EVENTLINE_{}_DATABASE_URL",
        user.name().to_ascii_uppercase()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(
        "{0} names no user; write it as postgres://USER:PASSWORD@HOST/DATABASE with the login the workers should use"
    )]
    NoUser(String),
    #[error(
        "{url} names {user:?}, which {why}; a service's login must have only its own role's privileges: choose another user name"
    )]
    TooPowerful {
        url: String,
        user: String,
        why: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for RoleError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(error))
    }
}

/// Creates the login `worker_url` names for `process` (or brings an existing one up to date:
/// password, membership of [`group_role`]), connected as the administrator of `admin_url`.
/// Returns the login's name.
///
/// Refuses a login that is a superuser, bypasses row security, owns the event log, or
/// already belongs to another process's role: each would make the grants meaningless.
pub async fn ensure_login(
    admin_url: &SecretUrl,
    worker_url: &SecretUrl,
    process: BrokerUser,
) -> Result<String, RoleError> {
    let (user, password) = worker_url
        .credentials()
        .ok_or_else(|| RoleError::NoUser(worker_url.to_string()))?;
    let mut admin = admin_connection(admin_url).await?;
    let existing: Option<(bool, bool)> =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
            .bind(&user)
            .fetch_optional(&mut admin)
            .await?;
    let too_powerful = |why| RoleError::TooPowerful {
        url: worker_url.to_string(),
        user: user.clone(),
        why,
    };
    match existing {
        Some((true, _)) => return Err(too_powerful("is a superuser")),
        Some((_, true)) => return Err(too_powerful("bypasses row security")),
        Some(_) => {}
        None => {
            // Identifiers and literals cannot be bound; PostgreSQL's own format() quotes them.
            let create = format_sql(
                &mut admin,
                "SELECT format('CREATE ROLE %I LOGIN', $1)",
                &user,
                None,
            )
            .await?;
            match sqlx::raw_sql(&create).execute(&mut admin).await {
                Ok(_) => {}
                // Another migrate created it between our check and our CREATE.
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let owns_log: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 'event_log' AND tableowner = $1)",
    )
    .bind(&user)
    .fetch_one(&mut admin)
    .await?;
    if owns_log {
        return Err(too_powerful("owns the event log"));
    }
    let group = group_role(process);
    let others: Vec<String> = BrokerUser::ALL
        .into_iter()
        .filter(|other| *other != process)
        .map(group_role)
        .collect();
    let shared: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_roles g, pg_roles l \
         WHERE l.rolname = $1 AND g.rolname = ANY($2) AND pg_has_role(l.oid, g.oid, 'MEMBER'))",
    )
    .bind(&user)
    .bind(&others)
    .fetch_one(&mut admin)
    .await?;
    if shared {
        return Err(too_powerful(
            "is already another service's (or the relay's) login",
        ));
    }
    let grant = format_sql(
        &mut admin,
        &format!("SELECT format('GRANT {group} TO %I', $1)"),
        &user,
        None,
    )
    .await?;
    sqlx::raw_sql(&grant).execute(&mut admin).await?;
    if let Some(password) = password {
        let alter = format_sql(
            &mut admin,
            "SELECT format('ALTER ROLE %I PASSWORD %L', $1, $2)",
            &user,
            Some(&password),
        )
        .await?;
        sqlx::raw_sql(&alter).execute(&mut admin).await?;
    }
    let _ = admin.close().await;
    Ok(user)
}

/// Drops a login (for tests, which create one per test), connecting to the server's
/// `postgres` database: the one `admin_url` names may be gone already.
pub async fn drop_login(admin_url: &SecretUrl, user: &str) -> Result<(), RoleError> {
    let mut admin = admin_connection(&admin_url.with_path("postgres")).await?;
    let drop = format_sql(
        &mut admin,
        "SELECT format('DROP ROLE IF EXISTS %I', $1)",
        user,
        None,
    )
    .await?;
    sqlx::raw_sql(&drop).execute(&mut admin).await?;
    let _ = admin.close().await;
    Ok(())
}

async fn admin_connection(url: &SecretUrl) -> Result<PgConnection, RoleError> {
    let connect_error = |source| {
        RoleError::Store(StoreError::Connect {
            url: url.to_string(),
            source,
        })
    };
    let options: PgConnectOptions = url.expose().parse().map_err(connect_error)?;
    options
        .disable_statement_logging()
        .connect()
        .await
        .map_err(connect_error)
}

async fn format_sql(
    conn: &mut PgConnection,
    template: &str,
    first: &str,
    second: Option<&str>,
) -> Result<String, sqlx::Error> {
    let query = sqlx::query_scalar(template).bind(first);
    let query = match second {
        Some(second) => query.bind(second),
        None => query,
    };
    query.fetch_one(conn).await
}

fn is_duplicate(error: &sqlx::Error) -> bool {
    // 42710 duplicate_object; 23505 unique_violation when two CREATEs race.
    matches!(
        error.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("42710" | "23505")
    )
}
