//! Refresh tokens: opaque, self-authenticating, rotating.
//!
//! Wire form: `tsr1.<user id>.<session id>.<generation>.<secret>.<tag>` where
//! - `secret` is 256 bits: random for generation 0, and for every later generation
//!   `HMAC(server key, previous token)`. Deriving the successor instead of drawing it lets a
//!   duplicate presentation inside the grace window get the *identical* successor without the
//!   store ever holding a token (only `SHA-256(secret)` is stored).
//! - `tag` is a MAC over everything before it. It proves that *we* minted the token, so that
//!   knowing a session id (which is public: it is in every JWT) is not enough to trigger reuse
//!   detection and log a victim out with a made-up token.
//! - user id and session id locate the record in one lookup (and give Redis its hash tag).

use super::secret::{b64, b64_exact, ct_eq, hmac, random_32, sha256};
use super::session::SessionId;
use super::user::UserId;

const PREFIX: &str = "tsr1";
const LABEL_NEXT: &str = "tessera/refresh/next";
const LABEL_TAG: &str = "tessera/refresh/tag";
/// Longest string that could be a refresh token; anything longer is rejected before parsing.
pub const MAX_LEN: usize = 200;

/// A parsed, authenticated refresh token.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// Owner.
    pub user_id: UserId,
    /// Session (family).
    pub session_id: SessionId,
    /// Rotation count.
    pub generation: u64,
    secret: [u8; 32],
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshToken")
            .field("session_id", &self.session_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl RefreshToken {
    /// The first token of a new session.
    pub fn first(user_id: UserId, session_id: SessionId) -> Self {
        Self {
            user_id,
            session_id,
            generation: 0,
            secret: random_32(),
        }
    }

    /// The successor of this token: deterministic under `key`, so a retried refresh gets the
    /// same one.
    pub fn successor(&self, key: &[u8]) -> Self {
        let secret = hmac(key, LABEL_NEXT, &[self.encode(key).as_bytes()]);
        Self {
            user_id: self.user_id,
            session_id: self.session_id,
            generation: self.generation + 1,
            secret,
        }
    }

    /// What the store keeps.
    pub fn hash(&self) -> [u8; 32] {
        sha256(&self.secret)
    }

    /// The wire form, with its tag.
    pub fn encode(&self, key: &[u8]) -> String {
        let body = format!(
            "{PREFIX}.{}.{}.{}.{}",
            self.user_id.0.simple(),
            self.session_id.0.simple(),
            self.generation,
            b64(&self.secret)
        );
        let tag = hmac(key, LABEL_TAG, &[body.as_bytes()]);
        format!("{body}.{}", b64(&tag[..16]))
    }

    /// Parses and authenticates a presented token; `None` for anything we did not mint.
    pub fn decode(s: &str, key: &[u8]) -> Option<Self> {
        if s.len() > MAX_LEN {
            return None;
        }
        let (body, tag) = s.rsplit_once('.')?;
        let tag = b64_exact::<16>(tag)?;
        let expected = hmac(key, LABEL_TAG, &[body.as_bytes()]);
        if !ct_eq(&tag, &expected[..16]) {
            return None;
        }
        let mut parts = body.split('.');
        if parts.next()? != PREFIX {
            return None;
        }
        let user_id = UserId::parse(parts.next()?)?;
        let session_id = SessionId::parse(parts.next()?)?;
        let generation = parts.next()?.parse().ok()?;
        let secret = b64_exact::<32>(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            user_id,
            session_id,
            generation,
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"test key of some length";

    #[test]
    fn round_trips_and_successors_are_deterministic() {
        let t = RefreshToken::first(UserId::new(), SessionId::new());
        let wire = t.encode(KEY);
        assert!(wire.len() <= MAX_LEN);
        assert_eq!(RefreshToken::decode(&wire, KEY), Some(t.clone()));
        let next = t.successor(KEY);
        assert_eq!(next.generation, 1);
        assert_eq!(next, t.successor(KEY));
        assert_ne!(next.hash(), t.hash());
    }

    #[test]
    fn a_token_not_minted_under_our_key_is_rejected() {
        let t = RefreshToken::first(UserId::new(), SessionId::new());
        let wire = t.encode(KEY);
        assert_eq!(RefreshToken::decode(&wire, b"another key"), None);
        let mut forged = wire.clone();
        forged.replace_range(forged.len() - 30..forged.len() - 29, "A");
        if forged != wire {
            assert_eq!(RefreshToken::decode(&forged, KEY), None);
        }
        assert_eq!(RefreshToken::decode("", KEY), None);
        assert_eq!(RefreshToken::decode(&"a.".repeat(500), KEY), None);
    }
}
