//! Require a [tessera](https://example.invalid/tessera) access token in an axum app.
//!
//! [`TesseraUser`] is an extractor: a handler that takes it runs only for requests with a valid
//! `Authorization: Bearer <access token>`; `Option<TesseraUser>` makes authentication optional.
//! Tokens are verified locally against tessera's JWKS (fetched once, cached, re-fetched when a
//! token names an unknown `kid`, at most once a second). Because a JWT alone cannot know that
//! its session was revoked, [`TesseraBuilder::check_revocation`] additionally asks tessera's
//! `/verify` for every request, which makes logout effective immediately.
//!
//! Rejections: 401 with `WWW-Authenticate: Bearer` (and `error="invalid_token"` when a token was
//! presented), 503 with `Retry-After` when tessera cannot be reached, so a tessera outage never
//! looks like a logged-out user.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use tessera_axum::{Tessera, TesseraUser};
//!
//! async fn hello(user: TesseraUser) -> String {
//!     format!("hello {} ({})", user.username, user.roles.join(","))
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tessera = Tessera::builder("http://127.0.0.1:8080")
//!     .issuer("https://auth.example.com")
//!     .check_revocation(true)
//!     .build()?;
//! // `Tessera` is the router state here; in a bigger app implement `FromRef<AppState>`.
//! let app: Router = Router::new().route("/hello", get(hello)).with_state(tessera);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum_core::extract::{FromRef, FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Longest token accepted; larger ones are refused unparsed.
const MAX_TOKEN_LEN: usize = 4096;

/// The verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TesseraUser {
    /// User id (the JWT `sub`).
    pub user_id: String,
    /// Username (`name`).
    pub username: String,
    /// Role names.
    pub roles: Vec<String>,
    /// Session id (`sid`).
    pub session_id: String,
}

impl TesseraUser {
    /// Whether the user has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    name: String,
    sid: String,
    exp: i64,
    #[serde(default)]
    roles: Vec<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No bearer token.
    Unauthenticated,
    /// A token that is malformed, forged, expired, for someone else, or revoked.
    InvalidToken,
    /// tessera could not be reached to fetch keys or check revocation.
    Unavailable,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (status, code, detail, challenge) = match self {
            Self::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "authentication required",
                Some("Bearer"),
            ),
            Self::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the token is invalid, expired or revoked",
                Some("Bearer error=\"invalid_token\""),
            ),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                "the authentication service is unavailable",
                None,
            ),
        };
        let body = serde_json::json!({ "error": code, "detail": detail }).to_string();
        let mut res = (status, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(c) = challenge {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

/// A configuration error.
#[derive(Debug)]
pub struct BuildError(String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

/// Builds a [`Tessera`].
pub struct TesseraBuilder {
    base_url: String,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    check_revocation: bool,
    timeout: Duration,
}

impl TesseraBuilder {
    /// The `iss` tokens must carry (tessera's `public_url`); default: `base_url`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Require this `aud` (tessera's `audience` setting).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Accepted clock skew on `exp` (default none).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Also ask tessera's `/verify` on every request, so logout and revocation take effect at
    /// once instead of at the token's `exp` (default off).
    pub fn check_revocation(mut self, on: bool) -> Self {
        self.check_revocation = on;
        self
    }

    /// Longest wait on tessera (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Finishes the configuration.
    pub fn build(self) -> Result<Tessera, BuildError> {
        let base = self.base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(BuildError(format!(
                "tessera base URL must be http(s): {base:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| BuildError(e.to_string()))?;
        Ok(Tessera {
            inner: Arc::new(Inner {
                issuer: self.issuer.unwrap_or_else(|| base.clone()),
                base,
                audience: self.audience,
                leeway: self.leeway,
                check_revocation: self.check_revocation,
                http,
                keys: RwLock::new(HashMap::new()),
                last_fetch: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

struct Inner {
    base: String,
    issuer: String,
    audience: Option<String>,
    leeway: Duration,
    check_revocation: bool,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, Arc<Key>>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

/// The verifier: cheap to clone, share it as (part of) the router state.
#[derive(Clone)]
pub struct Tessera {
    inner: Arc<Inner>,
}

impl Tessera {
    /// Starts a configuration for the tessera at `base_url` (e.g. `http://tessera:8080`).
    pub fn builder(base_url: impl Into<String>) -> TesseraBuilder {
        TesseraBuilder {
            base_url: base_url.into(),
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
            check_revocation: false,
            timeout: Duration::from_secs(2),
        }
    }

    fn key(&self, kid: &str) -> Option<Arc<Key>> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(kid)
            .cloned()
    }

    /// Fetches the JWKS, at most once a second however many unknown `kid`s arrive.
    async fn refresh_keys(&self) -> Result<(), Rejection> {
        let mut last = self.inner.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let url = format!("{}/.well-known/jwks.json", self.inner.base);
        let res = self
            .inner
            .http
            .get(&url)
            .send()
            .await
            .map_err(|_| Rejection::Unavailable)?;
        if !res.status().is_success() {
            return Err(Rejection::Unavailable);
        }
        let set: JwkSet = res.json().await.map_err(|_| Rejection::Unavailable)?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), jwk.common.key_algorithm)
            else {
                continue;
            };
            // The algorithm is pinned per key by the JWKS, never taken from a token.
            let Ok(alg) = alg.to_string().parse::<Algorithm>() else {
                continue;
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, Arc::new(Key { alg, key }));
            }
        }
        *self
            .inner
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        Ok(())
    }

    /// Verifies a bearer token (and, when configured, asks tessera whether its session lives).
    pub async fn verify(&self, token: &str) -> Result<TesseraUser, Rejection> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Rejection::InvalidToken);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::InvalidToken)?;
        if header.typ.as_deref() != Some("at+jwt") {
            return Err(Rejection::InvalidToken);
        }
        let kid = header.kid.ok_or(Rejection::InvalidToken)?;
        let key = match self.key(&kid) {
            Some(k) => k,
            None => {
                self.refresh_keys().await?;
                self.key(&kid).ok_or(Rejection::InvalidToken)?
            }
        };
        if header.alg != key.alg {
            return Err(Rejection::InvalidToken);
        }
        let mut v = Validation::new(key.alg);
        v.leeway = 0;
        v.validate_exp = false;
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        v.set_issuer(&[&self.inner.issuer]);
        match &self.inner.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &v)
            .map_err(|_| Rejection::InvalidToken)?
            .claims;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if now
            >= claims
                .exp
                .saturating_add(self.inner.leeway.as_secs() as i64)
        {
            return Err(Rejection::InvalidToken);
        }
        if self.inner.check_revocation {
            let url = format!("{}/verify", self.inner.base);
            let res = self
                .inner
                .http
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .map_err(|_| Rejection::Unavailable)?;
            match res.status() {
                StatusCode::OK => {}
                StatusCode::UNAUTHORIZED => return Err(Rejection::InvalidToken),
                _ => return Err(Rejection::Unavailable),
            }
        }
        Ok(TesseraUser {
            user_id: claims.sub,
            username: claims.name,
            roles: claims.roles,
            session_id: claims.sid,
        })
    }
}

fn bearer(parts: &Parts) -> Result<Option<&str>, Rejection> {
    let Some(v) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| Rejection::InvalidToken)?;
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(Rejection::InvalidToken),
    }
}

impl<S> FromRequestParts<S> for TesseraUser
where
    Tessera: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        let token = bearer(parts)?.ok_or(Rejection::Unauthenticated)?;
        Tessera::from_ref(state).verify(token).await
    }
}

impl<S> OptionalFromRequestParts<S> for TesseraUser
where
    Tessera: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Rejection;

    /// No `Authorization` header: `None`. A header with a bad token is still refused: a client
    /// that tried to authenticate and failed must hear about it.
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Option<Self>, Rejection> {
        match bearer(parts)? {
            None => Ok(None),
            Some(token) => Tessera::from_ref(state).verify(token).await.map(Some),
        }
    }
}
