//! The in-process profile cache: the embedded backend of [`ProfileCache`].

use std::time::Duration;

use async_trait::async_trait;

use super::{CachedProfile, ProfileCache, StoreError};
use crate::domain::user::UserId;

/// A bounded in-memory cache with a time-to-live.
pub struct MemoryProfileCache {
    cache: moka::future::Cache<UserId, CachedProfile>,
}

impl MemoryProfileCache {
    /// A cache of at most `capacity` entries living at most `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }
}

#[async_trait]
impl ProfileCache for MemoryProfileCache {
    async fn get(&self, user: UserId) -> Result<Option<CachedProfile>, StoreError> {
        Ok(self.cache.get(&user).await)
    }

    async fn put(&self, profile: &CachedProfile, _ttl: Duration) -> Result<(), StoreError> {
        self.cache.insert(profile.id, profile.clone()).await;
        Ok(())
    }

    async fn invalidate(&self, user: UserId) -> Result<(), StoreError> {
        self.cache.invalidate(&user).await;
        Ok(())
    }
}
