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

    /// The state the spot is in once the operation is sent.
    fn expected_state(&self) -> SpotState {
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

/// The broker's view: every known spot and the queue of calls without one.
#[derive(Debug, Default)]
pub struct Cluster {
    spots: BTreeMap<SpotId, SpotState>,
    queue: VecDeque<PendingCall>,
}

impl Cluster {
    pub fn spots(&self) -> impl Iterator<Item = (&SpotId, &SpotState)> {
        self.spots.iter()
    }

    pub fn spot(&self, id: &SpotId) -> Option<&SpotState> {
        self.spots.get(id)
    }

    pub fn spot_count(&self) -> usize {
        self.spots.len()
    }

    /// Free spots, in a stable order (node, index).
    pub fn free_spots(&self) -> Vec<SpotId> {
        self.spots_where(|s| *s == SpotState::Free)
    }

    pub fn spots_where(&self, pred: impl Fn(&SpotState) -> bool) -> Vec<SpotId> {
        self.spots
            .iter()
            .filter(|(_, s)| pred(s))
            .map(|(id, _)| id.clone())
            .collect()
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

    fn apply(&mut self, event: &Event) {
        match event {
            Event::NodeJoined { node, spots } => {
                self.spots.retain(|id, _| id.node != *node);
                for index in 0..*spots {
                    self.spots.insert(
                        SpotId {
                            node: node.clone(),
                            index,
                        },
                        SpotState::Free,
                    );
                }
            }
            Event::NodeLeft { node } => self.spots.retain(|id, _| id.node != *node),
            Event::SpotReported { spot, state } => {
                // Reports about spots of unknown nodes are stale: ignore them.
                if let Some(s) = self.spots.get_mut(spot) {
                    *s = state.clone();
                }
            }
            _ => {}
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

    /// Applies the event to the view, lets the policy decide, and records
    /// the state each operation puts its spot in.
    pub fn handle(&mut self, event: Event, now: Millis) -> Vec<Operation> {
        self.cluster.apply(&event);
        let ops = self.policy.decide(&mut self.cluster, &event, now);
        for op in &ops {
            if let Some(s) = self.cluster.spots.get_mut(op.spot()) {
                *s = op.expected_state();
            }
        }
        ops
    }
}
