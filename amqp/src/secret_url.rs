//! The redacting URL type that keeps passwords out of logs and errors: a broker's or a
//! database's URL, whose `Display` and `Debug` never show the password.

use std::fmt;

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

    /// The user name and password in the URL's authority, percent-decoded. For creating the
    /// login a URL names (`eventline migrate` with EVENTLINE_{SERVICE}_DATABASE_URL); never log
    /// the password.
    pub fn credentials(&self) -> Option<(String, Option<String>)> {
        let (userinfo, _host) = self.authority().rsplit_once('@')?;
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(percent_decode(password))),
            None => (userinfo, None),
        };
        let user = percent_decode(user);
        (!user.is_empty()).then_some((user, password))
    }

    /// The host and, if the URL names one, the port it points at.
    pub fn host_port(&self) -> Option<(String, Option<u16>)> {
        let host_port = self
            .authority()
            .rsplit_once('@')
            .map_or(self.authority(), |(_, h)| h);
        if host_port.is_empty() {
            return None;
        }
        match host_port.rsplit_once(':') {
            // An IPv6 literal's colons are inside the brackets.
            Some((host, port)) if !host.ends_with(']') || host_port.starts_with('[') => {
                Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()))
            }
            _ => Some((host_port.trim_matches(['[', ']']).to_owned(), None)),
        }
    }

    /// The same URL (credentials, path, query) pointed at `address` instead: how the chaos
    /// runner routes a worker through its proxy.
    pub fn with_address(&self, address: std::net::SocketAddr) -> Self {
        let raw = &self.0;
        let start = raw.find("://").map_or(0, |i| i + 3);
        let end = start + self.authority().len();
        let userinfo = self
            .authority()
            .rfind('@')
            .map_or("", |at| &self.authority()[..=at]);
        Self(format!(
            "{}{userinfo}{address}{}",
            &raw[..start],
            &raw[end..]
        ))
    }

    /// `user:password@host:port`, between the scheme and the path or query.
    fn authority(&self) -> &str {
        let raw = &self.0;
        let start = raw.find("://").map_or(0, |i| i + 3);
        let end = raw[start..]
            .find(['/', '?'])
            .map_or(raw.len(), |i| start + i);
        &raw[start..end]
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

/// `%XX` escapes to bytes; anything malformed is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn credentials_are_percent_decoded() {
        let url = SecretUrl::new("postgres://app%2dw:p%40ss@db:5432/x?sslmode=disable");
        assert_eq!(
            url.credentials(),
            Some(("app-w".to_owned(), Some("p@ss".to_owned())))
        );
        assert_eq!(
            SecretUrl::new("postgres://root@h/db").credentials(),
            Some(("root".to_owned(), None))
        );
        assert_eq!(SecretUrl::new("postgres://h/db").credentials(), None);
    }

    #[test]
    fn urls_are_pointed_elsewhere_keeping_credentials_and_path() {
        let proxy: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let amqp = SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(
            amqp.with_address(proxy).expose(),
            "amqp://guest:guest@127.0.0.1:4000/%2f"
        );
        let pg = SecretUrl::new("postgres://root@localhost/db?sslmode=disable");
        assert_eq!(
            pg.with_address(proxy).expose(),
            "postgres://root@127.0.0.1:4000/db?sslmode=disable"
        );
        assert_eq!(
            SecretUrl::new("postgres://root@localhost/db").host_port(),
            Some(("localhost".into(), None))
        );
        assert_eq!(
            SecretUrl::new("amqp://u:p@10.0.0.1:5673/%2f").host_port(),
            Some(("10.0.0.1".into(), Some(5673)))
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
