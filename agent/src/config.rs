//! Configuration: flags (and env) over the `--config` TOML file over the
//! documented defaults.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, clap::Parser)]
#[command(
    name = "faas-agent",
    version = faas_proto::VERSION,
    about = "The faas node agent: runs spot operations through containerd"
)]
pub struct Flags {
    /// TOML file with any of the settings below (keys: long flag names with underscores).
    #[arg(long, env = "FAAS_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Control-plane endpoints (https URLs), comma-separated; the agent uses the first that
    /// accepts it [default: https://127.0.0.1:7070].
    #[arg(long, env = "FAAS_CONTROL_PLANE", value_delimiter = ',')]
    pub control_plane: Option<Vec<String>>,
    /// This node's name, unique in the cluster [default: the hostname].
    #[arg(long, env = "FAAS_NODE")]
    pub node: Option<String>,
    /// A join token (`faasctl node token create`), used once: the node's
    /// certificate is then kept in <state-dir>/pki [default: none; the
    /// agent must have joined before].
    #[arg(long = "join", env = "FAAS_JOIN_TOKEN")]
    pub join_token: Option<String>,
    /// The cluster CA's fingerprint (sha256:<hex>), pinned while joining
    /// [default: none; required with --join].
    #[arg(long, env = "FAAS_CA_HASH")]
    pub ca_hash: Option<String>,
    /// Number of spots (containers run at once) [default: 4].
    #[arg(long, env = "FAAS_SPOTS")]
    pub spots: Option<u32>,
    /// containerd's socket [default: /run/containerd/containerd.sock].
    #[arg(long, env = "FAAS_CONTAINERD")]
    pub containerd: Option<PathBuf>,
    /// containerd namespace owned by this agent; everything in it is deleted at start [default: faas].
    #[arg(long, env = "FAAS_NAMESPACE")]
    pub namespace: Option<String>,
    /// Directory for package caches and per-call files [default: /var/lib/faas/agent].
    #[arg(long, env = "FAAS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The static faas-init binary mounted into containers [default: faas-init next to this executable].
    #[arg(long, env = "FAAS_INIT_BINARY")]
    pub init_binary: Option<PathBuf>,
    /// Registries (host:port) spoken to over plain HTTP; repeatable [default: none].
    #[arg(
        long = "insecure-registry",
        env = "FAAS_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Option<Vec<String>>,
    /// A CA (PEM file) to trust for the registry's TLS, instead of the one
    /// the control plane hands over at join [default: the control plane's].
    #[arg(long, env = "FAAS_REGISTRY_CA")]
    pub registry_ca: Option<PathBuf>,
    /// Logs kept per call, bytes; the rest is cut with a marker [default: 65536].
    #[arg(long)]
    pub max_log_bytes: Option<u64>,
    /// Largest result a function may return, bytes [default: 6291456, Lambda's 6 MiB].
    #[arg(long)]
    pub max_result_bytes: Option<u64>,
    /// Memory limit of a runtime-preloaded container until its function is known, bytes
    /// (changed to the function's own limit when the call arrives) [default: 256 MiB].
    #[arg(long)]
    pub preload_memory_bytes: Option<u64>,
    /// Max processes per container [default: 256].
    #[arg(long)]
    pub pids_limit: Option<u32>,
    /// CPU per container, thousandths of a CPU; 0 = unlimited [default: 1000].
    #[arg(long)]
    pub cpu_millis: Option<u32>,
    /// OCI runtime binary containerd's runc shim runs for each container: `runc`, `crun`
    /// or a path. crun creates and deletes a container in a fraction of runc's CPU
    /// (docs/benchmarks.md) [default: runc].
    #[arg(long, env = "FAAS_OCI_RUNTIME")]
    pub oci_runtime: Option<String>,
    /// containerd runtime (shim) for containers: `io.containerd.runc.v2` (containerd's Go
    /// shim) or `io.containerd.faas.v1` (faas's own, `containerd-shim-faas-v1`, which must be
    /// on containerd's PATH; a fraction of the Go shim's CPU per container)
    /// [default: io.containerd.runc.v2].
    #[arg(long, env = "FAAS_CONTAINERD_RUNTIME")]
    pub containerd_runtime: Option<String>,
    /// First host uid of the pool containers run as: each container gets a uid (and the
    /// same gid) of its own from `uid_base .. uid_base + uid_count`, a range no host
    /// account may use [default: 200000].
    #[arg(long)]
    pub uid_base: Option<u32>,
    /// Number of uids in the pool; at least twice the spots [default: 65536].
    #[arg(long)]
    pub uid_count: Option<u32>,
    /// CPU a preloaded container may use between being ready and its call, ms of CPU
    /// time; over it the preload is destroyed and the spot reported free. 0 = no bound
    /// [default: 1000].
    #[arg(long)]
    pub preload_cpu_budget_ms: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, no
    /// authentication: keep it on loopback or a scrape network)
    /// [default: off].
    #[arg(long, env = "FAAS_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Export call traces over OTLP/gRPC to the collector at
    /// http://HOST:PORT (plain gRPC: a collector on this machine or a
    /// private network): one trace per call across control plane and
    /// agents (docs/tracing.md) [default: off].
    #[arg(long, env = "FAAS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    control_plane: Option<Vec<String>>,
    node: Option<String>,
    join_token: Option<String>,
    ca_hash: Option<String>,
    spots: Option<u32>,
    containerd: Option<PathBuf>,
    namespace: Option<String>,
    state_dir: Option<PathBuf>,
    init_binary: Option<PathBuf>,
    insecure_registries: Option<Vec<String>>,
    registry_ca: Option<PathBuf>,
    max_log_bytes: Option<u64>,
    max_result_bytes: Option<u64>,
    preload_memory_bytes: Option<u64>,
    pids_limit: Option<u32>,
    cpu_millis: Option<u32>,
    oci_runtime: Option<String>,
    containerd_runtime: Option<String>,
    /// Package cache bounds (`[packages]` table, see packages.rs).
    #[serde(default)]
    packages: crate::packages::CacheSettings,
    uid_base: Option<u32>,
    uid_count: Option<u32>,
    preload_cpu_budget_ms: Option<u64>,
    metrics_listen: Option<std::net::SocketAddr>,
    otlp_endpoint: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub control_plane: Vec<String>,
    pub node: String,
    pub join_token: Option<String>,
    pub ca_hash: Option<String>,
    pub spots: u32,
    pub containerd: PathBuf,
    pub namespace: String,
    pub state_dir: PathBuf,
    pub init_binary: PathBuf,
    pub insecure_registries: Vec<String>,
    pub registry_ca: Option<PathBuf>,
    pub max_log_bytes: u64,
    pub max_result_bytes: u64,
    /// Largest input (call params and envelope) the io tmpfs must hold.
    pub max_input_bytes: u64,
    pub preload_memory_bytes: u64,
    pub pids_limit: u32,
    pub cpu_millis: u32,
    pub oci_runtime: String,
    pub containerd_runtime: String,
    pub packages: crate::packages::CacheLimits,
    pub uid_base: u32,
    pub uid_count: u32,
    /// CPU a preload may use after it is ready and before its call.
    pub preload_cpu_budget: std::time::Duration,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub otlp_endpoint: Option<String>,
}

impl Config {
    /// Size of a container's `/faas/io` tmpfs: room for the input, the
    /// result, the error report and the logs, with a margin.
    pub fn io_tmpfs_bytes(&self) -> u64 {
        (2 << 20) + 2 * self.max_result_bytes + self.max_log_bytes + self.max_input_bytes
    }

    pub fn resolve(flags: Flags) -> anyhow::Result<Config> {
        let file: FileConfig = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let init_binary = match flags.init_binary.or(file.init_binary) {
            Some(p) => p,
            None => std::env::current_exe()?
                .parent()
                .map(|d| d.join("faas-init"))
                .ok_or_else(|| anyhow::anyhow!("cannot locate faas-init; pass --init-binary"))?,
        };
        if !init_binary.is_file() {
            anyhow::bail!(
                "faas-init not found at {} (build it with agent/init/build.sh, or pass --init-binary)",
                init_binary.display()
            );
        }
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "node".into());
        let spots = flags.spots.or(file.spots).unwrap_or(4);
        if spots == 0 || spots > 1024 {
            anyhow::bail!("--spots must be between 1 and 1024");
        }
        let uid_base = flags.uid_base.or(file.uid_base).unwrap_or(200_000);
        let uid_count = flags.uid_count.or(file.uid_count).unwrap_or(65_536);
        check_uid_pool(uid_base, uid_count, spots)?;
        Ok(Config {
            control_plane: flags
                .control_plane
                .or(file.control_plane)
                .unwrap_or_else(|| vec!["https://127.0.0.1:7070".into()]),
            node: flags.node.or(file.node).unwrap_or(hostname),
            join_token: flags.join_token.or(file.join_token),
            ca_hash: flags.ca_hash.or(file.ca_hash),
            spots,
            containerd: flags
                .containerd
                .or(file.containerd)
                .unwrap_or_else(|| "/run/containerd/containerd.sock".into()),
            namespace: flags
                .namespace
                .or(file.namespace)
                .unwrap_or_else(|| "faas".into()),
            state_dir: flags
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| "/var/lib/faas/agent".into()),
            init_binary: std::fs::canonicalize(&init_binary)?,
            insecure_registries: flags
                .insecure_registries
                .or(file.insecure_registries)
                .unwrap_or_default(),
            registry_ca: flags.registry_ca.or(file.registry_ca),
            max_log_bytes: flags
                .max_log_bytes
                .or(file.max_log_bytes)
                .unwrap_or(64 << 10),
            max_result_bytes: flags
                .max_result_bytes
                .or(file.max_result_bytes)
                .unwrap_or(6 << 20),
            max_input_bytes: 1 << 20,
            preload_memory_bytes: flags
                .preload_memory_bytes
                .or(file.preload_memory_bytes)
                .unwrap_or(256 << 20),
            pids_limit: flags.pids_limit.or(file.pids_limit).unwrap_or(256),
            cpu_millis: flags.cpu_millis.or(file.cpu_millis).unwrap_or(1000),
            oci_runtime: flags
                .oci_runtime
                .or(file.oci_runtime)
                .unwrap_or_else(|| "runc".into()),
            containerd_runtime: flags
                .containerd_runtime
                .or(file.containerd_runtime)
                .unwrap_or_else(|| "io.containerd.runc.v2".into()),
            packages: file.packages.limits()?,
            uid_base,
            uid_count,
            preload_cpu_budget: std::time::Duration::from_millis(
                flags
                    .preload_cpu_budget_ms
                    .or(file.preload_cpu_budget_ms)
                    .unwrap_or(1000),
            ),
            metrics_listen: flags.metrics_listen.or(file.metrics_listen),
            otlp_endpoint: flags
                .otlp_endpoint
                .or(file.otlp_endpoint)
                .filter(|e| !e.is_empty()),
        })
    }
}

/// The uid pool holds neither root nor the overflow ids (65534, and the
/// 16-bit and 32-bit -1), fits in a uid_t, and has room for every spot
/// while tear-downs still hold their uids.
fn check_uid_pool(base: u32, count: u32, spots: u32) -> anyhow::Result<()> {
    let end = base
        .checked_add(count)
        .filter(|end| *end < u32::MAX)
        .ok_or_else(|| anyhow::anyhow!("--uid-base + --uid-count must stay below 2^32 - 1"))?;
    if base < 1000 {
        anyhow::bail!("--uid-base must be at least 1000 (below are system accounts)");
    }
    if (base..end).contains(&65534) || (base..end).contains(&65535) {
        anyhow::bail!("the uid pool must not hold 65534 (nobody) or 65535");
    }
    if count < 2 * spots {
        anyhow::bail!("--uid-count must be at least twice --spots");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_pools_are_checked() {
        assert!(check_uid_pool(200_000, 65_536, 4).is_ok());
        assert!(check_uid_pool(0, 10, 1).is_err());
        assert!(check_uid_pool(65_000, 1_000, 1).is_err());
        assert!(check_uid_pool(u32::MAX - 10, 20, 1).is_err());
        assert!(check_uid_pool(200_000, 7, 4).is_err());
    }
}
