//! Users and the parse-constructed types that carry their invariants.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::clock::Timestamp;

/// A user's stable id (a UUID; the JWT `sub`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub Uuid);

impl UserId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// Parses the hyphenated form; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::try_parse(s).ok().map(Self)
    }
}

impl Default for UserId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Why a username was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("usernames are 1 to 64 characters of a-z, 0-9, '.', '_', '@' and '-'")]
pub struct InvalidUsername;

/// A valid username: 1–64 characters of `a-z 0-9 . _ @ -`, stored lowercase (API.md §5).
///
/// Input is case-insensitive and never trimmed: `" alice"` is refused rather than silently
/// becoming someone else's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    /// Longest accepted username, in characters.
    pub const MAX_LEN: usize = 64;

    /// Parses and lowercases a username.
    pub fn parse(raw: &str) -> Result<Self, InvalidUsername> {
        // Length is checked on bytes first so a hostile megabyte never gets lowercased.
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(InvalidUsername);
        }
        let lower = raw.to_ascii_lowercase();
        if lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._@-".contains(&b))
        {
            Ok(Self(lower))
        } else {
            Err(InvalidUsername)
        }
    }

    /// The stored (lowercase) form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a role name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role names are 1 to 32 characters of a-z, 0-9, '.', '_', ':' and '-'")]
pub struct InvalidRole;

/// A role name. Restricted so that the comma-separated `X-Auth-Roles` header stays unambiguous.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Role(String);

impl Role {
    /// The role that may use the admin API.
    pub const ADMIN: &'static str = "admin";

    /// Parses a role name (case-sensitive; lowercase only).
    pub fn parse(raw: &str) -> Result<Self, InvalidRole> {
        if !raw.is_empty()
            && raw.len() <= 32
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._:-".contains(&b))
        {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidRole)
        }
    }

    /// The admin role.
    pub fn admin() -> Self {
        Self(Self::ADMIN.to_owned())
    }

    /// The role name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A set of roles, sorted and without duplicates so every rendering of it is stable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Roles(Vec<Role>);

impl Roles {
    /// Builds a normalised role set.
    pub fn new(mut roles: Vec<Role>) -> Self {
        roles.sort();
        roles.dedup();
        Self(roles)
    }

    /// Parses the comma-separated storage form; unknown junk is dropped, not fatal, because the
    /// stored value was validated on the way in.
    pub fn from_csv(csv: &str) -> Self {
        Self::new(csv.split(',').filter_map(|r| Role::parse(r).ok()).collect())
    }

    /// Comma-separated, no spaces: the storage form and the `X-Auth-Roles` value.
    pub fn to_csv(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(Role::as_str).collect();
        names.join(",")
    }

    /// Whether the set contains `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|r| r.as_str() == name)
    }

    /// The roles in order.
    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.0.iter()
    }
}

/// A user as stored.
#[derive(Clone, Debug)]
pub struct User {
    /// Stable id.
    pub id: UserId,
    /// Unique, lowercase.
    pub username: Username,
    /// PHC string (argon2id) or a legacy bcrypt hash awaiting upgrade.
    pub password_hash: String,
    /// Granted roles.
    pub roles: Roles,
    /// A disabled user cannot log in and has no sessions.
    pub disabled: bool,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change to anything above.
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_lowercased_and_never_trimmed() {
        assert_eq!(
            Username::parse("Alice.B@x-y_z").map(|u| u.0),
            Ok("alice.b@x-y_z".into())
        );
        assert!(Username::parse(" alice").is_err());
        assert!(Username::parse("").is_err());
        assert!(Username::parse(&"a".repeat(65)).is_err());
        assert!(Username::parse(&"a".repeat(64)).is_ok());
        assert!(Username::parse("élan").is_err());
        assert!(Username::parse("a,b").is_err());
    }

    #[test]
    fn roles_are_sorted_deduplicated_and_comma_joined() {
        let roles = Roles::from_csv("b,admin,b,,Bad Role");
        assert_eq!(roles.to_csv(), "admin,b");
        assert!(roles.contains("admin"));
    }
}
