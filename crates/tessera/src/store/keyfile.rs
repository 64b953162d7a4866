//! Server secrets in a file under `data_dir` (mode 0600), written atomically (temp + rename) so a
//! crash never leaves a half-written key ring.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use async_trait::async_trait;

use super::{KeyStore, StoreError};
use crate::domain::jwt::KeyRing;

/// `<data_dir>/keys.json`.
#[derive(Clone, Debug)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    /// The key file inside `data_dir`.
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("keys.json"),
        }
    }

    fn read(&self) -> anyhow::Result<Option<KeyRing>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is not a valid key ring", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    fn write(&self, ring: &KeyRing) -> anyhow::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".keys.json.{}.tmp", std::process::id()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(ring)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))?;
        Ok(())
    }
}

#[async_trait]
impl KeyStore for KeyFile {
    async fn load(&self) -> Result<Option<KeyRing>, StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.read())
            .await
            .map_err(|e| StoreError::Unexpected(e.into()))?
            .map_err(StoreError::Unexpected)
    }

    async fn init(&self, ring: &KeyRing) -> Result<KeyRing, StoreError> {
        if let Some(existing) = self.load().await? {
            return Ok(existing);
        }
        self.save(ring).await?;
        Ok(ring.clone())
    }

    async fn save(&self, ring: &KeyRing) -> Result<(), StoreError> {
        let (me, ring) = (self.clone(), ring.clone());
        tokio::task::spawn_blocking(move || me.write(&ring))
            .await
            .map_err(|e| StoreError::Unexpected(e.into()))?
            .map_err(StoreError::Unexpected)
    }
}
