//! Configuration from the environment, and the redacting URL type that keeps passwords out of
//! logs and errors.

use std::fmt;

use eventline_events::Namespace;

/// A connection URL that may hold a password. `Display` and `Debug` show it with the password
/// replaced by `***`; only [`SecretUrl::expose`] gives the real string, for the driver.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for handing to a driver. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the same host and path but another last path segment (database name).
    pub fn with_path(&self, path: &str) -> Self {
        let (base, query) = match self.0.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (self.0.as_str(), None),
        };
        let authority_start = base.find("://").map_or(0, |i| i + 3);
        let base = match base[authority_start..].find('/') {
            Some(slash) => &base[..authority_start + slash],
            None => base,
        };
        let mut url = format!("{base}/{path}");
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }
        Self(url)
    }

    /// The database name: the last path segment, without the query string.
    pub fn database_name(&self) -> Option<&str> {
        let base = self.0.split('?').next()?;
        let authority_start = base.find("://")? + 3;
        let path = &base[authority_start..];
        let name = &path[path.find('/')? + 1..];
        (!name.is_empty()).then_some(name)
    }

    fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return url.clone();
        };
        let authority_end = url[scheme_end..]
            .find(['/', '?'])
            .map_or(url.len(), |i| scheme_end + i);
        let authority = &url[scheme_end..authority_end];
        let mut out = url[..scheme_end].to_owned();
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                if userinfo.contains(':') {
                    out.push_str(&format!("{user}:***@{host}"));
                } else {
                    out.push_str(&format!("{user}@{host}"));
                }
            }
            None => out.push_str(authority),
        }
        let rest = &url[authority_end..];
        // A password can also hide in the query string (`?password=…`).
        match rest.split_once('?') {
            Some((path, query)) => {
                out.push_str(path);
                out.push('?');
                let params: Vec<String> = query
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                        _ => kv.to_owned(),
                    })
                    .collect();
                out.push_str(&params.join("&"));
            }
            None => out.push_str(rest),
        }
        out
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

/// Where the services are and how a process identifies itself.
#[derive(Clone, Debug)]
pub struct Config {
    pub amqp_url: SecretUrl,
    pub database_url: SecretUrl,
    pub namespace: Namespace,
    /// This process's name in logs, replies and the inbox (which replica handled what).
    pub replica: String,
    /// How many unacknowledged deliveries a worker holds at once; also its concurrency.
    pub prefetch: u16,
    /// Database connections per process.
    pub max_db_connections: u32,
}

/// The default broker: the local RabbitMQ of a development machine.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The default database: `eventline` on the local PostgreSQL (created by `eventline migrate`).
pub const DEFAULT_DATABASE_URL: &str = "postgres://root@127.0.0.1:5432/eventline";

impl Config {
    /// Reads `AMQP_URL`, `DATABASE_URL`, `EVENTLINE_NAMESPACE`, `EVENTLINE_REPLICA`,
    /// `EVENTLINE_PREFETCH` and `EVENTLINE_DB_CONNECTIONS`, each with a local default.
    pub fn from_env() -> Result<Self, ConfigError> {
        let var = |name: &'static str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let namespace = match var("EVENTLINE_NAMESPACE") {
            Some(ns) => Namespace::parse(&ns).map_err(|reason| ConfigError::Invalid {
                name: "EVENTLINE_NAMESPACE",
                reason,
            })?,
            None => Namespace::default(),
        };
        let number = |name: &'static str, default: u32, max: u32| -> Result<u32, ConfigError> {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| ConfigError::Invalid {
                        name,
                        reason: format!("{v:?} is not a whole number from 1 to {max}"),
                    }),
            }
        };
        Ok(Self {
            amqp_url: SecretUrl::new(var("AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.into())),
            database_url: SecretUrl::new(
                var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
            ),
            namespace,
            replica: var("EVENTLINE_REPLICA").unwrap_or_else(default_replica_name),
            prefetch: number("EVENTLINE_PREFETCH", 64, 1000)? as u16,
            max_db_connections: number("EVENTLINE_DB_CONNECTIONS", 8, 200)?,
        })
    }
}

/// `{hostname}-{pid}`: unique per process on a machine, and readable in a compose setup where
/// the hostname is the container id.
pub fn default_replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned());
    format!("{host}-{}", std::process::id())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_display_or_debug() {
        let url = SecretUrl::new("amqp://guest:s3cret@10.0.0.1:5672/%2f");
        assert_eq!(url.to_string(), "amqp://guest:***@10.0.0.1:5672/%2f");
        assert!(!format!("{url:?}").contains("s3cret"));
        let url = SecretUrl::new("postgres://app:p%40ss@db/x?sslmode=disable&password=hunter2");
        assert_eq!(
            url.to_string(),
            "postgres://app:***@db/x?sslmode=disable&password=***"
        );
        assert_eq!(
            SecretUrl::new("postgres://root@h:5432/db").to_string(),
            "postgres://root@h:5432/db"
        );
    }

    #[test]
    fn with_path_swaps_the_database_name_only() {
        let url = SecretUrl::new("postgres://u:p@h:5432/one?sslmode=disable");
        assert_eq!(
            url.with_path("two").expose(),
            "postgres://u:p@h:5432/two?sslmode=disable"
        );
        assert_eq!(
            SecretUrl::new("postgres://h").with_path("db").expose(),
            "postgres://h/db"
        );
    }
}
