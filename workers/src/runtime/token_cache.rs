//! Session tokens verified once per token, not once per message: a bounded cache of the
//! tokens that verified, keyed by the SHA-256 of the token, holding the principal and expiry
//! that [`token::verify_claims`] found.
//!
//! A client sends the same token on every command for its session's life, and an Ed25519
//! verification costs more than the rest of decoding a message. The cache never stores a
//! token (only its digest, so a memory dump holds nothing to replay), never stores a failure
//! (a tampered or foreign token has another digest, misses, and is verified and refused as
//! before), and applies a cached token's expiry on every hit, so a token past its `exp` is
//! refused `Expired` exactly as an uncached one is. Nothing can make a verified token invalid
//! before its expiry: tokens are stateless (auth keeps no revocation list and has no log-out),
//! and the key is the worker's for its whole life (`EVENTLINE_AUTH_PUBLIC_KEY` is read once at
//! start; rotating it is a restart, which drops the cache). A cache holds its key, so no entry
//! can be checked against any other. It must never log a token or a digest.

use std::collections::HashMap;
use std::sync::Mutex;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use super::token::{self, Principal, TokenError};

/// Tokens a worker remembers by default: a few thousand sessions, about 100 KiB.
pub const DEFAULT_CAPACITY: usize = 4096;

/// What a token that verified proved, until when.
#[derive(Clone, Copy, Debug)]
struct Verified {
    principal: Principal,
    /// The token's `exp`, Unix seconds: at or after it the token is refused.
    expires_at: i64,
}

type TokenDigest = [u8; 32];

/// Two generations of entries: lookups read both, inserts go to `current`, and when
/// `current` is full it becomes `previous` (dropping the old `previous`). That bounds the
/// cache at twice a generation, evicts the tokens unused longest first, and keeps a hit
/// O(1) with no per-entry bookkeeping; a hit in `previous` moves to `current`.
#[derive(Debug, Default)]
struct Generations {
    current: HashMap<TokenDigest, Verified>,
    previous: HashMap<TokenDigest, Verified>,
}

/// The session tokens one worker verifies, with the key it verifies them by.
#[derive(Debug)]
pub struct TokenCache {
    key: VerifyingKey,
    /// Entries per generation: half the capacity.
    generation: usize,
    entries: Mutex<Generations>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (at least two) verified with `key`.
    pub fn new(key: VerifyingKey, capacity: usize) -> Self {
        Self {
            key,
            generation: (capacity / 2).max(1),
            entries: Mutex::new(Generations::default()),
        }
    }

    /// [`token::verify`], answered from the cache when this very token verified before.
    /// `now` is Unix seconds.
    pub fn verify(&self, token: &str, now: i64) -> Result<Principal, TokenError> {
        let digest: TokenDigest = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.lookup(&digest) {
            if hit.expires_at <= now {
                self.forget(&digest);
                return Err(TokenError::Expired);
            }
            return Ok(hit.principal);
        }
        let claims = token::verify_claims(token, &self.key, now)?;
        let verified = Verified {
            principal: Principal {
                user_id: claims.sub,
                role: claims.role,
            },
            expires_at: claims.exp,
        };
        self.insert(digest, verified);
        Ok(verified.principal)
    }

    /// How many tokens the cache holds now.
    pub fn len(&self) -> usize {
        let entries = self.lock();
        entries.current.len() + entries.previous.len()
    }

    /// Whether the cache holds no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lookup(&self, digest: &TokenDigest) -> Option<Verified> {
        let mut entries = self.lock();
        if let Some(hit) = entries.current.get(digest) {
            return Some(*hit);
        }
        let hit = entries.previous.remove(digest)?;
        self.put(&mut entries, *digest, hit);
        Some(hit)
    }

    fn insert(&self, digest: TokenDigest, verified: Verified) {
        let mut entries = self.lock();
        self.put(&mut entries, digest, verified);
    }

    fn put(&self, entries: &mut Generations, digest: TokenDigest, verified: Verified) {
        if entries.current.len() >= self.generation {
            entries.previous = std::mem::take(&mut entries.current);
        }
        entries.current.insert(digest, verified);
    }

    fn forget(&self, digest: &TokenDigest) {
        let mut entries = self.lock();
        entries.current.remove(digest);
        entries.previous.remove(digest);
    }

    /// The entries, even if a thread panicked holding them: every state they can be left in
    /// is a valid cache (each map operation is whole), so poisoning carries no meaning here.
    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use eventline_events::auth::{Claims, Role, UserId};

    use super::*;

    fn claims(role: Role, exp: i64) -> Claims {
        Claims {
            sub: UserId::new(),
            role,
            iat: 0,
            exp,
        }
    }

    #[test]
    fn a_cached_token_returns_the_claims_it_verified_with() {
        let key = token::generate_signing_key();
        let cache = TokenCache::new(key.verifying_key(), 16);
        let claims = claims(Role::Admin, 100);
        let token = token::sign(&claims, &key);
        let first = cache.verify(&token, 10).unwrap();
        assert_eq!(cache.len(), 1);
        let again = cache.verify(&token, 20).unwrap();
        assert_eq!(first, again);
        assert_eq!(
            again,
            Principal {
                user_id: claims.sub,
                role: Role::Admin
            }
        );
        assert_eq!(cache.len(), 1, "a hit adds no entry");
    }

    #[test]
    fn a_cached_token_past_its_expiry_is_refused_as_an_uncached_one_is() {
        let key = token::generate_signing_key();
        let cache = TokenCache::new(key.verifying_key(), 16);
        let token = token::sign(&claims(Role::Customer, 100), &key);
        cache.verify(&token, 99).unwrap();
        assert_eq!(cache.verify(&token, 100), Err(TokenError::Expired));
        assert_eq!(
            token::verify(&token, &key.verifying_key(), 100),
            Err(TokenError::Expired)
        );
        assert_eq!(cache.verify(&token, 5000), Err(TokenError::Expired));
        assert!(cache.is_empty(), "an expired token is dropped, not kept");
    }

    #[test]
    fn a_tampered_token_never_hits_the_entry_of_the_genuine_one() {
        let key = token::generate_signing_key();
        let cache = TokenCache::new(key.verifying_key(), 16);
        let genuine = token::sign(&claims(Role::Customer, 100), &key);
        cache.verify(&genuine, 10).unwrap();
        // The genuine signature over claims edited to say admin.
        let mut parts: Vec<String> = genuine.split('.').map(str::to_owned).collect();
        let mut forged = claims(Role::Admin, 100);
        forged.sub = cache.verify(&genuine, 10).unwrap().user_id;
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = parts.join(".");
        for _ in 0..2 {
            assert_eq!(cache.verify(&tampered, 10), Err(TokenError::BadSignature));
        }
        // Another key's token for the same claims, and a token with a byte appended.
        let foreign = token::sign(&forged, &token::generate_signing_key());
        assert_eq!(cache.verify(&foreign, 10), Err(TokenError::BadSignature));
        assert_eq!(
            cache.verify(&format!("{genuine}A"), 10),
            Err(TokenError::Malformed)
        );
        assert_eq!(cache.len(), 1, "a refused token is never cached");
    }

    #[test]
    fn the_cache_holds_no_more_than_its_capacity_and_keeps_the_tokens_in_use() {
        let key = token::generate_signing_key();
        let capacity = 8;
        let cache = TokenCache::new(key.verifying_key(), capacity);
        let busy = token::sign(&claims(Role::Customer, 100), &key);
        for _ in 0..50 {
            let token = token::sign(&claims(Role::Customer, 100), &key);
            cache.verify(&token, 10).unwrap();
            cache.verify(&busy, 10).unwrap();
            assert!(cache.len() <= capacity, "{} entries", cache.len());
        }
        // The token used between every other one is never the one evicted.
        let entries = cache.lock();
        let digest: TokenDigest = Sha256::digest(busy.as_bytes()).into();
        assert!(entries.current.contains_key(&digest) || entries.previous.contains_key(&digest));
    }
}
