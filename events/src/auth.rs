//! The auth service's contract (the seed's Server A): users, passwords and session tokens.
//!
//! Passwords travel only inside `auth.register_user` and `auth.log_in` bodies; they are never
//! recorded in an event, a reply, a log line or a dead letter (the worker redacts them). A
//! log-in's reply carries a signed token; every other service verifies tokens locally with the
//! public key, with no call to auth.

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::id_type;
use crate::values::StreamId;

/// The header that carries a session token on commands that need one.
pub const TOKEN_HEADER: &str = "x-auth-token";
/// The header that carries a service credential on the saga's own commands: an Ed25519
/// signature, by the orders service's key, over the message's id, type and body. Catalog's
/// reservation commands, payments' commands and `orders.expire_order` are refused without it.
pub const SERVICE_CREDENTIAL_HEADER: &str = "x-eventline-service-credential";
/// The stream category of users.
pub const USER_STREAM_CATEGORY: &str = "auth.user";
/// How long a session token is valid.
pub const TOKEN_LIFETIME_SECS: i64 = 3600;

id_type! {
    /// A user's id, assigned at registration.
    UserId
}

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Browses and places orders. Every registered user is a customer.
    Customer,
    /// Manages the catalog. Admin tokens are minted by operators (`eventline token`).
    Admin,
}

/// An email address, lower-cased: `local@domain`, 3 to 254 characters, exactly one `@`, no
/// spaces, control characters or bidirectional overrides (which would let one address display
/// as another).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(value: String) -> Result<Self, String> {
        let value = value.trim().to_lowercase();
        let shape_ok = value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.contains("..")
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
        if (3..=254).contains(&value.len())
            && shape_ok
            && !value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || crate::values::is_bidi_control(c))
        {
            Ok(Self(value))
        } else {
            Err("email must look like name@example.com (3 to 254 characters, no spaces)".to_owned())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The user stream for this email: one stream per address makes registration unique.
    pub fn stream_id(&self) -> StreamId {
        StreamId::new(USER_STREAM_CATEGORY, &self.0)
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Email {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Email".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "minLength": 3, "maxLength": 254, "format": "email" })
    }
}

/// A password in transit: 8 to 128 characters. `Debug` and `Display` never show it, and a
/// validation error never quotes it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn parse(value: String) -> Result<Self, String> {
        let chars = value.chars().count();
        if (8..=128).contains(&chars) {
            Ok(Self(value))
        } else {
            Err(format!(
                "password must be 8 to 128 characters (got {chars})"
            ))
        }
    }

    /// The password itself, for hashing or verifying. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Serialize for Password {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Password {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Password".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "minLength": 8, "maxLength": 128, "writeOnly": true })
    }
}

/// Creates a customer account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterUser {
    pub email: Email,
    pub password: Password,
}

/// Checks a password; the reply's `result` is `{user_id, role, token, expires_at}` (a session
/// token and its expiry in Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogIn {
    pub email: Email,
    pub password: Password,
}

wire_enum! {
    /// Every command the auth service accepts.
    pub enum AuthCommand {
        RegisterUser(RegisterUser) = "auth.register_user",
        LogIn(LogIn) = "auth.log_in",
    }
}

impl AuthCommand {
    pub fn email(&self) -> &Email {
        match self {
            Self::RegisterUser(c) => &c.email,
            Self::LogIn(c) => &c.email,
        }
    }
}

/// A user exists. The password hash is kept apart, in the auth service's own credentials
/// table, so that no event carries anything derived from a password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserRegistered {
    pub user_id: UserId,
    pub email: Email,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserLoggedIn {
    pub user_id: UserId,
}

wire_enum! {
    /// Every event the auth service records.
    pub enum AuthEvent {
        UserRegistered(UserRegistered) = "auth.user_registered",
        UserLoggedIn(UserLoggedIn) = "auth.user_logged_in",
    }
}

/// What a session token asserts, signed by auth. Standard JWT claim names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: UserId,
    pub role: Role,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_debug_or_errors() {
        let command: RegisterUser =
            serde_json::from_str(r#"{"email":"A@Example.com","password":"correct horse"}"#)
                .unwrap();
        assert_eq!(command.email.as_str(), "a@example.com");
        assert!(!format!("{command:?}").contains("correct horse"));
        let err = serde_json::from_str::<RegisterUser>(r#"{"email":"a@b.co","password":"short"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("8 to 128") && !err.contains("short\""),
            "{err}"
        );
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert!(Email::parse("no-at-sign".into()).is_err());
        assert!(Email::parse("a@b".into()).is_err());
        assert!(Email::parse("a@@b.co".into()).is_err());
        assert!(Email::parse("a@b@c.co".into()).is_err());
        assert!(Email::parse("a@b..co".into()).is_err());
        assert!(Email::parse("moc.elgoog\u{202E}@evil.example".into()).is_err());
        assert!(Email::parse("\u{0442}\u{0435}\u{0441}\u{0442}@example.com".into()).is_ok());
        assert_eq!(
            Email::parse(" Bob@Shop.EXAMPLE ".into()).unwrap().as_str(),
            "bob@shop.example"
        );
    }
}
