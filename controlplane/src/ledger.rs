//! The leader's call ledger: which calls it holds, where each one runs,
//! which agent session may report its outcome, and when it is over
//! whatever that agent does. Pure: events and the wall clock come in (epoch
//! ms, so that a call adopted at takeover keeps the deadline its record
//! implies), [`Effect`]s go out for the broker loop to carry out (persist,
//! publish, confirm, enqueue). Tested below with a simulated clock.
//!
//! Rules it keeps:
//! - A call is dispatched to one agent *session* (the live stream of its
//!   node at that moment). Its result, or a refusal, is accepted only from
//!   that session; a new session of the same node takes the node's calls
//!   over when it says hello (the agent lists the calls it runs or holds
//!   results for, and sends those results again on the new stream). A
//!   result from anyone else is refused, never recorded.
//! - Every running call ends by its deadline: dispatch + the function's
//!   timeout + [`CallSettings::deadline_grace`] (+ the load allowance when
//!   the spot must load the runtime or the function first). Then it is
//!   recorded TIMEOUT; its spot stays busy in the policy's view until the
//!   agent reports it, and a late result is ignored but confirmed (so the
//!   agent stops sending it).
//! - A call whose node is gone past `node_lost_after` (or came back without
//!   it) is lost: run again if its function is idempotent and retries are
//!   left, otherwise FAILED `node_lost`.
//! - A call runs once: a submit or requeue of a call already held, already
//!   running on an agent, or already ended here is ignored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use faas_broker::{FunctionRef, SpotId};
use faas_proto::v1::{
    CallAssignment, CallError, CallLogs, CallResult, CallStatus, Function, FunctionBundle, Runtime,
    RuntimeBundle, Timings,
};

pub use faas_proto::v1::Call;

/// Wall-clock time, epoch milliseconds.
pub type Ms = i64;

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
    /// `secrets`: the values of the function's secrets (see
    /// `crate::secrets`), in its references' order.
    pub fn new(
        runtime: Runtime,
        function: Function,
        registry_host: &str,
        secrets: Vec<faas_proto::v1::SecretValue>,
    ) -> CallBundle {
        // Known to the broker and the agents by its key: two namespaces'
        // functions of one name never share a preload.
        let key = function.key();
        let namespace = function.namespace_name().to_string();
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
                package_repository: format!("{registry_host}/faas/functions/{key}"),
                name: key,
                version: function.version,
                handler: function.handler,
                package_digest: function.package_digest,
                memory_bytes: function.memory_bytes,
                timeout_ms: function.timeout_ms,
                env: function.env,
                secrets,
                network: function.network,
                tmp_bytes: function.tmp_bytes,
                layers: function
                    .layers
                    .into_iter()
                    .map(|l| faas_proto::v1::LayerMount {
                        repository: format!(
                            "{registry_host}/{}",
                            crate::registry::layer_repository(&namespace, &l.name)
                        ),
                        digest: l.digest,
                        directories: l.directories,
                    })
                    .collect(),
            },
        }
    }

    /// An adopted call whose function changed since has no bundle to run
    /// it again with.
    fn runnable(&self) -> bool {
        !self.function.name.is_empty()
    }

    fn function_ref(&self) -> FunctionRef {
        FunctionRef {
            name: self.function.name.clone(),
            version: self.function.version,
            runtime: self.runtime.name.clone(),
        }
    }
}

/// How the leader resolves calls whose node is lost or silent.
#[derive(Clone, Debug)]
pub struct CallSettings {
    /// How long a node may stay away before the calls it ran are lost.
    pub node_lost_after: Duration,
    /// Runs again of an idempotent function's call lost with its node.
    pub idempotent_retries: u32,
    /// How long past its function's timeout a running call may stay
    /// without an outcome before it is recorded TIMEOUT. Covers the
    /// agent's own kill grace (5 s) and the way back of its report.
    pub deadline_grace: Duration,
    /// Added to the deadline of a call whose spot must load its runtime or
    /// function first (image pull, package fetch): the agent starts the
    /// function's timeout only once its container runs.
    pub load_allowance: Duration,
}

/// The agent's kill grace (agent/src/spot.rs) plus 5 s for its report.
pub const DEFAULT_DEADLINE_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_LOAD_ALLOWANCE: Duration = Duration::from_secs(30);

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            node_lost_after: Duration::from_secs(3),
            idempotent_retries: 2,
            deadline_grace: DEFAULT_DEADLINE_GRACE,
            load_allowance: DEFAULT_LOAD_ALLOWANCE,
        }
    }
}

/// One agent stream: the node it speaks for and its id (unique within
/// this control-plane process).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Session {
    pub node: String,
    pub id: u64,
}

/// How a dispatched call starts on its spot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The spot loads the runtime and/or the function first.
    Loading,
    /// The function is preloaded: the run starts at once.
    Preloaded,
}

/// What the broker loop must do.
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// Give the call to the policy's queue.
    Enqueue {
        call_id: String,
        function: FunctionRef,
    },
    /// Take the call out of the policy's queue: it runs already.
    Withdraw(String),
    /// Tell the call's watchers its new (non-final) state.
    Publish(Box<Call>),
    /// Record the call RUNNING over its record at `version` only.
    RecordRunning { call: Box<Call>, version: i64 },
    /// Record the final call and its logs, publish it, then confirm to the
    /// session that sent the result, if any.
    Persist {
        call: Box<Call>,
        logs: CallLogs,
        confirm: Option<Session>,
    },
    /// A result for a call this leader does not hold, that its session
    /// listed in its hello (handed out by an earlier leader, perhaps
    /// recorded already): record it unless the stored call is final, then
    /// confirm.
    RecordUnlessFinal {
        result: Box<CallResult>,
        from: Session,
    },
    /// Tell the agent its result is recorded (it stops sending it).
    Confirm { to: Session, call_id: String },
    /// Tell the agent to kill the call's container: the call is recorded
    /// CANCELLED (its result will be confirmed, not recorded).
    Kill { to: Session, call_id: String },
}

/// Why a call is cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// A user asked (CancelCall).
    Requested,
    /// Its function was deleted while it waited.
    FunctionDeleted,
}

impl CancelReason {
    /// The record's `error.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Requested => "cancelled",
            CancelReason::FunctionDeleted => "function_deleted",
        }
    }
}

/// Why a result was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The call runs under another session (or node).
    NotOwner { owner: Option<Session> },
    /// The call is queued here, not running anywhere.
    NotRunning,
    /// Not a call this leader holds, ended, or was told about.
    Unknown,
}

/// What a result came to.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Recorded(Vec<Effect>),
    /// A result for a call already ended here: not recorded, confirmed.
    Late(Vec<Effect>),
    Refused(Refusal),
}

/// What a spot is given for a dispatched call.
#[derive(Debug)]
pub struct Assignment {
    pub runtime: RuntimeBundle,
    pub function: FunctionBundle,
    pub call: CallAssignment,
}

/// How long after a node's return the results it held may still arrive
/// (they are sent right after its hello; a result leaving the agent as it
/// says hello is in neither list).
pub const RESULT_BACKLOG_GRACE: Ms = 2_000;
/// How long a call an agent reported running, unknown to this leader, is
/// remembered (it may be handed over by the takeover a moment later).
const REPORTED_MEMORY: Ms = 60_000;
/// How long a call recorded here is remembered: a duplicate of its result
/// (sent again on a new session) is confirmed without a write.
const RECORDED_MEMORY: Ms = 120_000;
/// How long a call ended here without its agent (timeout, lost) is
/// remembered: its agent may come back much later with the result.
const ABANDONED_MEMORY: Ms = 3_600_000;

#[derive(Debug)]
struct Running {
    /// The session that may report it; None for a call adopted at takeover
    /// until its node says hello.
    owner: Option<Session>,
    node: String,
    queue_ms: f64,
    deadline: Ms,
    /// Set while the call's node is gone: past `node_lost_after` it is lost.
    orphaned_since: Option<Ms>,
    /// Set when the node came back without the call among its running
    /// ones: its result may still be on its way until then.
    lost_after: Option<Ms>,
    /// Set with `lost_after` when the node came back as the very agent
    /// process the call was handed to: that process lists every operation
    /// it received until its result is confirmed, so a call it does not
    /// list never reached it (the leader died, or the stream broke, with
    /// the operation still on its way) and is queued again, not lost.
    never_received: bool,
}

#[derive(Debug)]
struct Entry {
    call: Call,
    bundle: Arc<CallBundle>,
    accepted_at_ms: f64,
    /// None while queued.
    running: Option<Running>,
    /// Version of the call's etcd record, when known: the RUNNING record is
    /// written over exactly that version (never over a final one).
    record_version: Option<i64>,
    /// Where the call stands towards its namespace's concurrency bound.
    gate: Gate,
}

/// A call against its namespace's `max_concurrent_calls`: counted while the
/// policy holds it or it runs; held back (QUEUED, the policy unaware) while
/// the namespace has its bound of counted calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Counted,
    Held,
}

/// The per-namespace concurrency bounds, and who waits for a place.
#[derive(Debug, Default)]
struct Tenancy {
    /// Namespaces with a bound (0 is none).
    limits: HashMap<String, u64>,
    /// Counted calls per namespace.
    counted: HashMap<String, u64>,
    /// Held calls per namespace, oldest first.
    held: HashMap<String, std::collections::VecDeque<String>>,
}

impl Tenancy {
    fn has_room(&self, namespace: &str) -> bool {
        match self.limits.get(namespace) {
            Some(&limit) if limit > 0 => self.counted.get(namespace).copied().unwrap_or(0) < limit,
            _ => true,
        }
    }

    fn count(&mut self, namespace: &str) {
        *self.counted.entry(namespace.to_string()).or_default() += 1;
    }

    fn uncount(&mut self, namespace: &str) {
        if let Some(n) = self.counted.get_mut(namespace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counted.remove(namespace);
            }
        }
    }

    fn unhold(&mut self, namespace: &str, id: &str) {
        if let Some(queue) = self.held.get_mut(namespace) {
            queue.retain(|h| h != id);
            if queue.is_empty() {
                self.held.remove(namespace);
            }
        }
    }
}

#[derive(Debug)]
struct Ended {
    node: String,
    until: Ms,
    /// Cancelled while it ran: if its node still lists it (back from
    /// an outage), it is told again to kill it.
    cancelled: bool,
}

pub struct Ledger {
    settings: CallSettings,
    policy: &'static str,
    calls: HashMap<String, Entry>,
    /// The live session of each connected node.
    sessions: HashMap<String, u64>,
    /// The agent process behind each connected node's session (see
    /// `Call.agent_incarnation`).
    incarnations: HashMap<String, String>,
    /// Calls a session listed in its hello that this leader did not hold.
    reported: HashMap<String, (Session, Ms)>,
    /// Calls ended here, and on which node they ran.
    ended: HashMap<String, Ended>,
    tenancy: Tenancy,
    out: Vec<Effect>,
}

fn ms(d: Duration) -> Ms {
    d.as_millis().min(i64::MAX as u128) as Ms
}

impl Ledger {
    pub fn new(settings: CallSettings, policy: &'static str) -> Ledger {
        Ledger {
            settings,
            policy,
            calls: HashMap::new(),
            sessions: HashMap::new(),
            incarnations: HashMap::new(),
            reported: HashMap::new(),
            ended: HashMap::new(),
            tenancy: Tenancy::default(),
            out: Vec::new(),
        }
    }

    /// Sets a namespace's bound on calls running at once (0: none); calls
    /// held back for it go to the policy as far as the new bound allows.
    pub fn set_concurrency(&mut self, namespace: &str, limit: u64) -> Vec<Effect> {
        if limit == 0 {
            self.tenancy.limits.remove(namespace);
        } else {
            self.tenancy.limits.insert(namespace.to_string(), limit);
        }
        self.release(namespace);
        self.take()
    }

    /// Hands held calls of `namespace` to the policy while it has room.
    fn release(&mut self, namespace: &str) {
        while self.tenancy.has_room(namespace) {
            let Some(id) = self
                .tenancy
                .held
                .get_mut(namespace)
                .and_then(|q| q.pop_front())
            else {
                break;
            };
            let Some(entry) = self.calls.get_mut(&id).filter(|e| e.gate == Gate::Held) else {
                continue;
            };
            entry.gate = Gate::Counted;
            self.tenancy.count(namespace);
            self.out.push(Effect::Enqueue {
                call_id: id,
                function: entry.bundle.function_ref(),
            });
        }
        if self
            .tenancy
            .held
            .get(namespace)
            .is_some_and(|q| q.is_empty())
        {
            self.tenancy.held.remove(namespace);
        }
    }

    /// A call left the ledger for good: its place goes to the next held
    /// call of its namespace.
    fn ended_entry(&mut self, entry: &Entry) {
        let namespace = entry.call.namespace_name().to_string();
        match entry.gate {
            Gate::Counted => {
                self.tenancy.uncount(&namespace);
                self.release(&namespace);
            }
            Gate::Held => self.tenancy.unhold(&namespace, &entry.call.id),
        }
    }

    /// Calls of `namespace` held back by its concurrency bound.
    pub fn held(&self, namespace: &str) -> usize {
        self.tenancy.held.get(namespace).map_or(0, |q| q.len())
    }

    /// Calls of every namespace held back by their concurrency bounds.
    pub fn held_total(&self) -> usize {
        self.tenancy.held.values().map(|q| q.len()).sum()
    }

    fn take(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// The live record of a call held here (queued or running).
    pub fn live_call(&self, id: &str) -> Option<&Call> {
        self.calls.get(id).map(|e| &e.call)
    }

    /// Calls held here.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Whether `session` is its node's live stream.
    pub fn is_live(&self, session: &Session) -> bool {
        self.sessions.get(&session.node) == Some(&session.id)
    }

    fn deadline(&self, start: Ms, bundle: &CallBundle, start_kind: Start) -> Ms {
        let load = match start_kind {
            Start::Loading => ms(self.settings.load_allowance),
            Start::Preloaded => 0,
        };
        start
            .saturating_add(bundle.function.timeout_ms.min(i64::MAX as u64) as Ms)
            .saturating_add(ms(self.settings.deadline_grace))
            .saturating_add(load)
    }

    /// A call accepted (or found QUEUED at takeover): queued for a spot,
    /// unless it runs already or was held or ended here.
    pub fn submitted(
        &mut self,
        call: Call,
        bundle: Arc<CallBundle>,
        accepted_at_ms: f64,
        now: Ms,
    ) -> Vec<Effect> {
        if self.calls.contains_key(&call.id) || self.ended.contains_key(&call.id) {
            // Handed over twice (accepted while a takeover listed the
            // queued calls), or ended already: it runs once.
            return Vec::new();
        }
        let id = call.id.clone();
        let namespace = call.namespace_name().to_string();
        let mut entry = Entry {
            // A new call's record was written once, as QUEUED.
            record_version: (call.attempts == 0).then_some(1),
            call,
            bundle,
            accepted_at_ms,
            running: None,
            gate: Gate::Counted,
        };
        if let Some((session, _)) = self.reported.remove(&id) {
            // Recorded QUEUED, but its agent runs it (a leader died between
            // handing it out and recording that).
            tracing::info!(call_id = %id, node = %session.node, "call already running on its node; not run again");
            self.mark_running(&mut entry, session, now);
            self.tenancy.count(&namespace);
            self.calls.insert(id, entry);
            return Vec::new();
        }
        if !self.tenancy.has_room(&namespace) {
            tracing::debug!(call_id = %id, %namespace, "held back: the namespace runs its bound of calls");
            entry.gate = Gate::Held;
            self.tenancy
                .held
                .entry(namespace)
                .or_default()
                .push_back(id.clone());
            self.calls.insert(id, entry);
            return Vec::new();
        }
        self.tenancy.count(&namespace);
        let function = entry.bundle.function_ref();
        self.calls.insert(id.clone(), entry);
        self.out.push(Effect::Enqueue {
            call_id: id,
            function,
        });
        self.take()
    }

    /// A call recorded RUNNING by an earlier leader: its result is awaited
    /// from its node, by the deadline its record's start implies.
    pub fn adopted(&mut self, call: Call, bundle: Arc<CallBundle>, now: Ms) -> Vec<Effect> {
        if self.calls.contains_key(&call.id) || self.ended.contains_key(&call.id) {
            return Vec::new();
        }
        let queue_ms = call.timings.as_ref().map(|t| t.queue_ms).unwrap_or(0.0);
        let started = call.created_at_ms.saturating_add(queue_ms as Ms);
        // How it started is not recorded: the load allowance is granted.
        let deadline = self.deadline(started, &bundle, Start::Loading);
        let node = call.node.clone();
        let live = self.sessions.get(&node).map(|&id| Session {
            node: node.clone(),
            id,
        });
        // Its node may have listed it in a hello already.
        let reported = self
            .reported
            .remove(&call.id)
            .filter(|(s, _)| s.node == node)
            .map(|(s, _)| s);
        let unlisted = live.is_some() && reported.is_none();
        let never_received = unlisted && self.handed_to_live_process(&call);
        let running = Running {
            owner: reported.clone().or(live.clone()),
            node,
            queue_ms,
            deadline,
            orphaned_since: live.is_none().then_some(now),
            lost_after: unlisted.then_some(now + RESULT_BACKLOG_GRACE),
            never_received,
        };
        let accepted_at_ms = call.created_at_ms as f64;
        self.tenancy.count(call.namespace_name());
        self.calls.insert(
            call.id.clone(),
            Entry {
                call,
                bundle,
                accepted_at_ms,
                running: Some(running),
                record_version: None,
                gate: Gate::Counted,
            },
        );
        Vec::new()
    }

    /// The policy handed a queued call to `spot`: what to send there, or
    /// None if the call cannot go (unknown, not queued, or the node has no
    /// live session: then it is queued again).
    pub fn dispatch(
        &mut self,
        call_id: &str,
        spot: &SpotId,
        start: Start,
        now_precise: f64,
    ) -> (Option<Assignment>, Vec<Effect>) {
        let now = now_precise as Ms;
        let Some(session) = self.sessions.get(&spot.node).map(|&id| Session {
            node: spot.node.clone(),
            id,
        }) else {
            if let Some(entry) = self.calls.get(call_id).filter(|e| e.running.is_none()) {
                self.out.push(Effect::Enqueue {
                    call_id: call_id.to_string(),
                    function: entry.bundle.function_ref(),
                });
            }
            return (None, self.take());
        };
        let Some(entry) = self.calls.get(call_id) else {
            return (None, Vec::new());
        };
        if entry.running.is_some() {
            return (None, Vec::new());
        }
        let deadline = self.deadline(now, &entry.bundle, start);
        let entry = self.calls.get_mut(call_id).expect("checked above");
        let queue_ms = (now_precise - entry.accepted_at_ms).max(0.0);
        entry.running = Some(Running {
            owner: Some(session),
            node: spot.node.clone(),
            queue_ms,
            deadline,
            orphaned_since: None,
            lost_after: None,
            never_received: false,
        });
        let call = &mut entry.call;
        call.status = CallStatus::Running as i32;
        call.policy = self.policy.to_string();
        call.node = spot.node.clone();
        call.agent_incarnation = self
            .incarnations
            .get(&spot.node)
            .cloned()
            .unwrap_or_default();
        call.spot = spot.index;
        call.attempts = call.attempts.max(1);
        // In the RUNNING record, so that a leader taking over knows when it
        // started (its deadline follows).
        call.timings = Some(Timings {
            queue_ms,
            ..Default::default()
        });
        let assignment = Assignment {
            runtime: entry.bundle.runtime.clone(),
            function: entry.bundle.function.clone(),
            call: CallAssignment {
                call_id: call.id.clone(),
                params_json: call.params_json.clone(),
                accepted_at_ms: call.created_at_ms,
                queue_ms,
                // Stamped on the way out, by the node's session.
                dispatch_proof: String::new(),
                traceparent: call.traceparent.clone(),
                client_context: call.client_context.clone(),
            },
        };
        self.out.push(Effect::Publish(Box::new(call.clone())));
        // Recorded so that a leader taking over waits for the result
        // instead of running the call again.
        if let Some(version) = entry.record_version.take() {
            self.out.push(Effect::RecordRunning {
                call: Box::new(call.clone()),
                version,
            });
        }
        (Some(assignment), self.take())
    }

    /// An agent said hello: its session replaces any earlier one of its
    /// node and takes over the node's calls; the calls it lists run there.
    /// A call not recorded RUNNING on the node (still QUEUED, or not known
    /// yet) is taken as running there only if `proven` (the node showed
    /// its dispatch proof): a node cannot claim a call never handed to it.
    pub fn connected(
        &mut self,
        session: Session,
        running: Vec<String>,
        proven: &HashSet<String>,
        incarnation: &str,
        now: Ms,
    ) -> Vec<Effect> {
        let node = session.node.clone();
        self.sessions.insert(node.clone(), session.id);
        self.incarnations
            .insert(node.clone(), incarnation.to_string());
        for (id, entry) in self.calls.iter_mut() {
            let Some(run) = entry.running.as_mut().filter(|r| r.node == node) else {
                continue;
            };
            run.owner = Some(session.clone());
            run.orphaned_since = None;
            // Still running, or finished with its result held (sent right
            // after the hello), or gone with the agent's restart, or never
            // received by this very process.
            if !running.contains(id) {
                run.lost_after = Some(now + RESULT_BACKLOG_GRACE);
                run.never_received =
                    !incarnation.is_empty() && entry.call.agent_incarnation == incarnation;
            }
        }
        for id in running {
            let Some(mut entry) = self.calls.remove(&id) else {
                if self
                    .ended
                    .get(&id)
                    .is_some_and(|e| e.cancelled && e.node == node)
                {
                    // Cancelled while its node was away: kill it now.
                    self.out.push(Effect::Kill {
                        to: session.clone(),
                        call_id: id,
                    });
                    continue;
                }
                if !self.ended.contains_key(&id) && proven.contains(&id) {
                    self.reported.insert(id, (session.clone(), now));
                }
                continue;
            };
            if entry.running.is_none() && !proven.contains(&id) {
                tracing::warn!(call_id = %id, %node, "hello claims a queued call without its dispatch proof; ignored");
            } else if entry.running.is_none() {
                // Recorded QUEUED: the leader that handed it out died
                // before recording RUNNING.
                tracing::info!(call_id = %id, %node, "queued call already running on its node; not run again");
                self.out.push(Effect::Withdraw(id.clone()));
                if entry.gate == Gate::Held {
                    let namespace = entry.call.namespace_name().to_string();
                    self.tenancy.unhold(&namespace, &id);
                    self.tenancy.count(&namespace);
                    entry.gate = Gate::Counted;
                }
                self.mark_running(&mut entry, session.clone(), now);
            }
            self.calls.insert(id, entry);
        }
        self.take()
    }

    /// A session ended; if it was its node's live one, the node's calls are
    /// orphaned (they may still finish: a broken stream, not a dead node).
    pub fn disconnected(&mut self, session: &Session, now: Ms) {
        if !self.is_live(session) {
            return;
        }
        self.sessions.remove(&session.node);
        self.incarnations.remove(&session.node);
        for entry in self.calls.values_mut() {
            if let Some(run) = entry.running.as_mut().filter(|r| r.node == session.node) {
                run.orphaned_since.get_or_insert(now);
            }
        }
    }

    fn check_owner(&self, id: &str, from: &Session) -> Result<(), Refusal> {
        match self.calls.get(id) {
            Some(Entry {
                running: Some(run), ..
            }) if run.owner.as_ref() == Some(from) => Ok(()),
            Some(Entry {
                running: Some(run), ..
            }) => Err(Refusal::NotOwner {
                owner: run.owner.clone(),
            }),
            Some(_) => Err(Refusal::NotRunning),
            None => Err(Refusal::Unknown),
        }
    }

    /// A call's result from an agent session.
    pub fn result(&mut self, from: &Session, result: CallResult, now_precise: f64) -> Outcome {
        let now = now_precise as Ms;
        let id = result.call_id.clone();
        match self.check_owner(&id, from) {
            Ok(()) => {}
            Err(Refusal::Unknown) => {
                if self.ended.get(&id).is_some_and(|e| e.node == from.node) {
                    // Ended here already (recorded, timed out or lost): a
                    // duplicate, or a result after the deadline.
                    self.out.push(Effect::Confirm {
                        to: from.clone(),
                        call_id: id,
                    });
                    return Outcome::Late(self.take());
                }
                if self.reported.get(&id).is_some_and(|(s, _)| s == from) {
                    self.reported.remove(&id);
                    // Not run again if a takeover's requeue hands it over.
                    self.remember_ended(&id, &from.node, now + RECORDED_MEMORY);
                    self.out.push(Effect::RecordUnlessFinal {
                        result: Box::new(result),
                        from: from.clone(),
                    });
                    return Outcome::Recorded(self.take());
                }
                return Outcome::Refused(Refusal::Unknown);
            }
            Err(refusal) => return Outcome::Refused(refusal),
        }
        let entry = self.calls.remove(&id).expect("owner checked");
        self.ended_entry(&entry);
        let run = entry.running.expect("owner checked");
        let (call, logs) = finish(
            entry.call,
            &from.node,
            result,
            entry.accepted_at_ms,
            run.queue_ms,
            now_precise,
        );
        self.remember_ended(&id, &from.node, now + RECORDED_MEMORY);
        self.out.push(Effect::Persist {
            call: Box::new(call),
            logs,
            confirm: Some(from.clone()),
        });
        Outcome::Recorded(self.take())
    }

    /// The agent did not start an operation (it was draining): its call
    /// never ran and is queued again. Only its owner may say so.
    pub fn refused(&mut self, from: &Session, call_id: &str) -> Result<Vec<Effect>, Refusal> {
        self.check_owner(call_id, from)?;
        let entry = self.calls.remove(call_id).expect("owner checked");
        tracing::info!(%call_id, node = %from.node, "call refused by a draining node; placing it elsewhere");
        self.run_again(entry);
        Ok(self.take())
    }

    /// Time passes: lost calls are run again or failed, calls past their
    /// deadline end TIMEOUT, memories fade.
    pub fn tick(&mut self, now: Ms) -> Vec<Effect> {
        self.reported
            .retain(|_, (_, at)| now - *at < REPORTED_MEMORY);
        self.ended.retain(|_, e| now < e.until);
        let grace = ms(self.settings.node_lost_after);
        let mut lost = Vec::new();
        let mut late = Vec::new();
        for (id, entry) in &self.calls {
            let Some(run) = &entry.running else { continue };
            if run.orphaned_since.is_some_and(|since| now - since > grace)
                || run.lost_after.is_some_and(|at| now > at)
            {
                lost.push(id.clone());
            } else if now > run.deadline {
                late.push(id.clone());
            }
        }
        for id in lost {
            let mut entry = self.calls.remove(&id).expect("listed above");
            let run = entry.running.take();
            let never_received = run.as_ref().is_some_and(|r| r.never_received);
            let node = run.map(|r| r.node).unwrap_or_default();
            if never_received && entry.bundle.runnable() {
                // Not an attempt: nothing of it ran.
                tracing::info!(call_id = %id, %node, "its node never received the call; queued again");
                self.run_again(entry);
                continue;
            }
            let attempts = entry.call.attempts.max(1);
            if entry.bundle.idempotent
                && entry.bundle.runnable()
                && attempts <= self.settings.idempotent_retries
            {
                tracing::warn!(call_id = %id, %node, attempts, "call lost with its node; running it again (idempotent function)");
                entry.call.attempts = attempts + 1;
                self.run_again(entry);
                continue;
            }
            tracing::warn!(call_id = %id, %node, "call lost with its node");
            self.ended_entry(&entry);
            let mut call = entry.call;
            call.status = CallStatus::Failed as i32;
            call.error = Some(CallError {
                reason: "node_lost".into(),
                message: format!("node {node} was lost while the call ran"),
                log_tail: String::new(),
            });
            call.finished_at_ms = now;
            self.remember_ended(&id, &node, now + ABANDONED_MEMORY);
            self.out.push(Effect::Persist {
                call: Box::new(call),
                logs: CallLogs::default(),
                confirm: None,
            });
        }
        for id in late {
            let entry = self.calls.remove(&id).expect("listed above");
            self.ended_entry(&entry);
            let run = entry.running.expect("listed as running");
            let timeout = Duration::from_millis(entry.bundle.function.timeout_ms);
            tracing::warn!(call_id = %id, node = %run.node, "no outcome from the call's node by its deadline; recorded as timed out");
            let mut call = entry.call;
            call.status = CallStatus::Timeout as i32;
            call.error = Some(CallError {
                reason: "timeout".into(),
                message: format!(
                    "node {} did not report the call's outcome in time (its timeout of {} plus {} grace)",
                    run.node,
                    humantime::format_duration(timeout),
                    humantime::format_duration(self.settings.deadline_grace),
                ),
                log_tail: String::new(),
            });
            call.finished_at_ms = now;
            let mut timings = call.timings.take().unwrap_or_default();
            timings.queue_ms = run.queue_ms;
            timings.total_ms = (now as f64 - entry.accepted_at_ms).max(0.0);
            call.timings = Some(timings);
            self.remember_ended(&id, &run.node, now + ABANDONED_MEMORY);
            self.out.push(Effect::Persist {
                call: Box::new(call),
                logs: CallLogs::default(),
                confirm: None,
            });
        }
        self.take()
    }

    fn remember_ended(&mut self, id: &str, node: &str, until: Ms) {
        self.ended.insert(
            id.to_string(),
            Ended {
                node: node.to_string(),
                until,
                cancelled: false,
            },
        );
    }

    /// Ends a call held here (queued or running) as CANCELLED: recorded at
    /// once; queued, it leaves the policy's queue; running, its agent is
    /// told to kill it (its spot stays busy in the policy's view until the
    /// agent reports it free, and its result is confirmed, not recorded).
    /// None if the call is not held here (ended, or unknown).
    pub fn cancel(
        &mut self,
        id: &str,
        reason: CancelReason,
        message: String,
        now_precise: f64,
    ) -> Option<Vec<Effect>> {
        let now = now_precise as Ms;
        let entry = self.calls.remove(id)?;
        self.ended_entry(&entry);
        let mut call = entry.call;
        let mut timings = call.timings.take().unwrap_or_default();
        match entry.running {
            None => {
                tracing::info!(call_id = %id, reason = reason.as_str(), "queued call cancelled");
                self.out.push(Effect::Withdraw(id.to_string()));
                timings.queue_ms = (now_precise - entry.accepted_at_ms).max(0.0);
                call.node.clear();
                // Never ran: nobody may report it.
                self.remember_ended(id, "", now + RECORDED_MEMORY);
            }
            Some(run) => {
                tracing::info!(call_id = %id, node = %run.node, reason = reason.as_str(), "running call cancelled; killing it");
                timings.queue_ms = run.queue_ms;
                // A node away is told when it says hello again.
                if let Some(owner) = run.owner.filter(|o| self.is_live(o)) {
                    self.out.push(Effect::Kill {
                        to: owner,
                        call_id: id.to_string(),
                    });
                }
                self.remember_ended(id, &run.node, now + ABANDONED_MEMORY);
                if let Some(ended) = self.ended.get_mut(id) {
                    ended.cancelled = true;
                }
            }
        }
        timings.total_ms = (now_precise - entry.accepted_at_ms).max(0.0);
        call.timings = Some(timings);
        call.status = CallStatus::Cancelled as i32;
        call.error = Some(CallError {
            reason: reason.as_str().into(),
            message,
            log_tail: String::new(),
        });
        call.finished_at_ms = now;
        self.out.push(Effect::Persist {
            call: Box::new(call),
            logs: CallLogs::default(),
            confirm: None,
        });
        Some(self.take())
    }

    /// Cancels the queued calls of a function (its key) that was deleted:
    /// they would run a function that no longer exists. Calls running
    /// already finish.
    pub fn function_deleted(&mut self, key: &str, now_precise: f64) -> Vec<Effect> {
        let queued: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, e)| e.running.is_none() && e.call.function_key() == key)
            .map(|(id, _)| id.clone())
            .collect();
        let mut effects = Vec::new();
        for id in queued {
            let message = format!("function {key} was deleted before the call ran");
            effects.extend(
                self.cancel(&id, CancelReason::FunctionDeleted, message, now_precise)
                    .unwrap_or_default(),
            );
        }
        effects
    }

    /// Marks a call as running on `session`'s node (its spot unknown), so
    /// that its result is awaited from there.
    fn mark_running(&self, entry: &mut Entry, session: Session, now: Ms) {
        let call = &mut entry.call;
        call.status = CallStatus::Running as i32;
        call.node = session.node.clone();
        call.agent_incarnation = self
            .incarnations
            .get(&session.node)
            .cloned()
            .unwrap_or_default();
        call.attempts = call.attempts.max(1);
        let queue_ms = call.timings.as_ref().map(|t| t.queue_ms).unwrap_or(0.0);
        // When it started is unknown: at the latest now.
        let deadline = self.deadline(now, &entry.bundle, Start::Loading);
        entry.running = Some(Running {
            node: session.node.clone(),
            owner: Some(session),
            queue_ms,
            deadline,
            orphaned_since: None,
            lost_after: None,
            never_received: false,
        });
        entry.record_version = None;
    }

    /// Whether `call` was handed to the agent process now connected for
    /// its node.
    fn handed_to_live_process(&self, call: &Call) -> bool {
        !call.agent_incarnation.is_empty()
            && self.sessions.contains_key(&call.node)
            && self.incarnations.get(&call.node) == Some(&call.agent_incarnation)
    }

    /// Queues a call again (it never ran, or it may run twice); its record
    /// keeps what it says until the outcome.
    fn run_again(&mut self, mut entry: Entry) {
        let id = entry.call.id.clone();
        entry.call.status = CallStatus::Queued as i32;
        entry.call.node.clear();
        entry.call.agent_incarnation.clear();
        entry.running = None;
        // Its record may say RUNNING on the old node; a takeover adopts it
        // from there and resolves it the same way.
        entry.record_version = None;
        self.out.push(Effect::Publish(Box::new(entry.call.clone())));
        self.out.push(Effect::Enqueue {
            call_id: id.clone(),
            function: entry.bundle.function_ref(),
        });
        self.calls.insert(id, entry);
    }
}

/// Whether `id` is a call id as this platform makes them: a UUID in its
/// canonical hyphenated lower-case form. Checked on everything that
/// reaches the leader from agents and etcd before it becomes a key or goes
/// out on an agent stream.
pub use faas_proto::rules::is_call_id;

/// Builds the final call record from the agent's result.
fn finish(
    mut call: Call,
    node: &str,
    result: CallResult,
    accepted_at_ms: f64,
    queue_ms: f64,
    finished: f64,
) -> (Call, CallLogs) {
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
    call.result_base64 = result.result_base64;
    call.error = result.error;
    call.timings = Some(timings);
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

/// Builds the final record of a stored call from a result that reached a
/// leader that does not hold the call (see [`Effect::RecordUnlessFinal`]).
pub fn finish_stored(call: Call, node: &str, result: CallResult, now: f64) -> (Call, CallLogs) {
    let queue_ms = result.timings.as_ref().map(|t| t.queue_ms).unwrap_or(0.0);
    let accepted = call.created_at_ms as f64;
    finish(call, node, result, accepted, queue_ms, now)
}

#[cfg(test)]
mod tests {
    //! The ledger on a simulated clock: agents are played by the test, the
    //! effects are what the broker loop would carry out.

    use super::*;

    const SEC: Ms = 1_000;

    /// A legit agent's hello: it holds the proof of every call it lists.
    fn connect(l: &mut Ledger, s: Session, running: Vec<String>, now: Ms) -> Vec<Effect> {
        let proven = running.iter().cloned().collect();
        l.connected(s, running, &proven, "", now)
    }

    fn id(n: u32) -> String {
        format!("0190a1b2-c3d4-7e5f-8a9b-{n:012x}")
    }

    fn bundle(timeout_ms: u64, idempotent: bool) -> Arc<CallBundle> {
        Arc::new(CallBundle {
            runtime: RuntimeBundle {
                name: "python3".into(),
                ..Default::default()
            },
            function: FunctionBundle {
                name: "f".into(),
                version: 1,
                timeout_ms,
                ..Default::default()
            },
            idempotent,
        })
    }

    fn call(n: u32) -> Call {
        Call {
            id: id(n),
            function: "f".into(),
            function_version: 1,
            status: CallStatus::Queued as i32,
            created_at_ms: 0,
            ..Default::default()
        }
    }

    fn session(node: &str, id: u64) -> Session {
        Session {
            node: node.into(),
            id,
        }
    }

    fn spot(node: &str) -> SpotId {
        SpotId {
            node: node.into(),
            index: 0,
        }
    }

    fn result(n: u32) -> CallResult {
        CallResult {
            call_id: id(n),
            status: CallStatus::Succeeded as i32,
            result_json: "42".into(),
            logs: b"hello\n".to_vec(),
            ..Default::default()
        }
    }

    fn ledger() -> Ledger {
        Ledger::new(CallSettings::default(), "test")
    }

    /// A ledger with node `a` connected (session 1) and call 1 (2 s
    /// timeout) dispatched there, function preloaded, at t = 0.
    fn running(idempotent: bool) -> Ledger {
        let mut l = ledger();
        connect(&mut l, session("a", 1), vec![], 0);
        l.submitted(call(1), bundle(2_000, idempotent), 0.0, 0);
        let (sent, _) = l.dispatch(&id(1), &spot("a"), Start::Preloaded, 0.0);
        assert!(sent.is_some());
        l
    }

    fn persisted(effects: &[Effect]) -> Vec<&Call> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Persist { call, .. } => Some(&**call),
                _ => None,
            })
            .collect()
    }

    fn enqueued(effects: &[Effect]) -> Vec<&str> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Enqueue { call_id, .. } => Some(call_id.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_call_is_queued_once_and_dispatched_once() {
        let mut l = ledger();
        connect(&mut l, session("a", 1), vec![], 0);
        let first = l.submitted(call(1), bundle(2_000, false), 0.0, 0);
        assert_eq!(enqueued(&first), [id(1)]);
        assert!(l
            .submitted(call(1), bundle(2_000, false), 0.0, 0)
            .is_empty());
        let (sent, effects) = l.dispatch(&id(1), &spot("a"), Start::Loading, 7.5);
        let sent = sent.expect("dispatched");
        assert_eq!(sent.call.call_id, id(1));
        assert_eq!(sent.call.queue_ms, 7.5);
        assert!(matches!(&effects[0], Effect::Publish(c) if c.status() == CallStatus::Running));
        assert!(
            matches!(&effects[1], Effect::RecordRunning { call, version: 1 } if call.timings.as_ref().unwrap().queue_ms == 7.5),
            "the RUNNING record says when the call started: {effects:?}"
        );
        let (again, _) = l.dispatch(&id(1), &spot("a"), Start::Loading, 8.0);
        assert!(again.is_none(), "a running call is not dispatched twice");
    }

    #[test]
    fn a_cancelled_queued_call_never_runs() {
        let mut l = ledger();
        connect(&mut l, session("a", 1), vec![], 0);
        l.submitted(call(1), bundle(2_000, false), 0.0, 0);
        let effects = l
            .cancel(&id(1), CancelReason::Requested, "by alice".into(), 40.0)
            .expect("held here");
        assert!(matches!(&effects[0], Effect::Withdraw(c) if *c == id(1)));
        let recorded = persisted(&effects);
        assert_eq!(recorded[0].status(), CallStatus::Cancelled);
        let error = recorded[0].error.as_ref().unwrap();
        assert_eq!(
            (error.reason.as_str(), error.message.as_str()),
            ("cancelled", "by alice")
        );
        assert_eq!(recorded[0].timings.as_ref().unwrap().queue_ms, 40.0);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Kill { .. })));
        // The policy may still hand it out: it does not go.
        let (sent, _) = l.dispatch(&id(1), &spot("a"), Start::Preloaded, 41.0);
        assert!(sent.is_none(), "a cancelled call was dispatched");
        // Nobody may report it; a second cancel finds nothing to cancel.
        assert!(matches!(
            l.result(&session("a", 1), result(1), 50.0),
            Outcome::Refused(Refusal::Unknown)
        ));
        assert!(l
            .cancel(&id(1), CancelReason::Requested, String::new(), 60.0)
            .is_none());
    }

    #[test]
    fn a_cancelled_running_call_is_killed_and_its_late_result_only_confirmed() {
        let mut l = running(false);
        let effects = l
            .cancel(&id(1), CancelReason::Requested, String::new(), 500.0)
            .expect("held here");
        assert!(effects.iter().any(
            |e| matches!(e, Effect::Kill { to, call_id } if *to == session("a", 1) && *call_id == id(1))
        ));
        assert_eq!(persisted(&effects)[0].status(), CallStatus::Cancelled);
        assert!(l.tick(100_000).is_empty(), "no timeout after the cancel");
        match l.result(&session("a", 1), result(1), 600.0) {
            Outcome::Late(effects) => {
                assert!(persisted(&effects).is_empty(), "recorded over the cancel");
                assert!(matches!(&effects[0], Effect::Confirm { .. }));
            }
            other => panic!("expected a late result, got {other:?}"),
        }
    }

    #[test]
    fn a_node_back_with_a_call_cancelled_meanwhile_is_told_to_kill_it() {
        let mut l = running(false);
        l.disconnected(&session("a", 1), 100);
        let effects = l
            .cancel(&id(1), CancelReason::Requested, String::new(), 200.0)
            .unwrap();
        assert!(
            !effects.iter().any(|e| matches!(e, Effect::Kill { .. })),
            "no live session to tell"
        );
        let effects = l.connected(session("a", 2), vec![id(1)], &HashSet::new(), "", 300);
        assert!(effects.iter().any(
            |e| matches!(e, Effect::Kill { to, call_id } if *to == session("a", 2) && *call_id == id(1))
        ));
    }

    #[test]
    fn deleting_a_function_cancels_its_queued_calls_only() {
        let mut l = running(false);
        l.submitted(call(2), bundle(2_000, false), 0.0, 0);
        let other = Call {
            function: "g".into(),
            ..call(3)
        };
        l.submitted(other, bundle(2_000, false), 0.0, 0);
        let effects = l.function_deleted("f", 10.0);
        let ended = persisted(&effects);
        assert_eq!(ended.len(), 1, "{effects:?}");
        assert_eq!(ended[0].id, id(2));
        assert_eq!(ended[0].error.as_ref().unwrap().reason, "function_deleted");
        assert_eq!(l.live_call(&id(1)).unwrap().status(), CallStatus::Running);
        assert_eq!(l.live_call(&id(3)).unwrap().status(), CallStatus::Queued);
    }

    #[test]
    fn a_namespace_runs_at_most_its_bound_of_calls_at_once() {
        let mut l = ledger();
        connect(&mut l, session("a", 1), vec![], 0);
        assert!(l.set_concurrency("team-a", 2).is_empty());
        let in_team = |n| Call {
            namespace: "team-a".into(),
            ..call(n)
        };
        let mut given = Vec::new();
        for n in 1..=4 {
            let effects = l.submitted(in_team(n), bundle(60_000, false), 0.0, 0);
            given.extend(enqueued(&effects).into_iter().map(String::from));
        }
        assert_eq!(given, [id(1), id(2)], "two go to the policy");
        assert_eq!(l.held("team-a"), 2);
        // Other namespaces are not held back by team-a's bound.
        assert_eq!(
            enqueued(&l.submitted(call(9), bundle(60_000, false), 0.0, 0)),
            [id(9)]
        );
        // Call 1 runs and ends: call 3 takes its place, not before.
        let (sent, effects) = l.dispatch(&id(1), &spot("a"), Start::Preloaded, 1.0);
        assert!(sent.is_some());
        assert!(enqueued(&effects).is_empty());
        let Outcome::Recorded(effects) = l.result(&session("a", 1), result(1), 5.0) else {
            panic!("recorded");
        };
        assert_eq!(enqueued(&effects), [id(3)]);
        assert_eq!(l.held("team-a"), 1);
        // A raised bound lets the rest go at once; no bound, none held.
        assert_eq!(enqueued(&l.set_concurrency("team-a", 3)), [id(4)]);
        assert_eq!(l.held("team-a"), 0);
        l.set_concurrency("team-a", 0);
        assert_eq!(
            enqueued(&l.submitted(in_team(5), bundle(60_000, false), 0.0, 0)),
            [id(5)]
        );
    }

    #[test]
    fn a_held_call_ends_its_namespaces_wait_when_its_node_shows_it_running() {
        let mut l = ledger();
        l.set_concurrency("team-a", 1);
        let in_team = |n| Call {
            namespace: "team-a".into(),
            ..call(n)
        };
        l.submitted(in_team(1), bundle(60_000, false), 0.0, 0);
        l.submitted(in_team(2), bundle(60_000, false), 0.0, 0);
        assert_eq!(l.held("team-a"), 1);
        // A takeover: call 2 was in fact handed out by the last leader.
        let proven: HashSet<String> = [id(2)].into();
        l.connected(session("a", 1), vec![id(2)], &proven, "", 0);
        assert_eq!(l.held("team-a"), 0);
        assert_eq!(l.live_call(&id(2)).unwrap().status(), CallStatus::Running);
    }

    #[test]
    fn a_dispatch_to_a_node_without_a_session_queues_the_call_again() {
        let mut l = ledger();
        l.submitted(call(1), bundle(2_000, false), 0.0, 0);
        let (sent, effects) = l.dispatch(&id(1), &spot("gone"), Start::Loading, 1.0);
        assert!(sent.is_none());
        assert_eq!(enqueued(&effects), [id(1)]);
    }

    #[test]
    fn the_owners_result_is_recorded_and_confirmed_and_a_duplicate_only_confirmed() {
        let mut l = running(false);
        let Outcome::Recorded(effects) = l.result(&session("a", 1), result(1), 500.0) else {
            panic!("refused")
        };
        let [Effect::Persist {
            call,
            logs,
            confirm,
        }] = &effects[..]
        else {
            panic!("{effects:?}")
        };
        assert_eq!(call.status(), CallStatus::Succeeded);
        assert_eq!(call.result_json, "42");
        assert_eq!(logs.logs, b"hello\n");
        assert_eq!(confirm.as_ref(), Some(&session("a", 1)));
        assert!(l.is_empty());
        // Sent again on a new session (the confirmation was lost).
        connect(&mut l, session("a", 2), vec![id(1)], 600);
        let outcome = l.result(&session("a", 2), result(1), 700.0);
        assert_eq!(
            outcome,
            Outcome::Late(vec![Effect::Confirm {
                to: session("a", 2),
                call_id: id(1)
            }])
        );
    }

    #[test]
    fn a_result_from_another_node_or_session_is_refused() {
        let mut l = running(false);
        connect(&mut l, session("b", 7), vec![], 10);
        let outcome = l.result(&session("b", 7), result(1), 20.0);
        assert_eq!(
            outcome,
            Outcome::Refused(Refusal::NotOwner {
                owner: Some(session("a", 1))
            })
        );
        // Node a reconnects: its new session owns the call, the old one
        // (a stream that has not ended yet) no longer does.
        connect(&mut l, session("a", 2), vec![id(1)], 30);
        assert!(matches!(
            l.result(&session("a", 1), result(1), 40.0),
            Outcome::Refused(Refusal::NotOwner { .. })
        ));
        assert!(matches!(
            l.result(&session("a", 2), result(1), 50.0),
            Outcome::Recorded(_)
        ));
    }

    #[test]
    fn a_result_for_an_unknown_or_queued_call_is_refused() {
        let mut l = ledger();
        connect(&mut l, session("a", 1), vec![], 0);
        assert_eq!(
            l.result(&session("a", 1), result(9), 1.0),
            Outcome::Refused(Refusal::Unknown)
        );
        l.submitted(call(2), bundle(2_000, false), 0.0, 0);
        assert_eq!(
            l.result(&session("a", 1), result(2), 1.0),
            Outcome::Refused(Refusal::NotRunning)
        );
        assert_eq!(l.live_call(&id(2)).unwrap().status(), CallStatus::Queued);
    }

    #[test]
    fn a_silent_agent_cannot_keep_a_call_running_past_its_deadline() {
        let mut l = running(false);
        // Timeout 2 s + grace 10 s (function preloaded: no load allowance).
        assert!(l.tick(12 * SEC).is_empty());
        let effects = l.tick(12 * SEC + 1);
        let [timed_out] = persisted(&effects)[..] else {
            panic!("{effects:?}")
        };
        assert_eq!(timed_out.status(), CallStatus::Timeout);
        let error = timed_out.error.as_ref().unwrap();
        assert_eq!(error.reason, "timeout");
        assert!(
            error.message.contains("node a did not report"),
            "{}",
            error.message
        );
        assert!(matches!(&effects[0], Effect::Persist { confirm: None, .. }));
        assert!(l.is_empty());
        // The agent wakes up and reports: not recorded, but confirmed so
        // that it stops sending it.
        let outcome = l.result(&session("a", 1), result(1), 60_000.0);
        assert_eq!(
            outcome,
            Outcome::Late(vec![Effect::Confirm {
                to: session("a", 1),
                call_id: id(1)
            }])
        );
        // Even much later, on a new session that lists it.
        connect(&mut l, session("a", 2), vec![id(1)], 1_000 * SEC);
        assert!(matches!(
            l.result(&session("a", 2), result(1), 1_000_000.0),
            Outcome::Late(_)
        ));
        // And a requeue (a takeover reading a stale QUEUED record) does not
        // run it again.
        assert!(l
            .submitted(call(1), bundle(2_000, false), 0.0, 0)
            .is_empty());
    }

    #[test]
    fn a_call_that_loads_first_gets_the_load_allowance() {
        let mut l = ledger();
        connect(&mut l, session("a", 1), vec![], 0);
        l.submitted(call(1), bundle(2_000, false), 0.0, 0);
        l.dispatch(&id(1), &spot("a"), Start::Loading, 1_000.0);
        assert!(persisted(&l.tick(1_000 + 42 * SEC)).is_empty());
        assert_eq!(persisted(&l.tick(1_001 + 42 * SEC)).len(), 1);
    }

    #[test]
    fn reconnecting_does_not_move_the_deadline() {
        let mut l = running(false);
        for (i, t) in [3, 6, 9].into_iter().enumerate() {
            l.disconnected(&session("a", i as u64 + 1), t * SEC);
            connect(
                &mut l,
                session("a", i as u64 + 2),
                vec![id(1)],
                t * SEC + 100,
            );
            assert!(l.tick(t * SEC + 200).is_empty());
        }
        let effects = l.tick(12 * SEC + 1);
        assert_eq!(persisted(&effects)[0].status(), CallStatus::Timeout);
    }

    #[test]
    fn a_call_whose_node_stays_away_is_lost() {
        let mut l = running(false);
        l.disconnected(&session("a", 1), SEC);
        assert!(l.tick(4 * SEC).is_empty());
        let effects = l.tick(4 * SEC + 1);
        let [call] = persisted(&effects)[..] else {
            panic!("{effects:?}")
        };
        assert_eq!(call.status(), CallStatus::Failed);
        assert_eq!(call.error.as_ref().unwrap().reason, "node_lost");
    }

    #[test]
    fn a_node_back_in_time_keeps_its_calls_and_reports_them() {
        let mut l = running(false);
        l.disconnected(&session("a", 1), SEC);
        connect(&mut l, session("a", 2), vec![id(1)], 3 * SEC);
        assert!(l.tick(10 * SEC).is_empty());
        assert!(matches!(
            l.result(&session("a", 2), result(1), 10_500.0),
            Outcome::Recorded(_)
        ));
    }

    #[test]
    fn a_node_back_without_the_call_has_the_backlog_grace_to_send_it() {
        let mut l = running(false);
        connect(&mut l, session("a", 2), vec![], SEC);
        assert!(l.tick(3 * SEC).is_empty());
        assert!(matches!(
            l.result(&session("a", 2), result(1), 3_000.0),
            Outcome::Recorded(_)
        ));

        let mut l = running(false);
        connect(&mut l, session("a", 2), vec![], SEC);
        let effects = l.tick(3 * SEC + 1);
        assert_eq!(
            persisted(&effects)[0].error.as_ref().unwrap().reason,
            "node_lost"
        );
    }

    #[test]
    fn a_call_its_agent_process_never_received_is_queued_again_not_lost() {
        // Dispatched to process "p1" of node a; the stream broke with the
        // operation on its way; the same process says hello without it.
        let mut l = ledger();
        l.connected(session("a", 1), vec![], &HashSet::new(), "p1", 0);
        l.submitted(call(1), bundle(2_000, false), 0.0, 0);
        let (sent, effects) = l.dispatch(&id(1), &spot("a"), Start::Preloaded, 0.0);
        assert!(sent.is_some());
        let recorded = effects
            .iter()
            .find_map(|e| match e {
                Effect::RecordRunning { call, .. } => Some(call.clone()),
                _ => None,
            })
            .expect("RUNNING recorded");
        assert_eq!(recorded.agent_incarnation, "p1", "in the RUNNING record");
        l.connected(session("a", 2), vec![], &HashSet::new(), "p1", SEC);
        // Its result may still come in the backlog grace...
        assert!(l.tick(3 * SEC).is_empty());
        // ...then it runs again, not an attempt more: nothing of it ran.
        let effects = l.tick(3 * SEC + 1);
        assert!(persisted(&effects).is_empty(), "{effects:?}");
        assert_eq!(enqueued(&effects), vec![id(1).as_str()]);
        let (sent, _) = l.dispatch(&id(1), &spot("a"), Start::Preloaded, 3_100.0);
        assert!(sent.is_some());
        assert!(matches!(
            l.result(&session("a", 2), result(1), 4_000.0),
            Outcome::Recorded(_)
        ));

        // A restarted agent (another process) may have run it: lost.
        let mut l = ledger();
        l.connected(session("a", 1), vec![], &HashSet::new(), "p1", 0);
        l.submitted(call(1), bundle(2_000, false), 0.0, 0);
        l.dispatch(&id(1), &spot("a"), Start::Preloaded, 0.0);
        l.connected(session("a", 2), vec![], &HashSet::new(), "p2", SEC);
        let effects = l.tick(3 * SEC + 1);
        assert_eq!(
            persisted(&effects)[0].error.as_ref().unwrap().reason,
            "node_lost"
        );
    }

    #[test]
    fn an_adopted_call_its_agent_process_never_received_is_queued_again() {
        // A new leader adopts a RUNNING record handed to process p1, whose
        // node then says hello as p1 without it.
        let mut l = ledger();
        let mut c = call(1);
        c.status = CallStatus::Running as i32;
        c.node = "a".into();
        c.attempts = 1;
        c.agent_incarnation = "p1".into();
        l.adopted(c.clone(), bundle(60_000, false), 0);
        l.connected(session("a", 1), vec![], &HashSet::new(), "p1", 100);
        let effects = l.tick(3 * SEC);
        assert_eq!(enqueued(&effects), vec![id(1).as_str()], "{effects:?}");

        // Connected first, then adopted: the same.
        let mut l = ledger();
        l.connected(session("a", 1), vec![], &HashSet::new(), "p1", 0);
        l.adopted(c.clone(), bundle(60_000, false), 100);
        let effects = l.tick(3 * SEC);
        assert_eq!(enqueued(&effects), vec![id(1).as_str()], "{effects:?}");

        // Another process: lost.
        let mut l = ledger();
        l.connected(session("a", 1), vec![], &HashSet::new(), "p2", 0);
        l.adopted(c, bundle(60_000, false), 100);
        let effects = l.tick(3 * SEC);
        assert_eq!(
            persisted(&effects)[0].error.as_ref().unwrap().reason,
            "node_lost"
        );
    }

    #[test]
    fn an_idempotent_call_lost_with_its_node_runs_again_within_its_retries() {
        let mut l = running(true);
        let mut t = 0;
        for attempt in 2..=3 {
            let node = if attempt % 2 == 0 { "a" } else { "b" };
            let live = if l.is_live(&session("a", 1)) {
                session("a", 1)
            } else {
                session("b", 1)
            };
            l.disconnected(&live, t + SEC);
            t += 5 * SEC;
            let effects = l.tick(t);
            assert!(persisted(&effects).is_empty(), "{effects:?}");
            assert_eq!(enqueued(&effects), [id(1)]);
            let queued = l.live_call(&id(1)).unwrap();
            assert_eq!(queued.status(), CallStatus::Queued);
            assert_eq!(queued.attempts, attempt);
            let next = if node == "a" { "b" } else { "a" };
            connect(&mut l, session(next, 1), vec![], t);
            let (sent, effects) = l.dispatch(&id(1), &spot(next), Start::Preloaded, t as f64);
            assert!(sent.is_some());
            assert!(
                !effects
                    .iter()
                    .any(|e| matches!(e, Effect::RecordRunning { .. })),
                "a run again is not recorded over the old record"
            );
        }
        l.disconnected(&session("a", 1), t + SEC);
        let effects = l.tick(t + 5 * SEC);
        let [call] = persisted(&effects)[..] else {
            panic!("retries are bounded: {effects:?}")
        };
        assert_eq!(call.error.as_ref().unwrap().reason, "node_lost");
        assert_eq!(call.attempts, 3);
    }

    fn adopted_call(n: u32, node: &str) -> Call {
        Call {
            status: CallStatus::Running as i32,
            node: node.into(),
            created_at_ms: 100 * SEC,
            timings: Some(Timings {
                queue_ms: 500.0,
                ..Default::default()
            }),
            attempts: 1,
            ..call(n)
        }
    }

    #[test]
    fn an_adopted_call_keeps_the_deadline_of_its_record() {
        let mut l = ledger();
        // Adopted before any agent says hello (the takeover's order).
        l.adopted(adopted_call(1, "a"), bundle(2_000, false), 110 * SEC);
        connect(&mut l, session("a", 1), vec![id(1)], 110 * SEC + 10);
        // Started at 100.5 s; 2 s + 10 s + 30 s (how it started is unknown).
        let deadline = 100 * SEC + 500 + 42 * SEC;
        assert!(l.tick(deadline).is_empty());
        let effects = l.tick(deadline + 1);
        assert_eq!(persisted(&effects)[0].status(), CallStatus::Timeout);
    }

    #[test]
    fn an_adopted_call_is_reported_by_its_nodes_new_session_only() {
        let mut l = ledger();
        l.adopted(adopted_call(1, "a"), bundle(60_000, false), 110 * SEC);
        connect(&mut l, session("b", 5), vec![], 110 * SEC);
        assert!(matches!(
            l.result(&session("b", 5), result(1), 110_100.0),
            Outcome::Refused(Refusal::NotOwner { owner: None })
        ));
        connect(&mut l, session("a", 6), vec![id(1)], 110 * SEC);
        let Outcome::Recorded(effects) = l.result(&session("a", 6), result(1), 110_200.0) else {
            panic!()
        };
        let call = persisted(&effects)[0];
        assert_eq!(call.status(), CallStatus::Succeeded);
        assert_eq!(call.timings.as_ref().unwrap().queue_ms, 500.0);
    }

    #[test]
    fn an_adopted_call_whose_node_never_returns_is_lost() {
        let mut l = ledger();
        l.adopted(adopted_call(1, "a"), bundle(60_000, false), 110 * SEC);
        assert!(l.tick(113 * SEC).is_empty());
        let effects = l.tick(113 * SEC + 1);
        assert_eq!(
            persisted(&effects)[0].error.as_ref().unwrap().reason,
            "node_lost"
        );
    }

    #[test]
    fn an_adopted_call_its_node_does_not_list_is_lost_after_the_backlog_grace() {
        let mut l = ledger();
        l.adopted(adopted_call(1, "a"), bundle(60_000, false), 110 * SEC);
        connect(&mut l, session("a", 1), vec![], 110 * SEC);
        assert!(l.tick(112 * SEC).is_empty());
        assert_eq!(persisted(&l.tick(112 * SEC + 1)).len(), 1);
    }

    #[test]
    fn a_queued_call_its_node_runs_already_is_not_run_twice() {
        let mut l = ledger();
        l.submitted(call(1), bundle(2_000, false), 0.0, 0);
        let effects = connect(&mut l, session("a", 1), vec![id(1)], SEC);
        assert_eq!(effects, [Effect::Withdraw(id(1))]);
        assert_eq!(l.live_call(&id(1)).unwrap().status(), CallStatus::Running);
        assert!(matches!(
            l.result(&session("a", 1), result(1), 1_500.0),
            Outcome::Recorded(_)
        ));
    }

    #[test]
    fn a_call_reported_before_the_takeover_requeues_it_runs_once() {
        // Its node lists it before the requeue hands it over.
        let mut l = ledger();
        connect(&mut l, session("a", 1), vec![id(1)], 0);
        assert!(l
            .submitted(call(1), bundle(2_000, false), 0.0, SEC)
            .is_empty());
        assert_eq!(l.live_call(&id(1)).unwrap().node, "a");
        assert!(matches!(
            l.result(&session("a", 1), result(1), 1_500.0),
            Outcome::Recorded(_)
        ));

        // Its result arrives before the requeue: recorded unless final,
        // and the requeue that follows does not run it.
        let mut l = ledger();
        connect(&mut l, session("a", 1), vec![id(1)], 0);
        let Outcome::Recorded(effects) = l.result(&session("a", 1), result(1), 100.0) else {
            panic!()
        };
        assert!(matches!(
            &effects[..],
            [Effect::RecordUnlessFinal { from, .. }] if *from == session("a", 1)
        ));
        assert!(l
            .submitted(call(1), bundle(2_000, false), 0.0, SEC)
            .is_empty());
        assert!(l.is_empty());

        // Another session than the one that listed it gets nothing.
        let mut l = ledger();
        connect(&mut l, session("a", 1), vec![id(1)], 0);
        connect(&mut l, session("b", 2), vec![], 0);
        assert_eq!(
            l.result(&session("b", 2), result(1), 100.0),
            Outcome::Refused(Refusal::Unknown)
        );
    }

    #[test]
    fn a_hello_without_the_dispatch_proof_claims_nothing() {
        let none = HashSet::new();
        // A queued call: it stays queued, and the claimant's result for it
        // is refused.
        let mut l = ledger();
        assert_eq!(
            enqueued(&l.submitted(call(1), bundle(2_000, false), 0.0, 0)),
            [id(1)]
        );
        let effects = l.connected(session("rogue", 1), vec![id(1)], &none, "", 10);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Withdraw(_))));
        assert_eq!(l.live_call(&id(1)).unwrap().status(), CallStatus::Queued);
        assert_eq!(
            l.result(&session("rogue", 1), result(1), 20.0),
            Outcome::Refused(Refusal::NotRunning)
        );
        // A call not known yet: the claim is not remembered either.
        let mut l = ledger();
        l.connected(session("rogue", 1), vec![id(2)], &none, "", 0);
        assert!(l.reported.is_empty());
        assert_eq!(
            l.result(&session("rogue", 1), result(2), 10.0),
            Outcome::Refused(Refusal::Unknown)
        );
    }

    #[test]
    fn only_the_owner_can_refuse_a_call_back_to_the_queue() {
        let mut l = running(false);
        connect(&mut l, session("b", 2), vec![], 0);
        assert!(l.refused(&session("b", 2), &id(1)).is_err());
        let effects = l.refused(&session("a", 1), &id(1)).unwrap();
        assert_eq!(enqueued(&effects), [id(1)]);
        assert_eq!(l.live_call(&id(1)).unwrap().status(), CallStatus::Queued);
        assert!(l.refused(&session("a", 1), &id(1)).is_err(), "queued now");
    }

    #[test]
    fn memories_fade() {
        let mut l = running(false);
        l.result(&session("a", 1), result(1), 1.0);
        connect(&mut l, session("a", 2), vec![id(2)], 0);
        l.tick(RECORDED_MEMORY + REPORTED_MEMORY);
        assert!(l.ended.is_empty() && l.reported.is_empty());
    }
}
