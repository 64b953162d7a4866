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
        if Self::is_valid(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidRole)
        }
    }

    /// Whether `raw` is a role name: 1–32 of `a-z 0-9 . _ : -`.
    fn is_valid(raw: &str) -> bool {
        !raw.is_empty()
            && raw.len() <= 32
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._:-".contains(&b))
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

/// A set of roles, sorted and without duplicates so every rendering of it is stable. Kept in its
/// comma-separated form, which is how it is stored and how `X-Auth-Roles` carries it: every
/// verification reads a session's roles and sends them on, and a list of owned names cost it a
/// vector, a string per role, and a second vector and string to join them again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles(Box<str>);

impl Roles {
    /// Builds a normalised role set.
    pub fn new(mut roles: Vec<Role>) -> Self {
        roles.sort();
        roles.dedup();
        let names: Vec<&str> = roles.iter().map(Role::as_str).collect();
        Self(names.join(",").into())
    }

    /// Parses the comma-separated storage form; unknown junk is dropped, not fatal, because the
    /// stored value was validated on the way in. A stored value is already in normal form
    /// (valid names, sorted, no duplicates), and is then taken as it is.
    pub fn from_csv(csv: &str) -> Self {
        let mut names = csv.split(',');
        let mut previous = None;
        let normal = csv.is_empty()
            || names.all(|name| {
                let in_order = previous.is_none_or(|p: &str| p < name);
                previous = Some(name);
                in_order && Role::is_valid(name)
            });
        if normal {
            return Self(csv.into());
        }
        Self::new(csv.split(',').filter_map(|r| Role::parse(r).ok()).collect())
    }

    /// Comma-separated, no spaces: the storage form and the `X-Auth-Roles` value.
    pub fn as_csv(&self) -> &str {
        &self.0
    }

    /// [`Roles::as_csv`], owned.
    pub fn to_csv(&self) -> String {
        self.0.to_string()
    }

    /// Whether the set contains `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|r| r == name)
    }

    /// The role names in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.split(',').filter(|r| !r.is_empty())
    }
}

/// A JSON array of the names, as the API shows roles.
impl Serialize for Roles {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
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
        assert!(!roles.contains("admi"));
        assert_eq!(roles.iter().collect::<Vec<_>>(), ["admin", "b"]);
    }

    #[test]
    fn roles_in_normal_form_are_read_as_they_are_and_anything_else_is_normalised() {
        for normal in ["", "admin", "a,b,c", "admin,ops:read,x-y.z_1"] {
            assert_eq!(Roles::from_csv(normal).as_csv(), normal);
        }
        for (raw, normal) in [
            ("b,a", "a,b"),
            ("a,a", "a"),
            (",", ""),
            ("a,", "a"),
            (",a", "a"),
            ("A", ""),
            ("a,B,c", "a,c"),
            ("c,b,a", "a,b,c"),
        ] {
            assert_eq!(Roles::from_csv(raw).as_csv(), normal, "{raw}");
        }
        assert_eq!(Roles::default().iter().count(), 0);
        let json = serde_json::to_string(&Roles::from_csv("ops,admin")).unwrap_or_default();
        assert_eq!(json, r#"["admin","ops"]"#);
        assert_eq!(
            serde_json::to_string(&Roles::default()).unwrap_or_default(),
            "[]"
        );
    }
}
