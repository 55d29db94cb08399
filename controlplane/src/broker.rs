//! The leader's broker loop: the I/O side of `faas_broker`. It owns the
//! agents' streams, feeds events to the policy, sends the operations it
//! returns, and records call outcomes in etcd.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_broker::{Broker, Event, FunctionRef, Operation, PendingCall, SpotId, SpotState};
use faas_proto::v1::{
    control_message, spot_operation, Call, CallAssignment, CallError, CallLogs, CallResult,
    CallStatus, ControlMessage, Function, FunctionBundle, Node, ResultRecorded, Runtime,
    RuntimeBundle, Spot, SpotOperation, SpotReport, Timings,
};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::error::{now_ms, now_ms_f64};
use crate::store::{Kind, Store};
use crate::watch::CallWatch;

/// What a spot needs to run a call, captured when the call is accepted so
/// that it runs the function version current at that moment.
#[derive(Debug)]
pub struct CallBundle {
    pub runtime: RuntimeBundle,
    pub function: FunctionBundle,
    /// The function may run again if its node is lost.
    pub idempotent: bool,
}

impl CallBundle {
    pub fn new(runtime: Runtime, function: Function, registry_host: &str) -> CallBundle {
        CallBundle {
            idempotent: function.idempotent,
            runtime: RuntimeBundle {
                name: runtime.name,
                image: runtime.image,
                path: runtime.path,
                dependencies: runtime.dependencies,
                run: runtime.run,
            },
            function: FunctionBundle {
                package_repository: format!("{registry_host}/faas/functions/{}", function.name),
                name: function.name,
                version: function.version,
                handler: function.handler,
                package_digest: function.package_digest,
                memory_bytes: function.memory_bytes,
                timeout_ms: function.timeout_ms,
                env: function.env,
            },
        }
    }
}

pub type AgentSender = mpsc::Sender<Result<ControlMessage, Status>>;
type WeakAgentSender = mpsc::WeakSender<Result<ControlMessage, Status>>;

/// How long after a node's return the results it held may still arrive
/// (they are sent right after its hello).
const RESULT_BACKLOG_GRACE: Duration = Duration::from_secs(2);
/// How long a call an agent reported running, unknown to this leader, is
/// remembered (it may be handed over by the takeover a moment later).
const REPORTED_RUNNING_MEMORY: Duration = Duration::from_secs(60);

/// How the broker resolves calls whose node is lost.
#[derive(Clone, Debug)]
pub struct CallSettings {
    /// How long a node may stay away before the calls it ran are lost.
    pub node_lost_after: Duration,
    /// Runs again of an idempotent function's call lost with its node.
    pub idempotent_retries: u32,
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            node_lost_after: Duration::from_secs(3),
            idempotent_retries: 2,
        }
    }
}

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
    /// This replica no longer leads: the loop ends, dropping the agents'
    /// streams.
    Stop,
}

/// The handle the API and the agent sessions use to talk to the broker.
#[derive(Clone)]
pub struct BrokerHandle {
    tx: mpsc::UnboundedSender<Input>,
    connected_agents: Arc<AtomicUsize>,
    policy: &'static str,
    started: Instant,
    /// The leader's election key (see `Leadership::fence`).
    fence: Option<Arc<(Vec<u8>, i64)>>,
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
    pub fn fence(&self) -> Option<&(Vec<u8>, i64)> {
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
}

struct Tracked {
    call: Call,
    bundle: Arc<CallBundle>,
    accepted_at_ms: f64,
    /// Set while the call's node is gone: past `node_lost_after` the call
    /// is declared lost.
    orphaned_since: Option<Instant>,
    /// Set when the node came back without the call among its running
    /// ones: its result may still be in the agent's backlog until then.
    lost_after: Option<Instant>,
    /// Where and when it was handed out.
    dispatched: Option<(SpotId, f64)>,
    /// Version of the call's etcd record, when known: the RUNNING record
    /// is written over exactly that version (never over a final one).
    record_version: Option<i64>,
}

impl Tracked {
    fn new(call: Call, bundle: Arc<CallBundle>, accepted_at_ms: f64) -> Tracked {
        Tracked {
            call,
            bundle,
            accepted_at_ms,
            orphaned_since: None,
            lost_after: None,
            dispatched: None,
            record_version: None,
        }
    }

    fn runs_on(&self, node: &str) -> bool {
        self.dispatched
            .as_ref()
            .is_some_and(|(s, _)| s.node == node)
    }
}

struct BrokerLoop {
    broker: Broker,
    /// The registered runtimes and functions, for preload operations.
    runtimes: HashMap<String, Runtime>,
    functions: HashMap<String, Function>,
    registry_host: String,
    agents: HashMap<String, AgentConn>,
    calls: HashMap<String, Tracked>,
    store: Store,
    watch: Arc<CallWatch>,
    connected_agents: Arc<AtomicUsize>,
    epoch: Instant,
    settings: CallSettings,
    /// Calls agents said they run that this leader did not know (yet):
    /// if the takeover hands one over, it is not run a second time.
    reported_running: HashMap<String, (String, Instant)>,
    /// Nodes an operator drained (recorded in etcd): they take no work
    /// whenever they connect.
    drained: std::collections::HashSet<String>,
}

/// Starts the broker loop with the given policy.
pub fn spawn(
    broker: Broker,
    store: Store,
    watch: Arc<CallWatch>,
    registry_host: String,
    settings: CallSettings,
    fence: Option<(Vec<u8>, i64)>,
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
    let mut state = BrokerLoop {
        broker,
        runtimes: HashMap::new(),
        functions: HashMap::new(),
        registry_host,
        agents: HashMap::new(),
        calls: HashMap::new(),
        store,
        watch,
        connected_agents,
        epoch: Instant::now(),
        settings,
        reported_running: HashMap::new(),
        drained: Default::default(),
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
                    state.expire_orphans();
                    state.feed(Event::Tick);
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

    fn on_input(&mut self, input: Input) {
        match input {
            Input::CallArrived {
                call,
                bundle,
                accepted_at_ms,
            } => {
                if self.calls.contains_key(&call.id) {
                    // Handed over twice (accepted while a takeover listed
                    // the queued calls): it must run once.
                    return;
                }
                let mut tracked = Tracked::new(call, bundle, accepted_at_ms);
                // A new call's record was written once, as QUEUED.
                tracked.record_version = (tracked.call.attempts == 0).then_some(1);
                if let Some((node, _)) = self.reported_running.remove(&tracked.call.id) {
                    // Recorded QUEUED, but its agent runs it (a leader died
                    // between handing it out and recording that).
                    info!(call_id = %tracked.call.id, %node, "call already running on its node; not run again");
                    tracked.mark_running(&node);
                    self.calls.insert(tracked.call.id.clone(), tracked);
                    return;
                }
                let (call, bundle) = (&tracked.call, &tracked.bundle);
                let pending = PendingCall {
                    id: call.id.clone(),
                    function: FunctionRef {
                        name: bundle.function.name.clone(),
                        version: bundle.function.version,
                        runtime: bundle.runtime.name.clone(),
                    },
                    arrived_at: self.now(),
                };
                self.calls.insert(call.id.clone(), tracked);
                self.feed(Event::CallArrived(pending));
            }
            Input::AgentConnected {
                node,
                spots,
                session,
                tx,
                running_calls,
            } => {
                if self.agents.contains_key(&node) {
                    // A new session of the same node replaces the old one.
                    self.node_left(&node);
                }
                // Its calls: still running, or finished with the result in
                // the agent's backlog (sent right after the hello), or lost.
                let lost_after = Instant::now() + RESULT_BACKLOG_GRACE;
                for (id, tracked) in self.calls.iter_mut() {
                    if tracked.runs_on(&node) {
                        tracked.orphaned_since = None;
                        if !running_calls.contains(id) {
                            tracked.lost_after = Some(lost_after);
                        }
                    }
                }
                // Calls it runs that this leader holds as queued (recorded
                // QUEUED; the leader that handed them out died before
                // recording RUNNING) or does not know yet.
                for id in running_calls {
                    match self.calls.get_mut(&id) {
                        Some(tracked) if tracked.dispatched.is_none() => {
                            if self.broker.withdraw(&id) {
                                info!(call_id = %id, %node, "queued call already running on its node; not run again");
                                tracked.mark_running(&node);
                            }
                        }
                        Some(_) => {}
                        None => {
                            self.reported_running
                                .insert(id, (node.clone(), Instant::now()));
                        }
                    }
                }
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
                    },
                );
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
                if self.agents.get(&node).is_some_and(|a| a.session == session) {
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
                    return;
                };
                let Some(spot) = report.spot else { return };
                if !report.error.is_empty() {
                    warn!(%node, spot = spot.index, error = %report.error, "spot operation failed");
                }
                if let Some(slot) = agent.spots.get_mut(spot.index as usize) {
                    *slot = spot.clone();
                }
                let state = spot_state(&spot);
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
            } => {
                if self.agents.get(&node).is_none_or(|a| a.session != session) {
                    debug!(%node, call_id = %result.call_id, "result from a stale session");
                }
                self.on_result(&node, *result);
            }
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
                let known = self.functions.get(&function.name);
                if known.is_some_and(|f| f.version == function.version) {
                    return;
                }
                let reference = FunctionRef {
                    name: function.name.clone(),
                    version: function.version,
                    runtime: function.runtime.clone(),
                };
                let replaced = self.functions.insert(function.name.clone(), function);
                if let Some(old) = replaced {
                    self.forget_package(&old.package_digest);
                }
                self.feed(Event::FunctionRegistered {
                    function: reference,
                });
            }
            Input::FunctionRemoved(name) => {
                if let Some(old) = self.functions.remove(&name) {
                    self.forget_package(&old.package_digest);
                    self.feed(Event::FunctionRemoved { name });
                }
            }
            Input::Adopt { call, bundle } => {
                let spot = SpotId {
                    node: call.node.clone(),
                    index: call.spot,
                };
                let connected = self.agents.contains_key(&call.node);
                let queue_ms = call.timings.as_ref().map(|t| t.queue_ms).unwrap_or(0.0);
                let accepted_at_ms = call.created_at_ms as f64;
                // Its node may have reported it in its hello already.
                let reported = self
                    .reported_running
                    .remove(&call.id)
                    .is_some_and(|(node, _)| node == call.node);
                let mut tracked = Tracked::new(call, bundle, accepted_at_ms);
                tracked.orphaned_since = (!connected).then(Instant::now);
                tracked.lost_after =
                    (connected && !reported).then(|| Instant::now() + RESULT_BACKLOG_GRACE);
                tracked.dispatched = Some((spot, queue_ms));
                self.calls.insert(tracked.call.id.clone(), tracked);
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
                if self.agents.get(&node).is_some_and(|a| a.session == session) {
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
                if self.agents.get(&node).is_none_or(|a| a.session != session) {
                    return;
                }
                let refused_here = self.calls.get(&call_id).is_some_and(|t| t.runs_on(&node));
                if refused_here {
                    let tracked = self.calls.remove(&call_id).expect("checked above");
                    info!(%call_id, %node, "call refused by a draining node; placing it elsewhere");
                    self.run_again(tracked);
                }
            }
            Input::LiveCall(id, reply) => {
                let _ = reply.send(self.calls.get(&id).map(|t| t.call.clone()));
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

    /// Queues a call again (it never ran, or it may run twice); its record
    /// keeps what it says until the outcome.
    fn run_again(&mut self, mut tracked: Tracked) {
        let id = tracked.call.id.clone();
        tracked.call.status = CallStatus::Queued as i32;
        tracked.call.node.clear();
        tracked.dispatched = None;
        tracked.orphaned_since = None;
        tracked.lost_after = None;
        // Its record may say RUNNING on the old node; a takeover adopts it
        // from there and resolves it the same way.
        tracked.record_version = None;
        let pending = PendingCall {
            id: id.clone(),
            function: FunctionRef {
                name: tracked.bundle.function.name.clone(),
                version: tracked.bundle.function.version,
                runtime: tracked.bundle.runtime.name.clone(),
            },
            arrived_at: self.now(),
        };
        self.watch.publish(&tracked.call);
        self.calls.insert(id, tracked);
        self.feed(Event::CallArrived(pending));
    }

    fn node_view(&self, name: &str) -> Option<Node> {
        self.agents.get(name).map(|a| Node {
            name: name.to_string(),
            connected: true,
            spots: a.spots.clone(),
            connected_at_ms: a.connected_at_ms,
            draining: a.draining,
        })
    }

    /// Agents that can take work (connected, not draining).
    fn count_usable_agents(&self) {
        let usable = self.agents.values().filter(|a| !a.draining).count();
        self.connected_agents.store(usable, Ordering::Relaxed);
    }

    fn node_left(&mut self, node: &str) {
        self.agents.remove(node);
        self.count_usable_agents();
        self.feed(Event::NodeLeft {
            node: node.to_string(),
        });
        // Its calls may still finish (a broken stream, not a dead node):
        // they are declared lost only if it does not come back in time.
        let now = Instant::now();
        for tracked in self.calls.values_mut() {
            if tracked.runs_on(node) {
                tracked.orphaned_since.get_or_insert(now);
            }
        }
    }

    /// Fails the calls whose node did not come back, or came back without
    /// them, in time.
    fn expire_orphans(&mut self) {
        let now = Instant::now();
        self.reported_running
            .retain(|_, (_, at)| now - *at < REPORTED_RUNNING_MEMORY);
        let grace = self.settings.node_lost_after;
        let lost: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, t)| {
                t.orphaned_since.is_some_and(|since| now - since > grace)
                    || t.lost_after.is_some_and(|at| now > at)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            let mut tracked = self.calls.remove(&id).expect("listed above");
            let node = tracked
                .dispatched
                .take()
                .map(|(s, _)| s.node)
                .unwrap_or_default();
            let attempts = tracked.call.attempts.max(1);
            // An adopted call whose function changed since has no bundle
            // to run again.
            let runnable = !tracked.bundle.function.name.is_empty();
            if tracked.bundle.idempotent && runnable && attempts <= self.settings.idempotent_retries
            {
                warn!(call_id = %id, %node, attempts, "call lost with its node; running it again (idempotent function)");
                tracked.call.attempts = attempts + 1;
                self.run_again(tracked);
                continue;
            }
            warn!(call_id = %id, %node, "call lost with its node");
            let mut call = tracked.call;
            call.status = CallStatus::Failed as i32;
            call.error = Some(CallError {
                reason: "node_lost".into(),
                message: format!("node {node} was lost while the call ran"),
                log_tail: String::new(),
            });
            call.finished_at_ms = now_ms();
            self.persist(call, CallLogs::default(), None);
        }
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
        if let Some(pending) = call {
            let Some(tracked) = self.calls.get_mut(&pending.id) else {
                warn!(call_id = %pending.id, "policy dispatched an unknown call; the spot is given back");
                self.feed(Event::SpotReported {
                    spot,
                    state: SpotState::Free,
                });
                return;
            };
            let queue_ms = (now_ms_f64() - tracked.accepted_at_ms).max(0.0);
            message.runtime = Some(tracked.bundle.runtime.clone());
            message.function = Some(tracked.bundle.function.clone());
            message.call = Some(CallAssignment {
                call_id: tracked.call.id.clone(),
                params_json: tracked.call.params_json.clone(),
                accepted_at_ms: tracked.call.created_at_ms,
                queue_ms,
            });
            tracked.dispatched = Some((spot.clone(), queue_ms));
            tracked.call.status = CallStatus::Running as i32;
            tracked.call.policy = self.broker.policy_name().to_string();
            tracked.call.node = spot.node.clone();
            tracked.call.spot = spot.index;
            tracked.call.attempts = tracked.call.attempts.max(1);
            self.watch.publish(&tracked.call);
            // Recorded so that a leader taking over waits for the result
            // instead of running the call again. Off the hot path: the
            // operation goes out now.
            if let Some(version) = tracked.record_version.take() {
                let (store, call) = (self.store.clone(), tracked.call.clone());
                tokio::spawn(record_running(store, call, version));
            }
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
                    CallBundle::new(r.clone(), f, &self.registry_host).runtime
                })
                .map(|rt| (Some(rt), None)),
            (_, Some(fref)) => match (
                self.functions.get(&fref.name),
                self.runtimes.get(&fref.runtime),
            ) {
                (Some(f), Some(r)) if f.version == fref.version => {
                    let bundle = CallBundle::new(r.clone(), f.clone(), &self.registry_host);
                    Some((Some(bundle.runtime), Some(bundle.function)))
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
            return;
        };
        let msg = ControlMessage {
            msg: Some(control_message::Msg::Operation(message)),
        };
        if agent.tx.try_send(Ok(msg)).is_err() {
            // The session is closing or hopelessly behind: drop the node;
            // its calls are resolved by node_left.
            warn!(node = %spot.node, "agent stream is full or closed; dropping the node");
            let node = spot.node.clone();
            self.node_left(&node);
        }
    }

    fn on_result(&mut self, node: &str, result: CallResult) {
        let span = info_span!("call", call_id = %result.call_id);
        let _enter = span.enter();
        self.reported_running.remove(&result.call_id);
        // The agent keeps the result until told it is recorded. A weak
        // handle: a write stuck while etcd is away must not keep the
        // agent's stream open after this broker stops.
        let confirm = self.agents.get(node).map(|a| a.tx.downgrade());
        let Some(tracked) = self.calls.remove(&result.call_id) else {
            // A result for a call this leader did not hand out (it took
            // over while the call ran, or the agent sent it again): record
            // it if the call is not final yet.
            let store = self.store.clone();
            let watch = self.watch.clone();
            let node = node.to_string();
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
                        Some(call) if !crate::watch::is_final(&call) => {
                            let queue_ms =
                                result.timings.as_ref().map(|t| t.queue_ms).unwrap_or(0.0);
                            let accepted = call.created_at_ms as f64;
                            let (call, logs) = finish(call, &node, result, accepted, queue_ms);
                            write_final(&store, &watch, call, logs).await;
                        }
                        // Recorded already, or deleted by retention.
                        _ => debug!("result already recorded"),
                    }
                    confirm_recorded(confirm.as_ref(), call_id);
                }
                .in_current_span(),
            );
            return;
        };
        let queue_ms = tracked.dispatched.as_ref().map(|(_, q)| *q).unwrap_or(0.0);
        let (call, logs) = finish(tracked.call, node, result, tracked.accepted_at_ms, queue_ms);
        self.persist(call, logs, confirm);
    }

    /// Records a final call off the loop; then tells the agent that sent
    /// the result, if any, that it may forget it.
    fn persist(&self, call: Call, logs: CallLogs, confirm: Option<WeakAgentSender>) {
        let store = self.store.clone();
        let watch = self.watch.clone();
        let span = info_span!("persist", call_id = %call.id);
        tokio::spawn(
            async move {
                let call_id = call.id.clone();
                write_final(&store, &watch, call, logs).await;
                confirm_recorded(confirm.as_ref(), call_id);
            }
            .instrument(span),
        );
    }
}

impl Tracked {
    /// Marks a call as running on `node` (its spot unknown), so that its
    /// result is awaited from there.
    fn mark_running(&mut self, node: &str) {
        self.call.status = CallStatus::Running as i32;
        self.call.node = node.to_string();
        self.call.attempts = self.call.attempts.max(1);
        let queue_ms = self
            .call
            .timings
            .as_ref()
            .map(|t| t.queue_ms)
            .unwrap_or(0.0);
        self.dispatched = Some((
            SpotId {
                node: node.to_string(),
                index: self.call.spot,
            },
            queue_ms,
        ));
        self.record_version = None;
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

/// Builds the final call record from the agent's result.
fn finish(
    mut call: Call,
    node: &str,
    result: CallResult,
    accepted_at_ms: f64,
    queue_ms: f64,
) -> (Call, CallLogs) {
    let finished = now_ms_f64();
    let mut timings = result.timings.unwrap_or_default();
    timings.queue_ms = queue_ms;
    timings.total_ms = (finished - accepted_at_ms).max(0.0);
    let accounted = timings.queue_ms
        + timings.runtime_load_ms
        + timings.function_load_ms
        + timings.dependencies_ms
        + timings.execution_ms;
    // What is left is the way back: reading the output, the agent's report,
    // the stream, and recording the result.
    timings.result_return_ms = (timings.total_ms - accounted).max(0.0);
    call.status = result.status;
    call.result_json = result.result_json;
    call.error = result.error;
    call.timings = Some(Timings { ..timings });
    call.node = node.to_string();
    call.spot = result.spot;
    call.finished_at_ms = finished as i64;
    call.logs_truncated = result.logs_truncated;
    let logs = CallLogs {
        logs: result.logs,
        truncated: result.logs_truncated,
    };
    (call, logs)
}

/// Records a final call and its logs in one etcd transaction, retrying
/// while etcd is unreachable, then tells the waiters.
async fn write_final(store: &Store, watch: &CallWatch, call: Call, logs: CallLogs) {
    let items = vec![
        (Kind::Call, call.id.clone(), call.encode_to_vec()),
        (Kind::Logs, call.id.clone(), logs.encode_to_vec()),
    ];
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        match store.put_many(items.clone()).await {
            Ok(()) => break,
            Err(e) => {
                warn!(attempt, error = %e, "recording the call's result failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    info!(status = ?call.status(), "call finished");
    watch.publish(&call);
}
