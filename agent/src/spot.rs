//! One spot: runs the operations the broker sends it, one at a time. A
//! container serves at most one call and is destroyed after it; preloading
//! only moves its creation (and the function's loading) before the call.
//!
//! The six worker operations of the thesis (4.2.2):
//! - execute-no-preload: fresh container, function loaded, call run;
//! - preload-runtime: container created and started, faas-init waiting at
//!   its load gate for a function;
//! - preload-function: container with the function's files, dependencies
//!   run, the run process started and blocked on its input FIFO (imports
//!   done before the call arrives);
//! - exec-runtime-preloaded / exec-function-preloaded: the call finishes
//!   what the preload began; the result is returned before the tear-down;
//! - clear-spot: whatever the spot holds is destroyed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_driver::{BindMount, ContainerSpec, Driver, DriverError, ExitStatus, ImageInfo, Limits};
use faas_proto::v1::{
    agent_message, spot_operation, AgentMessage, CallAssignment, CallError, CallResult, CallStatus,
    FunctionBundle, RuntimeBundle, Spot, SpotOperation, SpotReport, SpotState, StartKind, Timings,
};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info_span, warn, Instrument};

use crate::config::Config;
use crate::packages::{copy_tree, PackageLease, Packages};

/// The unprivileged user functions run as.
pub const FUNCTION_UID: u32 = 65534;
pub const FUNCTION_GID: u32 = 65534;

const INIT_PATH: &str = "/faas/bin/faas-init";
const IO_DIR: &str = "/faas/io";
/// Grace given to a killed container to be reaped and flush its stdio.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Longest a preload may take (image pull, dependencies) before it fails.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// What every spot of the agent shares.
pub struct SpotContext {
    pub config: Config,
    pub driver: Driver,
    pub packages: Packages,
    pub outbound: mpsc::UnboundedSender<AgentMessage>,
    /// Calls being run now, told to the leader in every hello.
    pub running: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Containers whose tear-down failed (containerd away): retried until
    /// they are gone.
    pub teardown_retry: std::sync::Mutex<Vec<String>>,
}

impl SpotContext {
    /// Retries the failed tear-downs; returns how many remain.
    pub async fn retry_teardowns(&self) -> usize {
        let ids = std::mem::take(&mut *self.teardown_retry.lock().expect("poisoned"));
        for id in ids {
            if let Err(e) = self.driver.destroy(&id).await {
                tracing::debug!(container = %id, error = %e, "tear-down still failing");
                self.teardown_retry.lock().expect("poisoned").push(id);
            } else {
                tracing::info!(container = %id, "delayed tear-down done");
            }
        }
        self.teardown_retry.lock().expect("poisoned").len()
    }
}

impl SpotContext {
    fn report(&self, spot: Spot, error: String) {
        let _ = self.outbound.send(AgentMessage {
            msg: Some(agent_message::Msg::Spot(SpotReport {
                spot: Some(spot),
                error,
            })),
        });
    }

    fn send_result(&self, result: CallResult) {
        // Queued for the stream before it stops counting as running: a
        // hello sent in between lists it, and its result follows.
        let call_id = result.call_id.clone();
        let _ = self.outbound.send(AgentMessage {
            msg: Some(agent_message::Msg::Result(result)),
        });
        self.running.lock().expect("poisoned").remove(&call_id);
    }
}

fn wall_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn function_label(f: &FunctionBundle) -> String {
    format!("{}@{}", f.name, f.version)
}

/// A started container that has not served a call yet.
struct Live {
    id: String,
    dir: PathBuf,
    runtime: RuntimeBundle,
    /// Set when the function is loaded (preload-function, or cold).
    function: Option<FunctionBundle>,
    exit: JoinHandle<Result<ExitStatus, DriverError>>,
    notify: tokio::io::Lines<BufReader<pipe::Receiver>>,
    /// Memory limit the container was created with.
    memory_bytes: u64,
    /// Time spent creating it: image, files, create, start.
    runtime_load_ms: f64,
    /// Of which: making sure the image is unpacked.
    image_ms: f64,
    /// Wall clock (epoch ms) when the container's creation began: with
    /// faas-init's own start time it splits start-up from the run.
    create_began_at_ms: f64,
    function_load_ms: f64,
    /// Keeps the package mounted from the cache in the cache while the
    /// container lives.
    _package: Option<PackageLease>,
}

/// What a spot holds between operations.
enum Held {
    Nothing,
    Runtime(Live),
    Function(Live),
}

/// Runs a spot's operations in order until the channel closes.
pub async fn run_spot(
    ctx: Arc<SpotContext>,
    index: u32,
    mut ops: mpsc::UnboundedReceiver<SpotOperation>,
) {
    let mut held = Held::Nothing;
    let mut seq: u64 = 0;
    while let Some(op) = ops.recv().await {
        seq += 1;
        use spot_operation::Kind;
        let kind = op.kind();
        let call_id = op
            .call
            .as_ref()
            .map(|c| c.call_id.clone())
            .unwrap_or_default();
        let span = info_span!("spot", spot = index, op = ?kind, call_id = %call_id);
        let slot = Slot {
            ctx: &ctx,
            index,
            seq,
        };
        held = async {
            match (kind, op.runtime, op.function, op.call) {
                (Kind::ExecuteNoPreload, Some(rt), Some(f), Some(call)) => {
                    slot.clear(held).await;
                    slot.execute_cold(rt, f, call).await;
                    Held::Nothing
                }
                (Kind::ExecRuntimePreloaded, Some(rt), Some(f), Some(call)) => match held {
                    Held::Runtime(live)
                        if live.runtime.image == rt.image && live.runtime.name == rt.name =>
                    {
                        slot.execute_on_runtime(live, f, call).await;
                        Held::Nothing
                    }
                    other => {
                        warn!("runtime not preloaded here as the broker thought; running cold");
                        slot.clear(other).await;
                        slot.execute_cold(rt, f, call).await;
                        Held::Nothing
                    }
                },
                (Kind::ExecFunctionPreloaded, Some(rt), Some(f), Some(call)) => match held {
                    Held::Function(live)
                        if live.function.as_ref().is_some_and(|p| {
                            p.name == f.name
                                && p.version == f.version
                                && p.package_digest == f.package_digest
                        }) =>
                    {
                        slot.execute_on_function(live, call).await;
                        Held::Nothing
                    }
                    other => {
                        // Never run another version than the call's.
                        warn!("function not preloaded here at this version; running cold");
                        slot.clear(other).await;
                        slot.execute_cold(rt, f, call).await;
                        Held::Nothing
                    }
                },
                (Kind::PreloadRuntime, Some(rt), _, _) => {
                    slot.clear(held).await;
                    slot.preload(rt, None).await
                }
                (Kind::PreloadFunction, Some(rt), Some(f), _) => {
                    slot.clear(held).await;
                    slot.preload(rt, Some(f)).await
                }
                (Kind::ClearSpot, _, _, _) => {
                    slot.clear(held).await;
                    slot.report_free(String::new());
                    Held::Nothing
                }
                (kind, ..) => {
                    warn!(?kind, "operation without the bundles it needs; ignored");
                    held
                }
            }
        }
        .instrument(span)
        .await;
    }
    Slot {
        ctx: &ctx,
        index,
        seq,
    }
    .clear(held)
    .await;
}

/// How the run of a call ended.
enum Ended {
    /// faas-init reported `done` (the container may still be exiting).
    Done,
    /// The container exited (before or without `done`).
    Exited(ExitStatus),
    TimedOut,
    Broken(String),
}

/// `status.json`, as written by faas-init.
#[derive(Debug, Default, Deserialize)]
struct InitStatus {
    #[serde(default)]
    started_at_ms: f64,
    #[serde(default)]
    deps_ms: f64,
    deps_exit: Option<i32>,
    run_ms: Option<f64>,
    run_exit: Option<i32>,
    run_signal: Option<i32>,
    error: Option<String>,
}

/// `error.json`, as written by a runtime when the handler failed.
#[derive(Debug, Deserialize)]
struct RuntimeErrorReport {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

/// The files of a container's private directory and how they are created.
enum InputKind {
    /// The call's input as a regular file (a cold start).
    File(String),
    /// A FIFO the call's input is written to when it arrives.
    Fifo,
}

struct Slot<'a> {
    ctx: &'a SpotContext,
    index: u32,
    seq: u64,
}

impl Slot<'_> {
    fn report(
        &self,
        state: SpotState,
        runtime: &str,
        function: &str,
        call_id: &str,
        error: String,
    ) {
        self.ctx.report(
            Spot {
                index: self.index,
                state: state as i32,
                runtime: runtime.to_string(),
                function: function.to_string(),
                call_id: call_id.to_string(),
            },
            error,
        );
    }

    fn report_free(&self, error: String) {
        self.report(SpotState::Free, "", "", "", error);
    }

    fn container_id(&self, call_id: Option<&str>) -> String {
        match call_id {
            Some(id) => format!("call-{id}"),
            None => format!("spot-{}-{}-{}", self.index, self.seq, std::process::id()),
        }
    }

    /// Destroys whatever the spot holds.
    async fn clear(&self, held: Held) {
        if let Held::Runtime(live) | Held::Function(live) = held {
            destroy(self.ctx, live).await;
        }
    }

    /// Creates and starts a container for `runtime` (and `function`, if
    /// known now). Returns it with the time it took.
    async fn start_container(
        &self,
        id: String,
        runtime: &RuntimeBundle,
        function: Option<&FunctionBundle>,
        input: InputKind,
    ) -> Result<Live, String> {
        let ctx = self.ctx;
        let t = Instant::now();
        let image = ctx
            .driver
            .ensure_image(&runtime.image)
            .await
            .map_err(|e| format!("loading runtime image: {e}"))?;
        let image_ms = ms(t.elapsed());

        let t = Instant::now();
        let package = match function {
            Some(f) => Some(
                ctx.packages
                    .ensure(&f.package_repository, &f.package_digest)
                    .await
                    .map_err(|e| format!("loading function package: {e}"))?,
            ),
            None => None,
        };
        let dir = ctx.config.state_dir.join("spots").join(&id);
        {
            let dir = dir.clone();
            let io_bytes = ctx.config.io_tmpfs_bytes();
            // Empty until a function is loaded into a runtime-preloaded spot.
            let env = function
                .map(|f| function_env(f, runtime))
                .unwrap_or_default();
            tokio::task::spawn_blocking(move || prepare_dir(&dir, input, io_bytes, &env))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("preparing the container's files: {e}"))?;
        }
        let function_load_ms = if function.is_some() {
            ms(t.elapsed())
        } else {
            0.0
        };

        let t = Instant::now();
        let create_began_at_ms = wall_ms();
        let notify = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(dir.join("io/notify"))
            .map_err(|e| format!("opening the notify FIFO: {e}"))?;
        let memory_bytes = function
            .map(|f| f.memory_bytes)
            .unwrap_or(ctx.config.preload_memory_bytes);
        // A function known now is mounted straight from the package cache
        // (read-only, nothing copied); a runtime-preloaded spot gets its
        // own empty directory, filled when the call arrives.
        let fn_source = match &package {
            Some(p) => p.path().to_path_buf(),
            None => dir.join("fn"),
        };
        let spec = container_spec(ctx, &id, &dir, &fn_source, image, runtime, memory_bytes);
        let created = async {
            ctx.driver
                .create(&spec)
                .await
                .map_err(|e| format!("creating the container: {e}"))?;
            let waiter = ctx
                .driver
                .start(&id)
                .await
                .map_err(|e| format!("starting the container: {e}"))?;
            Ok::<_, String>(tokio::spawn(waiter.wait()))
        }
        .await;
        let exit = match created {
            Ok(exit) => exit,
            Err(e) => {
                if let Err(e) = ctx.driver.destroy(&id).await {
                    warn!(error = %e, container = %id, "undoing a failed create failed; will retry");
                    ctx.teardown_retry
                        .lock()
                        .expect("poisoned")
                        .push(id.clone());
                }
                unmount_io(&dir);
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(e);
            }
        };
        let mut live = Live {
            id,
            dir,
            runtime: runtime.clone(),
            function: function.cloned(),
            exit,
            notify: BufReader::new(notify).lines(),
            memory_bytes,
            runtime_load_ms: image_ms + ms(t.elapsed()),
            image_ms,
            create_began_at_ms,
            function_load_ms,
            _package: package,
        };
        if function.is_some() {
            // Nothing to wait for: faas-init goes on with the dependencies.
            let gate = live.dir.join("io/load-gate");
            let deadline = Instant::now() + Duration::from_secs(30);
            if write_fifo(&mut live, &gate, b"go\n", deadline)
                .await
                .is_err()
            {
                destroy(ctx, live).await;
                return Err("the container's init did not start".into());
            }
        }
        Ok(live)
    }

    /// Preloads the runtime, or the function too; reports the spot
    /// preloaded only once it is.
    async fn preload(&self, runtime: RuntimeBundle, function: Option<FunctionBundle>) -> Held {
        let label = function.as_ref().map(function_label).unwrap_or_default();
        self.report(
            SpotState::Preloading,
            &runtime.name,
            &label,
            "",
            String::new(),
        );
        let id = self.container_id(None);
        let mut live = match self
            .start_container(id, &runtime, function.as_ref(), InputKind::Fifo)
            .await
        {
            Ok(live) => live,
            Err(e) => {
                warn!(error = %e, "preload failed");
                self.report_free(e);
                return Held::Nothing;
            }
        };
        if function.is_none() {
            // faas-init waits at its load gate from its first instant.
            self.report(
                SpotState::PreloadedRuntime,
                &runtime.name,
                "",
                "",
                String::new(),
            );
            return Held::Runtime(live);
        }
        // The function is loaded once its dependencies ran.
        let ready = tokio::time::timeout(PRELOAD_TIMEOUT, async {
            loop {
                tokio::select! {
                    line = live.notify.next_line() => match line {
                        Ok(Some(l)) if l == "deps-done" => return Ok(()),
                        Ok(Some(l)) if l == "done" => return Err("the container finished during its preload".to_string()),
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => return Err("the notify FIFO broke".to_string()),
                    },
                    exit = &mut live.exit => {
                        return Err(format!("the container exited during its preload: {exit:?}"));
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err("the preload timed out".into()));
        match ready {
            Ok(()) => {
                self.report(
                    SpotState::PreloadedFunction,
                    &runtime.name,
                    &label,
                    "",
                    String::new(),
                );
                Held::Function(live)
            }
            Err(e) => {
                let tail = tail_lines(&read_logs(&live.dir.join("io/log"), 4096).0, 10, 2048);
                warn!(error = %e, log_tail = %tail, "function preload failed");
                destroy(self.ctx, live).await;
                self.report_free(format!("{e}; log tail: {tail}"));
                Held::Nothing
            }
        }
    }

    async fn execute_cold(
        &self,
        runtime: RuntimeBundle,
        function: FunctionBundle,
        call: CallAssignment,
    ) {
        self.report_running(&runtime, &function, &call);
        let id = self.container_id(Some(&call.call_id));
        let input = envelope(&call, &function);
        let mut timings = Timings {
            start_kind: StartKind::Cold as i32,
            ..Default::default()
        };
        match self
            .start_container(id, &runtime, Some(&function), InputKind::File(input))
            .await
        {
            Ok(mut live) => {
                timings.runtime_load_ms = live.runtime_load_ms;
                timings.function_load_ms = live.function_load_ms;
                let started = Instant::now();
                let ended = wait_done(self.ctx, &mut live, &function, started).await;
                self.finish(live, &function, &call, ended, started, timings, false)
                    .await;
            }
            Err(e) => {
                self.ctx
                    .send_result(platform_failure(&call, self.index, e, timings));
                self.report_free(String::new());
            }
        }
    }

    async fn execute_on_runtime(
        &self,
        mut live: Live,
        function: FunctionBundle,
        call: CallAssignment,
    ) {
        self.report_running(&live.runtime, &function, &call);
        let mut timings = Timings {
            start_kind: StartKind::PrewarmRuntime as i32,
            ..Default::default()
        };
        let t = Instant::now();
        let loaded = self.load_function_into(&mut live, &function).await;
        timings.function_load_ms = ms(t.elapsed());
        if let Err(e) = loaded {
            self.ctx
                .send_result(platform_failure(&call, self.index, e, timings));
            destroy(self.ctx, live).await;
            self.report_free(String::new());
            return;
        }
        let started = Instant::now();
        let input = envelope(&call, &function);
        let ended = match write_input(&mut live, &input, &function).await {
            Ok(()) => wait_done(self.ctx, &mut live, &function, started).await,
            Err(ended) => ended,
        };
        live.function = Some(function.clone());
        self.finish(live, &function, &call, ended, started, timings, false)
            .await;
    }

    async fn execute_on_function(&self, mut live: Live, call: CallAssignment) {
        let function = live
            .function
            .clone()
            .expect("a function-preloaded spot has its function");
        self.report_running(&live.runtime, &function, &call);
        let timings = Timings {
            start_kind: StartKind::PrewarmFunction as i32,
            ..Default::default()
        };
        let started = Instant::now();
        let input = envelope(&call, &function);
        let ended = match write_input(&mut live, &input, &function).await {
            Ok(()) => wait_done(self.ctx, &mut live, &function, started).await,
            Err(ended) => ended,
        };
        self.finish(live, &function, &call, ended, started, timings, true)
            .await;
    }

    /// Places a function into a runtime-preloaded container and releases
    /// its load gate.
    async fn load_function_into(
        &self,
        live: &mut Live,
        function: &FunctionBundle,
    ) -> Result<(), String> {
        let package = self
            .ctx
            .packages
            .ensure(&function.package_repository, &function.package_digest)
            .await
            .map_err(|e| format!("loading function package: {e}"))?;
        if function.memory_bytes != live.memory_bytes {
            self.ctx
                .driver
                .update_memory(&live.id, function.memory_bytes)
                .await
                .map_err(|e| format!("setting the memory limit: {e}"))?;
            live.memory_bytes = function.memory_bytes;
        }
        let dir = live.dir.clone();
        let env = function_env(function, &live.runtime);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            copy_tree(package.path(), &dir.join("fn"))?;
            write_owned(&dir.join("io/env"), &env_file(&env))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("placing the function's files: {e}"))?;
        // faas-init opens its end of the gate right after the container
        // started; a call can arrive before that.
        let deadline = Instant::now() + Duration::from_millis(function.timeout_ms.max(1));
        let gate = live.dir.join("io/load-gate");
        write_fifo(live, &gate, b"go\n", deadline)
            .await
            .map_err(|_| "the runtime-preloaded container did not take its function".to_string())?;
        Ok(())
    }

    fn report_running(
        &self,
        runtime: &RuntimeBundle,
        function: &FunctionBundle,
        call: &CallAssignment,
    ) {
        self.report(
            SpotState::Running,
            &runtime.name,
            &function_label(function),
            &call.call_id,
            String::new(),
        );
    }

    /// Builds and sends the result, then tears the container down.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        live: Live,
        function: &FunctionBundle,
        call: &CallAssignment,
        ended: Ended,
        started: Instant,
        mut timings: Timings,
        measure_execution_here: bool,
    ) {
        let mut live = live;
        let waited = ms(started.elapsed());
        let io_dir = live.dir.join("io");
        let status: InitStatus =
            read_json(&io_dir.join("status.json"), 64 << 10).unwrap_or_default();
        // An OOM kill shows as SIGKILL of the run; only the container's exit
        // says whether the memory cgroup did it.
        let mut oom = false;
        match &ended {
            Ended::Exited(exit) => oom = exit.oom_killed,
            Ended::Done if status.run_signal == Some(9) => {
                if let Ok(Ok(Ok(exit))) = tokio::time::timeout(KILL_GRACE, &mut live.exit).await {
                    oom = exit.oom_killed;
                }
            }
            Ended::TimedOut => {
                if let Err(e) = self.ctx.driver.kill(&live.id, 9).await {
                    warn!(error = %e, "killing a timed-out container failed");
                }
                let _ = tokio::time::timeout(KILL_GRACE, &mut live.exit).await;
            }
            _ => {}
        }
        if timings.start_kind() == StartKind::Cold && status.started_at_ms > live.create_began_at_ms
        {
            // Up to faas-init's first instant; from there on it is the
            // dependencies and the run (Tasks.Start returns after the
            // process began, so its own duration would overlap the run).
            timings.runtime_load_ms =
                live.image_ms + (status.started_at_ms - live.create_began_at_ms);
        }
        timings.dependencies_ms = if timings.start_kind() == StartKind::PrewarmFunction {
            0.0
        } else {
            status.deps_ms
        };
        timings.execution_ms = if measure_execution_here || matches!(ended, Ended::TimedOut) {
            waited
        } else {
            status.run_ms.unwrap_or(waited)
        };
        // faas-init kept them within the bound (with its own marker); the
        // agent's bound only guards against a log file the function forged.
        let (logs, logs_truncated) = read_logs(
            &live.dir.join("io/log"),
            self.ctx.config.max_log_bytes + 256,
        );
        let logs_truncated = logs_truncated || contains(&logs, b" bytes of logs cut by faas ...]");
        let result = build_result(
            self.ctx,
            self.index,
            call,
            function,
            &io_dir,
            &status,
            &ended,
            oom,
            logs,
            logs_truncated,
            timings,
        );
        // The result goes out before the tear-down: nobody waits for it.
        self.ctx.send_result(result);
        // faas-init exits right after reporting: a container already
        // stopped is deleted without a `runc kill` (a process start of
        // ~8 ms CPU, paid by about half the calls otherwise).
        let mut live = live;
        // (A finished handle may have been awaited already: polling it
        // again would panic.)
        if !live.exit.is_finished() {
            let _ = tokio::time::timeout(EXIT_GRACE, &mut live.exit).await;
        }
        destroy(self.ctx, live).await;
        self.report_free(String::new());
    }
}

/// Waits for the end of the run: faas-init's `done`, the container's exit,
/// or the function's timeout (counted from `started`).
async fn wait_done(
    _ctx: &SpotContext,
    live: &mut Live,
    function: &FunctionBundle,
    started: Instant,
) -> Ended {
    let deadline = started + Duration::from_millis(function.timeout_ms.max(1));
    loop {
        tokio::select! {
            line = live.notify.next_line() => match line {
                Ok(Some(l)) if l == "done" => return Ended::Done,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    // No more notifications: rely on the exit.
                    return match tokio::time::timeout_at(deadline.into(), &mut live.exit).await {
                        Ok(Ok(Ok(exit))) => Ended::Exited(exit),
                        Ok(Ok(Err(e))) => Ended::Broken(format!("waiting for the container: {e}")),
                        Ok(Err(e)) => Ended::Broken(format!("waiting for the container: {e}")),
                        Err(_) => Ended::TimedOut,
                    };
                }
            },
            exit = &mut live.exit => return match exit {
                Ok(Ok(exit)) => Ended::Exited(exit),
                Ok(Err(e)) => Ended::Broken(format!("waiting for the container: {e}")),
                Err(e) => Ended::Broken(format!("waiting for the container: {e}")),
            },
            _ = tokio::time::sleep_until(deadline.into()) => return Ended::TimedOut,
        }
    }
}

/// Writes the call's input into the input FIFO once the run process opens
/// it (after its imports), within the call's timeout.
async fn write_input(live: &mut Live, input: &str, function: &FunctionBundle) -> Result<(), Ended> {
    let deadline = Instant::now() + Duration::from_millis(function.timeout_ms.max(1));
    let path = live.dir.join("io/input.json");
    write_fifo(live, &path, input.as_bytes(), deadline).await
}

/// Writes `data` into a FIFO of the container once its reader has opened
/// it; gives up at `deadline` or if the container ends first.
async fn write_fifo(
    live: &mut Live,
    path: &Path,
    data: &[u8],
    deadline: Instant,
) -> Result<(), Ended> {
    let mut sender = loop {
        match pipe::OpenOptions::new().open_sender(path) {
            Ok(s) => break s,
            // ENXIO: no reader yet (the runtime is still starting).
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {}
            Err(e) => return Err(Ended::Broken(format!("opening {}: {e}", path.display()))),
        }
        if Instant::now() >= deadline {
            return Err(Ended::TimedOut);
        }
        tokio::select! {
            exit = &mut live.exit => return Err(match exit {
                Ok(Ok(exit)) => Ended::Exited(exit),
                other => Ended::Broken(format!("the container ended before reading {}: {other:?}", path.display())),
            }),
            _ = tokio::time::sleep(Duration::from_micros(500)) => {}
        }
    };
    let written = tokio::time::timeout_at(deadline.into(), async {
        sender.write_all(data).await?;
        sender.flush().await
    })
    .await;
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Ended::Broken(format!("writing {}: {e}", path.display()))),
        Err(_) => Err(Ended::TimedOut),
    }
    // Dropping the sender closes it: the reader sees the end of its data.
}

/// How long a finished call's container is given to stop by itself before
/// its tear-down.
const EXIT_GRACE: Duration = Duration::from_millis(100);

async fn destroy(ctx: &SpotContext, live: Live) {
    live.exit.abort();
    if let Err(e) = ctx.driver.destroy(&live.id).await {
        warn!(error = %e, container = %live.id, "destroying a container failed; will retry");
        ctx.teardown_retry
            .lock()
            .expect("poisoned")
            .push(live.id.clone());
    }
    let dir = live.dir.clone();
    let _ = tokio::task::spawn_blocking(move || unmount_io(&dir)).await;
    if let Err(e) = tokio::fs::remove_dir_all(&live.dir).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(error = %e, dir = %live.dir.display(), "removing a container's files failed");
        }
    }
}

/// The input the runtime reads from $FAAS_INPUT.
fn envelope(call: &CallAssignment, function: &FunctionBundle) -> String {
    let deadline_ms = crate::now_ms() + function.timeout_ms as i64;
    // The control plane validated the params as JSON: splice them in as
    // they are instead of parsing them again.
    format!(
        "{{\"call_id\":{},\"deadline_ms\":{deadline_ms},\"event\":{}}}",
        serde_json::Value::String(call.call_id.clone()),
        call.params_json
    )
}

/// A failed result with no run behind it (the platform could not start it).
fn platform_failure(
    call: &CallAssignment,
    spot: u32,
    message: String,
    timings: Timings,
) -> CallResult {
    CallResult {
        call_id: call.call_id.clone(),
        spot,
        status: CallStatus::Failed as i32,
        error: Some(CallError {
            reason: "platform".into(),
            message,
            log_tail: String::new(),
        }),
        timings: Some(timings),
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn build_result(
    ctx: &SpotContext,
    index: u32,
    call: &CallAssignment,
    function: &FunctionBundle,
    io_dir: &Path,
    status: &InitStatus,
    ended: &Ended,
    oom: bool,
    logs: Vec<u8>,
    logs_truncated: bool,
    timings: Timings,
) -> CallResult {
    let log_tail = tail_lines(&logs, 20, 4096);
    let mut result = CallResult {
        call_id: call.call_id.clone(),
        spot: index,
        status: CallStatus::Succeeded as i32,
        logs,
        logs_truncated,
        timings: Some(timings),
        ..Default::default()
    };
    let mut fail = |status: CallStatus, reason: &str, message: String| {
        result.status = status as i32;
        result.error = Some(CallError {
            reason: reason.into(),
            message,
            log_tail: log_tail.clone(),
        });
    };
    let exit_code = match ended {
        Ended::Exited(exit) => Some(exit.code as i32),
        _ => None,
    };
    if let Ended::TimedOut = ended {
        fail(
            CallStatus::Timeout,
            "timeout",
            format!(
                "the call ran past its timeout of {} and was killed",
                humantime::format_duration(Duration::from_millis(function.timeout_ms))
            ),
        );
    } else if let Ended::Broken(message) = ended {
        fail(CallStatus::Failed, "platform", message.clone());
    } else if oom {
        fail(
            CallStatus::Failed,
            "oom",
            format!(
                "the call ran out of memory (limit {} MiB) and was killed",
                function.memory_bytes >> 20
            ),
        );
    } else if status.deps_exit.is_some_and(|c| c != 0) {
        fail(
            CallStatus::Failed,
            "dependencies",
            format!(
                "the runtime's dependencies command failed (exit {})",
                status.deps_exit.unwrap_or_default()
            ),
        );
    } else if let Some(error) = &status.error {
        fail(
            CallStatus::Failed,
            "platform",
            format!("faas-init: {error}"),
        );
    } else if status.run_exit != Some(0)
        || exit_code.is_some_and(|c| c != 0 && status.run_exit.is_none())
    {
        let message = match read_json::<RuntimeErrorReport>(&io_dir.join("error.json"), 64 << 10) {
            Some(e) if !e.message.is_empty() || !e.kind.is_empty() => {
                if e.kind.is_empty() {
                    e.message
                } else {
                    format!("{}: {}", e.kind, e.message)
                }
            }
            _ => match (status.run_signal, status.run_exit, exit_code) {
                (Some(sig), _, _) => format!("the function was killed by signal {sig}"),
                (None, Some(code), _) => format!("the function exited with code {code}"),
                (None, None, Some(code)) => format!("the container exited with code {code}"),
                (None, None, None) => "the function ended without a status".to_string(),
            },
        };
        fail(CallStatus::Failed, "error", message);
    } else {
        match read_output(&io_dir.join("output.json"), ctx.config.max_result_bytes) {
            Ok(json) => result.result_json = json,
            Err((reason, message)) => fail(CallStatus::Failed, reason, message),
        }
    }
    result
}

/// Makes a container's private directory: `fn/` (empty: filled only for a
/// runtime-preloaded spot when its call arrives) and `io/`, a tmpfs of
/// `io_bytes` (so a call's input, output and logs cannot fill the host's
/// disk) with the notify FIFO, the load gate and the input (a file or a
/// FIFO), all owned by the function's user.
fn prepare_dir(dir: &Path, input: InputKind, io_bytes: u64, env: &[String]) -> std::io::Result<()> {
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
        Some(format!("size={io_bytes},mode=0700,uid={FUNCTION_UID},gid={FUNCTION_GID}").as_str()),
    )
    .map_err(std::io::Error::from)?;
    let fifo = |name: &str| -> std::io::Result<()> {
        let path = io.join(name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        std::os::unix::fs::chown(&path, Some(FUNCTION_UID), Some(FUNCTION_GID))
    };
    fifo("notify")?;
    // Every container gets the same faas-init command line and the same
    // files, whatever the operation: what a function can see does not
    // depend on how its container was started.
    fifo("load-gate")?;
    write_owned(&io.join("env"), &env_file(env))?;
    match input {
        InputKind::File(text) => write_owned(&io.join("input.json"), text.as_bytes())?,
        InputKind::Fifo => fifo("input.json")?,
    }
    Ok(())
}

/// Detaches the io tmpfs of a container's directory, if mounted.
pub fn unmount_io(dir: &Path) {
    let _ = nix::mount::umount2(&dir.join("io"), nix::mount::MntFlags::MNT_DETACH);
}

/// faas-init's `--env-file`: NUL-separated `KEY=VALUE` entries.
fn env_file(env: &[String]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in env {
        bytes.extend_from_slice(entry.as_bytes());
        bytes.push(0);
    }
    bytes
}

fn write_owned(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)?;
    std::os::unix::fs::chown(path, Some(FUNCTION_UID), Some(FUNCTION_GID))
}

/// The environment a function's commands see (besides the image's).
fn function_env(function: &FunctionBundle, runtime: &RuntimeBundle) -> Vec<String> {
    let mut env: Vec<String> = function
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.sort();
    env.extend([
        format!("FAAS_HANDLER={}", function.handler),
        format!("FAAS_FUNCTION_NAME={}", function.name),
        format!("FAAS_FUNCTION_VERSION={}", function.version),
        format!("FAAS_FUNCTION_DIR={}", runtime.path),
        format!("FAAS_MEMORY_MB={}", function.memory_bytes >> 20),
        format!("FAAS_TIMEOUT_MS={}", function.timeout_ms),
    ]);
    env
}

#[allow(clippy::too_many_arguments)]
fn container_spec(
    ctx: &SpotContext,
    id: &str,
    dir: &Path,
    fn_source: &Path,
    image: ImageInfo,
    runtime: &RuntimeBundle,
    memory_bytes: u64,
) -> ContainerSpec {
    let mut args = vec![
        INIT_PATH.to_string(),
        "--status".into(),
        format!("{IO_DIR}/status.json"),
        "--cwd".into(),
        runtime.path.clone(),
        "--notify".into(),
        format!("{IO_DIR}/notify"),
        "--log".into(),
        format!("{IO_DIR}/log"),
        "--log-limit".into(),
        ctx.config.max_log_bytes.to_string(),
    ];
    // The function's env comes from the env file, read after the load
    // gate (released at once when the function is known at creation).
    args.extend([
        "--load-gate".to_string(),
        format!("{IO_DIR}/load-gate"),
        "--env-file".to_string(),
        format!("{IO_DIR}/env"),
    ]);
    if !runtime.dependencies.trim().is_empty() {
        args.extend(["--deps".to_string(), runtime.dependencies.clone()]);
    }
    args.extend(["--run".to_string(), runtime.run.clone()]);
    // The same for every container: the function's own environment comes
    // through the env file.
    let env = vec![
        format!("FAAS_INPUT={IO_DIR}/input.json"),
        format!("FAAS_OUTPUT={IO_DIR}/output.json"),
        format!("FAAS_ERROR={IO_DIR}/error.json"),
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
                source: ctx.config.init_binary.clone(),
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
            cpu_millis: ctx.config.cpu_millis,
            pids: ctx.config.pids_limit,
            tmp_bytes: 0,
        },
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, limit: u64) -> Option<T> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > limit {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The function's result: present, within the size limit, valid JSON.
fn read_output(path: &Path, limit: u64) -> Result<String, (&'static str, String)> {
    let meta = std::fs::metadata(path).map_err(|_| {
        (
            "no_output",
            "the function exited without writing a result".to_string(),
        )
    })?;
    if meta.len() > limit {
        return Err((
            "invalid_output",
            format!(
                "the result is {} bytes, over the limit of {limit} bytes",
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        (
            "invalid_output",
            format!("the result is not UTF-8 text: {e}"),
        )
    })?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| {
        (
            "invalid_output",
            format!("the result is not valid JSON: {e}"),
        )
    })?;
    Ok(text)
}

/// The call's logs, bounded: the head and the tail around a marker when
/// they are longer than `limit`.
fn read_logs(path: &PathBuf, limit: u64) -> (Vec<u8>, bool) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return (Vec::new(), false);
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len <= limit {
        let mut buf = Vec::with_capacity(len as usize);
        let _ = file.read_to_end(&mut buf);
        return (buf, false);
    }
    let head_len = limit / 4;
    let tail_len = limit - head_len;
    let mut head = vec![0; head_len as usize];
    let _ = file.read_exact(&mut head);
    let mut tail = Vec::with_capacity(tail_len as usize);
    let _ = file.seek(SeekFrom::Start(len - tail_len));
    let _ = file.read_to_end(&mut tail);
    let mut out = head;
    out.extend_from_slice(
        format!(
            "\n[... {} bytes of logs cut by faas ...]\n",
            len - head_len - tail_len
        )
        .as_bytes(),
    );
    out.extend_from_slice(&tail);
    (out, true)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn tail_lines(logs: &[u8], lines: usize, max_bytes: usize) -> String {
    let text = String::from_utf8_lossy(logs);
    let trimmed = text.trim_end();
    let mut start = trimmed.len();
    for _ in 0..lines {
        match trimmed[..start].rfind('\n') {
            Some(pos) => start = pos,
            None => {
                start = 0;
                break;
            }
        }
    }
    let tail = trimmed[start..].trim_start_matches('\n');
    if tail.len() > max_bytes {
        let mut cut = tail.len() - max_bytes;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail[cut..].to_string()
    } else {
        tail.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2, 100), "b\nc");
        assert_eq!(tail_lines(b"a\nb\nc", 5, 100), "a\nb\nc");
        assert_eq!(tail_lines(b"", 5, 100), "");
        assert_eq!(tail_lines(b"abcdef", 5, 3), "def");
    }

    #[test]
    fn logs_are_cut_in_the_middle_with_a_marker() {
        let dir = std::env::temp_dir().join(format!("faas-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::write(&path, "h".repeat(1000) + &"t".repeat(1000)).unwrap();
        let (logs, cut) = read_logs(&path, 400);
        let text = String::from_utf8(logs).unwrap();
        assert!(cut);
        assert!(text.starts_with(&"h".repeat(100)));
        assert!(text.ends_with(&"t".repeat(300)));
        assert!(text.contains("1600 bytes of logs cut"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_must_be_json() {
        let dir = std::env::temp_dir().join(format!("faas-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("output.json");
        assert_eq!(read_output(&path, 100).unwrap_err().0, "no_output");
        std::fs::write(&path, "{\"a\": 1}").unwrap();
        assert_eq!(read_output(&path, 100).unwrap(), "{\"a\": 1}");
        std::fs::write(&path, "{nope").unwrap();
        assert_eq!(read_output(&path, 100).unwrap_err().0, "invalid_output");
        std::fs::write(&path, "[".to_string() + &"1,".repeat(100) + "1]").unwrap();
        assert_eq!(read_output(&path, 100).unwrap_err().0, "invalid_output");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
