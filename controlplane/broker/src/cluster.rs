use std::collections::{BTreeMap, VecDeque};

use crate::policy::Policy;

/// Milliseconds on the broker's clock (real or simulated).
pub type Millis = u64;

/// A spot: one container slot on a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpotId {
    pub node: String,
    pub index: u32,
}

impl std::fmt::Display for SpotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.index)
    }
}

/// A function at one version, with the runtime it runs on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionRef {
    pub name: String,
    pub version: u64,
    pub runtime: String,
}

/// What a spot holds, as the broker knows it.
///
/// Agents report the authoritative state; between an operation being sent and
/// the agent's report, the broker records the state it expects so that it
/// never hands one spot two things at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpotState {
    Free,
    /// A preload is under way; the spot is not usable until it reports done.
    Preloading {
        runtime: String,
        function: Option<FunctionRef>,
    },
    PreloadedRuntime {
        runtime: String,
    },
    PreloadedFunction {
        function: FunctionRef,
    },
    Running {
        call_id: String,
    },
    /// Tearing its container down; becomes Free when the agent says so.
    Clearing,
}

impl SpotState {
    /// A report that ends an operation: the agent is done with it (a call
    /// torn down, a preload finished or failed, a clear done). `Running`,
    /// `Preloading` and `Clearing` are progress reports within one.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            SpotState::Free
                | SpotState::PreloadedRuntime { .. }
                | SpotState::PreloadedFunction { .. }
        )
    }

    /// Holds a finished preload that nothing is using.
    pub fn is_preloaded(&self) -> bool {
        matches!(
            self,
            SpotState::PreloadedRuntime { .. } | SpotState::PreloadedFunction { .. }
        )
    }
}

/// A call waiting for, or being given, a spot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCall {
    pub id: String,
    pub function: FunctionRef,
    pub arrived_at: Millis,
}

/// Something the broker must react to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    NodeJoined {
        node: String,
        spots: u32,
    },
    /// The node's spots leave the pool; calls running there are the I/O
    /// layer's to resolve.
    NodeLeft {
        node: String,
    },
    /// An agent's report of a spot's state (authoritative).
    SpotReported {
        spot: SpotId,
        state: SpotState,
    },
    CallArrived(PendingCall),
    /// Periodic wake-up, for policies that recompute targets over time.
    Tick,
    RuntimeRegistered {
        name: String,
    },
    RuntimeRemoved {
        name: String,
    },
    FunctionRegistered {
        function: FunctionRef,
    },
    FunctionRemoved {
        name: String,
    },
    /// The earlier versions of a function its aliases name (all of them:
    /// replaces what was known). Preloads of them serve calls through the
    /// aliases; other earlier versions are stale.
    AliasTargets {
        name: String,
        versions: Vec<FunctionRef>,
    },
}

/// The six worker operations of the thesis (4.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    ExecuteNoPreload { spot: SpotId, call: PendingCall },
    ExecRuntimePreloaded { spot: SpotId, call: PendingCall },
    ExecFunctionPreloaded { spot: SpotId, call: PendingCall },
    PreloadRuntime { spot: SpotId, runtime: String },
    PreloadFunction { spot: SpotId, function: FunctionRef },
    ClearSpot { spot: SpotId },
}

impl Operation {
    pub fn spot(&self) -> &SpotId {
        match self {
            Operation::ExecuteNoPreload { spot, .. }
            | Operation::ExecRuntimePreloaded { spot, .. }
            | Operation::ExecFunctionPreloaded { spot, .. }
            | Operation::PreloadRuntime { spot, .. }
            | Operation::PreloadFunction { spot, .. }
            | Operation::ClearSpot { spot } => spot,
        }
    }

    /// The call an execute operation carries.
    pub fn call(&self) -> Option<&PendingCall> {
        match self {
            Operation::ExecuteNoPreload { call, .. }
            | Operation::ExecRuntimePreloaded { call, .. }
            | Operation::ExecFunctionPreloaded { call, .. } => Some(call),
            _ => None,
        }
    }

    /// The state the spot is in once the operation is sent.
    pub fn expected_state(&self) -> SpotState {
        match self {
            Operation::ExecuteNoPreload { call, .. }
            | Operation::ExecRuntimePreloaded { call, .. }
            | Operation::ExecFunctionPreloaded { call, .. } => SpotState::Running {
                call_id: call.id.clone(),
            },
            Operation::PreloadRuntime { runtime, .. } => SpotState::Preloading {
                runtime: runtime.clone(),
                function: None,
            },
            Operation::PreloadFunction { function, .. } => SpotState::Preloading {
                runtime: function.runtime.clone(),
                function: Some(function.clone()),
            },
            Operation::ClearSpot { .. } => SpotState::Clearing,
        }
    }
}

/// One spot as the broker tracks it: its state, and the operations sent to
/// it that the agent has not finished yet.
#[derive(Debug)]
struct SpotEntry {
    state: SpotState,
    /// Sent and not yet ended by a terminal report, oldest first.
    outstanding: VecDeque<Outstanding>,
}

/// An operation sent to a spot that the agent has not finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outstanding {
    pub operation: Operation,
    pub sent_at: Millis,
    /// When the agent started it, as far as the broker can tell: when it was
    /// sent to an idle spot, or when the operation before it ended. None
    /// while it waits behind another.
    pub started_at: Option<Millis>,
}

/// An operation the agent just finished, as told by a terminal report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    pub spot: SpotId,
    pub operation: Operation,
    pub sent_at: Millis,
    /// When the agent started it, as far as the broker can tell (see
    /// [`Outstanding::started_at`]).
    pub started_at: Millis,
    /// What the agent reported at its end (e.g. `Free` after a preload means
    /// the preload failed).
    pub reported: SpotState,
}

/// The catalog the policies preload from: registered runtimes, the
/// current version of each function, in registration order, and the
/// earlier versions aliases name.
#[derive(Debug, Default)]
pub struct Catalog {
    runtimes: Vec<String>,
    functions: Vec<FunctionRef>,
    aliased: Vec<FunctionRef>,
}

impl Catalog {
    /// Registered runtimes, oldest registration first.
    pub fn runtimes(&self) -> &[String] {
        &self.runtimes
    }

    /// The current version of every registered function, oldest
    /// registration first.
    pub fn functions(&self) -> &[FunctionRef] {
        &self.functions
    }

    pub fn function(&self, name: &str) -> Option<&FunctionRef> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// Whether a preloaded function is the current version: registered,
    /// on a registered runtime.
    pub fn is_current(&self, function: &FunctionRef) -> bool {
        self.function(&function.name) == Some(function)
    }

    /// Whether a preloaded function may still serve calls: the current
    /// version, or an earlier one an alias names.
    pub fn serves(&self, function: &FunctionRef) -> bool {
        self.is_current(function) || self.aliased.contains(function)
    }

    /// Every version calls are expected for: the current ones (oldest
    /// registration first), then the earlier ones aliases name.
    pub fn served(&self) -> impl Iterator<Item = &FunctionRef> {
        self.functions
            .iter()
            .chain(self.aliased.iter().filter(|f| !self.is_current(f)))
    }

    /// The served version `version` of function `name`, if any.
    pub fn served_version(&self, name: &str, version: u64) -> Option<&FunctionRef> {
        self.served()
            .find(|f| f.name == name && f.version == version)
    }

    pub fn has_runtime(&self, name: &str) -> bool {
        self.runtimes.iter().any(|r| r == name)
    }

    fn add_runtime(&mut self, name: &str) {
        if !self.has_runtime(name) {
            self.runtimes.push(name.to_string());
        }
    }

    /// Registers or updates a function; an older version never replaces a
    /// newer one (events may be replayed after a leader change).
    fn add_function(&mut self, function: &FunctionRef) {
        self.add_runtime(&function.runtime);
        match self.functions.iter_mut().find(|f| f.name == function.name) {
            Some(known) if known.version > function.version => {}
            Some(known) => *known = function.clone(),
            None => self.functions.push(function.clone()),
        }
    }
}

/// The broker's view: every known spot, the queue of calls without one and
/// the catalog.
#[derive(Debug, Default)]
pub struct Cluster {
    spots: BTreeMap<SpotId, SpotEntry>,
    queue: VecDeque<PendingCall>,
    catalog: Catalog,
    /// The operation the last event's report ended, if any.
    completed: Option<Completed>,
    /// Operations decided during the current event, in order.
    outbox: Vec<Operation>,
    now: Millis,
}

impl Cluster {
    pub fn spots(&self) -> impl Iterator<Item = (&SpotId, &SpotState)> {
        self.spots.iter().map(|(id, e)| (id, &e.state))
    }

    pub fn spot(&self, id: &SpotId) -> Option<&SpotState> {
        self.spots.get(id).map(|e| &e.state)
    }

    pub fn spot_count(&self) -> usize {
        self.spots.len()
    }

    /// Free spots, in a stable order (node, index).
    pub fn free_spots(&self) -> Vec<SpotId> {
        self.spots_where(|s| *s == SpotState::Free)
    }

    pub fn spots_where(&self, pred: impl Fn(&SpotState) -> bool) -> Vec<SpotId> {
        self.spots()
            .filter(|(_, s)| pred(s))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The operations sent to the spot that the agent has not finished,
    /// oldest first.
    pub fn pending_operations(&self, id: &SpotId) -> impl Iterator<Item = &Outstanding> {
        self.spots
            .get(id)
            .into_iter()
            .flat_map(|e| e.outstanding.iter())
    }

    /// How many operations sent to the spot the agent has not finished.
    pub fn outstanding(&self, id: &SpotId) -> usize {
        self.spots.get(id).map_or(0, |e| e.outstanding.len())
    }

    /// The operation the current event's spot report ended, if any.
    pub fn completed(&self) -> Option<&Completed> {
        self.completed.as_ref()
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The broker's clock at the current event.
    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn queue(&self) -> &VecDeque<PendingCall> {
        &self.queue
    }

    pub fn enqueue(&mut self, call: PendingCall) {
        self.queue.push_back(call);
    }

    pub fn dequeue(&mut self) -> Option<PendingCall> {
        self.queue.pop_front()
    }

    /// Takes the first queued call matching `pred` out of the queue.
    pub fn dequeue_where(&mut self, pred: impl Fn(&PendingCall) -> bool) -> Option<PendingCall> {
        let pos = self.queue.iter().position(pred)?;
        self.queue.remove(pos)
    }

    /// Removes a queued call (e.g. its function was deleted).
    pub fn remove_queued(&mut self, call_id: &str) -> Option<PendingCall> {
        self.dequeue_where(|c| c.id == call_id)
    }

    /// Whether the operation may be sent to its spot now, per the agent
    /// contract: executes and preloads need a Free spot (or one whose clear
    /// is queued before them), a preloaded exec needs the exact preload, a
    /// clear needs a finished preload.
    pub fn allows(&self, op: &Operation) -> bool {
        let Some(state) = self.spot(op.spot()) else {
            return false;
        };
        let empty = matches!(state, SpotState::Free | SpotState::Clearing);
        match (op, state) {
            (Operation::ExecuteNoPreload { .. }, _)
            | (Operation::PreloadRuntime { .. }, _)
            | (Operation::PreloadFunction { .. }, _) => empty,
            (
                Operation::ExecRuntimePreloaded { call, .. },
                SpotState::PreloadedRuntime { runtime },
            ) => call.function.runtime == *runtime,
            (
                Operation::ExecFunctionPreloaded { call, .. },
                SpotState::PreloadedFunction { function },
            ) => call.function == *function,
            (Operation::ClearSpot { .. }, s) => s.is_preloaded(),
            _ => false,
        }
    }

    /// Sends an operation: it goes out when the current event is handled,
    /// and the view records at once the state it puts the spot in, so later
    /// decisions of the same event see it.
    ///
    /// # Panics
    /// In debug builds, if the operation is not allowed on the spot (a
    /// policy bug that the agent would refuse).
    pub fn send(&mut self, op: Operation) {
        debug_assert!(
            self.allows(&op),
            "operation not allowed: {op:?} on {:?}",
            self.spot(op.spot())
        );
        if let Some(entry) = self.spots.get_mut(op.spot()) {
            entry.state = op.expected_state();
            let started_at = entry.outstanding.is_empty().then_some(self.now);
            entry.outstanding.push_back(Outstanding {
                operation: op.clone(),
                sent_at: self.now,
                started_at,
            });
            self.outbox.push(op);
        }
    }

    pub(crate) fn apply(&mut self, event: &Event) {
        self.completed = None;
        match event {
            Event::NodeJoined { node, spots } => {
                self.spots.retain(|id, _| id.node != *node);
                for index in 0..*spots {
                    self.spots.insert(
                        SpotId {
                            node: node.clone(),
                            index,
                        },
                        SpotEntry {
                            state: SpotState::Free,
                            outstanding: VecDeque::new(),
                        },
                    );
                }
            }
            Event::NodeLeft { node } => self.spots.retain(|id, _| id.node != *node),
            Event::SpotReported { spot, state } => {
                // Reports about spots of unknown nodes are stale: ignore them.
                let Some(entry) = self.spots.get_mut(spot) else {
                    return;
                };
                if entry.outstanding.is_empty() {
                    entry.state = state.clone();
                } else if state.is_terminal() {
                    let done = entry.outstanding.pop_front().expect("checked non-empty");
                    // Ops queued behind this one still run: the spot stays in
                    // the state the last of them puts it in.
                    match entry.outstanding.front_mut() {
                        Some(next) => next.started_at = Some(self.now),
                        None => entry.state = state.clone(),
                    }
                    self.completed = Some(Completed {
                        spot: spot.clone(),
                        operation: done.operation,
                        sent_at: done.sent_at,
                        started_at: done.started_at.unwrap_or(done.sent_at),
                        reported: state.clone(),
                    });
                }
                // A progress report while operations are outstanding says
                // less than the expected state (e.g. a preload's report has
                // no function): keep the expected one.
            }
            Event::RuntimeRegistered { name } => self.catalog.add_runtime(name),
            Event::RuntimeRemoved { name } => {
                self.catalog.runtimes.retain(|r| r != name);
                self.catalog.functions.retain(|f| f.runtime != *name);
                self.catalog.aliased.retain(|f| f.runtime != *name);
            }
            Event::FunctionRegistered { function } => self.catalog.add_function(function),
            Event::FunctionRemoved { name } => {
                self.catalog.functions.retain(|f| f.name != *name);
                self.catalog.aliased.retain(|f| f.name != *name);
            }
            Event::AliasTargets { name, versions } => {
                self.catalog.aliased.retain(|f| f.name != *name);
                let runtimes = &self.catalog.runtimes;
                self.catalog.aliased.extend(
                    versions
                        .iter()
                        .filter(|f| f.name == *name && runtimes.contains(&f.runtime))
                        .cloned(),
                );
            }
            // A call names its function's version at acceptance: it may be
            // the first news of the function (no catalog sent) or of an
            // update.
            Event::CallArrived(call) => self.catalog.add_function(&call.function),
            Event::Tick => {}
        }
    }
}

/// A cluster view driven by one policy: feed it events, send out what it
/// returns.
pub struct Broker {
    cluster: Cluster,
    policy: Box<dyn Policy>,
}

impl Broker {
    pub fn new(policy: Box<dyn Policy>) -> Self {
        Broker {
            cluster: Cluster::default(),
            policy,
        }
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Takes a queued call out of the queue (it turned out to be running
    /// already, e.g. reported by its agent after a takeover); false if it
    /// was not queued.
    pub fn withdraw(&mut self, call_id: &str) -> bool {
        self.cluster.remove_queued(call_id).is_some()
    }

    /// Applies the event to the view, lets the policy decide, and returns
    /// the operations to send, in order (operations for one spot must reach
    /// its agent in this order). The view records the state each operation
    /// puts its spot in; agents' reports that end those operations bring it
    /// back to what the agent says.
    pub fn handle(&mut self, event: Event, now: Millis) -> Vec<Operation> {
        self.cluster.now = now;
        self.cluster.apply(&event);
        self.policy.decide(&mut self.cluster, &event, now);
        std::mem::take(&mut self.cluster.outbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends whatever the test puts in `next` on the next event.
    struct Scripted {
        next: Vec<Operation>,
    }

    impl Policy for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn decide(&mut self, cluster: &mut Cluster, _event: &Event, _now: Millis) {
            for op in self.next.drain(..) {
                cluster.send(op);
            }
        }
    }

    fn spot() -> SpotId {
        SpotId {
            node: "n".into(),
            index: 0,
        }
    }

    fn f() -> FunctionRef {
        FunctionRef {
            name: "f".into(),
            version: 2,
            runtime: "A".into(),
        }
    }

    fn call() -> PendingCall {
        PendingCall {
            id: "c1".into(),
            function: f(),
            arrived_at: 0,
        }
    }

    fn report(b: &mut Broker, state: SpotState, now: Millis) {
        b.handle(
            Event::SpotReported {
                spot: spot(),
                state,
            },
            now,
        );
    }

    fn broker_with(ops: Vec<Operation>) -> Broker {
        let mut b = Broker::new(Box::new(Scripted { next: Vec::new() }));
        b.handle(
            Event::NodeJoined {
                node: "n".into(),
                spots: 1,
            },
            0,
        );
        b.policy = Box::new(Scripted { next: ops });
        b
    }

    #[test]
    fn progress_reports_of_queued_operations_do_not_free_the_spot_early() {
        let preloaded = SpotState::PreloadedRuntime {
            runtime: "B".into(),
        };
        let mut b = broker_with(Vec::new());
        report(&mut b, preloaded.clone(), 1);
        b.policy = Box::new(Scripted {
            next: vec![
                Operation::ClearSpot { spot: spot() },
                Operation::ExecuteNoPreload {
                    spot: spot(),
                    call: call(),
                },
            ],
        });
        let ops = b.handle(Event::Tick, 10);
        assert_eq!(ops.len(), 2);
        let running = SpotState::Running {
            call_id: "c1".into(),
        };
        assert_eq!(b.cluster().spot(&spot()), Some(&running));
        // The agent clears (Clearing, Free), then runs the call.
        report(&mut b, SpotState::Clearing, 11);
        assert_eq!(b.cluster().spot(&spot()), Some(&running));
        report(&mut b, SpotState::Free, 50);
        assert_eq!(
            b.cluster().spot(&spot()),
            Some(&running),
            "the exec is still queued"
        );
        let done = b.cluster().completed().expect("the clear ended");
        assert!(matches!(done.operation, Operation::ClearSpot { .. }));
        assert_eq!((done.sent_at, done.started_at), (10, 10));
        report(&mut b, running.clone(), 51);
        report(&mut b, SpotState::Free, 200);
        assert_eq!(b.cluster().spot(&spot()), Some(&SpotState::Free));
        let done = b.cluster().completed().expect("the exec ended");
        assert_eq!(done.started_at, 50, "started when the clear ended");
    }

    #[test]
    fn a_preload_keeps_its_function_through_the_agents_bare_progress_report() {
        let mut b = broker_with(vec![Operation::PreloadFunction {
            spot: spot(),
            function: f(),
        }]);
        b.handle(Event::Tick, 5);
        let expected = SpotState::Preloading {
            runtime: "A".into(),
            function: Some(f()),
        };
        assert_eq!(b.cluster().spot(&spot()), Some(&expected));
        report(
            &mut b,
            SpotState::Preloading {
                runtime: "A".into(),
                function: None,
            },
            6,
        );
        assert_eq!(b.cluster().spot(&spot()), Some(&expected));
        report(&mut b, SpotState::Free, 90);
        // A preload that ends Free failed; policies see it.
        let done = b.cluster().completed().expect("ended");
        assert_eq!(done.reported, SpotState::Free);
        assert_eq!(b.cluster().spot(&spot()), Some(&SpotState::Free));
    }

    #[test]
    fn without_outstanding_operations_reports_are_taken_as_they_come() {
        let mut b = broker_with(Vec::new());
        let running = SpotState::Running {
            call_id: "old".into(),
        };
        report(&mut b, running.clone(), 1);
        assert_eq!(b.cluster().spot(&spot()), Some(&running));
        assert!(b.cluster().completed().is_none());
    }

    #[test]
    fn allows_follows_the_agent_contract() {
        let mut c = Cluster::default();
        c.apply(&Event::NodeJoined {
            node: "n".into(),
            spots: 1,
        });
        let exec_fn = Operation::ExecFunctionPreloaded {
            spot: spot(),
            call: call(),
        };
        let cold = Operation::ExecuteNoPreload {
            spot: spot(),
            call: call(),
        };
        assert!(c.allows(&cold));
        assert!(!c.allows(&exec_fn));
        assert!(!c.allows(&Operation::ClearSpot { spot: spot() }));
        let old = FunctionRef { version: 1, ..f() };
        c.apply(&Event::SpotReported {
            spot: spot(),
            state: SpotState::PreloadedFunction { function: old },
        });
        assert!(!c.allows(&exec_fn), "another version is preloaded");
        assert!(!c.allows(&cold));
        assert!(c.allows(&Operation::ClearSpot { spot: spot() }));
    }

    #[test]
    fn aliased_versions_are_served_until_no_alias_names_them() {
        let mut c = Cluster::default();
        let v = |version| FunctionRef { version, ..f() };
        c.apply(&Event::FunctionRegistered { function: v(3) });
        assert!(!c.catalog().serves(&v(1)));
        c.apply(&Event::AliasTargets {
            name: "f".into(),
            versions: vec![v(1), v(3)],
        });
        assert!(c.catalog().serves(&v(1)) && c.catalog().serves(&v(3)));
        assert!(!c.catalog().serves(&v(2)));
        assert!(!c.catalog().is_current(&v(1)));
        // The current version once, then the aliased one.
        assert_eq!(
            c.catalog().served().cloned().collect::<Vec<_>>(),
            [v(3), v(1)]
        );
        assert_eq!(c.catalog().served_version("f", 1), Some(&v(1)));
        assert_eq!(c.catalog().served_version("f", 2), None);
        // The alias moved: version 1 is stale now.
        c.apply(&Event::AliasTargets {
            name: "f".into(),
            versions: vec![v(2)],
        });
        assert!(!c.catalog().serves(&v(1)) && c.catalog().serves(&v(2)));
        // Another function's name in the list is ignored.
        c.apply(&Event::AliasTargets {
            name: "f".into(),
            versions: vec![FunctionRef {
                name: "g".into(),
                ..v(1)
            }],
        });
        assert_eq!(c.catalog().served().count(), 1);
        c.apply(&Event::AliasTargets {
            name: "f".into(),
            versions: vec![v(1)],
        });
        c.apply(&Event::FunctionRemoved { name: "f".into() });
        assert_eq!(c.catalog().served().count(), 0);
    }

    #[test]
    fn the_catalog_keeps_the_newest_version_and_order() {
        let mut c = Cluster::default();
        let v = |version| FunctionRef { version, ..f() };
        c.apply(&Event::FunctionRegistered { function: v(2) });
        c.apply(&Event::FunctionRegistered { function: v(1) });
        assert_eq!(c.catalog().function("f"), Some(&v(2)));
        c.apply(&Event::CallArrived(PendingCall {
            function: v(3),
            ..call()
        }));
        assert_eq!(c.catalog().function("f"), Some(&v(3)));
        assert_eq!(c.catalog().runtimes(), ["A".to_string()]);
        c.apply(&Event::RuntimeRemoved { name: "A".into() });
        assert!(c.catalog().functions().is_empty());
    }
}
