//! A container's private directory on the host and its spec: what the
//! function sees (`/faas/io`, the function's files, faas-init's command
//! line and environment).

use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use faas_driver::{BindMount, ContainerSpec, ImageInfo, Limits};
use faas_init_protocol::{files, io_path, Args, INIT_PATH, IO_DIR};
use faas_proto::v1::{FunctionBundle, RuntimeBundle};
use rustix::fs::{FileType, Mode, OFlags};

use crate::config::Config;
use crate::io_files;

/// The host uid and gid a container runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// The io entries the container writes: regular files owned by its uid.
const WRITTEN_FILES: [&str; 4] = [files::OUTPUT, files::ERROR, files::STATUS, files::LOG];
/// The FIFOs: the container reads the load gate and the input, writes the
/// notify FIFO; owned by its uid.
const FIFOS: [&str; 3] = [files::NOTIFY, files::LOAD_GATE, files::INPUT];

/// Makes a container's private directory: `fn/` (empty: filled only for a
/// runtime-preloaded spot when its call arrives) and `io/`, a tmpfs of
/// `io_bytes` (so a call's output and logs cannot fill the host's disk).
///
/// `io/` is root-owned, mode 0755: the container cannot create, remove,
/// rename or replace anything in it (no symlink, FIFO or hard link where
/// the agent expects a file). Every entry exists before the container
/// starts: the files the container writes and the FIFOs, owned by its uid;
/// the env file, root-owned and readable by its gid only. The same entries
/// whatever the start kind: what a function sees does not depend on how
/// its container was started.
///
/// Returns a descriptor of `io/`, through which the agent opens its entries.
pub fn prepare_dir(
    dir: &Path,
    io_bytes: u64,
    env: &[String],
    owner: Owner,
) -> std::io::Result<OwnedFd> {
    if dir.exists() {
        unmount_io(dir);
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
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
    Ok(io_fd)
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

/// The environment a function's commands see (besides the image's).
pub fn function_env(function: &FunctionBundle, runtime: &RuntimeBundle) -> Vec<String> {
    let mut env: Vec<String> = function
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.sort();
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
    env
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
    owner: Owner,
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
        ],
        // The commands' output goes through faas-init's bounded log pipe;
        // the shim's stdio is nobody's to fill.
        stdio_path: PathBuf::from("/dev/null"),
        limits: Limits {
            memory_bytes,
            cpu_millis: config.cpu_millis,
            pids: config.pids_limit,
            tmp_bytes: 0,
        },
        uid: owner.uid,
        gid: owner.gid,
    }
}
