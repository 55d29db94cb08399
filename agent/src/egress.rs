//! Calls with egress (`NetworkPolicy` MODE_EGRESS): a network namespace
//! of the call's own, plugged into the node's bridge by the CNI bridge
//! plugin, with nftables set elements that let it out as its allowlist
//! says. What the rules are lives in faas-egress (pure, unit-tested);
//! this runs it: `ip`, `bridge`, `nft` and the CNI plugin, each a process
//! spawned only for calls with egress (the default path spawns nothing).
//!
//! The ruleset is loaded at the first call with egress, not at start: a
//! node whose functions never ask for the network never touches the
//! host's firewall.
//!
//! Several agents may share a host (the bridge, the subnet, host-local's
//! state and the tables are the host's): loading the ruleset keeps the
//! elements other agents' calls hold, and each agent names what it makes
//! with a tag of its own (`faas-<tag>-<container>`: namespace files and
//! host-local's records), so that an agent cleaning up after an earlier
//! run of itself removes only its own. The elements a call adds are
//! written down first (`<state>/egress/<netns>`), so an agent that died
//! can take them out at its next start.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use faas_egress::allow::{parse_all, Destination};
use faas_egress::rules::{call_elements, CallElements, Plan, Reach};
use faas_egress::Ipv4Net;
use faas_proto::v1::NetworkPolicy;
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

/// Where the CNI plugins are (Debian's containernetworking-plugins).
pub const CNI_DIR: &str = "/usr/lib/cni";
/// The calls' subnet; the bridge holds its first address.
pub const SUBNET: &str = "10.231.0.0/16";
pub const BRIDGE: &str = "faas0";
/// host-local's state: on /run, so a reboot frees the addresses with the
/// namespaces that held them.
pub const IPAM_DIR: &str = "/run/faas/cni-ipam";
/// The CNI network's name (host-local keeps its addresses under it).
const CNI_NETWORK: &str = "faas-egress";
/// Where `ip netns add` puts namespace files.
const NETNS_DIR: &str = "/run/netns";
/// Any one step of the setup (a plugin, nft) longer than this fails it.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("{what}: {message}")]
    Step { what: String, message: String },
    #[error("the function's allowlist: {0}")]
    Allow(#[from] faas_egress::AllowError),
    #[error("the CNI result: {0}")]
    Result(#[from] faas_egress::cni::ResultError),
}

fn step(what: impl Into<String>, message: impl ToString) -> EgressError {
    EgressError::Step {
        what: what.into(),
        message: message.to_string(),
    }
}

/// One call's network, undone by [`Egress::detach`].
#[derive(Debug)]
pub struct CallNetwork {
    /// The namespace file the container joins.
    pub netns: PathBuf,
    /// The `resolv.conf` bound read-only at /etc/resolv.conf.
    pub resolv_conf: PathBuf,
    name: String,
    elements: Option<CallElements>,
}

/// The node's egress: its plan and the CNI configuration that follows
/// from it, made once.
pub struct Egress {
    plan: tokio::sync::OnceCell<(Plan, String)>,
    /// `faas-<tag>-`: the start of every name this agent gives.
    prefix: String,
    /// Where the `delete` of each live call's elements is kept.
    records: PathBuf,
}

/// Does this function's policy ask for the network?
pub fn wants_egress(policy: Option<&NetworkPolicy>) -> bool {
    policy.is_some_and(|p| p.mode() == faas_proto::v1::network_policy::Mode::Egress)
}

impl Egress {
    /// The egress of the agent that owns containerd namespace `owner`
    /// (unique among the agents of a host), keeping its records under
    /// `state_dir`.
    pub fn new(owner: &str, state_dir: &Path) -> Egress {
        Egress {
            plan: Default::default(),
            prefix: owner_prefix(owner),
            records: state_dir.join("egress"),
        }
    }

    /// Plugs container `id` into the bridge as `policy` allows; files of
    /// its own go in `dir`.
    pub async fn attach(
        &self,
        id: &str,
        policy: &NetworkPolicy,
        dir: &Path,
    ) -> Result<CallNetwork, EgressError> {
        let allow = parse_all(&policy.allow)?;
        let (plan, config) = self.plan().await?;
        let name = format!("{}{id}", self.prefix);
        let mut net = CallNetwork {
            netns: Path::new(NETNS_DIR).join(&name),
            resolv_conf: dir.join("resolv.conf"),
            name: name.clone(),
            elements: None,
        };
        let attached = async {
            run("ip netns add", "ip", &["netns", "add", &name], None).await?;
            let result = cni("ADD", &net, config).await?;
            let call = faas_egress::cni::parse_result(&result, &plan.bridge)?;
            run(
                "loopback up",
                "ip",
                &["-n", &name, "link", "set", "lo", "up"],
                None,
            )
            .await?;
            // Frames between two calls' ports never cross the bridge.
            run(
                "port isolation",
                "bridge",
                &["link", "set", "dev", &call.veth, "isolated", "on"],
                None,
            )
            .await?;
            let reach = if allow.is_empty() {
                Reach::Public
            } else {
                Reach::Only(resolve(&allow).await)
            };
            let elements = call_elements(&call, &reach);
            // Written down before they exist: whatever happens next, the
            // agent can take them out again.
            self.record(&name, &elements.delete).await?;
            run(
                "nft call elements",
                "nft",
                &["-f", "-"],
                Some(&elements.add),
            )
            .await?;
            net.elements = Some(elements);
            let resolv = faas_egress::resolv::resolv_conf(&plan.dns);
            tokio::fs::write(&net.resolv_conf, resolv)
                .await
                .map_err(|e| step("writing resolv.conf", e))?;
            Ok::<_, EgressError>(())
        }
        .await;
        match attached {
            Ok(()) => Ok(net),
            Err(e) => {
                self.detach(net).await;
                Err(e)
            }
        }
    }

    /// Undoes [`Egress::attach`] (each step whatever the others did).
    pub async fn detach(&self, net: CallNetwork) {
        if let Some(elements) = &net.elements {
            match run("nft", "nft", &["-f", "-"], Some(&elements.delete)).await {
                Ok(_) => {
                    let _ = tokio::fs::remove_file(self.records.join(&net.name)).await;
                }
                // The record stays: the next start tries again.
                Err(e) => {
                    warn!(error = %e, netns = %net.name, "removing a call's nft elements failed")
                }
            }
        } else {
            let _ = tokio::fs::remove_file(self.records.join(&net.name)).await;
        }
        if let Some((_, config)) = self.plan.get() {
            if let Err(e) = cni("DEL", &net, config).await {
                warn!(error = %e, netns = %net.name, "CNI DEL failed");
            }
        }
        if let Err(e) = run("ip netns del", "ip", &["netns", "del", &net.name], None).await {
            warn!(error = %e, netns = %net.name, "removing a call's network namespace failed");
        }
    }

    /// The plan, made and its ruleset loaded at the first call.
    async fn plan(&self) -> Result<&(Plan, String), EgressError> {
        self.plan
            .get_or_try_init(|| async {
                let subnet: Ipv4Net = SUBNET.parse().expect("a constant subnet");
                let (node_networks, mtu) = host_networks().await?;
                let plan = Plan {
                    bridge: BRIDGE.into(),
                    subnet,
                    dns: resolvers(),
                    node_networks,
                };
                if let Err(e) = run("nft ruleset", "nft", &["-f", "-"], Some(&plan.ruleset())).await
                {
                    // The tables as they are cannot take this ruleset (a
                    // set's type changed between versions): replace them,
                    // and with them every call's elements on this host.
                    warn!(error = %e, "loading the egress ruleset beside what is there failed; replacing faas's tables");
                    run(
                        "nft ruleset (replacing)",
                        "nft",
                        &["-f", "-"],
                        Some(&plan.ruleset_replacing()),
                    )
                    .await?;
                }
                // The bridge plugin turns it on anyway (isGateway); said
                // here so that it is not a surprise.
                tokio::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n")
                    .await
                    .map_err(|e| step("ip_forward", e))?;
                info!(subnet = %plan.subnet, dns = ?plan.dns, mtu, "egress ruleset loaded");
                let config = faas_egress::cni::bridge_config(
                    CNI_NETWORK,
                    &plan.bridge,
                    plan.subnet,
                    plan.gateway(),
                    mtu,
                    IPAM_DIR,
                );
                Ok((plan, config))
            })
            .await
    }
}

/// Resolves the allowlist: networks as they are, host names to every
/// IPv4 address they have now (a name that does not resolve adds
/// nothing: DNS stays open, the rest closed).
async fn resolve(allow: &[faas_egress::Allow]) -> Vec<(Ipv4Net, faas_egress::PortRange)> {
    let mut out = Vec::new();
    for entry in allow {
        match &entry.destination {
            Destination::Net(net) => out.push((*net, entry.ports)),
            Destination::Host(host) => {
                let lookup = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::lookup_host((host.as_str(), entry.ports.first)),
                )
                .await;
                match lookup {
                    Ok(Ok(addrs)) => {
                        for addr in addrs {
                            if let SocketAddr::V4(v4) = addr {
                                out.push((Ipv4Net::host(*v4.ip()), entry.ports));
                            }
                        }
                    }
                    Ok(Err(e)) => warn!(host, error = %e, "an allowlisted host does not resolve"),
                    Err(_) => warn!(host, "resolving an allowlisted host timed out"),
                }
            }
        }
    }
    out
}

/// The host's resolvers a call can reach.
fn resolvers() -> Vec<Ipv4Addr> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let servers = faas_egress::resolv::nameservers(&read("/etc/resolv.conf"));
    if servers.is_empty() {
        // systemd-resolved's stub (127.0.0.53): its upstreams.
        faas_egress::resolv::nameservers(&read("/run/systemd/resolve/resolv.conf"))
    } else {
        servers
    }
}

/// The networks of the host's own IPv4 addresses (denied to calls with no
/// allowlist) and the MTU of the interface of its default route.
async fn host_networks() -> Result<(Vec<Ipv4Net>, u32), EgressError> {
    let addrs = output("ip", &["-4", "-o", "addr", "show"]).await?;
    let subnet: Ipv4Net = SUBNET.parse().expect("a constant subnet");
    let mut networks = Vec::new();
    for line in addrs.lines() {
        // "2: eth0    inet 192.0.2.2/24 brd ... scope global eth0"
        let mut words = line.split_whitespace();
        let Some(cidr) = words.find(|w| *w == "inet").and_then(|_| words.next()) else {
            continue;
        };
        let Some((addr, prefix)) = cidr.split_once('/') else {
            continue;
        };
        let (Ok(addr), Ok(prefix)) = (addr.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else {
            continue;
        };
        if addr.is_loopback() || subnet.contains(addr) {
            continue;
        }
        if let Some(net) = Ipv4Net::new(addr, prefix) {
            networks.push(net);
        }
    }
    let route = output("ip", &["-4", "route", "show", "default"]).await?;
    let dev = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .map(str::to_string);
    let mtu = match dev {
        Some(dev) => std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu"))
            .ok()
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(1500),
        None => 1500,
    };
    Ok((networks, mtu))
}

/// Runs the CNI bridge plugin.
async fn cni(command: &str, net: &CallNetwork, config: &str) -> Result<String, EgressError> {
    let plugin = Path::new(CNI_DIR).join("bridge");
    let mut child = tokio::process::Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        // The namespace's name, tag included: host-local writes it beside
        // each address it hands out, which tells whose the address is.
        .env("CNI_CONTAINERID", &net.name)
        .env("CNI_NETNS", &net.netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_DIR)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| step(format!("CNI {command} ({})", plugin.display()), e))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(config.as_bytes())
        .await
        .map_err(|e| step(format!("CNI {command}"), e))?;
    drop(stdin);
    let out = tokio::time::timeout(STEP_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| step(format!("CNI {command}"), "timed out"))?
        .map_err(|e| step(format!("CNI {command}"), e))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        // CNI errors come as JSON on stdout.
        return Err(step(
            format!("CNI {command}"),
            format!(
                "{}: {} {}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(stdout)
}

/// Runs a tool to completion, with `input` on its stdin.
async fn run(
    what: &str,
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, EgressError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| step(what, format!("{program}: {e}")))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|e| step(what, e))?;
    }
    let out = tokio::time::timeout(STEP_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| step(what, "timed out"))?
        .map_err(|e| step(what, e))?;
    if !out.status.success() {
        return Err(step(
            what,
            format!(
                "{program} {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn output(program: &str, args: &[&str]) -> Result<String, EgressError> {
    run(program, program, args, None).await
}

/// `faas-<tag>-`, the tag a digest of the agent's containerd namespace:
/// fixed length, so no agent's prefix starts another's.
fn owner_prefix(owner: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(owner.as_bytes());
    let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("faas-{tag}-")
}

/// At most this much of a record or a host-local file is read.
const RECORD_LIMIT: u64 = 64 * 1024;

impl Egress {
    async fn record(&self, name: &str, delete: &str) -> Result<(), EgressError> {
        tokio::fs::create_dir_all(&self.records)
            .await
            .map_err(|e| step("the egress records directory", e))?;
        tokio::fs::write(self.records.join(name), delete)
            .await
            .map_err(|e| step("recording a call's elements", e))
    }

    /// Removes what an earlier run of this agent left (its containers are
    /// gone: the agent cleans its containerd namespace first): the
    /// elements it recorded, its network namespaces and host-local's
    /// addresses given to them. Other agents' are left alone.
    pub async fn cleanup_leftovers(&self) {
        if let Ok(mut records) = tokio::fs::read_dir(&self.records).await {
            while let Ok(Some(entry)) = records.next_entry().await {
                let path = entry.path();
                // Written by this agent into its own 0700 state
                // directory; still read with a bound.
                if let Ok(delete) = read_bounded(&path).await {
                    // Fails when the elements are gone already (a reboot,
                    // or a crash between the record and the add).
                    if let Err(e) = run("nft", "nft", &["-f", "-"], Some(&delete)).await {
                        info!(error = %e, record = %path.display(), "a leftover call's elements were already gone");
                    }
                }
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
        if let Ok(mut entries) = tokio::fs::read_dir(NETNS_DIR).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&self.prefix) {
                    if let Err(e) = run("ip netns del", "ip", &["netns", "del", &name], None).await
                    {
                        warn!(error = %e, netns = %name, "removing a leftover network namespace failed");
                    }
                }
            }
        }
        // host-local keeps one file per address, named by it, holding the
        // container id it was given (our namespace names).
        let addresses = Path::new(IPAM_DIR).join(CNI_NETWORK);
        if let Ok(mut entries) = tokio::fs::read_dir(&addresses).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let path = entry.path();
                let is_address = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<Ipv4Addr>().is_ok());
                if !is_address {
                    continue;
                }
                if read_bounded(&path)
                    .await
                    .is_ok_and(|owner| owner.starts_with(&self.prefix))
                {
                    let _ = tokio::fs::remove_file(&path).await;
                }
            }
        }
    }
}

async fn read_bounded(path: &Path) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    let mut text = String::new();
    file.take(RECORD_LIMIT).read_to_string(&mut text).await?;
    Ok(text)
}
