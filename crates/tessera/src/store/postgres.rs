//! Users in PostgreSQL, selected by `database_url=postgres://…`: the same [`UserStore`] contract
//! as SQLite, its own migrations, a pool with timeouts.
//!
//! A database that cannot be reached at start-up does not stop the server: users are
//! unavailable (503, `/readyz` 503) until it answers and its migrations have run, which a
//! background task retries every second. Sessions, verification and everything else that does
//! not read a user keep working meanwhile. A database that answers but cannot be migrated (a
//! changed or unknown migration) still stops start-up: that needs an operator.

use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection as _, PgConnection, Row as _};

use super::{StoreError, UserStore};
use crate::domain::clock::Timestamp;
use crate::domain::user::{Roles, User, UserId, Username};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long start-up waits for a first connection before serving without the database: one
/// that is up answers in milliseconds, one that is down refuses at once or not at all.
const START_WAIT: Duration = Duration::from_secs(5);

/// How often the background task tries again to reach and migrate the database.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How often it tries again once the database answers but refuses the migrations.
const REFUSED_RETRY_EVERY: Duration = Duration::from_secs(30);

/// The PostgreSQL user store.
#[derive(Clone, Debug)]
pub struct PgUserStore {
    pool: PgPool,
    timeout: Duration,
    /// Set once the migrations have run; until then every call is `Unavailable`.
    migrated: Arc<AtomicBool>,
}

impl PgUserStore {
    /// A store on `url`, migrated at once when the database takes a first connection (within
    /// [`START_WAIT`]), else in the background once it does. Fails on a malformed URL, on
    /// credentials or a database name the server refuses, and on migrations it refuses.
    pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url).context("not a PostgreSQL URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .acquire_timeout(timeout.max(super::OPEN_PATIENCE))
            .connect_lazy_with(options.clone());
        let store = Self {
            pool,
            timeout,
            migrated: Arc::new(AtomicBool::new(false)),
        };
        // One connection first, tried once: a database that is down refuses it at once (the
        // pool would keep retrying until its acquire timeout), one that is up gets the full
        // patience for its migrations, as before.
        let reached = tokio::time::timeout(START_WAIT, PgConnection::connect_with(&options)).await;
        let why = match reached {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                match tokio::time::timeout(super::OPEN_PATIENCE, MIGRATOR.run(&store.pool)).await {
                    Ok(Ok(())) => {
                        store.migrated.store(true, Ordering::Release);
                        return Ok(store);
                    }
                    Ok(Err(e)) if !database_unreachable(&e) => {
                        return Err(e).context("cannot migrate the PostgreSQL database");
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer in time".to_owned(),
                }
            }
            // Refused credentials, an unknown database: settings to fix, not an outage.
            Ok(Err(e)) if !matches!(kind(&e), Kind::Unavailable) => {
                return Err(e).context("cannot connect to PostgreSQL");
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer in time".to_owned(),
        };
        tracing::warn!(error = %why, "PostgreSQL cannot be reached; users are unavailable until it can");
        store.migrate_in_background();
        Ok(store)
    }

    /// Tries the migrations every [`RETRY_EVERY`] (every [`REFUSED_RETRY_EVERY`] while the
    /// database refuses them) until they have run, or until the store is dropped.
    fn migrate_in_background(&self) {
        let (pool, migrated) = (self.pool.clone(), Arc::downgrade(&self.migrated));
        tokio::spawn(async move {
            let mut wait = RETRY_EVERY;
            loop {
                tokio::time::sleep(wait).await;
                let Some(flag) = migrated.upgrade() else {
                    return;
                };
                match tokio::time::timeout(super::OPEN_PATIENCE, MIGRATOR.run(&pool)).await {
                    Ok(Ok(())) => {
                        flag.store(true, Ordering::Release);
                        tracing::info!("PostgreSQL reached and migrated; users are available");
                        return;
                    }
                    Ok(Err(e)) if !database_unreachable(&e) => {
                        // An operator's to fix; said at this pace, not every second.
                        tracing::error!(error = %e, "cannot migrate the PostgreSQL database");
                        wait = REFUSED_RETRY_EVERY;
                    }
                    Ok(Err(_)) | Err(_) => wait = RETRY_EVERY,
                }
            }
        });
    }

    async fn deadline<T>(
        &self,
        fut: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        if !self.migrated.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "postgres: not reached (or not migrated) yet".into(),
            ));
        }
        super::with_deadline("postgres", self.timeout, fut, map_err).await
    }
}

/// A migration that failed because the database is not answering, as opposed to one the
/// database refused.
fn database_unreachable(e: &MigrateError) -> bool {
    match e {
        MigrateError::Execute(e) => matches!(kind(e), Kind::Unavailable),
        _ => false,
    }
}

enum Kind {
    Conflict,
    Unexpected,
    Unavailable,
}

fn kind(e: &sqlx::Error) -> Kind {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => Kind::Conflict,
        sqlx::Error::Database(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
            Kind::Unexpected
        }
        // Pool timeouts, I/O, TLS, protocol: the server is not answering properly.
        _ => Kind::Unavailable,
    }
}

fn map_err(e: sqlx::Error) -> StoreError {
    match kind(&e) {
        Kind::Conflict => StoreError::Conflict,
        Kind::Unexpected => StoreError::Unexpected(anyhow::Error::new(e)),
        Kind::Unavailable => StoreError::Unavailable(e.to_string()),
    }
}

fn user_from_row(row: &PgRow) -> Result<User, sqlx::Error> {
    let username: String = row.try_get("username")?;
    Ok(User {
        id: UserId(row.try_get("id")?),
        username: Username::parse(&username)
            .map_err(|_| sqlx::Error::Decode("corrupt username".into()))?,
        password_hash: row.try_get("password_hash")?,
        roles: Roles::from_csv(row.try_get("roles")?),
        disabled: row.try_get("disabled")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
    })
}

#[async_trait]
impl UserStore for PgUserStore {
    async fn create(&self, u: &User) -> Result<(), StoreError> {
        self.deadline(
            sqlx::query(
                "INSERT INTO users (id, username, password_hash, roles, disabled, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(u.id.0)
            .bind(u.username.as_str())
            .bind(&u.password_hash)
            .bind(u.roles.to_csv())
            .bind(u.disabled)
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
                sqlx::query("SELECT * FROM users WHERE username = $1")
                    .bind(username.as_str())
                    .fetch_optional(&self.pool),
            )
            .await?;
        row.as_ref().map(user_from_row).transpose().map_err(map_err)
    }

    async fn by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row = self
            .deadline(
                sqlx::query("SELECT * FROM users WHERE id = $1")
                    .bind(id.0)
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
                    "UPDATE users SET password_hash = $1, roles = $2, disabled = $3, \
                     updated_at = $4 WHERE id = $5",
                )
                .bind(&u.password_hash)
                .bind(u.roles.to_csv())
                .bind(u.disabled)
                .bind(u.updated_at.as_millis())
                .bind(u.id.0)
                .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete(&self, id: UserId) -> Result<bool, StoreError> {
        let done = self
            .deadline(
                sqlx::query("DELETE FROM users WHERE id = $1")
                    .bind(id.0)
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
