//! What a service credential signs, and the signing: the credential orders puts on a saga step
//! ([`service_credential`]) and the one a callee puts on its reply ([`reply_credential`]).
//!
//! A client that sends a saga step by hand (an operator with orders' key) signs here too, so
//! this lives beside the broker helpers rather than in the workers. Verification, and why a
//! credential carries no expiry, are the workers' `runtime::token`. This module never logs a
//! key or a signature.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use eventline_events::Service;
use eventline_events::reply::REPLY_TYPE;

/// What a service credential signs: a domain tag naming the signer and what it signs (so the
/// signature can mean nothing else, such as a session token, or another service's word), the
/// message id, the type, for a reply the causation id, and the exact body bytes. Orders'
/// steps keep the tag they had before replies were signed, so stored steps stay valid.
pub fn credential_input(
    signer: Service,
    message_id: &str,
    message_type: &str,
    causation_id: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut input = Vec::with_capacity(64 + message_id.len() + message_type.len() + body.len());
    input.extend_from_slice(b"eventline service credential v1: ");
    input.extend_from_slice(signer.name().as_bytes());
    if causation_id.is_some() {
        input.extend_from_slice(b" reply");
    }
    input.push(b'\n');
    input.extend_from_slice(message_id.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(message_type.as_bytes());
    input.push(b'\n');
    if let Some(causation_id) = causation_id {
        input.extend_from_slice(causation_id.as_bytes());
        input.push(b'\n');
    }
    input.extend_from_slice(body);
    input
}

/// The credential orders puts on a saga step it sends: base64url of the Ed25519 signature
/// over the message's id, type and body. Deterministic: a re-sent step carries the same one.
pub fn service_credential(
    key: &SigningKey,
    message_id: &str,
    message_type: &str,
    body: &[u8],
) -> String {
    let input = credential_input(Service::Orders, message_id, message_type, None, body);
    URL_SAFE_NO_PAD.encode(key.sign(&input).to_bytes())
}

/// The credential `signer` (catalog or payments) puts on its reply to a saga step: the
/// signature over the reply's id, type ([`REPLY_TYPE`]), causation id and body.
pub fn reply_credential(
    key: &SigningKey,
    signer: Service,
    message_id: &str,
    causation_id: &str,
    body: &[u8],
) -> String {
    let input = credential_input(signer, message_id, REPLY_TYPE, Some(causation_id), body);
    URL_SAFE_NO_PAD.encode(key.sign(&input).to_bytes())
}
