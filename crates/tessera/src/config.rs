//! Settings: defaults < `tessera.toml` < `TESSERA_*` environment < command-line flags
//! (API.md §1). Read once at start-up into a [`Settings`] value that the library takes as a
//! parameter; nothing below reads the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format as _, Toml};
use ipnet::IpNet;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::jwt::SigningAlg;

/// Every setting, validated.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to bind.
    #[serde(default = "d::listen")]
    pub listen: SocketAddr,
    /// Embedded database and generated keys.
    #[serde(default = "d::data_dir")]
    pub data_dir: PathBuf,
    /// Users; default `sqlite://<data_dir>/tessera.db`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Sessions, cache and limits in Redis when set (scale-out issue).
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so several deployments (or test runs) can share one Redis.
    #[serde(default = "d::redis_key_prefix")]
    pub redis_key_prefix: String,
    /// External URL; default `http://<listen>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// JWT lifetime.
    #[serde(default = "d::access_token_ttl", deserialize_with = "duration")]
    pub access_token_ttl: Duration,
    /// Sliding idle timeout.
    #[serde(default = "d::session_idle_timeout", deserialize_with = "duration")]
    pub session_idle_timeout: Duration,
    /// Absolute session cap.
    #[serde(default = "d::session_lifetime", deserialize_with = "duration")]
    pub session_lifetime: Duration,
    /// Oldest session revoked past this.
    #[serde(default = "d::max_sessions_per_user")]
    pub max_sessions_per_user: u32,
    /// `EdDSA` or `HS256`.
    #[serde(default = "d::signing_alg", deserialize_with = "signing_alg")]
    pub signing_alg: SigningAlg,
    /// Open `POST /users` and `/register`.
    #[serde(default)]
    pub allow_registration: bool,
    /// CIDRs whose `X-Forwarded-For` is believed.
    #[serde(default, deserialize_with = "list")]
    pub trusted_proxies: Vec<IpNet>,
    /// Failures per (username, IP) per window.
    #[serde(default = "d::login_max_failures")]
    pub login_max_failures: u32,
    /// Window of the above.
    #[serde(default = "d::login_failure_window", deserialize_with = "duration")]
    pub login_failure_window: Duration,
    /// Failures per client IP per window.
    #[serde(default = "d::login_ip_max_failures")]
    pub login_ip_max_failures: u32,
    /// Window of the above.
    #[serde(default = "d::login_ip_window", deserialize_with = "duration")]
    pub login_ip_window: Duration,
    /// Duplicate-refresh grace.
    #[serde(default = "d::refresh_reuse_grace", deserialize_with = "duration")]
    pub refresh_reuse_grace: Duration,
    /// Hosts `rd` may point to besides `public_url`'s.
    #[serde(default, deserialize_with = "list")]
    pub allowed_redirect_hosts: Vec<String>,
    /// Larger request bodies get 413.
    #[serde(default = "d::max_body_bytes")]
    pub max_body_bytes: u32,
    /// Longest wait on a store before 503.
    #[serde(default = "d::store_timeout", deserialize_with = "duration")]
    pub store_timeout: Duration,
    /// Redis only: how long a session record may be served from this instance's memory
    /// (`0s`, the default, turns the cache off). Entries are dropped as soon as Redis reports a
    /// change of the key (`CLIENT TRACKING`); the TTL bounds staleness only when that channel
    /// fails silently. See the README's "Session cache".
    #[serde(default, deserialize_with = "duration")]
    pub session_cache_ttl: Duration,
    /// Password hashes (argon2id) computed at once; `0`, the default, means one per core, for
    /// the most logins per second. While over 1,000 other requests a second come in, one
    /// thread fewer hashes, leaving a core to verification (see the README's "How it works"). Fewer
    /// threads leave more cores (a lower verify p99 during a login burst, at fewer logins per
    /// second; see the README's Performance section). Each busy thread holds 19 MiB.
    #[serde(default)]
    pub password_hash_threads: u16,
    /// Accepted clock skew on `exp`/`iat`.
    #[serde(default, deserialize_with = "duration")]
    pub jwt_leeway: Duration,
    /// Required `aud` when set.
    #[serde(default)]
    pub audience: Option<String>,
    /// Drain time after SIGTERM/SIGINT.
    #[serde(default = "d::shutdown_grace", deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// PEM certificate chain; with `tls_key`, serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// `text` (default) or `json` log lines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// First-start admin password (`TESSERA_ADMIN_PASSWORD`); random and printed when unset.
    #[serde(default)]
    pub admin_password: Option<SecretString>,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Defaults of API.md §1.
mod d {
    use super::*;
    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn redis_key_prefix() -> String {
        "tessera".into()
    }
    pub fn data_dir() -> PathBuf {
        PathBuf::from("./tessera-data")
    }
    pub fn access_token_ttl() -> Duration {
        Duration::from_secs(15 * 60)
    }
    pub fn session_idle_timeout() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn session_lifetime() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn max_sessions_per_user() -> u32 {
        10
    }
    pub fn signing_alg() -> SigningAlg {
        SigningAlg::EdDSA
    }
    pub fn login_max_failures() -> u32 {
        5
    }
    pub fn login_failure_window() -> Duration {
        Duration::from_secs(15 * 60)
    }
    pub fn login_ip_max_failures() -> u32 {
        30
    }
    pub fn login_ip_window() -> Duration {
        Duration::from_secs(60)
    }
    pub fn refresh_reuse_grace() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_body_bytes() -> u32 {
        65_536
    }
    pub fn store_timeout() -> Duration {
        Duration::from_millis(500)
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(10)
    }
}

/// The keys a `TESSERA_*` variable may set. Others (e.g. a deployment's own `TESSERA_FOO`) are
/// ignored rather than fatal; unknown keys in `tessera.toml` are errors (typos there matter).
const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "redis_url",
    "redis_key_prefix",
    "public_url",
    "access_token_ttl",
    "session_idle_timeout",
    "session_lifetime",
    "max_sessions_per_user",
    "signing_alg",
    "allow_registration",
    "trusted_proxies",
    "login_max_failures",
    "login_failure_window",
    "login_ip_max_failures",
    "login_ip_window",
    "refresh_reuse_grace",
    "allowed_redirect_hosts",
    "max_body_bytes",
    "store_timeout",
    "session_cache_ttl",
    "password_hash_threads",
    "jwt_leeway",
    "audience",
    "shutdown_grace",
    "tls_cert",
    "tls_key",
    "log_format",
    "admin_password",
];

/// The most password hashing threads: more than any machine has cores, and few enough that a
/// typo cannot start thousands of threads.
const MAX_HASH_THREADS: u16 = 256;

/// The longest duration any setting takes (100 years): longer ones are surely typos, and would
/// overflow timestamps and the caches' expiry arithmetic (moka panics past 1,000 years).
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

fn at_most_max(d: Duration) -> Result<Duration, String> {
    if d <= MAX_DURATION {
        Ok(d)
    } else {
        Err(format!("{}s is longer than 100 years", d.as_secs()))
    }
}

/// Parses `900`, `900s`, `15m`, `1h`, `7d`, `500ms` (at most 100 years).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 900, 15m, 1h)"))?;
    let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs);
    match unit {
        "" | "s" => secs(1),
        "ms" => Some(Duration::from_millis(n)),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
    .ok_or_else(|| format!("{s:?} is not a duration (e.g. 900, 900s, 15m, 1h, 7d)"))
    .and_then(at_most_max)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => at_most_max(Duration::from_secs(n)).map_err(serde::de::Error::custom),
        Raw::S(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

fn signing_alg<'de, D: Deserializer<'de>>(d: D) -> Result<SigningAlg, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

/// A list: an array (TOML) or a comma-separated string (flags, environment).
fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let items = match Raw::deserialize(d)? {
        Raw::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Raw::Many(v) => v,
    };
    items
        .iter()
        .map(|s| {
            s.parse::<T>()
                .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
        })
        .collect()
}

/// The settings given as flags; only the ones present override the other sources.
#[derive(Clone, Debug, Default, clap::Args, Serialize)]
pub struct SettingsArgs {
    /// Optional TOML file (default ./tessera.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to bind [default: 127.0.0.1:8080].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Data directory [default: ./tessera-data].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// Users database [default: sqlite://<data_dir>/tessera.db].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Redis for sessions, cache and limits [default: embedded].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key [default: tessera].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_key_prefix: Option<String>,
    /// External URL (https makes cookies Secure; the JWT iss).
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// JWT lifetime [default: 15m].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_ttl: Option<String>,
    /// Sliding idle timeout [default: 1h].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_idle_timeout: Option<String>,
    /// Absolute session lifetime [default: 24h].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_lifetime: Option<String>,
    /// Sessions per user before the oldest is revoked [default: 10].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_user: Option<u32>,
    /// EdDSA or HS256 [default: EdDSA].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_alg: Option<String>,
    /// Open POST /users and /register [default: false].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_registration: Option<bool>,
    /// Comma-separated CIDRs whose X-Forwarded-For is believed.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<String>,
    /// Failed logins per (username, IP) per window [default: 5].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_max_failures: Option<u32>,
    /// [default: 15m].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_failure_window: Option<String>,
    /// Failed logins per IP per window [default: 30].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_ip_max_failures: Option<u32>,
    /// [default: 1m].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_ip_window: Option<String>,
    /// Duplicate-refresh grace [default: 10s].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_reuse_grace: Option<String>,
    /// Comma-separated hosts rd may point to.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_redirect_hosts: Option<String>,
    /// Largest request body [default: 65536].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u32>,
    /// Longest wait on a store [default: 500ms].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_timeout: Option<String>,
    /// Redis only: serve session records from memory, invalidated by Redis [default: 0s = off].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_cache_ttl: Option<String>,
    /// Password hashes computed at once [default: 0 = one per core].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_hash_threads: Option<u16>,
    /// Clock skew accepted on exp/iat [default: 0s].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_leeway: Option<String>,
    /// Required aud when set.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Drain time after SIGTERM [default: 10s].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<String>,
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    /// PEM private key for --tls-cert.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    /// text or json [default: text].
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

/// A configuration problem, worded for the person starting the service.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Loads settings from every source. `env` is the process environment (a parameter so tests
    /// pass their own).
    pub fn load(
        args: &SettingsArgs,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let config_path = args.config.clone().or_else(|| {
            env.iter()
                .find(|(k, _)| k == "TESSERA_CONFIG")
                .map(|(_, v)| PathBuf::from(v))
        });
        let mut fig = Figment::new();
        match &config_path {
            Some(p) if !p.exists() => {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    p.display()
                )));
            }
            Some(p) => fig = fig.merge(Toml::file_exact(p)),
            None if Path::new("tessera.toml").exists() => {
                fig = fig.merge(Toml::file_exact("tessera.toml"));
            }
            None => {}
        }
        let mut env_dict = figment::value::Dict::new();
        for (k, v) in &env {
            if let Some(key) = k.strip_prefix("TESSERA_") {
                let key = key.to_ascii_lowercase();
                if KEYS.contains(&key.as_str()) {
                    env_dict.insert(key, figment::value::Value::from(v.clone()));
                }
            }
        }
        // Environment values stay strings; the field deserializers parse them, so errors say
        // what was wrong with the text a person typed.
        fig = fig.merge(Layer {
            name: ENV_SOURCE,
            dict: env_dict,
        });
        let flags = match figment::value::Value::serialize(args) {
            Ok(figment::value::Value::Dict(_, d)) => d,
            _ => figment::value::Dict::new(),
        };
        fig = fig.merge(Layer {
            name: FLAG_SOURCE,
            dict: flags,
        });
        let settings: Settings = fig.extract_lossy().map_err(|e| {
            let msgs: Vec<String> = e
                .into_iter()
                .map(|err| {
                    let key = err.path.join(".");
                    let source = match err.metadata.as_ref().map(|m| m.name.as_ref()) {
                        Some(ENV_SOURCE) => {
                            format!("environment variable TESSERA_{}", key.to_ascii_uppercase())
                        }
                        Some(FLAG_SOURCE) => format!("flag --{}", key.replace('_', "-")),
                        Some(other) => {
                            match err.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                                Some(src) => format!("{other} {src}"),
                                None => other.to_owned(),
                            }
                        }
                        None => "defaults".into(),
                    };
                    format!("{key}: {} (from {source})", err.kind)
                })
                .collect();
            ConfigError(msgs.join("; "))
        })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        if self.max_sessions_per_user == 0 {
            return bad("max_sessions_per_user", "must be at least 1");
        }
        if self.access_token_ttl.is_zero() {
            return bad("access_token_ttl", "must be positive");
        }
        if self.session_idle_timeout.is_zero() || self.session_lifetime.is_zero() {
            return bad("session_idle_timeout/session_lifetime", "must be positive");
        }
        if self.login_max_failures == 0 || self.login_ip_max_failures == 0 {
            return bad(
                "login_max_failures/login_ip_max_failures",
                "must be at least 1",
            );
        }
        if self.store_timeout.is_zero() {
            return bad("store_timeout", "must be positive");
        }
        if self.password_hash_threads > MAX_HASH_THREADS {
            return bad(
                "password_hash_threads",
                &format!("must be at most {MAX_HASH_THREADS} (0 = one per core)"),
            );
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes", "must be at least 1024");
        }
        if let Some(url) = &self.public_url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url
                    .split_once("://")
                    .is_some_and(|(_, rest)| !rest.is_empty());
            if !ok {
                return bad("public_url", "must be an http:// or https:// URL");
            }
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("sqlite:") || self.uses_postgres())
        {
            return bad(
                "database_url",
                "must be sqlite://…, postgres://… or postgresql://…",
            );
        }
        if let Some(Err(why)) = self
            .redis_url
            .as_deref()
            .map(crate::store::redis::Topology::parse)
        {
            return bad("redis_url", &why);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert/tls_key", "give both or neither");
        }
        if self.redis_key_prefix.is_empty() || self.redis_key_prefix.contains(['{', '}', ' ']) {
            return bad(
                "redis_key_prefix",
                "must be non-empty, without spaces or braces",
            );
        }
        Ok(())
    }

    /// Password hashing threads: `password_hash_threads`, or one per core when it is 0.
    pub fn password_hash_threads(&self) -> usize {
        match self.password_hash_threads {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => usize::from(n),
        }
    }

    /// `public_url` without a trailing slash: the JWT issuer.
    pub fn issuer(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }

    /// Whether users live in PostgreSQL.
    pub fn uses_postgres(&self) -> bool {
        self.database_url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
    }

    /// Whether anything lives in the embedded store under `data_dir` (then one server owns it).
    pub fn uses_embedded_store(&self) -> bool {
        self.redis_url.is_none() || !self.uses_postgres()
    }

    /// The users database URL.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.embedded_db_path().display()))
    }

    /// The embedded store's SQLite file.
    pub fn embedded_db_path(&self) -> PathBuf {
        self.data_dir.join("tessera.db")
    }
}

const ENV_SOURCE: &str = "environment";
const FLAG_SOURCE: &str = "flags";

/// One named layer of settings (environment or flags), so errors can say where a value came from.
struct Layer {
    name: &'static str,
    dict: figment::value::Dict,
}

impl figment::Provider for Layer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name)
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.dict.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn durations_accept_every_documented_form() {
        assert_eq!(parse_duration("900"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("900s"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("400000d").is_err(), "past 100 years");
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("15 minutes").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn defaults_match_the_contract() {
        let s =
            Settings::load(&SettingsArgs::default(), env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.access_token_ttl, Duration::from_secs(900));
        assert_eq!(s.max_sessions_per_user, 10);
        assert_eq!(s.signing_alg, SigningAlg::EdDSA);
        assert_eq!(s.store_timeout, Duration::from_millis(500));
        assert_eq!(s.password_hash_threads, 0);
        assert!(s.password_hash_threads() >= 1);
        assert_eq!(s.issuer(), "http://127.0.0.1:8080");
        assert!(s.database_url().ends_with("tessera-data/tessera.db"));
    }

    #[test]
    fn flags_beat_environment_and_lists_split_on_commas() {
        let args = SettingsArgs {
            access_token_ttl: Some("5m".into()),
            ..Default::default()
        };
        let s = Settings::load(
            &args,
            env(&[
                ("TESSERA_ACCESS_TOKEN_TTL", "1h"),
                ("TESSERA_SESSION_LIFETIME", "7d"),
                ("TESSERA_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1/32"),
                ("TESSERA_UNRELATED", "ignored"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.access_token_ttl, Duration::from_secs(300));
        assert_eq!(s.session_lifetime, Duration::from_secs(7 * 86_400));
        assert_eq!(s.trusted_proxies.len(), 2);
    }

    #[test]
    fn an_invalid_value_names_the_key_and_the_source() {
        let e = Settings::load(
            &SettingsArgs::default(),
            env(&[("TESSERA_SESSION_LIFETIME", "soon")]),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("session_lifetime"), "{e}");
        assert!(e.contains("TESSERA_SESSION_LIFETIME"), "{e}");
        let args = SettingsArgs {
            max_sessions_per_user: Some(0),
            ..Default::default()
        };
        let e = Settings::load(&args, env(&[]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("max_sessions_per_user"), "{e}");
    }

    #[test]
    fn password_hash_threads_default_to_one_per_core_and_are_bounded() {
        let load = |v: &str| {
            Settings::load(
                &SettingsArgs::default(),
                env(&[("TESSERA_PASSWORD_HASH_THREADS", v)]),
            )
            .map_err(|e| e.to_string())
        };
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let threads = |v| load(v).map(|s| s.password_hash_threads());
        assert_eq!(threads("0"), Ok(cores));
        assert_eq!(threads("1"), Ok(1));
        assert_eq!(threads("256"), Ok(256));
        for bad in ["257", "70000", "-1", "many"] {
            let e = load(bad).err().unwrap_or_default();
            assert!(e.contains("password_hash_threads"), "{bad}: {e}");
        }
    }
}
