//! Session tokens: EdDSA (Ed25519) JWTs, signed by auth, verified by every service locally.
//!
//! Verification needs only the public key, so no service calls auth to check a token (the
//! seed's autonomy): a service keeps working while auth is down. The format is a standard JWT
//! (`alg: EdDSA`), so any JWT library can read it; the code is small enough to own.
//!
//! Service credentials ([`service_credential`], [`check_service_credential`]) prove that the
//! orders service sent a saga step. Any client on the broker may publish anything with any
//! id, and broker users narrow only what a service may *read*; so catalog, payments and
//! orders itself accept `reserve_stock`, `release_reservation`, `commit_reservation`,
//! `charge_payment`, `refund_payment` and `expire_order` only with an Ed25519 signature by
//! orders' own key (`EVENTLINE_ORDERS_SIGNING_KEY`) over that exact message: its id, type and
//! body bytes. A captured credential therefore authorizes nothing else: another id, type or
//! body fails the signature, and the same message again is a duplicate the inbox absorbs.
//! It carries no expiry on purpose: a step may wait in a delay, retry or dead-letter queue
//! for as long as an operator takes to re-drive it, and must still be accepted then.
//!
//! Reply credentials ([`reply_credential`], [`check_reply_credential`]) are the same in the
//! other direction: catalog and payments sign each reply to a step with their own key
//! (`EVENTLINE_CATALOG_SIGNING_KEY`, `EVENTLINE_PAYMENTS_SIGNING_KEY`) over the reply's id,
//! type, causation id (the step it answers, which names the order) and body, and orders takes
//! a reply to a step only with the signature of that step's callee. A signature also covers
//! the signer's name, so one service's key never speaks for another, and a reply's causation
//! id, so a genuine reply cannot be re-pointed at another step or order.
//! This module never logs a key or a token, and never needs a network call to decide.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use eventline_amqp::credential::credential_input;
pub use eventline_amqp::credential::{reply_credential, service_credential};
use eventline_events::IncomingMessage;
use eventline_events::auth::{Claims, Role, SERVICE_CREDENTIAL_HEADER, UserId};
use eventline_events::envelope::HeaderValue;
use eventline_events::{OutgoingMessage, Service};

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

/// Checks a token's signature and expiry (`now` in Unix seconds) and returns its principal.
/// Workers go through [`super::token_cache::TokenCache`], which calls this once per token.
pub fn verify(token: &str, key: &VerifyingKey, now: i64) -> Result<Principal, TokenError> {
    let claims = verify_claims(token, key, now)?;
    Ok(Principal {
        user_id: claims.sub,
        role: claims.role,
    })
}

/// [`verify`], returning the whole claims (the expiry too, which a cache must keep applying).
pub fn verify_claims(token: &str, key: &VerifyingKey, now: i64) -> Result<Claims, TokenError> {
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
    Ok(claims)
}

/// Why a message that only the order saga may send was refused, or a reply to one of its
/// steps that its callee did not sign. Every variant's code is `forbidden`; the message is
/// dead-lettered (with this reason) before its id is claimed in the inbox, so a forged step
/// sent first under a saga step's (predictable) id cannot take that id from the real step.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "{0} is a step of the order saga: only the orders service may send it, with a service credential (header x-eventline-service-credential), and this message has none; place an order with orders.place_order instead"
    )]
    Missing(String),
    #[error(
        "{0} carries a service credential that is not valid for this message (forged, copied from another message, or signed by another key); only the orders service may send saga steps"
    )]
    Invalid(String),
    #[error(
        "this worker cannot check service credentials: EVENTLINE_ORDERS_PUBLIC_KEY is not set (generate keys with `eventline keygen`), so it refuses {0}"
    )]
    NoKey(String),
    #[error(
        "this eventline.reply answers a step of the order saga that only {0} may answer, with its service credential (header x-eventline-service-credential), and it has none"
    )]
    ReplyMissing(Service),
    #[error(
        "this eventline.reply answers a step of the order saga that only {0} may answer, and its service credential does not verify with the public key of {0} for this reply (forged, copied from another message, or signed by another service's key)"
    )]
    ReplyInvalid(Service),
    #[error(
        "this worker cannot check {0}'s replies: EVENTLINE_{upper}_PUBLIC_KEY is not set (generate keys with `eventline keygen`), so it refuses them", upper = .0.name().to_uppercase()
    )]
    ReplyNoKey(Service),
}

impl CredentialError {
    pub fn code(&self) -> &'static str {
        "forbidden"
    }
}

/// Puts `signer`'s [`reply_credential`] on `reply` (already addressed: its ids are final).
pub fn sign_reply(reply: &mut OutgoingMessage, key: &SigningKey, signer: Service) {
    let credential = reply_credential(
        key,
        signer,
        &reply.metadata.message_id.to_string(),
        &reply.metadata.causation_id.to_string(),
        &reply.body,
    );
    reply
        .extra_headers
        .push((SERVICE_CREDENTIAL_HEADER, HeaderValue::Text(credential)));
}

/// The message's credential header as signature bytes: `Ok(None)` when there is none.
fn credential_of(message: &IncomingMessage) -> Result<Option<Signature>, ()> {
    let credential = match message.headers.get(SERVICE_CREDENTIAL_HEADER) {
        Some(HeaderValue::Text(credential)) => credential,
        Some(_) => return Err(()),
        None => return Ok(None),
    };
    let bytes: [u8; 64] = URL_SAFE_NO_PAD
        .decode(credential.trim_end_matches('='))
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(())?;
    Ok(Some(Signature::from_bytes(&bytes)))
}

/// A credential read from its message but not yet checked: the bytes it must sign, its
/// signature, the key that must have made it, and the refusal if it did not. Reading is
/// cheap; the check is one Ed25519 verification, which [`Unchecked::check`] does alone and
/// [`super::credential_batch::check_all`] does for many at once, for about half the cost each.
#[derive(Clone, Debug)]
pub struct Unchecked {
    pub(super) input: Vec<u8>,
    pub(super) signature: Signature,
    pub(super) key: VerifyingKey,
    pub(super) refusal: CredentialError,
}

impl Unchecked {
    /// The one signature check.
    pub fn check(&self) -> Result<(), CredentialError> {
        self.key
            .verify(&self.input, &self.signature)
            .map_err(|_| self.refusal.clone())
    }
}

/// Reads the credential orders must have put on this saga step; refuses at once (no
/// signature check needed) when there is none, it is not a signature, or there is no key.
/// The worker asks [`super::Handler::only_from_saga`] which messages need one.
pub fn service_credential_of(
    message: &IncomingMessage,
    key: Option<&VerifyingKey>,
) -> Result<Unchecked, CredentialError> {
    let message_type = message.message_type.clone().unwrap_or_default();
    let signature = match credential_of(message) {
        Ok(Some(signature)) => signature,
        Ok(None) => return Err(CredentialError::Missing(message_type)),
        Err(()) => return Err(CredentialError::Invalid(message_type)),
    };
    let key = *key.ok_or_else(|| CredentialError::NoKey(message_type.clone()))?;
    let input = credential_input(
        Service::Orders,
        message.message_id.as_deref().unwrap_or_default(),
        &message_type,
        None,
        &message.body,
    );
    Ok(Unchecked {
        input,
        signature,
        key,
        refusal: CredentialError::Invalid(message_type),
    })
}

/// Checks that orders signed this very message: [`service_credential_of`], then its check.
pub fn check_service_credential(
    message: &IncomingMessage,
    key: Option<&VerifyingKey>,
) -> Result<(), CredentialError> {
    service_credential_of(message, key)?.check()
}

/// Reads the credential `callee` must have put on this reply to a saga step (its id, type,
/// causation id and body); refuses at once when there is none or no key. The worker asks
/// [`super::Handler::answered_by`] which replies need one.
pub fn reply_credential_of(
    message: &IncomingMessage,
    causation_id: &str,
    callee: Service,
    key: Option<&VerifyingKey>,
) -> Result<Unchecked, CredentialError> {
    let signature = match credential_of(message) {
        Ok(Some(signature)) => signature,
        Ok(None) => return Err(CredentialError::ReplyMissing(callee)),
        Err(()) => return Err(CredentialError::ReplyInvalid(callee)),
    };
    let key = *key.ok_or(CredentialError::ReplyNoKey(callee))?;
    let input = credential_input(
        callee,
        message.message_id.as_deref().unwrap_or_default(),
        message.message_type.as_deref().unwrap_or_default(),
        Some(causation_id),
        &message.body,
    );
    Ok(Unchecked {
        input,
        signature,
        key,
        refusal: CredentialError::ReplyInvalid(callee),
    })
}

/// Checks that `callee` signed this very reply: [`reply_credential_of`], then its check.
pub fn check_reply_credential(
    message: &IncomingMessage,
    causation_id: &str,
    callee: Service,
    key: Option<&VerifyingKey>,
) -> Result<(), CredentialError> {
    reply_credential_of(message, causation_id, callee, key)?.check()
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
    use eventline_events::reply::REPLY_TYPE;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: UserId::new(),
            role: Role::Customer,
            iat: 0,
            exp,
        }
    }

    fn step_message(
        id: &str,
        message_type: &str,
        body: &str,
        credential: Option<String>,
    ) -> IncomingMessage {
        let mut message = IncomingMessage {
            message_id: Some(id.into()),
            message_type: Some(message_type.into()),
            body: body.as_bytes().to_vec(),
            ..IncomingMessage::default()
        };
        if let Some(credential) = credential {
            message.headers.insert(
                SERVICE_CREDENTIAL_HEADER.into(),
                HeaderValue::Text(credential),
            );
        }
        message
    }

    #[test]
    fn a_service_credential_authorizes_only_the_message_it_signed() {
        let orders = generate_signing_key();
        let public = orders.verifying_key();
        let (id, kind, body) = (
            "0193a5c2-7e41-7b3a-9c1d-4f2e8a6b0c11",
            "payments.refund_payment",
            r#"{"order_id":"x"}"#,
        );
        let credential = service_credential(&orders, id, kind, body.as_bytes());
        assert_eq!(
            check_service_credential(
                &step_message(id, kind, body, Some(credential.clone())),
                Some(&public)
            ),
            Ok(())
        );
        // The same credential on another id, another type or another body is refused.
        let other_id = "0193a5c2-7e41-7b3a-9c1d-4f2e8a6b0c12";
        for forged in [
            step_message(other_id, kind, body, Some(credential.clone())),
            step_message(
                id,
                "payments.charge_payment",
                body,
                Some(credential.clone()),
            ),
            step_message(id, kind, r#"{"order_id":"y"}"#, Some(credential.clone())),
        ] {
            assert!(matches!(
                check_service_credential(&forged, Some(&public)),
                Err(CredentialError::Invalid(_))
            ));
        }
        // Signed by another key (a client's own), garbage, or absent.
        let foreign = service_credential(&generate_signing_key(), id, kind, body.as_bytes());
        assert!(matches!(
            check_service_credential(&step_message(id, kind, body, Some(foreign)), Some(&public)),
            Err(CredentialError::Invalid(_))
        ));
        assert!(matches!(
            check_service_credential(
                &step_message(id, kind, body, Some("AAAA".into())),
                Some(&public)
            ),
            Err(CredentialError::Invalid(_))
        ));
        assert!(matches!(
            check_service_credential(&step_message(id, kind, body, None), Some(&public)),
            Err(CredentialError::Missing(_))
        ));
        assert!(matches!(
            check_service_credential(&step_message(id, kind, body, Some(credential)), None),
            Err(CredentialError::NoKey(_))
        ));
        // A session token's signature is no credential, even from the same key.
        let token = mint(&orders, Role::Admin, 60);
        let signature = token.rsplit('.').next().unwrap().to_owned();
        assert!(matches!(
            check_service_credential(
                &step_message(id, kind, body, Some(signature)),
                Some(&public)
            ),
            Err(CredentialError::Invalid(_))
        ));
    }

    #[test]
    fn a_reply_credential_speaks_only_for_its_service_and_the_step_it_answers() {
        let (payments, catalog) = (generate_signing_key(), generate_signing_key());
        let public = payments.verifying_key();
        let (id, step, body) = (
            "0193a5c2-7e41-7b3a-9c1d-4f2e8a6b0c21",
            "0193a5c2-7e41-7b3a-9c1d-4f2e8a6b0c22",
            r#"{"outcome":"accepted"}"#,
        );
        let reply = |credential: Option<String>| step_message(id, REPLY_TYPE, body, credential);
        let signed = reply_credential(&payments, Service::Payments, id, step, body.as_bytes());
        let check = |message: &IncomingMessage, causation: &str| {
            check_reply_credential(message, causation, Service::Payments, Some(&public))
        };
        assert_eq!(check(&reply(Some(signed.clone())), step), Ok(()));
        // Re-pointed at another step, or another body: refused.
        let other_step = "0193a5c2-7e41-7b3a-9c1d-4f2e8a6b0c23";
        assert_eq!(
            check(&reply(Some(signed.clone())), other_step),
            Err(CredentialError::ReplyInvalid(Service::Payments))
        );
        let mut altered = reply(Some(signed.clone()));
        altered.body = br#"{"outcome":"rejected"}"#.to_vec();
        assert_eq!(
            check(&altered, step),
            Err(CredentialError::ReplyInvalid(Service::Payments))
        );
        // Catalog's key, signing as catalog or passing itself off as payments.
        for signer in [Service::Catalog, Service::Payments] {
            let foreign = reply_credential(&catalog, signer, id, step, body.as_bytes());
            assert_eq!(
                check(&reply(Some(foreign)), step),
                Err(CredentialError::ReplyInvalid(Service::Payments))
            );
        }
        // Payments' own key signing as catalog speaks for no one but catalog.
        let as_catalog = reply_credential(&payments, Service::Catalog, id, step, body.as_bytes());
        assert_eq!(
            check(&reply(Some(as_catalog)), step),
            Err(CredentialError::ReplyInvalid(Service::Payments))
        );
        // A step credential by the same key is no reply credential.
        let step_credential = service_credential(&payments, id, REPLY_TYPE, body.as_bytes());
        assert_eq!(
            check(&reply(Some(step_credential)), step),
            Err(CredentialError::ReplyInvalid(Service::Payments))
        );
        assert_eq!(
            check(&reply(None), step),
            Err(CredentialError::ReplyMissing(Service::Payments))
        );
        assert_eq!(
            check_reply_credential(&reply(Some(signed)), step, Service::Payments, None),
            Err(CredentialError::ReplyNoKey(Service::Payments))
        );
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
