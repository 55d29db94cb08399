//! Function packages: fetched from the registry by digest, verified, and
//! extracted once into a cache shared by every call of that version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::Reference;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("bad package reference {0:?}")]
    BadReference(String),
    #[error("fetching package {digest} from {repository}: {source}")]
    Fetch {
        repository: String,
        digest: String,
        source: oci_client::errors::OciDistributionError,
    },
    #[error("package {expected} arrived with digest {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("package {digest}: {source}")]
    Io {
        digest: String,
        source: std::io::Error,
    },
}

pub struct Packages {
    dir: PathBuf,
    client: oci_client::Client,
    // One lock per digest, held only to look up the async lock.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Packages {
    pub fn new(dir: PathBuf, insecure_registries: Vec<String>) -> std::io::Result<Packages> {
        std::fs::create_dir_all(&dir)?;
        // Unfinished extractions of an earlier run.
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "partial") {
                let _ = std::fs::remove_dir_all(&path);
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(Packages {
            dir,
            client: oci_client::Client::new(ClientConfig {
                protocol: ClientProtocol::HttpsExcept(insecure_registries),
                ..Default::default()
            }),
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// The extracted package, fetching it first if needed.
    pub async fn ensure(&self, repository: &str, digest: &str) -> Result<PathBuf, PackageError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| PackageError::BadReference(digest.to_string()))?;
        let target = self.dir.join(hex);
        if target.is_dir() {
            return Ok(target);
        }
        let lock = {
            let mut locks = self.locks.lock().expect("poisoned");
            locks.entry(hex.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if target.is_dir() {
            return Ok(target);
        }
        let io = |source| PackageError::Io {
            digest: digest.to_string(),
            source,
        };
        let reference: Reference = repository
            .parse()
            .map_err(|_| PackageError::BadReference(repository.to_string()))?;
        let blob_path = self.dir.join(format!("{hex}.tgz.partial"));
        let started = std::time::Instant::now();
        {
            let mut file = tokio::fs::File::create(&blob_path).await.map_err(io)?;
            self.client
                .pull_blob(&reference, digest, &mut file)
                .await
                .map_err(|source| PackageError::Fetch {
                    repository: repository.to_string(),
                    digest: digest.to_string(),
                    source,
                })?;
            file.flush().await.map_err(io)?;
        }
        let extract_dir = self.dir.join(format!("{hex}.partial"));
        let expected = digest.to_string();
        let (blob, dir, tgt) = (blob_path.clone(), extract_dir.clone(), target.clone());
        tokio::task::spawn_blocking(move || -> Result<(), PackageError> {
            let io = |source| PackageError::Io {
                digest: expected.clone(),
                source,
            };
            let bytes = std::fs::read(&blob).map_err(io)?;
            let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            if actual != expected {
                return Err(PackageError::DigestMismatch { expected, actual });
            }
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(io)?;
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
            archive.set_preserve_permissions(true);
            archive.unpack(&dir).map_err(io)?;
            std::fs::rename(&dir, &tgt).map_err(io)?;
            let _ = std::fs::remove_file(&blob);
            Ok(())
        })
        .await
        .map_err(|e| io(std::io::Error::other(e.to_string())))??;
        info!(%digest, ms = started.elapsed().as_millis() as u64, "package cached");
        Ok(target)
    }
}

/// Copies a package's tree (regular files and directories: packages hold
/// nothing else) with the cache's owners and modes, so that a function
/// placed into a runtime-preloaded container looks exactly like one
/// mounted straight from the cache.
pub fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &to)?;
            std::fs::set_permissions(&to, entry.metadata()?.permissions())?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}
