//! Configuration: command-line flags (and their environment variables) take
//! precedence over the TOML file given with `--config`, which takes
//! precedence over the documented defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, clap::Parser)]
#[command(
    name = "faas-controlplane",
    version = faas_proto::VERSION,
    about = "The faas control plane: public API, etcd state, registry, broker"
)]
pub struct Flags {
    /// TOML file with any of the settings below (keys: the long flag names with underscores).
    #[arg(long, env = "FAAS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address for the public API and the agent streams [default: 127.0.0.1:7070].
    #[arg(long, env = "FAAS_LISTEN")]
    pub listen: Option<String>,
    /// URL other replicas use to reach this one (it forwards to the leader
    /// what only the leader can do) [default: https://<listen>].
    #[arg(long, env = "FAAS_ADVERTISE")]
    pub advertise: Option<String>,
    /// etcd endpoints, comma-separated; https:// ones need --etcd-ca;
    /// unix://PATH is a local member's socket (etcd's
    /// `--listen-client-urls unix://…`), plain gRPC guarded by its
    /// directory's permissions; list it first, it is tried first
    /// [default: http://127.0.0.1:2379].
    #[arg(long, env = "FAAS_ETCD", value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// CA certificate (PEM) that etcd's members' certificates chain to
    /// (`faas-controlplane etcd-certs` makes one) [default: none].
    #[arg(long, env = "FAAS_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) this replica shows etcd, for etcd's
    /// --client-cert-auth [default: none].
    #[arg(long, env = "FAAS_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Key (PEM) of --etcd-cert [default: none].
    #[arg(long, env = "FAAS_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// The OCI registry, host:port [default: 127.0.0.1:5000].
    #[arg(long, env = "FAAS_REGISTRY")]
    pub registry: Option<String>,
    /// Speak plain HTTP to the registry [default: true for loopback
    /// addresses when no registry CA is known].
    #[arg(long, env = "FAAS_REGISTRY_INSECURE")]
    pub registry_insecure: Option<bool>,
    /// The CA (PEM file) that signs the registry's TLS certificate: trusted
    /// here and handed to joining nodes [default: tls-ca.crt of
    /// --registry-token-dir when it is there, as `faas-controlplane
    /// registry-certs --san` makes it].
    #[arg(long, env = "FAAS_REGISTRY_CA")]
    pub registry_ca: Option<PathBuf>,
    /// Directory with the key that signs registry tokens
    /// (`faas-controlplane registry-certs` makes it): given, every request
    /// to the registry carries a token, and nodes get pull-only tokens for
    /// what they are handed [default: none, anonymous registry].
    #[arg(long, env = "FAAS_REGISTRY_TOKEN_DIR")]
    pub registry_token_dir: Option<PathBuf>,
    /// The key-encryption key of secrets (64 hex digits, mode 0600;
    /// `faas-controlplane secrets-key --file F` makes one). Every replica
    /// needs the same one [default: none: the cluster keeps no secrets].
    #[arg(long, env = "FAAS_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// This replica's name in the leader election [default: <hostname>-<pid>].
    #[arg(long, env = "FAAS_NAME")]
    pub name: Option<String>,
    /// Broker policy: no-preload, preload-runtime, preload-function or adaptive [default: adaptive].
    #[arg(long, env = "FAAS_POLICY")]
    pub policy: Option<String>,
    /// Window policies: how far back calls count (the thesis's N) [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub policy_window: Option<Duration>,
    /// Window policies: how often targets are recomputed (the thesis's M) [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub policy_recompute: Option<Duration>,
    /// Adaptive policy: time constant of its call-rate averages [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub policy_rate_time_constant: Option<Duration>,
    /// Finished calls older than this are deleted [default: 7d].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub call_retention: Option<Duration>,
    /// At most this many calls are kept; the oldest finished ones go first [default: 100000].
    #[arg(long)]
    pub call_retention_count: Option<u64>,
    /// How often the retention sweep runs [default: 1m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub call_retention_every: Option<Duration>,
    /// etcd key prefix [default: /faas/v1].
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Largest function package accepted, bytes [default: 64 MiB].
    #[arg(long)]
    pub max_package_bytes: Option<u64>,
    /// Largest image archive accepted, bytes [default: 2 GiB].
    #[arg(long)]
    pub max_image_bytes: Option<u64>,
    /// Largest call parameters accepted, bytes [default: 256 KiB].
    #[arg(long)]
    pub max_params_bytes: Option<u64>,
    /// Largest call result accepted for recording, bytes; a larger one ends
    /// the call FAILED (reason "platform"). Results over 1 MiB are stored
    /// in 1 MiB parts, one etcd request each [default: 6 MiB, Lambda's].
    #[arg(long)]
    pub max_result_bytes: Option<u64>,
    /// Most log bytes kept per call (the end is kept) [default: 64 KiB].
    #[arg(long)]
    pub max_log_bytes: Option<u64>,
    /// Largest total size of a function's environment (names and values),
    /// bytes [default: 64 KiB].
    #[arg(long)]
    pub max_env_bytes: Option<u64>,
    /// Versions kept per function (every deploy or configuration update
    /// makes one); older ones are deleted, except those an alias names
    /// [default: 16].
    #[arg(long)]
    pub max_function_versions: Option<u64>,
    /// Calls that may wait queued per function; over it submits are
    /// refused (RESOURCE_EXHAUSTED) [default: 1000].
    #[arg(long)]
    pub max_queued_per_function: Option<u64>,
    /// Calls that may wait queued in the whole cluster [default: 10000].
    #[arg(long)]
    pub max_queued_calls: Option<u64>,
    /// Params bytes all queued calls may hold together (the leader keeps
    /// them in memory until the calls run) [default: 256 MiB].
    #[arg(long)]
    pub max_queued_bytes: Option<u64>,
    /// Submits (and invokes) per second one client address may sustain
    /// [default: 200].
    #[arg(long)]
    pub submit_rate: Option<f64>,
    /// Submits one client address may send in a burst [default: 400].
    #[arg(long)]
    pub submit_burst: Option<f64>,
    /// Default per-call timeout [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub default_timeout: Option<Duration>,
    /// Largest per-call timeout a function may ask for [default: 15m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_timeout: Option<Duration>,
    /// Default per-call memory limit, bytes [default: 256 MiB].
    #[arg(long)]
    pub default_memory_bytes: Option<u64>,
    /// Largest per-call memory limit a function may ask for, bytes [default: 4 GiB].
    #[arg(long)]
    pub max_memory_bytes: Option<u64>,
    /// Largest /tmp a function may ask for, bytes (Lambda's ephemeral
    /// storage; memory-backed, added to the call's memory limit past the
    /// default 64 MiB) [default: 512 MiB].
    #[arg(long)]
    pub max_tmp_bytes: Option<u64>,
    /// TTL of the leader's etcd lease, seconds [default: 5].
    #[arg(long)]
    pub leader_ttl_secs: Option<i64>,
    /// How long a node may be away before the calls it was running are
    /// declared lost (or, for idempotent functions, run again) [default: 3s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub node_lost_after: Option<Duration>,
    /// How many times a call of an idempotent function lost with its node
    /// is run again elsewhere [default: 2].
    #[arg(long)]
    pub idempotent_retries: Option<u32>,
    /// How long past its function's timeout a running call may go without
    /// an outcome from its agent before it is recorded TIMEOUT (the agent's
    /// own kill grace is 5 s) [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub call_deadline_grace: Option<Duration>,
    /// Added to that deadline when the call's spot must first load its
    /// runtime or function (image pull, package fetch) [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub call_load_allowance: Option<Duration>,
    /// More names (DNS names or IP addresses) for this replica's TLS
    /// certificate, comma-separated; always in it: localhost, 127.0.0.1,
    /// ::1, the hostname and the hosts of --listen and --advertise.
    #[arg(long, env = "FAAS_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Option<Vec<String>>,
    /// Write the cluster CA's certificate (PEM, public) to this file at
    /// start, for clients to trust [default: not written].
    #[arg(long, env = "FAAS_CA_OUT")]
    pub ca_out: Option<PathBuf>,
    /// An admin API token file: its token is registered at start; a missing
    /// file is created (mode 0600) with a new token. How a new cluster gets
    /// its first credentials [default: none].
    #[arg(long, env = "FAAS_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// How long the certificates issued to nodes are valid; agents renew
    /// them at two thirds of it [default: 7d].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub node_cert_ttl: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, no
    /// authentication: keep it on loopback or a scrape network; labels
    /// carry namespace, function and node names) [default: off].
    #[arg(long, env = "FAAS_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Export call traces over OTLP/gRPC to the collector at
    /// http://HOST:PORT (plain gRPC: a collector on this machine or a
    /// private network): one trace per call across control plane and
    /// agents (docs/tracing.md) [default: off].
    #[arg(long, env = "FAAS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What else the binary does besides serving (with no subcommand).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Makes what is missing of etcd's PKI in DIR (its own CA, the members'
    /// certificate, the control plane's client certificate) and renews
    /// what is due; prints the files written. Run it before starting etcd.
    EtcdCerts {
        /// Where the files go (made 0700; keys 0600).
        #[arg(long)]
        dir: PathBuf,
        /// Names (DNS names or IP addresses) the members' certificate is
        /// for, comma-separated; always in it: localhost, 127.0.0.1, ::1
        /// and the hostname.
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
    },
    /// Makes the key that signs registry tokens in DIR if missing
    /// (`token-signer.key`, 0600) and its certificate (`token-signer.crt`,
    /// the registry's `auth.token.rootcertbundle`); prints the files
    /// written. Copy the directory to every replica (--registry-token-dir).
    RegistryCerts {
        #[arg(long)]
        dir: PathBuf,
        /// Also make the registry's TLS: a CA of its own (`tls-ca.crt`)
        /// and a server certificate (`tls.crt`, `tls.key`) for these names
        /// and addresses (repeat it); re-issued when one is added or two
        /// thirds of its year have passed.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Exits 0 once etcd, reached with this replica's settings (--etcd,
    /// --etcd-ca, --etcd-cert, --etcd-key), answers with a leader; 1 if it
    /// does not.
    EtcdHealth,
    /// Makes the key-encryption key of secrets in FILE if it is missing
    /// (32 random bytes as hex, 0600); prints its id. Copy it to every
    /// replica (--secrets-key-file); a lost key loses every secret.
    SecretsKey {
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    advertise: Option<String>,
    etcd: Option<Vec<String>>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    registry: Option<String>,
    registry_insecure: Option<bool>,
    registry_ca: Option<PathBuf>,
    registry_token_dir: Option<PathBuf>,
    secrets_key_file: Option<PathBuf>,
    name: Option<String>,
    policy: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    policy_window: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    policy_recompute: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    policy_rate_time_constant: Option<Duration>,
    key_prefix: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    call_retention: Option<Duration>,
    call_retention_count: Option<u64>,
    #[serde(default, with = "humantime_serde_opt")]
    call_retention_every: Option<Duration>,
    max_package_bytes: Option<u64>,
    max_image_bytes: Option<u64>,
    max_params_bytes: Option<u64>,
    max_result_bytes: Option<u64>,
    max_log_bytes: Option<u64>,
    max_env_bytes: Option<u64>,
    max_function_versions: Option<u64>,
    max_queued_per_function: Option<u64>,
    max_queued_calls: Option<u64>,
    max_queued_bytes: Option<u64>,
    submit_rate: Option<f64>,
    submit_burst: Option<f64>,
    #[serde(default, with = "humantime_serde_opt")]
    default_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    max_timeout: Option<Duration>,
    default_memory_bytes: Option<u64>,
    max_memory_bytes: Option<u64>,
    max_tmp_bytes: Option<u64>,
    leader_ttl_secs: Option<i64>,
    #[serde(default, with = "humantime_serde_opt")]
    node_lost_after: Option<Duration>,
    idempotent_retries: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    call_deadline_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    call_load_allowance: Option<Duration>,
    tls_san: Option<Vec<String>>,
    ca_out: Option<PathBuf>,
    bootstrap_token_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    node_cert_ttl: Option<Duration>,
    metrics_listen: Option<std::net::SocketAddr>,
    otlp_endpoint: Option<String>,
    /// Package shape limits and deploy concurrency (`[package]` table).
    #[serde(default)]
    package: crate::package::PackageSettings,
    /// Deploy-time builds (`[build]` table).
    #[serde(default)]
    build: crate::build::BuildSettings,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The resolved settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: String,
    pub advertise: String,
    pub etcd: Vec<String>,
    /// TLS towards etcd; set when the endpoints are https://.
    pub etcd_tls: Option<crate::store::EtcdTls>,
    pub registry: String,
    pub registry_insecure: bool,
    /// The registry's TLS CA, when it has one of its own.
    pub registry_ca: Option<PathBuf>,
    pub registry_token_dir: Option<PathBuf>,
    pub secrets_key_file: Option<PathBuf>,
    pub name: String,
    pub policy: String,
    pub policy_config: faas_broker::PolicyConfig,
    pub key_prefix: String,
    pub retention: crate::retention::Retention,
    pub limits: Limits,
    pub leader_ttl_secs: i64,
    pub calls: crate::broker::CallSettings,
    pub tls_san: Vec<String>,
    pub ca_out: Option<PathBuf>,
    pub bootstrap_token_file: Option<PathBuf>,
    pub node_cert_ttl: Duration,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub otlp_endpoint: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_package_bytes: u64,
    pub max_image_bytes: u64,
    pub max_params_bytes: u64,
    pub max_result_bytes: u64,
    pub max_log_bytes: u64,
    pub max_env_bytes: u64,
    pub max_function_versions: u64,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub default_memory_bytes: u64,
    pub max_memory_bytes: u64,
    pub max_tmp_bytes: u64,
    /// Queue bounds and the submit rate limit (with the limiter's state,
    /// shared by every clone).
    pub admission: crate::api::admission::Admission,
    pub submit_limiter: std::sync::Arc<crate::api::admission::SubmitLimiter>,
    pub package: crate::package::PackageSettings,
    pub build: crate::build::BuildSettings,
}

impl Limits {
    /// What a call's final write may carry.
    pub fn payload_limits(&self) -> crate::store::PayloadLimits {
        crate::store::PayloadLimits {
            max_result_bytes: self.max_result_bytes,
            max_log_bytes: self.max_log_bytes,
        }
    }
}

/// TLS towards etcd: all endpoints https:// with a CA, or all http://
/// without one; a client certificate only with TLS.
fn etcd_tls(
    endpoints: &[String],
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Option<crate::store::EtcdTls>> {
    // A unix socket is local and root's: it needs no TLS, whatever the rest.
    let network: Vec<&String> = endpoints
        .iter()
        .filter(|e| !e.starts_with(crate::store::UNIX_PREFIX))
        .collect();
    let https = network.iter().filter(|e| e.starts_with("https://")).count();
    if https != 0 && https != network.len() {
        anyhow::bail!("etcd endpoints mix https:// and http://: {endpoints:?}");
    }
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => anyhow::bail!("--etcd-cert and --etcd-key go together"),
    };
    match (https > 0, ca) {
        (true, Some(ca)) => Ok(Some(crate::store::EtcdTls { ca, identity })),
        (true, None) => anyhow::bail!("https:// etcd endpoints need --etcd-ca"),
        (false, None) if identity.is_none() => Ok(None),
        (false, _) => anyhow::bail!(
            "--etcd-ca/--etcd-cert are for https:// etcd endpoints, and these are http://: {endpoints:?}"
        ),
    }
}

impl Config {
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
        let registry = flags
            .registry
            .or(file.registry)
            .unwrap_or_else(|| "127.0.0.1:5000".into());
        let loopback = registry.starts_with("127.") || registry.starts_with("localhost");
        let registry_token_dir = flags.registry_token_dir.or(file.registry_token_dir);
        let registry_ca = flags.registry_ca.or(file.registry_ca).or_else(|| {
            registry_token_dir
                .as_ref()
                .map(|dir| faas_pki::registry::RegistryFiles::new(dir).tls_ca())
                .filter(|ca| ca.exists())
        });
        let hostname = hostname().unwrap_or_else(|| "controlplane".into());
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7070".into());
        let defaults = crate::api::admission::Admission::default();
        let admission = crate::api::admission::Admission {
            max_queued_per_function: flags
                .max_queued_per_function
                .or(file.max_queued_per_function)
                .unwrap_or(defaults.max_queued_per_function),
            max_queued: flags
                .max_queued_calls
                .or(file.max_queued_calls)
                .unwrap_or(defaults.max_queued),
            max_queued_bytes: flags
                .max_queued_bytes
                .or(file.max_queued_bytes)
                .unwrap_or(defaults.max_queued_bytes),
            submit_rate: flags
                .submit_rate
                .or(file.submit_rate)
                .unwrap_or(defaults.submit_rate),
            submit_burst: flags
                .submit_burst
                .or(file.submit_burst)
                .unwrap_or(defaults.submit_burst),
        };
        let etcd = flags
            .etcd
            .or(file.etcd)
            .unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()]);
        let etcd_tls = etcd_tls(
            &etcd,
            flags.etcd_ca.or(file.etcd_ca),
            flags.etcd_cert.or(file.etcd_cert),
            flags.etcd_key.or(file.etcd_key),
        )?;
        Ok(Config {
            advertise: flags
                .advertise
                .or(file.advertise)
                .unwrap_or_else(|| format!("https://{listen}")),
            listen,
            etcd,
            etcd_tls,
            registry_insecure: flags
                .registry_insecure
                .or(file.registry_insecure)
                .unwrap_or(loopback && registry_ca.is_none()),
            registry,
            registry_ca,
            registry_token_dir,
            secrets_key_file: flags.secrets_key_file.or(file.secrets_key_file),
            name: flags
                .name
                .or(file.name)
                .unwrap_or_else(|| format!("{hostname}-{}", std::process::id())),
            policy: flags
                .policy
                .or(file.policy)
                .unwrap_or_else(|| "adaptive".into()),
            policy_config: {
                let defaults = faas_broker::PolicyConfig::default();
                let ms = |d: Option<Duration>, default: u64| {
                    d.map(|d| d.as_millis() as u64).unwrap_or(default)
                };
                faas_broker::PolicyConfig {
                    window_ms: ms(
                        flags.policy_window.or(file.policy_window),
                        defaults.window_ms,
                    ),
                    recompute_ms: ms(
                        flags.policy_recompute.or(file.policy_recompute),
                        defaults.recompute_ms,
                    ),
                    rate_time_constant_ms: ms(
                        flags
                            .policy_rate_time_constant
                            .or(file.policy_rate_time_constant),
                        defaults.rate_time_constant_ms,
                    ),
                }
            },
            key_prefix: flags
                .key_prefix
                .or(file.key_prefix)
                .unwrap_or_else(|| "/faas/v1".into()),
            retention: crate::retention::Retention {
                max_age: flags
                    .call_retention
                    .or(file.call_retention)
                    .unwrap_or(Duration::from_secs(7 * 24 * 3600)),
                max_count: flags
                    .call_retention_count
                    .or(file.call_retention_count)
                    .unwrap_or(100_000),
                every: flags
                    .call_retention_every
                    .or(file.call_retention_every)
                    .unwrap_or(Duration::from_secs(60)),
            },
            limits: Limits {
                max_package_bytes: flags
                    .max_package_bytes
                    .or(file.max_package_bytes)
                    .unwrap_or(64 << 20),
                max_image_bytes: flags
                    .max_image_bytes
                    .or(file.max_image_bytes)
                    .unwrap_or(2 << 30),
                max_params_bytes: flags
                    .max_params_bytes
                    .or(file.max_params_bytes)
                    .unwrap_or(256 << 10),
                max_result_bytes: flags
                    .max_result_bytes
                    .or(file.max_result_bytes)
                    .unwrap_or(crate::store::DEFAULT_MAX_RESULT_BYTES),
                max_log_bytes: flags
                    .max_log_bytes
                    .or(file.max_log_bytes)
                    .unwrap_or(64 << 10),
                max_env_bytes: flags
                    .max_env_bytes
                    .or(file.max_env_bytes)
                    .unwrap_or(64 << 10),
                max_function_versions: flags
                    .max_function_versions
                    .or(file.max_function_versions)
                    .unwrap_or(16)
                    .max(1),
                admission: admission.clone(),
                submit_limiter: std::sync::Arc::new(crate::api::admission::SubmitLimiter::new(
                    admission.submit_rate,
                    admission.submit_burst,
                )),
                default_timeout: flags
                    .default_timeout
                    .or(file.default_timeout)
                    .unwrap_or(Duration::from_secs(30)),
                max_timeout: flags
                    .max_timeout
                    .or(file.max_timeout)
                    .unwrap_or(Duration::from_secs(15 * 60)),
                default_memory_bytes: flags
                    .default_memory_bytes
                    .or(file.default_memory_bytes)
                    .unwrap_or(256 << 20),
                max_memory_bytes: flags
                    .max_memory_bytes
                    .or(file.max_memory_bytes)
                    .unwrap_or(4 << 30),
                max_tmp_bytes: flags
                    .max_tmp_bytes
                    .or(file.max_tmp_bytes)
                    .unwrap_or(512 << 20),
                package: file.package,
                build: file.build,
            },
            leader_ttl_secs: flags.leader_ttl_secs.or(file.leader_ttl_secs).unwrap_or(5),
            calls: crate::broker::CallSettings {
                node_lost_after: flags
                    .node_lost_after
                    .or(file.node_lost_after)
                    .unwrap_or(Duration::from_secs(3)),
                idempotent_retries: flags
                    .idempotent_retries
                    .or(file.idempotent_retries)
                    .unwrap_or(2),
                deadline_grace: flags
                    .call_deadline_grace
                    .or(file.call_deadline_grace)
                    .unwrap_or(crate::ledger::DEFAULT_DEADLINE_GRACE),
                load_allowance: flags
                    .call_load_allowance
                    .or(file.call_load_allowance)
                    .unwrap_or(crate::ledger::DEFAULT_LOAD_ALLOWANCE),
            },
            tls_san: flags.tls_san.or(file.tls_san).unwrap_or_default(),
            ca_out: flags.ca_out.or(file.ca_out),
            bootstrap_token_file: flags.bootstrap_token_file.or(file.bootstrap_token_file),
            node_cert_ttl: flags
                .node_cert_ttl
                .or(file.node_cert_ttl)
                .unwrap_or(Duration::from_secs(7 * 24 * 3600)),
            metrics_listen: flags.metrics_listen.or(file.metrics_listen),
            otlp_endpoint: flags
                .otlp_endpoint
                .or(file.otlp_endpoint)
                .filter(|e| !e.is_empty()),
        })
    }
}

/// This machine's hostname, if it has one.
pub(crate) fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_string()).filter(|n| !n.is_empty())
}

impl Config {
    /// The names this replica's certificate holds: the configured ones,
    /// loopback, the hostname and the hosts of the listen and advertise
    /// addresses.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        names.extend(hostname());
        let host_of = |addr: &str| -> Option<String> {
            let rest = addr.split_once("://").map(|(_, r)| r).unwrap_or(addr);
            let authority = rest.split('/').next()?;
            let host = match authority.strip_prefix('[') {
                Some(v6) => v6.split(']').next()?.to_string(),
                None => authority
                    .rsplit_once(':')
                    .map(|(h, _)| h)
                    .unwrap_or(authority)
                    .to_string(),
            };
            (!host.is_empty() && host != "0.0.0.0" && host != "::").then_some(host)
        };
        names.extend(host_of(&self.listen));
        names.extend(host_of(&self.advertise));
        names.extend(self.tls_san.iter().cloned());
        names.retain(|n| !n.is_empty());
        names.sort();
        names.dedup();
        names
    }
}
