//! The leader's broker loop: the I/O side of `faas_broker`. It owns the
//! agents' streams, feeds events to the policy, sends the operations it
//! returns, and records call outcomes in etcd.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_broker::{Broker, Event, FunctionRef, Operation, PendingCall, SpotId, SpotState};
use faas_proto::v1::{
    control_message, spot_operation, BuildDone, BuildJob, BuildOutput, Call, CallAssignment,
    CallError, CallLogs, CallResult, CallStatus, CancelCall, ControlMessage, FollowLogs, Function,
    LogChunk, Node, ResultRecorded, Runtime, Spot, SpotOperation, SpotReport,
};
use faas_telemetry::{CallSpan, Kind as SpanKind, TraceParent};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::error::{now_ms, now_ms_f64};
use crate::leader::LeaderFence;
pub use crate::ledger::{CallBundle, CallSettings};
use crate::ledger::{CancelReason, Effect, Ledger, Outcome, Session, Start};
use crate::store::{Kind, Store, StoreError};
use crate::watch::CallWatch;

pub type AgentSender = mpsc::Sender<Result<ControlMessage, Status>>;
type WeakAgentSender = mpsc::WeakSender<Result<ControlMessage, Status>>;

pub enum Input {
    CallArrived {
        call: Call,
        bundle: Arc<CallBundle>,
        /// Acceptance time, epoch ms with sub-ms precision (the record's
        /// created_at_ms is whole ms).
        accepted_at_ms: f64,
    },
    AgentConnected {
        node: String,
        spots: u32,
        session: u64,
        tx: AgentSender,
        /// Calls the agent says it is running.
        running_calls: Vec<String>,
        /// The agent process (`AgentHello.incarnation`).
        incarnation: String,
        /// Those of them it proved were handed to it (dispatch proofs).
        proven: std::collections::HashSet<String>,
        /// The faas version its hello reported.
        version: String,
    },
    /// A call recorded as running by an earlier leader: its result is
    /// expected from its node.
    Adopt {
        call: Call,
        bundle: Arc<CallBundle>,
    },
    AgentDisconnected {
        node: String,
        session: u64,
    },
    /// The agent is shutting down: no new work for it.
    AgentDraining {
        node: String,
        session: u64,
    },
    /// The agent did not start an operation; its call (if any) never ran.
    Refused {
        node: String,
        session: u64,
        call_id: String,
    },
    Spot {
        node: String,
        session: u64,
        report: SpotReport,
    },
    Result {
        node: String,
        session: u64,
        result: Box<CallResult>,
    },
    ListNodes(oneshot::Sender<Vec<Node>>),
    /// A runtime registered or updated (from the etcd watch).
    RuntimeChanged(Runtime),
    RuntimeRemoved(String),
    /// A function deployed or updated (from the etcd watch).
    FunctionChanged(Box<Function>),
    FunctionRemoved(String),
    /// The records of the versions a function's aliases name (all of
    /// them; none once no alias names one), so that preloads follow the
    /// aliases.
    AliasTargets {
        key: String,
        versions: Vec<Function>,
    },
    /// A namespace's bound on calls running at once (0: none), from the
    /// etcd watch (a deleted namespace: 0).
    Concurrency {
        namespace: String,
        limit: u64,
    },
    /// Drains a node (true) or takes it back (false); answers the node, or
    /// None if it is not connected.
    Drain {
        node: String,
        drain: bool,
        reply: oneshot::Sender<Option<Node>>,
    },
    /// An operator's drain recorded (true) or removed (false), from etcd.
    DrainRecorded {
        node: String,
        drained: bool,
    },
    /// The live record of a call the broker holds (queued or running).
    LiveCall(String, oneshot::Sender<Option<Call>>),
    /// Cancels a call the broker holds; answers its CANCELLED record
    /// (being written), or None if the broker does not hold it.
    Cancel {
        id: String,
        message: String,
        reply: oneshot::Sender<Option<Call>>,
    },
    /// Someone follows a call's logs: answers a receiver of its output
    /// while it runs (closed when it ends), or None if the broker does
    /// not hold the call.
    FollowLogs {
        id: String,
        reply: oneshot::Sender<Option<mpsc::Receiver<LogChunk>>>,
    },
    /// Output of a followed call from its agent.
    Log {
        node: String,
        session: u64,
        chunk: LogChunk,
    },
    /// Runs a deploy-time build on a node; its events go to `reply`.
    Build {
        job: Box<BuildJob>,
        reply: mpsc::UnboundedSender<BuildEvent>,
    },
    /// A build's output or end, from the node running it.
    BuildMessage {
        node: String,
        session: u64,
        message: BuildMessage,
    },
    /// This replica no longer leads: the loop ends, dropping the agents'
    /// streams.
    Stop,
}

/// What a node sends about a build.
#[derive(Debug)]
pub enum BuildMessage {
    Output(BuildOutput),
    Done(BuildDone),
}

/// What the deploy waiting on a build hears.
#[derive(Debug)]
pub enum BuildEvent {
    /// The node running it (named once, first).
    Started {
        node: String,
    },
    Output(BuildOutput),
    Done(BuildDone),
    /// Never ran or never ended: why.
    Lost(String),
}

/// A build sent to a node, until its end.
struct PendingBuild {
    node: String,
    session: u64,
    reply: mpsc::UnboundedSender<BuildEvent>,
}

/// Chunks buffered per follower; a follower further behind misses chunks
/// (it sees the gap in the offsets) rather than hold the broker up.
const LOG_FOLLOWER_BUFFER: usize = 64;

/// The handle the API and the agent sessions use to talk to the broker.
#[derive(Clone)]
pub struct BrokerHandle {
    tx: mpsc::UnboundedSender<Input>,
    connected_agents: Arc<AtomicUsize>,
    policy: &'static str,
    started: Instant,
    /// The leader's election key (see `Leadership::fence`).
    fence: Option<Arc<LeaderFence>>,
}

/// After a takeover, how long agents have to find the new leader: a call
/// that finds no agent meanwhile waits for one rather than being refused.
pub const AGENT_RECONNECT_GRACE: Duration = Duration::from_secs(3);

impl BrokerHandle {
    pub fn send(&self, input: Input) -> bool {
        self.tx.send(input).is_ok()
    }

    /// The election key new calls are recorded under: a call is written
    /// only while this replica still leads, so a replica that just lost the
    /// lead cannot record a call the next leader would never see.
    pub fn fence(&self) -> Option<&LeaderFence> {
        self.fence.as_deref()
    }

    /// Ends the broker loop (leadership lost).
    pub fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
    }

    pub fn connected_agents(&self) -> usize {
        self.connected_agents.load(Ordering::Relaxed)
    }

    /// Whether an agent is connected and taking work; in the broker's first
    /// seconds (agents may still be finding a new leader) it waits for one.
    pub async fn has_agents(&self) -> bool {
        loop {
            if self.connected_agents() > 0 {
                return true;
            }
            if self.started.elapsed() >= AGENT_RECONNECT_GRACE {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn policy(&self) -> &'static str {
        self.policy
    }

    /// The broker's current view of a call it holds, if it holds it.
    pub async fn live_call(&self, id: &str) -> Option<Call> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Input::LiveCall(id.to_string(), tx)) {
            return None;
        }
        rx.await.ok().flatten()
    }

    /// Cancels a call the broker holds (see [`Input::Cancel`]).
    pub async fn cancel(&self, id: &str, message: String) -> Option<Call> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Input::Cancel {
            id: id.to_string(),
            message,
            reply,
        }) {
            return None;
        }
        rx.await.ok().flatten()
    }

    /// Runs `job` on a node: its events, ending with Done or Lost.
    pub fn build(&self, job: BuildJob) -> mpsc::UnboundedReceiver<BuildEvent> {
        let (reply, rx) = mpsc::unbounded_channel();
        let lost = reply.clone();
        if !self.send(Input::Build {
            job: Box::new(job),
            reply,
        }) {
            let _ = lost.send(BuildEvent::Lost("this replica no longer leads".into()));
        }
        rx
    }

    /// Follows call `id`'s output; None if the broker does not hold it
    /// (it ended, or another replica leads).
    pub async fn follow_logs(&self, id: &str) -> Option<mpsc::Receiver<LogChunk>> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Input::FollowLogs {
            id: id.to_string(),
            reply,
        }) {
            return None;
        }
        rx.await.ok().flatten()
    }

    pub async fn drain(&self, node: &str, drain: bool) -> Option<Node> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Input::Drain {
            node: node.to_string(),
            drain,
            reply: tx,
        }) {
            return None;
        }
        rx.await.ok().flatten()
    }

    pub async fn list_nodes(&self) -> Vec<Node> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Input::ListNodes(tx)) {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

struct AgentConn {
    /// Finishing its calls, taking no new work.
    draining: bool,
    session: u64,
    tx: AgentSender,
    spots: Vec<Spot>,
    connected_at_ms: i64,
    /// The faas version its hello reported.
    version: String,
}

struct BrokerLoop {
    broker: Broker,
    /// The registered runtimes and functions, for preload operations.
    runtimes: HashMap<String, Runtime>,
    functions: HashMap<String, Function>,
    /// Per function key: the versions its aliases name.
    aliased: HashMap<String, Vec<Function>>,
    registry_host: String,
    agents: HashMap<String, AgentConn>,
    /// The calls this leader holds: where they run, who may report them,
    /// their deadlines.
    ledger: Ledger,
    store: Store,
    watch: Arc<CallWatch>,
    connected_agents: Arc<AtomicUsize>,
    epoch: Instant,
    /// Nodes an operator drained (recorded in etcd): they take no work
    /// whenever they connect.
    drained: std::collections::HashSet<String>,
    /// Secret values for the bundles of function preloads.
    secrets: crate::secrets::Secrets,
    /// Spots holding a preload that has not served a call yet, and its
    /// kind: a call on it is a hit, its clearing or replacement a waste.
    unused_preloads: HashMap<SpotId, &'static str>,
    /// Followers of calls' output, by call id; dropped when the call ends.
    log_followers: HashMap<String, Vec<mpsc::Sender<LogChunk>>>,
    /// Builds running on nodes, by build id.
    builds: HashMap<String, PendingBuild>,
}

/// Starts the broker loop with the given policy.
pub fn spawn(
    broker: Broker,
    store: Store,
    watch: Arc<CallWatch>,
    registry_host: String,
    settings: CallSettings,
    fence: Option<LeaderFence>,
    secrets: crate::secrets::Secrets,
) -> BrokerHandle {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let connected_agents = Arc::new(AtomicUsize::new(0));
    let handle = BrokerHandle {
        tx,
        connected_agents: connected_agents.clone(),
        policy: broker.policy_name(),
        started: Instant::now(),
        fence: fence.map(Arc::new),
    };
    let broker_policy = broker.policy_name();
    let mut state = BrokerLoop {
        broker,
        runtimes: HashMap::new(),
        functions: HashMap::new(),
        aliased: HashMap::new(),
        registry_host,
        agents: HashMap::new(),
        ledger: Ledger::new(settings, broker_policy),
        store,
        watch,
        connected_agents,
        epoch: Instant::now(),
        drained: Default::default(),
        secrets,
        unused_preloads: HashMap::new(),
        log_followers: HashMap::new(),
        builds: HashMap::new(),
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = rx.recv() => match input {
                    Some(Input::Stop) | None => break,
                    Some(input) => state.on_input(input),
                },
                _ = tick.tick() => {
                    let effects = state.ledger.tick(now_ms());
                    state.apply(effects);
                    state.feed(Event::Tick);
                    state.sample_metrics();
                }
            }
        }
    });
    handle
}

fn spot_state(spot: &Spot) -> SpotState {
    use faas_proto::v1::SpotState as S;
    match spot.state() {
        S::Free | S::Unspecified => SpotState::Free,
        S::Preloading => SpotState::Preloading {
            runtime: spot.runtime.clone(),
            function: None,
        },
        S::PreloadedRuntime => SpotState::PreloadedRuntime {
            runtime: spot.runtime.clone(),
        },
        // The broker matches preloaded functions by name and version; the
        // agent reports "name@version".
        S::PreloadedFunction => {
            let (name, version) = spot
                .function
                .split_once('@')
                .map(|(n, v)| (n.to_string(), v.parse().unwrap_or(0)))
                .unwrap_or((spot.function.clone(), 0));
            SpotState::PreloadedFunction {
                function: FunctionRef {
                    name,
                    version,
                    runtime: spot.runtime.clone(),
                },
            }
        }
        S::Running => SpotState::Running {
            call_id: spot.call_id.clone(),
        },
        S::Clearing => SpotState::Clearing,
    }
}

impl BrokerLoop {
    /// Queue, spots and nodes for `/metrics`, as this broker sees them.
    fn sample_metrics(&self) {
        let m = crate::metrics::metrics();
        let cluster = self.broker.cluster();
        m.queued
            .set((cluster.queue().len() + self.ledger.held_total()) as i64);
        m.nodes.set(self.agents.len() as i64);
        let mut counts: HashMap<(&str, &'static str), i64> = HashMap::new();
        for (id, state) in cluster.spots() {
            *counts
                .entry((id.node.as_str(), spot_state_name(state)))
                .or_default() += 1;
        }
        // Nodes and states seen before but gone now read 0, not stale.
        m.spots.clear();
        for ((node, state), n) in counts {
            m.spots
                .get_or_create(&crate::metrics::SpotLabels {
                    node: node.to_string(),
                    state,
                })
                .set(n);
        }
    }

    /// Counts preloads, their hits and the wasted ones as operations go
    /// out to `spot`.
    fn count_preloads(&mut self, spot: &SpotId, kind: spot_operation::Kind) {
        use crate::metrics::KindLabels;
        use spot_operation::Kind;
        let m = crate::metrics::metrics();
        let loaded = match kind {
            Kind::PreloadRuntime => Some("runtime"),
            Kind::PreloadFunction => Some("function"),
            _ => None,
        };
        let previous = self.unused_preloads.remove(spot);
        match (kind, previous) {
            (Kind::ExecRuntimePreloaded, Some(kind @ "runtime"))
            | (Kind::ExecFunctionPreloaded, Some(kind @ "function")) => {
                m.preload_hits.get_or_create(&KindLabels { kind }).inc();
            }
            (_, Some(kind)) => {
                m.preloads_wasted.get_or_create(&KindLabels { kind }).inc();
            }
            (_, None) => {}
        }
        if let Some(kind) = loaded {
            m.preloads.get_or_create(&KindLabels { kind }).inc();
            self.unused_preloads.insert(spot.clone(), kind);
        }
    }

    /// Tells `node` that someone follows call `id`'s output.
    fn ask_for_logs(&self, node: &str, id: &str) {
        if let Some(agent) = self.agents.get(node) {
            let _ = agent.tx.try_send(Ok(ControlMessage {
                msg: Some(control_message::Msg::FollowLogs(FollowLogs {
                    call_id: id.to_string(),
                })),
            }));
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn feed(&mut self, event: Event) {
        let now = self.now();
        let ops = self.broker.handle(event, now);
        for op in ops {
            self.send_operation(op);
        }
    }

    /// Carries out what the ledger decided.
    fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Enqueue { call_id, function } => {
                    let arrived_at = self.now();
                    self.feed(Event::CallArrived(PendingCall {
                        id: call_id,
                        function,
                        arrived_at,
                    }));
                }
                Effect::Withdraw(call_id) => {
                    self.broker.withdraw(&call_id);
                }
                Effect::Publish(call) => self.watch.publish(&call),
                Effect::RecordRunning { call, version } => {
                    // Off the hot path: the operation went out already.
                    tokio::spawn(record_running(self.store.clone(), *call, version));
                }
                Effect::Persist {
                    call,
                    logs,
                    confirm,
                } => {
                    let confirm = confirm.and_then(|s| self.sender_of(&s));
                    // Its followers read the rest from the stored log.
                    self.log_followers.remove(&call.id);
                    self.persist(*call, logs, confirm);
                }
                Effect::RecordUnlessFinal { result, from } => {
                    let confirm = self.sender_of(&from);
                    self.record_unless_final(*result, from.node, confirm);
                }
                Effect::Confirm { to, call_id } => {
                    confirm_recorded(self.sender_of(&to).as_ref(), call_id);
                }
                Effect::Kill { to, call_id } => {
                    kill_call(self.sender_of(&to).as_ref(), call_id);
                }
            }
        }
    }

    /// The stream of `session`, if it is still its node's live one. A weak
    /// handle: a write stuck while etcd is away must not keep the agent's
    /// stream open after this broker stops.
    fn sender_of(&self, session: &Session) -> Option<WeakAgentSender> {
        self.agents
            .get(&session.node)
            .filter(|a| a.session == session.id)
            .map(|a| a.tx.downgrade())
    }

    /// Whether a message from (node, session) comes from the node's live
    /// stream; a stale one's messages are dropped.
    fn is_live(&self, node: &str, session: u64) -> bool {
        self.agents.get(node).is_some_and(|a| a.session == session)
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::CallArrived {
                call,
                bundle,
                accepted_at_ms,
            } => {
                if !crate::ledger::is_call_id(&call.id) {
                    error!(call_id = ?call.id, "a call whose id is not a UUID; not run");
                    return;
                }
                let effects = self
                    .ledger
                    .submitted(call, bundle, accepted_at_ms, now_ms());
                self.apply(effects);
            }
            Input::AgentConnected {
                node,
                spots,
                session,
                tx,
                running_calls,
                incarnation,
                proven,
                version,
            } => {
                if self.agents.contains_key(&node) {
                    // A new session of the same node replaces the old one.
                    self.node_left(&node);
                }
                let session_ref = Session {
                    node: node.clone(),
                    id: session,
                };
                let effects = self.ledger.connected(
                    session_ref,
                    running_calls,
                    &proven,
                    &incarnation,
                    now_ms(),
                );
                let draining = self.drained.contains(&node);
                info!(%node, spots, draining, "agent joined");
                self.agents.insert(
                    node.clone(),
                    AgentConn {
                        draining,
                        session,
                        tx,
                        spots: (0..spots)
                            .map(|index| Spot {
                                index,
                                state: faas_proto::v1::SpotState::Free as i32,
                                ..Default::default()
                            })
                            .collect(),
                        connected_at_ms: now_ms(),
                        version,
                    },
                );
                self.apply(effects);
                self.count_usable_agents();
                if !draining {
                    self.feed(Event::NodeJoined { node, spots });
                }
            }
            Input::DrainRecorded { node, drained } => {
                if drained {
                    self.drained.insert(node.clone());
                } else {
                    self.drained.remove(&node);
                }
                self.set_draining(&node, drained, true);
            }
            Input::AgentDisconnected { node, session } => {
                if self.is_live(&node, session) {
                    info!(%node, "agent left");
                    self.node_left(&node);
                }
            }
            Input::Spot {
                node,
                session,
                report,
            } => {
                let Some(agent) = self.agents.get_mut(&node).filter(|a| a.session == session)
                else {
                    debug!(%node, session, "spot report from a stale session; ignored");
                    return;
                };
                let Some(spot) = report.spot else { return };
                let Some(slot) = agent.spots.get_mut(spot.index as usize) else {
                    warn!(%node, spot = spot.index, "report about a spot the node does not have; ignored");
                    return;
                };
                if !spot.call_id.is_empty() && !crate::ledger::is_call_id(&spot.call_id) {
                    warn!(%node, spot = spot.index, call_id = ?spot.call_id, "spot report with a malformed call id; ignored");
                    return;
                }
                if !report.error.is_empty() {
                    warn!(%node, spot = spot.index, error = %report.error, "spot operation failed");
                }
                *slot = spot.clone();
                let state = spot_state(&spot);
                let id = SpotId {
                    node: node.clone(),
                    index: spot.index,
                };
                // The Free that ends an operation sent before the preload
                // (the call it followed) says nothing about the preload.
                let ends_earlier_operation = self
                    .broker
                    .cluster()
                    .pending_operations(&id)
                    .next()
                    .is_some_and(|o| {
                        !matches!(
                            o.operation,
                            Operation::PreloadRuntime { .. } | Operation::PreloadFunction { .. }
                        )
                    });
                if matches!(state, SpotState::Free) && !ends_earlier_operation {
                    // A preload that failed, or that the agent cleared
                    // (over its memory budget), never served a call.
                    if let Some(kind) = self.unused_preloads.remove(&id) {
                        crate::metrics::metrics()
                            .preloads_wasted
                            .get_or_create(&crate::metrics::KindLabels { kind })
                            .inc();
                    }
                }
                self.feed(Event::SpotReported {
                    spot: SpotId {
                        node,
                        index: spot.index,
                    },
                    state,
                });
            }
            Input::Result {
                node,
                session,
                result,
            } => self.on_result(Session { node, id: session }, *result),
            Input::RuntimeChanged(runtime) => {
                let name = runtime.name.clone();
                self.runtimes.insert(name.clone(), runtime);
                self.feed(Event::RuntimeRegistered { name });
            }
            Input::RuntimeRemoved(name) => {
                if self.runtimes.remove(&name).is_some() {
                    self.feed(Event::RuntimeRemoved { name });
                }
            }
            Input::FunctionChanged(function) => {
                let function = *function;
                // Functions are known by key (namespace and name), as the
                // store's watch names the deleted ones.
                let key = function.key();
                let known = self.functions.get(&key);
                if known.is_some_and(|f| f.version == function.version) {
                    return;
                }
                let reference = FunctionRef {
                    name: key.clone(),
                    version: function.version,
                    runtime: function.runtime.clone(),
                };
                let replaced = self.functions.insert(key, function);
                if let Some(old) = replaced {
                    self.forget_package(&old.package_digest);
                }
                self.feed(Event::FunctionRegistered {
                    function: reference,
                });
            }
            Input::AliasTargets { key, versions } => {
                let refs = versions
                    .iter()
                    .map(|f| FunctionRef {
                        name: key.clone(),
                        version: f.version,
                        runtime: f.runtime.clone(),
                    })
                    .collect();
                if versions.is_empty() {
                    self.aliased.remove(&key);
                } else {
                    self.aliased.insert(key.clone(), versions);
                }
                self.feed(Event::AliasTargets {
                    name: key,
                    versions: refs,
                });
            }
            Input::FunctionRemoved(name) => {
                self.aliased.remove(&name);
                // Its queued calls would run a function that is gone.
                let effects = self.ledger.function_deleted(&name, now_ms_f64());
                self.apply(effects);
                if let Some(old) = self.functions.remove(&name) {
                    self.forget_package(&old.package_digest);
                    self.feed(Event::FunctionRemoved { name });
                }
            }
            Input::Concurrency { namespace, limit } => {
                let effects = self.ledger.set_concurrency(&namespace, limit);
                self.apply(effects);
            }
            Input::Adopt { call, bundle } => {
                if !crate::ledger::is_call_id(&call.id) {
                    error!(call_id = ?call.id, "a running call whose id is not a UUID; not adopted");
                    return;
                }
                let effects = self.ledger.adopted(call, bundle, now_ms());
                self.apply(effects);
            }
            Input::Drain { node, drain, reply } => {
                if !self.agents.contains_key(&node) {
                    let _ = reply.send(None);
                    return;
                }
                // Preloads are cleared by the agent once what runs ends.
                self.set_draining(&node, drain, true);
                let _ = reply.send(self.node_view(&node));
            }
            Input::AgentDraining { node, session } => {
                if self.is_live(&node, session) {
                    info!(%node, "agent shutting down");
                    // The agent clears its spots itself as it stops.
                    self.set_draining(&node, true, false);
                }
            }
            Input::Refused {
                node,
                session,
                call_id,
            } => {
                if !self.is_live(&node, session) || call_id.is_empty() {
                    return;
                }
                match self.ledger.refused(
                    &Session {
                        node: node.clone(),
                        id: session,
                    },
                    &call_id,
                ) {
                    Ok(effects) => self.apply(effects),
                    Err(refusal) => {
                        warn!(%call_id, %node, ?refusal, "refusal of a call not dispatched to this session; ignored")
                    }
                }
            }
            Input::LiveCall(id, reply) => {
                let _ = reply.send(self.ledger.live_call(&id).cloned());
            }
            Input::Cancel { id, message, reply } => {
                let span = info_span!("cancel", call_id = %id);
                let _enter = span.enter();
                let Some(effects) =
                    self.ledger
                        .cancel(&id, CancelReason::Requested, message, now_ms_f64())
                else {
                    let _ = reply.send(None);
                    return;
                };
                let cancelled = effects.iter().find_map(|e| match e {
                    Effect::Persist { call, .. } => Some((**call).clone()),
                    _ => None,
                });
                self.apply(effects);
                let _ = reply.send(cancelled);
            }
            Input::FollowLogs { id, reply } => {
                let Some(call) = self.ledger.live_call(&id) else {
                    let _ = reply.send(None);
                    return;
                };
                let node = call.node.clone();
                let (tx, rx) = mpsc::channel(LOG_FOLLOWER_BUFFER);
                self.log_followers.entry(id.clone()).or_default().push(tx);
                // Running: its agent starts streaming. Queued: asked when
                // it is dispatched.
                if !node.is_empty() {
                    self.ask_for_logs(&node, &id);
                }
                let _ = reply.send(Some(rx));
            }
            Input::Log {
                node,
                session,
                chunk,
            } => {
                // Only from the live session of the node the call runs on.
                let from_runner = self.agents.get(&node).is_some_and(|a| a.session == session)
                    && self
                        .ledger
                        .live_call(&chunk.call_id)
                        .is_some_and(|c| c.node == node);
                if !from_runner {
                    debug!(%node, call_id = %chunk.call_id, "log chunk of a call not running there; dropped");
                    return;
                }
                if let Some(followers) = self.log_followers.get_mut(&chunk.call_id) {
                    followers.retain(|f| match f.try_send(chunk.clone()) {
                        Ok(()) => true,
                        Err(mpsc::error::TrySendError::Full(_)) => true,
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    });
                    if followers.is_empty() {
                        self.log_followers.remove(&chunk.call_id);
                    }
                }
            }
            Input::Build { job, reply } => self.start_build(*job, reply),
            Input::BuildMessage {
                node,
                session,
                message,
            } => {
                let id = match &message {
                    BuildMessage::Output(o) => o.build_id.clone(),
                    BuildMessage::Done(d) => d.build_id.clone(),
                };
                let Some(pending) = self
                    .builds
                    .get(&id)
                    .filter(|b| b.node == node && b.session == session)
                else {
                    debug!(%node, build_id = %id, "message about a build this node does not run; ignored");
                    return;
                };
                let done = matches!(message, BuildMessage::Done(_));
                let event = match message {
                    BuildMessage::Output(o) => BuildEvent::Output(o),
                    BuildMessage::Done(d) => BuildEvent::Done(d),
                };
                // A deploy that gave up dropped its receiver: the rest of
                // the build's output is dropped with it.
                let _ = pending.reply.send(event);
                if done {
                    self.builds.remove(&id);
                }
            }
            Input::Stop => {}
            Input::ListNodes(reply) => {
                let nodes = self
                    .agents
                    .keys()
                    .filter_map(|n| self.node_view(n))
                    .collect();
                let _ = reply.send(nodes);
            }
        }
    }

    /// Takes a node out of the pool (draining: what runs there finishes) or
    /// back in.
    /// Tells every agent to drop a package from its cache, unless a
    /// function still uses it (the same package deployed twice).
    fn forget_package(&self, digest: &str) {
        if digest.is_empty() || self.functions.values().any(|f| f.package_digest == digest) {
            return;
        }
        for agent in self.agents.values() {
            let _ = agent.tx.try_send(Ok(ControlMessage {
                msg: Some(control_message::Msg::ForgetPackage(
                    faas_proto::v1::ForgetPackage {
                        digest: digest.to_string(),
                    },
                )),
            }));
        }
    }

    fn set_draining(&mut self, node: &str, drain: bool, clear_spots: bool) {
        let Some(agent) = self.agents.get_mut(node) else {
            return;
        };
        if agent.draining == drain {
            return;
        }
        agent.draining = drain;
        let spots = agent.spots.len() as u32;
        if drain {
            info!(%node, "draining");
            self.feed(Event::NodeLeft {
                node: node.to_string(),
            });
            if clear_spots {
                for index in 0..spots {
                    let clear = SpotOperation {
                        spot: index,
                        kind: spot_operation::Kind::ClearSpot as i32,
                        ..Default::default()
                    };
                    let _ = self.agents[node].tx.try_send(Ok(ControlMessage {
                        msg: Some(control_message::Msg::Operation(clear)),
                    }));
                }
            }
        } else {
            info!(%node, "back in the pool");
            self.feed(Event::NodeJoined {
                node: node.to_string(),
                spots,
            });
        }
        self.count_usable_agents();
    }

    fn node_view(&self, name: &str) -> Option<Node> {
        self.agents.get(name).map(|a| Node {
            name: name.to_string(),
            connected: true,
            spots: a.spots.clone(),
            connected_at_ms: a.connected_at_ms,
            draining: a.draining,
            version: a.version.clone(),
        })
    }

    /// Agents that can take work (connected, not draining).
    fn count_usable_agents(&self) {
        let usable = self.agents.values().filter(|a| !a.draining).count();
        self.connected_agents.store(usable, Ordering::Relaxed);
    }

    /// Sends a build to the usable node running the fewest builds.
    fn start_build(&mut self, job: BuildJob, reply: mpsc::UnboundedSender<BuildEvent>) {
        let busy = |node: &str| self.builds.values().filter(|b| b.node == node).count();
        let chosen = self
            .agents
            .iter()
            .filter(|(_, a)| !a.draining)
            .min_by_key(|(node, _)| busy(node))
            .map(|(node, a)| (node.clone(), a.session, a.tx.clone()));
        let Some((node, session, tx)) = chosen else {
            let _ = reply.send(BuildEvent::Lost(
                "no node is connected to run the build; retry when one is".into(),
            ));
            return;
        };
        let id = job.build_id.clone();
        let sent = tx.try_send(Ok(ControlMessage {
            msg: Some(control_message::Msg::Build(job)),
        }));
        if sent.is_err() {
            let _ = reply.send(BuildEvent::Lost(format!(
                "node {node} is not taking work now; retry shortly"
            )));
            return;
        }
        info!(%node, build_id = %id, "build sent");
        let _ = reply.send(BuildEvent::Started { node: node.clone() });
        self.builds.insert(
            id,
            PendingBuild {
                node,
                session,
                reply,
            },
        );
    }

    fn node_left(&mut self, node: &str) {
        let Some(agent) = self.agents.remove(node) else {
            return;
        };
        self.builds.retain(|id, build| {
            if build.node != node {
                return true;
            }
            warn!(%node, build_id = %id, "the node running a build left");
            let _ = build.reply.send(BuildEvent::Lost(format!(
                "node {node}, which ran the build, left; deploy again"
            )));
            false
        });
        self.unused_preloads.retain(|spot, _| spot.node != node);
        self.count_usable_agents();
        self.feed(Event::NodeLeft {
            node: node.to_string(),
        });
        // Its calls may still finish (a broken stream, not a dead node):
        // they are declared lost only if it does not come back in time.
        let session = Session {
            node: node.to_string(),
            id: agent.session,
        };
        self.ledger.disconnected(&session, now_ms());
    }

    fn send_operation(&mut self, op: Operation) {
        use spot_operation::Kind;
        let spot = op.spot().clone();
        let (kind, call, runtime, function) = match &op {
            Operation::ExecuteNoPreload { call, .. } => {
                (Kind::ExecuteNoPreload, Some(call), None, None)
            }
            Operation::ExecRuntimePreloaded { call, .. } => {
                (Kind::ExecRuntimePreloaded, Some(call), None, None)
            }
            Operation::ExecFunctionPreloaded { call, .. } => {
                (Kind::ExecFunctionPreloaded, Some(call), None, None)
            }
            Operation::PreloadRuntime { runtime, .. } => {
                (Kind::PreloadRuntime, None, Some(runtime), None)
            }
            Operation::PreloadFunction { function, .. } => {
                (Kind::PreloadFunction, None, None, Some(function))
            }
            Operation::ClearSpot { .. } => (Kind::ClearSpot, None, None, None),
        };
        let mut message = SpotOperation {
            spot: spot.index,
            kind: kind as i32,
            ..Default::default()
        };
        let mut effects = Vec::new();
        if let Some(pending) = call {
            let start = match kind {
                Kind::ExecFunctionPreloaded => Start::Preloaded,
                _ => Start::Loading,
            };
            let (assignment, decided) =
                self.ledger
                    .dispatch(&pending.id, &spot, start, now_ms_f64());
            let Some(assignment) = assignment else {
                warn!(call_id = %pending.id, %spot, "policy dispatched a call that cannot go there; the spot is given back");
                self.feed(Event::SpotReported {
                    spot,
                    state: SpotState::Free,
                });
                self.apply(decided);
                return;
            };
            record_queue_span(&assignment.call, &spot.node);
            message.runtime = Some(assignment.runtime);
            message.function = Some(assignment.function);
            message.call = Some(assignment.call);
            effects = decided;
        }
        // Preloads carry the bundles of the registered objects; a preload
        // of something no longer registered (or of an old version) is not
        // sent, and the spot is given back to the policy as free.
        let preload_bundle = match (runtime, function) {
            (Some(name), _) => self
                .runtimes
                .get(name)
                .map(|r| {
                    let f = Function::default();
                    CallBundle::new(r.clone(), f, &self.registry_host, Vec::new()).runtime
                })
                .map(|rt| (Some(rt), None)),
            (_, Some(fref)) => match (
                // The current version, or an earlier one an alias names.
                self.functions
                    .get(&fref.name)
                    .into_iter()
                    .chain(self.aliased.get(&fref.name).into_iter().flatten())
                    .find(|f| f.version == fref.version),
                self.runtimes.get(&fref.runtime),
            ) {
                (Some(f), Some(r)) => {
                    // From the secrets held here: a copy behind the
                    // function's references (or a secret gone) skips the
                    // preload; calls still get theirs at acceptance.
                    match self.secrets.resolve_held(f) {
                        Ok(Some(values)) => {
                            let bundle =
                                CallBundle::new(r.clone(), f.clone(), &self.registry_host, values);
                            Some((Some(bundle.runtime), Some(bundle.function)))
                        }
                        Ok(None) => None,
                        Err(e) => {
                            warn!(%spot, error = %e, "preload without its secrets; skipped");
                            None
                        }
                    }
                }
                _ => None,
            },
            _ => Some((None, None)),
        };
        match preload_bundle {
            Some((rt, f)) => {
                if rt.is_some() {
                    message.runtime = rt;
                    message.function = f;
                }
            }
            None => {
                warn!(%spot, ?op, "preload of something not registered (any more); skipped");
                self.feed(Event::SpotReported {
                    spot,
                    state: SpotState::Free,
                });
                return;
            }
        }
        let Some(agent) = self.agents.get(&spot.node) else {
            warn!(%spot, "operation for a node that is gone");
            self.apply(effects);
            return;
        };
        let msg = ControlMessage {
            msg: Some(control_message::Msg::Operation(message)),
        };
        let sent = agent.tx.try_send(Ok(msg)).is_ok();
        if sent {
            self.count_preloads(&spot, kind);
            // A followed call that was queued: its agent streams it too.
            if let Some(call) = call.filter(|c| self.log_followers.contains_key(&c.id)) {
                self.ask_for_logs(&spot.node, &call.id);
            }
        }
        // The operation goes out first: publishing and recording follow.
        self.apply(effects);
        if !sent {
            // The session is closing or hopelessly behind: drop the node;
            // its calls are resolved as orphans.
            warn!(node = %spot.node, "agent stream is full or closed; dropping the node");
            let node = spot.node.clone();
            self.node_left(&node);
        }
    }

    fn on_result(&mut self, from: Session, result: CallResult) {
        let span = info_span!("call", call_id = %result.call_id, node = %from.node);
        let _enter = span.enter();
        if !self.is_live(&from.node, from.id) {
            // Sent again on the node's new stream (it was listed there).
            debug!(session = from.id, "result from a stale session; dropped");
            return;
        }
        match self.ledger.result(&from, result, now_ms_f64()) {
            Outcome::Recorded(effects) => self.apply(effects),
            Outcome::Late(effects) => {
                info!("result for a call already ended here; not recorded, confirmed");
                self.apply(effects);
            }
            Outcome::Refused(refusal) => {
                warn!(
                    session = from.id,
                    ?refusal,
                    "result refused: the call was not dispatched to this session"
                );
            }
        }
    }

    /// Records a final call off the loop; then tells the agent that sent
    /// the result, if any, that it may forget it.
    fn persist(&self, call: Call, logs: CallLogs, confirm: Option<WeakAgentSender>) {
        let store = self.store.clone();
        let watch = self.watch.clone();
        let span = info_span!("persist", call_id = %call.id);
        let trace = record_span_of(&call);
        tokio::spawn(
            async move {
                let call_id = call.id.clone();
                write_final(&store, &watch, call, logs).await;
                if let Some(trace) = trace {
                    trace.end();
                }
                confirm_recorded(confirm.as_ref(), call_id);
            }
            .instrument(span),
        );
    }

    /// Records a result for a call this leader does not hold (it took
    /// over while the call ran, and the agent listed it in its hello) if
    /// the stored call is not final yet; then confirms it.
    fn record_unless_final(
        &self,
        result: CallResult,
        node: String,
        confirm: Option<WeakAgentSender>,
    ) {
        let store = self.store.clone();
        let watch = self.watch.clone();
        tokio::spawn(
            async move {
                let stored = match store.get::<Call>(Kind::Call, &result.call_id).await {
                    Ok(stored) => stored,
                    Err(e) => {
                        // Not confirmed: the agent sends it again.
                        warn!(error = %e, "could not read the call to record its result");
                        return;
                    }
                };
                let call_id = result.call_id.clone();
                match stored {
                    // A call recorded running on another node is that
                    // node's to finish: a node that lists it in its hello
                    // does not get to record its result.
                    Some(call)
                        if !crate::watch::is_final(&call)
                            && !call.node.is_empty()
                            && call.node != node =>
                    {
                        warn!(recorded_on = %call.node, %node, "result for a call recorded on another node; refused");
                        return;
                    }
                    Some(call) if !crate::watch::is_final(&call) => {
                        let (call, logs) =
                            crate::ledger::finish_stored(call, &node, result, now_ms_f64());
                        write_final(&store, &watch, call, logs).await;
                    }
                    // Recorded already, or deleted by retention.
                    _ => debug!("result already recorded"),
                }
                confirm_recorded(confirm.as_ref(), call_id);
            }
            .in_current_span(),
        );
    }
}

/// Tells an agent that a result it sent is recorded.
fn confirm_recorded(agent: Option<&WeakAgentSender>, call_id: String) {
    if let Some(tx) = agent.and_then(|weak| weak.upgrade()) {
        let _ = tx.try_send(Ok(ControlMessage {
            msg: Some(control_message::Msg::Recorded(ResultRecorded { call_id })),
        }));
    }
}

/// Tells an agent to kill a cancelled call's container. Best effort: an
/// agent whose stream is full or gone runs it to its end or timeout (a
/// node back from an outage is told again by the ledger).
fn kill_call(agent: Option<&WeakAgentSender>, call_id: String) {
    let sent = agent.and_then(|weak| weak.upgrade()).is_some_and(|tx| {
        tx.try_send(Ok(ControlMessage {
            msg: Some(control_message::Msg::Cancel(CancelCall {
                call_id: call_id.clone(),
            })),
        }))
        .is_ok()
    });
    if !sent {
        warn!(%call_id, "could not tell the agent to kill a cancelled call; it runs to its end");
    }
}

/// Records a dispatched call as RUNNING, over its record at `version`
/// only: a final record written meanwhile is never overwritten.
async fn record_running(store: Store, call: Call, version: i64) {
    let span = info_span!("record_running", call_id = %call.id);
    async move {
        for attempt in 1..=3u64 {
            match store
                .put_if_version(Kind::Call, &call.id, &call, version)
                .await
            {
                Ok(true) => return,
                Ok(false) => {
                    debug!("call record changed before RUNNING was written; left as is");
                    return;
                }
                Err(e) => {
                    warn!(attempt, error = %e, "recording the call as running failed");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Whether a store error will fail the same way however often the write is
/// tried: the request is too large for etcd, or etcd's space is exhausted
/// (NOSPACE: it takes compaction and an alarm disarm first).
pub fn is_permanent(error: &StoreError) -> bool {
    // The store types NOSPACE and too-large requests it recognises; the
    // text checks catch what reaches it untyped (a raw etcd status).
    if error.is_permanent() {
        return true;
    }
    let StoreError::Etcd(e) = error else {
        return false;
    };
    let text = e.to_string();
    let code = match e {
        etcd_client::Error::GRpcStatus(s) => Some(s.code()),
        _ => None,
    };
    text.contains("request is too large")
        || text.contains("database space exceeded")
        || text.contains("message length too large")
        || text.contains("larger than max")
        // (Not every RESOURCE_EXHAUSTED: "too many requests" passes.)
        || code == Some(tonic::Code::InvalidArgument)
}

/// Logs kept of a call whose result could not be stored whole.
const CUT_LOG_TAIL: usize = 4 << 10;

/// The record that replaces a final call that etcd refuses for good: FAILED
/// `platform`, no result, the logs cut to their last few KiB.
fn cut_down(mut call: Call, logs: CallLogs, error: &StoreError) -> (Call, CallLogs) {
    let tail_start = logs.logs.len().saturating_sub(CUT_LOG_TAIL);
    let tail = logs.logs[tail_start..].to_vec();
    call.status = CallStatus::Failed as i32;
    call.result_json.clear();
    call.result_base64 = false;
    call.logs_truncated = true;
    call.error = Some(CallError {
        reason: "platform".into(),
        message: format!("the call's outcome could not be stored ({error}); its result was dropped and its logs cut"),
        log_tail: String::from_utf8_lossy(&tail[tail.len().saturating_sub(1024)..]).into_owned(),
    });
    (
        call,
        CallLogs {
            logs: tail,
            truncated: true,
        },
    )
}

/// How many times a cut-down record refused for good is tried (etcd's
/// NOSPACE clears once it is compacted and disarmed).
const CUT_DOWN_ATTEMPTS: u32 = 10;

/// The call's wait in the queue, as a span of its trace (from its
/// acceptance to its dispatch to `node`).
fn record_queue_span(call: &CallAssignment, node: &str) {
    if !faas_telemetry::enabled() {
        return;
    }
    if let Some(parent) = TraceParent::parse(&call.traceparent) {
        let now = std::time::SystemTime::now();
        let start = now
            .checked_sub(Duration::from_secs_f64(call.queue_ms.max(0.0) / 1000.0))
            .unwrap_or(now);
        CallSpan::record(
            "faas.queue",
            &parent,
            start,
            now,
            &[("faas.call_id", &call.call_id), ("faas.node", node)],
        );
    }
}

/// The span of recording a call's outcome, if its trace is recorded.
fn record_span_of(call: &Call) -> Option<CallSpan> {
    if !faas_telemetry::enabled() {
        return None;
    }
    let parent = TraceParent::parse(&call.traceparent)?;
    let mut span = CallSpan::start("faas.record", SpanKind::Internal, Some(&parent));
    span.attribute("faas.call_id", &call.id);
    span.attribute("faas.status", &call.status().short_name());
    Some(span)
}

/// Records a final call and its logs in one etcd transaction (the result
/// and logs beside the record, bounded by the store's payload limits),
/// retrying while etcd is unreachable, then tells the waiters what was
/// recorded. A record etcd refuses for good is replaced by a cut-down
/// FAILED one (see [`cut_down`]); that one is tried a bounded number of
/// times.
async fn write_final(store: &Store, watch: &CallWatch, call: Call, logs: CallLogs) {
    crate::metrics::call_ended(&call);
    let mut call = call;
    let mut logs = logs;
    let mut cut = false;
    let mut permanent_failures = 0;
    let mut delay = Duration::from_millis(100);
    let recorded;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match store.write_final_call(call.clone(), logs.clone()).await {
            Ok(stored) => {
                recorded = stored;
                break;
            }
            Err(e) if is_permanent(&e) && !cut => {
                warn!(error = %e, "the call's outcome cannot be stored; recording it failed with its logs cut");
                (call, logs) = cut_down(call, logs, &e);
                cut = true;
                continue;
            }
            Err(e) if is_permanent(&e) => {
                permanent_failures += 1;
                if permanent_failures >= CUT_DOWN_ATTEMPTS {
                    error!(error = %e, "even the cut-down outcome cannot be stored; the call stays as recorded");
                    return;
                }
                warn!(attempt, error = %e, "recording the call's cut-down outcome failed; retrying");
            }
            Err(e) => warn!(attempt, error = %e, "recording the call's result failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    info!(status = ?recorded.status(), "call finished");
    watch.publish(&recorded);
}

/// The state's name in `/metrics`.
fn spot_state_name(state: &SpotState) -> &'static str {
    match state {
        SpotState::Free => "free",
        SpotState::Preloading { .. } => "preloading",
        SpotState::PreloadedRuntime { .. } => "preloaded_runtime",
        SpotState::PreloadedFunction { .. } => "preloaded_function",
        SpotState::Running { .. } => "running",
        SpotState::Clearing => "clearing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd_status(status: Status) -> StoreError {
        StoreError::Etcd(etcd_client::Error::GRpcStatus(status))
    }

    #[test]
    fn writes_etcd_refuses_for_good_are_told_apart_from_outages() {
        for permanent in [
            Status::invalid_argument("etcdserver: request is too large"),
            Status::resource_exhausted("etcdserver: mvcc: database space exceeded"),
        ] {
            assert!(is_permanent(&etcd_status(permanent)));
        }
        for transient in [
            Status::unavailable("etcdserver: leader changed"),
            Status::resource_exhausted("etcdserver: too many requests"),
            Status::deadline_exceeded("etcdserver: request timed out"),
        ] {
            assert!(!is_permanent(&etcd_status(transient)));
        }
    }

    #[test]
    fn an_outcome_too_big_to_store_becomes_a_failed_call_with_its_logs_cut() {
        let call = Call {
            id: "c".into(),
            status: CallStatus::Succeeded as i32,
            result_json: "x".repeat(3 << 20),
            ..Default::default()
        };
        let mut logs = vec![b'a'; 2 << 20];
        logs.extend_from_slice(b"the end\n");
        let error = etcd_status(Status::invalid_argument("etcdserver: request is too large"));
        let (call, logs) = cut_down(
            call,
            CallLogs {
                logs,
                truncated: false,
            },
            &error,
        );
        assert_eq!(call.status(), CallStatus::Failed);
        assert!(call.result_json.is_empty());
        let e = call.error.expect("an error");
        assert_eq!(e.reason, "platform");
        assert!(e.message.contains("could not be stored"), "{}", e.message);
        assert!(e.log_tail.ends_with("the end\n"));
        assert!(call.logs_truncated && logs.truncated);
        assert_eq!(logs.logs.len(), CUT_LOG_TAIL);
        assert!(logs.logs.ends_with(b"the end\n"));
    }
}
