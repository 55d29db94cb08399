//! `containerd-shim-faas-v1`: containerd's runtime v2 shim for faas's
//! one-call containers (runtime name `io.containerd.faas.v1`).
//!
//! containerd 1.6 runs a shim binary three times per container: `start`
//! (which forks the serving daemon), the daemon itself, and `delete` (its
//! clean-up after the daemon's connection closes, which 1.6 runs even after a
//! clean shutdown). With containerd's Go shim that is three Go runtimes
//! started and torn down per container, the largest single cost of a
//! container on a small node (docs/benchmarks.md). This shim does the same
//! job for the one thing faas needs, a single init process per container
//! driven by an OCI runtime CLI (`runc` or `crun`), in a process that starts
//! in about a millisecond.
//!
//! What it supports: create (rootfs mounts, file stdio), start, kill, wait,
//! state, pids, update (resources), delete, connect, shutdown, and the
//! task events containerd expects (`/tasks/create`, `start`, `exit`,
//! `delete`). What it refuses: exec, pause/resume, checkpoint, terminals,
//! stdin, stats: faas never asks for them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

use containerd_shim as shim;
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageDyn, MessageField};
use containerd_shim::protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use containerd_shim::protos::ttrpc;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Config, DeleteResponse, ExitSignal, Flags, TtrpcContext, TtrpcResult};
use log::{info, warn};

/// The runtime id containerd knows this shim by.
const RUNTIME_ID: &str = "io.containerd.faas.v1";
/// State directory of the OCI runtime, one per containerd namespace.
const STATE_ROOT: &str = "/run/containerd/faas";
/// The runtime options' type URL (containerd's runc options, reused: the
/// field faas sets, `binary_name`, means the same here).
const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
/// File in the bundle naming the OCI runtime used, for the `delete` action.
const RUNTIME_FILE: &str = "faas-oci-runtime";
/// Exit status reported for a container whose shim died (SIGKILL).
const DEAD_SHIM_STATUS: u32 = 128 + 9;
/// systemd's readiness socket variable, never passed on to the OCI runtime.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

fn main() {
    // The `delete` action waits for its own child (the OCI runtime's
    // `delete --force`) with std's `wait`; the crate's reaper would race it.
    let deleting = is_delete_action(&std::env::args().collect::<Vec<_>>());
    let config = Config {
        no_reaper: deleting,
        no_sub_reaper: deleting,
        ..Default::default()
    };
    shim::run::<FaasShim>(RUNTIME_ID, Some(config));
}

/// Whether containerd ran this binary for its `delete` action: the action
/// is the last argument (`... -id ID delete`); a container named `delete`
/// (`-id delete`) is not it.
fn is_delete_action(args: &[String]) -> bool {
    const VALUED: [&str; 6] = [
        "-id",
        "-namespace",
        "-address",
        "-publish-binary",
        "-bundle",
        "-socket",
    ];
    match args {
        [.., flag, last] => last == "delete" && !VALUED.contains(&flag.as_str()),
        _ => false,
    }
}

#[derive(Clone)]
struct FaasShim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

impl shim::Shim for FaasShim {
    type T = TaskService;

    fn new(_runtime_id: &str, flags: &Flags, _config: &mut Config) -> Self {
        FaasShim {
            namespace: flags.namespace.clone(),
            id: flags.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: shim::StartOpts) -> Result<String, shim::Error> {
        // One daemon per container: a crash takes one call with it.
        let grouping = opts.id.clone();
        let (_pid, address) = shim::spawn(opts, &grouping, Vec::new())?;
        shim::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd's clean-up after the daemon's connection closed (run in
    /// the bundle directory): usually the container is already deleted and
    /// this returns at once; after a crash it deletes what is left.
    fn delete_shim(&mut self) -> Result<DeleteResponse, shim::Error> {
        let bundle = std::env::current_dir().map_err(|e| shim::Error::Other(e.to_string()))?;
        let root = state_root(&self.namespace);
        if root.join(&self.id).exists() {
            let binary = std::fs::read_to_string(bundle.join(RUNTIME_FILE))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "runc".into());
            let status = Command::new(&binary)
                .env_remove(NOTIFY_SOCKET)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &self.id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                warn!("{binary} delete --force {}: {status:?}", self.id);
            }
        }
        unmount_rootfs(&bundle);
        Ok(DeleteResponse {
            exit_status: DEAD_SHIM_STATUS,
            exited_at: MessageField::some(now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let inner = Arc::new(Inner {
            namespace: self.namespace.clone(),
            publisher: Mutex::new(publisher),
            exit: self.exit.clone(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        // Subscribed before anything is spawned: no exit can be missed.
        let exits = shim::monitor::monitor_subscribe(Topic::All)
            .expect("subscribing to the reaper's exits");
        let collector = inner.clone();
        std::thread::spawn(move || {
            for event in exits.rx.iter() {
                if let Subject::Pid(pid) = event.subject {
                    collector.on_exit(pid, event.exit_code);
                }
            }
        });
        TaskService { inner }
    }
}

fn state_root(namespace: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(namespace)
}

fn now() -> Timestamp {
    shim::util::timestamp().unwrap_or_default()
}

fn unmount_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    if let Err(e) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
            warn!("unmounting {}: {e}", rootfs.display());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Created,
    Running,
    Stopped,
}

struct Container {
    id: String,
    bundle: PathBuf,
    binary: String,
    pid: i32,
    phase: Phase,
    exit: Option<(u32, Timestamp)>,
    stdout: String,
    stderr: String,
}

#[derive(Default)]
struct State {
    container: Option<Container>,
    /// Exits of processes not (yet) known as the init: OCI runtime runs, or
    /// an init that died before its pid was read.
    other_exits: HashMap<i32, i32>,
}

struct Inner {
    namespace: String,
    /// Reconnected when a publish fails: containerd may have restarted
    /// (this shim outlives it, and it reloads the shim from the bundle).
    publisher: Mutex<RemotePublisher>,
    exit: Arc<ExitSignal>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_exit(&self, pid: i32, code: i32) {
        let mut state = self.lock();
        let exited = match state.container.as_mut() {
            Some(c) if c.pid == pid && c.exit.is_none() => {
                let at = now();
                c.exit = Some((code as u32, at.clone()));
                c.phase = Phase::Stopped;
                Some(TaskExit {
                    container_id: c.id.clone(),
                    id: c.id.clone(),
                    pid: pid as u32,
                    exit_status: code as u32,
                    exited_at: MessageField::some(at),
                    ..Default::default()
                })
            }
            _ => {
                if state.other_exits.len() > 1024 {
                    state.other_exits.clear();
                }
                state.other_exits.insert(pid, code);
                None
            }
        };
        drop(state);
        self.changed.notify_all();
        if let Some(event) = exited {
            self.publish(TASK_EXIT_EVENT_TOPIC, Box::new(event));
        }
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let mut publisher = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
        let first = publisher.publish(
            shim::Context::default(),
            topic,
            &self.namespace,
            event.clone_box(),
        );
        let Err(e) = first else {
            return;
        };
        let reconnected = std::env::var("TTRPC_ADDRESS")
            .map_err(|e| shim::Error::Other(e.to_string()))
            .and_then(RemotePublisher::new);
        match reconnected {
            Ok(fresh) => {
                *publisher = fresh;
                if let Err(e) =
                    publisher.publish(shim::Context::default(), topic, &self.namespace, event)
                {
                    warn!("publishing {topic} (after reconnecting): {e}");
                }
            }
            Err(again) => warn!("publishing {topic}: {e}; reconnecting: {again}"),
        }
    }

    /// Runs the OCI runtime with `args` and waits for it through the
    /// reaper (which reaps every child of this subreaper).
    fn oci(&self, binary: &str, bundle: &Path, args: &[&str]) -> TtrpcResult<()> {
        self.oci_with_stdio(binary, bundle, args, Stdio::null(), Stdio::null())
    }

    fn oci_with_stdio(
        &self,
        binary: &str,
        bundle: &Path,
        args: &[&str],
        stdout: Stdio,
        stderr: Stdio,
    ) -> TtrpcResult<()> {
        let log = bundle.join("log.json");
        let _ = std::fs::remove_file(&log);
        let child = Command::new(binary)
            // containerd under systemd (Type=notify) hands its NOTIFY_SOCKET
            // down; a runc that sees it waits in `start` for the container
            // to say READY=1, which no function does: every call would hang.
            .env_remove(NOTIFY_SOCKET)
            .arg("--root")
            .arg(state_root(&self.namespace))
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| internal(format!("running {binary}: {e}")))?;
        let pid = child.id() as i32;
        // The reaper, not `child.wait()`, collects the status.
        drop(child);
        let mut state = self.lock();
        let code = loop {
            if let Some(code) = state.other_exits.remove(&pid) {
                break code;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        };
        drop(state);
        if code == 0 {
            return Ok(());
        }
        Err(internal(format!(
            "{binary} {}: exit status {code}: {}",
            args.first().copied().unwrap_or(""),
            last_log_message(&log)
        )))
    }
}

/// Whether `binary` (a path, or a name looked up on PATH) is an executable file.
fn runtime_exists(binary: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if binary.contains('/') {
        return executable(Path::new(binary));
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(binary))))
        .unwrap_or(false)
}

/// The last `msg` of an OCI runtime's JSON log (runc and crun both write
/// `{"level": ..., "msg": ...}` lines).
fn last_log_message(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find_map(|line| {
            let start = line.find("\"msg\":\"")? + 7;
            let rest = &line[start..];
            let end = rest.find("\",\"").or_else(|| rest.rfind('"'))?;
            Some(rest[..end].replace("\\\"", "\"").replace("\\n", " "))
        })
        .unwrap_or_else(|| "no message".into())
}

fn status(code: ttrpc::Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn internal(message: impl Into<String>) -> ttrpc::Error {
    status(ttrpc::Code::INTERNAL, message)
}

fn not_found(message: impl Into<String>) -> ttrpc::Error {
    status(ttrpc::Code::NOT_FOUND, message)
}

fn unsupported(what: &str) -> ttrpc::Error {
    status(
        ttrpc::Code::UNIMPLEMENTED,
        format!("{what} is not supported by {RUNTIME_ID}"),
    )
}

/// Opens a stdio target: a bare path (FIFO or file) as is, `file://` created.
fn open_stdio(uri: &str) -> TtrpcResult<Option<File>> {
    if uri.is_empty() {
        return Ok(None);
    }
    let (path, create) = match uri.strip_prefix("file://") {
        Some(p) => (p, true),
        None if uri.starts_with('/') => (uri, false),
        None => return Err(unsupported(&format!("stdio {uri}"))),
    };
    OpenOptions::new()
        .append(true)
        .create(create)
        .open(path)
        .map(Some)
        .map_err(|e| internal(format!("opening {path}: {e}")))
}

#[derive(Clone)]
struct TaskService {
    inner: Arc<Inner>,
}

impl TaskService {
    /// Runs `f` on the container, checked to be `id`, with no exec id,
    /// under the state lock.
    fn with<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Container) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        if !exec_id.is_empty() {
            return Err(not_found(format!("exec {exec_id} in {id}")));
        }
        match self.inner.lock().container.as_mut() {
            Some(c) if c.id == id => f(c),
            _ => Err(not_found(format!("container {id}"))),
        }
    }

    fn runtime_binary(
        options: &MessageField<containerd_shim::protos::protobuf::well_known_types::any::Any>,
    ) -> TtrpcResult<String> {
        let Some(any) = options.as_ref() else {
            return Ok("runc".into());
        };
        if !any.type_url.ends_with(RUNC_OPTIONS_TYPE) {
            return Err(status(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("unknown runtime options {}", any.type_url),
            ));
        }
        let options = api::Options::parse_from_bytes(&any.value).map_err(|e| {
            status(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("runtime options: {e}"),
            )
        })?;
        Ok(if options.binary_name.is_empty() {
            "runc".into()
        } else {
            options.binary_name
        })
    }
}

impl shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if req.terminal || !req.stdin.is_empty() {
            return Err(unsupported("a terminal or stdin"));
        }
        if !req.checkpoint.is_empty() {
            return Err(unsupported("restoring a checkpoint"));
        }
        if self.inner.lock().container.is_some() {
            return Err(status(
                ttrpc::Code::ALREADY_EXISTS,
                "this shim already holds a container",
            ));
        }
        let binary = Self::runtime_binary(&req.options)?;
        // A missing binary is a clear error here; a failed exec under the
        // reaper would not be (std waits for such a child, the reaper races it).
        if !runtime_exists(&binary) {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("OCI runtime {binary:?} not found on the shim's PATH"),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        std::fs::write(bundle.join(RUNTIME_FILE), &binary)
            .map_err(|e| internal(format!("writing {RUNTIME_FILE}: {e}")))?;
        let rootfs = bundle.join("rootfs");
        if !req.rootfs.is_empty() {
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| internal(format!("creating {}: {e}", rootfs.display())))?;
        }
        for m in &req.rootfs {
            shim::mount::mount_rootfs(Some(&m.type_), Some(&m.source), &m.options, &rootfs)
                .map_err(|e| internal(format!("mounting the rootfs: {e}")))?;
        }
        let result = (|| {
            let stdout = open_stdio(&req.stdout)?;
            let stderr = if req.stderr == req.stdout {
                stdout
                    .as_ref()
                    .map(|f| f.try_clone())
                    .transpose()
                    .map_err(|e| internal(format!("stdio: {e}")))?
            } else {
                open_stdio(&req.stderr)?
            };
            let to_stdio = |f: Option<File>| f.map(Stdio::from).unwrap_or_else(Stdio::null);
            let pid_file = bundle.join("init.pid");
            self.inner.oci_with_stdio(
                &binary,
                &bundle,
                &[
                    "create",
                    "--bundle",
                    &req.bundle,
                    "--pid-file",
                    pid_file.to_str().unwrap_or_default(),
                    &req.id,
                ],
                to_stdio(stdout),
                to_stdio(stderr),
            )?;
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .ok_or_else(|| internal("the OCI runtime wrote no pid"))
        })();
        let pid = match result {
            Ok(pid) => pid,
            Err(e) => {
                unmount_rootfs(&bundle);
                return Err(e);
            }
        };
        let mut state = self.inner.lock();
        let early_exit = state.other_exits.remove(&pid);
        state.container = Some(Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            binary,
            pid,
            phase: Phase::Created,
            exit: None,
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        });
        drop(state);
        if let Some(code) = early_exit {
            self.inner.on_exit(pid, code);
        }
        info!("created {} (pid {pid})", req.id);
        self.inner.publish(
            TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    ..Default::default()
                }),
                pid: pid as u32,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let (binary, bundle, pid) = self.with(&req.id, &req.exec_id, |c| {
            if c.phase != Phase::Created {
                return Err(status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("{} is not in the created state", c.id),
                ));
            }
            Ok((c.binary.clone(), c.bundle.clone(), c.pid))
        })?;
        self.inner.oci(&binary, &bundle, &["start", &req.id])?;
        self.with(&req.id, "", |c| {
            if c.phase == Phase::Created {
                c.phase = Phase::Running;
            }
            Ok(())
        })?;
        self.inner.publish(
            TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: req.id.clone(),
                pid: pid as u32,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (binary, bundle, pid) = self.with(&req.id, &req.exec_id, |c| {
            if c.exit.is_some() {
                return Err(not_found(format!("{}: process already finished", c.id)));
            }
            Ok((c.binary.clone(), c.bundle.clone(), c.pid))
        })?;
        if req.all {
            let signal = req.signal.to_string();
            return self
                .inner
                .oci(&binary, &bundle, &["kill", "--all", &req.id, &signal])
                .map(|_| api::Empty::default());
        }
        // The init cannot have been reaped (this process is its reaper and
        // the exit above is not recorded), so its pid is not reused yet.
        let signal = nix::sys::signal::Signal::try_from(req.signal as i32)
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, format!("signal: {e}")))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(api::Empty::default()),
            Err(e) => Err(internal(format!("kill {pid}: {e}"))),
        }
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        self.with(&req.id, &req.exec_id, |_| Ok(()))?;
        let mut state = self.inner.lock();
        loop {
            match state.container.as_ref() {
                Some(c) if c.id == req.id => {
                    if let Some((code, at)) = &c.exit {
                        return Ok(api::WaitResponse {
                            exit_status: *code,
                            exited_at: MessageField::some(at.clone()),
                            ..Default::default()
                        });
                    }
                }
                _ => return Err(not_found(format!("container {}", req.id))),
            }
            state = self
                .inner
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (binary, bundle, pid, phase) = self.with(&req.id, &req.exec_id, |c| {
            Ok((c.binary.clone(), c.bundle.clone(), c.pid, c.phase))
        })?;
        if phase == Phase::Running {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("{} is running: kill it first", req.id),
            ));
        }
        let args: &[&str] = if phase == Phase::Created {
            &["delete", "--force", &req.id]
        } else {
            &["delete", &req.id]
        };
        if let Err(e) = self.inner.oci(&binary, &bundle, args) {
            warn!("{e}; forcing");
            self.inner
                .oci(&binary, &bundle, &["delete", "--force", &req.id])?;
        }
        unmount_rootfs(&bundle);
        let (code, at) = {
            let mut state = self.inner.lock();
            let exit = state.container.take().and_then(|c| c.exit);
            exit.unwrap_or((DEAD_SHIM_STATUS, now()))
        };
        self.inner.changed.notify_all();
        self.inner.publish(
            TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid: pid as u32,
                exit_status: code,
                exited_at: MessageField::some(at.clone()),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid: pid as u32,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        self.with(&req.id, &req.exec_id, |c| {
            let (exit_status, exited_at) = match &c.exit {
                Some((code, at)) => (*code, MessageField::some(at.clone())),
                None => (0, MessageField::none()),
            };
            Ok(api::StateResponse {
                id: c.id.clone(),
                bundle: c.bundle.to_string_lossy().into_owned(),
                pid: c.pid as u32,
                status: match c.phase {
                    Phase::Created => api::Status::CREATED,
                    Phase::Running => api::Status::RUNNING,
                    Phase::Stopped => api::Status::STOPPED,
                }
                .into(),
                stdout: c.stdout.clone(),
                stderr: c.stderr.clone(),
                exit_status,
                exited_at,
                ..Default::default()
            })
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.with(&req.id, "", |c| {
            let mut processes = Vec::new();
            if c.exit.is_none() {
                processes.push(containerd_shim::protos::types::task::ProcessInfo {
                    pid: c.pid as u32,
                    ..Default::default()
                });
            }
            Ok(api::PidsResponse {
                processes,
                ..Default::default()
            })
        })
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let (binary, bundle) =
            self.with(&req.id, "", |c| Ok((c.binary.clone(), c.bundle.clone())))?;
        let Some(resources) = req.resources.as_ref() else {
            return Ok(api::Empty::default());
        };
        // containerd sends the OCI LinuxResources as JSON.
        let file = bundle.join("resources.json");
        std::fs::write(&file, &resources.value)
            .map_err(|e| internal(format!("writing {}: {e}", file.display())))?;
        let path = file.to_string_lossy().into_owned();
        self.inner
            .oci(&binary, &bundle, &["update", "--resources", &path, &req.id])
            .map(|_| api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, _req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // No stdin is ever attached.
        Ok(api::Empty::default())
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .inner
            .lock()
            .container
            .as_ref()
            .map(|c| c.pid as u32)
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // containerd asks after every delete; a shim still holding its
        // container keeps serving it.
        if self.inner.lock().container.is_none() {
            self.inner.exit.signal();
        }
        Ok(api::Empty::default())
    }

    fn exec(&self, _ctx: &TtrpcContext, _req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        Err(unsupported("exec"))
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(unsupported("pause"))
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        Err(unsupported("resume"))
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unsupported("checkpoint"))
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unsupported("a terminal"))
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        _req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Err(unsupported("stats"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_message_of_a_json_log_is_reported() {
        let dir = std::env::temp_dir().join(format!("faas-shim-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"first\",\"time\":\"t\"}\n\
             {\"msg\":\"open `/x`: No such file or directory\",\"level\":\"error\",\"time\":\"t\"}\n",
        )
        .unwrap();
        assert_eq!(
            last_log_message(&log),
            "open `/x`: No such file or directory"
        );
        std::fs::write(&log, "not json\n").unwrap();
        assert_eq!(last_log_message(&log), "no message");
        assert_eq!(last_log_message(&dir.join("missing")), "no message");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stdio_uris_are_files_or_paths_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("faas-shim-stdio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let created = dir.join("created.log");
        assert!(open_stdio(&format!("file://{}", created.display()))
            .unwrap()
            .is_some());
        assert!(created.exists(), "file:// creates the file");
        // A bare path must exist (a FIFO or a file made by the caller).
        assert!(open_stdio(dir.join("absent").to_str().unwrap()).is_err());
        assert!(open_stdio(created.to_str().unwrap()).unwrap().is_some());
        assert!(open_stdio("").unwrap().is_none());
        assert!(open_stdio("binary:///usr/bin/logger").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_delete_action_is_taken_for_one() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_delete_action(&args(&[
            "shim",
            "-namespace",
            "faas",
            "-id",
            "c1",
            "delete"
        ])));
        assert!(!is_delete_action(&args(&[
            "shim",
            "-namespace",
            "faas",
            "-id",
            "c1",
            "start"
        ])));
        assert!(!is_delete_action(&args(&[
            "shim",
            "-namespace",
            "faas",
            "-id",
            "delete"
        ])));
        assert!(!is_delete_action(&args(&["shim"])));
    }

    #[test]
    fn runtime_binaries_are_found_on_path_or_by_path() {
        assert!(runtime_exists("sh"));
        assert!(runtime_exists("/bin/sh"));
        assert!(!runtime_exists("no-such-oci-runtime"));
        let plain = std::env::temp_dir().join(format!("faas-shim-plain-{}", std::process::id()));
        std::fs::write(&plain, "not a program").unwrap();
        assert!(!runtime_exists(plain.to_str().unwrap()), "not executable");
        std::fs::remove_file(&plain).unwrap();
    }
}
