//! The OCI runtime spec of a one-call container: least privilege first.
//!
//! Mirrors containerd's default Linux spec (`oci.WithDefaultSpec`: mounts,
//! masked and read-only paths, deny-all device cgroup) and then takes away
//! more: no capabilities at all, `no_new_privileges`, uid/gid `nobody`, a
//! read-only root with a bounded tmpfs on `/tmp`, a new empty network
//! namespace, and memory/swap/pids/cpu limits.

use std::collections::HashSet;
use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::{ContainerSpec, DriverError, CONTAINER_GID, CONTAINER_UID, DEFAULT_TMP_BYTES};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period for the CPU quota: 100 ms, so 1 CPU = 100 000 µs of quota.
const CPU_PERIOD_US: u64 = 100_000;
const NOFILE_LIMIT: u64 = 1024;

/// containerd 1.6's default masked paths (oci/spec.go).
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
];

/// containerd 1.6's default read-only paths (oci/spec.go).
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

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
                .uid(CONTAINER_UID)
                .gid(CONTAINER_GID)
                .build()
                .map_err(err)?,
        )
        .args(spec.args.clone())
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(NOFILE_LIMIT)
            .soft(NOFILE_LIMIT)
            .build()
            .map_err(err)?])
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
    let tmp_owner = format!("uid={CONTAINER_UID},gid={CONTAINER_GID}");
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
        // A new network namespace with nothing in it: no route anywhere.
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
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
        }
    }

    #[test]
    fn spec_is_least_privilege() {
        let spec = build(&sample(), "faas").unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let process = &json["process"];
        assert_eq!(process["user"]["uid"], 65534);
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
    }
}
