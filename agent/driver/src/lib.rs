//! Drives containerd 1.6 over its gRPC API (never through `ctr` or a shell):
//! pulls and unpacks images client-side, runs one-call containers, tears them
//! down and cleans up after an earlier run of the agent.
//!
//! The sequences follow `notes/containerd.md`: every snapshot is prepared
//! under a lease (otherwise containerd's GC can remove it before the container
//! that uses it exists), tasks get their rootfs mounts explicitly (1.6 does not
//! fill them in), and the exit is subscribed to before the task starts.
//!
//! Containers run as the uid/gid their [`ContainerSpec`] names (the agent
//! gives each container its own, from a pool), with no capabilities and a
//! read-only root: host directories bind-mounted read-write must be owned by
//! (or writable for) that uid. The agent chowns the per-call files it creates.

mod container;
mod error;
mod image;
mod spec;
mod timed;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{CreateRequest as LeaseCreateRequest, DeleteRequest};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::Request;

pub use container::{CleanupReport, ExitStatus, ExitWaiter, Inventory};
pub use error::DriverError;
use timed::TimedChannel;
pub use timed::{observe_requests, RequestObserver};

/// Prefix of the leases that protect a container's snapshot: `faas-<id>`.
const CONTAINER_LEASE_PREFIX: &str = "faas-";
/// Longest container id accepted: containerd caps identifiers at 76
/// characters and the lease id adds a prefix.
const MAX_ID_LEN: usize = 64;

/// How to reach containerd and which of its resources belong to this agent.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// containerd namespace owned by this agent (everything in it may be deleted).
    pub namespace: String,
    /// Snapshotter for image layers and container roots.
    pub snapshotter: String,
    /// containerd runtime (shim) name.
    pub runtime: String,
    /// The OCI runtime binary the runc shim drives (`runc`, `crun`, a path);
    /// `None` leaves the shim's default, `runc`.
    pub oci_runtime: Option<String>,
    /// Registries (`host:port`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// CAs (PEM) trusted for registries' TLS beside the system's roots:
    /// the registry's own CA, which nodes receive when they join.
    pub registry_roots: Vec<String>,
}

/// PEM CAs as oci-client takes them.
pub fn pem_roots(pems: &[String]) -> Vec<oci_client::client::Certificate> {
    pems.iter()
        .map(|pem| oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Pem,
            data: pem.as_bytes().to_vec(),
        })
        .collect()
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "faas".into(),
            snapshotter: "overlayfs".into(),
            runtime: "io.containerd.runc.v2".into(),
            oci_runtime: None,
            insecure_registries: Vec::new(),
            registry_roots: Vec::new(),
        }
    }
}

/// What a container needs to know about an unpacked image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The normalized reference, also the name of containerd's image record.
    pub reference: String,
    /// Digest of the image manifest (the platform-specific one).
    pub manifest_digest: String,
    /// Chain id of the top layer: the parent of container snapshots.
    pub chain_id: String,
    /// The image config's `Env`.
    pub env: Vec<String>,
    /// The image config's `WorkingDir`, if set.
    pub working_dir: Option<String>,
}

/// A host path bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path (a file or a directory); must exist.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    pub readonly: bool,
}

/// Resource bounds of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Memory (and memory+swap) limit; 0 = no limit.
    pub memory_bytes: u64,
    /// CPU quota in thousandths of a CPU (CFS quota over a 100 ms period); 0 = none.
    pub cpu_millis: u32,
    /// Maximum number of processes/threads; 0 = no limit.
    pub pids: u32,
    /// Size of the `/tmp` tmpfs; 0 = [`DEFAULT_TMP_BYTES`].
    pub tmp_bytes: u64,
}

/// `/tmp` size when [`Limits::tmp_bytes`] is 0.
pub const DEFAULT_TMP_BYTES: u64 = 64 << 20;

/// Everything needed to create one container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// `[a-zA-Z0-9_.-]`, starting and ending with an alphanumeric; also the
    /// snapshot key and the basis of the lease id.
    pub id: String,
    pub image: ImageInfo,
    pub args: Vec<String>,
    /// Appended to the image's env.
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    pub mounts: Vec<BindMount>,
    /// Host path given to the shim as both stdout and stderr: a FIFO (its
    /// reader must be open and keep reading), an existing regular file
    /// (appended to), or a path that does not exist yet (the shim creates a
    /// regular file).
    pub stdio_path: PathBuf,
    pub limits: Limits,
    /// Host uid and gid of every process of the container (no user
    /// namespace), also the owner of its `/tmp`. Not 0.
    pub uid: u32,
    pub gid: u32,
    /// A network namespace prepared for the container (a bind-mounted
    /// namespace file, e.g. `/run/netns/faas-<id>`); None: a new, empty
    /// one with only loopback.
    pub network_namespace: Option<PathBuf>,
}

/// A cheap, cloneable handle on containerd (wraps one tonic channel).
#[derive(Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: DriverConfig,
    channel: TimedChannel,
    namespace_header: MetadataValue<Ascii>,
    registry: oci_client::Client,
    /// One mutex per image reference: concurrent `ensure_image` calls for the
    /// same reference wait for the first instead of pulling twice.
    image_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Images known to be unpacked, by normalized reference.
    images: Mutex<HashMap<String, ImageInfo>>,
}

impl Driver {
    /// Connects to containerd and checks that it answers.
    pub async fn connect(cfg: DriverConfig) -> Result<Driver, DriverError> {
        validate_identifier("namespace", &cfg.namespace)?;
        let namespace_header = MetadataValue::try_from(cfg.namespace.as_str())
            .map_err(|e| DriverError::invalid("namespace", e.to_string()))?;
        let channel = containerd_client::connect(&cfg.socket)
            .await
            .map_err(|source| DriverError::Connect {
                socket: cfg.socket.display().to_string(),
                source,
            })?;
        let version = VersionClient::new(channel.clone())
            .version(())
            .await
            .map_err(|s| DriverError::rpc("Version", cfg.socket.display().to_string(), s))?
            .into_inner();
        tracing::info!(
            socket = %cfg.socket.display(),
            namespace = %cfg.namespace,
            containerd = %version.version,
            "connected to containerd"
        );
        let registry = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(
                cfg.insecure_registries.clone(),
            ),
            extra_root_certificates: pem_roots(&cfg.registry_roots),
            ..Default::default()
        });
        Ok(Driver {
            inner: Arc::new(Inner {
                cfg,
                channel: TimedChannel::new(channel),
                namespace_header,
                registry,
                image_locks: Mutex::new(HashMap::new()),
                images: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration this driver was connected with.
    pub fn config(&self) -> &DriverConfig {
        &self.inner.cfg
    }

    fn channel(&self) -> TimedChannel {
        self.inner.channel.clone()
    }

    /// A request in our namespace.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("containerd-namespace", self.inner.namespace_header.clone());
        request
    }

    /// A request in our namespace whose new resources are held by `lease`.
    fn leased<T>(&self, message: T, lease: &str) -> Result<Request<T>, DriverError> {
        let mut request = self.request(message);
        let value = MetadataValue::try_from(lease)
            .map_err(|e| DriverError::invalid("lease id", format!("{lease:?}: {e}")))?;
        request.metadata_mut().insert("containerd-lease", value);
        Ok(request)
    }

    /// Creates a lease that containerd's GC drops by itself after `expire`
    /// (a safety net in case this process dies before deleting it).
    async fn create_lease(&self, id: &str, expire: Duration) -> Result<(), DriverError> {
        let expire_at = humantime::format_rfc3339_seconds(SystemTime::now() + expire).to_string();
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire_at)]);
        LeasesClient::new(self.channel())
            .create(self.request(LeaseCreateRequest {
                id: id.to_string(),
                labels,
            }))
            .await
            .map_err(|s| DriverError::rpc("Leases.Create", id, s))?;
        Ok(())
    }

    async fn delete_lease(&self, id: &str) -> Result<(), DriverError> {
        // sync = false: the GC runs in the background, off the caller's path.
        LeasesClient::new(self.channel())
            .delete(self.request(DeleteRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await
            .map_err(|s| DriverError::rpc("Leases.Delete", id, s))?;
        Ok(())
    }
}

/// containerd's identifier rule (namespaces, container ids, lease ids, ...):
/// alphanumeric runs separated by single `.`, `_` or `-`.
fn validate_identifier(what: &'static str, s: &str) -> Result<(), DriverError> {
    let ok_chars = s
        .split(['.', '_', '-'])
        .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()));
    if s.is_empty() || s.len() > MAX_ID_LEN || !ok_chars {
        return Err(DriverError::invalid(
            what,
            format!(
                "{s:?}: expected 1..={MAX_ID_LEN} characters, alphanumeric runs separated by single '.', '_' or '-'"
            ),
        ));
    }
    Ok(())
}

fn container_lease(id: &str) -> String {
    format!("{CONTAINER_LEASE_PREFIX}{id}")
}

fn timestamp_to_system_time(ts: &prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["faas", "a", "call-1.x_y", "A9"] {
            assert!(validate_identifier("id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_identifier("id", bad).is_err(), "{bad}");
        }
    }
}
