//! Package extraction in a child process, inside a cgroup of its own.
//!
//! A package archive is hostile: [`crate::packages`] bounds what it may
//! unpack (bytes, entries, depth, names, time), and this module bounds what
//! unpacking it may take from the node. The work runs in a child process of
//! this same binary (a cgroup v1 charges memory to a process, never to one
//! of its threads) placed in `/faas-agent/<namespace>.<state>/package-extract`
//! of every hierarchy (`<state>`: 12 hex digits of the SHA-256 of the
//! agent's state directory, so that two agents on one host, as in tests,
//! never share it while a restarted agent finds its own again): a memory limit (which also bounds the page cache its
//! writes dirty, so one big package cannot push the running calls' memory
//! out), a CPU quota and a pids limit. The child is killed at the deadline
//! whatever it is doing, and dies with the agent.
//!
//! The child does no work before it is in the cgroup: it reads its request
//! from stdin, which the agent writes only after moving it there. (No
//! `pre_exec` hook: this crate has no `unsafe`.)
//!
//! The cgroup sits outside `/faas/<namespace>`, the containers' tree, so
//! what a container uses and what the agent spends on packages are counted
//! apart.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::packages::{verify_and_extract, PackageError, Refusal, ShapeLimits};

/// `argv[1]` that makes `faas-agent` an extraction child.
pub const SUBCOMMAND: &str = "__extract-package";

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The period of the CPU quota, µs (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// How much longer than the extraction deadline the agent waits before it
/// kills the child (the child checks the deadline itself between entries).
const KILL_AFTER: Duration = Duration::from_secs(1);

/// Largest answer read from a child (a few hundred bytes of JSON).
const MAX_ANSWER_BYTES: u64 = 64 << 10;

/// What an extraction may take from the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JailLimits {
    /// Memory, page cache included, bytes [default: 256 MiB].
    pub memory_bytes: u64,
    /// CPU, thousandths of a CPU; 0 = unlimited [default: 1000].
    pub cpu_millis: u64,
    /// Processes and threads [default: 16].
    pub pids: u64,
}

impl Default for JailLimits {
    fn default() -> Self {
        JailLimits {
            memory_bytes: 256 << 20,
            cpu_millis: 1000,
            pids: 16,
        }
    }
}

/// What the agent asks of a child.
#[derive(Serialize, Deserialize)]
struct Request {
    blob: PathBuf,
    expected: String,
    dest: PathBuf,
    shape: ShapeLimits,
    timeout_ms: u64,
}

/// What a child answers.
#[derive(Debug, Serialize, Deserialize)]
enum Outcome {
    Extracted(u64),
    DigestMismatch(String),
    Refused(Refusal),
    Io(String),
}

/// Runs extractions in children, in the cgroup when there is one.
#[derive(Debug)]
pub struct Extractor {
    /// The agent's own binary.
    exe: PathBuf,
    /// One directory per cgroup hierarchy the children join; empty when
    /// none could be set up (not root, no cgroup filesystem).
    cgroups: Vec<PathBuf>,
}

impl Extractor {
    /// Sets up the cgroup of the extractions of the agent of `namespace`
    /// and `state_dir` with `limits`. Without one, extractions still run in
    /// a child, bounded in time and bytes but not in memory or CPU: said
    /// once, as a warning.
    pub fn new(namespace: &str, state_dir: &Path, limits: JailLimits) -> Extractor {
        let relative = cgroup_relative(namespace, state_dir);
        let cgroups = match set_up(Path::new(CGROUP_ROOT), &relative, limits) {
            Ok(dirs) => {
                info!(cgroup = %relative, ?limits, "package extraction runs in its own cgroup");
                dirs
            }
            Err(e) => {
                warn!(
                    cgroup = %relative,
                    error = %e,
                    "no cgroup for package extraction: it runs bounded in time and bytes only"
                );
                Vec::new()
            }
        };
        Extractor {
            // The running binary even if its file was replaced since (an
            // upgrade): the child speaks this agent's request format.
            exe: PathBuf::from("/proc/self/exe"),
            cgroups,
        }
    }

    /// Extractions in a child without a cgroup (unit tests).
    #[cfg(test)]
    pub(crate) fn unconfined() -> Extractor {
        Extractor {
            exe: PathBuf::from("/proc/self/exe"),
            cgroups: Vec::new(),
        }
    }

    /// Checks `blob` against `expected` and extracts it into `dest` (made
    /// by the child), within `shape` and `timeout`; the bytes the package
    /// takes in the cache.
    pub async fn extract(
        &self,
        blob: &Path,
        expected: &str,
        dest: &Path,
        shape: ShapeLimits,
        timeout: Duration,
    ) -> Result<u64, PackageError> {
        let failed = |what: String| PackageError::Extractor {
            digest: expected.to_string(),
            what,
        };
        let mut child = tokio::process::Command::new(&self.exe)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("starting the extraction process: {e}")))?;
        let pid = child
            .id()
            .ok_or_else(|| failed("the extraction process is gone".into()))?;
        for dir in &self.cgroups {
            // A few bytes into cgroupfs: no disk behind it, never blocks.
            if let Err(e) = std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                // Never unconfined when a cgroup exists: kill_on_drop ends it.
                return Err(failed(format!(
                    "moving the extraction process into {}: {e}",
                    dir.display()
                )));
            }
        }
        let request = Request {
            blob: blob.to_path_buf(),
            expected: expected.to_string(),
            dest: dest.to_path_buf(),
            shape,
            timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
        };
        let request = serde_json::to_vec(&request).expect("a request serializes");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let run = async {
            stdin.write_all(&request).await?;
            drop(stdin);
            let mut answer = Vec::new();
            (&mut stdout)
                .take(MAX_ANSWER_BYTES)
                .read_to_end(&mut answer)
                .await?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((answer, status))
        };
        let (answer, status) = match tokio::time::timeout(timeout + KILL_AFTER, run).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(failed(format!("talking to the extraction process: {e}"))),
            Err(_) => {
                // Dropping `run` dropped the child: killed (kill_on_drop).
                return Err(PackageError::Refused {
                    digest: expected.to_string(),
                    reason: Refusal::Timeout(timeout),
                });
            }
        };
        match serde_json::from_slice::<Outcome>(&answer) {
            Ok(Outcome::Extracted(bytes)) => Ok(bytes),
            Ok(Outcome::DigestMismatch(actual)) => Err(PackageError::DigestMismatch {
                expected: expected.to_string(),
                actual,
            }),
            Ok(Outcome::Refused(reason)) => Err(PackageError::Refused {
                digest: expected.to_string(),
                reason,
            }),
            Ok(Outcome::Io(what)) => Err(failed(what)),
            // Killed by its memory limit, or crashed: no answer.
            Err(_) => Err(failed(format!(
                "the extraction process ended without an answer ({status}; over its memory limit?)"
            ))),
        }
    }
}

/// The extraction cgroup of an agent, relative to each hierarchy's root.
pub fn cgroup_relative(namespace: &str, state_dir: &Path) -> String {
    use sha2::Digest as _;
    use std::os::unix::ffi::OsStrExt as _;
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_bytes());
    format!(
        "faas-agent/{namespace}.{}/package-extract",
        &hex::encode(digest)[..12]
    )
}

/// Creates the cgroup `relative` under `root` with `limits` in every
/// hierarchy it needs; the directories to join.
fn set_up(root: &Path, relative: &str, limits: JailLimits) -> std::io::Result<Vec<PathBuf>> {
    let write = |dir: &Path, file: &str, value: String| {
        std::fs::write(dir.join(file), &value).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("writing {value:?} to {}: {e}", dir.join(file).display()),
            )
        })
    };
    let quota = |unlimited: &str| match limits.cpu_millis {
        0 => unlimited.to_string(),
        m => (m * CPU_PERIOD_US / 1000).to_string(),
    };
    if root.join("cgroup.controllers").exists() {
        // cgroup v2: the controllers are enabled down the path first.
        let mut dir = root.to_path_buf();
        for part in Path::new(relative).iter() {
            write(&dir, "cgroup.subtree_control", "+memory +cpu +pids".into())?;
            dir.push(part);
            std::fs::create_dir_all(&dir)?;
        }
        write(&dir, "memory.max", limits.memory_bytes.to_string())?;
        write(&dir, "memory.swap.max", "0".into()).ok();
        write(&dir, "cpu.max", format!("{} {CPU_PERIOD_US}", quota("max")))?;
        write(&dir, "pids.max", limits.pids.to_string())?;
        return Ok(vec![dir]);
    }
    // cgroup v1: one directory per hierarchy; cpu and cpuacct may be one
    // hierarchy under two names.
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut seen = Vec::new();
    for controller in ["memory", "cpu", "cpuacct", "pids"] {
        let hierarchy = root.join(controller);
        let Ok(real) = hierarchy.canonicalize() else {
            if matches!(controller, "memory" | "cpu") {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "no {controller} cgroup hierarchy at {}",
                        hierarchy.display()
                    ),
                ));
            }
            continue;
        };
        if seen.contains(&real) {
            continue;
        }
        seen.push(real.clone());
        let dir = real.join(relative);
        std::fs::create_dir_all(&dir)?;
        if dir.join("memory.limit_in_bytes").exists() {
            write(
                &dir,
                "memory.limit_in_bytes",
                limits.memory_bytes.to_string(),
            )?;
        }
        if dir.join("cpu.cfs_quota_us").exists() {
            write(&dir, "cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
            write(&dir, "cpu.cfs_quota_us", quota("-1"))?;
        }
        if dir.join("pids.max").exists() {
            write(&dir, "pids.max", limits.pids.to_string())?;
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// The child's side: `faas-agent __extract-package`. Reads one request from
/// stdin, extracts, writes the outcome to stdout; the exit status.
pub fn child_main() -> i32 {
    // Dies with the agent, whatever happens to it.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let mut input = Vec::new();
    if std::io::stdin()
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut input)
        .is_err()
    {
        return 2;
    }
    let Ok(request) = serde_json::from_slice::<Request>(&input) else {
        return 2;
    };
    let timeout = Duration::from_millis(request.timeout_ms);
    let outcome = match verify_and_extract(
        &request.blob,
        &request.expected,
        &request.dest,
        &request.shape,
        Instant::now() + timeout,
        timeout,
    ) {
        Ok(bytes) => Outcome::Extracted(bytes),
        Err(PackageError::DigestMismatch { actual, .. }) => Outcome::DigestMismatch(actual),
        Err(PackageError::Refused { reason, .. }) => Outcome::Refused(reason),
        Err(e) => Outcome::Io(e.to_string()),
    };
    let answer = serde_json::to_vec(&outcome).expect("an outcome serializes");
    match std::io::stdout().write_all(&answer) {
        Ok(()) => 0,
        Err(_) => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_hierarchies_get_their_limits_once_each() {
        let root = tempfile::tempdir().unwrap();
        for controller in ["memory", "cpu,cpuacct", "pids"] {
            std::fs::create_dir_all(root.path().join(controller)).unwrap();
        }
        std::os::unix::fs::symlink("cpu,cpuacct", root.path().join("cpu")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", root.path().join("cpuacct")).unwrap();
        // The kernel makes these files in every new cgroup; here the test
        // makes them in the cgroup's place beforehand.
        let rel = "faas-agent/ns/package-extract";
        for (controller, files) in [
            ("memory", &["memory.limit_in_bytes"][..]),
            (
                "cpu,cpuacct",
                &["cpu.cfs_quota_us", "cpu.cfs_period_us"][..],
            ),
            ("pids", &["pids.max"][..]),
        ] {
            let dir = root.path().join(controller).join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            for f in files {
                std::fs::write(dir.join(f), "").unwrap();
            }
        }
        let limits = JailLimits {
            memory_bytes: 1 << 20,
            cpu_millis: 500,
            pids: 4,
        };
        let dirs = set_up(root.path(), rel, limits).unwrap();
        assert_eq!(dirs.len(), 3, "{dirs:?}");
        let read = |c: &str, f: &str| {
            std::fs::read_to_string(root.path().join(c).join(rel).join(f)).unwrap()
        };
        assert_eq!(read("memory", "memory.limit_in_bytes"), "1048576");
        assert_eq!(read("cpu,cpuacct", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu,cpuacct", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("pids", "pids.max"), "4");
    }

    #[test]
    fn each_agent_state_dir_has_its_own_cgroup() {
        let a = cgroup_relative("faas", Path::new("/var/lib/faas/agent"));
        assert_eq!(a, cgroup_relative("faas", Path::new("/var/lib/faas/agent")));
        assert_ne!(
            a,
            cgroup_relative("faas", Path::new("/tmp/stack-1/agent-0"))
        );
        assert!(a.starts_with("faas-agent/faas.") && a.ends_with("/package-extract"));
    }

    #[test]
    fn without_memory_or_cpu_hierarchies_there_is_no_jail() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("pids")).unwrap();
        assert!(set_up(root.path(), "x", JailLimits::default()).is_err());
    }

    #[test]
    fn outcomes_cross_the_pipe_intact() {
        for outcome in [
            Outcome::Extracted(42),
            Outcome::Refused(Refusal::Timeout(Duration::from_millis(1500))),
            Outcome::Refused(Refusal::Path("../x".into())),
        ] {
            let text = serde_json::to_vec(&outcome).unwrap();
            let back: Outcome = serde_json::from_slice(&text).unwrap();
            assert_eq!(format!("{outcome:?}"), format!("{back:?}"));
        }
    }
}
