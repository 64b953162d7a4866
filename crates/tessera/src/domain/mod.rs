//! The domain: users, credentials, sessions, tokens and the policies that govern them.
//!
//! Nothing here knows about HTTP, SQL or Redis. Storage is reached through the traits in
//! [`crate::store`]; time through [`clock::Clock`].

pub mod clock;
pub mod cookie;
pub mod jwt;
pub mod password;
pub mod refresh;
pub mod secret;
pub mod session;
pub mod user;
