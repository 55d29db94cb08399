//! The OCI runtime spec of a one-call container: least privilege first.
//!
//! Mirrors containerd's default Linux spec (`oci.WithDefaultSpec`: mounts,
//! masked and read-only paths, deny-all device cgroup) and then takes away
//! more: no capabilities at all, `no_new_privileges`, the uid/gid the agent
//! hands out (one per container, never root), a read-only root with a
//! bounded tmpfs on `/tmp`, a new network namespace
//! with only loopback, a seccomp filter denying what a function never needs
//! (see [`seccomp`]), no core dumps, and memory/swap/pids/cpu limits.
//! docs/isolation.md explains the threat model these choices answer.

use std::collections::HashSet;
use std::path::PathBuf;

use oci_spec::runtime::Arch;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder, Mount,
    MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder,
    Spec, SpecBuilder, UserBuilder,
};

use crate::{ContainerSpec, DriverError, DEFAULT_TMP_BYTES};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period for the CPU quota: 100 ms, so 1 CPU = 100 000 µs of quota.
const CPU_PERIOD_US: u64 = 100_000;
const NOFILE_LIMIT: u64 = 1024;

/// containerd 1.6's default masked paths (oci/spec.go), plus powercap
/// (containerd 1.7): its energy counters are a side channel (PLATYPUS).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
    "/sys/devices/virtual/powercap",
];

/// containerd 1.6's default read-only paths (oci/spec.go).
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// `errno` values the filter returns (x86_64 and aarch64 share them).
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Syscalls no function needs, denied with EPERM. Most already fail without
/// capabilities; the filter is the second wall for when a kernel bug or a
/// user namespace would hand them back, and it closes the ones that need no
/// capability at all (user namespaces, keyrings, userfaultfd, ptrace of a
/// sibling, the new mount API, perf).
const DENIED_SYSCALLS: &[&str] = &[
    // Mounts and the filesystem tree.
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    // Namespaces: entering or making them (clone's flags are filtered below).
    "unshare",
    "setns",
    // Other processes' memory.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    // Kernel keyrings (not namespaced).
    "keyctl",
    "add_key",
    "request_key",
    // Kernel programmability and introspection.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "lookup_dcookie",
    "syslog",
    // Modules, kexec, power.
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    // Host-wide state: swap, clocks, names, accounting, quotas.
    "swapon",
    "swapoff",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "stime",
    "sethostname",
    "setdomainname",
    "acct",
    "quotactl",
    "quotactl_fd",
    "nfsservctl",
    "_sysctl",
    "sysfs",
    "ustat",
    "uselib",
    "vhangup",
    // File handles bypass path permissions (the "shocker" escape).
    "open_by_handle_at",
    "name_to_handle_at",
    // Raw hardware access.
    "iopl",
    "ioperm",
    "modify_ldt",
    "vm86",
    "vm86old",
];

/// Syscalls denied with ENOSYS, so that callers take their fallback path as
/// on an older kernel: clone3 (its flags are in memory, out of a filter's
/// reach; glibc falls back to clone, whose flags are filtered) and io_uring
/// (a large, bug-prone kernel surface that bypasses per-syscall filtering;
/// libuv and others fall back to threads).
const UNSUPPORTED_SYSCALLS: &[&str] = &[
    "clone3",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// clone(2) flags that make new namespaces: a process may create threads and
/// children, not namespaces (above all not a user namespace, in which it
/// would hold every capability and could mount).
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// Socket domains denied: link-layer packet sockets (sniffing and forging
/// frames) and vsock (a channel to the hypervisor host, outside the network
/// namespace).
const DENIED_SOCKET_DOMAINS: &[u64] = &[
    17, // AF_PACKET
    40, // AF_VSOCK
];

/// Raw IP sockets (forging packets), denied in these domains: IPv4, IPv6.
/// Raw netlink sockets stay allowed: getifaddrs() and if_nameindex() (so
/// Python's socket module and Node's os.networkInterfaces()) need them.
const RAW_SOCKET_DOMAINS: &[u64] = &[
    2,  // AF_INET
    10, // AF_INET6
];
/// Socket types denied in [`RAW_SOCKET_DOMAINS`], compared to the type
/// without its SOCK_NONBLOCK / SOCK_CLOEXEC flags.
const DENIED_SOCKET_TYPES: &[u64] = &[
    3,  // SOCK_RAW
    10, // SOCK_PACKET
];
/// The type bits of socket(2)'s second argument.
const SOCK_TYPE_MASK: u64 = 0xf;

/// personality(2) flags denied: turning ASLR off, making data executable,
/// mapping page zero (all weaken exploit mitigations of the process). The
/// "query" call personality(0xffffffff) has every bit set and is denied too.
const DENIED_PERSONALITY_FLAGS: &[u64] = &[
    0x0004_0000, // ADDR_NO_RANDOMIZE
    0x0010_0000, // MMAP_PAGE_ZERO
    0x0040_0000, // READ_IMPLIES_EXEC
];

/// One rule per masked bit: runc turns several conditions on the same
/// argument into separate rules (OR), which is what "any of these bits"
/// needs.
fn deny_when_any_bit(
    name: &str,
    arg: usize,
    bits: &[u64],
    mask: Option<u64>,
    errno: u32,
) -> Result<LinuxSyscall, oci_spec::OciSpecError> {
    let args = bits
        .iter()
        .map(|&bit| {
            LinuxSeccompArgBuilder::default()
                .index(arg)
                .value(mask.unwrap_or(bit))
                .value_two(bit)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    LinuxSyscallBuilder::default()
        .names(vec![name.to_string()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno)
        .args(args)
        .build()
}

fn deny_all(names: &[&str], errno: u32) -> Result<LinuxSyscall, oci_spec::OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno)
        .build()
}

/// The seccomp filter of every container: allow by default, deny a list.
///
/// A deny list rather than Docker's allow list: the runtimes are
/// interpreters running arbitrary user code whose needs are open-ended, and
/// what is dangerous is a short, known set. The filter covers the 32-bit
/// x86 and x32 ABIs too (a 64-bit process can issue `int 0x80`); names a
/// given ABI does not have are skipped by runc. Threads and forks keep
/// working: clone without namespace flags is allowed.
pub(crate) fn seccomp() -> Result<LinuxSeccomp, oci_spec::OciSpecError> {
    let mut syscalls = vec![
        deny_all(DENIED_SYSCALLS, EPERM)?,
        deny_all(UNSUPPORTED_SYSCALLS, ENOSYS)?,
        deny_when_any_bit("clone", 0, CLONE_NAMESPACE_FLAGS, None, EPERM)?,
        deny_when_any_bit("personality", 0, DENIED_PERSONALITY_FLAGS, None, EPERM)?,
    ];
    for &domain in DENIED_SOCKET_DOMAINS {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["socket".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(EPERM)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(domain)
                    .op(LinuxSeccompOperator::ScmpCmpEq)
                    .build()?])
                .build()?,
        );
    }
    // Conditions on two arguments of one rule must all hold (AND).
    for &domain in RAW_SOCKET_DOMAINS {
        for &typ in DENIED_SOCKET_TYPES {
            syscalls.push(
                LinuxSyscallBuilder::default()
                    .names(vec!["socket".to_string()])
                    .action(LinuxSeccompAction::ScmpActErrno)
                    .errno_ret(EPERM)
                    .args(vec![
                        LinuxSeccompArgBuilder::default()
                            .index(0usize)
                            .value(domain)
                            .op(LinuxSeccompOperator::ScmpCmpEq)
                            .build()?,
                        LinuxSeccompArgBuilder::default()
                            .index(1usize)
                            .value(SOCK_TYPE_MASK)
                            .value_two(typ)
                            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                            .build()?,
                    ])
                    .build()?,
            );
        }
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(syscalls)
        .build()
}

/// Resource limits of the container's processes. No RLIMIT_NPROC: it counts
/// every process of the uid on the whole host, and the pids cgroup bounds
/// processes per container already (each container has its own uid too).
fn rlimits() -> Result<Vec<PosixRlimit>, oci_spec::OciSpecError> {
    [
        (PosixRlimitType::RlimitNofile, NOFILE_LIMIT),
        // No core dumps: they would land in the scratch space or the cwd.
        (PosixRlimitType::RlimitCore, 0),
    ]
    .into_iter()
    .map(|(typ, limit)| {
        PosixRlimitBuilder::default()
            .typ(typ)
            .hard(limit)
            .soft(limit)
            .build()
    })
    .collect()
}

/// The cgroup (relative to each controller's root) a container runs in.
pub(crate) fn cgroup_path(namespace: &str, id: &str) -> String {
    format!("/faas/{namespace}/{id}")
}

/// `KEY=value` entries of `overrides` replace those of `base` with the same
/// key, others are appended (containerd's `replaceOrAppendEnvValues`).
fn merge_env(base: &mut Vec<String>, overrides: &[String]) {
    for entry in overrides {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        match base
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(existing) => existing.clone_from(entry),
            None => base.push(entry.clone()),
        }
    }
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, String> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| e.to_string())
}

pub(crate) fn build(spec: &ContainerSpec, namespace: &str) -> Result<Spec, DriverError> {
    build_inner(spec, namespace).map_err(|reason| DriverError::Spec {
        id: spec.id.clone(),
        reason,
    })
}

fn build_inner(spec: &ContainerSpec, namespace: &str) -> Result<Spec, String> {
    if spec.uid == 0 || spec.gid == 0 {
        // Containers never run as root: the spec has no user namespace.
        return Err("a container must not run as uid or gid 0".into());
    }
    let err = |e: oci_spec::OciSpecError| e.to_string();

    let mut env = vec![DEFAULT_PATH.to_string()];
    merge_env(&mut env, &spec.image.env);
    merge_env(&mut env, &spec.env);

    let cwd = if !spec.cwd.is_empty() {
        spec.cwd.clone()
    } else {
        spec.image.working_dir.clone().unwrap_or_else(|| "/".into())
    };

    let no_caps: HashSet<Capability> = HashSet::new();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(no_caps.clone())
        .effective(no_caps.clone())
        .inheritable(no_caps.clone())
        .permitted(no_caps.clone())
        .ambient(no_caps)
        .build()
        .map_err(err)?;

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(spec.uid)
                .gid(spec.gid)
                .build()
                .map_err(err)?,
        )
        .args(spec.args.clone())
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(rlimits().map_err(err)?)
        .no_new_privileges(true)
        .build()
        .map_err(err)?;

    let tmp_bytes = if spec.limits.tmp_bytes == 0 {
        DEFAULT_TMP_BYTES
    } else {
        spec.limits.tmp_bytes
    };
    let tmp_size = format!("size={tmp_bytes}");
    // runc gives a tmpfs the mode of the directory it covers (0755 in some
    // images): owning it makes /tmp writable for the process in any case.
    let tmp_owner = format!("uid={},gid={}", spec.uid, spec.gid);
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/run",
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/tmp",
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=1777", &tmp_owner, &tmp_size],
        )?,
    ];
    for bind in &spec.mounts {
        if !bind.destination.starts_with('/') {
            return Err(format!(
                "bind mount destination {:?} is not absolute",
                bind.destination
            ));
        }
        let access = if bind.readonly { "ro" } else { "rw" };
        let source = bind
            .source
            .to_str()
            .ok_or_else(|| format!("bind mount source {:?} is not UTF-8", bind.source))?;
        mounts.push(mount(
            &bind.destination,
            "bind",
            source,
            &["rbind", "rprivate", "nosuid", "nodev", access],
        )?);
    }

    let mut resources = LinuxResourcesBuilder::default().devices(vec![
        // Deny every device; runc still allows its standard set (null, zero,
        // full, random, urandom, tty, ptmx), as with containerd's default.
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(err)?,
    ]);
    if spec.limits.memory_bytes > 0 {
        let limit = i64::try_from(spec.limits.memory_bytes).map_err(|e| e.to_string())?;
        // swap = limit: memory+swap may not exceed the limit, i.e. no swap.
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()
                .map_err(err)?,
        );
    }
    if spec.limits.cpu_millis > 0 {
        let quota = i64::from(spec.limits.cpu_millis) * (CPU_PERIOD_US as i64) / 1000;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()
                .map_err(err)?,
        );
    }
    if spec.limits.pids > 0 {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(i64::from(spec.limits.pids))
                .build()
                .map_err(err)?,
        );
    }

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        // A new network namespace with nothing in it: no route anywhere;
        // or, for a call with egress, the one prepared for it.
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| {
        let mut ns = LinuxNamespaceBuilder::default().typ(typ);
        if let (LinuxNamespaceType::Network, Some(path)) = (typ, &spec.network_namespace) {
            ns = ns.path(path.clone());
        }
        ns.build()
    })
    .collect::<Result<Vec<_>, _>>()
    .map_err(err)?;

    let linux = LinuxBuilder::default()
        .resources(resources.build().map_err(err)?)
        .cgroups_path(PathBuf::from(cgroup_path(namespace, &spec.id)))
        .namespaces(namespaces)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .seccomp(seccomp().map_err(err)?)
        .build()
        .map_err(err)?;

    SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(true)
                .build()
                .map_err(err)?,
        )
        .process(process)
        .hostname(spec.hostname.clone())
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BindMount, ImageInfo, Limits};

    fn sample() -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            image: ImageInfo {
                reference: "r".into(),
                manifest_digest: "sha256:m".into(),
                chain_id: "sha256:c".into(),
                env: vec!["PATH=/bin".into(), "LANG=C".into()],
                working_dir: Some("/w".into()),
            },
            args: vec!["/bin/echo".into(), "hi".into()],
            env: vec!["LANG=C.UTF-8".into(), "X=1".into()],
            cwd: String::new(),
            hostname: "spot".into(),
            mounts: vec![BindMount {
                source: "/host/io".into(),
                destination: "/faas/io".into(),
                readonly: false,
            }],
            stdio_path: "/tmp/x".into(),
            limits: Limits {
                memory_bytes: 128 << 20,
                cpu_millis: 500,
                pids: 64,
                tmp_bytes: 0,
            },
            uid: 200_123,
            gid: 200_123,
            network_namespace: None,
        }
    }

    #[test]
    fn spec_is_least_privilege() {
        let spec = build(&sample(), "faas").unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let process = &json["process"];
        assert_eq!(process["user"]["uid"], 200_123);
        assert_eq!(process["user"]["gid"], 200_123);
        assert_eq!(process["noNewPrivileges"], true);
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            assert_eq!(process["capabilities"][set], serde_json::json!([]), "{set}");
        }
        assert_eq!(
            process["env"],
            serde_json::json!(["PATH=/bin", "LANG=C.UTF-8", "X=1"])
        );
        assert_eq!(process["cwd"], "/w");
        assert_eq!(json["root"]["readonly"], true);
        let linux = &json["linux"];
        assert_eq!(linux["resources"]["memory"]["limit"], 128 << 20);
        assert_eq!(linux["resources"]["memory"]["swap"], 128 << 20);
        assert_eq!(linux["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(linux["resources"]["pids"]["limit"], 64);
        assert_eq!(linux["cgroupsPath"], "/faas/faas/c1");
        assert_eq!(linux["namespaces"].as_array().unwrap().len(), 6);
        let tmp = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/tmp")
            .unwrap();
        assert!(tmp["options"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(format!("size={DEFAULT_TMP_BYTES}"))));
        // /tmp belongs to the container's own uid.
        assert!(tmp["options"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("uid=200123,gid=200123")));
    }

    #[test]
    fn root_is_refused() {
        let mut spec = sample();
        spec.uid = 0;
        assert!(build(&spec, "faas").is_err());
        let mut spec = sample();
        spec.gid = 0;
        assert!(build(&spec, "faas").is_err());
    }

    /// The rules of the filter that name `syscall`, as JSON.
    fn rules_for(json: &serde_json::Value, syscall: &str) -> Vec<serde_json::Value> {
        json["linux"]["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| {
                rule["names"]
                    .as_array()
                    .unwrap()
                    .contains(&serde_json::json!(syscall))
            })
            .cloned()
            .collect()
    }

    #[test]
    fn seccomp_denies_the_dangerous_calls_and_allows_the_rest() {
        let json = serde_json::to_value(build(&sample(), "faas").unwrap()).unwrap();
        let seccomp = &json["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(
            seccomp["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        for syscall in [
            "mount",
            "umount2",
            "pivot_root",
            "ptrace",
            "process_vm_readv",
            "keyctl",
            "add_key",
            "bpf",
            "perf_event_open",
            "init_module",
            "finit_module",
            "kexec_load",
            "reboot",
            "setns",
            "unshare",
            "clock_settime",
            "settimeofday",
            "sethostname",
            "open_by_handle_at",
            "userfaultfd",
            "syslog",
        ] {
            let rules = rules_for(&json, syscall);
            assert_eq!(rules.len(), 1, "{syscall}");
            assert_eq!(rules[0]["action"], "SCMP_ACT_ERRNO", "{syscall}");
            assert_eq!(rules[0]["errnoRet"], EPERM, "{syscall}");
            assert!(rules[0].get("args").is_none(), "{syscall} denied outright");
        }
        for syscall in ["clone3", "io_uring_setup"] {
            assert_eq!(
                rules_for(&json, syscall)[0]["errnoRet"],
                ENOSYS,
                "{syscall}"
            );
        }
        // What runtimes need is not named at all.
        for syscall in ["read", "write", "execve", "fork", "vfork", "mmap", "futex"] {
            assert!(rules_for(&json, syscall).is_empty(), "{syscall}");
        }
    }

    #[test]
    fn clone_is_denied_only_with_namespace_flags() {
        let json = serde_json::to_value(build(&sample(), "faas").unwrap()).unwrap();
        let rules = rules_for(&json, "clone");
        assert_eq!(rules.len(), 1);
        let args = rules[0]["args"].as_array().unwrap();
        assert_eq!(args.len(), CLONE_NAMESPACE_FLAGS.len());
        let mut covered = 0u64;
        for arg in args {
            assert_eq!(arg["index"], 0);
            assert_eq!(arg["op"], "SCMP_CMP_MASKED_EQ");
            // (flags & bit) == bit, one bit per rule.
            assert_eq!(arg["value"], arg["valueTwo"]);
            covered |= arg["value"].as_u64().unwrap();
        }
        // Every CLONE_NEW* of clone(2); a thread's flags have none of them.
        assert_eq!(covered, 0x7e02_0000);
        let thread_flags: u64 = 0x003d_0f00; // glibc's pthread_create
        assert_eq!(thread_flags & covered, 0);
    }

    #[test]
    fn raw_and_packet_sockets_are_denied_but_not_raw_netlink() {
        let json = serde_json::to_value(build(&sample(), "faas").unwrap()).unwrap();
        let rules = rules_for(&json, "socket");
        // Whole domains: one condition on the domain.
        let domains: Vec<u64> = rules
            .iter()
            .map(|r| r["args"].as_array().unwrap())
            .filter(|args| args.len() == 1)
            .map(|args| args[0]["value"].as_u64().unwrap())
            .collect();
        assert_eq!(domains, vec![17, 40]);
        // Raw types: the domain AND the type, in one rule each.
        let mut pairs = Vec::new();
        for args in rules
            .iter()
            .map(|r| r["args"].as_array().unwrap())
            .filter(|args| args.len() == 2)
        {
            assert_eq!(args[0]["index"], 0);
            assert_eq!(args[1]["index"], 1);
            assert_eq!(args[1]["value"], 0xf);
            pairs.push((
                args[0]["value"].as_u64().unwrap(),
                args[1]["valueTwo"].as_u64().unwrap(),
            ));
        }
        assert_eq!(pairs, vec![(2, 3), (2, 10), (10, 3), (10, 10)]);
        // AF_NETLINK (16) is named nowhere.
        assert!(!rules.iter().any(|r| r["args"][0]["value"] == 16));
    }

    #[test]
    fn no_core_dumps_and_no_per_uid_process_limit() {
        let json = serde_json::to_value(build(&sample(), "faas").unwrap()).unwrap();
        let rlimits = json["process"]["rlimits"].as_array().unwrap();
        let limit = |typ: &str| rlimits.iter().find(|r| r["type"] == typ).cloned();
        assert_eq!(limit("RLIMIT_CORE").unwrap()["hard"], 0);
        assert_eq!(limit("RLIMIT_NOFILE").unwrap()["hard"], 1024);
        assert!(
            limit("RLIMIT_NPROC").is_none(),
            "host-wide per uid: the pids cgroup does it"
        );
        let masked = json["linux"]["maskedPaths"].as_array().unwrap();
        assert!(masked.contains(&serde_json::json!("/proc/kcore")));
        assert!(masked.contains(&serde_json::json!("/sys/firmware")));
        let readonly = json["linux"]["readonlyPaths"].as_array().unwrap();
        assert!(readonly.contains(&serde_json::json!("/proc/sys")));
        assert!(readonly.contains(&serde_json::json!("/proc/sysrq-trigger")));
    }
}
