//! Storage behind small domain-level traits, and the one place a backend is chosen.
//!
//! Each trait is shaped so that every method is one atomic operation on every backend: one SQL
//! transaction on SQLite/PostgreSQL, one Lua script on Redis (where all keys of a user share a
//! `{hash tag}`). Every record has an expiry; readers treat an expired record as absent even
//! before a sweep removes it.

pub mod cache;
pub mod keyfile;
pub mod limits;
pub mod postgres;
pub mod redis;
pub mod session_cache;
pub mod sqlite;
pub mod wal_cache;

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::clock::Timestamp;
use crate::domain::jwt::KeyRing;
use crate::domain::session::{ActiveSession, Session, SessionId};
use crate::domain::user::{Roles, User, UserId, Username};

/// How long a SQL pool waits for a connection outside a store call: opening (connecting to)
/// the database and migrating it at start-up. Every store call runs under the store deadline
/// (`store_timeout`, 500 ms by default) through its own timer, so this bounds start-up only,
/// where the deadline was too short: on a loaded machine, or while another process held the
/// database locked, opening failed where waiting would have worked (seen as "pool timed out"
/// in the test suite, for SQLite and for PostgreSQL).
pub(crate) const OPEN_PATIENCE: Duration = Duration::from_secs(30);

/// Every store the service needs, chosen once at start-up (see `app::open_stores`).
#[derive(Clone)]
pub struct Stores {
    /// Users.
    pub users: std::sync::Arc<dyn UserStore>,
    /// Sessions and refresh families.
    pub sessions: std::sync::Arc<dyn SessionStore>,
    /// Throttling counters.
    pub limits: std::sync::Arc<dyn LimitStore>,
    /// Server secrets.
    pub keys: std::sync::Arc<dyn KeyStore>,
    /// The `/profile` cache.
    pub profiles: std::sync::Arc<dyn ProfileCache>,
}

/// A storage failure. Callers map `Unavailable` to 503; there is no "not found" here, absence is
/// `Option::None`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time or is down: retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness constraint was hit (username taken).
    #[error("conflict")]
    Conflict,
    /// Anything else: a bug or corrupt data.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Runs one store call under the store deadline, records its latency and failure in the
/// metrics, and maps its error: the choke point every SQL backend goes through.
pub(crate) async fn with_deadline<T, E>(
    store: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, E>>,
    map_err: impl FnOnce(E) -> StoreError,
) -> Result<T, StoreError> {
    // tokio's clock, which the deadline is kept on (and tests can pause).
    let started = tokio::time::Instant::now();
    let result = match crate::deadline::within(started + timeout, fut).await {
        Some(r) => r.map_err(map_err),
        None => Err(StoreError::Unavailable(format!(
            "{store} did not answer in time"
        ))),
    };
    crate::observability::store_call(store, started.into_std(), &result);
    result
}

/// Users (SQLite or PostgreSQL).
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Inserts a user; `Conflict` when the username is taken.
    async fn create(&self, user: &User) -> Result<(), StoreError>;
    /// Looks a user up by username.
    async fn by_username(&self, username: &Username) -> Result<Option<User>, StoreError>;
    /// Looks a user up by id.
    async fn by_id(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// All users, by username.
    async fn list(&self) -> Result<Vec<User>, StoreError>;
    /// Writes the mutable fields (hash, roles, disabled, updated_at); false if the user is gone.
    async fn update(&self, user: &User) -> Result<bool, StoreError>;
    /// Deletes a user; false if absent.
    async fn delete(&self, id: UserId) -> Result<bool, StoreError>;
    /// Number of users (first-start bootstrap).
    async fn count(&self) -> Result<u64, StoreError>;
    /// Cheap liveness probe for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// What a refresh presentation did to its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The presented token was current: the session now expects the successor.
    Rotated(Session),
    /// The presented token is the one rotated just before, within the grace window: nothing
    /// changed; the caller hands out the same successor again.
    Grace(Session),
    /// An older token: the session has been revoked (reuse detection).
    Reused,
    /// No live session, or a token that never belonged to it.
    Invalid,
}

/// A refresh presentation, everything the atomic rotation needs.
#[derive(Debug, Clone)]
pub struct RefreshPresentation {
    /// Generation carried by the token.
    pub generation: u64,
    /// SHA-256 of its secret.
    pub hash: [u8; 32],
    /// SHA-256 of its successor's secret.
    pub successor_hash: [u8; 32],
    /// `refresh_reuse_grace`.
    pub grace: Duration,
    /// Session idle timeout (a refresh is a use and slides it).
    pub idle_timeout: Duration,
}

/// Sessions and their refresh-token families (embedded SQLite or Redis).
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new session and, in the same atomic step, revokes the user's oldest live
    /// sessions so that at most `max_per_user` remain. Returns the evicted ids.
    async fn create(
        &self,
        session: &Session,
        max_per_user: usize,
        now: Timestamp,
    ) -> Result<Vec<SessionId>, StoreError>;
    /// A live session of `user` from this instance's memory, without I/O, when the store keeps
    /// a copy it can vouch for (Redis with the session cache on); `None` means "ask [`get`]".
    /// A plain call, so a hit builds no future: `get`'s is boxed and sized for a round trip.
    ///
    /// [`get`]: SessionStore::get
    fn get_cached(&self, _user: UserId, _id: SessionId, _now: Timestamp) -> Option<ActiveSession> {
        None
    }
    /// A live session of `user`, as authentication reads it (the hot path: one round trip).
    async fn get(
        &self,
        user: UserId,
        id: SessionId,
        now: Timestamp,
    ) -> Result<Option<ActiveSession>, StoreError>;
    /// Records a use: `last_seen_at` and the slid idle expiry.
    async fn touch(
        &self,
        user: UserId,
        id: SessionId,
        now: Timestamp,
        idle_expires_at: Timestamp,
    ) -> Result<(), StoreError>;
    /// The user's live sessions, oldest first.
    async fn list(&self, user: UserId, now: Timestamp) -> Result<Vec<Session>, StoreError>;
    /// Revokes one session of `user`; false if it was not there.
    async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool, StoreError>;
    /// Revokes every session of `user` except `keep`; returns how many.
    async fn revoke_all(&self, user: UserId, keep: Option<SessionId>) -> Result<u64, StoreError>;
    /// Refresh rotation with reuse detection, atomically (see [`Rotation`]).
    async fn rotate_refresh(
        &self,
        user: UserId,
        id: SessionId,
        presented: &RefreshPresentation,
        now: Timestamp,
    ) -> Result<Rotation, StoreError>;
    /// Copies a user's new roles into their live sessions (sessions carry them for `/verify`).
    async fn set_roles(&self, user: UserId, roles: &Roles) -> Result<(), StoreError>;
    /// Deletes expired sessions; returns how many.
    async fn sweep(&self, now: Timestamp) -> Result<u64, StoreError>;
    /// How many sessions are live, when the backend can tell cheaply (for the metrics gauge).
    async fn count_live(&self, now: Timestamp) -> Result<Option<u64>, StoreError>;
    /// Cheap liveness probe for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Where the server secrets live (a file under `data_dir`, or Redis when shared).
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The ring, if one was ever saved.
    async fn load(&self) -> Result<Option<KeyRing>, StoreError>;
    /// Saves the ring unless one exists already; returns the ring that won, so concurrent first
    /// starts agree.
    async fn init(&self, ring: &KeyRing) -> Result<KeyRing, StoreError>;
    /// Replaces the ring (rotation).
    async fn save(&self, ring: &KeyRing) -> Result<(), StoreError>;
}

/// Counters for login throttling: fixed windows that start at the first failure.
#[async_trait]
pub trait LimitStore: Send + Sync + 'static {
    /// The failure count of `key` and when its window ends (`None` when no window is open).
    async fn get(&self, key: &str, now: Timestamp) -> Result<(u64, Option<Timestamp>), StoreError>;
    /// Counts one failure against `key`, opening a window of `window` if none is open.
    async fn hit(&self, key: &str, window: Duration, now: Timestamp) -> Result<u64, StoreError>;
    /// Forgets `key`.
    async fn clear(&self, key: &str) -> Result<(), StoreError>;
}

/// A cached `/profile` answer, in a storage-neutral shape.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedProfile {
    /// User id.
    pub id: UserId,
    /// Username.
    pub username: String,
    /// Roles, comma-separated.
    pub roles: String,
    /// User creation time (Unix ms).
    pub created_at: i64,
    /// When this entry was cached (Unix ms).
    pub cached_at: i64,
}

/// The `/profile` cache (in process, or Redis so every instance sees an invalidation).
#[async_trait]
pub trait ProfileCache: Send + Sync + 'static {
    /// A cached profile, if fresh.
    async fn get(&self, user: UserId) -> Result<Option<CachedProfile>, StoreError>;
    /// Caches a profile for `ttl`.
    async fn put(&self, profile: &CachedProfile, ttl: Duration) -> Result<(), StoreError>;
    /// Drops a user's entry (any change to the user).
    async fn invalidate(&self, user: UserId) -> Result<(), StoreError>;
}
