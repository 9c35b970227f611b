//! Session tokens: EdDSA (Ed25519) JWTs, signed by auth, verified by every service locally.
//!
//! Verification needs only the public key, so no service calls auth to check a token (the
//! seed's autonomy): a service keeps working while auth is down. The format is a standard JWT
//! (`alg: EdDSA`), so any JWT library can read it; the code is small enough to own.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use eventline_events::auth::{Claims, Role, UserId};

const HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;

/// Who sent a command, as proven by its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "this command needs a session token in the x-auth-token header; log in with auth.log_in"
    )]
    Missing,
    #[error("the session token is malformed; log in again")]
    Malformed,
    #[error(
        "the session token's signature is not valid for this system (forged, or signed by another key); log in again"
    )]
    BadSignature,
    #[error("the session token expired; log in again")]
    Expired,
    #[error(
        "this worker cannot verify tokens: EVENTLINE_AUTH_PUBLIC_KEY is not set (generate keys with `eventline keygen`)"
    )]
    NoKey,
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Malformed | Self::BadSignature => "token_invalid",
            Self::Expired => "token_expired",
            Self::NoKey => "token_unverifiable",
        }
    }
}

/// Signs claims into a token.
pub fn sign(claims: &Claims, key: &SigningKey) -> String {
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = key.sign(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// Checks a token's signature and expiry (`now` in Unix seconds) and returns its principal.
/// A token for a new user with `role`, valid for `lifetime_s` seconds from now: what an
/// operator, the demo or a test hands a client (auth signs its own tokens at log-in).
pub fn mint(key: &SigningKey, role: Role, lifetime_s: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    sign(
        &Claims {
            sub: UserId::new(),
            role,
            iat: now,
            exp: now + lifetime_s,
        },
        key,
    )
}

pub fn verify(token: &str, key: &VerifyingKey, now: i64) -> Result<Principal, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    if header != HEADER.as_bytes() {
        return Err(TokenError::Malformed);
    }
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(TokenError::Malformed)?;
    let signing_input = &token[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1];
    key.verify(signing_input.as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| TokenError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(Principal {
        user_id: claims.sub,
        role: claims.role,
    })
}

/// A fresh Ed25519 key pair from the operating system's randomness.
pub fn generate_signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    // The OS RNG failing means no secure key can be made at all; nothing sensible to do but stop.
    getrandom::fill(&mut seed).expect("the operating system's random number generator failed");
    SigningKey::from_bytes(&seed)
}

/// Encodes a key for an environment variable.
pub fn encode_key(bytes: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a key from an environment variable (base64url, with or without padding).
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().trim_end_matches('=');
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: UserId::new(),
            role: Role::Customer,
            iat: 0,
            exp,
        }
    }

    #[test]
    fn a_signed_token_verifies_and_names_its_user() {
        let key = generate_signing_key();
        let claims = claims(100);
        let principal = verify(&sign(&claims, &key), &key.verifying_key(), 50).unwrap();
        assert_eq!(principal.user_id, claims.sub);
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let key = generate_signing_key();
        let other = generate_signing_key();
        let token = sign(&claims(100), &key);
        assert_eq!(
            verify(&token, &key.verifying_key(), 100),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&token, &other.verifying_key(), 50),
            Err(TokenError::BadSignature)
        );
        // Same signature, claims edited to become admin.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut forged = claims(100);
        forged.role = Role::Admin;
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            verify(&parts.join("."), &key.verifying_key(), 50),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify("not.a.token", &key.verifying_key(), 50),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify("", &key.verifying_key(), 50),
            Err(TokenError::Malformed)
        );
    }
}
