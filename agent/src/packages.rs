//! Function packages: fetched from the registry by digest, verified, and
//! extracted once into a cache shared by every call of that version.
//!
//! The agent runs as root, so it trusts neither the registry nor the
//! control plane: the download is bounded in bytes and time, the archive is
//! checked again against the same shape rules the control plane applies on
//! deploy (regular files and directories only, bounded size, entry count,
//! depth and name lengths), and extraction runs in a child process inside
//! a cgroup of its own, killed at a deadline (see extract_jail.rs). The
//! cache itself is bounded in bytes: packages no container uses are
//! evicted least recently used first, and a package the leader says is no
//! longer deployed ([`Packages::forget`]) goes as soon as its last
//! container does.
//!
//! Permissions. The cache directory is root's, mode 0700: no other host
//! user can list it or reach a package through it. The packages inside are
//! world-readable (directories 0755, files 0644 or 0755), root-owned: a
//! package directory is bind-mounted read-only into containers that each
//! run as their own unprivileged uid, any uid of the pool, and must read it
//! through the mount. That works because the bind mount is set up by the
//! runtime as root, and inside the container the mount's root is the
//! package directory itself: the container never walks the 0700 parent,
//! while other host users cannot get past it. Nothing in a package is
//! writable by anyone but root.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::Reference;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

use crate::extract_jail::{Extractor, JailLimits};

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
    #[error("fetching package {digest} took longer than {limit:?}")]
    FetchTimeout { digest: String, limit: Duration },
    #[error("package {expected} arrived with digest {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("package {digest}: {source}")]
    Io {
        digest: String,
        source: std::io::Error,
    },
    #[error("package {digest} refused: {reason}")]
    Refused { digest: String, reason: Refusal },
    #[error("extracting package {digest}: {what}")]
    Extractor { digest: String, what: String },
}

/// Why a package was not extracted: it breaks the shape rules, or takes
/// too long.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    #[error("the download is larger than {0} bytes")]
    BlobTooLarge(u64),
    #[error("entry {0:?}: only regular files and directories are allowed")]
    EntryKind(String),
    #[error("entry {0:?}: unsafe or invalid path")]
    Path(String),
    #[error("entry {0:?}: nested deeper than {1} levels")]
    TooDeep(String, usize),
    #[error("entry {0:?}: a name is longer than {1} bytes")]
    NameTooLong(String, usize),
    #[error("entry {0:?}: path longer than {1} bytes")]
    PathTooLong(String, usize),
    #[error("more than {0} entries")]
    TooManyEntries(usize),
    #[error("unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("entry {0:?} exists already, or its parent is not a directory")]
    Conflict(String),
    #[error("extraction took longer than {0:?}")]
    Timeout(Duration),
}

/// What an archive may hold; the defaults are the control plane's
/// defaults, so what one accepts on deploy the other extracts. An agent
/// must allow at least what its control plane does.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ShapeLimits {
    pub max_unpacked_bytes: u64,
    pub max_entries: usize,
    pub max_depth: usize,
    pub max_name_bytes: usize,
    pub max_path_bytes: usize,
}

impl Default for ShapeLimits {
    fn default() -> Self {
        ShapeLimits {
            max_unpacked_bytes: 256 << 20,
            max_entries: 10_000,
            max_depth: 32,
            max_name_bytes: 255,
            max_path_bytes: 1024,
        }
    }
}

/// The package cache's bounds.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    /// Extracted packages kept, bytes; packages in use are never evicted,
    /// so the cache may exceed it while they run [default: 2 GiB].
    pub max_cache_bytes: u64,
    /// Largest download accepted [default: 128 MiB, the control plane's
    /// largest normalized package].
    pub max_blob_bytes: u64,
    /// Download time allowed [default: 60s].
    pub fetch_timeout: Duration,
    /// Verification and extraction time allowed [default: 30s].
    pub extract_timeout: Duration,
    /// What an extraction may take from the node (its cgroup).
    pub extract: JailLimits,
    pub shape: ShapeLimits,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_cache_bytes: 2 << 30,
            max_blob_bytes: 128 << 20,
            fetch_timeout: Duration::from_secs(60),
            extract_timeout: Duration::from_secs(30),
            extract: JailLimits::default(),
            shape: ShapeLimits::default(),
        }
    }
}

/// The `[packages]` table of the agent's configuration file: any field of
/// [`CacheLimits`] and [`ShapeLimits`] (durations as "30s").
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    pub max_cache_bytes: Option<u64>,
    pub max_blob_bytes: Option<u64>,
    pub fetch_timeout: Option<String>,
    pub extract_timeout: Option<String>,
    pub extract_memory_bytes: Option<u64>,
    pub extract_cpu_millis: Option<u64>,
    pub extract_pids: Option<u64>,
    pub max_unpacked_bytes: Option<u64>,
    pub max_entries: Option<usize>,
    pub max_depth: Option<usize>,
    pub max_name_bytes: Option<usize>,
    pub max_path_bytes: Option<usize>,
}

impl CacheSettings {
    pub fn limits(&self) -> anyhow::Result<CacheLimits> {
        let d = CacheLimits::default();
        let duration = |s: &Option<String>, default: Duration, key: &str| match s {
            Some(s) => humantime::parse_duration(s)
                .map_err(|e| anyhow::anyhow!("packages.{key} = {s:?}: {e}")),
            None => Ok(default),
        };
        Ok(CacheLimits {
            max_cache_bytes: self.max_cache_bytes.unwrap_or(d.max_cache_bytes),
            max_blob_bytes: self.max_blob_bytes.unwrap_or(d.max_blob_bytes),
            fetch_timeout: duration(&self.fetch_timeout, d.fetch_timeout, "fetch_timeout")?,
            extract_timeout: duration(&self.extract_timeout, d.extract_timeout, "extract_timeout")?,
            extract: JailLimits {
                memory_bytes: self.extract_memory_bytes.unwrap_or(d.extract.memory_bytes),
                cpu_millis: self.extract_cpu_millis.unwrap_or(d.extract.cpu_millis),
                pids: self.extract_pids.unwrap_or(d.extract.pids),
            },
            shape: ShapeLimits {
                max_unpacked_bytes: self
                    .max_unpacked_bytes
                    .unwrap_or(d.shape.max_unpacked_bytes),
                max_entries: self.max_entries.unwrap_or(d.shape.max_entries),
                max_depth: self.max_depth.unwrap_or(d.shape.max_depth),
                max_name_bytes: self.max_name_bytes.unwrap_or(d.shape.max_name_bytes),
                max_path_bytes: self.max_path_bytes.unwrap_or(d.shape.max_path_bytes),
            },
        })
    }
}

/// The package cache; cheap to clone (one cache per agent).
#[derive(Clone)]
pub struct Packages {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    client: oci_client::Client,
    limits: CacheLimits,
    extractor: Extractor,
    // One lock per digest, held only to look up the async lock.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    cache: Mutex<Cache>,
    /// Names trash directories uniquely.
    trash_seq: AtomicU64,
}

/// What the cache holds, by hex digest.
#[derive(Default)]
struct Cache {
    entries: HashMap<String, Cached>,
    total: u64,
    /// A logical clock for least-recently-used order.
    tick: u64,
}

struct Cached {
    bytes: u64,
    last_used: u64,
    /// Leases held: containers mounting it, copies in progress.
    users: usize,
    /// No longer deployed: removed when the last user leaves.
    forgotten: bool,
}

/// A package in the cache, kept there (never evicted or removed) while the
/// lease lives: hold it as long as a container mounts the package.
pub struct PackageLease {
    inner: Arc<Inner>,
    hex: String,
    path: PathBuf,
}

impl PackageLease {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for PackageLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackageLease({})", self.path.display())
    }
}

impl Drop for PackageLease {
    fn drop(&mut self) {
        let remove = {
            let mut cache = self.inner.cache.lock().expect("poisoned");
            match cache.entries.get_mut(&self.hex) {
                Some(entry) => {
                    entry.users = entry.users.saturating_sub(1);
                    entry.users == 0 && entry.forgotten
                }
                None => false,
            }
        };
        if remove {
            self.inner.remove(&self.hex);
        }
    }
}

impl Packages {
    /// Opens the cache in `dir`, removing what an earlier run left
    /// unfinished. Blocking: called once, before the agent serves.
    pub fn new(
        dir: PathBuf,
        insecure_registries: Vec<String>,
        registry_roots: &[String],
        limits: CacheLimits,
        extractor: Extractor,
    ) -> std::io::Result<Packages> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        // Also for a cache made by an earlier version with other modes.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let mut cache = Cache::default();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if is_hex_digest(&name) && entry.file_type()?.is_dir() {
                let bytes = tree_bytes(&path);
                cache.total += bytes;
                cache.entries.insert(
                    name,
                    Cached {
                        bytes,
                        last_used: 0,
                        users: 0,
                        forgotten: false,
                    },
                );
            } else {
                // Unfinished downloads and extractions (`.partial`),
                // evictions interrupted half-way: never used again.
                warn!(path = %path.display(), "removing a leftover from the package cache");
                let _ = std::fs::remove_dir_all(&path);
                let _ = std::fs::remove_file(&path);
            }
        }
        info!(
            packages = cache.entries.len(),
            bytes = cache.total,
            "package cache opened"
        );
        let packages = Packages {
            inner: Arc::new(Inner {
                dir,
                client: oci_client::Client::new(ClientConfig {
                    protocol: ClientProtocol::HttpsExcept(insecure_registries),
                    extra_root_certificates: faas_driver::pem_roots(registry_roots),
                    ..Default::default()
                }),
                limits,
                extractor,
                locks: Mutex::new(HashMap::new()),
                cache: Mutex::new(cache),
                trash_seq: AtomicU64::new(0),
            }),
        };
        packages.inner.evict();
        Ok(packages)
    }

    /// The extracted package, fetching it first if needed; held in the
    /// cache while the lease lives.
    pub async fn ensure(
        &self,
        repository: &str,
        digest: &str,
        registry_token: Option<&str>,
    ) -> Result<PackageLease, PackageError> {
        let hex = hex_of(digest)?.to_string();
        if let Some(lease) = self.inner.lease(&hex) {
            return Ok(lease);
        }
        let lock = {
            let mut locks = self.inner.locks.lock().expect("poisoned");
            locks.entry(hex.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if let Some(lease) = self.inner.lease(&hex) {
            return Ok(lease);
        }
        let started = Instant::now();
        let bytes = self
            .fetch_and_extract(repository, digest, &hex, registry_token)
            .await;
        self.inner.locks.lock().expect("poisoned").remove(&hex);
        let bytes = bytes?;
        let lease = {
            let mut cache = self.inner.cache.lock().expect("poisoned");
            cache.tick += 1;
            let tick = cache.tick;
            cache.total += bytes;
            cache.entries.insert(
                hex.clone(),
                Cached {
                    bytes,
                    last_used: tick,
                    users: 1,
                    forgotten: false,
                },
            );
            PackageLease {
                inner: self.inner.clone(),
                path: self.inner.dir.join(&hex),
                hex,
            }
        };
        info!(%digest, bytes, ms = started.elapsed().as_millis() as u64, "package cached");
        self.inner.evict();
        Ok(lease)
    }

    /// The package is no longer deployed: removed now if no container uses
    /// it, else when the last one is gone. An invalid digest (from the
    /// control plane: not trusted either) is refused and logged.
    pub fn forget(&self, digest: &str) {
        let Ok(hex) = hex_of(digest) else {
            warn!(%digest, "refused to forget a package: not a sha256 digest");
            return;
        };
        let remove = {
            let mut cache = self.inner.cache.lock().expect("poisoned");
            match cache.entries.get_mut(hex) {
                Some(entry) if entry.users == 0 => true,
                Some(entry) => {
                    entry.forgotten = true;
                    false
                }
                None => false,
            }
        };
        if remove {
            info!(%digest, "package no longer deployed: removed from the cache");
            self.inner.remove(hex);
        }
    }

    /// Bytes the cache holds now.
    pub fn cached_bytes(&self) -> u64 {
        self.inner.cache.lock().expect("poisoned").total
    }

    async fn fetch_and_extract(
        &self,
        repository: &str,
        digest: &str,
        hex: &str,
        registry_token: Option<&str>,
    ) -> Result<u64, PackageError> {
        let inner = &self.inner;
        let limits = inner.limits;
        let io = |source| PackageError::Io {
            digest: digest.to_string(),
            source,
        };
        let reference: Reference = repository
            .parse()
            .map_err(|_| PackageError::BadReference(repository.to_string()))?;
        let blob_path = inner.dir.join(format!("{hex}.tgz.partial"));
        let fetched = async {
            let file = tokio::fs::File::create(&blob_path).await.map_err(io)?;
            let mut out = CappedWriter {
                inner: file,
                written: 0,
                limit: limits.max_blob_bytes,
            };
            if let Some(token) = registry_token {
                // Replaces the token oci-client holds for this repository:
                // the one the leader handed out with this operation.
                let auth = oci_client::secrets::RegistryAuth::Bearer(token.to_string());
                inner
                    .client
                    .auth(&reference, &auth, oci_client::RegistryOperation::Pull)
                    .await
                    .map_err(|source| PackageError::Fetch {
                        repository: repository.to_string(),
                        digest: digest.to_string(),
                        source,
                    })?;
            }
            let pulled = inner.client.pull_blob(&reference, digest, &mut out).await;
            if out.written > limits.max_blob_bytes {
                return Err(PackageError::Refused {
                    digest: digest.to_string(),
                    reason: Refusal::BlobTooLarge(limits.max_blob_bytes),
                });
            }
            pulled.map_err(|source| PackageError::Fetch {
                repository: repository.to_string(),
                digest: digest.to_string(),
                source,
            })?;
            out.inner.flush().await.map_err(io)?;
            Ok(())
        };
        let fetched = match tokio::time::timeout(limits.fetch_timeout, fetched).await {
            Ok(fetched) => fetched,
            Err(_) => Err(PackageError::FetchTimeout {
                digest: digest.to_string(),
                limit: limits.fetch_timeout,
            }),
        };
        if let Err(e) = fetched {
            let _ = tokio::fs::remove_file(&blob_path).await;
            return Err(e);
        }
        let extract_dir = inner.dir.join(format!("{hex}.partial"));
        let target = inner.dir.join(hex);
        // Decompression and file creation run in a child process inside the
        // extraction cgroup (see extract_jail.rs), killed at the deadline.
        let extracted = inner
            .extractor
            .extract(
                &blob_path,
                digest,
                &extract_dir,
                limits.shape,
                limits.extract_timeout,
            )
            .await;
        let expected = digest.to_string();
        tokio::task::spawn_blocking(move || {
            let result = extracted.and_then(|bytes| {
                std::fs::rename(&extract_dir, &target).map_err(|source| PackageError::Io {
                    digest: expected.clone(),
                    source,
                })?;
                Ok(bytes)
            });
            let _ = std::fs::remove_file(&blob_path);
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&extract_dir);
            }
            result
        })
        .await
        .map_err(|e| io(std::io::Error::other(e.to_string())))?
    }
}

impl Inner {
    /// A lease on a cached package, if it is cached.
    fn lease(self: &Arc<Self>, hex: &str) -> Option<PackageLease> {
        let mut cache = self.cache.lock().expect("poisoned");
        cache.tick += 1;
        let tick = cache.tick;
        let entry = cache.entries.get_mut(hex)?;
        entry.users += 1;
        entry.last_used = tick;
        // Deployed again (or still called) after all.
        entry.forgotten = false;
        Some(PackageLease {
            inner: self.clone(),
            hex: hex.to_string(),
            path: self.dir.join(hex),
        })
    }

    /// Evicts packages no one uses, least recently used first, until the
    /// cache fits its bound.
    fn evict(&self) {
        self.evict_to(self.limits.max_cache_bytes)
    }

    fn evict_to(&self, max_bytes: u64) {
        loop {
            let victim = {
                let cache = self.cache.lock().expect("poisoned");
                if cache.total <= max_bytes {
                    return;
                }
                cache
                    .entries
                    .iter()
                    .filter(|(_, e)| e.users == 0)
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(hex, _)| hex.clone())
            };
            match victim {
                Some(hex) => {
                    info!(package = %hex, "evicting a package from the cache (least recently used)");
                    self.remove(&hex);
                }
                None => {
                    warn!(
                        limit = max_bytes,
                        "package cache over its bound, every package in use"
                    );
                    return;
                }
            }
        }
    }

    /// Drops a package from the cache: renamed out of the way at once (a
    /// new fetch of it may start right after), deleted on a blocking
    /// thread. A deletion cut short leaves a `.partial` removed at start.
    fn remove(&self, hex: &str) {
        {
            let mut cache = self.cache.lock().expect("poisoned");
            let Some(entry) = cache.entries.remove(hex) else {
                return;
            };
            cache.total = cache.total.saturating_sub(entry.bytes);
        }
        let path = self.dir.join(hex);
        let seq = self.trash_seq.fetch_add(1, Ordering::Relaxed);
        let trash = self.dir.join(format!("{hex}.gone-{seq}.partial"));
        if let Err(e) = std::fs::rename(&path, &trash) {
            warn!(path = %path.display(), error = %e, "could not remove a cached package");
            return;
        }
        let delete = move || {
            if let Err(e) = std::fs::remove_dir_all(&trash) {
                warn!(path = %trash.display(), error = %e, "could not delete a removed package");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(delete)),
            Err(_) => delete(),
        }
    }
}

fn hex_of(digest: &str) -> Result<&str, PackageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| is_hex_digest(h))
        .ok_or_else(|| PackageError::BadReference(digest.to_string()))
}

fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Bytes of the regular files under `dir`, plus a block per entry (what a
/// package of many empty files costs the disk).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += ENTRY_OVERHEAD;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// What the cache counts for each file or directory beyond its content.
const ENTRY_OVERHEAD: u64 = 4096;

/// Checks the blob's digest, then extracts it into `dest` (created),
/// entry by entry: only regular files and directories, parents before
/// children, nothing that exists already, within `shape` and `deadline`.
/// Returns the bytes the package takes in the cache.
pub(crate) fn verify_and_extract(
    blob: &Path,
    expected: &str,
    dest: &Path,
    shape: &ShapeLimits,
    deadline: Instant,
    timeout: Duration,
) -> Result<u64, PackageError> {
    let io = |source| PackageError::Io {
        digest: expected.to_string(),
        source,
    };
    let refused = |reason| PackageError::Refused {
        digest: expected.to_string(),
        reason,
    };
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(blob).map_err(io)?, &mut hasher).map_err(io)?;
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != expected {
        return Err(PackageError::DigestMismatch {
            expected: expected.to_string(),
            actual,
        });
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(dest)
        .map_err(io)?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    let file = File::open(blob).map_err(io)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let mut total = 0u64;
    let mut count = 0usize;
    let mut cost = 0u64;
    let mut writeback = BoundedWriteback::new(WRITEBACK_WINDOW);
    for entry in archive.entries().map_err(io)? {
        if Instant::now() > deadline {
            return Err(refused(Refusal::Timeout(timeout)));
        }
        let mut entry = entry.map_err(io)?;
        let raw = entry.path_bytes().into_owned();
        let rel = check_path(&raw, shape).map_err(refused)?;
        count += 1;
        if count > shape.max_entries {
            return Err(refused(Refusal::TooManyEntries(shape.max_entries)));
        }
        cost += ENTRY_OVERHEAD;
        let path = dest.join(&rel);
        let shown = || rel.display().to_string();
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                // Not recursive: a missing parent or anything in the way
                // is an error, never implicitly created or replaced.
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .map_err(|_| refused(Refusal::Conflict(shown())))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .map_err(io)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
                let mode = if executable { 0o755 } else { 0o644 };
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|_| refused(Refusal::Conflict(shown())))?;
                let left = shape.max_unpacked_bytes - total;
                let n = writeback
                    .copy(&mut (&mut entry).take(left + 1), &mut out)
                    .map_err(io)?;
                if n > left {
                    return Err(refused(Refusal::TooLarge(shape.max_unpacked_bytes)));
                }
                total += n;
                cost += n;
                // The umask does not decide what containers may read.
                out.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(io)?;
            }
            _ => return Err(refused(Refusal::EntryKind(shown()))),
        }
    }
    Ok(cost)
}

/// Dirty bytes the extraction may leave to the kernel's writeback before it
/// writes them itself.
const WRITEBACK_WINDOW: u64 = 4 << 20;

/// Writes extracted files while keeping their dirty page cache under a
/// window. Why: the extraction runs in a memory cgroup smaller than many
/// packages, and under cgroup v1 reclaim cannot write dirty pages back; when
/// the disk lags, the cgroup fills with dirty pages and the extractor is
/// OOM-killed (seen in CI: 40 MiB under a 32 MiB limit). Written and
/// dropped window by window, the charge stays near the window whatever the
/// disk's speed. (No `sync_file_range`: this crate has no `unsafe`.)
struct BoundedWriteback {
    window: u64,
    /// Dirty bytes of files already closed.
    closed_dirty: u64,
    buf: Vec<u8>,
}

impl BoundedWriteback {
    fn new(window: u64) -> BoundedWriteback {
        BoundedWriteback {
            window,
            closed_dirty: 0,
            buf: vec![0; 256 << 10],
        }
    }

    /// Copies `from` to the end of the new file `out`; the bytes copied.
    fn copy(&mut self, from: &mut impl Read, out: &mut File) -> std::io::Result<u64> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let mut written = 0u64;
        let mut dirty = 0u64;
        loop {
            let n = match from.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            out.write_all(&self.buf[..n])?;
            written += n as u64;
            dirty += n as u64;
            if dirty >= self.window {
                out.sync_data()?;
                // Clean now; dropping them is advice, so its failure is not
                // the package's.
                let _ = nix::fcntl::posix_fadvise(
                    out.as_raw_fd(),
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                );
                dirty = 0;
            }
        }
        // Small files: their tails add up across files, so once they make
        // a window the whole file system's dirty data goes out (one call).
        self.closed_dirty += dirty;
        if self.closed_dirty >= self.window {
            nix::unistd::syncfs(out.as_raw_fd()).map_err(std::io::Error::from)?;
            self.closed_dirty = 0;
        }
        Ok(written)
    }
}

/// The shape rules of a path inside a package (the control plane's, see
/// controlplane/src/package.rs).
fn check_path(raw: &[u8], shape: &ShapeLimits) -> Result<PathBuf, Refusal> {
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    let text = std::str::from_utf8(raw).map_err(|_| Refusal::Path(lossy()))?;
    if text.chars().any(char::is_control) {
        return Err(Refusal::Path(lossy()));
    }
    let mut out = PathBuf::new();
    for comp in Path::new(text).components() {
        match comp {
            Component::Normal(part) => {
                if part.len() > shape.max_name_bytes {
                    return Err(Refusal::NameTooLong(lossy(), shape.max_name_bytes));
                }
                out.push(part);
            }
            Component::CurDir => {}
            _ => return Err(Refusal::Path(lossy())),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Refusal::Path(lossy()));
    }
    if out.as_os_str().len() > shape.max_path_bytes {
        return Err(Refusal::PathTooLong(lossy(), shape.max_path_bytes));
    }
    if out.components().count() > shape.max_depth {
        return Err(Refusal::TooDeep(lossy(), shape.max_depth));
    }
    Ok(out)
}

/// An `AsyncWrite` that refuses bytes past `limit` (a registry sending
/// more than any package may be).
struct CappedWriter<W> {
    inner: W,
    written: u64,
    limit: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CappedWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.written + buf.len() as u64 > self.limit {
            self.written += buf.len() as u64;
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "package download over its limit",
            )));
        }
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.written += n as u64;
        Poll::Ready(Ok(n))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SHAPE: ShapeLimits = ShapeLimits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 50,
        max_depth: 6,
        max_name_bytes: 40,
        max_path_bytes: 120,
    };

    /// A tar.gz written entry by entry (the registry is not trusted: these
    /// are archives the control plane would never have produced). `None`
    /// data: a directory.
    fn archive(entries: &[(&str, Option<&[u8]>, tar::EntryType)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let mut t = tar::Builder::new(gz);
        for (name, data, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o600);
            let data = data.unwrap_or(b"");
            h.set_size(data.len() as u64);
            if *kind == tar::EntryType::Symlink {
                t.append_link(&mut h, name, "/etc").unwrap();
            } else {
                t.append_data(&mut h, name, data).unwrap();
            }
        }
        t.into_inner().unwrap().finish().unwrap()
    }

    fn file(name: &str) -> (&str, Option<&'static [u8]>, tar::EntryType) {
        (name, Some(b"x = 1\n"), tar::EntryType::Regular)
    }

    fn dir(name: &str) -> (&str, Option<&'static [u8]>, tar::EntryType) {
        (name, None, tar::EntryType::Directory)
    }

    /// Extracts `blob` as the cache would; returns the result and the
    /// temporary directory.
    fn extract(blob: &[u8], timeout: Duration) -> (Result<u64, PackageError>, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("blob");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(blob)
            .unwrap();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(blob)));
        let dest = tmp.path().join("out");
        let r = verify_and_extract(
            &path,
            &digest,
            &dest,
            &SHAPE,
            Instant::now() + timeout,
            timeout,
        );
        (r, tmp)
    }

    #[test]
    fn bounded_writeback_keeps_every_byte_across_windows_and_files() {
        // A window far smaller than the files and than their sum: each path
        // (in-file flushes, the file-system flush at a close) is taken.
        let tmp = tempfile::tempdir().unwrap();
        let mut writeback = BoundedWriteback::new(10_000);
        let mut expected = Vec::new();
        for (i, len) in [0usize, 1, 9_999, 10_000, 123_457, 3_000, 3_000, 5_000]
            .into_iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
            let path = tmp.path().join(format!("f{i}"));
            let mut out = File::create(&path).unwrap();
            let n = writeback.copy(&mut data.as_slice(), &mut out).unwrap();
            assert_eq!(n, len as u64);
            expected.push((path, data));
        }
        for (path, data) in expected {
            assert_eq!(std::fs::read(&path).unwrap(), data, "{}", path.display());
        }
    }

    fn refusal(r: Result<u64, PackageError>) -> Refusal {
        match r {
            Err(PackageError::Refused { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn extracts_readable_by_any_uid_whatever_the_archive_says() {
        let blob = archive(&[dir("lib"), file("lib/a.py"), file("handler.py")]);
        let (r, tmp) = extract(&blob, Duration::from_secs(10));
        assert!(r.is_ok(), "{r:?}");
        let out = tmp.path().join("out");
        let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
        // The archive said 0600: containers run as other uids.
        assert_eq!(mode("handler.py"), 0o644);
        assert_eq!(mode("lib"), 0o755);
        assert_eq!(mode("lib/a.py"), 0o644);
    }

    #[test]
    fn refuses_what_the_control_plane_would_have_refused() {
        let timeout = Duration::from_secs(10);
        let deep = ["d"; 7].join("/");
        let deep_dirs: Vec<String> = (1..=7).map(|n| ["d"; 7][..n].join("/")).collect();
        let mut entries: Vec<_> = deep_dirs.iter().map(|d| dir(d)).collect();
        entries.push(file("x.py"));
        assert!(matches!(
            refusal(extract(&archive(&entries), timeout).0),
            Refusal::TooDeep(p, 6) if p == deep
        ));
        let long = "n".repeat(41);
        assert!(matches!(
            refusal(extract(&archive(&[file(&long)]), timeout).0),
            Refusal::NameTooLong(..)
        ));
        let long_path = vec!["p".repeat(40); 4].join("/");
        assert!(matches!(
            refusal(extract(&archive(&[file(&long_path)]), timeout).0),
            Refusal::PathTooLong(..)
        ));
        // A file beside a directory of the same name, either order.
        assert!(matches!(
            refusal(extract(&archive(&[file("a"), dir("a")]), timeout).0),
            Refusal::Conflict(_)
        ));
        assert!(matches!(
            refusal(extract(&archive(&[dir("a"), file("a")]), timeout).0),
            Refusal::Conflict(_)
        ));
        // A child before its parent: never created implicitly.
        assert!(matches!(
            refusal(extract(&archive(&[file("a/b")]), timeout).0),
            Refusal::Conflict(_)
        ));
        assert!(matches!(
            refusal(extract(&archive(&[file("a"), file("a")]), timeout).0),
            Refusal::Conflict(_)
        ));
        assert!(matches!(
            refusal(extract(&archive(&[("l", None, tar::EntryType::Symlink)]), timeout).0),
            Refusal::EntryKind(_)
        ));
        assert!(matches!(
            refusal(extract(&archive(&[("f", None, tar::EntryType::Fifo)]), timeout).0),
            Refusal::EntryKind(_)
        ));
        let names: Vec<String> = (0..51).map(|i| format!("f{i}")).collect();
        let many: Vec<_> = names.iter().map(|n| file(n)).collect();
        assert!(matches!(
            refusal(extract(&archive(&many), timeout).0),
            Refusal::TooManyEntries(50)
        ));
        let big = vec![0u8; (1 << 20) + 1];
        assert!(matches!(
            refusal(
                extract(
                    &archive(&[("big", Some(&big[..]), tar::EntryType::Regular)]),
                    timeout
                )
                .0
            ),
            Refusal::TooLarge(_)
        ));
    }

    #[test]
    fn extraction_is_bounded_in_time() {
        let names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        let entries: Vec<_> = names.iter().map(|n| file(n)).collect();
        let (r, _tmp) = extract(&archive(&entries), Duration::ZERO);
        assert_eq!(refusal(r), Refusal::Timeout(Duration::ZERO));
    }

    #[test]
    fn a_wrong_digest_is_refused_before_extraction() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("blob");
        std::fs::write(&path, archive(&[file("a.py")])).unwrap();
        let r = verify_and_extract(
            &path,
            &format!("sha256:{}", "0".repeat(64)),
            &tmp.path().join("out"),
            &SHAPE,
            Instant::now() + Duration::from_secs(5),
            Duration::from_secs(5),
        );
        assert!(matches!(r, Err(PackageError::DigestMismatch { .. })));
        assert!(!tmp.path().join("out").exists());
    }

    /// A cache with `packages` already extracted (hex name → bytes of one
    /// file), as an earlier run would have left it.
    fn cache_with(
        max_cache_bytes: u64,
        packages: &[(&str, usize)],
    ) -> (Packages, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("packages");
        std::fs::create_dir(&dir).unwrap();
        for (hex, size) in packages {
            std::fs::create_dir(dir.join(hex)).unwrap();
            std::fs::write(dir.join(hex).join("f"), vec![0u8; *size]).unwrap();
        }
        let limits = CacheLimits {
            max_cache_bytes,
            ..CacheLimits::default()
        };
        (
            Packages::new(dir, vec![], &[], limits, Extractor::unconfined()).unwrap(),
            tmp,
        )
    }

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn leftovers_are_removed_and_the_cache_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("packages");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.join(format!("{}.partial/deep/er", hex('a')))).unwrap();
        std::fs::write(dir.join(format!("{}.tgz.partial", hex('a'))), b"x").unwrap();
        std::fs::create_dir(dir.join(hex('b'))).unwrap();
        let packages = Packages::new(
            dir.clone(),
            vec![],
            &[],
            CacheLimits::default(),
            Extractor::unconfined(),
        )
        .unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![hex('b')]);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(packages.cached_bytes(), 0);
    }

    #[tokio::test]
    async fn least_recently_used_packages_not_in_use_are_evicted() {
        let (a, b, c) = (hex('a'), hex('b'), hex('c'));
        let (packages, tmp) = cache_with(1 << 30, &[(&a, 10_000), (&b, 10_000), (&c, 10_000)]);
        let dir = tmp.path().join("packages");
        // Used in the order a, b, c, b; a stays in use.
        let lease_a = packages.inner.lease(&a).unwrap();
        drop(packages.inner.lease(&b).unwrap());
        drop(packages.inner.lease(&c).unwrap());
        drop(packages.inner.lease(&b).unwrap());
        // Room for two packages: `a` is the least recently used but in
        // use, so `c` goes, not `b`.
        packages.inner.evict_to(30_000);
        let kept = |h: &str| packages.inner.cache.lock().unwrap().entries.contains_key(h);
        assert!(kept(&a) && kept(&b) && !kept(&c));
        assert!(dir.join(&a).join("f").exists());
        assert!(!dir.join(&c).exists());
        assert!(packages.cached_bytes() <= 30_000);
        // Room for none: what is in use stays.
        packages.inner.evict_to(0);
        assert!(kept(&a) && !kept(&b));
        drop(lease_a);
        packages.inner.evict_to(0);
        assert_eq!(packages.cached_bytes(), 0);
    }

    #[tokio::test]
    async fn a_forgotten_package_goes_when_its_last_user_does() {
        let (a, b) = (hex('a'), hex('b'));
        let (packages, tmp) = cache_with(1 << 30, &[(&a, 100), (&b, 100)]);
        let dir = tmp.path().join("packages");
        let lease = packages.inner.lease(&a).unwrap();
        packages.forget(&format!("sha256:{a}"));
        assert!(dir.join(&a).join("f").exists(), "in use: kept");
        drop(lease);
        assert!(!dir.join(&a).exists());
        packages.forget(&format!("sha256:{b}"));
        assert!(!dir.join(&b).exists());
        // Nothing of the control plane's is trusted as a path.
        packages.forget("sha256:../../etc");
        packages.forget(&format!("sha256:{}", "A".repeat(64)));
        assert_eq!(packages.cached_bytes(), 0);
    }
}
