//! The browser's session cookie and the CSRF tokens that go with it.
//!
//! The cookie holds an opaque secret, never a JWT: `tss1.<user id>.<session id>.<secret>`, of
//! which the store keeps only `SHA-256(secret)`. User and session ids locate the record in one
//! lookup, as for refresh tokens.
//!
//! CSRF tokens are MACs under the server key, so every instance can check them without state:
//! - per session: `HMAC(key, session id)`, printed in every page of a logged-in user;
//! - before login (login CSRF): `<issued at>.HMAC(key, nonce, issued at)`, where the nonce lives
//!   in a `SameSite=Strict` cookie; it expires, and an expired one re-renders the form.

use std::time::Duration;

use super::clock::Timestamp;
use super::secret::{b64, b64_exact, ct_eq, hmac, random_32, sha256};
use super::session::SessionId;
use super::user::UserId;

const PREFIX: &str = "tss1";
/// Longest string that could be a session cookie.
pub const MAX_LEN: usize = 128;
/// How long a login form stays submittable.
pub const LOGIN_CSRF_MAX_AGE: Duration = Duration::from_secs(2 * 3600);

/// A parsed session cookie.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionCookie {
    /// Owner.
    pub user_id: UserId,
    /// Session.
    pub session_id: SessionId,
    secret: [u8; 32],
}

impl std::fmt::Debug for SessionCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCookie")
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl SessionCookie {
    /// A fresh cookie for a new session.
    pub fn new(user_id: UserId, session_id: SessionId) -> Self {
        Self {
            user_id,
            session_id,
            secret: random_32(),
        }
    }

    /// What the store keeps.
    pub fn hash(&self) -> [u8; 32] {
        sha256(&self.secret)
    }

    /// The cookie value.
    pub fn encode(&self) -> String {
        format!(
            "{PREFIX}.{}.{}.{}",
            self.user_id.0.simple(),
            self.session_id.0.simple(),
            b64(&self.secret)
        )
    }

    /// Parses a cookie value; `None` for anything malformed.
    pub fn decode(s: &str) -> Option<Self> {
        if s.len() > MAX_LEN {
            return None;
        }
        let mut parts = s.split('.');
        if parts.next()? != PREFIX {
            return None;
        }
        let user_id = UserId::parse(parts.next()?)?;
        let session_id = SessionId::parse(parts.next()?)?;
        let secret = b64_exact::<32>(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            user_id,
            session_id,
            secret,
        })
    }

    /// Whether this cookie's secret is the one whose hash the session stores.
    pub fn matches(&self, stored: Option<&[u8; 32]>) -> bool {
        stored.is_some_and(|h| ct_eq(&self.hash(), h))
    }
}

/// The CSRF token of a session.
pub fn session_csrf(key: &[u8], session: SessionId) -> String {
    b64(&hmac(key, "tessera/csrf/session", &[session.0.as_bytes()]))
}

/// Checks a session's CSRF token in constant time.
pub fn check_session_csrf(key: &[u8], session: SessionId, token: &str) -> bool {
    b64_exact::<32>(token).is_some_and(|t| {
        ct_eq(
            &t,
            &hmac(key, "tessera/csrf/session", &[session.0.as_bytes()]),
        )
    })
}

/// A fresh random nonce for the pre-login CSRF cookie.
pub fn login_nonce() -> String {
    b64(&random_32())
}

/// The login form's CSRF token for `nonce`, issued at `now`.
pub fn login_csrf(key: &[u8], nonce: &str, now: Timestamp) -> String {
    let ts = now.as_secs().to_string();
    let mac = hmac(
        key,
        "tessera/csrf/login",
        &[nonce.as_bytes(), ts.as_bytes()],
    );
    format!("{ts}.{}", b64(&mac))
}

/// The verdict on a login form's CSRF token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginCsrf {
    /// Ours, for this browser, fresh.
    Valid,
    /// Ours, but older than [`LOGIN_CSRF_MAX_AGE`]: show the form again.
    Expired,
    /// Missing, forged or for another browser.
    Invalid,
}

/// Checks a login form's CSRF token against the browser's nonce.
pub fn check_login_csrf(key: &[u8], nonce: &str, token: &str, now: Timestamp) -> LoginCsrf {
    let Some((ts, mac)) = token.split_once('.') else {
        return LoginCsrf::Invalid;
    };
    let (Ok(issued), Some(mac)) = (ts.parse::<i64>(), b64_exact::<32>(mac)) else {
        return LoginCsrf::Invalid;
    };
    let expected = hmac(
        key,
        "tessera/csrf/login",
        &[nonce.as_bytes(), ts.as_bytes()],
    );
    if !ct_eq(&mac, &expected) {
        return LoginCsrf::Invalid;
    }
    let age = now.as_secs().saturating_sub(issued);
    if age < 0 || age as u64 > LOGIN_CSRF_MAX_AGE.as_secs() {
        LoginCsrf::Expired
    } else {
        LoginCsrf::Valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"k";

    #[test]
    fn cookies_round_trip_and_match_only_their_hash() {
        let c = SessionCookie::new(UserId::new(), SessionId::new());
        let parsed = SessionCookie::decode(&c.encode());
        assert_eq!(parsed.as_ref(), Some(&c));
        assert!(c.matches(Some(&c.hash())));
        assert!(!c.matches(Some(&[0; 32])));
        assert!(!c.matches(None));
        assert_eq!(SessionCookie::decode("tss1.x.y.z"), None);
        assert_eq!(
            SessionCookie::decode(&format!("{}.extra", c.encode())),
            None
        );
    }

    #[test]
    fn session_csrf_tokens_are_bound_to_their_session() {
        let (a, b) = (SessionId::new(), SessionId::new());
        let t = session_csrf(KEY, a);
        assert!(check_session_csrf(KEY, a, &t));
        assert!(!check_session_csrf(KEY, b, &t));
        assert!(!check_session_csrf(b"other", a, &t));
        assert!(!check_session_csrf(KEY, a, ""));
    }

    #[test]
    fn login_csrf_tokens_expire_and_are_bound_to_the_nonce() {
        let now = Timestamp::from_millis(1_800_000_000_000);
        let t = login_csrf(KEY, "nonce", now);
        assert_eq!(check_login_csrf(KEY, "nonce", &t, now), LoginCsrf::Valid);
        assert_eq!(check_login_csrf(KEY, "other", &t, now), LoginCsrf::Invalid);
        let later = now.plus(LOGIN_CSRF_MAX_AGE + Duration::from_secs(1));
        assert_eq!(
            check_login_csrf(KEY, "nonce", &t, later),
            LoginCsrf::Expired
        );
        assert_eq!(
            check_login_csrf(KEY, "nonce", "garbage", now),
            LoginCsrf::Invalid
        );
    }
}
