//! Users in PostgreSQL, selected by `database_url=postgres://…`: the same [`UserStore`] contract
//! as SQLite, its own migrations, a pool with timeouts.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};

use super::{StoreError, UserStore};
use crate::domain::clock::Timestamp;
use crate::domain::user::{Roles, User, UserId, Username};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL user store.
#[derive(Clone, Debug)]
pub struct PgUserStore {
    pool: PgPool,
    timeout: Duration,
}

impl PgUserStore {
    /// Connects and migrates.
    pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .acquire_timeout(timeout.max(super::OPEN_PATIENCE))
            .connect(url)
            .await
            .context("cannot connect to PostgreSQL")?;
        MIGRATOR
            .run(&pool)
            .await
            .context("cannot migrate the PostgreSQL database")?;
        Ok(Self { pool, timeout })
    }

    async fn deadline<T>(
        &self,
        fut: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        super::with_deadline("postgres", self.timeout, fut, map_err).await
    }
}

fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        sqlx::Error::Database(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
            StoreError::Unexpected(anyhow::Error::new(e))
        }
        // Pool timeouts, I/O, TLS, protocol: the server is not answering properly.
        _ => StoreError::Unavailable(e.to_string()),
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
