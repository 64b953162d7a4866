//! Sessions: one per login and device. A session is also the refresh-token family: its record
//! holds the hash of the current refresh token, so revoking the session kills every token that
//! hangs off it, and a store that loses the record logs the device out (allowlist, API.md §3).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use super::clock::Timestamp;
use super::user::{Roles, UserId, Username};

/// The public id of a session (JWT `sid`, `/sessions[].id`, `X-Auth-Session`). Not a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl SessionId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// Parses the hyphenated form.
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::try_parse(s).ok().map(Self)
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The refresh-token state of a session: hashes only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshState {
    /// Generation of the current token (0 for the one issued at login).
    pub generation: u64,
    /// SHA-256 of the current token's secret.
    pub hash: [u8; 32],
    /// SHA-256 of the previous token's secret, for the reuse grace window.
    pub prev_hash: Option<[u8; 32]>,
    /// When the previous token was rotated.
    pub rotated_at: Option<Timestamp>,
}

/// A session as stored. It carries the identity `/verify` needs (username, roles) so that the hot
/// path reads one record and never the user table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Public id.
    pub id: SessionId,
    /// Owner.
    pub user_id: UserId,
    /// Owner's username at login (usernames never change).
    pub username: Username,
    /// Owner's roles; updated in place when an admin changes them.
    pub roles: Roles,
    /// Login time.
    pub created_at: Timestamp,
    /// Last authenticated use (written at most every [`touch_interval`]).
    pub last_seen_at: Timestamp,
    /// Sliding idle expiry.
    pub idle_expires_at: Timestamp,
    /// Absolute cap, however active.
    pub absolute_expires_at: Timestamp,
    /// `User-Agent` at login, truncated.
    pub user_agent: Option<String>,
    /// Client IP at login.
    pub ip: Option<String>,
    /// Refresh-token family state.
    pub refresh: RefreshState,
    /// SHA-256 of the browser cookie's secret, for sessions opened by the login form.
    pub cookie_hash: Option<[u8; 32]>,
}

impl Session {
    /// When the session ends if nothing happens: the earlier of idle and absolute expiry.
    pub fn expires_at(&self) -> Timestamp {
        end_of(self.idle_expires_at, self.absolute_expires_at)
    }

    /// Whether the session is usable at `now`.
    pub fn is_alive(&self, now: Timestamp) -> bool {
        now < self.expires_at()
    }

    /// The idle expiry after a use at `now`, never past the absolute cap.
    pub fn slid_idle_expiry(&self, now: Timestamp, idle: Duration) -> Timestamp {
        slid(now, idle, self.absolute_expires_at)
    }

    /// The part authentication reads.
    pub fn active(&self) -> ActiveSession {
        ActiveSession {
            id: self.id,
            user_id: self.user_id,
            username: self.username.clone(),
            roles: self.roles.clone(),
            last_seen_at: self.last_seen_at,
            idle_expires_at: self.idle_expires_at,
            absolute_expires_at: self.absolute_expires_at,
            cookie_hash: self.cookie_hash,
        }
    }
}

/// The expiry rules, shared by [`Session`] and [`ActiveSession`]: a session ends at the earlier
/// of its idle and absolute expiry, and a use slides the idle expiry up to the absolute one.
fn end_of(idle_expires_at: Timestamp, absolute_expires_at: Timestamp) -> Timestamp {
    idle_expires_at.min(absolute_expires_at)
}

fn slid(now: Timestamp, idle: Duration, absolute_expires_at: Timestamp) -> Timestamp {
    now.plus(idle).min(absolute_expires_at)
}

/// What authenticating a request reads of a session: the identity `/verify` answers with, the
/// expiries it checks and slides, the cookie binding. A projection of [`Session`], so that the
/// hot path fetches and parses six fields of the record instead of all thirteen (user agent,
/// IP and refresh state are for the session list and `/token` only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveSession {
    /// Public id.
    pub id: SessionId,
    /// Owner.
    pub user_id: UserId,
    /// Owner's username.
    pub username: Username,
    /// Owner's roles.
    pub roles: Roles,
    /// Last authenticated use (written at most every [`touch_interval`]).
    pub last_seen_at: Timestamp,
    /// Sliding idle expiry.
    pub idle_expires_at: Timestamp,
    /// Absolute cap.
    pub absolute_expires_at: Timestamp,
    /// SHA-256 of the browser cookie's secret, for sessions opened by the login form.
    pub cookie_hash: Option<[u8; 32]>,
}

impl ActiveSession {
    /// Whether the session is usable at `now`.
    pub fn is_alive(&self, now: Timestamp) -> bool {
        now < end_of(self.idle_expires_at, self.absolute_expires_at)
    }

    /// The idle expiry after a use at `now`, never past the absolute cap.
    pub fn slid_idle_expiry(&self, now: Timestamp, idle: Duration) -> Timestamp {
        slid(now, idle, self.absolute_expires_at)
    }

    /// Whether a use at `now` should be written back. Writes are throttled so a busy client does
    /// not cost one store write per request; the price is that idle expiry and `last_seen_at` are
    /// exact only to within [`touch_interval`].
    pub fn needs_touch(&self, now: Timestamp, idle: Duration) -> bool {
        now.as_millis() - self.last_seen_at.as_millis() >= touch_interval(idle).as_millis() as i64
    }
}

/// How stale `last_seen_at` may get before a use is written back: a minute, or a quarter of the
/// idle timeout when that is shorter, so the throttling never eats a meaningful part of it.
pub fn touch_interval(idle: Duration) -> Duration {
    (idle / 4).min(Duration::from_secs(60))
}

/// Longest stored `User-Agent`.
pub const MAX_USER_AGENT: usize = 512;

/// Truncates a `User-Agent` to [`MAX_USER_AGENT`] bytes on a character boundary.
pub fn clip_user_agent(ua: &str) -> String {
    let mut end = ua.len().min(MAX_USER_AGENT);
    while !ua.is_char_boundary(end) {
        end -= 1;
    }
    ua[..end].to_owned()
}

/// What to do with a presented refresh token (the rule every backend implements atomically).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationDecision {
    /// It is the current token: rotate to its successor.
    Rotate,
    /// It is the token rotated just before, presented again within the grace window: answer
    /// with the same successor, change nothing.
    Grace,
    /// An older token of this family: revoke the session.
    Reuse,
    /// Not a token of this family at all.
    Invalid,
}

impl RefreshState {
    /// Decides the fate of a presented token of generation `generation` whose secret hashes to
    /// `hash`. The token's MAC was checked before, so an older generation is a genuine old token.
    pub fn decide(
        &self,
        generation: u64,
        hash: &[u8; 32],
        now: Timestamp,
        grace: Duration,
    ) -> RotationDecision {
        use super::secret::ct_eq;
        if generation == self.generation {
            if ct_eq(hash, &self.hash) {
                RotationDecision::Rotate
            } else {
                RotationDecision::Invalid
            }
        } else if generation.checked_add(1) == Some(self.generation)
            && self.prev_hash.is_some_and(|p| ct_eq(hash, &p))
            && self
                .rotated_at
                .is_some_and(|r| now < r.plus(grace) || now == r)
        {
            RotationDecision::Grace
        } else if generation < self.generation {
            RotationDecision::Reuse
        } else {
            RotationDecision::Invalid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RefreshState {
        RefreshState {
            generation: 3,
            hash: [3; 32],
            prev_hash: Some([2; 32]),
            rotated_at: Some(Timestamp::from_millis(10_000)),
        }
    }

    #[test]
    fn current_token_rotates_and_previous_gets_grace_only_inside_the_window() {
        let grace = Duration::from_secs(10);
        let s = state();
        let t = Timestamp::from_millis;
        assert_eq!(
            s.decide(3, &[3; 32], t(11_000), grace),
            RotationDecision::Rotate
        );
        assert_eq!(
            s.decide(2, &[2; 32], t(19_999), grace),
            RotationDecision::Grace
        );
        assert_eq!(
            s.decide(2, &[2; 32], t(20_000), grace),
            RotationDecision::Reuse
        );
        assert_eq!(
            s.decide(1, &[1; 32], t(11_000), grace),
            RotationDecision::Reuse
        );
        assert_eq!(
            s.decide(3, &[9; 32], t(11_000), grace),
            RotationDecision::Invalid
        );
        assert_eq!(
            s.decide(4, &[4; 32], t(11_000), grace),
            RotationDecision::Invalid
        );
    }

    #[test]
    fn idle_expiry_never_passes_the_absolute_cap() {
        let t = Timestamp::from_millis;
        let s = Session {
            id: SessionId::new(),
            user_id: UserId::new(),
            username: Username::parse("a").unwrap_or_else(|_| unreachable!()),
            roles: Roles::default(),
            created_at: t(0),
            last_seen_at: t(0),
            idle_expires_at: t(3_600_000),
            absolute_expires_at: t(5_000_000),
            user_agent: None,
            ip: None,
            refresh: state(),
            cookie_hash: None,
        };
        let idle = Duration::from_secs(3600);
        assert_eq!(s.slid_idle_expiry(t(4_000_000), idle), t(5_000_000));
        assert!(s.is_alive(t(3_599_999)));
        assert!(!s.is_alive(t(3_600_000)));
        let a = s.active();
        assert_eq!(a.slid_idle_expiry(t(4_000_000), idle), t(5_000_000));
        assert!(a.is_alive(t(3_599_999)));
        assert!(!a.is_alive(t(3_600_000)));
        assert!(!a.needs_touch(t(59_999), idle));
        assert!(a.needs_touch(t(60_000), idle));
    }
}
