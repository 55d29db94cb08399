//! A container's private directory on the host and its spec: what the
//! function sees (`/faas/io`, `/faas/secrets`, the function's files,
//! faas-init's command line and environment).

use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use faas_driver::{BindMount, ContainerSpec, ImageInfo, Limits};
use faas_init_protocol::{files, io_path, Args, INIT_PATH, IO_DIR};
use faas_proto::v1::{FunctionBundle, RuntimeBundle, SecretValue};
use rustix::fs::{FileType, Mode, OFlags};

use crate::config::Config;
use crate::io_files;

/// The host uid and gid a container runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// The size of a function's /tmp (0 in older records: the default).
pub fn tmp_bytes_of(function: &FunctionBundle) -> u64 {
    match function.tmp_bytes {
        0 => faas_driver::DEFAULT_TMP_BYTES,
        bytes => bytes,
    }
}

/// The container's memory limit for a function: its memory, plus what its
/// /tmp has over the default (a tmpfs: its files are memory, and a
/// function asking for a large /tmp keeps its memory for itself).
pub fn memory_limit_of(function: &FunctionBundle) -> u64 {
    function.memory_bytes + tmp_bytes_of(function).saturating_sub(faas_driver::DEFAULT_TMP_BYTES)
}

/// Where a function's layers are mounted, as on Lambda.
pub const LAYERS_DIR: &str = "/opt";

/// The mounts of a function's layers: each of a layer's top-level
/// directories, read-only from the package cache, at /opt/<directory>.
/// `layers` are the cached layers, in the function's order. The names come
/// from the control plane and are checked again here; each must be a real
/// directory of the extracted layer (not a link: nothing is followed).
pub fn layer_mounts(function: &FunctionBundle, layers: &[&Path]) -> Result<Vec<BindMount>, String> {
    let mut mounts = Vec::new();
    for (layer, root) in function.layers.iter().zip(layers) {
        for dir in &layer.directories {
            if !faas_proto::rules::is_layer_directory(dir)
                || mounts
                    .iter()
                    .any(|m: &BindMount| m.destination == format!("{LAYERS_DIR}/{dir}"))
            {
                return Err(format!("layer {}: refused directory {dir:?}", layer.digest));
            }
            let source = root.join(dir);
            match std::fs::symlink_metadata(&source) {
                Ok(meta) if meta.is_dir() => {}
                _ => {
                    return Err(format!(
                        "layer {}: {dir}/ is not a directory of it",
                        layer.digest
                    ))
                }
            }
            mounts.push(BindMount {
                source,
                destination: format!("{LAYERS_DIR}/{dir}"),
                readonly: true,
            });
        }
    }
    Ok(mounts)
}

/// The io entries the container writes: regular files owned by its uid.
const WRITTEN_FILES: [&str; 5] = [
    files::OUTPUT,
    files::OUTPUT_ENCODING,
    files::ERROR,
    files::STATUS,
    files::LOG,
];
/// The FIFOs: the container reads the load gate and the input, writes the
/// notify FIFO; owned by its uid.
const FIFOS: [&str; 3] = [files::NOTIFY, files::LOAD_GATE, files::INPUT];

/// Where a function's secrets are in the container: one read-only file per
/// secret, in a directory the container cannot change.
pub const SECRETS_DIR: &str = "/faas/secrets";
/// The io tmpfs's directory bind-mounted at [`SECRETS_DIR`]: secrets live
/// in memory, never on the host's disk, and go with the tmpfs.
const SECRETS: &str = "secrets";
/// tmpfs room a secret takes beyond its value: its file's last page (tmpfs
/// counts whole pages).
const SECRET_FILE_ALLOWANCE: u64 = 4096;

/// What a function's secrets add to its io tmpfs: each value as a file,
/// and again in the env file when delivered as a variable. Added to the
/// tmpfs's size, so the secrets never take the call's output or log room.
pub fn secrets_bytes(secrets: &[SecretValue]) -> u64 {
    secrets
        .iter()
        .map(|s| {
            let value = s.value.len() as u64;
            let env = if s.env.is_empty() {
                0
            } else {
                // `ENV=value\0`
                s.env.len() as u64 + value + 2
            };
            value + SECRET_FILE_ALLOWANCE + env
        })
        .sum()
}

/// Makes a container's private directory: `fn/` (empty: filled only for a
/// runtime-preloaded spot when its call arrives) and `io/`, a tmpfs of
/// `io_bytes` (so a call's output and logs cannot fill the host's disk;
/// the caller adds [`secrets_bytes`] of the secrets it will hold).
///
/// `io/` is root-owned, mode 0755: the container cannot create, remove,
/// rename or replace anything in it (no symlink, FIFO or hard link where
/// the agent expects a file). Every entry exists before the container
/// starts: the files the container writes and the FIFOs, owned by its uid;
/// the env file, root-owned and readable by its gid only; `secrets/`,
/// root-owned, with the function's `secrets` (none for a runtime preload:
/// see [`write_secrets`]). The same entries whatever the start kind: what
/// a function sees does not depend on how its container was started.
///
/// Returns a descriptor of `io/`, through which the agent opens its entries.
pub fn prepare_dir(
    dir: &Path,
    io_bytes: u64,
    env: &[String],
    secrets: &[SecretValue],
    owner: Owner,
) -> std::io::Result<OwnedFd> {
    if dir.exists() {
        unmount_io(dir);
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let prepared = fill_dir(dir, io_bytes, env, secrets, owner);
    if prepared.is_err() {
        // Nothing half-made stays mounted (secrets included) until the
        // agent's next start.
        unmount_io(dir);
        let _ = std::fs::remove_dir_all(dir);
    }
    prepared
}

/// [`prepare_dir`] in the new, empty `dir`.
fn fill_dir(
    dir: &Path,
    io_bytes: u64,
    env: &[String],
    secrets: &[SecretValue],
    owner: Owner,
) -> std::io::Result<OwnedFd> {
    // Root-owned and read-only in the container, like the package cache.
    std::fs::create_dir(dir.join("fn"))?;
    let io = dir.join("io");
    std::fs::create_dir(&io)?;
    nix::mount::mount(
        Some("faas-io"),
        &io,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some(format!("size={io_bytes},mode=0755,uid=0,gid=0").as_str()),
    )
    .map_err(std::io::Error::from)?;
    let io_fd = io_files::open_dir(&io)?;
    for name in FIFOS {
        rustix::fs::mknodat(&io_fd, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
        rustix::fs::chownat(
            &io_fd,
            name,
            Some(rustix::fs::Uid::from_raw(owner.uid)),
            Some(rustix::fs::Gid::from_raw(owner.gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    for name in WRITTEN_FILES {
        let fd = create(&io_fd, name, 0o600)?;
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(owner.uid)),
            Some(rustix::fs::Gid::from_raw(owner.gid)),
        )?;
    }
    let env_fd = create(&io_fd, files::ENV, 0o440)?;
    rustix::fs::fchown(&env_fd, None, Some(rustix::fs::Gid::from_raw(owner.gid)))?;
    std::fs::File::from(env_fd).write_all(&faas_init_protocol::env_file(env))?;
    // Root-owned like `io/` itself, and mounted read-only: the container
    // can neither add, remove nor replace a secret.
    rustix::fs::mkdirat(&io_fd, SECRETS, Mode::from_raw_mode(0o755))?;
    write_secrets(&io_fd, secrets, owner)?;
    Ok(io_fd)
}

/// Writes each secret as the file `secrets/<name>` of the io directory:
/// exactly its value, mode 0400, owned by the container's uid. Every
/// entry is new (`O_EXCL`) and no link is followed. Blocking.
///
/// Before the container starts, or, for a runtime-preloaded container,
/// before its load gate is released (the function reads them from its
/// first instant either way); the tmpfs must have the room
/// ([`grow_io`]).
pub fn write_secrets(io: impl AsFd, secrets: &[SecretValue], owner: Owner) -> std::io::Result<()> {
    if secrets.is_empty() {
        return Ok(());
    }
    let dir = io_files::open_beneath(io, SECRETS, OFlags::RDONLY | OFlags::DIRECTORY)?;
    for secret in secrets {
        // Checked with the operation (`ids::check_secrets`); again here,
        // as the one component a file name may be.
        if !faas_proto::rules::is_name(&secret.name) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("secret name {:?} is not a file name", secret.name),
            ));
        }
        let in_secret = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("secret {}: {e}", secret.name))
        };
        let fd = create(&dir, &secret.name, 0o400).map_err(in_secret)?;
        // Written while still root's, then given to the container's uid.
        let mut file = std::fs::File::from(fd);
        file.write_all(&secret.value).map_err(in_secret)?;
        rustix::fs::fchown(
            &file,
            Some(rustix::fs::Uid::from_raw(owner.uid)),
            Some(rustix::fs::Gid::from_raw(owner.gid)),
        )
        .map_err(|e| in_secret(e.into()))?;
    }
    Ok(())
}

/// Resizes the io tmpfs of a container's directory to `io_bytes`: a
/// runtime-preloaded container's grows by its function's secrets when its
/// call arrives. The container's bind mounts share the tmpfs, so they see
/// the new size. Blocking.
pub fn grow_io(dir: &Path, io_bytes: u64) -> std::io::Result<()> {
    nix::mount::mount(
        None::<&str>,
        &dir.join("io"),
        None::<&str>,
        // A remount sets the mount's flags anew: the same as at its mount.
        nix::mount::MsFlags::MS_REMOUNT
            | nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some(format!("size={io_bytes}").as_str()),
    )
    .map_err(std::io::Error::from)
}

/// Creates the new regular file `name` in the io directory.
fn create(io: impl AsFd, name: &str, mode: u32) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        io,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?)
}

/// Rewrites the env file of a runtime-preloaded container once its
/// function is known. Blocking.
pub fn write_env(io: impl AsFd, env: &[String]) -> std::io::Result<()> {
    let fd = io_files::open_beneath(io, files::ENV, OFlags::WRONLY | OFlags::TRUNC)?;
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::other("the env file is not a regular file"));
    }
    std::fs::File::from(fd).write_all(&faas_init_protocol::env_file(env))
}

/// Detaches the io tmpfs of a container's directory, if mounted.
pub fn unmount_io(dir: &Path) {
    let _ = nix::mount::umount2(&dir.join("io"), nix::mount::MntFlags::MNT_DETACH);
}

/// Why a function's environment cannot be made. Names only: a secret's
/// value is never part of an error.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("secret {name:?} cannot be the environment variable {env}: its value is not valid UTF-8 (read it from {SECRETS_DIR}/{name})")]
    NotUtf8 { name: String, env: String },
    #[error("secret {name:?} cannot be the environment variable {env}: its value contains a NUL byte (read it from {SECRETS_DIR}/{name})")]
    Nul { name: String, env: String },
    #[error(
        "the environment variable {env} is set both by the function's env and by secret {name:?}"
    )]
    Conflict { name: String, env: String },
}

/// The environment a function's commands see (besides the image's): its
/// own env, the secrets delivered as variables, then the platform's
/// `FAAS_*` variables.
pub fn function_env(
    function: &FunctionBundle,
    runtime: &RuntimeBundle,
) -> Result<Vec<String>, EnvError> {
    let mut env: Vec<String> = function
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.sort();
    let mut from_secrets = Vec::new();
    for secret in function.secrets.iter().filter(|s| !s.env.is_empty()) {
        let (name, env) = (secret.name.clone(), secret.env.clone());
        // The env file is NUL-separated, and a variable is a C string.
        let value = match std::str::from_utf8(&secret.value) {
            Ok(value) if !value.contains('\0') => value,
            Ok(_) => return Err(EnvError::Nul { name, env }),
            Err(_) => return Err(EnvError::NotUtf8 { name, env }),
        };
        // Which one would win would depend on faas-init's order: refused
        // rather than guessed.
        if function.env.contains_key(&secret.env) {
            return Err(EnvError::Conflict { name, env });
        }
        from_secrets.push(format!("{}={value}", secret.env));
    }
    from_secrets.sort();
    env.extend(from_secrets);
    env.extend([
        format!("FAAS_HANDLER={}", function.handler),
        // The bundle names it by key (`namespace/name` outside "default").
        format!(
            "FAAS_FUNCTION_NAME={}",
            faas_proto::namespaces::split_key(&function.name).1
        ),
        format!(
            "FAAS_NAMESPACE={}",
            faas_proto::namespaces::split_key(&function.name).0
        ),
        format!("FAAS_FUNCTION_VERSION={}", function.version),
        format!("FAAS_FUNCTION_DIR={}", runtime.path),
        format!("FAAS_MEMORY_MB={}", function.memory_bytes >> 20),
        format!("FAAS_TIMEOUT_MS={}", function.timeout_ms),
    ]);
    lambda_env(&mut env, function, runtime);
    Ok(env)
}

/// Where code written for AWS Lambda finds its region when the function
/// sets none: what the AWS SDKs need to build a client (and what SAM's
/// local invoke uses). faas is in no AWS region; a function that calls AWS
/// sets its own AWS_REGION.
pub const DEFAULT_AWS_REGION: &str = "us-east-1";

/// The variables Lambda sets that Lambda code and libraries read
/// (docs/contract.md lists them). Those a user may choose (region, TZ)
/// are defaults the function's own env overrides; the rest describe the
/// function and are always the platform's.
fn lambda_env(env: &mut Vec<String>, function: &FunctionBundle, runtime: &RuntimeBundle) {
    let (namespace, name) = faas_proto::namespaces::split_key(&function.name);
    let set_by_function = |key: &str| function.env.contains_key(key);
    for (key, value) in [
        ("AWS_REGION", DEFAULT_AWS_REGION),
        ("AWS_DEFAULT_REGION", DEFAULT_AWS_REGION),
        ("TZ", ":UTC"),
    ] {
        if !set_by_function(key) {
            env.push(format!("{key}={value}"));
        }
    }
    let log_group = if namespace == faas_proto::namespaces::DEFAULT {
        format!("/faas/{name}")
    } else {
        format!("/faas/{namespace}/{name}")
    };
    for (key, value) in [
        ("_HANDLER", function.handler.clone()),
        ("LAMBDA_TASK_ROOT", runtime.path.clone()),
        ("AWS_LAMBDA_FUNCTION_NAME", name.to_string()),
        ("AWS_LAMBDA_FUNCTION_VERSION", function.version.to_string()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            (function.memory_bytes >> 20).to_string(),
        ),
        ("AWS_LAMBDA_LOG_GROUP_NAME", log_group),
    ] {
        // The control plane refuses these names in a function's env.
        env.push(format!("{key}={value}"));
    }
}

/// faas-init's command line, the same for every container of a runtime:
/// the function's own environment comes through the env file, read after
/// the load gate (released at once when the function is known at creation).
pub fn init_args(config: &Config, runtime: &RuntimeBundle) -> Args {
    Args {
        status: io_path(files::STATUS).into(),
        cwd: runtime.path.clone().into(),
        deps: Some(runtime.dependencies.clone()).filter(|d| !d.trim().is_empty()),
        run: runtime.run.clone(),
        gate: None,
        load_gate: Some(io_path(files::LOAD_GATE).into()),
        notify: Some(io_path(files::NOTIFY).into()),
        env_file: Some(io_path(files::ENV).into()),
        log: Some(io_path(files::LOG).into()),
        log_limit: config.max_log_bytes as usize,
    }
}

/// The container's spec. A function known at creation is mounted straight
/// from the package cache (`fn_source`: read-only, nothing copied); a
/// runtime-preloaded spot gets its own empty directory, filled when the
/// call arrives.
#[allow(clippy::too_many_arguments)]
pub fn container_spec(
    config: &Config,
    id: &str,
    dir: &Path,
    fn_source: &Path,
    image: ImageInfo,
    runtime: &RuntimeBundle,
    memory_bytes: u64,
    tmp_bytes: u64,
    owner: Owner,
    network: Option<&crate::egress::CallNetwork>,
    layers: Vec<BindMount>,
) -> ContainerSpec {
    let mut args = vec![INIT_PATH.to_string()];
    args.extend(init_args(config, runtime).to_argv());
    // The same for every container.
    let env = vec![
        format!(
            "{}={}",
            faas_init_protocol::env::INPUT,
            io_path(files::INPUT)
        ),
        format!(
            "{}={}",
            faas_init_protocol::env::OUTPUT,
            io_path(files::OUTPUT)
        ),
        format!(
            "{}={}",
            faas_init_protocol::env::ERROR,
            io_path(files::ERROR)
        ),
        format!(
            "{}={}",
            faas_init_protocol::env::OUTPUT_ENCODING,
            io_path(files::OUTPUT_ENCODING)
        ),
        "HOME=/tmp".to_string(),
    ];
    ContainerSpec {
        id: id.to_string(),
        image,
        args,
        env,
        cwd: runtime.path.clone(),
        hostname: "faas".into(),
        mounts: vec![
            BindMount {
                source: config.init_binary.clone(),
                destination: INIT_PATH.into(),
                readonly: true,
            },
            // Read-only, like AWS Lambda's /var/task: nothing a call writes
            // there can reach the next call or fill the host's disk.
            BindMount {
                source: fn_source.to_path_buf(),
                destination: runtime.path.clone(),
                readonly: true,
            },
            BindMount {
                source: dir.join("io"),
                destination: IO_DIR.into(),
                readonly: false,
            },
            // In every container, empty when the function has no secrets
            // (or is not known yet): filled before the container starts or
            // before its load gate is released.
            BindMount {
                source: dir.join("io").join(SECRETS),
                destination: SECRETS_DIR.into(),
                readonly: true,
            },
        ]
        .into_iter()
        // With egress: the resolvers the call may ask, and nothing else
        // of the host's resolver configuration.
        .chain(network.map(|n| BindMount {
            source: n.resolv_conf.clone(),
            destination: "/etc/resolv.conf".into(),
            readonly: true,
        }))
        .chain(layers)
        .collect(),
        // The commands' output goes through faas-init's bounded log pipe;
        // the shim's stdio is nobody's to fill.
        stdio_path: PathBuf::from("/dev/null"),
        limits: Limits {
            memory_bytes,
            cpu_millis: config.cpu_millis,
            pids: config.pids_limit,
            tmp_bytes,
        },
        uid: owner.uid,
        gid: owner.gid,
        network_namespace: network.map(|n| n.netns.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn secret(name: &str, env: &str, value: &[u8]) -> SecretValue {
        SecretValue {
            name: name.into(),
            env: env.into(),
            value: value.to_vec(),
        }
    }

    fn bundles(secrets: Vec<SecretValue>) -> (FunctionBundle, RuntimeBundle) {
        let function = FunctionBundle {
            name: "team-a/hello".into(),
            version: 3,
            handler: "main.handler".into(),
            memory_bytes: 128 << 20,
            timeout_ms: 5000,
            env: [("B".to_string(), "2".to_string()), ("A".into(), "1".into())].into(),
            secrets,
            ..Default::default()
        };
        let runtime = RuntimeBundle {
            name: "python3".into(),
            path: "/var/task".into(),
            ..Default::default()
        };
        (function, runtime)
    }

    #[test]
    fn secrets_are_sized_as_files_and_env_entries() {
        assert_eq!(secrets_bytes(&[]), 0);
        assert_eq!(
            secrets_bytes(&[secret("a", "", &[0; 100])]),
            100 + SECRET_FILE_ALLOWANCE
        );
        // `KEY=` + value + NUL in the env file, besides the file.
        assert_eq!(
            secrets_bytes(&[secret("a", "KEY", &[0; 100])]),
            100 + SECRET_FILE_ALLOWANCE + 3 + 100 + 2
        );
        // The most a function may have stays a few MiB.
        let most: Vec<SecretValue> = (0..crate::ids::MAX_SECRETS)
            .map(|i| {
                secret(
                    &format!("s{i}"),
                    &format!("S{i}"),
                    &vec![0; crate::ids::MAX_SECRET_BYTES],
                )
            })
            .collect();
        assert!(secrets_bytes(&most) < 9 << 20, "{}", secrets_bytes(&most));
    }

    #[test]
    fn secrets_join_the_env_between_the_functions_and_the_platforms() {
        let (function, runtime) = bundles(vec![
            secret("token", "TOKEN", b"t=1 \n2"),
            secret("key", "", &[0, 255]),
            secret("db", "DB_PASSWORD", b"hunter2"),
        ]);
        let env = function_env(&function, &runtime).unwrap();
        assert_eq!(
            env[..4],
            ["A=1", "B=2", "DB_PASSWORD=hunter2", "TOKEN=t=1 \n2"]
        );
        let platform = |e: &String| e.starts_with("FAAS_") || is_lambda_variable(e);
        assert!(env[4..].iter().all(platform), "{env:?}");
        assert!(env.contains(&"FAAS_FUNCTION_NAME=hello".to_string()));
        assert!(env.contains(&"FAAS_NAMESPACE=team-a".to_string()));
        assert!(env.contains(&"AWS_LAMBDA_FUNCTION_NAME=hello".to_string()));
        assert!(env.contains(&"AWS_LAMBDA_LOG_GROUP_NAME=/faas/team-a/hello".to_string()));
        assert!(env.contains(&format!("AWS_REGION={DEFAULT_AWS_REGION}")));
        // Without secrets: as before.
        let (plain, _) = bundles(vec![]);
        let env = function_env(&plain, &runtime).unwrap();
        assert_eq!(env[..2], ["A=1", "B=2"]);
        assert!(env[2..].iter().all(platform));
    }

    fn is_lambda_variable(entry: &str) -> bool {
        ["AWS_", "_HANDLER=", "LAMBDA_TASK_ROOT=", "TZ="]
            .iter()
            .any(|prefix| entry.starts_with(prefix))
    }

    #[test]
    fn the_functions_region_and_tz_win_over_the_defaults() {
        let (mut function, runtime) = bundles(vec![]);
        function.env.insert("AWS_REGION".into(), "eu-west-1".into());
        function.env.insert("TZ".into(), "Europe/Madrid".into());
        let env = function_env(&function, &runtime).unwrap();
        let region: Vec<_> = env
            .iter()
            .filter(|e| e.starts_with("AWS_REGION="))
            .collect();
        assert_eq!(region, ["AWS_REGION=eu-west-1"]);
        let tz: Vec<_> = env.iter().filter(|e| e.starts_with("TZ=")).collect();
        assert_eq!(tz, ["TZ=Europe/Madrid"]);
        assert!(env.contains(&format!("AWS_DEFAULT_REGION={DEFAULT_AWS_REGION}")));
    }

    #[test]
    fn a_secret_that_cannot_be_a_variable_is_refused_without_its_value() {
        let runtime = bundles(vec![]).1;
        let cases = [
            (
                secret("bin", "BIN", b"s3cr3t\xff"),
                EnvError::NotUtf8 {
                    name: "bin".into(),
                    env: "BIN".into(),
                },
            ),
            (
                secret("nul", "NUL", b"s3cr3t\0x"),
                EnvError::Nul {
                    name: "nul".into(),
                    env: "NUL".into(),
                },
            ),
            (
                secret("dup", "A", b"s3cr3t"),
                EnvError::Conflict {
                    name: "dup".into(),
                    env: "A".into(),
                },
            ),
        ];
        for (secret, expected) in cases {
            let (function, _) = bundles(vec![secret]);
            let error = function_env(&function, &runtime).unwrap_err();
            assert_eq!(error, expected);
            assert!(!error.to_string().contains("s3cr3t"), "{error}");
        }
        // Only a secret delivered as a variable has to be one.
        let (function, _) = bundles(vec![secret("bin", "", b"\xff\0")]);
        assert!(function_env(&function, &runtime).is_ok());
    }

    fn config() -> Config {
        Config {
            control_plane: vec![],
            node: "n1".into(),
            join_token: None,
            ca_hash: None,
            spots: 1,
            containerd: "/run/containerd/containerd.sock".into(),
            namespace: "faas".into(),
            state_dir: "/var/lib/faas".into(),
            init_binary: "/usr/lib/faas/faas-init".into(),
            insecure_registries: vec![],
            registry_ca: None,
            max_log_bytes: 1 << 20,
            max_result_bytes: 1 << 20,
            max_input_bytes: 1 << 20,
            preload_memory_bytes: 128 << 20,
            pids_limit: 64,
            cpu_millis: 1000,
            oci_runtime: "runc".into(),
            containerd_runtime: "io.containerd.runc.v2".into(),
            packages: crate::packages::CacheLimits::default(),
            uid_base: 200_000,
            uid_count: 1000,
            preload_cpu_budget: std::time::Duration::ZERO,
            metrics_listen: None,
            otlp_endpoint: None,
        }
    }

    #[test]
    fn a_larger_tmp_adds_to_the_memory_limit() {
        let mut function = FunctionBundle {
            memory_bytes: 128 << 20,
            ..Default::default()
        };
        // Older records: the default, inside the function's memory.
        assert_eq!(tmp_bytes_of(&function), faas_driver::DEFAULT_TMP_BYTES);
        assert_eq!(memory_limit_of(&function), 128 << 20);
        function.tmp_bytes = 16 << 20;
        assert_eq!(memory_limit_of(&function), 128 << 20);
        function.tmp_bytes = 512 << 20;
        assert_eq!(tmp_bytes_of(&function), 512 << 20);
        assert_eq!(memory_limit_of(&function), (128 + 512 - 64) << 20);
    }

    #[test]
    fn layers_mount_their_real_directories_at_opt_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("python")).unwrap();
        std::fs::create_dir_all(root.path().join("faas")).unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("bin")).unwrap();
        let with = |dirs: &[&str]| FunctionBundle {
            layers: vec![faas_proto::v1::LayerMount {
                repository: "r".into(),
                digest: "sha256:x".into(),
                directories: dirs.iter().map(|d| d.to_string()).collect(),
            }],
            ..Default::default()
        };
        let mounts = layer_mounts(&with(&["python"]), &[root.path()]).unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].destination, "/opt/python");
        assert_eq!(mounts[0].source, root.path().join("python"));
        assert!(mounts[0].readonly);
        // A link (followed, it would mount the host's /etc), the runtimes'
        // own directory, a path, and a directory the layer does not have.
        for bad in ["bin", "faas", "../python", "nodejs"] {
            assert!(
                layer_mounts(&with(&[bad]), &[root.path()]).is_err(),
                "{bad}"
            );
        }
        // Two layers with one directory: refused, not hidden.
        let mut two = with(&["python"]);
        two.layers.push(two.layers[0].clone());
        assert!(layer_mounts(&two, &[root.path(), root.path()]).is_err());
    }

    #[test]
    fn every_container_gets_its_secrets_read_only() {
        let (_, runtime) = bundles(vec![]);
        let dir = Path::new("/var/lib/faas/spots/call-x");
        let spec = container_spec(
            &config(),
            "call-x",
            dir,
            &dir.join("fn"),
            ImageInfo {
                reference: "r".into(),
                manifest_digest: "m".into(),
                chain_id: "c".into(),
                env: vec![],
                working_dir: None,
            },
            &runtime,
            128 << 20,
            faas_driver::DEFAULT_TMP_BYTES,
            Owner {
                uid: 200_001,
                gid: 200_001,
            },
            None,
            Vec::new(),
        );
        let secrets: Vec<&BindMount> = spec
            .mounts
            .iter()
            .filter(|m| m.destination == SECRETS_DIR)
            .collect();
        assert_eq!(
            secrets,
            [&BindMount {
                source: dir.join("io/secrets"),
                destination: SECRETS_DIR.into(),
                readonly: true,
            }]
        );
        // Values never go through the spec: its env is the same for every
        // container.
        assert!(spec.env.iter().all(|e| !e.contains("hunter2")));
    }

    /// Whether this test process may mount a tmpfs (root, outside a
    /// restricted sandbox); the tests that need one are skipped otherwise.
    fn can_mount(dir: &Path) -> bool {
        if !nix::unistd::geteuid().is_root() {
            return false;
        }
        let probe = dir.join("probe");
        std::fs::create_dir(&probe).unwrap();
        let mounted = nix::mount::mount(
            Some("faas-probe"),
            &probe,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=4096"),
        )
        .is_ok();
        if mounted {
            let _ = nix::mount::umount2(&probe, nix::mount::MntFlags::MNT_DETACH);
        }
        mounted
    }

    fn tmpfs_size(path: &Path) -> u64 {
        let stat = rustix::fs::statvfs(path).unwrap();
        stat.f_blocks * stat.f_frsize
    }

    const OWNER: Owner = Owner {
        uid: 200_123,
        gid: 200_124,
    };

    /// Unmounts the io tmpfs when a test ends, passed or not.
    struct Mounted<'a>(&'a Path);
    impl Drop for Mounted<'_> {
        fn drop(&mut self) {
            unmount_io(self.0);
        }
    }

    #[test]
    fn secrets_are_files_of_the_containers_uid_in_a_directory_it_cannot_change() {
        let root = tempfile::tempdir().unwrap();
        if !can_mount(root.path()) {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        let dir = root.path().join("spot");
        let _mounted = Mounted(&dir);
        let secrets = vec![
            secret("db", "DB_PASSWORD", b"hunter2"),
            secret("tls-key", "", &[0, 1, 255, b'\n']),
            secret("empty", "", b""),
        ];
        let io_bytes = (1 << 20) + secrets_bytes(&secrets);
        let env = vec!["DB_PASSWORD=hunter2".to_string()];
        let _io = prepare_dir(&dir, io_bytes, &env, &secrets, OWNER).unwrap();

        let io = dir.join("io");
        let page = 4096;
        assert_eq!(tmpfs_size(&io), io_bytes.div_ceil(page) * page);
        let meta = std::fs::symlink_metadata(io.join(SECRETS)).unwrap();
        assert!(meta.is_dir());
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (0, 0, 0o755)
        );
        let mut names: Vec<String> = std::fs::read_dir(io.join(SECRETS))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["db", "empty", "tls-key"]);
        for s in &secrets {
            let path = io.join(SECRETS).join(&s.name);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(meta.file_type().is_file(), "{}", s.name);
            assert_eq!(meta.mode() & 0o7777, 0o400, "{}", s.name);
            assert_eq!((meta.uid(), meta.gid()), (OWNER.uid, OWNER.gid));
            assert_eq!(std::fs::read(&path).unwrap(), s.value, "{}", s.name);
        }
        assert_eq!(
            std::fs::read(io.join(files::ENV)).unwrap(),
            b"DB_PASSWORD=hunter2\0"
        );
    }

    #[test]
    fn a_runtime_preload_gets_an_empty_secrets_dir_then_its_functions() {
        let root = tempfile::tempdir().unwrap();
        if !can_mount(root.path()) {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        let dir = root.path().join("spot");
        let _mounted = Mounted(&dir);
        let base = 1 << 20;
        let io_fd = prepare_dir(&dir, base, &[], &[], OWNER).unwrap();
        let io = dir.join("io");
        let secrets_dir = io.join(SECRETS);
        assert_eq!(std::fs::read_dir(&secrets_dir).unwrap().count(), 0);
        assert_eq!(tmpfs_size(&io), base);

        // The call arrives: the tmpfs grows by the secrets, then they are
        // written.
        let secrets = vec![secret("big", "", &vec![b'x'; 64 << 10])];
        let grown = base + secrets_bytes(&secrets);
        grow_io(&dir, grown).unwrap();
        assert_eq!(tmpfs_size(&io), grown.div_ceil(4096) * 4096);
        write_secrets(&io_fd, &secrets, OWNER).unwrap();
        assert_eq!(
            std::fs::read(secrets_dir.join("big")).unwrap(),
            secrets[0].value
        );
        // The remount kept the mount's flags.
        let flags = rustix::fs::statvfs(&io).unwrap().f_flag;
        for flag in [
            rustix::fs::StatVfsMountFlags::NOSUID,
            rustix::fs::StatVfsMountFlags::NODEV,
            rustix::fs::StatVfsMountFlags::NOEXEC,
        ] {
            assert!(flags.contains(flag), "{flags:?}");
        }

        // Nothing is replaced and no link is followed.
        assert!(write_secrets(&io_fd, &secrets, OWNER).is_err());
        let outside = root.path().join("outside");
        std::fs::write(&outside, b"host file").unwrap();
        std::os::unix::fs::symlink(&outside, secrets_dir.join("link")).unwrap();
        assert!(write_secrets(&io_fd, &[secret("link", "", b"v")], OWNER).is_err());
        assert_eq!(std::fs::read(&outside).unwrap(), b"host file");
        // Nor is a name that is not one component.
        let err = write_secrets(&io_fd, &[secret("../x", "", b"v")], OWNER).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(!io.join("x").exists());
    }

    #[test]
    fn a_failed_preparation_leaves_nothing_mounted() {
        let root = tempfile::tempdir().unwrap();
        if !can_mount(root.path()) {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        let dir = root.path().join("spot");
        let _mounted = Mounted(&dir);
        let secrets = vec![secret("ok", "", b"1"), secret("../bad", "", b"2")];
        assert!(prepare_dir(&dir, 1 << 20, &[], &secrets, OWNER).is_err());
        assert!(!dir.exists());
        // Too small a tmpfs for its secrets: the write fails (ENOSPC).
        let big = vec![secret("big", "", &vec![0; 64 << 10])];
        assert!(prepare_dir(&dir, 16 << 10, &[], &big, OWNER).is_err());
        assert!(!dir.exists());
    }
}
