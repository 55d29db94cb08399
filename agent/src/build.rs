//! Deploy-time builds (`BuildJob`; `Runtime.build` in api.proto): the
//! runtime's build command runs once per deploy in a container of the
//! runtime's image, isolated like a call (its own uid, cgroup limits, a
//! network namespace that reaches only the package index, or none), where
//! the function's package is a writable copy at the runtime's path and
//! `/faas/deps` holds its dependencies (pre-filled from the cached layer
//! when the leader has one). Both live on a tmpfs of the build's own,
//! sized by the job: what the build writes cannot fill the host's disk.
//!
//! Everything the build wrote is hostile. The trees are packed only after
//! the container is gone (nothing changes under the walk), entry by entry
//! without following a link: directories and regular files are taken,
//! anything else (symlinks, FIFOs, sockets, devices) is left out, each
//! file opened `O_NOFOLLOW | O_NONBLOCK` and read up to the bytes left of
//! the job's bound. The leader checks the archives again as any upload.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use faas_driver::BindMount;
use faas_init_protocol::files;
use faas_proto::v1::{
    agent_message, AgentMessage, BuildDone, BuildJob, BuildOutput, BuildPart, RuntimeBundle,
};
use tokio::sync::{mpsc, Semaphore};
use tracing::{info, info_span, warn, Instrument};

use crate::container::{container_spec, prepare_dir, unmount_io, Owner};
use crate::io_files::{Notice, NotifyReader};
use crate::packages::copy_tree;
use crate::spot::{open_fifo_when_read, write_all_then_close, SpotContext};

/// Where the dependencies are in the build container.
pub const DEPS_DIR: &str = "/faas/deps";
/// Builds one agent runs at once; more wait their turn.
const MAX_CONCURRENT_BUILDS: usize = 2;
/// Bytes per `BuildOutput` message.
const CHUNK: usize = 1 << 20;
/// Most entries an output tree may have (the leader's package limits are
/// lower; this only bounds the walk).
const MAX_ENTRIES: usize = 500_000;
/// Deepest directory nesting walked.
const MAX_DEPTH: usize = 64;
/// Grace given to a killed build container to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Bounds a job's own settings: the leader's are trusted no more than the
/// registry's.
const MAX_OUTPUT_BYTES: u64 = 4 << 30;
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Takes build jobs from the session and runs them, a few at a time. Holds
/// the spots' context weakly: a stopping agent is not kept alive by it.
pub fn spawn(ctx: Weak<SpotContext>) -> mpsc::UnboundedSender<BuildJob> {
    let (tx, mut rx) = mpsc::unbounded_channel::<BuildJob>();
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_BUILDS));
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let Some(ctx) = ctx.upgrade() else {
                return;
            };
            let span = info_span!("build", build_id = %job.build_id);
            tokio::spawn(
                async move {
                    run(&ctx, job).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    });
    tx
}

/// What a finished build sends.
struct Outcome {
    outputs: Result<Outputs, String>,
    log: Vec<u8>,
    log_truncated: bool,
}

struct Outputs {
    package: Vec<u8>,
    /// None when the dependencies came from the cache.
    deps: Option<Vec<u8>>,
}

async fn run(ctx: &Arc<SpotContext>, job: BuildJob) {
    let started = Instant::now();
    let outcome = match check_job(&job) {
        Ok(()) => build(ctx, &job).await,
        Err(e) => Outcome {
            outputs: Err(e),
            log: Vec::new(),
            log_truncated: false,
        },
    };
    let build_ms = started.elapsed().as_secs_f64() * 1000.0;
    let send = |msg| {
        let _ = ctx.outbound.send(AgentMessage { msg: Some(msg) });
    };
    let error = match outcome.outputs {
        Ok(outputs) => {
            info!(
                package_bytes = outputs.package.len(),
                deps_bytes = outputs.deps.as_ref().map(Vec::len),
                ms = build_ms as u64,
                "build done"
            );
            let parts = [
                (BuildPart::Package, Some(outputs.package)),
                (BuildPart::Deps, outputs.deps),
            ];
            for (part, data) in parts {
                for chunk in data.iter().flat_map(|d| d.chunks(CHUNK)) {
                    send(agent_message::Msg::BuildOutput(BuildOutput {
                        build_id: job.build_id.clone(),
                        part: part as i32,
                        data: chunk.to_vec(),
                    }));
                }
            }
            String::new()
        }
        Err(e) => {
            info!(error = %e, ms = build_ms as u64, "build failed");
            e
        }
    };
    send(agent_message::Msg::BuildDone(BuildDone {
        build_id: job.build_id.clone(),
        succeeded: error.is_empty(),
        error,
        log: outcome.log,
        log_truncated: outcome.log_truncated,
        build_ms,
    }));
}

/// The job's own fields, before anything is made from them.
fn check_job(job: &BuildJob) -> Result<(), String> {
    let id_ok = !job.build_id.is_empty()
        && job.build_id.len() <= 64
        && job
            .build_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !id_ok {
        return Err(format!("invalid build id {:?}", job.build_id));
    }
    if job.runtime.is_none() || job.command.trim().is_empty() {
        return Err("the build job has no runtime or command".into());
    }
    if job.max_output_bytes == 0 || job.max_output_bytes > MAX_OUTPUT_BYTES {
        return Err(format!(
            "the build's output bound {} is outside 1..{MAX_OUTPUT_BYTES}",
            job.max_output_bytes
        ));
    }
    for (key, value) in &job.env {
        let bad = key.is_empty()
            || key.contains(['=', '\0'])
            || value.contains('\0')
            || key.starts_with("FAAS_");
        if bad {
            return Err(format!("invalid build environment variable {key:?}"));
        }
    }
    Ok(())
}

/// Runs the build container and packs what it left.
async fn build(ctx: &Arc<SpotContext>, job: &BuildJob) -> Outcome {
    let failed = |e: String| Outcome {
        outputs: Err(e),
        log: Vec::new(),
        log_truncated: false,
    };
    let token = Some(job.registry_token.as_str()).filter(|t| !t.is_empty());
    let base = job.runtime.clone().unwrap_or_default();
    // The build command in the place of the runtime's run; nothing before it.
    let runtime = RuntimeBundle {
        run: job.command.clone(),
        dependencies: String::new(),
        ..base
    };
    let image = match ctx.driver.ensure_image_with(&runtime.image, token).await {
        Ok(image) => image,
        Err(e) => return failed(format!("loading the runtime image: {e}")),
    };
    let package = match ctx
        .packages
        .ensure(&job.package_repository, &job.package_digest, token)
        .await
    {
        Ok(p) => p,
        Err(e) => return failed(format!("loading the package: {e}")),
    };
    let cached_deps = if job.deps_digest.is_empty() {
        None
    } else {
        match ctx
            .packages
            .ensure(&job.deps_repository, &job.deps_digest, token)
            .await
        {
            Ok(p) => Some(p),
            Err(e) => return failed(format!("loading the cached dependencies: {e}")),
        }
    };
    let uid = match ctx.uids.allocate() {
        Ok(uid) => uid,
        Err(e) => return failed(e.to_string()),
    };
    let owner = Owner {
        uid: uid.uid(),
        gid: uid.gid(),
    };
    let id = format!("build-{}", job.build_id);
    let dir = ctx.config.state_dir.join("spots").join(&id);
    let mut env: Vec<String> = job.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    env.push(format!("LAMBDA_TASK_ROOT={}", runtime.path));
    if cached_deps.is_some() {
        env.push("FAAS_DEPS_CACHED=1".into());
    }
    let prepared = {
        let (dir, config) = (dir.clone(), ctx.config.clone());
        let package = package.path().to_path_buf();
        let deps = cached_deps.as_ref().map(|d| d.path().to_path_buf());
        let bytes = job.max_output_bytes;
        tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let io = prepare_dir(&dir, config.io_tmpfs_bytes(), &env, &[], owner)?;
            prepare_work(&dir, bytes, &package, deps.as_deref(), owner)?;
            Ok(io)
        })
        .await
    };
    let io = match prepared {
        Ok(Ok(io)) => Arc::new(io),
        Ok(Err(e)) => {
            clean_dir(&dir).await;
            return failed(format!("preparing the build's files: {e}"));
        }
        Err(e) => return failed(e.to_string()),
    };
    // The package's copy is in the build's tmpfs now. Neither input runs
    // as a function here (the upload is not what is deployed, and a later
    // build fetches the layer again from the registry next door): out of
    // the cache at once.
    drop(package);
    drop(cached_deps);
    ctx.packages.forget(&job.package_digest);
    if !job.deps_digest.is_empty() {
        ctx.packages.forget(&job.deps_digest);
    }
    let network = match job.network.as_ref() {
        Some(policy) if crate::egress::wants_egress(Some(policy)) => {
            match ctx.egress.attach(&id, policy, &dir).await {
                Ok(n) => Some(n),
                Err(e) => {
                    clean_dir(&dir).await;
                    return failed(format!("setting up the build's network: {e}"));
                }
            }
        }
        _ => None,
    };
    let work = dir.join("work");
    let mut spec = container_spec(
        &ctx.config,
        &id,
        &dir,
        &work.join("task"),
        image,
        &runtime,
        job.memory_bytes.max(64 << 20),
        faas_driver::DEFAULT_TMP_BYTES,
        owner,
        network.as_ref(),
        Vec::new(),
    );
    for mount in &mut spec.mounts {
        if mount.destination == runtime.path {
            mount.readonly = false;
        }
    }
    spec.mounts.push(BindMount {
        source: work.join("deps"),
        destination: DEPS_DIR.into(),
        readonly: false,
    });
    let ran = run_container(ctx, &id, &spec, &io, job).await;
    // Logs first (the io tmpfs goes with the container's files).
    let collected = {
        let io = io.clone();
        let max_log = ctx.config.max_log_bytes;
        tokio::task::spawn_blocking(move || crate::collect::collect(&io, 0, max_log)).await
    };
    // The trees are walked only once nothing of the build runs any more:
    // a process left could swap a directory for a link under the walk.
    let gone = match ctx.driver.destroy(&id).await {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, container = %id, "destroying a build container failed; will retry");
            ctx.teardown_retry
                .lock()
                .expect("poisoned")
                .push((id.clone(), Some(uid)));
            false
        }
    };
    if let Some(network) = network {
        ctx.egress.detach(network).await;
    }
    let (status, logs) = match collected {
        Ok(c) => (c.status, c.logs),
        Err(_) => (Default::default(), Default::default()),
    };
    let outputs = match ran {
        Err(e) => Err(e),
        Ok(()) if !gone => {
            Err("the build container could not be removed; its output is not taken".into())
        }
        Ok(()) => match (status.run_exit, status.run_signal, status.error) {
            (_, _, Some(e)) => Err(format!("the build could not start: {e}")),
            (Some(0), _, _) => {
                let (work, limit) = (work.clone(), job.max_output_bytes);
                let with_deps = job.deps_digest.is_empty();
                tokio::task::spawn_blocking(move || pack_outputs(&work, limit, with_deps))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| format!("packing the build's output: {e}")))
            }
            (Some(code), _, _) => Err(format!("the build command exited with status {code}")),
            (None, Some(9), _) => Err(
                "the build was killed (signal 9): out of memory or out of room for its output"
                    .into(),
            ),
            (None, Some(signal), _) => Err(format!("the build was killed by signal {signal}")),
            (None, None, None) => Err("the build ended without a status".into()),
        },
    };
    clean_dir(&dir).await;
    Outcome {
        outputs,
        log: logs.bytes,
        log_truncated: logs.truncated,
    }
}

/// Creates and starts the container, opens its load gate and waits for
/// the command's end or the job's timeout (then kills it).
async fn run_container(
    ctx: &Arc<SpotContext>,
    id: &str,
    spec: &faas_driver::ContainerSpec,
    io: &Arc<std::os::fd::OwnedFd>,
    job: &BuildJob,
) -> Result<(), String> {
    let timeout = Duration::from_millis(job.timeout_ms.max(1)).min(MAX_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let mut notify = NotifyReader::open(&**io, files::NOTIFY)
        .map_err(|e| format!("opening the notify FIFO: {e}"))?;
    ctx.driver
        .create(spec)
        .await
        .map_err(|e| format!("creating the build container: {e}"))?;
    let waiter = ctx
        .driver
        .start(id)
        .await
        .map_err(|e| format!("starting the build container: {e}"))?;
    let mut exit = tokio::spawn(waiter.wait());
    let gate = async {
        let sender = open_fifo_when_read(io, &mut exit, files::LOAD_GATE, deadline).await?;
        write_all_then_close(sender, files::LOAD_GATE, b"go\n", deadline).await
    };
    if gate.await.is_err() {
        exit.abort();
        return Err("the build container's init did not start".into());
    }
    // The output as it is written, for the deploy to show; stops when this
    // returns (the leader completes it from BuildDone's log).
    let _tail = job.stream_log.then(|| {
        let build_id = job.build_id.clone();
        crate::live_logs::tail(
            io.clone(),
            job.build_id.clone(),
            ctx.outbound.clone(),
            ctx.config.max_log_bytes,
            move |_offset, data| AgentMessage {
                msg: Some(agent_message::Msg::BuildOutput(BuildOutput {
                    build_id: build_id.clone(),
                    part: BuildPart::Log as i32,
                    data,
                })),
            },
        )
    });
    let ended = loop {
        tokio::select! {
            notice = notify.next() => match notice {
                Ok(Some(Notice::Done)) => break Ok(()),
                Ok(Some(Notice::DepsDone)) => {}
                // The command wrote into the FIFO, or it closed: the
                // container's exit decides.
                _ => match tokio::time::timeout_at(deadline.into(), &mut exit).await {
                    Ok(_) => break Ok(()),
                    Err(_) => break Err(()),
                },
            },
            _ = &mut exit => break Ok(()),
            _ = tokio::time::sleep_until(deadline.into()) => break Err(()),
        }
    };
    if ended.is_err() {
        let _ = ctx.driver.kill(id, 9).await;
        let _ = tokio::time::timeout(KILL_GRACE, &mut exit).await;
        exit.abort();
        return Err(format!(
            "the build took longer than {timeout:?} (build.timeout_secs)"
        ));
    }
    exit.abort();
    Ok(())
}

/// The build's writable tmpfs (`work/`, `bytes` in all): `task/`, a copy of
/// the package, and `deps/`, the cached dependencies or empty; both owned
/// by the container's uid.
fn prepare_work(
    dir: &Path,
    bytes: u64,
    package: &Path,
    deps: Option<&Path>,
    owner: Owner,
) -> std::io::Result<()> {
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    nix::mount::mount(
        Some("tmpfs"),
        &work,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        // Inodes bounded too: empty files cost no bytes but kernel memory.
        Some(format!("size={bytes},nr_inodes={MAX_ENTRIES},mode=0755").as_str()),
    )
    .map_err(std::io::Error::from)?;
    copy_tree(package, &work.join("task"))?;
    match deps {
        Some(deps) => copy_tree(deps, &work.join("deps"))?,
        None => std::fs::create_dir(work.join("deps"))?,
    }
    // Our own copies, on our own tmpfs: nothing here was made by the
    // container yet, so no link is followed.
    for top in ["task", "deps"] {
        chown_tree(&work.join(top), owner)?;
    }
    Ok(())
}

fn chown_tree(path: &Path, owner: Owner) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), owner)?;
        }
    }
    Ok(())
}

/// Unmounts a build's tmpfs (if mounted) and its io tmpfs, then removes
/// its directory. Also for what an earlier run of the agent left.
pub fn unmount_work(dir: &Path) {
    let _ = nix::mount::umount2(&dir.join("work"), nix::mount::MntFlags::MNT_DETACH);
}

async fn clean_dir(dir: &Path) {
    let dir = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        unmount_work(&dir);
        unmount_io(&dir);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(error = %e, dir = %dir.display(), "removing a build's files failed");
            }
        }
    })
    .await;
}

/// The package as built (`task/` with `deps/` merged in: the package's
/// own files win) and, unless the dependencies came from the cache,
/// `deps/` alone; each a tar.gz.
fn pack_outputs(work: &Path, limit: u64, with_deps: bool) -> std::io::Result<Outputs> {
    let (task, deps) = (work.join("task"), work.join("deps"));
    let package = pack_trees(&[&task, &deps], limit)?;
    let deps = if with_deps {
        Some(pack_trees(&[&deps], limit)?)
    } else {
        None
    };
    Ok(Outputs { package, deps })
}

/// Packs the trees under `roots` into one tar.gz, the first root's entries
/// winning over the same paths in later ones. Only directories and regular
/// files; at most `limit` bytes of file data read.
pub fn pack_trees(roots: &[&Path], limit: u64) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    // Paths taken, and which of them are directories.
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    let mut budget = limit;
    let mut skipped = 0usize;
    for root in roots {
        // (path relative to the root, depth)
        let mut stack: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), 0)];
        while let Some((relative, depth)) = stack.pop() {
            let dir = root.join(&relative);
            let mut names: Vec<_> = std::fs::read_dir(&dir)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()?;
            names.sort();
            for name in names {
                let rel = relative.join(&name);
                let path = root.join(&rel);
                let meta = std::fs::symlink_metadata(&path)?;
                if meta.is_dir() {
                    if depth + 1 > MAX_DEPTH {
                        return Err(too_much("directories nested too deep"));
                    }
                    if seen.insert(rel.clone()) {
                        append_dir(&mut tar, &rel)?;
                        dirs.insert(rel.clone());
                    }
                    // Merged into the same directory of an earlier root;
                    // never under a file of the same name.
                    if dirs.contains(&rel) {
                        stack.push((rel, depth + 1));
                    }
                } else if meta.is_file() {
                    if !seen.insert(rel.clone()) {
                        continue;
                    }
                    append_file(&mut tar, &path, &rel, &mut budget)?;
                } else {
                    skipped += 1;
                    continue;
                }
                if seen.len() > MAX_ENTRIES {
                    return Err(too_much("too many entries"));
                }
            }
        }
    }
    if skipped > 0 {
        info!(
            skipped,
            "left out entries that are neither files nor directories"
        );
    }
    tar.into_inner()?.finish()
}

fn too_much(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

fn append_dir<W: std::io::Write>(tar: &mut tar::Builder<W>, rel: &Path) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    tar.append_data(&mut header, rel, std::io::empty())
}

fn append_file<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    rel: &Path,
    budget: &mut u64,
) -> std::io::Result<()> {
    let file = File::options()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(());
    }
    let size = meta.len();
    if size > *budget {
        return Err(too_much("the build's output is over its bound"));
    }
    // Read what fstat said, no more: a size that lies is cut, not believed.
    let mut data = Vec::with_capacity(size as usize);
    file.take(size).read_to_end(&mut data)?;
    *budget -= data.len() as u64;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(if meta.mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    });
    header.set_size(data.len() as u64);
    tar.append_data(&mut header, rel, data.as_slice())
}

/// `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`.
fn libc_flags() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC)
        .bits() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
        let mut out = Vec::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((name, data));
        }
        out.sort();
        out
    }

    #[test]
    fn packing_takes_files_and_directories_and_no_link() {
        let root = tempfile::tempdir().unwrap();
        let (task, deps) = (root.path().join("task"), root.path().join("deps"));
        std::fs::create_dir_all(task.join("pkg")).unwrap();
        std::fs::create_dir_all(deps.join("pkg")).unwrap();
        std::fs::write(task.join("handler.py"), b"own").unwrap();
        std::fs::write(deps.join("handler.py"), b"shadowed").unwrap();
        std::fs::write(deps.join("pkg/lib.py"), b"dep").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", task.join("leak")).unwrap();
        std::os::unix::fs::symlink("/etc", deps.join("etc")).unwrap();
        nix::unistd::mkfifo(&task.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let packed = entries(&pack_trees(&[&task, &deps], 1 << 20).unwrap());
        assert_eq!(
            packed,
            vec![
                ("handler.py".to_string(), b"own".to_vec()),
                ("pkg".to_string(), vec![]),
                ("pkg/lib.py".to_string(), b"dep".to_vec()),
            ]
        );
    }

    #[test]
    fn packing_stops_at_the_bound() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("big"), vec![0u8; 4096]).unwrap();
        let err = pack_trees(&[root.path()], 4095).unwrap_err();
        assert!(err.to_string().contains("bound"), "{err}");
        assert!(pack_trees(&[root.path()], 4096).is_ok());
    }

    #[test]
    fn jobs_are_checked_before_anything_is_made() {
        let good = BuildJob {
            build_id: "b-1".into(),
            runtime: Some(Default::default()),
            command: "python3 /opt/faas/build.py".into(),
            max_output_bytes: 1 << 20,
            ..Default::default()
        };
        assert!(check_job(&good).is_ok());
        for bad in [
            BuildJob {
                build_id: "../x".into(),
                ..good.clone()
            },
            BuildJob {
                max_output_bytes: 0,
                ..good.clone()
            },
            BuildJob {
                env: [("FAAS_DEPS_CACHED".to_string(), "1".to_string())].into(),
                ..good.clone()
            },
            BuildJob {
                env: [("A=B".to_string(), "1".to_string())].into(),
                ..good.clone()
            },
        ] {
            assert!(check_job(&bad).is_err(), "{bad:?}");
        }
    }
}
