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

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use faas_driver::{Driver, DriverError, ExitStatus};
use faas_init_protocol::files;
use faas_proto::v1::{
    agent_message, spot_operation, AgentMessage, CallAssignment, CallResult, FunctionBundle,
    OperationRefused, RuntimeBundle, Spot, SpotOperation, SpotReport, SpotState, StartKind,
    Timings,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info_span, warn, Instrument};

use crate::collect::{self, build_result, platform_failure, tail_lines, CallFacts, Ended};
use crate::config::Config;
use crate::container::{
    container_spec, function_env, grow_io, prepare_dir, secrets_bytes, unmount_io, write_env,
    write_secrets, Owner,
};
use crate::io_files::{self, Notice, NotifyReader};
use crate::packages::{copy_tree, PackageLease, Packages};
use crate::uids::{UidLease, UidPool};

/// How long preloads of a function are refused after one went over its
/// CPU budget (its calls still run, cold or on a runtime preload).
const PRELOAD_COOLDOWN: Duration = Duration::from_secs(60);
/// How often a preloaded container's CPU use is read against its budget.
const PRELOAD_CPU_CHECK: Duration = Duration::from_millis(500);
/// Grace given to a killed container to be reaped and flush its stdio.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Longest a preload may take (image pull, dependencies) before it fails.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Calls being run, by id.
pub type RunningCalls = Arc<std::sync::Mutex<std::collections::HashMap<String, RunningCall>>>;

/// A call being run.
#[derive(Debug, Default)]
pub struct RunningCall {
    /// The dispatch proof it came with (told to the leader in hellos).
    pub proof: String,
    /// Fired when the leader cancels the call: its run ends at once (a
    /// cancel that comes while it loads is kept until the run waits).
    pub cancel: Arc<tokio::sync::Notify>,
    /// Fired when someone follows the call's logs: its run streams them
    /// (kept likewise until the run waits).
    pub follow: Arc<tokio::sync::Notify>,
    /// The run's span in the call's trace (from the operation's arrival
    /// to the result), and when it started: the phases are laid out from
    /// there.
    pub trace: Option<(faas_telemetry::CallSpan, std::time::SystemTime)>,
}

/// Counts an operation's call as running here, from the moment the
/// operation arrives until its result is sent: every hello lists it with
/// its proof, and a cancel that comes while the operation still waits for
/// its spot (busy finishing a preload) is kept for it rather than lost.
/// Operations that run no call register nothing.
///
/// The call's trace gets the run's span here; the operation then carries
/// that span's `traceparent`, which the function is handed.
pub fn register_running(running: &RunningCalls, op: &mut SpotOperation) {
    use spot_operation::Kind;
    let executes = matches!(
        op.kind(),
        Kind::ExecuteNoPreload | Kind::ExecRuntimePreloaded | Kind::ExecFunctionPreloaded
    );
    if let Some(call) = op.call.as_mut().filter(|_| executes) {
        let mut running = running.lock().expect("poisoned");
        if running.contains_key(&call.call_id) {
            return;
        }
        let parent = faas_telemetry::TraceParent::parse(&call.traceparent);
        let started = std::time::SystemTime::now();
        let mut span = faas_telemetry::CallSpan::start_at(
            "faas.run",
            faas_telemetry::Kind::Consumer,
            parent.as_ref(),
            started,
        );
        span.attribute("faas.call_id", &call.call_id);
        call.traceparent = span.traceparent().to_string();
        running.insert(
            call.call_id.clone(),
            RunningCall {
                proof: call.dispatch_proof.clone(),
                cancel: Default::default(),
                follow: Default::default(),
                trace: Some((span, started)),
            },
        );
    }
}

/// What every spot of the agent shares.
pub struct SpotContext {
    pub config: Config,
    pub driver: Driver,
    pub packages: Packages,
    pub outbound: mpsc::UnboundedSender<AgentMessage>,
    /// Calls being run now, with their dispatch proofs: told to the
    /// leader in every hello.
    pub running: RunningCalls,
    /// Containers whose tear-down failed (containerd away): retried until
    /// they are gone, their uid held until then.
    pub teardown_retry: std::sync::Mutex<Vec<(String, Option<UidLease>)>>,
    /// The host uids containers run as, one each.
    pub uids: Arc<UidPool>,
    /// Networks of calls with egress.
    pub egress: crate::egress::Egress,
    /// Preloads destroyed for using more CPU than their budget.
    pub preloads_over_budget: std::sync::atomic::AtomicU64,
    /// Functions (`name@version`) whose preload went over its CPU budget,
    /// and until when their preloads are refused: the broker would
    /// otherwise preload them again at once, and each new preload would
    /// burn its budget anew.
    pub preload_cooldowns: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

impl SpotContext {
    /// Retries the failed tear-downs; returns how many remain.
    pub async fn retry_teardowns(&self) -> usize {
        let ids = std::mem::take(&mut *self.teardown_retry.lock().expect("poisoned"));
        for (id, uid) in ids {
            if let Err(e) = self.driver.destroy(&id).await {
                tracing::debug!(container = %id, error = %e, "tear-down still failing");
                self.teardown_retry
                    .lock()
                    .expect("poisoned")
                    .push((id, uid));
            } else {
                tracing::info!(container = %id, "delayed tear-down done");
            }
        }
        self.teardown_retry.lock().expect("poisoned").len()
    }
}

impl SpotContext {
    fn report(&self, spot: Spot, error: String) {
        crate::metrics::spot_reported(spot.index, spot.state());
        let _ = self.outbound.send(AgentMessage {
            msg: Some(agent_message::Msg::Spot(SpotReport {
                spot: Some(spot),
                error,
            })),
        });
    }

    /// Tells the leader an operation was not run (its call never started).
    fn refuse(&self, spot: u32, call_id: String) {
        let _ = self.outbound.send(AgentMessage {
            msg: Some(agent_message::Msg::Refused(OperationRefused {
                spot,
                call_id,
            })),
        });
    }

    fn send_result(&self, mut result: CallResult) {
        // Queued for the stream before it stops counting as running: a
        // hello sent in between lists it, and its result follows. The
        // result keeps the proof for the hellos until it is confirmed.
        let call_id = result.call_id.clone();
        crate::metrics::call_ended(
            result.status(),
            result.timings.as_ref().map(|t| t.start_kind()),
        );
        let mut trace = None;
        if let Some(running) = self.running.lock().expect("poisoned").get_mut(&call_id) {
            result.dispatch_proof = running.proof.clone();
            trace = running.trace.take();
        }
        if let Some((span, started)) = trace {
            end_run_span(span, started, &result);
        }
        let _ = self.outbound.send(AgentMessage {
            msg: Some(agent_message::Msg::Result(result)),
        });
        self.running.lock().expect("poisoned").remove(&call_id);
    }
}

/// Ends a call's run span, with a child span per phase it went through:
/// their lengths as measured, laid end to end from the run's start.
fn end_run_span(mut span: faas_telemetry::CallSpan, started: SystemTime, result: &CallResult) {
    if let Some(error) = result.error.as_ref() {
        span.error(format_args!("{}: {}", error.reason, error.message));
    }
    // The names are made only for a recorded span.
    if !faas_telemetry::enabled() {
        span.end();
        return;
    }
    span.attribute("faas.status", &result.status().short_name());
    if let Some(t) = result.timings.as_ref() {
        span.attribute("faas.start", &t.start_kind().short_name());
        let parent = span.traceparent();
        let mut at = started;
        for (name, ms) in [
            ("faas.runtime_load", t.runtime_load_ms),
            ("faas.function_load", t.function_load_ms),
            ("faas.dependencies", t.dependencies_ms),
            ("faas.execution", t.execution_ms),
            ("faas.result_return", t.result_return_ms),
        ] {
            if ms > 0.0 {
                let end = at + Duration::from_secs_f64(ms / 1000.0);
                faas_telemetry::CallSpan::record(name, &parent, at, end, &[]);
                at = end;
            }
        }
    }
    span.end();
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
    /// The io directory (`dir/io`): every entry is opened through it.
    io: Arc<OwnedFd>,
    /// The host uid the container runs as, its own until its tear-down.
    uid: UidLease,
    /// CPU the container had used when it was reported preloaded: its
    /// budget counts from there (`None`: its cgroup could not be read).
    ready_cpu: Option<Duration>,
    exit: JoinHandle<Result<ExitStatus, DriverError>>,
    notify: NotifyReader,
    /// The input FIFO's write end, opened once the run process waits on
    /// it (a function-preloaded container: its imports are done). The
    /// call's input is written there and the end closed.
    input: Option<tokio::net::unix::pipe::Sender>,
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
    /// The same for the function's layers.
    _layers: Vec<PackageLease>,
    /// The call's own network namespace, for a function with egress.
    network: Option<crate::egress::CallNetwork>,
}

/// What wakes an idle spot (one per wake-up, never stored: its size does
/// not matter).
#[allow(clippy::large_enum_variant)]
enum Next {
    Op(Option<SpotOperation>),
    /// The held preload used this much CPU since it was ready.
    OverBudget(Duration),
}

/// Returns once the preloaded container `live` has used more CPU since it
/// was ready than the budget allows; never when there is no budget or its
/// cgroup cannot be read.
async fn over_budget(ctx: &SpotContext, live: &Live) -> Duration {
    over_budget_of(ctx, &live.id, live.ready_cpu).await
}

/// [`over_budget`] of the container `id`, counting from `baseline`.
async fn over_budget_of(ctx: &SpotContext, id: &str, baseline: Option<Duration>) -> Duration {
    let budget = ctx.config.preload_cpu_budget;
    let Some(baseline) = baseline.filter(|_| !budget.is_zero()) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(PRELOAD_CPU_CHECK).await;
        if let Some(now) = ctx.driver.cpu_usage(id).await {
            let used = now.saturating_sub(baseline);
            if used > budget {
                return used;
            }
        }
    }
}

impl SpotContext {
    /// Counts a preload that went over its CPU budget and refuses preloads
    /// of its function for a while (the broker would preload it again at
    /// once); the message for the spot's report.
    fn note_over_budget(
        &self,
        index: u32,
        function: Option<&FunctionBundle>,
        used: Duration,
    ) -> String {
        let total = self
            .preloads_over_budget
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let message = format!(
            "the preloaded container used {} ms of CPU while waiting for its call, over its budget of {} ms; destroyed",
            used.as_millis(),
            self.config.preload_cpu_budget.as_millis()
        );
        warn!(spot = index, preloads_over_budget = total, "{message}");
        if let Some(f) = function {
            let mut cooldowns = self.preload_cooldowns.lock().expect("poisoned");
            let now = Instant::now();
            cooldowns.retain(|_, until| *until > now);
            cooldowns.insert(function_label(f), now + PRELOAD_COOLDOWN);
        }
        message
    }
}

/// Why a function preload did not become ready.
enum PreloadFailed {
    Broken(String),
    /// Over its CPU budget while loading (import-time work).
    OverBudget(Duration),
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
    loop {
        // A preload waits for its call; its CPU use meanwhile is bounded
        // (an import-time thread must not spin for free). The check runs
        // only while nothing else happens: never on a call's path.
        let next = match &held {
            Held::Runtime(live) | Held::Function(live) => tokio::select! {
                op = ops.recv() => Next::Op(op),
                used = over_budget(&ctx, live) => Next::OverBudget(used),
            },
            Held::Nothing => Next::Op(ops.recv().await),
        };
        let op = match next {
            Next::Op(Some(op)) => op,
            Next::Op(None) => break,
            Next::OverBudget(used) => {
                let slot = Slot {
                    ctx: &ctx,
                    index,
                    seq,
                    registry_token: None,
                };
                let function = match &held {
                    Held::Function(live) => live.function.as_ref(),
                    _ => None,
                };
                let message = ctx.note_over_budget(index, function, used);
                slot.clear(std::mem::replace(&mut held, Held::Nothing))
                    .await;
                slot.report_free(message);
                continue;
            }
        };
        seq += 1;
        use spot_operation::Kind;
        let kind = op.kind();
        let registry_token = Some(op.registry_token.clone()).filter(|t| !t.is_empty());
        let slot = Slot {
            ctx: &ctx,
            index,
            seq,
            registry_token: registry_token.as_deref(),
        };
        // Nothing from the stream reaches a path or a container id before
        // it is checked: an invalid operation is refused, never run.
        if let Err(e) = crate::ids::check_operation(&op) {
            warn!(spot = index, op = ?kind, error = %e, "invalid operation refused");
            if let Some(call) = op.call.as_ref() {
                ctx.running.lock().expect("poisoned").remove(&call.call_id);
            }
            ctx.refuse(index, op.call.map(|c| c.call_id).unwrap_or_default());
            // The spot still holds what it held.
            slot.report_held(&held);
            continue;
        }
        let call_id = op
            .call
            .as_ref()
            .map(|c| c.call_id.clone())
            .unwrap_or_default();
        // Its call (if it runs one) counts as running since the session
        // handed the operation over (`register_running`).
        let span = info_span!("spot", spot = index, op = ?kind, call_id = %call_id);
        held = async {
            match (kind, op.runtime, op.function, op.call) {
                (Kind::ExecuteNoPreload, Some(rt), Some(f), Some(call)) => {
                    slot.clear(held).await;
                    slot.execute_cold(rt, f, call).await;
                    Held::Nothing
                }
                (Kind::ExecRuntimePreloaded, Some(rt), Some(f), Some(call)) => match held {
                    // A preloaded container's network namespace is fixed
                    // when it is created: a function with egress needs one
                    // of its own.
                    // Its /tmp too is fixed at creation (the default size),
                    // and its mounts.
                    Held::Runtime(live)
                        if live.runtime.image == rt.image
                            && live.runtime.name == rt.name
                            && !crate::egress::wants_egress(f.network.as_ref())
                            && crate::container::tmp_bytes_of(&f)
                                == faas_driver::DEFAULT_TMP_BYTES
                            // And its layers' mounts.
                            && f.layers.is_empty() =>
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
                    let cooling = ctx
                        .preload_cooldowns
                        .lock()
                        .expect("poisoned")
                        .get(&function_label(&f))
                        .is_some_and(|until| *until > Instant::now());
                    if cooling {
                        let message = format!(
                            "preload of {} refused: an earlier preload of it went over its CPU budget (preloads resume within {} s)",
                            function_label(&f),
                            PRELOAD_COOLDOWN.as_secs()
                        );
                        warn!("{message}");
                        slot.report_free(message);
                        Held::Nothing
                    } else {
                        slot.preload(rt, Some(f)).await
                    }
                }
                (Kind::ClearSpot, _, _, _) => {
                    slot.clear(held).await;
                    slot.report_free(String::new());
                    Held::Nothing
                }
                (kind, ..) => {
                    warn!(?kind, "operation without the bundles it needs; ignored");
                    ctx.running.lock().expect("poisoned").remove(&call_id);
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
        registry_token: None,
    }
    .clear(held)
    .await;
}

struct Slot<'a> {
    ctx: &'a SpotContext,
    index: u32,
    seq: u64,
    /// The operation's pull-only registry token, if the registry wants one.
    registry_token: Option<&'a str>,
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

    /// Reports again what the spot holds (after a refused operation).
    fn report_held(&self, held: &Held) {
        match held {
            Held::Nothing => self.report_free(String::new()),
            Held::Runtime(live) => self.report(
                SpotState::PreloadedRuntime,
                &live.runtime.name,
                "",
                "",
                String::new(),
            ),
            Held::Function(live) => self.report(
                SpotState::PreloadedFunction,
                &live.runtime.name,
                &live
                    .function
                    .as_ref()
                    .map(function_label)
                    .unwrap_or_default(),
                "",
                String::new(),
            ),
        }
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
    ) -> Result<Live, String> {
        let ctx = self.ctx;
        // Empty until a function is loaded into a runtime-preloaded spot.
        let env = match function {
            Some(f) => function_env(f, runtime).map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let t = Instant::now();
        let image = ctx
            .driver
            .ensure_image_with(&runtime.image, self.registry_token)
            .await
            .map_err(|e| format!("loading runtime image: {e}"))?;
        let image_ms = ms(t.elapsed());

        let t = Instant::now();
        let package = match function {
            Some(f) => Some(
                ctx.packages
                    .ensure(
                        &f.package_repository,
                        &f.package_digest,
                        self.registry_token,
                    )
                    .await
                    .map_err(|e| format!("loading function package: {e}"))?,
            ),
            None => None,
        };
        // A function's layers: packages like its own, from the same cache.
        let mut layers = Vec::new();
        for layer in function.map(|f| f.layers.as_slice()).unwrap_or_default() {
            layers.push(
                ctx.packages
                    .ensure(&layer.repository, &layer.digest, self.registry_token)
                    .await
                    .map_err(|e| format!("loading layer {}: {e}", layer.digest))?,
            );
        }
        let layer_mounts = match function {
            Some(f) => crate::container::layer_mounts(
                f,
                &layers.iter().map(|l| l.path()).collect::<Vec<_>>(),
            )?,
            None => Vec::new(),
        };
        let dir = ctx.config.state_dir.join("spots").join(&id);
        // A host uid of its own: no per-uid kernel limit or file shared
        // with another container.
        let uid = ctx.uids.allocate().map_err(|e| e.to_string())?;
        let owner = Owner {
            uid: uid.uid(),
            gid: uid.gid(),
        };
        let io = {
            let dir = dir.clone();
            // A runtime-preloaded spot's grows when its call arrives.
            let secrets = function.map(|f| f.secrets.clone()).unwrap_or_default();
            let io_bytes = ctx.config.io_tmpfs_bytes() + secrets_bytes(&secrets);
            tokio::task::spawn_blocking(move || prepare_dir(&dir, io_bytes, &env, &secrets, owner))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("preparing the container's files: {e}"))?
        };
        let io = Arc::new(io);
        let function_load_ms = if function.is_some() {
            ms(t.elapsed())
        } else {
            0.0
        };

        let t = Instant::now();
        let create_began_at_ms = wall_ms();
        let notify = NotifyReader::open(&*io, files::NOTIFY)
            .map_err(|e| format!("opening the notify FIFO: {e}"))?;
        let memory_bytes = function
            .map(crate::container::memory_limit_of)
            .unwrap_or(ctx.config.preload_memory_bytes);
        // A runtime preload gets the default /tmp: only functions with
        // that size run on it (see ExecRuntimePreloaded).
        let tmp_bytes = function
            .map(crate::container::tmp_bytes_of)
            .unwrap_or(faas_driver::DEFAULT_TMP_BYTES);
        // A function known now is mounted straight from the package cache
        // (read-only, nothing copied); a runtime-preloaded spot gets its
        // own empty directory, filled when the call arrives.
        let fn_source = match &package {
            Some(p) => p.path().to_path_buf(),
            None => dir.join("fn"),
        };
        // A function with egress gets a network namespace of its own,
        // plugged in before the container joins it.
        let network = match function.and_then(|f| f.network.as_ref()) {
            Some(policy) if crate::egress::wants_egress(Some(policy)) => {
                match ctx.egress.attach(&id, policy, &dir).await {
                    Ok(network) => Some(network),
                    Err(e) => {
                        unmount_io(&dir);
                        let _ = tokio::fs::remove_dir_all(&dir).await;
                        return Err(format!("setting up the call's network: {e}"));
                    }
                }
            }
            _ => None,
        };
        let spec = container_spec(
            &ctx.config,
            &id,
            &dir,
            &fn_source,
            image,
            runtime,
            memory_bytes,
            tmp_bytes,
            owner,
            network.as_ref(),
            layer_mounts,
        );
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
                        .push((id.clone(), Some(uid)));
                }
                if let Some(network) = network {
                    ctx.egress.detach(network).await;
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
            io,
            uid,
            ready_cpu: None,
            exit,
            notify,
            input: None,
            memory_bytes,
            runtime_load_ms: image_ms + ms(t.elapsed()),
            image_ms,
            create_began_at_ms,
            function_load_ms,
            _package: package,
            _layers: layers,
            network,
        };
        if function.is_some() {
            // Nothing to wait for: faas-init goes on with the dependencies.
            let deadline = Instant::now() + Duration::from_secs(30);
            if write_fifo(&mut live, files::LOAD_GATE, b"go\n", deadline)
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
        let mut live = match self.start_container(id, &runtime, function.as_ref()).await {
            Ok(live) => live,
            Err(e) => {
                warn!(error = %e, "preload failed");
                self.report_free(e);
                return Held::Nothing;
            }
        };
        if function.is_none() {
            // faas-init waits at its load gate from its first instant.
            live.ready_cpu = self.ctx.driver.cpu_usage(&live.id).await;
            self.report(
                SpotState::PreloadedRuntime,
                &runtime.name,
                "",
                "",
                String::new(),
            );
            return Held::Runtime(live);
        }
        // The function is loaded once its dependencies ran and its runtime
        // waits on its input (its imports are done): only then is the spot
        // worth a call. Reported earlier, a call placed here would wait for
        // the imports while another spot may be ready.
        let id = live.id.clone();
        let ready = tokio::time::timeout(PRELOAD_TIMEOUT, async {
            tokio::select! {
                notice = live.notify.next() => match notice {
                    Ok(Some(Notice::DepsDone)) => {}
                    Ok(Some(Notice::Done)) => return Err(PreloadFailed::Broken("the container finished during its preload".into())),
                    Ok(None) => return Err(PreloadFailed::Broken("the notify FIFO broke".into())),
                    Err(e) => return Err(PreloadFailed::Broken(format!("the container broke the notify protocol: {e}"))),
                },
                exit = &mut live.exit => {
                    return Err(PreloadFailed::Broken(format!("the container exited during its preload: {exit:?}")));
                }
            }
            // The CPU budget counts from here: import-time work included.
            live.ready_cpu = self.ctx.driver.cpu_usage(&id).await;
            let baseline = live.ready_cpu;
            let far = Instant::now() + PRELOAD_TIMEOUT;
            tokio::select! {
                opened = open_fifo_when_read(&live.io, &mut live.exit, files::INPUT, far) => {
                    opened.map_err(|e| PreloadFailed::Broken(format!("the runtime never waited for its input: {e:?}")))
                }
                used = over_budget_of(self.ctx, &id, baseline) => Err(PreloadFailed::OverBudget(used)),
            }
        })
        .await
        .unwrap_or_else(|_| Err(PreloadFailed::Broken("the preload timed out".into())));
        match ready {
            Ok(input) => {
                live.input = Some(input);
                self.report(
                    SpotState::PreloadedFunction,
                    &runtime.name,
                    &label,
                    "",
                    String::new(),
                );
                Held::Function(live)
            }
            Err(PreloadFailed::OverBudget(used)) => {
                let message = self
                    .ctx
                    .note_over_budget(self.index, live.function.as_ref(), used);
                destroy(self.ctx, live).await;
                self.report_free(message);
                Held::Nothing
            }
            Err(PreloadFailed::Broken(e)) => {
                let io = live.io.clone();
                let logs = tokio::task::spawn_blocking(move || {
                    io_files::read_log(&*io, files::LOG, 4096, 16 << 10).unwrap_or_default()
                })
                .await
                .unwrap_or_default();
                let tail = tail_lines(&logs.bytes, 10, 2048);
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
        let mut timings = Timings {
            start_kind: StartKind::Cold as i32,
            ..Default::default()
        };
        match self.start_container(id, &runtime, Some(&function)).await {
            Ok(mut live) => {
                timings.runtime_load_ms = live.runtime_load_ms;
                timings.function_load_ms = live.function_load_ms;
                let started = Instant::now();
                // Through the input FIFO, as for every start kind.
                let input = envelope(&call, &function);
                let ended = match write_input(&mut live, &input, &function).await {
                    Ok(()) => wait_done(self.ctx, &mut live, &function, &call, started).await,
                    Err(ended) => ended,
                };
                self.finish(live, &function, &call, ended, started, timings, false)
                    .await;
            }
            Err(e) => {
                self.ctx
                    .send_result(platform_failure(&call.call_id, self.index, e, timings));
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
                .send_result(platform_failure(&call.call_id, self.index, e, timings));
            destroy(self.ctx, live).await;
            self.report_free(String::new());
            return;
        }
        let started = Instant::now();
        let input = envelope(&call, &function);
        let ended = match write_input(&mut live, &input, &function).await {
            Ok(()) => wait_done(self.ctx, &mut live, &function, &call, started).await,
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
            Ok(()) => wait_done(self.ctx, &mut live, &function, &call, started).await,
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
        let env = function_env(function, &live.runtime).map_err(|e| e.to_string())?;
        let package = self
            .ctx
            .packages
            .ensure(
                &function.package_repository,
                &function.package_digest,
                self.registry_token,
            )
            .await
            .map_err(|e| format!("loading function package: {e}"))?;
        let memory_limit = crate::container::memory_limit_of(function);
        if memory_limit != live.memory_bytes {
            self.ctx
                .driver
                .update_memory(&live.id, memory_limit)
                .await
                .map_err(|e| format!("setting the memory limit: {e}"))?;
            live.memory_bytes = memory_limit;
        }
        let dir = live.dir.clone();
        let io = live.io.clone();
        let secrets = function.secrets.clone();
        let io_bytes = self.ctx.config.io_tmpfs_bytes() + secrets_bytes(&secrets);
        let owner = Owner {
            uid: live.uid.uid(),
            gid: live.uid.gid(),
        };
        // All in place before the load gate opens: the function sees its
        // files, env and secrets from its first instant, as when it is
        // known at the container's creation.
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            copy_tree(package.path(), &dir.join("fn"))?;
            write_env(&*io, &env)?;
            if !secrets.is_empty() {
                // The secrets get room of their own: the call's output and
                // logs keep theirs.
                grow_io(&dir, io_bytes)?;
                write_secrets(&*io, &secrets, owner)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("placing the function's files: {e}"))?;
        // faas-init opens its end of the gate right after the container
        // started; a call can arrive before that.
        let deadline = Instant::now() + Duration::from_millis(function.timeout_ms.max(1));
        write_fifo(live, files::LOAD_GATE, b"go\n", deadline)
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
        tracing::debug!(waited_ms = waited, "run ended");
        // An OOM kill shows as SIGKILL of the run; only the container's exit
        // says whether the memory cgroup did it.
        let mut oom = false;
        match &ended {
            Ended::Exited(exit) => oom = exit.oom_killed,
            Ended::TimedOut | Ended::Cancelled => {
                if let Err(e) = self.ctx.driver.kill(&live.id, 9).await {
                    warn!(error = %e, ?ended, "killing the call's container failed");
                }
                let _ = tokio::time::timeout(KILL_GRACE, &mut live.exit).await;
            }
            _ => {}
        }
        // Bounded reads of files the container could write: off the
        // async workers, in one hop.
        let collected = {
            let io = live.io.clone();
            let max_result = self.ctx.config.max_result_bytes;
            let max_log = self.ctx.config.max_log_bytes;
            tokio::task::spawn_blocking(move || collect::collect(&io, max_result, max_log)).await
        };
        let collected = match collected {
            Ok(collected) => collected,
            Err(e) => {
                warn!(error = %e, "collecting the call's files failed");
                collect::Collected {
                    status: Default::default(),
                    logs: Default::default(),
                    output: Err(collect::OutputError::Missing),
                    error_report: None,
                }
            }
        };
        let status = &collected.status;
        if matches!(ended, Ended::Done) && status.run_signal == Some(9) {
            if let Ok(Ok(Ok(exit))) = tokio::time::timeout(KILL_GRACE, &mut live.exit).await {
                oom = exit.oom_killed;
            }
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
        timings.execution_ms =
            if measure_execution_here || matches!(ended, Ended::TimedOut | Ended::Cancelled) {
                waited
            } else {
                status.run_ms.unwrap_or(waited)
            };
        let facts = CallFacts {
            call_id: &call.call_id,
            spot: self.index,
            timeout_ms: function.timeout_ms,
            memory_bytes: function.memory_bytes,
        };
        let result = build_result(&facts, &ended, oom, collected, timings);
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
    ctx: &SpotContext,
    live: &mut Live,
    function: &FunctionBundle,
    call: &CallAssignment,
    started: Instant,
) -> Ended {
    let deadline = started + Duration::from_millis(function.timeout_ms.max(1));
    let (cancel, follow) = ctx
        .running
        .lock()
        .expect("poisoned")
        .get(&call.call_id)
        .map(|r| (r.cancel.clone(), r.follow.clone()))
        .unwrap_or_default();
    // Streams the output while someone follows; stops when this returns.
    let mut tail: Option<crate::live_logs::Tail> = None;
    loop {
        tokio::select! {
            notice = live.notify.next() => match notice {
                Ok(Some(Notice::Done)) => return Ended::Done,
                Ok(Some(Notice::DepsDone)) => {}
                // Nothing faas-init writes: the function wrote into the
                // FIFO. Its call ends here (the tear-down kills it).
                Err(e @ (io_files::NotifyError::LineTooLong { .. } | io_files::NotifyError::Unknown(_))) => {
                    return Ended::Broken(format!("the container broke the notify protocol: {e}"));
                }
                Ok(None) | Err(io_files::NotifyError::Io(_)) => {
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
            _ = cancel.notified() => return Ended::Cancelled,
            _ = follow.notified(), if tail.is_none() => {
                tail = Some(crate::live_logs::follow(
                    live.io.clone(),
                    call.call_id.clone(),
                    ctx.outbound.clone(),
                    ctx.config.max_log_bytes,
                ));
            }
        }
    }
}

/// Writes the call's input into the input FIFO once the run process opens
/// it (after its imports), within the call's timeout.
async fn write_input(live: &mut Live, input: &str, function: &FunctionBundle) -> Result<(), Ended> {
    let deadline = Instant::now() + Duration::from_millis(function.timeout_ms.max(1));
    match live.input.take() {
        // A function preload: its runtime waits on it already.
        Some(sender) => {
            write_all_then_close(sender, files::INPUT, input.as_bytes(), deadline).await
        }
        None => write_fifo(live, files::INPUT, input.as_bytes(), deadline).await,
    }
}

/// Writes `data` into a FIFO of the container once its reader has opened
/// it; gives up at `deadline` or if the container ends first.
async fn write_fifo(
    live: &mut Live,
    name: &'static str,
    data: &[u8],
    deadline: Instant,
) -> Result<(), Ended> {
    let sender = open_fifo_when_read(&live.io, &mut live.exit, name, deadline).await?;
    write_all_then_close(sender, name, data, deadline).await
}

/// The write end of the FIFO `name` of the io directory, once a reader has
/// it open (the runtime is starting meanwhile: the retries back off to
/// 1 ms); gives up at `deadline` or if the container ends first.
pub(crate) async fn open_fifo_when_read(
    io: &OwnedFd,
    exit: &mut JoinHandle<Result<ExitStatus, DriverError>>,
    name: &'static str,
    deadline: Instant,
) -> Result<tokio::net::unix::pipe::Sender, Ended> {
    let mut pause = Duration::from_micros(250);
    let began = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match io_files::open_fifo_writer(io, name) {
            Ok(Some(sender)) => {
                tracing::debug!(fifo = name, attempts, waited = ?began.elapsed(), "fifo reader there");
                return Ok(sender);
            }
            // ENXIO: no reader yet (the runtime is still starting).
            Ok(None) => {}
            Err(e) => return Err(Ended::Broken(format!("opening {name}: {e}"))),
        }
        if Instant::now() >= deadline {
            return Err(Ended::TimedOut);
        }
        tokio::select! {
            exit = &mut *exit => return Err(match exit {
                Ok(Ok(exit)) => Ended::Exited(exit),
                other => Ended::Broken(format!("the container ended before reading {name}: {other:?}")),
            }),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// Writes `data` into `sender` within `deadline`, then closes it: the
/// reader sees the end of its data.
pub(crate) async fn write_all_then_close(
    mut sender: tokio::net::unix::pipe::Sender,
    name: &'static str,
    data: &[u8],
    deadline: Instant,
) -> Result<(), Ended> {
    let written = tokio::time::timeout_at(deadline.into(), async {
        sender.write_all(data).await?;
        sender.flush().await
    })
    .await;
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Ended::Broken(format!("writing {name}: {e}"))),
        Err(_) => Err(Ended::TimedOut),
    }
}

/// How long a finished call's container is given to stop by itself before
/// its tear-down.
const EXIT_GRACE: Duration = Duration::from_millis(100);

async fn destroy(ctx: &SpotContext, mut live: Live) {
    live.exit.abort();
    if let Err(e) = ctx.driver.destroy(&live.id).await {
        warn!(error = %e, container = %live.id, "destroying a container failed; will retry");
        ctx.teardown_retry
            .lock()
            .expect("poisoned")
            .push((live.id.clone(), Some(live.uid)));
    }
    if let Some(network) = live.network.take() {
        ctx.egress.detach(network).await;
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
    // The traceparent was set by this agent (the run's span); one the
    // leader sent that does not parse is left out.
    let trace = faas_telemetry::TraceParent::parse(&call.traceparent)
        .map(|t| format!(",\"traceparent\":\"{t}\""))
        .unwrap_or_default();
    // The control plane checked the client context to be a JSON object:
    // spliced in as well. One that does not start like an object (a
    // leader that skipped the check) is left out.
    let client_context = if call.client_context.trim_start().starts_with('{') {
        format!(",\"client_context\":{}", call.client_context)
    } else {
        String::new()
    };
    format!(
        "{{\"call_id\":{},\"deadline_ms\":{deadline_ms}{trace}{client_context},\"event\":{}}}",
        serde_json::Value::String(call.call_id.clone()),
        call.params_json
    )
}
