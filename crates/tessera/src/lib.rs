//! tessera: a login and token-verification service.
//!
//! Layout (the architecture, outside in):
//! - [`http`]: axum router, extractors, the one error → status mapping;
//! - [`service`]: the use cases (login, refresh, verify, logout, users), one error type;
//! - [`domain`]: users, passwords, sessions, tokens, clock; no HTTP or storage types;
//! - [`store`]: small traits and their backends (embedded SQLite today);
//! - [`config`], [`app`], [`cli`]: settings, wiring, command line.

pub mod app;
pub mod cli;
pub mod config;
mod deadline;
pub mod domain;
pub mod http;
pub mod import;
pub mod observability;
pub mod service;
pub mod store;

pub use app::Application;
pub use config::Settings;
