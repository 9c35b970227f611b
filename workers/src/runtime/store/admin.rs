//! Creating and dropping databases, through the server's `postgres` database: for
//! `eventline migrate` on a fresh server, tests and the demo. Never used by a worker.

use super::StoreError;
use crate::runtime::config::SecretUrl;

/// Creates the database `url` names if it does not exist, connecting to the server's
/// `postgres` database to do it. Lets `eventline migrate` work on a fresh server.
pub async fn create_database_if_missing(url: &SecretUrl) -> Result<(), StoreError> {
    let name = url.database_name().unwrap_or("eventline").to_owned();
    let mut admin = admin_connection(url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        // Identifiers cannot be bound as parameters; quote it the way PostgreSQL does.
        let quoted = name.replace('"', "\"\"");
        match sqlx::query(&format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut admin)
            .await
        {
            Ok(_) => {}
            // Another process created it between our check and our CREATE.
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Drops the database `url` names, disconnecting its sessions. For tests and the demo.
pub async fn drop_database(url: &SecretUrl) -> Result<(), StoreError> {
    let Some(name) = url.database_name() else {
        return Ok(());
    };
    let quoted = name.replace('"', "\"\"");
    let mut admin = admin_connection(url).await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)"
    ))
    .execute(&mut admin)
    .await?;
    Ok(())
}

async fn admin_connection(url: &SecretUrl) -> Result<sqlx::PgConnection, StoreError> {
    use sqlx::Connection;
    let admin_url = url.with_path("postgres");
    sqlx::PgConnection::connect(admin_url.expose())
        .await
        .map_err(|source| StoreError::Connect {
            url: admin_url.to_string(),
            source,
        })
}
