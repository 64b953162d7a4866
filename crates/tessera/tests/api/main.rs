#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The integration suite: one binary, the real server on port 0, a real SQLite file in a fresh
//! temporary directory per test.

mod helpers;
mod proxy;
mod servers;

mod chromium;
mod cli;
mod contract;
mod docs;
mod ecosystem;
mod extractor;
mod faults;
mod forward_auth;
mod hostile;
mod login;
mod pages;
mod persistence;
mod properties;
mod scaleout;
mod sessions;
mod tokens;
mod users;
