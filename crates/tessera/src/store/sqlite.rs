//! The embedded store: one SQLite file (WAL) for users, sessions and refresh-token families.
//!
//! Write transactions use `BEGIN IMMEDIATE`: a deferred transaction that reads and then writes
//! can fail at once with SQLITE_BUSY when another connection writes, instead of waiting.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row as _, SqliteConnection};

use super::wal_cache::WalCache;
use super::{RefreshPresentation, Rotation, SessionStore, StoreError, UserStore};
use crate::domain::clock::Timestamp;
use crate::domain::session::{ActiveSession, RefreshState, RotationDecision, Session, SessionId};
use crate::domain::user::{Roles, User, UserId, Username};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Users and sessions in one SQLite database.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    timeout: Duration,
    /// Sessions served without a query while the database provably has not changed.
    cache: Option<Arc<WalCache>>,
}

impl SqliteStore {
    /// Opens (creating if missing) and migrates the database at `url` (`sqlite://…`): the
    /// users of a deployment whose sessions live in Redis.
    pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("invalid SQLite URL {url:?}"))?;
        Self::open(options, timeout, false).await
    }

    /// Opens (creating if missing) and migrates the database file at `path`: the embedded
    /// store, sessions included, read through a [`WalCache`]. (Only here: a URL may name a VFS
    /// that keeps the WAL index in the process's heap, which the cache cannot observe.)
    pub async fn open_file(path: &Path, timeout: Duration) -> anyhow::Result<Self> {
        Self::open(SqliteConnectOptions::new().filename(path), timeout, true).await
    }

    async fn open(
        options: SqliteConnectOptions,
        timeout: Duration,
        sessions: bool,
    ) -> anyhow::Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL under WAL survives a process crash (kill -9) without loss; only an OS
            // crash or power cut can drop the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(timeout.max(super::OPEN_PATIENCE))
            .connect_with(options.clone())
            .await
            .context("cannot open the SQLite database")?;
        MIGRATOR
            .run(&pool)
            .await
            .context("cannot migrate the SQLite database")?;
        let cache = if sessions {
            let cache = WalCache::open(&options).await.map(Arc::new);
            if cache.is_none() {
                tracing::warn!(
                    "the SQLite WAL index (<database>-shm) cannot be read: every verification \
                     queries the database"
                );
            }
            cache
        } else {
            None
        };
        Ok(Self {
            pool,
            timeout,
            cache,
        })
    }

    /// Runs a store operation under the store deadline.
    async fn deadline<T>(
        &self,
        fut: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        super::with_deadline("sqlite", self.timeout, fut, map_err).await
    }
}

fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("5" | "6" | "261" | "517")) =>
        {
            // SQLITE_BUSY / SQLITE_LOCKED and their extended codes: contention, not a bug.
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Unexpected(anyhow::Error::new(e)),
    }
}

fn user_from_row(row: &SqliteRow) -> Result<User, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let username: String = row.try_get("username")?;
    let corrupt = |what: &str| sqlx::Error::Decode(format!("corrupt user {what}").into());
    Ok(User {
        id: UserId::parse(&id).ok_or_else(|| corrupt("id"))?,
        username: Username::parse(&username).map_err(|_| corrupt("username"))?,
        password_hash: row.try_get("password_hash")?,
        roles: Roles::from_csv(row.try_get("roles")?),
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
    })
}

fn hash32(v: Option<Vec<u8>>) -> Result<Option<[u8; 32]>, sqlx::Error> {
    v.map(|b| {
        b.try_into()
            .map_err(|_| sqlx::Error::Decode("corrupt token hash".into()))
    })
    .transpose()
}

fn session_from_row(row: &SqliteRow) -> Result<Session, sqlx::Error> {
    let corrupt = |what: &str| sqlx::Error::Decode(format!("corrupt session {what}").into());
    let id: String = row.try_get("id")?;
    let user_id: String = row.try_get("user_id")?;
    let id = SessionId::parse(&id).ok_or_else(|| corrupt("id"))?;
    let user_id = UserId::parse(&user_id).ok_or_else(|| corrupt("user id"))?;
    let active = active_from_row(row, user_id, id)?;
    let generation: i64 = row.try_get("refresh_generation")?;
    Ok(Session {
        id,
        user_id,
        username: active.username,
        roles: active.roles,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        last_seen_at: active.last_seen_at,
        idle_expires_at: active.idle_expires_at,
        absolute_expires_at: active.absolute_expires_at,
        user_agent: row.try_get("user_agent")?,
        ip: row.try_get("ip")?,
        refresh: RefreshState {
            generation: u64::try_from(generation).map_err(|_| corrupt("generation"))?,
            hash: hash32(Some(row.try_get("refresh_hash")?))?.ok_or_else(|| corrupt("hash"))?,
            prev_hash: hash32(row.try_get("prev_refresh_hash")?)?,
            rotated_at: row
                .try_get::<Option<i64>, _>("rotated_at")?
                .map(Timestamp::from_millis),
        },
        cookie_hash: active.cookie_hash,
    })
}

/// The columns authentication reads ([`ActiveSession`]); [`session_from_row`] builds on it.
fn active_from_row(
    row: &SqliteRow,
    user: UserId,
    id: SessionId,
) -> Result<ActiveSession, sqlx::Error> {
    let username: String = row.try_get("username")?;
    Ok(ActiveSession {
        id,
        user_id: user,
        username: Username::parse(&username)
            .map_err(|_| sqlx::Error::Decode("corrupt session username".into()))?,
        roles: Roles::from_csv(row.try_get("roles")?),
        last_seen_at: Timestamp::from_millis(row.try_get("last_seen_at")?),
        idle_expires_at: Timestamp::from_millis(row.try_get("idle_expires_at")?),
        absolute_expires_at: Timestamp::from_millis(row.try_get("absolute_expires_at")?),
        cookie_hash: hash32(row.try_get("cookie_hash")?)?,
    })
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create(&self, u: &User) -> Result<(), StoreError> {
        self.deadline(
            sqlx::query(
                "INSERT INTO users (id, username, password_hash, roles, disabled, created_at, \
                 updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(u.id.to_string())
            .bind(u.username.as_str())
            .bind(&u.password_hash)
            .bind(u.roles.to_csv())
            .bind(i64::from(u.disabled))
            .bind(u.created_at.as_millis())
            .bind(u.updated_at.as_millis())
            .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn by_username(&self, username: &Username) -> Result<Option<User>, StoreError> {
        let row = self
            .deadline(
                sqlx::query("SELECT * FROM users WHERE username = ?")
                    .bind(username.as_str())
                    .fetch_optional(&self.pool),
            )
            .await?;
        row.as_ref().map(user_from_row).transpose().map_err(map_err)
    }

    async fn by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row = self
            .deadline(
                sqlx::query("SELECT * FROM users WHERE id = ?")
                    .bind(id.to_string())
                    .fetch_optional(&self.pool),
            )
            .await?;
        row.as_ref().map(user_from_row).transpose().map_err(map_err)
    }

    async fn list(&self) -> Result<Vec<User>, StoreError> {
        let rows = self
            .deadline(sqlx::query("SELECT * FROM users ORDER BY username").fetch_all(&self.pool))
            .await?;
        rows.iter()
            .map(user_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn update(&self, u: &User) -> Result<bool, StoreError> {
        let done = self
            .deadline(
                sqlx::query(
                    "UPDATE users SET password_hash = ?, roles = ?, disabled = ?, updated_at = ? \
                     WHERE id = ?",
                )
                .bind(&u.password_hash)
                .bind(u.roles.to_csv())
                .bind(i64::from(u.disabled))
                .bind(u.updated_at.as_millis())
                .bind(u.id.to_string())
                .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete(&self, id: UserId) -> Result<bool, StoreError> {
        let done = self
            .deadline(
                sqlx::query("DELETE FROM users WHERE id = ?")
                    .bind(id.to_string())
                    .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .deadline(sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&self.pool))
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.deadline(sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }
}

async fn insert_session(conn: &mut SqliteConnection, s: &Session) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sessions (id, user_id, username, roles, created_at, last_seen_at, \
         idle_expires_at, absolute_expires_at, expires_at, user_agent, ip, refresh_generation, \
         refresh_hash, prev_refresh_hash, rotated_at, cookie_hash) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(s.id.to_string())
    .bind(s.user_id.to_string())
    .bind(s.username.as_str())
    .bind(s.roles.to_csv())
    .bind(s.created_at.as_millis())
    .bind(s.last_seen_at.as_millis())
    .bind(s.idle_expires_at.as_millis())
    .bind(s.absolute_expires_at.as_millis())
    .bind(s.expires_at().as_millis())
    .bind(s.user_agent.as_deref())
    .bind(s.ip.as_deref())
    .bind(i64::try_from(s.refresh.generation).unwrap_or(i64::MAX))
    .bind(s.refresh.hash.to_vec())
    .bind(s.refresh.prev_hash.map(|h| h.to_vec()))
    .bind(s.refresh.rotated_at.map(Timestamp::as_millis))
    .bind(s.cookie_hash.map(|h| h.to_vec()))
    .execute(&mut *conn)
    .await
    .map(|_| ())
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create(
        &self,
        session: &Session,
        max_per_user: usize,
        now: Timestamp,
    ) -> Result<Vec<SessionId>, StoreError> {
        let uid = session.user_id.to_string();
        self.deadline(async {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let live: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM sessions WHERE user_id = ? AND expires_at > ? \
                 ORDER BY created_at, id",
            )
            .bind(&uid)
            .bind(now.as_millis())
            .fetch_all(&mut *tx)
            .await?;
            let excess = (live.len() + 1).saturating_sub(max_per_user.max(1));
            let evicted: Vec<String> = live.into_iter().take(excess).collect();
            for id in &evicted {
                sqlx::query("DELETE FROM sessions WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            insert_session(&mut tx, session).await?;
            tx.commit().await?;
            Ok(evicted.iter().filter_map(|s| SessionId::parse(s)).collect())
        })
        .await
    }

    fn get_cached(&self, user: UserId, id: SessionId, now: Timestamp) -> Option<ActiveSession> {
        let cache = self.cache.as_ref()?;
        cache.get(user, id).filter(|s| s.is_alive(now))
    }

    async fn get(
        &self,
        user: UserId,
        id: SessionId,
        now: Timestamp,
    ) -> Result<Option<ActiveSession>, StoreError> {
        // Taken before the query: see `WalCache::insert`.
        let generation = self.cache.as_ref().and_then(|c| c.generation());
        let row = self
            .deadline(
                sqlx::query(
                    "SELECT username, roles, last_seen_at, idle_expires_at, \
                     absolute_expires_at, cookie_hash \
                     FROM sessions WHERE id = ? AND user_id = ? AND expires_at > ?",
                )
                .bind(id.to_string())
                .bind(user.to_string())
                .bind(now.as_millis())
                .fetch_optional(&self.pool),
            )
            .await?;
        let session = row
            .as_ref()
            .map(|r| active_from_row(r, user, id))
            .transpose()
            .map_err(map_err)?;
        if let (Some(cache), Some(generation), Some(s)) = (&self.cache, generation, &session) {
            cache.insert(generation, s);
        }
        Ok(session)
    }

    async fn touch(
        &self,
        user: UserId,
        id: SessionId,
        now: Timestamp,
        idle_expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let touch = match &self.cache {
            Some(cache) => cache.touch(self.timeout).await,
            None => None,
        };
        let done = self
            .deadline(
                sqlx::query(
                    "UPDATE sessions SET last_seen_at = ?, idle_expires_at = ?, \
                 expires_at = MIN(?, absolute_expires_at) \
                 WHERE id = ? AND user_id = ? AND expires_at > ?",
                )
                .bind(now.as_millis())
                .bind(idle_expires_at.as_millis())
                .bind(idle_expires_at.as_millis())
                .bind(id.to_string())
                .bind(user.to_string())
                .bind(now.as_millis())
                .execute(&self.pool),
            )
            .await?;
        // One row changed: this statement committed, so the commit may be attributed to it.
        if let (Some(touch), 1) = (touch, done.rows_affected()) {
            touch.committed(user, id);
        }
        Ok(())
    }

    async fn list(&self, user: UserId, now: Timestamp) -> Result<Vec<Session>, StoreError> {
        let rows = self
            .deadline(
                sqlx::query(
                    "SELECT id, user_id, username, roles, created_at, last_seen_at, \
                     idle_expires_at, absolute_expires_at, user_agent, ip, refresh_generation, \
                     refresh_hash, prev_refresh_hash, rotated_at, cookie_hash \
                     FROM sessions WHERE user_id = ? AND expires_at > ? ORDER BY created_at, id",
                )
                .bind(user.to_string())
                .bind(now.as_millis())
                .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(session_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn revoke(&self, user: UserId, id: SessionId) -> Result<bool, StoreError> {
        let done = self
            .deadline(
                sqlx::query("DELETE FROM sessions WHERE id = ? AND user_id = ?")
                    .bind(id.to_string())
                    .bind(user.to_string())
                    .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_all(&self, user: UserId, keep: Option<SessionId>) -> Result<u64, StoreError> {
        let keep = keep.map(|k| k.to_string()).unwrap_or_default();
        let done = self
            .deadline(
                sqlx::query("DELETE FROM sessions WHERE user_id = ? AND id != ?")
                    .bind(user.to_string())
                    .bind(keep)
                    .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected())
    }

    async fn rotate_refresh(
        &self,
        user: UserId,
        id: SessionId,
        p: &RefreshPresentation,
        now: Timestamp,
    ) -> Result<Rotation, StoreError> {
        let (sid, uid) = (id.to_string(), user.to_string());
        self.deadline(async {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let row = sqlx::query(
                "SELECT id, user_id, username, roles, created_at, last_seen_at, \
                 idle_expires_at, absolute_expires_at, user_agent, ip, refresh_generation, \
                 refresh_hash, prev_refresh_hash, rotated_at, cookie_hash \
                 FROM sessions WHERE id = ? AND user_id = ? AND expires_at > ?",
            )
            .bind(&sid)
            .bind(&uid)
            .bind(now.as_millis())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(Rotation::Invalid);
            };
            let mut s = session_from_row(&row)?;
            let outcome = s.refresh.decide(p.generation, &p.hash, now, p.grace);
            match outcome {
                RotationDecision::Rotate => {
                    let idle = s.slid_idle_expiry(now, p.idle_timeout);
                    sqlx::query(
                        "UPDATE sessions SET refresh_generation = ?, refresh_hash = ?, \
                         prev_refresh_hash = ?, rotated_at = ?, last_seen_at = ?, \
                         idle_expires_at = ?, expires_at = MIN(?, absolute_expires_at) \
                         WHERE id = ?",
                    )
                    .bind(i64::try_from(p.generation + 1).unwrap_or(i64::MAX))
                    .bind(p.successor_hash.to_vec())
                    .bind(p.hash.to_vec())
                    .bind(now.as_millis())
                    .bind(now.as_millis())
                    .bind(idle.as_millis())
                    .bind(idle.as_millis())
                    .bind(&sid)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    s.refresh = RefreshState {
                        generation: p.generation + 1,
                        hash: p.successor_hash,
                        prev_hash: Some(p.hash),
                        rotated_at: Some(now),
                    };
                    s.last_seen_at = now;
                    s.idle_expires_at = idle;
                    Ok(Rotation::Rotated(s))
                }
                RotationDecision::Grace => Ok(Rotation::Grace(s)),
                RotationDecision::Reuse => {
                    sqlx::query("DELETE FROM sessions WHERE id = ?")
                        .bind(&sid)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(Rotation::Reused)
                }
                RotationDecision::Invalid => Ok(Rotation::Invalid),
            }
        })
        .await
    }

    async fn set_roles(&self, user: UserId, roles: &Roles) -> Result<(), StoreError> {
        self.deadline(
            sqlx::query("UPDATE sessions SET roles = ? WHERE user_id = ?")
                .bind(roles.to_csv())
                .bind(user.to_string())
                .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn sweep(&self, now: Timestamp) -> Result<u64, StoreError> {
        let done = self
            .deadline(
                sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
                    .bind(now.as_millis())
                    .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected())
    }

    async fn count_live(&self, now: Timestamp) -> Result<Option<u64>, StoreError> {
        let n: i64 = self
            .deadline(
                sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE expires_at > ?")
                    .bind(now.as_millis())
                    .fetch_one(&self.pool),
            )
            .await?;
        Ok(Some(u64::try_from(n).unwrap_or(0)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        UserStore::ping(self).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::Connection as _;

    use super::*;
    use crate::store::wal_cache::Touch;

    /// A store on a fresh file with one user and one live session of theirs.
    async fn store_with_a_session(dir: &Path) -> (SqliteStore, Session) {
        let store = SqliteStore::open_file(&dir.join("t.db"), Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let at = Timestamp::from_millis;
        let user = User {
            id: UserId(uuid::Uuid::new_v4()),
            username: Username::parse("alice").unwrap_or_else(|_| unreachable!()),
            password_hash: "x".into(),
            roles: Roles::from_csv("admin"),
            disabled: false,
            created_at: at(1_000),
            updated_at: at(1_000),
        };
        UserStore::create(&store, &user)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let session = Session {
            id: SessionId(uuid::Uuid::new_v4()),
            user_id: user.id,
            username: user.username.clone(),
            roles: user.roles.clone(),
            created_at: at(1_000),
            last_seen_at: at(1_000),
            idle_expires_at: at(10_000_000),
            absolute_expires_at: at(20_000_000),
            user_agent: None,
            ip: None,
            refresh: RefreshState {
                generation: 0,
                hash: [1; 32],
                prev_hash: None,
                rotated_at: None,
            },
            cookie_hash: None,
        };
        SessionStore::create(&store, &session, 10, at(1_000))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (store, session)
    }

    /// Another process's write, as the CLI makes it: its own connection to the same file.
    async fn delete_elsewhere(dir: &Path, id: SessionId) {
        let url = format!("sqlite://{}", dir.join("t.db").display());
        let mut other = sqlx::SqliteConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("DELETE FROM sessions WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut other)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn a_session_is_served_from_memory_until_another_connection_commits_anything() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (store, s) = store_with_a_session(dir.path()).await;
        let now = Timestamp::from_millis(2_000);
        assert!(
            store.get_cached(s.user_id, s.id, now).is_none(),
            "not read yet"
        );
        let read = store.get(s.user_id, s.id, now).await.ok().flatten();
        assert_eq!(read.map(|r| r.id), Some(s.id));
        let cached = store.get_cached(s.user_id, s.id, now);
        assert_eq!(cached.map(|c| c.username), Some(s.username.clone()));
        assert!(
            store
                .get_cached(s.user_id, s.id, Timestamp::from_millis(30_000_000))
                .is_none(),
            "an expired session is not served"
        );

        delete_elsewhere(dir.path(), s.id).await;
        assert!(store.get_cached(s.user_id, s.id, now).is_none());
        assert!(matches!(store.get(s.user_id, s.id, now).await, Ok(None)));
    }

    #[tokio::test]
    async fn a_read_that_a_commit_overtook_is_never_served() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (store, s) = store_with_a_session(dir.path()).await;
        let now = Timestamp::from_millis(2_000);
        let cache = store.cache.clone().unwrap_or_else(|| panic!("no cache"));
        let stale = store.get(s.user_id, s.id, now).await.ok().flatten();
        let ticket = cache.generation();
        delete_elsewhere(dir.path(), s.id).await; // lands while "our query" is in flight,
        let _ = cache.generation(); // and another request notices it before our query returns
        if let (Some(ticket), Some(stale)) = (ticket, &stale) {
            cache.insert(ticket, stale);
        }
        assert!(store.get_cached(s.user_id, s.id, now).is_none());
    }

    /// A second session of the same user, read once so that both are in memory.
    async fn two_sessions_in_memory(store: &SqliteStore, a: &Session) -> Session {
        let b = Session {
            id: SessionId(uuid::Uuid::new_v4()),
            ..a.clone()
        };
        let now = Timestamp::from_millis(2_000);
        SessionStore::create(store, &b, 10, now)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for s in [a, &b] {
            let _ = store.get(s.user_id, s.id, now).await;
            assert!(store.get_cached(s.user_id, s.id, now).is_some());
        }
        b
    }

    /// Records a use of `a` a minute after the sessions were read; returns that time.
    async fn touch_a_minute_later(store: &SqliteStore, a: &Session) -> Timestamp {
        let later = Timestamp::from_millis(70_000);
        let idle = Timestamp::from_millis(3_670_000);
        SessionStore::touch(store, a.user_id, a.id, later, idle)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        later
    }

    #[tokio::test]
    async fn a_touch_drops_only_its_own_session_from_memory() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (store, a) = store_with_a_session(dir.path()).await;
        let b = two_sessions_in_memory(&store, &a).await;
        let later = touch_a_minute_later(&store, &a).await;
        assert!(store.get_cached(b.user_id, b.id, later).is_some());
        assert!(store.get_cached(a.user_id, a.id, later).is_none());
        let read = store.get(a.user_id, a.id, later).await.ok().flatten();
        assert_eq!(read.map(|r| r.last_seen_at), Some(later));
        let cached = store.get_cached(a.user_id, a.id, later);
        assert_eq!(cached.map(|r| r.last_seen_at), Some(later), "read back");
    }

    #[tokio::test]
    async fn a_touch_does_not_hide_another_processs_commit_before_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (store, a) = store_with_a_session(dir.path()).await;
        let b = two_sessions_in_memory(&store, &a).await;
        delete_elsewhere(dir.path(), b.id).await;
        let later = touch_a_minute_later(&store, &a).await;
        assert!(store.get_cached(b.user_id, b.id, later).is_none());
    }

    /// Starts a touch of `a` and writes it, as `touch` does, leaving its check to the caller.
    async fn touch_in_flight<'c>(
        store: &SqliteStore,
        cache: &'c WalCache,
        a: &Session,
    ) -> Touch<'c> {
        let touch = cache.touch(Duration::from_secs(1)).await;
        let touch = touch.unwrap_or_else(|| panic!("no touch"));
        sqlx::query("UPDATE sessions SET last_seen_at = 70000 WHERE id = ?")
            .bind(a.id.to_string())
            .execute(&store.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        touch
    }

    #[tokio::test]
    async fn a_reader_between_a_touchs_commit_and_its_check_neither_trusts_nor_flushes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (store, a) = store_with_a_session(dir.path()).await;
        let b = two_sessions_in_memory(&store, &a).await;
        let cache = store.cache.clone().unwrap_or_else(|| panic!("no cache"));
        let touch = touch_in_flight(&store, &cache, &a).await;
        let now = Timestamp::from_millis(70_000);
        assert!(
            store.get_cached(b.user_id, b.id, now).is_none(),
            "not trusted yet"
        );
        touch.committed(a.user_id, a.id);
        assert!(
            store.get_cached(b.user_id, b.id, now).is_some(),
            "nothing flushed"
        );
        assert!(store.get_cached(a.user_id, a.id, now).is_none());
    }

    #[tokio::test]
    async fn a_commit_elsewhere_during_a_touch_is_not_taken_for_the_touch() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (store, a) = store_with_a_session(dir.path()).await;
        let b = two_sessions_in_memory(&store, &a).await;
        let cache = store.cache.clone().unwrap_or_else(|| panic!("no cache"));
        let touch = touch_in_flight(&store, &cache, &a).await;
        delete_elsewhere(dir.path(), b.id).await; // commits while our touch is in flight
        touch.committed(a.user_id, a.id);
        let now = Timestamp::from_millis(70_000);
        assert!(store.get_cached(b.user_id, b.id, now).is_none());
    }

    #[tokio::test]
    async fn an_in_memory_database_reads_every_time() {
        let options =
            SqliteConnectOptions::from_str("sqlite::memory:").unwrap_or_else(|e| panic!("{e}"));
        assert!(WalCache::open(&options).await.is_none());
    }

    #[tokio::test]
    async fn opening_waits_out_a_lock_longer_than_the_store_deadline() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("locked.db");
        // Another process's exclusive lock on a (rollback-journal) database: switching it to
        // WAL, which opening does, has to wait until the lock is released.
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut holder = sqlx::SqliteConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("CREATE TABLE t (x)")
            .execute(&mut holder)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut holder)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            sqlx::query("COMMIT").execute(&mut holder).await.map(|_| ())
        });
        let opened = SqliteStore::open_file(&path, Duration::from_millis(100)).await;
        assert!(opened.is_ok(), "{:?}", opened.err());
        assert!(matches!(release.await, Ok(Ok(()))));
    }
}
