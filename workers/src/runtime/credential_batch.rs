//! Checking a batch's service credentials at once.
//!
//! Every saga step a catalog or payments worker takes carries orders' Ed25519 signature, and
//! every reply to one that orders takes carries its callee's; checking them one by one was
//! the biggest single cost in a catalog worker's profile at saturation (about a quarter of
//! its CPU, with signing its replies). Ed25519 batch verification checks a group of signatures
//! with one multiscalar multiplication, for about half the cost of checking each alone.
//!
//! A batch verifies only if every signature in it does, so a batch that fails is checked
//! again one signature at a time to say which ones are bad: a forged credential costs its
//! batch that second pass (at most about 1.5 times the old cost per message), never a
//! wrong verdict. Without orders' private key a forgery gets past a group only with
//! negligible probability, as past the single check: dalek derives the group's random
//! weights from all of its inputs, so a forger cannot choose them.

use super::token::{CredentialError, Unchecked};

/// The largest group checked as one. Measured on the 2-core bench machine (2026-12-03, the
/// `credential_cost` example):
/// one check alone 45–54 µs; in a group of 2 42–44 µs a signature, of 4 29–32, of 8 and 16
/// 25–26, of 32 and 64 23–31 (two runs). Past 16 there is nothing to gain, and the swing is
/// wider, so a batch is checked in even groups of at most 16.
const GROUP_UP_TO: usize = 16;

/// How many unchecked credentials a worker gathers before it checks them: the smallest
/// group at the cheapest cost per signature.
pub const GROUP: usize = 8;

/// Each credential's verdict, in order.
pub fn check_all(credentials: &[&Unchecked]) -> Vec<Result<(), CredentialError>> {
    let groups = credentials.len().div_ceil(GROUP_UP_TO);
    if groups == 0 {
        return Vec::new();
    }
    let size = credentials.len().div_ceil(groups);
    credentials.chunks(size).flat_map(check_group).collect()
}

/// One batch verification for the group; each alone only if it fails (or is one).
fn check_group(group: &[&Unchecked]) -> Vec<Result<(), CredentialError>> {
    if group.len() > 1 {
        let inputs: Vec<&[u8]> = group.iter().map(|c| c.input.as_slice()).collect();
        let signatures: Vec<_> = group.iter().map(|c| c.signature).collect();
        let keys: Vec<_> = group.iter().map(|c| c.key).collect();
        if ed25519_dalek::verify_batch(&inputs, &signatures, &keys).is_ok() {
            return vec![Ok(()); group.len()];
        }
    }
    group.iter().map(|c| c.check()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::token::{reply_credential_of, service_credential, service_credential_of};
    use eventline_events::IncomingMessage;
    use eventline_events::Service;
    use eventline_events::auth::SERVICE_CREDENTIAL_HEADER;
    use eventline_events::envelope::HeaderValue;
    use eventline_events::reply::REPLY_TYPE;

    fn key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    fn step(id: usize, signer: &ed25519_dalek::SigningKey) -> IncomingMessage {
        let id = format!("step-{id}");
        let body = format!(r#"{{"order":{id:?}}}"#);
        let credential = service_credential(signer, &id, "catalog.reserve_stock", body.as_bytes());
        let mut message = IncomingMessage {
            message_id: Some(id),
            message_type: Some("catalog.reserve_stock".into()),
            body: body.into_bytes(),
            ..IncomingMessage::default()
        };
        message.headers.insert(
            SERVICE_CREDENTIAL_HEADER.into(),
            HeaderValue::Text(credential),
        );
        message
    }

    fn verdicts(messages: &[IncomingMessage]) -> Vec<Result<(), CredentialError>> {
        let orders = key(1).verifying_key();
        let read: Vec<Unchecked> = messages
            .iter()
            .map(|m| service_credential_of(m, Some(&orders)).unwrap())
            .collect();
        check_all(&read.iter().collect::<Vec<_>>())
    }

    #[test]
    fn a_batch_of_genuine_credentials_all_pass() {
        let messages: Vec<_> = (0..32).map(|i| step(i, &key(1))).collect();
        assert!(verdicts(&messages).iter().all(Result::is_ok));
        assert_eq!(verdicts(&messages[..1]), vec![Ok(())]);
        assert!(check_all(&[]).is_empty());
    }

    #[test]
    fn each_bad_credential_in_a_batch_is_named_and_only_it() {
        // 40: three groups, of 14, 14 and 12.
        let mut messages: Vec<_> = (0..40).map(|i| step(i, &key(1))).collect();
        // Signed by another key; a body changed after signing; a credential moved to
        // another message: each fails on its own, and the rest of its group still passes.
        messages[3] = step(3, &key(2));
        messages[33] = step(33, &key(2));
        messages[7].body.extend_from_slice(b" ");
        let moved = messages[9].headers[SERVICE_CREDENTIAL_HEADER].clone();
        messages[12]
            .headers
            .insert(SERVICE_CREDENTIAL_HEADER.into(), moved);
        let verdicts = verdicts(&messages);
        for (i, verdict) in verdicts.iter().enumerate() {
            if [3, 7, 12, 33].contains(&i) {
                assert_eq!(
                    verdict,
                    &Err(CredentialError::Invalid("catalog.reserve_stock".into())),
                    "message {i}"
                );
            } else {
                assert_eq!(verdict, &Ok(()), "message {i}");
            }
        }
    }

    #[test]
    fn a_batch_mixes_keys_and_credential_kinds() {
        // An orders worker's batch: replies from catalog and payments, each checked with its
        // own callee's key, beside a step checked with orders'.
        let (catalog, payments) = (key(3), key(4));
        let reply = |signer: &ed25519_dalek::SigningKey, service, id: &str, forged: bool| {
            let body = br#"{"status":"ok"}"#.to_vec();
            let credential =
                eventline_amqp::credential::reply_credential(signer, service, id, "step-0", &body);
            let mut message = IncomingMessage {
                message_id: Some(id.into()),
                message_type: Some(REPLY_TYPE.into()),
                body,
                ..IncomingMessage::default()
            };
            message.headers.insert(
                SERVICE_CREDENTIAL_HEADER.into(),
                HeaderValue::Text(credential),
            );
            let claimed = if forged { Service::Payments } else { service };
            let key = if forged {
                payments.verifying_key()
            } else {
                signer.verifying_key()
            };
            reply_credential_of(&message, "step-0", claimed, Some(&key)).unwrap()
        };
        let orders = key(1).verifying_key();
        let read = [
            reply(&catalog, Service::Catalog, "r-1", false),
            service_credential_of(&step(5, &key(1)), Some(&orders)).unwrap(),
            reply(&payments, Service::Payments, "r-2", false),
            // catalog's signature offered as payments' word
            reply(&catalog, Service::Catalog, "r-3", true),
        ];
        assert_eq!(
            check_all(&read.iter().collect::<Vec<_>>()),
            vec![
                Ok(()),
                Ok(()),
                Ok(()),
                Err(CredentialError::ReplyInvalid(Service::Payments))
            ]
        );
    }
}
