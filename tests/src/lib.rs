//! Test harness: starts a complete, private faas stack on this machine and
//! tears it down again.
//!
//! A [`Stack`] owns an etcd (one member, or a cluster of
//! [`StackOptions::etcd_members`]), one docker-registry and one containerd (or
//! one per agent with [`StackOptions::containerd_per_agent`]), each in a
//! private temporary directory on free loopback ports, then the
//! `faas-controlplane` replicas and N `faas-agent`s built by `tests/run.sh`.
//! Nothing of the system instances (default sockets and ports) is touched.
//!
//! The environment is prepared by `tests/run.sh`, which exports:
//! - `FAAS_BIN_DIR`: directory holding faas-controlplane, faas-agent, faasctl
//!   and faas-init;
//! - `FAAS_RUNTIME_ARCHIVES`: `name=/path/archive.tar,...` built by
//!   `runtimes/build.sh`.
//!
//! Without them (or without root) [`Stack::start`] fails with a message that
//! says so: an end-to-end test never passes silently.
//!
//! Each agent `i` runs as node `node-<i>` in containerd namespace
//! [`Stack::agent_namespace`]`(i)`: agent 0 uses [`Stack::namespace`], the
//! others `<namespace>-<i>`, so that two agents sharing the stack's containerd
//! never see (or clean up) each other's containers.
//!
//! Set `FAAS_TEST_KEEP=1` to keep the stack directory (logs, state) after a test.

pub mod bench;
pub mod outside;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use containerd_client::services::v1::{
    containers_client::ContainersClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, snapshots::Kind as SnapshotKind,
    snapshots::ListSnapshotsRequest, tasks_client::TasksClient, version_client::VersionClient,
    DeleteContainerRequest, DeleteTaskRequest, KillRequest, ListContainersRequest,
    ListTasksRequest,
};
use containerd_client::tonic::Request;
use containerd_client::with_namespace;
use faas_proto::v1::{
    cluster_service_client::ClusterServiceClient, register_runtime_request,
    runtime_service_client::RuntimeServiceClient, ListNodesRequest, ListNodesResponse,
    RegisterRuntimeRequest, RuntimeSpec,
};
use futures::StreamExt;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A channel to the control plane that sends the stack's admin token.
pub type Channel = faas_pki::client::AuthChannel;

/// How a test client reaches a stack: its CA and a token.
#[derive(Clone)]
pub struct ClientAuth {
    pub ca_pem: String,
    pub token: String,
}

impl ClientAuth {
    /// A lazily connected channel to `url` with this token (and no other
    /// credentials): 1 s to connect (5 s without a request deadline), and
    /// `timeout` per request.
    pub fn channel_with(
        &self,
        url: &str,
        token: Option<&str>,
        timeout: Option<Duration>,
    ) -> Channel {
        let tls = faas_pki::client::ClientTls {
            ca_pem: Some(self.ca_pem.clone()),
            identity: None,
        };
        let mut endpoint = faas_pki::client::endpoint(url, &tls)
            .expect("a valid endpoint")
            .connect_timeout(Duration::from_secs(if timeout.is_some() { 1 } else { 5 }))
            .tcp_nodelay(true);
        if let Some(t) = timeout {
            endpoint = endpoint.timeout(t);
        }
        faas_pki::client::authorized(
            endpoint.connect_lazy(),
            faas_pki::client::Bearer::new(token).expect("a printable token"),
        )
    }

    /// [`ClientAuth::channel_with`] the admin token and a 5 s deadline.
    pub fn channel(&self, url: &str) -> Channel {
        self.channel_with(url, Some(&self.token), Some(Duration::from_secs(5)))
    }
}

/// How long a daemon may take to become ready before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Teardown after a call happens after the reply: give it this long to finish
/// before containerd state counts as leftovers.
const LEFTOVER_GRACE: Duration = Duration::from_secs(10);
/// How long shutdown waits for the agents to go idle before stopping them.
const QUIESCE_GRACE: Duration = Duration::from_secs(3);
/// Submits a call to the first of `urls` that accepts it, as a client given
/// several replicas would, starting at `first` (mod the list); the call id,
/// or None if every replica refused. One short-lived channel per attempt,
/// with a 5 s deadline.
pub async fn submit_to_any(
    auth: &ClientAuth,
    urls: &[String],
    first: usize,
    function: &str,
    params_json: &str,
) -> Option<String> {
    for attempt in 0..urls.len() {
        let url = &urls[(first + attempt) % urls.len()];
        let channel = auth.channel(url);
        let submitted = faas_proto::v1::call_service_client::CallServiceClient::new(channel)
            .submit(faas_proto::v1::InvokeRequest {
                function: function.into(),
                params_json: params_json.into(),
                ..Default::default()
            })
            .await;
        if let Ok(r) = submitted {
            return Some(r.into_inner().call_id);
        }
    }
    None
}

/// Invokes `function` with `params_json`; the call, whatever its outcome.
pub async fn invoke_call(
    client: &mut faas_proto::v1::call_service_client::CallServiceClient<Channel>,
    function: &str,
    params_json: &str,
) -> anyhow::Result<faas_proto::v1::Call> {
    Ok(client
        .invoke(faas_proto::v1::InvokeRequest {
            function: function.into(),
            params_json: params_json.into(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Invokes `function` with `params_json` and asserts the call succeeded;
/// the call, for further checks.
pub async fn invoke_succeeded(
    client: &mut faas_proto::v1::call_service_client::CallServiceClient<Channel>,
    function: &str,
    params_json: &str,
) -> anyhow::Result<faas_proto::v1::Call> {
    let call = invoke_call(client, function, params_json).await?;
    assert_eq!(
        call.status(),
        faas_proto::v1::CallStatus::Succeeded,
        "{call:?}"
    );
    Ok(call)
}

/// Polls call `id` until it is RUNNING (it fails the test after
/// `timeout`); the call as it was then.
pub async fn wait_running(
    client: &mut faas_proto::v1::call_service_client::CallServiceClient<Channel>,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<faas_proto::v1::Call> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let call = client
            .get_call(faas_proto::v1::GetCallRequest { id: id.to_string() })
            .await?
            .into_inner();
        if call.status() == faas_proto::v1::CallStatus::Running {
            return Ok(call);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ran: {call:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls call `id` until it is final (SUCCEEDED, FAILED or TIMEOUT); an
/// error if it is not within `within`. Unanswered polls are retried.
pub async fn wait_final(
    client: &mut faas_proto::v1::call_service_client::CallServiceClient<Channel>,
    id: &str,
    within: Duration,
) -> anyhow::Result<faas_proto::v1::Call> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let polled = client
            .get_call(faas_proto::v1::GetCallRequest { id: id.into() })
            .await;
        if let Ok(call) = polled {
            let call = call.into_inner();
            if call.status().is_final() {
                return Ok(call);
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "call {id} not final in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;
/// The snapshotter faas uses (containerd's default on ext4).
const SNAPSHOTTER: &str = "overlayfs";

/// Name of an etcd member's unix socket in its working directory (etcd
/// wants a URL's host:port there, and takes it as the file's name).
const ETCD_SOCKET_NAME: &str = "etcd.sock:0";

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Number of faas-agent processes (nodes `node-0`, `node-1`, ...).
    pub agents: usize,
    /// Spots per agent.
    pub spots: u32,
    /// Runtimes registered once the stack is up, e.g. `["python3"]`; each
    /// needs an archive in `FAAS_RUNTIME_ARCHIVES` and `runtimes/<name>/runtime.toml`.
    pub runtimes: Vec<&'static str>,
    /// `--policy` of the control plane; `None` keeps its default.
    pub policy: Option<String>,
    /// Control-plane replicas (`cp-0`, `cp-1`, ...); with more than one,
    /// their leader lease is short (2 s) so failover tests run quickly.
    pub controlplanes: usize,
    /// Extra flags for every control-plane replica.
    pub controlplane_args: Vec<String>,
    /// etcd cluster members (`etcd-0`, `etcd-1`, ...); every control plane
    /// is given all their client URLs. 1 keeps a single-member etcd.
    pub etcd_members: usize,
    /// Each agent gets a containerd of its own (`containerd`, `containerd-1`,
    /// ...) instead of one namespace each in a shared containerd.
    pub containerd_per_agent: bool,
    /// etcd's `--quota-backend-bytes`: a test of a full etcd sets a small
    /// one [default: 1 GiB].
    pub etcd_quota_bytes: u64,
    /// The agents' configuration file (TOML), given with `--config`.
    pub agent_config: Option<String>,
}

/// etcd's space quota in test stacks unless a test asks for another.
pub const DEFAULT_ETCD_QUOTA_BYTES: u64 = 1 << 30;

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            agents: 1,
            spots: 2,
            runtimes: Vec::new(),
            policy: None,
            controlplanes: 1,
            controlplane_args: Vec::new(),
            etcd_members: 1,
            containerd_per_agent: false,
            etcd_quota_bytes: DEFAULT_ETCD_QUOTA_BYTES,
            agent_config: None,
        }
    }
}

/// The stdout of a command that must have succeeded (`what` it was, its
/// exit code and stderr in the panic otherwise).
pub fn stdout_of(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `tests/fixtures/<name>`: a small function directory shipped for tests.
pub fn fixture_dir(name: &str) -> PathBuf {
    let dir = repo_root().join("tests/fixtures").join(name);
    assert!(dir.is_dir(), "no fixture {}", dir.display());
    dir
}

/// `FAAS_BIN_DIR`, checked to hold every faas binary.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("FAAS_BIN_DIR").ok_or_else(|| {
        anyhow!(
            "FAAS_BIN_DIR is not set. The end-to-end tests need the release binaries and \
             private etcd/registry/containerd: run them with tests/run.sh (as root), which \
             builds everything and exports FAAS_BIN_DIR and FAAS_RUNTIME_ARCHIVES"
        )
    })?;
    let dir = PathBuf::from(dir);
    for bin in ["faas-controlplane", "faas-agent", "faasctl", "faas-init"] {
        if !dir.join(bin).is_file() {
            bail!(
                "FAAS_BIN_DIR={} has no {bin}: rebuild with tests/run.sh",
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// The runtime archives built by `runtimes/build.sh`, from `FAAS_RUNTIME_ARCHIVES`
/// (`name=/path,name=/path`).
pub fn runtime_archives() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let raw = std::env::var("FAAS_RUNTIME_ARCHIVES").map_err(|_| {
        anyhow!(
            "FAAS_RUNTIME_ARCHIVES is not set: run the end-to-end tests with tests/run.sh, \
             which builds the runtimes with runtimes/build.sh"
        )
    })?;
    raw.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            let (name, path) = entry
                .split_once('=')
                .ok_or_else(|| anyhow!("FAAS_RUNTIME_ARCHIVES entry {entry:?} is not name=path"))?;
            Ok((name.trim().to_string(), PathBuf::from(path.trim())))
        })
        .collect()
}

fn find_in_path(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            anyhow!(
                "{program} is not installed: tests/run.sh installs it (deploy/lib/install-deps.sh)"
            )
        })
}

/// GETs `http://addr/metrics` and parses it.
async fn scrape(addr: &str) -> anyhow::Result<Vec<faas_metrics::Sample>> {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("scraping {addr}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "scraping {addr}: {}",
        response.status()
    );
    Ok(faas_metrics::parse(&response.text().await?))
}

fn free_port() -> anyhow::Result<u16> {
    // Below the kernel's ephemeral range (32768-60999 by default): a port
    // there may become the source port of any outgoing connection while
    // its daemon is down, and a killed etcd member restarted on its old
    // port found it in use. Checked free by binding it; each port is
    // handed out once per test process (tests run in parallel threads).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let mut given = GIVEN.lock().expect("poisoned");
    for i in 0..COUNT {
        let port = (FIRST + (seed.wrapping_add(i.wrapping_mul(7_919))) % COUNT) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free port in {FIRST}-{}", FIRST + COUNT - 1)
}

/// Last `lines` lines of a file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) => return format!("(no log {}: {err})", path.display()),
    };
    // Logs can be large (etcd is chatty): only the end matters.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_ok() {
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One child process with its log file.
struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Daemon> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        // Own process group: a signal to the group reaches anything the daemon forked.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Daemon {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Fails with the log tail if the process has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    fn failure(&self, what: &str) -> anyhow::Error {
        anyhow!(
            "{}: {what}; last lines of {}:\n{}",
            self.name,
            self.log.display(),
            log_tail(&self.log, LOG_TAIL_LINES)
        )
    }

    /// SIGTERM, then SIGKILL after `timeout`. Returns whether it exited on SIGTERM.
    async fn stop(&mut self, timeout: Duration) -> bool {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return true;
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = killpg(self.pid(), Signal::SIGKILL);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill_now();
        false
    }

    /// SIGKILL to the process group, then reap.
    fn kill_now(&mut self) {
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One member of the stack's etcd cluster.
#[derive(Debug, Clone)]
struct EtcdMember {
    /// Member name, also the daemon's (and its log's) name.
    name: String,
    client_port: u16,
    peer_port: u16,
}

#[derive(Deserialize)]
struct RuntimeToml {
    name: String,
    path: String,
    #[serde(default)]
    dependencies: String,
    run: String,
    #[serde(default)]
    default_handler: String,
    #[serde(default)]
    build: String,
    #[serde(default)]
    build_only_with_dependencies: bool,
}

/// A running faas stack. Dropping it kills every process it started.
pub struct Stack {
    /// gRPC endpoint of the control plane, `https://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The cluster CA (PEM) and the bootstrap admin token, read once the
    /// first replica is up.
    pub auth: ClientAuth,
    /// A join token and the CA's fingerprint, given to every agent.
    join: Option<(String, String)>,
    /// The stack's private containerd socket.
    pub containerd_socket: PathBuf,
    /// The sockets standing for systemd's notify socket, one per
    /// containerd (see `start_containerd`).
    systemd_notify: Vec<std::os::unix::net::UnixDatagram>,
    /// containerd namespace of agent 0 (see [`Stack::agent_namespace`]).
    pub namespace: String,
    /// Everything of the stack lives here: data, sockets and `logs/`.
    pub dir: TempDir,
    bin_dir: Option<PathBuf>,
    etcd_endpoint: String,
    /// Every etcd member: its name and client/peer ports (kept across restarts).
    etcd_members: Vec<EtcdMember>,
    /// `--quota-backend-bytes` of every member.
    etcd_quota_bytes: u64,
    /// Socket of containerd instance `k` (`containerd_sockets[0]` is
    /// `containerd_socket`); agent `i` uses instance [`Stack::agent_containerd`]`(i)`.
    containerd_sockets: Vec<PathBuf>,
    containerd_per_agent: bool,
    registry_addr: String,
    spots: u32,
    agent_config: Option<String>,
    /// etcd, registry, containerd, control plane: stopped in reverse order.
    daemons: Vec<Daemon>,
    agents: Vec<Option<Daemon>>,
    /// Control-plane replicas, with their fixed addresses (kept across
    /// restarts) and policy.
    controlplanes: Vec<Option<Daemon>>,
    cp_addrs: Vec<String>,
    /// `/metrics` of each replica and each agent (fixed across restarts).
    cp_metrics: Vec<String>,
    agent_metrics: Vec<String>,
    policy: Option<String>,
    cp_args: Vec<String>,
    /// Set by [`Stack::shutdown`]: a stack dropped without it belongs to a
    /// test that failed (panicked or returned an error).
    shut_down: bool,
}

impl Stack {
    /// Starts etcd, the registry, containerd, the control plane and the
    /// agents, waits until every agent shows as connected, then registers the
    /// requested runtimes.
    pub async fn start(opts: StackOptions) -> anyhow::Result<Stack> {
        let bin_dir = bin_dir()?;
        let archives = if opts.runtimes.is_empty() {
            Vec::new()
        } else {
            runtime_archives()?
        };
        let mut stack = Stack::start_infra_with(
            opts.etcd_members.max(1),
            opts.etcd_quota_bytes,
            if opts.containerd_per_agent {
                opts.agents.max(1)
            } else {
                1
            },
        )
        .await?;
        stack.containerd_per_agent = opts.containerd_per_agent;
        stack.bin_dir = Some(bin_dir);
        stack.spots = opts.spots;
        stack.agent_config = opts.agent_config.clone();
        stack.policy = opts.policy.clone();
        stack.cp_args = opts.controlplane_args.clone();
        for _ in 0..opts.controlplanes.max(1) {
            stack.cp_addrs.push(format!("127.0.0.1:{}", free_port()?));
            stack.cp_metrics.push(format!("127.0.0.1:{}", free_port()?));
            stack.controlplanes.push(None);
        }
        stack.endpoint = format!("https://{}", stack.cp_addrs[0]);
        for i in 0..stack.cp_addrs.len() {
            stack.spawn_controlplane(i).await?;
        }
        stack.auth = ClientAuth {
            ca_pem: fs::read_to_string(stack.ca_file())
                .context("the control plane wrote no CA certificate")?,
            token: fs::read_to_string(stack.admin_token_file())
                .context("the control plane wrote no bootstrap token")?
                .trim()
                .to_string(),
        };
        let join = ClusterServiceClient::new(stack.channel().await)
            .create_join_token(faas_proto::v1::CreateJoinTokenRequest {
                ttl_ms: 7 * 24 * 3600 * 1000,
                description: "test stack".into(),
                // Every agent of the stack, and those tests add.
                uses: 1000,
            })
            .await
            .context("creating a join token")?
            .into_inner();
        stack.join = Some((join.token, join.ca_hash));
        for i in 0..opts.agents {
            stack.agents.push(None);
            stack.spawn_agent(i)?;
        }
        stack.wait_agents_connected(READY_TIMEOUT).await?;
        for name in &opts.runtimes {
            let archive = archives
                .iter()
                .find(|(archive_name, _)| archive_name == name)
                .map(|(_, path)| path.clone())
                .ok_or_else(|| {
                    anyhow!("FAAS_RUNTIME_ARCHIVES has no archive for runtime {name}")
                })?;
            stack
                .register_runtime(name, &archive)
                .await
                .with_context(|| format!("registering runtime {name}"))?;
        }
        Ok(stack)
    }

    /// Starts only etcd, the registry and containerd (no faas process): for
    /// tests of a single component, e.g. the agent's containerd driver. Needs
    /// root, not FAAS_BIN_DIR.
    pub async fn start_infra() -> anyhow::Result<Stack> {
        Stack::start_infra_with(1, DEFAULT_ETCD_QUOTA_BYTES, 1).await
    }

    /// [`Stack::start_infra`] with `etcd_members` etcd members and
    /// `containerds` containerd instances.
    async fn start_infra_with(
        etcd_members: usize,
        etcd_quota_bytes: u64,
        containerds: usize,
    ) -> anyhow::Result<Stack> {
        if !nix::unistd::geteuid().is_root() {
            bail!(
                "the end-to-end tests need root (containerd, runc, overlay mounts): \
                 run them with tests/run.sh as root"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("faas-stack-")
            .tempdir()
            .context("creating the stack directory")?;
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("logs"))?;

        let mut stack = Stack {
            endpoint: String::new(),
            auth: ClientAuth {
                ca_pem: String::new(),
                token: String::new(),
            },
            join: None,
            containerd_socket: root.join("containerd/containerd.sock"),
            systemd_notify: Vec::new(),
            namespace: "faas".to_string(),
            dir,
            bin_dir: None,
            etcd_endpoint: String::new(),
            etcd_members: Vec::new(),
            etcd_quota_bytes,
            containerd_sockets: Vec::new(),
            containerd_per_agent: false,
            registry_addr: String::new(),
            spots: StackOptions::default().spots,
            agent_config: None,
            daemons: Vec::new(),
            agents: Vec::new(),
            controlplanes: Vec::new(),
            cp_addrs: Vec::new(),
            cp_metrics: Vec::new(),
            agent_metrics: Vec::new(),
            policy: None,
            cp_args: Vec::new(),
            shut_down: false,
        };
        stack.start_etcd(etcd_members).await?;
        stack.start_registry().await?;
        for k in 0..containerds {
            stack.start_containerd(k).await?;
        }
        Ok(stack)
    }

    /// etcd client URL, `https://127.0.0.1:<port>` (mutual TLS: see
    /// [`Stack::etcd_client`]).
    pub fn etcd_endpoint(&self) -> &str {
        &self.etcd_endpoint
    }

    /// Registry address, `127.0.0.1:<port>` (plain HTTP).
    pub fn registry_addr(&self) -> &str {
        &self.registry_addr
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir
            .as_ref()
            .expect("this stack was started without FAAS_BIN_DIR (Stack::start_infra)")
            .join(name)
    }

    /// The log file of the daemon `name` ("controlplane", "agent-0", "etcd", ...).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}.log"))
    }

    /// etcd's PKI (its own CA, the members' certificate, the control
    /// plane's client certificate), as `faas-controlplane etcd-certs`
    /// makes it.
    pub fn etcd_pki(&self) -> faas_pki::etcd::EtcdPkiFiles {
        faas_pki::etcd::EtcdPkiFiles::new(self.dir.path().join("etcd-pki"))
    }

    /// A client of etcd member `i` with the control plane's certificate:
    /// how a test reads or writes the state behind the control plane's back.
    pub async fn etcd_client_of(&self, i: usize) -> anyhow::Result<etcd_client::Client> {
        let pki = self.etcd_pki();
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(fs::read(pki.ca_cert())?))
            .identity(etcd_client::Identity::from_pem(
                fs::read(pki.client_cert())?,
                fs::read(pki.client_key())?,
            ));
        let options = etcd_client::ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5));
        let url = self.etcd_endpoints()[i].clone();
        Ok(etcd_client::Client::connect([url], Some(options)).await?)
    }

    /// [`Stack::etcd_client_of`] the first member.
    pub async fn etcd_client(&self) -> anyhow::Result<etcd_client::Client> {
        self.etcd_client_of(0).await
    }

    /// Starts `members` etcd members. A single member keeps its historical
    /// name (`faas-test`), data dir (`etcd`) and log (`etcd.log`).
    async fn start_etcd(&mut self, members: usize) -> anyhow::Result<()> {
        faas_pki::etcd::ensure(
            &self.etcd_pki(),
            &["127.0.0.1".to_string(), "localhost".to_string()],
        )?;
        for i in 0..members {
            let name = if members == 1 {
                "etcd".to_string()
            } else {
                format!("etcd-{i}")
            };
            self.etcd_members.push(EtcdMember {
                name,
                client_port: free_port()?,
                peer_port: free_port()?,
            });
        }
        // A new cluster elects no leader, so no member reports healthy,
        // until a quorum runs: start every member before waiting for any.
        for i in 0..members {
            let daemon = self.spawn_etcd_member(i, "new")?;
            self.daemons.push(daemon);
        }
        for i in 0..members {
            self.wait_etcd_member(i).await?;
        }
        self.etcd_endpoint = self.etcd_endpoints()[0].clone();
        Ok(())
    }

    /// Name given to etcd's `--name` for member `i`.
    fn etcd_member_name(&self, i: usize) -> String {
        if self.etcd_members.len() == 1 {
            "faas-test".to_string()
        } else {
            self.etcd_members[i].name.clone()
        }
    }

    fn spawn_etcd_member(&self, i: usize, cluster_state: &str) -> anyhow::Result<Daemon> {
        let member = &self.etcd_members[i];
        let (client, peer) = (member.client_port, member.peer_port);
        let data = self.dir.path().join(&member.name);
        let initial_cluster = (0..self.etcd_members.len())
            .map(|j| {
                format!(
                    "{}=https://127.0.0.1:{}",
                    self.etcd_member_name(j),
                    self.etcd_members[j].peer_port
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let pki = self.etcd_pki();
        // etcd names a unix socket by its URL's host:port, in its working
        // directory: a directory of root's alone, as deploy/local/up.sh's.
        let socket_dir = self.etcd_socket_dir(i);
        fs::create_dir_all(&socket_dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&socket_dir, fs::Permissions::from_mode(0o700))?;
        }
        // etcd 3.4 does not replace the socket of a member killed earlier
        // in the test: bind would fail.
        match fs::remove_file(socket_dir.join(ETCD_SOCKET_NAME)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let mut cmd = Command::new(find_in_path("etcd")?);
        cmd.current_dir(&socket_dir)
            .arg(format!("--name={}", self.etcd_member_name(i)))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!(
                "--listen-client-urls=https://127.0.0.1:{client},unix://{ETCD_SOCKET_NAME}"
            ))
            .arg(format!(
                "--advertise-client-urls=https://127.0.0.1:{client}"
            ))
            .arg(format!("--listen-peer-urls=https://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=https://127.0.0.1:{peer}"
            ))
            // As deploy/local/up.sh: mutual TLS on the client and the peer
            // ports, with etcd's own CA.
            .arg(format!("--cert-file={}", pki.member_cert().display()))
            .arg(format!("--key-file={}", pki.member_key().display()))
            .arg(format!("--trusted-ca-file={}", pki.ca_cert().display()))
            .arg("--client-cert-auth")
            .arg(format!("--peer-cert-file={}", pki.member_cert().display()))
            .arg(format!("--peer-key-file={}", pki.member_key().display()))
            .arg(format!(
                "--peer-trusted-ca-file={}",
                pki.ca_cert().display()
            ))
            .arg("--peer-client-cert-auth")
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-state={cluster_state}"));
        if self.etcd_members.len() > 1 {
            // Unique per stack: members of two test stacks never join each other.
            let token = self
                .dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "faas-test".into());
            cmd.arg(format!("--initial-cluster-token={token}"));
        }
        // As every etcd the project starts: history compacted on its own,
        // and a space quota (whose alarm the control plane clears).
        cmd.arg("--auto-compaction-mode=revision")
            .arg("--auto-compaction-retention=10000")
            .arg(format!("--quota-backend-bytes={}", self.etcd_quota_bytes));
        cmd.arg("--log-level=warn").arg("--logger=zap");
        Daemon::spawn(&member.name, cmd, &self.log_path(&member.name))
    }

    /// Waits until member `i` reports healthy (it has a leader).
    async fn wait_etcd_member(&mut self, i: usize) -> anyhow::Result<()> {
        let name = self.etcd_members[i].name.clone();
        // Taken out while the probe borrows the stack, and put back in its
        // place (daemons stop in reverse order of start).
        let pos = self
            .daemons
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| anyhow!("{name} is not running"))?;
        let mut daemon = self.daemons.remove(pos);
        let ready = wait_until(READY_TIMEOUT, &mut daemon, || async {
            match self.etcd_client_of(i).await {
                Ok(mut client) => client
                    .status()
                    .await
                    .map(|status| status.leader() != 0)
                    .unwrap_or(false),
                Err(_) => false,
            }
        })
        .await;
        self.daemons.insert(pos, daemon);
        ready
    }

    /// Directory of etcd member `i`'s unix socket (its working directory).
    fn etcd_socket_dir(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}-socket", self.etcd_members[i].name))
    }

    /// etcd member `i`'s unix socket: plain gRPC, root's alone.
    pub fn etcd_socket(&self, i: usize) -> PathBuf {
        self.etcd_socket_dir(i).join(ETCD_SOCKET_NAME)
    }

    /// The endpoints the control planes are given. One member: its unix
    /// socket first (as deploy/local/up.sh, whose control plane sits beside
    /// its etcd), then its TLS port. Several: every member's TLS port, as
    /// on machines of their own.
    fn controlplane_etcd_endpoints(&self) -> Vec<String> {
        let mut endpoints = self.etcd_endpoints();
        if endpoints.len() == 1 {
            endpoints.insert(0, format!("unix://{}", self.etcd_socket(0).display()));
        }
        endpoints
    }

    /// Client URL of every etcd member, `https://127.0.0.1:<port>`.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd_members
            .iter()
            .map(|m| format!("https://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// SIGKILLs etcd member `i` (a crash; its data dir stays).
    pub fn kill_etcd_member(&mut self, i: usize) {
        let name = &self.etcd_members[i].name;
        if let Some(pos) = self.daemons.iter().position(|d| &d.name == name) {
            self.daemons.remove(pos).kill_now();
        }
    }

    /// Index of the etcd member that is the Raft leader now, as the live
    /// members report it (etcd's Maintenance/Status).
    pub async fn etcd_leader_member(&self) -> anyhow::Result<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for (i, member) in self.etcd_members.iter().enumerate() {
            if !self.daemons.iter().any(|d| d.name == member.name) {
                continue;
            }
            let Ok(mut client) = self.etcd_client_of(i).await else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            ids.push((i, status.header().map(|h| h.member_id())));
            if status.leader() != 0 {
                leader = Some(status.leader());
            }
        }
        let leader = leader.ok_or_else(|| anyhow!("no etcd member reports a leader"))?;
        ids.into_iter()
            .find(|(_, id)| *id == Some(leader))
            .map(|(i, _)| i)
            .ok_or_else(|| anyhow!("the etcd leader {leader:x} is not a live member"))
    }

    /// Restarts etcd member `i` on its data dir and ports (it rejoins the
    /// cluster) and waits until it is healthy.
    pub async fn start_etcd_member(&mut self, i: usize) -> anyhow::Result<()> {
        let name = self.etcd_members[i].name.clone();
        if self.daemons.iter().any(|d| d.name == name) {
            return Ok(());
        }
        let daemon = self.spawn_etcd_member(i, "existing")?;
        self.daemons.push(daemon);
        self.wait_etcd_member(i).await
    }

    async fn start_registry(&mut self) -> anyhow::Result<()> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let storage = self.dir.path().join("registry");
        fs::create_dir_all(&storage)?;
        let template = fs::read_to_string(repo_root().join("deploy/config/registry.yml"))
            .context("reading deploy/config/registry.yml")?;
        let config = self.dir.path().join("registry.yml");
        // As deploy/local/up.sh: TLS with a CA of its own, and token
        // authentication with the key the control planes sign with.
        faas_pki::registry::ensure_signer(&self.registry_pki())?;
        faas_pki::registry::ensure_tls(&self.registry_pki(), &["127.0.0.1".to_string()])?;
        let files = faas_pki::registry::RegistryFiles::new(self.registry_pki());
        let path = |p: PathBuf| p.display().to_string();
        fs::write(
            &config,
            template
                .replace("@REGISTRY_ROOT@", &storage.display().to_string())
                .replace("@REGISTRY_ADDR@", &addr)
                .replace("@REGISTRY_TOKEN_CERT@", &path(files.cert()))
                .replace("@REGISTRY_TLS_CERT@", &path(files.tls_cert()))
                .replace("@REGISTRY_TLS_KEY@", &path(files.tls_key())),
        )?;
        self.registry_addr = addr.clone();
        let mut cmd = Command::new(find_in_path("docker-registry")?);
        cmd.arg("serve").arg(&config);
        let mut daemon = Daemon::spawn("registry", cmd, &self.log_path("registry"))?;
        let this = &*self;
        let ready = wait_until(READY_TIMEOUT, &mut daemon, || async {
            // 401: it serves, over TLS, and asks for a token.
            this.registry_request("GET", "/v2/", None, &[])
                .await
                .map(|(status, _)| status == 401)
                .unwrap_or(false)
        })
        .await;
        self.daemons.push(daemon);
        ready?;
        Ok(())
    }

    /// An HTTP/1.0 request to the stack's registry over TLS (checked
    /// against the registry's CA), with a bearer token if given and extra
    /// `(name, value)` headers: the status code and the body.
    pub async fn registry_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String)> {
        let addr = &self.registry_addr;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("registry address {addr:?}"))?;
        let ca = fs::read_to_string(
            faas_pki::registry::RegistryFiles::new(self.registry_pki()).tls_ca(),
        )?;
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n");
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let io = async {
            let mut stream = faas_pki::client::connect_tls(host, port.parse()?, &ca).await?;
            stream.write_all(head.as_bytes()).await?;
            let mut response = Vec::new();
            // A TLS server may end an HTTP/1.0 response without
            // close_notify: what arrived counts.
            let _ = stream.read_to_end(&mut response).await;
            anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
        };
        let response = tokio::time::timeout(Duration::from_secs(5), io).await??;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| anyhow!("bad HTTP response from the registry at {addr}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("");
        Ok((status, body.to_string()))
    }

    /// The key that signs registry tokens (and its certificate, the
    /// registry's root), as `faas-controlplane registry-certs` makes them.
    pub fn registry_pki(&self) -> PathBuf {
        self.dir.path().join("registry-pki")
    }

    /// The key-encryption key of secrets, made once per stack (every
    /// replica gets the same), as `faas-controlplane secrets-key` makes it.
    pub fn secrets_key(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("secrets.key");
        faas_pki::sealing::FileKey::ensure(&path)?;
        Ok(path)
    }

    /// A token for everything on `repository`, as a control plane mints
    /// one: how a test reads the registry behind the control plane's back.
    pub fn registry_token(&self, repository: &str) -> anyhow::Result<String> {
        let signer = faas_pki::registry::TokenSigner::load(&self.registry_pki())?;
        Ok(signer.mint(
            "faas-tests",
            &[faas_pki::registry::Access::all(repository)],
            Duration::from_secs(300),
        )?)
    }

    /// Daemon (and log) name of containerd instance `k`.
    fn containerd_name(k: usize) -> String {
        if k == 0 {
            "containerd".to_string()
        } else {
            format!("containerd-{k}")
        }
    }

    /// Starts containerd instance `k` (0: `containerd/`, k: `containerd-<k>/`),
    /// or starts it again on the same config, root and state.
    async fn start_containerd(&mut self, k: usize) -> anyhow::Result<()> {
        let name = Stack::containerd_name(k);
        let base = self.dir.path().join(&name);
        let socket = base.join("containerd.sock");
        if k == self.containerd_sockets.len() {
            self.containerd_sockets.push(socket.clone());
        }
        fs::create_dir_all(&base)?;
        let template = fs::read_to_string(repo_root().join("deploy/config/containerd.toml"))
            .context("reading deploy/config/containerd.toml")?;
        let config = base.join("config.toml");
        fs::write(
            &config,
            template
                .replace(
                    "@CONTAINERD_ROOT@",
                    &base.join("root").display().to_string(),
                )
                .replace(
                    "@CONTAINERD_STATE@",
                    &base.join("state").display().to_string(),
                )
                .replace("@CONTAINERD_SOCKET@", &socket.display().to_string()),
        )?;
        let mut cmd = Command::new(find_in_path("containerd")?);
        cmd.arg("--config").arg(&config);
        // As under systemd (containerd.service is Type=notify): containerd
        // and so the shims it starts inherit NOTIFY_SOCKET. A runc started
        // with it waits in `runc start` for the container to say READY=1,
        // which a function never does: the shim must not pass it on.
        let notify = base.join("systemd-notify.sock");
        let _ = fs::remove_file(&notify);
        self.systemd_notify
            .push(std::os::unix::net::UnixDatagram::bind(&notify)?);
        cmd.env("NOTIFY_SOCKET", &notify);
        if let Ok(bin_dir) = bin_dir() {
            // containerd finds runtime shims (containerd-shim-faas-v1) on its PATH.
            let path = std::env::var_os("PATH").unwrap_or_default();
            let dirs = std::iter::once(bin_dir.clone()).chain(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(dirs)?);
        }
        let mut daemon = Daemon::spawn(&name, cmd, &self.log_path(&name))?;
        let ready = wait_until(READY_TIMEOUT, &mut daemon, || async {
            match containerd_client::connect(&socket).await {
                Ok(channel) => VersionClient::new(channel).version(()).await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
        self.daemons.push(daemon);
        ready
    }

    /// The containerd instance of the daemon called `name`, if it is one.
    fn containerd_socket_of(&self, name: &str) -> Option<&PathBuf> {
        (0..self.containerd_sockets.len())
            .find(|k| Stack::containerd_name(*k) == name)
            .map(|k| &self.containerd_sockets[k])
    }

    /// Index of the containerd instance agent `i` uses.
    pub fn agent_containerd(&self, i: usize) -> usize {
        if self.containerd_per_agent {
            i
        } else {
            0
        }
    }

    /// Socket of the containerd agent `i` uses.
    pub fn agent_containerd_socket(&self, i: usize) -> PathBuf {
        self.containerd_sockets[self.agent_containerd(i)].clone()
    }

    /// Number of containerd instances.
    pub fn containerd_count(&self) -> usize {
        self.containerd_sockets.len()
    }

    /// SIGKILLs containerd instance `k` and starts it again with the same
    /// config, root and state. The runc shims (and so the containers) keep
    /// running meanwhile: they are not in containerd's process group, and
    /// the new containerd reconnects to them (containerd's design).
    pub async fn restart_containerd(&mut self, k: usize) -> anyhow::Result<()> {
        let name = Stack::containerd_name(k);
        if let Some(pos) = self.daemons.iter().position(|d| d.name == name) {
            self.daemons.remove(pos).kill_now();
        }
        self.start_containerd(k).await
    }

    /// Scrapes `/metrics` of control-plane replica `i`.
    pub async fn controlplane_metrics(
        &self,
        i: usize,
    ) -> anyhow::Result<Vec<faas_metrics::Sample>> {
        scrape(&self.cp_metrics[i]).await
    }

    /// Scrapes `/metrics` of agent `i`.
    pub async fn agent_metrics(&self, i: usize) -> anyhow::Result<Vec<faas_metrics::Sample>> {
        scrape(&self.agent_metrics[i]).await
    }

    async fn spawn_controlplane(&mut self, i: usize) -> anyhow::Result<()> {
        let addr = self.cp_addrs[i].clone();
        let mut cmd = Command::new(self.bin("faas-controlplane"));
        cmd.arg("--listen")
            .arg(&addr)
            .arg("--etcd")
            .arg(self.controlplane_etcd_endpoints().join(","))
            .arg("--etcd-ca")
            .arg(self.etcd_pki().ca_cert())
            .arg("--etcd-cert")
            .arg(self.etcd_pki().client_cert())
            .arg("--etcd-key")
            .arg(self.etcd_pki().client_key())
            .arg("--registry")
            .arg(&self.registry_addr)
            .arg("--registry-token-dir")
            .arg(self.registry_pki())
            .arg("--secrets-key-file")
            .arg(self.secrets_key()?)
            .arg("--name")
            .arg(format!("cp-{i}"))
            .arg("--bootstrap-token-file")
            .arg(self.admin_token_file())
            .arg("--ca-out")
            .arg(self.ca_file())
            .arg("--metrics-listen")
            .arg(&self.cp_metrics[i]);
        if self.cp_addrs.len() > 1 {
            cmd.arg("--leader-ttl-secs").arg("2");
        }
        if let Some(policy) = &self.policy {
            cmd.arg("--policy").arg(policy);
        }
        cmd.args(&self.cp_args);
        cmd.env("RUST_LOG", rust_log());
        let name = if i == 0 {
            "controlplane".to_string()
        } else {
            format!("controlplane-{i}")
        };
        let mut daemon = Daemon::spawn(&name, cmd, &self.log_path(&name))?;
        let ready = wait_until(READY_TIMEOUT, &mut daemon, || async {
            tokio::net::TcpStream::connect(&addr).await.is_ok()
        })
        .await;
        self.controlplanes[i] = Some(daemon);
        ready
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) etcd: to the control plane it
    /// looks unreachable (connections hang) while its data stays intact.
    pub fn freeze_etcd(&self, frozen: bool) {
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        for daemon in self.daemons.iter().filter(|d| d.name.starts_with("etcd")) {
            let _ = nix::sys::signal::kill(daemon.pid(), signal);
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) agent `i`'s process, not its
    /// containers: to the leader the agent is connected but silent (its
    /// stream stays open, nothing comes on it).
    pub fn freeze_agent(&self, i: usize, frozen: bool) {
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        if let Some(daemon) = &self.agents[i] {
            let _ = nix::sys::signal::kill(daemon.pid(), signal);
        }
    }

    /// Deploys function `name` from `dir` (a directory, zip or tar.gz)
    /// with `faasctl fn deploy`, so the CLI's packing is exercised too;
    /// `extra` are more flags (`--timeout 1s`, `--handler ...`).
    pub fn deploy(
        &self,
        name: &str,
        runtime: &str,
        dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let out = self
            .faasctl()
            .args(["fn", "deploy", name, "--runtime", runtime])
            .args(extra)
            .arg(dir)
            .output()?;
        if !out.status.success() {
            bail!("deploy {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Every control-plane replica's URL, comma-separated (what agents and
    /// faasctl are given).
    pub fn endpoints(&self) -> String {
        self.cp_addrs
            .iter()
            .map(|a| format!("https://{a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The URL of control-plane replica `i`.
    pub fn controlplane_url(&self, i: usize) -> String {
        format!("https://{}", self.cp_addrs[i])
    }

    /// The cluster CA's certificate, as the control plane wrote it.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The bootstrap admin token's file.
    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.path().join("admin.token")
    }

    /// A channel to `url` with the admin token and a 5 s deadline.
    pub fn channel_to(&self, url: &str) -> Channel {
        self.auth.channel(url)
    }

    /// SIGKILLs control-plane replica `i`.
    pub fn kill_controlplane(&mut self, i: usize) {
        if let Some(mut daemon) = self.controlplanes[i].take() {
            daemon.kill_now();
        }
    }

    /// Stops control-plane replica `i` with SIGTERM (a clean stop: a leader
    /// resigns); true if it exited in time.
    pub async fn stop_controlplane(&mut self, i: usize) -> bool {
        match self.controlplanes[i].take() {
            Some(mut daemon) => daemon.stop(STOP_TIMEOUT).await,
            None => true,
        }
    }

    /// (Re)starts control-plane replica `i` on its old address.
    pub async fn start_controlplane(&mut self, i: usize) -> anyhow::Result<()> {
        if self.controlplanes[i].is_none() {
            self.spawn_controlplane(i).await?;
        }
        Ok(())
    }

    /// Index of the replica that leads now, as the election says (asked
    /// through any live replica).
    pub async fn leader_index(&self) -> anyhow::Result<usize> {
        for (i, cp) in self.controlplanes.iter().enumerate() {
            if cp.is_none() {
                continue;
            }
            let channel = self.channel_to(&self.controlplane_url(i));
            if let Ok(resp) = ClusterServiceClient::new(channel)
                .list_nodes(ListNodesRequest {})
                .await
            {
                let leader = resp.into_inner().leader;
                if let Some(j) =
                    (0..self.cp_addrs.len()).find(|j| self.controlplane_url(*j) == leader)
                {
                    return Ok(j);
                }
            }
        }
        bail!("no replica answers with a leader")
    }

    /// Node name of agent `i`.
    pub fn agent_node(&self, i: usize) -> String {
        format!("node-{i}")
    }

    /// containerd namespace of agent `i`.
    pub fn agent_namespace(&self, i: usize) -> String {
        if i == 0 {
            self.namespace.clone()
        } else {
            format!("{}-{i}", self.namespace)
        }
    }

    /// Private state directory of agent `i` (kept across restarts).
    pub fn agent_state_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{i}"))
    }

    fn spawn_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let state = self.agent_state_dir(i);
        fs::create_dir_all(&state)?;
        while self.agent_metrics.len() <= i {
            self.agent_metrics
                .push(format!("127.0.0.1:{}", free_port()?));
        }
        let mut cmd = Command::new(self.bin("faas-agent"));
        cmd.arg("--metrics-listen")
            .arg(&self.agent_metrics[i])
            .arg("--control-plane")
            .arg(self.endpoints())
            .arg("--node")
            .arg(self.agent_node(i))
            .arg("--spots")
            .arg(self.spots.to_string())
            .arg("--containerd")
            .arg(self.agent_containerd_socket(i))
            .arg("--namespace")
            .arg(self.agent_namespace(i))
            .arg("--state-dir")
            .arg(&state)
            .arg("--init-binary")
            .arg(self.bin("faas-init"))
            .env("RUST_LOG", rust_log());
        if let Some((token, ca_hash)) = &self.join {
            cmd.env("FAAS_JOIN_TOKEN", token)
                .env("FAAS_CA_HASH", ca_hash);
        }
        if let Some(config) = &self.agent_config {
            let file = state.join("agent.toml");
            fs::write(&file, config)?;
            cmd.arg("--config").arg(file);
        }
        let daemon = Daemon::spawn(
            &format!("agent-{i}"),
            cmd,
            &self.log_path(&format!("agent-{i}")),
        )?;
        self.agents[i] = Some(daemon);
        Ok(())
    }

    /// Starts a `faas-gateway` (the HTTP gateway) in front of every
    /// control-plane replica, on a free loopback port, with `args` added
    /// (e.g. `["--callback-allow-net", "127.0.0.1/32"]`). Returns its base
    /// URL, `http://127.0.0.1:<port>`. It is stopped with the stack; its
    /// log is `gateway-<n>`.
    pub async fn start_gateway(&mut self, args: &[&str]) -> anyhow::Result<String> {
        let bin = self.bin("faas-gateway");
        if !bin.is_file() {
            bail!("{} is missing: rebuild with tests/run.sh", bin.display());
        }
        let addr = format!("127.0.0.1:{}", free_port()?);
        let n = self
            .daemons
            .iter()
            .filter(|d| d.name.starts_with("gateway-"))
            .count();
        let name = format!("gateway-{n}");
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(&addr)
            .arg("--control-plane")
            .arg(self.endpoints())
            .arg("--ca-file")
            .arg(self.ca_file())
            .args(args)
            .env("RUST_LOG", rust_log());
        let mut daemon = Daemon::spawn(&name, cmd, &self.log_path(&name))?;
        let ready = wait_until(READY_TIMEOUT, &mut daemon, || async {
            tokio::net::TcpStream::connect(&addr).await.is_ok()
        })
        .await;
        self.daemons.push(daemon);
        ready?;
        Ok(format!("http://{addr}"))
    }

    /// A gRPC channel to the control plane (connects lazily).
    pub async fn channel(&self) -> Channel {
        self.auth
            .channel_with(&self.endpoint, Some(&self.auth.token), None)
    }

    /// `faasctl` pointed at this stack.
    pub fn faasctl(&self) -> Command {
        let mut cmd = Command::new(self.bin("faasctl"));
        cmd.arg("--endpoint")
            .arg(self.endpoints())
            .env("FAAS_ENDPOINT", self.endpoints())
            .env("FAAS_TOKEN", &self.auth.token)
            .env("FAAS_CA_FILE", self.ca_file())
            // Never the contexts of whoever runs the tests.
            .env("FAASCTL_CONFIG", self.dir.path().join("faasctl.toml"));
        cmd
    }

    /// `faasctl` pointed at this stack as the holder of `token`, run to
    /// its end.
    pub fn faasctl_as(&self, token: &str, args: &[&str]) -> std::process::Output {
        self.faasctl()
            .env("FAAS_TOKEN", token)
            .args(args)
            .output()
            .expect("faasctl runs")
    }

    /// `ClusterService.ListNodes`.
    pub async fn list_nodes(&self) -> anyhow::Result<ListNodesResponse> {
        let mut client = ClusterServiceClient::new(self.channel().await);
        Ok(client.list_nodes(ListNodesRequest {}).await?.into_inner())
    }

    /// Waits until every running agent is listed as connected.
    pub async fn wait_agents_connected(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for daemon in self
                .daemons
                .iter_mut()
                .chain(self.agents.iter_mut().flatten())
            {
                daemon.check_running()?;
            }
            let wanted: Vec<String> = (0..self.agents.len())
                .filter(|i| self.agents[*i].is_some())
                .map(|i| self.agent_node(i))
                .collect();
            let last = match self.list_nodes().await {
                Ok(nodes) => {
                    let connected: HashSet<&str> = nodes
                        .nodes
                        .iter()
                        .filter(|node| node.connected)
                        .map(|node| node.name.as_str())
                        .collect();
                    if wanted.iter().all(|name| connected.contains(name.as_str())) {
                        return Ok(());
                    }
                    format!("connected: {connected:?}, waiting for {wanted:?}")
                }
                Err(err) => format!("ListNodes: {err:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "agents not connected after {timeout:?} ({last})\n{}",
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills agent `i` with SIGKILL (a crash: it gets no chance to clean up).
    pub async fn kill_agent(&mut self, i: usize) {
        if let Some(mut daemon) = self.agents[i].take() {
            daemon.kill_now();
        }
    }

    /// Stops agent `i` with SIGTERM (a clean stop); true if it exited in time.
    pub async fn stop_agent(&mut self, i: usize) -> bool {
        match self.agents[i].take() {
            Some(mut daemon) => daemon.stop(STOP_TIMEOUT).await,
            None => true,
        }
    }

    /// (Re)starts agent `i` with its previous node name and state directory
    /// and waits until it is connected. Panics if it does not connect.
    pub async fn start_agent(&mut self, i: usize) {
        if self.agents[i].is_some() {
            return;
        }
        self.spawn_agent(i).expect("spawning faas-agent");
        if let Err(err) = self.wait_agents_connected(READY_TIMEOUT).await {
            panic!("agent {i} did not reconnect: {err:#}");
        }
    }

    /// Registers runtime `name` from `runtimes/<name>/runtime.toml` and `archive`
    /// (replacing an existing one).
    pub async fn register_runtime(&self, name: &str, archive: &Path) -> anyhow::Result<()> {
        self.register_runtime_as(name, name, archive, true).await
    }

    /// Registers shipped runtime `name` (its archive from
    /// `FAAS_RUNTIME_ARCHIVES`) again as `<name>-unbuilt`, without its build
    /// command: deploys store packages as uploaded. The control for what a
    /// deploy-time build changes.
    pub async fn register_unbuilt(&self, name: &str) -> anyhow::Result<String> {
        let (_, archive) = runtime_archives()?
            .into_iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("FAAS_RUNTIME_ARCHIVES has no archive for runtime {name}"))?;
        let unbuilt = format!("{name}-unbuilt");
        self.register_runtime_as(name, &unbuilt, &archive, false)
            .await?;
        Ok(unbuilt)
    }

    async fn register_runtime_as(
        &self,
        name: &str,
        as_name: &str,
        archive: &Path,
        with_build: bool,
    ) -> anyhow::Result<()> {
        let toml_path = repo_root().join("runtimes").join(name).join("runtime.toml");
        let definition: RuntimeToml = toml::from_str(
            &fs::read_to_string(&toml_path)
                .with_context(|| format!("reading {}", toml_path.display()))?,
        )
        .with_context(|| format!("parsing {}", toml_path.display()))?;
        self.register_runtime_spec(
            RuntimeSpec {
                name: if with_build {
                    definition.name
                } else {
                    as_name.to_string()
                },
                path: definition.path,
                dependencies: definition.dependencies,
                run: definition.run,
                default_handler: definition.default_handler,
                build: if with_build {
                    definition.build
                } else {
                    String::new()
                },
                build_only_with_dependencies: definition.build_only_with_dependencies,
                image_ref: String::new(),
                replace: true,
            },
            archive,
        )
        .await
    }

    /// Registers a runtime from `spec` and an image archive, streamed in
    /// 1 MiB chunks: runtime images are far above gRPC's message limit and
    /// need not sit in memory.
    pub async fn register_runtime_spec(
        &self,
        spec: RuntimeSpec,
        archive: &Path,
    ) -> anyhow::Result<()> {
        let name = spec.name.clone();
        let spec = RegisterRuntimeRequest {
            part: Some(register_runtime_request::Part::Spec(spec)),
        };
        let file = tokio::fs::File::open(archive)
            .await
            .with_context(|| format!("opening {}", archive.display()))?;
        let chunks = futures::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((
                        RegisterRuntimeRequest {
                            part: Some(register_runtime_request::Part::Chunk(buf)),
                        },
                        file,
                    ))
                }
            }
        });
        let requests = futures::stream::iter([spec]).chain(chunks);
        let mut client =
            RuntimeServiceClient::new(self.channel().await).max_decoding_message_size(64 << 20);
        client
            .register_runtime(requests)
            .await
            .with_context(|| format!("registering runtime {name}"))?;
        Ok(())
    }

    /// Containers, tasks, snapshots (other than committed image layers) and
    /// leases left in the agents' namespaces, as `"<kind> <id>"` strings
    /// (namespace appended for agents other than 0).
    pub async fn containerd_leftovers(&self) -> anyhow::Result<Vec<String>> {
        let mut channels: Vec<Option<tonic::transport::Channel>> =
            vec![None; self.containerd_sockets.len()];
        let mut found = Vec::new();
        for i in 0..self.agents.len().max(1) {
            let k = self.agent_containerd(i);
            let channel = match &channels[k] {
                Some(channel) => channel.clone(),
                None => {
                    let channel = containerd_client::connect(&self.containerd_sockets[k])
                        .await
                        .with_context(|| {
                            format!("connecting to the stack's {}", Stack::containerd_name(k))
                        })?;
                    channels[k] = Some(channel.clone());
                    channel
                }
            };
            let ns = self.agent_namespace(i);
            let suffix = if i == 0 {
                String::new()
            } else {
                format!(" (namespace {ns})")
            };
            let containers = ContainersClient::new(channel.clone())
                .list(with_namespace!(
                    ListContainersRequest { filters: vec![] },
                    ns
                ))
                .await?
                .into_inner()
                .containers;
            found.extend(
                containers
                    .into_iter()
                    .map(|c| format!("container {}{suffix}", c.id)),
            );
            let tasks = TasksClient::new(channel.clone())
                .list(with_namespace!(
                    ListTasksRequest {
                        filter: String::new()
                    },
                    ns
                ))
                .await?
                .into_inner()
                .tasks;
            found.extend(
                tasks
                    .into_iter()
                    .map(|t| format!("task {}{suffix}", t.container_id)),
            );
            let mut snapshots = SnapshotsClient::new(channel.clone())
                .list(with_namespace!(
                    ListSnapshotsRequest {
                        snapshotter: SNAPSHOTTER.to_string(),
                        filters: vec![]
                    },
                    ns
                ))
                .await?
                .into_inner();
            while let Some(page) = snapshots.next().await {
                for info in page?.info {
                    // Image layers are committed under their chain id and are
                    // meant to stay (the agent's image cache).
                    let image_layer =
                        info.kind == SnapshotKind::Committed as i32 && is_digest(&info.name);
                    if !image_layer {
                        found.push(format!("snapshot {}{suffix}", info.name));
                    }
                }
            }
            let leases = LeasesClient::new(channel.clone())
                .list(with_namespace!(
                    containerd_client::services::v1::ListRequest { filters: vec![] },
                    ns
                ))
                .await?
                .into_inner()
                .leases;
            found.extend(
                leases
                    .into_iter()
                    .map(|l| format!("lease {}{suffix}", l.id)),
            );
        }
        Ok(found)
    }

    /// Polls [`Stack::containerd_leftovers`] until it is empty; fails with
    /// the list if it is not within `within`.
    pub async fn assert_no_leftovers(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let leftovers = self.containerd_leftovers().await?;
            if leftovers.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("containerd leftovers after {within:?}: {leftovers:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the agents cleanly (SIGTERM), asserts they left nothing in
    /// containerd, then stops everything else. Everything is stopped even
    /// when the assertion fails.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shut_down = true;
        let mut problems = Vec::new();
        // Let the tear-down of the last calls (done after their replies)
        // finish first. Preloaded spots legitimately hold containers, so
        // this is not the check: the agents must remove those on SIGTERM.
        let _ = self.assert_no_leftovers(QUIESCE_GRACE).await;
        for i in 0..self.agents.len() {
            if !self.stop_agent(i).await {
                problems.push(format!(
                    "agent {i} did not exit within {STOP_TIMEOUT:?} of SIGTERM"
                ));
            }
        }
        if let Err(err) = self.assert_no_leftovers(LEFTOVER_GRACE).await {
            problems.push(format!("{err:#}"));
        }
        // What the agents left must not outlive the stack: kill and delete it
        // through the API before containerd goes away.
        for socket in &self.containerd_sockets {
            remove_containerd_leftovers(socket, &self.namespaces()).await;
        }
        for daemon in self.controlplanes.iter_mut() {
            if let Some(mut daemon) = daemon.take() {
                if !daemon.stop(STOP_TIMEOUT).await {
                    problems.push(format!(
                        "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM",
                        daemon.name
                    ));
                }
            }
        }
        while let Some(mut daemon) = self.daemons.pop() {
            if let Some(socket) = self.containerd_socket_of(&daemon.name) {
                kill_shims(socket);
            }
            if !daemon.stop(STOP_TIMEOUT).await {
                problems.push(format!(
                    "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM",
                    daemon.name
                ));
            }
        }
        unmount_under(self.dir.path());
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}\n{}", problems.join("\n"), self.log_tails())
        }
    }

    fn namespaces(&self) -> Vec<String> {
        (0..self.agents.len().max(1))
            .map(|i| self.agent_namespace(i))
            .collect()
    }

    /// The last lines of every log of the stack.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        let mut logs: Vec<PathBuf> = fs::read_dir(self.dir.path().join("logs"))
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            out.push_str(&format!(
                "----- {} (last {LOG_TAIL_LINES} lines)\n{}\n",
                log.display(),
                log_tail(&log, LOG_TAIL_LINES)
            ));
        }
        out
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.shut_down || std::thread::panicking() {
            eprintln!(
                "faas stack in {} dropped without a clean shutdown (test failed?):\n{}",
                self.dir.path().display(),
                self.log_tails()
            );
        }
        // Agents and the control plane first, so nothing creates containers
        // while containerd goes away.
        let namespaces = self.namespaces();
        for daemon in self.agents.iter_mut().flatten() {
            daemon.kill_now();
        }
        self.agents.clear();
        for daemon in self.controlplanes.iter_mut().flatten() {
            daemon.kill_now();
        }
        self.controlplanes.clear();
        let running_containerds: Vec<PathBuf> = self
            .daemons
            .iter()
            .filter_map(|daemon| self.containerd_socket_of(&daemon.name).cloned())
            .collect();
        for socket in running_containerds {
            remove_containerd_leftovers_blocking(socket, namespaces.clone());
        }
        while let Some(mut daemon) = self.daemons.pop() {
            if let Some(socket) = self.containerd_socket_of(&daemon.name) {
                kill_shims(socket);
            }
            daemon.kill_now();
        }
        unmount_under(self.dir.path());
        if std::env::var_os("FAAS_TEST_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("FAAS_TEST_KEEP: kept {}", self.dir.path().display());
        }
    }
}

/// Best effort: kills the tasks and deletes the containers in `namespaces`,
/// so that runc's state and the containers' cgroups go away with them.
async fn remove_containerd_leftovers(socket: &Path, namespaces: &[String]) {
    let Ok(channel) = containerd_client::connect(socket).await else {
        return;
    };
    for ns in namespaces {
        let ns = ns.as_str();
        let mut tasks = TasksClient::new(channel.clone());
        if let Ok(list) = tasks
            .list(with_namespace!(
                ListTasksRequest {
                    filter: String::new()
                },
                ns
            ))
            .await
        {
            for task in list.into_inner().tasks {
                let id = task.container_id;
                let _ = tasks
                    .kill(with_namespace!(
                        KillRequest {
                            container_id: id.clone(),
                            exec_id: String::new(),
                            signal: Signal::SIGKILL as u32,
                            all: true
                        },
                        ns
                    ))
                    .await;
                // Delete refuses a task that has not exited yet.
                for _ in 0..20 {
                    let deleted = tasks
                        .delete(with_namespace!(
                            DeleteTaskRequest {
                                container_id: id.clone()
                            },
                            ns
                        ))
                        .await;
                    if deleted.is_ok() || deleted.is_err_and(|e| e.code() == tonic::Code::NotFound)
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let mut containers = ContainersClient::new(channel.clone());
        if let Ok(list) = containers
            .list(with_namespace!(
                ListContainersRequest { filters: vec![] },
                ns
            ))
            .await
        {
            for container in list.into_inner().containers {
                let _ = containers
                    .delete(with_namespace!(
                        DeleteContainerRequest { id: container.id },
                        ns
                    ))
                    .await;
            }
        }
    }
}

/// Runs [`remove_containerd_leftovers`] from synchronous code (Drop), which
/// may itself be inside a tokio runtime: on a thread of its own, bounded.
fn remove_containerd_leftovers_blocking(socket: PathBuf, namespaces: Vec<String>) {
    let worker = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                remove_containerd_leftovers(&socket, &namespaces),
            )
            .await;
        });
    });
    let _ = worker.join();
}

fn rust_log() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string())
}

fn is_digest(name: &str) -> bool {
    name.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Polls `probe` every 100 ms until it holds; fails early if the daemon dies,
/// and with its log tail on timeout.
async fn wait_until<F, Fut>(
    timeout: Duration,
    daemon: &mut Daemon,
    mut probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        daemon.check_running()?;
        if probe().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(daemon.failure(&format!("not ready after {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parent pid of every process, from /proc.
fn process_parents() -> Vec<(i32, i32)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces: the fields after it follow the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// Kills the shims (runc's or faas's) of this containerd and every process below them (the
/// containers): the shims are not containerd's children, so killing containerd
/// alone would leave them, and their containers, running.
fn kill_shims(containerd_socket: &Path) {
    let socket = containerd_socket.display().to_string();
    let parents = process_parents();
    let shims: Vec<i32> = parents
        .iter()
        .map(|(pid, _)| *pid)
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| {
                a.ends_with(b"containerd-shim-runc-v2") || a.ends_with(b"containerd-shim-faas-v1")
            }) && args
                .windows(2)
                .any(|w| w[0] == b"-address" && w[1] == socket.as_bytes())
        })
        .collect();
    for shim in shims {
        // Children before parents, so none is re-parented out of reach.
        let mut tree = vec![shim];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(
                parents
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        for pid in tree.iter().rev() {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}

/// Lazily unmounts every mount point under `dir` (overlay rootfs, shim
/// mounts), deepest first, so the directory can be removed.
fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(|point| point.replace("\\040", " "))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Stack {
    /// Process id of agent `i`, while it runs (for watching its memory
    /// or freezing it).
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.agents.get(i)?.as_ref().map(|d| d.child.id())
    }

    /// Process id of control-plane replica `i`, while it runs.
    pub fn controlplane_pid(&self, i: usize) -> Option<u32> {
        self.controlplanes.get(i)?.as_ref().map(|d| d.child.id())
    }

    /// HTTP status of a GET of `path` on the stack's registry (e.g.
    /// `/v2/<repository>/manifests/<tag>`), accepting OCI and Docker
    /// manifests (without that, the registry answers 404 for an OCI
    /// manifest that exists).
    /// The request carries a token for the path's repository, as the
    /// control plane's requests do.
    pub async fn registry_status(&self, path: &str) -> anyhow::Result<u16> {
        let repository = path
            .strip_prefix("/v2/")
            .and_then(|rest| {
                ["/manifests/", "/blobs/", "/tags/"]
                    .iter()
                    .find_map(|sep| rest.split_once(sep).map(|(repo, _)| repo))
            })
            .ok_or_else(|| anyhow!("{path}: not a repository path"))?;
        let token = self.registry_token(repository)?;
        let accept = "application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json, */*";
        let (status, _) = self
            .registry_request("GET", path, Some(&token), &[("Accept", accept)])
            .await?;
        Ok(status)
    }
}

/// Resident memory of process `pid` (VmRSS), bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb << 10)
}

/// What a [`RssWatch`] saw.
#[derive(Debug, Clone, Copy)]
pub struct RssReport {
    /// Resident memory when the watch started, bytes.
    pub baseline: u64,
    /// Highest resident memory seen, bytes.
    pub peak: u64,
    /// The watch killed the process for passing its safety bound.
    pub killed: bool,
}

impl RssReport {
    /// Growth of the peak over the baseline, bytes.
    pub fn growth(&self) -> u64 {
        self.peak.saturating_sub(self.baseline)
    }
}

/// Samples a process's resident memory every 10 ms on a thread of its own
/// (an async task could miss a peak while the runtime is busy), keeping the
/// peak. An attack that makes a daemon allocate without end is stopped
/// before it takes the machine: past `kill_above` bytes the watch SIGKILLs
/// the process (a test's own daemon) and says so in its report.
pub struct RssWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<RssReport>>,
}

impl RssWatch {
    pub fn start(pid: u32, kill_above: u64) -> RssWatch {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let baseline = rss_bytes(pid).unwrap_or(0);
        let thread = std::thread::spawn(move || {
            let mut report = RssReport {
                baseline,
                peak: baseline,
                killed: false,
            };
            while !stopped.load(Ordering::Acquire) {
                let Some(rss) = rss_bytes(pid) else { break };
                report.peak = report.peak.max(rss);
                if rss > kill_above && !report.killed {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    report.killed = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            report
        });
        RssWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; what was seen.
    pub fn finish(mut self) -> RssReport {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("the sampler does not panic")
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}
