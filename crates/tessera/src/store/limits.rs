//! Login-throttling counters kept in process memory: the embedded backend of [`LimitStore`].
//!
//! One process owns the embedded store (the data-dir lock guarantees it), so memory is enough;
//! counters reset on restart, which only ever forgives, never locks out. Memory is bounded by
//! pruning closed windows whenever the map grows past a threshold.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{LimitStore, StoreError};
use crate::domain::clock::Timestamp;

/// Fixed-window failure counters in memory.
#[derive(Debug, Default)]
pub struct MemoryLimits {
    windows: Mutex<HashMap<String, (u64, Timestamp)>>,
}

const PRUNE_ABOVE: usize = 10_000;

impl MemoryLimits {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Timestamp)>> {
        // A poisoned lock only means another thread panicked mid-update of a counter; the map
        // itself is still consistent.
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl LimitStore for MemoryLimits {
    async fn get(&self, key: &str, now: Timestamp) -> Result<(u64, Option<Timestamp>), StoreError> {
        Ok(match self.lock().get(key) {
            Some(&(n, end)) if now < end => (n, Some(end)),
            _ => (0, None),
        })
    }

    async fn hit(&self, key: &str, window: Duration, now: Timestamp) -> Result<u64, StoreError> {
        let mut map = self.lock();
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, (_, end)| now < *end);
        }
        let entry = map.entry(key.to_owned()).or_insert((0, now.plus(window)));
        if now >= entry.1 {
            *entry = (0, now.plus(window));
        }
        entry.0 += 1;
        Ok(entry.0)
    }

    async fn clear(&self, key: &str) -> Result<(), StoreError> {
        self.lock().remove(key);
        Ok(())
    }
}
