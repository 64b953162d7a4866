//! The use cases: login, refresh, verification, logout, sessions, passwords, user
//! administration. This is where the domain rules meet the stores; HTTP and the CLI are thin
//! callers of [`Auth`].
//!
//! Error handling: every fallible use case returns [`AuthError`], whose variants are the
//! outcomes a caller must tell apart. It is mapped to HTTP exactly once, in `http::error`.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::domain::clock::{Clock, Timestamp};
use crate::domain::cookie::{self, LoginCsrf, SessionCookie};
use crate::domain::jwt::{Claims, KeyRing, Keys, SigningAlg, TokenError, TokenSettings};
use crate::domain::password::{self, HashError, PasswordHasher, Verification, WeakPassword};
use crate::domain::refresh::RefreshToken;
use crate::domain::session::{ActiveSession, RefreshState, Session, SessionId, clip_user_agent};
use crate::domain::user::{InvalidRole, InvalidUsername, Role, Roles, User, UserId, Username};
use crate::store::{
    CachedProfile, KeyStore, LimitStore, ProfileCache, RefreshPresentation, Rotation, SessionStore,
    StoreError, Stores, UserStore,
};

/// Every outcome of a use case that is not success.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user, wrong password, disabled user, malformed username: never told apart.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// No credentials were presented.
    #[error("authentication required")]
    Unauthenticated,
    /// A token or session was presented and is not (or no longer) valid.
    #[error("the token is invalid, expired or revoked")]
    InvalidToken,
    /// A refresh token that cannot be used (RFC 6749 `invalid_grant`).
    #[error("{0}")]
    InvalidGrant(&'static str),
    /// Too many failures; try again after the given time.
    #[error("too many failed attempts; try again later")]
    RateLimited(Duration),
    /// Authenticated, but the current password given to confirm a change is wrong.
    #[error("the current password is wrong")]
    WrongPassword,
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The thing asked for does not exist (or is not the caller's).
    #[error("{0}")]
    NotFound(&'static str),
    /// The username is taken.
    #[error("this username is taken")]
    UsernameTaken,
    /// Bad username on account creation.
    #[error(transparent)]
    InvalidUsername(#[from] InvalidUsername),
    /// Bad role name.
    #[error(transparent)]
    InvalidRole(#[from] InvalidRole),
    /// An imported password hash in a format we cannot verify.
    #[error("the password hash is neither bcrypt nor argon2 (PHC)")]
    InvalidHash,
    /// Password policy.
    #[error(transparent)]
    WeakPassword(#[from] WeakPassword),
    /// Password hashing is saturated.
    #[error("the server is busy; try again shortly")]
    Overloaded,
    /// A store did not answer.
    #[error("a backing store is unavailable")]
    Unavailable,
    /// A bug or corrupt data; details are logged, never shown.
    #[error(transparent)]
    Unexpected(anyhow::Error),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                tracing::warn!(%why, "store unavailable");
                Self::Unavailable
            }
            StoreError::Conflict => Self::UsernameTaken,
            StoreError::Unexpected(e) => Self::Unexpected(e),
        }
    }
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Overloaded => Self::Overloaded,
            HashError::Internal(e) => Self::Unexpected(anyhow::anyhow!(e)),
        }
    }
}

/// The rules a deployment configures.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Access-token issuance and verification.
    pub tokens: TokenSettings,
    /// Algorithm for new signing keys.
    pub signing_alg: SigningAlg,
    /// Sliding idle timeout.
    pub idle_timeout: Duration,
    /// Absolute session lifetime.
    pub lifetime: Duration,
    /// Oldest sessions are evicted past this.
    pub max_sessions_per_user: usize,
    /// Duplicate-refresh grace.
    pub refresh_reuse_grace: Duration,
    /// Failures per (username, IP) per window.
    pub login_max_failures: u64,
    /// Window of the above.
    pub login_failure_window: Duration,
    /// Failures per IP per window.
    pub login_ip_max_failures: u64,
    /// Window of the above.
    pub login_ip_window: Duration,
    /// Whether anyone may create an account.
    pub allow_registration: bool,
}

impl Policy {
    /// How long a retired signing key must keep verifying: until every token it signed expired.
    pub fn key_retention(&self) -> Duration {
        self.tokens.ttl + self.tokens.leeway
    }
}

/// A credential as the request presented it. (No `Debug`: it is a secret.)
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// An access token (`Authorization: Bearer`), as bytes: it is checked to be text only when
    /// it has to be parsed, not when the verified-token cache already knows it (a 470-byte
    /// check on every verification, for a token that was checked when first verified).
    Bearer(&'a [u8]),
    /// The browser's session cookie's value.
    Cookie(&'a str),
}

/// What a credential says before any store read ([`Auth::claim`]).
struct Claim {
    user: UserId,
    sid: SessionId,
    /// The cookie, whose secret is checked against the session's.
    cookie: Option<SessionCookie>,
}

/// Who is calling, as the session record says.
#[derive(Clone, Debug)]
pub struct Principal {
    /// User id.
    pub user_id: UserId,
    /// Username.
    pub username: Username,
    /// Roles.
    pub roles: Roles,
    /// The session the credential belongs to.
    pub session_id: SessionId,
    /// Whether the credential was the browser's session cookie (then unsafe requests need the
    /// CSRF token, and a logout clears the cookie).
    pub via_cookie: bool,
}

impl Principal {
    fn from_session(s: ActiveSession, via_cookie: bool) -> Self {
        Self {
            user_id: s.user_id,
            username: s.username,
            roles: s.roles,
            session_id: s.id,
            via_cookie,
        }
    }

    /// Whether the caller may use the admin API.
    pub fn is_admin(&self) -> bool {
        self.roles.contains(Role::ADMIN)
    }
}

/// Where a request came from, for session records and throttling.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    /// Client IP (the socket peer unless a trusted proxy says otherwise).
    pub ip: Option<IpAddr>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
}

/// Tokens handed out by a login or refresh.
#[derive(Debug)]
pub struct Issued {
    /// The JWT.
    pub access_token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    /// The opaque refresh token.
    pub refresh_token: String,
    /// The session they belong to.
    pub session_id: SessionId,
}

/// The public view of a user (`/profile`, admin API).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Profile {
    /// User id.
    pub id: UserId,
    /// Username.
    pub username: Username,
    /// Same as `username` (seed compatibility).
    pub user: Username,
    /// Role names.
    pub roles: Roles,
    /// Creation time.
    pub created_at: Timestamp,
    /// Whether the account is disabled.
    pub disabled: bool,
}

impl From<&User> for Profile {
    fn from(u: &User) -> Self {
        Self {
            id: u.id,
            username: u.username.clone(),
            user: u.username.clone(),
            roles: u.roles.clone(),
            created_at: u.created_at,
            disabled: u.disabled,
        }
    }
}

/// Scope of a logout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogoutScope {
    /// This session.
    #[default]
    Current,
    /// Every other session of the user.
    Others,
    /// Every session of the user.
    All,
}

impl LogoutScope {
    /// The scope as the API spells it (`current`, `others`, `all`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Others => "others",
            Self::All => "all",
        }
    }
}

/// Changes an admin may make to a user.
#[derive(Clone, Debug, Default)]
pub struct UserPatch {
    /// Disable or enable.
    pub disabled: Option<bool>,
    /// Replace the roles.
    pub roles: Option<Vec<String>>,
}

/// The service: stores, keys, hasher, clock and policy.
pub struct Auth {
    users: Arc<dyn UserStore>,
    sessions: Arc<dyn SessionStore>,
    limits: Arc<dyn LimitStore>,
    key_store: Arc<dyn KeyStore>,
    /// `None` until the key ring could be read: a store that is down at start-up leaves the
    /// service up but not ready, and every use of the keys answers 503 until it is loaded.
    keys: RwLock<Option<Arc<Keys>>>,
    /// When an unknown `kid` last made us re-read the key ring (Unix ms); bounds that to once a
    /// second so random `kid`s cannot hammer the store.
    last_kid_reload: std::sync::atomic::AtomicI64,
    profiles: Arc<dyn ProfileCache>,
    /// Access tokens whose signature and claims checked out, by SHA-256 of the whole token.
    /// An Ed25519 check costs tens of microseconds; a client presents the same token for many
    /// requests. Safe because the key is the exact token bytes (any change is a miss), only
    /// successes are cached (an attacker cannot fill it), expiry is re-checked on every hit, and
    /// the session is still read from the store on every request, so revocation is immediate.
    /// It keeps what verification needs, parsed once (not the claims, whose ids would be parsed
    /// again on every hit); a synchronous cache, since a lookup never waits. `quick_cache`, not
    /// moka: it is looked up on every request, and a moka lookup cost ~1,100 instructions under
    /// callgrind, this one ~200. It has no time-to-live, and needs none: an entry carries its
    /// token's expiry, and the 100,000 entries bound its memory.
    verified: quick_cache::sync::Cache<[u8; 32], VerifiedToken>,
    hasher: PasswordHasher,
    clock: Arc<dyn Clock>,
    policy: Policy,
}

/// An access token whose signature and claims checked out: what verification reads from it.
#[derive(Clone, Copy)]
struct VerifiedToken {
    user: UserId,
    sid: SessionId,
    /// Expiry (Unix seconds), re-checked on every use.
    exp: i64,
}

impl VerifiedToken {
    /// `None` when the subject or session id is not an id (a token we did not issue).
    fn from_claims(claims: &Claims) -> Option<Self> {
        Some(Self {
            user: UserId::parse(&claims.sub)?,
            sid: SessionId::parse(&claims.sid)?,
            exp: claims.exp,
        })
    }
}

/// How long lockouts are remembered for growing the next one, and the longest lockout.
const LOCKOUT_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// How long `/profile` answers may be served from the cache.
pub const PROFILE_CACHE_TTL: Duration = Duration::from_secs(300);

impl Auth {
    /// Assembles the service, creating or loading the key ring. A key store that does not
    /// answer is not an error: the ring is loaded later (see [`Auth::reload_keys`]).
    pub async fn new(
        stores: Stores,
        hasher: PasswordHasher,
        clock: Arc<dyn Clock>,
        policy: Policy,
    ) -> anyhow::Result<Self> {
        let Stores {
            users,
            sessions,
            limits,
            keys: key_store,
            profiles,
        } = stores;
        let auth = Self {
            users,
            sessions,
            limits,
            key_store,
            keys: RwLock::new(None),
            last_kid_reload: std::sync::atomic::AtomicI64::new(0),
            profiles,
            verified: quick_cache::sync::Cache::new(100_000),
            hasher,
            clock,
            policy,
        };
        match auth.reload_keys().await {
            Ok(()) => {}
            Err(AuthError::Unavailable) => {
                tracing::error!("the key ring cannot be read yet; not ready until it can");
            }
            Err(e) => return Err(anyhow::Error::new(e).context("cannot load the key ring")),
        }
        Ok(auth)
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The current keys, or 503 while the key ring could not be read yet.
    pub fn keys(&self) -> Result<Arc<Keys>, AuthError> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(AuthError::Unavailable)
    }

    /// Whether the key ring has been loaded.
    pub fn keys_loaded(&self) -> bool {
        self.keys().is_ok()
    }

    /// Re-reads the key ring (a rotation by the CLI or another instance) and drops retired keys
    /// whose tokens have all expired. The first load also creates the ring if there is none and
    /// switches to a newly configured signing algorithm.
    pub async fn reload_keys(&self) -> Result<(), AuthError> {
        let first = !self.keys_loaded();
        let now = self.now();
        let mut ring = match self.key_store.load().await? {
            Some(ring) => ring,
            None => {
                // No ring yet, or the store lost it (a Redis that came back empty): make one,
                // agreed on by every instance through the store. Every old token is invalid
                // anyway, since its session is gone too.
                if !first {
                    tracing::warn!("the key ring is missing from the store; creating a new one");
                }
                let fresh = KeyRing::generate(self.policy.signing_alg, now)
                    .map_err(|e| AuthError::Unexpected(e.into()))?;
                self.key_store.init(&fresh).await?
            }
        };
        let active_alg = ring
            .keys
            .iter()
            .rev()
            .find(|k| k.retired_at.is_none())
            .map(|k| k.alg);
        if first && active_alg != Some(self.policy.signing_alg) {
            // The configured algorithm changed: switch, keeping old keys for their tokens.
            ring.rotate(self.policy.signing_alg, now, self.policy.key_retention())
                .map_err(|e| AuthError::Unexpected(e.into()))?;
            self.key_store.save(&ring).await?;
            tracing::info!(alg = %self.policy.signing_alg, "signing algorithm changed; new key created");
        }
        let keys = Keys::from_ring(&ring, &self.policy.tokens, now, self.policy.key_retention())
            .map_err(|e| AuthError::Unexpected(e.into()))?;
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(keys));
        if first {
            tracing::info!("key ring loaded");
        }
        Ok(())
    }

    /// Retires the active signing key and makes a new one.
    pub async fn rotate_keys(&self) -> Result<String, AuthError> {
        let mut ring = self
            .key_store
            .load()
            .await?
            .ok_or_else(|| AuthError::Unexpected(anyhow::anyhow!("no key ring to rotate")))?;
        ring.rotate(
            self.policy.signing_alg,
            self.now(),
            self.policy.key_retention(),
        )
        .map_err(|e| AuthError::Unexpected(e.into()))?;
        self.key_store.save(&ring).await?;
        self.reload_keys().await?;
        let kid = self.keys()?.active_kid().to_owned();
        tracing::info!(target: "audit", event = "key_rotation", kid = %kid);
        Ok(kid)
    }

    /// The key ring as stored (for `keys list`).
    pub async fn key_ring(&self) -> Result<Option<KeyRing>, AuthError> {
        Ok(self.key_store.load().await?)
    }

    /// "Now" by the service's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    // ----- login and tokens ---------------------------------------------------------------

    /// Checks a username and password and opens a session.
    pub async fn login(
        &self,
        username: &str,
        password: SecretString,
        client: &ClientInfo,
    ) -> Result<Issued, AuthError> {
        let user = self.check_password(username, password, client).await?;
        Ok(self.open_session(&user, client, false).await?.0)
    }

    /// The login form: checks the password and opens a browser session; returns the cookie
    /// value. Every login gets a new session and cookie, so a planted cookie is never adopted
    /// (no session fixation).
    pub async fn login_browser(
        &self,
        username: &str,
        password: SecretString,
        client: &ClientInfo,
    ) -> Result<(SessionId, String), AuthError> {
        let user = self.check_password(username, password, client).await?;
        let (issued, cookie) = self.open_session(&user, client, true).await?;
        let cookie = cookie.ok_or_else(|| AuthError::Unexpected(anyhow::anyhow!("no cookie")))?;
        Ok((issued.session_id, cookie.encode()))
    }

    /// The password check shared by every login door (JSON, form, `/token`, `/password`):
    /// throttling first, then the hash, with the same cost and answer for every kind of failure.
    async fn check_password(
        &self,
        username: &str,
        password: SecretString,
        client: &ClientInfo,
    ) -> Result<User, AuthError> {
        let keys = ThrottleKeys::new(username, client.ip);
        if let Err(e) = self.check_throttle(&keys).await {
            if matches!(e, AuthError::RateLimited(_)) {
                metrics::counter!("tessera_logins_total", "outcome" => "rate_limited").increment(1);
            }
            return Err(e);
        }
        let parsed = Username::parse(username).ok();
        let user = match &parsed {
            Some(name) => self.users.by_username(name).await?,
            None => None,
        };
        let too_long = password.expose_secret().len() > password::MAX_LEN * 4;
        let stored = user
            .as_ref()
            .filter(|_| !too_long)
            .map(|u| u.password_hash.clone());
        let verdict = self.hasher.verify(password.clone(), stored).await?;
        let user = match (user, verdict) {
            (Some(u), Verification::Match | Verification::MatchNeedsRehash) if !u.disabled => {
                if verdict == Verification::MatchNeedsRehash {
                    self.upgrade_hash(&u, password).await;
                }
                u
            }
            _ => {
                metrics::counter!("tessera_logins_total", "outcome" => "invalid_credentials")
                    .increment(1);
                self.record_failure(&keys).await?;
                tracing::info!(target: "audit", event = "login_failed", username = %keys.user, ip = client.ip.map(tracing::field::display));
                return Err(AuthError::InvalidCredentials);
            }
        };
        self.limits.clear(&keys.pair).await?;
        self.limits.clear(&keys.strikes).await?;
        metrics::counter!("tessera_logins_total", "outcome" => "success").increment(1);
        Ok(user)
    }

    async fn check_throttle(&self, keys: &ThrottleKeys) -> Result<(), AuthError> {
        let now = self.now();
        let p = &self.policy;
        let checks = [
            (&keys.lock, 1),
            (&keys.pair, p.login_max_failures),
            (&keys.user_total, p.login_max_failures.saturating_mul(10)),
            (&keys.ip, p.login_ip_max_failures),
        ];
        for (key, max) in checks {
            if key.is_empty() {
                continue;
            }
            let (count, end) = self.limits.get(key, now).await?;
            if count >= max {
                let wait = end.map(|e| now.until(e)).unwrap_or(Duration::from_secs(1));
                return Err(AuthError::RateLimited(wait.max(Duration::from_secs(1))));
            }
        }
        Ok(())
    }

    /// Counts a failed password check. Reaching the (username, IP) limit locks that pair out
    /// for the failure window, and each further lockout within a day doubles the lock (capped
    /// at a day): a guesser's rate falls off geometrically while the user can still sign in
    /// from elsewhere.
    async fn record_failure(&self, keys: &ThrottleKeys) -> Result<(), AuthError> {
        let now = self.now();
        let p = &self.policy;
        let failures = self
            .limits
            .hit(&keys.pair, p.login_failure_window, now)
            .await?;
        if failures >= p.login_max_failures {
            let strikes = self.limits.hit(&keys.strikes, LOCKOUT_MEMORY, now).await?;
            let factor = 1u32 << strikes.saturating_sub(1).min(16);
            let lock = p
                .login_failure_window
                .saturating_mul(factor)
                .min(LOCKOUT_MEMORY);
            self.limits.hit(&keys.lock, lock, now).await?;
            self.limits.clear(&keys.pair).await?;
        }
        self.limits
            .hit(&keys.user_total, p.login_failure_window, now)
            .await?;
        if !keys.ip.is_empty() {
            self.limits.hit(&keys.ip, p.login_ip_window, now).await?;
        }
        Ok(())
    }

    /// Re-hashes a legacy or outdated hash after a successful login. Best effort: a failure is
    /// logged and the login still succeeds.
    async fn upgrade_hash(&self, user: &User, password: SecretString) {
        let result = async {
            let hash = self.hasher.hash(password).await?;
            let mut updated = user.clone();
            updated.password_hash = hash;
            updated.updated_at = self.now();
            self.users.update(&updated).await?;
            Ok::<_, AuthError>(())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(target: "audit", event = "password_rehashed", user = %user.username)
            }
            Err(e) => tracing::warn!(error = %e, user = %user.username, "password rehash failed"),
        }
    }

    async fn open_session(
        &self,
        user: &User,
        client: &ClientInfo,
        with_cookie: bool,
    ) -> Result<(Issued, Option<SessionCookie>), AuthError> {
        let now = self.now();
        let id = SessionId::new();
        let refresh = RefreshToken::first(user.id, id);
        let cookie = with_cookie.then(|| SessionCookie::new(user.id, id));
        let session = Session {
            id,
            user_id: user.id,
            username: user.username.clone(),
            roles: user.roles.clone(),
            created_at: now,
            last_seen_at: now,
            idle_expires_at: now
                .plus(self.policy.idle_timeout)
                .min(now.plus(self.policy.lifetime)),
            absolute_expires_at: now.plus(self.policy.lifetime),
            user_agent: client.user_agent.as_deref().map(clip_user_agent),
            ip: client.ip.map(|ip| ip.to_string()),
            refresh: RefreshState {
                generation: 0,
                hash: refresh.hash(),
                prev_hash: None,
                rotated_at: None,
            },
            cookie_hash: cookie.as_ref().map(SessionCookie::hash),
        };
        let evicted = self
            .sessions
            .create(&session, self.policy.max_sessions_per_user, now)
            .await?;
        if !evicted.is_empty() {
            tracing::info!(target: "audit", event = "sessions_evicted", user = %user.username, count = evicted.len());
        }
        tracing::info!(target: "audit", event = "login", user = %user.username, session = %id, ip = client.ip.map(tracing::field::display), browser = with_cookie);
        Ok((self.issue(&session, &refresh)?, cookie))
    }

    fn issue(&self, session: &Session, refresh: &RefreshToken) -> Result<Issued, AuthError> {
        let keys = self.keys()?;
        let now = self.now();
        let ttl = self.policy.tokens.ttl;
        let claims = Claims {
            iss: self.policy.tokens.issuer.clone(),
            sub: session.user_id.to_string(),
            name: session.username.to_string(),
            sid: session.id.to_string(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now.as_secs(),
            exp: now.plus(ttl).as_secs(),
            aud: self.policy.tokens.audience.clone(),
            roles: session.roles.iter().map(str::to_owned).collect(),
        };
        let access_token = keys
            .sign(&claims)
            .map_err(|e| AuthError::Unexpected(e.into()))?;
        Ok(Issued {
            access_token,
            expires_in: ttl.as_secs(),
            refresh_token: refresh.encode(keys.mac_key()),
            session_id: session.id,
        })
    }

    /// Redeems a refresh token: rotation, the grace window and reuse detection (API.md §3).
    pub async fn refresh(&self, presented: &str) -> Result<Issued, AuthError> {
        let keys = self.keys()?;
        let token = RefreshToken::decode(presented, keys.mac_key())
            .ok_or(AuthError::InvalidGrant("the refresh token is invalid"))?;
        let successor = token.successor(keys.mac_key());
        let presentation = RefreshPresentation {
            generation: token.generation,
            hash: token.hash(),
            successor_hash: successor.hash(),
            grace: self.policy.refresh_reuse_grace,
            idle_timeout: self.policy.idle_timeout,
        };
        let outcome = self
            .sessions
            .rotate_refresh(token.user_id, token.session_id, &presentation, self.now())
            .await?;
        let label = match &outcome {
            Rotation::Rotated(_) => "rotated",
            Rotation::Grace(_) => "grace",
            Rotation::Reused => "reuse",
            Rotation::Invalid => "invalid",
        };
        metrics::counter!("tessera_refreshes_total", "outcome" => label).increment(1);
        match outcome {
            Rotation::Rotated(s) | Rotation::Grace(s) => self.issue(&s, &successor),
            Rotation::Reused => {
                metrics::counter!("tessera_refresh_reuse_detected_total").increment(1);
                tracing::warn!(target: "audit", event = "refresh_reuse", session = %token.session_id, user = %token.user_id);
                self.profiles.invalidate(token.user_id).await?;
                Err(AuthError::InvalidGrant(
                    "the refresh token was already used; the session is revoked",
                ))
            }
            Rotation::Invalid => Err(AuthError::InvalidGrant(
                "the refresh token is invalid or expired",
            )),
        }
    }

    /// The session `credential` belongs to, alive; slides its idle expiry. This is the hot
    /// path: for a bearer token one key lookup and signature check (cached per token), one
    /// store read, and a store write at most once per
    /// [`touch_interval`](crate::domain::session::touch_interval).
    pub async fn authenticate(&self, credential: Credential<'_>) -> Result<Principal, AuthError> {
        let now = self.now();
        let claim = self.claim(credential, now).await?;
        let session = self.live_session(claim.user, claim.sid, now).await?;
        self.admit(claim.cookie, session, now).await
    }

    /// What a credential says before any store read: a verified token's user and session, or
    /// a well-formed cookie's (whose secret [`Auth::admit`] checks against the session).
    async fn claim(&self, credential: Credential<'_>, now: Timestamp) -> Result<Claim, AuthError> {
        match credential {
            Credential::Bearer(token) => {
                let VerifiedToken { user, sid, .. } = self.verified_token(token, now).await?;
                Ok(Claim {
                    user,
                    sid,
                    cookie: None,
                })
            }
            Credential::Cookie(value) => {
                let cookie = SessionCookie::decode(value).ok_or(AuthError::InvalidToken)?;
                Ok(Claim {
                    user: cookie.user_id,
                    sid: cookie.session_id,
                    cookie: Some(cookie),
                })
            }
        }
    }

    /// The caller of a claim whose session is alive: the cookie's secret must be the session's,
    /// and the use slides the idle expiry.
    async fn admit(
        &self,
        cookie: Option<SessionCookie>,
        session: ActiveSession,
        now: Timestamp,
    ) -> Result<Principal, AuthError> {
        let via_cookie = cookie.is_some();
        if cookie.is_some_and(|c| !c.matches(session.cookie_hash.as_ref())) {
            return Err(AuthError::InvalidToken);
        }
        self.record_use(&session, now).await?;
        Ok(Principal::from_session(session, via_cookie))
    }

    /// The live session a credential names: from the store's memory when it has it (no round
    /// trip, no boxed future), else one store read (which looks in memory again: a miss costs
    /// a second in-memory lookup, a hit saves building the read).
    async fn live_session(
        &self,
        user: UserId,
        sid: SessionId,
        now: Timestamp,
    ) -> Result<ActiveSession, AuthError> {
        if let Some(session) = self.sessions.get_cached(user, sid, now) {
            return Ok(session);
        }
        self.sessions
            .get(user, sid, now)
            .await?
            .ok_or(AuthError::InvalidToken)
    }

    /// Slides a session's idle expiry after a use, writing at most once per touch interval: the
    /// one place both credentials (bearer token, cookie) record activity.
    async fn record_use(&self, session: &ActiveSession, now: Timestamp) -> Result<(), AuthError> {
        if session.needs_touch(now, self.policy.idle_timeout) {
            let idle = session.slid_idle_expiry(now, self.policy.idle_timeout);
            self.sessions
                .touch(session.user_id, session.id, now, idle)
                .await?;
        }
        Ok(())
    }

    /// The CSRF token of a session (printed in its pages).
    pub fn csrf_token(&self, session: SessionId) -> Result<String, AuthError> {
        Ok(cookie::session_csrf(self.keys()?.mac_key(), session))
    }

    /// Checks a session's CSRF token.
    pub fn check_csrf(&self, session: SessionId, token: &str) -> Result<bool, AuthError> {
        Ok(cookie::check_session_csrf(
            self.keys()?.mac_key(),
            session,
            token,
        ))
    }

    /// The login form's CSRF token for the browser holding `nonce`.
    pub fn login_csrf(&self, nonce: &str) -> Result<String, AuthError> {
        Ok(cookie::login_csrf(
            self.keys()?.mac_key(),
            nonce,
            self.now(),
        ))
    }

    /// Checks a login form's CSRF token.
    pub fn check_login_csrf(&self, nonce: &str, token: &str) -> Result<LoginCsrf, AuthError> {
        Ok(cookie::check_login_csrf(
            self.keys()?.mac_key(),
            nonce,
            token,
            self.now(),
        ))
    }

    /// What a valid access token says, from the verified-token cache when possible.
    async fn verified_token(
        &self,
        token: &[u8],
        now: Timestamp,
    ) -> Result<VerifiedToken, AuthError> {
        let leeway = self.policy.tokens.leeway;
        if token.len() > crate::domain::jwt::MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken);
        }
        let key = crate::domain::secret::sha256(token);
        if let Some(verified) = self.verified.get(&key) {
            let live = now.as_secs() < verified.exp.saturating_add(leeway.as_secs() as i64);
            return if live {
                Ok(verified)
            } else {
                Err(AuthError::InvalidToken)
            };
        }
        let token = std::str::from_utf8(token).map_err(|_| AuthError::InvalidToken)?;
        let keys = match self.keys() {
            Ok(keys) => keys,
            Err(not_loaded) => {
                // The store was down at start-up: try again, at most once a second.
                if !self.may_reload_keys(now) {
                    return Err(not_loaded);
                }
                // Boxed, as below: a cold path that would otherwise grow the future of every
                // verification, which is moved into its box on every request.
                Box::pin(self.reload_keys()).await?;
                self.keys()?
            }
        };
        let mut verified = keys.verify(token, now, leeway);
        if verified == Err(TokenError::UnknownKey) && self.may_reload_keys(now) {
            // Another instance may have rotated a moment ago: look once before refusing.
            Box::pin(self.reload_keys()).await?;
            verified = self.keys()?.verify(token, now, leeway);
        }
        let claims = verified.map_err(|e| {
            tracing::debug!(reason = %e, "access token refused");
            AuthError::InvalidToken
        })?;
        let verified = VerifiedToken::from_claims(&claims).ok_or(AuthError::InvalidToken)?;
        self.verified.insert(key, verified);
        Ok(verified)
    }

    fn may_reload_keys(&self, now: Timestamp) -> bool {
        use std::sync::atomic::Ordering;
        let last = self.last_kid_reload.load(Ordering::Relaxed);
        now.as_millis() - last >= 1000
            && self
                .last_kid_reload
                .compare_exchange(last, now.as_millis(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    // ----- sessions ------------------------------------------------------------------------

    /// Logs out: this session, the others, or all; returns how many were revoked.
    pub async fn logout(&self, who: &Principal, scope: LogoutScope) -> Result<u64, AuthError> {
        let n = match scope {
            LogoutScope::Current => {
                u64::from(self.sessions.revoke(who.user_id, who.session_id).await?)
            }
            LogoutScope::Others => {
                self.sessions
                    .revoke_all(who.user_id, Some(who.session_id))
                    .await?
            }
            LogoutScope::All => self.sessions.revoke_all(who.user_id, None).await?,
        };
        tracing::info!(target: "audit", event = "logout", user = %who.username, scope = scope.as_str(), revoked = n);
        Ok(n)
    }

    /// The caller's live sessions.
    pub async fn sessions(&self, who: &Principal) -> Result<Vec<Session>, AuthError> {
        Ok(self.sessions.list(who.user_id, self.now()).await?)
    }

    /// Revokes one of the caller's sessions (their own current one included).
    pub async fn revoke_session(&self, who: &Principal, id: SessionId) -> Result<(), AuthError> {
        if self.sessions.revoke(who.user_id, id).await? {
            tracing::info!(target: "audit", event = "session_revoked", user = %who.username, session = %id);
            Ok(())
        } else {
            Err(AuthError::NotFound("no such session"))
        }
    }

    /// Deletes expired sessions and refreshes the active-sessions gauge where the store can
    /// count cheaply.
    pub async fn sweep(&self) -> Result<u64, AuthError> {
        let now = self.now();
        let removed = self.sessions.sweep(now).await?;
        if let Some(n) = self.sessions.count_live(now).await? {
            metrics::gauge!("tessera_active_sessions").set(n as f64);
        }
        Ok(removed)
    }

    /// Whether every store answers.
    pub async fn ready(&self) -> bool {
        if !self.keys_loaded() && self.reload_keys().await.is_err() {
            return false;
        }
        self.users.ping().await.is_ok() && self.sessions.ping().await.is_ok()
    }

    // ----- users ---------------------------------------------------------------------------

    /// `GET /profile`: authenticates `credential` like [`Auth::authenticate`] and returns the
    /// profile of its user (and when it was cached). The credential names its user before any
    /// store read, so the profile cache is read *beside* the session, not after it: on Redis
    /// both commands leave in one write and come back in one read, one round trip instead of
    /// two. A profile read for a credential that then fails is dropped unseen.
    pub async fn profile_of(
        &self,
        credential: Credential<'_>,
    ) -> Result<(Profile, Timestamp), AuthError> {
        let now = self.now();
        let claim = self.claim(credential, now).await?;
        let (session, cached) = tokio::join!(
            self.live_session(claim.user, claim.sid, now),
            self.profiles.get(claim.user)
        );
        let who = self.admit(claim.cookie, session?, now).await?;
        self.profile_from(who.user_id, cached?).await
    }

    /// A user's profile: `cached` when there was a fresh entry, else read and cached.
    async fn profile_from(
        &self,
        user: UserId,
        cached: Option<CachedProfile>,
    ) -> Result<(Profile, Timestamp), AuthError> {
        if let Some(hit) = cached {
            let username = Username::parse(&hit.username)
                .map_err(|_| AuthError::Unexpected(anyhow::anyhow!("corrupt cached profile")))?;
            let profile = Profile {
                id: hit.id,
                user: username.clone(),
                username,
                roles: Roles::from_csv(&hit.roles),
                created_at: Timestamp::from_millis(hit.created_at),
                disabled: false,
            };
            return Ok((profile, Timestamp::from_millis(hit.cached_at)));
        }
        let user = self
            .users
            .by_id(user)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let now = self.now();
        let cached = CachedProfile {
            id: user.id,
            username: user.username.to_string(),
            roles: user.roles.to_csv(),
            created_at: user.created_at.as_millis(),
            cached_at: now.as_millis(),
        };
        self.profiles.put(&cached, PROFILE_CACHE_TTL).await?;
        Ok((Profile::from(&user), now))
    }

    /// Changes the caller's password after checking the current one; revokes every other
    /// session of the user.
    pub async fn change_password(
        &self,
        who: &Principal,
        current: SecretString,
        new: SecretString,
        client: &ClientInfo,
    ) -> Result<(), AuthError> {
        let user = match self
            .check_password(who.username.as_str(), current, client)
            .await
        {
            Err(AuthError::InvalidCredentials) => return Err(AuthError::WrongPassword),
            other => other?,
        };
        self.set_password(user, new).await?;
        self.sessions
            .revoke_all(who.user_id, Some(who.session_id))
            .await?;
        Ok(())
    }

    async fn set_password(&self, mut user: User, new: SecretString) -> Result<User, AuthError> {
        password::check_policy(new.expose_secret(), &user.username)?;
        user.password_hash = self.hasher.hash(new).await?;
        user.updated_at = self.now();
        if !self.users.update(&user).await? {
            return Err(AuthError::NotFound("no such user"));
        }
        self.profiles.invalidate(user.id).await?;
        tracing::info!(target: "audit", event = "password_changed", user = %user.username);
        Ok(user)
    }

    /// Creates a user (registration, admin API, CLI, first start).
    pub async fn create_user(
        &self,
        username: &str,
        password: SecretString,
        roles: &[String],
    ) -> Result<User, AuthError> {
        let username = Username::parse(username)?;
        let roles = parse_roles(roles)?;
        password::check_policy(password.expose_secret(), &username)?;
        if self.users.by_username(&username).await?.is_some() {
            return Err(AuthError::UsernameTaken);
        }
        let now = self.now();
        let user = User {
            id: UserId::new(),
            username,
            password_hash: self.hasher.hash(password).await?,
            roles,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        self.users.create(&user).await?;
        tracing::info!(target: "audit", event = "user_created", user = %user.username);
        Ok(user)
    }

    /// Creates a user from an existing password hash (migration from another system): bcrypt
    /// (`$2a$/$2b$/$2y$`) or an argon2 PHC string. The hash is upgraded at the first login.
    pub async fn import_user(
        &self,
        username: &str,
        password_hash: &str,
        roles: &[String],
    ) -> Result<User, AuthError> {
        let username = Username::parse(username)?;
        let roles = parse_roles(roles)?;
        if !password::is_supported_hash(password_hash) {
            return Err(AuthError::InvalidHash);
        }
        let now = self.now();
        let user = User {
            id: UserId::new(),
            username,
            password_hash: password_hash.to_owned(),
            roles,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        self.users.create(&user).await?;
        tracing::info!(target: "audit", event = "user_imported", user = %user.username);
        Ok(user)
    }

    /// Self-service registration, when enabled.
    pub async fn register(
        &self,
        username: &str,
        password: SecretString,
    ) -> Result<User, AuthError> {
        if !self.policy.allow_registration {
            return Err(AuthError::Forbidden("registration is closed"));
        }
        self.create_user(username, password, &[]).await
    }

    /// All users.
    pub async fn list_users(&self) -> Result<Vec<User>, AuthError> {
        Ok(self.users.list().await?)
    }

    /// A user by name.
    pub async fn find_user(&self, username: &str) -> Result<User, AuthError> {
        let name = Username::parse(username).map_err(|_| AuthError::NotFound("no such user"))?;
        self.users
            .by_username(&name)
            .await?
            .ok_or(AuthError::NotFound("no such user"))
    }

    /// A user by id.
    pub async fn user(&self, id: UserId) -> Result<User, AuthError> {
        self.users
            .by_id(id)
            .await?
            .ok_or(AuthError::NotFound("no such user"))
    }

    /// Applies an admin change; disabling revokes every session of the user.
    pub async fn update_user(&self, id: UserId, patch: UserPatch) -> Result<User, AuthError> {
        let mut user = self.user(id).await?;
        let roles = patch.roles.as_deref().map(parse_roles).transpose()?;
        if let Some(d) = patch.disabled {
            user.disabled = d;
        }
        if let Some(r) = &roles {
            user.roles = r.clone();
        }
        user.updated_at = self.now();
        if !self.users.update(&user).await? {
            return Err(AuthError::NotFound("no such user"));
        }
        self.profiles.invalidate(id).await?;
        if patch.disabled == Some(true) {
            self.sessions.revoke_all(id, None).await?;
        } else if let Some(r) = &roles {
            self.sessions.set_roles(id, r).await?;
        }
        tracing::info!(target: "audit", event = "user_updated", user = %user.username, disabled = user.disabled, roles = %user.roles.to_csv());
        Ok(user)
    }

    /// Sets a new password (admin/CLI) and revokes every session of the user.
    pub async fn reset_password(&self, id: UserId, new: SecretString) -> Result<(), AuthError> {
        let user = self.user(id).await?;
        self.set_password(user, new).await?;
        self.sessions.revoke_all(id, None).await?;
        Ok(())
    }

    /// Deletes a user and revokes their sessions.
    pub async fn delete_user(&self, id: UserId) -> Result<(), AuthError> {
        // Sessions first: a crash in between leaves a user without sessions, never sessions
        // without a user.
        self.sessions.revoke_all(id, None).await?;
        if !self.users.delete(id).await? {
            return Err(AuthError::NotFound("no such user"));
        }
        self.profiles.invalidate(id).await?;
        tracing::info!(target: "audit", event = "user_deleted", user = %id);
        Ok(())
    }

    /// Number of users.
    pub async fn user_count(&self) -> Result<u64, AuthError> {
        Ok(self.users.count().await?)
    }
}

fn parse_roles(raw: &[String]) -> Result<Roles, InvalidRole> {
    Ok(Roles::new(
        raw.iter()
            .map(|r| Role::parse(r))
            .collect::<Result<_, _>>()?,
    ))
}

/// The three throttling counters of one login attempt (API.md §5): per (username, IP), per
/// username across all clients (10× the pair limit, so one attacker cannot lock a user out),
/// and per IP.
struct ThrottleKeys {
    user: String,
    pair: String,
    /// Set when `pair` reached its limit: the pair is locked out until it closes.
    lock: String,
    /// Lockouts of this pair in the last day, to make the next one longer.
    strikes: String,
    user_total: String,
    ip: String,
}

impl ThrottleKeys {
    fn new(username: &str, ip: Option<IpAddr>) -> Self {
        // Usernames count case-insensitively; junk is clipped so keys stay small.
        let mut user: String = username.chars().take(Username::MAX_LEN + 1).collect();
        user.make_ascii_lowercase();
        let ip = ip.map(|ip| ip.to_string()).unwrap_or_default();
        Self {
            pair: format!("login:pair:{user}|{ip}"),
            lock: format!("login:lock:{user}|{ip}"),
            strikes: format!("login:strikes:{user}|{ip}"),
            user_total: format!("login:user:{user}"),
            ip: if ip.is_empty() {
                String::new()
            } else {
                format!("login:ip:{ip}")
            },
            user,
        }
    }
}
